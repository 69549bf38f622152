"""Run scenarios: build the topology, prove each expectation with packets,
report, tear down (also on errors, SIGINT and SIGTERM).

The runner process itself imports neither scapy nor pyroute2: namespaces'
work happens in workers (``topology``), packets in probe agents (``probes``).
"""
from __future__ import annotations

import ipaddress
import logging
import os
import secrets
import signal
import sys
import time
from dataclasses import dataclass, field
from typing import Optional

from pynet.scenario import report
from pynet.scenario.model import Expectation, Scenario, ScenarioError, load
from pynet.scenario.safety import SafetyError
from pynet.scenario.topology import Place, Topology, cleanup_stale
from pynet.scenario.worker import WorkerError

log = logging.getLogger("pynet.scenario")

SNIFF_COUNT = 100
SNIFF_EXTRA = 4.0


@dataclass
class Result:
    exp: Expectation
    src: str
    dst: str
    passed: bool
    seen: str
    packets: list = field(default_factory=list)    # (ts, bytes, summary)
    pcap: str = ""
    duration: float = 0.0

    @property
    def label(self) -> str:
        return self.exp.ident


class Interrupted(BaseException):
    pass


class Runner:
    def __init__(self, topo: Topology, out_dir: str):
        self.t = topo
        self.scn = topo.scn
        self.out_dir = out_dir

    # ---------------------------------------------------------- resolving
    def place(self, name: str) -> Place:
        return self.t.places[name.split("@")[0]]

    def owner_of(self, addr: str) -> Optional[Place]:
        for p in self.t.places.values():
            if addr in p.addresses.values() and p.kind != "sandbox" or \
                    addr in p.addresses.values() and p.mode in ("netns", "none"):
                return p
        for p in self.t.places.values():
            if addr in p.addresses.values():
                return p
        return None

    def gateway_owner(self, addr: str) -> Optional[Place]:
        for (host, _net), rec in self.t.networks.items():
            if rec.get("gateway") == addr:
                return self.t.places[host]
        return None

    def target(self, ref: str, src: Optional[Place]) -> tuple[str, Optional[Place], str]:
        """(address, place, expected MAC) of ``ref`` as seen from ``src``."""
        if self.scn.kind_of(ref) == "address":
            p = self.owner_of(ref) or self.gateway_owner(ref)
            mac = ""
            if p:
                key = next((k for k, v in p.addresses.items() if v == ref), None)
                mac = p.macs.get(key, "") if key else ""
            return ref, p, mac
        p = self.place(ref)
        if "@" in ref:
            net = ref.split("@", 1)[1]
            return p.addresses.get(net, ""), p, p.macs.get(net, "")
        if p.kind == "sandbox" and p.mode in ("netns", "container") and p.addresses:
            key = next(iter(p.addresses))
            if src is not None and src.kind == "sandbox":
                sbs = self.scn.sandboxes()
                a, b = sbs.get(src.name), sbs.get(p.name)
                shared = [k for k in p.addresses if k in src.addresses and a and b
                          and self.scn.same_network(a, b, k)]
                if shared:
                    key = shared[0]
            return p.addresses[key], p, p.macs.get(key, "")
        if p.kind == "sandbox" and p.mode == "none":
            return "", p, ""
        return p.addresses.get("underlay", ""), p, p.macs.get("underlay", "")

    # ------------------------------------------------------------- probing
    def run_all(self, on_result=None) -> list[Result]:
        out = []
        for exp in self.scn.expectations:
            r = self.run_one(exp)
            out.append(r)
            if on_result:
                on_result(r)
        return out

    def run_one(self, exp: Expectation) -> Result:
        t0 = time.monotonic()
        src = self.place(exp.src)
        dst_addr, dst, mac = self.target(exp.dst, src)
        res = Result(exp, src=exp.src, dst=f"{exp.dst}" + (f" ({dst_addr})" if dst_addr and
                                                              dst_addr != exp.dst else ""),
                     passed=False, seen="")
        try:
            fn = getattr(self, "_probe_" + exp.kind)
            ok, seen, packets = fn(exp, src, dst_addr, dst, mac)
            res.seen, res.packets = seen, packets
            res.passed = ok
        except (SafetyError, WorkerError) as e:
            res.seen = f"error: {e}"
            res.passed = False
        res.duration = time.monotonic() - t0
        if not res.passed:
            res.pcap = self.save_pcap(exp, res.packets)
        return res

    def save_pcap(self, exp: Expectation, packets: list) -> str:
        os.makedirs(self.out_dir, exist_ok=True)
        path = os.path.join(self.out_dir, f"{self.scn.name}-{exp.ident}.pcap")
        report.write_pcap(path, packets)
        return path

    def _check_send(self, src: Place, dst_addr: str) -> None:
        self.t.guard.check_send(src.ns, dst_addr)

    def _capture(self, places: list, hosts: list, exp: Expectation, **kw) -> list:
        """Start sniffers in each distinct namespace; returns handles."""
        nss = []
        for p in places:
            ns = p if isinstance(p, str) else (p.ns if p else None)
            if ns and ns not in nss:
                nss.append(ns)
        self.t.start_agents(nss)
        hs = sorted({h for h in hosts if h})
        return [(ns, self.t.agent(ns).call(
            "sniff_start", hosts=hs, count=SNIFF_COUNT, timeout=exp.timeout + SNIFF_EXTRA, **kw))
            for ns in nss]

    def _collect(self, sniffers: list) -> list:
        pk = []
        for ns, sid in sniffers:
            try:
                pk += self.t.agent(ns).call("sniff_stop", sid=sid)
            except WorkerError as e:
                log.warning("sniffer in %s: %s", ns, e)
        return sorted(pk, key=lambda p: p[0])

    @staticmethod
    def _seen_at(packets: list, ns: str) -> list:
        return [p for p in packets if p[2].startswith(f"[{ns}:")]

    def _send(self, src: Place, dst: Optional[Place], dst_addr: str, exp: Expectation,
              marker: str) -> tuple[bool, str]:
        """One proto-specific attempt; (passed-through, what the sender saw)."""
        a = self.t.agent(src.ns)
        if exp.proto == "icmp":
            r = a.call("ping", dst=dst_addr, timeout=exp.timeout,
                       size=int(exp.params.get("size", 0) or 0),
                       df=bool(exp.params.get("df", exp.kind == "mtu")))
            return r["ok"], r["seen"]
        if exp.proto == "tcp":
            r = a.call("tcp_connect", dst=dst_addr, port=exp.port, timeout=exp.timeout)
            return r["ok"], r["seen"]
        r = a.call("udp_send", dst=dst_addr, port=exp.port, payload=marker)
        return r["ok"], r["seen"]

    def _listen(self, place: Optional[Place], exp: Expectation, port: int):
        if place is None or exp.proto == "icmp":
            return None
        self.t.start_agents([place.ns])
        return place.ns, self.t.agent(place.ns).call(
            "listen", proto=exp.proto, port=port, lifetime=exp.timeout + SNIFF_EXTRA)

    def _listened(self, lst, exp: Expectation, marker: str, wait: float) -> Optional[dict]:
        if lst is None:
            return None
        ns, lid = lst
        a = self.t.agent(ns)
        deadline = time.monotonic() + wait
        while True:
            r = a.call("listen_result", lid=lid, stop=False)
            got = r["peers"] if exp.proto == "tcp" else [d for d in r["data"] if marker in d]
            if got or time.monotonic() >= deadline:
                a.call("listen_result", lid=lid, stop=True)
                return r
            time.sleep(0.05)

    # -- reach / isolated -------------------------------------------------------
    def _traffic(self, exp, src, dst_addr, dst, port=None, extra_hosts=(), capture_at=()):
        if not dst_addr:
            return False, "target has no address (mode none)", []
        self._check_send(src, dst_addr)
        marker = "pynet-" + secrets.token_hex(4)
        port = port or exp.port
        lst = self._listen(dst, exp, exp.params.get("target_port", port) if exp.kind == "dnat" else port)
        sn = self._capture([src, dst, *capture_at], [dst_addr, *src.addresses.values(), *extra_hosts],
                           exp, marker=marker)
        try:
            sent_ok, sent_seen = self._send(src, dst, dst_addr, exp, marker)
            heard = self._listened(lst, exp, marker, exp.timeout if exp.proto == "udp" else 0.3)
        finally:
            packets = self._collect(sn)
        at_dst = [p for p in (self._seen_at(packets, dst.ns) if dst else []) if _ipv4(p[1])]
        if exp.proto == "icmp":
            ok = sent_ok
            seen = sent_seen
        elif exp.proto == "tcp":
            ok = sent_ok and (heard is None or bool(heard["peers"]))
            seen = sent_seen + (f"; listener accepted from {', '.join(sorted(set(heard['peers'])))}"
                                if heard and heard["peers"] else "")
        else:
            got = [] if heard is None else [d for d in heard["data"] if marker in d]
            ok = sent_ok and bool(got)
            seen = (f"datagram received from {', '.join(sorted(set(heard['peers'])))}" if got
                    else ("nothing received" if sent_ok else sent_seen))
        if dst and dst.ns != src.ns:
            seen += f"; target saw {len(at_dst)} IP pkt"
        return ok, seen, packets

    def _probe_reach(self, exp, src, dst_addr, dst, mac):
        ok, seen, pk = self._traffic(exp, src, dst_addr, dst)
        return ok == exp.expect_ok, seen, pk

    _probe_isolated = _probe_reach

    def _probe_mtu(self, exp, src, dst_addr, dst, mac):
        ok, seen, pk = self._traffic(exp, src, dst_addr, dst)
        return ok == exp.expect_ok, seen, pk

    # -- arp ---------------------------------------------------------------------
    def _probe_arp(self, exp, src, dst_addr, dst, mac):
        if not dst_addr:
            return False == exp.expect_ok, "target has no address", []
        self._check_send(src, dst_addr)
        sn = self._capture([src, dst], [dst_addr, *src.addresses.values()], exp)
        try:
            r = self.t.agent(src.ns).call("arp", dst=dst_addr, timeout=exp.timeout)
        finally:
            pk = self._collect(sn)
        got = r["ok"] and (not mac or r["mac"] == mac.lower())
        seen = r["seen"] + (f" (expected {mac})" if r["ok"] and mac and r["mac"] != mac.lower() else "")
        return got == exp.expect_ok, seen, pk

    # -- nat: the source address the target sees ---------------------------------
    def _probe_nat(self, exp, src, dst_addr, dst, mac):
        want = exp.params.get("source")
        if want:
            want = self.target(str(want), None)[0]
        else:
            want = self.t.places[src.host].addresses["underlay"] if src.host else \
                src.addresses.get("underlay", "")
        ok, seen, pk = self._traffic(exp, src, dst_addr, dst, extra_hosts=[want])
        sources = set()
        if dst is not None:
            for _ts, raw, _s in self._seen_at(pk, dst.ns):
                ip = _ipv4(raw)
                if ip and ip[1] == dst_addr:
                    sources.add(ip[0])
        seen = f"target saw source {', '.join(sorted(sources)) or 'nothing'}; {seen}"
        return (want in sources and ok), seen, pk

    # -- dnat: a published port reaches the right sandbox -------------------------
    def _probe_dnat(self, exp, src, dst_addr, dst, mac):
        target = self.place(str(exp.params["reaches"]))
        ok, seen, pk = self._traffic(exp, src, dst_addr, target,
                                     extra_hosts=list(target.addresses.values()),
                                     capture_at=[dst] if dst else [])
        return ok == exp.expect_ok, seen, pk

    # -- spoof: is a forged packet delivered? -------------------------------------
    def _probe_spoof(self, exp, src, dst_addr, dst, mac):
        if not dst_addr:
            return False, "target has no address", []
        self._check_send(src, dst_addr)
        marker = "pynet-spoof-" + secrets.token_hex(4)
        src_ip = exp.params.get("src_ip", "")
        sn = self._capture([src, dst], [dst_addr, src_ip, *src.addresses.values()], exp,
                           marker=marker)
        try:
            r = self.t.agent(src.ns).call("spoof", dst=dst_addr, port=exp.port, marker=marker,
                                          src_ip=src_ip, src_mac=exp.params.get("src_mac", ""),
                                          timeout=exp.timeout)
            time.sleep(min(exp.timeout, 1.0))
        finally:
            pk = self._collect(sn)
        arrived = [p for p in (self._seen_at(pk, dst.ns) if dst else []) if marker.encode() in p[1]]
        if not r["ok"]:
            seen = r["seen"]
        else:
            seen = (f"forged packet arrived at {exp.dst} ({len(arrived)} pkt)" if arrived
                    else f"forged packet did not arrive at {exp.dst}")
        return bool(arrived) == exp.expect_ok, seen, pk

    # -- encap: VXLAN on the underlay ---------------------------------------------
    def _probe_encap(self, exp, src, dst_addr, dst, mac):
        if not dst_addr:
            return False, "target has no address", []
        self._check_send(src, dst_addr)
        ul_ns = self.t.ns_name("ul")
        udp_port = int(exp.params.get("udp_port", 4789))
        no_arp = exp.params.get("inner_arp") is False
        if no_arp:
            # both ends resolve each other afresh during the capture: every ARP
            # request they send is one the overlay could carry
            for p in (src, dst):
                if p is not None:
                    self.t.agent(p.ns).call("neigh_flush")
        sn = self._capture([src, dst, ul_ns], [dst_addr, *src.addresses.values()], exp,
                           udp_port=udp_port)
        try:
            r = self.t.agent(src.ns).call("ping", dst=dst_addr, timeout=exp.timeout)
            sent_seen = r["seen"]
        finally:
            pk = self._collect(sn)
        # decoded by scapy in the underlay's agent (the runner imports no scapy)
        frames = [raw for _ts, raw, _s in self._seen_at(pk, ul_ns)]
        vx = self.t.agent(ul_ns).call("vxlan_decode", frames=frames, udp_port=udp_port) if frames else []
        # only the probe's own frames: the other sandboxes' traffic (IPv6 neighbour discovery,
        # another overlay's flood) crosses the same underlay during the capture
        ends = {dst_addr, *src.addresses.values()}
        vx = [v for v in vx if ends & set(v.get("ips", ()))]
        vnis = {v["vni"] for v in vx}
        arps = sum(1 for v in vx if v["arp"])
        want = int(exp.params["vni"]) if "vni" in exp.params else \
            self.t.vni_of(str(exp.params["network"]))
        seen = (f"underlay carried VXLAN VNI {', '.join(map(str, sorted(vnis)))}" if vnis
                else "no VXLAN on the underlay") + f" (want {want})"
        ok = (want in vnis) == exp.expect_ok
        if no_arp:
            # the sender did ask (an ARP request for the target on its own link),
            # and was answered without the request crossing the underlay
            asked = sum(1 for _ts, raw, _s in self._seen_at(pk, src.ns) if _arp_for(raw, dst_addr))
            seen += f", {arps} inner ARP frame(s), sender's ARP requests {asked}"
            ok = ok and arps == 0 and asked > 0 and r["ok"]
        return ok, seen + f"; ping: {sent_seen}", pk


# ---------------------------------------------------------------- raw parsing
def _ipv4(raw: bytes):
    """(src, dst) of an Ethernet/IPv4 frame, else None (no scapy in the runner)."""
    off = 12
    if len(raw) < 34:
        return None
    et = int.from_bytes(raw[off:off + 2], "big")
    if et == 0x8100:
        off += 4
        et = int.from_bytes(raw[off:off + 2], "big")
    if et != 0x0800:
        return None
    ip = raw[off + 2:]
    return str(ipaddress.IPv4Address(ip[12:16])), str(ipaddress.IPv4Address(ip[16:20]))


def _arp_for(raw: bytes, target: str) -> bool:
    """Is ``raw`` an Ethernet ARP request for ``target``?"""
    if len(raw) < 42 or raw[12:14] != b"\x08\x06" or raw[20:22] != b"\x00\x01":
        return False
    return str(ipaddress.IPv4Address(raw[38:42])) == target


# -------------------------------------------------------------------- driving
def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def run_scenario(scn: Scenario, out_dir: str, printer=print, keep_prefix: Optional[str] = None):
    """Build, probe, tear down one scenario; returns (results, error)."""
    topo = Topology(scn, prefix=keep_prefix)
    results: list[Result] = []
    error = ""
    try:
        printer(f"== scenario {scn.name} ({scn.path}) prefix {topo.prefix}")
        topo.build()
        runner = Runner(topo, out_dir)
        results = runner.run_all()
        # what every host's store asks for is what its kernel holds, after all the probes
        diffs = topo.firewall_diffs()
        if diffs:
            error = "firewall diff not empty after the scenario: " + "; ".join(
                f"{h}:\n{d}" for h, d in sorted(diffs.items()))
    except KeyboardInterrupt:
        raise
    except (WorkerError, ScenarioError, SafetyError, OSError) as e:
        error = f"{type(e).__name__}: {e}"
        tb = getattr(e, "remote_traceback", "")
        if tb and os.environ.get("PYNET_DEBUG"):
            printer(tb)
    except Exception as e:  # noqa: BLE001 - any bug still tears down and reports
        import traceback
        error = f"{type(e).__name__}: {e}"
        if os.environ.get("PYNET_DEBUG"):
            printer(traceback.format_exc())
    finally:
        old = signal.signal(signal.SIGINT, signal.SIG_IGN)   # teardown runs to the end
        try:
            rep = topo.teardown()
        finally:
            signal.signal(signal.SIGINT, old)
        for p in rep.get("problems", []):
            printer(f"   teardown: {p}")
        for k in rep.get("leftovers", []):
            printer(f"   teardown: store record left: {k}")
        if rep.get("leftovers") and not error:
            error = "teardown left store records: " + ", ".join(rep["leftovers"])
    return results, error


def run(paths: list[str], out_dir: str = "", junit: str = "", printer=print) -> int:
    """0 = every expectation passed; 1 = an expectation failed or a scenario
    could not be built; 2 = invalid input; 130 = interrupted."""
    if os.geteuid() != 0:
        printer("pynet scenario run needs root (it creates network namespaces)")
        return 2
    try:
        scns = [load(p) for p in paths]
    except ScenarioError as e:
        printer(f"error: {e}")
        return 2
    out_dir = out_dir or os.path.join(os.getcwd(), "scenario-results")
    old_term = signal.signal(signal.SIGTERM, _raise_interrupt)
    removed = cleanup_stale()
    if removed:
        printer(f"removed leftovers of dead runs: {', '.join(removed)}")
    suites = []
    failed = False
    try:
        for scn in scns:
            t0 = time.monotonic()
            results, error = run_scenario(scn, out_dir, printer)
            printer(report.table(results))
            for r in results:
                if not r.passed:
                    printer(f"   pcap of {r.label}: {r.pcap}")
            if error:
                printer(f"   ERROR: {error}")
            n_fail = sum(not r.passed for r in results)
            printer(f"   {scn.name}: {len(results) - n_fail} passed, {n_fail} failed"
                    + (", scenario error" if error else "") + f" ({time.monotonic() - t0:.1f}s)")
            suites.append((scn, results, error, time.monotonic() - t0))
            failed = failed or n_fail > 0 or bool(error)
    except KeyboardInterrupt:
        printer("interrupted: everything built was torn down")
        if junit:
            report.write_junit(junit, suites)
        return 130
    finally:
        signal.signal(signal.SIGTERM, old_term)
    if junit:
        report.write_junit(junit, suites)
        printer(f"junit: {junit}")
    return 1 if failed else 0


def main_run(args) -> int:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")
    return run(args.files, out_dir=args.out_dir, junit=args.junit)
