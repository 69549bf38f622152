"""Real etcd members for tests: the scenario runner's (pynet.scenario.etcd), which the tests
and benchmarks have always imported from here."""
from pynet.scenario.etcd import (ETCD, START_ATTEMPTS, START_TIMEOUT, EtcdCluster, Member,  # noqa: F401
                                 NetnsEtcdCluster, NetnsMember, closed_port, free_port)
