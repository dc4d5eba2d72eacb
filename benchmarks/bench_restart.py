"""
Benchmark: an agent (re)started with 10,000 endpoints in etcd, most of
them on other hosts. Prints the time until the bridge holds every flow
and the agent's resident memory, each beside a reference measured in the
same run: ovs-ofctl installing the same flows, and the same agent with
an empty cluster. Run as root.
"""

from __future__ import annotations

import sys
import time
import urllib.request

from contivd import model
from contivd.constants import VXLAN_BRIDGE
from contivd.harness import Harness, run, skip_reason, wait_until
from tests.agents import Agent, set_global

ENDPOINTS = 10_000
NETWORKS = 100
REMOTE_HOSTS = 20
LOCAL_LABEL = "bench-local"


def put(url: str, key: str, value: str, ttl: int | None = None) -> None:
    data = "value=" + urllib.request.quote(value)
    if ttl:
        data += f"&ttl={ttl}"
    request = urllib.request.Request(f"{url}/v2/keys{key}",
                                     data=data.encode(), method="PUT")
    request.add_header("Content-Type", "application/x-www-form-urlencoded")
    with urllib.request.urlopen(request, timeout=10):
        pass


def fill(url: str) -> None:
    """Networks, remote hosts' registrations, and the endpoints."""
    for n in range(NETWORKS):
        net = model.Network.build(f"n{n}", f"10.{n}.0.0/16", tag=100 + n)
        put(url, net.key, net.to_json())
    for h in range(REMOTE_HOSTS):
        info = model.ServiceInfo(service_name="netplugin.vtep",
                                 host_addr=f"198.51.100.{h + 1}", port=4789,
                                 hostname=f"remote{h}", ttl=3600)
        put(url, info.key, info.to_json(), ttl=3600)
    for i in range(ENDPOINTS):
        n = i % NETWORKS
        ip = f"10.{n}.{i // 250 + 1}.{i % 250 + 1}"
        h = i % REMOTE_HOSTS
        ep = model.Endpoint(
            net_id=f"n{n}.default", endpoint_id=f"ep{i}", ip_address=ip,
            mac_address=model.mac_for(ip), homing_host=f"remote{h}",
            vtep_ip=f"198.51.100.{h + 1}")
        put(url, ep.key, ep.to_json())


def switch_status(agent: Agent) -> dict:
    return agent.get("/inspect/driver")["switches"][VXLAN_BRIDGE]


def complete(agent: Agent, expected: int) -> bool:
    status = switch_status(agent)
    return bool(status["synced"] and status["flows"] == expected
                and status["desired_flows"] == expected)


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def agent_pid(agent: Agent) -> int:
    assert agent.process is not None
    out = run(["pgrep", "-P", str(agent.process.pid)], check=False).stdout
    children = out.split()
    return int(children[0]) if children else agent.process.pid


def measure(harness: Harness, url: str, name: str) -> tuple[float, int,
                                                              Agent]:
    agent = Agent(harness, name, url, "192.0.2.1", own_ovs_netns=True)
    started = time.perf_counter()
    agent.start()
    agent.wait_healthy(600)
    expected = switch_status(agent)["desired_flows"]
    wait_until("every flow on the bridge",
               lambda: complete(agent, expected), 600, interval=0.2)
    return time.perf_counter() - started, rss_kib(agent_pid(agent)), agent


def main() -> int:
    reason = skip_reason("etcd", "ovsdb-server", "ovs-vswitchd")
    if reason:
        print(f"bench_restart: cannot run: {reason}", file=sys.stderr)
        return 1
    harness = Harness(prefix="bench-restart-")
    try:
        empty = harness.etcd("etcd-empty")
        set_global(empty.url)
        idle_seconds, idle_rss, idle = measure(harness, empty.url, "idle")
        idle.stop()

        etcd = harness.etcd()
        set_global(etcd.url)
        t = time.perf_counter()
        fill(etcd.url)
        print(f"wrote {ENDPOINTS} endpoints in {NETWORKS} networks on "
              f"{REMOTE_HOSTS} remote hosts in "
              f"{time.perf_counter() - t:.1f} s")
        first, first_rss, agent = measure(harness, etcd.url, LOCAL_LABEL)
        flows = agent.ovs.flows(VXLAN_BRIDGE)
        groups = agent.ovs.ofctl(VXLAN_BRIDGE, "dump-groups")
        agent.kill()
        started = time.perf_counter()
        agent.start()
        agent.wait_healthy(600)
        wait_until("every flow again",
                   lambda: complete(agent, len(flows)), 600, interval=0.2)
        restart = time.perf_counter() - started
        restart_rss = rss_kib(agent_pid(agent))
        agent.stop()
        reference = ofctl_install(harness, flows, groups)

        print(f"{len(flows)} flows on the bridge")
        print(f"{'':34}{'contivd':>10}{'reference':>11}{'ratio':>8}")
        for what, ours in (("first start, flows complete (s)", first),
                           ("restart after SIGKILL (s)", restart)):
            print(f"{what:34}{ours:>10.2f}{reference:>11.2f}"
                  f"{ours / reference:>8.2f}")
        print("  reference: ovs-ofctl add-groups + add-flows of the same "
              "set on an empty bridge")
        print(f"{'resident memory (MiB)':34}{restart_rss / 1024:>10.1f}"
              f"{idle_rss / 1024:>11.1f}{restart_rss / idle_rss:>8.2f}")
        print("  reference: the same agent with an empty cluster "
              f"(ready in {idle_seconds:.2f} s); first start used "
              f"{first_rss / 1024:.1f} MiB")
    finally:
        harness.close()
    return 0


def ofctl_install(harness: Harness, flows: list[str],
                  groups: str) -> float:
    """Seconds for ovs-ofctl to install the same groups and flows."""
    ovs = harness.ovs("ovs-reference",
                      netns=harness.netns("oref").name)
    bridge = "refbr"
    ovs.vsctl("add-br", bridge, "--", "set", "bridge", bridge,
              "datapath_type=netdev", "fail_mode=secure",
              "protocols=OpenFlow13")
    group_file = harness.path("groups.txt")
    flow_file = harness.path("flows.txt")
    with open(group_file, "w") as f:
        for line in groups.splitlines():
            line = line.strip()
            if line.startswith("group_id="):
                f.write(line + "\n")
    with open(flow_file, "w") as f:
        f.write("\n".join(flows) + "\n")
    started = time.perf_counter()
    ovs.ofctl(bridge, "add-groups", group_file)
    ovs.ofctl(bridge, "add-flows", flow_file)
    return time.perf_counter() - started


if __name__ == "__main__":
    raise SystemExit(main())
