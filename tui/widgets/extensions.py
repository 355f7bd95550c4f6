"""The extensions panel: each extension with its figures, and the paths of the current one.

The upper list has one item per extension (entries, apparent bytes, a rough image size and the
initrd bytes it saves); highlighting one makes it the current extension that ``space`` marks
into. The lower list holds the current extension's paths; ``delete``/``x`` there unmarks one.
"""

from __future__ import annotations

from rich.markup import escape
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.message import Message
from textual.widgets import OptionList, Static
from textual.widgets.option_list import Option

from sysextant.core.units import format_size
from sysextant.core.workbench.figures import ExtensionFigures

from .tree_list import EXT_COLOURS  # one colour per extension, by spec order, in both widgets


class ExtensionList(OptionList):
    """One option per extension."""

    BINDINGS = [Binding("delete,minus", "app.remove_extension", "Remove extension")]


class PathList(OptionList):
    """The current extension's paths; delete/x unmarks the highlighted one."""

    BINDINGS = [Binding("delete,x,backspace", "unmark", "Unmark path")]

    class Unmark(Message):
        def __init__(self, path: str) -> None:
            super().__init__()
            self.path = path

    def action_unmark(self) -> None:
        if self.highlighted is not None:
            option = self.get_option_at_index(self.highlighted)
            if option.id:
                self.post_message(self.Unmark(option.id))


class ExtensionsPanel(Vertical):
    """Extensions with their figures, and the current one's paths."""

    COMPONENT_CLASSES = {*(f"extensions--ext-{k}" for k in range(EXT_COLOURS)), "extensions--dim"}

    DEFAULT_CSS = """
    ExtensionsPanel { width: 44; }
    ExtensionsPanel ExtensionList { height: 1fr; min-height: 5; }
    ExtensionsPanel PathList { height: auto; max-height: 40%; min-height: 3; }
    ExtensionsPanel .panel-title { height: 1; padding: 0 1; }
    """

    class Picked(Message):
        """The user highlighted another extension."""

        def __init__(self, name: str | None) -> None:
            super().__init__()
            self.name = name

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.names: list[str] = []
        self.current: str | None = None
        self._updating = False
        self._last: tuple[list[ExtensionFigures], str | None] | None = None
        self._width = 0

    def on_resize(self) -> None:
        """Items are cut to the panel's width: draw them again at the new one."""
        if self._last is not None and self.content_size.width != self._width:
            self._width = self.content_size.width
            self.update(*self._last)

    def compose(self) -> ComposeResult:
        yield Static("Extensions", id="ext-title", classes="panel-title")
        yield ExtensionList(id="ext-list")
        yield Static("Paths", id="paths-title", classes="panel-title")
        yield PathList(id="ext-paths")

    def update(self, figures: list[ExtensionFigures], current: str | None) -> None:
        """Show ``figures``; ``current`` is highlighted and its paths listed."""
        ext_list = self.query_one(ExtensionList)
        self._last = (figures, current)
        self._updating = True
        try:
            self.names = [f.name for f in figures]
            self.current = current if current in self.names else (self.names[0] if self.names else None)
            options: list[Option] = []
            for k, f in enumerate(figures):
                options.append(Option(self._item(k, f), id=f.name))
            ext_list.clear_options()
            if options:
                ext_list.add_options(options)
                ext_list.highlighted = self.names.index(self.current) if self.current else 0
            else:
                ext_list.add_option(Option(Text("no extensions yet: press + to add one",
                                                style=self.get_component_rich_style("extensions--dim", partial=True)),
                                           disabled=True))
            self._show_paths(next((f for f in figures if f.name == self.current), None))
        finally:
            self._updating = False

    def _item(self, k: int, f: ExtensionFigures) -> Text:
        """Three lines, each cut to the panel's width: name and entries; what it takes off the
        UKI and its paths; its bytes and image size."""
        colour = self.get_component_rich_style(f"extensions--ext-{k % EXT_COLOURS}", partial=True)
        dim = self.get_component_rich_style("extensions--dim", partial=True)
        width = max(12, (self.content_size.width or 30) - 1)
        saved = (f"UKI −{format_size(f.uki_saved)} est." if f.uki_saved_estimated
                 else f"initrd −{format_size(f.initrd_saved)}" if f.entries
                 else "nothing marked yet")
        paths = f"{len(f.paths)} path{'' if len(f.paths) == 1 else 's'}"
        entries = f"{f.entries:,} {'entry' if f.entries == 1 else 'entries'}"
        lines = []
        first = Text(no_wrap=True)
        first.append(f"{k + 1 if k < 9 else ' '} ", dim)
        first.append("■ ", colour)
        first.append(f.name, colour)
        if first.cell_len + 2 + len(entries) <= width:
            first.append(f"  {entries}", dim)
        lines.append(first)
        second = Text("  ", no_wrap=True)
        second.append(saved)
        second.append(f" · {paths}", dim)
        if f.special:
            second.append(f" · {f.special} special!", dim)
        lines.append(second)
        if f.entries:
            third = Text("  ", no_wrap=True)
            third.append(format_size(f.bytes))
            third.append(" · image ≈", dim)
            third.append(format_size(f.image_bytes))
            lines.append(third)
        for line in lines:
            line.truncate(width, overflow="ellipsis")
        return Text("\n").join(lines)

    def _show_paths(self, f: ExtensionFigures | None) -> None:
        paths = self.query_one(PathList)
        title = self.query_one("#paths-title", Static)
        paths.clear_options()
        if f is None:
            title.update("Paths")
            return
        room = (self.content_size.width or 30) - 2 - len(f"Paths of {f.name}")
        title.update(f"Paths of {escape(f.name)}" + ("  [dim](del unmarks)[/]" if room >= 15 else ""))
        if f.paths:
            paths.add_options([Option(p, id=p) for p in f.paths])
            paths.highlighted = 0  # del acts at once, without a first ↓ to pick a row
        else:
            paths.add_option(Option(Text("none yet: space marks the entry under the cursor",
                                         style=self.get_component_rich_style("extensions--dim", partial=True)), disabled=True))

    def on_option_list_option_highlighted(self, event: OptionList.OptionHighlighted) -> None:
        if self._updating or event.option_list.id != "ext-list" or event.option.id is None:
            return
        event.stop()
        if event.option.id != self.current:
            self.current = event.option.id
            self.post_message(self.Picked(self.current))
