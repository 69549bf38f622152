"""Typed errors raised deep in the core and translated once at each edge.

Each family carries the HTTP status the Docker front end answers with and the
CNI error code the CNI front end prints; a person sees ``str(err)``, one line.
"""


class PynetError(Exception):
    http_status = 500
    cni_code = 999  # CNI: "reserved for the plugin" range starts at 100; 999 = internal

    def __init__(self, message: str = "", **details):
        super().__init__(message or self.__class__.__name__)
        self.details = details

    @property
    def message(self) -> str:
        return str(self)


# --- invalid parameter family: Docker 400 / CNI 7 ---------------------------
class InvalidParameter(PynetError):
    http_status = 400
    cni_code = 7


class InvalidSubnet(InvalidParameter):
    pass


class InvalidAddress(InvalidParameter):
    pass


class InvalidOption(InvalidParameter):
    pass


class InvalidRequest(InvalidParameter):
    """Malformed request body (not JSON, wrong types)."""


# --- not found: Docker 404 / CNI 3 ("unknown container") ---------------------
class NotFound(PynetError):
    http_status = 404
    cni_code = 3


class NetworkNotFound(NotFound):
    pass


class EndpointNotFound(NotFound):
    pass


class PoolNotFound(NotFound):
    pass


class SandboxNotFound(NotFound):
    pass


# --- conflict: Docker 409 / CNI 7 -------------------------------------------
class Conflict(PynetError):
    http_status = 409
    cni_code = 7


class PoolOverlap(Conflict):
    pass


class AddressInUse(Conflict):
    pass


class NetworkExists(Conflict):
    pass


class EndpointExists(Conflict):
    pass


class PortInUse(Conflict):
    pass


class InUse(Conflict):
    """Something still depends on the object (endpoints on a network, ...)."""


# --- exhausted: Docker 503 / CNI 11 (try again later) ------------------------
class Exhausted(PynetError):
    http_status = 503
    cni_code = 11


class PoolExhausted(Exhausted):
    pass


class NoDefaultPool(Exhausted):
    pass


# --- transient: Docker 503 / CNI 11 ------------------------------------------
class Transient(PynetError):
    http_status = 503
    cni_code = 11


class StoreConflict(Transient):
    """A compare-and-swap lost a race; the caller may retry."""


# --- internal ---------------------------------------------------------------
class Internal(PynetError):
    http_status = 500
    cni_code = 999


class StoreTxnTooLarge(Internal):
    """A store transaction recorded more reads than one etcd Txn can compare
    (``--max-txn-ops``): the caller must bound what it records."""


class KernelError(Internal):
    """The kernel refused a netlink or firewall change."""


# --- store (pynet.store): unreachable, resync, create-only, leases -----------
class StoreUnavailable(Transient):
    """The store did not answer in time: etcd refused or timed out (no member reachable, no quorum),
    SQLite stayed locked past its busy timeout.  Docker gets a 503 ``Err``, CNI code 11."""


class StoreCompacted(Transient):
    """A watch (or a snapshot read) asked for revisions the store no longer keeps (etcd
    compaction, SQLite's trimmed change log): list again, then watch from that list's revision + 1."""

    def __init__(self, message: str = "", revision: int = 0, **details):
        super().__init__(message or f"store compacted at revision {revision}: resync", **details)
        self.revision = revision


class KeyExists(Conflict):
    """``create()`` of a key that is already there."""


class LeaseNotFound(NotFound):
    """The lease expired or was revoked (or never existed): grant a new one and put its keys again."""
