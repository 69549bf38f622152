"""Driver options every driver reads the same way (Docker's generic ones)."""
from __future__ import annotations

import re
from typing import Optional

from pynet import errors, validate

# Every link a driver creates carries the alias ``pynet:<instance>:<object id>``: the
# owner of a link is known from the kernel alone (restore, GC, ``pynet doctor``'s leftovers).
ALIAS_PREFIX = "pynet"

OPT_MTU = "com.docker.network.driver.mtu"
OPT_IFACE_PREFIX = "com.docker.network.container_iface_prefix"


def driver_mtu(opts: dict) -> Optional[int]:
    """``-o com.docker.network.driver.mtu``; None when unset (or 0, as Docker)."""
    value = opts.get(OPT_MTU)
    if value in ("", None, 0, "0"):
        return None
    try:
        mtu = int(str(value).strip())
    except ValueError:
        raise errors.InvalidOption(f"invalid MTU {value!r}: not a number") from None
    if not 68 <= mtu <= 65535:
        raise errors.InvalidOption(f"invalid MTU {mtu}: must be between 68 and 65535")
    return mtu


def iface_prefix(opts: dict, default: str = "eth") -> str:
    """``-o com.docker.network.container_iface_prefix``: the container-side name prefix."""
    prefix = opts.get(OPT_IFACE_PREFIX)
    if not prefix:
        return default
    prefix = str(prefix)
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]{0,10}", prefix):
        raise errors.InvalidOption(f"invalid interface prefix {prefix!r}")
    return prefix


def ifname_option(opts: dict, key: str, what: str, strip: bool = False) -> str:
    """An option naming an interface (bridge name, macvlan parent); "" when
    unset.  The name becomes a netlink name and an iptables token, so it gets
    ``pynet.validate.ifname``'s rules (no ``+`` wildcard, no leading ``-``)."""
    value = opts.get(key)
    if value in ("", None):
        return ""
    name = str(value).strip() if strip else str(value)
    return validate.ifname(name, f"{what} (option {key})", err=errors.InvalidOption)


def address_option(opts: dict, key: str, version: Optional[int] = None) -> str:
    """An option holding a bare IP address (``host_binding_ipv4``,
    ``host_ipv4``), normalised; "" when unset.  No zone, no whitespace: the
    value becomes an iptables token."""
    value = opts.get(key)
    if value in ("", None):
        return ""
    return str(validate.ip_address(str(value), f"option {key}", version=version,
                                   err=errors.InvalidOption))


def alias_for(instance: str, object_id: str) -> str:
    return f"{ALIAS_PREFIX}:{instance}:{object_id}"


# The overlay's links (pynet.drivers.overlay) carry a tag of their own, so the bridge driver's
# restore never takes them for its orphans; CNI GC and ``pynet doctor`` know both tags.
OVERLAY_ALIAS_PREFIX = "pynet-overlay"
LINK_TAG_PREFIXES = (ALIAS_PREFIX, OVERLAY_ALIAS_PREFIX)


def parse_alias(alias: str, prefixes: tuple = (ALIAS_PREFIX,)) -> Optional[tuple[str, str]]:
    """``<prefix>:<instance>:<id>`` (a prefix of ``prefixes``) -> (instance, id); anything
    else -> None."""
    parts = (alias or "").split(":", 2)
    if len(parts) == 3 and parts[0] in prefixes and parts[1] and parts[2]:
        return parts[1], parts[2]
    return None
