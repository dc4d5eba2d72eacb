"""
The datapath components: the OVSDB side (bridge, tunnels to peers), the
OpenFlow side (the controller the bridge connects to), and the renderer
that turns the agent's view of the cluster into the bridge's desired
state.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import serverFromString
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from contivd.cluster import Peer
from contivd.constants import DATAPATH_IDS, VXLAN_BRIDGE
from contivd.openflow import desired
from contivd.openflow.controller import OpenFlowController, OpenFlowService
from contivd.ovsdb.client import OVSDB, controller_target
from contivd.reaper import reclaim_endpoint
from contivd.supervisor import Component

if TYPE_CHECKING:
    from contivd.agent import Agent
    from contivd.view import ClusterView

log = Logger()

#: How often the OpenFlow component checks that its switch is still there.
LIVENESS_CHECK = 1.0


class OVSDBComponent(Component):
    """
    Connects to OVSDB, makes the VXLAN bridge, and keeps one tunnel per
    peer; tunnel port numbers go to the renderer.
    """

    name = "ovsdb"

    def __init__(self, agent: "Agent", renderer: "Renderer") -> None:
        super().__init__()
        self.agent = agent
        self.renderer = renderer
        self.client: OVSDB | None = None
        self._health: LoopingCall | None = None

    async def _start(self) -> None:
        config = self.agent.config
        await self.agent.wait_for(self, "globals")
        client = OVSDB(self.agent.reactor, config.ovsdb)
        self.client = client
        self.waiting_for(f"OVSDB at {config.ovsdb}")
        await client.connect(timeout=30)
        outcome = await client.ensure_bridge(
            VXLAN_BRIDGE, controller_target(config.of_listen),
            config.datapath, DATAPATH_IDS[VXLAN_BRIDGE])
        log.info("bridge {bridge}: {outcome}", bridge=VXLAN_BRIDGE,
                 outcome=outcome)
        await self._reconcile(client)
        self.agent.ovsdb = client
        self.agent.peers.observe(self._peer_added, self._peer_removed)
        self._health = LoopingCall(self._check_connected)
        self._health.clock = self.agent.reactor
        self._health.start(LIVENESS_CHECK, now=False)

    def start(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._start())

    async def _reconcile(self, client: OVSDB) -> None:
        """
        Once the cluster's state is read, remove our ports and tunnels
        that belong to no endpoint or peer, and reclaim the local
        endpoints whose port or veth is gone.
        """
        await self.agent.wait_for(self, "sync", "cluster",
                                  why=", to know which ports to keep")
        local = {ep_id: ep for ep_id, ep in
                 self.agent.view.kind("endpoints").items()
                 if ep.homing_host == self.agent.config.host_label}
        peers = [p.vtep_ip for p in self.agent.peers]
        removed = await client.reconcile(VXLAN_BRIDGE, local, peers)
        if removed:
            log.info("removed stale ports {names}", names=", ".join(removed))
        records = await client.our_ports(VXLAN_BRIDGE)
        plugged = {r.endpoint_id: r for r in records
                   if r.kind == "endpoint" and r.ofport}
        for ep_id, endpoint in local.items():
            record = plugged.get(ep_id)
            if record is None:
                log.info("reclaiming local endpoint {ep}: its port or veth "
                         "is gone", ep=ep_id)
                await client.unplug_endpoint(VXLAN_BRIDGE, ep_id)
                await reclaim_endpoint(self.agent.store, endpoint)
            elif record.ofport is not None:
                self.renderer.port_up(ep_id, record.ofport)

    def _check_connected(self) -> None:
        if self.client is not None and not self.client.connected:
            self.crashed(RuntimeError(
                f"lost the OVSDB connection to {self.agent.config.ovsdb}"))

    def _peer_added(self, peer: Peer) -> None:
        if self.client is None:
            return
        d = self.client.add_tunnel(VXLAN_BRIDGE, peer.vtep_ip,
                                   self.agent.config.vxlan_port)

        def added(ofport: int) -> None:
            if peer in self.agent.peers:
                log.info("tunnel to {host} ({vtep}) on port {ofport}",
                         host=peer.hostname, vtep=peer.vtep_ip,
                         ofport=ofport)
                self.renderer.tunnel_up(peer.vtep_ip, ofport)

        d.addCallback(added)
        d.addErrback(lambda f: log.failure(
            "adding the tunnel to {vtep} failed", f, vtep=peer.vtep_ip))

    def _peer_removed(self, peer: Peer) -> None:
        self.renderer.tunnel_down(peer.vtep_ip)
        if self.client is None:
            return
        d = self.client.remove_tunnel(VXLAN_BRIDGE, peer.vtep_ip)
        d.addCallback(lambda _: log.info(
            "removed the tunnel to {host} ({vtep})", host=peer.hostname,
            vtep=peer.vtep_ip))
        d.addErrback(lambda f: log.failure(
            "removing the tunnel to {vtep} failed", f, vtep=peer.vtep_ip))

    def stop(self) -> Deferred[None]:
        if self._health is not None and self._health.running:
            self._health.stop()
        self._health = None
        self.agent.peers.unobserve(self._peer_added)
        # The renderer keeps the tunnels it knows: their ports outlive an
        # OVSDB reconnect, and dropping them would cut remote traffic.
        client, self.client = self.client, None
        self.agent.ovsdb = None
        if client is None:
            return succeed(None)
        return client.close()


class OpenFlowComponent(Component):
    """
    Listens on C{--of-listen} and runs once the VXLAN bridge has
    connected and holds the desired flows; fails (to be restarted) when
    the switch goes away.

    The controller, and with it the desired state, outlives restarts.
    """

    name = "openflow"

    def __init__(self, agent: "Agent",
                 controller: OpenFlowController) -> None:
        super().__init__()
        self.agent = agent
        self.controller = controller
        self._service: OpenFlowService | None = None
        self._liveness: LoopingCall | None = None

    async def _start(self) -> None:
        endpoint = serverFromString(self.agent.reactor,
                                    self.agent.config.of_listen)
        self._service = OpenFlowService(self.controller, endpoint)
        await self._service.startService()
        self.waiting_for(f"{VXLAN_BRIDGE} to connect to the controller on "
                         f"{self.agent.config.of_listen}")
        await self.controller.when_connected(VXLAN_BRIDGE)
        self._liveness = LoopingCall(self._check_switch)
        self._liveness.clock = self.agent.reactor
        self._liveness.start(LIVENESS_CHECK, now=False)

    def start(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._start())

    def _check_switch(self) -> None:
        if self.controller.switch(VXLAN_BRIDGE).connection is None:
            self.crashed(RuntimeError(
                f"{VXLAN_BRIDGE} disconnected from the controller"))

    def stop(self) -> Deferred[None]:
        if self._liveness is not None and self._liveness.running:
            self._liveness.stop()
        self._liveness = None
        service, self._service = self._service, None
        if service is None:
            return succeed(None)
        return service.stopService()


class Renderer:
    """
    Renders the view (networks, endpoints), the tunnels and the local
    endpoints' port numbers into the VXLAN bridge's desired state, once
    per burst of changes.
    """

    def __init__(self, agent: "Agent", view: "ClusterView",
                 controller: OpenFlowController) -> None:
        self.agent = agent
        self.view = view
        self.switch = controller.switch(VXLAN_BRIDGE)
        self.tunnels: dict[str, int] = {}
        self.ofports: dict[str, int] = {}
        self._pending: Any = None
        self._lookups: set[str] = set()
        self._vlans: dict[str, int] = {}
        view.on_change(self._view_changed)

    def local_vlan(self, network: Any) -> int:
        """
        The VLAN that tags a network's packets inside the bridge: its
        pktTag when set, else its VNI folded into 1-4094, else the next
        VLAN free, so that two networks never share one.
        """
        vlan = self._vlans.get(network.id)
        if vlan is not None:
            return vlan
        taken = set(self._vlans.values())
        vlan = (int(network.pkt_tag) if 1 <= network.pkt_tag <= 4094
                else (int(network.ext_pkt_tag) - 1) % 4094 + 1)
        while vlan in taken:
            vlan = vlan % 4094 + 1
        self._vlans[network.id] = vlan
        return vlan

    def tunnel_up(self, vtep_ip: str, ofport: int) -> None:
        self.tunnels[vtep_ip] = ofport
        self.schedule()

    def tunnel_down(self, vtep_ip: str) -> None:
        if self.tunnels.pop(vtep_ip, None) is not None:
            self.schedule()

    def port_up(self, endpoint_id: str, ofport: int) -> None:
        """Tell the renderer the port number of a local endpoint."""
        self.ofports[endpoint_id] = ofport
        self.schedule()

    def _view_changed(self, kind: str, obj_id: str, old: Any,
                      new: Any) -> None:
        if kind == "networks" and new is None:
            self._vlans.pop(obj_id, None)
        if kind in ("networks", "endpoints"):
            self.schedule()

    def schedule(self) -> None:
        """Render once, soon, however many changes come before."""
        if self._pending is None or not self._pending.active():
            self._pending = self.agent.reactor.callLater(0, self.render)

    def is_local(self, endpoint: Any) -> bool:
        return bool(endpoint.homing_host == self.agent.config.host_label)

    def state(self) -> desired.DesiredState:
        """The desired state of the bridge, from what is known now."""
        objects: list[desired.Object] = []
        networks = {}
        for net_id, network in self.view.kind("networks").items():
            if network.pkt_tag_type != "vxlan":
                continue
            networks[net_id] = network
            objects.append(desired.Network(net_id, network.ext_pkt_tag,
                                           self.local_vlan(network)))
        for vtep_ip, ofport in self.tunnels.items():
            objects.append(desired.Tunnel(vtep_ip, ofport))
        missing: list[str] = []
        for ep_id, ep in self.view.kind("endpoints").items():
            if ep.net_id not in networks or not ep.ip_address:
                continue
            mac = ep.mac_address
            if self.is_local(ep):
                port = self.ofports.get(ep_id)
                if port is None:
                    missing.append(ep_id)
                    continue
                objects.append(desired.LocalEndpoint(
                    ep_id, ep.net_id, port, mac, ep.ip_address))
            elif ep.vtep_ip:
                objects.append(desired.RemoteEndpoint(
                    ep_id, ep.net_id, mac, ep.ip_address, ep.vtep_ip))
        if missing:
            self._look_up_ports(missing)
        return desired.DesiredState.of(*objects)

    def render(self) -> Deferred[None]:
        """Hand the desired state to the switch."""
        self._pending = None
        return self.switch.set_state(self.state())

    def _look_up_ports(self, endpoint_ids: list[str]) -> None:
        client = self.agent.ovsdb
        wanted = set(endpoint_ids) - self._lookups
        if client is None or not wanted:
            return
        self._lookups |= wanted
        d = client.our_ports(VXLAN_BRIDGE)

        def found(records: list[Any]) -> None:
            self._lookups -= wanted
            changed = False
            for record in records:
                if (record.endpoint_id in wanted and record.ofport
                        and self.ofports.get(record.endpoint_id)
                        != record.ofport):
                    self.ofports[record.endpoint_id] = record.ofport
                    changed = True
            if changed:
                self.schedule()

        def failed(f: Any) -> None:
            self._lookups -= wanted
            log.failure("reading the endpoint ports failed", f)

        d.addCallbacks(found, failed)
