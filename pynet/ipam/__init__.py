"""IP address management: Docker-style pools and addresses on a persistent,
sparse bitmap (see ``allocator`` for the store layout).

Imports only the stdlib: the CNI binaries load this on every ADD.
"""
from pynet.ipam.allocator import GLOBAL_DEFAULT, LOCAL_DEFAULT, Ipam
from pynet.ipam.pools import GATEWAY_TYPE, REQUEST_ADDRESS_TYPE, read_host_routes

__all__ = ["Ipam", "LOCAL_DEFAULT", "GLOBAL_DEFAULT", "GATEWAY_TYPE", "REQUEST_ADDRESS_TYPE",
           "read_host_routes"]
