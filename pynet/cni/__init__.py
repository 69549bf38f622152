"""The CNI front end: plugin binaries ``pynet-bridge``, ``pynet-macvlan`` and
``pynet-ipam`` (installed by ``pynet cni install``).

``main`` is what each binary runs: the ``settings``, then the ``shim``
(stdlib only: hands the request to the daemon), else ``dispatch.run``
in-process; ``spec`` is the CNI specification as data; ``plugin`` and
``ipam_plugin`` map the CNI verbs onto the CNM core through
``pynet.cnm.attach``; ``route`` is the daemon's side of the shim.  Kept free
of imports: the binaries load only what they need.
"""

PLUGINS = {"pynet-bridge": "bridge", "pynet-macvlan": "macvlan", "pynet-ipam": "ipam"}
