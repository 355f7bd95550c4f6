"""The build tests' demo project."""

from __future__ import annotations

from pathlib import Path

import pytest

from sysextant.core.demo import create_demo


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small demo project (5% scale), made once per test module and shared read-only by its
    tests (they build in a copy: build_helpers.copy_project)."""
    target = tmp_path_factory.mktemp("demo") / "project"
    spec = create_demo(target, scale=0.05)
    text = spec.read_text().replace("level: 19", "level: 3")  # keep the suite quick
    spec.write_text(text)
    return spec
