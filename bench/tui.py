"""Workbench responsiveness on this machine's /usr (100k+ entries), driven headless.

Measures, with ``App.run_test``: time to the first screen with rows, time until marks can be
made (scan + plan done), the latency of every key of a scripted ~50-key session (moves, folder
changes, sorts, marks, undo), and the same for keys pressed while the scan is still running.
The reference is ``du -s`` on the same tree in the same run (the scan's lstat walk vs du's).

/usr is bind-mounted (in a private mount namespace: ``unshare -m``, root only) at ``ROOT/usr`` of
a temp folder that also holds ``etc/os-release``, so marks under usr/ are real marks. Without
``unshare`` the spec's root is /usr itself and marks are refused (outside usr/), which still
measures navigation. Run: ``python bench/tui.py [--tree /usr | --big | --os-root DIR]``.

Then, with the compressed estimate on (zstd 19, as Kairos builds), the time from opening the
workbench to the first honest UKI estimate on the gauge (a figure with its band, not the
uncompressed initrd: target <= 5 s on 2 cores; the time the gauge widget holds it, polled every
20 ms) and to the prepared estimator. ``--big`` opens a
generated 1,000,000-entry tree (bench/bigtree.py); ``--os-root`` a whole OS tree (e.g. the
debootstrapped Debian the tests cache under ~/.cache/sysextant).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SPEC = """\
version: 1
os:
  root: {root}
  kernel: {kernel}
uki:
  compression: none
  limit: 1GiB
extensions:
  - name: bench
    paths: []
  - name: second
    paths: []
output: build
"""


def prepare(tmp: Path, tree: Path, bind: bool) -> Path:
    """Write the spec; with ``bind`` the tree is mounted at tmp/root/usr."""
    if bind:
        root = tmp / "root"
        (root / "usr").mkdir(parents=True)
        (root / "etc").mkdir()
        (root / "etc/os-release").write_text("ID=bench\n")
        subprocess.run(["mount", "--bind", str(tree), str(root / "usr")], check=True)
    else:
        root = tree
    kernel = tmp / "vmlinuz"
    kernel.write_bytes(b"\0" * 1024 * 1024)
    spec = tmp / "bench.yaml"
    spec.write_text(SPEC.format(root=root, kernel=kernel))
    return spec


def du_seconds(tree: Path) -> float:
    t0 = time.perf_counter()
    subprocess.run(["du", "-s", "--apparent-size", str(tree)], check=False, capture_output=True)
    return time.perf_counter() - t0


async def run(spec: Path, marks: bool) -> dict[str, object]:
    from sysextant.tui.app import WorkbenchApp

    t0 = time.perf_counter()
    app = WorkbenchApp(spec, watch=True, estimate=False)
    handler: list[tuple[str, float]] = []  # time inside each key's action (engine + widget updates)
    run_action = app.run_action

    async def timed_action(action, default_namespace=None):  # noqa: ANN001 - Textual's signature
        a0 = time.perf_counter()
        try:
            return await run_action(action, default_namespace)
        finally:
            handler.append((str(action), time.perf_counter() - a0))

    app.run_action = timed_action  # type: ignore[method-assign]
    first = usable = None
    during: list[float] = []
    lat: list[tuple[str, float]] = []
    async with app.run_test(size=(140, 45)) as pilot:
        tree = app.tree

        async def press(key: str, out: list) -> None:
            k0 = time.perf_counter()
            await pilot.press(key)
            out.append((key, time.perf_counter() - k0))

        while app.session.plan is None:
            if first is None and len(tree.rows) > 1:
                first = time.perf_counter() - t0
                # keys while the scan runs: the pilot waits for an idle queue, which a running scan
                # keeps busy, so post the key and time until the cursor has moved
                for key in ("j", "k") * 4:
                    before = tree.cursor
                    k0 = time.perf_counter()
                    app.simulate_key(key)
                    while tree.cursor == before and time.perf_counter() - k0 < 5:
                        await asyncio.sleep(0.001)
                    during.append(time.perf_counter() - k0)
                    await asyncio.sleep(0.05)
            await asyncio.sleep(0.005)
        usable = time.perf_counter() - t0
        first = first if first is not None else usable
        await pilot.pause(0.2)
        index = app.session.index
        top = "usr" if marks else None
        # go to the top of the tree and into usr
        while tree.folder != 0:
            await press("h", lat)
        if top:
            target = index.lookup(top)
            while tree.entry != target:
                await press("j", lat)
            await press("enter", lat)
        # the same actions as before the ncdu keys (issue 14): f filters (was /), H is the first
        # row (was g); space now also moves down
        script = ["j", "j", "k", "enter", "j", "j", "j", "space", "k", "space", "u", "n", "s", "c", "c",
                  "pagedown", "pageup", "G", "H", "h", "j", "enter", "j", "space", "2", "j", "space",
                  "1", "u", "u", "h", "f", "l", "i", "b", "enter", "enter", "h", "h", "j", "k",
                  "right_square_bracket", "left_square_bracket", "j", "space", "u", "ctrl+z", "k", "h", "j"]
        marked = 0
        handler.clear()
        for key in script:
            await press(key, lat)
            if key == "space" and app.query_one("#status").markup.startswith("mark "):
                marked += 1
        # / over the whole tree: from the key to the results on screen (a thread worker)
        searches: list[tuple[str, float, int]] = []
        for query in ("*.so*", "locale", "usr/**/*.py"):
            s0 = time.perf_counter()
            await pilot.press("slash", "ctrl+u", *query, "enter")
            # the results on screen, or the status saying nothing matches (a generated tree has
            # no .so files): either is the answer
            while (tree.results is None and "nothing in the tree matches" not in str(app.query_one("#status").markup)
                   and time.perf_counter() - s0 < 60):
                await asyncio.sleep(0.002)
            searches.append((query, time.perf_counter() - s0, len(tree.results) if tree.results is not None else 0))
            if tree.results is not None:
                await pilot.press("escape")
        base: list[tuple[str, float]] = []
        for _ in range(10):  # a key nothing is bound to: the pilot's own round trip
            await press("f7", base)
        marks_done = len(app.session.undo_stack)
        status = app.query_one("#status").markup
    keys = [d for _, d in lat]
    worst = max(lat, key=lambda kv: kv[1])
    return {"entries": len(index), "first": first, "usable": usable, "keys": len(keys),
            "median": statistics.median(keys), "p95": sorted(keys)[int(len(keys) * 0.95) - 1],
            "max": worst[1], "max_key": worst[0], "during_max": max(during) if during else 0.0,
            "during_n": len(during), "scan": app.scan_seconds,
            "baseline": statistics.median(d for _, d in base), "undo_depth": marks_done, "last_status": status,
            "marked": marked, "handler_max": max(handler, key=lambda kv: kv[1]), "searches": searches,
            "handler_median": statistics.median(d for _, d in handler)}


async def run_estimate(spec: Path) -> dict[str, object]:
    """Open the workbench with the estimate on; time the first estimate on the gauge and the
    prepared estimator (the quick sample first, then the full pass at one core)."""
    from sysextant.tui.app import WorkbenchApp
    from sysextant.tui.widgets.gauge import UkiGauge

    text = spec.read_text().replace("compression: none", "compression: zstd\n  level: 19")
    spec.write_text(text)
    t0 = time.perf_counter()
    app = WorkbenchApp(spec, watch=False, estimate=True)
    out: dict[str, object] = {}
    async with app.run_test(size=(140, 45)):
        while app.session.plan is None:
            await asyncio.sleep(0.01)
        out["usable"] = time.perf_counter() - t0
        while time.perf_counter() - t0 < 600:
            fig = app.session.figures()
            # the gauge widget holding the estimate (the next frame paints it): not pilot.pause(),
            # which waits for an idle process, up to 1 s, while the estimator works on
            shown = str(app.query_one(UkiGauge).render()) if "first" not in out else ""
            if fig is not None and fig.estimated and "estimate ±" in shown:
                out["first"] = time.perf_counter() - t0
                out["first_band"] = fig.error_pct
                out["first_method"] = fig.method
                out["gauge"] = shown[:160]
            f = app.session.forecaster
            if f is not None and f.prepared is not None:
                out["prepared"] = time.perf_counter() - t0
                out["prepared_band"] = app.session.figures().error_pct
                break
            if f is not None and f.phase == "failed":
                out["error"] = f.error
                break
            await asyncio.sleep(0.02)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tree", default="/usr", help="the tree to open (default /usr)")
    ap.add_argument("--big", action="store_true", help="a generated 1,000,000-entry tree (bench/bigtree.py)")
    ap.add_argument("--os-root", help="open this whole OS tree as the spec's root (no bind mount)")
    ap.add_argument("--no-estimate", action="store_true", help="skip the compressed-estimate timing")
    ap.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.big:
        sys.path.insert(0, str(Path(__file__).parent))
        from bigtree import big_tree

        with big_tree() as root:
            return measure(root, os_root=True, estimate=not args.no_estimate)
    if args.os_root:
        return measure(Path(args.os_root), os_root=True, estimate=not args.no_estimate)
    tree = Path(args.tree)
    can_bind = os.geteuid() == 0 and shutil.which("unshare") is not None
    if can_bind and not args.inner:
        cmd = [sys.executable, __file__, "--tree", str(tree), "--inner"]
        return subprocess.call(["unshare", "-m", *cmd, *(["--no-estimate"] if args.no_estimate else [])])
    return measure(tree, bind=args.inner, estimate=not args.no_estimate)


def measure(tree: Path, *, bind: bool = False, os_root: bool = False, estimate: bool = True) -> int:
    with tempfile.TemporaryDirectory(prefix="sysextant-bench-") as tmp:
        spec = prepare(Path(tmp), tree, bind)
        os.environ.setdefault("SYSEXTANT_CONFIG_DIR", str(Path(tmp) / "config"))
        du = du_seconds(tree)
        r = asyncio.run(run(spec, marks=bind or os_root))
        e = asyncio.run(run_estimate(spec)) if estimate else None
        if bind:
            subprocess.run(["umount", str(Path(tmp) / "root/usr")], check=False)
    note = "" if bind or os_root else " (no bind mount: marks refused)"
    print(f"workbench on {tree} ({r['entries']:,} entries){note}")
    print(f"  first screen with rows   {r['first']:.2f} s")
    print(f"  usable (scan + plan)     {r['usable']:.2f} s   (scan alone {r['scan']:.2f} s; du -s {du:.2f} s, "
          f"ratio {r['scan'] / du:.2f}x); usable / scan {r['usable'] / r['scan']:.2f}x (target <= 1.5x)")
    print(f"  keys during the scan     {r['during_n']} keys, max {r['during_max'] * 1000:.0f} ms")
    print(f"  scripted session         {r['keys']} keys: median {r['median'] * 1000:.0f} ms, "
          f"p95 {r['p95'] * 1000:.0f} ms, max {r['max'] * 1000:.0f} ms ({r['max_key']})")
    print(f"  in the key's action      median {r['handler_median'] * 1000:.1f} ms, max "
          f"{r['handler_max'][1] * 1000:.0f} ms ({r['handler_max'][0]}): the engine and widget updates, "
          "without the repaint")
    print(f"  pilot round trip         {r['baseline'] * 1000:.0f} ms median for an unbound key "
          "(included in the figures above)")
    print(f"  marks accepted           {r['marked']} · undo stack after the script {r['undo_depth']}")
    for query, seconds, n in r["searches"]:
        print(f"  search / {query:<14}  {seconds * 1000:.0f} ms to the results on screen ({n:,} matches; "
              "typing included)")
    if e is not None:
        if "error" in e:
            print(f"  compressed estimate      failed: {e['error']}")
        elif "first" in e:
            print(f"  first UKI estimate       {e['first']:.2f} s after opening (target <= 5 s; usable at "
                  f"{e['usable']:.2f} s in this run), ±{e['first_band']:.1f}%: {e['first_method']}")
            print(f"  prepared estimator       {e.get('prepared', float('nan')):.2f} s after opening, "
                  f"±{e.get('prepared_band', float('nan')):.1f}% (zstd 19, one core; refinement goes on)")
        else:
            print("  compressed estimate      none within 600 s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
