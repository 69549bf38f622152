"""The kernel lab's own failure paths, on the host and without booting anything: qemu that
cannot start or never boots is one readable LabError line, and qemu does not outlive it."""
import os
import textwrap

import pytest

from tests.vm import vmlab


@pytest.fixture
def image(tmp_path):
    for f in ("vmlinuz", "initrd.gz"):
        (tmp_path / f).write_bytes(b"")
    return vmlab.Image(tmp_path, tmp_path / "vmlinuz", tmp_path / "initrd.gz", "6.1.0-test",
                       "linux-image-test", "1")


@pytest.fixture
def scratch(tmp_path):
    d = tmp_path / "scratch"
    d.mkdir()
    return d


def one_line(e) -> str:
    text = str(e.value)
    assert "\n" not in text and text.strip() == text and text
    return text


def test_missing_qemu_is_one_readable_line(monkeypatch, image, scratch):
    monkeypatch.setattr(vmlab, "QEMU", "/nonexistent/qemu-system-x86_64")
    with pytest.raises(vmlab.LabError) as e:
        vmlab.run_in_vm(image, ["tests/x.py::t"], scratch, timeout=30, log=lambda m: None)
    assert "qemu cannot start" in one_line(e) and "qemu-system-x86" in str(e.value)


def test_qemu_exiting_before_the_guest_runs_is_one_readable_line(monkeypatch, image, scratch, tmp_path):
    fake = tmp_path / "qemu"
    fake.write_text("#!/bin/sh\necho 'qemu-system-x86_64: -kernel: could not load kernel' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setattr(vmlab, "QEMU", str(fake))
    with pytest.raises(vmlab.LabError) as e:
        vmlab.run_in_vm(image, ["tests/x.py::t"], scratch, timeout=30, log=lambda m: None)
    assert "qemu cannot start" in one_line(e) and "could not load kernel" in str(e.value)


def test_a_guest_that_never_boots_is_killed(monkeypatch, image, scratch, tmp_path):
    fake = tmp_path / "qemu"
    pidfile = tmp_path / "pid"
    fake.write_text(textwrap.dedent(f"""\
        #!/bin/sh
        echo $$ > {pidfile}
        echo 'SeaBIOS (version test)'
        exec sleep 600
    """))
    fake.chmod(0o755)
    monkeypatch.setattr(vmlab, "QEMU", str(fake))
    monkeypatch.setattr(vmlab, "BOOT_TIMEOUT", 2.0)
    with pytest.raises(vmlab.LabError) as e:
        vmlab.run_in_vm(image, ["tests/x.py::t"], scratch, timeout=60, log=lambda m: None)
    assert "did not boot within 2s" in one_line(e) and "SeaBIOS" in str(e.value)
    pid = int(pidfile.read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert (scratch / "console.log").read_text().startswith("SeaBIOS")


def test_qemu_command_has_no_network_device_and_a_read_only_root(image, scratch):
    argv = vmlab.qemu_argv(image, scratch)
    assert argv[argv.index("-nic") + 1] == "none" and "-nodefaults" in argv
    assert not [a for a in argv if a.startswith(("-netdev", "-net", "-device"))]
    shares = [argv[i + 1] for i, a in enumerate(argv) if a == "-virtfs"]
    assert any(s.startswith("local,path=/,") and "readonly=on" in s for s in shares)
    assert any(f"path={scratch}," in s and "readonly" not in s for s in shares)


def test_junit_cases_map_back_to_node_ids(tmp_path):
    (tmp_path / "junit.xml").write_text(textwrap.dedent("""\
        <testsuites><testsuite name="pytest">
          <testcase classname="tests.netns.test_netlink_vlan" name="test_dummy[real]"/>
          <testcase classname="tests.vm.guest.test_macvlan_vlan" name="test_x">
            <failure message="assert 1 == 2">long text</failure><system-out>hello</system-out>
          </testcase>
          <testcase classname="tests.netns.test_macvlan" name="test_y">
            <skipped message="no 802.1q"/></testcase>
        </testsuite></testsuites>
    """))
    cases = vmlab.parse_junit(tmp_path / "junit.xml")
    assert cases["tests/netns/test_netlink_vlan.py::test_dummy[real]"].outcome == "passed"
    failed = cases["tests/vm/guest/test_macvlan_vlan.py::test_x"]
    assert (failed.outcome, failed.output) == ("failed", "hello") and "assert 1 == 2" in failed.message
    assert cases["tests/netns/test_macvlan.py::test_y"].outcome == "skipped"


def test_the_image_is_cached_per_package_version(monkeypatch, tmp_path):
    builds = []

    def fake_build(final, pkg):
        builds.append(final.name)
        final.mkdir()
        for f in ("vmlinuz", "initrd.gz"):
            (final / f).write_bytes(b"x")
        (final / "kver").write_text("6.1.0-test\n")
        (final / "ready").write_text(pkg)

    version = ["6.1.1-1"]
    monkeypatch.setattr(vmlab, "cache_dir", lambda: tmp_path / "cache")
    monkeypatch.setattr(vmlab, "kernel_package", lambda: ("linux-image-test", version[0]))
    monkeypatch.setattr(vmlab, "_build", fake_build)
    first = vmlab.build_image(log=lambda m: None)
    assert vmlab.build_image(log=lambda m: None).dir == first.dir and len(builds) == 1
    version[0] = "6.1.2-1"                      # a new kernel package: built again, old one gone
    second = vmlab.build_image(log=lambda m: None)
    assert len(builds) == 2 and second.dir != first.dir and second.version == "6.1.2-1"
    assert not first.dir.exists() and second.kernel.exists()
