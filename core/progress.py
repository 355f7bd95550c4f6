"""Progress events and cooperative cancellation shared by every long operation.

Long operations take a :class:`Reporter` (``None`` means silent) and call it with
:class:`Progress` events; between units of work they call :meth:`Reporter.check`, which raises
:class:`~sysextant.core.errors.Cancelled` once the front end has asked to stop. The CLI, the
workbench and the tests drive the same code through this one seam.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, replace

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
    #: ``log`` (a line about ``task``), ``reused`` (the artefact is unchanged since the last
    #: build and reused as it is), ``replaced`` (the artefact's output file, ``path``, was replaced
    #: whole by this build: written then renamed into place), ``step`` (a step of the build as a
    #: whole: scan, plan, lock, clean; no artefact)
    kind: str = "progress"
    #: the artefact the event belongs to (an extension's name, ``uki``, ``verify``), set by the
    #: engine (:meth:`Reporter.for_artefact`), and the stage within it (``pack``, ``verity``,
    #: ``initrd: compress``; empty on a line about the artefact as a whole); both empty for an
    #: event of the build as a whole. ``task`` stays the text a plain log line shows.
    artefact: str = ""
    stage: str = ""
    #: the file a ``replaced`` event is about
    path: str = ""


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

    def log(self, task: str, message: str, kind: str = "log", *, path: str = "") -> None:
        """A line for the build log, with no progress change (``kind``, ``path``: see
        :class:`Progress`)."""
        if self._callback is not None:
            self._callback(Progress(task, 0, 0, "steps", message, kind, path=path))

    def for_artefact(self, name: str) -> Reporter:
        """A reporter for the work on one artefact: its events carry ``artefact=name`` and their
        ``stage``, so front ends need not read task names. It shares this reporter's callback and
        cancel flag.

        The stage is the work's own name within the artefact, as the engine named the task: the
        task less the ``name: `` prefix (``firmware: verity`` -> ``verity``), a task of another
        name whole (the UKI's ``initrd: compress``), and for a task named after the artefact
        itself the artefact's name on progress (verification's one stage) and empty on a line
        about the artefact as a whole. Events already stamped (a reporter for an artefact inside
        another's work) keep their own artefact and stage.
        """
        parent = self
        prefix = f"{name}: "

        def stamp(ev: Progress) -> None:
            if parent._callback is None:
                return
            if ev.artefact:
                parent._callback(ev)
                return
            if ev.task.startswith(prefix):
                stage = ev.task[len(prefix):]
            elif ev.task == name:
                stage = name if ev.kind == "progress" else ""
            else:
                stage = ev.task
            parent._callback(replace(ev, artefact=name, stage=stage))

        return Reporter(stamp, cancelled=lambda: parent.cancelled)

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
