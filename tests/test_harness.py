"""Tests for the harness of real parts, L{contivd.harness}."""

import os
import subprocess

from twisted.trial.unittest import SynchronousTestCase

from contivd.harness import IMAGE, Harness, PartFailed, skip_reason

REASON = skip_reason("etcd", "ovsdb-server", "ovs-vswitchd", "dockerd")


def _pids(name):
    out = subprocess.run(["pgrep", "-f", name], capture_output=True,
                         text=True).stdout
    return set(out.split())


class HarnessTests(SynchronousTestCase):
    skip = REASON

    def test_parts_answer_and_leave_nothing(self):
        """
        etcd, OVS and dockerd each answer, and closing the harness leaves
        no process, namespace or file of theirs behind.
        """
        harness = Harness()
        self.addCleanup(lambda: os.path.isdir(harness.directory)
                        and harness.close())
        etcd = harness.etcd()
        ovs = harness.ovs()
        docker = harness.dockerd()
        ns = harness.netns("t")
        directory = harness.directory

        self.assertEqual(etcd.get("/")["dir"], True)
        ovs.vsctl("add-br", "b0", "--", "set", "bridge", "b0",
                  "datapath_type=netdev")
        self.assertIn("b0", ovs.vsctl("list-br").split())
        self.assertEqual(
            docker.docker("run", "--rm", "--net", "none", IMAGE,
                          "echo", "hello").stdout.strip(), "hello")
        self.assertIn("lo", ns.exec("ip", "-o", "link").stdout)
        running = _pids(directory)
        self.assertTrue(running)

        harness.close()

        self.assertEqual(_pids(directory), set())
        self.assertFalse(os.path.exists(directory))
        namespaces = subprocess.run(["ip", "netns", "list"],
                                    capture_output=True, text=True).stdout
        self.assertNotIn(ns.name, namespaces)
        links = os.listdir("/sys/class/net")
        self.assertNotIn("b0", links)
        self.assertNotIn("ovs-netdev", links)

    def test_one_userspace_datapath_a_namespace(self):
        """
        A second OVS in a namespace that already has one is refused with
        a clear reason; in a namespace of its own it starts.
        """
        harness = Harness()
        self.addCleanup(harness.close)
        ns = harness.netns("one")
        harness.ovs("first", netns=ns.name)
        e = self.assertRaises(PartFailed, harness.ovs, "second",
                              netns=ns.name)
        self.assertIn("one userspace datapath works per namespace", str(e))
        harness.ovs("third", netns=harness.netns("two").name)

    def test_etcd_restart_keeps_data(self):
        """etcd killed and started again keeps what was written."""
        harness = Harness()
        self.addCleanup(harness.close)
        etcd = harness.etcd()
        subprocess.run(["curl", "-sf", "-XPUT", etcd.url + "/v2/keys/k",
                        "-d", "value=v"], check=True, capture_output=True)
        etcd.kill()
        etcd.start()
        self.assertEqual(etcd.get("/k")["value"], "v")
