"""Adding a driver is ``drivers/<name>.py`` and one registration line (issue
10, acceptance): a driver no pynet module knows (tests/support/toy_driver.py),
registered with one line, runs through the controller, the Docker front end
(Flask test client, as dockerd calls it) and the CNI in-process path --
its conflist key read, compared and refused by the driver alone."""
from __future__ import annotations

import json
import os
import pathlib

import pytest

import pynet
from pynet import drivers as registry
from pynet.cnm.controller import Controller
from pynet.cnm.model import IPData
from pynet.ipam import Ipam
from pynet.netlink.fake import FakeKernel, FakeNetlink
from pynet.store.memory import MemoryStore
from pynet.sysctl import FakeSysctl

NID = "7e" * 32
EID = "e1" * 32


@pytest.fixture
def toy(monkeypatch):
    # the one registration line
    monkeypatch.setitem(registry.REGISTRY, "toy", "tests.support.toy_driver:ToyDriver")


@pytest.fixture
def world(toy, tmp_path):
    kernel = FakeKernel()
    nl = FakeNetlink(kernel)
    store = MemoryStore()
    c = Controller(store, Ipam(store, host_routes=lambda: []),
                   registry.build_drivers(nl, FakeSysctl(), firewall=None, instance="t"))
    return c, nl, kernel, tmp_path


def test_no_pynet_module_names_the_toy_driver():
    root = pathlib.Path(pynet.__file__).parent
    assert [str(p) for p in root.rglob("*.py") if "toy" in p.read_text().lower()] == []


def test_the_registry_builds_drivers_lazily(world):
    c, *_ = world
    assert list(c.drivers) == ["bridge", "macvlan", "overlay", "toy"]
    assert c.drivers.built() == {}
    assert c.driver("toy").name == "toy" and set(c.drivers.built()) == {"toy"}
    with pytest.raises(KeyError):
        registry.build_drivers(None, None, names=["nope"])


def test_through_the_controller(world):
    c, nl, *_ = world
    net = c.create_network(NID, [IPData(pool="10.60.0.0/24", gateway="10.60.0.1/24")], driver="toy",
                           options={"toy.label": "red"})
    assert net.driver_state == {"label": "red"}   # handed back by create_network, stored
    assert c.network(NID).driver_state == {"label": "red"}
    ep = c.create_endpoint(NID, EID, address="10.60.0.2/24")
    info = c.join(NID, EID, "/var/run/netns/x")
    assert info.src_name == ep.driver_state["container"] and nl.link_exists(info.src_name)
    assert c.endpoint_oper_info(NID, EID) == {"host": ep.driver_state["host"]}
    c.leave(NID, EID)
    c.delete_endpoint(NID, EID)
    c.delete_network(NID)
    assert not nl.link_exists(ep.driver_state["host"]) and c.networks() == []


def test_through_the_docker_front_end(world):
    from pynet.plugin_api.app import create_app

    c, nl, *_ = world
    client = create_app(c).test_client()

    def call(method, body):
        resp = client.post(f"/{method}", data=json.dumps(body).encode(), content_type=None)
        return resp.status_code, json.loads(resp.get_data())

    opts = {"com.docker.network.generic": {"pynet.driver": "toy", "toy.label": "blue"}}
    v4 = [{"AddressSpace": "LocalDefault", "Pool": "10.61.0.0/24", "Gateway": "10.61.0.1/24"}]
    bad = {"com.docker.network.generic": {"pynet.driver": "toy", "toy.label": "-x"}}
    status, answer = call("NetworkDriver.CreateNetwork", {"NetworkID": NID, "Options": bad, "IPv4Data": v4})
    assert status != 200 and "toy.label" in answer["Err"]                 # the driver's own check
    assert call("NetworkDriver.AllocateNetwork", {"NetworkID": NID, "Options": {}})[0] == 200
    assert call("NetworkDriver.CreateNetwork", {"NetworkID": NID, "Options": opts, "IPv4Data": v4}) == (200, {})
    status, answer = call("NetworkDriver.CreateEndpoint", {
        "NetworkID": NID, "EndpointID": EID, "Interface": {"Address": "10.61.0.2/24"}, "Options": {}})
    assert status == 200, answer
    status, answer = call("NetworkDriver.Join", {"NetworkID": NID, "EndpointID": EID, "SandboxKey": "/x"})
    assert status == 200 and answer["InterfaceName"]["SrcName"].startswith("tc"), answer
    assert answer["Gateway"] == "10.61.0.1"
    assert call("NetworkDriver.Leave", {"NetworkID": NID, "EndpointID": EID})[0] == 200
    assert call("NetworkDriver.DeleteEndpoint", {"NetworkID": NID, "EndpointID": EID})[0] == 200
    assert call("NetworkDriver.DeleteNetwork", {"NetworkID": NID})[0] == 200
    assert c.networks() == []


def test_through_the_cni_in_process_path(world):
    import pynet.cni
    from pynet.cni import dispatch as cni

    c, nl, kernel, tmp = world
    assert pynet.cni.PLUGINS["pynet-toy"] == "toy"   # the binary `pynet cni install` writes
    state = str(tmp / "state")
    ns = str(tmp / "ns1")
    open(ns, "w").close()
    kernel.add_netns(ns)
    conf = {"cniVersion": "1.1.0", "name": "toynet", "type": "pynet-toy", "toyLabel": "green",
            "ipam": {"type": "pynet-ipam", "ranges": [[{"subnet": "10.62.0.0/24"}]]},
            "pynet": {"stateDir": state, "daemon": False}}
    env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_IFNAME": "eth0", "CNI_NETNS": ns,
           "CNI_PATH": "/opt/cni/bin", "PYNET_STATE_DIR": state}

    def run(verb, conf, **kw):
        out, code = cni.run("toy", dict(env, CNI_COMMAND=verb, **kw), json.dumps(conf).encode(),
                            controller=c, netlink=nl, instance="t")
        return code, (json.loads(out) if out else None)

    code, res = run("ADD", conf)
    assert code == 0, res
    host = res["interfaces"][0]["name"]
    assert host.startswith("ty") and res["interfaces"][1] == dict(res["interfaces"][1], name="eth0", sandbox=ns)
    assert res["ips"][0]["address"].startswith("10.62.0.") and res["ips"][0]["gateway"] == "10.62.0.1"
    net = c.network("toynet")
    assert (net.driver, net.options, net.driver_state) == ("toy", {"toy.label": "green"}, {"label": "green"})
    # a conflist key of the driver's, read and compared by the driver
    code, res2 = run("ADD", dict(conf, toyLabel="violet"), CNI_CONTAINERID="c2")
    assert code == 1 and res2["code"] == 7 and "toyLabel green (conflist: violet)" in res2["msg"], res2
    code, res2 = run("ADD", dict(conf, toyLabel=5), CNI_CONTAINERID="c2")
    assert code == 1 and res2["code"] == 7 and "toyLabel" in res2["msg"], res2
    code, out = run("CHECK", dict(conf, prevResult=res))
    assert code == 0, out
    assert run("DEL", conf) == (0, None)
    assert not nl.link_exists(host) and c.endpoints() == []
