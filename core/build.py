"""The build pipeline: every extension image and the slimmed UKI, signed, verified, reused when
unchanged. The CLI (`sysextant build`) and the workbench (`b`) both run :func:`build`.

Order: check keys and tools (before any work), scan and plan (refuse a spec with problems),
build each extension whose inputs changed, build the UKI, verify every artefact with the
independent checkers, record the inputs for the next build. Outputs appear atomically; a
cancelled or failed build leaves the previous good outputs in place.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .atomic import write_atomic
from .errors import UserError
from .index import TreeIndex, scan
from .keys import Signer, load_signer
from .model import Spec
from .pcr import load_pcr_key
from .plan import Plan, make_plan
from .progress import Reporter
from .units import THRESHOLDS, format_size

STATE_FILE = ".sysextant-state.json"


@dataclass
class Artefact:
    kind: str  # "sysext" | "uki"
    name: str
    path: str
    size: int
    reused: bool
    signed: bool
    digest: str  # verity root hash (sysext) or sha256 of the file (uki)
    verified: bool = False
    checks: list[dict] = field(default_factory=list)
    predicted_size: int | None = None  # uki: the estimate made before the build
    extra: dict = field(default_factory=dict)


@dataclass
class BuildReport:
    spec: str
    output: str
    artefacts: list[Artefact]
    seconds: float
    limit_bytes: int
    verdict: str | None  # the UKI against the firmware limits, when the UKI was built
    deploy: list[str]

    @property
    def ok(self) -> bool:
        return all(a.verified for a in self.artefacts)

    def to_json(self) -> dict:
        return {"ok": self.ok, **asdict(self)}


def _needed_tools(spec: Spec, names: Sequence[str]) -> None:
    """Fail before any work when an extension needs a tool this machine lacks (same lookup as the build)."""
    from .mkfs import find_tool

    for ext in spec.extensions:
        if ext.name not in names:
            continue
        if ext.filesystem == "squashfs":
            find_tool("mksquashfs", "squashfs-tools", f"for the squashfs image of extension {ext.name}")
        if ext.filesystem == "erofs" and ext.compression != "none":
            find_tool("mkfs.erofs", "erofs-utils", f"for the {ext.compression}-compressed EROFS image "
                      f"of extension {ext.name} (or set compression: none)")


def _load_state(out: Path) -> dict:
    try:
        return json.loads((out / STATE_FILE).read_text())
    except (OSError, ValueError):
        return {}


def _save_state(out: Path, state: dict) -> None:
    """Record the inputs of what is built (losing this only costs a rebuild next time)."""
    with contextlib.suppress(UserError):
        write_atomic(out / STATE_FILE, json.dumps(state, indent=1, sort_keys=True).encode())


def _reusable(state: dict, key: str, inputs: str, path: Path) -> dict | None:
    entry = state.get(key)
    if not entry or entry.get("inputs") != inputs:
        return None
    try:
        if path.stat().st_size != entry.get("size"):
            return None
    except OSError:
        return None
    return entry


def deploy_notes(spec: Spec, artefacts: Sequence[Artefact]) -> list[str]:
    """How these files reach a Kairos system (docs/domain.md section 7)."""
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
    return notes


def build(spec: Spec, *, only: Sequence[str] | None = None, force: bool = False, uki: bool | None = None,
          reporter: Reporter | None = None, index: TreeIndex | None = None, estimator: Any = None) -> BuildReport:
    """Build the spec's artefacts. ``only`` names extensions (and/or ``uki``) to build; by default
    all extensions and the UKI. ``force`` rebuilds what is unchanged. ``index`` and a prepared
    ``estimator`` of that index (the workbench has both) save the rescan and the estimate's pass;
    the estimator is calibrated with the UKI's real size afterwards."""
    reporter = reporter or Reporter()
    t0 = time.monotonic()
    names = [e.name for e in spec.extensions]
    wanted = list(only) if only else [*names, "uki"]
    unknown = [n for n in wanted if n not in names and n != "uki"]
    if unknown:
        raise UserError(f"--only {', '.join(unknown)}: no such extension in {spec.path} "
                        f"(extensions: {', '.join(names) or 'none'}; 'uki' means the UKI)")
    build_uki = ("uki" in wanted) if uki is None else uki

    # Everything that can fail cheaply fails before any work starts.
    signer: Signer | None = None
    if spec.signing:
        signer = load_signer(spec.signing.key, spec.signing.cert, passphrase_env=spec.signing.passphrase_env)
    if build_uki:
        load_pcr_key(spec)  # uki.pcr_key / uki.pcr_cert problems surface now, not after the initrd
    _needed_tools(spec, wanted)
    if build_uki and not spec.uki.stub.is_file():
        raise UserError(f"UKI stub {spec.uki.stub} does not exist; install systemd-boot-efi or set uki.stub")

    if index is None:
        reporter.log("scan", f"scanning {spec.os.root}")
        index = scan(spec.os.root, check=reporter.check)
    plan = make_plan(spec, index)
    if plan.problems:
        raise UserError(f"{spec.path} has problems; fix them before building:\n  " + "\n  ".join(plan.problems))

    out = spec.output
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(out)
    state = _load_state(out)
    fingerprint = signer.fingerprint if signer else "unsigned"
    artefacts: list[Artefact] = []

    from .sysext import build_extension, collect_entries, inputs_digest

    for ext, ext_plan in zip(spec.extensions, plan.extensions, strict=True):
        if ext.name not in wanted:
            continue
        reporter.check()
        if not ext_plan.entries:
            reporter.log(ext.name, "selects nothing yet: no image built")
            continue
        entries = collect_entries(index, ext_plan, ext)
        inputs = hashlib.sha256(inputs_digest(ext, entries, with_times=True) + fingerprint.encode()).hexdigest()
        path = out / ext.image_name
        previous = None if force else _reusable(state, ext.name, inputs, path)
        if previous:
            reporter.log(ext.name, f"unchanged since the last build: reusing {path.name}")
            art = Artefact("sysext", ext.name, str(path), previous["size"], True, bool(signer), previous["digest"])
        else:
            reporter.log(ext.name, f"building {path.name} ({len(entries):,} entries, {ext.filesystem})")
            img = build_extension(index, ext_plan, ext, out, signer=signer, reporter=reporter, entries=entries)
            art = Artefact("sysext", ext.name, str(img.path), img.size, False, img.signed, img.root_hash)
        art.extra = {"entries": ext_plan.entries, "bytes": ext_plan.bytes, "initrd_saves_cpio_bytes": ext_plan.initrd_bytes}
        state[ext.name] = {"inputs": inputs, "size": art.size, "digest": art.digest}
        artefacts.append(art)
        if not art.reused:  # a later failure or cancel must not forget what is already built
            _save_state(out, state)

    verdict = None
    if build_uki:
        art = _build_uki(spec, index, plan, signer, state, force, reporter, estimator)
        verdict = THRESHOLDS.verdict(art.size, spec.uki.limit)
        artefacts.append(art)

    _verify_all(artefacts, spec, reporter)
    _save_state(out, state)
    report = BuildReport(str(spec.path), str(out), artefacts, time.monotonic() - t0, spec.uki.limit, verdict,
                         deploy_notes(spec, artefacts))
    return report


def _build_uki(spec: Spec, index: TreeIndex, plan: Plan, signer: Signer | None, state: dict, force: bool,
               reporter: Reporter, estimator: Any = None) -> Artefact:
    """The UKI, with the size predicted before the build next to the size it got; the real size
    then calibrates the estimator for the next plan."""
    from .forecast import UkiLayout, forecast, prepared_estimator
    from .ukibuild import build_slim_uki, inputs_digest

    predicted = None
    key = inputs_digest(spec, plan, signer)
    previous = None if force else _reusable(state, "uki", key, spec.uki.output)
    if previous is None:
        signature_len = None
        if signer is not None:
            from .authenticode import signature_length

            signature_len = signature_length(signer)
        layout = UkiLayout(spec, index, signature_len=signature_len)
        if spec.uki.compression != "none" and estimator is None:
            reporter.log("uki", "estimating the compressed initrd before the build")
            estimator = prepared_estimator(spec, plan, reporter)
        predicted = forecast(spec, plan, layout, estimator).uki_bytes
    art = build_slim_uki(spec, index, plan, signer=signer, state=state, force=force, reporter=reporter,
                         predicted=predicted, inputs=key)
    if estimator is not None and not art.reused:
        estimator.calibrate(plan.initrd_after, art.extra["initrd_compressed"])
    return art


def _verify_all(artefacts: Sequence[Artefact], spec: Spec, reporter: Reporter) -> None:
    """Check every artefact with the independent readers (not our writers' bookkeeping)."""
    cert = spec.signing.cert if spec.signing else None
    for k, art in enumerate(artefacts):
        reporter("verify", k, len(artefacts), "files")
        if art.kind == "sysext":
            from .verify import verify_image

            report = verify_image(Path(art.path), cert)
            art.checks = [{"name": c.name, "ok": c.ok, "detail": c.detail} for c in report.checks]
            art.verified = report.ok
        else:
            from .ukibuild import verify_uki

            art.checks = verify_uki(Path(art.path), cert)
            art.verified = all(c["ok"] for c in art.checks)
        reporter.log("verify", f"{Path(art.path).name}: {'verified' if art.verified else 'FAILED verification'}")
    reporter("verify", len(artefacts), len(artefacts), "files")


def render(report: BuildReport) -> str:
    lines = []
    for a in report.artefacts:
        state = "reused" if a.reused else "built"
        mark = "ok" if a.verified else "FAILED"
        lines.append(f"{mark:>6}  {a.kind:<6} {Path(a.path).name:<28} {format_size(a.size):>10}  {state:<6}  "
                     f"{'signed' if a.signed else 'unsigned'}  {a.digest[:16]}…")
        for c in a.checks:
            if not c["ok"]:
                lines.append(f"          {c['name']}: {c['detail']}")
        if a.kind == "uki" and a.predicted_size is not None:
            err = (a.predicted_size - a.size) / a.size * 100 if a.size else 0.0
            lines.append(f"          predicted {format_size(a.predicted_size)}, got {format_size(a.size)} "
                         f"({a.size:,} bytes; estimate off by {err:+.2f}%)")
    if report.verdict:
        lines.append(f"UKI against the limit {format_size(report.limit_bytes)}: {report.verdict}")
    lines.append(f"{'all artefacts verified' if report.ok else 'VERIFICATION FAILED'} in {report.seconds:.1f} s "
                 f"-> {report.output}")
    lines.extend(report.deploy)
    return "\n".join(lines)


def remove_stale_temps(out: Path, *, older_than: float = 3600) -> None:
    """Remove temp files a killed build (SIGKILL, power loss) left in the output folder. Only
    old ones: a fresh one may be another writer's (the workbench's estimate) in progress."""
    from .atomic import TEMP_PREFIX

    limit = time.time() - older_than
    for p in out.glob(f"{TEMP_PREFIX}*"):
        with contextlib.suppress(OSError):
            if p.lstat().st_mtime < limit:
                os.unlink(p)
