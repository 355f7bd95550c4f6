"""The Forecaster: the estimate's lifecycle (quick, prepare, refine, calibrate) in one core place.

The workbench, the CLI's ``plan`` and the build all go through it; these tests drive it the way
they do, on a small demo project (its own spec: zstd 6), with groups small enough that there is
something to refine."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from sysextant.core.demo import create_demo
from sysextant.core.sizing.estimate import Estimate
from sysextant.core.sizing.forecaster import Forecaster
from sysextant.core.sizing.plan import plan_spec
from sysextant.core.spec.load import load_spec


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    return create_demo(tmp_path_factory.mktemp("forecaster") / "demo", scale=0.05)


@pytest.fixture
def project(demo: Path) -> Path:
    """The demo project without what earlier estimates cached (group sizes, calibration)."""
    from sysextant.core.sizing.estimate import CALIBRATION_FILE

    (load_spec(demo).output / CALIBRATION_FILE).unlink(missing_ok=True)
    return demo


@pytest.fixture
def small_groups(monkeypatch):
    """Groups of 2 MiB, so the small demo has several groups (some left to refine); the pass at
    zstd 3, so its zstd 6 is modelled (zstd up to 9 is otherwise its own pass: nothing to refine)."""
    from sysextant.core.sizing import estimate

    init = estimate.Estimator.__init__

    def smaller(self, *a, **kw):  # noqa: ANN001, ANN002, ANN003
        kw.setdefault("group_bytes", 2 << 20)
        kw.setdefault("fast_level", 3)
        init(self, *a, **kw)

    monkeypatch.setattr(estimate.Estimator, "__init__", smaller)


def events_of(forecaster_box: list) -> tuple[list[str], threading.Event]:
    seen: list[str] = []
    done = threading.Event()

    def on_change(f: Forecaster, what: str) -> None:
        seen.append(what)
        if what == "ready":
            seen.append(f"left {f.left}")
        if what in ("done", "failed"):
            done.set()

    forecaster_box.append(on_change)
    return seen, done


def test_background_lifecycle_prepares_then_refines_every_group(project: Path, small_groups) -> None:
    spec = load_spec(project)
    plan = plan_spec(spec)
    box: list = []
    seen, done = events_of(box)
    f = Forecaster(spec, plan, threads=1, on_change=box[0])
    assert f.estimator is None and f.phase == "waiting"
    f.start()
    assert done.wait(120), f"no end: {seen}"
    assert f.phase == "done" and f.error is None, f.error
    assert seen.index("ready") < seen.index("done")
    left = int(next(w for w in seen if w.startswith("left "))[5:])
    assert left > 0  # groups the samples did not cover: refined one by one, each one announced
    assert seen.count("refined") == left
    est = f.estimator
    assert est is f.prepared and all(g.target is not None for g in est.groups)
    # refined to the build's level everywhere: the same figure as a synchronous, fully refined run
    sync = Forecaster(spec, plan).run(refine=True)
    a, b = est.estimate(plan.initrd_after), sync.estimate(plan.initrd_after)
    assert isinstance(a, Estimate) and a.bytes == b.bytes


def test_pause_stops_refining_and_resume_finishes(project: Path, small_groups) -> None:
    spec = load_spec(project)
    plan = plan_spec(spec)
    box: list = []
    seen, done = events_of(box)
    f = Forecaster(spec, plan, threads=1, on_change=box[0])
    f.pause()  # a build started before the estimate was ready: preparing goes on, refining waits
    f.start()
    deadline = time.monotonic() + 120
    while f.prepared is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert f.prepared is not None
    time.sleep(0.5)
    assert not done.is_set() and f.phase == "refining" and f.left > 0
    assert "refined" not in seen
    f.resume()
    assert done.wait(120), seen
    assert f.phase == "done" and f.left == 0


def test_stop_is_immediate_and_silent(project: Path, small_groups) -> None:
    spec = load_spec(project)
    plan = plan_spec(spec)
    box: list = []
    seen, _done = events_of(box)
    f = Forecaster(spec, plan, threads=1, on_change=box[0])
    f.start()
    t0 = time.monotonic()
    f.stop()
    assert time.monotonic() - t0 < 0.1  # never waits on a compressor
    count = len(seen)
    time.sleep(1.0)
    assert len(seen) == count and f.phase == "stopped"
    f.start()  # a stopped forecaster stays stopped: the owner makes a new one
    assert not f.running


def test_inputs_decide_when_a_new_estimate_is_needed(project: Path) -> None:
    spec = load_spec(project)
    plan = plan_spec(spec)
    f = Forecaster(spec, plan)
    assert f.matches(spec, plan)
    text = project.read_text()
    other = project.with_name("level.yaml")
    other.write_text(text.replace("level: 6", "level: 5", 1))
    spec5 = load_spec(other)
    assert not f.matches(spec5, plan_spec(spec5, plan.index))
    # the marks do not matter: any subset of the base is estimated
    marked = other.with_name("marks.yaml")
    marked.write_text(text.replace("level: 6", "level: 6 ", 1))
    spec_m = load_spec(marked)
    assert f.matches(spec_m, plan_spec(spec_m, plan.index))


def test_a_failing_estimate_says_why(project: Path, tmp_path: Path) -> None:
    spec = load_spec(project)
    plan = plan_spec(spec)
    box: list = []
    seen, done = events_of(box)

    def broken_quick(spec, plan, reporter=None):  # noqa: ANN001, ANN202
        from sysextant.core.errors import UserError

        raise UserError("the sample could not be read: usr/lib/x: Permission denied")

    f = Forecaster(spec, plan, threads=1, on_change=box[0], quick=broken_quick)
    f.start()
    assert done.wait(30)
    assert f.phase == "failed" and "Permission denied" in f.error and f.estimator is None


def test_quick_estimate_comes_first_then_the_prepared_one(project: Path) -> None:
    spec = load_spec(project)
    plan = plan_spec(spec)
    box: list = []
    seen, done = events_of(box)
    gate = threading.Event()

    class Rough:
        def estimate(self, kept):  # noqa: ANN001, ANN202
            return Estimate(1, 0, 2, "quick sample", False, 1)

    def quick(spec, plan, reporter=None):  # noqa: ANN001, ANN202
        return Rough()

    def on_change(f_: Forecaster, what: str) -> None:
        box[0](f_, what)
        if what == "quick":
            assert isinstance(f.estimator, Rough)
            gate.set()

    f = Forecaster(spec, plan, threads=1, on_change=on_change, quick=quick, refine=False)
    f.start()
    assert done.wait(120), seen
    assert gate.is_set() and seen.index("quick") < seen.index("ready")
    assert f.estimator is f.prepared and not isinstance(f.estimator, Rough)


def test_a_glance_then_a_bigger_sample_each_on_show_before_the_prepared_one(project: Path) -> None:
    """The workbench's sampler hands a glance, then a bigger sample: each is the estimator at
    hand as soon as it is taken, in that order, before the prepared estimator."""
    from sysextant.core.sizing.forecaster import quick_sample
    from sysextant.core.sizing.quick import QuickEstimator

    spec = load_spec(project)
    plan = plan_spec(spec)
    box: list = []
    seen, done = events_of(box)
    shown: list = []

    def on_change(f_: Forecaster, what: str) -> None:
        box[0](f_, what)
        if what == "quick":
            shown.append(f_.estimator)

    f = Forecaster(spec, plan, threads=1, on_change=on_change, quick=quick_sample, refine=False)
    f.start()
    assert done.wait(300), seen
    assert seen.count("quick") == 2 and seen.index("quick") < seen.index("ready"), seen
    glance, sample = shown
    assert isinstance(glance, QuickEstimator) and isinstance(sample, QuickEstimator)
    assert glance.seconds < sample.seconds and sample.strata == glance.strata  # classified once
    assert len(sample.units) >= len(glance.units)
    base = plan.initrd_base
    for est in shown:  # both honest: the prepared estimate lies in each band
        e, best = est.estimate(base), f.prepared.estimate(base)
        assert e.low <= best.bytes <= e.high, (e, best)


def test_a_long_glance_is_the_only_quick_sample(project: Path) -> None:
    """When the scan was quick the workbench gives the glance most of the first figure's due
    time: one sample then, no second one before the prepared estimator."""
    from sysextant.core.sizing.forecaster import QUICK_SECONDS, quick_sample

    spec = load_spec(project)
    plan = plan_spec(spec)
    samples = list(quick_sample(spec, plan, glance=QUICK_SECONDS * 0.75))
    assert [s.seconds for s in samples] == [QUICK_SECONDS * 0.75]
    assert [s.seconds for s in quick_sample(spec, plan, glance=99)] == [QUICK_SECONDS]  # never longer
