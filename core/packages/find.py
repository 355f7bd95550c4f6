"""Find a tree's package database: dpkg, then rpm, then apk; the first that lists packages."""

from __future__ import annotations

import os

from . import apk, dpkg, rpm
from .db import PackageDb


def read_database(root: bytes | str) -> PackageDb | None:
    """The package database of the tree at ``root``, or None when it has none. A database that
    exists but cannot be read raises :class:`UnsupportedDatabase` or :class:`UserError`."""
    broot = os.fsencode(root)
    found: list[PackageDb] = []
    for reader in (dpkg.read, rpm.read, apk.read):
        db = reader(broot)
        if db is not None:
            if db.packages:
                return db
            found.append(db)
    return found[0] if found else None
