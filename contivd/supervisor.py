"""
The supervisor: runs the agent's components as one MultiService, and
restarts a component that fails, with jittered backoff, while the others
keep running.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from typing import Any

import attr
from twisted.application.service import IService, MultiService, Service
from twisted.internet.defer import (
    CancelledError,
    Deferred,
    maybeDeferred,
    succeed,
)
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from contivd.errors import ContivError, FatalError

STOPPED = "stopped"
STARTING = "starting"
WAITING = "waiting"
RUNNING = "running"
FAILED = "failed"


@attr.s(auto_attribs=True, frozen=True)
class Backoff:
    """
    How long to wait before the next start of a failed component.

    The delay grows by C{factor} with each failure in a row up to
    C{maximum}; each delay is scaled by a random factor in
    [1 - jitter, 1] so that agents restarted together spread out.
    """

    initial: float = 0.5
    factor: float = 2.0
    maximum: float = 30.0
    jitter: float = 0.5

    def delay(self, failures: int,
              rand: Callable[[], float] = random.random) -> float:
        """The delay after C{failures} failures in a row (1 or more)."""
        base = min(self.maximum,
                   self.initial * self.factor ** max(0, failures - 1))
        return base * (1.0 - self.jitter * rand())


@attr.s(auto_attribs=True)
class ComponentState:
    """What one component is doing now, for other components and people."""

    name: str
    status: str = STOPPED
    reason: str = ""
    restarts: int = 0
    since: float = 0.0
    next_start: float | None = None
    _running_waiters: list = attr.ib(factory=list, repr=False)

    def when_running(self) -> Deferred[None]:
        """A Deferred that fires when the component is (next) running."""
        if self.status == RUNNING:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._running_waiters.append(d)
        return d

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready view."""
        return {
            "name": self.name,
            "status": self.status,
            "reason": self.reason,
            "restarts": self.restarts,
            "since": self.since,
            "next_start": self.next_start,
        }

    def _set(self, status: str, reason: str, now: float) -> None:
        self.status = status
        self.reason = reason
        self.since = now
        if status == RUNNING:
            self.next_start = None
            waiters, self._running_waiters = self._running_waiters, []
            for d in waiters:
                d.callback(None)


class Component:
    """
    Base of an agent component run by the L{Supervisor}.

    Subclasses override L{start} (fire when running, fail to be
    restarted) and L{stop}. While starting, a component says what it
    waits for with L{waiting_for}; after it runs, it reports a failure
    with L{crashed}, and the supervisor restarts it.
    """

    name = "component"
    log = Logger()

    def __init__(self) -> None:
        self.state = ComponentState(self.name)
        self._on_crash: Callable[[Failure], None] | None = None
        self._now: Callable[[], float] = lambda: 0.0

    def start(self) -> Deferred[None]:
        """Start; the Deferred fires once the component runs."""
        return succeed(None)

    def stop(self) -> Deferred[None]:
        """Stop and release everything the component holds."""
        return succeed(None)

    def waiting_for(self, what: str) -> None:
        """Record (and log, once per change) what the start waits for."""
        if self.state.status == WAITING and self.state.reason == what:
            return
        self.log.info("{component} waiting for {what}",
                      component=self.name, what=what)
        self.state._set(WAITING, what, self._now())

    def crashed(self, reason: Any) -> None:
        """Report a failure after start; the supervisor restarts us."""
        failure = reason if isinstance(reason, Failure) else Failure(reason)
        if self._on_crash is not None:
            self._on_crash(failure)


def _describe(failure: Failure) -> str:
    value = failure.value
    text = str(value) or type(value).__name__
    return text


class Supervised(Service):
    """The supervisor's wrapper of one component."""

    log = Logger()

    def __init__(self, component: Component, clock: IReactorTime,
                 backoff: Backoff, on_fatal: Callable[[Failure], None],
                 rand: Callable[[], float] = random.random) -> None:
        self.component = component
        self.setName(component.name)
        self._clock = clock
        self._backoff = backoff
        self._on_fatal = on_fatal
        self._rand = rand
        self._failures = 0
        self._starting: Deferred[None] | None = None
        self._stopping: Deferred[None] | None = None
        self._retry: IDelayedCall | None = None
        component._on_crash = self._crashed
        component._now = clock.seconds

    @property
    def state(self) -> ComponentState:
        return self.component.state

    def startService(self) -> None:
        super().startService()
        self._attempt()

    def _attempt(self) -> None:
        self._retry = None
        self.state.next_start = None
        self.state._set(STARTING, "", self._clock.seconds())
        self.log.info("starting {component}", component=self.name)
        d = maybeDeferred(self.component.start)
        self._starting = d
        d.addCallbacks(self._started, self._start_failed)

    def _started(self, _: object) -> None:
        self._starting = None
        self._failures = 0
        self.state._set(RUNNING, "", self._clock.seconds())
        self.log.info("{component} running", component=self.name)

    def _start_failed(self, failure: Failure) -> None:
        self._starting = None
        if failure.check(CancelledError) and not self.running:
            return
        self._failed(failure, "start failed")

    def _crashed(self, failure: Failure) -> None:
        if not self.running or self.state.status in (FAILED, STARTING):
            return
        d = self._stop_component()
        d.addBoth(lambda _: self._failed(failure, "failed"))

    def _stop_component(self) -> Deferred[None]:
        d = maybeDeferred(self.component.stop)
        d.addErrback(lambda f: self.log.failure(
            "{component} did not stop cleanly", f, component=self.name))
        return d

    def _failed(self, failure: Failure, what: str) -> None:
        if failure.check(FatalError):
            self.state._set(FAILED, _describe(failure),
                            self._clock.seconds())
            self._on_fatal(failure)
            return
        if not self.running:
            return
        self._failures += 1
        delay = self._backoff.delay(self._failures, self._rand)
        reason = _describe(failure)
        self.state._set(FAILED, reason, self._clock.seconds())
        self.state.restarts += 1
        self.state.next_start = self._clock.seconds() + delay
        message = "{component} {what}: {reason}; restarting in {delay:.1f} s"
        if failure.check(ContivError):
            self.log.error(message, component=self.name, what=what,
                           reason=reason, delay=delay)
        else:
            self.log.failure(message, failure, component=self.name,
                             what=what, reason=reason, delay=delay)
        self._retry = self._clock.callLater(delay, self._attempt)

    def stopService(self) -> Deferred[None]:
        super().stopService()
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        if self._starting is not None:
            self._starting.cancel()
        d = self._stop_component()
        d.addBoth(self._stopped)
        return d

    def _stopped(self, _: object) -> None:
        self.state._set(STOPPED, "", self._clock.seconds())
        self.log.info("{component} stopped", component=self.name)


class Supervisor(MultiService):
    """
    A MultiService of L{Component}s, each restarted on its own failure.

    Children start in the order added, each without waiting for the one
    before: a component that needs another waits on that one's
    L{ComponentState.when_running}. Stopping goes in reverse order,
    waiting for each.
    """

    log = Logger()

    def __init__(self, clock: IReactorTime,
                 on_fatal: Callable[[Failure], None],
                 backoff: Backoff = Backoff(),
                 rand: Callable[[], float] = random.random) -> None:
        super().__init__()
        self._clock = clock
        self._on_fatal = on_fatal
        self._backoff = backoff
        self._rand = rand
        self.components: dict[str, Component] = {}

    def add(self, component: Component) -> Component:
        """Supervise C{component}; start it if we already run."""
        if component.name in self.components:
            raise ValueError(f"a component named {component.name!r} exists")
        self.components[component.name] = component
        Supervised(component, self._clock, self._backoff, self._on_fatal,
                   self._rand).setServiceParent(self)
        return component

    def states(self) -> list[ComponentState]:
        """Each component's state, in start order."""
        return [c.state for c in self.components.values()]

    def stopService(self) -> Deferred[None]:
        Service.stopService(self)
        return Deferred.fromCoroutine(self._stop_each(reversed(list(self))))

    async def _stop_each(self, children: Iterable[IService]) -> None:
        for child in children:
            await maybeDeferred(child.stopService)
