"""
Cluster membership with real agents: three contivd processes against a
real etcd, each with its own Open vSwitch.
"""

import time

from twisted.trial.unittest import SynchronousTestCase

from contivd.harness import Harness, skip_reason, wait_until
from tests.agents import Agent, set_global

REASON = skip_reason("etcd", "ovsdb-server", "ovs-vswitchd")


class ThreeAgentTests(SynchronousTestCase):
    skip = REASON

    def setUp(self):
        self.harness = Harness()
        self.addCleanup(self.harness.close)
        self.etcd = self.harness.etcd()

    def agent(self, name, vtep):
        return Agent(self.harness, name, self.etcd.url, vtep,
                     own_ovs_netns=True).start()

    def wait_peers(self, agent, expected, timeout=30):
        wait_until(f"{agent.name} to see {sorted(expected)}",
                   lambda: agent.peers() == set(expected), timeout)

    def test_discover_die_and_survive_etcd_restart(self):
        """
        An agent waits for the global config; three agents then see each
        other, see a SIGKILLed one gone within TTL + 2 s, and after an
        etcd restart register again and go on discovering.
        """
        a = self.agent("hostA", "127.0.0.1")
        wait_until("hostA to wait for the global config", lambda: any(
            c["name"] == "globals" and c["status"] == "waiting"
            for c in a.get("/inspect/components")["components"]), 30)
        vtep_key = "/contiv.io/service/netplugin.vtep/127.0.0.1:4789"
        self.assertIsNone(self.etcd.get(vtep_key))

        set_global(self.etcd.url)
        a.wait_healthy()
        self.assertLessEqual(self.etcd.get(vtep_key)["ttl"], 10)

        b = self.agent("hostB", "127.0.0.2")
        c = self.agent("hostC", "127.0.0.3")
        for agent, others in ((a, {"hostB", "hostC"}),
                              (b, {"hostA", "hostC"}),
                              (c, {"hostA", "hostB"})):
            self.wait_peers(agent, others)
            agent.wait_healthy()

        c.kill()
        killed = time.monotonic()
        self.wait_peers(a, {"hostB"}, timeout=20)
        self.wait_peers(b, {"hostA"}, timeout=20)
        self.assertLessEqual(time.monotonic() - killed, 10 + 2)

        self.etcd.kill()
        time.sleep(2)
        self.etcd.start()
        wait_until("hostA registered again", lambda: self.etcd.get(
            vtep_key) is not None, 20)
        c.start()
        for agent, others in ((a, {"hostB", "hostC"}),
                              (b, {"hostA", "hostC"}),
                              (c, {"hostA", "hostB"})):
            self.wait_peers(agent, others, timeout=40)

    def test_fwd_mode_mismatch_stops(self):
        """
        An agent whose --fwd-mode differs from the cluster's exits
        non-zero, naming both modes.
        """
        set_global(self.etcd.url, "bridge")
        agent = Agent(self.harness, "hostM", self.etcd.url, "127.0.0.9",
                      extra=("--plugin-mode", "none",
                             "--fwd-mode", "routing"), own_ovs_netns=True)
        agent.start()
        self.assertNotEqual(agent.process.wait(30), 0)
        log = agent.log_tail()
        self.assertIn("--fwd-mode is routing", log)
        self.assertIn("fwd-mode is bridge", log)
