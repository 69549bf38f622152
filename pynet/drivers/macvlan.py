"""The macvlan driver, in CNM order (compare libnetwork's drivers/macvlan).

    create network  -> nothing to build when the parent exists; a parent written
                       ``IF.VID`` creates the 802.1q sub-interface on demand; no
                       parent (or ``--internal``) creates an isolated dummy parent
    create endpoint -> a macvlan child of the parent, with the endpoint's MAC (02:42
                       + the IPv4 address, as Docker derives it), left down in the
                       host namespace: it IS the container's interface (SrcName)
    join            -> tell the runtime which interface to move, and the gateways
                       (none on an internal/dummy network); never a gateway service
    leave           -> nothing: the runtime moves the interface back itself
    delete endpoint -> delete the child if it is back in the host namespace
    delete network  -> delete the parent only if pynet created it (dummy or VLAN)
    restore         -> make the kernel match the store (recreate created parents and
                       unjoined children, remove this instance's orphans)

Options (``docker network create -o`` / ``net.options``):
    parent          the parent interface: ``eth1``, or ``eth1.50`` for VLAN 50 of
                    eth1 (sub-interface created when missing, removed with the
                    network only if pynet created it); empty = isolated dummy
    macvlan_mode    bridge (default) | private | vepa | passthru
    com.docker.network.driver.mtu   the children's MTU (at most the parent's)
    com.docker.network.container_iface_prefix   the name prefix in the container

One network per parent (as libnetwork): a second network on the same parent is
refused; two VLANs of one parent are two parents.  ``--internal`` behaves as
Docker's macvlan: the given parent is ignored and a dummy parent isolates the
network (so does a network without a parent: containers reach only each other).

Known macvlan limitation (documented by tests/netns/test_macvlan.py): the host
cannot talk to its own macvlan children through the parent interface -- the
kernel delivers frames between a macvlan and its lower device neither way.  The
usual workaround is a macvlan of the host's own on the same parent, with an
address on the subnet.

Naming (15 bytes):
    dummy parent    ``pd-`` + 12 chars of the network id (on kernels without
                    CONFIG_DUMMY: a veth pair ``pd-…``/``pp-…``, the peer up and
                    unused, so the network stays isolated all the same)
    child           ``pm`` + 11 chars of the endpoint id
Every link pynet creates carries the alias ``pynet:<instance>:<object id>``
(restore tells its own from others by it; a parent pynet did not create is never
tagged, never touched).

What the driver remembers lives in ``net.driver_state`` / ``ep.driver_state``:
    net: parent, mode, vlan_id (int|None), link (the VLAN's base or ""), dummy
         (bool), created (bool), parent_kind ("dummy"|"veth"|"vlan" when created),
         peer (the veth fallback's other end), mtu (int|None), dst_prefix
    ep:  macvlan, parent
"""
from __future__ import annotations

import contextlib
import logging
import re
from typing import Optional

import dataclasses

from pynet import errors, validate
from pynet.cnm.driver import CniNetConf, DriverBase, Remember
from pynet.cnm.model import Endpoint, JoinInfo, Network
from pynet.drivers.bridge import _short, mac_from_ipv4
from pynet.drivers.options import (ALIAS_PREFIX, OPT_IFACE_PREFIX, OPT_MTU, alias_for, driver_mtu,
                                  iface_prefix, ifname_option, parse_alias)
from pynet.netlink import check_mac, check_vlan_id, random_mac

log = logging.getLogger("pynet.drivers.macvlan")

# -- options ------------------------------------------------------------------
OPT_PARENT = "parent"
OPT_MODE = "macvlan_mode"
MODES = ("bridge", "private", "vepa", "passthru")
DEFAULT_MODE = "bridge"
# our own option namespace: anything else in it is a typo
OPTION_PREFIXES = ("macvlan_", "pynet.macvlan.")
KNOWN_OPTIONS = {OPT_PARENT, OPT_MODE, OPT_MTU, OPT_IFACE_PREFIX}
# kinds of link this driver creates (restore removes only these)
OWN_KINDS = ("macvlan", "dummy", "vlan")
# The isolated parent falls back to a veth pair on kernels without the dummy
# driver (CONFIG_DUMMY); it is tagged under its own alias prefix so that the
# bridge driver's restore, which removes this instance's orphan veths, never
# takes it for one of its own.
ISOLATED_PREFIX = "pynet-isolated"
EOPNOTSUPP_TEXT = "Operation not supported"


def dummy_parent_name(network_id: str) -> str:
    return "pd-" + _short(network_id, 12)


def isolated_peer_name(network_id: str) -> str:
    return "pp-" + _short(network_id, 12)


def macvlan_name(endpoint_id: str) -> str:
    return "pm" + _short(endpoint_id, 11)


def split_parent(parent: str) -> tuple[str, Optional[int], str]:
    """``eth1.50`` -> ("eth1", 50, ""); ``eth1`` -> ("eth1", None, "").  A
    numeric suffix out of 1..4094 is refused; any other suffix is returned as
    the third item (a link of that exact name may exist, e.g. ``br.lan``;
    otherwise it is an invalid VLAN ID)."""
    base, dot, vid = parent.rpartition(".")
    if not dot or not base:
        return parent, None, ""
    if not re.fullmatch(r"\d+", vid):
        return parent, None, vid
    try:
        return base, check_vlan_id(vid), ""
    except errors.InvalidParameter as e:
        raise errors.InvalidOption(f"parent {parent!r}: {e}") from None


def parse_options(net: Network) -> dict:
    """The driver's configuration of a network from ``net.options``; one
    readable InvalidOption line for anything wrong."""
    opts = net.options or {}
    for key in opts:
        if key.startswith(OPTION_PREFIXES) and key not in KNOWN_OPTIONS:
            raise errors.InvalidOption(f"unknown macvlan option {key}")
    cfg = {"parent": "", "link": "", "vlan_id": None, "dummy": False, "mode": DEFAULT_MODE,
           "mtu": None, "dst_prefix": "eth"}
    mode = str(opts.get(OPT_MODE) or "").strip().lower()
    if mode:
        if mode not in MODES:
            raise errors.InvalidOption(f"invalid macvlan_mode {opts[OPT_MODE]!r}: expected one of "
                                       f"{', '.join(MODES)} (default {DEFAULT_MODE})")
        cfg["mode"] = mode
    parent = ifname_option(opts, OPT_PARENT, "parent interface", strip=True)
    if net.internal and parent:
        # Docker's macvlan: --internal is an isolated network, whatever the parent
        log.info("network %s: internal, ignoring parent %s (isolated dummy parent)",
                 net.id[:12], parent)
        parent = ""
    if parent:
        if parent == "lo":
            raise errors.InvalidOption("the loopback interface is not a valid macvlan parent")
        base, vid, bad = split_parent(parent)
        if vid is not None:
            cfg["link"], cfg["vlan_id"] = base, vid
        elif bad:
            cfg["bad_vlan"] = bad
        cfg["parent"] = parent
    else:
        cfg["parent"] = dummy_parent_name(net.id)
        cfg["dummy"] = True
    cfg["mtu"] = driver_mtu(opts)
    cfg["dst_prefix"] = iface_prefix(opts)
    return cfg


class MacvlanDriver(DriverBase):
    name = "macvlan"
    scope = "local"

    def __init__(self, netlink, sysctl=None, instance: str = "pynet"):
        if not instance or ":" in instance:
            raise errors.InvalidParameter(f"invalid pynet instance name {instance!r}")
        self.nl = netlink
        self.sysctl = sysctl
        self.instance = instance

    def _tag(self, object_id: str) -> str:
        return alias_for(self.instance, object_id)

    def _isolated_tag(self, object_id: str) -> str:
        return f"{ISOLATED_PREFIX}:{self.instance}:{object_id}"

    def _owner(self, alias: str):
        """(instance, id) from either of our alias forms, else None."""
        if (alias or "").startswith(ISOLATED_PREFIX + ":"):
            return parse_alias(ALIAS_PREFIX + alias[len(ISOLATED_PREFIX):])
        return parse_alias(alias)

    def _state(self, net: Network) -> dict:
        if net.driver_state.get("parent"):
            return net.driver_state
        cfg = parse_options(net)
        cfg["created"] = cfg["dummy"]
        return cfg

    # ======================================================== create network
    def validate_network(self, net: Network, others: list[Network]) -> None:
        cfg = parse_options(net)
        parent = cfg["parent"]
        for other in others:
            if other.id == net.id or other.driver != net.driver:
                continue
            try:
                theirs = self._state(other)["parent"]
            except errors.PynetError:
                continue
            if theirs == parent:
                raise errors.Conflict(f"parent interface {parent} is already used by macvlan "
                                      f"network {other.name or other.id[:12]}")
        if cfg["dummy"]:
            return
        if self.nl.link_exists(parent):
            link = self.nl.get_link(parent)
            owner = parse_alias(link.alias)
            if owner and owner[0] == self.instance and link.kind in ("macvlan", "veth") \
                    and owner[1] != net.id:
                raise errors.InvalidOption(f"{parent} is an interface of pynet endpoint "
                                           f"{owner[1][:12]}, not a valid macvlan parent")
            if cfg["vlan_id"] is not None and link.kind and link.kind != "vlan":
                raise errors.Conflict(f"cannot use {parent} as VLAN {cfg['vlan_id']} of "
                                      f"{cfg['link']}: a {link.kind} link of that name exists")
            return
        if cfg.get("bad_vlan"):
            raise errors.InvalidOption(f"invalid VLAN ID {cfg['bad_vlan']!r} in parent {parent!r} "
                                       f"(write IF.VID with VID 1..4094)")
        if cfg["vlan_id"] is None:
            raise errors.InvalidOption(f"parent interface {parent} does not exist")
        if not self.nl.link_exists(cfg["link"]):
            raise errors.InvalidOption(f"parent interface {cfg['link']} of VLAN sub-interface "
                                       f"{parent} does not exist")

    def create_network(self, net: Network) -> None:
        cfg = parse_options(net)
        parent = cfg["parent"]
        existed = self.nl.link_exists(parent)
        if existed:
            # a retry of our own create finds our tag on it
            cfg["created"] = self._owner(self.nl.get_link(parent).alias) == (self.instance, net.id)
        else:
            cfg["created"] = True
        with contextlib.ExitStack() as undo:
            if not existed:
                self._create_parent(net, cfg)
                undo.callback(self.nl.delete_link, parent, True)
            if cfg["created"]:
                self.nl.set_up(parent)
            net.driver_state = cfg
            undo.pop_all()
        log.info("network %s: macvlan %s on %s%s", net.id[:12], cfg["mode"], parent,
                 " (created)" if cfg["created"] else "")
        return cfg

    def _create_parent(self, net: Network, cfg: dict) -> None:
        parent = cfg["parent"]
        if cfg["dummy"]:
            if cfg.get("parent_kind") != "veth":
                try:
                    self.nl.add_dummy(parent, alias=self._tag(net.id))
                    cfg["parent_kind"] = "dummy"
                    return
                except errors.KernelError as e:
                    if EOPNOTSUPP_TEXT not in str(e):
                        raise
                    log.info("no dummy links on this kernel: isolated parent %s is a veth pair",
                             parent)
            # the peer stays up, addressless, in no bridge: frames leaving the
            # parent end there
            peer = isolated_peer_name(net.id)
            self.nl.add_veth(parent, peer, alias=self._isolated_tag(net.id))
            try:
                self.nl.set_up(peer)
            except BaseException:
                self.nl.delete_link(parent, missing_ok=True)
                raise
            cfg["parent_kind"], cfg["peer"] = "veth", peer
            return
        try:
            self.nl.add_vlan(parent, cfg["link"], cfg["vlan_id"], alias=self._tag(net.id))
        except errors.KernelError as e:
            if EOPNOTSUPP_TEXT in str(e):
                raise errors.KernelError(
                    f"cannot create VLAN sub-interface {parent}: this kernel has no 802.1q VLAN "
                    f"support (CONFIG_VLAN_8021Q, module 8021q)") from None
            raise
        cfg["parent_kind"] = "vlan"

    # ======================================================= create endpoint
    def plan_endpoint(self, net: Network, ep: Endpoint) -> dict:
        """The child's name (from the endpoint ID) and the MAC, recorded by the
        controller before the child exists."""
        st = self._state(net)
        mac = check_mac(ep.mac or (mac_from_ipv4(ep.address) if ep.address else random_mac()))
        return {"mac": mac, "driver_state": {"macvlan": macvlan_name(ep.id), "parent": st["parent"]}}

    def create_endpoint(self, net: Network, ep: Endpoint) -> Optional[dict]:
        st = self._state(net)
        if ep.ports:
            log.warning("endpoint %s: the macvlan driver does not publish ports (ignored)",
                        ep.id[:12])
        planned = None
        if not ep.driver_state.get("macvlan"):  # a caller that did not plan: plan now
            planned = self.plan_endpoint(net, ep)
            ep = dataclasses.replace(ep, **planned)
        self._remove_stale(ep, ep.driver_state["macvlan"])
        self._create_child(st, ep)
        return planned

    def _remove_stale(self, ep: Endpoint, name: str) -> None:
        """A child left by an interrupted create of this same endpoint."""
        if self.nl.link_exists(name):
            if self.nl.get_link(name).alias == self._tag(ep.id):
                self.nl.delete_link(name)
            else:
                raise errors.Conflict(f"interface {name} already exists and is not endpoint "
                                      f"{ep.id[:12]}'s")

    def _create_child(self, st: dict, ep: Endpoint) -> None:
        name = ep.driver_state["macvlan"]
        if not self.nl.link_exists(st["parent"]):
            raise errors.NotFound(f"parent interface {st['parent']} of the macvlan network is gone")
        self.nl.add_macvlan(name, st["parent"], mode=st.get("mode") or DEFAULT_MODE,
                            mtu=st.get("mtu"), mac=ep.mac, alias=self._tag(ep.id))

    # ================================================================= join
    def join(self, net: Network, ep: Endpoint, sandbox_key: str) -> JoinInfo:
        st = self._state(net)
        name = self._child(ep)
        remember: dict = {}
        if not self.nl.link_exists(name):
            # gone (reboot, manual delete): make it again
            state = dict(ep.driver_state, macvlan=name, parent=st["parent"])
            self._create_child(st, dataclasses.replace(ep, driver_state=state))
            if state != ep.driver_state:
                remember = {"driver_state": state}
        prefix = st.get("dst_prefix", "eth")
        gw4, gw6 = self.gateways(net)
        return JoinInfo(src_name=name, dst_prefix=prefix, gateway=gw4, gateway_v6=gw6,
                        disable_gateway_service=True, remember=remember)

    def gateways(self, net: Network) -> tuple[str, str]:
        """The gateways a join hands the sandbox (and so what CHECK expects as
        its default routes): none on an internal network or on an isolated
        parent (dummy, or the ``pd-``/``pp-`` veth pair) -- nothing is behind
        them to route to."""
        if net.internal or self._state(net).get("dummy"):
            return "", ""
        return net.gateway_v4, net.gateway_v6

    def _child(self, ep: Endpoint) -> str:
        return ep.driver_state.get("macvlan") or macvlan_name(ep.id)

    # External connectivity and leave: DriverBase's no-ops (no NAT and no published
    # ports on macvlan; leaving changes nothing on the host).

    # ====================================================== delete endpoint
    def delete_endpoint(self, net: Network, ep: Endpoint) -> None:
        name = self._child(ep)
        if self.nl.link_exists(name):
            link = self.nl.get_link(name)
            if link.alias and link.alias != self._tag(ep.id):
                log.warning("endpoint %s: %s is not ours (alias %r), left alone",
                            ep.id[:12], name, link.alias)
                return
            self.nl.delete_link(name, missing_ok=True)

    def forget_endpoint(self, net: Network, endpoint_id: str) -> list[str]:
        """The child an interrupted create of ``endpoint_id`` left (no record
        of it exists), only if tagged for that id.  Returns the deleted links."""
        name = macvlan_name(endpoint_id)
        try:
            if self.nl.get_link(name).alias != self._tag(endpoint_id):
                return []
        except errors.NotFound:
            return []
        self.nl.delete_link(name, missing_ok=True)
        return [name]

    # ======================================================= delete network
    def delete_network(self, net: Network) -> None:
        st = self._state(net)
        parent = st["parent"]
        if not st.get("created") or not self.nl.link_exists(parent):
            return
        owner = self._owner(self.nl.get_link(parent).alias)
        if owner is None or owner == (self.instance, net.id):
            self.nl.delete_link(parent, missing_ok=True)   # its children go with it
        else:
            log.warning("network %s: parent %s now belongs to %s, left alone",
                        net.id[:12], parent, owner)

    # ============================================================== restore
    def restore(self, networks: list[Network], endpoints: list[Endpoint], keep=()) -> Remember:
        """Returns what changed in the records (a recreated child's name and MAC)."""
        remember = Remember()
        nets = {n.id: n for n in networks}
        known = set(nets) | {e.id for e in endpoints} | set(keep)  # keep: ADDs in flight
        links = self.nl.list_links(alias_prefix=f"{ALIAS_PREFIX}:{self.instance}:") + \
            self.nl.list_links(alias_prefix=f"{ISOLATED_PREFIX}:{self.instance}:")
        for link in links:
            owner = self._owner(link.alias)
            isolated = link.alias.startswith(ISOLATED_PREFIX + ":")
            if owner and owner[0] == self.instance and owner[1] not in known \
                    and (link.kind in OWN_KINDS or (isolated and link.kind == "veth")):
                log.info("restore: removing orphan %s %s", link.kind, link.name)
                self.nl.delete_link(link.name, missing_ok=True)
        for net in networks:
            st = self._state(net)
            try:
                if st.get("created") and not self.nl.link_exists(st["parent"]):
                    log.info("restore: recreating parent %s of network %s", st["parent"], net.id[:12])
                    self._create_parent(net, st)
                if st.get("created"):
                    self.nl.set_up(st["parent"])
            except errors.PynetError as e:
                log.error("restore: network %s: %s", net.id[:12], e)
        for ep in endpoints:
            net = nets.get(ep.network_id)
            if net is None or ep.sandbox_key:
                continue
            st = self._state(net)
            name = self._child(ep)
            try:
                if not self.nl.link_exists(name):
                    log.info("restore: recreating macvlan of endpoint %s", ep.id[:12])
                    # a new record, handed back: the stored one is not changed here
                    new = dataclasses.replace(
                        ep, driver_state=dict(ep.driver_state, macvlan=name, parent=st["parent"]),
                        mac=ep.mac or (mac_from_ipv4(ep.address) if ep.address else random_mac()))
                    self._create_child(st, new)
                    if (new.driver_state, new.mac) != (ep.driver_state, ep.mac):
                        remember.endpoint(ep, driver_state=new.driver_state, mac=new.mac)
            except errors.PynetError as e:
                log.error("restore: endpoint %s: %s", ep.id[:12], e)
        return remember

    # ============================================================ oper info
    def oper_info(self, net: Network, ep: Endpoint) -> dict:
        st = self._state(net)
        return {"parent": st["parent"], "macvlan_mode": st.get("mode"), "macvlan": self._child(ep),
                "mac": ep.mac}

    # ================================================================= CNI
    # The conflist keys of a ``pynet-macvlan`` entry (the reference macvlan
    # plugin's names): master (the parent; empty = an isolated dummy parent),
    # mode.  The gateway is the outside router's: always named in results,
    # with a default route via it.
    @classmethod
    def cni_netconf(cls, conf: dict) -> CniNetConf:
        master = conf.get("master")
        master = "" if master is None or master == "" else validate.ifname(master, "master interface")
        mode = conf.get("mode")
        if mode is None or mode == "":
            mode = ""
        elif not isinstance(mode, str) or mode not in MODES:
            raise errors.InvalidOption(f"invalid macvlan mode {validate.shown(mode)}: "
                                       f"expected one of {', '.join(MODES)}")
        o = {}
        if master:
            o[OPT_PARENT] = master
        if mode:
            o[OPT_MODE] = mode
        return CniNetConf(options=o, is_gateway=True, is_default_gateway=True,
                          settings={"master": master, "mode": mode})

    @classmethod
    def cni_compare(cls, settings: dict, net: Network) -> list[str]:
        diffs = []
        st = net.driver_state or {}
        master, mode = settings.get("master"), settings.get("mode")
        if master and st.get("parent") and st["parent"] != master:
            diffs.append(f"master {st['parent']} (conflist: {master})")
        if mode and st.get("mode") and st["mode"] != mode:
            diffs.append(f"mode {st['mode']} (conflist: {mode})")
        return diffs

    @classmethod
    def cni_example(cls) -> dict:
        return {"name": "pynet-macvlan", "plugin": {
            "master": "eth0", "mode": "bridge",
            "ipam": {"type": "pynet-ipam", "ranges": [[{"subnet": "10.89.0.0/24",
                                                         "gateway": "10.89.0.1"}]]},
            "capabilities": {"ips": True, "mac": True}}}

    @classmethod
    def cni_from_options(cls, options: dict) -> dict:
        return {"master": options[OPT_PARENT]} if options.get(OPT_PARENT) else {}
