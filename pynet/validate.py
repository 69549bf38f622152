"""Validation at the door: one function per kind of value, called by every
front end (the Docker plugin, the CNI plugins, the drivers' option parsing,
the controller and the IPAM) before a value is stored or handed on.

Why one place: the values end up as iptables-restore tokens, netlink names and
store keys.  Python's ``ipaddress`` accepts anything after ``%`` in an IPv6
address (newlines included: ``::%lo\\nCOMMIT`` is an "address"), ``re``'s
``$`` matches before a trailing newline, and iptables reads ``+`` at the end
of an interface name as a wildcard -- each front end re-deriving its own
rules is how such values got through.  Each validator returns the value in
its parsed or normalised form, or raises the typed error (``pynet.errors``)
given as ``err`` with one readable line naming the value (shown with
``repr``, so a newline or NUL in it stays on that line).

A leaf module: the standard library and ``pynet.errors`` only (it runs on
every CNI invocation and inside the renderer's callers).
"""
from __future__ import annotations

import ipaddress
import re
from typing import Any, Optional, Union

from pynet import errors

IFNAMSIZ = 15  # bytes, without the trailing NUL (the kernel's IFNAMSIZ - 1)

Address = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]
Interface = Union[ipaddress.IPv4Interface, ipaddress.IPv6Interface]
Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]

# Docker's network and endpoint IDs: 64 lower-case hex digits (stringid.GenerateRandomID).
DOCKER_ID = re.compile(r"[0-9a-f]{64}\Z")
# The CNI spec's (and libcni's) pattern for container IDs and network names,
# anchored at the true end: ``$`` would also match before a trailing newline.
CNI_ID = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.\-]*\Z")
# What an address or CIDR may be made of once zones are refused; anything else
# (whitespace, '%', quotes) is refused before ipaddress sees it.
_ADDRESS_CHARS = re.compile(r"[0-9A-Fa-f.:]+\Z")
_CIDR_CHARS = re.compile(r"[0-9A-Fa-f.:]+/[0-9]{1,3}\Z")
# Characters the kernel accepts in a name but iptables (or a shell reading
# iptables-save) gives a meaning to: '+' is the interface wildcard, '!' the
# negation, quotes and '\\' quoting, '#' a comment.
_IFNAME_FORBIDDEN = '+!"\'\\#'
_MAC = re.compile(r"[0-9A-Fa-f]{1,2}([:-][0-9A-Fa-f]{1,2}){5}\Z")

_SHOWN = 80  # characters of a refused value shown in the message


def shown(value: Any) -> str:
    """``repr`` of a value, cut to a readable length (always one line)."""
    r = repr(value)
    return r if len(r) <= _SHOWN else r[:_SHOWN - 3] + "..."


def _type_name(v: Any) -> str:
    if v is None:
        return "null"
    return {bool: "boolean", int: "number", float: "number", str: "string",
            list: "array", dict: "object"}.get(type(v), type(v).__name__)


def _need_str(value: Any, what: str, err) -> str:
    if not isinstance(value, str):
        raise err(f"invalid {what}: must be a string, not {_type_name(value)}")
    return value


# ------------------------------------------------------------ interface names
def ifname(value: Any, what: str = "interface name",
           err: type[errors.PynetError] = errors.InvalidParameter) -> str:
    """A network interface name pynet may create, look up or render into a
    rule: the kernel's rules (1-15 bytes, not ``.``/``..``, no ``/``, ``:`` or
    whitespace) plus printable ASCII only, no leading ``-`` (it would read as
    an option of iptables or ip) and none of ``+ ! " ' \\ #``."""
    name = _need_str(value, what, err)
    if not name:
        raise err(f"invalid {what}: it is empty")
    if not all(0x21 <= ord(c) <= 0x7E for c in name):
        raise err(f"invalid {what} {shown(name)}: only printable ASCII without spaces is allowed")
    if len(name) > IFNAMSIZ:
        raise err(f"invalid {what} {shown(name)}: {len(name)} bytes long, at most {IFNAMSIZ}")
    if name in (".", ".."):
        raise err(f"invalid {what} {shown(name)}")
    bad = sorted({c for c in name if c in "/:" + _IFNAME_FORBIDDEN})
    if bad:
        raise err(f"invalid {what} {shown(name)}: must not contain {' '.join(repr(c) for c in bad)}"
                  + (" (iptables reads '+' as a wildcard)" if "+" in bad else ""))
    if name.startswith("-"):
        raise err(f"invalid {what} {shown(name)}: must not start with '-'")
    return name


# ------------------------------------------------------- addresses and CIDRs
def _no_zone(text: str, what: str, err, pattern) -> None:
    if "%" in text:
        raise err(f"invalid {what} {shown(text)}: IPv6 zones ('%...') are not allowed")
    if text != text.strip():
        raise err(f"invalid {what} {shown(text)}: leading or trailing whitespace")
    if not pattern.match(text):
        raise err(f"invalid {what} {shown(text)}")


def _version(obj, text: str, what: str, version: Optional[int], err):
    if version and obj.version != version:
        raise err(f"invalid {what} {shown(text)}: not an IPv{version} address")
    return obj


def ip_address(value: Any, what: str = "address", version: Optional[int] = None,
               allow_prefix: bool = False,
               err: type[errors.PynetError] = errors.InvalidAddress) -> Address:
    """A bare IPv4/IPv6 address, no zone, no whitespace (``allow_prefix``:
    ``a/len`` too; the prefix is checked and dropped)."""
    text = _need_str(value, what, err)
    if allow_prefix and "/" in text:
        return ip_interface(text, what, version, err).ip
    _no_zone(text, what, err, _ADDRESS_CHARS)
    try:
        a = ipaddress.ip_address(text)
    except ValueError:
        raise err(f"invalid {what} {shown(text)}: not an IP address") from None
    return _version(a, text, what, version, err)


def ip_interface(value: Any, what: str = "address", version: Optional[int] = None,
                 err: type[errors.PynetError] = errors.InvalidAddress) -> Interface:
    """An address with its prefix length (``10.1.0.5/24``), no zone."""
    text = _need_str(value, what, err)
    if "/" not in text:
        raise err(f"invalid {what} {shown(text)}: not in CIDR form (address/prefix length)")
    _no_zone(text, what, err, _CIDR_CHARS)
    try:
        i = ipaddress.ip_interface(text)
    except ValueError as e:
        raise err(f"invalid {what} {shown(text)}: {_one_line(e)}") from None
    return _version(i, text, what, version, err)


def ip_network(value: Any, what: str = "subnet", version: Optional[int] = None,
               strict: bool = False,
               err: type[errors.PynetError] = errors.InvalidSubnet) -> Network:
    """A CIDR (``10.1.0.0/24``), no zone; host bits masked off unless ``strict``."""
    text = _need_str(value, what, err)
    if "/" not in text:
        raise err(f"invalid {what} {shown(text)}: not in CIDR form (address/prefix length)")
    _no_zone(text, what, err, _CIDR_CHARS)
    try:
        n = ipaddress.ip_network(text, strict=strict)
    except ValueError as e:
        raise err(f"invalid {what} {shown(text)}: {_one_line(e)}") from None
    return _version(n, text, what, version, err)


def mac(value: Any, what: str = "MAC address",
        err: type[errors.PynetError] = errors.InvalidAddress) -> str:
    """``2:42:A:0:0:1`` or ``02-42-0a-00-00-01`` -> ``02:42:0a:00:00:01``."""
    text = _need_str(value, what, err)
    if not _MAC.match(text):
        raise err(f"invalid {what} {shown(text)}")
    return ":".join(f"{int(p, 16):02x}" for p in re.split(r"[:-]", text))


# ------------------------------------------------------------------------ IDs
def docker_id(value: Any, what: str = "ID",
              err: type[errors.PynetError] = errors.InvalidRequest) -> str:
    """A Docker network or endpoint ID: 64 lower-case hex digits.  Anything
    else ('/' in particular, which would make one ID's store key a prefix of
    another's) is not from dockerd."""
    text = _need_str(value, what, err)
    if not text:
        raise err(f"{what} is required")
    if not DOCKER_ID.match(text):
        raise err(f"invalid {what} {shown(text)}: expected 64 lower-case hex digits")
    return text


def cni_id(value: Any, what: str = "container ID",
           err: type[errors.PynetError] = errors.InvalidParameter) -> str:
    """A CNI container ID or network name: a letter or digit, then letters,
    digits, ``_``, ``.`` or ``-`` -- up to the true end of the string."""
    text = _need_str(value, what, err)
    if not text:
        raise err(f"{what} is empty")
    if not CNI_ID.match(text):
        raise err(f"invalid {what} {shown(text)}: it must start with a letter or digit, "
                  "then letters, digits, '_', '.' or '-'")
    return text


# ---------------------------------------------------------------------- ports
def port(value: Any, what: str = "port", allow_zero: bool = False,
         err: type[errors.PynetError] = errors.InvalidParameter) -> int:
    """A TCP/UDP/SCTP port number, 1-65535 (0 too with ``allow_zero``: "any")."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise err(f"invalid {what} {shown(value)}: must be an integer")
    lo = 0 if allow_zero else 1
    if not lo <= value <= 65535:
        raise err(f"invalid {what} {value}: out of range {lo}-65535")
    return value


# ------------------------------------------------------------------------ MTU
MTU_MIN, MTU_MAX = 68, 65535  # IPv4's minimum (RFC 791), the largest an IP packet can be


def mtu(value: Any, what: str = "mtu",
        err: type[errors.PynetError] = errors.InvalidParameter) -> int:
    """An interface MTU as JSON carries it: an integer (not a boolean, not a
    float -- ``int(-inf)`` raises OverflowError, ``int(1500.7)`` would pass
    silently), 68-65535."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise err(f"invalid {what} {shown(value)}: must be an integer")
    if not MTU_MIN <= value <= MTU_MAX:
        raise err(f"invalid {what} {value}: out of range {MTU_MIN}-{MTU_MAX}")
    return value


# ------------------------------------------------- instance, chains and paths
# The chain prefix names iptables chains (``<prefix>-ISOLATION-STAGE-1`` is the
# longest, and a chain name is at most 28 characters) and goes into every
# rule's owner comment; the instance name is part of every link alias
# (``pynet:<instance>:<id>``), of the Docker plugin socket's file name and of
# the IPAM holders.  Both: letters, digits, '_' and '-' ('.' too for an
# instance), starting with a letter or digit -- no ':' (the alias separator),
# no '/', no iptables wildcard or negation, nothing a shell or a batch reads.
CHAIN_PREFIX = re.compile(r"[A-Za-z0-9][A-Za-z0-9_\-]*\Z")
CHAIN_PREFIX_MAX = 28 - len("-ISOLATION-STAGE-1")
INSTANCE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*\Z")
INSTANCE_MAX = 64  # /run/docker/plugins/<instance>.sock stays far below sun_path's 108 bytes


def chain_prefix(value: Any, what: str = "chain prefix",
                 err: type[errors.PynetError] = errors.InvalidParameter) -> str:
    """The prefix of pynet's iptables chains (``PYNET``, ``DOCKER``...)."""
    text = _need_str(value, what, err)
    if not CHAIN_PREFIX.match(text):
        raise err(f"invalid {what} {shown(text)}: it must start with a letter or digit, "
                  "then letters, digits, '_' or '-'")
    if len(text) > CHAIN_PREFIX_MAX:
        raise err(f"invalid {what} {shown(text)}: {len(text)} characters long, at most "
                  f"{CHAIN_PREFIX_MAX} (iptables chain names are at most 28)")
    return text


def instance_name(value: Any, what: str = "pynet instance name",
                  err: type[errors.PynetError] = errors.InvalidParameter) -> str:
    """A pynet instance (plugin) name: link aliases, socket name, IPAM holders."""
    text = _need_str(value, what, err)
    if not INSTANCE.match(text):
        raise err(f"invalid {what} {shown(text)}: it must start with a letter or digit, "
                  "then letters, digits, '_', '.' or '-'")
    if len(text) > INSTANCE_MAX:
        raise err(f"invalid {what} {shown(text)}: {len(text)} characters long, at most {INSTANCE_MAX}")
    return text


def abs_path(value: Any, what: str = "path",
             err: type[errors.PynetError] = errors.InvalidParameter) -> str:
    """An absolute file system path of printable characters (a NUL makes every
    os call raise ValueError; a relative one would depend on the caller's
    working directory)."""
    text = _need_str(value, what, err)
    if not text.startswith("/"):
        raise err(f"invalid {what} {shown(text)}: not an absolute path")
    if not text.isprintable():
        raise err(f"invalid {what} {shown(text)}: control characters are not allowed")
    if len(text.encode("utf-8", "surrogatepass")) > 4095:
        raise err(f"invalid {what}: longer than PATH_MAX")
    return text


# ------------------------------------------------------------- address spaces
ADDRESS_SPACE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*\Z")


def address_space(value: Any, what: str = "address space",
                  err: type[errors.PynetError] = errors.InvalidParameter) -> str:
    """An IPAM address space name (``LocalDefault``, ``GlobalDefault``): it
    heads every pool ID (``<space>/<pool>``) and is stored with each network,
    so letters, digits, '_', '.' and '-' only -- no '/', '%', ':', spaces or
    control characters."""
    text = _need_str(value, what, err)
    if not ADDRESS_SPACE.match(text) or len(text) > 64:
        raise err(f"invalid {what} {shown(text)}: letters, digits, '_', '.' and '-' only")
    return text


# -------------------------------------------------------------- option values
def option_value(value: Any, what: str = "option",
                 err: type[errors.PynetError] = errors.InvalidOption) -> Any:
    """An option value as the front ends store it: a string must be
    printable (no NUL, newline, tab or other control character, no lone
    surrogate); booleans and numbers pass as they are."""
    if isinstance(value, (bool, int, float)):
        return value
    text = _need_str(value, what, err)
    if not text.isprintable():
        raise err(f"invalid value {shown(text)} for {what}: control characters are not allowed")
    return text


def option_key(value: Any, what: str = "option name",
               err: type[errors.PynetError] = errors.InvalidOption) -> str:
    """An option's name: a non-empty printable string without spaces."""
    text = _need_str(value, what, err)
    if not text or not text.isprintable() or any(c.isspace() for c in text):
        raise err(f"invalid {what} {shown(text)}")
    return text


def _one_line(e: Exception) -> str:
    return " ".join(str(e).split())
