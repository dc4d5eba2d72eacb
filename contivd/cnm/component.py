"""
The Docker components: C{docker} serves the plugin socket that Docker
finds as driver C{contiv}; C{docknets} mirrors networks into Docker.
"""

from __future__ import annotations

import os
import stat
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import UNIXServerEndpoint
from twisted.internet.interfaces import IListeningPort
from twisted.internet.task import LoopingCall
from twisted.web.server import Site

from contivd.cnm.api import DriverAPI, PluginApp
from contivd.cnm.dockernets import DockerClient, Mirror
from contivd.cnm.driver import Driver, ReservationSweep
from contivd.errors import ConfigError
from contivd.model import NETS
from contivd.supervisor import Component

if TYPE_CHECKING:
    from contivd.agent import Agent
    from contivd.store.watch import Watcher

#: The socket's name is the driver's name in C{docker network create -d}.
SOCKET_NAME = "contiv.sock"
SOCKET_MODE = 0o660
#: Seconds between sweeps of addresses requested but never used.
SWEEP_INTERVAL = 60.0


def socket_path(plugin_dir: str) -> str:
    return os.path.join(plugin_dir, SOCKET_NAME)


def remove_stale_socket(path: str) -> None:
    """
    Remove a socket left at C{path} by an agent that is gone.

    @raise ConfigError: when something other than a socket is there.
    """
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise ConfigError(
            f"--docker-plugin-dir: {path} exists and is not a socket; "
            "remove it or choose another directory")
    os.unlink(path)


class DockerPlugin(Component):
    """
    The libnetwork remote driver (network and IPAM) on
    C{<--docker-plugin-dir>/contiv.sock}, mode 0660; it starts once the
    ovsdb component runs, when the agent has one.
    """

    name = "docker"

    def __init__(self, agent: Agent) -> None:
        super().__init__()
        self.agent = agent
        config = agent.config
        renderer = getattr(agent, "renderer", None)
        self.driver = Driver(
            lambda: agent.store, config.host_label, config.vtep_ip,
            lambda: getattr(agent, "ovsdb", None), config.datapath,
            on_plugged=getattr(renderer, "port_up", None))
        self.app = PluginApp(DriverAPI(self.driver), agent.reactor)
        self.path = socket_path(config.docker_plugin_dir)
        self._port: IListeningPort | None = None
        self.sweep: ReservationSweep | None = None
        self._sweeping: LoopingCall | None = None

    def start(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._start())

    def _sweep_once(self) -> Deferred[list[str] | None]:
        if self.sweep is None:
            self.sweep = ReservationSweep(self.agent.store,
                                          self.agent.config.host_label)
        return self.sweep.sweep().addErrback(lambda f: self.log.warn(
            "sweeping unused addresses failed: {error}", error=f.value))

    async def _start(self) -> None:
        await self.agent.wait_for(self, "ovsdb")
        os.makedirs(os.path.dirname(self.path), mode=0o755, exist_ok=True)
        remove_stale_socket(self.path)
        site = Site(self.app.resource())
        site.noisy = False
        endpoint = UNIXServerEndpoint(self.agent.reactor, self.path,
                                      mode=SOCKET_MODE)
        self._port = await endpoint.listen(site)
        os.chmod(self.path, SOCKET_MODE)
        self._sweeping = LoopingCall(self._sweep_once)
        self._sweeping.clock = self.agent.reactor
        self._sweeping.start(SWEEP_INTERVAL, now=False)
        self.log.info("Docker plugin contiv listening on {path}",
                      path=self.path)

    def stop(self) -> Deferred[None]:
        if self._sweeping is not None and self._sweeping.running:
            self._sweeping.stop()
        self._sweeping = None
        port, self._port = self._port, None
        if port is None:
            return succeed(None)
        stopping = port.stopListening()
        d = succeed(None) if stopping is None else stopping

        def removed(_: Any) -> None:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
            self.log.info("Docker plugin socket {path} removed",
                          path=self.path)

        d.addCallback(removed)
        return d


class DockerNetworks(Component):
    """
    Mirrors etcd's networks into the Docker at C{--docker}, after the
    plugin socket is up (Docker calls the plugin while it creates one).
    """

    name = "docknets"

    def __init__(self, agent: Agent, docker: DockerClient | None = None
                 ) -> None:
        super().__init__()
        self.agent = agent
        self.docker = docker or DockerClient(agent.reactor,
                                             agent.config.docker)
        self.mirror: Mirror | None = None
        self._watch: Watcher | None = None

    def start(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._start())

    async def _start(self) -> None:
        await self.agent.wait_for(self, "docker", why=", its plugin socket")
        store = self.agent.store
        self.waiting_for("the networks in etcd")
        listing = await store.list(NETS)
        mirror = Mirror(store, self.docker, self.agent.config.host_label,
                        self.agent.reactor)
        self.mirror = mirror
        mirror.start(listing.values())
        self._watch = store.watch(NETS, mirror.changed, listing)
        self.log.info("mirroring {count} networks into Docker at {docker}",
                      count=len(mirror.networks),
                      docker=self.agent.config.docker)

    def stop(self) -> Deferred[None]:
        if self._watch is not None:
            self._watch.stop()
        self._watch = None
        if self.mirror is not None:
            self.mirror.stop()
        self.mirror = None
        return succeed(None)
