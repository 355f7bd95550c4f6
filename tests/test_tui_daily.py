"""The workbench as a daily tool (issue 14): keys that arrive together, small terminals, and the
small things a user of ncdu, gdu or dua notices. Driven headless with Textual's pilot on the same
small demo tree as test_tui.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from textual import events

pytest.importorskip("textual")

from test_tui import anyio_backend, demo_root, go, ready, spec_path, status, wait_for  # noqa: E402, F401

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
        assert tree.entry == tree.rows[2]
        assert expected in load_spec(spec_path).extension("firmware").paths
        assert f"mark {expected} into firmware" in status(app)
        # j then space at once marks the next row, not the one just marked again (an unmark)
        nxt = index.path(tree.rows[3]).decode()
        await burst(app, pilot, "j", "space")
        paths = load_spec(spec_path).extension("firmware").paths
        assert expected in paths and nxt in paths
