"""verify_image: passes on a good DDI, and each kind of damage fails the check that names it."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.serialization import pkcs7 as cpkcs7
from ddi_helpers import (
    MKFS_EROFS,
    MKSQUASHFS,
    UNSQUASHFS,
    demo_signer,
    erofs_reader_available,
    make_erofs,
    make_squashfs,
    stage,
)

from sysextant.core import ddi, pkcs7
from sysextant.core.verify import image_names, parse_os_release, verify_image

needs_erofs = pytest.mark.skipif(MKFS_EROFS is None, reason="mkfs.erofs (erofs-utils) not installed")
needs_squashfs = pytest.mark.skipif(MKSQUASHFS is None or UNSQUASHFS is None,
                                    reason="squashfs-tools not installed")
CONTENT = ("filesystem", "content-scope", "no-os-release", "extension-release")


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("verify")
    if MKFS_EROFS is None:
        pytest.skip("mkfs.erofs (erofs-utils) not installed")
    fs = make_erofs(stage(tmp / "tree", "foo", strict0=True), tmp / "fs.erofs")
    signer = demo_signer(tmp / "keys")
    image = tmp / "foo.sysext.raw"
    res = ddi.assemble(fs, image, arch="x86-64", signer=signer, seed=b"foo")
    return tmp, signer, image, res


def _names(report) -> list[str]:
    return [c.name for c in report.checks]


def _assert_good(report, content: bool) -> None:
    bad = [(c.name, c.detail) for c in report.failed()]
    if content:
        assert report.ok, bad
        assert set(CONTENT) <= set(_names(report))
    else:  # content checks wait for the EROFS reader (core/erofs.py) to be merged
        assert bad == [("content", "content not checked: the EROFS reader is not available")]


def test_good_image_passes(good) -> None:
    _, signer, image, res = good
    report = verify_image(image, signer.cert_path)
    assert _names(report)[:5] == ["gpt", "layout", "partition-uuids", "verity", "signature"]
    _assert_good(report, erofs_reader_available())
    assert report.root_hash == res.root_hash and report.architecture == "x86-64" and report.signed
    assert report.filesystem == "erofs"
    assert report.check("signature").detail == "signed by the given certificate"
    data = json.loads(report.to_json())
    assert data["ok"] == report.ok and data["root_hash"] == res.root_hash
    assert [c["name"] for c in data["checks"]] == _names(report)


def test_without_cert_signature_is_checked_but_trust_is_not(good) -> None:
    _, _, image, _ = good
    report = verify_image(image)
    sig = report.check("signature")
    assert sig.ok and "trust NOT checked" in sig.detail


def _damaged(good, tmp_path: Path, offset_of, delta: int = 0, value: int | None = None) -> Path:
    _, _, image, res = good
    raw = bytearray(image.read_bytes())
    pos = offset_of(res) + delta
    raw[pos] = (raw[pos] ^ 0x01) if value is None else value
    out = tmp_path / "foo.sysext.raw"
    out.write_bytes(bytes(raw))
    return out


@pytest.mark.parametrize(("what", "offset_of", "check"), [
    ("data partition", lambda r: r.partitions[0].offset + 40000, "verity"),
    ("filesystem superblock", lambda r: r.partitions[0].offset + 1024 + 20, "verity"),
    ("hash partition tree", lambda r: r.partitions[1].offset + 4096 + 100, "verity"),
    ("hash partition superblock", lambda r: r.partitions[1].offset + 0x60, "verity"),
    ("signature JSON rootHash", lambda r: r.partitions[2].offset + 14, "signature"),
    ("signature PKCS#7", lambda r: r.partitions[2].offset + 400, "signature"),
    ("primary GPT header", lambda r: 512 + 24, "gpt"),
    ("backup GPT entry array", lambda r: r.size - 33 * 512 + 5, "gpt"),
])
def test_damage_fails_the_named_check(good, tmp_path: Path, what: str, offset_of, check: str) -> None:
    _, signer, _, _ = good
    report = verify_image(_damaged(good, tmp_path, offset_of), signer.cert_path)
    assert not report.ok
    failed = {c.name for c in report.failed()} - {"content"}
    assert check in failed, (what, [(c.name, c.detail) for c in report.checks])
    # Damage in one place is not blamed on unrelated parts.
    assert failed <= {check, "partition-uuids", "filesystem", "extension-release"}, what


def test_wrong_certificate_fails(good, tmp_path: Path) -> None:
    _, _, image, _ = good
    other = demo_signer(tmp_path / "other")
    report = verify_image(image, other.cert_path)
    assert {c.name for c in report.failed()} - {"content"} == {"signature"}
    assert "not the given certificate" in report.check("signature").detail


def test_unsigned_image(good, tmp_path: Path) -> None:
    tmp, signer, _, _ = good
    image = tmp_path / "foo.sysext.raw"
    ddi.assemble(tmp / "fs.erofs", image, arch="x86-64", signer=None, seed=b"u")
    report = verify_image(image)
    assert report.check("signature").ok and "unsigned" in report.check("signature").detail
    assert not report.signed
    assert not verify_image(image, signer.cert_path).check("signature").ok


def test_signed_attributes_are_refused_although_openssl_accepts_them(good, tmp_path: Path) -> None:
    """The default PKCS#7 builder adds signed attributes (smimeCapabilities); the kernel refuses them."""
    _, signer, _, res = good
    der = (cpkcs7.PKCS7SignatureBuilder().set_data(res.root_hash.encode())
           .add_signer(signer.cert, signer.key, hashes.SHA256())
           .sign(serialization.Encoding.DER, [cpkcs7.PKCS7Options.DetachedSignature, cpkcs7.PKCS7Options.Binary]))
    blob = pkcs7.signature_json(res.root_hash, signer.fingerprint, der)
    problems = pkcs7.check_signature(blob, res.root_hash, signer.cert)
    assert any("signed attributes" in p for p in problems)
    if shutil.which("openssl"):
        (tmp_path / "sig.der").write_bytes(der)
        (tmp_path / "hash").write_text(res.root_hash)
        run = subprocess.run(["openssl", "smime", "-verify", "-binary", "-inform", "DER", "-in",
                              str(tmp_path / "sig.der"), "-content", str(tmp_path / "hash"), "-certfile",
                              str(signer.cert_path), "-nointern", "-noverify"], capture_output=True)
        assert run.returncode == 0


def test_signature_json_problems(good) -> None:
    _, signer, _, res = good
    part = pkcs7.signature_partition(signer, res.root_hash)
    assert len(part) == 16384 and pkcs7.check_signature(part, res.root_hash, signer.cert) == []
    assert pkcs7.check_signature(b"not json", res.root_hash, None)
    obj = pkcs7.parse_signature_partition(part)
    obj["certificateFingerprint"] = "0" * 64
    assert any("Fingerprint" in p for p in
               pkcs7.check_signature(json.dumps(obj).encode(), res.root_hash, signer.cert))
    obj = pkcs7.parse_signature_partition(part)
    obj["signature"] = base64.b64encode(b"\x30\x03\x02\x01\x01").decode()
    assert any("malformed" in p for p in pkcs7.check_signature(json.dumps(obj).encode(), res.root_hash, None))


def test_image_names_follow_systemd() -> None:
    assert image_names("foo.sysext.raw") == {"252": "foo.sysext", ">=255": "foo"}
    assert image_names("foo_1.2.sysext.raw") == {"252": "foo_1.2.sysext", ">=255": "foo"}
    assert image_names("bar.raw") == {"252": "bar", ">=255": "bar"}


def test_parse_os_release() -> None:
    assert parse_os_release('# c\nID=_any\nNAME="Foo \\"x\\""\nV=\'a b\'\n\n') == \
        {"ID": "_any", "NAME": 'Foo "x"', "V": "a b"}
    for bad in ("ID", "1A=b", "ID=a b", 'ID="x'):
        with pytest.raises(ValueError):
            parse_os_release(bad)


def _content_report(tmp_path: Path, make, *, release_name="foo", strict0=False, extra=None,
                    release=b"ID=_any\nARCHITECTURE=x86-64\n", image_name="foo.sysext.raw"):
    fs = make(stage(tmp_path / "tree", release_name, strict0=strict0, extra=extra, release=release),
              tmp_path / "fs.img")
    image = tmp_path / image_name
    ddi.assemble(fs, image, arch="x86-64", signer=None, seed=b"c")
    return verify_image(image)


def _makers():
    out = []
    if MKSQUASHFS and UNSQUASHFS:
        out.append(pytest.param(make_squashfs, id="squashfs"))
    if MKFS_EROFS and erofs_reader_available():
        out.append(pytest.param(make_erofs, id="erofs"))
    return out or [pytest.param(None, marks=pytest.mark.skip(reason="no filesystem tools / reader"))]


@pytest.mark.parametrize("make", _makers())
@pytest.mark.parametrize(("kwargs", "check", "ok", "words"), [
    ({}, "extension-release", True, "systemd 252 would not find it"),
    ({"release_name": "foo.sysext"}, "extension-release", True, "systemd >=255 would not find it"),
    ({"strict0": True}, "extension-release", True, "strict=0"),
    ({"strict0": True, "image_name": "foo_2.sysext.raw"}, "extension-release", True, "strict=0"),
    ({"image_name": "bar.sysext.raw"}, "extension-release", False, "does not match the image name"),
    ({"release": b"VERSION_ID=1\n"}, "extension-release", False, "no ID="),
    ({"release": b"ID=_any\nARCHITECTURE=arm64\n"}, "extension-release", False, "ARCHITECTURE=arm64"),
    ({"release": b"ID=_any\nBROKEN LINE\n"}, "extension-release", False, "not os-release syntax"),
    ({"extra": {"etc/foo.conf": b"x"}}, "content-scope", False, "etc"),
    ({"extra": {"usr/lib/os-release": b"ID=x\n"}}, "no-os-release", False, "usr/lib/os-release"),
])
def test_content_rules(tmp_path: Path, make, kwargs: dict, check: str, ok: bool, words: str) -> None:
    report = _content_report(tmp_path, make, **kwargs)
    c = report.check(check)
    assert c is not None and c.ok == ok and words in c.detail, [(x.name, x.ok, x.detail) for x in report.checks]
    assert report.ok == ok


@needs_squashfs
def test_squashfs_good_image_passes_everything(tmp_path: Path) -> None:
    report = _content_report(tmp_path, make_squashfs, strict0=True)
    assert report.ok, [(c.name, c.detail) for c in report.failed()]
    assert report.filesystem == "squashfs"


@needs_erofs
def test_not_a_filesystem(tmp_path: Path) -> None:
    blob = tmp_path / "blob"
    blob.write_bytes(b"\x01" * 8192)
    ddi.assemble(blob, tmp_path / "x.raw", arch="x86-64", signer=None, seed=b"")
    report = verify_image(tmp_path / "x.raw")
    assert not report.check("filesystem").ok
    assert report.check("verity").ok  # the tree is fine; the content is not a sysext


def test_garbage_file_fails_cleanly(tmp_path: Path) -> None:
    junk = tmp_path / "junk.raw"
    junk.write_bytes(b"\xff" * 100000)
    report = verify_image(junk)
    assert not report.ok and report.check("gpt") and not report.check("gpt").ok
