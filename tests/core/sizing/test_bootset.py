"""The boot set: what must stay in the UKI, with its reasons, and the refusals built on it.

Checked on real files where a format is involved: the machine's own systemd, mount and libc (a
real Debian 12) copied into a usr-merged tree, whose library closure must equal ``ldd``'s; a
real Debian kernel module's ``.modinfo`` for the firmware rule (``modinfo -F firmware``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from kernel import real_modules

from sysextant.core.demo import create_demo
from sysextant.core.sizing.bootset import boot_set
from sysextant.core.sizing.plan import make_plan
from sysextant.core.spec.load import load_spec
from sysextant.core.tree.index import scan
from sysextant.core.workbench.session import Session

CLI = [sys.executable, "-m", "sysextant.tui.cli"]
REAL_PROGRAMS = ("/usr/lib/systemd/systemd", "/usr/bin/mount", "/usr/bin/systemd-sysext")


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    return create_demo(tmp_path_factory.mktemp("bootset") / "demo", scale=0.02)


def _ldd(program: str, *, as_named: bool = False) -> set[str]:
    """The libraries (and the loader) ``ldd`` lists for ``program``: real paths, or as ldd names
    them (the soname links)."""
    out = subprocess.run(["ldd", program], capture_output=True, text=True, check=True).stdout
    found = set()
    for line in out.splitlines():
        m = re.search(r"(/\S+) \(0x", line)
        if m:
            found.add(m.group(1) if as_named else os.path.realpath(m.group(1)))
    return found


@pytest.fixture(scope="module")
def real_tree(tmp_path_factory) -> Path:
    """A usr-merged tree holding this machine's systemd, mount and systemd-sysext and every library
    ``ldd`` says they load (copied, so the tree is foreign: nothing may resolve through /)."""
    if shutil.which("ldd") is None or not all(os.path.exists(p) for p in REAL_PROGRAMS):
        pytest.skip("needs ldd and a systemd machine (Debian 12 CI has both)")
    root = tmp_path_factory.mktemp("realtree") / "rootfs"
    for d in ("usr/bin", "usr/sbin", "usr/lib", "usr/lib64", "etc", "boot"):
        (root / d).mkdir(parents=True, exist_ok=True)
    for link, target in (("bin", "usr/bin"), ("sbin", "usr/sbin"), ("lib", "usr/lib"), ("lib64", "usr/lib64")):
        os.symlink(target, root / link)
    wanted = set(REAL_PROGRAMS)
    for p in REAL_PROGRAMS:
        wanted |= _ldd(p)
    for p in sorted(wanted):
        dest = root / os.path.realpath(p).lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(os.path.realpath(p), dest)
    # the soname links and the loader path, as Debian has them (lib64/ld-linux-x86-64.so.2 is a link)
    for p in REAL_PROGRAMS:
        for named in _ldd(p, as_named=True):
            link = root / os.path.realpath(os.path.dirname(named)).lstrip("/") / os.path.basename(named)
            real = os.path.realpath(named)
            if not link.exists() and os.path.dirname(os.path.realpath(link)) != "/lib64" and "lib64" not in named:
                os.symlink(os.path.basename(real), link)
    os.symlink("../lib/x86_64-linux-gnu/ld-linux-x86-64.so.2", root / "usr/lib64/ld-linux-x86-64.so.2")
    shutil.copy2("/etc/ld.so.conf", root / "etc/ld.so.conf")
    if os.path.isdir("/etc/ld.so.conf.d"):
        shutil.copytree("/etc/ld.so.conf.d", root / "etc/ld.so.conf.d")
    (root / "usr/lib/os-release").write_text("ID=debian\nVERSION_ID=12\n")
    (root / "etc/os-release").symlink_to("../usr/lib/os-release")
    (root / "boot/vmlinuz").write_bytes(b"MZ stand-in")
    (root / "usr/share/doc/x").mkdir(parents=True)
    (root / "usr/share/doc/x/README").write_text("docs\n")
    return root


def _spec(root: Path, folder: Path, extensions: str, extra: str = "") -> Path:
    spec = folder / "sysextant.yaml"
    spec.write_text(f"version: 1\nos: {{root: {root}, kernel: boot/vmlinuz}}\n"
                    "uki: {init: /usr/lib/systemd/systemd, stub: /usr/lib/systemd/boot/efi/linuxx64.efi.stub}\n"
                    f"{extra}extensions:\n{extensions}output: {folder / 'out'}\n")
    return spec


def test_library_closure_of_the_init_equals_ldd(real_tree: Path, tmp_path: Path) -> None:
    spec = load_spec(_spec(real_tree, tmp_path, "  - {name: docs, paths: [usr/share/doc]}\n"))
    index = scan(spec.os.root)
    boot = boot_set(spec, index)
    assert boot.profile == "systemd" and "detected" in boot.profile_source
    kept_files = {"/" + os.fsdecode(index.path(k)) for k in boot.entries.indices()
                  if not os.path.islink(os.path.join(index.root, index.path(k)))}
    for program in REAL_PROGRAMS:
        libs = {"/" + os.path.relpath(os.path.realpath(real_tree / os.path.realpath(p).lstrip("/")), real_tree)
                for p in _ldd(program)}
        assert libs <= kept_files, (program, libs - kept_files)
    k = index.lookup("usr/lib/x86_64-linux-gnu/libc.so.6")
    chain = boot.chain(k)
    assert chain.startswith("usr/lib/x86_64-linux-gnu/libc.so.6 <- DT_NEEDED libc.so.6 of ")
    assert chain.endswith("the init program /usr/lib/systemd/systemd (uki.init)"), chain
    assert index.lookup("lib64") in boot.entries  # the loader's path goes through the tree's own link
    assert boot.seconds < 1.0


def test_plan_refuses_what_a_new_user_would_move_first(real_tree: Path, tmp_path: Path) -> None:
    """The issue's own example: systemd, libc, mount and systemd-sysext marked into an extension."""
    spec = _spec(real_tree, tmp_path, "  - name: base\n    paths: [usr/lib/systemd, usr/lib/x86_64-linux-gnu/libc.so.6, "
                                      "usr/bin/mount, usr/bin/systemd-sysext]\n")
    proc = subprocess.run([*CLI, "plan", str(spec), "--no-estimate"], capture_output=True, text=True)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "/usr/lib/systemd/systemd is needed to boot" in proc.stdout  # the init itself
    assert re.search(r"extension base moves \d+ entries the system needs to boot out of the UKI, e\.g\. "
                     r"\S+ <- ", proc.stdout), proc.stdout
    assert "exclude: [" in proc.stdout and "boot.allow" in proc.stdout
    data = json.loads(subprocess.run([*CLI, "plan", str(spec), "--no-estimate", "--json"], capture_output=True,
                                     text=True).stdout)
    assert data["boot"]["profile"] == "systemd" and data["boot"]["entries"] > 10
    assert any("libc.so.6" in p or "usr/bin/mount" in p for p in data["problems"])
    assert data["uki"]["verdict"] is None
    # build refuses before any work: no output folder appears
    proc = subprocess.run([*CLI, "build", str(spec)], capture_output=True, text=True)
    assert proc.returncode != 0 and "problem" in proc.stderr and "needs to boot" in proc.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [".sysextant.lock"]  # no artefact


def test_boot_allow_waives_and_boot_keep_adds(real_tree: Path, tmp_path: Path) -> None:
    extra = ("boot:\n  keep: [usr/share/doc/x]\n  allow:\n    - {path: usr/bin/mount, reason: the initrd never mounts}\n")
    spec = load_spec(_spec(real_tree, tmp_path, "  - {name: tools, paths: [usr/bin/mount]}\n", extra))
    plan = make_plan(spec, scan(spec.os.root))
    assert not plan.problems, plan.problems
    boot = plan.boot
    assert [(os.fsdecode(boot.index.path(k)), why) for k, why in boot.waived] == [("usr/bin/mount", "the initrd never mounts")]
    doc = boot.index.lookup("usr/share/doc/x/README")
    assert doc in boot.entries and "boot.keep usr/share/doc/x" in boot.chain(doc)
    spec = load_spec(_spec(real_tree, tmp_path, "  - {name: docs, paths: [usr/share/doc]}\n", extra))
    plan = make_plan(spec, scan(spec.os.root))
    assert any("extension docs moves 2 entries" in p and "boot.keep" in p for p in plan.problems), plan.problems


def test_boot_set_command_lists_reasons(real_tree: Path, tmp_path: Path) -> None:
    spec = _spec(real_tree, tmp_path, "  - {name: docs, paths: [usr/share/doc]}\n")
    proc = subprocess.run([*CLI, "boot-set", str(spec)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "profile systemd" in proc.stdout and "libraries and interpreters they load" in proc.stdout
    assert "usr/lib/x86_64-linux-gnu/libc.so.6 <- DT_NEEDED libc.so.6 of" in proc.stdout
    data = json.loads(subprocess.run([*CLI, "boot-set", str(spec), "--json"], capture_output=True, text=True).stdout)
    paths = {p["path"]: p for p in data["paths"]}
    assert paths["usr/lib/systemd/systemd"]["kind"] == "init"
    assert paths["usr/lib/x86_64-linux-gnu/libc.so.6"]["kind"] == "library"


def test_signed_extensions_on_plain_systemd_need_trust_in_uki(real_tree: Path, tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.mkdir()
    from sysextant.core.keys import generate_demo_pair

    key_pem, cert_pem = generate_demo_pair()
    (keys / "db.key").write_bytes(key_pem)
    (keys / "db.key").chmod(0o600)
    (keys / "db.pem").write_bytes(cert_pem)
    for trust, warned in (("false", True), ("true", False)):
        spec = load_spec(_spec(real_tree, tmp_path, "  - {name: docs, paths: [usr/share/doc]}\n",
                               f"signing: {{key: {keys / 'db.key'}, cert: {keys / 'db.pem'}, trust_in_uki: {trust}}}\n"))
        plan = make_plan(spec, scan(spec.os.root))
        assert not plan.problems
        assert any("signing.trust_in_uki: true" in w for w in plan.warnings) == warned, plan.warnings


def test_firmware_named_by_a_kept_module_is_a_warning(tmp_path: Path) -> None:
    """A real module (its .modinfo names firmware, as `modinfo -F firmware` reads it) stands at the
    path of a boot module; moving that firmware out warns, naming both."""
    base, release = real_modules()
    mods = base / "lib/modules" / release
    donor = next(line.split(":")[0] for line in (mods / "modules.dep").read_text().splitlines()
                 if line.startswith("kernel/drivers/comedi/drivers/daqboard2000.ko"))
    fw_names = subprocess.run(["modinfo", "-F", "firmware", str(mods / donor)], capture_output=True, text=True,
                              check=True).stdout.split()
    root = tmp_path / "rootfs"
    folder = root / "usr/lib/modules" / release
    (folder / "kernel/drivers/nvme/host").mkdir(parents=True)
    shutil.copy(mods / donor, folder / "kernel/drivers/nvme/host/nvme.ko")
    (folder / "modules.dep").write_text("kernel/drivers/nvme/host/nvme.ko:\n")
    for name in fw_names:
        (root / "usr/lib/firmware" / name).parent.mkdir(parents=True, exist_ok=True)
        (root / "usr/lib/firmware" / name).write_bytes(b"fw")
    (root / "usr/lib/os-release").write_text("ID=debian\n")
    (root / "boot").mkdir()
    (root / "boot/vmlinuz").write_bytes(b"MZ")
    (root / "init").write_bytes(b"#!/bin/sh\n")
    (root / "init").chmod(0o755)
    spec = load_spec(_spec(root, tmp_path, "  - {name: fw, paths: [usr/lib/firmware]}\n", "boot: {profile: systemd}\n"))
    spec.uki.init = None
    plan = make_plan(spec, scan(root))
    soft = [os.fsdecode(plan.index.path(k)) for k in plan.boot.soft.indices()]
    assert soft == [f"usr/lib/firmware/{n}" for n in fw_names]
    assert any("moves 1 firmware file(s) that kernel modules kept in the UKI load" in w and "kernel module nvme" in w
               for w in plan.warnings), plan.warnings
    assert not any("firmware" in p for p in plan.problems)


def test_workbench_marks_all_but_what_boot_needs(demo: Path) -> None:
    s = Session.open(demo)
    s.attach(scan(s.spec.os.root))
    i = s.index.lookup("usr/lib/x86_64-linux-gnu")
    out = s.mark(i, "drivers")
    assert not out.ok and "needed to boot, e.g." in out.message and "<- DT_NEEDED" in out.message
    libc = s.index.lookup("usr/lib/x86_64-linux-gnu/libc.so.6")
    assert s.boot_reason(libc).startswith("usr/lib/x86_64-linux-gnu/libc.so.6 <- DT_NEEDED libc.so.6 of ")
    needed = s.boot_count(i)
    assert needed >= 9  # ld.so, libc, libzstd, libmount, libblkid (+ soname links), libsystemd-shared
    assert s.boot_reason(s.index.lookup("usr/share/doc")) is None and s.boot_count(s.index.lookup("usr/share/doc")) == 0
    original = s.text
    out = s.mark_all_but_boot(i, "drivers")
    assert out.ok, out.message
    assert f"({needed:,} entries stay in the UKI)" in out.message
    ext = s.spec.extension("drivers")
    assert "usr/lib/x86_64-linux-gnu" in ext.paths and "usr/lib/x86_64-linux-gnu/libc.so.6" in ext.exclude
    plan = make_plan(load_spec(s.path), scan(s.spec.os.root))  # what `sysextant plan` reads from the file
    assert not plan.problems, plan.problems
    assert libc not in plan.extensions[1].selected and libc in plan.initrd_after
    assert s.undo().ok and "usr/lib/x86_64-linux-gnu" not in s.spec.extension("drivers").paths
    assert s.spec.extension("drivers").exclude == []
    assert s.text == original  # the exclude key it added is gone again, not left as exclude: []


def test_demo_spec_is_boot_safe_and_explains_a_refused_mark(demo: Path) -> None:
    plan = make_plan(load_spec(demo), scan(load_spec(demo).os.root))
    assert not plan.problems and plan.boot.profile == "kairos"
    s = Session.open(demo)
    s.attach(scan(s.spec.os.root))
    out = s.mark(s.index.lookup("usr/lib/x86_64-linux-gnu/libc.so.6"), "drivers")
    assert not out.ok and out.message.startswith("usr/lib/x86_64-linux-gnu/libc.so.6 is needed to boot: DT_NEEDED")


def test_boot_profile_from_the_spec_decides_programs_and_modules(tmp_path: Path) -> None:
    """boot.profile overrides the detection: none keeps only the init's closure and the modules the
    extensions' filesystems need; kairos adds immucore's driver list on any tree."""
    base, release = real_modules()
    root = tmp_path / "rootfs"
    shutil.copytree(base / "lib/modules", root / "usr/lib/modules", symlinks=True)
    (root / "usr/lib/os-release").write_text("ID=debian\n")
    (root / "usr/lib/systemd").mkdir(parents=True)
    (root / "usr/lib/systemd/systemd").write_bytes(b"#!/bin/sh\n")
    (root / "usr/lib/systemd/systemd").chmod(0o755)
    (root / "boot").mkdir()
    (root / "boot/vmlinuz").write_bytes(b"MZ")
    kinds = {}
    for profile in ("none", "systemd", "kairos"):
        spec = load_spec(_spec(root, tmp_path, "  - {name: x, paths: [usr/share]}\n", f"boot: {{profile: {profile}}}\n"))
        boot = boot_set(spec, scan(root))
        assert boot.profile == profile and f"boot.profile in {spec.path}" in boot.profile_source
        mods = {os.path.basename(os.fsdecode(boot.index.path(k))) for k, r in boot.reasons.items() if r.kind == "module"}
        kinds[profile] = mods
    # the extensions' filesystem and what it depends on (erofs' softdep crc32c) only
    assert "erofs.ko" in kinds["none"] and not {"dm-verity.ko", "loop.ko", "overlay.ko"} & kinds["none"]
    assert {"dm-verity.ko", "loop.ko", "overlay.ko", "virtio_blk.ko"} <= kinds["systemd"]
    assert "af_packet.ko" in kinds["kairos"] or "squashfs.ko" in kinds["kairos"]
    assert "squashfs.ko" not in kinds["systemd"]


def test_keep_and_allow_that_name_nothing_are_warnings(real_tree: Path, tmp_path: Path) -> None:
    extra = "boot:\n  keep: [usr/bin/nothing-here]\n  allow:\n    - {path: usr/share/doc, reason: stale waiver}\n"
    spec = load_spec(_spec(real_tree, tmp_path, "  - {name: docs, paths: [usr/share/doc]}\n", extra))
    plan = make_plan(spec, scan(spec.os.root))
    assert not plan.problems
    assert any(":5:10:" in w and "boot.keep usr/bin/nothing-here matches nothing" in w for w in plan.warnings), plan.warnings
    assert any(":7:7:" in w and "boot.allow usr/share/doc waives nothing" in w for w in plan.warnings), plan.warnings
