"""The assembled sysext DDI, checked by the real tools: sfdisk, veritysetup, systemd-dissect,
systemd-sysext and openssl."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest
from ddi_helpers import MKFS_EROFS, MKSQUASHFS, demo_signer, make_erofs, make_squashfs, stage

from sysextant.core.errors import Cancelled, UserError
from sysextant.core.formats import ddi, gpt, pkcs7, verity
from sysextant.core.progress import Reporter

pytestmark = pytest.mark.skipif(MKFS_EROFS is None, reason="mkfs.erofs (erofs-utils) not installed")


def _tool(name: str):
    path = shutil.which(name)
    return pytest.mark.skipif(path is None, reason=f"{name} not installed")


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory):
    """A signed DDI named foo.sysext.raw around a real EROFS image, plus what made it."""
    tmp = tmp_path_factory.mktemp("ddi")
    fs = make_erofs(stage(tmp / "tree", "foo", strict0=True), tmp / "fs.erofs")
    signer = demo_signer(tmp / "keys")
    image = tmp / "foo.sysext.raw"
    res = ddi.assemble(fs, image, arch="x86-64", signer=signer, seed=b"foo")
    return tmp, fs, signer, image, res


def _part(image: Path, p: ddi.DdiPartition) -> bytes:
    with open(image, "rb") as f:
        f.seek(p.offset)
        return f.read(p.size)


def test_result_and_layout(built) -> None:
    _, fs, _, image, res = built
    assert res.signed and res.size == image.stat().st_size
    assert [p.role for p in res.partitions] == ["root", "root-verity", "root-verity-sig"]
    assert [p.label for p in res.partitions] == ["root-x86-64", "root-x86-64-verity", "root-x86-64-verity-sig"]
    rh = bytes.fromhex(res.root_hash)
    assert res.partitions[0].uuid == str(uuid.UUID(bytes=rh[:16]))
    assert res.partitions[1].uuid == str(uuid.UUID(bytes=rh[16:]))
    assert res.partitions[2].size == 16384
    assert res.partitions[0].offset == 2048 * 512
    data = _part(image, res.partitions[0])
    assert data[: fs.stat().st_size] == fs.read_bytes()
    assert all(p.offset % 4096 == 0 and p.size % 4096 == 0 for p in res.partitions)


def test_two_assembles_are_byte_identical(built, tmp_path: Path) -> None:
    _, fs, signer, image, res = built
    again = tmp_path / "again.raw"
    res2 = ddi.assemble(fs, again, arch="x86-64", signer=signer, seed=b"foo")
    assert res2 == res
    # PKCS#1 v1.5 signatures are deterministic, so the whole image is too.
    assert again.read_bytes() == image.read_bytes()
    other = ddi.assemble(fs, tmp_path / "other.raw", arch="x86-64", signer=signer, seed=b"bar")
    assert other.root_hash != res.root_hash  # the seed feeds the salt


@_tool("sfdisk")
def test_sfdisk(built) -> None:
    _, _, _, image, res = built
    run = subprocess.run(["sfdisk", "--verify", str(image)], capture_output=True, text=True)
    assert run.returncode == 0 and "No errors detected" in run.stdout, run.stdout + run.stderr
    table = json.loads(subprocess.run(["sfdisk", "--json", str(image)], capture_output=True, text=True,
                                      check=True).stdout)["partitiontable"]
    assert [(q["type"].lower(), q["uuid"].lower(), q["name"], q["start"] * 512, q["size"] * 512, q["attrs"])
            for q in table["partitions"]] == \
        [(p.type_guid, p.uuid, p.label, p.offset, p.size, "GUID:60") for p in res.partitions]
    assert [q["type"].lower() for q in table["partitions"]] == [str(u) for u in gpt.ROOT_TYPES["x86-64"]]


@_tool("veritysetup")
def test_veritysetup_agrees(built, tmp_path: Path) -> None:
    _, _, _, image, res = built
    data, hashdev = tmp_path / "data", tmp_path / "hash"
    data.write_bytes(_part(image, res.partitions[0]))
    hashdev.write_bytes(_part(image, res.partitions[1]))
    subprocess.run(["veritysetup", "verify", str(data), str(hashdev), res.root_hash], check=True,
                   capture_output=True)
    dump = subprocess.run(["veritysetup", "dump", str(hashdev)], check=True, capture_output=True,
                          text=True).stdout
    salt, vuuid = verity.derive_salt_uuid(b"foo")
    blocks = res.partitions[0].size // 4096
    assert re.search(rf"UUID:\s+{uuid.UUID(bytes=vuuid)}\n", dump)
    assert re.search(rf"Salt:\s+{salt.hex()}\n", dump)
    assert re.search(rf"Data blocks:\s+{blocks}\n", dump)
    # The strongest check: veritysetup format on the same data writes exactly our partition.
    ref = tmp_path / "ref"
    out = subprocess.run(["veritysetup", "format", f"--salt={salt.hex()}", f"--uuid={uuid.UUID(bytes=vuuid)}",
                          str(data), str(ref)], check=True, capture_output=True, text=True).stdout
    assert re.search(rf"Root hash:\s+{res.root_hash}\n", out)
    assert ref.read_bytes() == hashdev.read_bytes()


@_tool("openssl")
def test_openssl_accepts_signature_without_signed_attributes(built, tmp_path: Path) -> None:
    _, _, signer, image, res = built
    obj = pkcs7.parse_signature_partition(_part(image, res.partitions[2]))
    assert list(obj) == ["rootHash", "certificateFingerprint", "signature"]
    assert obj["rootHash"] == res.root_hash and obj["certificateFingerprint"] == signer.fingerprint
    sig = tmp_path / "sig.der"
    sig.write_bytes(base64.b64decode(obj["signature"]))
    content = tmp_path / "hash.txt"
    content.write_text(res.root_hash)
    run = subprocess.run(["openssl", "smime", "-verify", "-binary", "-inform", "DER", "-in", str(sig),
                          "-content", str(content), "-certfile", str(signer.cert_path), "-nointern",
                          "-noverify"], capture_output=True, text=True)
    assert run.returncode == 0 and "Verification successful" in run.stderr, run.stderr
    printed = subprocess.run(["openssl", "cms", "-cmsout", "-print", "-inform", "DER", "-in", str(sig)],
                             capture_output=True, text=True, check=True).stdout
    assert re.search(r"signedAttrs:\s*\n\s*<ABSENT>", printed)
    assert "eContent: <ABSENT>" in printed  # detached
    content.write_text("0" * 64)
    run = subprocess.run(["openssl", "smime", "-verify", "-binary", "-inform", "DER", "-in", str(sig),
                          "-content", str(content), "-certfile", str(signer.cert_path), "-nointern",
                          "-noverify"], capture_output=True, text=True)
    assert run.returncode != 0


def _can_loop() -> bool:
    return os.geteuid() == 0 and os.path.exists("/dev/loop-control")


@_tool("systemd-dissect")
@pytest.mark.skipif(not _can_loop(), reason="systemd-dissect needs root and loop devices")
def test_systemd_dissect_sees_a_signed_sysext(built) -> None:
    _, _, _, image, res = built
    run = subprocess.run(["systemd-dissect", "--json=short", str(image)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    info = json.loads(run.stdout)
    mounts = {m["designator"]: m for m in info["mounts"]}
    assert set(mounts) == {"root", "root-verity", "root-verity-sig"}
    assert mounts["root"]["verity"] == "signed"
    assert mounts["root"]["fstype"] == "erofs"
    assert mounts["root"]["partition_uuid"] == res.partitions[0].uuid
    assert mounts["root-verity-sig"]["fstype"] == "verity_hash_signature"
    assert info["useSystemExtension"] is True
    assert "ID=_any" in info["extensionRelease"]


def _sysext_merge(tmp: Path, image: Path, name: str) -> subprocess.CompletedProcess:
    """Merge ``image`` as ``name`` into a scratch root inside a private mount namespace.

    /run is not a mount point on every machine and systemd-sysext remounts it MS_SLAVE, so a
    tmpfs goes there; ``/`` is made rshared inside the namespace so the overlay mounted by
    systemd-sysext's own child namespace propagates back to this one (never to the host).
    """
    root = tmp / "root"
    (root / "usr/lib").mkdir(parents=True)
    (root / "usr/lib/os-release").write_text("ID=debian\nVERSION_ID=12\n")
    (root / "var/lib/extensions").mkdir(parents=True)
    shutil.copyfile(image, root / "var/lib/extensions" / name)
    script = (f"mount --make-rshared / && mount -t tmpfs tmpfs /run && "
              f"systemd-sysext --root={root} merge && "
              f"cat {root}/usr/share/foo/blob | sha256sum && ls {root}/usr/bin {root}/opt/foo")
    env = dict(os.environ, SYSTEMD_DISSECT_VERITY_EMBEDDED="0")  # no device-mapper here
    return subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, env=env)


@_tool("systemd-sysext")
@_tool("unshare")
@pytest.mark.skipif(not _can_loop(), reason="systemd-sysext merge needs root and loop devices")
def test_systemd_sysext_merges_it(built, tmp_path: Path) -> None:
    tmp, _, _, image, _ = built
    run = _sysext_merge(tmp_path, image, "foo.sysext.raw")
    assert run.returncode == 0, run.stdout + run.stderr
    import hashlib
    blob = (tmp / "tree/usr/share/foo/blob").read_bytes()
    assert hashlib.sha256(blob).hexdigest() in run.stdout
    assert "hello" in run.stdout and "readme" in run.stdout


@_tool("systemd-sysext")
@_tool("unshare")
@pytest.mark.skipif(not _can_loop(), reason="systemd-sysext merge needs root and loop devices")
@pytest.mark.parametrize(("release_name", "strict0", "image_name", "merges"), [
    ("foo", False, "foo.sysext.raw", False),  # systemd 252 wants extension-release.foo.sysext
    ("foo.sysext", False, "foo.sysext.raw", True),
    ("foo", True, "foo.sysext.raw", True),  # the xattr escape hatch works everywhere
    ("foo", True, "foo_1.2.sysext.raw", True),
])
def test_extension_release_naming_on_this_systemd(tmp_path: Path, release_name: str, strict0: bool,
                                                  image_name: str, merges: bool) -> None:
    version = subprocess.run(["systemd-sysext", "--version"], capture_output=True, text=True).stdout
    major = int(re.search(r"systemd (\d+)", version).group(1))
    if major >= 255 and release_name == "foo" and not strict0:
        merges = True  # newer systemd strips .sysext.raw: extension-release.foo matches
    if major >= 255 and release_name == "foo.sysext" and not strict0:
        merges = False
    fs = make_erofs(stage(tmp_path / "tree", release_name, strict0=strict0), tmp_path / "fs.erofs")
    image = tmp_path / "img.raw"
    ddi.assemble(fs, image, arch="x86-64", signer=None, seed=b"n")
    run = _sysext_merge(tmp_path, image, image_name)
    assert (run.returncode == 0) == merges, run.stdout + run.stderr


def test_unsigned_has_two_partitions(built, tmp_path: Path) -> None:
    _, fs, _, _, _ = built
    res = ddi.assemble(fs, tmp_path / "u.raw", arch="arm64", signer=None, seed=b"foo")
    assert not res.signed and [p.role for p in res.partitions] == ["root", "root-verity"]
    assert [p.label for p in res.partitions] == ["root-arm64", "root-arm64-verity"]
    with open(tmp_path / "u.raw", "rb") as f:
        t = gpt.read_gpt(f)
    assert t.problems == [] and [p.type_guid for p in t.partitions] == list(gpt.ROOT_TYPES["arm64"][:2])


@pytest.mark.skipif(MKSQUASHFS is None, reason="mksquashfs (squashfs-tools) not installed")
def test_squashfs_with_unaligned_size_is_padded(tmp_path: Path) -> None:
    fs = make_squashfs(stage(tmp_path / "tree"), tmp_path / "fs.sqfs", pad=False)
    assert fs.stat().st_size % 4096  # so the partition needs zero padding up to 4 KiB
    res = ddi.assemble(fs, tmp_path / "s.raw", arch="x86-64", signer=None, seed=b"s")
    data = _part(tmp_path / "s.raw", res.partitions[0])
    size = fs.stat().st_size
    assert data[:size] == fs.read_bytes() and data[size:] == bytes(len(data) - size)
    with open(tmp_path / "s.raw", "rb") as f:
        assert verity.verify_tree(f, res.partitions[0].offset, res.partitions[0].size, f,
                                  res.partitions[1].offset, bytes.fromhex(res.root_hash)) == []


def test_user_errors(built, tmp_path: Path) -> None:
    _, fs, _, _, _ = built
    with pytest.raises(UserError, match="architecture"):
        ddi.assemble(fs, tmp_path / "x.raw", arch="vax", signer=None, seed=b"")
    with pytest.raises(UserError, match="cannot read"):
        ddi.assemble(tmp_path / "missing", tmp_path / "x.raw", arch="x86-64", signer=None, seed=b"")
    tiny = tmp_path / "tiny"
    tiny.write_bytes(b"x" * 100)
    with pytest.raises(UserError, match="smaller than 4 KiB"):
        ddi.assemble(tiny, tmp_path / "x.raw", arch="x86-64", signer=None, seed=b"")
    assert not (tmp_path / "x.raw").exists()


def test_progress_and_cancel_leave_no_output(built, tmp_path: Path) -> None:
    _, fs, _, _, _ = built
    events = []
    ddi.assemble(fs, tmp_path / "p.raw", arch="x86-64", signer=None, seed=b"", reporter=Reporter(events.append))
    tasks = {e.task for e in events}
    assert tasks == {"ddi: copy", "ddi: verity"}
    assert events[-1].done == events[-1].total
    rep = Reporter(lambda e: rep.cancel())
    with pytest.raises(Cancelled):
        ddi.assemble(fs, tmp_path / "c.raw", arch="x86-64", signer=None, seed=b"", reporter=rep)
    assert not (tmp_path / "c.raw").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".sysextant-tmp-")]
