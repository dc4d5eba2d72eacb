"""contivd: the per-host agent of a container network.

One agent runs on every host; through etcd the agents give containers on
any host one network, programmed into Open vSwitch.
"""

__version__ = "0.1.0"
