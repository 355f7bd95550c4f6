"""Packaging and layering: the wheel holds only the sysextant package; core never imports Textual."""

from __future__ import annotations

import ast
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FRONT_END = ("textual", "rich", "watchfiles", "sysextant.tui")


def test_core_imports_no_front_end_in_fresh_interpreter() -> None:
    modules = sorted(p.stem for p in (REPO / "core").glob("*.py") if p.stem != "__init__")
    code = (
        "import importlib, sys\n"
        f"for m in {modules!r}: importlib.import_module('sysextant.core.' + m)\n"
        f"bad = [m for m in sys.modules if m.split('.')[0] in ('textual', 'rich', 'watchfiles') or m.startswith('sysextant.tui')]\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "", f"sysextant.core pulled in front-end modules: {out}"


def test_core_source_never_names_front_end_modules() -> None:
    """Also catches imports inside functions, which a fresh-interpreter import would not run."""
    offenders = []
    for path in sorted((REPO / "core").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module if node.level == 0 else "sysextant.core." + node.module]
                if node.level == 2:
                    names = ["sysextant." + node.module]
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
    for required in ("sysextant/__init__.py", "sysextant/core/index.py", "sysextant/core/spec.py",
                     "sysextant/tui/cli.py", "sysextant/tui/app.py", "sysextant/themes/__init__.py"):
        assert required in names, required
    assert any(n.startswith("sysextant/themes/") and n.endswith(".yaml") for n in names)
    assert any(n.startswith("sysextant/core/_listdir.") and n.endswith(".so") for n in names)  # the native scan
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "sysextant = sysextant.tui.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()
