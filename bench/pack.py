"""Benchmark: the built-in EROFS writer against ``mkfs.erofs`` (uncompressed) on the same tree.

Usage: ``python bench/pack.py [--tree DIR] [--runs 3] [--keep]``. Without ``--tree`` a
deterministic tree is generated (about 3000 files, ~300 MB: many small files, some medium ones,
a few large). Both writers run in the same process run, alternately, ``--runs`` times each; prints both times,
throughputs, image sizes and the ratio ``ours/mkfs.erofs`` (below 1 means we are faster): best against best, and the median of the
side-by-side pairs. ``BENCH_DIR`` puts the work folder elsewhere (``/dev/shm`` takes the disk out of the figure).
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sysextant.core.formats import erofs
from sysextant.core.tree import fsentry

UUID = bytes(range(16))


def generate(root: Path, seed: int = 42) -> None:
    """A deterministic usr/ tree of mixed file sizes."""
    rnd = random.Random(seed)
    plan = [(2500, 100, 8 << 10), (450, 8 << 10, 600 << 10), (10, 5 << 20, 25 << 20)]
    n = 0
    for count, lo, hi in plan:
        for _ in range(count):
            d = root / "usr" / f"d{rnd.randrange(40):02d}" / f"s{rnd.randrange(8)}"
            d.mkdir(parents=True, exist_ok=True)
            (d / f"file{n:05d}.bin").write_bytes(rnd.randbytes(rnd.randrange(lo, hi)))
            n += 1
    for i in range(200):
        link = root / "usr" / f"link{i:03d}"
        link.symlink_to(f"d{i % 40:02d}")


def tree_bytes(root: Path) -> tuple[int, int]:
    files = size = 0
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            st = os.lstat(os.path.join(dirpath, name))
            files += 1
            size += st.st_size if not os.path.islink(os.path.join(dirpath, name)) else 0
    return files, size


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def interleaved(a, b, runs: int) -> tuple[list[float], list[float]]:
    """Time ``a`` and ``b`` alternately, ``runs`` times each: a slow minute of the machine (writeback, another
    process) then lands on both writers instead of on whichever happened to run during it."""
    ta, tb = [], []
    for i in range(runs):
        first, second = (a, b) if i % 2 == 0 else (b, a)
        t1, t2 = timed(first), timed(second)
        if first is a:
            ta.append(t1), tb.append(t2)
        else:
            ta.append(t2), tb.append(t1)
    return ta, tb


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tree", type=Path, help="pack this directory instead of a generated one")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--keep", action="store_true", help="keep the generated tree and images")
    args = ap.parse_args(argv)
    mkfs = shutil.which("mkfs.erofs")
    if mkfs is None:
        print("mkfs.erofs (erofs-utils) is not installed", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="sysextant-bench-", dir=os.environ.get("BENCH_DIR")))
    try:
        root = args.tree
        if root is None:
            root = work / "tree"
            t0 = time.perf_counter()
            generate(root)
            print(f"generated tree in {time.perf_counter() - t0:.1f} s")
        files, size = tree_bytes(root)
        print(f"tree: {root} ({files} files, {size / 1e6:.0f} MB)")
        broot = os.fsencode(root)
        tops = sorted(os.listdir(broot))
        ours_img, theirs_img = work / "ours.erofs", work / "mkfs.erofs"

        def ours() -> None:
            entries = fsentry.walk_selection(broot, tops)
            with open(ours_img, "wb") as f:
                erofs.write_image(entries, f, tree_root=broot, uuid=UUID)

        def theirs() -> None:
            subprocess.run([mkfs, "--quiet", "-T0", "-U", "00010203-0405-0607-0809-0a0b0c0d0e0f",
                            os.fspath(theirs_img), os.fspath(root)], check=True)

        ours()  # warm the page cache for both
        all_ours, all_theirs = interleaved(ours, theirs, args.runs)
        t_ours, t_theirs = min(all_ours), min(all_theirs)
        pairs = sorted(o / t for o, t in zip(all_ours, all_theirs, strict=True))
        s_ours, s_theirs = ours_img.stat().st_size, theirs_img.stat().st_size
        print(f"ours:       {t_ours:7.3f} s  {size / t_ours / 1e6:7.0f} MB/s  image {s_ours / 1e6:8.1f} MB")
        print(f"mkfs.erofs: {t_theirs:7.3f} s  {size / t_theirs / 1e6:7.0f} MB/s  image {s_theirs / 1e6:8.1f} MB")
        print(f"ratio ours/mkfs.erofs: time {t_ours / t_theirs:.2f} (best of each), "
              f"{statistics.median(pairs):.2f} median of the {len(pairs)} side-by-side pairs "
              f"({pairs[0]:.2f}-{pairs[-1]:.2f}), size {s_ours / s_theirs:.4f}")
        if shutil.which("fsck.erofs"):
            subprocess.run(["fsck.erofs", os.fspath(ours_img)], check=True, capture_output=True)
            print("fsck.erofs: our image is clean")
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
