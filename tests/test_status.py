"""Tests for the status server, the agent's metrics and contivctl status."""

import io
import json
import os

import attr
from os_ken.ofproto import ofproto_v1_3_parser as parser
from prometheus_client.parser import text_string_to_metric_families
from treq.testing import StubTreq
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from contivd import ipam, model
from contivd.cluster import Peer
from contivd.constants import VXLAN_BRIDGE
from contivd.ctl import status as ctl_status
from contivd.ctl.main import _parser
from contivd.harness import Harness, run, skip_reason, wait_until
from contivd.metrics import (
    Metrics,
    metrics_for,
    observe_docker_call,
    timed_docker_calls,
)
from contivd.openflow.controller import OpenFlowController
from contivd.openflow.protocol import Counters
from contivd.options import AgentConfig
from contivd.ovsdb import port_names
from contivd.status import StatusApp
from contivd.store.base import IndexCleared, Listing
from contivd.store.memory import MemoryStore
from contivd.store.watch import Watcher
from contivd.supervisor import FAILED, RUNNING, ComponentState
from contivd.view import ClusterView, ObservedSet
from tests.agents import BIN, Agent, plug_endpoint

HOST = "hostA"
NET = "web.default"


class FakeSupervisor:
    def __init__(self, *states):
        self._states = list(states)

    def states(self):
        return self._states


class FakeOVSDB:
    """Unplugs endpoints from a set of port ids."""

    connected = True

    def __init__(self):
        self.ports = set()
        self.fail = False

    def unplug_endpoint(self, bridge, endpoint_id, timeout=None):
        if self.fail:
            return fail(RuntimeError("ovsdb-server went away"))
        gone = endpoint_id in self.ports
        self.ports.discard(endpoint_id)
        return succeed(gone)


class FakeConnection:
    """A switch connection that answers PORT_STATS from a list."""

    is_up = True

    def __init__(self, stats=()):
        self.stats = list(stats)
        self.counters = Counters()
        self.pending = None

    def dump_ports(self, port_no=None):
        if self.pending is not None:
            return self.pending
        return succeed(self.stats)


@attr.s(auto_attribs=True)
class FakeRenderer:
    tunnels: dict = attr.Factory(dict)
    ofports: dict = attr.Factory(dict)


class FakeAgent:
    """The parts of an Agent that the status server reads."""

    def __init__(self):
        self.config = AgentConfig(host_label=HOST, etcd=("http://e:1",))
        self.reactor = Clock()
        self.store = MemoryStore(self.reactor)
        self.supervisor = FakeSupervisor(
            ComponentState("store", RUNNING),
            ComponentState("openflow", RUNNING),
            ComponentState("status", RUNNING))
        self.peers = ObservedSet()
        self.view = ClusterView()
        self.ovsdb = FakeOVSDB()
        self.controller = OpenFlowController(self.reactor)
        self.renderer = FakeRenderer()
        self.arp_mode = "proxy"


def endpoint(ep_id, ip, host=HOST, net=NET):
    return model.Endpoint(net_id=net, endpoint_id=ep_id, ip_address=ip,
                          mac_address="02:02:0a:09:01:01",
                          homing_host=host, vtep_ip="192.0.2.9")


def port_stats(port_no, rx_packets, rx_bytes, tx_packets, tx_bytes):
    return parser.OFPPortStats(
        port_no=port_no, rx_packets=rx_packets, tx_packets=tx_packets,
        rx_bytes=rx_bytes, tx_bytes=tx_bytes, rx_dropped=0, tx_dropped=0,
        rx_errors=0, tx_errors=0, rx_frame_err=0, rx_over_err=0,
        rx_crc_err=0, collisions=0, duration_sec=0, duration_nsec=0)


class RoutesTests(SynchronousTestCase):
    def setUp(self):
        self.agent = FakeAgent()
        self.app = StatusApp(self.agent)
        self.client = StubTreq(self.app.app.resource())

    def request(self, method, path):
        response = self.successResultOf(self.client.request(
            method, "http://status" + path))
        body = self.successResultOf(response.content())
        return response, body

    def get(self, path, method="GET"):
        response, body = self.request(method, path)
        self.assertEqual(
            response.headers.getRawHeaders("content-type"),
            ["application/json"])
        return response.code, json.loads(body)

    def add_endpoint(self, ep):
        """Put an endpoint in etcd (with its address) and the view."""
        for key, value in ((ep.key, ep.to_json()),
                           (f"{model.OPER_ENDPOINTS}/{ep.id}", "{}"),
                           (ipam.address_key(ep.net_id, ep.ip_address),
                            ep.id)):
            self.successResultOf(self.agent.store.put(key, value))
        self.agent.view.set("endpoints", ep.id, ep)

    def keys(self):
        return set(self.successResultOf(
            self.agent.store.list("/")).values())

    def test_healthz_ok(self):
        """/healthz answers 200 while every component runs."""
        self.assertEqual(self.get("/healthz"), (200, {"healthy": True}))

    def test_healthz_down(self):
        """/healthz answers 503 naming each component down and why."""
        self.agent.supervisor.states()[1]._set(
            FAILED, "contivVxlanBridge disconnected", 3.0)
        code, body = self.get("/healthz")
        self.assertEqual(code, 503)
        self.assertFalse(body["healthy"])
        self.assertEqual([(d["name"], d["reason"]) for d in body["down"]],
                         [("openflow", "contivVxlanBridge disconnected")])

    def test_components(self):
        """/inspect/components lists each component's state in order."""
        code, body = self.get("/inspect/components")
        self.assertEqual(code, 200)
        self.assertEqual([c["name"] for c in body["components"]],
                         ["store", "openflow", "status"])

    def test_peers_and_endpoints(self):
        """The peers and endpoints the agent knows are listed."""
        self.agent.peers.add(Peer("192.0.2.2", 4789, "hostB"))
        self.add_endpoint(endpoint("e1", "10.9.1.1"))
        self.add_endpoint(endpoint("e2", "10.9.1.2", host="hostB"))
        self.agent.renderer.ofports[f"{NET}-e1"] = 7
        _, peers = self.get("/inspect/peers")
        self.assertEqual(peers["peers"], [{
            "vtep_ip": "192.0.2.2", "port": 4789, "hostname": "hostB"}])
        _, body = self.get("/inspect/endpoints")
        self.assertEqual(
            [(e["id"], e["local"], e["ofport"]) for e in body["endpoints"]],
            [(f"{NET}-e1", True, 7), (f"{NET}-e2", False, None)])

    def test_driver(self):
        """/inspect/driver shows OVSDB, each bridge's counts and VTEPs."""
        self.agent.renderer.tunnels["192.0.2.2"] = 3
        code, body = self.get("/inspect/driver")
        self.assertEqual(code, 200)
        self.assertTrue(body["ovsdb"]["connected"])
        self.assertEqual(body["vteps"], {"192.0.2.2": 3})
        switch = body["switches"][VXLAN_BRIDGE]
        self.assertFalse(switch["connected"])
        self.assertIn("desired_flows", switch)

    def test_config(self):
        """/inspect/config shows the agent's configuration."""
        _, body = self.get("/inspect/config")
        self.assertEqual(body["host_label"], HOST)
        self.assertEqual(body["status_listen"], "tcp:9090:interface=127.0.0.1")

    def test_unknown_route(self):
        """An unknown path is a JSON 404."""
        code, body = self.get("/inspect/nothing")
        self.assertEqual(code, 404)
        self.assertIn("error", body)

    def test_wrong_method(self):
        """A known path with the wrong method is a JSON 405 with Allow."""
        response, body = self.request("POST", "/healthz")
        self.assertEqual(response.code, 405)
        self.assertIn("GET", response.headers.getRawHeaders("allow")[0])
        self.assertIn("error", json.loads(body))
        code, _ = self.get("/debug/reclaimEndpoint/x", method="GET")
        self.assertEqual(code, 405)

    def test_svcstats(self):
        """/svcstats keys each local endpoint's port counters by its IP."""
        self.add_endpoint(endpoint("e1", "10.9.1.1"))
        self.add_endpoint(endpoint("e2", "10.9.1.2"))
        self.add_endpoint(endpoint("e3", "10.9.1.3", host="hostB"))
        self.agent.renderer.ofports[f"{NET}-e1"] = 5
        switch = self.agent.controller.switch(VXLAN_BRIDGE)
        switch.connection = FakeConnection(
            [port_stats(5, 10, 1000, 12, 1300),
             port_stats(9, 1, 1, 1, 1)])
        code, body = self.get("/svcstats")
        self.assertEqual(code, 200)
        self.assertEqual(set(body), {"10.9.1.1", "10.9.1.2"})
        self.assertEqual(body["10.9.1.1"], {
            "EndpointIP": "10.9.1.1", "EndpointID": f"{NET}-e1",
            "Network": NET, "OfPort": 5,
            "PortStats": {"PacketsIn": 10, "BytesIn": 1000,
                          "PacketsOut": 12, "BytesOut": 1300}})
        self.assertIsNone(body["10.9.1.2"]["PortStats"])

    def test_svcstats_no_switch(self):
        """/svcstats is a JSON 503 while the bridge is not connected."""
        code, body = self.get("/svcstats")
        self.assertEqual(code, 503)
        self.assertIn(VXLAN_BRIDGE, body["error"])

    def test_svcstats_switch_silent(self):
        """/svcstats is a 504 when the switch does not answer in time."""
        connection = FakeConnection()
        connection.pending = Deferred()
        self.agent.controller.switch(VXLAN_BRIDGE).connection = connection
        d = self.client.get("http://status/svcstats")
        self.agent.reactor.advance(10)
        self.client.flush()
        response = self.successResultOf(d)
        self.assertEqual(response.code, 504)
        connection.pending.callback([])

    def test_reclaim_local(self):
        """Reclaiming a local endpoint clears etcd and unplugs its port."""
        ep = endpoint("e1", "10.9.1.1")
        self.add_endpoint(ep)
        self.add_endpoint(endpoint("e2", "10.9.1.2"))
        self.agent.ovsdb.ports.add(ep.id)
        self.agent.renderer.ofports[ep.id] = 4
        code, body = self.get(f"/debug/reclaimEndpoint/{ep.id}",
                              method="DELETE")
        self.assertEqual(code, 200)
        self.assertEqual((body["reclaimed"], body["local"],
                          body["unplugged"]), (ep.id, True, True))
        self.assertEqual(self.agent.ovsdb.ports, set())
        self.assertNotIn(ep.id, self.agent.renderer.ofports)
        keys = self.keys()
        self.assertNotIn(ep.key, keys)
        self.assertNotIn(f"{model.OPER_ENDPOINTS}/{ep.id}", keys)
        self.assertNotIn(ipam.address_key(NET, "10.9.1.1"), keys)
        self.assertIn(ipam.address_key(NET, "10.9.1.2"), keys)

    def test_reclaim_remote_by_short_id(self):
        """A remote endpoint, named by its endpoint id, leaves etcd only."""
        ep = endpoint("e9", "10.9.1.9", host="hostB")
        self.add_endpoint(ep)
        self.agent.ovsdb.ports.add(ep.id)
        code, body = self.get("/debug/reclaimEndpoint/e9", method="DELETE")
        self.assertEqual(code, 200)
        self.assertEqual((body["local"], body["unplugged"]), (False, False))
        self.assertEqual(self.agent.ovsdb.ports, {ep.id})
        self.assertNotIn(ep.key, self.keys())

    def test_reclaim_from_etcd_only(self):
        """An endpoint in etcd but not in the view is still found."""
        ep = endpoint("e5", "10.9.1.5")
        self.add_endpoint(ep)
        self.agent.view.set("endpoints", ep.id, None)
        code, _ = self.get(f"/debug/reclaimEndpoint/{ep.id}",
                           method="DELETE")
        self.assertEqual(code, 200)
        self.assertNotIn(ep.key, self.keys())

    def test_reclaim_unknown(self):
        """An unknown endpoint id is a JSON 404."""
        code, body = self.get("/debug/reclaimEndpoint/nope",
                              method="DELETE")
        self.assertEqual(code, 404)
        self.assertIn("nope", body["error"])

    def test_reclaim_ambiguous(self):
        """An endpoint id in two networks must be given with its network."""
        self.add_endpoint(endpoint("e1", "10.9.1.1"))
        self.add_endpoint(endpoint("e1", "10.9.2.1", net="db.default"))
        code, body = self.get("/debug/reclaimEndpoint/e1", method="DELETE")
        self.assertEqual(code, 409)
        self.assertIn("db.default", body["error"])

    def test_reclaim_unplug_fails(self):
        """A failed unplug is a 500 saying etcd was cleared anyway."""
        ep = endpoint("e1", "10.9.1.1")
        self.add_endpoint(ep)
        self.agent.ovsdb.fail = True
        code, body = self.get(f"/debug/reclaimEndpoint/{ep.id}",
                              method="DELETE")
        self.assertEqual(code, 500)
        self.assertIn("gone from etcd", body["error"])
        self.assertNotIn(ep.key, self.keys())

    def test_metrics(self):
        """/metrics is Prometheus text with the agent's live values."""
        self.agent.peers.add(Peer("192.0.2.2", 4789, "hostB"))
        self.add_endpoint(endpoint("e1", "10.9.1.1"))
        self.add_endpoint(endpoint("e2", "10.9.1.2", host="hostB"))
        self.add_endpoint(endpoint("e3", "10.9.1.3", host="hostB"))
        response, body = self.request("GET", "/metrics")
        self.assertEqual(response.code, 200)
        self.assertTrue(response.headers.getRawHeaders(
            "content-type")[0].startswith("text/plain"))
        samples = parse(body)
        self.assertEqual(samples[("contivd_peers", ())], 1)
        self.assertEqual(samples[("contivd_endpoints",
                                  (("location", "local"),))], 1)
        self.assertEqual(samples[("contivd_endpoints",
                                  (("location", "remote"),))], 2)
        self.assertEqual(samples[("contivd_component_up",
                                  (("component", "openflow"),))], 1)
        self.assertEqual(samples[(
            "contivd_openflow_flows",
            (("bridge", VXLAN_BRIDGE), ("state", "desired")))],
            len(self.agent.controller.switch(VXLAN_BRIDGE)._desired.flows))


def parse(text):
    """Prometheus text as {(sample name, sorted labels): value}."""
    if isinstance(text, bytes):
        text = text.decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples}


class MetricsTests(SynchronousTestCase):
    def test_registries_apart(self):
        """Two agents' metrics do not share a registry or the default."""
        a, b = Metrics(), Metrics()
        a.round_trip("get", "ok", 0.01)
        samples = parse(b.exposition())
        self.assertNotIn(
            ("contivd_etcd_round_trips_total",
             (("operation", "get"), ("outcome", "ok"))), samples)
        self.assertEqual(parse(a.exposition())[(
            "contivd_etcd_round_trips_total",
            (("operation", "get"), ("outcome", "ok")))], 1)

    def test_metrics_for_attaches_store(self):
        """An agent's metrics are made once and observe its store."""
        agent = FakeAgent()
        agent.store.observer = None
        metrics = metrics_for(agent)
        self.assertIs(metrics_for(agent), metrics)
        self.assertIs(agent.store.observer, metrics)

    def test_component_restarts(self):
        """Restarts and status per component are exported."""
        agent = FakeAgent()
        agent.supervisor.states()[0].restarts = 4
        agent.supervisor.states()[0]._set(FAILED, "gone", 1.0)
        samples = parse(Metrics(agent).exposition())
        self.assertEqual(samples[("contivd_component_restarts_total",
                                  (("component", "store"),))], 4)
        self.assertEqual(samples[("contivd_component_up",
                                  (("component", "store"),))], 0)
        self.assertEqual(samples[(
            "contivd_component_status",
            (("component", "store"), ("status", "failed")))], 1)

    def test_openflow_messages_survive_reconnects(self):
        """Message counts add up over a bridge's successive connections."""
        agent = FakeAgent()
        metrics = Metrics(agent)
        switch = agent.controller.switch(VXLAN_BRIDGE)
        key = ("contivd_openflow_messages_sent_total",
               (("bridge", VXLAN_BRIDGE),))
        first = FakeConnection()
        first.counters.sent = 10
        switch.connection = first
        self.assertEqual(parse(metrics.exposition())[key], 10)
        first.counters.sent = 15
        switch.connection = None
        self.assertEqual(parse(metrics.exposition())[key], 15)
        second = FakeConnection()
        second.counters.sent = 3
        switch.connection = second
        self.assertEqual(parse(metrics.exposition())[key], 18)

    def test_docker_calls(self):
        """A timed plugin dispatch records each call's time and outcome."""
        clock = Clock()
        metrics = Metrics()

        class Request:
            code = 200

        pending = Deferred()

        def dispatch(request, call):
            if call == "slow":
                return pending
            request.code = 500
            return b"{}"

        timed = timed_docker_calls(metrics, dispatch, clock)
        ok = Request()
        d = timed(ok, "slow")
        clock.advance(0.3)
        pending.callback(b"{}")
        self.assertEqual(self.successResultOf(d), b"{}")
        self.assertEqual(timed(Request(), "broken"), b"{}")
        observe_docker_call(metrics, "NetworkDriver.Join", 0.002, True)
        samples = parse(metrics.exposition())
        self.assertEqual(samples[(
            "contivd_docker_call_seconds_sum",
            (("call", "slow"), ("outcome", "ok")))], 0.3)
        self.assertEqual(samples[(
            "contivd_docker_call_seconds_count",
            (("call", "broken"), ("outcome", "error")))], 1)
        self.assertEqual(samples[(
            "contivd_docker_call_seconds_count",
            (("call", "NetworkDriver.Join"), ("outcome", "ok")))], 1)

    def test_plugin_app_timed(self):
        """The wrapper times calls of the real Docker plugin app."""
        from contivd.cnm.api import DriverAPI, PluginApp

        clock = Clock()
        metrics = Metrics()
        app = PluginApp(DriverAPI(None), clock)
        app.dispatch = timed_docker_calls(metrics, app.dispatch, clock)
        client = StubTreq(app.resource())
        for call in ("Plugin.Activate", "NetworkDriver.CreateNetwork"):
            self.successResultOf(client.post(f"http://plugin/{call}",
                                             data=b"{}"))
        samples = parse(metrics.exposition())
        self.assertEqual(samples[(
            "contivd_docker_call_seconds_count",
            (("call", "Plugin.Activate"), ("outcome", "ok")))], 1)
        self.assertEqual(samples[(
            "contivd_docker_call_seconds_count",
            (("call", "NetworkDriver.CreateNetwork"),
             ("outcome", "error")))], 1)


class FlakyStore(MemoryStore):
    """A MemoryStore whose waits fail as told, then behave."""

    def __init__(self, clock, failures):
        super().__init__(clock)
        self.failures = list(failures)
        self.observer = Metrics()

    def wait(self, prefix, index, timeout):
        if self.failures:
            return fail(self.failures.pop(0))
        return super().wait(prefix, index, timeout)


class StoreHookTests(SynchronousTestCase):
    def test_watch_restarts(self):
        """A watch tells its store's observer of each restart and why."""
        clock = Clock()
        store = FlakyStore(clock, [RuntimeError("reset"),
                                   IndexCleared("too old", 9)])
        watcher = Watcher(store, "/contiv.io/state", lambda e: None,
                          Listing(nodes=(), index=0), clock)
        watcher.start()
        for _ in range(5):
            clock.advance(11)
        watcher.stop()
        samples = parse(store.observer.exposition())
        for reason in ("error", "index_cleared"):
            self.assertEqual(samples[(
                "contivd_etcd_watch_restarts_total",
                (("prefix", "/contiv.io/state"), ("reason", reason)))], 1)

    def test_etcd_round_trips(self):
        """The etcd store counts each try of a request by outcome."""
        from twisted.internet import reactor

        from contivd.store.etcd import EtcdStore, _Retry

        metrics = Metrics()
        store = EtcdStore(["http://127.0.0.1:1"], reactor, observer=metrics)
        self.addCleanup(store.close)
        outcomes = [_Retry("http://127.0.0.1:1", "refused"), "done"]
        clock = Clock()
        store.clock = clock

        def in_thread(pool, clients, call):
            outcome = outcomes.pop(0)
            if isinstance(outcome, Exception):
                return fail(outcome)
            return succeed(outcome)

        store._in_thread = in_thread
        d = store._call(lambda c: None, what="get /x")
        clock.advance(1)
        self.assertEqual(self.successResultOf(d), "done")
        samples = parse(metrics.exposition())
        self.assertEqual(samples[("contivd_etcd_round_trips_total",
                                  (("operation", "get"),
                                   ("outcome", "unreachable")))], 1)
        self.assertEqual(samples[("contivd_etcd_round_trips_total",
                                  (("operation", "get"),
                                   ("outcome", "ok")))], 1)


HEALTHY = {
    "/healthz": {"healthy": True},
    "/inspect/components": {"components": [
        {"name": "store", "status": "running", "reason": "",
         "restarts": 0},
        {"name": "openflow", "status": "failed", "restarts": 2,
         "reason": "contivVxlanBridge disconnected"}]},
    "/inspect/peers": {"peers": [
        {"hostname": "hostB", "vtep_ip": "192.0.2.2", "port": 4789}]},
    "/inspect/endpoints": {"endpoints": [
        {"id": "a", "local": True}, {"id": "b", "local": False},
        {"id": "c", "local": False}]},
    "/inspect/driver": {
        "ovsdb": {"remote": "unix:/x/db.sock", "connected": True},
        "switches": {VXLAN_BRIDGE: {
            "connected": True, "synced": True, "flows": 42,
            "desired_flows": 42, "errors_received": 0}}},
}


class ContivctlStatusTests(SynchronousTestCase):
    def run_status(self, routes, as_json=False):
        out, err = io.StringIO(), io.StringIO()
        code = ctl_status.status("http://agent", as_json, out, err,
                                 fetch=lambda path: routes[path])
        return code, out.getvalue(), err.getvalue()

    def test_human_view(self):
        """The view shows health, components, peers, endpoints, bridges."""
        code, out, _ = self.run_status(HEALTHY)
        self.assertEqual(code, 0)
        lines = out.splitlines()
        self.assertEqual(lines[0], "agent http://agent: healthy")
        self.assertIn("restarts 2  contivVxlanBridge disconnected",
                      lines[2])
        self.assertIn("peers: hostB (192.0.2.2)", lines)
        self.assertIn("endpoints: 3 (1 local, 2 remote)", lines)
        self.assertIn(f"bridge {VXLAN_BRIDGE}: connected, in sync; 42 "
                      "flows (42 desired), 0 OpenFlow errors", lines)

    def test_unhealthy_exit(self):
        """An unhealthy agent gives exit code 3 and says what is down."""
        routes = dict(HEALTHY, **{"/healthz": {
            "healthy": False, "down": [{"name": "openflow"}]}})
        code, out, _ = self.run_status(routes)
        self.assertEqual(code, ctl_status.UNHEALTHY)
        self.assertIn("unhealthy (1 component not running)", out)

    def test_json(self):
        """--json prints every route's answer as one object."""
        code, out, _ = self.run_status(HEALTHY, as_json=True)
        self.assertEqual(code, 0)
        self.assertEqual(json.loads(out)["peers"][0]["hostname"], "hostB")

    def test_unreachable(self):
        """An agent that does not answer is one error line and exit 1."""
        from contivd.harness import free_port

        out, err = io.StringIO(), io.StringIO()
        url = f"http://127.0.0.1:{free_port()}"
        code = ctl_status.status(url, False, out, err)
        self.assertEqual(code, 1)
        self.assertEqual(out.getvalue(), "")
        self.assertEqual(len(err.getvalue().splitlines()), 1)
        self.assertIn(f"{url}/healthz", err.getvalue())

    def test_not_a_status_server(self):
        """JSON without the expected fields is an error, not a crash."""
        code, _, err = self.run_status(
            {p: {} for p in HEALTHY})
        self.assertEqual(code, 1)
        self.assertIn("does not look like", err)

    def test_parser_default_agent(self):
        """contivctl status reads the loopback status port by default."""
        args = _parser().parse_args(["status"])
        self.assertEqual(args.agent, "http://127.0.0.1:9090")
        args = _parser().parse_args(["status", "--agent", "http://h:1",
                                     "--json"])
        self.assertEqual((args.agent, args.json), ("http://h:1", True))


class DefaultsTests(SynchronousTestCase):
    def test_loopback_by_default(self):
        """The status server listens on loopback unless told otherwise."""
        from twisted.internet.endpoints import serverFromString

        listen = AgentConfig().status_listen
        endpoint = serverFromString(Clock(), listen)
        self.assertEqual(endpoint._interface, "127.0.0.1")
        self.assertEqual(endpoint._port, 9090)


REAL_REASON = skip_reason("etcd", "ovsdb-server", "ovs-vswitchd", "curl")


class RealAgentTests(SynchronousTestCase):
    """
    One agent with its own OVS and etcd in a network namespace of its
    own, since the userspace datapath takes one C{ovs-netdev} device per
    namespace.
    """

    skip = REAL_REASON

    def setUp(self):
        self.harness = Harness()
        self.addCleanup(self.harness.close)
        self.ns = self.harness.netns("st")
        self.etcd = self.harness.etcd(netns=self.ns.name)
        self.ctl("global", "set", "--fwd-mode", "bridge", "--pvt-subnet",
                 "172.19.0.0/16")
        self.ctl("net", "create", "web", "--subnet", "10.9.1.0/24")
        self.agent = Agent(self.harness, "hostA", self.etcd.url,
                           "127.0.0.1", netns=self.ns.name).start()
        self.agent.wait_healthy(60)
        self.base = self.agent.status_url

    def ctl(self, *args, check=True):
        return run([os.path.join(BIN, "contivctl"), "--etcd",
                    self.etcd.url] + list(args), netns=self.ns.name,
                   check=check)

    def call(self, path, method="GET"):
        """One request to the status server: the code and the body."""
        out = run(["curl", "-s", "-m", "10", "-X", method, "-w",
                   "\n%{http_code}", self.base + path],
                  netns=self.ns.name, check=False).stdout
        body, _, code = out.rpartition("\n")
        return int(code or 0), body

    def json(self, path, method="GET", code=200):
        got, body = self.call(path, method)
        self.assertEqual(got, code, body)
        return json.loads(body)

    def etcd_get(self, key):
        out = run(["curl", "-s", "-m", "5", f"{self.etcd.url}/v2/keys{key}"],
                  netns=self.ns.name).stdout
        return json.loads(out).get("node")

    def etcd_put(self, key, value):
        run(["curl", "-sf", "-m", "5", "-XPUT",
             f"{self.etcd.url}/v2/keys{key}", "--data-urlencode",
             f"value={value}"], netns=self.ns.name)

    def local_endpoint(self):
        """A plugged local endpoint, written to etcd as a front end does."""
        ep = model.Endpoint(
            net_id=NET, endpoint_id="st1", ip_address="10.9.1.7",
            mac_address=model.mac_for("10.9.1.7"), homing_host="hostA",
            vtep_ip="127.0.0.1", ep_common_name="st1")
        ovs_name, _ = port_names(ep.id)
        plug_endpoint(self.agent.ovs.remote, ep.id, ep.mac_address,
                      netns=self.ns.name)
        self.etcd_put(ipam.address_key(NET, ep.ip_address), ep.id)
        self.etcd_put(ep.key, ep.to_json())
        return ep, ovs_name

    def health(self):
        return self.call("/healthz")[0]

    def ctl_status(self):
        return run([os.path.join(BIN, "contivctl"), "status", "--agent",
                    self.base], netns=self.ns.name, check=False)

    def test_every_route(self):
        """
        Every route answers against a running agent: inspect views,
        svcstats with the local port's counters, a parseable /metrics,
        contivctl status, 503 while ovs-vswitchd is down and 200 after,
        and reclaimEndpoint removing the endpoint from etcd and OVS.
        """
        ep, ovs_name = self.local_endpoint()
        wait_until("the endpoint's port to be known", lambda: any(
            e["id"] == ep.id and e["ofport"] for e in
            self.json("/inspect/endpoints")["endpoints"]), 30)

        names = [c["name"] for c in
                 self.json("/inspect/components")["components"]]
        self.assertGreaterEqual(len(names), 5)
        self.assertEqual(self.json("/inspect/peers"), {"peers": []})
        driver = self.json("/inspect/driver")
        self.assertTrue(driver["switches"][VXLAN_BRIDGE]["synced"])
        self.assertTrue(driver["ovsdb"]["connected"])
        self.assertEqual(self.json("/inspect/config")["host_label"],
                         "hostA")
        stats = self.json("/svcstats")
        self.assertEqual(stats[ep.ip_address]["EndpointID"], ep.id)
        self.assertEqual(set(stats[ep.ip_address]["PortStats"]),
                         {"PacketsIn", "BytesIn", "PacketsOut", "BytesOut"})
        self.assertEqual(self.call("/nothing")[0], 404)
        self.assertEqual(self.call("/healthz", "DELETE")[0], 405)

        code, text = self.call("/metrics")
        self.assertEqual(code, 200)
        samples = parse(text)
        self.assertEqual(samples[("contivd_endpoints",
                                  (("location", "local"),))], 1)
        self.assertGreater(samples[(
            "contivd_openflow_flows",
            (("bridge", VXLAN_BRIDGE), ("state", "installed")))], 0)
        self.assertGreater(samples[("contivd_etcd_round_trips_total",
                                    (("operation", "list"),
                                     ("outcome", "ok")))], 0)
        self.assertGreater(samples[(
            "contivd_openflow_messages_received_total",
            (("bridge", VXLAN_BRIDGE),))], 0)

        shown = self.ctl_status()
        self.assertEqual(shown.returncode, 0, shown.stderr)
        self.assertIn("healthy", shown.stdout.splitlines()[0])

        self.agent.ovs.kill_vswitchd()
        wait_until("/healthz to say 503", lambda: self.health() == 503, 20)
        down = self.json("/healthz", code=503)["down"]
        self.assertIn("openflow", [d["name"] for d in down])
        self.assertEqual(self.ctl_status().returncode, ctl_status.UNHEALTHY)
        self.agent.ovs.start_vswitchd()
        wait_until("/healthz to say 200", lambda: self.health() == 200, 30)

        self.json("/debug/reclaimEndpoint/nope", "DELETE", 404)
        body = self.json(f"/debug/reclaimEndpoint/{ep.id}", "DELETE")
        self.assertEqual((body["local"], body["unplugged"]), (True, True))
        self.assertIsNone(self.etcd_get(ep.key))
        self.assertIsNone(self.etcd_get(ipam.address_key(
            NET, ep.ip_address)))
        self.assertNotIn(ovs_name, self.agent.ovs.vsctl(
            "list-ports", VXLAN_BRIDGE).split())
        wait_until("the endpoint to leave the view", lambda: not self.json(
            "/inspect/endpoints")["endpoints"], 10)
