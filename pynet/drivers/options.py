"""Driver options every driver reads the same way (Docker's generic ones)."""
from __future__ import annotations

import re
from typing import Optional

from pynet import errors

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
