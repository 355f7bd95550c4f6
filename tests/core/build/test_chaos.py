"""A short run of the chaos harness (bench/chaos.py): builds of the demo killed at random moments
with SIGKILL, SIGTERM and SIGINT leave each output old-and-complete or new-and-sound, no temp file
after SIGTERM/SIGINT or after the next build, and a corrupted image is never reused."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from paths import REPO

BENCH = REPO / "bench" / "chaos.py"


def test_killed_builds_leave_nothing_broken(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, str(BENCH), "--runs", "9", "--scale", "0.03", "--seed", "7",
                           "--dir", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "violations: 0" in proc.stdout
    assert "corrupted image rebuilt          1" in proc.stdout
