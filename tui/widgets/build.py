"""The build screen's widgets: a bar per stage (:class:`StagesView`), the overall bar with the
ETA (:class:`OverallBar`) and the build report (:class:`ResultView`, :func:`result_text`).

They render a :class:`~sysextant.core.build.tracker.BuildTracker` (the engine's progress events
grouped by artefact, read from their fields) and a :class:`~sysextant.core.build.artefacts.BuildReport`
(what is built, reused, verified and deployed); the screen is :mod:`sysextant.tui.screens.build`.
Only presentation lives here.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from rich.text import Text
from textual.widget import Widget
from textual.widgets import Static

from sysextant.core.build.artefacts import BuildReport
from sysextant.core.build.tracker import STAGE_LABELS, BuildTracker
from sysextant.core.sizing.forecast import Figures
from sysextant.core.units import format_size

from .gauge import LEVEL_WORDS
from .item import plural
from .tree_list import middle_cut

#: Verification checks shown with their detail in the result (the rest by name).
KEY_CHECKS = ("verity", "signature")


# -- figures as words ------------------------------------------------------------------------------
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
        return sum(1 + len(g.stages) + (g.packer_running_since() is not None)
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
            since = g.packer_running_since()
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
