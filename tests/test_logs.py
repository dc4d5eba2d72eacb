"""Tests for the JSON log format, L{contivd.logs}."""

import io
import json

from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from contivd.logs import JSONObserver


class JSONLogTests(SynchronousTestCase):
    def test_one_line_per_event_with_fields(self):
        """
        Each event is one JSON line carrying level, namespace, the
        formatted message and its simple fields.
        """
        out = io.StringIO()
        log = Logger(namespace="contivd.test", observer=JSONObserver(out))
        log.warn("peer {peer} gone after {seconds} s", peer="192.0.2.7",
                 seconds=12, obj=object())
        lines = out.getvalue().splitlines()
        self.assertEqual(len(lines), 1)
        record = json.loads(lines[0])
        self.assertEqual(record["level"], LogLevel.warn.name)
        self.assertEqual(record["namespace"], "contivd.test")
        self.assertEqual(record["message"], "peer 192.0.2.7 gone after 12 s")
        self.assertEqual((record["peer"], record["seconds"]),
                         ("192.0.2.7", 12))
        self.assertNotIn("obj", record)

    def test_failure_traceback(self):
        """A logged failure carries its traceback in the line."""
        out = io.StringIO()
        log = Logger(namespace="contivd.test", observer=JSONObserver(out))
        try:
            raise ZeroDivisionError("by zero")
        except ZeroDivisionError:
            log.failure("dividing", Failure())
        record = json.loads(out.getvalue())
        self.assertIn("ZeroDivisionError", record["failure"])
        self.assertEqual(record["level"], "critical")
