"""The workbench: a Textual view over :class:`sysextant.core.workbench.session.Session`.

``sysextant SPEC`` opens it. The tree is scanned in a thread worker while the first screen is
already up (folder sizes grow as the scan proceeds); the spec's folder is watched by an async
worker around ``watchfiles.awatch`` so edits made in an editor show up within a second; the
compressed-size estimator, when the engine has one, is prepared in another thread worker. Every
figure and every rule comes from the session; this module only shows them and routes keys.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from rich.text import Text
from textual import on, work
from textual.actions import SkipAction
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Footer, Input, Static
from textual.worker import get_current_worker

from sysextant.core.errors import Cancelled, UserError
from sysextant.core.sizing.plan import Plan
from sysextant.core.tree.index import TreeIndex, scan
from sysextant.core.tree.selection import Sums
from sysextant.core.units import format_size
from sysextant.core.workbench.session import Outcome, Session

from .commands import WorkbenchCommands
from .themes import DEFAULT_THEME, VARIABLE_DEFAULTS, builtin_themes, load_settings, save_settings
from .widgets.build import BuildScreen
from .widgets.dialogs import ConfirmScreen, HelpScreen, NameScreen
from .widgets.extensions import ExtensionsPanel, PathList
from .widgets.gauge import UkiGauge
from .widgets.item import item_line, item_pane, plural
from .widgets.line import Line
from .widgets.tree_list import TreeList, header_text


class ScanProgress(Message):
    def __init__(self, index: TreeIndex) -> None:
        super().__init__()
        self.index = index


class ScanDone(Message):
    def __init__(self, index: TreeIndex, sums: Sums, seconds: float) -> None:
        super().__init__()
        self.index = index
        self.sums = sums
        self.seconds = seconds


class ScanFailed(Message):
    def __init__(self, message: str) -> None:
        super().__init__()
        self.message = message


class EstimatorReady(Message):
    def __init__(self, estimator: object, index: TreeIndex) -> None:
        super().__init__()
        self.estimator = estimator
        self.index = index


class EstimatorRefined(Message):
    """The estimator compressed one more group at the build's level: the band narrowed."""

    def __init__(self, estimator: object, left: int) -> None:
        super().__init__()
        self.estimator = estimator
        self.left = left


class EstimatorProgress(Message):
    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text


class SpecChanged(Message):
    """The spec file changed on disk (posted by the watcher)."""


class WorkbenchApp(App[int]):
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
        Binding("a", "add_extension", "Add ext"),
        Binding("r", "rename_extension", "Rename", show=False),
        Binding("x", "remove_extension", "Remove ext", show=False),
        Binding("s", "sort('size')", "Size", show=False),
        Binding("n", "sort('name')", "Name", show=False),
        Binding("c", "toggle_size", "Size column", show=False),
        Binding("slash", "filter", "Filter"),
        Binding("p", "toggle_panel", "Panel"),
        Binding("i", "toggle_info", "Info", show=False),
        Binding("e", "mark_all_but_boot", "Mark but boot", show=False),
        Binding("b", "build(False)", "Build"),
        Binding("B", "build(True)", "Rebuild all", show=False),
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
                yield Line(id="item")
                yield Static(id="info")
                yield Input(placeholder="filter this folder by name (enter keeps, esc clears)", id="filter")
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
        self.base.query_one("#problems", Static).display = False
        self.base.query_one("#info", Static).display = False
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
            self.set_status("there is no extension to mark into yet: press a to add one", "refused")
            return
        if self.session.plan is not None and not self.session.boot_count(entry):
            # nothing to leave out: a plain mark says the same as space
            self.report(self.session.mark(entry, self.current_ext))
            return
        self.report(self.session.mark_all_but_boot(entry, self.current_ext))

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
            index = scan(root, progress=progress, every=5000, check=check)
            sums = Sums(index)
        except Cancelled:
            return
        except UserError as exc:
            self.post_message(ScanFailed(str(exc)))
            return
        self.post_message(ScanDone(index, sums, time.perf_counter() - t0))

    def on_scan_progress(self, message: ScanProgress) -> None:
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
        self.session.attach(message.index, message.sums)
        self.scan_seconds = message.seconds
        self.entries_seen = len(message.index)
        self.tree.set_index(message.index)
        problems = message.index.problems
        if problems:
            self.set_status(f"{plural(len(problems), 'entry', 'entries')} could not be read and are not counted, "
                            f"e.g. {problems[0]}",
                            "refused")
        self.refresh_all()
        self.start_estimator()

    def on_scan_failed(self, message: ScanFailed) -> None:
        self.base.query_one(UkiGauge).show(None, note=f"cannot scan: {message.message}")
        self.set_status(message.message, "refused")

    # -- compressed estimate ------------------------------------------------------------------
    def start_estimator(self) -> None:
        if self.estimate_enabled and self.session.plan is not None and self.session.estimator is None:
            self.prepare_estimator(self.session.plan)

    @work(thread=True, exclusive=True, exit_on_error=False, group="estimate")
    def prepare_estimator(self, plan: Plan) -> None:
        from sysextant.core.progress import Reporter
        from sysextant.core.sizing.forecast import prepared_estimator

        worker = get_current_worker()
        last = [0.0]

        def report(ev) -> None:  # noqa: ANN001 - a Progress event (cancel: see _run_abandonable)
            now = time.monotonic()
            if ev.total and now - last[0] > 0.25:
                last[0] = now
                self.post_message(EstimatorProgress(f"{ev.task} {ev.done * 100 // ev.total}%"))

        spec = self.session.spec
        stop = threading.Event()
        reporter = Reporter(report, cancelled=stop.is_set)

        def prepare():  # noqa: ANN202 - an Estimator
            # one core for the estimate, the other for the user
            return prepared_estimator(spec, plan, reporter, threads=1)

        index = plan.index
        ok, est = _run_abandonable(prepare, worker, stop, lambda: self.session.index is index)
        if not ok:
            if isinstance(est, UserError):
                self.post_message(EstimatorProgress(f"no compressed estimate: {est}"))
            elif est is not None and not isinstance(est, Cancelled):
                raise est
            return
        est.reporter = None  # later estimates run on the UI thread: no progress from them
        self.post_message(EstimatorReady(est, index))

    def on_estimator_progress(self, message: EstimatorProgress) -> None:
        self.estimator_note = message.text
        self.update_topbar()

    def on_estimator_ready(self, message: EstimatorReady) -> None:
        if message.index is self.session.index:
            self.session.estimator = message.estimator
            self.estimator_note = ""
            self.refresh_all()
            self.refine_estimator(message.estimator)

    @work(thread=True, exclusive=True, exit_on_error=False, group="estimate-refine")
    def refine_estimator(self, est) -> None:  # noqa: ANN001 - a prepared core.estimate.Estimator
        """Compress the remaining groups at the build's own level, one at a time in the
        background: each one narrows the error band. Stops when superseded or a build starts."""
        from sysextant.core.progress import Reporter

        worker = get_current_worker()

        todo = [g for g, grp in enumerate(est.groups) if grp.target is None]
        for k, g in enumerate(todo):
            stop = threading.Event()
            est.reporter = Reporter(cancelled=stop.is_set)
            ok, _ = _run_abandonable(lambda group=g: est.deepen([group], task="estimate: refine"), worker, stop,
                                     lambda: self.session.estimator is est)
            if not ok:
                return  # cancelled, superseded, or the tree changed under it
            est.reporter = None
            self.post_message(EstimatorRefined(est, len(todo) - k - 1))

    def on_estimator_refined(self, message: EstimatorRefined) -> None:
        if message.estimator is self.session.estimator:
            self.session.estimator_changed()
            self.estimator_note = (f"refining the estimate: {plural(message.left, 'group')} to go"
                                   if message.left else "")
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
        else:
            state = f"{len(s.index):,} entries" + (
                f" scanned in {self.scan_seconds:.1f} s" if self.scan_seconds and self.show_timings else "")
        if self.estimator_note:
            state += f" · {self.estimator_note}"
        unsaved = " · [b]NOT SAVED[/b]" if s.unsaved else ""
        return (f"[b]sysextant[/b]  spec {_escape(_short(s.path, Path.cwd()))} · tree "
                f"{_escape(_short(s.root, s.path.absolute().parent))} · {state}{unsaved}")

    def update_crumb(self) -> None:
        tree = self.tree
        index = tree.index
        rel = os.fsdecode(index.path(tree.folder)) if index is not None else ""
        where = "/" + rel if rel else "/"
        extra = f"  filter “{tree.name_filter}”" if tree.name_filter else ""
        n = len(tree.rows)
        count = f"  {n:,} {'entry' if n == 1 else 'entries'}" if index is not None else ""
        ext = f"  → {self.current_ext}" if self.current_ext else "  no extension: + adds one"
        # the folder's end and the extension keep their place; a long path loses its start
        width = self.base.query_one("#crumb", Line).size.width or 80
        room = width - len(count) - len(extra) - len(ext)
        if len(where) > room:
            where = "…" + where[len(where) - max(1, room - 1):]
        self._update_if_changed(
            "#crumb", f"[b]{_escape(where)}[/b][dim]{_escape(count)}{_escape(extra)}[/]"
                      + (f"  → [b]{_escape(self.current_ext)}[/b]" if self.current_ext else f"[dim]{_escape(ext)}[/]"))
        self._update_if_changed("#colhead", header_text(tree.size_mode, tree.sort, tree.columns))
        self.update_item()

    def update_item(self) -> None:
        """The line under the list (and the item pane when open) for the entry under the cursor."""
        entry = self.tree.entry
        warn = self.get_css_variables().get("warning", "yellow")
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
        else:
            self.set_status(outcome.message, "refused")
            self.bell()

    # -- actions ------------------------------------------------------------------------------
    def _on_main_screen(self) -> bool:
        return self.screen is self.screen_stack[0]

    def action_toggle_mark(self) -> None:
        if not self._on_main_screen() or isinstance(self.focused, Input):
            raise SkipAction()
        entry = self.tree.entry
        if entry is None:
            self.set_status("nothing under the cursor to mark", "refused")
            return
        self.report(self.session.toggle(entry, self.current_ext))

    def action_undo(self) -> None:
        self.report(self.session.undo())

    def action_sort(self, key: str) -> None:
        self.tree.sort = key
        self.tree.reload_rows()
        self.update_crumb()

    def action_toggle_size(self) -> None:
        modes = ["apparent", "cpio"] + (["compressed"] if self.session.estimator is not None else [])
        current = self.tree.size_mode if self.tree.size_mode in modes else "apparent"
        self.tree.size_mode = modes[(modes.index(current) + 1) % len(modes)]
        if self.tree.size_mode == "cpio" and self.session.estimator is None:
            self.set_status("size column: initrd (newc) bytes; the compressed column comes once the estimate is ready")
        self.tree.reload_rows()
        self.update_crumb()

    def action_filter(self) -> None:
        box = self.base.query_one("#filter", Input)
        box.display = True
        box.value = self.tree.name_filter
        box.focus()

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
        if event.key == "escape" and isinstance(self.focused, Input) and self.focused.id == "filter":
            self.focused.value = ""
            self.focused.display = False
            self.tree.focus()
            event.stop()

    def action_help(self) -> None:
        self.push_screen(HelpScreen())

    def pick_extension(self, name: str | None) -> None:
        self.current_ext = name
        self.refresh_all()
        if name:
            self.set_status(f"space now marks into {name}", "info")

    def action_pick_number(self, k: int) -> None:
        exts = self.session.spec.extensions
        if 0 < k <= len(exts):
            self.pick_extension(exts[k - 1].name)
        else:
            self.set_status(f"there is no extension {k}", "refused")

    def action_cycle_extension(self, step: int) -> None:
        names = [e.name for e in self.session.spec.extensions]
        if not names:
            self.set_status("no extensions yet: press a to add one", "refused")
            return
        k = names.index(self.current_ext) if self.current_ext in names else -step
        self.pick_extension(names[(k + step) % len(names)])

    def on_extensions_panel_picked(self, message: ExtensionsPanel.Picked) -> None:
        self.current_ext = message.name
        self.tree.current_ext = message.name
        self.tree.invalidate()
        self.base.query_one(ExtensionsPanel).update(self.session.extension_figures(), self.current_ext)
        self.update_crumb()

    def on_path_list_unmark(self, message: PathList.Unmark) -> None:
        if self.current_ext:
            self.report(self.session.unmark_path(self.current_ext, message.path))

    def on_tree_list_moved(self, _message: TreeList.Moved) -> None:
        box = self.base.query_one("#filter", Input)
        if box.display and not self.tree.name_filter and not box.has_focus:
            box.value = ""
            box.display = False  # h cleared the filter (or another folder was opened): no empty box left
        self.update_crumb()

    def on_tree_list_columns_changed(self, _message: TreeList.ColumnsChanged) -> None:
        self.update_crumb()

    def action_add_extension(self) -> None:
        def done(name: str | None) -> None:
            if not name:
                return
            outcome = self.session.add_extension(name)
            if outcome.ok:
                self.current_ext = name
            self.report(outcome)

        self.push_screen(NameScreen("Name of the new extension", placeholder="e.g. firmware"), done)

    def action_rename_extension(self) -> None:
        old = self.current_ext
        if old is None:
            self.set_status("no extension to rename: press a to add one", "refused")
            return

        def done(name: str | None) -> None:
            if not name or name == old:
                return
            outcome = self.session.rename_extension(old, name)
            if outcome.ok:
                self.current_ext = name
            self.report(outcome)

        self.push_screen(NameScreen(f"Rename extension {old} to", value=old), done)

    def action_remove_extension(self) -> None:
        name = self.current_ext
        if name is None:
            self.set_status("no extension to remove", "refused")
            return
        ext = self.session.spec.extension(name)
        held = f" and its {plural(len(ext.paths), 'path')}" if ext and ext.paths else ""

        def done(yes: bool | None) -> None:
            if not yes:
                return
            outcome = self.session.remove_extension(name)
            if outcome.ok:
                names = [e.name for e in self.session.spec.extensions]
                self.current_ext = names[0] if names else None
            self.report(outcome)

        self.push_screen(ConfirmScreen(f"Remove extension {name}{held} from the spec? (u undoes it)",
                                       yes="Remove"), done)

    # -- building -----------------------------------------------------------------------------
    def build_screen(self) -> BuildScreen | None:
        return next((s for s in self.screen_stack if isinstance(s, BuildScreen)), None)

    def build_refusal(self) -> str | None:
        """Why ``b`` cannot build now, or None."""
        s = self.session
        if self.build_screen() is not None:
            return "a build is already running"
        if s.disk_problems:
            return (f"not building: {s.path} on disk has {plural(len(s.disk_problems), 'problem')}; "
                    "fix the file and save it first")
        if s.unsaved:
            return f"not building: the last change could not be saved ({s.save_error}); the build reads the spec file"
        if s.plan is None:
            return "not building yet: the scan of the OS tree is not finished"
        return None

    def action_build(self, force: bool = False) -> None:
        """Build (and sign and verify) what changed, or everything with ``force``."""
        refusal = self.build_refusal()
        if refusal:
            self.set_status(refusal, "refused")
            self.bell()
            return
        s = self.session
        self.workers.cancel_group(self, "estimate-refine")  # both cores for the build
        self.set_status("building…" if not force else "rebuilding everything…", "info")
        self._last_build = BuildScreen(s.spec, s.index, s.plan, force=force, gauge=s.figures(), estimator=s.estimator)
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
        if self.session.estimator is not None:  # the build calibrated it; go on refining
            self.session.estimator_changed()
            self.refresh_all()
            self.refine_estimator(self.session.estimator)

    def set_theme(self, name: str) -> None:
        self.theme = name

    async def action_quit(self) -> None:
        building = self.build_screen()
        if building is not None and building.running:
            await building.stop()  # the engine removes its temp files and child processes
        if not self.session.unsaved:
            self.exit(0)
            return

        def done(yes: bool | None) -> None:
            if yes:
                self.exit(1)

        self.push_screen(ConfirmScreen(f"The spec could not be saved ({self.session.save_error}). "
                                       "Quit and lose the last changes?", yes="Quit"), done)


def _run_abandonable(fn: Callable[[], object], worker, stop: threading.Event, alive: Callable[[], bool]) -> tuple[bool, object]:
    """Run ``fn`` in a daemon thread and wait for it while ``alive()``; on a cancel set ``stop``
    and return at once, leaving the thread to end on its own. A long libzstd call cannot be
    interrupted, and quitting or building must not wait for it. Returns (finished, result or
    the exception it raised)."""
    box: list[tuple[bool, object]] = []

    def run() -> None:
        try:
            box.append((True, fn()))
        except BaseException as exc:  # noqa: BLE001 - handed back to the caller
            box.append((False, exc))

    thread = threading.Thread(target=run, name="sysextant-estimate", daemon=True)
    thread.start()
    while thread.is_alive():
        if worker.is_cancelled or not alive():
            stop.set()
            return False, None
        thread.join(0.1)
    ok, value = box[0]
    return ok, value


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
