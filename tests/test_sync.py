"""Tests for the restore-and-watch sync and the datapath renderer."""

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from contivd import model
from contivd.datapath import Renderer
from contivd.openflow import desired
from contivd.options import AgentConfig
from contivd.store.memory import MemoryStore
from contivd.sync import Sync
from contivd.view import ClusterView


def endpoint(net, ep_id, ip, host, vtep=""):
    return model.Endpoint(net_id=net.id, endpoint_id=ep_id, ip_address=ip,
                          mac_address=model.mac_for(ip), homing_host=host,
                          vtep_ip=vtep)


class FakeAgent:
    def __init__(self, clock, store):
        self.reactor = clock
        self.store = store
        self.config = AgentConfig(host_label="hostA", vtep_ip="192.0.2.1",
                                  ctrl_ip="192.0.2.1")
        self.ovsdb = None

    def component(self, name):
        return None

    async def wait_for(self, waiter, *names, why=""):
        """The fake agent has no other components to wait for."""


class SyncTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.store = MemoryStore(self.clock)
        self.view = ClusterView()
        self.changes = []
        self.view.on_change(
            lambda kind, i, old, new: self.changes.append((kind, i, new)))
        self.sync = Sync(FakeAgent(self.clock, self.store), self.view)
        self.web = model.Network.build("web", "10.9.1.0/24", tag=5)

    def put(self, obj):
        self.successResultOf(self.store.put(obj.key, obj.to_json()))

    def test_restore_in_kind_order(self):
        """
        The restore applies networks before groups before endpoints,
        whatever order etcd lists them in.
        """
        ep = endpoint(self.web, "e1", "10.9.1.2", "hostA")
        group = model.EndpointGroup(group_name="g", network_name="web",
                                    endpoint_group_id=1)
        self.put(ep)
        self.put(group)
        self.put(self.web)
        self.successResultOf(self.sync.start())
        self.assertEqual([c[0] for c in self.changes],
                         ["networks", "groups", "endpoints"])
        self.assertEqual(self.view.kind("endpoints")[ep.id], ep)

    def test_nothing_lost_between_read_and_watch(self):
        """
        A change written after the restore's read but before the watch
        starts still reaches the view.
        """
        self.put(self.web)
        listing = self.successResultOf(self.store.list(model.STATE))
        late = endpoint(self.web, "late", "10.9.1.9", "hostB", "192.0.2.2")
        self.put(late)
        self.sync.restore(listing)
        self.store.watch(model.STATE, self.sync.changed, listing)
        self.assertIn(late.id, self.view.kind("endpoints"))

    def test_changes_and_deletes_follow(self):
        """Updates and deletes after the restore reach the view."""
        self.successResultOf(self.sync.start())
        self.put(self.web)
        self.assertIn(self.web.id, self.view.kind("networks"))
        self.successResultOf(self.store.delete(self.web.key))
        self.assertNotIn(self.web.id, self.view.kind("networks"))

    def test_malformed_value_skipped(self):
        """
        A malformed value is logged and skipped, and the loop goes on
        with the next change.
        """
        self.successResultOf(self.sync.start())
        self.successResultOf(self.store.put(model.NETS + "/bad.default",
                                            '{"networkName": "bad"}'))
        self.put(self.web)
        self.assertEqual(list(self.view.kind("networks")), [self.web.id])
        self.assertEqual(self.sync.loops["networks"].skipped, 1)

    def test_restore_again_drops_vanished(self):
        """A second restore removes what etcd no longer holds."""
        self.put(self.web)
        self.sync.restore(self.successResultOf(
            self.store.list(model.STATE)))
        self.successResultOf(self.store.delete(self.web.key))
        self.sync.restore(self.successResultOf(
            self.store.list(model.STATE)))
        self.assertEqual(self.view.kind("networks"), {})


class FakeSwitch:
    def __init__(self):
        self.states = []

    def set_state(self, state):
        self.states.append(state)


class FakeController:
    def __init__(self):
        self.vxlan = FakeSwitch()

    def switch(self, bridge):
        return self.vxlan


class RendererTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.agent = FakeAgent(self.clock, MemoryStore(self.clock))
        self.view = ClusterView()
        self.controller = FakeController()
        self.renderer = Renderer(self.agent, self.view, self.controller)
        self.web = model.Network.build("web", "10.9.1.0/24", tag=5)

    def test_local_remote_and_tunnels(self):
        """
        Local endpoints with a port, remote endpoints with a VTEP and
        the tunnels become the bridge's desired state, in one render per
        burst of changes.
        """
        local = endpoint(self.web, "l1", "10.9.1.2", "hostA")
        remote = endpoint(self.web, "r1", "10.9.1.3", "hostB", "192.0.2.2")
        self.view.set("networks", self.web.id, self.web)
        self.view.set("endpoints", local.id, local)
        self.view.set("endpoints", remote.id, remote)
        self.renderer.port_up(local.id, 7)
        self.renderer.tunnel_up("192.0.2.2", 9)
        self.clock.advance(0)
        self.assertEqual(len(self.controller.vxlan.states), 1)
        state = self.controller.vxlan.states[0]
        self.assertEqual(state, desired.DesiredState.of(
            desired.Network(self.web.id, 5, 5),
            desired.LocalEndpoint(local.id, self.web.id, 7,
                                  "02:02:0a:09:01:02", "10.9.1.2"),
            desired.RemoteEndpoint(remote.id, self.web.id,
                                   "02:02:0a:09:01:03", "10.9.1.3",
                                   "192.0.2.2"),
            desired.Tunnel("192.0.2.2", 9)))

    def test_endpoint_waits_for_its_port_and_network(self):
        """
        A local endpoint without a known port, or on an unknown network,
        is left out until both are known.
        """
        local = endpoint(self.web, "l1", "10.9.1.2", "hostA")
        self.view.set("endpoints", local.id, local)
        self.clock.advance(0)
        self.assertEqual(self.controller.vxlan.states[-1].objects(), [])
        self.view.set("networks", self.web.id, self.web)
        self.clock.advance(0)
        self.assertEqual(len(self.controller.vxlan.states[-1].objects()), 1)
        self.renderer.port_up(local.id, 3)
        self.clock.advance(0)
        self.assertEqual(
            len(self.controller.vxlan.states[-1].local_endpoints), 1)

    def test_local_vlans_unique(self):
        """
        Each network gets its own bridge VLAN, from its VNI where that
        is free, even when two VNIs map to the same VLAN.
        """
        a = model.Network.build("a", "10.1.0.0/24", tag=7)
        b = model.Network.build("b", "10.2.0.0/24", tag=7 + 4094)
        self.view.set("networks", a.id, a)
        self.view.set("networks", b.id, b)
        self.assertEqual(self.renderer.local_vlan(a), 7)
        self.assertNotEqual(self.renderer.local_vlan(b), 7)
        vlan_b = self.renderer.local_vlan(b)
        self.view.set("networks", a.id, None)
        self.assertEqual(self.renderer.local_vlan(b), vlan_b)
