"""The build never destroys what it reads, reuses only what is proven current, fails loudly when
the UKI cannot boot, and cleans up after itself: the data-loss items of the hardening issue.

Each test drives the real CLI or :func:`build` on a small copy of the demo project.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from build_helpers import copy_project, no_temp_files, sha

from sysextant.core.atomic import TEMP_PREFIX
from sysextant.core.build.pipeline import build, build_lock
from sysextant.core.build.verify import verify_image
from sysextant.core.errors import UserError
from sysextant.core.spec.load import load_spec
from sysextant.tui.cli import main as cli


def edit(spec_path: Path, old: str, new: str) -> None:
    text = spec_path.read_text()
    assert old in text, old
    spec_path.write_text(text.replace(old, new, 1))


# -- outputs that would destroy an input ---------------------------------------------------------
@pytest.mark.parametrize("output, names", [
    ("keys/db.key", "signing key"),
    ("keys/db.pem", "signing certificate"),
    ("sysextant.yaml", "spec file"),
    ("rootfs/var/out/uki.efi", "inside the OS tree"),
    ("build/firmware.sysext.raw", "image of extension firmware"),
    ("build/.sysextant-state.json", "build state file"),
])
def test_an_output_over_an_input_is_refused_before_any_work(demo: Path, tmp_path: Path, output: str, names: str,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    spec_path = copy_project(demo, tmp_path / "p")
    edit(spec_path, "output: build/uki.efi", f"output: {output}")
    key = spec_path.parent / "keys/db.key"
    before = {p: sha(p) for p in (key, spec_path.parent / "keys/db.pem", spec_path)}
    assert cli(["build", str(spec_path)]) == 2
    err = capsys.readouterr().err
    assert "refusing to build" in err and names in err and "Traceback" not in err
    assert f"{spec_path}:" in err  # file:line:col of the offending key
    assert {p: sha(p) for p in before} == before
    assert not (spec_path.parent / "build").exists()  # no work was done, not even the output folder
    assert oct(key.stat().st_mode & 0o777) == "0o600"
    assert cli(["plan", str(spec_path), "--no-estimate"]) == 1  # plan names it too, and fails
    assert names in capsys.readouterr().out


def test_an_output_folder_inside_the_tree_is_refused(demo: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    spec_path = copy_project(demo, tmp_path / "p")
    edit(spec_path, "\noutput: build", "\noutput: rootfs/var/out")
    assert cli(["build", str(spec_path)]) == 2
    err = capsys.readouterr().err
    assert "output folder" in err and "inside the OS tree" in err
    assert not (spec_path.parent / "rootfs/var/out").exists()


# -- reuse only what is proven current ------------------------------------------------------------
def test_a_corrupted_artefact_of_the_same_size_is_rebuilt(demo: Path, tmp_path: Path) -> None:
    spec = load_spec(copy_project(demo, tmp_path / "p"))
    first = build(spec, only=["firmware"])
    image = Path(first.artefacts[0].path)
    good = sha(image)
    with open(image, "r+b") as fh:  # one byte of the filesystem, same size
        fh.seek(1 << 20)
        byte = fh.read(1)
        fh.seek(1 << 20)
        fh.write(bytes([byte[0] ^ 0xFF]))
    second = build(spec, only=["firmware"])
    assert not second.artefacts[0].reused and second.ok
    assert sha(image) == good


def test_a_reused_artefact_that_fails_verification_is_rebuilt(demo: Path, tmp_path: Path) -> None:
    """Bit rot: content changed but every recorded stat figure the same (simulated by recording
    the corrupted file as current). Verification catches it and the build rebuilds it."""
    spec = load_spec(copy_project(demo, tmp_path / "p"))
    build(spec, only=["firmware"])
    image = spec.output / "firmware.sysext.raw"
    good = sha(image)
    with open(image, "r+b") as fh:
        fh.seek(1 << 20)
        byte = fh.read(1)
        fh.seek(1 << 20)
        fh.write(bytes([byte[0] ^ 0xFF]))
    state_file = spec.output / ".sysextant-state.json"
    state = json.loads(state_file.read_text())
    st = image.stat()
    state["firmware"]["file"] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns,
                                 "ino": st.st_ino, "dev": st.st_dev}
    state_file.write_text(json.dumps(state))
    logs: list[str] = []
    from sysextant.core.progress import Reporter

    report = build(spec, only=["firmware"], reporter=Reporter(lambda ev: logs.append(ev.message)))
    assert report.ok and not report.artefacts[0].reused
    assert any("fails verification now" in m for m in logs)
    assert sha(image) == good


def test_a_tree_file_rewritten_with_same_size_and_mtime_is_packed_again(demo: Path, tmp_path: Path) -> None:
    """OS images clamp mtimes to SOURCE_DATE_EPOCH: a rewrite can keep both size and mtime."""
    spec = load_spec(copy_project(demo, tmp_path / "p"))
    first = build(spec)
    assert first.ok or first.over_limit
    victim = next((spec.os.root / "usr/lib/firmware").rglob("*.bin"))
    kept = next(p for p in (spec.os.root / "usr/bin").iterdir() if p.is_file() and not p.is_symlink())
    for path in (victim, kept):
        st = path.stat()
        data = path.read_bytes()
        path.write_bytes(bytes([data[0] ^ 1]) + data[1:])
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
        assert path.stat().st_size == st.st_size and path.stat().st_mtime_ns == st.st_mtime_ns
    second = build(spec)
    by_name = {a.name: a for a in second.artefacts}
    assert not by_name["firmware"].reused and by_name["drivers"].reused
    assert not by_name["uki"].reused  # usr/bin stays in the initrd
    assert by_name["firmware"].digest != {a.name: a for a in first.artefacts}["firmware"].digest


# -- the verdict ------------------------------------------------------------------------------------
def test_a_uki_over_the_limit_fails_with_no_deploy_advice(demo: Path, tmp_path: Path) -> None:
    spec_path = copy_project(demo, tmp_path / "p")
    edit(spec_path, "limit: 256MiB", "limit: 1MiB")
    proc = subprocess.run([sys.executable, "-m", "sysextant.tui.cli", "build", str(spec_path)],
                          capture_output=True, text=True)
    assert proc.returncode == 1, proc.stderr
    first = proc.stdout.splitlines()[0]
    assert first.startswith("FAILED: the UKI is") and "over the limit 1.00 MiB" in first and "Do not deploy" in first
    assert "kairos-agent" not in proc.stdout and "all artefacts verified" not in proc.stdout
    proc = subprocess.run([sys.executable, "-m", "sysextant.tui.cli", "build", str(spec_path), "--json"],
                          capture_output=True, text=True)
    summary = json.loads(proc.stdout)
    assert proc.returncode == 1 and summary["ok"] is False and summary["verdict"] == "over" and not summary["deploy"]
    proc = subprocess.run([sys.executable, "-m", "sysextant.tui.cli", "plan", str(spec_path), "--no-estimate"],
                          capture_output=True, text=True)
    assert proc.returncode == 1 and "FAILED: the UKI would be over its limit 1.00 MiB" in proc.stdout


def test_a_missing_kernel_gets_no_verdict(demo: Path, tmp_path: Path) -> None:
    spec_path = copy_project(demo, tmp_path / "p")
    (spec_path.parent / "rootfs/boot/vmlinuz").unlink()
    proc = subprocess.run([sys.executable, "-m", "sysextant.tui.cli", "plan", str(spec_path), "--no-estimate"],
                          capture_output=True, text=True)
    assert proc.returncode == 1 and "kernel" in proc.stdout
    assert "no verdict while the 1 problem(s) above stand" in proc.stdout and ": ok;" not in proc.stdout


# -- artefacts that no longer belong --------------------------------------------------------------
def test_images_of_a_removed_extension_are_removed_and_named(demo: Path, tmp_path: Path) -> None:
    spec_path = copy_project(demo, tmp_path / "p")
    assert cli(["build", str(spec_path), "--only", "firmware", "--only", "drivers"]) == 0
    drivers = spec_path.parent / "build/drivers.sysext.raw"
    assert drivers.is_file()
    text = spec_path.read_text()
    start = text.index("  - name: drivers")
    end = text.find("\n  - name:", start + 1)
    spec_path.write_text(text[:start] + (text[end + 1:] if end != -1 else ""))
    spec = load_spec(spec_path)
    assert [e.name for e in spec.extensions] == ["firmware"]
    report = build(spec, only=["firmware"])
    assert report.removed == [str(drivers)] and not drivers.exists()
    assert "drivers" not in json.loads((spec.output / ".sysextant-state.json").read_text())
    assert verify_image(spec.output / "firmware.sysext.raw").ok


def test_a_file_the_user_replaced_is_not_removed(demo: Path, tmp_path: Path) -> None:
    """Only what a build wrote (same inode, ctime, size) is removed; a file put there since stays."""
    spec_path = copy_project(demo, tmp_path / "p")
    assert cli(["build", str(spec_path), "--only", "drivers"]) == 0
    drivers = spec_path.parent / "build/drivers.sysext.raw"
    drivers.unlink()
    drivers.write_bytes(b"the user's own file")
    edit(spec_path, "  - name: drivers", "  - name: gfx")
    report = build(load_spec(spec_path), only=["firmware"])
    assert report.removed == [] and drivers.read_bytes() == b"the user's own file"


# -- the lock, temps, signals --------------------------------------------------------------------
def test_a_second_build_of_the_same_folder_waits_or_refuses(demo: Path, tmp_path: Path) -> None:
    spec_path = copy_project(demo, tmp_path / "p")
    out = spec_path.parent / "build"
    out.mkdir()
    cmd = [sys.executable, "-m", "sysextant.tui.cli", "build", str(spec_path), "--only", "firmware"]
    with build_lock(out, wait=False):
        proc = subprocess.run([*cmd, "--no-wait"], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2 and f"another build (pid {os.getpid()}) is writing {out}" in proc.stderr
        waiting = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(3)
        assert waiting.poll() is None  # queued behind the lock
    _, err = waiting.communicate(timeout=120)
    assert waiting.returncode == 0 and f"waiting for the build (pid {os.getpid()})" in err
    with pytest.raises(UserError, match="another build"), build_lock(out, wait=False), build_lock(out, wait=False):
        pass


def test_temps_of_a_dead_build_are_removed_at_once_and_live_ones_kept(demo: Path, tmp_path: Path) -> None:
    spec_path = copy_project(demo, tmp_path / "p")
    out = spec_path.parent / "build"
    out.mkdir()
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = out / f"{TEMP_PREFIX}{dead.pid}-initrd-abc"
    stale.write_bytes(b"x" * 1000)
    live = out / f"{TEMP_PREFIX}{os.getpid()}-abc"
    live.write_bytes(b"y")
    assert cli(["build", str(spec_path), "--only", "firmware"]) == 0
    assert not stale.exists() and live.exists()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])  # SIGINT: test_build's Ctrl-C test
def test_a_signal_mid_build_leaves_no_temp_and_the_old_output(demo: Path, tmp_path: Path, signum: int) -> None:
    spec_path = copy_project(demo, tmp_path / "p")
    (spec_path.parent / "rootfs/usr/lib/firmware/big-blob.bin").write_bytes(os.urandom(1 << 20) * 32)
    assert cli(["build", str(spec_path), "--only", "firmware"]) == 0
    image = spec_path.parent / "build/firmware.sysext.raw"
    before = sha(image)
    proc = subprocess.Popen([sys.executable, "-m", "sysextant.tui.cli", "build", str(spec_path), "--force",
                             "--only", "firmware"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not list((spec_path.parent / "build").glob(".sysextant-tmp-*")):
        time.sleep(0.005)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode in (130, 128 + signum), err
    assert "no partial output was left behind" in err and "Traceback" not in err
    assert sha(image) == before
    assert no_temp_files(spec_path.parent)


def test_an_initrd_temp_is_private(demo: Path, tmp_path: Path) -> None:
    """The initrd holds the whole tree (etc/shadow too): while it is being built it is 0600."""
    spec_path = copy_project(demo, tmp_path / "p")
    out = spec_path.parent / "build"
    seen: set[str] = set()
    from sysextant.core.progress import Reporter

    def look(ev) -> None:
        for p in out.glob(f"{TEMP_PREFIX}*"):
            with contextlib.suppress(FileNotFoundError):
                seen.add(oct(p.stat().st_mode & 0o777))

    build(load_spec(spec_path), only=["uki"], reporter=Reporter(look))
    assert seen and seen <= {"0o600"}, seen
