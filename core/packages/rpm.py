"""rpm's database: ``rpmdb.sqlite`` (rpm >= 4.16) holding one header blob per package.

Sources: rpm's ``lib/backend/sqlite.c`` (table ``Packages (hnum INTEGER PRIMARY KEY, blob
BLOB)``), ``lib/header.c`` and the RPM file format (rpm.org/devel_doc/file_format.html): a
header blob is ``il`` and ``dl`` (32-bit big-endian: index entries and data bytes), ``il``
16-byte entries ``tag type offset count`` (big-endian), then the data store. Types: CHAR 1,
INT8 2, INT16 3, INT32 4, INT64 5, STRING 6, BIN 7, STRING_ARRAY 8, I18NSTRING 9; integers are
aligned to their size. File names are ``DIRNAMES[DIRINDEXES[i]] + BASENAMES[i]`` (or the old
``OLDFILENAMES``). The database is opened read-only (``immutable``) or, when a write-ahead log
sits next to it, copied first: nothing in the tree is ever written.

The Berkeley DB (``Packages``, rpm < 4.16) and ``ndb`` (``Packages.db``, SUSE) backends are
named as unsupported; ``rpmdb --rebuilddb --define '_db_backend sqlite'`` converts them.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import struct
import tempfile

from ..errors import UserError
from .db import Package, PackageDb, UnsupportedDatabase, tree_file, unique_keys

FOLDERS = ("usr/lib/sysimage/rpm", "var/lib/rpm")
NAME, VERSION, RELEASE, EPOCH, SIZE, GROUP, ARCH, SOURCERPM = 1000, 1001, 1002, 1003, 1009, 1016, 1022, 1044
OLDFILENAMES, FILEMODES, DIRINDEXES, BASENAMES, DIRNAMES, LONGSIZE = 1027, 1030, 1116, 1117, 1118, 5009
CHAR, INT8, INT16, INT32, INT64, STRING, BIN, STRING_ARRAY, I18NSTRING = 1, 2, 3, 4, 5, 6, 7, 8, 9
_SIZES = {CHAR: 1, INT8: 1, INT16: 2, INT32: 4, INT64: 8}
_FORMATS = {INT8: "B", CHAR: "B", INT16: "H", INT32: "I", INT64: "Q"}
#: rpm's own sanity limits (lib/header.c: hdrchkTags, hdrchkData)
MAX_TAGS = 0xFFFF
MAX_DATA = 256 * 1024 * 1024


class HeaderError(ValueError):
    """A header blob that does not follow the format."""


def parse_header(blob: bytes, wanted: set[int] | None = None) -> dict[int, object]:
    """The tags of one header blob: str for STRING, list[str] for the arrays of strings,
    list[int] for integers, bytes for BIN. Raises :class:`HeaderError` on a malformed blob."""
    if blob[:3] == b"\x8e\xad\xe8":  # a header with its magic, as in a .rpm file
        blob = blob[8:]
    if len(blob) < 8:
        raise HeaderError("shorter than its 8-byte intro")
    il, dl = struct.unpack_from(">II", blob)
    if il > MAX_TAGS or dl > MAX_DATA or 8 + 16 * il + dl > len(blob):
        raise HeaderError(f"{il} tags and {dl} data bytes do not fit its {len(blob)} bytes")
    store = memoryview(blob)[8 + 16 * il: 8 + 16 * il + dl]
    out: dict[int, object] = {}
    for n in range(il):
        tag, typ, off, count = struct.unpack_from(">IIiI", blob, 8 + 16 * n)
        if (wanted is not None and tag not in wanted) or tag < 1000:  # region tags (61-63) aside
            continue
        if off < 0 or off > dl:
            raise HeaderError(f"tag {tag}: offset {off} outside the data")
        if typ in _SIZES:
            size = _SIZES[typ]
            if off % size or off + size * count > dl:
                raise HeaderError(f"tag {tag}: {count} values at {off} overrun or misalign")
            out[tag] = list(struct.unpack_from(f">{count}{_FORMATS[typ]}", store, off))
        elif typ in (STRING, STRING_ARRAY, I18NSTRING):
            items, pos = [], off
            for _ in range(1 if typ == STRING else count):
                end = bytes(store[pos:]).find(b"\0") if pos < dl else -1
                if end < 0:
                    raise HeaderError(f"tag {tag}: a string runs past the data")
                items.append(bytes(store[pos:pos + end]).decode("utf-8", "replace"))
                pos += end + 1
            out[tag] = items[0] if typ == STRING else items
        elif typ == BIN:
            if off + count > dl:
                raise HeaderError(f"tag {tag}: {count} bytes at {off} overrun the data")
            out[tag] = bytes(store[off:off + count])
    return out


def header_blob(tags: dict[int, tuple[int, object]]) -> bytes:
    """A header blob (no magic) holding ``tags``: tag -> (type, value), in tag order, each value
    aligned as rpm aligns it. The writer half of :func:`parse_header`, for tests and fixtures."""
    index, data = [], bytearray()
    for tag in sorted(tags):
        typ, value = tags[tag]
        if typ in _SIZES:
            values = list(value) if isinstance(value, list | tuple) else [value]
            while len(data) % _SIZES[typ]:
                data.append(0)
            off = len(data)
            data += struct.pack(f">{len(values)}{_FORMATS[typ]}", *values)
            count = len(values)
        elif typ == STRING:
            off, count = len(data), 1
            data += str(value).encode() + b"\0"
        elif typ in (STRING_ARRAY, I18NSTRING):
            off, count = len(data), len(value)  # type: ignore[arg-type]
            for s in value:  # type: ignore[union-attr]
                data += s.encode() + b"\0"
        else:
            off, count = len(data), len(value)  # type: ignore[arg-type]
            data += value  # type: ignore[operator]
        index.append(struct.pack(">IIiI", tag, typ, off, count))
    return struct.pack(">II", len(index), len(data)) + b"".join(index) + bytes(data)


def package_from_header(h: dict[int, object]) -> Package:
    """The package a parsed header describes."""
    def text(tag: int) -> str:
        v = h.get(tag, "")
        return v[0] if isinstance(v, list) and v else v if isinstance(v, str) else ""

    version = text(VERSION) + (f"-{text(RELEASE)}" if text(RELEASE) else "")
    epoch = h.get(EPOCH)
    if isinstance(epoch, list) and epoch:
        version = f"{epoch[0]}:{version}"
    size = h.get(LONGSIZE) or h.get(SIZE) or [0]
    source = text(SOURCERPM)
    for suffix in (".src.rpm", ".nosrc.rpm"):
        source = source.removesuffix(suffix)
    source = source.rsplit("-", 2)[0] if source.count("-") >= 2 else source
    p = Package(text(NAME), version, text(ARCH), text(GROUP), source or text(NAME),
                int(size[0]) if isinstance(size, list) else 0)
    base, dirs, idx = h.get(BASENAMES), h.get(DIRNAMES), h.get(DIRINDEXES)
    if isinstance(base, list) and isinstance(dirs, list) and isinstance(idx, list):
        if len(idx) != len(base) or any(not 0 <= k < len(dirs) for k in idx):
            raise HeaderError(f"{p.name}: DIRINDEXES do not match BASENAMES and DIRNAMES")
        p.files = [dirs[k] + b for k, b in zip(idx, base, strict=True)]
    elif isinstance(h.get(OLDFILENAMES), list):
        p.files = list(h[OLDFILENAMES])  # type: ignore[arg-type]
    modes = h.get(FILEMODES)
    if isinstance(modes, list) and len(modes) == len(p.files):
        p.dirs = {f for f, m in zip(p.files, modes, strict=True) if m & 0o170000 == 0o040000}
    return p


_WANTED = {NAME, VERSION, RELEASE, EPOCH, SIZE, GROUP, ARCH, SOURCERPM, OLDFILENAMES, FILEMODES, DIRINDEXES,
           BASENAMES, DIRNAMES, LONGSIZE}


def read(root: bytes) -> PackageDb | None:
    """rpm's database of the tree at ``root``, or None when the tree has none."""
    for folder in FOLDERS:
        sqlite_path = tree_file(root, f"{folder}/rpmdb.sqlite")
        if sqlite_path is not None and os.path.isfile(sqlite_path):
            return _read_sqlite(sqlite_path, f"{folder}/rpmdb.sqlite")
    for folder in FOLDERS:
        for name, kind in (("Packages", "Berkeley DB"), ("Packages.db", "ndb")):
            path = tree_file(root, f"{folder}/{name}")
            if path is not None and os.path.isfile(path) and os.path.getsize(path) > 0:
                raise UnsupportedDatabase(
                    f"{folder}/{name} is an rpm {kind} database, which sysextant does not read; convert it "
                    "to rpm's sqlite database in the image (rpmdb --rebuilddb --define '_db_backend sqlite', "
                    "rpm >= 4.16) or plan without packages")
    return None


def _read_sqlite(path: str, rel: str) -> PackageDb:
    db = PackageDb("rpm", rel)
    wal = path + "-wal"
    tmp = None
    try:
        if os.path.isfile(wal) and os.path.getsize(wal) > 0:  # committed rows may sit in the log
            tmp = tempfile.mkdtemp(prefix="sysextant-rpmdb-")
            shutil.copyfile(path, os.path.join(tmp, "rpmdb.sqlite"))
            shutil.copyfile(wal, os.path.join(tmp, "rpmdb.sqlite-wal"))
            uri = f"file:{os.path.join(tmp, 'rpmdb.sqlite')}"
        else:
            uri = f"file:{path}?mode=ro&immutable=1"
        con = sqlite3.connect(uri, uri=True)
        try:
            rows = con.execute("SELECT hnum, blob FROM Packages ORDER BY hnum").fetchall()
        finally:
            con.close()
    except (sqlite3.Error, OSError) as exc:
        raise UserError(f"{rel}: cannot read the rpm database ({exc})") from None
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    pkgs = []
    for hnum, blob in rows:
        try:
            p = package_from_header(parse_header(bytes(blob), _WANTED))
        except (HeaderError, struct.error) as exc:
            db.problems.append(f"{rel}: package header {hnum} is malformed ({exc}); its files are unknown")
            continue
        if p.name and p.name != "gpg-pubkey":  # imported keys are headers with no files
            pkgs.append(p)
    db.packages = unique_keys(pkgs)
    return db
