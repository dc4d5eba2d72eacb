"""Tests for L{contivd.supervisor}."""

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from contivd.errors import FatalError
from contivd.supervisor import (
    FAILED,
    RUNNING,
    STARTING,
    STOPPED,
    WAITING,
    Backoff,
    Component,
    Supervisor,
)


class Flaky(Component):
    """A component whose first C{failures} starts fail."""

    def __init__(self, name, failures=0):
        self.name = name
        super().__init__()
        self.failures = failures
        self.starts = 0
        self.stops = 0

    def start(self):
        self.starts += 1
        if self.starts <= self.failures:
            return fail(RuntimeError(f"boom {self.starts}"))
        return succeed(None)

    def stop(self):
        self.stops += 1
        return succeed(None)


class Slow(Component):
    """A component whose start and stop wait for the test to fire them."""

    def __init__(self, name, log):
        self.name = name
        super().__init__()
        self.log_ = log
        self.started = Deferred()
        self.stopped = None

    def start(self):
        return self.started

    def stop(self):
        self.log_.append(("stop", self.name))
        self.stopped = Deferred()
        return self.stopped


class SupervisorTests(SynchronousTestCase):
    def setUp(self):
        self.addCleanup(self.flushLoggedErrors, RuntimeError)
        self.clock = Clock()
        self.fatal = []
        self.supervisor = Supervisor(
            self.clock, self.fatal.append,
            Backoff(initial=1.0, factor=2.0, maximum=10.0, jitter=0.5),
            rand=lambda: 0.0)

    def test_restart_while_sibling_runs(self):
        """
        A child whose start fails twice is restarted after each failure,
        with growing delays, while its sibling keeps running untouched.
        """
        flaky = self.supervisor.add(Flaky("flaky", failures=2))
        steady = self.supervisor.add(Flaky("steady"))
        self.supervisor.startService()

        self.assertEqual(steady.state.status, RUNNING)
        self.assertEqual(flaky.state.status, FAILED)
        self.assertEqual(flaky.state.reason, "boom 1")
        self.assertEqual(flaky.state.next_start, 1.0)

        self.clock.advance(0.9)
        self.assertEqual(flaky.starts, 1)
        self.clock.advance(0.1)
        self.assertEqual(flaky.starts, 2)
        self.assertEqual(flaky.state.status, FAILED)
        self.assertEqual(flaky.state.next_start, 3.0)

        self.clock.advance(2.0)
        self.assertEqual(flaky.state.status, RUNNING)
        self.assertEqual(flaky.state.restarts, 2)
        self.assertEqual((steady.starts, steady.stops), (1, 0))
        self.assertEqual(steady.state.status, RUNNING)

    def test_crash_after_running(self):
        """
        A running child that reports a crash is stopped and started again
        after the backoff; the backoff resets once it runs.
        """
        child = self.supervisor.add(Flaky("child"))
        self.supervisor.startService()
        child.crashed(RuntimeError("lost the switch"))
        self.assertEqual(child.stops, 1)
        self.assertEqual(child.state.status, FAILED)
        self.assertEqual(child.state.reason, "lost the switch")
        self.clock.advance(1.0)
        self.assertEqual(child.state.status, RUNNING)
        child.crashed(RuntimeError("again"))
        self.assertEqual(child.state.next_start, self.clock.seconds() + 1.0)

    def test_jitter_spreads_delays(self):
        """The delay is scaled down by at most the jitter fraction."""
        backoff = Backoff(initial=2.0, factor=3.0, maximum=100.0, jitter=0.5)
        self.assertEqual(backoff.delay(1, lambda: 0.0), 2.0)
        self.assertEqual(backoff.delay(1, lambda: 1.0), 1.0)
        self.assertEqual(backoff.delay(3, lambda: 0.0), 18.0)
        self.assertEqual(backoff.delay(10, lambda: 0.0), 100.0)

    def test_fatal_stops_retrying(self):
        """A FatalError goes to the fatal handler and is not retried."""
        class Fatal(Component):
            name = "globals"

            def start(self):
                return fail(FatalError("fwd-mode routing, cluster: bridge"))

        child = self.supervisor.add(Fatal())
        self.supervisor.startService()
        self.assertEqual(len(self.fatal), 1)
        self.assertEqual(child.state.status, FAILED)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_waiting_for_and_when_running(self):
        """
        A child's waiting reason is visible while it starts, and
        when_running fires for a dependent once it runs.
        """
        log = []
        slow = self.supervisor.add(Slow("slow", log))
        self.supervisor.startService()
        self.assertEqual(slow.state.status, STARTING)
        slow.waiting_for("the global config in etcd")
        self.assertEqual(
            (slow.state.status, slow.state.reason),
            (WAITING, "the global config in etcd"))
        ready = slow.state.when_running()
        self.assertNoResult(ready)
        slow.started.callback(None)
        self.successResultOf(ready)
        self.successResultOf(slow.state.when_running())

    def test_stop_in_reverse_order_waiting_for_each(self):
        """
        Stopping stops the last child first and does not stop the one
        before until the last one has stopped.
        """
        log = []
        first = self.supervisor.add(Slow("first", log))
        second = self.supervisor.add(Slow("second", log))
        self.supervisor.startService()
        first.started.callback(None)
        second.started.callback(None)
        d = self.supervisor.stopService()
        self.assertEqual(log, [("stop", "second")])
        second.stopped.callback(None)
        self.assertEqual(log, [("stop", "second"), ("stop", "first")])
        self.assertNoResult(d)
        first.stopped.callback(None)
        self.successResultOf(d)
        self.assertEqual([first.state.status, second.state.status],
                         [STOPPED, STOPPED])

    def test_stop_cancels_pending_restart(self):
        """Stopping a failed child cancels its scheduled restart."""
        flaky = self.supervisor.add(Flaky("flaky", failures=5))
        self.supervisor.startService()
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.successResultOf(self.supervisor.stopService())
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(100)
        self.assertEqual(flaky.starts, 1)

    def test_duplicate_name_refused(self):
        """Two components may not share a name."""
        self.supervisor.add(Flaky("x"))
        self.assertRaises(ValueError, self.supervisor.add, Flaky("x"))
