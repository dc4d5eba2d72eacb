"""
The OpenFlow controller: one listener for every bridge, a L{Switch} per
bridge that keeps the switch's flows and groups equal to the desired ones.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from os_ken.ofproto import ofproto_v1_3 as ofp
from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime, IStreamServerEndpoint
from twisted.internet.protocol import Factory
from twisted.logger import Logger

from contivd.constants import DATAPATH_IDS
from contivd.errors import NotFound
from contivd.openflow import pipeline
from contivd.openflow.desired import DesiredState, Object
from contivd.openflow.flows import Flow, Group, diff_flows, diff_groups
from contivd.openflow.protocol import CODEC, OpenFlowError, OpenFlowProtocol

Renderer = Callable[[DesiredState], pipeline.Rendering]


class Switch:
    """
    One bridge as the controller sees it: the desired state, the switch's
    connection when there is one, and what we believe the switch holds.

    On every (re)connect it reads our flows (by cookie mask) and groups
    (by id range), and sends the difference from the desired ones in one
    batch closed by a barrier; changes in between go out as they come.
    """

    log = Logger()

    def __init__(self, bridge: str, datapath_id: int,
                 renderer: Renderer = pipeline.render) -> None:
        self.bridge = bridge
        self.datapath_id = datapath_id
        self.connection: OpenFlowProtocol | None = None
        self.packet_in_handler: Callable[[Switch, Any], None] | None = None
        self.resyncs = 0
        self.last_errors: list[OpenFlowError] = []
        self._render = renderer
        self._state = DesiredState()
        self._desired = renderer(self._state)
        self._generation = 0
        self._applied = -1
        self._flows: frozenset[Flow] | None = None
        self._groups: dict[int, Group] = {}
        self._working = False
        self._synced = False
        self._sync_waiters: list[defer.Deferred] = []
        self._apply_waiters: list[tuple[int, defer.Deferred]] = []

    @property
    def state(self) -> DesiredState:
        """The desired state now."""
        return self._state

    @property
    def connected(self) -> bool:
        """Whether the switch is connected and has been resynced."""
        return self._synced

    def set_state(self, state: DesiredState) -> defer.Deferred:
        """
        Make C{state} the desired state.

        @return: a L{Deferred} firing with L{None} once this state (or a
            later one) is on the switch, barrier included.
        """
        self._state = state
        self._desired = self._render(state)
        self._generation += 1
        done: defer.Deferred = defer.Deferred()
        self._apply_waiters.append((self._generation, done))
        self._kick()
        return done

    def put(self, *objects: Object) -> defer.Deferred:
        """
        Add or replace C{objects} in the desired state.

        @return: a L{Deferred} as from L{set_state}.
        """
        return self.set_state(self._state.put(*objects))

    def drop(self, *objects: Object) -> defer.Deferred:
        """
        Remove C{objects} from the desired state.

        @return: a L{Deferred} as from L{set_state}.
        """
        return self.set_state(self._state.drop(*objects))

    def when_synced(self) -> defer.Deferred:
        """
        @return: a L{Deferred} firing with this switch once it is
            connected and holds the desired flows and groups.
        """
        if self._synced:
            return defer.succeed(self)
        waiter: defer.Deferred = defer.Deferred()
        self._sync_waiters.append(waiter)
        return waiter

    def status(self) -> dict[str, Any]:
        """Connection state and counts, for the status page."""
        conn = self.connection
        counters = conn.counters if conn is not None else None
        return {
            "bridge": self.bridge,
            "datapath_id": f"{self.datapath_id:016x}",
            "connected": conn is not None,
            "synced": self._synced,
            "desired_flows": len(self._desired.flows),
            "desired_groups": len(self._desired.groups),
            "flows": len(self._flows) if self._flows is not None else None,
            "groups": len(self._groups) if self._flows is not None else None,
            "resyncs": self.resyncs,
            "messages_sent": counters.sent if counters else 0,
            "messages_received": counters.received if counters else 0,
            "errors_received": counters.errors if counters else 0,
            "last_errors": [str(e) for e in self.last_errors[-5:]],
        }

    def attach(self, connection: OpenFlowProtocol) -> None:
        """Take C{connection} as this bridge's, dropping an older one."""
        old = self.connection
        self.connection = connection
        self._flows = None
        self._synced = False
        self._applied = -1
        if old is not None and old is not connection:
            self.log.warn("bridge {bridge} connected again; dropping the "
                          "older connection", bridge=self.bridge)
            old.close()
        self._kick()

    def detach(self, connection: OpenFlowProtocol) -> None:
        """Forget C{connection}, which was lost."""
        if connection is self.connection:
            self.connection = None
            self._flows = None
            self._synced = False

    def packet_in(self, msg: Any) -> None:
        """Hand a PACKET_IN to L{packet_in_handler}."""
        if self.packet_in_handler is not None:
            self.packet_in_handler(self, msg)

    def _kick(self) -> None:
        if self._working or self.connection is None:
            return
        self._working = True
        defer.Deferred.fromCoroutine(self._work(self.connection))

    async def _work(self, connection: OpenFlowProtocol) -> None:
        try:
            if self._flows is None:
                await self._read_switch(connection)
            while (self.connection is connection
                   and self._applied < self._generation):
                await self._apply_once(connection)
        except Exception as e:
            if self.connection is connection:
                self.log.failure("bridge {bridge}: resync failed",
                                 bridge=self.bridge)
                connection.close()
            else:
                self.log.info("bridge {bridge}: connection lost while "
                              "applying changes ({why})",
                              bridge=self.bridge, why=str(e))
        finally:
            self._working = False
        if self.connection is not None and self.connection is not connection:
            self._kick()

    async def _read_switch(self, connection: OpenFlowProtocol) -> None:
        flow_stats = await connection.dump_flows(
            cookie=pipeline.COOKIE_OURS, cookie_mask=pipeline.COOKIE_MASK)
        group_stats = await connection.dump_groups()
        self._flows = frozenset(Flow.from_stats(s) for s in flow_stats)
        self._groups = {
            g.group_id: g for g in map(Group.from_stats, group_stats)
            if pipeline.is_our_group(g.group_id)}
        self.resyncs += 1
        self.log.info(
            "bridge {bridge} holds {flows} of our flows and {groups} of "
            "our groups; reconciling", bridge=self.bridge,
            flows=len(self._flows), groups=len(self._groups))

    async def _apply_once(self, connection: OpenFlowProtocol) -> None:
        generation, desired = self._generation, self._desired
        assert self._flows is not None
        messages = self._changes(desired)
        if messages:
            errors = await connection.send_batch(messages)
            if errors:
                self.last_errors = (self.last_errors + errors)[-20:]
                self.log.warn("bridge {bridge}: the switch refused {count} "
                              "of {total} changes", bridge=self.bridge,
                              count=len(errors), total=len(messages))
        if self.connection is not connection:
            return
        self._flows = desired.flows
        self._groups = dict(desired.groups)
        self._applied = generation
        self._fire_waiters()

    def _changes(self, desired: pipeline.Rendering) -> list[Any]:
        assert self._flows is not None
        flows = diff_flows(desired.flows, self._flows)
        groups = diff_groups(desired.groups, self._groups)
        order = _flow_order
        messages = [g.to_message(CODEC, ofp.OFPGC_ADD) for g in groups.add]
        messages += [g.to_message(CODEC, ofp.OFPGC_MODIFY)
                     for g in groups.modify]
        messages += [fl.to_message(CODEC, ofp.OFPFC_DELETE_STRICT)
                     for fl in sorted(flows.delete, key=order)]
        messages += [fl.to_message(CODEC, ofp.OFPFC_ADD)
                     for fl in sorted(flows.add, key=order)]
        messages += [g.to_message(CODEC, ofp.OFPGC_DELETE)
                     for g in groups.delete]
        if messages:
            self.log.debug(
                "bridge {bridge}: +{fa} -{fd} flows, +{ga} ~{gm} -{gd} "
                "groups", bridge=self.bridge, fa=len(flows.add),
                fd=len(flows.delete), ga=len(groups.add),
                gm=len(groups.modify), gd=len(groups.delete))
        return messages

    def _fire_waiters(self) -> None:
        if not self._synced:
            self._synced = True
            self.log.info("bridge {bridge} is in sync ({flows} flows, "
                          "{groups} groups)", bridge=self.bridge,
                          flows=len(self._desired.flows),
                          groups=len(self._desired.groups))
            waiters, self._sync_waiters = self._sync_waiters, []
            for waiter in waiters:
                waiter.callback(self)
        ready = [d for g, d in self._apply_waiters if g <= self._applied]
        self._apply_waiters = [(g, d) for g, d in self._apply_waiters
                               if g > self._applied]
        for waiter in ready:
            waiter.callback(None)


def _flow_order(flow: Flow) -> tuple:
    return (flow.table, -flow.priority, repr(flow.match))


class OpenFlowController(Factory):
    """
    The listener's factory: builds a connection per switch and hands it,
    once its datapath id is known, to that bridge's L{Switch}.
    """

    log = Logger()

    def __init__(self, clock: IReactorTime,
                 bridges: Mapping[str, int] = DATAPATH_IDS,
                 echo_interval: float = 5.0, liveness_timeout: float = 15.0,
                 renderer: Renderer = pipeline.render) -> None:
        self.clock = clock
        self.echo_interval = echo_interval
        self.liveness_timeout = liveness_timeout
        self.switches = {name: Switch(name, dpid, renderer)
                         for name, dpid in bridges.items()}
        self._by_dpid = {s.datapath_id: s for s in self.switches.values()}
        self.connections: set[OpenFlowProtocol] = set()

    def buildProtocol(self, addr: Any) -> OpenFlowProtocol:
        connection = OpenFlowProtocol(
            self.clock, self.echo_interval, self.liveness_timeout,
            on_up=self._up, on_down=self._down,
            on_packet_in=self._packet_in)
        connection.factory = self
        self.connections.add(connection)
        return connection

    def switch(self, bridge: str) -> Switch:
        """The L{Switch} of C{bridge}."""
        try:
            return self.switches[bridge]
        except KeyError:
            raise NotFound(
                f"bridge {bridge!r} is not one of "
                f"{', '.join(sorted(self.switches))}") from None

    def when_connected(self, bridge: str) -> defer.Deferred:
        """
        @return: a L{Deferred} firing with C{bridge}'s L{Switch} once it
            is connected and in sync.
        """
        return self.switch(bridge).when_synced()

    def status(self) -> dict[str, dict[str, Any]]:
        """Every bridge's L{Switch.status}."""
        return {name: s.status() for name, s in self.switches.items()}

    def close_all(self) -> None:
        """Drop every switch connection."""
        for connection in list(self.connections):
            connection.close()

    def _switch_of(self, connection: OpenFlowProtocol) -> Switch | None:
        """The bridge C{connection} is for, if its datapath id is ours."""
        if connection.datapath_id is None:
            return None
        return self._by_dpid.get(connection.datapath_id)

    def _up(self, connection: OpenFlowProtocol) -> None:
        switch = self._switch_of(connection)
        if switch is None:
            self.log.error(
                "a switch with datapath id {dpid:016x} connected; it is "
                "none of our bridges (set other_config:datapath-id)",
                dpid=connection.datapath_id)
            connection.close()
            return
        switch.attach(connection)

    def _down(self, connection: OpenFlowProtocol) -> None:
        self.connections.discard(connection)
        switch = self._switch_of(connection)
        if switch is not None:
            switch.detach(connection)

    def _packet_in(self, connection: OpenFlowProtocol, msg: Any) -> None:
        switch = self._switch_of(connection)
        if switch is not None and switch.connection is connection:
            switch.packet_in(msg)


class OpenFlowService(Service):
    """Listens for switches on an endpoint (the --of-listen option)."""

    log = Logger()

    def __init__(self, controller: OpenFlowController,
                 endpoint: IStreamServerEndpoint) -> None:
        self.controller = controller
        self.endpoint = endpoint
        self.port: Any = None

    def startService(self) -> defer.Deferred:
        super().startService()
        return defer.Deferred.fromCoroutine(self._listen())

    async def _listen(self) -> None:
        self.port = await self.endpoint.listen(self.controller)
        self.log.info("OpenFlow controller listening on {address}",
                      address=str(self.port.getHost()))

    def stopService(self) -> defer.Deferred:
        super().stopService()
        self.controller.close_all()
        if self.port is None:
            return defer.succeed(None)
        port, self.port = self.port, None
        return defer.maybeDeferred(port.stopListening)
