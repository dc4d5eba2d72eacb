"""
Cluster membership: this agent's registration in etcd's service
registry, with a TTL it keeps refreshing, and the discovery of its
peers (the other agents' VTEPs).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Optional

import attr
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from contivd.errors import ValidationError
from contivd.model import ServiceInfo, service_prefix
from contivd.store.base import Listing, Store, StoreError
from contivd.supervisor import Component

if TYPE_CHECKING:
    from contivd.agent import Agent
    from contivd.store.base import Event
    from contivd.store.watch import Watcher

AGENT_SERVICE = "netplugin"
VTEP_SERVICE = "netplugin.vtep"
TTL = 10


@attr.s(frozen=True, auto_attribs=True)
class Peer:
    """Another agent, as this one sees it: its VTEP and its name."""

    vtep_ip: str
    port: int
    hostname: str


class Registration:
    """
    Keeps this agent's entries in the registry: written with a TTL and
    rewritten every TTL/3; written again as soon as etcd answers after
    an outage; removed on a clean stop.
    """

    log = Logger()

    def __init__(self, store: Store, clock: IReactorTime,
                 entries: list[ServiceInfo]) -> None:
        self._store = store
        self._clock = clock
        self.entries = entries
        self._loop: Optional[LoopingCall] = None
        self.registered = False

    def start(self) -> Deferred[None]:
        """Write the entries now, then keep refreshing them."""
        self._loop = LoopingCall(self._refresh)
        self._loop.clock = self._clock
        self._loop.start(TTL / 3.0, now=False)
        return self._refresh()

    def _refresh(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._write())

    async def _write(self) -> None:
        results = await DeferredList(
            [self._store.put(e.key, e.to_json(), ttl=e.ttl)
             for e in self.entries], consumeErrors=True)
        failures = [r for ok, r in results if not ok]
        if failures:
            if self.registered:
                self.log.warn("registration refresh failed: {reason}",
                              reason=str(getattr(failures[0], "value",
                                                 failures[0])))
            self.registered = False
            return
        if not self.registered:
            self.log.info("registered {keys} with a {ttl} s TTL",
                          keys=", ".join(e.key for e in self.entries),
                          ttl=TTL)
        self.registered = True

    def stop(self) -> Deferred[None]:
        """Stop refreshing and remove our entries (while they are ours)."""
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        self.registered = False
        return Deferred.fromCoroutine(self._remove())

    async def _remove(self) -> None:
        for entry in self.entries:
            try:
                await self._store.compare_delete(entry.key, entry.to_json())
            except StoreError:
                pass


class PeerDiscovery:
    """
    Turns the registry's C{netplugin.vtep} entries into peer-added and
    peer-removed calls, once per real change, leaving this agent out.

    The watch survives etcd restarts, and re-reads the registry when
    its index is too old (the store's L{Watcher} does both).
    """

    log = Logger()

    def __init__(self, store: Store, own_vtep: str,
                 on_added: Callable[[Peer], Any],
                 on_removed: Callable[[Peer], Any]) -> None:
        self._store = store
        self._own_vtep = own_vtep
        self._on_added = on_added
        self._on_removed = on_removed
        self.peers: dict[str, Peer] = {}
        self._watcher: Optional["Watcher"] = None

    def start(self) -> Deferred[None]:
        """Read the current peers, report them, then watch for changes."""
        return Deferred.fromCoroutine(self._start())

    async def _start(self) -> None:
        self._listed(await self._store.list(service_prefix(VTEP_SERVICE)))

    def _listed(self, listing: Listing) -> None:
        for node in listing.nodes:
            self._seen(node.key, node.value)
        self._watcher = self._store.watch(
            service_prefix(VTEP_SERVICE), self._event, listing)

    def _event(self, event: "Event") -> None:
        if event.value is None:
            self._gone(event.key)
        else:
            self._seen(event.key, event.value)

    def _seen(self, key: str, value: str) -> None:
        try:
            entry = ServiceInfo.from_json(value)
        except ValidationError as e:
            self.log.warn("skipping malformed registry entry {key}: "
                          "{reason}", key=key, reason=str(e))
            return
        if entry.host_addr == self._own_vtep:
            return
        peer = Peer(entry.host_addr, entry.port, entry.hostname)
        old = self.peers.get(key)
        if old == peer:
            return
        if old is not None:
            self._removed(key, old)
        self.peers[key] = peer
        self.log.info("peer {host} ({vtep}) joined", host=peer.hostname,
                      vtep=peer.vtep_ip)
        self._on_added(peer)

    def _gone(self, key: str) -> None:
        peer = self.peers.pop(key, None)
        if peer is not None:
            self._removed(key, peer)

    def _removed(self, key: str, peer: Peer) -> None:
        self.peers.pop(key, None)
        self.log.info("peer {host} ({vtep}) left", host=peer.hostname,
                      vtep=peer.vtep_ip)
        self._on_removed(peer)

    def stop(self) -> None:
        if self._watcher is not None:
            self._watcher.stop()
            self._watcher = None


def agent_entries(agent: "Agent") -> list[ServiceInfo]:
    """This agent's two registry entries, as Contiv wrote them."""
    config = agent.config
    return [
        ServiceInfo(service_name=AGENT_SERVICE, host_addr=config.ctrl_ip,
                     port=status_port(config.status_listen),
                     hostname=config.host_label),
        ServiceInfo(service_name=VTEP_SERVICE, host_addr=config.vtep_ip,
                     port=config.vxlan_port, hostname=config.host_label),
    ]


def status_port(endpoint: str) -> int:
    """The port number of a C{tcp:PORT:...} endpoint string, else 0."""
    parts = endpoint.split(":")
    for part in parts[1:]:
        if part.isdigit():
            return int(part)
    return 0


class Cluster(Component):
    """
    The cluster component: once the global config is there, register
    and discover peers; peers go into the agent's model.
    """

    name = "cluster"

    def __init__(self, agent: "Agent") -> None:
        super().__init__()
        self.agent = agent
        self.registration: Optional[Registration] = None
        self.discovery: Optional[PeerDiscovery] = None

    async def _start(self) -> None:
        await self.agent.wait_for(self, "globals")
        store = self.agent.store
        peers = self.agent.peers
        self.discovery = PeerDiscovery(store, self.agent.config.vtep_ip,
                                       peers.add, peers.remove)
        await self.discovery.start()
        self.registration = Registration(store, self.agent.reactor,
                                         agent_entries(self.agent))
        await self.registration.start()

    def start(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._start())

    def stop(self) -> Deferred[None]:
        if self.discovery is not None:
            self.discovery.stop()
            self.discovery = None
        registration, self.registration = self.registration, None
        if registration is None:
            return succeed(None)
        return registration.stop()

