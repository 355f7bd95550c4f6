"""The compressed initrd against the zstd, gzip and xz command-line decoders; reproducibility."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from sysextant.core.demo import generate_tree
from sysextant.core.errors import UserError
from sysextant.core.formats.cpio import write_newc
from sysextant.core.formats.initrd import build_initrd, compressor, initrd_extra, write_initrd
from sysextant.core.progress import Reporter
from sysextant.core.sizing.plan import make_plan
from sysextant.core.spec.model import ExtensionSpec, OsSpec, Spec, UkiSpec
from sysextant.core.tree.index import scan
from sysextant.core.tree.selection import IntervalSet

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


def test_zstd_workers_fit_in_half_the_available_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    from sysextant.core.formats import initrd

    monkeypatch.delenv("SYSEXTANT_ZSTD_THREADS", raising=False)
    monkeypatch.setattr(initrd.os, "cpu_count", lambda: 8)
    fixed, per_worker = initrd.zstd_mt_memory(19)
    for free, workers in ((1 << 30, 3), (4 << 30, 8), (200 << 20, 1), (0, 1)):
        monkeypatch.setattr(initrd, "memory_available", lambda free=free: free)
        assert initrd.zstd_threads(19) == workers, free
        assert workers == 1 or fixed + workers * per_worker <= free // 2
    monkeypatch.setattr(initrd, "memory_available", lambda: 1 << 30)
    assert initrd.zstd_threads(6) == 8  # small levels: every CPU
    assert initrd.zstd_threads() == 8  # no level given: no cap
    monkeypatch.setenv("SYSEXTANT_ZSTD_THREADS", "5")
    assert initrd.zstd_threads(19) == 5
    monkeypatch.delenv("SYSEXTANT_ZSTD_THREADS")
    monkeypatch.setattr(initrd, "memory_available", lambda: None)
    assert initrd.zstd_threads(19) == 8


def test_memory_available_reads_this_machine() -> None:
    from sysextant.core.formats.initrd import memory_available

    free = memory_available()
    with open("/proc/meminfo") as fh:
        total = next(int(line.split()[1]) * 1024 for line in fh if line.startswith("MemTotal:"))
    assert free is not None and 0 < free <= total


MODEL_CHILD = """
import os, sys, zstandard
from sysextant.core.formats.initrd import zstd_memory
def hwm():
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmHWM:")) * 1024
level, workers = int(sys.argv[1]), int(sys.argv[2])
block = os.urandom(1 << 20)
base = hwm()
cobj = zstandard.ZstdCompressor(level=level, threads=workers).compressobj()
for i in range(160):  # 160 MiB: many jobs, so every buffer of the ring is in use
    cobj.compress(block[:1 << 19] * 2 if i % 3 == 0 else bytes([i]) + block[1:])
cobj.flush()
print(hwm() - base, zstd_memory(level, workers))
"""


@pytest.mark.parametrize("level,workers", [(12, 0), (12, 1), (12, 2)])
def test_zstd_memory_model_matches_libzstd(level: int, workers: int) -> None:
    """The worker cap is only as good as the model: check it against libzstd's real peak."""
    import sys

    out = subprocess.run([sys.executable, "-c", MODEL_CHILD, str(level), str(workers)], capture_output=True,
                         text=True, check=True).stdout.split()
    used, model = int(out[0]), int(out[1])
    assert 0.5 * model <= used <= 1.15 * model, (used >> 20, model >> 20)


def test_single_mode_spec_builds_a_smaller_footprint_initrd(tmp_path: Path) -> None:
    """uki.zstd_mode: single gives other bytes than parallel, the same archive inside, and is
    reproducible; auto is single up to level 6 and parallel above."""
    from sysextant.core.formats.initrd import zstd_threads
    from sysextant.core.sizing.forecast import prepared_estimator
    from sysextant.core.spec.load import load_spec

    project = tmp_path / "p"
    (project / "rootfs/etc").mkdir(parents=True)
    (project / "rootfs/usr/share").mkdir(parents=True)
    (project / "rootfs/etc/os-release").write_text("ID=test\n")
    (project / "rootfs/boot").mkdir()
    (project / "rootfs/boot/vmlinuz").write_bytes(b"k")
    for i in range(40):
        (project / f"rootfs/usr/share/f{i}").write_bytes(bytes(range(256)) * 2000 + i.to_bytes(2, "big") * 9000)
    outs = []
    for mode, level in (("parallel", 5), ("single", 5), ("single", 5), ("auto", 5), ("auto", 12), ("parallel", 12)):
        (project / "sysextant.yaml").write_text(
            f"version: 1\nos: {{root: rootfs}}\nuki: {{compression: zstd, level: {level}, zstd_mode: {mode}}}\n"
            "extensions: []\n")
        spec = load_spec(project / "sysextant.yaml")
        assert spec.uki.zstd_mode == mode
        plan = make_plan(spec, scan(spec.os.root))
        # the estimate before the build keeps to one compressor too when memory is what counts
        est = prepared_estimator(spec, plan)
        single_mode = mode == "single" or (mode == "auto" and level <= 6)
        assert est.threads == (1 if single_mode else zstd_threads(level))
        out = tmp_path / f"{mode}-{len(outs)}.zst"
        build_initrd(spec, plan, out)
        outs.append(out.read_bytes())
    parallel, single, again, auto_low, auto_high, parallel_high = outs
    assert single == again == auto_low and single != parallel
    assert auto_high == parallel_high
    unpack = [subprocess.run(["zstd", "-d", "-c", "-q"], input=data, capture_output=True, check=True).stdout
              for data in (parallel, single, auto_high)]
    assert unpack[0] == unpack[1] == unpack[2]


def test_zstd_mode_is_checked(tmp_path: Path) -> None:
    from sysextant.core.spec.load import SpecError, load_spec

    (tmp_path / "sysextant.yaml").write_text("version: 1\nos: {root: .}\nuki:\n  zstd_mode: fast\n")
    with pytest.raises(SpecError) as exc:
        load_spec(tmp_path / "sysextant.yaml")
    text = str(exc.value)
    assert "uki.zstd_mode" in text and ":4:" in text and "auto, parallel, single" in text


@pytest.mark.skipif(shutil.which("cpio") is None, reason="GNU cpio not installed")
def test_excluded_entries_keep_their_folders_in_the_initrd(tree: Path, tmp_path: Path) -> None:
    """An extension that takes usr/lib/modules but excludes the block and md drivers (the obvious
    way to keep boot modules in the UKI) must leave those files in the initrd WITH their parent
    folders: the kernel's unpacker silently drops a file whose folder is missing. Extracted by GNU
    cpio, every kept entry has its parents, and the plan's byte count is the archive's."""
    release = next((tree / "usr/lib/modules").iterdir()).name
    spec = make_spec(tree, "none", 0)
    keep = ["modules.*", "kernel/drivers/block", "kernel/drivers/md", "kernel/drivers/nvme", "kernel/drivers/ata",
            "kernel/fs/erofs", "kernel/fs/overlayfs", "kernel/fs/squashfs", "kernel/fs/fat", "kernel/lib/reed_solomon"]
    spec.extensions = [ExtensionSpec(name="modules", paths=["usr/lib/modules"],
                                     exclude=[f"usr/lib/modules/*/{k}" for k in keep])]  # what boot needs stays
    plan = make_plan(spec, scan(tree))
    assert not plan.problems
    result = build_initrd(spec, plan, tmp_path / "initrd")
    assert result.uncompressed_bytes == plan.initrd_cpio_after == (tmp_path / "initrd").stat().st_size
    archive = (tmp_path / "initrd").read_bytes()
    listing = subprocess.run(["cpio", "-it", "--quiet"], input=archive, capture_output=True,
                             check=True).stdout.decode().split("\n")
    names = {n for n in listing if n}
    kept = [n for n in names if "/kernel/drivers/block/" in n]
    assert kept, "the excluded block drivers must stay in the initrd"
    for name in names:
        parent = os.path.dirname(name)
        assert parent in ("", ".") or parent in names, f"{name} is in the initrd without its folder {parent}"
    assert f"usr/lib/modules/{release}/kernel/drivers" in names
    assert not any("/kernel/sound/" in n for n in names)  # the rest did move out
    out = tmp_path / "x"
    out.mkdir()
    subprocess.run(["cpio", "-idm", "--quiet", "--no-absolute-filenames"], input=archive, cwd=out, check=True,
                   capture_output=True)
    for name in kept:
        assert (out / name).exists() or (out / name).is_symlink()


def _demo_cert(tmp_path: Path) -> tuple[Path, Path]:
    from sysextant.core.keys import generate_demo_pair

    key_pem, cert_pem = generate_demo_pair(bits=2048)
    (tmp_path / "db.key").write_bytes(key_pem)
    (tmp_path / "db.crt").write_bytes(cert_pem)
    return tmp_path / "db.key", tmp_path / "db.crt"


@pytest.mark.skipif(shutil.which("cpio") is None or shutil.which("openssl") is None, reason="cpio/openssl missing")
def test_trust_in_uki_and_extra_files_land_in_the_initrd_with_their_folders(tree: Path, tmp_path: Path) -> None:
    """signing.trust_in_uki puts the db certificate at etc/verity.d/ (where systemd checks signed
    verity root hashes in userspace); extra files (sysextant boot's check build) come with every
    folder they need, replace a tree entry at their path, and the plan counts their exact bytes."""
    from sysextant.core.spec.model import ExtraFile, SigningSpec

    key, cert = _demo_cert(tmp_path)
    spec = make_spec(tree, "none", 0)
    spec.signing = SigningSpec(key=key, cert=cert, trust_in_uki=True)
    (tree / "etc/hostname").write_text("from-the-tree\n")
    spec.extra_files = [ExtraFile("etc/systemd/system/x.d/deep/check.conf", data=b"[Unit]\n"),
                        ExtraFile("etc/systemd/system/multi-user.target.wants/check.service",
                                  target="../check.service"),
                        ExtraFile("etc/hostname", data=b"check-build\n", mode=0o600)]
    try:
        plan = make_plan(spec, scan(tree))
        assert not plan.problems
        result = build_initrd(spec, plan, tmp_path / "initrd")
    finally:
        (tree / "etc/hostname").unlink()
    assert result.uncompressed_bytes == plan.initrd_cpio_after == (tmp_path / "initrd").stat().st_size
    archive = (tmp_path / "initrd").read_bytes()
    names = [n for n in subprocess.run(["cpio", "-it", "--quiet"], input=archive, capture_output=True,
                                       check=True).stdout.decode().split("\n") if n]
    assert len(names) == len(set(names)), "no path twice in the archive"
    for name in names:
        parent = os.path.dirname(name)
        assert parent in ("", ".") or parent in names, f"{name} is in the initrd without its folder {parent}"
    out = tmp_path / "x"
    out.mkdir()
    subprocess.run(["cpio", "-idm", "--quiet", "--no-absolute-filenames"], input=archive, cwd=out, check=True,
                   capture_output=True)
    crt = out / "etc/verity.d/sysextant-db.crt"
    shown = subprocess.run(["openssl", "x509", "-in", str(crt), "-noout", "-fingerprint", "-sha256"],
                           capture_output=True, text=True, check=True).stdout
    wanted = subprocess.run(["openssl", "x509", "-in", str(cert), "-noout", "-fingerprint", "-sha256"],
                            capture_output=True, text=True, check=True).stdout
    assert shown == wanted
    assert (out / "etc/systemd/system/x.d/deep/check.conf").read_bytes() == b"[Unit]\n"
    assert os.readlink(out / "etc/systemd/system/multi-user.target.wants/check.service") == "../check.service"
    assert (out / "etc/hostname").read_text() == "check-build\n"


def test_trust_in_uki_with_an_unreadable_cert_is_a_plan_problem(tree: Path, tmp_path: Path) -> None:
    from sysextant.core.spec.model import SigningSpec

    spec = make_spec(tree, "none", 0)
    spec.signing = SigningSpec(key=tmp_path / "k.pem", cert=tmp_path / "missing.pem", trust_in_uki=True)
    plan = make_plan(spec, scan(tree))
    assert any("signing.cert" in p and "missing.pem" in p and "does not exist" in p for p in plan.problems)
