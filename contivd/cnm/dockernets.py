"""
The mirror of contiv networks into the local Docker: each network in
etcd becomes a Docker network of driver and IPAM C{contiv}, made and
removed through the Docker Engine API, never inside a plugin call.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import attr
import treq
from treq.client import HTTPClient
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.endpoints import UNIXClientEndpoint
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import Agent
from twisted.web.iweb import IAgentEndpointFactory
from zope.interface import implementer

from contivd.cnm.driver import (
    OPT_NETWORK,
    OPT_TENANT,
    DockNet,
    docknet_prefix,
)
from contivd.errors import ContivError, ValidationError
from contivd.model import DEFAULT_TENANT, Network
from contivd.store.base import Event, Store

log = Logger()

DRIVER = "contiv"
#: The label that marks a Docker network as a mirror, with the net id.
LABEL = "io.contiv.network"
API_VERSION = "v1.41"
#: Deadline of one Docker API call, in seconds.
DOCKER_DEADLINE = 10.0


class DockerError(ContivError):
    """A Docker API call failed; the message has Docker's answer."""

    def __init__(self, message: str, code: int = 0) -> None:
        super().__init__(message)
        self.code = code


@implementer(IAgentEndpointFactory)
class _UnixEndpoints:
    def __init__(self, reactor: Any, path: str) -> None:
        self._reactor = reactor
        self._path = path

    def endpointForURI(self, uri: Any) -> UNIXClientEndpoint:
        return UNIXClientEndpoint(self._reactor, self._path,
                                  timeout=DOCKER_DEADLINE)


@attr.s(frozen=True, auto_attribs=True)
class DockerNetwork:
    """A Docker network as the Engine API lists it."""

    id: str
    name: str
    driver: str
    labels: dict


class DockerClient:
    """
    The few Engine API calls the mirror needs, over C{--docker}
    (C{unix:///PATH} or C{tcp://HOST:PORT}), each with a deadline.
    """

    def __init__(self, reactor: Any, address: str,
                 deadline: float = DOCKER_DEADLINE,
                 http: HTTPClient | None = None) -> None:
        self.address = address
        self.deadline = deadline
        if http is not None:
            self._http = http
            self._base = "http://docker"
        elif address.startswith("unix://"):
            agent = Agent.usingEndpointFactory(
                reactor, _UnixEndpoints(reactor, address[len("unix://"):]))
            self._http = HTTPClient(agent)
            self._base = "http://docker"
        else:
            self._http = HTTPClient(Agent(reactor))
            self._base = "http://" + address.split("://", 1)[1]
        self._base += "/" + API_VERSION

    async def _call(self, method: str, path: str,
                    body: Any = None) -> Any:
        what = f"{method} {path}"
        kwargs: dict[str, Any] = {"timeout": self.deadline}
        if body is not None:
            kwargs["data"] = json.dumps(body).encode()
            kwargs["headers"] = {b"content-type": [b"application/json"]}
        try:
            response = await self._http.request(method, self._base + path,
                                                **kwargs)
            text = await treq.text_content(response, "utf-8")
        except CancelledError:
            raise DockerError(f"Docker at {self.address} did not answer "
                              f"{what} within {self.deadline:.0f} s") \
                from None
        except Exception as e:
            raise DockerError(f"Docker at {self.address} is unreachable "
                              f"({what}: {e})") from None
        if response.code >= 300:
            try:
                message = json.loads(text).get("message", text)
            except (ValueError, AttributeError):
                message = text
            raise DockerError(f"Docker refused {what} ({response.code}): "
                              f"{message.strip()}", response.code)
        return json.loads(text) if text.strip() else None

    def networks(self) -> Deferred[list[DockerNetwork]]:
        """The networks of driver C{contiv}."""
        filters = quote(json.dumps({"driver": [DRIVER]}))

        async def listed() -> list[DockerNetwork]:
            found = await self._call("GET", f"/networks?filters={filters}")
            return [DockerNetwork(n["Id"], n["Name"], n.get("Driver", ""),
                                  n.get("Labels") or {})
                    for n in found or []]

        return Deferred.fromCoroutine(listed())

    def create_network(self, network: Network) -> Deferred[str]:
        """Make the mirror of C{network}; its Docker id."""
        opts = {OPT_NETWORK: network.network_name, OPT_TENANT: network.tenant}
        pool: dict[str, str] = {"Subnet": str(network.subnet)}
        if network.gateway:
            pool["Gateway"] = network.gateway
        body = {
            "Name": docker_name(network), "CheckDuplicate": True,
            "Driver": DRIVER, "Attachable": True, "Options": opts,
            "IPAM": {"Driver": DRIVER, "Config": [pool], "Options": opts},
            "Labels": {LABEL: network.id},
        }

        async def created() -> str:
            answer = await self._call("POST", "/networks/create", body)
            return str(answer["Id"])

        return Deferred.fromCoroutine(created())

    def remove_network(self, docker_id: str) -> Deferred[None]:
        """Remove a Docker network; one already gone is not an error."""
        async def removed() -> None:
            try:
                await self._call("DELETE", f"/networks/{docker_id}")
            except DockerError as e:
                if e.code != 404:
                    raise

        return Deferred.fromCoroutine(removed())


def docker_name(network: Network) -> str:
    """The Docker name of a mirror: the network, and a tenant not default."""
    if network.tenant == DEFAULT_TENANT:
        return network.network_name
    return f"{network.network_name}.{network.tenant}"


class Mirror:
    """
    Keeps the local Docker's contiv networks equal to etcd's networks.

    Every change of C{/contiv.io/state/nets/} marks the mirror dirty; one
    pass at a time compares and applies the difference, and a failed
    pass (dockerd away, say) is retried with jittered backoff.
    """

    initial_delay = 0.5
    max_delay = 30.0

    def __init__(self, store: Store, docker: DockerClient, host: str,
                 clock: Any, rand: Callable[[], float] = random.random
                 ) -> None:
        self.store = store
        self.docker = docker
        self.host = host
        self.clock = clock
        self._rand = rand
        self.networks: dict[str, Network] = {}
        self._running = False
        self._busy = False
        self._dirty = False
        self._failures = 0
        self._retry: IDelayedCall | None = None
        self._pass: Deferred[None] | None = None

    def start(self, nodes: dict[str, str]) -> None:
        """Take the networks of a listing, then mirror them."""
        self._running = True
        for key, value in nodes.items():
            self._take(key, value)
        self.kick()

    def stop(self) -> None:
        self._running = False
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        if self._pass is not None:
            self._pass.cancel()

    def _take(self, key: str, value: str | None) -> None:
        if value is None:
            self.networks.pop(key, None)
            return
        try:
            self.networks[key] = Network.from_json(value)
        except ValidationError as e:
            log.warn("not mirroring {key}: {error}", key=key, error=e)
            self.networks.pop(key, None)

    def changed(self, event: Event) -> None:
        """A watch event of the networks' directory."""
        self._take(event.key, event.value)
        self.kick()

    def kick(self) -> None:
        """Run a pass now, or after the one running."""
        if not self._running:
            return
        if self._busy:
            self._dirty = True
            return
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        self._busy = True
        self._dirty = False
        self._pass = Deferred.fromCoroutine(self._reconcile())
        self._pass.addBoth(self._passed)

    def _passed(self, result: Any) -> None:
        self._busy = False
        self._pass = None
        if not self._running:
            return
        if isinstance(result, Failure):
            error = result.value
            self._failures += 1
            delay = min(self.max_delay,
                        self.initial_delay * 2 ** (self._failures - 1))
            delay *= 1.0 - 0.5 * self._rand()
            log.warn("mirroring networks into Docker failed ({error}); "
                     "retrying in {delay:.1f} s", error=error, delay=delay)
            self._retry = self.clock.callLater(delay, self.kick)
            return
        self._failures = 0
        if self._dirty:
            self.kick()

    async def _own_docker_networks(self) -> set[str]:
        listing = await self.store.list(docknet_prefix(self.host))
        out = set()
        for node in listing.nodes:
            try:
                mapping = DockNet.from_json(node.value)
            except ValidationError:
                continue
            if mapping.created_by_docker:
                out.add(mapping.net_id)
        return out

    async def _reconcile(self) -> None:
        # The wanted networks are taken before the mappings are read: a
        # network Docker made has its mapping written before it exists.
        wanted = {n.id: n for n in self.networks.values()}
        present = await self.docker.networks()
        made_by_docker = await self._own_docker_networks()
        mirrored: dict[str, DockerNetwork] = {}
        errors = []
        for found in present:
            net_id = found.labels.get(LABEL)
            if net_id is None:
                continue
            if net_id not in wanted:
                log.info("removing Docker network {name}: contiv network "
                         "{net} is gone", name=found.name, net=net_id)
                try:
                    await self.docker.remove_network(found.id)
                except DockerError as e:
                    errors.append(str(e))
            else:
                mirrored[net_id] = found
        for net_id, network in sorted(wanted.items()):
            if net_id in mirrored or net_id in made_by_docker:
                continue
            try:
                docker_id = await self.docker.create_network(network)
            except DockerError as e:
                errors.append(str(e))
                continue
            log.info("contiv network {net} is Docker network {name} "
                     "({docker})", net=net_id, name=docker_name(network),
                     docker=docker_id)
        if errors:
            raise DockerError("; ".join(errors))
