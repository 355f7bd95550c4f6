"""The file records that image writers consume, read from a foreign OS tree safely.

A writer (EROFS, squashfs staging, cpio) takes an iterable of :class:`FsEntry` sorted bytewise
by path, parents before children. Entries are read from the OS tree without ever following a
symlink: every component is opened with ``O_NOFOLLOW`` relative to its parent directory, so an
absolute link inside the tree (which points into that tree, not at this machine) is stored as a
link and never read through.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from ..errors import UserError
from .sidecar import entry_truth

_O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
_O_FILE = os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOATIME", 0)


@dataclass(slots=True)
class FsEntry:
    """One inode as it goes into an image.

    ``path`` is relative to the image root with no leading ``./`` or ``/`` (``b"usr/lib/x"``).
    Regular file content comes from ``data`` when set (synthesised files such as the
    extension-release file), otherwise from ``source``: a path relative to the tree root, read
    with :func:`open_entry` (never through a symlink). ``link_id`` is shared by the names of one
    hardlinked inode.
    """

    path: bytes
    mode: int
    uid: int = 0
    gid: int = 0
    size: int = 0
    mtime: int = 0
    rdev: int = 0
    nlink: int = 1
    link_id: tuple[int, int] | None = None
    source: bytes | None = None  # relative to the tree root
    data: bytes | None = None
    target: bytes | None = None  # symlink target
    xattrs: dict[bytes, bytes] = field(default_factory=dict)
    #: (inode, ctime in ns) of the tree's file: unlike mtime, no tool can set them back, so a
    #: rewrite with the same size and a clamped mtime still shows (build reuse only, not in images)
    stamp: tuple[int, int] = (0, 0)

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)

    @property
    def is_reg(self) -> bool:
        return stat.S_ISREG(self.mode)

    @property
    def is_symlink(self) -> bool:
        return stat.S_ISLNK(self.mode)


def open_nofollow(root: bytes, rel: bytes) -> int:
    """Open ``root/rel`` for reading without following any symlink below ``root``.

    Returns a file descriptor; raises ``OSError`` (``ELOOP`` for a link) like ``os.open``.
    """
    parts = [p for p in rel.split(b"/") if p and p != b"."]
    if any(p == b".." for p in parts):
        raise OSError(errno.EINVAL, "path escapes the tree", rel)
    fd = os.open(root, _O_DIR)
    try:
        for part in parts[:-1]:
            nxt = os.open(part, _O_DIR, dir_fd=fd)
            os.close(fd)
            fd = nxt
        if not parts:
            return os.dup(fd)
        return os.open(parts[-1], _O_FILE, dir_fd=fd)
    finally:
        os.close(fd)


def open_entry(root: bytes, entry: FsEntry) -> int:
    """File descriptor for a regular entry's content in the tree at ``root`` (no symlinks)."""
    if entry.source is None:
        raise ValueError(f"entry {entry.path!r} has no source in the tree")
    try:
        return open_nofollow(root, entry.source)
    except FileNotFoundError:
        raise UserError(f"{os.fsdecode(os.path.join(root, entry.source))} vanished from the OS tree since it "
                        "was scanned; scan again and build again") from None
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise UserError(f"{os.fsdecode(os.path.join(root, entry.source))} became a symlink (or lies below "
                            "one) since it was scanned; it is not followed: scan again") from None
        raise UserError(f"cannot read {os.fsdecode(os.path.join(root, entry.source))}: {exc.strerror}") from None


def read_xattrs(path: bytes) -> dict[bytes, bytes]:
    """Extended attributes of ``path`` itself (not a link's target); {} where unsupported."""
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM, errno.EACCES):
            return {}
        raise
    out: dict[bytes, bytes] = {}
    for name in sorted(names):
        try:
            out[os.fsencode(name)] = os.getxattr(path, name, follow_symlinks=False)
        except OSError as exc:
            if exc.errno in (errno.ENODATA, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM, errno.EACCES):
                continue
            raise
    return out


def entry_from_lstat(root: bytes, rel: bytes, st: os.stat_result, *, xattrs: bool = True) -> FsEntry:
    """Build an :class:`FsEntry` for ``root/rel`` from its lstat result."""
    host = os.path.join(root, rel)
    mode = st.st_mode
    entry = FsEntry(
        path=rel,
        mode=mode,
        uid=st.st_uid,
        gid=st.st_gid,
        mtime=int(st.st_mtime),
        nlink=st.st_nlink,
        rdev=st.st_rdev if (stat.S_ISCHR(mode) or stat.S_ISBLK(mode)) else 0,
        stamp=(st.st_ino, st.st_ctime_ns),
    )
    if stat.S_ISREG(mode):
        entry.size = st.st_size
        entry.source = rel
        if st.st_nlink > 1:
            entry.link_id = (st.st_dev, st.st_ino)
    elif stat.S_ISLNK(mode):
        entry.target = os.readlink(host)
        entry.size = len(entry.target)
    if xattrs:
        entry.xattrs = read_xattrs(host)
    truth = entry_truth(root, rel, st)  # a flattened image: owners, devices, xattrs from its sidecar
    if truth is not None:
        entry.mode, entry.uid, entry.gid, entry.rdev, extra = truth
        if xattrs:
            entry.xattrs = {**entry.xattrs, **extra}
        if not stat.S_ISREG(entry.mode):
            entry.source = entry.link_id = None
            if not stat.S_ISLNK(entry.mode):
                entry.size = 0
    return entry


def walk_selection(root: bytes, paths: Iterable[bytes], *, xattrs: bool = True) -> Iterator[FsEntry]:
    """Entries for the given relative paths and everything below the directories among them.

    Ancestors of each path are included (as directories) so the result is a complete tree.
    Sorted bytewise by path; never follows symlinks. Unreadable entries raise ``UserError``
    naming the path.
    """
    wanted: set[bytes] = set()
    for p in paths:
        p = p.strip(b"/")
        if not p:
            continue
        wanted.add(p)
    found: dict[bytes, FsEntry] = {}

    def add(rel: bytes) -> os.stat_result:
        host = os.path.join(root, rel)
        try:
            st = os.lstat(host)
            found[rel] = entry_from_lstat(root, rel, st, xattrs=xattrs)
        except OSError as exc:
            raise UserError(f"cannot read {host.decode(errors='replace')}: {exc.strerror}") from exc
        return st

    for rel in sorted(wanted):
        parts = rel.split(b"/")
        for i in range(1, len(parts)):
            anc = b"/".join(parts[:i])
            if anc not in found:
                st = add(anc)
                if not stat.S_ISDIR(st.st_mode):
                    raise UserError(f"{anc.decode(errors='replace')} in the OS tree is not a directory")
        if rel in found:
            continue
        st = add(rel)
        if stat.S_ISDIR(st.st_mode):
            stack = [rel]
            while stack:
                d = stack.pop()
                host = os.path.join(root, d)
                try:
                    names = os.listdir(host)
                except OSError as exc:
                    raise UserError(f"cannot read folder {host.decode(errors='replace')}: {exc.strerror}") from exc
                for name in names:
                    child = d + b"/" + name
                    cst = add(child)
                    if stat.S_ISDIR(cst.st_mode):
                        stack.append(child)
    for key in sorted(found):
        yield found[key]


def resolve_in_tree(root: bytes, rel: bytes, *, max_links: int = 40, links: list[bytes] | None = None) -> bytes:
    """Resolve ``rel`` inside the foreign tree at ``root`` the way its own OS would: symlinks are
    followed, but an absolute target means ``root/target`` and ``..`` never climbs above ``root``.
    Returns the resolved path relative to ``root``; raises ``OSError`` if a component is missing
    or the links loop. ``links`` (if given) receives each symlink followed, relative to ``root``."""
    todo = [p for p in rel.split(b"/") if p and p != b"."]
    todo.reverse()
    done: list[bytes] = []
    followed = 0
    while todo:
        part = todo.pop()
        if part == b"..":
            if done:
                done.pop()
            continue
        candidate = b"/".join([*done, part])
        st = os.lstat(os.path.join(root, candidate))
        if stat.S_ISLNK(st.st_mode):
            followed += 1
            if links is not None:
                links.append(candidate)
            if followed > max_links:
                raise OSError(errno.ELOOP, "too many levels of symbolic links", candidate)
            target = os.readlink(os.path.join(root, candidate))
            if target.startswith(b"/"):
                done = []
            todo.extend(reversed([p for p in target.split(b"/") if p and p != b"."]))
            continue
        done.append(part)
    return b"/".join(done)


def host_path_in_tree(root: os.PathLike[str] | str, path: os.PathLike[str] | str) -> str:
    """The host path of ``path`` when it lies in the tree at ``root``, with links resolved inside
    the tree (:func:`resolve_in_tree`); a path outside the tree is returned unchanged."""
    broot = os.path.abspath(os.fsencode(root))
    bpath = os.path.abspath(os.fsencode(path))
    if bpath != broot and not bpath.startswith(broot.rstrip(b"/") + b"/"):
        return os.fsdecode(bpath)
    rel = bpath[len(broot):].lstrip(b"/")
    return os.fsdecode(os.path.join(broot, resolve_in_tree(broot, rel)))
