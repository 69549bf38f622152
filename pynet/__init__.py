"""pynet: a container-networking suite with one CNM core and two front ends
(Docker remote network/IPAM plugin, CNI plugin binaries)."""

__version__ = "0.1.0"
