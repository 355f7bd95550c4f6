"""The workbench: a Textual view over :class:`sysextant.core.workbench.session.Session`.

``sysextant SPEC`` opens it. The tree is scanned in a thread worker while the first screen is
already up (folder sizes grow as the scan proceeds); the spec's folder is watched by an async
worker around ``watchfiles.awatch`` so edits made in an editor show up within a second; the
compressed-size estimate runs in the engine's own background thread (a Forecaster). Every
figure and every rule comes from the session; this module only shows them and routes keys.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from rich.text import Text
from textual import on, work
from textual.actions import SkipAction
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import Screen
from textual.widgets import Footer, Input, Static
from textual.worker import get_current_worker

from sysextant.core.errors import Cancelled, UserError
from sysextant.core.tree.index import TreeIndex
from sysextant.core.units import format_size
from sysextant.core.workbench.operations import Outcome
from sysextant.core.workbench.session import Session

from .browse import BrowseActions
from .commands import WorkbenchCommands
from .extension_actions import ExtensionActions
from .messages import ForecastChanged, ScanDone, ScanFailed, ScanProgress, SpecChanged
from .screens.build import BuildScreen
from .screens.dialogs import ConfirmScreen, HelpScreen
from .themes import DEFAULT_THEME, VARIABLE_DEFAULTS, builtin_themes, load_settings, save_settings
from .widgets.extensions import ExtensionsPanel
from .widgets.gauge import UkiGauge
from .widgets.item import item_line, item_pane, plural
from .widgets.line import Line
from .widgets.packages import (
    PackageList,
    package_line,
    package_pane,
    packages_crumb,
    packages_header,
)
from .widgets.tree_list import TreeList, header_text, search_glob

#: the first compressed figure is due this long after the scan started (issue 17: on screen within
#: 5 s of opening; the rest is the sampler's start and the gauge's redraw)
FIRST_FIGURE_DUE = 4.0


class WorkbenchApp(BrowseActions, ExtensionActions, App[int]):
    """The Sysextant workbench on one spec."""

    CSS_PATH = "workbench.tcss"
    TITLE = "sysextant"
    COMMANDS = App.COMMANDS | {WorkbenchCommands}
    ENABLE_COMMAND_PALETTE = True

    BINDINGS = [
        # not a priority binding: a priority binding runs as the app reads the key, before the
        # tree list has handled the keys queued ahead of it (j j space in one write marked the
        # row the cursor left); this one runs in turn, after them
        Binding("space", "toggle_mark", "Mark"),
        Binding("u,ctrl+z", "undo", "Undo"),
        Binding("slash", "search", "Search"),
        Binding("r", "rescan", "Rescan"),
        # ncdu/gdu/dua keys mean here what they mean there (r a i C t g); extensions are managed
        # with keys none of them uses: + F2 - (and from the palette)
        Binding("plus", "add_extension", "Add ext"),
        Binding("f2", "rename_extension", "Rename ext", show=False),
        Binding("minus", "remove_extension", "Remove ext", show=False),
        Binding("x", "exclude", "Exclude", show=False),
        Binding("s", "sort('size')", "Size", show=False),
        Binding("n", "sort('name')", "Name", show=False),
        Binding("C", "sort('count')", "Items", show=False),
        Binding("t", "dirs_first", "Folders first", show=False),
        Binding("g", "cycle_share", "Share column", show=False),
        Binding("a", "toggle_apparent", "Apparent", show=False),
        Binding("c", "toggle_size", "Size column", show=False),
        Binding("f", "filter", "Filter", show=False),
        Binding("p", "toggle_panel", "Panel"),
        # P: the packages view (p is the panel; k moves up in the lists); F: propose a fit (f filters);
        # D: only what differs from a base image (d is ncdu's delete: a key this tool never needs)
        Binding("P", "toggle_packages", "Packages", show=False),
        Binding("F", "fit", "Fit", show=False),
        Binding("D", "diff_filter", "Diff base", show=False),
        Binding("i", "toggle_info", "Info", show=False),
        Binding("e", "mark_all_but_boot", "Mark but boot", show=False),
        Binding("b", "build(False)", "Build"),
        Binding("B", "build(True)", "Rebuild all", show=False),
        # v: boot what was built in a VM (B is rebuild-all; ncdu and dua leave v free; gdu's v views a file)
        Binding("v", "boot_check", "Boot check", show=False),
        Binding("left_square_bracket", "cycle_extension(-1)", "Prev ext", show=False),
        Binding("right_square_bracket", "cycle_extension(1)", "Next ext", show=False),
        *(Binding(str(k), f"pick_number({k})", f"Extension {k}", show=False) for k in range(1, 10)),
        Binding("question_mark", "help", "Help"),
        Binding("q", "quit", "Quit"),
    ]

    def __init__(self, spec_path: str | os.PathLike[str], *, session: Session | None = None,
                 watch: bool = True, estimate: bool = True, show_timings: bool = True) -> None:
        super().__init__()
        self.show_timings = show_timings
        self.session = session or Session.open(spec_path)
        self.current_ext: str | None = self.session.spec.extensions[0].name if self.session.spec.extensions else None
        self.watch_enabled = watch
        self.estimate_enabled = estimate
        self.own_theme_names: list[str] = []
        self.scan_started = 0.0
        self.scan_seconds: float | None = None
        self.entries_seen = 0
        self.estimator_note = ""
        self._last_progress = 0.0
        self.panel_wanted: bool | None = None  # p: shown or hidden; None: by the terminal's width
        #: r: a scan of the tree runs behind the last one's figures; (folder, entry) paths to return to
        self.rescanning: tuple[bytes, bytes | None] | None = None

    # -- setup --------------------------------------------------------------------------------
    def get_theme_variable_defaults(self) -> dict[str, str]:
        return dict(VARIABLE_DEFAULTS)

    def compose(self) -> ComposeResult:
        yield Line(id="topbar")
        with Horizontal(id="main"):
            with Vertical(id="browser"):
                yield Line(id="crumb")
                yield Line(id="colhead")
                yield TreeList(self.session, id="tree")
                yield PackageList(self.session, id="packages")
                yield Line(id="item")
                yield Static(id="info")
                yield Input(placeholder="filter this folder by name (enter keeps, esc clears)", id="filter")
                yield Input(placeholder="search the tree: *.ko.zst, locale, usr/**/doc (enter searches, esc closes)",
                            id="search")
            yield ExtensionsPanel(id="extensions")
        yield Static(id="problems")
        yield UkiGauge(id="gauge")
        yield Line(id="status")
        yield Footer()

    def on_mount(self) -> None:
        for theme in builtin_themes():
            self.register_theme(theme)
            self.own_theme_names.append(theme.name)
        wanted = load_settings().get("theme", DEFAULT_THEME)
        self.theme = wanted if wanted in self.available_themes else DEFAULT_THEME
        self.base.query_one("#filter", Input).display = False
        self.base.query_one("#search", Input).display = False
        self.base.query_one("#problems", Static).display = False
        self.base.query_one("#info", Static).display = False
        self.base.query_one(PackageList).display = False
        self.tree.focus()
        self.fit_layout()
        if self.session.index is not None:  # a session handed in already scanned (tests, bench)
            self.tree.set_index(self.session.index)
            self.start_estimator()
        else:
            self.start_scan()
        self.refresh_all()
        self.set_status("space marks the entry under the cursor into the current extension · ? help", "info")
        if self.watch_enabled:
            self.watch_spec()

    def on_resize(self, _event) -> None:  # noqa: ANN001 - events.Resize
        self.fit_layout()

    def fit_layout(self) -> None:
        """Give the names room first: the extensions panel narrows with the terminal and hides
        below 76 columns (``p`` shows or hides it at any width); the footer and the gauge get
        compact on small terminals."""
        width, height = self.size
        panel = self.base.query_one(ExtensionsPanel)
        shown = self.panel_wanted if self.panel_wanted is not None else width >= 76
        panel.display = shown
        panel.styles.width = max(30, min(40, width * 32 // 100))
        self.base.query_one(Footer).compact = width < 110
        self.base.query_one(UkiGauge).set_class(height < 20, "-short")
        self.base.query_one("#item", Line).display = height >= 20

    def action_toggle_info(self) -> None:
        """i: the item pane (full path, every size, hard links, extension, boot, refusal)."""
        info = self.base.query_one("#info", Static)
        info.display = not info.display
        self.update_item()

    def action_mark_all_but_boot(self) -> None:
        """e: mark the folder under the cursor into the current extension, excluding what the
        UKI needs to boot (the session writes the excludes; one undo step)."""
        if not self._on_main_screen():
            raise SkipAction()
        entry = self.tree.entry
        if entry is None:
            self.set_status("nothing under the cursor to mark", "refused")
            return
        if self.current_ext is None:
            self.set_status("there is no extension to mark into yet: press + to add one", "refused")
            return
        if self.session.plan is not None and not self.session.boot_count(entry):
            # nothing to leave out: a plain mark says the same as space
            self.report(self.session.mark(entry, self.current_ext))
            return
        self.report(self.session.mark_all_but_boot(entry, self.current_ext))

    # -- packages, fit, diff filter -------------------------------------------------------------
    @property
    def packages(self) -> PackageList | None:
        """The packages view when it is shown instead of the tree, else None."""
        plist = self.base.query_one(PackageList)
        return plist if plist.display else None

    def action_toggle_packages(self) -> None:
        """P: the packages list in the tree list's place, or back."""
        plist = self.base.query_one(PackageList)
        shown = not plist.display
        plist.display, self.tree.display = shown, not shown
        (plist if shown else self.tree).focus()
        if shown:
            plist.current_ext = self.current_ext
            plist.reload_rows()
            if plist.why:  # the list says why, wrapped; the status line has one line at 80 columns
                self.set_status("no packages to list: the list says why · P: back to the tree", "refused")
            else:
                self.set_status(f"packages by what they cost in the UKI · space marks one into "
                                f"{self.current_ext or 'an extension (+ adds one)'} · P: back to the tree", "info")
        self.update_crumb()

    def on_package_list_moved(self, _message: PackageList.Moved) -> None:
        self.update_crumb()

    def action_fit(self) -> None:
        """F: propose the moves that bring the UKI under its limit; enter in the preview applies them."""
        from .screens.fit import FitScreen

        if not self._on_main_screen():
            raise SkipAction()
        if self.session.plan is None:
            self.set_status("the tree is still being scanned; propose a fit when it is done", "refused")
            return

        def done(fit: object) -> None:
            if fit is not None:
                self.report(self.session.apply_fit(fit))

        self.push_screen(FitScreen(self.session), done)

    def action_diff_filter(self) -> None:
        """D: show only what the tree adds or changes over a base image or tree; D again clears it."""
        from .screens.difffilter import BaseScreen, diff_words

        if not self._on_main_screen():
            raise SkipAction()
        tree = self.tree
        if tree.only is not None:
            tree.only, self.diff_note = None, ""
            tree.reload_rows()
            self.update_crumb()
            self.set_status("diff filter cleared: the whole tree again", "info")
            return
        if self.session.index is None:
            self.set_status("the tree is still being scanned", "refused")
            return

        def done(found: object) -> None:
            if found is None:
                return
            tree.only = found.shown
            self.diff_note = f"differs from {found.base}"
            tree.go_to(0)
            self.set_status(diff_words(found), "ok")

        self.push_screen(BaseScreen(self.session), done)

    def action_toggle_panel(self) -> None:
        panel = self.base.query_one(ExtensionsPanel)
        self.panel_wanted = not panel.display
        if not self.panel_wanted and panel.has_focus_within:
            self.tree.focus()
        self.fit_layout()

    def watch_theme(self, theme: str) -> None:
        """Remember the theme the user picked (palette or command)."""
        if not self.is_mounted or not theme:
            return
        settings = load_settings()
        if settings.get("theme") != theme:
            settings["theme"] = theme
            try:
                save_settings(settings)
            except UserError as exc:
                self.set_status(f"theme not remembered: {exc}", "refused")
        self.call_after_refresh(self.refresh_all)

    @property
    def tree(self) -> TreeList:
        return self.base.query_one(TreeList)

    @property
    def base(self) -> Screen:
        """The workbench's own screen. ``App.query_one`` looks at the screen on top, which is a
        dialog or the build screen while one is open; updates (a reload, the estimate) that
        arrive then must still reach the workbench underneath."""
        return self.screen_stack[0]

    # -- scanning -----------------------------------------------------------------------------
    def start_scan(self) -> None:
        self.scan_started = time.perf_counter()
        self.scan_seconds = None
        self.entries_seen = 0
        self.scan_tree(self.session.root)

    @work(thread=True, exclusive=True, exit_on_error=False, group="scan")
    def scan_tree(self, root: Path) -> None:
        worker = get_current_worker()
        t0 = time.perf_counter()

        def check() -> None:
            if worker.is_cancelled:
                raise Cancelled("scan superseded")

        def progress(index: TreeIndex) -> None:
            if not index.complete:
                self.post_message(ScanProgress(index))

        try:
            index, sums = self.session.read_tree(root, progress=progress, every=5000, check=check)
        except Cancelled:
            return
        except UserError as exc:
            self.post_message(ScanFailed(str(exc)))
            return
        self.post_message(ScanDone(index, sums, time.perf_counter() - t0))

    def on_scan_progress(self, message: ScanProgress) -> None:
        if self.rescanning is not None:  # the last scan stays on screen, usable, until this one is done
            self.entries_seen = len(message.index)
            self.update_topbar()
            return
        now = time.perf_counter()
        if now - self._last_progress < 0.2 and self.tree.index is message.index:
            return  # sizes grow live, but a few redraws a second are enough
        self._last_progress = now
        tree = self.tree
        self.entries_seen = len(message.index)
        if tree.index is not message.index:
            tree.set_index(message.index)
        else:
            tree.reload_rows()
        self.update_topbar()
        self.base.query_one(UkiGauge).show(None, note=f"scanning the OS tree… {plural(self.entries_seen, 'entry', 'entries')} so far; "
                                                 "marks can be made when the scan is done")

    def on_scan_done(self, message: ScanDone) -> None:
        if os.fsdecode(message.index.root) != os.path.normpath(str(self.session.root)):
            return  # a scan of a root the spec no longer names
        old = self.session.index
        self.session.attach(message.index, message.sums)
        self.scan_seconds = message.seconds
        self.entries_seen = len(message.index)
        if self.rescanning is not None:
            self._rescanned(old, message.index)
        else:
            self.tree.set_index(message.index)
        # the estimate first: its glance samples while the screen is drawn
        self.start_estimator()
        problems = message.index.problems
        if problems:
            self.set_status(f"{plural(len(problems), 'entry', 'entries')} could not be read and are not counted, "
                            f"e.g. {problems[0]}",
                            "refused")
        self.refresh_all()

    def _rescanned(self, old: TreeIndex | None, new: TreeIndex) -> None:
        """Show the new scan where the user was (the same folder and entry, by path) and say
        what changed."""
        assert self.rescanning is not None
        folder_path, entry_path = self.rescanning
        self.rescanning = None
        tree = self.tree
        tree.close_results(go_back=False)
        tree.set_index(new)
        folder = new.lookup(folder_path) if folder_path else 0
        entry = new.lookup(entry_path) if entry_path else None
        if folder is None or not new.is_dir(folder):
            folder, entry = 0, None
        tree.go_to(folder, entry)
        if old is None:
            return
        a, b = old.counts(), new.counts()
        if a == b:
            self.set_status(f"rescanned: {plural(len(new), 'entry', 'entries')}, unchanged since the last scan", "ok")
        else:
            delta = b["apparent_bytes"] - a["apparent_bytes"]
            self.set_status(f"rescanned: {len(new):,} entries (was {len(old):,}), "
                            f"{format_size(delta, signed=True)} apparent", "ok")

    def action_rescan(self) -> None:
        """r: scan the tree again (ncdu's, gdu's and dua's r); the last scan's figures stay on
        screen and usable until the new one is done."""
        if not self._on_main_screen():
            raise SkipAction()
        index, tree = self.session.index, self.tree
        if index is None or self.session.plan is None or self.rescanning is not None:
            self.set_status("the tree is being scanned already", "info")
            return
        entry = tree.entry
        self.rescanning = (index.path(tree.folder), index.path(entry) if entry is not None else None)
        self.set_status("rescanning the OS tree; the figures are the last scan's until it is done", "info")
        self.start_scan()
        self.update_topbar()

    def on_scan_failed(self, message: ScanFailed) -> None:
        self.rescanning = None
        self.base.query_one(UkiGauge).show(None, note=f"cannot scan: {message.message}")
        self.set_status(message.message, "refused")

    # -- compressed estimate ------------------------------------------------------------------
    def start_estimator(self) -> None:
        """Start (or keep) the engine's background estimate for the current plan
        (:meth:`Session.forecast`); its news arrives as :class:`ForecastChanged`."""
        if self.estimate_enabled and self.session.plan is not None:
            # the first figure is due FIRST_FIGURE_DUE after the scan started: the quick sample's
            # glance takes what is left (a second at the least, when the scan took long)
            glance = FIRST_FIGURE_DUE - (time.perf_counter() - self.scan_started)
            # called from the forecaster's thread: post_message is thread-safe
            self.session.forecast(lambda f, what: self.post_message(ForecastChanged(f, what)), glance=glance)

    def on_forecast_changed(self, message: ForecastChanged) -> None:
        f = self.session.forecaster
        if message.forecaster is not f or f is None:
            return  # superseded: the tree or the compressor changed since
        if message.what == "failed":
            self.estimator_note = f"no compressed estimate: {f.error}"
        else:
            self.estimator_note = f.note
        if message.what == "progress":
            self.update_topbar()
            return
        self.session.estimator_changed()
        self.refresh_all()

    # -- watching the spec --------------------------------------------------------------------
    @work(exclusive=True, group="watch", exit_on_error=False)
    async def watch_spec(self) -> None:
        from watchfiles import awatch

        spec = self.session.path.absolute()
        name = spec.name

        def only_spec(_change: object, path: str) -> bool:
            return os.path.basename(path) == name

        async for _changes in awatch(spec.parent, watch_filter=only_spec, recursive=False,
                                     debounce=150, step=50, rust_timeout=500):
            self.post_message(SpecChanged())

    def on_spec_changed(self, _message: SpecChanged) -> None:
        if not self.screen_stack or not self.is_running or not self.base.query(TreeList):
            return  # a change seen while quitting, after the workbench's widgets are gone
        self.action_reload_spec(quiet=True)

    def action_reload_spec(self, quiet: bool = False) -> None:
        result = self.session.reload()
        problems = self.base.query_one("#problems", Static)
        if not result.changed:
            if not quiet:
                self.set_status("the spec on disk is what the workbench shows", "info")
            if result.ok and problems.display:
                problems.display = False
                self.set_status("the spec loads again; edits are saved again", "ok")
            return
        if not result.ok:
            lines = [f"[b]{self.session.path}[/b] has errors; the workbench keeps the last good version:"]
            for p in result.problems[:6]:
                where = f"line {p.line}:{p.column}" if p.line else "file"
                hint = f"  [dim]({_escape(p.hint)})[/]" if p.hint else ""
                lines.append(f"  {where}: {_escape(p.message)}{hint}")
            if len(result.problems) > 6:
                lines.append(f"  … and {len(result.problems) - 6} more")
            problems.update("\n".join(lines))
            problems.display = True
            self.set_status(f"spec not reloaded: {plural(len(result.problems), 'problem')}; fix the file and save",
                            "refused")
            return
        problems.display = False
        names = [e.name for e in self.session.spec.extensions]
        if self.current_ext not in names:
            self.current_ext = names[0] if names else None
        if result.rescan:
            self.tree.set_index(None)
            self.set_status(f"os.root changed: scanning {self.session.root}", "info")
            self.refresh_all()
            self.start_scan()
            return
        self.set_status("reloaded the spec after an outside edit", "info")
        self.refresh_all()
        self.start_estimator()

    # -- showing ------------------------------------------------------------------------------
    def set_status(self, text: str, kind: str = "info") -> None:
        status = self.base.query_one("#status", Line)
        status.set_classes(f"status-{kind}")
        self._update_if_changed("#status", _escape(text))

    def update_topbar(self) -> None:
        topbar = self.base.query_one("#topbar", Line)
        if self.session.plan is None:
            topbar.follow(self.topbar_markup)  # the scan's count as the rows painted with it
        else:
            topbar.set(self.topbar_markup())

    def topbar_markup(self) -> str:
        s = self.session
        index = self.tree.index
        if s.plan is None:
            seen = len(index) if index is not None else self.entries_seen
            state = f"[b]scanning[/b] {plural(seen, 'entry', 'entries')}…" if index is not None or seen else "starting…"
        elif self.rescanning is not None:
            state = f"[b]rescanning[/b] {plural(self.entries_seen, 'entry', 'entries')}…"
        else:
            state = f"{len(s.index):,} entries" + (
                f" scanned in {self.scan_seconds:.1f} s" if self.scan_seconds and self.show_timings else "")
        if self.estimator_note:
            state += f" · {self.estimator_note}"
        unsaved = " · [b]NOT SAVED[/b]" if s.unsaved else ""
        return (f"[b]sysextant[/b]  spec {_escape(_short(s.path, Path.cwd()))} · tree "
                f"{_escape(_short(s.root, s.path.absolute().parent))} · {state}{unsaved}")

    def update_crumb(self) -> None:
        plist = self.packages
        if plist is not None:
            self._update_if_changed("#crumb", packages_crumb(self.session, plist, self.current_ext))
            self._update_if_changed("#colhead", packages_header(self.session, plist.owner_w))
            self.update_item()
            return
        tree = self.tree
        index = tree.index
        rel = os.fsdecode(index.path(tree.folder)) if index is not None else ""
        where = "/" + rel if rel else "/"
        if tree.results is not None:
            where = f"search {tree.search}"
        extra = f"  filter “{tree.name_filter}”" if tree.name_filter else ""
        if tree.only is not None and getattr(self, "diff_note", ""):
            extra += f"  only what {self.diff_note}"
        n = len(tree.rows)
        noun = ("match", "matches") if tree.results is not None else ("entry", "entries")
        # where the cursor is: row n of m
        count = (f"  {tree.cursor + 1:,} of {n:,} {noun[n != 1]}" if n else f"  0 {noun[1]}") if index is not None else ""
        ext = f"  → {self.current_ext}" if self.current_ext else "  no extension: + adds one"
        # the folder's end and the extension keep their place; a long path loses its start
        width = self.base.query_one("#crumb", Line).size.width or 80
        room = width - len(count) - len(extra) - len(ext)
        if len(where) > room:
            where = "…" + where[len(where) - max(1, room - 1):]
        self._update_if_changed(
            "#crumb", f"[b]{_escape(where)}[/b][dim]{_escape(count)}{_escape(extra)}[/]"
                      + (f"  → [b]{_escape(self.current_ext)}[/b]" if self.current_ext else f"[dim]{_escape(ext)}[/]"))
        self._update_if_changed("#colhead", header_text(tree.size_mode, tree.sort, tree.columns, tree.reverse))
        self.update_item()

    def update_item(self) -> None:
        """The line under the list (and the item pane when open) for the entry under the cursor."""
        entry = self.tree.entry
        warn = self.get_css_variables().get("warning", "yellow")
        plist = self.packages
        if plist is not None:
            self._update_if_changed("#item", package_line(self.session, plist.row, self.current_ext))
            info = self.base.query_one("#info", Static)
            if info.display:
                info.update(Text.from_markup(package_pane(self.session, plist.row, self.current_ext)))
            return
        self._update_if_changed("#item", item_line(self.session, entry, self.current_ext, warn))
        info = self.base.query_one("#info", Static)
        if info.display:
            info.update(Text.from_markup(item_pane(self.session, entry, self.current_ext, warn)))

    def _update_if_changed(self, selector: str, content: str) -> None:
        self.base.query_one(selector, Line).set(content)

    def refresh_all(self, outcome: Outcome | None = None) -> None:
        """Re-read everything shown from the session."""
        tree = self.tree
        tree.current_ext = self.current_ext
        tree.reload_rows()
        if self.packages is not None:
            self.packages.current_ext = self.current_ext
            self.packages.reload_rows()
        self.base.query_one(ExtensionsPanel).update(self.session.extension_figures(), self.current_ext)
        gauge = self.base.query_one(UkiGauge)
        if outcome is not None and outcome.ok:
            gauge.show(outcome.after, delta=outcome.delta, delta_label=outcome.message)
        elif self.session.plan is not None:
            gauge.show(self.session.figures())
        self.update_topbar()
        self.update_crumb()

    def report(self, outcome: Outcome) -> None:
        if outcome.ok:
            delta = ""
            if outcome.before is not None and outcome.after is not None:
                delta = (f"  (UKI {format_size(outcome.delta, signed=True)}, "
                         f"initrd {format_size(outcome.cpio_delta, signed=True)} newc)")
            self.set_status(outcome.message + delta, "refused" if self.session.unsaved else "ok")
            self.refresh_all(outcome)
            self.start_estimator()  # when the change (os.exclude, uki.level) dropped the estimator
        else:
            self.set_status(outcome.message, "refused")
            self.bell()

    # -- actions ------------------------------------------------------------------------------
    def _on_main_screen(self) -> bool:
        return self.screen is self.screen_stack[0]

    def action_toggle_mark(self) -> None:
        if not self._on_main_screen() or isinstance(self.focused, Input):
            raise SkipAction()
        plist = self.packages
        if plist is not None:
            if plist.row is None:
                self.set_status("no package under the cursor" + (": the list says why" if plist.why else ""),
                                "refused")
                return
            outcome = self.session.toggle_package(plist.row.key, self.current_ext)
            self.report(outcome)
            if outcome.ok:
                plist.action_cursor(1)
            return
        entry = self.tree.entry
        if entry is None:
            self.set_status("nothing under the cursor to mark", "refused")
            return
        outcome = self.session.toggle(entry, self.current_ext)
        self.report(outcome)
        if outcome.ok:
            self.tree.action_cursor(1)  # as in dua and ranger: the next space marks the next row

    def action_undo(self) -> None:
        self.report(self.session.undo())

    @on(Input.Changed, "#filter")
    def _filter_changed(self, event: Input.Changed) -> None:
        self.tree.name_filter = event.value
        self.tree.reload_rows()
        self.update_crumb()

    @on(Input.Submitted, "#filter")
    def _filter_done(self, _event: Input.Submitted) -> None:
        box = self.base.query_one("#filter", Input)
        if not box.value:
            box.display = False
        self.tree.focus()

    def on_key(self, event) -> None:  # noqa: ANN001 - events.Key
        if event.key == "escape" and isinstance(self.focused, Input) and self.focused.id in ("filter", "search"):
            if self.focused.id == "filter":
                self.focused.value = ""
            self.focused.display = False
            self.tree.focus()
            event.stop()
        elif event.key == "escape" and self.focused is self.tree and self.tree.results is not None:
            self.tree.close_results()  # back to where the search started
            event.stop()

    def action_help(self) -> None:
        self.push_screen(HelpScreen())

    def on_tree_list_moved(self, _message: TreeList.Moved) -> None:
        box = self.base.query_one("#filter", Input)
        if box.display and not self.tree.name_filter and not box.has_focus:
            box.value = ""
            box.display = False  # h cleared the filter (or another folder was opened): no empty box left
        self.update_crumb()

    def on_tree_list_columns_changed(self, _message: TreeList.ColumnsChanged) -> None:
        self.update_crumb()

    # -- the filter and search boxes (their @on handlers must live on the App class itself) ---
    @on(Input.Submitted, "#search")
    def _search_submitted(self, event: Input.Submitted) -> None:
        box = self.base.query_one("#search", Input)
        query = event.value.strip()
        box.display = False
        self.tree.focus()
        index = self.session.index
        if not query or index is None:
            return
        pattern = search_glob(query)
        self.set_status(f"searching the tree for {pattern}…", "info")
        self.run_search(index, query, pattern)

    # -- building -----------------------------------------------------------------------------
    def build_screen(self) -> BuildScreen | None:
        return next((s for s in self.screen_stack if isinstance(s, BuildScreen)), None)

    def build_refusal(self) -> str | None:
        """Why ``b`` cannot build now, or None (the session's preconditions, and one build at a time)."""
        if self.build_screen() is not None:
            return "a build is already running"
        return self.session.build_refusal()

    def action_build(self, force: bool = False) -> None:
        """Build (and sign and verify) what changed, or everything with ``force``."""
        refusal = self.build_refusal()
        if refusal:
            self.set_status(refusal, "refused")
            self.bell()
            return
        s = self.session
        if s.forecaster is not None:
            s.forecaster.pause()  # both cores for the build
        self.set_status("building…" if not force else "rebuilding everything…", "info")
        # only a prepared estimator can be calibrated by the build (a quick sample cannot)
        prepared = s.forecaster.prepared if s.forecaster is not None else None
        self._last_build = BuildScreen(s.spec, s.index, s.plan, force=force, gauge=s.figures(), estimator=prepared)
        self.push_screen(self._last_build, self._build_closed)

    def _build_closed(self, result: tuple[str, str] | None) -> None:
        if result:
            kind, text = result
            self.set_status(text, kind)
        report = getattr(self._last_build, "report", None) if hasattr(self, "_last_build") else None
        if report is not None and report.tree_changed:
            # the build packed the tree as it is now; the figures on screen were of the old scan
            self.set_status(f"{result[1] if result else 'build done'} · the OS tree had changed since it was "
                            "scanned: scanning it again", result[0] if result else "info")
            self.tree.set_index(None)
            self.refresh_all()
            self.start_scan()
            return
        if self.session.forecaster is not None:  # the build calibrated it; go on refining
            self.session.estimator_changed()
            self.refresh_all()
            self.session.forecaster.resume()

    def action_boot_check(self) -> None:
        """Boot the built UKI (with extensions: the check build) under Secure Boot in a VM and
        show the stages as they pass (tui/screens/bootcheck.py); esc stops QEMU and swtpm."""
        from .screens.bootcheck import BootCheckScreen, boot_check_refusal

        refusal = boot_check_refusal(self)
        if refusal:
            self.set_status(refusal, "refused")
            self.bell()
            return
        if self.session.forecaster is not None:
            self.session.forecaster.pause()  # both cores for the VM
        self.set_status("boot check running…", "info")

        def closed(result: tuple[str, str] | None) -> None:
            if result:
                self.set_status(result[1], result[0])
            if self.session.forecaster is not None:
                self.session.forecaster.resume()

        self.push_screen(BootCheckScreen(self.session.spec), closed)

    def set_theme(self, name: str) -> None:
        self.theme = name

    async def action_quit(self) -> None:
        building = self.build_screen()
        if building is not None and building.running:
            await building.stop()  # the engine removes its temp files and child processes
        from .screens.bootcheck import BootCheckScreen

        for checking in [s for s in self.screen_stack if isinstance(s, BootCheckScreen) and s.running]:
            await checking.stop()  # QEMU and swtpm stopped, the temp folder removed
        if not self.session.unsaved:
            self.exit(0)
            return

        def done(yes: bool | None) -> None:
            if yes:
                self.exit(1)

        self.push_screen(ConfirmScreen(f"The spec could not be saved ({self.session.save_error}). "
                                       "Quit and lose the last changes?", yes="Quit"), done)


def _short(path: Path, base: Path) -> str:
    """``path`` relative to ``base`` when it lies inside it, else as given."""
    try:
        return str(Path(path).absolute().relative_to(base.absolute()))
    except ValueError:
        return str(path)


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


def run_workbench(spec_path: str | os.PathLike[str]) -> int:
    """Open the workbench on ``spec_path``; returns the exit code."""
    session = Session.open(spec_path)  # spec errors surface as a UserError before the screen opens
    app = WorkbenchApp(spec_path, session=session)
    result = app.run()
    return int(result or 0)
