"""``pynet cni install``: the plugin binaries and example conflists.

Each binary is a two-line Python script run by this environment's
interpreter with ``-S`` (no site processing: ~15 ms less per call); the paths
site would have added -- the project and its site-packages -- are put on
``sys.path`` explicitly, so the binaries work from any CNI bin dir::

    #!/work/main/.venv/bin/python -S
    import sys; sys.path[:0] = ['/work/main', '/work/main/.venv/lib/python3.11/site-packages']
    from pynet.cni.main import main; main('bridge')
"""
from __future__ import annotations

import json
import os
import sys
import sysconfig
import tempfile

import pynet
import pynet.cni

DEFAULT_BIN_DIR = "/opt/cni/bin"
DEFAULT_CONF_DIR = "/etc/cni/net.d"


def wrapper_text(plugin: str, python: str | None = None) -> str:
    python = python or sys.executable
    root = os.path.dirname(os.path.dirname(os.path.abspath(pynet.__file__)))
    paths = [root]
    for key in ("purelib", "platlib"):
        p = sysconfig.get_paths().get(key)
        if p and p not in paths:
            paths.append(p)
    return (f"#!{python} -S\n"
            f"import sys; sys.path[:0] = {paths!r}\n"
            f"from pynet.cni.main import main; main({plugin!r})\n")


def _write(path: str, text: str, mode: int) -> None:
    d = os.path.dirname(path)
    fd, tmp = tempfile.mkstemp(prefix=".pynet-", dir=d)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, mode)
        os.replace(tmp, path)   # atomic: a runtime never execs a half-written file
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def example_conflists(state_dir: str | None = None) -> dict[str, dict]:
    """One example per driver (its ``cni_example``), then pynet-ipam under the
    reference bridge plugin."""
    from pynet import drivers

    pyn = {"stateDir": state_dir} if state_dir else None
    out = {}
    for name in drivers.names():
        ex = drivers.driver_class(name).cni_example()
        if ex is None:
            continue
        plugin = drivers.cni_plugin_name(name)
        out[f"{10 * (len(out) + 1)}-{plugin}.conflist.example"] = {
            "cniVersion": "1.1.0", "name": ex["name"],
            "plugins": [{"type": plugin, **json.loads(json.dumps(ex["plugin"]))}]}
    delegate = {
        "cniVersion": "1.0.0", "name": "pynet-ref",
        "plugins": [
            {"type": "bridge", "bridge": "pynet-ref0", "isGateway": True, "ipMasq": True,
             "ipam": {"type": "pynet-ipam", "ranges": [[{"subnet": "10.90.0.0/24"}]],
                      "routes": [{"dst": "0.0.0.0/0"}]}},
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }
    out[f"{10 * (len(out) + 1)}-pynet-ipam-with-reference-bridge.conflist.example"] = delegate
    if pyn:
        for c in out.values():
            for p in c["plugins"]:
                if p["type"].startswith("pynet-"):
                    p["pynet"] = dict(pyn)
                elif p.get("ipam", {}).get("type") == "pynet-ipam":
                    p["ipam"]["pynet"] = dict(pyn)
    return out


def install(bin_dir: str = DEFAULT_BIN_DIR, conf_dir: str | None = DEFAULT_CONF_DIR,
            state_dir: str | None = None, python: str | None = None) -> list[str]:
    """Write the binaries into ``bin_dir`` and the example conflists (named
    ``*.example``, so a runtime does not load them) into ``conf_dir``."""
    os.makedirs(bin_dir, mode=0o755, exist_ok=True)
    written = []
    for binary, plugin in pynet.cni.PLUGINS.items():
        path = os.path.join(bin_dir, binary)
        _write(path, wrapper_text(plugin, python), 0o755)
        written.append(path)
    if conf_dir:
        os.makedirs(conf_dir, mode=0o755, exist_ok=True)
        for name, conf in example_conflists(state_dir).items():
            path = os.path.join(conf_dir, name)
            _write(path, json.dumps(conf, indent=2) + "\n", 0o644)
            written.append(path)
    return written


def uninstall(bin_dir: str = DEFAULT_BIN_DIR) -> list[str]:
    removed = []
    for binary in pynet.cni.PLUGINS:
        path = os.path.join(bin_dir, binary)
        if os.path.exists(path):
            os.unlink(path)
            removed.append(path)
    return removed


# ------------------------------------------------------------ the default network (a node install)
# 10.77.0.0/16: clear of Docker's default pools (172.17-172.31/16, 192.168.0.0/16 in /20s), of
# Kubernetes' default service range (10.96.0.0/12), flannel's/kind's pod CIDR (10.244.0.0/16),
# k3s (10.42.0.0/16 pods, 10.43.0.0/16 services), Weave (10.32.0.0/12), CRI-O (10.85.0.0/16),
# containerd's and podman's default (10.88.0.0/16) and podman's pools (10.89.0.0/16 upward),
# MicroK8s (10.1.0.0/16), CGNAT (100.64.0.0/10: Tailscale) and of pynet's own example conflists
# (10.88-10.90).  One /16 per node: the network is node-local (no routes between nodes), so in a
# multi-node cluster pass each node its own podCIDR with --subnet.  install refuses a subnet
# that overlaps a route the host already has (a LAN in 10.77/16 would be shadowed).
DEFAULT_SUBNET = "10.77.0.0/16"
DEFAULT_NETWORK = "pynet"
DEFAULT_BRIDGE = "pynet0"
DEFAULT_CONFLIST = "10-pynet.conflist"   # sorts before 87-podman-bridge and most vendors' files
CONFLIST_VERSION = "1.0.0"   # the newest containerd 1.6's libcni knows


def default_conflist(subnet: str = DEFAULT_SUBNET, name: str = DEFAULT_NETWORK,
                     bridge: str = DEFAULT_BRIDGE, settings: dict | None = None) -> dict:
    """The node's default network: pynet-bridge (gateway, masquerade, hairpin and hostPorts in
    one plugin) with pynet-ipam; ``settings`` is the conflist's ``pynet`` section (state dir,
    instance, chain prefix, socket), omitted when empty so the PYNET_* defaults apply."""
    from pynet import validate
    from pynet.errors import InvalidParameter

    net = validate.ip_network(subnet, "subnet", version=4, strict=True)
    if net.prefixlen > 30:
        raise InvalidParameter(f"subnet {subnet}: want /30 or larger (a gateway and a pod)")
    if not validate_name(name):
        raise InvalidParameter(f"invalid network name {validate.shown(name)} "
                               "(letters, digits, '.', '_', '-')")
    validate.ifname(bridge, "bridge name")
    plugin = {"type": "pynet-bridge", "bridge": bridge, "isGateway": True, "isDefaultGateway": True,
              "ipMasq": True, "hairpinMode": True,
              "ipam": {"type": "pynet-ipam", "ranges": [[{"subnet": str(net)}]]},
              "capabilities": {"portMappings": True}}
    if settings:
        plugin["pynet"] = dict(settings)
    return {"cniVersion": CONFLIST_VERSION, "name": name, "plugins": [plugin]}


def validate_name(name: str) -> bool:
    import re

    # libcni's network-name rule
    return isinstance(name, str) and re.fullmatch(r"[a-zA-Z0-9][a-zA-Z0-9_.\-]*", name) is not None


def host_routes_v4(path: str = "/proc/net/route") -> list[tuple[str, str]]:
    """(destination network, device) of the host's IPv4 routes (main table), default excluded."""
    import ipaddress
    import socket
    import struct

    out = []
    try:
        with open(path) as f:
            lines = f.read().splitlines()[1:]
    except OSError:
        return out
    for line in lines:
        parts = line.split()
        if len(parts) < 8:
            continue
        dev, dest, mask = parts[0], parts[1], parts[7]
        try:
            d = socket.inet_ntoa(struct.pack("<I", int(dest, 16)))
            m = socket.inet_ntoa(struct.pack("<I", int(mask, 16)))
            net = ipaddress.ip_network(f"{d}/{m}", strict=False)
        except (ValueError, struct.error):
            continue
        if net.prefixlen:
            out.append((str(net), dev))
    return out


def check_subnet_free(conflist: dict, routes: list[tuple[str, str]] | None = None) -> None:
    """Refuse a default subnet that overlaps a route of the host (other than the network's
    own bridge, present after an earlier install)."""
    import ipaddress

    from pynet.errors import Conflict

    plugin = conflist["plugins"][0]
    subnet = ipaddress.ip_network(plugin["ipam"]["ranges"][0][0]["subnet"])
    for dst, dev in host_routes_v4() if routes is None else routes:
        if dev != plugin["bridge"] and ipaddress.ip_network(dst).overlaps(subnet):
            raise Conflict(f"subnet {subnet} overlaps the host's route {dst} dev {dev}: "
                           "choose another with --subnet")


def _write_atomic(path: str, text: str, mode: int) -> None:
    """Write ``path`` by rename from a temporary file in the same directory, synced first: a
    runtime watching the conf dir sees either no file or the whole one (the temporary name has
    no .conf/.conflist/.json extension, so libcni never loads it)."""
    d = os.path.dirname(path)
    fd, tmp = tempfile.mkstemp(prefix=".pynet-", suffix=".tmp", dir=d)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    try:
        dfd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def write_conflist(conf_dir: str, conflist: dict, filename: str = DEFAULT_CONFLIST,
                   force: bool = False) -> tuple[str, bool]:
    """Put ``conflist`` into ``conf_dir``; (path, written).  An existing file with the same
    network is left alone (an install container that runs again changes nothing); a different
    one is replaced only with ``force``."""
    from pynet.errors import Conflict

    os.makedirs(conf_dir, mode=0o755, exist_ok=True)
    path = os.path.join(conf_dir, filename)
    if os.path.lexists(path):
        try:
            with open(path) as f:
                same = json.load(f) == conflist
        except (OSError, ValueError):
            same = False
        if same:
            return path, False
        if not force:
            raise Conflict(f"{path} exists with other content; not replacing it (--force to do so)")
    _write_atomic(path, json.dumps(conflist, indent=2) + "\n", 0o644)
    return path, True


def prepare_default_network(conf_dir: str, conflist: dict | None = None, force: bool = False,
                            filename: str = DEFAULT_CONFLIST):
    """``pynet cni install``'s node part, checked before anything is written (a refusal leaves
    the bin and conf dirs as they were): the default network's subnet against the host's
    routes, an existing different conflist.  Returns ``write() -> paths written``."""
    from pynet.errors import Conflict

    conflist = conflist or default_conflist()
    check_subnet_free(conflist)
    path = os.path.join(conf_dir, filename)
    if not force and os.path.lexists(path):
        try:
            with open(path) as f:
                same = json.load(f) == conflist
        except (OSError, ValueError):
            same = False
        if not same:
            raise Conflict(f"{path} exists with other content; not replacing it (--force to do so)")

    def write() -> list[str]:
        path, written = write_conflist(conf_dir, conflist, filename, force=force)
        return [path] if written else []
    return write


def install_default_network(conf_dir: str, conflist: dict | None = None, force: bool = False,
                            filename: str = DEFAULT_CONFLIST) -> list[str]:
    """The default network's conflist into ``conf_dir``; the paths written."""
    return prepare_default_network(conf_dir, conflist, force, filename)()


def add_arguments(p) -> None:
    """``pynet cni install``'s flags for the default network (the CLI hooks them in)."""
    g = p.add_argument_group("default network (a conflist the runtime uses; --no-examples writes "
                             "nothing into the conf dir)")
    g.add_argument("--subnet", default=DEFAULT_SUBNET,
                   help=f"its IPv4 subnet (default {DEFAULT_SUBNET}; per node in a cluster)")
    g.add_argument("--network-name", default=DEFAULT_NETWORK, help=f"its name (default {DEFAULT_NETWORK})")
    g.add_argument("--bridge", default=DEFAULT_BRIDGE, help=f"its bridge (default {DEFAULT_BRIDGE})")
    g.add_argument("--conflist-name", default=DEFAULT_CONFLIST,
                   help=f"its file in the conf dir (default {DEFAULT_CONFLIST})")
    g.add_argument("--force", action="store_true", help="replace a different existing conflist")
    g.add_argument("--no-conflist", action="store_true", help="do not write the default network")


def install_from_args(args, config):
    """The default network from the CLI's arguments, checked now; returns ``write() -> paths``.  The conflist's ``pynet`` section carries
    only what was given explicitly (flags or PYNET_*), so a plain install follows the defaults
    the daemon and the binaries share."""
    if getattr(args, "no_examples", False) or getattr(args, "no_conflist", False):
        return lambda: []
    settings = {}
    explicit = {"state_dir": ("stateDir", "PYNET_STATE_DIR", config.state_dir),
                "plugin_name": ("instance", "PYNET_PLUGIN_NAME", config.plugin_name),
                "chain_prefix": ("chainPrefix", "PYNET_CHAIN_PREFIX", config.chain_prefix),
                "socket_path": ("socket", "PYNET_SOCKET", config.socket_path)}
    for attr, (key, env, value) in explicit.items():
        if getattr(args, attr, None) or os.environ.get(env):
            settings[key] = value   # config's value: already checked at the door
    conflist = default_conflist(args.subnet, args.network_name, args.bridge, settings)
    return prepare_default_network(args.conf_dir, conflist, force=args.force,
                                   filename=args.conflist_name)
