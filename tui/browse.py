"""Browsing the tree as ncdu, gdu and dua users expect: sort keys that reverse when pressed
again, folders first, the share column, apparent size or disk usage, the size column's modes,
the folder filter and the search over the whole tree. Mixed into :class:`~.app.WorkbenchApp`
(which holds the tree list, the session and the status line these use)."""

from __future__ import annotations

import time

from textual import work
from textual.actions import SkipAction
from textual.widgets import Input

from sysextant.core.tree.index import TreeIndex
from sysextant.core.tree.selection import match

from .messages import SearchDone
from .widgets.item import plural


class BrowseActions:
    """The keys that change how the tree is shown (they never change the spec)."""

    SORT_WORDS = {"size": ("size", "s", "biggest first", "smallest first"),
                  "name": ("name", "n", "A to Z", "Z to A"),
                  "count": ("item count", "C", "most items first", "fewest items first")}

    def action_sort(self, key: str) -> None:
        """s, n, C: sort by size, name, item count; the same key again reverses the order."""
        tree = self.tree
        if tree.sort == key:
            tree.reverse = not tree.reverse
        else:
            tree.sort, tree.reverse = key, False
        tree.reload_rows()
        self.update_crumb()
        what, k, down, up = self.SORT_WORDS[key]
        self.set_status(f"sorted by {what}, {up if tree.reverse else down} · {k} again reverses", "info")

    def action_dirs_first(self) -> None:
        """t: folders before files (ncdu's t)."""
        tree = self.tree
        tree.dirs_first = not tree.dirs_first
        tree.reload_rows()
        self.update_crumb()
        self.set_status("folders first" if tree.dirs_first else "folders and files sorted together", "info")

    def action_cycle_share(self) -> None:
        """g: the share column shows the percent and the bar, the percent, the bar, or neither (ncdu's g)."""
        from .widgets.tree_list import SHARE_MODES

        tree = self.tree
        tree.share = SHARE_MODES[(SHARE_MODES.index(tree.share) + 1) % len(SHARE_MODES)]
        tree.reload_rows()
        self.update_crumb()
        words = {"both": "percent and bar", "percent": "percent", "bar": "bar", "none": "hidden"}
        self.set_status(f"share of the initrd: {words[tree.share]}", "info")

    def action_toggle_apparent(self) -> None:
        """a: apparent size or disk usage (ncdu's and gdu's a)."""
        tree = self.tree
        tree.size_mode = tree.bytes_mode = "disk" if tree.size_mode == "apparent" else "apparent"
        tree.reload_rows()
        self.update_crumb()
        self.set_status("size column: disk usage (allocated blocks)" if tree.size_mode == "disk"
                        else "size column: apparent size", "info")

    def action_toggle_size(self) -> None:
        tree = self.tree
        modes = [tree.bytes_mode, "cpio"] + (["compressed"] if self.session.estimator is not None else [])
        current = tree.size_mode if tree.size_mode in modes else tree.bytes_mode
        tree.size_mode = modes[(modes.index(current) + 1) % len(modes)]
        if self.tree.size_mode == "cpio" and self.session.estimator is None:
            self.set_status("size column: initrd (newc) bytes; the compressed column comes once the estimate is ready")
        self.tree.reload_rows()
        self.update_crumb()

    def action_filter(self) -> None:
        box = self.base.query_one("#filter", Input)
        box.display = True
        box.value = self.tree.name_filter
        box.focus()

    def action_search(self) -> None:
        """/: a glob over the whole tree (dua's /); the results replace the folder's rows."""
        if not self._on_main_screen():
            raise SkipAction()
        box = self.base.query_one("#search", Input)
        box.display = True
        box.value = self.tree.search_query
        box.focus()

    @work(thread=True, exclusive=True, exit_on_error=False, group="search")
    def run_search(self, index: TreeIndex, query: str, pattern: str) -> None:
        t0 = time.perf_counter()
        found = match(index, pattern)
        self.post_message(SearchDone(index, query, pattern, found, time.perf_counter() - t0))

    def on_search_done(self, message: SearchDone) -> None:
        if message.index is not self.session.index or message.index is not self.tree.index:
            return  # the tree was scanned again meanwhile
        if not message.found:
            self.set_status(f"nothing in the tree matches {message.pattern}", "refused")
            return
        tree = self.tree
        tree.show_results(message.pattern, message.found)
        tree.search_query = message.query
        self.update_crumb()
        self.set_status(f"{plural(len(message.found), 'match', 'matches')} for {message.pattern}: space marks, "
                        "enter jumps to one, h or esc goes back", "info")
