"""The workbench as a daily tool (issue 14): keys that arrive together, small terminals, and the
small things a user of ncdu, gdu or dua notices. Driven headless with Textual's pilot on the same
small demo tree as test_tui.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from textual import events

pytest.importorskip("textual")

from tui_helpers import go, ready, status, wait_for  # noqa: E402

from sysextant.core.spec.load import load_spec  # noqa: E402
from sysextant.tui.app import WorkbenchApp  # noqa: E402

pytestmark = pytest.mark.anyio


async def burst(app: WorkbenchApp, pilot, *keys: str) -> None:
    """Send ``keys`` in one go, as a terminal delivers a fast typist's or a laggy link's write:
    every key is queued before the first is handled."""
    driver = app._driver
    assert driver is not None
    for key in keys:
        char = " " if key == "space" else (key if len(key) == 1 else None)
        event = events.Key(key, char)
        event.set_sender(app)
        driver.send_message(event)
    await pilot.pause()
    await pilot.pause()


# -- (1) keys that arrive together ---------------------------------------------------------------
async def test_keys_in_one_write_act_on_the_row_the_previous_key_left(spec_path: Path) -> None:
    app = WorkbenchApp(spec_path, watch=False, estimate=False)
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(app, pilot)
        share = await go(app, pilot, "usr/share")
        await pilot.press("enter")
        await pilot.pause()
        tree, index = app.tree, app.session.index
        assert tree.folder == share and tree.cursor == 0
        expected = index.path(tree.rows[2]).decode()
        await burst(app, pilot, "j", "j", "space")
        assert tree.entry == tree.rows[3]  # space moved down after the mark
        assert expected in load_spec(spec_path).extension("firmware").paths
        assert f"mark {expected} into firmware" in status(app)
        # k then space at once unmarks the row above, not the one the cursor left
        await burst(app, pilot, "k", "space")
        assert expected not in load_spec(spec_path).extension("firmware").paths
        assert tree.entry == tree.rows[3]
        # space alone marks the row the cursor is on now, not the one it left (an unmark)
        nxt = index.path(tree.rows[3]).decode()
        await burst(app, pilot, "space")
        paths = load_spec(spec_path).extension("firmware").paths
        assert expected not in paths and nxt in paths


# -- (2) names first: the layout at small terminals ----------------------------------------------
def row_texts(app: WorkbenchApp) -> list[str]:
    tree = app.tree
    n = min(len(tree.rows), tree.scrollable_content_region.height)
    return ["".join(seg.text for seg in tree.render_line(y)) for y in range(n)]


def line_text(app: WorkbenchApp, selector: str) -> str:
    widget = app.query_one(selector)
    return "".join(seg.text for seg in widget.render_line(0)) if hasattr(widget, "render_line") else ""


@pytest.mark.parametrize("size", [(80, 24), (100, 30), (60, 15)])
async def test_names_are_shown_whole_at_small_terminals(spec_path: Path, size: tuple[int, int]) -> None:
    app = WorkbenchApp(spec_path, watch=False, estimate=False)
    async with app.run_test(size=size) as pilot:
        await ready(app, pilot)
        for folder in ("usr", "usr/lib/x86_64-linux-gnu", "boot"):
            await go(app, pilot, folder)
            await pilot.press("enter")
            await pilot.pause()
            index = app.session.index
            names = [index.names[r].decode() for r in app.tree.rows]
            rows = row_texts(app)
            assert rows
            for name, row in zip(names, rows, strict=False):
                assert name in row, f"{name!r} cut at {size}: {row!r}"
        header = str(app.query_one("#colhead").render())
        assert "name" in header and "size" in header
        crumb = str(app.query_one("#crumb").render())
        assert "firmware" in crumb, f"the extension marked into is cut from {crumb!r}"
        panel = app.query_one("#extensions")
        if size[0] < 76:
            assert not panel.display  # 60 columns: the names get the whole width
        else:
            assert panel.display and panel.outer_size.width <= 32 + 2


async def test_narrow_columns_drop_before_the_name_is_cut(spec_path: Path) -> None:
    app = WorkbenchApp(spec_path, watch=False, estimate=False)
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(app, pilot)
        await go(app, pilot, "usr/lib/x86_64-linux-gnu")
        await pilot.press("enter")
        await pilot.pause()
        cols = app.tree.columns
        assert cols.name >= 24 + 1  # the longest name there (libpartition662.so.4.2.2)
        assert not cols.bar  # the bar gave way
    async with WorkbenchApp(spec_path, watch=False, estimate=False).run_test(size=(140, 40)) as pilot:
        app = pilot.app
        await ready(app, pilot)
        cols = app.tree.columns
        assert cols.bar and cols.pct and cols.count and cols.owner  # room for all of them
        header = str(app.query_one("#colhead").render())
        assert "items" in header and "extension" in header


async def test_p_hides_and_shows_the_extensions_panel(spec_path: Path) -> None:
    app = WorkbenchApp(spec_path, watch=False, estimate=False)
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(app, pilot)
        panel = app.query_one("#extensions")
        before = app.tree.size.width
        assert panel.display
        await pilot.press("p")
        await pilot.pause()
        assert not panel.display and app.tree.size.width > before
        await pilot.press("p")
        await pilot.pause()
        assert panel.display
    async with WorkbenchApp(spec_path, watch=False, estimate=False).run_test(size=(60, 15)) as pilot:
        app = pilot.app
        await ready(app, pilot)
        panel = app.query_one("#extensions")
        assert not panel.display
        await pilot.press("p")
        await pilot.pause()
        assert panel.display


async def test_gauge_draws_no_verdict_from_the_uncompressed_initrd(spec_path: Path) -> None:
    app = WorkbenchApp(spec_path, watch=False, estimate=False)  # the estimate never comes
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(app, pilot)
        text = str(app.query_one("#gauge").render())
        assert "over the limit" not in text.lower() and "under the limit" not in text.lower()
        assert "left" not in text and "≤" in text


# -- what boot needs -----------------------------------------------------------------------------
KERNEL = "usr/lib/modules/6.6.60-kairos-demo/kernel"


async def test_boot_needs_are_shown_and_e_marks_all_but_them(spec_path: Path) -> None:
    app = WorkbenchApp(spec_path, watch=False, estimate=False)
    async with app.run_test(size=(100, 30)) as pilot:
        await ready(app, pilot)
        s = app.session
        await pilot.press("2")  # drivers
        fs = await go(app, pilot, f"{KERNEL}/fs")
        needed = s.boot_count(fs)
        assert needed > 0
        item = str(app.query_one("#item").render())
        assert f"{needed} entries inside needed to boot" in item and "e marks the rest" in item
        assert row_texts(app)[app.tree.cursor].startswith(" ◇")  # a folder holding some
        original = spec_path.read_text()
        await pilot.press("space")
        assert "needed to boot" in status(app) and spec_path.read_text() == original
        await pilot.press("e")
        spec = load_spec(spec_path).extension("drivers")
        assert f"{KERNEL}/fs" in spec.paths and spec.exclude
        assert "boot needs" in status(app)
        assert s.plan is not None and all(k not in e.selected for e in s.plan.extensions
                                           for k in s.boot().entries.indices() if s.index.path(k).decode()
                                           .startswith(f"{KERNEL}/fs/"))
        await pilot.press("enter")  # inside: folders holding needed modules carry ◇
        await pilot.pause()
        tree = app.tree
        holding = [r for r in tree.rows if s.boot_count(r)]
        assert holding and all(tree._row_text(r, 100).plain.startswith(" ◇") for r in holding)
        assert all(tree._row_text(r, 100).plain[1] == " " for r in tree.rows if not s.boot_count(r))
        module = await go(app, pilot, f"{KERNEL}/fs/erofs/erofs.ko.zst")  # a needed one carries ◆
        assert module in s.boot().entries and tree._row_text(module, 100).plain.startswith(" ◆")
        assert "needed to boot:" in str(app.query_one("#item").render())
        await pilot.press("u")
        back = load_spec(spec_path).extension("drivers")
        assert f"{KERNEL}/fs" not in back.paths and not back.exclude  # one undo step
        # (the text may keep an empty "exclude: []": the spec editor's undo, not the workbench's)


async def test_item_pane_shows_every_figure(spec_path: Path) -> None:
    app = WorkbenchApp(spec_path, watch=False, estimate=False)
    async with app.run_test(size=(120, 40)) as pilot:
        await ready(app, pilot)
        await go(app, pilot, "usr/bin/immucore")
        await pilot.press("i")
        await pilot.pause()
        info = app.query_one("#info")
        text = str(info.render())
        assert info.display and "/usr/bin/immucore" in text
        assert "apparent" in text and "on disk" in text and "initrd (newc)" in text
        assert "needed to boot:" in text and "uki.init" in text
        assert "a mark would be refused" in text
        await pilot.press("i")
        assert not info.display


async def test_palette_names_the_three_way_size_column_and_boot_mark(spec_path: Path) -> None:
    from sysextant.tui.commands import WorkbenchCommands

    app = WorkbenchApp(spec_path, watch=False, estimate=False)
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(app, pilot)
        names = {name: help_text for name, _cb, help_text in WorkbenchCommands(app.screen)._commands()}
        assert "Toggle size column" not in names
        assert "compressed estimate" in names["Cycle size column"]
        assert "Mark all but what boot needs" in names


# -- the build screen's words --------------------------------------------------------------------
def slow_build(spec, *, reporter, **_kw):  # noqa: ANN001, ANN201 - stands in for core.build.build
    """A build that runs until it is cancelled."""
    import time

    from sysextant.core.errors import Cancelled

    while not reporter.cancelled:
        time.sleep(0.02)
    raise Cancelled("build cancelled")


async def test_q_during_a_build_says_what_it_does_then_stops_and_quits(spec_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from sysextant.tui.screens import build as build_module

    monkeypatch.setattr(build_module, "build", slow_build)
    app = WorkbenchApp(spec_path, watch=False, estimate=False)
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(app, pilot)
        await pilot.press("b")
        assert await wait_for(pilot, lambda: isinstance(app.screen, build_module.BuildScreen))
        screen = app.screen
        await pilot.press("q")
        await pilot.pause()
        assert screen.running and app.is_running  # the first q does not stop a build unasked
        log = "\n".join(str(line) for line in screen.query_one("#build-log").lines)
        assert "q again stops it and quits" in log
        await pilot.press("q")
        assert await wait_for(pilot, lambda: not app.is_running, 5)
    assert app.return_code == 0


def test_a_stopped_build_names_what_it_replaced_without_contradiction(spec_path: Path) -> None:
    from sysextant.tui.screens.build import BuildScreen

    spec = load_spec(spec_path)
    screen = BuildScreen(spec, None, None)
    screen.running, screen.kind = False, "cancelled"
    assert screen.outcome_summary()[1] == "build cancelled; previous outputs kept"
    screen.replaced = [("firmware", spec.output / "firmware.sysext.raw")]
    summary = screen.outcome_summary()[1]
    text = str(screen.outcome_text())
    for words in (summary, text):
        assert "firmware.sysext.raw already rebuilt whole" in words
        assert "previous outputs kept" not in words and "the other outputs are the previous ones" in words


# -- (3) the smaller bugs ------------------------------------------------------------------------
async def test_h_that_clears_the_filter_also_removes_the_box(spec_path: Path) -> None:
    app = WorkbenchApp(spec_path, watch=False, estimate=False)
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(app, pilot)
        await go(app, pilot, "usr/share")
        await pilot.press("enter", "f", *"loc", "enter")
        await pilot.pause()
        box = app.query_one("#filter")
        assert app.tree.name_filter == "loc" and box.display
        await pilot.press("h")  # clears the filter first
        await pilot.pause()
        assert app.tree.name_filter == "" and not box.display
        assert box not in app.screen.focus_chain


async def test_remove_dialog_shows_its_whole_question(spec_path: Path) -> None:
    app = WorkbenchApp(spec_path, watch=False, estimate=False)
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(app, pilot)
        app.action_remove_extension()
        await pilot.pause()
        label = app.screen.query_one("#question")
        dialog = label.parent
        assert label.outer_size.width <= dialog.content_region.width
        assert label.size.height >= 2  # wrapped, not cut
        await pilot.press("n")


async def test_del_in_the_paths_list_unmarks_at_once(spec_path: Path) -> None:
    app = WorkbenchApp(spec_path, watch=False, estimate=False)
    async with app.run_test(size=(100, 30)) as pilot:
        await ready(app, pilot)
        app.query_one("#ext-paths").focus()
        await pilot.pause()
        await pilot.press("delete")
        await pilot.pause()
        assert load_spec(spec_path).extension("firmware").paths == []
        assert "unmark usr/lib/firmware from firmware" in status(app)


async def test_one_is_singular(spec_path: Path) -> None:
    app = WorkbenchApp(spec_path, watch=False, estimate=False)
    async with app.run_test(size=(100, 30)) as pilot:
        await ready(app, pilot)
        await go(app, pilot, "usr/share")
        await pilot.press("enter", "f", *"locale", "enter")
        await pilot.pause()
        crumb = str(app.query_one("#crumb").render())
        assert "1 of 1 entry" in crumb and "1 entries" not in crumb
        panel = str(app.query_one("#ext-list").get_option_at_index(0).prompt)
        assert "1 path" in panel and "1 paths" not in panel


async def test_the_scan_count_in_the_header_is_the_index_as_painted(spec_path: Path) -> None:
    from sysextant.core.tree.index import scan

    app = WorkbenchApp(spec_path, watch=False, estimate=False)
    async with app.run_test(size=(100, 30)) as pilot:
        await ready(app, pilot)  # the app's own scan done first: its ScanDone cannot land after ours
        # a half-grown index on screen, as while scanning, growing after the message came
        index = scan(app.session.root)
        app.session.plan = None
        app.entries_seen = 10
        app.tree.set_index(index)
        app.update_topbar()
        await pilot.pause()
        top = str(app.query_one("#topbar").render())
        assert f"scanning {len(index):,} entries" in top


async def test_a_new_extension_keeps_the_users_quoting(spec_path: Path) -> None:
    assert 'version: "1.0"' in spec_path.read_text()
    app = WorkbenchApp(spec_path, watch=False, estimate=False)
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(app, pilot)
        app.action_add_extension()
        await pilot.pause()
        await pilot.press(*"k3s", "enter")
        await pilot.pause()
        text = spec_path.read_text()
        assert load_spec(spec_path).extension("k3s") is not None
        assert "'1.0'" not in text and text.count('version: "1.0"') == 3
        item = str(app.query_one("#ext-list").get_option_at_index(2).prompt)
        assert "nothing marked yet" in item and "−0 B" not in item  # not "initrd −0 B"
    single = spec_path.read_text().replace('"1.0"', "'1.0'").replace('"console=ttyS0', "'console=ttyS0")
    single = single.replace('rd.immucore.debug"', "rd.immucore.debug'")
    from sysextant.core.workbench.session import Session

    spec_path.write_text(single)
    s = Session.open(spec_path)
    s.add_extension("gpu")
    assert s.text.count("version: '1.0'") == 4 and '"1.0"' not in s.text


def test_refusal_of_os_release_itself_does_not_say_it_holds_itself(spec_path: Path) -> None:
    from sysextant.core.workbench.session import Session

    s = Session.open(spec_path)
    s.scan()
    ext = s.spec.extensions[0].name
    for rel in ("usr/lib/os-release", "usr/lib/extension-release.d"):
        i = s.index.lookup(rel)
        if i is None:
            continue
        why = s.refusal(i, ext)
        assert why and f"{rel} holds {rel}" not in why
