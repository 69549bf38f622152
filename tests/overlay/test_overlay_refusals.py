"""Bad input for overlay networks: one readable line each, typed for each edge (Docker
``{"Err"}`` with a 4xx, CNI error code 7), and nothing created anywhere -- neither in the kernel
(the stateful fake), nor in the local store, nor in the cluster store."""
from __future__ import annotations

import json

import pytest

from pynet import errors
from pynet.cluster import Cluster
from pynet.cnm.controller import Controller
from pynet.cnm.model import IPData
from pynet.config import Config
from pynet.drivers import build_drivers
from pynet.ipam import Ipam
from pynet.netlink.fake import FakeKernel, FakeNetlink
from pynet.store.memory import MemoryStore
from pynet.sysctl import FakeSysctl
from tests.support.contract import Plugin

NID = "f" * 64


def world(cluster_store=None, address="127.0.0.2"):
    nl = FakeNetlink(FakeKernel())
    nl.add_dummy("eth0")
    nl.ensure_address("eth0", "127.0.0.2/8")
    cluster = None
    if cluster_store is not None:
        cluster = Cluster(lambda: cluster_store, host="h1", address=address, namespace="t")
    store = MemoryStore()
    c = Controller(store, Ipam(store, host_routes=lambda: []),
                   build_drivers(nl, FakeSysctl(), instance="t", cluster=cluster))
    return c, nl, store


def records(store) -> list:
    return [r.key for r in store.list("")]


def test_docker_create_without_a_cluster_store_is_an_err_and_changes_nothing():
    from pynet.plugin_api.app import create_app

    c, nl, store = world()
    plugin = Plugin(create_app(c).test_client())
    body = {"NetworkID": NID, "IPv4Data": [{"AddressSpace": "LocalDefault", "Pool": "10.81.0.0/24",
                                            "Gateway": "10.81.0.1/24"}], "IPv6Data": [],
            "Options": {"com.docker.network.generic": {"pynet.driver": "overlay"}}}
    status, answer = plugin.call("NetworkDriver.CreateNetwork", body)
    assert status == 400 and "needs a cluster store" in answer["Err"] and "\n" not in answer["Err"]
    assert records(store) == [] and nl.kernel.summary() == {"eth0": "dummy"}


def test_cni_add_without_a_cluster_store_is_code_7_and_changes_nothing(tmp_path):
    from pynet.cni import dispatch

    c, nl, store = world()
    conf = {"cniVersion": "1.0.0", "name": "ovl", "type": "pynet-overlay", "isGateway": True,
            "ipam": {"type": "pynet-ipam", "ranges": [[{"subnet": "10.82.0.0/24"}]]},
            "pynet": {"stateDir": str(tmp_path), "daemon": False}}
    ns = tmp_path / "netns"
    ns.write_text("")
    env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_NETNS": str(ns), "CNI_IFNAME": "eth0",
           "CNI_PATH": "/nonexistent"}
    out, code = dispatch.run("overlay", env, json.dumps(conf).encode(), controller=c, netlink=nl)
    err = json.loads(out)
    assert code != 0 and err["code"] == 7 and "needs a cluster store" in err["msg"], err
    assert records(store) == [] and nl.kernel.summary() == {"eth0": "dummy"}


def test_an_advertise_address_that_is_not_local_is_refused_before_any_record():
    cstore = MemoryStore()
    c, nl, store = world(cstore, address="198.18.200.1")
    with pytest.raises(errors.InvalidParameter, match="198.18.200.1 is not an address of this host"):
        c.create_network(NID, [IPData(pool="10.83.0.0/24", gateway="10.83.0.1/24")], driver="overlay")
    assert records(cstore) == [] and records(store) == [] and nl.kernel.summary() == {"eth0": "dummy"}


@pytest.mark.parametrize("kw, text", [
    ({"cluster_store": "http://10.0.0.1:2379"}, "invalid cluster store"),
    ({"cluster_store": "etcd://10.0.0.1:2379/a/b"}, "invalid cluster store"),
    ({"advertise_address": "10.0.0.300"}, "advertise address"),
    ({"host_id": "a/b"}, "invalid host ID"),
    ({"cluster_lease_ttl": "1"}, "must be 2..3600"),
    ({"vni_range": "0-10"}, "invalid VNI range"),
    ({"vxlan_port": "70000"}, "must be 1..65535"),
])
def test_bad_cluster_settings_are_one_readable_line(kw, text):
    with pytest.raises(errors.InvalidParameter) as e:
        Config.from_env(**kw)
    assert text in str(e.value) and "\n" not in str(e.value)


def test_conflicting_settings_between_hosts_list_the_differences():
    cstore = MemoryStore()
    a, _, _ = world(cstore)
    b, nl_b, store_b = world(cstore)
    a.create_network(NID, [IPData(pool="10.84.0.0/24", gateway="10.84.0.1/24")], driver="overlay",
                     options={"pynet.overlay.vxlan_port": "4790"})
    with pytest.raises(errors.Conflict) as e:
        b.create_network(NID, [IPData(pool="10.85.0.0/24", gateway="10.85.0.1/24")], driver="overlay")
    msg = str(e.value)
    assert "other settings" in msg and "port 4790 (here: 4789)" in msg and "subnets" in msg
    assert b.networks() == [] and nl_b.kernel.summary() == {"eth0": "dummy"}
    with pytest.raises(errors.InvalidOption, match="unknown overlay option pynet.overlay.vnid"):
        b.create_network("e" * 64, [IPData(pool="10.86.0.0/24", gateway="10.86.0.1/24")], driver="overlay",
                         options={"pynet.overlay.vnid": "5"})
