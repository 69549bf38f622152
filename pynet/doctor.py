"""``pynet doctor``: what breaks container networking on this host, one line each.

    pynet doctor [--state-dir DIR] [--plugin-name NAME] [--socket PATH] [--chain-prefix P]
                 [--cluster-store etcd://HOST:PORT[,...]] [--docker-socket PATH] [--json]

Every check reads; none changes the host.  Each answers ``ok``, ``fail`` (with what to
do) or ``skip`` (does not apply here: no IPv6 network, no cluster store configured, no
dockerd on a CNI-only node).  Exit code 0 only when nothing failed.

The checks, and why each one matters to pynet:

* ``ip_forward`` (and ``ipv6_forwarding`` when a network has IPv6): without it the host
  routes nothing between a bridge and the world; the bridge driver turns it on when it
  creates a network, but someone may turn it off later.
* ``br_netfilter``: bridged traffic (container to container on one bridge) passes
  iptables only with ``bridge-nf-call-iptables=1`` -- ICC off, anti-spoofing (physdev)
  and hairpin DNAT to a published port depend on it.
* ``iptables_backend``: pynet picks its backend as :func:`pynet.firewall.backend.detect`
  does (``PYNET_IPTABLES_BACKEND``, else what ``iptables --version`` says).  dockerd's is
  seen by where its ``DOCKER`` chains are: ``iptables-nft-save`` or
  ``iptables-legacy-save``.  When they differ, pynet's rules and Docker's sit in two rule
  sets that both run, and Docker's DROPs (or its missing ACCEPTs) win whatever pynet says:
  the classic "works until dockerd restarts" failure.
* ``forward_policy``: pynet's isolation never leans on the FORWARD policy (every promise is
  an explicit rule, the per-network drops included), so ACCEPT is fine.  DROP (what dockerd
  sets) is fine too *while this instance's rules are in FORWARD*: they accept what its
  networks may send.  DROP with pynet networks in the store but none of this instance's
  rules in FORWARD (daemon stopped and rules flushed, another firewall manager wiped them)
  drops every forwarded packet of those networks.
* ``dockerd``: its socket answers ``/_ping`` (skipped when there is no socket at all).
* ``plugin_socket``: the daemon answers ``POST /Plugin.Activate`` on its socket, as dockerd
  asks it.
* ``store``: the SQLite store in the state dir opens read-only and reads.
* ``cluster_store``: the etcd cluster store (``--cluster-store``/``PYNET_CLUSTER_STORE``)
  answers a read.
* ``leftovers``: links (alias ``pynet:<instance>:<id>``, the overlay's
  ``pynet-overlay:<instance>:<id>``, :mod:`pynet.drivers.options`), iptables chains/rules
  (tag ``pynet:<chain prefix>:<owner>``, chain ``<prefix>-USER``...,
  :mod:`pynet.firewall.model`) and nft tables (``ip <chain prefix>``/``ip6 <chain prefix>``,
  :mod:`pynet.firewall.nft`, told from other tables by pynet's sets) of an instance with no
  running daemon -- or of this instance but for objects its store no longer knows.

Host access goes through :class:`Host` (files, commands, unix-socket HTTP, processes), so
the parsing and decisions are unit-tested with a fake host; the netns tests run the real
thing inside throwaway namespaces.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import Callable, Optional

from pynet.config import Config

OK, FAIL, SKIP = "ok", "fail", "skip"
DOCKER_SOCKET = "/var/run/docker.sock"
CLUSTER_STORE_ENV = "PYNET_CLUSTER_STORE"
TIMEOUT = 3.0
# chain-name suffixes pynet's renderer uses (pynet.firewall.render.chain_names)
_CHAIN_SUFFIXES = ("-ISOLATION-STAGE-1", "-ISOLATION-STAGE-2", "-USER", "-ANTISPOOF")
_TAG_RE = re.compile(r'--comment "?pynet:([A-Za-z0-9_.-]+):')
# dockerd's own chains share pynet's suffixes (pynet copies Docker's layout): never an instance
_NOT_INSTANCES = {"DOCKER"}
# The nftables backend names its tables after the chain prefix; a table is pynet's when it
# holds these sets (pynet.firewall.nft declares them in every table of both families), so
# another program's table that happens to share a name is not taken for one.
_NFT_FAMILIES = ("ip", "ip6")
_NFT_SIGNATURE = frozenset({"nets", "same", "icc_off", "published", "spoof_ok"})


@dataclasses.dataclass
class Check:
    name: str
    status: str
    message: str
    fix: str = ""

    def line(self) -> str:
        text = f"{self.status.upper():4}  {self.name}: {self.message}"
        return text + (f" -- {self.fix}" if self.fix and self.status == FAIL else "")


# ------------------------------------------------------------------------ the host (a seam)
def _unix_http(path: str, timeout: float):
    """An http.client connection over a unix socket (imported here: the CLI's start stays light)."""
    import http.client
    import socket

    class UnixHTTP(http.client.HTTPConnection):
        def connect(self):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(self.timeout)
            try:
                s.connect(path)
            except OSError:
                s.close()
                raise
            self.sock = s

    return UnixHTTP("localhost", timeout=timeout)


class Host:
    """The real host, as seen from this process's network namespace."""

    def read(self, path: str) -> Optional[str]:
        try:
            with open(path) as f:
                return f.read().strip()
        except OSError:
            return None

    def exists(self, path: str) -> bool:
        return os.path.exists(path)

    def which(self, exe: str) -> Optional[str]:
        import shutil

        return shutil.which(exe, path="/usr/sbin:/usr/bin:/sbin:/bin:" + os.environ.get("PATH", ""))

    def run(self, argv: list[str]) -> tuple[int, str]:
        """(exit code, stdout); 127 when the program is missing."""
        import subprocess

        try:
            p = subprocess.run(argv, capture_output=True, text=True, timeout=30)
        except FileNotFoundError:
            return 127, ""
        except subprocess.TimeoutExpired:
            return 124, ""
        return p.returncode, p.stdout if p.returncode == 0 else (p.stdout + p.stderr)

    def http(self, sock: str, method: str, path: str, body: Optional[bytes] = None,
             headers: Optional[dict] = None) -> tuple[int, bytes]:
        """One request over a unix socket; OSError when nobody answers."""
        import http.client

        conn = _unix_http(sock, TIMEOUT)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            r = conn.getresponse()
            return r.status, r.read()
        except (http.client.HTTPException, TimeoutError) as e:
            raise OSError(f"{type(e).__name__}: {e}") from None
        finally:
            conn.close()

    def processes(self) -> list[tuple[list[str], dict]]:
        """(argv, environment) of every process we may read."""
        out = []
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    argv = [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
                env = {}
                try:
                    with open(f"/proc/{pid}/environ", "rb") as f:
                        for kv in f.read().split(b"\0"):
                            k, sep, v = kv.partition(b"=")
                            if sep and k.startswith(b"PYNET_"):
                                env[k.decode(errors="replace")] = v.decode(errors="replace")
                except OSError:
                    pass
            except OSError:
                continue
            if argv:
                out.append((argv, env))
        return out

    def pynet_backend(self) -> tuple[str, dict]:
        """pynet's backend name and its (save) tools per family, as the daemon would pick."""
        from pynet.firewall.backend import detect

        b = detect()
        return b.name, {fam: tools[0] for fam, tools in b.tools.items()}

    def cluster_store_read(self, url: str) -> None:
        from pynet import root

        if not url.startswith("etcd://"):
            raise ValueError(f"want etcd://HOST:PORT[,HOST:PORT...], not {url!r}")
        store = root.open_store_url(url, timeout=TIMEOUT)
        try:
            store.get("pynet/doctor")   # a range read: reaches a member with quorum, writes nothing
        finally:
            store.close()

    def store_snapshot(self, state_dir: str) -> dict:
        """networks/endpoints of the SQLite store, opened read-only (never created)."""
        import sqlite3

        from pynet import root

        path = root.store_file(state_dir)
        if not os.path.exists(path):
            raise FileNotFoundError(f"no store {path}")
        # a read-only probe first: a missing or unreadable file must not be created or migrated
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
        try:
            conn.execute("SELECT count(*) FROM kv").fetchone()
        finally:
            conn.close()
        from pynet.cnm.controller import Controller

        store = root.read_state_dir(state_dir)
        try:
            c = Controller(store, ipam=None, drivers={})
            nets, eps = c.networks(), c.endpoints()
        finally:
            store.close()
        return {"networks": nets, "endpoints": eps}


# ------------------------------------------------------------------------ parsing helpers
def daemon_instances(procs: list[tuple[list[str], dict]]) -> tuple[set[str], set[str]]:
    """(plugin names, chain prefixes) of the running ``pynet daemon`` processes."""
    names, prefixes = set(), set()
    for argv, env in procs:
        head = argv[:4]
        is_pynet = any(os.path.basename(a) == "pynet" or a in ("pynet.cli", "pynet") for a in head)
        if not is_pynet or "daemon" not in argv[1:5]:
            continue
        name = _flag(argv, "--plugin-name") or env.get("PYNET_PLUGIN_NAME") or Config.plugin_name
        prefix = _flag(argv, "--chain-prefix") or env.get("PYNET_CHAIN_PREFIX") or Config.chain_prefix
        names.add(name)
        prefixes.add(prefix)
    return names, prefixes


def _flag(argv: list[str], flag: str) -> Optional[str]:
    for i, a in enumerate(argv):
        if a == flag and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith(flag + "="):
            return a[len(flag) + 1:]
    return None


def parse_links(ip_json: str) -> list[tuple[str, str]]:
    """``ip -j link show`` -> [(name, alias)]."""
    try:
        links = json.loads(ip_json or "[]")
    except ValueError:
        return []
    return [(x.get("ifname", ""), x.get("ifalias", "") or "") for x in links if isinstance(x, dict)]


def parse_save(text: str) -> dict:
    """iptables-save text -> {"chains": {table: {chain: policy}}, "tags": {instance: [lines]},
    "rules": {(table, chain): [lines]}}."""
    chains: dict = {}
    rules: dict = {}
    tags: dict = {}
    table = ""
    for line in (text or "").splitlines():
        if line.startswith("*"):
            table = line[1:].strip()
            chains.setdefault(table, {})
        elif line.startswith(":"):
            parts = line[1:].split()
            if parts:
                chains.setdefault(table, {})[parts[0]] = parts[1] if len(parts) > 1 else "-"
        elif line.startswith("-A "):
            chain = line.split()[1]
            rules.setdefault((table, chain), []).append(line)
            m = _TAG_RE.search(line)
            if m:
                tags.setdefault(m.group(1), []).append(f"{table} {line}")
    return {"chains": chains, "tags": tags, "rules": rules}


def chain_instances(saved: dict) -> dict[str, list[str]]:
    """Instance (chain prefix) -> what of it is in the tables: tagged rules, and chains named
    like pynet's (``<prefix>-USER``...) even when empty."""
    found: dict[str, list[str]] = {}
    for inst, lines in saved["tags"].items():
        found.setdefault(inst, []).extend(lines)
    for table, chains in saved["chains"].items():
        for chain in chains:
            for suffix in _CHAIN_SUFFIXES:
                if chain.endswith(suffix) and chain[:-len(suffix)] not in _NOT_INSTANCES:
                    found.setdefault(chain[:-len(suffix)], []).append(f"{table} chain {chain}")
    return found


def nft_instances(nft_json: str) -> dict[str, list[str]]:
    """``nft -j list sets`` -> instance (chain prefix) -> its tables ("ip NAME"...): the ip/ip6
    tables that hold pynet's sets."""
    try:
        items = json.loads(nft_json or "{}").get("nftables", [])
    except (ValueError, AttributeError):
        return {}
    sets: dict[tuple[str, str], set] = {}
    for item in items if isinstance(items, list) else []:
        s = (item.get("set") or item.get("map")) if isinstance(item, dict) else None
        if isinstance(s, dict) and s.get("family") in _NFT_FAMILIES:
            sets.setdefault((s["family"], s.get("table", "")), set()).add(s.get("name"))
    found: dict[str, list[str]] = {}
    for (family, table), names in sorted(sets.items()):
        if table and _NFT_SIGNATURE <= names:
            found.setdefault(table, []).append(f"{family} {table}")
    return found


def has_docker_chains(text: str) -> bool:
    return any(line.startswith(":DOCKER ") or line.startswith(":DOCKER-FORWARD ")
               for line in (text or "").splitlines())


# ------------------------------------------------------------------------ the checks
class Doctor:
    def __init__(self, config: Config, host: Optional[Host] = None,
                 cluster_store: Optional[str] = None, docker_socket: str = DOCKER_SOCKET):
        self.config = config
        self.host = host or Host()
        self.cluster_store = cluster_store
        self.docker_socket = docker_socket
        self._snapshot: Optional[dict] = None
        self._store_error: Optional[str] = None
        self._saves: dict = {}

    # -- shared reads, done once
    def snapshot(self) -> Optional[dict]:
        if self._snapshot is None and self._store_error is None:
            try:
                self._snapshot = self.host.store_snapshot(self.config.state_dir)
            except Exception as e:  # noqa: BLE001 -- reported by the store check
                self._store_error = f"{type(e).__name__}: {e}" if not isinstance(e, OSError) \
                    else str(e)
        return self._snapshot

    def save(self, family: str) -> str:
        """The tables of ``family`` as pynet's backend reads them; KernelError when it cannot
        (the check that needs them fails with the reason instead of judging empty tables)."""
        if family not in self._saves:
            from pynet.errors import KernelError

            name, tools = self.host.pynet_backend()
            rc, out = self.host.run([tools[family]])
            self._saves[family] = out if rc == 0 else KernelError(
                f"{tools[family]} failed (exit {rc}): {' '.join(out.split())[:200]}")
        got = self._saves[family]
        if isinstance(got, Exception):
            raise got
        return got

    def run(self) -> list[Check]:
        checks: list[Callable[[], Check]] = [
            self.check_ip_forward, self.check_ipv6_forwarding, self.check_br_netfilter,
            self.check_iptables_backend, self.check_forward_policy, self.check_dockerd,
            self.check_plugin_socket, self.check_store, self.check_cluster_store,
            self.check_leftovers]
        out = []
        for fn in checks:
            name = fn.__name__[len("check_"):]
            try:
                out.append(fn())
            except Exception as e:  # noqa: BLE001 -- one broken check must not hide the others
                out.append(Check(name, FAIL, f"the check itself failed: {type(e).__name__}: {e}",
                                 "report this as a pynet bug"))
        return out

    def _v6_networks(self) -> bool:
        snap = self.snapshot()
        return bool(snap) and any(n.ipv6 for n in snap["networks"])

    def check_ip_forward(self) -> Check:
        v = self.host.read("/proc/sys/net/ipv4/ip_forward")
        if v == "1":
            return Check("ip_forward", OK, "net.ipv4.ip_forward=1")
        return Check("ip_forward", FAIL, f"net.ipv4.ip_forward={v}: the host routes no container "
                     "traffic between bridges and the outside",
                     "sysctl -w net.ipv4.ip_forward=1 (and set it in /etc/sysctl.d/ to keep it)")

    def check_ipv6_forwarding(self) -> Check:
        if not self._v6_networks():
            return Check("ipv6_forwarding", SKIP, "no network with IPv6 in the store")
        v = self.host.read("/proc/sys/net/ipv6/conf/all/forwarding")
        if v == "1":
            return Check("ipv6_forwarding", OK, "net.ipv6.conf.all.forwarding=1")
        return Check("ipv6_forwarding", FAIL, f"net.ipv6.conf.all.forwarding={v} while networks have "
                     "IPv6: their containers get no routed IPv6",
                     "sysctl -w net.ipv6.conf.all.forwarding=1")

    def check_br_netfilter(self) -> Check:
        # built into some kernels (then no /sys/module entry): the sysctl dir is the witness
        if not self.host.exists("/proc/sys/net/bridge"):
            return Check("br_netfilter", FAIL, "br_netfilter is not loaded: traffic between "
                         "containers on one bridge bypasses iptables (ICC off, anti-spoofing, "
                         "hairpin to published ports)", "modprobe br_netfilter "
                         "(and list it in /etc/modules-load.d/)")
        keys = ["bridge-nf-call-iptables"] + (["bridge-nf-call-ip6tables"] if self._v6_networks() else [])
        bad = []
        for k in keys:
            v = self.host.read(f"/proc/sys/net/bridge/{k}")
            if v != "1":
                bad.append(f"net.bridge.{k}={v}")
        if bad:
            return Check("br_netfilter", FAIL, f"{', '.join(bad)}: bridged traffic bypasses iptables",
                         " ; ".join(f"sysctl -w {b.split('=')[0]}=1" for b in bad))
        return Check("br_netfilter", OK, "loaded; " + ", ".join(f"net.bridge.{k}=1" for k in keys))

    def check_iptables_backend(self) -> Check:
        try:
            name, _ = self.host.pynet_backend()
        except Exception as e:  # noqa: BLE001 -- KernelError: no iptables at all
            return Check("iptables_backend", FAIL, f"pynet finds no iptables backend: {e}",
                         "apt-get install iptables")
        mine = "nft" if name == "nft" else "legacy"
        docker = []
        for variant, exe in (("nft", "iptables-nft-save"), ("legacy", "iptables-legacy-save")):
            if not self.host.which(exe):
                continue
            rc, out = self.host.run([exe, "-t", "filter"])
            if rc == 0 and has_docker_chains(out):
                docker.append(variant)
        forced = os.environ.get("PYNET_IPTABLES_BACKEND")
        how = f"PYNET_IPTABLES_BACKEND={forced}" if forced else "iptables --version"
        if not docker:
            return Check("iptables_backend", OK, f"pynet uses {mine} ({how}); no DOCKER chains in "
                         "this network namespace (dockerd not managing iptables here)")
        if len(docker) == 2:
            return Check("iptables_backend", FAIL, "DOCKER chains in both the nft and the legacy "
                         f"tables (pynet uses {mine}): dockerd ran once with each; both rule sets "
                         "filter every packet", "keep one variant (update-alternatives --config "
                         "iptables), flush the other's tables, restart dockerd and the pynet daemon")
        if docker[0] != mine:
            return Check("iptables_backend", FAIL, f"pynet uses {mine} ({how}) but dockerd's chains "
                         f"are in the {docker[0]} tables: their rules never see each other and "
                         "Docker's drops win", f"run pynet with PYNET_IPTABLES_BACKEND={docker[0]} "
                         "(or switch iptables to one variant and restart dockerd)")
        return Check("iptables_backend", OK, f"pynet and dockerd both use {mine} ({how})")

    def check_forward_policy(self) -> Check:
        try:
            saved = parse_save(self.save("ipv4"))
        except Exception as e:  # noqa: BLE001 -- KernelError: no iptables, no permission
            return Check("forward_policy", FAIL, f"cannot read the tables: {e}",
                         "run as root; apt-get install iptables")
        policy = saved["chains"].get("filter", {}).get("FORWARD", "ACCEPT")
        if policy != "DROP":
            return Check("forward_policy", OK, f"FORWARD policy {policy}; pynet's isolation is "
                         "explicit rules and does not depend on it")
        prefix = self.config.chain_prefix
        own = [line for line in saved["rules"].get(("filter", "FORWARD"), [])
               if f"pynet:{prefix}:" in line]
        snap = self.snapshot() or {"networks": []}
        from pynet import drivers as registry

        # the networks whose forwarded traffic pynet's own FORWARD rules accept (bridge ones)
        bridges = [n for n in snap["networks"] if registry.contributes_firewall(n.driver)]
        if own:
            return Check("forward_policy", OK, f"FORWARD policy DROP; {len(own)} rule(s) of {prefix} "
                         "in FORWARD accept its networks' traffic")
        if not bridges:
            return Check("forward_policy", OK, "FORWARD policy DROP; no bridge network in the store "
                         f"yet ({prefix} adds its rules when it creates one)")
        return Check("forward_policy", FAIL, f"FORWARD policy DROP and no rule of {prefix} in FORWARD "
                     f"while the store has {len(bridges)} bridge network(s): their forwarded traffic "
                     "is dropped", "start the pynet daemon (it puts its rules back; check with "
                     "`pynet firewall diff`), or `iptables -P FORWARD ACCEPT` if the host may route")

    def check_dockerd(self) -> Check:
        sock = self.docker_socket
        if not self.host.exists(sock):
            return Check("dockerd", SKIP, f"no {sock}: no dockerd on this host (CNI only)")
        try:
            status, body = self.host.http(sock, "GET", "/_ping")
        except OSError as e:
            return Check("dockerd", FAIL, f"{sock} does not answer ({e})",
                         "start dockerd (systemctl start docker) or check its log")
        if status != 200:
            return Check("dockerd", FAIL, f"{sock} answered /_ping with {status}",
                         "check dockerd's log")
        return Check("dockerd", OK, f"{sock} answers")

    def check_plugin_socket(self) -> Check:
        sock = self.config.socket_path
        fix = ("start the daemon (systemctl start pynet, or `pynet daemon`); "
               "--socket/--plugin-name must match its own")
        if not self.host.exists(sock):
            return Check("plugin_socket", FAIL, f"no socket {sock}: the pynet daemon is not running",
                         fix)
        try:
            status, body = self.host.http(sock, "POST", "/Plugin.Activate", b"{}",
                                          {"Content-Type": "application/json"})
        except OSError as e:
            return Check("plugin_socket", FAIL, f"{sock} does not answer ({e}): a stopped daemon left "
                         "its socket", fix)
        try:
            implements = json.loads(body or b"{}").get("Implements") or []
        except (ValueError, AttributeError):
            implements = []
        if status != 200 or "NetworkDriver" not in implements:
            return Check("plugin_socket", FAIL, f"{sock} answered Plugin.Activate with {status} "
                         f"{body[:100]!r}: not a pynet daemon", fix)
        return Check("plugin_socket", OK, f"{sock} answers Plugin.Activate ({', '.join(implements)})")

    def check_store(self) -> Check:
        snap = self.snapshot()
        where = self.config.state_dir
        if snap is None:
            return Check("store", FAIL, f"cannot read the store in {where}: {self._store_error}",
                         "check --state-dir (the daemon's), its permissions, and the daemon's log")
        return Check("store", OK, f"{where}: {len(snap['networks'])} network(s), "
                     f"{len(snap['endpoints'])} endpoint(s)")

    def check_cluster_store(self) -> Check:
        url = self.cluster_store
        if not url:
            return Check("cluster_store", SKIP, f"no cluster store configured ({CLUSTER_STORE_ENV})")
        try:
            self.host.cluster_store_read(url)
        except Exception as e:  # noqa: BLE001 -- StoreUnavailable, bad URL, anything: it failed
            return Check("cluster_store", FAIL, f"{url}: {' '.join(str(e).split())}",
                         "check that etcd runs and is reachable from this host")
        return Check("cluster_store", OK, f"{url} answers")

    def check_leftovers(self) -> Check:
        from pynet.drivers.options import LINK_TAG_PREFIXES, parse_alias

        names, prefixes = daemon_instances(self.host.processes())
        own_name, own_prefix = self.config.plugin_name, self.config.chain_prefix
        snap = self.snapshot()
        known = None
        if snap is not None:
            known = {n.id for n in snap["networks"]} | {e.id for e in snap["endpoints"]}
        found = []
        rc, out = self.host.run(["ip", "-j", "link", "show"])
        for ifname, alias in parse_links(out if rc == 0 else ""):
            owner = parse_alias(alias, LINK_TAG_PREFIXES)
            if not owner:
                continue
            inst, oid = owner
            if inst == own_name:
                # this instance's: leftover only if its store no longer knows the object
                if known is not None and oid not in known:
                    found.append(f"link {ifname} ({alias}: not in the store)")
            elif inst not in names:
                found.append(f"link {ifname} ({alias}: no daemon of {inst} runs)")
        for family in ("ipv4", "ipv6"):
            try:
                text = self.save(family)
            except Exception as e:  # noqa: BLE001 -- KernelError
                found.append(f"{family} tables unreadable ({e})")
                continue
            for inst, what in sorted(chain_instances(parse_save(text)).items()):
                if inst == own_prefix or inst in prefixes:
                    continue
                found.append(f"{family} rules/chains of {inst} ({len(what)}; no daemon with "
                             f"--chain-prefix {inst} runs)")
        # the nftables backend's tables (no nft binary: nothing of it can be there to see)
        rc, out = self.host.run(["nft", "-j", "list", "sets"])
        for inst, tables in sorted(nft_instances(out if rc == 0 else "").items()):
            if inst == own_prefix or inst in prefixes:
                continue
            found.append(f"nft table(s) {', '.join(tables)} of {inst} (no daemon with "
                         f"--chain-prefix {inst} runs)")
        if found:
            return Check("leftovers", FAIL, "; ".join(found),
                         "remove links with `ip link del DEV`, rules with "
                         "`pynet firewall flush --chain-prefix PREFIX`, nft tables with "
                         "`nft delete table ip PREFIX` (if it is a CNI-only "
                         "instance without a daemon, it is not a leftover)")
        return Check("leftovers", OK, "no links, rules or nft tables of a dead pynet instance")


# ------------------------------------------------------------------------ the front end
def add_parser(sub, common, parser_class) -> None:
    """``pynet doctor``: hooked into the CLI's subcommands by :func:`pynet.cli.build_parser`."""
    p = sub.add_parser("doctor", parents=[common], help="check what breaks container networking here")
    p.add_argument("--cluster-store", default=None, metavar="etcd://HOST:PORT[,...]",
                   help=f"the etcd cluster store to check (env {CLUSTER_STORE_ENV})")
    p.add_argument("--docker-socket", default=DOCKER_SOCKET, help=f"dockerd's socket (default {DOCKER_SOCKET})")
    p.set_defaults(func=cmd_doctor)


def cmd_doctor(args, config: Config) -> int:
    cluster = args.cluster_store or os.environ.get(CLUSTER_STORE_ENV) or None
    checks = Doctor(config, cluster_store=cluster, docker_socket=args.docker_socket).run()
    failed = [c for c in checks if c.status == FAIL]
    if getattr(args, "json", False):
        print(json.dumps({"ok": not failed, "checks": [dataclasses.asdict(c) for c in checks]},
                         indent=2))
    else:
        for c in checks:
            print(c.line())
    return 1 if failed else 0
