"""extensions[].from: an extension made of what a derived container image adds over its base,
built, signed and verified like any other, its content read back with fsck.erofs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from oci_images import d, docker_save, f, layer_tar, ln, wh

from sysextant.core.keys import generate_demo_pair
from sysextant.core.sizing.plan import make_plan
from sysextant.core.spec.load import load_spec
from sysextant.core.tree.index import scan

CLI = [sys.executable, "-m", "sysextant.tui.cli"]

BASE = [d("etc"), f("etc/os-release", "ID=debian\nVERSION_ID=12\n"), d("usr"), d("usr/bin"), d("usr/lib"),
        f("usr/lib/os-release", "ID=debian\nVERSION_ID=12\n"), f("usr/bin/sh", b"\x7fELF sh", mode=0o755),
        f("usr/lib/libold.so.1", b"old library"), d("boot"), f("boot/vmlinuz", b"MZ kernel stand-in"),
        d("tmp"), f("init", b"#!/usr/bin/sh\n", mode=0o755)]
APP = [d("usr/share"), d("usr/share/app"), f("usr/share/app/data.txt", "app data\n" * 200),
       f("usr/bin/app", b"\x7fELF app", mode=0o755), ln("usr/bin/app-link", "app"),
       f("usr/lib/libold.so.1", b"new library, same name"), d("etc/app"), f("etc/app/app.conf", "x=1\n")]


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    top = tmp_path_factory.mktemp("imagediff")
    docker_save(top / "base.tar", [layer_tar(BASE)], tag="example/os:1")
    docker_save(top / "app.tar", [layer_tar(BASE), layer_tar(APP)], tag="example/app:1")
    docker_save(top / "deleting.tar", [layer_tar(BASE), layer_tar([*APP, wh("usr/bin/sh")])], tag="example/bad:1")
    key, cert = generate_demo_pair()
    (top / "db.key").write_bytes(key)
    (top / "db.key").chmod(0o600)
    (top / "db.pem").write_bytes(cert)
    return top


def write_spec(top: Path, folder: Path, image: str = "app.tar") -> Path:
    folder.mkdir(exist_ok=True)
    spec = folder / "sysextant.yaml"
    spec.write_text(f"version: 1\nos: {{root: {top / 'base.tar'}, kernel: boot/vmlinuz}}\n"
                    "uki: {compression: none}\n"
                    f"signing: {{key: {top / 'db.key'}, cert: {top / 'db.pem'}}}\n"
                    f"extensions:\n  - name: app\n    from: {{image: {top / image}, base: {top / 'base.tar'}}}\n"
                    f"output: {folder / 'out'}\n")
    return spec


def test_plan_takes_what_the_derived_image_adds_under_the_merged_hierarchies(images: Path, tmp_path: Path) -> None:
    spec = load_spec(write_spec(images, tmp_path / "p"))
    plan = make_plan(spec, scan(spec.os.root))
    assert not plan.problems, plan.problems
    app = plan.extensions[0]
    taken = {os.fsdecode(app.source.index.path(k)) for k in app.source.selected.indices()}
    assert taken == {"usr/share", "usr/share/app", "usr/share/app/data.txt", "usr/bin/app", "usr/bin/app-link",
                     "usr/lib/libold.so.1"}  # usr/share is new in the derived image: it comes whole
    files = len("app data\n" * 200) + len(b"\x7fELF app") + len("app") + len(b"new library, same name")
    assert app.entries == 6 and files <= app.bytes < files + 3 * 4096  # + the folders' own sizes
    assert not app.selected and app.initrd_bytes == 0  # the OS tree itself loses nothing
    assert any("etc/app" in w and "cannot carry it" in w for w in plan.warnings), plan.warnings


def test_a_deletion_under_the_hierarchies_is_a_problem(images: Path, tmp_path: Path) -> None:
    spec = load_spec(write_spec(images, tmp_path / "q", "deleting.tar"))
    plan = make_plan(spec, scan(spec.os.root))
    assert any("usr/bin/sh: deleted by the derived image" in p and ":7:11:" in p for p in plan.problems), plan.problems  # at from:, line 7


@pytest.mark.skipif(shutil.which("fsck.erofs") is None or shutil.which("sfdisk") is None,
                    reason="erofs-utils / fdisk not installed (.ci/setup installs them)")
def test_built_extension_holds_exactly_the_additions(images: Path, tmp_path: Path) -> None:
    spec_path = write_spec(images, tmp_path / "b")
    proc = subprocess.run([*CLI, "build", str(spec_path), "--only", "app", "--json"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    image = tmp_path / "b/out/app.sysext.raw"
    verify = subprocess.run([*CLI, "verify", str(image), "--cert", str(images / "db.pem")], capture_output=True,
                            text=True)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    table = json.loads(subprocess.run(["sfdisk", "--json", str(image)], capture_output=True, text=True,
                                      check=True).stdout)["partitiontable"]
    root, verity = table["partitions"][0], table["partitions"][1]
    raw = image.read_bytes()
    data = raw[root["start"] * 512:(root["start"] + root["size"]) * 512]
    (tmp_path / "root.erofs").write_bytes(data)
    if shutil.which("veritysetup"):  # the dm-verity tree as cryptsetup checks it, against the built root hash
        (tmp_path / "root.verity").write_bytes(raw[verity["start"] * 512:(verity["start"] + verity["size"]) * 512])
        root_hash = next(a["digest"] for a in json.loads(proc.stdout)["artefacts"] if a["name"] == "app")
        subprocess.run(["veritysetup", "verify", str(tmp_path / "root.erofs"), str(tmp_path / "root.verity"),
                        root_hash], check=True, capture_output=True)
    out = tmp_path / "x"
    subprocess.run(["fsck.erofs", f"--extract={out}", str(tmp_path / "root.erofs")], check=True, capture_output=True)
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if not p.is_dir())
    assert files == ["usr/bin/app", "usr/bin/app-link", "usr/lib/extension-release.d/extension-release.app",
                     "usr/lib/libold.so.1", "usr/share/app/data.txt"]
    assert (out / "usr/share/app/data.txt").read_text() == "app data\n" * 200
    assert (out / "usr/lib/libold.so.1").read_bytes() == b"new library, same name"
    assert os.readlink(out / "usr/bin/app-link") == "app"
    assert not (out / "etc").exists() and not (out / "usr/bin/sh").exists()


def test_diff_build_makes_a_signed_verified_image_in_one_command(images: Path, tmp_path: Path) -> None:
    """No spec: `sysextant diff BASE DERIVED --build NAME --key --cert` (what auroraboot sysext does)."""
    proc = subprocess.run([*CLI, "diff", str(images / "base.tar"), str(images / "app.tar"), "--build", "app",
                           "--key", str(images / "db.key"), "--cert", str(images / "db.pem"), "--output",
                           str(tmp_path / "out"), "--json"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = json.loads(proc.stdout)
    assert data["ok"] and data["signed"] and data["entries"] == 6 and data["image"].endswith("app.sysext.raw")
    assert any("etc/app" in w for w in data["warnings"])
    verify = subprocess.run([*CLI, "verify", data["image"], "--cert", str(images / "db.pem")], capture_output=True,
                            text=True)
    assert verify.returncode == 0, verify.stdout
    # a difference that deletes under the hierarchies is refused, naming the path; nothing is written
    proc = subprocess.run([*CLI, "diff", str(images / "base.tar"), str(images / "deleting.tar"), "--build", "bad",
                           "--output", str(tmp_path / "bad")], capture_output=True, text=True)
    assert proc.returncode == 2 and "usr/bin/sh: deleted by the derived image" in proc.stderr
    assert not (tmp_path / "bad").exists()
