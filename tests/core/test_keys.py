"""The db key pair is checked before any work: every problem is one clear error naming the file."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from sysextant.core.errors import UserError
from sysextant.core.keys import (
    generate_demo_pair,
    key_mode_warning,
    load_signer,
    private_key_warnings,
)


def write_pair(folder: Path, key_pem: bytes, cert_pem: bytes) -> tuple[Path, Path]:
    key, cert = folder / "db.key", folder / "db.pem"
    key.write_bytes(key_pem)
    cert.write_bytes(cert_pem)
    return key, cert


def make_cert(key, *, days_valid: tuple[int, int] = (-1, 365), usage: bool | None = True) -> bytes:
    name = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "test db")])
    now = dt.datetime.now(dt.UTC)
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
               .serial_number(1).not_valid_before(now + dt.timedelta(days=days_valid[0]))
               .not_valid_after(now + dt.timedelta(days=days_valid[1])))
    if usage is not None:
        builder = builder.add_extension(x509.KeyUsage(
            digital_signature=usage, content_commitment=False, key_encipherment=not usage, data_encipherment=False,
            key_agreement=False, key_cert_sign=False, crl_sign=False, encipher_only=False, decipher_only=False),
            critical=True)
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def pem(key, password: bytes | None = None) -> bytes:
    enc = serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption()
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, enc)


def test_demo_pair_loads_and_fingerprint_is_sha256_of_der(tmp_path: Path) -> None:
    key, cert = write_pair(tmp_path, *generate_demo_pair())
    signer = load_signer(key, cert)
    der = x509.load_pem_x509_certificate(cert.read_bytes()).public_bytes(serialization.Encoding.DER)
    import hashlib

    assert signer.fingerprint == hashlib.sha256(der).hexdigest()
    assert "PRIVATE" not in repr(signer) and str(key) in repr(signer)


def test_missing_files(tmp_path: Path) -> None:
    key, cert = write_pair(tmp_path, *generate_demo_pair())
    with pytest.raises(UserError, match=r"signing key .*nope.key does not exist"):
        load_signer(tmp_path / "nope.key", cert)
    with pytest.raises(UserError, match=r"certificate .*nope.pem does not exist"):
        load_signer(key, tmp_path / "nope.pem")


def test_garbage(tmp_path: Path) -> None:
    key, cert = write_pair(tmp_path, *generate_demo_pair())
    (tmp_path / "junk").write_text("not pem")
    with pytest.raises(UserError, match="not a PEM or DER X.509 certificate"):
        load_signer(key, tmp_path / "junk")
    with pytest.raises(UserError, match="not a PEM private key"):
        load_signer(tmp_path / "junk", cert)


def test_cert_of_another_key(tmp_path: Path) -> None:
    key_pem, _ = generate_demo_pair()
    _, other_cert = generate_demo_pair()
    key, cert = write_pair(tmp_path, key_pem, other_cert)
    with pytest.raises(UserError, match="does not belong to the signing key"):
        load_signer(key, cert)


def test_expired_not_yet_valid_and_non_signing(tmp_path: Path) -> None:
    k = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    key, cert = write_pair(tmp_path, pem(k), make_cert(k, days_valid=(-30, -1)))
    with pytest.raises(UserError, match="expired"):
        load_signer(key, cert)
    cert.write_bytes(make_cert(k, days_valid=(2, 30)))
    with pytest.raises(UserError, match="not valid before"):
        load_signer(key, cert)
    cert.write_bytes(make_cert(k, usage=False))
    with pytest.raises(UserError, match="not allowed to sign"):
        load_signer(key, cert)
    cert.write_bytes(make_cert(k, usage=None))  # no KeyUsage at all: allowed
    assert load_signer(key, cert).key_path == key


def test_not_rsa(tmp_path: Path) -> None:
    k = ec.generate_private_key(ec.SECP256R1())
    key, cert = write_pair(tmp_path, pem(k), make_cert(k))
    with pytest.raises(UserError, match="not an RSA key"):
        load_signer(key, cert)


def test_encrypted_key_uses_the_named_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    k = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    key, cert = write_pair(tmp_path, pem(k, b"s3cret"), make_cert(k))
    monkeypatch.delenv("DB_PASS", raising=False)
    with pytest.raises(UserError, match=r"\$DB_PASS .* is not set"):
        load_signer(key, cert, passphrase_env="DB_PASS")
    monkeypatch.setenv("DB_PASS", "wrong")
    with pytest.raises(UserError, match="wrong passphrase"):
        load_signer(key, cert, passphrase_env="DB_PASS")
    monkeypatch.setenv("DB_PASS", "s3cret")
    assert load_signer(key, cert, passphrase_env="DB_PASS").cert_path == cert
    # without a variable and without a terminal: say how to provide it, never hang on a prompt
    with pytest.raises(UserError, match="passphrase_env"):
        load_signer(key, cert)


def test_encrypted_key_with_an_empty_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """cryptography takes an empty passphrase for none and raises TypeError: one clear error instead."""
    k = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    key, cert = write_pair(tmp_path, pem(k, b"s3cret"), make_cert(k))
    monkeypatch.setenv("DB_PASS", "")
    with pytest.raises(UserError, match=rf"signing key {key} is encrypted and \$DB_PASS .* is set but empty"):
        load_signer(key, cert, passphrase_env="DB_PASS")


@pytest.mark.parametrize(("mode", "who"), [
    (0o600, None), (0o400, None), (0o644, "its group and others"), (0o640, "its group"), (0o604, "others"),
    (0o620, "its group"),
])
def test_key_mode_warning_like_ssh(tmp_path: Path, mode: int, who: str | None) -> None:
    key = tmp_path / "db.key"
    key.write_bytes(b"key")
    key.chmod(mode)
    got = key_mode_warning(key, "signing.key", "spec.yaml:20:8")
    if who is None:
        assert got is None
    else:
        assert got == (f"spec.yaml:20:8: signing.key {key} is a private key open to {who} (mode {mode:04o}); "
                       f"run `chmod 600 {key}`")
    assert key_mode_warning(tmp_path / "missing.key", "signing.key", "x") is None  # loading reports that


def test_private_key_warnings_name_both_keys(tmp_path: Path) -> None:
    from sysextant.core.spec.load import loads_spec

    for name, mode in (("db.key", 0o644), ("pcr.key", 0o640), ("db.pem", 0o644)):
        (tmp_path / name).write_bytes(b"x")
        (tmp_path / name).chmod(mode)
    spec = loads_spec("version: 1\nos: {root: rootfs}\nuki:\n  pcr_key: pcr.key\n"
                      "signing:\n  key: db.key\n  cert: db.pem\n", tmp_path / "spec.yaml")
    warnings = private_key_warnings(spec)
    assert [w.split(" is ")[0] for w in warnings] == [f"{tmp_path}/spec.yaml:6:8: signing.key {tmp_path}/db.key",
                                                      f"{tmp_path}/spec.yaml:4:12: uki.pcr_key {tmp_path}/pcr.key"]
    assert "(mode 0640)" in warnings[1] and "db.pem" not in "".join(warnings)  # a certificate is public


def test_demo_key_is_private(tmp_path: Path) -> None:
    from sysextant.core.demo import create_demo

    spec = create_demo(tmp_path / "demo", scale=0.01)
    key = spec.parent / "keys/db.key"
    assert key.stat().st_mode & 0o077 == 0
    assert (spec.parent / "keys").stat().st_mode & 0o077 == 0
