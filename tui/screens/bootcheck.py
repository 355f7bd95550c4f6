"""The boot check screen: ``v`` in the workbench boots what the last build made under Secure Boot
in a VM (:func:`sysextant.core.vm.run.boot_spec`, as ``sysextant boot SPEC --extensions``) and
shows the stages as they pass: firmware accepted, stub, kernel, ``/init``, a target, then the
check build's checks (merged extensions, dm-verity, files, a moved module, PCR 11).

The boot runs in a thread worker; each decided stage comes back through ``on_stage`` and
``post_message``. ``esc`` while it runs cancels: the engine's reporter raises at its next check
(four times a second while the VM runs) and :func:`~sysextant.core.vm.run.boot` stops QEMU and
swtpm and removes its private temporary folder before the worker ends. Only presentation lives
here; what passed and why comes from the engine's stages.
"""

from __future__ import annotations

import dataclasses
import time
import traceback
from typing import TYPE_CHECKING, Any

from rich.markup import escape
from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.message import Message
from textual.screen import ModalScreen
from textual.widgets import Footer, RichLog, Static

from sysextant.core.errors import Cancelled, UserError
from sysextant.core.progress import Progress, Reporter
from sysextant.core.spec.model import Spec
from sysextant.core.vm.console import BOOT_RULES, FAILED, PASSED, PENDING, SKIPPED, Stage

if TYPE_CHECKING:
    from sysextant.core.vm.run import BootResult

MARKS = {PASSED: ("✓", "green"), FAILED: ("✗", "red"), SKIPPED: ("–", "yellow"), PENDING: ("·", "dim")}


def boot_check_refusal(app: Any) -> str | None:
    """Why ``v`` cannot boot-check now, or None: it needs a build (the UKI on disk), no build or
    other check running, and the spec on disk as shown (the check build reads the file)."""
    from .build import BuildScreen

    s = app.session
    if any(isinstance(x, (BuildScreen, BootCheckScreen)) for x in app.screen_stack):
        return "a build or a boot check is already running"
    if s.disk_problems:
        return f"not booting: {s.path} on disk has problems; fix the file and save it first"
    if s.unsaved:
        return f"not booting: the last change could not be saved ({s.save_error}); the check reads the spec file"
    if not s.spec.uki.output.is_file():
        return f"nothing to boot yet: no UKI at {s.spec.uki.output}; press b to build first"
    return None


def wants_extensions(spec: Spec) -> bool:
    """Whether the check boots the check build with the extensions (not when there are none, or
    when /init is Kairos' immucore, which the VM cannot take past /init)."""
    from sysextant.core.vm.run import _init_is_immucore

    return bool(spec.extensions) and not _init_is_immucore(spec)


class BootCheckScreen(ModalScreen[tuple[str, str]]):
    """Runs one boot check and shows its stages as they pass, then the verdict. Dismisses with
    (status kind, text) for the workbench's status line."""

    DEFAULT_CSS = """
    BootCheckScreen { align: left top; background: $background; }
    #boot-box { width: 100%; height: 1fr; }
    #boot-title { height: auto; padding: 0 1; background: $panel; color: $text; }
    #boot-stages-box { height: 1fr; padding: 0 1; margin-top: 1; }
    #boot-stages { text-wrap: nowrap; text-overflow: ellipsis; }
    #boot-outcome { height: auto; max-height: 12; padding: 0 1; margin-top: 1; }
    #boot-outcome.outcome-ok { background: $success 15%; border-left: thick $success; }
    #boot-outcome.outcome-bad { background: $error 15%; border-left: thick $error; }
    #boot-log { height: 8; border-top: solid $primary 40%; background: $surface; padding: 0 1; }
    """

    BINDINGS = [
        Binding("escape", "cancel_check", "Cancel (stops QEMU)"),
        Binding("escape", "close", "Back to the workbench"),
        Binding("q", "quit_key", "Back", show=False),
    ]

    class StageDecided(Message):
        def __init__(self, stage: Stage) -> None:
            super().__init__()
            self.stage = stage

    class LogLine(Message):
        def __init__(self, text: str, at: float) -> None:
            super().__init__()
            self.text = text
            self.at = at

    class Finished(Message):
        """The worker ended: ``kind`` is ok, failed, cancelled, error or crash."""

        def __init__(self, kind: str, result: BootResult | None = None, error: str = "", detail: str = "") -> None:
            super().__init__()
            self.kind = kind
            self.result = result
            self.error = error
            self.detail = detail

    def __init__(self, spec: Spec, *, extensions: bool | None = None) -> None:
        super().__init__()
        self.spec = spec
        self.extensions = wants_extensions(spec) if extensions is None else extensions
        self.reporter = Reporter(self._forward)
        self.started = time.monotonic()
        self.running = True
        self.kind = ""
        self.result: BootResult | None = None
        self.error = ""
        #: the stages shown, in order: the boot stages first, the checks as they come
        self.stages: list[Stage] = [Stage(r.key, r.title) for r in BOOT_RULES]

    def compose(self) -> ComposeResult:
        with Vertical(id="boot-box"):
            yield Static(self._title(), id="boot-title")
            with VerticalScroll(id="boot-stages-box"):
                yield Static(id="boot-stages")
            yield Static(id="boot-outcome")
            yield RichLog(id="boot-log", wrap=True, highlight=False, markup=False, max_lines=2000)
        yield Footer()

    def _title(self) -> str:
        what = ("the check build (the spec's UKI + files under etc/, not for deployment) with the extensions on a "
                "second disk" if self.extensions else "the spec's UKI")
        why = ""
        if not self.extensions and self.spec.extensions:
            why = (" · /init is Kairos' immucore, which needs an installed Kairos disk to go on: the VM proves "
                   "the stages up to /init, not the extensions")
        return (f"[b]Boot check[/b] {escape(str(self.spec.path))}  ·  {escape(what)} under Secure Boot in QEMU"
                f"\n[dim]the stages show as the console proves them; TCG emulation takes minutes{escape(why)}[/]")

    def on_mount(self) -> None:
        self.query_one("#boot-outcome").display = False
        self.update_stages()
        self.set_interval(1.0, self.update_stages)  # the elapsed time and the running stage
        self.run_check()

    def on_unmount(self) -> None:
        self.reporter.cancel()  # never leave a VM running behind a closed screen

    # -- the worker -----------------------------------------------------------------------------
    def _forward(self, ev: Progress) -> None:
        """In the worker thread: the engine's messages go to the log (progress bars do not)."""
        if ev.message:
            self.post_message(self.LogLine(f"{ev.task}: {ev.message}" if ev.task != "boot" else ev.message,
                                           time.monotonic()))

    def _on_stage(self, stage: Stage) -> None:
        """In the worker thread: a copy, as the watcher goes on changing its own."""
        self.post_message(self.StageDecided(dataclasses.replace(stage)))

    @work(thread=True, exclusive=True, exit_on_error=False, group="bootcheck")
    def run_check(self) -> None:
        from sysextant.core.vm import run as vm_run  # looked up here: tests replace boot_spec

        try:
            result = vm_run.boot_spec(self.spec, check=True, extensions=self.extensions, build_first=True,
                                      reporter=self.reporter, on_stage=self._on_stage)
        except Cancelled:
            self.post_message(self.Finished("cancelled"))
        except UserError as exc:
            self.post_message(self.Finished("error", error=str(exc)))
        except Exception as exc:  # noqa: BLE001 - an engine bug is shown, not allowed to kill the app
            detail = "".join(traceback.format_exception(exc))
            self.post_message(self.Finished("crash", error=f"{type(exc).__name__}: {exc}", detail=detail))
        else:
            self.post_message(self.Finished("ok" if result.ok else "failed", result=result))

    # -- events ---------------------------------------------------------------------------------
    def on_boot_check_screen_stage_decided(self, message: StageDecided) -> None:
        st = message.stage
        for k, known in enumerate(self.stages):
            if known.key == st.key:
                self.stages[k] = st
                break
        else:
            self.stages.append(st)
        self.update_stages()

    def on_boot_check_screen_log_line(self, message: LogLine) -> None:
        self.log_line(message.text, message.at)

    def log_line(self, text: str, at: float | None = None) -> None:
        at = time.monotonic() if at is None else at
        line = Text(no_wrap=False)
        line.append(f"{at - self.started:7.1f}  ", "dim")
        line.append(text)
        self.query_one(RichLog).write(line)

    def on_boot_check_screen_finished(self, message: Finished) -> None:
        self.running = False
        self.kind, self.result, self.error = message.kind, message.result, message.error
        if message.result is not None:
            self.stages = [dataclasses.replace(s) for s in message.result.stages]
        self.update_stages()
        outcome = self.query_one("#boot-outcome", Static)
        outcome.set_classes(f"outcome-{'ok' if message.kind == 'ok' else 'bad'}")
        outcome.update(self.outcome_text())
        outcome.display = True
        for line in message.detail.rstrip().splitlines():
            self.query_one(RichLog).write(Text(line, style="dim"))
        self.log_line(self.summary()[1])
        self.refresh_bindings()

    # -- texts ----------------------------------------------------------------------------------
    def stages_text(self) -> Text:
        text = Text(no_wrap=True, overflow="ellipsis")  # one row per stage, the evidence cut to fit
        width = max(len(s.title) for s in self.stages)
        current = next((s for s in self.stages if s.status == PENDING), None) if self.running else None
        for st in self.stages:
            mark, style = MARKS.get(st.status, ("?", ""))
            if st is current:
                mark, style = "›", "bold"
            when = f"{st.seconds:6.1f} s" if st.seconds is not None else "       "
            text.append(f" {mark} ", style)
            text.append(f"{when}  ")
            text.append(f"{st.title:<{width}}", "bold" if st is current else "")
            detail = st.note if st.key.startswith("check:") or st.status != PASSED else st.evidence
            if st.status == PASSED and st.note and not st.key.startswith("check:"):
                detail = f"{st.evidence}  ({st.note})"
            if st is current:
                detail = f"waiting… {time.monotonic() - self.started:.0f} s"
            text.append(f"  {detail}\n", "dim" if st.status in (PENDING, SKIPPED) else "")
        if self.running and self.extensions and not any(s.key.startswith("check:") for s in self.stages):
            text.append("   then the check build's checks (merge, dm-verity, files, module, PCR 11)\n", "dim")
        return text

    def update_stages(self) -> None:
        self.query_one("#boot-stages", Static).update(self.stages_text())

    def summary(self) -> tuple[str, str]:
        """(status kind, one line) for the workbench's status line."""
        if self.running:
            return "info", "boot check running"
        r = self.result
        if self.kind == "ok" and r is not None:
            return "ok", (f"boot check: every stage passed ({len(r.stages)} stages, {r.accel.name.upper()}, "
                          f"{r.seconds:.0f} s)")
        if self.kind == "failed" and r is not None:
            bad = next((s for s in r.stages if s.status == FAILED), None)
            what = f"{bad.title}: {bad.note or bad.evidence}" if bad is not None else r.ended
            return "refused", f"boot check FAILED: {what}"
        if self.kind == "cancelled":
            return "refused", "boot check cancelled: QEMU and swtpm stopped, temporary files removed"
        if self.kind == "error":
            return "refused", f"boot check not run: {self.error.splitlines()[0] if self.error else ''}"
        return "refused", f"boot check stopped by an internal error ({self.error})"

    def outcome_text(self) -> Text:
        text = Text()
        r = self.result
        text.append(self.summary()[1], "bold")
        if r is not None:
            text.append(f"\n{r.label}: {r.uki}\n{r.accel.name.upper()} ({r.accel.why}) · Secure Boot "
                        + ("on" if r.secure_boot else "off") + (" · TPM 2.0 (swtpm)" if r.tpm else "")
                        + f" · {r.ended}")
            for note in r.notes:
                text.append(f"\nnote: {note}", "dim")
        elif self.kind == "error":
            text.append("\n" + "\n".join(self.error.splitlines()[1:]))
        text.append("\nesc/q back to the workbench", "dim")
        return text

    # -- actions --------------------------------------------------------------------------------
    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "cancel_check":
            return self.running
        if action == "close":
            return not self.running
        return True

    def action_cancel_check(self) -> None:
        if not self.running or self.reporter.cancelled:
            return
        self.reporter.cancel()
        self.log_line("cancel requested: stopping QEMU and swtpm, removing the temporary files")

    def action_close(self) -> None:
        if not self.running:
            self.dismiss(self.summary())

    def action_quit_key(self) -> None:
        if self.running:
            self.notify("a boot check is running: esc stops QEMU and swtpm first", title="Boot check", timeout=4)
            return
        self.dismiss(self.summary())

    async def stop(self) -> None:
        """Cancel a running check and wait for its worker to end (quitting the app)."""
        self.reporter.cancel()
        for worker in self.workers:
            if worker.group == "bootcheck":
                await worker.wait()
