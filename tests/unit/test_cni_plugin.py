"""pynet.cni.plugin and pynet.cnm.attach against the fake kernel: the real
Controller, IPAM and bridge driver over a MemoryStore, FakeNetlink and a
recording firewall -- the verbs' order, undo, idempotent DEL, GC, sharing."""
from __future__ import annotations

import json

import pytest

from tests.support.fakes import FakeFirewall

from pynet import errors  # noqa: E402
from pynet.cni import dispatch  # noqa: E402
from pynet.cnm import attach  # noqa: E402
from pynet.cnm.controller import Controller  # noqa: E402
from pynet.drivers.bridge import BridgeDriver  # noqa: E402
from pynet.ipam import Ipam  # noqa: E402
from pynet.netlink.fake import FakeKernel, FakeNetlink  # noqa: E402
from pynet.store.memory import MemoryStore  # noqa: E402
from pynet.sysctl import FakeSysctl  # noqa: E402


class World:
    def __init__(self, tmp_path):
        self.kernel = FakeKernel()
        self.nl = FakeNetlink(self.kernel)
        self.store = MemoryStore()
        self.fw = FakeFirewall()
        self.c = Controller(self.store, Ipam(self.store, host_routes=lambda: []),
                            {"bridge": BridgeDriver(self.nl, FakeSysctl(), instance="t")}, firewall=self.fw)
        self.tmp = tmp_path
        self.state = str(tmp_path / "state")

    def netns(self, name):
        path = str(self.tmp / name)
        open(path, "w").close()          # plugin.cmd_add checks the path exists
        self.kernel.add_netns(path)
        return path

    def conf(self, version="1.0.0", **kw):
        c = {"cniVersion": version, "name": "net1", "type": "pynet-bridge", "bridge": "tb0",
             "isDefaultGateway": True, "ipMasq": True,
             "ipam": {"ranges": [[{"subnet": "10.9.0.0/24"}]]}, "pynet": {"stateDir": self.state}}
        c.update(kw)
        return c

    def run(self, command, conf, cid="c1", netns="", ifname="eth0", plugin_name="bridge"):
        env = {"CNI_COMMAND": command, "CNI_CONTAINERID": cid, "CNI_IFNAME": ifname, "CNI_NETNS": netns}
        out, code = dispatch.run(plugin_name, env, json.dumps(conf).encode(), controller=self.c,
                               netlink=self.nl, instance="t")
        return code, (json.loads(out) if out.strip() else None)


@pytest.fixture
def w(tmp_path):
    return World(tmp_path)


def test_add_runs_dockerds_order_and_del_reverses(w):
    ns = w.netns("ns1")
    calls = []
    for verb in ("request_address", "create_endpoint", "join", "program_external_connectivity",
                 "revoke_external_connectivity", "leave", "delete_endpoint", "release_address"):
        orig = getattr(w.c, verb)
        setattr(w.c, verb, lambda *a, _o=orig, _v=verb, **k: calls.append(_v) or _o(*a, **k))
    conf = w.conf(runtimeConfig={"portMappings": [{"hostPort": 8080, "containerPort": 80}]})
    code, res = w.run("ADD", conf, netns=ns)
    assert code == 0, res
    # (the first request_address is the gateway, when the first ADD makes the network)
    assert calls[-4:] == ["request_address", "create_endpoint", "join", "program_external_connectivity"]
    inner = w.nl.for_netns(ns)
    assert inner.get_link("eth0").addresses == [res["ips"][0]["address"]]
    assert w.fw.published == [("tcp", 8080, 80)]
    calls.clear()
    assert w.run("DEL", conf, netns=ns) == (0, None)
    assert calls == ["revoke_external_connectivity", "leave", "delete_endpoint", "release_address"]
    assert not inner.link_exists("eth0") and w.c.endpoints() == []
    assert w.run("DEL", conf, netns=ns) == (0, None)
    assert w.run("DEL", conf, netns="") == (0, None)


def test_failed_sandbox_step_undoes_everything(w):
    ns = w.netns("ns1")
    w.kernel.fail("move_to_netns")
    code, res = w.run("ADD", w.conf(), netns=ns)
    assert code == 1 and res["code"] == 999
    # the failed first ADD takes the network it created with it (pool, gateway)
    assert w.c.networks() == [] and w.c.endpoints() == []
    assert w.c.ipam.list_pools() == [] and list(w.store.list("")) == []
    assert not [link for link in w.nl.list_links() if link.kind == "veth"]
    code, res = w.run("ADD", w.conf(), netns=ns)
    assert code == 0, res


def test_network_made_once_shared_and_checked(w):
    ns1, ns2 = w.netns("ns1"), w.netns("ns2")
    assert w.run("ADD", w.conf(), "c1", ns1)[0] == 0
    assert w.run("ADD", w.conf(), "c2", ns2)[0] == 0
    nets = w.c.networks()
    assert len(nets) == 1 and nets[0].created_by == "cni" and nets[0].name == "net1"
    code, res = w.run("ADD", w.conf(ipMasq=False), "c3", w.netns("ns3"))
    assert code == 1 and res["code"] == 7 and "ipMasq" in res["msg"]


def test_docker_made_network_is_shared_when_it_agrees(w):
    pid, pool, _ = w.c.request_pool("LocalDefault", "10.9.0.0/24")
    gw = w.c.request_address(pid, "", {"RequestAddressType": "com.docker.network.gateway"})
    from pynet.cnm.model import IPData
    net = w.c.create_network("d" * 64, [IPData(pool=pool, gateway=gw, address_space="LocalDefault")],
                             name="net1", options={"com.docker.network.bridge.name": "tb0"})
    code, res = w.run("ADD", w.conf(), "c1", w.netns("ns1"))
    assert code == 0, res
    assert res["ips"][0]["address"] == "10.9.0.2/24"
    assert [e.network_id for e in w.c.endpoints()] == [net.id]
    code, res = w.run("ADD", w.conf(ipam={"ranges": [[{"subnet": "10.8.0.0/24"}]]}), "c2", w.netns("ns2"))
    assert code == 1 and res["code"] == 7 and "subnet" in res["msg"]


def test_existing_attachment_and_stale_one(w):
    ns = w.netns("ns1")
    assert w.run("ADD", w.conf(), "c1", ns)[0] == 0
    # an ADD again without a DEL (the runtime retries one it saw fail): redone, not refused
    code, res = w.run("ADD", w.conf(), "c1", ns)
    assert code == 0, res
    assert len(w.c.endpoints()) == 1 and [x.name for x in w.nl.for_netns(ns).list_links()
                                           if x.name != "lo"] == ["eth0"]
    assert res["ips"][0]["address"].split("/")[0] == w.c.endpoints()[0].ip
    # the interface vanished: a new ADD replaces the stale record
    w.nl.for_netns(ns).delete_link("eth0")
    code, res = w.run("ADD", w.conf(), "c1", ns)
    assert code == 0, res
    assert len(w.c.endpoints()) == 1


def test_gc_keeps_valid_and_removes_the_rest(w):
    for i in range(3):
        assert w.run("ADD", w.conf(), f"c{i}", w.netns(f"ns{i}"))[0] == 0
    conf = w.conf("1.1.0", **{"cni.dev/valid-attachments": [{"containerID": "c1", "ifname": "eth0"}]})
    assert w.run("GC", conf, cid="", ifname="") == (0, None)
    assert [e.container_id for e in w.c.endpoints()] == ["c1"]
    net = w.c.network("net1")
    assert sorted(w.c.ipam.allocated(net.ipv4[0].pool_id)) == ["10.9.0.1", w.c.endpoints()[0].ip]


def test_pool_ids_and_docker_ipam_refusal(w):
    from pynet.cnm.model import IPData
    with pytest.raises(errors.InvalidParameter):
        attach.pool_id_of(w.c, IPData(pool="10.7.0.0/24", address_space="LocalDefault"))
    assert attach.pool_id_of(w.c, IPData(pool="10.7.0.0/24", pool_id="X/10.7.0.0/24")) == "X/10.7.0.0/24"
    assert attach.endpoint_id("n", "c", "eth0") != attach.endpoint_id("n", "c", "eth1")


def test_ipam_plugin_records_and_releases(w):
    conf = w.conf(type="bridge", ipam={"type": "pynet-ipam", "ranges": [[{"subnet": "10.6.0.0/24"}]],
                                       "routes": [{"dst": "0.0.0.0/0"}]})
    code, res = w.run("ADD", conf, "c1", "/x", plugin_name="ipam")
    assert code == 0 and res["ips"] == [{"address": "10.6.0.2/24", "gateway": "10.6.0.1"}]
    assert res["routes"] == [{"dst": "0.0.0.0/0"}] and "interfaces" not in res
    assert w.run("ADD", conf, "c1", "/x", plugin_name="ipam")[1]["ips"] == res["ips"]
    assert w.run("ADD", conf, "c2", "/x", plugin_name="ipam")[1]["ips"][0]["address"] == "10.6.0.3/24"
    assert w.run("DEL", conf, "c1", "", plugin_name="ipam") == (0, None)
    assert w.run("DEL", conf, "c1", "", plugin_name="ipam") == (0, None)
    pid = w.c.store.get("cni/ipam-pools/net1").value["4"]["pool_id"]
    assert sorted(w.c.ipam.allocated(pid)) == ["10.6.0.1", "10.6.0.3"]


@pytest.mark.parametrize("dummy_links", [True, False], ids=["dummy-parent", "veth-pair-parent"])
def test_parentless_macvlan_passes_check(w, dummy_links):
    """A macvlan conflist without ``master`` gets an isolated parent (a dummy,
    or the pd-/pp- veth pair on kernels without dummy links): the join gives no
    gateway, so CHECK must not expect a default route, and the ADD result must
    not name a gateway."""
    from pynet.drivers.macvlan import MacvlanDriver
    from pynet.sysctl import FakeSysctl

    w.c.drivers["macvlan"] = MacvlanDriver(w.nl, FakeSysctl(), instance="t")
    if not dummy_links:
        w.kernel.fail("add_dummy", times=10,
                      exc=errors.KernelError("add dummy pd-x: Operation not supported"))
    ns = w.netns("ns1")
    conf = {"cniVersion": "1.0.0", "name": "mv", "type": "pynet-macvlan",
            "ipam": {"ranges": [[{"subnet": "10.9.0.0/24"}]]}, "pynet": {"stateDir": w.state}}
    code, res = w.run("ADD", conf, netns=ns, plugin_name="macvlan")
    assert code == 0, res
    kinds = {link.name[:3]: link.kind for link in w.nl.list_links() if link.name[:3] in ("pd-", "pp-")}
    assert kinds == ({"pd-": "dummy"} if dummy_links else {"pd-": "veth", "pp-": "veth"})
    assert all(not ip.get("gateway") for ip in res["ips"]), res
    for _ in range(2):
        assert w.run("CHECK", dict(conf, prevResult=res), netns=ns, plugin_name="macvlan") == (0, None)
    assert w.run("DEL", conf, netns=ns, plugin_name="macvlan") == (0, None)


GOOD_PREV = {"cniVersion": "1.0.0", "interfaces": [{"name": "eth0", "sandbox": "/x"}],
             "ips": [{"address": "10.7.0.2/24", "interface": 0}], "routes": [{"dst": "0.0.0.0/0"}],
             "dns": {"nameservers": ["10.7.0.1"]}}


@pytest.mark.parametrize("prev", [
    "x", [1], {"interfaces": "eth0"}, {"interfaces": ["eth0"]}, {"interfaces": [{"name": 5}]},
    {"interfaces": [{"mtu": "1500"}]}, {"ips": [{}]}, {"ips": [{"address": 5}]},
    {"ips": [{"address": "nope"}]}, {"ips": [{"address": "fe80::1%eth0/64"}]},
    {"ips": [{"address": "10.7.0.2/24", "interface": "0"}]},
    {"ips": [{"address": "10.7.0.2/24", "interface": 3}]},
    {"ips": [{"address": "10.7.0.2/24", "interface": True}]},
    {"ips": [{"address": "10.7.0.2/24", "gateway": ["10.7.0.1"]}]},
    {"ips": "10.7.0.2/24"}, {"routes": [{"dst": 1}]}, {"routes": [{"dst": "x"}]}, {"routes": ["0/0"]},
    {"dns": []}, {"dns": {"nameservers": "10.0.0.1"}}, {"dns": {"search": [1]}},
], ids=lambda p: json.dumps(p)[:40])
@pytest.mark.parametrize("command", ["ADD", "CHECK"])
def test_malformed_prev_result_is_refused_before_anything(w, prev, command):
    ns = w.netns("ns1")
    if command == "CHECK":
        code, res = w.run("ADD", w.conf(), netns=ns)
        assert code == 0, res
    before = list(w.store.list(""))
    links = sorted(link.name for link in w.nl.list_links())
    code, res = w.run(command, w.conf(prevResult=prev), cid="c1", netns=ns)
    assert code == 1 and res["code"] in (6, 7), res
    assert list(w.store.list("")) == before
    assert sorted(link.name for link in w.nl.list_links()) == links


def test_well_formed_prev_result_is_merged(w):
    code, res = w.run("ADD", w.conf(prevResult=GOOD_PREV), netns=w.netns("ns1"))
    assert code == 0, res
    assert res["ips"][0] == {"address": "10.7.0.2/24", "interface": 0}
    assert res["ips"][1]["interface"] == len(res["interfaces"]) - 1
    assert res["interfaces"][0] == {"name": "eth0", "sandbox": "/x"}


@pytest.mark.parametrize("env_over", [{"CNI_CONTAINERID": 5}, {"CNI_IFNAME": None}, {"CNI_NETNS": ["/x"]},
                                      {"CNI_CONTAINERID": "c\udcff"}, {"CNI_IFNAME": "e\ud800"},
                                      {"CNI_ARGS": "IP=\udcff"}, {"PYNET_STATE_DIR": 1}])
def test_bad_env_values_are_code_4(w, env_over):
    env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_IFNAME": "eth0", "CNI_NETNS": w.netns("ns1"),
           **env_over}
    out, code = dispatch.run("bridge", env, json.dumps(w.conf()).encode(), controller=w.c, netlink=w.nl,
                           instance="t")
    assert code == 1 and json.loads(out)["code"] == 4, out
    assert list(w.store.list("")) == []


@pytest.mark.parametrize("stdin", [
    b'{"cniVersion": "1.0.0", "name": "n1", "args": ' + b"[" * 1000 + b"]" * 1000 + b"}",
    b'{"cniVersion": "1.0.0", "name": "n1", "args": ' + b"[" * 100 + b"]" * 100 + b"}",
    b"[" * 1000 + b"]" * 1000,
    b'{"cniVersion": "1.0.0", "name": "n1", "type": "pynet-bridge", "bridge": "b\\ud800x"}',
    b'{"cniVersion": "1.0.0", "name": "n1", "type": "pynet-bridge", "ipam": {"x\\udc80": 1}}',
    b'{"cniVersion": "1.0.0", "name": "n1", "pynet": {"stateDir": 5}}',
    b'{"cniVersion": "1.0.0", "name": "n1", "pynet": {"daemon": "no"}}',
], ids=["deep-1000", "deep-100", "deep-top", "surrogate-value", "surrogate-key", "stateDir-int",
        "daemon-str"])
@pytest.mark.parametrize("command", ["ADD", "DEL", "CHECK", "VERSION"])
def test_undecodable_configs_are_code_6_or_7(w, stdin, command):
    env = {"CNI_COMMAND": command, "CNI_CONTAINERID": "c1", "CNI_IFNAME": "eth0", "CNI_NETNS": w.netns("ns1")}
    out, code = dispatch.run("bridge", env, stdin, controller=w.c, netlink=w.nl, instance="t")
    if command == "VERSION":
        assert code == 0 and "supportedVersions" in json.loads(out)
    else:
        assert code == 1 and json.loads(out)["code"] in (6, 7), out
    assert list(w.store.list("")) == []


def test_shim_answers_undecodable_configs_in_cni_terms(w, tmp_path):
    from pynet.cni import main as entry

    env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_IFNAME": "eth0", "CNI_NETNS": w.netns("ns1"),
           "PYNET_CNI_DAEMON": "0", "PYNET_STATE_DIR": str(tmp_path / "s")}
    for stdin in (b"[" * 1000 + b"]" * 1000, b'{"cniVersion": "1.0.0", "name": "n1", "pynet": {"stateDir": 5}}'):
        out, code = entry.handle("bridge", env, stdin)
        assert code == 1 and json.loads(out)["code"] in (6, 7), out
    out, code = entry.handle("bridge", dict(env, CNI_COMMAND="VERSION"), b"[" * 1000 + b"]" * 1000)
    assert code == 0 and "supportedVersions" in json.loads(out)


@pytest.mark.parametrize("runtime_config", [
    {"portMappings": [{"hostPort": 8080, "containerPort": 80}, {"hostPort": 8080, "containerPort": 81}]},
    {"portMappings": [{"hostPort": 8080, "containerPort": 80, "hostIP": "not-an-address"}]},
    {"ips": ["10.99.0.5/24"]},
], ids=["same-host-port-twice", "bad-host-ip", "ip-outside-subnet"])
def test_refused_first_add_leaves_nothing(w, runtime_config):
    """The first ADD creates the network; refused later on, it takes the
    network, its pool and its gateway records with it."""
    ns = w.netns("ns1")
    code, res = w.run("ADD", w.conf(runtimeConfig=runtime_config), netns=ns)
    assert code == 1 and res["code"] != 999, res
    assert list(w.store.list("")) == []
    assert w.kernel.summary() == {}
    code, res = w.run("ADD", w.conf(), netns=ns)
    assert code == 0, res
