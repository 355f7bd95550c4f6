"""Benchmark: our dm-verity hash tree against ``veritysetup format`` on the same 1 GiB file.

Both run in this process's run, interleaved, on the same warm file with the same salt, UUID and
block sizes, best of N; the root hashes and the whole hash devices must agree. Printed: the
ratio ours / veritysetup against the target (issue 17: <= 0.7x), and ours with one hashing
process too (``--workers`` sets the hashing processes of the main figure, ours plus helpers;
default: the usable CPUs).
Usage: python bench/verity.py [--size-mib 1024] [--runs 3] [--workers N] [--keep] [--file PATH]
"""

from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from sysextant.core.formats import verity


def make_data(path: Path, size: int) -> None:
    """Deterministic pseudo-random content, written in 16 MiB pieces (fast: one PRNG block reused
    with a changing counter prefix, so no two 4 KiB blocks are equal)."""
    rng = random.Random(20240501)
    piece = bytearray(rng.randbytes(16 << 20))
    with open(path, "wb") as f:
        written = 0
        n = 0
        while written < size:
            for off in range(0, len(piece), 4096):
                piece[off:off + 8] = (n * 4096 + off).to_bytes(8, "little")
            chunk = piece[: min(len(piece), size - written)]
            f.write(chunk)
            written += len(chunk)
            n += 1


TARGET = 0.7


def runs(times: list[float]) -> str:
    return ", ".join(f"{t:.3f}" for t in times)


def time_ours(data: Path, out: Path, salt: bytes, uid: bytes, workers: int | None) -> tuple[float, str]:
    size = data.stat().st_size
    start = time.perf_counter()
    with open(data, "rb") as d, open(out, "wb") as h:
        res = verity.hash_tree(d, 0, size, h, salt=salt, uuid=uid, workers=workers)
    return time.perf_counter() - start, res.root_hash.hex()


def time_veritysetup(data: Path, out: Path, salt: bytes, uid: bytes) -> tuple[float, str]:
    out.unlink(missing_ok=True)
    start = time.perf_counter()
    run = subprocess.run(["veritysetup", "format", "--salt", salt.hex(), "--uuid", str(uuid.UUID(bytes=uid)),
                          "--hash", "sha256", "--data-block-size", "4096", "--hash-block-size", "4096",
                          str(data), str(out)], capture_output=True, text=True, check=True)
    elapsed = time.perf_counter() - start
    return elapsed, re.search(r"Root hash:\s+([0-9a-f]{64})", run.stdout).group(1)


def default_file() -> Path:
    """In RAM (/dev/shm) when there is one: both tools then measure hashing, not page-cache churn."""
    shm = Path("/dev/shm")
    where = shm if shm.is_dir() and os.access(shm, os.W_OK) else Path(tempfile.gettempdir())
    return where / "sysextant-bench-verity.dat"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--workers", type=int, default=None, help="hashing processes (default: usable CPUs)")
    ap.add_argument("--keep", action="store_true", help="keep the data file for the next run")
    ap.add_argument("--file", type=Path, default=default_file(),
                    help="data file (default: in /dev/shm when it exists, so no run reads from disk)")
    args = ap.parse_args()
    if shutil.which("veritysetup") is None:
        print("veritysetup not installed (Debian package cryptsetup-bin)", file=sys.stderr)
        return 2
    size = args.size_mib << 20
    if not args.file.exists() or args.file.stat().st_size != size:
        t = time.perf_counter()
        make_data(args.file, size)
        print(f"made {args.size_mib} MiB test data in {time.perf_counter() - t:.1f} s")
    salt, uid = verity.derive_salt_uuid(b"bench")
    ours_out = args.file.with_suffix(".ours")
    ref_out = args.file.with_suffix(".ref")
    try:
        with open(args.file, "rb") as f:  # warm the page cache so both start equal
            while f.read(16 << 20):
                pass
        workers = args.workers or verity.default_workers()
        ours, one, ref = [], [], []
        same = True
        for _ in range(args.runs):  # interleaved, so drift in machine load hits all
            t, r1 = time_veritysetup(args.file, ref_out, salt, uid)
            ref.append(t)
            for times, n in ((ours, workers), (one, 1)):
                t, r2 = time_ours(args.file, ours_out, salt, uid, n)
                times.append(t)
                if r1 != r2:
                    print(f"ROOT HASH MISMATCH ({n} workers): veritysetup {r1}, ours {r2}", file=sys.stderr)
                    return 1
                same = same and ours_out.read_bytes() == ref_out.read_bytes()
        best_ours, best_one, best_ref = min(ours), min(one), min(ref)
        mib = size / (1 << 20)
        print(f"data: {mib:.0f} MiB, root hash {r1}, hash devices byte-identical: {same}")
        print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at the end")
        print(f"veritysetup format:               {best_ref:.3f} s ({mib / best_ref:.0f} MiB/s)  runs {runs(ref)}")
        print(f"sysextant verity, {workers} process(es): {best_ours:.3f} s ({mib / best_ours:.0f} MiB/s)  "
              f"runs {runs(ours)}")
        print(f"sysextant verity, 1 process:      {best_one:.3f} s ({mib / best_one:.0f} MiB/s)  runs {runs(one)}")
        ratio = best_ours / best_ref
        print(f"ratio (ours / veritysetup, best of {args.runs}): {ratio:.2f}x "
              f"(target <= {TARGET:.2f}x: {'met' if ratio <= TARGET else 'NOT met'}); "
              f"1 process {best_one / best_ref:.2f}x")
        return 0 if same else 1
    finally:
        for p in (ours_out, ref_out):
            p.unlink(missing_ok=True)
        if not args.keep:
            args.file.unlink(missing_ok=True)


if __name__ == "__main__":
    raise SystemExit(main())
