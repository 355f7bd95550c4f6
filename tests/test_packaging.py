"""Packaging: the wheel holds only the sysextant package; core's source never names Textual, Rich,
watchfiles or the TUI (the layers themselves are checked in core/test_layers.py)."""

from __future__ import annotations

import ast
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FRONT_END = ("textual", "rich", "watchfiles", "sysextant.tui")


def test_core_source_never_names_front_end_modules() -> None:
    """Also catches imports inside functions, which a fresh-interpreter import would not run."""
    offenders = []
    for path in sorted((REPO / "core").rglob("*.py")):
        depth = len(path.relative_to(REPO / "core").parts)  # 1 for core/x.py, 2 for core/pkg/x.py
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                # a relative import that climbs out of core (more dots than folders) reaches sysextant.*
                names = [node.module if node.level == 0 else
                         ("sysextant." + node.module if node.level > depth else "sysextant.core." + node.module)]
            for name in names:
                if any(name == f or name.startswith(f + ".") for f in FRONT_END):
                    offenders.append(f"{path.name}:{node.lineno} imports {name}")
    assert not offenders, offenders


@pytest.mark.slow
def test_wheel_contains_only_the_sysextant_package(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(REPO)],
                   check=True, capture_output=True)
    (wheel,) = tmp_path.glob("sysextant-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names}
    assert top == {"sysextant", next(t for t in top if t.endswith(".dist-info"))}
    for required in ("sysextant/__init__.py", "sysextant/core/tree/index.py", "sysextant/core/spec/load.py",
                     "sysextant/tui/cli.py", "sysextant/tui/app.py", "sysextant/themes/__init__.py"):
        assert required in names, required
    assert any(n.startswith("sysextant/themes/") and n.endswith(".yaml") for n in names)
    assert any(n.startswith("sysextant/core/tree/_listdir.") and n.endswith(".so") for n in names)  # the native scan
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "sysextant = sysextant.tui.entry:main" in zipfile.ZipFile(wheel).read(entry_points).decode()
