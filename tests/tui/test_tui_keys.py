"""The workbench's keys as ncdu, gdu and dua users expect them (issue 14, second pass): r rescans,
a toggles apparent size and disk usage, C sorts by item count, the same sort key reverses, t puts
folders first, g cycles the share column, H/G go to the first/last row, a row position in the
folder line, space moves down, / searches the whole tree, x excludes (from an extension, or out of
the UKI with os.exclude after a question), and a refused extension name keeps its dialog open.
Driven headless with Textual's pilot on the small demo tree of test_tui.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

pytest.importorskip("textual")

from tui_helpers import go, project, ready, status, wait_for  # noqa: E402

from sysextant.core.spec.load import load_spec  # noqa: E402
from sysextant.core.tree.selection import match  # noqa: E402
from sysextant.tui.app import WorkbenchApp  # noqa: E402
from sysextant.tui.screens.dialogs import ConfirmScreen, NameScreen  # noqa: E402

pytestmark = pytest.mark.anyio


@pytest.fixture
def own_tree(tmp_path: Path, demo_root: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """A copy of the demo tree this test may change, with a package cache outside usr/ (as
    var/cache/apt on a real Debian tree), and a spec on it."""
    monkeypatch.setenv("SYSEXTANT_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "rootfs"
    shutil.copytree(demo_root, root, symlinks=True)
    apt = root / "var/cache/apt/archives"
    apt.mkdir(parents=True)
    for n in range(3):
        (apt / f"pkg{n}.deb").write_bytes(bytes([n]) * 200_000)
    return root, project(tmp_path, root)


def crumb(app: WorkbenchApp) -> str:
    return str(app.query_one("#crumb").render())


def header(app: WorkbenchApp) -> str:
    return str(app.query_one("#colhead").render())


# -- r: rescan --------------------------------------------------------------------------------------
async def test_r_rescans_the_tree_and_keeps_the_place(own_tree: tuple[Path, Path]) -> None:
    root, spec_path = own_tree
    app = WorkbenchApp(spec_path, watch=False, estimate=False)
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(app, pilot)
        entry = await go(app, pilot, "usr/share/doc")
        before = len(app.session.index)
        (root / "usr/share/doc/new-file").write_bytes(b"x" * 100_000)
        await pilot.press("r")
        assert not isinstance(app.screen, NameScreen)  # r no longer renames an extension
        assert await wait_for(pilot, lambda: len(app.session.index) == before + 1)
        await pilot.pause()
        index = app.session.index
        assert index.lookup("usr/share/doc/new-file") is not None
        assert app.tree.index is index
        assert app.tree.entry == index.lookup("usr/share/doc") and app.tree.folder == index.lookup("usr/share")
        assert entry is not None and "rescanned" in status(app) and f"was {before:,}" in status(app)


# -- a, c: the size column ---------------------------------------------------------------------------
async def test_a_toggles_apparent_size_and_disk_usage(spec_path: Path) -> None:
    app = WorkbenchApp(spec_path, watch=False, estimate=False)
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(app, pilot)
        await pilot.press("a")
        assert not isinstance(app.screen, NameScreen)  # a no longer adds an extension
        tree, index = app.tree, app.session.index
        assert tree.size_mode == "disk" and "disk" in header(app)
        alloc = [index.tot_alloc[r] for r in tree.rows]
        assert alloc == sorted(alloc, reverse=True)
        await pilot.press("c")  # c goes on from the bytes a chose
        assert tree.size_mode == "cpio"
        await pilot.press("c")
        assert tree.size_mode == "disk"
        await pilot.press("a")
        assert tree.size_mode == "apparent" and "size" in header(app)


# -- s n C t g H G: sorting and moving ---------------------------------------------------------------
async def test_sort_keys_reverse_on_the_second_press_and_C_sorts_by_items(spec_path: Path) -> None:
    app = WorkbenchApp(spec_path, watch=False, estimate=False)
    async with app.run_test(size=(140, 40)) as pilot:
        await ready(app, pilot)
        await go(app, pilot, "usr")
        await pilot.press("enter")
        tree, index = app.tree, app.session.index
        await pilot.press("C")
        counts = [index.tot_count[r] for r in tree.rows]
        assert tree.sort == "count" and counts == sorted(counts, reverse=True)
        assert "items▼" in header(app)
        await pilot.press("C")
        counts = [index.tot_count[r] for r in tree.rows]
        assert tree.reverse and counts == sorted(counts) and "items▲" in header(app)
        assert "fewest items first" in status(app)
        await pilot.press("s")
        sizes = [index.tot_size[r] for r in tree.rows]
        assert not tree.reverse and sizes == sorted(sizes, reverse=True)
        await pilot.press("s")
        assert [index.tot_size[r] for r in tree.rows] == sorted(sizes)
        await pilot.press("n", "n")
        names = [index.names[r] for r in tree.rows]
        assert names == sorted(names, reverse=True) and "name ▼" in header(app)


async def test_position_indicator_t_g_and_first_last(spec_path: Path) -> None:
    app = WorkbenchApp(spec_path, watch=False, estimate=False)
    async with app.run_test(size=(140, 40)) as pilot:
        await ready(app, pilot)
        tree, index = app.tree, app.session.index
        n = len(tree.rows)
        assert f"1 of {n} entries" in crumb(app)
        await pilot.press("j", "j")
        assert f"3 of {n} entries" in crumb(app)
        await pilot.press("G")
        assert tree.cursor == n - 1 and f"{n} of {n} entries" in crumb(app)
        await pilot.press("H")
        assert tree.cursor == 0
        await pilot.press("n", "t")  # by name, folders first
        kinds = [index.is_dir(r) for r in tree.rows]
        assert kinds == sorted(kinds, reverse=True) and not all(kinds)
        assert tree.dirs_first and "folders first" in status(app)
        assert tree.columns.bar and tree.columns.pct
        cursor = tree.cursor
        await pilot.press("g")
        assert tree.columns.pct and not tree.columns.bar
        await pilot.press("g")
        assert tree.columns.bar and not tree.columns.pct
        await pilot.press("g")
        assert not tree.columns.bar and not tree.columns.pct
        assert tree.cursor == cursor  # g no longer jumps to the first row
        await pilot.press("g")
        assert tree.columns.bar and tree.columns.pct


# -- /: search the whole tree ------------------------------------------------------------------------
async def test_slash_searches_the_whole_tree_marks_from_results_and_jumps(spec_path: Path) -> None:
    app = WorkbenchApp(spec_path, watch=False, estimate=False)
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(app, pilot)
        start = await go(app, pilot, "usr/share/doc")
        folder = app.tree.folder
        tree, s = app.tree, app.session
        await pilot.press("slash", *"*.ko.zst", "enter")
        assert await wait_for(pilot, lambda: tree.results is not None)
        await pilot.pause()
        expected = match(s.index, "**/*.ko.zst")
        assert expected and sorted(tree.rows) == expected
        assert f"1 of {len(expected):,} matches" in crumb(app)
        sizes = [s.index.tot_size[r] for r in tree.rows]
        assert sizes == sorted(sizes, reverse=True)  # biggest first, as a folder
        first = tree.rows[0]
        rel = s.index.path(first).decode()
        row = "".join(seg.text for seg in tree.render_line(0))  # shown with its path, cut in the middle
        assert "usr/lib/modules/" in row and rel.rsplit("/", 1)[1] in row
        await pilot.press("2", "space")  # into drivers
        assert f"mark {rel} into drivers" in status(app) or "already in" in status(app)
        assert tree.cursor == 1 or "already in" in status(app)
        target = tree.entry
        await pilot.press("enter")  # jump: the file's folder, the cursor on it
        assert tree.results is None and tree.folder == s.index.parent[target] and tree.entry == target
        # a folder found by name; h goes back to where the search started
        await pilot.press("slash", "ctrl+u", *"locale", "enter")
        assert await wait_for(pilot, lambda: tree.results is not None)
        assert s.index.lookup("usr/share/locale") in tree.rows
        await pilot.press("h")
        assert tree.results is None and tree.folder == s.index.parent[target]
        await go(app, pilot, "usr/share/doc")
        await pilot.press("slash", "ctrl+u", *"usr/share/*", "enter")  # a path glob
        assert await wait_for(pilot, lambda: tree.results is not None)
        assert sorted(tree.rows) == match(s.index, "usr/share/*")
        await pilot.press("escape")
        assert tree.results is None and tree.folder == folder and tree.entry == start


# -- x: excluding -----------------------------------------------------------------------------------
async def test_x_excludes_an_entry_of_a_marked_folder_and_takes_it_back(spec_path: Path) -> None:
    app = WorkbenchApp(spec_path, watch=False, estimate=False)
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(app, pilot)
        s = app.session
        sub = next(c for c in s.index.children(s.index.lookup("usr/lib/firmware")) if s.index.is_dir(c))
        rel = s.index.path(sub).decode()
        await go(app, pilot, rel)
        assert s.owner(sub) == "firmware"
        before = app.query_one("#gauge").figures.initrd_cpio
        await pilot.press("x")
        spec = load_spec(spec_path).extension("firmware")
        assert spec.exclude == [rel] and spec.paths == ["usr/lib/firmware"]
        assert s.owner(sub) is None and f"exclude {rel} from firmware" in status(app)
        assert app.query_one("#gauge").figures.initrd_cpio > before  # it stays in the UKI
        await pilot.press("x")  # again: taken back
        assert load_spec(spec_path).extension("firmware").exclude == [] and s.owner(sub) == "firmware"
        await pilot.press("x", "u")  # and undone
        assert load_spec(spec_path).extension("firmware").exclude == []
        await go(app, pilot, "usr/lib/firmware")  # a path of its own: space unmarks it
        await pilot.press("x")
        assert "space unmarks it" in status(app)


async def test_x_outside_usr_offers_os_exclude_after_a_question(own_tree: tuple[Path, Path]) -> None:
    _root, spec_path = own_tree
    app = WorkbenchApp(spec_path, watch=False, estimate=False)
    async with app.run_test(size=(100, 30)) as pilot:
        await ready(app, pilot)
        s = app.session
        original = spec_path.read_text()
        await go(app, pilot, "var/cache/apt")
        await pilot.press("space")
        assert "outside usr/ and opt/" in status(app) and "x leaves it out of the UKI (os.exclude)" in status(app)
        assert "x leaves it out of the UKI" in str(app.query_one("#item").render())
        await pilot.press("x")
        assert isinstance(app.screen, ConfirmScreen)
        question = str(app.screen.query_one("#question").render())
        assert "var/cache/apt" in question and "gone from the booted OS" in question
        await pilot.press("n")
        assert spec_path.read_text() == original
        before = app.query_one("#gauge").figures.initrd_cpio
        await pilot.press("x")
        await pilot.press("y")
        await pilot.pause()
        assert load_spec(spec_path).os.exclude == ["var/cache/apt"]
        assert app.query_one("#gauge").figures.initrd_cpio < before
        assert "os.exclude" in status(app)
        await pilot.press("x")  # taken back, no question needed
        assert load_spec(spec_path).os.exclude == []
        await go(app, pilot, "usr/bin/immucore")  # what boot needs is never offered
        assert s.os_exclude_refusal(app.tree.entry) is not None


# -- extension names ---------------------------------------------------------------------------------
async def test_a_refused_name_keeps_the_dialog_open_with_the_text_and_the_reason(spec_path: Path) -> None:
    app = WorkbenchApp(spec_path, watch=False, estimate=False)
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(app, pilot)
        await pilot.press("plus", *"k3s_bin", "enter")
        await pilot.pause()
        assert isinstance(app.screen, NameScreen)
        assert app.screen.query_one("#name").value == "k3s_bin"
        error = app.screen.query_one("#name-error")
        assert error.display and "'_'" in str(error.render())
        await pilot.press("ctrl+u", *"drivers", "enter")  # a duplicate: still open
        await pilot.pause()
        assert isinstance(app.screen, NameScreen) and "already exists" in str(error.render())
        await pilot.press("ctrl+u", *"k3s-bin", "enter")
        await pilot.pause()
        assert not isinstance(app.screen, NameScreen)
        assert load_spec(spec_path).extension("k3s-bin") is not None and app.current_ext == "k3s-bin"
        await pilot.press("f2", "ctrl+u", *"firmware", "enter")  # rename onto another: refused, open
        await pilot.pause()
        assert isinstance(app.screen, NameScreen) and "already exists" in str(app.screen.query_one("#name-error").render())
        await pilot.press("escape")
        assert load_spec(spec_path).extension("k3s-bin") is not None


# -- the build result at 80 columns ------------------------------------------------------------------
def fake_report(tmp: Path) -> object:
    from sysextant.core.build.artefacts import Artefact, BuildReport
    from sysextant.core.build.verify import Check

    checks = [Check("verity", True, "hash tree recomputed"), Check("signature", True, "signed by the given certificate")]
    arts = [Artefact("sysext", "firmware", str(tmp / "build/firmware.sysext.raw"), 124_010_496, True, True,
                     "a36f96f0f6d1f21d347db8bda045c545932f1f9333a9c7a812a4592b0eb8f412", True, checks),
            Artefact("uki", "uki", str(tmp / "build/uki.efi"), 220_000_000, False, True,
                     "0" * 63 + "1", True, checks, predicted_size=219_000_000)]
    from types import SimpleNamespace

    from sysextant.core.build.pipeline import deploy_notes

    spec = SimpleNamespace(signing=SimpleNamespace(cert=tmp / "keys/db.pem"))  # what deploy_notes reads
    return BuildReport(str(tmp / "sysextant.yaml"), str(tmp / "build"), arts, 3.0, 256 * 1024 * 1024, "ok",
                       deploy_notes(spec, arts))


async def test_build_result_at_80_columns_keeps_root_hashes_in_their_rows(tmp_path: Path) -> None:
    from textual.app import App, ComposeResult
    from textual.containers import VerticalScroll

    from sysextant.tui.widgets.build import ResultView

    report = fake_report(tmp_path)

    class One(App[None]):
        CSS = "#build-result { padding: 0 1; }"

        def compose(self) -> ComposeResult:
            with VerticalScroll(id="build-result"):
                yield ResultView(id="text")

    app = One()
    async with app.run_test(size=(80, 24)) as pilot:
        view = app.query_one(ResultView)
        view.show(report, None, tmp_path / "keys/db.pem")
        await pilot.pause()
        assert view.content_region.width <= 78  # 80 less the padding (and a scrollbar when it scrolls)
        lines = [line.plain for line in view.text.wrap(app.console, view.content_region.width)]
        for a in report.artefacts:
            assert any(a.digest in line for line in lines), f"{a.digest} broken across rows"
        text = view.text.plain
        # how the certificate gets into the firmware: Kairos' enrolment or the firmware setup
        assert "db.pem" in text and "Setup Mode" in text and "auroraboot" in text
        assert "firmware setup" in text
