"""
Real parts for tests and the demo: a private etcd, Open vSwitch and
dockerd, network namespaces, each started in a scratch directory and
removed again by L{Harness.close}.

These are blocking helpers, meant for test set-up and the demo script.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Callable, Sequence

OVS_SCHEMA = "/usr/share/openvswitch/vswitch.ovsschema"
BUSYBOX = "/bin/busybox"
IMAGE = "contiv-bbox"
BUSYBOX_TOOLS = ("sh", "ip", "ping", "sleep", "cat", "echo", "nc", "ifconfig",
                 "route", "hostname", "wget", "ls", "ps", "kill")


class PartFailed(RuntimeError):
    """A real part did not start; the message says which and why."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on C{host} that nothing listens on now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_until(what: str, check: Callable[[], bool],
               timeout: float = 20.0, interval: float = 0.1) -> None:
    """
    Poll C{check} until it is true.

    @raise PartFailed: naming C{what} after C{timeout} seconds.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception:
            pass
        time.sleep(interval)
    raise PartFailed(f"{what} not ready after {timeout:.0f} s")


def run(argv: Sequence[str], netns: str | None = None,
        check: bool = True, env: dict[str, str] | None = None,
        input: bytes | None = None,
        timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run a command, in a network namespace when one is given."""
    full = list(argv)
    if netns:
        full = ["ip", "netns", "exec", netns] + full
    result = subprocess.run(
        full, capture_output=True, env=env, timeout=timeout,
        input=input.decode() if input is not None else None, text=True)
    if check and result.returncode != 0:
        raise PartFailed(
            f"{' '.join(full)} exited {result.returncode}: "
            f"{result.stderr.strip() or result.stdout.strip()}")
    return result


def terminate(process: subprocess.Popen | None,
              grace: float = 20.0) -> None:
    """Stop a child process: SIGTERM, then SIGKILL after C{grace} s."""
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)


def _kill_pidfile(path: str, sig: int = signal.SIGTERM) -> int | None:
    try:
        with open(path) as f:
            pid = int(f.read().strip())
    except (OSError, ValueError):
        return None
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return None
    return pid


def _wait_gone(pid: int | None, timeout: float = 10.0) -> None:
    if pid is None:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


class Etcd:
    """A private etcd 3.4 with the v2 API on free loopback ports."""

    def __init__(self, directory: str, host: str = "127.0.0.1",
                 netns: str | None = None,
                 client_port: int | None = None) -> None:
        self.directory = directory
        self.host = host
        self.netns = netns
        self.client_port = client_port or free_port()
        self.peer_port = free_port()
        self.url = f"http://{host}:{self.client_port}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Etcd:
        """Start etcd (again, keeping its data) and wait until it answers."""
        os.makedirs(self.directory, exist_ok=True)
        peer = f"http://{self.host}:{self.peer_port}"
        argv = [
            "etcd", "--name", "harness",
            "--data-dir", os.path.join(self.directory, "data"),
            "--enable-v2=true",
            "--listen-client-urls", self.url,
            "--advertise-client-urls", self.url,
            "--listen-peer-urls", peer,
            "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"harness={peer}",
        ]
        if self.netns:
            argv = ["ip", "netns", "exec", self.netns] + argv
        log = open(os.path.join(self.directory, "etcd.log"), "ab")
        self.process = subprocess.Popen(argv, stdout=log, stderr=log,
                                        start_new_session=True)
        log.close()
        wait_until(f"etcd at {self.url}", self.answers, timeout=30)
        return self

    def answers(self) -> bool:
        """Whether etcd's v2 API answers now."""
        if self.netns:
            return run(["curl", "-sf", "-m", "2", self.url + "/v2/keys/"],
                       netns=self.netns, check=False).returncode == 0
        with urllib.request.urlopen(self.url + "/v2/keys/", timeout=2):
            return True

    def get(self, key: str) -> dict | None:
        """A plain v2 read of C{key}: the node, or L{None} when absent."""
        try:
            with urllib.request.urlopen(
                    f"{self.url}/v2/keys{key}", timeout=5) as r:
                return json.load(r)["node"]
        except urllib.error.HTTPError as e:
            if e.code == 404:
                return None
            raise

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Stop etcd at once (its data stays for a restart)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait(10)
        self.process = None

    def stop(self) -> None:
        """Stop etcd and remove its data."""
        self.kill(signal.SIGTERM)
        shutil.rmtree(self.directory, ignore_errors=True)


def _netns_inode(netns: str | None) -> int | None:
    path = f"/run/netns/{netns}" if netns else "/proc/1/ns/net"
    try:
        return os.stat(path).st_ino
    except OSError:
        return None


def _vswitchd_in(netns: str | None) -> int | None:
    """The pid of an ovs-vswitchd running in C{netns}, if any."""
    wanted = _netns_inode(netns)
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/comm") as f:
                if f.read().strip() != "ovs-vswitchd":
                    continue
            if os.stat(f"/proc/{entry}/ns/net").st_ino == wanted:
                return int(entry)
        except OSError:
            continue
    return None


def _remove_stale_taps(netns: str | None, names: list[str]) -> None:
    """
    Delete the persistent taps of a userspace datapath (C{ovs-netdev}
    and one per bridge, its name cut to 15 characters) that no running
    ovs-vswitchd holds.
    """
    if _vswitchd_in(netns) is not None:
        return
    for name in names:
        link = run(["ip", "-d", "link", "show", name[:15]], netns=netns,
                   check=False)
        if link.returncode == 0 and "tun type tap" in link.stdout:
            run(["ip", "link", "del", name[:15]], netns=netns, check=False)


class OVS:
    """A private ovsdb-server and ovs-vswitchd (userspace datapath)."""

    def __init__(self, directory: str, netns: str | None = None) -> None:
        self.directory = directory
        self.netns = netns
        self.db_sock = os.path.join(directory, "db.sock")
        self.remote = "unix:" + self.db_sock

    @property
    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["OVS_RUNDIR"] = self.directory
        env["OVS_LOGDIR"] = self.directory
        return env

    def start(self) -> OVS:
        """
        Create a fresh database and start both daemons.

        @raise PartFailed: when another ovs-vswitchd runs in the same
            network namespace: the userspace datapath of each needs the
            tap C{ovs-netdev}, so only one of them can work.
        """
        other = _vswitchd_in(self.netns)
        if other is not None:
            raise PartFailed(
                f"ovs-vswitchd {other} already runs in network namespace "
                f"{self.netns or '(the root one)'}; one userspace "
                "datapath works per namespace: stop it, or start this "
                "OVS in a namespace of its own")
        _remove_stale_taps(self.netns, ["ovs-netdev"])
        os.makedirs(self.directory, exist_ok=True)
        db = os.path.join(self.directory, "conf.db")
        if not os.path.exists(db):
            run(["ovsdb-tool", "create", db, OVS_SCHEMA])
        self.start_ovsdb()
        run(["ovs-vsctl", "--db=" + self.remote, "--no-wait", "init"])
        self.start_vswitchd()
        return self

    def start_ovsdb(self) -> None:
        """Start ovsdb-server on the existing database."""
        d = self.directory
        run(["ovsdb-server", os.path.join(d, "conf.db"),
             "--remote=punix:" + self.db_sock,
             "--pidfile=" + os.path.join(d, "ovsdb.pid"), "--detach",
             "--log-file=" + os.path.join(d, "ovsdb.log")],
            netns=self.netns, env=self._env)

    def start_vswitchd(self) -> None:
        """Start ovs-vswitchd against the running ovsdb-server."""
        d = self.directory
        run(["ovs-vswitchd", self.remote,
             "--pidfile=" + os.path.join(d, "vswitchd.pid"), "--detach",
             "--log-file=" + os.path.join(d, "vswitchd.log")],
            netns=self.netns, env=self._env)

    def kill_vswitchd(self) -> None:
        """Kill ovs-vswitchd with SIGKILL, losing every flow."""
        _wait_gone(_kill_pidfile(
            os.path.join(self.directory, "vswitchd.pid"), signal.SIGKILL))

    def kill_ovsdb(self) -> None:
        """Kill ovsdb-server with SIGKILL (the database file stays)."""
        _wait_gone(_kill_pidfile(
            os.path.join(self.directory, "ovsdb.pid"), signal.SIGKILL))

    def vsctl(self, *args: str) -> str:
        """Run ovs-vsctl against this OVS; its output."""
        return run(["ovs-vsctl", "--timeout=10", "--db=" + self.remote]
                   + list(args)).stdout

    def ofctl(self, bridge: str, command: str, *args: str) -> str:
        """Run ovs-ofctl (OpenFlow 1.3) on C{bridge}'s management socket."""
        mgmt = "unix:" + os.path.join(self.directory, bridge + ".mgmt")
        return run(["ovs-ofctl", "-O", "OpenFlow13", command, mgmt]
                   + list(args)).stdout

    def flows(self, bridge: str) -> list[str]:
        """C{bridge}'s flows without counters, sorted."""
        out = self.ofctl(bridge, "dump-flows", "--no-stats")
        return sorted(line.strip() for line in out.splitlines()
                      if line.strip() and "reply" not in line)

    def stop(self) -> None:
        """
        Stop both daemons, remove the taps the userspace datapath leaves
        behind (they persist), and remove the directory.
        """
        try:
            bridges = self.vsctl("list-br").split()
        except PartFailed:
            bridges = []
        for name in ("vswitchd.pid", "ovsdb.pid"):
            _wait_gone(_kill_pidfile(os.path.join(self.directory, name)))
        _remove_stale_taps(self.netns, ["ovs-netdev"] + bridges)
        shutil.rmtree(self.directory, ignore_errors=True)


class Dockerd:
    """A private dockerd with its own data root, exec root and socket."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.sock = os.path.join(directory, "docker.sock")
        self.host = "unix://" + self.sock
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Dockerd:
        """Start dockerd, wait until it answers, import the busybox image."""
        d = self.directory
        os.makedirs(d, exist_ok=True)
        log = open(os.path.join(d, "dockerd.log"), "ab")
        self.process = subprocess.Popen(
            ["dockerd", "--data-root", os.path.join(d, "root"),
             "--exec-root", os.path.join(d, "exec"), "-H", self.host,
             "--pidfile", os.path.join(d, "dockerd.pid"),
             "--iptables=false", "--bridge=none"],
            stdout=log, stderr=log, start_new_session=True)
        log.close()
        wait_until("dockerd", lambda: self.docker(
            "info", check=False).returncode == 0, timeout=40, interval=0.2)
        self.import_image()
        return self

    def docker(self, *args: str, check: bool = True,
               timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run the docker client against this engine."""
        env = dict(os.environ, DOCKER_HOST=self.host)
        return run(["docker"] + list(args), env=env, check=check,
                   timeout=timeout)

    def import_image(self) -> None:
        """Make the offline busybox image L{IMAGE} from busybox-static."""
        if self.docker("image", "inspect", IMAGE,
                       check=False).returncode == 0:
            return
        root = tempfile.mkdtemp(prefix="bbroot-", dir=self.directory)
        os.makedirs(os.path.join(root, "bin"))
        shutil.copy(BUSYBOX, os.path.join(root, "bin", "busybox"))
        for tool in BUSYBOX_TOOLS:
            os.symlink("busybox", os.path.join(root, "bin", tool))
        tar = subprocess.run(["tar", "-C", root, "-c", "."],
                             capture_output=True, check=True).stdout
        env = dict(os.environ, DOCKER_HOST=self.host)
        subprocess.run(["docker", "import", "-", IMAGE], input=tar,
                       env=env, capture_output=True, check=True)
        shutil.rmtree(root)

    def stop(self) -> None:
        """Remove every container, stop dockerd, remove its directory."""
        if self.process is not None and self.process.poll() is None:
            ids = self.docker("ps", "-aq", check=False).stdout.split()
            if ids:
                self.docker("rm", "-f", *ids, check=False)
        terminate(self.process)
        self.process = None
        exec_root = os.path.join(self.directory, "exec")
        subprocess.run(["umount", "-R", exec_root], capture_output=True)
        root = os.path.join(self.directory, "root")
        subprocess.run(
            ["sh", "-c", f"grep ' {root}' /proc/mounts | cut -d' ' -f2 "
             "| sort -r | xargs -r umount -l"], capture_output=True)
        shutil.rmtree(self.directory, ignore_errors=True)


class NetNS:
    """A network namespace with its loopback up."""

    def __init__(self, name: str) -> None:
        self.name = name

    def start(self) -> NetNS:
        run(["ip", "netns", "add", self.name])
        run(["ip", "-n", self.name, "link", "set", "lo", "up"])
        return self

    def exec(self, *argv: str, check: bool = True,
             timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run a command inside the namespace."""
        return run(argv, netns=self.name, check=check, timeout=timeout)

    def stop(self) -> None:
        run(["ip", "netns", "del", self.name], check=False)


class Harness:
    """
    A scratch directory and the parts started in it; L{close} stops them
    all in reverse order and removes the directory.
    """

    def __init__(self, prefix: str = "contivd-") -> None:
        self.directory = tempfile.mkdtemp(prefix=prefix)
        self._parts: list = []
        self._tag = os.path.basename(self.directory)[-6:].replace("_", "x")

    def path(self, *names: str) -> str:
        return os.path.join(self.directory, *names)

    def _add(self, part):
        self._parts.append(part)
        return part.start()

    def etcd(self, name: str = "etcd", **kw) -> Etcd:
        return self._add(Etcd(self.path(name), **kw))

    def ovs(self, name: str = "ovs", netns: str | None = None) -> OVS:
        return self._add(OVS(self.path(name), netns=netns))

    def dockerd(self, name: str = "docker") -> Dockerd:
        return self._add(Dockerd(self.path(name)))

    def netns(self, name: str) -> NetNS:
        """A namespace whose name is unique to this harness."""
        return self._add(NetNS(f"{name}-{self._tag}"))

    def track(self, stop: Callable[[], None]) -> None:
        """Call C{stop} at L{close}, like a part's own stop."""

        class _Callback:
            def stop(self) -> None:
                stop()

        self._parts.append(_Callback())

    def close(self) -> None:
        """Stop every part, newest first, then remove the directory."""
        errors = []
        while self._parts:
            part = self._parts.pop()
            try:
                part.stop()
            except Exception as e:
                errors.append(f"{type(part).__name__}: {e}")
        shutil.rmtree(self.directory, ignore_errors=True)
        if errors:
            raise PartFailed("; ".join(errors))


def missing_tools(*tools: str) -> list[str]:
    """The names among C{tools} not found on PATH."""
    return [t for t in tools if shutil.which(t) is None]


def skip_reason(*tools: str) -> str | None:
    """
    Why a test of real parts cannot run here, or L{None} when it can.
    """
    if os.geteuid() != 0:
        return "needs root to run OVS, dockerd and network namespaces"
    missing = missing_tools(*tools)
    if missing:
        return ("not installed: " + ", ".join(missing)
                + " (.ci/run installs them)")
    return None
