"""The build screen: ``b`` builds what changed, ``B`` everything, with a bar per stage.

:func:`sysextant.core.build.pipeline.build` runs in a thread worker; its :class:`~sysextant.core.progress.Progress`
events come back to the screen with ``post_message``, at most about ten a second per task. A
:class:`~sysextant.core.build.tracker.BuildTracker` groups them by artefact (one group per
extension, the UKI, the final verification) from their fields; the screen keeps a log of the
engine's messages, and ends on the build report: every artefact with its path, size, root hash or
sha256, reused or built, and its verification checks; the UKI against the limit; and how Kairos
deploys the files. ``esc`` asks the engine to stop at its next check; the engine writes
atomically, so a cancelled or failed build leaves the previous outputs in place.

Only presentation lives here: what is built, reused, verified and deployed comes from the report;
the widgets are in :mod:`sysextant.tui.widgets.build`.
"""

from __future__ import annotations

import json
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.message import Message
from textual.screen import ModalScreen
from textual.widgets import Footer, RichLog, Static

from sysextant.core.atomic import write_atomic
from sysextant.core.build.artefacts import leftover_temps
from sysextant.core.build.pipeline import BuildReport, build
from sysextant.core.build.tracker import BuildTracker
from sysextant.core.errors import Cancelled, UserError
from sysextant.core.progress import Progress, Reporter
from sysextant.core.sizing.forecast import Figures
from sysextant.core.sizing.plan import Plan
from sysextant.core.spec.model import Spec
from sysextant.core.tree.index import TreeIndex
from sysextant.core.units import format_size

from ..widgets.build import OverallBar, ResultView, StagesView, format_seconds
from ..widgets.item import plural

#: How often one task's progress is forwarded to the screen (seconds between events).
THROTTLE = 0.1
SUMMARY_NAME = "sysextant-build.json"


class BuildScreen(ModalScreen[tuple[str, str]]):
    """Runs one build and shows its progress, then its result. Dismisses with (status kind, text)."""

    BINDINGS = [
        Binding("escape", "cancel_build", "Cancel build"),
        Binding("escape", "close", "Back to the workbench"),
        Binding("q", "quit_key", "Back / quit", show=False),
        Binding("s", "save_summary", "Save JSON summary"),
        Binding("l", "toggle_stages", "Stages/result"),
    ]

    class Event(Message):
        """A progress event from the build thread."""

        def __init__(self, progress: Progress, at: float) -> None:
            super().__init__()
            self.progress = progress
            self.at = at

    class Finished(Message):
        """The build thread ended: ``kind`` is ok, cancelled, error or crash."""

        def __init__(self, kind: str, report: BuildReport | None = None, error: str = "", detail: str = "") -> None:
            super().__init__()
            self.kind = kind
            self.report = report
            self.error = error
            self.detail = detail

    def __init__(self, spec: Spec, index: TreeIndex | None, plan: Plan | None, *, force: bool = False,
                 gauge: Figures | None = None, runner: Callable[..., BuildReport] | None = None,
                 estimator: Any = None) -> None:
        super().__init__()
        self.spec = spec
        self.index = index
        self.estimator = estimator  # the workbench's prepared estimate: the build need not redo it
        self.force = force
        self.gauge = gauge
        self.runner = runner or build
        self.reporter = Reporter(self._forward)
        self.tracker = BuildTracker(spec, plan, time.monotonic(), gauge.uki_bytes if gauge else None)
        self.running = True
        self.kind = ""  # the outcome, when ended
        self.report: BuildReport | None = None
        self.error = ""
        self.saved: Path | None = None
        self.replaced: list[tuple[str, Path]] = []  # (artefact, file) this build replaced before it stopped
        self._last_post: dict[str, float] = {}
        self._quit_armed = False  # q pressed once while the build runs

    def compose(self) -> ComposeResult:
        with Vertical(id="build-box"):
            yield Static(self._title(), id="build-title")
            yield OverallBar(self.tracker, id="build-overall")
            yield Static(id="build-outcome")
            with VerticalScroll(id="build-stages"):
                yield StagesView(self.tracker, id="build-stage-view")
            with VerticalScroll(id="build-result"):
                yield ResultView(id="build-result-text")
            yield RichLog(id="build-log", wrap=True, highlight=False, markup=False, max_lines=5000)
        yield Footer()

    def _title(self) -> str:
        from rich.markup import escape

        what = "everything (B: unchanged artefacts rebuilt too)" if self.force else "what changed since the last build"
        return (f"[b]Build[/b] {escape(str(self.spec.path))} → {escape(str(self.spec.output))}  ·  "
                f"[b]{what}[/b]")

    def on_mount(self) -> None:
        self.query_one("#build-outcome").display = False
        self.query_one("#build-result").display = False
        self.log_line("build", "build started" + (" (forced: nothing reused)" if self.force else ""))
        self.set_interval(0.25, self._tick)
        self.run_build()

    def on_unmount(self) -> None:
        self.reporter.cancel()  # never leave a build running behind a closed screen

    # -- the worker -----------------------------------------------------------------------------
    def _forward(self, ev: Progress) -> None:
        """Called in the build thread: pass the event on, at most every THROTTLE s per task."""
        now = time.monotonic()
        in_between = not ev.message and ev.total and 0 < ev.done < ev.total
        if in_between and now - self._last_post.get(ev.task, 0.0) < THROTTLE:
            return  # the first and the last event of a task always pass
        self._last_post[ev.task] = now
        self.post_message(self.Event(ev, now))

    @work(thread=True, exclusive=True, exit_on_error=False, group="build")
    def run_build(self) -> None:
        try:
            extra = {"estimator": self.estimator} if self.estimator is not None else {}
            report = self.runner(self.spec, force=self.force, reporter=self.reporter, index=self.index, **extra)
        except Cancelled:
            self.post_message(self.Finished("cancelled"))
        except UserError as exc:
            self.post_message(self.Finished("error", error=str(exc)))
        except Exception as exc:  # noqa: BLE001 - an engine bug is shown, not allowed to kill the app
            detail = "".join(traceback.format_exception(exc))
            self.post_message(self.Finished("crash", error=f"{type(exc).__name__}: {exc}", detail=detail))
        else:
            self.post_message(self.Finished("ok", report=report))

    # -- events -------------------------------------------------------------------------------
    def on_build_screen_event(self, message: Event) -> None:
        ev = message.progress
        self.tracker.apply(ev, message.at)
        if ev.message:
            self.log_line(ev.task, ev.message, message.at)
        self.query_one(StagesView).update_view()
        self.query_one(OverallBar).refresh()

    def log_line(self, task: str, text: str, at: float | None = None) -> None:
        at = time.monotonic() if at is None else at
        line = Text(no_wrap=True)
        line.append(f"{at - self.tracker.started:7.2f}  ", "dim")
        line.append(f"{task:<16} ", "bold")
        line.append(text)
        self.query_one(RichLog).write(line)

    def _tick(self) -> None:
        self.query_one(OverallBar).refresh()
        if any(g.packer_running_since() is not None for g in self.tracker.groups.values()):
            self.query_one(StagesView).update_view()  # keep the running packer's row moving

    def on_build_screen_finished(self, message: Finished) -> None:
        now = time.monotonic()
        self.running = False
        self.kind, self.report, self.error = message.kind, message.report, message.error
        # what a stop left: the files the engine said it replaced (its ``replaced`` events)
        self.replaced = list(self.tracker.replaced.items()) if message.kind != "ok" else []
        self.tracker.finish(message.report, message.kind, now)
        overall = self.query_one(OverallBar)
        overall.outcome = message.kind
        overall.refresh()
        self.query_one(StagesView).update_view()
        outcome = self.query_one("#build-outcome", Static)
        outcome.set_classes(f"outcome-{'ok' if message.kind == 'ok' and message.report.ok else 'bad'}")
        outcome.update(self.outcome_text())
        outcome.display = True
        if message.detail:
            for line in message.detail.rstrip().splitlines():
                self.query_one(RichLog).write(Text(line, style="dim"))
        if message.kind == "ok":
            self.log_line("build", f"finished in {format_seconds(message.report.seconds)}", now)
            self.query_one(ResultView).show(message.report, self.gauge,
                                            self.spec.signing.cert if self.spec.signing else None)
            self.query_one("#build-stages").display = False
            self.query_one("#build-result").display = True
            self.query_one("#build-result").focus()
        else:
            self.log_line("build", self.outcome_summary()[1], now)
            for line in self.error.splitlines()[1:]:  # e.g. the spec's problems, one a line
                self.log_line("", line, now)
        self.refresh_bindings()

    # -- texts ----------------------------------------------------------------------------------
    def outcome_summary(self) -> tuple[str, str]:
        """(status kind, one line) for the workbench's status line after the screen closes."""
        if self.running:
            return "info", "build running"
        if self.kind == "ok" and self.report is not None:
            arts = self.report.artefacts
            reused = sum(a.reused for a in arts)
            bad = ", ".join(a.name for a in arts if not a.verified)
            if bad:
                return "refused", f"build finished but verification FAILED for {bad}"
            if self.report.over_limit:
                return "refused", (f"build FAILED: the UKI is {self.report.verdict} the limit "
                                   f"{format_size(self.report.limit_bytes)}; do not deploy it")
            return "ok", (f"build ok: {plural(len(arts), 'artefact')} verified ({len(arts) - reused} built, {reused} reused) "
                          f"in {format_seconds(self.report.seconds)} → {self.report.output}")
        if self.kind == "cancelled":
            return "refused", "build cancelled; " + self._kept_words()
        if self.kind == "error":
            return "refused", f"build failed: {self.error.splitlines()[0] if self.error else ''}"
        return "refused", f"build stopped by an internal error ({self.error}); previous outputs kept"

    def outcome_text(self) -> Text:
        text = Text()
        left = leftover_temps(self.spec)
        if self.kind == "ok" and self.report is not None:
            text.append(self.outcome_summary()[1], "bold")
        elif self.kind == "cancelled":
            text.append(f"Cancelled; {self._kept_words()}.", "bold")
            text.append(" Nothing of this build was half-written into the output folder.")
        elif self.kind == "error":
            text.append("The build stopped: ", "bold")
            text.append(self.error)
            text.append(f"\nNothing was half-written; {self._kept_words()}. Fix this and press b again.")
        else:
            text.append("The build stopped on an internal error (a bug; please report it): ", "bold")
            text.append(self.error)
            text.append("\nThe traceback is in the log below; the previous outputs are kept.")
        if left:
            text.append(f"\nWARNING: temp files remain: {', '.join(str(p) for p in left)}", "bold")
        if self.saved:
            text.append(f"\nJSON summary saved to {self.saved} (path copied to the clipboard)")
        return text

    def _kept_words(self) -> str:
        """What a stop left: the previous outputs, or which ones this build had already replaced
        (saying "previous outputs kept" and "X had been rebuilt" together contradicted itself)."""
        if not self.replaced:
            return "previous outputs kept"
        names = ", ".join(p.name for _, p in self.replaced)
        return (f"{names} already rebuilt whole (not yet verified); "
                f"the other outputs are the previous ones")

    # -- actions --------------------------------------------------------------------------------
    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "cancel_build":
            return self.running
        if action == "close":
            return not self.running
        if action == "save_summary":
            return self.report is not None
        if action == "toggle_stages":
            return self.report is not None
        return True

    def action_cancel_build(self) -> None:
        if not self.running or self.reporter.cancelled:
            return
        self.reporter.cancel()
        self.query_one(OverallBar).cancelling = True
        self.query_one(OverallBar).refresh()
        self.log_line("build", "cancel requested: stopping at the next check")

    def action_close(self) -> None:
        if not self.running:
            self.dismiss(self.outcome_summary())

    async def action_quit_key(self) -> None:
        """q: back to the workbench once the build is over; while it runs, the first q says what
        q and esc do, a second q stops the build (outputs stay whole) and quits."""
        if not self.running:
            self.dismiss(self.outcome_summary())
            return
        if self._quit_armed:
            self.log_line("build", "q again: stopping the build and quitting")
            await self.app.action_quit()
            return
        self._quit_armed = True
        message = "a build is running: q again stops it and quits; esc stops it and stays (outputs stay whole)"
        self.log_line("build", message)
        self.notify(message, title="Build running", timeout=4)

    def action_toggle_stages(self) -> None:
        stages, result = self.query_one("#build-stages"), self.query_one("#build-result")
        stages.display, result.display = result.display, stages.display

    def action_save_summary(self) -> None:
        if self.report is None:
            return
        path = Path(self.report.output) / SUMMARY_NAME
        try:
            write_atomic(path, (json.dumps(self.report.to_json(), indent=1, default=str) + "\n").encode())
        except UserError as exc:
            self.notify(str(exc), severity="error")
            return
        self.saved = path
        self.app.copy_to_clipboard(str(path))
        self.query_one("#build-outcome", Static).update(self.outcome_text())
        self.log_line("build", f"JSON summary saved to {path}")

    async def stop(self) -> None:
        """Cancel a running build and wait for its thread to end (quitting the app)."""
        self.reporter.cancel()
        for worker in self.workers:
            if worker.group == "build":
                await worker.wait()
