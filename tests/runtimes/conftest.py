"""Fixtures for the real-runtime tests: a private containerd (CRI) and podman (CNI backend).

    def test_x(containerd_factory, chain, prefix):
        ctd = containerd_factory(chain.conflist("1.0.0"))
        with ctd.cri() as cri:
            sid = cri.run_pod_sandbox(f"{prefix}-a", [(80, 30080, "TCP")])

``chain`` is the plugin chain under test: ``pynet`` (pynet-bridge + pynet-ipam, pynet's binaries
installed by ``pynet cni install``) or ``reference`` (Debian's bridge + host-local + portmap +
firewall), which proves the harness itself. Every test here is marked ``runtimes`` and ``root``.
Teardown removes every sandbox / container through the runtime (so the DELs run), then kills
what is left (runtime, shims, pods), the pods' network namespaces, mounts, cgroups, the bridge,
pynet's firewall chains and the state dirs.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.support import harness
from tests.support import runtime_harness as rh

_HERE = Path(__file__).resolve().parent


def pytest_configure(config):
    config.addinivalue_line("markers", "runtimes: needs root and real container runtimes "
                                       "(a private containerd with CRI, podman with CNI)")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if _HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.runtimes)
            item.add_marker(pytest.mark.root)


@pytest.fixture(scope="session")
def rt_workdir(prefix, tmp_path_factory) -> Path:
    if not harness.is_root():
        pytest.fail("runtime tests need root (containerd, podman, netlink, iptables)")
    removed = rh.cleanup_stale_runtimes(current=prefix)
    if removed:
        print(f"\n[pynet] removed runtime leftovers of earlier runs: {' '.join(removed)}")
    return tmp_path_factory.mktemp("runtimes")


@pytest.fixture(scope="session")
def images_tar(rt_workdir) -> Path:
    """A ``docker save``-format archive of the busybox test and sandbox images (no dockerd needed)."""
    return rh.ensure_images(rt_workdir)


@pytest.fixture(scope="session")
def cni_bin_dir(rt_workdir) -> Path:
    """Reference plugins (linked from /usr/lib/cni) plus pynet's, installed by ``pynet cni install``."""
    global _INSTALL_ERROR
    d = rh.CniBinDir(rt_workdir / "cni-bin", reference=True, pynet=False)
    try:
        rh.install_pynet_cni(d.path)
    except Exception as e:  # noqa: BLE001 -- the reference tests still run; pynet's fail with this
        _INSTALL_ERROR = str(e)
    return d.path


_INSTALL_ERROR = ""


def failed(request) -> bool:
    node = request.node
    return any(getattr(getattr(node, f"rep_{w}", None), "failed", False) for w in ("setup", "call"))


@pytest.fixture(params=["pynet", "pynet-daemon", "reference"])
def chain(request, prefix, tmp_path, cni_bin_dir) -> rh.Chain:
    """The CNI chain under test (fresh bridge name, state dir, chain prefix per test):
    ``pynet`` (each plugin process does the work), ``pynet-daemon`` (the plugins hand the work to
    a running ``pynet daemon`` on the same state dir), ``reference``."""
    kind = request.param
    if kind.startswith("pynet") and not (cni_bin_dir / "pynet-bridge").exists():
        pytest.fail(f"pynet CNI binaries missing: `pynet cni install --bin-dir` failed: {_INSTALL_ERROR}")
    base = getattr(request.module, "SUBNET_BASE", "10.244")  # a module may pick 10.246
    c = rh.make_chain(kind.split("-")[0], prefix, tmp_path, tag=rh.short_tag(request.node.nodeid), base=base)
    if kind == "pynet-daemon":
        c.start_daemon()
    if kind.startswith("pynet"):
        try:
            c.preflight(cni_bin_dir)
        except RuntimeError as e:
            errors = c.cleanup()
            pytest.fail(f"{kind}: {e}" + (f" (cleanup: {errors})" if errors else ""))
    yield c
    if failed(request) and getattr(c, "daemon", None) is not None:
        print(f"\n----- pynet daemon log ({c.daemon.log_path}) -----\n{c.daemon.log_tail(40)}")
    errors = c.cleanup()
    if errors:
        raise RuntimeError("; ".join(errors))


class _Factory:
    def __init__(self, request, prefix, tmp_path, bin_dir, images):
        self.request, self.prefix, self.tmp_path = request, prefix, tmp_path
        self.bin_dir, self.images = bin_dir, images
        self.made: list = []

    def _failed(self) -> bool:
        return failed(self.request)


class ContainerdFactory(_Factory):
    """``factory(conflist: dict, start=True) -> rh.Containerd`` with its own CNI conf dir."""

    def __call__(self, conflist: dict, start: bool = True) -> rh.Containerd:
        n = len(self.made)
        conf_dir = self.tmp_path / f"ctd{n}-conf"
        rh.write_conflist(conf_dir, conflist)
        ctd = rh.Containerd(f"{self.prefix}-ctd{n}", self.bin_dir, conf_dir, self.images)
        self.made.append(ctd)
        if start:
            ctd.start()
            with ctd.cri() as cri:
                cri.wait_network_ready()
        return ctd

    def teardown(self) -> None:
        errors = []
        for ctd in reversed(self.made):
            if self._failed() and ctd.log_path:
                print(f"\n----- {ctd.name} log ({ctd.log_path}) -----\n{harness._tail(ctd.log_path, 40)}")
            if ctd.running:
                errors += ctd.remove_all_pods()
            errors += ctd.cleanup()
        if errors:
            raise RuntimeError("containerd teardown: " + "; ".join(errors))


class PodmanFactory(_Factory):
    """``factory(conflist: dict) -> rh.Podman`` (images loaded) with its own CNI conf dir."""

    def __call__(self, conflist: dict) -> rh.Podman:
        n = len(self.made)
        conf_dir = self.tmp_path / f"podman{n}-conf"
        rh.write_conflist(conf_dir, conflist)
        p = rh.Podman(f"{self.prefix}-pod{n}", self.bin_dir, conf_dir, self.images)
        self.made.append(p)
        p.load_images()
        return p

    def teardown(self) -> None:
        errors = []
        for p in reversed(self.made):
            errors += p.cleanup()
        if errors:
            raise RuntimeError("podman teardown: " + "; ".join(errors))


@pytest.fixture
def containerd_factory(request, prefix, tmp_path, cni_bin_dir, images_tar, chain):
    # depends on ``chain`` so that the chain's cleanup (bridge, firewall) runs after the pods are gone
    f = ContainerdFactory(request, prefix, tmp_path, cni_bin_dir, images_tar)
    yield f
    f.teardown()


@pytest.fixture
def podman_factory(request, prefix, tmp_path, cni_bin_dir, images_tar, chain):
    f = PodmanFactory(request, prefix, tmp_path, cni_bin_dir, images_tar)
    yield f
    f.teardown()
