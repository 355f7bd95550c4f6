"""The slimmed Kairos UKI from a plan: its sections, the build and reuse (verification: :mod:`.verify`).

Sections (ukify's set for Kairos): ``.osrel`` (the tree's os-release), ``.cmdline``, ``.uname``
(from the kernel header or ``usr/lib/modules``), optional ``.splash``, ``.initrd`` (the tree
minus the extensions, see :mod:`.initrd`) and ``.linux`` (``os.kernel``); with ``uki.pcr_key``
also ``.pcrpkey`` and ``.pcrsig`` (the signed expected PCR 11 values, see :mod:`.pcr`). Files inside the OS
tree are resolved the way that OS would resolve them (:func:`.fsentry.resolve_in_tree`), never
through this machine's own paths.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from ..atomic import scratch_for
from ..formats.initrd import extras_digest, initrd_extra
from ..formats.pcr import measured_sections, pcr_sections, stub_version
from ..keys import PcrKey, Signer, load_pcr_key
from ..progress import Reporter
from ..sizing.plan import Plan
from ..sizing.ukiinputs import kernel_path, os_release, uname
from ..spec.model import Spec
from ..tree.index import TreeIndex

FORMAT_VERSION = "sysextant-uki-1"


def sections(spec: Spec, index: TreeIndex, initrd: Path, *, pcr_key: PcrKey | None = None,
             reporter: Reporter | None = None) -> list[tuple[str, Path | bytes]]:
    """The UKI's sections (name, bytes or file). With ``uki.pcr_key`` this reads every measured
    file once more to sign the PCR 11 policies; ``pcr_key`` is the loaded key if the caller has it."""
    kernel = kernel_path(spec)
    out: list[tuple[str, Path | bytes]] = [(".osrel", os_release(spec)), (".cmdline", spec.uki.cmdline.encode())]
    release = uname(spec, index, kernel)
    if release:
        out.append((".uname", release.encode()))
    if spec.uki.splash:
        out.append((".splash", spec.uki.splash))
    out += [(".initrd", initrd), (".linux", kernel)]
    if pcr_key is None and spec.uki.pcr_key is not None:
        pcr_key = load_pcr_key(spec)
    if pcr_key is None:
        return out
    measured = measured_sections(stub_version(spec.uki.stub))
    total = sum(os.path.getsize(c) for n, c in out if n in measured and isinstance(c, Path))
    done = 0

    def progress(n: int) -> None:
        nonlocal done
        done += n
        if reporter is not None:
            reporter("uki: pcr 11 signature", done, total)
            reporter.check()

    return pcr_sections(out, pcr_key, measured=measured, progress=progress)


def inputs_digest(spec: Spec, plan: Plan, signer: Signer | None, *, pcr_key: PcrKey | None = None) -> str:
    """What decides the UKI's bytes: the kept entries (path, type, size, mtime, and inode and ctime:
    a file rewritten with the same size and a clamped mtime still counts as changed), the kernel,
    stub, os-release and the uki settings. One lstat per kept entry."""
    h = hashlib.sha256()
    u = spec.uki
    h.update(repr((FORMAT_VERSION, u.cmdline, u.init, u.compression, u.level, u.zstd_single(), str(u.stub), str(u.splash),
                   u.uname, signer.fingerprint if signer else None)).encode())
    if pcr_key is None and spec.uki.pcr_key is not None:
        pcr_key = load_pcr_key(spec)
    if pcr_key is not None:
        h.update(f"pcr:{pcr_key.fingerprint}".encode())
    for path in (u.stub, kernel_path(spec), u.splash):
        if path is not None:
            st = os.stat(path)
            h.update(f"{path}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}:{st.st_ino}".encode())
    h.update(os_release(spec))
    h.update(extras_digest(initrd_extra(spec, plan.index, plan.initrd_after)).encode())
    index = plan.index
    paths = sorted(index.path(i) for i in plan.initrd_after.indices())
    for rel in paths:
        try:
            st = os.lstat(os.path.join(index.root, rel))
            h.update(b"%s\0%d\0%d\0%d\0%d\0%d\n" % (rel, st.st_mode, st.st_size, st.st_mtime_ns, st.st_ctime_ns,
                                                     st.st_ino))
        except OSError:
            h.update(rel + b"\0gone\n")
    return h.hexdigest()


def build_slim_uki(spec: Spec, index: TreeIndex, plan: Plan, *, signer: Signer | None, state: dict,
                   force: bool = False, reporter: Reporter | None = None, predicted: int | None = None,
                   inputs: str | None = None, pcr_key: PcrKey | None = None):
    """Build (or reuse) ``uki.output``; returns a :class:`.artefacts.Artefact`. ``inputs`` is
    :func:`inputs_digest` and ``pcr_key`` the loaded ``uki.pcr_key`` when the caller has them."""
    from ..formats.initrd import build_initrd
    from ..formats.uki import build_uki, predict_size
    from .artefacts import Artefact, record, reusable

    out = spec.uki.output
    if inputs is None:
        inputs = inputs_digest(spec, plan, signer, pcr_key=pcr_key)
    previous = None if force else reusable(state, "uki", inputs, out)
    if previous:
        if reporter:
            reporter.log("uki", f"unchanged since the last build: reusing {out.name}", "reused")
        art = Artefact("uki", "uki", str(out), previous["size"], True, bool(signer), previous["digest"],
                       predicted_size=previous.get("predicted"))
        art.extra = previous.get("extra", {})
        return art
    with scratch_for(out, "initrd") as initrd_path:
        if pcr_key is None and spec.uki.pcr_key is not None:
            pcr_key = load_pcr_key(spec)
        if reporter:
            reporter.log("uki", f"compressing the initrd ({spec.uki.compression} level {spec.uki.level})")
        initrd = build_initrd(spec, plan, initrd_path, reporter=reporter)
        if reporter and pcr_key is not None:
            reporter.log("uki", "signing the expected PCR 11 values (.pcrsig)")
        secs = sections(spec, index, initrd_path, pcr_key=pcr_key, reporter=reporter)
        sizes = {name: (len(v) if isinstance(v, bytes) else os.path.getsize(v)) for name, v in secs}
        exact = predict_size(spec.uki.stub, sizes, signed=signer is not None, signer=signer)
        if reporter:
            reporter.log("uki", f"assembling {out.name}{' and signing it' if signer else ''}")
        result = build_uki(spec.uki.stub, secs, out, signer=signer, reporter=reporter, task="uki: assemble")
    extra = {"initrd_uncompressed": initrd.uncompressed_bytes, "initrd_compressed": initrd.compressed_bytes,
             "exact_formula_bytes": exact, "sections": [list(s) for s in result.sections]}
    art = Artefact("uki", "uki", str(out), result.size, False, result.signed, result.sha256,
                   predicted_size=predicted, extra=extra)
    record(state, "uki", out, inputs, size=result.size, digest=result.sha256, predicted=predicted, extra=extra)
    return art
