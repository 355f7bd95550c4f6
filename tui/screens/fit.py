"""The fit planner in the workbench (``F``): what brings the UKI under its limit, previewed.

The proposal (:func:`sysextant.core.sizing.fit.propose_fit`) is computed in a thread worker while
the dialog says so; it lists the ``os.exclude`` globs, labelled as removing content from the OS,
then each proposed extension with what it saves and the UKI figure after it. ``enter`` applies
it in one step (the session writes the spec, comments kept) that one ``u`` reverts.
"""

from __future__ import annotations

from rich.markup import escape
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Static

from sysextant.core.errors import UserError
from sysextant.core.units import SizeError, format_size, parse_size
from sysextant.core.workbench.session import Session

#: what an extension row shows of its packages and paths before "… (N in all)"
SHOWN = 4


def fit_markup(fit) -> str:  # noqa: ANN001 - a core.sizing.fit.FitResult
    """The proposal as Rich markup: the target, os.exclude (removes content), the extensions."""
    how = "compressed estimate" if fit.exact_estimate else "no estimate yet: a fair ratio over newc bytes"
    lines = [f"UKI [b]{format_size(fit.uki_before)}[/b] now; limit [b]{escape(fit.limit_text)}[/b] less a margin of "
             f"{format_size(fit.margin)}: aim under {format_size(fit.target)}",
             f"[dim]{how}; {'by package' if fit.by_packages else 'by folder (no package database)'}; "
             f"{fit.seconds:.2f} s[/]", ""]
    if fit.os_exclude:
        lines.append("[b]os.exclude[/b] [$error]REMOVES content from the OS[/] (it goes in no extension):")
        for glob, what, saves in fit.os_exclude:
            lines.append(f"  {escape(glob):<28} {escape(what)}, −{format_size(saves)}")
        lines.append("")
    if fit.extensions:
        width = max(len(p.name) for p in fit.extensions)
        lines.append(f"[b]{'extension':<{width}}  {'saves':>9}  {'UKI after':>9}[/b]  what")
        for p in fit.extensions:
            what = [*p.packages, *p.paths]
            shown = ", ".join(what[:SHOWN]) + (f", … ({len(what)} in all)" if len(what) > SHOWN else "")
            excl = f" [dim](exclude {len(p.exclude)})[/]" if p.exclude else ""
            lines.append(f"{escape(p.name):<{width}}  {format_size(p.saves):>9}  {format_size(p.uki_after):>9}  "
                         f"{escape(shown)}{excl}")
        lines.append("")
    verdict = "fits with the margin" if fit.reached else "does NOT fit"
    lines.append(f"after: UKI {format_size(fit.uki_after)} (up to {format_size(fit.uki_after_high)}): "
                 f"[b]{verdict}[/b]")
    if not fit.reached:
        lines.append(f"no boot-safe plan reaches it; {format_size(fit.uki_after_high - fit.target)} more would have "
                     "to go. What stays:")
        for what, size in fit.blockers[:5]:
            lines.append(f"  {format_size(size):>9}  {escape(what)}")
    for note in fit.notes:
        lines.append(f"[dim]note: {escape(note)}[/]")
    return "\n".join(lines)


class FitScreen(ModalScreen[object]):
    """Propose a fit in a worker, show it; dismissed with the FitResult to apply, or None."""

    BINDINGS = [Binding("escape", "close", "Close")]

    def __init__(self, session: Session) -> None:
        super().__init__()
        self.session = session
        self.fit = None
        self.asked = 0  # proposals asked for: an older one finishing late is not shown

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog", id="fit-box"):
            yield Static("[b]Fit the UKI under a limit[/b]")
            yield Input(self.session.spec.uki.limit_text, placeholder="a size or preset: 800MiB, typical, ovmf",
                        id="fit-limit")
            with VerticalScroll(id="fit-scroll"):
                yield Static("proposing: ranking what may move by what it saves…", id="fit-text")
            with Horizontal(classes="buttons"):
                yield Button("Apply", variant="primary", id="apply", disabled=True)
                yield Button("Close", id="close")
            yield Static("[dim]a preview · enter in the box proposes for the limit typed · Apply (tab, enter) "
                         "writes it into the spec in one step, u undoes it · esc closes[/]")

    def on_mount(self) -> None:
        self.query_one("#fit-box").styles.width = "90%"
        self.query_one("#fit-scroll").styles.max_height = 20
        self.query_one("#fit-scroll").styles.height = "auto"
        self.query_one("#fit-scroll").can_focus = False  # tab goes from the limit to Apply
        self.query_one("#fit-limit", Input).focus()
        self.propose(None, None)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        """Propose again for the limit typed (the spec's ``uki.limit`` is the default)."""
        event.stop()
        text = event.value.strip() or self.session.spec.uki.limit_text
        try:
            limit = parse_size(text, allow_presets=True)
        except SizeError as exc:
            self.query_one("#fit-text", Static).update(f"limit {escape(text)}: {escape(str(exc))}")
            self.app.bell()
            return
        self.fit = None
        self.query_one("#apply", Button).disabled = True
        self.query_one("#fit-text", Static).update(f"proposing for {escape(text)}…")
        self.propose(limit, text)

    @work(thread=True, exclusive=True, exit_on_error=False, group="fit")
    def propose(self, limit: int | None, text: str | None) -> None:
        self.asked += 1
        asked = self.asked
        try:
            fit = self.session.propose_fit(limit, text)
        except UserError as exc:
            self.app.call_from_thread(self._show, asked, None, str(exc))
            return
        self.app.call_from_thread(self._show, asked, fit, None)

    def _show(self, asked: int, fit, error: str | None) -> None:  # noqa: ANN001 - a FitResult
        if asked != self.asked or not self.is_attached:
            return
        text = self.query_one("#fit-text", Static)
        if fit is None:
            text.update(f"no proposal: {escape(error or '')}")
            return
        self.fit = fit
        text.update(fit_markup(fit))
        self.query_one("#apply", Button).disabled = not (fit.extensions or fit.os_exclude)

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "apply":
            self.action_apply()
        else:
            self.action_close()

    def action_apply(self) -> None:
        if self.fit is not None and (self.fit.extensions or self.fit.os_exclude):
            self.dismiss(self.fit)

    def action_close(self) -> None:
        self.workers.cancel_group(self, "fit")
        self.dismiss(None)
