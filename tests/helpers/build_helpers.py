"""A copy of a demo project to build in, and what a build leaves behind: shared by the build
tests (tests/core/build/)."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path


def copy_project(demo: Path, dest: Path) -> Path:
    shutil.copytree(demo.parent, dest, symlinks=True)
    return dest / demo.name


def sha(path: Path | str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def no_temp_files(folder: Path) -> bool:
    return not [p for p in folder.rglob("*") if p.name.startswith(".sysextant-tmp-")]
