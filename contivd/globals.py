"""
The wait for the cluster's global config: the forwarding mode and
private subnet that C{contivctl global set} writes, checked against the
agent's own command line, and followed afterwards.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Optional

import attr
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import LoopingCall

from contivd.constants import ETCD_ROOT
from contivd.errors import FatalError
from contivd.supervisor import Component

if TYPE_CHECKING:
    from contivd.agent import Agent
    from contivd.store.base import Event, Listing
    from contivd.store.watch import Watcher

GLOBAL_PREFIX = ETCD_ROOT + "/master/config"
GLOBAL_KEY = GLOBAL_PREFIX + "/global"
WAIT_LOG_INTERVAL = 5.0


@attr.s(frozen=True, auto_attribs=True)
class ClusterSettings:
    """The part of the global config the agent acts on."""

    fwd_mode: str
    pvt_subnet: str
    arp_mode: str = "proxy"


def parse_settings(text: Optional[str]) -> tuple[Optional[ClusterSettings],
                                                 str]:
    """
    The settings in a global config value, or L{None} and what is
    missing or wrong.
    """
    if text is None:
        return None, f"{GLOBAL_KEY} to exist"
    try:
        data = json.loads(text)
    except ValueError:
        return None, f"{GLOBAL_KEY} to hold JSON (it holds {text[:40]!r})"
    if not isinstance(data, dict):
        return None, f"{GLOBAL_KEY} to hold a JSON object"
    missing = [f for f in ("fwd-mode", "pvt-subnet") if not data.get(f)]
    if missing:
        return None, f"{' and '.join(missing)} in {GLOBAL_KEY}"
    return ClusterSettings(fwd_mode=str(data["fwd-mode"]),
                           pvt_subnet=str(data["pvt-subnet"]),
                           arp_mode=str(data.get("arp-mode") or "proxy")), ""


class GlobalConfig(Component):
    """
    Starts once the global config holds a forwarding mode and a private
    subnet, and the forwarding mode is the one of C{--fwd-mode}; a
    mismatch stops the agent. While it runs, an ARP mode change is
    handed to the datapath live, and a change of forwarding mode or
    private subnet re-initialises the datapath.

    @ivar settings: the current settings once running.
    """

    name = "globals"

    def __init__(self, agent: "Agent") -> None:
        super().__init__()
        self.agent = agent
        self.settings: Optional[ClusterSettings] = None
        self._ready: Optional[Deferred[None]] = None
        self._watcher: Optional["Watcher"] = None
        self._nag: Optional[LoopingCall] = None
        self._missing = ""

    def start(self) -> Deferred[None]:
        ready: Deferred[None] = Deferred(lambda _: self._cancelled())
        self._ready = ready
        d = self.agent.store.list(GLOBAL_PREFIX)
        self.waiting_for(f"a first read of {GLOBAL_PREFIX} from etcd")
        d.addCallback(self._listed)
        d.addErrback(self._fail_start)
        return ready

    def _listed(self, listing: "Listing") -> None:
        self._watcher = self.agent.store.watch(GLOBAL_PREFIX, self._event,
                                               listing)
        self._consider(listing.values().get(GLOBAL_KEY))

    def _event(self, event: "Event") -> None:
        if event.key == GLOBAL_KEY:
            self._consider(event.value)

    def _consider(self, value: Optional[str]) -> None:
        settings, missing = parse_settings(value)
        if self._ready is not None:
            self._check_first(settings, missing)
        elif settings is not None:
            self._changed(settings)

    def _check_first(self, settings: Optional[ClusterSettings],
                     missing: str) -> None:
        if settings is None:
            self._missing = missing
            self.waiting_for(missing)
            if self._nag is None:
                self._nag = LoopingCall(self._remind)
                self._nag.clock = self.agent.reactor
                self._nag.start(WAIT_LOG_INTERVAL, now=False)
            return
        self._stop_nagging()
        wanted = self.agent.config.fwd_mode
        if settings.fwd_mode != wanted:
            self._fail_start(FatalError(
                f"--fwd-mode is {wanted} but the cluster's fwd-mode is "
                f"{settings.fwd_mode} ({GLOBAL_KEY}); start the agent "
                f"with --fwd-mode {settings.fwd_mode}"))
            return
        self.settings = settings
        self.log.info(
            "global config: fwd-mode {fwd}, pvt-subnet {subnet}, "
            "arp-mode {arp}", fwd=settings.fwd_mode,
            subnet=settings.pvt_subnet, arp=settings.arp_mode)
        ready, self._ready = self._ready, None
        assert ready is not None
        ready.callback(None)

    def _remind(self) -> None:
        self.log.info("still waiting for {what}; set it with "
                      "`contivctl global set --fwd-mode MODE "
                      "--pvt-subnet CIDR`", what=self._missing)

    def _changed(self, settings: ClusterSettings) -> None:
        old, self.settings = self.settings, settings
        if old == settings or old is None:
            return
        if (old.fwd_mode, old.pvt_subnet) != (settings.fwd_mode,
                                              settings.pvt_subnet):
            self.log.warn(
                "global config changed (fwd-mode {fwd}, pvt-subnet "
                "{subnet}): re-initialising the datapath",
                fwd=settings.fwd_mode, subnet=settings.pvt_subnet)
            self.agent.reinit_datapath("the global config changed")
        elif old.arp_mode != settings.arp_mode:
            self.log.info("arp-mode is now {arp}", arp=settings.arp_mode)
            self.agent.arp_mode_changed(settings.arp_mode)

    def _fail_start(self, reason: Any) -> None:
        ready, self._ready = self._ready, None
        self._stop_watching()
        if ready is not None:
            ready.errback(reason)

    def _cancelled(self) -> None:
        self._ready = None
        self._stop_watching()

    def _stop_nagging(self) -> None:
        if self._nag is not None and self._nag.running:
            self._nag.stop()
        self._nag = None

    def _stop_watching(self) -> None:
        self._stop_nagging()
        if self._watcher is not None:
            self._watcher.stop()
            self._watcher = None

    def stop(self) -> Deferred[None]:
        self._stop_watching()
        self._ready = None
        return succeed(None)
