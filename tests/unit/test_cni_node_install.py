"""``pynet cni install``'s node part: the default network's conflist (contents, atomic write,
never replacing a different file without --force, a subnet that overlaps a host route refused,
a refusal changes nothing)."""
from __future__ import annotations

import ipaddress
import json
import os

import pytest

from pynet import cli, errors
from pynet.cni import install as inst


def test_default_conflist_is_a_pynet_bridge_with_pynet_ipam():
    c = inst.default_conflist()
    assert c["cniVersion"] == "1.0.0" and c["name"] == "pynet"
    (p,) = c["plugins"]
    assert p["type"] == "pynet-bridge" and p["ipam"]["type"] == "pynet-ipam"
    assert p["ipam"]["ranges"] == [[{"subnet": inst.DEFAULT_SUBNET}]]
    assert p["isGateway"] and p["ipMasq"] and p["capabilities"] == {"portMappings": True}
    assert "pynet" not in p   # the shared defaults apply


def test_default_subnet_clear_of_the_well_known_ranges():
    net = ipaddress.ip_network(inst.DEFAULT_SUBNET)
    for other in ("172.16.0.0/12", "192.168.0.0/16", "10.96.0.0/12", "10.244.0.0/16", "10.42.0.0/15",
                  "10.32.0.0/12", "10.85.0.0/16", "10.88.0.0/16", "10.89.0.0/16", "10.90.0.0/16",
                  "10.1.0.0/16", "100.64.0.0/10", "192.0.2.0/24"):
        assert not net.overlaps(ipaddress.ip_network(other)), other


@pytest.mark.parametrize("kw", [{"subnet": "10.77.0.1/16"}, {"subnet": "fd00::/64"}, {"subnet": "x"},
                                {"subnet": "10.0.0.0/31"}, {"name": "bad name"}, {"bridge": "a" * 16},
                                {"bridge": "br/0"}])
def test_bad_settings_refused(kw):
    with pytest.raises(errors.InvalidParameter):
        inst.default_conflist(**kw)


def test_route_overlap_refused_except_the_networks_own_bridge():
    c = inst.default_conflist("10.77.0.0/16")
    with pytest.raises(errors.Conflict, match="10.77.3.0/24 dev eth1"):
        inst.check_subnet_free(c, [("10.77.3.0/24", "eth1")])
    inst.check_subnet_free(c, [("10.77.0.0/16", "pynet0"), ("10.78.0.0/16", "eth0")])


def test_host_routes_parsed_from_proc_net_route(tmp_path):
    f = tmp_path / "route"
    f.write_text("Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n"
                 "eth0\t00000000\t0101A8C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n"
                 "eth0\t0001A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n"
                 "pynet0\t00004D0A\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0\n")
    assert inst.host_routes_v4(str(f)) == [("192.168.1.0/24", "eth0"), ("10.77.0.0/16", "pynet0")]


def test_write_is_idempotent_and_never_replaces_a_different_file_without_force(tmp_path):
    conf = tmp_path / "net.d"
    c = inst.default_conflist("10.77.0.0/16")
    path, written = inst.write_conflist(str(conf), c)
    assert written and json.loads(open(path).read()) == c
    assert oct(os.stat(path).st_mode & 0o777) == "0o644"
    assert inst.write_conflist(str(conf), c) == (path, False)    # a re-run changes nothing
    other = inst.default_conflist("10.78.0.0/16")
    with pytest.raises(errors.Conflict, match="--force"):
        inst.write_conflist(str(conf), other)
    assert json.loads(open(path).read()) == c
    assert inst.write_conflist(str(conf), other, force=True) == (path, True)
    assert json.loads(open(path).read()) == other
    assert sorted(os.listdir(conf)) == ["10-pynet.conflist"]      # no temporary left


def test_write_goes_through_a_rename(tmp_path, monkeypatch):
    """The file appears whole: written under a name libcni ignores, then renamed over."""
    seen = []
    real = os.replace

    def spy(src, dst):
        seen.append((os.path.basename(src), os.path.basename(dst), json.loads(open(src).read())))
        return real(src, dst)

    monkeypatch.setattr(inst.os, "replace", spy)
    c = inst.default_conflist()
    inst.write_conflist(str(tmp_path), c)
    ((src, dst, content),) = seen
    assert dst == "10-pynet.conflist" and content == c
    assert src.startswith(".pynet-") and not src.endswith((".conf", ".conflist", ".json"))


def _cli(tmp_path, *extra):
    return cli.main(["cni", "install", "--bin-dir", str(tmp_path / "bin"),
                     "--conf-dir", str(tmp_path / "conf"), *extra])


def test_cli_writes_binaries_examples_and_default_network(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(inst, "host_routes_v4", lambda path="": [])
    for var in ("PYNET_STATE_DIR", "PYNET_PLUGIN_NAME", "PYNET_CHAIN_PREFIX", "PYNET_SOCKET"):
        monkeypatch.delenv(var, raising=False)
    assert _cli(tmp_path, "--subnet", "10.79.0.0/16", "--bridge", "pn-test0", "--network-name", "podnet",
                "--state-dir", str(tmp_path / "state"), "--chain-prefix", "PT1") == 0
    out = capsys.readouterr().out.split()
    conf = json.loads((tmp_path / "conf" / "10-pynet.conflist").read_text())
    assert str(tmp_path / "conf" / "10-pynet.conflist") in out
    assert conf["name"] == "podnet" and conf["plugins"][0]["bridge"] == "pn-test0"
    assert conf["plugins"][0]["pynet"] == {"stateDir": str(tmp_path / "state"), "chainPrefix": "PT1"}
    assert (tmp_path / "bin" / "pynet-bridge").exists()
    # again: nothing to change; --no-conflist / --no-examples leave it out
    assert _cli(tmp_path, "--subnet", "10.79.0.0/16", "--bridge", "pn-test0", "--network-name", "podnet",
                "--state-dir", str(tmp_path / "state"), "--chain-prefix", "PT1") == 0
    assert str(tmp_path / "conf" / "10-pynet.conflist") not in capsys.readouterr().out


def test_cli_refusal_changes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(inst, "host_routes_v4", lambda path="": [("10.77.9.0/24", "eth9")])
    assert _cli(tmp_path) == 1
    err = capsys.readouterr().err
    assert err.startswith("pynet: error: subnet 10.77.0.0/16 overlaps") and err.count("\n") == 1
    assert not (tmp_path / "bin").exists() and not (tmp_path / "conf").exists()
    monkeypatch.setattr(inst, "host_routes_v4", lambda path="": [])
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "10-pynet.conflist").write_text('{"name": "someone-elses"}')
    assert _cli(tmp_path) == 1
    assert "--force" in capsys.readouterr().err
    assert not (tmp_path / "bin").exists()
    assert _cli(tmp_path, "--force") == 0
    assert json.loads((tmp_path / "conf" / "10-pynet.conflist").read_text())["name"] == "pynet"
    assert _cli(tmp_path, "--subnet", "10.0.0.0/33") == 1
    assert "invalid subnet" in capsys.readouterr().err


def test_no_examples_and_no_conflist(tmp_path, monkeypatch):
    monkeypatch.setattr(inst, "host_routes_v4", lambda path="": [])
    assert _cli(tmp_path, "--no-conflist") == 0
    assert sorted(os.listdir(tmp_path / "conf")) == sorted(inst.example_conflists())
    assert _cli(tmp_path / "b", "--no-examples") == 0
    assert not (tmp_path / "b" / "conf").exists()
