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
from typing import Optional

from pynet.scenario.host import HostService
from pynet.sysctl import run_in_netns
from pynet.scenario.etcd import NetnsEtcdCluster

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


# ------------------------------------------------------------- the host
class OverlayHostService(HostService):
    """A scenario host (pynet.scenario.host.HostService: its own pynet
    instance, the CNI binaries executed in its namespace, and -- given
    ``cluster`` settings -- a cluster member whose ``join_cluster`` starts the
    host agent the daemon would run), with the tests' views of the kernel and
    the benchmarks' measurements."""

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

    # ---- refusals and removal, the CLI's way (pynet network create / rm)
    def try_create_network(self, **kw) -> dict:
        """HostService.create_network; a refusal answered as {"error": type, "msg"}, with the
        pool and gateway it requested first given back (the refused network made nothing)."""
        from pynet import errors

        try:
            return self.create_network(**kw)
        except errors.PynetError as e:
            rec = self.nets.pop(kw["name"], {})
            for pool_id, gw in rec.get("gateways", []):
                self.controller.release_address(pool_id, gw)
            for pool_id in rec.get("pools", []):
                self.controller.release_pool(pool_id)
            return {"error": type(e).__name__, "msg": str(e)}

    def remove_network(self, name: str) -> None:
        """``pynet network rm NAME`` of a network this service made (with its pool)."""
        rec = self.nets.pop(name)
        c = self.controller
        c.delete_network(rec["id"], True)
        for pool_id, gw in rec["gateways"]:
            c.release_address(pool_id, gw)
        for pool_id in rec["pools"]:
            c.release_pool(pool_id)

    def local_state(self) -> dict:
        """What this host's pynet holds: every key of its state dir's store (network,
        endpoint, allocation, IPAM records...) and its links and rules (HostService.leftovers)."""
        from pynet.store.sqlite import SqliteStore

        store = SqliteStore.in_state_dir(self.state_dir)     # all of it, not one layout prefix
        try:
            keys = [r.key for r in store.list("")]
        finally:
            store.close()
        return {"keys": keys, "kernel": self.leftovers()}

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

    def cni_del(self, name: str) -> None:
        """CNI DEL of one pod this host added (as the runtime does when it stops)."""
        from pynet.scenario import cniexec
        from pynet.scenario.host import object_id

        cid = object_id(self.instance, "cni", name)
        for att in [a for a in self.cni_atts if a.container_id == cid]:
            cniexec.delete(self.cni_path, att)
            self.cni_atts.remove(att)

    def cni_add_refused(self, name: str, **kw) -> dict:
        """A CNI ADD expected to fail: {"code", "message"} of the plugin's error (the pod's
        half-made attachment DELed, as a runtime does after a failed ADD); {} if it succeeded."""
        from pynet.scenario.cniexec import CniExecError

        try:
            self.cni_add(name, **kw)
        except CniExecError as e:
            out = {"code": e.code, "message": str(e)}
        else:
            return {}
        try:
            self.cni_del(name)
        except CniExecError as e:
            out["del"] = str(e)
        return out

    # ---- pods a runtime attached (containerd's CRI exec'ing the plugin in this namespace)
    def endpoint_of(self, network: str, container_id: str, ifname: str = "eth0") -> dict:
        """The pod's endpoint here and its cluster record (key, value); {} when pynet has none."""
        from pynet.cnm import attach

        c = self.controller
        net = c.network(network)
        ep = attach.find(c, net, container_id, ifname)
        if ep is None:
            return {}
        drv = c.driver("overlay")
        cl = drv.cluster
        key = cl.key("endpoints", drv.cluster_id(net), ep.id)
        rec = cl.store.get(key)
        st = ep.driver_state or {}
        return {"id": ep.id, "ip": ep.ip, "mac": ep.mac, "host_veth": st.get("host_veth", ""),
                "key": key, "record": None if rec is None else dict(rec.value)}

    def cluster_put(self, key: str, value) -> None:
        """Write (``value`` None: delete) one cluster key, as a broken or repaired store would."""
        drv = self.controller.driver("overlay")
        if value is None:
            drv.cluster.store.delete(key)
        else:
            drv.cluster.store.put(key, value)

    def cluster_addresses(self, network: str) -> list[str]:
        """The addresses the cluster's block IPAM holds for ``network``'s subnet."""
        from pynet.drivers.overlay import pool_name

        net = self.controller.network(network)
        drv = self.controller.driver("overlay")
        return list(drv._blocks().allocated(pool_name(net.ipv4[0].pool)))

    def remove_cni_network(self, name: str) -> None:
        """``pynet network rm`` of a network a CNI ADD made (kept after its last DEL); none
        (a first ADD that failed) is no error."""
        from pynet import errors

        c = self.controller
        try:
            net = c.network(name)
        except errors.NotFound:
            return
        c.delete_network(net.id, True)
        for d in net.ipv4 + net.ipv6:
            if d.pool_id:
                c.release_pool(d.pool_id)

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
        self.namespaces.append(name)      # first: a create that fails half-way is removed too
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


def host_daemon(lab: OverlayLab, i: int, ttl: Optional[int] = None) -> subprocess.Popen:
    """``pynet daemon --cluster-store ...`` for host i's (0-based) pynet instance, inside its
    namespace, on the lab worker's state dir (so the same host ID); ``ttl`` defaults to the lab's."""
    import sys

    inst = f"{lab.prefix}-h{i + 1}"
    state = os.path.join(lab.base_dir, f"state-h{i + 1}")
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    with open(os.path.join(lab.base_dir, f"daemon-h{i + 1}.log"), "ab") as log:
        return subprocess.Popen(
            ["nsenter", f"--net={lab.namespaces_path(f'h{i + 1}')}", sys.executable, "-m", "pynet", "daemon",
             "--state-dir", state, "--plugin-name", inst, "--chain-prefix", f"{lab.prefix.upper()}H{i + 1}",
             "--socket", os.path.join(state, "daemon.sock"), "--cluster-store", lab.url,
             "--advertise-address", host_address(i), "--cluster-ttl", str(ttl or lab.lease_ttl)],
            cwd=repo, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            env={**os.environ, "PYNET_FIREWALL_RECHECK": "0"})


def stop_process(proc, grace: float = 30.0) -> None:
    """SIGTERM ``proc`` (a Popen), SIGKILL after ``grace`` s; nothing if it has ended."""
    from tests.support import harness

    if proc is None or proc.poll() is not None:
        return
    harness.terminate(proc, grace)


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


# ------------------------------------------------------ Docker on a host
DOCKER = "/usr/bin/docker"
START_BOUND = 90.0


class DockerHost:
    """A private dockerd (harness.PrivateDockerd) and its ``pynet daemon --cluster-store ...``
    in host i's namespace (1-based).  dockerd's own mount namespace has the daemon's socket
    directory bound on /run/docker/plugins, so a restarted daemon's new socket is the one
    dockerd finds.  ``ttl``: the daemon's lease TTL (``--cluster-ttl``)."""

    def __init__(self, lab: "OverlayLab", i: int, ttl: int = 3):
        from tests.support import harness

        self.lab, self.i, self.ttl = lab, i, ttl
        self.dir = os.path.join(lab.base_dir, f"docker-h{i}")
        os.makedirs(self.dir, exist_ok=True)
        self.sock = os.path.join(self.dir, "docker.sock")
        self.name = f"{lab.prefix}-d{i}"                  # the plugin name dockerd knows
        self.plugin_dir = str(harness.LOCK_DIR / f"{self.name}.plugins")
        os.makedirs(self.plugin_dir, exist_ok=True)
        self.plugin_sock = os.path.join(self.plugin_dir, f"{self.name}.sock")
        self.netns = lab.namespaces_path(f"h{i}")
        self.networks: list[str] = []
        self.pynet = None
        self.dockerd = None

    def start(self) -> None:
        self.start_pynet()
        self.start_dockerd()

    def start_pynet(self) -> None:
        from tests.support import harness

        state = os.path.join(self.dir, "pynet")
        argv = ["nsenter", f"--net={self.netns}", *harness.default_daemon_argv(
            self.name, self.plugin_sock, state),
            "--cluster-store", self.lab.url, "--advertise-address", host_address(self.i - 1),
            "--cluster-ttl", str(self.ttl)]
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.plugin_sock)        # a SIGKILLed daemon's: wait for the new one's
        with open(os.path.join(self.dir, "pynet.log"), "a") as log:
            # its dockerd is this host's, not the machine's (the restart's reconciliation asks it)
            self.pynet = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                          env={**os.environ, "DOCKER_HOST": f"unix://{self.sock}"})
        wait_until(lambda: os.path.exists(self.plugin_sock) or self.pynet.poll() is not None,
                   f"pynet daemon of host {self.i}", bound=START_BOUND)
        assert self.pynet.poll() is None, self.log()

    def log(self) -> str:
        with open(os.path.join(self.dir, "pynet.log")) as f:
            return f.read()[-3000:]

    def kill_pynet(self) -> None:
        """SIGKILL: the daemon dies as a crashed one does (its lease left to expire)."""
        self.pynet.kill()
        self.pynet.wait(10)

    def restart_pynet(self) -> None:
        """SIGTERM (what a service manager's restart sends), then started again."""
        stop_process(self.pynet, 30)
        self.start_pynet()

    def start_dockerd(self) -> None:
        from tests.support import harness

        self.dockerd = harness.PrivateDockerd(self.dir, self.netns, plugin_dir=self.plugin_dir,
                                              args=("--bridge", "none"))
        self.dockerd.start(bound=START_BOUND)
        self.image = self.dockerd.load_image()

    def docker(self, *args, check: bool = True, timeout: float = 120):
        p = subprocess.run([DOCKER, "-H", f"unix://{self.sock}", *args], capture_output=True, text=True,
                           timeout=timeout)
        if check and p.returncode != 0:
            raise AssertionError(f"docker {' '.join(args)} on host {self.i}: {p.stderr.strip()}")
        return p

    def network(self, name: str, subnet: str, gw: str, check: bool = True):
        if name not in self.networks:
            self.networks.append(name)
        return self.docker("network", "create", "-d", self.name, "--ipam-driver", self.name,
                           "-o", "pynet.driver=overlay", "-o", f"pynet.overlay.network={name}",
                           "--subnet", subnet, "--gateway", gw, name, check=check)

    def run(self, cname: str, network: str) -> str:
        self.docker("run", "-d", "--name", cname, "--network", network, self.image, "sleep", "600")
        return self.inspect(cname)["NetworkSettings"]["Networks"][network]["IPAddress"]

    def inspect(self, cname: str) -> dict:
        return json.loads(self.docker("inspect", cname).stdout)[0]

    def netns_of(self, cname: str) -> str:
        """The container's network namespace, as a path this process can enter (dockerd and
        its containers share the machine's PID namespace)."""
        return f"/proc/{self.inspect(cname)['State']['Pid']}/ns/net"

    def ping(self, cname: str, ip: str) -> bool:
        return self.docker("exec", cname, "ping", "-c", "1", "-W", "1", ip, check=False,
                           timeout=30).returncode == 0

    def stop(self) -> None:
        from tests.support import harness

        if self.dockerd is not None:
            if self.dockerd.running:
                self.dockerd.remove_containers()
                for n in self.networks:
                    self.docker("network", "rm", n, check=False)
            self.dockerd.stop(60)               # it stops its containerd and shims
        stop_process(self.pynet, 30)
        harness.flush_firewall(harness.chain_prefix_for(self.name))
        for log in ("pynet.log", "dockerd.log"):     # kept beside the lab's other logs
            with contextlib.suppress(OSError):
                shutil.copy(os.path.join(self.dir, log), os.path.join(self.lab.base_dir, f"docker-h{self.i}-{log}"))
        shutil.rmtree(self.plugin_dir, ignore_errors=True)
        shutil.rmtree(self.dir, ignore_errors=True)


def start_docker_hosts(dh: list, network: str, subnet: str, gateway: str) -> tuple[dict, dict]:
    """The Docker hosts ``dh`` started side by side (each pynet daemon and dockerd), the
    overlay ``network`` created on each in turn, a container ``c<i>`` on host i's:
    ({name: address}, {name: network namespace})."""
    from concurrent.futures import ThreadPoolExecutor

    from tests.support import harness

    harness.ensure_test_image()           # once, before the hosts load it side by side
    with ThreadPoolExecutor(len(dh)) as pool:
        for f in [pool.submit(d.start) for d in dh]:
            f.result()
    for d in dh:
        d.network(network, subnet, gateway)
    names = [f"c{d.i}" for d in dh]
    ips = {n: d.run(n, network) for n, d in zip(names, dh)}
    return ips, {n: d.netns_of(n) for n, d in zip(names, dh)}


# ----------------------------------------------------------- observation
def capture(switch_ns: str, seconds: float, fn, port: str = "h1") -> list:
    """UDP frames on host ``port``'s port of the underlay switch while ``fn()`` runs (tcpdump in
    the switch namespace; a bridge device itself sees only what it floods, not what it
    forwards), parsed by scapy."""
    import tempfile

    from scapy.all import rdpcap

    with tempfile.NamedTemporaryFile(suffix=".pcap", delete=False) as f:
        path = f.name
    p = subprocess.Popen(["nsenter", f"--net={switch_ns}", "tcpdump", "-i", port, "--immediate-mode", "-U",
                          "-n", "-w", path], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        line = p.stderr.readline()           # tcpdump says "listening on" once the capture runs
        assert b"listening" in line, line
        fn()
        time.sleep(seconds)
    finally:
        p.terminate()
        p.wait(10)
    try:
        return list(rdpcap(path))
    finally:
        os.unlink(path)


def vxlan_fdb(netns_path: str) -> set:
    """{(mac, underlay dst)} of every VXLAN device in a host namespace, from the kernel
    (``bridge fdb``): what a host whose pynet is a separate daemon has programmed."""
    p = subprocess.run(["nsenter", f"--net={netns_path}", "bridge", "-j", "fdb", "show"],
                       capture_output=True, text=True, timeout=30, check=True)
    return {(e["mac"], e["dst"]) for e in json.loads(p.stdout or "[]") if e.get("dst")}


class Probe:
    """A continuous probe: one ICMP echo from ``netns_path`` to ``ip`` every ``interval`` s (1 s
    timeout each) on a thread, until ``stop()``, which returns (sent, lost).  Bounded by
    ``max_probes``."""

    def __init__(self, netns_path: str, ip: str, interval: float = 0.2, max_probes: int = 3000):
        from tests.support.icmp import icmp_ping

        self._ping = icmp_ping
        self.netns_path, self.ip, self.interval, self.max_probes = netns_path, ip, interval, max_probes
        self.results: list[bool] = []
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set() and len(self.results) < self.max_probes:
            try:
                self.results.append(self._ping(self.netns_path, self.ip, timeout=1.0))
            except OSError:
                self.results.append(False)
            self._stop.wait(self.interval)

    def __enter__(self) -> "Probe":
        self._t.start()
        return self

    def __exit__(self, *exc):
        self.stop()

    def stop(self) -> tuple[int, int]:
        self._stop.set()
        self._t.join(15)
        return len(self.results), self.results.count(False)

    @property
    def lost(self) -> int:
        return self.results.count(False)
