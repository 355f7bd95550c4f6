"""The tree index against GNU cpio and du: exact newc sizes, hardlinks, symlinks, odd names."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tempfile
from array import array
from pathlib import Path

import pytest

from sysextant.core.errors import UserError
from sysextant.core.tree.index import TRAILER_BYTES, cpio_entry_bytes, scan
from sysextant.core.tree.selection import IntervalSet, Sums, match, subtree_set

CPIO = shutil.which("cpio")


def make_tree(root: Path) -> None:
    (root / "usr/lib/firmware/amd").mkdir(parents=True)
    (root / "usr/bin").mkdir(parents=True)
    (root / "etc").mkdir()
    (root / "etc/os-release").write_text("ID=test\n")
    (root / "usr/lib/firmware/amd/blob.bin").write_bytes(os.urandom(10_001))
    (root / "usr/lib/firmware/empty").write_bytes(b"")
    (root / "usr/bin/tool").write_bytes(b"x" * 4099)
    os.link(root / "usr/bin/tool", root / "usr/bin/tool-hardlink")
    os.link(root / "usr/bin/tool", root / "etc/tool-third-name")
    os.symlink("/usr/bin/tool", root / "usr/bin/abs-link")  # absolute: must not be followed
    os.symlink("../../etc/os-release", root / "usr/lib/os-release")
    os.symlink("/nonexistent/dangling", root / "usr/bin/dangling")
    os.symlink("/", root / "usr/bin/to-host-root")  # following it would scan this machine
    odd = root / "usr/share/odd"
    odd.mkdir(parents=True)
    for name in (b"space name", b"new\nline", b"latin1-\xe9\xff", b"tab\tname", b"-dash", b"*star?"):
        (odd / os.fsdecode(name)).write_bytes(name * 3)
    os.mkfifo(root / "usr/share/fifo")
    if os.geteuid() == 0:
        os.mknod(root / "usr/share/null-dev", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    long_dir = root / "usr/share" / ("d" * 200) / ("e" * 200)
    long_dir.mkdir(parents=True)
    (long_dir / ("f" * 250)).write_bytes(b"long")


def gnu_cpio_size(root: Path, index) -> int:
    names = sorted(index.path(i) for i in range(1, len(index)))
    proc = subprocess.run([CPIO, "-o", "-H", "newc", "--null", "--quiet"], input=b"\0".join(names) + b"\0",
                          cwd=root, capture_output=True, check=True)
    return len(proc.stdout)


@pytest.mark.skipif(CPIO is None, reason="GNU cpio not installed (apt-get install cpio)")
def test_cpio_bytes_match_gnu_cpio(tmp_path: Path) -> None:
    make_tree(tmp_path)
    index = scan(tmp_path)
    ours = index.counts()["cpio_bytes"]
    theirs = gnu_cpio_size(tmp_path, index)
    assert theirs == (ours + 511) // 512 * 512
    # and per subtree: GNU cpio on just usr/lib equals the index's figure for that folder
    i = index.lookup("usr/lib")
    names = sorted([b"usr/lib"] + [index.path(j) for j in index.subtree(i)])
    proc = subprocess.run([CPIO, "-o", "-H", "newc", "--null", "--quiet"], input=b"\0".join(names) + b"\0",
                          cwd=tmp_path, capture_output=True, check=True)
    assert len(proc.stdout) == (index.tot_cpio[i] + TRAILER_BYTES + 511) // 512 * 512


def test_counts_and_sizes(tmp_path: Path) -> None:
    make_tree(tmp_path)
    index = scan(tmp_path)
    c = index.counts()
    expected_entries = sum(1 for _ in tmp_path.rglob("*"))
    assert c["entries"] == expected_entries
    assert c["symlinks"] == 4
    assert c["special"] == (2 if os.geteuid() == 0 else 1)
    assert c["hardlinked_inodes"] == 1
    # apparent bytes: every inode once, like `du -sb --apparent-size` minus the root itself
    du = subprocess.run(["du", "-sb", str(tmp_path)], capture_output=True, text=True, check=True)
    assert c["apparent_bytes"] == int(du.stdout.split()[0]) - os.lstat(tmp_path).st_size
    du_alloc = subprocess.run(["du", "-s", "--block-size=1", str(tmp_path)], capture_output=True, text=True, check=True)
    assert c["allocated_bytes"] == int(du_alloc.stdout.split()[0]) - os.lstat(tmp_path).st_blocks * 512
    # a hardlinked file's data is counted once
    names = [index.lookup(p) for p in ("usr/bin/tool", "usr/bin/tool-hardlink", "etc/tool-third-name")]
    assert sorted(index.size[i] for i in names) == [0, 0, 4099]
    assert all(index.data_bytes(i) == 4099 for i in names)
    # symlinks are entries, never followed: the link to "/" has no children
    host_root = index.lookup("usr/bin/to-host-root")
    assert not index.is_dir(host_root) and len(index.subtree(host_root)) == 0
    assert index.size[index.lookup("usr/bin/abs-link")] == len("/usr/bin/tool")


def test_hard_links_outside_the_tree_are_counted(tmp_path: Path) -> None:
    root = tmp_path / "tree"
    root.mkdir()
    make_tree(root)
    index = scan(root)
    assert index.outside_inodes == 0 and index.outside_link_example() is None  # all 3 names inside
    (root / "usr/bin/solo").write_bytes(b"solo")
    os.link(root / "usr/bin/tool", tmp_path / "tool-outside")
    os.link(root / "usr/bin/solo", tmp_path / "solo-outside")
    os.link(root / "usr/bin/solo", tmp_path / "solo-outside-2")
    index = scan(root)
    assert index.outside_inodes == 2
    first, inside, links = index.outside_link_example()
    tool = {b"usr/bin/tool", b"usr/bin/tool-hardlink", b"etc/tool-third-name"}
    assert (inside, links) == ((1, 3) if index.path(first) == b"usr/bin/solo" else (3, 4))
    assert index.path(first) in tool | {b"usr/bin/solo"}
    assert index.counts()["apparent_bytes"] == scan(root).counts()["apparent_bytes"]  # content still counted once


def test_root_may_be_a_symlink_to_a_folder(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    make_tree(real)
    (tmp_path / "link").symlink_to("real")
    index = scan(tmp_path / "link")
    assert index.root == os.fsencode(real)  # the real folder, as the spec's model names it
    assert index.counts() == scan(real).counts()
    # only the root is resolved: the links inside are still entries, never followed
    assert len(index.subtree(index.lookup("usr/bin/to-host-root"))) == 0
    (tmp_path / "to-file").symlink_to("real/etc/os-release")
    with pytest.raises(UserError, match=r"the OS tree .*to-file is a symlink to .*os-release, which is not a folder"):
        scan(tmp_path / "to-file")
    (tmp_path / "dangling").symlink_to("nowhere")
    with pytest.raises(UserError, match=r"cannot read the OS tree .*dangling, a symlink to .*nowhere: No such file"):
        scan(tmp_path / "dangling")


def test_odd_names_round_trip(tmp_path: Path) -> None:
    make_tree(tmp_path)
    index = scan(tmp_path)
    for name in (b"space name", b"new\nline", b"latin1-\xe9\xff", b"tab\tname", b"*star?"):
        i = index.lookup(b"usr/share/odd/" + name)
        assert i is not None, name
        assert index.path(i) == b"usr/share/odd/" + name
        assert index.size[i] == len(name) * 3
        assert index.cpio[i] == cpio_entry_bytes(len(b"usr/share/odd/" + name), len(name) * 3)


def test_subtrees_are_contiguous_and_totals_add_up(tmp_path: Path) -> None:
    make_tree(tmp_path)
    index = scan(tmp_path)
    for d in range(len(index)):
        if not index.is_dir(d):
            continue
        sub = index.subtree(d)
        for j in sub:
            assert d in set(index.ancestors(j))
        assert index.tot_size[d] == index.size[d] + sum(index.size[j] for j in sub)
        assert index.tot_cpio[d] == index.cpio[d] + sum(index.cpio[j] for j in sub)
        # nothing outside the range lies below d
        outside = set(range(1, len(index))) - set(sub) - {d}
        assert not any(d in set(index.ancestors(j)) for j in outside)


def test_unreadable_folder_is_reported_not_fatal(tmp_path: Path) -> None:
    base = Path(tempfile.mkdtemp(prefix="sysextant-unreadable-"))
    try:
        os.chmod(base, 0o755)
        make_tree(base)
        locked = base / "usr/lib/firmware"
        os.chmod(locked, 0)
        from unprivileged import run_unprivileged

        def scan_it() -> tuple[int, list[str]]:
            index = scan(base)
            return index.counts()["entries"], [str(p) for p in index.problems]

        entries, problems = run_unprivileged(scan_it)
        assert any("firmware" in p and "not readable" in p for p in problems), problems
        assert entries > 5
    finally:
        os.chmod(base / "usr/lib/firmware", 0o755)
        shutil.rmtree(base)


def test_the_native_listing_is_built() -> None:
    """CI installs with a C compiler, so scans take the native path the benchmark measures."""
    from sysextant.core.tree import _listdir, index

    assert index.listdir_lstat is _listdir.listdir_lstat
    assert index.Walker is _listdir.Walker and index.settle is _listdir.settle
    scanned = scan(os.path.dirname(__file__))
    assert isinstance(scanned.names, _listdir.Names) and isinstance(scanned.layout, _listdir.Folders)


def _listings(folders: list[str], fn) -> dict[str, tuple]:
    out = {}
    for folder in folders:
        try:
            out[folder] = fn(os.fsencode(folder))
        except OSError as exc:
            out[folder] = ("error", exc.errno, exc.filename)
    return out


def test_native_and_python_listings_agree(tmp_path: Path) -> None:
    """Same names, same packed lstat figures, same failures, same errors, for both twins."""
    from sysextant.core.tree._listdir import listdir_lstat
    from sysextant.core.tree.index import _listdir_lstat_py

    base = Path(tempfile.mkdtemp(prefix="sysextant-listing-"))
    try:
        os.chmod(base, 0o755)
        make_tree(base)
        (base / "usr/lib/firmware/empty-dir").mkdir()
        os.symlink("amd", base / "usr/lib/firmware/amd-link")
        listable = base / "usr/share/odd"
        os.chmod(listable, 0o644)  # names can be read, entries cannot be examined
        locked = base / "usr/bin"
        os.chmod(locked, 0)
        from unprivileged import run_unprivileged

        folders = [str(base)] + [str(p) for p in base.rglob("*") if p.is_dir() and not p.is_symlink()]
        native = run_unprivileged(_listings, folders, listdir_lstat)
        python = run_unprivileged(_listings, folders, _listdir_lstat_py)
        assert native == python
        names, packed, failed = native[str(listable)]
        assert names == [] and packed == b"" and len(failed) == 6
        assert {err for _, err in failed} == {13}  # EACCES
        assert native[str(locked)][:2] == ("error", 13)
        assert native[str(locked)][2] == os.fsencode(locked)
        # a symlink to a folder is never listed through
        for fn in (listdir_lstat, _listdir_lstat_py):
            with pytest.raises(OSError) as exc:
                fn(os.fsencode(base / "usr/lib/firmware/amd-link"))
            assert exc.value.filename == os.fsencode(base / "usr/lib/firmware/amd-link")
        with pytest.raises(ValueError):
            listdir_lstat(b"/tmp\0x")
    finally:
        for folder in (base / "usr/share/odd", base / "usr/bin"):
            os.chmod(folder, 0o755)
        shutil.rmtree(base)


COLUMNS = ("names", "parent", "mode", "size", "alloc", "cpio", "first_child", "nchild", "tot_size", "tot_alloc",
           "tot_cpio", "tot_count", "hardlinks", "link_size", "links_unseen", "outside_inodes", "special")


def _python_scan(root, **kwargs):
    """A scan by the pure-Python twins: what an install without a C compiler runs."""
    from sysextant.core.tree import index as index_mod

    saved = index_mod.Walker, index_mod.settle, index_mod.new_names, index_mod.new_folders
    index_mod.Walker, index_mod.settle, index_mod.new_names, index_mod.new_folders = (
        index_mod._Walker, index_mod._settle_py, list, index_mod._Folders)
    try:
        return scan(root, **kwargs)
    finally:
        index_mod.Walker, index_mod.settle, index_mod.new_names, index_mod.new_folders = saved


def _contents(index) -> dict:
    out = {c: getattr(index, c) for c in COLUMNS}
    for c in ("names", "first_child", "nchild", "tot_size", "tot_alloc", "tot_cpio", "tot_count"):
        out[c] = list(out[c])
    out["problems"] = [str(p) for p in index.problems]
    return out


def test_scan_is_the_same_with_the_python_listing(tmp_path: Path) -> None:
    make_tree(tmp_path)
    (tmp_path / "usr/lib/firmware/empty-dir").mkdir()
    for k in range(40):  # more names of the hardlinked inode, in folders scanned in later chunks
        d = tmp_path / f"usr/share/many/d{k:02d}"
        d.mkdir(parents=True)
        os.link(tmp_path / "usr/bin/tool", d / "tool")
        (d / "file").write_bytes(b"y" * k)
    fast = scan(tmp_path)
    slow = _python_scan(tmp_path)
    assert isinstance(slow.names, list) and isinstance(slow.tot_size, array)
    for column in COLUMNS:
        assert getattr(fast, column) == getattr(slow, column), column
    assert [str(p) for p in fast.problems] == [str(p) for p in slow.problems]
    # chunks of any size give the same index: one entry a step, or the whole tree in one
    assert _contents(scan(tmp_path, every=1)) == _contents(fast) == _contents(scan(tmp_path, every=10**9))
    assert _contents(_python_scan(tmp_path, every=1)) == _contents(fast)
    assert fast.tot_count[0] == len(fast) - 1 and fast.tot_size[0] == sum(fast.size)


def _both_scans(root: str) -> tuple[dict, dict]:
    return _contents(scan(root)), _contents(_python_scan(root))


def test_scans_agree_on_unreadable_folders_and_entries() -> None:
    base = Path(tempfile.mkdtemp(prefix="sysextant-scan-problems-"))
    try:
        os.chmod(base, 0o755)
        make_tree(base)
        os.chmod(base / "usr/share/odd", 0o644)  # names can be read, entries cannot be examined
        os.chmod(base / "usr/bin", 0)
        from unprivileged import run_unprivileged

        native, python = run_unprivileged(_both_scans, str(base))
        assert native == python
        assert len(native["problems"]) == 7, native["problems"]  # usr/bin, and the 6 odd names
        assert sum("folder not readable (Permission denied)" in p for p in native["problems"]) == 1
    finally:
        for folder in (base / "usr/share/odd", base / "usr/bin"):
            os.chmod(folder, 0o755)
        shutil.rmtree(base)


def test_progress_sees_a_consistent_growing_index(tmp_path: Path) -> None:
    make_tree(tmp_path)
    seen = []

    def progress(index) -> None:
        n = len(index)
        assert all(len(getattr(index, c)) == n for c in COLUMNS[:12])
        assert index.tot_count[0] == n - 1  # every listed entry is in the root's totals
        assert index.tot_cpio[0] == sum(index.cpio)
        seen.append((n, index.complete))

    index = scan(tmp_path, progress=progress, every=3)
    assert seen[-1] == (len(index), True)
    assert len(seen) > 5 and all(a[0] <= b[0] for a, b in zip(seen, seen[1:], strict=False))
    assert all(b[0] - a[0] >= 3 for a, b in zip(seen[:-2], seen[1:-1], strict=True))  # at least `every` apart


def test_names_column() -> None:
    from sysextant.core.tree._listdir import Names

    items = [b"", b"usr", b"latin1-\xe9\xff", b"new\nline", b"x" * 255]
    names = Names(items)
    assert len(names) == 5 and list(names) == items and names == items and names == tuple(items)
    assert names[2] == items[2] and names[-1] == items[-1] and names[1:4] == items[1:4] and names[::-2] == items[::-2]
    assert b"\0".join(names) == b"\0".join(items)
    assert names == Names(items) and names != Names(items[:-1]) and names != items[::-1] and names != [b"usr"]
    names.append(b"more")
    assert names[5] == b"more" and len(names) == 6 and b"more" in names
    for bad in (6, -7):
        with pytest.raises(IndexError):
            names[bad]
    with pytest.raises(TypeError):
        names.append("str")
    with pytest.raises(TypeError):
        Names([b"a", 1])
    with pytest.raises(TypeError):
        hash(names)
    # thousands of names cross the column's blocks of 1024: each still reads back whole
    many = [bytes([65 + k % 26]) * (k % 256) for k in range(5000)]
    col = Names(many)
    assert list(col) == many and col == many and col[1000:3100:3] == many[1000:3100:3]
    assert [col[k] for k in (1023, 1024, 1025, 2047, 2048, 4999)] == [many[k] for k in (1023, 1024, 1025, 2047, 2048, 4999)]


def test_folder_columns() -> None:
    """Kept for folders only; a file's first_child, nchild, totals and tot_count read as -1, 0,
    its own figures and 0, like the per-entry arrays of the pure-Python twin."""
    from sysextant.core.tree._listdir import Folders, settle

    size, alloc, cpio = array("q", [4096, 7, 4096, 5]), array("q", [4096, 8, 4096, 9]), array("q", [0, 120, 116, 124])
    parent = array("i", [-1, 0, 0, 2])
    layout = Folders()
    layout.add(1, array("i", [0]).tobytes(), size[:1].tobytes(), alloc[:1].tobytes(), cpio[:1].tobytes())
    layout.add(2, array("i", [2]).tobytes(), size[1:3].tobytes(), alloc[1:3].tobytes(), cpio[1:3].tobytes())
    settle(array("q", [0, 1, 2, 7 + 4096, 8 + 4096, 236]).tobytes(), parent[:3], layout)
    layout.add(1, b"", size[3:].tobytes(), alloc[3:].tobytes(), cpio[3:].tobytes())
    settle(array("q", [2, 3, 1, 5, 9, 124]).tobytes(), parent, layout)
    assert len(layout) == 4 and layout.folders() == 2
    cols = {name: layout.column(name, own) for name, own in (("first_child", None), ("nchild", None),
                                                             ("tot_count", None), ("tot_size", size),
                                                             ("tot_alloc", alloc), ("tot_cpio", cpio))}
    expect = {"first_child": [1, -1, 3, -1], "nchild": [2, 0, 1, 0], "tot_count": [3, 0, 1, 0],
              "tot_size": [4096 + 7 + 4096 + 5, 7, 4096 + 5, 5], "tot_alloc": [4096 + 8 + 4096 + 9, 8, 4096 + 9, 9],
              "tot_cpio": [360, 120, 240, 124]}
    for name, col in cols.items():
        assert col.tolist() == list(col) == expect[name] and len(col) == 4, name
        assert col == array("q", expect[name]) and col == expect[name] and col != expect[name][:3], name
        assert col[-1] == expect[name][-1] and col[1:3] == expect[name][1:3], name
        with pytest.raises(IndexError):
            col[4]
    with pytest.raises(TypeError):
        layout.column("tot_size")  # a total needs the entries' own figures
    with pytest.raises(ValueError):
        layout.column("nope")
    with pytest.raises(ValueError):  # entry 1 is not a folder
        settle(array("q", [1, 3, 1, 5, 9, 124]).tobytes(), parent, layout)
    with pytest.raises(TypeError):
        settle(b"", array("q", parent), layout)
    with pytest.raises(ValueError):  # folders are new entries, ascending
        layout.add(2, array("i", [1]).tobytes(), bytes(16), bytes(16), bytes(16))


def test_glob_and_intervals(tmp_path: Path) -> None:
    make_tree(tmp_path)
    index = scan(tmp_path)
    sums = Sums(index)
    fw = match(index, "usr/lib/firmware")
    assert [index.path(i) for i in fw] == [b"usr/lib/firmware"]
    assert {index.path(i) for i in match(index, "usr/share/odd/*name")} == {b"usr/share/odd/space name",
                                                                          b"usr/share/odd/tab\tname"}
    assert {index.path(i) for i in match(index, "usr/**/blob.bin")} == {b"usr/lib/firmware/amd/blob.bin"}
    assert match(index, "usr/nope") == []
    sel = subtree_set(index, fw)
    assert len(sel) == 4  # firmware, amd, blob.bin, empty
    assert sums.apparent(sel) == index.tot_size[fw[0]]
    inner = subtree_set(index, match(index, "usr/lib/firmware/amd"))
    rest = sel.difference(inner)
    assert sums.apparent(rest) == index.tot_size[fw[0]] - index.tot_size[index.lookup("usr/lib/firmware/amd")]
    # a hardlinked inode whose counted name is outside the selection still counts once inside it
    hl = subtree_set(index, [index.lookup("usr/bin/tool-hardlink")])
    assert sums.apparent(hl) == 4099
    assert IntervalSet([(0, 3), (2, 5), (7, 9)]) == IntervalSet([(0, 5), (7, 9)])
    assert IntervalSet([(0, 10)]).difference(IntervalSet([(2, 3), (5, 7)])) == IntervalSet([(0, 2), (3, 5), (7, 10)])
