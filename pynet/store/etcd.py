"""Cluster store: etcd v3 through its JSON gateway (``/v3/...`` on the client port), over httpx.

Why a small client of our own on httpx rather than etcd3gw (which works for put/get, CAS and
leases): the watch is the part that must be exact, and etcd3gw's watch thread reads the stream
with ``requests``' line iterator (stalls on small events), parses per chunk and drops the
``compact_revision``/``canceled`` answers -- the very signal that a watcher must resync.  A
client that needs range, txn, watch, compaction and leases is ~300 lines over the gateway; httpx
gives connection pooling, separate connect/read timeouts (how an unreachable store becomes a fast
``StoreUnavailable``) and a streaming body we parse incrementally with ``json.raw_decode``.
httpx is imported here only; ``pynet.store`` never imports this module unless asked for etcd, so
the CNI bridge path does not pay for it.

Gateway pitfalls handled here: keys and values are base64; int64 fields arrive as strings;
proto3 JSON omits zero/false fields (``succeeded``, ``kvs``, ``count``, an event's ``type`` PUT).

Values: one tag byte (``j`` JSON, ``b`` raw bytes) then the payload, so ``bytes`` survive.

Endpoints: several ``host:port``; a refused connection moves to the next member (the request
never reached a server, so resending is safe).  A timeout does not: the write may have applied,
so it is ``StoreUnavailable`` and the caller retries the whole operation (v2 txns re-read, so a
retry is safe).  A member without quorum answers nothing useful ("no leader", "request timed
out") -- also ``StoreUnavailable``.  etcd limits a Txn to ``--max-txn-ops`` (128 by default)
compares and writes each: a txn that reads or writes more keys needs that raised.
"""
from __future__ import annotations

import base64
import json
import queue
import socket
import threading
import time
from typing import Any, Callable, Optional

from pynet.errors import (Internal, InvalidParameter, LeaseNotFound, StoreCompacted, StoreConflict,
                          StoreTxnTooLarge, StoreUnavailable)
from pynet.store import DELETE, PUT, Event, Listing, Record, WatchBase
from pynet.store.keys import check_watch_prefix
from pynet.store.optimistic import TxnRunner

_UNAVAILABLE_GRPC = {4, 14}  # DeadlineExceeded, Unavailable
_LEADER_CHANGED_BACKOFF = (0.05, 0.1, 0.2, 0.4, 0.8)  # s; then the error stands (about 1.5 s in all)
_WATCH_RECONNECT_FOR = 5.0  # s: how long a broken watch looks for a live member before giving up


def _b64(s: "str | bytes") -> str:
    return base64.b64encode(s.encode() if isinstance(s, str) else s).decode()


def _unb64(s: str) -> bytes:
    return base64.b64decode(s)


def _range_end(prefix: str) -> str:
    """etcd's prefix range end: the prefix with its last byte + 1 (all keys for an empty prefix)."""
    b = bytearray(prefix.encode())
    while b:
        if b[-1] < 0xFF:
            b[-1] += 1
            return _b64(bytes(b))
        b.pop()
    return _b64(b"\0")


def _encode(value: Any) -> str:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return _b64(b"b" + bytes(value))
    return _b64(b"j" + json.dumps(value, separators=(",", ":"), sort_keys=True).encode())


def _decode(v: Optional[str]) -> Any:
    raw = _unb64(v) if v else b""
    if raw[:1] == b"b":
        return raw[1:]
    if raw[:1] == b"j":
        return json.loads(raw[1:])
    raise Internal(f"etcd value not written by pynet (tag {raw[:1]!r})")


def _record(kv: dict) -> Record:
    return Record(_unb64(kv["key"]).decode(), _decode(kv.get("value")), int(kv.get("mod_revision", 0)),
                  int(kv.get("create_revision", 0)), int(kv.get("lease", 0)))


def _error(status: int, body: dict, where: str) -> Exception:
    msg = body.get("error") or body.get("message") or f"HTTP {status}"
    code = body.get("code")
    if code in _UNAVAILABLE_GRPC or status in (503, 504) or "no leader" in msg or "timed out" in msg:
        return StoreUnavailable(f"etcd at {where}: {msg}")
    if "compacted" in msg:
        return StoreCompacted(f"etcd at {where}: {msg}")
    if "lease not found" in msg:
        return LeaseNotFound(f"etcd at {where}: {msg}")
    return Internal(f"etcd at {where}: {msg}")


class EtcdStore(TxnRunner):
    def __init__(self, endpoints: "list[str] | str", timeout: float = 3.0, connect_timeout: float = 0.5):
        import httpx  # lazily: ~0.1 s of imports the SQLite paths never need

        self._httpx = httpx
        if isinstance(endpoints, str):
            endpoints = endpoints.split(",")
        self.endpoints = [e if e.startswith("http") else "http://" + e for e in endpoints if e]
        if not self.endpoints:
            raise InvalidParameter("etcd store: no endpoint")
        self._timeout = httpx.Timeout(timeout, connect=connect_timeout)
        self._connect_timeout = connect_timeout
        self._client = httpx.Client(timeout=self._timeout)
        self._current = 0
        self._watches: set = set()
        # etcd's --max-txn-ops (its default): what one Txn may hold (see _commit)
        self.max_txn_ops = 128
        # HTTP requests sent (every member tried counts): lets a test count round trips exactly
        self.round_trips = 0

    @classmethod
    def from_url(cls, url: str, **kw) -> "EtcdStore":
        """``etcd://host:port[,host:port...]``"""
        return cls(url[len("etcd://"):].rstrip("/").split(","), **kw)

    # --- transport -------------------------------------------------------------------------------
    def _call(self, path: str, body: dict) -> dict:
        # "etcdserver: leader changed" comes only from etcd's linearizable-read path (a
        # ReadIndex interrupted by an election: a Range or a read-only Txn, never a write
        # proposal), so nothing was applied and the request is resent as it is -- a few times,
        # while the members elect (a member's SIGKILL costs about one election timeout).
        for delay in _LEADER_CHANGED_BACKOFF:
            try:
                return self._call_once(path, body)
            except StoreUnavailable as e:
                if "leader changed" not in str(e):
                    raise
                time.sleep(delay)
        return self._call_once(path, body)

    def _call_once(self, path: str, body: dict) -> dict:
        httpx = self._httpx
        n = len(self.endpoints)
        last: Optional[Exception] = None
        for i in range(n):
            idx = (self._current + i) % n
            ep = self.endpoints[idx]
            self.round_trips += 1
            try:
                r = self._client.post(ep + "/v3" + path, json=body)
            except (httpx.ConnectError, httpx.ConnectTimeout) as e:  # never reached a member
                last = e
                continue
            except httpx.TransportError as e:  # sent, no answer: it may have applied
                raise StoreUnavailable(f"etcd at {ep}: {type(e).__name__}: {e}") from e
            self._current = idx
            try:
                data = r.json()
            except ValueError:
                data = {"error": r.text[:200]}
            if r.status_code != 200:
                raise _error(r.status_code, data, ep)
            return data
        raise StoreUnavailable(f"etcd unreachable at {', '.join(self.endpoints)}: {last}") from last

    def _range(self, key: str, prefix: bool, revision: Optional[int] = None) -> tuple[list[Record], int]:
        body: dict = {"key": _b64(key) if key else _b64(b"\0")}
        if prefix:
            body["range_end"] = _range_end(key)
        if revision:
            body["revision"] = str(revision)
        data = self._call("/kv/range", body)
        return [_record(kv) for kv in data.get("kvs", ())], int(data["header"]["revision"])

    def _txn(self, compare: list[dict], success: list[dict],
             failure: Optional[list[dict]] = None) -> tuple[bool, dict]:
        body = {"compare": compare, "success": success}
        if failure:
            body["failure"] = failure
        data = self._call("/kv/txn", body)
        return bool(data.get("succeeded")), data

    @staticmethod
    def _op(op: tuple) -> dict:
        if op[0] == "put":
            req = {"key": _b64(op[1]), "value": _encode(op[2])}
            if op[3]:
                req["lease"] = str(op[3])
            return {"request_put": req}
        if op[0] == "delete_prefix":
            return {"request_delete_range": {"key": _b64(op[1]) if op[1] else _b64(b"\0"),
                                             "range_end": _range_end(op[1])}}
        return {"request_delete_range": {"key": _b64(op[1])}}

    @staticmethod
    def _compare(cmp: tuple) -> dict:
        if cmp[0] == "mod":
            return {"key": _b64(cmp[1]), "target": "MOD", "result": "EQUAL", "mod_revision": str(cmp[2])}
        if cmp[0] == "absent":
            return {"key": _b64(cmp[1]), "target": "CREATE", "result": "EQUAL", "create_revision": "0"}
        return {"key": _b64(cmp[1]) if cmp[1] else _b64(b"\0"), "range_end": _range_end(cmp[1]),
                "target": "MOD", "result": "LESS", "mod_revision": str(cmp[2])}

    # --- v1 API ------------------------------------------------------------------------------------
    def get(self, key: str) -> Optional[Record]:
        recs, _ = self._range(key, prefix=False)
        return recs[0] if recs else None

    def put(self, key: str, value: Any, version: Optional[int] = None, lease: int = 0) -> int:
        op = self._op(("put", key, value, lease))
        if version is None:
            ok, data = self._txn([], [op])
        else:
            cmp = ("mod", key, version) if version else ("absent", key)
            ok, data = self._txn([self._compare(cmp)], [op])
            if not ok:
                raise StoreConflict(f"store key {key!r} changed (expected version {version})")
        return int(data["header"]["revision"])

    def delete(self, key: str, version: Optional[int] = None) -> bool:
        op = {"request_delete_range": {"key": _b64(key)}}
        cmps = [] if version is None else [self._compare(("mod", key, version))]
        ok, data = self._txn(cmps, [op])
        if not ok:
            raise StoreConflict(f"store key {key!r} changed before delete")
        resp = (data.get("responses") or [{}])[0].get("response_delete_range", {})
        return int(resp.get("deleted", 0)) > 0

    def delete_prefix(self, prefix: str) -> int:
        body = {"key": _b64(prefix) if prefix else _b64(b"\0"), "range_end": _range_end(prefix)}
        return int(self._call("/kv/deleterange", body).get("deleted", 0))

    def list(self, prefix: str) -> Listing:
        recs, rev = self._range(prefix, prefix=True)
        return Listing(recs, rev)

    def transaction(self):
        raise Internal("the etcd store has no pessimistic transaction(): use store.txn(fn)")

    def update(self, key: str, fn: Callable[[Any], Any]) -> Any:
        def step(t):
            cur = t.get(key)
            new = fn(cur.value if cur else None)
            t.put(key, new)
            return new
        return self.txn(step)

    def close(self) -> None:
        for w in list(self._watches):
            w.close()
        self._client.close()

    # --- v2 ----------------------------------------------------------------------------------------
    def _snapshot(self) -> "_EtcdSnapshot":
        return _EtcdSnapshot(self)

    def _commit(self, compares: list[tuple], ops: list[tuple], want=()) -> tuple:
        """One Txn.  Its failure branch reads ``want`` (the keys the record cache answered or
        will answer), so a stale cache is refreshed by the very answer that says it was stale.

        etcd refuses a Txn with more than ``--max-txn-ops`` (``max_txn_ops``, 128 by default)
        compares, or operations in a branch, counting those of nested Txns against the same
        budget.  Writes beyond it are split *inside* the one Txn: the success branch becomes
        nested Txns without compares, each a slice of the writes (etcd >= 3.3), so they still
        apply all at once, only if every compare holds.  Compares cannot be split so (a nested
        Txn's compares only gate its own branch, from what is left of the budget): a txn that
        records more reads than fit is refused (``StoreTxnTooLarge``) -- callers bound what
        they record (``t.scan`` lists without recording).  The failure branch's reads only
        refresh the cache: past the budget they are left out (a later read fetches them)."""
        limit = self.max_txn_ops
        if len(compares) > limit:
            raise StoreTxnTooLarge(f"store txn: {len(compares)} recorded reads exceed etcd's "
                                   f"--max-txn-ops {limit}; list with scan() what only steers a choice")
        want = list(want)[:limit]
        success = [self._op(o) for o in ops]
        if len(success) > limit:
            success = self._nested(success, max(len(compares), len(want)), limit)
        failure = [{"request_range": {"key": _b64(k)}} for k in want]
        ok, data = self._txn([self._compare(c) for c in compares], success, failure)
        rev = int(data["header"]["revision"])
        if ok:
            return True, rev, {}
        current: dict = {}
        for key, resp in zip(want, data.get("responses") or ()):
            kvs = resp.get("response_range", {}).get("kvs") or ()
            current[key] = _record(kvs[0]) if kvs else None
        return False, rev, current

    @staticmethod
    def _nested(success: list[dict], opc: int, limit: int) -> list[dict]:
        """``success`` as nested compare-less Txns: n of them, each of at most
        ``limit - max(opc, n)`` operations (etcd's budget for a nested Txn)."""
        for n in range(1, limit + 1):
            size = limit - max(opc, n)
            if size > 0 and n * size >= len(success):
                return [{"request_txn": {"success": success[i:i + size]}}
                        for i in range(0, len(success), size)]
        raise StoreTxnTooLarge(f"store txn: {len(success)} writes exceed what one etcd Txn holds "
                               f"(--max-txn-ops {limit}, nested)")

    def revision(self) -> int:
        data = self._call("/kv/range", {"key": _b64(b"\0"), "count_only": True})
        return int(data["header"]["revision"])

    def compact(self, revision: int) -> None:
        self._call("/kv/compaction", {"revision": str(revision), "physical": True})

    def watch(self, prefix: str, from_revision: Optional[int] = None) -> "_EtcdWatch":
        check_watch_prefix(prefix)
        w = _EtcdWatch(self, prefix, from_revision)
        self._watches.add(w)
        return w

    def grant(self, ttl: int) -> int:
        """etcd raises a TTL below its minimum (about 1.5 x the election timeout: 2 s with the
        defaults) to that minimum."""
        if ttl <= 0:
            raise ValueError("lease TTL must be positive")
        return int(self._call("/lease/grant", {"TTL": str(int(ttl))})["ID"])

    def keepalive(self, lease: int) -> int:
        data = self._call("/lease/keepalive", {"ID": str(lease)})
        ttl = int(data.get("result", data).get("TTL", 0))
        if ttl <= 0:
            raise LeaseNotFound(f"lease {lease} not found (expired or revoked)")
        return ttl

    def revoke(self, lease: int) -> None:
        self._call("/lease/revoke", {"ID": str(lease)})


class _EtcdSnapshot:
    """Every read at the revision of the first one (its header says which)."""

    def __init__(self, store: EtcdStore):
        self._s = store
        self.revision: Optional[int] = None

    def get(self, key: str) -> Optional[Record]:
        recs, rev = self._s._range(key, prefix=False, revision=self.revision)
        self.revision = self.revision or rev
        return recs[0] if recs else None

    def range(self, prefix: str) -> list[Record]:
        recs, rev = self._s._range(prefix, prefix=True, revision=self.revision)
        self.revision = self.revision or rev
        return recs

    def close(self):
        pass


class _EtcdWatch(WatchBase):
    """A thread reads the gateway's watch stream into a queue; ``get`` takes from it.

    A stream that ends or breaks (a member died) is reopened on the next member from the last
    delivered revision + 1, so nothing is lost or repeated; no member for
    ``_WATCH_RECONNECT_FOR`` s puts ``StoreUnavailable`` in the queue.  ``compact_revision`` in
    an answer puts ``StoreCompacted``.
    """

    def __init__(self, store: EtcdStore, prefix: str, from_revision: Optional[int]):
        self._s = store
        self._prefix = prefix
        self._next = from_revision or (store.revision() + 1)
        self._q: "queue.Queue" = queue.Queue()
        self._closed = threading.Event()
        self._sock: Optional[socket.socket] = None
        self._dead = False
        self._thread = threading.Thread(target=self._run, name=f"etcd-watch {prefix}", daemon=True)
        self._thread.start()

    def _run(self):
        httpx = self._s._httpx
        client = httpx.Client(timeout=httpx.Timeout(None, connect=self._s._connect_timeout))
        ep_idx = self._s._current
        failing_since = None
        try:
            while not self._closed.is_set():
                ep = self._s.endpoints[ep_idx % len(self._s.endpoints)]
                try:
                    if self._stream(client, ep):
                        return  # terminal answer queued
                    failing_since = None
                except (httpx.TransportError, OSError) as e:
                    if self._closed.is_set():
                        return
                    now = time.monotonic()
                    failing_since = failing_since or now
                    if now - failing_since > _WATCH_RECONNECT_FOR:
                        self._q.put(StoreUnavailable(f"etcd watch: no member answers: {e}"))
                        return
                    ep_idx += 1
                    if ep_idx % len(self._s.endpoints) == 0:
                        self._closed.wait(0.1)
        except Exception as e:  # a bug must not leave get() waiting forever
            self._q.put(e)
        finally:
            client.close()

    def _stream(self, client, ep: str) -> bool:
        body = {"create_request": {"key": _b64(self._prefix) if self._prefix else _b64(b"\0"),
                                   "range_end": _range_end(self._prefix),
                                   "start_revision": str(self._next)}}
        with client.stream("POST", ep + "/v3/watch", json=body) as resp:
            if resp.status_code != 200:
                resp.read()
                try:
                    err = _error(resp.status_code, resp.json(), ep)
                except ValueError:
                    err = StoreUnavailable(f"etcd watch at {ep}: HTTP {resp.status_code}")
                if isinstance(err, StoreUnavailable):
                    raise OSError(str(err))  # try the next member
                self._q.put(err)
                return True
            stream = resp.extensions.get("network_stream")
            self._sock = stream.get_extra_info("socket") if stream is not None else None
            dec = json.JSONDecoder()
            buf = ""
            for chunk in resp.iter_text():
                buf += chunk
                while True:
                    buf = buf.lstrip()
                    if not buf:
                        break
                    try:
                        msg, end = dec.raw_decode(buf)
                    except ValueError:
                        break  # incomplete: wait for more
                    buf = buf[end:]
                    if self._handle(msg, ep):
                        return True
        if self._closed.is_set():
            return True
        raise OSError(f"etcd watch stream from {ep} ended")

    def _handle(self, msg: dict, ep: str) -> bool:
        if "error" in msg:
            err = msg["error"]
            e = _error(int(err.get("http_code", 500)), err, ep)
            if isinstance(e, StoreUnavailable):
                raise OSError(str(e))
            self._q.put(e)
            return True
        res = msg.get("result", {})
        if int(res.get("compact_revision", 0)) > 0:
            self._q.put(StoreCompacted(revision=int(res["compact_revision"])))
            return True
        for ev in res.get("events", ()):
            kv = ev["kv"]
            rev = int(kv["mod_revision"])
            key = _unb64(kv["key"]).decode()
            if ev.get("type") == "DELETE":
                self._q.put(Event(DELETE, key, None, rev))
            else:
                self._q.put(Event(PUT, key, _decode(kv.get("value")), rev))
            self._next = rev + 1  # a reconnect resumes after the last delivered event
        if res.get("canceled"):
            self._q.put(StoreUnavailable(f"etcd watch canceled: {res.get('cancel_reason', '')}"))
            return True
        return False

    def get(self, timeout: Optional[float] = None) -> Optional[Event]:
        if self._dead:
            return None
        try:
            item = self._q.get(timeout=timeout)
        except queue.Empty:
            return None
        if isinstance(item, Exception):
            self._dead = True
            self.close()
            raise item
        return item

    def close(self) -> None:
        self._closed.set()
        self._s._watches.discard(self)
        sock = self._sock
        if sock is not None:  # wake the reader blocked in recv()
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    @property
    def closed(self) -> bool:
        return self._closed.is_set()
