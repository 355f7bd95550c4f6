"""The newc cpio writer for the UKI initrd, streamed straight from the OS tree.

Format: cpio(5) "new ASCII" (magic ``070701``), as the kernel's unpacker reads it
(linux ``init/initramfs.c``) and as ``usr/gen_init_cpio.c`` writes it: a 110-byte header of 13
eight-digit hex fields, the NUL-terminated name padded to 4 bytes, the data padded to 4 bytes;
the archive ends with a ``TRAILER!!!`` entry and nothing after it.

Kairos packs the root filesystem the same way: names relative to the root without ``./``,
metadata normalised. Here the archive order is bytewise by full path (parents come before their
children; ``usr/lib-x`` sorts before ``usr/lib/a``), mtime is ``SOURCE_DATE_EPOCH`` (0 when
unset), uid, gid and device numbers are 0, inode numbers count up from 1 in archive order.

Hardlinks: the names of one inode that are in the archive share an inode number, carry
``nlink`` = the number of those names, and the first of them (in archive order) carries the
data; the others have size 0. The kernel remembers (ino, major, minor, mode) of the first name
with nlink >= 2 and links the later names to it, opening them without O_TRUNC, so the data stays
(``maybe_link``/``do_name`` in init/initramfs.c); GNU cpio defers size-0 names and links them at
the end. A name whose inode has no other name in the archive is written as a plain file.

The byte count equals the size model's exactly: ``Sums.cpio_bytes(selection) + TRAILER_BYTES``
plus the bytes of any extra entries (the ``init`` symlink).

Runs of one folder's plain files (regular, not hardlinked, at most 1 MiB) are written natively
(``_listdir.pack_files``, without the GIL: a 1,000,000-file tree in about a third of the time);
every other entry, and any file that changed since the scan, the Python way, which writes the
same bytes (tests/core/formats/test_cpio.py compares the two) and names a problem.

See docs/formats.md, section 1 (newc cpio, as the kernel unpacks it).
"""

from __future__ import annotations

import os
import stat
import weakref
from array import array
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

from ..atomic import WRITE_ERRNOS
from ..errors import UserError
from ..progress import Reporter
from ..tree.fsentry import FsEntry, open_nofollow
from ..tree.index import HEADER, TreeIndex, cpio_entry_bytes
from ..tree.selection import IntervalSet
from ..tree.sidecar import entry_truth

try:
    from ..tree._listdir import Folders as _Folders
    from ..tree._listdir import Names as _Names
    from ..tree._listdir import archive_order as _archive_order
    from ..tree._listdir import pack_files as _pack_files
except ImportError:  # not built (no C compiler): every entry the Python way
    _Folders = _Names = _archive_order = _pack_files = None

MAGIC = b"070701"
TRAILER_NAME = b"TRAILER!!!"
CHUNK = 1 << 20
_O_FILE = os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOATIME", 0)
_O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)


class Writable(Protocol):
    def write(self, data: bytes, /) -> object: ...


def default_mtime() -> int:
    """The timestamp every entry gets: ``SOURCE_DATE_EPOCH`` when set (reproducible builds), else 0."""
    value = os.environ.get("SOURCE_DATE_EPOCH", "").strip()
    if not value:
        return 0
    try:
        return max(0, int(value))
    except ValueError:
        raise UserError(f"SOURCE_DATE_EPOCH={value!r} is not a whole number of seconds; "
                        "set it to a Unix time or unset it") from None


_M = 0xFFFFFFFF
_IFMT, _IFREG = 0o170000, stat.S_IFREG
#: a header and its name in one formatting step: 13 fields (dev major/minor and check 0), the
#: name, its NUL and the padding to 4 bytes (given as a slice of NULs)
_ENTRY = MAGIC + b"%08X" * 7 + b"0000000000000000" + b"%08X" * 3 + b"00000000" + b"%s%s"
_NULS = b"\0" * 4


def header(*, ino: int, mode: int, uid: int, gid: int, nlink: int, mtime: int, filesize: int,
           rdevmajor: int, rdevminor: int, namesize: int) -> bytes:
    """One 110-byte newc header (dev major/minor 0, check 0)."""
    return _ENTRY % (ino & _M, mode & _M, uid & _M, gid & _M, nlink & _M, mtime & _M, filesize & _M,
                     rdevmajor & _M, rdevminor & _M, namesize & _M, b"", b"")


def entry_block(name: bytes, *, ino: int, mode: int, nlink: int, mtime: int, filesize: int, uid: int = 0,
                gid: int = 0, rdevmajor: int = 0, rdevminor: int = 0) -> bytes:
    """A header, the name, its NUL and the padding to 4 bytes: everything of an entry but its data."""
    n = len(name)
    return _ENTRY % (ino & _M, mode & _M, uid & _M, gid & _M, nlink & _M, mtime & _M, filesize & _M,
                     rdevmajor & _M, rdevminor & _M, (n + 1) & _M, name, _NULS[:1 + (-(111 + n) & 3)])


def _name_block(name: bytes, hdr: bytes) -> bytes:
    raw = hdr + name + b"\0"
    return raw + b"\0" * (-len(raw) & 3)


def trailer() -> bytes:
    """The closing entry: ``TRAILER!!!``, nlink 1, everything else 0; 124 bytes, no padding after."""
    return _name_block(TRAILER_NAME, header(ino=0, mode=0, uid=0, gid=0, nlink=1, mtime=0, filesize=0,
                                            rdevmajor=0, rdevminor=0, namesize=len(TRAILER_NAME) + 1))


def init_entry(target: str) -> FsEntry:
    """The ``init -> target`` symlink Kairos adds (``/init -> /usr/bin/immucore``)."""
    t = os.fsencode(target)
    return FsEntry(path=b"init", mode=stat.S_IFLNK | 0o777, size=len(t), target=t)


def extra_bytes(extra: Iterable[FsEntry]) -> int:
    """newc bytes the extra entries add."""
    total = 0
    for e in extra:
        if e.is_symlink:
            total += cpio_entry_bytes(len(e.path), len(e.target or b""))
        elif e.is_reg:
            total += cpio_entry_bytes(len(e.path), len(e.data or b""))
        else:
            total += cpio_entry_bytes(len(e.path), 0)
    return total


# -- archive order ------------------------------------------------------------------------------
_ORDER_CACHE: dict[int, tuple[weakref.ref, array]] = {}


def archive_order(index: TreeIndex) -> array:
    """Every entry but the root, in bytewise full-path order (cached per index).

    Computed without building full paths: in a folder, each child sorts by its name and each
    child folder's descendants by ``name + b"/"``. Names hold neither ``/`` nor NUL, so this
    per-folder order is exactly the order of the full paths. Natively (``_listdir.archive_order``,
    ~0.04 s a million entries where :func:`_archive_order_py` takes ~0.6 s) when the index is the
    native scan's.
    """
    key = id(index)
    hit = _ORDER_CACHE.get(key)
    if hit is not None and hit[0]() is index and len(hit[1]) == len(index) - 1:
        return hit[1]
    if _archive_order is not None and isinstance(index.names, _Names) and isinstance(index.layout, _Folders):
        out = array("i")
        out.frombytes(_archive_order(index.names, index.layout))
    else:
        out = _archive_order_py(index)
    _ORDER_CACHE[key] = (weakref.ref(index, lambda _r, k=key: _ORDER_CACHE.pop(k, None)), out)
    return out


def _archive_order_py(index: TreeIndex) -> array:
    """:func:`archive_order` in Python (not cached)."""
    names, mode = index.names, index.mode
    first_child, nchild = index.first_child, index.nchild
    IFMT, DIR = 0o170000, stat.S_IFDIR

    def items(d: int) -> list[int]:
        """``d``'s children in order, each child folder's subtree as ``-1 - child`` after it."""
        start = first_child[d]
        if start < 0:
            return []
        end = start + nchild[d]
        keys = names[start:end]
        vals = list(range(start, end))
        dirs = [c for c, m in zip(vals, mode[start:end], strict=True) if m & IFMT == DIR and nchild[c] > 0]
        if dirs:
            keys += [keys[c - start] + b"/" for c in dirs]
            vals += [-1 - c for c in dirs]
        return [vals[k] for k in sorted(range(len(keys)), key=keys.__getitem__)]

    def marks(lst: list[int]) -> list[int]:
        return [k for k, v in enumerate(lst) if v < 0]

    # runs of plain entries go out whole; a subtree marker descends (an explicit stack: no
    # recursion limit on deep trees)
    out = array("i")
    top = items(0)
    stack: list[tuple[list[int], list[int], int, int]] = [(top, marks(top), 0, 0)]
    while stack:
        lst, where, k, prev = stack.pop()
        if k < len(where):
            m = where[k]
            out.extend(lst[prev:m])
            stack.append((lst, where, k + 1, m + 1))
            sub = items(-1 - lst[m])
            stack.append((sub, marks(sub), 0, 0))
        else:
            out.extend(lst[prev:])
    return out


def selection_mask(index: TreeIndex, selection: IntervalSet) -> bytearray:
    """A byte per index entry: 1 when it is in ``selection``."""
    mask = bytearray(len(index))
    for s, e in selection:
        mask[s:e] = b"\x01" * (e - s)
    return mask


def archive_entries(index: TreeIndex, selection: IntervalSet, *, extra: Sequence[FsEntry] = ()) -> array:
    """Entries of ``selection`` in archive order (the root is never one), as a typed array (4
    bytes an entry). ``extra`` entries are not index entries; the writer merges them in by path."""
    order = archive_order(index)
    if list(selection) in ([(1, len(index))], [(0, len(index))]):
        return array("i", order)  # everything: the order as it is
    mask = selection_mask(index, selection)
    mask[0] = 0
    out = array("i")
    out.extend(i for i in order if mask[i])
    return out


# -- writing ------------------------------------------------------------------------------------
class _DirCache:
    """Keeps the last opened parent folder (entries in path order share parents)."""

    def __init__(self, root: bytes) -> None:
        self.root = root
        self.parent = -1
        self.fd = -1

    def get(self, index: TreeIndex, i: int) -> int:
        p = index.parent[i]
        if p != self.parent:
            self.close()
            rel = index.path(p)
            self.fd = open_nofollow(self.root, rel) if rel else os.open(self.root, _O_DIR)
            self.parent = p
        return self.fd

    def close(self) -> None:
        # forget the descriptor before closing it: Ctrl-C or SIGTERM raised in between must not
        # make the caller's ``finally`` close the same number again (by then maybe another file's)
        fd, self.fd, self.parent = self.fd, -1, -1
        if fd >= 0:
            os.close(fd)


class NewcWriter:
    """Writes entries to ``out``, batching small pieces into 1 MiB writes."""

    def __init__(self, out: Writable, *, mtime: int, reporter: Reporter | None, task: str, total: int) -> None:
        self.out = out
        self.mtime = mtime
        self.reporter = reporter
        self.task = task
        self.total = total
        self.buf = bytearray()
        self.written = 0
        self.next_report = 0

    def _flush(self) -> None:
        if self.buf:
            self.out.write(bytes(self.buf))
            self.written += len(self.buf)
            self.buf.clear()
        if self.reporter is not None:
            if self.written >= self.next_report:
                self.next_report = self.written + 8 * CHUNK
                self.reporter(self.task, self.written, self.total)
            else:  # a cancel is honoured within a MiB, even between progress reports
                self.reporter.check()

    def put(self, data: bytes) -> None:
        self.buf += data
        if len(self.buf) >= CHUNK:
            self._flush()

    def entry(self, name: bytes, *, ino: int, mode: int, nlink: int, size: int = 0,
              rdev: int = 0, uid: int = 0, gid: int = 0) -> None:
        self.buf += entry_block(name, ino=ino, mode=mode, nlink=nlink, mtime=self.mtime, filesize=size, uid=uid,
                                gid=gid, rdevmajor=os.major(rdev) if rdev else 0,
                                rdevminor=os.minor(rdev) if rdev else 0)
        if len(self.buf) >= CHUNK:
            self._flush()

    def data_fd(self, fd: int, size: int, what: str | Callable[[], str]) -> None:
        """``size`` bytes from ``fd`` and their padding; ``what`` names the file in an error
        (or makes that name, only when needed)."""
        left = size
        while left > 0:
            chunk = os.read(fd, min(CHUNK, left))
            if not chunk:
                what = what if isinstance(what, str) else what()
                raise UserError(f"{what} shrank while it was being packed; scan the tree again and rebuild")
            left -= len(chunk)
            if len(chunk) >= CHUNK:
                self._flush()
                self.out.write(chunk)
                self.written += len(chunk)
            else:
                self.buf += chunk
                if len(self.buf) >= CHUNK:
                    self._flush()
        self.buf += _NULS[:-size & 3]

    def finish(self) -> int:
        self.put(trailer())
        self._flush()
        return self.written


def write_newc(index: TreeIndex, selection: IntervalSet, out: Writable, *, extra: Sequence[FsEntry] = (),
               mtime: int | None = None, keep_owners: bool = False, reporter: Reporter | None = None,
               task: str = "initrd: archive", total: int = 0) -> int:
    """Stream the newc archive of ``selection`` (plus ``extra``) into ``out``; returns bytes written.

    Files are read from the tree with ``O_NOFOLLOW`` on every component, 1 MiB at a time. A file
    that vanished, became unreadable or changed size since the scan raises :class:`UserError`
    naming it. ``keep_owners`` keeps uid/gid from the tree instead of 0. ``total`` (the expected
    size, for progress) is optional.
    """
    return write_entries(index, archive_entries(index, selection), out, extra=extra, mtime=mtime,
                         keep_owners=keep_owners, reporter=reporter, task=task, total=total)


def write_entries(index: TreeIndex, entries: Sequence[int], out: Writable, *, extra: Sequence[FsEntry] = (),
                  mtime: int | None = None, keep_owners: bool = False, reporter: Reporter | None = None,
                  task: str = "initrd: archive", total: int = 0,
                  ends: array | None = None, with_trailer: bool = True) -> int:
    """Write ``entries`` (index entries, already in archive order) as newc, see :func:`write_newc`.

    ``ends`` (an array of typecode 'q') gets each index entry's end offset in the archive, in
    order, as soon as the entry is written (its bytes may still sit in the writer's buffer); the
    size model's estimator attributes compressed bytes to entries with them.
    ``with_trailer=False`` leaves the trailer out.
    """
    root = index.root
    mtime = default_mtime() if mtime is None else mtime
    extras = sorted(extra, key=lambda e: e.path)
    # hardlinks: names of one inode inside the archive, in archive order
    member_of: dict[int, tuple[int, int]] = {}
    for key, group in index.hardlinks.items():
        for m in group:
            member_of[m] = key
    names_in: dict[tuple[int, int], int] = {}
    if member_of:
        for i in entries:
            k = member_of.get(i)
            if k is not None:
                names_in[k] = names_in.get(k, 0) + 1
    link_ino: dict[tuple[int, int], int] = {}

    w = NewcWriter(out, mtime=mtime, reporter=reporter, task=task, total=total)
    dirs = _DirCache(root)
    ino = 0
    xi = 0
    parent, names, modes, sizes, link_size = index.parent, index.names, index.mode, index.size, index.link_size
    buf = w.buf  # cleared in place by each flush
    last_parent, prefix = -2, b""
    # a folder's plain files natively, in runs (see _pack_runs); the rest one by one below
    packer = _pack_runs(index, entries, member_of) if not keep_owners else None
    n = len(entries)
    pos = 0
    try:
        while pos < n:
            i = entries[pos]
            p = parent[i]
            if p != last_parent:  # entries in archive order share their folder: its path once
                last_parent = p
                prefix = index.path(p) + b"/" if p > 0 else b""
            name = names[i]
            path = prefix + name
            while xi < len(extras) and extras[xi].path < path:
                ino += 1
                _write_extra(w, extras[xi], ino)
                xi += 1
            # an extra entry among this folder's names must come in between: not in a run
            if (packer is not None and modes[i] & _IFMT == _IFREG and sizes[i] <= CHUNK and i not in member_of
                    and (xi == len(extras) or not extras[xi].path.startswith(prefix))):
                try:
                    data, packed = packer(dirs.get(index, i), prefix, pos, ino + 1, w.mtime, w.written + len(buf))
                except OSError:  # the folder vanished or became a link: the Python path names it
                    data, packed = b"", b""
                if packed:
                    buf += data
                    if ends is not None:
                        ends.frombytes(packed)
                    run = len(packed) // 8
                    ino += run
                    pos += run
                    if len(buf) >= CHUNK:
                        w._flush()
                    continue
            pos += 1
            ino += 1
            m = modes[i]
            data = None
            if not keep_owners and m & _IFMT == _IFREG and i not in member_of:
                # the common case inline (a million small files spend their time here): read it
                # whole first; anything unusual (big, changed, unreadable) goes the careful way
                size = link_size.get(i, sizes[i])
                if size <= CHUNK:
                    try:
                        fd = os.open(name, _O_FILE, dir_fd=dirs.get(index, i))
                        try:
                            st = os.fstat(fd)
                            if st.st_size == size and stat.S_ISREG(st.st_mode):
                                data = os.read(fd, size) if size else b""
                        finally:
                            os.close(fd)
                    except OSError:
                        data = None
            if data is not None and len(data) == size:
                buf += entry_block(path, ino=ino, mode=m, nlink=1, mtime=w.mtime, filesize=size)
                buf += data
                buf += _NULS[:-size & 3]
                if len(buf) >= CHUNK:
                    w._flush()
            else:
                _write_index_entry(w, index, i, path, dirs, ino, member_of, names_in, link_ino, keep_owners)
            if ends is not None:
                ends.append(w.written + len(buf))
        while xi < len(extras):
            ino += 1
            _write_extra(w, extras[xi], ino)
            xi += 1
        if with_trailer:
            return w.finish()
        w._flush()
        return w.written
    finally:
        dirs.close()


def _pack_runs(index: TreeIndex, entries: Sequence[int], member_of: dict) -> Callable[..., tuple[bytes, bytes]] | None:
    """A function writing a run of one folder's plain files natively (``_listdir.pack_files``:
    regular, not hardlinked, at most 1 MiB, unchanged since the scan), or None where the native
    part is not built or the index is not its kind. ~4 us a small file where the Python path
    below takes ~15 (a 1,000,000-file tree: the estimator's pass and the build spend their time
    there). The run stops at anything else; that entry takes the Python path, which names a
    problem if there is one."""
    if _pack_files is None or not isinstance(index.names, _Names):
        return None
    order = entries if isinstance(entries, array) and entries.typecode == "i" else array("i", entries)
    skip = bytearray(len(index))
    for i in (*member_of, *index.link_size):
        skip[i] = 1
    names, parent, mode, size = index.names, index.parent, index.mode, index.size

    def pack(dir_fd: int, prefix: bytes, pos: int, ino: int, mtime: int, at: int) -> tuple[bytes, bytes]:
        """(data, its entries' end offsets in the archive as packed int64), ``data`` going at ``at``."""
        return _pack_files(dir_fd, prefix, names, order, pos, parent, mode, size, skip, ino, mtime, CHUNK, at)

    return pack


def _write_extra(w: NewcWriter, e: FsEntry, ino: int) -> None:
    if e.is_symlink:
        target = e.target or b""
        w.entry(e.path, ino=ino, mode=e.mode, nlink=1, size=len(target))
        w.put(target + b"\0" * (-len(target) & 3))
    elif e.is_reg:
        data = e.data or b""
        w.entry(e.path, ino=ino, mode=e.mode, nlink=1, size=len(data))
        w.put(data + b"\0" * (-len(data) & 3))
    else:
        w.entry(e.path, ino=ino, mode=e.mode, nlink=2 if e.is_dir else 1, rdev=e.rdev)


def _shown(index: TreeIndex, path: bytes) -> str:
    return os.fsdecode(os.path.join(index.root, path))


def _write_index_entry(w: NewcWriter, index: TreeIndex, i: int, path: bytes, dirs: _DirCache, ino: int,
                       member_of: dict, names_in: dict, link_ino: dict, keep_owners: bool) -> None:
    mode = index.mode[i]
    name = index.names[i]
    uid = gid = 0
    try:
        pfd = dirs.get(index, i)
        st = None
        if keep_owners or not (stat.S_ISREG(mode) or stat.S_ISDIR(mode) or stat.S_ISLNK(mode)):
            st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
            if keep_owners:
                uid, gid = st.st_uid, st.st_gid
                truth = entry_truth(index.root, path, st)  # a flattened image's sidecar
                if truth is not None:
                    uid, gid = truth[1], truth[2]
        if stat.S_ISREG(mode):
            size = index.data_bytes(i)
            key = member_of.get(i)
            nlink = 1
            carries = True
            if key is not None and names_in.get(key, 1) > 1:
                nlink = names_in[key]
                if key in link_ino:
                    carries = False
                    ino = link_ino[key]
                else:
                    link_ino[key] = ino
            if not carries:
                w.entry(path, ino=ino, mode=mode, nlink=nlink, uid=uid, gid=gid)
                return
            fd = os.open(name, _O_FILE, dir_fd=pfd)
            try:
                fst = os.fstat(fd)
                if not stat.S_ISREG(fst.st_mode) or fst.st_size != size:
                    raise UserError(f"{_shown(index, path)} changed since the tree was scanned; scan again and rebuild")
                w.entry(path, ino=ino, mode=mode, nlink=nlink, size=size, uid=uid, gid=gid)
                w.data_fd(fd, size, lambda: _shown(index, path))
            finally:
                os.close(fd)
        elif stat.S_ISLNK(mode):
            target = os.readlink(name, dir_fd=pfd)
            if len(target) != index.size[i]:
                raise UserError(f"the symlink {_shown(index, path)} changed since the tree was scanned; scan again and rebuild")
            w.entry(path, ino=ino, mode=mode, nlink=1, size=len(target), uid=uid, gid=gid)
            w.put(target + b"\0" * (-len(target) & 3))
        elif stat.S_ISDIR(mode):
            w.entry(path, ino=ino, mode=mode, nlink=2, uid=uid, gid=gid)
        else:
            rdev = st.st_rdev if st is not None and (stat.S_ISCHR(mode) or stat.S_ISBLK(mode)) else 0
            truth = entry_truth(index.root, path, st) if st is not None else None
            if truth is not None:  # a flattened image's device this user could not create
                rdev = truth[3]
                if keep_owners:
                    uid, gid = truth[1], truth[2]
            w.entry(path, ino=ino, mode=mode, nlink=1, rdev=rdev, uid=uid, gid=gid)
    except OSError as exc:
        if exc.errno in WRITE_ERRNOS:  # the archive's own disk (full, quota, read-only): the writer names it
            raise
        raise UserError(f"cannot read {_shown(index, path)} for the initrd ({exc.strerror or exc}); "
                        "it vanished or is unreadable: scan the tree again") from None


def archive_size(index: TreeIndex, selection: IntervalSet, extra: Sequence[FsEntry] = ()) -> int:
    """The archive's exact byte count without writing it (the size model's figure)."""
    from ..tree.index import TRAILER_BYTES
    from ..tree.selection import Sums

    return Sums(index).cpio_bytes(selection) + TRAILER_BYTES + extra_bytes(extra)


__all__ = ["HEADER", "MAGIC", "archive_entries", "archive_order", "archive_size", "entry_block", "extra_bytes", "header",
           "init_entry", "selection_mask", "trailer", "write_entries", "write_newc"]
