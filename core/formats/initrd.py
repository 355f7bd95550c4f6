"""The compressed UKI initrd: the newc archive streamed through the chosen compressor.

The kernel detects the compression by magic (linux ``lib/decompress.c``) and unpacks with its own
decoders (``lib/decompress_unzstd.c``, ``lib/decompress_inflate.c``, ``lib/decompress_unxz.c``):

- zstd: python-zstandard (the binding of libzstd). ``threads`` >= 1 selects libzstd's
  multi-threaded mode, whose output is the same for any worker count (checked in
  tests/core/formats/test_initrd.py) but differs from single-threaded mode (``threads=0``); which mode a
  build uses follows from the spec alone (``uki.zstd_mode``), so it is reproducible across
  machines. The frame records the content
  size and an XXH64 checksum, as the ``zstd`` CLI writes by default.
- gzip: RFC 1952 with mtime 0 and no file name, so the output depends on the data only.
- xz: LZMA2 with ``--check=crc32``; the kernel's XZ decoder is built for CRC32 (see
  ``Documentation/staging/xz.rst``, "use --check=crc32").
- none: the archive as is.

Nothing is held in memory beyond the compressor's window and 1 MiB buffers; the output appears
atomically (:mod:`.atomic`).

See docs/formats.md, section 2 (initrd compression).
"""

from __future__ import annotations

import gzip
import hashlib
import lzma
import os
import stat
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from ..atomic import atomic_output
from ..errors import UserError
from ..keys import load_certificate, read_pem_file
from ..progress import Reporter
from ..spec.model import UKI_COMPRESSIONS, ExtraFile
from ..tree.fsentry import FsEntry
from ..tree.index import TreeIndex
from ..tree.selection import IntervalSet
from .cpio import archive_size, write_newc

LEVELS = {"zstd": (1, 22), "gzip": (1, 9), "xz": (0, 9), "none": (0, 0)}


def zstd_threads(level: int | None = None) -> int:
    """Workers for libzstd's multi-threaded mode (its output is identical for any count >= 1).

    Every CPU, but at ``level`` no more than fit in half the memory available now (the machine's
    ``MemAvailable``, or the cgroup's limit when lower): each worker at level 19 holds its 81 MiB
    context and a 32 MiB job, so an 8-core board with 1 GiB free gets 3 workers instead of 8
    and does not swap. ``SYSEXTANT_ZSTD_THREADS`` overrides it (1 worker: demo at level 19 takes
    twice the time with ~120 MiB less)."""
    env = os.environ.get("SYSEXTANT_ZSTD_THREADS", "").strip()
    if env.isdigit() and int(env) >= 1:
        return int(env)
    cpus = max(1, os.cpu_count() or 1)
    available = memory_available()
    if level is None or available is None:
        return cpus
    fixed, per_worker = zstd_mt_memory(level)
    return max(1, min(cpus, (available // 2 - fixed) // per_worker))


def zstd_mt_memory(level: int) -> tuple[int, int]:
    """(fixed bytes, bytes per worker) of libzstd's multi-threaded mode at ``level`` on a large
    input. Jobs are 4x the window (``ZSTDMT_computeTargetJobLog``: max(20, windowLog + 2)); the
    input ring holds the workers' jobs plus 3 spare, the outputs about one job's worth.
    Measured at level 19 (python-zstandard, 120 MiB of the demo archive, VmHWM less Python's
    13 MiB): 1 worker 287 MiB, 2 workers 406 MiB; this model says 281 and 394."""
    import zstandard

    p = zstandard.ZstdCompressionParameters.from_level(level, source_size=1 << 32)
    window = 1 << p.window_log
    job = 1 << max(20, p.window_log + 2)
    return 5 * job + window, p.estimated_compression_context_size() + job


def zstd_memory(level: int, workers: int) -> int:
    """Modelled peak bytes of the zstd compressor: ``workers`` 0 is the single-threaded mode
    (its context and window: level 19 ~89 MiB, measured 91), else the multi-threaded one."""
    if workers == 0:
        import zstandard

        p = zstandard.ZstdCompressionParameters.from_level(level, source_size=1 << 32)
        return p.estimated_compression_context_size() + (1 << p.window_log)
    fixed, per_worker = zstd_mt_memory(level)
    return fixed + workers * per_worker


def memory_available() -> int | None:
    """Bytes this process can still use: ``MemAvailable``, capped by the memory limit of the
    process's cgroup (v2 ``memory.max``, or v1 ``memory.limit_in_bytes``) when one is set, as in
    a CI container. None when neither can be read (not Linux)."""
    found: list[int] = []
    try:
        with open("/proc/meminfo", "rb") as fh:
            found += [int(line.split()[1]) * 1024 for line in fh if line.startswith(b"MemAvailable:")]
    except (OSError, ValueError, IndexError):
        pass
    try:
        with open("/proc/self/cgroup", "rb") as fh:
            lines = fh.read().splitlines()
    except OSError:
        lines = []
    for line in lines:
        parts = line.split(b":", 2)
        if len(parts) != 3:
            continue
        _, controllers, rel = parts
        if controllers == b"":  # v2
            mount, limit_file, usage_file = b"/sys/fs/cgroup", b"memory.max", b"memory.current"
        elif b"memory" in controllers.split(b","):  # v1
            mount, limit_file, usage_file = b"/sys/fs/cgroup/memory", b"memory.limit_in_bytes", b"memory.usage_in_bytes"
        else:
            continue
        for folder in (os.path.join(mount, rel.lstrip(b"/")), mount):  # the mount root in a cgroup namespace
            try:
                with open(os.path.join(folder, limit_file), "rb") as fh:
                    limit = fh.read().strip()
                with open(os.path.join(folder, usage_file), "rb") as fh:
                    usage = int(fh.read().strip())
            except (OSError, ValueError):
                continue
            if limit.isdigit() and int(limit) < 1 << 60:  # "max" or a huge number: no limit
                found.append(max(0, int(limit) - usage))
            break
    return min(found) if found else None


class CompressedSink:
    """A write-only stream that compresses into ``raw``; :meth:`finish` ends the stream."""

    def __init__(self, raw: BinaryIO, write: Callable[[bytes], object], finish: Callable[[], None]) -> None:
        self.raw = raw
        self._write = write
        self._finish = finish
        self.bytes_in = 0

    def write(self, data: bytes) -> int:
        self._write(data)
        self.bytes_in += len(data)
        return len(data)

    def finish(self) -> None:
        self._finish()


def check_level(kind: str, level: int) -> None:
    if kind not in LEVELS:
        raise UserError(f"unknown initrd compression {kind!r}; use one of {', '.join(UKI_COMPRESSIONS)}")
    lo, hi = LEVELS[kind]
    if kind != "none" and not lo <= level <= hi:
        raise UserError(f"{kind} level {level} is out of range; use {lo} to {hi}")


def compressor(kind: str, level: int, *, threads: int | None = None) -> Callable[..., CompressedSink]:
    """A factory ``open(raw, size=None) -> CompressedSink`` for ``kind`` at ``level``.

    ``size`` (the exact uncompressed length, when known) goes into the zstd frame header.
    ``threads`` overrides the zstd worker count (>= 1 keeps the output identical).
    """
    check_level(kind, level)

    if kind == "zstd":
        import zstandard

        workers = zstd_threads(level) if threads is None else threads

        def open_zstd(raw: BinaryIO, size: int | None = None) -> CompressedSink:
            cctx = zstandard.ZstdCompressor(level=level, threads=workers, write_checksum=True,
                                            write_content_size=size is not None)
            cobj = cctx.compressobj(size=-1 if size is None else size)

            def write(data: bytes) -> None:
                out = cobj.compress(data)
                if out:
                    raw.write(out)

            def finish() -> None:
                raw.write(cobj.flush())

            return CompressedSink(raw, write, finish)

        return open_zstd

    if kind == "gzip":

        def open_gzip(raw: BinaryIO, size: int | None = None) -> CompressedSink:
            gz = gzip.GzipFile(filename="", mode="wb", compresslevel=level, fileobj=raw, mtime=0)
            return CompressedSink(raw, gz.write, gz.close)  # close() ends the member, not ``raw``

        return open_gzip

    if kind == "xz":

        def open_xz(raw: BinaryIO, size: int | None = None) -> CompressedSink:
            comp = lzma.LZMACompressor(format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32, preset=level)

            def write(data: bytes) -> None:
                out = comp.compress(data)
                if out:
                    raw.write(out)

            return CompressedSink(raw, write, lambda: raw.write(comp.flush()))

        return open_xz

    def open_none(raw: BinaryIO, size: int | None = None) -> CompressedSink:
        return CompressedSink(raw, raw.write, lambda: None)

    return open_none


@dataclass(frozen=True)
class InitrdResult:
    path: Path
    uncompressed_bytes: int
    compressed_bytes: int
    seconds: float
    compression: str
    level: int


def write_initrd(index: TreeIndex, selection: IntervalSet, out_path: Path, *, compression: str, level: int,
                 extra: Sequence[FsEntry] = (), expected: int | None = None, reporter: Reporter | None = None,
                 task: str = "initrd: compress", threads: int | None = None) -> InitrdResult:
    """Write the compressed newc archive of ``selection`` (plus ``extra``) to ``out_path``.

    ``expected`` is the size model's byte count; the archive must match it exactly (a mismatch
    is a bug in the model or a tree changed under us, and the output is not kept).
    """
    if expected is None:
        expected = archive_size(index, selection, extra)
    open_sink = compressor(compression, level, threads=threads)
    start = time.monotonic()
    out_path = Path(out_path)
    with atomic_output(out_path, 0o600) as fh:  # the tree's content (etc/shadow too): private until packed
        sink = open_sink(fh, size=expected)
        n = write_newc(index, selection, sink, extra=extra, reporter=reporter, task=task, total=expected)
        sink.finish()
        if n != expected:
            raise RuntimeError(f"the initrd archive has {n} bytes but the size model said {expected}")
        fh.flush()
        compressed = fh.tell()
    if reporter is not None:
        reporter(task, expected, expected)
    return InitrdResult(out_path, n, compressed, time.monotonic() - start, compression, level)


#: where ``signing.trust_in_uki`` puts the db certificate: systemd (src/shared/dissect-image.c)
#: checks a signed verity root hash in userspace against ``/etc/verity.d/*.crt`` (and the
#: ``/run``, ``/usr/lib`` ... variants) when the kernel's keyrings refuse it
TRUST_PATH = "etc/verity.d/sysextant-db.crt"


def extra_files(spec) -> list[ExtraFile]:
    """Files the UKI's initrd holds that are not in the tree: ``init -> uki.init`` (Kairos), the
    db certificate with ``signing.trust_in_uki``, and ``spec.extra_files`` (``sysextant boot``'s
    check build). A later one at the same path wins. Raises UserError for an unreadable cert."""
    files: list[ExtraFile] = []
    if spec.uki.init:
        files.append(ExtraFile("init", target=spec.uki.init))
    if spec.signing is not None and spec.signing.trust_in_uki:
        from cryptography.hazmat.primitives.serialization import Encoding

        cert = load_certificate(read_pem_file(spec.signing.cert, "signing.cert", "certificate"), spec.signing.cert)
        files.append(ExtraFile(TRUST_PATH, data=cert.public_bytes(Encoding.PEM), mode=0o644))
    files += spec.extra_files
    last = {f.path.strip("/"): f for f in files}
    return [last[p] for p in sorted(last)]


def extra_paths(spec) -> list[bytes]:
    """Tree paths the extra files replace (their tree entries leave the initrd), no file read."""
    paths = ["init"] if spec.uki.init else []
    if spec.signing is not None and spec.signing.trust_in_uki:
        paths.append(TRUST_PATH)
    paths += [f.path.strip("/") for f in spec.extra_files]
    return [os.fsencode(p) for p in paths]


def initrd_extra(spec, index: TreeIndex | None = None, selection: IntervalSet | None = None) -> list[FsEntry]:
    """The extra files as archive entries, each preceded by the parent folders it needs that
    ``selection`` of ``index`` does not hold (the kernel's unpacker drops a file whose folder is
    missing). Without an index every parent is added (0755 root folders)."""
    out: dict[bytes, FsEntry] = {}
    for f in extra_files(spec):
        path = os.fsencode(f.path.strip("/"))
        parts = path.split(b"/")
        for n in range(1, len(parts)):
            parent = b"/".join(parts[:n])
            k = index.lookup(parent) if index is not None else None
            if k is not None and selection is not None and k in selection and stat.S_ISDIR(index.mode[k]):
                continue
            out.setdefault(parent, FsEntry(path=parent, mode=stat.S_IFDIR | 0o755))
        if f.target is not None:
            t = os.fsencode(f.target)
            out[path] = FsEntry(path=path, mode=stat.S_IFLNK | 0o777, size=len(t), target=t)
        else:
            data = f.data or b""
            out[path] = FsEntry(path=path, mode=stat.S_IFREG | (f.mode & 0o7777), size=len(data), data=data)
    return [out[p] for p in sorted(out)]


def extras_digest(entries: Sequence[FsEntry]) -> str:
    """What the extra entries put in the archive, for the build's reuse digest."""
    h = hashlib.sha256()
    for e in entries:
        h.update(b"%s\0%o\0%s\0%s\n" % (e.path, e.mode, e.target or b"", hashlib.sha256(e.data or b"").digest()))
    return h.hexdigest()


def build_initrd(spec, plan, out_path: Path, *, reporter: Reporter | None = None) -> InitrdResult:
    """The slimmed initrd of ``plan`` (``plan.initrd_after``) with the spec's compression and level."""
    return write_initrd(plan.index, plan.initrd_after, out_path, compression=spec.uki.compression,
                        level=spec.uki.level, extra=initrd_extra(spec, plan.index, plan.initrd_after),
                        expected=plan.initrd_cpio_after,
                        reporter=reporter, threads=spec_threads(spec))


def spec_threads(spec) -> int | None:
    """The zstd worker setting ``uki.zstd_mode`` asks for: None (every CPU that fits in memory,
    libzstd's multi-threaded mode) or 0 (its single-threaded mode: least memory, other bytes)."""
    return 0 if spec.uki.zstd_single() else None
