"""One VM run of a built UKI: firmware variables, disks, swtpm and QEMU in a private temp folder,
the console read into stages, everything stopped and removed at the end (also on Ctrl-C, SIGTERM
or an error). :func:`boot` is what ``sysextant boot`` and the workbench drive.
"""

from __future__ import annotations

import contextlib
import os
import queue
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..atomic import private_tempdir
from ..build.pipeline import build
from ..errors import UserError
from ..formats.mkfs import find_tool
from ..progress import Reporter
from ..sizing.plan import make_plan
from ..spec.model import Spec
from ..tree.index import scan
from . import disks, firmware, qemu
from .checkbuild import make_check_build, pcr11_judge
from .console import FAILED, PASSED, SKIPPED, Stage, Watcher

#: seconds a Secure Boot boot may take before it counts as hung (TCG: 30-110 s seen for 65-210 MiB)
DEFAULT_TIMEOUT = 300.0


@dataclass
class BootResult:
    """What one VM run showed."""

    uki: str
    label: str  # "the spec's UKI" or "check build ..."
    accel: qemu.Accel
    secure_boot: bool
    tpm: bool
    stages: list[Stage]
    seconds: float
    ok: bool
    ended: str  # why the VM stopped
    console_tail: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    console_log: str | None = None
    guest_log: list[str] = field(default_factory=list)  # what the check build's guest printed as evidence

    def to_json(self) -> dict:
        return {"ok": self.ok, "uki": self.uki, "label": self.label, "accel": self.accel.name,
                "accel_why": self.accel.why, "secure_boot": self.secure_boot, "tpm": self.tpm,
                "seconds": round(self.seconds, 2), "ended": self.ended,
                "stages": [s.to_json() for s in self.stages], "notes": self.notes,
                "console_log": self.console_log, "guest_log": self.guest_log,
                "console_tail": [] if self.ok else self.console_tail}


@dataclass
class Tools:
    """Every program and file a run needs, found before any work starts."""

    qemu: str
    firmware: firmware.Firmware
    swtpm: str | None


def find_tools(*, secure_boot: bool, tpm: bool, images: bool) -> Tools:
    """Each missing piece is one :class:`~sysextant.core.errors.MissingToolError` naming its
    Debian package (checked in the order a user installs them)."""
    q = qemu.find_qemu()
    fw = firmware.find_firmware(secure_boot=secure_boot)
    if secure_boot:
        firmware._virt_firmware()
    find_tool("mkfs.vfat", "dosfstools", "to make the VM's EFI system partition")
    find_tool("mcopy", "mtools", "to write the UKI into the VM's EFI system partition without root")
    if images:
        find_tool("mkfs.ext4", "e2fsprogs", "to make the VM's disk holding the extension images")
    sw = qemu.find_swtpm() if tpm else None
    return Tools(q, fw, sw)


def _reader(stream, lines: queue.Queue, log) -> None:
    """Console bytes -> lines (thread): a line ends at LF; bytes as they come go to ``log``."""
    buf = b""
    while True:
        chunk = stream.read1(65536) if hasattr(stream, "read1") else stream.read(4096)
        if not chunk:
            break
        if log is not None:
            log.write(chunk)
            log.flush()
        buf += chunk
        *done, buf = buf.split(b"\n")
        for raw in done:
            lines.put(raw.decode("utf-8", "replace"))
    if buf:
        lines.put(buf.decode("utf-8", "replace"))
    lines.put(None)


def boot(uki: Path, *, cert: Path | None, images: Sequence[Path] = (), tpm: bool = False, check: bool = True,
         watcher: Watcher | None = None, label: str = "the spec's UKI", timeout: float = DEFAULT_TIMEOUT,
         reporter: Reporter | None = None, console_log: Path | None = None, memory_mib: int = 2048,
         on_stage: Callable[[Stage], None] | None = None, stop_when_booted: bool = True) -> BootResult:
    """Boot ``uki`` under OVMF with ``cert`` enrolled as PK, KEK and db and Secure Boot on (no
    ``cert``: Secure Boot off), ``images`` on a second disk and a TPM if ``tpm``. With ``check``
    the console is read into ``watcher``'s stages (QEMU is stopped once they are decided, or at
    ``timeout``); without, the console and QEMU's monitor are the terminal's (Ctrl-A X quits).
    ``console_log`` keeps the raw console. Nothing is left behind."""
    reporter = reporter or Reporter()
    secure = cert is not None
    tools = find_tools(secure_boot=secure, tpm=tpm, images=bool(images))
    if not uki.is_file():
        raise UserError(f"UKI {uki} does not exist; run `sysextant build` first")
    accel = qemu.choose_accel(tools.qemu, smm=secure, firmware=tools.firmware)
    reporter.log("boot", f"accelerator: {accel.name.upper()} ({accel.why})", "step")
    watcher = watcher or Watcher(secure_boot=secure)
    notes: list[str] = []
    vm: subprocess.Popen | None = None
    tpm_proc: subprocess.Popen | None = None
    t0 = time.monotonic()
    ended = ""
    log = None
    with private_tempdir("sysextant-boot-") as tmp:
        try:
            vars_fd = tmp / "OVMF_VARS.fd"
            firmware.make_vars(tools.firmware.vars_template, cert, vars_fd)
            reporter.log("boot", ("firmware: Secure Boot on, " + f"{cert.name} enrolled as PK, KEK and db")
                         if secure else "firmware: Secure Boot off (the spec signs nothing)", "step")
            esp = tmp / "esp.img"
            disks.make_esp(uki, esp)
            ext = None
            if images:
                ext = tmp / "extensions.img"
                disks.make_extension_disk(images, ext, tmp / "stage")
                reporter.log("boot", f"second disk (ext4, label {disks.EXT_LABEL}): "
                             + ", ".join(p.name for p in images), "step")
            sock = None
            if tpm and tools.swtpm:
                tpm_proc, sock = qemu.start_swtpm(tools.swtpm, tmp / "tpm")
                reporter.log("boot", "TPM 2.0: swtpm attached", "step")
            machine = qemu.Machine(tools.qemu, tools.firmware, vars_fd, esp, accel, ext_disk=ext, tpm_socket=sock,
                                   memory_mib=memory_mib, interactive=not check)
            reporter.log("boot", f"starting QEMU ({label}: {uki})", "step")
            t0 = time.monotonic()
            if not check:
                vm = qemu.spawn(machine.command(), interactive=True, cwd=machine.cwd)
                vm.wait()
                ended = f"QEMU exited ({vm.returncode})"
            else:
                log = open(console_log, "wb") if console_log else None  # noqa: SIM115 (closed in finally)
                vm = qemu.spawn(machine.command(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, cwd=machine.cwd)
                ended = _watch(vm, watcher, t0, timeout, reporter, log, on_stage, stop_when_booted)
        finally:  # before the folder goes: swtpm and QEMU hold files in it
            qemu.stop(vm)
            qemu.stop(tpm_proc)
            if log is not None:
                log.close()
    seconds = time.monotonic() - t0
    if check:
        watcher.finish(ended, seconds)
    return BootResult(str(uki), label, accel, secure, tpm, watcher.stages, seconds, check and watcher.ok, ended,
                      watcher.tail(), notes, str(console_log) if console_log else None, watcher.guest_log)


def _watch(vm: subprocess.Popen, watcher: Watcher, t0: float, timeout: float, reporter: Reporter, log,
           on_stage: Callable[[Stage], None] | None, stop_when_booted: bool) -> str:
    """Read the console into ``watcher`` until it is decided, QEMU exits, or ``timeout``."""
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=_reader, args=(vm.stdout, lines, log), daemon=True).start()
    errors: list[bytes] = []

    def read_errors() -> None:
        for raw in vm.stderr:
            errors.append(raw)

    threading.Thread(target=read_errors, daemon=True).start()
    shown = 0.0
    while True:
        reporter.check()
        now = time.monotonic() - t0
        if any(b"KVM internal error" in e for e in errors):  # QEMU stays up, paused: nothing more will come
            raise UserError("QEMU's KVM stopped with an internal error (nested virtualisation cannot run this "
                            "firmware); run again with SYSEXTANT_VM_ACCEL=tcg")
        if now > timeout:
            return f"no progress within {timeout:.0f} s (timeout)"
        try:
            raw = lines.get(timeout=0.25)
        except queue.Empty:
            if now - shown >= 15:
                pending = watcher.first_pending()
                reporter.log("boot", f"{now:5.0f} s  waiting for: {pending.title if pending else 'power-off'}")
                shown = now
            continue
        if raw is None:
            vm.wait()
            err = b"".join(errors).decode(errors="replace").strip().splitlines()
            err = [e for e in err if "warning:" not in e]
            if vm.returncode not in (0, None) and err:
                raise UserError(f"QEMU failed (exit {vm.returncode}): {err[-1]}")
            return "the VM powered off" if watcher.powered_off else f"QEMU exited ({vm.returncode})"
        for st in watcher.feed(raw, now):
            shown = now
            mark = {PASSED: "ok", FAILED: "FAIL", SKIPPED: "skip"}.get(st.status, st.status)
            reporter.log("boot", f"{st.seconds or now:5.1f} s  {mark:<4} {st.title}: {st.note or st.evidence}")
            if on_stage is not None:
                on_stage(st)
        if watcher.finished:
            if watcher.fatal:
                return f"stopped: {watcher.fatal}"
            if watcher.powered_off:
                return "the VM powered off"
            return "every stage decided"
        if stop_when_booted and watcher.boot_done and not any(s.key.startswith("check:") for s in watcher.stages):
            return "booted: the target was reached"



def _init_is_immucore(spec: Spec) -> bool:
    """Whether the UKI's /init is Kairos' immucore, which needs an installed Kairos disk to go on."""
    if spec.uki.init:
        return "immucore" in spec.uki.init
    with contextlib.suppress(OSError):
        return "immucore" in os.readlink(os.path.join(spec.os.root, "init"))
    return False


def boot_spec(spec: Spec, *, check: bool = True, extensions: bool = False, build_first: bool = True,
              uki: Path | None = None, reporter: Reporter | None = None, timeout: float = DEFAULT_TIMEOUT,
              console_log: Path | None = None, on_stage: Callable[[Stage], None] | None = None,
              images: Sequence[Path] | None = None) -> BootResult:
    """Boot what ``spec`` builds: its UKI (``build_first``: build what changed first; ``uki``: that
    file instead), or with ``extensions`` its check build, which merges the extension images from
    the second disk and reports the checks of :mod:`.checkbuild`. ``images``: these files on the
    second disk instead of the spec's built images (e.g. one signed by another key, or from an
    older build: does it still merge on this UKI?); the spec's own images are then not built."""
    reporter = reporter or Reporter()
    secure = spec.signing is not None
    cert = spec.signing.cert if spec.signing else None
    # what cannot work is said before any tool is looked for
    immucore = _init_is_immucore(spec)
    if extensions and immucore:
        raise UserError(f"{spec.path}: the UKI's /init is Kairos' immucore, which needs an installed Kairos "
                        "disk to reach systemd: the VM cannot prove the extensions merge. Boot without "
                        "--extensions to check the firmware, stub, kernel and /init stages")
    if extensions and not spec.extensions:
        raise UserError(f"{spec.path} has no extensions: boot with --check alone")
    # every tool before any build: a missing one is one error naming its package
    find_tools(secure_boot=secure, tpm=spec.uki.pcr_key is not None, images=bool(spec.extensions or images))
    given = [Path(p) for p in images] if images is not None else None
    for p in given or ():
        if not p.is_file():
            raise UserError(f"extension image {p} does not exist or is not a file")
    names = [p.name for p in given or ()]
    if len(set(names)) != len(names):
        raise UserError("two extension images have the same file name: the second disk holds them side by side")
    images = []
    if uki is None and (build_first or extensions) and not (given is not None and extensions):
        # with images given, the spec's own are not needed: the UKI alone (the check build makes its own)
        report = build(spec, only=["uki"] if given is not None else None, reporter=reporter)
        if not report.ok:
            raise UserError(f"the build of {spec.path} failed: fix it before booting (sysextant build {spec.path})")
        images = [Path(a.path) for a in report.artefacts if a.kind == "sysext"]
    elif given is None:
        images = [p for p in (spec.output / e.image_name for e in spec.extensions) if p.is_file()]
    if given is not None:
        images = given
    label = "the spec's UKI" if uki is None else f"UKI {uki}"
    target = uki or spec.uki.output
    skip = {}
    if immucore:
        skip = {"target": "immucore needs an installed Kairos disk to go on to systemd: not provable in this VM"}
    watcher = Watcher(secure_boot=secure, skip=skip)
    notes: list[str] = []
    if extensions:
        cb = make_check_build(spec, make_plan(spec, scan(spec.os.root, check=reporter.check)))
        reporter.log("boot", f"check build: the spec's UKI plus {len(cb.spec.extra_files) - len(spec.extra_files)} "
                     f"files under etc/ -> {cb.spec.uki.output}", "step")
        report = build(cb.spec, only=["uki"], reporter=reporter)
        if not report.ok:
            raise UserError(f"the check build of {spec.path} failed verification")
        target = cb.spec.uki.output
        label = "check build (the spec's UKI + files under etc/; not for deployment)"
        judges = {"pcr11": pcr11_judge(target, spec.uki.stub)} if spec.uki.pcr_key is not None else {}
        watcher = Watcher(checks=cb.checks, secure_boot=secure, judges=judges)
        notes += cb.notes
    if given is not None:
        notes.append("the second disk holds the images given (" + ", ".join(p.name for p in images)
                     + "), not the spec's built ones")
    result = boot(target, cert=cert, images=images, tpm=spec.uki.pcr_key is not None, check=check,
                  watcher=watcher, label=label, timeout=timeout, reporter=reporter, console_log=console_log,
                  on_stage=on_stage)
    if immucore:
        notes.append("the UKI's /init is immucore: stages after /init need an installed Kairos disk and are skipped")
    result.notes = notes + result.notes
    return result
