"""The workbench's build screen driven with the pilot on a small signed demo.

Every claim the screen makes is checked against the files: the images and the UKI are verified
again with the independent readers (core.build.verify: verify_image, verify_uki), a cancelled build is
checked for untouched previous outputs, temp files and child processes, and an error is shown
with the workbench still usable afterwards.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import tempfile
import threading
import time
from pathlib import Path

import pytest

from sysextant.core.build.pipeline import build
from sysextant.core.build.verify import verify_image, verify_uki
from sysextant.core.demo import create_demo
from sysextant.core.progress import Progress
from sysextant.core.spec.load import load_spec
from sysextant.core.units import format_size

pytest.importorskip("textual")

from tui_helpers import ready, status, wait_for  # noqa: E402

from sysextant.core.build.tracker import STAGE_LABELS, BuildTracker  # noqa: E402
from sysextant.tui.app import WorkbenchApp  # noqa: E402
from sysextant.tui.screens import build as build_module  # noqa: E402
from sysextant.tui.screens.build import BuildScreen  # noqa: E402
from sysextant.tui.widgets.build import OverallBar, ResultView, StagesView  # noqa: E402
from sysextant.tui.widgets.gauge import LEVEL_WORDS  # noqa: E402

pytestmark = pytest.mark.anyio
SIZE = (120, 40)
STUB = Path("/usr/lib/systemd/boot/efi/linuxx64.efi.stub")
needs_stub = pytest.mark.skipif(not STUB.is_file(), reason=f"{STUB} missing (install systemd-boot-efi)")


@pytest.fixture(scope="module")
def demo_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The signed demo at 5% scale, zstd level 3 (quick), built by each test in a copy."""
    spec = create_demo(tmp_path_factory.mktemp("demo") / "project", scale=0.05)
    spec.write_text(re.sub(r"level: \d+", "level: 3", spec.read_text(), count=1))
    return spec.parent


@pytest.fixture
def spec_path(tmp_path: Path, demo_project: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("SYSEXTANT_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.chdir(tmp_path)
    shutil.copytree(demo_project, tmp_path / "project", symlinks=True)
    return tmp_path / "project" / "sysextant.yaml"


async def build_done(app: WorkbenchApp, pilot, timeout: float = 40) -> BuildScreen:
    """The build screen, once its build has ended."""
    assert await wait_for(pilot, lambda: isinstance(app.screen, BuildScreen), 3), "no build screen"
    screen = app.screen
    assert await wait_for(pilot, lambda: not screen.running, timeout), "the build did not end"
    await pilot.pause()
    return screen


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def outputs(spec_path: Path) -> dict[str, str]:
    out = spec_path.parent / "build"
    # the artefacts (the build state and the estimate's calibration are bookkeeping that changes)
    return {p.name: sha256(p) for p in sorted(out.iterdir()) if not p.name.startswith(".")} if out.is_dir() else {}


def temp_files(folder: Path) -> list[Path]:
    return sorted(folder.rglob(".sysextant-tmp-*")) if folder.is_dir() else []


def children(name: str) -> list[int]:
    """Live (not zombie) child processes of this test process called ``name``, from /proc."""
    me = os.getpid()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            raw = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        comm = raw[raw.index("(") + 1 : raw.rindex(")")]
        state, ppid = raw[raw.rindex(")") + 2 :].split()[:2]
        if int(ppid) == me and comm == name and state != "Z":
            found.append(int(entry))
    return found


@needs_stub
async def test_full_build_then_unchanged_then_everything(spec_path: Path) -> None:
    cert = spec_path.parent / "keys/db.pem"
    app = WorkbenchApp(spec_path, watch=False, estimate=False)
    async with app.run_test(size=SIZE) as pilot:
        await ready(app, pilot)
        await pilot.press("b")
        screen = await build_done(app, pilot)
        assert screen.kind == "ok", screen.error
        report = screen.report
        assert report.ok and [a.name for a in report.artefacts] == ["firmware", "drivers", "uki"]
        assert not any(a.reused for a in report.artefacts)
        # the screen: 100%, a bar per stage, every artefact with path, size, hash, checks, deploy
        assert screen.tracker.fraction(time.monotonic()) == 1.0
        assert " 100%" in str(screen.query_one(OverallBar).text())
        groups = screen.tracker.groups
        assert {"pack", "copy", "verity"} <= set(groups["firmware"].stages)
        assert {"initrd: compress", "assemble: write", "assemble: sign", "assemble: sha256"} <= set(groups["uki"].stages)
        assert all(st.finished for g in groups.values() for st in g.stages.values())
        unworded = {st.name for g in groups.values() for st in g.stages.values()} - set(STAGE_LABELS)
        assert not unworded, f"stages shown by their engine names: {unworded}"
        assert [g.state for g in groups.values()] == ["verified", "verified", "verified", "passed"]
        text = str(screen.query_one(ResultView).text)
        for a in report.artefacts:
            assert a.path in text and a.digest in text and f"{a.size:,} bytes" in text
            assert f"all {len(a.checks)} checks passed" in text
        assert text.count("✓ signature:") == 3 and text.count("✓ verity:") == 2
        uki = report.artefacts[-1]
        predicted = format_size(uki.predicted_size) if uki.predicted_size is not None else "—"
        assert f"size: predicted {predicted}" in text and f"actual {format_size(uki.size)}" in text
        assert f"UKI against the limit 256 MiB: {LEVEL_WORDS[report.verdict]}" in text
        assert f"{report.verdict} ({LEVEL_WORDS[report.verdict]})" not in text  # said once, not twice
        assert "kairos-agent sysext install" in text and "--overlay-iso" in text
        # and the files themselves, read again by the independent checkers
        for a in report.artefacts:
            path = Path(a.path)
            if a.kind == "sysext":
                checked = verify_image(path, cert)
                assert checked.ok, [c for c in checked.checks if not c.ok]
                assert checked.check("verity").root_hash == checked.root_hash == a.digest
            else:
                assert verify_uki(path, cert).ok
                assert sha256(path) == a.digest
        assert not temp_files(spec_path.parent)
        first = outputs(spec_path)
        await pilot.press("escape")
        assert await wait_for(pilot, lambda: not isinstance(app.screen, BuildScreen))
        assert "build ok: 3 artefacts verified (3 built, 0 reused)" in status(app)

        await pilot.press("b")  # nothing changed: everything reused
        screen = await build_done(app, pilot)
        assert screen.kind == "ok" and screen.report.ok
        assert all(a.reused for a in screen.report.artefacts)
        assert [g.state for g in screen.tracker.groups.values()] == ["reused-verified"] * 3 + ["passed"]
        assert str(screen.query_one(ResultView).text).count("reused (unchanged since the last build)") == 3
        await pilot.press("q")
        assert await wait_for(pilot, lambda: not isinstance(app.screen, BuildScreen))
        assert "(0 built, 3 reused)" in status(app)

        await pilot.press("ctrl+p")  # everything again, from the palette
        await pilot.press(*"Rebuild everything")
        await pilot.pause(0.3)
        await pilot.press("enter")
        screen = await build_done(app, pilot)
        assert screen.force and screen.report.ok
        assert not any(a.reused for a in screen.report.artefacts)
        assert outputs(spec_path) == first  # reproducible: the same bytes again
        await pilot.press("s")  # the JSON summary
        summary = spec_path.parent / "build" / "sysextant-build.json"
        saved = json.loads(summary.read_text())
        assert saved["ok"] and [a["digest"] for a in saved["artefacts"]] == [a.digest for a in report.artefacts]
        assert str(summary) in str(screen.query_one("#build-outcome").render())
        await pilot.press("escape")


@needs_stub
async def test_cancel_keeps_previous_outputs_and_stops_the_packer(spec_path: Path, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    if not shutil.which("mksquashfs"):
        pytest.skip("mksquashfs not installed (squashfs-tools)")
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))  # the packer's staging folder goes here
    root = spec_path.parent / "rootfs"
    # incompressible firmware, so that mksquashfs -comp xz runs for seconds, not milliseconds
    (root / "usr/lib/firmware/blob.bin").write_bytes(random.Random(7).randbytes(48 << 20))
    build(load_spec(spec_path))  # the previous good outputs (EROFS firmware)
    before = outputs(spec_path)
    assert set(before) >= {"firmware.sysext.raw", "drivers.sysext.raw", "uki.efi"}
    text = spec_path.read_text()
    spec_path.write_text(text.replace("filesystem: erofs\n    compression: none", "filesystem: squashfs\n"
                                      "    compression: xz", 1))
    assert load_spec(spec_path).extensions[0].filesystem == "squashfs"

    seen: dict[str, list[int]] = {}

    class Watch:
        """Passes everything to the screen's reporter; notes the packer child when it starts."""

        def __init__(self, inner) -> None:  # noqa: ANN001 - a core.progress.Reporter
            self.inner = inner

        def __call__(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003
            self.inner(*args, **kwargs)

        def check(self) -> None:
            self.inner.check()

        def for_artefact(self, name: str) -> Watch:
            return Watch(self.inner.for_artefact(name))

        @property
        def cancelled(self) -> bool:
            return self.inner.cancelled

        def log(self, task: str, message: str, kind: str = "log") -> None:
            self.inner.log(task, message, kind)
            if "mksquashfs" in message:  # logged right after the child started
                seen["started"] = children("mksquashfs")
                end = time.monotonic() + 10
                while not self.inner.cancelled and time.monotonic() < end:
                    time.sleep(0.005)  # the test presses escape now
                seen["alive_at_cancel"] = children("mksquashfs")

    def watched_build(spec, *, reporter, **kwargs):  # noqa: ANN001, ANN003, ANN202
        return build(spec, reporter=Watch(reporter), **kwargs)

    monkeypatch.setattr(build_module, "build", watched_build)
    app = WorkbenchApp(spec_path, watch=False, estimate=False)
    async with app.run_test(size=SIZE) as pilot:
        await ready(app, pilot)
        await pilot.press("b")
        assert await wait_for(pilot, lambda: "started" in seen, 20), "mksquashfs never started"
        screen = app.screen
        assert isinstance(screen, BuildScreen)
        view = screen.query_one(StagesView)
        assert await wait_for(pilot, lambda: "the packer is running" in str(view.render()))
        await pilot.press("escape")
        screen = await build_done(app, pilot)
        assert screen.kind == "cancelled"
        assert "Cancelled; previous outputs kept." in str(screen.query_one("#build-outcome").render())
        assert screen.tracker.groups["firmware"].state == "cancelled" and screen.replaced == []
        assert seen["alive_at_cancel"], "the packer had ended before the cancel: nothing was proven"
        assert children("mksquashfs") == []  # terminated, and reaped
        assert outputs(spec_path) == before  # sha256 of every previous output unchanged
        assert temp_files(spec_path.parent) == [] and list(tmp.iterdir()) == []
        await pilot.press("escape")
        assert await wait_for(pilot, lambda: not isinstance(app.screen, BuildScreen))
        assert "build cancelled; previous outputs kept" in status(app)


@needs_stub
async def test_error_is_shown_and_the_workbench_goes_on(spec_path: Path) -> None:
    key = spec_path.parent / "keys/db.key"
    hidden = key.with_name("db.key.away")
    key.rename(hidden)
    app = WorkbenchApp(spec_path, watch=False, estimate=False)
    async with app.run_test(size=SIZE) as pilot:
        await ready(app, pilot)
        await pilot.press("b")
        screen = await build_done(app, pilot)
        assert screen.kind == "error"
        assert str(key) in screen.error and "signing.key" in screen.error
        shown = str(screen.query_one("#build-outcome").render())
        assert "db.key does not exist" in shown and "Nothing was half-written" in shown
        assert outputs(spec_path) == {} and not temp_files(spec_path.parent)
        await pilot.press("escape")
        assert await wait_for(pilot, lambda: not isinstance(app.screen, BuildScreen))
        assert "build failed:" in status(app) and "db.key" in status(app)
        await pilot.press("s")  # the workbench still answers keys
        assert app.tree.sort == "size"
        hidden.rename(key)
        await pilot.press("B")
        screen = await build_done(app, pilot)
        assert screen.kind == "ok" and screen.report.ok and len(screen.report.artefacts) == 3


@needs_stub
async def test_internal_error_is_shown_not_fatal(spec_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(spec, *, reporter, **kwargs):  # noqa: ANN001, ANN003, ANN202
        firmware = reporter.for_artefact("firmware")
        firmware.log("firmware", "building firmware.sysext.raw")
        firmware("firmware: pack", 10, 100)
        raise ZeroDivisionError("a bug in the engine")

    monkeypatch.setattr(build_module, "build", broken)
    app = WorkbenchApp(spec_path, watch=False, estimate=False)
    async with app.run_test(size=SIZE) as pilot:
        await ready(app, pilot)
        await pilot.press("b")
        screen = await build_done(app, pilot)
        assert screen.kind == "crash" and screen.error == "ZeroDivisionError: a bug in the engine"
        assert "ZeroDivisionError" in str(screen.query_one("#build-outcome").render())
        assert screen.tracker.groups["firmware"].state == "failed"
        await pilot.press("escape")
        assert await wait_for(pilot, lambda: not isinstance(app.screen, BuildScreen))
        assert "internal error" in status(app) and app.is_running


async def test_build_refused_while_scanning_and_while_the_spec_is_broken(
        spec_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from sysextant.core.workbench import session as session_module

    release = threading.Event()
    real_scan = session_module.scan

    def slow_scan(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        release.wait(10)
        return real_scan(*args, **kwargs)

    monkeypatch.setattr(session_module, "scan", slow_scan)
    app = WorkbenchApp(spec_path, estimate=False)
    try:
        async with app.run_test(size=SIZE) as pilot:
            await pilot.pause()
            await pilot.press("b")
            assert not isinstance(app.screen, BuildScreen)
            assert "scan of the OS tree is not finished" in status(app)
            release.set()
            await ready(app, pilot)
            await pilot.pause(0.3)  # the watcher is up
            good = spec_path.read_text()
            spec_path.write_text(good.replace("level: 3", "level: nineteen"))
            assert await wait_for(pilot, lambda: bool(app.session.disk_problems))
            await pilot.press("b")
            assert not isinstance(app.screen, BuildScreen)
            assert "on disk has 1 problem;" in status(app)
            assert not (spec_path.parent / "build").exists()
    finally:
        release.set()


def test_tracker_eta_from_measured_rates_and_monotone_fraction(spec_path: Path) -> None:
    spec = load_spec(spec_path)  # extensions firmware, drivers; signed
    t = BuildTracker(spec, None, started=0.0, uki_bytes=4096)  # no plan: tiny nominal sizes
    assert t.fraction(0.5) == 0.0  # key checks and such are not progress
    t.apply(Progress("firmware", 0, 0, "steps", "building firmware.sysext.raw", "log", "firmware"), 0.1)
    t.apply(Progress("firmware: pack", 0, 100 << 20, artefact="firmware", stage="pack"), 0.1)
    t.apply(Progress("firmware: pack", 50 << 20, 100 << 20, artefact="firmware", stage="pack"), 1.1)  # 50 MiB in 1 s
    fw = t.groups["firmware"]
    assert fw.stages["pack"].rate == pytest.approx(50 << 20)
    assert fw.remaining(1.1) == pytest.approx(1.0, abs=0.01)  # the other half at the same rate
    assert t.eta(1.1) == pytest.approx(1.0, abs=0.05) and 0.4 < t.fraction(1.1) < 0.6
    t.apply(Progress("drivers", 0, 0, "steps", "unchanged since the last build: reusing drivers.sysext.raw", "reused",
                     "drivers"), 2.0)
    assert fw.state == "done" and fw.remaining(2.0) == 0 and t.groups["drivers"].state == "reused"
    shown = [t.fraction(x) for x in (1.1, 2.0, 2.1)]
    t.apply(Progress("initrd: compress", 1, 1000, artefact="uki", stage="initrd: compress"), 2.2)
    shown += [t.fraction(x) for x in (2.3, 5.0, 9.0)]
    assert shown == sorted(shown) and shown[-1] < 1.0  # never backwards, never 100% before the end
    t.finish(None, "cancelled", 9.5)
    assert t.groups["uki"].state == "cancelled" and t.groups["verify"].state == "waiting"
    assert t.eta(9.6) is None and t.fraction(9.6) == shown[-1]


def test_tracker_eta_counts_a_stage_it_did_not_expect_at_its_own_pace(spec_path: Path) -> None:
    """The estimate the UKI's build prepares when the front end had none is not among the UKI's
    expected stages; while it runs, its measured pace counts in the ETA (a 49 s build once showed
    6.6 s left because it did not)."""
    t = BuildTracker(load_spec(spec_path), None, started=0.0, uki_bytes=4096)
    uki = t.groups["uki"]
    t.apply(Progress("estimate: proxy pass", 0, 400 << 20, artefact="uki", stage="estimate: proxy pass"), 1.0)
    before = uki.remaining(1.0)
    t.apply(Progress("estimate: proxy pass", 100 << 20, 400 << 20, artefact="uki", stage="estimate: proxy pass"), 11.0)
    assert uki.remaining(11.0) == pytest.approx(before + 30.0, abs=0.5)  # a quarter in 10 s: 30 s to go
    t.apply(Progress("estimate: proxy pass", 400 << 20, 400 << 20, artefact="uki", stage="estimate: proxy pass"), 41.0)
    assert uki.remaining(41.0) == pytest.approx(before, abs=0.5)  # finished: nothing more of it


def test_tracker_reads_the_events_fields_never_their_text(spec_path: Path) -> None:
    """The artefact and stage come from the event's fields: a task text naming another artefact,
    or a message saying "unchanged", changes nothing; only ``kind`` says reused."""
    t = BuildTracker(load_spec(spec_path), None, started=0.0, uki_bytes=4096)
    firmware, drivers = t.groups["firmware"], t.groups["drivers"]
    assert t.apply(Progress("drivers: pack", 5, 10, artefact="firmware", stage="pack"), 0.1) is firmware
    assert set(firmware.stages) == {"pack"} and not drivers.stages and drivers.state == "waiting"
    # events of the build as a whole (a step; a line no artefact claims) leave every group alone
    assert t.apply(Progress("drivers: pack", 1, 2), 0.2) is None
    assert t.apply(Progress("scan", 0, 0, "steps", "scanning the tree", "step"), 0.3) is None
    assert not drivers.stages and drivers.state == "waiting"
    # a line about an artefact starts it; its words do not make it reused, nor a stage of it
    t.apply(Progress("drivers: pack", 0, 0, "steps", "unchanged since the last build: mksquashfs", "log",
                     "drivers", "pack"), 0.4)
    assert drivers.state == "building" and not drivers.stages and firmware.state == "done"
    t.apply(Progress("uki", 0, 0, "steps", "reusing uki.efi", "reused", "uki"), 0.5)
    assert t.groups["uki"].state == "reused" and t.groups["uki"].ended == 0.5
    # a reused artefact that fails verification is rebuilt: its progress makes it building again
    t.apply(Progress("uki: assemble: write", 1, 4, artefact="uki", stage="assemble: write"), 0.6)
    assert t.groups["uki"].state == "building" and t.groups["uki"].ended is None


def test_result_shows_checks_from_their_fields(tmp_path: Path) -> None:
    """The report's checks are typed: the detail is shown as it is, the verity check's root hash
    is a field (shown once, on the artefact's own row), failed checks say what failed."""
    from sysextant.core.build.artefacts import Artefact, BuildReport
    from sysextant.core.build.verify import Check
    from sysextant.tui.widgets.build import result_text

    root = "ab" * 32
    checks = [Check("gpt", True, "protective MBR"),
              Check("verity", True, "hash tree recomputed from 4096 data bytes matches", root_hash=root),
              Check("signature", False, "not signed by the given certificate"),
              Check("layout", False, "no root partition")]
    art = Artefact("sysext", "fw", str(tmp_path / "fw.sysext.raw"), 8192, False, True, root, False, checks)
    report = BuildReport("sysextant.yaml", str(tmp_path), [art], 1.0, 1 << 30, None, [])
    text = result_text(report, None, lambda name: "", width=120).plain
    assert text.count(root) == 1 and f"root hash {root}\n" in text
    assert "✓ verity: hash tree recomputed from 4096 data bytes matches\n" in text
    assert "✗ signature: not signed by the given certificate\n" in text and "✗ layout: no root partition\n" in text
    assert "✗ 2 of 4 checks FAILED (gpt verity)" not in text and "✗ 2 of 4 checks FAILED (gpt)" in text


@needs_stub
async def test_a_build_after_the_tree_changed_packs_it_and_says_so(spec_path: Path) -> None:
    """A file added to the tree after the workbench scanned it is in the UKI the build makes (the
    build rescans), the result says the figures shown were out of date, and the workbench scans
    the tree again afterwards."""
    app = WorkbenchApp(spec_path, watch=False, estimate=False)
    async with app.run_test(size=SIZE) as pilot:
        await ready(app, pilot)
        entries_before = len(app.session.index)
        shown_initrd = app.session.plan.initrd_cpio_after  # the figure of the scan the workbench made
        added = spec_path.parent / "rootfs/usr/share/added-after-the-scan.bin"
        added.write_bytes(os.urandom(1 << 20))
        await pilot.press("b")
        screen = await build_done(app, pilot)
        assert screen.kind == "ok" and screen.report.ok, screen.error
        assert screen.report.tree_changed and "changed since it was scanned" in screen.report.tree_changed
        assert "changed since it was scanned" in str(screen.query_one(ResultView).text)
        uki = screen.report.artefacts[-1]
        assert uki.extra["initrd_uncompressed"] >= shown_initrd + (1 << 20)  # the new file went into the initrd
        await pilot.press("escape")
        assert await wait_for(pilot, lambda: not isinstance(app.screen, BuildScreen))
        assert "scanning it again" in status(app)
        assert await wait_for(pilot, lambda: app.session.index is not None and app.session.index.complete
                              and len(app.session.index) == entries_before + 1, 20)
