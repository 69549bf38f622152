"""The CNI front end: plugin binaries ``pynet-bridge``, ``pynet-macvlan`` and
``pynet-ipam`` (installed by ``pynet cni install``).

``shim`` is what each binary runs (stdlib only: hands the request to the
daemon, else runs ``plugin.run`` in-process); ``spec`` is the CNI
specification as data; ``plugin`` and ``ipam_plugin`` map the CNI verbs onto
the CNM core through ``pynet.cnm.attach``.  Kept free of imports: the shim
loads only what it needs.
"""

PLUGINS = {"pynet-bridge": "bridge", "pynet-macvlan": "macvlan", "pynet-ipam": "ipam"}
