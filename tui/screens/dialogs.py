"""The workbench's dialogs: help, a yes/no question, a name prompt."""

from __future__ import annotations

from collections.abc import Callable

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Static

HELP = """\
[b]Sysextant workbench[/b]: move parts of /usr and /opt out of the UKI into system extensions.

[b]Browse[/b] (the keys of ncdu, gdu and dua)
  ↑ ↓  j k          move              enter  l  →     open a folder
  h  ←  backspace   up a folder       PgUp PgDn H G   page, first, last
  s  n  C           sort by size, name, item count (the same key again reverses)
  t                 folders first     r               rescan the tree
  a                 apparent size / disk usage
  c                 size column: apparent (or disk) → initrd (newc) → compressed estimate
  g                 share column: percent and bar, percent, bar, hidden
  /                 search the whole tree with a glob (*.ko.zst, locale, usr/**/doc):
                    space marks a result, enter jumps to it, h or esc goes back
  f                 filter this folder by name (esc clears)
  i                 item pane: full path, every size, hard links, boot chain
  p                 show or hide the extensions panel (hidden below 76 columns)

[b]Mark[/b]
  space             mark / unmark into the current extension, then move down
  e                 mark a folder but what boot needs (◆ needed, ◇ holds some)
  x                 exclude an entry of a marked folder from its extension (it stays in
                    the UKI), or take it back; outside usr/ and opt/: leave it out of
                    the UKI entirely (os.exclude, asks first: it is gone from the OS)
  1-9  [  ]         pick the current extension      tab  focus the panels
  +  F2  -          add, rename, remove an extension
  del (in Paths)    unmark a path               u  ctrl+z   undo
  P                 packages view: packages by UKI cost; space lists one in the extension
  F                 fit: propose what to move to get under a limit; Apply, u undoes it
  D                 show only what differs from a base image or tree; D again clears it

[b]Build[/b]
  b                 build, sign and verify what changed since the last build
  B                 rebuild everything (nothing reused)
                    esc cancels a running build (previous outputs are kept)
  v                 boot check: boot the built UKI under Secure Boot in a VM (QEMU +
                    OVMF), extensions merged, stages shown as they pass; esc stops it

[b]Other[/b]
  ctrl+p            command palette (themes, actions)     ?  this help     q  quit

Every mark is written to the spec at once (comments kept); edits made to the spec in an editor are picked up within a second. The gauge shows the predicted UKI size against the spec's uki.limit: green under, yellow close to it or past 800 MiB, orange high risk (past 1 GiB), red over.

Marks are refused outside usr/ and opt/, for entries already in another extension, for what the UKI needs to boot (the kernel and the uki.init program), for usr/lib/os-release, and for special files.
"""


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,q,question_mark", "dismiss", "Close")]

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="help-box", classes="dialog"):
            yield Static(HELP, id="help-text")
            yield Static("[dim]esc closes[/]")

    def action_dismiss(self) -> None:  # type: ignore[override]
        self.dismiss(None)


class ConfirmScreen(ModalScreen[bool]):
    """A yes/no question; y/enter answer yes, n/esc no."""

    BINDINGS = [Binding("y", "answer(True)", "Yes"), Binding("n,escape", "answer(False)", "No")]

    def __init__(self, question: str, yes: str = "Yes") -> None:
        super().__init__()
        self.question = question
        self.yes = yes

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(self.question, id="question")
            with Horizontal(classes="buttons"):
                yield Button(self.yes, variant="error", id="yes")
                yield Button("Cancel", id="no")

    def on_mount(self) -> None:
        self.query_one("#no", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)


class NameScreen(ModalScreen[str | None]):
    """Ask for a name; enter accepts, esc cancels. With ``submit`` (the name -> why it was
    refused, or None once applied) a refused name keeps the dialog open with the text typed and
    the reason under it."""

    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, title: str, value: str = "", placeholder: str = "",
                 submit: Callable[[str], str | None] | None = None) -> None:
        super().__init__()
        self.title_text = title
        self.value = value
        self.placeholder = placeholder
        self.submit = submit

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(self.title_text)
            yield Input(self.value, placeholder=self.placeholder, id="name")
            yield Label("", id="name-error")
            yield Static("[dim]letters, digits, '.' and '-' · enter accepts · esc cancels[/]")

    def on_mount(self) -> None:
        self.query_one("#name-error", Label).display = False

    def on_input_submitted(self, event: Input.Submitted) -> None:
        name = event.value.strip()
        if not name or self.submit is None:
            self.dismiss(name or None)
            return
        why = self.submit(name)
        if why is None:
            self.dismiss(name)
            return
        error = self.query_one("#name-error", Label)
        error.update(why)
        error.display = True
        self.app.bell()

    def action_cancel(self) -> None:
        self.dismiss(None)
