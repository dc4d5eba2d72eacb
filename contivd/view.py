"""
The agent's view of the cluster that the datapath is rendered from:
peers, and observers told of each change.
"""

from __future__ import annotations

from typing import Any, Callable, Generic, TypeVar

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

    def __iter__(self):
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
