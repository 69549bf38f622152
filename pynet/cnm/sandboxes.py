"""Sandboxes and their network modes, as libnetwork has them.

    netns      a namespace of its own, joined to networks (``--network NETWORK``)
    none       a namespace with only loopback (``--network none``)
    host       the host's own namespace (``--network host``); nothing is created
    container  joins an existing sandbox's namespace (``--network container:ID``):
               it sees that sandbox's interfaces and addresses; nothing is created

A :class:`SandboxManager` is built on the Controller (every network decision
stays there) and :mod:`pynet.cnm.sandbox` (the namespace side of a join).  It
keeps each sandbox under ``sandboxes/<id>`` in the controller's store.

    create(spec, publish=())      spec: "none" | "host" | "container:ID" | NETWORK
    connect(ref, network, ...)    create_endpoint + join + attach (+ ports)
    ls() / get(ref)               ``ref``: a full id or a unique prefix
    exec(ref, argv)               nsenter into the namespace (plain exec for host)
    rm(ref, force=False)          refused while container-mode sandboxes share the
                                  namespace, unless forced (which removes them too)

Impossible combinations are refused with Docker's words: a host-, container- or
none-mode sandbox connected to a network; ports published on a container-mode
sandbox (host mode discards them with a warning, as Docker does).

Addresses come from pynet's IPAM: a network created by pynet has its pool id; a
Docker network made with ``--ipam-driver pynet`` has its pool in the same IPAM
(found by subnet), so dockerd and sandboxes share one allocator.  A Docker
network on Docker's default IPAM has no pool pynet could allocate from without
racing dockerd, so connecting a sandbox to it is refused with a clear error.
"""
from __future__ import annotations

import contextlib
import logging
import os
import secrets
import subprocess
from typing import Iterable, Optional

from pynet import errors
from pynet.cnm import sandbox as nsops
from pynet.cnm.model import Endpoint, PortMapping, Sandbox

log = logging.getLogger("pynet.sandboxes")

SANDBOXES = "sandboxes/"
HOST_NETNS = "/proc/1/ns/net"
OPT_POOL = "pynet.sandbox.pool"
OPT_POOL_V6 = "pynet.sandbox.pool_v6"

ERR_SHARED = ("container sharing network namespace with another container or host cannot be "
              "connected to any other network")
ERR_NONE = ("container cannot be connected to multiple networks with one of the networks in "
            "private (none) mode")
ERR_PUBLISH = "conflicting options: port publishing and the container type network mode"


def _key(sid: str) -> str:
    return SANDBOXES + sid


class SandboxManager:
    def __init__(self, controller, netlink=None, instance: str = "pynet",
                 host_netns: Optional[str] = None, create_netns=None, delete_netns=None):
        """``netlink``: the host-side Netlink (default: the real one in this
        process's namespace); ``host_netns``: what "host" means (default: the
        init process's namespace; tests pass a throwaway one);
        ``create_netns(name) -> path`` / ``delete_netns(path)``: named
        namespaces (default: pynet.cnm.sandbox's; unit tests pass the fake
        kernel's)."""
        self.c = controller
        self.nl = netlink
        self.instance = instance
        self.host_netns = host_netns
        self._create_netns = create_netns or nsops.create_netns
        self._delete_netns = delete_netns or nsops.delete_netns

    @property
    def store(self):
        return self.c.store

    def _netlink(self):
        if self.nl is None:
            from pynet.netlink.pyroute import PyrouteNetlink
            self.nl = PyrouteNetlink()
        return self.nl

    # ---------------------------------------------------------------- lookups
    def ls(self) -> list[Sandbox]:
        return [Sandbox.from_json(r.value) for r in self.store.list(SANDBOXES)]

    def get(self, ref: str) -> Sandbox:
        if not ref:
            raise errors.InvalidParameter("sandbox ID is empty")
        rec = self.store.get(_key(ref))
        if rec is not None:
            return Sandbox.from_json(rec.value)
        matches = [s for s in self.ls() if s.id.startswith(ref)]
        if len(matches) == 1:
            return matches[0]
        if matches:
            raise errors.InvalidParameter(f"sandbox {ref!r} is ambiguous")
        raise errors.SandboxNotFound(f"sandbox {ref} not found")

    def sharers(self, sb: Sandbox) -> list[Sandbox]:
        return [s for s in self.ls() if s.shares == sb.id]

    def _save(self, sb: Sandbox) -> None:
        self.c.put_record(_key(sb.id), sb.to_json())

    def netns_name(self, sid: str) -> str:
        return f"{self.instance}-{sid[:12]}"

    # ----------------------------------------------------------------- create
    def create(self, spec: str = "none", publish: Iterable[PortMapping] = (),
               sandbox_id: Optional[str] = None, address: str = "") -> Sandbox:
        spec = (spec or "none").strip()
        publish = list(publish)
        sid = sandbox_id or secrets.token_hex(32)
        if self.store.get(_key(sid)) is not None:
            raise errors.Conflict(f"sandbox {sid} already exists")
        if spec == "host":
            if publish:
                log.warning("published ports are discarded when using host network mode")
            sb = Sandbox(id=sid, key=self.host_netns or HOST_NETNS, mode="host")
            self._save(sb)
            return sb
        if spec.startswith("container:"):
            if publish:
                raise errors.InvalidParameter(ERR_PUBLISH)
            target = self.get(spec.split(":", 1)[1])
            while target.mode == "container" and target.shares:   # join the owner
                target = self.get(target.shares)
            if target.id == sid:
                raise errors.InvalidParameter("cannot join own network namespace")
            sb = Sandbox(id=sid, key=target.key, mode="container", shares=target.id)
            self._save(sb)
            return sb
        if spec == "none" and publish:
            raise errors.InvalidParameter("conflicting options: port publishing and the none "
                                          "network mode")
        network = None
        if spec != "none":
            network = self.c.network(spec)      # NetworkNotFound before anything is made
        name = self.netns_name(sid)
        with contextlib.ExitStack() as undo:
            path = self._create_netns(name)
            undo.callback(self._delete_netns, path)
            with self._netlink().for_netns(path) as inner:
                inner.set_up("lo")
            sb = Sandbox(id=sid, key=path, mode="none" if network is None else "netns")
            self._save(sb)
            undo.callback(self.c.delete_record, _key(sid))
            if network is not None:
                self.connect(sid, network.id, publish=publish, address=address)
                sb = self.get(sid)
            undo.pop_all()
        return sb

    # ---------------------------------------------------------------- connect
    def _pool_for(self, net, v6: bool) -> str:
        datas = net.ipv6 if v6 else net.ipv4
        if not datas:
            return ""
        d = datas[0]
        if d.pool_id:
            return d.pool_id
        ipam = self.c.ipam
        if ipam is not None:
            for p in ipam.list_pools():
                if p.get("pool") == d.pool and bool(p.get("v6")) == v6:
                    return p["id"]
        if v6:
            return ""
        raise errors.InvalidParameter(
            f"network {net.name or net.id[:12]} has no pynet-owned address pool (its addresses "
            f"come from Docker's IPAM); connect sandboxes only to networks whose addresses "
            f"pynet allocates (created by pynet, or by Docker with --ipam-driver pynet)")

    def connect(self, ref: str, network: str, publish: Iterable[PortMapping] = (),
                address: str = "") -> Endpoint:
        sb = self.get(ref)
        if sb.mode in ("container", "host"):
            raise errors.InvalidParameter(ERR_SHARED)
        if sb.mode == "none":
            raise errors.InvalidParameter(ERR_NONE)
        net = self.c.network(network)
        for eid in sb.endpoints:
            if any(e.id == eid and e.network_id == net.id for e in self.c.endpoints(net.id)):
                raise errors.Conflict(f"sandbox {sb.id[:12]} is already connected to network "
                                      f"{net.name or net.id[:12]}")
        publish = list(publish)
        pool4, pool6 = self._pool_for(net, False), self._pool_for(net, True)
        eid = secrets.token_hex(32)
        ifname = f"{net.driver_state.get('dst_prefix') or 'eth'}{len(sb.endpoints)}"
        with contextlib.ExitStack() as undo:
            addr4 = addr6 = ""
            if pool4:
                addr4 = self.c.request_address(pool4, address)
                undo.callback(self.c.release_address, pool4, addr4)
            if pool6:
                addr6 = self.c.request_address(pool6)
                undo.callback(self.c.release_address, pool6, addr6)
            opts = {OPT_POOL: pool4, OPT_POOL_V6: pool6}
            ep = self.c.create_endpoint(net.id, eid, address=addr4, address_v6=addr6,
                                        options=opts, container_id=sb.id, ifname=ifname)
            undo.callback(self.c.delete_endpoint, net.id, eid)
            info = self.c.join(net.id, eid, sb.key)
            undo.callback(self.c.leave, net.id, eid)
            first = not sb.endpoints
            nsops.attach(sb.key, info.src_name, ifname, [a for a in (addr4, addr6) if a],
                         mac=ep.mac or None,
                         gateway=(info.gateway or None) if first else None,
                         gateway_v6=(info.gateway_v6 or None) if first else None,
                         routes=info.static_routes, netlink=self._netlink())
            undo.callback(nsops.detach, sb.key, ifname, self._netlink())
            if publish:
                ep = self.c.program_external_connectivity(net.id, eid, ports=publish)
            sb.endpoints.append(eid)
            self._save(sb)
            undo.pop_all()
        return ep

    # -------------------------------------------------------------------- exec
    def exec_argv(self, ref: str, argv: list[str]) -> list[str]:
        sb = self.get(ref)
        if not argv:
            raise errors.InvalidParameter("no command given")
        if sb.key == HOST_NETNS and self.host_netns is None and _same_netns(HOST_NETNS):
            return list(argv)
        return ["nsenter", f"--net={sb.key}", "--", *argv]

    def exec(self, ref: str, argv: list[str], **kw) -> subprocess.CompletedProcess:
        return subprocess.run(self.exec_argv(ref, argv), **kw)

    # ---------------------------------------------------------------------- rm
    def rm(self, ref: str, force: bool = False) -> list[str]:
        """Remove a sandbox; returns the ids removed (sharers first when forced)."""
        sb = self.get(ref)
        sharers = self.sharers(sb)
        if sharers and not force:
            raise errors.InUse(
                f"sandbox {sb.id[:12]} shares its network namespace with "
                f"{', '.join(s.id[:12] for s in sharers)}: remove them first, or force")
        removed = []
        for s in sharers:
            self.c.delete_record(_key(s.id))
            removed.append(s.id)
        self._teardown(sb)
        self.c.delete_record(_key(sb.id))
        removed.append(sb.id)
        return removed

    def _teardown(self, sb: Sandbox) -> None:
        # each step tolerates what is gone, so an interrupted rm can run again
        eps = {e.id: e for e in self.c.endpoints()}
        for eid in reversed(sb.endpoints):
            ep = eps.get(eid)
            if ep is None:
                continue
            if ep.external:
                self.c.revoke_external_connectivity(ep.network_id, eid)
            if ep.ifname and sb.mode == "netns":
                nsops.detach(sb.key, ep.ifname, netlink=self._netlink())
            self.c.leave(ep.network_id, eid)
            self.c.delete_endpoint(ep.network_id, eid)
            for pool, addr in ((ep.options.get(OPT_POOL), ep.address),
                               (ep.options.get(OPT_POOL_V6), ep.address_v6)):
                if pool and addr:
                    try:
                        self.c.release_address(pool, addr)
                    except errors.NotFound:
                        pass
        if sb.mode in ("netns", "none"):
            self._delete_netns(sb.key)


def _same_netns(path: str) -> bool:
    try:
        return os.stat(path).st_ino == os.stat("/proc/self/ns/net").st_ino
    except OSError:
        return False
