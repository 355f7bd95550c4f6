"""Applying container image layers onto a folder, exactly as the OCI image spec says.

Reference: OCI image-spec ``layer.md`` ("Applying Changesets", "Whiteouts", "Opaque
Whiteout"), checked against ``umoci unpack`` (Debian's umoci 0.4.7, tests/core/tree/test_oci.py):

- layers apply in order; an entry that replaces a non-folder unlinks it first (so the other
  names of a hardlinked file keep the old content), a folder replacing a folder merges: what it
  holds stays, its own attributes are the new entry's;
- ``.wh.NAME`` removes NAME of the lower layers and is never extracted; entries of the same layer
  are not touched by it; ``.wh..wh..opq`` hides every lower child of its folder, applied before
  the layer's own entries whatever their order in the tar (so what the layer already put there
  stays); other ``.wh..wh.*`` names (aufs bookkeeping) are ignored;
- hardlinks (type ``1``) may point at any entry already in the tree, from this layer or below;
- mode, uid/gid, mtime, xattrs (PAX ``SCHILY.xattr.*``), device numbers and symlink targets are
  kept.

Safety: every path is walked from the target folder one component at a time with ``O_NOFOLLOW``,
so nothing is written outside it: absolute names, ``..`` and names below a symlink are refused
with the layer and entry named (a symlink's *target* is stored, never followed). Each layer's
decompressed bytes are bounded (:mod:`.tarstream`), and the free space of the disk is checked
before large files, so a bomb stops with a clear error instead of filling the disk.

Without root (:func:`can_own` false), ownership, device nodes and xattrs this user may not set
go to the sidecar (:mod:`.sidecar`); folders keep ``u+rwx`` and files ``u+r`` on disk so the
extraction and the later reads work, with the real mode in the sidecar when that differs.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from ..errors import UserError
from .sidecar import TreeMeta, Truth
from .tarstream import AREG, BLK, CHR, CONT, DIR, FIFO, LNK, REG, SYM, Member, TarReader

_O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_O_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
WHITEOUT = b".wh."
OPAQUE = b".wh..wh..opq"


def can_own() -> bool:
    """True when this process can give files to any owner and create devices: root in the initial
    user namespace (a mapped root in ``unshare -r`` cannot chown to unmapped ids)."""
    if os.geteuid() != 0:
        return False
    try:
        with open("/proc/self/uid_map") as fh:
            fields = fh.read().split()
    except OSError:
        return True
    return fields[:3] == ["0", "0", "4294967295"]


class LayerError(UserError):
    """A layer the extraction refuses; the message names the layer and the entry."""


@dataclass
class Stats:
    entries: int = 0
    files: int = 0
    bytes: int = 0
    whiteouts: int = 0
    hardlinks: int = 0


class Target:
    """The folder being flattened into, with what the disk cannot hold."""

    def __init__(self, root: bytes, *, privileged: bool, min_free: int = 64 << 20) -> None:
        self.root = root
        self.privileged = privileged
        self.min_free = min_free
        self.rootfd = os.open(root, _O_DIR)
        self.records: dict[bytes, Truth] = {}
        self.dir_mtimes: dict[bytes, int] = {}
        self._fds: OrderedDict[bytes, int] = OrderedDict()
        self.stats = Stats()
        self._since_space_check = 0
        self._what = ""
        self._entry = b""

    def close(self) -> None:
        self._drop_fds()
        fd, self.rootfd = self.rootfd, -1
        if fd >= 0:
            os.close(fd)

    def meta(self) -> TreeMeta:
        return TreeMeta(owners_on_disk=self.privileged, records=dict(self.records))

    # -- errors and paths ---------------------------------------------------------------------------
    def _fail(self, message: str) -> LayerError:
        return LayerError(f"{self._what}: entry {self._entry.decode(errors='replace')!r}: {message}; refused")

    def safe_name(self, name: bytes, kind: str = "name") -> bytes:
        if name.startswith(b"/"):
            raise self._fail(f"the {kind} is absolute")
        parts = [p for p in name.split(b"/") if p and p != b"."]
        if b".." in parts:
            raise self._fail(f"the {kind} contains '..'")
        if any(b"\0" in p for p in parts):
            raise self._fail(f"the {kind} contains a NUL byte")
        return b"/".join(parts)

    def _drop_fds(self) -> None:
        fds = list(self._fds.values())
        self._fds.clear()
        for fd in fds:
            os.close(fd)

    def dir_fd(self, rel: bytes, *, create: bool) -> int | None:
        """A descriptor of folder ``rel`` (cached), walked with ``O_NOFOLLOW``; missing folders are
        created (``create``) or give None. A symlink or a non-folder on the way is refused."""
        if not rel:
            return self.rootfd
        fd = self._fds.get(rel)
        if fd is not None:
            self._fds.move_to_end(rel)
            return fd
        parent, _, base = rel.rpartition(b"/")
        pfd = self.dir_fd(parent, create=create)
        if pfd is None:
            return None
        try:
            fd = os.open(base, _O_DIR, dir_fd=pfd)
        except FileNotFoundError:
            if not create:
                return None
            os.mkdir(base, 0o755, dir_fd=pfd)
            fd = os.open(base, _O_DIR, dir_fd=pfd)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                st = os.stat(base, dir_fd=pfd, follow_symlinks=False)
                if stat.S_ISLNK(st.st_mode):
                    raise self._fail(f"its parent {rel.decode(errors='replace')} is a symlink (writing "
                                     "through it could leave the image)") from None
                raise self._fail(f"its parent {rel.decode(errors='replace')} is not a folder") from None
            raise
        self._fds[rel] = fd
        if len(self._fds) > 48:
            _, old = self._fds.popitem(last=False)
            os.close(old)
        return fd

    @staticmethod
    def _lstat(base: bytes, pfd: int) -> os.stat_result | None:
        try:
            return os.stat(base, dir_fd=pfd, follow_symlinks=False)
        except FileNotFoundError:
            return None

    def _forget(self, rel: bytes, was_dir: bool) -> None:
        self.records.pop(rel, None)
        if was_dir:
            prefix = rel + b"/"
            for table in (self.records, self.dir_mtimes):
                if table:
                    for k in [k for k in table if k.startswith(prefix)]:
                        del table[k]
            self.dir_mtimes.pop(rel, None)
            self._drop_fds()

    def remove(self, rel: bytes, base: bytes, pfd: int, st: os.stat_result) -> None:
        if stat.S_ISDIR(st.st_mode):
            self._drop_fds()  # no cached descriptor may outlive its folder
            pfd = self.dir_fd(rel.rpartition(b"/")[0], create=False)
            shutil.rmtree(base, dir_fd=pfd)
            self._forget(rel, True)
        else:
            os.unlink(base, dir_fd=pfd)
            self._forget(rel, False)

    def _check_space(self, size: int) -> None:
        self._since_space_check += size
        if size < (16 << 20) and self._since_space_check < (256 << 20):
            return
        self._since_space_check = 0
        sv = os.fstatvfs(self.rootfd)
        free = sv.f_bavail * sv.f_frsize
        if free < size + self.min_free:
            raise UserError(f"{self._what}: entry {self._entry.decode(errors='replace')!r} needs {size} bytes but the "
                            f"disk holding {self.root.decode(errors='replace')} has {free} left; free some space "
                            "(or set SYSEXTANT_IMAGE_CACHE to a bigger disk)")

    # -- metadata --------------------------------------------------------------------------------
    def _set_meta(self, rel: bytes, m: Member, kind: int, *, fd: int | None, pfd: int, base: bytes,
                  on_disk_type: int | None = None, replace_xattrs: bool = False) -> None:
        """Owner, xattrs, mode and (for non-folders) times, in the order that keeps them all:
        chown clears set-id bits and file capabilities, so it comes first."""
        record = False
        true_mode = kind | m.mode
        disk_kind = kind if on_disk_type is None else on_disk_type
        if disk_kind != kind:
            record = True
        is_link = kind == stat.S_IFLNK
        if self.privileged:
            try:
                if fd is not None:
                    os.fchown(fd, m.uid, m.gid)
                else:
                    os.chown(base, m.uid, m.gid, dir_fd=pfd, follow_symlinks=False)
            except OSError:
                record = True
        elif m.uid or m.gid:
            record = True
        failed: dict[bytes, bytes] = {}
        if disk_kind != kind:
            failed = dict(m.xattrs)
        else:
            target = fd if fd is not None else os.path.join(self.root, rel)
            nofollow = {} if fd is not None else {"follow_symlinks": False}
            if replace_xattrs:
                try:
                    for n in os.listxattr(target, **nofollow):
                        if os.fsencode(n) not in m.xattrs:
                            with contextlib.suppress(OSError):
                                os.removexattr(target, n, **nofollow)
                except OSError:
                    pass
            for name, value in m.xattrs.items():
                if not name or b"\0" in name:
                    raise self._fail(f"the xattr name {name!r} is not valid")
                try:
                    os.setxattr(target, name, value, **nofollow)
                except OSError as exc:
                    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                        raise
                    failed[name] = value
        if failed:
            record = True
        if not is_link:
            disk_mode = m.mode
            if disk_kind != kind:
                disk_mode = 0o600
            elif not self.privileged:
                disk_mode |= 0o700 if kind == stat.S_IFDIR else 0o400
            if disk_mode != m.mode:
                record = True
            if fd is not None:
                os.fchmod(fd, disk_mode)
            else:
                os.chmod(base, disk_mode, dir_fd=pfd)
        else:
            true_mode = stat.S_IFLNK | 0o777
        if kind != stat.S_IFDIR:
            ns = (m.mtime_ns, m.mtime_ns)
            if fd is not None:
                os.utime(fd, ns=ns)
            else:
                os.utime(base, ns=ns, dir_fd=pfd, follow_symlinks=False)
        if record:
            rdev = os.makedev(m.devmajor, m.devminor) if kind in (stat.S_IFCHR, stat.S_IFBLK) else 0
            self.records[rel] = Truth(true_mode, m.uid, m.gid, rdev, failed)
        else:
            self.records.pop(rel, None)

    # -- one layer -------------------------------------------------------------------------------
    def apply(self, reader: TarReader, what: str, tick: Callable[[], None] | None = None) -> None:
        """Apply one layer's tar stream."""
        self._what = what
        touched: set[bytes] = set()
        for m in reader:
            self._entry = m.name
            self.stats.entries += 1
            if tick is not None and not self.stats.entries & 255:
                tick()
            rel = self.safe_name(m.name)
            if not rel:
                continue  # the root folder itself ("./"): its attributes are not part of any output
            parent, _, base = rel.rpartition(b"/")
            if base.startswith(WHITEOUT):
                self._whiteout(parent, base, touched)
                continue
            p = parent
            while p and p not in touched:
                touched.add(p)
                p = p.rpartition(b"/")[0]
            touched.add(rel)
            pfd = self.dir_fd(parent, create=True)
            assert pfd is not None
            try:
                self._entry_apply(m, rel, base, pfd, reader)
            except OSError as exc:
                if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise UserError(f"{what}: no space left on the device while writing "
                                    f"{m.name.decode(errors='replace')!r} into {self.root.decode(errors='replace')}; "
                                    "free some space (or set SYSEXTANT_IMAGE_CACHE to a bigger disk)") from None
                raise self._fail(f"cannot be written ({exc.strerror or exc})") from None
        self._entry = b""

    def _whiteout(self, parent: bytes, base: bytes, touched: set[bytes]) -> None:
        self.stats.whiteouts += 1
        if base == OPAQUE:
            p = parent
            while p and p not in touched:
                touched.add(p)
                p = p.rpartition(b"/")[0]
            if self.dir_fd(parent, create=True) is not None:
                self._clear_untouched(parent, touched)
            return
        if base.startswith(WHITEOUT + WHITEOUT):
            return  # aufs metadata (.wh..wh.plnk, .wh..wh.aufs): not part of the tree
        name = base[len(WHITEOUT):]
        if name in (b"", b".", b".."):
            raise self._fail("a whiteout names no entry")
        pfd = self.dir_fd(parent, create=False)
        if pfd is None:
            return
        rel = parent + b"/" + name if parent else name
        st = self._lstat(name, pfd)
        if st is None:
            return
        if rel in touched:  # the layer's own entry stays; only what lies below it from lower layers goes
            if stat.S_ISDIR(st.st_mode):
                self._clear_untouched(rel, touched)
            return
        self.remove(rel, name, pfd, st)

    def _clear_untouched(self, drel: bytes, touched: set[bytes]) -> None:
        fd = self.dir_fd(drel, create=False)
        if fd is None:
            return
        for name in sorted(os.fsencode(n) for n in os.listdir(fd)):
            crel = drel + b"/" + name if drel else name
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            if crel in touched:
                if stat.S_ISDIR(st.st_mode):
                    self._clear_untouched(crel, touched)
                continue
            self.remove(crel, name, fd, st)
            fd = self.dir_fd(drel, create=False)  # removing a folder drops the cached descriptors
            assert fd is not None

    def _entry_apply(self, m: Member, rel: bytes, base: bytes, pfd: int, reader: TarReader) -> None:
        typ = m.type
        st = self._lstat(base, pfd)
        if typ == DIR:
            if st is not None and not stat.S_ISDIR(st.st_mode):
                self.remove(rel, base, pfd, st)
                pfd = self.dir_fd(rel.rpartition(b"/")[0], create=True)
                st = None
            if st is None:
                os.mkdir(base, 0o700, dir_fd=pfd)
            fd = self.dir_fd(rel, create=False)
            self._set_meta(rel, m, stat.S_IFDIR, fd=fd, pfd=pfd, base=base, replace_xattrs=st is not None)
            self.dir_mtimes[rel] = m.mtime_ns
            return
        if typ == LNK:
            self._hardlink(m, rel, base, pfd, st)
            return
        if st is not None:
            self.remove(rel, base, pfd, st)
            pfd = self.dir_fd(rel.rpartition(b"/")[0], create=True)
        if typ in (REG, AREG, CONT):
            self._check_space(m.size)
            fd = os.open(base, _O_NEW, 0o600, dir_fd=pfd)
            try:
                left = m.size
                while left:
                    chunk = reader.read(min(left, 1 << 20))
                    view = memoryview(chunk)
                    while view:
                        n = os.write(fd, view)
                        view = view[n:]
                    left -= len(chunk)
                self._set_meta(rel, m, stat.S_IFREG, fd=fd, pfd=pfd, base=base)
            finally:
                os.close(fd)
            self.stats.files += 1
            self.stats.bytes += m.size
        elif typ == SYM:
            os.symlink(m.linkname, base, dir_fd=pfd)
            self._set_meta(rel, m, stat.S_IFLNK, fd=None, pfd=pfd, base=base)
        elif typ in (CHR, BLK):
            kind = stat.S_IFCHR if typ == CHR else stat.S_IFBLK
            made = False
            if self.privileged:
                try:
                    os.mknod(base, kind | 0o600, os.makedev(m.devmajor, m.devminor), dir_fd=pfd)
                    made = True
                except PermissionError:
                    pass
            if made:
                self._set_meta(rel, m, kind, fd=None, pfd=pfd, base=base)
            else:  # an empty file stands for the device; the sidecar says what it is
                os.close(os.open(base, _O_NEW, 0o600, dir_fd=pfd))
                self._set_meta(rel, m, kind, fd=None, pfd=pfd, base=base, on_disk_type=stat.S_IFREG)
        elif typ == FIFO:
            os.mkfifo(base, 0o600, dir_fd=pfd)
            self._set_meta(rel, m, stat.S_IFIFO, fd=None, pfd=pfd, base=base)
        else:  # pragma: no cover - the reader refuses other types
            raise self._fail(f"unknown type {typ!r}")

    def _hardlink(self, m: Member, rel: bytes, base: bytes, pfd: int, st: os.stat_result | None) -> None:
        src = self.safe_name(m.linkname, "hardlink target")
        if not src:
            raise self._fail("the hardlink points at the image root")
        if src == rel:
            return
        sparent, _, sbase = src.rpartition(b"/")
        spfd = self.dir_fd(sparent, create=False)
        sst = self._lstat(sbase, spfd) if spfd is not None else None
        if sst is None:
            raise self._fail(f"it is a hardlink to {src.decode(errors='replace')}, which no layer so far holds")
        if stat.S_ISDIR(sst.st_mode):
            raise self._fail(f"it is a hardlink to the folder {src.decode(errors='replace')}")
        if st is not None:
            if (st.st_dev, st.st_ino) == (sst.st_dev, sst.st_ino):
                return
            self.remove(rel, base, pfd, st)
            pfd = self.dir_fd(rel.rpartition(b"/")[0], create=True)
            spfd = self.dir_fd(sparent, create=False)
        os.link(sbase, base, src_dir_fd=spfd, dst_dir_fd=pfd, follow_symlinks=False)
        rec = self.records.get(src)
        if rec is not None:
            self.records[rel] = rec
        else:
            self.records.pop(rel, None)
        self.stats.hardlinks += 1

    def finish(self) -> None:
        """Folder times last: every entry written into a folder changed its mtime."""
        for rel in sorted(self.dir_mtimes, key=len, reverse=True):
            fd = self.dir_fd(rel, create=False)
            if fd is not None:
                ns = self.dir_mtimes[rel]
                os.utime(fd, ns=(ns, ns))


def apply_layers(target: Target, layers: Iterable[tuple[TarReader, str]],
                 tick: Callable[[], None] | None = None) -> None:
    """Apply each (reader, name) in order, then the folder times."""
    for reader, what in layers:
        target.apply(reader, what, tick)
    target.finish()
