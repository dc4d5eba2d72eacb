"""Tests for L{contivd.openflow.protocol} over a StringTransport."""

from __future__ import annotations

import struct

import attr
from os_ken.ofproto import ofproto_parser
from os_ken.ofproto import ofproto_v1_3 as ofp
from os_ken.ofproto import ofproto_v1_3_parser as parser
from twisted.internet import error
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import Logger
from twisted.trial.unittest import SynchronousTestCase

from contivd.openflow import flows as f
from contivd.openflow.flows import Flow
from contivd.openflow.protocol import (
    CODEC,
    HEADER,
    OpenFlowError,
    OpenFlowProtocol,
    encode_hello,
    hello_versions,
)

DPID = 0xC0A71001


def frame(msg_type: int, xid: int, body: bytes = b"",
          version: int = ofp.OFP_VERSION) -> bytes:
    """A raw OpenFlow message."""
    return HEADER.pack(version, msg_type, HEADER.size + len(body),
                       xid) + body


def features_reply(xid: int, dpid: int = DPID) -> bytes:
    """A FEATURES_REPLY for datapath C{dpid}."""
    return frame(ofp.OFPT_FEATURES_REPLY, xid,
                 struct.pack("!QIBB2xII", dpid, 0, 254, 0, 0, 0))


#: Message types that os-ken can decode (it has no parser for the
#: other requests a controller sends).
DECODABLE = {ofp.OFPT_HELLO, ofp.OFPT_ERROR, ofp.OFPT_ECHO_REQUEST,
             ofp.OFPT_ECHO_REPLY, ofp.OFPT_FLOW_MOD}


@attr.s(auto_attribs=True)
class Sent:
    """One message we wrote: its type, xid, bytes, and os-ken's decoding."""

    type: int
    xid: int
    data: bytes
    msg: object = None


def sent(transport: StringTransport) -> list[Sent]:
    """The messages written to C{transport}; then clear it."""
    data, messages = transport.value(), []
    transport.clear()
    while data:
        version, msg_type, length, xid = HEADER.unpack_from(data)
        one = Sent(msg_type, xid, data[:length])
        if msg_type in DECODABLE:
            one.msg = ofproto_parser.msg(CODEC, version, msg_type, length,
                                         xid, one.data)
        messages.append(one)
        data = data[length:]
    return messages


class ProtocolTestCase(SynchronousTestCase):
    """A protocol on a StringTransport with a Clock; events captured."""

    def setUp(self):
        self.clock = Clock()
        self.up, self.down, self.events = [], [], []
        self.proto = OpenFlowProtocol(
            self.clock, echo_interval=5, liveness_timeout=15,
            on_up=self.up.append, on_down=self.down.append)
        self.proto.log = Logger(observer=self.events.append)
        self.transport = StringTransport()
        self.proto.makeConnection(self.transport)

    def handshake(self):
        """Complete HELLO and FEATURES; the messages sent meanwhile."""
        self.proto.dataReceived(encode_hello(1))
        (request,) = [m for m in sent(self.transport)
                      if m.type == ofp.OFPT_FEATURES_REQUEST]
        self.proto.dataReceived(features_reply(request.xid))

    def lose(self):
        self.proto.connectionLost(error.ConnectionLost())


class HandshakeTests(ProtocolTestCase):
    """HELLO, version negotiation and FEATURES."""

    def test_hello_offers_only_1_3(self):
        """Our HELLO carries a version bitmap with 1.3 alone."""
        (hello,) = [m.msg for m in sent(self.transport)]
        self.assertIsInstance(hello, parser.OFPHello)
        self.assertEqual(hello.elements[0].versions, [ofp.OFP_VERSION])

    def test_handshake(self):
        """After HELLO and FEATURES_REPLY the datapath id is known and
        on_up is called once."""
        sent(self.transport)
        self.proto.dataReceived(encode_hello(1))
        (request,) = sent(self.transport)
        self.assertEqual(request.type, ofp.OFPT_FEATURES_REQUEST)
        self.assertEqual(self.up, [])
        self.proto.dataReceived(features_reply(request.xid))
        self.assertEqual(self.up, [self.proto])
        self.assertEqual(self.proto.datapath_id, DPID)
        self.assertTrue(self.proto.is_up)

    def test_newer_switch_with_bitmap(self):
        """A HELLO of version 6 whose bitmap includes 1.3 negotiates 1.3."""
        sent(self.transport)
        self.proto.dataReceived(encode_hello(1, versions=(1, 4, 6)))
        (request,) = sent(self.transport)
        self.assertEqual(request.type, ofp.OFPT_FEATURES_REQUEST)

    def test_negotiation_fails(self):
        """A switch without 1.3 gets a HELLO_FAILED error and is dropped."""
        sent(self.transport)
        self.proto.dataReceived(encode_hello(1, versions=(1, 5)))
        data = self.transport.value()
        version, msg_type, _, _ = HEADER.unpack_from(data)
        self.assertEqual(msg_type, ofp.OFPT_ERROR)
        self.assertEqual(struct.unpack_from("!HH", data, 8),
                         (ofp.OFPET_HELLO_FAILED, ofp.OFPHFC_INCOMPATIBLE))
        self.assertTrue(self.transport.disconnecting)
        self.assertEqual(self.up, [])

    def test_hello_without_bitmap(self):
        """A 1.0 HELLO without bitmap offers versions up to 1.0 only."""
        self.assertEqual(hello_versions(frame(ofp.OFPT_HELLO, 1,
                                              version=1)), {1})
        self.assertEqual(hello_versions(frame(ofp.OFPT_HELLO, 1,
                                              version=5)), {1, 2, 3, 4, 5})

    def test_split_frames(self):
        """Messages split across reads, or several in one read, are
        framed by their headers."""
        sent(self.transport)
        data = encode_hello(1) + features_reply(2)
        for i in range(len(data)):
            self.proto.dataReceived(data[i:i + 1])
        self.assertEqual(self.proto.datapath_id, DPID)


class EchoTests(ProtocolTestCase):
    """Echo in both directions and the liveness timeout."""

    def setUp(self):
        super().setUp()
        self.handshake()
        sent(self.transport)

    def test_echo_reply(self):
        """An ECHO_REQUEST is answered with its xid and data."""
        self.proto.dataReceived(frame(ofp.OFPT_ECHO_REQUEST, 77, b"ping"))
        (reply,) = [m.msg for m in sent(self.transport)]
        self.assertIsInstance(reply, parser.OFPEchoReply)
        self.assertEqual((reply.xid, reply.data), (77, b"ping"))

    def test_echo_requests(self):
        """An ECHO_REQUEST goes out every echo interval."""
        self.clock.advance(5)
        (request,) = sent(self.transport)
        self.assertIsInstance(request.msg, parser.OFPEchoRequest)
        self.proto.dataReceived(frame(ofp.OFPT_ECHO_REPLY, request.xid))
        self.clock.advance(5)
        self.assertEqual(len(sent(self.transport)), 1)

    def test_liveness_timeout(self):
        """A switch silent for the liveness timeout is dropped."""
        self.clock.advance(10)
        self.assertFalse(self.transport.disconnecting)
        self.clock.advance(5)
        self.assertTrue(self.transport.disconnecting)

    def test_answering_switch_stays(self):
        """A switch that answers every echo is never dropped."""
        for _ in range(10):
            self.clock.advance(5)
            for request in sent(self.transport):
                self.proto.dataReceived(
                    frame(ofp.OFPT_ECHO_REPLY, request.xid))
        self.assertFalse(self.transport.disconnecting)

    def test_handshake_timeout(self):
        """A switch that never finishes the handshake is dropped too."""
        proto = OpenFlowProtocol(self.clock, 5, 15)
        transport = StringTransport()
        proto.makeConnection(transport)
        self.clock.advance(15)
        self.assertTrue(transport.disconnecting)


class BatchTests(ProtocolTestCase):
    """Batches, their barrier, and errors about their requests."""

    def setUp(self):
        super().setUp()
        self.handshake()
        sent(self.transport)
        self.flow = Flow.make(9, 5, {"in_port": 3},
                              [f.apply(f.output(4))], 0xC3)

    def test_barrier_completes_batch(self):
        """send_batch ends with a BARRIER and fires when it is answered."""
        d = self.proto.send_batch([self.flow.to_message(CODEC)])
        flow_mod, barrier = sent(self.transport)
        self.assertIsInstance(flow_mod.msg, parser.OFPFlowMod)
        self.assertEqual(barrier.type, ofp.OFPT_BARRIER_REQUEST)
        self.assertNoResult(d)
        self.proto.dataReceived(frame(ofp.OFPT_BARRIER_REPLY, flow_mod.xid))
        self.assertNoResult(d)
        self.proto.dataReceived(frame(ofp.OFPT_BARRIER_REPLY, barrier.xid))
        self.assertEqual(self.successResultOf(d), [])

    def test_error_logged_with_request(self):
        """An ERROR is logged with its reason and the decoded request it
        refers to, and reported by the batch."""
        d = self.proto.send_batch([self.flow.to_message(CODEC)])
        flow_mod, barrier = sent(self.transport)
        self.proto.dataReceived(frame(
            ofp.OFPT_ERROR, flow_mod.xid,
            struct.pack("!HH", ofp.OFPET_BAD_ACTION,
                        ofp.OFPBAC_BAD_OUT_PORT)))
        (event,) = [e for e in self.events if "reason" in e]
        self.assertEqual(event["reason"],
                         "OFPET_BAD_ACTION/OFPBAC_BAD_OUT_PORT")
        self.assertIn("OFPFlowMod", event["request"])
        self.assertIn("in_port': 3", event["request"])
        self.proto.dataReceived(frame(ofp.OFPT_BARRIER_REPLY, barrier.xid))
        (problem,) = self.successResultOf(d)
        self.assertIsInstance(problem, OpenFlowError)
        self.assertEqual(problem.reason,
                         "OFPET_BAD_ACTION/OFPBAC_BAD_OUT_PORT")
        self.assertEqual(self.proto.counters.errors, 1)

    def test_connection_lost_fails_batch(self):
        """A batch whose barrier reply never came fails on disconnect,
        after on_down has been called."""
        d = self.proto.send_batch([self.flow.to_message(CODEC)])
        self.lose()
        self.failureResultOf(d, error.ConnectionLost)
        self.assertEqual(self.down, [self.proto])

    def test_not_connected(self):
        """A batch before the handshake fails at once."""
        proto = OpenFlowProtocol(self.clock)
        proto.makeConnection(StringTransport())
        self.failureResultOf(proto.send_batch([]), error.ConnectionClosed)


class DumpTests(ProtocolTestCase):
    """Multipart dumps."""

    def setUp(self):
        super().setUp()
        self.handshake()
        sent(self.transport)

    def group_reply(self, xid, group_ids, more):
        body = struct.pack("!HH4x", ofp.OFPMP_GROUP_DESC,
                           ofp.OFPMPF_REPLY_MORE if more else 0)
        for gid in group_ids:
            body += struct.pack("!HBxI", 8, ofp.OFPGT_ALL, gid)
        return frame(ofp.OFPT_MULTIPART_REPLY, xid, body)

    def test_dump_groups_in_parts(self):
        """A dump collects every part until the last one."""
        d = self.proto.dump_groups()
        (request,) = sent(self.transport)
        self.assertEqual(struct.unpack_from("!H", request.data, 8),
                         (ofp.OFPMP_GROUP_DESC,))
        self.proto.dataReceived(self.group_reply(request.xid, [1, 2], True))
        self.assertNoResult(d)
        self.proto.dataReceived(self.group_reply(request.xid, [3], False))
        self.assertEqual([g.group_id for g in self.successResultOf(d)],
                         [1, 2, 3])

    def test_dump_flows_by_cookie(self):
        """A flow dump asks for the given cookie and mask."""
        self.proto.dump_flows(cookie=0xC0 << 56, cookie_mask=0xF0 << 56)
        (request,) = sent(self.transport)
        kind, = struct.unpack_from("!H", request.data, 8)
        self.assertEqual(kind, ofp.OFPMP_FLOW)
        self.assertEqual(struct.unpack_from("!QQ", request.data, 32),
                         (0xC0 << 56, 0xF0 << 56))
