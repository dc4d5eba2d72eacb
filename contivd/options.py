"""
The agent's command line: options, their environment variables, and the
checks that refuse a bad configuration before anything starts.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import sys
from collections.abc import Callable
from urllib.parse import urlsplit

import attr
from twisted.internet.endpoints import serverFromString
from twisted.python import usage

from contivd.errors import ConfigError

ENV_PREFIX = "CONTIV_"

FWD_MODES = ("bridge", "routing")
NET_MODES = ("vxlan", "vlan")
PLUGIN_MODES = ("docker", "kubernetes", "none")
DATAPATHS = ("system", "netdev")
LOG_FORMATS = ("text", "json")


def _one_of(choices: tuple[str, ...]) -> Callable[[str, str], str]:
    def check(name: str, value: str) -> str:
        if value not in choices:
            raise ConfigError(
                f"--{name}: {value!r} is not one of {', '.join(choices)}"
            )
        return value

    return check


def _ipv4(name: str, value: str) -> str:
    try:
        return str(ipaddress.IPv4Address(value))
    except ValueError:
        raise ConfigError(
            f"--{name}: {value!r} is not an IPv4 address (like 192.0.2.10)"
        ) from None


def _port(name: str, value: str) -> int:
    try:
        port = int(value)
    except ValueError:
        port = -1
    if not 1 <= port <= 65535:
        raise ConfigError(f"--{name}: {value!r} is not a port (1-65535)")
    return port


def _comma_list(value: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in value.split(",") if item.strip())


def _etcd_urls(name: str, value: str) -> tuple[str, ...]:
    urls = _comma_list(value)
    if not urls:
        raise ConfigError(f"--{name}: give at least one etcd URL")
    for url in urls:
        _check_url(name, url)
    return urls


def _check_url(name: str, url: str) -> None:
    bad = ConfigError(f"--{name}: {url!r} is not an etcd client URL "
                      "(like http://127.0.0.1:2379)")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise bad from None
    if (parts.scheme not in ("http", "https") or not parts.hostname
            or port == 0 or " " in url
            or parts.path.strip("/") or parts.query):
        raise bad


def _server_endpoint(name: str, value: str) -> str:
    try:
        serverFromString(None, value)
    except (ValueError, KeyError, TypeError) as e:
        raise ConfigError(
            f"--{name}: {value!r} is not a Twisted server endpoint "
            f"(like tcp:9090:interface=127.0.0.1): {e}"
        ) from None
    kind, _, rest = value.partition(":")
    if kind in ("tcp", "tcp6", "ssl"):
        port = rest.split(":")[0].removeprefix("port=")
        if not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ConfigError(f"--{name}: {value!r} has a port outside "
                              "0-65535")
    return value


def _ovsdb(name: str, value: str) -> str:
    if not value.startswith(("unix:", "tcp:", "ssl:")):
        raise ConfigError(
            f"--{name}: {value!r} is not an OVSDB remote "
            "(unix:PATH or tcp:HOST:PORT)"
        )
    return value


def _docker(name: str, value: str) -> str:
    if not value.startswith(("unix://", "tcp://", "http://")):
        raise ConfigError(
            f"--{name}: {value!r} is not a Docker API address "
            "(unix:///PATH or tcp://HOST:PORT)"
        )
    return value


def default_address() -> str | None:
    """
    The IPv4 address of the interface that holds the default route, or
    L{None} when there is no default route.
    """
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        routes = ipr.get_default_routes(family=socket.AF_INET)
        if not routes:
            return None
        oif = routes[0].get_attr("RTA_OIF")
        for addr in ipr.get_addr(family=socket.AF_INET, index=oif):
            return str(addr.get_attr("IFA_ADDRESS"))
    return None


@attr.s(frozen=True, auto_attribs=True, kw_only=True)
class AgentConfig:
    """The agent's validated configuration."""

    etcd: tuple[str, ...] = ("http://127.0.0.1:2379",)
    host_label: str = attr.Factory(socket.gethostname)
    vtep_ip: str = "127.0.0.1"
    ctrl_ip: str = "127.0.0.1"
    fwd_mode: str = "bridge"
    net_mode: str = "vxlan"
    vlan_uplinks: tuple[str, ...] = ()
    vxlan_port: int = 4789
    plugin_mode: str = "docker"
    docker: str = "unix:///var/run/docker.sock"
    docker_plugin_dir: str = "/run/docker/plugins"
    ovsdb: str = "unix:/var/run/openvswitch/db.sock"
    datapath: str = "system"
    of_listen: str = "tcp:6633:interface=127.0.0.1"
    status_listen: str = "tcp:9090:interface=127.0.0.1"
    log_format: str = "text"
    dead_host_grace: float = 30.0


class AgentOptions(usage.Options):
    """
    Options of C{twistd contivd}.

    Every option can also be set by C{CONTIV_<NAME>} in the environment;
    the command line wins.
    """

    synopsis = "[options]"
    longdesc = (
        "Runs the contivd agent: joins the cluster through etcd, programs "
        "Open vSwitch, and serves Docker's network and IPAM plugin API. "
        "Each option may also be given as "
        "CONTIV_<OPTION> in the environment, e.g. CONTIV_FWD_MODE=routing."
    )

    optParameters = [
        ["etcd", None, "http://127.0.0.1:2379",
         "etcd client URLs, comma separated, tried in turn"],
        ["host-label", None, None, "this host's name (default: hostname)"],
        ["vtep-ip", None, None,
         "VXLAN tunnel endpoint address (default: the address of the "
         "interface of the default route)"],
        ["ctrl-ip", None, None,
         "control address other agents reach (default: as --vtep-ip)"],
        ["fwd-mode", None, "bridge", "forwarding mode: bridge or routing"],
        ["net-mode", None, "vxlan", "network mode: vxlan or vlan"],
        ["vlan-uplinks", None, "",
         "uplink interfaces, comma separated (required with vlan)"],
        ["vxlan-port", None, "4789", "VXLAN UDP port"],
        ["plugin-mode", None, "docker",
         "runtime front end: docker, kubernetes or none"],
        ["docker", None, "unix:///var/run/docker.sock", "Docker API address"],
        ["docker-plugin-dir", None, "/run/docker/plugins",
         "directory Docker searches for plugin sockets"],
        ["ovsdb", None, "unix:/var/run/openvswitch/db.sock",
         "OVSDB remote"],
        ["datapath", None, "system",
         "OVS datapath type: system (kernel) or netdev (userspace)"],
        ["of-listen", None, "tcp:6633:interface=127.0.0.1",
         "Twisted endpoint the OpenFlow controller listens on"],
        ["status-listen", None, "tcp:9090:interface=127.0.0.1",
         "Twisted endpoint of the status REST server"],
        ["log-format", None, "text", "log format: text or json"],
        ["dead-host-grace", None, "30",
         "seconds after a host's registration expires before its "
         "endpoints are reclaimed"],
    ]

    def __init__(self, environ: dict[str, str] | None = None) -> None:
        super().__init__()
        env = os.environ if environ is None else environ
        for parameter in self.optParameters:
            long_name = str(parameter[0])
            key = ENV_PREFIX + long_name.upper().replace("-", "_")
            if key in env:
                self[long_name] = env[key]
        self.config: AgentConfig | None = None

    def postOptions(self) -> None:
        try:
            self.config = self.to_config()
        except ConfigError as e:
            sys.stderr.write(f"contivd: {e}\n")
            raise SystemExit(2) from None
        if self.parent is not None and self.config.log_format == "json":
            from contivd import logs

            logs.use_json_for(self.parent)

    def to_config(self) -> AgentConfig:
        """
        Check every option and build the L{AgentConfig}.

        @raise ConfigError: naming the first option that is wrong.
        """
        fwd_mode = _one_of(FWD_MODES)("fwd-mode", self["fwd-mode"])
        net_mode = _one_of(NET_MODES)("net-mode", self["net-mode"])
        plugin_mode = _one_of(PLUGIN_MODES)("plugin-mode",
                                            self["plugin-mode"])
        datapath = _one_of(DATAPATHS)("datapath", self["datapath"])
        log_format = _one_of(LOG_FORMATS)("log-format", self["log-format"])
        uplinks = _comma_list(self["vlan-uplinks"] or "")
        if net_mode == "vlan" and not uplinks:
            raise ConfigError(
                "--vlan-uplinks: required with --net-mode vlan; give the "
                "uplink interfaces, comma separated"
            )
        vtep_ip = self["vtep-ip"]
        ctrl_ip = self["ctrl-ip"]
        if vtep_ip is not None:
            vtep_ip = _ipv4("vtep-ip", vtep_ip)
        if ctrl_ip is not None:
            ctrl_ip = _ipv4("ctrl-ip", ctrl_ip)
        if vtep_ip is None or ctrl_ip is None:
            found = default_address()
            if found is None:
                raise ConfigError(
                    "--vtep-ip: this host has no default route to take an "
                    "address from; give --vtep-ip and --ctrl-ip"
                )
            vtep_ip = vtep_ip or found
            ctrl_ip = ctrl_ip or found
        try:
            grace = float(self["dead-host-grace"])
        except ValueError:
            grace = -1.0
        if grace < 0:
            raise ConfigError(
                f"--dead-host-grace: {self['dead-host-grace']!r} is not a "
                "number of seconds"
            )
        return AgentConfig(
            etcd=_etcd_urls("etcd", self["etcd"]),
            host_label=self["host-label"] or socket.gethostname(),
            vtep_ip=vtep_ip,
            ctrl_ip=ctrl_ip,
            fwd_mode=fwd_mode,
            net_mode=net_mode,
            vlan_uplinks=uplinks,
            vxlan_port=_port("vxlan-port", self["vxlan-port"]),
            plugin_mode=plugin_mode,
            docker=_docker("docker", self["docker"]),
            docker_plugin_dir=self["docker-plugin-dir"],
            ovsdb=_ovsdb("ovsdb", self["ovsdb"]),
            datapath=datapath,
            of_listen=_server_endpoint("of-listen", self["of-listen"]),
            status_listen=_server_endpoint("status-listen",
                                           self["status-listen"]),
            log_format=log_format,
            dead_host_grace=grace,
        )
