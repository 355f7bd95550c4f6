"""Which tree entries each package owns: a package database laid over a scanned tree.

The database names paths as the packaged OS sees them (dpkg lists ``/lib/x86_64-linux-gnu/...``,
which a merged-/usr tree keeps under ``usr/lib``): each path's folders are resolved through the
tree's own symlinks (an absolute target starts at the tree's root, ``..`` never climbs above
it), its last component is not (a packaged symlink is the package's entry). Folders are shared
between packages and are not owned: a package owns its files, symlinks and special files.
"""

from __future__ import annotations

import os
import stat
import weakref
from dataclasses import dataclass, field

from ..tree.index import TreeIndex
from ..tree.selection import IntervalSet
from .db import Package, PackageDb

#: symlinks followed for one folder before giving up (the kernel's limit)
MAX_LINKS = 40


@dataclass
class PackageFiles:
    """One package's files in the tree: ``entries`` found, ``missing`` paths the tree lacks."""

    package: Package
    entries: list[int] = field(default_factory=list)  # index entries, sorted, folders left out
    missing: int = 0
    selection: IntervalSet = field(default_factory=IntervalSet)


class TreePackages:
    """A database over one tree index: entries per package, packages per entry."""

    def __init__(self, db: PackageDb, index: TreeIndex) -> None:
        self.db, self.index = db, index
        self._dirs: dict[bytes, int | None] = {b"": 0}
        self.files: dict[str, PackageFiles] = {}
        self._owner: dict[int, list[str]] = {}
        for key, pkg in db.packages.items():
            pf = PackageFiles(pkg)
            found = set()
            for path in pkg.files:
                if path in pkg.dirs:
                    continue
                k = self.resolve(pkg.moved.get(path, path))
                if k is None:
                    pf.missing += 1
                elif not stat.S_ISDIR(index.mode[k]):
                    found.add(k)
            pf.entries = sorted(found)
            pf.selection = IntervalSet((k, k + 1) for k in pf.entries)
            self.files[key] = pf
            for k in pf.entries:
                self._owner.setdefault(k, []).append(key)

    def owners(self, i: int) -> list[str]:
        """The packages that own entry ``i`` (usually one; none for a file no package installed)."""
        return self._owner.get(i, [])

    def owned(self) -> IntervalSet:
        """Every entry some package owns."""
        return IntervalSet((k, k + 1) for k in sorted(self._owner))

    def resolve(self, path: str) -> int | None:
        """The index entry of database path ``path``: folders through the tree's links, the last
        component as it is."""
        parts = [p for p in os.fsencode(path).split(b"/") if p and p != b"."]
        if not parts:
            return 0
        name = parts.pop()
        folder = self._dir(_normal(parts))
        if folder is None:
            return None
        if name == b"..":
            return self.index.parent[folder] if folder > 0 else 0
        return self.index.child(folder, name)

    def _dir(self, path: bytes, depth: int = 0) -> int | None:
        """The folder at tree path ``path`` (normalised), every symlink on the way followed."""
        if path in self._dirs:
            return self._dirs[path]
        index = self.index
        self._dirs[path] = None  # a loop of links resolves to nothing
        parent, _, name = path.rpartition(b"/")
        up = self._dir(parent, depth)
        found = None
        if up is not None and depth <= MAX_LINKS:
            c = index.child(up, name)
            if c is not None and stat.S_ISLNK(index.mode[c]):
                try:
                    target = os.readlink(os.path.join(index.root, path))
                except OSError:
                    target = None
                if target is not None:
                    base = [] if target.startswith(b"/") else [p for p in parent.split(b"/") if p]
                    found = self._dir(_normal(base + target.split(b"/")), depth + 1)
            elif c is not None and index.is_dir(c):
                found = c
        self._dirs[path] = found
        return found


def _normal(parts: list[bytes]) -> bytes:
    out: list[bytes] = []
    for p in parts:
        if not p or p == b".":
            continue
        if p == b"..":
            if out:
                out.pop()
        else:
            out.append(p)
    return b"/".join(out)


_cache: list = []  # [(weak index, db, TreePackages)]: the last one built


def tree_packages(index: TreeIndex, db: PackageDb) -> TreePackages:
    """:class:`TreePackages` of ``db`` over ``index``, the last one kept for a complete index."""
    if _cache and _cache[0][0]() is index and _cache[0][1] is db and index.complete:
        return _cache[0][2]
    result = TreePackages(db, index)
    if index.complete:
        _cache[:] = [(weakref.ref(index), db, result)]
    return result
