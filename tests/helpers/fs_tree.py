"""A small OS-like tree exercising every inode kind, shared by the filesystem writer tests.

Built as root (device nodes, foreign ownership). Holds: empty, small, 10000-byte, 8192-byte
(block multiple), 8186-byte (tail too big to inline) and 2-MiB files; nested directories; a
directory with enough names to need several directory blocks; relative and absolute symlinks;
a hardlink pair; a fifo, a socket and a character device; names with a space, a newline and a
non-UTF-8 byte; setuid and 0600 modes; uid/gid 1234:5678 and 100000:100001; xattrs
``user.foo``, ``trusted.bar`` and a real ``security.capability`` (cap_net_raw+ep).
"""

from __future__ import annotations

import hashlib
import os
import random
import socket
import stat
import struct
from pathlib import Path

from sysextant.core.formats import (
    erofs,  # VFS_CAP_REVISION_2 | VFS_CAP_FLAGS_EFFECTIVE, permitted = 1 << CAP_NET_RAW(13), inheritable 0
)
from sysextant.core.tree import fsentry
from sysextant.core.tree.fsentry import FsEntry

CAP_NET_RAW_EP = struct.pack("<IIIII", 0x02000001, 1 << 13, 0, 0, 0)
PATHS = [b"usr", b"opt"]


def entries(root: Path) -> list[FsEntry]:
    """The entries of the tree's selection (PATHS), as the writers take them."""
    return list(fsentry.walk_selection(os.fsencode(root), PATHS))


def _write(path: Path, data: bytes, mode: int = 0o644) -> None:
    path.write_bytes(data)
    os.chmod(path, mode)


def build_tree(root: Path) -> Path:
    """Create the tree below ``root`` (which must not exist) and return ``root``."""
    rnd = random.Random(1234)
    lib = root / "usr" / "lib"
    (lib / "deep" / "er" / "est").mkdir(parents=True)
    (root / "usr" / "bin").mkdir()
    (root / "opt" / "app").mkdir(parents=True)
    _write(lib / "empty", b"")
    _write(lib / "small", b"hello\n")
    _write(lib / "big", rnd.randbytes(10000))
    _write(lib / "exact", rnd.randbytes(8192))
    _write(lib / "notail", rnd.randbytes(4096 + 4090))
    _write(lib / "two", rnd.randbytes(2 << 20))
    _write(lib / "deep" / "er" / "est" / "leaf", b"leaf\n" * 300)
    _write(root / "usr" / "bin" / "suid", b"#!/bin/sh\n", 0o4755)
    _write(root / "usr" / "bin" / "secret", b"s3cret\n", 0o600)
    os.symlink("small", lib / "rel")
    os.symlink("/usr/bin/x", root / "usr" / "bin" / "abs")
    os.symlink("../lib/deep/er", root / "usr" / "bin" / "updir")
    _write(lib / "h1", b"hardlinked\n" * 500)
    os.link(lib / "h1", lib / "h2")
    os.mkfifo(lib / "fifo")
    os.mknod(lib / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(lib / "sock"))
    sock.close()
    for name in (b"with space", b"new\nline", b"bad\xffname"):
        _write(Path(os.fsdecode(bytes(lib) + b"/" + name)), name)
    many = root / "opt" / "app" / "many"
    many.mkdir()
    for i in range(400):
        (many / f"entry-with-a-longish-name-{i:04d}").write_bytes(b"x" * (i % 7))
    own = lib / "owned"
    _write(own, b"owned\n")
    os.lchown(own, 1234, 5678)
    big_owner = lib / "bigowner"
    _write(big_owner, b"big uid\n", 0o640)
    os.lchown(big_owner, 100000, 100001)
    os.lchown(root / "usr" / "bin" / "abs", 1234, 5678)
    os.setxattr(lib / "big", "user.foo", b"bar")
    os.setxattr(lib / "two", "security.capability", CAP_NET_RAW_EP)
    os.setxattr(root / "opt" / "app", "trusted.bar", b"\x00\x01binary")
    os.setxattr(root / "opt" / "app", "user.empty", b"")
    return root


def snapshot(root: Path, *, xattrs: bool = True) -> dict[bytes, dict]:
    """Everything a writer must keep, per relative path (lstat only, no symlink followed)."""
    out: dict[bytes, dict] = {}
    base = os.fsencode(root)
    for dirpath, dirnames, filenames in os.walk(base):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, base)
            st = os.lstat(full)
            rec: dict = {
                "type": stat.S_IFMT(st.st_mode),
                "mode": stat.S_IMODE(st.st_mode),
                "uid": st.st_uid,
                "gid": st.st_gid,
                "mtime": int(st.st_mtime),
            }
            if stat.S_ISREG(st.st_mode):
                rec["size"] = st.st_size
                rec["sha"] = hashlib.sha256(Path(os.fsdecode(full)).read_bytes()).hexdigest()
            elif stat.S_ISLNK(st.st_mode):
                rec["target"] = os.readlink(full)
            elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                rec["rdev"] = st.st_rdev
            if xattrs:
                rec["xattrs"] = {
                    os.fsencode(n): os.getxattr(full, n, follow_symlinks=False)
                    for n in os.listxattr(full, follow_symlinks=False)
                }
            out[rel] = rec
    return out


def hardlink_groups(root: Path) -> list[set[bytes]]:
    """Sets of relative paths sharing one inode."""
    groups: dict[tuple[int, int], set[bytes]] = {}
    base = os.fsencode(root)
    for dirpath, _dirs, files in os.walk(base):
        for name in files:
            full = os.path.join(dirpath, name)
            st = os.lstat(full)
            if stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
                groups.setdefault((st.st_dev, st.st_ino), set()).add(os.path.relpath(full, base))
    return [g for g in groups.values() if len(g) > 1]


def erofs_tree(img: Path, offset: int = 0) -> tuple[dict[bytes, dict], dict[bytes, int]]:
    """What our EROFS reader finds, in :func:`snapshot` form, plus the nid of every path."""
    got: dict[bytes, dict] = {}
    inos: dict[bytes, int] = {}
    with open(img, "rb") as f:
        for ino in erofs.read_tree(f, offset):
            if ino.path == b"":
                continue
            rec: dict = {
                "type": stat.S_IFMT(ino.mode),
                "mode": stat.S_IMODE(ino.mode),
                "uid": ino.uid,
                "gid": ino.gid,
                "mtime": ino.mtime,
                "xattrs": ino.xattrs,
            }
            if stat.S_ISREG(ino.mode):
                rec["size"] = ino.size
                rec["sha"] = hashlib.sha256(erofs.read_file(f, ino, offset)).hexdigest()
            elif stat.S_ISLNK(ino.mode):
                rec["target"] = ino.target
            elif stat.S_ISCHR(ino.mode) or stat.S_ISBLK(ino.mode):
                rec["rdev"] = ino.rdev
            got[ino.path] = rec
            inos[ino.path] = ino.ino
    return got, inos


def expected_snapshot(tree: Path, epoch: int) -> dict[bytes, dict]:
    """:func:`snapshot` of ``tree`` as an image written with every timestamp set to ``epoch``."""
    snap = snapshot(tree)
    for rec in snap.values():
        rec["mtime"] = epoch
    return snap
