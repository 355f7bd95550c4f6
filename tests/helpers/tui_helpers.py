"""The workbench driven with Textual's pilot: a spec on the small demo tree, waiting for the
scan, walking to a path with the keys a user presses, the status line. Shared by tests/tui/ and
the boot check's screen tests (tests/core/vm/test_vm.py). Imports no Textual itself: the tests
that use it skip first when Textual is missing."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from sysextant.core.demo import SPEC_TEXT
from sysextant.core.spec.load import load_spec

if TYPE_CHECKING:
    from sysextant.tui.app import WorkbenchApp


def project(tmp: Path, root: Path) -> Path:
    """The demo spec pointed at the shared tree, unsigned, with a fixed stand-in stub."""
    stub = tmp / "stub.efi"
    stub.write_bytes(b"\0" * 4096)  # not a PE: the size model falls back to its plain sum
    text = SPEC_TEXT.replace("root: rootfs   ", f"root: {root}").replace(
        "/usr/lib/systemd/boot/efi/linuxx64.efi.stub", str(stub))
    text = re.sub(r"signing:.*?\n\n", "", text, flags=re.S)
    spec = tmp / "sysextant.yaml"
    spec.write_text(text)
    load_spec(spec)  # the test's own spec must be valid
    return spec


async def wait_for(pilot, cond: Callable[[], bool], timeout: float = 10.0) -> bool:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while loop.time() < end:
        if cond():
            return True
        await pilot.pause(0.05)
    return cond()


async def ready(app: WorkbenchApp, pilot, timeout: float = 10.0) -> None:
    assert await wait_for(pilot, lambda: app.session.plan is not None, timeout), "the scan did not finish"
    await pilot.pause()


async def go(app: WorkbenchApp, pilot, rel: str) -> int:
    """Walk to ``rel`` with the keys a user presses (enter into folders, j/k to the entry)."""
    tree = app.tree
    index = app.session.index
    while tree.folder != 0:
        await pilot.press("h")
    parts = rel.split("/")
    for depth, _ in enumerate(parts):
        target = index.lookup("/".join(parts[: depth + 1]))
        while tree.entry != target:
            await pilot.press("j" if tree.rows.index(target) > tree.cursor else "k")
        if depth < len(parts) - 1:
            await pilot.press("enter")
    await pilot.pause()
    return target


def status(app: WorkbenchApp) -> str:
    return app.query_one("#status").markup
