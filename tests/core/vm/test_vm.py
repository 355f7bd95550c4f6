"""`sysextant boot`: the console stage parser on recorded consoles, the firmware variable store, the
ESP, the QEMU command line, missing tools, and real Secure Boot boots of sysextant-built UKIs under
QEMU + OVMF (marked slow; CI runs them: TCG, ~30-150 s each): the check build merging both
extensions, three UKIs the firmware refuses, an extension signed by another key (nothing merges)
and one with a flipped data byte (merges, the read fails), each its own boot. The workbench's
boot check (v) and a Kairos-shaped tree (/init is immucore) run on recorded consoles with
stand-ins for QEMU and swtpm, no VM.

The real boots use a debootstrapped Debian 12 tree cached per machine (tests/helpers/vm_tree.py) with the
Debian kernel tests/helpers/kernel.py fetches; they skip, saying why, only where that cannot be had (not
root, no network) or a tool is missing outside CI.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from paths import TESTS

from sysextant.core.errors import MissingToolError
from sysextant.core.vm import console, disks, firmware, qemu
from sysextant.core.vm.console import FAILED, PASSED, Watcher

DATA = TESTS / "data" / "vm"
SYSEXTANT = [sys.executable, "-m", "sysextant.tui.cli"]


def feed_file(watcher: Watcher, path: Path) -> Watcher:
    for k, raw in enumerate(path.read_bytes().decode("utf-8", "replace").split("\n")):
        watcher.feed(raw, float(k))
    return watcher


# -- the console parser on recorded consoles -------------------------------------------------------
def test_recorded_check_build_console_passes_every_stage() -> None:
    checks = [("sysext-service", "merge at boot"), ("merged-docs", "docs"), ("merged-mods", "mods"),
              ("verity", "verity"), ("files-docs", "files"), ("files-mods", "files"), ("module-romfs", "romfs"),
              ("pcr11", "pcr")]
    w = Watcher(checks=checks, judges={"pcr11": lambda detail: (detail.lower().startswith("5129053b"), "judged")})
    feed_file(w, DATA / "console-check-build.txt")
    w.finish("console ended", 999.0)
    by = {s.key: s for s in w.stages}
    assert w.ok, [(s.key, s.status, s.note) for s in w.stages]
    assert by["firmware"].evidence.startswith("BdsDxe: starting Boot0001")
    assert by["stub"].note == "UEFI Secure Boot is enabled"
    assert "Linux version 6.1" in by["kernel"].evidence
    assert by["init"].evidence.endswith("Run /init as init process")
    assert "Multi-User System" in by["target"].evidence and "\x1b" not in by["target"].evidence
    assert by["check:pcr11"].note == "judged"
    times = [s.seconds for s in w.stages]
    assert times == sorted(times)  # each stage after the one before


def test_recorded_refusal_fails_the_firmware_stage_with_access_denied() -> None:
    w = feed_file(Watcher(), DATA / "console-refused.txt")
    assert w.finished and "Access Denied" in w.fatal
    w.finish("stopped", 30.0)
    fw = w.stage("firmware")
    assert fw.status == FAILED and "Access Denied" in fw.evidence and "not signed" in fw.note
    assert all(s.status == FAILED and s.note.startswith("not reached") for s in w.stages[1:])
    assert not w.ok


def test_stages_a_later_line_proves_are_implied_and_secure_boot_is_required() -> None:
    w = Watcher()
    w.feed("[    0.000000] Linux version 6.1.0 (x)", 5.0)
    assert [s.status for s in w.stages[:3]] == [PASSED, PASSED, PASSED]
    assert "implied" in w.stage("firmware").note
    w.feed("\x1b[0;32m  OK  \x1b[0m] Reached target \x1b[0;1;39mGraphical Interface\x1b[0m.", 9.0)
    w.finish("end", 10.0)
    assert w.stage("init").status == PASSED  # implied by the target
    assert w.stage("stub").status == FAILED  # the kernel never said Secure Boot was on
    assert not w.ok


def test_panic_fails_the_first_pending_stage_and_unknown_checks_count() -> None:
    w = Watcher(checks=[("a", "check a")], secure_boot=False)
    w.feed("Linux version 6.1.0", 1.0)
    w.feed("sysextant-check: surprise: FAIL: not announced", 2.0)
    w.feed("Kernel panic - not syncing: VFS: Unable to mount root fs on unknown-block(0,0)", 3.0)
    assert w.finished
    assert w.stage("init").status == FAILED and "Kernel panic" in w.stage("init").evidence
    assert w.stage("check:surprise").status == FAILED
    w.feed("sysextant-log: evidence line", 4.0)
    assert w.guest_log == ["evidence line"]


def test_clean_strips_escapes_and_carriage_returns() -> None:
    assert console.clean("\x1b[2J\x1b[01;01HBdsDxe: loading\r") == "BdsDxe: loading"
    assert console.clean("progress 10%\rprogress 100%\r") == "progress 100%"


# -- firmware, disks, QEMU ----------------------------------------------------------------------------
def need_ovmf() -> firmware.Firmware:
    try:
        return firmware.find_firmware()
    except MissingToolError as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def keypair(tmp_path_factory) -> tuple[Path, Path, Path, Path]:
    from sysextant.core.keys import generate_demo_pair

    d = tmp_path_factory.mktemp("keys")
    out = []
    for name in ("db", "other"):
        key, cert = generate_demo_pair(f"sysextant vm test {name}")
        (d / f"{name}.key").write_bytes(key)
        (d / f"{name}.key").chmod(0o600)
        (d / f"{name}.pem").write_bytes(cert)
        out += [d / f"{name}.key", d / f"{name}.pem"]
    return tuple(out)  # type: ignore[return-value]


def test_vars_store_enrols_the_cert_as_pk_kek_db_with_secure_boot_on(tmp_path, keypair) -> None:
    fw = need_ovmf()
    pytest.importorskip("virt.firmware", reason="virt-firmware not installed: pip install 'sysextant[vm]'")
    cert = keypair[1]
    out = tmp_path / "vars.fd"
    firmware.make_vars(fw.vars_template, cert, out)
    assert out.stat().st_size == fw.vars_template.stat().st_size
    got = firmware.read_vars(out)
    fp = firmware.cert_fingerprint(cert)
    assert got.pk == got.kek == got.db == (fp,)
    assert got.secure_boot
    assert firmware.read_vars(fw.vars_template) == firmware.Enrolled((), (), (), False)
    tool = shutil.which("virt-fw-vars") or str(Path(sys.executable).parent / "virt-fw-vars")
    if Path(tool).exists():  # the library's own CLI as a second reader
        text = subprocess.run([tool, "-i", str(out), "--print", "--verbose"], capture_output=True, text=True,
                              check=True).stdout
        assert "SecureBootEnable" in text and "ON" in text
        assert text.count("sysextant vm test db") >= 3, text  # the cert's CN in PK, KEK and db


def test_esp_holds_the_uki_as_the_removable_media_boot_file(tmp_path) -> None:
    for tool, pkg in (("mkfs.vfat", "dosfstools"), ("mdir", "mtools"), ("fsck.vfat", "dosfstools")):
        if not (shutil.which(tool) or Path("/usr/sbin", tool).exists()):
            pytest.skip(f"{tool} not installed (Debian package {pkg})")
    uki = tmp_path / "uki.efi"
    uki.write_bytes(os.urandom(3 << 20) + b"end")
    esp = tmp_path / "esp.img"
    size = disks.make_esp(uki, esp)
    assert esp.stat().st_size == size >= 64 << 20
    env = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}
    listing = subprocess.run(["mdir", "-i", str(esp), "-b", "::/EFI/BOOT"], capture_output=True, text=True,
                             env=env, check=True).stdout
    assert "::/EFI/BOOT/BOOTX64.EFI" in listing
    back = tmp_path / "back.efi"
    subprocess.run(["mcopy", "-i", str(esp), "::/EFI/BOOT/BOOTX64.EFI", str(back)], env=env, check=True)
    assert back.read_bytes() == uki.read_bytes()
    fsck = shutil.which("fsck.vfat") or "/usr/sbin/fsck.vfat"
    subprocess.run([fsck, "-n", str(esp)], capture_output=True, check=True)


def test_extension_disk_is_ext4_with_the_images(tmp_path) -> None:
    if not (shutil.which("mkfs.ext4") or Path("/usr/sbin/mkfs.ext4").exists()):
        pytest.skip("mkfs.ext4 not installed (Debian package e2fsprogs)")
    img = tmp_path / "a.sysext.raw"
    img.write_bytes(b"x" * 5000)
    out = tmp_path / "ext.img"
    disks.make_extension_disk([img], out, tmp_path / "stage")
    debugfs = shutil.which("debugfs") or "/usr/sbin/debugfs"
    text = subprocess.run([debugfs, "-R", "cat /a.sysext.raw", str(out)], capture_output=True, check=True).stdout
    assert text == img.read_bytes()
    label = subprocess.run([shutil.which("e2label") or "/usr/sbin/e2label", str(out)], capture_output=True,
                           text=True, check=True).stdout.strip()
    assert label == disks.EXT_LABEL


def test_qemu_command_is_secure_boot_q35_with_smm_tpm_and_serial(tmp_path) -> None:
    fw = firmware.Firmware(Path("/fw/CODE.secboot.fd"), Path("/fw/VARS.fd"), True)
    m = qemu.Machine("qemu-system-x86_64", fw, tmp_path / "vars.fd", tmp_path / "esp.img",
                     qemu.Accel("tcg", "test"), ext_disk=tmp_path / "ext.img", tpm_socket=tmp_path / "tpm.sock")
    cmd = " ".join(m.command())
    assert "-machine q35,smm=on,accel=tcg" in cmd
    assert "driver=cfi.pflash01,property=secure,value=on" in cmd
    assert "if=pflash,format=raw,unit=0,readonly=on,file=/fw/CODE.secboot.fd" in cmd
    assert f"file={tmp_path / 'vars.fd'}" in cmd and "tpm-tis" in cmd and "readonly=on,file=" + str(tmp_path / "ext.img") in cmd
    assert "-serial chardev:con" in cmd and "-kernel" not in cmd  # never skip the firmware's check
    plain = qemu.Machine("q", firmware.Firmware(Path("c"), Path("v"), False), Path("v"), Path("e"),
                         qemu.Accel("kvm", "t"), interactive=True).command()
    assert "q35,smm=off,accel=kvm" in " ".join(plain) and "mon:stdio" in plain


def test_accelerator_choice_says_why(monkeypatch) -> None:
    monkeypatch.setenv("SYSEXTANT_VM_ACCEL", "tcg")
    assert qemu.choose_accel("qemu-system-x86_64", smm=True) == qemu.Accel("tcg", "forced by SYSEXTANT_VM_ACCEL=tcg")
    monkeypatch.delenv("SYSEXTANT_VM_ACCEL")
    q = shutil.which("qemu-system-x86_64")
    if q is None:
        pytest.skip("qemu-system-x86_64 not installed (Debian package qemu-system-x86)")
    fw = need_ovmf()
    acc = qemu.choose_accel(q, smm=True, firmware=fw)  # on this CI host: KVM refuses SMM -> TCG
    assert acc.name in ("kvm", "tcg") and acc.why
    plain = qemu.choose_accel(q, smm=False, firmware=firmware.find_firmware(secure_boot=False))
    assert plain.name in ("kvm", "tcg") and plain.why  # nested KVM may not run OVMF at all: said so


def test_missing_tools_are_one_error_naming_the_debian_package(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("SYSEXTANT_OVMF_DIR", str(tmp_path))
    with pytest.raises(MissingToolError) as exc:
        firmware.find_firmware()
    assert exc.value.package == "ovmf" and "OVMF_CODE_4M.secboot.fd" in str(exc.value)
    from sysextant.core.formats import mkfs

    monkeypatch.setattr(mkfs.shutil, "which", lambda name: None)
    monkeypatch.setattr(mkfs.os, "access", lambda path, mode: False)
    with pytest.raises(MissingToolError) as exc:
        qemu.find_qemu()
    assert exc.value.package == "qemu-system-x86"
    with pytest.raises(MissingToolError) as exc:
        qemu.find_swtpm()
    assert exc.value.package == "swtpm"


def test_cli_names_the_missing_package_in_one_line(tmp_path, keypair) -> None:
    spec = tmp_path / "spec.yaml"
    (tmp_path / "rootfs/etc").mkdir(parents=True)
    (tmp_path / "rootfs/etc/os-release").write_text("ID=debian\n")
    (tmp_path / "rootfs/boot").mkdir()
    (tmp_path / "rootfs/boot/vmlinuz").write_bytes(b"k")
    spec.write_text(f"version: 1\nos: {{root: rootfs, kernel: boot/vmlinuz}}\n"
                    f"signing: {{key: {keypair[0]}, cert: {keypair[1]}}}\nextensions: []\n")
    env = {**os.environ, "SYSEXTANT_OVMF_DIR": str(tmp_path / "none")}
    proc = subprocess.run([*SYSEXTANT, "boot", str(spec), "--check"], capture_output=True, text=True, env=env,
                          timeout=60)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "install the Debian package 'ovmf'" in lines[0], proc.stderr


@pytest.mark.skipif(shutil.which("swtpm") is None, reason="swtpm not installed (Debian package swtpm)")
def test_swtpm_starts_in_a_folder_whose_socket_path_is_too_long_for_a_unix_socket(tmp_path) -> None:
    """A long TMPDIR (pytest-xdist's own makes one) put the socket's path past the 107 bytes a Unix
    socket holds: swtpm exited 1 without a word. The socket is named relative to its folder, and
    QEMU runs there."""
    state = tmp_path / ("d" * 60) / ("e" * 60) / "tpm"
    state.parent.mkdir(parents=True)
    assert len(bytes(state / "swtpm.sock")) > 107
    proc, sock = qemu.start_swtpm(shutil.which("swtpm"), state)
    try:
        assert sock == state / "swtpm.sock" and stat.S_ISSOCK(sock.stat().st_mode) and proc.poll() is None
        m = qemu.Machine("q", firmware.Firmware(Path("/c"), Path("/v"), True), tmp_path / "v", tmp_path / "e",
                         qemu.Accel("tcg", "t"), tpm_socket=sock)
        assert m.cwd == state and "socket,id=chrtpm,path=swtpm.sock" in m.command()
    finally:
        qemu.stop(proc)


# -- real boots ----------------------------------------------------------------------------------------
def _need_vm_tools() -> None:
    for tool, pkg in (("qemu-system-x86_64", "qemu-system-x86"), ("swtpm", "swtpm"), ("mcopy", "mtools"),
                      ("mkfs.vfat", "dosfstools"), ("mkfs.ext4", "e2fsprogs")):
        if not (shutil.which(tool) or Path("/usr/sbin", tool).exists()):
            pytest.skip(f"{tool} not installed (Debian package {pkg}; .ci/setup installs it)")
    need_ovmf()
    pytest.importorskip("virt.firmware", reason="virt-firmware not installed: pip install 'sysextant[vm]'")


@pytest.fixture(scope="module")
def debian_project(tmp_path_factory, keypair) -> Path:
    """A spec over a real Debian 12 tree: one signed EROFS extension with docs, man pages and
    locales, one signed squashfs extension with a kernel module not needed to boot (romfs), a
    PCR key, trust_in_uki; built once."""
    _need_vm_tools()
    from kernel import real_kernel, real_modules
    from vm_tree import make_tree

    kernel = real_kernel()
    modules, release = real_modules()
    try:
        tree = make_tree(kernel, modules, release)
    except RuntimeError as exc:
        pytest.skip(f"no bootable Debian tree: {exc}")
    d = tmp_path_factory.mktemp("vmproject")
    pcr = d / "pcr.key"
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    pcr.write_bytes(rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()))
    pcr.chmod(0o600)
    spec = d / "spec.yaml"
    spec.write_text(f"""version: 1
os: {{root: {tree}, kernel: boot/vmlinuz}}
uki: {{cmdline: "console=ttyS0", init: /sbin/init, compression: zstd, level: 6, output: build/uki.efi,
      pcr_key: {pcr}}}
signing: {{key: {keypair[0]}, cert: {keypair[1]}, trust_in_uki: true}}
extensions:
  - {{name: docs, paths: [usr/share/doc, usr/share/man, usr/share/locale], filesystem: erofs}}
  - {{name: mods, paths: [usr/lib/modules/{release}/kernel/fs/romfs], filesystem: squashfs, compression: zstd}}
output: build
""")
    proc = subprocess.run([*SYSEXTANT, "build", str(spec), "--json"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return spec


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_secure_boot_boot_merges_the_extensions_and_every_check_passes(debian_project, tmp_path) -> None:
    """The decisive boot: firmware accepts the signed UKI, the stub, kernel, /init and a target
    follow; the check build merges both signed extensions with dm-verity at boot, a file of each
    reads back identical, the moved module loads, PCR 11 equals the prediction."""
    log = tmp_path / "console.log"
    t0 = time.monotonic()
    proc = subprocess.run([*SYSEXTANT, "boot", str(debian_project), "--extensions", "--json",
                           "--console-log", str(log)], capture_output=True, text=True, timeout=840)
    elapsed = time.monotonic() - t0
    assert proc.stdout, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    failed = [(s["stage"], s["note"], s["evidence"]) for s in report["stages"] if s["status"] != "passed"]
    assert proc.returncode == 0 and report["ok"], (failed, report["guest_log"][-30:], report["console_tail"])
    stages = {s["stage"]: s for s in report["stages"]}
    for key in ("firmware", "stub", "kernel", "init", "target", "check:sysext-service", "check:merged-docs",
                "check:merged-mods", "check:verity", "check:files-docs", "check:files-mods",
                "check:module-romfs", "check:pcr11"):
        assert stages[key]["status"] == "passed", key
    assert report["secure_boot"] and report["tpm"] and "check build" in report["label"]
    assert "Secure Boot is enabled" in stages["stub"]["note"]
    print(f"\nboot with extensions: {elapsed:.0f} s wall, {report['accel']} ({report['accel_why']}); "
          + ", ".join(f"{k} {s['seconds']}s" for k, s in stages.items()))


def _bad_uki(kind: str, spec: Path, keypair, tmp: Path) -> Path:
    """A UKI the firmware must refuse: signed by another key, or the spec's own signed UKI with its
    signature taken off or one byte of its kernel flipped."""
    text = spec.read_text().replace("output: build/uki.efi", f"output: {tmp}/uki.efi") \
        .replace("output: build\n", f"output: {tmp}/out\n")
    from sysextant.core.formats.pe import parse_pe

    uki = tmp / "uki.efi"
    if kind == "unsigned":  # the spec's UKI with its Authenticode signature taken off
        shutil.copyfile(spec.parent / "build/uki.efi", uki)
        pe = parse_pe(uki)
        security = pe.pe_offset + 24 + 112 + 4 * 8  # PE32+ optional header: data directory 4
        with open(uki, "r+b") as f:
            f.seek(security)
            offset = int.from_bytes(f.read(4), "little")
            assert offset, "the spec's UKI is not signed"
            f.seek(security)
            f.write(bytes(8))
            f.truncate(offset)
        return uki
    if kind == "flipped":
        shutil.copyfile(spec.parent / "build/uki.efi", uki)
        linux = parse_pe(uki).section(".linux")
        with open(uki, "r+b") as f:
            f.seek(linux.raw_offset + linux.raw_size // 2)
            byte = f.read(1)
            f.seek(-1, 1)
            f.write(bytes([byte[0] ^ 0x01]))
        return uki
    text = text.replace(str(keypair[0]), str(keypair[2])).replace(str(keypair[1]), str(keypair[3]))
    other = tmp / "bad.yaml"
    other.write_text(text)
    proc = subprocess.run([*SYSEXTANT, "uki", str(other), "--json"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return tmp / "uki.efi"


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("kind", ["other-key", "unsigned", "flipped"])
def test_uki_the_firmware_must_refuse_is_refused(kind, debian_project, keypair, tmp_path) -> None:
    """Signed by another key, unsigned, or one kernel byte flipped after signing: OVMF with the
    spec's db enrolled says Access Denied, and boot exits 1 with every later stage not reached."""
    uki = _bad_uki(kind, debian_project, keypair, tmp_path)
    t0 = time.monotonic()
    proc = subprocess.run([*SYSEXTANT, "boot", str(debian_project), "--uki", str(uki), "--check", "--json"],
                          capture_output=True, text=True, timeout=560)
    report = json.loads(proc.stdout)
    assert proc.returncode == 1 and not report["ok"]
    fw = report["stages"][0]
    assert fw["stage"] == "firmware" and fw["status"] == "failed" and "Access Denied" in fw["evidence"], report
    assert all(s["status"] == "failed" for s in report["stages"][1:])
    print(f"\n{kind}: refused in {time.monotonic() - t0:.0f} s wall ({report['seconds']} s in the VM)")


def _other_key_image(spec: Path, keypair, tmp: Path) -> Path:
    """The spec's docs extension built the same way but signed with the other key."""
    text = spec.read_text().replace(str(keypair[0]), str(keypair[2])).replace(str(keypair[1]), str(keypair[3])) \
        .replace("output: build/uki.efi", f"output: {tmp}/uki.efi").replace("output: build\n", f"output: {tmp}/out\n")
    other = tmp / "other-key.yaml"
    other.write_text(text)
    proc = subprocess.run([*SYSEXTANT, "build", str(other), "--only", "docs", "--json"], capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return tmp / "out" / "docs.sysext.raw"


def _flipped_image(spec: Path, tmp: Path) -> tuple[Path, str]:
    """The spec's built docs extension (uncompressed EROFS) with one bit flipped in the first data
    block of its largest file, the file the check build samples last (checkbuild._samples: the
    largest plain-named regular file). The signature and the verity tree are untouched, so the
    image activates and merges; reading that block must fail. Returns the image and the file."""
    from sysextant.core.formats import erofs
    from sysextant.core.formats.gpt import read_gpt
    from sysextant.core.vm.checkbuild import _SAFE_PATH

    img = tmp / "docs.sysext.raw"
    shutil.copyfile(spec.parent / "build/docs.sysext.raw", img)
    with open(img, "r+b") as f:
        root = read_gpt(f).partitions[0]  # the root partition: the filesystem
        files = [i for i in erofs.read_tree(f, root.offset)
                 if stat.S_ISREG(i.mode) and i.size > erofs.BLOCK and _SAFE_PATH.match(i.path)]
        target = max(files, key=lambda i: (i.size, i.path))
        raw = erofs._Image(f, root.offset).inode(target.ino)
        assert raw.layout in (erofs.FLAT_PLAIN, erofs.FLAT_INLINE), raw
        where = root.offset + raw.iu * erofs.BLOCK + 100
        f.seek(where)
        byte = f.read(1)
        assert byte == erofs.read_file(f, target, root.offset)[100:101]  # that is the file's byte 100
        f.seek(where)
        f.write(bytes([byte[0] ^ 0x01]))
    return img, "/" + target.path.decode()


def _boot_with_images(spec: Path, images: list[Path], tmp: Path) -> tuple[dict, str, float]:
    """The check build booted with ``images`` on the second disk: (report, console, seconds)."""
    log = tmp / "console.log"
    t0 = time.monotonic()
    proc = subprocess.run([*SYSEXTANT, "boot", str(spec), "--extensions", "--json", "--console-log", str(log),
                           *(a for p in images for a in ("--image", str(p)))],
                          capture_output=True, text=True, timeout=840)
    elapsed = time.monotonic() - t0
    assert proc.stdout, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert proc.returncode == (0 if report["ok"] else 1)
    console_text = log.read_bytes().decode("utf-8", "replace")
    stages = {s["stage"]: s for s in report["stages"]}
    for key in ("firmware", "stub", "kernel", "init", "target"):  # the boot itself is fine
        assert stages[key]["status"] == "passed", (key, stages[key], report["console_tail"])
    assert any(f"images given ({', '.join(p.name for p in images)})" in n for n in report["notes"])
    return report, console_text, elapsed


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_extension_signed_by_another_key_does_not_merge(debian_project, keypair, tmp_path) -> None:
    """The docs extension signed by a key the OS does not trust (its db certificate is the only
    one in the UKI's etc/verity.d) beside the good mods extension: systemd-sysext refuses the
    signature and, on systemd 252, merges nothing at all (README: one image that fails to
    activate stops the whole merge) while its unit still succeeds. Its own boot: it would take
    the good images of any other case down with it."""
    good = debian_project.parent / "build/mods.sysext.raw"
    t0 = time.monotonic()
    bad = _other_key_image(debian_project, keypair, tmp_path)
    built = time.monotonic() - t0
    report, _, elapsed = _boot_with_images(debian_project, [bad, good], tmp_path)
    stages = {s["stage"]: s for s in report["stages"]}
    assert not report["ok"]
    assert stages["check:sysext-service"]["status"] == "passed"  # 252: the unit succeeds anyway
    assert stages["check:merged-docs"]["status"] == "failed" == stages["check:merged-mods"]["status"]
    assert stages["check:verity"]["status"] == "failed"
    # systemd-sysext status: every hierarchy with no extension merged
    status = [ln.split() for ln in report["guest_log"] if re.match(r"^/(usr|opt)\s", ln)]
    assert status and {row[0] for row in status} >= {"/usr"}, report["guest_log"]
    assert all(row[1] == "none" for row in status), status
    # the journal of systemd-sysext.service names the signature refusal
    journal = "\n".join(report["guest_log"])
    # (seen: the kernel says ENOKEY, its keyrings lack the db certificate; then systemd 252 checks
    # the PKCS#7 in userspace against etc/verity.d, which holds only the spec's certificate)
    assert "Userspace PKCS#7 validation failed" in journal and "signer certificate not found" in journal, journal
    assert "Activation of signed Verity volume worked neither via the kernel nor in userspace" in journal, journal
    print(f"\nother-key extension: built in {built:.0f} s, refused in {elapsed:.0f} s wall "
          f"({report['seconds']} s in the VM)")


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_extension_with_a_flipped_data_byte_merges_then_fails_to_read(debian_project, tmp_path) -> None:
    """One bit flipped in a data block of the docs extension's largest file: the signature and
    the hash tree are intact, so both extensions merge with dm-verity; reading that file fails
    with EIO and the kernel's dm-verity names the corrupted block, while the other files and the
    mods extension read and load fine."""
    bad, path = _flipped_image(debian_project, tmp_path)
    good = debian_project.parent / "build/mods.sysext.raw"
    report, console_text, elapsed = _boot_with_images(debian_project, [bad, good], tmp_path)
    stages = {s["stage"]: s for s in report["stages"]}
    assert not report["ok"]
    for key in ("check:sysext-service", "check:merged-docs", "check:merged-mods", "check:verity",
                "check:files-mods", "check:module-romfs"):
        assert stages[key]["status"] == "passed", (key, stages[key], report["guest_log"][-30:])
    files = stages["check:files-docs"]
    assert files["status"] == "failed" and f"{path} (unreadable: Input/output error)" in files["note"], files
    assert files["note"].count("(") == 1  # the other sampled files read back identical
    assert re.search(r"device-mapper: verity: [0-9:]+: data block \d+ is corrupted", console_text), \
        console_text[-3000:]
    print(f"\nflipped data byte in {path}: merged, read failed; {elapsed:.0f} s wall ({report['seconds']} s in the VM)")


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_ctrl_c_stops_qemu_and_swtpm_and_leaves_no_temp_files(debian_project, tmp_path) -> None:
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = {**os.environ, "TMPDIR": str(tmp), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([*SYSEXTANT, "boot", str(debian_project), "--check", "--no-build"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if "starting QEMU" in line:
            break
    children: list[str] = []
    deadline = time.monotonic() + 60  # a loaded machine (the suite runs in two processes) starts them late
    while len(children) < 2 and time.monotonic() < deadline:
        time.sleep(0.5)
        children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
    assert len(children) >= 2, seen  # swtpm and QEMU
    time.sleep(2)  # QEMU running, not just spawned
    proc.send_signal(signal.SIGINT)
    rest = proc.communicate(timeout=30)[1]
    assert proc.returncode == 130, rest
    for pid in children:
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text().lower()
    assert list(tmp.iterdir()) == []


# -- the check build ---------------------------------------------------------------------------------
def test_check_build_adds_files_under_etc_only_and_announces_its_checks(tmp_path, keypair) -> None:
    from plan_helpers import make_os, write_spec

    from sysextant.core.sizing.plan import plan_spec
    from sysextant.core.spec.load import load_spec
    from sysextant.core.vm.checkbuild import CHECK_DIR, make_check_build

    make_os(tmp_path / "rootfs")
    spec_path = write_spec(tmp_path, "  - name: gpu\n    paths: [usr/lib/modules/6.1/kernel/gpu]\n"
                                     "  - name: docs\n    paths: [usr/share/doc]\n",
                           extra_uki="  init: /usr/bin/immucore")
    text = spec_path.read_text().replace("extensions:", f"signing: {{key: {keypair[0]}, cert: {keypair[1]}}}\n"
                                                        "extensions:")
    spec_path.write_text(text)
    spec = load_spec(spec_path)
    cb = make_check_build(spec, plan_spec(spec))
    added = cb.spec.extra_files[len(spec.extra_files):]
    assert added and all(f.path.startswith("etc/") for f in added)
    assert spec.extra_files == []  # the user's spec is not touched
    assert cb.spec.output == spec.output / CHECK_DIR and cb.spec.uki.output.parent == spec.output / CHECK_DIR
    by_path = {f.path: f for f in added}
    assert by_path["etc/sysextant-check/run"].mode == 0o755
    assert by_path["etc/systemd/system/multi-user.target.wants/sysextant-check.service"].target
    run = by_path["etc/sysextant-check/run"].data.decode()
    names = [n for n, _ in cb.checks]
    assert names[:3] == ["sysext-service", "merged-gpu", "merged-docs"] and "verity" in names
    assert "module-drm" in names and "files-docs" in names and "pcr11" not in names  # no pcr_key
    assert "check_module drm /usr/lib/modules/6.1/kernel/gpu/drm.ko" in run
    assert run.rstrip().endswith("systemctl poweroff --no-block")
    assert any("not enabled" in n for n in cb.notes)
    sh = shutil.which("sh")
    if sh:  # the guest scripts are valid POSIX shell
        for path in ("etc/sysextant-check/run", "etc/sysextant-check/link-extensions"):
            subprocess.run([sh, "-n", "-c", by_path[path].data.decode()], check=True)


# -- the workbench's boot check (v): pilot tests on recorded consoles, no VM -----------------------
RECORDED_CHECKS = [("sysext-service", "systemd-sysext.service ran at boot"), ("merged-docs", "extension docs merged"),
                   ("merged-mods", "extension mods merged"), ("verity", "dm-verity devices for the signed extensions"),
                   ("files-docs", "files of docs read back identical to the tree"),
                   ("files-mods", "files of mods read back identical to the tree"),
                   ("module-romfs", "kernel module romfs from mods loads"), ("pcr11", "PCR 11 equals the prediction")]


@pytest.fixture
def demo_spec(tmp_path, monkeypatch) -> Path:
    pytest.importorskip("textual")
    from sysextant.core.demo import create_demo

    monkeypatch.setenv("SYSEXTANT_CONFIG_DIR", str(tmp_path / "config"))
    return create_demo(tmp_path / "project", scale=0.02)


def _screen_text(screen) -> str:
    return str(screen.stages_text())


@pytest.mark.anyio
async def test_workbench_v_shows_the_stages_as_they_pass(demo_spec, monkeypatch) -> None:
    """v after a build: the boot check runs boot_spec in a worker (here fed the recorded console
    of a real check-build boot) and the screen shows each stage as it passes, then the verdict;
    b cannot start a build meanwhile; esc goes back with the verdict in the status line."""
    import threading

    from tui_helpers import ready, status, wait_for

    from sysextant.core.vm import qemu as vm_qemu
    from sysextant.core.vm import run as vm_run
    from sysextant.tui.app import WorkbenchApp
    from sysextant.tui.screens.bootcheck import BootCheckScreen
    from sysextant.tui.screens.build import BuildScreen

    lines = (DATA / "console-check-build.txt").read_bytes().decode("utf-8", "replace").split("\n")
    gate = threading.Event()
    calls = []

    def recorded_boot_spec(spec, *, check, extensions, build_first, reporter, on_stage, **kw):
        calls.append((spec.path, check, extensions, build_first))
        w = Watcher(checks=RECORDED_CHECKS, judges={"pcr11": lambda d: (True, "judged (recorded)")})
        reporter.log("boot", "accelerator: TCG (recorded console)", "step")
        for k, raw in enumerate(lines):
            reporter.check()
            for st in w.feed(raw, float(k)):
                on_stage(st)
            if "Linux version" in raw:
                assert gate.wait(20)  # the test looks at the screen with the kernel just started
        w.finish("console ended", 99.0)
        return vm_run.BootResult("build/boot-check/uki.efi", "check build (recorded)", vm_qemu.Accel("tcg", "recorded"),
                                 True, True, w.stages, 99.0, w.ok, "the VM powered off", w.tail(), [], None,
                                 w.guest_log)

    monkeypatch.setattr(vm_run, "boot_spec", recorded_boot_spec)
    app = WorkbenchApp(demo_spec, watch=False, estimate=False)
    async with app.run_test(size=(120, 40)) as pilot:
        await ready(app, pilot)
        await pilot.press("v")  # nothing built yet: refused, saying what to do
        await pilot.pause()
        assert not isinstance(app.screen, BootCheckScreen) and "press b to build first" in status(app)
        uki = app.session.spec.uki.output
        uki.parent.mkdir(parents=True, exist_ok=True)
        uki.write_bytes(b"a built UKI")  # what the check needs of a build: boot_spec is the recording
        await pilot.press("v")
        assert await wait_for(pilot, lambda: isinstance(app.screen, BootCheckScreen), 5)
        screen = app.screen
        assert await wait_for(pilot, lambda: any(s.key == "kernel" and s.status == "passed" for s in screen.stages), 10)
        await pilot.pause(0.2)
        text = _screen_text(screen)
        assert "✓" in text and "firmware accepted the UKI" in text and "BdsDxe: starting Boot0001" in text
        assert "Linux version 6.1" in text and "› " in text and "waiting…" in text  # /init is next
        # the demo is Kairos-shaped (/init is immucore): the spec's UKI, and why not the check build
        assert calls == [(app.session.spec.path, True, False, True)]
        title = str(screen.query_one("#boot-title").render())
        assert screen.running and "the spec's UKI" in title and "immucore" in title
        await pilot.press("b")  # no build while the VM runs
        await pilot.pause()
        assert not any(isinstance(s, BuildScreen) for s in app.screen_stack)
        gate.set()
        assert await wait_for(pilot, lambda: not screen.running, 20)
        await pilot.pause()
        text = _screen_text(screen)
        assert screen.kind == "ok" and text.count("✓") == 13 and "✗" not in text, text
        assert "judged (recorded)" in text and "Multi-User System" in text
        outcome = str(screen.query_one("#boot-outcome").render())
        assert "every stage passed (13 stages, TCG, 99 s)" in outcome and "recorded" in outcome
        await pilot.press("escape")
        assert await wait_for(pilot, lambda: not isinstance(app.screen, BootCheckScreen))
        assert "boot check: every stage passed (13 stages" in status(app)


def _stand_in_vm(monkeypatch, tmp_path: Path, console_lines: list[bytes]) -> tuple[list, Path]:
    """Stand-ins for QEMU (a process printing ``console_lines`` on its stdout, then waiting) and
    swtpm (a process opening its control socket, then waiting) under the real core/vm/run.boot,
    with the firmware, ESP and accelerator faked: (the processes spawned, the temp folder)."""
    import tempfile

    from sysextant.core.vm import disks as vm_disks
    from sysextant.core.vm import firmware as vm_firmware
    from sysextant.core.vm import qemu as vm_qemu
    from sysextant.core.vm import run as vm_run

    console = tmp_path / "stand-in-console.txt"
    console.write_bytes(b"\n".join(console_lines) + b"\n")
    fake_qemu = tmp_path / "fake-qemu"
    fake_qemu.write_text(f"#!{sys.executable}\nimport sys, time\n"
                         f"for line in open({str(console)!r}, 'rb').read().split(b'\\n'):\n"
                         "    sys.stdout.buffer.write(line + b'\\n'); sys.stdout.flush(); time.sleep(0.02)\n"
                         "time.sleep(600)\n")
    fake_swtpm = tmp_path / "fake-swtpm"
    fake_swtpm.write_text(f"#!{sys.executable}\nimport sys, time\n"
                          "arg = sys.argv[sys.argv.index('--ctrl') + 1]\n"
                          "open(arg.split('path=', 1)[1], 'w').close()\ntime.sleep(600)\n")
    for f in (fake_qemu, fake_swtpm):
        f.chmod(0o755)
    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    fw = vm_firmware.Firmware(tmp_path / "CODE.fd", tmp_path / "VARS.fd", True)
    monkeypatch.setattr(vm_run, "find_tools", lambda **kw: vm_run.Tools(str(fake_qemu), fw, str(fake_swtpm)))
    monkeypatch.setattr(vm_qemu, "choose_accel", lambda *a, **kw: vm_qemu.Accel("tcg", "stand-in"))
    monkeypatch.setattr(vm_firmware, "make_vars", lambda template, cert, out: out.write_bytes(b"vars"))
    monkeypatch.setattr(vm_disks, "make_esp", lambda uki, out: out.write_bytes(b"esp") and 3)
    monkeypatch.setattr(vm_qemu.Machine, "command", lambda self: [self.qemu])
    spawned: list[subprocess.Popen] = []
    real_spawn = vm_qemu.spawn

    def spawn(cmd, **kw):
        spawned.append(real_spawn(cmd, **kw))
        return spawned[-1]

    monkeypatch.setattr(vm_qemu, "spawn", spawn)
    return spawned, temp


@pytest.mark.anyio
async def test_workbench_boot_check_esc_stops_qemu_and_swtpm_and_removes_the_temp_files(
        demo_spec, tmp_path, monkeypatch) -> None:
    """esc while the VM runs: the real engine (core/vm/run.boot) with stand-ins for QEMU (a
    process printing the recorded console, then waiting) and swtpm (a process opening its
    socket): both are stopped, the private temp folder is gone, the screen and the status line
    say cancelled, and the workbench goes on."""
    from tui_helpers import ready, status, wait_for

    from sysextant.core.vm import run as vm_run
    from sysextant.tui.app import WorkbenchApp
    from sysextant.tui.screens.bootcheck import BootCheckScreen

    console_lines = (DATA / "console-check-build.txt").read_bytes().split(b"\n")[:8]  # up to the kernel
    spawned, temp = _stand_in_vm(monkeypatch, tmp_path, console_lines)

    def boot_spec_engine(spec, *, reporter, on_stage, **kw):  # the real boot() of the built UKI
        return vm_run.boot(spec.uki.output, cert=None, tpm=True, reporter=reporter, on_stage=on_stage,
                           watcher=Watcher(secure_boot=False), stop_when_booted=False)

    monkeypatch.setattr(vm_run, "boot_spec", boot_spec_engine)
    app = WorkbenchApp(demo_spec, watch=False, estimate=False)
    async with app.run_test(size=(120, 40)) as pilot:
        await ready(app, pilot)
        uki = app.session.spec.uki.output
        uki.parent.mkdir(parents=True, exist_ok=True)
        uki.write_bytes(b"a built UKI")
        await pilot.press("v")
        assert await wait_for(pilot, lambda: isinstance(app.screen, BootCheckScreen), 5)
        screen = app.screen
        assert await wait_for(pilot, lambda: any(s.key == "kernel" and s.status == "passed" for s in screen.stages), 15)
        assert len(spawned) == 2 and all(p.poll() is None for p in spawned)  # swtpm and "QEMU" running
        assert len(list(temp.iterdir())) == 1  # the private folder with vars, ESP, TPM state
        await pilot.press("q")  # q does not leave a running VM behind
        await pilot.pause()
        assert app.screen is screen and screen.running
        await pilot.press("escape")
        assert await wait_for(pilot, lambda: not screen.running, 15)
        await pilot.pause()
        assert screen.kind == "cancelled"
        assert all(p.poll() is not None for p in spawned)  # both stopped (and reaped)
        assert list(temp.iterdir()) == []
        assert "QEMU and swtpm stopped, temporary files removed" in str(screen.query_one("#boot-outcome").render())
        await pilot.press("escape")
        assert await wait_for(pilot, lambda: not isinstance(app.screen, BootCheckScreen))
        assert "boot check cancelled" in status(app)


# -- a Kairos-shaped tree (/init is immucore): the stages the VM can prove ---------------------------
def _kairos_spec(tmp_path: Path, keypair) -> Path:
    """A tiny tree shaped as Kairos': usr/bin/immucore with /init -> usr/bin/immucore, one extension."""
    from plan_helpers import make_os, write_spec

    make_os(tmp_path / "rootfs")
    (tmp_path / "rootfs/init").symlink_to("usr/bin/immucore")
    spec = write_spec(tmp_path, "  - name: docs\n    paths: [usr/share/doc]\n")
    spec.write_text(spec.read_text().replace("extensions:", f"signing: {{key: {keypair[0]}, cert: {keypair[1]}}}\n"
                                                            "extensions:"))
    return spec


def test_kairos_extensions_are_refused_with_the_reason_before_any_tool(tmp_path, keypair) -> None:
    """--extensions on an immucore tree: one error saying why the VM cannot prove the merge and
    what it can do instead, before looking for QEMU or OVMF (here absent) or building anything."""
    spec = _kairos_spec(tmp_path, keypair)
    env = {**os.environ, "SYSEXTANT_OVMF_DIR": str(tmp_path / "none")}
    proc = subprocess.run([*SYSEXTANT, "boot", str(spec), "--extensions"], capture_output=True, text=True, env=env,
                          timeout=60)
    assert proc.returncode == 2, proc.stderr
    err = proc.stderr.strip()
    assert len(err.splitlines()) == 1 and "immucore" in err and "installed Kairos disk" in err, err
    assert "Boot without --extensions to check the firmware, stub, kernel and /init stages" in err
    assert "ovmf" not in err.lower() and not (tmp_path / "build").exists()


def test_kairos_tree_passes_the_stages_it_can_prove_and_skips_the_target_saying_why(tmp_path, keypair,
                                                                                     monkeypatch) -> None:
    """The real boot_spec and boot() on an immucore tree with a stand-in QEMU printing a real
    recorded console up to 'Run /init as init process' and then hanging (as immucore would with
    no installed disk): firmware, stub (Secure Boot on), kernel and /init pass, the target is
    skipped with the reason, the VM is stopped at once (not at the timeout), the report is ok and
    its notes say the later stages need an installed Kairos disk."""
    from sysextant.core.progress import Reporter
    from sysextant.core.spec.load import load_spec
    from sysextant.core.vm import run as vm_run
    from sysextant.tui.bootcmd import render

    spec = load_spec(_kairos_spec(tmp_path, keypair))
    recorded = (DATA / "console-check-build.txt").read_bytes().split(b"\n")
    upto = next(k for k, ln in enumerate(recorded) if b"Run /init as init process" in ln)
    lines = recorded[: upto + 1] + [b"immucore: (stand-in) waiting for the installed Kairos disk"]
    spawned, temp = _stand_in_vm(monkeypatch, tmp_path, lines)
    built = []

    class Report:
        ok = True
        artefacts: list = []

    def fake_build(spec, **kw):  # what build writes that boot reads: the UKI
        built.append(kw.get("only"))
        spec.uki.output.parent.mkdir(parents=True, exist_ok=True)
        spec.uki.output.write_bytes(b"a built UKI")
        return Report()

    monkeypatch.setattr(vm_run, "build", fake_build)
    t0 = time.monotonic()
    result = vm_run.boot_spec(spec, check=True, reporter=Reporter(), timeout=60)
    assert time.monotonic() - t0 < 30  # stopped once /init ran, not at the timeout
    by = {s.key: s for s in result.stages}
    assert result.ok, [(s.key, s.status, s.note) for s in result.stages]
    assert [by[k].status for k in ("firmware", "stub", "kernel", "init")] == [PASSED] * 4
    assert by["stub"].note == "UEFI Secure Boot is enabled" and result.secure_boot
    assert by["init"].evidence.endswith("Run /init as init process")
    assert by["target"].status == "skipped" and "immucore needs an installed Kairos disk" in by["target"].note
    assert not any(s.key.startswith("check:") for s in result.stages)  # no check build
    assert any("stages after /init need an installed Kairos disk and are skipped" in n for n in result.notes)
    assert built == [None]  # the spec's build (what changed), no check build
    assert all(p.poll() is not None for p in spawned) and list(temp.iterdir()) == []
    text = render(result)
    assert "skip" in text and "immucore needs an installed Kairos disk" in text and "BOOTED" in text


def test_images_given_must_exist_and_have_distinct_names(tmp_path, keypair, monkeypatch) -> None:
    """--image: a missing file or two images with one file name are one error each, before any
    build or VM (the second disk holds the images side by side under their names)."""
    from sysextant.core.errors import UserError
    from sysextant.core.spec.load import load_spec
    from sysextant.core.vm import run as vm_run

    spec = load_spec(_kairos_spec(tmp_path, keypair))
    monkeypatch.setattr(vm_run, "find_tools", lambda **kw: None)
    monkeypatch.setattr(vm_run, "build", lambda *a, **kw: pytest.fail("nothing is built"))
    with pytest.raises(UserError, match=r"extension image .*missing\.raw does not exist"):
        vm_run.boot_spec(spec, images=[tmp_path / "missing.raw"])
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
        (tmp_path / d / "docs.sysext.raw").write_bytes(b"x")
    with pytest.raises(UserError, match="same file name"):
        vm_run.boot_spec(spec, images=[tmp_path / "a/docs.sysext.raw", tmp_path / "b/docs.sysext.raw"])


def test_link_script_needs_only_sh_mount_and_systemd_tmpfiles(tmp_path) -> None:
    """It runs before the merge, so it may use only what the boot set keeps: a spec whose
    extension carries coreutils (a `plan --fit` proposal did) must still get its images linked.
    Run with a PATH holding nothing but a stand-in mount and the real systemd-tmpfiles."""
    import shutil as _sh

    from sysextant.core.vm.checkbuild import LINK_SCRIPT

    dash, tmpfiles = _sh.which("dash") or _sh.which("sh"), _sh.which("systemd-tmpfiles")
    if tmpfiles is None:
        pytest.skip("systemd-tmpfiles not installed (Debian package systemd)")
    run = tmp_path / "run"
    disk = tmp_path / "disk"
    (disk / "lost+found").mkdir(parents=True)
    for name in ("docs.sysext.raw", "mods.sysext.raw"):
        (disk / name).write_bytes(b"image")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "mount").write_text(f"#!{dash}\nfor a in \"$@\"; do last=$a; done\n"
                                   f"exec {_sh.which('cp')} -a {disk}/. \"$last\"/\n")
    (bin_dir / "mount").chmod(0o755)
    (bin_dir / "systemd-tmpfiles").symlink_to(tmpfiles)
    script = tmp_path / "link"
    script.write_text(LINK_SCRIPT.replace("/run/", f"{run}/"))
    run.mkdir()
    proc = subprocess.run([dash, str(script)], env={"PATH": str(bin_dir)}, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    links = sorted(p.name for p in (run / "extensions").iterdir())
    assert links == ["docs.sysext.raw", "mods.sysext.raw"]  # lost+found is not linked
    assert os.readlink(run / "extensions/docs.sysext.raw") == f"{run}/sysextant-disk/docs.sysext.raw"
