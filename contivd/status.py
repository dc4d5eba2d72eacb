"""
The status server: JSON over HTTP on C{--status-listen} (loopback by
default), for operators and for C{contivctl status}.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import attr
from klein import Klein
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort
from twisted.web.server import Site

from contivd.supervisor import RUNNING, Component

if TYPE_CHECKING:
    from contivd.agent import Agent


def _json(request: Any, value: Any, code: int = 200) -> bytes:
    request.setResponseCode(code)
    request.setHeader(b"content-type", b"application/json")
    return json.dumps(value, indent=1, sort_keys=True).encode() + b"\n"


class StatusApp:
    """The routes of the status server."""

    app = Klein()

    def __init__(self, agent: Agent) -> None:
        self.agent = agent

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

    @app.handle_errors(Exception)
    def error(self, request: Any, failure: Any) -> bytes:
        from werkzeug.exceptions import HTTPException

        if failure.check(HTTPException):
            code = failure.value.code
            return _json(request, {"error": failure.value.description},
                         code)
        return _json(request, {"error": str(failure.value)}, 500)


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
        return port.stopListening()
