"""The core's layers, checked from the source: every import of ``sysextant.core`` goes down a layer
or stays in its own, and no module imports itself back through others (no cycles), counting the
imports inside functions too. Each core module also imports alone in a fresh interpreter without
loading Textual, Rich or watchfiles.

The layers, bottom first (a module may import from its own layer and those below):

0. ``errors``, ``units``, ``progress``, ``atomic``: leaves;
1. ``spec/``, ``rules``: what a spec says, and the systemd-sysext rules it is checked against;
2. ``keys``: the signer and the PCR key, loaded once per build;
3. ``tree/``: the index of an OS tree and selections over it;
4. ``formats/``: bytes in, bytes out (cpio, EROFS, verity, GPT, PKCS#7, PE, the UKI, the DDI);
   ``packages/``: the tree's package database (dpkg, apk, rpm) and the entries each package owns;
5. ``sizing/``: the plan, the estimate and the forecast;
6. ``build/``: the pipeline, the artefacts, verification;
7. ``workbench/``, ``demo``, ``vm/``: what the front ends drive (``vm/`` boots a build in QEMU).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
from paths import REPO

CORE = REPO / "core"
LAYERS = {"errors": 0, "units": 0, "progress": 0, "atomic": 0, "spec": 1, "rules": 1, "keys": 2, "tree": 3,
          "formats": 4, "packages": 4, "sizing": 5, "build": 6, "workbench": 7, "demo": 7, "vm": 7}


def modules() -> dict[str, Path]:
    """Dotted names under sysextant.core (``sizing.plan``) -> source file."""
    found = {}
    for path in sorted(CORE.rglob("*.py")):
        rel = path.relative_to(CORE).with_suffix("")
        if rel.name == "__init__":
            rel = rel.parent
        if rel.parts:
            found[".".join(rel.parts)] = path
    return found


def imports_of(name: str, path: Path, known: set[str]) -> list[tuple[str, int]]:
    """The core modules ``name`` imports (anywhere in the file), with line numbers."""
    package = name.split(".")[:-1] if path.name != "__init__.py" else name.split(".")
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        targets: list[str] = []
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                mod = ".".join([*base, *(node.module.split(".") if node.module else [])])
            elif node.module and node.module.startswith("sysextant.core"):
                mod = node.module[len("sysextant.core"):].lstrip(".")
            else:
                continue
            for alias in node.names:  # `from .formats import gpt` imports the module formats.gpt
                sub = f"{mod}.{alias.name}" if mod else alias.name
                targets.append(sub if sub in known else mod)
        elif isinstance(node, ast.Import):
            targets = [a.name[len("sysextant.core"):].lstrip(".") for a in node.names
                       if a.name.startswith("sysextant.core.")]
        out += [(t, node.lineno) for t in targets if t in known and t != name]
    return out


def layer(name: str) -> int:
    top = name.split(".")[0]
    assert top in LAYERS, f"core/{top} is in no layer: add it to LAYERS (and to this docstring)"
    return LAYERS[top]


def test_every_core_import_goes_down_a_layer_or_stays_level() -> None:
    mods = modules()
    known = set(mods)
    upward = []
    for name, path in mods.items():
        if "." not in name and path.name == "__init__.py":
            continue  # a subpackage's __init__ holds only its docstring
        for target, line in imports_of(name, path, known):
            if "." in target and target.split(".")[0] == target and target not in mods:
                continue
            if layer(target) > layer(name):
                upward.append(f"core/{path.relative_to(CORE)}:{line} ({name}, layer {layer(name)}) imports "
                              f"{target} (layer {layer(target)})")
    assert not upward, "imports that go up a layer:\n" + "\n".join(upward)


def test_core_has_no_import_cycle() -> None:
    mods = modules()
    known = set(mods)
    graph = {name: sorted({t for t, _ in imports_of(name, path, known) if t in known and mods[t].name != "__init__.py"})
             for name, path in mods.items()}
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[str] = []

    def visit(n: str) -> None:
        state[n] = 1
        stack.append(n)
        for m in graph[n]:
            if state.get(m) == 1:
                cycles.append(" -> ".join([*stack[stack.index(m):], m]))
            elif m not in state:
                visit(m)
        stack.pop()
        state[n] = 2

    for n in graph:
        if n not in state:
            visit(n)
    assert not cycles, "import cycles in sysextant.core:\n" + "\n".join(cycles)


@pytest.mark.parametrize("name", sorted(modules()))
def test_each_core_module_imports_alone_without_the_front_end(name: str) -> None:
    code = ("import importlib, sys\n"
            f"importlib.import_module('sysextant.core.{name}')\n"
            "bad = [m for m in sys.modules if m.split('.')[0] in ('textual', 'rich', 'watchfiles')"
            " or m.startswith('sysextant.tui')]\n"
            "print(','.join(sorted(bad)))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "", f"sysextant.core.{name} pulled in front-end modules: {out}"
