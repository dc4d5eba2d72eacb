"""
The etcd store: python-etcd (the etcd v2 API) in thread pools of its
own, behind the Deferred API of L{contivd.store.base.Store}.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlsplit

import etcd
import urllib3
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.interfaces import (
    IReactorCore,
    IReactorThreads,
    IReactorTime,
)
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

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
    StoreUnavailable,
    normalize,
)

# python-etcd logs every failed request at error level through the
# standard library; this store reports outages itself, once and clearly.
_etcd_log = logging.getLogger("etcd")
_etcd_log.addHandler(logging.NullHandler())
_etcd_log.propagate = False

_ACTIONS = {
    "create": CREATE, "update": UPDATE, "compareAndSwap": UPDATE,
    "delete": DELETE, "compareAndDelete": DELETE, "expire": EXPIRE,
}


_UNREACHABLE = (etcd.EtcdConnectionFailed, etcd.EtcdLeaderElectionInProgress,
                etcd.EtcdClusterIdChanged)


def _reason(e: BaseException) -> str:
    """A short reason for a failed request, like 'connection refused'."""
    cause = getattr(e, "cause", None) or e
    reason = getattr(cause, "reason", None) or cause
    text = str(reason)
    if isinstance(reason, urllib3.exceptions.NewConnectionError):
        text = text.rsplit(": ", 1)[-1]
    elif isinstance(reason, (urllib3.exceptions.TimeoutError, TimeoutError)):
        text = "no answer in time"
    return text.lower() if len(text) < 80 else text


class _Retry(Exception):
    """A call failed in a way that a later try may not."""

    def __init__(self, url: str, cause: str | BaseException) -> None:
        super().__init__(f"{url}: {cause}")
        self.url = url
        self.cause = cause


def _daemon_thread(*args: Any, **kwargs: Any) -> threading.Thread:
    return threading.Thread(*args, daemon=True, **kwargs)


class _DaemonPool(ThreadPool):
    """
    A thread pool whose threads do not keep the process alive: a thread
    parked in a long poll must not hold up the exit of a process that
    never stopped its reactor (a test run, a CLI).
    """

    threadFactory = staticmethod(_daemon_thread)  # type: ignore[assignment]


def _client(url: str, timeout: float, connections: int) -> etcd.Client:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{url!r} is not an http:// or https:// URL")
    client = etcd.Client(
        host=parts.hostname, port=parts.port or 2379,
        protocol=parts.scheme, read_timeout=timeout,
        allow_reconnect=False)
    # python-etcd's pool retries inside each call (multiplying the
    # deadline) and keeps one connection per host; ours keeps one per
    # thread and leaves retrying to the store.
    client.http = urllib3.PoolManager(
        num_pools=4, maxsize=connections, retries=False)
    return client


def _node(result: Any) -> Node:
    return Node(key=result.key, value=result.value,
                modified_index=result.modifiedIndex or 0,
                created_index=result.createdIndex or 0,
                ttl=result.ttl, expiration=result.expiration)


def _event(result: Any) -> Event:
    prev = getattr(result, "_prev_node", None)
    action = _ACTIONS.get(result.action)
    if action is None:
        action = UPDATE if prev is not None else CREATE
    value = None if action in (DELETE, EXPIRE) else result.value
    return Event(action=action, key=result.key, value=value,
                 prev_value=prev.value if prev is not None else None,
                 index=result.modifiedIndex, dir=bool(result.dir))


class EtcdStore(Store):
    """
    A L{Store} on etcd's v2 API.

    Every request has a deadline of C{timeout} seconds. A request that
    fails for want of etcd (refused, timed out, a server error) is
    retried with jittered backoff, moving on to the next URL each time,
    for C{give_up_after} seconds (L{None}: for ever) before it fails
    with L{StoreUnavailable}. When a retried create, swap or delete
    meets the state its own earlier try left, that counts as success.

    Long polls run in a pool of their own, so that watches never starve
    the other calls (nor the reactor's own pool).

    @param urls: the etcd client URLs, tried in turn.
    @ivar observer: L{None}, or an object told of every round trip to
        etcd through C{round_trip(operation, outcome, seconds)}, where
        C{outcome} is C{"ok"}, C{"error"} (etcd refused the request) or
        C{"unreachable"}; a L{Watcher} on this store tells it of
        restarts through C{watch_restarted(prefix, reason)}.
    """

    log = Logger()

    def __init__(self, urls: Sequence[str], reactor: Any,
                 timeout: float = 5.0,
                 give_up_after: float | None = None,
                 max_calls: int = 8, max_watches: int = 32,
                 observer: Any = None) -> None:
        if not urls:
            raise ValueError("give at least one etcd URL")
        self.urls = tuple(urls)
        self.clock: IReactorTime = reactor
        self._reactor: IReactorThreads = reactor
        self._core: IReactorCore = reactor
        self.timeout = timeout
        self.give_up_after = give_up_after
        self.observer = observer
        #: When the requests in a row that found etcd unreachable began;
        #: L{None} while etcd answers.
        self.unreachable_since: float | None = None
        self._current = 0
        self._clients = [_client(u, timeout, max_calls) for u in urls]
        self._watch_clients = [_client(u, timeout, max_watches)
                               for u in urls]
        # The pools start with the first call, not here: twistd makes
        # the service before it forks into the background, and threads
        # started before the fork are gone in the daemon.
        self._calls = _DaemonPool(1, max_calls, name="etcd-calls")
        self._watches = _DaemonPool(1, max_watches, name="etcd-watches")
        self._closed = False
        self._shutdown = self._core.addSystemEventTrigger(
            "during", "shutdown", self.close)

    def close(self) -> Deferred[None]:
        """Stop the thread pools; the Deferred fires once they are."""
        if self._closed:
            return succeed(None)
        self._closed = True
        try:
            self._core.removeSystemEventTrigger(self._shutdown)
        except ValueError:
            pass
        if self._calls.started:
            self._calls.stop()
        if not self._watches.started:
            return succeed(None)
        done: Deferred[None] = Deferred()
        # A watch thread may sit in a long poll for up to its timeout;
        # wait for it off the reactor thread.
        def stop_watches() -> None:
            self._watches.stop()
            self._reactor.callFromThread(done.callback, None)

        threading.Thread(target=stop_watches, daemon=True).start()
        return done

    def _in_thread(self, pool: ThreadPool, clients: list,
                   call: Callable[[etcd.Client], Any]) -> Deferred:
        index = self._current
        client, url = clients[index], self.urls[index]

        def run() -> Any:
            try:
                return call(client)
            except _UNREACHABLE as e:
                raise _Retry(url, _reason(e)) from None
            except etcd.EtcdException as e:
                # A bare EtcdException is an answer that is not etcd's
                # (a proxy's error page, a server going down).
                status = e.payload.get("status", 0) if isinstance(
                    e.payload, dict) else 0
                if type(e) is etcd.EtcdException or status >= 500:
                    raise _Retry(url, e) from None
                raise

        def failed(failure):
            if failure.check(_Retry) and index == self._current:
                self._current = (index + 1) % len(self.urls)
            return failure

        if self._closed:
            raise StoreUnavailable("the etcd store is closed")
        if not pool.started:
            pool.start()
        return deferToThreadPool(self._reactor, pool, run).addErrback(failed)

    def _call(self, call: Callable[[etcd.Client], Any],
              retried: Callable[[Exception], Any] | None = None,
              what: str = "") -> Deferred:
        return Deferred.fromCoroutine(self._with_retries(
            call, retried, what, self._calls, self._clients))

    async def _with_retries(self, call, retried, what, pool, clients):
        started = self.clock.seconds()
        attempt = 0
        while True:
            sent = self.clock.seconds()
            try:
                result = await self._in_thread(pool, clients, call)
            except _Retry as e:
                self._observe(what, "unreachable", sent)
                error = e
            except CancelledError:
                raise
            except Exception as e:
                self._observe(what, "error", sent)
                if attempt and retried is not None:
                    return retried(e)
                raise self._translate(e, what) from None
            else:
                self._observe(what, "ok", sent)
                return result
            attempt += 1
            waited = self.clock.seconds() - started
            if self.give_up_after is not None and \
                    waited >= self.give_up_after:
                raise StoreUnavailable(
                    f"etcd did not answer {what} for {waited:.0f} s "
                    f"({error}); check that etcd runs and that the URLs "
                    f"{', '.join(self.urls)} are right") from None
            delay = min(5.0, 0.1 * 2 ** attempt) * random.uniform(0.5, 1)
            if attempt == 1 or attempt % 10 == 0:
                self.log.warn(
                    "etcd unreachable ({error}) for {what}; try {attempt}, "
                    "next in {delay:.1f} s", error=error, what=what,
                    attempt=attempt, delay=delay)
            await deferLater(self.clock, delay, lambda: None)

    def _observe(self, what: str, outcome: str, sent: float) -> None:
        if outcome == "unreachable":
            if self.unreachable_since is None:
                self.unreachable_since = self.clock.seconds()
        else:
            self.unreachable_since = None
        if self.observer is not None:
            self.observer.round_trip(what.split(" ", 1)[0], outcome,
                                     self.clock.seconds() - sent)

    @staticmethod
    def _translate(e: Exception, what: str) -> Exception:
        cause = getattr(e, "payload", None) or {}
        detail = cause.get("cause", "") if isinstance(cause, dict) else ""
        if isinstance(e, etcd.EtcdKeyNotFound):
            return KeyMissing(f"{what}: key not found")
        if isinstance(e, etcd.EtcdAlreadyExist):
            return KeyExists(f"{what}: key already exists")
        if isinstance(e, etcd.EtcdCompareFailed):
            return CompareFailed(f"{what}: compare failed {detail}".strip())
        if isinstance(e, etcd.EtcdEventIndexCleared):
            return IndexCleared(f"{what}: {e}", int(cause.get("index", 0)))
        return e

    def get(self, key: str) -> Deferred[Node]:
        key = normalize(key)

        def get(client: etcd.Client) -> Node:
            result = client.read(key)
            if result.dir:
                raise etcd.EtcdKeyNotFound(f"{key} is a directory")
            return _node(result)

        return self._call(get, what=f"get {key}")

    def put(self, key: str, value: str,
            ttl: int | None = None) -> Deferred[Node]:
        key = normalize(key)
        return self._call(lambda c: _node(c.write(key, value, ttl=ttl)),
                          what=f"put {key}")

    def _same_after_retry(self, key: str, value: str | None):
        """After a retried write: success if the key holds C{value}."""
        def check(error: Exception) -> Any:
            try:
                result = self._clients[self._current].read(key)
            except Exception:
                raise self._translate(error, key) from None
            if value is not None and result.value == value:
                return _node(result)
            raise self._translate(error, key)
        return check

    def create(self, key: str, value: str,
               ttl: int | None = None) -> Deferred[Node]:
        key = normalize(key)
        return self._call(
            lambda c: _node(c.write(key, value, ttl=ttl, prevExist=False)),
            self._same_after_retry(key, value), what=f"create {key}")

    def swap(self, key: str, value: str, prev_value: str,
             ttl: int | None = None) -> Deferred[Node]:
        key = normalize(key)
        return self._call(
            lambda c: _node(c.write(key, value, ttl=ttl,
                                    prevValue=prev_value)),
            self._same_after_retry(key, value), what=f"swap {key}")

    def delete(self, key: str) -> Deferred[Node]:
        key = normalize(key)
        return self._call(lambda c: self._deleted(c.delete(key)),
                          what=f"delete {key}")

    def compare_delete(self, key: str, prev_value: str) -> Deferred[Node]:
        key = normalize(key)

        def gone(error: Exception) -> Node:
            if isinstance(error, etcd.EtcdKeyNotFound):
                return Node(key=key, value=prev_value, modified_index=0)
            raise self._translate(error, f"delete {key}")

        return self._call(
            lambda c: self._deleted(c.delete(key, prevValue=prev_value)),
            gone, what=f"delete {key}")

    @staticmethod
    def _deleted(result: Any) -> Node:
        prev = getattr(result, "_prev_node", None)
        return Node(key=result.key,
                    value=prev.value if prev is not None else "",
                    modified_index=result.modifiedIndex or 0,
                    created_index=result.createdIndex or 0)

    def list(self, prefix: str) -> Deferred[Listing]:
        prefix = normalize(prefix)

        def read(client: etcd.Client) -> Listing:
            try:
                result = client.read(prefix, recursive=True)
            except etcd.EtcdKeyNotFound as e:
                return Listing(nodes=(), index=int(e.payload["index"]))
            nodes = tuple(sorted(
                (_node(n) for n in result.leaves
                 if not n.dir and n.key != prefix),
                key=lambda n: n.key))
            return Listing(nodes=nodes, index=result.etcd_index)

        return self._call(read, what=f"list {prefix}")

    def wait(self, prefix: str, index: int,
             timeout: float) -> Deferred[Event | None]:
        prefix = normalize(prefix)

        def wait(client: etcd.Client) -> Event | None:
            try:
                return _event(client.read(
                    prefix, wait=True, waitIndex=index, recursive=True,
                    timeout=timeout))
            except etcd.EtcdWatchTimedOut:
                return None

        return Deferred.fromCoroutine(self._with_retries(
            wait, None, f"watch {prefix}", self._watches,
            self._watch_clients))
