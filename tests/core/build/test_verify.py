"""verify_image: passes on a good DDI, and each kind of damage fails the check that names it."""

from __future__ import annotations

import base64
import json
import os
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

from sysextant.core.build.verify import image_names, parse_os_release, verify_image
from sysextant.core.formats import ddi, pkcs7

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
    # the root hash the verity check recomputed is a field, not words in its detail
    verity = report.check("verity")
    assert verity.root_hash == res.root_hash and "root hash" not in verity.detail
    assert all(c.root_hash is None for c in report.checks if c is not verity)
    data = json.loads(report.to_json())
    assert data["ok"] == report.ok and data["root_hash"] == res.root_hash
    assert [c["name"] for c in data["checks"]] == _names(report)
    # the JSON (and `verify`'s lines) as before: the root hash at the end of verity's detail
    assert data["checks"][3] == {"name": "verity", "ok": True,
                                 "detail": f"{verity.detail}; root hash {res.root_hash}"}


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
    assert all(c.root_hash is None for c in report.failed())  # a fact only of a check that passed
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


# --- truncation, malformed certificates, certificate chains ------------------------------------


def _cli_verify(image: Path, cert: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, dict]:
    """`sysextant verify --json`: exit code and the report; never a traceback."""
    from sysextant.tui.cli import main

    code = main(["verify", str(image), "--cert", str(cert), "--json"])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, json.loads(out)


@pytest.mark.parametrize("cut", ["backup GPT", "signature partition", "data partition", "MBR"])
def test_truncated_image_says_so_once(good, tmp_path: Path, cut: str,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    _, signer, image, res = good
    raw = image.read_bytes()
    at = {"backup GPT": len(raw) - 700, "signature partition": res.partitions[2].offset + 5000,
          "data partition": res.partitions[0].offset + 123457, "MBR": 300}[cut]
    short = tmp_path / "foo.sysext.raw"
    short.write_bytes(raw[:at])
    code, data = _cli_verify(short, signer.cert_path, capsys)
    names = [c["name"] for c in data["checks"]]
    assert code == 1 and not data["ok"]
    assert len(names) == len(set(names)), names  # one verdict per check
    if cut == "MBR":  # nothing says how long it should be: just a broken GPT
        assert names == ["gpt"]
        return
    gpt_check = data["checks"][0]
    assert gpt_check["name"] == "gpt" and not gpt_check["ok"]
    assert gpt_check["detail"].startswith(f"truncated at {at} of {len(raw)} bytes")
    assert "backup" not in gpt_check["detail"].split(")", 1)[1]  # no echo of the missing backup
    if cut == "backup GPT":  # all partitions are whole: they are still checked, and pass
        assert [c["name"] for c in data["checks"] if not c["ok"]] == ["gpt"]
    else:
        assert names == ["gpt", "layout"]
        assert "runs past the end of the file" in data["checks"][1]["detail"]


def _resigned(res, signer, der: bytes, image: Path, out: Path) -> Path:
    """``image`` with its signature partition holding ``der`` instead."""
    raw = bytearray(image.read_bytes())
    sp = res.partitions[2]
    part = pkcs7.signature_json(res.root_hash, signer.fingerprint, der)
    raw[sp.offset:sp.offset + sp.size] = part + bytes(sp.size - len(part))
    out.write_bytes(bytes(raw))
    return out


def _der_of(image: Path, res) -> bytes:
    sp = res.partitions[2]
    obj = pkcs7.parse_signature_partition(image.read_bytes()[sp.offset:sp.offset + sp.size])
    return base64.b64decode(obj["signature"])


@pytest.mark.parametrize("version", [3, 0x7F])
def test_malformed_embedded_certificate_is_a_failed_check(good, tmp_path: Path, version: int,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """python-cryptography raises InvalidVersion on such a certificate: a failed check, not a crash."""
    _, signer, image, res = good
    der = _der_of(image, res)
    at = der.index(b"\xa0\x03\x02\x01\x02") + 4  # the embedded certificate's version (v3 = 2)
    bad = _resigned(res, signer, der[:at] + bytes([version]) + der[at + 1:], image, tmp_path / "foo.sysext.raw")
    code, data = _cli_verify(bad, signer.cert_path, capsys)
    failed = [c for c in data["checks"] if not c["ok"]]
    assert code == 1 and [c["name"] for c in failed] == ["signature"]
    assert "embedded certificate 1 is malformed" in failed[0]["detail"]
    assert "\n" not in failed[0]["detail"]
    assert not verify_image(bad).check("signature").ok  # without --cert as well


def _ca_and_leaf(tmp_path: Path):
    """A CA certificate (the one given to verify) and a leaf it issued, with the leaf's key."""
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import rsa

    ca = demo_signer(tmp_path / "ca")
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = dt.datetime.now(dt.UTC)
    leaf = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "leaf")]))
            .issuer_name(ca.cert.subject).public_key(key.public_key()).serial_number(7)
            .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=30))
            .sign(ca.key, hashes.SHA256()))
    return ca, leaf, key


def _leaf_signature(leaf, key, root_hash: str, extra=()) -> bytes:
    builder = cpkcs7.PKCS7SignatureBuilder().set_data(root_hash.encode()).add_signer(leaf, key, hashes.SHA256())
    for cert in extra:
        builder = builder.add_certificate(cert)
    return builder.sign(serialization.Encoding.DER, [cpkcs7.PKCS7Options.DetachedSignature,
                                                     cpkcs7.PKCS7Options.NoAttributes, cpkcs7.PKCS7Options.Binary])


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl missing")
def test_signer_chaining_to_the_given_certificate(good, tmp_path: Path) -> None:
    """A signer issued by the given certificate passes, as with openssl cms -CAfile; the same
    signature checked against an unrelated certificate does not."""
    _, signer, _, res = good
    ca, leaf, key = _ca_and_leaf(tmp_path)
    der = _leaf_signature(leaf, key, res.root_hash)
    blob = pkcs7.signature_json(res.root_hash, leaf.fingerprint(hashes.SHA256()).hex(), der)
    assert pkcs7.check_signature(blob, res.root_hash, ca.cert) == []
    problems = pkcs7.check_signature(blob, res.root_hash, signer.cert)
    assert len(problems) == 1 and "does not chain to it" in problems[0]
    (tmp_path / "sig.der").write_bytes(der)
    (tmp_path / "hash").write_text(res.root_hash)
    for anchor, ok in ((ca.cert_path, True), (signer.cert_path, False)):
        run = subprocess.run(["openssl", "cms", "-verify", "-binary", "-inform", "DER", "-in", str(tmp_path / "sig.der"),
                              "-content", str(tmp_path / "hash"), "-CAfile", str(anchor), "-partial_chain",
                              "-purpose", "any", "-no_check_time", "-out", os.devnull], capture_output=True)
        assert (run.returncode == 0) == ok


def test_signature_without_its_certificate_fails(good) -> None:
    """The kernel would look the key up in its keyring; verify wants the signer embedded."""
    _, signer, _, res = good
    der = (cpkcs7.PKCS7SignatureBuilder().set_data(res.root_hash.encode())
           .add_signer(signer.cert, signer.key, hashes.SHA256())
           .sign(serialization.Encoding.DER, [cpkcs7.PKCS7Options.DetachedSignature, cpkcs7.PKCS7Options.NoAttributes,
                                              cpkcs7.PKCS7Options.Binary, cpkcs7.PKCS7Options.NoCerts]))
    problems = pkcs7.check_signature(pkcs7.signature_json(res.root_hash, signer.fingerprint, der),
                                     res.root_hash, signer.cert)
    assert problems == ["PKCS#7 signer certificate is not embedded (no certificate has the SignerInfo's "
                        "issuer and serial)"]


@pytest.mark.parametrize(("what", "old", "new", "words"), [
    ("SignedData version", b"\x02\x01\x01\x31", b"\x02\x01\x00\x31", "SignedData version 0"),
    ("signature algorithm", bytes.fromhex("06092a864886f70d01010105000482"),  # then the signature
     bytes.fromhex("06092a864886f70d01010b05000482"), "expected rsaEncryption"),
    ("digest parameters", bytes.fromhex("06096086480165030402010500300b"),  # then encapContentInfo
     bytes.fromhex("06096086480165030402010400300b"), "parameters other than NULL"),
])
def test_fields_openssl_lets_pass(good, what: str, old: bytes, new: bytes, words: str) -> None:
    """Fields openssl cms -verify does not check but the kernel (or the standard) does."""
    _, signer, image, res = good
    der = _der_of(image, res)
    assert der.count(old) == 1, what
    blob = pkcs7.signature_json(res.root_hash, signer.fingerprint, der.replace(old, new))
    problems = pkcs7.check_signature(blob, res.root_hash, signer.cert)
    assert any(words in p for p in problems), (what, problems)
