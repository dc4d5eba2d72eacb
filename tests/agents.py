"""
Real agents for integration tests: C{twistd -n contivd} as a child
process, with its own OVS, against a harness etcd.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request

from contivd.harness import Harness, free_port, run, terminate, wait_until

BIN = os.path.dirname(sys.executable)


def contivctl(etcd_url: str, *args: str, check: bool = True,
              netns: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run contivctl against C{etcd_url}, in C{netns} when given."""
    return run([os.path.join(BIN, "contivctl"), "--etcd", etcd_url]
               + list(args), check=check, netns=netns)


def set_global(etcd_url: str, fwd_mode: str = "bridge") -> None:
    contivctl(etcd_url, "global", "set", "--fwd-mode", fwd_mode,
              "--pvt-subnet", "172.19.0.0/16")


class Agent:
    """One contivd process and the OVS it programs."""

    def __init__(self, harness: Harness, name: str, etcd_url: str,
                 vtep_ip: str, netns: str | None = None,
                 extra: tuple[str, ...] = ("--plugin-mode", "none"),
                 ovs=None, own_ovs_netns: bool = False) -> None:
        self.harness = harness
        self.name = name
        self.etcd_url = etcd_url
        self.vtep_ip = vtep_ip
        self.netns = netns
        if ovs is None and own_ovs_netns:
            # One netdev ovs-vswitchd works per namespace: this one gets
            # its own, and the switch reaches the agent on a unix socket.
            ovs_ns = harness.netns(f"o{name}").name
            ovs = harness.ovs(f"ovs-{name}", netns=ovs_ns)
        self.ovs = ovs or harness.ovs(f"ovs-{name}", netns=netns)
        self.status_port = free_port()
        self.of_listen = (f"unix:{self.ovs.directory}/controller.sock"
                          if own_ovs_netns else
                          f"tcp:{free_port()}:interface=127.0.0.1")
        self.extra = extra
        self.log = harness.path(f"{name}.log")
        self.process: subprocess.Popen[bytes] | None = None
        harness.track(self.stop)

    @property
    def status_url(self) -> str:
        return f"http://127.0.0.1:{self.status_port}"

    def argv(self) -> list[str]:
        return [
            os.path.join(BIN, "twistd"), "-n", "--pidfile=",
            "--logfile=" + self.log, "contivd",
            "--etcd", self.etcd_url, "--ovsdb", self.ovs.remote,
            "--datapath", "netdev", "--host-label", self.name,
            "--vtep-ip", self.vtep_ip, "--ctrl-ip", self.vtep_ip,
            "--of-listen", self.of_listen,
            "--status-listen",
            f"tcp:{self.status_port}:interface=127.0.0.1",
        ] + list(self.extra)

    def start(self) -> Agent:
        argv = self.argv()
        if self.netns:
            argv = ["ip", "netns", "exec", self.netns] + argv
        self.process = subprocess.Popen(argv, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)
        return self

    def get(self, path: str) -> dict:
        """A status route's JSON (from inside the agent's namespace)."""
        url = self.status_url + path
        if self.netns:
            out = run(["curl", "-s", "-m", "5", url], netns=self.netns)
            return json.loads(out.stdout)
        with urllib.request.urlopen(url, timeout=5) as r:
            return json.load(r)

    def healthy(self) -> bool:
        try:
            return bool(self.get("/healthz").get("healthy"))
        except (OSError, ValueError):
            return False

    def wait_healthy(self, timeout: float = 60) -> None:
        wait_until(f"agent {self.name} healthy", self.healthy, timeout,
                   interval=0.2)

    def peers(self) -> set[str]:
        return {p["hostname"] for p in self.get("/inspect/peers")["peers"]}

    def kill(self) -> None:
        """SIGKILL the agent, as a crash would."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)
        self.process = None

    def stop(self) -> None:
        terminate(self.process)
        self.process = None

    def log_tail(self, lines: int = 40) -> str:
        try:
            with open(self.log) as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return "(no log)"


_PLUG = """
import sys
from twisted.internet.defer import Deferred
from twisted.internet.task import react
from contivd.constants import VXLAN_BRIDGE
from contivd.ovsdb.client import OVSDB

async def plug(reactor, remote, endpoint_id, mac):
    client = OVSDB(reactor, remote)
    await client.connect(timeout=20)
    try:
        plugged = await client.plug_endpoint(
            VXLAN_BRIDGE, endpoint_id, mac=mac, tx_checksum_off=True)
        print(plugged.container_name)
    finally:
        await client.close()

react(lambda r, *a: Deferred.fromCoroutine(plug(r, *a)), sys.argv[1:])
"""


def plug_endpoint(remote: str, endpoint_id: str, mac: str,
                  netns: str | None = None) -> str:
    """
    Make an endpoint's veth pair and OVS port with the agent's own OVSDB
    client, as the Docker or CNI front end does; the container end's
    name.
    """
    out = run([sys.executable, "-c", _PLUG, remote, endpoint_id, mac],
              netns=netns)
    return out.stdout.strip().splitlines()[-1]
