"""The live estimate of the compressed initrd, and of the UKI size built around it.

Compressing each file alone overestimates a compressed archive by about 11%; compressing
consecutive tens-of-MB groups of the archive stream comes within a few tenths of a percent
(measured on real trees; bench/uki.py prints the current figures). So the estimator:

1. cuts the base initrd's archive (every entry, in archive order, see :mod:`.cpio`) into groups
   of about ``group_bytes`` of newc data, cut preferably where a shallow folder starts, so the
   folders extensions take are mostly whole groups;
2. compresses each group once at a fast level of the build's own compressor (zstd 3, gzip 1,
   xz 0), ending a block ("flush") at entry boundaries every ``span_bytes`` so the compressed
   bytes of each span of entries are known exactly, and spreads each span's bytes over its
   entries by their uncompressed share;
3. keeps two prefix sums over the tree index order: ``A`` (fast compressed bytes per entry) and
   ``B`` = A * (1 - x), x being the span's fast ratio (compressed / uncompressed). A selection's
   fast size is the sum of ``A`` over its intervals, in O(intervals);
4. predicts the target level as ``A - b * B``: the gain of a strong level over a fast one is
   proportional to how compressible the data is (none for random data, x = 1). ``b`` is fitted
   on sample groups compressed at the target level with the build's parameters before any build,
   and re-fitted from the real size after each build (:meth:`Estimator.calibrate`), stored in
   ``<cache_dir>/.sysextant-calibration.json`` keyed by tree, compressor and level.

The error band is stated, not guessed: it combines the spread of ``b`` over the samples (exposed
only through the change of ``B`` since the last calibration), the attribution uncertainty of
groups the selection cuts through (unless :meth:`Estimator.refine` recompressed them), and a
floor for the group approximation.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import lzma
import stat
import zlib
from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import accumulate
from pathlib import Path

from ..atomic import write_atomic
from ..errors import Cancelled
from ..formats.cpio import archive_entries, extra_bytes, write_entries
from ..formats.initrd import check_level, compressor, zstd_threads
from ..progress import Reporter
from ..tree.fsentry import FsEntry
from ..tree.index import TRAILER_BYTES, TreeIndex
from ..tree.selection import IntervalSet, Sums
from ..units import MiB

CALIBRATION_FILE = ".sysextant-calibration.json"
FAST_LEVEL = {"zstd": 3, "gzip": 1, "xz": 0, "none": 0}
#: relative error floor of the group model when groups are >= 4 compressor windows (0.7% measured
#: by bench/uki.py on the demo tree at zstd 19); smaller groups lose more matches across their edges (1.8% at group = window,
#: zstd 19 on the demo tree), see :meth:`Estimator.floor`. Then the attribution uncertainty of a
#: group a selection cuts through, relative to its kept bytes.
FLOOR = 0.01
PARTIAL_UNCERTAINTY = 0.03


@dataclass(frozen=True)
class Estimate:
    """Compressed initrd size: ``bytes`` expected, true size believed within [low, high]."""

    bytes: int
    low: int
    high: int
    method: str
    exact: bool
    uncompressed: int = 0

    @property
    def error(self) -> float:
        """Half-width of the band relative to the estimate."""
        return (self.high - self.low) / 2 / self.bytes if self.bytes else 0.0

    def describe(self) -> str:
        if self.exact:
            return f"{self.bytes:,} bytes (exact)"
        return f"~{self.bytes:,} bytes (estimate, ±{self.error * 100:.1f}%: {self.method})"


class _FastCodec:
    """The fast level of the build's compressor, with span flushes where the format allows."""

    def __init__(self, kind: str, level: int) -> None:
        self.kind = kind
        self.level = level
        self.can_flush = kind in ("zstd", "gzip", "none")
        if kind == "zstd":
            import zstandard

            # single-threaded: a flush in multi-threaded mode would end a job and lose history
            self.obj = zstandard.ZstdCompressor(level=level, threads=0).compressobj()
            self._flush_mode = zstandard.COMPRESSOBJ_FLUSH_BLOCK
        elif kind == "gzip":
            self.obj = zlib.compressobj(level, zlib.DEFLATED, 31)
        elif kind == "xz":
            self.obj = lzma.LZMACompressor(format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32, preset=level)
        self.out = 0

    def write(self, data: bytes) -> None:
        if self.kind == "none":
            self.out += len(data)
        else:
            self.out += len(self.obj.compress(data))

    def flush_span(self) -> None:
        if self.kind == "zstd":
            self.out += len(self.obj.flush(self._flush_mode))
        elif self.kind == "gzip":
            self.out += len(self.obj.flush(zlib.Z_SYNC_FLUSH))

    def finish(self) -> None:
        if self.kind != "none":
            self.out += len(self.obj.flush())


class _SpanSink:
    """Receives the group's archive bytes and ends a span at the offsets it is told."""

    def __init__(self, codec: _FastCodec) -> None:
        self.codec = codec
        self.pos = 0
        self.cuts: list[int] = []  # pending span ends (archive offsets), ascending
        self.spans: list[tuple[int, int]] = []  # (end offset, compressed bytes at that end)

    def write(self, data: bytes) -> int:
        mv = memoryview(data)
        while self.cuts and self.pos + len(mv) >= self.cuts[0]:
            k = self.cuts.pop(0) - self.pos
            self.codec.write(mv[:k])
            self.pos += k
            mv = mv[k:]
            self.codec.flush_span()
            self.spans.append((self.pos, self.codec.out))
        if len(mv):
            self.codec.write(mv)
            self.pos += len(mv)
        return len(data)


@dataclass
class _Group:
    start: int  # position in the base archive order
    stop: int
    raw: int  # newc bytes
    fast: int  # compressed at the fast level, as one stream
    intervals: list[tuple[int, int]]  # the group's entries as index intervals
    key: str = ""  # content identity, for the on-disk cache of target sizes
    target: int | None = None  # compressed at the target level with the build's parameters

    @property
    def count(self) -> int:
        return self.stop - self.start


def _spread(entries: list[tuple[int, int]], raw: int, compressed: int, attributed: array,
            weighted: array) -> None:
    """Give each entry its uncompressed share of a span's compressed bytes (A), and A * (1 - x)."""
    x = min(1.0, compressed / raw) if raw else 1.0
    for i, nbytes in entries:
        a = compressed * nbytes / raw if raw else 0.0
        attributed[i] += a
        weighted[i] += a * (1.0 - x)


def _depths(index: TreeIndex) -> array:
    depth = array("B", bytes(len(index)))
    parent = index.parent
    for i in range(1, len(index)):
        d = depth[parent[i]] + 1
        depth[i] = d if d < 255 else 255
    return depth


def tree_key(index: TreeIndex, base: IntervalSet) -> str:
    """Identity of the tree content the calibration belongs to (root, names, kinds, sizes)."""
    h = hashlib.sha256(index.root)
    for s, e in base:
        h.update(b"%d-%d;" % (s, e))
    h.update(b"\0".join(index.names))
    h.update(index.mode.tobytes())
    h.update(index.size.tobytes())
    return h.hexdigest()[:32]


class Estimator:
    """Estimates the compressed size of any subset of ``base`` (the full initrd selection).

    :meth:`prepare` runs the fast pass and compresses a sample of groups at the target level;
    :meth:`deepen` compresses the remaining groups at the target level (in the background, as
    long as the user lets it), which narrows the band to the group approximation;
    :meth:`estimate` is O(selection intervals + group pieces) and never touches the disk.
    """

    def __init__(self, index: TreeIndex, base: IntervalSet, *, compression: str, level: int,
                 cache_dir: Path | None = None, reporter: Reporter | None = None, extra: Sequence[FsEntry] = (),
                 group_bytes: int = 32 * MiB, span_bytes: int = 256 * 1024, sample_bytes: int = 48 * MiB,
                 threads: int | None = None) -> None:
        check_level(compression, level)
        self.index = index
        self.base = base
        self.compression = compression
        self.level = level
        self.fast_level = min(FAST_LEVEL[compression], level)
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.reporter = reporter
        self.extra = list(extra)
        self.group_bytes = group_bytes
        self.span_bytes = span_bytes
        self.sample_bytes = sample_bytes
        # one compressor per worker; at zstd's high levels no more than fit in half the free memory
        self.threads = zstd_threads(level if compression == "zstd" else None) if threads is None else max(1, threads)
        self.sums = Sums(index)
        self.groups: list[_Group] = []
        self.order: list[int] = []
        self.prepared = False
        self.b = 0.0  # groups not compressed at the target level: target = A - b * B
        self.b_spread = 0.0
        #: the last real build: (selection it packed, its compressed bytes)
        self.calibration: tuple[IntervalSet, int] | None = None
        self._refined: dict[tuple[int, tuple[tuple[int, int], ...]], int] = {}
        self._key = f"{tree_key(index, base)}:{compression}:{level}"

    # -- preparing ----------------------------------------------------------------------------
    def _cut_groups(self, order: list[int]) -> list[tuple[int, int, int]]:
        index = self.index
        cpio, mode = index.cpio, index.mode
        depth = _depths(index)
        g = self.group_bytes
        cuts: list[tuple[int, int, int]] = []
        start, size = 0, 0
        for pos, i in enumerate(order):
            if size >= g and pos > start:
                is_dir = stat.S_ISDIR(mode[i])
                if (is_dir and depth[i] <= 4) or (is_dir and size >= 3 * g // 2) or size >= 2 * g:
                    cuts.append((start, pos, size))
                    start, size = pos, 0
            size += cpio[i]
        if len(order) > start:
            cuts.append((start, len(order), size))
        return cuts

    def _compress_entries(self, entries: Sequence[int], level: int, *, spans: bool) -> tuple[int, int, list, list]:
        """Compress ``entries`` as one stream at ``level`` with the fast codec; returns (raw,
        compressed, entry ends [(i, offset)], span ends [(offset, compressed)]).

        xz cannot end a block mid-stream, so its spans take their shape from zstd 1 run
        alongside (flushed at the same entry ends), scaled to the xz total of the group.
        """
        codec = _FastCodec(self.compression, level)
        shaper = codec if codec.can_flush or not spans else _FastCodec("zstd", 1)
        sink = _SpanSink(shaper)
        ends: list[tuple[int, int]] = []
        last = [0]
        span = self.span_bytes if spans else 1 << 62

        def after(i: int, offset: int) -> None:
            ends.append((i, offset))
            if offset - last[0] >= span:
                sink.cuts.append(offset)
                last[0] = offset

        if shaper is codec:
            raw = write_entries(self.index, entries, sink, mtime=0, after_entry=after, with_trailer=False)
        else:
            class _Both:
                def write(self, data: bytes) -> int:
                    codec.write(data)
                    return sink.write(data)

            raw = write_entries(self.index, entries, _Both(), mtime=0, after_entry=after, with_trailer=False)
            shaper.finish()
        codec.finish()
        span_ends = [(o, c) for o, c in sink.spans if o < raw]
        span_ends.append((raw, shaper.out))
        if shaper is not codec and shaper.out:
            scale = codec.out / shaper.out
            span_ends = [(o, round(c * scale)) for o, c in span_ends[:-1]] + [(raw, codec.out)]
        return raw, codec.out, ends, span_ends

    def _group_key(self, entries: Sequence[int], fast: int) -> str:
        index = self.index
        h = hashlib.sha256(b"%s:%d:%d:%d;" % (self.compression.encode(), self.level, self.fast_level, fast))
        for i in entries:
            h.update(b"%d:%d:%d:" % (i, index.mode[i], index.data_bytes(i)))
            h.update(index.names[i])
            h.update(b"/")
        return h.hexdigest()[:32]

    def prepare(self) -> None:
        """Compress every group at the fast level (the slow part: cancellable, with progress),
        reuse cached target-level sizes, and sample the target level on a few groups."""
        index = self.index
        order = archive_entries(index, self.base)
        n = len(index)
        attributed = array("d", bytes(8 * n))
        weighted = array("d", bytes(8 * n))
        cuts = self._cut_groups(order)
        total = sum(size for _, _, size in cuts) or 1
        done = 0
        groups: list[_Group] = []
        task = "estimate: compress groups"
        for start, stop, _size in cuts:
            if self.reporter is not None:
                self.reporter(task, done, total)
            entries = order[start:stop]
            raw, fast, ends, span_ends = self._compress_entries(entries, self.fast_level, spans=True)
            # spread each span's compressed bytes over its entries by their uncompressed share;
            # spans end at entry ends, the last one at the group's end with the frame's tail
            k, span_off, span_c, prev_off = 0, 0, 0, 0
            pending: list[tuple[int, int]] = []
            for i, off in ends:
                pending.append((i, off - prev_off))
                prev_off = off
                if off >= span_ends[k][0]:
                    end_off, end_c = span_ends[k]
                    _spread(pending, end_off - span_off, end_c - span_c, attributed, weighted)
                    pending = []
                    span_off, span_c = end_off, end_c
                    k += 1
            ivs = IntervalSet((i, i + 1) for i in sorted(entries))
            groups.append(_Group(start, stop, raw, fast, list(ivs), self._group_key(entries, fast)))
            done += raw
        if self.reporter is not None:
            self.reporter(task, total, total)
        self.order = order
        self.groups = groups
        # prefix sums as typed arrays: 8 bytes an entry, not a float object and a list slot (32)
        self._pa = array("d", (0.0,)) + array("d", accumulate(attributed))
        self._pb = array("d", (0.0,)) + array("d", accumulate(weighted))
        # the partition of the base into group pieces, sorted by index start
        pieces = sorted((s, e, g) for g, grp in enumerate(groups) for s, e in grp.intervals)
        self._piece_start = [p[0] for p in pieces]
        self._pieces = pieces
        self.prepared = True
        if self.level == self.fast_level or self.compression == "none":
            for grp in groups:
                grp.target = grp.fast
        self._load_cache()
        self._sample()

    def _sample(self) -> None:
        """Compress a few groups of spread-out compressibility at the target level, fit ``b``."""
        known = [g for g, grp in enumerate(self.groups) if grp.target is not None]
        budget = self.sample_bytes - sum(self.groups[g].raw for g in known)
        ranked = sorted(range(len(self.groups)), key=lambda g: self.groups[g].fast / max(1, self.groups[g].raw))
        picks: list[int] = []
        for frac in (0.5, 0.15, 0.85, 0.0, 1.0, 0.3, 0.7):
            if not ranked:
                break
            g = ranked[min(len(ranked) - 1, int(frac * (len(ranked) - 1) + 0.5))]
            if g in picks or self.groups[g].target is not None or self.groups[g].raw > budget:
                continue
            picks.append(g)
            budget -= self.groups[g].raw
        if not picks and not known and self.groups:  # every group is over the budget: the smallest
            picks = [min(range(len(self.groups)), key=lambda g: self.groups[g].raw)]
        self.deepen(picks, task="estimate: sample target level")

    def deepen(self, groups: Sequence[int] | None = None, *, task: str = "estimate: target level") -> int:
        """Compress groups (default: all not yet done) at the target level with the build's
        compressor and parameters, two groups at a time; cancellable. Returns groups done."""
        if not self.prepared:
            self.prepare()
        todo = [g for g in (range(len(self.groups)) if groups is None else groups) if self.groups[g].target is None]
        if not todo:
            self._fit()
            return 0
        from concurrent.futures import ThreadPoolExecutor

        total = sum(self.groups[g].raw for g in todo)
        done = 0
        # libzstd's single-threaded mode, one group per worker: its sizes differ from the build's
        # multi-threaded mode by a few parts per million (measured at level 19: 68,030,077 vs
        # 68,032,855 bytes on 120 MiB of the demo archive), far inside the band, at the same speed
        # as one multi-threaded worker, and it holds the compressor's state only (level 19: ~105
        # MiB a group instead of ~300 MiB with the multi-threaded mode's job buffers)
        open_sink = compressor(self.compression, self.level, threads=0)
        workers = max(1, min(self.threads, len(todo)))

        def one(g: int) -> int:
            grp = self.groups[g]
            if self.reporter is not None:
                self.reporter.check()
            counter = _Counter()
            sink = open_sink(counter, size=grp.raw)
            # the cancel check runs inside the group too: a level-19 group takes seconds
            check = _CancelCheck(self.reporter) if self.reporter is not None else None
            try:
                write_entries(self.index, self.order[grp.start:grp.stop], sink, mtime=0, with_trailer=False,
                              reporter=check, task=task, total=grp.raw)
            except Cancelled:
                _abandon(sink)
                raise
            sink.finish()
            return counter.n

        def record(g: int, size: int) -> None:
            nonlocal done
            self.groups[g].target = size
            done += self.groups[g].raw
            if self.reporter is not None:
                self.reporter(task, done, total)

        try:
            if self.reporter is not None:
                self.reporter(task, 0, total)
            if workers == 1:  # in the caller's thread: a caller may run it as a daemon it need not wait for
                for g in todo:
                    record(g, one(g))
            else:
                with ThreadPoolExecutor(max_workers=workers) as pool:
                    for g, size in zip(todo, pool.map(one, todo), strict=True):
                        record(g, size)
        finally:
            self._fit()
            self._save_cache()
        return len(todo)

    def _fit(self) -> None:
        """Fit ``b`` (target = A - b * B) on the groups compressed at the target level."""
        pts = []
        for grp in self.groups:
            if grp.target is None:
                continue
            a, b = self._sums(IntervalSet(grp.intervals))
            pts.append((a, grp.target, b))
        num = sum((a - t) * b for a, t, b in pts)
        den = sum(b * b for _, _, b in pts)
        self.b = num / den if den > 0 else 0.0
        per = [(a - t) / b for a, t, b in pts if b > 0.05 * a]
        spread = max((abs(v - self.b) for v in per), default=0.0)
        # few informative samples say little about the spread: a group's gain from the fast to
        # the target level varies with its content (measured on the demo tree: one sampled group
        # left the whole-archive estimate 8% off), so until more groups are known say so
        floor = 0.05 if len(per) >= 3 else 0.8
        self.b_spread = max(spread, floor * abs(self.b)) * (1.5 if len(per) <= 2 else 1.0)
        if not per and self.level != self.fast_level and self.compression != "none":
            self.b_spread = 0.5  # nothing to go by: say so with a wide band

    # -- the on-disk cache: target sizes per group and the build calibration -------------------
    def _cache_path(self) -> Path | None:
        return self.cache_dir / CALIBRATION_FILE if self.cache_dir is not None else None

    def _read_cache(self) -> dict:
        path = self._cache_path()
        if path is None or not path.is_file():
            return {}
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _load_cache(self) -> None:
        data = self._read_cache()
        targets = data.get("groups", {})
        for grp in self.groups:
            t = targets.get(grp.key)
            if grp.target is None and isinstance(t, int):
                grp.target = t
        entry = data.get("calibration", {}).get(self._key)
        if isinstance(entry, dict) and "kept" in entry and "actual" in entry:
            self.calibration = (IntervalSet(tuple(iv) for iv in entry["kept"]), int(entry["actual"]))

    def _save_cache(self) -> None:
        path = self._cache_path()
        if path is None:
            return
        data = self._read_cache()
        targets = data.setdefault("groups", {})
        for grp in self.groups:
            if grp.target is not None and self.level != self.fast_level:
                targets[grp.key] = grp.target
        if self.calibration is not None:
            kept, actual = self.calibration
            data.setdefault("calibration", {})[self._key] = {"kept": [list(iv) for iv in kept], "actual": actual}
        write_atomic(path, (json.dumps(data, indent=1, sort_keys=True) + "\n").encode())

    def calibrate(self, kept: IntervalSet, actual_compressed: int) -> None:
        """Learn from a real build: ``actual_compressed`` bytes for the selection ``kept``.

        The whole archive compresses a little better than its groups apart (matches across group
        edges), the build's framing differs, and groups not yet compressed at the target level
        are modelled; the factor ``k`` = actual / model(kept) carries all of that to other
        selections. It is recomputed from the current model, so it stays right as
        :meth:`deepen` replaces modelled groups by measured ones.
        """
        if not self.prepared:
            self.prepare()
        self.calibration = (kept.intersection(self.base), int(actual_compressed))
        self._save_cache()

    def _k(self) -> tuple[float, float, float]:
        """(k, model of the calibrated selection, its modelled B); k = 1 before any build."""
        if self.calibration is None:
            return 1.0, 0.0, 0.0
        kept, actual = self.calibration
        model, model_b, _ = self._model(kept)
        return (actual / model if model > 0 else 1.0), model, model_b

    # -- estimating ----------------------------------------------------------------------------
    def _sums(self, sel: IntervalSet) -> tuple[float, float]:
        pa, pb = self._pa, self._pb
        a = b = 0.0
        for s, e in sel:
            a += pa[e] - pa[s]
            b += pb[e] - pb[s]
        return a, b

    def _overhead(self) -> int:
        """Trailer and extra entries: a few hundred bytes, counted uncompressed."""
        return TRAILER_BYTES + extra_bytes(self.extra)

    def _touched(self, kept: IntervalSet) -> dict[int, list]:
        """Per group that ``kept`` touches: [kept entries, A share, B share, kept index intervals]."""
        pieces, starts, pa, pb = self._pieces, self._piece_start, self._pa, self._pb
        out: dict[int, list] = {}
        for s, e in kept:
            k = max(0, bisect.bisect_right(starts, s) - 1)
            while k < len(pieces) and pieces[k][0] < e:
                ps, pe, g = pieces[k]
                lo = ps if ps > s else s
                hi = pe if pe < e else e
                if lo < hi:
                    rec = out.get(g)
                    if rec is None:
                        rec = out[g] = [0, 0.0, 0.0, []]
                    rec[0] += hi - lo
                    rec[1] += pa[hi] - pa[lo]
                    rec[2] += pb[hi] - pb[lo]
                    rec[3].append((lo, hi))
                k += 1
        return out

    def _model(self, kept: IntervalSet) -> tuple[float, float, float]:
        """(uncalibrated size, B of groups without a target size, bytes of unsure prorating)."""
        total = 0.0
        model_b = 0.0
        unsure = 0.0
        for g, (count, a, bsh, parts) in self._touched(kept).items():
            grp = self.groups[g]
            if count == grp.count:
                if grp.target is not None:
                    total += grp.target
                else:
                    total += a - self.b * bsh
                    model_b += bsh
                continue
            exact = self._refined.get((g, tuple(parts)))
            fast = a if exact is None else exact
            if grp.target is not None:
                # the group's own gain per unit of B: random data gains nothing, text the most
                ga, gb = self._sums(IntervalSet(grp.intervals))
                b_g = (ga - grp.target) / gb if gb > 0 else 0.0
                value = fast - b_g * bsh if gb > 0 else (fast * grp.target / grp.fast if grp.fast else 0.0)
            else:
                value = fast - self.b * bsh
                model_b += bsh
            if exact is None:
                unsure += PARTIAL_UNCERTAINTY * value
            total += value
        return total + self._overhead(), model_b, unsure

    def window(self) -> int:
        """The target compressor's window (how far back a match may reach)."""
        if self.compression == "zstd":
            import zstandard

            return 1 << zstandard.ZstdCompressionParameters.from_level(self.level).window_log
        if self.compression == "xz":
            return (256 * 1024, 1 * MiB, 2 * MiB, 4 * MiB, 4 * MiB, 8 * MiB, 8 * MiB, 16 * MiB, 32 * MiB,
                    64 * MiB)[self.level]
        return 32 * 1024

    def floor(self) -> float:
        """Relative error of the group approximation for this group size and window."""
        short = max(0.0, 4 * self.window() / self.group_bytes - 1.0)
        return FLOOR + 0.01 * short

    def estimate(self, kept: IntervalSet) -> Estimate:
        """Estimated compressed initrd for the entries ``kept`` (a subset of the base)."""
        if not self.prepared:
            self.prepare()
        kept = kept.intersection(self.base)
        raw = self.sums.cpio_bytes(kept) + self._overhead()
        if self.compression == "none":
            return Estimate(raw, raw, raw, "uncompressed archive size", True, raw)
        model, model_b, unsure = self._model(kept)
        k, cal_model, cal_b = self._k()
        est = k * model
        floor = self.floor()
        if self.calibration is None:
            band = floor * est + self.b_spread * model_b + unsure
        else:
            # exact at the calibrated selection; away from it, what changed carries the
            # uncertainty of b (modelled groups) and of k (cross-group gains)
            band = (floor * est + k * (self.b_spread * abs(model_b - cal_b) + unsure)
                    + abs(k - 1.0) * abs(model - cal_model))
        known = sum(1 for grp in self.groups if grp.target is not None)
        plural = "s" if len(self.groups) != 1 else ""
        method = (f"{len(self.groups)} group{plural} of ~{self.group_bytes // MiB} MiB, {known} compressed at "
                  f"{self.compression} {self.level}, the rest at {self.fast_level} scaled")
        if self.calibration is not None:
            method += ", calibrated by the last build"
        if unsure:
            method += ", cut groups prorated"
        return Estimate(int(round(est)), int(est - band), int(est + band + 0.999), method, False, raw)

    def refine(self, kept: IntervalSet) -> int:
        """Recompress at the fast level the kept part of each group ``kept`` cuts through, so
        later estimates of it use exact figures; cancellable. Returns the groups recompressed."""
        if not self.prepared:
            self.prepare()
        kept = kept.intersection(self.base)
        partial = {g: rec[3] for g, rec in self._touched(kept).items() if rec[0] < self.groups[g].count}
        done = 0
        for g, parts in partial.items():
            key = (g, tuple(parts))
            if key in self._refined:
                continue
            if self.reporter is not None:
                self.reporter("estimate: refine cut groups", done, len(partial), "steps")
            grp = self.groups[g]
            mask = IntervalSet(parts)
            entries = [i for i in self.order[grp.start:grp.stop] if i in mask]
            _raw, fast, _ends, _spans = self._compress_entries(entries, self.fast_level, spans=False)
            self._refined[key] = fast
            done += 1
        return done


#: cancelled compressor streams kept alive: freeing a libzstd stream waits for its worker
#: thread to finish the job in hand, seconds at high levels, which would hold up a cancel (and
#: quitting the workbench). The oldest is let go once newer ones exist; its job is long done.
_ABANDONED: list[object] = []


def _abandon(stream: object) -> None:
    _ABANDONED.append(stream)
    del _ABANDONED[:-2]


class _CancelCheck:
    """A reporter for the inner loop of a group: checks for cancellation, reports nothing (the
    group's progress is reported once it is done)."""

    def __init__(self, reporter: Reporter) -> None:
        self.reporter = reporter

    def __call__(self, task: str, done: int, total: int, unit: str = "bytes", message: str = "") -> None:
        self.reporter.check()

    def check(self) -> None:
        self.reporter.check()


class _Counter:
    """A sink that only counts bytes (for sampled target-level sizes)."""

    def __init__(self) -> None:
        self.n = 0

    def write(self, data: bytes) -> int:
        self.n += len(data)
        return len(data)

    def flush(self) -> None:
        pass


__all__ = ["CALIBRATION_FILE", "Estimate", "Estimator", "tree_key"]
