"""Driver API v2 (issue 10, item 6): records a driver changes are handed back
and stored, cluster scope (allocate/free once per network), peer events routed
to the network's driver, firewall rules contributed by the drivers.

The real Controller, BridgeDriver and IPAM over a MemoryStore and the fake
kernel; fakes where a hook is only routed."""
from __future__ import annotations

import pytest

from pynet import errors
from pynet.cnm.controller import Controller
from pynet.cnm.driver import DriverBase, PeerEvent, Remember
from pynet.cnm.model import Endpoint, IPData
from pynet.drivers.bridge import BridgeDriver, host_veth_name, mac_from_ipv4
from pynet.drivers.bridge_firewall import BridgeFirewall
from pynet.drivers.macvlan import MacvlanDriver
from pynet.ipam import Ipam
from pynet.netlink.fake import FakeKernel, FakeNetlink
from pynet.store import Event
from pynet.store.memory import MemoryStore
from pynet.sysctl import FakeSysctl

NID = "36794d95504b" + "0" * 52
EID = "5c48ea5e946" + "1" * 53


def world(extra=None):
    nl = FakeNetlink(FakeKernel())
    store = MemoryStore()
    drivers = {"bridge": BridgeDriver(nl, FakeSysctl(), instance="t1"),
               "macvlan": MacvlanDriver(nl, FakeSysctl(), instance="t1"), **(extra or {})}
    c = Controller(store, Ipam(store, host_routes=lambda: []), drivers)
    return c, nl, store


# -- restore's changes are stored ------------------------------------------------
def test_restore_stores_the_records_it_changed():
    """An endpoint stored by a pynet of before driver_state (no veth names, no
    MAC) whose pair is gone: restore recreates the pair -- and the names and the
    MAC it chose are now in the store.  Before v2 restore changed its in-memory
    copy only: the store kept the empty record, and the next join/CHECK/GC
    looked for links under names nobody had written down."""
    c, nl, store = world()
    c.create_network(NID, [IPData(pool="10.250.0.0/24", gateway="10.250.0.1/24")])
    old = Endpoint(id=EID, network_id=NID, address="10.250.0.2/24")   # mac "", driver_state {}
    store.put(f"endpoints/{NID}/{EID}", old.to_json())
    c.restore()
    assert nl.link_exists(host_veth_name(EID))
    saved = c.endpoint(NID, EID)
    assert saved.mac == mac_from_ipv4("10.250.0.2/24")
    assert saved.driver_state == {"host_veth": host_veth_name(EID), "container_veth": "pc" + EID[:11],
                                  "bridge": "pn-36794d95504b"}


def test_restore_does_not_change_the_records_it_was_given():
    c, nl, _ = world()
    net = c.create_network(NID, [IPData(pool="10.250.0.0/24", gateway="10.250.0.1/24")])
    ep = Endpoint(id=EID, network_id=NID, address="10.250.0.2/24")
    remember = c.drivers["bridge"].restore([net], [ep])
    assert (ep.mac, ep.driver_state) == ("", {})
    assert remember.endpoints[(NID, EID)]["mac"] == mac_from_ipv4("10.250.0.2/24")


def test_a_change_of_a_record_deleted_meanwhile_is_dropped():
    c, _, store = world()
    r = Remember()
    r.endpoint(Endpoint(id="gone", network_id=NID), mac="02:00:00:00:00:01")
    c._remember(r)
    assert store.get(f"endpoints/{NID}/gone") is None


# -- scope: allocate once per network, free ------------------------------------
class GlobalDriver(DriverBase):
    name = "glob"
    scope = "global"

    def __init__(self):
        self.allocated, self.freed, self.created = [], [], []

    def allocate_network(self, net):
        self.allocated.append(net.id)
        return {"glob.vni": str(4096 + len(self.allocated))}

    def free_network(self, net):
        self.freed.append((net.id, net.options.get("glob.vni")))

    def create_network(self, net):
        self.created.append(dict(net.options))
        return {"vni": net.options["glob.vni"]}

    def create_endpoint(self, net, ep): ...
    def delete_endpoint(self, net, ep): ...
    def delete_network(self, net): ...


def test_local_drivers_allocate_nothing():
    c, _, store = world()
    assert c.allocate_network(NID, driver="bridge") == {}
    assert c.allocate_network(NID, driver="macvlan", options={"parent": "eth0"}) == {}
    assert store.list("allocations/") == []
    c.free_network(NID)  # unknown: succeeds, as Docker expects


def test_global_driver_allocates_once_and_frees():
    g = GlobalDriver()
    c, _, store = world({"glob": g})
    first = c.allocate_network(NID, driver="glob", options={"a": "1"})
    assert first == {"glob.vni": "4097"}
    assert c.allocate_network(NID, driver="glob") == first and g.allocated == [NID]
    # the per-host instantiation is apart from it: the allocation comes with the options
    net = c.create_network(NID, [IPData(pool="10.251.0.0/24")], driver="glob", options={"a": "1"})
    assert g.created == [{"glob.vni": "4097", "a": "1"}] and net.driver_state == {"vni": "4097"}
    c.delete_network(NID)
    assert g.freed == [] and store.get(f"allocations/{NID}") is not None  # per-host delete frees nothing
    c.free_network(NID)
    assert g.freed == [(NID, "4097")] and store.get(f"allocations/{NID}") is None


def test_a_global_network_made_without_allocate_is_allocated_at_create():
    g = GlobalDriver()
    c, _, store = world({"glob": g})
    c.create_network(NID, [IPData(pool="10.251.0.0/24")], driver="glob")
    assert g.allocated == [NID] and g.created == [{"glob.vni": "4097"}]
    # no FreeNetwork will come for an allocation the create made: the delete drops its record
    c.delete_network(NID)
    assert store.get(f"allocations/{NID}") is None


def test_allocate_network_refuses_an_unknown_driver():
    c, _, _ = world()
    with pytest.raises(errors.InvalidOption, match="unknown driver"):
        c.allocate_network(NID, driver="nope")


# -- peer events -------------------------------------------------------------------
class PeerDriver(GlobalDriver):
    name = "peer"

    def __init__(self):
        super().__init__()
        self.events = []

    def peer_added(self, net, event):
        self.events.append(("added", net.id, event))

    def peer_removed(self, net, event):
        self.events.append(("removed", net.id, event))


def test_peer_events_go_to_the_driver_of_the_network():
    p = PeerDriver()
    c, _, _ = world({"peer": p})
    c.create_network(NID, [IPData(pool="10.252.0.0/24")], driver="peer")
    other = "ab" * 32
    c.create_network(other, [IPData(pool="10.253.0.0/24")])   # a bridge network: no-op default
    key = f"peers/{NID}/host2/{EID}"
    assert c.route_peer_event(Event("PUT", key, {"ip": "10.252.0.9", "mac": "02:00:00:00:00:09"}, 7))
    assert c.route_peer_event(Event("DELETE", key, None, 8))
    assert [(kind, nid) for kind, nid, _ in p.events] == [("added", NID), ("removed", NID)]
    assert p.events[0][2] == PeerEvent(network_id=NID, key=key, added=True,
                                       value={"ip": "10.252.0.9", "mac": "02:00:00:00:00:09"}, revision=7)
    assert p.events[1][2].added is False and p.events[1][2].value is None
    # the bridge driver's hook is the no-op default: routed, nothing happens
    assert c.route_peer_event(Event("PUT", f"peers/{other}/host2/x", {}, 9))
    # not a peer key, or a network this host does not have: nobody gets it
    assert not c.route_peer_event(Event("PUT", f"networks/{NID}", {}, 10))
    assert not c.route_peer_event(Event("PUT", "peers/" + "cd" * 32 + "/host2/x", {}, 11))
    assert len(p.events) == 2


# -- drivers contribute their firewall rules ---------------------------------------
class Rendering:
    isolate_from = ()

    def render(self, nets, eps, problems=None):
        return {"nets": [n.id for n in nets], "eps": [e.id for e in eps]}


def test_the_firewall_asks_each_networks_driver():
    c, _, _ = world()
    fw = BridgeFirewall(Rendering())
    fw.use_drivers(c.drivers)
    bridge_net = c.create_network(NID, [IPData(pool="10.250.0.0/24", gateway="10.250.0.1/24")])
    mv = c.create_network("ef" * 32, [IPData(pool="10.254.0.0/24")], driver="macvlan")
    ep = c.create_endpoint(bridge_net.id, EID, address="10.250.0.2/24")
    mep = c.create_endpoint(mv.id, "12" * 32, address="10.254.0.2/24")
    nets, eps = fw.specs(c.networks(), c.endpoints())
    assert [n.id for n in nets] == [NID] and [e.id for e in eps] == [ep.id]   # macvlan: no rules
    assert not fw.affects(mv, mep)


def test_the_controller_hands_its_drivers_to_the_firewall():
    nl = FakeNetlink(FakeKernel())
    store = MemoryStore()
    fw = BridgeFirewall(Rendering())
    drivers = {"bridge": BridgeDriver(nl, FakeSysctl(), instance="t1")}
    Controller(store, Ipam(store, host_routes=lambda: []), drivers, firewall=fw)
    assert fw.drivers is drivers


# -- Docker's AllocateNetwork body -------------------------------------------------
def test_allocate_network_args_and_answer():
    from pynet.plugin_api import translate

    args = translate.allocate_network_args({
        "NetworkID": NID, "Options": {"pynet.driver": "macvlan", "parent": "eth0"},
        "IPv4Data": [{"AddressSpace": "", "Pool": "10.1.0.0/24", "Gateway": "10.1.0.1/24"}]})
    assert args["driver"] == "macvlan" and args["options"] == {"parent": "eth0"}
    assert args["ipv4"][0].pool == "10.1.0.0/24"
    assert translate.render_allocate({}) == {"Options": {}}
    assert translate.render_allocate({"glob.vni": 4097}) == {"Options": {"glob.vni": "4097"}}
    with pytest.raises(errors.InvalidParameter):
        translate.allocate_network_args({"NetworkID": NID, "Options": {"parent": ["x"]}})
