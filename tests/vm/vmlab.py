"""The kernel lab: run pytest node ids inside a qemu guest booting Debian's own kernel.

Plain Python (no pytest imports), used by ``tests/vm/conftest.py``; run as a script to build the
image and run node ids by hand::

    python tests/vm/vmlab.py build
    python tests/vm/vmlab.py run tests/vm/guest/test_vlan_isolation.py -q

Why: this machine's kernel lacks 802.1q, dummy links, ESP, WireGuard, ...; Debian's kernel
(``linux-image-amd64``) has them as modules, and that is the kernel pynet's users run.

The image (``build_image``), cached under ``cache_dir()/<package>_<version>_<recipe hash>``:
    vmlinuz      the kernel of the package ``linux-image-amd64`` depends on (``apt-get download``,
                 ``dpkg-deb -x``); a new package version, or a change of the recipe below, is a new
                 cache entry (older entries are removed)
    initrd.gz    busybox-static, ``/init`` (INIT below) and only the modules of ``MODULES`` with
                 their dependencies (``depmod``), so it stays small and boots fast

The guest (``run_in_vm``): qemu in software emulation (TCG: a KVM guest hangs on this machine),
``-nic none`` and no other network device (the guest's only links are those its tests create), the
machine's root shared READ-ONLY over virtio-9p (tag ``host``) so the guest runs this very Python,
venv and iproute2, and a per-run scratch directory shared WRITABLE (tag ``out``).  ``/init`` loads
the modules, mounts the share, puts tmpfs on ``/run`` and ``/tmp``, and runs ``out/run.sh`` chrooted
into the share; run.sh runs pytest over the node ids with junit XML into the scratch directory and
writes its exit code there.  The kernel's module autoloading is off (``kernel.modprobe`` points
nowhere): the guest has exactly the modules ``/init`` loaded, which lets a test unload one to see
pynet's fallback; ``/run/pynet-vm/root`` (``modprobe -d``) loads it again.

Every wait is bounded (BOOT_TIMEOUT for the kernel to reach /init's "running" line, the caller's
run timeout for everything); qemu is killed on any failure.  Failures are ``LabError`` with one
readable line.
"""
from __future__ import annotations

import fcntl
import functools
import hashlib
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.junit import parse_junit

REPO = Path(__file__).resolve().parents[2]
META_PACKAGE = "linux-image-amd64"
QEMU = os.environ.get("PYNET_VM_QEMU", "qemu-system-x86_64")
BUSYBOX = "/bin/busybox"
BOOT_TIMEOUT = float(os.environ.get("PYNET_VM_BOOT_TIMEOUT", "240"))
RUN_TIMEOUT = float(os.environ.get("PYNET_VM_RUN_TIMEOUT", "480"))
# a host-side test waits for the whole guest run (the first one pays for it)
HOST_TEST_TIMEOUT = RUN_TIMEOUT + 120
MEMORY_MB = int(os.environ.get("PYNET_VM_MEMORY", "1024"))
CPUS = int(os.environ.get("PYNET_VM_CPUS", "2"))
GUEST_OUT = "/run/pynet-vm/out"          # the scratch share, as the chrooted guest sees it
GUEST_MODROOT = "/run/pynet-vm/root"     # modprobe -d root holding the initramfs' modules

# Loaded in this order by /init (modprobe resolves their dependencies): the share, then the link
# types tests create (the first ones are those this machine's kernel lacks).
MODULES = (
    "virtio_pci", "9pnet_virtio", "9p",
    "8021q", "dummy", "macvlan", "veth", "bridge", "vxlan",
    "esp4", "esp6", "xfrm_user", "wireguard", "geneve", "sch_netem",
)
# In the image but not loaded at boot, because loading them changes every namespace (ipip and sit
# add a fallback tunl0/sit0 to each): a test loads them itself (modprobe -d $PYNET_VM_MODROOT).
EXTRA_MODULES = ("ipip", "sit", "ip6_tunnel")

INIT = r"""#!/bin/busybox sh
/bin/busybox mkdir -p /bin /sbin /proc /sys /dev /host
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
say() { echo "pynet-vm: $*" > /dev/ttyS0; }
say "init"
for m in $(cat /etc/pynet-modules); do
    modprobe "$m" || say "modprobe $m failed"
done
# exactly the modules above: no autoloading behind the tests' back
echo /nonexistent/modprobe > /proc/sys/kernel/modprobe
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=512000,cache=loose host /host || { say "FATAL: mount host share"; poweroff -f; }
mount -t proc proc /host/proc
mount -t sysfs sysfs /host/sys
mount -t devtmpfs devtmpfs /host/dev
mkdir -p /host/dev/shm /host/dev/pts
mount -t tmpfs -o mode=1777 shm /host/dev/shm
mount -t tmpfs -o mode=755 run /host/run
mount -t tmpfs -o mode=1777 tmp /host/tmp
mkdir -p /host@OUT@ /host@MODROOT@/lib/modules
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 out /host@OUT@ || { say "FATAL: mount scratch share"; poweroff -f; }
mount --bind /lib/modules /host@MODROOT@/lib/modules
say "running"
chroot /host /bin/sh @OUT@/run.sh
say "exit $?"
sync
poweroff -f
""".replace("@OUT@", GUEST_OUT).replace("@MODROOT@", GUEST_MODROOT)


class LabError(RuntimeError):
    """One readable line: why the kernel lab could not run."""


def _sh(*argv, cwd=None, timeout=600) -> str:
    try:
        p = subprocess.run([str(a) for a in argv], cwd=cwd, capture_output=True, text=True,
                           timeout=timeout, stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        raise LabError(f"{argv[0]} not found (install it: see scripts/test)") from None
    except subprocess.TimeoutExpired:
        raise LabError(f"{' '.join(map(str, argv))} took longer than {timeout}s") from None
    if p.returncode != 0:
        last = (p.stderr.strip() or p.stdout.strip()).splitlines()[-1:] or [""]
        raise LabError(f"{' '.join(map(str, argv))} failed ({p.returncode}): {last[0]}")
    return p.stdout


def cache_dir() -> Path:
    if os.environ.get("PYNET_VM_CACHE"):
        return Path(os.environ["PYNET_VM_CACHE"])
    if os.geteuid() == 0:
        return Path("/var/cache/pynet-vm")
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "pynet-vm"


def kernel_package() -> tuple[str, str]:
    """(package, version) of the kernel image ``linux-image-amd64`` depends on."""
    out = _sh("apt-cache", "depends", META_PACKAGE)
    m = re.search(r"Depends:\s*(linux-image-\S+)", out)
    if not m:
        raise LabError(f"apt-cache depends {META_PACKAGE} names no kernel image (apt-get update?)")
    pkg = m.group(1)
    pol = _sh("apt-cache", "policy", pkg)
    m = re.search(r"Candidate:\s*(\S+)", pol)
    if not m or m.group(1) == "(none)":
        raise LabError(f"no candidate version of {pkg} (apt-get update?)")
    return pkg, m.group(1)


def _recipe_hash() -> str:
    h = hashlib.sha256()
    h.update(INIT.encode())
    h.update(" ".join(MODULES + EXTRA_MODULES).encode())
    h.update(Path(BUSYBOX).read_bytes() if Path(BUSYBOX).exists() else b"")
    return h.hexdigest()[:12]


@dataclass
class Image:
    dir: Path
    kernel: Path
    initrd: Path
    kver: str
    package: str
    version: str


def _module_closure(modroot: Path, names) -> list[str]:
    """Relative paths of the modules ``names`` and everything they depend on (modules.dep)."""
    deps = {}
    for line in (modroot / "modules.dep").read_text().splitlines():
        mod, _, rest = line.partition(":")
        deps[mod] = rest.split()
    by_name = {Path(m).name.split(".ko")[0].replace("-", "_"): m for m in deps}
    builtin = set()
    bpath = modroot / "modules.builtin"
    if bpath.exists():
        builtin = {Path(l).name.split(".ko")[0].replace("-", "_") for l in bpath.read_text().split()}
    want, todo = set(), []
    for n in names:
        key = n.replace("-", "_")
        if key in by_name:
            todo.append(by_name[key])
        elif key not in builtin:
            raise LabError(f"the kernel package has no module {n}")
    while todo:
        m = todo.pop()
        if m not in want:
            want.add(m)
            todo.extend(deps.get(m, []))
    return sorted(want)


def build_image(log=print) -> Image:
    """The cached kernel + initramfs for the current package version; built under a lock."""
    pkg, version = kernel_package()
    key = f"{pkg}_{version}_{_recipe_hash()}"
    root = cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)          # a concurrent run builds the same entry
        final = root / key
        if not (final / "ready").exists():
            log(f"[kernel-lab] building {key} in {root}")
            t0 = time.monotonic()
            _build(final, pkg)
            log(f"[kernel-lab] built in {time.monotonic() - t0:.0f}s")
        for old in root.iterdir():                # drop other package versions
            if old.is_dir() and not old.name.startswith((".", f"{pkg}_{version}_")):
                shutil.rmtree(old, ignore_errors=True)
    kver = (final / "kver").read_text().strip()
    return Image(final, final / "vmlinuz", final / "initrd.gz", kver, pkg, version)


def _build(final: Path, pkg: str) -> None:
    if not Path(BUSYBOX).exists():
        raise LabError(f"{BUSYBOX} missing (Debian package busybox-static)")
    work = Path(tempfile.mkdtemp(prefix=".build-", dir=final.parent))
    try:
        _sh("apt-get", "download", pkg, cwd=work, timeout=900)
        debs = list(work.glob("*.deb"))
        if len(debs) != 1:
            raise LabError(f"apt-get download {pkg} left {len(debs)} .deb files")
        tree = work / "tree"
        _sh("dpkg-deb", "-x", debs[0], tree, timeout=900)
        kernels = sorted((tree / "boot").glob("vmlinuz-*"))
        if not kernels:
            raise LabError(f"{pkg} holds no /boot/vmlinuz-*")
        kver = kernels[0].name[len("vmlinuz-"):]
        src_mods = tree / "lib" / "modules" / kver
        _sh("depmod", "-b", tree, kver)
        rd = work / "initrd"
        dst_mods = rd / "lib" / "modules" / kver
        for rel in _module_closure(src_mods, MODULES + EXTRA_MODULES):
            (dst_mods / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src_mods / rel, dst_mods / rel)
        for f in ("modules.order", "modules.builtin", "modules.builtin.modinfo"):
            if (src_mods / f).exists():
                shutil.copy2(src_mods / f, dst_mods / f)
        _sh("depmod", "-b", rd, kver)
        for d in ("bin", "etc", "proc", "sys", "dev", "host", "tmp"):
            (rd / d).mkdir(exist_ok=True)
        shutil.copy2(BUSYBOX, rd / "bin" / "busybox")
        (rd / "etc" / "pynet-modules").write_text("\n".join(MODULES) + "\n")
        (rd / "init").write_text(INIT)
        (rd / "init").chmod(0o755)
        with open(work / "initrd.gz", "wb") as out:
            files = subprocess.Popen(["find", "."], cwd=rd, stdout=subprocess.PIPE)
            cpio = subprocess.Popen(["cpio", "-o", "-H", "newc", "--quiet"], cwd=rd,
                                    stdin=files.stdout, stdout=subprocess.PIPE)
            gz = subprocess.Popen(["gzip", "-1"], stdin=cpio.stdout, stdout=out)
            files.stdout.close()
            cpio.stdout.close()
            if gz.wait(300) or cpio.wait(300) or files.wait(300):
                raise LabError("packing the initramfs failed (is cpio installed?)")
        final.mkdir()
        shutil.move(str(kernels[0]), final / "vmlinuz")
        shutil.move(str(work / "initrd.gz"), final / "initrd.gz")
        (final / "kver").write_text(kver + "\n")
        (final / "ready").write_text(f"{pkg}\n")
    except BaseException:
        shutil.rmtree(final, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(work, ignore_errors=True)


# --------------------------------------------------------------------------- running


@functools.lru_cache(maxsize=1)
def guest_nodeids() -> tuple[tuple[str, ...], str]:
    """(node ids marked kernel_lab under tests/, error line or "") -- listed by a
    ``--collect-only`` subprocess in which the root conftest does not deselect them."""
    env = dict(os.environ, PYNET_VM_COLLECT="1")
    argv = [sys.executable, "-m", "pytest", "--collect-only", "-q", "-m", "kernel_lab",
            "-p", "no:cacheprovider", "tests"]
    try:
        p = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=180,
                           stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return (), "listing the kernel_lab tests took longer than 180s"
    ids = tuple(l.strip() for l in p.stdout.splitlines() if "::" in l and not l.startswith(" "))
    if p.returncode != 0 or not ids:
        tail = (p.stdout.strip() or p.stderr.strip()).splitlines()[-1:] or ["no output"]
        return ids, f"listing the kernel_lab tests failed (pytest exit {p.returncode}): {tail[0]}"
    return ids, ""


@dataclass
class RunResult:
    rc: int | None
    console: str
    pytest_log: str
    cases: dict = field(default_factory=dict)   # nodeid -> CaseResult
    boot_s: float = 0.0
    total_s: float = 0.0


# The guest puts fresh tmpfs on /tmp and /run (its own scratch): a checkout or venv there would
# be hidden, so each such tree gets a read-only share of its own, mounted over at its path.
SHADOWED = ("/tmp", "/run")


def shadowed_trees() -> list[Path]:
    """The checkout and the venv when they live under a path the guest shadows."""
    venv = Path(os.environ.get("PYNET_VENV", REPO / ".venv")).resolve()
    out: list[Path] = []
    for tree in (REPO.resolve(), venv):
        if any(str(tree) == s or str(tree).startswith(s + "/") for s in SHADOWED) \
                and not any(tree == t or t in tree.parents for t in out):
            out.append(tree)
    return out


def qemu_argv(image: Image, scratch: Path) -> list[str]:
    shares = []
    for i, tree in enumerate(shadowed_trees()):
        shares += ["-virtfs", f"local,path={tree},mount_tag=tree{i},security_model=none,readonly=on,"
                              "multidevs=remap"]
    return [
        QEMU, "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
        "-machine", "q35,accel=tcg", "-cpu", "max", "-smp", str(CPUS), "-m", str(MEMORY_MB),
        "-nic", "none",                                    # no way out toward the uplink
        "-serial", "stdio",
        "-kernel", str(image.kernel), "-initrd", str(image.initrd),
        "-append", "console=ttyS0 quiet loglevel=3 panic=-1 rdinit=/init",
        "-virtfs", "local,path=/,mount_tag=host,security_model=none,readonly=on,multidevs=remap",
        "-virtfs", f"local,path={scratch},mount_tag=out,security_model=none,multidevs=remap",
        *shares,
    ]


def guest_script(nodeids, pytest_args=(), test_timeout: float = 240) -> str:
    py = Path(os.environ.get("PYNET_VENV", REPO / ".venv")) / "bin" / "python"
    if not py.exists():
        py = Path(sys.executable)
    env = {
        "PYNET_IN_VM": "1", "PYNET_REPO": str(REPO), "PYNET_TEST_RESULTS": GUEST_OUT,
        "PYNET_VM_MODROOT": GUEST_MODROOT, "HOME": "/tmp", "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONUNBUFFERED": "1", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        "HYPOTHESIS_STORAGE_DIRECTORY": "/tmp/hypothesis",
        "PYNET_TEST_IMAGE": os.environ.get("PYNET_TEST_IMAGE", "pynet-test:latest"),
    }
    argv = [str(py), "-m", "pytest", "-p", "no:cacheprovider", "-o", "junit_family=xunit2",
            "-o", "junit_logging=all", f"--junitxml={GUEST_OUT}/junit.xml",
            f"--timeout={int(test_timeout)}", "-rA", "--durations=0",
            *pytest_args, *nodeids]
    lines = ["set -u"]
    for i, tree in enumerate(shadowed_trees()):
        q = shlex.quote(str(tree))
        lines += [f"mkdir -p {q}",
                  f"mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=512000,cache=loose tree{i} {q}"]
    lines.append(f"cd {shlex.quote(str(REPO))}")
    lines += [f"export {k}={shlex.quote(v)}" for k, v in env.items()]
    lines.append(f"{shlex.join(argv)} > {GUEST_OUT}/pytest.log 2>&1")
    lines.append(f"echo $? > {GUEST_OUT}/rc")
    return "\n".join(lines) + "\n"


def run_in_vm(image: Image, nodeids, scratch: Path, timeout: float, pytest_args=(),
              test_timeout: float = 240, log=print) -> RunResult:
    """Boot the guest, run ``nodeids`` in it, collect the results; qemu never outlives this."""
    if shutil.which(QEMU) is None:
        raise LabError(f"qemu cannot start: {QEMU} not found (Debian package qemu-system-x86)")
    (scratch / "run.sh").write_text(guest_script(nodeids, pytest_args, test_timeout))
    console_path = scratch / "console.log"
    t0 = time.monotonic()
    try:
        proc = subprocess.Popen(qemu_argv(image, scratch), stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                start_new_session=True)
    except OSError as e:
        raise LabError(f"qemu cannot start: {e}") from None
    lines: list[str] = []
    booted = threading.Event()

    def pump():
        for raw in proc.stdout:
            line = raw.decode(errors="replace").rstrip("\r\n")
            lines.append(line)
            if "pynet-vm: running" in line:
                booted.set()

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    boot_s = 0.0
    try:
        deadline = t0 + timeout
        while not booted.wait(0.5):
            if proc.poll() is not None:
                reader.join(5)
                raise LabError(f"qemu cannot start or the guest stopped before /init ran "
                               f"(exit {proc.returncode}): {_last(lines)}")
            if time.monotonic() > t0 + min(BOOT_TIMEOUT, timeout):
                raise LabError(f"guest did not boot within {min(BOOT_TIMEOUT, timeout):.0f}s: "
                               f"{_last(lines)}")
        boot_s = time.monotonic() - t0
        log(f"[kernel-lab] guest up in {boot_s:.0f}s, running {len(nodeids)} node id(s)")
        try:
            proc.wait(max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            raise LabError(f"guest tests did not finish within {timeout:.0f}s") from None
        reader.join(5)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        console_path.write_text("\n".join(lines) + "\n")
    rc_file = scratch / "rc"
    rc = int(rc_file.read_text().strip()) if rc_file.exists() and rc_file.read_text().strip() else None
    log_file = scratch / "pytest.log"
    res = RunResult(rc=rc, console="\n".join(lines), boot_s=boot_s,
                    pytest_log=log_file.read_text(errors="replace") if log_file.exists() else "",
                    cases=parse_junit(scratch / "junit.xml"), total_s=time.monotonic() - t0)
    if rc is None:
        raise LabError(f"the guest wrote no exit code (pytest did not run): {_last(lines)}")
    return res


def _last(lines, n: int = 3) -> str:
    tail = [l.strip() for l in lines if l.strip()][-n:]
    return " | ".join(tail) or "no console output"


def main(argv) -> int:
    if not argv or argv[0] not in ("build", "run"):
        print(__doc__)
        return 2
    try:
        image = build_image()
        print(f"{image.package} {image.version}: {image.kernel} {image.initrd}")
        if argv[0] == "build":
            return 0
        scratch = Path(tempfile.mkdtemp(prefix="pynet-vm-"))
        try:
            args = [a for a in argv[1:] if a.startswith("-")]
            ids = [a for a in argv[1:] if not a.startswith("-")]
            res = run_in_vm(image, ids, scratch, timeout=900, pytest_args=args)
            print(res.pytest_log)
            print(f"boot {res.boot_s:.0f}s, total {res.total_s:.0f}s, rc {res.rc}")
            return res.rc or 0
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    except LabError as e:
        print(f"kernel lab: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
