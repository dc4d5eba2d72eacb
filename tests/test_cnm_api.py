"""Tests for the Docker driver's routes, its driver logic and its mirror."""

import json
import os
import stat
import tempfile

import attr
from treq.testing import StubTreq
from twisted.internet import reactor
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from contivd import ipam
from contivd.cnm.api import CALLS, MAX_BODY, DriverAPI, Empty, PluginApp
from contivd.cnm.component import DockerPlugin, remove_stale_socket
from contivd.cnm.dockernets import LABEL, DockerError, DockerNetwork, Mirror
from contivd.cnm.driver import (
    DockNet,
    Driver,
    docknet_key,
    docknet_prefix,
    reservation,
)
from contivd.ctl.main import net_create
from contivd.errors import ConfigError
from contivd.model import (
    ENDPOINTS,
    NETS,
    OPER_ENDPOINTS,
    Network,
    network_key,
)
from contivd.options import AgentConfig
from contivd.ovsdb import PluggedEndpoint, port_names
from contivd.store.memory import MemoryStore

HOST = "hostA"
DOCKER_NET = "d0c4e7" * 8
DOCKER_EP = "e9" * 32
GATEWAY_OPTS = {"RequestAddressType": "com.docker.network.gateway"}


class FakeOVSDB:
    """Plugs and unplugs endpoints in a dict; fails when told to."""

    def __init__(self):
        self.ports = {}
        self.fail_plug = False
        self.plugs = 0
        #: When set, plugs wait for L{release}; a second plug of the same
        #: endpoint meanwhile fails, as OVSDB refuses a second port row
        #: of one name.
        self.slow = False
        self._pending = []

    def plug_endpoint(self, bridge, endpoint_id, mac=None, mtu=None,
                      tag=None, tx_checksum_off=False, timeout=None):
        self.plugs += 1
        ovs_name, container_name = port_names(endpoint_id)
        if self.slow and any(e == endpoint_id for e, _ in self._pending):
            return fail(RuntimeError("constraint violation"))
        self.ports[endpoint_id] = (bridge, mac, tx_checksum_off)
        if self.fail_plug:
            return fail(RuntimeError("ovs-vswitchd said no"))
        plugged = PluggedEndpoint(
            endpoint_id=endpoint_id, ofport=len(self.ports),
            ovs_name=ovs_name, container_name=container_name)
        if self.slow:
            d = Deferred()
            self._pending.append((endpoint_id, lambda: d.callback(plugged)))
            return d
        return succeed(plugged)

    def release(self):
        """Let the waiting plugs finish, and the ones they let start."""
        self.slow = False
        while self._pending:
            self._pending.pop(0)[1]()

    def unplug_endpoint(self, bridge, endpoint_id, timeout=None):
        return succeed(self.ports.pop(endpoint_id, None) is not None)


class FailingStore(MemoryStore):
    """A MemoryStore whose puts below one prefix fail."""

    fail_prefix = None

    def put(self, key, value, ttl=None):
        if self.fail_prefix and key.startswith(self.fail_prefix):
            return fail(RuntimeError(f"etcd refused {key}"))
        return super().put(key, value, ttl)


class PluginTestCase(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.store = FailingStore(self.clock)
        self.ovsdb = FakeOVSDB()
        self.plugged = []
        self.driver = Driver(self.store, HOST, "192.0.2.1",
                             lambda: self.ovsdb, "netdev",
                             on_plugged=lambda *a: self.plugged.append(a))
        self.app = PluginApp(DriverAPI(self.driver), self.clock)
        self.client = StubTreq(self.app.resource())

    def post(self, call, body=None, raw=None):
        data = raw if raw is not None else (
            b"" if body is None else json.dumps(body).encode())
        response = self.successResultOf(
            self.client.post("http://plugin/" + call, data=data))
        content = self.successResultOf(response.content())
        return response.code, json.loads(content)

    def network(self, name="web", subnet="10.9.1.0/24",
                gateway="10.9.1.254"):
        net = Network.build(name, subnet, gateway)
        return self.successResultOf(Deferred.fromCoroutine(
            net_create(self.store, net, False)))

    def keys(self, prefix):
        listing = self.successResultOf(self.store.list(prefix))
        return listing.values()

    def docker_network(self, name="web"):
        """What Docker does for `docker network create` of a mirror."""
        opts = {"network": name, "tenant": "default"}
        code, pool = self.post("IpamDriver.RequestPool",
                               {"Pool": "10.9.1.0/24", "Options": opts})
        self.assertEqual(code, 200)
        code, gw = self.post("IpamDriver.RequestAddress", {
            "PoolID": pool["PoolID"], "Address": "10.9.1.254",
            "Options": GATEWAY_OPTS})
        self.assertEqual((code, gw["Address"]), (200, "10.9.1.254/24"))
        code, _ = self.post("NetworkDriver.CreateNetwork", {
            "NetworkID": DOCKER_NET,
            "Options": {"com.docker.network.generic": opts},
            "IPv4Data": [{"Pool": "10.9.1.0/24",
                          "Gateway": "10.9.1.254/24"}]})
        self.assertEqual(code, 200)
        return pool["PoolID"]

    def container(self, pool_id, address="", ep=DOCKER_EP, mac=""):
        code, addr = self.post("IpamDriver.RequestAddress",
                               {"PoolID": pool_id, "Address": address})
        self.assertEqual(code, 200, addr)
        code, created = self.post("NetworkDriver.CreateEndpoint", {
            "NetworkID": DOCKER_NET, "EndpointID": ep,
            "Interface": {"Address": addr["Address"], "MacAddress": mac}})
        self.assertEqual(code, 200, created)
        return addr["Address"], created


class ProtocolTests(PluginTestCase):
    def test_activate_names_both_drivers(self):
        """Plugin.Activate, with no body at all, names both drivers."""
        self.assertEqual(self.post("Plugin.Activate"), (
            200, {"Implements": ["NetworkDriver", "IpamDriver"]}))

    def test_capabilities(self):
        """The network driver is local in scope; IPAM needs no MAC."""
        code, caps = self.post("NetworkDriver.GetCapabilities")
        self.assertEqual((code, caps["Scope"]), (200, "local"))
        code, caps = self.post("IpamDriver.GetCapabilities", {})
        self.assertEqual(caps["RequiresMACAddress"], False)
        code, spaces = self.post("IpamDriver.GetDefaultAddressSpaces")
        self.assertTrue(spaces["LocalDefaultAddressSpace"])

    def test_unknown_call(self):
        """An unknown path gets 404 with the error field of its protocol."""
        code, body = self.post("NetworkDriver.NoSuchCall", {})
        self.assertEqual(code, 404)
        self.assertIn("NoSuchCall", body["Err"])
        code, body = self.post("IpamDriver.Nope", {})
        self.assertEqual(code, 404)
        self.assertIn("Nope", body["Error"])
        code, body = self.post("a/b/c", {})
        self.assertEqual(code, 404)

    def test_get_is_refused(self):
        """A known call made with GET gets 405, not a handler run."""
        response = self.successResultOf(
            self.client.get("http://plugin/Plugin.Activate"))
        self.assertEqual(response.code, 405)
        body = json.loads(self.successResultOf(response.content()))
        self.assertIn("POST", body["Err"])

    def test_malformed_json_everywhere(self):
        """
        Broken JSON to every call that takes a body gets 400 with the
        protocol's error field, and the app goes on serving.
        """
        for call, (protocol, kind, _) in CALLS.items():
            if kind is Empty:
                continue
            code, body = self.post(call, raw=b"{bad json")
            field = "Error" if protocol == "IpamDriver" else "Err"
            self.assertEqual(code, 400, call)
            self.assertIn("body", body[field], call)
            self.assertEqual(self.post("Plugin.Activate")[0], 200)

    def test_huge_and_deep_bodies(self):
        """
        A body over the size limit, and JSON nested too deep to parse,
        get 400 naming the body, before anything is stored.
        """
        huge = json.dumps({"NetworkID": "x" * (MAX_BODY + 10)}).encode()
        code, body = self.post("NetworkDriver.CreateNetwork", raw=huge)
        self.assertEqual(code, 400)
        self.assertIn("body: is over", body["Err"])
        code, body = self.post("IpamDriver.RequestPool",
                               raw=b"[" * 100000 + b"]" * 100000)
        self.assertEqual(code, 400)
        self.assertIn("body", body["Error"])
        listing = self.successResultOf(self.store.list("/contiv.io"))
        self.assertEqual(listing.nodes, ())

    def test_incomplete_bodies_name_the_field(self):
        """An empty object to every call with required fields names one."""
        expect = {
            "NetworkDriver.CreateNetwork": "NetworkID",
            "NetworkDriver.CreateEndpoint": "NetworkID",
            "NetworkDriver.Join": "NetworkID",
            "IpamDriver.RequestAddress": "PoolID",
            "IpamDriver.ReleaseAddress": "PoolID",
            "IpamDriver.ReleasePool": "PoolID",
        }
        for call, field in expect.items():
            code, body = self.post(call, {})
            message = body.get("Err") or body.get("Error")
            self.assertEqual(code, 400, call)
            self.assertIn(field, message, call)
        code, body = self.post("NetworkDriver.CreateEndpoint", {
            "NetworkID": "n", "EndpointID": "e", "Interface": "eth0"})
        self.assertEqual(code, 400)
        self.assertIn("Interface", body["Err"])
        code, body = self.post("NetworkDriver.CreateNetwork", {
            "NetworkID": "n", "IPv4Data": [{"Gateway": "1.2.3.4/24"}]})
        self.assertIn("IPv4Data[0].Pool", body["Err"])

    def test_wrong_type_gets_ipam_error(self):
        """A PoolID that is a number gets 400 with Error, naming it."""
        code, body = self.post("IpamDriver.RequestAddress", {"PoolID": 5})
        self.assertEqual(code, 400)
        self.assertIn("PoolID", body["Error"])
        self.assertNotIn("Err", body)

    def test_non_object_body(self):
        """A JSON list is refused as a body."""
        code, body = self.post("IpamDriver.RequestPool", [1, 2])
        self.assertEqual(code, 400)
        self.assertIn("object", body["Error"])

    def test_ipam_failure_is_not_200(self):
        """An IPAM failure is non-200 with Error (Contiv answered 200)."""
        code, body = self.post("IpamDriver.RequestAddress",
                               {"PoolID": "nosuch.default|10.1.0.0/16"})
        self.assertEqual(code, 404)
        self.assertIn("nosuch.default", body["Error"])
        code, body = self.post("IpamDriver.RequestAddress",
                               {"PoolID": "not a pool"})
        self.assertEqual(code, 400)
        self.assertIn("--ipam-driver contiv", body["Error"])

    def test_deadline(self):
        """A call stuck on etcd is answered 504 once its deadline passes."""
        self.network()
        self.store.set_available(False)
        d = self.client.post("http://plugin/IpamDriver.RequestAddress",
                             data=json.dumps({
                                 "PoolID": "web.default|10.9.1.0/24"}))
        self.assertNoResult(d)
        self.clock.advance(21)
        self.client.flush()
        response = self.successResultOf(d)
        self.assertEqual(response.code, 504)
        body = json.loads(self.successResultOf(response.content()))
        self.assertIn("longer than 20 s", body["Error"])

    def test_v6_pool_refused(self):
        """An IPv6 pool request is refused with what to do."""
        code, body = self.post("IpamDriver.RequestPool",
                               {"Pool": "fd00::/64", "V6": True})
        self.assertEqual(code, 400)
        self.assertIn("--ipv6", body["Error"])


class EndpointTests(PluginTestCase):
    def setUp(self):
        super().setUp()
        self.net = self.network()
        self.pool_id = self.docker_network()

    def test_pool_and_mapping(self):
        """RequestPool names the network; CreateNetwork maps the id."""
        self.assertEqual(self.pool_id, "web.default|10.9.1.0/24")
        mapping = DockNet.from_json(self.successResultOf(
            self.store.get(docknet_key(HOST, DOCKER_NET))).value)
        self.assertEqual((mapping.net_id, mapping.created_by_docker),
                         ("web.default", False))

    def test_endpoint_life(self):
        """
        An endpoint gets the first address and Contiv's MAC, a port, both
        etcd records, a Join answer, and leaves nothing after delete and
        release.
        """
        address, created = self.container(self.pool_id)
        self.assertEqual(address, "10.9.1.1/24")
        self.assertEqual(created, {"Interface": {
            "MacAddress": "02:02:0a:09:01:01"}})
        ep_id = f"web.default-{DOCKER_EP}"
        self.assertEqual(self.ovsdb.ports[ep_id],
                         ("contivVxlanBridge", "02:02:0a:09:01:01", True))
        self.assertEqual(self.plugged, [(ep_id, 1)])
        config = json.loads(self.keys(ENDPOINTS)[f"{ENDPOINTS}/{ep_id}"])
        oper = json.loads(self.keys(OPER_ENDPOINTS)[
            f"{OPER_ENDPOINTS}/{ep_id}"])
        for record in (config, oper):
            self.assertEqual((record["homingHost"], record["vtepIP"],
                              record["ipAddress"]),
                             (HOST, "192.0.2.1", "10.9.1.1"))
        held = self.successResultOf(ipam.allocated_addresses(
            self.store, "web.default"))
        self.assertEqual(held, {"10.9.1.1": ep_id})

        code, joined = self.post("NetworkDriver.Join", {
            "NetworkID": DOCKER_NET, "EndpointID": DOCKER_EP,
            "SandboxKey": "/var/run/docker/netns/x"})
        self.assertEqual(code, 200)
        self.assertEqual(joined["InterfaceName"], {
            "SrcName": port_names(ep_id)[1], "DstPrefix": "eth"})
        self.assertEqual(joined["Gateway"], "10.9.1.254")

        ep = {"NetworkID": DOCKER_NET, "EndpointID": DOCKER_EP}
        self.assertEqual(self.post("NetworkDriver.Leave", ep), (200, {}))
        self.assertEqual(self.post("NetworkDriver.DeleteEndpoint", ep),
                         (200, {}))
        self.assertEqual(self.ovsdb.ports, {})
        self.assertEqual(self.keys(ENDPOINTS), {})
        self.assertEqual(self.keys(OPER_ENDPOINTS), {})
        held = self.successResultOf(ipam.allocated_addresses(
            self.store, "web.default"))
        self.assertEqual(held, {"10.9.1.1": reservation(HOST)})
        self.assertEqual(self.post("IpamDriver.ReleaseAddress", {
            "PoolID": self.pool_id, "Address": address}), (200, {}))
        self.assertEqual(self.successResultOf(ipam.allocated_addresses(
            self.store, "web.default")), {})

    def test_idempotent(self):
        """Every call repeated, as Docker's retries do, answers the same."""
        address, first = self.container(self.pool_id)
        self.docker_network()
        code, again = self.post("NetworkDriver.CreateEndpoint", {
            "NetworkID": DOCKER_NET, "EndpointID": DOCKER_EP,
            "Interface": {"Address": address}})
        self.assertEqual((code, again), (200, first))
        self.assertEqual(len(self.ovsdb.ports), 1)
        ep = {"NetworkID": DOCKER_NET, "EndpointID": DOCKER_EP}
        release = {"PoolID": self.pool_id, "Address": address}
        for _ in range(2):
            self.assertEqual(self.post("NetworkDriver.Leave", ep)[0], 200)
            self.assertEqual(
                self.post("NetworkDriver.DeleteEndpoint", ep)[0], 200)
        for _ in range(2):
            self.assertEqual(
                self.post("IpamDriver.ReleaseAddress", release)[0], 200)
            self.assertEqual(self.post("IpamDriver.ReleasePool", {
                "PoolID": self.pool_id})[0], 200)
        for _ in range(2):
            self.assertEqual(self.post("NetworkDriver.DeleteNetwork", {
                "NetworkID": DOCKER_NET})[0], 200)
        self.assertEqual(self.keys(docknet_key(HOST, DOCKER_NET)), {})
        self.assertIn(network_key("web"), self.keys(NETS))

    def create(self, address, mac=None, endpoint=DOCKER_EP):
        interface = {"Address": address}
        if mac:
            interface["MacAddress"] = mac
        return self.post("NetworkDriver.CreateEndpoint", {
            "NetworkID": DOCKER_NET, "EndpointID": endpoint,
            "Interface": interface})

    def test_failed_repeat_leaves_the_endpoint(self):
        """
        A repeated CreateEndpoint that is refused (another address, a bad
        MAC) leaves the existing endpoint, its port and its address as
        they were.
        """
        address, _ = self.container(self.pool_id)
        ep_id = f"web.default-{DOCKER_EP}"
        held = self.keys(ipam.address_prefix("web.default"))
        before = (dict(self.ovsdb.ports), held, self.keys(ENDPOINTS))
        code, body = self.create("10.9.1.7/24")
        self.assertEqual(code, 409, body)
        self.assertIn(ep_id, body["Err"])
        code, body = self.create(address, mac="zz")
        self.assertEqual(code, 400, body)
        self.assertIn("Interface.MacAddress", body["Err"])
        self.assertEqual(
            (dict(self.ovsdb.ports),
             self.keys(ipam.address_prefix("web.default")),
             self.keys(ENDPOINTS)), before)

    def test_concurrent_repeats_leave_the_endpoint(self):
        """
        The same CreateEndpoint sent several times at once makes one
        endpoint; every call answers alike.
        """
        self.ovsdb.slow = True
        answers = [self.client.post(
            "http://plugin/NetworkDriver.CreateEndpoint",
            data=json.dumps({"NetworkID": DOCKER_NET,
                             "EndpointID": DOCKER_EP,
                             "Interface": {"Address": "10.9.1.9/24"}}
                            ).encode()) for _ in range(3)]
        self.ovsdb.release()
        self.client.flush()
        codes = [self.successResultOf(a).code for a in answers]
        self.assertEqual(codes, [200, 200, 200])
        self.assertEqual(list(self.ovsdb.ports),
                         [f"web.default-{DOCKER_EP}"])

    def test_requested_prefix_must_match_the_pool(self):
        """An address asked for with another prefix length is refused."""
        code, body = self.post("IpamDriver.RequestAddress", {
            "PoolID": self.pool_id, "Address": "10.9.1.8/16"})
        self.assertEqual(code, 400, body)
        self.assertIn("prefix length", body["Error"])
        code, body = self.post("IpamDriver.RequestAddress", {
            "PoolID": self.pool_id, "Address": "10.9.1.8/24"})
        self.assertEqual((code, body["Address"]), (200, "10.9.1.8/24"))

    def test_reserved_addresses_and_taken_macs_refused(self):
        """
        The network, broadcast and gateway addresses are refused, and so
        is a MAC another endpoint of the network has.
        """
        for address in ("10.9.1.0/24", "10.9.1.255/24", "10.9.1.254/24"):
            code, body = self.create(address)
            self.assertEqual(code, 400, body)
            self.assertIn("Interface.Address", body["Err"])
        self.assertEqual(self.create("10.9.1.20/24")[0], 200)
        code, body = self.create("10.9.1.21/24", mac="02:02:0a:09:01:14",
                                 endpoint="f" * 64)
        self.assertEqual(code, 409, body)
        self.assertIn("MAC 02:02:0a:09:01:14 is taken", body["Err"])
        self.assertEqual(len(self.ovsdb.ports), 1)

    def test_requested_address(self):
        """
        --ip is honoured and a retry of it gets it again; once claimed by
        an endpoint, another request for it fails with 409 and Error.
        """
        request = {"PoolID": self.pool_id, "Address": "10.9.1.50"}
        for _ in range(2):
            self.assertEqual(self.post("IpamDriver.RequestAddress",
                                       request),
                             (200, {"Address": "10.9.1.50/24", "Data": {}}))
        self.post("NetworkDriver.CreateEndpoint", {
            "NetworkID": DOCKER_NET, "EndpointID": DOCKER_EP,
            "Interface": {"Address": "10.9.1.50/24"}})
        code, body = self.post("IpamDriver.RequestAddress", request)
        self.assertEqual(code, 409)
        self.assertIn("10.9.1.50", body["Error"])
        self.assertIn(DOCKER_EP, body["Error"])

    def test_second_claim_fails_at_create_endpoint(self):
        """Two endpoints given the same address: the second one fails."""
        self.container(self.pool_id, "10.9.1.7")
        code, body = self.post("NetworkDriver.CreateEndpoint", {
            "NetworkID": DOCKER_NET, "EndpointID": "other",
            "Interface": {"Address": "10.9.1.7/24"}})
        self.assertEqual(code, 409)
        self.assertIn("held by", body["Err"])
        self.assertEqual(len(self.ovsdb.ports), 1)

    def test_distinct_addresses(self):
        """Twenty requests get twenty distinct addresses."""
        got = {self.post("IpamDriver.RequestAddress",
                         {"PoolID": self.pool_id})[1]["Address"]
               for _ in range(20)}
        self.assertEqual(len(got), 20)
        self.assertNotIn("10.9.1.254/24", got)

    def test_docker_mac_kept(self):
        """A MAC Docker gave is used and not answered back."""
        _, created = self.container(self.pool_id, mac="02:aa:bb:cc:dd:ee")
        self.assertEqual(created, {})
        ep_id = f"web.default-{DOCKER_EP}"
        self.assertEqual(self.ovsdb.ports[ep_id][1], "02:aa:bb:cc:dd:ee")

    def test_plug_failure_undoes_claim(self):
        """
        When the port cannot be made, what the plug left is removed and
        the address claim is undone.
        """
        self.ovsdb.fail_plug = True
        code, addr = self.post("IpamDriver.RequestAddress",
                               {"PoolID": self.pool_id})
        code, body = self.post("NetworkDriver.CreateEndpoint", {
            "NetworkID": DOCKER_NET, "EndpointID": DOCKER_EP,
            "Interface": {"Address": addr["Address"]}})
        self.assertEqual(code, 500)
        self.assertIn("ovs-vswitchd said no", body["Err"])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(self.successResultOf(ipam.allocated_addresses(
            self.store, "web.default")), {"10.9.1.1": reservation(HOST)})
        self.assertEqual(self.keys(OPER_ENDPOINTS), {})
        self.assertEqual(self.ovsdb.ports, {})

    def test_store_failure_undoes_port(self):
        """When etcd refuses the endpoint, the port and claim are undone."""
        self.store.fail_prefix = ENDPOINTS + "/"
        code, addr = self.post("IpamDriver.RequestAddress",
                               {"PoolID": self.pool_id})
        code, body = self.post("NetworkDriver.CreateEndpoint", {
            "NetworkID": DOCKER_NET, "EndpointID": DOCKER_EP,
            "Interface": {"Address": addr["Address"]}})
        self.assertEqual(code, 500)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(self.ovsdb.plugs, 1)
        self.assertEqual(self.ovsdb.ports, {})
        self.assertEqual(self.keys(OPER_ENDPOINTS), {})
        self.assertEqual(self.successResultOf(ipam.allocated_addresses(
            self.store, "web.default")), {"10.9.1.1": reservation(HOST)})

    def test_no_ovsdb(self):
        """Without an OVSDB connection CreateEndpoint fails and says so."""
        self.ovsdb = None
        code, addr = self.post("IpamDriver.RequestAddress",
                               {"PoolID": self.pool_id})
        code, body = self.post("NetworkDriver.CreateEndpoint", {
            "NetworkID": DOCKER_NET, "EndpointID": DOCKER_EP,
            "Interface": {"Address": addr["Address"]}})
        self.assertEqual(code, 500)
        self.assertIn("not connected to OVSDB", body["Err"])

    def test_unknown_network(self):
        """CreateEndpoint on a Docker network we never saw gets 404."""
        code, body = self.post("NetworkDriver.CreateEndpoint", {
            "NetworkID": "f" * 64, "EndpointID": DOCKER_EP,
            "Interface": {"Address": "10.9.1.3/24"}})
        self.assertEqual(code, 404)
        self.assertIn("-d contiv", body["Err"])


class DockerMadeNetworkTests(PluginTestCase):
    def test_create_and_delete(self):
        """
        docker network create -d contiv --subnet makes the contiv network
        with a VNI, and docker network rm removes it again.
        """
        code, pool = self.post("IpamDriver.RequestPool",
                               {"Pool": "10.20.0.0/16"})
        self.assertEqual(pool["PoolID"], "10.20.0.0/16")
        code, gw = self.post("IpamDriver.RequestAddress", {
            "PoolID": pool["PoolID"], "Options": GATEWAY_OPTS})
        self.assertEqual(gw["Address"], "10.20.255.254/16")
        code, body = self.post("NetworkDriver.CreateNetwork", {
            "NetworkID": DOCKER_NET,
            "Options": {"com.docker.network.generic": {"network": "dn"}},
            "IPv4Data": [{"Pool": "10.20.0.0/16",
                          "Gateway": gw["Address"]}]})
        self.assertEqual(code, 200, body)
        stored = Network.from_json(self.keys(NETS)[network_key("dn")])
        self.assertEqual((str(stored.subnet), stored.gateway),
                         ("10.20.0.0/16", "10.20.255.254"))
        self.assertGreater(stored.ext_pkt_tag, 0)
        code, addr = self.post("IpamDriver.RequestAddress",
                               {"PoolID": pool["PoolID"]})
        self.assertEqual(addr["Address"], "10.20.0.1/16")
        self.post("NetworkDriver.DeleteNetwork", {"NetworkID": DOCKER_NET})
        self.assertEqual(self.keys(NETS), {})
        self.assertEqual(self.successResultOf(ipam.tags_in_use(
            self.store, ipam.VXLAN_POOL)), {})

    def test_mapping_written_before_the_network(self):
        """
        When CreateNetwork makes the contiv network, the mapping that
        says Docker made it is in etcd before the network is, so that
        the network mirror never makes a second Docker network for it.
        """
        seen = []
        listing = self.successResultOf(self.store.list(NETS))

        def created(event):
            mappings = self.successResultOf(
                self.store.list(docknet_prefix(HOST)))
            seen.append([n.key for n in mappings.nodes])

        self.store.watch(NETS, created, listing)
        code, body = self.post("NetworkDriver.CreateNetwork", {
            "NetworkID": DOCKER_NET,
            "Options": {"com.docker.network.generic": {"network": "dn"}},
            "IPv4Data": [{"Pool": "10.22.0.0/24"}]})
        self.assertEqual(code, 200, body)
        self.assertEqual(seen, [[docknet_key(HOST, DOCKER_NET)]])

    def test_default_name(self):
        """Without -o network the contiv network is named by the id."""
        self.post("NetworkDriver.CreateNetwork", {
            "NetworkID": DOCKER_NET,
            "IPv4Data": [{"Pool": "10.21.0.0/24"}]})
        self.assertIn(network_key("docker-" + DOCKER_NET[:12]),
                      self.keys(NETS))

    def test_subnet_mismatch(self):
        """A mirror whose subnet differs from etcd's is refused."""
        self.network()
        code, body = self.post("IpamDriver.RequestPool", {
            "Pool": "10.99.0.0/24", "Options": {"network": "web"}})
        self.assertEqual(code, 400)
        self.assertIn("10.9.1.0/24", body["Error"])


@attr.s(auto_attribs=True)
class FakeDocker:
    """The Docker calls of the mirror, on a list of networks."""

    present: list = attr.Factory(list)
    fail: bool = False
    created: list = attr.Factory(list)
    removed: list = attr.Factory(list)

    def networks(self):
        if self.fail:
            return fail(DockerError("dockerd is away"))
        return succeed(list(self.present))

    def create_network(self, network):
        self.created.append(network.id)
        self.present.append(DockerNetwork(
            f"id{len(self.created)}", network.network_name, "contiv",
            {LABEL: network.id}))
        return succeed(f"id{len(self.created)}")

    def remove_network(self, docker_id):
        self.removed.append(docker_id)
        self.present = [n for n in self.present if n.id != docker_id]
        return succeed(None)


class MirrorTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.store = MemoryStore(self.clock)
        self.docker = FakeDocker()
        self.mirror = Mirror(self.store, self.docker, HOST, self.clock,
                             rand=lambda: 0.0)

    def nets(self, *names):
        return {network_key(n): Network.build(n, f"10.{i}.0.0/24")
                .to_json() for i, n in enumerate(names)}

    def test_creates_and_removes(self):
        """Missing mirrors are made; a mirror of a gone network goes."""
        self.docker.present.append(DockerNetwork(
            "old", "old", "contiv", {LABEL: "old.default"}))
        self.docker.present.append(DockerNetwork(
            "mine", "mine", "contiv", {}))
        self.mirror.start(self.nets("a", "b"))
        self.assertEqual(self.docker.created, ["a.default", "b.default"])
        self.assertEqual(self.docker.removed, ["old"])
        self.mirror.start({})
        self.assertEqual(len(self.docker.created), 2)

    def test_skips_networks_docker_made_here(self):
        """A network Docker made on this host is not mirrored again."""
        mapping = DockNet(docker_id="x", network_name="a",
                          created_by_docker=True)
        self.store.put(docknet_key(HOST, "x"), mapping.to_json())
        self.mirror.start(self.nets("a"))
        self.assertEqual(self.docker.created, [])

    def test_retries_with_backoff(self):
        """While dockerd is away the pass is retried, further apart."""
        self.docker.fail = True
        self.mirror.start(self.nets("a"))
        self.clock.advance(0.5)
        self.clock.advance(1.0)
        self.assertEqual(self.docker.created, [])
        self.docker.fail = False
        self.clock.advance(2.0)
        self.assertEqual(self.docker.created, ["a.default"])
        self.mirror.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])


class FakeAgent:
    def __init__(self, plugin_dir):
        self.config = AgentConfig(docker_plugin_dir=plugin_dir,
                                  host_label=HOST)
        self.reactor = reactor
        self.store = MemoryStore()
        self.ovsdb = FakeOVSDB()

    def component(self, name):
        return None

    async def wait_for(self, waiter, *names, why=""):
        """The fake agent has no other components to wait for."""


class SocketTests(TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp()
        self.addCleanup(os.rmdir, self.dir)

    async def test_socket_life(self):
        """
        The socket replaces a stale one, has mode 0660, answers, and is
        gone after stop.
        """
        import socket as sockets

        path = os.path.join(self.dir, "contiv.sock")
        stale = sockets.socket(sockets.AF_UNIX)
        stale.bind(path)
        stale.close()
        plugin = DockerPlugin(FakeAgent(self.dir))
        await plugin.start()
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o660)
        from treq.client import HTTPClient
        from twisted.web.client import Agent

        from contivd.cnm.dockernets import _UnixEndpoints

        http = HTTPClient(Agent.usingEndpointFactory(
            reactor, _UnixEndpoints(reactor, path)))
        response = await http.post("http://p/Plugin.Activate")
        self.assertEqual(json.loads(await response.content())["Implements"],
                         ["NetworkDriver", "IpamDriver"])
        await plugin.stop()
        self.assertFalse(os.path.exists(path))

    def test_not_a_socket(self):
        """A regular file where the socket goes is refused, not removed."""
        path = os.path.join(self.dir, "contiv.sock")
        with open(path, "w"):
            pass
        self.addCleanup(os.unlink, path)
        self.assertRaises(ConfigError, remove_stale_socket, path)


class SweepTests(PluginTestCase):
    def test_unused_reservation_freed_after_an_interval(self):
        """
        An address requested but never claimed is freed on the second
        sweep that sees it; claimed ones and other hosts' stay.
        """
        from contivd.cnm.driver import ReservationSweep

        self.network()
        self.pool_id = self.docker_network()
        self.container(self.pool_id)
        self.post("IpamDriver.RequestAddress", {"PoolID": self.pool_id})
        other = ipam.address_key("web.default", "10.9.1.77")
        self.store.create(other, reservation("hostB"))
        sweep = ReservationSweep(self.store, HOST)
        self.assertEqual(self.successResultOf(sweep.sweep()), [])
        self.assertEqual(self.successResultOf(sweep.sweep()), [
            ipam.address_key("web.default", "10.9.1.2")])
        held = self.successResultOf(ipam.allocated_addresses(
            self.store, "web.default"))
        self.assertEqual(sorted(held), ["10.9.1.1", "10.9.1.77"])
