"""CNI IPAM benchmark: pynet-ipam against host-local, allocating and releasing 1,000 addresses.

    .venv/bin/python benchmarks/bench_cni_ipam.py [--count 1000] [--runs 3] [--rate-calls 2000]

1. Both plugins exec'd as an interface plugin would (CNI_COMMAND=ADD/DEL, an ``ipam`` section in
   stdin, cniVersion 1.0.0), ``--count`` ADDs (distinct container ids, so every lease stays held)
   then as many DELs, timing every call. Per side: median per-call time of the first 100 and the
   last 100 ADDs, their ratio (flatness), and the DEL medians. pynet-ipam runs standalone (each
   process works on the store itself) and with a ``pynet daemon`` on the same state dir.
   Goals: pynet's first-100 median within 2x host-local's; pynet flat (last-100 / first-100 at
   most 1.2) where host-local's grows with every lease held.
2. The allocator inside the daemon: ``--rate-calls`` address requests to a running ``pynet
   daemon`` over its socket, without a process per call -- ``IpamDriver.RequestAddress`` (what
   dockerd sends) and ``POST /Pynet.CNI`` with the ipam plugin (what the shim sends) -- in calls
   per second against host-local's exec'd calls per second (from part 1); and the allocator
   itself (``pynet.ipam.Ipam`` on the daemon's SqliteStore, in this process, one committed
   transaction per address). Goal: at least 20x.

Medians of ``--runs`` runs where a figure is a rate. Everything named ``<prefix>-...`` and
removed at the end, even on failure.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]

from tests.support import harness  # noqa: E402
from tests.support import runtime_harness as rh  # noqa: E402

SUBNET = "10.246.0.0/16"


def ms(x: float) -> str:
    return f"{x * 1000:.2f} ms"


def exec_ipam(bin_dir: Path, conf: dict, command: str, cid: str, netns: str) -> float:
    t0 = time.perf_counter()
    rc, out, err = rh.exec_plugin(bin_dir, conf, command, cid, netns, "eth0", timeout=30,
                                   binary=conf["ipam"]["type"])
    dt = time.perf_counter() - t0
    if rc != 0:
        raise RuntimeError(f"{conf['ipam']['type']} {command} {cid}: rc {rc}: {out.strip()} {err.strip()[-300:]}")
    return dt


def fill_and_release(bin_dir: Path, conf: dict, prefix: str, tag: str, count: int, netns: str) -> dict:
    adds, dels = [], []
    cids = [f"{prefix}-{tag}-{i:05d}" for i in range(count)]
    try:
        for cid in cids:
            adds.append(exec_ipam(bin_dir, conf, "ADD", cid, netns))
    finally:
        for cid in cids[:len(adds) + 1]:
            try:
                dels.append(exec_ipam(bin_dir, conf, "DEL", cid, netns))
            except RuntimeError:
                pass
    return summarize(adds, dels)


def summarize(adds: list[float], dels: list[float], k: int = 100) -> dict:
    """Medians of the first and last ``k`` ADDs and DELs, last/first (flatness), ADDs per second."""
    first = statistics.median(adds[:k])
    last = statistics.median(adds[-k:])
    return {"add_first100": first, "add_last100": last, "flat": last / first,
            "del_first100": statistics.median(dels[:k]), "del_last100": statistics.median(dels[-k:]),
            "rate": len(adds) / sum(adds), "n": len(adds)}


def host_local_conf(name: str, data_dir: Path, subnet: str = SUBNET) -> dict:
    return {"cniVersion": "1.0.0", "name": name, "type": "bridge",
            "ipam": {"type": "host-local", "ranges": [[{"subnet": subnet}]], "dataDir": str(data_dir)}}


def pynet_conf(name: str, state_dir: Path, socket: Path | None, subnet: str = SUBNET) -> dict:
    pyn = {"stateDir": str(state_dir), "daemon": socket is not None, "instance": name}
    if socket is not None:
        pyn["socket"] = str(socket)
    return {"cniVersion": "1.0.0", "name": name, "type": "bridge",
            "ipam": {"type": "pynet-ipam", "ranges": [[{"subnet": subnet}]], "pynet": pyn}}


def rate_runs(daemon: harness.PynetDaemon, state_dir: Path, prefix: str, runs: int, calls: int) -> list[dict]:
    """``runs`` measurements of daemon_rates and allocator_rate, each on a fresh daemon state
    (so every run starts with an empty pool)."""
    out = []
    for i in range(runs):
        daemon.stop()
        subprocess.run(["rm", "-rf", str(state_dir)])
        daemon.start(remove_stale_socket=True)
        out.append(daemon_rates(daemon, state_dir, f"{prefix}-rt{i}", calls))
    for i, r in enumerate(out):
        r["allocator"] = allocator_rate(state_dir.parent / f"alloc-{i}", calls)
    return out


def daemon_rates(daemon: harness.PynetDaemon, state_dir: Path, name: str, calls: int) -> dict:
    """Calls per second into a running daemon: Docker's IpamDriver.RequestAddress and the CNI route."""
    out = {}
    st, body = daemon.post("IpamDriver.RequestPool", {"AddressSpace": "LocalDefault", "Pool": "10.246.0.0/17",
                                                      "Options": {}, "V6": False})
    if st != 200:
        raise RuntimeError(f"RequestPool: {st} {body}")
    pool = body["PoolID"]
    t0 = time.perf_counter()
    for _ in range(calls):
        st, body = daemon.post("IpamDriver.RequestAddress", {"PoolID": pool, "Address": "", "Options": {}})
        if st != 200:
            raise RuntimeError(f"RequestAddress: {st} {body}")
    out["docker_request_address"] = calls / (time.perf_counter() - t0)

    conf = pynet_conf(name + "r", state_dir, daemon.socket)
    conf["ipam"]["ranges"] = [[{"subnet": "10.246.128.0/17"}]]
    t0 = time.perf_counter()
    for i in range(calls):
        cni_route_add(daemon, conf, f"rate{i:06d}")
    out["cni_route_add"] = calls / (time.perf_counter() - t0)
    return out


def cni_route_add(daemon: harness.PynetDaemon, conf: dict, cid: str) -> None:
    """One pynet-ipam ADD through the daemon's ``POST /Pynet.CNI`` (what the shim forwards), without
    a process per call."""
    from pynet.cni.shim import namespace_ids

    net, mnt = namespace_ids()
    env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": cid, "CNI_NETNS": "/proc/self/ns/net",
           "CNI_IFNAME": "eth0", "CNI_PATH": "/nonexistent"}
    st, body = daemon.post("Pynet.CNI", {"plugin": "ipam", "env": env, "stdin": json.dumps(conf),
                                         "stateDir": conf["ipam"]["pynet"]["stateDir"], "netns": net, "mntns": mnt})
    if st != 200 or body.get("code") != 0:
        raise RuntimeError(f"Pynet.CNI ipam ADD: {st} {body}")


def allocator_rate(state_dir: Path, calls: int) -> float:
    """The daemon's allocator itself (pynet.ipam.Ipam on the SqliteStore the daemon opens, one
    committed transaction per address), in this process: no HTTP, no exec."""
    from pynet.ipam import Ipam
    from pynet.root import open_state_dir

    state_dir.mkdir(parents=True, exist_ok=True)
    store = open_state_dir(str(state_dir))
    try:
        ipam = Ipam(store, host_routes=lambda: [])
        pid, _, _ = ipam.request_pool("LocalDefault", "10.246.0.0/16")
        ipam.request_address(pid)
        t0 = time.perf_counter()
        for _ in range(calls):
            ipam.request_address(pid)
        return calls / (time.perf_counter() - t0)
    finally:
        store.close()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--count", type=int, default=1000)
    ap.add_argument("--runs", type=int, default=3, help="runs of the daemon rate measurement")
    ap.add_argument("--rate-calls", type=int, default=2000)
    ap.add_argument("--no-daemon", action="store_true")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("bench_cni_ipam needs root", file=sys.stderr)
        return 2
    lock = harness.RunLock.acquire_new()
    prefix = lock.prefix
    harness.cleanup_stale_host(current=prefix)
    rh.cleanup_stale_runtimes(current=prefix)  # before our own directory exists
    rh.RUNTIME_BASE.mkdir(parents=True, exist_ok=True)
    work = Path(rh.tempfile.mkdtemp(prefix=f"{prefix}-ipam.", dir=rh.RUNTIME_BASE))
    ns = f"{prefix}-ipam"
    daemons = []
    res = {}
    lines = []
    try:
        bin_dir = rh.CniBinDir(work / "bin", reference=True).path
        rh.install_pynet_cni(bin_dir)
        harness.sh("ip", "netns", "add", ns)
        netns = f"/var/run/netns/{ns}"
        print(f"[bench_cni_ipam] prefix {prefix}, {args.count} addresses per side", flush=True)
        sides = {"host-local": host_local_conf(f"{prefix}-hl", work / "host-local"),
                 "pynet-ipam": pynet_conf(f"{prefix}-pi", work / "pynet-state", None)}
        if not args.no_daemon:
            d = harness.PynetDaemon(f"{prefix}-pid", harness.LOCK_DIR / f"{prefix}-pid.sock",
                                    work / "pynet-daemon-state", log_dir=work / "logs")
            d.start(remove_stale_socket=True)
            daemons.append(d)
            sides["pynet-ipam+daemon"] = pynet_conf(f"{prefix}-pid", work / "pynet-daemon-state", d.socket)
        for side, conf in sides.items():
            try:
                res[side] = fill_and_release(bin_dir, conf, prefix, side.replace("+", "-")[:6], args.count, netns)
            except Exception as e:  # noqa: BLE001
                print(f"{side}: FAILED: {e}", flush=True)
                continue
            r = res[side]
            print(f"{side:<18} ADD first-100 median {ms(r['add_first100'])}  last-100 {ms(r['add_last100'])}  "
                  f"last/first {r['flat']:.2f}  DEL first-100 {ms(r['del_first100'])} last-100 "
                  f"{ms(r['del_last100'])}  {r['rate']:.0f} ADD/s  n={r['n']}", flush=True)
        hl = res.get("host-local")
        for side in ("pynet-ipam", "pynet-ipam+daemon"):
            r = res.get(side)
            if not (r and hl):
                lines.append(f"ipam-exec   {side:<18} no data")
                continue
            ratio = r["add_first100"] / hl["add_first100"]
            lines.append(
                f"ipam-exec   {side:<18} ADD first-100 median {ms(r['add_first100'])}  peer (host-local) "
                f"{ms(hl['add_first100'])}  ratio {ratio:.2f} (goal <= 2.0: {'ok' if ratio <= 2 else 'ABOVE GOAL'})  "
                f"flatness last/first pynet {r['flat']:.2f} (goal <= 1.2: {'ok' if r['flat'] <= 1.2 else 'ABOVE GOAL'}) "
                f"host-local {hl['flat']:.2f}  n={r['n']}")
        if daemons and hl:
            runs = rate_runs(daemons[0], work / "pynet-daemon-state", prefix, args.runs, args.rate_calls)
            for key, label in (("docker_request_address", "IpamDriver.RequestAddress"),
                               ("cni_route_add", "Pynet.CNI ipam ADD"),
                               ("allocator", "allocator (Ipam+SqliteStore)")):
                xs = [r[key] for r in runs]
                med = statistics.median(xs)
                ratio = med / hl["rate"]
                lines.append(f"ipam-daemon {label:<26} median {med:.0f} calls/s (min {min(xs):.0f}, max {max(xs):.0f})  "
                             f"peer (host-local exec) {hl['rate']:.0f} calls/s  ratio {ratio:.1f}x "
                             f"(goal >= 20: {'ok' if ratio >= 20 else 'BELOW GOAL'})  n={len(xs)}")
    except Exception:  # noqa: BLE001
        traceback.print_exc()
        return 1
    finally:
        for d in daemons:
            d.stop()
            d.socket.unlink(missing_ok=True)
            harness.flush_firewall(harness.chain_prefix_for(d.name))
        harness.sh("ip", "netns", "del", ns, check=False)
        subprocess.run(["rm", "-rf", str(work)])
        lock.release()
    print("\n== bench_cni_ipam summary ==")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
