"""The diff filter (``D``): show only what the workbench's tree adds or changes over a base.

The base is a folder or a container image (``docker save``, OCI layout or archive): by default
the ``from.base`` of an extension made from images (``extensions[].from: {image, base}``), else
what the user types. The comparison (:meth:`Session.diff_over`, by content, not by layer) runs in
a thread worker while the prompt says so; the tree list then shows the changed entries and the
folders holding them. ``D`` again clears the filter.
"""

from __future__ import annotations

from rich.markup import escape
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Label, Static
from textual.worker import get_current_worker

from sysextant.core.errors import Cancelled, UserError
from sysextant.core.units import format_size
from sysextant.core.workbench.figures import DiffFilter
from sysextant.core.workbench.session import Session


def diff_words(f: DiffFilter) -> str:
    """The status line once the filter is on."""
    parts = [f"{f.added:,} added", f"{f.changed:,} changed"]
    if f.deleted:
        parts.append(f"{f.deleted:,} deleted (not shown: gone from this tree)")
    outside = f.added + f.changed - f.carried
    tail = f"; {outside:,} outside the merged hierarchies (a sysext cannot carry them)" if outside else ""
    return (f"only what differs from {f.base}: {', '.join(parts)}, {format_size(f.bytes)}{tail} · "
            "D clears the filter")


class BaseScreen(ModalScreen[object]):
    """Ask for the base to compare with, compare in a worker; dismissed with a DiffFilter or None."""

    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, session: Session) -> None:
        super().__init__()
        self.session = session

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label("Show only what this tree adds or changes over the base image or tree")
            yield Input(self.session.diff_base() or "", placeholder="e.g. kairos.tar or ../base-rootfs", id="base")
            yield Label("", id="base-error")
            yield Static("[dim]a folder, docker save tar, OCI layout or archive · enter compares · esc cancels[/]")

    def on_mount(self) -> None:
        self.query_one("#base-error", Label).display = False

    def on_input_submitted(self, event: Input.Submitted) -> None:
        base = event.value.strip()
        if not base:
            self.dismiss(None)
            return
        self._say(f"comparing with {escape(base)} by content…")
        self.compare(base)

    def _say(self, text: str, error: bool = False) -> None:
        label = self.query_one("#base-error", Label)
        label.update(text)
        label.display = True
        if error:
            self.app.bell()

    @work(thread=True, exclusive=True, exit_on_error=False, group="diff")
    def compare(self, base: str) -> None:
        worker = get_current_worker()

        def check() -> None:
            if worker.is_cancelled:
                raise Cancelled("diff cancelled")

        try:
            found = self.session.diff_over(base, check=check)
        except Cancelled:
            return
        except (UserError, OSError) as exc:
            self.app.call_from_thread(self._say, escape(str(exc)), True)
            return
        self.app.call_from_thread(self.dismiss, found)

    def action_cancel(self) -> None:
        self.workers.cancel_group(self, "diff")
        self.dismiss(None)
