"""Build and tear down a scenario's topology.

Layout for run prefix ``P`` (``ps`` + 5 hex digits):

* ``P-ul``            the underlay: bridge ``br0``, one veth port ``u<i>`` per node
* ``P-<host>``        a host: ``eth0`` on the underlay, its own pynet instance
                      (worker process with a private state dir under ``P``'s work dir)
* ``P-<outside>``     an outside host: ``eth0`` on the underlay, no pynet
* ``P-<host>-<sb>``   a sandbox's namespace (modes netns and none)

Sandboxes attached by CNI: the runner installs the pynet CNI binaries into
``<work dir>/cni-bin`` (``pynet cni install --bin-dir ... --no-examples``);
the host's worker executes them (ADD at build, DEL at teardown).

A scenario with a cluster store (``cluster:``) gets an etcd cluster on the
underlay, a member in each member host's namespace (client 2379 and peer 2380
on its ``eth0`` address, data under ``P``'s work dir, member names ``P-<i>``);
every host's pynet instance is in that cluster (keys under the namespace
``P``), and its agent (``pynet daemon --cluster-store``'s) programs the overlay
networks' VXLAN peers.  Before the first probe the runner waits until every
host's VXLAN device knows every remote sandbox of its overlays.

Nothing is created in the machine's root namespace: every link lives in a
namespace of the run, so deleting the namespaces removes every link (and
every iptables rule, which are per namespace).  A run writes
``/run/pynet-scenario/P.pid`` (its pid and its workers' pids) before it
creates anything; at start, namespaces and work dirs of runs whose pid is
dead are removed (a crashed or SIGKILLed earlier run).
"""
from __future__ import annotations

import ipaddress
import logging
import os
import re
import secrets
import shutil
import signal
import tempfile
import time
from dataclasses import dataclass, field
from typing import Optional

from pynet.scenario.model import Scenario
from pynet.scenario.safety import Guard, SafetyError
from pynet.scenario.worker import WorkerError, WorkerHandle

log = logging.getLogger("pynet.scenario")

NETNS_DIR = "/var/run/netns"
RUN_DIR = "/run/pynet-scenario"
PREFIX_RE = re.compile(r"^(ps[0-9a-f]{5})-")
WORK_ROOT = os.path.join(tempfile.gettempdir(), "pynet-scenario")
CHAIN_PREFIX = "PYNET"          # each host's iptables are its own namespace's


def new_prefix() -> str:
    return "ps" + secrets.token_hex(3)[:5]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def _running(pid: int) -> bool:
    """Alive and not a zombie (a killed run's children are reaped by whoever adopted them)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _argv(pid: int) -> list[bytes]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().split(b"\0")
    except OSError:
        return []


def _is_etcd_of(pid: int, prefix: str) -> bool:
    """An etcd member of run ``prefix`` (``--name P-<i>``)."""
    argv = _argv(pid)
    return bool(argv) and os.path.basename(argv[0]) == b"etcd" and \
        any(a.startswith(f"{prefix}-".encode()) for a in argv)


def _is_ours(pid: int, prefix: str) -> bool:
    """A worker of a run, or an etcd member of run ``prefix``."""
    return b"pynet.scenario.worker" in b" ".join(_argv(pid)) or _is_etcd_of(pid, prefix)


def _etcd_members_of(prefix: str) -> list[int]:
    """Running etcd members of run ``prefix``, found by name: one the run
    spawned just before it was killed is not in its pid file yet."""
    return [int(d) for d in os.listdir("/proc")
            if d.isdigit() and _is_etcd_of(int(d), prefix) and _running(int(d))]


def _read_pidfile(prefix: str) -> list[int]:
    try:
        with open(os.path.join(RUN_DIR, prefix + ".pid")) as f:
            return [int(x) for x in f.read().split()]
    except (OSError, ValueError):
        return []


def _delete_netns(name: str) -> None:
    from pynet.cnm.sandbox import delete_netns
    try:
        delete_netns(name)
    except Exception as e:  # noqa: BLE001
        log.warning("cannot delete namespace %s: %s", name, e)


def cleanup_stale() -> list[str]:
    """Remove what runs that are no longer alive left behind; returns the
    namespaces removed."""
    removed = []
    try:
        names = os.listdir(NETNS_DIR)
    except FileNotFoundError:
        names = []
    prefixes = {m.group(1) for n in names if (m := PREFIX_RE.match(n))}
    try:
        prefixes |= {f[:-4] for f in os.listdir(RUN_DIR) if f.endswith(".pid")}
    except FileNotFoundError:
        pass
    try:
        prefixes |= {d for d in os.listdir(WORK_ROOT) if re.match(r"^ps[0-9a-f]{5}$", d)}
    except FileNotFoundError:
        pass
    for prefix in sorted(prefixes):
        pids = _read_pidfile(prefix)
        if pids and _pid_alive(pids[0]):
            continue                      # a live run (maybe a parallel one)
        killed = []
        for pid in pids[1:] + _etcd_members_of(prefix):
            if _pid_alive(pid) and _is_ours(pid, prefix):
                try:
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
                except ProcessLookupError:
                    pass
        # gone before their files go: a dying etcd member still writes its data dir
        # (rmtree of a directory that fills meanwhile leaves it behind)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(_running(p) for p in killed):
            time.sleep(0.05)
        for n in names:
            if n.startswith(prefix + "-"):
                _delete_netns(n)
                removed.append(n)
        shutil.rmtree(os.path.join(WORK_ROOT, prefix), ignore_errors=True)
        try:
            os.unlink(os.path.join(RUN_DIR, prefix + ".pid"))
        except FileNotFoundError:
            pass
    return removed


@dataclass
class Place:
    """Where a scenario name lives once built."""
    name: str
    kind: str                       # host | outside | sandbox
    ns: str                         # namespace name
    host: str = ""                  # the scenario host (sandboxes, hosts)
    addresses: dict = field(default_factory=dict)   # network (or "underlay") -> address
    macs: dict = field(default_factory=dict)        # network -> MAC
    ifnames: dict = field(default_factory=dict)     # network -> ifname
    ports: list = field(default_factory=list)
    mode: str = ""
    cni: dict = field(default_factory=dict)         # network -> the CNI ADD result


class Topology:
    def __init__(self, scn: Scenario, prefix: Optional[str] = None, work_dir: Optional[str] = None):
        self.scn = scn
        self.prefix = prefix or new_prefix()
        self.work = work_dir or os.path.join(WORK_ROOT, self.prefix)
        self.namespaces: list[str] = []         # created, in order
        self.workers: dict[str, WorkerHandle] = {}   # key -> handle (hosts, nodes, agents)
        self.places: dict[str, Place] = {}
        self.networks: dict[tuple, dict] = {}   # (host, net) -> controller record
        self.guard = Guard()
        self.ul_prefixlen = ipaddress.ip_network(scn.underlay_subnet).prefixlen
        self.teardown_report: dict = {}
        self.host_info: dict = {}
        self.etcd = None                        # pynet.scenario.etcd.NetnsEtcdCluster
        self.cluster_url = ""
        self._torn = False

    # ------------------------------------------------------------- names
    def ns_name(self, *parts: str) -> str:
        return "-".join((self.prefix,) + parts)

    @staticmethod
    def ns_path(name: str) -> str:
        return os.path.join(NETNS_DIR, name)

    def _write_pidfile(self) -> None:
        os.makedirs(RUN_DIR, exist_ok=True)
        pids = [os.getpid()] + [w.pid for w in self.workers.values()] + \
            (self.etcd.pids if self.etcd is not None else [])
        tmp = os.path.join(RUN_DIR, f".{self.prefix}.tmp")
        with open(tmp, "w") as f:
            f.write(" ".join(map(str, pids)))
        os.replace(tmp, os.path.join(RUN_DIR, self.prefix + ".pid"))

    def _netns(self, name: str) -> str:
        from pynet.cnm.sandbox import create_netns
        self.namespaces.append(name)        # before: a half-made one is still removed
        create_netns(name)
        self.guard.ifaces.setdefault(name, {"lo"})
        return self.ns_path(name)

    def _worker(self, key: str, ns: str, target: str, /, **init) -> WorkerHandle:
        w = WorkerHandle(key, self.ns_path(ns) if ns else "", target,
                         log_path=os.path.join(self.work, "workers.log"), init=init)
        self.workers[key] = w
        self._write_pidfile()
        return w

    # ------------------------------------------------------------- build
    def install_cni(self) -> str:
        """The plugin binaries, as an operator installs them, into a bin dir
        of this run (removed with the work dir)."""
        import subprocess
        import sys

        bin_dir = os.path.join(self.work, "cni-bin")
        p = subprocess.run([sys.executable, "-m", "pynet", "cni", "install", "--bin-dir", bin_dir,
                            "--no-examples"], capture_output=True, text=True, timeout=60)
        if p.returncode != 0:
            raise RuntimeError(f"pynet cni install failed: {(p.stderr or p.stdout).strip()[-500:]}")
        return bin_dir

    def build(self) -> None:
        scn = self.scn
        os.makedirs(self.work, mode=0o700, exist_ok=True)
        self._write_pidfile()
        cni_path = self.install_cni() if scn.uses_cni() else ""
        ul_ns = self.ns_name("ul")
        self._netns(ul_ns)
        nodes = list(scn.hosts.values()) + list(scn.outside.values())
        for n in nodes:
            self._netns(self.ns_name(n.name))
        for h in scn.hosts.values():
            for sb in h.sandboxes.values():
                if sb.mode in ("netns", "none"):
                    self._netns(self.ns_name(h.name, sb.name))
        # workers start in parallel; each imports what it needs after setns
        ul = self._worker("ul", ul_ns, "pynet.scenario.host:NodeService")
        for o in scn.outside.values():
            self._worker(o.name, self.ns_name(o.name), "pynet.scenario.host:NodeService")
        cluster_url = self._cluster_url()
        for h in scn.hosts.values():
            cluster = None if not cluster_url else {
                "cluster_store": cluster_url, "advertise_address": h.address,
                "cluster_lease_ttl": scn.cluster.lease_ttl}
            self._worker(h.name, self.ns_name(h.name), "pynet.scenario.host:HostService",
                         instance=f"{self.prefix}-{h.name}",
                         state_dir=os.path.join(self.work, h.name),
                         ip_forward=h.ip_forward, firewall=h.firewall,
                         chain_prefix=CHAIN_PREFIX, cni_path=cni_path, cluster=cluster)
        for w in list(self.workers.values()):
            w.wait_ready(60)
        for key, w in self.workers.items():
            if key in scn.hosts:
                self.host_info[key] = w.init_result
        # underlay
        ul.call("make_switch", bridge="br0", mtu=scn.underlay_mtu)
        self.guard.add_net(scn.underlay_subnet)
        self.guard.ifaces[ul_ns] |= {"br0"}
        for i, n in enumerate(nodes):
            ns = self.ns_name(n.name)
            ul.call("plug", port=f"u{i}", netns_path=self.ns_path(ns), mtu=scn.underlay_mtu)
            self.guard.ifaces[ul_ns].add(f"u{i}")
            self.guard.ifaces[ns].add("eth0")
            routes = [{"to": r["to"], "via": self._addr_of(r.get("via", ""))}
                      for r in (getattr(n, "routes", None) or [])]
            info = self.workers[n.name].call("uplink", cidr=f"{n.address}/{self.ul_prefixlen}",
                                             routes=routes)
            kind = "host" if n.name in scn.hosts else "outside"
            self.places[n.name] = Place(n.name, kind, ns, host=n.name if kind == "host" else "",
                                        addresses={"underlay": n.address},
                                        macs={"underlay": info["mac"]},
                                        ifnames={"underlay": "eth0"})
        if scn.cluster is not None:
            self._start_cluster()
        # pynet networks and sandboxes, per host
        for h in scn.hosts.values():
            hw = self.workers[h.name]
            for net in h.networks.values():
                if net.origin == "cni":
                    continue                   # the first CNI ADD makes it
                rec = hw.call("create_network", name=net.name, driver=net.driver,
                              subnet=net.subnet, gateway=net.gateway, internal=net.internal,
                              options=net.options, subnet_v6=net.subnet_v6)
                self.networks[(h.name, net.name)] = rec
                if rec.get("subnet"):
                    self.guard.add_net(rec["subnet"])
            for sb in h.sandboxes.values():
                if sb.mode == "host":
                    p = self.places[h.name]
                    self.places[sb.name] = Place(sb.name, "sandbox", p.ns, host=h.name,
                                                 addresses=dict(p.addresses), macs=dict(p.macs),
                                                 ifnames=dict(p.ifnames), mode="host")
                    continue
                if sb.mode == "container":
                    continue
                ns = self.ns_name(h.name, sb.name)
                place = Place(sb.name, "sandbox", ns, host=h.name, mode=sb.mode)
                self.places[sb.name] = place
                if sb.mode == "none":
                    hw.call("lo_up", netns_path=self.ns_path(ns))
                    continue
                if any(a.cni for a in sb.attachments):
                    self._attach_cni(h, sb, place)
                    continue
                atts = hw.call("attach_sandbox", name=sb.name, netns_path=self.ns_path(ns),
                               attachments=[{"network": a.network, "address": a.address,
                                             "mac": a.mac} for a in sb.attachments],
                               publish=[vars(p) for p in sb.publish])
                for a in atts:
                    place.addresses[a["network"]] = a["address"].split("/")[0]
                    place.macs[a["network"]] = a["mac"]
                    place.ifnames[a["network"]] = a["ifname"]
                    place.ports += a["ports"]
                    self.guard.ifaces[ns].add(a["ifname"])
            for sb in h.sandboxes.values():
                if sb.mode == "container":
                    other = self.places[sb.container]
                    self.places[sb.name] = Place(sb.name, "sandbox", other.ns, host=h.name,
                                                 addresses=dict(other.addresses),
                                                 macs=dict(other.macs), ifnames=dict(other.ifnames),
                                                 mode="container")
            # every link now in the host namespace was made by this run
            # (the uplink by the runner, bridges and veths by the host's pynet)
            self.guard.ifaces[self.ns_name(h.name)] |= set(hw.call("links"))
        if scn.cluster is not None:
            self._wait_overlay_peers()

    # ------------------------------------------------------------ cluster
    def _cluster_url(self) -> str:
        """etcd://<member>:2379,...[/P]: the members are known before they run."""
        c = self.scn.cluster
        if c is None:
            return ""
        self.cluster_url = "etcd://" + ",".join(f"{self.scn.hosts[m].address}:2379"
                                                for m in c.members) + f"/{self.prefix}"
        return self.cluster_url

    def _start_cluster(self) -> None:
        """The etcd members on the underlay, then every host's agent."""
        from pynet.scenario.etcd import NetnsEtcdCluster

        c = self.scn.cluster
        base = os.path.join(self.work, "etcd")
        os.makedirs(base, exist_ok=True)
        self.etcd = NetnsEtcdCluster([self.ns_path(self.ns_name(m)) for m in c.members],
                                     [self.scn.hosts[m].address for m in c.members], base,
                                     name=self.prefix)
        try:
            self.etcd.start()
        finally:
            self._write_pidfile()            # the members' pids: a crashed run's are killed
        for h in self.scn.hosts:
            self.workers[h].call("join_cluster", reconcile_interval=2.0)

    def vni_of(self, network: str) -> int:
        """The VNI the cluster allocated to overlay ``network`` (any host's record)."""
        for (_h, name), rec in self.networks.items():
            if name == network and rec.get("vni") is not None:
                return int(rec["vni"])
        raise SafetyError(f"no overlay network {network!r} was created")

    def _wait_overlay_peers(self, bound: float = 30.0) -> None:
        """Until every host's VXLAN device of each overlay has an FDB entry for
        every sandbox of that overlay on the other hosts (the agents program
        them asynchronously, as in production): probes then test the data path,
        not the control loop's latency.  Bounded; a host that never converges
        fails the build with what is missing."""
        want: dict[tuple, set] = {}
        for name, decls in self.scn.overlays().items():
            hosts = [n.host for n in decls]
            for h in hosts:
                macs = {p.macs[name] for p in self.places.values()
                        if p.kind == "sandbox" and p.host != h and p.host in hosts
                        and name in p.macs and p.mode == "netns"}
                if macs:
                    want[(h, name)] = macs
        deadline = time.monotonic() + bound
        missing: dict = {}
        while True:
            missing = {}
            for (h, name), macs in want.items():
                have = {m for m, _dst in self.workers[h].call("overlay_peers", name=name)["fdb"]}
                if macs - have:
                    missing[(h, name)] = sorted(macs - have)
            if not missing or time.monotonic() >= deadline:
                break
            time.sleep(0.1)
        if missing:
            raise RuntimeError("overlay peers not programmed within %ss: %s" % (bound, "; ".join(
                f"{h} {n} lacks {', '.join(m)}" for (h, n), m in missing.items())))

    def _attach_cni(self, h, sb, place: Place) -> None:
        """ADD per attachment, by executing the plugin in the host's worker;
        port mappings (runtimeConfig) with the first attachment."""
        hw = self.workers[h.name]
        for i, a in enumerate(sb.attachments):
            net = h.networks[a.network]
            prefixlen = ipaddress.ip_network(net.subnet).prefixlen if net.subnet else 0
            r = hw.call("cni_add", name=sb.name, netns_path=self.ns_path(place.ns),
                        network=a.network, cni=net.cni, ifname=a.ifname, address=a.address,
                        prefixlen=prefixlen, mac=a.mac,
                        publish=[vars(p) for p in sb.publish] if i == 0 else [], node_cluster=True)
            place.addresses[a.network] = r["address"].split("/")[0]
            place.macs[a.network] = r["mac"]
            place.ifnames[a.network] = a.ifname
            place.ports += r["ports"]
            place.cni[a.network] = r["result"]
            self.guard.ifaces[place.ns].add(a.ifname)
            self.guard.add_net(r["subnet"])
            rec = self.networks.setdefault((h.name, a.network), {
                "name": a.network, "subnet": r["subnet"], "gateway": r["gateway"],
                "bridge": r["bridge"], "created_by": r["created_by"]})
            if not rec.get("gateway") and r["gateway"]:
                rec["gateway"] = r["gateway"]

    def _addr_of(self, ref: str) -> str:
        if not ref:
            return ""
        if ref in self.scn.hosts:
            return self.scn.hosts[ref].address
        if ref in self.scn.outside:
            return self.scn.outside[ref].address
        return ref

    # ------------------------------------------------------------ agents
    def agent(self, ns: str) -> WorkerHandle:
        """The probe agent (scapy) of a namespace of this run, started on
        first use."""
        key = "agent:" + ns
        if ns not in self.guard.ifaces:
            raise SafetyError(f"refused: namespace {ns!r} was not created by this run")
        if key not in self.workers:
            self._worker(key, ns, "pynet.scenario.probes:ProbeService",
                         ns=ns, nets=[str(n) for n in self.guard.nets],
                         ifaces=sorted(self.guard.ifaces[ns]))
        return self.workers[key]

    def start_agents(self, namespaces) -> None:
        hs = [self.agent(ns) for ns in namespaces]
        for h in hs:
            h.wait_ready(60)

    # ---------------------------------------------------------- teardown
    def firewall_diffs(self) -> dict[str, str]:
        """Host name -> its non-empty ``pynet firewall diff`` (issue 13: empty after every
        scenario, on every backend)."""
        out = {}
        for h in self.scn.hosts:
            w = self.workers.get(h)
            if w is not None and w.proc.poll() is None:
                diff = w.call("firewall_diff")
                if diff:
                    out[h] = diff
        return out

    def teardown(self) -> dict:
        """Stop agents, undo every host's pynet objects through its
        controller, stop workers, delete namespaces and the work dir.
        Safe to call twice and after a half-made build."""
        if self._torn:
            return self.teardown_report
        self._torn = True
        report = {"problems": [], "leftovers": []}
        for key, w in list(self.workers.items()):
            if key.startswith("agent:"):
                w.stop(10)
        for key, w in list(self.workers.items()):
            if key in self.scn.hosts and w.proc.poll() is None:
                try:
                    r = w.call("teardown", call_timeout=90)
                    report["problems"] += [f"{key}: {p}" for p in r["problems"]]
                    report["leftovers"] += [f"{key}: {k}" for k in r["leftovers"]]
                except WorkerError as e:
                    report["problems"].append(f"{key}: teardown: {e}")
        if self.etcd is not None:
            self._teardown_cluster(report)
        for w in self.workers.values():
            w.stop(20)
        if self.etcd is not None:
            self.etcd.stop()              # SIGKILL and the data dirs
        for ns in reversed(self.namespaces):
            _delete_netns(ns)
        # a namespace the run may have created before it recorded it
        try:
            for n in os.listdir(NETNS_DIR):
                if n.startswith(self.prefix + "-"):
                    _delete_netns(n)
        except FileNotFoundError:
            pass
        shutil.rmtree(self.work, ignore_errors=True)
        try:
            os.unlink(os.path.join(RUN_DIR, self.prefix + ".pid"))
        except FileNotFoundError:
            pass
        self.teardown_report = report
        return report


    def _teardown_cluster(self, report: dict) -> None:
        """Every host leaves (its lease revoked), then nothing of pynet's is
        left in the cluster store (each host removed its part of the overlays;
        the last one the cluster-wide network, its VNI and pool)."""
        hosts = [k for k in self.scn.hosts if k in self.workers and self.workers[k].proc.poll() is None]
        for key in hosts:
            try:
                self.workers[key].call("leave_cluster", revoke=True, call_timeout=30)
            except WorkerError as e:
                report["problems"].append(f"{key}: leave cluster: {e}")
        if hosts and any(m.alive for m in self.etcd.members):
            try:
                keys = self.workers[hosts[0]].call("cluster_keys", call_timeout=30)
                report["leftovers"] += [f"cluster store: {k}" for k in keys]
            except WorkerError as e:
                report["problems"].append(f"cluster store check: {e}")


def wait_gone(prefix: str, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if not any(n.startswith(prefix + "-") for n in os.listdir(NETNS_DIR)):
                return True
        except FileNotFoundError:
            return True
        time.sleep(0.1)
    return False
