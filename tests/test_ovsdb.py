"""Tests for the OVSDB client and veth helpers, against a real OVS."""

import secrets
import subprocess
import threading

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from twisted.trial.unittest import SynchronousTestCase, TestCase

from contivd.constants import (
    DATAPATH_IDS,
    ENDPOINT_KEY,
    OWNER_KEY,
    PEER_KEY,
    VXLAN_BRIDGE,
    VXLAN_OVERHEAD,
)
from contivd.errors import ConfigError, Conflict, NotFound
from contivd.harness import Harness, skip_reason
from contivd.ovsdb import (
    OVSDB,
    OVSDBTimeout,
    controller_target,
    delete_veth,
    link_exists,
    lowest_host_mtu,
    port_names,
    tunnel_name,
)
from contivd.ovsdb.client import OWNER
from contivd.ovsdb.veth import MAX_NAME, link_info

REASON = skip_reason("ovsdb-server", "ovs-vswitchd")
BRIDGE = VXLAN_BRIDGE
DPID = DATAPATH_IDS[VXLAN_BRIDGE]
TARGET = "tcp:127.0.0.1:6633"
OF13_HELLO = bytes([4, 0, 0, 8, 0, 0, 0, 1])


def _tx_checksumming(netns, name):
    out = subprocess.run(["ip", "netns", "exec", netns, "ethtool", "-k",
                          name], capture_output=True, text=True,
                         check=True).stdout
    for line in out.splitlines():
        if line.startswith("tx-checksumming:"):
            return line.split(":", 1)[1].split()[0]
    raise AssertionError(f"ethtool -k {name} has no tx-checksumming line")


def _value(text):
    return text.strip().strip('"')


class NamingTests(SynchronousTestCase):
    def test_controller_target_from_of_listen(self):
        """A Twisted TCP server endpoint gives the matching OVS target."""
        self.assertEqual(controller_target("tcp:6633:interface=127.0.0.1"),
                         "tcp:127.0.0.1:6633")
        self.assertEqual(controller_target("tcp:port=6634"),
                         "tcp:127.0.0.1:6634")
        self.assertEqual(controller_target("tcp:6633:interface=0.0.0.0"),
                         "tcp:127.0.0.1:6633")
        self.assertEqual(
            controller_target("tcp6:6633:interface=\\:\\:1"),
            "tcp:[::1]:6633")
        self.assertEqual(controller_target("unix:/run/of.sock"),
                         "unix:/run/of.sock")

    def test_controller_target_refuses_other_endpoints(self):
        """An endpoint the switch cannot dial is a configuration error."""
        self.assertRaises(ConfigError, controller_target,
                          "ssl:6633:privateKey=k.pem")
        self.assertRaises(ConfigError, controller_target, "tcp:none")

    def test_tunnel_name(self):
        """Tunnel names are vxif and the address in hex, one per address."""
        self.assertEqual(tunnel_name("192.168.2.10"), "vxifc0a8020a")
        self.assertNotEqual(tunnel_name("1.21.1.1"),
                            tunnel_name("12.1.1.1"))
        self.assertLessEqual(len(tunnel_name("255.255.255.255")), MAX_NAME)

    def test_port_names(self):
        """Port names are stable, distinct per end and fit IFNAMSIZ."""
        ovs_side, container_side = port_names("net.tenant-" + "f" * 64)
        self.assertEqual((ovs_side, container_side),
                         port_names("net.tenant-" + "f" * 64))
        self.assertNotEqual(ovs_side, container_side)
        self.assertLessEqual(len(ovs_side), MAX_NAME)
        self.assertLessEqual(len(container_side), MAX_NAME)
        self.assertNotEqual(port_names("a")[0], port_names("b")[0])


class DeadlineTests(TestCase):
    @inlineCallbacks
    def test_unreachable_server_times_out(self):
        """A call to a server that never answers fails at its deadline."""
        client = OVSDB(reactor, "unix:/nonexistent/contivd-db.sock",
                       timeout=0.5)
        self.addCleanup(client.close)
        error = yield self.assertFailure(client.bridge_exists(BRIDGE),
                                         OVSDBTimeout)
        self.assertIn("unix:/nonexistent/contivd-db.sock", str(error))
        self.assertIn("ovsdb-server", str(error))
        self.assertFalse(client.connected)


class _Hello(Protocol):
    def connectionMade(self):
        self.factory.connections.append(self)
        self.lost = Deferred()
        self.transport.write(OF13_HELLO)

    def connectionLost(self, reason):
        self.lost.callback(None)


class OVSDBTests(TestCase):
    skip = REASON

    def setUp(self):
        self.harness = Harness()
        self.addCleanup(self.harness.close)
        # A namespace of its own: only one userspace datapath works in each.
        self.netns = self.harness.netns("ovsdb").name
        self.ovs = self.harness.ovs(netns=self.netns)
        self.client = OVSDB(reactor, self.ovs.remote, timeout=20,
                            netns=self.netns)
        self.addCleanup(self.client.close)
        self.token = secrets.token_hex(3)
        self.endpoints = []
        self.addCleanup(self._no_veth_left)
        return self.client.connect()

    def _no_veth_left(self):
        left = [name for endpoint in self.endpoints
                for name in port_names(endpoint)
                if link_exists(name, netns=self.netns)]
        for name in left:
            delete_veth(name, netns=self.netns)
        self.assertEqual(left, [], "veths left behind")

    def endpoint(self, name):
        """An endpoint id unique to this test run, cleaned up after."""
        endpoint_id = f"net.default-{self.token}-{name}"
        self.endpoints.append(endpoint_id)
        return endpoint_id

    def info(self, name):
        return link_info(name, netns=self.netns)

    def tx(self, name):
        return _tx_checksumming(self.netns, name)

    def exists(self, name):
        return link_exists(name, netns=self.netns)

    def get(self, table, record, column):
        return _value(self.ovs.vsctl("get", table, record, column))

    def bridge(self):
        return self.client.ensure_bridge(BRIDGE, TARGET, "netdev", DPID)

    @inlineCallbacks
    def test_bridge_created_with_every_attribute(self):
        """A new bridge is secure, OpenFlow13, netdev, with our dpid."""
        self.assertFalse((yield self.client.bridge_exists(BRIDGE)))
        self.assertEqual((yield self.bridge()), "created")

        self.assertTrue((yield self.client.bridge_exists(BRIDGE)))
        self.assertEqual(self.get("Bridge", BRIDGE, "fail_mode"), "secure")
        self.assertEqual(self.get("Bridge", BRIDGE, "protocols"),
                         "[OpenFlow13]")
        self.assertEqual(self.get("Bridge", BRIDGE, "datapath_type"),
                         "netdev")
        self.assertEqual(
            self.get("Bridge", BRIDGE, "other_config:datapath-id"),
            "00000000c0a71001")
        self.assertEqual(self.ovs.vsctl("get-controller", BRIDGE).split(),
                         [TARGET])
        self.assertEqual(
            self.get("Bridge", BRIDGE, f"external_ids:{OWNER_KEY}"), OWNER)
        self.assertFalse((yield self.client.controller_connected(BRIDGE)))

    @inlineCallbacks
    def test_bridge_idempotent_and_corrected(self):
        """A second ensure changes nothing; a wrong bridge is corrected."""
        yield self.bridge()
        self.assertEqual((yield self.bridge()), "unchanged")
        self.ovs.vsctl(
            "set", "Bridge", BRIDGE, "fail_mode=standalone",
            "protocols=OpenFlow10,OpenFlow13",
            "other_config:datapath-id=0000000000000001")
        self.ovs.vsctl("set-controller", BRIDGE, "tcp:127.0.0.1:1",
                       "tcp:127.0.0.1:2")

        self.assertEqual((yield self.bridge()), "fixed")

        self.assertEqual(self.get("Bridge", BRIDGE, "fail_mode"), "secure")
        self.assertEqual(self.get("Bridge", BRIDGE, "protocols"),
                         "[OpenFlow13]")
        self.assertEqual(
            self.get("Bridge", BRIDGE, "other_config:datapath-id"),
            "00000000c0a71001")
        self.assertEqual(self.ovs.vsctl("get-controller", BRIDGE).split(),
                         [TARGET])
        self.assertEqual(
            self.ovs.vsctl("--bare", "--columns=target", "list",
                           "Controller").split(), [TARGET])

    @inlineCallbacks
    def test_controller_connected(self):
        """The bridge reports its controller connected once one answers."""
        factory = Factory.forProtocol(_Hello)
        factory.connections = []
        # ovs-vswitchd dials unix sockets only in its own run directory.
        path = self.harness.path("ovs", "of.sock")
        port = reactor.listenUNIX(path, factory)
        self.addCleanup(port.stopListening)
        self.addCleanup(self._drop, factory.connections)
        target = controller_target(f"unix:{path}")
        yield self.client.ensure_bridge(BRIDGE, target, "netdev", DPID)

        connected = False
        for _ in range(100):
            connected = yield self.client.controller_connected(BRIDGE)
            if connected:
                break
            yield deferLater(reactor, 0.1, lambda: None)
        self.assertTrue(connected)

    def _drop(self, connections):
        lost = [c.lost for c in connections]
        for connection in connections:
            connection.transport.abortConnection()
        return Deferred.fromCoroutine(self._all(lost))

    async def _all(self, deferreds):
        for d in deferreds:
            await d

    @inlineCallbacks
    def test_plug_endpoint(self):
        """An endpoint's veth has the MTU, MAC and offload it should."""
        yield self.bridge()
        endpoint_id = self.endpoint("a")
        mac = "02:02:0a:01:01:02"

        plugged = yield self.client.plug_endpoint(
            BRIDGE, endpoint_id, mac=mac, tx_checksum_off=True)

        self.assertEqual((plugged.ovs_name, plugged.container_name),
                         port_names(endpoint_id))
        self.assertIn(plugged.ovs_name,
                      self.ovs.vsctl("list-ports", BRIDGE).split())
        self.assertEqual(int(self.get("Interface", plugged.ovs_name,
                                      "ofport")), plugged.ofport)
        self.assertEqual(
            self.get("Port", plugged.ovs_name,
                     f"external_ids:{ENDPOINT_KEY}"), endpoint_id)
        self.assertEqual(
            self.get("Interface", plugged.ovs_name,
                     f"external_ids:{OWNER_KEY}"), OWNER)
        mtu = lowest_host_mtu(netns=self.netns) - VXLAN_OVERHEAD
        host = self.info(plugged.ovs_name)
        container = self.info(plugged.container_name)
        self.assertEqual((host["kind"], host["mtu"], host["up"]),
                         ("veth", mtu, True))
        self.assertEqual((container["mtu"], container["mac"]), (mtu, mac))
        self.assertEqual(self.tx(plugged.ovs_name), "off")
        self.assertEqual(self.tx(plugged.container_name), "off")

        self.assertTrue((yield self.client.unplug_endpoint(BRIDGE,
                                                           endpoint_id)))

        self.assertNotIn(plugged.ovs_name,
                         self.ovs.vsctl("list-ports", BRIDGE).split())
        self.assertFalse(self.exists(plugged.ovs_name))
        self.assertFalse(self.exists(plugged.container_name))
        self.assertFalse((yield self.client.unplug_endpoint(BRIDGE,
                                                            endpoint_id)))

    @inlineCallbacks
    def test_plug_endpoint_keeps_offload_without_netdev(self):
        """Without tx_checksum_off the veth keeps its checksum offload."""
        yield self.bridge()
        endpoint_id = self.endpoint("b")
        plugged = yield self.client.plug_endpoint(BRIDGE, endpoint_id,
                                                  mtu=1400)
        self.assertEqual(self.info(plugged.ovs_name)["mtu"], 1400)
        self.assertEqual(self.tx(plugged.container_name), "on")
        yield self.client.unplug_endpoint(BRIDGE, endpoint_id)

    @inlineCallbacks
    def test_endpoint_port_idempotent_with_tag(self):
        """Adding the same endpoint port twice keeps its ofport and tag."""
        yield self.bridge()
        endpoint_id = self.endpoint("c")
        plugged = yield self.client.plug_endpoint(BRIDGE, endpoint_id,
                                                  tag=5)
        again = yield self.client.add_endpoint_port(
            BRIDGE, plugged.ovs_name, endpoint_id, tag=5)
        self.assertEqual(again, plugged.ofport)
        self.assertEqual(self.get("Port", plugged.ovs_name, "tag"), "5")

        yield self.client.add_endpoint_port(BRIDGE, plugged.ovs_name,
                                            endpoint_id, tag=7)
        self.assertEqual(self.get("Port", plugged.ovs_name, "tag"), "7")
        records = yield self.client.our_ports(BRIDGE)
        self.assertEqual(
            [(r.name, r.kind, r.endpoint_id, r.tag, r.ofport)
             for r in records],
            [(plugged.ovs_name, "endpoint", endpoint_id, 7,
              plugged.ofport)])
        yield self.client.unplug_endpoint(BRIDGE, endpoint_id)

    @inlineCallbacks
    def test_missing_bridge(self):
        """A port on a bridge that does not exist fails with NotFound."""
        error = yield self.assertFailure(
            self.client.add_tunnel("nosuchbridge", "10.0.0.2"), NotFound)
        self.assertIn("ensure_bridge", str(error))

    @inlineCallbacks
    def test_tunnel_add_and_remove(self):
        """A tunnel port is VXLAN with key=flow, the peer and the port."""
        yield self.bridge()
        name = tunnel_name("192.168.2.10")

        ofport = yield self.client.add_tunnel(BRIDGE, "192.168.2.10", 4789)

        self.assertEqual(int(self.get("Interface", name, "ofport")), ofport)
        self.assertEqual(self.get("Interface", name, "type"), "vxlan")
        for key, wanted in (("remote_ip", "192.168.2.10"), ("key", "flow"),
                            ("dst_port", "4789")):
            self.assertEqual(
                self.get("Interface", name, f"options:{key}"), wanted)
        self.assertEqual(
            self.get("Port", name, f"external_ids:{PEER_KEY}"),
            "192.168.2.10")
        self.assertEqual(
            (yield self.client.add_tunnel(BRIDGE, "192.168.2.10", 4789)),
            ofport)

        yield self.client.add_tunnel(BRIDGE, "192.168.2.10", 8472)
        self.assertEqual(self.get("Interface", name, "options:dst_port"),
                         "8472")

        self.assertTrue((yield self.client.remove_tunnel(BRIDGE,
                                                         "192.168.2.10")))
        self.assertEqual(self.ovs.vsctl("list-ports", BRIDGE).split(), [])
        self.assertFalse((yield self.client.remove_tunnel(BRIDGE,
                                                          "192.168.2.10")))

    @inlineCallbacks
    def test_reconcile_removes_only_our_stale_rows(self):
        """Reconcile removes our stale ports and veths, never foreign ones."""
        yield self.bridge()
        keep, stale = self.endpoint("keep"), self.endpoint("stale")
        kept = yield self.client.plug_endpoint(BRIDGE, keep)
        gone = yield self.client.plug_endpoint(BRIDGE, stale)
        yield self.client.add_tunnel(BRIDGE, "10.0.0.2")
        yield self.client.add_tunnel(BRIDGE, "10.0.0.3")
        self.ovs.vsctl(
            "add-port", BRIDGE, "foreign0", "--", "set", "Interface",
            "foreign0", "type=vxlan", "options:remote_ip=10.0.0.9", "--",
            "set", "Port", "foreign0", f"external_ids:{ENDPOINT_KEY}=old")

        removed = yield self.client.reconcile(BRIDGE, {keep}, {"10.0.0.2"})

        self.assertEqual(removed,
                         sorted([gone.ovs_name, tunnel_name("10.0.0.3")]))
        self.assertEqual(
            sorted(self.ovs.vsctl("list-ports", BRIDGE).split()),
            sorted([kept.ovs_name, tunnel_name("10.0.0.2"), "foreign0"]))
        self.assertFalse(self.exists(gone.ovs_name))
        self.assertFalse(self.exists(gone.container_name))
        self.assertTrue(self.exists(kept.ovs_name))
        self.assertEqual(
            (yield self.client.reconcile(BRIDGE, {keep}, {"10.0.0.2"})), [])
        records = yield self.client.ports(BRIDGE)
        self.assertEqual(
            [(r.name, r.kind) for r in records],
            sorted([(kept.ovs_name, "endpoint"), ("foreign0", "foreign"),
                    (tunnel_name("10.0.0.2"), "tunnel")]))
        yield self.client.unplug_endpoint(BRIDGE, keep)

    @inlineCallbacks
    def test_foreign_ports_are_refused(self):
        """Removing or taking over a foreign port fails with Conflict."""
        yield self.bridge()
        name = tunnel_name("10.0.0.4")
        self.ovs.vsctl("add-port", BRIDGE, name, "--", "set", "Interface",
                       name, "type=vxlan", "options:remote_ip=10.0.0.4")

        yield self.assertFailure(self.client.remove_port(BRIDGE, name),
                                 Conflict)
        error = yield self.assertFailure(
            self.client.add_tunnel(BRIDGE, "10.0.0.4"), Conflict)
        self.assertIn("del-port", str(error))
        self.assertEqual(self.ovs.vsctl("list-ports", BRIDGE).split(),
                         [name])

    @inlineCallbacks
    def test_survives_ovsdb_restart(self):
        """A call made while ovsdb-server is down completes once it is up."""
        yield self.bridge()
        yield self.client.add_tunnel(BRIDGE, "10.0.0.5")

        self.ovs.kill_ovsdb()
        pending = self.client.add_tunnel(BRIDGE, "10.0.0.6")
        yield deferLater(reactor, 0.5, lambda: None)
        self.assertFalse(pending.called)
        self.assertFalse(self.client.connected)
        self.ovs.start_ovsdb()

        ofport = yield pending
        self.assertGreater(ofport, 0)
        self.assertTrue(self.client.connected)
        records = yield self.client.our_ports(BRIDGE)
        self.assertEqual([r.peer for r in records],
                         sorted(["10.0.0.5", "10.0.0.6"],
                                key=lambda p: tunnel_name(p)))

    @inlineCallbacks
    def test_call_times_out_while_server_is_down(self):
        """A call fails with OVSDBTimeout when the server stays away."""
        yield self.bridge()
        self.ovs.kill_ovsdb()
        error = yield self.assertFailure(
            self.client.add_tunnel(BRIDGE, "10.0.0.7", timeout=1.0),
            OVSDBTimeout)
        self.assertIn("add tunnel", str(error))

    @inlineCallbacks
    def test_calls_run_off_the_reactor_thread(self):
        """The IDL runs on a thread of its own, not the reactor's."""
        yield self.client.bridge_exists(BRIDGE)
        thread = self.client._thread
        self.assertIsNot(thread, threading.current_thread())
        self.assertTrue(thread.is_alive())
        yield self.client.close()
        thread.join(5)
        self.assertFalse(thread.is_alive())
