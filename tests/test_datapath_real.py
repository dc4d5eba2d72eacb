"""
The datapath components of a real agent against a real OVS: remote
endpoints become flows towards their host's tunnel, and an OVSDB
restart leaves the flows alone.
"""

import time

from twisted.trial.unittest import SynchronousTestCase

from contivd import model
from contivd.constants import VXLAN_BRIDGE
from contivd.harness import Harness, run, skip_reason, wait_until
from tests.agents import Agent, contivctl, set_global

REASON = skip_reason("etcd", "ovsdb-server", "ovs-vswitchd")
PEER = "192.0.2.50"


class DatapathTests(SynchronousTestCase):
    skip = REASON

    def setUp(self):
        self.harness = Harness()
        self.addCleanup(self.harness.close)
        self.etcd = self.harness.etcd()
        set_global(self.etcd.url)
        contivctl(self.etcd.url, "net", "create", "web",
                  "--subnet", "10.9.1.0/24")

    def put(self, obj, ttl=None):
        url = f"{self.etcd.url}/v2/keys{obj.key}"
        args = ["curl", "-sf", "-XPUT", url, "--data-urlencode",
                f"value={obj.to_json()}"]
        if ttl:
            args += ["-d", f"ttl={ttl}"]
        run(args)

    def remote_flows(self, agent, mac):
        return [f for f in agent.ovs.flows(VXLAN_BRIDGE) if mac in f]

    def test_remote_endpoint_and_ovsdb_restart(self):
        """
        A remote endpoint gets a flow once its host's tunnel exists; an
        ovsdb-server restart leaves the same flows, and the agent is
        healthy again after it.
        """
        agent = Agent(self.harness, "hostA", self.etcd.url, "127.0.0.1",
                      own_ovs_netns=True).start()
        agent.wait_healthy()
        remote = model.Endpoint(
            net_id="web.default", endpoint_id="r1", ip_address="10.9.1.7",
            mac_address=model.mac_for("10.9.1.7"), homing_host="hostR",
            vtep_ip=PEER)
        self.put(remote)
        mac = remote.mac_address
        time.sleep(2)
        self.assertEqual(self.remote_flows(agent, mac), [],
                         "no flow before the host's tunnel exists")

        self.put(model.ServiceInfo(service_name="netplugin.vtep",
                                   host_addr=PEER, port=4789,
                                   hostname="hostR", ttl=600), ttl=600)
        wait_until("the remote endpoint's flow",
                   lambda: len(self.remote_flows(agent, mac)) == 1, 30)
        self.assertIn("set_field:", self.remote_flows(agent, mac)[0])
        before = agent.ovs.flows(VXLAN_BRIDGE)

        agent.ovs.kill_ovsdb()
        time.sleep(3)
        agent.ovs.start_ovsdb()
        agent.wait_healthy(60)
        time.sleep(2)
        self.assertEqual(agent.ovs.flows(VXLAN_BRIDGE), before)
