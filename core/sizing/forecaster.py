"""The compressed estimate's lifecycle, for the CLI, the build and the workbench alike.

An :class:`~.estimate.Estimator` must be prepared (a pass over the whole initrd at a fast level,
then samples at the build's level) before it says anything, and it keeps learning afterwards:
each group compressed at the build's own level narrows the band (``deepen``), and each build
calibrates it. :class:`Forecaster` owns that sequence and the thread it runs in:

1. **quick**: when a quick sampler is given (the workbench gives :func:`quick_sample`, over
   :func:`.quick.quick_estimator`), a first estimate with a wide but honest band within a
   second or two, then a bigger sample's, narrower;
2. **prepare**: the estimator's fast pass and samples;
3. **refine**: the remaining groups at the build's level, one at a time, each one published;
4. **calibrate**: a build's real compressed size, handed in by the build.

The workbench starts it in the background, pauses it while a build or a boot check needs the
cores and resumes it after; the CLI's ``plan`` runs the same phases in the caller's thread
(:meth:`Forecaster.run`). Nothing here knows about a UI: changes are announced through the
``on_change`` callback, from the forecaster's own thread.

A libzstd call at level 19 cannot be interrupted, so stopping never waits: the thread is a
daemon, every phase polls a stop flag between (and inside) groups, and whatever an abandoned
phase finishes afterwards is dropped.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from ..errors import Cancelled, UserError
from ..formats.initrd import initrd_extra
from ..progress import Progress, Reporter
from ..spec.model import Spec
from .forecast import prepared_estimator
from .plan import Plan
from .quick import quick_estimator

#: phases, in order; ``failed`` and ``stopped`` end it
PHASES = ("waiting", "quick", "preparing", "refining", "done", "failed", "stopped")


def estimate_inputs(spec: Spec, plan: Plan) -> tuple:
    """What an estimator depends on: when this changes, a new one must be prepared. The
    extensions' marks are not part of it (any subset of the base is estimated)."""
    return (id(plan.index), tuple(plan.initrd_base), spec.uki.compression, spec.uki.level, spec.uki.zstd_mode,
            spec.os.exclude, spec.uki.init)


class Forecaster:
    """Prepares, refines and keeps the compressed estimate of one spec's initrd base.

    ``estimator`` is the best estimator at hand (None before the first one): the quick sampler,
    then the prepared :class:`~.estimate.Estimator`, refined in place. ``threads`` caps the
    compressor workers (the workbench uses one, to leave a core to the user). ``on_change`` is
    called with the forecaster and a short reason (``"progress"``, ``"quick"``, ``"ready"``, ``"refined"``,
    ``"done"``, ``"failed"``) from the forecaster's thread; it must be cheap and thread-safe.
    """

    def __init__(self, spec: Spec, plan: Plan, *, threads: int | None = None,
                 on_change: Callable[[Forecaster, str], None] | None = None,
                 quick: Callable[..., Any] | None = None, refine: bool = True) -> None:
        self.spec = spec
        self.plan = plan
        self.inputs = estimate_inputs(spec, plan)
        self.threads = threads
        self.on_change = on_change
        self.quick = quick
        self.refine_enabled = refine
        self.phase = "waiting"
        self.note = ""  # what it is doing now, for a status line ("" when idle)
        self.error: str | None = None  # why there is no estimate (a UserError's text)
        self.left = 0  # groups still to compress at the build's level
        self.prepared: Any = None  # the prepared Estimator
        self._quick: Any = None  # the quick sampler's estimator, until the prepared one is ready
        self._lock = threading.Lock()
        self._generation = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._paused = False

    # -- what callers read -------------------------------------------------------------------
    @property
    def estimator(self) -> Any:
        """The prepared estimator when there is one, else the quick one, else None."""
        return self.prepared if self.prepared is not None else self._quick

    def matches(self, spec: Spec, plan: Plan) -> bool:
        """This forecaster still serves ``spec`` and ``plan`` (same base and compressor)."""
        return estimate_inputs(spec, plan) == self.inputs

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._stop.is_set()

    # -- background lifecycle ----------------------------------------------------------------
    def start(self) -> None:
        """Run the phases still to do in a background (daemon) thread; no-op while one runs."""
        with self._lock:
            if self.running or self.phase in ("failed", "stopped", "done"):
                return
            self._generation += 1
            self._stop = threading.Event()
            gen, stop = self._generation, self._stop
            self._thread = threading.Thread(target=self._run_background, args=(gen, stop),
                                            name="sysextant-forecast", daemon=True)
            self._thread.start()

    def pause(self) -> None:
        """Stop refining now (a build or a VM wants the cores); :meth:`resume` goes on. Never
        waits. A first preparation goes on: the build would need it, and prepares its own
        estimator only when there is none yet."""
        with self._lock:
            self._paused = True
            if self.phase == "refining":
                self._stop.set()
                self._generation += 1
                self.note = ""

    def resume(self) -> None:
        """Go on after :meth:`pause` (or after a build calibrated the estimator)."""
        self._paused = False
        if self.phase == "done" and self.prepared is not None and self._todo():
            self.phase = "refining"  # an adopted estimator brought groups back to refine
        self.start()

    def stop(self) -> None:
        """Abandon it for good (its spec or tree changed); callbacks stop at once."""
        with self._lock:
            self._stop.set()
            self._generation += 1
            self.phase = "stopped"
        self.note = ""

    def adopt(self, estimator: Any) -> None:
        """Take over an estimator a build prepared (and calibrated) for the same inputs."""
        if estimator is None or estimator is self.prepared:
            return
        with self._lock:
            self.prepared = estimator
            self._quick = None
            self.error = None
            self.phase = "refining" if self._todo() else "done"
            self.left = len(self._todo())
        self._announce("ready", self._generation)

    # -- synchronous (CLI, build) ------------------------------------------------------------
    def run(self, reporter: Reporter | None = None, *, refine: bool = False) -> Any:
        """Prepare in the caller's thread (and compress every group at the build's level when
        ``refine``); returns the prepared estimator. Raises UserError or Cancelled."""
        if self.prepared is None:
            est = prepared_estimator(self.spec, self.plan, reporter, threads=self.threads)
            est.reporter = None
            self.prepared = est
            self._quick = None
        if refine and self._todo():
            self.prepared.reporter = reporter
            try:
                self.prepared.deepen(task="estimate: refine")
            finally:
                self.prepared.reporter = None
        self.left = len(self._todo())
        self.phase = "refining" if self.left else "done"
        return self.prepared

    # -- the thread ----------------------------------------------------------------------------
    def _todo(self) -> list[int]:
        est = self.prepared
        if est is None or not getattr(est, "prepared", False):
            return []
        return [g for g, grp in enumerate(est.groups) if grp.target is None]

    def _alive(self, gen: int) -> bool:
        return gen == self._generation and not self._stop.is_set()

    def _announce(self, what: str, gen: int) -> None:
        if gen == self._generation and self.on_change is not None:
            self.on_change(self, what)

    def _reporter(self, gen: int, stop: threading.Event) -> Reporter:
        last = [0.0]

        def report(ev: Progress) -> None:
            now = time.monotonic()
            if ev.total and now - last[0] > 0.25 and self._alive(gen):
                last[0] = now
                self.note = f"{ev.task} {ev.done * 100 // ev.total}%"
                self._announce("progress", gen)

        return Reporter(report, cancelled=stop.is_set)

    def _run_background(self, gen: int, stop: threading.Event) -> None:
        try:
            self._phases(gen, stop)
        except Cancelled:
            pass
        except UserError as exc:
            if self._alive(gen):
                self.phase, self.error, self.note = "failed", str(exc), ""
                self._announce("failed", gen)
        except Exception as exc:  # noqa: BLE001 - a bug must not pass silently, nor kill the UI
            if self._alive(gen):
                self.phase, self.error, self.note = "failed", f"internal error: {exc!r}", ""
                self._announce("failed", gen)

    def _phases(self, gen: int, stop: threading.Event) -> None:
        spec, plan = self.spec, self.plan
        if self.prepared is None and self._quick is None and self.quick is not None \
                and spec.uki.compression != "none":
            self.phase = "quick"
            got = self.quick(spec, plan, reporter=self._reporter(gen, stop))
            # a sampler may hand several, each from a bigger sample (a glance first)
            for est in got if isinstance(got, Iterator) else (got,):
                if not self._alive(gen):
                    return
                self._quick = est
                self.note = ""
                self._announce("quick", gen)
        if self.prepared is None:
            self.phase = "preparing"
            est = prepared_estimator(spec, plan, self._reporter(gen, stop), threads=self.threads)
            if not self._alive(gen):
                return
            est.reporter = None  # estimates run on the caller's thread: no progress from them
            with self._lock:
                self.prepared, self._quick = est, None
            self.left = len(self._todo())
            self.note = ""
            self.phase = "refining" if self.left else "done"
            self._announce("ready", gen)
        est = self.prepared
        todo = self._todo() if self.refine_enabled else []
        self.phase = "refining" if todo else "done"
        for k, g in enumerate(todo):
            if not self._alive(gen) or self._paused:
                return
            if est.groups[g].target is not None:
                continue
            est.reporter = Reporter(cancelled=stop.is_set)
            try:
                est.deepen([g], task="estimate: refine")
            finally:
                est.reporter = None
            if not self._alive(gen) or self._paused:
                return
            self.left = len(todo) - k - 1
            self.note = f"refining the estimate: {self.left} group{'s' if self.left != 1 else ''} to go" if self.left else ""
            self._announce("refined", gen)
        if self._alive(gen):
            self.phase, self.note, self.left = "done", "", 0
            self._announce("done", gen)


#: seconds of the first, small quick sample (a glance) at the least, then of the quick sample that
#: follows it
GLANCE_SECONDS = 1.0
QUICK_SECONDS = 4.0


def quick_sample(spec: Spec, plan: Plan, reporter: Reporter | None = None, *,
                 glance: float = GLANCE_SECONDS) -> Iterator[Any]:
    """The first estimates of the plan's initrd: stratified samples at the build's own level
    (:mod:`.quick`), each with its band; both cores, the user is still reading. A glance of
    ``glance`` seconds first (:data:`GLANCE_SECONDS` at the least, :data:`QUICK_SECONDS` at most:
    the workbench gives what is left of its first figure's due time, on a 1,000,000-entry tree
    the scan alone takes 2-4 s of it), then, after a short glance, a sample of
    :data:`QUICK_SECONDS` that narrows the band (about ±40% to ±16% on that tree) while the full
    estimator is still to come."""
    glance = min(max(glance, GLANCE_SECONDS), QUICK_SECONDS)
    args = dict(compression=spec.uki.compression, level=spec.uki.level,
                extra=initrd_extra(spec, plan.index, plan.initrd_base), reporter=reporter)
    first = quick_estimator(plan.index, plan.initrd_base, seconds=glance, **args)
    yield first
    if glance < QUICK_SECONDS / 2:
        yield quick_estimator(plan.index, plan.initrd_base, seconds=QUICK_SECONDS, previous=first, **args)
