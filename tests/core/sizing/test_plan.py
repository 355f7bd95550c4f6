"""A spec applied to a tree: per-extension figures and the exact initrd before and after."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from plan_helpers import make_os, write_spec

from sysextant.core.sizing.plan import make_plan
from sysextant.core.spec.load import load_spec
from sysextant.core.tree.index import TRAILER_BYTES, cpio_entry_bytes, scan

CPIO = shutil.which("cpio")


EXTS = """\
  - name: firmware
    paths: [usr/lib/firmware]
  - name: gpu
    paths:
      - usr/lib/modules/*/kernel/gpu
      - usr/lib/modules/6.1/kernel/gpu/drm.ko   # nested in the line above: counted once
"""


def initrd_names(root: Path, index, plan_set) -> list[bytes]:
    return sorted(index.path(i) for i in plan_set.indices())


def test_figures(tmp_path: Path) -> None:
    make_os(tmp_path / "rootfs")
    spec = load_spec(write_spec(tmp_path, EXTS, extra_uki="  init: /usr/bin/immucore"))
    index = scan(spec.os.root)
    plan = make_plan(spec, index)
    assert plan.problems == []
    fw, gpu = plan.extensions
    fw_root = tmp_path / "rootfs/usr/lib/firmware"
    on_disk = sum(os.lstat(p).st_size for p in [fw_root, *fw_root.rglob("*")])
    assert fw.entries == 4 and fw.bytes == on_disk  # b.bin counted though its other name came first
    assert gpu.entries == 2  # the folder and drm.ko, though drm.ko is named twice
    assert gpu.bytes == index.tot_size[index.lookup("usr/lib/modules/6.1/kernel/gpu")]
    names = initrd_names(tmp_path / "rootfs", index, plan.initrd_base)
    # what the mount-point folders hold stays out; the folders stay, empty (systemd-sysext 252 needs /tmp)
    assert not any(n.split(b"/")[0] in (b"proc", b"sys", b"dev", b"run", b"tmp", b"boot") and b"/" in n for n in names)
    assert {b"tmp", b"run"} <= {n for n in names if index.is_dir(index.lookup(n))}
    assert b"usr/bin/immucore" in names and b"var/cache/x" in names
    after = initrd_names(tmp_path / "rootfs", index, plan.initrd_after)
    assert not any(n.startswith(b"usr/lib/firmware") or n.startswith(b"usr/lib/modules/6.1/kernel/gpu") for n in after)
    assert plan.initrd_cpio_before - plan.initrd_cpio_after == fw.initrd_bytes + gpu.initrd_bytes


@pytest.mark.skipif(CPIO is None, reason="GNU cpio not installed (apt-get install cpio)")
def test_initrd_sizes_match_gnu_cpio(tmp_path: Path) -> None:
    root = tmp_path / "rootfs"
    make_os(root)
    spec = load_spec(write_spec(tmp_path, EXTS, os_exclude="[var/cache]"))
    index = scan(spec.os.root)
    plan = make_plan(spec, index)
    for selection, figure in ((plan.initrd_base, plan.initrd_cpio_before), (plan.initrd_after, plan.initrd_cpio_after)):
        names = initrd_names(root, index, selection)
        out = subprocess.run([CPIO, "-o", "-H", "newc", "--null", "--quiet"], input=b"\0".join(names) + b"\0",
                             cwd=root, capture_output=True, check=True).stdout
        assert len(out) == (figure + 511) // 512 * 512
    # the firmware hardlink b.bin stays in the initrd under its other name, with its data
    assert b"usr/share/doc/pkg/b-hardlink" in initrd_names(root, index, plan.initrd_after)


def test_init_link_adds_its_entry(tmp_path: Path) -> None:
    make_os(tmp_path / "rootfs")
    plain = make_plan(load_spec(write_spec(tmp_path, EXTS)), scan(tmp_path / "rootfs"))
    with_init = load_spec(write_spec(tmp_path, EXTS, extra_uki="  init: /usr/bin/immucore"))
    plan = make_plan(with_init, scan(tmp_path / "rootfs"))
    assert plan.initrd_cpio_before - plain.initrd_cpio_before == cpio_entry_bytes(4, len("/usr/bin/immucore"))
    assert plan.initrd_cpio_before > TRAILER_BYTES


def test_problems_name_the_line(tmp_path: Path) -> None:
    make_os(tmp_path / "rootfs")
    spec_path = write_spec(tmp_path, """\
  - name: firmware
    paths: [usr/lib/firmware, usr/lib/nothing-here]
  - name: again
    paths: [usr/lib/firmware/amd]
  - name: boot
    paths: [usr/bin/immucore]
""", extra_uki="  init: /usr/bin/immucore")
    plan = make_plan(load_spec(spec_path), scan(tmp_path / "rootfs"))
    text = "\n".join(plan.problems)
    assert f"{spec_path}:10:31:" in text and "usr/lib/nothing-here is not in the OS tree" in text
    assert "firmware and again both claim usr/lib/firmware/amd" in text
    assert "/usr/bin/immucore is needed to boot" in text


def test_not_an_os_tree(tmp_path: Path) -> None:
    (tmp_path / "rootfs/usr/lib/firmware").mkdir(parents=True)
    plan = make_plan(load_spec(write_spec(tmp_path, EXTS.split("  - name: gpu")[0])), scan(tmp_path / "rootfs"))
    assert any("does not look like an OS tree" in p for p in plan.problems)
    assert any("kernel" in p and "does not exist" in p for p in plan.problems)


def test_an_initrd_without_init_is_a_problem(tmp_path: Path) -> None:
    """No uki.init and no /init in the tree: the kernel would panic (VFS: Unable to mount root fs)."""
    make_os(tmp_path / "rootfs")
    plan = make_plan(load_spec(write_spec(tmp_path, EXTS)), scan(tmp_path / "rootfs"))
    assert any("would have no /init" in p and "Unable to mount root fs" in p for p in plan.problems)
    (tmp_path / "rootfs/init").symlink_to("usr/bin/immucore")  # the tree's own /init serves
    plan = make_plan(load_spec(write_spec(tmp_path, EXTS)), scan(tmp_path / "rootfs"))
    assert plan.problems == []


def test_init_resolves_through_the_trees_own_links(tmp_path: Path) -> None:
    """A usr-merged tree: /lib -> usr/lib, /sbin/init -> /lib/systemd/systemd. The init is found
    (no false 'would dangle'), and moving the program or a link on the way is refused."""
    root = tmp_path / "rootfs"
    make_os(root)
    (root / "usr/lib/systemd").mkdir(parents=True)
    (root / "usr/lib/systemd/systemd").write_bytes(b"\x7fELF" + b"s" * 100)
    (root / "usr/lib/systemd/systemd").chmod(0o755)
    (root / "lib").symlink_to("usr/lib")
    (root / "usr/sbin").mkdir()
    (root / "usr/sbin/init").symlink_to("/lib/systemd/systemd")
    (root / "sbin").symlink_to("usr/sbin")
    spec_path = write_spec(tmp_path, EXTS, extra_uki="  init: /sbin/init")
    plan = make_plan(load_spec(spec_path), scan(root))
    assert plan.problems == [] and not any("dangle" in w for w in plan.warnings)
    for moved in ("usr/lib/systemd", "usr/sbin"):
        spec_path = write_spec(tmp_path, EXTS + f"  - name: boot\n    paths: [{moved}]\n", extra_uki="  init: /sbin/init")
        text = "\n".join(make_plan(load_spec(spec_path), scan(root)).problems)
        assert "/sbin/init is needed to boot (sbin -> usr/sbin/init -> lib -> usr/lib/systemd/systemd)" in text
        assert f"extension boot moves {moved}" in text


@pytest.mark.parametrize("what, expected", [("missing", "leads nowhere in the OS tree"),
                                            ("not-executable", "which is not executable"),
                                            ("folder", "which is not a regular file"),
                                            ("loop", "leads nowhere in the OS tree")])
def test_an_init_that_cannot_run_is_a_problem(tmp_path: Path, what: str, expected: str) -> None:
    root = tmp_path / "rootfs"
    make_os(root)
    target = {"missing": "/usr/bin/nothing", "not-executable": "/usr/share/doc/pkg/README",
              "folder": "/usr/bin", "loop": "/usr/bin/a"}[what]
    if what == "loop":
        (root / "usr/bin/a").symlink_to("b")
        (root / "usr/bin/b").symlink_to("a")
    plan = make_plan(load_spec(write_spec(tmp_path, EXTS, extra_uki=f"  init: {target}")), scan(root))
    assert any(expected in p and "uki.init" in p for p in plan.problems), plan.problems

