"""A sparse, hierarchical allocation bitmap kept in the Store.

Why this shape: a pool may be a /8 or an IPv6 /64, so nothing may cost in
proportion to the pool size -- not the storage, not one allocation.

* Level 0 (leaves): bit ``o`` set = ordinal ``o`` of the pool is allocated.  The
  bits are cut into blocks of ``BLOCK_BITS``, each stored as little-endian
  ``bytes`` under its own key; an absent key is an all-free block, so an empty
  /64 costs no storage and releasing the last address deletes the key again.
* Levels 1..n (summaries): bit ``j`` of block ``k`` at level ``L`` is set when
  block ``k * BLOCK_BITS + j`` of level ``L - 1`` is full.  A search that finds
  its block full climbs until a summary names a non-full block and descends
  again, so even a nearly full pool is searched in a bounded number of reads
  (about two per level).

Block indexes are written as fixed-width hex so that the store's key order is
the numeric order (``allocated()`` streams addresses sorted for free).

Only ordinals in ``[lo, hi]`` exist: the caller keeps reserved addresses
(network, broadcast, subnet-router anycast) out of that range, so the
popcount of the leaves is exactly the number of addresses handed out.
"""
from __future__ import annotations

from typing import Iterator, Optional

BLOCK_BITS = 4096  # 512 bytes per block: one small row write per allocation


def _mask(lo: int, hi: int) -> int:
    """Bits lo..hi (inclusive) set."""
    return ((1 << (hi - lo + 1)) - 1) << lo


def _lowest(x: int) -> int:
    return (x & -x).bit_length() - 1


def _encode(x: int) -> bytes:
    return x.to_bytes((x.bit_length() + 7) // 8, "little")


class Layout:
    """The immutable shape of one pool's bitmap: valid ordinals, block counts
    per level and key names."""

    __slots__ = ("lo", "hi", "bits", "counts", "_leaf_fmt", "_summary_fmts")

    def __init__(self, key_id: str, lo: int, hi: int, block_bits: Optional[int] = None):
        self.lo, self.hi = lo, hi
        # tests shrink the blocks to exercise several summary levels cheaply
        self.bits = B = block_bits or BLOCK_BITS
        counts = [hi // B + 1]
        while counts[-1] > 1:
            counts.append((counts[-1] + B - 1) // B)
        self.counts = tuple(counts)
        width = [len(f"{c - 1:x}") for c in counts]
        self._leaf_fmt = f"ipam/bits/{key_id}/{{:0{width[0]}x}}"
        self._summary_fmts = [f"ipam/full/{key_id}/{lvl}/{{:0{width[lvl]}x}}"
                              for lvl in range(len(counts))]

    def key(self, level: int, block: int) -> str:
        if level == 0:
            return self._leaf_fmt.format(block)
        return self._summary_fmts[level].format(block)

    def valid(self, level: int, block: int) -> int:
        """Mask of the bits of (level, block) that stand for something."""
        B = self.bits
        base = block * B
        if level == 0:
            return _mask(max(self.lo, base) - base, min(self.hi, base + B - 1) - base)
        return _mask(0, min(B, self.counts[level - 1] - base) - 1)

    def is_full(self, level: int, block: int, x: int) -> bool:
        v = self.valid(level, block)
        return x & v == v


def prefixes(key_id: str) -> tuple[str, str]:
    """Key prefixes holding every block of a pool (leaves, summaries)."""
    return f"ipam/bits/{key_id}/", f"ipam/full/{key_id}/"


class Bitmap:
    """The bitmap of one pool seen through one store transaction.

    Blocks read or written in this transaction are cached, so the
    find-then-set of one allocation reads each block once.  ``cached``: read
    the blocks with ``txn.get(key, cached=True)`` (a v2 txn may answer from the
    store's record cache; the commit validates it).
    """

    def __init__(self, txn, layout: Layout, cached: bool = False):
        self._t = txn
        self._l = layout
        self._cache: dict[str, int] = {}
        self._cached = cached

    # --- block I/O -----------------------------------------------------------
    def _read(self, level: int, block: int) -> int:
        key = self._l.key(level, block)
        x = self._cache.get(key)
        if x is None:
            rec = self._t.get(key, cached=True) if self._cached else self._t.get(key)
            x = int.from_bytes(rec.value, "little") if rec is not None else 0
            self._cache[key] = x
        return x

    def _write(self, level: int, block: int, x: int) -> None:
        key = self._l.key(level, block)
        self._cache[key] = x
        if x:
            self._t.put(key, _encode(x))
        else:  # all free again: keep the store sparse
            self._t.delete(key)

    # --- queries ---------------------------------------------------------------
    def test(self, o: int) -> bool:
        B = self._l.bits
        k, j = divmod(o, B)
        return bool(self._read(0, k) >> j & 1)

    def find_free(self, a: int, b: int) -> Optional[int]:
        """Lowest free ordinal in [a, b], or None.

        Bounded cost: a block skipped here is either full (the summary says
        so, and it is never read) or only partly inside [a, b] -- at most the
        two edge blocks of each level."""
        B = self._l.bits
        a, b = max(a, self._l.lo), min(b, self._l.hi)
        if a > b:
            return None
        last = b // B
        k: Optional[int] = a // B
        while k is not None and k <= last:
            base = k * B
            free = ~self._read(0, k) & _mask(max(a, base) - base, min(b, base + B - 1) - base)
            if free:
                return base + _lowest(free)
            k = self._next_not_full(1, k + 1, last)
        return None

    def _next_not_full(self, level: int, s: int, e: int) -> Optional[int]:
        """Smallest block index in [s, e] of level ``level - 1`` that the
        summary at ``level`` does not mark full."""
        if s > e:
            return None
        if level >= len(self._l.counts):
            return s  # level - 1 is the single top block: no summary above it
        B = self._l.bits
        last = e // B
        k: Optional[int] = s // B
        while k is not None and k <= last:
            base = k * B
            not_full = ~self._read(level, k) & _mask(max(s, base) - base,
                                                     min(e, base + B - 1) - base)
            if not_full:
                return base + _lowest(not_full)
            k = self._next_not_full(level + 1, k + 1, last)
        return None

    # --- updates ---------------------------------------------------------------
    def set(self, o: int) -> None:
        """Mark ordinal ``o`` allocated (the caller checked it was free)."""
        B = self._l.bits
        k, j = divmod(o, B)
        x = self._read(0, k) | 1 << j
        self._write(0, k, x)
        level = 0
        # a block that just became full propagates one bit upwards, and so on
        while self._l.is_full(level, k, x) and level + 1 < len(self._l.counts):
            level += 1
            k, j = divmod(k, B)
            x = self._read(level, k) | 1 << j
            self._write(level, k, x)

    def clear(self, o: int) -> bool:
        """Mark ordinal ``o`` free; False if it was not allocated."""
        B = self._l.bits
        k, j = divmod(o, B)
        x = self._read(0, k)
        if not x >> j & 1:
            return False
        level = 0
        while True:
            was_full = self._l.is_full(level, k, x)
            self._write(level, k, x & ~(1 << j))
            if not was_full or level + 1 >= len(self._l.counts):
                return True
            level += 1
            k, j = divmod(k, B)
            x = self._read(level, k)


def iter_set(store, layout: Layout) -> Iterator[int]:
    """Every allocated ordinal, ascending, from one listing of the leaves."""
    prefix = layout.key(0, 0).rsplit("/", 1)[0] + "/"
    for rec in store.list(prefix):
        base = int(rec.key[len(prefix):], 16) * layout.bits
        x = int.from_bytes(rec.value, "little")
        while x:
            low = x & -x
            yield base + low.bit_length() - 1
            x ^= low
