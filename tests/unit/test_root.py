"""The composition root (``pynet.root``): what each builder wires, and what
each CNI path loads (the IPAM-only path no kernel module, the entry nothing
of the in-process plugins until the daemon declines)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pynet.root as root
from pynet.config import Config
from pynet.firewall.serial import SerialFirewall

REPO = Path(__file__).resolve().parents[2]


def _modules_after(code: str) -> set[str]:
    """pynet's and the heavy libraries' modules loaded by ``code`` in a fresh interpreter."""
    probe = (code + "\nimport sys, json; print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
             "('pynet', 'pyroute2', 'flask', 'werkzeug', 'waitress', 'scapy', 'httpx', 'iptc'))))")
    r = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return set(json.loads(r.stdout.splitlines()[-1]))


class Recorder:
    def __init__(self, name):
        self.name = name
        self.synced = []

    def sync(self, networks=None, endpoints=None, force=False):
        self.synced.append((list(networks or []), list(endpoints or [])))


def test_build_controller_wires_one_netlink_and_sysctl_and_a_serialising_firewall(tmp_path, monkeypatch):
    nl, sysctl, fw = object(), object(), Recorder("firewall")
    seen = {}

    def drivers(config, netlink, sysctl_, firewall):
        seen.update(netlink=netlink, sysctl=sysctl_, firewall=firewall)
        return {}

    def firewall(config, store=None, sysctl_=None):
        seen.update(fw_store=store, fw_sysctl=sysctl_)
        return fw
    monkeypatch.setattr(root, "build_netlink", lambda: nl)
    monkeypatch.setattr(root, "build_sysctl", lambda: sysctl)
    monkeypatch.setattr(root, "build_drivers", drivers)
    monkeypatch.setattr(root, "build_firewall", firewall)
    config = Config(state_dir=str(tmp_path / "state"), socket_path=str(tmp_path / "p.sock"))
    c = root.build_controller(config)
    assert (tmp_path / "state").is_dir()                      # the local store made its state dir
    assert seen["netlink"] is nl and seen["sysctl"] is sysctl and seen["fw_sysctl"] is sysctl
    assert seen["fw_store"] is c.store                        # foreign bridges: read from the store
    assert isinstance(c.firewall, SerialFirewall) and c.firewall.inner is fw
    assert seen["firewall"] is c.firewall
    assert c.firewall.lock_path == str(tmp_path / "state" / "firewall.lock")
    c.firewall.sync()                                         # re-reads the controller's state
    assert fw.synced == [([], [])]
    assert root.build_controller(config, firewall=False).firewall is None


def test_ipam_controller_has_the_store_and_ipam_only(tmp_path):
    c = root.build_ipam_controller(Config(state_dir=str(tmp_path / "s")))
    assert c.drivers == {} and c.firewall is None and c.ipam is not None
    assert root.cluster_store(Config(state_dir=str(tmp_path / "s"))) is None   # the slot issue 11 fills


def test_the_ipam_only_path_loads_no_kernel_interface_driver_or_firewall(tmp_path):
    mods = _modules_after(f"from pynet import root; from pynet.config import Config; "
                          f"root.build_ipam_controller(Config(state_dir={str(tmp_path)!r}))")
    assert "pynet.ipam" in mods and "pynet.store.sqlite" in mods
    bad = {m for m in mods if m.split(".")[0] in ("pyroute2", "flask", "werkzeug", "waitress", "httpx", "iptc")
           or m.startswith(("pynet.drivers", "pynet.firewall", "pynet.netlink.pyroute", "pynet.daemon"))}
    assert not bad, bad


def test_the_cni_entry_loads_nothing_of_the_plugins_before_the_daemon_declines():
    mods = _modules_after("import pynet.cni.main")
    assert mods == {"pynet", "pynet.cni", "pynet.cni.main", "pynet.cni.shim", "pynet.cni.spec",
                    "pynet.cni.settings", "pynet.validate", "pynet.errors"}, mods
