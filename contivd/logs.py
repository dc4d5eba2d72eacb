"""
Log output: twistd's text lines, or one JSON object a line.

C{--log-format json} makes twistd use L{json_observer} instead of its
text observer, writing to the same place twistd would.
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from typing import IO, Any

from twisted.logger import ILogObserver, formatEvent
from twisted.python.logfile import LogFile
from zope.interface import implementer

_target: dict[str, Any] = {"logfile": None}

_SIMPLE = (str, int, float, bool, type(None))


def use_json_for(server_options: Any) -> None:
    """
    Tell twistd (through its parsed options) to log JSON lines.

    @param server_options: twistd's own options, the parent of ours.
    """
    _target["logfile"] = server_options.get("logfile")
    server_options["logger"] = "contivd.logs.json_observer"


def event_as_json(event: dict[str, Any]) -> str:
    """
    One log event as a compact JSON line: time, level, namespace, the
    formatted message, the failure if any, and each simple field.
    """
    level = event.get("log_level")
    record: dict[str, Any] = {
        "time": datetime.fromtimestamp(
            event.get("log_time", 0), UTC).isoformat(),
        "level": getattr(level, "name", "info"),
        "namespace": event.get("log_namespace", "-"),
        "message": formatEvent(event),
    }
    failure = event.get("log_failure")
    if failure is not None:
        record["failure"] = failure.getTraceback()
    for key, value in event.items():
        if key.startswith("log_") or key in record:
            continue
        if isinstance(value, _SIMPLE):
            record[key] = value
    return json.dumps(record, sort_keys=False) + "\n"


@implementer(ILogObserver)
class JSONObserver:
    """Writes each event to C{out} as one JSON line."""

    def __init__(self, out: IO[str]) -> None:
        self._out = out

    def __call__(self, event: dict[str, Any]) -> None:
        self._out.write(event_as_json(event))
        self._out.flush()


def _open_target() -> IO[str]:
    name = _target["logfile"]
    if not name or name == "-":
        return sys.stdout
    return LogFile.fromFullPath(name)  # type: ignore[return-value]


def json_observer() -> ILogObserver:
    """A twistd log observer factory writing one JSON event a line."""
    return JSONObserver(_open_target())
