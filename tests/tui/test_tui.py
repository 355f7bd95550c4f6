"""The workbench driven headless with Textual's pilot on a small demo tree.

Every figure the screen shows is compared with the engine's own (core.workbench / core.plan), the
spec file is read back from disk, and outside edits are made by writing the file from the test.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
from pathlib import Path

import pytest
from paths import TESTS
from tui_helpers import go, project, ready, status, wait_for

from sysextant.core.sizing.plan import make_plan
from sysextant.core.spec.load import load_spec
from sysextant.core.tree.index import scan
from sysextant.core.tree.selection import Sums, subtree_set
from sysextant.core.workbench.session import Session

pytest.importorskip("textual")

from sysextant.tui.app import WorkbenchApp  # noqa: E402
from sysextant.tui.themes import load_settings  # noqa: E402
from sysextant.tui.widgets.extensions import ExtensionsPanel  # noqa: E402
from sysextant.tui.widgets.gauge import UkiGauge  # noqa: E402

pytestmark = pytest.mark.anyio
SIZE = (120, 40)
KV = "6.6.60-kairos-demo"


def gauge(app: WorkbenchApp):
    return app.query_one(UkiGauge).figures


async def test_mark_and_unmark_change_totals_by_the_engine_figures(spec_path: Path) -> None:
    app = WorkbenchApp(spec_path, estimate=False)
    async with app.run_test(size=SIZE) as pilot:
        await ready(app, pilot)
        s = app.session
        before = gauge(app)
        assert before == s.figures()
        doc = await go(app, pilot, "usr/share/doc")
        moved = s.sums.cpio_bytes(subtree_set(s.index, [doc]).intersection(s.plan.initrd_after))
        await pilot.press("space")
        after = gauge(app)
        assert after.initrd_cpio == before.initrd_cpio - moved
        assert "mark usr/share/doc into firmware" in status(app)
        assert "usr/share/doc" in load_spec(spec_path).extension("firmware").paths
        panel = app.query_one(ExtensionsPanel)
        assert panel.current == "firmware"
        fig = next(f for f in s.extension_figures() if f.name == "firmware")
        plan = make_plan(load_spec(spec_path), scan(s.root))
        assert fig.initrd_saved == next(e for e in plan.extensions if e.name == "firmware").initrd_bytes
        assert app.tree.entry != doc  # the cursor moved down, as in dua and ranger
        await pilot.press("k", "space")  # back up, and again: unmark
        assert gauge(app).initrd_cpio == before.initrd_cpio
        assert "usr/share/doc" not in load_spec(spec_path).extension("firmware").paths


async def test_refused_marks_say_why(spec_path: Path) -> None:
    app = WorkbenchApp(spec_path, estimate=False)
    async with app.run_test(size=SIZE) as pilot:
        await ready(app, pilot)
        text = spec_path.read_text()
        await go(app, pilot, "etc")
        await pilot.press("space")
        assert "outside usr/ and opt/" in status(app)
        await go(app, pilot, "usr/bin/immucore")
        await pilot.press("space")
        assert "needed to boot" in status(app)
        await go(app, pilot, f"usr/lib/modules/{KV}/kernel/drivers/gpu")  # already in drivers
        await pilot.press("space")
        assert "already in extension drivers" in status(app)
        assert spec_path.read_text() == text


async def test_nested_marks_counted_once_and_undo(spec_path: Path) -> None:
    app = WorkbenchApp(spec_path, estimate=False)
    async with app.run_test(size=SIZE) as pilot:
        await ready(app, pilot)
        s = app.session
        original = spec_path.read_text()
        await pilot.press("2")  # drivers
        assert app.current_ext == "drivers"
        await go(app, pilot, "usr/share/man/man1")
        await pilot.press("space")
        await go(app, pilot, "usr/share/man")
        await pilot.press("space")
        man = s.index.lookup("usr/share/man")
        drivers = next(f for f in s.extension_figures() if f.name == "drivers")
        plan0 = make_plan(load_spec(spec_path), s.index, s.sums)
        assert drivers.bytes == plan0.extensions[1].bytes
        expected = s.sums.apparent(subtree_set(s.index, [man]).union(plan0.extensions[1].selected))
        assert drivers.bytes == expected  # man1 is inside man: counted once
        await pilot.press("u")
        await pilot.press("ctrl+z")
        assert spec_path.read_text() == original
        assert "undid" in status(app)


async def test_extension_add_rename_remove(spec_path: Path) -> None:
    app = WorkbenchApp(spec_path, estimate=False)
    async with app.run_test(size=SIZE) as pilot:
        await ready(app, pilot)
        await pilot.press("plus")
        await pilot.press(*"k3s", "enter")
        await pilot.pause()
        assert app.current_ext == "k3s"
        await go(app, pilot, "usr/bin/k3s")
        await pilot.press("space")
        assert load_spec(spec_path).extension("k3s").paths == ["usr/bin/k3s"]
        await pilot.press("f2")
        await pilot.press("ctrl+u", *"big-bins", "enter")  # ctrl+u clears the input
        await pilot.pause()
        spec = load_spec(spec_path)
        assert spec.extension("big-bins").paths == ["usr/bin/k3s"] and spec.extension("k3s") is None
        await pilot.press("minus")
        await pilot.press("y")
        await pilot.pause()
        assert load_spec(spec_path).extension("big-bins") is None
        text = spec_path.read_text()
        assert "# linux-firmware is the classic big mover" in text  # comments kept throughout
        assert "# a small board's firmware, to make the demo bite" in text


async def test_outside_edit_is_reloaded_keeping_the_view(spec_path: Path) -> None:
    app = WorkbenchApp(spec_path, estimate=False)
    async with app.run_test(size=SIZE) as pilot:
        await ready(app, pilot)
        entry = await go(app, pilot, "usr/share/doc")
        folder = app.tree.folder
        await pilot.pause(0.3)  # the watcher is up
        spec_path.write_text(re.sub(r"limit: \S+", "limit: 300MiB", spec_path.read_text(), count=1))
        assert await wait_for(pilot, lambda: gauge(app) is not None and gauge(app).limit == 300 * 1024 * 1024)
        assert app.tree.entry == entry and app.tree.folder == folder
        assert "reloaded" in status(app)


async def test_outside_edit_while_a_dialog_is_open(spec_path: Path) -> None:
    app = WorkbenchApp(spec_path, estimate=False)
    async with app.run_test(size=SIZE) as pilot:
        await ready(app, pilot)
        await pilot.pause(0.3)  # the watcher is up
        await pilot.press("question_mark")  # the help screen covers the workbench
        await pilot.pause()
        spec_path.write_text(re.sub(r"limit: \S+", "limit: 300MiB", spec_path.read_text(), count=1))
        assert await wait_for(pilot, lambda: gauge(app) is not None and gauge(app).limit == 300 * 1024 * 1024)
        await pilot.press("escape")
        assert "reloaded" in status(app)


async def test_broken_outside_edit_is_shown_and_survived(spec_path: Path) -> None:
    app = WorkbenchApp(spec_path, estimate=False)
    async with app.run_test(size=SIZE) as pilot:
        await ready(app, pilot)
        good = spec_path.read_text()
        await pilot.pause(0.3)
        spec_path.write_text(re.sub(r"level: \d+", "level: nineteen", good, count=1))
        problems = app.query_one("#problems")
        line = next(n for n, t in enumerate(good.splitlines(), 1) if "level:" in t)
        # an editor's write may be seen half done first; wait for the whole file's problem
        assert await wait_for(pilot, lambda: problems.display and f"line {line}:" in str(problems.render()))
        assert "keeps the last good" in str(problems.render())
        await go(app, pilot, "usr/share/doc")  # browsing goes on with the last good spec
        await pilot.press("space")  # but a mark would overwrite the user's edit: refused
        assert "fix them first" in status(app)
        assert "nineteen" in spec_path.read_text()
        spec_path.write_text(re.sub(r"limit: \S+", "limit: 250MiB", good, count=1))
        assert await wait_for(pilot, lambda: not problems.display)
        assert gauge(app).limit == 250 * 1024 * 1024


async def test_theme_switch_is_remembered(spec_path: Path) -> None:
    app = WorkbenchApp(spec_path, watch=False, estimate=False)
    async with app.run_test(size=SIZE) as pilot:
        await ready(app, pilot)
        assert app.theme == "sysextant-dark"
        await pilot.press("ctrl+p")
        await pilot.press(*"Theme: sysextant-light")
        await pilot.pause(0.3)
        await pilot.press("enter")
        assert await wait_for(pilot, lambda: app.theme == "sysextant-light")
    assert load_settings()["theme"] == "sysextant-light"
    again = WorkbenchApp(spec_path, watch=False, estimate=False)
    async with again.run_test(size=SIZE) as pilot:
        await pilot.pause()
        assert again.theme == "sysextant-light"


async def test_compressed_estimate_replaces_the_uncompressed_figure(spec_path: Path) -> None:
    pytest.importorskip("sysextant.core.sizing.estimate")
    spec_path.write_text(spec_path.read_text().replace("level: 19", "level: 3"))  # a quick estimator
    app = WorkbenchApp(spec_path, watch=False)
    async with app.run_test(size=SIZE) as pilot:
        await ready(app, pilot)
        assert await wait_for(pilot, lambda: app.session.estimator is not None, 60), "estimator not ready"
        await pilot.pause()
        fig = gauge(app)
        assert fig.estimated and fig.initrd_low <= fig.initrd_bytes <= fig.initrd_high
        assert fig.initrd_bytes < fig.initrd_cpio  # the demo's text and binaries compress
        assert "estimate ±" in str(app.query_one(UkiGauge).render())
        before = fig.uki_bytes
        await go(app, pilot, "usr/share/doc")
        await pilot.press("space")
        after = gauge(app)
        est = app.session.estimator.estimate(app.session.plan.initrd_after)
        assert after.initrd_bytes == est.bytes and after.uki_bytes < before
        fw = next(f for f in app.session.extension_figures() if f.name == "firmware")
        assert fw.uki_saved_estimated and 0 < fw.uki_saved <= fw.initrd_saved
        # the size column cycles apparent -> newc -> compressed estimate
        await pilot.press("c", "c")
        assert app.tree.size_mode == "compressed"
        assert "zstd≈" in str(app.query_one("#colhead").render())
        doc = app.session.index.lookup("usr/share/doc")
        squeezed = app.session.compressed_bytes(doc)
        assert 0 < squeezed < app.session.index.tot_cpio[doc]  # text compresses
        await pilot.press("c")
        assert app.tree.size_mode == "apparent"


async def test_the_quick_sample_is_on_the_gauge_with_its_band_before_the_estimator(
        spec_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """At the build's own level (zstd 19) the full estimator takes a while; the first honest
    UKI figure is the quick sample's, with its band and a verdict, seconds after opening."""
    import threading

    from sysextant.core.sizing import forecaster as forecaster_module
    from sysextant.core.sizing.quick import QuickEstimator
    from sysextant.tui.app import FIRST_FIGURE_DUE

    release, look = threading.Event(), threading.Event()
    real, real_quick = forecaster_module.prepared_estimator, forecaster_module.quick_estimator
    samples: list[float] = []

    def held(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202 - the estimator, once released
        release.wait(60)
        return real(*args, **kwargs)

    def sampled(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202 - the quick samples, once looked at
        look.wait(60)
        samples.append(kwargs["seconds"])
        return real_quick(*args, **kwargs)

    monkeypatch.setattr(forecaster_module, "prepared_estimator", held)
    monkeypatch.setattr(forecaster_module, "quick_estimator", sampled)
    text = spec_path.read_text()
    assert "  level: 6 " in text
    spec_path.write_text(text.replace("  level: 6 ", "  level: 19 "))  # Kairos' level
    app = WorkbenchApp(spec_path, watch=False)
    try:
        async with app.run_test(size=SIZE) as pilot:
            await ready(app, pilot)
            first = str(app.query_one(UkiGauge).render())
            assert "no verdict" in first and "estimate ±" not in first, first  # the uncompressed bound
            look.set()
            assert await wait_for(pilot, lambda: isinstance(app.session.estimator, QuickEstimator), 30)
            # the glance took what was left of the first figure's due time after the scan
            assert forecaster_module.GLANCE_SECONDS <= samples[0] <= FIRST_FIGURE_DUE, samples
            await pilot.pause()
            fig = gauge(app)
            assert fig.estimated and fig.initrd_low <= fig.initrd_bytes <= fig.initrd_high < fig.initrd_cpio
            shown = str(app.query_one(UkiGauge).render())
            assert "estimate ±" in shown and "no verdict" not in shown, shown
            assert app.session.forecaster.phase == "preparing"  # the full estimator still to come
    finally:
        release.set()


# -- snapshot ------------------------------------------------------------------------------------
SNAPSHOTS = TESTS / "snapshots"


def normalise(index) -> None:
    """Make filesystem-dependent figures fixed: folders 4096 bytes, allocation = size in 4 KiB."""
    for i in range(len(index)):
        m = index.mode[i]
        if stat.S_ISDIR(m):
            new_size, new_alloc = 4096, 4096
        elif stat.S_ISREG(m):
            new_size, new_alloc = index.size[i], -(-index.size[i] // 4096) * 4096
        else:
            new_size, new_alloc = index.size[i], 0
        ds, da = new_size - index.size[i], new_alloc - index.alloc[i]
        if not ds and not da:
            continue
        index.size[i] += ds
        index.alloc[i] += da
        a = i
        while a >= 0:
            index.tot_size[a] += ds
            index.tot_alloc[a] += da
            a = index.parent[a]


def check_snapshot(name: str, svg: str) -> None:
    path = SNAPSHOTS / f"{name}.svg"
    if os.environ.get("UPDATE_SNAPSHOTS") or not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(svg)
        if not os.environ.get("UPDATE_SNAPSHOTS"):
            pytest.fail(f"snapshot {path} was missing and has been written; check it and commit it")
        return
    if path.read_text() != svg:
        actual = path.with_suffix(".actual.svg")
        actual.write_text(svg)
        pytest.fail(f"the screen differs from {path}; see {actual} (UPDATE_SNAPSHOTS=1 rewrites)")


@pytest.mark.parametrize("size", [SIZE, (80, 24)], ids=["120x40", "80x24"])
@pytest.mark.parametrize("theme", ["sysextant-dark", "sysextant-light"])
async def test_main_screen_snapshot(tmp_path: Path, demo_root: Path, monkeypatch: pytest.MonkeyPatch,
                                    theme: str, size: tuple[int, int]) -> None:
    # the tree inside the project folder, so the screen shows "rootfs", not a temp path whose
    # length changes from run to run
    monkeypatch.setenv("SYSEXTANT_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.chdir(tmp_path)
    shutil.copytree(demo_root, tmp_path / "rootfs", symlinks=True)
    spec_path = project(tmp_path, Path("rootfs"))
    session = Session.open(spec_path)
    index = scan(session.root)
    normalise(index)
    session.attach(index, Sums(index))
    app = WorkbenchApp(spec_path, session=session, watch=False, estimate=False, show_timings=False)
    async with app.run_test(size=size) as pilot:
        app.theme = theme
        await pilot.pause()
        await go(app, pilot, "usr/share/locale")
        await pilot.press("space")  # mark into firmware
        await go(app, pilot, "usr/lib/modules")
        await pilot.pause()
        svg = app.export_screenshot(title="sysextant")
        names = [app.session.index.names[r].decode() for r in app.tree.rows]
    assert str(tmp_path) not in svg
    for name in names:  # names come first: shown whole at 80x24 too
        assert f"{name}/".replace(" ", "&#160;") in svg or name in svg, f"{name} not shown at {size}"
    svg = re.sub(r"terminal-\d+", "terminal-0", svg)  # Textual numbers each export differently
    check_snapshot(f"main-{theme}" if size == SIZE else f"main-{size[0]}x{size[1]}-{theme}", svg)
