"""The workbench's command palette entries (ctrl+p): the main actions and the themes."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING

from textual.command import DiscoveryHit, Hit, Hits, Provider

if TYPE_CHECKING:
    from .app import WorkbenchApp


class WorkbenchCommands(Provider):
    """Actions of the workbench, by name."""

    def _commands(self) -> list[tuple[str, Callable[[], object], str]]:
        app: WorkbenchApp = self.app  # type: ignore[assignment]
        cmds: list[tuple[str, Callable[[], object], str]] = [
            ("Add extension", app.action_add_extension, "create a new extension and make it current (+)"),
            ("Rename current extension", app.action_rename_extension, "rename the current extension (F2)"),
            ("Remove current extension", app.action_remove_extension, "remove it from the spec, after a question (-)"),
            ("Undo", app.action_undo, "undo the last mark, exclude or extension change (u)"),
            ("Rescan the tree", app.action_rescan, "scan the OS tree again; the last figures stay until it is done (r)"),
            ("Search the tree", app.action_search, "a glob over the whole tree; mark from the results or jump (/)"),
            ("Filter by name", app.action_filter, "show the entries of this folder whose name contains… (f)"),
            ("Sort by size", partial(app.action_sort, "size"), "largest first; again: smallest first (s)"),
            ("Sort by name", partial(app.action_sort, "name"), "A to Z; again: Z to A (n)"),
            ("Sort by item count", partial(app.action_sort, "count"), "most items first; again: fewest (C)"),
            ("Folders first", app.action_dirs_first, "folders before files, or sorted together (t)"),
            ("Apparent size or disk usage", app.action_toggle_apparent, "the size column's bytes (a)"),
            ("Cycle size column", app.action_toggle_size,
             "apparent (or disk usage) → initrd (newc) bytes → compressed estimate, then back (c)"),
            ("Cycle share column", app.action_cycle_share, "percent and bar, percent, bar, hidden (g)"),
            ("Exclude entry", app.action_exclude,
             "keep it out of the extension a folder mark puts it in, or take it back; outside usr/ and opt/: "
             "leave it out of the UKI (os.exclude, asks first) (x)"),
            ("Mark all but what boot needs", app.action_mark_all_but_boot,
             "mark the folder under the cursor, excluding the entries the UKI needs to boot (e)"),
            ("Packages view", app.action_toggle_packages,
             "installed packages by what they cost in the UKI; space marks one into the current extension (P)"),
            ("Propose a fit under the limit", app.action_fit,
             "what to move (and what to leave out of the OS) to get the UKI under uki.limit; a preview, "
             "enter applies it in one undoable step (F)"),
            ("Show only what differs from a base", app.action_diff_filter,
             "the tree filtered to what it adds or changes over a base image or tree; again clears it (D)"),
            ("Item info", app.action_toggle_info, "full path, every size, hard links, extension, boot, refusal (i)"),
            ("Show or hide the extensions panel", app.action_toggle_panel, "more room for names (p)"),
            ("Build changed", partial(app.action_build, False),
             "build, sign and verify what changed since the last build (b)"),
            ("Rebuild everything", partial(app.action_build, True),
             "build, sign and verify every extension and the UKI, reusing nothing (B)"),
            ("Boot check", app.action_boot_check,
             "boot the built UKI under Secure Boot in a VM with the extensions merged; stages as they pass (v)"),
            ("Reload spec", app.action_reload_spec, "re-read the spec file now"),
            ("Help", app.action_help, "keys and what the workbench does"),
            ("Quit", app.action_quit, "leave the workbench"),
        ]
        for name in app.own_theme_names:
            cmds.append((f"Theme: {name}", partial(app.set_theme, name), "switch theme (remembered)"))
        for ext in app.session.spec.extensions:
            cmds.append((f"Use extension {ext.name}", partial(app.pick_extension, ext.name),
                         "make it the extension that space marks into"))
        return cmds

    async def discover(self) -> Hits:
        for name, callback, help_text in self._commands():
            yield DiscoveryHit(name, callback, help=help_text)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for name, callback, help_text in self._commands():
            score = matcher.match(name)
            if score > 0:
                yield Hit(score, matcher.highlight(name), callback, help=help_text)
