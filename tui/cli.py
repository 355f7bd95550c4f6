"""The ``sysextant`` command line: headless front end over :mod:`sysextant.core`.

Every command prints one clear line and exits non-zero on a user error (bad spec, missing file,
missing tool); ``--json`` gives machine-readable output. Textual is imported only when the
workbench is opened, so headless commands start fast and run where no terminal UI is wanted.
"""

from __future__ import annotations

if __name__ == "__main__":  # python -m sysextant.tui.cli: a stop while loading gives one line, not a traceback
    from sysextant.tui.entry import guard_startup

    guard_startup()

import argparse  # noqa: E402 - after the guard
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from sysextant.core.errors import Cancelled, UserError
from sysextant.core.progress import Progress, Reporter, clear_stop, request_stop, stop_requested
from sysextant.core.units import failing_verdict, format_size
from sysextant.tui.bootcmd import add_boot_parser
from sysextant.tui.entry import stopped

COMMANDS = ("init", "scan", "plan", "boot-set", "demo", "open", "build", "uki", "verify", "boot", "images", "diff")


# -- output helpers ----------------------------------------------------------------------------
class TerminalProgress:
    """A one-line progress bar on a terminal, plain lines otherwise (CI logs)."""

    def __init__(self, stream=None, *, quiet: bool = False) -> None:
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.quiet = quiet
        self._last_task = ""
        self._last_draw = 0.0
        self._last_pct: dict[str, int] = {}

    def __call__(self, ev: Progress) -> None:
        if self.quiet:
            return
        if ev.message:
            self._clear()
            print(f"{ev.task}: {ev.message}", file=self.stream, flush=True)
            return
        if not ev.total:
            return
        label = _label(ev)
        pct = min(100, int(ev.done * 100 / ev.total))
        if self.tty:
            now = time.monotonic()
            if now - self._last_draw < 0.1 and ev.done < ev.total:
                return
            self._last_draw = now
            width = 30
            filled = int(width * pct / 100)
            amount = (f"{format_size(ev.done)}/{format_size(ev.total)}" if ev.unit == "bytes"
                      else f"{ev.done}/{ev.total} {ev.unit}")
            line = f"\r{label[:40]:<40} [{'#' * filled}{'.' * (width - filled)}] {pct:3d}% {amount}"
            self.stream.write(line[:120].ljust(120))
            self.stream.flush()
            self._last_task = label
            if ev.done >= ev.total:
                self.stream.write("\n")
                self._last_task = ""
        else:
            step = pct // 25 * 25
            if self._last_pct.get(label, -1) < step:
                self._last_pct[label] = step
                print(f"{label}: {step}%", file=self.stream, flush=True)

    def _clear(self) -> None:
        if self.tty and self._last_task:
            self.stream.write("\r" + " " * 120 + "\r")
            self._last_task = ""


def _label(ev: Progress) -> str:
    """What a progress line calls the work: the artefact and its stage in the build screen's
    words (from the event's fields), else the engine's task text (steps of no artefact)."""
    from sysextant.core.build.tracker import STAGE_LABELS

    if ev.artefact and ev.stage:
        return f"{ev.artefact}: {STAGE_LABELS.get(ev.stage, ev.stage)}"
    return ev.task


def _emit_json(data: object) -> None:
    json.dump(data, sys.stdout, indent=2, sort_keys=False)
    sys.stdout.write("\n")


def _load(spec_path: str):
    from sysextant.core.spec.load import load_spec

    return load_spec(Path(spec_path))


# -- commands ----------------------------------------------------------------------------------
def cmd_scan(args: argparse.Namespace) -> int:
    from sysextant.core.tree.index import scan

    t0 = time.perf_counter()
    index = scan(_tree_of(Path(args.root), args))
    elapsed = time.perf_counter() - t0
    counts = index.counts()
    problems = [str(p) for p in index.problems]
    if args.json:
        _emit_json({"root": os.fsdecode(index.root), **counts, "seconds": round(elapsed, 3), "problems": problems})
        return 0
    print(f"{os.fsdecode(index.root)}: {counts['entries']:,} entries ({counts['files']:,} files, "
          f"{counts['dirs']:,} folders, {counts['symlinks']:,} symlinks, {counts['special']:,} special) "
          f"in {elapsed:.2f} s")
    print(f"  apparent  {format_size(counts['apparent_bytes']):>10}  ({counts['apparent_bytes']:,} bytes)")
    print(f"  allocated {format_size(counts['allocated_bytes']):>10}  ({counts['allocated_bytes']:,} bytes)")
    print(f"  newc cpio {format_size(counts['cpio_bytes']):>10}  ({counts['cpio_bytes']:,} bytes, whole tree)")
    top = sorted(index.children(0), key=lambda c: -index.tot_size[c])[: args.top]
    if top:
        print("  largest top-level entries:")
        for c in top:
            print(f"    {format_size(index.tot_size[c]):>10}  {os.fsdecode(index.names[c])}")
    for p in problems[:20]:
        print(f"  warning: {p}")
    if len(problems) > 20:
        print(f"  ... and {len(problems) - 20} more unreadable entries")
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    from sysextant.core.sizing.forecast import UkiLayout, describe, extension_savings, forecast
    from sysextant.core.sizing.forecaster import Forecaster
    from sysextant.core.sizing.plan import plan_spec

    spec = _load(args.spec)
    result = plan_spec(spec)
    layout = UkiLayout(spec, result.index)
    estimator = None
    if not args.no_estimate and spec.uki.compression != "none":
        # --refine: every group at the build's own level, as slow as the build's compression
        estimator = Forecaster(spec, result).run(_reporter(args), refine=args.refine)
    if args.fit is not None:
        return _plan_fit(args, spec, result, layout, estimator)
    fig = forecast(spec, result, layout, estimator)
    saves = extension_savings(result, layout, estimator)
    if args.json:
        data = result.to_json()
        for ext in data["extensions"]:
            ext["saves_bytes"] = saves[ext["name"]]
        data["uki"] = {
            "predicted_bytes": fig.uki_bytes, "low_bytes": fig.uki_low, "high_bytes": fig.uki_high,
            "limit_bytes": fig.limit, "limit": fig.limit_text, "verdict": fig.verdict, "over_by_bytes": fig.over_by,
            "initrd_compressed_estimate": fig.initrd_bytes if fig.estimated else None,
            "initrd_bytes": fig.initrd_bytes, "estimated": fig.estimated, "method": fig.method,
            "layout_exact": layout.exact,
        }
        if result.problems:  # no verdict while a problem stands (a missing kernel is not "ok, 8 MiB")
            data["uki"]["verdict"] = None
        _emit_json(data)
    else:
        print(result.render())
        for name, saved in saves.items():
            print(f"  {name} takes {format_size(saved)} off the UKI" + (" (estimate)" if estimator else " (uncompressed)"))
        if result.problems:
            print(f"UKI: no verdict while the {len(result.problems)} problem(s) above stand")
        else:
            if failing_verdict(fig.verdict):
                print(f"FAILED: the UKI would be {fig.verdict} its limit {fig.limit_label}")
            print(describe(fig))
            if fig.estimated:
                print(f"  initrd {format_size(fig.initrd_bytes)} compressed ({fig.method})")
        for note in layout.notes:
            print(f"  note: {note}")
    return 1 if result.problems or failing_verdict(fig.verdict) else 0


def cmd_init(args: argparse.Namespace) -> int:
    from sysextant.core.workbench.starter import write_starter

    spec = Path(args.spec_path or args.spec)
    found = write_starter(Path(args.root), spec, key=Path(args.key) if args.key else None,
                          cert=Path(args.cert) if args.cert else None, limit=args.limit, reporter=_reporter(args))
    print(f"wrote {spec}: boot profile {found.profile}, kernel {found.kernel or '(not found)'}, "
          f"init {found.init or 'the tree' + chr(39) + 's own /init'}")
    for note in found.notes:
        print(f"  note: {note}")
    if args.no_tui or not (sys.stdin.isatty() and sys.stdout.isatty()):
        print(f"next: mark what leaves the UKI with `sysextant {spec}`, or edit it and run `sysextant plan {spec}`")
        return 0
    return _open_workbench(spec)


def _plan_fit(args: argparse.Namespace, spec, result, layout, estimator) -> int:
    """`plan --fit [LIMIT]`: propose the moves that bring the UKI under the limit; --apply writes them."""
    from sysextant.core.sizing.fit import apply_fit, propose_fit
    from sysextant.core.spec.edit import save_text_atomic
    from sysextant.core.spec.load import loads_spec, read_spec_text
    from sysextant.core.units import SizeError, parse_size

    limit, text = None, None
    if args.fit:
        try:
            limit, text = parse_size(args.fit, allow_presets=True), args.fit
        except SizeError as exc:
            raise UserError(f"--fit {args.fit}: {exc}") from None
    if not 0 <= args.margin < 50:
        raise UserError(f"--margin {args.margin}: a share of the limit in percent, from 0 to 50")
    fit = propose_fit(spec, result, layout, estimator, limit=limit, limit_text=text, margin=args.margin / 100,
                      junk=not args.no_os_exclude)
    written = False
    if args.apply and (fit.extensions or fit.os_exclude):
        new_text = apply_fit(read_spec_text(spec.path), spec.path, spec, fit)
        loads_spec(new_text, spec.path)  # the proposal reads back as a valid spec before it is saved
        save_text_atomic(spec.path, new_text)
        written = True
    if args.json:
        _emit_json({"spec": str(spec.path), "fit": fit.to_json(), "written": written})
    else:
        print(fit.render())
        if written:
            print(f"written to {spec.path} (comments kept); `sysextant plan {spec.path}` checks it, "
                  f"`sysextant build {spec.path}` builds it")
        elif fit.extensions or fit.os_exclude:
            print(f"a preview: `sysextant plan {spec.path} --fit{' ' + args.fit if args.fit else ''} --apply` "
                  "writes it into the spec")
    return 0 if fit.reached else 1


def cmd_boot_set(args: argparse.Namespace) -> int:
    from sysextant.core.sizing.bootset import boot_set
    from sysextant.core.tree.index import scan

    spec = _load(args.spec)
    index = scan(spec.os.root)
    boot = boot_set(spec, index)
    if args.json:
        _emit_json({"spec": str(spec.path), "root": os.fsdecode(index.root), **boot.to_json()})
        return 0
    print(f"boot set of {os.fsdecode(index.root)}: {len(boot.entries):,} entries must stay in the UKI "
          f"(profile {boot.profile}, {boot.profile_source}; {boot.seconds * 1000:.0f} ms)")
    by_kind: dict[str, list[int]] = {}
    for k, r in sorted(boot.reasons.items()):
        if k in boot.entries:
            by_kind.setdefault(r.kind, []).append(k)
    titles = {"kernel": "kernel", "init": "the init and the links to it", "program": "programs run before the merge",
              "library": "libraries and interpreters they load", "data": "data read before the merge (whole folders)",
              "module": "kernel modules needed before the merge", "module-index": "modules index files",
              "keep": "boot.keep"}
    for kind, title in titles.items():
        ks = by_kind.get(kind, [])
        if not ks:
            continue
        print(f"\n{title} ({len(ks):,}):")
        for k in ks[: None if args.all else 40]:
            n = boot.count(k)
            print(f"  {boot.chain(k)}" + (f"  [{n:,} entries]" if n > 1 else ""))
        if not args.all and len(ks) > 40:
            print(f"  ... and {len(ks) - 40:,} more (--all lists every one)")
    if boot.soft:
        print(f"\nfirmware kept modules load (moving it is a warning) ({len(boot.soft):,}):")
        for k in list(boot.soft.indices())[: None if args.all else 40]:
            print(f"  {boot.chain(k)}")
    for k, why in boot.waived:
        print(f"waived by boot.allow: {os.fsdecode(index.path(k))}: {why}")
    for name, by in boot.missing[:20]:
        print(f"warning: {name} (needed by {by}) resolves nowhere in the tree")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from sysextant.core.demo import create_demo

    target = Path(args.dir)
    existing = target / "sysextant.yaml"
    if existing.is_file() and (target / "rootfs").is_dir():  # run again: open what is there
        print(f"{target} already holds a demo project: opening {existing}")
        return 0 if args.no_tui else _open_workbench(existing)
    reporter = Reporter(TerminalProgress(quiet=args.quiet))
    spec = create_demo(target, reporter=reporter, scale=args.scale)
    print(f"demo project written: {spec}")
    print(f"  OS tree (stand-in): {target / 'rootfs'}")
    print(f"  demo db key pair:   {target / 'keys'} (self-signed, for the demo only)")
    if args.no_tui:
        print(f"next: sysextant plan {spec}   |   sysextant build {spec}   |   sysextant {spec}")
        return 0
    return _open_workbench(spec)


def _open_workbench(spec: Path) -> int:
    # the workbench runs its builds in worker threads and cancels them itself when it quits; a
    # SIGTERM raised into its event loop would only tear the terminal down half-way
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_DFL)
    from sysextant.tui.app import run_workbench

    return run_workbench(spec)


def _tree_of(root: Path, args: argparse.Namespace) -> Path:
    """The folder to scan: ``root`` itself, or the flattened tree of the container image it names
    (flattened now with progress, or found in the image cache)."""
    from sysextant.core.tree.oci import tree_folder

    return tree_folder(root, reporter=_reporter(args))


def _image_spec(image: Path, args: argparse.Namespace) -> Path:
    """`sysextant open IMAGE`: the spec beside the image (``NAME.sysextant.yaml``), written as a
    starter spec the first time."""
    from sysextant.core.workbench.starter import write_starter

    stem = image.name
    for suffix in (".tar.gz", ".tgz", ".tar.zst", ".tar"):
        if stem.endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    spec = image.parent / f"{stem or 'image'}.sysextant.yaml"
    if not spec.exists():
        write_starter(image, spec, reporter=_reporter(args))
        print(f"wrote {spec} for {image}", file=sys.stderr)
    return spec


def cmd_open(args: argparse.Namespace) -> int:
    spec = Path(args.spec)
    from sysextant.core.tree.oci import is_image_path

    if is_image_path(spec) and not spec.name.endswith((".yaml", ".yml")):
        spec = _image_spec(spec, args)
    if not spec.exists():
        raise UserError(f"spec {spec} does not exist; `sysextant demo` writes an example project")
    return _open_workbench(spec)


def _reporter(args: argparse.Namespace) -> Reporter:
    return Reporter(TerminalProgress(quiet=getattr(args, "json", False) or getattr(args, "quiet", False)))


def cmd_images(args: argparse.Namespace) -> int:
    from sysextant.core.tree.oci import cache_root, cached_images, clean_cache

    if args.clean:
        count, freed = clean_cache()
        if args.json:
            _emit_json({"cache": str(cache_root()), "removed": count, "freed_bytes": freed})
        else:
            print(f"{cache_root()}: removed {count} flattened image(s), {format_size(freed)} freed")
        return 0
    found = cached_images()
    if args.json:
        _emit_json({"cache": str(cache_root()), "images": found})
        return 0
    print(f"{cache_root()}: {len(found)} flattened image(s)")
    for info in found:
        print(f"  {format_size(info['disk_bytes']):>10}  {info.get('image', '?')}  ({info.get('format', '?')}, "
              f"{info.get('platform') or 'no platform'}, {info.get('entries', '?')} entries"
              f"{'' if info.get('privileged') else ', flattened without root'})")
    return 0


def cmd_diff(args: argparse.Namespace) -> int:
    from sysextant.core.sizing.merge import read_hierarchies
    from sysextant.core.tree.index import scan
    from sysextant.core.tree.treediff import diff_trees

    if args.build:
        return _diff_build(args)
    base = scan(_tree_of(Path(args.base), args))
    derived = scan(_tree_of(Path(args.derived), args))
    hier = read_hierarchies(base)  # what the booted base OS merges
    found = diff_trees(base, derived, hier.covers, above=hier.above, reporter=_reporter(args))
    problems, warnings = found.problems(hier.covers), found.warnings(hier.covers)
    if args.json:
        _emit_json({"base": args.base, "derived": args.derived, "hierarchies": list(hier.paths),
                    "hierarchies_source": hier.source, "carried_bytes": found.carried_bytes,
                    "carried": [c.to_json() for c in found.carried], "outside": [c.to_json() for c in found.outside],
                    "deleted": [c.to_json() for c in found.deleted], "problems": problems, "warnings": warnings})
        return 1 if problems else 0
    print(f"{args.derived} over {args.base}: merged hierarchies from {hier.source}")
    print(f"  a system extension would carry {len(found.carried):,} entries, {format_size(found.carried_bytes)}")
    marks = {"added": "+", "changed": "~", "deleted": "-"}
    for c in sorted(found.carried, key=lambda c: -c.bytes)[: args.top]:
        print(f"    {marks[c.kind]} {format_size(c.bytes):>10}  {c.path}{f'  ({c.what})' if c.what else ''}")
    if len(found.carried) > args.top:
        print(f"    ... and {len(found.carried) - args.top} more (--top N, or --json)")
    for p in problems:
        print(f"  problem: {p}")
    for w in warnings:
        print(f"  warning: {w}")
    return 1 if problems else 0


def _diff_build(args: argparse.Namespace) -> int:
    """`diff BASE DERIVED --build NAME`: the difference as a signed, verified NAME.sysext.raw."""
    from sysextant.core.build.fromimages import build_from_images
    from sysextant.core.keys import load_signer
    from sysextant.core.rules import extension_name_problem
    from sysextant.core.spec.model import FILESYSTEMS, ExtensionSpec

    why = extension_name_problem(args.build)
    if why:
        raise UserError(f"--build {args.build}: {why}")
    if (args.key is None) != (args.cert is None):
        raise UserError("give both --key and --cert (the db key pair), or neither for an unsigned image")
    if args.filesystem not in FILESYSTEMS:
        raise UserError(f"--filesystem {args.filesystem}: choose one of {', '.join(FILESYSTEMS)}")
    signer = load_signer(Path(args.key), Path(args.cert)) if args.key else None
    ext = ExtensionSpec(name=args.build, version=args.version, filesystem=args.filesystem,
                        release={"ID": "_any", "ARCHITECTURE": args.architecture})
    done = build_from_images(Path(args.base), Path(args.derived), ext, Path(args.output), signer=signer,
                             cert=Path(args.cert) if args.cert else None, reporter=_reporter(args))
    if args.json:
        _emit_json({"image": str(done.path), "entries": done.entries, "bytes": done.bytes,
                    "root_hash": done.root_hash, "signed": done.signed, "ok": done.check.ok,
                    "checks": done.check.as_dict()["checks"], "warnings": done.warnings})
    else:
        for w in done.warnings:
            print(f"warning: {w}")
        print(f"{done.path}: {done.entries:,} entries, {format_size(done.bytes)}, "
              f"{'signed' if done.signed else 'unsigned'}, root hash {done.root_hash}")
        for c in done.check.failed():
            print(f"FAIL  {c.name}: {c.detail}")
        print("verified: sound" if done.check.ok else "verified: NOT sound")
    return 0 if done.check.ok else 1


def cmd_build(args: argparse.Namespace) -> int:
    from sysextant.core.build.pipeline import build, render

    spec = _load(args.spec)
    report = build(spec, only=args.only or None, force=args.force, reporter=_reporter(args), wait=not args.no_wait)
    if args.json:
        _emit_json(report.to_json())
    else:
        print(render(report))
    return 0 if report.ok else 1


def cmd_uki(args: argparse.Namespace) -> int:
    from sysextant.core.build.pipeline import build, render

    spec = _load(args.spec)
    report = build(spec, only=["uki"], force=args.force, reporter=_reporter(args), wait=not args.no_wait)
    art = report.artefacts[-1]
    if args.json:
        _emit_json({"path": art.path, "predicted_bytes": art.predicted_size, "actual_bytes": art.size,
                    "limit_bytes": report.limit_bytes, "verdict": report.verdict, "signed": art.signed,
                    "verified": art.verified, "reused": art.reused, "sha256": art.digest, **art.extra})
    else:
        print(render(report))
    return 0 if report.ok else 1


def cmd_verify(args: argparse.Namespace) -> int:
    image = Path(args.image)
    cert = Path(args.cert) if args.cert else None
    if not image.is_file():
        raise UserError(f"{image} does not exist or is not a file")
    if cert is not None and not cert.is_file():
        raise UserError(f"certificate {cert} does not exist")
    from sysextant.core.build.verify import verify_artefact

    report = verify_artefact(image, cert)
    result = {"image": str(image), "kind": report.kind, **report.as_dict()}
    checks, ok = result["checks"], report.ok
    if args.json:
        _emit_json(result)
    else:
        for c in checks:
            print(f"{'ok' if c['ok'] else 'FAIL':>4}  {c['name']:<18} {c['detail']}")
        print(f"{image}: {'sound' if ok else 'NOT sound'}" + ("" if cert else " (signature not checked: no --cert)"))
    return 0 if ok else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sysextant",
        description="Carve signed systemd system extensions out of an OS tree and keep the Kairos UKI "
                    "under the firmware limit. `sysextant SPEC` opens the workbench on a spec.",
    )
    from sysextant import __version__

    parser.add_argument("--version", action="version", version=f"sysextant {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("init", help="write a starter spec for an OS tree (kernel, init, boot profile detected)",
                       description="Write a commented starter spec for ROOT: the kernel, the init the UKI "
                                   "starts and the boot profile (kairos, systemd, none) are detected inside the "
                                   "tree; every other value is the default, written out. Never overwrites a file. "
                                   "Then opens the workbench on it (on a terminal, unless --no-tui).")
    p.add_argument("root", help="the OS tree (a folder) or a container image (docker save, OCI layout or archive)")
    p.add_argument("spec_path", nargs="?", metavar="SPEC", help="where to write the spec (default: sysextant.yaml)")
    p.add_argument("--spec", default="sysextant.yaml", help=argparse.SUPPRESS)  # the same, as an option
    p.add_argument("--no-tui", action="store_true", help="only write the spec (the workbench opens on a terminal)")
    p.add_argument("--key", help="the db signing key (PEM); with --cert")
    p.add_argument("--cert", help="the db certificate (PEM); with --key")
    p.add_argument("--limit", help="the firmware's size limit (a size such as 800MiB, or a preset)")
    p.set_defaults(func=cmd_init)

    p = sub.add_parser("scan", help="index an OS tree and print its totals",
                       description="Scan an OS tree (lstat only, symlinks never followed, hardlinks once) "
                                   "and print entries, apparent, allocated and newc cpio bytes.")
    p.add_argument("root", help="the OS tree (a folder) or a container image (flattened into the image cache)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--top", type=int, default=8, help="how many of the largest top-level entries to list")
    p.set_defaults(func=cmd_scan)

    p = sub.add_parser("plan", help="what each extension takes and the UKI size that results",
                       description="Apply a spec to its OS tree: per extension entries and bytes, the initrd "
                                   "before and after, the predicted UKI size against the firmware limit, "
                                   "and every problem found. Exit code 1 when the spec has problems or the "
                                   "UKI would be over its limit.")
    p.add_argument("spec", help="the YAML spec file")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--no-estimate", action="store_true",
                   help="skip the compressed-size estimate: exact uncompressed figures only, in a second")
    p.add_argument("--refine", action="store_true",
                   help="compress every part of the initrd at the build's level for an estimate within about 1%% "
                        "(takes as long as the build's compression; the result is cached for later plans)")
    p.add_argument("--fit", nargs="?", const="", metavar="LIMIT",
                   help="propose the moves (extensions by package or folder, os.exclude of caches) that bring the "
                        "UKI under LIMIT (a size or preset; default uki.limit) with a margin; a preview")
    p.add_argument("--margin", type=float, default=3.0, metavar="PCT",
                   help="with --fit: room kept under the limit for the estimate's upper band, in %% (default 3)")
    p.add_argument("--apply", "--write", action="store_true",
                   help="with --fit: write the proposal into the spec (comments kept)")
    p.add_argument("--no-os-exclude", action="store_true",
                   help="with --fit: do not propose os.exclude of package caches, logs and stale kernels' modules")
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("boot-set", help="what must stay in the UKI for the system to boot, with the reasons",
                       description="Every entry of the spec's OS tree that must stay in the UKI (the init, what "
                                   "runs before the extensions are merged and the libraries it loads, the kernel "
                                   "modules needed to reach the disk, boot.keep), each with its chain of reasons. "
                                   "boot.profile (kairos | systemd | none) is detected when the spec has none.")
    p.add_argument("spec", help="the YAML spec file")
    p.add_argument("--all", action="store_true", help="list every entry (default: 40 per group)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_boot_set)

    p = sub.add_parser("demo", help="write the built-in demo project and open it",
                       description="Write a demo project (spec, a Kairos-like stand-in OS tree, a fresh "
                                   "self-signed demo db key pair) into DIR and open it in the workbench.")
    p.add_argument("dir", nargs="?", default="sysextant-demo", help="folder to create (default: sysextant-demo)")
    p.add_argument("--no-tui", action="store_true", help="only write the project")
    p.add_argument("--scale", type=float, default=1.0, help=argparse.SUPPRESS)
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("build", help="build, sign and verify the extension images and the slimmed UKI",
                       description="Build every extension image (EROFS/squashfs, dm-verity, signature) and the "
                                   "slimmed signed UKI into the spec's output folder, then verify each artefact. "
                                   "Unchanged artefacts are reused; artefacts of extensions no longer in the spec "
                                   "are removed. Exit code 1 if any check fails or the UKI is over its limit.")
    p.add_argument("spec", help="the YAML spec file")
    p.add_argument("--only", action="append", metavar="NAME",
                   help="build only this extension (repeatable); 'uki' names the UKI")
    p.add_argument("--force", action="store_true", help="rebuild even what is unchanged")
    p.add_argument("--no-wait", action="store_true",
                   help="refuse at once if another build is writing the same output folder (default: wait)")
    p.add_argument("--json", action="store_true", help="machine-readable summary on stdout")
    p.set_defaults(func=cmd_build)

    p = sub.add_parser("uki", help="build only the slimmed, signed UKI and compare it with the prediction")
    p.add_argument("spec", help="the YAML spec file")
    p.add_argument("--force", action="store_true", help="rebuild even if unchanged")
    p.add_argument("--no-wait", action="store_true",
                   help="refuse at once if another build is writing the same output folder (default: wait)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_uki)

    p = sub.add_parser("verify", help="check a sysext image or a UKI independently of how it was built",
                       description="Check GPT, partition types and UUIDs, the dm-verity tree, the signature "
                                   "(with --cert) and the extension's content rules of a .sysext.raw image, "
                                   "or the PE layout and Authenticode signature of a UKI. Exit code 0 only "
                                   "when every check passes.")
    p.add_argument("image", help="a NAME.sysext.raw image or a UKI (.efi)")
    p.add_argument("--cert", help="the db certificate (PEM) the signature must verify against")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("open", help="open the workbench on a spec (same as `sysextant SPEC`)")
    p.add_argument("spec", help="the YAML spec file, or a container image (a starter spec NAME.sysextant.yaml "
                                "is written beside it the first time)")
    p.set_defaults(func=cmd_open)

    p = sub.add_parser("diff", help="what a derived OS tree or image adds over its base, as a system extension sees it",
                       description="Compare two OS trees or container images by content (not by layer): what the "
                                   "derived one adds or changes under the hierarchies the base merges (what a system "
                                   "extension can carry), what it changes elsewhere (warnings: /etc cannot be "
                                   "carried) and what it deletes (a system extension cannot delete: problems). "
                                   "Exit code 1 when there are problems.")
    p.add_argument("base", help="the base OS tree or image (e.g. the Kairos image)")
    p.add_argument("derived", help="the derived OS tree or image (FROM the base, plus an application)")
    p.add_argument("--top", type=int, default=30, help="how many carried entries to list (largest first)")
    p.add_argument("--build", metavar="NAME",
                   help="build the difference as a signed, verified NAME.sysext.raw (no spec needed)")
    p.add_argument("--key", help="with --build: the db signing key (PEM)")
    p.add_argument("--cert", help="with --build: the db certificate (PEM)")
    p.add_argument("--output", default=".", help="with --build: the folder for NAME.sysext.raw (default: here)")
    p.add_argument("--filesystem", default="erofs", help="with --build: erofs (default) or squashfs")
    p.add_argument("--version", default="1.0", help="with --build: the extension's version (default 1.0)")
    p.add_argument("--architecture", default="x86-64", help="with --build: its ARCHITECTURE (default x86-64)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_diff)

    p = sub.add_parser("images", help="list the flattened container images in the cache, or clean it",
                       description="Container images named by os.root (docker save, OCI layout or archive, "
                                   "docker export tars) are flattened once into a cache keyed by the image's "
                                   "digest ($SYSEXTANT_IMAGE_CACHE, else ~/.cache/sysextant/images).")
    p.add_argument("--clean", action="store_true", help="remove every flattened image (the next open flattens again)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_images)
    add_boot_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and not argv[0].startswith("-") and argv[0] not in COMMANDS:
        argv.insert(0, "open")  # `sysextant SPEC`
    cooperative = bool(argv) and argv[0] in COOPERATIVE
    previous = _handle_stop_signals(cooperative)
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if not getattr(args, "command", None):
            parser.print_help()
            return 2
        return args.func(args)
    except (Terminated, Cancelled, KeyboardInterrupt) as exc:
        line, code = stopped(exc.signum if isinstance(exc, Terminated)
                             else None if isinstance(exc, KeyboardInterrupt) else stop_requested())
        print(line, file=sys.stderr)
        return code
    except UserError as exc:
        print(f"sysextant: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return 1
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


class Terminated(Cancelled):
    """A stop signal that must act at once (a second one, or a command with no cancel checks)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


#: commands whose long work polls a Reporter's cancel check: a first Ctrl-C, SIGTERM or SIGHUP asks
#: them to stop there (where every temp file is removed by the code that made it); a second one
#: stops at once. Other commands stop at once on the first.
COOPERATIVE = ("build", "uki", "plan", "demo")


def _handle_stop_signals(cooperative: bool) -> dict[int, object]:
    """SIGINT (Ctrl-C), SIGTERM (a service manager, CI's timeout, `kill`) and SIGHUP (a closed
    terminal) all stop a command cleanly. Returns the old handlers."""
    def stop(signum: int, frame: object) -> None:
        if cooperative and stop_requested() is None:
            request_stop(signum)
            print(f"sysextant: {signal.Signals(signum).name}: stopping at the next safe point "
                  "(send it again to stop at once)", file=sys.stderr, flush=True)
            return
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise Terminated(signum)

    clear_stop()
    previous = {}
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        with contextlib.suppress(ValueError):  # not the main thread (an embedding program)
            previous[signum] = signal.signal(signum, stop)
    return previous


if __name__ == "__main__":
    sys.exit(main())
