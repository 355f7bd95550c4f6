"""Shared builders for the DDI and verify tests: a staged sysext tree, real filesystems, a key."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
from pathlib import Path

from sysextant.core import keys

MKFS_EROFS = shutil.which("mkfs.erofs")
MKSQUASHFS = shutil.which("mksquashfs")
UNSQUASHFS = shutil.which("unsquashfs")
FS_UUID = "01234567-89ab-4def-8123-456789abcdef"


def stage(root: Path, release_name: str = "foo", *, strict0: bool = False, extra: dict[str, bytes] | None = None,
          release: bytes = b"ID=_any\nARCHITECTURE=x86-64\n") -> Path:
    """A small sysext tree: an extension-release file, a binary, a ~600 KiB data file, /opt."""
    (root / "usr/lib/extension-release.d").mkdir(parents=True)
    rel = root / "usr/lib/extension-release.d" / f"extension-release.{release_name}"
    rel.write_bytes(release)
    if strict0:
        os.setxattr(rel, "user.extension-release.strict", b"0")
    (root / "usr/bin").mkdir()
    (root / "usr/bin/hello").write_text("#!/bin/sh\necho hello\n")
    (root / "usr/bin/hello").chmod(0o755)
    (root / "usr/share/foo").mkdir(parents=True)
    # Enough data for two verity levels (more than 128 blocks).
    (root / "usr/share/foo/blob").write_bytes(random.Random(5).randbytes(600 * 1024))
    (root / "opt/foo").mkdir(parents=True)
    (root / "opt/foo/readme").write_text("opt content\n")
    for rel_path, data in (extra or {}).items():
        p = root / rel_path
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    return root


def make_erofs(tree: Path, out: Path) -> Path:
    subprocess.run([MKFS_EROFS, "-T0", "-U", FS_UUID, "--all-root", str(out), str(tree)], check=True,
                   capture_output=True)
    return out


def make_squashfs(tree: Path, out: Path, *, pad: bool = True) -> Path:
    subprocess.run([MKSQUASHFS, str(tree), str(out), "-reproducible", "-mkfs-time", "0", "-all-time", "0",
                    "-all-root", "-noappend", "-quiet", "-no-progress"] + ([] if pad else ["-nopad"]),
                   check=True, capture_output=True)
    return out


def demo_signer(folder: Path) -> keys.Signer:
    key_pem, cert_pem = keys.generate_demo_pair()
    folder.mkdir(parents=True, exist_ok=True)
    key = folder / "db.key"
    fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(key_pem)
    (folder / "db.pem").write_bytes(cert_pem)
    return keys.load_signer(key, folder / "db.pem")


def erofs_reader_available() -> bool:
    try:
        from sysextant.core.formats import erofs  # noqa: F401
    except ImportError:
        return False
    return True
