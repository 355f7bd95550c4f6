"""dpkg's database: ``var/lib/dpkg/status``, ``info/PACKAGE.list`` and ``diversions``.

Sources: dpkg's ``lib/dpkg/parse.c`` and deb-control(5) (the status file is RFC 822-style
paragraphs; ``Status: want flag state``), ``lib/dpkg/db-fsys-files.c`` (one ``.list`` file per
package, one absolute path a line, folders included; a ``Multi-Arch: same`` package's file is
``NAME:ARCH.list``), ``lib/dpkg/db-fsys-divert.c`` (``diversions``: three lines per diversion:
the path, where it was diverted to, the package that diverted it or ``:`` for a local one).
``dpkg-query -L`` and ``dpkg -S`` read the same files and are the oracles in the tests.
"""

from __future__ import annotations

import os

from .db import Package, PackageDb, read_text, tree_file, unique_keys

DB = "var/lib/dpkg"
#: package states whose files are on disk (dpkg-query(1): not-installed and config-files have
#: none but conffiles)
WITH_FILES = ("installed", "unpacked", "half-configured", "half-installed", "triggers-awaited", "triggers-pending")


def paragraphs(text: str):
    """The status file's paragraphs as {field: value} (continuation lines joined with newlines)."""
    fields: dict[str, str] = {}
    last = None
    for line in text.splitlines():
        if not line.strip():
            if fields:
                yield fields
            fields, last = {}, None
        elif line[0] in " \t":
            if last is not None:
                fields[last] += "\n" + line.strip()
        else:
            key, sep, value = line.partition(":")
            if sep:
                last = key.strip()
                fields[last] = value.strip()
    if fields:
        yield fields


def read(root: bytes) -> PackageDb | None:
    """dpkg's database of the tree at ``root``, or None when the tree has none."""
    status = tree_file(root, f"{DB}/status")
    if status is None or not os.path.isfile(status):
        return None
    info = tree_file(root, f"{DB}/info")
    db = PackageDb("dpkg", f"{DB}/status")
    pkgs: list[Package] = []
    for f in paragraphs(read_text(status, "dpkg status file")):
        name = f.get("Package")
        state = f.get("Status", "").split()
        if not name or len(state) != 3 or state[2] not in WITH_FILES:
            continue
        arch = f.get("Architecture", "")
        size = f.get("Installed-Size", "0")
        p = Package(name, f.get("Version", ""), arch, f.get("Section", ""), f.get("Source", "").split(" ")[0] or name,
                    int(size) * 1024 if size.isdigit() else 0)
        listing = None
        if info is not None:
            for cand in (f"{name}:{arch}.list", f"{name}.list"):
                path = os.path.join(info, cand)
                if os.path.isfile(path):
                    listing = path
                    break
        if listing is None:
            db.problems.append(f"{DB}/info/{name}.list is missing: the files of {name} are unknown")
        else:
            p.files = [line for line in read_text(listing, "dpkg file list").splitlines()
                       if line.startswith("/") and line != "/."]
            # the list does not say which paths are folders: those holding another listed path are
            # (``/lib`` is one to dpkg even where the tree keeps a ``lib -> usr/lib`` link there)
            listed = set(p.files)
            p.dirs = {d for f in p.files if (d := f.rpartition("/")[0]) in listed}
        pkgs.append(p)
    db.packages = unique_keys(pkgs)
    _diversions(root, db)
    return db


def _diversions(root: bytes, db: PackageDb) -> None:
    """A path diverted by another package (or locally) lives at its divert-to path for every
    package that lists it but the diverting one."""
    path = tree_file(root, f"{DB}/diversions")
    if path is None or not os.path.isfile(path):
        return
    lines = read_text(path, "dpkg diversions file").splitlines()
    rules: dict[str, tuple[str, str]] = {}
    for k in range(0, len(lines) - 2, 3):
        rules[lines[k]] = (lines[k + 1], lines[k + 2])
    if not rules:
        return
    for p in db.packages.values():
        for f in p.files:
            rule = rules.get(f)
            if rule is not None and rule[1] != p.name:
                p.moved[f] = rule[0]
