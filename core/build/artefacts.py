"""What a build produced (:class:`Artefact`, :class:`BuildReport`) and what it remembers for the
next one (the state file in the output folder).

Reuse is allowed only for what is proven current: the inputs digest must match (the tree's
entries with their inode and ctime, which no tool can set back, so a file rewritten with the same
size and a clamped mtime still counts as changed) and the artefact on disk must be the very file
this build wrote (size, mtime, ctime, inode and device recorded right after it was written). A
reused artefact that then fails verification is rebuilt by the pipeline.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..atomic import TEMP_PREFIX, write_atomic
from ..errors import UserError
from ..spec.model import Spec
from ..spec.outputs import STATE_FILE
from ..units import failing_verdict
from .verify import Check


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
    #: the independent verification (:mod:`.verify`), the same type for an image and a UKI
    checks: list[Check] = field(default_factory=list)
    predicted_size: int | None = None  # uki: the estimate made before the build
    extra: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        data = asdict(self)
        data["checks"] = [c.as_dict() for c in self.checks]
        return data


@dataclass
class BuildReport:
    spec: str
    output: str
    artefacts: list[Artefact]
    seconds: float
    limit_bytes: int
    verdict: str | None  # the UKI against the firmware limits, when the UKI was built
    deploy: list[str]
    #: artefacts of an earlier build that no longer belong to the spec, removed by this build
    removed: list[str] = field(default_factory=list)
    #: what changed in the tree since the front end scanned it (the build packed the tree as it is now)
    tree_changed: str | None = None

    @property
    def over_limit(self) -> bool:
        """The UKI is over the spec's limit (or past what any firmware boots)."""
        return failing_verdict(self.verdict)

    @property
    def ok(self) -> bool:
        """Every artefact verified and the UKI (if built) fits: the one gate CI relies on."""
        return all(a.verified for a in self.artefacts) and not self.over_limit

    def to_json(self) -> dict:
        data = {"ok": self.ok, **asdict(self)}
        data["artefacts"] = [a.to_json() for a in self.artefacts]
        return data


def file_identity(path: str | os.PathLike[str]) -> dict | None:
    """What proves a file is the one written earlier: size, mtime, ctime, inode, device."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns, "ino": st.st_ino,
            "dev": st.st_dev}


def load_state(out: Path) -> dict:
    try:
        state = json.loads((out / STATE_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return state if isinstance(state, dict) else {}


def save_state(out: Path, state: dict) -> None:
    """Record the inputs of what is built (losing this only costs a rebuild next time)."""
    with contextlib.suppress(UserError):
        write_atomic(out / STATE_FILE, json.dumps(state, indent=1, sort_keys=True).encode())


def record(state: dict, key: str, path: str | os.PathLike[str], inputs: str, **values: object) -> None:
    """Remember artefact ``key`` at ``path``, built from ``inputs``, as the file now on disk."""
    state[key] = {"inputs": inputs, "path": os.fspath(path), "file": file_identity(path), **values}


def reusable(state: dict, key: str, inputs: str, path: Path) -> dict | None:
    """The recorded entry if ``path`` is exactly what an earlier build wrote from ``inputs``."""
    entry = state.get(key)
    if not isinstance(entry, dict) or entry.get("inputs") != inputs:
        return None
    recorded = entry.get("file")
    if not recorded or recorded != file_identity(path) or entry.get("path") != os.fspath(path):
        return None
    return entry


def owned_file(entry: dict) -> Path | None:
    """The file a state entry names, if it is still the very file that build wrote."""
    path = entry.get("path")
    if not isinstance(path, str) or not entry.get("file"):
        return None
    return Path(path) if file_identity(path) == entry["file"] else None


def leftover_temps(spec: Spec) -> list[Path]:
    """Temp files of the engine's atomic writes still in the spec's output folders (after a
    cancelled or failed build there should be none; a SIGKILLed one leaves them for the next)."""
    found: list[Path] = []
    for folder in sorted({spec.output, spec.uki.output.parent}):
        try:
            found += sorted(folder.glob(TEMP_PREFIX + "*"))
        except OSError:
            continue
    return found

