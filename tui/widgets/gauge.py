"""The UKI gauge: predicted UKI size against the spec's firmware limit.

A bar from 0 to a little past the limit, coloured by :attr:`Figures.level` (ok, warn, high risk,
over), a tick at the limit, and below it the figures: UKI size with its error band, the limit,
the initrd as it goes into the UKI (exact uncompressed newc bytes, or the compressed estimate),
and the change the last action made.
"""

from __future__ import annotations

from rich.text import Text
from textual.widget import Widget

from sysextant.core.sizing.forecast import Figures
from sysextant.core.units import format_size

LEVEL_WORDS = {"ok": "under the limit", "warn": "close to the limit", "high-risk": "high risk (past 1 GiB)",
               "over": "over the limit", "fails": "over: fails on every firmware seen (2 GiB)",
               "impossible": "over: impossible, past the PE format's 4 GiB"}


def is_estimate(fig: Figures) -> bool:
    """Whether the figure stands for the UKI as it will be built: a compressed estimate, or an
    exact figure (no compression). An uncompressed initrd while the estimate is being prepared
    is not: no verdict is drawn from it."""
    return fig.estimated or "exact" in fig.method or fig.initrd_bytes != fig.initrd_cpio


def first_fitting(width: int, *candidates: str) -> str:
    """The first candidate that fits in ``width`` columns, else the last one."""
    return next((c for c in candidates if len(c) <= width), candidates[-1])


class UkiGauge(Widget):
    """Two lines: the bar, and the figures."""

    COMPONENT_CLASSES = {"gauge--ok", "gauge--warn", "gauge--high-risk", "gauge--over", "gauge--empty",
                         "gauge--limit", "gauge--dim", "gauge--good", "gauge--bad", "gauge--pending"}

    DEFAULT_CSS = """
    UkiGauge { height: 3; padding: 0 1; }
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.figures: Figures | None = None
        self.delta: int | None = None
        self.delta_label = ""
        self.note = "scanning the OS tree…"

    def show(self, figures: Figures | None, *, delta: int | None = None, delta_label: str = "",
             note: str = "") -> None:
        self.figures = figures
        if delta is not None:
            self.delta, self.delta_label = delta, delta_label
        self.note = note
        self.refresh()

    def render(self) -> Text:
        width = max(20, self.size.width)
        fig = self.figures
        dim = self.get_component_rich_style("gauge--dim")
        if fig is None:
            return Text(self.note or "scanning the OS tree…", style=dim)
        honest = is_estimate(fig)
        level_style = self.get_component_rich_style(f"gauge--{fig.level}" if honest else "gauge--pending")
        size = format_size(fig.uki_bytes)
        limit = format_size(fig.limit)
        label = f" {'' if honest else '≤ '}{size} / {limit} "
        bar_w = max(10, width - len(label) - 4)
        scale = max(fig.limit * 1.25, fig.uki_high * 1.02, 1)
        filled = min(bar_w, round(fig.uki_bytes / scale * bar_w))
        band_hi = min(bar_w, round(fig.uki_high / scale * bar_w))
        limit_at = min(bar_w - 1, round(fig.limit / scale * bar_w))
        bar = Text(no_wrap=True)
        bar.append("UKI ", level_style)
        for k in range(bar_w):
            if k == limit_at:
                bar.append("┃", self.get_component_rich_style("gauge--limit"))
            elif k < filled:
                bar.append("█" if honest else "▒", level_style)
            elif k < band_hi:
                bar.append("▒", level_style)
            else:
                bar.append("─", self.get_component_rich_style("gauge--empty"))
        bar.append(label, level_style)
        line = Text(no_wrap=True)
        room = fig.limit - fig.uki_bytes
        if honest:
            band = f" estimate ±{fig.error_pct:.1f}%" if fig.estimated and fig.error_pct else ""
            line.append(f"UKI {size}{band}", level_style)
            words = LEVEL_WORDS.get(fig.verdict if fig.verdict in ("fails", "impossible") else fig.level, fig.level)
            line.append(f" · {words}", level_style)
            rest = width - line.cell_len
            change = ""
            if self.delta is not None:
                change = f" · last change {format_size(self.delta, signed=True)}"
            how = f"{format_size(abs(room))} {'left' if room >= 0 else 'over'}"
            tail = first_fitting(rest - len(change), f" · {how} of {limit}", f" · {how}", "")
            if len(tail) + len(change) > rest:
                change = ""
            line.append(tail)
            if change:
                line.append(" · last change ")
                line.append(format_size(self.delta, signed=True),
                            self.get_component_rich_style("gauge--good" if self.delta <= 0 else "gauge--bad"))
        else:
            line.append(f"UKI ≤ {size}", level_style)
            line.append(first_fitting(width - line.cell_len,
                                      " with the initrd uncompressed · no verdict until the compressed estimate is ready",
                                      " initrd uncompressed · estimate coming",
                                      " uncompressed"), dim)
        parts = [bar, line]
        if not self.has_class("-short"):
            detail = first_fitting(
                width,
                f"initrd {format_size(fig.initrd_cpio)} newc, exact (was {format_size(fig.initrd_cpio_before)} "
                f"before extensions) → {format_size(fig.initrd_bytes)} in the UKI: {fig.method}",
                f"initrd {format_size(fig.initrd_cpio)} newc (was {format_size(fig.initrd_cpio_before)}) "
                f"→ {format_size(fig.initrd_bytes)} in the UKI: {fig.method}",
                f"initrd {format_size(fig.initrd_cpio)} newc (was {format_size(fig.initrd_cpio_before)}) "
                f"→ {format_size(fig.initrd_bytes)} in the UKI")
            parts.append(Text(detail, style=dim))
        for part in parts:
            part.truncate(width, overflow="ellipsis")
        return Text("\n").join(parts)
