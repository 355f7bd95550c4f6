"""The packages view (``P`` toggles it with the tree): the tree's installed packages by what they
cost in the UKI, as a Line-API list like the tree list.

Columns: the cost (compressed estimate when the session has an estimator, else newc bytes), the
package's file count, how many of its files lie outside the merged hierarchies and how many are
in the boot set (both stay in the UKI), the extension whose ``packages`` lists it, the name and
version. ``space`` (the app's mark key) lists the package under the cursor in the current
extension, or takes it out; every figure comes from :meth:`Session.package_rows`.
"""

from __future__ import annotations

import textwrap

from rich.markup import escape
from rich.segment import Segment
from rich.text import Text
from textual.binding import Binding
from textual.geometry import Region, Size
from textual.message import Message
from textual.scroll_view import ScrollView
from textual.strip import Strip

from sysextant.core.units import format_size
from sysextant.core.workbench.figures import PackageRow
from sysextant.core.workbench.session import Session

from .cursor import CursorMoves
from .tree_list import EXT_COLOURS, OWNER_MAX, SIZE_W, middle_cut

FILES_W, OUT_W, BOOT_W = 7, 8, 6


def cost_label(session: Session) -> str:
    return "zstd≈" if session.estimator is not None else "initrd"


def packages_header(session: Session, owner_w: int) -> str:
    """The column header matching :meth:`PackageList.render_line`."""
    out = f"  {cost_label(session) + ' ▼':>{SIZE_W}} {'files':>{FILES_W}} {'outside':>{OUT_W}} {'boot':>{BOOT_W}} "
    if owner_w:
        out += f"{'extension'[:owner_w]:<{owner_w}} "
    return out + "package"


class PackageList(CursorMoves, ScrollView, can_focus=True):
    """Installed packages, the costliest first; arrows/j/k move (space marks: see the app)."""

    BINDINGS = [
        Binding("up,k", "cursor(-1)", "Up", show=False),
        Binding("down,j", "cursor(1)", "Down", show=False),
        Binding("pageup", "page(-1)", "Page up", show=False),
        Binding("pagedown", "page(1)", "Page down", show=False),
        Binding("home,H", "jump(0)", "First", show=False),
        Binding("end,G", "jump(-1)", "Last", show=False),
    ]

    COMPONENT_CLASSES = {"tree-list--cursor", "tree-list--dim", "tree-list--marked", "tree-list--boot",
                         *(f"tree-list--ext-{k}" for k in range(EXT_COLOURS))}

    DEFAULT_CSS = """
    PackageList { height: 1fr; overflow-x: hidden; }
    """

    class Moved(Message):
        """The cursor moved to another package."""

    def __init__(self, session: Session, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.session = session
        self.rows: list[PackageRow] = []
        self.cursor = 0
        self.current_ext: str | None = None
        self.why: str | None = None  # why there are no rows (no database, still scanning)
        self.owner_w = 0

    @property
    def row(self) -> PackageRow | None:
        return self.rows[self.cursor] if 0 <= self.cursor < len(self.rows) else None

    def reload_rows(self) -> None:
        """Re-read the rows from the session, keeping the cursor on the same package."""
        keep = self.row.key if self.row is not None else None
        tp, self.why = self.session.package_db()
        self.rows = self.session.package_rows() if tp is not None else []
        keys = [r.key for r in self.rows]
        self.cursor = keys.index(keep) if keep in keys else max(0, min(self.cursor, len(self.rows) - 1))
        self.owner_w = min(OWNER_MAX, max((len(r.ext or "") for r in self.rows), default=0))
        self.virtual_size = Size(self.size.width, len(self.rows))
        self._scroll_cursor_visible()
        self.refresh()

    # -- moving -------------------------------------------------------------------------------
    def _moved(self, old: int | None = None) -> None:
        top = self.scroll_offset.y
        self._scroll_cursor_visible()
        if old is not None and self.scroll_offset.y == top:
            width = self.size.width
            self.refresh(Region(0, old - top, width, 1), Region(0, self.cursor - top, width, 1))
        else:
            self.refresh()
        self.post_message(self.Moved())

    def _scroll_cursor_visible(self) -> None:
        if self.size.height:
            self.scroll_to_region(Region(0, self.cursor, 1, 1), animate=False, force=True, immediate=True)

    def on_resize(self) -> None:
        self.virtual_size = Size(self.size.width, len(self.rows))
        self._scroll_cursor_visible()

    # -- rendering ----------------------------------------------------------------------------
    def render_line(self, y: int) -> Strip:
        n = self.scroll_offset.y + y
        width = self.size.width
        if n >= len(self.rows):
            if not self.rows:  # why there is nothing to list, wrapped: it names paths, and 80 columns are few
                lines = empty_lines(self.why or "no package has files in the tree", width)
                if y < len(lines):
                    return Strip([Segment(lines[y].ljust(width), self.get_component_rich_style("tree-list--dim"))])
            return Strip.blank(width, self.rich_style)
        text = self._row_text(self.rows[n], width)
        if n == self.cursor:
            text.stylize(self.get_component_rich_style("tree-list--cursor"))
        return Strip(list(text.render(self.app.console))).crop_extend(0, width, self.rich_style).apply_style(
            self.rich_style)

    def _row_text(self, r: PackageRow, width: int) -> Text:
        dim = self.get_component_rich_style("tree-list--dim")
        t = Text(no_wrap=True, overflow="ellipsis")
        t.append("●" if r.ext and r.ext == self.current_ext else " ", self.get_component_rich_style("tree-list--marked"))
        t.append("◆" if r.boot else " ", self.get_component_rich_style("tree-list--boot"))
        t.append(f"{format_size(r.cost):>{SIZE_W}} ")
        t.append(f"{r.files:>{FILES_W},} ", dim)
        t.append(f"{(f'{r.outside:,}' if r.outside else '-'):>{OUT_W}} ", dim)
        t.append(f"{(f'{r.boot:,}' if r.boot else '-'):>{BOOT_W}} ", dim)
        if self.owner_w:
            label = r.ext or ""
            label = label if len(label) <= self.owner_w else label[: self.owner_w - 1] + "…"
            colour = next((k for k, e in enumerate(self.session.spec.extensions) if e.name == r.ext), 0) % EXT_COLOURS
            t.append(f"{label:<{self.owner_w}} ", self.get_component_rich_style(f"tree-list--ext-{colour}"))
        room = max(1, width - t.cell_len)
        name = middle_cut(r.key, room)
        t.append(name)
        if r.version and len(name) + 1 + len(r.version) <= room:
            t.append(f" {r.version}", dim)
        t.truncate(width, overflow="ellipsis")
        return t


def empty_lines(why: str, width: int) -> list[str]:
    """What the empty list says, wrapped to ``width`` (indented by two), every word kept."""
    return ["  " + line for line in textwrap.wrap(why, max(8, width - 3), break_on_hyphens=False)]


def packages_crumb(session: Session, plist: PackageList, current_ext: str | None) -> str:
    """The line above the list: the database, the row count, the extension space marks into."""
    tp, _why = session.package_db()
    # without rows the list itself says why (wrapped); the one line above it stays short
    what = f" ({tp.db.kind}, {len(plist.rows):,} with files)" if tp is not None else ""
    pos = f"  {plist.cursor + 1:,} of {len(plist.rows):,}" if plist.rows else ""
    ext = f"  → [b]{escape(current_ext)}[/b]" if current_ext else "  [dim]no extension: + adds one[/]"
    return f"[b]packages[/b][dim]{what}{pos}[/]{ext}"


def package_line(session: Session, r: PackageRow | None, ext: str | None) -> str:
    """One line about the package under the cursor: what of it may move, where it is listed."""
    if r is None:
        return ""
    stays = r.files - r.movable
    parts = [f"{r.movable:,} of {r.files:,} files may move"]
    if stays:
        parts.append(f"{stays:,} stay ({r.outside:,} outside the merged hierarchies, {r.boot:,} needed to boot)")
    if r.ext:
        parts.append(f"in [b]{escape(r.ext)}[/b]" + (" · space takes it out" if r.ext == ext else ""))
    elif r.held:
        parts.append(f"{r.held:,} already in extensions through their paths")
    elif ext and r.movable:
        parts.append(f"space marks it into {escape(ext)}")
    return f"[b]{escape(r.key)}[/b]  [dim]{' · '.join(parts)}[/]"


def package_pane(session: Session, r: PackageRow | None, ext: str | None) -> str:
    """The item pane (``i``) for a package: its figures and why each of its kept files stays."""
    if r is None:
        return "[dim]no package under the cursor[/]"
    lines = [f"[b]{escape(r.key)}[/b] {escape(r.version)}  [dim]package[/]",
             f"{cost_label(session)} {format_size(r.cost)} in the UKI · {r.files:,} files · {r.movable:,} may move"]
    if r.ext:
        lines.append(f"listed in extension [b]{escape(r.ext)}[/b] (extensions[].packages, resolved at plan time)")
    for reason, n, example in session.package_stays(r.key)[:5]:
        lines.append(f"{n:,} stay: {escape(reason)}, e.g. {escape(example)}")
    return "\n".join(lines)
