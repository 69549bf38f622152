"""The ``pynet`` command.

    pynet [--state-dir DIR] [--plugin-name NAME] [--socket PATH] [--json] COMMAND

    pynet daemon                        serve the Docker plugin (foreground)
    pynet network ls                    ID, NAME, DRIVER, SUBNETS, ENDPOINTS
    pynet network inspect ID|NAME       JSON
    pynet network rm [--force] ID|NAME  tear down kernel objects and records
    pynet ipam ls                       pools with used / free addresses
    pynet endpoint ls [--network N]
    pynet port CONTAINER|ENDPOINT       "80/tcp -> 0.0.0.0:18088"
    pynet firewall show                 the desired rules (iptables-restore text per family)
    pynet firewall diff                 desired vs the kernel's pynet rules and the records skipped as
                                        unrenderable ("# skipped ..."); exit 1 if out of sync
    pynet firewall flush                remove this instance's (--chain-prefix) rules and chains
    pynet cni install [--bin-dir DIR]   CNI binaries pynet-bridge/-macvlan/-ipam (+ example conflists)
    pynet cni uninstall | ls            remove the binaries | list CNI attachments
    pynet sandbox create --network none|host|container:ID|NETWORK [-p HOST:CONT[/PROTO]]
                                        prints the new sandbox's ID
    pynet sandbox ls                    ID, MODE, NAMESPACE, SHARES, ENDPOINTS
    pynet sandbox exec ID -- CMD...     run CMD in the sandbox's network namespace
    pynet sandbox connect ID NETWORK    another interface (ethN) on NETWORK
    pynet sandbox rm [-f] ID...         refused while others share its namespace, unless -f
    pynet doctor [--cluster-store URL]  checks what breaks container networking (exit 1 if any fails)
    pynet host ls [--cluster-store URL] the cluster's hosts (alive), their VTEPs and overlay networks

The CLI reads the daemon's store (SQLite in the state directory) directly.
Importing this module stays light: Flask and waitress load only for
``daemon``, pyroute2 only for commands that change the kernel.
Errors are one line on stderr (``pynet: error: ...``) and exit code 1.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Optional

from pynet import errors
from pynet.config import Config

PROG = "pynet"
DOCKER = "/usr/bin/docker"
DOCKER_TIMEOUT = 3.0


class CliError(Exception):
    """A user-facing error: one line, exit code 1."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one readable line, exit 1
        raise CliError(f"{message} (see '{self.prog} --help')")


# ---------------------------------------------------------------- arguments
def _global_flags(defaults: bool) -> argparse.ArgumentParser:
    """The global flags, accepted before and after the subcommand."""
    p = argparse.ArgumentParser(add_help=False,
                                argument_default=None if defaults else argparse.SUPPRESS)
    g = p.add_argument_group("global options")
    g.add_argument("--state-dir", help="state directory (env PYNET_STATE_DIR; default /var/lib/pynet)")
    g.add_argument("--plugin-name", help="plugin name (env PYNET_PLUGIN_NAME; default pynet)")
    g.add_argument("--chain-prefix", help="iptables chain prefix (env PYNET_CHAIN_PREFIX; default PYNET)")
    g.add_argument("--firewall-backend",
                   help="firewall backend (env PYNET_FIREWALL_BACKEND; default iptables, "
                        "which coexists with the host's dockerd)")
    g.add_argument("--socket", dest="socket_path",
                   help="plugin socket (env PYNET_SOCKET; default /run/docker/plugins/<name>.sock)")
    g.add_argument("--json", action="store_true", default=False if defaults else argparse.SUPPRESS,
                   help="print JSON instead of tables")
    return p


def build_parser() -> argparse.ArgumentParser:
    common = _global_flags(defaults=False)
    parser = _Parser(prog=PROG, parents=[_global_flags(defaults=True)],
                     description="pynet: container networking (Docker remote plugin, CNI).")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    p = sub.add_parser("daemon", parents=[common], help="run the Docker plugin daemon (foreground)")
    p.add_argument("--log-format", choices=("text", "json"), default=None,
                   help="log lines as text (default) or one JSON object each (env PYNET_LOG_FORMAT)")
    p.add_argument("--metrics-socket", metavar="PATH", default=None,
                   help="Prometheus metrics on this unix socket, mode 0600 (env PYNET_METRICS_SOCKET; "
                        "default /run/pynet/<plugin name>-metrics.sock)")
    p.add_argument("--metrics-listen", metavar="HOST:PORT", default=None,
                   help="also serve the metrics over HTTP on this TCP address, e.g. 127.0.0.1:9377 "
                        "(env PYNET_METRICS_LISTEN; default: none)")
    _cluster_flags(p)
    p.set_defaults(func=cmd_daemon)

    net = sub.add_parser("network", parents=[common], help="networks")
    nsub = net.add_subparsers(dest="subcommand", metavar="SUBCOMMAND", parser_class=_Parser)
    nsub.required = True
    p = nsub.add_parser("ls", parents=[common], help="list networks")
    p.add_argument("--no-docker", action="store_true",
                   help="do not ask docker for network names")
    p.set_defaults(func=cmd_network_ls)
    p = nsub.add_parser("inspect", parents=[common], help="show a network as JSON")
    p.add_argument("network", metavar="ID|NAME")
    _cluster_flags(p)       # an overlay's cluster-wide part (VNI, hosts, remote endpoints)
    p.set_defaults(func=cmd_network_inspect)
    p = nsub.add_parser("rm", parents=[common], help="remove a network (kernel and store)")
    p.add_argument("networks", metavar="ID|NAME", nargs="+")
    p.add_argument("-f", "--force", action="store_true",
                   help="also remove the network's endpoints")
    p.set_defaults(func=cmd_network_rm)

    ipam = sub.add_parser("ipam", parents=[common], help="address pools")
    isub = ipam.add_subparsers(dest="subcommand", metavar="SUBCOMMAND", parser_class=_Parser)
    isub.required = True
    p = isub.add_parser("ls", parents=[common], help="list pools with used/free addresses")
    p.set_defaults(func=cmd_ipam_ls)

    ep = sub.add_parser("endpoint", parents=[common], help="endpoints")
    esub = ep.add_subparsers(dest="subcommand", metavar="SUBCOMMAND", parser_class=_Parser)
    esub.required = True
    p = esub.add_parser("ls", parents=[common], help="list endpoints")
    p.add_argument("--network", metavar="ID|NAME", help="only this network's endpoints")
    p.set_defaults(func=cmd_endpoint_ls)

    p = sub.add_parser("port", parents=[common],
                       help="published ports of a container or endpoint")
    p.add_argument("target", metavar="CONTAINER|ENDPOINT")
    p.set_defaults(func=cmd_port)

    fw = sub.add_parser("firewall", parents=[common], help="iptables rules of this instance")
    fsub = fw.add_subparsers(dest="subcommand", metavar="SUBCOMMAND", parser_class=_Parser)
    fsub.required = True
    p = fsub.add_parser("show", parents=[common], help="print the desired rules")
    p.set_defaults(func=cmd_firewall_show)
    p = fsub.add_parser("diff", parents=[common],
                        help="desired vs actual pynet rules (exit 1 when they differ)")
    p.set_defaults(func=cmd_firewall_diff)
    p = fsub.add_parser("flush", parents=[common],
                        help="remove every rule and chain of this chain prefix "
                             "(a running daemon puts them back on its next re-check)")
    p.set_defaults(func=cmd_firewall_flush)

    sbx = sub.add_parser("sandbox", parents=[common],
                         help="sandboxes: netns, none, host and container modes")
    ssub = sbx.add_subparsers(dest="subcommand", metavar="SUBCOMMAND", parser_class=_Parser)
    ssub.required = True
    p = ssub.add_parser("create", parents=[common], help="create a sandbox, print its ID")
    p.add_argument("--network", default="none", metavar="none|host|container:ID|NETWORK",
                   help="the network mode (default none)")
    p.add_argument("-p", "--publish", action="append", default=[], metavar="HOST:CONT[/PROTO]",
                   help="publish a port (netns mode)")
    p.add_argument("--ip", default="", help="IPv4 address on the network")
    p.set_defaults(func=cmd_sandbox_create)
    p = ssub.add_parser("ls", parents=[common], help="list sandboxes")
    p.set_defaults(func=cmd_sandbox_ls)
    p = ssub.add_parser("exec", parents=[common], help="run a command in a sandbox")
    p.add_argument("sandbox", metavar="ID")
    p.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD")
    p.set_defaults(func=cmd_sandbox_exec)
    p = ssub.add_parser("connect", parents=[common], help="connect a sandbox to a network")
    p.add_argument("sandbox", metavar="ID")
    p.add_argument("network", metavar="NETWORK")
    p.add_argument("-p", "--publish", action="append", default=[], metavar="HOST:CONT[/PROTO]")
    p.add_argument("--ip", default="", help="IPv4 address on the network")
    p.set_defaults(func=cmd_sandbox_connect)
    p = ssub.add_parser("rm", parents=[common], help="remove sandboxes")
    p.add_argument("sandboxes", metavar="ID", nargs="+")
    p.add_argument("-f", "--force", action="store_true",
                   help="also remove the sandboxes sharing its namespace")
    p.set_defaults(func=cmd_sandbox_rm)

    # The scenario runner parses its own arguments; scapy loads only when a
    # scenario runs, never on import.
    from pynet.scenario import cli as scenario_cli
    scenario_cli.add_parser(sub)
    _cni_parsers(sub, common)
    _host_parsers(sub, common)
    from pynet import doctor
    doctor.add_parser(sub, common, _Parser)
    return parser


def _host_parsers(sub, common) -> None:
    """``pynet host ls``: the cluster's members (overlay networks)."""
    host = sub.add_parser("host", parents=[common], help="cluster members (overlay networks)")
    hsub = host.add_subparsers(dest="subcommand", metavar="SUBCOMMAND", parser_class=_Parser)
    hsub.required = True
    p = hsub.add_parser("ls", parents=[common], help="hosts alive in the cluster, their VTEPs and networks")
    _cluster_flags(p)
    p.set_defaults(func=cmd_host_ls)


def cmd_host_ls(args, config: Config) -> int:
    """Every host whose lease is alive (a host whose lease expired is not
    listed), its VTEP address and the overlay networks it has endpoints on."""
    from pynet import root

    cluster = root.cluster_store(config)
    if cluster is None:
        raise CliError("no cluster store: give --cluster-store etcd://HOST:PORT[,...] (or PYNET_CLUSTER_STORE)")
    try:
        rows = cluster.hosts_view()
    finally:
        cluster.close()
    if args.json:
        _print_json(rows)
    else:
        _print_table(["HOST", "NAME", "VTEP", "LEASE", "NETWORKS"],
                     [[r["host"] + (" *" if r["self"] else ""), r["name"], r["address"], r["lease"],
                       ", ".join(r["networks"])] for r in rows])
    return 0


def _cni_parsers(sub, common) -> None:
    """``pynet cni install|uninstall|ls`` (the CNI front end)."""
    cni = sub.add_parser("cni", parents=[common], help="CNI plugin binaries")
    csub = cni.add_subparsers(dest="subcommand", metavar="SUBCOMMAND", parser_class=_Parser)
    csub.required = True
    p = csub.add_parser("install", parents=[common],
                        help="install pynet-bridge, pynet-macvlan, pynet-ipam and example conflists")
    p.add_argument("--bin-dir", default="/opt/cni/bin", help="CNI bin dir (default /opt/cni/bin)")
    p.add_argument("--conf-dir", default="/etc/cni/net.d",
                   help="where the example conflists (*.example) go (default /etc/cni/net.d)")
    p.add_argument("--no-examples", action="store_true", help="do not write example conflists")
    from pynet.cni import install as cni_install
    cni_install.add_arguments(p)
    p.set_defaults(func=cmd_cni_install)
    p = csub.add_parser("uninstall", parents=[common], help="remove the plugin binaries")
    p.add_argument("--bin-dir", default="/opt/cni/bin")
    p.set_defaults(func=cmd_cni_uninstall)
    p = csub.add_parser("ls", parents=[common], help="attachments made through CNI")
    p.set_defaults(func=cmd_cni_ls)


def _cluster_flags(p) -> None:
    """The daemon's cluster settings (overlay networks; pynet.cluster)."""
    g = p.add_argument_group("cluster (overlay networks)")
    g.add_argument("--cluster-store", metavar="etcd://HOST:PORT[,...][/NS]",
                   help="the cluster store (env PYNET_CLUSTER_STORE; default: none, one host)")
    g.add_argument("--advertise-address", metavar="IP",
                   help="this host's underlay (VTEP) address (env PYNET_ADVERTISE_ADDRESS; "
                        "default: the address of the interface holding the default route)")
    g.add_argument("--host-id", help="this host's ID in the cluster (env PYNET_HOST_ID; default: kept "
                                     "in the state dir)")
    g.add_argument("--cluster-ttl", dest="cluster_lease_ttl", type=int, metavar="SECONDS",
                   help="TTL of this host's lease, renewed every TTL/3 (env PYNET_CLUSTER_TTL; default 15)")
    g.add_argument("--vni-range", metavar="FIRST-LAST",
                   help="VNIs overlay networks are given (env PYNET_VNI_RANGE; default 4096-16777215)")
    g.add_argument("--vxlan-port", type=int, metavar="PORT",
                   help="UDP port of VXLAN (env PYNET_VXLAN_PORT; default 4789)")


CLUSTER_FLAGS = ("cluster_store", "advertise_address", "host_id", "cluster_lease_ttl", "vni_range",
                 "vxlan_port")


def config_from_args(args) -> Config:
    return Config.from_env(state_dir=getattr(args, "state_dir", None),
                           plugin_name=getattr(args, "plugin_name", None),
                           socket_path=getattr(args, "socket_path", None),
                           chain_prefix=getattr(args, "chain_prefix", None),
                           firewall_backend=getattr(args, "firewall_backend", None),
                           **{k: getattr(args, k, None) for k in CLUSTER_FLAGS})


# ------------------------------------------------------------------ helpers
def _store(config: Config):
    """The daemon's store (the composition root's local store), opened
    read/write (SQLite serialises writers); never creates a state dir."""
    from pynet import root

    path = root.store_file(config.state_dir)
    if not os.path.exists(path):
        if not os.path.isdir(config.state_dir):
            raise CliError(f"state directory {config.state_dir} does not exist "
                           "(is the daemon set up? see --state-dir)")
    try:
        return root.open_store(config, create=False)
    except Exception as e:  # sqlite3.Error, PermissionError
        raise CliError(f"cannot open the store in {config.state_dir}: {e}") from None


def _reader(config: Config):
    """A Controller for reading: store only, no kernel interfaces."""
    from pynet import root

    return root.build_reader(config, _store(config))


def _print_table(headers: list[str], rows: list[list[Any]], out=None) -> None:
    out = out or sys.stdout
    rows = [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]
    for r in [headers] + rows:
        line = "   ".join(c.ljust(w) for c, w in zip(r, widths))
        print(line.rstrip(), file=out)


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, sort_keys=False))


def _docker() -> Optional[str]:
    import shutil

    return DOCKER if os.path.exists(DOCKER) else shutil.which("docker")


def _docker_network_names(timeout: float = DOCKER_TIMEOUT) -> dict[str, str]:
    """Docker never sends the network name to a remote driver; ask docker,
    best effort (a missing or slow docker gives no names)."""
    import subprocess

    docker = _docker()
    if not docker:
        return {}
    try:
        res = subprocess.run([docker, "network", "ls", "--no-trunc", "--format", "{{.ID}} {{.Name}}"],
                             capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.SubprocessError):
        return {}
    if res.returncode != 0:
        return {}
    names = {}
    for line in res.stdout.splitlines():
        parts = line.split(None, 1)
        if len(parts) == 2:
            names[parts[0]] = parts[1].strip()
    return names


def _docker_endpoint_ids(container: str, timeout: float = DOCKER_TIMEOUT) -> list[str]:
    """A container's endpoint IDs (``docker inspect``), best effort."""
    import subprocess

    docker = _docker()
    if not docker:
        return []
    try:
        res = subprocess.run([docker, "inspect", "--type", "container", "--format",
                              "{{json .NetworkSettings.Networks}}", container],
                             capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.SubprocessError):
        return []
    if res.returncode != 0:
        return []
    try:
        nets = json.loads(res.stdout.strip() or "{}") or {}
    except ValueError:
        return []
    return [n.get("EndpointID") for n in nets.values()
            if isinstance(n, dict) and n.get("EndpointID")]


def _subnets(net) -> list[str]:
    return [d.pool for d in net.ipv4 + net.ipv6]


def _port_line(pm) -> str:
    return f"{pm.container_port}/{pm.proto} -> {pm.host_ip or '0.0.0.0'}:{pm.host_port}"


# ----------------------------------------------------------------- commands
def cmd_daemon(args, config: Config) -> int:
    from pynet import logfmt
    from pynet.daemon import run_daemon
    from pynet.plugin_api.server import SocketBusy

    logfmt.install(logfmt.choose(getattr(args, "log_format", None)))
    metrics_socket, metrics_listen = _metrics_settings(args)
    try:
        run_daemon(config, metrics_socket=metrics_socket, metrics_listen=metrics_listen)
    except SocketBusy as e:
        raise CliError(str(e)) from None
    return 0


def _metrics_settings(args) -> tuple[str, Optional[tuple[str, int]]]:
    """--metrics-socket / --metrics-listen (or their PYNET_* variables), checked before the
    daemon starts: a bad value is one line and nothing is touched."""
    from pynet import metrics, validate

    sock = getattr(args, "metrics_socket", None) or os.environ.get(metrics.SOCKET_ENV) or ""
    if sock:
        sock = validate.abs_path(os.path.abspath(sock) if sock.isprintable() else sock, "metrics socket")
        if len(sock.encode("utf-8", "surrogateescape")) > 107:  # sun_path is 108 bytes with its NUL
            raise errors.InvalidParameter(f"invalid metrics socket {sock!r}: longer than a unix socket "
                                          "path may be (107 bytes)")
    flag = getattr(args, "metrics_listen", None)
    listen = metrics.parse_listen(flag or os.environ.get(metrics.LISTEN_ENV) or None,
                                  "--metrics-listen" if flag else metrics.LISTEN_ENV)
    return sock, listen


def cmd_network_ls(args, config: Config) -> int:
    c = _reader(config)
    nets = c.networks()
    counts: dict[str, int] = {}
    for ep in c.endpoints():
        counts[ep.network_id] = counts.get(ep.network_id, 0) + 1
    docker_names: Optional[dict] = None
    if not args.no_docker and any(not n.name for n in nets):
        docker_names = _docker_network_names()
    rows = []
    for n in sorted(nets, key=lambda n: (n.name or "", n.id)):
        name = n.name or (docker_names or {}).get(n.id, "")
        rows.append({"id": n.id, "name": name, "driver": n.driver, "scope": _scope(n.driver),
                     "subnets": _subnets(n), "endpoints": counts.get(n.id, 0),
                     "created_by": n.created_by})
    if args.json:
        _print_json(rows)
    else:
        _print_table(["ID", "NAME", "DRIVER", "SCOPE", "SUBNETS", "ENDPOINTS"],
                     [[r["id"][:12], r["name"], r["driver"], r["scope"], ",".join(r["subnets"]),
                       r["endpoints"]] for r in rows])
    return 0


def _scope(driver: str) -> str:
    """``local`` or ``global`` (a network spanning the cluster's hosts: the overlay), as the
    driver class says (nothing is built)."""
    from pynet import drivers

    try:
        return getattr(drivers.driver_class(driver), "scope", "local")
    except (KeyError, ImportError, AttributeError):
        return "local"


def _overlay_view(net, config: Config) -> dict:
    """An overlay's cluster-wide part for ``network inspect``: VNI, hosts, remote endpoints
    (read from the cluster store; the reason instead when there is none or it fails)."""
    from pynet import root

    st = net.driver_state or {}
    out = {"vni": st.get("vni"), "vxlan": st.get("vxlan"), "port": st.get("port"),
           "local": st.get("local"), "cluster_network": st.get("cluster", "")}
    cluster = root.cluster_store(config)
    if cluster is None:
        return dict(out, error="no cluster store given (--cluster-store or PYNET_CLUSTER_STORE): "
                               "hosts and remote endpoints unknown")
    try:
        view = cluster.network_view(out["cluster_network"] or net.name or net.id)
    except errors.PynetError as e:
        return dict(out, error=f"cluster store: {e}")
    finally:
        cluster.close()
    return dict(out, vni=out["vni"] if out["vni"] is not None else view["vni"], hosts=view["hosts"],
                remote_endpoints=view["remote_endpoints"])


def cmd_network_inspect(args, config: Config) -> int:
    c = _reader(config)
    net = c.network(args.network)
    out = net.to_json()
    if not out.get("name"):
        out["name"] = _docker_network_names().get(net.id, "")
    out["scope"] = _scope(net.driver)
    out["endpoints"] = [e.to_json() for e in c.endpoints(net.id)]
    if out["scope"] == "global":
        out["overlay"] = _overlay_view(net, config)
    _print_json(out)
    return 0


def cmd_network_rm(args, config: Config) -> int:
    from pynet import root

    c = root.build_controller(config, store=_store(config))
    failed = 0
    for ref in args.networks:
        try:
            net = c.network(ref)
            c.delete_network(net.id, force_endpoints=args.force)
        except errors.PynetError as e:
            print(f"{PROG}: error: {e}", file=sys.stderr)
            failed += 1
            continue
        print(net.id)
    return 1 if failed else 0


def cmd_ipam_ls(args, config: Config) -> int:
    from pynet import root

    pools = root.build_ipam(config, _store(config)).list_pools()
    if args.json:
        _print_json(pools)
    else:
        _print_table(["POOL ID", "ADDRESS SPACE", "POOL", "SUB POOL", "V6", "SIZE", "USED", "FREE"],
                     [[p.get("id"), p.get("address_space"), p.get("pool"), p.get("sub_pool") or "",
                       "yes" if p.get("v6") else "no", p.get("size"), p.get("used"), p.get("free")]
                      for p in pools])
    return 0


def cmd_endpoint_ls(args, config: Config) -> int:
    c = _reader(config)
    network_id = c.network(args.network).id if args.network else None
    eps = c.endpoints(network_id)
    if args.json:
        _print_json([e.to_json() for e in eps])
    else:
        _print_table(["ID", "NETWORK", "ADDRESS", "ADDRESS IPV6", "MAC", "SANDBOX", "PORTS"],
                     [[e.id[:12], e.network_id[:12], e.address, e.address_v6, e.mac,
                       e.sandbox_key, ", ".join(_port_line(p) for p in e.ports)] for e in eps])
    return 0


def cmd_port(args, config: Config) -> int:
    c = _reader(config)
    try:
        eps = [c.find_endpoint(args.target)]
    except errors.EndpointNotFound:
        ids = _docker_endpoint_ids(args.target)
        eps = [e for e in c.endpoints() if e.id in ids]
        if not eps:
            raise CliError(f"no endpoint or container {args.target!r} known to pynet") from None
    ports = sorted((p for e in eps for p in e.ports),
                   key=lambda p: (p.container_port, p.proto, p.host_ip, p.host_port))
    if args.json:
        _print_json([{"endpoint": e.id, "ports": [vars(p) for p in e.ports]} for e in eps])
    else:
        for p in ports:
            print(_port_line(p))
    return 0


def _bridge_firewall(config: Config, with_store: bool = True):
    from pynet import root

    return root.build_firewall(config, _store(config) if with_store else None)


def _store_state(config: Config):
    c = _reader(config)
    return c.networks(), c.endpoints()


def cmd_firewall_show(args, config: Config) -> int:
    problems: dict = {}
    out = _bridge_firewall(config).show(*_store_state(config), problems=problems)
    if args.json:
        _print_json(out)
    else:
        for _, why in sorted(problems.items()):  # comments: the text stays a restore file
            print(f"# skipped {why}")
        for fam, text in out.items():
            if text:
                print(f"# {fam}")
                sys.stdout.write(text)
    return 0


def cmd_firewall_diff(args, config: Config) -> int:
    problems: dict = {}
    text = _bridge_firewall(config).diff(*_store_state(config), problems=problems)
    if args.json:
        _print_json({"in_sync": not text, "diff": text, "problems": problems})
    elif text:
        sys.stdout.write(text)
    return 1 if text else 0


def cmd_firewall_flush(args, config: Config) -> int:
    _bridge_firewall(config, with_store=False).remove_all()
    import shutil

    if config.firewall_backend != "nftables" and shutil.which("nft"):
        # whichever backend the instance ran on: its nft tables too (the nftables
        # backend's remove_all takes the iptables rules of the prefix with it)
        from pynet.firewall.nft import NftFirewall
        try:
            nft = NftFirewall(config.chain_prefix, iptables=False)
        except errors.InvalidParameter:
            return 0  # a prefix nft cannot name a table after never had one
        nft.remove_all()
    return 0


# ---------------------------------------------------------------- sandboxes
def _sandboxes(config: Config, kernel: bool = True):
    from pynet.cnm.sandboxes import SandboxManager

    if kernel:
        from pynet import root

        c = root.build_controller(config, store=_store(config))
    else:
        c = _reader(config)
    return SandboxManager(c, instance=config.plugin_name)


def _publish_args(values: list[str]) -> list:
    """``8080:80``, ``8080:80/udp``, ``127.0.0.1:8080:80/tcp``, ``80`` (any host port)."""
    from pynet.cnm.model import PortMapping

    out = []
    for v in values:
        spec, _, proto = v.partition("/")
        parts = spec.split(":")
        try:
            if len(parts) == 1:
                hip, hp, cp = "", 0, int(parts[0])
            elif len(parts) == 2:
                hip, hp, cp = "", int(parts[0] or 0), int(parts[1])
            elif len(parts) == 3:
                hip, hp, cp = parts[0], int(parts[1] or 0), int(parts[2])
            else:
                raise ValueError
        except ValueError:
            raise CliError(f"invalid port mapping {v!r} (want [IP:]HOST:CONTAINER[/PROTO])") from None
        out.append(PortMapping(proto=(proto or "tcp").lower(), container_port=cp, host_port=hp,
                               host_ip=hip))
    return out


def cmd_sandbox_create(args, config: Config) -> int:
    mgr = _sandboxes(config)
    sb = mgr.create(args.network, publish=_publish_args(args.publish), address=args.ip)
    print(sb.id)
    return 0


def cmd_sandbox_ls(args, config: Config) -> int:
    mgr = _sandboxes(config, kernel=False)
    eps = {e.id: e for e in mgr.c.endpoints()}
    rows = []
    for sb in sorted(mgr.ls(), key=lambda s: s.id):
        attached = [eps[e] for e in sb.endpoints if e in eps]
        rows.append({"id": sb.id, "mode": sb.mode, "key": sb.key, "shares": sb.shares or "",
                     "endpoints": [{"id": e.id, "network": e.network_id, "ifname": e.ifname,
                                    "address": e.address, "address_v6": e.address_v6}
                                   for e in attached]})
    if args.json:
        _print_json(rows)
    else:
        _print_table(["ID", "MODE", "NAMESPACE", "SHARES", "ENDPOINTS"],
                     [[r["id"][:12], r["mode"], r["key"], r["shares"][:12],
                       ", ".join(f"{e['ifname']}={e['address'] or e['address_v6']}"
                                 f"@{e['network'][:12]}" for e in r["endpoints"])]
                      for r in rows])
    return 0


def cmd_sandbox_exec(args, config: Config) -> int:
    cmd = list(args.cmd)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if not cmd:
        raise CliError("no command given (pynet sandbox exec ID -- CMD ...)")
    argv = _sandboxes(config, kernel=False).exec_argv(args.sandbox, cmd)
    sys.stdout.flush()
    try:
        os.execvp(argv[0], argv)
    except OSError as e:
        raise CliError(f"cannot run {argv[0]}: {e.strerror or e}") from None
    return 127  # pragma: no cover


def cmd_sandbox_connect(args, config: Config) -> int:
    ep = _sandboxes(config).connect(args.sandbox, args.network,
                                    publish=_publish_args(args.publish), address=args.ip)
    print(ep.id)
    return 0


def cmd_sandbox_rm(args, config: Config) -> int:
    mgr = _sandboxes(config)
    failed = 0
    for ref in args.sandboxes:
        try:
            for sid in mgr.rm(ref, force=args.force):
                print(sid)
        except errors.PynetError as e:
            print(f"{PROG}: error: {' '.join(str(e).split())}", file=sys.stderr)
            failed += 1
    return 1 if failed else 0


# ---------------------------------------------------------------------- cni
def cmd_cni_install(args, config: Config) -> int:
    from pynet.cni.install import install
    from pynet.cni.install import install_from_args

    node = install_from_args(args, config)  # the default network, checked before any write
    state_dir = getattr(args, "state_dir", None) or os.environ.get("PYNET_STATE_DIR")
    for path in install(args.bin_dir, None if args.no_examples else args.conf_dir, state_dir=state_dir):
        print(path)
    for path in node():
        print(path)
    return 0


def cmd_cni_uninstall(args, config: Config) -> int:
    from pynet.cni.install import uninstall

    for path in uninstall(args.bin_dir):
        print(path)
    return 0


def cmd_cni_ls(args, config: Config) -> int:
    c = _reader(config)
    nets = {n.id: n for n in c.networks()}
    rows = [{"network": (nets[e.network_id].name if e.network_id in nets else "") or e.network_id[:12],
             "container_id": e.container_id, "ifname": e.ifname, "address": e.address,
             "address_v6": e.address_v6, "mac": e.mac, "netns": e.sandbox_key,
             "ports": [_port_line(p) for p in e.ports]}
            for e in c.endpoints() if e.container_id and (e.options or {}).get("pynet.cni")]
    if args.json:
        _print_json(rows)
    else:
        _print_table(["NETWORK", "CONTAINER", "IFNAME", "ADDRESS", "ADDRESS IPV6", "NETNS", "PORTS"],
                     [[r["network"], r["container_id"][:12], r["ifname"], r["address"], r["address_v6"],
                       r["netns"], ", ".join(r["ports"])] for r in rows])
    return 0


# --------------------------------------------------------------------- main
def main(argv: Optional[list[str]] = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        if args.command == "scenario":
            return int(args.func(args) or 0)
        config = config_from_args(args)
        return int(args.func(args, config) or 0)
    except CliError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 1
    except errors.PynetError as e:
        print(f"{PROG}: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
    except OSError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
