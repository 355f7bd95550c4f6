"""A one-line text widget that repaints without a new layout.

``Static.update`` asks for a layout pass of the screen; the breadcrumb, column header, top bar
and status line change on many keys while their size never does, so they only repaint.
"""

from __future__ import annotations

from collections.abc import Callable

from rich.text import Text
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

    def render(self) -> Text:
        text = Text.from_markup(self.source() if self.source is not None else self.markup)
        text.no_wrap = True
        text.overflow = "ellipsis"
        return text
