"""Sandboxes attached by CNI: the format, the runtime side (``cniexec``),
and -- as root -- that the runner really executes the installed binaries
against the host's pynet instance and that teardown (DEL, then the CNI-made
network) leaves no namespace, link, store record or iptables rule."""
import json
import os
import subprocess

import pytest

from pynet.scenario import cniexec
from pynet.scenario.model import ScenarioError, load, parse
from tests.support.scenario import NEEDS_ROOT, SCENARIOS, netns_names, run_cli

POD = {"hosts": {"h1": {"cni": {"podnet": {"subnet": "10.22.0.0/24"}},
                        "sandboxes": {"p1": {"cni": ["podnet"]},
                                      "p2": {"cni": {"podnet": {"address": "10.22.0.9"}},
                                             "publish": ["8080:80/tcp"]}}}},
       "outside": {"ext": {}},
       "expect": [{"reach": {"from": "p1", "to": "p2"}}]}


def _with(**host):
    d = json.loads(json.dumps(POD))
    d["hosts"]["h1"].update(host)
    return d


# ------------------------------------------------------------------ format
def test_conflist_defaults_and_attachments():
    s = parse(POD)
    net = s.hosts["h1"].networks["podnet"]
    assert net.origin == "cni" and net.driver == "bridge" and net.subnet == "10.22.0.0/24"
    assert net.cni["cniVersion"] == "1.0.0"
    entry = net.cni["plugin"]
    assert entry["type"] == "pynet-bridge"
    assert entry["isGateway"] is entry["isDefaultGateway"] is entry["ipMasq"] is True
    assert entry["capabilities"] == {"portMappings": True, "ips": True, "mac": True}
    assert entry["ipam"] == {"type": "pynet-ipam", "ranges": [[{"subnet": "10.22.0.0/24"}]]}
    p2 = s.sandboxes()["p2"]
    assert [(a.network, a.cni, a.ifname, a.address) for a in p2.attachments] == \
        [("podnet", True, "eth0", "10.22.0.9")]
    assert p2.publish[0].host_port == 8080
    assert s.uses_cni()
    # an address in the CNI subnet is a valid target
    parse({**POD, "expect": [{"reach": {"from": "p1", "to": "10.22.0.1"}}]})


def test_conflist_keys_pass_through_and_join_an_existing_network():
    d = _with(networks={"front": {"subnet": "10.10.1.0/24", "options": {
        "com.docker.network.bridge.enable_ip_masquerade": "false"}}},
        cni={"front": {"mtu": 1400, "cniVersion": "1.1.0"}},
        sandboxes={"a": {"networks": ["front"]}, "p1": {"cni": ["front"]}, "p2": {"cni": ["front"]}})
    s = parse(d)
    net = s.hosts["h1"].networks["front"]
    assert net.origin == "runner" and net.cni["cniVersion"] == "1.1.0"
    e = net.cni["plugin"]
    assert e["mtu"] == 1400 and e["ipMasq"] is False     # the network's own setting
    assert e["ipam"]["ranges"] == [[{"subnet": "10.10.1.0/24"}]]


@pytest.mark.parametrize("host,msg", [
    ({"cni": {"podnet": {"type": "bridge"}}}, "installed plugins"),
    ({"cni": {"podnet": {"name": "x"}}}, "set by the runner"),
    ({"cni": {"podnet": {"pynet": {"stateDir": "/"}}}}, "set by the runner"),
    ({"cni": {"podnet": {"subnet": "192.0.2.0/24"}}}, "never use"),
    ({"cni": {"podnet": {"subnet": "10.22.0.0/24", "gateway": "10.23.0.1"}}}, "contains it"),
    ({"sandboxes": {"p1": {"cni": ["nope"]}}}, "no conflist"),
    ({"sandboxes": {"p1": {"cni": {"podnet": {"address": "10.5.0.1"}}}}}, "not inside"),
    ({"sandboxes": {"p1": {"cni": {"podnet": {"ifname": "a/b"}}}}}, "not an interface name"),
    ({"sandboxes": {"p1": {"cni": ["podnet"], "publish": ["80"]}}}, "host port"),
    ({"sandboxes": {"p1": {"mode": "host", "cni": ["podnet"]}}}, "joins no network"),
    ({"networks": {"front": {}}, "sandboxes": {"p1": {"cni": ["podnet"], "networks": ["front"]}}},
     "not both"),
    ({"networks": {"front": {"subnet": "10.10.1.0/24"}},
      "cni": {"front": {"subnet": "10.10.2.0/24"}}}, "has subnet"),
    ({"networks": {"front": {}}, "cni": {"front": {"type": "pynet-macvlan"}}}, "has driver"),
])
def test_invalid_cni(host, msg):
    d = _with(**host)
    if "sandboxes" in host:
        d["expect"] = []
    with pytest.raises(ScenarioError, match=msg):
        parse(d)


def test_library_cni_files():
    s = load(str(SCENARIOS / "cni-bridge.yaml"))
    assert s.hosts["h1"].networks["podnet"].cni["plugin"]["bridge"] == "cni-pod0"
    assert {e.kind for e in s.expectations} >= {"reach", "arp", "nat", "dnat", "isolated"}
    m = load(str(SCENARIOS / "cni-mixed.yaml"))
    sbs = m.sandboxes()
    assert sbs["pod"].attachments[0].cni and not sbs["web"].attachments[0].cni
    assert sbs["pod"].attachments[0].network == sbs["web"].attachments[0].network == "front"


# ------------------------------------------------------- the runtime side
def test_plugin_config_is_libcni_shaped():
    cl = {"cniVersion": "1.0.0", "name": "podnet",
          "plugins": [{"type": "pynet-bridge", "capabilities": {"portMappings": True}}]}
    rc = {"portMappings": [{"hostPort": 1, "containerPort": 2, "protocol": "tcp"}], "mac": "x"}
    c = cniexec.plugin_config(cl, cl["plugins"][0], rc, {"cniVersion": "1.0.0", "ips": []})
    assert c["name"] == "podnet" and c["cniVersion"] == "1.0.0" and c["type"] == "pynet-bridge"
    assert c["runtimeConfig"] == {"portMappings": rc["portMappings"]}   # mac: not a capability
    assert c["prevResult"] == {"cniVersion": "1.0.0", "ips": []}
    assert "runtimeConfig" not in cniexec.plugin_config(cl, {"type": "x"}, rc, None)


def _fake_plugin(tmp_path, body):
    p = tmp_path / "fake"
    p.write_text("#!/bin/sh\n" + body)
    p.chmod(0o755)
    return str(tmp_path)


def test_execute_env_stdin_result_and_errors(tmp_path):
    d = _fake_plugin(tmp_path, 'cat > "$0.in"; env | grep ^CNI_ | sort > "$0.env"\n'
                               'echo \'{"cniVersion":"1.0.0","interfaces":[{"name":"br"},'
                               '{"name":"eth1","mac":"AA:BB:CC:00:00:01","sandbox":"/x"}],'
                               '"ips":[{"address":"10.1.0.5/24","gateway":"10.1.0.1","interface":1}]}\'\n')
    att = cniexec.Attachment("c1", "/x", "eth1", {"cniVersion": "1.0.0", "name": "n",
                                                    "plugins": [{"type": "fake"}]})
    res = cniexec.add(f"/nonexistent:{d}", att)
    assert att.result == res
    env = (tmp_path / "fake.env").read_text().split()
    assert env == ["CNI_COMMAND=ADD", "CNI_CONTAINERID=c1", "CNI_IFNAME=eth1", "CNI_NETNS=/x",
                   f"CNI_PATH=/nonexistent:{d}"]
    assert json.loads((tmp_path / "fake.in").read_text()) == {"cniVersion": "1.0.0", "name": "n",
                                                              "type": "fake"}
    info = cniexec.interface_of(res, "eth1", "/x")
    assert info == {"mac": "aa:bb:cc:00:00:01", "addresses": ["10.1.0.5/24"], "gateway": "10.1.0.1",
                    "host_ifaces": ["br"]}
    cniexec.delete(d, att)     # DEL gets the cached result as prevResult
    assert json.loads((tmp_path / "fake.in").read_text())["prevResult"] == res
    bad = _fake_plugin(tmp_path, 'echo \'{"cniVersion":"1.0.0","code":7,"msg":"bad conf"}\'; exit 1\n')
    with pytest.raises(cniexec.CniExecError, match="exit 1, code 7: bad conf"):
        cniexec.add(bad, att)
    with pytest.raises(cniexec.CniExecError, match="no plugin"):
        cniexec.find_plugin(d, "missing")


# ------------------------------------------------------------------ as root
def _ns_exec(ns, *argv):
    # ip netns exec: its own mount namespace, never the root's
    return subprocess.run(["ip", "netns", "exec", ns, *argv], capture_output=True, text=True,
                          timeout=30).stdout


@NEEDS_ROOT
@pytest.mark.netns
def test_binaries_are_executed_and_teardown_leaves_nothing(snapshot):
    from pynet.scenario.host import object_id
    from pynet.scenario.topology import Topology
    from pynet.root import open_state_dir

    t = Topology(load(str(SCENARIOS / "cni-bridge.yaml")))
    try:
        t.build()
        ns = t.ns_name("h1")
        assert sorted(os.listdir(os.path.join(t.work, "cni-bin"))) == \
            ["pynet-bridge", "pynet-ipam", "pynet-macvlan", "pynet-overlay"]
        store = open_state_dir(os.path.join(t.work, "h1"))
        nets = [r.value for r in store.list("networks/")]
        assert [(n["name"], n["created_by"]) for n in nets] == [("podnet", "cni")]
        eps = {e["container_id"]: e for e in (r.value for r in store.list("endpoints/"))}
        # one endpoint per pod, keyed by the CNI_CONTAINERID the runner passed
        assert set(eps) == {object_id(f"{t.prefix}-h1", "cni", p) for p in ("p1", "p2")}
        p2 = eps[object_id(f"{t.prefix}-h1", "cni", "p2")]
        assert p2["address"] == "10.22.0.20/24" and p2["mac"] == "02:42:0a:16:00:14"
        assert t.places["p2"].cni["podnet"]["ips"][0]["address"] == "10.22.0.20/24"
        nat = _ns_exec(ns, "iptables-save", "-t", "nat")
        assert "--dport 8080" in nat and "DNAT --to-destination 10.22.0.20:80" in nat
        links = t.workers["h1"].call("links")
        assert "cni-pod0" in links
        # the host's teardown: CNI DEL per pod, the CNI-made network removed
        rep = t.workers["h1"].call("teardown")
        assert rep == {"problems": [], "leftovers": []}
        assert sorted(t.workers["h1"].call("links")) == ["eth0", "lo"]
        assert "PYNET" not in _ns_exec(ns, "iptables-save")
        assert [r.key for r in store.list("")] == []
        store.close()
        for sb in ("p1", "p2"):   # the pods' interfaces went with DEL
            out = subprocess.run(["ip", "-n", t.ns_name("h1", sb), "-o", "link"],
                                 capture_output=True, text=True).stdout
            assert "eth0" not in out
    finally:
        t.teardown()
    assert not [n for n in netns_names() if n.startswith(t.prefix + "-")]
    assert not os.path.exists(t.work)


@NEEDS_ROOT
@pytest.mark.netns
def test_a_failing_add_is_a_scenario_error_and_is_undone(tmp_path, snapshot):
    # the conflist disagrees with the runner-made network (ipMasq): the
    # plugin refuses the ADD; the run reports the CNI error and cleans up
    f = tmp_path / "cni-conflict.yaml"
    f.write_text("""
hosts:
  h1:
    networks: {front: {subnet: 10.10.1.0/24}}
    cni: {front: {ipMasq: false}}
    sandboxes:
      web: {networks: [front]}
      pod: {cni: [front]}
expect:
  - reach: {from: pod, to: web}
""")
    r = run_cli("run", f, "--out-dir", tmp_path / "out")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "CNI ADD pynet-bridge: exit 1" in r.stdout and "ipMasq" in r.stdout, r.stdout
    assert "teardown" not in r.stdout, r.stdout
