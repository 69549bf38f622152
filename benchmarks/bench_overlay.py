"""The overlay's figures (issue 11): an endpoint's creation on one host to its FDB entry on another,
and container-to-container TCP throughput across hosts against a hand-built kernel VXLAN.

    .venv/bin/python benchmarks/bench_overlay.py [--only latency,throughput] [--endpoints 200]
                                                 [--gap 0.02] [--iperf-rounds 3] [--iperf-time 5]

The overlay lab of the acceptance tests (tests/support/overlay.py: three host namespaces on an
underlay switch namespace, a three-member etcd on the underlay, each host's pynet instance and
agent); one pod per host on one overlay (every host instantiates the network).

latency: host 1 creates ``--endpoints`` endpoints, ``--gap`` s apart; hosts 2 and 3's drivers note
when they programmed each one's FDB entry (no polling of the tables on the path measured).  Both
times are CLOCK_MONOTONIC, the machine's.  Printed: the median and 99th percentile against the goals
(median <= 20 ms, p99 <= 100 ms); also when the agents took each event off the watch (the store's
delivery: the floor under the programming), and their pass durations.  Absolute numbers.

throughput: iperf3 (Debian's) TCP from host 1's pod to host 2's pod over the pynet overlay, and over
a VXLAN built by hand between the same host namespaces (a bridge, a nolearning VXLAN device on the
same UDP port and MTU with a static FDB entry, a veth into a pod namespace of its own) -- the kernel's
own VXLAN path, the limit.  Rounds alternate the sides; the ratio of medians (goal >= 0.97).

docker: ``docker run -d`` on an overlay network against a pynet bridge network, one private dockerd
and pynet daemon in host 1's namespace (as tests/overlay/test_overlay_docker.py runs them), rounds
alternating; the ratio of medians (goal <= 1.2).

Everything is named ``po<hex>-`` and removed even on failure.
"""
from __future__ import annotations

import argparse
import ipaddress
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pynet.cni import install as cni_install  # noqa: E402
from tests.support.overlay import OverlayLab, host_address, wait_until  # noqa: E402

GOAL_MEDIAN_MS, GOAL_P99_MS = 20.0, 100.0
THROUGHPUT_GOAL = 0.97
SUBNET = "10.79.0.0/16"
KERNEL_NET = "10.78.0"          # the hand-built VXLAN's pods: .1 on host 1, .2 on host 2


def pct(values: list, q: float) -> float:
    v = sorted(values)
    return v[min(len(v) - 1, max(0, int(round(q * len(v))) - 1))]


def pod_address(i: int) -> str:
    return str(ipaddress.ip_network(SUBNET).network_address + 10 + i)


def attach_pods(lab: OverlayLab, network: str = "bench") -> None:
    """Every host's agent in the cluster and one pod per host on ``network`` (the pod of host i
    is ``lab.namespaces_path("p<i>")`` at pod_address(i))."""
    net = ipaddress.ip_network(SUBNET)
    for h in lab.hosts:
        h.call("join_cluster", reconcile_interval=10.0)
    for i, h in enumerate(lab.hosts):
        conf = {"cniVersion": "1.0.0", "plugin": {
            "type": "pynet-overlay", "isGateway": True, "ipMasq": True,
            "ipam": {"type": "pynet-ipam", "ranges": [[{"subnet": SUBNET}]]},
            "capabilities": {"ips": True}, "pynet": lab.conflist_pynet(i)}}
        h.call("cni_add", name=f"pod{i}", netns_path=lab.pod(str(i)), network=network, cni=conf,
               ifname="eth0", address=pod_address(i), prefixlen=net.prefixlen)


def teardown(lab: OverlayLab) -> None:
    for h in lab.hosts:
        h.call("teardown", call_timeout=300)


# ------------------------------------------------------------------ latency
def latency(lab: OverlayLab, count: int, gap: float, network: str = "bench", profile: bool = False) -> dict:
    """Host 1 creates ``count`` endpoints; -> {"fdb": [(i, s)], "event": [(i, s)], "create": [s],
    "passes": [s]}: per endpoint i and receiving host, creation start to FDB entry programmed
    (fdb) and to the event taken off the watch (event)."""
    h1, receivers = lab.hosts[0], lab.hosts[1:]
    for h in receivers:
        h.call("time_fdb")
    if profile:
        for h in lab.hosts[:2]:
            h.call("profile", on=True)
    made = h1.call("create_endpoints_timed", network=network, count=count, gap=gap, call_timeout=600)
    for h in receivers:
        wait_until(lambda: len(h.call("fdb_timings")) >= count, "every entry on every host", bound=300)
    if profile:
        print("== host 1: create_endpoint ==\n" + h1.call("profile", on=False))
        print("== host 2: agent passes ==\n" + lab.hosts[1].call("profile", on=False))
    out: dict = {"fdb": [], "event": [], "create": h1.call("create_timings"), "passes": []}
    order = list(made)          # creation order: i = endpoints already on the network
    for h in receivers:
        seen, events = h.call("fdb_timings"), h.call("event_timings")
        out["fdb"] += [(i, seen[m] - made[m]) for i, m in enumerate(order)]
        out["event"] += [(i, events[m] - made[m]) for i, m in enumerate(order) if m in events]
        out["passes"] += [p[0] for p in h.call("pass_timings")]
    h1.call("delete_endpoints", network=network, call_timeout=600)
    return out


def print_latency(res: dict, gap: float) -> None:
    fdb = [s * 1000 for _, s in res["fdb"]]
    ev = [s * 1000 for _, s in res["event"]]
    print(f"endpoint on host 1 -> FDB entry on hosts 2 and 3, {len(fdb)} entries, creates {gap * 1000:.0f} ms "
          f"apart (load {os.getloadavg()[0]:.2f}):")
    print(f"  median {statistics.median(fdb):.1f} ms (goal <= {GOAL_MEDIAN_MS:.0f}), "
          f"p99 {pct(fdb, 0.99):.1f} ms (goal <= {GOAL_P99_MS:.0f}), max {max(fdb):.1f} ms")
    print(f"  event taken off the watch: median {statistics.median(ev):.1f} ms, p99 {pct(ev, 0.99):.1f} ms")
    print(f"  create_endpoint on host 1 (cluster record + veth): median "
          f"{statistics.median(res['create']) * 1000:.1f} ms")
    print(f"  agent passes: {len(res['passes'])}, median {statistics.median(res['passes']) * 1000:.1f} ms")


# --------------------------------------------------------------- throughput
def sh(*argv: str, check: bool = True, timeout: float = 60) -> str:
    p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if check and p.returncode:
        raise RuntimeError(f"{' '.join(argv)}: exit {p.returncode}: {p.stderr.strip()[:300]}")
    return p.stdout


def ns_sh(ns: str, *argv: str, **kw) -> str:
    return sh("ip", "netns", "exec", ns, *argv, **kw)


def kernel_vxlan(lab: OverlayLab, network: str = "bench") -> tuple[str, str]:
    """The hand-built VXLAN between hosts 1 and 2 (same UDP port and MTU as pynet's device, another
    VNI), a pod namespace on each end; -> (client pod, server pod) namespace names.  Its links live
    in the lab's namespaces: they go with them."""
    ov = lab.hosts[0].call("overlay", network=network)
    vni, port, mtu = ov["vni"] % 16000000 + 1, ov["info"]["port"], ov["mtu"]
    ends = []
    for i in (0, 1):
        host = f"{lab.prefix}-h{i + 1}"
        pod_path = lab.netns(f"k{i}")
        pod = os.path.basename(pod_path)
        ns_sh(host, "ip", "link", "add", "kbr0", "type", "bridge")
        ns_sh(host, "ip", "link", "add", "kvx0", "mtu", str(mtu), "type", "vxlan", "id", str(vni),
              "dstport", str(port), "local", host_address(i), "dev", "eth0", "nolearning")
        ns_sh(host, "ip", "link", "set", "kvx0", "master", "kbr0")
        ns_sh(host, "ip", "link", "add", "kv0", "mtu", str(mtu), "type", "veth", "peer", "name", "eth0",
              "netns", pod)
        ns_sh(host, "ip", "link", "set", "kv0", "master", "kbr0")
        for dev in ("kbr0", "kvx0", "kv0"):
            ns_sh(host, "ip", "link", "set", dev, "up")
        # the pod's end too (veth's mtu applies to one end only): as pynet's pods, the overlay's MTU
        ns_sh(pod, "ip", "link", "set", "eth0", "mtu", str(mtu))
        ns_sh(pod, "ip", "addr", "add", f"{KERNEL_NET}.{i + 1}/24", "dev", "eth0")
        ns_sh(pod, "ip", "link", "set", "lo", "up")
        ns_sh(pod, "ip", "link", "set", "eth0", "up")
        ends.append((host, pod, ns_sh(pod, "cat", "/sys/class/net/eth0/address").strip()))
    for (host, _, _), (_, _, peer_mac), peer in ((ends[0], ends[1], 1), (ends[1], ends[0], 0)):
        # as pynet programs it: the flood entry and the peer's MAC behind the peer's VTEP
        ns_sh(host, "bridge", "fdb", "append", "00:00:00:00:00:00", "dev", "kvx0", "dst", host_address(peer))
        ns_sh(host, "bridge", "fdb", "replace", peer_mac, "dev", "kvx0", "dst", host_address(peer),
              "self", "permanent")
    return ends[0][1], ends[1][1]


def reach(client: str, address: str) -> None:
    wait_until(lambda: subprocess.run(["ip", "netns", "exec", client, "busybox", "ping", "-c1", "-W1", address],
                                      capture_output=True).returncode == 0, f"{address} from {client}", bound=30)


def iperf(client: str, server: str, address: str, seconds: float) -> float:
    """One iperf3 TCP run client -> server; bits/s received."""
    srv = subprocess.Popen(["ip", "netns", "exec", server, "iperf3", "-s", "-1", "-B", address],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(50):         # bounded: the server listening
            if f"{address}:5201" in ns_sh(server, "ss", "-ltnH", check=False):
                break
            time.sleep(0.05)
        out = ns_sh(client, "iperf3", "-c", address, "-t", str(seconds), "-J", timeout=seconds + 30)
        return json.loads(out)["end"]["sum_received"]["bits_per_second"]
    finally:
        try:
            srv.wait(10)
        except subprocess.TimeoutExpired:
            srv.kill()
            srv.wait(10)


def throughput(lab: OverlayLab, rounds: int, seconds: float) -> dict:
    """-> {"pynet": [bits/s], "kernel": [bits/s]}, rounds alternating which side goes first."""
    pc, ps = (os.path.basename(lab.namespaces_path(t)) for t in ("p0", "p1"))
    reach(pc, pod_address(1))
    kc, ks = kernel_vxlan(lab)
    reach(kc, f"{KERNEL_NET}.2")
    sides = {"pynet": (pc, ps, pod_address(1)), "kernel": (kc, ks, f"{KERNEL_NET}.2")}
    out: dict = {"pynet": [], "kernel": []}
    for r in range(rounds):
        for side in (("pynet", "kernel") if r % 2 == 0 else ("kernel", "pynet")):
            out[side].append(iperf(*sides[side], seconds))
    return out


def print_throughput(res: dict) -> float:
    p, k = statistics.median(res["pynet"]), statistics.median(res["kernel"])
    ratio = p / k
    print(f"iperf3 TCP pod on host 1 -> pod on host 2, {len(res['pynet'])} rounds each "
          f"(load {os.getloadavg()[0]:.2f}):")
    print(f"  pynet overlay {p / 1e9:.2f} Gbit/s (runs {', '.join(f'{x / 1e9:.2f}' for x in res['pynet'])}), "
          f"hand-built kernel VXLAN {k / 1e9:.2f} Gbit/s (runs {', '.join(f'{x / 1e9:.2f}' for x in res['kernel'])})")
    print(f"  ratio {ratio:.3f} (goal >= {THROUGHPUT_GOAL}): {'met' if ratio >= THROUGHPUT_GOAL else 'MISSED'}")
    return ratio


# ------------------------------------------------------------------- docker
DOCKER_GOAL = 1.2
OVERLAY_SUBNET, OVERLAY_GW = "10.79.0.0/24", "10.79.0.1"
BRIDGE_SUBNET, BRIDGE_GW = "10.80.0.0/24", "10.80.0.1"


def docker_run(base: str, bin_dir: str, rounds: int) -> dict:
    """``docker run -d`` (CLI, wall time) on an overlay network and on a pynet bridge network of the
    same private dockerd and pynet daemon in host 1's namespace (tests/support/overlay's DockerHost,
    as tests/overlay/test_overlay_docker.py runs it: its own mount namespace, sockets and data root;
    the machine's dockerd is untouched), rounds alternating the sides; each container removed (untimed) before the next.
    -> {"overlay": [s], "bridge": [s]}"""
    from tests.support.overlay import DockerHost, installed_lab

    with installed_lab(os.path.join(base, "docker"), joined=()) as lab:
        host = DockerHost(lab, 1)
        try:
            host.start()
            host.network("ovb", OVERLAY_SUBNET, OVERLAY_GW)              # the overlay
            host.networks.append("brb")                                  # removed by stop()
            host.docker("network", "create", "-d", host.name, "--ipam-driver", host.name,
                        "--subnet", BRIDGE_SUBNET, "--gateway", BRIDGE_GW, "brb")   # a pynet bridge
            nets = {"overlay": "ovb", "bridge": "brb"}
            out: dict = {"overlay": [], "bridge": []}
            for r in range(rounds + 1):             # round 0: warm-up (image layers, first network use)
                for side in (("overlay", "bridge") if r % 2 == 0 else ("bridge", "overlay")):
                    name = f"{lab.prefix}-{side[0]}{r}"
                    t = time.monotonic()
                    host.docker("run", "-d", "--name", name, "--network", nets[side], host.image, "sleep", "600")
                    if r:
                        out[side].append(time.monotonic() - t)
                    host.docker("rm", "-f", name)
            return out
        finally:
            host.stop()


def print_docker(res: dict) -> float:
    o, b = statistics.median(res["overlay"]), statistics.median(res["bridge"])
    ratio = o / b
    print(f"docker run -d (CLI), {len(res['overlay'])} rounds each (load {os.getloadavg()[0]:.2f}):")
    print(f"  overlay {o * 1000:.0f} ms (min {min(res['overlay']) * 1000:.0f}, max {max(res['overlay']) * 1000:.0f}), "
          f"pynet bridge {b * 1000:.0f} ms (min {min(res['bridge']) * 1000:.0f}, max {max(res['bridge']) * 1000:.0f})")
    print(f"  ratio {ratio:.3f} (goal <= {DOCKER_GOAL}): {'met' if ratio <= DOCKER_GOAL else 'MISSED'}")
    return ratio


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", default="latency,throughput,docker",
                    help="comma-separated: latency, throughput, docker")
    ap.add_argument("--docker-rounds", type=int, default=10)
    ap.add_argument("--endpoints", type=int, default=200)
    ap.add_argument("--gap", type=float, default=0.02, help="seconds between two creates on host 1")
    ap.add_argument("--profile", action="store_true", help="print cProfile of host 1's creates and host 2's passes")
    ap.add_argument("--iperf-rounds", type=int, default=3)
    ap.add_argument("--iperf-time", type=float, default=5.0, help="seconds of one iperf3 run")
    args = ap.parse_args()
    only = set(args.only.split(","))
    base = tempfile.mkdtemp(prefix="pynet-bench-overlay-")
    bin_dir = os.path.join(base, "bin")
    cni_install.install(bin_dir=bin_dir, conf_dir=None)
    if only & {"latency", "throughput"}:
        with OverlayLab(hosts=3, base_dir=base, cni_path=bin_dir, lease_ttl=15) as lab:
            attach_pods(lab)
            if "throughput" in only:
                print_throughput(throughput(lab, args.iperf_rounds, args.iperf_time))
            if "latency" in only:
                print_latency(latency(lab, args.endpoints, args.gap, profile=args.profile), args.gap)
            teardown(lab)
    if "docker" in only:
        print_docker(docker_run(base, bin_dir, args.docker_rounds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
