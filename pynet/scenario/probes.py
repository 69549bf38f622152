"""The probe agent: runs inside one scenario namespace (see ``worker``) and
crafts, sends and captures packets there with scapy.

scapy is imported here, after the worker entered the namespace, so its
routing table and interface list are the namespace's.  Nothing outside
``pynet.scenario`` imports this module.

Every send is checked by the agent's :class:`Guard` (the runner checked it
already); every sniff and listener is bounded by a count *and* a time.
"""
from __future__ import annotations

import errno
import itertools
import os
import socket
import threading
import time
from typing import Optional

from pynet.scenario.safety import Guard, SafetyError

MAX_SNIFF_COUNT = 200
MAX_SNIFF_TIME = 20.0
MAX_LISTEN_TIME = 20.0


def _scapy():
    import scapy.all as s  # noqa: PLC0415 - only ever inside a scenario namespace
    s.conf.verb = 0
    s.conf.L3socket = s.L3RawSocket   # the kernel routes and resolves, as for an application
    return s


class ProbeService:
    def __init__(self):
        self.s = _scapy()
        self.ns = ""
        self.guard = Guard()
        self._ids = itertools.count(1)
        self._sniffers: dict[int, tuple] = {}
        self._listeners: dict[int, dict] = {}
        self._stop = threading.Event()
        # the runner's own namespace (the machine's) is never a probe's namespace
        runner_ns = os.environ.get("PYNET_SCENARIO_RUNNER_NETNS", "")
        self.in_root = (not runner_ns) or str(os.stat("/proc/self/ns/net").st_ino) == runner_ns

    # ------------------------------------------------------------------ setup
    def init(self, ns: str, nets: list, ifaces: list) -> dict:
        self.ns = ns
        self.guard = Guard(nets, {ns: ifaces})
        return self.ifinfo()

    def ifinfo(self) -> dict:
        s = self.s
        out = {}
        for name in s.get_if_list():
            try:
                mac = s.get_if_hwaddr(name)
            except Exception:  # noqa: BLE001
                mac = ""
            out[name] = {"mac": mac}
        return out

    def _check(self, dst: str, ifname: Optional[str] = None) -> str:
        if self.in_root:
            raise SafetyError("refused: the probe agent is in the machine's root namespace")
        self.guard.check_send(self.ns, dst, ifname)
        self.s.conf.route.resync()
        out_if = self.s.conf.route.route(dst)[0]
        out_if = self.s.network_name(out_if) if out_if else "lo"
        if ifname is None and out_if not in ("lo",) and out_if != self.s.conf.loopback_name:
            self.guard.check_iface(self.ns, out_if)
        return out_if

    # --------------------------------------------------------------- capture
    def sniff_start(self, hosts: list, count: int = 50, timeout: float = 5.0,
                    marker: str = "", ifaces: Optional[list] = None, udp_port: int = 0) -> int:
        """Capture packets touching any of ``hosts`` (IP src/dst or ARP
        psrc/pdst), or carrying ``marker``, or UDP to ``udp_port``; bounded by
        ``count`` and ``timeout``."""
        s = self.s
        count = max(1, min(int(count), MAX_SNIFF_COUNT))
        timeout = max(0.1, min(float(timeout), MAX_SNIFF_TIME))
        hs = set(hosts)
        mk = marker.encode() if marker else b""

        def match(p) -> bool:
            if mk and mk in bytes(p):
                return True
            if udp_port and p.haslayer(s.UDP) and udp_port in (p[s.UDP].dport, p[s.UDP].sport):
                return True
            if p.haslayer(s.IP) and (p[s.IP].src in hs or p[s.IP].dst in hs):
                return True
            if p.haslayer(s.ARP) and (p[s.ARP].psrc in hs or p[s.ARP].pdst in hs):
                return True
            return False

        if not ifaces:
            ifaces = sorted(self.guard.ifaces.get(self.ns, set()) - {"lo"}) or ["lo"]
        started = threading.Event()
        sn = s.AsyncSniffer(iface=ifaces, count=count, lfilter=match, store=True,
                            started_callback=started.set)
        sn.start()
        if not started.wait(5):
            self._stop_sniffer(sn)
            raise RuntimeError("sniffer did not start")
        # bounded in time as well as by count (AsyncSniffer takes no timeout)
        timer = threading.Timer(timeout, self._stop_sniffer, (sn,))
        timer.daemon = True
        timer.start()
        sid = next(self._ids)
        self._sniffers[sid] = (sn, timer)
        return sid

    @staticmethod
    def _stop_sniffer(sn) -> None:
        try:
            if sn.running:
                sn.stop(join=False)
        except Exception:  # noqa: BLE001 - stopped meanwhile by count
            pass

    def sniff_stop(self, sid: int, grace: float = 0.2) -> list:
        sn, timer = self._sniffers.pop(sid)
        time.sleep(grace)
        timer.cancel()
        self._stop_sniffer(sn)
        sn.join(5)
        res = sn.results or []
        return [(float(p.time), bytes(p), f"[{self.ns}:{getattr(p, 'sniffed_on', '') or '?'}] "
                 f"{p.summary()}") for p in res]

    # -------------------------------------------------------------- listeners
    def listen(self, proto: str, port: int, lifetime: float = 8.0) -> int:
        """A tiny server with a bounded lifetime: TCP accepts (and answers one
        line), UDP receives; peers are recorded."""
        lifetime = max(0.5, min(float(lifetime), MAX_LISTEN_TIME))
        fam = socket.AF_INET
        typ = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
        sock = socket.socket(fam, typ)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("0.0.0.0", int(port)))
        if proto == "tcp":
            sock.listen(16)
        sock.settimeout(0.1)
        lid = next(self._ids)
        rec = {"proto": proto, "port": port, "peers": [], "data": [], "sock": sock}
        deadline = time.monotonic() + lifetime

        def serve():
            try:
                while time.monotonic() < deadline and not self._stop.is_set() and len(rec["peers"]) < 64:
                    try:
                        if proto == "tcp":
                            c, peer = sock.accept()
                            rec["peers"].append(peer[0])
                            try:
                                c.sendall(b"pynet-scenario\n")
                            finally:
                                c.close()
                        else:
                            data, peer = sock.recvfrom(2048)
                            rec["peers"].append(peer[0])
                            rec["data"].append(data.decode("latin-1"))
                    except socket.timeout:
                        continue
                    except OSError:
                        break
            finally:
                sock.close()

        t = threading.Thread(target=serve, daemon=True)
        t.start()
        rec["thread"] = t
        self._listeners[lid] = rec
        return lid

    def listen_result(self, lid: int, stop: bool = True) -> dict:
        rec = self._listeners[lid]
        if stop:
            self._listeners.pop(lid)
            try:
                rec["sock"].close()
            except OSError:
                pass
            rec["thread"].join(2)
        return {"peers": list(rec["peers"]), "data": list(rec["data"])}

    # ------------------------------------------------------------------ sends
    def ping(self, dst: str, timeout: float = 1.5, size: int = 0, df: bool = False) -> dict:
        s = self.s
        self._check(dst)
        payload = b""
        if size:
            payload = b"P" * max(0, int(size) - 28)
        ident = os.getpid() & 0xFFFF
        pkt = s.IP(dst=dst, flags="DF" if df else 0) / s.ICMP(id=ident, seq=1) / s.Raw(payload)
        try:
            ans = s.sr1(pkt, timeout=min(float(timeout), 10.0), verbose=0)
        except OSError as e:
            return {"ok": False, "seen": f"send failed: {os.strerror(e.errno) if e.errno else e}"}
        if ans is None:
            return {"ok": False, "seen": "no reply"}
        if ans.haslayer(s.ICMP) and ans[s.ICMP].type == 0:
            return {"ok": True, "seen": f"echo-reply from {ans[s.IP].src}"}
        icmp = ans[s.ICMP] if ans.haslayer(s.ICMP) else None
        what = f"icmp type {icmp.type} code {icmp.code}" if icmp is not None else ans.summary()
        if icmp is not None and icmp.type == 3:
            what = {0: "net unreachable", 1: "host unreachable", 3: "port unreachable",
                    4: "fragmentation needed", 13: "administratively prohibited"}.get(
                        icmp.code, what)
        return {"ok": False, "seen": f"{what} from {ans[s.IP].src}"}

    def tcp_connect(self, dst: str, port: int, timeout: float = 1.5) -> dict:
        self._check(dst)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.settimeout(min(float(timeout), 10.0))
        try:
            sock.connect((dst, int(port)))
            try:
                banner = sock.recv(64).decode("latin-1").strip()
            except OSError:
                banner = ""
            return {"ok": True, "seen": "connected" + (f" ({banner})" if banner else "")}
        except socket.timeout:
            return {"ok": False, "seen": "timeout (no SYN-ACK)"}
        except ConnectionRefusedError:
            return {"ok": False, "seen": "refused (RST)"}
        except OSError as e:
            return {"ok": False, "seen": errno.errorcode.get(e.errno, str(e)).lower()
                    + f" ({os.strerror(e.errno)})" if e.errno else str(e)}
        finally:
            sock.close()

    def udp_send(self, dst: str, port: int, payload: str) -> dict:
        self._check(dst)
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.sendto(payload.encode(), (dst, int(port)))
            return {"ok": True, "seen": "sent"}
        except OSError as e:
            return {"ok": False, "seen": f"send failed: {os.strerror(e.errno) if e.errno else e}"}
        finally:
            sock.close()

    def _next_hop(self, dst: str):
        s = self.s
        s.conf.route.resync()
        iface, _src, gw = s.conf.route.route(dst)
        iface = s.network_name(iface)
        nh = gw if gw and gw != "0.0.0.0" else dst
        return iface, nh

    def arp(self, dst: str, timeout: float = 1.5, ifname: str = "") -> dict:
        s = self.s
        iface, _ = self._next_hop(dst)
        iface = ifname or iface
        self._check(dst, iface)
        mine = s.get_if_hwaddr(iface)
        src_ip = s.get_if_addr(iface)
        req = s.Ether(src=mine, dst="ff:ff:ff:ff:ff:ff") / s.ARP(op=1, hwsrc=mine, psrc=src_ip, pdst=dst)
        ans = s.srp1(req, iface=iface, timeout=min(float(timeout), 10.0), verbose=0)
        if ans is None or not ans.haslayer(s.ARP) or ans[s.ARP].op != 2:
            return {"ok": False, "mac": "", "seen": f"no is-at for {dst} on {iface}"}
        return {"ok": True, "mac": ans[s.ARP].hwsrc.lower(),
                "seen": f"{dst} is-at {ans[s.ARP].hwsrc.lower()}"}

    def spoof(self, dst: str, port: int, marker: str, src_ip: str = "", src_mac: str = "",
              timeout: float = 1.5) -> dict:
        """Send one UDP datagram with a forged source IP and/or MAC from this
        namespace's own interface toward ``dst`` (next hop resolved by ARP)."""
        s = self.s
        iface, nh = self._next_hop(dst)
        self._check(dst, iface)
        self.guard.check_address(nh)
        r = self.arp(nh, timeout=timeout, ifname=iface)
        if not r["ok"]:
            return {"ok": False, "seen": f"next hop {nh} did not answer ARP"}
        mine = s.get_if_hwaddr(iface)
        pkt = (s.Ether(src=src_mac or mine, dst=r["mac"]) /
               s.IP(src=src_ip or s.get_if_addr(iface), dst=dst) /
               s.UDP(sport=40000, dport=int(port)) / s.Raw(marker.encode()))
        s.sendp(pkt, iface=iface, count=1, verbose=0)
        return {"ok": True, "seen": f"sent {pkt.summary()} on {iface}"}

    def neigh_flush(self) -> dict:
        """Forget every neighbour of this namespace (the next packet to one
        resolves it again, by ARP)."""
        import subprocess

        if self.in_root:
            raise SafetyError("refused: the probe agent is in the machine's root namespace")
        p = subprocess.run(["ip", "neigh", "flush", "all"], capture_output=True, text=True, timeout=10)
        return {"ok": p.returncode == 0, "seen": p.stderr.strip()}

    def vxlan_decode(self, frames: list, udp_port: int = 4789) -> list:
        """The VXLAN frames among captured Ethernet ``frames``: [{vni, inner,
        arp}] (``inner``: scapy's summary of the encapsulated frame; ``arp``:
        it is an ARP frame)."""
        s = self.s
        out = []
        for raw in frames[:MAX_SNIFF_COUNT * 4]:
            p = s.Ether(raw)
            if not p.haslayer(s.UDP) or udp_port not in (p[s.UDP].dport, p[s.UDP].sport):
                continue
            vx = s.VXLAN(bytes(p[s.UDP].payload))
            if not vx.flags & 0x08:          # the I flag: a VNI is present
                continue
            inner = vx.payload
            out.append({"vni": int(vx.vni), "inner": inner.summary(),
                        "arp": bool(inner.haslayer(s.ARP))})
        return out

    # ----------------------------------------------------------------- close
    def close(self) -> None:
        self._stop.set()
        for sn, timer in list(self._sniffers.values()):
            timer.cancel()
            self._stop_sniffer(sn)
        for rec in self._listeners.values():
            try:
                rec["sock"].close()
            except OSError:
                pass
