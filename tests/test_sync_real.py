"""
Two simulated hosts: a network namespace each with its own Open vSwitch
and contivd, one etcd, and an underlay between them; endpoints on both
hosts reach each other over VXLAN.
"""

import json
import re
import subprocess
import time

from twisted.trial.unittest import SynchronousTestCase

from contivd import model
from contivd.constants import VXLAN_BRIDGE
from contivd.harness import Etcd, Harness, run, skip_reason, wait_until
from tests.agents import Agent, contivctl, plug_endpoint

REASON = skip_reason("etcd", "ovsdb-server", "ovs-vswitchd", "busybox",
                     "ethtool")
ETCD_IP = "192.0.2.100"
GRACE = 4


class Fabric:
    """The underlay: a Linux bridge in a namespace, etcd on it, hosts."""

    def __init__(self, harness):
        self.harness = harness
        self.fab = harness.netns("fab")
        self.fab.exec("ip", "link", "add", "sw", "type", "bridge")
        self.fab.exec("ip", "link", "set", "sw", "up")
        self.fab.exec("ip", "addr", "add", "192.0.2.254/24", "dev", "sw")
        ens = harness.netns("etc")
        self._wire(ens.name, "e0", f"{ETCD_IP}/24")
        ens.exec("ip", "link", "set", "e0", "up")
        self.etcd = Etcd(harness.path("etcd"), host=ETCD_IP,
                         netns=ens.name, client_port=2379)
        harness._parts.append(self.etcd)
        self.etcd.start()
        self.url = self.etcd.url
        self.hosts = 0

    def _wire(self, netns, name, address=None):
        peer = f"f{name}"
        run(["ip", "link", "add", name, "netns", netns, "type", "veth",
             "peer", "name", peer, "netns", self.fab.name])
        self.fab.exec("ip", "link", "set", peer, "master", "sw", "up")
        if address:
            run(["ip", "-n", netns, "addr", "add", address, "dev", name])
            run(["ethtool", "-K", name, "tx", "off"], netns=netns)

    def host(self, name, extra=()):
        """A host namespace with OVS, an underlay address, and an agent."""
        self.hosts += 1
        vtep = f"192.0.2.{self.hosts}"
        ns = self.harness.netns(f"h{name}")
        uplink = f"u{name}"
        self._wire(ns.name, uplink)
        ns.exec("ip", "link", "set", uplink, "up")
        agent = Agent(self.harness, name, self.url, vtep, netns=ns.name,
                      extra=("--plugin-mode", "none",
                             "--dead-host-grace", str(GRACE)) + extra)
        agent.ovs.vsctl("add-br", "brphy", "--", "set", "bridge", "brphy",
                        "datapath_type=netdev", "--", "add-port", "brphy",
                        uplink)
        ns.exec("ip", "addr", "add", f"{vtep}/24", "dev", "brphy")
        ns.exec("ip", "link", "set", "brphy", "up")
        agent.ns = ns
        return agent

    def etcd_get(self, key):
        out = run(["curl", "-s", "-m", "5", f"{self.url}/v2/keys{key}"],
                  netns=self.fab.name, check=False).stdout
        return json.loads(out).get("node") if out else None

    def etcd_put(self, key, value):
        run(["curl", "-sf", "-m", "5", "-XPUT", f"{self.url}/v2/keys{key}",
             "--data-urlencode", f"value={value}"], netns=self.fab.name)


class TwoHostTests(SynchronousTestCase):
    skip = REASON

    def setUp(self):
        self.harness = Harness()
        self.addCleanup(self.harness.close)
        fabric = self.fabric = Fabric(self.harness)
        wait_until("etcd on the fabric", self.fabric.etcd.answers, 30)
        self.fab_ctl("global", "set", "--fwd-mode", "bridge",
                     "--pvt-subnet", "172.19.0.0/16")
        self.fab_ctl("net", "create", "web", "--subnet", "10.9.1.0/24")
        self.fab_ctl("net", "create", "db", "--subnet", "10.9.1.0/24",
                     "--tenant", "blue")
        self.a = fabric.host("hostA")
        self.b = fabric.host("hostB")
        for agent in (self.a, self.b):
            agent.start()
        for agent in (self.a, self.b):
            agent.wait_healthy(90)

    def fab_ctl(self, *args):
        return contivctl(self.fabric.url, *args, netns=self.fabric.fab.name)

    def endpoint(self, host, net, name, ip, tenant="default"):
        """An endpoint on C{host}, as a container runtime would make it."""
        network = json.loads(self.fabric.etcd_get(
            f"{model.NETS}/{net}.{tenant}")["value"])
        net_id = f"{network['networkName']}.{tenant}"
        ep = model.Endpoint(
            net_id=net_id, endpoint_id=name, ip_address=ip,
            mac_address=model.mac_for(ip), homing_host=host.name,
            vtep_ip=host.vtep_ip, ep_common_name=name)
        container = plug_endpoint(host.ovs.remote, ep.id, ep.mac_address,
                                  netns=host.ns.name)
        ns = self.harness.netns(f"e{name}")
        host.ns.exec("ip", "link", "set", container, "netns", ns.name)
        ns.exec("ip", "addr", "add", f"{ip}/24", "dev", container)
        ns.exec("ip", "link", "set", container, "up")
        self.fabric.etcd_put(ep.key, ep.to_json())
        return ns, ep

    def ping(self, ns, ip, count=1):
        return ns.exec("ping", "-c", str(count), "-W", "1", ip,
                       check=False).returncode == 0

    def tcp(self, server_ns, client_ns, ip):
        server = subprocess.Popen(
            ["ip", "netns", "exec", server_ns.name, "busybox", "nc", "-l",
             "-p", "7000", "-e", "echo", "over-tcp"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            time.sleep(0.5)
            out = client_ns.exec("busybox", "nc", "-w", "3", ip, "7000",
                                 check=False).stdout
            return "over-tcp" in out
        finally:
            server.kill()
            server.wait()

    def flows(self, agent):
        return agent.ovs.flows(VXLAN_BRIDGE)

    def test_across_hosts_restart_and_dead_host(self):
        """
        Endpoints on two hosts reach each other by ping and TCP and not
        across networks; an agent killed during a ping loses at most a
        second of it and comes back to the same flows; a dead host's
        endpoints and tunnel go away after the grace period.
        """
        ns_a, ep_a = self.endpoint(self.a, "web", "wa", "10.9.1.10")
        ns_b, ep_b = self.endpoint(self.b, "web", "wb", "10.9.1.11")
        ns_d, ep_d = self.endpoint(self.b, "db", "db1", "10.9.1.12",
                                   tenant="blue")

        wait_until("wa reaches wb", lambda: self.ping(ns_a, "10.9.1.11"),
                   40, interval=0.5)
        self.assertTrue(self.ping(ns_b, "10.9.1.10", 3))
        self.assertTrue(self.tcp(ns_b, ns_a, "10.9.1.11"))
        self.assertTrue(self.tcp(ns_a, ns_b, "10.9.1.10"))
        self.assertFalse(self.ping(ns_a, "10.9.1.12", 2))
        self.assertFalse(self.ping(ns_d, "10.9.1.11", 2))

        before = self.flows(self.a)
        ping = subprocess.Popen(
            ["ip", "netns", "exec", ns_a.name, "ping", "-i", "0.1", "-c",
             "80", "-W", "1", "10.9.1.11"], stdout=subprocess.PIPE,
            text=True)
        time.sleep(2)
        self.a.kill()
        self.a.start()
        out = ping.communicate(timeout=60)[0]
        received = int(re.search(r"(\d+) received", out).group(1))
        self.assertGreaterEqual(received, 80 - 10, out)
        self.a.wait_healthy(60)
        wait_until("host A's flows as before",
                   lambda: self.flows(self.a) == before, 30)

        self.b.kill()
        try:
            wait_until("wb reclaimed from etcd",
                       lambda: self.fabric.etcd_get(ep_b.key) is None,
                       10 + GRACE + 20, interval=0.5)
        except Exception:
            self.fail(self.a.log_tail(60))
        self.assertIsNone(self.fabric.etcd_get(ep_d.key))
        self.assertIsNotNone(self.fabric.etcd_get(ep_a.key))
        tunnels = self.a.ovs.vsctl("--columns=options", "find",
                                   "Interface", "type=vxlan")
        self.assertNotIn("192.0.2.2", tunnels)
