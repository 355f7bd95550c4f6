"""What a tree's package database says: its packages and the paths each one installed.

:func:`.find.read_database` finds the database in a tree and reads it with the reader of its
kind (:mod:`.dpkg`, :mod:`.apk`, :mod:`.rpm`); :mod:`.owners` maps the paths onto a scanned tree.
Everything is read offline from the tree, never from this machine, and nothing is written:
a database sysextant cannot read (rpm's Berkeley DB or ndb) is named, not guessed at.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from ..errors import UserError
from ..tree.fsentry import resolve_in_tree

#: the most a database file may hold before it is refused (a real dpkg status is a few MiB, a
#: big rpmdb.sqlite some hundred)
MAX_DB_BYTES = 1 << 30


@dataclass
class Package:
    """One installed package. ``files`` are absolute paths as the database lists them (folders
    included where the format lists them); ``dirs`` those the database says are folders."""

    name: str
    version: str = ""
    arch: str = ""
    section: str = ""  # dpkg Section, rpm Group; empty where the format has none (apk)
    source: str = ""  # dpkg Source, rpm source package, apk origin
    installed_bytes: int = 0  # what the database says it installs (dpkg: Installed-Size KiB * 1024)
    files: list[str] = field(default_factory=list)
    dirs: set[str] = field(default_factory=set)
    #: db path -> where the file really is (dpkg diversions by another package)
    moved: dict[str, str] = field(default_factory=dict)


@dataclass
class PackageDb:
    """The packages of one tree. ``kind`` is ``dpkg``, ``apk`` or ``rpm``; ``path`` the database
    file or folder relative to the tree, for messages; ``problems`` what could not be read."""

    kind: str
    path: str
    packages: dict[str, Package] = field(default_factory=dict)  # key -> package, in database order
    problems: list[str] = field(default_factory=list)

    def find(self, name: str) -> list[Package]:
        """The packages ``name`` means: the key itself, or every architecture of a bare name."""
        if name in self.packages:
            return [self.packages[name]]
        return [p for p in self.packages.values() if p.name == name]

    def describe(self) -> str:
        return f"{self.kind} database {self.path} ({len(self.packages):,} packages)"


class UnsupportedDatabase(UserError):
    """A database format sysextant does not read (named, with what to do)."""


def tree_file(root: bytes, rel: str) -> str | None:
    """Host path of tree path ``rel`` resolved through the tree's own symlinks, or None."""
    try:
        return os.fsdecode(os.path.join(root, resolve_in_tree(root, os.fsencode(rel))))
    except OSError:
        return None


def read_text(path: str, what: str) -> str:
    """A database text file (UTF-8, undecodable bytes replaced), bounded in size."""
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_DB_BYTES + 1)
    except OSError as exc:
        raise UserError(f"{path}: cannot read the {what} ({exc.strerror})") from None
    if len(data) > MAX_DB_BYTES:
        raise UserError(f"{path}: the {what} is over {MAX_DB_BYTES >> 20} MiB; not a package database")
    return data.decode("utf-8", "replace")


def unique_keys(pkgs: list[Package]) -> dict[str, Package]:
    """Key packages by name, or ``name:arch`` where several architectures share a name."""
    count: dict[str, int] = {}
    for p in pkgs:
        count[p.name] = count.get(p.name, 0) + 1
    out: dict[str, Package] = {}
    for p in pkgs:
        key = p.name if count[p.name] == 1 or not p.arch else f"{p.name}:{p.arch}"
        out.setdefault(key, p)
    return out
