"""The OS tree one folder at a time, ncdu style, as a Line-API list.

Only the visible rows are rendered (``render_line``), so a folder with 50,000 entries costs the
same as one with 5; the rows are entry indices of the :class:`~sysextant.core.tree.index.TreeIndex`,
sorted by size, name or item count (the same key again reverses, ``t`` puts folders first, as
in ncdu). Columns: size (apparent, disk usage, newc bytes or the compressed estimate), the
entry's share of what is still in the UKI initrd (bar and percent; ``g`` picks which, as ncdu's
``g``), item count, the extension that takes it, the name. Instead of a folder the list can hold
the results of a search over the whole tree (:meth:`show_results`), shown with their paths. The
index may still be growing (a scan in progress): :meth:`reload_rows` re-reads it.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, replace

from rich.segment import Segment
from rich.style import Style
from rich.text import Text
from textual.binding import Binding
from textual.geometry import Region, Size
from textual.message import Message
from textual.scroll_view import ScrollView
from textual.strip import Strip

from sysextant.core.tree.index import TreeIndex
from sysextant.core.tree.selection import has_magic
from sysextant.core.units import format_size
from sysextant.core.workbench.session import Session

from .cursor import CursorMoves

EXT_COLOURS = 6
SIZE_W, BAR_W, PCT_W = 9, 10, 6
OWNER_MAX = 14  # an extension label wider than this is cut with …
NAME_MIN, NAME_WANT = 12, 32  # a name column never narrower; optional columns give way up to this


@dataclass(frozen=True)
class Columns:
    """Which columns a row shows at a width, and how wide: the name comes first (it gets the
    folder's longest name, up to ``NAME_WANT``), then the share percent, the extension that takes
    the entry, the share bar and the item count, each only while the name keeps its room."""

    width: int
    pct: bool = False
    owner: int = 0  # 0: not shown (nothing in this folder is in an extension, or no room)
    bar: bool = False
    count: int = 0

    @property
    def fixed(self) -> int:
        """Columns before the name."""
        return (2 + SIZE_W + 1 + (BAR_W + 1 if self.bar else 0) + (PCT_W + 1 if self.pct else 0)
                + (self.count + 1 if self.count else 0) + (self.owner + 1 if self.owner else 0))

    @property
    def name(self) -> int:
        return max(0, self.width - self.fixed)


#: ``g`` cycles what the share column shows, as ncdu's ``g``: both, the percent, the bar, neither.
SHARE_MODES = ("both", "percent", "bar", "none")


def plan_columns(width: int, longest_name: int, owner_w: int, count_w: int, share: str = "both") -> Columns:
    """Fit the optional columns around the name at ``width`` (see :class:`Columns`); ``share``
    (one of :data:`SHARE_MODES`) says which of the share columns may be shown."""
    want = max(NAME_MIN, min(NAME_WANT, longest_name + 1))
    cols = Columns(width)
    pct, bar = share in ("both", "percent"), share in ("both", "bar")
    for extra in ({"pct": True} if pct else None, {"owner": min(owner_w, OWNER_MAX)} if owner_w else None,
                  {"bar": True} if bar else None, {"count": count_w} if count_w else None):
        if extra:
            wider = replace(cols, **extra)
            if wider.name >= want:
                cols = wider
    return cols


#: The size column's heading per mode: ``a`` toggles apparent and disk usage (ncdu's ``a``), ``c``
#: goes on to the initrd's newc bytes and the compressed estimate.
SIZE_LABELS = {"apparent": "size", "disk": "disk", "cpio": "initrd", "compressed": "zstd≈"}


def header_text(size_mode: str, sort: str, cols: Columns | None = None, reverse: bool = False) -> str:
    """The column header line matching :meth:`TreeList.render_line` for ``cols``."""
    cols = cols or Columns(120, pct=True, owner=OWNER_MAX, bar=True, count=7)
    size = SIZE_LABELS.get(size_mode, "size")
    size += (" ▲" if reverse else " ▼") if sort == "size" else ""
    out = f"  {size:>{SIZE_W}} "
    if cols.bar and cols.pct:
        out += f"{'share of initrd':<{BAR_W + PCT_W + 1}} "
    elif cols.bar:
        out += f"{'share':<{BAR_W}} "
    elif cols.pct:
        out += f"{'share':>{PCT_W}} "
    if cols.count:
        items = "items" + (("▲" if reverse else "▼") if sort == "count" else "")
        out += f"{items:>{cols.count}} "
    if cols.owner:
        out += f"{'extension'[:cols.owner]:<{cols.owner}} "
    return out + "name" + ((" ▼" if reverse else " ▲") if sort == "name" else "")


def search_glob(query: str) -> str:
    """The glob a search for ``query`` runs over the tree (dua's ``/``): a pattern with a ``/`` is
    a path from the tree's root (``usr/**/doc``); one without matches names at any depth
    (``*.ko.zst`` becomes ``**/*.ko.zst``); a plain word matches names holding it."""
    query = query.strip().lstrip("/")
    if "/" in query:
        return query
    return "**/" + (query if has_magic(query) else f"*{query}*")


BOOT_NEEDED, BOOT_HOLDS = "◆", "◇"


def boot_glyph(session: Session, i: int) -> str:
    """``◆`` on an entry the UKI needs to boot, ``◇`` on a folder holding some, else a blank."""
    boot = session.boot()
    if boot is None:
        return " "
    if i in boot.entries:
        return BOOT_NEEDED
    if stat.S_ISDIR(boot.index.mode[i]) and session.boot_count(i):
        return BOOT_HOLDS
    return " "


def owner_label(own: str | None, owners: list[str]) -> str:
    """The extension column: the extension that takes the entry, or ``~name`` (``~name+2``)
    for a folder some of whose entries are in extensions."""
    if own:
        return own
    return "~" + owners[0] + (f"+{len(owners) - 1}" if len(owners) > 1 else "")


def middle_cut(text: str, width: int) -> str:
    """``text`` in ``width`` columns, cut in the middle (ncdu's way: the start and the suffix of
    a long file name both stay readable)."""
    if len(text) <= width:
        return text
    if width <= 1:
        return "…"[:width]
    tail = (width - 1) // 2
    return text[: width - 1 - tail] + "…" + (text[-tail:] if tail else "")


class TreeList(CursorMoves, ScrollView, can_focus=True):
    """Entries of one folder (or search results); moves with arrows/j/k, enters with enter/l,
    leaves with h/backspace."""

    BINDINGS = [
        Binding("up,k", "cursor(-1)", "Up", show=False),
        Binding("down,j", "cursor(1)", "Down", show=False),
        Binding("pageup", "page(-1)", "Page up", show=False),
        Binding("pagedown", "page(1)", "Page down", show=False),
        Binding("home,H", "jump(0)", "First", show=False),  # g is ncdu's share column
        Binding("end,G", "jump(-1)", "Last", show=False),
        Binding("enter,l,right", "enter", "Open", show=False),
        Binding("h,left,backspace", "leave", "Up a folder", show=False),
    ]

    COMPONENT_CLASSES = {
        "tree-list--cursor",
        "tree-list--dir",
        "tree-list--link",
        "tree-list--dim",
        "tree-list--bar",
        "tree-list--bar-empty",
        "tree-list--marked",
        "tree-list--boot",
        *(f"tree-list--ext-{k}" for k in range(EXT_COLOURS)),
    }

    DEFAULT_CSS = """
    TreeList { height: 1fr; overflow-x: hidden; }
    """

    class Moved(Message):
        """The cursor moved to another entry, or the folder changed."""

        def __init__(self, entry: int | None, folder: int) -> None:
            super().__init__()
            self.entry = entry
            self.folder = folder

    class ColumnsChanged(Message):
        """The columns shown changed (a resize, another folder, a first mark in it)."""

    def __init__(self, session: Session, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.session = session
        self.index: TreeIndex | None = None
        self.folder = 0
        self.rows: list[int] = []
        self.cursor = 0
        self.sort = "size"  # or "name", or "count" (items inside)
        self.reverse = False  # the same sort key again: smallest, Z to A, fewest first
        self.dirs_first = False  # t: folders before files, whatever the sort
        self.share = "both"  # g: see SHARE_MODES
        # apparent or disk (a toggles them), cpio (newc bytes), compressed (estimate, visible rows)
        self.size_mode = "apparent"
        self.bytes_mode = "apparent"  # what a and c come back to: apparent or disk
        self.name_filter = ""
        #: D: only these entries are listed (what differs from a base tree, and the folders holding it)
        self.only = None
        #: search results over the whole tree (entry indices) shown instead of a folder, with
        #: the pattern and where the search started (folder, entry) to go back to
        self.results: list[int] | None = None
        self.search = ""
        self.search_query = ""  # what the user typed (the box shows it again)
        self._search_from: tuple[int, int | None] = (0, None)
        self.current_ext: str | None = None
        self._remember: dict[int, int] = {}  # folder -> entry the cursor was on
        self._ext_colour: dict[str, int] = {}
        self._lines: dict[tuple[int, int, bool], Strip] = {}  # (entry, width, cursor) -> rendered row
        self.columns = Columns(80)
        self._fit = (0, 0, 0)  # (longest name, owner label width, item count width) of the folder

    # -- data ---------------------------------------------------------------------------------
    def set_index(self, index: TreeIndex | None) -> None:
        if index is not self.index:
            self.index = index
            self.only = None  # entries of another scan
            if index is None or self.folder >= len(index):
                self.folder = 0
        self.reload_rows()

    @property
    def entry(self) -> int | None:
        """The entry under the cursor."""
        return self.rows[self.cursor] if 0 <= self.cursor < len(self.rows) else None

    def reload_rows(self, *, keep: int | None = None) -> None:
        """Re-read the folder's entries (sort, filter), keeping the cursor on the same entry."""
        keep = self.entry if keep is None else keep
        index = self.index
        if index is None:
            self.rows = []
        else:
            if self.results is not None:
                rows = [r for r in self.results if r < len(index)]
            else:
                rows = list(index.children(self.folder))
            if self.only is not None:
                rows = [r for r in rows if r in self.only]
            if self.name_filter:
                needle = os.fsencode(self.name_filter.lower())
                rows = [r for r in rows if needle in index.names[r].lower()]
            self.rows = self._sorted(index, rows)
        self._ext_colour = {e.name: k % EXT_COLOURS for k, e in enumerate(self.session.spec.extensions)}
        pos = self.rows.index(keep) if keep is not None and keep in self.rows else min(self.cursor, len(self.rows) - 1)
        self.cursor = max(0, pos)
        self._fit = self._measure()
        self._fit_columns()
        self.virtual_size = Size(self.size.width, len(self.rows))
        self._lines.clear()
        self._scroll_cursor_visible()
        self.refresh()

    def _sorted(self, index: TreeIndex, rows: list[int]) -> list[int]:
        """``rows`` in the list's order: by size (the column's figure), name or item count, the
        biggest, A or the most first unless reversed; ties by name; folders first with ``t``."""
        names = index.names
        label = self.label
        if self.sort == "size":
            if self.size_mode == "compressed" and len(rows) <= 300:
                # each compressed figure is an estimate of its own (~0.2 ms): affordable for
                # a folder of a few hundred entries; bigger folders sort by newc bytes
                squeezed = {r: self.session.compressed_bytes(r) or 0 for r in rows}
                rows.sort(key=lambda r: (-squeezed[r], label(r)))
            else:
                tot = self._sizes()
                rows.sort(key=lambda r: (-tot[r], label(r)))
        elif self.sort == "count":
            count = index.tot_count
            rows.sort(key=lambda r: (-count[r], names[r]))
        else:
            rows.sort(key=label)
        if self.reverse:
            rows.reverse()
        if self.dirs_first:
            mode = index.mode
            rows.sort(key=lambda r: not stat.S_ISDIR(mode[r]))  # stable: the order above within each
        return rows

    def _sizes(self):  # noqa: ANN202 - an array of per-entry totals
        index = self.index
        assert index is not None
        return {"disk": index.tot_alloc, "apparent": index.tot_size}.get(self.size_mode, index.tot_cpio)

    def label(self, i: int) -> bytes:
        """What the name column shows for ``i``: its name, or in search results its path."""
        index = self.index
        assert index is not None
        return index.path(i) if self.results is not None else index.names[i]

    def show_results(self, pattern: str, results: list[int]) -> None:
        """Show ``results`` (entries found by a search for ``pattern``) instead of the folder;
        :meth:`close_results` (``h``, ``esc``) goes back to where the search started."""
        if self.results is None:
            self._search_from = (self.folder, self.entry)
        self.results, self.search = results, pattern
        self.name_filter = ""
        self.cursor = 0
        self.reload_rows(keep=-1)
        self.post_message(self.Moved(self.entry, self.folder))

    def close_results(self, *, go_back: bool = True) -> None:
        if self.results is None:
            return
        self.results, self.search = None, ""
        if go_back:
            folder, entry = self._search_from
            self.go_to(folder, entry)

    def _measure(self) -> tuple[int, int, int]:
        """What the folder's rows need: the longest name (with its ``/`` or `` @``), the
        extension label width, the widest item count."""
        index = self.index
        if index is None or not self.rows:
            return (0, 0, 0)
        rows = self.rows if len(self.rows) <= 5000 else self.rows[:5000]  # search results: a sample
        longest = max(len(self.label(r)) for r in rows) + 2
        owner_w = 0
        if self.session.plan is not None:
            if self.results is None:
                owners = self.session.owners_in(self.folder)
                whole = self.session.owner(self.folder) if owners else None
                owner_w = len(whole) if whole else (len(owner_label(None, owners)) if owners else 0)
            else:
                owner_w = max((len(self.session.owner(r) or "") for r in rows), default=0)
        counts = [index.tot_count[r] for r in rows if stat.S_ISDIR(index.mode[r])]
        count_w = max(len("items") + 1, len(f"{max(counts):,}")) if counts else 0
        return (longest, owner_w, count_w)

    def _fit_columns(self) -> None:
        width = self.scrollable_content_region.width or self.size.width
        cols = plan_columns(width, *self._fit, share=self.share)
        if cols != self.columns:
            self.columns = cols
            self._lines.clear()
            self.post_message(self.ColumnsChanged())

    def invalidate(self) -> None:
        """Figures changed (a mark, a reload, a theme): render every row afresh."""
        self._lines.clear()
        self.refresh()

    def go_to(self, folder: int, entry: int | None = None) -> None:
        """Show ``folder`` with the cursor on ``entry`` (or where it last was)."""
        if self.index is None:
            return
        self.results, self.search = None, ""
        self.folder = folder
        self.name_filter = ""
        self.cursor = 0
        self.reload_rows(keep=entry if entry is not None else self._remember.get(folder, -1))
        self.post_message(self.Moved(self.entry, self.folder))

    # -- actions ------------------------------------------------------------------------------
    def _moved(self, old: int | None = None) -> None:
        top = self.scroll_offset.y
        self._scroll_cursor_visible()
        if old is not None and self.scroll_offset.y == top:  # only two rows changed
            width = self.size.width
            self.refresh(Region(0, old - top, width, 1), Region(0, self.cursor - top, width, 1))
        else:
            self.refresh()
        if self.entry is not None and self.results is None:
            self._remember[self.folder] = self.entry
        self.post_message(self.Moved(self.entry, self.folder))

    def action_enter(self) -> None:
        index, e = self.index, self.entry
        if index is None or e is None:
            return
        if self.results is not None:  # jump to a search result: into a folder, to a file's row
            self.results, self.search = None, ""
            if index.is_dir(e):
                self.go_to(e)
            else:
                self.go_to(index.parent[e], e)
            return
        if index.is_dir(e):
            self._remember[self.folder] = e
            self.go_to(e)
        else:
            self.app.bell()

    def action_leave(self) -> None:
        if self.results is not None and not self.name_filter:
            self.close_results()
            return
        if self.name_filter:
            self.name_filter = ""
            self.reload_rows()
            self.post_message(self.Moved(self.entry, self.folder))
            return
        if self.index is None or self.folder == 0:
            return
        came_from = self.folder
        self.go_to(self.index.parent[came_from], came_from)

    def _scroll_cursor_visible(self) -> None:
        if self.size.height:
            self.scroll_to_region(Region(0, self.cursor, 1, 1), animate=False, force=True, immediate=True)

    def notify_style_update(self) -> None:
        super().notify_style_update()
        self._lines.clear()

    def on_resize(self) -> None:
        self._fit_columns()
        self.virtual_size = Size(self.size.width, len(self.rows))
        self._scroll_cursor_visible()

    # -- rendering ----------------------------------------------------------------------------
    def render_line(self, y: int) -> Strip:
        row = self.scroll_offset.y + y
        width = self.size.width
        if row >= len(self.rows) or self.index is None:
            if row == 0 and y == 0:
                msg = "scanning the tree…" if self.index is None else (
                    f"no entries match “{self.name_filter}”" if self.name_filter else "(empty folder)")
                return Strip([Segment(f"  {msg}".ljust(width), self.get_component_rich_style("tree-list--dim"))])
            return Strip.blank(width, self.rich_style)
        entry = self.rows[row]
        key = (entry, width, row == self.cursor)
        strip = self._lines.get(key)
        if strip is None:
            text = self._row_text(entry, self.scrollable_content_region.width or width)
            if row == self.cursor:
                text.stylize(self.get_component_rich_style("tree-list--cursor"))
            segments = list(text.render(self.app.console))
            strip = Strip(segments).crop_extend(0, width, self.rich_style).apply_style(self.rich_style)
            if len(self._lines) > 4096:
                self._lines.clear()
            self._lines[key] = strip
        return strip

    def _row_text(self, i: int, width: int) -> Text:
        index = self.index
        assert index is not None
        session = self.session
        mode = index.mode[i]
        is_dir = stat.S_ISDIR(mode)
        dim = self.get_component_rich_style("tree-list--dim")
        size = self._sizes()[i]
        compressed = session.compressed_bytes(i) if self.size_mode == "compressed" else None
        if compressed is not None:
            size = compressed
        if session.plan is not None:
            kept = session.kept_cpio(i)
            total = session.plan.initrd_cpio_after or 1
        else:
            kept = index.tot_cpio[i]
            total = index.tot_cpio[0] or 1
        share = kept / total
        marks = self.current_ext and session.spec.extension(self.current_ext)
        rel = None
        is_mark = False
        if marks:
            rel = os.fsdecode(index.path(i))
            is_mark = rel in marks.paths
        cols = self.columns
        t = Text(no_wrap=True, overflow="ellipsis")
        t.append("●" if is_mark else " ", self.get_component_rich_style("tree-list--marked"))
        t.append(boot_glyph(session, i), self.get_component_rich_style("tree-list--boot"))
        t.append(f"{format_size(size):>{SIZE_W}} ")
        if cols.bar:
            filled = share * BAR_W
            full = int(filled)
            bar = "█" * full + ("▌" if filled - full >= 0.5 and full < BAR_W else "")
            t.append(bar, self.get_component_rich_style("tree-list--bar"))
            t.append("░" * (BAR_W - len(bar)) + " ", self.get_component_rich_style("tree-list--bar-empty"))
        if cols.pct:
            pct = f"{share * 100:5.1f}%" if kept else "    - "
            t.append(f"{pct:>{PCT_W}} ", dim if not kept else Style())
        if cols.count:
            count = f"{index.tot_count[i]:,}" if is_dir else ""
            t.append(f"{count:>{cols.count}} ", dim)
        if cols.owner:
            owners = session.owners_in(i) if session.plan is not None else []
            if owners:
                own = session.owner(i)
                label = owner_label(own, owners)
                colour = self._ext_colour.get(own or owners[0], 0)
                label = label if len(label) <= cols.owner else label[: cols.owner - 1] + "…"
                t.append(f"{label:<{cols.owner}} ", self.get_component_rich_style(f"tree-list--ext-{colour}"))
            else:
                t.append(" " * (cols.owner + 1))
        room = max(1, width - t.cell_len)
        name = os.fsdecode(self.label(i))
        if is_dir:
            t.append(middle_cut(name, room - 1) + "/", self.get_component_rich_style("tree-list--dir"))
        elif stat.S_ISLNK(mode):
            t.append(middle_cut(name, room - 2), self.get_component_rich_style("tree-list--link"))
            t.append(" @", dim)
        else:
            t.append(middle_cut(name, room))
        t.truncate(width, overflow="ellipsis")
        return t
