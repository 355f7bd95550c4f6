"""The live estimate of the compressed initrd, and of the UKI size built around it.

The estimator reads the whole base archive once at a *proxy* level, then compresses samples at
the build's own level (the compressors: docs/formats.md, section 2):

1. **the proxy pass**: the base initrd's archive (every entry, in archive order, see
   :mod:`..formats.cpio`) is compressed at a proxy level of the build's compressor, ending a block
   at entry boundaries every ``span_bytes`` so the compressed bytes of each span are known
   exactly, spread over the span's entries by their uncompressed share: ``A``, each entry's proxy
   bytes, kept as prefix sums over the tree index order (a selection's proxy size costs
   O(intervals)) and over the archive order. For zstd the proxy is zstd 9 with the target's window
   (:func:`.quick.proxy_level`; up to zstd 9, the target level itself: the pass *is* the estimate):
   1 MiB pieces of a Debian 12 archive vary 5.4% in their ratio zstd 19 / proxy, against 14% for
   zstd 19 / zstd 3, for the same cost. When compressing is what takes the time, the pass runs in
   one part per worker, each primed with the archive before it;
2. **chunk samples**: the archive is cut into groups of about ``group_bytes`` (preferably where a
   shallow folder starts, so the folders extensions take are mostly whole groups) and chunks of
   about ``chunk_bytes``. Chunks are sampled in the order of :meth:`Estimator._priority`: ranked by
   their proxy ratio (their content as the compressor sees it: text, code, firmware, compressed
   files), walked in a van der Corput order, so every prefix of the sample covers every kind of
   content in proportion (stratified sampling), until ``sample_share`` of the archive is spent at
   the target level. A sampled chunk is compressed at the target level *and* at the proxy after
   the same ``prefix_bytes`` of the archive before it: a strong level finds matches megabytes back
   (a 1 MiB chunk after 1 MiB of prefix came out 7% bigger than in the archive, Debian 12), but
   the proxy, with the same window, finds most of them too, so the ratio of the two is within ~1%
   of the ratio in the archive (+1.2% after 1 MiB, +0.5% after 4 MiB). Where the proxy shows the
   chunk has matches further back than the prefix (:data:`CONTEXT_SENSITIVE`), the prefix doubles
   until it has them, up to the target's window (the demo's text, drawn from a 4 MB pool, needs
   8 MiB; a Debian 12 tree's chunks 2 or 4). Which chunks are sampled is decided on their prefixes,
   before the target level runs, and the target level runs on every worker without waiting for
   a batch's slowest chunk. A chunk's target size is its ratio times its proxy size in the archive;
3. in chunks not sampled, the bytes of compressed files (.gz, .xz, .zst, .png, ...: they do not
   shrink again) take :data:`COMPRESSED_RATIO`, the rest the ratio of the sampled chunks whose rest
   compresses alike (bins of its proxy ratio, :data:`BIN_MIN` samples or more each), with the
   bins' standard errors and the chunks' spread (Student's t, a prior spread worth
   :data:`PRIOR_DF` samples);
4. :meth:`Estimator.deepen` compresses whole groups at the target level with the build's
   parameters after the compressor's window of archive (exact to ~0.2%), the most uncertain per
   byte first (:meth:`Estimator.refine_order`), each one narrowing the band; each build's real
   size calibrates what remains (:meth:`Estimator.calibrate`). Chunk and group sizes and the
   calibration are stored in ``<cache_dir>/.sysextant-calibration.json``.

The error band is stated, not guessed: the 99.5% Student intervals of the modelled chunks, a
floor for the chunk method (:data:`FLOOR`) and for groups known whole (:data:`FLOOR_KNOWN`), and,
for groups a selection cuts through, the spans that mix kept and other entries (how a span's
bytes divide among its entries is not known) plus :data:`PARTIAL_UNCERTAINTY` for the context the
kept part loses, unless :meth:`Estimator.refine` recompressed the kept part.

The first figure before any of this is the quick sample's (:mod:`.quick`).
"""

from __future__ import annotations

import bisect
import hashlib
import json
import lzma
import math
import stat
import threading
import time
import zlib
from array import array
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from itertools import accumulate, chain, pairwise
from pathlib import Path

from ..atomic import write_atomic
from ..errors import Cancelled
from ..formats.cpio import archive_entries, extra_bytes, write_entries
from ..formats.initrd import check_level, zstd_threads
from ..progress import Reporter
from ..tree.fsentry import FsEntry
from ..tree.index import TRAILER_BYTES, TreeIndex
from ..tree.selection import IntervalSet, Sums
from ..units import MiB
from .quick import COMPRESSED, FAST_LEVEL, Estimate, entry_kinds, proxy_level, t995, van_der_corput

CALIBRATION_FILE = ".sysextant-calibration.json"
#: relative error floor of a group modelled from chunk samples (the method's own bias, +0.5% to
#: +1.2% measured on a Debian 12 tree at zstd 19), of a group compressed whole at the target
#: level after its window of archive (0.19% from the real build on that tree), and of the proxy
#: pass when it is the target level itself
FLOOR = 0.01
FLOOR_KNOWN = 0.003
FLOOR_EXACT = 0.002
#: the attribution uncertainty of a group a selection cuts through, relative to its kept part
PARTIAL_UNCERTAINTY = 0.05
#: the samples' budget, as a share of the archive compressed at the target level (prefixes
#: included); with the samples on every worker and the build's two-core, overlapping
#: multi-threaded mode, it keeps the whole estimate (proxy pass included) under a quarter of the
#: build's compression time (bench/uki.py: demo 0.20-0.22x, Debian 12 0.14-0.19x, both within 1.4%)
SAMPLE_SHARE = 0.12
#: at least this many chunks are sampled, whatever the budget (a small tree)
MIN_SAMPLES = 6
#: a sampled chunk's prefix doubles (from ``prefix_bytes`` up to the target's window) while its
#: size at the proxy level after the prefix is more than this much above its size in the archive:
#: the strong level then finds matches further back that the ratio to the proxy cannot carry (the
#: demo's text, drawn from a 4 MB pool, after 1 MiB: 0.76 instead of 0.28)
CONTEXT_SENSITIVE = 0.10
#: compressed files (:data:`.quick.COMPRESSED`: .gz, .xz, .zst, .png, ...) do not shrink again at
#: any level: the ratio target / proxy of their bytes, and its spread. Measured over every chunk
#: of a Debian 12 tree at zstd 19 (proxy zstd 9), the chunks mostly of compressed files: 0.997,
#: spread 0.003; left to the bins, their ratio came from chunks of code (0.89), -1.8% of the whole
COMPRESSED_RATIO = 1.0
COMPRESSED_SPREAD = 0.01
#: chunks of like content (their proxy ratio) share a ratio: bins of at least this many samples,
#: at most this many bins
BIN_MIN = 4
MAX_BINS = 8
#: no sample at all: the proxy's own size, this unsure (relative)
UNSAMPLED_SPREAD = 0.10
#: the spread of the chunks' ratios (target / proxy) within a bin believed before any sample,
#: worth this many chunks (measured: 5.4% over all chunks of a Debian 12 tree at zstd 19)
PRIOR_SPREAD = 0.06
PRIOR_DF = 4


class _Codec:
    """One level (or zstd parameter set) of the build's compressor, with block ends ("flushes")
    where the format allows; ``out`` counts the compressed bytes so far."""

    def __init__(self, kind: str, level: int, params: object = None) -> None:
        self.kind = kind
        self.level = level
        self.can_flush = kind in ("zstd", "gzip", "none")
        if kind == "zstd":
            import zstandard

            # single-threaded: a flush in multi-threaded mode would end a job and lose history
            cctx = (zstandard.ZstdCompressor(compression_params=params) if params is not None
                    else zstandard.ZstdCompressor(level=level, threads=0))
            self.obj = cctx.compressobj()
            self._flush_mode = zstandard.COMPRESSOBJ_FLUSH_BLOCK
        elif kind == "gzip":
            self.obj = zlib.compressobj(level, zlib.DEFLATED, 31)
        elif kind == "xz":
            self.obj = lzma.LZMACompressor(format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32, preset=level)
        self.out = 0

    def write(self, data: bytes) -> int:
        if self.kind == "none":
            self.out += len(data)
        else:
            self.out += len(self.obj.compress(data))
        return len(data)

    def flush_span(self) -> None:
        if self.kind == "zstd":
            self.out += len(self.obj.flush(self._flush_mode))
        elif self.kind == "gzip":
            self.out += len(self.obj.flush(zlib.Z_SYNC_FLUSH))

    def finish(self) -> None:
        if self.kind != "none":
            self.out += len(self.obj.flush())


class _SpanSink:
    """Receives a part's archive bytes and ends a span at the first entry end (``ends``, filled
    by the writer as it goes) at least ``span`` bytes after the last span's end."""

    def __init__(self, codec: _Codec, ends: array, span: int) -> None:
        self.codec = codec
        self.base = codec.out  # compressed bytes before the part (its prefix)
        self.pos = 0
        self.ends, self.span = ends, span
        self._k = 0  # entries before ends[_k] are behind the last span's end
        self._last = 0  # the last span's end
        self.spans: list[tuple[int, int]] = []  # (end offset, compressed bytes of the part at that end)

    def write(self, data: bytes) -> int:
        mv = memoryview(data)
        ends = self.ends
        while True:
            k = bisect.bisect_left(ends, max(self._last + self.span, self.pos), self._k)
            if k == len(ends) or ends[k] > self.pos + len(mv):
                self._k = k
                break
            cut = ends[k] - self.pos
            self.codec.write(mv[:cut])
            self.pos += cut
            mv = mv[cut:]
            self.codec.flush_span()
            self.spans.append((self.pos, self.codec.out - self.base))
            self._last, self._k = self.pos, k + 1
        if len(mv):
            self.codec.write(mv)
            self.pos += len(mv)
        return len(data)


class _Bytes:
    """A sink that keeps what it is given."""

    def __init__(self) -> None:
        self.buf = bytearray()

    def write(self, data: bytes) -> int:
        self.buf += data
        return len(data)


@dataclass
class _Group:
    start: int  # position in the base archive order
    stop: int
    raw: int  # newc bytes
    fast: int  # its proxy bytes in the archive (A summed over its entries)
    intervals: list[tuple[int, int]]  # the group's entries as index intervals
    key: str = ""  # content identity (with the window before it), for the on-disk cache
    target: int | None = None  # compressed whole at the target level with the build's parameters
    chunks: tuple[int, int] = (0, 0)  # its chunks: [first, last) in Estimator.chunks

    @property
    def count(self) -> int:
        return self.stop - self.start


@dataclass
class _Chunk:
    group: int
    start: int  # positions in the archive order
    stop: int
    raw: int
    fast: float  # proxy bytes in the archive
    compressed: int = 0  # newc bytes of its compressed files (.gz, .xz, .zst, .png, ...)
    key: str = ""
    #: sampled: (target, proxy) bytes after the same ``prefix`` bytes of archive
    measured: tuple[int, int] | None = None
    prefix: int = 0


def tree_key(index: TreeIndex, base: IntervalSet) -> str:
    """Identity of the tree content the calibration belongs to (root, names, kinds, sizes)."""
    h = hashlib.sha256(index.root)
    for s, e in base:
        h.update(b"%d-%d;" % (s, e))
    names, n = index.names, len(index)
    for k in range(0, n, 1 << 16):  # in slices: the names of a big tree as objects all at once were 100+ MB
        h.update(b"\0".join(names[k:k + (1 << 16)]))
        h.update(b"\0")
    h.update(index.mode.tobytes())
    h.update(index.size.tobytes())
    return h.hexdigest()[:32]


class _Progress:
    """Progress of parts running in several threads, summed into one task."""

    def __init__(self, reporter: Reporter | None, task: str, total: int) -> None:
        self.reporter = reporter
        self.task = task
        self.total = total
        self.done: dict[int, int] = {}
        self.lock = threading.Lock()

    def part(self, k: int) -> Reporter | None:
        if self.reporter is None:
            return None
        outer = self

        class _Part:
            def __call__(self, task: str, done: int, total: int, unit: str = "bytes", message: str = "") -> None:
                with outer.lock:
                    outer.done[k] = done
                    now = sum(outer.done.values())
                outer.reporter(outer.task, min(now, outer.total), outer.total)

            def check(self) -> None:
                outer.reporter.check()

        return _Part()  # type: ignore[return-value]


class Estimator:
    """Estimates the compressed size of any subset of ``base`` (the full initrd selection).

    :meth:`prepare` runs the proxy pass and compresses the chunk samples at the target level;
    :meth:`deepen` compresses whole groups at the target level (most uncertain first), each
    narrowing the band; :meth:`estimate` is O(selection intervals + group pieces) and never
    touches the disk.
    """

    def __init__(self, index: TreeIndex, base: IntervalSet, *, compression: str, level: int,
                 cache_dir: Path | None = None, reporter: Reporter | None = None, extra: Sequence[FsEntry] = (),
                 group_bytes: int = 32 * MiB, span_bytes: int = 256 * 1024, chunk_bytes: int = 1 * MiB,
                 prefix_bytes: int = 2 * MiB, sample_share: float = SAMPLE_SHARE, sample_bytes: int | None = None,
                 threads: int | None = None, sums: Sums | None = None, fast_level: int | None = None) -> None:
        """``fast_level``: the pass at this plain level instead of :func:`.quick.proxy_level`'s
        choice (a level below the target's makes it sample even where the proxy would be the
        target itself)."""
        check_level(compression, level)
        self.index = index
        self.base = base
        self.compression = compression
        self.level = level
        self.fast_level, self._proxy = proxy_level(compression, level)
        if fast_level is not None:
            if compression != "none":
                check_level(compression, fast_level)
            self.fast_level, self._proxy = min(fast_level, level), None
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.reporter = reporter
        self.extra = list(extra)
        self.group_bytes = group_bytes
        self.span_bytes = span_bytes
        self.chunk_bytes = chunk_bytes
        self.prefix_bytes = prefix_bytes
        self.sample_share = sample_share
        self.sample_bytes = sample_bytes
        # one compressor per worker; at zstd's high levels no more than fit in half the free memory
        self.threads = zstd_threads(level if compression == "zstd" else None) if threads is None else max(1, threads)
        self.sums = sums if sums is not None else Sums.of(index)
        #: the target level is the proxy level: the proxy pass is the estimate
        self.exact_pass = self._proxy is None and self.fast_level == level or compression == "none"
        self.groups: list[_Group] = []
        self.chunks: list[_Chunk] = []
        self.order: array = array("i")
        self.prepared = False
        self.seconds = 0.0  # spent preparing
        #: the last real build: (selection it packed, its compressed bytes)
        self.calibration: tuple[IntervalSet, int] | None = None
        self._refined: dict[tuple[int, tuple[tuple[int, int], ...]], int] = {}
        self._key = f"{tree_key(index, base)}:{compression}:{level}"
        #: per bin of like chunks: (ratio target / proxy, its relative standard error, the chunks'
        #: relative spread, Student's t); then per group what rests on each bin and on samples
        self._bins: list[tuple[float, float, float, float]] = []
        self._edges: list[float] = []
        self._gvec: list[list[float]] = []
        self._gidio: list[float] = []
        self._gmodel: list[float] = []
        self._gmodel_all: list[float] = []
        self._mixed_cache: dict[tuple, float] = {}
        self._df = PRIOR_DF

    # -- the archive's layout -------------------------------------------------------------------
    def _cut(self, order: Sequence[int]) -> tuple[list[tuple[int, int, int]], list[tuple[int, int, int, int]]]:
        """Groups [(start, stop, raw)] and chunks [(group, start, stop, raw)] over archive positions."""
        index = self.index
        cpio, mode = index.cpio, index.mode
        g, c = self.group_bytes, self.chunk_bytes
        groups: list[tuple[int, int, int]] = []
        chunks: list[tuple[int, int, int, int]] = []
        start, size, cstart, csize = 0, 0, 0, 0
        for pos, i in enumerate(order):
            if size >= g and pos > start and (
                    (stat.S_ISDIR(mode[i]) and (size >= 3 * g // 2 or index.depth(i) <= 4)) or size >= 2 * g):
                chunks.append((len(groups), cstart, pos, csize))
                groups.append((start, pos, size))
                start = cstart = pos
                size = csize = 0
            elif csize >= c and pos > cstart:
                chunks.append((len(groups), cstart, pos, csize))
                cstart, csize = pos, 0
            n = cpio[i]
            size += n
            csize += n
        if len(order) > start:
            chunks.append((len(groups), cstart, len(order), csize))
            groups.append((start, len(order), size))
        return groups, chunks

    def _back(self, pos: int, nbytes: int) -> int:
        """The archive position from which the entries before ``pos`` hold ``nbytes`` or more."""
        cpio, order = self.index.cpio, self.order
        q, got = pos, 0
        while q > 0 and got < nbytes:
            q -= 1
            got += cpio[order[q]]
        return q

    def _key_of(self, lo: int, hi: int, *extra: object) -> str:
        """Content identity of archive positions [lo, hi): entries, names, modes and sizes."""
        index = self.index
        ents = self.order[lo:hi]
        h = hashlib.sha256(repr((self.compression, self.level, self.fast_level, *extra)).encode())
        h.update(ents.tobytes())
        h.update(array("I", map(index.mode.__getitem__, ents)).tobytes())
        h.update(array("q", map(index.size.__getitem__, ents)).tobytes())
        h.update(b"/".join(map(index.names.__getitem__, ents)))
        return h.hexdigest()[:32]

    # -- the proxy pass -------------------------------------------------------------------------
    def _codec(self, target: bool) -> _Codec:
        if target:
            return _Codec(self.compression, self.level)
        return _Codec(self.compression, self.fast_level, self._proxy)

    def _window(self) -> int:
        """How far back the proxy's matches reach (its prefix for a part of the pass)."""
        if self.compression == "zstd":
            import zstandard

            p = self._proxy or zstandard.ZstdCompressionParameters.from_level(self.fast_level, source_size=1 << 32)
            return 1 << p.window_log
        return self.window()

    def _pass(self, lo: int, hi: int, report: Reporter | None) -> tuple[int, array, list[tuple[int, int]]]:
        """Compress archive positions [lo, hi) at the proxy level after the proxy's window of
        archive before them; returns (raw, entry end offsets, span ends [(offset, compressed)])."""
        index, order = self.index, self.order
        codec = self._codec(False)
        shaper = codec if codec.can_flush else _Codec("zstd", 1)
        if lo > 0:  # the context the part has in the archive
            prefix = order[self._back(lo, self._window()):lo]
            sink = _Bytes()
            write_entries(index, prefix, sink, mtime=0, with_trailer=False)
            for c in {id(codec): codec, id(shaper): shaper}.values():
                c.write(bytes(sink.buf))
                c.flush_span()
        ends = array("q")
        spans = _SpanSink(shaper, ends, self.span_bytes)
        base_out = codec.out
        if shaper is codec:
            raw = write_entries(index, order[lo:hi], spans, mtime=0, ends=ends, with_trailer=False,
                                reporter=report, task="estimate: proxy pass", total=0)
            codec.flush_span()
        else:
            class _Both:
                def write(self, data: bytes) -> int:
                    codec.write(data)
                    return spans.write(data)

            raw = write_entries(index, order[lo:hi], _Both(), mtime=0, ends=ends, with_trailer=False,
                                reporter=report, task="estimate: proxy pass", total=0)
            shaper.flush_span()
            codec.finish()
        span_ends = [(o, c) for o, c in spans.spans if o < raw]
        total_shaped = shaper.out - spans.base
        span_ends.append((raw, total_shaped))
        if shaper is not codec and total_shaped:
            scale = (codec.out - base_out) / total_shaped
            span_ends = [(o, c * scale) for o, c in span_ends]
        return raw, ends, span_ends

    def prepare(self) -> None:
        """The proxy pass over the whole base archive (the slow part: cancellable, with
        progress, on every worker), cached sizes, and the chunk samples at the target level."""
        t0 = time.monotonic()
        index = self.index
        self.order = order = archive_entries(index, self.base)
        cuts, chunk_cuts = self._cut(order)
        total = sum(size for _, _, size in cuts) or 1
        # the pass in one part per worker, cut between groups: reading files (natively, without
        # the GIL) and compressing run on every core, and Python does next to nothing per entry
        # (the writer appends entry ends in bulk, spans end by bisection): 1,000,000 small files
        # at zstd 3, median of five 7.8 s in one part, 6.0 s in two (a Debian tree at the zstd 19
        # proxy: 9.3 s in one, 6.0 s in two)
        nparts = max(1, min(self.threads, len(cuts)))
        bounds = [0]
        acc = 0
        for _s, stop, size in cuts:
            acc += size
            if acc >= total * len(bounds) / nparts and len(bounds) < nparts:
                bounds.append(stop)
        bounds.append(len(order))
        parts = [(a, b) for a, b in zip(bounds, bounds[1:], strict=False) if b > a]
        progress = _Progress(self.reporter, "estimate: proxy pass", total)
        if self.reporter is not None:
            self.reporter("estimate: proxy pass", 0, total)
        if len(parts) == 1:
            results = [self._pass(*parts[0], progress.part(0))]
        else:
            with ThreadPoolExecutor(max_workers=len(parts)) as pool:
                results = list(pool.map(lambda k: self._pass(*parts[k], progress.part(k)), range(len(parts))))
        # each span's compressed bytes spread over its entries by their uncompressed share, by
        # archive position first
        apos = array("d", bytes(8 * len(order)))
        span_cuts = array("i")  # archive positions where a span (a block of the pass) starts
        for (lo, _hi), (_raw, ends, span_ends) in zip(parts, results, strict=True):
            if lo > 0:
                span_cuts.append(lo)
            first, span_off, span_c = 0, 0, 0.0
            for end_off, end_c in span_ends:
                j = bisect.bisect_left(ends, end_off, first)  # entry j closes this span
                if j == len(ends):
                    break
                if j + 1 < len(ends):
                    span_cuts.append(lo + j + 1)
                share = (end_c - span_c) / (end_off - span_off) if end_off > span_off else 0.0
                apos[lo + first:lo + j + 1] = array(
                    "d", [share * (b - a) for a, b in pairwise(chain((span_off,), ends[first:j + 1]))])
                first, span_off, span_c = j + 1, end_off, end_c
        if self.reporter is not None:
            self.reporter("estimate: proxy pass", total, total)
        self._cuts = span_cuts
        self._pp = array("d", (0.0,))
        self._pp.extend(accumulate(apos))
        attributed = array("d", bytes(8 * len(index)))
        for p, i in enumerate(order):
            attributed[i] = apos[p]
        del apos
        self._pa = array("d", (0.0,))
        self._pa.extend(accumulate(attributed))
        del attributed
        pp = self._pp
        groups: list[_Group] = []
        prev_key = ""
        for start, stop, raw in cuts:
            ivs = IntervalSet.from_sorted_indices(sorted(order[start:stop]))
            key = self._key_of(start, stop, "group", prev_key) if self.cache_dir is not None else ""
            groups.append(_Group(start, stop, raw, int(round(pp[stop] - pp[start])), list(ivs), key))
            prev_key = key
        self.chunks = [_Chunk(g, s, e, raw, pp[e] - pp[s]) for g, s, e, raw in chunk_cuts]
        if not self.exact_pass:
            kinds, cpio = entry_kinds(index, self.base), index.cpio
            for ch in self.chunks:
                ch.compressed = sum(cpio[i] for i in order[ch.start:ch.stop] if kinds[i] == COMPRESSED)
        for n, ch in enumerate(self.chunks):
            grp = groups[ch.group]
            grp.chunks = (n if grp.chunks[1] == 0 else grp.chunks[0], n + 1)
        self.groups = groups
        # the partition of the base into group pieces, sorted by index start
        pieces = sorted((s, e, g) for g, grp in enumerate(groups) for s, e in grp.intervals)
        self._piece_start = [p[0] for p in pieces]
        self._pieces = pieces
        self.prepared = True
        if self.exact_pass:
            for grp in groups:
                grp.target = grp.fast
        self._load_cache()
        if not self.exact_pass:
            self._sample()
        self._fit()
        self.seconds = time.monotonic() - t0

    # -- samples at the target level --------------------------------------------------------------
    def _priority(self) -> list[int]:
        """Every chunk, in the order they are sampled: ranked by their proxy ratio (the content's
        kind, as the compressor sees it: text, code, firmware blobs, compressed files), then a van
        der Corput walk over that ranking, so every prefix of the order is spread evenly over the
        kinds (stratified sampling; the same order every time)."""
        n = len(self.chunks)
        ranked = sorted(range(n), key=lambda c: (self.chunks[c].fast / max(1, self.chunks[c].raw), c))
        out: list[int] = []
        seen = bytearray(n)
        j = 0
        while len(out) < n:
            k = int(van_der_corput(j) * n)
            j += 1
            for kk in range(k, n):  # past the sequence's resolution: the next free one
                if not seen[kk]:
                    seen[kk] = 1
                    out.append(ranked[kk])
                    break
        return out

    def _context(self, n: int) -> tuple[bytearray, memoryview, int]:
        """Chunk ``n``'s bytes, the prefix of archive it is measured after, and its size at the
        proxy level after that prefix. The prefix is ``prefix_bytes``, doubled while the proxy
        shows the chunk has matches further back (its size after the prefix more than
        :data:`CONTEXT_SENSITIVE` above its size in the archive), up to the target's window: the
        demo's text, drawn from a 4 MB pool, needs 8 MiB; most chunks of a real tree need 2. The
        proxy ends a block where the pass did (its blocks cost a little). Cheap next to the
        target level: the budget is decided on it, before the target level runs."""
        ch = self.chunks[n]
        if self.reporter is not None:
            self.reporter.check()
        body = _Bytes()
        offsets = array("q")
        write_entries(self.index, self.order[ch.start:ch.stop], body, mtime=0, with_trailer=False, ends=offsets)
        a = bisect.bisect_right(self._cuts, ch.start)
        b = bisect.bisect_left(self._cuts, ch.stop, a)
        pieces = [offsets[p - ch.start - 1] for p in self._cuts[a:b]] + [len(body.buf)]
        window = self.window()
        full = _Bytes()  # the archive before the chunk, as far back as the target's matches reach
        write_entries(self.index, self.order[self._back(ch.start, window):ch.start], full, mtime=0,
                      with_trailer=False)
        context = memoryview(full.buf)[-window:]
        want = self.prefix_bytes
        while True:
            pre = context[-want:]
            fast = self._after(False, pre, body.buf, pieces)
            if len(pre) == len(context) or not ch.fast or fast <= (1 + CONTEXT_SENSITIVE) * ch.fast:
                return body.buf, pre, fast
            want *= 2

    def _after(self, target: bool, pre: bytes | bytearray, body: bytes | bytearray, ends: Sequence[int]) -> int:
        """Compressed bytes of ``body`` right after ``pre`` in one stream, a block ended at each
        of the offsets ``ends`` in ``body`` (the last is its length)."""
        if self.compression == "xz":  # no block end mid-stream: (prefix + body) - prefix
            level = self.level if target else self.fast_level
            alone, both = _Codec("xz", level), _Codec("xz", level)
            alone.write(bytes(pre))
            alone.finish()
            both.write(bytes(pre))
            both.write(bytes(body))
            both.finish()
            return max(0, both.out - alone.out)
        codec = self._codec(target)
        if pre:
            codec.write(bytes(pre))
            codec.flush_span()
        before = codec.out
        view = memoryview(body)
        start = 0
        for end in ends:
            codec.write(view[start:end])
            codec.flush_span()
            start = end
        return codec.out - before

    def _budget(self) -> int:
        """Bytes the samples may compress at the target level (prefixes included)."""
        if self.sample_bytes is not None:
            return self.sample_bytes
        return int(self.sample_share * sum(c.raw for c in self.chunks))

    def _sample(self) -> None:
        """Sample chunks in :meth:`_priority` order until the budget is spent (at least
        :data:`MIN_SAMPLES`): each chunk's prefix and proxy size here (:meth:`_context`), its
        target size on the workers, one chunk queued ahead of them."""
        order = [n for n in self._priority() if self.groups[self.chunks[n].group].target is None]
        budget = self._budget()
        spent = sum(c.raw + c.prefix for c in self.chunks if c.measured is not None)
        have = sum(1 for c in self.chunks if c.measured is not None)
        task = "estimate: samples at the target level"
        todo = (n for n in order if self.chunks[n].measured is None)
        workers = max(1, self.threads)

        def target(body: bytearray, pre: memoryview) -> int:
            return self._after(True, pre, body, [len(body)])

        # which chunks are sampled is decided on their prefixes (known before the target level
        # runs), so it is the same every time; the target level then runs on every worker without
        # a batch waiting for its slowest chunk (an 8 MiB prefix next to a 2 MiB one)
        pending: deque[tuple[int, int, int, Future[int]]] = deque()
        try:
            with ThreadPoolExecutor(max_workers=workers) as pool:
                for n in todo:
                    if spent >= budget and have >= MIN_SAMPLES:
                        break
                    if self.reporter is not None:
                        self.reporter(task, min(spent, budget), budget)
                    body, pre, fast = self._context(n)
                    spent += self.chunks[n].raw + len(pre)
                    have += 1
                    pending.append((n, fast, len(pre), pool.submit(target, body, pre)))
                    del body, pre
                    while len(pending) > workers or pending and pending[0][3].done():
                        self._sampled(*pending.popleft())
                while pending:
                    self._sampled(*pending.popleft())
        finally:
            self._save_cache()

    def _sampled(self, n: int, fast: int, prefix: int, size: Future[int]) -> None:
        ch = self.chunks[n]
        ch.measured, ch.prefix = (size.result(), fast), prefix

    def _fit(self) -> None:
        """Ratios target / proxy: measured for the groups known whole and the sampled chunks;
        for the other chunks, :data:`COMPRESSED_RATIO` for their compressed files and for the rest
        that of the sampled chunks of like content (bins of the rest's proxy ratio, each of at
        least :data:`BIN_MIN` samples); and their uncertainty. Then each
        entry's modelled target bytes, as prefix sums over the index order."""
        if not self.prepared:
            return
        chunks, groups = self.chunks, self.groups
        if self.exact_pass:  # the pass is the target level: nothing modelled
            self._pt = self._pa
            self._gmodel_all = [float(grp.fast) for grp in groups]
            self._mixed_cache = {}
            self._gvec = [[] for _ in groups]
            self._gidio = [0.0] * len(groups)
            self._gmodel = [0.0] * len(groups)
            return
        est: list[float | None] = [None] * len(chunks)  # a sampled chunk's target bytes, estimated by the ratio method
        samples = []
        for n, ch in enumerate(chunks):
            if ch.measured is not None and ch.measured[1] > 0 and ch.fast > 0:
                est[n] = ch.measured[0] * ch.fast / ch.measured[1]
                samples.append(n)
        # a chunk's compressed files take COMPRESSED_RATIO; the rest of its proxy bytes (``o``) the
        # ratio of the sampled chunks whose rest compresses alike (bins of the rest's proxy ratio)
        comp = [min(ch.fast, ch.compressed) for ch in chunks]
        rest = [ch.fast - c for ch, c in zip(chunks, comp, strict=True)]
        like = [o / max(1, ch.raw - ch.compressed) for ch, o in zip(chunks, rest, strict=True)]
        bins = _bins(sorted((c for c in samples if rest[c] > 0), key=lambda c: (like[c], c)), like)
        edges = [(like[a[-1]] + like[b[0]]) / 2 for a, b in zip(bins, bins[1:], strict=False)]
        stats = []  # per bin: (ratio of the rest, relative standard error, relative per-chunk spread, t)
        for members in bins:
            o = sum(rest[c] for c in members)
            r = max(0.0, sum(est[c] - COMPRESSED_RATIO * comp[c] for c in members) / o)
            n = len(members)
            s2 = (sum(rest[c] * ((est[c] - COMPRESSED_RATIO * comp[c]) / rest[c] - r) ** 2 for c in members) / o
                  * n / (n - 1) / r ** 2) if n > 1 and r > 0 else 0.0
            df = PRIOR_DF + n - 1
            s2 = (PRIOR_DF * PRIOR_SPREAD ** 2 + (n - 1) * s2) / df
            stats.append((r, math.sqrt(s2 / n), math.sqrt(s2), t995(df)))
        self._bins, self._edges = stats, edges
        nb = max(1, len(stats))
        ratio = array("d", bytes(8 * len(chunks)))
        self._gmodel_all = []  # per group: its modelled target bytes
        self._mixed_cache = {}
        self._gvec = []  # per group: bytes modelled by each bin's ratio (its unsampled chunks)
        self._gidio = []  # per group: sum of (spread * bytes)^2 over its unsampled chunks
        self._gmodel = []  # per group: bytes that rest on samples (the method's floor applies)
        for grp in groups:
            a, b = grp.chunks
            vec = [0.0] * nb
            idio = model = 0.0
            for n in range(a, b):
                ch = chunks[n]
                if grp.target is not None:
                    ratio[n] = grp.target / grp.fast if grp.fast else 1.0
                    continue
                if est[n] is not None:
                    ratio[n] = est[n] / ch.fast
                elif stats:
                    k = bisect.bisect_right(edges, like[n])
                    r, _se, spread, _t = stats[k]
                    ratio[n] = (COMPRESSED_RATIO * comp[n] + r * rest[n]) / ch.fast
                    vec[k] += r * rest[n]
                    idio += (spread * r * rest[n]) ** 2 + (COMPRESSED_SPREAD * comp[n]) ** 2
                else:  # no sample at all (none could be read): the proxy's own figure, unsure
                    ratio[n] = 1.0
                    vec[0] += ch.fast
                    idio += (UNSAMPLED_SPREAD * ch.fast) ** 2
                model += ratio[n] * ch.fast
            self._gvec.append(vec)
            self._gidio.append(idio)
            self._gmodel.append(model)
            self._gmodel_all.append(sum(ratio[n] * chunks[n].fast for n in range(a, b)))
        if not stats:
            self._bins = [(1.0, UNSAMPLED_SPREAD * 2, UNSAMPLED_SPREAD, t995(1))]
        self._df = min((PRIOR_DF + len(m) - 1 for m in bins), default=PRIOR_DF)
        # each entry's modelled target bytes: its proxy bytes times its chunk's ratio
        order, pp = self.order, self._pp
        per_entry = array("d", bytes(8 * len(self.index)))
        for n, ch in enumerate(chunks):
            r = ratio[n]
            for p in range(ch.start, ch.stop):
                per_entry[order[p]] = r * (pp[p + 1] - pp[p])
        self._pt = array("d", (0.0,))
        self._pt.extend(accumulate(per_entry))
        self._chunk_ratio = ratio

    def _t(self) -> float:
        return t995(self._df)

    # -- refinement ---------------------------------------------------------------------------
    def _uncertainty(self, g: int) -> float:
        """Variance of group ``g``'s modelled bytes (what compressing it whole would remove)."""
        vec = self._gvec[g]
        return (sum((se * v) ** 2 for (_r, se, _s, _t), v in zip(self._bins, vec, strict=False)) + self._gidio[g]
                + (FLOOR * self._gmodel[g]) ** 2)

    def next_group(self) -> int | None:
        """The group whose compression at the target level narrows the band most per byte, or
        None when every group is known."""
        order = self.refine_order()
        return order[0] if order else None

    def refine_order(self) -> list[int]:
        """Every group not yet known at the target level, most uncertain per byte first."""
        if not self.prepared or self.exact_pass:
            return []
        todo = [g for g, grp in enumerate(self.groups) if grp.target is None]
        return sorted(todo, key=lambda g: (-self._uncertainty(g) / max(1, self.groups[g].raw), g))

    def deepen(self, groups: Sequence[int] | None = None, *, task: str = "estimate: target level") -> int:
        """Compress groups (default: all not yet done, most uncertain first) whole at the target
        level with the build's compressor and parameters, after the compressor's window of
        archive, on every worker; cancellable. Returns groups done."""
        if not self.prepared:
            self.prepare()
        todo = [g for g in (self.refine_order() if groups is None else groups) if self.groups[g].target is None]
        if not todo:
            self._fit()
            return 0
        total = sum(self.groups[g].raw for g in todo)
        done = 0
        # libzstd's single-threaded mode, one group per worker: its sizes differ from the build's
        # multi-threaded mode by a few parts per million (measured at level 19: 68,030,077 vs
        # 68,032,855 bytes on 120 MiB of the demo archive), far inside the band, at the same speed
        # as one multi-threaded worker, and it holds the compressor's state only (level 19: ~105
        # MiB a group instead of ~300 MiB with the multi-threaded mode's job buffers)
        workers = max(1, min(self.threads, len(todo)))

        def one(g: int) -> int:
            grp = self.groups[g]
            if self.reporter is not None:
                self.reporter.check()
            codec = self._codec(True)
            if grp.start > 0 and codec.can_flush:  # the window before it: what the build's stream has
                pre = _Bytes()
                write_entries(self.index, self.order[self._back(grp.start, self.window()):grp.start], pre,
                              mtime=0, with_trailer=False)
                codec.write(bytes(pre.buf))
                codec.flush_span()
            before = codec.out
            # the cancel check runs inside the group too: a level-19 group takes seconds
            check = _CancelCheck(self.reporter) if self.reporter is not None else None
            try:
                write_entries(self.index, self.order[grp.start:grp.stop], codec, mtime=0, with_trailer=False,
                              reporter=check, task=task, total=grp.raw)
            except Cancelled:
                _abandon(codec.obj)
                raise
            codec.flush_span()
            return codec.out - before

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

    # -- the on-disk cache: target sizes of groups and chunks, and the build calibration --------
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

    def _chunk_key(self, n: int) -> str:
        """A chunk's identity: its group's and the group before (whose keys chain the content
        before them) and its place in the group."""
        ch = self.chunks[n]
        if not ch.key:
            grp = self.groups[ch.group]
            prev = self.groups[ch.group - 1].key if ch.group else ""
            ch.key = hashlib.sha256(f"{prev}:{grp.key}:{n - grp.chunks[0]}:{self.prefix_bytes}:doubling".encode()).hexdigest()[:32]
        return ch.key

    def _load_cache(self) -> None:
        data = self._read_cache()
        if not data:
            return
        targets = data.get("groups", {})
        for grp in self.groups:
            t = targets.get(grp.key)
            if grp.target is None and isinstance(t, int):
                grp.target = t
        measured = data.get("chunks", {})
        if measured:
            for n, ch in enumerate(self.chunks):
                m = measured.get(self._chunk_key(n))
                if isinstance(m, list) and len(m) == 3 and all(isinstance(x, int) for x in m):
                    ch.measured, ch.prefix = (m[0], m[1]), m[2]
        entry = data.get("calibration", {}).get(self._key)
        if isinstance(entry, dict) and "kept" in entry and "actual" in entry:
            self.calibration = (IntervalSet(tuple(iv) for iv in entry["kept"]), int(entry["actual"]))

    def _save_cache(self) -> None:
        path = self._cache_path()
        if path is None or self.exact_pass:
            return
        data = self._read_cache()
        targets = data.setdefault("groups", {})
        for grp in self.groups:
            if grp.target is not None:
                targets[grp.key] = grp.target
        measured = data.setdefault("chunks", {})
        for n, ch in enumerate(self.chunks):
            if ch.measured is not None:
                measured[self._chunk_key(n)] = [*ch.measured, ch.prefix]
        if self.calibration is not None:
            kept, actual = self.calibration
            data.setdefault("calibration", {})[self._key] = {"kept": [list(iv) for iv in kept], "actual": actual}
        write_atomic(path, (json.dumps(data, indent=1, sort_keys=True) + "\n").encode())

    def calibrate(self, kept: IntervalSet, actual_compressed: int) -> None:
        """Learn from a real build: ``actual_compressed`` bytes for the selection ``kept``.

        The build's framing differs and groups not yet compressed at the target level are
        modelled; the factor ``k`` = actual / model(kept) carries that to other selections. It
        is recomputed from the current model, so it stays right as :meth:`deepen` replaces
        modelled groups by measured ones.
        """
        if not self.prepared:
            self.prepare()
        self.calibration = (kept.intersection(self.base), int(actual_compressed))
        path = self._cache_path()
        if path is not None:
            data = self._read_cache()
            data.setdefault("calibration", {})[self._key] = {"kept": [list(iv) for iv in self.calibration[0]],
                                                            "actual": self.calibration[1]}
            write_atomic(path, (json.dumps(data, indent=1, sort_keys=True) + "\n").encode())

    def _k(self) -> tuple[float, float, dict[int, float]]:
        """(k, model of the calibrated selection, its kept share of each modelled group);
        k = 1 before any build."""
        if self.calibration is None:
            return 1.0, 0.0, {}
        kept, actual = self.calibration
        model, shares, _unsure = self._model(kept)
        return (actual / model if model > 0 else 1.0), model, shares

    # -- estimating ----------------------------------------------------------------------------
    def _overhead(self) -> int:
        """Trailer and extra entries: a few hundred bytes, counted uncompressed."""
        return TRAILER_BYTES + extra_bytes(self.extra)

    def _touched(self, kept: IntervalSet) -> dict[int, list]:
        """Per group that ``kept`` touches: [kept entries, proxy bytes A, modelled target bytes,
        kept index intervals]."""
        pieces, starts, pa, pt = self._pieces, self._piece_start, self._pa, self._pt
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
                    rec[2] += pt[hi] - pt[lo]
                    rec[3].append((lo, hi))
                k += 1
        return out

    def _model(self, kept: IntervalSet) -> tuple[float, dict[int, float], float]:
        """(uncalibrated size, kept share of each group's modelled bytes, bytes of unsure
        prorating)."""
        total = 0.0
        shares: dict[int, float] = {}
        unsure = 0.0
        for g, (count, a, t, parts) in self._touched(kept).items():
            grp = self.groups[g]
            if count == grp.count:
                total += grp.target if grp.target is not None else t
                if grp.target is None:
                    shares[g] = 1.0
                continue
            exact = self._refined.get((g, tuple(parts)))
            value = t if exact is None or a <= 0 else t * exact / a
            if grp.target is None and grp.fast:
                shares[g] = (a if exact is None else exact) / grp.fast
            if exact is None:
                unsure += PARTIAL_UNCERTAINTY * value + self._mixed(g, parts)
            total += value
        return total + self._overhead(), shares, unsure

    def _mixed(self, g: int, parts: list[tuple[int, int]]) -> float:
        """Modelled bytes of group ``g``'s spans that hold entries of ``parts`` and others too.
        A span's compressed bytes are spread over its entries by their uncompressed share; how
        they really divide is not known (duplicates compress to nothing, their first copy does
        not), so the kept part of a mixed span may be anything from none of it to all of it.
        Selections that move whole folders mix a span or two at each edge; one that keeps every
        other file of a folder mixes them all. O(the group's entries), cached."""
        key = (g, tuple(parts))
        hit = self._mixed_cache.get(key)
        if hit is not None:
            return hit
        grp, order, pp, cuts = self.groups[g], self.order, self._pp, self._cuts
        kept = IntervalSet(parts)
        starts, ends = kept.starts, kept.ends
        a = bisect.bisect_right(cuts, grp.start)
        b = bisect.bisect_left(cuts, grp.stop, a)
        edges = [grp.start, *cuts[a:b], grp.stop]
        mixed = 0.0
        for lo, hi in zip(edges, edges[1:], strict=False):
            seen_in = seen_out = False
            for p in range(lo, hi):
                i = order[p]
                k = bisect.bisect_right(starts, i) - 1
                if k >= 0 and i < ends[k]:
                    seen_in = True
                else:
                    seen_out = True
                if seen_in and seen_out:
                    mixed += pp[hi] - pp[lo]
                    break
        ratio = (grp.target if grp.target is not None else self._gmodel_all[g]) / grp.fast if grp.fast else 1.0
        self._mixed_cache[key] = mixed * ratio
        return mixed * ratio

    def window(self) -> int:
        """The target compressor's window (how far back a match may reach)."""
        if self.compression == "zstd":
            import zstandard

            return 1 << zstandard.ZstdCompressionParameters.from_level(self.level, source_size=1 << 32).window_log
        if self.compression == "xz":
            return (256 * 1024, 1 * MiB, 2 * MiB, 4 * MiB, 4 * MiB, 8 * MiB, 8 * MiB, 16 * MiB, 32 * MiB,
                    64 * MiB)[self.level]
        return 32 * 1024

    def _spread(self, shares: dict[int, float]) -> tuple[float, float]:
        """(99.5% half-width of the sampling error, bytes resting on samples) of the groups'
        modelled bytes in the proportions ``shares``."""
        nb = len(self._bins)
        vec = [0.0] * nb
        idio = model = 0.0
        for g, sh in shares.items():
            for k, v in enumerate(self._gvec[g][:nb]):
                vec[k] += sh * v
            idio += sh * sh * self._gidio[g]
            model += sh * self._gmodel[g]
        var = sum((t * se * v) ** 2 for (_r, se, _s, t), v in zip(self._bins, vec, strict=True))
        return math.sqrt(var + self._t() ** 2 * idio), model

    def _band(self, model: float, shares: dict[int, float], unsure: float) -> float:
        """Half-width of the band of an uncalibrated ``model`` with those modelled ``shares``."""
        half, modelled = self._spread(shares)
        floor = FLOOR_EXACT if self.exact_pass else FLOOR_KNOWN
        return half + FLOOR * modelled + floor * max(0.0, model - modelled) + unsure

    def estimate(self, kept: IntervalSet) -> Estimate:
        """Estimated compressed initrd for the entries ``kept`` (a subset of the base)."""
        if not self.prepared:
            self.prepare()
        kept = kept.intersection(self.base)
        raw = self.sums.cpio_bytes(kept) + self._overhead()
        if self.compression == "none":
            return Estimate(raw, raw, raw, "uncompressed archive size", True, raw)
        model, shares, unsure = self._model(kept)
        k, cal_model, cal_shares = self._k()
        est = k * model
        if self.calibration is None:
            band = self._band(model, shares, unsure)
        else:
            # exact at the calibrated selection; away from it, what changed carries the
            # uncertainty of the modelled groups and of k
            diff = {g: abs(shares.get(g, 0.0) - cal_shares.get(g, 0.0)) for g in set(shares) | set(cal_shares)}
            half, moved = self._spread(diff)
            floor = FLOOR_EXACT if self.exact_pass else FLOOR_KNOWN
            band = (floor * est + k * (half + FLOOR * moved + unsure)
                    + abs(k - 1.0) * abs(model - cal_model))
        plural = "s" if len(self.groups) != 1 else ""
        if self.exact_pass:
            method = (f"{len(self.groups)} group{plural} of ~{self.group_bytes // MiB} MiB, {len(self.groups)} "
                      f"compressed at {self.compression} {self.level} (the pass is at the build's level)")
        else:
            known = sum(1 for grp in self.groups if grp.target is not None)
            sampled = sum(1 for c in self.chunks if c.measured is not None)
            method = (f"{len(self.groups)} group{plural} of ~{self.group_bytes // MiB} MiB, {known} compressed at "
                      f"{self.compression} {self.level}, the rest from {sampled} of {len(self.chunks)} chunks sampled "
                      f"at {self.level} by content and a pass at {self.fast_level}")
        if self.calibration is not None:
            method += ", calibrated by the last build"
        if unsure:
            method += ", cut groups prorated"
        return Estimate(int(round(est)), int(est - band), int(est + band + 0.999), method, False, raw)

    def refine(self, kept: IntervalSet) -> int:
        """Recompress at the proxy level the kept part of each group ``kept`` cuts through, so
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
            codec = self._codec(False)
            write_entries(self.index, entries, codec, mtime=0, with_trailer=False)
            codec.finish()
            self._refined[key] = codec.out
            done += 1
        return done


#: cancelled compressor streams kept alive: freeing a libzstd stream waits for its worker
#: thread to finish the job in hand, seconds at high levels, which would hold up a cancel (and
#: quitting the workbench). The oldest is let go once newer ones exist; its job is long done.
_ABANDONED: list[object] = []


def _bins(xs: list[int], key: Sequence[float]) -> list[list[int]]:
    """Samples ``xs`` (sorted by ``key``, their proxy ratio) cut into bins of like content: at
    most :data:`MAX_BINS`, each of at least :data:`BIN_MIN`, cut where the ratio jumps most (text
    next to code, code next to random data) rather than at equal counts, which put two chunks of
    the demo's text (ratio 0.11) in one bin with code (0.5), their ratios 0.3 and 0.95 apart."""
    n = len(xs)
    if n < 2 * BIN_MIN:
        return [xs] if xs else []
    logs = [math.log(max(key[c], 1e-9)) for c in xs]
    cuts: list[int] = []  # a bin starts at each of these positions of xs
    for k in sorted(range(1, n), key=lambda k: (logs[k - 1] - logs[k], k)):
        if len(cuts) + 1 >= min(MAX_BINS, n // BIN_MIN):
            break
        trial = sorted([*cuts, k])
        bounds = [0, *trial, n]
        if all(b - a >= BIN_MIN for a, b in zip(bounds, bounds[1:], strict=False)):
            cuts = trial
    bounds = [0, *cuts, n]
    return [xs[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]


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


__all__ = ["CALIBRATION_FILE", "FAST_LEVEL", "Estimate", "Estimator", "tree_key"]
