"""Assemble a Discoverable Disk Image (DDI) for a system extension around a filesystem image.

References: systemd ``docs/DISCOVERABLE_PARTITIONS.md`` and the uapi-group DDI specification;
the layout is the one ``systemd-repart --make-ddi=sysext`` and mkosi write for sysexts: a GPT
with a ``root`` partition holding the filesystem, its ``root-verity`` dm-verity hash partition,
and (when signing) a 16 KiB ``root-verity-sig`` partition with the PKCS#7-signed root hash.
The root partition's UUID is the first 128 bits of the verity root hash, the verity partition's
the last 128 bits, so systemd can pair them from the root hash alone.

Everything is derived from the content and the caller's ``seed``: two runs on the same input
give byte-identical images. The filesystem image is streamed, never loaded whole.

See docs/formats.md, sections 6 (GPT and the sysext DDI) and 7 (the verity signature).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from ..atomic import atomic_output
from ..errors import UserError
from ..keys import Signer
from ..progress import Reporter
from . import gpt, pkcs7, verity

COPY_CHUNK = 16 << 20


@dataclass(frozen=True)
class DdiPartition:
    """One partition as written: role (root, root-verity, root-verity-sig), place and identity."""

    role: str
    label: str
    type_guid: str
    uuid: str
    offset: int
    size: int


@dataclass(frozen=True)
class DdiResult:
    root_hash: str  # 64 lowercase hex
    size: int  # bytes of the whole image
    partitions: list[DdiPartition]
    signed: bool


def _copy(src: BinaryIO, dst: BinaryIO, dst_offset: int, size: int, reporter: Reporter | None,
          task: str) -> None:
    """Copy ``size`` bytes from the start of ``src`` to ``dst_offset``, in the kernel when it can."""
    src.seek(0)
    dst.flush()
    done = 0
    try:
        sfd, dfd = src.fileno(), dst.fileno()
    except (OSError, io.UnsupportedOperation):
        sfd = dfd = -1
    if sfd >= 0 and hasattr(os, "copy_file_range"):
        try:
            while done < size:
                n = os.copy_file_range(sfd, dfd, min(COPY_CHUNK, size - done), done, dst_offset + done)
                if n == 0:
                    break
                done += n
                if reporter is not None:
                    reporter(task, done, size)
        except OSError:
            pass  # cross-device on old kernels, or unsupported: fall back to plain copying
    buf = bytearray(COPY_CHUNK)
    view = memoryview(buf)
    src.seek(done)
    dst.seek(dst_offset + done)
    while done < size:
        n = src.readinto(view[:min(COPY_CHUNK, size - done)])
        if not n:
            raise UserError("the filesystem image shrank while it was being copied; do not modify it during a build")
        dst.write(view[:n])
        done += n
        if reporter is not None:
            reporter(task, done, size)


def _guid(seed: bytes, what: bytes) -> uuid.UUID:
    return uuid.UUID(bytes=hashlib.sha256(b"sysextant:" + what + b"\0" + seed).digest()[:16], version=4)


def labels(arch: str) -> tuple[str, str, str]:
    """The conventional partition names for ``arch``: root-ARCH, root-ARCH-verity, ...-verity-sig."""
    return f"root-{arch}", f"root-{arch}-verity", f"root-{arch}-verity-sig"


@contextlib.contextmanager
def _output(out: BinaryIO | Path | str) -> Iterator[BinaryIO]:
    if isinstance(out, (str, os.PathLike)):
        with atomic_output(out) as fh:
            yield fh
    else:
        out.seek(0)
        out.truncate(0)
        yield out
        out.flush()


def assemble(fs_image: Path, out: BinaryIO | Path, *, arch: str, signer: Signer | None, seed: bytes,
             reporter: Reporter | None = None, task: str = "ddi") -> DdiResult:
    """Write a sysext DDI (root + root-verity [+ root-verity-sig]) around ``fs_image``.

    ``out`` is a path (written atomically) or a readable, writable, seekable file, which is
    truncated first. ``seed`` makes salt, verity UUID and disk GUID reproducible: pass something
    that identifies the build (e.g. the extension name and a digest of its inputs).
    """
    if arch not in gpt.ROOT_TYPES:
        raise UserError(f"architecture {arch!r} has no DDI partition types; use one of "
                        f"{', '.join(gpt.ROOT_TYPES)}")
    root_type, verity_type, sig_type = gpt.ROOT_TYPES[arch]
    root_label, verity_label, sig_label = labels(arch)
    try:
        src = open(fs_image, "rb")  # noqa: SIM115 - closed in the finally below
    except OSError as exc:
        raise UserError(f"cannot read the filesystem image {fs_image}: {exc.strerror}") from None
    try:
        fs_size = os.fstat(src.fileno()).st_size
        if fs_size < verity.BLOCK:
            raise UserError(f"the filesystem image {fs_image} is smaller than 4 KiB; it cannot be "
                            "protected by dm-verity")
        data_size = gpt.align_up(fs_size)
        _, _, hash_blocks = verity.tree_layout(data_size // verity.BLOCK)
        hash_size = hash_blocks * verity.BLOCK
        sizes = [data_size, hash_size] + ([pkcs7.SIG_PARTITION_SIZE] if signer else [])
        spans, disk_size = gpt.plan(sizes)
        salt, vuuid = verity.derive_salt_uuid(seed)

        with _output(out) as fh:
            data_off = spans[0][0] * gpt.LBA
            hash_off = spans[1][0] * gpt.LBA
            _copy(src, fh, data_off, fs_size, reporter, f"{task}: copy")
            if data_size > fs_size:
                fh.seek(data_off + fs_size)
                fh.write(bytes(data_size - fs_size))
            fh.seek(hash_off)
            # hash the copy in the image itself (padding included): the tree covers exactly the
            # bytes the image holds, and the source is read once
            res = verity.hash_tree(fh, data_off, data_size, fh, salt=salt, uuid=vuuid, reporter=reporter,
                                   task=f"{task}: verity")
            assert res.hash_size == hash_size
            rh = res.root_hash
            parts = [
                gpt.Partition(root_type, uuid.UUID(bytes=rh[:16]), *spans[0], root_label, gpt.ATTR_READ_ONLY),
                gpt.Partition(verity_type, uuid.UUID(bytes=rh[16:]), *spans[1], verity_label,
                              gpt.ATTR_READ_ONLY),
            ]
            if signer is not None:
                blob = pkcs7.signature_partition(signer, rh)
                fh.seek(spans[2][0] * gpt.LBA)
                fh.write(blob)
                parts.append(gpt.Partition(sig_type, _guid(rh, b"verity-sig"), *spans[2], sig_label,
                                           gpt.ATTR_READ_ONLY))
            gpt.write_gpt(fh, disk_size, parts, _guid(seed + rh, b"disk"))
            fh.truncate(disk_size)
    finally:
        src.close()

    roles = ("root", "root-verity", "root-verity-sig")
    return DdiResult(
        root_hash=rh.hex(),
        size=disk_size,
        partitions=[DdiPartition(role, p.name, str(p.type_guid), str(p.part_guid), p.offset, p.size)
                    for role, p in zip(roles, parts, strict=False)],
        signed=signer is not None,
    )
