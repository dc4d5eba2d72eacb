"""Tests for contivctl, on the in-memory store and on a real etcd."""

import io
import json
import os
import subprocess
import sys

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from contivd import ipam, model
from contivd.ctl import main as ctl
from contivd.errors import Conflict, NotFound, ValidationError
from contivd.harness import Harness, skip_reason
from contivd.store.memory import MemoryStore


class CommandTests(SynchronousTestCase):
    def setUp(self):
        self.store = MemoryStore()

    def run_ctl(self, *argv):
        args = ctl._parser().parse_args(list(argv))
        return Deferred.fromCoroutine(ctl.dispatch(self.store, args))

    def ok(self, *argv):
        return self.successResultOf(self.run_ctl(*argv))

    def refused(self, error, *argv):
        return self.failureResultOf(self.run_ctl(*argv), error).value

    def stored(self, key):
        return json.loads(self.successResultOf(self.store.get(key)).value)

    def test_global_set_and_get(self):
        """Global set writes Contiv's key; get reads it back with ranges."""
        self.refused(NotFound, "global", "get")
        self.ok("global", "set", "--fwd-mode", "routing", "--pvt-subnet",
                "172.19.0.0/16", "--vxlans", "100-200")
        self.assertEqual(self.stored(model.GLOBAL_CONFIG_KEY)["fwd-mode"],
                         "routing")
        out = self.ok("global", "get")
        self.assertEqual((out.data["arp-mode"], out.data["vxlans"]),
                         ("proxy", "100-200"))
        self.refused(ValidationError, "global", "set", "--fwd-mode",
                     "bridge", "--pvt-subnet", "172.19.0.0/33")

    def test_global_mode_fixed_while_networks_exist(self):
        """fwd-mode cannot change while a network exists."""
        self.ok("global", "set", "--fwd-mode", "bridge", "--pvt-subnet",
                "172.19.0.0/16")
        self.ok("net", "create", "web", "--subnet", "10.1.0.0/24")
        e = self.refused(Conflict, "global", "set", "--fwd-mode", "routing",
                         "--pvt-subnet", "172.19.0.0/16")
        self.assertIn("web.default", str(e))

    def test_net_create_allocates_distinct_vnis(self):
        """Networks get distinct VNIs from the configured range."""
        self.ok("global", "set", "--fwd-mode", "bridge", "--pvt-subnet",
                "172.19.0.0/16", "--vxlans", "5000-5001")
        self.ok("net", "create", "web", "--subnet", "10.1.0.0/24")
        self.ok("net", "create", "db", "--subnet", "10.2.0.0/24")
        web = self.stored("/contiv.io/state/nets/web.default")
        db = self.stored("/contiv.io/state/nets/db.default")
        self.assertEqual({web["extPktTag"], db["extPktTag"]}, {5000, 5001})
        self.assertNotEqual(web["pktTag"], db["pktTag"])
        self.assertEqual(db["gateway"], "10.2.0.254")
        e = self.refused(ipam.PoolExhausted, "net", "create", "x",
                         "--subnet", "10.3.0.0/24")
        self.assertIn("5000-5001", str(e))
        self.refused(NotFound, "net", "inspect", "x")

    def test_net_create_given_tag(self):
        """A given VLAN is used, and refused for a second network."""
        self.ok("net", "create", "v", "--subnet", "10.1.0.0/24", "--encap",
                "vlan", "--pkt-tag", "100")
        self.assertEqual(self.stored(model.network_key("v"))["pktTag"], 100)
        self.refused(Conflict, "net", "create", "w", "--subnet",
                     "10.2.0.0/24", "--encap", "vlan", "--pkt-tag", "100")
        self.refused(Conflict, "net", "create", "v", "--subnet",
                     "10.3.0.0/24")

    def test_overlapping_subnet_refused_within_a_tenant(self):
        """
        A subnet overlapping another network's in the same tenant is
        refused, naming that network, and allocates nothing; another
        tenant may use it.
        """
        self.ok("net", "create", "web", "--subnet", "10.1.0.0/24")
        e = self.refused(Conflict, "net", "create", "dup", "--subnet",
                         "10.1.0.128/25")
        self.assertIn("web.default", str(e))
        self.assertEqual(self.successResultOf(ipam.tags_in_use(
            self.store, ipam.VXLAN_POOL)), {1: "web.default"})
        self.ok("net", "create", "dup", "--subnet", "10.1.0.0/24",
                "--tenant", "blue")

    def test_malformed_record_skipped(self):
        """
        A malformed network record is skipped, with a warning naming its
        key, and the other networks are still listed and created.
        """
        self.ok("net", "create", "web", "--subnet", "10.1.0.0/24")
        self.successResultOf(self.store.put(
            "/contiv.io/state/nets/bad.default", "not json"))
        err = io.StringIO()
        self.patch(sys, "stderr", err)
        listed = self.ok("net", "ls")
        self.assertEqual([n["networkName"] for n in listed.data], ["web"])
        self.assertIn("/contiv.io/state/nets/bad.default", err.getvalue())
        self.ok("net", "create", "db", "--subnet", "10.2.0.0/24")

    def test_refused_network_writes_nothing(self):
        """A refused network leaves no key and no allocated tag."""
        self.refused(ValidationError, "net", "create", "bad", "--subnet",
                     "10.9.3.0/24", "--gateway", "10.9.4.1")
        listing = self.successResultOf(self.store.list("/contiv.io"))
        self.assertEqual(listing.nodes, ())

    def test_net_rm_refused_with_endpoints(self):
        """A network with endpoints is kept, and the error names them."""
        self.ok("net", "create", "web", "--subnet", "10.1.0.0/24")
        ep = model.Endpoint(net_id="web.default", endpoint_id="c1",
                            ip_address="10.1.0.1")
        self.successResultOf(self.store.put(ep.key, ep.to_json()))
        e = self.refused(Conflict, "net", "rm", "web")
        self.assertIn("web.default-c1", str(e))
        self.successResultOf(self.store.delete(ep.key))
        self.ok("net", "rm", "web")
        self.refused(NotFound, "net", "rm", "web")
        self.assertEqual(self.successResultOf(ipam.tags_in_use(
            self.store, ipam.VXLAN_POOL)), {})

    def test_groups(self):
        """Groups take a network's tags and an id; rm frees them."""
        self.refused(NotFound, "group", "create", "g", "--network", "web")
        self.ok("net", "create", "web", "--subnet", "10.1.0.0/24")
        self.ok("group", "create", "g", "--network", "web")
        out = self.ok("group", "ls")
        self.assertEqual(out.rows, (("g", "default", "web", 1),))
        self.refused(Conflict, "net", "rm", "web")
        self.ok("group", "rm", "g")
        self.ok("net", "rm", "web")

    def test_endpoint_and_host_ls(self):
        """Endpoints and registered hosts are listed."""
        ep = model.Endpoint(net_id="web.default", endpoint_id="c1",
                            ip_address="10.1.0.1", homing_host="h1")
        self.successResultOf(self.store.put(ep.key, ep.to_json()))
        host = model.ServiceInfo(service_name="netplugin.vtep",
                                 host_addr="192.0.2.1", port=4789,
                                 hostname="h1")
        self.successResultOf(self.store.put(host.key, host.to_json(), 10))
        self.assertEqual(self.ok("endpoint", "ls").rows[0][3], "10.1.0.1")
        self.assertEqual(self.ok("host", "ls").rows,
                         (("h1", "192.0.2.1", 4789, 10),))

    def test_render(self):
        """Tables align columns; --json prints the data."""
        out = io.StringIO()
        ctl.render(ctl.Output([1], ("a", "bb"), (("xyz", 1),)), False, out)
        self.assertEqual(out.getvalue(), "a    bb\nxyz  1\n")
        out = io.StringIO()
        ctl.render(ctl.Output({"k": 1}), True, out)
        self.assertEqual(json.loads(out.getvalue()), {"k": 1})


class ConsoleTests(SynchronousTestCase):
    """The contivctl script against a real etcd."""

    skip = skip_reason("etcd")

    def setUp(self):
        self.harness = Harness()
        self.addCleanup(self.harness.close)
        self.etcd = self.harness.etcd()

    def contivctl(self, *argv):
        return subprocess.run(
            [sys.executable, "-c", "from contivd.ctl.main import main; "
             "main()", "--etcd", self.etcd.url] + list(argv),
            capture_output=True, text=True, timeout=60,
            env=dict(os.environ))

    def test_net_create_then_plain_read(self):
        """net create writes Contiv's field names, seen by a v2 read."""
        r = self.contivctl("net", "create", "web", "--subnet",
                           "10.9.1.0/24", "--gateway", "10.9.1.254")
        self.assertEqual(r.returncode, 0, r.stderr)
        value = json.loads(
            self.etcd.get("/contiv.io/state/nets/web.default")["value"])
        self.assertEqual(
            [value[k] for k in ("networkName", "tenant", "pktTagType",
                                "subnetIP", "subnetLen", "gateway")],
            ["web", "default", "vxlan", "10.9.1.0", 24, "10.9.1.254"])
        self.assertGreater(value["extPktTag"], 0)
        r = self.contivctl("net", "ls", "--json")
        self.assertEqual([n["networkName"] for n in json.loads(r.stdout)],
                         ["web"])

    def test_error_is_one_line(self):
        """A refused command prints one line on stderr and exits 1."""
        r = self.contivctl("net", "create", "bad", "--subnet",
                           "10.9.3.0/33")
        self.assertEqual(r.returncode, 1)
        self.assertEqual(r.stderr.count("\n"), 1, r.stderr)
        self.assertIn("subnet", r.stderr)
        self.assertNotIn("Traceback", r.stderr)

    def test_unreachable_etcd(self):
        """An unreachable etcd is one clear line, not a traceback."""
        r = subprocess.run(
            [sys.executable, "-c", "from contivd.ctl import main as m; "
             "m.GIVE_UP_AFTER = 0.5; m.main()", "--etcd",
             "http://127.0.0.1:1", "net", "ls"],
            capture_output=True, text=True, timeout=60)
        self.assertEqual(r.returncode, 1)
        self.assertEqual(r.stderr.count("\n"), 1, r.stderr)
        self.assertIn("check that etcd runs", r.stderr)
