"""
Tests of the Docker front end against real dockerd, etcd and Open
vSwitch, with the agent run by twistd as a subprocess.
"""

from __future__ import annotations

import atexit
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from twisted.trial.unittest import SynchronousTestCase

from contivd.cnm.component import SOCKET_NAME
from contivd.constants import VXLAN_BRIDGE
from contivd.harness import (
    IMAGE,
    Harness,
    free_port,
    run,
    skip_reason,
    terminate,
    wait_until,
)

PLUGIN_DIR = "/run/docker/plugins"
SOCKET = os.path.join(PLUGIN_DIR, SOCKET_NAME)
HOST = "hostA"
_BIN = os.path.dirname(sys.executable)


class Stack:
    """etcd, OVS, dockerd and the agent, for one test class."""

    def __init__(self) -> None:
        self.harness = Harness()
        self.agent: subprocess.Popen[bytes] | None = None
        self.log = self.harness.path("agent.log")
        try:
            self.etcd = self.harness.etcd()
            self.ovs = self.harness.ovs()
            self.docker = self.harness.dockerd()
            self.ctl("global", "set", "--fwd-mode", "bridge",
                     "--pvt-subnet", "172.19.0.0/16")
            self.start_agent()
        except BaseException:
            self.stop_agent()
            self.harness.close()
            raise

    def ctl(self, *args: str) -> str:
        return run([os.path.join(_BIN, "contivctl"), "--etcd",
                    self.etcd.url] + list(args)).stdout

    def agent_argv(self) -> list[str]:
        return [
            "--etcd", self.etcd.url, "--ovsdb", self.ovs.remote,
            "--datapath", "netdev", "--host-label", HOST,
            "--vtep-ip", "127.0.0.1", "--ctrl-ip", "127.0.0.1",
            "--of-listen", f"tcp:{free_port()}:interface=127.0.0.1",
            "--status-listen", f"tcp:{free_port()}:interface=127.0.0.1",
            "--plugin-mode", "docker", "--docker", self.docker.host,
            "--docker-plugin-dir", PLUGIN_DIR]

    def start_agent(self) -> None:
        twistd = os.path.join(_BIN, "twistd")
        pidfile = self.harness.path("agent.pid")
        base = [twistd, "-n", "--pidfile", pidfile, "--logfile", self.log]
        self.agent = subprocess.Popen(base + ["contivd"] + self.agent_argv(),
                                      start_new_session=True)
        wait_until("the plugin socket", lambda: os.path.exists(SOCKET),
                   timeout=60)

    def stop_agent(self) -> None:
        terminate(self.agent)
        self.agent = None

    def close(self) -> None:
        try:
            ids = self.docker.docker("ps", "-aq", check=False).stdout.split()
            if ids:
                self.docker.docker("rm", "-f", *ids, check=False)
        finally:
            self.stop_agent()
            self.harness.close()

    def address(self, name: str) -> str:
        return self.docker.docker(
            "inspect", "-f",
            "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
            name).stdout.strip()

    def docker_nets(self) -> list[str]:
        return self.docker.docker("network", "ls", "--format",
                                  "{{.Name}}").stdout.split()

    def ports(self) -> list[str]:
        return [p for p in self.ovs.vsctl("list-ports",
                                          VXLAN_BRIDGE).split()
                if not p.startswith("vxif")]

    def endpoint_ids(self) -> list[str]:
        """The ids of the endpoints in etcd now."""
        return [key.rsplit("/", 1)[1] for key in self.endpoint_keys()
                if key.startswith("/contiv.io/oper/eps/")]

    def veths_of(self, endpoint_ids: list[str]) -> list[str]:
        """Those of the endpoints' veth ends still on this host."""
        from contivd.ovsdb import link_exists, port_names

        return [name for ep in endpoint_ids for name in port_names(ep)
                if link_exists(name)]

    def endpoint_keys(self) -> list[str]:
        keys = []
        for prefix in ("/contiv.io/state/eps", "/contiv.io/oper/eps"):
            node = self.etcd.get(prefix)
            keys += [n["key"] for n in (node or {}).get("nodes", [])]
        return keys

    def plugin(self, call: str, body: bytes) -> tuple[int, dict]:
        result = run(["curl", "-s", "-m", "10", "--unix-socket", SOCKET,
                      "-o", "-", "-w", "\n%{http_code}", "-X", "POST",
                      "--data-binary", "@-", f"http://p/{call}"],
                     input=body)
        text, _, code = result.stdout.rpartition("\n")
        return int(code), json.loads(text)


_STACK: list[Stack] = []
_FAILED: list[str] = []


def shared_stack() -> Stack:
    """
    The stack of this module, made by the first test that needs it (with
    network web mirrored into Docker) and stopped when the process exits,
    since trial has no class fixtures.
    """
    if _FAILED:
        raise RuntimeError(f"the stack did not start: {_FAILED[0]}")
    if not _STACK:
        try:
            stack = Stack()
        except Exception as e:
            _FAILED.append(str(e))
            raise
        atexit.register(stack.close)
        _STACK.append(stack)
        stack.ctl("net", "create", "web", "--subnet", "10.9.1.0/24",
                  "--gateway", "10.9.1.254")
        wait_until("web in docker network ls",
                   lambda: "web" in stack.docker_nets(), timeout=30)
    return _STACK[0]


class DockerTests(SynchronousTestCase):
    """Containers on contiv networks of a real Docker engine."""

    def setUp(self) -> None:
        why = skip_reason("etcd", "ovsdb-server", "ovs-vswitchd", "dockerd",
                          "docker", "curl", "ethtool")
        if why:
            raise self.skipTest(why)
        self.stack = shared_stack()
        self.docker = self.stack.docker
        self.names: list[str] = []

    def tearDown(self) -> None:
        if self.names:
            self.docker.docker("rm", "-f", *self.names, check=False)

    def run_container(self, name: str, *args: str,
                      check: bool = True) -> subprocess.CompletedProcess:
        self.names.append(name)
        return self.docker.docker("run", "-d", "--name", name, *args,
                                  IMAGE, "sleep", "600", check=check)

    def assert_clean(self, endpoint_ids: list[str]) -> None:
        self.assertTrue(endpoint_ids)
        wait_until("endpoint ports removed",
                   lambda: self.stack.ports() == [], timeout=15)
        self.assertEqual(self.stack.ports(), [])
        self.assertEqual(self.stack.veths_of(endpoint_ids), [])
        self.assertEqual(self.stack.endpoint_keys(), [])

    def test_addresses_and_cleanup(self):
        """
        Two containers on a contivctl network get addresses of its
        subnet and endpoints in etcd with this host; docker rm -f leaves
        no port, veth or endpoint key.
        """
        self.run_container("c1", "--net", "web")
        self.run_container("c2", "--net", "web")
        a, b = self.stack.address("c1"), self.stack.address("c2")
        self.assertTrue(a.startswith("10.9.1.") and b.startswith("10.9.1."),
                        (a, b))
        self.assertNotEqual(a, b)
        self.assertEqual(len(self.stack.ports()), 2)
        keys = self.stack.endpoint_keys()
        self.assertEqual(len(keys), 4)
        ep = json.loads(self.stack.etcd.get(keys[0])["value"])
        self.assertEqual((ep["homingHost"], ep["vtepIP"]),
                         (HOST, "127.0.0.1"))
        made = self.stack.endpoint_ids()
        self.docker.docker("rm", "-f", "c1", "c2")
        self.names = []
        self.assert_clean(made)

    def test_ping_and_tcp(self):
        """One container reaches the other by address: ping and TCP."""
        self.run_container("p1", "--net", "web")
        self.run_container("p2", "--net", "web")
        target = self.stack.address("p2")
        ping = self.docker.docker("exec", "p1", "ping", "-c", "3", "-W",
                                  "2", target, check=False)
        self.assertEqual(ping.returncode, 0, ping.stdout + ping.stderr)
        self.docker.docker("exec", "-d", "p2", "sh", "-c",
                           "echo pong | nc -l -p 7000")
        time.sleep(0.5)
        tcp = self.docker.docker("exec", "p1", "sh", "-c",
                                 f"nc -w 3 {target} 7000 </dev/null",
                                 check=False)
        self.assertIn("pong", tcp.stdout)

    def test_twenty_in_parallel(self):
        """Twenty containers started at once get twenty addresses."""
        names = [f"par{i}" for i in range(20)]
        with ThreadPoolExecutor(20) as pool:
            list(pool.map(lambda n: self.run_container(n, "--net", "web"),
                          names))
        addresses = {self.stack.address(n) for n in names}
        self.assertEqual(len(addresses), 20)
        self.assertTrue(all(a.startswith("10.9.1.") for a in addresses))
        made = self.stack.endpoint_ids()
        self.assertEqual(len(made), 20)
        self.docker.docker("rm", "-f", *names)
        self.names = []
        self.assert_clean(made)

    def test_requested_address(self):
        """
        --ip is honoured; a second container asking for it fails with
        Docker's error carrying ours.
        """
        self.run_container("ip1", "--net", "web", "--ip", "10.9.1.50")
        self.assertEqual(self.stack.address("ip1"), "10.9.1.50")
        second = self.run_container("ip2", "--net", "web", "--ip",
                                    "10.9.1.50", check=False)
        self.assertNotEqual(second.returncode, 0)
        self.assertIn("10.9.1.50 of network web.default is held by",
                      second.stderr)

    def test_docker_made_network(self):
        """
        docker network create -d contiv makes the contiv network in etcd;
        docker network rm removes it, leaving nothing behind.
        """
        self.docker.docker(
            "network", "create", "-d", "contiv", "--ipam-driver", "contiv",
            "--subnet", "10.31.0.0/24", "-o", "network=dn", "dn")
        net = self.stack.etcd.get("/contiv.io/state/nets/dn.default")
        self.assertIsNotNone(net)
        self.assertEqual(json.loads(net["value"])["subnetIP"], "10.31.0.0")
        self.run_container("dn1", "--net", "dn")
        self.assertTrue(self.stack.address("dn1").startswith("10.31.0."))
        made = self.stack.endpoint_ids()
        self.docker.docker("rm", "-f", "dn1")
        self.names = []
        self.docker.docker("network", "rm", "dn")
        self.assertIsNone(
            self.stack.etcd.get("/contiv.io/state/nets/dn.default"))
        self.assert_clean(made)

    def test_removed_network_leaves_docker(self):
        """contivctl net rm takes the network out of docker network ls."""
        self.stack.ctl("net", "create", "gone", "--subnet", "10.32.0.0/24")
        wait_until("gone in docker", lambda: "gone" in
                   self.stack.docker_nets(), timeout=30)
        self.stack.ctl("net", "rm", "gone")
        wait_until("gone out of docker", lambda: "gone" not in
                   self.stack.docker_nets(), timeout=30)

    def test_malformed_bodies(self):
        """Each call given broken JSON gets 400; the agent goes on."""
        from contivd.cnm.api import CALLS, Empty

        for call, (protocol, kind, _) in CALLS.items():
            if kind is Empty:
                continue
            code, body = self.stack.plugin(call, b"{bad json")
            field = "Error" if protocol == "IpamDriver" else "Err"
            self.assertEqual(code, 400, call)
            self.assertTrue(body[field], call)
        code, body = self.stack.plugin("Plugin.Activate", b"")
        self.assertEqual(code, 200)
        self.assertIsNone(self.stack.agent.poll())
