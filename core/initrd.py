"""The compressed UKI initrd: the newc archive streamed through the chosen compressor.

The kernel detects the compression by magic (linux ``lib/decompress.c``) and unpacks with its own
decoders (``lib/decompress_unzstd.c``, ``lib/decompress_inflate.c``, ``lib/decompress_unxz.c``):

- zstd: python-zstandard (the binding of libzstd). ``threads`` >= 1 selects libzstd's
  multi-threaded mode, whose output is the same for any worker count (checked in
  tests/test_initrd.py) but differs from single-threaded mode (``threads=0``), so the build
  always uses >= 1 worker and is reproducible across machines. The frame records the content
  size and an XXH64 checksum, as the ``zstd`` CLI writes by default.
- gzip: RFC 1952 with mtime 0 and no file name, so the output depends on the data only.
- xz: LZMA2 with ``--check=crc32``; the kernel's XZ decoder is built for CRC32 (see
  ``Documentation/staging/xz.rst``, "use --check=crc32").
- none: the archive as is.

Nothing is held in memory beyond the compressor's window and 1 MiB buffers; the output appears
atomically (:mod:`.atomic`).
"""

from __future__ import annotations

import gzip
import lzma
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from .atomic import atomic_output
from .cpio import extra_bytes, init_entry, write_newc
from .errors import UserError
from .fsentry import FsEntry
from .index import TRAILER_BYTES, TreeIndex
from .model import UKI_COMPRESSIONS
from .progress import Reporter
from .selection import IntervalSet, Sums

LEVELS = {"zstd": (1, 22), "gzip": (1, 9), "xz": (0, 9), "none": (0, 0)}


def zstd_threads() -> int:
    """Workers for zstd: every CPU, at least 1 (output is identical for any count >= 1).

    ``SYSEXTANT_ZSTD_THREADS`` overrides it: each worker at level 19 holds ~100-150 MiB, so 1
    worker trades time for memory (demo at level 19: 1 worker 98 s / 321 MiB peak, 2 workers
    54 s / 480 MiB, identical bytes)."""
    env = os.environ.get("SYSEXTANT_ZSTD_THREADS", "").strip()
    if env.isdigit() and int(env) >= 1:
        return int(env)
    return max(1, os.cpu_count() or 1)


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

        workers = zstd_threads() if threads is None else threads

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
        expected = Sums(index).cpio_bytes(selection) + TRAILER_BYTES + extra_bytes(extra)
    open_sink = compressor(compression, level, threads=threads)
    start = time.monotonic()
    out_path = Path(out_path)
    with atomic_output(out_path) as fh:
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


def initrd_extra(spec) -> list[FsEntry]:
    """Entries Kairos adds that are not in the tree: ``init -> uki.init`` when configured."""
    return [init_entry(spec.uki.init)] if spec.uki.init else []


def build_initrd(spec, plan, out_path: Path, *, reporter: Reporter | None = None) -> InitrdResult:
    """The slimmed initrd of ``plan`` (``plan.initrd_after``) with the spec's compression and level."""
    return write_initrd(plan.index, plan.initrd_after, out_path, compression=spec.uki.compression,
                        level=spec.uki.level, extra=initrd_extra(spec), expected=plan.initrd_cpio_after,
                        reporter=reporter)
