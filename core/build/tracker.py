"""A running build as a front end shows it: the engine's progress events grouped by artefact, each
stage's measured rate, the overall fraction done and an ETA. Plain data, no UI: the workbench's
build screen renders it, and any other front end can.

It reads only the events' fields (:class:`~sysextant.core.progress.Progress`: ``kind``,
``artefact``, ``stage``, done of total), never their text, and the final
:class:`~.artefacts.BuildReport` for what was built, reused and verified.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..progress import Progress
from ..sizing.plan import Plan
from ..spec.model import Spec
from .artefacts import BuildReport

#: Words for the engine's stage names (``Progress.stage``).
STAGE_LABELS = {
    "pack": "files packed",
    "pack: stage": "files staged for the packer",
    "copy": "image copied into the DDI",
    "verity": "bytes hashed (dm-verity)",
    "initrd: archive": "initrd archived",
    "initrd: compress": "initrd compressed",
    "assemble: write": "UKI assembled",
    "assemble: sign": "bytes hashed for the signature",
    "assemble: sha256": "sha256 of the UKI",
    "verify": "artefacts verified",
    # the UKI's size estimated before its build (when the front end had no prepared estimate)
    "estimate: quick sample": "initrd sampled by content kind",
    "estimate: proxy pass": "initrd estimated (proxy level)",
    "estimate: samples at the target level": "estimate sampled at its level",
    "estimate: target level": "estimate at the build's level",
    "estimate: refine cut groups": "estimate refined",
    "estimate: refine": "estimate refined",
    "pcr 11 signature": "bytes hashed for PCR 11 policy",
}

MiB = 1 << 20

#: Rough rates (bytes a second) of the stages on a small machine, for stages not yet running. A
#: running stage's own rate replaces them, so they only shape the ETA before a stage starts.
NOMINAL_RATE = {"pack": 300 * MiB, "copy": 2048 * MiB, "verity": 800 * MiB, "assemble: write": 1500 * MiB,
                "assemble: sign": 350 * MiB, "assemble: sha256": 1000 * MiB, "verify": 600 * MiB}


#: Rough rates of the packer tools by compression (mksquashfs / mkfs.erofs on two cores).
PACKER_RATE = {"xz": 10 * MiB, "gzip": 30 * MiB, "zstd": 60 * MiB, "lzo": 40 * MiB, "lz4": 200 * MiB,
               "lz4hc": 40 * MiB}


def compress_rate(compression: str, level: int) -> float:
    """A rough single-machine rate of the initrd compressor (bytes a second of input)."""
    if compression == "zstd":
        for top, rate in ((3, 250), (6, 110), (9, 60), (12, 35), (15, 15)):
            if level <= top:
                return rate * MiB
        return 4 * MiB
    return {"xz": 8 * MiB, "gzip": 30 * MiB, "lz4": 400 * MiB}.get(compression, 1000 * MiB)


@dataclass
class Stage:
    """One stage's latest progress."""

    name: str  # the engine's stage name (``Progress.stage``)
    unit: str
    started: float
    done: int = 0
    total: int = 0
    updated: float = 0.0
    finished: bool = False

    @property
    def label(self) -> str:
        return STAGE_LABELS.get(self.name, self.name)

    @property
    def fraction(self) -> float:
        if self.finished:
            return 1.0
        return min(1.0, self.done / self.total) if self.total else 0.0

    @property
    def rate(self) -> float | None:
        """Bytes a second while the stage ran (None for other units or too short to tell)."""
        span = (self.updated or self.started) - self.started
        if self.unit != "bytes" or span < 0.02 or not self.done:
            return None
        return self.done / span


@dataclass
class Group:
    """The stages of one artefact (an extension, the UKI, the final verification)."""

    name: str
    kind: str  # sysext | uki | verify | other
    file: str = ""
    #: (stage, bytes it will handle, nominal bytes a second) for the stages this group will run
    expected: list[tuple[str, int, float]] = field(default_factory=list)
    #: waiting building reused done verified reused-verified passed failed cancelled skipped unverified
    state: str = "waiting"
    stages: dict[str, Stage] = field(default_factory=dict)
    started: float | None = None
    ended: float | None = None
    last_event: float | None = None

    @property
    def over(self) -> bool:
        return self.state not in ("waiting", "building")

    def packer_running_since(self) -> float | None:
        """When a packer tool (mksquashfs, mkfs.erofs) runs for this group, which reports nothing
        while it runs (the files are staged, not yet packed): since when; else None."""
        staged = self.stages.get("pack: stage")
        if self.state != "building" or staged is None or not staged.finished or "pack" in self.stages:
            return None
        return staged.updated or staged.started

    def packer_overdue(self, now: float) -> bool:
        """A packer tool runs silently for this group and has taken longer than nominal."""
        since = self.packer_running_since()
        if since is None:
            return False
        size, rate = next(((b, r) for name, b, r in self.expected if name == "pack"), (0, 1.0))
        return now - since > size / rate

    def remaining(self, now: float) -> float:
        """Seconds this group still needs: measured for a running stage, nominal for the rest."""
        if self.over:
            return 0.0
        left = 0.0
        for name, size, rate in self.expected:
            nominal = size / rate
            st = self.stages.get(name)
            if st is None and name == "pack":
                st = self.stages.get("pack: stage")  # a packer tool: staged, then it runs silently
                if st is not None and st.finished:
                    left += max(0.1 * nominal, nominal - (now - (st.updated or st.started)))
                    continue
            if st is None:
                left += nominal
            elif not st.finished:
                f, ran = st.fraction, now - st.started
                left += ran * (1 - f) / f if f > 0.02 and ran > 0.2 else max(0.1 * nominal, nominal - ran)
        # a stage the group was not expected to run (the estimate the UKI's build prepares when
        # the front end had none, the initrd's archive pass): its own measured pace while it runs
        expected = {name for name, _, _ in self.expected}
        for st in self.stages.values():
            if st.name not in expected and not st.finished and st.name != "pack: stage":
                f, ran = st.fraction, now - st.started
                if f > 0.02 and ran > 0.2:
                    left += ran * (1 - f) / f
        return left


class BuildTracker:
    """Progress events grouped by artefact, the overall fraction and an ETA.

    Groups are known before the first event (the spec's extensions, the UKI, verification) so a
    front end shows what will happen. The ETA adds up, for every stage still to run, its remaining
    time at its measured rate (or a nominal rate before it starts); the overall fraction is the
    share of the time worked so far in worked + ETA, so the fraction and the ETA tell the same
    story.
    """

    def __init__(self, spec: Spec, plan: Plan | None, started: float, uki_bytes: int | None = None) -> None:
        self.started = started
        self.ended: float | None = None
        self.outcome = ""
        self._fraction = 0.0
        self.work_started: float | None = None  # the first progress event (key checks come before)
        self.signed = spec.signing is not None
        #: artefact -> the output file this build replaced (``replaced`` events), in build order
        self.replaced: dict[str, Path] = {}
        self.groups: dict[str, Group] = {}
        ext_bytes = {e.name: e.bytes for e in plan.extensions} if plan else {}
        total_ext = 0
        for ext in spec.extensions:
            b = max(4096, ext_bytes.get(ext.name, 4096))
            total_ext += b
            pack = NOMINAL_RATE["pack"] if ext.compression == "none" else PACKER_RATE.get(ext.compression, 20 * MiB)
            self.groups[ext.name] = Group(ext.name, "sysext", ext.image_name, [
                ("pack", b, pack), ("copy", b, NOMINAL_RATE["copy"]), ("verity", b, NOMINAL_RATE["verity"])])
        cpio = plan.initrd_cpio_after if plan else 4096
        uki = uki_bytes or cpio // 2
        stages = [("initrd: compress", cpio, compress_rate(spec.uki.compression, spec.uki.level))]
        stages += [(s, uki, NOMINAL_RATE[s]) for s in ("assemble: write", "assemble: sign", "assemble: sha256")
                   if self.signed or s != "assemble: sign"]
        self.groups["uki"] = Group("uki", "uki", spec.uki.output.name, stages)
        self.groups["verify"] = Group("verify", "verify", "", [("verify", total_ext + uki, NOMINAL_RATE["verify"])])

    # -- events -----------------------------------------------------------------------------
    def apply(self, ev: Progress, now: float) -> Group | None:
        """Take one event; returns the group of its artefact, or None for an event of the build as
        a whole (a step such as the scan or the lock: a log line, no artefact's state)."""
        if not ev.artefact:
            return None
        group = self.groups.get(ev.artefact)
        if group is None:
            group = self.groups[ev.artefact] = Group(ev.artefact, "other")
        self._start(group, now)
        if ev.kind == "reused":
            group.state = "reused"
            group.ended = now
        elif ev.kind == "replaced":
            self.replaced[ev.artefact] = Path(ev.path)
        elif ev.kind == "progress" and ev.stage:
            if self.work_started is None:
                self.work_started = now
            st = group.stages.get(ev.stage)
            if st is None:  # a stage starts where the group's previous one ended
                st = group.stages[ev.stage] = Stage(ev.stage, ev.unit, group.last_event or now)
            st.done, st.total, st.updated = ev.done, ev.total, now
            if ev.total and ev.done >= ev.total:
                st.finished = True
            if group.state in ("waiting", "reused"):  # a reused artefact that failed is rebuilt
                group.state, group.ended = "building", None
        elif group.state == "waiting":  # a line about the artefact: its work has begun
            group.state = "building"
        group.last_event = now
        return group

    def _start(self, group: Group, now: float) -> None:
        """A group starts: the groups before it in build order are finished."""
        if group.started is None:
            group.started = now
        for g in self.groups.values():
            if g is group:
                break
            if g.state == "building":
                g.state = "done"
                g.ended = g.ended or g.last_event or now
                for st in g.stages.values():
                    st.finished = True

    def finish(self, report: BuildReport | None, outcome: str, now: float) -> None:
        """The build ended (``outcome`` ok | cancelled | error | crash): final states for every group
        (an artefact whose file a stopped build had already replaced is ``unverified``)."""
        self.ended, self.outcome = now, outcome
        by_name = {a.name: a for a in report.artefacts} if report else {}
        for g in self.groups.values():
            art = by_name.get(g.name)
            if report is not None and (art is not None or g.name == "verify"):
                ok = art.verified if art is not None else report.ok
                if art is not None and art.reused:
                    g.state = "reused-verified" if ok else "failed"
                else:
                    g.state = ("passed" if g.name == "verify" else "verified") if ok else "failed"
                for st in g.stages.values():
                    st.finished = True
            elif report is not None and g.kind in ("sysext", "uki"):
                g.state = "skipped"
            elif g.name in self.replaced:
                g.state = "unverified"
            elif g.state in ("building", "done"):
                g.state = "cancelled" if outcome == "cancelled" else "failed"
            if g.started is not None:
                g.ended = g.ended or g.last_event or now

    # -- figures ----------------------------------------------------------------------------
    def elapsed(self, now: float) -> float:
        return (self.ended or now) - self.started

    def eta(self, now: float) -> float | None:
        """Seconds left; None once ended, or while a packer tool that reports nothing runs past
        its nominal time (then nobody knows)."""
        if self.ended is not None or any(g.packer_overdue(now) for g in self.groups.values()):
            return None
        return sum(g.remaining(now) for g in self.groups.values())

    def fraction(self, now: float) -> float:
        """The share done, 0..1, never going back; 1 when the build succeeded."""
        if self.outcome == "ok":
            return 1.0
        left = self.eta(now)
        if self.ended is None and self.work_started is not None and left is not None:
            worked = now - self.work_started
            if worked + left > 0:
                self._fraction = max(self._fraction, min(0.99, worked / (worked + left)))
        return self._fraction
