"""The quick sample's content kinds and per-kind columns: the native versions (core/tree/_listdir.c)
give what their pure-Python twins give, on this machine's real /usr and on a tree made to hit
every rule (a firmware folder, ``.so.N`` names, executables without a suffix, empty files,
hardlinks, names without a dot, a suffix that is a whole name)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sysextant.core.sizing import quick
from sysextant.core.sizing.quick import KINDS, entry_kinds, kind_columns
from sysextant.core.tree.index import scan
from sysextant.core.tree.selection import IntervalSet

pytestmark = pytest.mark.skipif(quick._classify is None, reason="the native part is not built")

COMPRESSED, FIRMWARE, ELF, TEXT, OTHER = (KINDS.index(k) for k in ("compressed", "firmware", "elf", "text", "other"))


def rule_tree(root: Path) -> dict[str, int]:
    """A tree with one file per rule; returns each file's expected kind."""
    want: dict[str, int] = {}

    def put(rel: str, data: bytes, kind: int, mode: int = 0o644) -> None:
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        p.chmod(mode)
        want[rel] = kind

    put("usr/lib/firmware/amd/blob.bin", b"x" * 100, FIRMWARE)
    put("usr/lib/firmware/amd/fw.xz", b"x" * 100, COMPRESSED)  # compressed beats firmware
    put("usr/lib/firmware/readme.txt", b"x", FIRMWARE)  # firmware beats text
    put("usr/lib/libz.so.1", b"\x7fELF", ELF)
    put("usr/lib/libc.so.6", b"\x7fELF", ELF)
    put("usr/lib/mod.ko", b"\x7fELF", ELF)
    put("usr/bin/tool", b"\x7fELF", ELF, 0o755)  # executable, no suffix
    put("usr/bin/script.py", b"print()", TEXT, 0o755)  # text beats the executable bit
    put("usr/share/doc/changelog.gz", b"\x1f\x8b", COMPRESSED)
    put("usr/share/doc/gz", b"a name that is a suffix", COMPRESSED)  # rpartition: the whole name
    put("usr/share/doc/README", b"no dot", OTHER)
    put("usr/share/doc/notes.", b"trailing dot", OTHER)
    put("usr/share/a.b.conf", b"k=v", TEXT)
    put("usr/share/empty.txt", b"", KINDS.index("meta"))
    os.link(root / "usr/lib/libc.so.6", root / "usr/lib/libc-hard.so.6")
    del want["usr/lib/libc.so.6"]  # one of the two names carries the bytes: checked apart
    return want


def both(index, base: IntervalSet) -> None:
    kinds = entry_kinds(index)
    assert kinds == quick._entry_kinds_py(index)
    assert kind_columns(kinds, index.cpio, base, len(KINDS)) == quick._kind_columns_py(kinds, index.cpio, base,
                                                                                        len(KINDS))


def test_native_kinds_and_columns_match_python_on_every_rule(tmp_path: Path) -> None:
    want = rule_tree(tmp_path)
    index = scan(tmp_path)
    kinds = entry_kinds(index)
    got = {os.fsdecode(index.path(i)): kinds[i] for i in range(len(index)) if os.fsdecode(index.path(i)) in want}
    assert got == want
    # the scan counts a hardlinked file's bytes once: one name is ELF, the other META
    pair = sorted(kinds[index.lookup(p)] for p in ("usr/lib/libc.so.6", "usr/lib/libc-hard.so.6"))
    assert pair == [KINDS.index("meta"), ELF]
    both(index, IntervalSet([(0, len(index))]))
    both(index, IntervalSet([(2, len(index) // 2), (len(index) // 2 + 1, len(index))]))


def test_native_kinds_and_columns_match_python_on_the_real_usr() -> None:
    index = scan(b"/usr")
    n = len(index)
    both(index, IntervalSet([(0, n)]))
    both(index, IntervalSet([(0, n // 3), (n // 2, n - 7)]))
    kinds = entry_kinds(index)
    assert all(kinds.count(k) for k in (COMPRESSED, ELF, TEXT, OTHER))  # a real system has them all


def test_columns_refuse_what_they_cannot_read(tmp_path: Path) -> None:
    rule_tree(tmp_path)
    index = scan(tmp_path)
    kinds = entry_kinds(index)
    with pytest.raises(IndexError):
        quick._columns(kinds, index.cpio, IntervalSet([(0, len(index) + 5)]), len(KINDS))
    with pytest.raises(TypeError):
        quick._columns(kinds, index.parent, IntervalSet([(0, 2)]), len(KINDS))  # int32, not int64


def copy_tree(root: Path) -> dict[str, str]:
    """Package docs with copies; returns each expected copy's path -> its twin's path."""
    blob, big = os.urandom(5000), os.urandom(30_000)

    def put(rel: str, data: bytes) -> None:
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)

    put("usr/share/doc/liba-dev/copyright", blob)
    put("usr/share/doc/liba1/copyright", blob)  # same name and size, 5 KB on: a copy
    put("usr/share/doc/liba1/notes", blob)  # same size, another name, small: not one
    put("usr/share/doc/liba1/tiny", b"x" * 100)
    put("usr/share/doc/liba2/tiny", b"x" * 100)  # below COPY_MIN: not one
    put("usr/share/doc/liba2/copyright", bytes(reversed(blob)))  # same name and size: one by its metadata
    put("usr/share/doc/liba2/fw.bin", big)
    put("usr/share/doc/libb/fw-other.bin", big)  # same size, another name: not one
    put("usr/share/doc/libb/fw.bin", big)  # same name and size: one
    put("usr/share/doc/libc/filler", os.urandom(150_000))
    put("usr/share/doc/libd/copyright", blob)  # its last twin lies more than the window back
    return {"usr/share/doc/liba1/copyright": "usr/share/doc/liba-dev/copyright",
            "usr/share/doc/liba2/copyright": "usr/share/doc/liba1/copyright",
            "usr/share/doc/libb/fw.bin": "usr/share/doc/liba2/fw.bin"}


def test_copies_by_size_and_name_within_the_window_native_and_python(tmp_path: Path) -> None:
    want = copy_tree(tmp_path)
    index = scan(tmp_path)
    base = IntervalSet([(1, len(index))])
    kinds = entry_kinds(index)
    order = quick.archive_entries(index, base)
    window = 100_000  # the filler (150 KB) puts libd/copyright out of reach
    got = quick.copies(index, base, kinds, window)
    assert got == quick._copies_py(index, order, kinds, window)
    assert {os.fsdecode(index.path(i)): os.fsdecode(index.path(t)) for i, t in got.items()} == want
    # a window that reaches: libd's copyright is a copy of liba2's (the last of that name and size)
    far = quick.copies(index, base, kinds, 1 << 20)
    assert far[index.lookup("usr/share/doc/libd/copyright")] == index.lookup("usr/share/doc/liba2/copyright")


def test_copies_native_and_python_agree_on_the_real_usr() -> None:
    index = scan(b"/usr")
    base = IntervalSet([(1, len(index))])
    kinds = entry_kinds(index)
    got = quick.copies(index, base, kinds, 8 << 20)
    assert got == quick._copies_py(index, quick.archive_entries(index, base), kinds, 8 << 20)
    assert got  # a Debian /usr holds copies (package docs, licences)
