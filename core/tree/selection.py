"""Selections over a tree index as sets of index intervals.

Because a folder's descendants are one contiguous index range (see :mod:`.index`), any set of
marked files and folders, minus any excluded ones, is a short sorted list of half-open
intervals. Sums over a selection (apparent bytes, cpio bytes, entries) come from prefix sums
in O(intervals), so re-planning after a mark costs microseconds, not a walk of the tree.
"""

from __future__ import annotations

import bisect
import fnmatch
import os
import weakref
from array import array
from collections.abc import Iterable, Iterator
from itertools import accumulate

from .index import TreeIndex


class IntervalSet:
    """A set of entry indices stored as sorted, disjoint, non-adjacent ``[start, end)`` pairs."""

    __slots__ = ("starts", "ends")

    def __init__(self, intervals: Iterable[tuple[int, int]] = ()) -> None:
        merged: list[list[int]] = []
        for s, e in sorted(iv for iv in intervals if iv[1] > iv[0]):
            if merged and s <= merged[-1][1]:
                if e > merged[-1][1]:
                    merged[-1][1] = e
            else:
                merged.append([s, e])
        self.starts = [s for s, _ in merged]
        self.ends = [e for _, e in merged]

    @classmethod
    def from_sorted_indices(cls, indices: Iterable[int]) -> IntervalSet:
        """The set of ``indices`` (ascending, no repeats), built without a tuple per index."""
        out = cls()
        starts, ends = out.starts, out.ends
        for i in indices:
            if ends and ends[-1] == i:
                ends[-1] = i + 1
            else:
                starts.append(i)
                ends.append(i + 1)
        return out

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return zip(self.starts, self.ends, strict=True)

    def __len__(self) -> int:
        return sum(e - s for s, e in self)

    def __bool__(self) -> bool:
        return bool(self.starts)

    def __contains__(self, i: int) -> bool:
        k = bisect.bisect_right(self.starts, i) - 1
        return k >= 0 and i < self.ends[k]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, IntervalSet) and self.starts == other.starts and self.ends == other.ends

    def __repr__(self) -> str:
        return f"IntervalSet({list(self)})"

    def union(self, *others: IntervalSet) -> IntervalSet:
        return IntervalSet([iv for s in (self, *others) for iv in s])

    def difference(self, other: IntervalSet) -> IntervalSet:
        out: list[tuple[int, int]] = []
        cut = list(other)
        k = 0
        for s, e in self:
            while k < len(cut) and cut[k][1] <= s:
                k += 1
            j = k
            cur = s
            while j < len(cut) and cut[j][0] < e:
                cs, ce = cut[j]
                if cs > cur:
                    out.append((cur, cs))
                cur = max(cur, ce)
                j += 1
            if cur < e:
                out.append((cur, e))
        return IntervalSet(out)

    def intersection(self, other: IntervalSet) -> IntervalSet:
        out = []
        a, b = list(self), list(other)
        i = j = 0
        while i < len(a) and j < len(b):
            s = max(a[i][0], b[j][0])
            e = min(a[i][1], b[j][1])
            if s < e:
                out.append((s, e))
            if a[i][1] < b[j][1]:
                i += 1
            else:
                j += 1
        return IntervalSet(out)

    def indices(self) -> Iterator[int]:
        for s, e in self:
            yield from range(s, e)

    def clip(self, lo: int, hi: int) -> Iterator[tuple[int, int]]:
        """The set's intervals cut to ``[lo, hi)``, in order. Found by bisection, so asking about
        one folder's subtree costs the intervals inside it, not all of them (the workbench asks
        for every row it draws)."""
        starts, ends = self.starts, self.ends
        k = max(0, bisect.bisect_right(starts, lo) - 1)
        while k < len(starts) and starts[k] < hi:
            s, e = max(starts[k], lo), min(ends[k], hi)
            if s < e:
                yield s, e
            k += 1


def with_ancestors(index: TreeIndex, sel: IntervalSet) -> IntervalSet:
    """``sel`` plus every folder above its entries (the root, index 0, aside). An archive or image
    that holds a file must hold its parent folders: the kernel's initramfs unpacker drops a file
    whose folder is missing, silently.

    An interval of ``sel`` may run across unrelated folders (the last entries of one folder's
    subtree, then the first of the next one's), so each interval is walked by blocks of siblings:
    a folder's children are contiguous in the index, so one parent lookup serves a whole block,
    and the cost is the number of folders the selection touches, not its entries."""
    missing: set[int] = set()
    parent, first_child, nchild = index.parent, index.first_child, index.nchild
    for start, end in sel:
        i = start
        while i < end:
            p = parent[i]
            a = p
            while a > 0 and a not in missing and a not in sel:
                missing.add(a)  # (a folder kept while its parent moved out still needs that parent)
                a = parent[a]
            i = max(first_child[p] + nchild[p], i + 1) if p >= 0 else i + 1
    return sel.union(IntervalSet((a, a + 1) for a in missing)) if missing else sel


def subtree_set(index: TreeIndex, entries: Iterable[int]) -> IntervalSet:
    """The entries themselves plus everything below the folders among them."""
    ivs = []
    for i in entries:
        ivs.append((i, i + 1))
        sub = index.subtree(i)
        if sub:
            ivs.append((sub.start, sub.stop))
    return IntervalSet(ivs)


class Sums:
    """Prefix sums over index order, built once per (complete) index: typed arrays, 24 bytes an
    entry (Python lists of ints took 100: a list slot and an int object for each sum)."""

    def __init__(self, index: TreeIndex) -> None:
        # what the hardlink correction reads, not the index itself: the shared cache (:meth:`of`)
        # must not keep an index alive
        self._hardlinks, self._link_size, self._alloc = index.hardlinks, index.link_size, index.alloc
        self.size = _prefix(index.size)
        self.cpio = _prefix(index.cpio)
        self.alloc = _prefix(index.alloc)

    @classmethod
    def of(cls, index: TreeIndex) -> Sums:
        """The sums of ``index``, shared: the plan and the estimators of one index ask for them
        (kept while the index lives, rebuilt if it grew since)."""
        key = id(index)
        hit = _SUMS_CACHE.get(key)
        if hit is not None and hit[0]() is index and len(hit[1].cpio) == len(index) + 1:
            return hit[1]
        sums = cls(index)
        _SUMS_CACHE[key] = (weakref.ref(index, lambda _r, k=key: _SUMS_CACHE.pop(k, None)), sums)
        return sums

    def _sum(self, prefix: list[int], sel: IntervalSet) -> int:
        return sum(prefix[e] - prefix[s] for s, e in sel)

    def _link_fix(self, sel: IntervalSet) -> tuple[int, int, int]:
        """Hardlinked inodes whose counted (first) name is outside ``sel`` but another name is in."""
        d_size = d_cpio = d_alloc = 0
        for group in self._hardlinks.values():
            if len(group) < 2 or group[0] in sel:
                continue
            for member in group[1:]:
                if member in sel:
                    real = self._link_size[member]
                    d_size += real
                    d_cpio += (real + 3) & ~3
                    d_alloc += self._alloc[group[0]]
                    break
        return d_size, d_cpio, d_alloc

    def apparent(self, sel: IntervalSet) -> int:
        return self._sum(self.size, sel) + self._link_fix(sel)[0]

    def cpio_bytes(self, sel: IntervalSet) -> int:
        return self._sum(self.cpio, sel) + self._link_fix(sel)[1]

    def allocated(self, sel: IntervalSet) -> int:
        return self._sum(self.alloc, sel) + self._link_fix(sel)[2]


def _prefix(column: Iterable[int]) -> array:
    out = array("q", (0,))
    out.extend(accumulate(column))
    return out


_SUMS_CACHE: dict[int, tuple[weakref.ref, Sums]] = {}


def _glob_parts(pattern: str) -> list[bytes]:
    return [p for p in os.fsencode(pattern).split(b"/") if p and p != b"."]


def has_magic(pattern: str) -> bool:
    return any(c in pattern for c in "*?[")


def match(index: TreeIndex, pattern: str) -> list[int]:
    """Entries whose relative path matches ``pattern``: a plain path, or a glob with ``*``, ``?``,
    ``[...]`` per component and ``**`` for any number of folders."""
    parts = _glob_parts(pattern)
    if not parts:
        return []
    if not has_magic(pattern):
        found = index.lookup(b"/".join(parts))
        return [] if found is None else [found]
    results: list[int] = []

    def walk(i: int, k: int) -> None:
        if k == len(parts):
            results.append(i)
            return
        part = parts[k]
        if part == b"**":  # zero or more folders
            walk(i, k + 1)
            for c in index.children(i):
                if index.is_dir(c):
                    walk(c, k)
            return
        if not index.is_dir(i):
            return
        if has_magic(part.decode("latin-1")):
            for c in index.children(i):
                if fnmatch.fnmatchcase(index.names[c], part):
                    walk(c, k + 1)
        else:
            c = index.child(i, part)
            if c is not None:
                walk(c, k + 1)

    walk(0, 0)
    return sorted(set(results))
