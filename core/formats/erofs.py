"""A pure-Python EROFS writer (uncompressed) and a small, defensive EROFS reader.

Format reference: Linux ``fs/erofs/erofs_fs.h`` (on-disk structures) and erofs-utils 1.5
(``lib/inode.c``, ``lib/namei.c``, ``lib/dir.c``, ``lib/data.c``, ``fsck/main.c``), whose
``fsck.erofs`` is the oracle the tests run. What the writer emits:

* 4096-byte blocks; the 128-byte superblock at byte 1024 of block 0 with a CRC32C checksum
  (``sb_csum``); metadata (``meta_blkaddr`` 0) starts right after it, so the root's nid is 36,
  exactly like ``mkfs.erofs``.
* One inode per file (hardlinked names share one nid). Compact 32-byte inodes, extended 64-byte
  ones only where a field does not fit (uid/gid > 65535, nlink > 65535, size >= 4 GiB). Every
  timestamp is the superblock build time, which is the ``mtime`` argument.
* Inline (non-shared) xattrs with the format's short name prefixes (user., trusted., security.,
  lustre., system.posix_acl_access/default).
* FLAT_INLINE where the tail (size mod 4096) fits in the inode's metadata block, else FLAT_PLAIN;
  data blocks follow the metadata area in input order.

Layout happens in a first pass over the entries (no file content read), the image is written in
a second pass that streams file contents (``copy_file_range`` into a real output file).

See docs/formats.md, section 3 (EROFS).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import BinaryIO

from ..errors import UserError
from ..progress import Reporter
from ..tree.fsentry import FsEntry, open_entry

BLOCK_BITS = 12
BLOCK = 1 << BLOCK_BITS
MAGIC = 0xE0F5E1E2
SUPER_OFFSET = 1024
SUPER_SIZE = 128
NULL_ADDR = 0xFFFFFFFF
NAME_MAX = 255

COMPAT_SB_CHKSUM = 0x1
COMPAT_MTIME = 0x2
INCOMPAT_ZERO_PADDING = 0x1
INCOMPAT_BIG_PCLUSTER = 0x2
INCOMPAT_CHUNKED_FILE = 0x4
INCOMPAT_DEVICE_TABLE = 0x8
INCOMPAT_ZTAILPACKING = 0x10
INCOMPAT_FRAGMENTS = 0x20
INCOMPAT_XATTR_PREFIXES = 0x40
_KNOWN_INCOMPAT = 0x7F

FLAT_PLAIN = 0
COMPRESSED_FULL = 1
FLAT_INLINE = 2
COMPRESSED_COMPACT = 3
CHUNK_BASED = 4

_COMPACT = struct.Struct("<HHHHIIIIHHI")  # 32 bytes
_EXTENDED = struct.Struct("<HHHHQIIIIQII16x")  # 64 bytes
_SUPER = struct.Struct("<IIIBBHQQIIII16s16sIHHHBBIQB23x")  # 128 bytes
_DIRENT = struct.Struct("<QHBx")  # 12 bytes
_XATTR_ENTRY = struct.Struct("<BBH")  # 4 bytes
_XATTR_HEADER = struct.Struct("<IB7x")  # 12 bytes

# (name index, prefix), longest prefixes first so "system.posix_acl_access" wins over nothing.
_XATTR_PREFIXES: tuple[tuple[int, bytes], ...] = (
    (2, b"system.posix_acl_access"),
    (3, b"system.posix_acl_default"),
    (1, b"user."),
    (4, b"trusted."),
    (5, b"lustre."),
    (6, b"security."),
)
_XATTR_BY_INDEX = dict(_XATTR_PREFIXES)

# EROFS_FT_* dirent file types.
_FTYPE = {
    stat.S_IFREG: 1,
    stat.S_IFDIR: 2,
    stat.S_IFCHR: 3,
    stat.S_IFBLK: 4,
    stat.S_IFIFO: 5,
    stat.S_IFSOCK: 6,
    stat.S_IFLNK: 7,
}
_COPY_CHUNK = 1 << 20
_REPORT_STEP = 8 << 20


def _crc32c_table() -> list[int]:
    table = []
    for i in range(256):
        crc = i
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_CRC32C = _crc32c_table()


def crc32c(data: bytes, crc: int = 0xFFFFFFFF) -> int:
    """CRC32C as erofs-utils computes the superblock checksum (seed ~0, no final inversion)."""
    table = _CRC32C
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc


def _encode_dev(rdev: int) -> int:
    """Linux ``new_encode_dev``: the 32-bit device number EROFS stores in ``i_u.rdev``."""
    major, minor = os.major(rdev), os.minor(rdev)
    return ((minor & 0xFF) | (major << 8) | ((minor & ~0xFF) << 12)) & 0xFFFFFFFF


def _decode_dev(dev: int) -> int:
    major = (dev & 0xFFF00) >> 8
    minor = (dev & 0xFF) | ((dev >> 12) & 0xFFF00)
    return os.makedev(major, minor)


def _show(path: bytes) -> str:
    return "/" + path.decode(errors="replace")


def _split_xattr_name(name: bytes) -> tuple[int, bytes] | None:
    """(name index, suffix) for an xattr name, None when EROFS has no prefix for it."""
    for index, prefix in _XATTR_PREFIXES:
        if name.startswith(prefix):
            return index, name[len(prefix):]
    return None


def _xattr_ibody(path: bytes, xattrs: dict[bytes, bytes]) -> bytes:
    """The inline xattr body (header + entries), empty when there are no xattrs."""
    if not xattrs:
        return b""
    parts = [_XATTR_HEADER.pack(0, 0)]
    encoded = []
    for name, value in xattrs.items():
        split = _split_xattr_name(name)
        if split is None:
            raise UserError(
                f"extended attribute {name.decode(errors='replace')!r} on {_show(path)} cannot be "
                "stored in EROFS (only user., trusted., security. and POSIX ACL names); remove it "
                "or build a squashfs image"
            )
        if len(split[1]) > NAME_MAX or len(value) > 0xFFFF:
            raise UserError(f"extended attribute {name.decode(errors='replace')!r} on {_show(path)} is too long for EROFS")
        encoded.append((*split, value))
    for index, suffix, value in sorted(encoded):
        body = _XATTR_ENTRY.pack(len(suffix), index, len(value)) + suffix + value
        parts.append(body + b"\0" * (-len(body) % 4))
    blob = b"".join(parts)
    if (len(blob) - 12) // 4 + 1 > 0xFFFF:
        raise UserError(f"the extended attributes of {_show(path)} are too large for EROFS")
    return blob


class _Node:
    """One inode of the image being laid out."""

    __slots__ = (
        "entry", "path", "mode", "uid", "gid", "size", "rdev", "nlink", "parent", "children",
        "xattr", "extended", "inline", "nblocks", "nid", "blkaddr", "ino", "meta_block",
    )

    def __init__(self, entry: FsEntry | None, path: bytes, mode: int, uid: int, gid: int) -> None:
        self.entry = entry
        self.path = path
        self.mode = mode
        self.uid = uid
        self.gid = gid
        self.size = 0
        self.rdev = 0
        self.nlink = 1
        self.parent: _Node = self
        self.children: list[tuple[bytes, _Node]] | None = None
        self.xattr = b""
        self.extended = False
        self.inline = 0  # bytes of tail kept in the metadata block
        self.nblocks = 0  # data blocks outside the metadata area
        self.nid = 0
        self.blkaddr = NULL_ADDR
        self.ino = 0
        self.meta_block = 0


def _dirents(node: _Node) -> list[tuple[bytes, _Node]]:
    assert node.children is not None
    return sorted([(b".", node), (b"..", node.parent), *node.children], key=lambda c: c[0])


def _dir_size(node: _Node) -> int:
    full, used = 0, 0
    for name, _child in _dirents(node):
        need = _DIRENT.size + len(name)
        if used + need > BLOCK:
            full, used = full + 1, 0
        used += need
    return full * BLOCK + used


def _dir_content(node: _Node) -> bytes:
    """All directory blocks; every block but the last is zero padded to 4096 bytes."""
    blocks: list[bytes] = []
    cur: list[tuple[bytes, _Node]] = []
    used = 0

    def flush(last: bool) -> None:
        head = len(cur) * _DIRENT.size
        dents, names, off = [], [], head
        for name, child in cur:
            dents.append(_DIRENT.pack(child.nid, off, _FTYPE[stat.S_IFMT(child.mode)]))
            names.append(name)
            off += len(name)
        blk = b"".join(dents) + b"".join(names)
        blocks.append(blk if last else blk + b"\0" * (BLOCK - len(blk)))

    for name, child in _dirents(node):
        need = _DIRENT.size + len(name)
        if used + need > BLOCK:
            flush(False)
            cur, used = [], 0
        cur.append((name, child))
        used += need
    flush(True)
    data = b"".join(blocks)
    assert len(data) == node.size
    return data


class _Layout:
    """First pass: the inode tree, nids, data block addresses; no file content is read."""

    def __init__(self, entries: Iterable[FsEntry]) -> None:
        self.nodes: list[_Node] = []
        by_path: dict[bytes, _Node] = {}
        links: dict[tuple[int, int], _Node] = {}
        root: _Node | None = None
        for entry in entries:
            path = entry.path.strip(b"/")
            if not path:
                if root is not None:
                    raise ValueError("two root entries given")
                if not entry.is_dir:
                    raise ValueError("the root entry must be a directory")
                root = self._new(entry, b"")
                root.children = []
                by_path[b""] = root
                continue
            if root is None:
                root = self._new(None, b"")
                root.mode = stat.S_IFDIR | 0o755
                root.children = []
                by_path[b""] = root
            parent_path, _, name = path.rpartition(b"/")
            parent = by_path.get(parent_path)
            if parent is None or parent.children is None:
                raise ValueError(f"entry {path!r} comes before its parent directory (entries must be sorted, parents first)")
            if not name or name in (b".", b"..") or b"\0" in name:
                raise ValueError(f"invalid path {path!r}")
            if len(name) > NAME_MAX:
                raise UserError(f"{_show(path)}: the name is longer than 255 bytes, which EROFS cannot store")
            if path in by_path:
                raise ValueError(f"duplicate entry {path!r}")
            if entry.link_id is not None and entry.link_id in links and entry.is_reg:
                node = links[entry.link_id]
                node.nlink += 1
            else:
                node = self._new(entry, path)
                node.parent = parent
                if entry.link_id is not None and entry.is_reg:
                    links[entry.link_id] = node
                if node.children is not None:
                    parent.nlink += 1
            by_path[path] = node
            parent.children.append((name, node))
        if root is None:
            root = self._new(None, b"")
            root.mode = stat.S_IFDIR | 0o755
            root.children = []
        self.root = root
        del by_path, links
        self._sizes()
        self._place()

    def _new(self, entry: FsEntry | None, path: bytes) -> _Node:
        if entry is None:
            node = _Node(None, path, stat.S_IFDIR | 0o755, 0, 0)
        else:
            fmt = stat.S_IFMT(entry.mode)
            if fmt not in _FTYPE:
                raise ValueError(f"entry {path!r} has an unknown file type {entry.mode:o}")
            node = _Node(entry, path, entry.mode & 0xFFFF, entry.uid, entry.gid)
            if fmt in (stat.S_IFCHR, stat.S_IFBLK):
                node.rdev = entry.rdev
            node.xattr = _xattr_ibody(path, entry.xattrs)
        if stat.S_ISDIR(node.mode):
            node.children = []
            node.nlink = 2
        node.ino = len(self.nodes) + 1
        self.nodes.append(node)
        return node

    def _sizes(self) -> None:
        for node in self.nodes:
            fmt = stat.S_IFMT(node.mode)
            entry = node.entry
            if fmt == stat.S_IFDIR:
                node.size = _dir_size(node)
            elif fmt == stat.S_IFREG and entry is not None:
                node.size = len(entry.data) if entry.data is not None else entry.size
            elif fmt == stat.S_IFLNK and entry is not None:
                node.size = len(entry.target or b"")
                if not 0 < node.size < BLOCK:
                    raise UserError(f"symlink {_show(node.path)} has an empty or over-long target")
            if node.uid < 0 or node.gid < 0 or node.uid > 0xFFFFFFFF or node.gid > 0xFFFFFFFF:
                raise UserError(f"{_show(node.path)}: uid/gid out of range")
            node.extended = (
                node.uid > 0xFFFF or node.gid > 0xFFFF or node.nlink > 0xFFFF or node.size > 0xFFFFFFFF
            )
            isize = 64 if node.extended else 32
            tail = node.size % BLOCK
            if tail and isize + len(node.xattr) + tail <= BLOCK:
                node.inline = tail
                node.nblocks = node.size // BLOCK
            else:
                node.nblocks = -(-node.size // BLOCK)

    def _place(self) -> None:
        """Give every inode a nid (first fit among recently opened metadata blocks)."""
        open_blocks: list[list[int]] = [[0, SUPER_OFFSET + SUPER_SIZE]]  # [block, used bytes]
        self.records: dict[int, int] = {0: 0}  # records touching each metadata block
        next_block = 1
        for node in self.nodes:
            isize = 64 if node.extended else 32
            rec = isize + len(node.xattr) + node.inline
            rec_aligned = -(-rec // 32) * 32
            placed = False
            if rec <= BLOCK:
                for slot in open_blocks:
                    if slot[1] + rec <= BLOCK:
                        pos = slot[0] * BLOCK + slot[1]
                        slot[1] += rec_aligned
                        self.records[slot[0]] += 1
                        placed = True
                        break
            if not placed:
                # a fresh block (or run of blocks, for huge xattr bodies that must span blocks)
                pos = next_block * BLOCK
                span = -(-rec // BLOCK)
                for b in range(next_block, next_block + span):
                    self.records[b] = 1
                last = next_block + span - 1
                used = rec_aligned - (span - 1) * BLOCK
                next_block += span
                open_blocks.append([last, used])
                if len(open_blocks) > 16:
                    open_blocks.remove(min(open_blocks, key=lambda s: BLOCK - s[1]))
            open_blocks = [s for s in open_blocks if s[1] <= BLOCK - 32]
            node.nid = pos // 32
            node.meta_block = pos // BLOCK
        self.meta_blocks = next_block
        blk = next_block
        for node in self.nodes:
            if node.nblocks:
                node.blkaddr = blk
                blk += node.nblocks
        if blk > 0xFFFFFFFF:
            raise UserError("the image would exceed EROFS's 16 TiB limit")
        self.blocks = blk


class _Sink:
    """Writes the image to ``out``; a real output file gets positional writes and in-kernel copies."""

    def __init__(self, out: BinaryIO) -> None:
        self.out = out
        self.fd: int | None = None
        self.copy_range = hasattr(os, "copy_file_range")
        with contextlib.suppress(AttributeError, OSError, ValueError):
            fd = out.fileno()
            appending = bool(fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_APPEND)  # pwrite would append
            if out.seekable() and stat.S_ISREG(os.fstat(fd).st_mode) and not appending:
                out.flush()
                self.fd = fd
        self.start = out.tell() if self.fd is not None else 0
        self.pos = self.start
        self.buf = bytearray()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self.fd is None:
            self.out.write(data)
            return
        self.buf += data
        if len(self.buf) >= _COPY_CHUNK:
            self.flush()

    def flush(self) -> None:
        if self.fd is None or not self.buf:
            return
        view = memoryview(self.buf)
        while view:
            n = os.pwrite(self.fd, view, self.pos)
            self.pos += n
            view = view[n:]
        view.release()
        self.buf.clear()

    def copy(self, src: int, count: int, what: bytes) -> None:
        """Copy ``count`` bytes from the start of fd ``src``; a short file is an error."""
        offset = 0
        if self.fd is not None and self.copy_range:
            self.flush()
            while offset < count:
                try:
                    n = os.copy_file_range(src, self.fd, count - offset, offset, self.pos)
                except OSError:
                    self.copy_range = False
                    break
                if n == 0:
                    raise UserError(f"{_show(what)} became shorter while it was packed; build again")
                offset += n
                self.pos += n
            if offset == count:
                return
        buf = bytearray(min(_COPY_CHUNK, count - offset))
        view = memoryview(buf)
        while offset < count:
            want = min(len(buf), count - offset)
            n = os.preadv(src, [view[:want]], offset)
            if n == 0:
                raise UserError(f"{_show(what)} became shorter while it was packed; build again")
            self.write(view[:n])
            offset += n

    def finish(self) -> None:
        self.flush()
        if self.fd is not None:
            self.out.seek(self.pos)


def _read_tail(entry: FsEntry, tree_root: bytes, size: int, tail: int) -> bytes:
    if entry.data is not None:
        return entry.data[size - tail:]
    fd = open_entry(tree_root, entry)
    try:
        _check_size(fd, entry, size)
        data = os.pread(fd, tail, size - tail)
    finally:
        os.close(fd)
    if len(data) != tail:
        raise UserError(f"{_show(entry.path)} became shorter while it was packed; build again")
    return data


def _check_size(fd: int, entry: FsEntry, size: int) -> None:
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        raise UserError(f"{_show(entry.path)} is no longer a regular file; build again")
    if st.st_size != size:
        raise UserError(f"{_show(entry.path)} changed size since the tree was scanned; build again")


def _inode_bytes(node: _Node, mtime: int) -> bytes:
    layout = FLAT_INLINE if node.inline else FLAT_PLAIN
    fmt = stat.S_IFMT(node.mode)
    if fmt in (stat.S_IFCHR, stat.S_IFBLK):
        iu = _encode_dev(node.rdev)
    elif fmt in (stat.S_IFIFO, stat.S_IFSOCK):
        iu = 0
    else:
        iu = node.blkaddr
    icount = (len(node.xattr) - 12) // 4 + 1 if node.xattr else 0
    if node.extended:
        return _EXTENDED.pack(
            1 | (layout << 1), icount, node.mode, 0, node.size, iu, node.ino & 0xFFFFFFFF,
            node.uid, node.gid, mtime, 0, node.nlink,
        )
    return _COMPACT.pack(
        layout << 1, icount, node.mode, node.nlink, node.size, 0, iu, node.ino & 0xFFFFFFFF,
        node.uid, node.gid, 0,
    )


def _superblock(lay: _Layout, uuid: bytes, volume_name: bytes, mtime: int) -> bytes:
    return _SUPER.pack(
        MAGIC, 0, COMPAT_SB_CHKSUM | COMPAT_MTIME, BLOCK_BITS, 0, lay.root.nid, len(lay.nodes),
        mtime, 0, lay.blocks, 0, 0, uuid, volume_name, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    )


def write_image(
    entries: Iterable[FsEntry],
    out: BinaryIO,
    *,
    tree_root: bytes,
    uuid: bytes,
    mtime: int = 0,
    reporter: Reporter | None = None,
    task: str = "pack",
    volume_name: bytes = b"",
) -> int:
    """Write an EROFS image of ``entries`` to ``out`` from its current position.

    ``entries`` are sorted bytewise by path, parents before children; the root directory is
    synthesised (0755 root:root) unless an entry with path ``b""`` is given. Regular file
    content is ``entry.data`` when set, else read with :func:`open_entry` below ``tree_root``
    (never through a symlink). Every timestamp is ``mtime``. Returns the image size in bytes
    (a multiple of 4096). Reports ``reporter(task, done, total, "bytes")`` and honours
    cancellation between files.
    """
    if len(uuid) != 16:
        raise ValueError("the EROFS UUID must be 16 bytes")
    if len(volume_name) > 16:
        raise ValueError("the EROFS volume name is at most 16 bytes")
    if not 0 <= mtime < 1 << 63:
        raise UserError(f"timestamp {mtime} (SOURCE_DATE_EPOCH) is out of range")
    lay = _Layout(entries)
    total = lay.blocks * BLOCK
    sink = _Sink(out)
    done = 0
    last_report = -_REPORT_STEP

    def progress(force: bool = False) -> None:
        nonlocal last_report
        if reporter is None:
            return
        if force or done - last_report >= _REPORT_STEP:
            reporter(task, done, total, "bytes")
            last_report = done
        else:
            reporter.check()

    progress(True)
    # Metadata area: blocks are completed out of order (first fit), flushed in order.
    pending: dict[int, bytearray] = {}
    remaining = dict(lay.records)
    next_flush = 0
    sb = _superblock(lay, uuid, volume_name, mtime)

    def put(pos: int, data: bytes) -> None:
        nonlocal next_flush, done
        end = pos + len(data)
        blk = pos // BLOCK
        while pos < end:
            buf = pending.get(blk)
            if buf is None:
                buf = pending[blk] = bytearray(BLOCK)
            off = pos - blk * BLOCK
            n = min(BLOCK - off, end - pos)
            start = len(data) - (end - pos)
            buf[off:off + n] = data[start:start + n]
            remaining[blk] -= 1
            pos += n
            blk += 1
        while next_flush < lay.meta_blocks and remaining.get(next_flush, 0) == 0:
            block = pending.pop(next_flush, None) or bytearray(BLOCK)
            if next_flush == 0:
                block[SUPER_OFFSET:SUPER_OFFSET + SUPER_SIZE] = sb
                csum = crc32c(bytes(block[SUPER_OFFSET:]))
                block[SUPER_OFFSET + 4:SUPER_OFFSET + 8] = struct.pack("<I", csum)
            sink.write(block)
            next_flush += 1
            done += BLOCK

    for node in lay.nodes:
        record = _inode_bytes(node, mtime) + node.xattr
        if node.inline:
            if node.children is not None:
                record += _dir_content(node)[node.size - node.inline:]
            elif stat.S_ISLNK(node.mode):
                assert node.entry is not None and node.entry.target is not None
                record += node.entry.target
            else:
                assert node.entry is not None
                record += _read_tail(node.entry, tree_root, node.size, node.inline)
        put(node.nid * 32, record)
        progress()
    assert next_flush == lay.meta_blocks and not pending

    # Data area, in input order.
    for node in lay.nodes:
        if not node.nblocks:
            continue
        length = node.nblocks * BLOCK
        body = length if not node.inline else node.size - node.inline
        body = min(body, node.size)
        entry = node.entry
        if node.children is not None:
            sink.write(_dir_content(node)[:body])
        elif stat.S_ISLNK(node.mode):
            assert entry is not None and entry.target is not None
            sink.write(entry.target[:body])
        else:
            assert entry is not None
            if entry.data is not None:
                sink.write(entry.data[:body])
            else:
                fd = open_entry(tree_root, entry)
                try:
                    _check_size(fd, entry, node.size)
                    sink.copy(fd, body, entry.path)
                finally:
                    os.close(fd)
        if length > body:
            sink.write(bytes(length - body))
        done += length
        progress()
    sink.finish()
    progress(True)
    return total


# ---------------------------------------------------------------------------------------------
# Reader


@dataclass
class Inode:
    """One name in an EROFS image as :func:`read_tree` finds it (``ino`` is the nid)."""

    path: bytes
    mode: int
    uid: int
    gid: int
    size: int
    mtime: int
    nlink: int
    target: bytes | None
    xattrs: dict[bytes, bytes] = field(default_factory=dict)
    ino: int = 0
    rdev: int = 0
    compressed: bool = False


@dataclass
class _Super:
    blkbits: int
    root_nid: int
    meta_blkaddr: int
    xattr_blkaddr: int
    build_time: int
    limit: int  # image size in bytes


@dataclass
class _Raw:
    nid: int
    mode: int
    uid: int
    gid: int
    size: int
    mtime: int
    nlink: int
    layout: int
    iu: int
    pos: int  # image offset of the inode
    isize: int
    xsize: int


class _Image:
    """Bounds-checked random access to an image at ``offset`` in ``f``."""

    def __init__(self, f: BinaryIO, offset: int, *, verify: bool = True) -> None:
        self.f = f
        self.offset = offset
        f.seek(0, os.SEEK_END)
        avail = f.tell() - offset
        if avail < SUPER_OFFSET + SUPER_SIZE:
            raise ValueError("not an EROFS image: too short for a superblock")
        f.seek(offset + SUPER_OFFSET)
        raw = f.read(SUPER_SIZE)
        fields = _SUPER.unpack(raw)
        magic, checksum, compat, blkbits = fields[0], fields[1], fields[2], fields[3]
        if magic != MAGIC:
            raise ValueError("not an EROFS image: bad superblock magic")
        if not 9 <= blkbits <= 16:
            raise ValueError(f"corrupt EROFS image: unsupported block size 2^{blkbits}")
        blksz = 1 << blkbits
        blocks, meta, xattr = fields[9], fields[10], fields[11]
        incompat, extra_devices = fields[14], fields[16]
        limit = blocks * blksz
        if limit > avail:
            raise ValueError(f"corrupt or truncated EROFS image: superblock says {limit} bytes, only {avail} present")
        if incompat & ~_KNOWN_INCOMPAT:
            raise ValueError(f"EROFS image uses unknown incompatible features 0x{incompat:x}")
        if extra_devices:
            raise ValueError("multi-device EROFS images are not supported")
        if verify and compat & COMPAT_SB_CHKSUM:
            if blksz < SUPER_OFFSET + SUPER_SIZE:
                raise ValueError("corrupt EROFS image: checksum over a block smaller than the superblock")
            f.seek(offset + SUPER_OFFSET)
            area = bytearray(f.read(blksz - SUPER_OFFSET))
            area[4:8] = b"\0\0\0\0"
            if crc32c(bytes(area)) != checksum:
                raise ValueError("corrupt EROFS image: superblock checksum mismatch")
        self.blksz = blksz
        self.sb = _Super(blkbits, fields[5], meta, xattr, fields[7], limit)

    def read(self, pos: int, n: int) -> bytes:
        if pos < 0 or n < 0 or pos + n > self.sb.limit:
            raise ValueError(f"corrupt EROFS image: read of {n} bytes at {pos} is outside the image")
        self.f.seek(self.offset + pos)
        data = self.f.read(n)
        if len(data) != n:
            raise ValueError("corrupt EROFS image: unexpected end of file")
        return data

    def inode(self, nid: int) -> _Raw:
        pos = self.sb.meta_blkaddr * self.blksz + nid * 32
        head = self.read(pos, 32)
        ifmt = struct.unpack_from("<H", head)[0]
        layout = (ifmt >> 1) & 0x7
        if layout > CHUNK_BASED:
            raise ValueError(f"corrupt EROFS image: unknown data layout {layout} at nid {nid}")
        if ifmt & 1:
            (_f, icount, mode, _r, size, iu, _ino, uid, gid, mtime, _ns, nlink) = _EXTENDED.unpack(
                head + self.read(pos + 32, 32)
            )
            isize = 64
        else:
            (_f, icount, mode, nlink, size, _r, iu, _ino, uid, gid, _r2) = _COMPACT.unpack(head)
            mtime = self.sb.build_time
            isize = 32
        if stat.S_IFMT(mode) not in _FTYPE:
            raise ValueError(f"corrupt EROFS image: bad file mode {mode:o} at nid {nid}")
        xsize = 12 + 4 * (icount - 1) if icount else 0
        return _Raw(nid, mode, uid, gid, size, mtime, nlink, layout, iu, pos, isize, xsize)

    def data(self, raw: _Raw, limit: int | None = None) -> Iterator[bytes]:
        """Chunks of an uncompressed inode's content (first ``limit`` bytes, default all)."""
        size = raw.size if limit is None else min(raw.size, limit)
        bs = self.blksz
        if raw.layout in (COMPRESSED_FULL, COMPRESSED_COMPACT):
            raise ValueError(f"nid {raw.nid} is compressed; reading compressed EROFS data is not supported")
        if raw.layout == CHUNK_BASED:
            # sparse chunks read as zeros, so cap what a corrupt size could make us produce
            if raw.size > self.sb.limit * 64 + (1 << 20):
                raise ValueError(f"corrupt EROFS image: nid {raw.nid} claims a size of {raw.size} bytes")
            yield from self._chunked(raw, size)
            return
        if raw.size > self.sb.limit:
            raise ValueError(f"corrupt EROFS image: nid {raw.nid} claims {raw.size} bytes, more than the image holds")
        inline = raw.layout == FLAT_INLINE
        nblocks = -(-raw.size // bs)
        plain_len = (nblocks - 1) * bs if inline and nblocks else raw.size
        done = 0
        if plain_len and size:
            base = raw.iu * bs
            while done < min(size, plain_len):
                n = min(_COPY_CHUNK, min(size, plain_len) - done)
                yield self.read(base + done, n)
                done += n
        if inline and done < size:
            tail_pos = raw.pos + raw.isize + raw.xsize
            n = raw.size - plain_len
            if tail_pos % bs + n > bs:
                raise ValueError(f"corrupt EROFS image: inline data of nid {raw.nid} crosses a block boundary")
            yield self.read(tail_pos, size - done)

    def _chunked(self, raw: _Raw, size: int) -> Iterator[bytes]:
        fmt = raw.iu & 0xFFFF
        if fmt & ~0x3F:
            raise ValueError(f"corrupt EROFS image: unknown chunk format 0x{fmt:x} at nid {raw.nid}")
        chunk = self.blksz << (fmt & 0x1F)
        count = -(-raw.size // chunk)
        base = raw.pos + raw.isize + raw.xsize
        if fmt & 0x20:
            base = -(-base // 8) * 8
            unit = 8
        else:
            unit = 4
        done = 0
        for i in range(count):
            if done >= size:
                break
            ent = self.read(base + i * unit, unit)
            blk = struct.unpack_from("<I", ent, 4 if unit == 8 else 0)[0]
            n = min(chunk, size - done)
            if blk == NULL_ADDR:
                yield bytes(n)
            else:
                got = 0
                while got < n:
                    m = min(_COPY_CHUNK, n - got)
                    yield self.read(blk * self.blksz + got, m)
                    got += m
            done += n

    def xattrs(self, raw: _Raw) -> dict[bytes, bytes]:
        if not raw.xsize:
            return {}
        if raw.xsize < 16:
            raise ValueError(f"corrupt EROFS image: bogus xattr body at nid {raw.nid}")
        body = self.read(raw.pos + raw.isize, raw.xsize)
        _filter, shared = _XATTR_HEADER.unpack_from(body)
        out: dict[bytes, bytes] = {}
        pos = 12
        for _ in range(shared):
            if pos + 4 > len(body):
                raise ValueError(f"corrupt EROFS image: shared xattr ids overrun at nid {raw.nid}")
            xid = struct.unpack_from("<I", body, pos)[0]
            pos += 4
            at = self.sb.xattr_blkaddr * self.blksz + xid * 4
            head = self.read(at, 4)
            name, value, _ = self._entry(head + self.read(at + 4, head[0] + struct.unpack_from("<H", head, 2)[0]), 0, raw.nid)
            out[name] = value
        while pos < len(body):
            if pos + 4 > len(body):
                raise ValueError(f"corrupt EROFS image: xattr entry overruns the body at nid {raw.nid}")
            name, value, pos = self._entry(body, pos, raw.nid)
            out[name] = value
        return out

    @staticmethod
    def _entry(buf: bytes, pos: int, nid: int) -> tuple[bytes, bytes, int]:
        name_len, index, value_len = _XATTR_ENTRY.unpack_from(buf, pos)
        end = pos + 4 + name_len + value_len
        if end > len(buf):
            raise ValueError(f"corrupt EROFS image: xattr entry beyond its body at nid {nid}")
        prefix = _XATTR_BY_INDEX.get(index)
        if prefix is None:
            raise ValueError(f"unsupported EROFS xattr name index {index} at nid {nid}")
        name = prefix + buf[pos + 4:pos + 4 + name_len]
        value = buf[pos + 4 + name_len:end]
        return name, value, -(-end // 4) * 4

    def dirents(self, raw: _Raw) -> Iterator[tuple[bytes, int]]:
        """(name, nid) of a directory's entries, '.' and '..' left out, checked like fsck.erofs."""
        content = b"".join(self.data(raw))
        bs = self.blksz
        seen_dot = seen_dotdot = False
        for start in range(0, len(content), bs):
            blk = content[start:start + bs]
            maxsize = len(blk)
            if maxsize < _DIRENT.size:
                raise ValueError(f"corrupt EROFS image: truncated directory block in nid {raw.nid}")
            first = _DIRENT.unpack_from(blk)[1]
            if first < _DIRENT.size or first >= bs or first % _DIRENT.size or first > maxsize:
                raise ValueError(f"corrupt EROFS image: bad directory block in nid {raw.nid}")
            count = first // _DIRENT.size
            prev = None
            for i in range(count):
                nid, nameoff, _ftype = _DIRENT.unpack_from(blk, i * _DIRENT.size)
                if i + 1 < count:
                    end = _DIRENT.unpack_from(blk, (i + 1) * _DIRENT.size)[1]
                else:
                    nul = blk.find(b"\0", nameoff)
                    end = maxsize if nul < 0 else nul
                if not nameoff <= end <= maxsize or end - nameoff > NAME_MAX or end == nameoff:
                    raise ValueError(f"corrupt EROFS image: bad directory entry in nid {raw.nid}")
                name = blk[nameoff:end]
                if prev is not None and prev >= name:
                    raise ValueError(f"corrupt EROFS image: directory entries out of order in nid {raw.nid}")
                prev = name
                if name == b".":
                    if seen_dot or nid != raw.nid:
                        raise ValueError(f"corrupt EROFS image: bad '.' entry in nid {raw.nid}")
                    seen_dot = True
                elif name == b"..":
                    if seen_dotdot:
                        raise ValueError(f"corrupt EROFS image: duplicate '..' entry in nid {raw.nid}")
                    seen_dotdot = True
                elif b"/" in name:
                    raise ValueError(f"corrupt EROFS image: a name with '/' in nid {raw.nid}")
                else:
                    yield name, nid
        if not (seen_dot and seen_dotdot):
            raise ValueError(f"corrupt EROFS image: '.' or '..' missing in nid {raw.nid}")


def _to_inode(img: _Image, raw: _Raw, path: bytes) -> Inode:
    target = None
    if stat.S_ISLNK(raw.mode):
        if not 0 < raw.size <= 4096:
            raise ValueError(f"corrupt EROFS image: symlink {path!r} has size {raw.size}")
        target = b"".join(img.data(raw))
    rdev = _decode_dev(raw.iu) if stat.S_IFMT(raw.mode) in (stat.S_IFCHR, stat.S_IFBLK) else 0
    return Inode(
        path=path, mode=raw.mode, uid=raw.uid, gid=raw.gid, size=raw.size, mtime=raw.mtime,
        nlink=raw.nlink, target=target, xattrs=img.xattrs(raw), ino=raw.nid, rdev=rdev,
        compressed=raw.layout in (COMPRESSED_FULL, COMPRESSED_COMPACT),
    )


def read_tree(f: BinaryIO, offset: int = 0) -> Iterator[Inode]:
    """Every name in the image at ``offset`` in ``f``: the root (path ``b""``) first, then a
    depth-first walk with siblings in name order; hardlinks share ``ino``. Raises ValueError
    with a clear message on a corrupt image (bounds, loops, bad entries)."""
    img = _Image(f, offset)
    root = img.inode(img.sb.root_nid)
    if not stat.S_ISDIR(root.mode):
        raise ValueError("corrupt EROFS image: the root inode is not a directory")
    yield _to_inode(img, root, b"")
    visited = {root.nid}
    stack: list[Iterator[tuple[bytes, int]]] = [img.dirents(root)]
    paths = [b""]
    while stack:
        try:
            name, nid = next(stack[-1])
        except StopIteration:
            stack.pop()
            paths.pop()
            continue
        child = img.inode(nid)
        cpath = paths[-1] + b"/" + name if paths[-1] else name
        if stat.S_ISDIR(child.mode) and nid in visited:
            raise ValueError(f"corrupt EROFS image: directory loop at {cpath!r}")
        yield _to_inode(img, child, cpath)
        if stat.S_ISDIR(child.mode):
            visited.add(nid)
            stack.append(img.dirents(child))
            paths.append(cpath)


def iter_file(f: BinaryIO, inode: Inode, offset: int = 0) -> Iterator[bytes]:
    """The content of a regular file found by :func:`read_tree`, in chunks of up to 1 MiB."""
    if not stat.S_ISREG(inode.mode):
        raise ValueError(f"{inode.path!r} is not a regular file")
    img = _Image(f, offset, verify=False)  # read_tree checked the superblock already
    raw = img.inode(inode.ino)
    if not stat.S_ISREG(raw.mode):
        raise ValueError(f"nid {inode.ino} is not a regular file")
    yield from img.data(raw)


def read_file(f: BinaryIO, inode: Inode, offset: int = 0) -> bytes:
    """The whole content of a regular file found by :func:`read_tree`."""
    return b"".join(iter_file(f, inode, offset))
