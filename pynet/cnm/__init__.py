"""The CNM core: Network, Endpoint, Sandbox, the driver interface and the
Controller that runs IPAM, drivers and the store together."""
