"""The spec editor: each edit changes only its own lines and reads back as intended."""

from __future__ import annotations

import difflib
import fnmatch
import os
import stat
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sysextant.core.spec.edit import SpecEditError, SpecEditor, save_text_atomic
from sysextant.core.spec.load import SpecError, loads_spec
from sysextant.core.spec.model import ExtensionSpec

PATH = Path("/srv/proj/spec.yaml")

SPEC = """\
# Sysextant spec for the demo image.
# Second head comment.
version: 1   # format version

os:
  root: rootfs        # the tree
  kernel: boot/vmlinuz

uki:
  cmdline: "console=ttyS0"
  limit: 1GiB         # firmware limit
  init:               # empty for now

# Extensions follow.
extensions:
  # The firmware blobs.
  - name: firmware    # big one
    version: "1.0"
    paths:
      - usr/lib/firmware       # all of it
      # c-firmware: nothing else for now
      - 'usr/share/firmware'
    release: {ID: _any, ARCHITECTURE: x86-64}

  # Between items.
  - name: k3s
    paths: [usr/bin/k3s, opt/k3s]   # flow list
  # After the last item.

output: build  # trailing
# Tail comment.
"""


def diff(before: str, after: str) -> tuple[list[str], list[str]]:
    """(removed lines, added lines) between two texts."""
    removed, added = [], []
    for line in difflib.ndiff(before.splitlines(), after.splitlines()):
        if line.startswith("- "):
            removed.append(line[2:])
        elif line.startswith("+ "):
            added.append(line[2:])
    return removed, added


def comment_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.lstrip().startswith("#")]


def paths_of(text: str) -> dict[str, list[str]]:
    return {e.name: e.paths for e in loads_spec(text, PATH).extensions}


def test_the_fixture_loads() -> None:
    assert paths_of(SPEC) == {"firmware": ["usr/lib/firmware", "usr/share/firmware"],
                              "k3s": ["usr/bin/k3s", "opt/k3s"]}


def test_append_to_a_block_list_adds_one_line() -> None:
    ed = SpecEditor(SPEC, PATH)
    ed.set_paths("firmware", ["usr/lib/firmware", "usr/share/firmware", "usr/lib/extra files"])
    assert diff(SPEC, ed.text) == ([], ["      - usr/lib/extra files"])
    assert paths_of(ed.text)["firmware"][-1] == "usr/lib/extra files"


def test_remove_from_a_block_list_removes_only_that_line() -> None:
    ed = SpecEditor(SPEC, PATH)
    ed.set_paths("firmware", ["usr/share/firmware"])
    assert diff(SPEC, ed.text) == (["      - usr/lib/firmware       # all of it"], [])
    assert paths_of(ed.text)["firmware"] == ["usr/share/firmware"]


def test_insert_at_the_front_and_in_the_middle_of_a_block_list() -> None:
    ed = SpecEditor(SPEC, PATH)
    ed.set_paths("firmware", ["opt/first", "usr/lib/firmware", "usr/x", "usr/share/firmware"])
    assert diff(SPEC, ed.text) == ([], ["      - opt/first", "      - usr/x"])
    assert paths_of(ed.text)["firmware"] == ["opt/first", "usr/lib/firmware", "usr/x", "usr/share/firmware"]
    lines = ed.text.splitlines()
    assert lines.index("      - usr/x") == lines.index("      - usr/lib/firmware       # all of it") + 1


def test_emptying_a_block_list_writes_flow_empty_and_keeps_comments() -> None:
    ed = SpecEditor(SPEC, PATH)
    ed.set_paths("firmware", [])
    removed, added = diff(SPEC, ed.text)
    assert removed == ["    paths:", "      - usr/lib/firmware       # all of it", "      - 'usr/share/firmware'"]
    assert added == ["    paths: []"]
    assert comment_lines(ed.text) == comment_lines(SPEC)
    assert paths_of(ed.text)["firmware"] == []
    ed.set_paths("firmware", ["usr/a", "opt/b"])  # [] is a flow list now, and stays one
    assert "    paths: [usr/a, opt/b]" in ed.text.splitlines()


def test_flow_list_stays_flow_with_its_comment() -> None:
    ed = SpecEditor(SPEC, PATH)
    ed.set_paths("k3s", ["usr/bin/k3s", "opt/k3s", "usr/lib/a,b", "usr/yes"])
    assert diff(SPEC, ed.text) == (["    paths: [usr/bin/k3s, opt/k3s]   # flow list"],
                                   ["    paths: [usr/bin/k3s, opt/k3s, 'usr/lib/a,b', usr/yes]   # flow list"])
    assert paths_of(ed.text)["k3s"] == ["usr/bin/k3s", "opt/k3s", "usr/lib/a,b", "usr/yes"]


def test_multi_line_flow_list_keeps_one_item_a_line() -> None:
    text = SPEC.replace("    paths: [usr/bin/k3s, opt/k3s]   # flow list\n",
                        "    paths: [usr/bin/k3s,\n            opt/k3s]\n")
    ed = SpecEditor(text, PATH)
    ed.set_paths("k3s", ["usr/bin/k3s", "opt/k3s", "opt/more"])
    assert diff(text, ed.text) == (["            opt/k3s]"], ["            opt/k3s,", "            opt/more]"])


def test_comment_inside_a_flow_list_is_refused_not_lost() -> None:
    text = SPEC.replace("    paths: [usr/bin/k3s, opt/k3s]   # flow list\n",
                        "    paths: [usr/bin/k3s,  # the binary\n            opt/k3s]\n")
    ed = SpecEditor(text, PATH)
    with pytest.raises(SpecEditError, match="comments inside"):
        ed.set_paths("k3s", ["usr/bin/k3s"])
    assert ed.text == text


def test_quoting_only_where_needed() -> None:
    ed = SpecEditor(SPEC, PATH)
    ed.set_paths("firmware", ["usr/lib/firmware", "usr/share/firmware", "usr/1.0", "usr/#x", "opt/ü", "usr/a\tb"])
    added = diff(SPEC, ed.text)[1]
    assert added == ["      - usr/1.0", "      - usr/#x", "      - opt/ü", '      - "usr/a\\tb"']
    assert paths_of(ed.text)["firmware"][2:] == ["usr/1.0", "usr/#x", "opt/ü", "usr/a\tb"]


def test_add_extension_after_the_last_item_with_the_same_indentation() -> None:
    ed = SpecEditor(SPEC, PATH)
    ed.add_extension(ExtensionSpec(name="docs", paths=["usr/share/doc"]))
    removed, added = diff(SPEC, ed.text)
    assert removed == []
    # the spec's author quotes with "..." more often than '...': the new text follows
    assert added == ["  - name: docs", '    version: "1.0"', "    paths: [usr/share/doc]",
                     "    filesystem: erofs", "    compression: none",
                     "    release: {ID: _any, ARCHITECTURE: x86-64}"]
    lines = ed.text.splitlines()
    assert lines.index("  - name: docs") == lines.index("    paths: [usr/bin/k3s, opt/k3s]   # flow list") + 1
    spec = loads_spec(ed.text, PATH)
    assert spec.extensions[-1] == ExtensionSpec(name="docs", paths=["usr/share/doc"])


def test_add_extension_with_many_paths_writes_a_block_list() -> None:
    ed = SpecEditor(SPEC, PATH)
    ext = ExtensionSpec(name="docs", version="2", paths=[f"usr/share/doc/package-{i}" for i in range(9)],
                        exclude=["usr/share/doc/*/changelog*"], filesystem="squashfs", compression="zstd",
                        release={"ID": "debian", "VERSION_ID": "12", "ARCHITECTURE": "arm64"})
    ed.add_extension(ext)
    assert "    paths:" in ed.text.splitlines() and "      - usr/share/doc/package-8" in ed.text.splitlines()
    assert loads_spec(ed.text, PATH).extensions[-1] == ext


@pytest.mark.parametrize("extensions", ["", "extensions: []  # none yet\n", "extensions:\n", "extensions: null\n",
                                        "extensions: ~   # none\n"])
def test_add_extension_when_there_is_none(extensions: str) -> None:
    text = "# head\nversion: 1\nos:\n    root: rootfs\n" + extensions + "# tail\n"
    ed = SpecEditor(text, PATH)
    ed.add_extension(ExtensionSpec(name="fw", paths=["usr/lib/firmware"]))
    assert comment_lines(ed.text) == comment_lines(text)
    spec = loads_spec(ed.text, PATH)
    assert [e.name for e in spec.extensions] == ["fw"]
    assert "    - name: fw" in ed.text.splitlines()  # the file's 4-space step
    ed.add_extension(ExtensionSpec(name="more", paths=["opt/more"]))
    assert [e.name for e in loads_spec(ed.text, PATH).extensions] == ["fw", "more"]


def test_add_to_a_flow_list_of_extensions_and_to_a_text_without_final_newline() -> None:
    text = "version: 1\nos: {root: r}\nextensions: [{name: a, paths: [usr/a]}]"
    ed = SpecEditor(text, PATH)
    ed.add_extension(ExtensionSpec(name="b", paths=["usr/b"]))
    assert ed.text.count("\n") == 2
    assert paths_of(ed.text) == {"a": ["usr/a"], "b": ["usr/b"]}
    ed.set_paths("a", ["usr/a", "opt/a"])
    ed.rename_extension("b", "bee")
    ed.remove_extension("a")
    assert paths_of(ed.text) == {"bee": ["usr/b"]}
    ed.remove_extension("bee")
    assert paths_of(ed.text) == {}
    ed2 = SpecEditor("version: 1\nos: {root: r}\nextensions:\n- name: a\n  paths: [usr/a]", PATH)
    ed2.add_extension(ExtensionSpec(name="b", paths=["usr/b"]))
    assert paths_of(ed2.text) == {"a": ["usr/a"], "b": ["usr/b"]}


def test_rename_changes_only_the_name() -> None:
    ed = SpecEditor(SPEC, PATH)
    ed.rename_extension("firmware", "linux-firmware")
    assert diff(SPEC, ed.text) == (["  - name: firmware    # big one"], ["  - name: linux-firmware    # big one"])
    ed.rename_extension("linux-firmware", "linux-firmware")  # no-op
    with pytest.raises(SpecEditError, match="'_'"):
        ed.rename_extension("k3s", "k3s_tools")
    with pytest.raises(SpecEditError, match="already exists"):
        ed.rename_extension("k3s", "Linux-Firmware")
    with pytest.raises(SpecEditError, match="no extension named 'nope'"):
        ed.rename_extension("nope", "x")


def test_remove_extension_deletes_its_lines_and_keeps_comments_around_it() -> None:
    ed = SpecEditor(SPEC, PATH)
    ed.remove_extension("firmware")
    removed, added = diff(SPEC, ed.text)
    assert added == []
    assert removed == ["  - name: firmware    # big one", '    version: "1.0"', "    paths:",
                       "      - usr/lib/firmware       # all of it", "      # c-firmware: nothing else for now",
                       "      - 'usr/share/firmware'", "    release: {ID: _any, ARCHITECTURE: x86-64}"]
    assert paths_of(ed.text) == {"k3s": ["usr/bin/k3s", "opt/k3s"]}
    ed.remove_extension("k3s")
    assert "extensions: []" in ed.text.splitlines()
    assert paths_of(ed.text) == {}
    assert [c for c in comment_lines(SPEC) if "c-firmware" not in c] == comment_lines(ed.text)


def test_set_value_keeps_the_line_and_its_comment() -> None:
    ed = SpecEditor(SPEC, PATH)
    ed.set_value(("uki", "limit"), "800MiB")
    assert diff(SPEC, ed.text) == (["  limit: 1GiB         # firmware limit"], ["  limit: 800MiB         # firmware limit"])
    ed.set_value(("uki", "init"), "/usr/bin/immucore")
    assert "  init: /usr/bin/immucore               # empty for now" in ed.text.splitlines()
    ed.set_value(("uki", "cmdline"), "console=ttyS0 quiet")  # the double quotes stay
    assert '  cmdline: "console=ttyS0 quiet"' in ed.text.splitlines()
    ed.set_value(("uki", "level"), 12)  # a new key at the end of uki
    lines = ed.text.splitlines()
    assert lines[lines.index("  init: /usr/bin/immucore               # empty for now") + 1] == "  level: 12"
    ed.set_value(("extensions", 1, "version"), "2.0")
    ed.set_value(("extensions", 0, "paths", 1), "usr/share/fw")
    ed.set_value(("uki", "init"), None)
    spec = loads_spec(ed.text, PATH)
    assert (spec.uki.limit_text, spec.uki.init, spec.uki.level, spec.uki.cmdline) == ("800MiB", None, 12, "console=ttyS0 quiet")
    assert spec.extensions[1].version == "2.0" and spec.extensions[0].paths[1] == "usr/share/fw"
    assert comment_lines(ed.text) == comment_lines(SPEC)
    with pytest.raises(SpecEditError, match="not a single value"):
        ed.set_value(("os",), "x")
    with pytest.raises(SpecEditError, match="no extensions.paths"):
        ed.set_value(("extensions", "paths"), "x")


def test_set_value_creates_missing_sections() -> None:
    text = "# head\nversion: 1\nos:\n    root: rootfs\nsigning:   # later\n# tail\n"
    ed = SpecEditor(text, PATH)
    ed.set_value(("uki", "limit"), "ovmf")
    ed.set_value(("signing", "key"), "keys/db.key")
    ed.set_value(("signing", "cert"), "keys/db.pem")
    assert diff(text, ed.text) == ([], ["    key: keys/db.key", "    cert: keys/db.pem", "uki:", "    limit: ovmf"])
    spec = loads_spec(ed.text, PATH)
    assert spec.uki.limit_text == "ovmf" and spec.signing is not None
    assert spec.signing.cert == Path("/srv/proj/keys/db.pem")
    flow = SpecEditor("version: 1\nos: {root: r, exclude: null}\n", PATH)
    flow.set_value(("os", "kernel"), "/boot/vmlinuz")
    assert flow.text == "version: 1\nos: {root: r, exclude: null, kernel: /boot/vmlinuz}\n"


def test_set_value_in_a_flow_mapping() -> None:
    ed = SpecEditor(SPEC, PATH)
    ed.set_value(("extensions", 0, "release", "VERSION_ID"), "12")
    ed.set_value(("extensions", 0, "release", "ID"), "debian")
    assert "    release: {ID: debian, ARCHITECTURE: x86-64, VERSION_ID: '12'}" in ed.text.splitlines()


def test_crlf_files_keep_crlf() -> None:
    text = SPEC.replace("\n", "\r\n")
    ed = SpecEditor(text, PATH)
    ed.set_paths("firmware", ["usr/lib/firmware", "usr/new"])
    ed.add_extension(ExtensionSpec(name="docs", paths=["usr/share/doc"]))
    ed.set_value(("uki", "level"), 3)
    assert "\n" not in ed.text.replace("\r\n", "")
    assert paths_of(ed.text) == {"firmware": ["usr/lib/firmware", "usr/new"], "k3s": ["usr/bin/k3s", "opt/k3s"],
                                 "docs": ["usr/share/doc"]}


def test_broken_text_is_refused_up_front() -> None:
    with pytest.raises(SpecError):
        SpecEditor("os: [\n", PATH)
    with pytest.raises(SpecEditError):
        SpecEditor("- a\n", PATH)
    with pytest.raises(SpecEditError, match="may only hold"):
        SpecEditor(SPEC, PATH).add_extension(ExtensionSpec(name="a b"))


def test_save_text_atomic_keeps_mode_and_symlinks(tmp_path: Path) -> None:
    real = tmp_path / "real.yaml"
    real.write_text(SPEC)
    real.chmod(0o640)
    link = tmp_path / "spec.yaml"
    link.symlink_to(real.name)
    save_text_atomic(link, "version: 1\n")
    assert link.is_symlink() and real.read_text() == "version: 1\n"
    assert stat.S_IMODE(real.stat().st_mode) == 0o640
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".sysextant-tmp-")]
    fresh = tmp_path / "new.yaml"
    save_text_atomic(fresh, "x: ü\n")
    assert fresh.read_bytes() == "x: ü\n".encode()


# ---------------------------------------------------------------------------------------------
# Random sequences of edits on the commented spec.

SEGMENT = st.text(alphabet="abc xyz:#,[]{}'\"-?*!&|>%@`ü\t~019.", min_size=1, max_size=8).filter(
    lambda s: s not in (".", "..") and "/" not in s)
PATHS = st.builds(lambda top, rest: f"{top}/{rest}", st.sampled_from(["usr", "opt"]), SEGMENT).filter(
    lambda p: not fnmatch.fnmatchcase("usr/lib", p))  # a glob taking usr/lib/os-release is refused
PATH_LISTS = st.lists(PATHS, max_size=6, unique=True)
NAMES = st.sampled_from(["firmware", "k3s", "docs", "gpu", "ai.stack", "n1", "Tools-2"])
EDITS = st.one_of(
    st.tuples(st.just("paths"), st.integers(0, 9), PATH_LISTS),
    st.tuples(st.just("add"), NAMES, PATH_LISTS),
    st.tuples(st.just("rename"), st.integers(0, 9), NAMES),
    st.tuples(st.just("remove"), st.integers(0, 9)),
    st.tuples(st.just("limit"), st.sampled_from(["1GiB", "800 MiB", "ovmf", "2GB"])),
    # any command line the spec accepts: no control characters but the tab and line breaks it folds
    st.tuples(st.just("cmdline"), st.text(st.characters(blacklist_categories=("Cs", "Cc")) | st.sampled_from("\t\n\r"),
                                          max_size=20)),
)


# Another layout: 4-space indent, dashes at their key's column, a flow mapping item.
SPEC_INDENTLESS = """\
version: 1
os:
    root: rootfs
uki: {cmdline: console=ttyS0, limit: 1GiB}
extensions:
# First.
- name: firmware
  paths:
  - usr/lib/firmware   # inline
  # c-firmware: inside
  - usr/share/firmware
- {name: k3s, paths: [usr/bin/k3s, opt/k3s]}   # flow item
# Tail.
"""


def test_the_other_layout_keeps_its_style() -> None:
    ed = SpecEditor(SPEC_INDENTLESS, PATH)
    ed.set_paths("firmware", ["usr/lib/firmware", "usr/share/firmware", "opt/x"])
    ed.add_extension(ExtensionSpec(name="docs", paths=["usr/share/doc"]))
    ed.set_paths("k3s", ["usr/bin/k3s"])
    ed.set_value(("uki", "limit"), "ovmf")
    removed, added = diff(SPEC_INDENTLESS, ed.text)
    assert removed == ["uki: {cmdline: console=ttyS0, limit: 1GiB}",
                       "- {name: k3s, paths: [usr/bin/k3s, opt/k3s]}   # flow item"]
    assert added[:3] == ["uki: {cmdline: console=ttyS0, limit: ovmf}", "  - opt/x",
                         "- {name: k3s, paths: [usr/bin/k3s]}   # flow item"]
    assert added[3] == "- name: docs" and added[4] == "  version: '1.0'"
    assert paths_of(ed.text)["docs"] == ["usr/share/doc"]


def test_adding_paths_to_an_extension_without_them() -> None:
    text = SPEC.replace("    paths: [usr/bin/k3s, opt/k3s]   # flow list\n", "    version: '2'\n")
    ed = SpecEditor(text, PATH)
    ed.set_paths("k3s", ["usr/bin/k3s"])
    assert diff(text, ed.text) == ([], ["    paths: [usr/bin/k3s]"])
    flow = SPEC_INDENTLESS.replace(", paths: [usr/bin/k3s, opt/k3s]", "")
    ed = SpecEditor(flow, PATH)
    ed.set_paths("k3s", ["usr/bin/k3s", "opt/k 3"])
    assert "- {name: k3s, paths: [usr/bin/k3s, opt/k 3]}   # flow item" in ed.text.splitlines()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from([SPEC, SPEC_INDENTLESS, SPEC.replace("\n", "\r\n")]), st.lists(EDITS, max_size=8))
def test_random_edit_sequences_keep_comments_and_read_back(spec_text: str, edits: list[tuple]) -> None:
    ed = SpecEditor(spec_text, PATH)
    model = paths_of(spec_text)
    original = {"firmware": "firmware", "k3s": "k3s"}  # current name -> name in SPEC
    removed_originals: set[str] = set()
    limit, cmdline = "1GiB", "console=ttyS0"
    for edit in edits:
        names = list(model)
        kind = edit[0]
        if kind == "paths" and names:
            name = names[edit[1] % len(names)]
            ed.set_paths(name, edit[2])
            model[name] = edit[2]
        elif kind == "add":
            if edit[1].lower() in {n.lower() for n in names}:
                with pytest.raises(SpecEditError):
                    ed.add_extension(ExtensionSpec(name=edit[1], paths=edit[2]))
                continue
            ed.add_extension(ExtensionSpec(name=edit[1], paths=edit[2]))
            model[edit[1]] = edit[2]
        elif kind == "rename" and names:
            old = names[edit[1] % len(names)]
            new = edit[2]
            if new != old and new.lower() in {n.lower() for n in names}:
                with pytest.raises(SpecEditError):
                    ed.rename_extension(old, new)
                continue
            ed.rename_extension(old, new)
            model = {(new if n == old else n): p for n, p in model.items()}
            if old in original:
                original[new] = original.pop(old)
        elif kind == "remove" and names:
            name = names[edit[1] % len(names)]
            ed.remove_extension(name)
            del model[name]
            if name in original:
                removed_originals.add(original.pop(name))
        elif kind == "limit":
            ed.set_value(("uki", "limit"), edit[1])
            limit = edit[1]
        elif kind == "cmdline":
            ed.set_value(("uki", "cmdline"), edit[1])
            cmdline = edit[1]
        spec = loads_spec(ed.text, PATH)
        assert {e.name: e.paths for e in spec.extensions} == model
        assert spec.uki.limit_text == limit.strip()
        assert spec.uki.cmdline == " ".join(cmdline.split())
        # Every comment stays, in order; only those inside a removed extension may go with it.
        def kept(lines: list[str]) -> list[str]:
            return [c for c in lines if not any(f"c-{gone}:" in c for gone in removed_originals)]

        now = comment_lines(ed.text)
        assert kept(now) == kept(comment_lines(spec_text))
        assert set(now) <= set(comment_lines(spec_text))
