"""The OVSDB side of the datapath: bridges, endpoint veths and tunnels."""

from contivd.ovsdb.client import (  # noqa: F401
    OVSDB,
    OVSDBError,
    OVSDBTimeout,
    PluggedEndpoint,
    PortRecord,
    controller_target,
    tunnel_name,
)
from contivd.ovsdb.veth import (  # noqa: F401
    LinkError,
    create_veth,
    default_endpoint_mtu,
    delete_veth,
    link_exists,
    lowest_host_mtu,
    port_names,
)
