"""The QEMU command line and the processes of one VM run (QEMU and, for the TPM, swtpm).

The machine (QEMU 7.2 docs, ``docs/system/i386/...`` and OVMF's README): q35 with SMM
(``-machine q35,smm=on``), the Secure Boot OVMF code as read-only pflash with
``cfi.pflash01.secure=on`` so only SMM code writes the variables, the per-boot variable store
as the second pflash, the ESP and the extension disk as virtio-blk, a TPM 2.0 from ``swtpm
socket --tpm2`` through ``-tpmdev emulator`` + ``tpm-tis`` when the UKI carries a PCR signature,
the serial console as the only output. No network, no graphics.

Acceleration: KVM when ``/dev/kvm`` is usable and accepts the machine, else TCG. Secure Boot
needs SMM and some hosts' KVM refuses it ("System Management Mode not supported by this
hypervisor", nested virtualisation often), so the choice is probed with the very machine
options and the reason is reported. ``SYSEXTANT_VM_ACCEL=kvm|tcg`` forces one.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from ..formats.mkfs import find_tool
from .firmware import Firmware

QEMU = "qemu-system-x86_64"


@dataclass(frozen=True)
class Accel:
    name: str  # kvm | tcg
    why: str


def find_qemu() -> str:
    return find_tool(QEMU, "qemu-system-x86", "to run the VM")


def find_swtpm() -> str:
    return find_tool("swtpm", "swtpm", "for the VM's TPM (the UKI has uki.pcr_key: its PCR 11 signature needs one)")


def choose_accel(qemu: str, *, smm: bool, firmware: Firmware | None = None) -> Accel:
    """KVM if this host's KVM runs a q35 machine with (``smm``) or without SMM and, given the
    ``firmware``, runs its first instructions (nested KVM can fail there: "KVM internal error.
    Suberror: 1, emulation failure" while OVMF executes from flash); else TCG. With why."""
    forced = os.environ.get("SYSEXTANT_VM_ACCEL", "").strip().lower()
    if forced in ("kvm", "tcg"):
        return Accel(forced, f"forced by SYSEXTANT_VM_ACCEL={forced}")
    if not os.path.exists("/dev/kvm"):
        return Accel("tcg", "no /dev/kvm on this host (no KVM, or not exposed to this container)")
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return Accel("tcg", "/dev/kvm is not accessible to this user (join the group that owns it, usually kvm)")
    machine = f"q35,smm={'on' if smm else 'off'},accel=kvm"
    try:
        proc = subprocess.run([qemu, "-machine", machine, "-nodefaults", "-display", "none", "-S",
                               "-monitor", "stdio"], input="quit\n", capture_output=True, text=True,
                              timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return Accel("tcg", f"KVM probe did not answer ({exc})")
    if proc.returncode == 0:
        failure = _kvm_runs_firmware(qemu, machine, firmware) if firmware is not None else None
        if failure:
            return Accel("tcg", f"KVM cannot run the firmware on this host ({failure}): emulating (slower)")
        return Accel("kvm", "KVM accepts " + ("the Secure Boot machine (SMM)" if smm else "the machine")
                     + (" and runs the firmware" if firmware is not None else ""))
    errors = [ln.split(": ", 1)[-1] for ln in proc.stderr.splitlines() if "warning" not in ln]
    reason = errors[-1] if errors else f"exit {proc.returncode}"
    if smm:
        return Accel("tcg", f"KVM refuses SMM, which Secure Boot needs ({reason.rstrip('.')}): emulating (slower)")
    return Accel("tcg", f"KVM refuses the machine ({reason.rstrip('.')}): emulating (slower)")


def _kvm_runs_firmware(qemu: str, machine: str, firmware: Firmware, wait: float = 8.0) -> str | None:
    """None if OVMF under KVM prints on the serial console within ``wait`` seconds (or says
    nothing either way), else QEMU's error. The variable store is the read-only template in
    snapshot mode: nothing is written."""
    cmd = [qemu, "-machine", machine, "-cpu", "host", "-m", "256", "-nodefaults", "-display", "none",
           "-no-user-config", "-monitor", "none", "-serial", "stdio"]
    if firmware.secure_boot:
        cmd += ["-global", "driver=cfi.pflash01,property=secure,value=on"]
    cmd += ["-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={firmware.code}",
            "-drive", f"if=pflash,format=raw,unit=1,snapshot=on,file={firmware.vars_template}"]
    try:
        proc = spawn(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    except OSError as exc:
        return str(exc)
    try:
        os.set_blocking(proc.stdout.fileno(), False)
        os.set_blocking(proc.stderr.fileno(), False)
        err = b""
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            with contextlib.suppress(BlockingIOError, TypeError):
                if proc.stdout.read(4096):
                    return None
            with contextlib.suppress(BlockingIOError, TypeError):
                err += proc.stderr.read(4096) or b""
            if b"KVM internal error" in err or b"emulation failure" in err:
                return "KVM internal error, emulation failure"
            if proc.poll() is not None:
                lines = [ln for ln in err.decode(errors="replace").splitlines() if "warning" not in ln]
                return lines[-1] if lines else f"QEMU exit {proc.returncode}"
            time.sleep(0.05)
        return None
    finally:
        stop(proc)


@dataclass
class Machine:
    """What one VM run is made of; :meth:`command` is its QEMU command line."""

    qemu: str
    firmware: Firmware
    vars: Path
    esp: Path
    accel: Accel
    ext_disk: Path | None = None
    tpm_socket: Path | None = None
    memory_mib: int = 2048
    cpus: int = 2
    interactive: bool = False  # serial console and monitor on the terminal (else: stdout, no monitor)

    @property
    def cwd(self) -> Path | None:
        """Where QEMU runs: the TPM socket's folder, so its path stays short (see start_swtpm)."""
        return self.tpm_socket.parent if self.tpm_socket is not None else None

    def command(self) -> list[str]:
        smm = "on" if self.firmware.secure_boot else "off"
        cmd = [self.qemu, "-machine", f"q35,smm={smm},accel={self.accel.name}",
               "-cpu", "host" if self.accel.name == "kvm" else "max",
               "-m", str(self.memory_mib), "-smp", str(self.cpus), "-nodefaults", "-no-user-config",
               "-display", "none", "-vga", "none", "-no-reboot"]
        if self.firmware.secure_boot:
            cmd += ["-global", "driver=cfi.pflash01,property=secure,value=on",
                    "-global", "ICH9-LPC.disable_s3=1"]
        cmd += ["-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={self.firmware.code}",
                "-drive", f"if=pflash,format=raw,unit=1,file={self.vars.absolute()}",  # QEMU runs in cwd
                "-drive", f"if=none,id=esp,format=raw,file={self.esp.absolute()}",
                "-device", "virtio-blk-pci,drive=esp,bootindex=1"]
        if self.ext_disk is not None:
            cmd += ["-drive", f"if=none,id=exts,format=raw,readonly=on,file={self.ext_disk.absolute()}",
                    "-device", "virtio-blk-pci,drive=exts,serial=sysextant-exts"]
        if self.tpm_socket is not None:  # relative to :attr:`cwd` (see start_swtpm)
            cmd += ["-chardev", f"socket,id=chrtpm,path={self.tpm_socket.name}",
                    "-tpmdev", "emulator,id=tpm0,chardev=chrtpm", "-device", "tpm-tis,tpmdev=tpm0"]
        if self.interactive:
            cmd += ["-serial", "mon:stdio"]
        else:
            cmd += ["-chardev", "stdio,id=con,signal=off", "-serial", "chardev:con", "-monitor", "none"]
        return cmd


def _die_with_parent() -> None:
    """In the child before exec: be killed when the sysextant process dies, even by SIGKILL."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG


def spawn(cmd: list[str], *, interactive: bool = False, **kwargs) -> subprocess.Popen:
    """Start a VM process: its own process group unless it owns the terminal, killed with us."""
    return subprocess.Popen(cmd, preexec_fn=_die_with_parent, start_new_session=not interactive, **kwargs)


def stop(proc: subprocess.Popen | None, *, grace: float = 3.0) -> None:
    """Terminate ``proc`` (SIGTERM, then SIGKILL after ``grace`` seconds) and reap it."""
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait()


def start_swtpm(swtpm: str, state: Path) -> tuple[subprocess.Popen, Path]:
    """A TPM 2.0 emulator with its state in ``state``; returns it and the socket QEMU connects to.

    swtpm (and QEMU, see :attr:`Machine.cwd`) name the socket relative to ``state``: a Unix
    socket's path holds at most 107 bytes, which a long TMPDIR passes (swtpm then exits 1 without
    a word)."""
    state = state.absolute()
    state.mkdir(mode=0o700, exist_ok=True)
    sock = state / "swtpm.sock"
    log = state / "swtpm.log"
    proc = spawn([swtpm, "socket", "--tpm2", "--tpmstate", f"dir={state}", "--ctrl", f"type=unixio,path={sock.name}",
                  "--log", f"file={log},level=1", "--terminate"],
                 cwd=state, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 10
    while not sock.exists():
        if proc.poll() is not None:
            err = proc.stderr.read().decode(errors="replace").strip() if proc.stderr else ""
            raise UserError(f"swtpm did not start (exit {proc.returncode}): {err or 'no message'}")
        if time.monotonic() > deadline:
            stop(proc)
            raise UserError("swtpm did not open its socket within 10 s")
        time.sleep(0.05)
    return proc, sock
