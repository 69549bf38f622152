"""The kernel lab layer: tests marked ``kernel_lab`` run inside a qemu guest booting Debian's kernel.

How it fits together (details in ``vmlab.py``):
- anywhere in tests/, a test that needs a kernel feature this machine's kernel lacks and Debian's
  has (802.1q, dummy, ...) carries ``pytest.mark.kernel_lab``; the root conftest deselects it
  on the host;
- ``test_kernel_lab.py`` (host) lists those node ids (``vmlab.guest_nodeids``: a ``--collect-only``
  subprocess) and has one test per node id;
- the session fixture ``kernel_lab_run`` builds (or takes from the cache) the kernel and
  initramfs, boots ONE guest for the whole session, runs every selected node id in it and parses
  the junit XML the guest writes to its scratch share; each host test then asserts its node id
  passed there (a skip inside the guest is a failure: the guest's kernel has the features) and
  shows the guest's output when it did not.

When the lab cannot run (no qemu, no kernel package, the guest does not boot in time) every host
test fails with one readable line ``kernel lab: ...``; it never skips.

Environment: PYNET_VM_RUN_TIMEOUT (boot + all guest tests, s, default 480), PYNET_VM_BOOT_TIMEOUT
(s, default 240), PYNET_VM_CACHE (image cache directory), PYNET_VM_MEMORY (MB), PYNET_VM_CPUS.
Artifacts of the last run (console, pytest log, junit) go to test-results/kernel-lab/.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from tests.vm import vmlab as lab

IN_VM = os.environ.get("PYNET_IN_VM") == "1"

collect_ignore = ["vmlab.py"]
if IN_VM or os.environ.get("PYNET_VM_COLLECT") == "1":
    # the guest runs the kernel_lab tests themselves, not their host-side wrappers
    collect_ignore.append("test_kernel_lab.py")


def _say(config, line: str) -> None:
    """A progress line on the terminal, past the test's output capture."""
    tr = config.pluginmanager.get_plugin("terminalreporter")
    cap = config.pluginmanager.get_plugin("capturemanager")
    if tr is None or cap is None:
        print(line)
        return
    with cap.global_and_fixture_disabled():
        tr.write_line(line)


@pytest.fixture(scope="session")
def kernel_lab_image(request):
    try:
        return lab.build_image(log=lambda m: _say(request.config, m))
    except lab.LabError as e:
        error = str(e)
    pytest.fail(f"kernel lab: {error}", pytrace=False)     # outside except: one line, no chain


@pytest.fixture(scope="session")
def kernel_lab_run(request, kernel_lab_image):
    """Runs, in one guest, every node id the session's host tests ask for; -> lab.RunResult."""
    wanted = [it.callspec.params["nodeid"] for it in request.session.items
              if getattr(it, "callspec", None) and "nodeid" in it.callspec.params
              and it.path.name == "test_kernel_lab.py"]
    wanted = [n for n in dict.fromkeys(wanted) if "::" in n]
    if not wanted:   # pytest without node ids would run the guest's whole testpaths
        pytest.fail("kernel lab: no kernel_lab node ids to run", pytrace=False)
    artifacts = Path(os.environ.get("PYNET_TEST_RESULTS", lab.REPO / "test-results")) / "kernel-lab"
    scratch = Path(tempfile.mkdtemp(prefix="pynet-vm-"))
    try:
        res, error = None, ""
        try:
            res = lab.run_in_vm(kernel_lab_image, wanted, scratch, timeout=lab.RUN_TIMEOUT,
                                log=lambda m: _say(request.config, m))
        except lab.LabError as e:
            error = str(e)
        finally:
            shutil.rmtree(artifacts, ignore_errors=True)
            artifacts.mkdir(parents=True, exist_ok=True)
            for f in ("console.log", "pytest.log", "junit.xml"):
                if (scratch / f).exists():
                    shutil.copy2(scratch / f, artifacts / f)
        if error:
            pytest.fail(f"kernel lab: {error}", pytrace=False)
        summary = (f"[kernel-lab] {kernel_lab_image.package} {kernel_lab_image.version}: guest "
                   f"booted in {res.boot_s:.0f}s, {len(wanted)} test(s), {res.total_s:.0f}s in all "
                   f"(guest pytest exit {res.rc})")
        (artifacts / "summary.txt").write_text(summary + "\n")
        _say(request.config, summary)
        yield res
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
