"""``sysextant boot SPEC``: run the built UKI under Secure Boot in a VM (QEMU + OVMF), on the
terminal or, with ``--check``, read its console into stages and report them.

The engine is :mod:`sysextant.core.vm`; this module is only its argparse face and its report.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from sysextant.core.errors import UserError

DESCRIPTION = (
    "Boot the spec's UKI in QEMU with OVMF: a fresh firmware variable store with Secure Boot on and "
    "the spec's db certificate enrolled as PK, KEK and db, the UKI as EFI/BOOT/BOOTX64.EFI on a FAT "
    "ESP, the extension images on a second disk, a TPM (swtpm) when uki.pcr_key is set; KVM when it "
    "works, else TCG. Builds what changed first. Without --check the serial console is the terminal "
    "(Ctrl-A X quits). --check reads the console instead and reports each stage (firmware accepted, "
    "stub, kernel, /init, a target) with its evidence and time; --extensions boots a check build "
    "(the same UKI plus a few files under etc/) that merges the extensions from the second disk and "
    "reports systemd-sysext status, dm-verity, sample files, a moved kernel module and PCR 11. Exit "
    "code 0 only if every stage passed. Needs the Debian packages qemu-system-x86, ovmf, mtools, "
    "dosfstools, e2fsprogs, swtpm and the Python extra sysextant[vm] (virt-firmware)."
)


def add_boot_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``boot`` on the CLI's subparsers."""
    p = sub.add_parser("boot", help="boot the built UKI under Secure Boot in a VM and check each stage",
                       description=DESCRIPTION)
    p.add_argument("spec", help="the YAML spec file")
    p.add_argument("--check", action="store_true",
                   help="no terminal: read the console, report each stage, stop the VM (exit 1 if a stage failed)")
    p.add_argument("--extensions", action="store_true",
                   help="boot a check build that merges the extensions and checks them in the guest (implies --check)")
    p.add_argument("--uki", metavar="FILE", help="boot this UKI file instead of the spec's (no build)")
    p.add_argument("--image", action="append", metavar="FILE", dest="images",
                   help="put this extension image on the second disk instead of the spec's built ones (repeat for "
                        "more; e.g. one signed by another key: does it merge on this UKI?)")
    p.add_argument("--no-build", action="store_true", help="boot what is built as it is (default: build what changed)")
    p.add_argument("--timeout", type=float, default=300.0, metavar="SECONDS",
                   help="give up on a stage not reached after this long (default 300; emulation is slow)")
    p.add_argument("--console-log", metavar="FILE", help="keep the raw serial console in FILE")
    p.add_argument("--json", action="store_true", help="machine-readable report on stdout (implies --check)")
    p.set_defaults(func=cmd_boot)


def cmd_boot(args: argparse.Namespace) -> int:
    from sysextant.core.progress import Reporter
    from sysextant.core.vm.run import boot_spec
    from sysextant.tui.cli import TerminalProgress, _emit_json, _load

    check = args.check or args.extensions or args.json
    uki = Path(args.uki) if args.uki else None
    if uki is not None and not uki.is_file():
        raise UserError(f"--uki {uki} does not exist or is not a file")
    if uki is not None and args.extensions:
        raise UserError("--uki and --extensions do not go together: the check build is made from the spec")
    spec = _load(args.spec)
    reporter = Reporter(TerminalProgress(quiet=args.json))
    if not check:
        print("sysextant boot: the VM's serial console follows; Ctrl-A X quits QEMU", flush=True)
    result = boot_spec(spec, check=check, extensions=args.extensions, build_first=not args.no_build, uki=uki,
                       reporter=reporter, timeout=args.timeout,
                       console_log=Path(args.console_log) if args.console_log else None,
                       images=[Path(p) for p in args.images] if args.images else None)
    if not check:
        return 0
    if args.json:
        _emit_json({"spec": str(spec.path), **result.to_json()})
    else:
        print(render(result))
    return 0 if result.ok else 1


def render(result) -> str:
    """The text report: what ran, one line per stage, the verdict; the console's end on failure."""
    lines = [f"boot {result.label}: {result.uki}",
             f"  {result.accel.name.upper()} ({result.accel.why})",
             "  Secure Boot " + ("on (the spec's db certificate as PK, KEK and db)" if result.secure_boot else "off")
             + (" · TPM 2.0 (swtpm)" if result.tpm else "")]
    width = max((len(s.title) for s in result.stages), default=10)
    for s in result.stages:
        mark = {"passed": "ok", "failed": "FAIL", "skipped": "skip"}.get(s.status, s.status)
        when = f"{s.seconds:6.1f} s" if s.seconds is not None else "       -"
        text = s.evidence if s.status == "passed" and not s.key.startswith("check:") else (s.note or s.evidence)
        if s.status == "passed" and s.note and not s.key.startswith("check:"):
            text = f"{s.evidence}  ({s.note})"
        lines.append(f"  {mark:>4}  {when}  {s.title:<{width}}  {text[:160]}")
    for note in result.notes:
        lines.append(f"  note: {note}")
    if not result.ok:
        if result.guest_log:
            lines.append("  what the guest printed:")
            lines += [f"    | {ln}" for ln in result.guest_log[-30:]]
        lines.append("  last console lines:")
        lines += [f"    | {ln[:200]}" for ln in result.console_tail[-15:]]
    verdict = "BOOTED: every stage passed" if result.ok else f"FAILED ({result.ended})"
    lines.append(f"{verdict} in {result.seconds:.1f} s")
    return "\n".join(lines)
