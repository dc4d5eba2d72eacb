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
        site = Site(self.routes.app.resource())
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
