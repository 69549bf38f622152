"""Services that run inside scenario namespaces (see ``worker``):

* :class:`NodeService` -- the underlay switch namespace and "outside" hosts:
  links, addresses and routes through pynet's Netlink (no pynet instance).
* :class:`HostService` -- a scenario *host*: its own pynet instance (state
  directory, store, IPAM, drivers, firewall, built by the composition root
  ``pynet.root`` as the daemon's are) created in the host namespace, driven with the Controller's CNM
  verbs exactly as dockerd drives them: create network, create endpoint,
  join, then ``pynet.cnm.sandbox.attach`` (dockerd's part after Join).
  Sandboxes attached by CNI are attached the runtime's way instead: the
  installed pynet CNI binary is executed (``cniexec``) from this process, so
  in the host's namespace, with a conflist whose ``pynet`` object points at
  this host's state dir, chain prefix and instance -- the CNI-made network
  and endpoints live in the same pynet instance as the Controller's.
  Given ``cluster`` settings (a scenario's cluster store, the overlay
  acceptance lab's), the host is a cluster member too: ``join_cluster`` starts
  the agent ``pynet daemon --cluster-store`` runs (its lease, the overlay's
  FDB and neighbour entries).

No scapy here.
"""
from __future__ import annotations

import hashlib
import ipaddress
import logging
import os
import shutil
from typing import Optional

log = logging.getLogger("pynet.scenario.host")


def object_id(*parts: str) -> str:
    """A Docker-style 64-hex id, stable for a run."""
    return hashlib.sha256("/".join(parts).encode()).hexdigest()


class NodeService:
    def __init__(self):
        from pynet.netlink.pyroute import PyrouteNetlink
        self.nl = PyrouteNetlink()

    def init(self, **_kw) -> None:
        return None

    # --- underlay switch -----------------------------------------------------
    def make_switch(self, bridge: str = "br0", mtu: int = 1500) -> None:
        self.nl.ensure_bridge(bridge, mtu=mtu)
        self.nl.set_up(bridge)
        if self.nl.link_exists("lo"):
            self.nl.set_up("lo")

    def plug(self, port: str, netns_path: str, peer_name: str = "eth0", bridge: str = "br0",
             mtu: int = 1500) -> None:
        """A veth ``port`` on the switch whose peer becomes ``peer_name`` in
        ``netns_path``.  The temporary peer name lives in this namespace only."""
        tmp = f"{port}p"
        self.nl.add_veth(port, tmp, mtu=mtu)
        self.nl.set_master(port, bridge)
        self.nl.set_up(port)
        self.nl.move_to_netns(tmp, netns_path, new_name=peer_name)

    # --- a node's uplink -----------------------------------------------------
    def uplink(self, cidr: str, ifname: str = "eth0", routes: Optional[list] = None) -> dict:
        if self.nl.link_exists("lo"):
            self.nl.set_up("lo")
        self.nl.ensure_address(ifname, cidr)
        self.nl.set_up(ifname)
        for r in routes or []:
            self.nl.add_route(r["to"], gateway=r.get("via") or None,
                              ifname=None if r.get("via") else ifname)
        return {"mac": self.nl.get_link(ifname).mac}

    def lo_up(self, netns_path: str) -> None:
        inner = self.nl.for_netns(netns_path)
        try:
            inner.set_up("lo")
        finally:
            inner.close()

    def links(self) -> list[str]:
        return [link.name for link in self.nl.list_links()]

    def close(self) -> None:
        try:
            self.nl.close()
        except Exception:  # noqa: BLE001
            pass


class HostService(NodeService):
    def __init__(self):
        super().__init__()
        self.controller = None
        self.state_dir = ""
        self.instance = ""
        self.nets: dict[str, dict] = {}        # scenario network name -> record
        self.eps: list[dict] = []              # attached endpoints, in order
        self.cni_atts: list = []               # cniexec.Attachment, in ADD order
        self.cni_path = ""
        self.chain_prefix = ""
        self.firewall_backend = "iptables"
        self.torn_down = False
        self.config = None
        self.agent = None                      # the cluster agent, once joined

    def init(self, instance: str, state_dir: str, ip_forward: bool = True,
             firewall="auto", chain_prefix: str = "PYNET", cni_path: str = "",
             cluster: Optional[dict] = None, **_kw) -> dict:
        """``cluster``: Config's cluster settings (cluster_store, advertise_address,
        cluster_lease_ttl, ...); the store is opened on first use, so the host is built
        before its etcd member runs."""
        from pynet import root
        from pynet.config import Config

        self.instance = instance
        self.state_dir = state_dir
        self.chain_prefix = chain_prefix
        self.cni_path = cni_path
        os.makedirs(state_dir, mode=0o700, exist_ok=True)
        # the firewall backend: the runner's PYNET_FIREWALL_BACKEND (the scenario library
        # runs on each backend, tests/scenario/test_firewall_backends.py)
        from pynet.config import firewall_backend
        backend = os.environ.get("PYNET_FIREWALL_BACKEND")
        self.firewall_backend = firewall_backend(backend, "PYNET_FIREWALL_BACKEND") if backend else "iptables"
        cfg = Config(plugin_name=instance, state_dir=state_dir, chain_prefix=chain_prefix,
                     socket_path=os.path.join(state_dir, "plugin.sock"),
                     firewall_backend=self.firewall_backend, **(cluster or {}))
        self.config = cfg
        # The composition root's controller, the daemon's: store, IPAM, drivers
        # and the firewall (serialised with the CNI binaries that sync the same
        # rules from other processes) -- inside this namespace, so iptables is
        # this host's.
        self.controller = root.build_controller(cfg, firewall=firewall is not False)
        fw = self.controller.firewall
        root.build_sysctl().set("net/ipv4/ip_forward", 1 if ip_forward else 0)
        return {"firewall": fw is not None, "drivers": sorted(self.controller.drivers),
                "chain_prefix": chain_prefix}

    # ------------------------------------------------------------- cluster
    def join_cluster(self, reconcile_interval: float = 2.0) -> dict:
        """The host agent (what ``pynet daemon`` runs): lease kept alive, the
        overlay's peers programmed from the cluster's records."""
        from pynet import root

        if self.agent is None:
            self.agent = root.start_cluster_agent(self.config, self.controller,
                                                  reconcile_interval=reconcile_interval)
        cl = self.agent.cluster
        return {"host": cl.host, "address": cl.address}

    def leave_cluster(self, revoke: bool = True) -> None:
        """``revoke=False``: the agent dies as a crashed daemon would; the
        lease expires one TTL later."""
        if self.agent is not None:
            self.agent.stop(revoke=revoke)
            self.agent = None

    def cluster_keys(self) -> list[str]:
        """Every key under the cluster store's namespace (the run's)."""
        from pynet import root

        c = root.cluster_store(self.config)
        try:
            return c.keys()
        finally:
            c.close()

    def overlay_peers(self, name: str) -> dict:
        """The VXLAN device's FDB of overlay network ``name`` here: {"fdb": [(mac, dst)]}."""
        st = self.controller.network(name).driver_state
        return {"vni": st.get("vni"), "fdb": [list(x) for x in self.nl.fdb_list(st["vxlan"])]}

    # ------------------------------------------------------------- networks
    def create_network(self, name: str, driver: str = "bridge", subnet: str = "",
                       gateway: str = "", internal: bool = False, options: Optional[dict] = None,
                       subnet_v6: str = "") -> dict:
        from pynet.cnm.model import IPData
        from pynet.ipam import GATEWAY_TYPE, LOCAL_DEFAULT, REQUEST_ADDRESS_TYPE

        c = self.controller
        nid = object_id(self.instance, "network", name)
        rec = {"name": name, "id": nid, "pools": [], "gateways": [], "driver": driver}
        self.nets[name] = rec
        ipv4, ipv6 = [], []
        for pool, gw, v6, out in ((subnet, gateway, False, ipv4), (subnet_v6, "", True, ipv6)):
            if v6 and not pool:
                continue
            pool_id, cidr, _ = c.request_pool(LOCAL_DEFAULT, pool, v6=v6)
            rec["pools"].append(pool_id)
            gw_cidr = c.request_address(pool_id, gw, {REQUEST_ADDRESS_TYPE: GATEWAY_TYPE})
            rec["gateways"].append((pool_id, gw_cidr))
            out.append(IPData(pool=cidr, gateway=gw_cidr, pool_id=pool_id))
        net = c.create_network(nid, ipv4=ipv4, ipv6=ipv6, driver=driver, name=name,
                               internal=internal, options=dict(options or {}), created_by="cli")
        rec["created"] = True
        rec["subnet"] = net.ipv4[0].pool if net.ipv4 else ""
        rec["gateway"] = net.gateway_v4
        rec["subnet_v6"] = net.ipv6[0].pool if net.ipv6 else ""
        rec["bridge"] = net.driver_state.get("bridge", "")
        rec["vni"] = net.driver_state.get("vni")
        return {k: v for k, v in rec.items() if k not in ("pools", "gateways")}

    # ------------------------------------------------------------ sandboxes
    def attach_sandbox(self, name: str, netns_path: str, attachments: list,
                       publish: Optional[list] = None) -> list:
        """create_endpoint + join per network, then the namespace side
        (dockerd's part): move, rename eth<i>, address, default route via the
        first network's gateway.  Published ports on the first network."""
        from pynet.cnm import sandbox
        from pynet.cnm.controller import DOCKER
        from pynet.cnm.model import PortMapping

        c = self.controller
        out = []
        for i, att in enumerate(attachments):
            net = self.nets[att["network"]]
            pool_id = net["pools"][0]
            eid = object_id(self.instance, "endpoint", name, att["network"])
            # an overlay's address is cluster-wide: asked for with dockerd's holder, the
            # controller takes it from the overlay's block IPAM first (pool_address)
            holder = DOCKER if net.get("driver") == "overlay" else ""
            ep = {"sandbox": name, "network": att["network"], "nid": net["id"], "eid": eid,
                  "netns": netns_path, "pool_id": pool_id, "address": "", "ifname": "",
                  "holder": holder}
            self.eps.append(ep)
            ep["address"] = c.request_address(pool_id, att.get("address", ""), holder=holder)
            e = c.create_endpoint(net["id"], eid, address=ep["address"], mac=att.get("mac", ""))
            ep["created"] = True
            info = c.join(net["id"], eid, netns_path)
            ifname = f"{info.dst_prefix or 'eth'}{i}"
            link = sandbox.attach(netns_path, info.src_name, ifname, addresses=[ep["address"]],
                                  mac=e.mac or None,
                                  gateway=(info.gateway or None) if i == 0 else None,
                                  routes=info.static_routes)
            ep["ifname"] = ifname
            ports = []
            if publish and i == 0:
                e = c.program_external_connectivity(
                    net["id"], eid, ports=[PortMapping(proto=p["proto"], container_port=p["container_port"],
                                                       host_port=p.get("host_port", 0),
                                                       host_ip=p.get("host_ip", "")) for p in publish])
                ep["external"] = True
                ports = [vars(p) for p in e.ports]
            out.append({"network": att["network"], "ifname": ifname, "address": ep["address"],
                        "mac": (link.mac or e.mac).lower(), "gateway": info.gateway if i == 0 else "",
                        "ports": ports})
        return out

    # ------------------------------------------------------------------ CNI
    def cni_add(self, name: str, netns_path: str, network: str, cni: dict, ifname: str,
                address: str = "", prefixlen: int = 0, mac: str = "",
                publish: Optional[list] = None, node_cluster: bool = False) -> dict:
        """Attach ``netns_path`` as a runtime does: ADD through the conflist
        ``network`` by executing the plugin binaries found on CNI_PATH, with
        the runtime config (ips, mac, portMappings) the plugins' capabilities
        ask for.  Remembered for a DEL on teardown.  ``node_cluster``: the
        conflist gets this host's cluster store and advertise address where it
        names none (a scenario's pods, as a node's conflist would carry them);
        without it the conflist is run as given (a test of its refusals)."""
        from pynet.scenario import cniexec

        if not self.cni_path:
            raise RuntimeError("no CNI bin dir: the runner installs the plugins first")
        plugin = dict(cni["plugin"])
        # the conflist's own pynet keys (a cluster store) stay; the instance's win
        plugin["pynet"] = {**(plugin.get("pynet") or {}), "stateDir": self.state_dir,
                           "chainPrefix": self.chain_prefix, "instance": self.instance, "daemon": False,
                           "firewallBackend": self.firewall_backend}
        cfg = self.config
        if node_cluster and cfg is not None and cfg.cluster_store:
            # a cluster host's pods: the plugin joins the cluster as the host does (a
            # pynet-overlay conflist's clusterStore and advertiseAddress, kubelet's node)
            plugin["pynet"].setdefault("clusterStore", cfg.cluster_store)
            plugin["pynet"].setdefault("advertiseAddress", cfg.advertise_address)
        if os.environ.get("PYNET_IPTABLES_BACKEND"):
            # the worker's iptables backend (legacy in a legacy run): the plugins get a clean
            # environment, so the conflist carries it -- one backend per instance, as on a host
            plugin["pynet"]["iptablesBackend"] = os.environ["PYNET_IPTABLES_BACKEND"]
        conflist = {"cniVersion": cni["cniVersion"], "name": network, "plugins": [plugin]}
        rc: dict = {}
        if address:
            rc["ips"] = [f"{address}/{prefixlen}" if prefixlen else address]
        if mac:
            rc["mac"] = mac
        if publish:
            rc["portMappings"] = [
                {"hostPort": p["host_port"], "containerPort": p["container_port"],
                 "protocol": p["proto"], **({"hostIP": p["host_ip"]} if p.get("host_ip") else {})}
                for p in publish]
        att = cniexec.Attachment(container_id=object_id(self.instance, "cni", name),
                                 netns=netns_path, ifname=ifname, conflist=conflist,
                                 runtime_config=rc)
        self.cni_atts.append(att)     # before ADD: a failed ADD is DELed too, as runtimes do
        result = cniexec.add(self.cni_path, att)
        info = cniexec.interface_of(result, ifname, netns_path)
        if not info["addresses"]:
            raise RuntimeError(f"CNI ADD for {name} returned no address: {result}")
        cidr = next((a for a in info["addresses"] if ":" not in a), info["addresses"][0])
        net = self.controller.network(network)
        return {"network": network, "ifname": ifname, "address": cidr,
                "mac": info["mac"], "gateway": (info["gateway"] or "").split("/")[0],
                "subnet": str(ipaddress.ip_interface(cidr).network),
                "bridge": (net.driver_state or {}).get("bridge", ""),
                "created_by": net.created_by, "ports": publish or [],
                "host_ifaces": info["host_ifaces"], "result": result}

    def _cni_teardown(self, step) -> None:
        from pynet.scenario import cniexec

        for att in reversed(self.cni_atts):
            step(f"CNI DEL {att.ifname} of {os.path.basename(att.netns)}",
                 cniexec.delete, self.cni_path, att)
        names = {att.conflist["name"] for att in self.cni_atts}
        self.cni_atts = []
        # Networks the first ADD made are kept after the last DEL (CNI
        # semantics); the operator removes them, `pynet network rm`'s way.
        c = self.controller
        for name in sorted(names):
            if name in self.nets:
                continue              # made by the runner: removed below
            try:
                net = c.network(name)
            except Exception:  # noqa: BLE001 - never made (ADD failed early)
                continue
            step(f"delete CNI network {name}", c.delete_network, net.id, True)
            for d in net.ipv4 + net.ipv6:
                if d.pool_id:
                    step("release CNI pool", c.release_pool, d.pool_id)

    def leftovers(self) -> list[str]:
        """What this host's pynet instance still has in the kernel: links
        beyond lo/eth0, iptables rules or chains under its chain prefix."""
        import subprocess

        out = [f"link {n}" for n in self.links() if n not in ("lo", "eth0")]
        if self.chain_prefix:
            for tool in ("iptables-save", "ip6tables-save"):
                try:
                    p = subprocess.run([tool], capture_output=True, text=True, timeout=30)
                except (OSError, subprocess.TimeoutExpired):
                    continue
                out += [f"{tool.split('-')[0]}: {line}" for line in p.stdout.splitlines()
                        if self.chain_prefix in line]
        return out

    def firewall_diff(self) -> str:
        """``pynet firewall diff`` of this host's instance, as the CLI computes it: the store's
        records (the CNI binaries' too) against this namespace's kernel rules; '' = in sync."""
        from pynet import root

        if self.controller is None or self.controller.firewall is None:
            return ""
        # its own store handle, as the CLI opens one (front ends never reach into the controller's)
        store = root.open_store(self.config, create=False)
        try:
            reader = root.build_reader(self.config, store)
            return root.build_firewall(self.config, store).diff(reader.networks(), reader.endpoints())
        finally:
            store.close()

    # ------------------------------------------------------------- teardown
    def teardown(self) -> dict:
        """Undo everything the pynet way, each step tolerating what is gone;
        then report what the store still holds (should be nothing)."""
        from pynet.cnm import sandbox

        problems = []
        c = self.controller
        if c is None:
            return {"problems": [], "leftovers": []}

        def step(what, fn, *a, **kw):
            try:
                fn(*a, **kw)
            except Exception as e:  # noqa: BLE001 - collected, teardown goes on
                problems.append(f"{what}: {type(e).__name__}: {e}")

        self._cni_teardown(step)
        for ep in reversed(self.eps):
            if ep.get("external"):
                step("revoke", c.revoke_external_connectivity, ep["nid"], ep["eid"])
            if ep.get("ifname"):
                step(f"detach {ep['sandbox']}", sandbox.detach, ep["netns"], ep["ifname"])
            if ep.get("created"):
                step(f"leave {ep['sandbox']}", c.leave, ep["nid"], ep["eid"])
                step(f"delete endpoint {ep['sandbox']}", c.delete_endpoint, ep["nid"], ep["eid"])
            if ep.get("address"):
                step("release address", c.release_address, ep["pool_id"], ep["address"],
                     ep.get("holder", ""))
        self.eps = []
        for rec in reversed(list(self.nets.values())):
            if rec.get("created"):
                step(f"delete network {rec['name']}", c.delete_network, rec["id"], True)
            for pool_id, gw in rec["gateways"]:
                step("release gateway", c.release_address, pool_id, gw)
            for pool_id in rec["pools"]:
                step("release pool", c.release_pool, pool_id)
        self.nets = {}
        leftovers = []
        try:
            leftovers = c.records_left()
        except Exception as e:  # noqa: BLE001
            problems.append(f"store check: {e}")
        if c.firewall is not None and hasattr(c.firewall, "remove_all"):
            step("firewall", c.firewall.remove_all)
        try:
            leftovers += self.leftovers()
        except Exception as e:  # noqa: BLE001
            problems.append(f"kernel check: {e}")
        try:
            c.close()
        except Exception:  # noqa: BLE001
            pass
        self.torn_down = True
        return {"problems": problems, "leftovers": leftovers}

    def close(self) -> None:
        try:
            if self.controller is not None and not self.torn_down:
                try:
                    self.teardown()
                except Exception:  # noqa: BLE001
                    log.exception("teardown on close")
            if self.state_dir:
                shutil.rmtree(self.state_dir, ignore_errors=True)
            super().close()
        finally:
            self.leave_cluster(revoke=True)


def _prefixlen(subnet: str) -> int:
    return ipaddress.ip_network(subnet).prefixlen
