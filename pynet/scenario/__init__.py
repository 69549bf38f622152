"""Network test scenarios: topologies of namespaces running pynet, proven
with packets (scapy).  See ``scenarios/README.md`` for the format.

Light on import: scapy is imported only by :mod:`pynet.scenario.probes`,
inside the namespaces' probe agents; nothing on the plugin's or the CNI path
imports this package.
"""
