"""The command line as a user and a CI script use it: help, JSON shapes, exit codes, errors."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from cli_helpers import run

from sysextant.core.demo import create_demo
from sysextant.tui.cli import COMMANDS, main


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    spec = create_demo(tmp_path_factory.mktemp("cli") / "demo", scale=0.05)
    spec.write_text(spec.read_text().replace("level: 6", "level: 3"))
    return spec


@pytest.mark.parametrize("command", [c for c in COMMANDS])
def test_every_command_has_help(command: str) -> None:
    proc = run(command, "--help")
    assert proc.returncode == 0 and "usage: sysextant" in proc.stdout


def test_scan_json(demo: Path) -> None:
    proc = run("scan", str(demo.parent / "rootfs"), "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    for key in ("entries", "files", "dirs", "symlinks", "apparent_bytes", "cpio_bytes"):
        assert isinstance(data[key], int) and data[key] > 0
    on_disk = sum(1 for _ in (demo.parent / "rootfs").rglob("*"))
    assert data["entries"] == on_disk


def test_plan_json(demo: Path) -> None:
    proc = run("plan", str(demo), "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    names = [e["name"] for e in data["extensions"]]
    assert names == ["firmware", "drivers"]
    for e in data["extensions"]:
        assert e["entries"] > 0 and e["bytes"] > 0 and e["saves_bytes"] > 0
    before, after = data["initrd_cpio_bytes"]["before"], data["initrd_cpio_bytes"]["after"]
    assert before - after >= sum(e["initrd_cpio_bytes"] for e in data["extensions"]) - 4096
    uki = data["uki"]
    assert uki["estimated"] and uki["low_bytes"] <= uki["predicted_bytes"] <= uki["high_bytes"]
    assert uki["limit_bytes"] == 256 * 1024 * 1024 and uki["verdict"] == "ok"
    assert uki["initrd_compressed_estimate"] < after  # the demo compresses


def test_plan_without_estimate_is_exact_and_says_so(demo: Path) -> None:
    proc = run("plan", str(demo), "--no-estimate")
    assert proc.returncode == 0, proc.stderr
    assert "uncompressed" in proc.stdout and "firmware" in proc.stdout


def test_bad_spec_is_one_clear_error(tmp_path: Path) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text("version: 1\nos:\n  root: nowhere\nextensions:\n  - name: a_b\n    paths: [etc/x]\n")
    proc = run("plan", str(spec))
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert f"{spec}:5:" in proc.stderr and f"{spec}:6:" in proc.stderr


@pytest.mark.parametrize("argv", [
    ["scan", "/nonexistent-tree"],
    ["plan", "/nonexistent/spec.yaml"],
    ["open", "/nonexistent/spec.yaml"],
    ["verify", "/nonexistent.raw"],
])
def test_missing_inputs(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("sysextant: error:") and "nonexistent" in err and len(err.splitlines()) == 1


def test_only_unknown_extension(demo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["build", str(demo), "--only", "nope"]) == 2
    assert "no such extension" in capsys.readouterr().err


def test_verify_rejects_garbage(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    junk = tmp_path / "junk.sysext.raw"
    junk.write_bytes(os.urandom(1 << 16))
    assert main(["verify", str(junk)]) == 1
    assert "NOT sound" in capsys.readouterr().out


def test_demo_refuses_a_non_empty_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "x").write_text("keep me")
    assert main(["demo", str(tmp_path), "--no-tui", "--quiet"]) == 2
    assert "not empty" in capsys.readouterr().err
    assert (tmp_path / "x").read_text() == "keep me"


def test_demo_again_reuses_the_project(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "d"
    assert main(["demo", str(target), "--no-tui", "--quiet", "--scale", "0.01"]) == 0
    spec = (target / "sysextant.yaml").read_text()
    assert main(["demo", str(target), "--no-tui", "--quiet"]) == 0
    assert "already holds a demo project" in capsys.readouterr().out
    assert (target / "sysextant.yaml").read_text() == spec


def test_plan_refine_compresses_every_group(demo: Path) -> None:
    import re

    proc = run("plan", str(demo), "--json", "--refine")
    assert proc.returncode == 0, proc.stderr
    method = json.loads(proc.stdout)["uki"]["method"]
    groups, known = re.match(r"(\d+) groups? of ~\d+ MiB, (\d+) compressed at", method).groups()
    assert groups == known
