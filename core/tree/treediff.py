"""What a derived OS tree adds, changes and deletes over its base, compared by content.

Used for an extension made of what a derived container image adds over its base (kairos#2631,
kairos#2117): the two images are flattened (:mod:`.oci`) and compared entry by entry, not layer
by layer, since a Dockerfile may rewrite a file in any layer. An entry is changed when its type,
mode, owner, device number, xattrs, symlink target or bytes differ (mtimes do not count: a
rebuilt layer rewrites them all). Metadata comes through :func:`.fsentry.entry_from_lstat`, so
a tree flattened without root compares by its sidecar's truth.

Classified against the hierarchies the OS merges (``covers``): what a system extension can
carry (added or changed under them), what it cannot (anything outside them, such as ``/etc``:
warnings), and deletions (a system extension overlays, it cannot delete a file of the base:
problems under the hierarchies, warnings outside).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, field

from ..progress import Reporter
from .fsentry import entry_from_lstat, open_nofollow
from .index import TreeIndex

_CHUNK = 1 << 20


@dataclass
class Change:
    path: str
    kind: str  # added | changed | deleted
    bytes: int  # apparent bytes of the entry (a folder: all it holds)
    what: str = ""  # for a change: what differs (content, mode, owner, ...)

    def to_json(self) -> dict:
        return {"path": self.path, "kind": self.kind, "bytes": self.bytes, **({"what": self.what} if self.what else {})}


@dataclass
class TreeDiff:
    carried: list[Change] = field(default_factory=list)  # added or changed under the merged hierarchies
    outside: list[Change] = field(default_factory=list)  # added or changed elsewhere: a sysext cannot carry them
    deleted: list[Change] = field(default_factory=list)  # in the base, gone from the derived tree
    compared_bytes: int = 0

    @property
    def carried_bytes(self) -> int:
        return sum(c.bytes for c in self.carried)

    def problems(self, covers: Callable[[str], bool]) -> list[str]:
        return [f"{c.path}: deleted by the derived image; a system extension cannot delete a file of the base"
                for c in self.deleted if covers(c.path)]

    def warnings(self, covers: Callable[[str], bool]) -> list[str]:
        out = [f"{c.path}: {c.kind} outside the merged hierarchies; a system extension cannot carry it"
               for c in self.outside]
        out += [f"{c.path}: deleted by the derived image outside the merged hierarchies; ignored"
                for c in self.deleted if not covers(c.path)]
        return out


def _same_content(root_a: bytes, rel_a: bytes, root_b: bytes, rel_b: bytes, size: int) -> bool:
    fa = open_nofollow(root_a, rel_a)
    try:
        fb = open_nofollow(root_b, rel_b)
        try:
            left = size
            while left > 0:
                a = os.read(fa, min(_CHUNK, left))
                b = os.read(fb, min(_CHUNK, left))
                if a != b:
                    return False
                if not a:
                    return True
                left -= len(a)
            return os.read(fa, 1) == os.read(fb, 1)
        finally:
            os.close(fb)
    finally:
        os.close(fa)


def _differs(base: TreeIndex, bi: int, derived: TreeIndex, di: int, rel: bytes, stats: TreeDiff) -> str:
    ea = entry_from_lstat(base.root, rel, os.lstat(os.path.join(base.root, rel)))
    eb = entry_from_lstat(derived.root, rel, os.lstat(os.path.join(derived.root, rel)))
    if stat.S_IFMT(ea.mode) != stat.S_IFMT(eb.mode):
        return "type"
    what = []
    if ea.mode != eb.mode:
        what.append("mode")
    if (ea.uid, ea.gid) != (eb.uid, eb.gid):
        what.append("owner")
    if ea.rdev != eb.rdev:
        what.append("device")
    if ea.xattrs != eb.xattrs:
        what.append("xattrs")
    if ea.is_symlink and ea.target != eb.target:
        what.append("target")
    if ea.is_reg:
        if ea.size != eb.size:
            what.append("content")
        else:
            stats.compared_bytes += ea.size
            if not _same_content(base.root, rel, derived.root, rel, ea.size):
                what.append("content")
    return ",".join(what)


def _bytes(index: TreeIndex, i: int) -> int:
    """What the entry holds: a file's or link's bytes, a folder's files and links (no folder sizes)."""
    if not index.is_dir(i):
        return index.size[i]
    return sum(index.size[k] for k in index.subtree(i) if not index.is_dir(k))


def diff_trees(base: TreeIndex, derived: TreeIndex, covers: Callable[[str], bool], *,
               above: Callable[[str], bool] = lambda rel: False, reporter: Reporter | None = None) -> TreeDiff:
    """Compare two scanned trees; ``covers(rel)`` says whether the OS merges ``rel``, ``above(rel)``
    whether folder ``rel`` lies above a merged hierarchy (``usr`` above ``/usr/lib``: not a
    change a sysext fails to carry)."""
    out = TreeDiff()
    n = len(derived)
    for di in range(1, n):
        if reporter is not None and not di & 1023:
            reporter("diff: compare", di, n, "files")
        rel = derived.path(di)
        shown = os.fsdecode(rel)
        bi = base.lookup(rel)
        if bi is None:
            parent = derived.parent[di]
            if parent > 0 and base.lookup(derived.path(parent)) is None:
                continue  # inside an added folder: the folder is listed with its bytes
            ch = Change(shown, "added", _bytes(derived, di))
        else:
            what = _differs(base, bi, derived, di, rel, out)
            if not what:
                continue
            ch = Change(shown, "changed", _bytes(derived, di) if what == "type" or not derived.is_dir(di) else 0, what)
        if covers(shown):
            out.carried.append(ch)
        elif not (derived.is_dir(di) and above(shown) and ch.kind == "changed"):
            out.outside.append(ch)
    for bi in range(1, len(base)):
        rel = base.path(bi)
        if derived.lookup(rel) is None:
            parent = base.parent[bi]
            if parent > 0 and derived.lookup(base.path(parent)) is None:
                continue
            out.deleted.append(Change(os.fsdecode(rel), "deleted", _bytes(base, bi)))
    return out
