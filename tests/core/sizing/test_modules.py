"""Kernel modules against a real Debian kernel's modules and kmod's own tools.

The closure sysextant keeps for a module equals ``modprobe --show-depends`` over the same tree;
moving usr/lib/modules whole (a natural first move) is refused, naming the boot modules and the
index files; the exclude the refusal suggests makes the design boot-safe while the rest (btrfs,
sound, ...) moves, and stays loadable: the modules.dep kept in the UKI lists it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from kernel import real_modules

from sysextant.core.sizing.modules import boot_modules, module_name, read_module_trees
from sysextant.core.sizing.plan import make_plan
from sysextant.core.spec.load import load_spec
from sysextant.core.tree.index import scan

MODPROBE = shutil.which("modprobe") or "/usr/sbin/modprobe"
needs_kmod = pytest.mark.skipif(not os.path.exists(MODPROBE), reason="modprobe missing (Debian package kmod)")


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A small OS tree (plain systemd) whose usr/lib/modules is a real kernel's, depmod included."""
    base, release = real_modules()
    root = tmp_path_factory.mktemp("modtree") / "rootfs"
    (root / "etc").mkdir(parents=True)
    (root / "etc/os-release").write_text("ID=debian\nVERSION_ID=12\n")
    (root / "boot").mkdir()
    (root / "boot/vmlinuz").write_bytes(b"MZ" + bytes(4096))
    (root / "usr/lib/systemd").mkdir(parents=True)
    (root / "usr/lib/systemd/systemd").write_bytes(b"\x7fELF" + bytes(64))
    (root / "usr/lib/systemd/systemd").chmod(0o755)

    def link_or_copy(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    shutil.copytree(base / "lib/modules", root / "usr/lib/modules", copy_function=link_or_copy)
    return root, release


def write_spec(root: Path, paths: str, exclude: str = "[]") -> Path:
    spec = root.parent / "spec.yaml"
    spec.write_text(f"""version: 1
os: {{root: {root.name}}}
uki: {{init: /usr/lib/systemd/systemd, compression: none}}
extensions:
  - name: modules
    paths: {paths}
    exclude: {exclude}
""")
    return spec


def show_depends(root: Path, release: str, name: str) -> set[str]:
    """The module files modprobe would load for ``name``, relative to the release folder."""
    proc = subprocess.run([MODPROBE, "--show-depends", "-d", str(root), "-S", release, name],
                          capture_output=True, text=True)
    folder = f"{root}/usr/lib/modules/{release}/"
    alt = f"{root}/lib/modules/{release}/"
    out = set()
    for line in proc.stdout.splitlines():
        if line.startswith("insmod "):
            path = line.split()[1]
            out.add(path[len(folder):] if path.startswith(folder) else path[len(alt):])
    return out


@needs_kmod
@pytest.mark.parametrize("name", ["dm_verity", "dm-verity", "erofs", "squashfs", "overlay", "loop", "virtio_blk",
                                  "nvme", "ahci", "vfat", "btrfs", "xfs", "ext4", "fs-erofs", "nfsd", "cifs"])
def test_closure_equals_modprobe_show_depends(tree: tuple[Path, str], name: str) -> None:
    root, release = tree
    (mt,) = read_module_trees(scan(root))
    ours = set(mt.closure([(name, "test")]))
    # modprobe reads usr/lib/modules through -d only when lib/modules resolves there
    if not (root / "lib").exists():
        (root / "lib").symlink_to("usr/lib")
    assert ours == show_depends(root, release, name), name


@needs_kmod
def test_moving_the_modules_folder_whole_is_refused(tree: tuple[Path, str]) -> None:
    root, release = tree
    index = scan(root)
    spec = load_spec(write_spec(root, f"[usr/lib/modules/{release}]"))
    text = "\n".join(make_plan(spec, index).problems)
    assert "kernel module(s) the system needs before it can merge extensions" in text
    assert "modules.dep" in text or "index file" in text
    needed = {module_name(p) for p in boot_modules(spec, index, read_module_trees(index)[0])}
    # (this cloud kernel builds nvme in and has no ahci; what is a module must stay)
    assert {"dm_verity", "dm_mod", "loop", "erofs", "virtio_blk", "vfat", "overlay", "efivarfs"} <= needed


@needs_kmod
def test_the_suggested_exclude_is_boot_safe_and_the_rest_stays_loadable(tree: tuple[Path, str]) -> None:
    root, release = tree
    index = scan(root)
    spec = load_spec(write_spec(root, f"[usr/lib/modules/{release}/kernel]"))
    problems = make_plan(spec, index).problems
    (first,) = [p for p in problems if "needs before it can merge" in p]
    assert re.search(r"exclude: \[usr/lib/modules/[^]]+\]", first)
    folders = sorted({f"{os.path.dirname(p)}" for p in boot_modules(spec, index, read_module_trees(index)[0])})
    spec = load_spec(write_spec(root, f"[usr/lib/modules/{release}/kernel]",
                                "[" + ", ".join(f"usr/lib/modules/{release}/{f}" for f in folders) + "]"))
    plan = make_plan(spec, index)
    assert plan.problems == []
    btrfs = index.lookup(f"usr/lib/modules/{release}/" + read_module_trees(index)[0].resolve("btrfs")[0])
    assert btrfs in plan.extensions[0].selected  # moved, and modules.dep (kept in the UKI) lists it


def test_a_module_modules_dep_does_not_list_is_refused(tree: tuple[Path, str], tmp_path: Path) -> None:
    root, release = tree
    extra = root / f"usr/lib/modules/{release}/extra"
    extra.mkdir(exist_ok=True)
    (extra / "outoftree.ko").write_bytes(b"\x7fELF")
    try:
        spec = load_spec(write_spec(root, f"[usr/lib/modules/{release}/extra]"))
        text = "\n".join(make_plan(spec, scan(root)).problems)
        assert "does not list" in text and "outoftree.ko" in text
    finally:
        shutil.rmtree(extra)


def test_the_workbench_refuses_marking_a_boot_module(tree: tuple[Path, str]) -> None:
    from sysextant.core.workbench.session import Session

    root, release = tree
    s = Session.open(write_spec(root, f"[usr/lib/modules/{release}/kernel/fs/btrfs]"))
    s.scan()
    base = f"usr/lib/modules/{release}"
    out = s.toggle(s.index.lookup(f"{base}/kernel/drivers/md"), "modules")
    assert not out.ok and "kernel module dm_" in out.message and "needed to boot" in out.message
    out = s.toggle(s.index.lookup(f"{base}/modules.dep"), "modules")
    assert not out.ok and "modules index file" in out.message
    assert s.toggle(s.index.lookup(f"{base}/kernel/fs/xfs"), "modules").ok
