"""Tests for the VXLAN bridge-mode renderer and the flow values."""

from __future__ import annotations

import struct

from os_ken.ofproto import ofproto_parser
from os_ken.ofproto import ofproto_v1_3 as ofp
from os_ken.ofproto import ofproto_v1_3_parser as parser
from twisted.trial.unittest import SynchronousTestCase

from contivd.errors import ValidationError
from contivd.openflow import flows as f
from contivd.openflow import pipeline as p
from contivd.openflow.desired import (
    DesiredState,
    LocalEndpoint,
    Network,
    RemoteEndpoint,
    Tunnel,
)
from contivd.openflow.flows import Flow, Group, diff_flows, diff_groups
from contivd.openflow.protocol import CODEC

NET = Network("blue", vni=5001, local_vlan=3)
VID = 3 | 0x1000
EP_A = LocalEndpoint("a", "blue", 1, "02:02:0A:01:00:01", "10.1.0.1")
EP_B = LocalEndpoint("b", "blue", 2, "02:02:0a:01:00:02", "10.1.0.2")
REMOTE = RemoteEndpoint("r", "blue", "02:02:0a:01:00:09", "10.1.0.9",
                        "192.0.2.2")
TUNNEL = Tunnel("192.0.2.2", 10)


def owned_by(rendering, kind, object_id):
    """The flows of C{rendering} whose cookie names that object."""
    c = p.cookie(kind, object_id)
    return {fl for fl in rendering.flows if fl.cookie == c}


def wire_round_trip(flow: Flow) -> Flow:
    """C{flow} encoded as a FLOW_MOD, decoded by os-ken, read back."""
    msg = flow.to_message(CODEC)
    msg.set_xid(1)
    msg.serialize()
    decoded = ofproto_parser.msg(CODEC, ofp.OFP_VERSION, ofp.OFPT_FLOW_MOD,
                                 len(msg.buf), 1, bytes(msg.buf))
    return Flow.from_stats(decoded)


def group_round_trip(group: Group) -> Group:
    """C{group} encoded as a GROUP_MOD, read back as group-desc stats."""
    msg = group.to_message(CODEC, ofp.OFPGC_ADD)
    msg.set_xid(1)
    msg.serialize()
    buckets = bytes(msg.buf[16:])
    desc = struct.pack("!HBxI", 8 + len(buckets), ofp.OFPGT_ALL,
                       group.group_id) + buckets
    return Group.from_stats(parser.OFPGroupDescStats.parser(desc, 0))


class RenderTests(SynchronousTestCase):
    """L{p.render} output for given states."""

    def test_base_flows_alone(self):
        """An empty state renders the table chain and the default drops,
        all with the base cookie and no group."""
        rendering = p.render(DesiredState())
        self.assertEqual(len(rendering.flows), 8)
        self.assertEqual(rendering.groups, {})
        self.assertEqual({fl.cookie for fl in rendering.flows},
                         {p.cookie(p.KIND_BASE, "vxlan-bridge")})
        misses = {fl.table: fl.instructions for fl in rendering.flows
                  if fl.priority == p.PRIO_MISS}
        self.assertEqual(misses, {
            0: (f.goto(1),), 1: (), 3: (f.goto(4),), 4: (f.goto(5),),
            5: (f.goto(6),), 6: (f.goto(9),), 9: ()})

    def test_local_endpoint(self):
        """A local endpoint tags at T1 and is delivered at T9 by MAC."""
        rendering = p.render(DesiredState.of(NET, EP_A))
        self.assertEqual(
            owned_by(rendering, p.KIND_LOCAL_ENDPOINT, "a"),
            {Flow.make(1, 10, {"in_port": 1},
                       [f.apply(f.push_vlan(), f.set_field("vlan_vid", VID)),
                        f.goto(3)], p.cookie(p.KIND_LOCAL_ENDPOINT, "a")),
             Flow.make(9, 100, {"vlan_vid": VID,
                                "eth_dst": "02:02:0a:01:00:01"},
                       [f.apply(f.pop_vlan(), f.output(1))],
                       p.cookie(p.KIND_LOCAL_ENDPOINT, "a"))})

    def test_flood_groups_split_horizon(self):
        """Traffic from local ports floods to local ports and tunnels;
        traffic from a VTEP floods to local ports only."""
        rendering = p.render(DesiredState.of(NET, EP_B, EP_A, TUNNEL))
        local = ((f.pop_vlan(), f.output(1)), (f.pop_vlan(), f.output(2)))
        to_tunnel = ((f.set_field("tunnel_id", 5001), f.pop_vlan(),
                      f.output(10)),)
        self.assertEqual(rendering.groups[p.flood_group_id(NET, False)],
                         Group(p.GROUP_BASE | 3 << 1, local + to_tunnel))
        self.assertEqual(rendering.groups[p.flood_group_id(NET, True)],
                         Group(p.GROUP_BASE | 3 << 1 | 1, local))
        floods = {dict(fl.match)["metadata"]: fl.instructions
                  for fl in owned_by(rendering, p.KIND_NETWORK, "blue")}
        self.assertEqual(floods, {
            (0, 1): (f.apply(f.group(p.flood_group_id(NET, False))),),
            (1, 1): (f.apply(f.group(p.flood_group_id(NET, True))),)})

    def test_tunnel_marks_rx_vtep(self):
        """A tunnel classifies by port and VNI and sets the RX_VTEP bit."""
        rendering = p.render(DesiredState.of(NET, TUNNEL))
        (flow,) = owned_by(rendering, p.KIND_TUNNEL, "192.0.2.2")
        self.assertEqual(dict(flow.match),
                         {"in_port": 10, "tunnel_id": 5001})
        self.assertIn(f.write_metadata(1, 1), flow.instructions)
        self.assertEqual(flow.instructions[-1], f.goto(6))

    def test_remote_endpoint_waits_for_its_tunnel(self):
        """A remote endpoint has no flow until its tunnel is known, then
        one that sets the VNI and outputs to the tunnel."""
        without = p.render(DesiredState.of(NET, REMOTE))
        self.assertEqual(owned_by(without, p.KIND_REMOTE_ENDPOINT, "r"),
                         set())
        with_tunnel = p.render(DesiredState.of(NET, REMOTE, TUNNEL))
        (flow,) = owned_by(with_tunnel, p.KIND_REMOTE_ENDPOINT, "r")
        self.assertEqual(flow.instructions, (f.apply(
            f.set_field("tunnel_id", 5001), f.pop_vlan(), f.output(10)),))

    def test_unknown_network(self):
        """An endpoint whose network is not in the state has no flows."""
        rendering = p.render(DesiredState.of(EP_A))
        self.assertEqual(rendering.flows, p.render(DesiredState()).flows)

    def test_never_normal(self):
        """No rendered flow or bucket outputs to the NORMAL port."""
        rendering = p.render(DesiredState.of(NET, EP_A, REMOTE, TUNNEL))
        text = repr(sorted(rendering.flows, key=repr)) + repr(
            rendering.groups)
        self.assertNotIn(str(ofp.OFPP_NORMAL), text)

    def test_cookies(self):
        """Cookies are stable, name their kind and share our mask."""
        a = p.cookie(p.KIND_LOCAL_ENDPOINT, "a")
        self.assertEqual(a, p.cookie(p.KIND_LOCAL_ENDPOINT, "a"))
        self.assertNotEqual(a, p.cookie(p.KIND_LOCAL_ENDPOINT, "b"))
        self.assertEqual(p.cookie_kind(a), "local-endpoint")
        self.assertTrue(p.is_ours(a))
        self.assertFalse(p.is_ours(0x1))


class FlowValueTests(SynchronousTestCase):
    """L{Flow} and L{Group} compare equal across the wire."""

    def test_every_flow_survives_the_wire(self):
        """Each rendered flow, encoded and decoded, equals itself."""
        rendering = p.render(DesiredState.of(NET, EP_A, REMOTE, TUNNEL))
        for flow in rendering.flows:
            self.assertEqual(wire_round_trip(flow), flow)

    def test_every_group_survives_the_wire(self):
        """Each rendered group, encoded and decoded, equals itself."""
        rendering = p.render(DesiredState.of(NET, EP_A, EP_B, TUNNEL))
        for group in rendering.groups.values():
            self.assertEqual(group_round_trip(group), group)

    def test_canonical_order(self):
        """Match field order and instruction order do not matter."""
        one = Flow.make(1, 5, {"tunnel_id": 7, "in_port": 3},
                        [f.goto(6), f.write_metadata(1, 1)], 9)
        two = Flow.make(1, 5, {"in_port": 3, "tunnel_id": 7},
                        [f.write_metadata(1, 1), f.goto(6)], 9)
        self.assertEqual(one, two)
        self.assertEqual(hash(one), hash(two))

    def test_ofctl_syntax(self):
        """A flow renders in ovs-ofctl's add-flows syntax."""
        match = {"vlan_vid": VID, "eth_dst": "02:00:00:00:00:01"}
        flow = Flow.make(9, 100, match,
                         [f.apply(f.pop_vlan(), f.output(2))], 0xc3)
        self.assertEqual(
            flow.to_ofctl(),
            "table=9,priority=100,cookie=0xc3,dl_dst=02:00:00:00:00:01,"
            "vlan_vid=4099 actions=pop_vlan,output:2")


class DiffTests(SynchronousTestCase):
    """L{diff_flows} and L{diff_groups}."""

    def setUp(self):
        self.base = frozenset(p.render(DesiredState()).flows)
        self.rendered = p.render(DesiredState.of(NET, EP_A)).flows

    def test_identical(self):
        """Equal sets need no change."""
        d = diff_flows(self.rendered, self.rendered)
        self.assertEqual((d.add, d.delete), (frozenset(), frozenset()))

    def test_missing_and_stale(self):
        """Missing flows are added; flows no longer wanted are deleted."""
        stale = Flow.make(9, 100, {"vlan_vid": VID,
                                   "eth_dst": "02:02:0a:01:00:99"},
                          [f.apply(f.pop_vlan(), f.output(7))],
                          p.cookie(p.KIND_LOCAL_ENDPOINT, "gone"))
        d = diff_flows(self.rendered, self.base | {stale})
        self.assertEqual(d.add, self.rendered - self.base)
        self.assertEqual(d.delete, {stale})

    def test_replaced_not_deleted(self):
        """A stale flow with a desired flow's key is replaced by the add,
        not deleted (which would remove the new one too)."""
        (want,) = [fl for fl in self.rendered if fl.table == 9
                   and fl.priority == 100]
        old = Flow(want.table, want.priority, want.match, (), want.cookie)
        d = diff_flows(frozenset({want}), frozenset({old}))
        self.assertEqual((d.add, d.delete), ({want}, frozenset()))

    def test_groups(self):
        """Groups are added, modified and deleted by id."""
        keep, change, gone, new = (Group(i, ()) for i in (1, 2, 3, 4))
        changed = Group(2, ((f.output(1),),))
        d = diff_groups({1: keep, 2: changed, 4: new},
                        {1: keep, 2: change, 3: gone})
        self.assertEqual((d.add, d.modify, d.delete),
                         ((new,), (changed,), (gone,)))


class DesiredStateTests(SynchronousTestCase):
    """L{DesiredState} values."""

    def test_put_and_drop(self):
        """put replaces by id and drop removes, leaving the original."""
        one = DesiredState.of(NET, EP_A)
        moved = LocalEndpoint("a", "blue", 5, EP_A.mac, EP_A.ip)
        two = one.put(moved)
        self.assertEqual(two.local_endpoints["a"].ofport, 5)
        self.assertEqual(one.local_endpoints["a"].ofport, 1)
        self.assertEqual(two.drop(moved), DesiredState.of(NET))

    def test_validation(self):
        """A bad MAC or VLAN is refused, naming the field."""
        e = self.assertRaises(ValidationError, LocalEndpoint, "x", "n", 1,
                              "nonsense", "10.0.0.1")
        self.assertEqual(e.field, "mac")
        e = self.assertRaises(ValidationError, Network, "n", 1, 4095)
        self.assertEqual(e.field, "local_vlan")
