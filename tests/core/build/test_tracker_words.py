"""Every progress stage the engine can report has words in the build screen and the CLI.

The TUI test of a full build sees the stages one build happens to run; the estimate's stages
depend on the estimator's path (quick sample, proxy pass, samples, refinement), so this reads
every stage name the engine's source passes to a reporter and asserts each has a label.
"""
from __future__ import annotations

import ast

from paths import REPO

from sysextant.core.build.tracker import STAGE_LABELS

PREFIXES = ("estimate: ", "initrd: ", "assemble: ")


def engine_stage_names() -> set[str]:
    names: set[str] = set()
    for path in (REPO / "core").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            text = node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else ""
            if text.startswith(PREFIXES) and len(text) < 60 and "\n" not in text and "{" not in text:
                names.add(text)
    return names


def test_every_engine_stage_has_words() -> None:
    names = engine_stage_names()
    assert "estimate: proxy pass" in names and "initrd: compress" in names  # the scan finds them
    assert not names - set(STAGE_LABELS), f"stages without words in tracker.STAGE_LABELS: {names - set(STAGE_LABELS)}"


def test_no_words_for_stages_the_engine_never_reports() -> None:
    names = engine_stage_names()
    stale = {k for k in STAGE_LABELS if k.startswith(PREFIXES)} - names
    assert not stale, f"labels for stages no engine code reports: {stale}"
