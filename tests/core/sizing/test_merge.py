"""Extensions hold only what the booted OS merges: SYSTEMD_SYSEXT_HIERARCHIES read from the tree
(a systemd drop-in, a Kairos cloud-config), Kairos' list in a Kairos tree, /usr and /opt else.
Files elsewhere would never appear: the plan refuses them and the workbench refuses the mark."""

from __future__ import annotations

from pathlib import Path

import pytest
from plan_helpers import make_os, write_spec
from workbench_helpers import idx, make_project

from sysextant.core.rules import release_mismatch
from sysextant.core.sizing.merge import KAIROS_DEFAULT, SYSTEMD_DEFAULT, read_hierarchies
from sysextant.core.sizing.plan import make_plan
from sysextant.core.spec.load import load_spec
from sysextant.core.tree.index import scan
from sysextant.core.workbench.session import Session


def plan_of(tmp_path: Path, paths: str):
    spec = load_spec(write_spec(tmp_path, f"  - name: app\n    paths: {paths}\n", extra_uki="  init: /usr/bin/immucore"))
    return make_plan(spec, scan(spec.os.root))


def kairos_tree(root: Path) -> None:
    make_os(root)  # holds usr/bin/immucore: a Kairos tree
    (root / "usr/lib64").mkdir()
    (root / "usr/lib64/ld.so").write_bytes(b"x" * 100)
    (root / "usr/libexec/tool").parent.mkdir()
    (root / "usr/libexec/tool").write_bytes(b"t" * 100)


def test_a_kairos_tree_merges_kairos_hierarchies(tmp_path: Path) -> None:
    kairos_tree(tmp_path / "rootfs")
    hier = read_hierarchies(scan(tmp_path / "rootfs"))
    assert hier.paths == KAIROS_DEFAULT and "Kairos" in hier.source
    assert plan_of(tmp_path, "[usr/lib/firmware, usr/share/doc]").problems == []
    for paths, example in (("[opt/tool]", "opt/tool"), ("[usr/lib64]", "usr/lib64"), ("[usr/libexec]", "usr/libexec")):
        text = "\n".join(plan_of(tmp_path, paths).problems)
        assert "outside the hierarchies this OS merges" in text and f"e.g. {example}" in text, (paths, text)
        assert "would never appear" in text and "/usr/lib:" in text


def test_a_drop_in_in_the_tree_decides(tmp_path: Path) -> None:
    root = tmp_path / "rootfs"
    kairos_tree(root)
    drop_in = root / "etc/systemd/system/systemd-sysext.service.d/50-hierarchies.conf"
    drop_in.parent.mkdir(parents=True)
    drop_in.write_text('[Service]\nEnvironment="SYSTEMD_SYSEXT_HIERARCHIES=/usr:/opt/tool"\n')
    hier = read_hierarchies(scan(root))
    assert hier.paths == ("/usr", "/opt/tool")
    assert hier.source == "SYSTEMD_SYSEXT_HIERARCHIES in etc/systemd/system/systemd-sysext.service.d/50-hierarchies.conf"
    assert plan_of(tmp_path, "[opt/tool, usr/lib64]").problems == []


def test_a_kairos_cloud_config_in_the_tree_decides(tmp_path: Path) -> None:
    root = tmp_path / "rootfs"
    kairos_tree(root)
    (root / "system/oem").mkdir(parents=True)
    (root / "system/oem/99_sysext.yaml").write_text(
        "stages:\n  initramfs:\n    - files:\n        - path: /etc/systemd/system/systemd-sysext.service.d/h.conf\n"
        "          content: |\n            [Service]\n"
        "            Environment=\"SYSTEMD_SYSEXT_HIERARCHIES=/usr/bin:/usr/lib\"\n")
    hier = read_hierarchies(scan(root))
    assert hier.paths == ("/usr/bin", "/usr/lib") and "system/oem/99_sysext.yaml" in hier.source
    assert "usr/share/doc" in "\n".join(plan_of(tmp_path, "[usr/share/doc]").problems)


def test_plain_systemd_merges_usr_and_opt(tmp_path: Path) -> None:
    root = tmp_path / "rootfs"
    root.mkdir()
    (root / "usr/lib64").mkdir(parents=True)
    (root / "opt/x").mkdir(parents=True)
    hier = read_hierarchies(scan(root))
    assert hier.paths == SYSTEMD_DEFAULT
    assert hier.covers("usr/lib64/a") and hier.covers("opt/x") and not hier.covers("etc/x")


def test_the_workbench_refuses_a_mark_that_would_never_appear(tmp_path: Path) -> None:
    spec = make_project(tmp_path)
    root = tmp_path / "rootfs"
    (root / "etc/kairos-release").write_text("KAIROS_VERSION=v3\n")  # now a Kairos tree
    (root / "usr/libexec").mkdir()
    (root / "usr/libexec/helper").write_bytes(b"h" * 100)
    s = Session.open(spec)
    s.scan()
    out = s.toggle(idx(s, "opt/agent"), "tools")
    assert not out.ok and "outside the hierarchies this OS merges" in out.message and "never appear" in out.message
    out = s.toggle(idx(s, "usr"), "tools")
    assert not out.ok and "entries outside the hierarchies" in out.message and "e.g. usr/libexec" in out.message
    assert s.toggle(idx(s, "usr/lib/firmware"), "tools").ok


@pytest.mark.parametrize("release, host, arch, why", [
    ({"ID": "_any"}, {"ID": "debian", "VERSION_ID": "12"}, "x86-64", None),
    ({"ID": "_any", "ARCHITECTURE": "arm64"}, {"ID": "debian"}, "x86-64", "ARCHITECTURE=arm64, but this OS runs x86-64"),
    ({"ID": "debian", "VERSION_ID": "12"}, {"ID": "debian", "VERSION_ID": "12"}, "x86-64", None),
    ({"ID": "debian", "VERSION_ID": "11"}, {"ID": "debian", "VERSION_ID": "12"}, None, "VERSION_ID=11, but"),
    ({"ID": "ubuntu"}, {"ID": "debian"}, None, "ID=ubuntu, but the OS tree's os-release says ID=debian"),
    ({"ID": "kairos", "SYSEXT_LEVEL": "2", "VERSION_ID": "9"}, {"ID": "kairos", "SYSEXT_LEVEL": "2", "VERSION_ID": "3"},
     None, None),  # SYSEXT_LEVEL decides when both set it
    ({"ID": "kairos", "SYSEXT_LEVEL": "1"}, {"ID": "kairos", "SYSEXT_LEVEL": "2"}, None, "SYSEXT_LEVEL=1, but"),
    ({"ID": "debian"}, {"ID": "debian", "VERSION_ID": "12"}, None, None),  # no VERSION_ID: any version
    ({}, {"ID": "debian"}, None, "no ID="),
])
def test_release_rules_of_systemd_sysext(release: dict, host: dict, arch: str | None, why: str | None) -> None:
    got = release_mismatch(release, host, arch)
    assert (got is None) if why is None else (got is not None and why in got), got


def test_a_release_this_os_would_refuse_is_a_plan_problem(tmp_path: Path) -> None:
    make_os(tmp_path / "rootfs")  # os-release: ID=test VERSION_ID=1
    spec = load_spec(write_spec(tmp_path, "  - name: app\n    paths: [usr/share/doc]\n"
                                          "    release: {ID: test, VERSION_ID: '2'}\n",
                                extra_uki="  init: /usr/bin/immucore"))
    text = "\n".join(make_plan(spec, scan(spec.os.root)).problems)
    assert "extension app would never merge: VERSION_ID=2, but the OS tree's os-release says VERSION_ID=1" in text
