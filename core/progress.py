"""Progress events and cooperative cancellation shared by every long operation.

Long operations take a :class:`Reporter` (``None`` means silent) and call it with
:class:`Progress` events; between units of work they call :meth:`Reporter.check`, which raises
:class:`~sysextant.core.errors.Cancelled` once the front end has asked to stop. The CLI, the
workbench and the tests drive the same code through this one seam.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

from .errors import Cancelled


@dataclass(frozen=True, slots=True)
class Progress:
    """``done`` of ``total`` units of ``unit`` for one task (``total`` 0 = unknown)."""

    task: str  # e.g. "firmware: pack", "uki: compress initrd"
    done: int
    total: int
    unit: str = "bytes"  # bytes | files | steps
    message: str = ""  # a log line worth showing, or ""
    #: what the event is, so no front end parses the message: ``progress`` (done of total),
    #: ``log`` (a line about ``task``), ``reused`` (``task``'s artefact is unchanged and reused),
    #: ``step`` (a step of the build as a whole: scan, plan, lock, clean; not an artefact)
    kind: str = "progress"


#: signals that asked this whole process to stop (set by the CLI's handlers, read by every
#: Reporter): a build then stops at its next cancel check, where every temp file is removed by the
#: code that made it, instead of unwinding from wherever a signal happened to land
_stop_signals: list[int] = []


def request_stop(signum: int) -> None:
    """Ask every running operation of this process to stop at its next cancel check."""
    _stop_signals.append(signum)


def stop_requested() -> int | None:
    """The first signal that asked the process to stop, or None."""
    return _stop_signals[0] if _stop_signals else None


def clear_stop() -> None:
    _stop_signals.clear()


class Reporter:
    """Forwards progress to a callback and carries the cancel flag."""

    def __init__(self, callback: Callable[[Progress], None] | None = None, *,
                 cancelled: Callable[[], bool] | None = None) -> None:
        """``cancelled`` is polled by :meth:`check` as well (e.g. a UI worker's cancel flag)."""
        self._callback = callback
        self._cancel = threading.Event()
        self._cancelled = cancelled

    def __call__(self, task: str, done: int, total: int, unit: str = "bytes", message: str = "") -> None:
        self.check()
        if self._callback is not None:
            self._callback(Progress(task, done, total, unit, message))

    def log(self, task: str, message: str, kind: str = "log") -> None:
        """A line for the build log, with no progress change (``kind``: see :class:`Progress`)."""
        if self._callback is not None:
            self._callback(Progress(task, 0, 0, "steps", message, kind))

    def cancel(self) -> None:
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return (self._cancel.is_set() or bool(_stop_signals)
                or (self._cancelled is not None and self._cancelled()))

    def check(self) -> None:
        """Raise Cancelled if the user (or a signal to the process) asked to stop."""
        if self.cancelled:
            raise Cancelled("cancelled by the user")
