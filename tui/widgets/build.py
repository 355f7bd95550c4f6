"""The build screen: ``b`` builds what changed, ``B`` everything, with a bar per stage.

:func:`sysextant.core.build.pipeline.build` runs in a thread worker; its :class:`~sysextant.core.progress.Progress`
events come back to the screen with ``post_message``, at most about ten a second per task. The
screen groups them by artefact (one group per extension, the UKI, the final verification) from
the events' fields (``artefact``, ``stage``, ``kind``; never their text), keeps
a log of the engine's messages, and ends on the build report: every artefact with its path, size,
root hash or sha256, reused or built, and its verification checks; the UKI against the limit; and
how Kairos deploys the files. ``esc`` asks the engine to stop at its next check; the engine writes
atomically, so a cancelled or failed build leaves the previous outputs in place.

Only presentation lives here: what is built, reused, verified and deployed comes from the report.
"""

from __future__ import annotations

import json
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.message import Message
from textual.screen import ModalScreen
from textual.widget import Widget
from textual.widgets import Footer, RichLog, Static

from sysextant.core.atomic import write_atomic
from sysextant.core.build.artefacts import leftover_temps, replaced_since
from sysextant.core.build.pipeline import BuildReport, build
from sysextant.core.errors import Cancelled, UserError
from sysextant.core.progress import Progress, Reporter
from sysextant.core.sizing.plan import Plan
from sysextant.core.spec.model import Spec
from sysextant.core.tree.index import TreeIndex
from sysextant.core.units import format_size
from sysextant.core.workbench.session import Figures

from .gauge import LEVEL_WORDS
from .item import plural
from .tree_list import middle_cut

#: How often one task's progress is forwarded to the screen (seconds between events).
THROTTLE = 0.1
SUMMARY_NAME = "sysextant-build.json"
#: Verification checks shown with their detail in the result (the rest by name).
KEY_CHECKS = ("verity", "signature")

#: Words for the engine's stage names (the part of the task after "NAME: ").
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


# -- the model of a running build: plain data, no Textual ----------------------------------------


@dataclass
class Stage:
    """One task's latest progress."""

    task: str
    stage: str
    unit: str
    started: float
    done: int = 0
    total: int = 0
    updated: float = 0.0
    finished: bool = False

    @property
    def label(self) -> str:
        return STAGE_LABELS.get(self.stage, self.stage)

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
    """The stages of one artefact (or of the scan or the verification)."""

    name: str
    kind: str  # sysext | uki | verify | other
    file: str = ""
    #: (stage, bytes it will handle, nominal bytes a second) for the stages this group will run
    expected: list[tuple[str, int, float]] = field(default_factory=list)
    state: str = "waiting"  # waiting building reused done verified passed failed cancelled skipped
    stages: dict[str, Stage] = field(default_factory=dict)
    started: float | None = None
    ended: float | None = None
    last_event: float | None = None

    @property
    def over(self) -> bool:
        return self.state not in ("waiting", "building")

    def packer_overdue(self, now: float) -> bool:
        """A packer tool runs silently for this group and has taken longer than nominal."""
        staged = self.stages.get("pack: stage")
        if self.over or staged is None or not staged.finished or "pack" in self.stages:
            return False
        size, rate = next(((b, r) for name, b, r in self.expected if name == "pack"), (0, 1.0))
        return now - (staged.updated or staged.started) > size / rate

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
        return left


class BuildTracker:
    """Progress events grouped by artefact, the overall fraction and an ETA.

    Groups are known before the first event (the spec's extensions, the UKI, verification) so the
    screen shows what will happen. The ETA adds up, for every stage still to run, its remaining
    time at its measured rate (or a nominal rate before it starts); the overall fraction is the
    share of the time worked so far in worked + ETA, so the bar and the ETA tell the same story.
    """

    def __init__(self, spec: Spec, plan: Plan | None, started: float, uki_bytes: int | None = None) -> None:
        self.started = started
        self.ended: float | None = None
        self.outcome = ""
        self._fraction = 0.0
        self.work_started: float | None = None  # the first progress event (key checks come before)
        self.signed = spec.signing is not None
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
        elif ev.kind == "progress" and ev.stage:
            if self.work_started is None:
                self.work_started = now
            st = group.stages.get(ev.stage)
            if st is None:  # a stage starts where the group's previous one ended
                st = group.stages[ev.stage] = Stage(ev.task, ev.stage, ev.unit, group.last_event or now)
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

    def finish(self, report: BuildReport | None, outcome: str, now: float, replaced: frozenset[str] = frozenset()) -> None:
        """The build ended (``outcome`` ok | cancelled | error | crash): final states for every group.
        ``replaced`` names the artefacts whose files this build replaced before it stopped."""
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
            elif g.name in replaced:
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


def format_seconds(s: float) -> str:
    if s < 10:
        return f"{s:.1f} s"
    if s < 60:
        return f"{s:.0f} s"
    m, s = divmod(int(s + 0.5), 60)
    return f"{m} min {s:02d} s"


def format_amount(done: int, total: int, unit: str) -> str:
    if unit == "bytes":
        return f"{format_size(done)} / {format_size(total)}" if total else format_size(done)
    word = "" if unit == "steps" else f" {unit}"
    return f"{done:,} / {total:,}{word}" if total else f"{done:,}{word}"


# -- widgets --------------------------------------------------------------------------------------
BAR_WIDTH = 30
STATE_WORDS = {"waiting": "waiting", "building": "building…", "reused": "unchanged: reused",
               "done": "built", "verified": "built and verified ✓", "passed": "all passed ✓", "failed": "FAILED",
               "cancelled": "cancelled", "skipped": "not built",
               "unverified": "built, not verified (the build stopped)",
               "reused-verified": "unchanged: reused, verified ✓"}


class StagesView(Widget):
    """Every group with its stage bars, one line each; rendered as one Text (no widget per bar)."""

    COMPONENT_CLASSES = {"build--bar", "build--bar-empty", "build--done", "build--dim", "build--group",
                         "build--bad", "build--busy"}
    DEFAULT_CSS = "StagesView { height: auto; }"

    def __init__(self, tracker: BuildTracker, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.tracker = tracker
        self._lines = 0

    def count_lines(self) -> int:
        return sum(1 + len(g.stages) + (silent_packer(g) is not None)
                   for g in self.tracker.groups.values() if g.kind != "other" or g.stages)

    def update_view(self) -> None:
        lines = self.count_lines()
        self.refresh(layout=lines != self._lines)
        self._lines = lines

    def get_content_height(self, container, viewport, width: int) -> int:  # noqa: ANN001
        self._lines = self.count_lines()
        return self._lines

    def render(self) -> Text:
        style = self.get_component_rich_style
        dim, bar_style, empty = style("build--dim"), style("build--bar"), style("build--bar-empty")
        state_style = {"verified": style("build--done"), "done": style("build--done"), "passed": style("build--done"),
                       "reused-verified": style("build--done"),
                       "reused": style("build--done"), "failed": style("build--bad"),
                       "cancelled": style("build--bad"), "building": style("build--busy")}
        out: list[Text] = []
        for g in self.tracker.groups.values():
            if g.kind == "other" and not g.stages:
                continue
            line = Text(no_wrap=True, overflow="ellipsis")
            title = {"uki": "UKI", "verify": "verification"}.get(g.name, g.name)
            line.append(f"{title:<14}", style("build--group"))
            what = {"sysext": "system extension", "verify": "independent checks",
                    "uki": "slimmed UKI" + ("" if self.tracker.signed else " (unsigned)")}.get(g.kind, "")
            line.append(f"{what:<22}", dim)
            line.append(f"{g.file:<28}", dim)
            line.append(STATE_WORDS.get(g.state, g.state), state_style.get(g.state, dim))
            if g.started is not None and g.ended is not None and g.state not in ("reused", "reused-verified", "waiting"):
                line.append(f"  {format_seconds(g.ended - g.started)}", dim)
            out.append(line)
            for st in g.stages.values():
                row = Text(no_wrap=True, overflow="ellipsis")
                row.append(f"  {st.label:<32}", dim if st.finished else "")
                filled = round(st.fraction * BAR_WIDTH)
                row.append("━" * filled, style("build--done") if st.finished else bar_style)
                row.append("─" * (BAR_WIDTH - filled), empty)
                row.append(f" {st.fraction * 100:5.1f}%  ", "")
                row.append(f"{format_amount(st.done, st.total, st.unit):<24}", dim)
                rate = st.rate
                if rate is not None:
                    row.append(f"{format_size(rate)}/s", dim)
                out.append(row)
            since = silent_packer(g)
            if since is not None:  # mksquashfs / mkfs.erofs report nothing while they run
                row = Text(no_wrap=True, overflow="ellipsis")
                row.append(f"  {STAGE_LABELS['pack']:<32}")
                phase = int(time.monotonic() * 4) % (BAR_WIDTH - 2)
                row.append("─" * phase, empty)
                row.append("━━━", bar_style)
                row.append("─" * max(0, BAR_WIDTH - phase - 3), empty)
                row.append(f"  the packer is running ({format_seconds(time.monotonic() - since)}; it reports no progress)",
                           dim)
                out.append(row)
        width = self.size.width or 120
        for t in out:
            t.truncate(width, overflow="ellipsis")
        return Text("\n").join(out)


def silent_packer(g: Group) -> float | None:
    """When a packer tool runs for ``g`` (staged, not yet packed): since when; else None."""
    staged = g.stages.get("pack: stage")
    if g.state != "building" or staged is None or not staged.finished or "pack" in g.stages:
        return None
    return staged.updated or staged.started


class OverallBar(Widget):
    """Overall progress, elapsed time and ETA on one line."""

    COMPONENT_CLASSES = {"overall--bar", "overall--bar-empty", "overall--done", "overall--bad", "overall--dim"}
    DEFAULT_CSS = "OverallBar { height: 1; }"

    def __init__(self, tracker: BuildTracker, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.tracker = tracker
        self.outcome = ""  # ok | cancelled | error | crash when ended
        self.cancelling = False

    def text(self) -> Text:
        t = self.tracker
        now = time.monotonic()
        f = t.fraction(now)
        style = self.get_component_rich_style
        width = max(40, self.size.width or 120)
        bar_w = max(10, min(60, width - 60))
        bar_style = style("overall--bar")
        if self.outcome == "ok":
            bar_style = style("overall--done")
        elif self.outcome:
            bar_style = style("overall--bad")
        line = Text(no_wrap=True, overflow="ellipsis")
        line.append("Overall ", "bold")
        filled = round(f * bar_w)
        line.append("█" * filled, bar_style)
        line.append("░" * (bar_w - filled), style("overall--bar-empty"))
        line.append(f" {f * 100:3.0f}%", "bold")
        line.append(f"  · {format_seconds(t.elapsed(now))} elapsed", style("overall--dim"))
        if self.outcome:
            words = {"ok": "finished", "cancelled": "cancelled", "error": "stopped by an error",
                     "crash": "stopped by an internal error"}[self.outcome]
            line.append(f" · {words}", bar_style)
        elif self.cancelling:
            line.append(" · cancelling at the next check…", style("overall--bad"))
        else:
            eta = t.eta(now)
            if eta is not None:
                line.append(f" · ETA {format_seconds(eta)}", style("overall--dim"))
            else:
                line.append(" · ETA — (the packer reports no progress)", style("overall--dim"))
        line.truncate(width, overflow="ellipsis")
        return line

    def render(self) -> Text:
        return self.text()


class ResultView(Static):
    """The build report as text; its colours come from the theme through component classes."""

    COMPONENT_CLASSES = {"result--ok", "result--bad", "result--warn", "result--dim", "result--head"}

    text = Text()
    _shown: tuple[BuildReport, Figures | None, Path | None] | None = None
    _width = 0

    def show(self, report: BuildReport, gauge: Figures | None, cert: Path | None = None) -> None:
        self._shown = (report, gauge, cert)
        self._width = self._room()
        self.text = result_text(report, gauge, self.get_component_rich_style, width=self._width, cert=cert)
        self.update(self.text)

    def _room(self) -> int:
        """Columns a line has: the scrolling container's width less its padding and a scrollbar
        (a long report shows one), so that no line wraps onto the next row."""
        box = self.parent
        if box is None or not box.size.width:
            return 120
        st = box.styles
        return max(20, box.size.width - st.padding.left - st.padding.right - int(st.scrollbar_size_vertical))

    def on_resize(self) -> None:
        if self._shown is not None and self._room() != self._width:
            self.show(*self._shown)


def result_text(r: BuildReport, gauge: Figures | None, style: Callable[[str], object], *, width: int = 120,
                cert: Path | None = None) -> Text:
    """The report: artefacts, checks, UKI size against prediction and limit, how to deploy.

    ``style`` maps a component class (``result--ok`` …) to a Rich style; ``width``: the columns a
    line has (a root hash that does not fit after its label goes on a row of its own); ``cert``:
    the db certificate the artefacts are signed with (the deploy section says how it gets into
    the firmware).
    """
    ok_style, bad_style, warn_style = style("result--ok"), style("result--bad"), style("result--warn")
    dim, head = style("result--dim"), style("result--head")
    out = Text()
    uki = next((a for a in r.artefacts if a.kind == "uki"), None)
    if r.over_limit and uki is not None:  # the verdict that decides comes first, before any ✓
        over = uki.size - r.limit_bytes
        out.append("✗ BUILD FAILED: ", bad_style)
        out.append(f"the UKI is {format_size(uki.size)}, {r.verdict} the limit {format_size(r.limit_bytes)}"
                   + (f" by {format_size(over)}: move about that much more (compressed) out of it" if over > 0 else "")
                   + ". Do not deploy it.\n\n")
    if r.tree_changed:
        out.append("! ", warn_style)
        out.append(f"{r.tree_changed}\n", warn_style)
    for path in r.removed:
        out.append("  removed ", dim)
        out.append(f"{path}", head)
        out.append(": it no longer belongs to the spec\n", dim)
    if r.tree_changed or r.removed:
        out.append("\n")
    for a in r.artefacts:
        mark, mstyle = ("✓", ok_style) if a.verified else ("✗", bad_style)
        out.append(f"{mark} ", mstyle)
        out.append(f"{a.name}", head)
        out.append(f"  {'system extension' if a.kind == 'sysext' else 'UKI'}  ", dim)
        out.append(f"{a.path}\n")
        state = "reused (unchanged since the last build)" if a.reused else "built"
        line = f"    {format_size(a.size)} ({a.size:,} bytes) · {state} · {'signed' if a.signed else 'UNSIGNED'}"
        if len(line) > width and a.reused:
            state = "reused (unchanged)"
        out.append(f"    {format_size(a.size)} ({a.size:,} bytes) · {state} · ")
        out.append("signed\n" if a.signed else "UNSIGNED\n", "" if a.signed else warn_style)
        label = "root hash" if a.kind == "sysext" else "sha256"
        if 4 + len(label) + 1 + len(a.digest) <= width:
            out.append(f"    {label} ", dim)
            out.append(f"{a.digest}\n")
        else:  # 80 columns: the hash on a row of its own, inside it (whole in the JSON summary)
            out.append(f"    {label}\n", dim)
            out.append(f"    {a.digest if 4 + len(a.digest) <= width else middle_cut(a.digest, width - 4)}\n")
        failed = [c for c in a.checks if not c.ok]
        if not a.checks:
            out.append("    no checks were run\n", bad_style)
        for c in a.checks:  # the two that make it trustworthy first, with what they found
            if c.name in KEY_CHECKS:  # (the root hash has its own row above)
                out.append(f"    {'✓' if c.ok else '✗'} {c.name}: ", ok_style if c.ok else bad_style)
                out.append(f"{c.detail}\n")
        for c in failed:
            if c.name not in KEY_CHECKS:
                out.append(f"    ✗ {c.name}: ", bad_style)
                out.append(f"{c.detail}\n")
        others = [c.name for c in a.checks if c.ok and c.name not in KEY_CHECKS]
        if a.checks:
            out.append(f"    ✓ all {plural(len(a.checks), 'check')} passed" if not failed else
                       f"    ✗ {len(failed)} of {len(a.checks)} checks FAILED", ok_style if not failed else bad_style)
            out.append(f" ({' '.join(others)})\n" if others else "\n", dim)
        if a.kind == "uki":
            out.append("    size: predicted ", dim)
            out.append(format_size(a.predicted_size) if a.predicted_size is not None else "—")
            if gauge is not None:
                band = f" ±{gauge.error_pct:.1f}%" if gauge.estimated and gauge.error_pct else ""
                out.append(" · workbench gauge before the build ", dim)
                out.append(f"{format_size(gauge.uki_bytes)}{band}")
                if "estimate not available" in gauge.method:
                    out.append(" (initrd counted uncompressed)", dim)
            out.append(" · actual ", dim)
            out.append(f"{format_size(a.size)}\n", head)
    if r.verdict:
        words = LEVEL_WORDS.get(r.verdict, r.verdict)
        vstyle = ok_style if r.verdict == "ok" else (warn_style if r.verdict in ("warn", "high-risk") else bad_style)
        out.append("UKI against the limit ", head)
        out.append(f"{format_size(r.limit_bytes)}: ")
        out.append(f"{words}\n", vstyle)  # the words say the verdict; "over (over the limit)" said it twice
    if r.deploy:  # only for a build that can ship
        out.append("\nDeploy on Kairos\n", head)
        for line in r.deploy:
            out.append(f"  {line}\n")
    out.append("\ns saves the JSON summary · l shows the stages · esc/q back to the workbench", dim)
    return out


# -- the screen -----------------------------------------------------------------------------------
class BuildScreen(ModalScreen[tuple[str, str]]):
    """Runs one build and shows its progress, then its result. Dismisses with (status kind, text)."""

    BINDINGS = [
        Binding("escape", "cancel_build", "Cancel build"),
        Binding("escape", "close", "Back to the workbench"),
        Binding("q", "quit_key", "Back / quit", show=False),
        Binding("s", "save_summary", "Save JSON summary"),
        Binding("l", "toggle_stages", "Stages/result"),
    ]

    class Event(Message):
        """A progress event from the build thread."""

        def __init__(self, progress: Progress, at: float) -> None:
            super().__init__()
            self.progress = progress
            self.at = at

    class Finished(Message):
        """The build thread ended: ``kind`` is ok, cancelled, error or crash."""

        def __init__(self, kind: str, report: BuildReport | None = None, error: str = "", detail: str = "") -> None:
            super().__init__()
            self.kind = kind
            self.report = report
            self.error = error
            self.detail = detail

    def __init__(self, spec: Spec, index: TreeIndex | None, plan: Plan | None, *, force: bool = False,
                 gauge: Figures | None = None, runner: Callable[..., BuildReport] | None = None,
                 estimator: Any = None) -> None:
        super().__init__()
        self.spec = spec
        self.index = index
        self.estimator = estimator  # the workbench's prepared estimate: the build need not redo it
        self.force = force
        self.gauge = gauge
        self.runner = runner or build
        self.reporter = Reporter(self._forward)
        self.tracker = BuildTracker(spec, plan, time.monotonic(), gauge.uki_bytes if gauge else None)
        self.running = True
        self.kind = ""  # the outcome, when ended
        self.report: BuildReport | None = None
        self.error = ""
        self.saved: Path | None = None
        self.wall_started = time.time()
        self.replaced: list[tuple[str, Path]] = []  # (artefact, file) this build replaced before it stopped
        self._last_post: dict[str, float] = {}
        self._quit_armed = False  # q pressed once while the build runs

    def compose(self) -> ComposeResult:
        with Vertical(id="build-box"):
            yield Static(self._title(), id="build-title")
            yield OverallBar(self.tracker, id="build-overall")
            yield Static(id="build-outcome")
            with VerticalScroll(id="build-stages"):
                yield StagesView(self.tracker, id="build-stage-view")
            with VerticalScroll(id="build-result"):
                yield ResultView(id="build-result-text")
            yield RichLog(id="build-log", wrap=True, highlight=False, markup=False, max_lines=5000)
        yield Footer()

    def _title(self) -> str:
        from rich.markup import escape

        what = "everything (B: unchanged artefacts rebuilt too)" if self.force else "what changed since the last build"
        return (f"[b]Build[/b] {escape(str(self.spec.path))} → {escape(str(self.spec.output))}  ·  "
                f"[b]{what}[/b]")

    def on_mount(self) -> None:
        self.query_one("#build-outcome").display = False
        self.query_one("#build-result").display = False
        self.log_line("build", "build started" + (" (forced: nothing reused)" if self.force else ""))
        self.set_interval(0.25, self._tick)
        self.run_build()

    def on_unmount(self) -> None:
        self.reporter.cancel()  # never leave a build running behind a closed screen

    # -- the worker -----------------------------------------------------------------------------
    def _forward(self, ev: Progress) -> None:
        """Called in the build thread: pass the event on, at most every THROTTLE s per task."""
        now = time.monotonic()
        in_between = not ev.message and ev.total and 0 < ev.done < ev.total
        if in_between and now - self._last_post.get(ev.task, 0.0) < THROTTLE:
            return  # the first and the last event of a task always pass
        self._last_post[ev.task] = now
        self.post_message(self.Event(ev, now))

    @work(thread=True, exclusive=True, exit_on_error=False, group="build")
    def run_build(self) -> None:
        try:
            extra = {"estimator": self.estimator} if self.estimator is not None else {}
            report = self.runner(self.spec, force=self.force, reporter=self.reporter, index=self.index, **extra)
        except Cancelled:
            self.post_message(self.Finished("cancelled"))
        except UserError as exc:
            self.post_message(self.Finished("error", error=str(exc)))
        except Exception as exc:  # noqa: BLE001 - an engine bug is shown, not allowed to kill the app
            detail = "".join(traceback.format_exception(exc))
            self.post_message(self.Finished("crash", error=f"{type(exc).__name__}: {exc}", detail=detail))
        else:
            self.post_message(self.Finished("ok", report=report))

    # -- events -------------------------------------------------------------------------------
    def on_build_screen_event(self, message: Event) -> None:
        ev = message.progress
        self.tracker.apply(ev, message.at)
        if ev.message:
            self.log_line(ev.task, ev.message, message.at)
        self.query_one(StagesView).update_view()
        self.query_one(OverallBar).refresh()

    def log_line(self, task: str, text: str, at: float | None = None) -> None:
        at = time.monotonic() if at is None else at
        line = Text(no_wrap=True)
        line.append(f"{at - self.tracker.started:7.2f}  ", "dim")
        line.append(f"{task:<16} ", "bold")
        line.append(text)
        self.query_one(RichLog).write(line)

    def _tick(self) -> None:
        self.query_one(OverallBar).refresh()
        if any(silent_packer(g) is not None for g in self.tracker.groups.values()):
            self.query_one(StagesView).update_view()  # keep the running packer's row moving

    def on_build_screen_finished(self, message: Finished) -> None:
        now = time.monotonic()
        self.running = False
        self.kind, self.report, self.error = message.kind, message.report, message.error
        self.replaced = self.replaced_outputs() if message.kind != "ok" else []
        self.tracker.finish(message.report, message.kind, now, frozenset(name for name, _ in self.replaced))
        overall = self.query_one(OverallBar)
        overall.outcome = message.kind
        overall.refresh()
        self.query_one(StagesView).update_view()
        outcome = self.query_one("#build-outcome", Static)
        outcome.set_classes(f"outcome-{'ok' if message.kind == 'ok' and message.report.ok else 'bad'}")
        outcome.update(self.outcome_text())
        outcome.display = True
        if message.detail:
            for line in message.detail.rstrip().splitlines():
                self.query_one(RichLog).write(Text(line, style="dim"))
        if message.kind == "ok":
            self.log_line("build", f"finished in {format_seconds(message.report.seconds)}", now)
            self.query_one(ResultView).show(message.report, self.gauge,
                                            self.spec.signing.cert if self.spec.signing else None)
            self.query_one("#build-stages").display = False
            self.query_one("#build-result").display = True
            self.query_one("#build-result").focus()
        else:
            self.log_line("build", self.outcome_summary()[1], now)
            for line in self.error.splitlines()[1:]:  # e.g. the spec's problems, one a line
                self.log_line("", line, now)
        self.refresh_bindings()

    # -- texts ----------------------------------------------------------------------------------
    def outcome_summary(self) -> tuple[str, str]:
        """(status kind, one line) for the workbench's status line after the screen closes."""
        if self.running:
            return "info", "build running"
        if self.kind == "ok" and self.report is not None:
            arts = self.report.artefacts
            reused = sum(a.reused for a in arts)
            bad = ", ".join(a.name for a in arts if not a.verified)
            if bad:
                return "refused", f"build finished but verification FAILED for {bad}"
            if self.report.over_limit:
                return "refused", (f"build FAILED: the UKI is {self.report.verdict} the limit "
                                   f"{format_size(self.report.limit_bytes)}; do not deploy it")
            return "ok", (f"build ok: {plural(len(arts), 'artefact')} verified ({len(arts) - reused} built, {reused} reused) "
                          f"in {format_seconds(self.report.seconds)} → {self.report.output}")
        if self.kind == "cancelled":
            return "refused", "build cancelled; " + self._kept_words()
        if self.kind == "error":
            return "refused", f"build failed: {self.error.splitlines()[0] if self.error else ''}"
        return "refused", f"build stopped by an internal error ({self.error}); previous outputs kept"

    def outcome_text(self) -> Text:
        text = Text()
        left = leftover_temps(self.spec)
        if self.kind == "ok" and self.report is not None:
            text.append(self.outcome_summary()[1], "bold")
        elif self.kind == "cancelled":
            text.append(f"Cancelled; {self._kept_words()}.", "bold")
            text.append(" Nothing of this build was half-written into the output folder.")
        elif self.kind == "error":
            text.append("The build stopped: ", "bold")
            text.append(self.error)
            text.append(f"\nNothing was half-written; {self._kept_words()}. Fix this and press b again.")
        else:
            text.append("The build stopped on an internal error (a bug; please report it): ", "bold")
            text.append(self.error)
            text.append("\nThe traceback is in the log below; the previous outputs are kept.")
        if left:
            text.append(f"\nWARNING: temp files remain: {', '.join(str(p) for p in left)}", "bold")
        if self.saved:
            text.append(f"\nJSON summary saved to {self.saved} (path copied to the clipboard)")
        return text

    def replaced_outputs(self) -> list[tuple[str, Path]]:
        """The artefact files this (stopped) build replaced: written after it started."""
        return replaced_since(self.spec, self.wall_started)

    def _kept_words(self) -> str:
        """What a stop left: the previous outputs, or which ones this build had already replaced
        (saying "previous outputs kept" and "X had been rebuilt" together contradicted itself)."""
        if not self.replaced:
            return "previous outputs kept"
        names = ", ".join(p.name for _, p in self.replaced)
        return (f"{names} already rebuilt whole (not yet verified); "
                f"the other outputs are the previous ones")

    # -- actions --------------------------------------------------------------------------------
    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "cancel_build":
            return self.running
        if action == "close":
            return not self.running
        if action == "save_summary":
            return self.report is not None
        if action == "toggle_stages":
            return self.report is not None
        return True

    def action_cancel_build(self) -> None:
        if not self.running or self.reporter.cancelled:
            return
        self.reporter.cancel()
        self.query_one(OverallBar).cancelling = True
        self.query_one(OverallBar).refresh()
        self.log_line("build", "cancel requested: stopping at the next check")

    def action_close(self) -> None:
        if not self.running:
            self.dismiss(self.outcome_summary())

    async def action_quit_key(self) -> None:
        """q: back to the workbench once the build is over; while it runs, the first q says what
        q and esc do, a second q stops the build (outputs stay whole) and quits."""
        if not self.running:
            self.dismiss(self.outcome_summary())
            return
        if self._quit_armed:
            self.log_line("build", "q again: stopping the build and quitting")
            await self.app.action_quit()
            return
        self._quit_armed = True
        message = "a build is running: q again stops it and quits; esc stops it and stays (outputs stay whole)"
        self.log_line("build", message)
        self.notify(message, title="Build running", timeout=4)

    def action_toggle_stages(self) -> None:
        stages, result = self.query_one("#build-stages"), self.query_one("#build-result")
        stages.display, result.display = result.display, stages.display

    def action_save_summary(self) -> None:
        if self.report is None:
            return
        path = Path(self.report.output) / SUMMARY_NAME
        try:
            write_atomic(path, (json.dumps(self.report.to_json(), indent=1, default=str) + "\n").encode())
        except UserError as exc:
            self.notify(str(exc), severity="error")
            return
        self.saved = path
        self.app.copy_to_clipboard(str(path))
        self.query_one("#build-outcome", Static).update(self.outcome_text())
        self.log_line("build", f"JSON summary saved to {path}")

    async def stop(self) -> None:
        """Cancel a running build and wait for its thread to end (quitting the app)."""
        self.reporter.cancel()
        for worker in self.workers:
            if worker.group == "build":
                await worker.wait()
