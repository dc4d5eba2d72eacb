"""
The agent's view of the cluster that the datapath is rendered from:
peers, networks, groups, endpoints and services, each change told to
the observers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from twisted.logger import Logger

T = TypeVar("T")


class ObservedSet(Generic[T]):
    """
    A set whose observers hear of each addition and removal, once per
    real change.
    """

    log = Logger()

    def __init__(self) -> None:
        self._items: set[T] = set()
        self._observers: list[tuple[Callable[[T], Any],
                                    Callable[[T], Any]]] = []

    def __iter__(self) -> Iterator[T]:
        return iter(sorted(self._items, key=repr))

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, item: object) -> bool:
        return item in self._items

    def observe(self, on_added: Callable[[T], Any],
                on_removed: Callable[[T], Any]) -> None:
        """Tell C{on_added} of every item now held, and of later changes."""
        self._observers.append((on_added, on_removed))
        for item in list(self):
            on_added(item)

    def unobserve(self, on_added: Callable[[T], Any]) -> None:
        self._observers = [o for o in self._observers if o[0] != on_added]

    def add(self, item: T) -> None:
        if item in self._items:
            return
        self._items.add(item)
        for on_added, _ in list(self._observers):
            self._call(on_added, item)

    def remove(self, item: T) -> None:
        if item not in self._items:
            return
        self._items.discard(item)
        for _, on_removed in list(self._observers):
            self._call(on_removed, item)

    def _call(self, f: Callable[[T], Any], item: T) -> None:
        try:
            f(item)
        except Exception:
            self.log.failure("observer {f} failed on {item}", f=f,
                             item=item)


class ClusterView:
    """
    The cluster's objects by kind and id, as the sync loops last read
    them from etcd; C{on_change} hears of every change.

    @ivar objects: kind name to a dict of id to model object.
    """

    log = Logger()

    def __init__(self) -> None:
        self.objects: dict[str, dict[str, Any]] = {}
        self._listeners: list[Callable[[str, str, Any, Any], Any]] = []

    def kind(self, name: str) -> dict[str, Any]:
        """The objects of one kind (a live dict; do not change it)."""
        return self.objects.setdefault(name, {})

    def on_change(self, listener: Callable[[str, str, Any, Any],
                                           Any]) -> None:
        """Call C{listener(kind, id, old, new)} on each change."""
        self._listeners.append(listener)

    def set(self, kind: str, obj_id: str, obj: Any) -> None:
        """Hold C{obj} (or, for L{None}, nothing) as C{kind}'s C{obj_id}."""
        table = self.kind(kind)
        old = table.get(obj_id)
        if obj is None:
            if old is None:
                return
            del table[obj_id]
        else:
            if old == obj:
                return
            table[obj_id] = obj
        for listener in list(self._listeners):
            try:
                listener(kind, obj_id, old, obj)
            except Exception:
                self.log.failure("view listener failed on {kind} {id}",
                                 kind=kind, id=obj_id)
