"""
Endpoint veth pairs through pyroute2: their names, MTU, MAC and TX
checksum offload. These calls block; run them off the reactor thread.

Each call takes C{netns}, a named network namespace to work in instead of
the calling thread's own (as tests with a private OVS need).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import subprocess
from typing import Iterator, Optional

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError
from twisted.logger import Logger

from contivd.constants import VXLAN_OVERHEAD
from contivd.errors import Conflict, ContivError

log = Logger()

#: Longest interface name the kernel takes (IFNAMSIZ less the NUL).
MAX_NAME = 15

#: Prefixes of the host (OVS) end and the container end of our veths.
OVS_PREFIX = "vv"
CONTAINER_PREFIX = "vp"

_HASH_DIGITS = 12
_IFF_UP = 0x1
_DEFAULT_MTU = 1500


class LinkError(ContivError):
    """A network interface could not be created, changed or removed."""


@contextlib.contextmanager
def namespace(netns: Optional[str]) -> Iterator[None]:
    """
    Run the block with the calling thread in network namespace C{netns}
    (a name under /run/netns), then return it where it was.
    """
    if netns is None:
        yield
        return
    from pyroute2.netns import setns

    saved = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        try:
            setns(netns, flags=0)
        except OSError as e:
            raise LinkError(
                f"cannot enter network namespace {netns}: {e}; check that "
                f"/run/netns/{netns} exists") from e
        try:
            yield
        finally:
            setns(saved)
    finally:
        os.close(saved)


def port_names(endpoint_id: str) -> tuple[str, str]:
    """
    The interface names of an endpoint's veth pair: the end that goes on
    the bridge and the end the runtime moves into the container.

    Both are derived from a hash of C{endpoint_id}, so they are the same
    after a restart, and fit the kernel's 15 characters.
    """
    if not endpoint_id:
        raise ValueError("endpoint_id: give a non-empty endpoint id")
    digest = hashlib.sha256(endpoint_id.encode("utf-8")).hexdigest()
    short = digest[:_HASH_DIGITS]
    return OVS_PREFIX + short, CONTAINER_PREFIX + short


def _is_ours(name: str) -> bool:
    return (len(name) == len(OVS_PREFIX) + _HASH_DIGITS
            and name.startswith((OVS_PREFIX, CONTAINER_PREFIX)))


def _kind(link) -> Optional[str]:
    info = link.get_attr("IFLA_LINKINFO")
    if info is None:
        return None
    return info.get_attr("IFLA_INFO_KIND")


def lowest_host_mtu(netns: Optional[str] = None) -> int:
    """
    The lowest MTU of the host's links that are up, leaving out loopback,
    tap devices and the veths contivd made; 1500 when there is none.
    """
    with namespace(netns):
        lowest = None
        with IPRoute() as ipr:
            for link in ipr.get_links():
                name = link.get_attr("IFLA_IFNAME")
                if name == "lo" or _is_ours(name):
                    continue
                if not link["flags"] & _IFF_UP or _kind(link) == "tun":
                    continue
                mtu = link.get_attr("IFLA_MTU")
                if mtu and (lowest is None or mtu < lowest):
                    lowest = mtu
        return _DEFAULT_MTU if lowest is None else lowest


def default_endpoint_mtu(overhead: int = VXLAN_OVERHEAD,
                         netns: Optional[str] = None) -> int:
    """The MTU of an endpoint: the lowest host MTU less C{overhead}."""
    return lowest_host_mtu(netns=netns) - overhead


def link_exists(name: str, netns: Optional[str] = None) -> bool:
    """Whether an interface called C{name} exists in this namespace."""
    with namespace(netns):
        with IPRoute() as ipr:
            return bool(ipr.link_lookup(ifname=name))


def link_info(name: str, netns: Optional[str] = None) -> Optional[dict]:
    """
    The kind, MTU, MAC address and up flag of interface C{name}, or
    L{None} when it does not exist.
    """
    with namespace(netns):
        with IPRoute() as ipr:
            found = ipr.link_lookup(ifname=name)
            if not found:
                return None
            link = ipr.get_links(found[0])[0]
            return {
                "kind": _kind(link),
                "mtu": link.get_attr("IFLA_MTU"),
                "mac": link.get_attr("IFLA_ADDRESS"),
                "up": bool(link["flags"] & _IFF_UP),
            }


def create_veth(host_name: str, peer_name: str, mtu: int,
                mac: Optional[str] = None,
                tx_checksum_off: bool = False,
                netns: Optional[str] = None) -> None:
    """
    Create a veth pair: C{host_name} up, for the bridge, and C{peer_name}
    down with C{mac}, for the runtime to move into the container. Both
    ends get C{mtu}; with C{tx_checksum_off} both have TX checksum
    offload turned off, which the userspace datapath needs.

    @raise Conflict: when C{host_name} or C{peer_name} exists already.
    @raise LinkError: when the kernel refuses a step; nothing is left.
    """
    with namespace(netns):
        for name in (host_name, peer_name):
            if len(name) > MAX_NAME:
                raise ValueError(
                    f"{name!r} is longer than {MAX_NAME} characters; use "
                    "port_names() to derive interface names")
        with IPRoute() as ipr:
            for name in (host_name, peer_name):
                if ipr.link_lookup(ifname=name):
                    raise Conflict(
                        f"interface {name} exists already; remove it "
                        f"(ip link del {name}) or use another endpoint id")
            try:
                ipr.link("add", ifname=host_name, kind="veth",
                         peer={"ifname": peer_name})
            except NetlinkError as e:
                raise LinkError(
                    f"could not create veth pair {host_name}/{peer_name}: "
                    f"{e}; check that this process has CAP_NET_ADMIN") from e
            try:
                _configure(ipr, host_name, peer_name, mtu, mac)
                if tx_checksum_off:
                    set_tx_checksum_off(host_name)
                    set_tx_checksum_off(peer_name)
            except BaseException:
                _delete(ipr, host_name)
                raise
        log.debug("created veth {host}/{peer} mtu {mtu} mac {mac}",
                  host=host_name, peer=peer_name, mtu=mtu, mac=mac)


def _configure(ipr: IPRoute, host_name: str, peer_name: str, mtu: int,
               mac: Optional[str]) -> None:
    host = ipr.link_lookup(ifname=host_name)[0]
    peer = ipr.link_lookup(ifname=peer_name)[0]
    try:
        ipr.link("set", index=peer, mtu=mtu)
        if mac:
            ipr.link("set", index=peer, address=mac)
        ipr.link("set", index=host, mtu=mtu, state="up")
    except NetlinkError as e:
        raise LinkError(
            f"could not set MTU {mtu} and MAC {mac} on veth "
            f"{host_name}/{peer_name}: {e}; check that the MTU is within "
            "68..65535 and the MAC is a unicast address") from e


def _delete(ipr: IPRoute, name: str) -> bool:
    found = ipr.link_lookup(ifname=name)
    if not found:
        return False
    try:
        ipr.link("del", index=found[0])
    except NetlinkError as e:
        if e.code == errno.ENODEV:
            return False
        raise LinkError(f"could not delete interface {name}: {e}") from e
    return True


def delete_veth(host_name: str, netns: Optional[str] = None) -> bool:
    """
    Delete the veth pair whose host end is C{host_name} (the kernel
    removes both ends); whether there was one. An interface of that name
    that is not a veth is left alone.
    """
    with namespace(netns):
        with IPRoute() as ipr:
            found = ipr.link_lookup(ifname=host_name)
            if not found:
                return False
            link = ipr.get_links(found[0])[0]
            if _kind(link) != "veth":
                log.warn("not deleting {name}: it is a {kind}, not a veth",
                         name=host_name, kind=_kind(link))
                return False
            deleted = _delete(ipr, host_name)
        if deleted:
            log.debug("deleted veth {name}", name=host_name)
        return deleted


def set_tx_checksum_off(name: str, netns: Optional[str] = None) -> None:
    """
    Turn TX checksum offload off on interface C{name}, like
    C{ethtool -K NAME tx off}: through pyroute2's ethtool, or by running
    ethtool when that fails.

    @raise LinkError: when neither works.
    """
    with namespace(netns):
        try:
            _tx_off_pyroute2(name)
            return
        except Exception as e:
            log.debug("pyroute2 ethtool failed on {name}: {error}; running "
                      "ethtool", name=name, error=e)
        try:
            result = subprocess.run(["ethtool", "-K", name, "tx", "off"],
                                    capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise LinkError(
                f"could not turn TX checksum offload off on {name}: {e}; "
                "install ethtool") from e
        if result.returncode != 0:
            raise LinkError(
                f"ethtool -K {name} tx off failed: {result.stderr.strip()}")


def _tx_off_pyroute2(name: str) -> None:
    from pyroute2.ethtool import Ethtool

    with Ethtool() as ethtool:
        features = ethtool.get_features(name)
        changed = False
        for feature in features.features.values():
            if (feature.name.startswith("tx-checksum")
                    and feature.available and feature.enable):
                feature.enable = False
                changed = True
        if changed:
            ethtool.set_features(name, features)
        left = [f.name for f in ethtool.get_features(name).features.values()
                if f.name.startswith("tx-checksum") and f.enable
                and f.available]
    if left:
        raise LinkError(f"{name} still has {', '.join(left)} on")


def tx_checksum_on(name: str, netns: Optional[str] = None) -> bool:
    """Whether any TX checksum offload feature of C{name} is on."""
    with namespace(netns):
        from pyroute2.ethtool import Ethtool

        with Ethtool() as ethtool:
            return any(f.enable for f in ethtool.get_features(name)
                       .features.values() if f.name.startswith("tx-checksum"))
