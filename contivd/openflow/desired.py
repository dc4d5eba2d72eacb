"""
The typed desired state of one bridge, as the OpenFlow renderer reads it:
networks, local and remote endpoints, and the tunnels to other hosts.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from types import MappingProxyType

import attr

from contivd.errors import ValidationError


def _mac(_instance: object, attribute: attr.Attribute, value: str) -> None:
    parts = value.split(":")
    if len(parts) != 6 or not all(
            len(p) == 2 and all(c in "0123456789abcdef" for c in p)
            for p in parts):
        raise ValidationError(
            attribute.name, f"{value!r} is not a lower-case MAC address")


def _ipv4(_instance: object, attribute: attr.Attribute, value: str) -> None:
    try:
        ipaddress.IPv4Address(value)
    except ValueError:
        raise ValidationError(
            attribute.name, f"{value!r} is not an IPv4 address") from None


def _lower(value: str) -> str:
    return str.lower(value)


def _within(low: int, high: int):
    def check(_instance: object, attribute: attr.Attribute,
              value: int) -> None:
        if not isinstance(value, int) or not low <= value <= high:
            raise ValidationError(
                attribute.name, f"{value!r} is not in {low}..{high}")

    return check


@attr.s(frozen=True, slots=True, auto_attribs=True)
class Network:
    """A network: its VXLAN id on the wire and its VLAN inside the bridge."""

    id: str
    vni: int = attr.ib(validator=_within(1, 0xFFFFFF))
    local_vlan: int = attr.ib(validator=_within(1, 4094))


@attr.s(frozen=True, slots=True, auto_attribs=True)
class LocalEndpoint:
    """An endpoint on this host, behind OpenFlow port C{ofport}."""

    id: str
    network_id: str
    ofport: int = attr.ib(validator=_within(1, 0xFFFFFF00))
    mac: str = attr.ib(converter=_lower, validator=_mac)
    ip: str = attr.ib(validator=_ipv4)


@attr.s(frozen=True, slots=True, auto_attribs=True)
class RemoteEndpoint:
    """An endpoint on another host, reached through that host's VTEP."""

    id: str
    network_id: str
    mac: str = attr.ib(converter=_lower, validator=_mac)
    ip: str = attr.ib(validator=_ipv4)
    vtep_ip: str = attr.ib(validator=_ipv4)


@attr.s(frozen=True, slots=True, auto_attribs=True)
class Tunnel:
    """The VXLAN port (C{key=flow}) towards the host at C{vtep_ip}."""

    vtep_ip: str = attr.ib(validator=_ipv4)
    ofport: int = attr.ib(validator=_within(1, 0xFFFFFF00))

    @property
    def id(self) -> str:
        """Tunnels are known by their remote VTEP address."""
        return self.vtep_ip


Object = Network | LocalEndpoint | RemoteEndpoint | Tunnel

_SLOTS = {
    Network: "networks",
    LocalEndpoint: "local_endpoints",
    RemoteEndpoint: "remote_endpoints",
    Tunnel: "tunnels",
}


def _frozen(value: Mapping) -> Mapping:
    return MappingProxyType(dict(value))


@attr.s(frozen=True, slots=True, eq=False, auto_attribs=True)
class DesiredState:
    """
    Everything one bridge should carry, each kind of object by its id.

    Values are immutable: L{put} and L{drop} return a new state.
    """

    networks: Mapping[str, Network] = attr.ib(
        factory=dict, converter=_frozen)
    local_endpoints: Mapping[str, LocalEndpoint] = attr.ib(
        factory=dict, converter=_frozen)
    remote_endpoints: Mapping[str, RemoteEndpoint] = attr.ib(
        factory=dict, converter=_frozen)
    tunnels: Mapping[str, Tunnel] = attr.ib(
        factory=dict, converter=_frozen)

    @classmethod
    def of(cls, *objects: Object) -> DesiredState:
        """A state holding exactly C{objects}."""
        return cls().put(*objects)

    def put(self, *objects: Object) -> DesiredState:
        """This state with C{objects} added, or replaced by id."""
        return self._changed(objects, remove=False)

    def drop(self, *objects: Object) -> DesiredState:
        """This state without C{objects} (matched by kind and id)."""
        return self._changed(objects, remove=True)

    def objects(self) -> list[Object]:
        """Every object in this state."""
        return [obj for slot in _SLOTS.values()
                for obj in getattr(self, slot).values()]

    def _changed(self, objects, remove: bool) -> DesiredState:
        slots = {slot: dict(getattr(self, slot)) for slot in _SLOTS.values()}
        for obj in objects:
            try:
                table = slots[_SLOTS[type(obj)]]
            except KeyError:
                raise ValidationError(
                    "object", f"{obj!r} is not a desired-state object"
                ) from None
            if remove:
                table.pop(obj.id, None)
            else:
                table[obj.id] = obj
        return DesiredState(**slots)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, DesiredState):
            return NotImplemented
        return all(dict(getattr(self, s)) == dict(getattr(other, s))
                   for s in _SLOTS.values())
