"""Fixtures of the workbench's pilot tests: the small demo tree (made once per test module, so a
module's tests may change their own copy without touching another module's) and the spec on it."""

from __future__ import annotations

from pathlib import Path

import pytest
from tui_helpers import project

from sysextant.core.demo import generate_tree


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("demo") / "rootfs"
    generate_tree(root, scale=0.05)
    return root


@pytest.fixture
def spec_path(tmp_path: Path, demo_root: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("SYSEXTANT_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.chdir(tmp_path)
    return project(tmp_path, demo_root)
