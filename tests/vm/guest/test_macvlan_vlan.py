"""The macvlan driver on Debian's kernel (kernel lab guest only): 802.1q parents created on
demand, VLAN isolation proved with scapy, the dummy parent and its veth fallback.

Topology (all in throwaway namespaces of the guest):

    machine (host_ns)            trunk (the parent's peer)          segments
    up0 ----------------------- eth0 (802.1q trunk)
      up0.30  <- pynet n30        eth0.30 -> moved to seg30 as "seg" 10.76.30.100/24
      up0.31  <- pynet n31        eth0.31 -> moved to seg31 as "seg" 10.76.31.100/24
        container a: n30 10.76.30.2, container b: n31 10.76.31.2

The VLAN checks run through the Controller, and once more through Docker's plugin protocol
(pynet's Flask app, called the way dockerd calls a remote driver: CreateNetwork with
``-o pynet.driver=macvlan -o parent=up0.30``, CreateEndpoint, Join, then the interface moved
into the sandbox as dockerd moves it; Leave, DeleteEndpoint, DeleteNetwork on removal).

Negative checks never rest on a wait alone: every listener first sees a control frame sent
after the frames that must not arrive (from the right side, over the same path), then the
test asserts that none of the forbidden frames came before it.
"""
from __future__ import annotations

import json
import os
import secrets
import select
import subprocess

import pytest

from pynet import errors
from pynet.cnm import sandbox
from pynet.cnm.controller import Controller
from pynet.cnm.model import IPData
from pynet.drivers.macvlan import MacvlanDriver, dummy_parent_name, isolated_peer_name
from pynet.ipam import Ipam
from pynet.store.memory import MemoryStore
from pynet.sysctl import run_in_netns

pytestmark = [pytest.mark.netns, pytest.mark.kernel_lab]

# the layers only, not scapy.all: that takes a second natively and many more in the emulated guest
from scapy.config import conf  # noqa: E402  (scapy: pyproject [test])
from scapy.layers.inet import ICMP, IP  # noqa: E402
from scapy.layers.l2 import ARP, Dot1Q, Ether  # noqa: E402

BCAST = "ff:ff:ff:ff:ff:ff"


def hexid() -> str:
    return secrets.token_hex(32)


ACCEPT = "application/vnd.docker.plugins.v1.2+json"


class Lab:
    def __init__(self, host_ns, make_netns, prefix):
        self.host = host_ns
        self.make_netns = make_netns
        self.drv = MacvlanDriver(host_ns.nl, host_ns.sysctl, instance=prefix)
        store = MemoryStore()
        self.ctl = Controller(store, Ipam(store, host_routes=lambda: []), {"macvlan": self.drv})
        self.frontend = "controller"
        self._client = None
        self._nls = []

    # -- Docker's plugin protocol, as dockerd speaks it
    def docker(self, method, body):
        if self._client is None:
            from pynet.plugin_api import create_app
            self._client = create_app(self.ctl).test_client()
        resp = self._client.post(f"/{method}", data=json.dumps(body).encode(),
                                 headers={"Accept": ACCEPT}, content_type=None)
        answer = json.loads(resp.get_data())
        if resp.status_code != 200:
            raise AssertionError(f"{method}: {resp.status_code} {answer}")
        return answer

    def nl(self, ns):
        n = self.host.nl.for_netns(ns)
        self._nls.append(n)
        return n

    def network(self, subnet, gw, options=None, internal=False):
        if self.frontend == "docker":
            nid = hexid()
            self.docker("NetworkDriver.CreateNetwork", {
                "NetworkID": nid,
                "IPv4Data": [{"AddressSpace": "LocalDefault", "Pool": subnet, "Gateway": gw}],
                "IPv6Data": [],
                "Options": {"com.docker.network.generic": {"pynet.driver": "macvlan",
                                                           **(options or {})},
                            "com.docker.network.enable_ipv6": False,
                            "com.docker.network.internal": internal}})
            return self.ctl.network(nid)
        return self.ctl.create_network(hexid(), [IPData(pool=subnet, gateway=gw)], [],
                                       driver="macvlan", options=options or {},
                                       internal=internal, created_by="cli")

    def container(self, net, ip):
        eid = hexid()
        ns = self.make_netns("c")
        if self.frontend == "docker":
            self.docker("NetworkDriver.CreateEndpoint", {
                "NetworkID": net.id, "EndpointID": eid, "Options": {},
                "Interface": {"Address": ip, "AddressIPv6": "", "MacAddress": ""}})
            ep = self.ctl.endpoint(net.id, eid)
            join = self.docker("NetworkDriver.Join", {"NetworkID": net.id, "EndpointID": eid,
                                                      "SandboxKey": ns, "Options": {}})
            src, dst = join["InterfaceName"]["SrcName"], join["InterfaceName"]["DstPrefix"] + "0"
            gateway = join.get("Gateway")
        else:
            ep = self.ctl.create_endpoint(net.id, eid, address=ip)
            info = self.ctl.join(net.id, eid, ns)
            src, dst, gateway = info.src_name, "eth0", info.gateway
        sandbox.attach(ns, src, dst, [ip], mac=ep.mac, gateway=gateway or None,
                       netlink=self.host.nl)
        return ep, ns

    def remove(self, net):
        if self.frontend == "docker":
            for ep in self.ctl.endpoints(net.id):
                body = {"NetworkID": net.id, "EndpointID": ep.id}
                self.docker("NetworkDriver.Leave", body)
                self.docker("NetworkDriver.DeleteEndpoint", body)
            self.docker("NetworkDriver.DeleteNetwork", {"NetworkID": net.id})
        else:
            self.ctl.delete_network(net.id, force_endpoints=True)

    def close(self):
        for n in self._nls:
            n.close()


@pytest.fixture
def lab(host_ns, make_netns, prefix):
    lab = Lab(host_ns, make_netns, prefix)
    try:
        yield lab
    finally:
        lab.close()


def host_links(lab):
    return sorted(l.name for l in lab.host.nl.list_links())


def link_details(ns_name, ifname):
    out = subprocess.run(["ip", "-n", ns_name, "-d", "-j", "link", "show", "dev", ifname],
                         check=True, capture_output=True, text=True, timeout=30).stdout
    return json.loads(out)[0]


# ---------------------------------------------------------------- scapy on namespaced sockets

class Port:
    """A scapy L2 socket on ``ifname`` inside namespace ``ns`` (opened there, used from here)."""

    def __init__(self, ns, ifname, nl):
        self.ns, self.ifname = ns, ifname
        self.mac = nl.get_link(ifname).mac
        # not promiscuous: scapy would look the interface up in its own (root) namespace; a
        # packet socket sees every frame the interface receives all the same
        self.sock = run_in_netns(ns, lambda: conf.L2socket(iface=ifname, promisc=False))

    def send(self, frame):
        self.sock.send(frame)

    def frames_until(self, marker, limit=2000):
        """Every frame received up to (and with) the first one whose raw bytes contain
        ``marker``; fails if the marker does not come within ``limit`` frames / 10 s."""
        got = []
        for _ in range(limit):
            r, _, _ = select.select([self.sock], [], [], 10.0)
            if not r:
                break
            pkt = self.sock.recv()
            if pkt is None:
                continue
            got.append(pkt)
            if marker in bytes(pkt):
                return got
        raise AssertionError(f"control frame never reached {self.ifname} in {self.ns}: "
                             f"{[p.summary() for p in got[-5:]]}")

    def close(self):
        self.sock.close()


def arp_request(src_mac, src_ip, dst_ip, dst_mac=BCAST, vlan=None):
    eth = Ether(src=src_mac, dst=dst_mac)
    if vlan is not None:
        eth = eth / Dot1Q(vlan=vlan)
    return eth / ARP(op=1, hwsrc=src_mac, psrc=src_ip, pdst=dst_ip)


def icmp_echo(src_mac, dst_mac, src_ip, dst_ip, payload):
    return Ether(src=src_mac, dst=dst_mac) / IP(src=src_ip, dst=dst_ip) / ICMP(id=0x7a, seq=1) / payload


def from_mac(frames, mac):
    return [p for p in frames if p.haslayer(Ether) and p[Ether].src == mac]


def answer(port, want, sent, limit=200):
    """The first frame on ``port`` for which ``want(pkt)`` holds, sending ``sent`` first."""
    port.send(sent)
    for _ in range(limit):
        r, _, _ = select.select([port.sock], [], [], 5.0)
        if not r:
            return None
        pkt = port.sock.recv()
        if pkt is not None and want(pkt):
            return pkt
    return None


def make_vlans(lab, frontend):
    """The trunk with VLANs 30 and 31, a segment namespace on each, pynet networks n30/n31 on
    up0.30/up0.31 (created by pynet) and one container on each; through either front end."""
    lab.frontend = frontend
    trunk = lab.make_netns("t")
    nl = lab.host.nl
    nl.add_veth("up0", "upx")
    nl.move_to_netns("upx", trunk, new_name="eth0")
    nl.set_up("up0")
    tnl = lab.nl(trunk)
    tnl.set_up("eth0")
    segs = {}
    for vid in (30, 31):
        seg = lab.make_netns(f"s{vid}")
        tnl.add_vlan(f"eth0.{vid}", "eth0", vid)
        tnl.move_to_netns(f"eth0.{vid}", seg, new_name="seg")
        snl = lab.nl(seg)
        snl.set_up("lo")
        snl.ensure_address("seg", f"10.76.{vid}.100/24")
        snl.set_up("seg")
        segs[vid] = (seg, snl)
    assert host_links(lab) == ["lo", "up0"]                 # no sub-interface before a network
    n30 = lab.network("10.76.30.0/24", "10.76.30.1/24", options={"parent": "up0.30"})
    n31 = lab.network("10.76.31.0/24", "10.76.31.1/24", options={"parent": "up0.31"})
    a, ns_a = lab.container(n30, "10.76.30.2/24")
    b, ns_b = lab.container(n31, "10.76.31.2/24")
    return {"trunk": trunk, "tnl": tnl, "segs": segs, "nets": {30: n30, 31: n31},
            "ctr": {30: (a, ns_a), 31: (b, ns_b)}}


@pytest.fixture
def vlans(lab):
    return make_vlans(lab, "controller")


def check_parents_created_on_demand(lab, vlans):
    for vid, net in vlans["nets"].items():
        parent = f"up0.{vid}"
        assert net.driver_state["parent_kind"] == "vlan" and net.driver_state["created"]
        d = link_details(lab.host.name, parent)
        assert d["linkinfo"]["info_kind"] == "vlan"
        assert d["linkinfo"]["info_data"]["id"] == vid and d["link"] == "up0"
        assert d["linkinfo"]["info_data"].get("protocol", "802.1Q") == "802.1Q"


def test_vlan_parents_are_created_on_demand_and_removed_with_their_network(lab, vlans):
    check_parents_created_on_demand(lab, vlans)
    lab.remove(vlans["nets"][30])
    assert not lab.host.nl.link_exists("up0.30") and lab.host.nl.link_exists("up0.31")
    lab.remove(vlans["nets"][31])
    assert host_links(lab) == ["lo", "up0"]                # the parent pynet did not create stays


def test_each_network_reaches_its_own_segment(lab, vlans, ping):
    check_reach(lab, vlans, ping)


def check_reach(lab, vlans, ping):
    """scapy: ARP and ICMP echo from each container get their segment's answer; on the trunk
    the container's frames carry its network's VLAN tag."""
    trunk = Port(vlans["trunk"], "eth0", vlans["tnl"])
    try:
        for vid, (ep, ns) in vlans["ctr"].items():
            seg_ns, snl = vlans["segs"][vid]
            seg_mac = snl.get_link("seg").mac
            me = Port(ns, "eth0", lab.nl(ns))
            try:
                assert me.mac == ep.mac
                ip = ep.address.split("/")[0]
                seg_ip = f"10.76.{vid}.100"
                reply = answer(me, lambda p: p.haslayer(ARP) and p[ARP].op == 2
                               and p[ARP].psrc == seg_ip, arp_request(me.mac, ip, seg_ip))
                assert reply is not None and reply[ARP].hwsrc == seg_mac
                tag = secrets.token_bytes(16)
                echo = answer(me, lambda p: p.haslayer(ICMP) and p[ICMP].type == 0
                              and bytes(p[ICMP].payload) == tag,
                              icmp_echo(me.mac, seg_mac, ip, seg_ip, tag))
                assert echo is not None and echo[IP].src == seg_ip
                # on the trunk, the same kind of frame is tagged with this VLAN
                marker = secrets.token_bytes(16)
                me.send(icmp_echo(me.mac, seg_mac, ip, seg_ip, marker))
                seen = trunk.frames_until(marker)
                assert seen[-1].haslayer(Dot1Q) and seen[-1][Dot1Q].vlan == vid, seen[-1].summary()
            finally:
                me.close()
            assert ping(ns, f"10.76.{vid}.100")
    finally:
        trunk.close()


def test_networks_on_two_vlans_cannot_reach_each_other(lab, vlans, ping):
    check_isolation(lab, vlans, ping)


def check_isolation(lab, vlans, ping):
    """scapy: frames of VLAN 30 (broadcast ARP, unicast to the other container's and segment's
    MAC and IP) never reach VLAN 31's container or segment, and the other way round."""
    for src_vid, dst_vid in ((30, 31), (31, 30)):
        src_ep, src_ns = vlans["ctr"][src_vid]
        dst_ep, dst_ns = vlans["ctr"][dst_vid]
        dst_seg_ns, dst_snl = vlans["segs"][dst_vid]
        dst_seg_mac = dst_snl.get_link("seg").mac
        src = Port(src_ns, "eth0", lab.nl(src_ns))
        victim = Port(dst_ns, "eth0", lab.nl(dst_ns))
        seg = Port(dst_seg_ns, "seg", dst_snl)
        try:
            src_ip, dst_ip = src_ep.address.split("/")[0], dst_ep.address.split("/")[0]
            dst_seg_ip = f"10.76.{dst_vid}.100"
            payload = secrets.token_bytes(16)
            forbidden = [
                arp_request(src.mac, src_ip, dst_ip),
                arp_request(src.mac, src_ip, dst_seg_ip),
                icmp_echo(src.mac, dst_ep.mac, src_ip, dst_ip, payload),
                icmp_echo(src.mac, dst_seg_mac, src_ip, dst_seg_ip, payload),
                icmp_echo(src.mac, BCAST, src_ip, dst_ip, payload),
                # a frame that already carries the other VLAN's tag (VLAN hopping by double tag)
                arp_request(src.mac, src_ip, dst_seg_ip, vlan=dst_vid),
            ]
            for f in forbidden:
                src.send(f)
            # the controls: sent after, from the destination's own VLAN, to each listener
            ctl_victim, ctl_seg = secrets.token_bytes(16), secrets.token_bytes(16)
            seg.send(icmp_echo(dst_seg_mac, dst_ep.mac, dst_seg_ip, dst_ip, ctl_victim))
            victim.send(icmp_echo(dst_ep.mac, dst_seg_mac, dst_ip, dst_seg_ip, ctl_seg))
            at_victim = victim.frames_until(ctl_victim)
            at_seg = seg.frames_until(ctl_seg)
            assert from_mac(at_victim, src.mac) == [], [p.summary() for p in from_mac(at_victim, src.mac)]
            assert from_mac(at_seg, src.mac) == [], [p.summary() for p in from_mac(at_seg, src.mac)]
            assert not [p for p in at_victim + at_seg if payload in bytes(p)]
        finally:
            for p in (src, victim, seg):
                p.close()
        # the same with the kernel's own stack: told the other subnet is on-link, still nothing
        inner = lab.nl(src_ns)
        inner.add_route(f"10.76.{dst_vid}.0/24", ifname="eth0")
        assert not ping(src_ns, f"10.76.{dst_vid}.2", timeout=0.5)
        assert not ping(src_ns, f"10.76.{dst_vid}.100", timeout=0.5)
        assert ping(src_ns, f"10.76.{src_vid}.100")             # its own segment still answers


def test_removing_the_networks_removes_the_sub_interfaces(lab, vlans):
    check_removal(lab, vlans)


def check_removal(lab, vlans):
    for net in vlans["nets"].values():
        lab.remove(net)
    assert host_links(lab) == ["lo", "up0"]
    assert lab.ctl.networks() == []
    # the trunk side is untouched (pynet created nothing there)
    assert sorted(l.name for l in vlans["tnl"].list_links()) == ["eth0", "lo"]


def test_through_dockers_plugin_protocol(lab, ping):
    """The same, driven as dockerd drives a remote driver (one setup: the guest is slow)."""
    vlans = make_vlans(lab, "docker")
    check_parents_created_on_demand(lab, vlans)
    check_reach(lab, vlans, ping)
    check_isolation(lab, vlans, ping)
    check_removal(lab, vlans)


def test_vlan_parent_without_8021q_is_one_clear_error_and_nothing_changes(lab, kernel_module_unloaded):
    lab.host.nl.add_veth("up0", "upx")
    with kernel_module_unloaded("8021q"):
        with pytest.raises(errors.KernelError, match="802.1q"):
            lab.network("10.76.40.0/24", "10.76.40.1/24", options={"parent": "up0.40"})
        assert host_links(lab) == ["lo", "up0", "upx"] and lab.ctl.networks() == []


# ------------------------------------------------------------------ parentless networks

def test_parentless_network_has_a_dummy_parent(lab, ping):
    net = lab.network("10.76.50.0/24", "10.76.50.1/24")
    parent = dummy_parent_name(net.id)
    assert (net.driver_state["parent"], net.driver_state["parent_kind"]) == (parent, "dummy")
    assert lab.host.nl.get_link(parent).kind == "dummy"
    _, ns_a = lab.container(net, "10.76.50.2/24")
    _, ns_b = lab.container(net, "10.76.50.3/24")
    assert ping(ns_a, "10.76.50.3")
    lab.ctl.delete_network(net.id, force_endpoints=True)
    assert host_links(lab) == ["lo"]


def test_parentless_network_falls_back_to_a_veth_without_dummy(lab, ping, kernel_module_unloaded):
    with kernel_module_unloaded("dummy"):
        net = lab.network("10.76.51.0/24", "10.76.51.1/24")
        parent, peer = dummy_parent_name(net.id), isolated_peer_name(net.id)
        assert net.driver_state["parent_kind"] == "veth" and net.driver_state["peer"] == peer
        assert lab.host.nl.get_link(parent).kind == "veth"
        _, ns_a = lab.container(net, "10.76.51.2/24")
        _, ns_b = lab.container(net, "10.76.51.3/24")
        assert ping(ns_a, "10.76.51.3")
        lab.ctl.delete_network(net.id, force_endpoints=True)
        assert host_links(lab) == ["lo"]


def test_the_guest_has_no_device_toward_the_uplink():
    """qemu runs with -nic none: no network device of the guest has hardware behind it."""
    backed = [n for n in os.listdir("/sys/class/net") if os.path.exists(f"/sys/class/net/{n}/device")]
    assert backed == []
