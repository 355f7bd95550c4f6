"""Where the repository and its test data are, for tests in any folder of tests/ (and bench/)."""

from __future__ import annotations

from pathlib import Path

#: the repository's top (core/, tui/, bench/, .ci/, tests/)
REPO = Path(__file__).resolve().parents[2]
#: tests/, where data/ and snapshots/ live
TESTS = REPO / "tests"
