"""Issue 9 acceptance: 100 CNI ADDs at once beside Docker containers starting and stopping on the
same network, then everything removed: no duplicate address, no error, nothing left.

One Docker network (``-d <daemon> --ipam-driver <daemon>``, 10.248.0.0/24 -- nothing else in the
suite uses 10.248.0.0/16) and a pynet-bridge configuration with its name, so the pods share it.
The ``pynet-bridge`` binary is exec'd 100 times at once (a thread per process, in the host's
namespaces, so the shim hands each call to the daemon's socket as it does by default) into 100
throwaway netns, while two threads run and remove containers on the network (at most ``ALIVE``
each at once).  Then the pods are DEL'd at once too, the churn still going, and the containers
removed.

Checked: Docker's run/rm calls were in flight while the ADDs ran; every ADD and DEL exits 0 and
every docker command succeeds; no address is held by two holders at overlapping times (CNI results,
``docker inspect``, the gateway); while the pods are up the daemon's store has exactly their and
the live containers' endpoints and its IPAM exactly their addresses and the gateway; after removal
no store record beyond a fresh daemon's, no link tagged with the daemon's alias or named after its
objects, no iptables/ip6tables line with its chain prefix, no netns, no Docker object.
"""
from __future__ import annotations

import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.support import harness

N_PODS = 100
CHURNERS = 2          # threads running and removing containers
MAX_CONTAINERS = 40   # started by one churner at most
ALIVE = 3             # up at once per churner
SUBNET = "10.248.0.0/24"


def _links_named_after(network_ids, endpoint_ids) -> list[str]:
    from pynet.drivers.bridge import container_veth_name, default_bridge_name, host_veth_name

    names = {default_bridge_name(n) for n in network_ids}
    names |= {f(e) for e in endpoint_ids for f in (host_veth_name, container_veth_name)}
    return sorted(names & set(harness.list_links()))


class Churn:
    """A thread that runs containers on the network and removes the oldest when ``ALIVE`` are up,
    until told to stop; ``paused()`` holds it between two steps (for a quiet look at the store)."""

    def __init__(self, docker, image, net, name_prefix, errors, spans):
        self.docker, self.image, self.net, self.name_prefix = docker, image, net, name_prefix
        self.errors, self.spans = errors, spans
        self.alive: list[tuple[str, str, float, str]] = []   # (name, address, since, endpoint id)
        self.events: list[float] = []                         # when each run/rm finished
        self.ops: list[tuple[float, float]] = []              # (start, end) of each run/rm
        self.endpoints: set[str] = set()
        self.started = 0
        self.first_up = threading.Event()
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._loop, name=f"churn {name_prefix}", daemon=True)

    def _ok(self, *args) -> bool:
        started = time.monotonic()
        p = self.docker.run(*args, check=False, timeout=180)
        self.ops.append((started, time.monotonic()))
        if p.returncode != 0:
            self.errors.append(f"docker {' '.join(args[:2])}: {p.stderr.strip()}")
        return p.returncode == 0

    def remove_oldest(self) -> None:
        name, ip, since, _ = self.alive.pop(0)
        until = time.monotonic()            # from here on the address may be free again
        if self._ok("rm", "-f", name):
            self.spans.append((ip, f"container {name}", since, until))
            self.events.append(time.monotonic())

    def _step(self) -> None:
        name = f"{self.name_prefix}{self.started}"
        self.started += 1
        if self._ok("run", "-d", "--name", name, "--network", self.net, self.image, "sleep", "3600"):
            self.events.append(time.monotonic())
            info = harness.docker_objects([name])["containers"].get(name) or {}
            ep = (info.get("networks") or {}).get(self.net) or {}
            if not ep.get("ip"):
                self.errors.append(f"container {name} has no address on {self.net}: {info}")
            else:
                self.endpoints.add(ep["endpoint_id"])
                self.alive.append((name, ep["ip"], time.monotonic(), ep["endpoint_id"]))
        self.first_up.set()
        if len(self.alive) >= ALIVE:
            self.remove_oldest()

    def _loop(self) -> None:
        try:
            while not self.stop.is_set() and self.started < MAX_CONTAINERS:
                with self.lock:
                    self._step()
        except Exception as e:  # noqa: BLE001 -- reported with the rest
            self.errors.append(f"churn: {type(e).__name__}: {e}")
        finally:
            self.first_up.set()

    def finish(self) -> None:
        self.stop.set()
        self.thread.join(300)
        if self.thread.is_alive():
            self.errors.append(f"churn {self.name_prefix} did not stop")
        while self.alive:
            self.remove_oldest()

    def during(self, a: float, b: float) -> int:
        return sum(a < t < b for t in self.events)

    def overlapping(self, a: float, b: float) -> int:
        """docker run/rm calls in flight at some time in (a, b).  What matters is that Docker's
        calls reach the daemon while the ADDs do; whether one also *finishes* inside the window
        depends on how fast the ADDs are (100 ADDs in under 10 s can outrun a ``docker run``
        queued behind them), so that is printed, not asserted."""
        return sum(s < b and e > a for s, e in self.ops)


@pytest.mark.timeout(420)
def test_parallel_cni_adds_with_docker_churn(docker, test_image, pynet_daemon_factory, prefix, tmp_path):
    daemon = pynet_daemon_factory("par")
    cni = harness.CniExec(harness.install_cni_binaries(tmp_path / "cnibin"))
    chain_prefix = harness.daemon_chain_prefix(daemon.argv())
    baseline_keys = harness.object_keys(harness.pynet_holdings(daemon.state_dir)["keys"])
    baseline_rules = set(harness.firewall_lines(chain_prefix))
    net = f"{prefix}-pm"
    pods = [(f"{prefix}-pp{i}", f"{prefix}-y{i}") for i in range(N_PODS)]
    made_netns: list[str] = []
    errors: list[str] = []
    spans: list[tuple[str, str, float, float]] = []     # (address, holder, from, until)
    churns: list[Churn] = []
    try:
        docker.run("network", "create", "-d", daemon.name, "--ipam-driver", daemon.name,
                   "--subnet", SUBNET, net)
        net_id = docker.inspect(net, "network")["Id"]
        # Docker records no gateway it was not given: the daemon's network record has it
        (record,) = [n for n in harness.pynet_holdings(daemon.state_dir)["networks"] if n["id"] == net_id]
        gateway = record["ipv4"][0]["gateway"].split("/")[0]
        conf = harness.daemon_cni_conf(daemon, net, SUBNET)
        for _, ns in pods:
            harness.netns_add(ns)
            made_netns.append(ns)

        # -- Docker: containers start and stop on the network during the ADDs and the DELs
        churns = [Churn(docker, test_image, net, f"{prefix}-pc{k}-", errors, spans) for k in range(CHURNERS)]
        for ch in churns:
            ch.thread.start()
        for ch in churns:
            assert ch.first_up.wait(180), "the first container did not start"

        # -- 100 ADDs at once
        added: dict[str, tuple[str, float]] = {}

        def add(cid, ns):
            r = cni.call("ADD", conf, cid, f"/run/netns/{ns}")
            done = time.monotonic()
            if not r.ok or len(r.ips()) != 1:
                errors.append(f"ADD {cid}: {r!r} {r.err.strip()[-300:]}")
                return
            added[cid] = (r.ips()[0], done)

        t0 = time.monotonic()
        with ThreadPoolExecutor(max_workers=N_PODS) as pool:
            list(pool.map(lambda p: add(*p), pods))
        t1 = time.monotonic()

        # -- everything up: with the churn held between two steps, the store holds what is alive
        for ch in churns:
            ch.lock.acquire()
        try:
            st = harness.pynet_holdings(daemon.state_dir)
            alive = [a for ch in churns for a in ch.alive]
        finally:
            for ch in churns:
                ch.lock.release()
        seen_endpoints = {e["id"] for e in st["endpoints"]}
        pod_ips = {cid: ip for cid, (ip, _) in added.items()}
        by_ip: dict[str, list[str]] = {}
        for cid, ip in pod_ips.items():
            by_ip.setdefault(ip, []).append(f"pod {cid}")
        for name, ip, _, _ in alive:
            by_ip.setdefault(ip, []).append(f"container {name}")
        by_ip.setdefault(gateway, []).append("gateway")
        dups = {ip: who for ip, who in by_ip.items() if len(who) > 1}
        live_eps = {eid for _, _, _, eid in alive}
        store_eps = {e.get("container_id") or e["id"]: e.get("address", "").split("/")[0] for e in st["endpoints"]}
        pools = [p for p in st["pools"] if p["pool"] == SUBNET]
        allocated = set(pools[0]["allocated"]) if pools else set()
        want = set(pod_ips.values()) | {ip for _, ip, _, _ in alive} | {gateway}

        # -- everything removed: the pods (at once, the churn still going), then the containers
        deleted: dict[str, float] = {}

        def delete(cid, ns):
            started = time.monotonic()
            r = cni.call("DEL", conf, cid, f"/run/netns/{ns}")
            if not r.ok:
                errors.append(f"DEL {cid}: {r!r} {r.err.strip()[-300:]}")
            deleted[cid] = started

        t2 = time.monotonic()
        with ThreadPoolExecutor(max_workers=N_PODS) as pool:
            list(pool.map(lambda p: delete(*p), pods))
        t3 = time.monotonic()
        for ch in churns:
            ch.finish()
            seen_endpoints |= ch.endpoints
        for cid, (ip, since) in added.items():
            spans.append((ip, f"pod {cid}", since, deleted.get(cid, time.monotonic())))
        for ns in list(made_netns):
            if not harness.netns_del(ns):
                errors.append(f"ip netns del {ns} failed")
            made_netns.remove(ns)
        if docker.run("network", "rm", net, check=False).returncode != 0:
            errors.append(f"docker network rm {net} failed")
        # calls the daemon served (the rest went in-process): its log line per CNI call
        served = len(re.findall(r"plugin_api\.cni: CNI ADD plugin=bridge ", daemon.log_text()))
        print(f"\n[parallel] {N_PODS} ADDs in {t1 - t0:.1f} s ({served} via the daemon's socket), "
              f"{N_PODS} DELs in {t3 - t2:.1f} s; {sum(ch.started for ch in churns)} containers started "
              f"beside them, {sum(ch.overlapping(t0, t1) for ch in churns)} docker run/rm in flight and "
              f"{sum(ch.during(t0, t1) for ch in churns)} finished during the ADDs, {sum(ch.during(t2, t3) for ch in churns)} during the DELs")

        # -- the checks
        overlapping = []
        spans.sort()
        for i, (ip, who, a, b) in enumerate(spans):
            for ip2, who2, a2, b2 in spans[i + 1:]:
                if ip2 != ip:
                    break
                if a < b2 and a2 < b:
                    overlapping.append(f"{ip}: {who} and {who2}")
        after = harness.pynet_holdings(daemon.state_dir)
        problems = {
            "errors": errors,
            "no docker run/rm was in flight while the ADDs ran": not any(ch.overlapping(t0, t1) for ch in churns),
            "duplicate addresses while up": dups,
            "duplicate addresses over time": overlapping,
            "store endpoints != live holders": sorted(set(store_eps) ^ (set(pod_ips) | live_eps)),
            "store addresses != CNI results": sorted(c for c, ip in pod_ips.items() if store_eps.get(c) != ip),
            "IPAM allocated != live holders + gateway": sorted(allocated ^ want),
            "IPAM inconsistent": [p["problems"] for p in pools if p["problems"]],
            "store records left": sorted(harness.object_keys(after["keys"]) - baseline_keys),
            "links left": sorted(set(harness.daemon_links(daemon.name))
                                 | set(_links_named_after([net_id], seen_endpoints))),
            "firewall lines left": sorted(set(harness.firewall_lines(chain_prefix)) - baseline_rules),
            "netns left": sorted(n for n in harness.list_netns() if n.startswith(f"{prefix}-y")),
            "docker objects left": [n for kind in harness.docker_objects([f"{prefix}-p"]).values() for n in kind],
        }
        problems = {k: v for k, v in problems.items() if v}
        assert not problems, "\n".join(f"{k}: {v}" for k, v in problems.items())
    finally:
        for ch in churns:
            ch.stop.set()
        for ns in made_netns:
            harness.netns_del(ns)
        harness.cleanup_links(list(harness.daemon_links(daemon.name)))
