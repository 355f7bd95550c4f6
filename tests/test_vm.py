"""`sysextant boot`: the console stage parser on recorded consoles, the firmware variable store, the
ESP, the QEMU command line, missing tools, and real Secure Boot boots of sysextant-built UKIs under
QEMU + OVMF (marked slow; CI runs them: TCG, ~30-150 s each).

The real boots use a debootstrapped Debian 12 tree cached per machine (tests/vm_tree.py) with the
Debian kernel tests/kernel.py fetches; they skip, saying why, only where that cannot be had (not
root, no network) or a tool is missing outside CI.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sysextant.core.errors import MissingToolError
from sysextant.core.vm import console, disks, firmware, qemu
from sysextant.core.vm.console import FAILED, PASSED, Watcher

HERE = Path(__file__).parent
DATA = HERE / "data" / "vm"
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
    sys.path.insert(0, str(HERE))
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
    time.sleep(3)
    children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
    assert len(children) >= 2, seen  # swtpm and QEMU
    proc.send_signal(signal.SIGINT)
    rest = proc.communicate(timeout=30)[1]
    assert proc.returncode == 130, rest
    for pid in children:
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text().lower()
    assert list(tmp.iterdir()) == []


# -- the check build ---------------------------------------------------------------------------------
def test_check_build_adds_files_under_etc_only_and_announces_its_checks(tmp_path, keypair) -> None:
    from test_plan import make_os, write_spec

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
