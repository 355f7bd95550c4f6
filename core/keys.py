"""The db signing key and certificate: loaded once, checked before any work starts.

Both sysext signatures (PKCS#7 over the verity root hash) and the UKI's Authenticode signature
use the same Secure Boot db key. Every problem a user can have with the pair (missing file,
unreadable PEM, encrypted key without passphrase, a certificate that does not match the key,
an expired or not-yet-valid certificate, one not allowed to sign) is one clear error here,
naming the file, before anything is built.
"""

from __future__ import annotations

import datetime as _dt
import getpass
import hashlib
import os
import stat
import sys
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from .errors import UserError
from .spec.model import Spec


@dataclass(frozen=True)
class Signer:
    """An RSA private key with its matching X.509 certificate."""

    key: rsa.RSAPrivateKey
    cert: x509.Certificate
    key_path: Path
    cert_path: Path

    def __repr__(self) -> str:  # never show key material
        return f"Signer(key={self.key_path}, cert={self.cert_path})"

    @property
    def cert_der(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.DER)

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the certificate's DER, 64 lowercase hex (systemd's certificateFingerprint)."""
        return self.cert.fingerprint(hashes.SHA256()).hex()


def read_pem_file(path: Path, field: str, what: str) -> bytes:
    """The bytes of a key or certificate file named by spec field ``field``; one clear error
    (naming the field and the file) when it is missing, a folder or not readable."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"{field}: {what} {path} does not exist; create it or fix the path in the spec") from None
    except IsADirectoryError:
        raise UserError(f"{field}: {what} {path} is a folder, not a PEM file") from None
    except PermissionError:
        raise UserError(f"{field}: {what} {path} is not readable by this user") from None


def _passphrase(key_path: Path, env: str | None) -> bytes:
    """The passphrase of the encrypted signing key, never empty: cryptography takes an empty one
    for none at all and raises TypeError, and no encrypted PEM has an empty passphrase anyway."""
    if env:
        value = os.environ.get(env)
        if value is None:
            raise UserError(f"the signing key {key_path} is encrypted and ${env} (signing.passphrase_env) is not set")
        if not value:
            raise UserError(f"the signing key {key_path} is encrypted and ${env} (signing.passphrase_env) is "
                            "set but empty; put the key's passphrase in it")
        return value.encode()
    if sys.stdin is not None and sys.stdin.isatty():
        typed = getpass.getpass(f"Passphrase for {key_path}: ")
        if not typed:
            raise UserError(f"no passphrase given for the encrypted signing key {key_path}")
        return typed.encode()
    raise UserError(
        f"the signing key {key_path} is encrypted; set signing.passphrase_env to the name of an "
        "environment variable holding its passphrase"
    )


def key_mode_warning(path: Path, field: str, where: str) -> str | None:
    """A warning, as ssh gives for an unprotected private key, when the key file at ``path`` (spec
    field ``field``, at ``where``) is open to its group or to others; None when it is private or
    cannot be examined (loading it reports that). A warning, not a refusal: the key may live on
    a single-user machine or a CI runner where the mode is beside the point."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    if not stat.S_ISREG(mode) or not mode & 0o077:
        return None
    who = " and ".join(w for w, bits in (("its group", 0o070), ("others", 0o007)) if mode & bits)
    return (f"{where}: {field} {path} is a private key open to {who} (mode {stat.S_IMODE(mode):04o}); "
            f"run `chmod 600 {path}`")


def private_key_warnings(spec: Spec) -> list[str]:
    """:func:`key_mode_warning` for the spec's private keys: ``signing.key`` and ``uki.pcr_key``."""
    keys: list[tuple[str, str, Path]] = []
    if spec.signing is not None:
        keys.append(("signing", "key", spec.signing.key))
    if spec.uki.pcr_key is not None:
        keys.append(("uki", "pcr_key", spec.uki.pcr_key))
    found = (key_mode_warning(path, f"{section}.{name}", spec.where(section, name)) for section, name, path in keys)
    return [w for w in found if w]


def load_certificate(data: bytes, where: object) -> x509.Certificate:
    """An X.509 certificate in PEM or DER; ``where`` (usually its path) names it in the error."""
    for loader in (x509.load_pem_x509_certificate, x509.load_der_x509_certificate):
        try:
            return loader(data)
        except ValueError:
            continue
    raise UserError(f"certificate {where} is not a PEM or DER X.509 certificate")


def load_signer(key_path: Path, cert_path: Path, *, passphrase_env: str | None = None,
                now: _dt.datetime | None = None) -> Signer:
    """Load and check a PEM RSA key and PEM certificate; raise UserError on any problem."""
    key_pem = read_pem_file(key_path, "signing.key", "signing key")
    cert_pem = read_pem_file(cert_path, "signing.cert", "certificate")
    cert = load_certificate(cert_pem, cert_path)
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except TypeError:  # encrypted
        password = _passphrase(key_path, passphrase_env)
        try:
            key = serialization.load_pem_private_key(key_pem, password=password)
        except (ValueError, TypeError):
            raise UserError(f"wrong passphrase for the signing key {key_path}") from None
    except ValueError:
        raise UserError(f"signing key {key_path} is not a PEM private key") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise UserError(f"signing key {key_path} is not an RSA key; Secure Boot db keys are RSA")
    if cert.public_key().public_numbers() != key.public_key().public_numbers():
        raise UserError(f"certificate {cert_path} does not belong to the signing key {key_path}")
    now = now or _dt.datetime.now(_dt.UTC)
    if cert.not_valid_after_utc < now:
        raise UserError(f"certificate {cert_path} expired on {cert.not_valid_after_utc:%Y-%m-%d}; renew it")
    if cert.not_valid_before_utc > now:
        raise UserError(f"certificate {cert_path} is not valid before {cert.not_valid_before_utc:%Y-%m-%d}")
    try:
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
        if not usage.digital_signature:
            raise UserError(f"certificate {cert_path} is not allowed to sign (no digitalSignature key usage)")
    except x509.ExtensionNotFound:
        pass
    return Signer(key=key, cert=cert, key_path=key_path, cert_path=cert_path)


def generate_demo_pair(common_name: str = "Sysextant demo db (NOT for production)",
                       bits: int = 2048) -> tuple[bytes, bytes]:
    """A fresh self-signed RSA key and certificate (PEM), as a Secure Boot db pair for demos."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    name = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, common_name)])
    now = _dt.datetime.now(_dt.UTC).replace(microsecond=0)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _dt.timedelta(days=1))
        .not_valid_after(now + _dt.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                     crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return key_pem, cert.public_bytes(serialization.Encoding.PEM)


# -- the PCR key (uki.pcr_key): signs the expected PCR 11 values in .pcrsig ------------------------
def public_key_pem(public_key: rsa.RSAPublicKey) -> bytes:
    """The ``.pcrpkey`` section: PEM SubjectPublicKeyInfo, as ukify writes it."""
    return public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def public_key_fingerprint(public_key: rsa.RSAPublicKey) -> str:
    """``pkfp``: SHA-256 (hex) of the PKCS#1 RSAPublicKey DER (OpenSSL ``i2d_PublicKey``)."""
    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.PKCS1)
    return hashlib.sha256(der).hexdigest()


@dataclass(frozen=True)
class PcrKey:
    """The RSA key pair that signs the expected PCR 11 policies (``uki.pcr_key``, ``uki.pcr_cert``)."""

    private_key: rsa.RSAPrivateKey
    public_key: rsa.RSAPublicKey
    key_path: Path
    public_path: Path | None = None

    def __repr__(self) -> str:  # never show key material
        return f"PcrKey(key={self.key_path}, public={self.public_path})"

    @property
    def public_pem(self) -> bytes:
        return public_key_pem(self.public_key)

    @property
    def fingerprint(self) -> str:
        return public_key_fingerprint(self.public_key)


def _load_public(path: Path) -> rsa.RSAPublicKey | None:
    data = read_pem_file(path, "uki.pcr_cert", "PCR public key")
    loaders = (serialization.load_pem_public_key, serialization.load_der_public_key,
               lambda d: x509.load_pem_x509_certificate(d).public_key(),
               lambda d: x509.load_der_x509_certificate(d).public_key())
    for load in loaders:
        try:
            key = load(data)
        except ValueError:
            continue
        return key if isinstance(key, rsa.RSAPublicKey) else None
    raise UserError(f"uki.pcr_cert: {path} is not a PEM public key or an X.509 certificate")


def load_pcr_key(spec: Spec) -> PcrKey | None:
    """Load and check ``uki.pcr_key`` (unencrypted PEM RSA private key, as systemd-measure and
    ukify read it) and the optional ``uki.pcr_cert`` (its public key or a certificate for it).
    None when the spec has no PCR key; one clear UserError for any problem."""
    key_path = spec.uki.pcr_key
    if key_path is None:
        return None
    data = read_pem_file(key_path, "uki.pcr_key", "PCR signing key")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise UserError(f"uki.pcr_key: {key_path} is encrypted; systemd-measure and ukify read the PCR key "
                        "without a passphrase, so give an unencrypted PEM key") from None
    except ValueError:
        raise UserError(f"uki.pcr_key: {key_path} is not a PEM private key "
                        "(make one with: openssl genrsa -out tpm2-pcr.key 2048)") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise UserError(f"uki.pcr_key: {key_path} is not an RSA key; TPM2 PCR signatures need RSA")
    public = key.public_key()
    public_path = spec.uki.pcr_cert
    if public_path is not None:
        given = _load_public(public_path)
        if given is None or given.public_numbers() != public.public_numbers():
            raise UserError(f"uki.pcr_cert: {public_path} does not hold the public key of uki.pcr_key {key_path}")
    return PcrKey(private_key=key, public_key=public, key_path=key_path, public_path=public_path)
