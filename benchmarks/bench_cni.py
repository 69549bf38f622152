"""CNI benchmark: ADD + DEL of pynet's chain against the reference chain, in one run.

    .venv/bin/python benchmarks/bench_cni.py [--rounds 9] [--cri-rounds 7] [--no-cri]

Sides (each on its own bridge and /24 in 10.244.0.0/16):

- ``reference``: Debian's containernetworking-plugins bridge + host-local + portmap (the chain of
  ../shared/reference/cni-ref-bridge-portmap.conflist), cniVersion 1.0.0;
- ``pynet``: pynet-bridge + pynet-ipam, standalone (every plugin process does the work itself);
- ``pynet+daemon``: the same binaries with a ``pynet daemon`` running on the same state dir, which
  the plugins hand the work to.

Measurements (each round alternates the sides; warm-up rounds first; medians):

- ``direct``: the chain exec'd as libcni does (ADD in order with prevResult, DEL in reverse with
  the cached result), one port mapping in runtimeConfig, into a fresh network namespace;
- ``cri``: RunPodSandbox (with a hostPort) + StopPodSandbox through a private containerd 1.6
  (one per side), the way kubelet drives it; RemovePodSandbox afterwards, not timed.

Goals: pynet+daemon at most 1.0x the reference; pynet standalone at most 3x.
Everything is named ``<prefix>-...`` (harness.RunLock) and removed at the end, even on failure.
"""
from __future__ import annotations

import argparse
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

GOALS = {"pynet+daemon": 1.0, "pynet": 3.0}


def fmt(xs: list[float]) -> str:
    return f"median {statistics.median(xs) * 1000:.1f} ms (min {min(xs) * 1000:.1f}, max {max(xs) * 1000:.1f})"


def report(bench: str, results: dict[str, list[float]]) -> list[str]:
    lines = []
    ref = results.get("reference") or []
    for side in ("pynet", "pynet+daemon"):
        xs = results.get(side) or []
        if not xs or not ref:
            lines.append(f"{bench:<12} {side:<13} no data")
            continue
        ratio = statistics.median(xs) / statistics.median(ref)
        goal = GOALS[side]
        verdict = "ok" if ratio <= goal else "ABOVE GOAL"
        lines.append(f"{bench:<12} {side:<13} {fmt(xs)}  peer median {statistics.median(ref) * 1000:.1f} ms "
                     f"(min {min(ref) * 1000:.1f}, max {max(ref) * 1000:.1f})  ratio {ratio:.2f} "
                     f"(goal <= {goal:.1f}: {verdict})  n={len(xs)}")
    return lines


def _chain(kind: str, prefix: str, work: Path, tag: str, taken: set) -> "rh.Chain":
    for i in range(20):  # a /24 of its own
        c = rh.make_chain(kind, prefix, work, f"{tag}{i}" if i else tag)
        if c.subnet not in taken:
            taken.add(c.subnet)
            return c
    raise RuntimeError("no free subnet")


def make_sides(prefix: str, work: Path, bin_dir: Path, with_daemon: bool) -> dict:
    taken: set = set()
    ref = _chain("reference", prefix, work, "bref", taken)
    ref_conf = rh.reference_conflist(ref.name, ref.bridge, ref.subnet, cni_version="1.0.0",
                                     data_dir=str(ref.data_dir), firewall=False)
    pyn = _chain("pynet", prefix, work, "bpyn", taken)
    sides = {"reference": (ref, ref_conf), "pynet": (pyn, pyn.conflist("1.0.0"))}
    if with_daemon:
        pyd = _chain("pynet", prefix, work, "bpyd", taken)
        pyd.start_daemon(log_dir=work / "logs")
        sides["pynet+daemon"] = (pyd, pyd.conflist("1.0.0"))
    return sides


def bench_direct(prefix: str, sides: dict, bin_dir: Path, rounds: int, warmup: int = 2,
                 progress=None) -> dict:
    """{side: [seconds of ADD+DEL]}; ``progress()`` is called after every ADD+DEL (benchmarks/run)."""
    results = {s: [] for s in sides}
    order = list(sides)
    errors = {}
    for r in range(warmup + rounds):
        for side in order[r % len(order):] + order[:r % len(order)]:
            if side in errors:
                continue
            _, conf = sides[side]
            ns = f"{prefix}-bn{r}{side[0]}{len(side)}"
            harness.sh("ip", "netns", "add", ns)
            netns = f"/var/run/netns/{ns}"
            cid = f"{prefix}-bench-{side.replace('+', '-')}-{r}"
            port = rh.free_tcp_port()
            rc = {"portMappings": [{"hostPort": port, "containerPort": 80, "protocol": "tcp"}]}
            try:
                t0 = time.perf_counter()
                res = rh.run_chain(bin_dir, conf, "ADD", cid, netns, runtime_config=rc)
                rh.run_chain(bin_dir, conf, "DEL", cid, netns, runtime_config=rc, prev_result=res)
                dt = time.perf_counter() - t0
                if r >= warmup:
                    results[side].append(dt)
            except Exception as e:  # noqa: BLE001
                errors[side] = str(e)
                try:
                    rh.run_chain(bin_dir, conf, "DEL", cid, netns, runtime_config=rc)
                except Exception:  # noqa: BLE001
                    pass
            finally:
                harness.sh("ip", "netns", "del", ns, check=False)
                if progress is not None:
                    progress()
    for side, e in errors.items():
        print(f"direct       {side:<13} FAILED: {e[:300]}")
    return results


def bench_cri(prefix: str, work: Path, sides: dict, bin_dir: Path, images: Path, rounds: int,
              warmup: int = 1, progress=None) -> tuple[dict, list]:
    ctds = {}
    results = {s: [] for s in sides}
    errors = {}
    try:
        for i, (side, (_, conf)) in enumerate(sides.items()):
            conf_dir = work / f"ctd-conf-{i}"
            rh.write_conflist(conf_dir, conf)
            ctd = rh.Containerd(f"{prefix}-bctd{i}", bin_dir, conf_dir, images, log_dir=work / "logs")
            ctds[side] = ctd
            ctd.start()
            with ctd.cri() as cri:
                cri.wait_network_ready()
        order = list(sides)
        for r in range(warmup + rounds):
            for side in order[r % len(order):] + order[:r % len(order)]:
                if side in errors:
                    continue
                with ctds[side].cri() as cri:
                    port = rh.free_tcp_port()
                    sid = None
                    try:
                        t0 = time.perf_counter()
                        sid = cri.run_pod_sandbox(f"{prefix}-bp{r}", [(80, port, "TCP")], timeout=30)
                        cri.stop_pod_sandbox(sid, timeout=30)
                        dt = time.perf_counter() - t0
                        if r >= warmup:
                            results[side].append(dt)
                    except Exception as e:  # noqa: BLE001
                        errors[side] = str(e).splitlines()[0] if str(e) else repr(e)
                    finally:
                        for s in cri.list_pod_sandboxes():
                            try:
                                cri.remove_pod_sandbox(s.id, timeout=30)
                            except Exception:  # noqa: BLE001
                                pass
                        if progress is not None:
                            progress()
    finally:
        for ctd in ctds.values():
            try:
                if ctd.running:
                    ctd.remove_all_pods(timeout=30)
            finally:
                ctd.cleanup()
    for side, e in errors.items():
        print(f"cri          {side:<13} FAILED: {e[:300]}")
    return results, list(errors)


def open_work(tag: str) -> tuple["harness.RunLock", Path]:
    """The run's prefix (its lock held) and a work dir under the runtimes' base, after removing
    what dead runs left behind (benchmarks/run opens its run the same way)."""
    lock = harness.RunLock.acquire_new()
    harness.cleanup_stale_host(current=lock.prefix)
    rh.cleanup_stale_runtimes(current=lock.prefix)  # before our own directory exists
    rh.RUNTIME_BASE.mkdir(parents=True, exist_ok=True)
    return lock, Path(rh.tempfile.mkdtemp(prefix=f"{lock.prefix}-{tag}.", dir=rh.RUNTIME_BASE))


def cni_bin_dir(work: Path) -> Path:
    """A plugin dir with the reference plugins and pynet's binaries."""
    bin_dir = rh.CniBinDir(work / "bin", reference=True).path
    rh.install_pynet_cni(bin_dir)
    return bin_dir


def close_work(lock: "harness.RunLock", work: Path) -> None:
    """Removes every netns and link of the run's prefix, the work dir, and releases the prefix."""
    harness.cleanup_netns([lock.prefix])
    harness.cleanup_links([lock.prefix])
    rh.unmount_under(work)
    subprocess.run(["rm", "-rf", str(work)])
    lock.release()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=9, help="timed direct-exec rounds per side")
    ap.add_argument("--cri-rounds", type=int, default=7, help="timed CRI rounds per side")
    ap.add_argument("--no-cri", action="store_true")
    ap.add_argument("--no-daemon", action="store_true", help="skip the pynet+daemon side")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("bench_cni needs root", file=sys.stderr)
        return 2
    lock, work = open_work("bench")
    prefix = lock.prefix
    sides = {}
    lines = []
    try:
        bin_dir = cni_bin_dir(work)
        sides = make_sides(prefix, work, bin_dir, not args.no_daemon)
        print(f"[bench_cni] prefix {prefix}, sides: {', '.join(sides)}", flush=True)
        direct = bench_direct(prefix, sides, bin_dir, args.rounds)
        lines += report("direct", direct)
        print("\n".join(lines[-2:]), flush=True)
        if not args.no_cri:
            images = rh.ensure_images(work)
            cri, _ = bench_cri(prefix, work, sides, bin_dir, images, args.cri_rounds)
            lines += report("cri", cri)
            print("\n".join(lines[-2:]), flush=True)
    except Exception:  # noqa: BLE001
        traceback.print_exc()
        return 1
    finally:
        for chain, _ in sides.values():
            chain.cleanup()
        close_work(lock, work)
    print("\n== bench_cni summary ==")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
