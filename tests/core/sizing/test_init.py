"""`sysextant init`: a starter spec that loads, plans clean, and says what it detected."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from cli_helpers import run

from sysextant.core.demo import create_demo
from sysextant.core.sizing.plan import make_plan
from sysextant.core.spec.load import load_spec
from sysextant.core.spec.model import UkiSpec
from sysextant.core.tree.index import scan


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    return create_demo(tmp_path_factory.mktemp("init") / "demo", scale=0.02).parent


def test_init_on_a_kairos_tree_detects_immucore_and_plans_clean(demo: Path, tmp_path: Path) -> None:
    spec = tmp_path / "sysextant.yaml"
    proc = run("init", str(demo / "rootfs"), "--spec", str(spec), "--key", str(demo / "keys/db.key"),
               "--cert", str(demo / "keys/db.pem"), "--limit", "800MiB")
    assert proc.returncode == 0, proc.stderr
    assert "boot profile kairos, kernel boot/vmlinuz, init /usr/bin/immucore" in proc.stdout
    loaded = load_spec(spec)
    assert loaded.os.root.resolve() == (demo / "rootfs").resolve() and loaded.uki.init == "/usr/bin/immucore"
    assert loaded.boot.profile == "kairos" and loaded.uki.limit_text == "800MiB"
    assert loaded.signing is not None and loaded.signing.key.resolve() == (demo / "keys/db.key").resolve()
    assert not make_plan(loaded, scan(loaded.os.root)).problems
    # the values left out are the model's defaults, written out
    d = UkiSpec()
    text = spec.read_text()
    assert f"stub: {d.stub}" in text and f"level: {d.level}" in text and f"compression: {d.compression}" in text
    # never over an existing file
    before = spec.read_bytes()
    proc = run("init", str(demo / "rootfs"), "--spec", str(spec))
    assert proc.returncode == 2 and "already exists" in proc.stderr and spec.read_bytes() == before


def test_init_on_a_systemd_tree_names_systemd_as_the_init(tmp_path: Path) -> None:
    root = tmp_path / "rootfs"
    (root / "usr/lib/systemd").mkdir(parents=True)
    (root / "usr/lib/systemd/systemd").write_bytes(b"\x7fELF")
    (root / "usr/lib/systemd/systemd").chmod(0o755)
    (root / "usr/lib/os-release").write_text("ID=debian\nVERSION_ID=12\n")
    (root / "etc").mkdir()
    os.symlink("usr/lib", root / "lib")
    (root / "usr/lib/modules/6.1.0-9-amd64").mkdir(parents=True)
    (root / "usr/lib/modules/6.1.0-9-amd64/vmlinuz").write_bytes(b"MZ")
    proc = run("init", str(root), "sysextant.yaml", cwd=tmp_path)  # SPEC positional; no terminal: no workbench
    assert proc.returncode == 0, proc.stderr
    assert "boot profile systemd, kernel usr/lib/modules/6.1.0-9-amd64/vmlinuz, init /usr/lib/systemd/systemd" \
        in proc.stdout
    spec = load_spec(tmp_path / "sysextant.yaml")
    assert spec.os.root.resolve() == root.resolve() and spec.signing is None and spec.boot.profile == "systemd"
    assert "root: rootfs " in (tmp_path / "sysextant.yaml").read_text()  # relative to the spec's folder


@pytest.mark.parametrize(("make", "message"), [
    (lambda p: None, "is not a folder"),
    (lambda p: p.mkdir(), "does not look like an OS tree"),
])
def test_init_refuses_what_is_not_an_os_tree(tmp_path: Path, make, message: str) -> None:
    make(tmp_path / "x")
    proc = run("init", str(tmp_path / "x"), "--spec", str(tmp_path / "s.yaml"))
    assert proc.returncode == 2 and message in proc.stderr and not (tmp_path / "s.yaml").exists()
