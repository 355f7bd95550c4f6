"""Images made by mksquashfs and mkfs.erofs from staged entries, checked with their own readers.

Oracles: ``unsquashfs -d DIR -f`` (content, types, modes, ownership, xattrs, hardlinks, mtime)
and ``unsquashfs -lln`` (numeric owners as stored); ``fsck.erofs`` and ``fsck.erofs --extract``
for mkfs.erofs images (xattrs through our reader, see test_erofs.py for what 1.5 restores).
"""

from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from fs_tree import (
    CAP_NET_RAW_EP,
    build_tree,
    entries,
    erofs_tree,
    expected_snapshot,
    hardlink_groups,
    snapshot,
)

from sysextant.core.errors import Cancelled, MissingToolError, UserError
from sysextant.core.formats import mkfs
from sysextant.core.progress import Reporter
from sysextant.core.tree.fsentry import FsEntry

EPOCH = 1_600_000_000
UUID = bytes.fromhex("00112233445566778899aabbccddeeff")

needs_squashfs = pytest.mark.skipif(
    not (shutil.which("mksquashfs") and shutil.which("unsquashfs")), reason="squashfs-tools not installed"
)
needs_erofs_utils = pytest.mark.skipif(
    not (shutil.which("mkfs.erofs") and shutil.which("fsck.erofs")), reason="erofs-utils not installed"
)


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if os.geteuid() != 0:
        pytest.skip("the test tree needs root (device nodes, ownership)")
    return build_tree(tmp_path_factory.mktemp("mkfs") / "root")


@pytest.fixture(autouse=True)
def private_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Staging goes to a temp dir of this test alone, so leftovers can be seen."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", os.fspath(tmp))
    return tmp


def run(*args: str | os.PathLike[str]) -> str:
    proc = subprocess.run([os.fspath(a) for a in args], capture_output=True, text=True, errors="replace")
    assert proc.returncode == 0, f"{args[0]} failed: {proc.stdout}{proc.stderr}"
    return proc.stdout


def squash(tree: Path, out: Path, compression: str = "zstd") -> int:
    return mkfs.write_squashfs(entries(tree), out, tree_root=os.fsencode(tree), compression=compression, mtime=EPOCH)


@needs_squashfs
def test_squashfs_keeps_everything(tree: Path, tmp_path: Path, private_tmp: Path) -> None:
    img = tmp_path / "a.squashfs"
    size = squash(tree, img)
    assert size == img.stat().st_size > 0
    assert list(private_tmp.iterdir()) == []
    out = tmp_path / "x"
    run("unsquashfs", "-xattrs", "-d", out, "-f", img)
    assert snapshot(out) == expected_snapshot(tree, EPOCH)
    assert os.getxattr(out / "usr/lib/two", "security.capability") == CAP_NET_RAW_EP
    got_groups = hardlink_groups(out)
    assert sorted(map(sorted, got_groups)) == sorted(map(sorted, hardlink_groups(tree)))
    root = os.lstat(out)
    assert (stat.S_IMODE(root.st_mode), root.st_uid, root.st_gid) == (0o755, 0, 0)
    listing = run("unsquashfs", "-lln", img)
    assert any(" 100000/100001 " in line and line.endswith("/usr/lib/bigowner") for line in listing.splitlines())
    assert any(line.startswith("-rwsr-xr-x 0/0 ") for line in listing.splitlines())


@needs_squashfs
def test_squashfs_is_reproducible_and_sensitive(tree: Path, tmp_path: Path) -> None:
    squash(tree, tmp_path / "1", "gzip")
    squash(tree, tmp_path / "2", "gzip")
    assert (tmp_path / "1").read_bytes() == (tmp_path / "2").read_bytes()
    ents = entries(tree)
    next(e for e in ents if e.path == b"usr/lib/small").data = b"changed\n"
    mkfs.write_squashfs(ents, tmp_path / "3", tree_root=os.fsencode(tree), compression="gzip", mtime=EPOCH)
    assert (tmp_path / "3").read_bytes() != (tmp_path / "1").read_bytes()


@needs_squashfs
def test_squashfs_with_source_date_epoch_set(tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Reproducible-build environments set SOURCE_DATE_EPOCH; mksquashfs refuses it next to the
    -mkfs-time/-all-time options we pass, so the variable must not reach it."""
    squash(tree, tmp_path / "1", "gzip")
    monkeypatch.setenv("SOURCE_DATE_EPOCH", str(EPOCH))
    squash(tree, tmp_path / "2", "gzip")
    assert (tmp_path / "1").read_bytes() == (tmp_path / "2").read_bytes()


@needs_squashfs
def test_squashfs_uncompressed(tree: Path, tmp_path: Path) -> None:
    img = tmp_path / "n.squashfs"
    squash(tree, img, "none")
    out = tmp_path / "x"
    run("unsquashfs", "-d", out, "-f", img)
    assert snapshot(out) == expected_snapshot(tree, EPOCH)


@needs_squashfs
def test_squashfs_without_root_uses_pseudo_definitions(tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """As an ordinary user lchown and mknod fail: ownership and devices must still arrive."""
    real_mknod = os.mknod

    def no_chown(*_a, **_k):
        raise PermissionError(1, "Operation not permitted")

    def mknod(path, mode=0o600, device=0, **kw):
        if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
            raise PermissionError(1, "Operation not permitted")
        return real_mknod(path, mode, device, **kw)

    ents = [e for e in entries(tree) if b"\n" not in e.path]
    monkeypatch.setattr(os, "lchown", no_chown)
    monkeypatch.setattr(os, "chown", no_chown)
    monkeypatch.setattr(os, "mknod", mknod)
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    img = tmp_path / "p.squashfs"
    mkfs.write_squashfs(ents, img, tree_root=os.fsencode(tree), compression="gzip", mtime=EPOCH)
    monkeypatch.undo()
    out = tmp_path / "x"
    run("unsquashfs", "-d", out, "-f", img)
    want = {p: r for p, r in expected_snapshot(tree, EPOCH).items() if p in {e.path for e in ents}}
    assert snapshot(out) == want
    with pytest.raises(UserError, match="newline|cannot be written"):
        monkeypatch.setattr(os, "lchown", no_chown)
        monkeypatch.setattr(os, "geteuid", lambda: 1000)
        mkfs.write_squashfs(
            [FsEntry(path=b"a\nb", mode=stat.S_IFREG | 0o644, uid=5, data=b"")], tmp_path / "q",
            tree_root=b"/", compression="gzip",
        )
    assert not (tmp_path / "q").exists()


@needs_erofs_utils
def test_mkfs_erofs_without_root_refuses_to_drop_ownership(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_chown(*_a, **_k):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "lchown", no_chown)
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(UserError, match="only when the build runs as root"):
        mkfs.write_erofs_tool([FsEntry(path=b"f", mode=stat.S_IFREG | 0o644, uid=5, data=b"x")],
                              tmp_path / "e", tree_root=b"/", compression="lz4hc", uuid=UUID)
    assert not (tmp_path / "e").exists()


@needs_erofs_utils
@pytest.mark.parametrize("compression", ["lz4hc", "none"])
def test_mkfs_erofs_image_checks_and_extracts(tree: Path, tmp_path: Path, compression: str, private_tmp: Path) -> None:
    img = tmp_path / "t.erofs"
    size = mkfs.write_erofs_tool(entries(tree), img, tree_root=os.fsencode(tree), compression=compression,
                                 uuid=UUID, mtime=EPOCH)
    assert size == img.stat().st_size and size % 4096 == 0
    assert list(private_tmp.iterdir()) == []
    run("fsck.erofs", img)
    assert "00112233-4455-6677-8899-aabbccddeeff" in run("dump.erofs", "-s", img)
    out = tmp_path / "x"
    run("fsck.erofs", f"--extract={out}", img)
    want = expected_snapshot(tree, EPOCH)
    got = snapshot(out, xattrs=False)
    for path, rec in want.items():
        rec = dict(rec)
        rec.pop("xattrs")
        if rec["type"] == stat.S_IFREG:
            rec["mode"] &= ~0o6000  # fsck.erofs 1.5 chowns after chmod: setuid dropped on extraction
        assert got[path] == rec, path
    assert set(got) == set(want)
    if compression == "none":
        assert erofs_tree(img)[0] == want


@needs_erofs_utils
def test_mkfs_erofs_is_reproducible(tree: Path, tmp_path: Path) -> None:
    for name in ("1", "2"):
        mkfs.write_erofs_tool(entries(tree), tmp_path / name, tree_root=os.fsencode(tree),
                              compression="lz4hc", uuid=UUID, mtime=EPOCH)
    assert (tmp_path / "1").read_bytes() == (tmp_path / "2").read_bytes()


def test_cancel_terminates_the_child(tree: Path, tmp_path: Path, private_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    slow = tmp_path / "slow-mksquashfs"
    slow.write_text("#!/bin/sh\nexec sleep 60\n")
    slow.chmod(0o755)
    monkeypatch.setattr(mkfs, "find_tool", lambda *a: os.fspath(slow))
    children: list[subprocess.Popen] = []
    real_popen = subprocess.Popen

    def popen(*a, **kw):
        proc = real_popen(*a, **kw)
        children.append(proc)
        return proc

    monkeypatch.setattr(subprocess, "Popen", popen)

    def on_event(ev) -> None:
        if ev.message:  # the command line is logged once the child runs
            rep.cancel()

    rep = Reporter(on_event)
    out = tmp_path / "c.squashfs"
    start = time.monotonic()
    with pytest.raises(Cancelled):
        mkfs.write_squashfs(entries(tree), out, tree_root=os.fsencode(tree), compression="gzip", reporter=rep)
    assert time.monotonic() - start < 20
    assert len(children) == 1 and children[0].returncode == -signal.SIGTERM
    assert not out.exists()
    assert list(private_tmp.iterdir()) == []


def test_missing_tool_names_the_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", os.fspath(tmp_path))
    monkeypatch.setattr(os, "access", lambda *a, **k: False)
    with pytest.raises(MissingToolError, match="squashfs-tools"):
        mkfs.write_squashfs([], tmp_path / "o", tree_root=b"/", compression="gzip")
    with pytest.raises(MissingToolError, match="erofs-utils"):
        mkfs.write_erofs_tool([], tmp_path / "o", tree_root=b"/", compression="lz4", uuid=UUID)


def test_bad_compression_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="compression"):
        mkfs.write_squashfs([], tmp_path / "o", tree_root=b"/", compression="brotli")
    with pytest.raises(UserError, match="compression"):
        mkfs.write_erofs_tool([], tmp_path / "o", tree_root=b"/", compression="zstd", uuid=UUID)
