"""Tests for cluster membership and the global-config wait."""

import json

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from contivd.cluster import (
    TTL,
    Peer,
    PeerDiscovery,
    Registration,
    ServiceInfo,
)
from contivd.errors import FatalError
from contivd.globals import GLOBAL_KEY, GlobalConfig
from contivd.options import AgentConfig
from contivd.store.memory import MemoryStore
from contivd.supervisor import WAITING


def vtep(addr, host, port=4789):
    return ServiceInfo(service_name="netplugin.vtep", host_addr=addr,
                        port=port, hostname=host)


class RegistrationTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.store = MemoryStore(self.clock)
        self.entry = vtep("192.0.2.1", "a")
        self.registration = Registration(self.store, self.clock,
                                         [self.entry])

    def ttl_left(self):
        return self.successResultOf(self.store.get(self.entry.key)).ttl

    def test_written_with_ttl_and_refreshed(self):
        """
        The entry is written with Contiv's ServiceInfo JSON and a 10 s
        TTL, and rewritten before it can expire.
        """
        self.successResultOf(self.registration.start())
        node = self.successResultOf(self.store.get(self.entry.key))
        self.assertEqual(json.loads(node.value), {
            "ServiceName": "netplugin.vtep", "Role": "", "Version": "",
            "TTL": 10, "HostAddr": "192.0.2.1", "Port": 4789,
            "Hostname": "a"})
        self.assertEqual(node.ttl, TTL)
        for _ in range(10):
            self.clock.advance(TTL / 3.0)
        self.assertGreater(self.ttl_left(), TTL / 2)

    def test_written_again_when_etcd_returns(self):
        """
        After an outage long enough for the key to expire, the entry is
        back as soon as the store answers again.
        """
        self.successResultOf(self.registration.start())
        self.store.set_available(False)
        self.clock.advance(TTL + 5)
        self.store.set_available(True)
        self.assertEqual(self.ttl_left(), TTL)

    def test_clean_stop_removes_keys(self):
        """A clean stop deletes our entry and stops refreshing."""
        self.successResultOf(self.registration.start())
        self.successResultOf(self.registration.stop())
        self.failureResultOf(self.store.get(self.entry.key))
        self.clock.advance(TTL)
        self.failureResultOf(self.store.get(self.entry.key))


class DiscoveryTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.store = MemoryStore(self.clock)
        self.events = []
        self.discovery = PeerDiscovery(
            self.store, "192.0.2.1",
            lambda p: self.events.append(("added", p)),
            lambda p: self.events.append(("removed", p)))

    def put(self, entry, ttl=TTL):
        self.successResultOf(self.store.put(entry.key, entry.to_json(),
                                            ttl=ttl))

    def test_current_then_changes_once_each(self):
        """
        Existing peers are reported, then each join and leave once;
        refreshes and our own entry are not reported.
        """
        self.put(vtep("192.0.2.1", "self"))
        self.put(vtep("192.0.2.2", "b"))
        self.successResultOf(self.discovery.start())
        self.assertEqual(self.events,
                         [("added", Peer("192.0.2.2", 4789, "b"))])
        self.put(vtep("192.0.2.2", "b"))
        self.put(vtep("192.0.2.1", "self"))
        self.put(vtep("192.0.2.3", "c"))
        self.clock.advance(0)
        self.assertEqual(self.events[1:],
                         [("added", Peer("192.0.2.3", 4789, "c"))])
        self.successResultOf(self.store.delete(vtep("192.0.2.3", "c").key))
        self.assertEqual(self.events[2:],
                         [("removed", Peer("192.0.2.3", 4789, "c"))])

    def test_expiry_reports_removal(self):
        """A peer whose entry expires is reported gone."""
        self.successResultOf(self.discovery.start())
        self.put(vtep("192.0.2.4", "d"), ttl=2)
        self.clock.advance(3)
        self.assertEqual([e[0] for e in self.events], ["added", "removed"])

    def test_malformed_entry_skipped(self):
        """A malformed entry is skipped and discovery goes on."""
        self.successResultOf(self.discovery.start())
        self.successResultOf(self.store.put(
            "/contiv.io/service/netplugin.vtep/x:1", "{nope"))
        self.put(vtep("192.0.2.5", "e"))
        self.assertEqual(self.events,
                         [("added", Peer("192.0.2.5", 4789, "e"))])
        self.flushLoggedErrors()

    def test_survives_outage(self):
        """Changes made after an outage are still delivered."""
        self.successResultOf(self.discovery.start())
        self.store.set_available(False)
        self.clock.advance(60)
        self.store.set_available(True)
        self.put(vtep("192.0.2.6", "f"))
        self.clock.advance(1)
        self.assertEqual(self.events,
                         [("added", Peer("192.0.2.6", 4789, "f"))])


class FakeAgent:
    def __init__(self, clock, store, fwd_mode="bridge"):
        self.reactor = clock
        self.store = store
        self.config = AgentConfig(fwd_mode=fwd_mode, host_label="a")
        self.reinits = []
        self.arp_modes = []

    def reinit_datapath(self, reason):
        self.reinits.append(reason)

    def arp_mode_changed(self, mode):
        self.arp_modes.append(mode)


class GlobalConfigTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.store = MemoryStore(self.clock)
        self.agent = FakeAgent(self.clock, self.store)
        self.component = GlobalConfig(self.agent)

    def set_global(self, **fields):
        value = {"id": "", "nw-infra-type": "default", "arp-mode": "proxy"}
        value.update({k.replace("_", "-"): v for k, v in fields.items()})
        self.successResultOf(self.store.put(GLOBAL_KEY, json.dumps(value)))

    def test_waits_saying_why_then_runs(self):
        """
        Without a global config the component waits, saying what it
        lacks; once it is set it runs with those settings.
        """
        started = self.component.start()
        self.assertNoResult(started)
        self.assertEqual(self.component.state.status, WAITING)
        self.assertIn(GLOBAL_KEY, self.component.state.reason)
        self.set_global(fwd_mode="bridge")
        self.assertNoResult(started)
        self.assertIn("pvt-subnet", self.component.state.reason)
        self.set_global(fwd_mode="bridge", pvt_subnet="172.19.0.0/16")
        self.successResultOf(started)
        self.assertEqual(self.component.settings.pvt_subnet,
                         "172.19.0.0/16")

    def test_mismatch_is_fatal_naming_both(self):
        """A forwarding mode other than ours fails fatally, naming both."""
        self.set_global(fwd_mode="routing", pvt_subnet="172.19.0.0/16")
        failure = self.failureResultOf(self.component.start(), FatalError)
        self.assertIn("bridge", str(failure.value))
        self.assertIn("routing", str(failure.value))

    def test_live_changes(self):
        """
        An ARP mode change is handed over live; a private subnet change
        re-initialises the datapath; a rewrite of the same values does
        neither.
        """
        self.set_global(fwd_mode="bridge", pvt_subnet="172.19.0.0/16")
        self.successResultOf(self.component.start())
        self.set_global(fwd_mode="bridge", pvt_subnet="172.19.0.0/16")
        self.set_global(fwd_mode="bridge", pvt_subnet="172.19.0.0/16",
                        arp_mode="flood")
        self.assertEqual((self.agent.arp_modes, self.agent.reinits),
                         (["flood"], []))
        self.set_global(fwd_mode="bridge", pvt_subnet="172.20.0.0/16",
                        arp_mode="flood")
        self.assertEqual(len(self.agent.reinits), 1)

    def test_stop_while_waiting(self):
        """Stopping while waiting ends the watch and the reminders."""
        started = self.component.start()
        self.clock.advance(12)
        started.cancel()
        self.failureResultOf(started)
        self.successResultOf(self.component.stop())
        self.assertEqual(self.clock.getDelayedCalls(), [])
