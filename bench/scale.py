#!/usr/bin/env python3
"""`sysextant plan` cold on a 1,000,000-entry tree against `zstd -3 -T0` over the same newc stream.

    python bench/scale.py [--root DIR] [--folders 1000 --files 1000] [--level 3] [--baseline-src SRC]

Generates the tree (bench/bigtree.py; or takes --root), writes a spec for it (zstd at --level,
3 by default, as issue 17 has it), then in the same run:

- writes the base initrd's newc stream once with ``core.formats.cpio`` to a temp file and times
  ``zstd -LEVEL -T0`` over it (the reference; the best of --repeat runs), and times the shell's
  ``find | cpio -o -H newc | zstd -LEVEL -T0`` over the tree (the reference that reads the files,
  as the plan must);
- runs ``sysextant plan SPEC`` cold (a fresh process, no estimate cache in the output folder)
  and reads its own peak RSS (VmHWM, at exit) and wall time (the best of --repeat runs);
- runs the plan's phases in a child (scan, plan, quick estimate, the full estimator's proxy
  pass) with their times and the RSS after each, to show where time and memory go;
- the same with the sources at --baseline-src (a checkout of an earlier commit, the package
  ``sysextant`` importable from it) for the before figures.

Prints the ratios plan / zstd (target <= 1.5) and peak RSS (target <= 250 MB), and what bounds
the first from below: ``du -s`` (the listing the scan does) and ``tar -cf - | cat`` (reading every
file) as multiples of the same zstd. Targets are not asserted: machines differ; the ratios are
measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bigtree import make_big_tree  # noqa: E402

KERNEL_CACHE = Path.home() / ".cache/sysextant/vmlinuz"

# the CLI in a child that reports its own VmHWM at exit (ru_maxrss of wait4() would carry this
# benchmark's own high-water mark across fork+exec)
CLI_WITH_HWM = """
import atexit, sys
def hwm():
    with open("/proc/self/status") as fh:
        kib = next(int(line.split()[1]) for line in fh if line.startswith("VmHWM:"))
    print(kib * 1024, file=sys.stderr)
atexit.register(hwm)
from sysextant.tui.cli import main
sys.exit(main(sys.argv[1:]))
"""

PHASES = """
import json, sys, time
def rss():
    with open("/proc/self/status") as fh:
        d = {l.split(":")[0]: int(l.split()[1]) * 1024 for l in fh if l.startswith(("VmRSS", "VmHWM"))}
    return d["VmRSS"], d["VmHWM"]
out = []
t0 = time.monotonic()
def phase(name):
    r, h = rss()
    out.append({"phase": name, "seconds": round(time.monotonic() - t0, 2), "rss": r, "hwm": h})
from sysextant.core.spec.load import load_spec
from sysextant.core.sizing.plan import make_plan
from sysextant.core.tree.index import scan
spec = load_spec(sys.argv[1])
phase("start")
index = scan(spec.os.root)
phase("scan")
plan = make_plan(spec, index)
phase("plan")
try:
    from sysextant.core.sizing.quick import quick_estimator
except ImportError:
    quick_estimator = None
if quick_estimator is not None:
    q = quick_estimator(index, plan.initrd_base, compression=spec.uki.compression, level=spec.uki.level)
    e = q.estimate(plan.initrd_after)
    phase(f"quick estimate ({e.bytes:,} B, -{(e.bytes - e.low) / e.bytes * 100:.1f}% +{(e.high - e.bytes) / e.bytes * 100:.1f}%)")
from sysextant.core.sizing.estimate import Estimator
est = Estimator(index, plan.initrd_base, compression=spec.uki.compression, level=spec.uki.level)
est.prepare()
e = est.estimate(plan.initrd_after)
phase(f"full estimator ({e.bytes:,} B, ±{e.error * 100:.2f}%)")
print(json.dumps(out))
"""


def env_for(src: str | None) -> dict[str, str]:
    env = dict(os.environ)
    if src:
        env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def plan_cold(spec: Path, src: str | None) -> tuple[float, int, str]:
    """``sysextant plan SPEC`` in a fresh process with no estimate cache: (seconds, peak RSS, last line)."""
    shutil.rmtree(spec.parent / "build", ignore_errors=True)
    t = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", CLI_WITH_HWM, "plan", str(spec)], capture_output=True, text=True,
                          env=env_for(src))
    seconds = time.monotonic() - t
    if proc.returncode not in (0, 1):
        raise SystemExit(f"sysextant plan failed ({proc.returncode}): {proc.stderr.strip()[-800:]}")
    hwm = int(proc.stderr.split()[-1])
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(("UKI", "  initrd"))]
    said = " / ".join(ln.strip() for ln in lines)
    return seconds, hwm, said or f"exit {proc.returncode}: {proc.stderr.strip().splitlines()[:-1][-1:]}"


def phases(spec: Path, src: str | None) -> list[dict]:
    shutil.rmtree(spec.parent / "build", ignore_errors=True)
    proc = subprocess.run([sys.executable, "-c", PHASES, str(spec)], capture_output=True, text=True, env=env_for(src))
    if proc.returncode != 0:
        return [{"phase": f"failed: {proc.stderr.strip()[-300:]}", "seconds": 0, "rss": 0, "hwm": 0}]
    return json.loads(proc.stdout.splitlines()[-1])


def zstd_reference(spec: Path, work: Path, level: int, repeat: int) -> tuple[float, int, int]:
    """Write the base initrd's newc stream once, time ``zstd -LEVEL -T0`` over it: (best seconds,
    stream bytes, compressed bytes)."""
    from sysextant.core.formats.cpio import write_newc
    from sysextant.core.sizing.plan import initrd_base
    from sysextant.core.spec.load import load_spec
    from sysextant.core.tree.index import scan

    s = load_spec(spec)
    index = scan(s.os.root)
    stream = work / "base.cpio"
    with open(stream, "wb") as fh:
        n = write_newc(index, initrd_base(s, index), fh, mtime=0)
    del index
    zstd = shutil.which("zstd")
    if zstd is None:
        raise SystemExit("zstd is not installed (Debian package zstd)")
    best, size = float("inf"), 0
    for _ in range(repeat):
        t = time.monotonic()
        out = subprocess.run([zstd, f"-{level}", "-T0", "-q", "-c", str(stream)], capture_output=True, check=True).stdout
        best = min(best, time.monotonic() - t)
        size = len(out)
    stream.unlink()
    return best, n, size


def floor_reference(root: Path, repeat: int) -> tuple[float, float]:
    """What any plan of this tree must do at least, timed warm: list it (``du -s``: lstat of every
    entry, which the scan does) and read every file (``tar -cf - | cat``: one thread, as fast as
    a reader of a million small files gets here). Best seconds of each."""
    best = [float("inf"), float("inf")]
    for _ in range(repeat):
        for k, cmd in enumerate((f"du -s {shlex.quote(str(root))} > /dev/null",
                                 f"tar -C {shlex.quote(str(root))} -cf - . | cat > /dev/null")):
            t = time.monotonic()
            subprocess.run(["sh", "-c", cmd], check=True)
            best[k] = min(best[k], time.monotonic() - t)
    return best[0], best[1]


def tree_reference(root: Path, level: int, repeat: int) -> float | None:
    """The shell's way from the tree to the same compressed archive: ``find | cpio -o -H newc |
    zstd -LEVEL -T0`` (GNU cpio reads every file as the plan must; zstd alone above only
    compresses a stream already in the page cache). Best seconds, or None without GNU cpio."""
    if shutil.which("cpio") is None or shutil.which("zstd") is None:
        return None
    cmd = (f"cd {shlex.quote(str(root))} && find . -mindepth 1 -print0 | cpio -o -0 -H newc --quiet "
           f"| zstd -{level} -T0 -q -c > /dev/null")
    best = float("inf")
    for _ in range(repeat):
        t = time.monotonic()
        subprocess.run(["sh", "-c", cmd], check=True)
        best = min(best, time.monotonic() - t)
    return best


def write_spec(project: Path, root: Path, level: int) -> Path:
    project.mkdir(parents=True, exist_ok=True)
    kernel = KERNEL_CACHE if KERNEL_CACHE.is_file() else project / "vmlinuz"
    if not kernel.exists():
        kernel.write_bytes(b"MZ" + bytes(4094))  # a stand-in: plan only needs its size
    spec = project / "sysextant.yaml"
    spec.write_text(f"version: 1\nos: {{root: {root}, kernel: {kernel}}}\n"
                    f"uki: {{cmdline: console=ttyS0, compression: zstd, level: {level}, "
                    "limit: 2GiB, output: build/uki.efi}\nextensions: []\noutput: build\n")
    return spec


def report(label: str, spec: Path, src: str | None, zstd_s: float, repeat: int, tree_s: float | None = None) -> None:
    runs = [plan_cold(spec, src) for _ in range(repeat)]
    seconds = min(r[0] for r in runs)
    hwm = max(r[1] for r in runs)
    print(f"\n== {label}")
    print(f"sysextant plan (cold, best of {repeat}): {seconds:.1f} s, peak RSS {hwm / 1e6:.0f} MB  ->  "
          f"time {seconds / zstd_s:.2f}x zstd (target <= 1.5), RSS {hwm / 1e6:.0f} MB (target <= 250)")
    if tree_s:
        print(f"  time {seconds / tree_s:.2f}x find | cpio -o | zstd over the tree")
    print(f"  {runs[0][2] or '(no figures: the plan printed none)'}")
    for p in phases(spec, src):
        print(f"  {p['seconds']:7.2f} s  RSS {p['rss'] / 1e6:6.0f} MB  peak {p['hwm'] / 1e6:6.0f} MB  {p['phase']}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, help="an existing tree instead of a generated one")
    ap.add_argument("--folders", type=int, default=1000)
    ap.add_argument("--files", type=int, default=1000)
    ap.add_argument("--level", type=int, default=3)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--baseline-src", help="a checkout whose `sysextant` package gives the before figures "
                                           "(a directory holding sysextant/)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="sysextant-scale-") as tmp:
        work = Path(tmp)
        root = args.root
        if root is None:
            t = time.monotonic()
            n = make_big_tree(work / "root", args.folders, args.files)
            root = work / "root"
            print(f"generated {n:,} entries in {time.monotonic() - t:.0f} s")
        spec = write_spec(work / "project", root, args.level)
        zstd_s, raw, packed = zstd_reference(spec, work, args.level, args.repeat)
        print(f"reference: zstd -{args.level} -T0 over the {raw:,}-byte newc stream: {zstd_s:.2f} s "
              f"(best of {args.repeat}), {packed:,} bytes")
        tree_s = tree_reference(root, args.level, args.repeat)
        if tree_s:
            print(f"reference: find | cpio -o -H newc | zstd -{args.level} -T0 over the tree: {tree_s:.2f} s "
                  f"(best of {args.repeat})")
        du_s, tar_s = floor_reference(root, args.repeat)
        print(f"floor: du -s (listing alone) {du_s:.2f} s = {du_s / zstd_s:.2f}x zstd; tar -cf - | cat (reading "
              f"every file) {tar_s:.2f} s = {tar_s / zstd_s:.2f}x zstd")
        if args.baseline_src:
            report(f"before ({args.baseline_src})", spec, args.baseline_src, zstd_s, args.repeat, tree_s)
        report("now", spec, None, zstd_s, args.repeat, tree_s)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
