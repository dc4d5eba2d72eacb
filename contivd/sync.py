"""
State sync: restore what the cluster holds from etcd at one index, then
watch from the next index, each kind of object applied in a loop of its
own, so that no change between the read and the watch is lost.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import attr
from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger

from contivd import model
from contivd.errors import ValidationError
from contivd.store.base import Event, Listing
from contivd.supervisor import Component

if TYPE_CHECKING:
    from contivd.agent import Agent
    from contivd.store.watch import Watcher
    from contivd.view import ClusterView

log = Logger()


@attr.s(frozen=True, auto_attribs=True)
class Kind:
    """One kind of stored object: its name, its etcd directory, its type."""

    name: str
    prefix: str
    type: Any


#: The kinds the agent follows, in the order a restore applies them.
KINDS = (
    Kind("networks", model.NETS, model.Network),
    Kind("groups", model.GROUPS, model.EndpointGroup),
    Kind("endpoints", model.ENDPOINTS, model.Endpoint),
    Kind("bgp", model.BGP, model.Bgp),
    Kind("service_lbs", model.SERVICE_LBS, model.ServiceLB),
    Kind("providers", model.PROVIDERS, model.Provider),
    Kind("policy_rules", model.POLICY_RULES, model.PolicyRule),
)

_BY_PREFIX = {k.prefix: k for k in KINDS}


def kind_of(key: str) -> tuple[Kind, str] | None:
    """The kind and id of a key directly under a kind's directory."""
    parent, _, name = key.rpartition("/")
    kind = _BY_PREFIX.get(parent)
    if kind is None or not name:
        return None
    return kind, name


def parse(kind: Kind, key: str, value: str | None) -> Any:
    """
    The model object in a stored value (L{None} for a delete).

    @raise ValidationError: naming the field that is wrong.
    """
    if value is None:
        return None
    return kind.type.from_json(value)


class KindLoop:
    """
    Applies the changes of one kind, in order, one at a time, each with
    C{apply(kind_name, id, obj)}; a change that fails is logged with its
    key and the loop goes on.
    """

    def __init__(self, kind: Kind,
                 apply: Callable[[str, str, Any], Any]) -> None:
        self.kind = kind
        self._apply = apply
        self._queue: deque[tuple[str, str | None]] = deque()
        self._busy = False
        self.applied = 0
        self.skipped = 0

    def put(self, key: str, value: str | None) -> None:
        self._queue.append((key, value))
        if not self._busy:
            self._drain()

    def _drain(self) -> None:
        self._busy = True
        while self._queue:
            key, value = self._queue.popleft()
            found = kind_of(key)
            assert found is not None
            obj_id = found[1]
            try:
                obj = parse(self.kind, key, value)
            except ValidationError as e:
                self.skipped += 1
                log.warn("skipping malformed {kind} at {key}: {reason}",
                         kind=self.kind.name, key=key, reason=str(e))
                obj = None
            try:
                self._apply(self.kind.name, obj_id, obj)
                self.applied += 1
            except Exception:
                log.failure("applying {kind} {key} failed",
                            kind=self.kind.name, key=key)
        self._busy = False


class Sync(Component):
    """
    The sync component: runs once the restore is applied; then each
    change in etcd reaches the agent's L{ClusterView}.

    @ivar index: the store index the restore read at.
    """

    name = "sync"

    def __init__(self, agent: "Agent", view: "ClusterView") -> None:
        super().__init__()
        self.agent = agent
        self.view = view
        self.loops = {k.name: KindLoop(k, view.set) for k in KINDS}
        self.index = 0
        self._watcher: Watcher | None = None

    async def _start(self) -> None:
        await self.agent.wait_for(self, "store", "globals")
        self.waiting_for(f"a read of {model.STATE}")
        listing = await self.agent.store.list(model.STATE)
        self.restore(listing)
        self._watcher = self.agent.store.watch(model.STATE, self.changed,
                                               listing)

    def start(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._start())

    def restore(self, listing: Listing) -> None:
        """Apply a listing kind by kind, in L{KINDS} order."""
        self.index = listing.index
        by_kind: dict[str, list[tuple[str, str]]] = {}
        for node in listing.nodes:
            found = kind_of(node.key)
            if found is not None:
                by_kind.setdefault(found[0].name, []).append(
                    (node.key, node.value))
        stale = {(kind, obj_id) for kind, table in self.view.objects.items()
                 for obj_id in table}
        for kind in KINDS:
            for key, value in sorted(by_kind.get(kind.name, ())):
                stale.discard((kind.name, key.rpartition("/")[2]))
                self.loops[kind.name].put(key, value)
        for kind_name, obj_id in sorted(stale):
            self.view.set(kind_name, obj_id, None)
        log.info("restored {count} objects at etcd index {index}",
                 count=len(listing.nodes), index=listing.index)

    def changed(self, event: Event) -> None:
        """Hand a watched change to its kind's loop."""
        found = kind_of(event.key)
        if found is None:
            return
        self.loops[found[0].name].put(event.key, event.value)

    def stop(self) -> Deferred[None]:
        if self._watcher is not None:
            self._watcher.stop()
            self._watcher = None
        return succeed(None)
