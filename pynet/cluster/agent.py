"""The host agent: membership kept alive, and the control loop that keeps
this host's VXLAN devices in step with the cluster.

    agent = Agent(cluster, program).start()     # the daemon, once per host
    ...
    agent.stop(revoke=True)

Membership: one lease (``cluster.join``), renewed every TTL/3 by a
:class:`~pynet.store.lease.LeaseKeeper`.  A lost lease (expired while the
store was unreachable, or revoked) is noticed by the keeper or by the watch
(our own ``hosts/<host>`` deleted); the loop joins again with a new lease and
re-announces the host and its VTEPs, so peers re-add our entries -- the
containers are never touched.

The control loop, the only race-free way to follow etcd:

    1. list the cluster prefix at revision R      -> the view {key: value}
    2. program every overlay network from the view (``program(view, None)``)
    3. watch from R + 1; apply each event to the view, and program the
       networks it touches (``program(view, {network ids})``); a host event
       touches every network
    4. StoreCompacted / a broken stream: back to 1 (the resync)
    5. every ``reconcile_interval`` s with no event: program everything again
       -- the periodic reconcile, which repairs what someone changed in the
       kernel (``bridge fdb del`` by hand, a device recreated by restore)

``program`` is the overlay driver's (wired by ``pynet.root.start_cluster_agent``):
it compares the VXLAN device's FDB and neighbour entries with
``pynet.cluster.peers(...)`` and applies the difference, idempotently.

The agent also announces this host's VTEP on every network where it has
endpoints (``vteps/<network>/<host>`` on the lease) and withdraws it when the
last one goes: a CNI process only records its endpoint, the agent does the
rest.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Callable, Optional

from pynet import errors
from pynet.cluster import Cluster
from pynet.store import DELETE
from pynet.store.lease import LeaseKeeper

log = logging.getLogger("pynet.cluster.agent")

RECONCILE_INTERVAL = 10.0
# a failing store is retried after this, doubling up to BACKOFF_MAX
BACKOFF_MIN, BACKOFF_MAX = 0.2, 5.0
# events arriving together are programmed in one pass: what is queued when
# the first is taken (one etcd response's events, and whatever came during
# the last pass) -- no extra wait: a pass is a few netlink requests now, and
# a 2 ms window was 10 % of the create-to-remote-FDB goal on every event
# while catching none of a container's later records (its VTEP is put by its
# host's agent only after that agent saw the endpoint)
BATCH_WAIT = 0.0


class Agent:
    def __init__(self, cluster: Cluster, program: Callable[[dict, Optional[set]], None],
                 reconcile_interval: float = RECONCILE_INTERVAL):
        self.cluster = cluster
        self.program = program
        self.reconcile_interval = reconcile_interval
        self.view: dict = {}
        self.revision = 0
        self._stop = threading.Event()
        self._rejoin = threading.Event()
        self._keeper: Optional[LeaseKeeper] = None
        self._watch = None
        self._thread = threading.Thread(target=self._run, name="pynet-cluster-agent", daemon=True)
        self.passes = 0                 # programming passes done (tests wait on it)
        self.synced = False             # the view holds a full listing (set once)
        self.resyncs = 0
        self.error: Optional[str] = None

    # ------------------------------------------------------------ lifecycle
    def start(self) -> "Agent":
        self._thread.start()
        return self

    def stop(self, revoke: bool = True, timeout: float = 10.0) -> None:
        """``revoke=False`` leaves the lease to expire (what a crashed host
        looks like to its peers)."""
        self._stop.set()
        if self._watch is not None:
            self._watch.close()
        if self._keeper is not None:
            self._keeper.stop()
        if self._thread.is_alive():
            self._thread.join(timeout)
        self.cluster.leave(revoke=revoke)

    def shutdown(self) -> None:
        """The daemon's stop: the lease is revoked only when no endpoint of this
        host is on an overlay.  Containers outlive their network daemon (a
        restart, an upgrade), so peers must keep this host's FDB entries while
        it is away; the restarted daemon joins with a new lease and re-puts what
        the old one carried, and a host that never comes back is dropped one
        TTL later, like a crashed one."""
        self.stop(revoke=not self.hosts_endpoints())

    def hosts_endpoints(self) -> bool:
        """True when the view holds an endpoint of this host (cluster-wide
        record), or when there is no view yet: a daemon stopped before its
        first listing does not know, and must not cut its containers off."""
        if not self.synced:
            return True
        c, me = self.cluster, self.cluster.host
        for key, value in list(self.view.items()):
            parts = c.parse(key)
            if len(parts) == 3 and parts[0] == "endpoints" and (value or {}).get("host") == me:
                return True
        return False

    # ----------------------------------------------------------- membership
    def _join(self) -> None:
        if self._keeper is not None:
            self._keeper.stop()
        lease = self.cluster.join()
        self._rejoin.clear()
        self._keeper = LeaseKeeper(self.cluster.store, lease, self.cluster.lease_ttl,
                                   on_lost=self._lost).start()

    def _lost(self, err: Exception) -> None:
        log.warning("cluster lease lost (%s): joining again", err)
        self._rejoin.set()
        w = self._watch
        if w is not None:
            w.close()            # wake the loop

    def _announce(self) -> None:
        """``vteps/<net>/<me>`` on our lease for every network with an endpoint
        of ours in the view, and none elsewhere."""
        c, me = self.cluster, self.cluster.host
        mine, announced = set(), {}
        for key, value in self.view.items():
            parts = c.parse(key)
            if len(parts) == 3 and parts[0] == "endpoints" and (value or {}).get("host") == me:
                mine.add(parts[1])
            elif len(parts) == 3 and parts[0] == "vteps" and parts[2] == me:
                announced[parts[1]] = value
        want = {"address": c.address}
        for nid in mine:
            if announced.get(nid) != want or self._stale_lease(c.key("vteps", nid, me)):
                c.store.put(c.key("vteps", nid, me), want, lease=c.lease)
                self._leased.add(c.key("vteps", nid, me))
        for nid in set(announced) - mine:
            c.store.delete(c.key("vteps", nid, me))

    def _stale_lease(self, key: str) -> bool:
        # a key put on an earlier lease (before a rejoin) dies with that lease
        return key not in self._leased

    # ---------------------------------------------------------------- loop
    def _run(self) -> None:
        backoff = BACKOFF_MIN
        self._leased: set = set()
        while not self._stop.is_set():
            try:
                if self._rejoin.is_set() or not self.cluster.lease:
                    self._leased = set()
                    self._join()
                self._sync_and_follow()
                backoff = BACKOFF_MIN
            except errors.StoreCompacted as e:
                log.info("cluster watch compacted (%s): resync", e)
                self.resyncs += 1
            except (errors.StoreUnavailable, errors.LeaseNotFound, OSError) as e:
                if self._stop.is_set():
                    break
                self.error = f"{type(e).__name__}: {e}"
                log.warning("cluster store: %s; retrying in %.1fs", self.error, backoff)
                self.resyncs += 1
                self._stop.wait(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)
            except Exception as e:  # noqa: BLE001 -- the loop must survive one bad pass
                if self._stop.is_set():
                    break
                self.error = f"{type(e).__name__}: {e}"
                log.exception("cluster agent: %s", self.error)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)
            finally:
                if self._watch is not None:
                    self._watch.close()
                    self._watch = None

    def _pass(self, dirty: Optional[set]) -> None:
        self._announce()
        self.program(dict(self.view), dirty)
        self.passes += 1
        self.error = None

    def _sync_and_follow(self) -> None:
        c = self.cluster
        listing = c.store.list(c.root)                    # 1. list at R
        self.view = {r.key: r.value for r in listing if self._followed(r.key)}
        self.revision = listing.revision
        self.synced = True
        self._pass(None)                                  # 2. program all
        self._watch = c.store.watch(c.root, self.revision + 1)   # 3. watch from R + 1
        next_reconcile = time.monotonic() + self.reconcile_interval
        while not self._stop.is_set() and not self._rejoin.is_set():
            timeout = max(0.0, next_reconcile - time.monotonic())
            ev = self._watch.get(timeout=min(timeout, 1.0))
            if self._watch.closed and ev is None:
                if self._stop.is_set() or self._rejoin.is_set():
                    return
                raise errors.StoreUnavailable("cluster watch closed")
            if ev is None:
                if time.monotonic() >= next_reconcile:    # 5. periodic reconcile
                    self._pass(None)
                    next_reconcile = time.monotonic() + self.reconcile_interval
                continue
            dirty: Optional[set] = set()
            relevant = False
            deadline = time.monotonic() + BATCH_WAIT
            while ev is not None:
                if self._followed(ev.key):
                    dirty = self._apply(ev, dirty)
                    relevant = True
                ev = self._watch.get(timeout=max(0.0, deadline - time.monotonic()))
            if relevant:
                self._pass(dirty)

    def _followed(self, key: str) -> bool:
        """The keys the data plane depends on; the block IPAM's (one write per
        allocation anywhere in the cluster) are not kept in the view."""
        return self.cluster.parse(key)[:1] != ["ipam"]

    def _apply(self, ev, dirty: Optional[set]) -> Optional[set]:
        """One event into the view; the networks it touches added to ``dirty``
        (None: all of them)."""
        c = self.cluster
        if ev.type == DELETE:
            self.view.pop(ev.key, None)
        else:
            self.view[ev.key] = ev.value
        self.revision = max(self.revision, ev.revision)
        parts = c.parse(ev.key)
        if parts[:1] == ["hosts"]:
            if len(parts) == 2 and parts[1] == c.host and ev.type == DELETE and not self._stop.is_set():
                log.warning("our host record vanished (lease expired): joining again")
                self._rejoin.set()
            return None
        if dirty is not None and len(parts) >= 2:
            dirty.add(parts[1])
        return dirty
