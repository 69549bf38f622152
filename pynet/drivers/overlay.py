"""The overlay driver: one network across hosts, VXLAN on the cluster store, in CNM order.

    allocate network -> (once per network, cluster-wide) the VNI: the lowest
                        free one of the range (from 4096, as Docker) claimed by a
                        create-only ``vni/<n>`` key, and ``networks/<id>`` (VNI,
                        port, subnets, MTU) in the same transaction; a second
                        host's allocation of the same network joins it when the
                        settings agree, and is refused with the differences
                        when they do not
    create network   -> per host: a Linux bridge with the gateway address (as the
                        bridge driver), and a VXLAN device on it (``nolearning``:
                        the forwarding database holds only what pynet programs;
                        ``proxy``: ARP and ND are answered from the neighbour
                        table on this host, so no inner ARP reaches the
                        underlay), UDP 4789 unless configured, MTU = underlay MTU
                        - 50 unless the MTU option says otherwise; the host is
                        recorded as a member (``members/<id>/<host>``)
    create endpoint  -> the bridge driver's veth (MAC 02:42 + the IPv4 address,
                        Docker's derivation) and ``endpoints/<id>/<ep>`` {host,
                        ip, mac}: the peers' agents program their FDB and
                        neighbour entries from it
    join / leave     -> the bridge driver's
    delete endpoint  -> the veth, then the cluster record (the peers drop it)
    delete network   -> the devices, the membership; the last member frees the
                        network and its VNI
    restore          -> the bridge driver's, the VXLAN devices, this instance's
                        orphans (tagged ``pynet-overlay:<instance>:<id>``), the
                        endpoint records re-announced

The FDB and neighbour entries are programmed by the host agent's control loop
(:mod:`pynet.cluster.agent`) through :meth:`OverlayDriver.program_peers`, never
in the CNI process: a CNI ADD records its endpoint and returns.

Where the bridge and VXLAN device live -- the host namespace, not a namespace
per network as Docker's overlay does.  Docker needs its per-network namespace
because it lets overlays overlap each other and gives containers external
reach through a second interface (docker_gwbridge).  pynet refuses
overlapping subnets among all its networks (local and cluster-wide) anyway,
and the issue asks for external reach "in the same chain layout as the bridge
networks": with the bridge in the host namespace the overlay's bridge IS a
bridge network to the firewall -- the gateway address on it, masquerade
through the local host, published ports by DNAT on the host where the
container runs, isolation from every other network by the same rules -- with
no second interface in the container and no veth between namespaces on the
path (the kernel's VXLAN is already the throughput limit).  The cost: every
host's bridge carries the same gateway address, so the host itself reaches
only its own containers on the overlay (replies to it from another host's
containers end at that host's gateway).

Options (``docker network create -o`` / ``net.options``):
    pynet.overlay.vni          the VNI (default: allocated from the range)
    pynet.overlay.vxlan_port   the UDP port (default --vxlan-port, 4789)
    com.docker.network.driver.mtu   the containers' MTU (default underlay MTU - 50)
and the bridge driver's ``com.docker.network.bridge.*`` options.

Naming (15 bytes): bridge ``ob-`` + 12 chars of the network id, VXLAN device
``ox-`` + 12, veths as the bridge driver's.

What the driver remembers (``net.driver_state``): the bridge driver's keys and
vxlan, vni, port, local (the VTEP address), dev (the underlay interface).
"""
from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import logging
import re
from typing import Optional

from pynet import errors
from pynet.cluster import NoClusterStore, peers
from pynet.cnm.driver import GLOBAL, CniNetConf, Remember
from pynet.cnm.model import Endpoint, Network
from pynet.drivers.bridge import OPT_NAME, BridgeDriver, _short, parse_options as bridge_options
from pynet.drivers.options import OVERLAY_ALIAS_PREFIX, parse_alias

log = logging.getLogger("pynet.drivers.overlay")

OPT_VNI = "pynet.overlay.vni"
OPT_PORT = "pynet.overlay.vxlan_port"
# the cluster-wide network this host's network is part of (default: its name, else its ID)
OPT_CLUSTER_NETWORK = "pynet.overlay.network"
OVERLAY_OPTION_PREFIX = "pynet.overlay."
KNOWN_OPTIONS = {OPT_VNI, OPT_PORT, OPT_CLUSTER_NETWORK}
CLUSTER_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
# The overlay's own tag: the bridge driver's restore removes bridges and veths
# tagged ``pynet:<instance>:`` that none of ITS networks explain, and must not
# take an overlay's for those.
ALIAS_PREFIX = OVERLAY_ALIAS_PREFIX
VXLAN_OVERHEAD = 50          # outer IPv4 + UDP + VXLAN + inner Ethernet
OWN_KINDS = ("bridge", "veth", "vxlan")


def bridge_name(network_id: str) -> str:
    return "ob-" + _short(network_id, 12)


def vxlan_name(network_id: str) -> str:
    return "ox-" + _short(network_id, 12)


def pool_name(subnet: str) -> str:
    """The block-IPAM pool of a subnet: a key component (no '/')."""
    return subnet.replace("/", "-")


def _int_option(opts: dict, key: str, lo: int, hi: int) -> Optional[int]:
    value = opts.get(key)
    if value in (None, ""):
        return None
    try:
        v = int(str(value).strip())
    except ValueError:
        raise errors.InvalidOption(f"invalid {key} {value!r}: not a number") from None
    if not lo <= v <= hi:
        raise errors.InvalidOption(f"invalid {key} {v}: must be {lo}..{hi}")
    return v


def parse_options(net: Network, default_port: int = 4789) -> dict:
    """The bridge driver's configuration plus the overlay's; one readable
    InvalidOption line for anything wrong."""
    opts = net.options or {}
    for key in opts:
        if key.startswith(OVERLAY_OPTION_PREFIX) and key not in KNOWN_OPTIONS:
            raise errors.InvalidOption(f"unknown overlay option {key}")
    cfg = bridge_options(net)
    if not opts.get(OPT_NAME):
        cfg["bridge"] = bridge_name(net.id)
    cfg["vxlan"] = vxlan_name(net.id)
    cfg["vni"] = _int_option(opts, OPT_VNI, 1, 0xFFFFFF)
    cfg["port"] = _int_option(opts, OPT_PORT, 1, 65535) or default_port
    cfg["cluster"] = cluster_network(net)
    return cfg


def cluster_network(net: Network) -> str:
    """The cluster-wide network's key: ``-o pynet.overlay.network=NAME``, else the network's
    name (a CNI conflist's ``name``), else its ID.  Each dockerd makes its own network ID and
    never tells a plugin the name, so Docker hosts joining one overlay name it with the option;
    a pod's conflist of that name joins the same network."""
    value = (net.options or {}).get(OPT_CLUSTER_NETWORK) or net.name or net.id
    if not isinstance(value, str) or not CLUSTER_NAME_RE.fullmatch(value):
        raise errors.InvalidOption(f"invalid {OPT_CLUSTER_NETWORK} {value!r}: want 1-128 letters, digits, "
                                   "'_', '.' or '-', starting with a letter or digit")
    return value


def _label(net: Network) -> str:
    """How a refusal names the network: by the name people gave it (the conflist's, or the
    cluster network's option on Docker, which never tells a plugin the name), else its ID."""
    opt = (net.options or {}).get(OPT_CLUSTER_NETWORK)
    return net.name or (opt if isinstance(opt, str) and CLUSTER_NAME_RE.fullmatch(opt) else "") or net.id[:12]


def _subnets(net: Network) -> list[str]:
    return sorted(str(ipaddress.ip_network(d.pool, strict=False)) for d in net.ipv4 + net.ipv6)


class OverlayDriver(BridgeDriver):
    name = "overlay"
    scope = GLOBAL
    # CNI GC (pynet.cnm.attach.gc) lists the links under this tag for orphan_links (the
    # bridge driver's: veths on the network's bridge that no record explains)
    alias_prefix = ALIAS_PREFIX

    def __init__(self, netlink, sysctl, instance: str, cluster=None, is_local=None):
        super().__init__(netlink, sysctl, instance, is_local=is_local)
        self.cluster = cluster
        # VXLAN device -> (fdb, neigh) as this process programmed them last
        # (the agent's event passes compare with it; None = read the kernel)
        self._programmed: dict = {}
        self._block_ipam_obj = None
        self._pools_known: set = set()      # block-IPAM pools this process made or joined

    def _tag(self, object_id: str) -> str:
        return f"{ALIAS_PREFIX}:{self.instance}:{object_id}"

    def _owner(self, alias: str):
        return parse_alias(alias, (ALIAS_PREFIX,))

    def _cluster(self, net: Network):
        if self.cluster is None:
            raise NoClusterStore(
                f"overlay network {_label(net)} needs a cluster store: start pynet with "
                f"--cluster-store etcd://HOST:PORT[,HOST:PORT...] (or PYNET_CLUSTER_STORE, or the "
                f"conflist's pynet.clusterStore)")
        return self.cluster

    def _default_port(self) -> int:
        return self.cluster.vxlan_port if self.cluster is not None else 4789

    def _state(self, net: Network) -> dict:
        if net.driver_state.get("vxlan"):
            return net.driver_state
        cfg = parse_options(net, self._default_port())
        cfg["created"] = True
        return cfg

    def cluster_id(self, net: Network) -> str:
        """The key of ``net``'s cluster-wide network, as it was created (kept in the driver
        state: a Docker network named later keeps the key it was created with)."""
        return (net.driver_state or {}).get("cluster") or cluster_network(net)

    # ===================================================== allocate network
    def allocate_network(self, net: Network) -> dict:
        """The cluster-wide network and its VNI, once per network (any host's
        first create); returns the options every host creates it with."""
        cfg = parse_options(net, self._default_port())
        self._cluster(net).address        # a VTEP address that is not ours: refused before any record
        if not net.name and not (net.options or {}).get(OPT_CLUSTER_NETWORK):
            # the controller allocates from the ID and options alone: without the name the
            # cluster key is not known yet, so create_network (which has it) allocates
            return {}
        return self._allocate(net, cfg)

    def _allocate(self, net: Network, cfg: dict) -> dict:
        rec = self._ensure_cluster_network(net, cfg)
        return {OPT_VNI: str(rec["vni"]), OPT_PORT: str(rec["port"])}

    def _ensure_cluster_network(self, net: Network, cfg: dict) -> dict:
        c = self._cluster(net)
        want = {"vni": cfg["vni"], "port": cfg["port"], "subnets": _subnets(net),
                "mtu": cfg["mtu"]}
        lo, hi = c.vni_range
        cid = cfg["cluster"]

        def step(t):
            key = c.key("networks", cid)
            rec = t.get(key)
            if rec is not None:
                have = rec.value or {}
                diffs = [f"{k} {have.get(k)} (here: {want[k]})" for k in ("vni", "port", "subnets", "mtu")
                         if want[k] not in (None, []) and have.get(k) != want[k]]
                if diffs:
                    raise errors.Conflict(f"overlay network {_label(net)} exists in the cluster "
                                          f"with other settings: {', '.join(diffs)}")
                return have
            mine = [ipaddress.ip_network(s) for s in want["subnets"]]
            for other in t.list(c.prefix("networks")):
                for s in (other.value or {}).get("subnets", []):
                    theirs = ipaddress.ip_network(s)
                    for m in mine:
                        if m.version == theirs.version and m.overlaps(theirs):
                            name = (other.value or {}).get("name") or other.key.rsplit("/", 1)[1][:12]
                            raise errors.PoolOverlap(f"subnet {m} overlaps subnet {theirs} of cluster "
                                                     f"network {name}")
            taken = {int(r.key.rsplit("/", 1)[1]): (r.value or {}).get("network")
                     for r in t.list(c.prefix("vni"))}
            vni = want["vni"]
            if vni is not None:
                if vni in taken and taken[vni] != cid:
                    raise errors.Conflict(f"VNI {vni} is already taken by cluster network {taken[vni][:12]}")
            else:
                vni = next((n for n in range(lo, hi + 1) if n not in taken), None)
                if vni is None:
                    raise errors.Exhausted(f"no free VNI left in {lo}-{hi}")
            value = dict(want, vni=vni, name=cid)
            if vni not in taken:
                t.create(c.key("vni", vni), {"network": cid})
            t.create(key, value)
            return value

        rec = c.store.txn(step)
        return rec

    def free_network(self, net: Network) -> None:
        """The cluster-wide network goes when no host is a member any more."""
        if self.cluster is not None:
            self._free_if_unused(self.cluster_id(net))

    def _free_if_unused(self, network_id: str) -> bool:
        c = self.cluster

        def step(t):
            if t.list(c.prefix("members", network_id)):
                return None
            rec = t.get(c.key("networks", network_id))
            if rec is None:
                return None
            vni = (rec.value or {}).get("vni")
            t.delete(c.key("networks", network_id))
            if vni is not None:
                claim = t.get(c.key("vni", vni))
                if claim is not None and (claim.value or {}).get("network") == network_id:
                    t.delete(c.key("vni", vni))
            t.delete_prefix(c.prefix("endpoints", network_id))
            subnets = (rec.value or {}).get("subnets", [])
            for subnet in subnets:      # the block IPAM's pools (with the network: one commit)
                t.delete_prefix(c.prefix("ipam", pool_name(subnet)))
            return subnets

        freed = c.store.txn(step)
        if freed is not None:
            subnets = set(map(pool_name, freed))
            self._pools_known -= subnets
            if self._block_ipam_obj is not None:
                for pool in subnets:
                    self._block_ipam_obj.forget(pool)
            log.info("network %s: last member gone, cluster network and its VNI freed", network_id[:12])
        return freed is not None

    # ======================================================== create network
    def validate_network(self, net: Network, others: list[Network]) -> None:
        self._cluster(net)
        cfg = parse_options(net, self._default_port())
        super().validate_network(net, others)
        if self.nl.link_exists(cfg["vxlan"]):
            owner = self._owner(self.nl.get_link(cfg["vxlan"]).alias)
            if owner != (self.instance, net.id):
                raise errors.Conflict(f"interface {cfg['vxlan']} already exists and is not network "
                                      f"{net.id[:12]}'s")

    def _underlay(self, address: str) -> tuple[str, int]:
        """(interface, MTU) holding the VTEP address."""
        for link in self.nl.list_links():
            if any(a.split("/")[0] == address for a in link.addresses):
                return link.name, link.mtu
        raise errors.InvalidParameter(f"advertise address {address} is on no interface of this host")

    def create_network(self, net: Network) -> dict:
        c = self._cluster(net)
        cfg = parse_options(net, self._default_port())
        if cfg["vni"] is None:       # a record made without allocate_network, or before the name
            alloc = self._allocate(net, cfg)
            cfg["vni"] = int(alloc[OPT_VNI])
            net.options = {**alloc, **(net.options or {})}   # shown as an allocated network's are
        # the allocation may be cached by this host from an earlier life of the
        # network: the cluster record must exist with this VNI
        self._ensure_cluster_network(net, cfg)
        cfg["local"] = c.address
        cfg["dev"], underlay_mtu = self._underlay(cfg["local"])
        if cfg["mtu"] is None:
            cfg["mtu"] = underlay_mtu - VXLAN_OVERHEAD
        cfg["created"] = True
        with contextlib.ExitStack() as undo:
            # a failure below frees the cluster network again unless a host uses it
            undo.callback(self._free_quietly, cfg["cluster"])
            undo.callback(self.nl.delete_link, cfg["bridge"], True)
            self._setup_bridge(net, cfg, tag=True)
            undo.callback(self.nl.delete_link, cfg["vxlan"], True)
            self._setup_vxlan(net, cfg)
            c.store.put(c.key("members", cfg["cluster"], c.host), {"address": cfg["local"]})
            net.driver_state = cfg
            undo.pop_all()
        log.info("network %s: overlay VNI %s, bridge %s, %s on %s (MTU %s)", net.id[:12], cfg["vni"],
                 cfg["bridge"], cfg["vxlan"], cfg["dev"], cfg["mtu"])
        return cfg

    def _free_quietly(self, network_id: str) -> None:
        try:
            self._free_if_unused(network_id)
        except errors.PynetError as e:
            log.warning("network %s: cluster record left after a failed create: %s", network_id[:12], e)

    def _setup_vxlan(self, net: Network, cfg: dict) -> None:
        """Idempotent: restore runs it on a device that may be missing."""
        name = cfg["vxlan"]
        if self.nl.link_exists(name):
            info = self.nl.vxlan_info(name)
            if (info["vni"], info["port"], info["local"]) != (cfg["vni"], cfg["port"], cfg["local"]):
                log.info("network %s: %s has other settings, made again", net.id[:12], name)
                self.nl.delete_link(name, missing_ok=True)
        if not self.nl.link_exists(name):
            self.nl.add_vxlan(name, cfg["vni"], port=cfg["port"], local=cfg["local"], dev=cfg.get("dev"),
                              learning=False, proxy=True, mtu=cfg["mtu"], alias=self._tag(net.id))
        self.nl.set_master(name, cfg["bridge"])
        self.nl.set_up(name)

    # ======================================================= create endpoint
    def create_endpoint(self, net: Network, ep: Endpoint):
        c = self._cluster(net)
        planned = None
        if not ep.driver_state.get("host_veth"):   # the MAC is the plan's: announce needs it
            planned = self.plan_endpoint(net, ep)
            ep = dataclasses.replace(ep, **planned)
        # announced first, the veth made after: peers program their FDB entry
        # while this host plumbs (the record alone was the last ~2/3 of the
        # create-to-remote-FDB latency); an entry for a MAC not yet behind
        # our VTEP only drops frames nobody can send yet.  A failed veth
        # withdraws the record, and the peers' next pass removes the entry.
        self._announce_endpoint(c, net, ep)
        try:
            super().create_endpoint(net, ep)
        except BaseException:
            try:
                c.store.delete(c.key("endpoints", self.cluster_id(net), ep.id))
            except errors.PynetError as e:
                log.error("endpoint %s: withdrawing its cluster record: %s", ep.id[:12], e)
            raise
        return planned

    def _announce_endpoint(self, c, net: Network, ep: Endpoint) -> None:
        c.store.put(c.key("endpoints", self.cluster_id(net), ep.id),
                    {"host": c.host, "ip": ep.ip, "ip6": ep.ip6, "mac": ep.mac})

    # ================================================ cluster-wide addresses
    # An overlay's addresses must be unique across hosts, and every host's
    # IPAM holds only its own: the address is picked from the cluster's block
    # IPAM (pynet.ipam.blocks: this host's /26 blocks, one commit each, the
    # handle written with its bit) and then requested by name from the local
    # IPAM, which keeps its bookkeeping.  One pool per subnet (subnets are
    # unique among the cluster's networks), named by the subnet with "-" for
    # "/", under the cluster root's ``ipam/``; it goes with the network.
    def _blocks(self):
        """This host's BlockIpam (one per driver: it remembers its own blocks)."""
        c = self.cluster
        if self._block_ipam_obj is None or self._block_ipam_obj.store is not c.store:
            from pynet.ipam.blocks import BlockIpam

            self._block_ipam_obj = BlockIpam(c.store, c.host, prefix=c.prefix("ipam"))
        return self._block_ipam_obj

    def _pool_of(self, net: Network, family: int):
        """(pool name, subnet, gateway) of the network's first subnet of ``family``, or None."""
        datas = net.ipv4 if family == 4 else net.ipv6
        if not datas or self.cluster is None:
            return None
        d = datas[0]
        subnet = str(ipaddress.ip_network(d.pool, strict=False))
        return pool_name(subnet), subnet, (d.gateway or "").split("/")[0]

    def _ensure_pool(self, ipam, pool: str, subnet: str, gateway: str) -> None:
        # create-only; a host joining with another gateway gets PoolMismatch (one line)
        ipam.create_pool(pool, subnet, gateway=gateway or False)
        self._pools_known.add(pool)

    def pick_address(self, net: Network, endpoint_id: str, family: int, want: str = "") -> str:
        """An address for a new endpoint, unique in the cluster ("" when the
        network has no subnet of that family); ``want``: that one, refused
        (AddressInUse) when another endpoint in the cluster has it.
        Idempotent per endpoint (the handle)."""
        got = self._pool_of(net, family)
        if got is None:
            return want
        pool, subnet, gateway = got
        ipam = self._blocks()
        handle = f"{self.cluster_id(net)}:{endpoint_id}"
        if pool not in self._pools_known:
            self._ensure_pool(ipam, pool, subnet, gateway)
        try:
            cidr = ipam.allocate(pool, handle, address=want or None)
        except errors.PoolNotFound:       # freed by another host's last delete and made again
            self._ensure_pool(ipam, pool, subnet, gateway)
            cidr = ipam.allocate(pool, handle, address=want or None)
        return cidr.split("/")[0]

    def unpick_address(self, net: Network, endpoint_id: str) -> None:
        for family in (4, 6):
            got = self._pool_of(net, family)
            if got is not None:
                self._blocks().release(got[0], f"{self.cluster_id(net)}:{endpoint_id}")

    # ============================================ Docker's IPAM path (RequestAddress)
    # dockerd asks IpamDriver.RequestAddress (a pool ID, no endpoint) before CreateEndpoint;
    # for an overlay's pool the controller asks this driver first (``pool_address``): the
    # address comes from the block IPAM under a handle of its own, then the local IPAM records
    # it as for any explicit address.  ReleaseAddress gives it back by address.
    def _network_of_pool(self, controller, pool_id: str):
        """(network, family) of this driver whose subnet is IPAM pool ``pool_id``, or (None, 0)."""
        from pynet.ipam import LOCAL_DEFAULT

        for net in controller.networks():
            if net.driver != self.name:
                continue
            for fam, datas in ((4, net.ipv4), (6, net.ipv6)):
                if datas:
                    d = datas[0]
                    pid = d.pool_id or \
                        f"{d.address_space or LOCAL_DEFAULT}/{ipaddress.ip_network(d.pool, strict=False)}"
                    if pid == pool_id:
                        return net, fam
        return None, 0

    def pool_address(self, controller, pool_id: str, address: str = "", options=None) -> str:
        """The cluster-wide address for a RequestAddress on an overlay's pool ("" when the pool
        is no overlay's, or for the gateway: every host's bridge holds it, reserved in the
        block IPAM from the pool's creation)."""
        from pynet.ipam.pools import GATEWAY_TYPE, REQUEST_ADDRESS_TYPE

        if self.cluster is None or (options or {}).get(REQUEST_ADDRESS_TYPE) == GATEWAY_TYPE:
            return ""
        net, fam = self._network_of_pool(controller, pool_id)
        if net is None:
            return ""
        import uuid

        want = (address or "").split("/")[0]
        return self.pick_address(net, f"docker-{uuid.uuid4().hex}", fam, want)

    def release_pool_address(self, controller, pool_id: str, address: str) -> None:
        """ReleaseAddress on an overlay's pool: the block IPAM's handle of that address (this
        host's Docker one) goes too."""
        net, fam = self._network_of_pool(controller, pool_id)
        got = self._pool_of(net, fam) if net is not None else None
        if got is None:
            return
        bare = address.split("/")[0]
        prefix = f"{self.cluster_id(net)}:docker-"
        ipam = self._blocks()
        for handle, h in ipam.handles(got[0]).items():
            if handle.startswith(prefix) and h.get("host") == self.cluster.host \
                    and h.get("cidr", "").split("/")[0] == bare:
                ipam.release(got[0], handle)

    def reclaim_addresses(self, controller) -> list[str]:
        """Daemon start (``Controller.restore``): the cluster-wide addresses this host took for
        dockerd's RequestAddress that its local IPAM never recorded -- the daemon died between
        the block allocation and the local record -- go back to the pool.  Only this host's
        ``docker-`` handles: dockerd asks only through this daemon, which serves nothing yet,
        so none is in flight (a CNI ADD's handle is named by its endpoint and its DEL frees it).
        Returns the addresses reclaimed."""
        c = self.cluster
        if c is None or getattr(controller, "ipam", None) is None:
            return []
        from pynet.ipam import LOCAL_DEFAULT

        out = []
        ipam = self._blocks()
        for net in controller.networks():
            if net.driver != self.name:
                continue
            prefix = f"{self.cluster_id(net)}:docker-"
            for fam, datas in ((4, net.ipv4), (6, net.ipv6)):
                got = self._pool_of(net, fam)
                if got is None:
                    continue
                d = datas[0]
                pid = d.pool_id or f"{d.address_space or LOCAL_DEFAULT}/{got[1]}"
                try:
                    local = set(controller.ipam.allocated(pid))
                    theirs = ipam.handles(got[0])
                except errors.NotFound:
                    continue
                for handle, h in theirs.items():
                    bare = h.get("cidr", "").split("/")[0]
                    if handle.startswith(prefix) and h.get("host") == c.host and bare not in local:
                        if ipam.release(got[0], handle):
                            log.info("network %s: address %s taken for dockerd but never recorded here: "
                                     "reclaimed", net.id[:12], bare)
                            out.append(bare)
        return out

    # ====================================================== delete endpoint
    def delete_endpoint(self, net: Network, ep: Endpoint) -> None:
        super().delete_endpoint(net, ep)
        if self.cluster is not None:
            # a transient failure here fails the DEL (the local record stays):
            # the runtime retries, and peers must not keep a stale entry
            self.cluster.store.delete(self.cluster.key("endpoints", self.cluster_id(net), ep.id))
            self.unpick_address(net, ep.id)

    def forget_endpoint(self, net: Network, endpoint_id: str) -> list[str]:
        links = super().forget_endpoint(net, endpoint_id)
        if self.cluster is not None:
            try:
                self.cluster.store.delete(self.cluster.key("endpoints", self.cluster_id(net), endpoint_id))
                self.unpick_address(net, endpoint_id)
            except errors.StoreUnavailable as e:
                log.warning("endpoint %s: cluster record left: %s", endpoint_id[:12], e)
        return links

    # ======================================================= delete network
    def delete_network(self, net: Network) -> None:
        st = self._state(net)
        self.nl.delete_link(st["vxlan"], missing_ok=True)
        super().delete_network(net)
        c = self.cluster
        if c is None:
            return
        cid = self.cluster_id(net)
        c.store.delete(c.key("vteps", cid, c.host))
        c.store.delete(c.key("members", cid, c.host))
        self._free_if_unused(cid)

    # ============================================================== restore
    def restore(self, networks: list[Network], endpoints: list[Endpoint], keep=()) -> Remember:
        known = {n.id for n in networks} | {e.id for e in endpoints} | set(keep)
        for link in self.nl.list_links(alias_prefix=f"{ALIAS_PREFIX}:{self.instance}:"):
            owner = self._owner(link.alias)
            if owner and owner[1] not in known and link.kind in OWN_KINDS:
                log.info("restore: removing orphan %s %s", link.kind, link.name)
                self.nl.delete_link(link.name, missing_ok=True)
        remember = super().restore(networks, endpoints, keep)
        c = self.cluster
        for net in networks:
            st = self._state(net)
            try:
                self._setup_vxlan(net, st)
                if c is not None:
                    c.store.put(c.key("members", self.cluster_id(net), c.host), {"address": st.get("local", "")})
            except errors.PynetError as e:
                log.error("restore: network %s: %s", net.id[:12], e)
        if c is not None:
            nets = {n.id: n for n in networks}
            for ep in endpoints:
                if ep.network_id in nets:
                    try:
                        self._announce_endpoint(c, nets[ep.network_id], ep)
                    except errors.PynetError as e:
                        log.error("restore: endpoint %s: %s", ep.id[:12], e)
        return remember

    # ====================================================== the agent's pass
    def agent_pass(self, networks: list, view: dict, dirty) -> None:
        """One pass of the host agent (``pynet.cluster.agent``, ``dirty``: the cluster networks
        an event touched, None for a full pass): every local overlay network whose cluster
        network is dirty programmed from the view -- an event's pass trusts what was
        programmed, a full pass (start, resync, periodic reconcile) reads the kernel -- and on
        a full pass, what a former self of this host left collected."""
        if dirty is None:
            try:
                self.collect_former_selves(view)
            except errors.PynetError as e:   # the next full pass tries again; programming goes on
                log.warning("former host records not collected: %s", e)
        for net in networks:
            if net.driver == self.name and (dirty is None or self.cluster_id(net) in dirty):
                self.program_peers(net, view, from_kernel=dirty is None)

    # ============================================ a host that came back wiped
    def former_selves(self, view: dict) -> set:
        """Host IDs that were this host before its state dir was wiped: a member record at
        this host's VTEP address under another ID whose lease is gone (a reinstalled host
        gets a new ID, ``pynet.cluster.host_identity``; two live hosts cannot share a VTEP)."""
        c = self.cluster
        if c is None:
            return set()
        me, address = c.host, c.address
        alive, former = set(), set()
        for key, value in view.items():
            parts = c.parse(key)
            if len(parts) == 2 and parts[0] == "hosts":
                alive.add(parts[1])
            elif len(parts) == 3 and parts[0] == "members" and parts[2] != me \
                    and (value or {}).get("address") == address:
                former.add(parts[2])
        return former - alive

    def collect_former_selves(self, view: dict) -> list[str]:
        """The records this host's former selves left (``former_selves``): nobody else frees
        an absent host's endpoints (it may come back), but this one never will -- its
        endpoints, memberships, block-IPAM handles and empty blocks go, and a cluster network
        it was the last member of goes with them.  The agent's full passes call it with their
        view.  Returns the keys it deleted (handles as ``pool/handle``)."""
        former = self.former_selves(view)
        if not former:
            return []
        c = self.cluster
        gone, touched, pools = [], set(), set()
        for key, value in view.items():
            parts = c.parse(key)
            if len(parts) == 3 and parts[0] == "endpoints" and (value or {}).get("host") in former:
                c.store.delete(key)
                gone.append(key)
                touched.add(parts[1])
            elif len(parts) == 3 and parts[0] == "members" and parts[2] in former:
                c.store.delete(key)
                gone.append(key)
                touched.add(parts[1])
            elif len(parts) == 2 and parts[0] == "networks":
                pools.update(pool_name(s) for s in (value or {}).get("subnets", []))
        ipam = self._blocks()
        for pool in sorted(pools):
            try:
                for handle, h in ipam.handles(pool).items():
                    if h.get("host") in former and ipam.release(pool, handle):
                        gone.append(f"{pool}/{handle}")
                for host in former:
                    ipam.release_empty_blocks(pool, host=host)
            except errors.NotFound:
                continue
        for cid in sorted(touched):
            self._free_if_unused(cid)
        log.info("collected %d records of former host(s) %s (state dir wiped; same VTEP %s)",
                 len(gone), ", ".join(sorted(former)), c.address)
        return gone

    # ====================================================== the peers (agent)
    def program_peers(self, net: Network, view: dict, from_kernel: bool = True) -> dict:
        """Make the network's VXLAN device hold exactly what the cluster view
        says (``pynet.cluster.peers``): missing entries added, stale ones
        removed; idempotent, so an event applied twice, a resync and the
        periodic reconcile are all this one call.  ``from_kernel=False`` (an
        event's pass): compare with what this process programmed last instead
        of dumping the device's tables (a dump of 200 entries costs ~12 ms
        through pyroute2); the periodic reconcile reads the kernel again and
        repairs what anyone else changed.  Returns what changed."""
        c = self.cluster
        st = net.driver_state or {}
        dev = st.get("vxlan")
        done = {"added": 0, "removed": 0}
        # an event's pass reuses the ifindex of the last pass (no request
        # at all: a device gone or made again since has another index, ifindexes
        # are handed out cyclically, so the first replace fails with ENODEV and
        # the pass is redone from a fresh look-up and the kernel's tables); a
        # full pass asks for the ifindex only (get_link's address dump and
        # master look-ups were half of an event's pass)
        cached = None if from_kernel or c is None else next(
            (k[1] for k in self._programmed if k[0] == dev), None)
        index = cached if cached is not None else (self.nl.link_index(dev) if c is not None and dev else None)
        if index is None:
            self._programmed = {k: v for k, v in self._programmed.items() if k[0] != dev}
            return done
        # keyed by the device's ifindex too: a device another process recreated
        # (a CNI ADD after the network was removed) is a new, empty one
        key = (dev, index)
        want = peers(view, c.parse, self.cluster_id(net), c.host)
        last = None if from_kernel else self._programmed.get(key)
        self._programmed = {k: v for k, v in self._programmed.items() if k[0] != dev}
        try:
            self._program(dev, index, want, last, done)     # raising: nothing cached, the next pass reads the kernel
        except errors.NotFound:
            if cached is None:
                raise
            return self.program_peers(net, view, from_kernel=True)
        self._programmed[key] = (set(want.fdb), set(want.neigh))
        if done["added"] or done["removed"]:
            log.info("network %s: %s: +%d -%d FDB/neighbour entries", net.id[:12], dev,
                     done["added"], done["removed"])
        return done

    def _program(self, dev: str, index: int, want, last, done: dict) -> None:
        fdb = set(self.nl.fdb_list(dev)) if last is None else set(last[0])
        for mac, dst in sorted(want.fdb - fdb):
            self.nl.fdb_replace(dev, mac, dst, index=index)
            done["added"] += 1
        for mac, dst in sorted(fdb - want.fdb):
            # a unicast MAC moved by the replace above is gone already
            if self.nl.fdb_delete(dev, mac, dst, missing_ok=True):
                done["removed"] += 1
        neigh = set(self.nl.neigh_list(dev)) if last is None else set(last[1])
        wanted_ips = {ip for ip, _ in want.neigh}
        for ip, mac in sorted(want.neigh - neigh):
            self.nl.neigh_replace(dev, ip, mac, index=index)
            done["added"] += 1
        for ip, mac in sorted(neigh - want.neigh):
            if ip not in wanted_ips and self.nl.neigh_delete(dev, ip, missing_ok=True):
                done["removed"] += 1

    # ============================================================ oper info
    def oper_info(self, net: Network, ep: Endpoint) -> dict:
        st = self._state(net)
        return dict(super().oper_info(net, ep), vxlan=st["vxlan"], vni=st.get("vni"))

    # ================================================================= CNI
    def check_endpoint(self, net: Network, ep: Endpoint, host_netlink) -> list[str]:
        """CNI CHECK: the bridge driver's host side, the VXLAN device on the bridge, and the
        pod's cluster entries -- its endpoint record (what the peers program their FDB and
        neighbour entries from) naming this host, its address and MAC, and its address held
        in the cluster's block IPAM.  A cluster store out of reach raises StoreUnavailable
        (code 11: try again), never a "CHECK failed"."""
        problems = super().check_endpoint(net, ep, host_netlink)
        st = self._state(net)
        vx = st.get("vxlan")
        if vx and not host_netlink.link_exists(vx):
            problems.append(f"VXLAN device {vx} is missing")
        elif vx and st.get("bridge") and host_netlink.get_link(vx).master != st["bridge"]:
            problems.append(f"VXLAN device {vx} is not on bridge {st['bridge']}")
        c = self._cluster(net)
        cid = self.cluster_id(net)
        rec = c.store.get(c.key("endpoints", cid, ep.id))
        want = {"host": c.host, "ip": ep.ip, "mac": ep.mac}
        if rec is None:
            problems.append(f"the cluster store has no record of endpoint {ep.id[:12]} "
                            "(peers cannot reach it)")
        else:
            got = {k: (rec.value or {}).get(k) for k in want}
            problems += [f"its cluster record has {k} {got[k]!r}, expected {v!r}"
                         for k, v in want.items() if v and (got[k] or "").lower() != v.lower()]
        got = self._pool_of(net, 4)
        if got is not None and ep.ip:
            # under the endpoint's handle (a CNI ADD's) or dockerd's RequestAddress one
            held = self._blocks().handles(got[0])
            if not any(h.get("host") == c.host and h.get("cidr", "").split("/")[0] == ep.ip
                       for handle, h in held.items() if handle.startswith(f"{cid}:")):
                problems.append(f"address {ep.ip} is not held by this host in the cluster's pool {got[1]}")
        return problems

    def cni_status(self, net: Optional[Network]) -> None:
        """CNI STATUS: ready only while the cluster store answers (every ADD and DEL needs
        it) -- one quorum read; StoreUnavailable naming the store otherwise (code 11)."""
        c = self._cluster(net) if net is not None else self.cluster
        if c is None:
            raise NoClusterStore("pynet-overlay needs a cluster store: the conflist's "
                                 "pynet.clusterStore (or PYNET_CLUSTER_STORE)")
        c.store.get(c.key("hosts", c.host))

    # A ``pynet-overlay`` entry: the bridge plugin's keys (isGateway, ipMasq...)
    # and ``vni``, ``vxlanPort``.
    @classmethod
    def cni_netconf(cls, conf: dict) -> CniNetConf:
        nc = super().cni_netconf(conf)
        for key, opt, hi in (("vni", OPT_VNI, 0xFFFFFF), ("vxlanPort", OPT_PORT, 65535)):
            value = conf.get(key)
            if value in (None, ""):
                continue
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= hi:
                raise errors.InvalidOption(f"{key} must be a number 1..{hi}, got {value!r}")
            nc.options[opt] = str(value)
            nc.settings[key] = value
        return nc

    @classmethod
    def cni_compare(cls, settings: dict, net: Network) -> list[str]:
        diffs = super().cni_compare(settings, net)
        st = net.driver_state or {}
        for key, field in (("vni", "vni"), ("vxlanPort", "port")):
            if settings.get(key) and st.get(field) and st[field] != settings[key]:
                diffs.append(f"{key} {st[field]} (conflist: {settings[key]})")
        return diffs

    @classmethod
    def cni_example(cls) -> Optional[dict]:
        return {"name": "pynet-overlay", "plugin": {
            "isGateway": True, "isDefaultGateway": True, "ipMasq": True,
            "ipam": {"type": "pynet-ipam", "ranges": [[{"subnet": "10.91.0.0/16"}]]},
            "pynet": {"clusterStore": "etcd://127.0.0.1:2379"},
            "capabilities": {"portMappings": True, "ips": True, "mac": True}}}

    @classmethod
    def cni_from_options(cls, options: dict) -> dict:
        out = super().cni_from_options(options)
        if options.get(OPT_VNI):
            out["vni"] = int(options[OPT_VNI])
        return out
