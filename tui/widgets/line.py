"""A one-line text widget that repaints without a new layout.

``Static.update`` asks for a layout pass of the screen; the breadcrumb, column header, top bar
and status line change on many keys while their size never does, so they only repaint.
"""

from __future__ import annotations

from collections.abc import Callable

from rich.style import Style
from rich.text import Span, Text
from textual.widget import Widget


class Line(Widget):
    """Console markup on one line, cropped with an ellipsis."""

    DEFAULT_CSS = "Line { height: 1; text-wrap: nowrap; text-overflow: ellipsis; }"

    def __init__(self, markup: str = "", *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self.markup = markup
        self.source: Callable[[], str] | None = None

    def set(self, markup: str) -> None:
        self.source = None
        if markup != self.markup:
            self.markup = markup
            self.refresh()

    def follow(self, source: Callable[[], str]) -> None:
        """Compute the text when the line is painted (figures that grow in another thread, such
        as a scan's entry count, then agree with the rows painted in the same frame)."""
        self.source = source
        self.refresh()

    _muted: dict[str, str] = {}  # theme name -> its muted colour

    def render(self) -> Text:
        text = Text.from_markup(self.source() if self.source is not None else self.markup)
        text.no_wrap = True
        text.overflow = "ellipsis"
        self._undim(text)
        return text

    def _undim(self, text: Text) -> None:
        """``[dim]`` drawn in the theme's muted colour: a terminal's faint text has no contrast
        a theme can vouch for (tests/tui/test_tui_contrast.py checks $muted)."""
        theme = self.app.theme
        muted = self._muted.get(theme)
        if muted is None:
            muted = self._muted[theme] = self.app.get_css_variables().get("muted", "grey62")
        for k, span in enumerate(text.spans):
            style = span.style
            if isinstance(style, str) and "dim" in style.split():
                text.spans[k] = Span(span.start, span.end, " ".join(w for w in style.split() if w != "dim")
                                     + f" {muted}")
            elif isinstance(style, Style) and style.dim:
                text.spans[k] = Span(span.start, span.end, style + Style(dim=False, color=muted))
