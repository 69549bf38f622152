"""Plugin benchmark: the pynet daemon measured through its unix socket, as dockerd drives it.

    .venv/bin/python benchmarks/bench_plugin.py [--runs 5] [--endpoints 1000] [--dir /path]
                                                [--only ipam|endpoints]

(a) IPAM in the daemon: IpamDriver.RequestPool on a /24, /16, /8 and an IPv6
    /64, then IpamDriver.RequestAddress posted in a loop over one keep-alive
    connection (dockerd's plugin client keeps its connections alive), then
    IpamDriver.ReleaseAddress of each, then ReleasePool; allocations/s, median of
    ``--runs``.  Printed beside: the same allocator in-process (bench_ipam.py's
    ``rate``, no HTTP), a no-op plugin call (IpamDriver.GetCapabilities: the
    HTTP stack's own ceiling) and RequestAddress with a new connection per
    request.  Then a /16 filled completely over the socket: median time of the
    last 100 allocations over the first 100.
    Goals: >= 5,000 allocations/s on every size, last/first <= 1.2.

(b) Endpoints: NetworkDriver.CreateNetwork (a /16, Docker's IPAM: addresses in
    the requests), then ``--endpoints`` x (CreateEndpoint + Join) -- real bridge
    driver, so one veth pair each on one bridge (Join only answers the names;
    the interface is never moved, no packet is sent) -- then DeleteEndpoint of
    all and DeleteNetwork.  Median time of the last 100 pairs over the first
    100 (goal <= 1.2) and the daemon's resident memory at ``--endpoints``
    endpoints: the sum of VmRSS of the daemon and all its descendants from /proc
    (goal <= 80 MB).  dockerd's own bridge driver is the only peer and cannot
    be driven this way: absolute numbers only.

Never fails on a goal.  Runs its own daemon (harness PynetDaemon: plugin
``ptXXXX-bplug``, own state dir under ``--dir``, own socket and iptables chain
prefix); every link it makes is named from random ids and removed even on
failure.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import secrets
import shutil
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
sys.path.insert(0, ROOT)

from tests.support import harness  # noqa: E402
import bench_ipam  # noqa: E402

RATE_GOAL = 5000.0
RATIO_GOAL = 1.2
RSS_GOAL_MB = 80.0

CASES = bench_ipam.CASES  # (label, pool, allocations per run): same as the in-process bench


# ----------------------------------------------------------------- client
class Client:
    """One keep-alive HTTP/1.1 connection to the plugin socket (as dockerd's Go client)."""

    def __init__(self, path, timeout: float = 60):
        self.path = str(path)
        self.timeout = timeout
        self.conn = None
        self.hdrs = {"Accept": harness.DOCKER_ACCEPT}

    def call(self, method: str, body=None) -> tuple[int, object]:
        data = b"" if body is None else json.dumps(body).encode()
        for attempt in (0, 1):
            if self.conn is None:
                self.conn = harness.UnixHTTPConnection(self.path, timeout=self.timeout)
            try:
                self.conn.request("POST", "/" + method, body=data, headers=self.hdrs)
                resp = self.conn.getresponse()
                raw = resp.read()
                break
            except (ConnectionError, OSError):  # server closed the idle connection
                self.close()
                if attempt:
                    raise
        if resp.will_close:
            self.close()
        return resp.status, (json.loads(raw) if raw.strip() else None)

    def ok(self, method: str, body=None):
        status, out = self.call(method, body)
        if status != 200:
            raise RuntimeError(f"{method} -> {status} {out}")
        return out

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def fresh_call(path, method: str, body=None):
    status, out = harness.post(path, method, body)
    if status != 200:
        raise RuntimeError(f"{method} -> {status} {out}")
    return out


def pool_body(cidr: str) -> dict:
    return {"AddressSpace": "LocalDefault", "Pool": cidr, "SubPool": "", "Options": {},
            "V6": ":" in cidr}


def addr_body(pool_id: str) -> dict:
    return {"PoolID": pool_id, "Address": "", "Options": None}


# ----------------------------------------------------------------- memory
def tree_rss_kb(root_pid: int) -> tuple[int, int]:
    """(sum of VmRSS in kB of root_pid and all its descendants, number of processes)."""
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        children.setdefault(ppid, []).append(int(d))
    total, n, todo = 0, 0, [root_pid]
    while todo:
        pid = todo.pop()
        try:
            with open(f"/proc/{pid}/status") as f:
                for ln in f:
                    if ln.startswith("VmRSS:"):
                        total += int(ln.split()[1])
                        break
            n += 1
        except OSError:
            continue
        todo += children.get(pid, [])
    return total, n


# ----------------------------------------------------------------- (a) IPAM
def ipam_rate(cl: Client, cidr: str, count: int) -> tuple[float, float]:
    """(RequestAddress/s, ReleaseAddress/s) on a fresh pool over the keep-alive connection."""
    pid = cl.ok("IpamDriver.RequestPool", pool_body(cidr))["PoolID"]
    try:
        cl.ok("IpamDriver.RequestAddress", addr_body(pid))  # warm: geometry cache
        body = addr_body(pid)
        addrs = []
        call = cl.call
        t0 = time.perf_counter()
        for _ in range(count):
            status, out = call("IpamDriver.RequestAddress", body)
            if status != 200:
                raise RuntimeError(f"RequestAddress -> {status} {out}")
            addrs.append(out["Address"].split("/")[0])
        t_req = time.perf_counter() - t0
        t0 = time.perf_counter()
        for a in addrs:
            status, out = call("IpamDriver.ReleaseAddress", {"PoolID": pid, "Address": a})
            if status != 200:
                raise RuntimeError(f"ReleaseAddress -> {status} {out}")
        t_rel = time.perf_counter() - t0
        return count / t_req, count / t_rel
    finally:
        cl.ok("IpamDriver.ReleasePool", {"PoolID": pid})


def noop_rate(cl: Client, count: int) -> float:
    t0 = time.perf_counter()
    for _ in range(count):
        cl.ok("IpamDriver.GetCapabilities")
    return count / (time.perf_counter() - t0)


def fresh_conn_rate(sock, cidr: str, count: int) -> float:
    pid = fresh_call(sock, "IpamDriver.RequestPool", pool_body(cidr))["PoolID"]
    try:
        body = addr_body(pid)
        t0 = time.perf_counter()
        for _ in range(count):
            fresh_call(sock, "IpamDriver.RequestAddress", body)
        return count / (time.perf_counter() - t0)
    finally:
        fresh_call(sock, "IpamDriver.ReleasePool", {"PoolID": pid})


def fill_slash16(cl: Client, cidr: str = "10.3.0.0/16") -> dict:
    pid = cl.ok("IpamDriver.RequestPool", pool_body(cidr))["PoolID"]
    try:
        body = addr_body(pid)
        clock = time.perf_counter
        times, addrs = [], []
        t_start = clock()
        while True:
            t0 = clock()
            status, out = cl.call("IpamDriver.RequestAddress", body)
            dt = clock() - t0
            if status != 200:
                break  # exhausted (PoolExhausted): the /16 is full
            times.append(dt)
            addrs.append(out["Address"].split("/")[0])
            if len(times) > 70000:  # bounded: a /16 has 65,534
                raise RuntimeError("more than 70,000 addresses from a /16?")
        total = clock() - t_start
        exhausted = out
        rng = random.Random(16)
        holes = rng.sample(addrs, 100)
        for a in holes:
            cl.ok("IpamDriver.ReleaseAddress", {"PoolID": pid, "Address": a})
        refill = []
        for _ in range(100):
            t0 = clock()
            cl.ok("IpamDriver.RequestAddress", body)
            refill.append(clock() - t0)
        return {"n": len(times), "total": total, "first": statistics.median(times[:100]),
                "last": statistics.median(times[-100:]), "refill": statistics.median(refill),
                "exhausted": exhausted, "p99": sorted(times)[int(len(times) * 0.99)]}
    finally:
        cl.ok("IpamDriver.ReleasePool", {"PoolID": pid})


def part_a(daemon, cl: Client, workdir: str, runs: int) -> None:
    sock = daemon.socket
    print(f"(a) IPAM through the plugin socket, {runs} runs per case, median reported")
    noop = statistics.median(noop_rate(cl, 2000) for _ in range(3))
    print(f"    HTTP stack ceiling: IpamDriver.GetCapabilities (no store work) "
          f"{noop:,.0f} calls/s on a keep-alive connection\n")
    print(f"{'pool':<8} {'allocs/run':>10} {'daemon allocs/s':>16} {'min':>7} {'max':>7}"
          f" {'release/s':>10} {'in-process/s':>13} {'http share':>10}   goal")
    for label, cidr, count in CASES:
        rates, rel, inproc = [], [], []
        for _ in range(runs):  # interleave daemon and in-process runs
            r, rr = ipam_rate(cl, cidr, count)
            rates.append(r)
            rel.append(rr)
            inproc.append(bench_ipam.rate(workdir, cidr, count))
        med, ip = statistics.median(rates), statistics.median(inproc)
        share = 1 - (1 / ip) / (1 / med)  # fraction of one call's time outside the allocator
        print(f"{label:<8} {count:>10} {med:>16,.0f} {min(rates):>7,.0f} {max(rates):>7,.0f}"
              f" {statistics.median(rel):>10,.0f} {ip:>13,.0f} {share:>9.0%}"
              f"   >= {RATE_GOAL:,.0f}/s  {'ok' if med >= RATE_GOAL else 'MISSED'}", flush=True)
    fc = statistics.median(fresh_conn_rate(sock, "10.4.0.0/16", 1000) for _ in range(3))
    print(f"/16 with a new connection per request (harness.post style): {fc:,.0f} allocs/s")

    f = fill_slash16(cl)
    ratio = f["last"] / f["first"]
    print(f"\nfilling a /16 completely through the socket: {f['n']:,} allocations in "
          f"{f['total']:.1f} s ({f['n'] / f['total']:,.0f}/s); then {f['exhausted']}")
    print(f"  median first 100: {f['first'] * 1e6:8.1f} us")
    print(f"  median last 100:  {f['last'] * 1e6:8.1f} us     (p99 of all: {f['p99'] * 1e6:.0f} us)")
    print(f"  last/first ratio: {ratio:8.2f}      goal <= {RATIO_GOAL}  "
          f"{'ok' if ratio <= RATIO_GOAL else 'MISSED'}")
    print(f"  nearly full, after wrap-around (100 random holes): median "
          f"{f['refill'] * 1e6:.1f} us per allocation\n", flush=True)


# ----------------------------------------------------------------- (b) endpoints
def part_b(daemon, cl: Client, n: int, prefix: str, created: dict) -> None:
    b = 200 + int(prefix[2:], 16) % 20  # 10.200-219.0.0/16: few tests use that range
    subnet, gw = f"10.{b}.0.0/16", f"10.{b}.0.1/16"
    net_id = secrets.token_hex(32)
    ep_ids = [secrets.token_hex(32) for _ in range(n)]
    created["net"] = net_id
    created["eps"] = ep_ids
    opts = {"com.docker.network.endpoint.exposedports": [], "com.docker.network.portmap": []}
    rss0, procs0 = tree_rss_kb(daemon.pid)
    print(f"(b) {n} x (CreateEndpoint + Join) on one network {subnet} (real bridge driver)")
    print(f"    daemon RSS before: {rss0 / 1024:.1f} MB ({procs0} process(es))", flush=True)
    t0 = time.perf_counter()
    cl.ok("NetworkDriver.CreateNetwork", {
        "NetworkID": net_id, "IPv4Data": [{"AddressSpace": "LocalDefault", "Pool": subnet,
                                           "Gateway": gw}],
        "IPv6Data": [], "Options": {"com.docker.network.enable_ipv6": False,
                                    "com.docker.network.generic": {}}})
    created["net_live"] = True
    t_net = time.perf_counter() - t0
    t_ce, t_j, t_pair = [], [], []
    clock = time.perf_counter
    t_all = clock()
    for i, ep in enumerate(ep_ids):
        addr = f"10.{b}.{(i + 2) // 256}.{(i + 2) % 256}/16"
        t0 = clock()
        cl.ok("NetworkDriver.CreateEndpoint", {
            "NetworkID": net_id, "EndpointID": ep, "Options": opts,
            "Interface": {"Address": addr, "AddressIPv6": "", "MacAddress": ""}})
        t1 = clock()
        created["live"].add(ep)
        cl.ok("NetworkDriver.Join", {"NetworkID": net_id, "EndpointID": ep, "Options": opts,
                                      "SandboxKey": f"/var/run/docker/netns/{prefix}-none"})
        t2 = clock()
        t_ce.append(t1 - t0)
        t_j.append(t2 - t1)
        t_pair.append(t2 - t0)
        if (i + 1) % 250 == 0:
            print(f"    {i + 1} endpoints, {(clock() - t_all):.1f} s", flush=True)
    total = clock() - t_all
    rss, procs = tree_rss_kb(daemon.pid)
    k = min(100, n // 2)
    med = statistics.median
    ratio = med(t_pair[-k:]) / med(t_pair[:k])
    print(f"    CreateNetwork: {t_net * 1e3:.1f} ms; {n} pairs in {total:.1f} s "
          f"({n / total:,.0f} pairs/s)")
    print(f"    CreateEndpoint median first {k} {med(t_ce[:k]) * 1e3:6.2f} ms, last {k} "
          f"{med(t_ce[-k:]) * 1e3:6.2f} ms")
    print(f"    Join           median first {k} {med(t_j[:k]) * 1e3:6.2f} ms, last {k} "
          f"{med(t_j[-k:]) * 1e3:6.2f} ms")
    print(f"    pair           median first {k} {med(t_pair[:k]) * 1e3:6.2f} ms, last {k} "
          f"{med(t_pair[-k:]) * 1e3:6.2f} ms  (max {max(t_pair) * 1e3:.0f} ms)")
    print(f"  last/first ratio (CreateEndpoint+Join): {ratio:.2f}   goal <= {RATIO_GOAL}  "
          f"{'ok' if ratio <= RATIO_GOAL else 'MISSED'}")
    print(f"  daemon RSS at {n} endpoints: {rss / 1024:.1f} MB ({procs} process(es); "
          f"+{(rss - rss0) / 1024:.1f} MB over idle)   goal <= {RSS_GOAL_MB:.0f} MB  "
          f"{'ok' if rss / 1024 <= RSS_GOAL_MB else 'MISSED'}", flush=True)

    t_del = []
    for ep in ep_ids:
        t0 = clock()
        cl.ok("NetworkDriver.DeleteEndpoint", {"NetworkID": net_id, "EndpointID": ep})
        t_del.append(clock() - t0)
        created["live"].discard(ep)
    t0 = clock()
    cl.ok("NetworkDriver.DeleteNetwork", {"NetworkID": net_id})
    created["net_live"] = False
    print(f"    DeleteEndpoint x{n}: {sum(t_del):.1f} s, median first {k} "
          f"{med(t_del[:k]) * 1e3:.1f} ms, last {k} {med(t_del[-k:]) * 1e3:.1f} ms "
          f"(first ones run with {n} endpoints present); DeleteNetwork "
          f"{(clock() - t0) * 1e3:.1f} ms\n", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--endpoints", type=int, default=1000)
    ap.add_argument("--dir", default=None, help="where the daemon's state dir goes (file system)")
    ap.add_argument("--only", choices=("ipam", "endpoints"), default=None)
    args = ap.parse_args()
    if not harness.is_root():
        print("run as root (plugin socket, links)", file=sys.stderr)
        return 2
    if args.endpoints > 1000:
        print("--endpoints: at most 1000 (a Linux bridge takes 1024 ports)", file=sys.stderr)
        return 2

    lock = harness.RunLock.acquire_new()
    prefix = lock.prefix
    work = tempfile.mkdtemp(prefix=f"{prefix}-bench-plugin-", dir=args.dir)
    name = f"{prefix}-bplug"
    daemon = harness.PynetDaemon(name, harness.PLUGIN_DIR / f"{name}.sock",
                                 os.path.join(work, "state"), log_dir=os.path.join(work, "log"))
    created: dict = {"net": None, "eps": [], "live": set(), "net_live": False}
    cl = None
    try:
        daemon.start()
        cl = Client(daemon.socket)
        cl.ok("Plugin.Activate")
        print(f"plugin {name} (pid {daemon.pid}), state in {work}\n", flush=True)
        if args.only in (None, "ipam"):
            part_a(daemon, cl, work, args.runs)
        if args.only in (None, "endpoints"):
            part_b(daemon, cl, args.endpoints, prefix, created)
        print("(shared machine: other engineers' tests run beside this; numbers are noisy)")
        return 0
    finally:
        try:  # give back what is left while the daemon still runs
            if cl is not None and daemon.running and created["net"]:
                for ep in list(created["live"]):
                    cl.call("NetworkDriver.DeleteEndpoint",
                            {"NetworkID": created["net"], "EndpointID": ep})
                if created["net_live"]:
                    cl.call("NetworkDriver.DeleteNetwork", {"NetworkID": created["net"]})
        except Exception as e:  # noqa: BLE001
            print(f"cleanup through the daemon: {e}", file=sys.stderr)
        if cl is not None:
            cl.close()
        try:
            harness.teardown_daemon(daemon, None, [prefix + "-"])
        except Exception as e:  # noqa: BLE001
            print(f"teardown: {e}", file=sys.stderr)
        if created["net"]:
            harness.cleanup_links(harness.generated_link_names([created["net"]], created["eps"]))
        shutil.rmtree(work, ignore_errors=True)
        lock.release()


if __name__ == "__main__":
    sys.exit(main())
