"""Container images as input (core/tree/oci.py, layers.py, tarstream.py, sidecar.py).

Images are built in Python (tests/helpers/oci_images.py) in the docker-save, Docker 25 docker-save,
OCI layout, OCI archive and docker-export shapes. Oracles: ``umoci unpack`` (Debian's umoci) for
how layers apply, ``skopeo copy`` to convert between formats; both are used when installed
(.ci/setup installs them) and the tests say so when they are skipped.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import stat
import subprocess
import tarfile
import tempfile
from pathlib import Path

import pytest
import zstandard
from oci_images import (
    E,
    d,
    docker_save,
    f,
    flat_tar,
    hl,
    layer_tar,
    ln,
    oci_archive,
    oci_layout,
    opq,
    tree_listing,
    wh,
)
from unprivileged import NOBODY, run_unprivileged

from sysextant.core.errors import Cancelled, UserError
from sysextant.core.progress import Reporter
from sysextant.core.tree import oci
from sysextant.core.tree.sidecar import SIDECAR, meta_for

CAP = b"\x01\x00\x00\x02\x00\x20\x00\x00" + b"\x00" * 12  # security.capability v2: cap_net_bind_service

# -- the layers every format test uses -------------------------------------------------------------
L1 = [d("usr"), d("usr/bin"), f("usr/bin/a", "aaa", mode=0o755), f("usr/bin/b", "bbb"),
      f("usr/bin/ping", "ping", mode=0o4755, xattrs={"security.capability": CAP, "user.origin": b"l1"}),
      ln("usr/bin/sh", "/usr/bin/a"), ln("bin", "usr/bin"),
      d("etc"), f("etc/shadow", "root:*:", mode=0o640, gid=42), f("etc/secret", "x", mode=0o000),
      d("etc/locked", mode=0o500), f("etc/locked/inner", "in", mode=0o400),
      d("opq"), f("opq/lower", "lower"), d("opq/sub"), f("opq/sub/deep", "deep"),
      d("opq2"), f("opq2/lower", "lower"),
      d("dev"), E("chr", "dev/null", major=1, minor=3, mode=0o666), E("blk", "dev/loop0", major=7, minor=0),
      E("fifo", "run.fifo"), f("home-file", "h", uid=1000, gid=1000),
      f("keep", "k1"), hl("keep2", "keep"), d("gone"), f("gone/x", "x")]
L2 = [f("opq/new", "n"), opq("opq"),                       # opaque listed after a sibling of its layer
      opq("opq2"), f("opq2/new", "n2"),                    # and before
      wh("usr/bin/b"), wh("gone"), wh("nothing-there"),
      hl("usr/bin/a2", "usr/bin/a"),                       # a hardlink into the layer below
      f("keep", "k2"),                                     # replaces one name of a hardlinked pair
      d("usr/bin", mode=0o750, xattrs={"user.dir": b"1"}),  # a folder over a folder merges
      f("dev/null2", "now a file"), ln("usr/bin/sh", "/usr/bin/a2")]
L3 = [d("usr"), d("usr/lib"), f("usr/lib/z", "z" * 5000), opq("usr/lib"), wh("keep2"),
      hl("usr/lib/z2", "usr/lib/z"), f("usr/bin/a", "replaced", mode=0o755)]


def layers_raw() -> list[bytes]:
    return [layer_tar(L1), layer_tar(L2), layer_tar(L3)]


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "cache"


def listing(opened: oci.OpenedImage) -> dict:
    return tree_listing(opened.root, meta_for(opened.root))


def test_layers_apply_by_the_rules(tmp_path: Path, cache: Path) -> None:
    img = oci_layout(tmp_path / "layout", {"amd64": layers_raw()}, how="gzip")
    opened = oci.open_image(img, cache=cache)
    t = listing(opened)
    assert "usr/bin/b" not in t and "gone" not in t and "nothing-there" not in t
    assert not any(".wh." in k for k in t), "whiteouts are never extracted"
    assert sorted(k for k in t if k.startswith("opq/")) == ["opq/new"]  # opaque after its sibling
    assert sorted(k for k in t if k.startswith("opq2/")) == ["opq2/new"]  # and before it
    assert sorted(k for k in t if k.startswith("usr/lib/")) == ["usr/lib/z", "usr/lib/z2"]
    root = opened.root
    assert (root / "keep").read_text() == "k2" and not (root / "keep2").exists()
    assert os.lstat(root / "usr/lib/z").st_ino == os.lstat(root / "usr/lib/z2").st_ino
    # the hardlink made in layer 2 kept layer 1's content when layer 3 replaced usr/bin/a
    assert (root / "usr/bin/a2").read_text() == "aaa" and (root / "usr/bin/a").read_text() == "replaced"
    assert os.readlink(root / "usr/bin/sh") == "/usr/bin/a2"
    assert t["usr/bin/ping"][0] == oct(stat.S_IFREG | 0o4755)
    assert dict(t["usr/bin/ping"][5])["security.capability"] == CAP
    assert t["usr/bin"][0] == oct(stat.S_IFDIR | 0o750) and dict(t["usr/bin"][5]) == {"user.dir": b"1"}
    assert t["dev/null"][0] == oct(stat.S_IFCHR | 0o666) and t["dev/null"][4] == os.makedev(1, 3)
    assert t["etc/shadow"][1:3] == (0, 42) and t["home-file"][1:3] == (1000, 1000)
    assert t["usr/bin/a"][6] == 1_700_000_000


def _umoci(layout: Path, bundle: Path) -> Path:
    cmd = ["umoci", "unpack", "--image", f"{layout}:latest", str(bundle)]
    if os.geteuid() != 0:
        cmd.insert(2, "--rootless")
    subprocess.run(cmd, check=True, capture_output=True)
    return bundle / "rootfs"


@pytest.mark.skipif(shutil.which("umoci") is None, reason="umoci not installed (Debian package umoci)")
@pytest.mark.parametrize("how", [None, "gzip", "zstd"])
def test_flattened_tree_equals_umoci_unpack(tmp_path: Path, cache: Path, how: str | None) -> None:
    if how == "zstd":  # umoci 0.4.7 reads no zstd layers: compare with the same image in gzip
        ref = oci_layout(tmp_path / "ref", {"amd64": layers_raw()}, how="gzip")
    img = oci_layout(tmp_path / "layout", {"amd64": layers_raw()}, how=how)
    ours = listing(oci.open_image(img, cache=cache))
    theirs = tree_listing(_umoci(ref if how == "zstd" else img, tmp_path / "bundle"))
    if os.geteuid() != 0:  # umoci --rootless keeps only what this user can set
        pytest.skip("entry-by-entry metadata is compared as root (CI); rootless umoci drops owners")
    assert ours == theirs


def test_every_format_gives_the_same_tree(tmp_path: Path, cache: Path) -> None:
    raw = layers_raw()
    images = {
        "docker-save": docker_save(tmp_path / "save.tar", raw),
        "docker-save-oci": oci_archive(tmp_path / "save25.tar", {"amd64": raw}, docker_manifest=True, how=None),
        "oci-layout": oci_layout(tmp_path / "layout", {"amd64": raw}, how="zstd"),
        "oci-archive": oci_archive(tmp_path / "archive.tar", {"amd64": raw}, how="gzip"),
    }
    gz = tmp_path / "save.tar.gz"
    gz.write_bytes(zstandard.ZstdCompressor().compress((tmp_path / "save.tar").read_bytes()))
    images["docker-save (zstd whole)"] = gz
    seen = {}
    for i, (fmt, path) in enumerate(images.items()):
        opened = oci.open_image(path, cache=cache / str(i))
        assert opened.format == fmt.split(" ")[0]
        seen[fmt] = (opened.key, listing(opened))
    keys = {k for k, _ in seen.values()}
    assert len(keys) == 1, "the cache key is the config digest, whatever the container"
    first = next(iter(seen.values()))[1]
    for fmt, (_, t) in seen.items():
        assert t == first, fmt


def test_docker_save_dedupe_symlink_and_flat_export(tmp_path: Path, cache: Path) -> None:
    same = layer_tar([d("usr"), f("usr/x", "x")])
    mid = layer_tar([wh("usr/x"), f("usr/y", "y")])
    opened = oci.open_image(docker_save(tmp_path / "s.tar", [same, mid, same], dedupe_link=True), cache=cache)
    assert sorted(listing(opened)) == ["usr", "usr/x", "usr/y"]
    flat = oci.open_image(flat_tar(tmp_path / "export.tar", [d("etc"), f("etc/hostname", "box"),
                                                              ln("etc/mtab", "/proc/mounts")]), cache=cache)
    assert flat.format == "docker-export" and sorted(listing(flat)) == ["etc", "etc/hostname", "etc/mtab"]


@pytest.mark.skipif(shutil.which("skopeo") is None, reason="skopeo not installed (Debian package skopeo)")
def test_skopeo_conversions_flatten_to_the_same_tree(tmp_path: Path, cache: Path) -> None:
    raw = layers_raw()
    save = docker_save(tmp_path / "save.tar", raw)
    subprocess.run(["skopeo", "--insecure-policy", "copy", f"docker-archive:{save}", f"oci:{tmp_path}/conv:latest"],
                   check=True, capture_output=True)
    subprocess.run(["skopeo", "--insecure-policy", "copy", f"oci:{tmp_path}/conv:latest",
                    f"oci-archive:{tmp_path}/conv.tar:latest"], check=True, capture_output=True)
    a = oci.open_image(save, cache=cache / "a")
    b = oci.open_image(tmp_path / "conv", cache=cache / "b")
    c = oci.open_image(tmp_path / "conv.tar", cache=cache / "c")
    assert b.key == c.key  # skopeo rewrites the config for OCI, so only its two outputs share a key
    assert listing(a) == listing(b) == listing(c)


def test_multi_platform_index_picks_the_platform(tmp_path: Path, cache: Path) -> None:
    amd = [layer_tar([d("usr"), f("usr/arch", "amd64")])]
    arm = [layer_tar([d("usr"), f("usr/arch", "arm64")])]
    img = oci_layout(tmp_path / "multi", {"amd64": amd, "arm64": arm}, how="gzip", multi=True)
    for plat, want in (("linux/amd64", "amd64"), ("linux/arm64", "arm64")):
        opened = oci.open_image(img, platform=plat, cache=cache)
        assert (opened.root / "usr/arch").read_text() == want and opened.platform == plat
    assert oci.platform_for_arch("x86-64") == "linux/amd64"
    with pytest.raises(UserError, match=r"no image for linux/riscv64 \(it has linux/amd64, linux/arm64\)"):
        oci.open_image(img, platform="linux/riscv64", cache=cache)


def test_cache_is_reused_cleaned_and_left_clean_on_cancel(tmp_path: Path, cache: Path) -> None:
    img = docker_save(tmp_path / "save.tar", layers_raw())
    first = oci.open_image(img, cache=cache)
    again = oci.open_image(img, cache=cache)
    assert not first.reused and again.reused and again.root == first.root
    assert (first.root.parent / SIDECAR).is_file()
    assert [i["key"] for i in oci.cached_images(cache)] == [first.key]
    count, freed = oci.clean_cache(cache)
    assert count == 1 and freed > 0 and not first.root.exists()

    calls = []

    def cancel_soon(ev) -> None:
        calls.append(ev)
        if len(calls) > 1:
            rep.cancel()

    rep = Reporter(cancel_soon)
    big = docker_save(tmp_path / "big.tar", [layer_tar([d("x")] + [f(f"x/{i}", "y") for i in range(3000)])])
    with pytest.raises(Cancelled):
        oci.open_image(big, cache=cache, reporter=rep)
    assert [p.name for p in cache.iterdir() if p.name != "sources.json"] == [], "nothing half-written"


# -- hostile layers -------------------------------------------------------------------------------
def _raw_tar(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for ti, data in members:
            tar.addfile(ti, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def _ti(name: str, kind: bytes = tarfile.REGTYPE, size: int = 0, linkname: str = "") -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.type, ti.size, ti.linkname, ti.mode = kind, size, linkname, 0o644
    return ti


HOSTILE = {  # layers (as a function of the folder outside the image), what the error must say
    "traversal": (lambda out: [[(_ti("../escaped", size=1), b"x")]], r"layer 1 of 1 .*entry '\.\./escaped'.*'\.\.'"),
    "absolute": (lambda out: [[(_ti("/etc/escaped", size=1), b"x")]], r"entry '/etc/escaped'.*absolute"),
    "symlink parent": (lambda out: [[(_ti("evil", tarfile.SYMTYPE, linkname=str(out)), None)],
                                    [(_ti("evil/pwned", size=1), b"x")]],
                       r"layer 2 of 2 .*entry 'evil/pwned'.*parent evil is a symlink"),
    "symlink parent, same layer": (lambda out: [[(_ti("usr", tarfile.SYMTYPE, linkname=str(out)), None),
                                                 (_ti("usr/pwned", size=1), b"x")]],
                                   r"layer 1 of 1 .*entry 'usr/pwned'.*parent usr is a symlink"),
    "hardlink out": (lambda out: [[(_ti("h", tarfile.LNKTYPE, linkname="../../etc/passwd"), None)]],
                     r"entry 'h'.*hardlink target contains '\.\.'"),
    "hardlink through symlink": (lambda out: [[(_ti("l", tarfile.SYMTYPE, linkname=str(out)), None),
                                               (_ti("h", tarfile.LNKTYPE, linkname="l/file"), None)]],
                                 r"entry 'h'.*parent l is a symlink"),
    "hardlink to nothing": (lambda out: [[(_ti("h", tarfile.LNKTYPE, linkname="nope"), None)]],
                            r"entry 'h'.*hardlink to nope, which no layer so far holds"),
    "whiteout climbing": (lambda out: [[(_ti("a/.wh...", size=0), b"")]], r"entry 'a/\.wh\.\.\.'.*names no entry"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_layers_are_refused_naming_layer_and_entry(tmp_path: Path, cache: Path, case: str) -> None:
    make, pattern = HOSTILE[case]
    outside = tmp_path / "OUTSIDE"
    outside.mkdir()
    (outside / "file").write_text("outside")
    img = docker_save(tmp_path / "evil.tar", [_raw_tar(members) for members in make(outside)])
    with pytest.raises(UserError, match=pattern):
        oci.open_image(img, cache=cache)
    assert sorted(p.name for p in outside.iterdir()) == ["file"] and not (tmp_path / "escaped").exists()
    assert [p.name for p in cache.iterdir()] == [], "the refused extraction left nothing"


def test_a_layer_claiming_more_than_it_holds_is_stopped(tmp_path: Path, cache: Path) -> None:
    good = _raw_tar([(_ti("big", size=100_000), b"\1" * 100_000)])
    cut = good[:2048]  # the header says 100000 bytes; the layer holds a few
    for name, layers in (("truncated", [cut]),):
        img = docker_save(tmp_path / f"{name}.tar", layers)
        with pytest.raises(UserError, match=r"layer 1 of 1 .*entry big claims 100000 bytes but the layer ends"):
            oci.open_image(img, cache=cache)
    # a descriptor that claims more than the blob holds
    folder = oci_layout(tmp_path / "lying", {"amd64": [good]}, how="gzip")
    man_path = next(p for p in (folder / "blobs/sha256").iterdir() if b'"layers": [' in p.read_bytes())
    man = json.loads(man_path.read_bytes())
    man["layers"][0]["size"] += 10
    new = json.dumps(man).encode()
    new_hex = hashlib.sha256(new).hexdigest()
    (folder / "blobs/sha256" / new_hex).write_bytes(new)
    idx = json.loads((folder / "index.json").read_bytes())
    idx["manifests"][0].update(digest="sha256:" + new_hex, size=len(new))
    (folder / "index.json").write_text(json.dumps(idx))
    with pytest.raises(UserError, match=r"layer 1 of 1 .*the blob holds \d+ bytes, its descriptor says"):
        oci.open_image(folder, cache=cache)
    # a blob whose content changed after the manifest was written
    folder = oci_layout(tmp_path / "changed", {"amd64": [good]}, how=None)
    blob = next(p for p in (folder / "blobs/sha256").iterdir() if p.stat().st_size == len(good))
    blob.write_bytes(good.replace(b"\1" * 10, b"\2" * 10, 1))
    with pytest.raises(UserError, match=r"layer 1 of 1 .*does not match its digest"):
        oci.open_image(folder, cache=cache)
    assert [p.name for p in cache.iterdir()] == []


@pytest.mark.parametrize("how", ["zstd", "gzip"])
def test_a_decompression_bomb_is_stopped(tmp_path: Path, cache: Path, how: str) -> None:
    bomb = _raw_tar([(_ti("zeros", size=200 << 20), b"\0" * (200 << 20))])
    img = oci_layout(tmp_path / "bomb", {"amd64": [bomb]}, how=how)
    limits = oci.Limits(max_ratio=100, floor=1 << 20)
    with pytest.raises(UserError, match=r"layer 1 of 1 .*expands past \d+ bytes; stopped"):
        oci.open_image(img, cache=cache, limits=limits)
    assert [p.name for p in cache.iterdir()] == []


def test_a_huge_pax_header_is_refused(tmp_path: Path, cache: Path) -> None:
    ti = _ti("x", size=1)
    ti.pax_headers = {"comment": "y" * (2 << 20)}
    img = docker_save(tmp_path / "pax.tar", [_raw_tar([(ti, b"x")])])
    with pytest.raises(UserError, match=r"a PAX header of \d+ bytes .* refused"):
        oci.open_image(img, cache=cache)


def test_not_an_image(tmp_path: Path, cache: Path) -> None:
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"hello" * 300)
    with pytest.raises(UserError, match="neither an OS tree folder nor a container image tar"):
        oci.open_image(junk, cache=cache)


# -- without root, the same outputs ---------------------------------------------------------------
def _outputs(image: str, cache: str, privileged: bool | None) -> dict:
    """Flatten, scan and pack the whole tree as a cpio (owners kept and not) and an EROFS image."""
    from sysextant.core.formats.cpio import write_newc
    from sysextant.core.formats.erofs import write_image
    from sysextant.core.tree.fsentry import walk_selection
    from sysextant.core.tree.index import scan
    from sysextant.core.tree.selection import IntervalSet

    opened = oci.open_image(Path(image), cache=Path(cache), privileged=privileged)
    index = scan(opened.root)
    everything = IntervalSet([(1, len(index))])
    out = {"privileged": privileged, "uid": os.geteuid()}
    for keep in (False, True):
        buf = io.BytesIO()
        write_newc(index, everything, buf, mtime=0, keep_owners=keep)
        out[f"cpio-{keep}"] = hashlib.sha256(buf.getvalue()).hexdigest()
    root = os.fsencode(opened.root)
    entries = list(walk_selection(root, [index.names[c] for c in index.children(0)]))
    buf = io.BytesIO()
    write_image(entries, buf, tree_root=root, uuid=b"\1" * 16)
    out["erofs"] = hashlib.sha256(buf.getvalue()).hexdigest()
    out["entries"] = sorted((e.path, e.mode, e.uid, e.gid, e.rdev, sorted(e.xattrs.items())) for e in entries)
    out["modes"] = sorted((index.path(i), index.mode[i]) for i in range(1, len(index)))
    return out


@pytest.mark.skipif(os.geteuid() != 0, reason="compares a root extraction with one as nobody: needs root (CI)")
def test_unprivileged_extraction_gives_the_outputs_of_a_root_one(tmp_path: Path) -> None:
    work = Path(tempfile.mkdtemp(prefix="sysextant-oci-", dir="/tmp"))
    try:
        os.chmod(work, 0o755)
        img = docker_save(work / "img.tar", layers_raw())
        os.chmod(img, 0o644)
        user_cache = work / "user-cache"
        user_cache.mkdir()
        os.chown(user_cache, NOBODY, NOBODY)
        as_root = _outputs(str(img), str(work / "root-cache"), None)
        as_nobody = run_unprivileged(_outputs, str(img), str(user_cache), None)
        assert as_nobody["uid"] == NOBODY and as_root["uid"] == 0
        user_tree = next(user_cache.glob("v*-sha256-*.user"))
        assert os.stat(user_tree / "rootfs/etc/shadow").st_uid == NOBODY, "really extracted without root"
        assert stat.S_ISREG(os.lstat(user_tree / "rootfs/dev/null").st_mode), "no device node without root"
        for key in ("modes", "entries", "cpio-False", "cpio-True", "erofs"):
            assert as_nobody[key] == as_root[key], key
    finally:
        shutil.rmtree(work, ignore_errors=True)


# -- end to end: a spec whose os.root is an image -------------------------------------------------
def _tree_tar(root: Path, keep, extra: list[E] = ()) -> bytes:
    """A layer of the folder ``root``: the entries ``keep(rel)`` accepts (parents included)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for dirpath, dirs, files in os.walk(root):
            dirs.sort()
            for name in sorted(dirs + files):
                p = Path(dirpath) / name
                rel = p.relative_to(root).as_posix()
                if keep(rel) or (p.is_dir() and not p.is_symlink() and any(keep(x) for x in _below(root, rel))):
                    tar.add(p, arcname=rel, recursive=False)
        for e in extra:
            data = layer_tar([e])
            with tarfile.open(fileobj=io.BytesIO(data)) as one:
                for ti in one.getmembers():
                    tar.addfile(ti, one.extractfile(ti) if ti.isreg() else None)
    return buf.getvalue()


def _without(value, keys: tuple[str, ...]):
    """``value`` with the named keys dropped at every depth (paths and timings differ)."""
    if isinstance(value, dict):
        return {k: _without(v, keys) for k, v in value.items() if k not in keys}
    if isinstance(value, list):
        return [_without(v, keys) for v in value]
    return value


def _below(root: Path, rel: str) -> list[str]:
    return [Path(dp, n).relative_to(root).as_posix() for dp, ds, fs in os.walk(root / rel) for n in ds + fs]


@pytest.fixture(scope="module")
def demo_image(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The small demo project, and the same project whose os.root is a docker-save image of its
    tree in three layers (firmware in its own layer; junk added, then whited out and hidden)."""
    from sysextant.core.demo import create_demo

    base = tmp_path_factory.mktemp("oci-e2e")
    spec = create_demo(base / "folder", scale=0.03)
    spec.write_text(spec.read_text().replace("level: 19", "level: 3"))
    rootfs = spec.parent / "rootfs"
    fw = "usr/lib/firmware"
    layer1 = _tree_tar(rootfs, lambda rel: not (rel == fw or rel.startswith(fw + "/")),
                       [d("usr/share/junkdir"), f("usr/share/junkdir/a", "junk"), f("usr/share/junk", "junk" * 1000)])
    layer2 = _tree_tar(rootfs, lambda rel: rel == fw or rel.startswith(fw + "/"), [wh("usr/share/junk")])
    layer3 = layer_tar([wh("usr/share/junkdir")])
    image_project = base / "image"
    shutil.copytree(spec.parent, image_project, symlinks=True, ignore=shutil.ignore_patterns("rootfs", "build"))
    docker_save(image_project / "os.tar", [layer1, layer2, layer3])
    ispec = image_project / spec.name
    ispec.write_text(spec.read_text().replace("root: rootfs", "root: os.tar"))
    return spec, ispec


def test_plan_and_build_on_an_image_equal_the_folder(demo_image: tuple[Path, Path], tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    from sysextant.core.spec.load import load_spec
    from sysextant.tui.cli import main as cli

    monkeypatch.setenv("SYSEXTANT_IMAGE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    folder_spec, image_spec = demo_image
    loaded = load_spec(image_spec)
    assert loaded.os.image == image_spec.parent / "os.tar" and loaded.os.root.name == "rootfs"
    assert loaded.os.kernel == loaded.os.root / "boot/vmlinuz"
    assert tree_listing(loaded.os.root) == tree_listing(folder_spec.parent / "rootfs")

    plans = []
    for spec in (folder_spec, image_spec):
        cli(["plan", str(spec), "--json"])
        out = json.loads(capsys.readouterr().out)
        plans.append(_without(out, ("spec", "root", "os_root", "seconds")))
    assert plans[0] == plans[1]

    digests = []
    for spec in (folder_spec, image_spec):
        assert cli(["build", str(spec), "--json"]) == 0
        summary = json.loads(capsys.readouterr().out)
        digests.append(sorted((Path(a["path"]).name, a["digest"], a["size"]) for a in summary["artefacts"]))
    assert digests[0] == digests[1] and len(digests[0]) >= 2



def test_cli_scan_init_open_and_images(demo_image: tuple[Path, Path], tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from sysextant.core.spec.load import load_spec
    from sysextant.tui import cli as cli_mod

    monkeypatch.setenv("SYSEXTANT_IMAGE_CACHE", str(tmp_path / "cache"))
    image = tmp_path / "kairos.tar"
    shutil.copy(demo_image[1].parent / "os.tar", image)
    assert cli_mod.main(["scan", str(image), "--json"]) == 0
    scanned = json.loads(capsys.readouterr().out)
    assert scanned["root"].endswith("/rootfs") and scanned["files"] > 100
    assert cli_mod.main(["init", str(image), "--spec", str(tmp_path / "s.yaml")]) == 0
    capsys.readouterr()
    spec = load_spec(tmp_path / "s.yaml")
    assert spec.os.image == image and "root: kairos.tar" in (tmp_path / "s.yaml").read_text()
    opened = []
    monkeypatch.setattr(cli_mod, "_open_workbench", lambda path: opened.append(path) or 0)
    assert cli_mod.main([str(image)]) == 0  # `sysextant IMAGE.tar`: a starter spec beside it, then the workbench
    assert opened == [tmp_path / "kairos.sysextant.yaml"] and load_spec(opened[0]).os.root == spec.os.root
    capsys.readouterr()
    assert cli_mod.main(["images", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)["images"]
    assert [i["image"] for i in listed] == [str(image)] and listed[0]["format"] == "docker-save"
    assert cli_mod.main(["images", "--clean"]) == 0
    assert "removed 1 flattened image" in capsys.readouterr().out
    assert oci.cached_images() == []


def test_diff_of_a_derived_image_over_its_base(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    from sysextant.tui.cli import main as cli

    monkeypatch.setenv("SYSEXTANT_IMAGE_CACHE", str(tmp_path / "cache"))
    base_layers = [layer_tar([d("usr"), d("usr/bin"), f("usr/bin/a", "aaa", mode=0o755), f("usr/bin/same", "s" * 100),
                              f("usr/bin/old", "old"), f("usr/bin/mode", "m"), d("etc"), f("etc/os-release", "ID=x\n")])]
    app = layer_tar([d("usr/lib"), d("usr/lib/app"), f("usr/lib/app/data", "d" * 5000), f("usr/bin/app", "app", mode=0o755),
                     f("usr/bin/a", "AAA", mode=0o755),          # same size, other bytes: changed
                     f("usr/bin/same", "s" * 100, mtime=1),      # rewritten with the same bytes: no change
                     f("usr/bin/mode", "m", mode=0o600),         # only the mode
                     wh("usr/bin/old"), f("etc/app.conf", "x=1")])
    base = docker_save(tmp_path / "base.tar", base_layers, tag="kairos:1")
    derived = docker_save(tmp_path / "app.tar", base_layers + [app], tag="kairos-app:1")
    assert cli(["diff", str(base), str(derived), "--json"]) == 1  # the deletion is a problem
    out = json.loads(capsys.readouterr().out)
    carried = {c["path"]: (c["kind"], c.get("what", "")) for c in out["carried"]}
    assert carried == {"usr/lib": ("added", ""), "usr/bin/app": ("added", ""), "usr/bin/a": ("changed", "content"),
                       "usr/bin/mode": ("changed", "mode")}
    assert out["carried_bytes"] == 5000 + 3 + 3 + 1
    assert [c["path"] for c in out["outside"]] == ["etc/app.conf"]
    assert out["problems"] == ["usr/bin/old: deleted by the derived image; a system extension cannot delete a file "
                               "of the base"]
    assert cli(["diff", str(base), str(derived)]) == 1
    text = capsys.readouterr().out
    assert "would carry 4 entries" in text and "warning: etc/app.conf: added outside the merged hierarchies" in text
