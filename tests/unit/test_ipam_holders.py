"""Holders of pools and addresses (Docker, a network, a CNI attachment,
pynet-ipam), and the defects they close: reconcile and ReleasePool never
free what a CNI pod holds on a Docker-made network (issue 9, defects 2 and
3); host ports are reserved in the endpoint's own store transaction (6);
pynet-ipam ADD is one transaction, validated first (7).

Docker's side is dockerd's real request bodies through the Flask app; the CNI
side is dispatch.run() as the binaries call it; the kernel is the fake."""
from __future__ import annotations

import contextlib
import json
import threading

import pytest

from tests.support.fakes import FakeFirewall

from pynet import errors  # noqa: E402
from pynet.cni import dispatch  # noqa: E402
from pynet.cnm.controller import Controller  # noqa: E402
from pynet.cnm.model import PortMapping  # noqa: E402
from pynet.drivers.bridge import BridgeDriver  # noqa: E402
from pynet.ipam import GATEWAY_TYPE, Ipam  # noqa: E402
from pynet.netlink.fake import FakeKernel, FakeNetlink  # noqa: E402
from pynet.plugin_api import docker_state  # noqa: E402
from pynet.plugin_api.app import create_app  # noqa: E402
from pynet.store.memory import MemoryStore  # noqa: E402
from pynet.store.sqlite import SqliteStore  # noqa: E402
from pynet.sysctl import FakeSysctl  # noqa: E402

ACCEPT = "application/vnd.docker.plugins.v1.2+json"
NID = "d" * 64
E1 = "1" * 64
SUBNET = "10.30.0.0/24"
GW = {"RequestAddressType": GATEWAY_TYPE}


class World:
    """One pynet daemon's controller, dockerd talking to it, CNI binaries beside it."""

    def __init__(self, tmp_path, store=None):
        self.kernel = FakeKernel()
        self.nl = FakeNetlink(self.kernel)
        self.store = store or MemoryStore()
        self.c = Controller(self.store, Ipam(self.store, host_routes=lambda: []),
                            {"bridge": BridgeDriver(self.nl, FakeSysctl(), instance="t")},
                            firewall=FakeFirewall())
        self.client = create_app(self.c).test_client()
        self.tmp = tmp_path

    # dockerd
    def docker(self, method, body):
        r = self.client.post(f"/{method}", data=json.dumps(body).encode(), headers={"Accept": ACCEPT},
                             content_type=None)
        return r.status_code, json.loads(r.get_data())

    def docker_ok(self, method, body):
        status, answer = self.docker(method, body)
        assert status == 200, (method, answer)
        return answer

    def docker_network_create(self, name="dnet", subnet=SUBNET, nid=NID):
        """`docker network create -d pynet --ipam-driver pynet --subnet ... name`, as dockerd calls it."""
        pool = self.docker_ok("IpamDriver.RequestPool", {"AddressSpace": "LocalDefault", "Pool": subnet,
                                                         "SubPool": "", "Options": {}, "V6": False})
        gw = self.docker_ok("IpamDriver.RequestAddress", {"PoolID": pool["PoolID"], "Address": "",
                                                          "Options": GW})["Address"]
        self.docker_ok("NetworkDriver.CreateNetwork", {
            "NetworkID": nid, "IPv4Data": [{"AddressSpace": "LocalDefault", "Gateway": gw, "Pool": subnet}],
            "IPv6Data": [], "Options": {"com.docker.network.enable_ipv6": False,
                                        "com.docker.network.generic": {}}})
        # what plugin.find_network does on a CNI ADD naming it (it asks dockerd for the name)
        self.c.store.update(f"networks/{nid}", lambda v: dict(v, name=name))
        return pool["PoolID"], gw

    def docker_run(self, pool_id, eid=E1, nid=NID):
        """The IPAM and driver half of `docker run --network dnet`."""
        addr = self.docker_ok("IpamDriver.RequestAddress", {"PoolID": pool_id, "Address": "", "Options": {}})
        self.docker_ok("NetworkDriver.CreateEndpoint", {"NetworkID": nid, "EndpointID": eid,
                                                        "Interface": {"Address": addr["Address"]},
                                                        "Options": {}})
        return addr["Address"].split("/")[0]

    def docker_network_rm(self, pool_id, gw, nid=NID):
        """`docker network rm`: dockerd goes on when the driver refuses (it
        honours only a Forbidden error) and releases the gateway and the pool."""
        status, _ = self.docker("NetworkDriver.DeleteNetwork", {"NetworkID": nid})
        self.docker_ok("IpamDriver.ReleaseAddress", {"PoolID": pool_id, "Address": gw.split("/")[0]})
        self.docker_ok("IpamDriver.ReleasePool", {"PoolID": pool_id})
        return status

    # CNI
    def netns(self, name):
        path = str(self.tmp / name)
        if path not in self.kernel.namespaces:
            open(path, "w").close()
            self.kernel.add_netns(path)
        return path

    def conflist(self, name="dnet", subnet=SUBNET, **kw):
        c = {"cniVersion": "1.0.0", "name": name, "type": "pynet-bridge", "isGateway": True,
             "ipam": {"type": "pynet-ipam", "ranges": [[{"subnet": subnet}]]},
             "pynet": {"stateDir": str(self.tmp / "state")}}
        c.update(kw)
        return c

    def cni(self, command, conf, cid, netns="", ifname="eth0", plugin_name="bridge"):
        env = {"CNI_COMMAND": command, "CNI_CONTAINERID": cid, "CNI_IFNAME": ifname, "CNI_NETNS": netns}
        out, code = dispatch.run(plugin_name, env, json.dumps(conf).encode(), controller=self.c,
                               netlink=self.nl, instance="t")
        return code, (json.loads(out) if out.strip() else None)

    def pod(self, cid, conf=None):
        code, res = self.cni("ADD", conf or self.conflist(), cid, self.netns(cid))
        assert code == 0, res
        return res["ips"][0]["address"].split("/")[0]


@pytest.fixture
def w(tmp_path):
    return World(tmp_path)


def allocated(w, pool_id):
    return set(w.c.ipam.allocated(pool_id))


# ------------------------------------------------------------- defect 2
def test_restart_reconcile_keeps_a_cni_pods_address_on_a_docker_network(w, monkeypatch):
    """Regression (issue 9, defect 2): reconcile_with_docker at daemon start
    released every address of a Docker-made network Docker did not list, the
    CNI pod's included, so dockerd's next container got the pod's address."""
    pid, gw = w.docker_network_create()
    ctr = w.docker_run(pid)
    pod = w.pod("pod1")
    # what dockerd lists after the restart: its container, the network's pool (no automatic gateway)
    monkeypatch.setattr(docker_state, "docker_holdings", lambda name, sock=None: {
        "networks": {NID: {E1}}, "pools": [(SUBNET, "", {ctr})]})
    done = docker_state.reconcile_with_docker(w.c, "pynet")
    assert done["addresses"] == []
    assert {gw.split("/")[0], ctr, pod} <= allocated(w, pid)
    status, answer = w.docker("IpamDriver.RequestAddress", {"PoolID": pid, "Address": pod, "Options": {}})
    assert status == 409, answer              # the pod's address is not handed out again
    assert w.c.ipam.verify(pid) == []


def test_reconcile_still_releases_what_docker_asked_for_and_no_longer_holds(w, monkeypatch):
    pid, gw = w.docker_network_create()
    kept = w.docker_run(pid)
    lost = w.docker_ok("IpamDriver.RequestAddress", {"PoolID": pid, "Address": "", "Options": {}})
    lost = lost["Address"].split("/")[0]      # answered, but dockerd never used it (pynet killed)
    pod = w.pod("pod1")
    monkeypatch.setattr(docker_state, "docker_holdings", lambda name, sock=None: {
        "networks": {NID: {E1}}, "pools": [(SUBNET, "", {kept})]})
    done = docker_state.reconcile_with_docker(w.c, "pynet")
    assert done["addresses"] == [lost]
    assert allocated(w, pid) == {gw.split("/")[0], kept, pod}


# ------------------------------------------------------------- defect 3
def test_docker_network_rm_with_a_cni_pod_keeps_pool_network_and_pod(w, monkeypatch):
    """Regression (issue 9, defect 3): DeleteNetwork is refused, dockerd
    releases the pool anyway, and pynet freed it with the pod's address in it;
    at the next start the kept network was force-deleted, pod veth included."""
    pid, gw = w.docker_network_create()
    pod = w.pod("pod1")
    veths = {l.name for l in w.nl.list_links() if l.kind == "veth"}
    assert w.docker_network_rm(pid, gw) != 200          # refused: a pod is attached
    # the pool stays reserved: the pod's address and the bridge's gateway with it
    assert {gw.split("/")[0], pod} <= allocated(w, pid)
    status, answer = w.docker("IpamDriver.RequestPool", {"AddressSpace": "LocalDefault", "Pool": SUBNET,
                                                         "SubPool": "", "Options": {}, "V6": False})
    assert status != 200 and "overlaps" in answer["Err"], answer
    # the next daemon start: dockerd lists nothing of it any more
    monkeypatch.setattr(docker_state, "docker_holdings", lambda name, sock=None: {"networks": {}, "pools": []})
    docker_state.reconcile_with_docker(w.c, "pynet")
    assert [n.id for n in w.c.networks()] == [NID]
    assert len(w.c.endpoints(NID)) == 1
    assert veths <= {l.name for l in w.nl.list_links() if l.kind == "veth"}
    assert {gw.split("/")[0], pod} <= allocated(w, pid)
    # a second pod may still join (the conflist names the network) ...
    pod2 = w.pod("pod2")
    assert pod2 not in (pod, gw.split("/")[0])
    # ... and with the last one the network and its pool go
    assert w.cni("DEL", w.conflist(), "pod1", w.netns("pod1"))[0] == 0
    assert [n.id for n in w.c.networks()] == [NID]
    assert w.cni("DEL", w.conflist(), "pod2", w.netns("pod2"))[0] == 0
    assert w.c.networks() == []
    assert w.c.ipam.list_pools() == []
    assert w.store.list("ipam/") == []
    w.docker_network_create(nid="e" * 64)                # the subnet can be pooled again


def test_docker_network_rm_without_pods_frees_everything(w):
    pid, gw = w.docker_network_create()
    assert w.docker_network_rm(pid, gw) == 200
    assert w.c.networks() == [] and w.c.ipam.list_pools() == []
    assert w.store.list("ipam/") == []


def test_pynet_ipam_attachment_on_a_docker_network_outlives_release_pool(w):
    """A pynet-ipam attachment (the reference bridge on the Docker network's
    name) is no pynet endpoint: DeleteNetwork succeeds, but ReleasePool keeps
    the pool until its DEL."""
    pid, gw = w.docker_network_create()
    conf = dict(w.conflist(), type="bridge")
    code, res = w.cni("ADD", conf, "ref1", netns="/x", plugin_name="ipam")
    assert code == 0, res
    addr = res["ips"][0]["address"].split("/")[0]
    assert w.docker_network_rm(pid, gw) == 200
    assert allocated(w, pid) == {addr}
    assert w.cni("DEL", conf, "ref1", netns="/x", plugin_name="ipam")[0] == 0
    assert w.c.ipam.list_pools() == [] and w.store.list("ipam/") == []


def test_restore_records_the_holds_of_a_store_of_before_holders(w, monkeypatch):
    """A store written before holders existed: the start (restore) records
    what the networks, CNI endpoints and programmed ports hold, so the
    reconcile after it keeps the pod's address and Docker's ReleasePool keeps
    the pool."""
    pid, gw = w.docker_network_create()
    ctr = w.docker_run(pid)
    pod = w.pod("pod1", w.conflist(runtimeConfig={"portMappings": [
        {"hostPort": 18080, "containerPort": 80, "protocol": "tcp"}]}))
    for prefix in ("ipam/holders/", "ipam/pool-holders/", "ports/"):
        w.store.delete_prefix(prefix)
    w.c.restore()
    assert [r.key for r in w.store.list("ports/")] == ["ports/tcp/18080/*"]
    monkeypatch.setattr(docker_state, "docker_holdings", lambda name, sock=None: {
        "networks": {NID: {E1}}, "pools": [(SUBNET, "", {ctr})]})
    docker_state.reconcile_with_docker(w.c, "pynet")
    assert {gw.split("/")[0], ctr, pod} <= allocated(w, pid)
    w.docker_ok("NetworkDriver.DeleteEndpoint", {"NetworkID": NID, "EndpointID": E1})
    w.docker_ok("IpamDriver.ReleaseAddress", {"PoolID": pid, "Address": ctr})
    w.docker_network_rm(pid, gw)
    assert {gw.split("/")[0], pod} <= allocated(w, pid)


# ------------------------------------------------------------ IPAM holders
def test_an_address_is_freed_by_its_last_holder(w):
    ipam = w.c.ipam
    pid, _, _ = ipam.request_pool("LocalDefault", "10.40.0.0/24", holder="docker")
    gw = ipam.request_address(pid, "", GW, holder="docker").split("/")[0]
    assert ipam.hold_address(pid, gw, "network/x")
    ipam.release_address(pid, gw, "docker")
    assert allocated(w, pid) == {gw}
    ipam.release_address(pid, gw, "someone-else")          # not a holder: nothing happens
    assert allocated(w, pid) == {gw}
    ipam.release_address(pid, gw, "network/x")
    assert allocated(w, pid) == set()
    assert ipam.release_pool(pid, "docker") is True
    assert w.store.list("ipam/") == []


def test_reconcile_holder_touches_only_that_holders_addresses(w):
    ipam = w.c.ipam
    pid, _, _ = ipam.request_pool("LocalDefault", "10.41.0.0/24", holder="docker")
    gw = ipam.request_address(pid, "", GW, holder="docker").split("/")[0]
    mine = ipam.request_address(pid, holder="docker").split("/")[0]
    pods = ipam.request_address(pid, holder="endpoint/n/e").split("/")[0]
    legacy = ipam.request_address(pid).split("/")[0]        # no holder record: unknown, kept
    assert ipam.reconcile_holder(pid, "docker", set()) == [mine]
    assert allocated(w, pid) == {gw, pods, legacy}
    assert ipam.verify(pid) == []


# ------------------------------------------------------------- defect 6
def test_host_ports_are_reserved_with_the_endpoint_record(w):
    pid, gw = w.docker_network_create()
    w.docker_run(pid)
    pm = {"Proto": 6, "Port": 80, "HostIP": "", "HostPort": 8080, "HostPortEnd": 8080}
    w.docker_ok("NetworkDriver.ProgramExternalConnectivity", {
        "NetworkID": NID, "EndpointID": E1, "Options": {"com.docker.network.portmap": [pm]}})
    assert [r.key for r in w.store.list("ports/")] == ["ports/tcp/8080/*"]
    w.docker_ok("NetworkDriver.RevokeExternalConnectivity", {"NetworkID": NID, "EndpointID": E1})
    assert w.store.list("ports/") == []
    w.docker_ok("NetworkDriver.ProgramExternalConnectivity", {
        "NetworkID": NID, "EndpointID": E1, "Options": {"com.docker.network.portmap": [pm]}})
    w.docker_ok("NetworkDriver.DeleteEndpoint", {"NetworkID": NID, "EndpointID": E1})
    assert w.store.list("ports/") == []


def test_two_processes_cannot_both_store_one_host_port(tmp_path):
    """Regression (issue 9, defect 6's root cause): the Docker path chose a
    host port from the endpoints it read and stored it later, without any
    cross-process lock, so a CNI process storing the same port in between made
    two programmed endpoints on one host port.  Here a second controller on
    the same store file (another process) programs the port right after the
    first one chose it."""
    db = str(tmp_path / "pynet.db")
    other = World(tmp_path, SqliteStore(db))                  # e.g. a CNI binary
    other_err = []

    def other_process_programs_8080():
        try:
            other.c.program_external_connectivity(NID, "2" * 64, [PortMapping("tcp", 80, 8080)])
        except errors.PortInUse as e:
            other_err.append(e)

    def choose_then_let_the_other_process_run(pm, taken):
        port = 8080 if 8080 not in taken else None
        t = threading.Thread(target=other_process_programs_8080)
        t.start()
        t.join(timeout=1.0)       # with the fix it waits on the store's write lock until we commit
        threads.append(t)
        if port is None:
            raise errors.PortInUse("host port 8080/tcp is already allocated")
        return port

    threads: list[threading.Thread] = []
    w = World(tmp_path, SqliteStore(db))
    pid, _ = w.docker_network_create()
    w.docker_run(pid, eid=E1)
    w.docker_run(pid, eid="2" * 64)
    w.c.port_allocator = choose_then_let_the_other_process_run
    with contextlib.suppress(errors.PortInUse):
        w.c.program_external_connectivity(NID, E1, [PortMapping("tcp", 80, 8080)])
    for t in threads:
        t.join()
    owners = [e.id for e in w.c.endpoints() if e.external and any(p.host_port == 8080 for p in e.ports)]
    assert len(owners) == 1, owners
    assert len(SqliteStore(db).list("ports/tcp/8080/")) == 1


# ------------------------------------------------------------- defect 7
class Killed(BaseException):
    """The process is SIGKILLed."""


class DyingStore:
    """A store whose process dies at the first write of ``fatal``: that write
    and every later call fail, and what was not committed is lost (rolled
    back), as SQLite does when a killed process's connection goes away."""

    def __init__(self, inner, fatal: str):
        self.inner, self.fatal, self.dead = inner, fatal, False

    def _alive(self):
        if self.dead:
            raise Killed()

    def get(self, key):
        self._alive()
        return self.inner.get(key)

    def list(self, prefix):
        self._alive()
        return self.inner.list(prefix)

    def put(self, key, value, version=None):
        self._alive()
        if key.startswith(self.fatal):
            self.dead = True
            raise Killed()
        return self.inner.put(key, value, version)

    def delete(self, key, version=None):
        self._alive()
        return self.inner.delete(key, version)

    def delete_prefix(self, prefix):
        self._alive()
        return self.inner.delete_prefix(prefix)

    def update(self, key, fn):
        with self.transaction():
            cur = self.get(key)
            new = fn(cur.value if cur else None)
            self.put(key, new)
            return new

    @contextlib.contextmanager
    def transaction(self):
        self._alive()
        with self.inner.transaction():
            yield self

    def txn(self, fn, retries=10):
        """Store v2: the fatal write dies inside ``fn`` (before the commit), so the
        whole transaction is lost."""
        self._alive()
        dying = self

        class T:
            def __init__(self, t):
                self._t = t

            def __getattr__(self, attr):
                return getattr(self._t, attr)

            def put(self, key, value, lease=0):
                if key.startswith(dying.fatal):
                    dying.dead = True
                    raise Killed()
                return self._t.put(key, value, lease)

        return self.inner.txn(lambda t: fn(T(t)), retries)

    def close(self):
        pass


def ipam_conf(tmp_path, **ipam):
    section = {"type": "pynet-ipam", "ranges": [[{"subnet": "10.50.0.0/24"}]]}
    section.update(ipam)
    return {"cniVersion": "1.0.0", "name": "refnet", "type": "bridge", "ipam": section,
            "pynet": {"stateDir": str(tmp_path / "state")}}


def run_ipam(c, command, conf, cid):
    env = {"CNI_COMMAND": command, "CNI_CONTAINERID": cid, "CNI_IFNAME": "eth0", "CNI_NETNS": "/x"}
    out, code = dispatch.run("ipam", env, json.dumps(conf).encode(), controller=c)
    return code, (json.loads(out) if out.strip() else None)


def leftover_allocations(store):
    """Addresses allocated other than a pool's gateway, and attachment records."""
    ipam = Ipam(store, host_routes=lambda: [])
    gateways = {v["gateway"] for r in store.list("cni/ipam-pools/") for v in r.value.values()}
    addrs = {a for p in ipam.list_pools() for a in ipam.allocated(p["id"])} - gateways
    return addrs, [r.key for r in store.list("cni/ipam/")]


@pytest.mark.parametrize("pools_exist", [False, True])
def test_pynet_ipam_add_killed_before_its_record_leaks_nothing(tmp_path, pools_exist):
    """Regression (issue 9, defect 7): the allocation and the attachment
    record were two commits; a SIGKILL between them left an address that no
    record names, so neither DEL nor GC ever released it."""
    inner = MemoryStore()
    if pools_exist:
        c0 = Controller(inner, Ipam(inner, host_routes=lambda: []), {})
        assert run_ipam(c0, "ADD", ipam_conf(tmp_path), "first")[0] == 0
        assert run_ipam(c0, "DEL", ipam_conf(tmp_path), "first")[0] == 0
    before = leftover_allocations(inner)
    store = DyingStore(inner, fatal="cni/ipam/")
    c = Controller(store, Ipam(store, host_routes=lambda: []), {})
    with pytest.raises(Killed):
        run_ipam(c, "ADD", ipam_conf(tmp_path), "victim")
    assert leftover_allocations(inner) == before == (set(), [])


def test_pynet_ipam_add_with_invalid_routes_keeps_no_allocation(tmp_path):
    """Regression (issue 9, defect 7): ipam.routes was validated after the
    commit, so a refused ADD kept its address."""
    store = MemoryStore()
    c = Controller(store, Ipam(store, host_routes=lambda: []), {})
    assert run_ipam(c, "ADD", ipam_conf(tmp_path), "ok")[0] == 0
    before = leftover_allocations(store)
    for bad in ([{"dst": "not-a-network"}], [{"gw": "10.50.0.1"}], "0.0.0.0/0"):
        code, res = run_ipam(c, "ADD", ipam_conf(tmp_path, routes=bad), "refused")
        assert code == 1 and res["code"] == 7, res
        assert leftover_allocations(store) == before
    fresh = MemoryStore()
    c2 = Controller(fresh, Ipam(fresh, host_routes=lambda: []), {})
    code, res = run_ipam(c2, "ADD", ipam_conf(tmp_path, routes=[{"dst": "x"}]), "refused")
    assert code == 1 and res["code"] == 7
    assert fresh.list("") == []               # not even the pools


def test_reconcile_never_releases_an_address_a_holder_record_names():
    """GC's reconcile lists what is in flight, then reconciles: an ADD that
    committed its address (with its holder record) in between must keep it."""
    ipam = Ipam(MemoryStore(), default_pools=[])
    pid, _, _ = ipam.request_pool("cni-space", "10.31.0.0/29")
    held = ipam.request_address(pid, holder="endpoint/n1/e1").split("/")[0]
    leaked = ipam.request_address(pid).split("/")[0]     # anonymous: no record
    assert ipam.reconcile(pid, set()) == [leaked]
    with pytest.raises(errors.AddressInUse):
        ipam.request_address(pid, held)
