"""Real etcd, Open vSwitch and dockerd for tests and the demo."""

from contivd.harness.parts import (  # noqa: F401
    IMAGE,
    OVS,
    Dockerd,
    Etcd,
    Harness,
    NetNS,
    PartFailed,
    free_port,
    run,
    skip_reason,
    terminate,
    wait_until,
)
