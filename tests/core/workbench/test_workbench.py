"""The workbench session without Textual: checked marks, figures, undo, extension ops, reload."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from workbench_helpers import idx, make_project

from sysextant.core.sizing.plan import make_plan
from sysextant.core.spec import edit as specedit
from sysextant.core.spec.load import load_spec
from sysextant.core.tree.index import cpio_entry_bytes, scan
from sysextant.core.tree.selection import IntervalSet, Sums, subtree_set
from sysextant.core.workbench.session import Session


@pytest.fixture
def session(tmp_path: Path) -> Session:
    s = Session.open(make_project(tmp_path))
    s.scan()
    return s


def fresh_plan(s: Session):
    """The plan a separate reader computes from the file on disk (what `sysextant plan` sees)."""
    spec = load_spec(s.path)
    index = scan(spec.os.root)
    return make_plan(spec, index, Sums(index))


def test_refusals_name_the_reason(session: Session) -> None:
    s = session
    cases = {
        "etc": "outside usr/ and opt/",
        "usr/lib": "usr/lib/os-release",
        "usr/lib/os-release": "usr/lib/os-release",
        "usr/lib/modules/6.1.0/vmlinuz": "is needed to boot: the kernel (os.kernel",
        "usr/lib/modules": "holds usr/lib/modules/6.1.0/vmlinuz, needed to boot: the kernel",
        "usr/bin/init": "is needed to boot: the init program /usr/bin/init",
        "usr/bin": "holds usr/bin/init, needed to boot: the init program",
        "usr/share/pipes/fifo": "special file",
        "usr/share/pipes": "holds 1 special file",
        "usr/share/doc/pkg1": "already in extension docs",
        "usr/share/doc": "already in extension docs",
    }
    for rel, reason in cases.items():
        out = s.toggle(idx(s, rel), "tools")
        assert not out.ok and reason in out.message, (rel, out.message)
    assert "press +" in s.mark(idx(s, "usr/lib/firmware"), None).message
    assert "through usr/bin/big" not in s.mark(idx(s, "usr/lib/firmware"), "tools").message  # allowed
    text_before = s.text
    assert s.undo().ok and s.text != text_before


def test_refused_before_the_scan_is_done(tmp_path: Path) -> None:
    s = Session.open(make_project(tmp_path))
    out = s.mark(1, "tools")
    assert not out.ok and "scanned" in out.message
    assert "scan of the OS tree is not finished" in s.build_refusal()


def test_build_preconditions_are_the_sessions(session: Session) -> None:
    """A build reads the spec file: it starts only from a valid file holding the last change
    (the CLI and the workbench ask the session, not the UI)."""
    s = session
    assert s.build_refusal() is None
    good = s.path.read_text()
    s.path.write_text(good + "\nextensions: [\n")
    s.reload()
    assert s.disk_problems and "on disk has 1 problem" in s.build_refusal()
    s.path.write_text(good)
    s.reload()
    assert s.build_refusal() is None
    s.pending_text, s.save_error = s.text, "No space left on device"
    assert "could not be saved (No space left on device)" in s.build_refusal()


def test_mark_changes_figures_by_the_exact_cpio_bytes(session: Session) -> None:
    s = session
    before = s.figures()
    fw = idx(s, "usr/lib/firmware")
    moved = s.sums.cpio_bytes(subtree_set(s.index, [fw]))
    out = s.mark(fw, "tools")
    assert out.ok, out.message
    assert out.cpio_delta == -moved
    assert out.after.initrd_cpio == before.initrd_cpio - moved
    # compression none: the initrd goes into the UKI as is, so the UKI shrinks by the same bytes,
    # give or take the 512-byte section alignment
    assert abs(out.delta + moved) < 512
    # the saved file, read by a separate loader and planner, gives the same figures
    plan = fresh_plan(s)
    assert plan.initrd_cpio_after == out.after.initrd_cpio
    tools = next(e for e in plan.extensions if e.name == "tools")
    fig = next(f for f in s.extension_figures() if f.name == "tools")
    assert (fig.entries, fig.bytes, fig.initrd_saved) == (tools.entries, tools.bytes, tools.initrd_bytes)
    assert fig.bytes == 400_000 + s.index.tot_size[fw]  # folders count their own st_size
    assert fig.image_bytes > fig.bytes


def test_a_file_mark_moves_its_newc_entry(session: Session) -> None:
    s = session
    out = s.mark(idx(s, "opt/agent/bin/agent"), "tools")
    assert out.ok
    assert out.cpio_delta == -cpio_entry_bytes(len("opt/agent/bin/agent"), 90_000)


def test_nested_marks_count_once(session: Session) -> None:
    s = session
    assert s.mark(idx(s, "usr/lib/firmware/b"), "tools").ok
    one = next(f for f in s.extension_figures() if f.name == "tools")
    out = s.mark(idx(s, "usr/lib/firmware"), "tools")
    assert out.ok and "counted once" in out.message
    both = next(f for f in s.extension_figures() if f.name == "tools")
    fw = idx(s, "usr/lib/firmware")
    assert both.bytes == 400_000 + s.index.tot_size[fw]  # b/c.bin is not counted twice
    assert both.bytes == one.bytes + 200_000 + s.index.size[fw]
    assert set(both.paths) == {"usr/bin/big", "usr/lib/firmware/b", "usr/lib/firmware"}
    inner = s.mark(idx(s, "usr/lib/firmware/a.bin"), "tools")
    assert not inner.ok and "through usr/lib/firmware" in inner.message


def test_toggle_unmarks_and_globs_are_not_unmarked(session: Session) -> None:
    s = session
    big = idx(s, "usr/bin/big")
    out = s.toggle(big, "tools")
    assert out.ok and out.message.startswith("unmark") and out.cpio_delta > 0
    assert s.spec.extension("tools").paths == []
    glob = s.unmark(idx(s, "usr/share/doc/pkg1"), "docs")
    assert not glob.ok and "pattern" in glob.message


def test_undo_restores_the_text_exactly(session: Session) -> None:
    s = session
    original = s.text
    assert s.mark(idx(s, "usr/lib/firmware"), "tools").ok
    assert s.mark(idx(s, "opt/agent"), "tools").ok
    assert s.add_extension("gpu").ok
    assert s.undo().ok and s.undo().ok and s.undo().ok
    assert s.text == original
    assert s.path.read_text() == original
    assert not s.undo().ok


def test_extension_operations_keep_comments(session: Session) -> None:
    s = session
    assert s.add_extension("gpu").ok
    assert s.mark(idx(s, "usr/lib/modules/6.1.0/kernel/drivers/gpu.ko"), "gpu").ok
    assert s.rename_extension("gpu", "graphics").ok
    assert not s.add_extension("Graphics").ok  # differs only in case
    assert not s.add_extension("bad_name").ok  # systemd cuts names at '_'
    assert not s.rename_extension("tools", "docs").ok
    text = s.path.read_text()
    assert "# a hand-made test spec; this comment must survive every edit" in text
    assert "# big binaries" in text
    spec = load_spec(s.path)
    assert [e.name for e in spec.extensions] == ["tools", "docs", "graphics"]
    assert spec.extension("graphics").paths == ["usr/lib/modules/6.1.0/kernel/drivers/gpu.ko"]
    assert s.remove_extension("graphics").ok
    assert [e.name for e in load_spec(s.path).extensions] == ["tools", "docs"]
    assert s.undo().ok  # the removed extension comes back with its paths
    assert load_spec(s.path).extension("graphics").paths == ["usr/lib/modules/6.1.0/kernel/drivers/gpu.ko"]


def test_reload_ignores_own_saves_and_takes_outside_edits(session: Session) -> None:
    s = session
    assert s.mark(idx(s, "usr/lib/firmware"), "tools").ok
    assert not s.reload().changed  # our own save comes back unchanged
    s.path.write_text(s.text.replace("limit: 1MiB", "limit: 2MiB"))
    r = s.reload()
    assert r.changed and r.ok and not r.rescan
    assert s.figures().limit == 2 * 1024 * 1024
    good = s.text
    s.path.write_text(good.replace("version: 1", "version: [1"))
    bad = s.reload()
    assert bad.changed and not bad.ok and bad.problems and bad.problems[0].line >= 1
    assert s.text == good and s.spec.uki.limit == 2 * 1024 * 1024  # last good spec kept
    refused = s.mark(idx(s, "opt/agent"), "tools")  # saving would overwrite the user's edit
    assert not refused.ok and "fix them first" in refused.message
    assert "version: [1" in s.path.read_text()
    other = s.path.parent / "other"
    other.mkdir()
    (other / "usr").mkdir()
    s.path.write_text(good.replace("root: rootfs", "root: other"))
    moved = s.reload()
    assert moved.ok and moved.rescan and s.plan is None


def test_a_failed_save_is_pending(session: Session, monkeypatch: pytest.MonkeyPatch) -> None:
    s = session

    def fail(path: Path, text: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(specedit, "save_text_atomic", fail)
    out = s.mark(idx(s, "usr/lib/firmware"), "tools")
    assert out.ok and "NOT SAVED" in out.message and s.unsaved
    monkeypatch.undo()
    assert s.mark(idx(s, "opt/agent"), "tools").ok and not s.unsaved
    assert "opt/agent" in s.path.read_text()


def test_uki_prediction_uses_the_real_stub(session: Session) -> None:
    fig = session.figures()
    kernel = 50_000
    assert fig.uki_bytes >= fig.initrd_bytes + kernel
    assert fig.uki_bytes - fig.initrd_bytes - kernel < 1024 * 1024  # stub + small sections
    assert fig.verdict in ("ok", "over")
    assert fig.level in ("ok", "warn", "over")


def test_uki_size_is_predict_size_for_any_initrd(session: Session) -> None:
    from sysextant.core.formats.uki import predict_size

    stub = session.spec.uki.stub
    if not stub.exists():
        pytest.skip(f"the systemd stub {stub} is not installed (Debian package systemd-boot-efi)")
    sizes = {".linux": 50_000, ".cmdline": len(session.spec.uki.cmdline), ".osrel": 60, ".uname": 15}
    for initrd in (1, 511, 512, 513, 1_234_567):
        assert session._uki_size(initrd) == predict_size(stub, {**sizes, ".initrd": initrd}, signed=False)


@given(st.lists(st.tuples(st.integers(0, 60), st.integers(0, 60))), st.integers(0, 70), st.integers(0, 70))
def test_clip_is_the_set_cut_to_a_range(intervals: list[tuple[int, int]], lo: int, hi: int) -> None:
    sel = IntervalSet(intervals)
    pieces = list(sel.clip(lo, hi))
    assert [k for s, e in pieces for k in range(s, e)] == [k for k in sel.indices() if lo <= k < hi]
    assert pieces == list(sel.intersection(IntervalSet([(lo, hi)])))  # whole intervals, in order


def test_row_figures_match_a_walk_of_each_subtree(session: Session) -> None:
    """What a row shows (newc bytes still in the initrd, the extensions below a folder) is what
    walking the entry's subtree one entry at a time gives, for every entry of the tree."""
    s = session
    assert s.mark(idx(s, "usr/lib/firmware/b"), "tools").ok
    assert s.exclude(idx(s, "usr/share/doc/pkg2/copyright")).ok
    plan, index = s.plan, s.index
    for i in range(len(index)):
        sub = index.subtree(i)
        below = [i, *(range(sub.start, sub.stop) if sub else ())]
        assert s.kept_cpio(i) == sum(index.cpio[k] for k in below if k in plan.initrd_after), index.path(i)
        assert s.owners_in(i) == [ep.name for ep in plan.extensions if any(k in ep.selected for k in below)]
    assert s.owners_in(idx(s, "usr")) == ["tools", "docs"]
    assert s.owners_in(idx(s, "usr/share/doc/pkg2/copyright")) == []


def test_core_does_not_import_textual() -> None:
    code = "import sys, sysextant.core.workbench.session; print('textual' in sys.modules, 'rich' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
