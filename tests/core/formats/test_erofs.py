"""The pure-Python EROFS writer and reader, checked against erofs-utils 1.5.

Which oracle covers what:
* ``fsck.erofs`` (no extraction): superblock checksum, inode/xattr/dirent structure, dirent
  order, '.'/'..', inline data not crossing blocks, every data extent readable.
* ``fsck.erofs --extract``: names, types, content, symlink targets, uid/gid (as root), mode,
  device numbers, mtime. erofs-utils 1.5 chowns after chmod, which clears setuid bits, so a
  second extraction with ``--no-preserve-owner`` checks full modes; 1.5 restores no xattrs and
  extracts hardlinks as separate files.
* ``dump.erofs --path``: hardlinked names share one NID and the link count.
* xattrs: our reader, which is itself checked against images ``mkfs.erofs`` made from the
  same tree (an independent writer).
"""

from __future__ import annotations

import contextlib
import io
import os
import random
import re
import shutil
import stat
import struct
import subprocess
from pathlib import Path

import pytest
from fs_tree import (
    CAP_NET_RAW_EP,
    PATHS,
    build_tree,
    entries,
    erofs_tree,
    expected_snapshot,
    hardlink_groups,
    snapshot,
)

from sysextant.core.errors import Cancelled, UserError
from sysextant.core.formats import erofs
from sysextant.core.progress import Reporter
from sysextant.core.tree import fsentry
from sysextant.core.tree.fsentry import FsEntry

EPOCH = 1_700_000_000
UUID = bytes(range(16))

needs_erofs_utils = pytest.mark.skipif(
    not (shutil.which("fsck.erofs") and shutil.which("mkfs.erofs") and shutil.which("dump.erofs")),
    reason="erofs-utils (fsck.erofs, mkfs.erofs, dump.erofs) not installed",
)
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="the test tree needs root (device nodes, ownership)")


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if os.geteuid() != 0:
        pytest.skip("the test tree needs root (device nodes, ownership)")
    return build_tree(tmp_path_factory.mktemp("erofs") / "root")


def write(root: Path, dest: Path, *, mtime: int = EPOCH, **kw) -> int:
    with open(dest, "wb") as f:
        size = erofs.write_image(entries(root), f, tree_root=os.fsencode(root), uuid=UUID, mtime=mtime, **kw)
        assert f.tell() == size
    assert dest.stat().st_size == size and size % 4096 == 0
    return size


@pytest.fixture(scope="module")
def image(tree: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    dest = tmp_path_factory.mktemp("img") / "ours.erofs"
    write(tree, dest)
    return dest


def run(*args: str | os.PathLike[str]) -> str:
    proc = subprocess.run([os.fspath(a) for a in args], capture_output=True, text=True, errors="replace")
    assert proc.returncode == 0, f"{args[0]} failed: {proc.stdout}{proc.stderr}"
    return proc.stdout + proc.stderr


@needs_erofs_utils
def test_fsck_accepts_and_extracts_the_exact_tree(tree: Path, image: Path, tmp_path: Path) -> None:
    run("fsck.erofs", image)
    out = tmp_path / "x"
    run("fsck.erofs", f"--extract={out}", image)
    want = expected_snapshot(tree, EPOCH)
    got = snapshot(out, xattrs=False)
    assert set(got) == set(want)
    for path, rec in want.items():
        rec = dict(rec)
        rec.pop("xattrs")
        if rec["type"] == stat.S_IFREG:
            rec["mode"] &= ~0o6000  # fsck.erofs 1.5 chowns after chmod: the kernel drops setuid
        assert got[path] == rec, path
    root = os.lstat(out)
    assert stat.S_IMODE(root.st_mode) == 0o755 and int(root.st_mtime) == EPOCH


@needs_erofs_utils
def test_extraction_without_chown_keeps_setuid(tree: Path, image: Path, tmp_path: Path) -> None:
    out = tmp_path / "x"
    run("fsck.erofs", f"--extract={out}", "--preserve-perms", "--no-preserve-owner", image)
    assert stat.S_IMODE(os.lstat(out / "usr/bin/suid").st_mode) == 0o4755
    assert stat.S_IMODE(os.lstat(out / "usr/bin/secret").st_mode) == 0o600


@needs_erofs_utils
def test_dump_erofs_shows_hardlinks_as_one_inode(tree: Path, image: Path) -> None:
    groups = hardlink_groups(tree)
    assert groups
    for group in groups:
        seen = set()
        for path in group:
            text = run("dump.erofs", f"--path=/{os.fsdecode(path)}", image)
            nid = re.search(r"NID: (\d+)\s+Links: (\d+)", text)
            assert nid, text
            seen.add((int(nid.group(1)), int(nid.group(2))))
        assert len(seen) == 1 and next(iter(seen))[1] == len(group)


def test_reader_round_trips_our_image(tree: Path, image: Path) -> None:
    got, inos = erofs_tree(image)
    assert got == expected_snapshot(tree, EPOCH)
    assert got[b"usr/lib/two"]["xattrs"] == {b"security.capability": CAP_NET_RAW_EP}
    for group in hardlink_groups(tree):
        assert len({inos[p] for p in group}) == 1
    with open(image, "rb") as f:
        nlinks = {i.path: i.nlink for i in erofs.read_tree(f)}
    assert nlinks[b"usr/lib/h1"] == 2
    assert nlinks[b"usr/lib"] == 2 + 1  # its one subdirectory, deep
    assert nlinks[b""] == 2 + 2


def test_image_is_compact(tree: Path, image: Path) -> None:
    data = sum(-(-os.lstat(os.path.join(os.fsencode(tree), p)).st_size // 4096) * 4096
               for p, r in snapshot(tree, xattrs=False).items() if r["type"] == stat.S_IFREG)
    # 400 tiny files and a dozen small ones are inlined, not given a block each
    assert image.stat().st_size < data


@needs_erofs_utils
@pytest.mark.parametrize("mode", ["plain", "chunked", "lz4hc"])
def test_reader_reads_mkfs_erofs_images(tree: Path, tmp_path: Path, mode: str) -> None:
    img = tmp_path / "mkfs.erofs"
    args = ["mkfs.erofs", "--quiet", f"-T{EPOCH}", "-U", "00010203-0405-0607-0809-0a0b0c0d0e0f"]
    compress = mode == "lz4hc"
    if compress:
        args.append("-zlz4hc")
    elif mode == "chunked":
        args.append("--chunksize=8192")
    src = tmp_path / "src"
    src.mkdir()
    for top in PATHS:  # mkfs.erofs packs a whole directory: give it just the selection
        os.rename(os.path.join(os.fsencode(tree), top), os.path.join(os.fsencode(src), top))
    try:
        run(*args, img, src)
    finally:
        for top in PATHS:
            os.rename(os.path.join(os.fsencode(src), top), os.path.join(os.fsencode(tree), top))
    want = expected_snapshot(tree, EPOCH)
    if not compress:
        got, inos = erofs_tree(img)
        assert got == want
        for group in hardlink_groups(tree):
            assert len({inos[p] for p in group}) == 1
        return
    with open(img, "rb") as f:
        listed = {i.path: i for i in erofs.read_tree(f)}
        assert set(listed) - {b""} == set(want)
        for path, rec in want.items():
            ino = listed[path]
            assert (stat.S_IFMT(ino.mode), stat.S_IMODE(ino.mode), ino.uid, ino.gid, ino.xattrs) == (
                rec["type"], rec["mode"], rec["uid"], rec["gid"], rec["xattrs"]), path
        squeezed = [i for i in listed.values() if i.compressed]
        assert squeezed, "lz4hc compressed nothing"
        with pytest.raises(ValueError, match="compressed"):
            erofs.read_file(f, squeezed[0])


def test_identical_input_gives_identical_bytes(tree: Path, image: Path, tmp_path: Path) -> None:
    again = tmp_path / "again.erofs"
    write(tree, again)
    assert again.read_bytes() == image.read_bytes()
    # the fallback path (no real file descriptor) writes the same bytes
    buf = io.BytesIO(b"prefix")
    buf.seek(6)
    size = erofs.write_image(entries(tree), buf, tree_root=os.fsencode(tree), uuid=UUID, mtime=EPOCH)
    assert buf.getvalue()[6:] == image.read_bytes() and size == len(buf.getvalue()) - 6
    # and an image written at an offset inside a file reads back from there
    with open(tmp_path / "off", "wb") as f:
        f.write(b"\xaa" * 8192)
        erofs.write_image(entries(tree), f, tree_root=os.fsencode(tree), uuid=UUID, mtime=EPOCH)
    assert erofs_tree(tmp_path / "off", 8192)[0] == expected_snapshot(tree, EPOCH)


def test_changes_change_the_image(tree: Path, image: Path, tmp_path: Path) -> None:
    base = image.read_bytes()
    other = tmp_path / "o.erofs"
    write(tree, other, mtime=EPOCH + 1)
    assert other.read_bytes() != base
    ents = entries(tree)
    for e in ents:
        if e.path == b"usr/lib/big":
            e.data = b"different"
    buf = io.BytesIO()
    erofs.write_image(ents, buf, tree_root=os.fsencode(tree), uuid=UUID, mtime=EPOCH)
    assert buf.getvalue() != base
    with io.BytesIO(buf.getvalue()) as f:
        big = next(i for i in erofs.read_tree(f) if i.path == b"usr/lib/big")
        assert erofs.read_file(f, big) == b"different"


def test_synthesised_entries_and_root(tmp_path: Path) -> None:
    ents = [
        FsEntry(path=b"", mode=stat.S_IFDIR | 0o700, uid=7, gid=8),
        FsEntry(path=b"usr", mode=stat.S_IFDIR | 0o755),
        FsEntry(path=b"usr/lib", mode=stat.S_IFDIR | 0o755),
        FsEntry(path=b"usr/lib/extension-release.d", mode=stat.S_IFDIR | 0o755),
        FsEntry(path=b"usr/lib/extension-release.d/extension-release.foo", mode=stat.S_IFREG | 0o644,
                data=b"ID=_any\n", xattrs={b"user.extension-release.strict": b"0"}),
        FsEntry(path=b"usr/lib/huge", mode=stat.S_IFREG | 0o644, data=bytes(5 << 20) + b"end"),
    ]
    buf = io.BytesIO()
    erofs.write_image(ents, buf, tree_root=b"/nonexistent", uuid=UUID)
    f = io.BytesIO(buf.getvalue())
    got = {i.path: i for i in erofs.read_tree(f)}
    assert (stat.S_IMODE(got[b""].mode), got[b""].uid, got[b""].gid, got[b""].mtime) == (0o700, 7, 8, 0)
    rel = got[b"usr/lib/extension-release.d/extension-release.foo"]
    assert erofs.read_file(f, rel) == b"ID=_any\n"
    assert rel.xattrs == {b"user.extension-release.strict": b"0"}
    assert erofs.read_file(f, got[b"usr/lib/huge"])[-4:] == b"\0end"


def test_extended_inodes_for_big_ids_and_nlink(tmp_path: Path) -> None:
    ents = [FsEntry(path=b"d", mode=stat.S_IFDIR | 0o755, uid=70000, gid=2**32 - 2)]
    ents += [FsEntry(path=b"d/f", mode=stat.S_IFREG | 0o644, data=b"x", uid=65536)]
    buf = io.BytesIO()
    erofs.write_image(ents, buf, tree_root=b"/", uuid=UUID, mtime=5)
    got = {i.path: i for i in erofs.read_tree(io.BytesIO(buf.getvalue()))}
    assert (got[b"d"].uid, got[b"d"].gid, got[b"d"].mtime) == (70000, 2**32 - 2, 5)
    assert got[b"d/f"].uid == 65536


def test_bad_input_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="cannot be stored in EROFS"):
        erofs.write_image([FsEntry(path=b"f", mode=stat.S_IFREG | 0o644, data=b"", xattrs={b"os2.x": b"1"})],
                          io.BytesIO(), tree_root=b"/", uuid=UUID)
    with pytest.raises(ValueError, match="before its parent"):
        erofs.write_image([FsEntry(path=b"a/b", mode=stat.S_IFREG | 0o644, data=b"")],
                          io.BytesIO(), tree_root=b"/", uuid=UUID)
    with pytest.raises(UserError, match="longer than 255"):
        erofs.write_image([FsEntry(path=b"n" * 256, mode=stat.S_IFREG | 0o644, data=b"")],
                          io.BytesIO(), tree_root=b"/", uuid=UUID)


def test_file_changed_during_packing_is_reported(tmp_path: Path) -> None:
    (tmp_path / "usr").mkdir()
    (tmp_path / "usr" / "f").write_bytes(b"abc" * 5000)
    ents = list(fsentry.walk_selection(os.fsencode(tmp_path), [b"usr"]))
    (tmp_path / "usr" / "f").write_bytes(b"abc")
    with pytest.raises(UserError, match="changed size"):
        erofs.write_image(ents, io.BytesIO(), tree_root=os.fsencode(tmp_path), uuid=UUID)


def test_progress_and_cancel(tree: Path, tmp_path: Path) -> None:
    events = []
    rep = Reporter(events.append)
    size = write(tree, tmp_path / "p.erofs", reporter=rep, task="t")
    assert events[-1].done == events[-1].total == size and all(e.task == "t" for e in events)

    def cancel_soon(ev) -> None:
        rep2.cancel()  # on the first event: the writer must notice before it finishes

    rep2 = Reporter(cancel_soon)
    with pytest.raises(Cancelled):
        write(tree, tmp_path / "c.erofs", reporter=rep2)


def fix_checksum(img: bytearray) -> None:
    img[1028:1032] = b"\0\0\0\0"
    img[1028:1032] = struct.pack("<I", erofs.crc32c(bytes(img[1024:4096])))


def read_all(data: bytes) -> None:
    f = io.BytesIO(data)
    for ino in erofs.read_tree(f):
        if stat.S_ISREG(ino.mode):
            erofs.read_file(f, ino)


def test_corrupt_images_raise_value_error(image: Path) -> None:
    good = image.read_bytes()
    read_all(good)
    for bad, msg in [
        (b"\0" * 8192, "magic"),
        (good[:3000], "too short|truncated|outside"),
        (good[:8192], "truncated"),
        (good[:1028] + b"\1\2\3\4" + good[1032:], "checksum"),
    ]:
        with pytest.raises(ValueError, match=msg):
            read_all(bad)
    # a subdirectory whose entry points back at the root: a loop, not a hang
    img = bytearray(good)
    with io.BytesIO(good) as f:
        usr = next(i for i in erofs.read_tree(f) if i.path == b"usr")
    root_dirents = bytes(img[36 * 32 + 32: 36 * 32 + 32 + 4 * 12])
    at = root_dirents.find(struct.pack("<Q", usr.ino))
    assert at >= 0
    img[36 * 32 + 32 + at: 36 * 32 + 32 + at + 8] = struct.pack("<Q", 36)
    fix_checksum(img)
    with pytest.raises(ValueError, match="loop|'\\.\\.'"):
        read_all(bytes(img))
    # random damage to metadata: either still readable or a ValueError, never anything else
    rnd = random.Random(7)
    meta_end = min(len(good), 64 * 1024)  # metadata and the big directory's blocks
    for _ in range(500):
        img = bytearray(good)
        for _ in range(rnd.randint(1, 8)):
            img[rnd.randrange(1152, meta_end)] = rnd.randrange(256)
        fix_checksum(img)
        with contextlib.suppress(ValueError):
            read_all(bytes(img))
