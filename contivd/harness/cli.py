"""
C{contivd-harness}: the one-command demo of a single-host contiv stack,
and its stop.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from typing import Any, Optional

from contivd.harness.parts import (
    IMAGE,
    OVS,
    Dockerd,
    Etcd,
    PartFailed,
    free_port,
    wait_until,
)

DEMO_DIR = "/var/tmp/contivd-demo"
PLUGIN_DIR = "/run/docker/plugins"
NETWORK = "demo-net"
SUBNET = "10.55.0.0/24"


def _say(text: str) -> None:
    print(f"demo: {text}", flush=True)


def _bin(name: str) -> str:
    return os.path.join(os.path.dirname(sys.executable), name)


def _state_path(directory: str) -> str:
    return os.path.join(directory, "state.json")


def _http_ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=2) as r:
        return r.status == 200


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _read_pid(path: str) -> Optional[int]:
    try:
        with open(path) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def stop(directory: str = DEMO_DIR) -> None:
    """Stop every part a previous demo left running, and remove it."""
    try:
        with open(_state_path(directory)) as f:
            state = json.load(f)
    except (OSError, ValueError):
        state = None
    if state is None and not os.path.isdir(directory):
        _say("nothing to stop")
        return
    agent_pid = _read_pid(os.path.join(directory, "agent.pid"))
    if state is not None:
        docker = Dockerd(state["docker_dir"])
        if os.path.exists(docker.sock):
            ids = docker.docker("ps", "-aq", check=False).stdout.split()
            if ids:
                docker.docker("rm", "-f", *ids, check=False)
            docker.docker("network", "rm", NETWORK, check=False)
    if agent_pid is not None and _pid_alive(agent_pid):
        os.kill(agent_pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        while _pid_alive(agent_pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if _pid_alive(agent_pid):
            os.kill(agent_pid, signal.SIGKILL)
    if state is not None:
        dockerd = Dockerd(state["docker_dir"])
        pid = _read_pid(os.path.join(state["docker_dir"], "dockerd.pid"))
        if pid is not None and _pid_alive(pid):
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 20
            while _pid_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.1)
        dockerd.stop()
        OVS(state["ovs_dir"]).stop()
        etcd_pid = state.get("etcd_pid")
        if etcd_pid and _pid_alive(etcd_pid):
            os.kill(etcd_pid, signal.SIGTERM)
    shutil.rmtree(directory, ignore_errors=True)
    _say(f"stopped the demo stack and removed {directory}")


def _start_agent(directory: str, etcd: Etcd, ovs: OVS, docker: Dockerd,
                 status_port: int) -> None:
    argv = [
        _bin("twistd"), "--pidfile", os.path.join(directory, "agent.pid"),
        "--logfile", os.path.join(directory, "agent.log"), "contivd",
        "--etcd", etcd.url, "--ovsdb", ovs.remote, "--datapath", "netdev",
        "--host-label", "demo-host", "--vtep-ip", "127.0.0.1",
        "--ctrl-ip", "127.0.0.1", "--plugin-mode", "docker",
        "--docker", docker.host, "--docker-plugin-dir", PLUGIN_DIR,
        "--status-listen", f"tcp:{status_port}:interface=127.0.0.1",
        "--of-listen", f"tcp:{free_port()}:interface=127.0.0.1",
    ]
    subprocess.run(argv, check=True)


def _ctl(etcd: Etcd, *args: str) -> str:
    return subprocess.run([_bin("contivctl"), "--etcd", etcd.url]
                          + list(args), check=True, capture_output=True,
                          text=True).stdout


def _address(docker: Dockerd, name: str) -> str:
    return docker.docker(
        "inspect", "-f",
        "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
        name).stdout.strip()


def demo(directory: str = DEMO_DIR) -> int:
    """
    Start etcd, OVS and dockerd, run the agent, create a network, and
    have two containers on it ping each other.
    """
    stop(directory)
    os.makedirs(directory)
    etcd = Etcd(os.path.join(directory, "etcd"))
    ovs = OVS(os.path.join(directory, "ovs"))
    docker = Dockerd(os.path.join(directory, "docker"))
    status_port = free_port()
    state: dict[str, Any] = {"docker_dir": docker.directory,
                             "ovs_dir": ovs.directory}
    with open(_state_path(directory), "w") as f:
        json.dump(state, f)

    _say("starting etcd, Open vSwitch (userspace datapath) and dockerd")
    etcd.start()
    assert etcd.process is not None
    state.update(etcd_pid=etcd.process.pid, etcd_url=etcd.url,
                 status_port=status_port)
    with open(_state_path(directory), "w") as f:
        json.dump(state, f)
    ovs.start()
    docker.start()

    _say(f"writing the global config into etcd at {etcd.url}")
    _ctl(etcd, "global", "set", "--fwd-mode", "bridge",
         "--pvt-subnet", "172.19.0.0/16")
    _say("starting contivd (log: " + os.path.join(directory, "agent.log")
         + ")")
    _start_agent(directory, etcd, ovs, docker, status_port)
    status_url = f"http://127.0.0.1:{status_port}"
    wait_until("contivd /healthz", lambda: _http_ok(status_url + "/healthz"),
               timeout=60, interval=0.5)

    _say(f"creating the contiv network {NETWORK} ({SUBNET})")
    _ctl(etcd, "net", "create", NETWORK, "--subnet", SUBNET)
    wait_until(f"{NETWORK} in docker network ls",
               lambda: NETWORK in docker.docker(
                   "network", "ls", "--format", "{{.Name}}").stdout.split(),
               timeout=30, interval=0.5)
    for name in ("demo-a", "demo-b"):
        docker.docker("run", "-d", "--net", NETWORK, "--name", name, IMAGE,
                      "sleep", "3600")
    a, b = _address(docker, "demo-a"), _address(docker, "demo-b")
    _say(f"demo-a has {a}, demo-b has {b}; demo-a pings demo-b:")
    ping = docker.docker("exec", "demo-a", "ping", "-c", "3", "-W", "2", b,
                         check=False)
    print(ping.stdout, flush=True)
    if ping.returncode != 0:
        _say("FAILED: demo-a could not reach demo-b; see the agent log")
        return 1
    print(subprocess.run([_bin("contivctl"), "status", "--agent",
                          status_url], capture_output=True,
                         text=True).stdout, flush=True)
    _say("the stack keeps running. Try:")
    print(f"  DOCKER_HOST={docker.host} docker exec -it demo-a sh")
    print(f"  {_bin('contivctl')} --etcd {etcd.url} net ls")
    print(f"  curl {status_url}/inspect/endpoints")
    print("Stop it all with: ./scripts/demo stop", flush=True)
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="contivd-harness",
        description="A single-host contiv stack for trying contivd.")
    parser.add_argument("command", nargs="?", default="demo",
                        choices=("demo", "stop"))
    parser.add_argument("--dir", default=DEMO_DIR,
                        help="where the stack keeps its files")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("contivd-harness: run as root (it starts OVS and dockerd)",
              file=sys.stderr)
        return 2
    try:
        if args.command == "stop":
            stop(args.dir)
            return 0
        return demo(args.dir)
    except (PartFailed, subprocess.CalledProcessError) as e:
        detail = getattr(e, "stderr", None) or ""
        print(f"contivd-harness: {e} {detail}".strip(), file=sys.stderr)
        return 1
