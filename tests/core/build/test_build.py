"""The headless build end to end on a small demo: images real tools accept, reuse, reproducibility,
cancellation and errors that leave nothing half-written."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from build_helpers import copy_project, no_temp_files, sha

from sysextant.core.build.pipeline import build, render
from sysextant.core.errors import Cancelled, UserError
from sysextant.core.formats.gpt import read_gpt
from sysextant.core.progress import Progress, Reporter
from sysextant.core.spec.load import load_spec
from sysextant.tui.cli import main as cli

FSCK_EROFS = shutil.which("fsck.erofs")


def test_headless_build_json_matches_verify(demo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = copy_project(demo, tmp_path / "p")
    assert cli(["build", str(spec), "--only", "firmware", "--only", "drivers", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["ok"] is True
    cert = spec.parent / "keys/db.pem"
    for art in summary["artefacts"]:
        assert cli(["verify", art["path"], "--cert", str(cert), "--json"]) == 0
        verified = json.loads(capsys.readouterr().out)
        assert verified["ok"] and verified["root_hash"] == art["digest"]
        assert os.path.getsize(art["path"]) == art["size"]
        # one check type for both: the same JSON, the root hash still at the end of verity's detail
        assert art["checks"] == verified["checks"] and all(list(c) == ["name", "ok", "detail"] for c in art["checks"])
        verity = next(c for c in art["checks"] if c["name"] == "verity")
        assert verity["detail"].endswith(f" data bytes matches; root hash {art['digest']}")
    assert no_temp_files(spec.parent)


@pytest.mark.skipif(FSCK_EROFS is None, reason="fsck.erofs not installed (apt-get install erofs-utils)")
def test_image_extracts_to_the_selection(demo: Path, tmp_path: Path) -> None:
    spec_path = copy_project(demo, tmp_path / "p")
    spec = load_spec(spec_path)
    report = build(spec, only=["firmware"])
    image = Path(report.artefacts[0].path)
    with open(image, "rb") as fh:
        root_part = read_gpt(fh).partitions[0]
        fh.seek(root_part.offset)
        (tmp_path / "fs.img").write_bytes(fh.read(root_part.size))
    out = tmp_path / "x"
    subprocess.run([FSCK_EROFS, f"--extract={out}", str(tmp_path / "fs.img")], check=True, capture_output=True)
    src = spec.os.root / "usr/lib/firmware"
    got = out / "usr/lib/firmware"
    src_files = sorted(p.relative_to(src) for p in src.rglob("*"))
    assert src_files == sorted(p.relative_to(got) for p in got.rglob("*"))
    for rel in src_files:
        a, b = src / rel, got / rel
        assert os.lstat(a).st_mode == os.lstat(b).st_mode, rel
        if a.is_symlink():
            assert os.readlink(a) == os.readlink(b)
        elif a.is_file():
            assert sha(a) == sha(b), rel
    release = (out / "usr/lib/extension-release.d/extension-release.firmware").read_text()
    assert "ID=_any" in release and "ARCHITECTURE=x86-64" in release
    assert sorted(p.name for p in out.iterdir()) == ["usr"]


def test_reproducible_reused_and_changed(demo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    a = load_spec(copy_project(demo, tmp_path / "a"))
    b = load_spec(copy_project(demo, tmp_path / "b"))
    ra = build(a, only=["drivers"])
    rb = build(b, only=["drivers"])
    assert sha(ra.artefacts[0].path) == sha(rb.artefacts[0].path)
    again = build(a, only=["drivers"])
    assert again.artefacts[0].reused and sha(again.artefacts[0].path) == sha(ra.artefacts[0].path)
    # one changed file gives a different image
    victim = next(p for p in (b.os.root / "usr/lib/modules").rglob("*.ko.zst") if "gpu" in str(p))
    victim.write_bytes(victim.read_bytes() + b"changed")
    rc = build(b, only=["drivers"])
    assert not rc.artefacts[0].reused
    assert sha(rc.artefacts[0].path) != sha(ra.artefacts[0].path)


def test_cancel_mid_build_keeps_previous_outputs(demo: Path, tmp_path: Path) -> None:
    spec = load_spec(copy_project(demo, tmp_path / "p"))
    first = build(spec, only=["firmware"])
    before = sha(first.artefacts[0].path)
    reporter = Reporter()

    def cancel_when_packing(ev: Progress) -> None:
        if ev.stage == "verity" and ev.done > 0:
            reporter.cancel()

    reporter._callback = cancel_when_packing
    with pytest.raises(Cancelled):
        build(spec, only=["firmware"], force=True, reporter=reporter)
    assert sha(first.artefacts[0].path) == before
    assert no_temp_files(spec.output)


def test_missing_key_fails_before_any_work(demo: Path, tmp_path: Path) -> None:
    spec_path = copy_project(demo, tmp_path / "p")
    (spec_path.parent / "keys/db.key").unlink()
    spec = load_spec(spec_path)
    with pytest.raises(UserError, match=r"signing key .*db.key does not exist"):
        build(spec)
    assert not spec.output.exists()


def test_unsigned_build_has_no_signature_partition(demo: Path, tmp_path: Path) -> None:
    spec_path = copy_project(demo, tmp_path / "p")
    text = spec_path.read_text()
    start = text.index("signing:")
    end = text.index("extensions:")
    spec_path.write_text(text[:start] + text[end:])
    report = build(load_spec(spec_path), only=["drivers"])
    art = report.artefacts[0]
    assert art.verified and not art.signed
    with open(art.path, "rb") as fh:
        assert len(read_gpt(fh).partitions) == 2


SBVERIFY = shutil.which("sbverify")


@pytest.mark.skipif(not Path("/usr/lib/systemd/boot/efi/linuxx64.efi.stub").exists(),
                    reason="systemd-boot-efi (the UKI stub) not installed")
def test_uki_build_signed_verified_and_exactly_predicted(demo: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    spec_path = copy_project(demo, tmp_path / "p")
    assert cli(["uki", str(spec_path), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["verified"] and summary["signed"]
    assert summary["actual_bytes"] == os.path.getsize(summary["path"]) == summary["exact_formula_bytes"]
    # predicted before the build from the compressed-size estimate: close, on a tiny tree
    assert abs(summary["predicted_bytes"] - summary["actual_bytes"]) / summary["actual_bytes"] < 0.05
    if SBVERIFY:
        cert = spec_path.parent / "keys/db.pem"
        subprocess.run([SBVERIFY, "--cert", str(cert), summary["path"]], check=True, capture_output=True)
    # a second run reuses it; a changed cmdline rebuilds it
    assert cli(["uki", str(spec_path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["reused"] is True
    spec_path.write_text(spec_path.read_text().replace("rd.immucore.debug", "quiet"))
    assert cli(["uki", str(spec_path), "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["reused"] is False and again["sha256"] != summary["sha256"]


ROOT = os.geteuid() == 0 and shutil.which("unshare") is not None


@pytest.mark.skipif(not ROOT, reason="needs root and unshare to mount a tiny tmpfs")
@pytest.mark.parametrize("only", ["firmware", "uki"])
def test_full_disk_is_one_clear_error_and_leaves_nothing(demo: Path, tmp_path: Path, only: str) -> None:
    spec_path = copy_project(demo, tmp_path / "p")
    out = spec_path.parent / "build"
    out.mkdir()
    script = (f"mount -t tmpfs -o size=1m tmpfs {out} && "
              f"{sys.executable} -m sysextant.tui.cli build {spec_path} --only {only}; "
              f"echo rc=$?; ls -A {out}")
    proc = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, timeout=120)
    assert "rc=2" in proc.stdout, proc.stdout + proc.stderr
    assert "no space left" in proc.stderr and "Traceback" not in proc.stderr
    assert str(out) in proc.stderr and "scan the tree again" not in proc.stderr  # the output disk, not the tree
    leftovers = proc.stdout.split("rc=2", 1)[1].split()
    # no image, no temp file (the lock file stays, and the estimator's calibration cache when the
    # UKI's initrd was estimated before the disk filled)
    assert set(leftovers) - {".sysextant-calibration.json"} == {".sysextant.lock"}, leftovers


def test_ctrl_c_mid_build_leaves_previous_outputs(demo: Path, tmp_path: Path) -> None:
    import signal
    import time

    spec_path = copy_project(demo, tmp_path / "p")
    # enough data that the build is still packing when the signal lands, even on a fast machine
    (spec_path.parent / "rootfs/usr/lib/firmware/big-blob.bin").write_bytes(os.urandom(1 << 20) * 32)
    assert cli(["build", str(spec_path), "--only", "firmware"]) == 0
    image = spec_path.parent / "build/firmware.sysext.raw"
    before = sha(image)
    proc = subprocess.Popen([sys.executable, "-m", "sysextant.tui.cli", "build", str(spec_path), "--force",
                             "--only", "firmware"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            # a suite started in the background (`pytest &`) ignores SIGINT, and so
                            # would the child: give it the default disposition a terminal gives
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not list((spec_path.parent / "build").glob(".sysextant-tmp-*")):
        time.sleep(0.005)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "cancelled" in err and "Traceback" not in err
    assert sha(image) == before
    assert no_temp_files(spec_path.parent)


def test_a_build_packs_the_tree_as_it_is_now(demo: Path, tmp_path: Path) -> None:
    """The workbench hands over the index it scanned when it opened; the build must not trust it:
    a file removed and one added since are what the image holds, and the report says the tree
    changed (the figures shown before the build are out of date)."""
    from sysextant.core.build.verify import verify_image
    from sysextant.core.tree.index import scan

    spec = load_spec(copy_project(demo, tmp_path / "p"))
    index = scan(spec.os.root)  # the workbench builds from the index it already has
    firmware = spec.os.root / "usr/lib/firmware"
    victim = next(firmware.rglob("*.bin"))
    victim.unlink()
    (firmware / "added-since.bin").write_bytes(b"new" * 1000)
    report = build(spec, only=["firmware"], index=index)
    assert report.ok and report.tree_changed and "changed since it was scanned" in report.tree_changed
    assert "changed since it was scanned" in render(report)
    image = spec.output / "firmware.sysext.raw"
    assert verify_image(image).ok
    listing = subprocess.run(["systemd-dissect", "--list", str(image)], capture_output=True, text=True)
    if listing.returncode == 0:  # systemd-dissect needs root and loop devices
        assert "usr/lib/firmware/added-since.bin" in listing.stdout
        assert str(victim.relative_to(spec.os.root)) not in listing.stdout
    assert no_temp_files(spec.base)


def test_what_was_built_before_a_cancel_is_reused(demo: Path, tmp_path: Path) -> None:
    spec = load_spec(copy_project(demo, tmp_path / "p"))
    reporter = Reporter()
    replaced: list[tuple[str, str]] = []

    def cancel_at_drivers(ev: Progress) -> None:
        if ev.kind == "replaced":
            replaced.append((ev.artefact, ev.path))
        if ev.artefact == "drivers" and ev.stage:
            reporter.cancel()

    reporter._callback = cancel_at_drivers
    with pytest.raises(Cancelled):
        build(spec, only=["firmware", "drivers"], reporter=reporter)
    # the engine said which output it had replaced before the stop (front ends show it): that
    # one, whole, and not the one it stopped in
    firmware = spec.output / "firmware.sysext.raw"
    assert replaced == [("firmware", str(firmware))] and firmware.exists()
    assert not (spec.output / "drivers.sysext.raw").exists()
    events: list[Progress] = []
    again = build(spec, only=["firmware", "drivers"], reporter=Reporter(events.append))
    assert [(a.name, a.reused) for a in again.artefacts] == [("firmware", True), ("drivers", False)]
    assert again.ok
    # a reused artefact replaces nothing; a rebuilt one says so, the UKI too when it is built
    assert [(e.artefact, Path(e.path).name) for e in events if e.kind == "replaced"] == [
        ("drivers", "drivers.sysext.raw")]
    events.clear()
    build(spec, only=["uki"], reporter=Reporter(events.append))
    assert [(e.artefact, e.path) for e in events if e.kind == "replaced"] == [("uki", str(spec.uki.output))]


def test_an_empty_extension_builds_no_image(demo: Path, tmp_path: Path) -> None:
    from sysextant.core.spec.edit import SpecEditor, save_text_atomic
    from sysextant.core.spec.model import ExtensionSpec

    spec_path = copy_project(demo, tmp_path / "p")
    editor = SpecEditor(spec_path.read_text(), spec_path)
    editor.add_extension(ExtensionSpec(name="later"))
    save_text_atomic(spec_path, editor.text)
    events: list[Progress] = []
    report = build(load_spec(spec_path), only=["later", "drivers"], reporter=Reporter(events.append))
    assert [a.name for a in report.artefacts] == ["drivers"]
    said = [(e.artefact, e.stage, e.kind, e.message) for e in events if e.task == "later"]
    assert said == [("later", "", "log", "selects nothing yet: no image built")]
    assert not (spec_path.parent / "build/later.sysext.raw").exists()
