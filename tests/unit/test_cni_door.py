"""The CNI door (issue 9, the fuzzer's findings): every value of the
conflist, the runtime config and the ``pynet`` section is checked by type and
by value when the netconf is parsed -- before a network, a pool or an
allocation exists.  A malformed value is its CNI code (7 for the config, 4 for
the environment), never 999, one line, and the store and the fake kernel are
exactly as before; DEL of something unknown still succeeds.

The world and the base configs are the fuzzer's (tests/fuzz/cni_target.py):
bridge, macvlan and the pynet-ipam plugin over the fake kernel."""
from __future__ import annotations

import copy
import json
import os

import pytest

from pynet.cni import plugin as cni  # noqa: E402
from pynet.cni import spec  # noqa: E402
from pynet.cni.settings import pynet_settings  # noqa: E402
from tests.fuzz.cni_target import World, base_conf

PLUGINS = ["bridge", "macvlan", "ipam"]
VERBS = ["ADD", "DEL", "CHECK", "GC"]


class Case:
    """One world, optionally with a first valid ADD (container c1), and the
    env/conf of the next invocation."""

    def __init__(self, tmp_path, plugin: str, first: bool = True):
        os.makedirs(tmp_path, exist_ok=True)
        self.w = World(str(tmp_path))
        self.plugin = plugin
        self.conf = base_conf(plugin, self.w.state, "1.1.0")
        ns = self.w.netns("ns1")
        self.env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_IFNAME": "eth0", "CNI_NETNS": ns,
                    "CNI_PATH": "/opt/cni/bin", "PYNET_STATE_DIR": self.w.state}
        self.prev = None
        if first:
            out, code = self.w.run(plugin, dict(self.env), json.dumps(self.conf).encode())
            assert code == 0, out
            self.prev = json.loads(out)

    def conf_for(self, verb: str) -> dict:
        conf = copy.deepcopy(self.conf)
        if verb == "ADD" and self.prev is not None:
            # the second container must not ask for c1's address, MAC and host port:
            # its ADD is then valid but for the one value a test changes
            conf.pop("runtimeConfig", None)
        if verb == "CHECK" and self.prev is not None:
            conf["prevResult"] = self.prev
        if verb == "GC":
            conf["cni.dev/valid-attachments"] = [{"containerID": "c1", "ifname": "eth0"}]
        return conf

    def env_for(self, verb: str) -> dict:
        env = dict(self.env, CNI_COMMAND=verb)
        if verb == "ADD" and self.prev is not None:   # a second container
            ns2 = os.path.join(self.w.tmp, "ns2")
            env.update(CNI_CONTAINERID="c2", CNI_NETNS=ns2 if ns2 in self.w.kernel.namespaces
                       else self.w.netns("ns2"))
        return env

    def run(self, verb: str, conf: dict, env=None) -> tuple[int, dict]:
        out, code = self.w.run(self.plugin, env or self.env_for(verb), json.dumps(conf).encode())
        return code, (json.loads(out) if out.strip() else None)

    def refused(self, verb: str, conf: dict, code: int = spec.INVALID_CONFIG, env=None) -> str:
        env = env or self.env_for(verb)
        before = self.w.snapshot()
        rc, out = self.run(verb, conf, env)
        assert rc == 1 and out["code"] == code, out
        assert out["msg"] and "\n" not in out["msg"], out
        assert self.w.snapshot() == before, out
        return out["msg"]


def _set(conf: dict, path: tuple, value) -> dict:
    d = conf
    for p in path[:-1]:
        d = d.setdefault(p, {})
    d[path[-1]] = value
    return conf


@pytest.mark.parametrize("verb, first", [(v, f) for v in VERBS for f in (True, False) if f or v != "CHECK"])
@pytest.mark.parametrize("plugin", PLUGINS)
def test_unchanged_configs_pass(tmp_path, plugin, verb, first):
    """The baseline of every test below: the invocation without its one bad value succeeds."""
    c = Case(tmp_path, plugin, first)
    rc, out = c.run(verb, c.conf_for(verb))
    assert rc == 0, out


# ------------------------------------------------------------ ipam.ranges / routes
# CHECK needs the prevResult of an ADD: only after one
VERB_FIRST = [(v, f) for v in VERBS for f in (True, False) if f or v != "CHECK"]


@pytest.mark.parametrize("verb, first", VERB_FIRST,
                         ids=[f"{v}-{'after-add' if f else 'fresh'}" for v, f in VERB_FIRST])
@pytest.mark.parametrize("plugin", PLUGINS)
@pytest.mark.parametrize("value", [1, float("nan"), 1e30, True, {}], ids=repr)
def test_ranges_not_a_list_is_code_7(tmp_path, plugin, verb, first, value):
    """Was: 999 ``TypeError: 'bool' object is not iterable`` on every verb."""
    c = Case(tmp_path, plugin, first)
    msg = c.refused(verb, _set(c.conf_for(verb), ("ipam", "ranges"), value))
    assert "ipam.ranges" in msg


@pytest.mark.parametrize("verb", VERBS)
@pytest.mark.parametrize("plugin", PLUGINS)
@pytest.mark.parametrize("value", [1, True, 1.5, "", {}], ids=repr)
def test_routes_malformed_is_code_7(tmp_path, plugin, verb, value):
    """Was: 999 for a number; ``""`` and ``{}`` were read as "no routes"."""
    c = Case(tmp_path, plugin)
    c.refused(verb, _set(c.conf_for(verb), ("ipam", "routes"), value))


@pytest.mark.parametrize("plugin", PLUGINS)
@pytest.mark.parametrize("gw", [0, [], "0.0.0.0", "10.5.0.1", "224.0.0.1"], ids=repr)
def test_route_gateway_checked_before_anything_is_made(tmp_path, plugin, gw):
    """``0``/``[]`` were read as "no gateway"; a gateway off
    the subnet made the network and the veth, then failed in the kernel (999
    ``Network is unreachable``) -- or, from pynet-ipam, was handed to the
    interface plugin to fail there."""
    for first in (False, True):
        c = Case(tmp_path / str(first), plugin, first)
        conf = c.conf_for("ADD")
        conf["ipam"]["routes"] = [{"dst": "0.0.0.0/0", "gw": gw}]
        c.refused("ADD", conf)


def test_route_gateway_off_a_default_pool_leaves_nothing(tmp_path):
    """No ranges: the subnet is a default pool's, known only once the network
    exists -- the refused first ADD takes the network away again."""
    c = Case(tmp_path, "bridge", first=False)
    conf = c.conf_for("ADD")
    conf["ipam"] = {"routes": [{"dst": "10.99.0.0/16", "gw": "10.255.0.1"}]}
    conf.pop("runtimeConfig")
    msg = c.refused("ADD", conf)
    assert "not in subnet" in msg


# ------------------------------------------------------------------- other fields
@pytest.mark.parametrize("verb", VERBS)
@pytest.mark.parametrize("plugin", ["bridge", "macvlan"])
@pytest.mark.parametrize("mtu", [float("-inf"), float("inf"), 1500.5, "1500"], ids=repr)
def test_mtu_must_be_an_integer_in_range(tmp_path, plugin, verb, mtu):
    """Was: 999 ``OverflowError: cannot convert float infinity to integer``;
    1500.5 passed as 1500."""
    c = Case(tmp_path, plugin)
    msg = c.refused(verb, _set(c.conf_for(verb), ("mtu",), mtu))
    assert "mtu" in msg


@pytest.mark.parametrize("pm", [
    {"hostPort": 8080, "containerPort": 80, "hostIP": "198.51.100.7"},   # not this host's
    {"hostPort": 8080, "containerPort": 80, "hostIP": 0},
    {"hostPort": False, "containerPort": 80},
    {"hostPort": 8080, "containerPort": 80, "protocol": 0},
], ids=["foreign-hostIP", "hostIP-0", "hostPort-false", "protocol-0"])
def test_port_mapping_refused_before_the_network_exists(tmp_path, monkeypatch, pm):
    """A host address not on this host was refused by the firewall's publish,
    after the network, its bridge and the endpoint existed."""
    c = Case(tmp_path, "bridge", first=False)
    made = []
    monkeypatch.setattr(cni, "ensure_network", lambda *a, **k: made.append(a) or pytest.fail("ensured"))
    conf = c.conf_for("ADD")
    conf["runtimeConfig"] = {"portMappings": [pm]}
    c.refused("ADD", conf)
    assert made == []


def test_duplicate_port_mapping_refused(tmp_path):
    c = Case(tmp_path, "bridge", first=False)
    conf = c.conf_for("ADD")
    conf["runtimeConfig"]["portMappings"] *= 2
    assert "twice" in c.refused("ADD", conf)


@pytest.mark.parametrize("dns", [1, "x", [], {"nameservers": "10.0.0.1"}, {"search": [1]}, {"domain": 5}],
                         ids=repr)
def test_dns_types(tmp_path, dns):
    c = Case(tmp_path, "bridge", first=False)
    c.refused("ADD", _set(c.conf_for("ADD"), ("dns",), dns))


@pytest.mark.parametrize("mode", ["bogus", 1, True], ids=repr)
def test_macvlan_mode_refused_at_parse(tmp_path, monkeypatch, mode):
    c = Case(tmp_path, "macvlan", first=False)
    monkeypatch.setattr(cni, "ensure_network", lambda *a, **k: pytest.fail("ensured"))
    assert "mode" in c.refused("ADD", _set(c.conf_for("ADD"), ("mode",), mode))


@pytest.mark.parametrize("field", ["bridge", "gateway", "rangeStart"])
def test_falsy_wrong_types_are_not_absent(tmp_path, field):
    """``0``/``false``/``[]`` were read as "not given" by ``x or default``."""
    c = Case(tmp_path, "bridge", first=False)
    conf = c.conf_for("ADD")
    if field == "bridge":
        conf["bridge"] = 0
    else:
        conf["ipam"]["ranges"][0][0][field] = []
    c.refused("ADD", conf, code=spec.UNSUPPORTED_FIELD if field == "rangeStart" else spec.INVALID_CONFIG)


@pytest.mark.parametrize("plugin", ["bridge", "ipam"])
@pytest.mark.parametrize("entry", [{"containerID": ["c1"]}, {"containerID": "c1", "ifname": ["eth0"]},
                                   {"containerID": 5}], ids=repr)
def test_gc_attachment_fields_are_strings(tmp_path, plugin, entry):
    """Was: 999 ``TypeError: unhashable type: 'list'``."""
    c = Case(tmp_path, plugin)
    conf = c.conf_for("GC")
    conf["cni.dev/valid-attachments"] = [entry]
    c.refused("GC", conf)


# ---------------------------------------------------------- pynet-ipam, one commit
@pytest.mark.parametrize("first", [True, False], ids=["after-add", "fresh"])
@pytest.mark.parametrize("routes", ["", [{"dst": "0.0.0.0/0", "gw": "10.8.0.1"}]], ids=repr)
def test_ipam_add_with_bad_routes_keeps_no_allocation(tmp_path, routes, first):
    c = Case(tmp_path, "ipam", first)
    conf = c.conf_for("ADD")
    conf["ipam"]["routes"] = routes
    c.refused("ADD", conf)
    assert [r.key for r in c.w.store.list("cni/ipam/")] == (["cni/ipam/ipnet/c1/eth0"] if first else [])


def test_ipam_route_gateway_checked_against_an_existing_networks_pool(tmp_path):
    """No ranges in the conflist: the pools are those of the pynet network of
    the same name; a gateway off its subnet is refused inside the commit."""
    c = Case(tmp_path, "bridge")                 # makes net1 with 10.9.0.0/24
    conf = {"cniVersion": "1.1.0", "name": "net1", "type": "bridge",
            "ipam": {"type": "pynet-ipam", "routes": [{"dst": "0.0.0.0/0", "gw": "10.5.0.1"}]},
            "pynet": {"stateDir": c.w.state, "daemon": False}}
    c.plugin = "ipam"
    assert "not in subnet 10.9.0.0/24" in c.refused("ADD", conf)
    conf["ipam"]["routes"][0]["gw"] = "10.9.0.1"
    rc, out = c.run("ADD", conf)
    assert rc == 0 and out["routes"] == [{"dst": "0.0.0.0/0", "gw": "10.9.0.1"}], out


# ------------------------------------------------------------ the pynet section
BAD_CHAIN_PREFIXES = ["A B", "P\n", "-j", "P+", "P!", "a:b", "P/x", "P" * 11, "\udc80"]
BAD_INSTANCES = ["a:b", "../x", "x\n", "-x", "a b", "x" * 65, ".hidden", "a/b"]


@pytest.mark.parametrize("key, value", [("chainPrefix", v) for v in BAD_CHAIN_PREFIXES]
                         + [("instance", v) for v in BAD_INSTANCES]
                         + [("stateDir", "relative/dir"),
                            ("stateDir", "/x\0y"), ("socket", "/run/x\n.sock"), ("socket", "x.sock")],
                         ids=repr)
def test_pynet_section_values_checked_by_content(key, value):
    """chainPrefix and instance were only type-checked: they name chains,
    link aliases, the socket and IPAM holders."""
    with pytest.raises(spec.CniError) as e:
        pynet_settings({"pynet": {key: value}}, {})
    assert e.value.code == spec.INVALID_CONFIG and f"pynet.{key}" in e.value.msg
    assert "\n" not in e.value.msg


@pytest.mark.parametrize("var, value", [("PYNET_CHAIN_PREFIX", "A B"), ("PYNET_PLUGIN_NAME", "a:b"),
                                        ("PYNET_STATE_DIR", "rel"), ("PYNET_SOCKET", "/x\0")])
def test_pynet_environment_checked_code_4(var, value):
    with pytest.raises(spec.CniError) as e:
        pynet_settings({}, {var: value})
    assert e.value.code == spec.INVALID_ENVIRONMENT and var in e.value.msg


def test_pynet_section_refused_through_run(tmp_path):
    c = Case(tmp_path, "bridge")
    for verb in VERBS:
        conf = c.conf_for(verb)
        conf["pynet"]["chainPrefix"] = "P\nCOMMIT"
        c.refused(verb, conf)
        conf["pynet"] = dict(c.conf["pynet"], instance="x:y")
        c.refused(verb, conf)


def test_good_pynet_section_passes():
    s = pynet_settings({"pynet": {"chainPrefix": "PT1A2B3C_-", "instance": "pt1a2b.x-y_z",
                                       "stateDir": "/var/lib/p n", "socket": "/run/p.sock"}}, {})
    assert (s["chain_prefix"], s["instance"], s["state_dir"], s["socket"]) == \
        ("PT1A2B3C_-", "pt1a2b.x-y_z", "/var/lib/p n", "/run/p.sock")
    assert pynet_settings({}, {})["chain_prefix"] is None


# ------------------------------------------------------------------ environment
@pytest.mark.parametrize("verb", ["ADD", "CHECK"])
@pytest.mark.parametrize("suffix", ["\n", "\x00", "\nCOMMIT"], ids=repr)
def test_netns_with_control_characters_is_code_4(tmp_path, verb, suffix):
    c = Case(tmp_path, "ipam")
    env = c.env_for(verb)
    env["CNI_NETNS"] += suffix
    c.refused(verb, c.conf_for(verb), code=spec.INVALID_ENVIRONMENT, env=env)


# ------------------------------------------------------------- DEL stays lenient
@pytest.mark.parametrize("plugin", PLUGINS)
def test_del_of_unknown_still_succeeds(tmp_path, plugin):
    c = Case(tmp_path, plugin, first=False)
    env = c.env_for("DEL")
    env["CNI_NETNS"] = ""
    assert c.run("DEL", c.conf_for("DEL"), env) == (0, None)
    c = Case(tmp_path / "after", plugin)
    env = dict(c.env_for("DEL"), CNI_CONTAINERID="other")
    assert c.run("DEL", c.conf_for("DEL"), env) == (0, None)


# ------------------------------------------------- guards (already refused on the merge)
# The fuzzer's author reported these on the unmerged branches; on the
# integration they were refused already (validation at the door landed).  Not
# regression tests of this change: kept so that each finding stays covered.
GUARDS = [
    ("ipam ranges 'x'", ("ipam", "ranges"), "x"),
    ("route gw number", ("ipam", "routes"), [{"dst": "0.0.0.0/0", "gw": 1}]),
    ("route gw true", ("ipam", "routes"), [{"dst": "0.0.0.0/0", "gw": True}]),
    ("route gw v6 for v4", ("ipam", "routes"), [{"dst": "0.0.0.0/0", "gw": "::1"}]),
    ("routes 'x'", ("ipam", "routes"), "x"),
    ("routes newline", ("ipam", "routes"), "0.0.0.0/0\n"),
    ("routes [[]]", ("ipam", "routes"), [[]]),
    ("route dst number", ("ipam", "routes"), [{"dst": 1}]),
    ("runtimeConfig.ips 1", ("runtimeConfig", "ips"), 1),
    ("runtimeConfig.ips true", ("runtimeConfig", "ips"), True),
    ("runtimeConfig.ips [1]", ("runtimeConfig", "ips"), [1]),
    ("runtimeConfig.ips two v4", ("runtimeConfig", "ips"), ["10.9.0.7/24", "10.9.0.8/24"]),
    ("mtu nan", ("mtu",), float("nan")),
    ("mtu 1e30", ("mtu",), 1e30),
    ("mtu true", ("mtu",), True),
    ("mtu 67", ("mtu",), 67),
    ("no containerPort", ("runtimeConfig", "portMappings"), [{"hostPort": 8080}]),
]


@pytest.mark.parametrize("plugin", ["bridge", "ipam"])
@pytest.mark.parametrize("case", GUARDS, ids=[g[0] for g in GUARDS])
def test_reported_findings_stay_refused(tmp_path, plugin, case):
    _, path, value = case
    if plugin == "ipam" and path[0] != "ipam" and path != ("runtimeConfig", "ips"):
        return  # pynet-ipam reads neither mtu nor port mappings
    for first in (False, True):
        c = Case(tmp_path / str(first), plugin, first)
        c.refused("ADD", _set(c.conf_for("ADD"), path, value))


@pytest.mark.parametrize("key, value", [("chainPrefix", 5), ("instance", ["x"])])
def test_pynet_section_types_stay_refused(key, value):
    with pytest.raises(spec.CniError) as e:
        pynet_settings({"pynet": {key: value}}, {})
    assert e.value.code == spec.INVALID_CONFIG
