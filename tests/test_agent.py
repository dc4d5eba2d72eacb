"""Tests for the agent's shared context and its store component."""

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from contivd.agent import UNREACHABLE_GRACE, Agent, StoreConnection
from contivd.options import AgentConfig
from contivd.store.memory import MemoryStore
from contivd.supervisor import FAILED, RUNNING


class StoreConnectionTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.store = MemoryStore(self.clock)
        self.store.unreachable_since = None
        self.agent = Agent(AgentConfig(), self.clock, lambda f: None,
                           store=self.store)
        self.component = self.agent.supervisor.add(
            StoreConnection(self.agent))
        self.agent.supervisor.startService()
        self.addCleanup(self.agent.supervisor.stopService)

    def test_down_while_etcd_does_not_answer(self):
        """
        The store component fails, naming etcd, once requests have found
        etcd unreachable for the grace period, and runs again when etcd
        answers.
        """
        self.assertEqual(self.component.state.status, RUNNING)
        self.store.unreachable_since = self.clock.seconds()
        self.clock.advance(UNREACHABLE_GRACE - 1)
        self.assertEqual(self.component.state.status, RUNNING)
        self.clock.advance(1)
        self.assertEqual(self.component.state.status, FAILED)
        self.assertIn("does not answer", self.component.state.reason)
        self.store.unreachable_since = None
        self.clock.advance(60)
        self.assertEqual(self.component.state.status, RUNNING)

    def test_wait_for_names_what_it_waits_for(self):
        """A component waiting for another says which one."""
        waiter = StoreConnection(self.agent)
        self.component.state.status = "starting"
        d = Deferred.fromCoroutine(
            self.agent.wait_for(waiter, "store", "absent", why=", to go"))
        self.assertEqual(waiter.state.reason, "the store component, to go")
        self.assertNoResult(d)
        self.component.state._set(RUNNING, "", 0)
        self.assertIsNone(self.successResultOf(d))
