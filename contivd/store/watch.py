"""
A watch on a store prefix that never loses an event: it resumes from
the last index after errors and re-reads when that index is too old.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger

from contivd.store.base import (
    CREATE,
    DELETE,
    EXPIRE,
    UPDATE,
    Event,
    EventHandler,
    IndexCleared,
    Listing,
    under,
)

if TYPE_CHECKING:
    from contivd.store.base import Store


def diff(prefix: str, known: dict[str, str], listing: Listing) -> list[Event]:
    """The events that turn C{known} into the state C{listing} shows."""
    now = {k: v for k, v in listing.values().items() if under(k, prefix)}
    events = []
    for key in sorted(set(known) | set(now)):
        old, new = known.get(key), now.get(key)
        if old == new:
            continue
        action = CREATE if old is None else DELETE if new is None else UPDATE
        events.append(Event(action=action, key=key, value=new,
                            prev_value=old, index=listing.index))
    return events


class Watcher:
    """
    Delivers every change below a prefix to a handler, in order.

    Made and started by L{Store.watch}. The handler is called with one
    L{Event} at a time; if it returns a Deferred the next event waits
    for it. A handler error is logged and the watch goes on.

    @ivar index: the next store index the watch asks for.
    """

    log = Logger()

    max_retry_delay = 10.0

    def __init__(self, store: Store, prefix: str,
                 on_event: EventHandler, since: Listing,
                 clock: IReactorTime, poll_timeout: float = 30.0) -> None:
        self._store = store
        #: Seconds a long poll may last before it is re-issued, so that
        #: a connection that died silently is replaced.
        self.poll_timeout = poll_timeout
        self.prefix = prefix
        self._on_event = on_event
        self._clock = clock
        self._known = {k: v for k, v in since.values().items()
                       if under(k, prefix)}
        self.index = since.index + 1
        self._running = False
        self._pending: Deferred | None = None
        self._failures = 0
        self.done: Deferred[None] | None = None

    def start(self) -> None:
        """Begin watching (L{Store.watch} does this)."""
        if self._running:
            return
        self._running = True
        self.log.debug("watching {prefix} from index {index}",
                       prefix=self.prefix, index=self.index)
        self.done = Deferred.fromCoroutine(self._run())

    def stop(self) -> None:
        """End the watch; no event is delivered after this returns."""
        self._running = False
        if self._pending is not None:
            self._pending.cancel()

    async def _run(self) -> None:
        while self._running:
            try:
                event = await self._step(self._store.wait(
                    self.prefix, self.index, self.poll_timeout))
            except CancelledError:
                return
            except IndexCleared as e:
                self.log.info(
                    "watch of {prefix}: index {index} is too old (the "
                    "store is at {now}); re-reading the prefix",
                    prefix=self.prefix, index=self.index, now=e.index)
                self._restarted("index_cleared")
                await self._resync()
                continue
            except Exception as e:
                self._restarted("error")
                await self._backoff(e)
                continue
            self._failures = 0
            if event is not None:
                self.index = event.index + 1
                await self._deliver(self._translate(event))

    def _restarted(self, reason: str) -> None:
        observer = getattr(self._store, "observer", None)
        if observer is not None:
            observer.watch_restarted(self.prefix, reason)

    async def _step(self, d: Deferred):
        self._pending = d
        try:
            return await d
        finally:
            self._pending = None

    async def _backoff(self, error: Exception) -> None:
        self._failures += 1
        delay = min(self.max_retry_delay, 0.1 * 2 ** self._failures)
        delay *= random.uniform(0.5, 1.0)
        self.log.warn(
            "watch of {prefix} failed ({error}); retrying from index "
            "{index} in {delay:.1f} s", prefix=self.prefix, error=error,
            index=self.index, delay=delay)
        try:
            await self._step(deferLater(self._clock, delay, lambda: None))
        except CancelledError:
            pass

    async def _resync(self) -> None:
        while self._running:
            try:
                listing = await self._step(self._store.list(self.prefix))
            except CancelledError:
                return
            except Exception as e:
                await self._backoff(e)
                continue
            events = diff(self.prefix, self._known, listing)
            self.index = listing.index + 1
            await self._deliver(events)
            return

    def _translate(self, event: Event) -> list[Event]:
        if not event.dir:
            return [event]
        if event.action not in (DELETE, EXPIRE):
            return []
        return [Event(action=event.action, key=key, value=None,
                      prev_value=value, index=event.index)
                for key, value in sorted(self._known.items())
                if under(key, event.key)]

    async def _deliver(self, events: list[Event]) -> None:
        for event in events:
            if not self._running:
                return
            if event.value is None:
                self._known.pop(event.key, None)
            else:
                self._known[event.key] = event.value
            try:
                result = self._on_event(event)
                if isinstance(result, Deferred):
                    await result
            except Exception:
                self.log.failure(
                    "the handler of {prefix} failed on {action} {key}",
                    prefix=self.prefix, action=event.action, key=event.key)
