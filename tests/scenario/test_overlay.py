"""Overlay scenarios (issue 11, Build 9): the scenario format's cluster store and ``driver:
overlay`` networks shared by hosts.

The library's overlay scenarios (scenarios/overlay/) run for real, as users run them
(``python -m pynet.scenario run``): the runner starts an etcd cluster on the underlay (a member
in each host's namespace), each host's own pynet joins it, and scapy proves cross-host reach
(ICMP, TCP, UDP), isolation between two overlays, the VNI on the underlay, no inner ARP frame
there and the MTU.  Afterwards nothing is left: no namespace, root link, work dir (etcd's data
dirs are in it) or etcd member -- also when the runner is SIGKILLed (the next run's start-up
cleanup kills the dead run's members).  The parser's refusals are checked without root.
"""
from __future__ import annotations

import glob
import os
import subprocess
import sys
import time

import pytest

from pynet.scenario.model import ScenarioError, parse
from tests.support.scenario import NEEDS_ROOT, REPO, SCENARIOS, assert_scenario_passes, netns_names, run_cli

OVERLAY = sorted(glob.glob(str(SCENARIOS / "overlay" / "*.yaml")))


def etcd_members(prefix: str = "ps") -> list[str]:
    """Command lines of running etcd members of scenario runs (``--name <prefix>...``)."""
    ps = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    out = []
    for line in ps.splitlines()[1:]:
        argv = line.split()[1:]
        if argv and os.path.basename(argv[0]) == "etcd" and f"--name {prefix}" in " ".join(argv):
            out.append(line)
    return out


def vxlan_devices(netns: str) -> str:
    return subprocess.run(["ip", "-n", netns, "-o", "link", "show", "type", "vxlan"],
                          capture_output=True, text=True).stdout.strip()


@NEEDS_ROOT
@pytest.mark.netns
@pytest.mark.parametrize("path", OVERLAY, ids=[os.path.basename(p) for p in OVERLAY])
def test_overlay_library_scenario_passes(path, tmp_path, snapshot):
    before = set(etcd_members())
    assert_scenario_passes(path, tmp_path, min_tests=8)
    assert set(etcd_members()) - before == set(), "etcd members left running"


@NEEDS_ROOT
@pytest.mark.netns
def test_wrong_overlay_scenario_fails_with_the_vxlan_in_its_pcap(tmp_path, snapshot):
    """A wrong expectation on an overlay fails with a report and a pcap, like any other: the
    pcap of "no VXLAN" holds the underlay's VXLAN frames with the network's VNI."""
    from pynet.scenario import report

    out = tmp_path / "out"
    r = run_cli("run", SCENARIOS / "overlay" / "wrong" / "overlay-shared-isolated.yaml", "--out-dir", out)
    assert r.returncode == 1, r.stdout + r.stderr
    fails = [x for x in r.stdout.splitlines() if x.rstrip().endswith("FAIL")]
    assert [x.split()[0] for x in fails] == ["wrongly-isolated-overlay", "wrongly-no-vxlan"], r.stdout
    assert "echo-reply from" in fails[0] and "underlay carried VXLAN VNI" in fails[1]
    assert "really-reaches" in r.stdout and "1 passed, 2 failed" in r.stdout
    frames = [f for _, f in report.read_pcap(str(out / "wrong-overlay-shared-isolated-wrongly-no-vxlan.pcap"))]
    vni = int(fails[1].split("want ")[1].split(")")[0])
    vxlan = [f for f in frames if len(f) > 50 and f[12:14] == b"\x08\x00" and f[23] == 17
             and int.from_bytes(f[36:38], "big") == 4789]
    assert vxlan and {int.from_bytes(f[46:49], "big") for f in vxlan} == {vni}


def test_library_has_the_overlay_proofs():
    """Between them, the overlay scenarios prove what issue 11 asks (the runs above prove it
    holds): reach over each protocol, isolation, the VNI, no inner ARP, the MTU both ways."""
    from pynet.scenario.model import load

    exps = [e for p in OVERLAY for e in load(p).expectations]
    assert {e.proto for e in exps if e.kind == "reach"} == {"icmp", "tcp", "udp"}
    assert any(e.kind == "isolated" for e in exps)
    assert any(e.kind == "encap" and e.expect_ok for e in exps)
    assert any(e.kind == "encap" and e.params.get("inner_arp") is False for e in exps)
    assert {(e.params["size"], e.expect_ok) for e in exps if e.kind == "mtu"} >= {(1450, True), (1451, False)}
    for p in OVERLAY:
        sc = load(p)
        assert sc.cluster is not None and sc.overlays()
        # every reach crosses hosts: the sandboxes are on different hosts
        sbs = sc.sandboxes()
        assert all(sbs[e.src].host != sbs[e.dst].host for e in sc.expectations
                   if e.kind == "reach" and e.dst in sbs)


@NEEDS_ROOT
@pytest.mark.netns
def test_sigkilled_overlay_run_is_cleaned_by_the_next_run(tmp_path, snapshot):
    """No teardown at all: the runner is SIGKILLed once its sandboxes exist (the etcd members
    run); the next run's start-up cleanup kills the members, deletes the namespaces and the
    work dir with etcd's data."""
    before = set(etcd_members())
    proc = subprocess.Popen([sys.executable, "-m", "pynet.scenario", "run",
                             str(SCENARIOS / "overlay" / "overlay-reach.yaml"), "--out-dir", str(tmp_path)],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        line = proc.stdout.readline()
        assert "prefix" in line, line
        prefix = line.split("prefix")[-1].strip()
        deadline = time.monotonic() + 120
        # built far enough: the members run and host 1's pynet made the overlay's VXLAN device
        while time.monotonic() < deadline and proc.poll() is None and not (
                etcd_members(prefix) and vxlan_devices(f"{prefix}-h1")):
            time.sleep(0.1)
        assert etcd_members(prefix) and vxlan_devices(f"{prefix}-h1"), "the run never got that far"
        proc.kill()
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert os.path.isdir(f"/tmp/pynet-scenario/{prefix}/etcd")
    r = subprocess.run([sys.executable, "-c", "from pynet.scenario.topology import cleanup_stale; cleanup_stale()"],
                       cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and (etcd_members(prefix) or
                                           [n for n in netns_names() if n.startswith(prefix + "-")]):
        time.sleep(0.1)
    assert etcd_members(prefix) == []
    assert set(etcd_members()) - before == set()
    assert not [n for n in netns_names() if n.startswith(prefix + "-")]
    assert not os.path.exists(f"/tmp/pynet-scenario/{prefix}")
    # the workers noticed their runner was gone and went too
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        ps = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
        if not [x for x in ps.splitlines() if "pynet.scenario.worker" in x and prefix in x]:
            break
        time.sleep(0.2)
    else:
        raise AssertionError("workers of the killed run survive")


# ------------------------------------------------------------- the format's refusals
def _overlay(**net) -> dict:
    blue = {"driver": "overlay", "subnet": "10.30.0.0/24", **net}
    return {"hosts": {"h1": {"networks": {"blue": blue}, "sandboxes": {"a": {"networks": ["blue"]}}},
                      "h2": {"networks": {"blue": {"driver": "overlay", "subnet": "10.30.0.0/24"}},
                             "sandboxes": {"b": {"networks": ["blue"]}}}}}


def test_cluster_defaults_to_a_member_per_host():
    sc = parse({**_overlay(), "cluster": {"store": "etcd"},
                "expect": [{"encap": {"from": "a", "to": "b", "network": "blue", "inner_arp": False}}]})
    assert sc.cluster.members == ["h1", "h2"] and sc.cluster.backend == "etcd"
    assert [n.host for n in sc.overlays()["blue"]] == ["h1", "h2"]
    a, b = sc.sandboxes()["a"], sc.sandboxes()["b"]
    assert sc.same_network(a, b, "blue")
    assert "no inner ARP" in sc.expectations[0].expected_text


@pytest.mark.parametrize("data, message", [
    (_overlay(), "needs a cluster store"),
    ({**_overlay(), "cluster": {"store": "consul"}}, "the cluster stores are etcd"),
    ({**_overlay(), "cluster": {"members": ["h9"]}}, "no host 'h9'"),
    ({**_overlay(), "cluster": {"members": []}}, "at least one"),
    ({**_overlay(), "cluster": {"lease_ttl": 1}}, "2..3600"),
    ({**_overlay(subnet="10.40.0.0/24"), "cluster": {}}, "differs from"),
    ({**_overlay(subnet=None), "cluster": {}}, "declares its subnet"),
    ({**_overlay(), "cluster": {}, "expect": [{"encap": {"from": "a", "to": "b", "network": "red"}}]},
     "no overlay network 'red'"),
    ({**_overlay(), "cluster": {}, "expect": [{"encap": {"from": "a", "to": "b", "network": "blue",
                                                         "inner_arp": "no"}}]}, "true or false"),
])
def test_bad_overlay_scenarios_are_refused_in_one_line(data, message):
    with pytest.raises(ScenarioError) as e:
        parse(data)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_bridges_of_the_same_name_on_two_hosts_stay_two_networks():
    sc = parse({"hosts": {"h1": {"networks": {"front": {"subnet": "10.10.1.0/24"}},
                                 "sandboxes": {"a": {"networks": ["front"]}}},
                          "h2": {"networks": {"front": {"subnet": "10.20.1.0/24"}},
                                 "sandboxes": {"b": {"networks": ["front"]}}}}})
    assert sc.cluster is None and sc.overlays() == {}
    assert not sc.same_network(sc.sandboxes()["a"], sc.sandboxes()["b"], "front")
