"""The composition root: every implementation pynet runs on is built here,
from the settings (``pynet.config.Config``), and nowhere else.

    open_store(config)              the local store (SQLite in the state dir, under
                                    pynet/v2/local/<host>/: open_state_dir)
    cluster_store(config)           this host's cluster handle (pynet.cluster.Cluster) or None
    start_cluster_agent(config, c)  the daemon's membership + control loop (the overlay's FDB)
    build_netlink() / build_sysctl()   the host's kernel interfaces
    build_firewall(config, store)   Docker's iptables layout under the instance's chain prefix
    serial_firewall(fw, config, c)  ... behind the state dir's cross-process lock
    build_drivers(config, netlink, sysctl, firewall)   driver name -> driver
    build_ipam(config, store)       the bitmap IPAM with the configured default pools
    build_controller(config)        all of it: the daemon, the CLI's kernel verbs, the
                                    CNI plugins in-process, the scenario workers
    build_ipam_controller(config)   store + IPAM only: pynet-ipam in-process
    build_reader(config, store)     store only: the CLI's read-only commands
    state_lock(state_dir, what)     a cross-process lock of the state dir

Where it sits: below every front end (the daemon, the CLI, the CNI plugins
and the scenario workers all call it; it imports none of them) and above the
drivers, the core and the side-effect interfaces, which it wires together.
Everything is imported inside the function that needs it, so the IPAM-only
path never loads pyroute2, the firewall or a driver, and nothing here loads
Flask.  Functions are looked up on this module at call time, so a test
replaces one part (``monkeypatch.setattr(root, "build_drivers", ...)``) and
keeps the rest of the wiring.
"""
from __future__ import annotations

import os

from pynet.config import Config


# ------------------------------------------------------------------ stores
def open_store(config: Config, create: bool = True):
    """The local store: records of this host (SQLite in the state dir).
    ``create=False``: the state dir must exist already (the CLI's commands
    must not set one up by a typo)."""
    if create:
        os.makedirs(config.state_dir, mode=0o700, exist_ok=True)
    return open_state_dir(config.state_dir)


def open_state_dir(state_dir: str):
    """The SQLite store of ``state_dir`` seen under this host's v2 local prefix
    (``pynet/v2/local/<host>/``, ``pynet.store.layout``): a state dir of the
    layout of before is moved there once, on first open."""
    from pynet.store.layout import open_layout
    from pynet.store.sqlite import SqliteStore

    local, _cluster = open_layout(SqliteStore.in_state_dir(state_dir))
    return local


def store_file(state_dir: str) -> str:
    """Where ``open_state_dir`` keeps the store (whether a state dir has one)."""
    from pynet.store.sqlite import SqliteStore

    return os.path.join(state_dir, SqliteStore.FILENAME)


def read_state_dir(state_dir: str):
    """The local records of an existing state dir for a read-only caller (the
    doctor): nothing is created or migrated (``pynet.store.layout.view``)."""
    from pynet.store.layout import view
    from pynet.store.sqlite import SqliteStore

    return view(SqliteStore(store_file(state_dir)))


def open_store_url(url: str, **kw):
    """A store named by a URL, ``etcd://host:port[,host:port...]`` (etcd's v3
    JSON gateway over plain HTTP).  The root, not ``pynet.store``, picks the
    backend: the store package knows no backend, so it imports none of them."""
    from pynet.store.etcd import EtcdStore

    return EtcdStore.from_url(url, **kw)


def cluster_store(config: Config):
    """This host's handle on the cluster-wide store (``pynet.cluster.Cluster``:
    the store named by ``--cluster-store``, the host's identity and underlay
    address), or None when the host is in no cluster.  The etcd client is
    opened on first use, so a process that never touches an overlay network
    (a bridge ADD with PYNET_CLUSTER_STORE set) never imports it."""
    if not config.cluster_store:
        return None
    from pynet.cluster import Cluster, host_identity, split_url
    from pynet.config import parse_vni_range

    url, namespace = split_url(config.cluster_store)
    host = config.host_id or host_identity(config.state_dir)
    return Cluster(lambda: open_store_url(url), host=host, address=config.advertise_address,
                   namespace=namespace, lease_ttl=config.cluster_lease_ttl,
                   vni_range=parse_vni_range(config.vni_range), vxlan_port=config.vxlan_port,
                   url=url)   # named in its errors (pynet.cluster.ClusterStore)


def check_advertise_address(config: Config) -> None:
    """A daemon in a cluster whose ``--advertise-address`` is not this host's is refused in one
    line before anything is built (no kernel object, no rule, no cluster record)."""
    if config.cluster_store and config.advertise_address:
        from pynet.cluster import check_local_address

        check_local_address(config.advertise_address)


def start_cluster_agent(config: Config, controller, reconcile_interval: float = 10.0):
    """The host agent (``pynet.cluster.agent``): this host's lease kept alive,
    and the control loop that programs every local overlay network's VXLAN
    device from the cluster.  None when the host is in no cluster (or has no
    overlay driver)."""
    try:
        drv = controller.driver("overlay")
    except Exception:  # noqa: BLE001 -- a registry without the overlay: nothing to follow
        return None
    cluster = getattr(drv, "cluster", None)
    if cluster is None:
        return None
    # an advertise address that is not this host's: refused (one line) before joining, so
    # the host announces nothing peers would send VXLAN to
    cluster.address
    from pynet.cluster.agent import Agent

    def program(view: dict, dirty) -> None:
        drv.agent_pass(controller.networks(), view, dirty)

    return Agent(cluster, program, reconcile_interval=reconcile_interval).start()


# ------------------------------------------------------- kernel interfaces
def build_netlink():
    from pynet.netlink.pyroute import PyrouteNetlink

    return PyrouteNetlink()


def build_sysctl():
    from pynet.sysctl import Sysctl

    return Sysctl()


# ---------------------------------------------------------------- firewall
def build_firewall(config: Config, store=None, sysctl=None):
    """Docker's iptables layout for the bridge networks, under this instance's
    chain prefix (so a test daemon beside the main one never touches its rules).
    With the store, every process renders the same foreign bridges (learned
    from dockerd by the daemon)."""
    from pynet.drivers.bridge_firewall import BridgeFirewall

    sysctl = sysctl if sysctl is not None else build_sysctl()
    if config.firewall_backend == "nftables":
        # pynet's own nft tables (they open iptables' FORWARD where dockerd's rules are)
        from pynet.firewall.nft import NftFirewall
        fw = NftFirewall(prefix=config.chain_prefix, sysctl=sysctl)
    else:
        from pynet.firewall import Firewall
        from pynet.firewall.ledger import FileLedger

        # what each owner's rules were, for the per-change path of every process (CNI binaries
        # working in-process are fresh processes): beside the state, under firewall.lock
        ledger = FileLedger(os.path.join(config.state_dir, "firewall-ledger", config.chain_prefix))
        fw = Firewall(prefix=config.chain_prefix, sysctl=sysctl, ledger=ledger)
    return BridgeFirewall(fw, store=store)


def firewall_lock_path(state_dir: str) -> str:
    return os.path.join(state_dir, "firewall.lock")


def serial_firewall(firewall, config: Config, controller_box: dict):
    """``firewall`` behind the state dir's cross-process lock (``firewall.lock``,
    shared with CNI binaries working in-process and with the CLI): every sync
    re-reads the store under the lock, so the last sync applies the newest state.
    ``controller_box["c"]`` is the controller, filled in once it is built."""
    from pynet.firewall.serial import SerialFirewall

    return SerialFirewall(firewall, firewall_lock_path(config.state_dir),
                          lambda: (controller_box["c"].networks(), controller_box["c"].endpoints()))


# ----------------------------------------------------------------- drivers
def build_drivers(config: Config, netlink, sysctl, firewall) -> dict:
    """Driver name -> driver: the registry's table (``pynet.drivers.REGISTRY``,
    one line per driver), each built on first use on the given kernel
    interfaces, so a CNI ADD imports only its own driver's module.  The
    cluster handle (global drivers) is made here too, opened on first use."""
    from pynet.drivers import build_drivers as build

    return build(netlink, sysctl, firewall=firewall, instance=config.plugin_name,
                 cluster=cluster_store(config))


# -------------------------------------------------------------- core parts
def build_ipam(config: Config, store):
    from pynet.ipam import Ipam

    return Ipam(store, default_pools=config.default_pools)


def build_controller(config: Config, store=None, *, firewall: bool = True, observe_firewall=None):
    """Store, IPAM, drivers and firewall, built once and handed in.

    The firewall is wrapped in the cross-process lock here, where it is built,
    so that no sync -- ``restore()`` at daemon start and the CLI's verbs
    included -- can run beside a CNI binary's sync.  ``firewall=False``: no
    firewall at all (a scenario host that asks for none).
    ``observe_firewall(fw) -> fw``: the daemon's metrics around the firewall,
    inside the lock (so a sync's duration is its own, not the wait for the lock)."""
    from pynet.cnm.controller import Controller

    store = store if store is not None else open_store(config)
    netlink, sysctl = build_netlink(), build_sysctl()
    box: dict = {}
    fw = None
    if firewall:
        fw = build_firewall(config, store, sysctl)
        if observe_firewall is not None:
            fw = observe_firewall(fw)
        fw = serial_firewall(fw, config, box)
    box["c"] = c = Controller(store, build_ipam(config, store), build_drivers(config, netlink, sysctl, fw),
                              firewall=fw)
    return c


def build_ipam_controller(config: Config, store=None):
    """What pynet-ipam needs in-process: the store and the IPAM.  No drivers,
    no firewall -- and so no pyroute2, which is most of a CNI call's start-up."""
    from pynet.cnm.controller import Controller

    store = store if store is not None else open_store(config)
    return Controller(store, build_ipam(config, store), {}, firewall=None)


def build_reader(config: Config, store=None):
    """A Controller for reading: store only, no IPAM and no kernel interfaces."""
    from pynet.cnm.controller import Controller

    return Controller(store if store is not None else open_store(config, create=False), ipam=None, drivers={})


# ------------------------------------------------------------------- locks
def state_lock(state_dir: str, what: str):
    """``<state_dir>/<what>.lock``: the CNI verbs' ``cni`` and ``network`` locks."""
    from pynet.locks import state_lock as lock

    return lock(state_dir, what)
