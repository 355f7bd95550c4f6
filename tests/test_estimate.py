"""The compressed-initrd estimate against real builds: error, band, speed, cache, UKI size."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from sysextant.core.demo import generate_tree
from sysextant.core.formats.initrd import write_initrd
from sysextant.core.sizing.estimate import CALIBRATION_FILE, Estimator
from sysextant.core.spec.model import INITRD_SKIP_TOP
from sysextant.core.tree.index import scan
from sysextant.core.tree.selection import IntervalSet, subtree_set
from sysextant.core.units import MiB

KV = "usr/lib/modules/6.6.60-kairos-demo/kernel"


def selections(index) -> tuple[IntervalSet, dict[str, IntervalSet]]:
    skip = [c for c in index.children(0) if index.names[c] in INITRD_SKIP_TOP]
    base = IntervalSet([(1, len(index))]).difference(subtree_set(index, skip))
    moves = {
        "firmware": ["usr/lib/firmware"],
        "docs+python": ["usr/share", "usr/lib/python3.11"],
        "drivers": [f"{KV}/drivers/gpu", f"{KV}/drivers/net/wireless", f"{KV}/sound"],
    }
    out = {"all": base}
    for name, paths in moves.items():
        out[name] = base.difference(subtree_set(index, [index.lookup(p) for p in paths]))
    return base, out


@pytest.fixture(scope="module")
def mid_tree(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("estimate") / "rootfs"
    generate_tree(root, scale=0.3)
    return root


@pytest.fixture(scope="module")
def small_tree(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("estimate-small") / "rootfs"
    generate_tree(root, scale=0.05)
    return root


def test_fast_level_target_is_within_half_a_percent(mid_tree: Path, tmp_path: Path) -> None:
    index = scan(mid_tree)
    base, sels = selections(index)
    est = Estimator(index, base, compression="zstd", level=3, cache_dir=tmp_path, group_bytes=16 * MiB)
    est.prepare()
    assert len(est.groups) >= 6
    for name, sel in sels.items():
        e = est.estimate(sel)
        actual = write_initrd(index, sel, tmp_path / name, compression="zstd", level=3).compressed_bytes
        assert abs(e.bytes - actual) / actual < 0.005, (name, e, actual)
        assert e.low <= actual <= e.high, (name, e, actual)
        assert not e.exact and "estimate" in e.describe()


def test_warm_estimate_is_fast_and_refine_is_exact_for_cut_groups(mid_tree: Path) -> None:
    index = scan(mid_tree)
    base, sels = selections(index)
    est = Estimator(index, base, compression="zstd", level=3, cache_dir=None, group_bytes=16 * MiB)
    est.prepare()
    third = sels["docs+python"]
    est.estimate(third)
    t = time.perf_counter()
    for _ in range(10):
        est.estimate(third)
        est.estimate(base)
    assert (time.perf_counter() - t) / 20 < 0.1  # the benchmark measures the real figure
    # cutting through a folder: the refined estimate uses the exact fast size of the kept part
    cut = base.difference(subtree_set(index, [index.lookup("usr/lib/firmware/iwlwifi")]))
    before = est.estimate(cut)
    assert "prorated" in before.method
    assert est.refine(cut) >= 1
    after = est.estimate(cut)
    assert "prorated" not in after.method and after.error <= before.error


@pytest.mark.slow
def test_level_19_within_2_percent_after_calibration_and_in_band_before(small_tree: Path, tmp_path: Path) -> None:
    index = scan(small_tree)
    base, sels = selections(index)
    cache = tmp_path / "build"
    est = Estimator(index, base, compression="zstd", level=19, cache_dir=cache)
    est.prepare()
    names = ("all", "drivers", "firmware")
    actual = {name: write_initrd(index, sels[name], tmp_path / name, compression="zstd", level=19).compressed_bytes
              for name in names}
    for name in names:
        e = est.estimate(sels[name])
        assert e.low <= actual[name] <= e.high, (name, e, actual[name])
    est.calibrate(base, actual["all"])
    assert abs(est.estimate(base).bytes - actual["all"]) <= 1
    for name in names:
        e = est.estimate(sels[name])
        assert e.low <= actual[name] <= e.high, (name, e, actual[name])
        # on this 27 MB tree every selection cuts the one group. The demo's text is drawn from
        # one 4 MB pool, so zstd 19's 8 MB window nearly dedups it and moving text or the
        # random blobs between it shifts the rest by ~3% (firmware, docs): inside the band
        # but past 2%. Moving modules (compressed .ko.zst, as in a real tree) is within 2%.
        if name == "drivers":
            assert abs(e.bytes - actual[name]) / actual[name] < 0.02, (name, e, actual[name])
    # the calibration and the target-level group sizes persist in the output folder
    data = json.loads((cache / CALIBRATION_FILE).read_text())
    assert data["calibration"] and data["groups"]
    again = Estimator(index, base, compression="zstd", level=19, cache_dir=cache)
    t = time.monotonic()
    again.prepare()
    assert time.monotonic() - t < 5  # no target-level sampling: the cached sizes are reused
    assert again.estimate(sels["drivers"]).bytes == est.estimate(sels["drivers"]).bytes


def test_other_compressors_and_none_is_exact(small_tree: Path, tmp_path: Path) -> None:
    index = scan(small_tree)
    base, sels = selections(index)
    sel = sels["firmware"]
    e = Estimator(index, base, compression="none", level=0).estimate(sel)
    assert e.exact
    assert e.bytes == write_initrd(index, sel, tmp_path / "raw", compression="none", level=0).uncompressed_bytes
    for kind, level in (("gzip", 6), ("xz", 1)):
        est = Estimator(index, base, compression=kind, level=level, sample_bytes=64 * MiB)
        est.prepare()
        got = est.estimate(sel)
        actual = write_initrd(index, sel, tmp_path / kind, compression=kind, level=level).compressed_bytes
        assert got.low <= actual <= got.high, (kind, got, actual)
        assert abs(got.bytes - actual) / actual < 0.03, (kind, got, actual)
