"""Several "hosts" on one underlay, each with its own pynet, and an etcd cluster on the underlay.

    with OverlayLab(hosts=3, base_dir=tmp, cni_path=bin_dir) as lab:
        h1 = lab.hosts[0]                       # a WorkerHandle of OverlayHostService
        h1.call("join_cluster")                 # its agent: lease + control loop
        h1.call("cni_add", ...)                 # a pod, through the installed pynet-overlay binary

Topology (every name carries the run prefix ``po<hex>``; nothing is in the root namespace):

    <p>-ul      the underlay switch: bridge br0, one port per host
    <p>-h<i>    host i: eth0 = 198.18.<net>.1<i>/24, its pynet instance <p>-h<i> (own state
                dir, chain prefix), its etcd member on eth0 (client 2379, peer 2380)
    <p>-p*      pod namespaces (``lab.pod()``)

198.18.0.0/15 is the benchmarking range (never routed, never this machine's uplink's
192.0.2.0/24).  The etcd keys live under the run's namespace (``etcd://...:2379/<p>``), and the
whole etcd goes with the run.  ``close()`` runs even when a test failed: workers stopped (their
services tear their pynet down), etcd killed, namespaces deleted.
"""
from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import socket
import subprocess
import threading
import time
import urllib.request
from typing import Optional

from pynet.scenario.host import HostService
from pynet.sysctl import run_in_netns
from tests.support.etcd_cluster import EtcdCluster, Member

UNDERLAY_NET = "198.18.77"
PREFIX_LEN = 24


def wait_until(cond, what: str, bound: float = 30.0, step: float = 0.05):
    """Poll ``cond`` until it answers something true (returned); AssertionError
    naming ``what`` after ``bound`` s.  A bound on a wait, never a timing assertion."""
    deadline = time.monotonic() + bound
    last = None
    while time.monotonic() < deadline:
        last = cond()
        if last:
            return last
        time.sleep(step)
    raise AssertionError(f"not within {bound}s: {what} (last: {last!r})")


def host_address(i: int) -> str:
    return f"{UNDERLAY_NET}.{11 + i}"


# ------------------------------------------------------------------- etcd
class NetnsMember(Member):
    """A member listening on a host namespace's underlay address."""

    def __init__(self, name, address, netns, data_dir):
        super().__init__(name, 2379, 2380, data_dir)
        self.address, self.netns = address, netns

    @property
    def client_url(self) -> str:
        return f"http://{self.address}:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://{self.address}:{self.peer_port}"


class NetnsEtcdCluster(EtcdCluster):
    """tests.support.etcd_cluster's cluster, one member in each of the given
    host namespaces (entered with ``nsenter --net``), on the underlay."""

    def __init__(self, netns_paths: list[str], addresses: list[str], base_dir: str, name: str):
        super().__init__(len(netns_paths), base_dir, name)
        self._where = list(zip(netns_paths, addresses))

    def _new_members(self, attempt: int) -> list[Member]:
        # fixed ports: each member has its namespace and address to itself
        return [NetnsMember(f"{self.name}-{i}", addr, ns, os.path.join(self.base_dir, f"{self.name}-{attempt}-{i}"))
                for i, (ns, addr) in enumerate(self._where)]

    def _argv(self, m: Member, state: str) -> list[str]:
        return ["nsenter", f"--net={m.netns}", *super()._argv(m, state)]

    def _healthy(self, m: Member) -> bool:
        from pynet.sysctl import run_in_netns

        def probe():
            with urllib.request.urlopen(m.client_url + "/health", timeout=1.0) as r:
                return json.loads(r.read()).get("health") in ("true", True)
        try:
            return run_in_netns(m.netns, probe)
        except (OSError, ValueError):
            return False

    def url(self, namespace: str = "") -> str:
        hosts = ",".join(f"{m.address}:{m.client_port}" for m in self.members)
        return f"etcd://{hosts}" + (f"/{namespace}" if namespace else "")


# ------------------------------------------------------------- the host
class OverlayHostService(HostService):
    """A scenario host (pynet.scenario.host.HostService: its own pynet
    instance, the CNI binaries executed in its namespace) that is also a
    cluster member: its controller is built with the cluster settings, and
    ``join_cluster`` starts the host agent the daemon would run."""

    def __init__(self):
        super().__init__()
        self.agent = None
        self.cluster_cfg: dict = {}

    def init(self, instance: str, state_dir: str, cluster: Optional[dict] = None, **kw) -> dict:
        from pynet import root
        from pynet.config import Config

        self.cluster_cfg = dict(cluster or {})
        real = root.build_controller

        def build_controller(cfg, *a, **k):
            # the host's Config with its cluster settings (HostService builds one without)
            cfg = Config.from_env(plugin_name=cfg.plugin_name, state_dir=cfg.state_dir,
                                  chain_prefix=cfg.chain_prefix, socket_path=cfg.socket_path,
                                  **self.cluster_cfg)
            self.config = cfg
            return real(cfg, *a, **k)
        root.build_controller = build_controller
        try:
            return super().init(instance=instance, state_dir=state_dir, **kw)
        finally:
            root.build_controller = real

    # ---- the agent (what `pynet daemon` runs)
    def join_cluster(self, reconcile_interval: float = 2.0) -> dict:
        from pynet import root

        if self.agent is None:
            self.agent = root.start_cluster_agent(self.config, self.controller,
                                                  reconcile_interval=reconcile_interval)
        cl = self.agent.cluster
        return {"host": cl.host, "address": cl.address}

    def leave_cluster(self, revoke: bool = True) -> None:
        """``revoke=False``: the agent dies as a crashed daemon would; the
        lease expires one TTL later."""
        if self.agent is not None:
            self.agent.stop(revoke=revoke)
            self.agent = None

    def agent_state(self) -> dict:
        a = self.agent
        return {} if a is None else {"passes": a.passes, "error": a.error, "lease": a.cluster.lease}

    # ---- what the kernel holds
    def overlay(self, network: str) -> dict:
        net = self.controller.network(network)
        st = net.driver_state
        nl = self.nl
        return {"id": net.id, "vni": st["vni"], "vxlan": st["vxlan"], "bridge": st["bridge"],
                "mtu": st["mtu"], "fdb": nl.fdb_list(st["vxlan"]), "neigh": nl.neigh_list(st["vxlan"]),
                "info": nl.vxlan_info(st["vxlan"])}

    def cni_del_all(self) -> list[str]:
        """CNI DEL of every pod of this host (as the runtime does when they
        stop), then the CNI-made networks removed (``pynet network rm``'s way)."""
        problems: list[str] = []

        def step(what, fn, *a, **kw):
            try:
                fn(*a, **kw)
            except Exception as e:  # noqa: BLE001
                problems.append(f"{what}: {e}")
        self._cni_teardown(step)
        return problems

    # ---- measurements (benchmarks: endpoint on one host -> FDB entry on another)
    def create_endpoints_timed(self, network: str, count: int, first_ip: int = 100, gap: float = 0.02) -> dict:
        """``count`` endpoints on ``network`` (no sandbox), ``gap`` s apart:
        {mac: CLOCK_MONOTONIC before its create} (the clock is the machine's,
        so another host's process compares with it)."""
        import ipaddress as ipa
        net = self.controller.network(network)
        base = ipa.ip_network(net.ipv4[0].pool)
        out = {}
        for n in range(count):
            ip = base.network_address + first_ip + n
            t0 = time.monotonic()
            create = self.controller.create_endpoint
            if self.profiler is not None:
                ep = self.profiler.runcall(create, net.id, f"bench{n:04d}".ljust(64, "0"),
                                           address=f"{ip}/{base.prefixlen}")
            else:
                ep = create(net.id, f"bench{n:04d}".ljust(64, "0"), address=f"{ip}/{base.prefixlen}")
            out[ep.mac] = t0
            self.create_durations = getattr(self, "create_durations", []) + [time.monotonic() - t0]
            time.sleep(gap)
        return out

    def create_timings(self) -> list:
        return list(getattr(self, "create_durations", []))

    def delete_endpoints(self, network: str, prefix: str = "bench") -> int:
        net = self.controller.network(network)
        eps = [e for e in self.controller.endpoints(net.id) if e.id.startswith(prefix)]
        for e in eps:
            self.controller.delete_endpoint(net.id, e.id)
        return len(eps)

    def time_fdb(self) -> None:
        """From now on, note when the agent's driver programs each FDB entry
        (CLOCK_MONOTONIC after the kernel answered): measuring costs nothing
        on the path it measures (no polling of the tables)."""
        drv = self.controller.driver("overlay")
        real = drv.nl.fdb_replace
        self.fdb_times: dict = {}

        def timed(dev, mac, dst, **kw):
            real(dev, mac, dst, **kw)
            self.fdb_times.setdefault(mac, time.monotonic())
        drv.nl.fdb_replace = timed
        self.event_times: dict = {}
        agent = self.agent
        real_apply = agent._apply

        def apply(ev, dirty):
            if "/endpoints/" in ev.key and ev.value:
                self.event_times.setdefault(ev.value.get("mac"), time.monotonic())
            return real_apply(ev, dirty)
        agent._apply = apply
        self.pass_times: list = []
        real_pass = agent._pass

        def timed_pass(dirty):
            t = time.monotonic()
            if self.profiler is not None:
                self.profiler.runcall(real_pass, dirty)
            else:
                real_pass(dirty)
            self.pass_times.append((time.monotonic() - t, dirty is None))
        agent._pass = timed_pass

    profiler = None

    def profile(self, on: bool = True) -> str:
        """cProfile the agent's passes and this host's creates (bench_overlay
        --profile); ``on=False`` stops and returns the top of the stats."""
        import cProfile
        import io
        import pstats

        if on:
            self.profiler = cProfile.Profile()
            return ""
        prof, self.profiler = self.profiler, None
        out = io.StringIO()
        pstats.Stats(prof, stream=out).sort_stats("cumulative").print_stats(45)
        return out.getvalue()

    def fdb_timings(self) -> dict:
        return dict(self.fdb_times)

    def event_timings(self) -> dict:
        return dict(self.event_times)

    def pass_timings(self) -> list:
        return list(self.pass_times)

    def cluster_keys(self) -> list[str]:
        from pynet import root

        c = root.cluster_store(self.config)
        try:
            return [r.key for r in c.store.list(c.root)]
        finally:
            c.close()

    def close(self) -> None:
        try:
            super().close()
        finally:
            self.leave_cluster(revoke=True)


# ------------------------------------------------------------------ the lab
class OverlayLab:
    def __init__(self, hosts: int, base_dir: str, cni_path: str, lease_ttl: int = 3):
        self.prefix = "po" + secrets.token_hex(3)
        self.n = hosts
        self.base_dir = base_dir
        self.cni_path = cni_path
        self.lease_ttl = lease_ttl
        self.namespaces: list[str] = []
        self.workers: list = []
        self.hosts: list = []
        self.etcd: Optional[NetnsEtcdCluster] = None
        self.switch = None

    # ---- namespaces
    def netns(self, tag: str) -> str:
        from pynet.cnm import sandbox

        name = f"{self.prefix}-{tag}"
        # noted first: a create that failed half-way (no answer from its child under load) may
        # still have made the namespace, and close() must remove it
        self.namespaces.append(name)
        return sandbox.create_netns(name)

    def namespaces_path(self, tag: str) -> str:
        return f"/var/run/netns/{self.prefix}-{tag}"

    def pod(self, tag: str) -> str:
        path = self.netns(f"p{tag}")
        from pynet.sysctl import run_in_netns
        run_in_netns(path, lambda: subprocess.run(["ip", "link", "set", "lo", "up"], check=True))
        return path

    def _worker(self, name: str, path: str, target: str, init: Optional[dict] = None):
        from pynet.scenario.worker import WorkerHandle

        w = WorkerHandle(name, path, target, log_path=os.path.join(self.base_dir, f"{name}.log"), init=init)
        self.workers.append(w)
        return w

    def __enter__(self) -> "OverlayLab":
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc):
        self.close()

    def start(self) -> None:
        sw = self.netns("ul")
        self.switch = self._worker(f"{self.prefix}-ul", sw, "pynet.scenario.host:NodeService")
        self.switch.call("make_switch", bridge="br0")
        paths = []
        for i in range(self.n):
            path = self.netns(f"h{i + 1}")
            self.switch.call("plug", port=f"h{i + 1}", netns_path=path, peer_name="eth0", bridge="br0")
            paths.append(path)
        addrs = [host_address(i) for i in range(self.n)]
        # the hosts' underlay addresses first: etcd listens on them
        for path, addr in zip(paths, addrs):
            node = self._worker(f"{self.prefix}-n", path, "pynet.scenario.host:NodeService")
            node.call("uplink", cidr=f"{addr}/{PREFIX_LEN}")
            node.stop()
            self.workers.remove(node)
        self.etcd = NetnsEtcdCluster(paths, addrs, os.path.join(self.base_dir, "etcd"), name=self.prefix)
        os.makedirs(self.etcd.base_dir, exist_ok=True)
        self.etcd.start()
        self.url = self.etcd.url(self.prefix)
        for i, (path, addr) in enumerate(zip(paths, addrs)):
            inst = f"{self.prefix}-h{i + 1}"
            w = self._worker(inst, path, "tests.support.overlay:OverlayHostService", init={
                "instance": inst, "state_dir": os.path.join(self.base_dir, f"state-h{i + 1}"),
                "chain_prefix": f"{self.prefix.upper()}H{i + 1}", "cni_path": self.cni_path,
                "cluster": {"cluster_store": self.url, "advertise_address": addr,
                            "cluster_lease_ttl": self.lease_ttl}})
            w.wait_ready(timeout=60)
            self.hosts.append(w)

    def conflist_pynet(self, i: int) -> dict:
        """The cluster keys of host i's conflist ``pynet`` object (the instance's own keys are
        added by HostService.cni_add)."""
        return {"clusterStore": self.url, "advertiseAddress": host_address(i)}

    def close(self) -> None:
        for w in reversed(self.workers):
            try:
                w.stop(timeout=60)
            except Exception:  # noqa: BLE001 -- the rest must still go
                w.kill()
        self.workers = []
        if self.etcd is not None:
            self.etcd.stop()
        from pynet.cnm import sandbox
        for name in reversed(self.namespaces):
            try:
                sandbox.delete_netns(name)
            except Exception:  # noqa: BLE001
                subprocess.run(["ip", "netns", "del", name], capture_output=True)
        self.namespaces = []
        shutil.rmtree(os.path.join(self.base_dir, "etcd"), ignore_errors=True)


@contextlib.contextmanager
def installed_lab(base_dir: str, joined=(0, 1, 2), hosts: int = 3, lease_ttl: int = 3):
    """An OverlayLab with the CNI plugins installed under ``base_dir/bin`` and the agents of
    hosts ``joined`` (0-based) in the cluster; closed on exit, even on failure."""
    from pynet.cni import install as cni_install

    bin_dir = os.path.join(base_dir, "bin")
    cni_install.install(bin_dir=bin_dir, conf_dir=None)
    with OverlayLab(hosts=hosts, base_dir=base_dir, cni_path=bin_dir, lease_ttl=lease_ttl) as lab:
        for i in joined:
            lab.hosts[i].call("join_cluster")
        yield lab


def stop_process(proc, grace: float = 30.0) -> None:
    """SIGTERM ``proc`` (a Popen), SIGKILL after ``grace`` s; nothing if it has ended."""
    import signal

    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def _exchange(server_ns: str, client_ns: str, listen, serve_one, talk) -> bytes:
    """``listen()`` in ``server_ns`` (a socket, 10 s timeout), ``serve_one(sock)`` on a thread,
    ``talk()`` in ``client_ns``; its answer returned.  Bounded by the socket timeouts."""
    srv = run_in_netns(server_ns, listen)
    srv.settimeout(10)

    def serve():
        try:
            serve_one(srv)
        except OSError:
            pass                 # the client's side fails and says so

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        return run_in_netns(client_ns, talk)
    finally:
        t.join(15)
        srv.close()


def tcp_echo(server_ns: str, client_ns: str, ip: str, port: int = 7777) -> bytes:
    """One TCP exchange from ``client_ns`` to ``ip:port`` served in ``server_ns``."""
    def serve_one(srv):
        conn, _ = srv.accept()
        with conn:
            conn.settimeout(10)
            conn.sendall(b"echo:" + conn.recv(64))

    def talk():
        with socket.create_connection((ip, port), timeout=10) as c:
            c.sendall(b"hello")
            return c.recv(64)
    return _exchange(server_ns, client_ns, lambda: socket.create_server(("0.0.0.0", port)), serve_one, talk)


def udp_echo(server_ns: str, client_ns: str, ip: str, port: int = 7779) -> bytes:
    """One UDP datagram from ``client_ns`` to ``ip:port`` and its echo from ``server_ns``."""
    def listen():
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("0.0.0.0", port))
        return s

    def serve_one(srv):
        data, peer = srv.recvfrom(64)
        srv.sendto(b"echo:" + data, peer)

    def talk():
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c:
            c.settimeout(10)
            c.sendto(b"hello", (ip, port))
            return c.recvfrom(64)[0]
    return _exchange(server_ns, client_ns, listen, serve_one, talk)
