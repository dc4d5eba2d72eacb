"""
An in-memory store with etcd v2's semantics (one index for every
write, TTL expiry on a clock, a bounded event history) for unit tests.
"""

from __future__ import annotations

import collections
import datetime
import math
from collections.abc import Callable

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import Clock

from contivd.store.base import (
    CREATE,
    DELETE,
    EXPIRE,
    UPDATE,
    CompareFailed,
    Event,
    IndexCleared,
    KeyExists,
    KeyMissing,
    Listing,
    Node,
    Store,
    normalize,
    under,
)


class _Entry:
    def __init__(self, value: str, created: int, modified: int,
                 expires: float | None,
                 timer: IDelayedCall | None) -> None:
        self.value = value
        self.created = created
        self.modified = modified
        self.expires = expires
        self.timer = timer


class MemoryStore(Store):
    """
    A L{Store} held in a dict, driven by a clock.

    Calls answer at once (their Deferreds have fired) unless the store
    is made unavailable with L{set_available}: then they wait, as an
    L{EtcdStore} does while it retries, until it is available again.

    @param history: how many events it keeps for L{wait}, like etcd's
        1000; an older index raises L{IndexCleared}.
    """

    def __init__(self, clock: IReactorTime | None = None,
                 history: int = 1000) -> None:
        self.clock = clock if clock is not None else Clock()
        self.index = 0
        self._data: dict[str, _Entry] = {}
        self._history: collections.deque[Event] = collections.deque(
            maxlen=history)
        self._waiters: list[tuple[str, int, Deferred]] = []
        self._available = True
        self._queued: list[Callable[[], object]] = []

    def set_available(self, available: bool) -> None:
        """Make calls wait (C{False}) or run them, queued ones first."""
        self._available = available
        while self._available and self._queued:
            self._queued.pop(0)()

    def _call(self, f: Callable, *args) -> Deferred:
        def run() -> Deferred:
            try:
                return succeed(f(*args))
            except Exception:
                return fail()

        if self._available:
            return run()
        d: Deferred = Deferred()
        self._queued.append(lambda: run().chainDeferred(d))
        return d

    def _node(self, key: str, entry: _Entry) -> Node:
        ttl = expiration = None
        if entry.expires is not None:
            ttl = max(0, math.ceil(entry.expires - self.clock.seconds()))
            expiration = datetime.datetime.fromtimestamp(
                entry.expires, datetime.UTC).isoformat()
        return Node(key=key, value=entry.value,
                    modified_index=entry.modified,
                    created_index=entry.created, ttl=ttl,
                    expiration=expiration)

    def _record(self, action: str, key: str, value: str | None,
                prev: str | None) -> None:
        event = Event(action=action, key=key, value=value,
                      prev_value=prev, index=self.index)
        self._history.append(event)
        waiters, self._waiters = self._waiters, []
        for w in waiters:
            prefix, index, d = w
            if under(key, prefix) and event.index >= index:
                d.callback(event)
            else:
                self._waiters.append(w)

    def _write(self, key: str, value: str, ttl: int | None) -> Node:
        if not isinstance(value, str):
            raise TypeError(f"value of {key} must be a str, not {value!r}")
        key = normalize(key)
        old = self._data.pop(key, None)
        if old is not None and old.timer is not None:
            old.timer.cancel()
        self.index += 1
        expires = timer = None
        if ttl is not None:
            expires = self.clock.seconds() + ttl
            timer = self.clock.callLater(ttl, self._expire, key)
        entry = _Entry(value, old.created if old else self.index,
                       self.index, expires, timer)
        self._data[key] = entry
        self._record(UPDATE if old else CREATE, key, value,
                     old.value if old else None)
        return self._node(key, entry)

    def _expire(self, key: str) -> None:
        entry = self._data.pop(key)
        self.index += 1
        self._record(EXPIRE, key, None, entry.value)

    def _remove(self, key: str) -> Node:
        entry = self._data.pop(key)
        if entry.timer is not None:
            entry.timer.cancel()
        node = self._node(key, entry)
        self.index += 1
        self._record(DELETE, key, None, entry.value)
        return node

    def _existing(self, key: str) -> _Entry:
        entry = self._data.get(normalize(key))
        if entry is None:
            raise KeyMissing(f"{normalize(key)}: key not found")
        return entry

    def get(self, key: str) -> Deferred[Node]:
        return self._call(
            lambda: self._node(normalize(key), self._existing(key)))

    def put(self, key: str, value: str,
            ttl: int | None = None) -> Deferred[Node]:
        return self._call(self._write, key, value, ttl)

    def create(self, key: str, value: str,
               ttl: int | None = None) -> Deferred[Node]:
        def create() -> Node:
            if normalize(key) in self._data:
                raise KeyExists(f"{normalize(key)}: key already exists")
            return self._write(key, value, ttl)

        return self._call(create)

    def _compare(self, key: str, prev_value: str) -> None:
        entry = self._existing(key)
        if entry.value != prev_value:
            raise CompareFailed(
                f"{normalize(key)}: holds {entry.value!r}, "
                f"not {prev_value!r}")

    def swap(self, key: str, value: str, prev_value: str,
             ttl: int | None = None) -> Deferred[Node]:
        def swap() -> Node:
            self._compare(key, prev_value)
            return self._write(key, value, ttl)

        return self._call(swap)

    def delete(self, key: str) -> Deferred[Node]:
        def delete() -> Node:
            self._existing(key)
            return self._remove(normalize(key))

        return self._call(delete)

    def compare_delete(self, key: str, prev_value: str) -> Deferred[Node]:
        def compare_delete() -> Node:
            self._compare(key, prev_value)
            return self._remove(normalize(key))

        return self._call(compare_delete)

    def list(self, prefix: str) -> Deferred[Listing]:
        def read() -> Listing:
            p = normalize(prefix)
            nodes = tuple(self._node(k, e)
                          for k, e in sorted(self._data.items())
                          if k != p and under(k, p))
            return Listing(nodes=nodes, index=self.index)

        return self._call(read)

    def wait(self, prefix: str, index: int,
             timeout: float) -> Deferred[Event | None]:
        return self._call(lambda: None).addCallback(
            lambda _: self._wait(normalize(prefix), index, timeout))

    def _wait(self, prefix: str, index: int,
              timeout: float) -> Deferred[Event | None]:
        oldest = (self._history[0].index if self._history
                  else self.index + 1)
        full = len(self._history) == self._history.maxlen
        if full and index < oldest:
            return fail(IndexCleared(
                f"index {index} is older than the history kept "
                f"(from {oldest})", self.index))
        for event in self._history:
            if event.index >= index and under(event.key, prefix):
                return succeed(event)

        def cancel(d: Deferred) -> None:
            self._waiters = [w for w in self._waiters if w[2] is not d]
            if timer.active():
                timer.cancel()

        d: Deferred[Event | None] = Deferred(cancel)

        def timed_out() -> None:
            self._waiters = [w for w in self._waiters if w[2] is not d]
            d.callback(None)

        timer = self.clock.callLater(timeout, timed_out)
        d.addBoth(self._stop_timer, timer)
        self._waiters.append((prefix, index, d))
        return d

    @staticmethod
    def _stop_timer(result, timer: IDelayedCall):
        if timer.active():
            timer.cancel()
        return result
