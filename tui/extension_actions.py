"""The extensions from the workbench: which one marks go into, adding, renaming and removing
one, unmarking a path, and excluding an entry (an extension's exclude:, or os.exclude after a
question). Mixed into :class:`~.app.WorkbenchApp`; every rule is the session's, these only ask
and show its outcome."""

from __future__ import annotations

import os

from textual.actions import SkipAction
from textual.widgets import Input

from sysextant.core.units import format_size

from .screens.dialogs import ConfirmScreen, NameScreen
from .widgets.extensions import ExtensionsPanel, PathList
from .widgets.item import plural


class ExtensionActions:
    """The keys and messages that pick and edit extensions."""

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
            self.set_status("no extensions yet: press + to add one", "refused")
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

    def action_add_extension(self) -> None:
        """+: a new extension, made current; a refused name keeps the dialog open with why."""
        def submit(name: str) -> str | None:
            outcome = self.session.add_extension(name)
            if not outcome.ok:
                return outcome.message
            self.current_ext = name
            self.report(outcome)
            return None

        self.push_screen(NameScreen("Name of the new extension", placeholder="e.g. firmware", submit=submit))

    def action_rename_extension(self) -> None:
        """F2: rename the current extension (the same dialog as +)."""
        old = self.current_ext
        if old is None:
            self.set_status("no extension to rename: press + to add one", "refused")
            return

        def submit(name: str) -> str | None:
            if name == old:
                return None
            outcome = self.session.rename_extension(old, name)
            if not outcome.ok:
                return outcome.message
            self.current_ext = name
            self.report(outcome)
            return None

        self.push_screen(NameScreen(f"Rename extension {old} to", value=old, submit=submit))

    def action_exclude(self) -> None:
        """x: keep the entry under the cursor out of the extension a folder mark puts it in (the
        extension's exclude:, it stays in the UKI), or take it back; outside usr/ and opt/, leave
        it out of the UKI entirely (os.exclude) after a question: it is then gone from the OS."""
        if not self._on_main_screen() or isinstance(self.focused, Input):
            raise SkipAction()
        s, entry = self.session, self.tree.entry
        if entry is None or s.index is None:
            self.set_status("nothing under the cursor to exclude", "refused")
            return
        if s.plan is None or s.owner(entry) is not None or s.os_exclude_refusal(entry) is not None:
            self.report(s.exclude(entry))
            return
        index = s.index
        rel = os.fsdecode(index.path(entry))
        inside = f", {plural(index.tot_count[entry], 'entry', 'entries')}" if index.is_dir(entry) else ""

        def done(yes: bool | None) -> None:
            if yes:
                self.report(s.os_exclude(entry))

        self.push_screen(ConfirmScreen(
            f"Leave {rel} ({format_size(index.tot_size[entry])}{inside}) out of the UKI entirely (os.exclude)? "
            "systemd-sysext cannot carry what is outside usr/ and opt/, so nothing brings it back: it is gone "
            "from the booted OS. u undoes it.", yes="Leave out"), done)

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
