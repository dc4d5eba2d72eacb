"""
Benchmark: the flows of 10,000 endpoints installed through the controller,
side by side with ovs-ofctl add-flows of the same flows (run as root).
"""

from __future__ import annotations

import os
import sys
import time

from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ServerEndpoint

from contivd.constants import DATAPATH_IDS, VXLAN_BRIDGE
from contivd.harness import Harness, free_port, run, skip_reason
from contivd.openflow import pipeline
from contivd.openflow.controller import OpenFlowController
from contivd.openflow.desired import DesiredState, LocalEndpoint, Network

ENDPOINTS = 10_000
#: A GROUP_MOD is limited to 64 KiB, about 1,600 buckets: spread the
#: endpoints over networks of 100.
PER_NETWORK = 100


def desired_state() -> DesiredState:
    """ENDPOINTS local endpoints in networks of PER_NETWORK."""
    objects: list = []
    for n in range(ENDPOINTS // PER_NETWORK):
        objects.append(Network(f"net{n}", vni=5000 + n, local_vlan=n + 1))
    for i in range(ENDPOINTS):
        n = i // PER_NETWORK
        mac = "02:02:0a:%02x:%02x:%02x" % (n, i >> 8 & 0xFF, i & 0xFF)
        objects.append(LocalEndpoint(
            f"ep{i}", f"net{n}", i + 1, mac,
            f"10.{n}.{i >> 8 & 0xFF}.{i & 0xFF}"))
    return DesiredState.of(*objects)


def make_bridge(ovs, name: str, dpid: int) -> None:
    ovs.vsctl("add-br", name, "--", "set", "bridge", name,
              "datapath_type=netdev", "fail_mode=secure",
              "protocols=OpenFlow13", f"other_config:datapath-id={dpid:016x}")


def count_flows(ovs, bridge: str) -> int:
    return len(ovs.flows(bridge))


async def through_controller(ovs, bridge: str, state: DesiredState) -> float:
    """Seconds from set_state to the barrier reply of the whole batch."""
    port = free_port()
    controller = OpenFlowController(
        reactor, {bridge: DATAPATH_IDS[VXLAN_BRIDGE]})
    listening = await TCP4ServerEndpoint(
        reactor, port, interface="127.0.0.1").listen(controller)
    ovs.vsctl("set-controller", bridge, f"tcp:127.0.0.1:{port}")
    switch = await controller.when_connected(bridge)
    started = time.perf_counter()
    await switch.set_state(state)
    elapsed = time.perf_counter() - started
    controller.close_all()
    await listening.stopListening()
    return elapsed


def through_ofctl(ovs, bridge: str, state: DesiredState) -> float:
    """Seconds for ovs-ofctl add-groups and add-flows of the same set."""
    rendering = pipeline.render(state)
    flows_file = ovs.directory + "/bench.flows"
    groups_file = ovs.directory + "/bench.groups"
    with open(groups_file, "w") as out:
        out.writelines(g.to_ofctl() + "\n"
                       for g in rendering.groups.values())
    with open(flows_file, "w") as out:
        out.writelines(fl.to_ofctl() + "\n" for fl in rendering.flows)
    mgmt = "unix:" + os.path.join(ovs.directory, bridge + ".mgmt")
    started = time.perf_counter()
    run(["ovs-ofctl", "-O", "OpenFlow13", "add-groups", mgmt, groups_file])
    run(["ovs-ofctl", "-O", "OpenFlow13", "add-flows", mgmt, flows_file],
        timeout=600)
    return time.perf_counter() - started


async def main() -> None:
    harness = Harness(prefix="contivd-bench-")
    try:
        ovs = harness.ovs()
        tag = os.path.basename(harness.directory)[-6:].replace("_", "x")
        ours, theirs = "bco" + tag, "bct" + tag
        make_bridge(ovs, ours, DATAPATH_IDS[VXLAN_BRIDGE])
        make_bridge(ovs, theirs, 0xB0B)
        state = desired_state()
        render_started = time.perf_counter()
        rendering = pipeline.render(state)
        render_time = time.perf_counter() - render_started
        controller_time = await through_controller(ovs, ours, state)
        ofctl_time = through_ofctl(ovs, theirs, state)
        print(f"{ENDPOINTS} endpoints: {len(rendering.flows)} flows, "
              f"{len(rendering.groups)} groups (render {render_time:.2f} s)")
        print(f"controller:           {controller_time:.2f} s "
              f"({count_flows(ovs, ours)} flows on the bridge)")
        print(f"ovs-ofctl add-flows:  {ofctl_time:.2f} s "
              f"({count_flows(ovs, theirs)} flows on the bridge)")
        print(f"ratio controller/ofctl: {controller_time / ofctl_time:.2f}")
    finally:
        harness.close()


def run_benchmark() -> None:
    reason = skip_reason("ovs-vswitchd")
    if reason:
        sys.exit(f"cannot run: {reason}")
    outcome: list = []

    def done(result):
        outcome.append(result)
        reactor.stop()

    reactor.callWhenRunning(
        lambda: defer.Deferred.fromCoroutine(main()).addBoth(done))
    reactor.run()
    if outcome and hasattr(outcome[0], "printTraceback"):
        outcome[0].printTraceback()
        sys.exit(1)


if __name__ == "__main__":
    run_benchmark()
