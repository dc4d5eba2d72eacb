"""
The Docker front end: libnetwork's remote network and IPAM driver on a
unix socket, and the mirror of contiv networks into the local Docker.
"""
