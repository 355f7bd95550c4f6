"""Alpine's apk database: ``lib/apk/db/installed``.

Source: apk-tools ``src/database.c`` (``apk_db_index_read``/``apk_db_write_fdb``) and the
Alpine wiki's "Apk spec": one paragraph per package, one ``X:value`` line per field; ``P`` name,
``V`` version, ``A`` architecture, ``I`` installed size, ``o`` origin (source package), ``F`` a
folder (relative to the root), each ``R`` a file in the last ``F`` folder.
"""

from __future__ import annotations

import os

from .db import Package, PackageDb, read_text, tree_file, unique_keys

DB = "lib/apk/db/installed"


def read(root: bytes) -> PackageDb | None:
    """apk's database of the tree at ``root``, or None when the tree has none."""
    path = tree_file(root, DB)
    if path is None or not os.path.isfile(path):
        return None
    db = PackageDb("apk", DB)
    pkgs: list[Package] = []
    p: Package | None = None
    folder = ""
    for line in read_text(path, "apk database").splitlines():
        if not line.strip():
            p, folder = None, ""
            continue
        key, sep, value = line.partition(":")
        if not sep or len(key) != 1:
            continue
        if key == "P":
            p = Package(value)
            pkgs.append(p)
            folder = ""
        elif p is None:
            continue
        elif key == "V":
            p.version = value
        elif key == "A":
            p.arch = value
        elif key == "o":
            p.source = value
        elif key == "I" and value.isdigit():
            p.installed_bytes = int(value)
        elif key == "F":
            folder = value.strip("/")
            path_ = "/" + folder
            p.files.append(path_)
            p.dirs.add(path_)
        elif key == "R":
            p.files.append(f"/{folder}/{value}" if folder else f"/{value}")
    for q in pkgs:
        q.source = q.source or q.name
    db.packages = unique_keys(pkgs)
    return db
