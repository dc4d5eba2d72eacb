"""Tests for the agent's command line, L{contivd.options}."""

import subprocess
import sys

from twisted.trial.unittest import SynchronousTestCase

from contivd.errors import ConfigError
from contivd.options import AgentOptions

BASE = ["--vtep-ip", "192.0.2.1", "--ctrl-ip", "192.0.2.1"]


def parse(args, environ=None):
    options = AgentOptions(environ=environ or {})
    options.parseOptions(BASE + list(args))
    return options.config




class OptionTests(SynchronousTestCase):
    def test_defaults(self):
        """Without options the agent runs bridge/vxlan/docker on 6633."""
        config = parse([])
        self.assertEqual(
            (config.fwd_mode, config.net_mode, config.plugin_mode,
             config.vxlan_port, config.of_listen, config.status_listen,
             config.etcd),
            ("bridge", "vxlan", "docker", 4789,
             "tcp:6633:interface=127.0.0.1", "tcp:9090:interface=127.0.0.1",
             ("http://127.0.0.1:2379",)))

    def test_environment(self):
        """CONTIV_<NAME> sets an option; the command line wins over it."""
        env = {"CONTIV_FWD_MODE": "routing",
               "CONTIV_ETCD": "http://a:1,http://b:2",
               "CONTIV_VXLAN_PORT": "8472"}
        config = parse([], env)
        self.assertEqual(config.fwd_mode, "routing")
        self.assertEqual(config.etcd, ("http://a:1", "http://b:2"))
        self.assertEqual(config.vxlan_port, 8472)
        self.assertEqual(parse(["--fwd-mode", "bridge"], env).fwd_mode,
                         "bridge")

    def assertRefused(self, args, *words, environ=None):
        options = AgentOptions(environ=environ or {})
        for name, value in zip(args[::2], args[1::2], strict=True):
            options[name.lstrip("-")] = value
        options["vtep-ip"] = options["vtep-ip"] or "192.0.2.1"
        options["ctrl-ip"] = options["ctrl-ip"] or "192.0.2.1"
        e = self.assertRaises(ConfigError, options.to_config)
        for word in words:
            self.assertIn(word, str(e))

    def test_vlan_needs_uplinks(self):
        """vlan mode without uplinks is refused, naming --vlan-uplinks."""
        self.assertRefused(["--net-mode", "vlan"], "--vlan-uplinks")
        config = parse(["--net-mode", "vlan", "--vlan-uplinks", "eth1,eth2"])
        self.assertEqual(config.vlan_uplinks, ("eth1", "eth2"))

    def test_bad_values(self):
        """Each bad value is refused with the option and what it takes."""
        self.assertRefused(["--fwd-mode", "sideways"], "--fwd-mode",
                           "bridge, routing")
        self.assertRefused(["--vtep-ip", "300.1.2.3"], "--vtep-ip")
        self.assertRefused(["--vxlan-port", "0"], "--vxlan-port")
        self.assertRefused(["--plugin-mode", "mesos"], "--plugin-mode")
        self.assertRefused(["--datapath", "dpdk"], "--datapath")
        self.assertRefused(["--of-listen", "bogus:1"], "--of-listen")
        self.assertRefused(["--etcd", "127.0.0.1:2379"], "--etcd")
        for url in ("http://127.0.0.1:99999", "http://127.0.0.1:abc",
                    "http://:2379", "http://[::1",
                    "http://127.0.0.1:1 http://127.0.0.1:2",
                    "http://127.0.0.1:0"):
            self.assertRefused(["--etcd", url], "--etcd",
                               "is not an etcd client URL")
        self.assertRefused(["--status-listen", "tcp:99999"],
                           "--status-listen", "0-65535")
        self.assertRefused(["--ovsdb", "/var/run/db.sock"], "--ovsdb")
        self.assertRefused(["--log-format", "xml"], "--log-format")


class TwistdTests(SynchronousTestCase):
    def twistd(self, *args, env=None):
        return subprocess.run(
            [sys.executable, "-c",
             "import sys; from twisted.scripts.twistd import run; "
             "sys.argv[0] = 'twistd'; run()"] + list(args),
            capture_output=True, text=True, timeout=60, env=env)

    def test_help_lists_every_option(self):
        """C{twistd contivd --help} lists every documented option."""
        out = self.twistd("contivd", "--help").stdout
        for name in ("etcd", "host-label", "vtep-ip", "ctrl-ip", "fwd-mode",
                     "net-mode", "vlan-uplinks", "vxlan-port", "plugin-mode",
                     "docker", "docker-plugin-dir", "ovsdb", "datapath",
                     "of-listen", "status-listen", "log-format"):
            self.assertIn(f"--{name}=", out)

    def test_refusal_is_one_line(self):
        """A bad option stops twistd with one line and a non-zero exit."""
        result = self.twistd("-n", "--pidfile=", "contivd",
                             "--fwd-mode", "sideways")
        self.assertNotEqual(result.returncode, 0)
        self.assertEqual(result.stderr.strip().splitlines(),
                         ["contivd: --fwd-mode: 'sideways' is not one of "
                          "bridge, routing"])
