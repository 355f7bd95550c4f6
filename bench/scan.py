#!/usr/bin/env python3
"""Scan speed against `du -s` on the same tree in the same run, and index memory per entry.

    python bench/scan.py [TREE ...] [--runs N] [--no-big]

Default trees: the demo tree (generated in a temp dir), /usr, and a 1,000,000-entry tree
(bench/bigtree.py's ``big_tree()``, generated in a temp dir and removed afterwards). Both tools
are timed warm (one untimed pass of each first), runs interleaved (du, scan, du, scan, ...) so
a noisy moment hits both, best of --runs. Target: scan at most 1.2x `du -s` on every tree.

Memory: ``held B/entry`` is what the finished TreeIndex keeps (tracemalloc's traced bytes
after the scan, the listing buffers freed, divided by the entries); ``peak B/entry`` is the
traced peak during the scan.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bigtree import big_tree  # noqa: E402

from sysextant.core.demo import generate_tree  # noqa: E402
from sysextant.core.tree.index import scan  # noqa: E402

TARGET = 1.2


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def bench(label: str, tree: str, runs: int) -> dict:
    du = ["du", "-s", tree]

    def run_du() -> None:
        subprocess.run(du, capture_output=True, check=False)

    def run_scan() -> None:
        scan(tree)
        gc.collect()  # the previous index is freed outside the timed part of the next run

    run_du()  # warm the dentry/inode caches
    run_scan()
    t_du, t_ours = [], []
    for _ in range(runs):
        t_du.append(timed(run_du))
        t_ours.append(timed(lambda: scan(tree)))
        gc.collect()
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    index = scan(tree)
    held, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    entries = len(index)
    del index
    gc.collect()
    return {"tree": label, "entries": entries, "du_s": min(t_du), "ours_s": min(t_ours),
            "ratio": min(t_ours) / min(t_du), "held": (held - base) / entries, "peak": (peak - base) / entries}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("trees", nargs="*")
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--no-big", action="store_true", help="leave out the 1,000,000-entry tree")
    args = parser.parse_args()
    print(f"{'tree':<30} {'entries':>9} {'du -s':>8} {'scan':>8} {'ratio':>6} {'held B/entry':>13} "
          f"{'peak B/entry':>13}", flush=True)
    worst = 0.0
    with contextlib.ExitStack() as stack:
        if args.trees:
            trees = [(t, t) for t in args.trees]
        else:
            tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="sysextant-bench-"))
            demo = Path(tmp) / "rootfs"
            generate_tree(demo)
            trees = [("demo", str(demo)), ("/usr", "/usr")]
            if not args.no_big:
                trees.append(("1,000,000-entry tree", None))
        for label, tree in trees:
            if tree is None:
                tree = str(stack.enter_context(big_tree()))
            r = bench(label, tree, args.runs)
            worst = max(worst, r["ratio"])
            mark = "ok" if r["ratio"] <= TARGET else "OVER"
            print(f"{r['tree'][-30:]:<30} {r['entries']:>9,} {r['du_s']:>7.3f}s {r['ours_s']:>7.3f}s "
                  f"{r['ratio']:>5.2f}x {r['held']:>13.0f} {r['peak']:>13.0f}  {mark}", flush=True)
    print(f"worst ratio {worst:.2f}x (target <= {TARGET}x on every tree); "
          f"python {sys.version.split()[0]}, {os.cpu_count()} cpus")
    return 0 if worst <= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
