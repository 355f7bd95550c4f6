"""The compressed initrd against the zstd, gzip and xz command-line decoders; reproducibility."""

from __future__ import annotations

import hashlib
import io
import shutil
import subprocess
from pathlib import Path

import pytest
from sysextant.core.cpio import write_newc
from sysextant.core.demo import generate_tree
from sysextant.core.errors import UserError
from sysextant.core.index import scan
from sysextant.core.initrd import build_initrd, compressor, initrd_extra, write_initrd
from sysextant.core.model import ExtensionSpec, OsSpec, Spec, UkiSpec
from sysextant.core.plan import make_plan
from sysextant.core.progress import Reporter
from sysextant.core.selection import IntervalSet

DECODERS = {"zstd": ["zstd", "-d", "-c", "-q"], "gzip": ["gzip", "-d", "-c"], "xz": ["xz", "-d", "-c"],
            "none": ["cat"]}


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("initrd") / "rootfs"
    generate_tree(root, scale=0.02)
    return root


def make_spec(root: Path, compression: str, level: int) -> Spec:
    return Spec(path=root.parent / "sysextant.yaml",
                os=OsSpec(root=root, kernel=root / "boot/vmlinuz"),
                uki=UkiSpec(init="/usr/bin/immucore", compression=compression, level=level),
                signing=None,
                extensions=[ExtensionSpec(name="firmware", paths=["usr/lib/firmware"])],
                output=root.parent / "build")


@pytest.mark.parametrize(("kind", "level"), [("zstd", 19), ("gzip", 9), ("xz", 6), ("none", 0)])
def test_cli_decoders_give_back_the_archive(tree: Path, tmp_path: Path, kind: str, level: int) -> None:
    tool = DECODERS[kind][0]
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} not installed")
    spec = make_spec(tree, kind, level)
    plan = make_plan(spec, scan(tree))
    assert not plan.problems
    events = []
    result = build_initrd(spec, plan, tmp_path / "initrd", reporter=Reporter(events.append))
    assert result.uncompressed_bytes == plan.initrd_cpio_after
    assert result.compressed_bytes == (tmp_path / "initrd").stat().st_size
    assert events and events[-1].done == events[-1].total == plan.initrd_cpio_after
    raw = subprocess.run([*DECODERS[kind], str(tmp_path / "initrd")], capture_output=True, check=True).stdout
    reference = io.BytesIO()
    write_newc(plan.index, plan.initrd_after, reference, extra=initrd_extra(spec))
    assert raw == reference.getvalue()
    assert len(raw) == plan.initrd_cpio_after
    if kind == "xz":  # the kernel's XZ decoder wants CRC32
        info = subprocess.run(["xz", "--robot", "--list", str(tmp_path / "initrd")], capture_output=True,
                              text=True, check=True).stdout
        assert "CRC32" in info
    # reproducible: a second build is byte-identical
    again = build_initrd(spec, plan, tmp_path / "initrd2")
    assert (tmp_path / "initrd").read_bytes() == (tmp_path / "initrd2").read_bytes()
    assert again.compressed_bytes == result.compressed_bytes


def test_zstd_output_does_not_depend_on_worker_count(tree: Path, tmp_path: Path) -> None:
    index = scan(tree)
    sel = IntervalSet([(1, len(index))])
    digests = set()
    for threads in (1, 2, 3):
        r = write_initrd(index, sel, tmp_path / f"i{threads}", compression="zstd", level=5, threads=threads)
        digests.add(hashlib.sha256((tmp_path / f"i{threads}").read_bytes()).hexdigest())
        assert r.compressed_bytes > 0
    assert len(digests) == 1


def test_failed_build_leaves_no_output(tree: Path, tmp_path: Path) -> None:
    spec = make_spec(tree, "zstd", 3)
    plan = make_plan(spec, scan(tree))
    out = tmp_path / "initrd"
    reporter = Reporter()
    reporter.cancel()
    with pytest.raises(Exception, match="cancelled"):
        build_initrd(spec, plan, out, reporter=reporter)
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_bad_levels_are_user_errors() -> None:
    with pytest.raises(UserError, match="zstd level 23"):
        compressor("zstd", 23)
    with pytest.raises(UserError, match="lz4"):
        compressor("lz4", 1)
