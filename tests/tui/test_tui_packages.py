"""The packages view (P), the fit planner (F) and the diff filter (D), driven with Textual's pilot.

The tree is the small demo tree with a dpkg database written into it by the test (status file and
``info/*.list``, as dpkg writes them), so nothing depends on the machine's own packages. Figures
on screen are compared with the session's (core) figures and the spec is read back from disk.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest

from sysextant.core.demo import SPEC_TEXT, generate_tree
from sysextant.core.spec.load import load_spec

pytest.importorskip("textual")

from textual.widgets import Button, Input  # noqa: E402
from tui_helpers import ready, status, wait_for  # noqa: E402

from sysextant.tui.app import WorkbenchApp  # noqa: E402
from sysextant.tui.screens.difffilter import BaseScreen  # noqa: E402
from sysextant.tui.screens.fit import FitScreen  # noqa: E402
from sysextant.tui.widgets.packages import PackageList  # noqa: E402

pytestmark = pytest.mark.anyio
SIZE = (120, 40)
WAIT = 15.0  # seconds these tests give the scan and the screens (the shared default is 10)

#: package -> the folders (or files) of the demo tree it installed
PACKAGES = {
    "demo-firmware": ["usr/lib/firmware"],
    "demo-docs": ["usr/share/doc", "usr/share/man"],
    "demo-agent": ["opt/demo-agent"],
    "demo-etc": ["etc"],  # nothing of it may move: outside /usr and /opt
    "demo-init": ["usr/bin/immucore"],  # the init the UKI starts: needed to boot
}


def _files(root: Path, rel: str) -> list[str]:
    """``rel`` and everything under it, as dpkg lists them (absolute, folders included)."""
    top = root / rel
    if not top.is_dir():
        return [f"/{rel}"]
    out = [f"/{rel}"]
    for folder, dirs, files in os.walk(top):
        dirs.sort()
        base = "/" + os.path.relpath(folder, root)
        out += [f"{base}/{d}" for d in dirs if (Path(folder) / d).is_symlink()]
        out += [f"{base}/{f}" for f in sorted(files)]
        out += [f"{base}/{d}" for d in dirs if not (Path(folder) / d).is_symlink()]
    return out


def write_dpkg(root: Path) -> None:
    """A dpkg database (``var/lib/dpkg/status`` and ``info/NAME.list``) owning PACKAGES' files."""
    admin = root / "var/lib/dpkg"
    (admin / "info").mkdir(parents=True, exist_ok=True)
    status = []
    for name, paths in PACKAGES.items():
        status.append(f"Package: {name}\nStatus: install ok installed\nPriority: optional\nSection: misc\n"
                      f"Installed-Size: 100\nArchitecture: amd64\nVersion: 1.0-1\nDescription: {name}\n")
        lines = ["/."]
        for rel in paths:
            parts = rel.split("/")
            lines += ["/" + "/".join(parts[:k]) for k in range(1, len(parts))]
            lines += _files(root, rel)
        (admin / "info" / f"{name}.list").write_text("\n".join(dict.fromkeys(lines)) + "\n")
    (admin / "status").write_text("\n".join(status))


@pytest.fixture(scope="module")
def pkg_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pkgdemo") / "rootfs"
    generate_tree(root, scale=0.05)
    write_dpkg(root)
    return root


def project(tmp: Path, root: Path, extra: str = "") -> Path:
    """The demo spec on ``root`` with one empty extension ``tools`` (and ``extra`` ones), unsigned."""
    stub = tmp / "stub.efi"
    stub.write_bytes(b"\0" * 4096)
    text = SPEC_TEXT.replace("root: rootfs   ", f"root: {root}").replace(
        "/usr/lib/systemd/boot/efi/linuxx64.efi.stub", str(stub))
    text = re.sub(r"signing:.*?\n\n", "", text, flags=re.S)
    text = re.sub(r"\nextensions:.*?\noutput:", "\nextensions:\n  - name: tools            # what we move\n"
                  "    version: \"1.0\"\n    paths: []\n    release: {ID: _any, ARCHITECTURE: x86-64}\n"
                  + extra + "output:", text, flags=re.S)
    spec = tmp / "sysextant.yaml"
    spec.write_text(text)
    load_spec(spec)
    return spec


@pytest.fixture
def spec_path(tmp_path: Path, pkg_root: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("SYSEXTANT_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.chdir(tmp_path)
    return project(tmp_path, pkg_root)


async def to_package(app: WorkbenchApp, pilot, key: str) -> None:
    plist = app.query_one(PackageList)
    while plist.row is None or plist.row.key != key:
        await pilot.press("j" if [r.key for r in plist.rows].index(key) > plist.cursor else "k")


async def test_packages_view_lists_marks_and_undoes(spec_path: Path) -> None:
    original = spec_path.read_text()
    app = WorkbenchApp(spec_path, estimate=False, watch=False)
    async with app.run_test(size=SIZE) as pilot:
        await ready(app, pilot, WAIT)
        s = app.session
        await pilot.press("P")
        plist = app.query_one(PackageList)
        assert plist.display and not app.tree.display and plist.has_focus
        rows = s.package_rows()
        assert [r.key for r in plist.rows] == [r.key for r in rows] and len(rows) == len(PACKAGES)
        assert [r.cost for r in rows] == sorted((r.cost for r in rows), reverse=True)  # costliest first
        by = {r.key: r for r in rows}
        fw = s.package_db()[0].files["demo-firmware"]
        assert by["demo-firmware"].files == len(fw.entries)
        assert by["demo-firmware"].cost == s.sums.cpio_bytes(fw.selection.intersection(s.plan.initrd_base))
        assert by["demo-etc"].outside == by["demo-etc"].files and not by["demo-etc"].movable
        assert by["demo-init"].boot == 1 and not by["demo-init"].movable
        assert "packages" in app.query_one("#crumb").markup and "initrd" in app.query_one("#colhead").markup

        await to_package(app, pilot, "demo-firmware")
        before = s.figures()
        await pilot.press("space")
        assert "mark package demo-firmware into tools" in status(app)
        assert load_spec(spec_path).extension("tools").packages == ["demo-firmware"]
        tools = next(e for e in s.plan.extensions if e.name == "tools")
        assert len(tools.selected.intersection(fw.selection)) == by["demo-firmware"].movable > 0
        assert s.figures().initrd_cpio < before.initrd_cpio
        row = next(r for r in plist.rows if r.key == "demo-firmware")
        assert row.ext == "tools" and row.held == row.movable
        assert plist.row is not None and plist.row.key != "demo-firmware"  # moved down, as after a mark

        await to_package(app, pilot, "demo-etc")
        await pilot.press("space")
        assert "none of the" in status(app) and "outside /usr and /opt" in status(app)
        await to_package(app, pilot, "demo-init")
        await pilot.press("space")
        assert "needed to boot" in status(app)

        await to_package(app, pilot, "demo-firmware")  # space again takes it out
        await pilot.press("space")
        assert "take package demo-firmware out of tools" in status(app)
        assert spec_path.read_text() == original  # the key it added went with it
        await to_package(app, pilot, "demo-docs")
        await pilot.press("space")
        assert load_spec(spec_path).extension("tools").packages == ["demo-docs"]
        await pilot.press("u")
        assert spec_path.read_text() == original
        assert s.figures().initrd_cpio == before.initrd_cpio

        await to_package(app, pilot, "demo-init")
        await pilot.press("i")  # the pane says why what stays stays
        pane = str(app.query_one("#info").render())
        assert "demo-init" in pane and "stay: needed to boot" in pane and "usr/bin/immucore" in pane
        await pilot.press("i", "P")
        assert app.tree.display and not plist.display and app.tree.has_focus


async def test_item_pane_names_the_package_of_a_file(spec_path: Path) -> None:
    app = WorkbenchApp(spec_path, estimate=False, watch=False)
    async with app.run_test(size=SIZE) as pilot:
        await ready(app, pilot, WAIT)
        s = app.session
        k = s.index.lookup("usr/bin/immucore")
        app.tree.go_to(s.index.parent[k], k)
        await pilot.press("i")
        pane = str(app.query_one("#info").render())
        assert "package demo-init" in pane
        other = s.index.lookup("usr/bin/dash")
        app.tree.go_to(s.index.parent[other], other)
        await pilot.pause()
        assert "installed by no package" in str(app.query_one("#info").render())


async def test_fit_preview_applies_in_one_step_and_one_undo_reverts_it(spec_path: Path) -> None:
    original = spec_path.read_text()
    app = WorkbenchApp(spec_path, estimate=False, watch=False)
    async with app.run_test(size=SIZE) as pilot:
        await ready(app, pilot, WAIT)
        s = app.session
        uki = s.figures().uki_bytes
        await pilot.press("F")
        assert await wait_for(pilot, lambda: isinstance(app.screen, FitScreen) and app.screen.fit is not None, WAIT)
        screen = app.screen
        assert screen.fit.limit == s.spec.uki.limit
        limit = f"{screen.fit.uki_before * 7 // 10 // 1024}KiB"  # tighter than the UKI the planner sees
        box = screen.query_one("#fit-limit", Input)
        assert box.has_focus
        box.value = limit
        await pilot.press("enter")
        assert await wait_for(pilot, lambda: screen.fit is not None and screen.fit.limit_text == limit, WAIT)
        fit = screen.fit
        assert fit.extensions and fit.by_packages
        text = str(screen.query_one("#fit-text").render())
        assert "UKI after" in text and fit.extensions[0].name in text
        if fit.os_exclude:
            assert "REMOVES content" in text
        assert not screen.query_one("#apply", Button).disabled
        await pilot.press("tab", "enter")  # to Apply, and press it
        assert await wait_for(pilot, lambda: not isinstance(app.screen, FitScreen), WAIT)
        assert "apply the fit proposal" in status(app)
        spec = load_spec(spec_path)
        assert [e.name for e in spec.extensions][1:] == [p.name for p in fit.extensions]
        assert spec.uki.limit_text == limit
        assert "# what we move" in spec_path.read_text()  # comments kept
        assert s.figures().uki_bytes < uki
        await pilot.press("u")
        assert spec_path.read_text() == original
        assert [e.name for e in s.spec.extensions] == ["tools"]


async def test_diff_filter_shows_only_what_differs_from_the_base(tmp_path: Path, pkg_root: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SYSEXTANT_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.chdir(tmp_path)
    base = tmp_path / "base"
    shutil.copytree(pkg_root, base, symlinks=True)
    shutil.rmtree(base / "opt/demo-agent")  # the derived tree (the workbench's) adds it
    (base / "usr/bin/dash").write_bytes(b"older dash\n")  # ... and changes this
    (base / "usr/share/zoneinfo").rename(base / "usr/share/zoneinfo-old")  # ... and deletes this
    spec_path = project(tmp_path, pkg_root, extra=(
        f"  - name: app\n    from: {{image: {pkg_root}, base: {base}}}\n"
        "    release: {ID: _any, ARCHITECTURE: x86-64}\n"))
    app = WorkbenchApp(spec_path, estimate=False, watch=False)
    async with app.run_test(size=SIZE) as pilot:
        await ready(app, pilot, WAIT)
        s, tree = app.session, app.tree
        await pilot.press("D")
        assert await wait_for(pilot, lambda: isinstance(app.screen, BaseScreen), WAIT)
        box = app.screen.query_one("#base", Input)
        assert box.value == str(base)  # the from.base of the extension made from images
        await pilot.press("enter")
        assert await wait_for(pilot, lambda: tree.only is not None, WAIT)
        index = s.index
        assert {index.path(r) for r in tree.rows} == {b"usr", b"opt"}
        shown = {os.fsdecode(index.path(k)) for k in tree.only.indices()}
        assert "opt/demo-agent" in shown and "usr/bin/dash" in shown
        assert not any(p.startswith("usr/lib/firmware") for p in shown)
        assert any(p.startswith("usr/share/zoneinfo/") for p in shown)  # renamed in the base: added here
        assert "added" in status(app) and "changed" in status(app) and "deleted" in status(app)
        assert "only what differs from" in app.query_one("#crumb").markup
        await pilot.press("D")  # D again clears it
        assert tree.only is None and "cleared" in status(app)
        assert len(tree.rows) == len(list(index.children(0)))


def screen_lines(app: WorkbenchApp) -> list[str]:
    """What the terminal shows, line by line (the compositor's output, overlaps and clipping done)."""
    return ["".join(seg.text for seg in strip) for strip in app.screen._compositor.render_strips()]


async def test_packages_view_without_a_database_says_why_whole_at_80x24(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SYSEXTANT_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "a-tree-whose-path-is-long-enough-to-need-wrapping" / "rootfs"
    generate_tree(root, scale=0.05)  # no package database written into it
    app = WorkbenchApp(project(tmp_path, root), estimate=False, watch=False)
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(app, pilot, WAIT)
        await pilot.press("P")
        await pilot.pause()
        tp, why = app.session.package_db()
        assert tp is None and "has no package database" in why and len(why) > 80
        lines = screen_lines(app)
        assert len(lines) == 24 and all(len(line) == 80 for line in lines)
        box = app.query_one(PackageList).region
        listed = [line[box.x:box.right] for line in lines[box.y:box.bottom]]
        # every character of the reason in the list's place, in order (wrapped over its lines)
        assert "".join(why.split()) in "".join("".join(listed).split())
        shown = [line for line in lines if "no packages to list" in line]
        assert len(shown) == 1 and "P: back to the tree" in shown[0] and "…" not in shown[0]
        await pilot.press("space")  # nothing to mark: said in one line, whole
        assert any("no package under the cursor: the list says why" in line for line in screen_lines(app))
