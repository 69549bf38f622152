"""Issue 9 acceptance: 100 CNI ADDs at once beside Docker containers starting and stopping on the
same network, then everything removed: no duplicate address, no error, nothing left.

One Docker network (``-d <daemon> --ipam-driver <daemon>``, 10.248.0.0/24 -- nothing else in the
suite uses 10.248.0.0/16) and a pynet-bridge configuration with its name, so the pods share it.
The ``pynet-bridge`` binary is exec'd 100 times at once (a thread per process, in the host's
namespaces, so the shim hands each call to the daemon's socket as it does by default) into 100
throwaway netns, while a thread runs and removes containers on the network (never more than
``ALIVE`` at once).  Then the pods are DEL'd at once too and the containers removed.

Checked: every ADD and DEL exits 0 and every docker command succeeds; no address is held by two
holders at overlapping times (CNI results, ``docker inspect``, the gateway); while the pods are up
the daemon's store has exactly their and the live containers' endpoints and its IPAM exactly their
addresses and the gateway; after removal no store record beyond a fresh daemon's, no link tagged
with the daemon's alias or named after its objects, no iptables/ip6tables line with its chain
prefix, no netns, no Docker object.
"""
from __future__ import annotations

import ipaddress
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

import harness

N_PODS = 100
N_CONTAINERS = 12     # started at least (and on until the ADDs are done, at most MAX_CONTAINERS)
MAX_CONTAINERS = 60
ALIVE = 4             # at most at once
SUBNET = "10.248.0.0/24"


def _links_named_after(network_ids, endpoint_ids) -> list[str]:
    from pynet.drivers.bridge import container_veth_name, default_bridge_name, host_veth_name

    names = {default_bridge_name(n) for n in network_ids}
    names |= {f(e) for e in endpoint_ids for f in (host_veth_name, container_veth_name)}
    return sorted(names & set(harness.list_links()))


@pytest.mark.timeout(600)
def test_parallel_cni_adds_with_docker_churn(docker, test_image, pynet_daemon_factory, prefix, tmp_path):
    daemon = pynet_daemon_factory("par")
    cni = harness.CniExec(harness.install_cni_binaries(tmp_path / "cnibin"))
    chain_prefix = harness.daemon_chain_prefix(daemon.argv())
    baseline_keys = set(harness.pynet_holdings(daemon.state_dir)["keys"])
    baseline_rules = set(harness.firewall_lines(chain_prefix))
    net = f"{prefix}-pm"
    pods = [(f"{prefix}-pp{i}", f"{prefix}-y{i}") for i in range(N_PODS)]
    made_netns: list[str] = []
    errors: list[str] = []
    seen_endpoints: set[str] = set()
    try:
        docker.run("network", "create", "-d", daemon.name, "--ipam-driver", daemon.name,
                   "--subnet", SUBNET, net)
        net_id = docker.inspect(net, "network")["Id"]
        # Docker records no gateway it was not given: the daemon's network record has it
        (record,) = [n for n in harness.pynet_holdings(daemon.state_dir)["networks"] if n["id"] == net_id]
        gateway = record["ipv4"][0]["gateway"].split("/")[0]
        conf = harness.daemon_cni_conf(daemon, net, SUBNET)
        for _, ns in pods:
            harness.netns_add(ns)
            made_netns.append(ns)

        # -- Docker: containers start and stop on the network while the ADDs run
        spans: list[tuple[str, str, float, float]] = []     # (address, holder, from, until)
        first_up = threading.Event()
        churn_done = threading.Event()
        adds_done = threading.Event()
        docker_events: list[float] = []       # when each run/rm of the churn finished
        alive: list[tuple[str, str, float, str]] = []   # (name, address, since, endpoint id)

        def docker_ok(*args):
            p = docker.run(*args, check=False, timeout=180)
            if p.returncode != 0:
                errors.append(f"docker {' '.join(args[:2])}: {p.stderr.strip()}")
            return p.returncode == 0

        def remove_oldest():
            name, ip, since, _ = alive.pop(0)
            until = time.monotonic()            # from here on the address may be free again
            if docker_ok("rm", "-f", name):
                spans.append((ip, f"container {name}", since, until))
                docker_events.append(time.monotonic())

        def churn():
            try:
                i = 0
                while i < MAX_CONTAINERS and (i < N_CONTAINERS or not adds_done.is_set()):
                    name = f"{prefix}-pc{i}"
                    i += 1
                    if docker_ok("run", "-d", "--name", name, "--network", net, test_image, "sleep", "3600"):
                        docker_events.append(time.monotonic())
                        info = harness.docker_objects([name])["containers"].get(name) or {}
                        ep = (info.get("networks") or {}).get(net) or {}
                        if not ep.get("ip"):
                            errors.append(f"container {name} has no address on {net}: {info}")
                        else:
                            seen_endpoints.add(ep["endpoint_id"])
                            alive.append((name, ep["ip"], time.monotonic(), ep["endpoint_id"]))
                    first_up.set()
                    if len(alive) >= ALIVE:
                        remove_oldest()
            except Exception as e:  # noqa: BLE001 -- reported below with the rest
                errors.append(f"churn: {type(e).__name__}: {e}")
            finally:
                first_up.set()
                churn_done.set()

        churner = threading.Thread(target=churn, name="docker churn", daemon=True)
        churner.start()
        assert first_up.wait(180), "the first container did not start"

        # -- 100 ADDs at once
        added: dict[str, tuple[str, float]] = {}

        def add(cid, ns):
            r = cni.call("ADD", conf, cid, f"/run/netns/{ns}")
            done = time.monotonic()
            if not r.ok or len(r.ips()) != 1:
                errors.append(f"ADD {cid}: {r!r} {r.err.strip()[-300:]}")
                return
            added[cid] = (r.ips()[0], done)

        t0 = time.monotonic()
        with ThreadPoolExecutor(max_workers=N_PODS) as pool:
            list(pool.map(lambda p: add(*p), pods))
        t_end = time.monotonic()
        adds_done.set()
        add_seconds = t_end - t0
        assert churn_done.wait(600), "the Docker churn did not finish"
        churner.join(30)

        # -- while everything is up: the store holds exactly what is alive
        st = harness.pynet_holdings(daemon.state_dir)
        seen_endpoints |= {e["id"] for e in st["endpoints"]}
        live_docker = {ip for _, ip, _, _ in alive}
        pod_ips = {cid: ip for cid, (ip, _) in added.items()}
        by_ip: dict[str, list[str]] = {}
        for cid, ip in pod_ips.items():
            by_ip.setdefault(ip, []).append(f"pod {cid}")
        for name, ip, _, _ in alive:
            by_ip.setdefault(ip, []).append(f"container {name}")
        by_ip.setdefault(gateway, []).append("gateway")
        dups = {ip: who for ip, who in by_ip.items() if len(who) > 1}
        live_eps = {eid for _, _, _, eid in alive}
        store_eps = {e.get("container_id") or e["id"]: e.get("address", "").split("/")[0] for e in st["endpoints"]}
        pools = [p for p in st["pools"] if p["pool"] == SUBNET]
        allocated = set(pools[0]["allocated"]) if pools else set()
        want = set(pod_ips.values()) | live_docker | {gateway}
        served = daemon.log_text().count("CNI bridge ADD")  # calls the daemon served (the rest in-process)
        print(f"\n[parallel] {N_PODS} ADDs in {add_seconds:.1f} s ({served} via the daemon's socket), "
              f"{len(spans) + len(alive)} containers started beside them, "
              f"{sum(t0 < t < t_end for t in docker_events)} docker run/rm finished during the ADDs")

        # -- everything removed: pods (at once) and containers
        deleted: dict[str, float] = {}

        def delete(cid, ns):
            started = time.monotonic()
            r = cni.call("DEL", conf, cid, f"/run/netns/{ns}")
            if not r.ok:
                errors.append(f"DEL {cid}: {r!r} {r.err.strip()[-300:]}")
            deleted[cid] = started

        with ThreadPoolExecutor(max_workers=N_PODS) as pool:
            list(pool.map(lambda p: delete(*p), pods))
        while alive:
            remove_oldest()
        for cid, (ip, since) in added.items():
            spans.append((ip, f"pod {cid}", since, deleted.get(cid, time.monotonic())))
        for ns in list(made_netns):
            if not harness.netns_del(ns):
                errors.append(f"ip netns del {ns} failed")
            made_netns.remove(ns)
        docker_ok("network", "rm", net)

        # -- the checks
        overlapping = []
        spans.sort()
        for i, (ip, who, a, b) in enumerate(spans):
            for ip2, who2, a2, b2 in spans[i + 1:]:
                if ip2 != ip:
                    break
                if a < b2 and a2 < b:
                    overlapping.append(f"{ip}: {who} and {who2}")
        after = harness.pynet_holdings(daemon.state_dir)
        problems = {
            "errors": errors,
            "no container started or stopped while the ADDs ran": not any(t0 < t < t_end for t in docker_events),
            "duplicate addresses while up": dups,
            "duplicate addresses over time": overlapping,
            "store endpoints != live holders": sorted(set(store_eps) ^ (set(pod_ips) | live_eps)),
            "store addresses != CNI results": sorted(c for c, ip in pod_ips.items() if store_eps.get(c) != ip),
            "IPAM allocated != live holders + gateway": sorted(allocated ^ want),
            "IPAM inconsistent": [p["problems"] for p in pools if p["problems"]],
            "store records left": sorted(set(after["keys"]) - baseline_keys),
            "links left": sorted(set(harness.daemon_links(daemon.name))
                                 | set(_links_named_after([net_id], seen_endpoints))),
            "firewall lines left": sorted(set(harness.firewall_lines(chain_prefix)) - baseline_rules),
            "netns left": sorted(n for n in harness.list_netns() if n.startswith(f"{prefix}-y")),
            "docker objects left": [n for kind in harness.docker_objects([f"{prefix}-p"]).values() for n in kind],
        }
        problems = {k: v for k, v in problems.items() if v}
        assert not problems, "\n".join(f"{k}: {v}" for k, v in problems.items())
    finally:
        for ns in made_netns:
            harness.netns_del(ns)
        harness.cleanup_links(list(harness.daemon_links(daemon.name)))
