"""
The store interface every part of the agent uses for cluster state: a
key-value API with etcd v2 semantics whose calls return Deferreds.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import attr
from twisted.internet.defer import Deferred

from contivd.errors import Conflict, ContivError, NotFound

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorTime

    from contivd.store.watch import Watcher

#: The actions an L{Event} can carry.
CREATE = "create"
UPDATE = "update"
DELETE = "delete"
EXPIRE = "expire"
ACTIONS = (CREATE, UPDATE, DELETE, EXPIRE)


class StoreError(ContivError):
    """Base of the errors a store reports."""


class KeyMissing(StoreError, NotFound):
    """The key does not exist."""


class KeyExists(StoreError, Conflict):
    """A create-if-absent found the key already there."""


class CompareFailed(StoreError, Conflict):
    """A compare-and-swap or compare-and-delete found another value."""


class StoreUnavailable(StoreError):
    """The store did not answer within its deadline (etcd is down)."""


class IndexCleared(StoreError):
    """
    A watch asked for an index older than the store's event history.

    @ivar index: the store's current index, from which to re-read.
    """

    def __init__(self, message: str, index: int) -> None:
        super().__init__(message)
        self.index = index


@attr.s(frozen=True, auto_attribs=True, kw_only=True)
class Node:
    """
    One key and its value as the store holds it.

    @ivar modified_index: the store index of the last write of this key.
    @ivar ttl: seconds left before the key expires, or L{None}.
    @ivar expiration: when it expires (ISO 8601, UTC), or L{None}.
    """

    key: str
    value: str
    modified_index: int
    created_index: int = 0
    ttl: int | None = None
    expiration: str | None = None


@attr.s(frozen=True, auto_attribs=True, kw_only=True)
class Listing:
    """
    The keys under a prefix (at any depth), read at one store index.

    Watch from C{index + 1} to miss nothing that follows the read.
    """

    nodes: tuple[Node, ...]
    index: int

    def values(self) -> dict[str, str]:
        """The listing as a mapping of key to value."""
        return {node.key: node.value for node in self.nodes}


@attr.s(frozen=True, auto_attribs=True, kw_only=True)
class Event:
    """
    One change of one key.

    @ivar action: one of L{CREATE}, L{UPDATE}, L{DELETE}, L{EXPIRE}.
    @ivar value: the new value; L{None} after a delete or expiry.
    @ivar prev_value: the value before; L{None} after a create.
    @ivar index: the store index of the change.
    @ivar dir: whether the key was a directory (only from etcd, when a
        whole directory is removed); a L{Watcher} turns that into one
        delete per key it knew under it.
    """

    action: str = attr.ib(validator=attr.validators.in_(ACTIONS))
    key: str
    value: str | None
    prev_value: str | None
    index: int
    dir: bool = False


def normalize(prefix: str) -> str:
    """A key or prefix with one leading and no trailing slash."""
    return "/" + prefix.strip("/")


def under(key: str, prefix: str) -> bool:
    """Whether C{key} is C{prefix} itself or lies below it."""
    prefix = normalize(prefix)
    return (key == prefix or prefix == "/"
            or key.startswith(prefix + "/"))


#: What a watch calls with each event; a returned Deferred is waited for
#: before the next event is delivered.
EventHandler = Callable[[Event], None | Deferred]


class Store:
    """
    The calls a store offers; L{MemoryStore} and L{EtcdStore} give them.

    Keys are paths like C{/contiv.io/state/nets/web.default}; values are
    strings (JSON for the model's objects). Every call returns a
    L{Deferred}. A store retries while its backend is unreachable; a
    call fails with L{StoreUnavailable} only when the store was built to
    give up after some time.

    @ivar clock: the clock its retries and watches run on.
    @see: L{contivd.store.memory.MemoryStore},
        L{contivd.store.etcd.EtcdStore}.
    """

    clock: IReactorTime

    #: Seconds a watch's long poll may last before it is re-issued.
    poll_timeout: float = 30.0

    def get(self, key: str) -> Deferred[Node]:
        """
        Read one key.

        @raise KeyMissing: (in the Deferred) when it does not exist.
        """
        raise NotImplementedError

    def put(self, key: str, value: str,
            ttl: int | None = None) -> Deferred[Node]:
        """Write a key, whether it exists or not; expire it after C{ttl}."""
        raise NotImplementedError

    def create(self, key: str, value: str,
               ttl: int | None = None) -> Deferred[Node]:
        """
        Write a key only if it does not exist.

        @raise KeyExists: when it does.
        """
        raise NotImplementedError

    def swap(self, key: str, value: str, prev_value: str,
             ttl: int | None = None) -> Deferred[Node]:
        """
        Write a key only while it holds C{prev_value}.

        @raise CompareFailed: when it holds another value.
        @raise KeyMissing: when it does not exist.
        """
        raise NotImplementedError

    def delete(self, key: str) -> Deferred[Node]:
        """
        Remove a key; the Deferred fires with the node as it was.

        @raise KeyMissing: when it does not exist.
        """
        raise NotImplementedError

    def compare_delete(self, key: str, prev_value: str) -> Deferred[Node]:
        """
        Remove a key only while it holds C{prev_value}.

        @raise CompareFailed: when it holds another value.
        @raise KeyMissing: when it does not exist.
        """
        raise NotImplementedError

    def list(self, prefix: str) -> Deferred[Listing]:
        """
        Every key below C{prefix}, at any depth, read at one index.

        A prefix with nothing below it gives an empty listing (with the
        current index), not an error.
        """
        raise NotImplementedError

    def wait(self, prefix: str, index: int,
             timeout: float) -> Deferred[Event | None]:
        """
        The first change below C{prefix} at or after C{index}.

        This is the long poll under L{watch}; most callers want L{watch}.
        The Deferred fires with L{None} after C{timeout} seconds without
        a change, so that the caller re-issues it.

        @raise IndexCleared: when C{index} is older than the history the
            store keeps.
        """
        raise NotImplementedError

    def watch(self, prefix: str, on_event: EventHandler,
              since: Listing) -> Watcher:
        """
        Deliver every change below C{prefix} after the listing C{since}.

        The usual pattern is C{listing = yield store.list(prefix)}, act
        on it, then C{store.watch(prefix, handler, listing)}: no change
        between the two is lost. The watch resumes from the last index
        it saw after any error; when that index is too old it re-reads
        the prefix and delivers the difference as events.

        @return: a started L{Watcher}; call its C{stop} to end it.
        """
        from contivd.store.watch import Watcher

        watcher = Watcher(self, prefix, on_event, since, clock=self.clock,
                          poll_timeout=self.poll_timeout)
        watcher.start()
        return watcher
