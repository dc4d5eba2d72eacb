"""
Log output: twistd's text lines, or one JSON object a line.

C{--log-format json} makes twistd use L{json_observer} instead of its
text observer, writing to the same place twistd would.
"""

from __future__ import annotations

import sys
from typing import IO, Any

from twisted.logger import ILogObserver, jsonFileLogObserver
from twisted.python.logfile import LogFile

_target: dict[str, Any] = {"logfile": None}


def use_json_for(server_options: Any) -> None:
    """
    Tell twistd (through its parsed options) to log JSON lines.

    @param server_options: twistd's own options, the parent of ours.
    """
    _target["logfile"] = server_options.get("logfile")
    server_options["logger"] = "contivd.logs.json_observer"


def _open_target() -> IO[str]:
    name: str | None = _target["logfile"]
    if not name or name == "-":
        return sys.stdout
    return LogFile.fromFullPath(name)  # type: ignore[return-value]


def json_observer() -> ILogObserver:
    """A twistd log observer factory writing one JSON event a line."""
    return jsonFileLogObserver(_open_target(), recordSeparator="")
