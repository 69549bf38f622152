"""The nftables backend without a kernel: what it renders per owner, how a listing
is read back, the per-change element swap, and the backend setting at every door
(flag/env for the daemon and CLI, the conflist's ``pynet`` section for CNI)."""
from __future__ import annotations

import pytest

from pynet.cni import spec
from pynet.cni.settings import pynet_settings
from pynet.config import Config
from pynet.errors import InvalidParameter
from pynet.firewall import EndpointSpec, NetworkSpec, PortMapping
from pynet.firewall.nft import NftFirewall, parse_listing, render_table, user_rules


def nets():
    return [NetworkSpec("n1", "b1", ["10.1.0.0/24"], ["fd00:1::/64"], icc=False, spoof_check=True),
            NetworkSpec("n2", "b2", ["10.2.0.0/24"], host_ipv4="192.168.9.9"),
            NetworkSpec("n3", "b3", ["10.3.0.0/24"], internal=True)]


def eps():
    return [EndpointSpec("e1", "n1", "10.1.0.2", "fd00:1::2", "02:42:0a:01:00:02",
                         [PortMapping("tcp", "", 8080, 80), PortMapping("udp", "127.0.0.1", 53, 53),
                          PortMapping("tcp", "::1", 8081, 81)]),
            EndpointSpec("e3", "n3", "10.3.0.2", None, None, [PortMapping("tcp", "", 9090, 90)])]


def owners(t, name):
    return {e: o for e, o in t.elements.get(name, {}).items()}


def test_ipv4_elements_per_owner():
    t = render_table("PYNET", nets(), eps(), "ipv4", ("docker0", "br-+"))
    assert owners(t, "nets") == {'"b1"': "n1", '"b2"': "n2"}
    assert owners(t, "internal") == {'"b3"': "n3"}
    assert owners(t, "internal_subs") == {'"b3" . 10.3.0.0/24': "n3"}
    assert owners(t, "icc_off") == {'"b1" . "b1"': "n1"}
    assert set(owners(t, "same")) == {'"b1" . "b1"', '"b2" . "b2"', '"b3" . "b3"'}
    assert owners(t, "dnat_any") == {"tcp . 8080 : 10.1.0.2 . 80": "e1"}
    assert owners(t, "dnat_addr") == {"127.0.0.1 . udp . 53 : 10.1.0.2 . 53": "e1"}
    assert owners(t, "local_snat") == {'"b2" : 192.168.9.9': "n2"}
    assert owners(t, "snat_subs") == {"10.2.0.0/24 : 192.168.9.9": "n2"}
    assert owners(t, "masq_subs") == {"10.1.0.0/24": "n1"}
    assert owners(t, "spoof_ok") == {'"b1" . 02:42:0a:01:00:02 . 10.1.0.2': "e1"}
    # internal networks publish nothing (as Docker), foreign patterns are nft wildcards
    assert not any("9090" in e for e in t.elements.get("dnat_any", {}))
    text = t.to_nft()
    assert 'iifname @nets oifname "br-*" drop' in text
    assert 'iifname "docker0" oifname != "docker0" oifname "br-*" drop' in text


def test_ipv6_elements_and_no_loopback_binding():
    t = render_table("PYNET", nets(), eps(), "ipv6", ())
    assert owners(t, "nets") == {'"b1"': "n1"}  # the others have no IPv6 subnet
    assert owners(t, "dnat_any") == {"tcp . 8080 : fd00:1::2 . 80": "e1"}
    assert not t.elements.get("dnat_addr")  # ::1 cannot be DNATed (no route_localnet for IPv6)
    assert owners(t, "spoof_nets") == {'"b1"': "n1"}
    assert "ip6 daddr != ::1 fib daddr type local jump published" in t.to_nft()


def test_no_network_no_table():
    t = render_table("PYNET", [], [], "ipv4")
    assert t.empty and t.to_nft() == ""


def test_listing_read_back_ignores_element_order_and_the_user_chain():
    t = render_table("PYNET", nets(), eps(), "ipv4")
    listing = t.to_nft().replace("\tchain user {\n", '\tchain user {\n\t\tiifname "x" drop\n')
    skel, els = parse_listing(listing)
    assert skel == parse_listing(t.skeleton())[0]
    assert els["nets"] == {'"b1"', '"b2"'}
    assert user_rules(listing) == ['iifname "x" drop']


def test_refused_owner_is_skipped_and_recorded():
    bad = [EndpointSpec("e9", "n1", "10.1.0.9", None, None, [PortMapping("tcp", "", 8080, 80)])]  # e1's port
    problems: dict = {}
    fw = NftFirewall(iptables=False)
    tables = fw.desired(nets(), eps() + bad, problems)
    assert set(problems) == {"e9"} and "already allocated" in problems["e9"]
    assert "e9" not in set(tables["ipv4"].elements["dnat_any"].values())
    with pytest.raises(InvalidParameter):
        fw.desired(nets(), eps() + bad)


def test_change_swaps_only_the_owners_elements(monkeypatch):
    fw = NftFirewall(iptables=False, sysctl=lambda p, v: None)
    sent = []
    monkeypatch.setattr(fw, "_run_batch", sent.append)
    monkeypatch.setattr(fw, "_listing", lambda t: None)
    fw.apply(nets(), eps())
    assert fw.last_path == "replace"
    sent.clear()
    more = EndpointSpec("e2", "n2", "10.2.0.5", None, None, [PortMapping("udp", "", 5000, 50)])
    fw.apply(nets(), eps() + [more], changed={"e2"})
    assert fw.last_path == "delta" and len(sent) == 1
    assert set(sent[0].splitlines()) == {
        "add element ip PYNET dnat_any { udp . 5000 : 10.2.0.5 . 50 }",
        'add element ip PYNET published { "b2" . 10.2.0.5 . udp . 50 }',
        "add element ip PYNET hairpin { 10.2.0.5 . 10.2.0.5 . udp . 50 }"}
    # a conflicting change is refused alone, nothing sent for it
    sent.clear()
    clash = EndpointSpec("e4", "n2", "10.2.0.6", None, None, [PortMapping("tcp", "", 8080, 80)])
    problems: dict = {}
    fw.apply(nets(), eps() + [more, clash], problems, changed={"e4"})
    assert set(problems) == {"e4"} and sent == []


def test_prefix_must_name_an_nft_table():
    with pytest.raises(InvalidParameter) as e:
        NftFirewall("9X")
    assert "must start with a letter" in str(e.value)


def test_backend_setting_at_the_doors(monkeypatch):
    assert Config.from_env().firewall_backend == "iptables"
    assert Config.from_env(firewall_backend="nftables").firewall_backend == "nftables"
    monkeypatch.setenv("PYNET_FIREWALL_BACKEND", "nftables")
    assert Config.from_env().firewall_backend == "nftables"
    monkeypatch.setenv("PYNET_FIREWALL_BACKEND", "pf")
    with pytest.raises(InvalidParameter) as e:
        Config.from_env()
    assert str(e.value) == "invalid firewall backend 'pf': want one of iptables, nftables"
    assert pynet_settings({"pynet": {"firewallBackend": "nftables"}}, {})["firewall_backend"] == "nftables"
    with pytest.raises(spec.CniError) as ce:
        pynet_settings({"pynet": {"firewallBackend": "ipfw"}}, {})
    assert ce.value.code == spec.INVALID_CONFIG and "pynet.firewallBackend" in ce.value.msg
    with pytest.raises(spec.CniError) as ce:
        pynet_settings({}, {"PYNET_FIREWALL_BACKEND": "x"})
    assert ce.value.code == spec.INVALID_ENVIRONMENT


def test_root_builds_the_chosen_backend(tmp_path):
    from pynet import root
    from pynet.firewall import Firewall

    fw = root.build_firewall(Config(state_dir=str(tmp_path), firewall_backend="nftables"), sysctl=object())
    assert isinstance(fw.firewall, NftFirewall) and fw.firewall.prefix == "PYNET"
    fw = root.build_firewall(Config(state_dir=str(tmp_path)), sysctl=object())
    assert isinstance(fw.firewall, Firewall)


def test_conflist_iptables_backend_reaches_the_firewall(tmp_path):
    """A CNI plugin runs with the runtime's clean environment: the conflist's
    pynet.iptablesBackend picks the iptables backend (a legacy CNI-only host), and a bad
    value is one line with CNI's config code."""
    from pynet import root
    from pynet.cni import spec
    from pynet.cni.plugin import _config
    from pynet.cni.settings import pynet_settings
    from pynet.firewall.backend import IptcBackend, NftBackend

    s = pynet_settings({"pynet": {"stateDir": str(tmp_path), "iptablesBackend": "legacy"}}, {})
    fw = root.build_firewall(_config(s), sysctl=object())
    assert isinstance(fw.firewall.backend, IptcBackend)
    s = pynet_settings({"pynet": {"stateDir": str(tmp_path)}}, {"PYNET_IPTABLES_BACKEND": "nft"})
    assert isinstance(root.build_firewall(_config(s), sysctl=object()).firewall.backend, NftBackend)
    with pytest.raises(spec.CniError) as e:
        pynet_settings({"pynet": {"iptablesBackend": "ipfw"}}, {})
    assert e.value.code == spec.INVALID_CONFIG and "\n" not in str(e.value)
    assert "want one of nft, legacy, legacy-restore" in str(e.value)
