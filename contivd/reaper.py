"""
Dead hosts: after a host's registration has been gone for a grace
period, one surviving agent (the one that takes a lock first) reclaims
that host's endpoints in etcd, so that their names and addresses can be
taken again.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger

from contivd import ipam, model
from contivd.constants import ETCD_ROOT
from contivd.store.base import KeyExists, KeyMissing, Store, StoreError
from contivd.supervisor import Component

if TYPE_CHECKING:
    from contivd.agent import Agent
    from contivd.cluster import Peer

log = Logger()

LOCK_PREFIX = ETCD_ROOT + "/lock/reclaim"
#: Seconds the reclaim lock of one dead host is held.
LOCK_TTL = 60


async def reclaim_endpoint(store: Store, endpoint: model.Endpoint) -> None:
    """
    Remove an endpoint from etcd: its config, its oper state and its
    address, each only while it is still this endpoint's.
    """
    for key in (endpoint.key, f"{model.OPER_ENDPOINTS}/{endpoint.id}"):
        try:
            await store.delete(key)
        except KeyMissing:
            pass
    if endpoint.ip_address:
        await ipam.release_address(store, endpoint.net_id,
                                   endpoint.ip_address, endpoint.id)


class Reaper(Component):
    """
    Watches for hosts that hold endpoints but no registration, and
    reclaims their endpoints once the grace period has passed.
    """

    name = "reaper"

    def __init__(self, agent: "Agent") -> None:
        super().__init__()
        self.agent = agent
        self._timers: dict[str, Any] = {}
        self.reclaimed: dict[str, int] = {}

    async def _start(self) -> None:
        await self.agent.wait_for(self, "sync", "cluster")
        self.agent.peers.observe(self._peer_back, self._peer_gone)
        for host in self._dead_hosts():
            self._schedule(host)

    def start(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._start())

    def _alive(self) -> set[str]:
        alive = {p.hostname for p in self.agent.peers}
        alive.add(self.agent.config.host_label)
        return alive

    def _dead_hosts(self) -> set[str]:
        homes = {ep.homing_host
                 for ep in self.agent.view.kind("endpoints").values()}
        homes.discard("")
        return homes - self._alive()

    def _peer_back(self, peer: "Peer") -> None:
        timer = self._timers.pop(peer.hostname, None)
        if timer is not None and timer.active():
            timer.cancel()

    def _peer_gone(self, peer: "Peer") -> None:
        if peer.hostname and peer.hostname not in self._alive():
            self._schedule(peer.hostname)

    def _schedule(self, host: str) -> None:
        if host in self._timers and self._timers[host].active():
            return
        grace = self.agent.config.dead_host_grace
        log.info("host {host} is not registered; reclaiming its "
                 "endpoints in {grace:.0f} s unless it returns",
                 host=host, grace=grace)
        self._timers[host] = self.agent.reactor.callLater(
            grace, lambda: Deferred.fromCoroutine(self._reclaim(host)))

    async def _reclaim(self, host: str) -> None:
        self._timers.pop(host, None)
        if host in self._alive():
            return
        store = self.agent.store
        try:
            await store.create(f"{LOCK_PREFIX}/{host}",
                               self.agent.config.host_label, ttl=LOCK_TTL)
        except KeyExists:
            log.info("another agent reclaims the endpoints of {host}",
                     host=host)
            return
        endpoints = [ep for ep in self.agent.view.kind("endpoints").values()
                     if ep.homing_host == host]
        count = 0
        for endpoint in endpoints:
            try:
                await reclaim_endpoint(store, endpoint)
                count += 1
            except StoreError as e:
                log.warn("reclaiming {ep} of dead host {host} failed: "
                         "{reason}", ep=endpoint.id, host=host, reason=e)
        self.reclaimed[host] = count
        log.info("reclaimed {count} endpoints of dead host {host}",
                 count=count, host=host)

    def stop(self) -> Deferred[None]:
        self.agent.peers.unobserve(self._peer_back)
        for timer in self._timers.values():
            if timer.active():
                timer.cancel()
        self._timers.clear()
        return succeed(None)
