"""Chaos: kill builds of the demo at random moments and prove nothing broken is ever left or reused.

Usage: ``python bench/chaos.py [--runs 30] [--scale 0.05] [--seed 1] [--dir DIR] [--keep]``.

A demo project is written and built once (the "old" artefacts). Then, ``--runs`` times: the tree
is touched so every artefact must be rebuilt (alternately a firmware file, a kept file, both),
``sysextant build`` starts, and after a random delay within the measured length of a full build
it gets SIGKILL, SIGTERM or SIGINT (in turn). After each kill every output must be either the
previous complete artefact (same sha256) or a new complete one that ``sysextant verify`` calls
sound; no output may be a partial file. SIGTERM and SIGINT must leave no temp file; SIGKILL may
(it cannot be caught), but the next build must remove them. Finally a normal build must succeed,
verify every artefact and leave no temp file, and a byte corrupted in one image (same size) must
not be reused. Prints the counts; exit status 1 on any violation.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

CLI = [sys.executable, "-m", "sysextant.tui.cli"]
TEMP_PREFIX = ".sysextant-tmp-"
SIGNALS = (signal.SIGKILL, signal.SIGTERM, signal.SIGINT)


def sha(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except FileNotFoundError:
        return None


def temps(folder: Path) -> list[Path]:
    return [p for p in folder.rglob(f"{TEMP_PREFIX}*")]


def outputs(project: Path) -> list[Path]:
    return sorted((project / "build").glob("*.sysext.raw")) + [project / "build/uki.efi"]


def sound(path: Path, cert: Path) -> bool:
    proc = subprocess.run([*CLI, "verify", str(path), "--cert", str(cert), "--json"], capture_output=True, text=True)
    return proc.returncode == 0 and json.loads(proc.stdout)["ok"]


def build(spec: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, "build", str(spec), *extra], capture_output=True, text=True)


def touch_tree(root: Path, k: int) -> None:
    """Change content so the next build has real work: same size, same mtime (as clamped trees do)."""
    targets = [next((root / "usr/lib/firmware").rglob("*.bin")), root / "etc/hostname"]
    for path in targets[: 1 + k % 2] if k % 3 else targets[1:]:
        st = path.stat()
        data = bytearray(path.read_bytes())
        data[0] ^= 1
        path.write_bytes(bytes(data))
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--scale", type=float, default=0.05)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--dir", type=Path, help="work folder (default: a temp folder)")
    ap.add_argument("--keep", action="store_true", help="keep the work folder")
    args = ap.parse_args()
    rnd = random.Random(args.seed)
    work = args.dir or Path(tempfile.mkdtemp(prefix="sysextant-chaos-"))
    project = work / "project"
    violations: list[str] = []
    counts: Counter[str] = Counter()
    try:
        from sysextant.core.demo import create_demo

        spec = create_demo(project, scale=args.scale)
        spec.write_text(spec.read_text().replace("level: 6", "level: 3"))
        cert = project / "keys/db.pem"
        t0 = time.monotonic()
        first = build(spec, "--force")
        full = time.monotonic() - t0
        if first.returncode != 0:
            print(first.stdout, first.stderr)
            return 1
        print(f"demo at scale {args.scale}: a full build takes {full:.1f} s; {args.runs} killed builds follow")
        for k in range(args.runs):
            touch_tree(project / "rootfs", k)
            before = {p: sha(p) for p in outputs(project)}
            signum = SIGNALS[k % len(SIGNALS)]
            proc = subprocess.Popen([*CLI, "build", str(spec)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                    text=True, start_new_session=True,
                                    preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
            # not before 0.2 s: a signal while the interpreter itself starts (before any sysextant code
            # runs, nothing to clean up yet) ends it the way it ends any Python program
            time.sleep(rnd.uniform(0.2, max(0.3, full * 1.1)))
            finished_first = proc.poll() is not None
            if not finished_first:
                proc.send_signal(signum)
            _, err = proc.communicate(timeout=300)
            # exit 0 after the signal: the build ended between the poll and the kill
            finished_first = finished_first or proc.returncode == 0
            name = "finished" if finished_first else signal.Signals(signum).name
            counts[f"tried {name}"] += 1
            if not finished_first and signum != signal.SIGKILL:
                # -signum: the signal landed before the handler was set or after the work was done
                if proc.returncode not in (130, 128 + signum, -signum):
                    violations.append(f"run {k}: {name} gave exit {proc.returncode}: {err.strip()[-300:]}")
                if "Traceback" in err:
                    violations.append(f"run {k}: {name} printed a traceback: ...{err.strip()[-1200:]}")
                # its own temps (a SIGKILLed build before it may have left some, which it may not
                # have reached yet: the next complete build removes those, checked at the end)
                left = [p for p in temps(project) if p.name.startswith(f"{TEMP_PREFIX}{proc.pid}-")]
                if left:
                    violations.append(f"run {k}: {name} (exit {proc.returncode}) left temp files "
                                      f"{[p.name for p in left]}: ...{err.strip()[-600:]}")
            counts["temps left by SIGKILL"] += len(temps(project)) if signum == signal.SIGKILL else 0
            for path, old in before.items():
                now = sha(path)
                if now == old:
                    counts["output: old artefact kept"] += 1
                elif now is not None and sound(path, cert):
                    counts["output: new complete artefact"] += 1
                else:
                    violations.append(f"run {k}: {path.name} after {name} is neither the old artefact nor sound")
        final = build(spec)
        if final.returncode != 0:
            violations.append(f"the build after the kills failed: {final.stdout[-500:]}{final.stderr[-500:]}")
        if temps(project):
            violations.append(f"temps remain after the next build: {[p.name for p in temps(project)]}")
        for path in outputs(project):
            if not sound(path, cert):
                violations.append(f"{path.name} is not sound after the final build")
        # a corrupted image of unchanged size is never reused
        image = outputs(project)[0]
        with open(image, "r+b") as fh:
            fh.seek(1 << 20)
            b = fh.read(1)
            fh.seek(1 << 20)
            fh.write(bytes([b[0] ^ 0xFF]))
        again = build(spec, "--json")
        summary = json.loads(again.stdout) if again.stdout.strip().startswith("{") else {}
        reused = [a["name"] for a in summary.get("artefacts", []) if a["reused"] and a["path"] == str(image)]
        if again.returncode != 0 or reused or not sound(image, cert):
            violations.append(f"a corrupted {image.name} was reused or not repaired (exit {again.returncode})")
        else:
            counts["corrupted image rebuilt"] += 1
    finally:
        if not args.keep and args.dir is None:
            shutil.rmtree(work, ignore_errors=True)
    for key in sorted(counts):
        print(f"  {key:<32} {counts[key]}")
    print(f"violations: {len(violations)}")
    for v in violations:
        print(f"  {v}")
    return 1 if violations else 0


if __name__ == "__main__":
    sys.exit(main())
