"""The scenario format: parsing and validation (no root, no namespaces)."""
import glob
import os

import pytest

from pynet.scenario.model import ScenarioError, load, parse
from tests.support.scenario import SCENARIOS

BASE = {"hosts": {"h1": {"networks": {"front": {"subnet": "10.10.1.0/24"}},
                         "sandboxes": {"a": {"networks": ["front"]},
                                       "b": {"networks": {"front": {"address": "10.10.1.9"}}}}}},
        "outside": {"ext": {}}}


def with_expect(*exp, **top):
    d = {**BASE, **top, "expect": list(exp)}
    return parse(d)


@pytest.mark.parametrize("path", sorted(glob.glob(str(SCENARIOS / "*.yaml")))
                         + sorted(glob.glob(str(SCENARIOS / "wrong" / "*.yaml")))
                         + sorted(glob.glob(str(SCENARIOS / "pending" / "*.yaml"))))
def test_library_files_are_valid(path):
    s = load(path)
    assert s.hosts and s.expectations
    assert s.name


def test_defaults_and_underlay_addresses():
    s = with_expect({"reach": {"from": "a", "to": "b"}})
    assert s.underlay_subnet == "10.99.0.0/24"
    assert s.hosts["h1"].address == "10.99.0.10" and s.outside["ext"].address == "10.99.0.11"
    e = s.expectations[0]
    assert (e.kind, e.proto, e.expect_ok, e.ident) == ("reach", "icmp", True, "00-reach-a-b-icmp")
    assert s.sandboxes()["b"].attachments[0].address == "10.10.1.9"


def test_expectation_kinds_and_outcomes():
    s = with_expect(
        {"isolated": {"from": "a", "to": "ext", "proto": "tcp", "port": 80}},
        {"arp": {"from": "a", "to": "b"}},
        {"nat": {"from": "a", "to": "ext", "source": "h1"}},
        {"dnat": {"from": "ext", "to": "h1", "port": 8080, "reaches": "a", "target_port": 80}},
        {"mtu": {"from": "a", "to": "b", "size": 1500, "passes": False}},
        {"spoof": {"from": "a", "to": "b", "src_ip": "10.10.1.77"}},
        {"encap": {"from": "a", "to": "b", "vni": 42}},
        {"reach": {"from": "a", "to": "10.10.1.1", "name": "gw"}},
    )
    got = [(e.kind, e.expect_ok) for e in s.expectations]
    assert got == [("isolated", False), ("arp", True), ("nat", True), ("dnat", True),
                   ("mtu", False), ("spoof", False), ("encap", True), ("reach", True)]
    assert s.expectations[3].proto == "tcp" and s.expectations[3].params["target_port"] == 80
    assert s.expectations[-1].ident == "gw"


@pytest.mark.parametrize("exp,msg", [
    ({"reach": {"from": "a", "to": "203.0.113.8"}}, "outside the scenario's topology"),
    ({"reach": {"from": "a", "to": "192.0.2.5"}}, "192.0.2.0/24"),
    ({"reach": {"from": "a", "to": "nobody"}}, "unknown name"),
    ({"reach": {"from": "a", "to": "b", "proto": "tcp"}}, "needs a port"),
    ({"reach": {"from": "a", "to": "b", "proto": "sctp"}}, "not one of"),
    ({"teleport": {"from": "a", "to": "b"}}, "unknown expectation"),
    ({"spoof": {"from": "a", "to": "b"}}, "forge"),
    ({"dnat": {"from": "ext", "to": "h1", "port": 80}}, "reaches"),
    ({"reach": {"from": "a", "to": "b", "colour": "red"}}, "unknown key"),
])
def test_invalid_expectations(exp, msg):
    with pytest.raises(ScenarioError, match=msg):
        with_expect(exp)


@pytest.mark.parametrize("patch,msg", [
    ({"underlay": {"subnet": "192.0.2.0/24"}}, "never use"),
    ({"hosts": {"H-1": {}}}, "must match"),
    ({"hosts": {"h1": {"networks": {"n": {"subnet": "10.99.0.0/25"}}}}}, "overlaps the underlay"),
    ({"hosts": {"h1": {"networks": {"n": {"subnet": "10.1.0.0/24"}},
                       "sandboxes": {"x": {"networks": {"n": {"address": "10.2.0.5"}}}}}}},
     "not inside"),
    ({"hosts": {"h1": {"sandboxes": {"x": {"mode": "container", "container": "zz"}}}}}, "no sandbox"),
    ({"hosts": {"h1": {"sandboxes": {"x": {"mode": "weird"}}}}}, "not one of"),
    ({"hosts": {"h1": {"sandboxes": {"x": {}}}}}, "at least one network"),
    ({"hosts": {"h1": {}}, "outside": {"h1": {}}}, "already used"),
])
def test_invalid_topologies(patch, msg):
    with pytest.raises(ScenarioError, match=msg):
        parse({**patch, "expect": []} if "hosts" in patch else {**BASE, **patch})


def test_load_reports_file_and_place(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("hosts: {h1: {}}\nexpect:\n  - reach: {from: h1, to: 203.0.113.4}\n")
    with pytest.raises(ScenarioError) as e:
        load(str(p))
    assert str(e.value).startswith(f"{p}: expect[0].reach.to:")


def test_check_command(tmp_path):
    from tests.support.scenario import run_cli
    r = run_cli("check", *sorted(glob.glob(str(SCENARIOS / "*.yaml"))))
    assert r.returncode == 0, r.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("hosts: {}\n")
    r = run_cli("check", bad)
    assert r.returncode == 2 and "at least one host" in r.stderr
    assert os.path.exists(SCENARIOS / "README.md")
