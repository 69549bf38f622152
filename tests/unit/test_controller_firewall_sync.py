"""The controller re-syncs the firewall only when an endpoint has rules of its own
(published ports, anti-spoofing): CreateEndpoint stays flat as endpoints grow."""
from __future__ import annotations

import pytest

from pynet.cnm.controller import Controller
from pynet.cnm.model import IPData, PortMapping
from pynet.drivers.bridge import BridgeDriver
from pynet.drivers.bridge_firewall import BridgeFirewall
from pynet.ipam import Ipam
from pynet.netlink.fake import FakeNetlink
from pynet.store.memory import MemoryStore
from pynet.sysctl import FakeSysctl


class CountingFirewall:
    """Stands in for pynet.firewall.Firewall: renders the specs, counts applies."""
    isolate_from = ()

    def __init__(self):
        self.applies = 0
        self.renders = 0

    def render(self, nets, eps, problems=None):
        self.renders += 1
        return {"ipv4": repr((nets, eps))}

    def apply(self, nets, eps, problems=None, *, changed=None):
        self.applies += 1


@pytest.fixture
def setup():
    store = MemoryStore()
    fw = CountingFirewall()
    ctl = Controller(store, Ipam(store, host_routes=lambda: []),
                     {"bridge": BridgeDriver(FakeNetlink(), FakeSysctl(), instance="t")},
                     firewall=BridgeFirewall(fw))
    return ctl, fw


def test_plain_endpoints_do_not_touch_the_firewall(setup):
    ctl, fw = setup
    net = ctl.create_network("a" * 64, [IPData("10.1.0.0/24", "10.1.0.1/24")])
    n = fw.renders
    for i in range(2, 12):
        eid = f"{i:064x}"
        ctl.create_endpoint(net.id, eid, f"10.1.0.{i}/24")
        ctl.join(net.id, eid, "/var/run/netns/x")
        ctl.program_external_connectivity(net.id, eid, [])
        ctl.revoke_external_connectivity(net.id, eid)
        ctl.leave(net.id, eid)
        ctl.delete_endpoint(net.id, eid)
    assert fw.renders == n


def test_published_ports_and_spoof_check_do(setup):
    ctl, fw = setup
    net = ctl.create_network("a" * 64, [IPData("10.1.0.0/24", "10.1.0.1/24")])
    ctl.create_endpoint(net.id, "1" * 64, "10.1.0.2/24")
    before = fw.applies
    ctl.program_external_connectivity(net.id, "1" * 64, [PortMapping("tcp", 80, 18080)])
    assert fw.applies == before + 1
    ctl.revoke_external_connectivity(net.id, "1" * 64)
    assert fw.applies == before + 2
    guarded = ctl.create_network("b" * 64, [IPData("10.2.0.0/24", "10.2.0.1/24")],
                                 options={"pynet.bridge.spoof_check": "true"})
    before = fw.applies
    ctl.create_endpoint(guarded.id, "2" * 64, "10.2.0.2/24")
    assert fw.applies == before + 1
    ctl.delete_endpoint(guarded.id, "2" * 64)
    assert fw.applies == before + 2


def test_foreign_bridges_learned_by_the_daemon_reach_every_process():
    store = MemoryStore()
    daemon_fw, cni_fw = CountingFirewall(), CountingFirewall()
    daemon_side = BridgeFirewall(daemon_fw, store=store)
    cni_side = BridgeFirewall(cni_fw, store=store)       # e.g. a CNI binary in-process
    daemon_side.set_foreign_bridges(["mybr0", "docker0"])
    assert daemon_fw.isolate_from == ("docker0", "br-+", "pn-+", "mybr0")
    cni_side.sync([], [])
    assert cni_fw.isolate_from == ("docker0", "br-+", "pn-+", "mybr0")
    daemon_side.set_foreign_bridges([])                   # dockerd removed that network
    cni_side.sync([], [])
    assert cni_fw.isolate_from == ("docker0", "br-+", "pn-+")


def test_no_foreign_bridges_leaves_no_record():
    store = MemoryStore()
    fw = BridgeFirewall(CountingFirewall(), store=store)
    fw.set_foreign_bridges([])
    assert store.list("") == []
    fw.set_foreign_bridges(["mybr0"])
    fw.set_foreign_bridges([])
    assert store.list("") == []
