"""
Flows and groups as hashable values, equal whether we rendered them or
read them back from a switch, and their conversion to OpenFlow 1.3.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import attr
from os_ken.ofproto import ofproto_v1_3 as ofp
from os_ken.ofproto import ofproto_v1_3_parser as parser

Action = tuple
Instruction = tuple
MatchItem = tuple[str, Any]

#: The order in which a switch runs (and OVS reports) the instructions.
_INSTRUCTION_RANK = {"apply": 0, "metadata": 1, "goto": 2}

#: OXM field numbers of the fields we match on: os-ken orders by them.
_OXM_ORDER = {
    "in_port": 0, "metadata": 2, "eth_dst": 3, "eth_src": 4,
    "eth_type": 5, "vlan_vid": 6, "ip_dscp": 8, "ip_proto": 10,
    "ipv4_src": 11, "ipv4_dst": 12, "tcp_src": 13, "tcp_dst": 14,
    "udp_src": 15, "udp_dst": 16, "arp_op": 21, "tunnel_id": 38,
}

_OFCTL_FIELDS = {
    "in_port": "in_port", "eth_dst": "dl_dst", "eth_src": "dl_src",
    "eth_type": "dl_type", "vlan_vid": "vlan_vid", "metadata": "metadata",
    "tunnel_id": "tun_id", "arp_op": "arp_op", "ipv4_src": "nw_src",
    "ipv4_dst": "nw_dst", "ip_proto": "nw_proto",
}


def output(port: int) -> Action:
    """Send the packet out of OpenFlow port C{port}."""
    return ("output", port)


def to_controller(max_len: int = ofp.OFPCML_NO_BUFFER) -> Action:
    """Send the packet to the controller as a PACKET_IN."""
    return ("controller", max_len)


def group(group_id: int) -> Action:
    """Hand the packet to group C{group_id}."""
    return ("group", group_id)


def push_vlan(ethertype: int = 0x8100) -> Action:
    """Push an 802.1Q header."""
    return ("push_vlan", ethertype)


def pop_vlan() -> Action:
    """Pop the outer 802.1Q header."""
    return ("pop_vlan",)


def set_field(name: str, value: Any) -> Action:
    """Set OXM field C{name} (os-ken's name for it) to C{value}."""
    return ("set_field", name, value)


def apply(*actions: Action) -> Instruction:
    """An APPLY_ACTIONS instruction."""
    return ("apply", tuple(actions))


def write_metadata(value: int, mask: int) -> Instruction:
    """A WRITE_METADATA instruction."""
    return ("metadata", value & mask, mask)


def goto(table: int) -> Instruction:
    """A GOTO_TABLE instruction."""
    return ("goto", table)


def _normal_value(value: Any) -> Any:
    if isinstance(value, (tuple, list)):
        value, mask = value
        if isinstance(value, int):
            return (value & mask, mask)
        return (_normal_value(value), _normal_value(mask))
    if isinstance(value, str):
        return value.lower()
    return value


def _normal_match(match: Mapping[str, Any]) -> tuple[MatchItem, ...]:
    if all(name in _OXM_ORDER for name in match):
        ordered = sorted(match.items(), key=lambda i: _OXM_ORDER[i[0]])
    else:
        ordered = parser.OFPMatch(**match)._fields2
    return tuple((name, _normal_value(value)) for name, value in ordered)


def _normal_instructions(
        instructions: Iterable[Instruction]) -> tuple[Instruction, ...]:
    return tuple(sorted(
        instructions, key=lambda i: _INSTRUCTION_RANK.get(i[0], 3)))


@attr.s(frozen=True, slots=True, auto_attribs=True)
class Flow:
    """
    One flow entry. Two flows are equal when a switch would report the
    same entry; L{key} is what a FLOW_MOD ADD replaces.
    """

    table: int
    priority: int
    match: tuple[MatchItem, ...]
    instructions: tuple[Instruction, ...]
    cookie: int

    @classmethod
    def make(cls, table: int, priority: int, match: Mapping[str, Any],
             instructions: Iterable[Instruction], cookie: int) -> Flow:
        """A flow with its match and instructions in canonical form."""
        return cls(table, priority, _normal_match(match),
                   _normal_instructions(instructions), cookie)

    @classmethod
    def from_stats(cls, stats: Any) -> Flow:
        """The flow that an C{OFPFlowStats} from a dump describes."""
        return cls.make(
            stats.table_id, stats.priority, dict(stats.match._fields2),
            [_instruction_from_wire(i) for i in stats.instructions],
            stats.cookie)

    @property
    def key(self) -> tuple:
        """Table, priority and match: the identity of the entry."""
        return (self.table, self.priority, self.match)

    def to_message(self, datapath: Any,
                   command: int = ofp.OFPFC_ADD) -> Any:
        """This flow as a FLOW_MOD (ADD, or DELETE_STRICT by cookie)."""
        strict_delete = command == ofp.OFPFC_DELETE_STRICT
        return parser.OFPFlowMod(
            datapath, cookie=self.cookie,
            cookie_mask=0xFFFFFFFFFFFFFFFF if strict_delete else 0,
            table_id=self.table, command=command, priority=self.priority,
            buffer_id=ofp.OFP_NO_BUFFER, out_port=ofp.OFPP_ANY,
            out_group=ofp.OFPG_ANY, match=parser.OFPMatch(**dict(self.match)),
            instructions=[] if strict_delete else
            [_instruction_to_wire(i) for i in self.instructions])

    def to_ofctl(self) -> str:
        """This flow in the syntax of C{ovs-ofctl add-flows}."""
        fields = [f"table={self.table}", f"priority={self.priority}",
                  f"cookie={self.cookie:#x}"]
        fields += [f"{_OFCTL_FIELDS[name]}={_ofctl_value(value)}"
                   for name, value in self.match]
        actions = []
        for instruction in self.instructions:
            if instruction[0] == "apply":
                actions += [_ofctl_action(a) for a in instruction[1]]
            elif instruction[0] == "metadata":
                actions.append(
                    f"write_metadata:{instruction[1]:#x}/{instruction[2]:#x}")
            else:
                actions.append(f"goto_table:{instruction[1]}")
        return ",".join(fields) + " actions=" + (",".join(actions) or "drop")


@attr.s(frozen=True, slots=True, auto_attribs=True)
class Group:
    """A group of type ALL; each bucket is a tuple of actions."""

    group_id: int
    buckets: tuple[tuple[Action, ...], ...]

    @classmethod
    def from_stats(cls, stats: Any) -> Group:
        """The group that an C{OFPGroupDescStats} from a dump describes."""
        return cls(stats.group_id, tuple(
            tuple(_action_from_wire(a) for a in bucket.actions)
            for bucket in stats.buckets))

    def to_ofctl(self) -> str:
        """This group in the syntax of C{ovs-ofctl add-groups}."""
        buckets = "".join(
            ",bucket=actions=" + ",".join(_ofctl_action(a) for a in bucket)
            for bucket in self.buckets)
        return f"group_id={self.group_id},type=all{buckets}"

    def to_message(self, datapath: Any, command: int) -> Any:
        """This group as a GROUP_MOD with C{command} (ADD/MODIFY/DELETE)."""
        buckets = [] if command == ofp.OFPGC_DELETE else [
            parser.OFPBucket(actions=[action_to_wire(a) for a in bucket])
            for bucket in self.buckets]
        return parser.OFPGroupMod(
            datapath, command=command, type_=ofp.OFPGT_ALL,
            group_id=self.group_id, buckets=buckets)


@attr.s(frozen=True, slots=True, auto_attribs=True)
class FlowDiff:
    """What to change on a switch to go from one set of flows to another."""

    add: frozenset[Flow]
    delete: frozenset[Flow]


@attr.s(frozen=True, slots=True, auto_attribs=True)
class GroupDiff:
    """What to change on a switch to go from one set of groups to another."""

    add: tuple[Group, ...]
    modify: tuple[Group, ...]
    delete: tuple[Group, ...]


def diff_flows(desired: frozenset[Flow],
               actual: frozenset[Flow]) -> FlowDiff:
    """
    The flows to add and to delete. A stale flow that an added one
    replaces (same table, priority and match) is not deleted separately.
    """
    add = desired - actual
    replaced = {flow.key for flow in add}
    delete = frozenset(flow for flow in actual - desired
                       if flow.key not in replaced)
    return FlowDiff(frozenset(add), delete)


def diff_groups(desired: Mapping[int, Group],
                actual: Mapping[int, Group]) -> GroupDiff:
    """The groups to add, modify and delete, each in group id order."""
    add = [g for i, g in sorted(desired.items()) if i not in actual]
    modify = [g for i, g in sorted(desired.items())
              if i in actual and actual[i] != g]
    delete = [g for i, g in sorted(actual.items()) if i not in desired]
    return GroupDiff(tuple(add), tuple(modify), tuple(delete))


def action_to_wire(action: Action) -> Any:
    kind = action[0]
    if kind == "output":
        return parser.OFPActionOutput(action[1], 0)
    if kind == "controller":
        return parser.OFPActionOutput(ofp.OFPP_CONTROLLER, action[1])
    if kind == "group":
        return parser.OFPActionGroup(action[1])
    if kind == "push_vlan":
        return parser.OFPActionPushVlan(action[1])
    if kind == "pop_vlan":
        return parser.OFPActionPopVlan()
    return parser.OFPActionSetField(**{action[1]: action[2]})


def _action_from_wire(action: Any) -> Action:
    if isinstance(action, parser.OFPActionOutput):
        if action.port == ofp.OFPP_CONTROLLER:
            return to_controller(action.max_len)
        return output(action.port)
    if isinstance(action, parser.OFPActionGroup):
        return group(action.group_id)
    if isinstance(action, parser.OFPActionPushVlan):
        return push_vlan(action.ethertype)
    if isinstance(action, parser.OFPActionPopVlan):
        return pop_vlan()
    if isinstance(action, parser.OFPActionSetField):
        return set_field(action.key, _normal_value(action.value))
    return ("unknown", repr(action))


def _instruction_to_wire(instruction: Instruction) -> Any:
    kind = instruction[0]
    if kind == "apply":
        return parser.OFPInstructionActions(
            ofp.OFPIT_APPLY_ACTIONS,
            [action_to_wire(a) for a in instruction[1]])
    if kind == "metadata":
        return parser.OFPInstructionWriteMetadata(
            instruction[1], instruction[2])
    return parser.OFPInstructionGotoTable(instruction[1])


def _instruction_from_wire(instruction: Any) -> Instruction:
    if isinstance(instruction, parser.OFPInstructionGotoTable):
        return goto(instruction.table_id)
    if isinstance(instruction, parser.OFPInstructionWriteMetadata):
        return write_metadata(instruction.metadata,
                              instruction.metadata_mask)
    if (isinstance(instruction, parser.OFPInstructionActions)
            and instruction.type == ofp.OFPIT_APPLY_ACTIONS):
        return apply(*(_action_from_wire(a) for a in instruction.actions))
    return ("unknown", repr(instruction))


def _ofctl_value(value: Any) -> str:
    if isinstance(value, tuple):
        if isinstance(value[0], int):
            return f"{value[0]:#x}/{value[1]:#x}"
        return f"{value[0]}/{value[1]}"
    return str(value)


def _ofctl_action(action: Action) -> str:
    kind = action[0]
    if kind == "output":
        return f"output:{action[1]}"
    if kind == "controller":
        return f"controller:{action[1]}"
    if kind == "group":
        return f"group:{action[1]}"
    if kind == "push_vlan":
        return f"push_vlan:{action[1]:#x}"
    if kind == "pop_vlan":
        return "pop_vlan"
    name = _OFCTL_FIELDS.get(action[1], action[1])
    return f"set_field:{_ofctl_value(action[2])}->{name}"
