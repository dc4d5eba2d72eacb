"""
contivctl: writes the cluster's intent (global config, networks,
groups) into etcd, validated, and shows what agents published and do.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any, TextIO

import attr
from twisted.internet.defer import Deferred
from twisted.internet.task import react

from contivd import ipam
from contivd.ctl.status import DEFAULT_AGENT
from contivd.ctl.status import status as agent_status
from contivd.errors import (
    ConfigError,
    Conflict,
    ContivError,
    NotFound,
    ValidationError,
)
from contivd.model import (
    DEFAULT_TENANT,
    ENDPOINTS,
    GROUPS,
    MAX_VLAN,
    MAX_VNI,
    NETS,
    Endpoint,
    EndpointGroup,
    GlobalConfig,
    GlobalState,
    Network,
    ServiceInfo,
    group_id,
    network_key,
    parse_ranges,
    service_prefix,
)
from contivd.store.base import KeyExists, KeyMissing, Store

#: Contiv's bookkeeping fields that contivd leaves at their initial
#: values (the allocation keys replace them): kept in the stored JSON
#: for Contiv's tools, left out of the tables people read.
UNKEPT_FIELDS = frozenset(
    {"epCount", "epAddrCount", "ipAllocMap", "ipv6AllocMap"})

#: Seconds contivctl waits for an unreachable etcd before it gives up.
GIVE_UP_AFTER = 10.0
VTEP_SERVICE = "netplugin.vtep"


@attr.s(frozen=True, auto_attribs=True)
class Output:
    """What a command shows: data for C{--json}, rows for people."""

    data: Any
    columns: tuple[str, ...] = ()
    rows: tuple[tuple[Any, ...], ...] = ()
    message: str = ""


async def _read(store: Store, key: str, cls, missing: str):
    try:
        node = await store.get(key)
    except KeyMissing:
        raise NotFound(missing) from None
    return cls.from_json(node.value), node.value


async def _all(store: Store, prefix: str, cls) -> list:
    """
    Every object below C{prefix}; a malformed record is skipped with a
    warning naming its key, so that one bad value does not stop every
    command.
    """
    listing = await store.list(prefix)
    found = []
    for node in listing.nodes:
        try:
            found.append(cls.from_json(node.value))
        except ValidationError as e:
            sys.stderr.write(
                f"contivctl: skipping malformed {node.key} ({e}); repair "
                "or delete that key in etcd\n")
    return found


async def _global_state(store: Store) -> GlobalState:
    try:
        return GlobalState.from_json((await store.get(
            GlobalState.key)).value)
    except KeyMissing:
        return GlobalState()


async def global_get(store: Store) -> Output:
    """Show the global config and the tag ranges."""
    config, _ = await _read(
        store, GlobalConfig.key, GlobalConfig,
        "no global config yet; set it with contivctl global set "
        "--fwd-mode bridge|routing --pvt-subnet CIDR")
    ranges = await _global_state(store)
    data = dict(config.to_dict(), vlans=ranges.vlans, vxlans=ranges.vxlans)
    rows = tuple((k, v) for k, v in data.items() if k != "id")
    return Output(data, ("setting", "value"), rows)


async def global_set(store: Store, fwd_mode: str, pvt_subnet: str,
                     arp_mode: str | None = None,
                     vlans: str | None = None,
                     vxlans: str | None = None) -> Output:
    """
    Write the global config; fwd-mode and pvt-subnet may change only
    while no network exists, since agents rebuild their bridges for it.
    """
    try:
        old, _ = await _read(store, GlobalConfig.key, GlobalConfig, "")
    except NotFound:
        old = None
    ranges = await _global_state(store)
    config = GlobalConfig(
        fwd_mode=fwd_mode, pvt_subnet=pvt_subnet,
        arp_mode=arp_mode or (old.arp_mode if old else "proxy"),
        nw_infra_type=old.nw_infra_type if old else "default")
    ranges = GlobalState(vlans=vlans or ranges.vlans,
                         vxlans=vxlans or ranges.vxlans)
    if old is not None and (old.fwd_mode, old.pvt_subnet) != (
            config.fwd_mode, config.pvt_subnet):
        nets = await _all(store, NETS, Network)
        if nets:
            raise Conflict(
                "fwd-mode and pvt-subnet cannot change while networks "
                f"exist ({', '.join(n.id for n in nets)}); remove them "
                "first")
    await store.put(GlobalState.key, ranges.to_json())
    await store.put(GlobalConfig.key, config.to_json())
    return Output(config.to_dict(), message="global config written")


async def net_create(store: Store, network: Network,
                     tag_given: bool) -> Network:
    """
    Store a new network, allocating its VNI and VLAN (by compare-and-
    swap) unless C{tag_given}; tags are freed again if it fails.
    """
    ranges = await _global_state(store)
    try:
        await store.get(network.key)
    except KeyMissing:
        pass
    else:
        raise Conflict(f"network {network.id} exists; remove it first "
                       f"(contivctl net rm {network.network_name})")
    for other in await _all(store, NETS, Network):
        if (other.tenant == network.tenant
                and other.subnet.overlaps(network.subnet)):
            raise Conflict(
                f"subnet {network.subnet} overlaps {other.subnet} of "
                f"network {other.id}; within a tenant, networks need "
                "subnets of their own (use another subnet, or another "
                "--tenant)")
    taken: list[tuple[str, int]] = []
    try:
        if network.pkt_tag_type == "vxlan":
            vni = await ipam.allocate_tag(
                store, ipam.VXLAN_POOL, network.id,
                parse_ranges("vxlans", ranges.vxlans, MAX_VNI),
                network.ext_pkt_tag if tag_given else None)
            taken.append((ipam.VXLAN_POOL, vni))
            vlan = await ipam.allocate_tag(
                store, ipam.VLAN_POOL, network.id,
                parse_ranges("vlans", ranges.vlans, MAX_VLAN))
            taken.append((ipam.VLAN_POOL, vlan))
            network = attr.evolve(network, pkt_tag=vlan, ext_pkt_tag=vni)
        else:
            vlan = await ipam.allocate_tag(
                store, ipam.VLAN_POOL, network.id,
                parse_ranges("vlans", ranges.vlans, MAX_VLAN),
                network.pkt_tag if tag_given else None)
            taken.append((ipam.VLAN_POOL, vlan))
            network = attr.evolve(network, pkt_tag=vlan)
        try:
            await store.create(network.key, network.to_json())
        except KeyExists:
            raise Conflict(f"network {network.id} was created by someone "
                           "else just now") from None
    except BaseException:
        for pool, tag in taken:
            await ipam.release_tag(store, pool, tag, network.id)
        raise
    return network


def _net_rows(nets: Sequence[Network]) -> tuple[tuple[Any, ...], ...]:
    return tuple(
        (n.network_name, n.tenant, n.pkt_tag_type,
         n.ext_pkt_tag if n.pkt_tag_type == "vxlan" else n.pkt_tag,
         f"{n.subnet_ip}/{n.subnet_len}", n.gateway or "-")
        for n in nets)


_NET_COLUMNS = ("name", "tenant", "encap", "tag", "subnet", "gateway")


async def net_ls(store: Store) -> Output:
    nets = await _all(store, NETS, Network)
    return Output([n.to_dict() for n in nets], _NET_COLUMNS,
                  _net_rows(nets))


async def _endpoints_of(store: Store, net_id: str) -> list[Endpoint]:
    return [e for e in await _all(store, ENDPOINTS, Endpoint)
            if e.net_id == net_id]


async def net_inspect(store: Store, name: str, tenant: str) -> Output:
    network, _ = await _read(store, network_key(name, tenant), Network,
                             _no_network(name, tenant))
    addresses = await ipam.allocated_addresses(store, network.id)
    endpoints = await _endpoints_of(store, network.id)
    data = {"config": network.to_dict(), "allocated": addresses,
            "endpoints": [e.to_dict() for e in endpoints]}
    rows = tuple((k, v) for k, v in network.to_dict().items()
                 if k not in UNKEPT_FIELDS)
    rows += (("allocated", len(addresses)),
             ("free", network.usable_count() - len(addresses)),
             ("endpoints", ", ".join(e.id for e in endpoints) or "-"))
    return Output(data, ("field", "value"), rows)


def _no_network(name: str, tenant: str) -> str:
    return (f"network {name}.{tenant} does not exist; "
            "see contivctl net ls")


async def net_rm(store: Store, name: str, tenant: str) -> Output:
    """Remove a network that has no endpoints and no groups."""
    network, raw = await _read(store, network_key(name, tenant), Network,
                               _no_network(name, tenant))
    endpoints = await _endpoints_of(store, network.id)
    if endpoints:
        raise Conflict(
            f"network {network.id} has endpoints: "
            f"{', '.join(e.id for e in endpoints)}; remove their "
            "containers first")
    groups = [g for g in await _all(store, GROUPS, EndpointGroup)
              if g.network_id == network.id]
    if groups:
        raise Conflict(
            f"network {network.id} has groups: "
            f"{', '.join(g.id for g in groups)}; remove them first "
            "(contivctl group rm)")
    await store.compare_delete(network.key, raw)
    if network.pkt_tag_type == "vxlan":
        await ipam.release_tag(store, ipam.VXLAN_POOL, network.ext_pkt_tag,
                               network.id)
    await ipam.release_tag(store, ipam.VLAN_POOL, network.pkt_tag,
                           network.id)
    await ipam.release_all_addresses(store, network.id)
    return Output({"removed": network.id},
                  message=f"network {network.id} removed")


async def group_create(store: Store, name: str, network_name: str,
                       tenant: str) -> EndpointGroup:
    """Store a new endpoint group of an existing network."""
    network, _ = await _read(store, network_key(network_name, tenant),
                             Network, _no_network(network_name, tenant))
    gid = group_id(name, tenant)
    number = await ipam.allocate_tag(store, ipam.GROUP_POOL, gid,
                                     ipam.GROUP_IDS)
    try:
        group = EndpointGroup(
            group_name=name, tenant_name=tenant, network_name=network_name,
            endpoint_group_id=number, pkt_tag_type=network.pkt_tag_type,
            pkt_tag=network.pkt_tag, ext_pkt_tag=network.ext_pkt_tag,
            group_tag=f"{name}.{tenant}")
        try:
            await store.create(group.key, group.to_json())
        except KeyExists:
            raise Conflict(f"group {gid} exists; remove it first "
                           f"(contivctl group rm {name})") from None
    except BaseException:
        await ipam.release_tag(store, ipam.GROUP_POOL, number, gid)
        raise
    return group


async def group_ls(store: Store) -> Output:
    groups = await _all(store, GROUPS, EndpointGroup)
    return Output([g.to_dict() for g in groups],
                  ("name", "tenant", "network", "id"),
                  tuple((g.group_name, g.tenant_name, g.network_name,
                         g.endpoint_group_id) for g in groups))


async def group_rm(store: Store, name: str, tenant: str) -> Output:
    """Remove an endpoint group that has no endpoints."""
    gid = group_id(name, tenant)
    group, raw = await _read(
        store, f"{GROUPS}/{gid}", EndpointGroup,
        f"group {gid} does not exist; see contivctl group ls")
    members = [e.id for e in await _all(store, ENDPOINTS, Endpoint)
               if e.endpoint_group_key == gid]
    if members:
        raise Conflict(f"group {gid} has endpoints: {', '.join(members)};"
                       " remove their containers first")
    await store.compare_delete(group.key, raw)
    await ipam.release_tag(store, ipam.GROUP_POOL, group.endpoint_group_id,
                           gid)
    return Output({"removed": gid}, message=f"group {gid} removed")


async def endpoint_ls(store: Store) -> Output:
    eps = await _all(store, ENDPOINTS, Endpoint)
    return Output([e.to_dict() for e in eps],
                  ("id", "network", "group", "ip", "mac", "host"),
                  tuple((e.endpoint_id[:12], e.net_id,
                         e.endpoint_group_key or "-", e.ip_address,
                         e.mac_address, e.homing_host) for e in eps))


async def host_ls(store: Store) -> Output:
    listing = await store.list(service_prefix(VTEP_SERVICE))
    hosts = [(ServiceInfo.from_json(n.value), n.ttl)
             for n in listing.nodes]
    return Output([dict(h.to_dict(), ttlLeft=ttl) for h, ttl in hosts],
                  ("host", "vtep", "port", "ttl"),
                  tuple((h.hostname, h.host_addr, h.port,
                         "-" if ttl is None else ttl)
                        for h, ttl in hosts))


def render(output: Output, as_json: bool, out: TextIO) -> None:
    """Write an L{Output} as JSON or as an aligned table."""
    if as_json:
        out.write(json.dumps(output.data, indent=2) + "\n")
    elif output.columns:
        table = [output.columns] + [tuple(map(str, r)) for r in output.rows]
        widths = [max(len(row[i]) for row in table)
                  for i in range(len(output.columns))]
        for row in table:
            cells = zip(row, widths, strict=True)
            out.write("  ".join(c.ljust(w) for c, w in cells).rstrip()
                      + "\n")
    elif output.message:
        out.write(output.message + "\n")


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true",
                        default=argparse.SUPPRESS,
                        help="print JSON for scripts")
    p = argparse.ArgumentParser(
        prog="contivctl", parents=[common],
        description="Write and read contivd's cluster state in etcd.")
    p.add_argument("--etcd", default=os.environ.get(
        "CONTIV_ETCD", "http://127.0.0.1:2379"),
        help="etcd client URLs, comma separated")
    kinds = p.add_subparsers(dest="kind", required=True)

    def command(parent, name, help):
        sub = parent.add_parser(name, help=help, parents=[common])
        return sub

    glob = kinds.add_parser("global", help="the global config")
    gcmd = glob.add_subparsers(dest="cmd", required=True)
    command(gcmd, "get", "show it")
    gset = command(gcmd, "set", "write it")
    gset.add_argument("--fwd-mode", required=True,
                      choices=("bridge", "routing"))
    gset.add_argument("--pvt-subnet", required=True, metavar="CIDR")
    gset.add_argument("--arp-mode", choices=("proxy", "flood"))
    gset.add_argument("--vlans", metavar="RANGE",
                      help="VLANs to allocate from, like 1-4094")
    gset.add_argument("--vxlans", metavar="RANGE",
                      help="VNIs to allocate from, like 1-10000")

    net = kinds.add_parser("net", help="networks")
    ncmd = net.add_subparsers(dest="cmd", required=True)
    create = command(ncmd, "create", "create a network")
    create.add_argument("name")
    create.add_argument("--subnet", required=True, metavar="CIDR")
    create.add_argument("--gateway", metavar="IP",
                        help="default: the last usable address")
    create.add_argument("--encap", default="vxlan",
                        choices=("vxlan", "vlan"))
    create.add_argument("--pkt-tag", type=int, metavar="N",
                        help="the VNI (vxlan) or VLAN (vlan); default: "
                        "allocated")
    command(ncmd, "ls", "list networks")
    for name, help in (("inspect", "show one network"),
                       ("rm", "remove a network without endpoints")):
        command(ncmd, name, help).add_argument("name")

    grp = kinds.add_parser("group", help="endpoint groups")
    grcmd = grp.add_subparsers(dest="cmd", required=True)
    gcreate = command(grcmd, "create", "create a group")
    gcreate.add_argument("name")
    gcreate.add_argument("--network", required=True)
    command(grcmd, "ls", "list groups")
    command(grcmd, "rm", "remove a group").add_argument("name")

    for kind, help in (("endpoint", "endpoints"), ("host", "hosts")):
        sub = kinds.add_parser(kind, help=help)
        command(sub.add_subparsers(dest="cmd", required=True), "ls",
                f"list {help}")

    stat = kinds.add_parser(
        "status", parents=[common],
        help="one agent's health, components, peers and bridges (exit 3 "
        "when it is not healthy)")
    stat.add_argument("--agent", default=os.environ.get(
        "CONTIV_AGENT", DEFAULT_AGENT), metavar="URL",
        help=f"the agent's status server (default {DEFAULT_AGENT})")

    for sub in (create, gcreate):
        sub.add_argument("--tenant", default=DEFAULT_TENANT)
    for action in list(ncmd.choices.values()) + list(
            grcmd.choices.values()):
        if action.prog.split()[-1] in ("inspect", "rm"):
            action.add_argument("--tenant", default=DEFAULT_TENANT)
    return p


async def dispatch(store: Store, args: argparse.Namespace) -> Output:
    """Run the command that C{args} names."""
    which = (args.kind, args.cmd)
    if which == ("global", "get"):
        return await global_get(store)
    if which == ("global", "set"):
        return await global_set(store, args.fwd_mode, args.pvt_subnet,
                                args.arp_mode, args.vlans, args.vxlans)
    if which == ("net", "create"):
        network = Network.build(args.name, args.subnet, args.gateway,
                                args.tenant, args.encap, args.pkt_tag or 0)
        network = await net_create(store, network, bool(args.pkt_tag))
        tag = (network.ext_pkt_tag if network.pkt_tag_type == "vxlan"
               else network.pkt_tag)
        return Output(network.to_dict(), message=(
            f"network {network.id} created: {network.pkt_tag_type} {tag}, "
            f"{network.subnet}, gateway {network.gateway or 'none'}"))
    if which == ("net", "ls"):
        return await net_ls(store)
    if which == ("net", "inspect"):
        return await net_inspect(store, args.name, args.tenant)
    if which == ("net", "rm"):
        return await net_rm(store, args.name, args.tenant)
    if which == ("group", "create"):
        group = await group_create(store, args.name, args.network,
                                   args.tenant)
        return Output(group.to_dict(), message=(
            f"group {group.id} created with id {group.endpoint_group_id}"))
    if which == ("group", "ls"):
        return await group_ls(store)
    if which == ("group", "rm"):
        return await group_rm(store, args.name, args.tenant)
    if which == ("endpoint", "ls"):
        return await endpoint_ls(store)
    return await host_ls(store)


async def run(reactor: Any, args: argparse.Namespace,
              out: TextIO, err: TextIO) -> int:
    """Run one command against etcd; the exit code it should give."""
    from contivd.options import _etcd_urls
    from contivd.store.etcd import EtcdStore

    try:
        urls = _etcd_urls("etcd", args.etcd)
    except ConfigError as e:
        err.write(f"contivctl: {e}\n")
        return 2
    store = EtcdStore(urls, reactor, timeout=5.0,
                      give_up_after=GIVE_UP_AFTER)
    try:
        render(await dispatch(store, args), getattr(args, "json", False),
               out)
        return 0
    except ContivError as e:
        err.write(f"contivctl: {e}\n")
        return 1
    except Exception as e:
        err.write(f"contivctl: failed: {type(e).__name__}: {e}\n")
        return 1
    finally:
        await store.close()


def main(argv: Sequence[str] | None = None) -> None:
    """The C{contivctl} console script."""
    args = _parser().parse_args(argv)
    if args.kind == "status":
        raise SystemExit(agent_status(args.agent,
                                      getattr(args, "json", False),
                                      sys.stdout, sys.stderr))

    async def go(reactor: Any) -> None:
        code = await run(reactor, args, sys.stdout, sys.stderr)
        raise SystemExit(code)

    react(lambda reactor: Deferred.fromCoroutine(go(reactor)))
