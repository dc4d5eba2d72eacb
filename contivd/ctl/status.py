"""
C{contivctl status}: one agent's health, components, peers, endpoints
and bridges, read from its status server.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any, TextIO

DEFAULT_AGENT = "http://127.0.0.1:9090"
#: Seconds each request to the agent may take.
TIMEOUT = 5.0
#: The exit code when the agent answers but is not healthy.
UNHEALTHY = 3

Fetch = Callable[[str], Any]


class Unreachable(Exception):
    """The agent's status server did not answer."""


def http_fetch(base: str, timeout: float = TIMEOUT) -> Fetch:
    """A fetch of C{base + path} as JSON; a 503 answer is still JSON."""
    base = base.rstrip("/")

    def fetch(path: str) -> Any:
        url = base + path
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                return json.load(response)
        except urllib.error.HTTPError as e:
            if e.code == 503:
                return json.load(e)
            raise Unreachable(f"{url} answered {e.code} {e.reason}") from e
        except (OSError, ValueError) as e:
            reason = getattr(e, "reason", None) or e
            raise Unreachable(f"cannot read {url}: {reason}") from e

    return fetch


def gather(fetch: Fetch) -> dict[str, Any]:
    """Everything the view shows, from the agent's routes."""
    return {
        "health": fetch("/healthz"),
        "components": fetch("/inspect/components")["components"],
        "peers": fetch("/inspect/peers")["peers"],
        "endpoints": fetch("/inspect/endpoints")["endpoints"],
        "driver": fetch("/inspect/driver"),
    }


def _bridge_line(name: str, switch: dict[str, Any]) -> str:
    if not switch.get("connected"):
        state = "not connected"
    elif not switch.get("synced"):
        state = "connected, syncing"
    else:
        state = "connected, in sync"
    flows = switch.get("flows")
    installed = "?" if flows is None else flows
    return (f"bridge {name}: {state}; {installed} flows "
            f"({switch.get('desired_flows', 0)} desired), "
            f"{switch.get('errors_received', 0)} OpenFlow errors")


def render(agent: str, view: dict[str, Any], out: TextIO) -> None:
    """Write the short human view of one agent."""
    health = view["health"]
    down = health.get("down", [])
    state = "healthy" if health.get("healthy") else (
        f"unhealthy ({len(down)} component"
        f"{'' if len(down) == 1 else 's'} not running)")
    out.write(f"agent {agent}: {state}\n")
    width = max([len(c["name"]) for c in view["components"]] + [9])
    for c in view["components"]:
        line = f"  {c['name']:<{width}}  {c['status']:<8}"
        if c.get("restarts"):
            line += f"  restarts {c['restarts']}"
        if c.get("reason"):
            line += f"  {c['reason']}"
        out.write(line.rstrip() + "\n")
    peers = ", ".join(f"{p['hostname']} ({p['vtep_ip']})"
                      for p in view["peers"]) or "none"
    out.write(f"peers: {peers}\n")
    local = sum(1 for e in view["endpoints"] if e.get("local"))
    total = len(view["endpoints"])
    out.write(f"endpoints: {total} ({local} local, {total - local} "
              "remote)\n")
    driver = view["driver"]
    ovsdb = driver.get("ovsdb", {})
    out.write(f"ovsdb: {'connected' if ovsdb.get('connected') else 'down'}"
              f" ({ovsdb.get('remote', '?')})\n")
    for name, switch in sorted(driver.get("switches", {}).items()):
        out.write(_bridge_line(name, switch) + "\n")


def status(agent: str, as_json: bool, out: TextIO, err: TextIO,
           fetch: Fetch | None = None) -> int:
    """
    Show one agent; the exit code: 0 healthy, L{UNHEALTHY}, or 1 when
    the agent cannot be read.
    """
    try:
        view = gather(fetch or http_fetch(agent))
    except Unreachable as e:
        err.write(f"contivctl: the agent is not answering: {e} (is "
                  "contivd running, and is --agent its --status-listen "
                  "address?)\n")
        return 1
    except (KeyError, TypeError) as e:
        err.write(f"contivctl: {agent} does not look like a contivd "
                  f"status server (missing {e})\n")
        return 1
    if as_json:
        out.write(json.dumps(view, indent=2, sort_keys=True) + "\n")
    else:
        render(agent, view, out)
    return 0 if view["health"].get("healthy") else UNHEALTHY
