#!/usr/bin/env python3
"""Scan speed against `du -s` on the same tree in the same run, and index memory per entry.

    python bench/scan.py [TREE ...]     (default: the demo tree, generated in a temp dir, and /usr)

Both are timed warm (one untimed pass first), best of --runs. Target: ratio at most 2.0.
"""

from __future__ import annotations

import argparse
import gc
import os
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

from sysextant.core.demo import generate_tree
from sysextant.core.tree.index import scan


def best(fn, runs: int) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def bench(tree: str, runs: int) -> dict:
    du = ["du", "-s", tree]
    subprocess.run(du, capture_output=True)  # warm the dentry/inode caches
    scan(tree)
    t_du = best(lambda: subprocess.run(du, capture_output=True), runs)
    t_ours = best(lambda: scan(tree), runs)
    gc.collect()
    tracemalloc.start()
    index = scan(tree)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    entries = len(index)
    return {"tree": tree, "entries": entries, "du_s": t_du, "ours_s": t_ours, "ratio": t_ours / t_du,
            "peak_bytes_per_entry": peak / entries}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("trees", nargs="*")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    trees = list(args.trees)
    tmp = None
    if not trees:
        tmp = tempfile.TemporaryDirectory(prefix="sysextant-bench-")
        demo = Path(tmp.name) / "rootfs"
        generate_tree(demo)
        trees = [str(demo), "/usr"]
    print(f"{'tree':<40} {'entries':>9} {'du -s':>8} {'scan':>8} {'ratio':>6} {'peak B/entry':>13}")
    worst = 0.0
    for tree in trees:
        r = bench(tree, args.runs)
        worst = max(worst, r["ratio"])
        print(f"{r['tree'][-40:]:<40} {r['entries']:>9,} {r['du_s']:>7.3f}s {r['ours_s']:>7.3f}s "
              f"{r['ratio']:>5.2f}x {r['peak_bytes_per_entry']:>12.0f}")
    print(f"worst ratio {worst:.2f}x (target <= 2.0x); python {sys.version.split()[0]}, {os.cpu_count()} cpus")
    if tmp:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
