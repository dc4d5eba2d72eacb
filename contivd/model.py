"""
The typed objects of cluster state, their etcd keys, and Contiv's JSON
field names for each, validated where they enter the agent.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import attr

from contivd.constants import ETCD_ROOT
from contivd.errors import ValidationError

STATE = ETCD_ROOT + "/state"
OPER = ETCD_ROOT + "/oper"
GLOBAL_CONFIG_KEY = ETCD_ROOT + "/master/config/global"
GLOBAL_STATE_KEY = STATE + "/global/global"
NETS = STATE + "/nets"
ENDPOINTS = STATE + "/eps"
OPER_ENDPOINTS = OPER + "/eps"
GROUPS = STATE + "/endpointGroups"
SERVICE_LBS = STATE + "/serviceLB"
PROVIDERS = STATE + "/provider"
BGP = STATE + "/bgp"
POLICY_RULES = STATE + "/policyRule"
SERVICES = ETCD_ROOT + "/service"

DEFAULT_TENANT = "default"
DEFAULT_VLANS = "1-4094"
DEFAULT_VXLANS = "1-10000"
MAX_VLAN = 4094
MAX_VNI = 16777215
#: An empty bitset as Contiv writes it in C{ipAllocMap}.
EMPTY_BITSET = "AAAAAAAAAAA="

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
_MAC = re.compile(r"^([0-9a-f]{2}:){5}[0-9a-f]{2}$")


def _bad(field: str, value: Any, why: str) -> ValidationError:
    return ValidationError(field, f"{value!r} {why}")


def check_name(field: str, value: Any) -> str:
    """A network, group, tenant or host name, or L{ValidationError}."""
    if not isinstance(value, str) or not _NAME.match(value):
        raise _bad(field, value, "is not a valid name: use 1-64 letters, "
                   "digits, '-' or '_', starting with a letter or digit")
    return value


def parse_subnet(field: str, value: str) -> ipaddress.IPv4Network:
    """An IPv4 subnet in CIDR form with no host bits set."""
    try:
        net = ipaddress.IPv4Network(value, strict=False)
    except (ValueError, TypeError):
        raise _bad(field, value, "is not an IPv4 subnet (like "
                   "10.1.1.0/24)") from None
    if "/" not in str(value):
        raise _bad(field, value, "has no prefix length (like 10.1.1.0/24)")
    if str(net.network_address) != str(value).split("/")[0]:
        raise _bad(field, value, f"has host bits set; did you mean {net}?")
    return net


def parse_ranges(field: str, value: str, top: int) -> tuple[tuple[int, int],
                                                            ...]:
    """C{"1-100,200"} as ((1, 100), (200, 200)), each within 1-C{top}."""
    ranges = []
    for part in str(value).split(","):
        lo, _, hi = part.strip().partition("-")
        try:
            first, last = int(lo), int(hi or lo)
        except ValueError:
            raise _bad(field, value, "is not a range list (like "
                       "1-100,200)") from None
        if not 1 <= first <= last <= top:
            raise _bad(field, value, f"must lie within 1-{top}, low-high")
        ranges.append((first, last))
    return tuple(ranges)


#: A check of one value, given the JSON name of its field.
_Check = Callable[[str, Any], object]


def _v(check: _Check) -> Callable[[Any, attr.Attribute[Any], Any], None]:
    """An attrs validator running C{check} under the field's JSON name."""
    def validator(instance: Any, attribute: attr.Attribute[Any],
                  value: Any) -> None:
        check(attribute.metadata.get("json", attribute.name), value)
    return validator


def _ipv4_or_empty(field: str, value: Any) -> None:
    if value == "":
        return
    try:
        ipaddress.IPv4Address(value)
    except (ValueError, TypeError):
        raise _bad(field, value, "is not an IPv4 address "
                   "(like 10.1.1.2)") from None


def _int_in(lo: int, hi: int) -> _Check:
    def check(field: str, value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, int) \
                or not lo <= value <= hi:
            raise _bad(field, value, f"is not a number in {lo}-{hi}")
    return check


def _one_of(*choices: str) -> _Check:
    def check(field: str, value: Any) -> None:
        if value not in choices:
            raise _bad(field, value, f"is not one of {', '.join(choices)}")
    return check


def _string(field: str, value: Any) -> None:
    if not isinstance(value, str):
        raise _bad(field, value, "is not a string")


def _mac_or_empty(field: str, value: Any) -> None:
    if value != "" and (not isinstance(value, str)
                        or not _MAC.match(value)):
        raise _bad(field, value, "is not a MAC address "
                   "(like 02:02:0a:01:01:02)")


def _mapping(value: Any) -> dict:
    return dict(value or {})


def _strings(value: Any) -> tuple:
    return tuple(value or ())


class Model:
    """
    Shared behaviour of the stored objects: JSON with Contiv's field
    names (plus C{"id"}), and the key each object lives at.
    """

    #: Whether the JSON carries Contiv's C{"id"} field.
    has_id: ClassVar[bool] = True
    #: Set by C{attr.s} on each subclass; declared so that
    #: C{attr.fields} accepts any model.
    __attrs_attrs__: ClassVar[tuple[attr.Attribute[Any], ...]]

    @property
    def id(self) -> str:
        raise NotImplementedError

    @property
    def key(self) -> str:
        """The etcd key of this object."""
        raise NotImplementedError

    def json_id(self) -> str:
        return self.id

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.json_id()} if self.has_id else {}
        for f in attr.fields(type(self)):
            value = getattr(self, f.name)
            out[f.metadata["json"]] = list(value) if isinstance(
                value, tuple) else value
        return out

    def to_json(self) -> str:
        """The value to store, as Contiv writes it."""
        return json.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        if not isinstance(data, dict):
            raise ValidationError(cls.__name__, "is not a JSON object")
        names = {f.metadata["json"]: f.name for f in attr.fields(cls)}
        kwargs = {names[k]: v for k, v in data.items() if k in names}
        missing = [f.metadata["json"] for f in attr.fields(cls)
                   if f.default is attr.NOTHING and f.name not in kwargs]
        if missing:
            raise ValidationError(missing[0], "is missing")
        return cls(**kwargs)

    @classmethod
    def from_json(cls, text: str):
        """
        Read a stored value.

        @raise ValidationError: naming the field that is wrong.
        """
        try:
            data = json.loads(text)
        except (ValueError, TypeError) as e:
            raise ValidationError(cls.__name__,
                                  f"is not valid JSON: {e}") from None
        return cls.from_dict(data)


@attr.s(frozen=True, kw_only=True)
class GlobalConfig(Model):
    """The cluster's forwarding settings, at L{GLOBAL_CONFIG_KEY}."""

    nw_infra_type: str = attr.ib(
        default="default",
        validator=_v(_one_of("default", "aci", "aci-opflex")),
        metadata={"json": "nw-infra-type"})
    fwd_mode: str = attr.ib(validator=_v(_one_of("bridge", "routing")),
                            metadata={"json": "fwd-mode"})
    arp_mode: str = attr.ib(default="proxy",
                            validator=_v(_one_of("proxy", "flood")),
                            metadata={"json": "arp-mode"})
    pvt_subnet: str = attr.ib(validator=_v(parse_subnet),
                              metadata={"json": "pvt-subnet"})

    id = ""
    key = GLOBAL_CONFIG_KEY


@attr.s(frozen=True, kw_only=True)
class GlobalState(Model):
    """The VLAN and VXLAN ranges tags are allocated from."""

    vlans: str = attr.ib(
        default=DEFAULT_VLANS,
        validator=_v(lambda f, v: parse_ranges(f, v, MAX_VLAN)),
        metadata={"json": "VLANs"})
    vxlans: str = attr.ib(
        default=DEFAULT_VXLANS,
        validator=_v(lambda f, v: parse_ranges(f, v, MAX_VNI)),
        metadata={"json": "VXLANs"})

    id = "global"
    key = GLOBAL_STATE_KEY

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id,
                "auto": {"VLANs": self.vlans, "VXLANs": self.vxlans}}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GlobalState:
        auto = data.get("auto") if isinstance(data, dict) else None
        return super().from_dict(auto if isinstance(auto, dict) else {})


def network_id(name: str, tenant: str = DEFAULT_TENANT) -> str:
    return f"{name}.{tenant}"


def network_key(name: str, tenant: str = DEFAULT_TENANT) -> str:
    return f"{NETS}/{network_id(name, tenant)}"


@attr.s(frozen=True, kw_only=True)
class Network(Model):
    """
    A network (Contiv's CfgNetworkState) at C{/contiv.io/state/nets/}.

    C{pkt_tag} is the VLAN (for a VXLAN network, the local VLAN) and
    C{ext_pkt_tag} the VNI of a VXLAN network (0 for a VLAN network).
    """

    tenant: str = attr.ib(default=DEFAULT_TENANT, validator=_v(check_name),
                          metadata={"json": "tenant"})
    network_name: str = attr.ib(validator=_v(check_name),
                                metadata={"json": "networkName"})
    nw_type: str = attr.ib(default="data",
                           validator=_v(_one_of("data", "infra")),
                           metadata={"json": "nwType"})
    pkt_tag_type: str = attr.ib(default="vxlan",
                                validator=_v(_one_of("vxlan", "vlan")),
                                metadata={"json": "pktTagType"})
    pkt_tag: int = attr.ib(default=0, validator=_v(_int_in(0, MAX_VLAN)),
                           metadata={"json": "pktTag"})
    ext_pkt_tag: int = attr.ib(default=0, validator=_v(_int_in(0, MAX_VNI)),
                               metadata={"json": "extPktTag"})
    subnet_ip: str = attr.ib(validator=_v(_ipv4_or_empty),
                             metadata={"json": "subnetIP"})
    subnet_len: int = attr.ib(validator=_v(_int_in(0, 30)),
                              metadata={"json": "subnetLen"})
    gateway: str = attr.ib(default="", validator=_v(_ipv4_or_empty),
                           metadata={"json": "gateway"})
    ip_addr_range: str = attr.ib(default="", validator=_v(_string),
                                 metadata={"json": "ipAddrRange"})
    ep_addr_count: int = attr.ib(default=0, validator=_v(_int_in(0, 2 ** 32)),
                                 metadata={"json": "epAddrCount"})
    ep_count: int = attr.ib(default=0, validator=_v(_int_in(0, 2 ** 32)),
                            metadata={"json": "epCount"})
    ip_alloc_map: str = attr.ib(default=EMPTY_BITSET, validator=_v(_string),
                                metadata={"json": "ipAllocMap"})
    ipv6_subnet_ip: str = attr.ib(default="", validator=_v(_string),
                                  metadata={"json": "ipv6SubnetIP"})
    ipv6_subnet_len: int = attr.ib(default=0, validator=_v(_int_in(0, 128)),
                                   metadata={"json": "ipv6SubnetLen"})
    ipv6_gateway: str = attr.ib(default="", validator=_v(_string),
                                metadata={"json": "ipv6Gateway"})
    ipv6_alloc_map: Any = attr.ib(default=None,
                                  metadata={"json": "ipv6AllocMap"})
    ipv6_last_host: str = attr.ib(default="", validator=_v(_string),
                                  metadata={"json": "ipv6LastHost"})
    network_tag: str = attr.ib(default="", validator=_v(_string),
                               metadata={"json": "networkTag"})

    def __attrs_post_init__(self) -> None:
        net = parse_subnet("subnetIP", f"{self.subnet_ip}/{self.subnet_len}")
        if self.pkt_tag_type == "vlan":
            _int_in(1, MAX_VLAN)("pktTag", self.pkt_tag)
        else:
            _int_in(1, MAX_VNI)("extPktTag", self.ext_pkt_tag)
        if self.gateway:
            gw = ipaddress.IPv4Address(self.gateway)
            if gw not in net:
                raise _bad("gateway", self.gateway, f"is outside {net}")
            if gw in (net.network_address, net.broadcast_address):
                raise _bad("gateway", self.gateway, f"is the network or "
                           f"broadcast address of {net}")
        if self.ip_addr_range:
            self.address_range()

    @classmethod
    def build(cls, name: str, subnet: str, gateway: str | None = None,
              tenant: str = DEFAULT_TENANT, encap: str = "vxlan",
              tag: int = 0) -> Network:
        """
        A new network from what an operator gives.

        Without a gateway the network gets the last usable address of
        the subnet. C{tag} is the VLAN of a VLAN network or the VNI of a
        VXLAN network; 0 means "allocate one": the result then holds 1
        there (to pass validation) until L{attr.evolve} sets the tags
        allocated.
        """
        check_name("networkName", name)
        check_name("tenant", tenant)
        _one_of("vxlan", "vlan")("pktTagType", encap)
        net = parse_subnet("subnet", subnet)
        if net.prefixlen > 30:
            raise _bad("subnet", subnet, "leaves no address for endpoints;"
                       " use a /30 or a bigger subnet")
        if tag:
            top = MAX_VLAN if encap == "vlan" else MAX_VNI
            what = "VLAN" if encap == "vlan" else "VNI"
            if isinstance(tag, bool) or not isinstance(tag, int) \
                    or not 1 <= tag <= top:
                raise _bad("pktTag", tag, f"is not a {what} (1-{top})")
        if gateway is None:
            gateway = str(net.broadcast_address - 1)
        first, last = net.network_address + 1, net.broadcast_address - 1
        return cls(
            tenant=tenant, network_name=name, pkt_tag_type=encap,
            pkt_tag=(tag or 1) if encap == "vlan" else 0,
            ext_pkt_tag=0 if encap == "vlan" else (tag or 1),
            subnet_ip=str(net.network_address), subnet_len=net.prefixlen,
            gateway=gateway, ip_addr_range=f"{first}-{last}",
            network_tag=network_id(name, tenant))

    @property
    def id(self) -> str:
        return network_id(self.network_name, self.tenant)

    @property
    def key(self) -> str:
        return network_key(self.network_name, self.tenant)

    @property
    def subnet(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(f"{self.subnet_ip}/{self.subnet_len}")

    def address_range(self) -> tuple[ipaddress.IPv4Address,
                                     ipaddress.IPv4Address]:
        """The first and last address endpoints may get."""
        net = self.subnet
        first, last = net.network_address + 1, net.broadcast_address - 1
        if self.ip_addr_range:
            lo, _, hi = self.ip_addr_range.partition("-")
            try:
                first, last = (ipaddress.IPv4Address(lo.strip()),
                               ipaddress.IPv4Address(hi.strip()))
            except ValueError:
                raise _bad("ipAddrRange", self.ip_addr_range,
                           "is not a range like 10.1.1.1-10.1.1.254") \
                    from None
            if first not in net or last not in net or first > last:
                raise _bad("ipAddrRange", self.ip_addr_range,
                           f"is not a range within {net}")
        return first, last

    def reserved(self) -> set[str]:
        """The addresses never given to an endpoint."""
        net = self.subnet
        out = {str(net.network_address), str(net.broadcast_address)}
        if self.gateway:
            out.add(self.gateway)
        return out

    def usable(self) -> Iterator[str]:
        """Every address an endpoint may get, lowest first."""
        first, last = self.address_range()
        reserved = self.reserved()
        for i in range(int(first), int(last) + 1):
            ip = str(ipaddress.IPv4Address(i))
            if ip not in reserved:
                yield ip

    def usable_count(self) -> int:
        """How many addresses L{usable} gives."""
        first, last = self.address_range()
        inside = [ip for ip in self.reserved()
                  if first <= ipaddress.IPv4Address(ip) <= last]
        return int(last) - int(first) + 1 - len(inside)


def group_id(name: str, tenant: str = DEFAULT_TENANT) -> str:
    return f"{name}:{tenant}"


@attr.s(frozen=True, kw_only=True)
class EndpointGroup(Model):
    """An endpoint group (EndpointGroupState) of one network."""

    group_name: str = attr.ib(validator=_v(check_name),
                              metadata={"json": "groupName"})
    tenant_name: str = attr.ib(default=DEFAULT_TENANT,
                               validator=_v(check_name),
                               metadata={"json": "tenantName"})
    network_name: str = attr.ib(validator=_v(check_name),
                                metadata={"json": "networkName"})
    endpoint_group_id: int = attr.ib(validator=_v(_int_in(1, 65535)),
                                     metadata={"json": "endpointGroupId"})
    pkt_tag_type: str = attr.ib(default="vxlan",
                                validator=_v(_one_of("vxlan", "vlan")),
                                metadata={"json": "pktTagType"})
    pkt_tag: int = attr.ib(default=0, validator=_v(_int_in(0, MAX_VLAN)),
                           metadata={"json": "pktTag"})
    ext_pkt_tag: int = attr.ib(default=0, validator=_v(_int_in(0, MAX_VNI)),
                               metadata={"json": "extPktTag"})
    ep_count: int = attr.ib(default=0, validator=_v(_int_in(0, 2 ** 32)),
                            metadata={"json": "epCount"})
    dscp: int = attr.ib(default=0, validator=_v(_int_in(0, 63)),
                        metadata={"json": "DSCP"})
    bandwidth: str = attr.ib(default="", validator=_v(_string),
                             metadata={"json": "Bandwidth"})
    burst: int = attr.ib(default=0, validator=_v(_int_in(0, 2 ** 32)),
                         metadata={"json": "Burst"})
    ip_pool: str = attr.ib(default="", validator=_v(_string),
                           metadata={"json": "IPPool"})
    epg_ip_alloc_map: str = attr.ib(default=EMPTY_BITSET,
                                    validator=_v(_string),
                                    metadata={"json": "epgIpAllocMap"})
    group_tag: str = attr.ib(default="", validator=_v(_string),
                             metadata={"json": "groupTag"})

    @property
    def id(self) -> str:
        return group_id(self.group_name, self.tenant_name)

    @property
    def key(self) -> str:
        return f"{GROUPS}/{self.id}"

    @property
    def network_id(self) -> str:
        return network_id(self.network_name, self.tenant_name)


def mac_for(ip: str) -> str:
    """Contiv's MAC for an endpoint address: 02:02 and the 4 bytes."""
    return "02:02:" + ":".join(
        f"{b:02x}" for b in ipaddress.IPv4Address(ip).packed)


@attr.s(frozen=True, kw_only=True)
class Endpoint(Model):
    """The config of one endpoint (CfgEndpointState)."""

    net_id: str = attr.ib(validator=_v(_string), metadata={"json": "netID"})
    endpoint_id: str = attr.ib(validator=_v(_string),
                               metadata={"json": "endpointID"})
    service_name: str = attr.ib(default="", validator=_v(_string),
                                metadata={"json": "serviceName"})
    endpoint_group_id: int = attr.ib(default=0,
                                     validator=_v(_int_in(0, 65535)),
                                     metadata={"json": "endpointGroupId"})
    endpoint_group_key: str = attr.ib(default="", validator=_v(_string),
                                      metadata={"json": "endpointGroupKey"})
    ip_address: str = attr.ib(default="", validator=_v(_ipv4_or_empty),
                              metadata={"json": "ipAddress"})
    ipv6_address: str = attr.ib(default="", validator=_v(_string),
                                metadata={"json": "ipv6Address"})
    mac_address: str = attr.ib(default="", validator=_v(_mac_or_empty),
                               metadata={"json": "macAddress"})
    homing_host: str = attr.ib(default="", validator=_v(_string),
                               metadata={"json": "homingHost"})
    intf_name: str = attr.ib(default="", validator=_v(_string),
                             metadata={"json": "intfName"})
    vtep_ip: str = attr.ib(default="", validator=_v(_ipv4_or_empty),
                           metadata={"json": "vtepIP"})
    labels: dict[str, Any] = attr.ib(default=attr.Factory(dict),
                                     converter=_mapping,
                                     metadata={"json": "labels"})
    container_id: str = attr.ib(default="", validator=_v(_string),
                                metadata={"json": "containerId"})
    ep_common_name: str = attr.ib(default="", validator=_v(_string),
                                  metadata={"json": "epCommonName"})

    def __attrs_post_init__(self) -> None:
        if not self.endpoint_id or "/" in self.endpoint_id:
            raise _bad("endpointID", self.endpoint_id,
                       "must be non-empty and hold no '/'")

    @property
    def id(self) -> str:
        return f"{self.net_id}-{self.endpoint_id}"

    @property
    def key(self) -> str:
        return f"{ENDPOINTS}/{self.id}"


@attr.s(frozen=True, kw_only=True)
class OperEndpoint(Model):
    """What an agent did for one local endpoint (OperEndpointState)."""

    net_id: str = attr.ib(validator=_v(_string), metadata={"json": "netID"})
    endpoint_id: str = attr.ib(validator=_v(_string),
                               metadata={"json": "endpointID"})
    service_name: str = attr.ib(default="", validator=_v(_string),
                                metadata={"json": "serviceName"})
    cont_uuid: str = attr.ib(default="", validator=_v(_string),
                             metadata={"json": "contUUID"})
    ip_address: str = attr.ib(default="", validator=_v(_ipv4_or_empty),
                              metadata={"json": "ipAddress"})
    ipv6_address: str = attr.ib(default="", validator=_v(_string),
                                metadata={"json": "ipv6Address"})
    mac_address: str = attr.ib(default="", validator=_v(_mac_or_empty),
                               metadata={"json": "macAddress"})
    homing_host: str = attr.ib(default="", validator=_v(_string),
                               metadata={"json": "homingHost"})
    intf_name: str = attr.ib(default="", validator=_v(_string),
                             metadata={"json": "intfName"})
    port_name: str = attr.ib(default="", validator=_v(_string),
                             metadata={"json": "portName"})
    vtep_ip: str = attr.ib(default="", validator=_v(_ipv4_or_empty),
                           metadata={"json": "vtepIP"})

    @property
    def id(self) -> str:
        return f"{self.net_id}-{self.endpoint_id}"

    @property
    def key(self) -> str:
        return f"{OPER_ENDPOINTS}/{self.id}"


def _ports(field: str, value: Any) -> None:
    for port in value:
        parts = str(port).split(":")
        if len(parts) != 3 or not all(p.isdigit() for p in parts[:2]) \
                or parts[2].upper() not in ("TCP", "UDP") \
                or not all(0 < int(p) < 65536 for p in parts[:2]):
            raise _bad(field, port, "is not a port mapping like "
                       "80:8080:TCP (service:provider:TCP|UDP)")


@attr.s(frozen=True, kw_only=True)
class ServiceLB(Model):
    """A load-balanced service (CfgServiceLBState)."""

    service_name: str = attr.ib(validator=_v(check_name),
                                metadata={"json": "servicename"})
    tenant_name: str = attr.ib(default=DEFAULT_TENANT,
                               validator=_v(check_name),
                               metadata={"json": "tenantname"})
    network: str = attr.ib(validator=_v(check_name),
                           metadata={"json": "subnet"})
    ports: tuple[str, ...] = attr.ib(default=(), validator=_v(_ports),
                                     converter=_strings,
                                     metadata={"json": "ports"})
    selectors: dict[str, Any] = attr.ib(default=attr.Factory(dict),
                                        converter=_mapping,
                                        metadata={"json": "selectors"})
    ip_address: str = attr.ib(default="", validator=_v(_ipv4_or_empty),
                              metadata={"json": "ipaddress"})
    providers: dict[str, Any] = attr.ib(default=attr.Factory(dict),
                                        converter=_mapping,
                                        metadata={"json": "providers"})

    @property
    def id(self) -> str:
        return group_id(self.service_name, self.tenant_name)

    @property
    def key(self) -> str:
        return f"{SERVICE_LBS}/{self.id}"


@attr.s(frozen=True, kw_only=True)
class Provider(Model):
    """The provider addresses of one service (SvcProvider)."""

    service_name: str = attr.ib(validator=_v(_string),
                                metadata={"json": "ServiceName"})
    providers: tuple[str, ...] = attr.ib(default=(), converter=_strings,
                                         metadata={"json": "Providers"})

    def __attrs_post_init__(self) -> None:
        for ip in self.providers:
            _ipv4_or_empty("Providers", ip)

    @property
    def id(self) -> str:
        return self.service_name

    @property
    def key(self) -> str:
        return f"{PROVIDERS}/{self.id}"


def _cidr_host(field: str, value: Any) -> None:
    if not isinstance(value, str) or "/" not in value:
        value_ok = False
    else:
        try:
            ipaddress.IPv4Interface(value)
            value_ok = True
        except ValueError:
            value_ok = False
    if not value_ok:
        raise _bad(field, value, "is not an address with prefix length "
                   "(like 50.1.1.2/24)")


@attr.s(frozen=True, kw_only=True)
class Bgp(Model):
    """A host's BGP peering (CfgBgpState)."""

    hostname: str = attr.ib(validator=_v(check_name),
                            metadata={"json": "hostname"})
    router_ip: str = attr.ib(validator=_v(_cidr_host),
                             metadata={"json": "router-ip"})
    as_number: str = attr.ib(validator=_v(_string), metadata={"json": "as"})
    neighbor_as: str = attr.ib(validator=_v(_string),
                               metadata={"json": "neighbor-as"})
    neighbor: str = attr.ib(validator=_v(_ipv4_or_empty),
                            metadata={"json": "neighbor"})

    @property
    def id(self) -> str:
        return self.hostname

    @property
    def key(self) -> str:
        return f"{BGP}/{self.id}"


@attr.s(frozen=True, kw_only=True)
class PolicyRule(Model):
    """One rule of a policy (CfgPolicyRule); its C{"id"} is empty."""

    rule_id: str = attr.ib(validator=_v(_string), metadata={"json": "RuleId"})
    priority: int = attr.ib(default=0, validator=_v(_int_in(0, 65535)),
                            metadata={"json": "Priority"})
    src_endpoint_group: int = attr.ib(default=0,
                                      validator=_v(_int_in(0, 65535)),
                                      metadata={"json": "SrcEndpointGroup"})
    dst_endpoint_group: int = attr.ib(default=0,
                                      validator=_v(_int_in(0, 65535)),
                                      metadata={"json": "DstEndpointGroup"})
    src_ip_addr: str = attr.ib(default="", validator=_v(_string),
                               metadata={"json": "SrcIpAddr"})
    dst_ip_addr: str = attr.ib(default="", validator=_v(_string),
                               metadata={"json": "DstIpAddr"})
    ip_protocol: int = attr.ib(default=0, validator=_v(_int_in(0, 255)),
                               metadata={"json": "IpProtocol"})
    src_port: int = attr.ib(default=0, validator=_v(_int_in(0, 65535)),
                            metadata={"json": "SrcPort"})
    dst_port: int = attr.ib(default=0, validator=_v(_int_in(0, 65535)),
                            metadata={"json": "DstPort"})
    tcp_flags: str = attr.ib(default="", validator=_v(_string),
                             metadata={"json": "TcpFlags"})
    action: str = attr.ib(default="allow",
                          validator=_v(_one_of("allow", "deny")),
                          metadata={"json": "Action"})

    def json_id(self) -> str:
        return ""

    @property
    def id(self) -> str:
        return self.rule_id

    @property
    def key(self) -> str:
        return f"{POLICY_RULES}/{self.rule_id}"


@attr.s(frozen=True, kw_only=True)
class ServiceInfo(Model):
    """A service-registry entry (objdb.ServiceInfo), kept alive by TTL."""

    has_id = False

    service_name: str = attr.ib(validator=_v(_string),
                                metadata={"json": "ServiceName"})
    role: str = attr.ib(default="", validator=_v(_string),
                        metadata={"json": "Role"})
    version: str = attr.ib(default="", validator=_v(_string),
                           metadata={"json": "Version"})
    ttl: int = attr.ib(default=10, validator=_v(_int_in(1, 3600)),
                       metadata={"json": "TTL"})
    host_addr: str = attr.ib(validator=_v(_ipv4_or_empty),
                             metadata={"json": "HostAddr"})
    port: int = attr.ib(validator=_v(_int_in(0, 65535)),
                        metadata={"json": "Port"})
    hostname: str = attr.ib(default="", validator=_v(_string),
                            metadata={"json": "Hostname"})

    @property
    def id(self) -> str:
        return f"{self.service_name}/{self.host_addr}:{self.port}"

    @property
    def key(self) -> str:
        return f"{SERVICES}/{self.id}"


def service_prefix(name: str) -> str:
    """The registry directory of one service, like C{netplugin.vtep}."""
    return f"{SERVICES}/{name}"
