"""
The status server: JSON over HTTP on C{--status-listen} (loopback by
default), for operators, Prometheus and C{contivctl status}.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import attr
from klein import Klein
from twisted.internet.defer import Deferred, TimeoutError, succeed
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.server import Site

from contivd import model
from contivd.constants import VXLAN_BRIDGE
from contivd.metrics import CONTENT_TYPE_LATEST, metrics_for
from contivd.reaper import reclaim_endpoint
from contivd.store.base import KeyMissing
from contivd.supervisor import RUNNING, Component

if TYPE_CHECKING:
    from contivd.agent import Agent


def _json(request: Any, value: Any, code: int = 200) -> bytes:
    request.setResponseCode(code)
    request.setHeader(b"content-type", b"application/json")
    return json.dumps(value, indent=1, sort_keys=True).encode() + b"\n"


#: Seconds the switch has to answer a PORT_STATS request for /svcstats.
STATS_DEADLINE = 5.0


class StatusError(Exception):
    """A request the status server answers with an error code."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def _port_stats(stats: Any) -> dict[str, int]:
    """
    Contiv's PortStats of an endpoint's port: C{PacketsIn} and C{BytesIn}
    entered the bridge from the endpoint (the port's rx counters).
    """
    return {"PacketsIn": stats.rx_packets, "BytesIn": stats.rx_bytes,
            "PacketsOut": stats.tx_packets, "BytesOut": stats.tx_bytes}


class StatusApp:
    """The routes of the status server."""

    app = Klein()
    log = Logger()

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.metrics = metrics_for(agent)

    @app.route("/healthz", methods=["GET"])
    def healthz(self, request: Any) -> bytes:
        states = self.agent.supervisor.states()
        down = [s.as_dict() for s in states
                if s.status != RUNNING and s.name != "status"]
        if down:
            return _json(request, {"healthy": False, "down": down}, 503)
        return _json(request, {"healthy": True})

    @app.route("/inspect/components", methods=["GET"])
    def components(self, request: Any) -> bytes:
        return _json(request, {"components": [
            s.as_dict() for s in self.agent.supervisor.states()]})

    @app.route("/inspect/peers", methods=["GET"])
    def peers(self, request: Any) -> bytes:
        return _json(request, {"peers": [
            attr.asdict(p) for p in self.agent.peers]})

    @app.route("/inspect/endpoints", methods=["GET"])
    def endpoints(self, request: Any) -> bytes:
        renderer = getattr(self.agent, "renderer", None)
        ofports = renderer.ofports if renderer is not None else {}
        label = self.agent.config.host_label
        found = []
        for ep_id, ep in sorted(self.agent.view.kind("endpoints").items()):
            found.append({
                "id": ep_id, "network": ep.net_id, "ip": ep.ip_address,
                "mac": ep.mac_address, "host": ep.homing_host,
                "vtep": ep.vtep_ip, "local": ep.homing_host == label,
                "ofport": ofports.get(ep_id),
                "name": ep.ep_common_name, "group": ep.endpoint_group_key,
            })
        return _json(request, {"endpoints": found})

    @app.route("/inspect/driver", methods=["GET"])
    def driver(self, request: Any) -> bytes:
        controller = getattr(self.agent, "controller", None)
        renderer = getattr(self.agent, "renderer", None)
        ovsdb = self.agent.ovsdb
        return _json(request, {
            "ovsdb": {"remote": self.agent.config.ovsdb,
                      "connected": bool(ovsdb is not None
                                        and ovsdb.connected)},
            "switches": controller.status() if controller else {},
            "vteps": dict(sorted(renderer.tunnels.items()))
            if renderer else {},
            "arp_mode": self.agent.arp_mode,
            "fwd_mode": self.agent.config.fwd_mode,
        })

    @app.route("/inspect/config", methods=["GET"])
    def config(self, request: Any) -> bytes:
        return _json(request, attr.asdict(self.agent.config))

    @app.route("/svcstats", methods=["GET"])
    def svcstats(self, request: Any) -> Deferred[bytes]:
        """Per local endpoint, keyed by its IP: its port's counters."""
        d = Deferred.fromCoroutine(self._svcstats())
        return d.addCallback(lambda value: _json(request, value))

    async def _svcstats(self) -> dict[str, Any]:
        connection = self.agent.controller.switch(VXLAN_BRIDGE).connection
        if connection is None or not connection.is_up:
            raise StatusError(503, f"{VXLAN_BRIDGE} is not connected to "
                              "the controller; no counters to read")
        # The dump itself must not be cancelled: its reply may still come,
        # and the connection would then answer a Deferred already fired.
        d: Deferred[list] = Deferred()

        def answered(result: Any) -> None:
            if d.called:
                return
            if isinstance(result, Failure):
                d.errback(result)
            else:
                d.callback(result)

        connection.dump_ports().addBoth(answered)
        d.addTimeout(STATS_DEADLINE, self.agent.reactor)
        try:
            by_port = {s.port_no: s for s in await d}
        except TimeoutError:
            raise StatusError(504, (
                f"{VXLAN_BRIDGE} did not answer PORT_STATS within "
                f"{STATS_DEADLINE:.0f} s")) from None
        renderer = getattr(self.agent, "renderer", None)
        ofports = renderer.ofports if renderer is not None else {}
        found = {}
        for ep_id, ep in sorted(self._local_endpoints().items()):
            ofport = ofports.get(ep_id)
            stats = by_port.get(ofport)
            found[ep.ip_address or ep_id] = {
                "EndpointIP": ep.ip_address, "EndpointID": ep_id,
                "Network": ep.net_id, "OfPort": ofport,
                "PortStats": _port_stats(stats) if stats else None,
            }
        return found

    def _local_endpoints(self) -> dict[str, Any]:
        label = self.agent.config.host_label
        return {ep_id: ep for ep_id, ep in
                self.agent.view.kind("endpoints").items()
                if ep.homing_host == label}

    @app.route("/metrics", methods=["GET"])
    def prometheus(self, request: Any) -> bytes:
        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode())
        return self.metrics.exposition()

    @app.route("/debug/reclaimEndpoint/<string:ep_id>",
               methods=["DELETE"])
    def reclaim(self, request: Any, ep_id: str) -> Deferred[bytes]:
        """Remove an endpoint from etcd, and from OVS when it is ours."""
        d = Deferred.fromCoroutine(self._reclaim(ep_id))
        return d.addCallback(lambda value: _json(request, value))

    async def _reclaim(self, ep_id: str) -> dict[str, Any]:
        endpoint = await self._find_endpoint(ep_id)
        local = endpoint.homing_host == self.agent.config.host_label
        self.log.info("reclaiming endpoint {ep} ({ip}, host {host}) on "
                      "request", ep=endpoint.id, ip=endpoint.ip_address,
                      host=endpoint.homing_host)
        await reclaim_endpoint(self.agent.store, endpoint)
        unplugged = False
        if local:
            unplugged = await self._unplug(endpoint.id)
        return {"reclaimed": endpoint.id, "ip": endpoint.ip_address,
                "network": endpoint.net_id, "host": endpoint.homing_host,
                "local": local, "unplugged": unplugged}

    async def _find_endpoint(self, ep_id: str) -> model.Endpoint:
        endpoints = self.agent.view.kind("endpoints")
        if ep_id in endpoints:
            return endpoints[ep_id]
        same = [ep for ep in endpoints.values() if ep.endpoint_id == ep_id]
        if len(same) > 1:
            raise StatusError(409, (
                f"endpoint id {ep_id} is in networks "
                f"{', '.join(sorted(ep.net_id for ep in same))}; give "
                "NETWORK-ID as /inspect/endpoints shows it"))
        if same:
            return same[0]
        try:
            node = await self.agent.store.get(f"{model.ENDPOINTS}/{ep_id}")
        except KeyMissing:
            raise StatusError(404, (
                f"no endpoint {ep_id} (neither in this agent's view nor "
                "in etcd); see /inspect/endpoints")) from None
        return model.Endpoint.from_json(node.value)

    async def _unplug(self, ep_id: str) -> bool:
        renderer = getattr(self.agent, "renderer", None)
        if renderer is not None:
            renderer.ofports.pop(ep_id, None)
        client = self.agent.ovsdb
        if client is None:
            self.log.warn("endpoint {ep}: OVSDB is away; its port goes "
                          "when the ovsdb component next reconciles",
                          ep=ep_id)
            return False
        try:
            return bool(await client.unplug_endpoint(VXLAN_BRIDGE, ep_id))
        except Exception as e:
            raise StatusError(500, (
                f"endpoint {ep_id} is gone from etcd, but unplugging its "
                f"port failed ({e}); the ovsdb component removes the port "
                "when it next reconciles")) from e

    @app.handle_errors(Exception)
    def error(self, request: Any, failure: Any) -> bytes:
        from werkzeug.exceptions import HTTPException

        if failure.check(HTTPException):
            code = failure.value.code
            valid = getattr(failure.value, "valid_methods", None)
            if valid:
                request.setHeader(b"allow", ", ".join(valid).encode())
            return _json(request, {"error": failure.value.description},
                         code)
        if failure.check(StatusError):
            return _json(request, {"error": str(failure.value)},
                         failure.value.code)
        self.log.failure("{method} {path} failed", failure,
                         method=request.method.decode(),
                         path=request.path.decode("utf-8", "replace"))
        return _json(request, {"error": str(failure.value)
                               or type(failure.value).__name__}, 500)


class _QuietSite(Site):
    """A Site that does not log every request (health probes are many)."""

    def log(self, request: Any) -> None:
        pass


class StatusServer(Component):
    """Listens on C{--status-listen} and serves L{StatusApp}."""

    name = "status"

    def __init__(self, agent: Agent) -> None:
        super().__init__()
        self.agent = agent
        self.routes = StatusApp(agent)
        self._port: IListeningPort | None = None

    def start(self) -> Deferred[None]:
        endpoint = serverFromString(self.agent.reactor,
                                    self.agent.config.status_listen)
        site = _QuietSite(self.routes.app.resource())
        site.noisy = False
        d = endpoint.listen(site)

        def listening(port: IListeningPort) -> None:
            self._port = port
            self.log.info("status server on {address}",
                          address=port.getHost())

        d.addCallback(listening)
        return d

    def stop(self) -> Deferred[None]:
        port, self._port = self._port, None
        if port is None:
            return succeed(None)
        stopped = port.stopListening()
        return stopped if stopped is not None else succeed(None)
