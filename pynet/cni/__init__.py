"""The CNI front end: plugin binaries ``pynet-bridge``, ``pynet-macvlan`` and
``pynet-ipam`` (installed by ``pynet cni install``).

``main`` is what each binary runs: the ``settings``, then the ``shim``
(stdlib only: hands the request to the daemon), else ``dispatch.run``
in-process; ``spec`` is the CNI specification as data; ``plugin`` and
``ipam_plugin`` map the CNI verbs onto the CNM core through
``pynet.cnm.attach``; ``route`` is the daemon's side of the shim.  Kept free
of imports: the binaries load only what they need.
"""



def __getattr__(name: str):
    # PLUGINS: binary -> plugin, one ``pynet-<name>`` per registered driver
    # (pynet.drivers) and pynet-ipam.  Computed on use: the shim imports this
    # package and must not load the registry.
    if name == "PLUGINS":
        from pynet import drivers
        return {**{drivers.cni_plugin_name(n): n for n in drivers.names()}, "pynet-ipam": "ipam"}
    raise AttributeError(name)
