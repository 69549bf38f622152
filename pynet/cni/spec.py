"""The CNI specification (1.1.0) as data: versions, well-known error codes,
the environment, result conversion between versions, error JSON.

Stdlib only, plus the two leaf modules ``pynet.errors`` and ``pynet.validate``
(no other pynet imports): the shim answers VERSION and renders errors with it
before anything heavy is loaded.

Results are built in one internal shape -- the 1.x one::

    {"interfaces": [{"name", "mac", "sandbox"?, "mtu"?}],
     "ips": [{"address": "10.1.0.5/24", "gateway"?: "10.1.0.1", "interface"?: 2}],
     "routes": [{"dst": "0.0.0.0/0", "gw"?: "10.1.0.1"}],
     "dns": {...}}

and converted on the way out to whatever ``cniVersion`` the configuration
asked for (``to_version``): 0.3.0/0.3.1/0.4.0 add ``"version": "4"|"6"`` to
each IP, 1.0.0 drops it, 1.1.0 may carry an interface ``mtu``.  prevResults
arrive in any of those shapes and are normalised with ``from_any``.
"""
from __future__ import annotations

import ipaddress
import json
from typing import Any, Optional

from pynet import errors, validate

SUPPORTED_VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
LATEST = "1.1.0"

# -- well-known error codes (SPEC.md "Error" section) ---------------------------------------
INCOMPATIBLE_VERSION = 1
UNSUPPORTED_FIELD = 2
UNKNOWN_CONTAINER = 3
INVALID_ENVIRONMENT = 4
IO_FAILURE = 5
DECODE_FAILURE = 6
INVALID_CONFIG = 7
TRY_AGAIN_LATER = 11
PLUGIN_NOT_AVAILABLE = 50
LIMITED_CONNECTIVITY = 51
INTERNAL = 999

COMMANDS = ("ADD", "DEL", "CHECK", "VERSION", "GC", "STATUS")

# containerd/libcni's rules (pkg/utils) for container IDs and network names
# are pynet.validate.CNI_ID, anchored at the true end (libcni's ``$`` is Go's:
# end of text; Python's also matches before a trailing newline).
IFNAMSIZ = validate.IFNAMSIZ


class CniError(Exception):
    """An error with a CNI code; rendered once, by the front end."""

    def __init__(self, code: int, msg: str, details: str = ""):
        super().__init__(msg)
        self.code = code
        self.msg = msg
        self.details = details


# -- versions -----------------------------------------------------------------------------
def version_tuple(v: str) -> tuple[int, int, int]:
    try:
        parts = [int(x) for x in str(v).split(".")]
        if len(parts) != 3 or any(p < 0 for p in parts):
            raise ValueError
        return parts[0], parts[1], parts[2]
    except (TypeError, ValueError):
        raise CniError(INCOMPATIBLE_VERSION, f"invalid CNI version {v!r}") from None


def check_version(v: Any) -> str:
    """The configuration's cniVersion, if pynet speaks it; error code 1 otherwise."""
    if v in (None, ""):
        raise CniError(INCOMPATIBLE_VERSION, "the configuration has no cniVersion")
    if not isinstance(v, str):
        raise CniError(INCOMPATIBLE_VERSION, f"invalid CNI version {v!r}")
    if v not in SUPPORTED_VERSIONS:
        version_tuple(v)
        raise CniError(INCOMPATIBLE_VERSION,
                       f"CNI version {v} is not supported (supported: {', '.join(SUPPORTED_VERSIONS)})")
    return v


def at_least(v: str, minimum: str) -> bool:
    return version_tuple(v) >= version_tuple(minimum)


def version_result(stdin: bytes) -> dict:
    """VERSION: stdin may be empty or ``{"cniVersion": ...}``."""
    requested = LATEST
    try:
        conf = json.loads(stdin or b"{}")
        if isinstance(conf, dict) and isinstance(conf.get("cniVersion"), str) and conf["cniVersion"]:
            requested = conf["cniVersion"]
    except (ValueError, RecursionError):  # VERSION answers whatever stdin holds
        pass
    return {"cniVersion": requested, "supportedVersions": list(SUPPORTED_VERSIONS)}


# -- input --------------------------------------------------------------------------------
def parse_conf(stdin: bytes) -> dict:
    if not stdin or not stdin.strip():
        raise CniError(DECODE_FAILURE, "no network configuration on stdin")
    try:
        conf = json.loads(stdin)
    except ValueError as e:
        raise CniError(DECODE_FAILURE, f"cannot decode the network configuration: {e}") from None
    if not isinstance(conf, dict):
        raise CniError(DECODE_FAILURE, "the network configuration is not a JSON object")
    try:
        validate.cni_id(conf.get("name"), "network name")
    except errors.InvalidParameter as e:
        raise CniError(INVALID_CONFIG, str(e)) from None
    return conf


def parse_cni_args(value: str) -> dict[str, str]:
    """``CNI_ARGS`` ``K1=V1;K2=V2`` -> dict."""
    out = {}
    for part in (value or "").split(";"):
        if not part:
            continue
        k, sep, v = part.partition("=")
        if not sep:
            raise CniError(INVALID_ENVIRONMENT, f"invalid CNI_ARGS pair {part!r}")
        out[k.strip()] = v.strip()
    return out


def check_container_id(cid: Any) -> str:
    if not cid:
        raise CniError(INVALID_ENVIRONMENT, "CNI_CONTAINERID is missing")
    try:
        return validate.cni_id(cid, "CNI_CONTAINERID")
    except errors.InvalidParameter as e:
        raise CniError(INVALID_ENVIRONMENT, str(e)) from None


def check_ifname(name: Any) -> str:
    if not name:
        raise CniError(INVALID_ENVIRONMENT, "CNI_IFNAME is missing")
    try:
        return validate.ifname(name, "interface name (CNI_IFNAME)")
    except errors.InvalidParameter as e:
        raise CniError(INVALID_ENVIRONMENT, str(e)) from None


class Args:
    """The CNI_* environment of one invocation, validated for its command."""

    def __init__(self, env: dict, command: str):
        self.command = command
        self.container_id = env.get("CNI_CONTAINERID", "")
        self.netns = env.get("CNI_NETNS", "")
        self.ifname = env.get("CNI_IFNAME", "")
        self.path = env.get("CNI_PATH", "")
        self.raw_args = env.get("CNI_ARGS", "")
        self.args = parse_cni_args(self.raw_args)
        if command in ("ADD", "DEL", "CHECK"):
            check_container_id(self.container_id)
            check_ifname(self.ifname)
        if command in ("ADD", "CHECK") and not self.netns:
            raise CniError(INVALID_ENVIRONMENT, f"CNI_NETNS is required for {command}")
        if command in ("ADD", "CHECK") and not self.netns.startswith("/"):
            raise CniError(INVALID_ENVIRONMENT, f"CNI_NETNS {self.netns!r} is not an absolute path")
        if command in ("ADD", "CHECK"):
            # it is stored as the endpoint's sandbox key and opened: a NUL or a
            # newline in it is no namespace path (DEL stays lenient: it finds
            # the attachment by container ID and interface)
            try:
                validate.abs_path(self.netns, "CNI_NETNS")
            except errors.InvalidParameter as e:
                raise CniError(INVALID_ENVIRONMENT, str(e)) from None


def parse_command(env: dict) -> str:
    cmd = env.get("CNI_COMMAND", "")
    if not cmd:
        raise CniError(INVALID_ENVIRONMENT, "CNI_COMMAND is missing")
    if cmd not in COMMANDS:
        raise CniError(INVALID_ENVIRONMENT, f"unknown CNI_COMMAND {cmd!r}")
    return cmd


def capability(conf: dict, key: str) -> Any:
    """``runtimeConfig[key]``, key matched case-insensitively."""
    rc = conf.get("runtimeConfig") or {}
    if not isinstance(rc, dict):
        raise CniError(INVALID_CONFIG, "runtimeConfig is not an object")
    for k, v in rc.items():
        if k.lower() == key.lower():
            return v
    return None


def ci_get(d: dict, *keys: str, default=None):
    """A field of a dict with its key matched case-insensitively (containerd sends
    ``HostPort``, podman ``hostPort``)."""
    lower = {k.lower(): v for k, v in d.items()} if isinstance(d, dict) else {}
    for k in keys:
        if k.lower() in lower:
            return lower[k.lower()]
    return default


# -- results ------------------------------------------------------------------------------
def _ip_version(address: str) -> str:
    try:
        return str(ipaddress.ip_interface(address).version)
    except ValueError:
        raise CniError(DECODE_FAILURE, f"invalid address {address!r} in result") from None


def from_any(result: Any) -> dict:
    """A result (prevResult) of any supported version -> the internal shape."""
    if result in (None, {}):
        return {"interfaces": [], "ips": [], "routes": [], "dns": {}}
    if not isinstance(result, dict):
        raise CniError(DECODE_FAILURE, "prevResult is not an object")
    if "ip4" in result or "ip6" in result:
        raise CniError(INCOMPATIBLE_VERSION, "prevResult in the 0.1/0.2 format is not supported")
    out = {"interfaces": [dict(i) for i in result.get("interfaces") or []],
           "ips": [], "routes": [dict(r) for r in result.get("routes") or []],
           "dns": dict(result.get("dns") or {})}
    for ip in result.get("ips") or []:
        ip = {k: v for k, v in dict(ip).items() if k != "version"}
        out["ips"].append(ip)
    return out


def to_version(result: dict, version: str) -> dict:
    """The internal result rendered for ``version``."""
    v = version_tuple(version)
    out: dict = {"cniVersion": version}
    ifaces = []
    for i in result.get("interfaces") or []:
        j = {k: val for k, val in i.items() if val not in (None, "")}
        if v < (1, 1, 0):
            j.pop("mtu", None)
            j.pop("socketPath", None)
            j.pop("pciID", None)
        ifaces.append(j)
    if ifaces:
        out["interfaces"] = ifaces
    ips = []
    for ip in result.get("ips") or []:
        j = {k: val for k, val in ip.items() if val not in (None, "") and k != "version"}
        if v < (1, 0, 0):
            j = {"version": _ip_version(ip["address"]), **j}
        ips.append(j)
    if ips:
        out["ips"] = ips
    routes = [{k: val for k, val in r.items() if val not in (None, "")} for r in result.get("routes") or []]
    if routes:
        out["routes"] = routes
    out["dns"] = dict(result.get("dns") or {})
    return out


def error_result(code: int, msg: str, version: Optional[str] = None, details: str = "") -> dict:
    body = {"cniVersion": version if version in SUPPORTED_VERSIONS else LATEST,
            "code": int(code), "msg": " ".join(str(msg).split())}
    if details:
        body["details"] = details
    return body


def dumps(obj: Any) -> str:
    return json.dumps(obj, indent=1, sort_keys=False) + "\n"
