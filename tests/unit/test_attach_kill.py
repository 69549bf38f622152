"""A CNI ADD killed at every step of ``attach``, then a fresh process runs DEL
(or the daemon's restore(), or GC): nothing may stay -- no address, holder,
store record, host port reservation or link.

A SIGKILL runs no undo and loses the uncommitted transaction.  The fakes
simulate it: every call into the store (and every op of a store txn), the
kernel (FakeNetlink) and the firewall is a step; at step k the "process" dies (a BaseException, so no
``except Exception`` swallows it) and every later call dies too, so the
undo callbacks that ExitStack still runs change nothing.  The store's open
transaction rolls back, as SQLite's does when its writer is killed.  The
steps are counted, not timed: k runs from 1 until an ADD completes, so every
kill point of the ADD is covered.
"""
from __future__ import annotations

import contextlib
import json
import os

import pytest

from tests.support.fakes import FakeFirewall

from pynet.cni import dispatch  # noqa: E402
from pynet.cnm import controller as controller_mod  # noqa: E402
from pynet.cnm.controller import Controller  # noqa: E402
from pynet.drivers.bridge import BridgeDriver  # noqa: E402
from pynet.ipam import Ipam  # noqa: E402
from pynet.netlink.fake import FakeKernel, FakeNetlink  # noqa: E402
from pynet.store.memory import MemoryStore  # noqa: E402
from pynet.sysctl import FakeSysctl  # noqa: E402

MAX_STEPS = 3000   # an ADD takes a few hundred; bounds the loop


class Killed(BaseException):
    """SIGKILL: not an Exception, so no error path catches it."""


class Clock:
    def __init__(self, kill_at: int):
        self.kill_at = kill_at
        self.steps = 0
        self.dead = False

    def tick(self, what: str) -> None:
        if self.dead:
            raise Killed(f"dead (after step {self.kill_at})")
        self.steps += 1
        if self.steps == self.kill_at:
            self.dead = True
            raise Killed(f"killed at step {self.kill_at}: {what}")


class Dying:
    """Proxy: each method call is a step of ``clock``.  A transaction's
    commit is a step of its own (a kill there loses the transaction);
    namespaces' netlink handles are proxied too."""

    def __init__(self, inner, clock: Clock, name: str):
        self._inner, self._clock, self._name = inner, clock, name

    def __getattr__(self, attr):
        value = getattr(self._inner, attr)
        if not callable(value):
            return value
        clock, name = self._clock, f"{self._name}.{attr}"
        if attr == "transaction":
            @contextlib.contextmanager
            def transaction():
                clock.tick(name)
                with value():
                    yield self
                    clock.tick(name + " commit")
            return transaction
        if attr == "txn":  # Store v2: every op of the txn is a step, and so is its commit
            def txn(fn, *a, **kw):
                clock.tick(name)

                def step(t):
                    out = fn(Dying(t, clock, name))
                    clock.tick(name + " commit")  # dies before the commit: the txn is lost
                    return out
                return value(step, *a, **kw)
            return txn

        def call(*a, **kw):
            clock.tick(name)
            out = value(*a, **kw)
            return Dying(out, clock, name) if isinstance(out, FakeNetlink) else out
        return call


class Host:
    """What outlives a process: the store and the kernel."""

    def __init__(self, tmp_path):
        self.kernel = FakeKernel()
        self.store = MemoryStore()
        self.tmp = tmp_path

    def netns(self, cid: str) -> str:
        """Each container its own namespace (made on first use)."""
        path = str(self.tmp / f"ns-{cid}")
        if not os.path.exists(path):
            open(path, "w").close()
            self.kernel.add_netns(path)
        return path

    def process(self, clock: Clock | None = None):
        """A fresh pynet process: its own Controller, IPAM and driver."""
        store, nl, fw = self.store, FakeNetlink(self.kernel), FakeFirewall()
        if clock is not None:
            store, nl, fw = Dying(store, clock, "store"), Dying(nl, clock, "netlink"), Dying(fw, clock, "fw")
        c = Controller(store, Ipam(store, host_routes=lambda: []),
                       {"bridge": BridgeDriver(nl, FakeSysctl(), instance="t")}, firewall=fw)
        return c, nl

    def conf(self):
        return {"cniVersion": "1.0.0", "name": "net1", "type": "pynet-bridge", "bridge": "tb0",
                "isDefaultGateway": True, "ipMasq": True,
                "ipam": {"ranges": [[{"subnet": "10.9.0.0/24"}], [{"subnet": "fd09::/64"}]]},
                "runtimeConfig": {"portMappings": [{"hostPort": 8080, "containerPort": 80}]},
                "pynet": {"stateDir": str(self.tmp / "state")}}

    def run(self, process, command, cid, ports=True):
        c, nl = process
        env = {"CNI_COMMAND": command, "CNI_CONTAINERID": cid, "CNI_IFNAME": "eth0",
               "CNI_NETNS": self.netns(cid)}
        conf = self.conf()
        if not ports:
            del conf["runtimeConfig"]
        out, code = dispatch.run("bridge", env, json.dumps(conf).encode(), controller=c,
                               netlink=nl, instance="t")
        return code, (json.loads(out) if out.strip() else None)

    def view(self) -> dict:
        """Everything that would be a leak, independent of allocation cursors."""
        ipam = Ipam(self.store, host_routes=lambda: [])
        records = {}
        for r in self.store.list(""):
            if r.key.startswith(("ipam/bits/", "ipam/full/")):
                continue                       # the bitmap: compared as allocated addresses
            v = r.value
            if r.key.startswith(("ipam/pools/", "ipam/cursors/")):
                v = {k: x for k, x in v.items() if k != "cursor"}
            records[r.key] = v
        nl = FakeNetlink(self.kernel)
        return {"records": records,
                "allocated": {p["id"]: sorted(ipam.allocated(p["id"])) for p in ipam.list_pools()},
                "host links": sorted(link.name for link in nl.list_links()),
                "pod links": sorted(f"{os.path.basename(ns)}:{link.name}"
                                    for ns in sorted(p for p in self.kernel.namespaces if p)
                                    for link in nl.for_netns(ns).list_links() if link.name != "lo")}


def _dead_maker(monkeypatch):
    """restore() and GC leave attachments alone while their process runs; the
    "killed" ADD ran in this (live) test process, so record a gone one."""
    monkeypatch.setattr(controller_mod, "process_identity",
                        lambda: {"pid": 2 ** 22 + 1, "start": "0", "boot": "gone"})


def _cleanup_del(host, process, cid):
    code, res = host.run(process, "DEL", cid)
    assert code == 0, res


def _cleanup_restore(host, process, cid):
    """The daemon starts: what a killed ADD left without an endpoint record
    goes.  An attachment with an endpoint record is one pynet knows (the
    runtime's DEL after the failed ADD removes it): DEL it, then compare."""
    c = process[0]
    c.restore()
    if [e for e in c.endpoints() if e.container_id == cid]:
        _cleanup_del(host, host.process(), cid)


def _cleanup_gc(host, process, cid):
    c, nl = process
    env = {"CNI_COMMAND": "GC", "CNI_CONTAINERID": "", "CNI_IFNAME": "", "CNI_NETNS": ""}
    conf = dict(host.conf(), cniVersion="1.1.0")
    conf["cni.dev/valid-attachments"] = [{"containerID": "warm", "ifname": "eth0"}]
    out, code = dispatch.run("bridge", env, json.dumps(conf).encode(), controller=c, netlink=nl, instance="t")
    assert code == 0, out


@pytest.mark.parametrize("cleanup", [_cleanup_del, _cleanup_restore, _cleanup_gc],
                         ids=["DEL", "restore", "GC"])
def test_add_killed_at_every_step_leaves_nothing(tmp_path, monkeypatch, cleanup):
    if cleanup is not _cleanup_del:
        _dead_maker(monkeypatch)
    host = Host(tmp_path)
    # the network exists already (a first ADD made it); one attachment stays throughout
    code, res = host.run(host.process(), "ADD", "warm", ports=False)
    assert code == 0, res
    base = host.view()
    leaks, completed = [], None
    for k in range(1, MAX_STEPS):
        clock = Clock(k)
        try:
            code, res = host.run(host.process(clock), "ADD", f"k{k}")
        except Killed:
            pass
        else:
            assert not clock.dead and code == 0, (k, res)
            completed = k
        cleanup(host, host.process(), f"k{k}")
        now = host.view()
        if now != base:
            def items(v):
                return set(map(str, v.items() if isinstance(v, dict) else v))
            diff = {kind: sorted(items(now[kind]) ^ items(base[kind]))
                    for kind in now if now[kind] != base[kind]}
            leaks.append(f"kill at step {k} ({'completed' if completed else 'killed'}): {diff}")
            base = now          # each leak once
        if completed:
            break
    assert completed, f"the ADD never completed within {MAX_STEPS} steps"
    assert not leaks, f"{len(leaks)} of {completed} kill points leak:\n" + "\n".join(leaks[:20])


def test_add_retried_after_a_kill_releases_the_first_attempt(tmp_path):
    """A runtime may retry the ADD without a DEL: the killed attempt's
    address goes back in the retry's commit, not at some later DEL."""
    host = Host(tmp_path)
    assert host.run(host.process(), "ADD", "warm", ports=False)[0] == 0
    ipam = Ipam(host.store, host_routes=lambda: [])
    pools = [p["id"] for p in ipam.list_pools()]
    before = {p: set(ipam.allocated(p)) for p in pools}
    # kill right after the commit that allocated and recorded the attachment
    for k in range(1, MAX_STEPS):
        clock = Clock(k)
        with pytest.raises(Killed):
            host.run(host.process(clock), "ADD", "again")
        if any(set(ipam.allocated(p)) - before[p] for p in pools):
            break
    code, res = host.run(host.process(), "ADD", "again")
    assert code == 0, res
    for p in pools:
        assert len(set(ipam.allocated(p)) - before[p]) == 1, (p, sorted(ipam.allocated(p)))


def test_restore_and_gc_leave_an_add_in_flight_alone(tmp_path, monkeypatch):
    """An attachment without an endpoint record whose process still runs is
    an ADD in flight (a CNI binary beside a restarting daemon): restore() and
    GC keep its addresses, record and veth; once its process is gone they go."""
    host = Host(tmp_path)
    assert host.run(host.process(), "ADD", "warm", ports=False)[0] == 0
    base = host.view()
    for k in range(1, MAX_STEPS):   # stop it where its addresses exist but no endpoint record yet
        with pytest.raises(Killed):
            host.run(host.process(Clock(k)), "ADD", "fly")
        c, _ = host.process()
        if c.attachments() and not [e for e in c.endpoints() if e.container_id == "fly"]:
            break
        host.run(host.process(), "DEL", "fly")
    # (its links come after the endpoint record that names them: none yet)
    assert c.attachments() and host.view()["host links"] == base["host links"]
    in_flight = host.view()
    c.restore()
    conf = dict(host.conf(), cniVersion="1.1.0")
    conf["cni.dev/valid-attachments"] = [{"containerID": "warm", "ifname": "eth0"}]
    env = {"CNI_COMMAND": "GC", "CNI_CONTAINERID": "", "CNI_IFNAME": "", "CNI_NETNS": ""}
    assert dispatch.run("bridge", env, json.dumps(conf).encode(), controller=c, netlink=host.process()[1],
                      instance="t")[1] == 0
    assert host.view() == in_flight
    # the same attachment, its maker gone
    for r in host.store.list("attachments/"):
        if r.value["container_id"] == "fly":
            host.store.put(r.key, dict(r.value, process=dict(r.value["process"], start="gone")))
    host.process()[0].restore()
    assert host.view() == base


@pytest.mark.parametrize("cleanup", [_cleanup_del, _cleanup_restore, _cleanup_gc],
                         ids=["DEL", "restore", "GC"])
def test_a_kill_between_the_veth_and_its_alias_leaves_no_link(tmp_path, monkeypatch, cleanup):
    """The real netlink (PyrouteNetlink.add_veth) sets the alias (IFLA_IFALIAS)
    in a second request: a SIGKILL in between leaves a pair without pynet's
    tag, which restore() and GC never take for theirs.  The endpoint record is
    written first and names the pair, so DEL, GC and restore() remove it by
    name.  Here the fake's add_veth is split the same way, with a step between."""
    if cleanup is not _cleanup_del:
        _dead_maker(monkeypatch)
    clock_now: dict = {}
    real = FakeNetlink.add_veth

    def add_veth(self, name, peer, mtu=None, peer_mac=None, alias=None, mac=None):
        real(self, name, peer, mtu=mtu, peer_mac=peer_mac, alias=None, mac=mac)
        if clock_now.get("clock") is not None:
            clock_now["clock"].tick("netlink.set_alias")
        if alias:
            self._get(name).alias = alias
    monkeypatch.setattr(FakeNetlink, "add_veth", add_veth)
    host = Host(tmp_path)
    assert host.run(host.process(), "ADD", "warm", ports=False)[0] == 0
    base = host.view()
    untagged = 0
    for k in range(1, MAX_STEPS):
        clock = clock_now["clock"] = Clock(k)
        try:
            host.run(host.process(clock), "ADD", f"k{k}", ports=False)
        except Killed:
            pass
        clock_now["clock"] = None
        new = [ln for ln in FakeNetlink(host.kernel).list_links() if ln.name not in base["host links"]]
        killed_there = any(not ln.alias for ln in new)
        cleanup(host, host.process(), f"k{k}")
        assert host.view() == base, f"kill at step {k} left {host.view()['host links']}"
        if killed_there:
            untagged += 1
            break
    assert untagged, "no kill point between the veth and its alias"


def test_add_killed_at_every_step_then_retried_without_del_succeeds(tmp_path):
    """The CNI runtime retries a failed ADD (same container ID and ifname) without a DEL in
    between: whatever step the first attempt was killed at -- its endpoint record written,
    the veth made, moved into the pod, its ports not yet programmed -- the retry finishes or
    redoes the attachment (code 0, one address per family, the interface in the pod), and
    the DEL after it leaves nothing."""
    host = Host(tmp_path)
    assert host.run(host.process(), "ADD", "warm", ports=False)[0] == 0
    base = host.view()
    ipam = Ipam(host.store, host_routes=lambda: [])
    failures, completed = [], None
    for k in range(1, MAX_STEPS):
        cid = f"r{k}"
        clock = Clock(k)
        try:
            code, res = host.run(host.process(clock), "ADD", cid)
        except Killed:
            pass
        else:
            completed = k
        code, res = host.run(host.process(), "ADD", cid)
        if code != 0:
            failures.append(f"kill at step {k}: retry failed: {res}")
        else:
            held = {p["id"]: set(ipam.allocated(p["id"])) for p in ipam.list_pools()}
            addrs = sorted(ip["address"].split("/")[0] for ip in res["ips"])
            if len(addrs) != 2 or not all(any(a in h for h in held.values()) for a in addrs):
                failures.append(f"kill at step {k}: retry answered {addrs}, held {held}")
            pod = [link.name for link in FakeNetlink(host.kernel).for_netns(host.netns(cid)).list_links()]
            if "eth0" not in pod:
                failures.append(f"kill at step {k}: no eth0 in the pod after the retry: {pod}")
        code, res = host.run(host.process(), "DEL", cid)
        assert code == 0, res
        now = host.view()
        if now != base:
            failures.append(f"kill at step {k}: left {[(x, now[x]) for x in now if now[x] != base[x]]}")
            base = now
        if completed:
            break
    assert completed, f"the ADD never completed within {MAX_STEPS} steps"
    assert not failures, f"{len(failures)} of {completed} kill points:\n" + "\n".join(failures[:15])
