"""Tests for the reclaiming of dead hosts' endpoints, L{contivd.reaper}."""

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from contivd import ipam, model
from contivd.cluster import Peer
from contivd.options import AgentConfig
from contivd.reaper import Reaper
from contivd.store.memory import MemoryStore
from contivd.view import ClusterView, ObservedSet


class FakeAgent:
    def __init__(self, clock, store, label):
        self.reactor = clock
        self.store = store
        self.config = AgentConfig(host_label=label, dead_host_grace=30.0)
        self.peers = ObservedSet()
        self.view = ClusterView()

    def component(self, name):
        return None

    async def wait_for(self, waiter, *names, why=""):
        """The fake agent has no other components to wait for."""


class ReaperTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.store = MemoryStore(self.clock)
        self.web = model.Network.build("web", "10.9.1.0/24", tag=3)
        self.dead = model.Endpoint(
            net_id=self.web.id, endpoint_id="e1", ip_address="10.9.1.5",
            mac_address=model.mac_for("10.9.1.5"), homing_host="hostB",
            vtep_ip="192.0.2.2")
        self.peer_b = Peer("192.0.2.2", 4789, "hostB")
        self.successResultOf(ipam.allocate_address(
            self.store, self.web, self.dead.id, "10.9.1.5"))
        self.successResultOf(self.store.put(self.dead.key,
                                            self.dead.to_json()))
        self.agents = [self.agent("hostA"), self.agent("hostC")]

    def agent(self, label):
        agent = FakeAgent(self.clock, self.store, label)
        agent.view.set("endpoints", self.dead.id, self.dead)
        agent.peers.add(self.peer_b)
        reaper = Reaper(agent)
        self.successResultOf(reaper.start())
        agent.reaper = reaper
        return agent

    def test_one_survivor_reclaims_after_grace(self):
        """
        Once a host's registration is gone for the grace period, its
        endpoint and address are removed from etcd, by one agent only.
        """
        for agent in self.agents:
            agent.peers.remove(self.peer_b)
        self.clock.advance(29)
        self.successResultOf(self.store.get(self.dead.key))
        self.clock.advance(1)
        self.failureResultOf(self.store.get(self.dead.key))
        held = self.successResultOf(
            ipam.allocated_addresses(self.store, self.web.id))
        self.assertEqual(held, {})
        counts = sorted(a.reaper.reclaimed.get("hostB", 0)
                        for a in self.agents)
        self.assertEqual(counts, [0, 1])

    def test_host_back_in_time_keeps_endpoints(self):
        """A host that registers again within the grace keeps everything."""
        for agent in self.agents:
            agent.peers.remove(self.peer_b)
        self.clock.advance(10)
        for agent in self.agents:
            agent.peers.add(self.peer_b)
        self.clock.advance(60)
        self.successResultOf(self.store.get(self.dead.key))

    def test_unregistered_at_start(self):
        """
        Endpoints of a host that was already gone when the agent started
        are reclaimed after the grace too.
        """
        agent = FakeAgent(self.clock, self.store, "hostD")
        agent.view.set("endpoints", self.dead.id, self.dead)
        self.successResultOf(Reaper(agent).start())
        self.clock.advance(31)
        self.failureResultOf(self.store.get(self.dead.key))
