"""The dm-verity level-0 hashing kernel, used in process by :mod:`.verity` and by its helpers.

Every digest is ``sha256(salt || block)`` over a 4096-byte data block (docs/formats.md,
section 5). A :class:`Scratch` holds ``batch`` slots laid out as ``salt || block``: one
``os.preadv`` fills the blocks straight from the file, then each slot is hashed by one
``hashlib.sha256(slot)`` call, with no copy of the block and no Python loop per block.

Run as a script, ``python -I -S _verity_hasher.py FD SALT_HEX BATCH``, it is a helper process:
it writes ``READY`` once started, then reads lines ``OFFSET NBLOCKS`` on stdin and answers each
with the ``NBLOCKS`` digests
(32 bytes each, in block order) on stdout, reading the data itself with ``pread`` from the
inherited descriptor ``FD``. It exits 0 at the end of its input and non-zero on any error (a short
read included), so the parent hashes that span itself and reports the error. Standard library only
and no package import: the helper starts in ~20 ms. Helpers exist because threads cannot share
this work: with one GIL hand-over per 4 KiB block, two threads hash only ~1.2x as fast as one.
"""

from __future__ import annotations

import hashlib
import os
import sys
from operator import methodcaller

BLOCK = 4096
DIGEST = 32
IOV_MAX = 1024  # Linux: the most buffers one preadv takes; a batch must not exceed it
READY = b"R"  # a helper's first byte: it has started and takes spans from now on

_digest_of = methodcaller("digest")


class ShortRead(EOFError):
    """The file ended at byte ``args[0]`` before the span did."""


class Scratch:
    """``batch`` slots of ``salt || block`` and views on them (one per hashing process)."""

    def __init__(self, salt: bytes, batch: int) -> None:
        if not 1 <= batch <= IOV_MAX:
            raise ValueError(f"batch must be 1..{IOV_MAX} blocks")
        self.batch = batch
        slot = len(salt) + BLOCK
        self.buf = bytearray(salt + bytes(BLOCK)) * batch
        view = memoryview(self.buf)
        self.slots = [view[k * slot:(k + 1) * slot] for k in range(batch)]
        self.blocks = [view[k * slot + len(salt):(k + 1) * slot] for k in range(batch)]

    def _digests(self, n: int) -> bytes:
        slots = self.slots if n == self.batch else self.slots[:n]
        return b"".join(map(_digest_of, map(hashlib.sha256, slots)))

    def _pread(self, fd: int, n: int, offset: int) -> None:
        blocks = self.blocks[:n]
        want = n * BLOCK
        got = os.preadv(fd, blocks, offset)
        while got < want:  # rare: a signal, or the file ends early
            k, part = divmod(got, BLOCK)
            more = os.preadv(fd, [blocks[k][part:], *blocks[k + 1:]], offset + got)
            if more <= 0:
                raise ShortRead(offset + got)
            got += more

    def from_fd(self, fd: int, offset: int, nblocks: int) -> bytes:
        """The digests of ``nblocks`` blocks read from ``fd`` at byte ``offset``."""
        parts = []
        for first in range(0, nblocks, self.batch):
            n = min(self.batch, nblocks - first)
            self._pread(fd, n, offset + first * BLOCK)
            parts.append(self._digests(n))
        return b"".join(parts)

    def from_bytes(self, raw: bytes | memoryview) -> bytes:
        """The digests of the whole blocks in ``raw`` (data read through a file object)."""
        src = memoryview(raw)
        nblocks = len(src) // BLOCK
        parts = []
        for first in range(0, nblocks, self.batch):
            n = min(self.batch, nblocks - first)
            for k, dst in enumerate(self.blocks[:n]):
                pos = (first + k) * BLOCK
                dst[:] = src[pos:pos + BLOCK]
            parts.append(self._digests(n))
        return b"".join(parts)


def serve(fd: int, salt: bytes, batch: int) -> None:
    """The helper's loop: one answer per request line, until stdin ends."""
    scratch = Scratch(salt, batch)
    out = sys.stdout.buffer
    out.write(READY)
    out.flush()
    for line in sys.stdin.buffer:
        offset, nblocks = map(int, line.split())
        out.write(scratch.from_fd(fd, offset, nblocks))
        out.flush()


if __name__ == "__main__":
    serve(int(sys.argv[1]), bytes.fromhex(sys.argv[2]), int(sys.argv[3]))
    os._exit(0)  # all answers are flushed: skip the interpreter's teardown, the parent waits for it
