"""The build pipeline: every extension image and the slimmed UKI, signed, verified, reused when
unchanged. The CLI (`sysextant build`) and the workbench (`b`) both run :func:`build`.

Order: check keys and tools (before any work), scan and plan (refuse a spec with problems),
build each extension whose inputs changed, build the UKI, verify every artefact with the
independent checkers, record the inputs for the next build. Outputs appear atomically; a
cancelled or failed build leaves the previous good outputs in place.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..atomic import disk_error, ensure_folder, folder_error, stale_temps
from ..errors import UserError
from ..formats.authenticode import signature_length
from ..formats.mkfs import find_tool
from ..keys import PcrKey, Signer, load_pcr_key, load_signer
from ..progress import Reporter
from ..sizing.forecast import UkiLayout, forecast
from ..sizing.forecaster import Forecaster
from ..sizing.plan import Plan, make_plan
from ..spec.model import Spec
from ..spec.outputs import LOCK_FILE, output_problems
from ..tree.index import TreeIndex, scan
from ..units import THRESHOLDS, format_size
from .artefacts import Artefact, BuildReport, load_state, owned_file, record, reusable, save_state
from .sysext import build_extension, collect_entries
from .sysext import inputs_digest as extension_inputs
from .ukibuild import build_slim_uki
from .ukibuild import inputs_digest as uki_inputs
from .verify import verify_image, verify_uki

__all__ = ["Artefact", "BuildReport", "build", "render", "deploy_notes", "build_lock", "remove_stale_temps"]


def _needed_tools(spec: Spec, names: Sequence[str]) -> None:
    """Fail before any work when an extension needs a tool this machine lacks (same lookup as the build)."""
    for ext in spec.extensions:
        if ext.name not in names:
            continue
        if ext.filesystem == "squashfs":
            find_tool("mksquashfs", "squashfs-tools", f"for the squashfs image of extension {ext.name}")
        if ext.filesystem == "erofs" and ext.compression != "none":
            find_tool("mkfs.erofs", "erofs-utils", f"for the {ext.compression}-compressed EROFS image "
                      f"of extension {ext.name} (or set compression: none)")


def deploy_notes(spec: Spec, artefacts: Sequence[Artefact]) -> list[str]:
    """How these files reach a Kairos system (kairos-agent sysext, auroraboot's --overlay-iso)."""
    notes: list[str] = []
    images = [a for a in artefacts if a.kind == "sysext"]
    uki = next((a for a in artefacts if a.kind == "uki"), None)
    if images:
        notes.append("On a running Kairos system (the images land in /var/lib/kairos/extensions/):")
        for a in images:
            notes.append(f"  kairos-agent sysext install file://{a.path}")
            notes.append(f"  kairos-agent sysext enable --common {a.name}   # add --now to merge at once")
        notes.append("On install media: put the images at the ISO root, e.g. an overlay folder for")
        notes.append(f"  auroraboot build-uki --overlay-iso DIR   (DIR/{{{','.join(a.name for a in images)}}}.sysext.raw)")
        if spec.signing:
            notes.append(f"  The images are signed with {spec.signing.cert.name}; trusted boot merges them when that "
                         "certificate is in the firmware db (Kairos copies it to /etc/verity.d).")
        else:
            notes.append("  The images are UNSIGNED: trusted boot (UKI) systems refuse to merge them.")
    if uki:
        notes.append(f"UKI: {uki.path} is the slimmed, {'signed ' if uki.signed else 'UNSIGNED '}Kairos boot image; "
                     "use it where build-uki's EFI file would go.")
    if spec.signing is not None and any(a.signed for a in artefacts):
        name = spec.signing.cert.name
        notes.append(f"If the firmware's db does not hold {name} yet, Secure Boot refuses the UKI. To put it there:")
        notes.append("  Kairos: boot install media made by auroraboot build-uki with the same keys (auroraboot "
                     "genkey's PK, KEK and db) while the firmware is in Setup Mode (Secure Boot keys cleared); "
                     "systemd-boot enrols them (build-uki --secure-boot-enroll: at once where that is safe, else "
                     "from the boot menu)")
        notes.append(f"  or by hand: the firmware setup's key management adds {name} to db (most want DER: "
                     f"openssl x509 -in {name} -outform der -out db.der)")
    return notes


def _same_tree(old: TreeIndex, new: TreeIndex) -> str | None:
    """None when ``new`` (scanned for the build) matches ``old`` (what the front end showed), else
    one line saying what changed."""
    a, b = old.counts(), new.counts()
    if a == b:
        return None
    delta = b["apparent_bytes"] - a["apparent_bytes"]
    return (f"the OS tree changed since it was scanned: {b['entries']:,} entries now (was {a['entries']:,}), "
            f"{format_size(delta, signed=True)} apparent; the build packs the tree as it is now and the "
            "figures shown before it are out of date")


@contextlib.contextmanager
def build_lock(out: Path, *, wait: bool = True, reporter: Reporter | None = None) -> Iterator[None]:
    """Hold the output folder's lock for a build: a second build of the same folder waits (saying
    so, and still cancellable) or, with ``wait=False``, refuses. The lock file keeps the holder's
    pid for the message; the lock itself is flock(2), released by the kernel if the holder dies."""
    path = out / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    except OSError as exc:
        raise folder_error(out, exc, path, label="output folder") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            if not wait:
                raise UserError(f"another build (pid {holder}) is writing {out}; wait for it to finish, "
                                "or run without --no-wait to queue behind it") from None
            if reporter is not None:
                reporter.log("lock", f"waiting for the build (pid {holder}) writing {out} to finish", "step")
            while True:
                if reporter is not None:
                    reporter.check()
                time.sleep(0.1)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    continue
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


def _remove_dropped(spec: Spec, state: dict, reporter: Reporter) -> list[str]:
    """Remove the artefacts an earlier build wrote that no longer belong to the spec (an extension
    removed or renamed, the UKI given another path): left in the output folder they would be
    shipped by mistake. Only files that are still exactly what that build wrote are removed."""
    wanted = {e.name: spec.output / e.image_name for e in spec.extensions}
    wanted["uki"] = spec.uki.output
    removed: list[str] = []
    for key in sorted(state):
        entry = state[key]
        if not isinstance(entry, dict):
            del state[key]
            continue
        if key in wanted and entry.get("path") in (None, os.fspath(wanted[key])):
            continue
        path = owned_file(entry)
        if path is None and entry.get("path") is None and key != "uki":  # a state file from before paths were kept
            legacy = spec.output / f"{key}.sysext.raw"
            with contextlib.suppress(OSError):
                if legacy.stat().st_size == entry.get("size"):
                    path = legacy
        if path is not None:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            except OSError as exc:
                raise disk_error(path, exc) from None
            why = ("the UKI now goes to " + str(spec.uki.output)) if key == "uki" else \
                f"extension {key} is no longer in {spec.path.name}"
            reporter.log("clean", f"removed {path} ({why})", "step")
            removed.append(str(path))
        del state[key]
    return removed


def build(spec: Spec, *, only: Sequence[str] | None = None, force: bool = False, uki: bool | None = None,
          reporter: Reporter | None = None, index: TreeIndex | None = None, estimator: Any = None,
          wait: bool = True) -> BuildReport:
    """Build the spec's artefacts. ``only`` names extensions (and/or ``uki``) to build; by default
    all extensions and the UKI. ``force`` rebuilds what is unchanged. ``index`` is the tree as the
    front end last showed it: the build always packs the tree as it is on disk (it rescans), and
    says so in ``tree_changed`` when that differs. A prepared ``estimator`` of an unchanged index
    saves the estimate's pass, and is calibrated with the UKI's real size afterwards. ``wait``:
    queue behind another build of the same output folder (else refuse)."""
    reporter = reporter or Reporter()
    t0 = time.monotonic()
    names = [e.name for e in spec.extensions]
    wanted = list(only) if only else [*names, "uki"]
    unknown = [n for n in wanted if n not in names and n != "uki"]
    if unknown:
        raise UserError(f"--only {', '.join(unknown)}: no such extension in {spec.path} "
                        f"(extensions: {', '.join(names) or 'none'}; 'uki' means the UKI)")
    build_uki = ("uki" in wanted) if uki is None else uki

    # Everything that can fail cheaply fails before any work starts; first of all an output that
    # would destroy an input (a key, the spec, the tree) or another output.
    clashes = output_problems(spec)
    if clashes:
        raise UserError(f"{spec.path}: refusing to build, an output would overwrite what it must not:\n  "
                        + "\n  ".join(clashes))
    signer: Signer | None = None
    if spec.signing:
        signer = load_signer(spec.signing.key, spec.signing.cert, passphrase_env=spec.signing.passphrase_env)
    # uki.pcr_key / uki.pcr_cert problems surface now, not after the initrd; loaded once per build
    pcr_key = load_pcr_key(spec) if build_uki else None
    _needed_tools(spec, wanted)
    if build_uki and not spec.uki.stub.is_file():
        raise UserError(f"UKI stub {spec.uki.stub} does not exist; install systemd-boot-efi or set uki.stub")

    out = spec.output
    ensure_folder(out)
    with build_lock(out, wait=wait, reporter=reporter):
        for folder in {out, spec.uki.output.parent}:
            remove_stale_temps(folder)
        reporter.log("scan", f"scanning {spec.os.root}", "step")
        shown, index = index, scan(spec.os.root, check=reporter.check)
        changed = _same_tree(shown, index) if shown is not None else None
        if changed:
            reporter.log("scan", changed, "step")
            estimator = None  # prepared for the tree as it was
        plan = make_plan(spec, index)
        for warning in plan.warnings:
            reporter.log("plan", warning, "step")
        if plan.problems:
            n = len(plan.problems)
            raise UserError(f"{spec.path} has {n} problem{'s' if n > 1 else ''}; fix {'them' if n > 1 else 'it'} "
                            "before building:\n  " + "\n  ".join(plan.problems))
        state = load_state(out)
        removed = _remove_dropped(spec, state, reporter)
        if removed:
            save_state(out, state)
        artefacts = _build_all(spec, index, plan, wanted, build_uki, signer, pcr_key, state, force, reporter,
                               estimator)
        save_state(out, state)
    art = next((a for a in artefacts if a.kind == "uki"), None)
    verdict = THRESHOLDS.verdict(art.size, spec.uki.limit) if art is not None else None
    report = BuildReport(str(spec.path), str(out), artefacts, time.monotonic() - t0, spec.uki.limit, verdict, [],
                         removed, changed)
    if report.ok:
        report.deploy = deploy_notes(spec, artefacts)
    return report


def _build_all(spec: Spec, index: TreeIndex, plan: Plan, wanted: Sequence[str], build_uki: bool,
               signer: Signer | None, pcr_key: PcrKey | None, state: dict, force: bool, reporter: Reporter,
               estimator: Any) -> list[Artefact]:
    """Build (or reuse) each wanted artefact, then verify them all; a reused artefact that fails
    verification (corrupted on disk since) is rebuilt and verified again."""
    out = spec.output
    jobs: list[tuple[Any, Any]] = []
    for ext, ext_plan in zip(spec.extensions, plan.extensions, strict=True):
        if ext.name not in wanted:
            continue
        if not ext_plan.entries:
            reporter.for_artefact(ext.name).log(ext.name, "selects nothing yet: no image built")
            continue
        jobs.append((ext, ext_plan))

    def make(job: tuple[Any, Any] | None, force_it: bool) -> Artefact:
        reporter.check()
        if job is None:
            return _build_uki(spec, index, plan, signer, pcr_key, state, force_it, reporter.for_artefact("uki"),
                              estimator)
        art = _build_extension(spec, index, *job, signer, state, force_it, reporter.for_artefact(job[0].name))
        if not art.reused:  # a later failure or cancel must not forget what is already built
            save_state(out, state)
        return art

    todo: list[tuple[Any, Any] | None] = [*jobs, *([None] if build_uki else [])]
    artefacts = [make(job, force) for job in todo]
    _verify_all(artefacts, spec, reporter.for_artefact("verify"))
    for k, (job, art) in enumerate(zip(todo, artefacts, strict=True)):
        if art.reused and not art.verified:
            reporter.for_artefact(art.name).log(art.name, f"{Path(art.path).name} was reused but fails "
                                                          "verification now (changed on disk since it was built): "
                                                          "rebuilding it")
            artefacts[k] = make(job, True)
            _verify_all([artefacts[k]], spec, reporter.for_artefact("verify"))
    return artefacts


def _build_extension(spec: Spec, index: TreeIndex, ext: Any, ext_plan: Any, signer: Signer | None, state: dict,
                     force: bool, reporter: Reporter) -> Artefact:
    fingerprint = signer.fingerprint if signer else "unsigned"
    if ext_plan.source is not None:  # from: {image, base}: the derived tree's additions
        index, ext_plan = ext_plan.source.index, replace(ext_plan, marks=ext_plan.source.marks,
                                                          selected=ext_plan.source.selected)
    entries = collect_entries(index, ext_plan, ext)
    inputs = hashlib.sha256(extension_inputs(ext, entries, with_times=True) + fingerprint.encode()).hexdigest()
    path = spec.output / ext.image_name
    previous = None if force else reusable(state, ext.name, inputs, path)
    if previous:
        reporter.log(ext.name, f"unchanged since the last build: reusing {path.name}", "reused")
        art = Artefact("sysext", ext.name, str(path), previous["size"], True, bool(signer), previous["digest"])
    else:
        reporter.log(ext.name, f"building {path.name} ({len(entries):,} entries, {ext.filesystem})")
        img = build_extension(index, ext_plan, ext, spec.output, signer=signer, reporter=reporter, entries=entries)
        reporter.log(ext.name, f"{img.path.name} replaced whole (not yet verified)", "replaced", path=str(img.path))
        art = Artefact("sysext", ext.name, str(img.path), img.size, False, img.signed, img.root_hash)
        record(state, ext.name, path, inputs, size=art.size, digest=art.digest)
    art.extra = {"entries": ext_plan.entries, "bytes": ext_plan.bytes, "initrd_saves_cpio_bytes": ext_plan.initrd_bytes}
    return art


def _build_uki(spec: Spec, index: TreeIndex, plan: Plan, signer: Signer | None, pcr_key: PcrKey | None,
               state: dict, force: bool, reporter: Reporter, estimator: Any = None) -> Artefact:
    """The UKI, with the size predicted before the build next to the size it got; the real size
    then calibrates the estimator for the next plan."""
    predicted = None
    key = uki_inputs(spec, plan, signer, pcr_key=pcr_key)
    previous = None if force else reusable(state, "uki", key, spec.uki.output)
    if previous is None:
        layout = UkiLayout(spec, index, signature_len=signature_length(signer) if signer else None, pcr_key=pcr_key)
        if spec.uki.compression != "none" and estimator is None:
            reporter.log("uki", "estimating the compressed initrd before the build")
            estimator = Forecaster(spec, plan).run(reporter)
        predicted = forecast(spec, plan, layout, estimator).uki_bytes
    art = build_slim_uki(spec, index, plan, signer=signer, state=state, force=force, reporter=reporter,
                         predicted=predicted, inputs=key, pcr_key=pcr_key)
    if not art.reused:
        reporter.log("uki", f"{Path(art.path).name} replaced whole (not yet verified)", "replaced", path=art.path)
    if estimator is not None and not art.reused:
        estimator.calibrate(plan.initrd_after, art.extra["initrd_compressed"])
    return art


def _verify_all(artefacts: Sequence[Artefact], spec: Spec, reporter: Reporter) -> None:
    """Check every artefact with the independent readers (not our writers' bookkeeping)."""
    cert = spec.signing.cert if spec.signing else None
    for k, art in enumerate(artefacts):
        reporter("verify", k, len(artefacts), "files")
        report = verify_image(Path(art.path), cert) if art.kind == "sysext" else verify_uki(Path(art.path), cert)
        art.checks = report.checks
        art.verified = report.ok
        reporter.log("verify", f"{Path(art.path).name}: {'verified' if art.verified else 'FAILED verification'}")
    reporter("verify", len(artefacts), len(artefacts), "files")


def render(report: BuildReport) -> str:
    """The build's text report: a failure verdict first when there is one, deploy advice only for a
    build that can ship."""
    lines = []
    uki = next((a for a in report.artefacts if a.kind == "uki"), None)
    if report.over_limit and uki is not None:
        over = uki.size - report.limit_bytes
        lines.append(f"FAILED: the UKI is {format_size(uki.size)} ({uki.size:,} bytes), "
                     f"{report.verdict} the limit {format_size(report.limit_bytes)}"
                     + (f" by {format_size(over)}; move about that much more (compressed) out of it" if over > 0 else "")
                     + ". Do not deploy it.")
    if report.tree_changed:
        lines.append(f"note: {report.tree_changed}")
    for path in report.removed:
        lines.append(f"removed {path}: it no longer belongs to the spec")
    for a in report.artefacts:
        state = "reused" if a.reused else "built"
        mark = "ok" if a.verified else "FAILED"
        lines.append(f"{mark:>6}  {a.kind:<6} {Path(a.path).name:<28} {format_size(a.size):>10}  {state:<6}  "
                     f"{'signed' if a.signed else 'unsigned'}  {a.digest[:16]}…")
        for c in a.checks:
            if not c.ok:
                lines.append(f"          {c.name}: {c.text}")
        if a.kind == "uki" and a.predicted_size is not None:
            err = (a.predicted_size - a.size) / a.size * 100 if a.size else 0.0
            lines.append(f"          predicted {format_size(a.predicted_size)}, got {format_size(a.size)} "
                         f"({a.size:,} bytes; estimate off by {err:+.2f}%)")
    if report.verdict:
        lines.append(f"UKI against the limit {format_size(report.limit_bytes)}: {report.verdict}")
    verified = all(a.verified for a in report.artefacts)
    outcome = ("build FAILED: the UKI is over its limit" if verified and report.over_limit
               else "all artefacts verified" if verified else "VERIFICATION FAILED")
    lines.append(f"{outcome} in {report.seconds:.1f} s -> {report.output}")
    lines.extend(report.deploy)
    return "\n".join(lines)


def remove_stale_temps(folder: Path, *, older_than: float = 3600) -> list[Path]:
    """Remove temp files a killed build (SIGKILL, power loss) left in ``folder``: those whose
    process is gone (temps of a live build or of the workbench's estimate stay), and nameless old
    ones from before pids were recorded. Returns what was removed."""
    removed = []
    for p in stale_temps(folder, older_than=older_than):
        with contextlib.suppress(OSError):
            os.unlink(p)
            removed.append(p)
    return removed
