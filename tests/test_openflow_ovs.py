"""
The OpenFlow controller against a real, private Open vSwitch (userspace
datapath): forwarding through our flows only, resync and error reports.
"""

from __future__ import annotations

import os
import re
import subprocess

from twisted.internet import reactor, task, threads
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.logger import globalLogPublisher
from twisted.trial import unittest

from contivd.constants import DATAPATH_IDS, VXLAN_BRIDGE
from contivd.harness import Harness, free_port, run, skip_reason
from contivd.openflow import flows as f
from contivd.openflow import pipeline
from contivd.openflow.controller import OpenFlowController
from contivd.openflow.desired import DesiredState, LocalEndpoint, Network
from contivd.openflow.flows import Flow

DOCS = os.path.join(os.path.dirname(__file__), "..", "docs", "pipeline.md")
DPID = DATAPATH_IDS[VXLAN_BRIDGE]

#: The example of docs/pipeline.md: one network, endpoints a and b.
STATE = DesiredState.of(
    Network("net-blue", vni=5001, local_vlan=1),
    LocalEndpoint("ep-a", "net-blue", 1, "02:02:0a:01:00:01", "10.1.0.1"),
    LocalEndpoint("ep-b", "net-blue", 2, "02:02:0a:01:00:02", "10.1.0.2"),
)

TCP_SERVER = """
import socket, sys
s = socket.socket()
s.bind(("10.1.0.2", int(sys.argv[1])))
s.listen(1)
print("listening", flush=True)
c, _ = s.accept()
while True:
    data = c.recv(65536)
    if not data:
        break
    c.sendall(data)
c.close()
"""

TCP_CLIENT = """
import socket, sys
payload = bytes(range(256)) * 800
c = socket.create_connection(("10.1.0.2", int(sys.argv[1])), timeout=10)
c.sendall(payload)
c.shutdown(socket.SHUT_WR)
got = b""
while True:
    data = c.recv(65536)
    if not data:
        break
    got += data
print("echoed" if got == payload else "mismatch %d" % len(got))
"""


def documented_flows() -> list[str]:
    """The example flows that docs/pipeline.md lists, sorted."""
    with open(DOCS) as doc:
        text = doc.read()
    block = re.search(r"<!-- dump-flows -->\s*```text\n(.*?)```", text,
                      re.S)
    assert block is not None, "docs/pipeline.md lost its example dump"
    return sorted(line.strip() for line in block.group(1).splitlines()
                  if line.strip())


def wait_for(check, timeout: float = 20.0, what: str = "condition"):
    """Poll C{check} on the reactor until it is true."""
    async def poll() -> None:
        waited = 0.0
        while not check():
            if waited >= timeout:
                raise AssertionError(f"{what} not true after {timeout} s")
            await task.deferLater(reactor, 0.1, lambda: None)
            waited += 0.1

    return poll()


class RealSwitchTests(unittest.TestCase):
    """One netdev bridge with two endpoints in namespaces."""

    skip = skip_reason("ovs-vswitchd")
    timeout = 120

    def setUp(self) -> None:
        self.harness = Harness()
        self.addCleanup(self.harness.close)
        self.ovs = self.harness.ovs()
        self.ns_a = self.harness.netns("a")
        self.ns_b = self.harness.netns("b")
        self.tag = self.ns_a.name.split("-", 1)[1]
        self.bridge = "cvx" + self.tag
        self.of_port = free_port()
        self.ovs.vsctl(
            "add-br", self.bridge, "--", "set", "bridge", self.bridge,
            "datapath_type=netdev", "fail_mode=secure",
            "protocols=OpenFlow13", f"other_config:datapath-id={DPID:016x}")
        self.ovs.vsctl("set-controller", self.bridge,
                       f"tcp:127.0.0.1:{self.of_port}")
        self.ovs.vsctl("set", "controller", self.bridge, "max_backoff=1000")
        self.add_endpoint(self.ns_a.name, "a", 1, "02:02:0a:01:00:01",
                          "10.1.0.1")
        self.add_endpoint(self.ns_b.name, "b", 2, "02:02:0a:01:00:02",
                          "10.1.0.2")
        self.listening = None

    def add_endpoint(self, netns: str, suffix: str, ofport: int, mac: str,
                     ip: str) -> None:
        """A veth between C{netns} and the bridge, at a fixed ofport."""
        host, inner = f"h{self.tag}{suffix}", f"e{self.tag}{suffix}"
        run(["ip", "link", "add", host, "type", "veth", "peer", "name",
             inner])
        self.addCleanup(run, ["ip", "link", "del", host], check=False)
        run(["ip", "link", "set", inner, "netns", netns])
        run(["ip", "-n", netns, "link", "set", inner, "name", "eth0",
             "address", mac])
        run(["ip", "-n", netns, "addr", "add", ip + "/24", "dev", "eth0"])
        run(["ip", "-n", netns, "link", "set", "eth0", "up"])
        run(["ethtool", "-K", "eth0", "tx", "off"], netns=netns)
        run(["ip", "link", "set", host, "up"])
        self.ovs.vsctl("add-port", self.bridge, host, "--", "set",
                       "interface", host, f"ofport_request={ofport}")

    async def start_controller(self, renderer=pipeline.render):
        """A fresh controller on the bridge's controller port, in sync."""
        controller = OpenFlowController(
            reactor, {self.bridge: DPID}, echo_interval=1.0,
            liveness_timeout=5.0, renderer=renderer)
        controller.switch(self.bridge).set_state(STATE)
        endpoint = TCP4ServerEndpoint(reactor, self.of_port,
                                      interface="127.0.0.1")
        self.listening = await endpoint.listen(controller)
        self.controller = controller
        self.addCleanup(self.stop_controller)
        await controller.when_connected(self.bridge)
        return controller

    async def stop_controller(self) -> None:
        """Stop listening and drop the connection, as an agent exit does."""
        if self.listening is None:
            return
        listening, self.listening = self.listening, None
        self.controller.close_all()
        await listening.stopListening()

    async def resynced(self, switch, resyncs: int) -> None:
        """Wait until C{switch} has reconnected and is in sync again."""
        await wait_for(lambda: switch.resyncs > resyncs and switch.connected,
                       what="resync")

    def assert_documented_flows(self) -> None:
        self.assertEqual(self.ovs.flows(self.bridge), documented_flows())

    async def assert_ping(self) -> None:
        result = await threads.deferToThread(
            self.ns_a.exec, "ping", "-c", "2", "-W", "2", "10.1.0.2",
            check=False)
        self.assertEqual(result.returncode, 0, result.stdout)

    async def assert_tcp(self) -> None:
        port = str(free_port())
        server = subprocess.Popen(
            ["ip", "netns", "exec", self.ns_b.name, "python3", "-c",
             TCP_SERVER, port], stdout=subprocess.PIPE, text=True)
        self.addCleanup(server.kill)
        await threads.deferToThread(server.stdout.readline)
        result = await threads.deferToThread(
            self.ns_a.exec, "python3", "-c", TCP_CLIENT, port, check=False,
            timeout=30)
        self.assertEqual(result.stdout.strip(), "echoed", result.stderr)

    async def test_ping_and_tcp(self) -> None:
        """Two endpoints reach each other by ping and TCP through our
        flows alone, which are exactly the documented ones."""
        await self.start_controller()
        self.assert_documented_flows()
        dump = self.ovs.ofctl(self.bridge, "dump-flows")
        self.assertNotIn("NORMAL", dump.upper())
        await self.assert_ping()
        await self.assert_tcp()

    async def test_vswitchd_restart(self) -> None:
        """After ovs-vswitchd is killed and started again (losing every
        flow and group), the controller installs the whole set again."""
        controller = await self.start_controller()
        switch = controller.switch(self.bridge)
        before = switch.resyncs
        self.ovs.kill_vswitchd()
        self.ovs.start_vswitchd()
        await self.resynced(switch, before)
        self.assert_documented_flows()
        await self.assert_ping()
        await self.assert_tcp()

    async def test_controller_restart(self) -> None:
        """A restarted controller converges to the same flows, restoring
        one deleted while it was away, and the ping works again."""
        await self.start_controller()
        await self.stop_controller()
        self.ovs.ofctl(self.bridge, "del-flows", "table=9,dl_dst="
                       "02:02:0a:01:00:02")
        controller = await self.start_controller()
        switch = controller.switch(self.bridge)
        self.assert_documented_flows()
        self.assertEqual(switch.status()["synced"], True)
        await self.assert_ping()

    async def test_stale_flow_and_group_removed(self) -> None:
        """A flow added by hand with one of our cookies, and a group in
        our id range, are removed at the next reconnect; others stay."""
        controller = await self.start_controller()
        switch = controller.switch(self.bridge)
        stale = pipeline.cookie(pipeline.KIND_LOCAL_ENDPOINT, "ep-gone")
        self.ovs.ofctl(self.bridge, "add-flow",
                       f"table=9,priority=100,cookie={stale:#x},dl_vlan=1,"
                       "dl_dst=02:02:0a:01:00:09,actions=pop_vlan,output:1")
        self.ovs.ofctl(self.bridge, "add-flow",
                       "table=9,priority=50,cookie=0x1,actions=drop")
        self.ovs.ofctl(self.bridge, "add-group",
                       f"group_id={pipeline.GROUP_BASE | 100},type=all,"
                       "bucket=output:1")
        before = switch.resyncs
        switch.connection.close()
        await self.resynced(switch, before)
        foreign = "cookie=0x1, table=9, priority=50 actions=drop"
        self.assertEqual(self.ovs.flows(self.bridge),
                         sorted(documented_flows() + [foreign]))
        groups = self.ovs.ofctl(self.bridge, "dump-groups")
        self.assertNotIn(str(pipeline.GROUP_BASE | 100), groups)
        self.assertEqual(groups.count("group_id="), 2)

    async def test_rejected_flow_logged(self) -> None:
        """A flow the switch rejects is logged with the switch's reason
        and the request; the rest of the batch is installed."""
        bad = Flow.make(pipeline.MAC_DEST, 5, {}, [f.goto(pipeline.VLAN)],
                        pipeline.cookie(pipeline.KIND_BASE, "bad"))

        def renderer(state):
            good = pipeline.render(state)
            return pipeline.Rendering(good.flows | {bad}, good.groups)

        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        controller = await self.start_controller(renderer)
        refused = [e for e in events
                   if e.get("log_format", "").startswith("switch {dpid} "
                                                         "refused")]
        self.assertEqual(len(refused), 1)
        self.assertIn("OFPET_BAD_INSTRUCTION", refused[0]["reason"])
        self.assertIn("OFPFlowMod", refused[0]["request"])
        self.assertIn("table_id=9", refused[0]["request"])
        status = controller.switch(self.bridge).status()
        self.assertEqual(status["errors_received"], 1)
        self.assert_documented_flows()
