"""The e2e harness: dockerd, the test image, pynet daemon processes, and cleanup by name prefix.

Plain Python (no pytest imports), used by ``tests/conftest.py`` and ``tests/e2e/conftest.py``;
imported as ``from tests.support import harness`` (tests, benchmarks).

Naming: every resource a test run creates is named ``<prefix>-...`` where the prefix is
``pt`` + 4 hex digits (``RunLock``). The run holds an flock on ``<LOCK_DIR>/<prefix>.lock`` for
its whole life, so a later run can tell leftovers of a crashed run (lock free) from resources of
a run still going on beside it (lock held) and removes only the former (``cleanup_stale_*``).

Run as a script for a stub Docker plugin (used to remove networks whose plugin is gone, and by
the smoke test):  python tests/support/harness.py stub-plugin SOCKET
"""
from __future__ import annotations

import contextlib
import fcntl
import http.client
import http.server
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import socketserver
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, Iterable, Sequence

REPO = Path(__file__).resolve().parents[2]
DOCKER = os.environ.get("PYNET_DOCKER", "/usr/bin/docker")
DOCKER_SH = REPO / "scripts" / "lib" / "docker.sh"
TEST_IMAGE = os.environ.get("PYNET_TEST_IMAGE", "pynet-test:latest")
PLUGIN_DIR = Path("/run/docker/plugins")
METRICS_DIR = Path("/run/pynet")  # pynet.metrics.SOCKET_DIR
PREFIX_RE = re.compile(r"^pt[0-9a-f]{4}$")
STALE_NAME_RE = re.compile(r"^(pt[0-9a-f]{4})-")
DOCKER_ACCEPT = "application/vnd.docker.plugins.v1.2+json"
BUILTIN_NET_DRIVERS = {"bridge", "host", "null", "none", "overlay", "macvlan", "ipvlan"}
BUILTIN_IPAM_DRIVERS = {"default", "null", ""}


def _lock_dir() -> Path:
    for d in (Path("/run/pynet-tests"), Path(tempfile.gettempdir()) / "pynet-tests"):
        try:
            d.mkdir(parents=True, exist_ok=True)
            if os.access(d, os.W_OK):
                return d
        except OSError:
            continue
    raise RuntimeError("no writable directory for pynet test run locks")


LOCK_DIR = _lock_dir()


def results_dir() -> Path:
    d = Path(os.environ.get("PYNET_TEST_RESULTS", REPO / "test-results"))
    d.mkdir(parents=True, exist_ok=True)
    return d


def is_root() -> bool:
    return os.geteuid() == 0


def sh(*args: str, check: bool = True, timeout: float = 120, input: str | None = None,
       env: dict | None = None) -> subprocess.CompletedProcess:
    """Runs a command, capturing text output; raises with stdout/stderr in the message on failure."""
    kw = {"input": input} if input is not None else {"stdin": subprocess.DEVNULL}
    proc = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=timeout,
                          env=env, **kw)
    if check and proc.returncode != 0:
        raise CommandError(proc.returncode, proc.args, proc.stdout, proc.stderr)
    return proc


class CommandError(subprocess.CalledProcessError):
    """CalledProcessError whose message shows the output."""

    def __str__(self) -> str:
        return (f"{' '.join(map(str, self.cmd))} -> exit {self.returncode}\n"
                f"stdout: {(self.stdout or '').strip()}\nstderr: {(self.stderr or '').strip()}")


def terminate(proc: subprocess.Popen, timeout: float) -> None:
    """SIGTERM and wait; SIGKILL after ``timeout`` (a process that ignores TERM must not hang
    the run's teardown)."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


# --------------------------------------------------------------------------- run prefix + lock

class RunLock:
    """The run's prefix, held as an flock for as long as the run lives (released on exit/crash)."""

    def __init__(self, prefix: str, fd: int):
        self.prefix = prefix
        self._fd = fd

    @classmethod
    def acquire_new(cls, attempts: int = 50) -> "RunLock":
        for _ in range(attempts):
            prefix = "pt" + secrets.token_hex(2)
            fd = os.open(LOCK_DIR / f"{prefix}.lock", os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                same = os.fstat(fd).st_ino == os.stat(LOCK_DIR / f"{prefix}.lock").st_ino
            except (BlockingIOError, FileNotFoundError):
                same = False
            if not same:  # held by a live run, or unlinked under us by a cleaner
                os.close(fd)
                continue
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            return cls(prefix, fd)
        raise RuntimeError("could not pick a free pynet test prefix")

    def release(self) -> None:
        if self._fd >= 0:
            try:
                os.unlink(LOCK_DIR / f"{self.prefix}.lock")
            except OSError:
                pass
            os.close(self._fd)
            self._fd = -1


def prefix_alive(prefix: str) -> bool:
    """True when a running test run (another process, or this one) holds the prefix's lock."""
    path = LOCK_DIR / f"{prefix}.lock"
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def stale_prefixes(names: Iterable[str], current: str | None = None) -> set[str]:
    """Prefixes (``ptXXXX``) among names ``ptXXXX-...`` that belong to no live run.

    ``current`` is always included when it appears: the caller holds it, so its leftovers are
    from an earlier crashed run that happened to draw the same prefix."""
    found = set()
    for n in names:
        m = STALE_NAME_RE.match(n)
        if m:
            found.add(m.group(1))
    return {p for p in found if p == current or not prefix_alive(p)}


def _matches(name: str, prefixes: Iterable[str]) -> bool:
    return any(p and name.startswith(p) for p in prefixes)


# --------------------------------------------------------------------------- links and netns

def list_links() -> list[str]:
    out = sh("ip", "-o", "link", "show", check=False).stdout
    names = []
    for line in out.splitlines():
        parts = line.split(": ", 2)
        if len(parts) >= 2:
            names.append(parts[1].split("@", 1)[0].strip())
    return names


def cleanup_links(prefixes: Iterable[str]) -> list[str]:
    """Deletes host links whose names start with any of ``prefixes`` (veth peers go with them).

    The hook for the daemon's own generated names: pass its prefixes here (or add them to a
    ``PynetDaemon.link_prefixes``) once the core's naming is known."""
    prefixes = [p for p in prefixes if p]
    removed = []
    if not prefixes:
        return removed
    for name in list_links():
        if _matches(name, prefixes):
            if sh("ip", "link", "del", "dev", name, check=False).returncode == 0:
                removed.append(name)
    return removed


def list_netns() -> list[str]:
    out = sh("ip", "netns", "list", check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def cleanup_netns(prefixes: Iterable[str]) -> list[str]:
    prefixes = [p for p in prefixes if p]
    removed = []
    for name in list_netns():
        if _matches(name, prefixes):
            if sh("ip", "netns", "del", name, check=False).returncode == 0:
                removed.append(name)
    return removed


def cleanup_stale_host(current: str | None = None) -> list[str]:
    """Removes links and netns named ``ptXXXX-...`` of runs that are gone (and of ``current``)."""
    if not is_root():
        return []
    removed = cleanup_stale_private_dockerds(current)  # first: it holds its netns
    netns = list_netns()
    gone = sorted(stale_prefixes(netns, current))
    removed += cleanup_netns(gone)
    links = list_links()
    gone = sorted(stale_prefixes(links, current))
    removed += cleanup_links(gone)
    # the plugin sockets of dead test daemons, and their metrics sockets (/run/pynet/<name>-metrics.sock)
    socks = [*(PLUGIN_DIR.glob("pt*-*.sock") if PLUGIN_DIR.is_dir() else []),
             *(METRICS_DIR.glob("pt*-*-metrics.sock") if METRICS_DIR.is_dir() else [])]
    for sock in socks:
        if sock.name.split("-", 1)[0] in stale_prefixes([sock.name], current) and not socket_answers(sock):
            sock.unlink(missing_ok=True)
            removed.append(str(sock))
    removed += cleanup_stale_firewall(current)
    remove_dead_locks()
    return removed


def cleanup_stale_firewall(current: str | None = None) -> list[str]:
    """Flushes the iptables rules of test daemons (tag ``pynet:PTXXXX....:``) of runs that are gone."""
    found = set()
    for save in ("iptables-save", "ip6tables-save"):
        try:
            text = sh(save, check=False, timeout=30).stdout
        except (OSError, subprocess.SubprocessError):
            continue
        found |= set(re.findall(r"pynet:(PT[0-9A-F]{4}[0-9A-F]*):", text))
    try:  # the nftables backend's tables (named after the chain prefix)
        text = sh("nft", "list", "tables", check=False, timeout=30).stdout
        found |= set(re.findall(r"^table ip6? (PT[0-9A-F]{4}[0-9A-F]*)$", text, re.M))
    except (OSError, subprocess.SubprocessError):
        pass
    removed = []
    for cp in sorted(found):
        if stale_prefixes([cp[:6].lower() + "-x"], current) and flush_firewall(cp) is None:
            removed.append(f"firewall {cp}")
    return removed


def remove_dead_locks() -> None:
    """Deletes lock files of runs that are gone (RunLock.acquire_new copes with the race)."""
    for path in LOCK_DIR.glob("pt*.lock"):
        try:
            fd = os.open(path, os.O_RDWR)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            path.unlink(missing_ok=True)
        except BlockingIOError:
            pass
        finally:
            os.close(fd)


# --------------------------------------------------------------------------- HTTP over a unix socket

class UnixHTTPConnection(http.client.HTTPConnection):
    """http.client over a unix stream socket: ``UnixHTTPConnection('/run/docker/plugins/x.sock')``."""

    def __init__(self, path: str | os.PathLike, timeout: float = 30):
        super().__init__("localhost", timeout=timeout)
        self.unix_path = str(path)

    def connect(self) -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        try:
            s.connect(self.unix_path)
        except OSError:
            s.close()
            raise
        self.sock = s


def post(path: str | os.PathLike, method: str, body=None, timeout: float = 30,
         headers: dict | None = None) -> tuple[int, object]:
    """POSTs to ``/<method>`` on a unix socket as dockerd does; returns (status, parsed JSON).

    ``body``: dict/list (sent as JSON), str/bytes (sent raw) or None (empty body, as dockerd sends
    for Activate). The reply is parsed as JSON; an empty reply gives None, a non-JSON one its text.
    """
    if body is None:
        data = b""
    elif isinstance(body, bytes):
        data = body
    elif isinstance(body, str):
        data = body.encode()
    else:
        data = json.dumps(body).encode()
    url = method if method.startswith("/") else "/" + method
    hdrs = {"Accept": DOCKER_ACCEPT}
    hdrs.update(headers or {})
    conn = UnixHTTPConnection(path, timeout=timeout)
    try:
        conn.request("POST", url, body=data, headers=hdrs)
        resp = conn.getresponse()
        raw = resp.read()
        status = resp.status
    finally:
        conn.close()
    text = raw.decode("utf-8", errors="replace")
    if not text.strip():
        return status, None
    try:
        return status, json.loads(text)
    except ValueError:
        return status, text


def socket_answers(path: str | os.PathLike, timeout: float = 2) -> bool:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(str(path))
        return True
    except OSError:
        return False
    finally:
        s.close()


# --------------------------------------------------------------------------- stub Docker plugin

class _StubHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):  # noqa: N802
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        self.server.requests.append((self.path, body))  # type: ignore[attr-defined]
        answers = {
            "/Plugin.Activate": {"Implements": ["NetworkDriver", "IpamDriver"]},
            "/NetworkDriver.GetCapabilities": {"Scope": "local", "ConnectivityScope": "local"},
            "/IpamDriver.GetCapabilities": {"RequiresMACAddress": False},
            "/IpamDriver.GetDefaultAddressSpaces": {"LocalDefaultAddressSpace": "pynet-stub-local",
                                                    "GlobalDefaultAddressSpace": "pynet-stub-global"},
        }
        out = json.dumps(answers.get(self.path, {})).encode()
        self.send_response(200)
        self.send_header("Content-Type", DOCKER_ACCEPT)
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def address_string(self):  # unix sockets have no peer address
        return "unix"

    def log_message(self, fmt, *args):
        pass


class StubPlugin(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    """A Docker network+IPAM plugin that says yes to everything (no IPAM pools: use it with
    ``--ipam-driver default``). Lets ``docker network rm``/``docker rm -f`` finish for networks
    whose real plugin is gone; also stands in for the daemon in the harness smoke test."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.requests: list[tuple[str, bytes]] = []
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.unlink(missing_ok=True)
        super().__init__(str(self.path), _StubHandler)
        self._thread: threading.Thread | None = None

    def start(self) -> "StubPlugin":
        self._thread = threading.Thread(target=self.serve_forever, name=f"stub {self.path}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
        self.path.unlink(missing_ok=True)


# --------------------------------------------------------------------------- docker

class Docker:
    """Debian's docker client (/usr/bin/docker, never the Docker 28 client on PATH)."""

    def __init__(self, binary: str = DOCKER):
        self.binary = binary

    def run(self, *args: str, check: bool = True, timeout: float = 180,
            input: str | None = None) -> subprocess.CompletedProcess:
        return sh(self.binary, *args, check=check, timeout=timeout, input=input)

    def inspect(self, name: str, kind: str | None = None) -> dict:
        """Parsed ``docker inspect`` of one object; kind: None, "container", "network", "image"..."""
        args = [kind, "inspect", name] if kind else ["inspect", name]
        data = json.loads(self.run(*args).stdout)
        return data[0] if isinstance(data, list) else data

    def container_names(self) -> list[str]:
        return self.run("ps", "-a", "--format", "{{.Names}}").stdout.split()

    def network_names(self) -> list[str]:
        return self.run("network", "ls", "--format", "{{.Name}}").stdout.split()

    def image_exists(self, ref: str) -> bool:
        return self.run("image", "inspect", ref, check=False).returncode == 0


def dockerd_up(docker: str = DOCKER) -> bool:
    try:
        return sh(docker, "info", check=False, timeout=20).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def private_docker_host() -> str:
    """``DOCKER_HOST`` when the run addresses a dockerd of its own rather than the machine's (the
    sub-run of tests/e2e/test_docker_legacy.py: a ``PrivateDockerd`` in a namespace); "" else.
    Such a run never starts, stops or cleans the machine's dockerd."""
    return os.environ.get("DOCKER_HOST", "")


def ensure_dockerd(log: Path | None = None) -> None:
    """Starts dockerd as scripts/test does (scripts/lib/docker.sh) unless it answers."""
    if dockerd_up():
        return
    if private_docker_host():  # scripts/lib/docker.sh would start the machine's in its place
        raise RuntimeError(f"the dockerd at DOCKER_HOST={private_docker_host()} is not answering")
    log = log or results_dir() / "dockerd.log"
    p = sh("bash", DOCKER_SH, "ensure-dockerd", log, check=False, timeout=240)
    if p.returncode != 0:
        raise RuntimeError(f"could not start dockerd:\n{p.stderr}")


def ensure_test_image(image: str = TEST_IMAGE) -> str:
    if Docker().image_exists(image):
        return image
    env = dict(os.environ, PYNET_TEST_IMAGE=image)
    p = sh("bash", DOCKER_SH, "ensure-image", check=False, timeout=300, env=env)
    if p.returncode != 0:
        raise RuntimeError(f"could not build {image}:\n{p.stderr}")
    return image


def _plugin_socket(driver: str) -> Path:
    return PLUGIN_DIR / f"{driver}.sock"


def cleanup_docker(docker: Docker, prefixes: Iterable[str]) -> list[str]:
    """Removes containers, then networks, whose names start with any of ``prefixes``.

    A network whose remote driver no longer answers would make dockerd wait ~30 s looking for the
    plugin and then refuse; a StubPlugin is put on that socket for the duration."""
    prefixes = [p for p in prefixes if p]
    if not prefixes:
        return []
    removed: list[str] = []
    networks = [n for n in docker.network_names() if _matches(n, prefixes)]
    containers = [c for c in docker.container_names() if _matches(c, prefixes)]
    stubs: list[StubPlugin] = []
    dead_drivers: set[str] = set()
    infos: list[dict] = []
    try:
        drivers = set()
        for n in networks:
            try:
                info = docker.inspect(n, "network")
            except subprocess.CalledProcessError:
                continue
            infos.append(info)
            drivers.add(info.get("Driver") or "")
            drivers.add(((info.get("IPAM") or {}).get("Driver")) or "")
        for d in sorted(drivers - BUILTIN_NET_DRIVERS - BUILTIN_IPAM_DRIVERS):
            if "/" in d or ":" in d:  # managed (v2) plugins are not ours
                continue
            sock = _plugin_socket(d)
            if not socket_answers(sock):
                stubs.append(StubPlugin(sock).start())
                dead_drivers.add(d)
        if containers:
            docker.run("rm", "-f", "-v", *containers, check=False, timeout=300)
            removed += containers
        for n in networks:
            if docker.run("network", "rm", n, check=False, timeout=120).returncode != 0:
                try:  # endpoints of containers not named with the prefix
                    for c in (docker.inspect(n, "network").get("Containers") or {}).values():
                        docker.run("network", "disconnect", "-f", n, c.get("Name", ""), check=False)
                except subprocess.CalledProcessError:
                    pass
                docker.run("network", "rm", n, check=False, timeout=120)
            removed.append(n)
    finally:
        for s in stubs:
            s.stop()
    if dead_drivers and is_root():  # nobody left to delete the dead daemon's bridges and veths
        gone = [i for i in infos if i.get("Driver") in dead_drivers]
        removed += cleanup_links(generated_link_names(
            [i.get("Id", "") for i in gone],
            [c.get("EndpointID", "") for i in gone for c in (i.get("Containers") or {}).values()]))
    return removed


def cleanup_stale_docker(docker: Docker, current: str | None = None) -> list[str]:
    """Containers and networks named ``ptXXXX-...`` of runs that are gone (and of ``current``),
    while daemons orphaned by a crashed run still serve them; then those daemons are stopped."""
    names = docker.container_names() + docker.network_names()
    gone = sorted(stale_prefixes(names, current))
    removed = cleanup_docker(docker, [p + "-" for p in gone])
    return removed + stop_orphan_daemons(current)


def _cmdline(pid: int) -> list[str]:
    """``pid``'s argv; [] once it is gone."""
    try:
        return [a.decode(errors="replace") for a in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")]
    except OSError:
        return []


def pids_by_cmdline(pred) -> list[tuple[int, list[str]]]:
    """``(pid, argv)`` of every other process whose argv satisfies ``pred(argv)``."""
    out = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        args = _cmdline(int(proc.name))
        if args and pred(args):
            out.append((int(proc.name), args))
    return out


def _plugin_name(args: list[str]) -> str | None:
    for i, a in enumerate(args[:-1]):
        if a == "--plugin-name":
            return args[i + 1]
    return None


def stop_orphan_daemons(current: str | None = None) -> list[str]:
    """SIGTERMs (then SIGKILLs) processes started with ``--plugin-name ptXXXX-...`` whose run is
    gone: a crashed pytest leaves its daemons running (they have their own session)."""
    def stale(args):
        name = _plugin_name(args)
        return name is not None and bool(STALE_NAME_RE.match(name)) and bool(stale_prefixes([name], current))

    victims = {pid: _plugin_name(args) for pid, args in pids_by_cmdline(stale)}
    for pid in victims:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 10
    for pid in victims:
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        if Path(f"/proc/{pid}").exists():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    return [f"pid {pid} ({name})" for pid, name in victims.items()]


# --------------------------------------------------------------------------- a private dockerd

# Per-run directories of the private dockerds this harness registers (``private_dockerd_dir``),
# named ``<prefix>-<tag>.<random>``: a later run stops the ones of a dead run and removes them.
PRIVATE_DOCKERD_ROOT = Path(tempfile.gettempdir()) / "pynet-dockerd"


class PrivateDockerd:
    """A dockerd of the test's own inside the network namespace ``netns`` (a path), beside the
    machine's dockerd and never touching it.

    It runs in a mount namespace of its own (``unshare -m --propagation private``) where
    /run/docker is a fresh tmpfs: /run/docker/plugins -- where dockerd looks for plugin sockets
    (it reads .spec files only under /etc and /usr/lib) -- is this dockerd's own, empty or with
    ``plugin_dir`` bound there; a process entering ``mount_ns`` (``nsenter --mount=...``) sees
    the same one.  Its --data-root, --exec-root, socket (``host``: ``unix://...``), --pidfile
    and log are under ``dir``; ``cgroup_parent`` keeps its containers' cgroups apart (a killed
    run's containers are found by it); ``path_dir`` goes first on its PATH (dockerd execs
    plain ``iptables``/``ip6tables``).  It starts its own containerd and stops it (and its
    containers: no live-restore) on SIGTERM.  A dead run's: ``cleanup_stale_private_dockerds``."""

    def __init__(self, dir: str | os.PathLike, netns: str, *, plugin_dir: str | os.PathLike | None = None,
                 path_dir: str | os.PathLike | None = None, cgroup_parent: str | None = None,
                 args: Sequence[str] = ()):
        self.dir = Path(dir)
        self.netns = netns
        self.plugin_dir = plugin_dir
        self.path_dir = path_dir
        self.cgroup_parent = cgroup_parent
        self.args = list(args)
        self.sock = self.dir / "docker.sock"
        self.host = f"unix://{self.sock}"
        self.pidfile = self.dir / "dockerd.pid"
        self.log_path = self.dir / "dockerd.log"
        self.proc: subprocess.Popen | None = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def mount_ns(self) -> str:
        """Its mount namespace (unshare and nsenter exec, so the process is dockerd itself)."""
        return f"/proc/{self.proc.pid}/ns/mnt"

    def start(self, bound: float = 90) -> "PrivateDockerd":
        self.dir.mkdir(parents=True, exist_ok=True)
        q = shlex.quote
        dockerd = ["/usr/sbin/dockerd", "--data-root", str(self.dir / "root"), "--exec-root",
                   str(self.dir / "exec"), "-H", self.host, "--pidfile", str(self.pidfile),
                   *(["--cgroup-parent", self.cgroup_parent] if self.cgroup_parent else []), *self.args]
        script = ("mount -t tmpfs tmpfs /run/docker && mkdir -p /run/docker/plugins && "
                  + (f"mount --bind {q(str(self.plugin_dir))} /run/docker/plugins && " if self.plugin_dir else "")
                  + f"exec nsenter --net={q(self.netns)} " + " ".join(map(q, dockerd)))
        env = dict(os.environ)
        env.pop("DOCKER_HOST", None)
        if self.path_dir:
            env["PATH"] = f"{self.path_dir}:{env.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}"
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(["unshare", "-m", "--propagation", "private", "sh", "-c", script],
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                         env=env, start_new_session=True)
        deadline = time.monotonic() + bound
        while self.docker("info", check=False, timeout=20).returncode != 0:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"private dockerd in {self.netns} not answering on {self.sock} "
                                   f"(exit {self.proc.returncode}); log {self.log_path}:\n{self.log_tail()}")
            time.sleep(0.5)
        return self

    def docker(self, *args: str, check: bool = True, timeout: float = 120,
               input: str | None = None) -> subprocess.CompletedProcess:
        return sh(DOCKER, "-H", self.host, *args, check=check, timeout=timeout, input=input)

    def load_image(self, image: str | None = None) -> str:
        """The machine's dockerd's ``image`` (built if missing) loaded into this one."""
        image = ensure_test_image(image or TEST_IMAGE)
        save = subprocess.Popen([DOCKER, "save", image], stdout=subprocess.PIPE)
        try:
            subprocess.run([DOCKER, "-H", self.host, "load"], stdin=save.stdout, check=True,
                           capture_output=True, timeout=120)
        finally:
            save.stdout.close()
            save.wait(60)
        return image

    def remove_containers(self) -> None:
        """Every container, killed: its shutdown would give each one its stop timeout."""
        if self.running:
            ids = self.docker("ps", "-aq", check=False).stdout.split()
            if ids:
                self.docker("rm", "-f", *ids, check=False, timeout=300)

    def stop(self, timeout: float = 60) -> None:
        """SIGTERM (SIGKILL after ``timeout``), then whatever a killed one left (containerd,
        shims, containers of its cgroup parent)."""
        if self.running:
            terminate(self.proc, timeout)
        kill_private_dockerd_leftovers(self.dir, self.cgroup_parent)

    def log_tail(self, lines: int = 40) -> str:
        return _tail(self.log_path, lines)


def private_dockerd_dir(prefix: str, tag: str) -> Path:
    """A fresh directory for a private dockerd of run ``prefix``, registered for the stale
    cleanup (``PRIVATE_DOCKERD_ROOT/<prefix>-<tag>.<random>``; give its PrivateDockerd
    ``cgroup_parent=registered_cgroup_parent(dir)``, which that cleanup looks for)."""
    PRIVATE_DOCKERD_ROOT.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f"{prefix}-{tag}.", dir=PRIVATE_DOCKERD_ROOT))


def registered_cgroup_parent(dir: str | os.PathLike) -> str:
    return f"/{Path(dir).name}"


def _in_cgroup(pid: int, cgroup_parent: str) -> bool:
    try:
        text = Path(f"/proc/{pid}/cgroup").read_text()
    except OSError:
        return False
    return any(line.split(":", 2)[-1].startswith(cgroup_parent.rstrip("/") + "/") for line in text.splitlines())


def kill_private_dockerd_leftovers(dir: str | os.PathLike, cgroup_parent: str | None,
                                   anything_under_dir: bool = False) -> list[str]:
    """SIGKILLs what a private dockerd under ``dir`` left running: itself (by its pidfile,
    SIGTERM first), its containerd and shims (their argv names its exec root), its containers
    (their cgroups are under ``cgroup_parent``); removes those cgroups.  ``anything_under_dir``:
    every process whose argv names a path under ``dir`` too (a dead run's sub-run and its
    daemons: their state is there)."""
    d = str(Path(dir))
    killed = []
    try:
        pid = int((Path(dir) / "dockerd.pid").read_text().strip() or 0)
    except (OSError, ValueError):
        pid = 0
    if pid and any(d in a for a in _cmdline(pid)):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 20  # it stops its containers and containerd
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        killed.append(f"dockerd {pid}")
    if anything_under_dir:
        for p, _ in pids_by_cmdline(lambda args: any(a.startswith(d + "/") or f"={d}/" in a for a in args)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGKILL)
    # containerd (--config <exec-root>/containerd/...) and its shims (-address <exec-root>/...)
    exec_root = os.path.join(d, "exec") + "/"
    victims = [p for p, args in pids_by_cmdline(lambda args: any(exec_root in a for a in args))]
    if cgroup_parent:
        victims += [int(p.name) for p in Path("/proc").iterdir()
                    if p.name.isdigit() and int(p.name) != os.getpid() and _in_cgroup(int(p.name), cgroup_parent)]
    for p in sorted(set(victims)):
        try:
            os.kill(p, signal.SIGKILL)
            killed.append(f"pid {p}")
        except ProcessLookupError:
            pass
    if cgroup_parent:
        deadline = time.monotonic() + 10
        for root in Path("/sys/fs/cgroup").glob("*"):
            top = root / cgroup_parent.strip("/")
            if top.is_dir():
                for sub in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)) + [top]:
                    while True:  # a killed task leaves its cgroup a moment later
                        try:
                            sub.rmdir()
                            break
                        except OSError:
                            if time.monotonic() > deadline:
                                break
                            time.sleep(0.1)
    return killed


def cleanup_stale_private_dockerds(current: str | None = None) -> list[str]:
    """The private dockerds (``private_dockerd_dir``) of runs that are gone (and of ``current``):
    stopped with what they left running, their directories removed."""
    if not PRIVATE_DOCKERD_ROOT.is_dir():
        return []
    dirs = [p for p in PRIVATE_DOCKERD_ROOT.iterdir() if STALE_NAME_RE.match(p.name)]
    gone = stale_prefixes([p.name for p in dirs], current)
    removed = []
    for p in dirs:
        if p.name[:6] in gone:
            kill_private_dockerd_leftovers(p, registered_cgroup_parent(p), anything_under_dir=True)
            shutil.rmtree(p, ignore_errors=True)
            removed.append(f"private dockerd {p}")
    return removed


# --------------------------------------------------------------------------- pynet daemon

def pynet_command() -> list[str]:
    """The ``pynet`` CLI of the venv running the tests (else <repo>/.venv)."""
    for cand in (Path(sys.executable).parent / "pynet", REPO / ".venv" / "bin" / "pynet"):
        if cand.exists():
            return [str(cand)]
    return [sys.executable, "-c", "import sys; from pynet.cli import main; sys.exit(main())"]


def chain_prefix_for(name: str) -> str:
    """A test daemon's own iptables chain prefix (and owner tag): the run prefix plus 4 hex of
    the daemon's name, upper-cased (``pt1a2b-pynet`` -> ``PT1A2B....``, 10 characters, the most
    a prefix may have), so two daemons of one run never touch each other's rules either."""
    import hashlib

    run = name.split("-", 1)[0]
    return (run + hashlib.sha1(name.encode()).hexdigest()[:4]).upper()[:10]


def daemon_chain_prefix(argv: Sequence[str]) -> str | None:
    argv = list(argv)
    for i, a in enumerate(argv[:-1]):
        if a == "--chain-prefix":
            return argv[i + 1]
    return None


def flush_firewall(chain_prefix: str) -> str | None:
    """Removes every rule and chain of ``chain_prefix`` (``pynet firewall flush``); an error text
    or None."""
    p = sh(*pynet_command(), "firewall", "flush", "--chain-prefix", chain_prefix,
           "--state-dir", "/nonexistent", check=False, timeout=60)
    return None if p.returncode == 0 else (p.stderr.strip() or f"exit {p.returncode}")


def default_daemon_argv(name: str, sock: Path, state_dir: Path) -> list[str]:
    # Each test daemon has its own iptables chains (and owner tag), so it never
    # touches the rules of the daemon ./scripts/run started, nor another run's or daemon's.
    chain_prefix = chain_prefix_for(name)
    return [*pynet_command(), "daemon", "--plugin-name", name, "--socket", str(sock),
            "--state-dir", str(state_dir), "--chain-prefix", chain_prefix]


class PynetDaemon:
    """One ``pynet daemon`` process serving plugin ``name`` on ``socket`` with ``state_dir``.

    ``command(name, socket, state_dir) -> argv`` replaces the real daemon (the smoke test uses
    the stub plugin). ``start()`` again after ``stop()``/``kill()`` restarts on the same state
    dir; the socket file is left as the previous process left it (a restarted daemon must cope
    with its own stale socket) unless ``start(remove_stale_socket=True)``.
    """

    def __init__(self, name: str, socket_path: str | os.PathLike, state_dir: str | os.PathLike,
                 log_dir: str | os.PathLike | None = None,
                 command: Callable[[str, Path, Path], Sequence[str]] | None = None,
                 extra_args: Sequence[str] = (), env: dict | None = None,
                 start_timeout: float = 30, link_prefixes: Iterable[str] = ()):
        self.name = name
        self.socket = Path(socket_path)
        self.state_dir = Path(state_dir)
        self.log_dir = Path(log_dir) if log_dir else results_dir() / "daemons"
        self.command = command or default_daemon_argv
        self.extra_args = list(extra_args)
        self.env = env
        self.start_timeout = start_timeout
        self.link_prefixes = list(link_prefixes)
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        self.log_path: Path | None = None

    # -- process
    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def argv(self) -> list[str]:
        return [*self.command(self.name, self.socket, self.state_dir), *self.extra_args]

    def start(self, remove_stale_socket: bool = False) -> "PynetDaemon":
        if self.running:
            raise RuntimeError(f"{self.name}: already running (pid {self.pid})")
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.socket.parent.mkdir(parents=True, exist_ok=True)
        if remove_stale_socket:
            self.socket.unlink(missing_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.starts += 1
        self.log_path = self.log_dir / f"{self.name}.{os.getpid()}.{self.starts}.log"
        env = dict(os.environ if self.env is None else self.env)
        env.setdefault("PYTHONUNBUFFERED", "1")
        env["PATH"] = "/usr/sbin:/usr/bin:/sbin:/bin:" + env.get("PATH", "")
        argv = self.argv()
        with open(self.log_path, "ab") as log:
            log.write(f"$ {' '.join(argv)}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, env=env, cwd=str(REPO),
                                         start_new_session=True)
        deadline = time.monotonic() + self.start_timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name}: daemon exited with {self.proc.returncode} during "
                                   f"startup; log {self.log_path}:\n{_tail(self.log_path)}")
            if self.socket.exists() and socket_answers(self.socket, timeout=1):
                return self
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"{self.name}: socket {self.socket} not answering after "
                                   f"{self.start_timeout}s; log {self.log_path}:\n{_tail(self.log_path)}")
            time.sleep(0.05)

    def stop(self, timeout: float = 20) -> int | None:
        """SIGTERM and wait (SIGKILL after ``timeout``); returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            terminate(self.proc, timeout)
        return self.proc.returncode

    def kill(self) -> int | None:
        """SIGKILL and wait: a crash, leaving the socket file and state as they were."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        return self.proc.returncode

    def restart(self) -> "PynetDaemon":
        self.stop()
        return self.start()

    # -- API
    def post(self, method: str, body=None, timeout: float = 30) -> tuple[int, object]:
        """POST /<method> (e.g. "NetworkDriver.CreateNetwork") with raw JSON; (status, JSON)."""
        return post(self.socket, method, body, timeout=timeout)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path else ""

    def log_tail(self, lines: int = 60) -> str:
        return _tail(self.log_path, lines) if self.log_path else ""

    def __repr__(self) -> str:
        return f"<PynetDaemon {self.name} pid={self.pid} socket={self.socket}>"


def generated_link_names(network_ids: Iterable[str], endpoint_ids: Iterable[str]) -> list[str]:
    """Host link names the daemon derives from Docker ids (pynet/drivers/bridge.py: bridge
    ``pn-<network id[:12]>``, host veth ``pv<endpoint id[:11]>``): removed at teardown if a dead
    daemon left them. Update here if the core's naming changes."""
    return [f"pn-{n[:12]}" for n in network_ids if n] + [f"pv{e[:11]}" for e in endpoint_ids if e]


def _daemon_objects(docker: Docker, driver: str) -> tuple[list[str], list[str]]:
    nets, eps = [], []
    for name in docker.network_names():
        try:
            info = docker.inspect(name, "network")
        except subprocess.CalledProcessError:
            continue
        if info.get("Driver") == driver:
            nets.append(info.get("Id", ""))
            eps += [c.get("EndpointID", "") for c in (info.get("Containers") or {}).values()]
    return nets, eps


def teardown_daemon(daemon: PynetDaemon, docker: Docker | None, prefixes: Iterable[str]) -> list[str]:
    """Per-daemon teardown: docker containers+networks with the prefixes (the daemon still up so
    it can release what it holds: restarted if a test left it dead; a stub plugin if it cannot
    start), then stop the daemon, then links (prefixes + ``daemon.link_prefixes``), netns, and
    the socket file. Collects errors and raises them at the end, after doing everything."""
    prefixes = list(prefixes)
    errors: list[str] = []
    generated: list[str] = []
    stub: StubPlugin | None = None
    if docker is not None:
        try:
            names = [n for n in docker.container_names() + docker.network_names() if _matches(n, prefixes)]
        except Exception as e:  # noqa: BLE001
            names, errors = [], errors + [f"docker ls: {e}"]
        try:
            generated = generated_link_names(*_daemon_objects(docker, daemon.name))
        except Exception as e:  # noqa: BLE001
            generated, errors = [], errors + [f"docker inspect: {e}"]
        if names and not daemon.running:
            try:
                daemon.start()
            except Exception as e:  # noqa: BLE001
                errors.append(f"restart for cleanup failed: {e}")
                try:
                    daemon.socket.unlink(missing_ok=True)
                    stub = StubPlugin(daemon.socket).start()
                except Exception as e2:  # noqa: BLE001
                    errors.append(f"stub plugin: {e2}")
        try:
            cleanup_docker(docker, prefixes)
        except Exception as e:  # noqa: BLE001
            errors.append(f"docker cleanup: {e}")
        if stub is not None:
            stub.stop()
    try:
        daemon.stop()
    except Exception as e:  # noqa: BLE001
        errors.append(f"stop: {e}")
    chain_prefix = daemon_chain_prefix(daemon.argv())
    if is_root() and chain_prefix and chain_prefix != "PYNET":
        err = flush_firewall(chain_prefix)  # the daemon keeps its rules when it stops
        if err:
            errors.append(f"firewall flush {chain_prefix}: {err}")
    if is_root():
        cleanup_links([*prefixes, *daemon.link_prefixes, *generated])
        cleanup_netns(prefixes)
    daemon.socket.unlink(missing_ok=True)
    if errors:
        raise RuntimeError(f"teardown of {daemon.name}: " + "; ".join(errors))
    return prefixes


# --------------------------------------------------------------------------- CNI beside a test daemon; what pynet holds
# Used by the fault-injection and parallel acceptance tests: the CNI binaries exec'd in the host
# namespace next to a test daemon (the shim hands them to its socket, or works in-process when it
# is dead), dockerd's view read from its API in one request, and what the daemon holds read from
# its state dir, kernel and firewall -- so an invariant can be checked after every operation.

DOCKER_SOCKET = "/var/run/docker.sock"


def docker_get(path: str, timeout: float = 30):
    """GET on dockerd's API over its socket (one request, no CLI process): parsed JSON.  The
    socket of ``DOCKER_HOST`` when set, as the docker CLI and the daemon read it."""
    from pynet.plugin_api.docker_state import docker_socket

    conn = UnixHTTPConnection(docker_socket(), timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        raw = resp.read()
        status = resp.status
    finally:
        conn.close()
    if status != 200:
        raise RuntimeError(f"GET {path}: dockerd answered {status}: {raw[:300]!r}")
    return json.loads(raw)


def docker_objects(prefixes: Iterable[str]) -> dict:
    """Docker's containers and networks named with one of ``prefixes``::

        {"containers": {name: {"id", "running", "networks": {network name: {"ip", "ip6",
                                "endpoint_id", "network_id"}}}},
         "networks": {name: {"id", "driver", "ipam_driver", "subnets": [...], "gateways": [...]}}}
    """
    prefixes = [p for p in prefixes if p]
    out: dict = {"containers": {}, "networks": {}}
    for c in docker_get("/containers/json?all=1"):
        name = ((c.get("Names") or [""])[0]).lstrip("/")
        if not _matches(name, prefixes):
            continue
        nets = {}
        for nname, n in ((c.get("NetworkSettings") or {}).get("Networks") or {}).items():
            nets[nname] = {"ip": n.get("IPAddress") or "", "ip6": n.get("GlobalIPv6Address") or "",
                           "endpoint_id": n.get("EndpointID") or "", "network_id": n.get("NetworkID") or ""}
        out["containers"][name] = {"id": c.get("Id", ""), "running": c.get("State") == "running",
                                   "networks": nets}
    for n in docker_get("/networks"):
        if not _matches(n.get("Name", ""), prefixes):
            continue
        cfg = (n.get("IPAM") or {}).get("Config") or []
        out["networks"][n["Name"]] = {
            "id": n.get("Id", ""), "driver": n.get("Driver", ""),
            "ipam_driver": (n.get("IPAM") or {}).get("Driver", ""),
            "subnets": [x.get("Subnet", "") for x in cfg if x.get("Subnet")],
            "gateways": [x.get("Gateway", "") for x in cfg if x.get("Gateway")]}
    return out


def install_cni_binaries(bin_dir: str | os.PathLike) -> Path:
    """pynet-bridge, pynet-macvlan, pynet-ipam into ``bin_dir`` (``pynet cni install``)."""
    from pynet.cni.install import install

    install(str(bin_dir), conf_dir=None)
    return Path(bin_dir)


def daemon_cni_conf(daemon: "PynetDaemon", network: str, subnet: str, *, version: str = "1.0.0",
                    port_mappings: Sequence[dict] = ()) -> dict:
    """A pynet-bridge network configuration for ``daemon``'s state dir, socket, chain prefix and
    instance. ``network`` as a Docker network's name makes the pods share that network."""
    conf = {"cniVersion": version, "name": network, "type": "pynet-bridge",
            "isGateway": True, "isDefaultGateway": True, "ipMasq": True,
            "ipam": {"type": "pynet-ipam", "ranges": [[{"subnet": subnet}]]},
            "pynet": {"stateDir": str(daemon.state_dir), "socket": str(daemon.socket),
                      "chainPrefix": daemon_chain_prefix(daemon.argv()), "instance": daemon.name}}
    if port_mappings:
        conf["capabilities"] = {"portMappings": True}
        conf["runtimeConfig"] = {"portMappings": [dict(p) for p in port_mappings]}
    return conf


class CniResult:
    """One CNI call: exit code, parsed stdout (None if not JSON), raw text, stderr, and whether
    the caller SIGKILLed the binary before it finished."""

    def __init__(self, rc: int | None, raw: str, err: str, killed: bool = False):
        self.rc = rc
        self.raw = raw
        self.err = err
        self.killed = killed
        try:
            self.out = json.loads(raw) if raw.strip() else None
        except ValueError:
            self.out = None

    @property
    def ok(self) -> bool:
        return self.rc == 0 and not self.killed

    @property
    def code(self) -> int | None:
        """The CNI error code of a failed call (None when it succeeded or printed no error)."""
        return self.out.get("code") if isinstance(self.out, dict) and self.rc != 0 else None

    def ips(self) -> list[str]:
        """Bare addresses of a successful ADD's result."""
        if not self.ok or not isinstance(self.out, dict):
            return []
        return [str(ip.get("address", "")).split("/")[0] for ip in self.out.get("ips") or []]

    def __repr__(self) -> str:
        what = "killed" if self.killed else f"rc={self.rc}"
        return f"<CniResult {what} {(self.raw or self.err).strip()[:200]!r}>"


class CniExec:
    """Execs a pynet CNI binary as a runtime does: CNI_* environment, the configuration on stdin,
    in the caller's (host) namespaces, so the shim hands the call to the daemon's socket and works
    in-process only when no daemon answers there."""

    def __init__(self, bin_dir: str | os.PathLike, plugin: str = "pynet-bridge"):
        self.bin_dir = Path(bin_dir)
        self.binary = self.bin_dir / plugin

    def env(self, command: str, cid: str, netns: str, ifname: str = "eth0", args: str = "") -> dict:
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "CNI_COMMAND": command, "CNI_CONTAINERID": cid,
               "CNI_NETNS": netns, "CNI_IFNAME": ifname, "CNI_PATH": str(self.bin_dir)}
        if args:
            env["CNI_ARGS"] = args
        return env

    def start(self, command: str, conf: dict, cid: str, netns: str, ifname: str = "eth0",
              args: str = "") -> subprocess.Popen:
        p = subprocess.Popen([str(self.binary)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, env=self.env(command, cid, netns, ifname, args))
        try:
            p.stdin.write(json.dumps(conf).encode())
            p.stdin.close()
        except BrokenPipeError:  # it exited already
            pass
        p.stdin = None  # sent and closed: communicate() only reads
        return p

    @staticmethod
    def finish(p: subprocess.Popen, kill_after: float | None = None, timeout: float = 120) -> CniResult:
        """Waits for the binary (SIGKILLs it after ``kill_after`` seconds if still running)."""
        killed = False
        if kill_after is not None:
            try:
                p.wait(kill_after)
            except subprocess.TimeoutExpired:
                p.kill()
                killed = True
        try:
            out, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            out, err = p.communicate(timeout=30)
            err += b"\n(killed: no answer within the time limit)"
            killed = True
        return CniResult(p.returncode, out.decode(errors="replace"), err.decode(errors="replace"), killed)

    def call(self, command: str, conf: dict, cid: str, netns: str, ifname: str = "eth0",
             args: str = "", kill_after: float | None = None) -> CniResult:
        return self.finish(self.start(command, conf, cid, netns, ifname, args), kill_after)


def netns_add(name: str) -> str:
    sh("ip", "netns", "add", name)
    return f"/run/netns/{name}"


def netns_del(name: str) -> bool:
    return sh("ip", "netns", "del", name, check=False).returncode == 0


# Store records of the daemon itself, not of any object a test makes: the custom-named bridges of
# dockerd's own networks, learned from dockerd (another run's `docker network create -o
# com.docker.network.bridge.name=...` adds one at any time).
DAEMON_STATE_KEYS = ("firewall/foreign-bridges",)


def object_keys(keys: Iterable[str]) -> set[str]:
    """Store keys minus the daemon's own state (``DAEMON_STATE_KEYS``)."""
    return {k for k in keys if not k.startswith(DAEMON_STATE_KEYS)}


def pynet_holdings(state_dir: str | os.PathLike) -> dict:
    """What a daemon's store holds, read from its state dir as the CLI reads it::

        {"networks": [network records], "endpoints": [endpoint records],
         "pools": [{"id", "pool", ..., "allocated": [bare addresses], "problems": [...]}],
         "keys": [every store key of the host's and the cluster's namespaces]}
    """
    from pynet.ipam import Ipam
    from pynet.root import open_state_dir

    db = Path(state_dir) / "pynet.db"
    if not db.exists():
        return {"networks": [], "endpoints": [], "pools": [], "keys": []}
    store = open_state_dir(str(state_dir))
    try:
        nets = [r.value for r in store.list("networks/")]
        eps = [r.value for r in store.list("endpoints/")]
        ipam = Ipam(store)
        pools = []
        for p in ipam.list_pools():
            pools.append(dict(p, allocated=list(ipam.allocated(p["id"])), problems=ipam.verify(p["id"])))
        # this host's keys (relative to pynet/v2/local/<host>/) and the cluster's
        keys = [r.key for r in store.list("")] + [r.key for r in store.sibling("pynet/v2/cluster/").list("")]
    finally:
        store.close()
    return {"networks": nets, "endpoints": eps, "pools": pools, "keys": keys}


_ALIAS_RE = re.compile(r"\balias (\S+)")
_COUNTERS_RE = re.compile(r"\s*\[\d+:\d+\]")


def link_aliases() -> dict[str, str]:
    """Host link name -> alias ('' when none), from ``ip -o link``."""
    out = {}
    for line in sh("ip", "-o", "link", "show", check=False).stdout.splitlines():
        parts = line.split(": ", 2)
        if len(parts) < 2:
            continue
        m = _ALIAS_RE.search(line)
        out[parts[1].split("@", 1)[0].strip()] = m.group(1) if m else ""
    return out


def daemon_links(instance: str) -> dict[str, str]:
    """Host links a daemon tagged as its own (alias ``pynet:<instance>:<object id>``) -> object id."""
    tag = f"pynet:{instance}:"
    return {name: alias[len(tag):] for name, alias in link_aliases().items() if alias.startswith(tag)}


def firewall_lines(chain_prefix: str) -> list[str]:
    """Every iptables/ip6tables line that names ``chain_prefix`` (its chains, the jumps to them and
    its owner-tagged rules), as ``"<family> <table> <line>"`` without packet counters."""
    lines = []
    for fam, save in (("ipv4", "iptables-save"), ("ipv6", "ip6tables-save")):
        try:
            text = sh(save, check=False, timeout=60).stdout
        except (OSError, subprocess.SubprocessError):
            continue
        table = ""
        for line in text.splitlines():
            if line.startswith("*"):
                table = line[1:].strip()
            elif chain_prefix in line and not line.startswith("#"):
                bare = _COUNTERS_RE.sub("", line).strip()
                lines.append(f"{fam} {table} {bare}")
    return lines


# --------------------------------------------------------------------------- script entry

def _main(argv: list[str]) -> int:
    if len(argv) >= 2 and argv[0] == "stub-plugin":
        server = StubPlugin(argv[1])
        signal.signal(signal.SIGTERM, lambda *_: (server.path.unlink(missing_ok=True), os._exit(0)))
        print(f"stub plugin on {argv[1]}", flush=True)
        server.serve_forever()
        return 0
    if argv and argv[0] == "cleanup-stale" and is_root():
        ensure = dockerd_up()
        out = cleanup_stale_host()
        if ensure:
            out += cleanup_stale_docker(Docker())
        print("\n".join(out))
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
