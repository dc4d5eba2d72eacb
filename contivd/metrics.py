"""
The agent's Prometheus metrics: live values read at scrape time, and the
counters and histograms that the store and the Docker front end feed.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
)
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime

from contivd.supervisor import RUNNING

__all__ = ["CONTENT_TYPE_LATEST", "Metrics", "metrics_for",
           "observe_docker_call", "timed_docker_calls"]

#: Buckets, in seconds, for calls that usually take milliseconds but
#: may wait on etcd or OVSDB for many seconds.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                   0.5, 1.0, 2.5, 5.0, 10.0, 20.0)

_STATUSES = ("stopped", "starting", "waiting", "running", "failed")


class Metrics:
    """
    One agent's metrics, in a registry of their own (never the process
    default), so that a test may build several agents.

    It is also the store's observer (see L{contivd.store.etcd.EtcdStore}).
    """

    def __init__(self, agent: Any = None) -> None:
        self.registry = CollectorRegistry()
        self.etcd_round_trips = Counter(
            "contivd_etcd_round_trips",
            "Requests sent to etcd, each retry counted, by operation and "
            "outcome (ok, error: etcd refused it, unreachable).",
            ["operation", "outcome"], registry=self.registry)
        self.etcd_seconds = Histogram(
            "contivd_etcd_request_seconds",
            "Time of one etcd request, long-poll watches excepted.",
            ["operation"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.watch_restarts = Counter(
            "contivd_etcd_watch_restarts",
            "Watches re-issued after an error, or re-read because their "
            "index was too old (reason index_cleared).",
            ["prefix", "reason"], registry=self.registry)
        self.docker_seconds = Histogram(
            "contivd_docker_call_seconds",
            "Time to answer one call of Docker's plugin API, by call and "
            "outcome (error: answered 4xx or 5xx).",
            ["call", "outcome"], buckets=LATENCY_BUCKETS,
            registry=self.registry)
        if agent is not None:
            self.registry.register(AgentCollector(agent))

    def round_trip(self, operation: str, outcome: str,
                   seconds: float) -> None:
        """Count one etcd request (the store calls this)."""
        self.etcd_round_trips.labels(operation, outcome).inc()
        if operation != "watch":
            self.etcd_seconds.labels(operation).observe(max(0.0, seconds))

    def watch_restarted(self, prefix: str, reason: str) -> None:
        """Count one restart of the watch of C{prefix}."""
        self.watch_restarts.labels(prefix, reason).inc()

    def docker_call(self, call: str, seconds: float, ok: bool) -> None:
        """Record how long one Docker plugin call took."""
        self.docker_seconds.labels(call, "ok" if ok else "error").observe(
            max(0.0, seconds))

    def exposition(self) -> bytes:
        """The Prometheus text format of every metric, read now."""
        return generate_latest(self.registry)


def metrics_for(agent: Any) -> Metrics:
    """
    The agent's L{Metrics}, made on first use and kept as
    C{agent.metrics}; its store reports to it when it can.
    """
    metrics = getattr(agent, "metrics", None)
    if isinstance(metrics, Metrics):
        return metrics
    metrics = Metrics(agent)
    agent.metrics = metrics
    store = agent.store
    if hasattr(store, "observer") and store.observer is None:
        store.observer = metrics
    return metrics


def observe_docker_call(target: Any, call: str, seconds: float,
                        ok: bool) -> None:
    """
    Record one Docker plugin call in the L{Metrics} of C{target}, an
    agent or a L{Metrics}.
    """
    metrics = target if isinstance(target, Metrics) else metrics_for(target)
    metrics.docker_call(call, seconds, ok)


class Dispatch(Protocol):
    """A plugin app's C{dispatch}: one call's answer, or a Deferred."""

    def __call__(self, request: Any, call: str) -> Any: ...


def timed_docker_calls(target: Any, dispatch: Dispatch,
                       clock: IReactorTime) -> Dispatch:
    """
    Wrap a plugin app's C{dispatch(request, call)} so that each call's
    time and outcome (the response code) go to L{observe_docker_call}.
    """
    def timed(request: Any, call: str) -> Any:
        started = clock.seconds()

        def done(result: Any) -> Any:
            code = getattr(request, "code", 200) or 200
            observe_docker_call(target, call, clock.seconds() - started,
                                code < 400)
            return result

        result = dispatch(request, call)
        if isinstance(result, Deferred):
            return result.addBoth(done)
        return done(result)

    return timed


class _Tally:
    """
    A bridge's OpenFlow message counts summed over its connections,
    since each connection counts from zero.
    """

    def __init__(self) -> None:
        self.connection: Any = None
        self.base = {"sent": 0, "received": 0, "errors": 0}

    def totals(self, connection: Any) -> dict[str, int]:
        if connection is not self.connection:
            if self.connection is not None:
                for name in self.base:
                    self.base[name] += getattr(self.connection.counters,
                                               name)
            self.connection = connection
        if connection is None:
            return dict(self.base)
        return {name: value + getattr(connection.counters, name)
                for name, value in self.base.items()}


class AgentCollector:
    """Reads the agent's live state each time Prometheus scrapes."""

    def __init__(self, agent: Any) -> None:
        self.agent = agent
        self._tallies: dict[str, _Tally] = {}

    def collect(self) -> Iterator[Metric]:
        yield from self._components()
        yield from self._cluster()
        yield from self._switches()

    def _components(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "contivd_component_up",
            "1 when the component runs, else 0.", labels=["component"])
        status = GaugeMetricFamily(
            "contivd_component_status",
            "1 for the component's current status.",
            labels=["component", "status"])
        restarts = CounterMetricFamily(
            "contivd_component_restarts",
            "Times the supervisor restarted the component.",
            labels=["component"])
        for state in self.agent.supervisor.states():
            up.add_metric([state.name], float(state.status == RUNNING))
            for name in _STATUSES:
                status.add_metric([state.name, name],
                                  float(state.status == name))
            restarts.add_metric([state.name], state.restarts)
        yield from (up, status, restarts)

    def _cluster(self) -> Iterator[Metric]:
        label = self.agent.config.host_label
        local = remote = 0
        for endpoint in self.agent.view.kind("endpoints").values():
            if endpoint.homing_host == label:
                local += 1
            else:
                remote += 1
        endpoints = GaugeMetricFamily(
            "contivd_endpoints", "Endpoints known, by where they are.",
            labels=["location"])
        endpoints.add_metric(["local"], local)
        endpoints.add_metric(["remote"], remote)
        yield endpoints
        yield GaugeMetricFamily("contivd_peers",
                                "Other agents seen alive.",
                                value=len(self.agent.peers))
        renderer = getattr(self.agent, "renderer", None)
        yield GaugeMetricFamily(
            "contivd_vxlan_tunnels", "VXLAN tunnel ports, one per peer.",
            value=len(renderer.tunnels) if renderer is not None else 0)
        ovsdb = getattr(self.agent, "ovsdb", None)
        yield GaugeMetricFamily(
            "contivd_ovsdb_connected", "1 while OVSDB is connected.",
            value=float(bool(ovsdb is not None and ovsdb.connected)))

    def _switches(self) -> Iterator[Metric]:
        controller = getattr(self.agent, "controller", None)
        switches = controller.switches if controller is not None else {}
        families = {
            "connected": GaugeMetricFamily(
                "contivd_openflow_connected",
                "1 while the bridge is connected and in sync.",
                labels=["bridge"]),
            "flows": GaugeMetricFamily(
                "contivd_openflow_flows",
                "Our flows on the bridge: desired, and installed (as "
                "last read or written).", labels=["bridge", "state"]),
            "groups": GaugeMetricFamily(
                "contivd_openflow_groups",
                "Our groups on the bridge: desired and installed.",
                labels=["bridge", "state"]),
            "sent": CounterMetricFamily(
                "contivd_openflow_messages_sent",
                "OpenFlow messages sent to the bridge.", labels=["bridge"]),
            "received": CounterMetricFamily(
                "contivd_openflow_messages_received",
                "OpenFlow messages received from the bridge.",
                labels=["bridge"]),
            "errors": CounterMetricFamily(
                "contivd_openflow_errors",
                "OpenFlow errors the bridge answered.", labels=["bridge"]),
            "resyncs": CounterMetricFamily(
                "contivd_openflow_resyncs",
                "Times the bridge's flows were read and reconciled.",
                labels=["bridge"]),
        }
        for bridge, switch in sorted(switches.items()):
            self._switch(bridge, switch, families)
        yield from families.values()

    def _switch(self, bridge: str, switch: Any,
                families: dict[str, Any]) -> None:
        status = switch.status()
        families["connected"].add_metric([bridge], float(status["synced"]))
        for kind in ("flows", "groups"):
            families[kind].add_metric([bridge, "desired"],
                                      status[f"desired_{kind}"])
            if status[kind] is not None:
                families[kind].add_metric([bridge, "installed"],
                                          status[kind])
        tally = self._tallies.setdefault(bridge, _Tally())
        for name, value in tally.totals(switch.connection).items():
            families[name].add_metric([bridge], value)
        families["resyncs"].add_metric([bridge], status["resyncs"])
