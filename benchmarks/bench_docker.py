"""Docker benchmark: network create/rm and container run/rm on a pynet network
against Docker's built-in bridge driver, in the same run.

    .venv/bin/python benchmarks/bench_docker.py [--runs 10] [--via cli|api|both]

Three kinds of network, each round measuring all of them in turn (the order
rotates every round, so drift hits every side alike):

    pynet/pynet-ipam    -d <plugin> --ipam-driver <plugin> --subnet S
    pynet/docker-ipam   -d <plugin> --subnet S            (Docker's default IPAM)
    builtin-bridge      -d bridge --subnet S              (the peer: dockerd's defaults)

Operations: ``docker network create`` + ``docker network rm`` of a fresh
network; ``docker run -d`` + ``docker rm -f`` of a container (pynet-test:latest,
``sleep``) on one network per kind made beforehand.

``--via cli`` times Debian's ``/usr/bin/docker`` client as a user sees it (its
~constant start-up cost is in both sides, which pulls ratios towards 1);
``--via api`` posts the same requests to the Engine API on
``/var/run/docker.sock`` (what dockerd + the driver cost).  Medians of
``--runs`` rounds after one warm-up round; goals printed beside; never fails on
a goal.  The pynet daemon is the harness's PynetDaemon: own plugin name
(``ptXXXX-bench``), state dir, socket and iptables chain prefix; everything is
named ``ptXXXX-...`` and removed even on failure.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import urllib.parse

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from tests.support import harness  # noqa: E402

CREATE_GOAL = 0.6   # pynet / built-in, network create + rm
RUN_GOAL = 1.0      # pynet / built-in, docker run -d
DOCKER_SOCK = "/var/run/docker.sock"
API = "/v1.41"
DOCKER_DOWN = ("Cannot connect to the Docker daemon", "Is the docker daemon running",
               "connection refused", "No such file or directory: '/var/run/docker.sock'")


class DockerDown(RuntimeError):
    pass


def _down(text: str) -> bool:
    return any(s in text for s in DOCKER_DOWN)


# ----------------------------------------------------------------- two ways to talk to dockerd
class Cli:
    name = "cli"

    def __init__(self, image: str):
        self.d = harness.Docker()
        self.image = image

    def _run(self, *args: str) -> str:
        p = self.d.run(*args, check=False, timeout=180)
        if p.returncode != 0:
            text = (p.stderr or "") + (p.stdout or "")
            if _down(text):
                raise DockerDown(text.strip())
            raise RuntimeError(f"docker {' '.join(args)}: {text.strip()}")
        return p.stdout.strip()

    def net_create(self, name: str, driver: str, ipam: str | None, subnet: str) -> None:
        args = ["network", "create", "-d", driver]
        if ipam:
            args += ["--ipam-driver", ipam]
        self._run(*args, "--subnet", subnet, name)

    def net_rm(self, name: str) -> None:
        self._run("network", "rm", name)

    def run(self, name: str, network: str) -> None:
        self._run("run", "-d", "--name", name, "--network", network, self.image, "sleep", "600")

    def rm(self, name: str) -> None:
        self._run("rm", "-f", name)


class Api:
    """The Engine API calls the CLI makes for the same commands (no client start-up)."""
    name = "api"

    def __init__(self, image: str):
        self.image = image

    def _call(self, method: str, path: str, body=None, ok=(200, 201, 204)) -> object:
        data = json.dumps(body).encode() if body is not None else None
        hdrs = {"Content-Type": "application/json"} if data is not None else {}
        conn = harness.UnixHTTPConnection(DOCKER_SOCK, timeout=180)
        try:
            try:
                conn.request(method, API + path, body=data, headers=hdrs)
                resp = conn.getresponse()
                raw = resp.read()
            except (ConnectionRefusedError, FileNotFoundError) as e:
                raise DockerDown(str(e)) from None
        finally:
            conn.close()
        if resp.status not in ok:
            raise RuntimeError(f"{method} {path}: {resp.status} {raw.decode(errors='replace').strip()}")
        return json.loads(raw) if raw.strip() else None

    def net_create(self, name: str, driver: str, ipam: str | None, subnet: str) -> None:
        self._call("POST", "/networks/create", {
            "Name": name, "Driver": driver, "CheckDuplicate": True,
            "IPAM": {"Driver": ipam or "default", "Config": [{"Subnet": subnet}], "Options": {}},
            "Options": {}, "Labels": {}})

    def net_rm(self, name: str) -> None:
        self._call("DELETE", f"/networks/{urllib.parse.quote(name)}")

    def run(self, name: str, network: str) -> None:
        out = self._call("POST", f"/containers/create?name={urllib.parse.quote(name)}", {
            "Image": self.image, "Cmd": ["sleep", "600"],
            "HostConfig": {"NetworkMode": network}})
        self._call("POST", f"/containers/{out['Id']}/start")

    def rm(self, name: str) -> None:
        self._call("DELETE", f"/containers/{urllib.parse.quote(name)}?force=1")


# ----------------------------------------------------------------- measuring
def timed(fn, *args) -> float:
    t0 = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t0


def with_retry(sample, cleanup, attempts: int = 3):
    """``sample()`` -> timings; if dockerd went away (another engineer's tests restart it),
    wait for it, ``cleanup()`` and take the sample again."""
    for i in range(attempts):
        try:
            return sample()
        except DockerDown as e:
            print(f"  (dockerd not answering: {str(e)[:80]}; waiting and retrying)", flush=True)
            deadline = time.monotonic() + 180
            while not harness.dockerd_up() and time.monotonic() < deadline:
                time.sleep(2)
            try:
                cleanup()
            except Exception:  # noqa: BLE001
                pass
            if i == attempts - 1:
                raise


def line(label: str, pynet: list[float], peer: list[float], goal: float | None) -> str:
    pm, qm = statistics.median(pynet), statistics.median(peer)
    ratio = pm / qm
    verdict = ""
    if goal is not None:
        verdict = f"  goal <= {goal:.1f}  {'ok' if ratio <= goal else 'MISSED'}"
    return (f"{label:<34} pynet median {pm * 1e3:7.1f} ms (min {min(pynet) * 1e3:.1f}, max "
            f"{max(pynet) * 1e3:.1f})  peer median {qm * 1e3:7.1f} ms (min {min(peer) * 1e3:.1f}, "
            f"max {max(peer) * 1e3:.1f})  ratio {ratio:5.2f}  n={len(pynet)}{verdict}")


def kinds_for(plugin: str) -> list[tuple[str, str, str | None]]:
    """(label, driver, ipam driver or None for Docker's default) of the three kinds of network."""
    return [("pynet/pynet-ipam", plugin, plugin), ("pynet/docker-ipam", plugin, None),
            ("builtin-bridge", "bridge", None)]


def prepare(prefix: str, via, kinds) -> tuple[dict, dict]:
    """Subnets per kind for the create+rm samples, and one network per kind (made now, for the
    whole run) for the run/rm samples: ({label: subnet}, {label: network name})."""
    # subnets: 10.<a>.<case>.0/24, <a> from the run prefix (few tests use 10.128-191)
    a = 128 + int(prefix[2:], 16) % 64
    subnet = {k[0]: f"10.{a}.{i}.0/24" for i, k in enumerate(kinds)}
    run_net = {}
    for i, (label, drv, ipam) in enumerate(kinds):
        n = f"{prefix}-run-{label.replace('/', '-')}"
        via.net_create(n, drv, ipam, f"10.{a}.{10 + i}.0/24")
        run_net[label] = n
    return subnet, run_net


def measure(prefix: str, kinds, vias, runs: int, subnet: dict, run_net: dict, on_round=None) -> dict:
    """results[via][op][kind] -> seconds per measured round, after one warm-up round; the kinds
    take turns in every round and the order rotates; ``on_round(r)`` after every measured round."""
    docker = harness.Docker()
    res: dict = {v.name: {op: {k[0]: [] for k in kinds}
                          for op in ("create", "netrm", "create+rm", "run", "rm -f", "run+rm")}
                 for v in vias}
    seq = [0]

    def one_round(keep: bool, r: int) -> None:
        order = kinds[r % 3:] + kinds[:r % 3]
        for v in vias:
            for label, drv, ipam in order:
                seq[0] += 1
                net = f"{prefix}-n{seq[0]}"

                def sample_net():
                    t_c = timed(v.net_create, net, drv, ipam, subnet[label])
                    t_r = timed(v.net_rm, net)
                    return t_c, t_r

                def clean_net():
                    docker.run("network", "rm", net, check=False)

                t_c, t_r = with_retry(sample_net, clean_net)
                ctr = f"{prefix}-c{seq[0]}"

                def sample_run():
                    t_run = timed(v.run, ctr, run_net[label])
                    t_rm = timed(v.rm, ctr)
                    return t_run, t_rm

                def clean_run():
                    docker.run("rm", "-f", ctr, check=False)

                t_run, t_rm = with_retry(sample_run, clean_run)
                if keep:
                    d = res[v.name]
                    d["create"][label].append(t_c)
                    d["netrm"][label].append(t_r)
                    d["create+rm"][label].append(t_c + t_r)
                    d["run"][label].append(t_run)
                    d["rm -f"][label].append(t_rm)
                    d["run+rm"][label].append(t_run + t_rm)

    one_round(False, 0)
    for r in range(runs):
        one_round(True, r)
        if on_round is not None:
            on_round(r)
    return res


def start_daemon(prefix: str, state: str) -> harness.PynetDaemon:
    """The harness's PynetDaemon as plugin ``<prefix>-bench`` (own socket, state, chain prefix)."""
    plugin = f"{prefix}-bench"
    return harness.PynetDaemon(plugin, harness.PLUGIN_DIR / f"{plugin}.sock", os.path.join(state, "state"),
                               log_dir=os.path.join(state, "log")).start()


def teardown(daemon, prefix: str) -> None:
    docker = harness.Docker()
    if daemon is not None:
        try:
            harness.teardown_daemon(daemon, docker, [prefix + "-"])
        except Exception as e:  # noqa: BLE001
            print(f"teardown: {e}", file=sys.stderr)
    else:
        harness.cleanup_docker(docker, [prefix + "-"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=10, help="measured rounds (after 1 warm-up)")
    ap.add_argument("--via", choices=("cli", "api", "both"), default="both")
    args = ap.parse_args()
    if not harness.is_root():
        print("run as root (dockerd, the plugin socket, links)", file=sys.stderr)
        return 2

    lock = harness.RunLock.acquire_new()
    prefix = lock.prefix
    docker = harness.Docker()
    daemon = None
    state = tempfile.mkdtemp(prefix=f"{prefix}-bench-docker-")
    try:
        harness.ensure_dockerd()
        image = harness.ensure_test_image()
        daemon = start_daemon(prefix, state)
        kinds = kinds_for(daemon.name)
        vias = [Cli(image), Api(image)] if args.via == "both" else \
            [Cli(image) if args.via == "cli" else Api(image)]

        print(f"plugin {daemon.name} (pid {daemon.pid}), dockerd "
              f"{docker.run('version', '--format', '{{.Server.Version}}').stdout.strip()}, "
              f"{args.runs} rounds + 1 warm-up, kinds interleaved, order rotating\n", flush=True)
        subnet, run_net = prepare(prefix, vias[0], kinds)
        res = measure(prefix, kinds, vias, args.runs, subnet, run_net,
                      on_round=lambda r: print(f"  round {r + 1}/{args.runs} done", flush=True))

        goals = {"create+rm": CREATE_GOAL, "run": RUN_GOAL}
        for v in vias:
            print(f"\nvia {v.name} (peer = builtin-bridge, dockerd defaults)")
            for op in ("create+rm", "create", "netrm", "run", "rm -f", "run+rm"):
                for label in ("pynet/pynet-ipam", "pynet/docker-ipam"):
                    name = {"netrm": "network rm", "create": "network create",
                            "create+rm": "network create+rm", "run": "run -d"}.get(op, op)
                    print(line(f"{name} {label}", res[v.name][op][label],
                               res[v.name][op]["builtin-bridge"], goals.get(op)))
        print("\n(shared machine: other engineers' tests run beside this; numbers are noisy)")
        return 0
    finally:
        teardown(daemon, prefix)
        shutil.rmtree(state, ignore_errors=True)
        lock.release()


if __name__ == "__main__":
    sys.exit(main())
