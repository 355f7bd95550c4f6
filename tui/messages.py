"""The workbench's own messages: what its workers (the scan, the search, the spec watcher) and
the engine's forecaster thread post to the app."""

from __future__ import annotations

from textual.message import Message

from sysextant.core.tree.index import TreeIndex
from sysextant.core.tree.selection import Sums


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


class ForecastChanged(Message):
    """The compressed estimate moved on (a quick sample, ready, a group refined, failed):
    posted from the estimate's own thread (core.sizing.forecaster)."""

    def __init__(self, forecaster: object, what: str) -> None:
        super().__init__()
        self.forecaster = forecaster
        self.what = what


class SearchDone(Message):
    """A search over the whole tree finished (see :meth:`WorkbenchApp.run_search`)."""

    def __init__(self, index: TreeIndex, query: str, pattern: str, found: list[int], seconds: float) -> None:
        super().__init__()
        self.index = index
        self.query = query
        self.pattern = pattern
        self.found = found
        self.seconds = seconds


class SpecChanged(Message):
    """The spec file changed on disk (posted by the watcher)."""
