"""Where a build writes, and the one rule that keeps it from overwriting what it reads.

Every file a build may create or replace is listed by :func:`artefact_paths`: the extension
images, the UKI, the state and lock files in the output folder. :func:`output_problems` refuses,
before any work, an output that is (or lies inside) something the build reads or that the user
keeps: the spec file, a signing or PCR key or certificate, the stub, splash, os-release or kernel,
the OS tree itself (the next plan would pack the last build into the initrd), or another
artefact's output. A private key replaced by a UKI is a key lost for good.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .model import Spec

STATE_FILE = ".sysextant-state.json"
LOCK_FILE = ".sysextant.lock"


@dataclass(frozen=True)
class Output:
    """One file a build writes: what it is (for messages), where, and the spec key that sets it."""

    what: str
    path: Path
    keys: tuple[str | int, ...]


def artefact_paths(spec: Spec) -> list[Output]:
    """Every file a build of ``spec`` may write, images first, then the UKI and the bookkeeping."""
    outs = [Output(f"the image of extension {e.name}", spec.output / e.image_name, ("extensions", n, "name"))
            for n, e in enumerate(spec.extensions)]
    outs.append(Output("the UKI", spec.uki.output, ("uki", "output")))
    outs.append(Output("the build state file", spec.output / STATE_FILE, ("output",)))
    outs.append(Output("the build lock file", spec.output / LOCK_FILE, ("output",)))
    return outs


def _inputs(spec: Spec) -> list[tuple[str, Path]]:
    """The files a build reads or the user keeps, which no output may replace."""
    found: list[tuple[str, Path]] = [("the spec file", spec.path)]
    if spec.signing:
        found += [("the signing key (signing.key)", spec.signing.key),
                  ("the signing certificate (signing.cert)", spec.signing.cert)]
    u = spec.uki
    for what, path in (("the PCR key (uki.pcr_key)", u.pcr_key), ("the PCR certificate (uki.pcr_cert)", u.pcr_cert),
                       ("the UKI stub (uki.stub)", u.stub), ("the splash image (uki.splash)", u.splash),
                       ("the os-release file (uki.os_release)", u.os_release),
                       ("the kernel (os.kernel)", spec.os.kernel)):
        if path is not None:
            found.append((what, path))
    return found


def _real(path: Path) -> str:
    """The path as the kernel will resolve it on this machine (outputs and inputs are host paths)."""
    return os.path.realpath(os.path.abspath(path))


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _same_file(a: Path, b: Path) -> bool:
    """Also catches a hardlink or a second mount of the same file."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def output_problems(spec: Spec) -> list[str]:
    """One line per output that would overwrite an input, the tree, or another output."""
    problems: list[str] = []
    outs = artefact_paths(spec)
    tree = _real(spec.os.root)
    out_dir = _real(spec.output)
    if _inside(out_dir, tree):
        problems.append(f"{spec.where('output')}: the output folder {spec.output} is inside the OS tree {spec.os.root}; "
                        "the next plan would pack the last build into the UKI. Choose a folder outside the tree")
    if _inside(tree, out_dir) and out_dir != tree:
        problems.append(f"{spec.where('output')}: the output folder {spec.output} contains the OS tree "
                        f"{spec.os.root}; choose a folder of its own")
    inputs = [(what, path, _real(path)) for what, path in _inputs(spec)]
    for out in outs:
        real = _real(out.path)
        where = spec.where(*out.keys)
        if not _inside(out_dir, tree) and _inside(real, tree):
            problems.append(f"{where}: {out.what} would be written to {out.path}, inside the OS tree {spec.os.root}; "
                            "choose a path outside the tree")
        for what, path, real_in in inputs:
            if _inside(real, real_in) or _same_file(out.path, path):
                problems.append(f"{where}: {out.what} would be written to {out.path}, which is {what} "
                                f"({path}); the build would destroy it. Choose another output path")
    seen: dict[str, Output] = {}
    for out in outs:
        real = _real(out.path)
        clash = next((o for r, o in seen.items() if _inside(real, r) or _inside(r, real)), None)
        if clash is not None:
            problems.append(f"{spec.where(*out.keys)}: {out.what} and {clash.what} would both be written to "
                            f"{out.path}; give each its own path")
        seen[real] = out
    return problems
