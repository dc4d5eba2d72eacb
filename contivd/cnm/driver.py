"""
What Docker's network and IPAM calls do to etcd and Open vSwitch: each
call idempotent, and each multi-step call undone when a step fails.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import attr
from twisted.internet.defer import Deferred, DeferredLock
from twisted.logger import Logger

from contivd import ipam
from contivd.constants import ETCD_ROOT, VLAN_BRIDGE, VXLAN_BRIDGE
from contivd.errors import Conflict, ContivError, NotFound, ValidationError
from contivd.model import (
    DEFAULT_TENANT,
    ENDPOINTS,
    NETS,
    OPER_ENDPOINTS,
    Endpoint,
    Network,
    OperEndpoint,
    check_name,
    mac_for,
    network_id,
    network_key,
    parse_subnet,
)
from contivd.ovsdb import veth
from contivd.store.base import CompareFailed, KeyExists, KeyMissing, Store

log = Logger()

#: Per host, each Docker network id and the contiv network it stands for.
DOCKNETS = ETCD_ROOT + "/oper/docknet"
#: The option (driver C{-o} and IPAM C{--ipam-opt}) naming the network.
OPT_NETWORK = "network"
OPT_TENANT = "tenant"
OPT_ENCAP = "encap"
OPT_TAG = "pkt-tag"
#: Where libnetwork puts the driver's C{-o} options in CreateNetwork.
GENERIC = "com.docker.network.generic"
ADDRESS_TYPE = "RequestAddressType"
GATEWAY_TYPE = "com.docker.network.gateway"
#: The prefix Docker gives the container end when it moves it in.
DST_PREFIX = "eth"


def docknet_prefix(host: str) -> str:
    """The directory of one host's Docker network ids."""
    return f"{DOCKNETS}/{host}"


def docknet_key(host: str, docker_id: str) -> str:
    """The key that maps one Docker network id of C{host}."""
    return f"{docknet_prefix(host)}/{docker_id}"


@attr.s(frozen=True, auto_attribs=True, kw_only=True)
class DockNet:
    """
    One Docker network of this host and the contiv network behind it.

    @ivar created_by_docker: whether Docker's CreateNetwork made the
        contiv network (then DeleteNetwork removes it again).
    """

    docker_id: str
    network_name: str
    tenant: str = DEFAULT_TENANT
    created_by_docker: bool = False

    @property
    def net_id(self) -> str:
        return network_id(self.network_name, self.tenant)

    def to_json(self) -> str:
        return json.dumps({
            "id": f"{self.tenant}.{self.network_name}",
            "tenantName": self.tenant, "networkName": self.network_name,
            "serviceName": "", "docknetUUID": self.docker_id,
            "createdByDocker": self.created_by_docker})

    @classmethod
    def from_json(cls, text: str) -> DockNet:
        """
        Read a stored mapping.

        @raise ValidationError: when it is not one.
        """
        try:
            data = json.loads(text)
            return cls(docker_id=str(data["docknetUUID"]),
                       network_name=str(data["networkName"]),
                       tenant=str(data.get("tenantName") or DEFAULT_TENANT),
                       created_by_docker=bool(data.get("createdByDocker")))
        except (ValueError, KeyError, TypeError, AttributeError):
            raise ValidationError(
                "docknet", f"{text!r} is not a Docker network mapping; "
                "delete the key and recreate the Docker network") from None


@attr.s(frozen=True, auto_attribs=True)
class Pool:
    """An IPAM pool: the id later calls name it by, and its subnet."""

    pool_id: str
    pool: str


@attr.s(frozen=True, auto_attribs=True)
class PoolRef:
    """What a PoolID says: the contiv network (if named) and the subnet."""

    net_id: str
    subnet: ipaddress.IPv4Network

    def pool_id(self) -> str:
        if self.net_id:
            return f"{self.net_id}|{self.subnet}"
        return str(self.subnet)


def parse_pool_id(pool_id: str) -> PoolRef:
    """
    A PoolID as L{Driver.request_pool} made it: C{NET.TENANT|CIDR}, or
    C{CIDR} for a pool that names no network.

    @raise ValidationError: for any other string.
    """
    net_id, sep, cidr = pool_id.rpartition("|")
    try:
        subnet = parse_subnet("PoolID", cidr)
    except ValidationError:
        raise ValidationError(
            "PoolID", f"{pool_id!r} is not a pool of the contiv IPAM "
            "driver (NET.TENANT|CIDR or CIDR); create the Docker network "
            "with --ipam-driver contiv") from None
    if sep and net_id.count(".") != 1:
        raise ValidationError(
            "PoolID", f"{pool_id!r} names no network as NET.TENANT")
    return PoolRef(net_id, subnet)


@attr.s(frozen=True, auto_attribs=True)
class JoinInfo:
    """What Join answers: the interface to move and the gateway."""

    src_name: str
    gateway: str


def reservation(host: str) -> str:
    """
    The holder of an address that RequestAddress gave on C{host} and no
    endpoint has claimed yet (CreateEndpoint swaps in its endpoint id).
    """
    return f"docker:{host}"


def endpoint_id(net_id: str, docker_endpoint: str) -> str:
    """The contiv id of a Docker endpoint, as Contiv made it."""
    return f"{net_id}-{docker_endpoint}"


def _names(options: dict[str, Any], where: str) -> tuple[str, str] | None:
    name = options.get(OPT_NETWORK)
    tenant = options.get(OPT_TENANT) or DEFAULT_TENANT
    if name is None:
        return None
    check_name(f"{where} {OPT_NETWORK}", name)
    check_name(f"{where} {OPT_TENANT}", tenant)
    return name, tenant


def _unicast_mac(field: str, value: str) -> str:
    """A MAC in lower case, checked to be one a container can carry."""
    mac = value.strip().lower()
    parts = mac.split(":")
    if len(parts) != 6 or not all(
            len(p) == 2 and all(c in "0123456789abcdef" for c in p)
            for p in parts):
        raise ValidationError(field, f"{value!r} is not a MAC address "
                              "(like 02:02:0a:09:01:05)")
    if int(parts[0], 16) & 1:
        raise ValidationError(field, f"{value} is a multicast MAC; give "
                              "a unicast one")
    return mac


def _plain_ip(field: str, value: str) -> str:
    """C{10.1.1.2/24} or C{10.1.1.2} as C{10.1.1.2}."""
    try:
        return str(ipaddress.IPv4Interface(value).ip)
    except ValueError:
        raise ValidationError(field, f"{value!r} is not an IPv4 address "
                              "(like 10.1.1.2/24)") from None


_T = TypeVar("_T")


def _run(coroutine: Coroutine[Deferred[Any], Any, _T]) -> Deferred[_T]:
    return Deferred.fromCoroutine(coroutine)


class Driver:
    """
    The network and IPAM driver of one host.

    @param store: the store, or what gives it when first needed (the
        agent makes its store on first use).
    @param ovsdb: gives the connected OVSDB client, or L{None} while
        there is none.
    @param on_plugged: told each new local port (endpoint id, OpenFlow
        port), so that flows need not wait for a port scan.
    """

    def __init__(self, store: Store | Callable[[], Store], host: str,
                 vtep_ip: str, ovsdb: Callable[[], Any],
                 datapath: str = "system",
                 on_plugged: Callable[[str, int], None] | None = None
                 ) -> None:
        self._store = store
        self.host = host
        self.vtep_ip = vtep_ip
        self._ovsdb = ovsdb
        self.tx_checksum_off = datapath == "netdev"
        self._on_plugged = on_plugged
        self._locks: dict[tuple[str, str], DeferredLock] = {}

    @property
    def store(self) -> Store:
        """The store, or the one the callable given for it gives now."""
        if isinstance(self._store, Store):
            return self._store
        return self._store()

    # Lookups.

    async def _network(self, net_id: str) -> Network:
        name, _, tenant = net_id.partition(".")
        try:
            node = await self.store.get(network_key(name, tenant))
        except KeyMissing:
            raise NotFound(
                f"contiv network {net_id} does not exist; create it with "
                f"contivctl net create {name}, or with docker network "
                "create -d contiv --ipam-driver contiv") from None
        return Network.from_json(node.value)

    async def _networks_with(self, subnet: ipaddress.IPv4Network
                             ) -> list[Network]:
        listing = await self.store.list(NETS)
        found = []
        for node in listing.nodes:
            try:
                net = Network.from_json(node.value)
            except ValidationError:
                continue
            if net.subnet == subnet:
                found.append(net)
        return found

    async def _pool_network(self, ref: PoolRef) -> Network | None:
        if ref.net_id:
            net = await self._network(ref.net_id)
            if net.subnet != ref.subnet:
                raise ValidationError(
                    "PoolID", f"network {net.id} has subnet {net.subnet}, "
                    f"not {ref.subnet}; recreate the Docker network")
            return net
        nets = await self._networks_with(ref.subnet)
        if len(nets) > 1:
            raise Conflict(
                f"networks {', '.join(n.id for n in nets)} all have subnet "
                f"{ref.subnet}; name one with --ipam-opt network=NAME")
        return nets[0] if nets else None

    async def _docknet(self, docker_id: str) -> DockNet:
        try:
            node = await self.store.get(docknet_key(self.host, docker_id))
        except KeyMissing:
            raise NotFound(
                f"Docker network {docker_id} is not a contiv network of "
                f"host {self.host}; remove it and create it again with "
                "-d contiv") from None
        return DockNet.from_json(node.value)

    def _client(self, what: str) -> Any:
        client = self._ovsdb()
        if client is None:
            raise ContivError(
                f"cannot {what}: the agent is not connected to OVSDB yet; "
                "retry in a moment, or check the ovsdb component in "
                "contivctl status")
        return client

    @staticmethod
    def _bridge(network: Network) -> str:
        if network.pkt_tag_type == "vlan":
            return VLAN_BRIDGE
        return VXLAN_BRIDGE

    # IPAM.

    def request_pool(self, pool: str, sub_pool: str,
                     options: dict[str, str], v6: bool) -> Deferred[Pool]:
        """Name the pool of a new Docker network, checking what it asks."""
        return _run(self._request_pool(pool, sub_pool, options, v6))

    async def _request_pool(self, pool: str, sub_pool: str,
                            options: dict[str, str], v6: bool) -> Pool:
        if v6:
            raise ValidationError(
                "V6", "the contiv IPAM driver gives IPv4 addresses only; "
                "create the network without --ipv6")
        names = _names(options, "--ipam-opt")
        net_id = network_id(*names) if names else ""
        existing = None
        if names:
            try:
                existing = await self._network(net_id)
            except NotFound:
                existing = None
        if pool:
            subnet = parse_subnet("Pool", pool)
        elif existing is not None:
            subnet = existing.subnet
        else:
            raise ValidationError(
                "Pool", "is missing: give the network a --subnet (or "
                "--ipam-opt network=NAME of an existing contiv network)")
        if existing is not None and existing.subnet != subnet:
            raise ValidationError(
                "Pool", f"{subnet} is not the subnet of network {net_id} "
                f"({existing.subnet}); give --subnet {existing.subnet}")
        if sub_pool and parse_subnet("SubPool", sub_pool) != subnet:
            raise ValidationError(
                "SubPool", f"{sub_pool}: the contiv IPAM driver does not "
                "take --ip-range; leave it out")
        ref = PoolRef(net_id, subnet)
        log.info("pool {pool} for {net}", pool=ref.pool_id(),
                 net=net_id or "a new network")
        return Pool(ref.pool_id(), str(subnet))

    def release_pool(self, pool_id: str) -> Deferred[None]:
        """Nothing is held per pool; check the id and agree."""
        parse_pool_id(pool_id)
        return _run(self._nothing())

    async def _nothing(self) -> None:
        return None

    def request_address(self, pool_id: str, address: str,
                        options: dict[str, str]) -> Deferred[str]:
        """
        The gateway of the pool's network, or an address allocated for
        an endpoint (C{address} when given); as C{ip/len}.
        """
        return _run(self._request_address(pool_id, address, options))

    async def _request_address(self, pool_id: str, address: str,
                               options: dict[str, str]) -> str:
        ref = parse_pool_id(pool_id)
        wanted = _plain_ip("Address", address) if address else None
        if wanted is not None \
                and ipaddress.IPv4Address(wanted) not in ref.subnet:
            raise ValidationError(
                "Address", f"{wanted} is outside the pool {ref.subnet}")
        if "/" in address and ipaddress.IPv4Interface(
                address).network.prefixlen != ref.subnet.prefixlen:
            raise ValidationError(
                "Address", f"{address} has another prefix length than the "
                f"pool {ref.subnet}; give the address alone or with "
                f"/{ref.subnet.prefixlen}")
        network = await self._pool_network(ref)
        suffix = f"/{ref.subnet.prefixlen}"
        if options.get(ADDRESS_TYPE) == GATEWAY_TYPE:
            return self._gateway(ref, network, wanted) + suffix
        if network is None:
            raise NotFound(
                f"no contiv network has subnet {ref.subnet}; create the "
                "Docker network with -d contiv --ipam-driver contiv")
        ip = await ipam.allocate_address(self.store, network,
                                         reservation(self.host), wanted)
        log.info("address {ip} of {net} requested", ip=ip, net=network.id)
        return ip + suffix

    @staticmethod
    def _gateway(ref: PoolRef, network: Network | None,
                 wanted: str | None) -> str:
        if network is None:
            return wanted or str(ref.subnet.broadcast_address - 1)
        if not network.gateway:
            raise ValidationError(
                "RequestAddressType", f"network {network.id} has no "
                "gateway; recreate it with --gateway")
        if wanted is not None and wanted != network.gateway:
            raise ValidationError(
                "Address", f"{wanted} is not the gateway of network "
                f"{network.id} ({network.gateway}); give --gateway "
                f"{network.gateway} or none")
        return network.gateway

    def release_address(self, pool_id: str, address: str) -> Deferred[None]:
        """Free an address RequestAddress gave (not the gateway)."""
        return _run(self._release_address(pool_id, address))

    async def _release_address(self, pool_id: str, address: str) -> None:
        ref = parse_pool_id(pool_id)
        ip = _plain_ip("Address", address)
        network = await self._pool_network(ref)
        if network is None or ip == network.gateway:
            return
        freed = await ipam.release_address(self.store, network.id, ip,
                                           reservation(self.host))
        if freed:
            log.info("address {ip} of {net} released", ip=ip,
                     net=network.id)

    # Networks.

    def create_network(self, docker_id: str, options: dict[str, Any],
                       pools: list[tuple[str, str]]) -> Deferred[None]:
        """
        Map a new Docker network to its contiv network, creating that in
        etcd unless it exists.

        @param pools: each IPv4 pool and gateway (CIDR strings).
        """
        return _run(self._create_network(docker_id, options, pools))

    async def _create_network(self, docker_id: str, options: dict[str, Any],
                              pools: list[tuple[str, str]]) -> None:
        generic = options.get(GENERIC) or {}
        if not isinstance(generic, dict):
            raise ValidationError(f"Options.{GENERIC}",
                                  "is not a map of driver options")
        names = _names(generic, "-o")
        if names is None:
            names = (f"docker-{docker_id[:12]}", DEFAULT_TENANT)
        mapping = DockNet(docker_id=docker_id, network_name=names[0],
                          tenant=names[1])
        key = docknet_key(self.host, docker_id)
        try:
            known = DockNet.from_json((await self.store.get(key)).value)
        except KeyMissing:
            known = None
        if known is not None and known.net_id == mapping.net_id:
            return
        try:
            network = await self._network(mapping.net_id)
        except NotFound:
            network = None
        if network is not None:
            self._check_pools(network, pools)
            await self.store.put(key, mapping.to_json())
        else:
            # The mapping goes first: the network mirror, told of the new
            # contiv network, must find that Docker made it, or it makes
            # a second Docker network of the same name.
            mapping = attr.evolve(mapping, created_by_docker=True)
            await self.store.put(key, mapping.to_json())
            try:
                network = await self._new_network(mapping, generic, pools)
            except BaseException:
                await self._delete_keys(key)
                raise
        log.info("Docker network {docker} is contiv network {net}{how}",
                 docker=docker_id, net=network.id,
                 how=" (created)" if mapping.created_by_docker else "")

    @staticmethod
    def _check_pools(network: Network, pools: list[tuple[str, str]]) -> None:
        for pool, gateway in pools:
            if pool and parse_subnet("IPv4Data.Pool", pool) \
                    != network.subnet:
                raise ValidationError(
                    "IPv4Data.Pool", f"{pool} is not the subnet of "
                    f"network {network.id} ({network.subnet}); give "
                    f"--subnet {network.subnet}")
            if gateway and network.gateway and _plain_ip(
                    "IPv4Data.Gateway", gateway) != network.gateway:
                raise ValidationError(
                    "IPv4Data.Gateway", f"{gateway} is not the gateway "
                    f"of network {network.id} ({network.gateway})")

    async def _new_network(self, mapping: DockNet, generic: dict[str, Any],
                           pools: list[tuple[str, str]]) -> Network:
        from contivd.ctl.main import net_create

        if not pools or not pools[0][0]:
            raise ValidationError(
                "IPv4Data", f"network {mapping.net_id} does not exist and "
                "Docker gave no subnet; give --subnet")
        if len(pools) > 1:
            raise ValidationError(
                "IPv4Data", "a contiv network has one IPv4 subnet; give "
                "one --subnet")
        pool, gateway = pools[0]
        encap = str(generic.get(OPT_ENCAP) or "vxlan")
        raw_tag = generic.get(OPT_TAG) or 0
        try:
            tag = int(raw_tag)
        except (TypeError, ValueError):
            raise ValidationError(f"-o {OPT_TAG}", f"{raw_tag!r} is not "
                                  "a number") from None
        network = Network.build(
            mapping.network_name, pool,
            _plain_ip("IPv4Data.Gateway", gateway) if gateway else None,
            tenant=mapping.tenant, encap=encap, tag=tag)
        return await net_create(self.store, network, tag_given=bool(tag))

    async def _remove_network(self, name: str, tenant: str) -> None:
        from contivd.ctl.main import net_rm

        try:
            await net_rm(self.store, name, tenant)
        except (NotFound, KeyMissing):
            return
        except Conflict as e:
            log.warn("keeping contiv network {net}: {why}",
                     net=network_id(name, tenant), why=e)

    def delete_network(self, docker_id: str) -> Deferred[None]:
        """Forget a Docker network; remove the contiv one if it made it."""
        return _run(self._delete_network(docker_id))

    async def _delete_network(self, docker_id: str) -> None:
        key = docknet_key(self.host, docker_id)
        try:
            node = await self.store.get(key)
        except KeyMissing:
            return
        mapping = DockNet.from_json(node.value)
        if mapping.created_by_docker:
            await self._remove_network(mapping.network_name, mapping.tenant)
        try:
            await self.store.compare_delete(key, node.value)
        except (KeyMissing, CompareFailed):
            pass
        log.info("Docker network {docker} (contiv network {net}) removed",
                 docker=docker_id, net=mapping.net_id)

    # Endpoints.

    def create_endpoint(self, docker_id: str, docker_endpoint: str,
                        address: str, mac: str) -> Deferred[str | None]:
        """
        Claim the address, plug a veth pair into the bridge, and write
        the endpoint (oper, then config) to etcd.

        @return: a Deferred firing with the MAC to answer, or L{None}
            when Docker gave one.
        """
        return _run(self._one_at_a_time(
            (docker_id, docker_endpoint), lambda: self._create_endpoint(
                docker_id, docker_endpoint, address, mac)))

    async def _one_at_a_time(self, key: tuple[str, str],
                             work: Callable[[], Awaitable[_T]]) -> _T:
        """
        Run C{work} for one endpoint only after the calls for it before
        (Docker retries a slow call while the first is still running).
        """
        lock = self._locks.setdefault(key, DeferredLock())
        await lock.acquire()
        try:
            return await work()
        finally:
            lock.release()
            if not lock.locked and not lock.waiting:
                self._locks.pop(key, None)

    async def _create_endpoint(self, docker_id: str, docker_endpoint: str,
                               address: str, mac: str) -> str | None:
        if not address:
            raise ValidationError(
                "Interface.Address", "is missing: the contiv driver needs "
                "an IPv4 address; use --ipam-driver contiv")
        ip = _plain_ip("Interface.Address", address)
        if mac:
            mac = _unicast_mac("Interface.MacAddress", mac)
        mapping = await self._docknet(docker_id)
        network = await self._network(mapping.net_id)
        if ipaddress.IPv4Address(ip) not in network.subnet:
            raise ValidationError(
                "Interface.Address", f"{ip} is outside {network.subnet} "
                f"of network {network.id}")
        if ip in network.reserved():
            raise ValidationError(
                "Interface.Address", f"{ip} is the network, broadcast or "
                f"gateway address of {network.id}; give an endpoint "
                "address")
        ep_id = endpoint_id(network.id, docker_endpoint)
        use_mac = mac or mac_for(ip)
        if await self._exists_as(network, docker_endpoint, ip, use_mac,
                                 given_mac=bool(mac)):
            return None if mac else use_mac
        undo: list[Callable[[], Awaitable[Any]]] = []
        try:
            undo.append(await self._claim(network, ip, ep_id))
            undo.append(await self._plug(network, ep_id, use_mac))
            undo.append(await self._write_endpoint(network, ep_id, ip,
                                                   use_mac))
        except BaseException as e:
            log.warn("creating endpoint {ep} failed ({error}); undoing "
                     "{n} steps", ep=ep_id, error=e, n=len(undo))
            for step in reversed(undo):
                try:
                    await step()
                except Exception:
                    log.failure("undoing a step of endpoint {ep} failed",
                                ep=ep_id)
            raise
        log.info("endpoint {ep} created: {ip} {mac}", ep=ep_id, ip=ip,
                 mac=use_mac)
        return None if mac else use_mac

    async def _exists_as(self, network: Network, docker_endpoint: str,
                         ip: str, mac: str, given_mac: bool) -> bool:
        """
        Whether the endpoint exists already with this address and MAC (a
        repeated call, answered alike and changing nothing).

        @raise Conflict: when it exists with another address or MAC, or
            another endpoint of the network has the MAC Docker gave (a
            MAC made from the address is as unique as the address).
        """
        key = Endpoint(net_id=network.id, endpoint_id=docker_endpoint).key
        for node in (await self.store.list(ENDPOINTS)).nodes:
            try:
                other = Endpoint.from_json(node.value)
            except ValidationError:
                continue
            if other.net_id != network.id:
                continue
            if node.key == key:
                if (other.ip_address, other.mac_address) == (ip, mac):
                    return True
                raise Conflict(
                    f"endpoint {other.id} exists with {other.ip_address} "
                    f"and {other.mac_address}; delete it before creating "
                    f"it again with {ip} and {mac}")
            if given_mac and other.mac_address == mac:
                raise Conflict(
                    f"MAC {mac} is taken by endpoint {other.id} of network "
                    f"{network.id}; give another MAC or none")
        return False

    async def _claim(self, network: Network, ip: str,
                     ep_id: str) -> Callable[[], Awaitable[Any]]:
        key = ipam.address_key(network.id, ip)
        token = reservation(self.host)
        try:
            await self.store.swap(key, ep_id, token)
        except KeyMissing:
            try:
                await self.store.create(key, ep_id)
            except KeyExists:
                return await self._claim(network, ip, ep_id)

            async def unclaim_created() -> None:
                await ipam.release_address(self.store, network.id, ip,
                                           ep_id)
            return unclaim_created
        except CompareFailed:
            holder = (await self.store.get(key)).value
            if holder != ep_id:
                raise ipam.AddressTaken(
                    f"{ip} of network {network.id} is held by {holder}; "
                    "ask for another address or none") from None

        async def unclaim() -> None:
            await self._unclaim(network.id, ip, ep_id)
        return unclaim

    async def _unclaim(self, net_id: str, ip: str, ep_id: str) -> None:
        try:
            await self.store.swap(ipam.address_key(net_id, ip),
                                  reservation(self.host), ep_id)
        except (KeyMissing, CompareFailed):
            pass

    async def _plug(self, network: Network, ep_id: str,
                    mac: str) -> Callable[[], Awaitable[Any]]:
        client = self._client(f"plug endpoint {ep_id}")
        bridge = self._bridge(network)

        async def unplug() -> None:
            await client.unplug_endpoint(bridge, ep_id)

        try:
            plugged = await client.plug_endpoint(
                bridge, ep_id, mac=mac,
                tx_checksum_off=self.tx_checksum_off)
        except BaseException:
            # A plug that timed out waiting for its OpenFlow port has
            # left the port row (and perhaps the veth) behind.
            try:
                await unplug()
            except Exception as e:
                log.warn("could not remove the half-made port of {ep}: "
                         "{error}", ep=ep_id, error=e)
            raise
        if self._on_plugged is not None:
            self._on_plugged(ep_id, plugged.ofport)
        return unplug

    async def _write_endpoint(self, network: Network, ep_id: str, ip: str,
                              mac: str) -> Callable[[], Awaitable[Any]]:
        docker_endpoint = ep_id[len(network.id) + 1:]
        ovs_name, container_name = veth.port_names(ep_id)
        oper = OperEndpoint(
            net_id=network.id, endpoint_id=docker_endpoint, ip_address=ip,
            mac_address=mac, homing_host=self.host, intf_name=container_name,
            port_name=ovs_name, vtep_ip=self.vtep_ip)
        config = Endpoint(
            net_id=network.id, endpoint_id=docker_endpoint, ip_address=ip,
            mac_address=mac, homing_host=self.host, intf_name=container_name,
            vtep_ip=self.vtep_ip, container_id=docker_endpoint)

        async def delete() -> None:
            await self._delete_keys(config.key, oper.key)

        await self.store.put(oper.key, oper.to_json())
        try:
            await self.store.put(config.key, config.to_json())
        except BaseException:
            await delete()
            raise
        return delete

    async def _delete_keys(self, *keys: str) -> None:
        for key in keys:
            try:
                await self.store.delete(key)
            except KeyMissing:
                pass

    async def _find_endpoint(self, docker_id: str,
                             docker_endpoint: str) -> OperEndpoint | None:
        try:
            mapping = await self._docknet(docker_id)
        except NotFound:
            mapping = None
        if mapping is not None:
            key = f"{OPER_ENDPOINTS}/" + endpoint_id(mapping.net_id,
                                                      docker_endpoint)
            try:
                return OperEndpoint.from_json(
                    (await self.store.get(key)).value)
            except KeyMissing:
                return None
        listing = await self.store.list(OPER_ENDPOINTS)
        for node in listing.nodes:
            if node.key.endswith("-" + docker_endpoint):
                oper = OperEndpoint.from_json(node.value)
                if oper.endpoint_id == docker_endpoint \
                        and oper.homing_host == self.host:
                    return oper
        return None

    def join(self, docker_id: str, docker_endpoint: str) -> Deferred[JoinInfo]:
        """The container end of the endpoint's veth, and the gateway."""
        return _run(self._join(docker_id, docker_endpoint))

    async def _join(self, docker_id: str, docker_endpoint: str) -> JoinInfo:
        oper = await self._find_endpoint(docker_id, docker_endpoint)
        if oper is None:
            raise NotFound(
                f"endpoint {docker_endpoint} of Docker network {docker_id} "
                "does not exist on this host; recreate the container")
        network = await self._network(oper.net_id)
        name = oper.intf_name or veth.port_names(oper.id)[1]
        return JoinInfo(src_name=name, gateway=network.gateway)

    def leave(self, docker_id: str, docker_endpoint: str) -> Deferred[None]:
        """Join kept nothing, so there is nothing to undo."""
        return _run(self._nothing())

    def delete_endpoint(self, docker_id: str,
                        docker_endpoint: str) -> Deferred[None]:
        """Undo CreateEndpoint: port and veth, address claim, etcd keys."""
        return _run(self._one_at_a_time(
            (docker_id, docker_endpoint),
            lambda: self._delete_endpoint(docker_id, docker_endpoint)))

    async def _delete_endpoint(self, docker_id: str,
                               docker_endpoint: str) -> None:
        oper = await self._find_endpoint(docker_id, docker_endpoint)
        if oper is None:
            return
        try:
            network = await self._network(oper.net_id)
            bridge = self._bridge(network)
        except NotFound:
            bridge = VXLAN_BRIDGE
        client = self._client(f"unplug endpoint {oper.id}")
        await client.unplug_endpoint(bridge, oper.id)
        if oper.ip_address:
            await self._unclaim(oper.net_id, oper.ip_address, oper.id)
        config_key = Endpoint(net_id=oper.net_id,
                              endpoint_id=oper.endpoint_id).key
        await self._delete_keys(config_key, oper.key)
        log.info("endpoint {ep} deleted", ep=oper.id)


class ReservationSweep:
    """
    Frees addresses that RequestAddress gave on this host but no
    endpoint claimed for a whole sweep interval: a request whose answer
    Docker never got (it retries with a new request), or an endpoint of
    another IPAM driver that was deleted. Docker claims an address
    within the same call that allocates it, so an interval of a minute
    leaves every live allocation alone.
    """

    def __init__(self, store: Store, host: str) -> None:
        self.store = store
        self.token = reservation(host)
        self._seen: dict[str, int] = {}

    def sweep(self) -> Deferred[list[str]]:
        """One pass; a Deferred firing with the address keys freed."""
        return _run(self._sweep())

    async def _sweep(self) -> list[str]:
        listing = await self.store.list(ipam.ALLOC + "/ip")
        unclaimed = {node.key: node.modified_index for node in listing.nodes
                     if node.value == self.token}
        freed = []
        for key, index in sorted(unclaimed.items()):
            if self._seen.get(key) != index:
                continue
            try:
                await self.store.compare_delete(key, self.token)
            except (KeyMissing, CompareFailed):
                continue
            freed.append(key)
            log.info("freed {key}: requested by Docker but never used",
                     key=key)
        self._seen = {k: i for k, i in unclaimed.items()
                      if k not in freed}
        return freed
