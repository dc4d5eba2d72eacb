"""
One OpenFlow 1.3 connection from a switch: framing, handshake, echo
liveness, batches closed by a barrier, dumps, packet-in and packet-out.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable
from typing import Any

import attr
from os_ken.ofproto import ofproto_parser
from os_ken.ofproto import ofproto_v1_3 as ofp
from os_ken.ofproto import ofproto_v1_3_parser as parser
from twisted.internet import defer, error, task
from twisted.internet.interfaces import IReactorTime, ITCPTransport
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from contivd.errors import ContivError
from contivd.openflow import flows

OF13 = ofp.OFP_VERSION
HEADER = struct.Struct("!BBHI")

_ERROR_CODE_PREFIXES = {
    ofp.OFPET_HELLO_FAILED: "OFPHFC_", ofp.OFPET_BAD_REQUEST: "OFPBRC_",
    ofp.OFPET_BAD_ACTION: "OFPBAC_", ofp.OFPET_BAD_INSTRUCTION: "OFPBIC_",
    ofp.OFPET_BAD_MATCH: "OFPBMC_", ofp.OFPET_FLOW_MOD_FAILED: "OFPFMFC_",
    ofp.OFPET_GROUP_MOD_FAILED: "OFPGMFC_",
    ofp.OFPET_PORT_MOD_FAILED: "OFPPMFC_",
    ofp.OFPET_TABLE_MOD_FAILED: "OFPTMFC_",
    ofp.OFPET_QUEUE_OP_FAILED: "OFPQOFC_",
    ofp.OFPET_SWITCH_CONFIG_FAILED: "OFPSCFC_",
    ofp.OFPET_ROLE_REQUEST_FAILED: "OFPRRFC_",
    ofp.OFPET_METER_MOD_FAILED: "OFPMMFC_",
    ofp.OFPET_TABLE_FEATURES_FAILED: "OFPTFFC_",
}


def _names(prefix: str) -> dict[int, str]:
    return {getattr(ofp, name): name for name in dir(ofp)
            if name.startswith(prefix)}


_ERROR_TYPES = _names("OFPET_")
_ERROR_CODES = {t: _names(p) for t, p in _ERROR_CODE_PREFIXES.items()}


def error_reason(error_type: int, code: int) -> str:
    """The names of an error type and code, like C{OFPET_BAD_ACTION/...}."""
    type_name = _ERROR_TYPES.get(error_type, f"type {error_type}")
    code_name = _ERROR_CODES.get(error_type, {}).get(code, f"code {code}")
    return f"{type_name}/{code_name}"


class Codec:
    """
    What os-ken's message classes need of a datapath to encode and
    decode: the OpenFlow 1.3 constants and parser, nothing else.
    """

    ofproto = ofp
    ofproto_parser = parser


CODEC = Codec()


class OpenFlowError(ContivError):
    """The switch refused a request; the message names the request."""

    def __init__(self, reason: str, request: str) -> None:
        super().__init__(f"switch refused {request}: {reason}")
        self.reason = reason
        self.request = request


@attr.s(auto_attribs=True)
class Counters:
    """Messages and errors on a connection, for the status page."""

    sent: int = 0
    received: int = 0
    errors: int = 0
    echo_requests_sent: int = 0
    batches: int = 0


@attr.s(auto_attribs=True)
class _Batch:
    xids: list[int]
    done: defer.Deferred
    errors: list[OpenFlowError] = attr.ib(factory=list)


@attr.s(auto_attribs=True)
class _Dump:
    done: defer.Deferred
    body: list = attr.ib(factory=list)


def encode_hello(xid: int, versions: Iterable[int] = (OF13,)) -> bytes:
    """A HELLO with a version bitmap element listing C{versions}."""
    bitmap = 0
    for version in versions:
        bitmap |= 1 << version
    element = struct.pack("!HHI", ofp.OFPHET_VERSIONBITMAP, 8, bitmap)
    return HEADER.pack(max(versions), ofp.OFPT_HELLO, 16, xid) + element


def hello_versions(frame: bytes) -> set[int]:
    """
    The versions that a HELLO from any OpenFlow version offers: its
    bitmap when it has one, else every version up to its header's.
    """
    offset = HEADER.size
    while offset + 4 <= len(frame):
        kind, length = struct.unpack_from("!HH", frame, offset)
        if length < 4:
            break
        if kind == ofp.OFPHET_VERSIONBITMAP:
            versions: set[int] = set()
            for i in range((length - 4) // 4):
                (word,) = struct.unpack_from("!I", frame, offset + 4 + 4 * i)
                versions.update(32 * i + bit for bit in range(32)
                                if word >> bit & 1)
            return versions
        offset += (length + 7) // 8 * 8
    return set(range(1, frame[0] + 1))


#: Why a connection ended: Twisted passes a Failure, callers may pass
#: an exception or its class.
_Reason = Failure | BaseException | type[BaseException]
ConnectionHook = Callable[["OpenFlowProtocol"], None]
PacketInHook = Callable[["OpenFlowProtocol", Any], None]


class OpenFlowProtocol(Protocol):
    """
    The controller's end of one switch connection, speaking OpenFlow 1.3
    only. L{on_up} is called once the datapath id is known, L{on_down}
    when the connection is lost (before its pending requests fail).
    """

    log = Logger()
    #: Set by C{makeConnection}; switches connect over TCP (or a Unix
    #: socket, which can be aborted the same way).
    transport: ITCPTransport | None

    def __init__(self, clock: IReactorTime, echo_interval: float = 5.0,
                 liveness_timeout: float = 15.0,
                 on_up: ConnectionHook | None = None,
                 on_down: ConnectionHook | None = None,
                 on_packet_in: PacketInHook | None = None) -> None:
        self.clock = clock
        self.echo_interval = echo_interval
        self.liveness_timeout = liveness_timeout
        self.on_up = on_up
        self.on_down = on_down
        self.on_packet_in = on_packet_in
        self.datapath_id: int | None = None
        self.state = "new"
        self.counters = Counters()
        self._buffer = b""
        self._next_xid = 1
        self._last_heard = 0.0
        self._ticker: task.LoopingCall | None = None
        self._requests: dict[int, tuple[Any, _Batch | None]] = {}
        self._barriers: dict[int, _Batch] = {}
        self._dumps: dict[int, _Dump] = {}

    @property
    def is_up(self) -> bool:
        """Whether the handshake is done and the connection still open."""
        return self.state == "up"

    def connectionMade(self) -> None:
        self.state = "hello"
        self._last_heard = self.clock.seconds()
        transport = self._connected()
        self.log.info("switch connected from {peer}",
                      peer=str(transport.getPeer()))
        transport.write(encode_hello(self._xid()))
        self.counters.sent += 1
        self._ticker = task.LoopingCall(self._tick)
        self._ticker.clock = self.clock
        self._ticker.start(self.echo_interval, now=False)

    def connectionLost(self, reason: _Reason = error.ConnectionDone) -> None:
        self.state = "closed"
        if self._ticker is not None and self._ticker.running:
            self._ticker.stop()
        self.log.info("switch {dpid} disconnected: {reason}",
                      dpid=self._dpid_text(),
                      reason=reason.getErrorMessage()
                      if isinstance(reason, Failure) else str(reason))
        if self.on_down is not None:
            self.on_down(self)
        self._fail_pending(reason)

    def dataReceived(self, data: bytes) -> None:
        self._buffer += data
        while len(self._buffer) >= HEADER.size:
            version, msg_type, length, xid = HEADER.unpack_from(self._buffer)
            if length < HEADER.size:
                self.log.error("switch {dpid} sent a frame of length "
                               "{length}; closing", dpid=self._dpid_text(),
                               length=length)
                self._drop()
                return
            if len(self._buffer) < length:
                return
            frame, self._buffer = (self._buffer[:length],
                                   self._buffer[length:])
            self._last_heard = self.clock.seconds()
            self.counters.received += 1
            self._frame_received(version, msg_type, xid, frame)
            if self.state == "closed":
                return

    def send(self, msg: Any) -> int:
        """Encode and send one os-ken message; its xid."""
        if self.state == "closed":
            raise error.ConnectionClosed("the switch is not connected")
        if msg.xid is None:
            msg.set_xid(self._xid())
        msg.serialize()
        self._connected().write(bytes(msg.buf))
        self.counters.sent += 1
        return msg.xid

    def send_batch(self, msgs: Iterable[Any]) -> defer.Deferred:
        """
        Send C{msgs} and a BARRIER after them.

        @return: a L{Deferred} firing with the list of L{OpenFlowError}s
            that the switch answered for messages of the batch (empty when
            all were taken) once the barrier reply arrives, or failing when
            the connection is lost first.
        """
        if not self.is_up:
            return defer.fail(error.ConnectionClosed(
                "the switch is not connected"))
        batch = _Batch([], defer.Deferred())
        for msg in msgs:
            xid = self.send(msg)
            batch.xids.append(xid)
            self._requests[xid] = (msg, batch)
        barrier_xid = self.send(parser.OFPBarrierRequest(CODEC))
        self._barriers[barrier_xid] = batch
        self.counters.batches += 1
        return batch.done

    def dump_flows(self, cookie: int = 0, cookie_mask: int = 0,
                   table_id: int = ofp.OFPTT_ALL) -> defer.Deferred:
        """
        Read the switch's flows whose cookie matches under C{cookie_mask}.

        @return: a L{Deferred} firing with a list of C{OFPFlowStats}.
        """
        return self._dump(parser.OFPFlowStatsRequest(
            CODEC, 0, table_id, ofp.OFPP_ANY, ofp.OFPG_ANY, cookie,
            cookie_mask, parser.OFPMatch()))

    def dump_groups(self) -> defer.Deferred:
        """
        Read every group of the switch.

        @return: a L{Deferred} firing with a list of C{OFPGroupDescStats}.
        """
        return self._dump(parser.OFPGroupDescStatsRequest(CODEC, 0))

    def dump_ports(self, port_no: int = ofp.OFPP_ANY) -> defer.Deferred:
        """
        Read the packet and byte counters of C{port_no} (every port by
        default).

        @return: a L{Deferred} firing with a list of C{OFPPortStats}.
        """
        return self._dump(parser.OFPPortStatsRequest(CODEC, 0, port_no))

    def packet_out(self, data: bytes, actions: Iterable[flows.Action],
                   in_port: int = ofp.OFPP_CONTROLLER) -> int:
        """Send C{data} through C{actions} (see L{flows}); the xid."""
        msg = parser.OFPPacketOut(
            CODEC, buffer_id=ofp.OFP_NO_BUFFER, in_port=in_port,
            actions=[flows.action_to_wire(a) for a in actions], data=data)
        xid = self.send(msg)
        self._requests[xid] = (msg, None)
        return xid

    def close(self) -> None:
        """Drop the connection (the switch will connect again)."""
        self._drop()

    def _xid(self) -> int:
        xid = self._next_xid
        self._next_xid = xid % 0xFFFFFFFF + 1
        return xid

    def _dpid_text(self) -> str:
        if self.datapath_id is None:
            return "(handshake)"
        return f"{self.datapath_id:016x}"

    def _connected(self) -> ITCPTransport:
        """The transport, which C{makeConnection} set before any I/O."""
        assert self.transport is not None, "the switch is not connected"
        return self.transport

    def _drop(self) -> None:
        if self.transport is not None and self.state != "closed":
            self.transport.abortConnection()

    def _tick(self) -> None:
        silent = self.clock.seconds() - self._last_heard
        if silent >= self.liveness_timeout:
            self.log.warn("switch {dpid} silent for {silent:.1f} s; "
                          "dropping the connection",
                          dpid=self._dpid_text(), silent=silent)
            self._drop()
            return
        if self.state == "up":
            self.send(parser.OFPEchoRequest(CODEC, data=b""))
            self.counters.echo_requests_sent += 1

    def _frame_received(self, version: int, msg_type: int, xid: int,
                        frame: bytes) -> None:
        if self.state == "hello":
            self._hello_received(version, msg_type, frame)
            return
        if version != OF13:
            self.log.error("switch {dpid} sent version {version} after "
                           "agreeing on 1.3; closing",
                           dpid=self._dpid_text(), version=version)
            self._drop()
            return
        msg = ofproto_parser.msg(CODEC, version, msg_type, len(frame), xid,
                                 frame)
        if msg is None:
            return
        handler = self._handlers.get(type(msg))
        if handler is not None:
            handler(self, msg)
        else:
            self.log.debug("switch {dpid} sent {kind}", dpid=self._dpid_text(),
                           kind=type(msg).__name__)

    def _hello_received(self, version: int, msg_type: int,
                        frame: bytes) -> None:
        if msg_type != ofp.OFPT_HELLO:
            self.log.error("switch sent message type {kind} before HELLO; "
                           "closing", kind=msg_type)
            self._drop()
            return
        offered = hello_versions(frame)
        if OF13 not in offered:
            self.log.error(
                "switch offers OpenFlow versions {versions}, not 1.3 "
                "(wire 4); refusing it (set protocols=OpenFlow13 on the "
                "bridge)", versions=sorted(offered))
            reason = b"contivd speaks OpenFlow 1.3 only"
            transport = self._connected()
            transport.write(HEADER.pack(
                OF13, ofp.OFPT_ERROR, HEADER.size + 4 + len(reason),
                self._xid()) + struct.pack(
                    "!HH", ofp.OFPET_HELLO_FAILED, ofp.OFPHFC_INCOMPATIBLE)
                + reason)
            transport.loseConnection()
            self.state = "refused"
            return
        self.state = "features"
        self.send(parser.OFPFeaturesRequest(CODEC))

    def _features_reply(self, msg: Any) -> None:
        if self.state != "features":
            return
        self.datapath_id = msg.datapath_id
        self.state = "up"
        self.log.info("switch {dpid} is up ({tables} tables)",
                      dpid=self._dpid_text(), tables=msg.n_tables)
        if self.on_up is not None:
            self.on_up(self)

    def _echo_request(self, msg: Any) -> None:
        reply = parser.OFPEchoReply(CODEC, data=msg.data)
        reply.set_xid(msg.xid)
        self.send(reply)

    def _echo_reply(self, msg: Any) -> None:
        self.log.debug("switch {dpid} answered an echo",
                       dpid=self._dpid_text())

    def _error(self, msg: Any) -> None:
        self.counters.errors += 1
        if msg.type == ofp.OFPET_EXPERIMENTER:
            reason = (f"experimenter {msg.experimenter:#x} "
                      f"type {msg.exp_type}")
        else:
            reason = error_reason(msg.type, msg.code)
        request, batch = self._requests.get(msg.xid, (None, None))
        if request is not None:
            described = str(request)
        elif msg.xid in self._dumps:
            described = "a dump request"
        else:
            described = f"unknown request xid {msg.xid}"
        self.log.error("switch {dpid} refused {request}: {reason}",
                       dpid=self._dpid_text(), request=described,
                       reason=reason, xid=msg.xid)
        problem = OpenFlowError(reason, described)
        if batch is not None:
            batch.errors.append(problem)
        dump = self._dumps.pop(msg.xid, None)
        if dump is not None:
            dump.done.errback(problem)

    def _barrier_reply(self, msg: Any) -> None:
        batch = self._barriers.pop(msg.xid, None)
        if batch is None:
            return
        for xid in batch.xids:
            self._requests.pop(xid, None)
        batch.done.callback(batch.errors)

    def _multipart_reply(self, msg: Any) -> None:
        dump = self._dumps.get(msg.xid)
        if dump is None:
            return
        dump.body.extend(msg.body)
        if not msg.flags & ofp.OFPMPF_REPLY_MORE:
            del self._dumps[msg.xid]
            dump.done.callback(dump.body)

    def _packet_in(self, msg: Any) -> None:
        if self.on_packet_in is not None:
            self.on_packet_in(self, msg)

    def _dump(self, request: Any) -> defer.Deferred:
        if not self.is_up:
            return defer.fail(error.ConnectionClosed(
                "the switch is not connected"))
        dump = _Dump(defer.Deferred())
        self._dumps[self.send(request)] = dump
        return dump.done

    def _fail_pending(self, reason: Any) -> None:
        failure = reason if isinstance(reason, Failure) else Failure(reason)
        waiting = [b.done for b in self._barriers.values()]
        waiting += [d.done for d in self._dumps.values()]
        self._barriers.clear()
        self._dumps.clear()
        self._requests.clear()
        for d in waiting:
            d.errback(failure)

    _handlers = {
        parser.OFPSwitchFeatures: _features_reply,
        parser.OFPEchoRequest: _echo_request,
        parser.OFPEchoReply: _echo_reply,
        parser.OFPErrorMsg: _error,
        parser.OFPBarrierReply: _barrier_reply,
        parser.OFPFlowStatsReply: _multipart_reply,
        parser.OFPGroupDescStatsReply: _multipart_reply,
        parser.OFPPortStatsReply: _multipart_reply,
        parser.OFPPacketIn: _packet_in,
    }
