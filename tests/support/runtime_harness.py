"""Real container runtimes for the CNI tests: a private containerd (CRI v1) and podman's CNI backend.

Plain Python (no pytest), used by ``tests/runtimes/conftest.py`` and the CNI benchmarks.

- ``ensure_images(workdir)``: a busybox-static image (``pynet-rt:latest``) and a sandbox image
  whose default command keeps running (``pynet-rt-sandbox:latest``, ``sleep infinity``; containerd
  runs the sandbox image's default command as the pause process), in one ``docker save``-format
  tarball that ``ctr -n k8s.io images import`` and ``podman load`` read. Built in Python, the
  way ``docker import`` + ``docker save`` would, so the tests do not depend on dockerd (other
  tests restart it).
- ``Containerd``: a containerd with its own root/state dirs, socket, CNI ``conf_dir``/``bin_dir``
  and ``restrict_oom_score_adj = true`` (runc cannot set oom_score_adj here). ``crash()`` SIGKILLs
  it with its shims and pods (a node crash, minus the reboot); ``cleanup()`` removes everything it
  and its pods left: processes, mounts, pod network namespaces, cgroups, the base directory.
- ``Cri``: a CRI v1 client (``container-runtime-interface-api`` + ``grpcio``) driving
  RunPodSandbox / StopPodSandbox / RemovePodSandbox / ListPodSandbox / PodSandboxStatus as kubelet
  does, with host port mappings.
- ``Podman``: podman 4 with ``network_backend = "cni"``, its own storage, CNI config dir and plugin
  dir (``containers.conf`` via ``CONTAINERS_CONF``), ``--pull=never``, pinned ``default_ulimits``
  (podman always asks runc for RLIMIT_NOFILE/NPROC, and runc may only lower them here: even the
  current hard limit is refused, so they are pinned low, 1024 files and 4096 processes).
- ``CniBinDir``: a plugin dir holding the reference plugins (/usr/lib/cni) and/or pynet's.
- netns helpers: ``ns_exec`` (a command inside a pod's network namespace via ``nsenter``),
  ``ns_ping``, ``HttpServer`` (busybox httpd inside a pod's netns) and ``http_get``.

Every name carries the run prefix; every address a test touches is inside the pods it made.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Iterable, Sequence

from tests.support import harness

BUSYBOX_CANDIDATES = ("/bin/busybox", "/usr/bin/busybox")
TEST_IMAGE = "pynet-rt:latest"  # busybox-static, CMD sh (containers)
SANDBOX_IMAGE = "pynet-rt-sandbox:latest"  # the same, CMD sleep infinity (containerd's pause)
REF_CNI_DIR = Path("/usr/lib/cni")
CONTAINERD = "/usr/bin/containerd"
CTR = "/usr/bin/ctr"
PODMAN = "/usr/bin/podman"
RUNTIME_BASE = Path("/tmp/pynet-rt")  # short: unix socket paths must stay under 108 bytes
CGROUP_ROOT = Path("/sys/fs/cgroup")


def busybox() -> str:
    for c in BUSYBOX_CANDIDATES:
        if os.access(c, os.X_OK):
            return c
    raise RuntimeError("busybox not found (apt-get install busybox-static)")


def _pids_by_cmdline(pred) -> list[int]:
    return [pid for pid, _ in harness.pids_by_cmdline(pred)]


def _children(pid: int) -> list[int]:
    out = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            try:
                out += [int(x) for x in (task / "children").read_text().split()]
            except OSError:
                pass
    except OSError:
        pass
    return out


def descendants(pids: Iterable[int]) -> list[int]:
    """The pids and all their descendants (breadth first)."""
    seen: list[int] = []
    todo = list(pids)
    while todo:
        p = todo.pop(0)
        if p in seen:
            continue
        seen.append(p)
        todo += _children(p)
    return seen


def kill_pids(pids: Iterable[int], sig: int = signal.SIGKILL, wait: float = 10) -> None:
    pids = list(pids)
    for p in pids:
        try:
            os.kill(p, sig)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + wait
    for p in pids:
        while Path(f"/proc/{p}").exists() and time.monotonic() < deadline:
            try:  # reap our own children so they do not linger as zombies
                os.waitpid(p, os.WNOHANG)
            except ChildProcessError:
                pass
            try:
                if (Path(f"/proc/{p}/stat").read_text().split(") ", 1)[1][0]) == "Z":
                    break
            except (OSError, IndexError):
                break
            time.sleep(0.02)


def unmount_under(base: Path) -> list[str]:
    """Lazily unmounts every mount point at or below ``base`` (deepest first)."""
    base_s = str(base).rstrip("/")
    points = []
    try:
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            mp = line.split()[4].replace("\\040", " ")
            if mp == base_s or mp.startswith(base_s + "/"):
                points.append(mp)
    except OSError:
        return []
    done = []
    for mp in sorted(set(points), key=lambda p: -p.count("/")):
        if harness.sh("umount", "-l", mp, check=False).returncode == 0:
            done.append(mp)
    return done


def remove_netns_path(path: str | os.PathLike) -> None:
    """Removes a pinned network namespace (``/var/run/netns/NAME``): unmount, then unlink."""
    p = Path(path)
    if not p.exists():
        return
    harness.sh("umount", "-l", str(p), check=False)
    try:
        p.unlink()
    except OSError:
        pass


def remember_netns(base: Path, paths: set, ns: str) -> None:
    """Notes a pod's network namespace in memory and in ``base/netns.list`` (for the cleanup of
    a run that crashed: ``cleanup_stale_runtimes``)."""
    if ns in paths:
        return
    paths.add(ns)
    try:
        with open(Path(base) / "netns.list", "a") as f:
            f.write(ns + "\n")
    except OSError:
        pass


def cleanup_stale_runtimes(current: str | None = None) -> list[str]:
    """Leftovers of runs that are gone (and of ``current``): for every ``RUNTIME_BASE/<prefix>-*``
    directory, the processes naming it (containerd, shims, conmon) and everything under them,
    the pod namespaces noted in ``netns.list``, the cgroups, mounts and the directory; then the
    pynet daemons such runs started."""
    removed: list[str] = []
    if not RUNTIME_BASE.is_dir() or not harness.is_root():
        return removed
    dirs = [d for d in RUNTIME_BASE.iterdir() if d.is_dir()]
    gone = harness.stale_prefixes([d.name for d in dirs], current)
    for d in dirs:
        m = harness.STALE_NAME_RE.match(d.name)
        if not m or m.group(1) not in gone:
            continue
        base = str(d)
        pids = _pids_by_cmdline(lambda a: any(base in x for x in a))
        kill_pids(descendants(pids))
        try:
            for ns in (d / "netns.list").read_text().split():
                remove_netns_path(ns)
        except OSError:
            pass
        remove_cgroups("/" + d.name.split(".", 1)[0])
        unmount_under(d)
        shutil.rmtree(d, ignore_errors=True)
        removed.append(base)
    removed += harness.stop_orphan_daemons(current)
    return removed


def free_tcp_port(lo: int = 30000, hi: int = 32700) -> int:
    """A TCP port nobody listens on (random in [lo, hi))."""
    import random

    for _ in range(200):
        port = random.randrange(lo, hi)
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.bind(("0.0.0.0", port))
            return port
        except OSError:
            continue
        finally:
            s.close()
    raise RuntimeError("no free TCP port")


# --------------------------------------------------------------------------- images

def _build_rootfs(root: Path) -> None:
    bb = busybox()
    for d in ("bin", "etc", "proc", "sys", "dev", "tmp", "root", "run", "var/www", "usr"):
        (root / d).mkdir(parents=True, exist_ok=True)
    os.chmod(root / "tmp", 0o1777)
    (root / "sbin").symlink_to("bin")
    (root / "usr" / "bin").symlink_to("../bin")
    (root / "usr" / "sbin").symlink_to("../bin")
    shutil.copy2(bb, root / "bin" / "busybox")
    applets = harness.sh(bb, "--list").stdout.split()
    for a in applets:
        if a != "busybox" and not (root / "bin" / a).exists():
            (root / "bin" / a).symlink_to("busybox")
    (root / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n"
                                         "nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n")
    (root / "etc" / "group").write_text("root:x:0:\nnogroup:x:65534:\n")
    (root / "var" / "www" / "index.html").write_text("pynet test image\n")


def _layer_tar(root: Path, out: Path) -> str:
    """A reproducible tar of ``root`` (owner 0, fixed mtime); returns its sha256 (the diff id)."""
    import tarfile

    def norm(ti: tarfile.TarInfo) -> tarfile.TarInfo:
        ti.uid = ti.gid = 0
        ti.uname = ti.gname = "root"
        ti.mtime = 1700000000
        return ti

    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tf:
        for path in sorted(root.rglob("*")):
            tf.add(path, arcname=str(path.relative_to(root)), recursive=False, filter=norm)
    h = hashlib.sha256()
    with open(out, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def build_images_tar(out: Path) -> Path:
    """A ``docker save``-format archive (what ``docker import`` + ``docker save`` give, built here
    without dockerd) of two busybox-static images sharing one layer: ``TEST_IMAGE`` (CMD sh) and
    ``SANDBOX_IMAGE`` (CMD ``sleep infinity``: containerd runs the sandbox image's default command
    as the pause process). ``ctr -n k8s.io images import`` and ``podman load`` read it."""
    import tarfile

    out = Path(out)
    with tempfile.TemporaryDirectory(prefix="pynet-img.") as tmp:
        t = Path(tmp)
        root = t / "rootfs"
        root.mkdir()
        _build_rootfs(root)
        layer = t / "layer.tar"
        diff_id = _layer_tar(root, layer)
        members = [(f"{diff_id}/layer.tar", layer)]
        manifest = []
        for ref, cmd in ((TEST_IMAGE, ["/bin/sh"]), (SANDBOX_IMAGE, ["sleep", "infinity"])):
            config = {
                "architecture": "amd64", "os": "linux", "created": "2023-11-14T22:13:20Z",
                "config": {"Cmd": cmd, "Env": ["PATH=/bin:/sbin:/usr/bin:/usr/sbin"]},
                "rootfs": {"type": "layers", "diff_ids": [f"sha256:{diff_id}"]},
                "history": [{"created": "2023-11-14T22:13:20Z", "comment": "pynet busybox-static"}],
            }
            data = json.dumps(config, sort_keys=True).encode()
            digest = hashlib.sha256(data).hexdigest()
            (t / f"{digest}.json").write_bytes(data)
            members.append((f"{digest}.json", t / f"{digest}.json"))
            manifest.append({"Config": f"{digest}.json", "RepoTags": [ref], "Layers": [f"{diff_id}/layer.tar"]})
        (t / "manifest.json").write_text(json.dumps(manifest))
        members.append(("manifest.json", t / "manifest.json"))
        part = out.with_suffix(".part")
        with tarfile.open(part, "w") as tf:
            for arc, path in members:
                tf.add(path, arcname=arc)
        part.rename(out)
    return out


def ensure_images(workdir: Path) -> Path:
    """The images archive in ``workdir`` (built once per session, no dockerd needed)."""
    out = Path(workdir) / "images.tar"
    if not out.exists():
        build_images_tar(out)
    return out


# --------------------------------------------------------------------------- CNI dirs

class CniBinDir:
    """A CNI plugin directory: links to the reference plugins plus, optionally, pynet's binaries
    (``pynet cni install --bin-dir DIR``). containerd always needs ``loopback`` in it."""

    def __init__(self, path: Path, reference: bool = True, pynet: bool = False):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        if reference:
            for plugin in REF_CNI_DIR.iterdir():
                link = self.path / plugin.name
                if not link.exists():
                    link.symlink_to(plugin)
        if pynet:
            install_pynet_cni(self.path)

    def __str__(self) -> str:
        return str(self.path)


def install_pynet_cni(bin_dir: Path) -> list[str]:
    """``pynet cni install --bin-dir DIR --no-examples``; the pynet binaries now in ``bin_dir``."""
    harness.sh(*harness.pynet_command(), "cni", "install", "--bin-dir", str(bin_dir), "--no-examples",
               timeout=60)
    return sorted(p.name for p in Path(bin_dir).iterdir() if p.name.startswith("pynet"))


def write_conflist(conf_dir: Path, conf: dict, filename: str | None = None) -> Path:
    conf_dir = Path(conf_dir)
    conf_dir.mkdir(parents=True, exist_ok=True)
    path = conf_dir / (filename or f"10-{conf['name']}.conflist")
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(conf, indent=1))
    tmp.rename(path)
    return path


def reference_conflist(name: str, bridge: str, subnet: str, cni_version: str = "1.0.0",
                       data_dir: str | None = None, firewall: bool = True,
                       ips_capability: bool = False) -> dict:
    """The reference chain (bridge + host-local + portmap, as
    ``../shared/reference/cni-ref-bridge-portmap.conflist``) plus ``firewall``: dockerd sets the
    FORWARD policy to DROP and the reference bridge adds no FORWARD rules, so without it pods on
    the bridge could not reach each other here (bridge-nf-call-iptables is on)."""
    ipam = {"type": "host-local", "ranges": [[{"subnet": subnet}]], "routes": [{"dst": "0.0.0.0/0"}]}
    if data_dir:
        ipam["dataDir"] = data_dir
    bridge_conf = {"type": "bridge", "bridge": bridge, "isGateway": True, "ipMasq": True,
                   "hairpinMode": True, "ipam": ipam}
    if ips_capability:
        bridge_conf["capabilities"] = {"ips": True}
    plugins = [bridge_conf, {"type": "portmap", "capabilities": {"portMappings": True}, "snat": True}]
    if firewall:
        plugins.append({"type": "firewall", "backend": "iptables"})
    return {"cniVersion": cni_version, "name": name, "plugins": plugins}


def short_tag(text: str, n: int = 4) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:n]


def subnet_for(base_octets: str, key: str) -> str:
    """A /24 inside ``base_octets`` (``"10.244"``) chosen by ``key``: two runs side by side (each
    with its own prefix) almost never pick the same one."""
    return f"{base_octets}.{int(hashlib.sha1(key.encode()).hexdigest()[:4], 16) % 250 + 1}.0/24"


class Chain:
    """One CNI plugin chain under test on its own bridge, subnet and state: builds its conflist
    for a cniVersion and says what it holds (addresses, host links, firewall rules)."""

    kind = "?"

    def __init__(self, prefix: str, workdir: Path, tag: str, subnet: str):
        self.prefix = prefix
        self.tag = tag
        self.name = f"{prefix}-{self.kind[:3]}{tag}"  # network name
        self.bridge = f"{prefix}-{self.kind[0]}{tag}"[:15]
        self.subnet = subnet
        net = subnet.split("/")[0].rsplit(".", 1)[0]
        self.gateway = f"{net}.1"
        self.workdir = Path(workdir) / f"chain-{self.kind}-{tag}"
        self.workdir.mkdir(parents=True, exist_ok=True)

    def conflist(self, cni_version: str = "1.0.0", ips: bool = False) -> dict:
        raise NotImplementedError

    def held_addresses(self) -> set[str]:
        """Addresses the chain's IPAM holds for containers (not the gateway)."""
        raise NotImplementedError

    def bridge_ports(self) -> list[str]:
        out = harness.sh("ip", "-j", "link", "show", "master", self.bridge, check=False).stdout
        try:
            return [i["ifname"] for i in json.loads(out or "[]")]
        except ValueError:
            return []

    def rules_mentioning(self, *needles: str) -> list[str]:
        """iptables-save lines (v4, all tables) containing any of ``needles``."""
        needles = [n for n in needles if n]
        return [line for line in iptables_save().splitlines()
                if not line.startswith("#") and any(n in line for n in needles)]

    def cleanup(self) -> list[str]:
        harness.sh("ip", "link", "del", "dev", self.bridge, check=False)
        return []


class ReferenceChain(Chain):
    """Debian's containernetworking-plugins: bridge + host-local + portmap (+ firewall)."""

    kind = "reference"

    @property
    def data_dir(self) -> Path:
        return self.workdir / "host-local"

    def conflist(self, cni_version: str = "1.0.0", ips: bool = False) -> dict:
        return reference_conflist(self.name, self.bridge, self.subnet, cni_version=cni_version,
                                  data_dir=str(self.data_dir), ips_capability=ips)

    def held_addresses(self) -> set[str]:
        d = self.data_dir / self.name
        if not d.is_dir():
            return set()
        out = set()
        for f in d.iterdir():
            if f.name.count(".") == 3 and f.name.replace(".", "").isdigit():
                out.add(f.name)
        return out


class PynetChain(Chain):
    """pynet-bridge with pynet-ipam, its own state dir and firewall chain prefix; standalone (each
    plugin process does the work) unless ``daemon_socket`` names a running ``pynet daemon``."""

    kind = "pynet"

    def __init__(self, *a, daemon_socket: Path | None = None, **kw):
        super().__init__(*a, **kw)
        self.state_dir = self.workdir / "state"
        self.chain_prefix = harness.chain_prefix_for(self.name)
        self.daemon_socket = daemon_socket
        self.daemon: harness.PynetDaemon | None = None

    def pynet_settings(self) -> dict:
        s = {"stateDir": str(self.state_dir), "chainPrefix": self.chain_prefix,
             "instance": self.name, "daemon": self.daemon_socket is not None}
        if self.daemon_socket is not None:
            s["socket"] = str(self.daemon_socket)
        return s

    def conflist(self, cni_version: str = "1.0.0", ips: bool = False) -> dict:
        """pynet-bridge (bridge, veth, gateway, masquerade and port mappings in one plugin: no
        portmap/firewall needed) with pynet-ipam; the keys of ``pynet/cni/plugin.py``."""
        bridge = {"type": "pynet-bridge", "bridge": self.bridge, "isGateway": True,
                  "isDefaultGateway": True, "ipMasq": True, "hairpinMode": True,
                  "ipam": {"type": "pynet-ipam", "ranges": [[{"subnet": self.subnet, "gateway": self.gateway}]]},
                  "capabilities": {"portMappings": True, **({"ips": True} if ips else {})},
                  "pynet": self.pynet_settings()}
        return {"cniVersion": cni_version, "name": self.name, "plugins": [bridge]}

    def held_addresses(self) -> set[str]:
        """Addresses allocated in the chain's subnet in pynet's store (gateway excluded)."""
        from pynet.ipam import Ipam
        from pynet.root import open_state_dir

        if not (self.state_dir / "pynet.db").exists():
            return set()
        store = open_state_dir(str(self.state_dir))
        try:
            ipam = Ipam(store)
            out = set()
            for pool in ipam.list_pools():
                if pool["pool"] == self.subnet:
                    out |= set(ipam.allocated(pool["id"]))
        finally:
            store.close()
        out.discard(self.gateway)
        return out

    def start_daemon(self, log_dir: Path | None = None) -> "harness.PynetDaemon":
        """A ``pynet daemon`` on this chain's state dir and chain prefix; the conflist then sends
        the plugins' work to it (``"pynet": {"daemon": true, "socket": ...}``)."""
        sock = harness.LOCK_DIR / f"{self.name}.sock"
        d = harness.PynetDaemon(self.name, sock, self.state_dir, log_dir=log_dir)
        d.start(remove_stale_socket=True)
        self.daemon = d
        self.daemon_socket = sock
        return d

    def preflight(self, bin_dir: Path, timeout: float = 15) -> None:
        """ADD + DEL of this chain into a scratch namespace, exec'd directly with a short timeout,
        so a broken plugin fails a test in seconds rather than at the runtime's deadline."""
        ns = f"{self.prefix}-pf{self.tag}"
        harness.sh("ip", "netns", "add", ns)
        try:
            conf = self.conflist("1.0.0")
            confs = plugin_confs(conf)
            for command in ("ADD", "DEL"):
                for c in confs:
                    c = {k: v for k, v in c.items() if k != "capabilities"}
                    try:
                        rc, out, err = exec_plugin(bin_dir, c, command, f"{self.prefix}-preflight",
                                                   f"/var/run/netns/{ns}", timeout=timeout)
                    except subprocess.TimeoutExpired:
                        raise RuntimeError(f"preflight {command} by {c['type']}: no answer in {timeout}s") from None
                    if rc != 0:
                        raise RuntimeError(f"preflight {command} by {c['type']}: exit {rc}: {out.strip()} {err.strip()[-500:]}")
        finally:
            harness.sh("ip", "netns", "del", ns, check=False)

    def own_rules(self) -> list[str]:
        """iptables-save lines of this instance's firewall (its chain prefix or owner tag)."""
        return [line for line in iptables_save().splitlines()
                if self.chain_prefix in line and not line.startswith("#")]

    def cleanup(self) -> list[str]:
        errors = []
        if self.daemon is not None:
            self.daemon.stop()
            self.daemon.socket.unlink(missing_ok=True)
        errors += super().cleanup()
        err = harness.flush_firewall(self.chain_prefix)
        if err:
            errors.append(f"firewall flush {self.chain_prefix}: {err}")
        return errors


def make_chain(kind: str, prefix: str, workdir: Path, tag: str, base: str = "10.244", **kw) -> Chain:
    cls = {"pynet": PynetChain, "reference": ReferenceChain}[kind]
    return cls(prefix, workdir, tag, subnet_for(base, f"{prefix}-{kind}-{tag}"), **kw)


def exec_plugin(bin_dir: Path, plugin_conf: dict, command: str, container_id: str = "",
                netns: str = "", ifname: str = "eth0", cni_args: str = "",
                timeout: float = 60, binary: str | None = None) -> tuple[int, str, str]:
    """Execs one CNI plugin (``binary``, default the config's ``type``) as a runtime does;
    (exit code, stdout, stderr)."""
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "CNI_COMMAND": command, "CNI_PATH": str(bin_dir),
           "CNI_CONTAINERID": container_id, "CNI_NETNS": netns, "CNI_IFNAME": ifname, "CNI_ARGS": cni_args}
    p = subprocess.run([str(Path(bin_dir) / (binary or plugin_conf["type"]))], input=json.dumps(plugin_conf),
                       capture_output=True, text=True, env=env, timeout=timeout)
    return p.returncode, p.stdout, p.stderr


def plugin_confs(conflist: dict, cni_version: str | None = None) -> list[dict]:
    """The per-plugin configurations libcni builds from a conflist (name and cniVersion copied in)."""
    out = []
    for pc in conflist["plugins"]:
        c = dict(pc)
        c["name"] = conflist["name"]
        c["cniVersion"] = cni_version or conflist["cniVersion"]
        out.append(c)
    return out


def run_chain(bin_dir: Path, conflist: dict, command: str, container_id: str, netns: str,
              ifname: str = "eth0", runtime_config: dict | None = None, cni_args: str = "",
              prev_result: dict | None = None) -> dict | None:
    """A conflist's ADD (plugins in order, each given the previous one's result) or DEL (reverse
    order, each given ``prev_result``, the cached ADD result), as libcni does; ``runtime_config``
    keys reach the plugins whose ``capabilities`` ask for them. Returns the ADD result."""
    confs = plugin_confs(conflist)
    if command == "DEL":
        confs = confs[::-1]
    prev = prev_result if command == "DEL" else None
    for conf in confs:
        caps = [k for k, v in (conf.get("capabilities") or {}).items() if v]
        conf.pop("capabilities", None)
        rc_conf = {k: v for k, v in (runtime_config or {}).items() if k in caps}
        if rc_conf:
            conf["runtimeConfig"] = rc_conf
        if prev is not None:
            conf["prevResult"] = prev
        rc, out, err = exec_plugin(bin_dir, conf, command, container_id, netns, ifname, cni_args)
        if rc != 0:
            raise RuntimeError(f"{command} by {conf['type']} failed ({rc}): {out.strip()} {err.strip()}")
        if command == "ADD":
            prev = json.loads(out)
    return prev if command == "ADD" else None


def cni_gc(bin_dir: Path, conflist: dict, valid: Iterable[tuple[str, str]]) -> None:
    """CNI 1.1 GC over a conflist, as libcni's GCNetworkList does: every plugin gets its config
    (at cniVersion 1.1.0) with ``cni.dev/valid-attachments``. Raises on a failing plugin."""
    attachments = [{"containerID": cid, "ifname": ifn} for cid, ifn in valid]
    for conf in plugin_confs(conflist, "1.1.0"):
        conf["cni.dev/valid-attachments"] = attachments
        rc, out, err = exec_plugin(bin_dir, conf, "GC")
        if rc != 0:
            raise RuntimeError(f"GC by {conf['type']} failed ({rc}): {out.strip()} {err.strip()}")


# --------------------------------------------------------------------------- containerd

CONTAINERD_CONFIG = """\
version = 2
root = "{root}"
state = "{state}"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
                    "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs",
                    "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[grpc]
  address = "{socket}"

[ttrpc]
  address = "{socket}.ttrpc"

[debug]
  level = "info"

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "{base}/opt"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{sandbox_image}"
  restrict_oom_score_adj = true
  disable_apparmor = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  max_concurrent_downloads = 1
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{cni_bin_dir}"
    conf_dir = "{cni_conf_dir}"
    max_conf_num = 1
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
"""


class Containerd:
    """A private containerd with the CRI plugin. ``start()`` writes the config, starts it, waits
    for the socket and imports the images tarball into ``k8s.io``; ``cri()`` is a client."""

    def __init__(self, name: str, cni_bin_dir: Path, cni_conf_dir: Path, images_tar: Path | None,
                 base: Path | None = None, log_dir: Path | None = None, netns: str | None = None):
        self.name = name
        RUNTIME_BASE.mkdir(parents=True, exist_ok=True)
        self.base = Path(base) if base else Path(tempfile.mkdtemp(prefix=f"{name}.", dir=RUNTIME_BASE))
        # a simulated host's network namespace to run in (``nsenter --net``, which keeps the
        # cgroup mounts ``ip netns exec`` would hide): its CNI plugins run there too
        self.netns = netns
        self.socket = self.base / "containerd.sock"
        self.config = self.base / "config.toml"
        self.cni_bin_dir = Path(cni_bin_dir)
        self.cni_conf_dir = Path(cni_conf_dir)
        self.images_tar = images_tar
        self.log_dir = Path(log_dir) if log_dir else harness.results_dir() / "runtimes"
        self.log_path: Path | None = None
        self.proc: subprocess.Popen | None = None
        self.netns_paths: set[str] = set()  # pod netns seen (removed at cleanup)
        self.sandbox_ids: set[str] = set()
        self.cgroup_parent = f"/{name}"
        self.starts = 0

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = 30) -> "Containerd":
        for d in ("root", "state", "opt"):
            (self.base / d).mkdir(parents=True, exist_ok=True)
        self.config.write_text(CONTAINERD_CONFIG.format(
            root=self.base / "root", state=self.base / "state", socket=self.socket, base=self.base,
            sandbox_image=f"docker.io/library/{SANDBOX_IMAGE}", cni_bin_dir=self.cni_bin_dir,
            cni_conf_dir=self.cni_conf_dir))
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.starts += 1
        self.log_path = self.log_dir / f"{self.name}.{os.getpid()}.{self.starts}.log"
        env = dict(os.environ)
        env["PATH"] = "/usr/sbin:/usr/bin:/sbin:/bin"
        with open(self.log_path, "ab") as log:
            argv = [CONTAINERD, "--config", str(self.config)]
            if self.netns:
                argv = ["nsenter", f"--net={self.netns}", *argv]      # nsenter execs: same pid
            self.proc = subprocess.Popen(argv,
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                         env=env, start_new_session=True)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"containerd exited with {self.proc.returncode}; log "
                                   f"{self.log_path}:\n{harness._tail(self.log_path)}")
            if self.socket.exists() and self._ctr("version", check=False, timeout=5).returncode == 0:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"containerd socket not answering after {timeout}s:\n"
                                   f"{harness._tail(self.log_path)}")
            time.sleep(0.05)
        if self.images_tar is not None and self.starts == 1:
            self._ctr("-n", "k8s.io", "images", "import", str(self.images_tar), timeout=120)
        if self.images_tar is not None:
            self.wait_image(f"docker.io/library/{SANDBOX_IMAGE}")
        return self

    def wait_image(self, ref: str, timeout: float = 20) -> None:
        """Waits until the CRI image service knows ``ref`` (it learns of imports by events, so a
        RunPodSandbox right after the import would otherwise try to pull it)."""
        import grpc
        from cri_api.v1 import api_pb2, api_pb2_grpc

        with grpc.insecure_channel(f"unix://{self.socket}") as ch:
            stub = api_pb2_grpc.ImageServiceStub(ch)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                st = stub.ImageStatus(api_pb2.ImageStatusRequest(image=api_pb2.ImageSpec(image=ref)), timeout=10)
                if st.image.id:
                    return
                time.sleep(0.05)
        raise RuntimeError(f"CRI does not see image {ref} after {timeout}s")

    def _ctr(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        return harness.sh(CTR, "--address", str(self.socket), *args, check=check, timeout=timeout)

    def ctr(self, *args: str, **kw) -> subprocess.CompletedProcess:
        return self._ctr(*args, **kw)

    def cri(self) -> "Cri":
        return Cri(self.socket, self)

    def shim_pids(self) -> list[int]:
        sock = str(self.socket)
        return _pids_by_cmdline(lambda a: bool(a) and "containerd-shim" in a[0] and sock in a)

    def all_pids(self) -> list[int]:
        """containerd, its shims and everything under them (the pods' processes)."""
        roots = self.shim_pids()
        if self.running:
            roots.insert(0, self.proc.pid)
        return descendants(roots)

    def crash(self) -> list[int]:
        """SIGKILL containerd, its shims and the pods' processes, all at once (node crash)."""
        pids = self.all_pids()
        kill_pids(pids)
        if self.proc is not None:
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                pass
        return pids

    def stop(self, timeout: float = 20) -> None:
        """SIGTERM containerd (SIGKILL after ``timeout``); shims and pods are left running."""
        if self.proc is None or self.proc.poll() is not None:
            return
        harness.terminate(self.proc, timeout)

    def remove_all_pods(self, timeout: float = 60) -> list[str]:
        """Stop and remove every sandbox through CRI (runs the CNI DELs); returns errors."""
        errors = []
        if not self.running:
            return ["containerd not running"]
        cri = self.cri()
        try:
            for sb in cri.list_pod_sandboxes():
                for verb in (cri.stop_pod_sandbox, cri.remove_pod_sandbox):
                    try:
                        verb(sb.id, timeout=timeout)
                    except Exception as e:  # noqa: BLE001
                        errors.append(f"{verb.__name__} {sb.id[:12]}: {e}")
        except Exception as e:  # noqa: BLE001
            errors.append(f"list: {e}")
        finally:
            cri.close()
        return errors

    def cleanup(self) -> list[str]:
        """Everything gone: processes (containerd, shims, pods), mounts under the base dir, the
        pods' network namespaces, their cgroups and shim sockets, the base dir. Returns errors."""
        errors = []
        kill_pids(self.all_pids())
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        for ns in sorted(self.netns_paths):
            remove_netns_path(ns)
        for sid in self.sandbox_ids:  # shim sockets: /run/containerd/s/sha256(address/ns/id)
            digest = hashlib.sha256(os.path.join(str(self.socket) + ".ttrpc", "k8s.io", sid).encode()).hexdigest()
            Path(f"/run/containerd/s/{digest}").unlink(missing_ok=True)
            digest = hashlib.sha256(os.path.join(str(self.socket), "k8s.io", sid).encode()).hexdigest()
            Path(f"/run/containerd/s/{digest}").unlink(missing_ok=True)
        remove_cgroups(self.cgroup_parent)
        unmount_under(self.base)
        shutil.rmtree(self.base, ignore_errors=True)
        if self.base.exists():
            errors.append(f"{self.base} not removed")
        return errors


def remove_cgroups(parent: str) -> None:
    """rmdir ``parent`` and everything under it in every cgroup v1 controller (and v2)."""
    rel = parent.strip("/")
    if not rel:
        return
    roots = [CGROUP_ROOT] + ([p for p in CGROUP_ROOT.iterdir() if p.is_dir()] if CGROUP_ROOT.is_dir() else [])
    for r in roots:
        top = r / rel
        if not top.is_dir():
            continue
        for d in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
            try:
                d.rmdir()
            except OSError:
                pass
        try:
            top.rmdir()
        except OSError:
            pass


# --------------------------------------------------------------------------- CRI client

class Cri:
    """CRI v1 RuntimeService client over ``unix://socket``; pod sandboxes only (as kubelet)."""

    def __init__(self, socket_path: Path, containerd: Containerd | None = None):
        import grpc
        from cri_api.v1 import api_pb2, api_pb2_grpc

        self.pb = api_pb2
        self.grpc = grpc
        self.channel = grpc.insecure_channel(f"unix://{socket_path}")
        self.stub = api_pb2_grpc.RuntimeServiceStub(self.channel)
        self.containerd = containerd

    def close(self) -> None:
        self.channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def version(self):
        return self.stub.Version(self.pb.VersionRequest(), timeout=10)

    def wait_network_ready(self, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            st = self.stub.Status(self.pb.StatusRequest(), timeout=10)
            last = {c.type: (c.status, c.reason, c.message) for c in st.status.conditions}
            if last.get("NetworkReady", (False,))[0]:
                return
            time.sleep(0.1)
        raise RuntimeError(f"CRI network not ready: {last}")

    def pod_config(self, name: str, namespace: str = "pynet-test",
                   port_mappings: Sequence[tuple[int, int, str]] = (), uid: str | None = None):
        """PodSandboxConfig like kubelet's: ``port_mappings`` = [(container_port, host_port, "TCP")]."""
        pb = self.pb
        protos = {"TCP": pb.TCP, "UDP": pb.UDP, "SCTP": pb.SCTP}
        linux = pb.LinuxPodSandboxConfig(
            cgroup_parent=(self.containerd.cgroup_parent if self.containerd else ""),
            security_context=pb.LinuxSandboxSecurityContext(
                namespace_options=pb.NamespaceOption(network=pb.POD, pid=pb.CONTAINER, ipc=pb.POD)))
        return pb.PodSandboxConfig(
            metadata=pb.PodSandboxMetadata(name=name, uid=uid or str(uuid.uuid4()),
                                           namespace=namespace, attempt=0),
            hostname=name[:63],
            port_mappings=[pb.PortMapping(protocol=protos[p.upper()], container_port=c, host_port=h)
                           for c, h, p in port_mappings],
            linux=linux)

    def run_pod_sandbox(self, name: str, port_mappings: Sequence[tuple[int, int, str]] = (),
                        namespace: str = "pynet-test", timeout: float = 30) -> str:
        cfg = self.pod_config(name, namespace, port_mappings)
        sid = self.stub.RunPodSandbox(self.pb.RunPodSandboxRequest(config=cfg), timeout=timeout).pod_sandbox_id
        if self.containerd is not None:
            self.containerd.sandbox_ids.add(sid)
            try:
                ns = self.netns_path(sid)
                if ns:
                    remember_netns(self.containerd.base, self.containerd.netns_paths, ns)
            except Exception:  # noqa: BLE001
                pass
        return sid

    def stop_pod_sandbox(self, sid: str, timeout: float = 60) -> None:
        self.stub.StopPodSandbox(self.pb.StopPodSandboxRequest(pod_sandbox_id=sid), timeout=timeout)

    def remove_pod_sandbox(self, sid: str, timeout: float = 60) -> None:
        self.stub.RemovePodSandbox(self.pb.RemovePodSandboxRequest(pod_sandbox_id=sid), timeout=timeout)

    def list_pod_sandboxes(self, ready_only: bool = False):
        flt = None
        if ready_only:
            flt = self.pb.PodSandboxFilter(state=self.pb.PodSandboxStateValue(state=self.pb.SANDBOX_READY))
        req = self.pb.ListPodSandboxRequest(filter=flt) if flt else self.pb.ListPodSandboxRequest()
        return list(self.stub.ListPodSandbox(req, timeout=30).items)

    def status(self, sid: str, verbose: bool = True):
        return self.stub.PodSandboxStatus(self.pb.PodSandboxStatusRequest(pod_sandbox_id=sid, verbose=verbose),
                                          timeout=30)

    def pod_ip(self, sid: str) -> str:
        return self.status(sid, verbose=False).status.network.ip

    def is_ready(self, sid: str) -> bool:
        return self.status(sid, verbose=False).status.state == self.pb.SANDBOX_READY

    def netns_path(self, sid: str) -> str | None:
        info = self.status(sid, verbose=True).info.get("info")
        if not info:
            return None
        data = json.loads(info)
        for ns in (((data.get("runtimeSpec") or {}).get("linux") or {}).get("namespaces") or []):
            if ns.get("type") == "network" and ns.get("path"):
                return ns["path"]
        return None


# --------------------------------------------------------------------------- podman

CONTAINERS_CONF = """\
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=4096:4096"]
log_driver = "k8s-file"
netns = "bridge"
cgroups = "enabled"

[network]
network_backend = "cni"
cni_plugin_dirs = ["{cni_bin_dir}"]
network_config_dir = "{cni_conf_dir}"
default_network = "{name}-default"
default_subnet = "10.246.255.0/24"

[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "{base}/events.log"
tmp_dir = "{base}/tmp"
runtime = "runc"
static_dir = "{base}/root/libpod"
volume_path = "{base}/root/volumes"
"""


class Podman:
    """podman 4 with the CNI backend, all its state under ``base``; ``run(*args)`` is the CLI."""

    def __init__(self, name: str, cni_bin_dir: Path, cni_conf_dir: Path, images_tar: Path | None,
                 base: Path | None = None):
        self.name = name
        RUNTIME_BASE.mkdir(parents=True, exist_ok=True)
        self.base = Path(base) if base else Path(tempfile.mkdtemp(prefix=f"{name}.", dir=RUNTIME_BASE))
        self.cni_bin_dir = Path(cni_bin_dir)
        self.cni_conf_dir = Path(cni_conf_dir)
        self.images_tar = images_tar
        self.conf = self.base / "containers.conf"
        self.storage_conf = self.base / "storage.conf"
        self.containers: list[str] = []
        self.netns_paths: set[str] = set()
        for d in ("root", "runroot", "tmp"):
            (self.base / d).mkdir(parents=True, exist_ok=True)
        self.conf.write_text(CONTAINERS_CONF.format( cni_bin_dir=self.cni_bin_dir, cni_conf_dir=self.cni_conf_dir,
            name=name, base=self.base))
        self.storage_conf.write_text(
            f'[storage]\ndriver = "overlay"\nrunroot = "{self.base}/runroot"\ngraphroot = "{self.base}/root"\n')
        self.env = dict(os.environ)
        self.env.update({"CONTAINERS_CONF": str(self.conf), "CONTAINERS_STORAGE_CONF": str(self.storage_conf),
                         "PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "TMPDIR": str(self.base / "tmp")})
        self.loaded = False

    def run(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        argv = [PODMAN, "--root", str(self.base / "root"), "--runroot", str(self.base / "runroot"),
                "--network-backend", "cni", "--cgroup-manager", "cgroupfs", *args]
        return harness.sh(*argv, check=check, timeout=timeout, env=self.env)

    def load_images(self) -> None:
        if not self.loaded and self.images_tar is not None:
            self.run("load", "-i", str(self.images_tar), timeout=180)
            self.loaded = True

    def run_container(self, name: str, network: str, ip: str | None = None,
                      publish: Sequence[str] = (), command: Sequence[str] = ("sleep", "3600"),
                      image: str | None = None) -> str:
        args = ["run", "-d", "--pull=never", "--name", name, "--network", network]
        if ip:
            args += ["--ip", ip]
        for p in publish:
            args += ["-p", p]
        args += [image or f"localhost/{TEST_IMAGE}", *command]
        self.containers.append(name)
        cid = self.run(*args, timeout=120).stdout.strip()
        ns = self.netns_path(name)
        if ns:
            remember_netns(self.base, self.netns_paths, ns)
        return cid

    def inspect(self, name: str) -> dict:
        data = json.loads(self.run("inspect", "--type", "container", name).stdout)
        return data[0]

    def netns_path(self, name: str) -> str | None:
        return (self.inspect(name).get("NetworkSettings") or {}).get("SandboxKey") or None

    def ip(self, name: str, network: str) -> str:
        nets = (self.inspect(name).get("NetworkSettings") or {}).get("Networks") or {}
        return (nets.get(network) or {}).get("IPAddress", "")

    def rm(self, name: str, check: bool = True) -> None:
        self.run("rm", "-f", "-t", "0", name, check=check, timeout=120)

    def cleanup(self) -> list[str]:
        errors = []
        for c in reversed(self.containers):
            p = self.run("rm", "-f", "-t", "0", c, check=False, timeout=120)
            if p.returncode != 0 and "no such container" not in (p.stderr or "").lower():
                errors.append(f"podman rm {c}: {p.stderr.strip()}")
        conmons = _pids_by_cmdline(lambda a: bool(a) and a[0].endswith("conmon") and
                                   any(str(self.base) in x for x in a))
        kill_pids(descendants(conmons))
        for ns in sorted(self.netns_paths):
            remove_netns_path(ns)
        self.run("system", "reset", "-f", check=False, timeout=120)
        unmount_under(self.base)
        shutil.rmtree(self.base, ignore_errors=True)
        if self.base.exists():
            errors.append(f"{self.base} not removed")
        return errors


# --------------------------------------------------------------------------- inside pods

def httpd_command(text: str, port: int = 80) -> list[str]:
    """A container command serving ``text`` at /index.html on ``port`` (busybox httpd)."""
    return ["sh", "-c", f"mkdir -p /tmp/www && echo '{text}' > /tmp/www/index.html && "
            f"exec httpd -f -p {port} -h /tmp/www"]


def ns_exec(netns: str, *args: str, check: bool = True, timeout: float = 15) -> subprocess.CompletedProcess:
    """Runs ``args`` in the network namespace pinned at ``netns`` (host mounts, host binaries)."""
    return harness.sh("nsenter", f"--net={netns}", *args, check=check, timeout=timeout)


def ns_ping(netns: str, ip: str, attempts: int = 3, wait: int = 1) -> bool:
    """ICMP echo from inside ``netns`` to ``ip`` (busybox ping; the host has no ping): True on the
    first reply, at most ``attempts`` echoes (the first may be spent on ARP)."""
    for _ in range(attempts):
        if ns_exec(netns, busybox(), "ping", "-c", "1", "-W", str(wait), ip,
                   check=False, timeout=wait + 10).returncode == 0:
            return True
    return False


def ns_addrs(netns: str, ifname: str = "eth0") -> list[str]:
    out = ns_exec(netns, "ip", "-j", "addr", "show", "dev", ifname, check=False).stdout
    try:
        data = json.loads(out or "[]")
    except ValueError:
        return []
    return [f"{a['local']}/{a['prefixlen']}" for i in data for a in i.get("addr_info", [])]


def ns_default_gw(netns: str) -> str | None:
    out = ns_exec(netns, "ip", "-j", "route", "show", "default", check=False).stdout
    try:
        data = json.loads(out or "[]")
    except ValueError:
        return None
    return data[0].get("gateway") if data else None


class HttpServer:
    """busybox httpd in the foreground inside a pod's netns, serving ``text`` at /index.html."""

    def __init__(self, netns: str, port: int, text: str, workdir: Path):
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "index.html").write_text(text)
        self.proc = subprocess.Popen(["nsenter", f"--net={netns}", busybox(), "httpd", "-f",
                                      "-p", str(port), "-h", str(self.dir)],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            ss = ns_exec(netns, "ss", "-Hltn", f"sport = :{port}", check=False).stdout
            if ss.strip():
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"httpd exited with {self.proc.returncode}")
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"httpd not listening on {port} in {netns}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def http_get(ip: str, port: int = 80, netns: str | None = None, timeout: int = 3) -> str | None:
    """GET /index.html from ``ip:port`` (from inside ``netns`` if given, else from the host) with
    busybox nc (busybox wget crashes in static builds here); the body, or None."""
    req = "GET /index.html HTTP/1.0\r\n\r\n"
    argv = [busybox(), "nc", "-w", str(timeout), ip, str(port)]
    if netns:
        argv = ["nsenter", f"--net={netns}", *argv]
    try:
        p = harness.sh(*argv, check=False, timeout=timeout + 10, input=req)
    except subprocess.TimeoutExpired:
        return None
    head, sep, body = p.stdout.replace("\r\n", "\n").partition("\n\n")
    if p.returncode != 0 or not sep or " 200 " not in head.split("\n", 1)[0]:
        return None
    return body


def iptables_save() -> str:
    return harness.sh("iptables-save", check=False, timeout=30).stdout
