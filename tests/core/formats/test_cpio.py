"""The newc writer against GNU cpio: extraction, listing, exact size, hardlinks, odd names."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import stat
import subprocess
from array import array
from dataclasses import replace
from pathlib import Path

import pytest

from sysextant.core.errors import UserError
from sysextant.core.formats.cpio import (
    _archive_order,
    _archive_order_py,
    archive_entries,
    archive_order,
    archive_size,
    extra_bytes,
    init_entry,
    trailer,
    write_newc,
)
from sysextant.core.tree.index import TRAILER_BYTES, scan
from sysextant.core.tree.selection import IntervalSet, Sums, subtree_set

CPIO = shutil.which("cpio")
needs_cpio = pytest.mark.skipif(CPIO is None, reason="GNU cpio not installed (apt-get install cpio)")

ODD = (b"space name", b"new\nline", b"latin1-\xe9\xff", b"tab\tname", b"-dash", b"*star?")


def make_tree(root: Path) -> None:
    (root / "usr/lib/firmware/amd").mkdir(parents=True)
    (root / "usr/lib-extra").mkdir(parents=True)  # sorts between usr/lib and usr/lib/...
    (root / "usr/lib-extra/x").write_bytes(b"extra")
    (root / "usr/bin").mkdir(parents=True)
    (root / "etc").mkdir()
    (root / "etc/os-release").write_text("ID=test\n")
    (root / "usr/lib/firmware/amd/blob.bin").write_bytes(os.urandom(3 * 1024 * 1024 + 5))
    (root / "usr/lib/firmware/empty").write_bytes(b"")
    (root / "usr/lib/firmware/shared").write_bytes(b"s" * 1001)
    os.link(root / "usr/lib/firmware/shared", root / "usr/bin/shared-kept")  # split by a move
    (root / "usr/bin/tool").write_bytes(b"x" * 4099)
    os.chmod(root / "usr/bin/tool", 0o4755)
    os.link(root / "usr/bin/tool", root / "usr/bin/tool-hardlink")
    os.link(root / "usr/bin/tool", root / "etc/tool-third-name")
    os.symlink("/usr/bin/tool", root / "usr/bin/abs-link")
    os.symlink("../../etc/os-release", root / "usr/lib/os-release")
    os.symlink("/nonexistent/dangling", root / "usr/bin/dangling")
    os.symlink("/", root / "usr/bin/to-host-root")
    odd = root / "usr/share/odd"
    odd.mkdir(parents=True)
    for name in ODD:
        (odd / os.fsdecode(name)).write_bytes(name * 3)
    os.mkfifo(root / "usr/share/fifo")
    if os.geteuid() == 0:
        os.mknod(root / "usr/share/null-dev", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    for top in ("proc", "tmp", "boot"):
        (root / top).mkdir()
    (root / "boot/vmlinuz").write_bytes(b"kernel")


def snapshot(root: Path) -> dict[bytes, tuple]:
    """Path -> (kind, mode bits, content hash / target / rdev) plus inode groups, for comparison."""
    out: dict[bytes, tuple] = {}
    broot = os.fsencode(root)
    inodes: dict[tuple[int, int], list[bytes]] = {}
    for dirpath, dirnames, filenames in os.walk(broot):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, broot)
            st = os.lstat(full)
            m = st.st_mode
            if stat.S_ISREG(m):
                out[rel] = ("f", stat.S_IMODE(m), hashlib.sha256(Path(os.fsdecode(full)).read_bytes()).hexdigest())
                inodes.setdefault((st.st_dev, st.st_ino), []).append(rel)
            elif stat.S_ISLNK(m):
                out[rel] = ("l", os.readlink(full))
            elif stat.S_ISDIR(m):
                out[rel] = ("d", stat.S_IMODE(m))
            else:
                out[rel] = ("s", stat.S_IFMT(m), stat.S_IMODE(m), st.st_rdev)
    out[b"//links"] = tuple(sorted(tuple(sorted(v)) for v in inodes.values() if len(v) > 1))
    return out


def kept_selection(index) -> tuple[IntervalSet, IntervalSet]:
    """The initrd selection: everything but proc/tmp/boot, minus usr/lib/firmware (the 'extension')."""
    everything = IntervalSet([(1, len(index))])
    skip = [index.lookup(t) for t in ("proc", "tmp", "boot")]
    base = everything.difference(subtree_set(index, skip))
    moved = subtree_set(index, [index.lookup("usr/lib/firmware")])
    return base, base.difference(moved)


def scanned_tree(tmp_path: Path) -> tuple[Path, object, IntervalSet, IntervalSet]:
    """The test tree under ``tmp_path/tree``, its index, and the base and kept selections."""
    root = tmp_path / "tree"
    root.mkdir()
    make_tree(root)
    index = scan(root)
    base, kept = kept_selection(index)
    return root, index, base, kept


def extract(archive: bytes, dest: Path) -> None:
    dest.mkdir()
    subprocess.run([CPIO, "-i", "--make-directories", "--no-absolute-filenames", "--preserve-modification-time",
                    "--quiet"], input=archive, cwd=dest, check=True)


@needs_cpio
def test_extracts_to_the_tree_minus_the_moved_part(tmp_path: Path) -> None:
    root, index, base, kept = scanned_tree(tmp_path)
    buf = io.BytesIO()
    n = write_newc(index, kept, buf, mtime=0)
    data = buf.getvalue()
    assert n == len(data) == Sums(index).cpio_bytes(kept) + TRAILER_BYTES == archive_size(index, kept)
    assert data.endswith(trailer())

    # expected: the tree without proc/tmp/boot and usr/lib/firmware
    expected_root = tmp_path / "expected"
    subprocess.run(["cp", "-a", str(root), str(expected_root)], check=True)
    for gone in ("proc", "tmp", "boot", "usr/lib/firmware"):
        shutil.rmtree(expected_root / gone)
    extract(data, tmp_path / "out")
    got, want = snapshot(tmp_path / "out"), snapshot(expected_root)
    # the kept name of the split hardlink is a plain file with the data
    assert got[b"usr/bin/shared-kept"][2] == hashlib.sha256(b"s" * 1001).hexdigest()
    assert got == want

    # cpio -t lists exactly our names, in our order (bytewise by path)
    listing = subprocess.run([CPIO, "-t", "--quiet"], input=data, capture_output=True, check=True).stdout
    names = [index.path(i) for i in archive_entries(index, kept)]
    assert names == sorted(names)
    assert names.index(b"usr/lib-extra") < names.index(b"usr/lib/os-release")
    odd_lines = b"\n".join(names) + b"\n"
    assert listing == odd_lines  # newline in a name shows as a raw newline in GNU cpio's listing


@needs_cpio
def test_hardlinks_share_an_inode_and_data_is_stored_once(tmp_path: Path) -> None:
    root, index, base, _ = scanned_tree(tmp_path)
    buf = io.BytesIO()
    write_newc(index, base, buf, mtime=0)
    data = buf.getvalue()
    assert data.count(b"x" * 4099) == 1  # three names, one copy of the data
    verbose = subprocess.run([CPIO, "-tv", "--quiet"], input=data, capture_output=True, check=True).stdout
    tool_lines = [ln for ln in verbose.splitlines() if b"tool" in ln and not ln.startswith(b"l")]
    assert len(tool_lines) == 3
    assert all(ln.split()[1] == b"3" for ln in tool_lines)  # nlink = names in the archive
    extract(data, tmp_path / "out")
    inos = {os.lstat(tmp_path / "out" / p).st_ino for p in ("usr/bin/tool", "usr/bin/tool-hardlink", "etc/tool-third-name")}
    assert len(inos) == 1
    assert (tmp_path / "out/etc/tool-third-name").read_bytes() == b"x" * 4099
    assert stat.S_IMODE(os.lstat(tmp_path / "out/usr/bin/tool").st_mode) == 0o4755
    if os.geteuid() == 0:
        st = os.lstat(tmp_path / "out/usr/share/null-dev")
        assert stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(1, 3)


def test_header_fields_normalised_and_reproducible(tmp_path: Path, monkeypatch) -> None:
    root, index, base, kept = scanned_tree(tmp_path)
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    a, b = io.BytesIO(), io.BytesIO()
    write_newc(index, kept, a)
    write_newc(index, kept, b)
    assert a.getvalue() == b.getvalue()
    data = a.getvalue()
    pos, inos = 0, []
    while True:
        h = data[pos:pos + 110]
        assert h[:6] == b"070701"
        f = [int(h[6 + 8 * k:14 + 8 * k], 16) for k in range(13)]
        namesize, filesize = f[11], f[6]
        name = data[pos + 110:pos + 110 + namesize - 1]
        if name == b"TRAILER!!!":
            assert pos + 124 == len(data)  # nothing after the trailer
            break
        assert f[2] == f[3] == 0 and f[7] == f[8] == 0  # uid gid dev
        assert f[5] == 1700000000
        inos.append(f[0])
        pos += (110 + namesize + 3) & ~3
        pos += (filesize + 3) & ~3
    assert inos[0] == 1 and len(set(inos)) == len(inos) - 2  # two repeated hardlink names


def test_init_symlink_extra_is_merged_in_order_and_counted(tmp_path: Path) -> None:
    root, index, _, kept = scanned_tree(tmp_path)
    extra = [init_entry("/usr/bin/immucore")]
    buf = io.BytesIO()
    n = write_newc(index, kept, buf, extra=extra, mtime=0)
    assert n == Sums(index).cpio_bytes(kept) + TRAILER_BYTES + extra_bytes(extra) == len(buf.getvalue())
    if CPIO:
        listing = subprocess.run([CPIO, "-t", "--quiet"], input=buf.getvalue(), capture_output=True,
                                 check=True).stdout
        names = [index.path(i) for i in archive_entries(index, kept)]
        assert listing == b"\n".join(sorted([*names, b"init"])) + b"\n"
        extract(buf.getvalue(), tmp_path / "out")
        assert os.readlink(tmp_path / "out/init") == "/usr/bin/immucore"


def test_archive_order_is_bytewise_path_order(tmp_path: Path) -> None:
    root = tmp_path / "tree"
    root.mkdir()
    make_tree(root)
    for name in ("a", "a-b", "a.c", "a0", "ab"):
        (root / "usr/share" / name).mkdir()
        (root / "usr/share" / name / "f").write_bytes(b"1")
    # heads of 8 bytes alike, a folder's name 7 and 8 bytes long (its subtree sorts as name + "/"),
    # bytes above 0x7f, and more than 16 names in one folder (the native sort merges runs of 16)
    odd = root / "usr/share/order"
    odd.mkdir()
    for name in (b"abcdefg", b"abcdefgh", b"abcdefg-", b"abcdefg0", b"abcdefgh.x", b"abcdefg.", b"\xff\xfe", b"\x01",
                 *(b"n%03d" % k for k in range(40, 0, -1))):
        os.mkdir(os.path.join(bytes(odd), name))
        with open(os.path.join(bytes(odd), name, b"f"), "wb") as fh:
            fh.write(b"1")
    index = scan(root)
    order = [index.path(i) for i in archive_order(index)]
    assert order == sorted(index.path(i) for i in range(1, len(index)))
    if _archive_order is not None:  # the native order and its Python twin agree
        assert _archive_order(index.names, index.layout) == _archive_order_py(index).tobytes()


@pytest.mark.skipif(_archive_order is None, reason="the native part is not built")
def test_archive_order_native_and_python_agree_on_the_real_usr() -> None:
    index = scan("/usr")
    assert _archive_order(index.names, index.layout) == _archive_order_py(index).tobytes()


def test_vanished_or_changed_file_is_a_user_error(tmp_path: Path) -> None:
    root, index, _, kept = scanned_tree(tmp_path)
    (root / "usr/bin/tool-hardlink").unlink()
    os.unlink(root / "etc/tool-third-name")
    with pytest.raises(UserError, match="etc/tool-third-name"):
        write_newc(index, kept, io.BytesIO())
    index = scan(root)
    _, kept = kept_selection(index)
    (root / "etc/os-release").write_text("ID=changed-size\n")
    with pytest.raises(UserError, match="etc/os-release changed"):
        write_newc(index, kept, io.BytesIO())


def test_symlinked_parent_is_never_followed(tmp_path: Path) -> None:
    root, index, _, kept = scanned_tree(tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "os-release").write_text("ID=test\n")  # same size as the real one
    shutil.rmtree(root / "etc")
    os.symlink(outside, root / "etc")  # swapped for a link after the scan
    with pytest.raises(UserError, match="etc"):
        write_newc(index, kept, io.BytesIO())


def _both_ways(index, selection: IntervalSet, monkeypatch, **kw) -> None:
    """The archive and every entry's end offset, natively (a folder's plain files in runs) and
    in Python only: the same bytes."""
    from sysextant.core.formats import cpio

    def run() -> tuple[bytes, array]:
        ends = array("q")
        buf = io.BytesIO()
        entries = archive_entries(index, selection, extra=kw.get("extra", ()))
        cpio.write_entries(index, entries, buf, ends=ends, **kw)
        assert len(ends) == len(entries)
        return buf.getvalue(), ends

    native = run()
    with monkeypatch.context() as m:
        m.setattr(cpio, "_pack_files", None)
        python = run()
    assert native[0] == python[0] and native[1] == python[1]
    assert len(native[0]) == Sums(index).cpio_bytes(selection) + TRAILER_BYTES + extra_bytes(kw.get("extra", ()))


@pytest.mark.skipif(__import__("sysextant.core.formats.cpio", fromlist=["x"])._pack_files is None,
                    reason="the native part is not built")
def test_native_runs_write_what_the_python_path_writes(tmp_path: Path, monkeypatch) -> None:
    root, index, base, kept = scanned_tree(tmp_path)
    # an extra entry among a folder's files, a file just over the native limit, empty files
    (root / "usr/share/many").mkdir()
    for k in range(300):
        (root / f"usr/share/many/f{k:03d}").write_bytes(os.urandom(k * 13))
    (root / "usr/share/many/big").write_bytes(os.urandom((1 << 20) + 1))
    (root / "usr/share/many/exactly-1MiB").write_bytes(os.urandom(1 << 20))
    index = scan(root)
    base, kept = kept_selection(index)
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    for sel in (base, kept):
        _both_ways(index, sel, monkeypatch)
        _both_ways(index, sel, monkeypatch, extra=[init_entry("/usr/bin/tool")])
    between = [replace(init_entry("/usr/bin/tool"), path=b"usr/share/many/f100x")]  # between two files
    _both_ways(index, base, monkeypatch, extra=between)


@pytest.mark.skipif(__import__("sysextant.core.formats.cpio", fromlist=["x"])._pack_files is None,
                    reason="the native part is not built")
def test_native_runs_on_real_trees(monkeypatch) -> None:
    """This machine's /usr/share/doc and /usr/lib/python3* (real names, sizes and modes), and the
    Debian tree the VM tests cache when it is there."""
    index = scan(b"/usr")
    picks = [index.lookup(p) for p in ("share/doc", "bin") if index.lookup(p) is not None]
    _both_ways(index, subtree_set(index, picks), monkeypatch)
    debian = Path.home() / ".cache/sysextant"
    for rootfs in sorted(debian.glob("debian-*/rootfs"))[:1]:
        index = scan(rootfs)
        _both_ways(index, IntervalSet([(1, len(index))]), monkeypatch)
