"""A quick first estimate of the compressed initrd: a stratified sample, at the build's own level.

The full :class:`~.estimate.Estimator` reads every file of the base archive before its first
figure, tens of seconds on a big tree. This one reads a sample, in seconds, and says how sure it
is (see docs/formats.md, section 2, for the compressors):

1. every entry of the base gets a *content kind* from its name, mode and folder alone (no I/O):
   ``meta`` (folders, links, empty files: newc headers and names only), ``compressed``
   (``.gz .xz .zst .png .jar`` ...: they do not shrink again), ``firmware`` (under a ``firmware``
   folder), ``elf`` (executable, ``.so``, ``.ko``), ``text`` (source, config, docs by suffix) and
   ``other``; then ``copy``: a file with the size and name of one shortly before it in the
   archive, which the build stores as a long match (package docs and licences shipped by
   every package of a source; :func:`copies`). A kind is a *stratum*: the compression ratio
   varies little within one and a lot between them (random blobs ~1.0, code ~0.3, text
   ~0.1-0.25, copies ~0.01);
2. each stratum is sampled in *units* of about ``run_bytes`` of its newc bytes (a run of
   consecutive entries of that kind, or a slice of one big file) at well-spread positions (a van
   der Corput sequence over the stratum's bytes in index order, so every prefix of the sample is
   itself spread over the whole stratum), more units for the bigger strata;
3. the units are compressed, each after :data:`SHORT_PREFIX` of the archive before it (so it
   meets nearby context), first many at a cheap *proxy* level (:func:`proxy_level`: zstd 9 with
   the target's window for zstd 19; a copy's twins first), then the first of them at the target
   level too: a kind's ratio is its proxy ratio over the big sample times its gain from the proxy
   to the target over the small one, which varies far less between units (double sampling, ratio
   estimators). A few units of each kind are compressed again after the proxy's whole window of
   archive: how much the kind gains from context the short prefix lacks
   (:func:`QuickEstimator._context`).
   All in rounds of doubling size, until the sample is done or ``seconds`` are spent;
4. a selection's estimate is, per stratum, the ratio of the sampled units inside the selection
   (a domain estimate; the whole stratum's ratio when too few fall inside) times the selection's
   newc bytes of that kind, summed.

The band is stated, not guessed: per stratum a Student-t interval (99.5%) of the ratio
estimators, then the context factor over a range of powers (:data:`CONTEXT_POWERS`), summed over
the strata. With too few units of a kind its ratio is only known to lie between the extremes
seen, or between 0 and the incompressible 1.01.
"""

from __future__ import annotations

import bisect
import heapq
import math
import os
import stat
import sys
import time
import zlib
from array import array
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import accumulate, compress, islice

from ..formats.cpio import archive_entries, entry_block, extra_bytes
from ..formats.initrd import check_level, zstd_threads
from ..progress import Reporter
from ..tree.fsentry import FsEntry, open_nofollow
from ..tree.index import TRAILER_BYTES, TreeIndex
from ..tree.selection import IntervalSet
from ..units import MiB, format_size

try:
    from ..tree._listdir import Names as _Names
    from ..tree._listdir import classify as _classify
    from ..tree._listdir import columns as _columns
    from ..tree._listdir import copies as _copies
except ImportError:  # not built (no C compiler): the Python twins
    _Names = _classify = _columns = _copies = None

FAST_LEVEL = {"zstd": 3, "gzip": 1, "xz": 0, "none": 0}
#: zstd's proxy for a strong level: this level with the target's window (see :func:`proxy_level`)
PROXY_ZSTD = 9


def proxy_level(compression: str, level: int) -> tuple[int, object]:
    """The level a full pass compresses at to estimate ``level``, and the zstd parameters that
    give it the target's window (None: the plain level). zstd up to 9 is its own proxy (the pass
    is then the estimate); above, zstd 9 with the target's window, which finds most of the
    matches the strong level finds megabytes back: 1 MiB pieces of a Debian 12 archive vary 5.4%
    in their ratio zstd 19 / proxy (14% against zstd 3) at the cost of zstd 3 on this data. Other
    compressors: their fast level (gzip 1, xz 0)."""
    if compression != "zstd":
        return min(FAST_LEVEL[compression], level), None
    if level <= PROXY_ZSTD:
        return level, None
    import zstandard

    target = zstandard.ZstdCompressionParameters.from_level(level, source_size=1 << 32)
    return PROXY_ZSTD, zstandard.ZstdCompressionParameters.from_level(PROXY_ZSTD, source_size=1 << 32,
                                                                       window_log=target.window_log)
KINDS = ("meta", "compressed", "firmware", "elf", "text", "other", "copy")
META, COMPRESSED, FIRMWARE, ELF, TEXT, OTHER, COPY = range(len(KINDS))
#: a file of at least this many bytes with the size and name of a file shortly before it in the
#: archive (within the compressor's window; docs/libfoo1/copyright after docs/libfoo-dev/copyright)
#: is of kind ``copy``: likely the same bytes, which the build stores as one long match. A stratum
#: of its own, each unit measured with its twins before it: this machine's /usr/share/doc holds
#: 25 MB of copied changelogs among 62 MB of .gz files, and a sample that took them for .gz files
#: (ratio 1) said +55%, its band 50 points off
COPY_MIN = 1024

_COMPRESSED_SUFFIXES = frozenset(
    b"gz tgz xz txz zst zstd bz2 tbz lz4 lzma lzo lz br zip jar war ear whl egg apk deb rpm 7z cab xpi crx "
    b"png jpg jpeg gif webp avif heic jxl ogg oga ogv opus flac mp3 mp4 m4a webm mkv woff woff2 squashfs "
    b"zpaq pak".split())
_ELF_SUFFIXES = frozenset(b"so ko o a node elf efi".split())
_TEXT_SUFFIXES = frozenset(
    b"txt md rst adoc py pyi pyx pxd pl pm pod rb sh bash zsh fish c h cc cpp cxx hh hpp hxx js mjs cjs ts css "
    b"scss html htm xhtml xml xsl xsd dtd json yaml yml toml ini cfg conf desktop service socket target timer "
    b"mount path slice rules list csv tsv svg po pot tex sty lua tcl awk sed m4 in am ac mk cmake pc la java go "
    b"rs el scm vim lisp sql properties supp sym ld 1 2 3 4 5 6 7 8 9 n tmpl template network netdev link "
    b"preset theme types dic aff csh ps1 bat cmd php inc gradle kt swift cs vb r jl hs ml nix spec".split())

#: a unit's compressed size is known exactly (a block ends after it); its context is not: each
#: kind's band widens by this share of its estimate each way, beyond the context factors (checked
#: by bench/uki.py on the demo, a Debian 12 tree, /usr and a 1,000,000-entry tree, and by
#: tests/core/sizing/test_estimate.py on real trees of the test machine)
CONTEXT = 0.02
#: and this share of the compressible part (1 - ratio) below the lowest power's figure: perl's
#: modules (/usr/share/perl) came out 15% smaller in the archive than after their prefixes
CONTEXT_LOW = 0.25
#: a selection that keeps part of a kind: the part may compress this share of its compressible
#: part worse than in the whole archive, whose other entries it matched against
CONTEXT_LOST = 0.15
#: archive before each unit, compressed first so the unit meets the context it has in the archive:
#: for the fast level's units, and for the pairs at the target level (where it costs the most)
SHORT_PREFIX = 256 * 1024
#: the pairs (target and proxy after the same prefix) need less: it is their ratio that counts
PAIR_PREFIX = 64 * 1024
#: units measured again after the whole window, at most (it is the slowest step per unit)
SENSE_UNITS = 6
#: the share of the time the units after a whole window may take
SENSE_SHARE = 0.25
#: a kind gains g^a from context the short prefix lacks at the target level when it gains g at
#: the proxy level; a measured 1.2 to 1.3 on a Debian 12 tree, 2.8 on the demo's text (its words
#: drawn from one 4 MB pool): the estimate takes CONTEXT_POWER, the band CONTEXT_POWERS
CONTEXT_POWER = 1.5
CONTEXT_POWERS = (0.5, 3.5)
#: units of every kind ahead of the rest of the plan
FIRST_UNITS = 3
#: the share of the time the fast level's (bigger) sample takes when the target level is slower
FAST_SHARE = 0.3
#: the most a compressor's output can exceed its input (zstd stores an incompressible block raw
#: with a 3-byte header every 128 KiB; gzip and xz likewise), plus the frame
INCOMPRESSIBLE = 1.01
#: Student's t, two-sided 99.5%, by degrees of freedom (then 2.81)
_T995 = {1: 127.3, 2: 14.09, 3: 7.45, 4: 5.60, 5: 4.77, 6: 4.32, 7: 4.03, 8: 3.83, 9: 3.69, 10: 3.58,
         12: 3.43, 15: 3.29, 20: 3.15, 30: 3.03, 60: 2.91}


def t995(df: int) -> float:
    """Student's t quantile for a two-sided 99.5% interval with ``df`` degrees of freedom."""
    if df <= 0:
        return math.inf
    for k in sorted(_T995):
        if df <= k:
            return _T995[k]
    return 2.81


#: a file's kind by its name's last suffix (names of other suffixes: by folder and mode)
_SUFFIX_KIND = {**{x: COMPRESSED for x in _COMPRESSED_SUFFIXES}, **{x: ELF for x in _ELF_SUFFIXES},
                **{x: TEXT for x in _TEXT_SUFFIXES}}


def entry_kinds(index: TreeIndex, base: IntervalSet | None = None) -> bytearray:
    """The content kind (:data:`KINDS`) of every entry, from its name, mode and folder alone
    (a byte each): natively (``_listdir.classify``, ~0.03 s a million entries, where the Python
    twin :func:`_entry_kinds_py` takes ~1.1 s on a 2-core machine, half the quick sample's time
    budget on such a tree), or in Python when the native part is not built or the index's names
    are a plain list."""
    if _classify is not None and isinstance(index.names, _Names):
        return _classify(index.names, index.parent, index.mode, index.size, _SUFFIX_KIND)
    return _entry_kinds_py(index)


def _entry_kinds_py(index: TreeIndex) -> bytearray:
    """:func:`entry_kinds` in Python. Folder by folder (a folder's children are contiguous in
    the index), so the per-entry work is one comprehension over the folder's names."""
    n = len(index)
    kinds = bytearray(n)  # META: folders, links, devices, empty files, further hardlink names
    names, mode, parent, size = index.names, index.mode, index.parent, index.size
    first_child, nchild = index.first_child, index.nchild
    IFMT, DIR, REG = 0o170000, stat.S_IFDIR, stat.S_IFREG
    table = _SUFFIX_KIND
    folders = [0] + [i for i, m in enumerate(mode) if m & IFMT == DIR and i]
    in_fw = {0: False}
    for d in folders:  # parents come before their children in the index
        if d:
            in_fw[d] = in_fw.get(parent[d], False) or names[d] == b"firmware"
        start = first_child[d]
        if start < 0 or not nchild[d]:
            continue
        end = start + nchild[d]
        fw = in_fw[d]
        kinds[start:end] = bytes([
            META if m & IFMT != REG or not z
            else COMPRESSED if (t := table.get(nm.rpartition(b".")[2])) == COMPRESSED
            else FIRMWARE if fw
            else ELF if t == ELF or b".so." in nm
            else TEXT if t == TEXT
            else ELF if m & 0o111
            else OTHER
            for nm, m, z in zip(names[start:end], mode[start:end], size[start:end], strict=True)])
    return kinds


def copies(index: TreeIndex, base: IntervalSet, kinds: bytearray, window: int) -> dict[int, int]:
    """Files of ``base`` (not ``meta``) of at least :data:`COPY_MIN` bytes with the size and name
    of a file at most ``window`` newc bytes before them in the archive: {entry: that earlier
    file}. No I/O: a file that is not a copy after all is measured as what it is. (The size alone
    would take glibc's gconv modules of one size, alike but not copies, and their sample with
    them.) Natively (``_listdir.copies``, ~0.1 s a million entries, where the Python twin
    :func:`_copies_py` takes ~0.8 s), after the archive order (natively ~0.04 s a million
    entries, and cached: the full estimator reads the archive in it)."""
    order = archive_entries(index, base)
    if (_copies is not None and isinstance(index.names, _Names) and index.size.typecode == "q"
            and index.cpio.typecode == "q"):
        pairs = array("i", _copies(order, index.names, index.size, index.cpio, kinds, window, COPY_MIN))
        return dict(zip(pairs[::2], pairs[1::2], strict=True))
    return _copies_py(index, order, kinds, window)


def _copies_py(index: TreeIndex, order: Sequence[int], kinds: bytearray, window: int) -> dict[int, int]:
    """:func:`copies` in Python, over the archive order ``order``."""
    size, cpio, names = index.size, index.cpio, index.names
    last: dict[object, tuple[int, int]] = {}  # key -> (entry, archive offset) of its last file
    out: dict[int, int] = {}
    off = 0
    for i in order:
        n = size[i]
        if n >= COPY_MIN and kinds[i] != META:
            key = (n, names[i])
            prev = last.get(key)
            if prev is not None and off - prev[1] <= window:
                out[i] = prev[0]
            last[key] = (i, off)
        off += cpio[i]
    return out


def kind_columns(kinds: bytearray | None, values: Sequence[float], base: IntervalSet, nkinds: int,
                 typecode: str = "q") -> tuple[list[array], list[array]]:
    """Per kind, the base's entries of that kind in index order and the prefix sums of their
    ``values`` (every entry in kind 0 when ``kinds`` is None): 12 bytes an entry in all. Natively
    (``_listdir.columns``) for kinds and int64 values, ~0.02 s a million entries; else with
    C-level iterators (a translated mask and itertools.compress), ~0.4-0.7 s."""
    if (_columns is not None and kinds is not None and typecode == "q" and isinstance(values, array)
            and values.typecode == "q"):
        ents_b, pre_b = _columns(kinds, values, base, nkinds)
        entries = [array("i") for _ in range(nkinds)]
        prefix = [array("q") for _ in range(nkinds)]
        for a, b in zip(entries + prefix, ents_b + pre_b, strict=True):
            a.frombytes(b)
        return entries, prefix
    return _kind_columns_py(kinds, values, base, nkinds, typecode)


def _kind_columns_py(kinds: bytearray | None, values: Sequence[float], base: IntervalSet, nkinds: int,
                     typecode: str = "q") -> tuple[list[array], list[array]]:
    """:func:`kind_columns` in Python."""
    entries = [array("i") for _ in range(nkinds)]
    prefix = [array(typecode, (0,)) for _ in range(nkinds)]
    get = values.__getitem__
    masks = [bytes(1 if b == k else 0 for b in range(256)) for k in range(nkinds)]
    for s, e in base:
        s = max(s, 1)
        if s >= e:
            continue
        if kinds is None:
            chosen = [range(s, e)]
        else:
            ks = bytes(kinds[s:e])
            chosen = [compress(range(s, e), ks.translate(masks[k])) for k in range(nkinds)]
        for k, it in enumerate(chosen):
            ents = array("i", it)
            if not ents:
                continue
            entries[k].extend(ents)
            pre = prefix[k]
            pre.extend(accumulate(map(get, ents), initial=pre[-1]))
            del pre[-len(ents) - 1]  # the initial value was there already
    return entries, prefix


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


@dataclass(frozen=True)
class Unit:
    """One sampled piece of the archive: entries ``entries`` whole, or ``length`` bytes of one
    file's data from ``offset`` (``entries`` is then that one file)."""

    kind: int
    entries: tuple[int, ...]
    offset: int = -1  # >= 0: a slice of a big file
    length: int = 0


@dataclass
class Measured:
    """A unit once compressed: its newc bytes, and compressed at the target and fast levels."""

    unit: Unit
    raw: int
    target: int
    fast: int


def van_der_corput(j: int) -> float:
    """The ``j``-th point of the base-2 van der Corput sequence (0, 1/2, 1/4, 3/4, 1/8, ...)."""
    x, denom = 0.0, 1.0
    while j:
        denom *= 2
        x += (j & 1) / denom
        j >>= 1
    return x


class _Stratum:
    """The base's entries of one kind in index order, with prefix sums of their newc bytes."""

    __slots__ = ("kind", "entries", "prefix", "total")

    def __init__(self, kind: int) -> None:
        self.kind = kind
        self.entries = array("i")
        self.prefix = array("q", (0,))
        self.total = 0

    def bytes_in(self, sel: IntervalSet) -> int:
        """newc bytes of this kind inside ``sel`` (O(intervals * log entries))."""
        ents, pre = self.entries, self.prefix
        total = 0
        for s, e in sel:
            a = bisect.bisect_left(ents, s)
            b = bisect.bisect_left(ents, e, a)
            total += pre[b] - pre[a]
        return total


class _Plan:
    """The sample's units in plan order, made from ``units`` as far as they are read."""

    def __init__(self, units: Iterator[Unit]) -> None:
        self._units = units
        self._made: list[Unit] = []
        self._done = False

    def take(self, start: int, count: int) -> list[Unit]:
        """Units [start, start + count) of the plan (fewer where it ends)."""
        want = start + count
        while len(self._made) < want and not self._done:
            got = list(islice(self._units, want - len(self._made)))
            self._made += got
            self._done = len(self._made) < want
        return self._made[start:want]

    def ended(self, n: int) -> bool:
        """The plan holds ``n`` units or fewer."""
        return not self.take(n, 1)


class QuickEstimator:
    """A sample of the base archive by content kind, at a proxy level and the target level;
    :meth:`estimate` answers any subset of the base from it in O(kinds * intervals + units),
    touching no file."""

    def __init__(self, index: TreeIndex, base: IntervalSet, *, compression: str, level: int,
                 extra: Sequence[FsEntry] = (), reporter: Reporter | None = None, seconds: float = 4.0,
                 threads: int | None = None, run_bytes: int = 64 * 1024, max_bytes: int = 512 * MiB,
                 fast_level: int | None = None, previous: QuickEstimator | None = None) -> None:
        check_level(compression, level)
        self.index = index
        self.base = base
        self.compression = compression
        self.level = level
        self.fast_level, self._proxy = proxy_level(compression, level)
        if fast_level is not None:
            self.fast_level, self._proxy = fast_level, None
        self.extra = list(extra)
        self.reporter = reporter
        self.seconds = seconds
        cpus = max(1, os.cpu_count() or 1)
        self.threads = (min(cpus, zstd_threads(level) if compression == "zstd" else cpus)
                        if threads is None else max(1, threads))
        self.run_bytes = run_bytes
        self.max_bytes = max_bytes
        self.units: list[Measured] = []
        self.elapsed = 0.0
        self.complete = False  # every planned unit compressed (else the time ran out first)
        #: the strata of an earlier sample of the same base (a glance before this one): not again
        lend = previous is not None and previous.base is base
        self.strata: list[_Stratum] = list(previous.strata) if lend else []
        #: kind ``copy``: each such entry's earlier file of its size and name (see :func:`copies`)
        self.twins: dict[int, int] = previous.twins if lend else {}
        self._overhead = TRAILER_BYTES + extra_bytes(self.extra)
        self._raw_total = 0
        self.paired: list[Measured] = []  # units compressed at both levels (the target level's sample)
        #: units measured after a short prefix and again after the whole window: (short, long)
        self.sensed: list[tuple[Measured, Measured]] = []
        self._codecs: list[dict] = []
        self._acc: list[_Units] = []
        self._gain: list[tuple] = []

    # -- the sample -------------------------------------------------------------------------
    def _strata(self) -> list[_Stratum]:
        kinds = entry_kinds(self.index, self.base)
        self.twins = copies(self.index, self.base, kinds, self._proxy_window())
        for i in self.twins:
            kinds[i] = COPY
        entries, prefix = kind_columns(kinds, self.index.cpio, self.base, len(KINDS))
        strata = [_Stratum(k) for k in range(len(KINDS))]
        for st, ents, pre in zip(strata, entries, prefix, strict=True):
            st.entries, st.prefix, st.total = ents, pre, pre[-1]
        return strata

    def _plan(self) -> _Plan:
        """Every unit the sample may take, ordered so that each prefix is spread over every
        stratum in proportion to its bytes (each stratum gets at least a few units). Made as it
        is read: a sample takes a few hundred units of the thousands a big tree offers (a
        1,000,000-entry tree: 0.5 s to lay them all out)."""
        run = self.run_bytes
        total = sum(st.total for st in self.strata) or 1
        budget = min(self.max_bytes, total)
        streams = []
        for st in self.strata:
            if st.total:
                n = max(min(4, -(-st.total // run)), round(budget * st.total / total / run))
                streams.append(self._stratum_units(st, n))
        # each kind's first units come first: every kind is in the smallest sample
        return _Plan(u for _, _, u in heapq.merge(*streams, key=lambda t: (t[0], t[1])))

    def _stratum_units(self, st: _Stratum, n: int) -> Iterator[tuple[float, int, Unit]]:
        """Stratum ``st``'s ``n`` units at well-spread positions, each with its rank in the plan."""
        run = self.run_bytes
        cpio = self.index.cpio
        seen: set[int] = set()
        ents, pre = st.entries, st.prefix
        for j in range(n):
            pos = int(((0.6180339887 + van_der_corput(j)) % 1.0) * st.total)  # a fixed offset: no unit at 0
            k = bisect.bisect_right(pre, pos) - 1  # the entry holding byte ``pos`` of the stratum
            if k in seen:
                continue
            i = ents[k]
            if cpio[i] > 2 * run:  # a slice of a big file, 4 KiB aligned
                within = max(0, pos - pre[k] - 512)
                unit = Unit(st.kind, (i,), within & ~4095, run)
                seen.add(k)
            else:
                picked = []
                size = 0
                while k < len(ents) and size < run and k not in seen and (not picked or cpio[ents[k]] <= 2 * run):
                    picked.append(ents[k])
                    seen.add(k)
                    size += cpio[ents[k]]
                    k += 1
                unit = Unit(st.kind, tuple(picked))
            yield (j * 1e-9 if j < FIRST_UNITS else j / n), st.kind, unit

    def _codec(self, which: str):  # noqa: ANN202 - a function opening a fresh (write, flush) stream
        """A factory of streams at the target level (``which`` = "target") or the proxy level
        ("fast"), each a pair (write, flush) returning compressed bytes. A stream per unit: a
        unit must not meet what an earlier unit's prefix or pass already held."""
        kind = self.compression
        level = self.level if which == "target" else self.fast_level
        if kind == "zstd":
            import zstandard

            params = self._proxy if which == "fast" else None
            cctx = (zstandard.ZstdCompressor(compression_params=params) if params is not None
                    else zstandard.ZstdCompressor(level=level, threads=0))
            mode = zstandard.COMPRESSOBJ_FLUSH_BLOCK

            def zopen():  # noqa: ANN202
                obj = cctx.compressobj()  # the context's tables are reused, its content forgotten
                return (lambda data: len(obj.compress(data))), (lambda: len(obj.flush(mode)))

            return zopen
        if kind == "gzip":
            def gopen():  # noqa: ANN202
                obj = zlib.compressobj(level, zlib.DEFLATED, 31)
                return (lambda data: len(obj.compress(data))), (lambda: len(obj.flush(zlib.Z_SYNC_FLUSH)))

            return gopen
        if kind == "xz":  # no block end mid-stream: the unit's size is (prefix + unit) - prefix
            import lzma

            def xopen():  # noqa: ANN202
                seen = bytearray()

                def write(data: bytes) -> int:
                    before = len(lzma.compress(bytes(seen), format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32,
                                               preset=level)) if seen else 0
                    seen.extend(data)
                    return len(lzma.compress(bytes(seen), format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32,
                                             preset=level)) - before

                return write, (lambda: 0)

            return xopen
        return lambda: ((lambda data: len(data)), (lambda: 0))

    def _entries_bytes(self, entries: Sequence[int], dirs: dict[int, int]) -> bytes:
        """newc bytes of ``entries`` as the archive holds them (inode numbers aside); entries
        that cannot be read are left out (it is a sample). Files are opened under their folder,
        never through a link."""
        index = self.index
        out = bytearray()
        for n, i in enumerate(entries, 1):
            mode = index.mode[i]
            path = index.path(i)
            data = b""
            try:
                if (stat.S_ISREG(mode) and index.size[i]) or stat.S_ISLNK(mode):
                    p = index.parent[i]
                    pfd = dirs.get(p)
                    if pfd is None:
                        for fd in dirs.values():
                            os.close(fd)
                        dirs.clear()
                        pfd = dirs[p] = (open_nofollow(index.root, index.path(p)) if p > 0 else
                                         os.open(index.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC))
                    if stat.S_ISLNK(mode):
                        data = os.readlink(index.names[i], dir_fd=pfd)
                    else:
                        fd = os.open(index.names[i], os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=pfd)
                        try:
                            data = os.read(fd, index.size[i])
                        finally:
                            os.close(fd)
            except OSError:
                continue
            out += entry_block(path, ino=n, mode=mode, nlink=2 if stat.S_ISDIR(mode) else 1, mtime=0,
                               filesize=len(data))
            out += data
            out += b"\0" * (-len(data) & 3)
        return bytes(out)

    def _unit_bytes(self, unit: Unit, dirs: dict[int, int], prefix: int) -> tuple[bytes, bytes]:
        """(about ``prefix`` bytes of what precedes the unit in the archive, the unit's bytes):
        the entries before it in index order, or the file's bytes before the slice."""
        index = self.index
        if unit.offset >= 0:
            i = unit.entries[0]
            start = max(0, unit.offset - prefix)
            twin = unit.offset - start
            paths = [index.path(i)] + ([index.path(self.twins[i])] if i in self.twins else [])
            data = [b"", b""]
            for k, path in enumerate(paths):  # the file's bytes; a copy's twin: its same bytes
                try:
                    fd = open_nofollow(index.root, path)
                except OSError:
                    return b"", b""
                try:
                    data[k] = os.pread(fd, unit.offset + unit.length - start, start)
                except OSError:
                    return b"", b""
                finally:
                    os.close(fd)
            body, other = data
            return other[twin:] + body[:twin], body[twin:]
        body = self._entries_bytes(unit.entries, dirs)
        before: list[int] = []
        if prefix:
            cpio, base = index.cpio, self.base
            got, i = 0, unit.entries[0] - 1
            while i > 0 and got < prefix:
                if i in base:
                    before.append(i)
                    got += cpio[i]
                i -= 1
            before.reverse()
        # at most ``prefix`` bytes (the entry before may be a file of megabytes, which at the target
        # level took seconds); a copy's earlier files of the same size (within the window, maybe
        # past the prefix) before them, whole
        pre = self._entries_bytes(before, dirs)[-prefix:] if before else b""
        twins = sorted({self.twins[i] for i in unit.entries if i in self.twins} - set(before) - set(unit.entries))
        return (self._entries_bytes(twins, dirs) + pre if twins else pre), body

    def _measure(self, pool: ThreadPoolExecutor, units: list[Unit], which: tuple[str, ...],
                 prefix: int) -> list[Measured]:
        """Compress ``units`` at the levels ``which`` (the first gives ``Measured.target``, the
        last ``Measured.fast``), each after its ``prefix`` bytes of archive, one stream per worker
        and level, a block ended after each prefix and unit."""
        workers = len(self._codecs)
        units = sorted(units, key=lambda u: (u.entries[0], u.offset))  # index order: the archive's, nearly
        cut = -(-len(units) // workers)
        parts = [units[k * cut:(k + 1) * cut] for k in range(workers)]

        def part(w: int) -> list[Measured]:
            openers = [self._codecs[w][lv] for lv in which]
            dirs: dict[int, int] = {}
            got: list[Measured] = []
            try:
                for u in parts[w]:
                    if self.reporter is not None:
                        self.reporter.check()
                    pre, data = self._unit_bytes(u, dirs, prefix)
                    if not data:
                        continue
                    sizes = []
                    for write, flush in (o() for o in openers):
                        if pre:
                            write(pre)
                            flush()
                        sizes.append(write(data) + flush())
                    got.append(Measured(u, len(data), sizes[0], sizes[-1]))
            finally:
                for fd in dirs.values():
                    os.close(fd)
            return got

        out: list[Measured] = []
        for got in pool.map(part, range(workers)):
            out.extend(got)
        return out

    def run(self) -> QuickEstimator:
        """Take the sample (cancellable through the reporter); returns self.

        Three steps share the time: many units at the proxy level after a short prefix of the
        archive (cheap: mostly reading); a few of each kind again after the proxy's whole window
        of archive (how much the kind gains from context the short prefix lacks); then the first
        units of the plan at the target level as well (the kind's gain from the proxy to the
        target, which varies far less between units than the ratio itself: double sampling with
        a ratio estimator)."""
        start = time.monotonic()
        deadline = start + self.seconds
        task = "estimate: quick sample"
        self.strata = self.strata or self._strata()
        self._raw_total = sum(st.total for st in self.strata)
        plan = self._plan()
        if self.compression == "none" or not plan.take(0, 1):
            self.complete = True
            self.elapsed = time.monotonic() - start
            self._finish()
            return self
        workers = max(1, self.threads)
        two = self.level != self.fast_level or self._proxy is not None
        self._codecs = [{w: self._codec(w) for w in ("target", "fast")} for _ in range(workers)]
        kinds = sum(1 for st in self.strata if st.total)

        def rounds(which: tuple[str, ...], prefix: int, first: int, until: float,
                   limit: int) -> tuple[list[Measured], int, float]:
            """Units of the plan [0, limit) in rounds, each as big as the time left allows at the
            pace of the rounds before; (measured, units done, seconds a unit took)."""
            got: list[Measured] = []
            done, size, pace = 0, min(limit, first), 0.0
            began = time.monotonic()
            while done < limit and size > 0:
                units = plan.take(done, size)
                if not units:
                    break  # the plan ended
                got += self._measure(pool, units, which, prefix)
                done += len(units)
                if self.reporter is not None:  # the share of the time spent (the plan has no end in sight)
                    spent = round(1000 * (time.monotonic() - start))
                    self.reporter(task, min(spent, round(1000 * self.seconds)), round(1000 * self.seconds), "ms")
                pace = (time.monotonic() - began) / done
                # a unit's cost varies with its content: aim at 70% of the time left
                size = min(limit - done, int(0.7 * (until - time.monotonic()) / pace) if pace > 0 else limit)
            return got, done, pace

        with ThreadPoolExecutor(max_workers=workers) as pool:
            first = max(16, 2 * kinds)
            share = FAST_SHARE if two else 1.0 - SENSE_SHARE
            self.units, read, pace = rounds(("fast",) if two else ("target",), SHORT_PREFIX, first,
                                            start + share * (deadline - start), sys.maxsize)
            # the context the short prefix lacks: a few units of each kind after the whole window,
            # as many as SENSE_SHARE of the time allows at the pace so far
            window = self._proxy_window()
            afford = int(SENSE_SHARE * self.seconds * workers / max(1e-3, pace * (window + self.run_bytes)
                                                                   / (SHORT_PREFIX + self.run_bytes)))
            measured = {id(m.unit) for m in self.units}
            picks: list[Unit] = []
            for k in sorted(range(len(KINDS)), key=lambda k: -self.strata[k].total):
                share = self.strata[k].total / max(1, self._raw_total)
                want = 3 if share >= 0.3 else 2 if share >= 0.1 else 1 if share >= 0.02 else 0
                want = min(want, min(SENSE_UNITS, max(1, afford)) - len(picks))
                # in plan order: spread over the kind, not its first folder
                picks += [u for u in plan.take(0, read) if u.kind == k and id(u) in measured][:want]
            long = self._measure(pool, picks, ("fast",) if two else ("target",), window)
            self.sensed = [(m, long_m) for long_m in long for m in self.units if m.unit is long_m.unit]
            if two:
                self.paired, paired, _ = rounds(("target", "fast"), PAIR_PREFIX, max(workers, kinds), deadline, read)
                self.complete = plan.ended(read) and paired >= read
            else:
                self.complete = plan.ended(read)
        self._codecs = []
        self.elapsed = time.monotonic() - start
        self._finish()
        return self

    def _proxy_window(self) -> int:
        """How far back the proxy level's matches reach (the pass's context)."""
        if self.compression == "zstd":
            import zstandard

            p = self._proxy or zstandard.ZstdCompressionParameters.from_level(self.fast_level, source_size=1 << 32)
            return 1 << p.window_log
        if self.compression == "xz":
            return 1 * MiB
        return 32 * 1024

    # -- estimating -------------------------------------------------------------------------
    def _finish(self) -> None:
        """Per stratum, the units in index order with prefix sums for domain estimates, and the
        gain from the fast to the target level."""
        by: list[list[Measured]] = [[] for _ in KINDS]
        for m in self.units:
            by[m.unit.kind].append(m)
        self._acc = [_Units(sorted(ms, key=lambda m: m.unit.entries[0])) for ms in by]
        pairs: list[list[Measured]] = [[] for _ in KINDS]
        for m in self.paired:
            pairs[m.unit.kind].append(m)
        two = (self.level != self.fast_level or self._proxy is not None) and self.compression != "none"
        self._gain = [_gain(ps) if two else (1.0, 0.0, 10 ** 6) for ps in pairs]
        if two:  # a kind with fewer than 2 pairs: between half the least gain seen and none
            known = [g for g, _, n in self._gain if n]
            for k, (_g, _se, n) in enumerate(self._gain):
                if n < 2:
                    self._gain[k] = (None, (min(known) * 0.5 if known else 0.15, 1.0), 0)
        # per kind: what its units gain at the proxy level from the whole window before them
        short = [0.0] * len(KINDS)
        long = [0.0] * len(KINDS)
        for m_short, m_long in self.sensed:
            short[m_short.unit.kind] += m_short.fast
            long[m_short.unit.kind] += m_long.fast
        self._sense = [max(1.0, a / b) if a and b else None for a, b in zip(short, long, strict=True)]
        self._powers = (CONTEXT_POWER, *CONTEXT_POWERS) if two else (1.0, 1.0, 1.0)

    def _context(self, k: int) -> tuple[float, float, float]:
        """Factors (estimate, low, high) for what kind ``k``'s units lack of the archive's context:
        its gain at the proxy level to the power :data:`CONTEXT_POWER` (the band: the powers
        :data:`CONTEXT_POWERS`); a kind not measured, the largest gain seen (low) and none (high)."""
        s = self._sense[k]
        mid, lo_pow, hi_pow = self._powers
        if s is None:
            worst = max((x for x in self._sense if x is not None), default=1.0)
            return worst ** -mid, worst ** -hi_pow, 1.0
        return s ** -mid, s ** -hi_pow, s ** -lo_pow

    def gain(self, k: int) -> tuple[float | None, float | tuple[float, float], int]:
        """Kind ``k``'s gain from the fast to the target level over the pairs: (gain, its
        standard error, pairs), or (None, (lowest, highest) plausible gain, 0) with too few."""
        return self._gain[k]

    def _fast_ratio(self, k: int, kept: IntervalSet | None, nbytes: int) -> tuple[float, float | None, int,
                                                                                tuple[float, float]]:
        """(fast ratio, its standard error or None, units, (lowest, highest unit ratio)) of the
        kept bytes of kind ``k``: from the units inside ``kept`` when there are enough."""
        acc = self._acc[k]
        whole = acc.stats(None, self.strata[k].total)
        if kept is None or nbytes >= self.strata[k].total:
            return whole
        part = acc.stats(kept, nbytes)
        if part[2] >= 5 and part[1] is not None:
            return part
        r, _, n, (lo, hi) = whole
        return r, None, n, (lo, hi)

    def _stratum(self, k: int, kept: IntervalSet | None, nbytes: int) -> tuple[float, float, float]:
        """(estimate, low, high) in bytes for the kept bytes of kind ``k``: the sampling error as a
        99.5% Student interval, then the context the sample lacks."""
        if not nbytes:
            return 0.0, 0.0, 0.0
        rf, se_f, n, (lo_f, hi_f) = self._fast_ratio(k, kept, nbytes)
        g, se_g, n_g = self._gain[k]
        if rf is None:  # nothing sampled of this kind: anything from nothing to incompressible
            return INCOMPRESSIBLE / 2 * nbytes, 0.0, INCOMPRESSIBLE * nbytes
        if g is None:  # too few pairs of this kind: the gain lies in a range
            g_lo, g_hi = se_g
            g, half_g = (g_lo + g_hi) / 2, (g_hi - g_lo) / 2
        else:
            half_g = t995(n_g - 1) * se_g if se_g and n_g < 10 ** 6 else 0.0
        r = rf * g
        if se_f is None:  # a small domain: anywhere between the extremes its kind showed, widened
            low = max(0.0, min(lo_f, rf) * 0.5) * max(0.0, g - half_g)
            high = min(INCOMPRESSIBLE, (max(hi_f, rf) * 1.5 + 0.05) * (g + half_g))
        else:
            half = math.hypot(t995(n - 1) * se_f * g if se_f else 0.0, half_g * rf)  # se_f 0: a census
            low, high = max(0.0, r - half), min(INCOMPRESSIBLE, r + half)
        mid, c_lo, c_hi = self._context(k)
        # what the units' measure of context cannot show either (matches a window away); a part
        # of the kind loses the context the rest gave it
        short = CONTEXT_LOW * (1.0 - min(1.0, r))
        # (a copy without its twin is as big as the file it copies: anything up to incompressible)
        lost = ((1.0 if k == COPY else CONTEXT_LOST) * (1.0 - min(1.0, r))
                if nbytes < self.strata[k].total else 0.0)
        return (r * mid * nbytes, max(0.0, low * c_lo * (1.0 - short) - CONTEXT * r) * nbytes,
                min(INCOMPRESSIBLE, high * c_hi * (1.0 + lost) + CONTEXT * r) * nbytes)

    def estimate(self, kept: IntervalSet) -> Estimate:
        """The compressed size of the entries ``kept`` (a subset of the base), with its band."""
        if not self.strata:
            self.run()
        whole = kept is self.base
        kept = kept.intersection(self.base)
        per = [st.bytes_in(kept) for st in self.strata]
        raw = sum(per) + self._overhead
        if self.compression == "none":
            return Estimate(raw, raw, raw, "uncompressed archive size", True, raw)
        est = low = high = float(self._overhead)
        for k, nbytes in enumerate(per):
            e, lo, hi = self._stratum(k, None if whole else kept, nbytes)
            est += e
            low += lo
            high += hi
        sampled = sum(m.raw for m in self.units)
        share = sampled / self._raw_total * 100 if self._raw_total else 100.0
        paired = sum(m.raw for m in self.paired)
        method = f"quick sample by content kind: {format_size(sampled)} ({share:.1f}% of the archive) read"
        if self.level != self.fast_level:
            method += (f", {format_size(paired)} of it compressed at {self.compression} {self.level}, the rest at "
                       f"{self.fast_level}")
        else:
            method += f" and compressed at {self.compression} {self.level}"
        method += f", in {self.elapsed:.1f} s"
        if not self.complete:
            method += " (a first sample)"
        return Estimate(int(round(est)), int(low), int(high + 0.999), method, False, raw)


class _Units:
    """One kind's units measured at the fast level, in index order, with prefix sums of raw
    bytes r, fast bytes f, and of r*r, r*f, f*f (a domain's ratio and its standard error in
    O(intervals * log units))."""

    def __init__(self, ms: list[Measured]) -> None:
        self.first = array("i", (m.unit.entries[0] for m in ms))
        self.ratios = [m.fast / m.raw for m in ms]
        cols = [(m.raw, m.fast, m.raw * m.raw, m.raw * m.fast, m.fast * m.fast) for m in ms]
        self.prefix = [array("d", (0.0,)) + array("d", _cumsum(c[j] for c in cols)) for j in range(5)]

    def _sums(self, sel: IntervalSet | None) -> tuple[list[float], int, float, float]:
        if sel is None:
            pre = self.prefix
            return [p[-1] for p in pre], len(self.first), min(self.ratios, default=0.0), max(self.ratios, default=1.0)
        tot = [0.0] * 5
        n = 0
        lo, hi = math.inf, -math.inf
        first = self.first
        for s, e in sel:
            a = bisect.bisect_left(first, s)
            b = bisect.bisect_left(first, e, a)
            if a < b:
                n += b - a
                for j, p in enumerate(self.prefix):
                    tot[j] += p[b] - p[a]
                lo = min(lo, min(self.ratios[a:b]))
                hi = max(hi, max(self.ratios[a:b]))
        return tot, n, lo, hi

    def stats(self, sel: IntervalSet | None, population: int) -> tuple[float | None, float | None, int,
                                                                       tuple[float, float]]:
        (r, f, rr, rf, ff), n, lo, hi = self._sums(sel)
        if not n or r <= 0:
            return None, None, 0, (0.0, INCOMPRESSIBLE)
        ratio = f / r
        if r >= population:
            return ratio, 0.0, n, (lo, hi)  # a census
        if n < 2:
            return ratio, None, n, (lo, hi)
        ss = max(0.0, ff - 2 * ratio * rf + ratio * ratio * rr)  # sum of (f - ratio * r)^2
        fpc = max(0.0, 1.0 - r / population)
        return ratio, math.sqrt(fpc * ss / (n * (n - 1))) / (r / n), n, (lo, hi)


def _cumsum(values) -> list[float]:  # noqa: ANN001 - an iterable of numbers
    out, total = [], 0.0
    for v in values:
        total += v
        out.append(total)
    return out


def _gain(pairs: list[Measured]) -> tuple[float | None, float, int]:
    """The gain target / fast over the pairs of one kind: (gain, its standard error, pairs)."""
    n = len(pairs)
    f = sum(m.fast for m in pairs)
    if not n or not f:
        return None, 0.0, 0
    g = sum(m.target for m in pairs) / f
    if n < 2:
        return g, 0.0, 1  # one pair: its spread is unknown (the caller takes a range)
    ss = sum((m.target - g * m.fast) ** 2 for m in pairs)
    return g, math.sqrt(ss / (n * (n - 1))) / (f / n), n


def quick_estimator(index: TreeIndex, base: IntervalSet, *, compression: str, level: int,
                    extra: Sequence[FsEntry] = (), reporter: Reporter | None = None, seconds: float = 4.0,
                    threads: int | None = None, previous: QuickEstimator | None = None) -> QuickEstimator:
    """A :class:`QuickEstimator` with its sample taken: ready in about ``seconds`` in all (on a
    1,000,000-entry tree, 0.05 s of them go to sorting the entries by kind, the rest to the
    sample; with fewer seconds than a first round of units takes, that round still runs).
    ``threads`` compressor workers (default: every CPU that fits in memory at ``level``). Cancellable through ``reporter`` (raises :class:`~sysextant.core.errors.Cancelled`).
    Its :meth:`~QuickEstimator.estimate` answers any subset of ``base`` at once, as the full
    estimator's does, with a wide band and a method text that says it is a quick sample.
    ``previous``, an earlier sample of the same ``base``, lends its classification."""
    q = QuickEstimator(index, base, compression=compression, level=level, extra=extra, reporter=reporter,
                       seconds=seconds, threads=threads, previous=previous)
    return q.run()


__all__ = ["KINDS", "QuickEstimator", "van_der_corput", "entry_kinds", "quick_estimator", "t995"]
