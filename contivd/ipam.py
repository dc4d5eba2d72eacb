"""
Allocation without a master: endpoint addresses as one create-if-absent
key each, and VLAN, VNI and group ids as one map per pool updated by
compare-and-swap.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterable, Iterator

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from contivd.constants import ETCD_ROOT
from contivd.errors import Conflict, ValidationError
from contivd.model import Network
from contivd.store.base import CompareFailed, KeyExists, KeyMissing, Store

log = Logger()

ALLOC = ETCD_ROOT + "/alloc"
VLAN_POOL = "vlan"
VXLAN_POOL = "vxlan"
GROUP_POOL = "epg"
#: Endpoint group ids are allocated from this range.
GROUP_IDS = ((1, 65535),)
_MAX_SWAPS = 100


class PoolExhausted(Conflict):
    """Every address or tag of a pool is allocated."""


class AddressTaken(Conflict):
    """A requested address is held by another endpoint."""


def address_prefix(net_id: str) -> str:
    """The directory of a network's allocated addresses."""
    return f"{ALLOC}/ip/{net_id}"


def address_key(net_id: str, ip: str) -> str:
    """The key whose existence means C{ip} of C{net_id} is taken."""
    return f"{address_prefix(net_id)}/{ip}"


def tag_key(pool: str) -> str:
    """The key of a tag pool's map of tag to owner."""
    return f"{ALLOC}/tags/{pool}"


def allocate_address(store: Store, network: Network, endpoint_id: str,
                     requested: str | None = None) -> Deferred[str]:
    """
    Give an address of C{network} to C{endpoint_id}.

    The gateway, network and broadcast addresses are never given. A
    requested address already held by the same endpoint is given again.

    @raise ValidationError: when C{requested} is not an address of the
        network that endpoints may get.
    @raise AddressTaken: when C{requested} is held by another endpoint.
    @raise PoolExhausted: when no address is free.
    """
    if requested is not None:
        return Deferred.fromCoroutine(
            _request(store, network, endpoint_id, requested))
    return Deferred.fromCoroutine(_next_free(store, network, endpoint_id))


async def _request(store: Store, network: Network, endpoint_id: str,
                   requested: str) -> str:
    try:
        ip = ipaddress.IPv4Address(requested)
    except ValueError:
        raise ValidationError("ipAddress", f"{requested!r} is not an IPv4 "
                              "address") from None
    first, last = network.address_range()
    if not first <= ip <= last or str(ip) in network.reserved():
        raise ValidationError(
            "ipAddress", f"{ip} is not an endpoint address of network "
            f"{network.id} ({first}-{last}, without the gateway "
            f"{network.gateway or 'none'})")
    key = address_key(network.id, str(ip))
    try:
        await store.create(key, endpoint_id)
    except KeyExists:
        holder = await _holder(store, key)
        if holder != endpoint_id:
            raise AddressTaken(
                f"{ip} of network {network.id} is held by endpoint "
                f"{holder}; ask for another address or none") from None
    log.debug("gave {ip} of {net} to {ep}", ip=ip, net=network.id,
              ep=endpoint_id)
    return str(ip)


async def _holder(store: Store, key: str) -> str:
    try:
        return (await store.get(key)).value
    except KeyMissing:
        return "(released just now)"


async def _next_free(store: Store, network: Network,
                     endpoint_id: str) -> str:
    listing = await store.list(address_prefix(network.id))
    taken = {node.key.rsplit("/", 1)[1] for node in listing.nodes}
    for ip in network.usable():
        if ip in taken:
            continue
        try:
            await store.create(address_key(network.id, ip), endpoint_id)
        except KeyExists:
            continue
        log.debug("gave {ip} of {net} to {ep}", ip=ip, net=network.id,
                  ep=endpoint_id)
        return ip
    raise PoolExhausted(
        f"network {network.id} has no free address: all "
        f"{network.usable_count()} endpoint addresses of {network.subnet} "
        "are allocated; remove endpoints or use a bigger subnet")


def release_address(store: Store, net_id: str, ip: str,
                    endpoint_id: str) -> Deferred[bool]:
    """
    Free C{ip} of C{net_id} if C{endpoint_id} still holds it.

    @return: a Deferred firing with whether the address was freed.
    """
    async def release() -> bool:
        try:
            await store.compare_delete(address_key(net_id, ip), endpoint_id)
        except (KeyMissing, CompareFailed) as e:
            log.info("not freeing {ip} of {net} for {ep}: {why}", ip=ip,
                     net=net_id, ep=endpoint_id, why=e)
            return False
        return True

    return Deferred.fromCoroutine(release())


def allocated_addresses(store: Store, net_id: str) -> Deferred[dict[str,
                                                                     str]]:
    """The allocated addresses of C{net_id}, each with its endpoint id."""
    return store.list(address_prefix(net_id)).addCallback(
        lambda listing: {n.key.rsplit("/", 1)[1]: n.value
                         for n in listing.nodes})


def release_all_addresses(store: Store, net_id: str) -> Deferred[int]:
    """Free every address of C{net_id} (its network is being removed)."""
    async def release() -> int:
        held = await allocated_addresses(store, net_id)
        freed = 0
        for ip, endpoint_id in held.items():
            freed += await release_address(store, net_id, ip, endpoint_id)
        return freed

    return Deferred.fromCoroutine(release())


def tags_in_use(store: Store, pool: str) -> Deferred[dict[int, str]]:
    """The allocated tags of C{pool}, each with its owner."""
    return Deferred.fromCoroutine(_read_tags(store, pool)).addCallback(
        lambda found: found[0])


async def _read_tags(store: Store,
                     pool: str) -> tuple[dict[int, str], str | None]:
    try:
        node = await store.get(tag_key(pool))
    except KeyMissing:
        return {}, None
    try:
        used = {int(tag): owner for tag, owner in json.loads(
            node.value).items()}
    except (ValueError, AttributeError, TypeError):
        raise ValidationError(
            tag_key(pool), f"holds {node.value!r}, not a JSON map of tag "
            "to owner; repair or delete the key") from None
    return used, node.value


def _free(ranges: Iterable[tuple[int, int]],
          used: dict[int, str]) -> Iterator[int]:
    for first, last in ranges:
        for tag in range(first, last + 1):
            if tag not in used:
                yield tag


def allocate_tag(store: Store, pool: str, owner: str,
                 ranges: Iterable[tuple[int, int]],
                 requested: int | None = None) -> Deferred[int]:
    """
    Take a tag of C{pool} (L{VLAN_POOL}, L{VXLAN_POOL}, L{GROUP_POOL})
    for C{owner}: C{requested}, or the lowest free one in C{ranges}.

    @raise Conflict: when C{requested} is owned by another.
    @raise PoolExhausted: when C{ranges} have no free tag.
    """
    ranges = tuple(ranges)

    async def allocate() -> int:
        for _ in range(_MAX_SWAPS):
            used, raw = await _read_tags(store, pool)
            if requested is not None:
                tag = requested
                if used.get(tag, owner) != owner:
                    raise Conflict(
                        f"{pool} {tag} is used by {used[tag]}; choose "
                        "another or leave it out to have one allocated")
            else:
                free = next(_free(ranges, used), None)
                if free is None:
                    spans = ",".join(f"{a}-{b}" for a, b in ranges)
                    raise PoolExhausted(
                        f"no free {pool} in {spans}: all are used; widen "
                        "the range (contivctl global set) or remove "
                        "networks")
                tag = free
            used[tag] = owner
            value = json.dumps({str(t): o for t, o in sorted(used.items())})
            try:
                if raw is None:
                    await store.create(tag_key(pool), value)
                else:
                    await store.swap(tag_key(pool), value, raw)
            except (KeyExists, CompareFailed, KeyMissing):
                continue
            log.debug("gave {pool} {tag} to {owner}", pool=pool, tag=tag,
                      owner=owner)
            return tag
        raise Conflict(f"{tag_key(pool)} changed {_MAX_SWAPS} times while "
                       "allocating; try again")

    return Deferred.fromCoroutine(allocate())


def release_tag(store: Store, pool: str, tag: int,
                owner: str) -> Deferred[bool]:
    """
    Free C{tag} of C{pool} if C{owner} still holds it.

    @return: a Deferred firing with whether the tag was freed.
    """
    async def release() -> bool:
        for _ in range(_MAX_SWAPS):
            used, raw = await _read_tags(store, pool)
            if raw is None or used.get(tag) != owner:
                return False
            del used[tag]
            value = json.dumps({str(t): o for t, o in sorted(used.items())})
            try:
                await store.swap(tag_key(pool), value, raw)
            except (CompareFailed, KeyMissing):
                continue
            return True
        raise Conflict(f"{tag_key(pool)} changed {_MAX_SWAPS} times while "
                       "releasing; try again")

    return Deferred.fromCoroutine(release())
