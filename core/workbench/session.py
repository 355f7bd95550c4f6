"""The workbench session: one spec, its scanned tree and plan, and the edits a user makes.

This is the engine half of ``sysextant SPEC``; the Textual app in :mod:`sysextant.tui` is a
view over it, and the tests drive it without a terminal. A session holds the spec file's text
and model, the tree index and the current :class:`~sysextant.core.sizing.plan.Plan`. Every user action
(mark, unmark, add/rename/remove an extension, undo) is an operation *as data*
(:mod:`.operations`: checked, refused with one clear reason, or spelt into the spec text with
comments and key order kept); :meth:`Session.apply` re-reads the text with the spec loader,
re-plans and saves it atomically, and pushes the operation's inverse on the undo stack. What
the screens show comes from :mod:`.figures`.

This module holds the state and its life: opening, scanning, applying, undo, saving, and taking
the file back after an outside edit.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..sizing.forecast import Figures, UkiLayout
from ..sizing.forecaster import Forecaster, quick_sample
from ..sizing.plan import Plan, make_plan
from ..spec.model import Spec
from ..tree.index import TreeIndex, scan
from ..tree.selection import IntervalSet, Sums
from .figures import PackageRow
from .operations import Operation, Outcome, SessionEdits, edited, refuse


@dataclass
class Reload:
    """What re-reading the spec from disk found."""

    changed: bool  # the text differs from what the session last wrote or read
    ok: bool  # the new text loaded (else ``problems`` says why and the last good spec is kept)
    rescan: bool = False  # os.root changed: the tree must be scanned again
    problems: list[Any] = field(default_factory=list)  # spec.Problem items (file, line, column, message, hint)


class Session(SessionEdits):
    """A spec being worked on. Create with :meth:`open`; scan or attach an index before marking.
    Its edits come from :class:`~.operations.SessionEdits`, its figures from
    :class:`~.figures.SessionFigures`."""

    def __init__(self, path: Path, text: str, spec: Spec) -> None:
        self.path = Path(path)
        self.text = text
        self.spec = spec
        self.index: TreeIndex | None = None
        self.sums: Sums | None = None
        self.plan: Plan | None = None
        #: the compressed estimate's lifecycle for the current plan's base (see :meth:`forecast`)
        self.forecaster: Forecaster | None = None
        self.undo_stack: list[tuple[Operation, str]] = []  # (inverse, what it undoes)
        self.pending_text: str | None = None  # a save that failed; retried on the next change
        self.save_error: str | None = None
        #: problems of the file on disk when it failed to load: edits are refused until it is fixed
        self.disk_problems: list[Any] = []
        self._layout: UkiLayout | None = None  # see layout()
        self._fig_cache: tuple[Plan, Any, Figures] | None = None  # (plan, estimator, figures)
        #: compressed figure per entry for (initrd base, estimator): the tree list asks per row
        self._squeezed: tuple[IntervalSet, Any, dict[int, int]] | None = None
        #: the packages view's marks-independent figures: (key, rows by database key)
        self._pkg_rows: tuple[tuple, dict[str, PackageRow]] | None = None

    # -- loading ------------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> Session:
        """Read the spec at ``path``; raises ``SpecError`` (a UserError listing problems)."""
        from ..spec.load import loads_spec, read_spec_text

        path = Path(path)
        text = read_spec_text(path)  # never waits on a FIFO put in the spec's place
        return cls(path, text, loads_spec(text, path))

    @property
    def root(self) -> Path:
        return self.spec.os.root

    @property
    def ready(self) -> bool:
        """The tree is fully scanned and planned: marks can be made."""
        return self.plan is not None

    def scan(self, *, progress: Callable[[TreeIndex], None] | None = None, every: int = 5000,
             check: Callable[[], None] | None = None) -> TreeIndex:
        """Scan the spec's OS tree and plan it (slow: a front end runs :meth:`read_tree` in a
        worker and :meth:`attach` in its own thread instead)."""
        index, sums = self.read_tree(progress=progress, every=every, check=check)
        self.attach(index, sums)
        return index

    def read_tree(self, root: Path | None = None, *, progress: Callable[[TreeIndex], None] | None = None,
                  every: int = 5000, check: Callable[[], None] | None = None) -> tuple[TreeIndex, Sums]:
        """The index of the spec's OS tree (or ``root``) and its sums, without touching the
        session: safe in a worker thread while the session is used elsewhere. ``progress`` gets
        the growing index every ``every`` entries; ``check`` may raise to abandon the scan."""
        index = scan(self.spec.os.root if root is None else root, progress=progress, every=every, check=check)
        return index, Sums(index)

    def attach(self, index: TreeIndex, sums: Sums | None = None) -> None:
        """Use a (complete) index of the spec's tree and plan the spec against it."""
        self.index = index
        self.sums = sums if sums is not None else Sums(index)
        self.drop_forecast()
        self.plan = make_plan(self.spec, index, self.sums)

    # -- the compressed estimate ----------------------------------------------------------------
    @property
    def estimator(self) -> Any:
        """The best estimator at hand (a quick sample, then the prepared one), or None."""
        return self.forecaster.estimator if self.forecaster is not None else None

    def forecast(self, on_change: Callable[[Forecaster, str], None] | None = None, *, threads: int | None = 1,
                 quick: Callable[..., Any] | None = quick_sample, glance: float | None = None) -> Forecaster | None:
        """Start the compressed estimate of the current plan in the background, or keep the one
        running when it still fits the spec (the marks never matter, the initrd's base and the
        compressor do). ``on_change`` is called from the estimate's thread. ``threads``: one
        compressor worker by default, the other core stays with the user. ``glance``: seconds
        for the quick sampler's first figure (:func:`~..sizing.forecaster.quick_sample`)."""
        plan = self.plan
        if plan is None:
            return None
        f = self.forecaster
        if f is not None and f.matches(self.spec, plan) and f.phase != "stopped":
            f.on_change = on_change or f.on_change
            return f
        self.drop_forecast()
        if glance is not None and quick is not None:
            quick = partial(quick, glance=glance)
        f = self.forecaster = Forecaster(self.spec, plan, threads=threads, on_change=on_change, quick=quick)
        f.start()
        return f

    def drop_forecast(self) -> None:
        """Abandon the estimate (its tree or parameters changed); never waits on a compressor."""
        if self.forecaster is not None:
            self.forecaster.stop()
            self.forecaster = None
        self.estimator_changed()

    # -- applying, undo, saving ------------------------------------------------------------------
    def apply(self, op: Operation, *, record: bool = True) -> Outcome:
        """Apply ``op`` to the spec (checked by the loader), re-plan, save; push its inverse."""
        from ..spec.load import SpecError, loads_spec

        if self.disk_problems:
            p = self.disk_problems[0]
            where = f"line {p.line}: " if getattr(p, "line", 0) else ""
            return refuse(f"the spec file has errors ({where}{p.message}); fix them first, so that saving "
                          "this change does not overwrite your edit")
        before = self.figures()
        try:
            text, inverse = edited(op, self.text, self.path, self.spec)
            spec = loads_spec(text, self.path)
        except SpecError as exc:
            first = exc.problems[0] if exc.problems else None
            msg = first.message if first is not None else str(exc)
            return refuse(f"the spec would not be valid: {msg}")
        except UserError as exc:
            return refuse(str(exc))
        self._set_spec(text, spec)
        self.save()
        if record:
            self.undo_stack.append((inverse, op.label))
        after = self.figures()
        msg = op.label or "done"
        if self.save_error:
            msg += f" — NOT SAVED: {self.save_error}"
        return Outcome(True, msg, before, after)

    def undo(self) -> Outcome:
        if not self.undo_stack:
            return refuse("nothing to undo")
        inverse, label = self.undo_stack.pop()
        result = self.apply(inverse, record=False)
        if not result.ok:
            return refuse(f"cannot undo {label}: {result.message}")
        return replace(result, message=f"undid: {label}")

    def _set_spec(self, text: str, spec: Spec) -> None:
        old = self.spec
        self.text, self.spec = text, spec
        if (spec.uki.stub, spec.os.kernel, spec.uki.cmdline, spec.uki.uname, spec.uki.os_release,
                spec.signing) != (old.uki.stub, old.os.kernel, old.uki.cmdline, old.uki.uname,
                                  old.uki.os_release, old.signing):
            self._layout = None
        if self.index is not None and self.sums is not None:
            self.plan = make_plan(spec, self.index, self.sums)
        if self.forecaster is not None and (self.plan is None or not self.forecaster.matches(spec, self.plan)):
            self.drop_forecast()  # its base or parameters changed: prepare again

    def save(self) -> bool:
        """Write the current text atomically; on failure keep it pending and say why."""
        from ..spec.edit import save_text_atomic

        try:
            save_text_atomic(self.path, self.text)
        except (OSError, UserError) as exc:
            self.pending_text = self.text
            self.save_error = str(exc) if isinstance(exc, UserError) else (exc.strerror or str(exc))
            return False
        self.pending_text = None
        self.save_error = None
        return True

    @property
    def unsaved(self) -> bool:
        return self.pending_text is not None

    def build_refusal(self) -> str | None:
        """Why a build of this session's spec cannot start now, or None: the build reads the
        spec file, so the file must be valid and hold the last change, and the tree scanned."""
        if self.disk_problems:
            n = len(self.disk_problems)
            return (f"not building: {self.path} on disk has {n} problem{'' if n == 1 else 's'}; "
                    "fix the file and save it first")
        if self.unsaved:
            return f"not building: the last change could not be saved ({self.save_error}); the build reads the spec file"
        if self.plan is None:
            return "not building yet: the scan of the OS tree is not finished"
        return None

    # -- outside edits ------------------------------------------------------------------------
    def reload(self, text: str | None = None) -> Reload:
        """Take the spec file's current text (read from disk unless given).

        Our own saves come back as change events with identical text: those are ignored. A text
        that fails to load keeps the last good spec and returns the problems.
        """
        from ..spec.load import Problem, SpecError, loads_spec, read_spec_text

        if text is None:
            if not self.path.exists() and not self.path.is_symlink():
                return Reload(True, False, problems=[Problem(self.path, 0, 0, "the spec file was removed",
                                                             "the workbench keeps the last good spec")])
            try:
                text = read_spec_text(self.path)  # a FIFO swapped in is refused, not waited on
            except SpecError as exc:
                return Reload(True, False, problems=list(exc.problems))
        if text == self.text:
            self.disk_problems = []
            return Reload(False, True)
        try:
            spec = loads_spec(text, self.path)
        except SpecError as exc:
            self.disk_problems = list(exc.problems)
            return Reload(True, False, problems=self.disk_problems)
        rescan = spec.os.root != self.spec.os.root
        if rescan:
            self.text, self.spec = text, spec
            self.index = self.sums = self.plan = None
            self.drop_forecast()
            self._layout = None
        else:
            self._set_spec(text, spec)
        self.pending_text = None
        self.save_error = None
        self.disk_problems = []
        return Reload(True, True, rescan=rescan)
