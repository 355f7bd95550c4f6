"""What a flattened image's files really are, where the disk could not say it.

An image flattened without root (see :mod:`.layers`) cannot own files as another user, create
device nodes, set ``trusted.*``/``security.*`` xattrs or leave a folder unreadable to itself.
The truth for those entries is kept in a sidecar file beside the tree, ``sysextant-meta.json``
next to ``rootfs/``, and everything that reads metadata from an OS tree (the scan's mode column,
:func:`.fsentry.entry_from_lstat`, the cpio writer) asks :func:`meta_for` first, so outputs
equal what a root extraction gives.

The rule: for an entry listed in the sidecar, its mode (file type included), uid, gid, device
number and the extra xattrs come from the sidecar; for any other entry the disk is right, except
ownership when ``owners_on_disk`` is false, which is then 0:0. A device node that could not be
created is an empty regular file on disk with mode 0600 (its newc and size figures are those of
a device: a header and no data).
"""

from __future__ import annotations

import json
import os
import stat
import threading
import time
from dataclasses import dataclass, field

SIDECAR = "sysextant-meta.json"
ROOT_NAME = "rootfs"
VERSION = 1


@dataclass(slots=True)
class Truth:
    """An entry's real metadata (the sidecar's record)."""

    mode: int
    uid: int = 0
    gid: int = 0
    rdev: int = 0
    xattrs: dict[bytes, bytes] = field(default_factory=dict)  # set in the image, missing on disk


@dataclass
class TreeMeta:
    """The sidecar of one flattened tree."""

    owners_on_disk: bool
    records: dict[bytes, Truth] = field(default_factory=dict)

    def owner(self, rel: bytes, st: os.stat_result) -> tuple[int, int]:
        rec = self.records.get(rel)
        if rec is not None:
            return rec.uid, rec.gid
        return (st.st_uid, st.st_gid) if self.owners_on_disk else (0, 0)

    def to_json(self) -> dict:
        return {"version": VERSION, "owners_on_disk": self.owners_on_disk,
                "records": {os.fsdecode(k): [r.mode, r.uid, r.gid, r.rdev,
                                             {os.fsdecode(n): v.hex() for n, v in sorted(r.xattrs.items())}]
                            for k, r in sorted(self.records.items())}}

    @classmethod
    def from_json(cls, data: dict) -> TreeMeta:
        if data.get("version") != VERSION:
            raise ValueError(f"sidecar version {data.get('version')!r}")
        records = {}
        for k, (mode, uid, gid, rdev, xs) in data["records"].items():
            records[os.fsencode(k)] = Truth(int(mode), int(uid), int(gid), int(rdev),
                                            {os.fsencode(n): bytes.fromhex(v) for n, v in xs.items()})
        return cls(bool(data["owners_on_disk"]), records)


def sidecar_path(root: bytes | str) -> bytes:
    broot = os.path.normpath(os.fsencode(root))
    return os.path.join(os.path.dirname(broot), SIDECAR.encode())


_CACHE: dict[bytes, tuple[tuple[int, int, int] | None, TreeMeta | None, float]] = {}
_LOCK = threading.Lock()


def meta_for(root: bytes | str) -> TreeMeta | None:
    """The sidecar of the tree at ``root`` when ``root`` is a flattened image's ``rootfs`` folder,
    else None (one stat for an ordinary tree; loaded once per file version)."""
    broot = os.path.normpath(os.fsencode(root))
    if os.path.basename(broot) != ROOT_NAME.encode():
        return None
    now = time.monotonic()
    with _LOCK:
        hit = _CACHE.get(broot)
        if hit is not None and now - hit[2] < 1.0:  # writers ask per entry: look again once a second
            return hit[1]
    path = sidecar_path(broot)
    try:
        st = os.stat(path)
    except OSError:
        with _LOCK:
            _CACHE[broot] = (None, None, now)
        return None
    key = (st.st_ino, st.st_size, st.st_mtime_ns)
    with _LOCK:
        if hit is not None and hit[0] == key:
            _CACHE[broot] = (key, hit[1], now)
            return hit[1]
    try:
        with open(path, "rb") as fh:
            meta = TreeMeta.from_json(json.loads(fh.read()))
    except (OSError, ValueError, KeyError, TypeError):
        meta = None
    with _LOCK:
        _CACHE[broot] = (key, meta, now)
    return meta


def apply_to_index(index) -> None:
    """Put the sidecar's modes into a finished scan of a flattened tree (devices that are empty
    files on disk, folders and files whose real mode this user could not keep)."""
    meta = meta_for(index.root)
    if meta is None or not meta.records:
        return
    for rel, rec in meta.records.items():
        i = index.lookup(rel)
        if i is None or i == 0 or index.mode[i] == rec.mode:
            continue
        was_special = not (stat.S_ISREG(index.mode[i]) or stat.S_ISDIR(index.mode[i]) or stat.S_ISLNK(index.mode[i]))
        if stat.S_IFMT(index.mode[i]) != stat.S_IFMT(rec.mode) and not stat.S_ISREG(index.mode[i]):
            continue  # only a placeholder file stands for another type
        index.mode[i] = rec.mode
        if not (stat.S_ISREG(rec.mode) or stat.S_ISDIR(rec.mode) or stat.S_ISLNK(rec.mode)) and not was_special:
            index.special.append(i)


def entry_truth(root: bytes, rel: bytes, st: os.stat_result) -> tuple[int, int, int, int, dict[bytes, bytes]] | None:
    """(mode, uid, gid, rdev, extra xattrs) of ``root/rel`` when the sidecar corrects the disk,
    else None."""
    meta = meta_for(root)
    if meta is None:
        return None
    rec = meta.records.get(rel)
    if rec is not None:
        return rec.mode, rec.uid, rec.gid, rec.rdev, rec.xattrs
    if meta.owners_on_disk:
        return None
    rdev = st.st_rdev if (stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)) else 0
    return st.st_mode, 0, 0, rdev, {}
