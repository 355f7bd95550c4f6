"""Authenticode signatures checked by sbverify, osslsigncode and openssl, and by our own reader."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from sysextant.core import der
from sysextant.core.authenticode import (
    image_digest,
    pkcs7_signature,
    sign_pe,
    signature_length,
    signed_size,
    spc_indirect_data,
    verify_authenticode,
)
from sysextant.core.errors import UserError
from sysextant.core.keys import Signer, generate_demo_pair, load_signer
from sysextant.core.pe import parse_pe, pe_checksum

STUB = Path("/usr/lib/systemd/boot/efi/linuxx64.efi.stub")
pytestmark = pytest.mark.skipif(not STUB.is_file(), reason=f"{STUB} missing (Debian package systemd-boot-efi)")


def tool(name: str, package: str):
    return pytest.mark.skipif(shutil.which(name) is None, reason=f"{name} missing (Debian package {package})")


needs_sbverify = tool("sbverify", "sbsigntool")
needs_osslsigncode = tool("osslsigncode", "osslsigncode")


def make_signer(directory: Path, name: str) -> Signer:
    key_pem, cert_pem = generate_demo_pair(common_name=f"test {name}")
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{name}.key").write_bytes(key_pem)
    (directory / f"{name}.crt").write_bytes(cert_pem)
    return load_signer(directory / f"{name}.key", directory / f"{name}.crt")


@pytest.fixture(scope="module")
def signer(tmp_path_factory: pytest.TempPathFactory) -> Signer:
    return make_signer(tmp_path_factory.mktemp("keys"), "db")


@pytest.fixture(scope="module")
def other(tmp_path_factory: pytest.TempPathFactory) -> Signer:
    return make_signer(tmp_path_factory.mktemp("keys"), "other")


def signed_copy(tmp_path: Path, signer: Signer, name: str = "signed.efi") -> Path:
    out = tmp_path / name
    shutil.copy(STUB, out)
    with open(out, "r+b") as fh:
        sign_pe(fh, signer)
    return out


def sbverify(path: Path, cert: Path) -> bool:
    return subprocess.run(["sbverify", "--cert", str(cert), str(path)], capture_output=True).returncode == 0


def osslsigncode_verify(path: Path, cert: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["osslsigncode", "verify", "-CAfile", str(cert), "-in", str(path)],
                          capture_output=True, text=True)


@needs_sbverify
@needs_osslsigncode
def test_real_tools_accept_our_signature(tmp_path: Path, signer: Signer) -> None:
    out = signed_copy(tmp_path, signer)
    assert sbverify(out, signer.cert_path)
    res = osslsigncode_verify(out, signer.cert_path)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "Signature verification: ok" in res.stdout
    assert verify_authenticode(out, signer.cert_path) == []


@needs_osslsigncode
def test_digest_and_checksum_match_osslsigncode(tmp_path: Path, signer: Signer) -> None:
    out = signed_copy(tmp_path, signer)
    res = osslsigncode_verify(out, signer.cert_path)
    calculated = re.search(r"Calculated message digest\s*:\s*([0-9A-F]+)", res.stdout).group(1)
    with open(out, "rb") as fh:
        pe = parse_pe(fh)
        assert image_digest(fh, pe).hex().upper() == calculated
        stored = pe.checksum
        assert pe_checksum(fh, pe) == stored
    assert re.search(r"PE checksum\s*:\s*([0-9A-F]+)", res.stdout).group(1) == f"{stored:08X}"
    assert "MISMATCH" not in res.stdout


@needs_sbverify
def test_checksum_equals_sbsign(tmp_path: Path, signer: Signer) -> None:
    """sbsign recomputes the CheckSum over the signed file the same way."""
    if shutil.which("sbsign") is None:
        pytest.skip("sbsign missing (sbsigntool)")
    theirs = tmp_path / "sbsign.efi"
    subprocess.run(["sbsign", "--key", str(signer.key_path), "--cert", str(signer.cert_path),
                    "--output", str(theirs), str(STUB)], check=True, capture_output=True)
    with open(theirs, "rb") as fh:
        pe = parse_pe(fh)
        assert pe_checksum(fh, pe) == pe.checksum
        # the image digest sbsign signed is the one we compute for the same unsigned bytes
        ours = signed_copy(tmp_path, signer)
        with open(ours, "rb") as mine:
            assert image_digest(fh, pe) == image_digest(mine)
    # our reader accepts sbsign's signature too (it has extra attributes such as signingTime)
    assert verify_authenticode(theirs, signer.cert_path) == []


@needs_sbverify
@needs_osslsigncode
def test_wrong_certificate_fails(tmp_path: Path, signer: Signer, other: Signer) -> None:
    out = signed_copy(tmp_path, signer)
    assert not sbverify(out, other.cert_path)
    assert osslsigncode_verify(out, other.cert_path).returncode != 0
    problems = verify_authenticode(out, other.cert_path)
    assert any("different certificate" in p for p in problems)
    assert any("does not verify" in p for p in problems)


@needs_sbverify
@needs_osslsigncode
@pytest.mark.parametrize("where", [".text", ".data", ".sbat", "header"])
def test_modified_image_fails(tmp_path: Path, signer: Signer, where: str) -> None:
    out = signed_copy(tmp_path, signer)
    pe = parse_pe(out)
    offset = 0x50 if where == "header" else pe.section(where).raw_offset + 3
    data = bytearray(out.read_bytes())
    data[offset] ^= 0x01
    out.write_bytes(data)
    assert not sbverify(out, signer.cert_path)
    assert osslsigncode_verify(out, signer.cert_path).returncode != 0
    assert any("image digest does not match" in p for p in verify_authenticode(out, signer.cert_path))


def test_signing_is_deterministic(tmp_path: Path, signer: Signer) -> None:
    a = signed_copy(tmp_path, signer, "a.efi").read_bytes()
    b = signed_copy(tmp_path, signer, "b.efi").read_bytes()
    assert a == b


def test_signature_length_and_size_are_exact(tmp_path: Path, signer: Signer) -> None:
    out = signed_copy(tmp_path, signer)
    pe = parse_pe(out)
    offset, size = pe.security
    length = int.from_bytes(out.read_bytes()[offset:offset + 4], "little")
    assert length == 8 + signature_length(signer)
    assert size % 8 == 0 and offset % 8 == 0
    assert out.stat().st_size == signed_size(STUB.stat().st_size, signature_length(signer))
    assert offset + size == out.stat().st_size


def test_already_signed_is_refused(tmp_path: Path, signer: Signer) -> None:
    out = signed_copy(tmp_path, signer)
    with open(out, "r+b") as fh, pytest.raises(UserError, match="already signed"):
        sign_pe(fh, signer)


def test_unsigned_file_reports_no_signature(signer: Signer) -> None:
    assert verify_authenticode(STUB, signer.cert_path) == [f"{STUB} is not signed (no certificate table)"]


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl missing")
def test_openssl_parses_the_pkcs7(tmp_path: Path, signer: Signer) -> None:
    blob = tmp_path / "sig.der"
    blob.write_bytes(pkcs7_signature(bytes(range(32)), signer))
    # openssl cms rejects Authenticode (its eContent is not an OCTET STRING); pkcs7 reads it.
    res = subprocess.run(["openssl", "pkcs7", "-inform", "DER", "-in", str(blob), "-print"],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "pkcs7-signedData" in res.stdout
    assert "1.3.6.1.4.1.311.2.1.4" in res.stdout
    assert "messageDigest" in res.stdout and "contentType" in res.stdout
    assert "signingTime" not in res.stdout


def test_message_digest_covers_content_without_outer_header(signer: Signer) -> None:
    import hashlib
    digest = bytes(range(32))
    content = spc_indirect_data(digest)
    sd = der.parse(pkcs7_signature(digest, signer)).children()[1].children()[0].children()
    attrs = sd[-1].children()[0].children()[3]
    values = {a.children()[0].as_oid(): a.children()[1].children()[0] for a in attrs.children()}
    assert values["1.2.840.113549.1.9.4"].content == hashlib.sha256(der.parse(content).content).digest()
    # the PE image data is what sbsign writes: empty flags, <<<Obsolete>>> file link
    assert "<<<Obsolete>>>".encode("utf-16-be") in content
    assert b"\x03\x01\x00\xa0\x20\xa2\x1e\x80\x1c" in content


@pytest.mark.parametrize("value,encoded", [(0, "020100"), (127, "02017f"), (128, "02020080"),
                                           (256, "02020100"), (-1, "0201ff")])
def test_der_integer(value: int, encoded: str) -> None:
    assert der.integer(value).hex() == encoded
    assert der.parse(der.integer(value)).as_int() == value


@pytest.mark.parametrize("dotted", ["1.2.840.113549.1.7.2", "1.3.6.1.4.1.311.2.1.4", "2.16.840.1.101.3.4.2.1"])
def test_der_oid_roundtrip(dotted: str) -> None:
    assert der.parse(der.oid(dotted)).as_oid() == dotted


def test_der_long_lengths() -> None:
    for n in (0, 127, 128, 255, 256, 70000):
        node = der.parse(der.octets(bytes(n)))
        assert len(node.content) == n
    assert der.oid("1.2.840.113549").hex() == "06062a864886f70d"
