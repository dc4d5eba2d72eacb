"""
The agent's OVSDB client: bridges, endpoint ports and VXLAN tunnel ports,
kept through the ovs IDL on a thread of its own, behind Deferreds.
"""

from __future__ import annotations

import collections
import errno
import ipaddress
import os
import threading
import time
import warnings
from typing import Any, Callable, Generator, Iterable, Optional

import attr
from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from contivd.constants import ENDPOINT_KEY, OWNER_KEY, PEER_KEY
from contivd.errors import ConfigError, Conflict, ContivError, NotFound
from contivd.ovsdb import veth

with warnings.catch_warnings():
    # ovs.poller imports eventlet when present, which warns on import.
    warnings.simplefilter("ignore")
    import ovs.db.idl
    import ovs.jsonrpc
    import ovs.poller
    import ovs.stream

#: The value of L{OWNER_KEY} on every row contivd made.
OWNER = "contivd"

DATABASE = "Open_vSwitch"
TABLES = ("Open_vSwitch", "Bridge", "Port", "Interface", "Controller")
DATAPATH_TYPES = ("system", "netdev")

#: How long one attempt to reach the server may take, in seconds.
_CONNECT_ATTEMPT = 2.0
_MAX_BACKOFF = 4.0
#: Longest sleep of the IDL thread while calls are pending, in seconds.
_TICK = 0.5

Steps = Generator[Any, None, Any]


class OVSDBError(ContivError):
    """An OVSDB call failed; the message says which and why."""


class OVSDBTimeout(OVSDBError):
    """An OVSDB call did not complete within its deadline."""


class _Unreachable(Exception):
    """One attempt to reach ovsdb-server failed."""


@attr.s(frozen=True, auto_attribs=True, kw_only=True)
class PortRecord:
    """
    A port on a bridge, as OVSDB has it.

    @ivar kind: C{"endpoint"} or C{"tunnel"} for ports contivd made,
        C{"foreign"} for any other.
    @ivar ofport: the OpenFlow port number, or L{None} while
        ovs-vswitchd has not assigned one (or failed to).
    """

    name: str
    kind: str
    ofport: Optional[int] = None
    endpoint_id: Optional[str] = None
    peer: Optional[str] = None
    tag: Optional[int] = None
    external_ids: dict = attr.Factory(dict)


@attr.s(frozen=True, auto_attribs=True, kw_only=True)
class PluggedEndpoint:
    """An endpoint's veth pair, plugged into a bridge."""

    endpoint_id: str
    ofport: int
    ovs_name: str
    container_name: str


def controller_target(of_listen: str) -> str:
    """
    The OVS controller target that reaches a Twisted server endpoint,
    e.g. C{tcp:6633:interface=127.0.0.1} gives C{tcp:127.0.0.1:6633}.

    A missing or wildcard interface becomes the loopback address, since
    the switch runs on the same host.

    @raise ConfigError: for an endpoint OVS cannot connect to.
    """
    kind, positional, named = _parse_endpoint(of_listen)
    if kind == "unix":
        address = named.get("address") or (positional or [""])[0]
        if not address:
            raise ConfigError(f"--of-listen: {of_listen!r} has no path")
        return f"unix:{address}"
    if kind not in ("tcp", "tcp6"):
        raise ConfigError(
            f"--of-listen: {of_listen!r} is a {kind} endpoint; the switch "
            "connects only to tcp:PORT[:interface=ADDRESS] or unix:PATH")
    port = named.get("port") or (positional[0] if positional else "")
    host = named.get("interface") or (
        positional[1] if len(positional) > 1 else "")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"--of-listen: {of_listen!r} has no valid port")
    if host in ("", "0.0.0.0"):
        host = "::1" if kind == "tcp6" else "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ipaddress.ip_address(host).version == 6:
        return f"tcp:[{host}]:{port}"
    return f"tcp:{host}:{port}"


def _parse_endpoint(text: str) -> tuple[str, list[str], dict[str, str]]:
    parts, current, escaped = [], [], False
    for char in text:
        if escaped:
            current.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == ":":
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    positional, named = [], {}
    for part in parts[1:]:
        key, sep, value = part.partition("=")
        if sep:
            named[key] = value
        else:
            positional.append(part)
    return parts[0], positional, named


def tunnel_name(peer_ip: str) -> str:
    """
    The name of the VXLAN port to C{peer_ip}: C{vxif} and the address in
    eight hex digits (C{vxifc0a8020a} for 192.168.2.10).

    Contiv's decimal form drops the dots, which makes 1.21.1.1 and
    12.1.1.1 the same name and can exceed 15 characters.
    """
    address = ipaddress.IPv4Address(peer_ip)
    return f"vxif{int(address):08x}"


class _Call:
    """One call waiting for or running in the IDL thread."""

    def __init__(self, what: str, steps: Steps, deadline: float) -> None:
        self.what = what
        self.steps = steps
        self.deadline = deadline
        self.deferred: Optional[Deferred] = None
        self.waiting_for = "a connection to ovsdb-server"
        self.cancelled = False


class OVSDB:
    """
    A connection to ovsdb-server, replicated by the ovs IDL in a thread
    that is never the reactor's; every method returns a L{Deferred}.

    Calls made while the server is away wait until it is back, up to
    their deadline, then fail with L{OVSDBTimeout}. The IDL reconnects by
    itself, so a restart of ovsdb-server is survived.

    @ivar connected: whether the IDL is connected and in sync now.
    """

    log = Logger()

    def __init__(self, reactor, remote: str, timeout: float = 10.0,
                 netns: Optional[str] = None) -> None:
        """
        @param remote: an OVSDB remote, like C{unix:/run/openvswitch/db.sock}.
        @param timeout: the default deadline of each call, in seconds.
        @param netns: the named network namespace ovs-vswitchd runs in,
            where veth pairs are made; by default this process's own.
        """
        self._reactor = reactor
        self.remote = remote
        self.timeout = timeout
        self.netns = netns
        self.connected = False
        self._incoming: collections.deque[_Call] = collections.deque()
        self._thread: Optional[threading.Thread] = None
        self._stopping = False
        self._closed: Optional[Deferred] = None
        self._idl: Optional[ovs.db.idl.Idl] = None
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._last_problem = ""

    # Public API, called on the reactor thread.

    def connect(self, timeout: Optional[float] = None) -> Deferred[None]:
        """
        Start the IDL thread; the result fires once the database is
        replicated. On a timeout the thread keeps trying.
        """
        return self._submit("connect", self._connect_steps(), timeout)

    def close(self) -> Deferred[None]:
        """Stop the IDL thread; pending calls fail with L{OVSDBError}."""
        if self._thread is None:
            self._stopping = True
            return succeed(None)
        if not self._stopping:
            self._stopping = True
            self._wake()
        result: Deferred[None] = Deferred()
        assert self._closed is not None
        self._closed.addBoth(lambda _: result.callback(None))
        return result

    def ensure_bridge(self, name: str, controller_target: str,
                      datapath_type: str, datapath_id: int,
                      timeout: Optional[float] = None) -> Deferred[str]:
        """
        Create bridge C{name} when absent, or correct it: C{fail_mode}
        secure, OpenFlow13 only, C{datapath_type}, C{other_config}
        C{datapath-id} as 16 hex digits, and exactly one Controller row,
        with C{controller_target}.

        @return: a Deferred firing with C{"created"}, C{"fixed"} or
            C{"unchanged"}.
        """
        if datapath_type not in DATAPATH_TYPES:
            return fail(ValueError(
                f"datapath_type {datapath_type!r} is not one of "
                f"{', '.join(DATAPATH_TYPES)}"))
        if not 0 <= datapath_id < 1 << 64:
            return fail(ValueError(
                f"datapath_id {datapath_id!r} does not fit in 64 bits"))
        return self._submit(
            f"ensure bridge {name}",
            self._ensure_bridge_steps(name, controller_target,
                                      datapath_type, datapath_id),
            timeout)

    def bridge_exists(self, name: str,
                      timeout: Optional[float] = None) -> Deferred[bool]:
        """Whether bridge C{name} exists."""
        return self._read(f"look up bridge {name}",
                          lambda: self._bridge(name) is not None, timeout)

    def controller_connected(self, bridge: str,
                             timeout: Optional[float] = None
                             ) -> Deferred[bool]:
        """Whether any controller of C{bridge} is connected, per OVS."""
        def check() -> bool:
            row = self._need_bridge(bridge)
            return any(c.is_connected for c in row.controller)

        return self._read(f"read the controllers of {bridge}", check,
                          timeout)

    def add_endpoint_port(self, bridge: str, port_name: str,
                          endpoint_id: str, tag: Optional[int] = None,
                          timeout: Optional[float] = None
                          ) -> Deferred[int]:
        """
        Put the existing interface C{port_name} on C{bridge} as the port
        of C{endpoint_id}, with access VLAN C{tag} if given.

        Idempotent: our port of that name for another endpoint, or on
        another bridge, is replaced.

        @return: a Deferred firing with the OpenFlow port number, once
            ovs-vswitchd has assigned it.
        @raise Conflict: when a port of that name is not ours.
        """
        return self._submit(
            f"add port {port_name} to {bridge}",
            self._add_endpoint_steps(bridge, port_name, endpoint_id, tag),
            timeout)

    def remove_port(self, bridge: str, name: str,
                    timeout: Optional[float] = None) -> Deferred[bool]:
        """
        Remove our port C{name} from C{bridge}; whether there was one.

        @raise Conflict: when the port is not ours.
        """
        return self._submit(f"remove port {name} from {bridge}",
                            self._remove_port_steps(bridge, name), timeout)

    def plug_endpoint(self, bridge: str, endpoint_id: str,
                      mac: Optional[str] = None, mtu: Optional[int] = None,
                      tag: Optional[int] = None,
                      tx_checksum_off: bool = False,
                      timeout: Optional[float] = None
                      ) -> Deferred[PluggedEndpoint]:
        """
        Make the endpoint's veth pair (see L{veth.port_names}) unless its
        host end exists, and put the host end on C{bridge}.

        @param mtu: of both ends; by default the lowest host MTU less the
            VXLAN overhead.
        @param tx_checksum_off: turn TX checksum offload off on both
            ends, as the C{netdev} datapath needs.
        """
        return self._submit(
            f"plug endpoint {endpoint_id} into {bridge}",
            self._plug_steps(bridge, endpoint_id, mac, mtu, tag,
                             tx_checksum_off),
            timeout)

    def unplug_endpoint(self, bridge: str, endpoint_id: str,
                        timeout: Optional[float] = None) -> Deferred[bool]:
        """Remove the endpoint's port and veth pair; whether any was."""
        return self._submit(f"unplug endpoint {endpoint_id} from {bridge}",
                            self._unplug_steps(bridge, endpoint_id),
                            timeout)

    def add_tunnel(self, bridge: str, peer_ip: str, dst_port: int = 4789,
                   timeout: Optional[float] = None) -> Deferred[int]:
        """
        Add the VXLAN port to C{peer_ip} (named by L{tunnel_name}) with
        C{key=flow} and UDP port C{dst_port}, or correct ours.

        @return: a Deferred firing with its OpenFlow port number.
        @raise Conflict: when a port of that name is not ours.
        """
        try:
            name = tunnel_name(peer_ip)
        except ValueError:
            return fail(ValueError(
                f"peer_ip {peer_ip!r} is not an IPv4 address"))
        return self._submit(
            f"add tunnel {name} to {peer_ip} on {bridge}",
            self._add_tunnel_steps(bridge, name, str(
                ipaddress.IPv4Address(peer_ip)), dst_port),
            timeout)

    def remove_tunnel(self, bridge: str, peer_ip: str,
                      timeout: Optional[float] = None) -> Deferred[bool]:
        """Remove our VXLAN port to C{peer_ip}; whether there was one."""
        return self._submit(f"remove tunnel to {peer_ip} from {bridge}",
                            self._remove_tunnel_steps(bridge, peer_ip),
                            timeout)

    def ports(self, bridge: str, timeout: Optional[float] = None
              ) -> Deferred[list[PortRecord]]:
        """Every port of C{bridge} but its local one, sorted by name."""
        return self._read(f"list the ports of {bridge}",
                          lambda: self._records(bridge, ours_only=False),
                          timeout)

    def our_ports(self, bridge: str, timeout: Optional[float] = None
                  ) -> Deferred[list[PortRecord]]:
        """The endpoint and tunnel ports contivd made on C{bridge}."""
        return self._read(f"list our ports of {bridge}",
                          lambda: self._records(bridge, ours_only=True),
                          timeout)

    def reconcile(self, bridge: str, keep_endpoints: Iterable[str],
                  keep_peers: Iterable[str],
                  timeout: Optional[float] = None) -> Deferred[list[str]]:
        """
        Remove our ports of C{bridge} whose endpoint is not in
        C{keep_endpoints} (with their veth pairs) and our tunnels whose
        peer is not in C{keep_peers}. Other ports are never touched.

        @return: a Deferred firing with the names removed, sorted.
        """
        return self._submit(
            f"reconcile the ports of {bridge}",
            self._reconcile_steps(bridge, set(keep_endpoints),
                                  {str(ipaddress.ip_address(p))
                                   for p in keep_peers}),
            timeout)

    # Submission and delivery.

    def _submit(self, what: str, steps: Steps,
                timeout: Optional[float]) -> Deferred:
        if self._stopping:
            steps.close()
            return fail(OVSDBError(
                f"cannot {what}: the OVSDB client is closed"))
        self._start_thread()
        limit = self.timeout if timeout is None else timeout
        call = _Call(what, steps, time.monotonic() + limit)

        def cancel(_: Deferred) -> None:
            call.cancelled = True
            self._wake()

        call.deferred = Deferred(canceller=cancel)
        self._incoming.append(call)
        self._wake()
        return call.deferred

    def _read(self, what: str, read: Callable[[], Any],
              timeout: Optional[float]) -> Deferred:
        def steps() -> Steps:
            return read()
            yield  # a generator that never waits

        return self._submit(what, steps(), timeout)

    def _start_thread(self) -> None:
        if self._thread is not None:
            return
        self._closed = Deferred()
        self._thread = threading.Thread(
            target=self._main, name=f"ovsdb {self.remote}", daemon=True)
        self._thread.start()

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass

    def _deliver(self, call: _Call, result: Any) -> None:
        def fire() -> None:
            if call.deferred is not None and not call.deferred.called:
                if isinstance(result, Failure):
                    call.deferred.errback(result)
                else:
                    call.deferred.callback(result)

        self._reactor.callFromThread(fire)

    def _tell(self, method: Callable[..., None], text: str,
              **fields: Any) -> None:
        self._reactor.callFromThread(method, text, **fields)

    # The IDL thread.

    def _main(self) -> None:
        pending: list[_Call] = []
        try:
            self._loop(pending)
        except BaseException:
            failure = Failure()
            self._reactor.callFromThread(
                self.log.failure, "OVSDB thread for {remote} failed",
                failure, remote=self.remote)
        finally:
            pending.extend(self._incoming)
            self._incoming.clear()
            for call in pending:
                call.steps.close()
                self._deliver(call, Failure(OVSDBError(
                    f"cannot {call.what}: the OVSDB client was closed")))
            if self._idl is not None:
                self._idl.close()
                self._idl = None
            self.connected = False
            for fd in (self._wake_r, self._wake_w):
                os.close(fd)
            self._tell(self.log.info, "OVSDB client for {remote} stopped",
                       remote=self.remote)
            assert self._closed is not None
            self._reactor.callFromThread(self._closed.callback, None)

    def _loop(self, pending: list[_Call]) -> None:
        next_try, backoff = 0.0, 0.5
        while not self._stopping:
            while self._incoming:
                pending.append(self._incoming.popleft())
            if self._idl is None and time.monotonic() >= next_try:
                try:
                    self._idl = self._open_idl()
                except _Unreachable as e:
                    self._note_problem(str(e))
                    next_try = time.monotonic() + backoff
                    backoff = min(backoff * 2, _MAX_BACKOFF)
            if self._idl is not None:
                self._idl.run()
                self._note_state()
            if self.connected:
                pending[:] = self._step_all(pending)
            pending[:] = self._expire(pending)
            self._block(pending, next_try)

    def _open_idl(self) -> ovs.db.idl.Idl:
        helper = ovs.db.idl.SchemaHelper(schema_json=self._fetch_schema())
        for table in TABLES:
            helper.register_table(table)
        return ovs.db.idl.Idl(self.remote, helper)

    def _fetch_schema(self) -> Any:
        error, stream = ovs.stream.Stream.open_block(
            ovs.stream.Stream.open(self.remote),
            int(_CONNECT_ATTEMPT * 1000))
        if error:
            raise _Unreachable(f"cannot connect: {os.strerror(error)}")
        rpc = ovs.jsonrpc.Connection(stream)
        try:
            return self._get_schema(rpc)
        finally:
            rpc.close()

    def _get_schema(self, rpc: ovs.jsonrpc.Connection) -> Any:
        request = ovs.jsonrpc.Message.create_request("get_schema",
                                                     [DATABASE])
        deadline = time.monotonic() + _CONNECT_ATTEMPT
        error = rpc.send(request)
        while not error:
            rpc.run()
            error, message = rpc.recv()
            if error == errno.EAGAIN:
                error = 0
            if message is not None and message.id == request.id:
                if message.type == ovs.jsonrpc.Message.T_ERROR:
                    raise _Unreachable(f"get_schema: {message.error}")
                return message.result
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise _Unreachable("no answer to get_schema")
            poller = ovs.poller.Poller()
            rpc.wait(poller)
            rpc.recv_wait(poller)
            poller.timer_wait(int(remaining * 1000) + 1)
            poller.block()
        raise _Unreachable(f"get_schema: {os.strerror(error)}")

    def _note_problem(self, problem: str) -> None:
        if problem != self._last_problem:
            self._last_problem = problem
            self._tell(self.log.warn,
                       "OVSDB at {remote} unreachable ({problem}); "
                       "retrying", remote=self.remote, problem=problem)

    def _note_state(self) -> None:
        assert self._idl is not None
        ready = (self._idl._session.is_connected()
                 and self._idl.state == self._idl.IDL_S_MONITORING)
        if ready == self.connected:
            return
        self.connected = ready
        if ready:
            self._last_problem = ""
            self._tell(self.log.info, "OVSDB at {remote} connected",
                       remote=self.remote)
        else:
            self._tell(self.log.warn,
                       "OVSDB at {remote} disconnected; reconnecting",
                       remote=self.remote)

    def _step_all(self, pending: list[_Call]) -> list[_Call]:
        left = []
        for call in pending:
            if call.cancelled:
                call.steps.close()
                continue
            try:
                waiting = call.steps.send(None)
            except StopIteration as done:
                self._deliver(call, done.value)
                continue
            except BaseException:
                self._deliver(call, Failure())
                continue
            if isinstance(waiting, str):
                call.waiting_for = waiting
            left.append(call)
        return left

    def _expire(self, pending: list[_Call]) -> list[_Call]:
        now = time.monotonic()
        left = []
        for call in pending:
            if call.cancelled:
                call.steps.close()
            elif now >= call.deadline:
                call.steps.close()
                self._deliver(call, Failure(OVSDBTimeout(
                    f"OVSDB at {self.remote} did not {call.what} in time: "
                    f"still waiting for {call.waiting_for}; check that "
                    "ovsdb-server and ovs-vswitchd are running")))
            else:
                left.append(call)
        return left

    def _block(self, pending: list[_Call], next_try: float) -> None:
        now = time.monotonic()
        wait = _TICK if pending else 5.0
        if self._idl is None:
            wait = min(wait, max(next_try - now, 0.0))
        for call in pending:
            wait = min(wait, max(call.deadline - now, 0.0))
        poller = ovs.poller.Poller()
        if self._idl is not None:
            self._idl.wait(poller)
        poller.fd_wait(self._wake_r, ovs.poller.POLLIN)
        poller.timer_wait(int(wait * 1000) + 1)
        poller.block()
        try:
            while os.read(self._wake_r, 512):
                pass
        except BlockingIOError:
            pass

    # Steps of each call, run in the IDL thread.

    def _transact(self, build: Callable[[ovs.db.idl.Transaction], Any],
                  what: str) -> Steps:
        """Run C{build} in a transaction until one commits; its result."""
        while True:
            txn = ovs.db.idl.Transaction(self._idl)
            try:
                result = build(txn)
            except BaseException:
                txn.abort()
                raise
            status = txn.commit()
            try:
                while status == txn.INCOMPLETE:
                    yield f"the server to commit: {what}"
                    status = txn.commit()
            finally:
                if status == txn.INCOMPLETE:
                    txn.abort()
            if status in (txn.SUCCESS, txn.UNCHANGED):
                return result
            if status not in (txn.TRY_AGAIN, txn.NOT_LOCKED):
                raise OVSDBError(
                    f"OVSDB at {self.remote} refused to {what}: "
                    f"{txn.get_error()}")
            yield f"a retry of: {what}"

    def _connect_steps(self) -> Steps:
        return None
        yield

    def _ensure_bridge_steps(self, name: str, target: str,
                             datapath_type: str, datapath_id: int) -> Steps:
        dpid = format(datapath_id, "016x")

        def build(txn: ovs.db.idl.Transaction) -> list[str]:
            bridge = self._bridge(name)
            if bridge is None:
                self._insert_bridge(txn, name, target, datapath_type, dpid)
                return ["created"]
            return self._fix_bridge(txn, bridge, target, datapath_type,
                                    dpid)

        changes = yield from self._transact(build, f"ensure bridge {name}")
        if changes == ["created"]:
            self._tell(self.log.info,
                       "created bridge {bridge} ({datapath}, controller "
                       "{target})", bridge=name, datapath=datapath_type,
                       target=target)
            return "created"
        if changes:
            self._tell(self.log.info, "corrected {fields} of bridge "
                       "{bridge}", fields=", ".join(changes), bridge=name)
            return "fixed"
        return "unchanged"

    def _insert_bridge(self, txn: ovs.db.idl.Transaction, name: str,
                       target: str, datapath_type: str, dpid: str) -> None:
        root = self._root()
        tables = self._tables()
        controller = txn.insert(tables["Controller"])
        controller.target = target
        bridge = txn.insert(tables["Bridge"])
        bridge.name = name
        bridge.fail_mode = ["secure"]
        bridge.protocols = ["OpenFlow13"]
        bridge.datapath_type = datapath_type
        bridge.other_config = {"datapath-id": dpid}
        bridge.external_ids = {OWNER_KEY: OWNER}
        bridge.controller = [controller]
        root.addvalue("bridges", bridge)

    def _fix_bridge(self, txn: ovs.db.idl.Transaction, bridge: Any,
                    target: str, datapath_type: str, dpid: str
                    ) -> list[str]:
        fixed = []
        if bridge.fail_mode != ["secure"]:
            bridge.fail_mode = ["secure"]
            fixed.append("fail_mode")
        if bridge.protocols != ["OpenFlow13"]:
            bridge.protocols = ["OpenFlow13"]
            fixed.append("protocols")
        if bridge.datapath_type != datapath_type:
            bridge.datapath_type = datapath_type
            fixed.append("datapath_type")
        if bridge.other_config.get("datapath-id") != dpid:
            bridge.setkey("other_config", "datapath-id", dpid)
            fixed.append("datapath-id")
        if [c.target for c in bridge.controller] != [target]:
            for old in bridge.controller:
                old.delete()
            controller = txn.insert(self._tables()["Controller"])
            controller.target = target
            bridge.controller = [controller]
            fixed.append("controller")
        return fixed

    def _add_endpoint_steps(self, bridge_name: str, port_name: str,
                            endpoint_id: str, tag: Optional[int]) -> Steps:
        ids = {OWNER_KEY: OWNER, ENDPOINT_KEY: endpoint_id}

        def build(txn: ovs.db.idl.Transaction) -> None:
            bridge = self._need_bridge(bridge_name)
            port = self._port(port_name)
            if port is not None:
                self._need_ours(port, bridge_name)
                if (port.external_ids.get(ENDPOINT_KEY) == endpoint_id
                        and port in bridge.ports):
                    self._set_tag(port, tag)
                    return
                self._delete_port(txn, port)
            self._insert_port(txn, bridge, port_name, "", {}, ids, tag)

        yield from self._transact(
            build, f"add port {port_name} to {bridge_name}")
        ofport = yield from self._wait_ofport(bridge_name, port_name)
        self._tell(self.log.debug,
                   "port {port} of endpoint {endpoint} on {bridge} is "
                   "ofport {ofport}", port=port_name, endpoint=endpoint_id,
                   bridge=bridge_name, ofport=ofport)
        return ofport

    def _add_tunnel_steps(self, bridge_name: str, name: str, peer: str,
                          dst_port: int) -> Steps:
        ids = {OWNER_KEY: OWNER, PEER_KEY: peer}
        options = {"remote_ip": peer, "key": "flow", "tos": "inherit",
                   "dst_port": str(dst_port)}

        def build(txn: ovs.db.idl.Transaction) -> None:
            bridge = self._need_bridge(bridge_name)
            port = self._port(name)
            if port is not None:
                self._need_ours(port, bridge_name)
                if (port.external_ids.get(PEER_KEY) == peer
                        and port in bridge.ports):
                    for iface in port.interfaces:
                        if (iface.type != "vxlan"
                                or iface.options != options):
                            iface.type = "vxlan"
                            iface.options = options
                    return
                self._delete_port(txn, port)
            self._insert_port(txn, bridge, name, "vxlan", options, ids,
                              None)

        yield from self._transact(
            build, f"add tunnel {name} to {bridge_name}")
        ofport = yield from self._wait_ofport(bridge_name, name)
        self._tell(self.log.debug,
                   "tunnel {port} to {peer} on {bridge} is ofport {ofport}",
                   port=name, peer=peer, bridge=bridge_name, ofport=ofport)
        return ofport

    def _remove_port_steps(self, bridge_name: str, name: str) -> Steps:
        def build(txn: ovs.db.idl.Transaction) -> bool:
            bridge = self._need_bridge(bridge_name)
            port = self._port(name)
            if port is None or port not in bridge.ports:
                return False
            self._need_ours(port, bridge_name)
            self._delete_port(txn, port)
            return True

        removed = yield from self._transact(
            build, f"remove port {name} from {bridge_name}")
        if removed:
            self._tell(self.log.debug, "removed port {port} from {bridge}",
                       port=name, bridge=bridge_name)
        return removed

    def _remove_tunnel_steps(self, bridge_name: str, peer_ip: str) -> Steps:
        peer = str(ipaddress.ip_address(peer_ip))

        def build(txn: ovs.db.idl.Transaction) -> list[str]:
            bridge = self._need_bridge(bridge_name)
            stale = [p for p in bridge.ports if self._is_ours(p)
                     and p.external_ids.get(PEER_KEY) == peer]
            names = [p.name for p in stale]
            for port in stale:
                self._delete_port(txn, port)
            return names

        removed = yield from self._transact(
            build, f"remove the tunnel to {peer} from {bridge_name}")
        for name in removed:
            self._tell(self.log.debug, "removed tunnel {port} to {peer}",
                       port=name, peer=peer)
        return bool(removed)

    def _plug_steps(self, bridge: str, endpoint_id: str, mac: Optional[str],
                    mtu: Optional[int], tag: Optional[int],
                    tx_checksum_off: bool) -> Steps:
        ovs_name, container_name = veth.port_names(endpoint_id)
        created = False
        if not veth.link_exists(ovs_name, netns=self.netns):
            if mtu is None:
                mtu = veth.default_endpoint_mtu(netns=self.netns)
            veth.create_veth(ovs_name, container_name, mtu, mac,
                             tx_checksum_off, netns=self.netns)
            created = True
        try:
            ofport = yield from self._add_endpoint_steps(
                bridge, ovs_name, endpoint_id, tag)
        except BaseException:
            if created:
                veth.delete_veth(ovs_name, netns=self.netns)
            raise
        return PluggedEndpoint(endpoint_id=endpoint_id, ofport=ofport,
                               ovs_name=ovs_name,
                               container_name=container_name)

    def _unplug_steps(self, bridge: str, endpoint_id: str) -> Steps:
        ovs_name, _ = veth.port_names(endpoint_id)
        removed = yield from self._remove_port_steps(bridge, ovs_name)
        return veth.delete_veth(ovs_name, netns=self.netns) or removed

    def _reconcile_steps(self, bridge_name: str, keep_endpoints: set[str],
                         keep_peers: set[str]) -> Steps:
        def stale(port: Any) -> bool:
            ids = port.external_ids
            if ENDPOINT_KEY in ids:
                return ids[ENDPOINT_KEY] not in keep_endpoints
            if PEER_KEY in ids:
                return ids[PEER_KEY] not in keep_peers
            return False

        def build(txn: ovs.db.idl.Transaction) -> list[tuple[str, bool]]:
            bridge = self._need_bridge(bridge_name)
            removed = []
            for port in bridge.ports:
                if self._is_ours(port) and stale(port):
                    removed.append((port.name,
                                    ENDPOINT_KEY in port.external_ids))
                    self._delete_port(txn, port)
            return removed

        removed = yield from self._transact(
            build, f"remove stale ports from {bridge_name}")
        for name, is_endpoint in removed:
            if is_endpoint:
                try:
                    veth.delete_veth(name, netns=self.netns)
                except veth.LinkError as e:
                    self._tell(self.log.warn, "{error}", error=e)
        names = sorted(name for name, _ in removed)
        if names:
            self._tell(self.log.info,
                       "removed stale ports {ports} from {bridge}",
                       ports=", ".join(names), bridge=bridge_name)
        return names

    def _wait_ofport(self, bridge_name: str, name: str) -> Steps:
        while True:
            iface = self._interface(name)
            if iface is None:
                raise OVSDBError(
                    f"interface {name} vanished from {bridge_name} while "
                    "waiting for its OpenFlow port; another client removed "
                    "it")
            if iface.ofport and iface.ofport[0] > 0:
                return iface.ofport[0]
            if iface.ofport and iface.ofport[0] == -1 and iface.error:
                raise OVSDBError(
                    f"ovs-vswitchd could not add {name} to {bridge_name}: "
                    f"{iface.error[0]}; check that the interface exists "
                    "and the bridge's datapath type suits it")
            yield f"ovs-vswitchd to give {name} an OpenFlow port"

    # Reading the replica, in the IDL thread.

    def _tables(self) -> dict[str, Any]:
        assert self._idl is not None
        return self._idl.tables

    def _rows(self, table: str) -> Iterable[Any]:
        return self._tables()[table].rows.values()

    def _root(self) -> Any:
        for row in self._rows("Open_vSwitch"):
            return row
        raise OVSDBError(
            f"OVSDB at {self.remote} has no Open_vSwitch row; initialise "
            "the database (ovs-vsctl init)")

    def _bridge(self, name: str) -> Any:
        for row in self._rows("Bridge"):
            if row.name == name:
                return row
        return None

    def _need_bridge(self, name: str) -> Any:
        row = self._bridge(name)
        if row is None:
            raise NotFound(
                f"bridge {name} does not exist; create it with "
                "ensure_bridge first")
        return row

    def _port(self, name: str) -> Any:
        for row in self._rows("Port"):
            if row.name == name:
                return row
        return None

    def _interface(self, name: str) -> Any:
        for row in self._rows("Interface"):
            if row.name == name:
                return row
        return None

    @staticmethod
    def _is_ours(port: Any) -> bool:
        return port.external_ids.get(OWNER_KEY) == OWNER

    def _need_ours(self, port: Any, bridge_name: str) -> None:
        if not self._is_ours(port):
            raise Conflict(
                f"port {port.name} exists and was not made by contivd; "
                "remove it (ovs-vsctl del-port "
                f"{port.name}) or rename it")

    def _records(self, bridge_name: str,
                 ours_only: bool) -> list[PortRecord]:
        bridge = self._need_bridge(bridge_name)
        records = []
        for port in bridge.ports:
            if port.name == bridge_name:
                continue
            ours = self._is_ours(port)
            if ours_only and not ours:
                continue
            ids = dict(port.external_ids)
            kind = "foreign"
            if ours:
                kind = "endpoint" if ENDPOINT_KEY in ids else "tunnel"
            ofports = [i.ofport[0] for i in port.interfaces
                       if i.ofport and i.ofport[0] > 0]
            records.append(PortRecord(
                name=port.name, kind=kind,
                ofport=ofports[0] if ofports else None,
                endpoint_id=ids.get(ENDPOINT_KEY) if ours else None,
                peer=ids.get(PEER_KEY) if ours else None,
                tag=port.tag[0] if port.tag else None,
                external_ids=ids))
        return sorted(records, key=lambda r: r.name)

    # Writing, inside a transaction being built.

    def _insert_port(self, txn: ovs.db.idl.Transaction, bridge: Any,
                     name: str, kind: str, options: dict[str, str],
                     ids: dict[str, str], tag: Optional[int]) -> None:
        tables = self._tables()
        iface = txn.insert(tables["Interface"])
        iface.name = name
        iface.type = kind
        iface.options = options
        iface.external_ids = ids
        port = txn.insert(tables["Port"])
        port.name = name
        port.interfaces = [iface]
        port.external_ids = ids
        if tag is not None:
            port.tag = [tag]
            port.vlan_mode = ["access"]
        bridge.addvalue("ports", port)

    @staticmethod
    def _set_tag(port: Any, tag: Optional[int]) -> None:
        wanted = [] if tag is None else [tag]
        if port.tag != wanted:
            port.tag = wanted
            port.vlan_mode = [] if tag is None else ["access"]

    def _delete_port(self, txn: ovs.db.idl.Transaction, port: Any) -> None:
        for bridge in self._rows("Bridge"):
            if port in bridge.ports:
                bridge.delvalue("ports", port)
        for iface in port.interfaces:
            iface.delete()
        port.delete()
