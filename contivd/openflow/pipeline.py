"""
The VXLAN bridge-mode pipeline: flows and groups rendered from a
L{DesiredState}, each flow with a cookie naming the object that owns it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping
from types import MappingProxyType

import attr

from contivd.openflow import flows as f
from contivd.openflow.desired import (
    DesiredState,
    LocalEndpoint,
    Network,
    RemoteEndpoint,
    Tunnel,
)
from contivd.openflow.flows import Flow, Group

# Tables.
INPUT = 0
VLAN = 1
SRV_PROXY_DNAT = 3
DST_GRP = 4
POLICY = 5
SRV_PROXY_SNAT = 6
MAC_DEST = 9

# Priorities.
PRIO_MATCH = 100
PRIO_PORT = 10
PRIO_FLOOD = 10
PRIO_MISS = 1

#: Metadata bit 0: the packet came in from a VTEP.
RX_VTEP = 0x1

OFPVID_PRESENT = 0x1000
MULTICAST = "01:00:00:00:00:00"

# Cookie kinds: the top byte of every cookie we set.
KIND_BASE = 0xC1
KIND_NETWORK = 0xC2
KIND_LOCAL_ENDPOINT = 0xC3
KIND_REMOTE_ENDPOINT = 0xC4
KIND_TUNNEL = 0xC5
KIND_NAMES = {
    KIND_BASE: "base", KIND_NETWORK: "network",
    KIND_LOCAL_ENDPOINT: "local-endpoint",
    KIND_REMOTE_ENDPOINT: "remote-endpoint", KIND_TUNNEL: "tunnel",
}

#: Every cookie of ours has these bits, under L{COOKIE_MASK}.
COOKIE_OURS = 0xC0 << 56
COOKIE_MASK = 0xF0 << 56

#: Group ids of ours: GROUP_BASE | vlan << 1 | (1 for the VTEP horizon).
GROUP_BASE = 0xC0000000
GROUP_MASK = 0xFF000000


def cookie(kind: int, object_id: str) -> int:
    """The cookie of the flows of object C{object_id} of C{kind}."""
    digest = hashlib.blake2b(object_id.encode(), digest_size=7).digest()
    return kind << 56 | int.from_bytes(digest, "big")


def cookie_kind(value: int) -> str:
    """The name of the kind of object a cookie belongs to."""
    return KIND_NAMES.get(value >> 56, "foreign")


def is_ours(value: int) -> bool:
    """Whether a cookie is one that this pipeline sets."""
    return value & COOKIE_MASK == COOKIE_OURS


def flood_group_id(network: Network, from_vtep: bool) -> int:
    """The flood group for packets of C{network} from local ports or VTEPs."""
    return GROUP_BASE | network.local_vlan << 1 | int(from_vtep)


def is_our_group(group_id: int) -> bool:
    """Whether a group id lies in the range this pipeline uses."""
    return group_id & GROUP_MASK == GROUP_BASE


def _read_only(groups: Mapping[int, Group]) -> Mapping[int, Group]:
    return MappingProxyType(groups)


@attr.s(frozen=True, slots=True, auto_attribs=True)
class Rendering:
    """The flows and the groups (by id) that a bridge should carry."""

    flows: frozenset[Flow]
    groups: Mapping[int, Group] = attr.ib(converter=_read_only)


def render(state: DesiredState) -> Rendering:
    """All flows and groups for C{state}."""
    flows: set[Flow] = set(base_flows())
    groups: dict[int, Group] = {}
    for network in state.networks.values():
        flows.update(network_flows(network))
        for g in flood_groups(network, state):
            groups[g.group_id] = g
        for tunnel in state.tunnels.values():
            flows.update(tunnel_flows(tunnel, network))
    for endpoint in state.local_endpoints.values():
        home = state.networks.get(endpoint.network_id)
        if home is not None:
            flows.update(local_endpoint_flows(endpoint, home))
    for remote in state.remote_endpoints.values():
        home = state.networks.get(remote.network_id)
        via = state.tunnels.get(remote.vtep_ip)
        if home is not None and via is not None:
            flows.update(remote_endpoint_flows(remote, home, via))
    return Rendering(frozenset(flows), groups)


def base_flows() -> Iterator[Flow]:
    """The table chain and the default drops, whatever the state."""
    c = cookie(KIND_BASE, "vxlan-bridge")
    yield Flow.make(INPUT, PRIO_MATCH, {"eth_src": (MULTICAST, MULTICAST)},
                    [], c)
    yield Flow.make(INPUT, PRIO_MISS, {}, [f.goto(VLAN)], c)
    yield Flow.make(VLAN, PRIO_MISS, {}, [], c)
    for table, following in ((SRV_PROXY_DNAT, DST_GRP), (DST_GRP, POLICY),
                             (POLICY, SRV_PROXY_SNAT),
                             (SRV_PROXY_SNAT, MAC_DEST)):
        yield Flow.make(table, PRIO_MISS, {}, [f.goto(following)], c)
    yield Flow.make(MAC_DEST, PRIO_MISS, {}, [], c)


def network_flows(network: Network) -> Iterator[Flow]:
    """The two flood flows of a network, split by the RX_VTEP bit."""
    c = cookie(KIND_NETWORK, network.id)
    vid = network.local_vlan | OFPVID_PRESENT
    for from_vtep in (False, True):
        yield Flow.make(
            MAC_DEST, PRIO_FLOOD,
            {"vlan_vid": vid,
             "metadata": (RX_VTEP if from_vtep else 0, RX_VTEP)},
            [f.apply(f.group(flood_group_id(network, from_vtep)))], c)


def flood_groups(network: Network, state: DesiredState) -> list[Group]:
    """
    The flood groups of a network: to every local port and VTEP for
    packets from local ports, to local ports only for packets from VTEPs.
    """
    local = tuple(
        (f.pop_vlan(), f.output(ep.ofport))
        for ep in sorted(state.local_endpoints.values(),
                         key=lambda ep: ep.ofport)
        if ep.network_id == network.id)
    remote = tuple(
        (f.set_field("tunnel_id", network.vni), f.pop_vlan(),
         f.output(t.ofport))
        for t in sorted(state.tunnels.values(), key=lambda t: t.ofport))
    return [Group(flood_group_id(network, False), local + remote),
            Group(flood_group_id(network, True), local)]


def tunnel_flows(tunnel: Tunnel, network: Network) -> Iterator[Flow]:
    """Packets of a network from a VTEP: tag, mark RX_VTEP, skip policy."""
    yield Flow.make(
        VLAN, PRIO_MATCH,
        {"in_port": tunnel.ofport, "tunnel_id": network.vni},
        [f.apply(f.push_vlan(),
                 f.set_field("vlan_vid",
                             network.local_vlan | OFPVID_PRESENT)),
         f.write_metadata(RX_VTEP, RX_VTEP), f.goto(SRV_PROXY_SNAT)],
        cookie(KIND_TUNNEL, tunnel.id))


def local_endpoint_flows(endpoint: LocalEndpoint,
                         network: Network) -> Iterator[Flow]:
    """Tag what the endpoint sends; deliver what is addressed to it."""
    c = cookie(KIND_LOCAL_ENDPOINT, endpoint.id)
    vid = network.local_vlan | OFPVID_PRESENT
    yield Flow.make(
        VLAN, PRIO_PORT, {"in_port": endpoint.ofport},
        [f.apply(f.push_vlan(), f.set_field("vlan_vid", vid)),
         f.goto(SRV_PROXY_DNAT)], c)
    yield Flow.make(
        MAC_DEST, PRIO_MATCH, {"vlan_vid": vid, "eth_dst": endpoint.mac},
        [f.apply(f.pop_vlan(), f.output(endpoint.ofport))], c)


def remote_endpoint_flows(remote: RemoteEndpoint, network: Network,
                          tunnel: Tunnel) -> Iterator[Flow]:
    """Send what is addressed to a remote endpoint into its tunnel."""
    yield Flow.make(
        MAC_DEST, PRIO_MATCH,
        {"vlan_vid": network.local_vlan | OFPVID_PRESENT,
         "eth_dst": remote.mac},
        [f.apply(f.set_field("tunnel_id", network.vni), f.pop_vlan(),
                 f.output(tunnel.ofport))],
        cookie(KIND_REMOTE_ENDPOINT, remote.id))
