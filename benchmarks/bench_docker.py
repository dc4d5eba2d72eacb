"""
Time from `docker run` to a ready network (eth0 up with its address, as
seen by the container's first command), on a contiv network and on
Docker's own bridge driver, in one run; prints the medians and ratio.

Run as root: .venv/bin/python benchmarks/bench_docker.py [-n RUNS]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))

from contivd.harness import IMAGE, skip_reason, wait_until  # noqa: E402
from tests.test_docker import Stack  # noqa: E402

READY = "ip -4 addr show eth0 | grep -q 'inet ' && ip route | grep -q ."


def time_run(stack: Stack, network: str) -> float:
    """Seconds from `docker run` to the end of a first command that
    needs eth0 with an address and a route."""
    start = time.perf_counter()
    stack.docker.docker("run", "--rm", "--net", network, IMAGE, "sh", "-c",
                        READY)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--runs", type=int, default=15)
    args = parser.parse_args()
    why = skip_reason("etcd", "ovsdb-server", "ovs-vswitchd", "dockerd")
    if why:
        print(f"bench_docker: cannot run: {why}")
        return 2
    stack = Stack()
    try:
        stack.ctl("net", "create", "benchnet", "--subnet", "10.41.0.0/24")
        wait_until("benchnet in Docker",
                   lambda: "benchnet" in stack.docker_nets(), timeout=30)
        stack.docker.docker("network", "create", "-d", "bridge",
                            "--subnet", "10.42.0.0/24", "benchbr")
        for network in ("benchnet", "benchbr"):
            time_run(stack, network)
        times: dict[str, list[float]] = {"benchnet": [], "benchbr": []}
        for _ in range(args.runs):
            for network in times:
                times[network].append(time_run(stack, network))
    finally:
        stack.close()
    contiv = statistics.median(times["benchnet"])
    bridge = statistics.median(times["benchbr"])
    print(f"docker run to ready network, median of {args.runs} runs each:")
    print(f"  contiv driver  {contiv * 1000:8.1f} ms "
          f"(min {min(times['benchnet']) * 1000:.1f}, "
          f"max {max(times['benchnet']) * 1000:.1f})")
    print(f"  bridge driver  {bridge * 1000:8.1f} ms "
          f"(min {min(times['benchbr']) * 1000:.1f}, "
          f"max {max(times['benchbr']) * 1000:.1f})")
    print(f"  ratio contiv/bridge {contiv / bridge:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
