"""Where a CNI invocation works: state dir, daemon socket, chain prefix,
instance and whether to ask the daemon -- from the conflist's ``pynet``
object (it wins), then the environment, then the defaults shared with the
daemon::

    "pynet": {"stateDir": ..., "socket": ..., "chainPrefix": ..., "instance": ..., "daemon": true,
              "clusterStore": "etcd://h1:2379,...", "advertiseAddress": ..., "hostId": ...}
    PYNET_STATE_DIR  PYNET_SOCKET  PYNET_CHAIN_PREFIX  PYNET_PLUGIN_NAME  PYNET_CNI_DAEMON=0
    (the cluster keys: PYNET_CLUSTER_STORE ..., read by pynet.config)
    /var/lib/pynet   /run/docker/plugins/<instance>.sock

Read by the entry (``pynet.cni.main``, before the shim asks the daemon) and
by the dispatcher (``pynet.cni.dispatch``, in-process and in the daemon).
"""
from __future__ import annotations

from pynet import errors, validate
from pynet.cni import spec

DEFAULT_STATE_DIR = "/var/lib/pynet"


def pynet_settings(conf: dict, env: dict) -> dict:
    """State dir, socket, chain prefix, instance and whether to use the daemon,
    from the conflist's ``pynet`` object (top level or inside ``ipam``), the
    environment, then the defaults.

    Each value is checked here, at the door (``pynet.validate``), by content
    and not only by type: the chain prefix names iptables chains and tags
    every rule, the instance is part of every link alias, the socket's name
    and the IPAM holders, and the paths reach every os call (a NUL in one
    raises ValueError there).  A bad conflist value is code 7, a bad
    PYNET_* variable code 4."""
    own = {}
    if isinstance(conf, dict):
        ipam = conf.get("ipam") if isinstance(conf.get("ipam"), dict) else {}
        for src in (ipam.get("pynet"), conf.get("pynet")):
            if src is not None and not isinstance(src, dict):
                raise spec.CniError(spec.INVALID_CONFIG, "the pynet section must be an object")
            if isinstance(src, dict):
                own.update(src)
    if not isinstance(own.get("daemon", True), bool):
        raise spec.CniError(spec.INVALID_CONFIG, "pynet.daemon must be true or false")
    checks = {"stateDir": (validate.abs_path, "PYNET_STATE_DIR"),
              "socket": (validate.abs_path, "PYNET_SOCKET"),
              "chainPrefix": (validate.chain_prefix, "PYNET_CHAIN_PREFIX"),
              "instance": (validate.instance_name, "PYNET_PLUGIN_NAME"),
              "firewallBackend": (_firewall_backend, "PYNET_FIREWALL_BACKEND"),
              "iptablesBackend": (_iptables_backend, "PYNET_IPTABLES_BACKEND")}
    got = {}
    for key, (check, var) in checks.items():
        value, code, what = own.get(key), spec.INVALID_CONFIG, f"pynet.{key}"
        if value is None or value == "":
            value, code, what = env.get(var), spec.INVALID_ENVIRONMENT, var
        if value is None or value == "":
            continue
        try:
            got[key] = check(value, what)
        except errors.InvalidParameter as e:
            raise spec.CniError(code, str(e)) from None
    instance = got.get("instance") or "pynet"
    daemon = own.get("daemon", True)
    if str(env.get("PYNET_CNI_DAEMON", "1")).lower() in ("0", "false", "no", "off"):
        daemon = False
    cluster = {}
    for key, name in (("clusterStore", "cluster_store"), ("advertiseAddress", "advertise_address"),
                      ("hostId", "host_id")):
        value = own.get(key)
        if value is None or value == "":
            continue
        if not isinstance(value, str):
            raise spec.CniError(spec.INVALID_CONFIG, f"pynet.{key} must be a string")
        cluster[name] = value
    if cluster:
        from pynet.config import Config
        try:
            Config.from_env(**cluster)      # the daemon's rules, at the door
        except errors.InvalidParameter as e:
            raise spec.CniError(spec.INVALID_CONFIG, f"pynet section: {e}") from None
    return {
        "cluster": cluster,
        "state_dir": got.get("stateDir") or DEFAULT_STATE_DIR,
        "socket": got.get("socket") or f"/run/docker/plugins/{instance}.sock",
        "chain_prefix": got.get("chainPrefix"),
        "instance": instance,
        "firewall_backend": got.get("firewallBackend"),
        "iptables_backend": got.get("iptablesBackend"),
        "daemon": bool(daemon),
    }


def _firewall_backend(value, what):
    from pynet.config import firewall_backend

    return firewall_backend(value, what)


def _iptables_backend(value, what):
    from pynet.config import iptables_backend

    return iptables_backend(value, what)
