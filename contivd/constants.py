"""Names and numbers that several parts of the agent must agree on."""

VXLAN_BRIDGE = "contivVxlanBridge"
VLAN_BRIDGE = "contivVlanBridge"

#: OVS other_config:datapath-id of each bridge, so that the controller
#: tells the two connections apart by the datapath id in FEATURES_REPLY.
DATAPATH_IDS = {
    VXLAN_BRIDGE: 0x00000000C0A71001,
    VLAN_BRIDGE: 0x00000000C0A71002,
}

#: external_ids key that marks the OVSDB rows contivd owns.
OWNER_KEY = "contivd-owner"
ENDPOINT_KEY = "endpoint-id"
PEER_KEY = "contivd-peer"

#: Bytes a VXLAN header adds on an IPv4 underlay.
VXLAN_OVERHEAD = 50

ETCD_ROOT = "/contiv.io"
