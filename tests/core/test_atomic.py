"""Outputs into a folder that cannot take them: one clear error naming the folder and the reason,
never an OSError from the temp file's creation or from mkdir."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from sysextant.core.atomic import ensure_folder, scratch_for, write_atomic
from sysextant.core.errors import UserError


@pytest.fixture
def read_only() -> Iterator[Path]:
    """A folder nobody may write into, in a folder nobody can reach (tmp_path is root's 0700)."""
    base = Path(tempfile.mkdtemp(prefix="sysextant-atomic-"))
    try:
        base.chmod(0o755)
        folder = base / "out"
        folder.mkdir(mode=0o555)
        folder.chmod(0o555)
        yield folder
    finally:
        shutil.rmtree(base)


def _scratch(final: Path) -> str:
    with scratch_for(final, "fs"):
        return "no error"


def _write(path: Path) -> str:
    write_atomic(path, b"data")
    return "no error"


def _ensure(folder: Path) -> str:
    ensure_folder(folder)
    return "no error"


def test_scratch_in_a_read_only_folder(read_only: Path) -> None:
    from unprivileged import RaisedInChild, run_unprivileged

    with pytest.raises(RaisedInChild) as info:
        run_unprivileged(_scratch, read_only / "firmware.sysext.raw")
    assert info.value.kind == "UserError"
    assert str(info.value) == (f"UserError: cannot write into the output folder {read_only} "
                               "(to write firmware.sysext.raw): permission denied")


def test_atomic_write_in_a_read_only_folder(read_only: Path) -> None:
    from unprivileged import RaisedInChild, run_unprivileged

    with pytest.raises(RaisedInChild, match=rf"UserError: cannot write into the folder {read_only} "
                                            r"\(to write uki\.efi\): permission denied"):
        run_unprivileged(_write, read_only / "uki.efi")


def test_output_folder_under_a_read_only_one(read_only: Path) -> None:
    from unprivileged import RaisedInChild, run_unprivileged

    with pytest.raises(RaisedInChild, match=rf"UserError: cannot write into the output folder {read_only}/build: "
                                            "permission denied"):
        run_unprivileged(_ensure, read_only / "build")
    with pytest.raises(RaisedInChild, match=rf"UserError: cannot write into the output folder {read_only}/sub "
                                            r"\(to write x\.raw\): permission denied"):
        run_unprivileged(_scratch, read_only / "sub/x.raw")


def test_a_file_where_the_output_folder_goes(tmp_path: Path) -> None:
    (tmp_path / "build").write_text("not a folder")
    with pytest.raises(UserError, match=rf"cannot create the output folder {tmp_path}/build: "
                                        rf"{tmp_path}/build is a file, not a folder"):
        ensure_folder(tmp_path / "build")
    with pytest.raises(UserError, match=rf"cannot create the output folder {tmp_path}/build/sub "
                                        r"\(to write x\.raw\): .*build is a file, not a folder"):
        _scratch(tmp_path / "build/sub/x.raw")
    assert os.listdir(tmp_path) == ["build"]
