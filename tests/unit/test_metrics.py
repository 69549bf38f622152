"""The daemon's metrics (``pynet.metrics``) and event lines, against the real Flask app, the real
IPAM on a MemoryStore and the fake driver/firewall: names and labels, the socket's mode, the
``--metrics-listen`` door, the IDs of the log lines (text and JSON)."""
from __future__ import annotations

import io
import json
import logging
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from pynet import cli, errors, logfmt, metrics
from tests.support.contract import Plugin, make_ipam
from tests.support.fakes import FakeDriver, FakeFirewall

REPO = Path(__file__).resolve().parents[2]
NET = "4f1c2a3b4c5d" + "a" * 52
EP = "9a8b7c6d5e4f" + "b" * 52


@pytest.fixture
def world(tmp_path):
    from pynet.cni.route import register_cni
    from pynet.cnm.controller import Controller
    from pynet.plugin_api.app import create_app
    from pynet.store.memory import MemoryStore

    store = MemoryStore()
    state = tmp_path / "state"
    state.mkdir()
    store.path = str(state / "pynet.db")
    c = Controller(store, make_ipam(store), {"bridge": FakeDriver()}, firewall=FakeFirewall(), port_allocator=None)
    m = metrics.Metrics(process=False)
    m.controller = c
    app = create_app(c, routes=[lambda app, ctl: register_cni(app, ctl, state_dir=str(state), observer=m)], observer=m)
    app.testing = False

    class World:
        controller, plugin, client, state_dir = c, Plugin(app.test_client()), app.test_client(), str(state)

        def scrape(self) -> dict:
            out = {}
            for fam in text_string_to_metric_families(generate_latest(m.registry).decode()):
                for s in fam.samples:
                    out[(s.name, frozenset(s.labels.items()))] = s.value
            return out

        def cni(self, command="VERSION", plugin="bridge", **over):
            from pynet.cni.shim import namespace_ids

            net, mnt = namespace_ids()
            body = {"plugin": plugin, "env": {"CNI_COMMAND": command, "CNI_CONTAINERID": "c" * 64,
                                              "CNI_IFNAME": "eth0", "CNI_NETNS": "/var/run/netns/cni-1234"},
                    "stdin": json.dumps({"cniVersion": "1.0.0", "name": "n1", "type": "pynet-bridge"}),
                    "stateDir": str(state), "netns": net, "mntns": mnt}
            body.update(over)
            resp = self.client.post("/Pynet.CNI", data=json.dumps(body).encode(), content_type="application/json")
            return resp.status_code, json.loads(resp.get_data())

    w = World()
    w.metrics = m
    return w


def v(samples, name, **labels):
    return samples.get((name, frozenset(labels.items())))


def test_names_and_labels(world):
    world.plugin.call("IpamDriver.RequestPool", {"AddressSpace": "LocalDefault", "Pool": "10.9.0.0/24"})
    world.plugin.call("IpamDriver.RequestPool", {"AddressSpace": "LocalDefault", "Pool": "10.9.0.0/24"})
    world.cni("VERSION")
    s = world.scrape()
    families = {}
    for (name, labels) in s:
        families.setdefault(name, set()).add(frozenset(k for k, _ in labels))
    want = {
        "pynet_docker_requests_total": {frozenset({"method", "result"})},
        "pynet_docker_request_duration_seconds_bucket": {frozenset({"method", "le"})},
        "pynet_cni_requests_total": {frozenset({"plugin", "command", "result"})},
        "pynet_cni_request_duration_seconds_bucket": {frozenset({"plugin", "command", "le"})},
        "pynet_ipam_pool_size": {frozenset({"address_space", "pool", "sub_pool"})},
        "pynet_ipam_pool_used": {frozenset({"address_space", "pool", "sub_pool"})},
        "pynet_store_errors_total": {frozenset({"edge", "error"})},
    }
    for name, labelsets in want.items():
        assert families.get(name) == labelsets, (name, families.get(name))
    # a method's series exist before its first call; the calls made are counted by result
    assert v(s, "pynet_docker_requests_total", method="NetworkDriver.Join", result="ok") == 0
    assert v(s, "pynet_docker_requests_total", method="IpamDriver.RequestPool", result="ok") == 1
    assert v(s, "pynet_docker_requests_total", method="IpamDriver.RequestPool", result="PoolOverlap") == 1
    assert v(s, "pynet_docker_request_duration_seconds_count", method="IpamDriver.RequestPool") == 2
    assert v(s, "pynet_cni_requests_total", plugin="bridge", command="VERSION", result="ok") == 1
    assert v(s, "pynet_cni_requests_total", plugin="macvlan", command="ADD", result="ok") == 0
    # the pool, read through the IPAM at scrape time: a /24 hands out 254 addresses, none held yet
    key = dict(address_space="LocalDefault", pool="10.9.0.0/24", sub_pool="")
    assert v(s, "pynet_ipam_pool_size", **key) == 254 and v(s, "pynet_ipam_pool_used", **key) == 0
    world.plugin.call("IpamDriver.RequestAddress", {"PoolID": "LocalDefault/10.9.0.0/24", "Address": ""})
    assert v(world.scrape(), "pynet_ipam_pool_used", **key) == 1
    # only real sources: no firewall series before a sync, nothing for the overlay yet
    assert not any(n.startswith(("pynet_overlay", "pynet_watch")) for n, _ in s)


def test_labels_never_take_the_callers_text(world):
    assert world.cni("ADD", plugin="evil\nplugin")[0] == 200
    assert world.cni("FROB")[0] == 200
    assert world.cni("ADD", stateDir="/elsewhere")[0] == 421
    assert world.client.post("/Pynet.CNI", data=b"{oops", content_type="application/json").status_code == 400
    env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c\x01", "CNI_IFNAME": "eth0", "CNI_NETNS": "/x"}
    assert world.cni(env=env)[0] == 200
    s = world.scrape()
    counted = {(dict(k)["plugin"], dict(k)["command"], dict(k)["result"]): val
               for (n, k), val in s.items() if n == "pynet_cni_requests_total" and val}
    assert counted == {("unknown", "ADD", "Internal"): 1,         # dispatch: "unknown pynet plugin", code 999
                       ("bridge", "unknown", "InvalidEnvironment"): 1,
                       ("bridge", "ADD", "Misdirected"): 1,
                       ("unknown", "unknown", "InvalidRequest"): 1,
                       ("bridge", "ADD", "InvalidEnvironment"): 1}, counted
    assert all(p in ("bridge", "macvlan", "ipam", "unknown") for p, _, _ in counted), counted
    assert all(c in metrics.CNI_COMMANDS + ("unknown",) for _, c, _ in counted), counted


def test_store_errors_are_counted_at_the_edge(world, monkeypatch):
    def unavailable(*a, **k):
        raise errors.StoreUnavailable("etcd: no member answered")

    monkeypatch.setattr(world.controller, "request_pool", unavailable)
    status, answer = world.plugin.call("IpamDriver.RequestPool", {"AddressSpace": "LocalDefault", "Pool": ""})
    assert status == 503
    monkeypatch.setattr(world.controller.ipam, "list_pools", unavailable)
    world.scrape()
    s = world.scrape()   # a scrape's own failed read is counted by the time of the next one
    assert v(s, "pynet_docker_requests_total", method="IpamDriver.RequestPool", result="StoreUnavailable") == 1
    assert v(s, "pynet_store_errors_total", edge="docker", error="StoreUnavailable") == 1
    assert v(s, "pynet_store_errors_total", edge="metrics", error="StoreUnavailable") >= 1  # the scrapes' reads
    assert v(s, "pynet_store_errors_total", edge="cni", error="StoreConflict") == 0
    assert not any(n == "pynet_ipam_pool_size" for n, _ in s)


def test_firewall_syncs_and_applies_are_counted_and_attributes_reach_the_firewall():
    m = metrics.Metrics(process=False)

    class Engine:
        isolate_from = ()

        def __init__(self):
            self.applied = 0

        def apply(self, nets, eps, problems=None):
            self.applied += 1
            if nets == "boom":
                raise errors.KernelError("iptables-restore failed")

    class Bridge:
        def __init__(self):
            self.firewall = Engine()
            self.last = None

        def sync(self, networks, endpoints, force=False, changed=None):
            self.changed = changed
            if networks != "same":
                self.firewall.apply(networks, endpoints)

    inner = Bridge()
    fw = m.observe_firewall(inner)
    fw.sync([], [])
    fw.sync("same", [])                   # rendered the same: nothing written
    fw.sync([], [], force=True)
    fw.sync("same", [], changed={"n1"})   # a per-change sync: the owners reach the firewall
    assert inner.changed == {"n1"}
    with pytest.raises(errors.KernelError):
        fw.sync("boom", [])
    fw.last = "x"                          # writes reach the firewall itself
    inner.firewall.isolate_from = ("br-1",)
    assert inner.last == "x" and inner.firewall.applied == 3
    s = {(x.name, frozenset(x.labels.items())): x.value
         for f in text_string_to_metric_families(generate_latest(m.registry).decode()) for x in f.samples}
    assert v(s, "pynet_firewall_syncs_total", trigger="change", result="ok") == 3
    assert v(s, "pynet_firewall_syncs_total", trigger="change", result="KernelError") == 1
    assert v(s, "pynet_firewall_syncs_total", trigger="recheck", result="ok") == 1
    assert v(s, "pynet_firewall_applies_total", result="ok") == 2
    assert v(s, "pynet_firewall_applies_total", result="KernelError") == 1
    assert v(s, "pynet_firewall_apply_duration_seconds_count") == 3


# ------------------------------------------------------------------ the endpoint
def test_unix_socket_is_0600_and_serves_the_text_format(tmp_path):
    from tests.support.harness import UnixHTTPConnection

    m = metrics.Metrics()
    sock = str(tmp_path / "m.sock")
    server = metrics.Server(m, sock).start()
    try:
        st = os.stat(sock)
        assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
        conn = UnixHTTPConnection(sock, timeout=10)
        conn.request("GET", "/metrics")
        resp = conn.getresponse()
        text = resp.read().decode()
        conn.close()
        assert resp.status == 200
        names = {f.name for f in text_string_to_metric_families(text)}
        assert {"pynet_docker_requests", "pynet_store_errors", "process_cpu_seconds"} <= names
    finally:
        server.stop()
    assert not os.path.exists(sock)


def test_default_socket_is_per_instance_under_run():
    assert metrics.default_socket("pynet") == "/run/pynet/pynet-metrics.sock"
    assert metrics.default_socket("pt1a2b-pynet") == "/run/pynet/pt1a2b-pynet-metrics.sock"


@pytest.mark.parametrize("value,want", [
    ("127.0.0.1:9377", ("127.0.0.1", 9377)), ("0.0.0.0:80", ("0.0.0.0", 80)),
    ("[::1]:9377", ("::1", 9377)), ("localhost:9377", ("127.0.0.1", 9377)), ("", None), (None, None)])
def test_metrics_listen_accepts(value, want):
    assert metrics.parse_listen(value) == want


@pytest.mark.parametrize("value", [
    "9377", ":9377", "127.0.0.1", "127.0.0.1:", "127.0.0.1:0", "127.0.0.1:65536", "127.0.0.1:+80",
    "127.0.0.1:080", "pynet.invalid:9377", "::1:9377", "[127.0.0.1]:9377", "[fe80::1%eth0]:9377",
    "127.0.0.1:9377\n", "1.2.3.4.5:80", "127.0.0.1: 80", "ü:80"])
def test_metrics_listen_refuses(value):
    with pytest.raises(errors.InvalidParameter, match="--metrics-listen"):
        metrics.parse_listen(value)


def test_bad_metrics_listen_is_one_line_and_starts_nothing(tmp_path):
    sock = tmp_path / "p.sock"
    p = subprocess.run([sys.executable, "-m", "pynet", "daemon", "--state-dir", str(tmp_path / "state"),
                        "--socket", str(sock), "--metrics-socket", str(tmp_path / "m.sock"),
                        "--metrics-listen", "localhost:http"],
                       cwd=REPO, capture_output=True, text=True, timeout=60,
                       env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert p.returncode == 1
    assert p.stderr.count("\n") == 1 and p.stderr.startswith("pynet: error: invalid --metrics-listen 'localhost:http'")
    assert not sock.exists() and not (tmp_path / "state").exists() and not (tmp_path / "m.sock").exists()
    env = dict(os.environ, PYTHONPATH=str(REPO), PYNET_METRICS_LISTEN="nowhere")
    p = subprocess.run([sys.executable, "-m", "pynet", "daemon", "--state-dir", str(tmp_path / "state"),
                        "--socket", str(sock)], cwd=REPO, capture_output=True, text=True, timeout=60, env=env)
    assert p.returncode == 1 and p.stderr.count("\n") == 1 and "PYNET_METRICS_LISTEN" in p.stderr


def test_tcp_listener_only_when_asked_in_a_private_namespace(tmp_path):
    """--metrics-listen serves HTTP on that address: checked on the loopback of a network namespace
    of its own (unshare), so nothing listens or is sent on the host's."""
    if os.geteuid() != 0:
        pytest.fail("needs root (a private network namespace)")
    script = f"""
import subprocess, urllib.request
subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
from pynet import metrics
m = metrics.Metrics()
s = metrics.Server(m, {str(tmp_path / "m.sock")!r}, metrics.parse_listen("127.0.0.1:9377")).start()
text = urllib.request.urlopen("http://127.0.0.1:9377/metrics", timeout=10).read().decode()
try:
    metrics.Server(metrics.Metrics(process=False), {str(tmp_path / "m2.sock")!r}, ("127.0.0.1", 9377)).start()
except Exception as e:
    print("BUSY", e)
s.stop()
print("pynet_docker_requests" in text)
"""
    p = subprocess.run(["unshare", "-n", sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True,
                       timeout=60, env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert lines[-1] == "True", p.stdout
    assert lines[0].startswith("BUSY --metrics-listen 127.0.0.1:9377: ") and "in use" in lines[0], lines


# ------------------------------------------------------------------ event lines
def test_docker_event_lines_name_the_short_ids(world, caplog):
    caplog.set_level(logging.DEBUG, logger="pynet.plugin_api")
    world.plugin.call("NetworkDriver.Join", {"NetworkID": NET, "EndpointID": EP,
                                             "SandboxKey": "/var/run/docker/netns/1a2b3c4d5e6f"})
    rec = [r for r in caplog.records if getattr(r, "event", None) == "NetworkDriver.Join"]
    assert len(rec) == 1
    r = rec[0]
    assert (r.network_id, r.endpoint_id, r.sandbox_id) == ("4f1c2a3b4c5d", "9a8b7c6d5e4f", "1a2b3c4d5e6f")
    assert r.result == "NetworkNotFound" and r.levelno == logging.INFO
    assert r.getMessage().startswith("NetworkDriver.Join network_id=4f1c2a3b4c5d endpoint_id=9a8b7c6d5e4f "
                                     "sandbox_id=1a2b3c4d5e6f -> NetworkNotFound: ")
    d = json.loads(logfmt.JsonFormatter().format(r))
    assert d["network_id"] == "4f1c2a3b4c5d" and d["endpoint_id"] == "9a8b7c6d5e4f"
    assert d["sandbox_id"] == "1a2b3c4d5e6f" and d["event"] == "NetworkDriver.Join"
    assert isinstance(d["duration_ms"], float) and d["error"]
    # one line per event: the error handler adds none of its own
    assert len([x for x in caplog.records if x.name == "pynet.plugin_api"]) == 1


def test_ipam_event_lines_carry_the_pool_and_the_address(world, caplog):
    caplog.set_level(logging.INFO, logger="pynet.plugin_api")
    world.plugin.call("IpamDriver.RequestPool", {"AddressSpace": "LocalDefault", "Pool": "10.9.1.0/24"})
    world.plugin.call("IpamDriver.RequestAddress", {"PoolID": "LocalDefault/10.9.1.0/24", "Address": ""})
    lines = [r.getMessage() for r in caplog.records if r.name == "pynet.plugin_api"]
    assert lines[0].startswith("IpamDriver.RequestPool pool=10.9.1.0/24 pool_id=LocalDefault/10.9.1.0/24 -> ok (")
    assert lines[1].startswith("IpamDriver.RequestAddress pool_id=LocalDefault/10.9.1.0/24 "
                               "address=10.9.1.1/24 -> ok (")


def test_cni_event_lines_name_the_container_network_and_namespace(world, caplog):
    caplog.set_level(logging.INFO, logger="pynet.plugin_api.cni")
    world.cni("VERSION")
    (r,) = [r for r in caplog.records if r.name == "pynet.plugin_api.cni"]
    assert r.getMessage().startswith("CNI VERSION plugin=bridge container_id=cccccccccccc network=n1 "
                                     "ifname=eth0 netns=cni-1234 -> ok (")
    d = json.loads(logfmt.JsonFormatter().format(r))
    assert (d["container_id"], d["network"], d["netns"], d["result"]) == ("c" * 12, "n1", "cni-1234", "ok")


def test_event_text_stays_one_printable_line():
    buf = io.StringIO()
    logger = logging.getLogger("pynet.test.events")
    h = logging.StreamHandler(buf)
    logger.addHandler(h)
    logger.setLevel(logging.INFO)
    try:
        logfmt.event(logger, logging.INFO, "CNI ADD", {"container_id": "x\ny\u2028", "network": "a b"},
                     ValueError("two\nlines"), 0.0012)
    finally:
        logger.removeHandler(h)
    out = buf.getvalue()
    assert out.count("\n") == 1 and out.isascii(), out
    assert "-> ValueError: two lines (1.2 ms)" in out


def test_the_cni_paths_never_load_prometheus(tmp_path):
    """What a CNI binary runs in-process (entry, dispatch, the plugins, the root's IPAM build)
    leaves prometheus-client and pynet.metrics unloaded: the ADD path stays lean (the import
    contract cni-no-metrics says it of the code; this says it of a real interpreter)."""
    probe = (f"import pynet.cni.main, pynet.cni.dispatch, pynet.cni.plugin, pynet.cni.ipam_plugin\n"
             f"from pynet import root\nfrom pynet.config import Config\n"
             f"root.build_ipam_controller(Config(state_dir={str(tmp_path)!r}))\n"
             "import sys; print(sorted(m for m in sys.modules if m.startswith(('prometheus_client', 'pynet.metrics'))))")
    r = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[-1] == "[]"


def test_a_busy_metrics_socket_is_one_line_and_builds_nothing(tmp_path):
    """Another daemon serving the metrics socket: refused before the store or the kernel is touched."""
    import socket

    busy = str(tmp_path / "m.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(busy)
    listener.listen(1)
    try:
        p = subprocess.run([sys.executable, "-m", "pynet", "daemon", "--state-dir", str(tmp_path / "state"),
                            "--socket", str(tmp_path / "p.sock"), "--metrics-socket", busy],
                           cwd=REPO, capture_output=True, text=True, timeout=60,
                           env=dict(os.environ, PYTHONPATH=str(REPO)))
    finally:
        listener.close()
    assert p.returncode == 1
    assert p.stderr.splitlines()[-1] == f"pynet: error: another process is serving on {busy}", p.stderr
    assert "Traceback" not in p.stderr and not (tmp_path / "state").exists()
