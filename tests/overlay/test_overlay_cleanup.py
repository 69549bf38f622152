"""What an overlay leaves behind, and who collects it (issue 11: "Cleanup", Build 6).

On the stateful fakes (two hosts, one memory store as the cluster store): the address a daemon
took from the cluster's block IPAM for dockerd but never recorded locally (SIGKILLed in between)
is reclaimed by the owning host's restart; the records of a host whose state dir was wiped (it
comes back under a new host ID at the same VTEP address) are collected.
"""
from __future__ import annotations

import pytest

from pynet.cnm.controller import Controller
from pynet.cnm.model import IPData
from pynet.drivers import build_drivers
from pynet.drivers.overlay import OPT_CLUSTER_NETWORK, pool_name
from pynet.ipam import Ipam
from pynet.store.memory import MemoryStore
from pynet.sysctl import FakeSysctl
from tests.overlay.test_overlay_fakes import Host, two_hosts  # noqa: F401 -- the fixture

POOL = pool_name("10.77.0.0/24")


def _docker_network(h: Host, nid: str, name: str = "dock") -> str:
    """dockerd's order: RequestPool, the gateway, CreateNetwork; returns the pool ID."""
    pid, pool, _ = h.c.request_pool("LocalDefault", "10.77.0.0/24", requester="docker")
    gw = h.c.request_address(pid, "", {"RequestAddressType": "com.docker.network.gateway"}, holder="docker")
    h.c.create_network(nid, [IPData(pool=pool, gateway=gw, address_space="LocalDefault")],
                       driver="overlay", options={OPT_CLUSTER_NETWORK: name})
    return pid


def _restarted(h: Host) -> Controller:
    """The same host's daemon started again: its state dir (local store), its kernel, the
    cluster; restore() runs as at daemon start."""
    store = h.c.store
    c = Controller(store, Ipam(store, host_routes=lambda: []),
                   build_drivers(h.nl, FakeSysctl(), instance="t", cluster=h.cluster))
    c.restore()
    return c


def test_an_address_taken_for_docker_but_never_recorded_is_reclaimed_at_restart(two_hosts):
    a, b, _ = two_hosts
    pid = _docker_network(a, "1" * 64)
    kept = [a.c.request_address(pid, "", {}, holder="docker") for _ in range(2)]
    # the daemon dies between the block allocation and the local record: the cluster holds
    # an address no local record explains
    leaked = a.drv.pool_address(a.c, pid)
    assert leaked == "10.77.0.4"
    # another host's handle of the same network (its own dockerd's) is not ours to reclaim
    pid_b = _docker_network(b, "2" * 64)
    theirs = b.c.request_address(pid_b, "", {}, holder="docker")
    c2 = _restarted(a)
    held = sorted(h["cidr"] for h in c2.driver("overlay")._blocks().handles(POOL).values())
    assert held == sorted(kept + [theirs]), held
    assert c2.driver("overlay")._blocks().verify(POOL) == []
    # the address is free again, cluster-wide
    assert c2.request_address(pid, "", {}, holder="docker") == "10.77.0.4/24"
    # a second restart reclaims nothing that is recorded
    c3 = _restarted(a)
    assert len(c3.driver("overlay")._blocks().handles(POOL)) == 4


def _start(h: Host):
    """The host's agent, programmed as ``pynet daemon`` does (pynet.root.start_cluster_agent)."""
    from pynet.cluster.agent import Agent

    h.agent = Agent(h.cluster, lambda view, dirty: h.drv.agent_pass(h.c.networks(), view, dirty),
                    reconcile_interval=0.3).start()
    return h.agent


def test_a_host_whose_state_dir_was_wiped_has_its_old_records_collected(two_hosts):
    """Host B (ID hb) has a container on the overlay and dies; it is reinstalled with an empty
    state dir, so it comes back as a new host (ID hb2) at the same VTEP address.  hb will never
    return: once its lease is gone, hb2's agent collects hb's endpoint, membership and
    addresses -- and nothing of host A's."""
    from tests.support.overlay import wait_until as wait

    a, b, cstore = two_hosts
    pid_a = _docker_network(a, "1" * 64)
    ip_a = a.c.request_address(pid_a, "", {}, holder="docker")
    ea = a.c.create_endpoint("1" * 64, "e1" * 32, address=ip_a)
    pid_b = _docker_network(b, "2" * 64)
    ip_b = b.c.request_address(pid_b, "", {}, holder="docker")
    b.c.create_endpoint("2" * 64, "e2" * 32, address=ip_b)
    _start(a), _start(b)
    root = a.cluster.root
    wait(lambda: any("/vteps/" in r.key for r in cstore.list(root + "vteps/dock/hb")), "hb's VTEP")
    b.agent.stop(revoke=True)           # host B dies (its lease gone); its state dir is wiped
    b.agent = None
    wiped = Host("hb2", "127.0.0.3", cstore)
    try:
        _start(wiped)

        def hb_left():
            keys = [r.key for r in cstore.list(root)]
            handles = wiped.drv._blocks().handles(POOL)
            return [k for k in keys if k.endswith("/hb") or "/endpoints/" in k and
                    cstore.get(k).value.get("host") == "hb"] + \
                   [h for h, v in handles.items() if v["host"] == "hb"]
        wait(lambda: hb_left() == [], "hb's records collected")
    finally:
        wiped.agent.stop()
    # A's endpoint, membership and address are untouched; the cluster network stays (A uses it)
    assert cstore.get(a.cluster.key("endpoints", "dock", ea.id)) is not None
    assert cstore.get(a.cluster.key("members", "dock", "ha")) is not None
    assert cstore.get(a.cluster.key("networks", "dock")) is not None
    assert sorted(h["cidr"] for h in a.drv._blocks().handles(POOL).values()) == [ip_a]
    assert [b_["host"] for b_ in a.drv._blocks().blocks(POOL)] == ["ha"]   # hb's empty block freed
    assert a.drv._blocks().verify(POOL) == []


# ----------------------------------------------------------------------------------------------
# On real components: two hosts (network namespaces on an underlay switch), each its own pynet
# and agent, a real two-member etcd on the underlay; pods through the installed pynet-overlay
# binary, networks the CLI's way (HostService.create_network), the CLI itself in host 1.

NET = "ovl-c"
SUBNET = "10.71.0.0/24"


def _conflist(lab, i: int, subnet: str = SUBNET, cluster: bool = True, **pynet) -> dict:
    return {"cniVersion": "1.0.0", "plugin": {
        "type": "pynet-overlay", "isGateway": True, "ipMasq": True,
        "ipam": {"type": "pynet-ipam", "ranges": [[{"subnet": subnet}]]}, "capabilities": {"ips": True},
        "pynet": {**(lab.conflist_pynet(i) if cluster else {}), **pynet}}}


def _cli(lab, i: int, *argv: str) -> str:
    import os
    import subprocess
    import sys

    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    p = subprocess.run(["nsenter", f"--net={lab.namespaces_path(f'h{i + 1}')}", sys.executable, "-m", "pynet",
                        *argv, "--state-dir", os.path.join(lab.base_dir, f"state-h{i + 1}")],
                       cwd=repo, capture_output=True, text=True, timeout=60,
                       env={k: v for k, v in os.environ.items() if not k.startswith("PYNET_")})
    assert p.returncode == 0, p.stderr
    return p.stdout


def _nothing_more(h, before: dict, keys_before: list, what: str) -> None:
    after = h.call("local_state")
    assert after == before, f"{what}: {before} -> {after}"
    assert h.call("cluster_keys") == keys_before, what


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    import os

    if os.geteuid() != 0:
        pytest.skip("needs root (namespaces)")
    from tests.support.overlay import installed_lab

    with installed_lab(str(tmp_path_factory.mktemp("ovclean")), joined=(0, 1), hosts=2) as lab:
        yield lab


@pytest.mark.netns
def test_bad_input_on_real_hosts_is_one_line_and_changes_nothing_anywhere(lab):
    """Refusals through the CNI binary and the CLI's create, against a real etcd: each one
    readable line naming the network, and neither host's state dir, kernel nor the cluster's
    keys change."""
    from pynet.scenario.worker import WorkerError

    h1, h2 = lab.hosts
    made = h1.call("try_create_network", name=NET, driver="overlay", subnet=SUBNET)
    assert "error" not in made, made
    vni = h1.call("overlay", network=NET)["vni"]
    keys = h1.call("cluster_keys")
    before = h2.call("local_state")
    refusals = [
        # a subnet overlapping another cluster-wide network (host 2 has no network of its own)
        (dict(name="ovl-x", subnet="10.71.0.0/16"), "subnet 10.71.0.0/16 overlaps subnet 10.71.0.0/24 of "
                                                    f"cluster network {NET}"),
        # a VNI already taken
        (dict(name="ovl-y", subnet="10.73.0.0/24", options={"pynet.overlay.vni": str(vni)}),
         f"VNI {vni} is already taken by cluster network {NET}"),
        # the same network with other settings: the differences, in one line
        (dict(name=NET, subnet="10.72.0.0/24", options={"pynet.overlay.vxlan_port": "4790"}),
         f"overlay network {NET} exists in the cluster with other settings: port 4789 (here: 4790), "
         "subnets ['10.71.0.0/24'] (here: ['10.72.0.0/24'])"),
    ]
    for kw, text in refusals:
        got = h2.call("try_create_network", driver="overlay", **kw)
        assert text in got.get("msg", ""), got
        assert "\n" not in got["msg"]
        _nothing_more(h2, before, keys, kw["name"])
    # the CNI front end: the conflicting settings, no cluster store, an advertise address that
    # is not this host's -- CNI errors naming the network by its name
    pod = lab.pod("x2")
    cases = [(_conflist(lab, 1, subnet="10.72.0.0/24"), f"overlay network {NET} exists in the cluster "
                                                        "with other settings: subnets"),
             (_conflist(lab, 1, cluster=False), f"overlay network {NET} needs a cluster store"),
             (_conflist(lab, 1, advertiseAddress="198.18.77.99"),
              "advertise address 198.18.77.99 is not an address of this host")]
    for conf, text in cases:
        with pytest.raises(WorkerError) as e:
            h2.call("cni_add", name="podx", netns_path=pod, network=NET, cni=conf, ifname="eth0")
        assert text in str(e.value) and "\n" not in str(e.value), str(e.value)
        assert h2.call("local_state")["kernel"] == before["kernel"]
        assert h1.call("cluster_keys") == keys
    assert h2.call("cni_del_all") == []        # the runtime's DEL of the failed ADDs: nothing to do
    _nothing_more(h2, before, keys, "after the CNI refusals")
    # pynet network rm on the only host: the cluster network and its VNI go with it
    h1.call("remove_network", name=NET)
    assert [k for k in h1.call("cluster_keys") if "/hosts/" not in k] == []
    assert h1.call("local_state") == {"keys": ["pynet/meta"], "kernel": []}


@pytest.mark.netns
def test_a_daemon_whose_advertise_address_is_not_local_refuses_to_start(lab):
    """``pynet daemon --cluster-store ... --advertise-address`` of an address host 2 does not
    have: one line, exit 1, and the cluster never hears of it (no host record, nothing else)."""
    import os
    import subprocess
    import sys

    keys = lab.hosts[0].call("cluster_keys")
    d = os.path.join(lab.base_dir, "foreign")
    os.makedirs(d, exist_ok=True)
    p = subprocess.run(
        ["nsenter", f"--net={lab.namespaces_path('h2')}", sys.executable, "-m", "pynet", "daemon",
         "--state-dir", os.path.join(d, "state"), "--plugin-name", f"{lab.prefix}-fx",
         "--chain-prefix", f"{lab.prefix.upper()}FX", "--socket", os.path.join(d, "daemon.sock"),
         "--metrics-socket", os.path.join(d, "metrics.sock"), "--cluster-store", lab.url,
         "--advertise-address", "198.18.77.99"],
        cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
        capture_output=True, text=True, timeout=120, env={**os.environ, "PYNET_FIREWALL_RECHECK": "0"})
    err = [line for line in p.stderr.splitlines() if "error" in line]
    assert p.returncode == 1 and len(err) == 1, p.stderr[-2000:]
    assert "advertise address 198.18.77.99 is not an address of this host" in err[0]
    assert lab.hosts[0].call("cluster_keys") == keys
    rules = subprocess.run(["nsenter", f"--net={lab.namespaces_path('h2')}", "iptables-save"],
                           capture_output=True, text=True, timeout=30).stdout
    assert f"{lab.prefix.upper()}FX" not in rules          # refused before the firewall was built


@pytest.mark.netns
@pytest.mark.skipif(not __import__("os").path.exists("/usr/sbin/dockerd"), reason="docker.io not installed")
def test_bad_input_through_a_real_dockerd_is_its_err_and_changes_nothing(lab):
    """The Docker front end: a private dockerd in host 2's namespace with its own pynet daemon
    (tests/overlay/test_overlay_docker.py's DockerHost).  ``docker network create`` of an
    overlapping subnet, a taken VNI, or the cluster network with other settings fails with
    pynet's one line, and neither dockerd, that pynet's state dir, the namespace's links nor
    the cluster's keys change."""
    from pynet.store.sqlite import SqliteStore
    from tests.overlay.test_overlay_docker import DockerHost

    h1, h2 = lab.hosts
    made = h1.call("try_create_network", name="ovl-d", driver="overlay", subnet="10.74.0.0/24")
    assert "error" not in made, made
    vni = h1.call("overlay", network="ovl-d")["vni"]
    d = DockerHost(lab, 2)
    try:
        d.start()

        def docker_state():
            store = SqliteStore.in_state_dir(f"{d.dir}/pynet")
            try:
                keys = [r.key for r in store.list("")]
            finally:
                store.close()
            return (d.docker("network", "ls", "-q", "--filter", f"driver={d.name}").stdout.split(), keys,
                    h2.call("local_state")["kernel"], h1.call("cluster_keys"))
        before = docker_state()
        base = ["network", "create", "-d", d.name, "--ipam-driver", d.name, "-o", "pynet.driver=overlay"]
        cases = [
            (["-o", "pynet.overlay.network=ovl-e", "--subnet", "10.74.0.0/16", "ovl-e"],
             "subnet 10.74.0.0/16 overlaps subnet 10.74.0.0/24 of cluster network ovl-d"),
            (["-o", "pynet.overlay.network=ovl-f", "-o", f"pynet.overlay.vni={vni}", "--subnet", "10.76.0.0/24",
              "ovl-f"], f"VNI {vni} is already taken by cluster network ovl-d"),
            (["-o", "pynet.overlay.network=ovl-d", "--subnet", "10.75.0.0/24", "ovl-d"],
             "overlay network ovl-d exists in the cluster with other settings: subnets ['10.74.0.0/24'] "
             "(here: ['10.75.0.0/24'])"),
        ]
        for args, text in cases:
            p = d.docker(*base, *args, check=False)
            assert p.returncode != 0 and text in p.stderr, p.stderr
            assert p.stderr.strip().count("\n") == 0, p.stderr
            assert docker_state() == before, args
    finally:
        d.stop()
        h1.call("remove_network", name="ovl-d")
    assert [k for k in h1.call("cluster_keys") if "/hosts/" not in k] == []


@pytest.mark.netns
def test_rm_removes_this_hosts_part_and_the_last_host_frees_the_network(lab):
    """Build 6 and "Cleanup": the network on two hosts with a pod each; host 1 removes its part
    (its devices and records go, host 2 drops host 1's entries, the cluster network stays for
    host 2); host 2 removes its own: then no VXLAN device, bridge, FDB or neighbour entry, rule,
    etcd key or local record of pynet's is left.  ``pynet network inspect`` shows the VNI, the
    hosts and the remote endpoints on the way; ``pynet network ls`` the scope."""
    import json

    from tests.support.icmp import icmp_ping
    from tests.support.overlay import wait_until as wait

    h1, h2 = lab.hosts
    before = {i: h.call("local_state") for i, h in enumerate(lab.hosts)}
    pods = {i: lab.pod(f"c{i}") for i in (1, 2)}
    res = {i: lab.hosts[i - 1].call("cni_add", name=f"podc{i}", netns_path=pods[i], network=NET,
                                    cni=_conflist(lab, i - 1), ifname="eth0") for i in (1, 2)}
    ips = {i: res[i]["address"].split("/")[0] for i in (1, 2)}
    ov1 = lambda: h1.call("overlay", network=NET)     # noqa: E731
    ov2 = lambda: h2.call("overlay", network=NET)     # noqa: E731
    wait(lambda: (res[1]["mac"], "198.18.77.11") in ov2()["fdb"], "pod1 on host 2")
    wait(lambda: (res[2]["mac"], "198.18.77.12") in ov1()["fdb"], "pod2 on host 1")
    wait(lambda: icmp_ping(pods[1], ips[2]), "pod1 -> pod2", bound=20)

    # the CLI on host 1: the scope, the VNI, both hosts, host 2's pod as the remote endpoint
    rows = json.loads(_cli(lab, 0, "network", "ls", "--json", "--no-docker"))
    assert [r["scope"] for r in rows if r["name"] == NET] == ["global"]
    assert "SCOPE" in _cli(lab, 0, "network", "ls", "--no-docker").splitlines()[0]
    out = json.loads(_cli(lab, 0, "network", "inspect", NET, "--cluster-store", lab.url,
                          "--advertise-address", "198.18.77.11"))
    o = out["overlay"]
    assert out["scope"] == "global" and o["vni"] == ov1()["vni"] and o["cluster_network"] == NET
    assert sorted((x["address"], x["alive"], x["member"], x["self"], x["endpoints"]) for x in o["hosts"]) == \
        [("198.18.77.11", True, True, True, 1), ("198.18.77.12", True, True, False, 1)]
    assert [(e["ip"], e["mac"]) for e in o["remote_endpoints"]] == [(ips[2], res[2]["mac"])]

    # host 1 removes its part (its pod's DEL, then the network): host 2 keeps the network
    assert h1.call("cni_del_all") == []
    assert h1.call("local_state") == before[0]
    wait(lambda: not any(dst == "198.18.77.11" for _, dst in ov2()["fdb"]), "host 1 gone from host 2's FDB")
    assert all(ip != ips[1] for ip, _ in ov2()["neigh"])
    keys = h2.call("cluster_keys")
    assert any(k.endswith(f"/networks/{NET}") for k in keys) and any(f"/vni/{ov2()['vni']}" in k for k in keys)
    me1 = h1.call("join_cluster")["host"]        # (already joined: its host ID)
    assert not any(k.endswith(f"/members/{NET}/{me1}") for k in keys)
    wait(lambda: icmp_ping(pods[2], "10.71.0.1"), "pod2 still on its network", bound=10)

    # host 2 removes its own: the cluster network, its VNI, endpoints and address blocks go
    assert h2.call("cni_del_all") == []
    assert h2.call("local_state") == before[1]
    wait(lambda: [k for k in h1.call("cluster_keys") if "/hosts/" not in k] == [],
         "no cluster key but the hosts' own")
    for h in lab.hosts:     # no record (the store's layout marker aside), link or rule
        assert h.call("local_state") == {"keys": ["pynet/meta"], "kernel": []}
