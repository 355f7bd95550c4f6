"""dm-verity hash device, byte-identical to what ``veritysetup format`` writes.

Reference: cryptsetup ``lib/verity/verity_hash.c`` (tree layout, ``hash_levels``,
``create_or_verify``) and ``lib/verity/verity.c`` (the on-disk superblock), plus the kernel's
``Documentation/admin-guide/device-mapper/verity.rst``. Fixed choices: format version 1,
SHA-256, 4096-byte data and hash blocks, a 32-byte salt, superblock present.

Layout of the hash device: a 512-byte superblock padded to one hash block, then the tree levels,
the top level (one block) first and level 0 (the digests of the data blocks) last. Every digest
is ``sha256(salt || block)``; 128 digests fill a hash block, the last block of each level is zero
padded. The root hash is the digest of the single top block (of the only data block when there
is just one). A trailing partial data block is not covered, exactly like veritysetup.

Speed: level 0 (all but 1/128 of the hashing) is cut into ``CHUNK``-sized spans. This process
and, for big plain files, one helper process per further CPU (:mod:`._verity_hasher`, which
also holds the per-block kernel) take spans in turn; each reads its spans with ``os.preadv``
itself. The digests are written in place as they come; the bytes do not depend on who hashed what.

See docs/formats.md, section 5 (dm-verity hash device).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import queue
import struct
import subprocess
import sys
import threading
import uuid as _uuid
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from ..progress import Reporter
from . import _verity_hasher as _kernel

BLOCK = 4096  # data and hash block size
DIGEST = 32  # sha256
PER_BLOCK = BLOCK // DIGEST  # 128 digests per hash block
SALT_SIZE = 32
SUPERBLOCK_SIZE = 512
SIGNATURE = b"verity\0\0"
CHUNK = 8 << 20  # bytes of data per span (and per progress report): a multiple of PER_BLOCK * BLOCK
BATCH = 256  # data blocks per read into a scratch buffer (1 MiB: still in cache when hashed)
MAX_WORKERS = 8
HELPER_MIN_SPANS = 8  # below 64 MiB a helper's start (~20 ms) eats what it would save

# struct verity_sb (lib/verity/verity.c): signature, version, hash_type, uuid, algorithm,
# data_block_size, hash_block_size, data_blocks, salt_size, pad, salt, pad.
_SB = struct.Struct("<8sII16s32sIIQH6x256s168x")
assert _SB.size == SUPERBLOCK_SIZE


@dataclass(frozen=True)
class VerityResult:
    """What :func:`hash_tree` wrote: the root hash and the size of the hash device."""

    root_hash: bytes
    hash_size: int  # bytes written, superblock included; a multiple of 4096
    data_blocks: int
    salt: bytes
    uuid: bytes  # 16 bytes, as stored in the superblock (big-endian RFC 4122 order)


@dataclass(frozen=True)
class Superblock:
    """The parsed dm-verity superblock (only the fields a verifier needs)."""

    version: int
    hash_type: int
    uuid: bytes
    algorithm: str
    data_block_size: int
    hash_block_size: int
    data_blocks: int
    salt: bytes


def derive_salt_uuid(seed: bytes) -> tuple[bytes, bytes]:
    """A salt and a superblock UUID derived from ``seed``, so equal inputs give equal images.

    Callers pass something that identifies the content (e.g. a digest of the filesystem image
    and the extension name); the derivation is domain-separated so salt and UUID never coincide.
    """
    salt = hashlib.sha256(b"sysextant:verity-salt\0" + seed).digest()
    raw = hashlib.sha256(b"sysextant:verity-uuid\0" + seed).digest()[:16]
    return salt, _uuid.UUID(bytes=raw, version=4).bytes


def tree_layout(data_blocks: int) -> tuple[list[int], list[int], int]:
    """Per level: first hash block and number of blocks; plus the total hash blocks.

    Block numbers count from the start of the hash device, superblock block included (block 0).
    Level 0 holds the data digests. Mirrors cryptsetup's ``hash_levels``.
    """
    if data_blocks < 1:
        raise ValueError("dm-verity needs at least one full 4096-byte data block")
    bits = PER_BLOCK.bit_length() - 1
    levels = 0
    while bits * levels < 64 and (data_blocks - 1) >> (bits * levels):
        levels += 1
    starts = [0] * levels
    sizes = [0] * levels
    position = 1  # block 0 is the superblock
    for i in range(levels - 1, -1, -1):
        starts[i] = position
        shift = (i + 1) * bits
        sizes[i] = (data_blocks + (1 << shift) - 1) >> shift
        position += sizes[i]
    return starts, sizes, position


def _digests(salted: hashlib._Hash, buf: memoryview, nblocks: int) -> bytes:
    """Concatenated ``H(salt || block)`` of the first ``nblocks`` blocks of ``buf``.

    ``salted`` has the salt already absorbed; copying it per block saves re-hashing the salt.
    Used for the upper levels (1/128 of the work); level 0 goes through :mod:`._verity_hasher`.
    """
    copy = salted.copy
    out = []
    append = out.append
    for pos in range(0, nblocks * BLOCK, BLOCK):
        h = copy()
        h.update(buf[pos:pos + BLOCK])
        append(h.digest())
    return b"".join(out)


def _pad_block(data: bytes) -> bytes:
    """Zero-pad to a whole number of hash blocks."""
    rest = len(data) % BLOCK
    return data + bytes(BLOCK - rest) if rest else data


def superblock(*, data_blocks: int, salt: bytes, uuid: bytes) -> bytes:
    """The 512-byte version-1 superblock for SHA-256 and 4096/4096 blocks."""
    if len(salt) > 256:
        raise ValueError("dm-verity salt is at most 256 bytes")
    if len(uuid) != 16:
        raise ValueError("dm-verity UUID must be 16 bytes")
    return _SB.pack(SIGNATURE, 1, 1, uuid, b"sha256", BLOCK, BLOCK, data_blocks, len(salt), salt)


def parse_superblock(raw: bytes) -> Superblock:
    """Parse a superblock; raise ValueError naming what is wrong."""
    if len(raw) < SUPERBLOCK_SIZE:
        raise ValueError("hash device shorter than a verity superblock")
    sig, version, hash_type, uid, alg, dbs, hbs, blocks, salt_size, salt = _SB.unpack(raw[:SUPERBLOCK_SIZE])
    if sig != SIGNATURE:
        raise ValueError("no verity superblock (signature is not 'verity')")
    if salt_size > 256:
        raise ValueError(f"verity superblock salt size {salt_size} exceeds 256")
    return Superblock(version, hash_type, uid, alg.rstrip(b"\0").decode("ascii", "replace"),
                      dbs, hbs, blocks, salt[:salt_size])


def _file_descriptor(data: BinaryIO) -> int | None:
    """The descriptor to ``pread`` the data from, or None to read through the file object.

    Only plain files qualify (a ``FileIO``, or a buffered reader/random over one, flushed first so
    pending writes are on the descriptor): wrappers such as ``GzipFile`` also have a ``fileno``,
    but it is not the stream they deliver.
    """
    raw = data.raw if isinstance(data, (io.BufferedReader, io.BufferedRandom)) else data
    if not isinstance(raw, io.FileIO) or raw.closed:
        return None
    if data is not raw:
        data.flush()
    return raw.fileno()


def default_workers() -> int:
    """Hashing processes (this one and its helpers): the CPUs we may run on, at most ``MAX_WORKERS``."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    return max(1, min(MAX_WORKERS, cpus))


class _Spans:
    """Level-0 spans (their first byte within the data) handed out in order to the hashers.

    A span a helper could not finish is given back and handed out again (to this process)."""

    def __init__(self, total: int, chunk: int) -> None:
        self._lock = threading.Lock()
        self._next = 0
        self._total = total
        self._chunk = chunk
        self._back: list[int] = []

    def take(self) -> int | None:
        with self._lock:
            if self._back:
                return self._back.pop()
            if self._next >= self._total:
                return None
            first = self._next
            self._next += self._chunk
            return first

    def give_back(self, first: int) -> None:
        with self._lock:
            self._back.append(first)

    def close(self) -> None:
        with self._lock:
            self._next = self._total
            self._back.clear()


class _Helper:
    """One helper process and the thread that feeds it spans and collects its digests."""

    def __init__(self, proc: subprocess.Popen[bytes], spans: _Spans, results: queue.Queue,
                 data_offset: int, total: int, chunk: int) -> None:
        self.proc = proc
        self._spans = spans
        self._results = results
        self._where = (data_offset, total, chunk)
        self.thread = threading.Thread(target=self._drive, name="verity-helper", daemon=True)
        self.thread.start()

    @staticmethod
    def start(fd: int, salt: bytes, batch: int) -> subprocess.Popen[bytes] | None:
        script = Path(_kernel.__file__)
        if not sys.executable or not script.is_file():  # e.g. a frozen build: no helpers
            return None
        try:
            return subprocess.Popen([sys.executable, "-I", "-S", str(script), str(fd), salt.hex(), str(batch)],
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                    pass_fds=(fd,))
        except OSError:
            return None

    def _drive(self) -> None:
        data_offset, total, chunk = self._where
        proc, spans = self.proc, self._spans
        try:
            # no span before the helper has started: a late helper takes none, costing nothing
            if proc.stdout.read(len(_kernel.READY)) != _kernel.READY:
                return
            while (first := spans.take()) is not None:
                nblocks = min(chunk, total - first) // BLOCK
                try:
                    proc.stdin.write(b"%d %d\n" % (data_offset + first, nblocks))
                    proc.stdin.flush()
                    reply = proc.stdout.read(nblocks * DIGEST)
                except (OSError, ValueError):  # the helper died, or we are shutting it down
                    reply = b""
                if len(reply) != nblocks * DIGEST:
                    spans.give_back(first)  # this process hashes it (and reports any error)
                    return
                self._results.put((first, reply))
        finally:
            self._results.put(None)  # this helper takes no more spans

    def stop(self, *, kill: bool) -> None:
        if kill:
            self.proc.kill()
        with contextlib.suppress(OSError):  # a dead helper's pipe may be broken
            self.proc.stdin.close()  # the helper's end of input: it exits
        self.thread.join()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc.stdout.close()


def hash_tree(data: BinaryIO, data_offset: int, data_size: int, out: BinaryIO, *, salt: bytes,
              uuid: bytes, reporter: Reporter | None = None, task: str = "verity",
              workers: int | None = None) -> VerityResult:
    """Hash ``data_size`` bytes of ``data`` from ``data_offset``; write superblock + tree to ``out``.

    The hash device starts at ``out``'s current position (it must be seekable: level 0 is
    written at its final place while the upper levels are kept in memory, 1/128 of its size).
    On return ``out`` is positioned just after the hash device. ``data`` and ``out`` may be one
    file object (the data area must not overlap the hash device).

    ``workers`` is the number of hashing processes, this one included (default:
    :func:`default_workers`); helpers are used only for plain files of at least
    ``HELPER_MIN_SPANS`` spans. The bytes written never depend on it, and memory stays bounded
    whatever the size (a scratch buffer per process, a few spans' digests in flight).
    """
    data_blocks = data_size // BLOCK
    starts, sizes, total_blocks = tree_layout(data_blocks)
    levels = len(starts)
    base = out.tell()
    fd = _file_descriptor(data)
    out.write(superblock(data_blocks=data_blocks, salt=salt, uuid=uuid))
    out.write(bytes(BLOCK - SUPERBLOCK_SIZE))
    salted = hashlib.sha256(salt)
    total = data_blocks * BLOCK
    end = data_offset + data_size
    chunk = CHUNK
    scratch = _kernel.Scratch(salt, BATCH)

    def own(first: int) -> bytes:
        """Digests of the span at ``first``, hashed in this process."""
        want = min(chunk, total - first)
        if fd is not None:
            try:
                return scratch.from_fd(fd, data_offset + first, want // BLOCK)
            except _kernel.ShortRead as exc:
                raise ValueError(f"data ends at byte {exc.args[0]}, expected {end} bytes") from None
        data.seek(data_offset + first)  # data and out may share one file object
        raw = data.read(want)
        if len(raw) != want:
            raise ValueError(f"data ends at byte {data_offset + first + len(raw)}, expected {end} bytes")
        return scratch.from_bytes(raw)

    if levels == 0:  # one data block: the root is its digest, no tree
        root = own(0)
        if reporter is not None:
            reporter(task, total, total)
        return VerityResult(root, BLOCK, data_blocks, salt, uuid)

    # Level 0: spans hashed here and by the helpers, each written in place as it arrives; the
    # digests of its hash blocks (level 1's content) are kept by span, joined in order after.
    above: dict[int, bytes] = {}
    hashed = 0

    def consume(first: int, digests: bytes) -> None:
        nonlocal hashed
        level0 = _pad_block(digests)
        out.seek(base + starts[0] * BLOCK + first // BLOCK * DIGEST)  # a span covers whole hash blocks
        out.write(level0)
        above[first] = _digests(salted, memoryview(level0), len(level0) // BLOCK)
        hashed += len(digests) // DIGEST * BLOCK
        if reporter is not None:
            reporter(task, hashed, total)

    spans = _Spans(total, chunk)
    results: queue.Queue[tuple[int, bytes] | None] = queue.Queue()
    helpers: list[_Helper] = []
    nspans = -(-total // chunk)
    wanted = (default_workers() if workers is None else max(1, workers)) - 1
    if fd is not None and nspans >= HELPER_MIN_SPANS:
        for _ in range(min(wanted, nspans - 1)):
            proc = _Helper.start(fd, salt, BATCH)
            if proc is not None:
                helpers.append(_Helper(proc, spans, results, data_offset, total, chunk))
    running = len(helpers)
    ok = False
    try:
        while True:
            first = spans.take()
            if first is not None:
                consume(first, own(first))
            elif running:
                item = results.get()  # nothing left to take: wait for the helpers' spans
                if item is None:
                    running -= 1  # a helper is done (and may have given a span back)
                else:
                    consume(*item)
                continue
            else:
                break
            while True:  # collect what the helpers finished meanwhile
                try:
                    item = results.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    running -= 1
                else:
                    consume(*item)
        ok = True
    finally:
        if not ok:
            spans.close()
        for helper in helpers:
            helper.stop(kill=not ok)
    assert hashed == total and len(above) == nspans

    # Upper levels, in memory; each is 1/128 of the one below.
    digests = b"".join(above[first] for first in sorted(above))
    for i in range(1, levels):
        level = _pad_block(digests)
        assert len(level) == sizes[i] * BLOCK
        out.seek(base + starts[i] * BLOCK)
        out.write(level)
        digests = _digests(salted, memoryview(level), sizes[i])
    assert len(digests) == DIGEST  # the single top block's digest
    out.seek(base + total_blocks * BLOCK)
    return VerityResult(digests, total_blocks * BLOCK, data_blocks, salt, uuid)


def verify_tree(data: BinaryIO, data_offset: int, data_size: int, hashdev: BinaryIO,
                hash_offset: int, root_hash: bytes) -> list[str]:
    """Recompute the whole tree from the superblock found at ``hash_offset``; list problems.

    Independent of :func:`hash_tree`'s bookkeeping: block sizes, block count, salt and algorithm
    all come from the superblock read here, every hash block (padding included) is compared
    with its recomputed value, and the root with ``root_hash``. ``[]`` means good.
    """
    hashdev.seek(hash_offset)
    try:
        sb = parse_superblock(hashdev.read(SUPERBLOCK_SIZE))
    except ValueError as exc:
        return [str(exc)]
    problems: list[str] = []
    if sb.version != 1:
        problems.append(f"verity superblock version {sb.version}, expected 1")
    if sb.hash_type != 1:
        problems.append(f"verity hash type {sb.hash_type}, expected 1 (normal, salt first)")
    if sb.algorithm not in hashlib.algorithms_available:
        problems.append(f"verity hash algorithm {sb.algorithm!r} is unknown")
    for name, size in (("data", sb.data_block_size), ("hash", sb.hash_block_size)):
        if size < 512 or size > (1 << 19) or size & (size - 1):
            problems.append(f"verity {name} block size {size} is not a power of two in 512..512K")
    if problems:
        return problems
    dbs, hbs = sb.data_block_size, sb.hash_block_size
    if sb.data_blocks < 1:
        return ["verity superblock covers no data blocks"]
    if sb.data_blocks * dbs > data_size:
        return [f"verity superblock covers {sb.data_blocks} blocks of {dbs} bytes, "
                f"but the data area has only {data_size} bytes"]
    if sb.data_blocks * dbs != data_size:
        problems.append(f"{data_size - sb.data_blocks * dbs} bytes at the end of the data area "
                        "are not covered by the hash tree")

    salted = hashlib.new(sb.algorithm)
    salted.update(sb.salt)
    dsize = salted.digest_size
    per = 1 << ((hbs // dsize).bit_length() - 1)  # digests per hash block, a power of two
    slot = 1 << (dsize - 1).bit_length()  # each digest's slot, padded to a power of two

    def digests_of(buf: memoryview, bsize: int, n: int) -> list[bytes]:
        out = []
        for k in range(n):
            h = salted.copy()
            h.update(buf[k * bsize:(k + 1) * bsize])
            out.append(h.digest())
        return out

    def pack(ds: list[bytes]) -> bytes:
        blocks = []
        for k in range(0, len(ds), per):
            blk = b"".join(d + bytes(slot - dsize) for d in ds[k:k + per])
            blocks.append(blk + bytes(hbs - len(blk)))
        return b"".join(blocks)

    # Level geometry from the superblock, recomputed here on purpose.
    bits = per.bit_length() - 1
    levels = 0
    while bits * levels < 64 and (sb.data_blocks - 1) >> (bits * levels):
        levels += 1
    first = -(-SUPERBLOCK_SIZE // hbs)  # hash area starts at the next hash block
    starts, counts = [0] * levels, [0] * levels
    pos = first
    for i in range(levels - 1, -1, -1):
        starts[i] = pos
        counts[i] = -(-sb.data_blocks // (per ** (i + 1)))
        pos += counts[i]

    def read_hash_blocks(start: int, n: int) -> bytes:
        hashdev.seek(hash_offset + start * hbs)
        raw = hashdev.read(n * hbs)
        return raw + bytes(n * hbs - len(raw)) if len(raw) < n * hbs else raw

    # Level 0 (or the root itself when there is a single data block), streamed.
    step = max(1, (CHUNK // dbs) // per) * per  # data blocks per read, whole hash blocks
    level_digests: list[bytes] = []
    done = 0
    bad0: int | None = None
    while done < sb.data_blocks:
        n = min(step, sb.data_blocks - done)
        data.seek(data_offset + done * dbs)  # data and hashdev may be one file object
        raw = data.read(n * dbs)
        if len(raw) != n * dbs:
            return problems + [f"data area ends early at byte {data_offset + done * dbs + len(raw)}"]
        ds = digests_of(memoryview(raw), dbs, n)
        if levels:
            computed = pack(ds)
            stored = read_hash_blocks(starts[0] + done // per, len(computed) // hbs)
            if computed != stored and bad0 is None:
                for k in range(0, len(computed), hbs):
                    if computed[k:k + hbs] != stored[k:k + hbs]:
                        blk = done // per + k // hbs
                        bad0 = blk
                        problems.append(f"verity level 0 hash block {blk} does not match data "
                                        f"blocks {blk * per}..{min((blk + 1) * per, sb.data_blocks) - 1}")
                        break
            level_digests.extend(digests_of(memoryview(computed), hbs, len(computed) // hbs))
        else:
            level_digests.extend(ds)
        done += n

    for i in range(1, levels):
        computed = pack(level_digests)
        stored = read_hash_blocks(starts[i], counts[i])
        if computed != stored:
            problems.append(f"verity level {i} hash blocks do not match the level below")
        level_digests = digests_of(memoryview(computed), hbs, counts[i])
    root = level_digests[0]
    if root != root_hash:
        problems.append(f"verity root hash is {root.hex()}, expected {root_hash.hex()}")
    return problems
