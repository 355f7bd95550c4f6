"""The verity root hash signature: PKCS#7 detached signature and the signature partition.

References: systemd ``docs/DISCOVERABLE_PARTITIONS.md`` (the JSON of the Verity Signature
partition), systemd-repart ``src/partition/repart.c`` (compact JSON, NUL padding to 4096),
RFC 5652 (CMS SignedData) and the kernel's ``drivers/md/dm-verity-verify-sig.c`` /
``crypto/asymmetric_keys/pkcs7_parser.c`` (which refuses unexpected signed attributes such as
smimeCapabilities, hence NO signed attributes here).

The signed content is the lowercase hex root hash without newline; the signature is RSA
PKCS#1 v1.5 over SHA-256 of that content, the signer certificate embedded.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.serialization import pkcs7

from . import der
from .keys import Signer

SIG_ALIGN = 4096
#: systemd-repart's signature partition size; the DPS allows up to 4 MiB.
SIG_PARTITION_SIZE = 16384
MAX_SIG_PARTITION = 4 << 20

OID_SIGNED_DATA = "1.2.840.113549.1.7.2"
OID_DATA = "1.2.840.113549.1.7.1"
OID_SHA256 = "2.16.840.1.101.3.4.2.1"
OID_RSA = "1.2.840.113549.1.1.1"
OID_SHA256_RSA = "1.2.840.113549.1.1.11"


def sign_root_hash(signer: Signer, root_hash_hex: str) -> bytes:
    """DER PKCS#7 detached signature of the hex root hash: SHA-256, no signed attributes."""
    content = _hex(root_hash_hex).encode("ascii")
    return (
        pkcs7.PKCS7SignatureBuilder()
        .set_data(content)
        .add_signer(signer.cert, signer.key, hashes.SHA256())
        .sign(serialization.Encoding.DER, [pkcs7.PKCS7Options.DetachedSignature,
                                           pkcs7.PKCS7Options.NoAttributes,
                                           pkcs7.PKCS7Options.Binary])
    )


def signature_json(root_hash_hex: str, fingerprint: str, der: bytes) -> bytes:
    """The compact JSON object systemd reads from the signature partition."""
    obj = {"rootHash": _hex(root_hash_hex), "certificateFingerprint": fingerprint,
           "signature": base64.b64encode(der).decode("ascii")}
    return json.dumps(obj, separators=(",", ":")).encode("ascii")


def signature_partition(signer: Signer, root_hash: bytes | str, size: int = SIG_PARTITION_SIZE) -> bytes:
    """The whole signature partition: the JSON, NUL padded to ``size`` (a multiple of 4096)."""
    hexhash = root_hash.hex() if isinstance(root_hash, bytes) else _hex(root_hash)
    blob = signature_json(hexhash, signer.fingerprint, sign_root_hash(signer, hexhash))
    size = max(size, -(-len(blob) // SIG_ALIGN) * SIG_ALIGN)
    if size % SIG_ALIGN or size > MAX_SIG_PARTITION:
        raise ValueError(f"signature partition size {size} must be a multiple of 4096, at most 4 MiB")
    return blob + bytes(size - len(blob))


def parse_signature_partition(raw: bytes) -> dict[str, str]:
    """The JSON object of a signature partition (trailing NULs dropped); ValueError if malformed."""
    text = raw.rstrip(b"\0")
    if b"\0" in text:
        raise ValueError("signature partition has NUL bytes inside the JSON")
    try:
        obj = json.loads(text.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"signature partition is not JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise ValueError("signature partition JSON is not an object")
    for key in ("rootHash", "signature"):
        if not isinstance(obj.get(key), str):
            raise ValueError(f"signature JSON lacks the string field {key!r}")
    if "certificateFingerprint" in obj and not isinstance(obj["certificateFingerprint"], str):
        raise ValueError("signature JSON certificateFingerprint is not a string")
    return obj


def check_signature(sig_json_bytes: bytes, root_hash: bytes | str,
                    cert: x509.Certificate | None) -> list[str]:
    """Problems with a signature partition; ``[]`` when it signs ``root_hash``.

    With ``cert`` the signature must verify with that certificate's key and the fingerprint
    must be the certificate's; without, it is checked against the embedded signer certificate
    only (integrity, not trust). Signed attributes are refused as the kernel refuses them.
    """
    want = root_hash.hex() if isinstance(root_hash, bytes) else root_hash.lower()
    try:
        obj = parse_signature_partition(sig_json_bytes)
    except ValueError as exc:
        return [str(exc)]
    problems: list[str] = []
    if obj["rootHash"] != want:
        problems.append(f"signature JSON rootHash {obj['rootHash']} differs from the verity root hash {want}")
    try:
        der = base64.b64decode(obj["signature"], validate=True)
    except (binascii.Error, ValueError):
        return problems + ["signature JSON field 'signature' is not valid base64"]
    try:
        info = parse_signed_data(der)
    except ValueError as exc:
        return problems + [f"PKCS#7 signature is malformed: {exc}"]
    if info.signed_attrs:
        problems.append("PKCS#7 signature has signed attributes; the kernel rejects them")
    if info.has_content:
        problems.append("PKCS#7 signature is not detached (it embeds content)")
    if info.digest_oid != OID_SHA256:
        problems.append(f"PKCS#7 digest algorithm is {info.digest_oid}, expected SHA-256")
    if info.sig_oid not in (OID_RSA, OID_SHA256_RSA):
        problems.append(f"PKCS#7 signature algorithm is {info.sig_oid}, expected RSA")

    try:
        embedded = pkcs7.load_der_pkcs7_certificates(der) if info.has_certificates else []
    except ValueError:
        embedded = []
        problems.append("PKCS#7 embedded certificates cannot be parsed")
    if cert is not None:
        candidates = [cert]
    else:
        candidates = [c for c in embedded if info.matches(c)] or embedded
        if not candidates:
            return problems + ["PKCS#7 signature embeds no certificate and none was given"]
    fp = obj.get("certificateFingerprint")
    if cert is not None:
        if fp is not None and fp != cert.fingerprint(hashes.SHA256()).hex():
            problems.append("signature JSON certificateFingerprint is not the given certificate's")
        if not info.matches(cert):
            problems.append("PKCS#7 signer is not the given certificate (issuer/serial differ)")
    elif fp is not None and fp not in {c.fingerprint(hashes.SHA256()).hex() for c in candidates}:
        problems.append("signature JSON certificateFingerprint matches no embedded certificate")

    content = want.encode("ascii")  # what must have been signed, whatever the JSON claims
    verified = False
    for c in candidates:
        key = c.public_key()
        if not isinstance(key, rsa.RSAPublicKey):
            continue
        try:
            key.verify(info.signature, content, padding.PKCS1v15(), hashes.SHA256())
            verified = True
            break
        except InvalidSignature:
            continue
    if not verified:
        who = "the given certificate" if cert is not None else "the embedded certificate"
        problems.append(f"PKCS#7 signature does not verify with {who} over the root hash")
    return problems


@dataclass(frozen=True)
class SignedDataInfo:
    """The parts of a CMS SignedData with exactly one SignerInfo that a verifier needs."""

    has_content: bool
    has_certificates: bool
    digest_oid: str
    sig_oid: str
    signed_attrs: bool
    signature: bytes
    issuer_der: bytes | None  # from IssuerAndSerialNumber
    serial: int | None
    ski: bytes | None  # from subjectKeyIdentifier sid

    def matches(self, cert: x509.Certificate) -> bool:
        """Whether ``cert`` is the one this SignerInfo names."""
        if self.issuer_der is not None:
            return cert.issuer.public_bytes() == self.issuer_der and cert.serial_number == self.serial
        if self.ski is not None:
            try:
                ext = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
            except x509.ExtensionNotFound:
                return False
            return ext.value.digest == self.ski
        return False


def _oid_of(node: der.Node | None) -> str:
    return node.as_oid() if node is not None and node.tag == der.OID else "?"


def parse_signed_data(blob: bytes) -> SignedDataInfo:
    """Parse a DER ContentInfo holding SignedData; ValueError on anything unexpected."""
    top = der.parse(blob)  # exactly one element, nothing after it
    if top.tag != der.SEQUENCE:
        raise ValueError("not a single DER SEQUENCE")
    ci = top.children()
    if len(ci) < 2 or _oid_of(ci[0]) != OID_SIGNED_DATA:
        raise ValueError("not a PKCS#7 SignedData")
    if ci[1].tag != 0xA0:
        raise ValueError("SignedData content is missing")
    inner = ci[1].children()
    if len(inner) != 1 or inner[0].tag != der.SEQUENCE:
        raise ValueError("SignedData is not a SEQUENCE")
    sd = inner[0].children()
    if len(sd) < 4 or sd[0].tag != der.INTEGER or sd[1].tag != der.SET or sd[2].tag != der.SEQUENCE:
        raise ValueError("SignedData fields are out of order")
    encap = sd[2].children()
    if not encap or _oid_of(encap[0]) != OID_DATA:
        raise ValueError("encapsulated content type is not id-data")
    rest = sd[3:]
    has_certs = False
    while rest and rest[0].tag in (0xA0, 0xA1):
        has_certs |= rest[0].tag == 0xA0
        rest = rest[1:]
    if len(rest) != 1 or rest[0].tag != der.SET:
        raise ValueError("signerInfos missing")
    infos = rest[0].children()
    if len(infos) != 1 or infos[0].tag != der.SEQUENCE:
        raise ValueError(f"expected exactly one SignerInfo, found {len(infos)}")
    si = infos[0].children()
    if len(si) < 5 or si[0].tag != der.INTEGER:
        raise ValueError("SignerInfo is too short")
    issuer = serial = ski = None
    if si[1].tag == der.SEQUENCE:
        ias = si[1].children()
        if len(ias) != 2 or ias[0].tag != der.SEQUENCE or ias[1].tag != der.INTEGER:
            raise ValueError("bad IssuerAndSerialNumber")
        issuer = ias[0].raw  # the whole Name, tag and length included
        serial = ias[1].as_int()
    elif si[1].tag == 0x80:
        ski = si[1].content
    else:
        raise ValueError("unknown SignerInfo sid")
    digest = si[2].children()
    idx = 3
    signed_attrs = si[idx].tag == 0xA0
    if signed_attrs:
        idx += 1
    if idx + 1 >= len(si):
        raise ValueError("SignerInfo lacks its signature")
    alg = si[idx].children()
    if si[idx + 1].tag != der.OCTET_STRING:
        raise ValueError("SignerInfo signature is not an OCTET STRING")
    return SignedDataInfo(len(encap) > 1, has_certs, _oid_of(digest[0] if digest else None),
                          _oid_of(alg[0] if alg else None), signed_attrs, si[idx + 1].content,
                          issuer, serial, ski)


def _hex(value: str) -> str:
    value = value.lower()
    if len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
        raise ValueError(f"root hash {value!r} is not 64 hex digits")
    return value
