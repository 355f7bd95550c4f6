"""Benchmark of the initrd size model and build, against real builds and the zstd CLI.

Prints, per tree (the demo stand-in at --scale, the Debian 12 tree the VM tests cache, else a
Debian minbase rootfs if one can be made, and any --tree):
- the estimate rows (below), and the error after calibration by the real build;
- the warm time to re-estimate after moving a third of the tree (target: < 100 ms);
- the peak RSS of the real ``sysextant uki SPEC`` command as a fraction of the UKI it writes
  (the child's own VmHWM), at the spec's level and at --level (``uki.zstd_mode`` parallel, then
  single), and on a tree --rss-scale times bigger, to show the memory is the compressor's fixed
  state, not the tree's size;
- our compression time against ``zstd -LEVEL -T0`` on the same cpio (ratio, same run).

Usage: python bench/uki.py [--scale 1.0] [--level 19] [--rss-scale 3] [--no-debian] [--no-demo] [--rss-only]
       [--tree /usr] [--tree-base-only] [--refine SECONDS] [--baseline-src DIR] [--estimates-only] [--no-rss]

The estimate rows (issue 17): the quick estimate's time and error, and the estimate before any
build against the real build of the same run: its error, its band (which must hold the built
size), and its cost as a share of the build's compression time (target: a quarter); with
--refine, the band as the background refinement narrows it; with --baseline-src, the same rows
for other sources (an earlier commit) in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sysextant.core.demo import generate_tree
from sysextant.core.formats.cpio import write_newc
from sysextant.core.formats.initrd import write_initrd
from sysextant.core.sizing.estimate import Estimator
from sysextant.core.spec.model import INITRD_SKIP_TOP
from sysextant.core.tree.index import scan
from sysextant.core.tree.selection import IntervalSet, Sums, subtree_set

ROOTFS_CACHE = Path.home() / ".cache/sysextant/bench-rootfs"
KERNEL_CACHE = Path.home() / ".cache/sysextant/vmlinuz"  # fetched by .ci/setup
STUB = Path("/usr/lib/systemd/boot/efi/linuxx64.efi.stub")


# Runs the CLI and reports its own VmHWM at exit. Not the rusage of wait4(): Linux carries the
# parent's RSS high-water mark across fork+exec into the child's ru_maxrss, so a child of this
# (big) benchmark process would report the benchmark's memory, not its own.
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


def uki_rss(spec: Path) -> dict:
    """Run ``sysextant uki SPEC --force --json`` in a child; its result plus peak RSS and time."""
    cmd = [sys.executable, "-c", CLI_WITH_HWM, "uki", str(spec), "--force", "--json"]
    t = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode not in (0, 1):  # 1: built, but over the limit
        raise SystemExit(f"sysextant uki {spec} failed ({proc.returncode}): {proc.stderr.strip()[-500:]}")
    result = json.loads(proc.stdout)
    result.update(maxrss=int(proc.stderr.split()[-1]), seconds=time.monotonic() - t)
    return result


def set_uki(spec: Path, key: str, value: int | str) -> None:
    from sysextant.core.spec.edit import SpecEditor, save_text_atomic

    editor = SpecEditor(spec.read_text(), spec)
    editor.set_value(("uki", key), value)
    save_text_atomic(spec, editor.text)


def auto_mode(level: int) -> str:
    from sysextant.core.spec.model import AUTO_SINGLE_MAX_LEVEL

    return "single" if level <= AUTO_SINGLE_MAX_LEVEL else "parallel"


def rss_line(label: str, r: dict) -> str:
    return (f"{label}: UKI {r['actual_bytes'] / 2**20:.0f} MiB in {r['seconds']:.0f} s, peak RSS "
            f"{r['maxrss'] / 2**20:.0f} MiB = {r['maxrss'] / r['actual_bytes']:.2f}x the UKI (target < 0.5)")


def bench_rss_demo(work: Path, scales: list[float], level: int) -> None:
    from sysextant.core.demo import create_demo

    print("\n== peak RSS of `sysextant uki` (the whole command: scan, estimate, build, sign, verify)")
    for scale in scales:
        spec = create_demo(work / f"rss-demo-{scale}", scale=scale)
        r = uki_rss(spec)
        print(rss_line(f"demo x{scale:g}, spec level (zstd 6, zstd_mode auto: single)", r))
        set_uki(spec, "level", level)
        print(rss_line(f"demo x{scale:g}, zstd {level} (auto: {auto_mode(level)})", uki_rss(spec)))
        set_uki(spec, "zstd_mode", "single")
        print(rss_line(f"demo x{scale:g}, zstd {level}, zstd_mode single", uki_rss(spec)))
        shutil.rmtree(spec.parent)


def bench_rss_debian(work: Path, root: Path, level: int) -> None:
    from sysextant.core.atomic import write_atomic
    from sysextant.core.keys import generate_demo_pair

    if not (KERNEL_CACHE.is_file() and STUB.is_file()):
        print("skipping the Debian UKI's RSS: no real kernel (run .ci/setup) or no systemd-boot stub")
        return
    project = work / "rss-debian"
    (project / "keys").mkdir(parents=True)
    key, cert = generate_demo_pair()
    write_atomic(project / "keys/db.key", key, mode=0o600)
    write_atomic(project / "keys/db.pem", cert)
    spec = project / "sysextant.yaml"
    spec.write_text(f"version: 1\nos: {{root: {root}, kernel: {KERNEL_CACHE}}}\n"
                    f"uki: {{stub: {STUB}, cmdline: console=ttyS0, compression: zstd, level: {level}, "
                    f"limit: 1GiB, output: build/uki.efi}}\n"
                    "signing: {key: keys/db.key, cert: keys/db.pem}\nextensions: []\noutput: build\n")
    print(rss_line(f"debian-minbase, zstd {level} (auto: {auto_mode(level)})", uki_rss(spec)))
    set_uki(spec, "zstd_mode", "single")
    print(rss_line(f"debian-minbase, zstd {level}, zstd_mode single", uki_rss(spec)))

BUILD_CHILD = """
import json, sys
from pathlib import Path
from sysextant.core.tree.index import scan
from sysextant.core.tree.selection import IntervalSet
from sysextant.core.formats.initrd import write_initrd
args = json.loads(sys.argv[1])
index = scan(args["root"])
sel = IntervalSet(tuple(iv) for iv in args["sel"])
r = write_initrd(index, sel, Path(args["out"]), compression="zstd", level=args["level"])
with open("/proc/self/status") as fh:  # VmHWM: ru_maxrss would carry the parent's across fork+exec
    hwm = next(int(line.split()[1]) for line in fh if line.startswith("VmHWM:")) * 1024
print(json.dumps({"compressed": r.compressed_bytes, "raw": r.uncompressed_bytes, "seconds": r.seconds,
                  "maxrss": hwm}))
"""


def build_in_child(root: Path, sel: IntervalSet, out: Path, level: int) -> dict:
    arg = json.dumps({"root": str(root), "sel": [list(iv) for iv in sel], "out": str(out), "level": level})
    proc = subprocess.run([sys.executable, "-c", BUILD_CHILD, arg], capture_output=True, text=True, check=True)
    return json.loads(proc.stdout)


def third_of_tree(index, base: IntervalSet) -> IntervalSet:
    """Folders to move, biggest first, until about a third of the base's cpio bytes."""
    sums = Sums(index)
    goal = sums.cpio_bytes(base) / 3
    candidates = []
    for i in range(1, len(index)):
        if index.is_dir(i) and 2 <= index.depth(i) <= 4 and i in base:
            candidates.append((index.tot_cpio[i], i))
    candidates.sort(reverse=True)
    moved: list[int] = []
    total = 0
    for size, i in candidates:
        if total >= goal:
            break
        if size > goal - total + goal * 0.1 or any(a in moved for a in index.ancestors(i)):
            continue
        if any(m in index.ancestors(i) or i in index.ancestors(m) for m in moved):
            continue
        moved.append(i)
        total += size
    return subtree_set(index, moved)


ESTIMATE_CHILD = """
import json, sys, time
from sysextant.core.tree.index import scan
from sysextant.core.tree.selection import IntervalSet
from sysextant.core.sizing.estimate import Estimator
args = json.loads(sys.argv[1])
index = scan(args["root"])
sels = {name: IntervalSet(tuple(iv) for iv in ivs) for name, ivs in args["sels"].items()}
base = sels["base"]
out = {}
def figures(est):
    return {name: [e.bytes, e.low, e.high] for name, sel in sels.items() for e in [est.estimate(sel)]}
try:
    from sysextant.core.sizing.quick import quick_estimator
except ImportError:
    quick_estimator = None
if quick_estimator is not None:
    t = time.monotonic()
    q = quick_estimator(index, base, compression="zstd", level=args["level"])
    out["quick"] = {"seconds": time.monotonic() - t, "est": figures(q), "method": q.estimate(base).method}
t = time.monotonic()
est = Estimator(index, base, compression="zstd", level=args["level"], cache_dir=args["cache"])
est.prepare()
out["prepare"] = {"seconds": time.monotonic() - t, "est": figures(est), "method": est.estimate(base).method}
steps = []
if args["refine"] > 0:
    t = time.monotonic()
    while time.monotonic() - t < args["refine"]:
        g = est.next_group() if hasattr(est, "next_group") else next(
            (g for g, grp in enumerate(est.groups) if grp.target is None), None)
        if g is None:
            break
        est.deepen([g])
        steps.append({"seconds": time.monotonic() - t, "est": figures(est)})
out["refine"] = steps
print(json.dumps(out))
"""


def estimates_in_child(root: Path, sels: dict[str, IntervalSet], level: int, cache: Path, refine: float,
                       src: str | None = None) -> dict:
    """The quick estimator (when the sources have one) and the Estimator's prepare, then its
    refinement for ``refine`` seconds, in a child (``src``: other sources, for before figures)."""
    arg = json.dumps({"root": str(root), "sels": {n: [list(iv) for iv in s] for n, s in sels.items()},
                      "level": level, "cache": str(cache), "refine": refine})
    env = dict(os.environ)
    if src:
        env["PYTHONPATH"] = src
    shutil.rmtree(cache, ignore_errors=True)
    proc = subprocess.run([sys.executable, "-c", ESTIMATE_CHILD, arg], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"estimate child failed: {proc.stderr.strip()[-800:]}")
    return json.loads(proc.stdout.splitlines()[-1])


def err(fig: list[int], actual: int) -> str:
    """An estimate [bytes, low, high] against the real size: error, band, inside or not."""
    e, lo, hi = fig
    inside = "inside" if lo <= actual <= hi else "OUTSIDE"
    return (f"{(e - actual) / actual * 100:+.2f}% (band {(lo - e) / e * 100:+.1f}%/{(hi - e) / e * 100:+.1f}%, "
            f"{inside})")


def bench_tree(name: str, root: Path, level: int, work: Path, *, refine: float = 0.0, baseline: str | None = None,
               extras: bool = True, slim_too: bool = True) -> None:
    print(f"\n== {name}: {root}")
    index = scan(root)
    skip = [c for c in index.children(0) if index.names[c] in INITRD_SKIP_TOP]
    base = IntervalSet([(1, len(index))]).difference(subtree_set(index, skip))
    moved = third_of_tree(index, base)
    slim = base.difference(moved)
    sums = Sums(index)
    print(f"entries {len(index):,}; base cpio {sums.cpio_bytes(base) / 2**20:.1f} MiB; moving "
          f"{sums.cpio_bytes(base.intersection(moved)) / sums.cpio_bytes(base) * 100:.0f}% of it")

    r_base = build_in_child(root, base, work / f"{name}-base.zst", level)
    actual = {"base": r_base["compressed"]}
    sels = {"base": base}
    build_s = r_base["seconds"]
    line = (f"real builds at zstd {level} (the build's own threads): base {r_base['compressed']:,} B, compression "
            f"{r_base['seconds']:.1f} s")
    if slim_too:
        r_slim = build_in_child(root, slim, work / f"{name}-slim.zst", level)
        actual["slim"] = r_slim["compressed"]
        sels["slim"] = slim
        line += f"; slim {r_slim['compressed']:,} B in {r_slim['seconds']:.1f} s"
    print(line)

    def errs(est: dict) -> str:
        return ", ".join(f"{n} {err(est[n], actual[n])}" for n in sels)

    for label, src in ([("before", baseline)] if baseline else []) + [("now", None)]:
        res = estimates_in_child(root, sels, level, work / f"cache-{name}-{label}", refine if label == "now" else 0.0,
                                 src)
        q = res.get("quick")
        if q:
            print(f"[{label}] quick estimate: {q['seconds']:.1f} s (target <= 5 s): {errs(q['est'])}")
        p = res["prepare"]
        print(f"[{label}] estimate before any build: {p['seconds']:.1f} s = {p['seconds'] / build_s:.2f}x the build's "
              f"compression time (target <= 0.25): {errs(p['est'])}")
        print(f"    {p['method']}")
        for step in res.get("refine", []):
            print(f"[{label}]   refining, +{step['seconds']:.0f} s: {errs(step['est'])}")
    if not extras or not slim_too:
        return

    cache = work / f"cache-{name}"
    est = Estimator(index, base, compression="zstd", level=level, cache_dir=cache)
    est.prepare()
    est.calibrate(base, r_base["compressed"])
    after = est.estimate(slim)
    print(f"calibrated on base, slim: {err([after.bytes, after.low, after.high], actual['slim'])}")

    # warm re-estimate after moving a third of the tree (alternating selections)
    times = []
    for k in range(20):
        sel = slim if k % 2 == 0 else base
        t = time.perf_counter()
        est.estimate(sel)
        times.append(time.perf_counter() - t)
    times.sort()
    print(f"warm re-estimate after moving a third: median {times[len(times) // 2] * 1000:.2f} ms, "
          f"max {times[-1] * 1000:.2f} ms (target < 100 ms)")

    rss = max(r_base["maxrss"], r_slim["maxrss"])
    print(f"build peak RSS {rss / 2**20:.0f} MiB = {rss / r_base['compressed']:.2f} x the compressed initrd "
          f"({r_base['compressed'] / 2**20:.0f} MiB)")

    zstd = shutil.which("zstd")
    if zstd:
        raw = work / f"{name}.cpio"
        with open(raw, "wb") as fh:
            write_newc(index, base, fh, mtime=0)
        t = time.monotonic()
        cli = subprocess.run([zstd, f"-{level}", "-T0", "-q", "-c", str(raw)], capture_output=True, check=True).stdout
        cli_s = time.monotonic() - t
        ours = write_initrd(index, base, work / f"{name}-again.zst", compression="zstd", level=level)
        print(f"zstd CLI -{level} -T0 on the cpio: {cli_s:.1f} s, {len(cli):,} B; ours (tree -> initrd) "
              f"{ours.seconds:.1f} s, {ours.compressed_bytes:,} B: time ratio {ours.seconds / cli_s:.2f}, "
              f"size ratio {ours.compressed_bytes / len(cli):.4f}")
        raw.unlink()


def debian_rootfs() -> Path | None:
    """The Debian 12 tree the VM tests cache (tests/helpers/vm_tree.py), else a minbase one made here."""
    vm = sorted(Path.home().glob(".cache/sysextant/debian-bookworm-*/rootfs"))
    if vm and (vm[-1] / "etc/os-release").exists():
        return vm[-1]
    if (ROOTFS_CACHE / "etc/os-release").exists():
        return ROOTFS_CACHE
    candidates: list[str] = []
    for src in [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]:
        try:
            text = src.read_text()
        except OSError:
            continue
        for line in text.splitlines():
            parts = [p for p in line.split() if not p.startswith("[")]
            if line.startswith("deb ") and len(parts) >= 2:
                candidates.append(parts[1])
            elif line.startswith("URIs:"):
                candidates.extend(parts[1:])
    debian = [u for u in candidates if u.rstrip("/").endswith("/debian") and "security" not in u]
    mirror = debian[0] if debian else None
    if shutil.which("debootstrap") is None:
        print("debootstrap missing: trying apt-get install debootstrap")
        subprocess.run(["apt-get", "install", "-y", "-q", "debootstrap"], capture_output=True)
    if shutil.which("debootstrap") is None or mirror is None:
        print("skipping the Debian rootfs: debootstrap or an apt mirror is not available")
        return None
    tmp = ROOTFS_CACHE.with_name("bench-rootfs.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["debootstrap", "--variant=minbase", "bookworm", str(tmp), mirror],
                          capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        print(f"skipping the Debian rootfs: debootstrap failed: {proc.stderr.strip()[-300:]}")
        shutil.rmtree(tmp, ignore_errors=True)
        return None
    os.replace(tmp, ROOTFS_CACHE)
    return ROOTFS_CACHE


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--level", type=int, default=19)
    ap.add_argument("--no-debian", action="store_true")
    ap.add_argument("--no-demo", action="store_true")
    ap.add_argument("--tree", type=Path, action="append", default=[],
                    help="another tree to estimate and build (e.g. /usr), read only")
    ap.add_argument("--tree-base-only", action="store_true",
                    help="build only the whole tree of each --tree, not the slim selection too (big trees)")
    ap.add_argument("--refine", type=float, default=0.0,
                    help="seconds of background refinement to show after the first estimate (0: none)")
    ap.add_argument("--baseline-src", help="a checkout whose `sysextant` package gives before figures in the same run")
    ap.add_argument("--no-rss", action="store_true", help="skip the peak RSS of `sysextant uki`")
    ap.add_argument("--estimates-only", action="store_true",
                    help="only the estimate rows (no calibration, re-estimate, RSS or zstd CLI rows)")
    ap.add_argument("--rss-scale", type=float, action="append", default=None,
                    help="demo scales for the RSS of `sysextant uki` (default: 1 and 3)")
    ap.add_argument("--rss-only", action="store_true", help="only the RSS measurements")
    args = ap.parse_args()
    extras = not args.estimates_only
    with tempfile.TemporaryDirectory(prefix="sysextant-bench-") as tmp:
        work = Path(tmp)
        if not args.no_rss and extras:
            if not args.no_demo:
                bench_rss_demo(work, args.rss_scale or [1.0, 3.0], args.level)
            if not args.no_debian:
                deb = debian_rootfs()
                if deb is not None:
                    bench_rss_debian(work, deb, args.level)
        if args.rss_only:
            return
        kw = {"refine": args.refine, "baseline": args.baseline_src, "extras": extras}
        if not args.no_demo:
            root = work / "demo-rootfs"
            t = time.monotonic()
            generate_tree(root, scale=args.scale)
            print(f"demo tree at scale {args.scale} generated in {time.monotonic() - t:.1f} s")
            bench_tree("demo", root, args.level, work, **kw)
        if not args.no_debian:
            deb = debian_rootfs()
            if deb is not None:
                bench_tree("debian", deb, args.level, work, **kw)
        for tree in args.tree:
            bench_tree(tree.name or "tree", tree, args.level, work, **kw, slim_too=not args.tree_base_only)


if __name__ == "__main__":
    main()
