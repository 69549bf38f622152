"""The CNI entry (``pynet.cni.dispatch.run``, what the shim and the daemon's
route call) under one mutated invocation, over the fake kernel.

A case builds a fresh world (MemoryStore, real IPAM, bridge and macvlan
drivers on FakeNetlink, recording firewall), optionally makes a first valid
ADD, then runs one verb whose config or environment has ONE mutation
(``engine.mutate``).  Properties:

* the answer is CNI JSON; an error is never code 999 (an internal error), and
  its ``msg`` is one line;
* after an error the store and the fake kernel (every namespace's links with
  their addresses, masters, MTUs, and its routes) are exactly as before.

The state directory is pinned to the case's temp dir (a mutation of
``pynet.stateDir`` could otherwise create lock files anywhere).
"""
from __future__ import annotations

import copy
import json
import os
import shutil
import tempfile

from tests.fuzz.engine import Chooser, Failure, _dumps_deep, mutate, store_state
from tests.support.fakes import FakeFirewall

COMMANDS = ["ADD", "ADD", "ADD", "DEL", "CHECK", "GC", "STATUS", "VERSION"]


class World:
    def __init__(self, tmp: str):
        from pynet.cnm.controller import Controller
        from pynet.drivers.bridge import BridgeDriver
        from pynet.drivers.macvlan import MacvlanDriver
        from pynet.ipam import Ipam
        from pynet.netlink.fake import FakeKernel, FakeNetlink
        from pynet.store.memory import MemoryStore
        from pynet.sysctl import FakeSysctl

        self.tmp = tmp
        self.state = os.path.join(tmp, "state")
        self.kernel = FakeKernel()
        self.nl = FakeNetlink(self.kernel)
        self.store = MemoryStore()
        self.fw = FakeFirewall()
        self.c = Controller(self.store, Ipam(self.store, host_routes=lambda: []),
                            {"bridge": BridgeDriver(self.nl, FakeSysctl(), instance="t"),
                             "macvlan": MacvlanDriver(self.nl, FakeSysctl(), instance="t")},
                            firewall=self.fw)

    def netns(self, name: str) -> str:
        path = os.path.join(self.tmp, name)
        open(path, "w").close()
        self.kernel.add_netns(path)
        return path

    def run(self, plugin: str, env: dict, stdin: bytes) -> tuple[str, int]:
        from pynet.cni import dispatch as cni
        return cni.run(plugin, env, stdin, controller=self.c, netlink=self.nl, instance="t")

    def snapshot(self):
        kernel = []
        for path, ns in sorted(self.kernel.namespaces.items(), key=lambda kv: str(kv[0])):
            # lo brought up in the container's namespace is not undone (harmless:
            # the runtime's loopback plugin does the same)
            links = sorted((n, l.kind, l.up or n == "lo", l.mtu, l.mac, l.alias, l.master.name if l.master else "",
                            tuple(sorted(map(str, l.addresses))))
                           for n, l in ns.links.items())
            routes = sorted((r.dst, r.gateway, r.link.name if r.link else "", r.family) for r in ns.routes)
            kernel.append((str(path), links, routes))
        return store_state(self.store), kernel, list(self.fw.published)


def base_conf(plugin: str, state: str, version: str) -> dict:
    pyn = {"stateDir": state, "daemon": False}
    if plugin == "bridge":
        return {"cniVersion": version, "name": "net1", "type": "pynet-bridge", "bridge": "tb0",
                "isGateway": True, "isDefaultGateway": True, "ipMasq": True, "mtu": 1500,
                "hairpinMode": True, "macspoofchk": True,
                "ipam": {"type": "pynet-ipam", "ranges": [[{"subnet": "10.9.0.0/24", "gateway": "10.9.0.1"}],
                                                          [{"subnet": "fd09::/64"}]],
                         "routes": [{"dst": "0.0.0.0/0"}, {"dst": "10.99.0.0/16", "gw": "10.9.0.1"}]},
                "dns": {"nameservers": ["10.9.0.1"], "search": ["example"]},
                "capabilities": {"portMappings": True, "ips": True, "mac": True},
                "runtimeConfig": {"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp",
                                                    "hostIP": "127.0.0.1"}],
                                  "ips": ["10.9.0.7/24"], "mac": "02:00:00:00:00:07"},
                "pynet": pyn}
    if plugin == "macvlan":
        return {"cniVersion": version, "name": "mv1", "type": "pynet-macvlan", "mode": "bridge", "mtu": 1500,
                "ipam": {"type": "pynet-ipam", "ranges": [[{"subnet": "10.8.0.0/24"}]]}, "pynet": pyn}
    return {"cniVersion": version, "name": "ipnet", "type": "bridge",
            "ipam": {"type": "pynet-ipam", "ranges": [[{"subnet": "10.7.0.0/24"}]],
                     "routes": [{"dst": "0.0.0.0/0"}]}, "pynet": pyn}


class CniTarget:
    name = "cni"

    def case(self, ch: Chooser) -> str:
        tmp = tempfile.mkdtemp(prefix="pynet-fuzz-cni-")
        try:
            return self._case(ch, tmp)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _case(self, ch: Chooser, tmp: str) -> str:
        w = World(tmp)
        plugin = ch.choice(["bridge", "bridge", "macvlan", "ipam"], "plugin")
        command = ch.choice(COMMANDS, "command")
        version = ch.choice(["1.1.0", "1.0.0", "0.4.0", "0.3.1"], "version")
        conf = base_conf(plugin, w.state, version)
        ns = w.netns("ns1")
        env = {"CNI_COMMAND": command, "CNI_CONTAINERID": "c1", "CNI_IFNAME": "eth0", "CNI_NETNS": ns,
               "CNI_PATH": "/opt/cni/bin", "CNI_ARGS": "IgnoreUnknown=1", "PYNET_STATE_DIR": w.state}
        first = ch.choice([True, False], "first-add") or command in ("CHECK",)
        prev = None
        if first:
            out, code = w.run(plugin, dict(env, CNI_COMMAND="ADD"), json.dumps(conf).encode())
            if code != 0:
                raise Failure("baseline", f"{plugin} ADD of the base config failed: {out.strip()[:300]}")
            prev = json.loads(out)
            if command == "ADD":
                env["CNI_CONTAINERID"] = "c2"
                env["CNI_NETNS"] = w.netns("ns2")
        if command == "CHECK" and prev is not None:
            conf["prevResult"] = prev
        if command == "GC":
            conf["cni.dev/valid-attachments"] = [{"containerID": "c1", "ifname": "eth0"}]
        if plugin == "bridge" and command in ("DEL", "CHECK", "GC", "STATUS") and ch.choice([True, False], "rc"):
            conf.pop("runtimeConfig", None)
        target = ch.choice(["conf", "conf", "conf", "env"], "target")
        if target == "conf":
            mutated, body, how = mutate(conf, ch)
            if isinstance(mutated, dict):
                # pin the state dir (see the module docstring), keep the mutation otherwise
                if not isinstance(mutated.get("pynet"), dict) or mutated["pynet"].get("stateDir") != w.state:
                    mutated["pynet"] = {"stateDir": w.state, "daemon": False}
                ipam = mutated.get("ipam")
                if isinstance(ipam, dict) and "pynet" in ipam:
                    ipam["pynet"] = {"stateDir": w.state}
                try:
                    body = json.dumps(mutated).encode()
                except (RecursionError, ValueError):
                    body = _dumps_deep(mutated)
            run_env = env
        else:
            mutated, _, how = mutate(env, ch)
            run_env = mutated if isinstance(mutated, dict) else {}
            run_env["PYNET_STATE_DIR"] = w.state
            body = json.dumps(conf).encode()
            how = "env " + how
        where = f"{plugin} {command} {version} ({'after an ADD' if first else 'fresh'}): {how}"
        before = w.snapshot()
        out, code = w.run(plugin, run_env, body)
        if code == 0:
            if out.strip():
                try:
                    json.loads(out)
                except ValueError:
                    raise Failure("bad-output", f"{where} -> {out[:200]!r}") from None
            return f"{where} -> 0"
        try:
            err = json.loads(out)
        except ValueError:
            raise Failure("bad-output", f"{where} -> {out[:200]!r}") from None
        if not isinstance(err, dict) or not isinstance(err.get("code"), int) or not isinstance(err.get("msg"), str):
            raise Failure("bad-output", f"{where} -> {out[:200]!r}")
        if err["code"] == 999:
            raise Failure("code-999", f"{where} -> {err['msg'][:240]}")
        if "\n" in err["msg"]:
            raise Failure("msg-lines", f"{where} -> {err['msg'][:240]!r}")
        after = w.snapshot()
        if after[0] != before[0]:
            raise Failure("store-changed", f"{where} -> code {err['code']}: {err['msg'][:200]}")
        if after[1:] != before[1:]:
            raise Failure("kernel-changed", f"{where} -> code {err['code']}: {err['msg'][:200]}")
        return f"{where} -> {err['code']}"
