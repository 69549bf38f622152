"""The daemon's metrics and event log after a real workload (issue 14, items 4 and 5).

On the real dockerd, through a test daemon started with ``--log-format json``: a pynet network,
two containers (one publishing a port), a CNI pod attached by the real ``pynet-bridge`` binary
(whose shim hands every verb to the daemon's CNI route) taken through ADD, CHECK, STATUS, GC and
DEL, a malformed Docker call, then everything removed.  The metrics endpoint (the daemon's default
unix socket) is scraped and parsed with prometheus-client's text-format parser, and its counters
are compared with the operations done; the IPAM gauges with ``pynet ipam ls``; the log's events
with the IDs ``docker inspect`` shows.
"""
from __future__ import annotations

import json
import os
import secrets
import stat
import subprocess

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support import harness
from tests.e2e.test_docker_bridge import create_network, pynet_cli, run_container

SUBNET = "10.214.7.0/24"


def metrics_socket(daemon) -> str:
    return f"/run/pynet/{daemon.name}-metrics.sock"   # the default: /run/pynet/<plugin>-metrics.sock


def scrape(daemon) -> dict:
    """{(sample name, frozenset(labels)): value} of one scrape of the daemon's metrics socket."""
    conn = harness.UnixHTTPConnection(metrics_socket(daemon), timeout=30)
    try:
        conn.request("GET", "/metrics")
        resp = conn.getresponse()
        text = resp.read().decode()
        assert resp.status == 200, text
        assert resp.getheader("Content-Type", "").startswith("text/plain"), resp.getheader("Content-Type")
    finally:
        conn.close()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(samples: dict, name: str, **labels) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def series(samples: dict, name: str) -> dict:
    return {labels: v for (n, labels), v in samples.items() if n == name}


def docker_ok(samples, method):
    return value(samples, "pynet_docker_requests_total", method=method, result="ok")


def cni_ok(samples, command, plugin="bridge"):
    return value(samples, "pynet_cni_requests_total", plugin=plugin, command=command, result="ok")


class Pod:
    """One CNI pod driven verb by verb with the installed ``pynet-bridge`` (cniVersion 1.1.0,
    which has GC and STATUS)."""

    def __init__(self, daemon, prefix, bin_dir, network):
        from pynet.cnm import sandbox

        self.bin = bin_dir
        self.ns = f"{prefix}-m{secrets.token_hex(2)}"
        self.path = sandbox.create_netns(self.ns)
        self.cid = f"{prefix}metricspod{secrets.token_hex(6)}"
        self.conf = {"cniVersion": "1.1.0", "name": network, "type": "pynet-bridge", "isGateway": True,
                     "ipam": {"type": "pynet-ipam", "ranges": [[{"subnet": SUBNET}]]},
                     "pynet": {"stateDir": str(daemon.state_dir), "socket": str(daemon.socket),
                               "chainPrefix": harness.chain_prefix_for(daemon.name), "instance": daemon.name}}
        self.added = False

    def call(self, command, conf=None):
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "CNI_COMMAND": command, "CNI_CONTAINERID": self.cid,
               "CNI_IFNAME": "eth0", "CNI_NETNS": self.path, "CNI_PATH": self.bin}
        p = subprocess.run([os.path.join(self.bin, "pynet-bridge")], input=json.dumps(conf or self.conf).encode(),
                           env=env, capture_output=True, timeout=120)
        out = p.stdout.decode()
        assert p.returncode == 0, (command, out, p.stderr.decode())
        return json.loads(out) if out.strip() else None

    def cleanup(self):
        from pynet.cnm import sandbox

        if self.added:
            try:
                self.call("DEL")
            except Exception as e:  # noqa: BLE001 -- the namespace goes anyway
                print(f"[pynet] DEL of pod {self.cid} failed: {e}")
        sandbox.delete_netns(self.ns)


@pytest.fixture(scope="module")
def cni_bin(tmp_path_factory):
    from pynet.cni.install import install

    d = tmp_path_factory.mktemp("cnibin")
    install(str(d), conf_dir=None)
    return str(d)


def json_events(daemon) -> list[dict]:
    out = []
    for line in daemon.log_text().splitlines():
        if line.startswith("{"):
            out.append(json.loads(line))   # every line the daemon logs is one JSON object
    return out


def test_metrics_match_a_docker_and_cni_workload(docker, test_image, pynet_daemon_factory, prefix, cni_bin):
    daemon = pynet_daemon_factory(extra_args=["--log-format", "json"])
    sock = metrics_socket(daemon)
    st = os.stat(sock)
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600

    start = scrape(daemon)
    # every verb has its series before the first call, none counted yet
    for method in ("NetworkDriver.CreateEndpoint", "IpamDriver.RequestAddress", "NetworkDriver.Join"):
        assert (("pynet_docker_requests_total", frozenset({("method", method), ("result", "ok")}))) in start
        assert docker_ok(start, method) == 0
    assert ("pynet_cni_requests_total",
            frozenset({("plugin", "bridge"), ("command", "ADD"), ("result", "ok")})) in start
    assert series(start, "pynet_ipam_pool_size") == {}

    net = f"{prefix}-metrics"
    info = create_network(docker, daemon, net, "--subnet", SUBNET)
    a, b = f"{prefix}-ma", f"{prefix}-mb"
    run_container(docker, test_image, a, net)
    port = 20000 + secrets.randbelow(20000)
    run_container(docker, test_image, b, net, "-p", f"127.0.0.1:{port}:8080")
    endpoints = {c: docker.inspect(c, "container")["NetworkSettings"]["Networks"][net]["EndpointID"] for c in (a, b)}
    sandboxes = {c: os.path.basename(docker.inspect(c, "container")["NetworkSettings"]["SandboxKey"]) for c in (a, b)}

    pod = Pod(daemon, prefix, cni_bin, net)
    try:
        result = pod.call("ADD")
        pod.added = True
        mid = scrape(daemon)
        # IPAM gauges, read at scrape time: the pool's size and use as `pynet ipam ls` reads them
        pool = next(p for p in pynet_cli(daemon, "ipam", "ls") if p["pool"] == SUBNET)
        key = frozenset({("address_space", pool["address_space"]), ("pool", SUBNET), ("sub_pool", "")})
        assert series(mid, "pynet_ipam_pool_size") == {key: float(pool["size"])}
        assert series(mid, "pynet_ipam_pool_used") == {key: float(pool["used"])}
        assert pool["used"] == 4  # the gateway, two containers, the pod
        pod.call("CHECK", {**pod.conf, "prevResult": result})
        pod.call("STATUS")
        pod.call("GC", {**pod.conf, "cni.dev/valid-attachments": [{"containerID": pod.cid, "ifname": "eth0"}]})
        pod.call("DEL")
        pod.added = False
    finally:
        pod.cleanup()

    # a malformed call, sent as dockerd would send it: one InvalidRequest, nothing else
    status, _ = daemon.post("NetworkDriver.Leave", "{oops")
    assert status == 400
    docker.run("rm", "-f", a, b)
    docker.run("network", "rm", net)
    end = scrape(daemon)

    # ---- Docker verbs: what one network, two containers and their removal take
    expected = {"IpamDriver.RequestPool": 1, "IpamDriver.ReleasePool": 1,
                "IpamDriver.RequestAddress": 3, "IpamDriver.ReleaseAddress": 3,   # gateway + 2 containers
                "NetworkDriver.CreateNetwork": 1, "NetworkDriver.DeleteNetwork": 1,
                "NetworkDriver.CreateEndpoint": 2, "NetworkDriver.DeleteEndpoint": 2,
                "NetworkDriver.Join": 2, "NetworkDriver.Leave": 2,
                "NetworkDriver.ProgramExternalConnectivity": 2, "NetworkDriver.RevokeExternalConnectivity": 2}
    got = {m: docker_ok(end, m) - docker_ok(start, m) for m in expected}
    assert got == expected
    assert value(end, "pynet_docker_requests_total", method="NetworkDriver.Leave", result="InvalidRequest") == 1
    failed = {labels: v for labels, v in series(end, "pynet_docker_requests_total").items()
              if dict(labels)["result"] != "ok" and v}
    assert failed == {frozenset({("method", "NetworkDriver.Leave"), ("result", "InvalidRequest")}): 1.0}
    # every call is in its histogram: _count is the method's calls of every result
    for method in expected:
        calls = sum(v for labels, v in series(end, "pynet_docker_requests_total").items()
                    if dict(labels)["method"] == method)
        assert value(end, "pynet_docker_request_duration_seconds_count", method=method) == calls, method

    # ---- CNI verbs, each served once by the daemon's route
    for command in ("ADD", "CHECK", "STATUS", "GC", "DEL"):
        assert cni_ok(end, command) == 1, command
        assert value(end, "pynet_cni_request_duration_seconds_count", plugin="bridge", command=command) == 1
    cni_failed = {labels: v for labels, v in series(end, "pynet_cni_requests_total").items()
                  if dict(labels)["result"] != "ok" and v}
    assert cni_failed == {}

    # ---- firewall: the syncs and applies the verbs made, each timed
    applies = value(end, "pynet_firewall_applies_total", result="ok")
    assert applies >= 2   # at least the network's rules and the published port's
    assert value(end, "pynet_firewall_apply_duration_seconds_count") == applies
    syncs = sum(series(end, "pynet_firewall_syncs_total").values())
    assert syncs >= applies
    # ---- no store errors, no pools left
    assert sum(series(end, "pynet_store_errors_total").values()) == 0
    assert series(end, "pynet_ipam_pool_size") == {} and series(end, "pynet_ipam_pool_used") == {}

    # ---- the event log: one JSON object per line, the IDs as Docker prints them
    events = json_events(daemon)
    by = {}
    for e in events:
        by.setdefault(e.get("event"), []).append(e)
    nid = info["Id"][:12]
    creates = by["NetworkDriver.CreateEndpoint"]
    assert sorted(e["endpoint_id"] for e in creates) == sorted(ep[:12] for ep in endpoints.values())
    assert {e["network_id"] for e in creates} == {nid} and {e["result"] for e in creates} == {"ok"}
    joins = by["NetworkDriver.Join"]
    assert sorted(e["sandbox_id"] for e in joins) == sorted(sandboxes.values())
    assert sorted(e["endpoint_id"] for e in joins) == sorted(ep[:12] for ep in endpoints.values())
    assert by["NetworkDriver.CreateNetwork"][0]["network_id"] == nid
    assert f"network_id={nid}" in by["NetworkDriver.CreateNetwork"][0]["msg"]
    adds = by["CNI ADD"]
    assert len(adds) == 1 and adds[0]["container_id"] == pod.cid[:12] and adds[0]["network"] == net
    assert adds[0]["result"] == "ok" and adds[0]["plugin"] == "bridge"
    bad = by["NetworkDriver.Leave"]
    assert [e["result"] for e in bad].count("InvalidRequest") == 1
    assert len(by["CNI DEL"]) == 1 and len(by["NetworkDriver.DeleteNetwork"]) == 1

    daemon.stop()
    assert not os.path.exists(sock), "the metrics socket is removed on SIGTERM"
