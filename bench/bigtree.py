#!/usr/bin/env python3
"""A large synthetic OS-shaped tree for the scale benchmarks: ``folders`` x ``files`` small files.

    python bench/bigtree.py DIR [--folders 1000] [--files 1000]

The default is 1,000,000 files under ``DIR/usr/share/big/dNNNN/`` (plus ``usr/lib/os-release``
so the tree reads as an OS), each 16-2,064 bytes of text-like content that varies with its
name, so compressors see realistic, not degenerate, data. About 30 s and ~4.5 GB of inodes'
worth on a 2-core machine; :func:`big_tree` is a context manager that removes it afterwards.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

WORDS = (b"kernel module firmware library locale systemd extension image verity signature "
         b"initrd overlay merge hierarchy package binary config default vendor").split()


def make_big_tree(root: Path, folders: int = 1000, files: int = 1000) -> int:
    """Write the tree under ``root`` (created); returns the number of entries written."""
    base = root / "usr" / "share" / "big"
    (root / "usr" / "lib").mkdir(parents=True, exist_ok=True)
    (root / "usr" / "lib" / "os-release").write_bytes(b'ID=bigtree\nNAME="Big tree"\nVERSION_ID=1\n')
    n = 2
    nw = len(WORDS)
    for d in range(folders):
        folder = base / f"d{d:04d}"
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            for f in range(files):
                k = d * files + f
                body = b" ".join(WORDS[(k * 7 + j) % nw] for j in range(2 + k % 257)) + b"\n"
                out = os.open(f"f{f:04d}.txt", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644, dir_fd=fd)
                try:
                    os.write(out, body)
                finally:
                    os.close(out)
        finally:
            os.close(fd)
        n += files + 1
    return n


@contextlib.contextmanager
def big_tree(folders: int = 1000, files: int = 1000, parent: str | None = None) -> Iterator[Path]:
    """A temporary big tree, removed on exit."""
    tmp = Path(tempfile.mkdtemp(prefix="sysextant-bigtree-", dir=parent))
    try:
        make_big_tree(tmp / "root", folders, files)
        yield tmp / "root"
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dir", type=Path)
    ap.add_argument("--folders", type=int, default=1000)
    ap.add_argument("--files", type=int, default=1000)
    a = ap.parse_args()
    n = make_big_tree(a.dir, a.folders, a.files)
    print(f"{a.dir}: {n:,} entries")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
