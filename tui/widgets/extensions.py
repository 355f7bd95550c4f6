"""The extensions panel: each extension with its figures, and the paths of the current one.

The upper list has one item per extension (entries, apparent bytes, a rough image size and the
initrd bytes it saves); highlighting one makes it the current extension that ``space`` marks
into. The lower list holds the current extension's paths; ``delete``/``x`` there unmarks one.
"""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.message import Message
from textual.widgets import OptionList, Static
from textual.widgets.option_list import Option

from sysextant.core.units import format_size
from sysextant.core.workbench.session import ExtensionFigures

from .tree_list import EXT_COLOURS  # one colour per extension, by spec order, in both widgets


class ExtensionList(OptionList):
    """One option per extension."""

    BINDINGS = [Binding("delete,x", "app.remove_extension", "Remove extension")]


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

    def compose(self) -> ComposeResult:
        yield Static("Extensions  [dim]a add · r rename · x del[/]", classes="panel-title")
        yield ExtensionList(id="ext-list")
        yield Static("Paths", id="paths-title", classes="panel-title")
        yield PathList(id="ext-paths")

    def update(self, figures: list[ExtensionFigures], current: str | None) -> None:
        """Show ``figures``; ``current`` is highlighted and its paths listed."""
        ext_list = self.query_one(ExtensionList)
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
                ext_list.add_option(Option(Text("no extensions yet: press a to add one",
                                                style=self.get_component_rich_style("extensions--dim", partial=True)),
                                           disabled=True))
            self._show_paths(next((f for f in figures if f.name == self.current), None))
        finally:
            self._updating = False

    def _item(self, k: int, f: ExtensionFigures) -> Text:
        colour = self.get_component_rich_style(f"extensions--ext-{k % EXT_COLOURS}", partial=True)
        dim = self.get_component_rich_style("extensions--dim", partial=True)
        t = Text(no_wrap=True, overflow="ellipsis")
        t.append(f"{k + 1 if k < 9 else ' '} ", dim)
        t.append("■ ", colour)
        t.append(f.name, colour)
        t.append(f"  {f.entries:,} entries\n", dim)
        t.append(f"    {format_size(f.bytes)}", )
        t.append(" · image ≈", dim)
        t.append(format_size(f.image_bytes))
        if f.uki_saved_estimated:
            t.append("\n    UKI −", dim)
            t.append(format_size(f.uki_saved))
            t.append(" est.", dim)
        else:
            t.append("\n    initrd −", dim)
            t.append(format_size(f.initrd_saved))
        t.append(f" · {len(f.paths)} path{'s' if len(f.paths) != 1 else ''}", dim)
        if f.special:
            t.append(f" · {f.special} special!", self.get_component_rich_style("extensions--dim", partial=True))
        return t

    def _show_paths(self, f: ExtensionFigures | None) -> None:
        paths = self.query_one(PathList)
        title = self.query_one("#paths-title", Static)
        paths.clear_options()
        if f is None:
            title.update("Paths")
            return
        title.update(f"Paths of {f.name}  [dim](del unmarks)[/]")
        if f.paths:
            paths.add_options([Option(p, id=p) for p in f.paths])
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
