"""Authenticode signatures checked by sbverify, osslsigncode and openssl, and by our own reader."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from signing_helpers import make_signer, sbverify, tool

from sysextant.core.errors import UserError
from sysextant.core.formats import der
from sysextant.core.formats.authenticode import (
    image_digest,
    pkcs7_signature,
    sign_pe,
    signature_length,
    signature_length_for,
    signed_size,
    spc_indirect_data,
    verify_authenticode,
)
from sysextant.core.formats.pe import parse_pe, pe_checksum
from sysextant.core.keys import Signer, load_signer

STUB = Path("/usr/lib/systemd/boot/efi/linuxx64.efi.stub")
pytestmark = pytest.mark.skipif(not STUB.is_file(), reason=f"{STUB} missing (Debian package systemd-boot-efi)")


needs_sbverify = tool("sbverify", "sbsigntool")
needs_osslsigncode = tool("osslsigncode", "osslsigncode")


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


@pytest.mark.parametrize("bits", [2048, 3072, 4096])
def test_signature_length_from_the_certificate_alone_is_exact(tmp_path: Path, bits: int) -> None:
    """The forecast knows the signature's length before any key is unlocked: from the certificate."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"db {bits} with a longer common name")])
    now = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=3650)).sign(key, hashes.SHA256()))
    (tmp_path / "k.key").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                       serialization.NoEncryption()))
    (tmp_path / "k.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "k.key").chmod(0o600)
    signer = load_signer(tmp_path / "k.key", tmp_path / "k.crt")
    assert signature_length_for(cert) == signature_length(signer) == len(pkcs7_signature(bytes(32), signer))
    out = signed_copy(tmp_path, signer)
    assert out.stat().st_size == signed_size(STUB.stat().st_size, signature_length_for(cert))


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


# --- verify_uki on damaged files: failed checks, never a traceback or "bad input" ----------------


@pytest.fixture(scope="module")
def uki(tmp_path_factory: pytest.TempPathFactory, signer: Signer) -> Path:
    """A signed UKI: the stub, small metadata sections and a 64 KiB bzImage-shaped stand-in kernel."""
    import random
    import struct

    from sysextant.core.formats.uki import build_uki

    work = tmp_path_factory.mktemp("uki")
    kernel = bytearray(random.Random(3).randbytes(64 << 10))
    kernel[:2], kernel[0x202:0x206] = b"MZ", b"HdrS"
    struct.pack_into("<H", kernel, 0x20E, 0)  # no version string
    (work / "vmlinuz").write_bytes(bytes(kernel))
    sections = [(".osrel", b"ID=kairos\n"), (".cmdline", b"quiet"), (".initrd", bytes(range(256)) * 40),
                (".linux", work / "vmlinuz")]
    return build_uki(STUB, sections, work / "uki.efi", signer=signer).path


def _verify_cli(path: Path, cert: Path | None, capsys: pytest.CaptureFixture[str]) -> tuple[int, dict]:
    from sysextant.tui.cli import main

    code = main(["verify", str(path), "--json"] + (["--cert", str(cert)] if cert else []))
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err and not err, err
    return code, json.loads(out)


def test_good_uki_verifies(uki: Path, signer: Signer, capsys: pytest.CaptureFixture[str]) -> None:
    code, data = _verify_cli(uki, signer.cert_path, capsys)
    assert code == 0 and [c["name"] for c in data["checks"]] == ["pe", "sections", "signature"]
    code, data = _verify_cli(uki, None, capsys)  # no --cert: its own signer, trust not checked
    assert code == 0 and "trust NOT checked" in data["checks"][-1]["detail"]


@pytest.mark.parametrize("where", ["certificate table", ".linux", "section table"])
def test_truncated_uki_says_so_once(uki: Path, signer: Signer, tmp_path: Path, where: str,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    raw = uki.read_bytes()
    pe = parse_pe(uki)
    at = {"certificate table": len(raw) - 100, ".linux": pe.section(".linux").raw_offset + 1000,
          "section table": pe.section_table_offset + 3 * 40 + 7}[where]
    short = tmp_path / "short.efi"
    short.write_bytes(raw[:at])
    for cert in (signer.cert_path, None):
        code, data = _verify_cli(short, cert, capsys)
        assert code == 1, data
        assert data["checks"] == [{"name": "pe", "ok": False, "detail": f"truncated at {at} of {len(raw)} bytes"}]
    assert verify_authenticode(short, signer.cert_path) == [f"{short}: truncated at {at} of {len(raw)} bytes"]


def test_corrupt_uki_is_a_failed_verify_not_bad_input(uki: Path, signer: Signer, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    import struct

    raw = bytearray(uki.read_bytes())
    pe = parse_pe(uki)
    # The second section's data made to start inside the first's: the digest cannot be computed.
    entry = pe.section_table_offset + 40 + 20
    struct.pack_into("<I", raw, entry, pe.sections[0].raw_offset + 16)
    bad = tmp_path / "bad.efi"
    bad.write_bytes(bytes(raw))
    code, data = _verify_cli(bad, signer.cert_path, capsys)
    failed = [c for c in data["checks"] if not c["ok"]]
    assert code == 1 and [c["name"] for c in failed] == ["signature"] and "overlaps" in failed[0]["detail"]
    junk = tmp_path / "junk.efi"
    junk.write_bytes(b"MZ" + bytes(range(256)) * 8)
    code, data = _verify_cli(junk, signer.cert_path, capsys)
    assert code == 1 and data["checks"][0]["name"] == "pe" and "not a PE/EFI image" in data["checks"][0]["detail"]


@pytest.mark.parametrize("version", [3, 0x7F])
def test_malformed_certificate_in_the_uki(uki: Path, signer: Signer, tmp_path: Path, version: int,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    """python-cryptography raises InvalidVersion on such a certificate: a one-line failed check."""
    raw = uki.read_bytes()
    offset, _ = parse_pe(uki).security
    at = raw.index(b"\xa0\x03\x02\x01\x02", offset) + 4  # the embedded certificate's version (v3 = 2)
    bad = tmp_path / "bad.efi"
    bad.write_bytes(raw[:at] + bytes([version]) + raw[at + 1:])
    problems = verify_authenticode(bad, signer.cert_path)
    assert len(problems) == 1 and "embedded certificate 1 is malformed" in problems[0]
    code, data = _verify_cli(bad, signer.cert_path, capsys)
    assert code == 1 and "\n" not in data["checks"][-1]["detail"]
    if shutil.which("sbverify"):
        assert not sbverify(bad, signer.cert_path)


@pytest.mark.parametrize(("what", "old", "new", "words"), [
    ("SignerInfo version", b"\x02\x01\x01\x30", b"\x02\x01\x00\x30", "SignerInfo version 0"),
    ("signature algorithm", bytes.fromhex("06092a864886f70d01010105000482"),
     bytes.fromhex("06092a864886f70d01010005000482"), "is not RSA"),
])
def test_fields_sbverify_lets_pass(tmp_path: Path, signer: Signer, what: str, old: bytes, new: bytes,
                                   words: str) -> None:
    """Fields sbverify and osslsigncode do not check, but RFC 2315 and the kernel's PE verifier do."""
    out = signed_copy(tmp_path, signer)
    raw = out.read_bytes()
    assert raw.count(old) == 1, what
    out.write_bytes(raw.replace(old, new))
    assert any(words in p for p in verify_authenticode(out, signer.cert_path))
    if shutil.which("sbverify"):
        assert sbverify(out, signer.cert_path)  # the reason these checks are ours
