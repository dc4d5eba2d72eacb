"""
The agent's shared context: the configuration, the reactor, the store,
the view of the cluster, and the components under one supervisor, each
able to find the others.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import LoopingCall
from twisted.python.failure import Failure

from contivd.cluster import Peer
from contivd.constants import DATAPATH_IDS, VXLAN_BRIDGE
from contivd.errors import ContivError
from contivd.options import AgentConfig
from contivd.store.base import Store
from contivd.supervisor import RUNNING, Component, Supervisor
from contivd.view import ClusterView, ObservedSet

#: Seconds of unanswered etcd requests before the store component says
#: it is down (the status server then answers 503).
UNREACHABLE_GRACE = 3.0


class StoreConnection(Component):
    """
    The etcd connection: runs once etcd has answered a first read.

    Calls made through the store retry on their own while etcd is away,
    so the other components never see this one fail.
    """

    name = "store"

    def __init__(self, agent: "Agent") -> None:
        super().__init__()
        self.agent = agent
        self._health: LoopingCall | None = None

    def start(self) -> Deferred[None]:
        self.waiting_for("etcd at " + ", ".join(self.agent.config.etcd))
        return Deferred.fromCoroutine(self._first_read())

    async def _first_read(self) -> None:
        await self.agent.store.list("/contiv.io/master/config")
        self._health = LoopingCall(self._check)
        self._health.clock = self.agent.reactor
        self._health.start(1.0, now=False)

    def _check(self) -> None:
        since = getattr(self.agent.store, "unreachable_since", None)
        if since is not None and (self.agent.reactor.seconds() - since
                                  >= UNREACHABLE_GRACE):
            self.crashed(ContivError(
                "etcd at " + ", ".join(self.agent.config.etcd)
                + " does not answer; calls are retried until it does"))

    def stop(self) -> Deferred[None]:
        health, self._health = self._health, None
        if health is not None and health.running:
            health.stop()
        return succeed(None)


class Agent:
    """
    Builds and holds the components of one agent.

    @ivar supervisor: the MultiService that twistd runs.
    @ivar peers: the other agents, as discovery reports them.
    """

    def __init__(self, config: AgentConfig, reactor: Any,
                 on_fatal: Callable[[Failure], None],
                 store: Optional[Store] = None) -> None:
        self.config = config
        self.reactor = reactor
        self.supervisor = Supervisor(reactor, on_fatal)
        self._store = store
        self.peers: ObservedSet[Peer] = ObservedSet()
        self.view = ClusterView()
        self.arp_mode = "proxy"
        #: The OVSDB client while the ovsdb component runs.
        self.ovsdb: Any = None
        #: The agent's Prometheus metrics (L{contivd.metrics}), made on
        #: first use.
        self.metrics: Any = None

    @property
    def store(self) -> Store:
        """The cluster store, made on first use."""
        if self._store is None:
            from contivd.store.etcd import EtcdStore

            self._store = EtcdStore(self.config.etcd, self.reactor)
        return self._store

    def component(self, name: str) -> Optional[Component]:
        """The component called C{name}, if the agent has one."""
        return self.supervisor.components.get(name)

    async def wait_for(self, waiter: Component, *names: str,
                       why: str = "") -> None:
        """
        Return once each of the components C{names} that the agent has
        runs, C{waiter} saying meanwhile which one it waits for.
        """
        for name in names:
            other = self.component(name)
            if other is not None and other.state.status != RUNNING:
                waiter.waiting_for(f"the {name} component{why}")
                await other.state.when_running()

    def build(self) -> None:
        """Add the components, in the design's start order."""
        from contivd.cluster import Cluster
        from contivd.datapath import (
            OpenFlowComponent,
            OVSDBComponent,
            Renderer,
        )
        from contivd.globals import GlobalConfig
        from contivd.openflow.controller import OpenFlowController
        from contivd.reaper import Reaper
        from contivd.status import StatusServer
        from contivd.sync import Sync

        # Only the VXLAN bridge is made and programmed (see the README's
        # known limits), so it is the only switch the controller expects.
        self.controller = OpenFlowController(
            self.reactor, {VXLAN_BRIDGE: DATAPATH_IDS[VXLAN_BRIDGE]})
        self.renderer = Renderer(self, self.view, self.controller)
        add = self.supervisor.add
        add(StoreConnection(self))
        add(Cluster(self))
        add(GlobalConfig(self))
        add(OVSDBComponent(self, self.renderer))
        add(OpenFlowComponent(self, self.controller))
        add(Sync(self, self.view))
        add(Reaper(self))
        if self.config.plugin_mode == "docker":
            from contivd.cnm.component import DockerNetworks, DockerPlugin
            from contivd.metrics import timed_docker_calls

            plugin = DockerPlugin(self)
            timed = timed_docker_calls(self, plugin.app.dispatch,
                                       self.reactor)
            plugin.app.dispatch = timed  # type: ignore[method-assign]
            add(plugin)
            add(DockerNetworks(self))
        add(StatusServer(self))

    def reinit_datapath(self, reason: str) -> None:
        """Restart the datapath components, which re-read everything."""
        for name in ("ovsdb", "openflow"):
            component = self.component(name)
            if component is not None:
                component.crashed(RuntimeError(reason))

    def arp_mode_changed(self, mode: str) -> None:
        """Take a new ARP mode from the global config."""
        self.arp_mode = mode
