"""Tests for L{contivd.model}: validation, keys and Contiv's JSON."""

import json

import attr
from twisted.trial.unittest import SynchronousTestCase

from contivd import model
from contivd.errors import ValidationError


class NetworkTests(SynchronousTestCase):
    def refused(self, field, **kw):
        kw.setdefault("subnet", "10.1.1.0/24")
        with self.assertRaises(ValidationError) as c:
            model.Network.build(kw.pop("name", "web"), **kw)
        self.assertEqual(c.exception.field, field)
        return str(c.exception)

    def test_json_has_contiv_fields_and_key(self):
        """A network writes Contiv's field names at Contiv's key."""
        net = model.Network.build("web", "10.9.1.0/24", "10.9.1.254")
        data = json.loads(net.to_json())
        self.assertEqual(net.key, "/contiv.io/state/nets/web.default")
        self.assertEqual(
            [data[k] for k in ("id", "networkName", "tenant", "pktTagType",
                               "subnetIP", "subnetLen", "gateway")],
            ["web.default", "web", "default", "vxlan", "10.9.1.0", 24,
             "10.9.1.254"])
        self.assertEqual(model.Network.from_json(net.to_json()), net)

    def test_default_gateway_is_last_usable(self):
        """Without a gateway a network gets the subnet's last host."""
        net = model.Network.build("db", "10.9.2.0/24")
        self.assertEqual(net.gateway, "10.9.2.254")

    def test_bad_subnets(self):
        """A /33, host bits or a /31 are refused naming the subnet."""
        self.assertIn("not an IPv4 subnet",
                      self.refused("subnet", subnet="10.9.3.0/33"))
        self.assertIn("10.9.3.0/24",
                      self.refused("subnet", subnet="10.9.3.1/24"))
        self.assertIn("no address", self.refused("subnet",
                                                 subnet="10.9.3.0/31"))

    def test_gateway_outside_subnet(self):
        """A gateway outside the subnet, or its broadcast, is refused."""
        self.assertIn("outside", self.refused("gateway", gateway="10.2.0.1"))
        self.refused("gateway", gateway="10.1.1.255")

    def test_tag_ranges(self):
        """VLANs lie in 1-4094 and VNIs in 1-16777215."""
        self.assertIn("1-4094", self.refused("pktTag", encap="vlan",
                                             tag=5000))
        self.refused("pktTag", tag=16777216)
        net = model.Network.build("v", "10.1.1.0/24", encap="vlan", tag=4094)
        self.assertEqual((net.pkt_tag, net.ext_pkt_tag), (4094, 0))
        with self.assertRaises(ValidationError) as c:
            attr.evolve(net, pkt_tag=0)
        self.assertEqual(c.exception.field, "pktTag")

    def test_bad_name(self):
        """A name with a dot (the key separator) is refused."""
        self.refused("networkName", name="a.b")
        self.refused("tenant", tenant="")

    def test_usable_skips_reserved(self):
        """Usable addresses leave out network, broadcast and gateway."""
        net = model.Network.build("n", "10.0.0.0/29", gateway="10.0.0.1")
        self.assertEqual(list(net.usable()),
                         [f"10.0.0.{i}" for i in range(2, 7)])
        self.assertEqual(net.usable_count(), 5)

    def test_stored_value_checked(self):
        """A stored network with a bad field is refused naming it."""
        data = json.loads(model.Network.build("n", "10.0.0.0/24").to_json())
        data["gateway"] = "nonsense"
        with self.assertRaises(ValidationError) as c:
            model.Network.from_json(json.dumps(data))
        self.assertEqual(c.exception.field, "gateway")
        with self.assertRaises(ValidationError):
            model.Network.from_json("{not json")


class OtherKindTests(SynchronousTestCase):
    def test_global_config(self):
        """Global config uses Contiv's dashed names and refuses bad modes."""
        g = model.GlobalConfig(fwd_mode="routing", pvt_subnet="172.19.0.0/16")
        self.assertEqual(json.loads(g.to_json()), {
            "id": "", "nw-infra-type": "default", "fwd-mode": "routing",
            "arp-mode": "proxy", "pvt-subnet": "172.19.0.0/16"})
        self.assertEqual(g.key, "/contiv.io/master/config/global")
        with self.assertRaises(ValidationError) as c:
            model.GlobalConfig(fwd_mode="x", pvt_subnet="172.19.0.0/16")
        self.assertEqual(c.exception.field, "fwd-mode")

    def test_global_state_ranges(self):
        """Tag ranges are nested under auto and checked against limits."""
        s = model.GlobalState(vlans="1-100,200", vxlans="5000-6000")
        self.assertEqual(json.loads(s.to_json())["auto"]["VLANs"],
                         "1-100,200")
        self.assertEqual(model.GlobalState.from_json(s.to_json()), s)
        with self.assertRaises(ValidationError):
            model.GlobalState(vlans="1-5000")

    def test_endpoint(self):
        """An endpoint's key joins its network id and endpoint id."""
        ep = model.Endpoint(net_id="web.default", endpoint_id="4b1e",
                            ip_address="10.1.1.2",
                            mac_address=model.mac_for("10.1.1.2"))
        self.assertEqual(ep.key, "/contiv.io/state/eps/web.default-4b1e")
        self.assertEqual(ep.mac_address, "02:02:0a:01:01:02")
        data = json.loads(ep.to_json())
        self.assertEqual((data["netID"], data["endpointID"],
                          data["labels"]), ("web.default", "4b1e", {}))
        back = model.Endpoint.from_json(json.dumps(dict(data, labels=None)))
        self.assertEqual(back.labels, {})
        oper = model.OperEndpoint(net_id="web.default", endpoint_id="4b1e",
                                  port_name="vport3")
        self.assertEqual(oper.key, "/contiv.io/oper/eps/web.default-4b1e")
        with self.assertRaises(ValidationError):
            model.Endpoint(net_id="n", endpoint_id="e", ip_address="1.2.3")

    def test_group(self):
        """A group's key is group:tenant, with Contiv's field names."""
        g = model.EndpointGroup(group_name="web", network_name="net",
                                endpoint_group_id=1)
        self.assertEqual(g.key, "/contiv.io/state/endpointGroups/web:default")
        self.assertIn("endpointGroupId", json.loads(g.to_json()))
        with self.assertRaises(ValidationError):
            model.EndpointGroup(group_name="web", network_name="net",
                                endpoint_group_id=0)

    def test_service_lb_and_provider(self):
        """Service LB ports are checked; providers list addresses."""
        lb = model.ServiceLB(service_name="web", network="net",
                             ports=["80:8080:TCP"], ip_address="10.1.1.3")
        data = json.loads(lb.to_json())
        self.assertEqual((data["servicename"], data["subnet"],
                          data["ports"]), ("web", "net", ["80:8080:TCP"]))
        self.assertEqual(model.ServiceLB.from_json(lb.to_json()), lb)
        with self.assertRaises(ValidationError) as c:
            model.ServiceLB(service_name="w", network="n", ports=["80"])
        self.assertEqual(c.exception.field, "ports")
        p = model.Provider(service_name="web:default",
                           providers=["10.1.1.2"])
        self.assertEqual(p.key, "/contiv.io/state/provider/web:default")

    def test_bgp_policy_service(self):
        """BGP, policy rules and registry entries use Contiv's names."""
        b = model.Bgp(hostname="node1", router_ip="50.1.1.2/24",
                      as_number="65002", neighbor_as="500",
                      neighbor="50.1.1.1")
        self.assertEqual(json.loads(b.to_json())["router-ip"], "50.1.1.2/24")
        with self.assertRaises(ValidationError):
            attr.evolve(b, router_ip="50.1.1.2")
        r = model.PolicyRule(rule_id="a:b:1:inRx", ip_protocol=6,
                             dst_port=80)
        self.assertEqual(json.loads(r.to_json())["id"], "")
        self.assertEqual(r.key, "/contiv.io/state/policyRule/a:b:1:inRx")
        with self.assertRaises(ValidationError):
            model.PolicyRule(rule_id="x", dst_port=70000)
        s = model.ServiceInfo(service_name="netplugin.vtep",
                              host_addr="192.168.2.10", port=4789,
                              hostname="node1")
        self.assertEqual(
            s.key, "/contiv.io/service/netplugin.vtep/192.168.2.10:4789")
        self.assertNotIn("id", json.loads(s.to_json()))
