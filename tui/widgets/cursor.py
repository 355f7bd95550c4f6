"""Moving a one-row cursor through a list of rows: shared by the tree list and the packages list.

A class using it keeps ``rows`` and ``cursor`` and defines ``_moved(old)``, which redraws the
rows that changed and tells the app.
"""

from __future__ import annotations


class CursorMoves:
    """``action_cursor``, ``action_page`` and ``action_jump`` for the lists' key bindings."""

    rows: list
    cursor: int

    def _moved(self, old: int | None = None) -> None:  # pragma: no cover - each list has its own
        raise NotImplementedError

    def action_cursor(self, step: int) -> None:
        if self.rows:
            old = self.cursor
            self.cursor = max(0, min(len(self.rows) - 1, self.cursor + step))
            self._moved(old)

    def action_page(self, step: int) -> None:
        self.action_cursor(step * max(1, self.size.height - 1))  # type: ignore[attr-defined]

    def action_jump(self, where: int) -> None:
        if self.rows:
            self.cursor = 0 if where == 0 else len(self.rows) - 1
            self._moved()
