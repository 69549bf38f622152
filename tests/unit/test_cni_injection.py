"""Injection attempts through the CNI front end (issue 9, defects 4, 5, 8):
CNI_CONTAINERID / CNI_IFNAME, the conflist's ``bridge``/``master``, ipam
ranges and routes, runtimeConfig ``ips``/``mac``/``portMappings[].hostIP`` --
each refused with its CNI code, one line, and nothing changed (store, fake
kernel, firewall)."""
from __future__ import annotations

import json

import pytest

from pynet.cni import plugin, spec
from pynet.cni.spec import CniError

from tests.unit.test_cni_plugin import World  # noqa: F401 -- the fake-kernel world of the CNI unit tests

ZONE = "::%lo\nCOMMIT\n*filter\n-I INPUT 1 -j ACCEPT"


@pytest.fixture
def w(tmp_path):
    return World(tmp_path)


def state(w):
    return ([(r.key, r.value) for r in w.store.list("")],
            {ns: sorted(n.links) for ns, n in w.kernel.namespaces.items()},
            list(w.fw.published), len(w.fw.synced))


def refused(code_out, code=7):
    rc, out = code_out
    assert rc == 1, out
    assert out["code"] == code, out
    assert "\n" not in out["msg"] and out["msg"], out
    return out["msg"]


# ------------------------------------------------------------- the environment
@pytest.mark.parametrize("cid", ["abc\n", "abc\r\n", "a/b", "-x", "a b", "x\0y", "\udc80"])
def test_container_id_anchored_at_the_true_end(cid):
    """``^...$`` accepted ``abc\\n`` (``$`` matches before a trailing newline)."""
    with pytest.raises(CniError) as e:
        spec.check_container_id(cid)
    assert e.value.code == spec.INVALID_ENVIRONMENT and "\n" not in e.value.msg


@pytest.mark.parametrize("ifname", ["eth+", "+", "-j", "eth0\n", "e\0", "é", "a:b"])
def test_cni_ifname_refused(ifname):
    with pytest.raises(CniError) as e:
        spec.check_ifname(ifname)
    assert e.value.code == spec.INVALID_ENVIRONMENT and "CNI_IFNAME" in e.value.msg


@pytest.mark.parametrize("name", ["net1\n", "-net", "net/1"])
def test_network_name_anchored(name):
    with pytest.raises(CniError) as e:
        spec.parse_conf(json.dumps({"cniVersion": "1.0.0", "name": name}).encode())
    assert e.value.code == spec.INVALID_CONFIG


def test_trailing_newline_container_id_changes_nothing(w):
    ns = w.netns("ns1")
    before = state(w)
    refused(w.run("ADD", w.conf(), cid="c1\n", netns=ns), code=4)
    assert state(w) == before


# ------------------------------------------------------------------- the conflist
@pytest.mark.parametrize("bridge", ["+", "eth+", "-j", "br\0x", "br0\n", "b r", 'b"r', "b" * 16])
def test_bridge_name_refused(w, bridge):
    ns = w.netns("ns1")
    before = state(w)
    msg = refused(w.run("ADD", w.conf(bridge=bridge), netns=ns))
    assert "bridge name" in msg
    assert state(w) == before


@pytest.mark.parametrize("ipam, fragment", [
    ({"ranges": [[{"subnet": "fd00:9::%lo/64"}]]}, "zone"),
    ({"ranges": [[{"subnet": "fd00:9::/64", "gateway": "fd00:9::1%lo"}]]}, "zone"),
    ({"ranges": [[{"subnet": " 10.9.0.0/24"}]]}, "whitespace"),
    ({"ranges": [[{"subnet": "10.9.0.0/24", "gateway": "10.9.0.1\n"}]]}, "whitespace"),
    ({"ranges": [[{"subnet": "10.9.0.0/24"}]], "routes": [{"dst": "0.0.0.0/0", "gw": "10.9.0.1%x"}]},
     "zone"),
    ({"ranges": [[{"subnet": "10.9.0.0/24"}]], "routes": [{"dst": "::%lo/0"}]}, "zone"),
    ({"ranges": [[{"subnet": "10.9.0.0/24"}]], "routes": [{"dst": "0.0.0.0/0", "gw": "fd00::1"}]},
     "IPv4"),
])
def test_ipam_values_refused(w, ipam, fragment):
    ns = w.netns("ns1")
    before = state(w)
    msg = refused(w.run("ADD", w.conf(ipam=ipam), netns=ns))
    assert fragment in msg, msg
    assert state(w) == before


@pytest.mark.parametrize("rc, fragment", [
    ({"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp", "hostIP": ZONE}]},
     "hostIP"),
    ({"portMappings": [{"hostPort": 8080, "containerPort": 80, "hostIP": "::%x"}]}, "zone"),
    ({"portMappings": [{"hostPort": 8080, "containerPort": 80, "hostIP": "127.0.0.1 "}]}, "whitespace"),
    ({"portMappings": [{"hostPort": "8080", "containerPort": 80}]}, "hostPort"),
    ({"portMappings": [{"hostPort": 8080, "containerPort": True}]}, "containerPort"),
    ({"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": ["tcp"]}]}, "protocol"),
    ({"ips": ["10.9.0.5%x"]}, "zone"),
    ({"ips": ["fd00::5%lo\nCOMMIT/64"]}, "zone"),
    ({"ips": "10.9.0.5"}, "list"),
    ({"mac": "02:42:0a:09:00:05\n"}, "MAC"),
    ({"mac": "+2:42:0a:09:00:05"}, "MAC"),
])
def test_runtime_config_refused(w, rc, fragment):
    ns = w.netns("ns1")
    before = state(w)
    msg = refused(w.run("ADD", w.conf(runtimeConfig=rc, capabilities={"portMappings": True, "ips": True,
                                                                       "mac": True}), netns=ns))
    assert fragment in msg, msg
    assert state(w) == before


def test_macvlan_master_refused():
    for master in ("eth+", "-j", "e\0"):
        with pytest.raises(CniError) as e:
            plugin.parse_netconf("macvlan", {"cniVersion": "1.0.0", "name": "m", "master": master})
        assert e.value.code == spec.INVALID_CONFIG and "master" in e.value.msg


def test_ipam_plugin_refuses_before_allocating(w):
    conf = w.conf(type="bridge", ipam={"type": "pynet-ipam", "ranges": [[{"subnet": "10.9.0.0/24"}]],
                                       "routes": [{"dst": "0.0.0.0/0", "gw": "10.9.0.1%lo"}]})
    before = state(w)
    msg = refused(w.run("ADD", conf, plugin_name="ipam", netns="/x"))
    assert "zone" in msg
    assert state(w) == before
    conf["ipam"]["routes"] = []
    conf["runtimeConfig"] = {"ips": ["10.9.0.7%x"]}
    refused(w.run("ADD", conf, plugin_name="ipam", netns="/x"))
    assert state(w) == before


def test_ordinary_values_still_pass(w):
    ns = w.netns("ns1")
    conf = w.conf(ipam={"ranges": [[{"subnet": "10.9.0.0/24", "gateway": "10.9.0.1"}]],
                        "routes": [{"dst": "0.0.0.0/0", "gw": "10.9.0.1"}]},
                  runtimeConfig={"portMappings": [{"hostPort": 8080, "containerPort": 80,
                                                   "protocol": "TCP", "hostIP": "127.0.0.1"}],
                                 "ips": ["10.9.0.7/24"], "mac": "2:42:a:9:0:7"})
    rc, out = w.run("ADD", conf, cid="c1.x_y-z", netns=ns)
    assert rc == 0, out
    assert out["ips"][0]["address"] == "10.9.0.7/24"
