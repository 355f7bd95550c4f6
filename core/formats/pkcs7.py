"""The verity root hash signature: PKCS#7 detached signature and the signature partition.

References: systemd ``docs/DISCOVERABLE_PARTITIONS.md`` (the JSON of the Verity Signature
partition), systemd-repart ``src/partition/repart.c`` (compact JSON, NUL padding to 4096),
RFC 5652 (CMS SignedData) and the kernel's ``drivers/md/dm-verity-verify-sig.c`` /
``crypto/asymmetric_keys/pkcs7_parser.c`` (which refuses unexpected signed attributes such as
smimeCapabilities, hence NO signed attributes here).

The signed content is the lowercase hex root hash without newline; the signature is RSA
PKCS#1 v1.5 over SHA-256 of that content, the signer certificate embedded.

Checking reads the whole SignedData strictly (:func:`parse_signed_data`) and applies the
kernel parser's rules and a trust check on the embedded signer certificate
(:func:`check_detached`); :mod:`.authenticode` shares the reader and the certificate checks.
tests/core/formats/test_signature_flips.py holds the verdicts to ``openssl cms`` byte flip by byte flip.

See docs/formats.md, section 7 (the verity signature: partition JSON and PKCS#7).
"""

from __future__ import annotations

import base64
import binascii
import json
import warnings
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.utils import CryptographyDeprecationWarning

from ..keys import Signer
from . import der

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

    With ``cert`` the PKCS#7 must be by that certificate (or one chaining to it); without, it
    is checked against its own embedded signer certificate only (integrity, not trust). See
    :func:`check_detached` for the rules.
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
        blob = base64.b64decode(obj["signature"], validate=True)
    except (binascii.Error, ValueError):
        return problems + ["signature JSON field 'signature' is not valid base64"]
    # What must have been signed is the root hash we computed, whatever the JSON claims.
    found, signer = check_detached(blob, want.encode("ascii"), cert)
    problems += found
    fp = obj.get("certificateFingerprint")
    if fp is not None:
        # systemd-repart writes the fingerprint of the certificate it signed with.
        named = signer.cert if signer is not None else cert
        if named is not None and fp != named.fingerprint(hashes.SHA256()).hex():
            whose = "the signer certificate's" if signer is not None else "the given certificate's"
            problems.append(f"signature JSON certificateFingerprint is not {whose}")
    return problems


def check_detached(blob: bytes, content: bytes,
                   trusted: x509.Certificate | None) -> tuple[list[str], EmbeddedCert | None]:
    """Check a detached PKCS#7 signature of ``content`` as the kernel's dm-verity check does.

    The rules, from ``crypto/asymmetric_keys/pkcs7_parser.c`` and ``pkcs7_verify.c`` (which
    ``dm-verity-verify-sig.c`` calls) and the signature-partition conventions:

    - strict DER throughout (:func:`parse_signed_data`); SignedData version 1 with a version 1
      SignerInfo naming its certificate by issuer and serial, or version 3 with a version 3
      SignerInfo naming it by subject key identifier;
    - content type id-data, no embedded content (detached), exactly one SignerInfo, no signed
      attributes (the kernel refuses smimeCapabilities, the attribute default builders add);
    - every digest algorithm (SignedData and SignerInfo) SHA-256, the signature algorithm
      rsaEncryption (the only RSA OID the kernel takes there);
    - every embedded certificate well formed; the one the SignerInfo names is present and is
      ``trusted`` or chains to it (:func:`check_trust`);
    - the RSA PKCS#1 v1.5 signature over SHA-256 of ``content`` verifies with that certificate.

    Returns the problems and the signer certificate (when the SignerInfo names one present).
    """
    try:
        sd = parse_signed_data(blob)
    except ValueError as exc:
        return [f"PKCS#7 signature is malformed: {exc}"], None
    problems = []
    if sd.content_type != OID_DATA:
        problems.append(f"PKCS#7 content type is {sd.content_type}, expected id-data")
    if sd.content is not None:
        problems.append("PKCS#7 signature is not detached (it embeds content)")
    if len(sd.signers) != 1:
        return problems + [f"PKCS#7 has {len(sd.signers)} SignerInfos, expected exactly one"], None
    si = sd.signers[0]
    problems += version_problems(sd, si, allow_ski=True)
    problems += digest_problems(sd, si)
    if si.signature_alg.oid != OID_RSA:
        problems.append(f"PKCS#7 signature algorithm is {si.signature_alg.oid}, expected rsaEncryption "
                        f"({OID_RSA}), the only one the kernel accepts")
    if si.signed_attrs is not None:
        problems.append("PKCS#7 signature has signed attributes; the kernel rejects them")
    found, signer = check_signer(sd, si, trusted)
    problems += found
    if signer is not None:
        problems += verify_rsa(signer.cert, si.signature, content)
    return problems, signer


# --- reading SignedData ------------------------------------------------------------------------


@dataclass(frozen=True)
class Algorithm:
    """An AlgorithmIdentifier: its OID and the raw DER of its parameters (None when absent)."""

    oid: str
    params: bytes | None


@dataclass(frozen=True)
class SignerInfo:
    """One SignerInfo as stored (RFC 5652 5.3, RFC 2315 9.2)."""

    version: int
    issuer: bytes | None  # raw DER Name of an IssuerAndSerialNumber sid
    serial: bytes | None  # raw value octets of its serialNumber
    ski: bytes | None  # a subjectKeyIdentifier sid
    digest: Algorithm
    signed_attrs: der.Node | None  # [0] IMPLICIT SET OF Attribute
    signature_alg: Algorithm
    signature: bytes
    unsigned_attrs: der.Node | None  # [1] IMPLICIT SET OF Attribute

    def signed_bytes(self) -> bytes:
        """What the signature covers when there are signed attributes: their DER as a SET OF."""
        assert self.signed_attrs is not None
        return der.tlv(der.SET, self.signed_attrs.content)

    def attributes(self) -> dict[str, list[list[der.Node]]]:
        """Signed attributes by OID: each occurrence's values, in order (ValueError if malformed)."""
        out: dict[str, list[list[der.Node]]] = {}
        for attr in (self.signed_attrs.children() if self.signed_attrs is not None else []):
            kids = attr.children() if attr.tag == der.SEQUENCE else []
            if len(kids) != 2 or kids[1].tag != der.SET:
                raise ValueError("a signed attribute is not SEQUENCE { OID, SET }")
            out.setdefault(kids[0].as_oid(), []).append(kids[1].children())
        return out


@dataclass(frozen=True)
class SignedData:
    """A CMS/PKCS#7 SignedData as stored; certificates are raw DER."""

    version: int
    digest_algs: list[Algorithm]
    content_type: str
    content: der.Node | None  # the element inside eContent's [0] EXPLICIT, None when detached
    certificates: list[bytes]
    signers: list[SignerInfo]


def algorithm(node: der.Node, what: str) -> Algorithm:
    """An AlgorithmIdentifier whose parameters are absent or NULL: all the algorithms a
    signature may use here (SHA-256: RFC 5754 2; rsaEncryption and sha256WithRSAEncryption:
    RFC 8017 A.2.4, RFC 4055 5) have no others."""
    kids = node.children() if node.tag == der.SEQUENCE else []
    if not 1 <= len(kids) <= 2:
        raise ValueError(f"{what} is not an AlgorithmIdentifier")
    if len(kids) == 2 and kids[1].raw != der.null():
        raise ValueError(f"{what} has parameters other than NULL")
    return Algorithm(kids[0].as_oid(), kids[1].raw if len(kids) == 2 else None)


def _signer_info(node: der.Node) -> SignerInfo:
    if node.tag != der.SEQUENCE:
        raise ValueError("a SignerInfo is not a SEQUENCE")
    kids = node.children()
    if len(kids) < 5:
        raise ValueError("SignerInfo is too short")
    version = kids[0].as_int()
    issuer = serial = ski = None
    sid = kids[1]
    if sid.tag == der.SEQUENCE:  # IssuerAndSerialNumber
        ias = sid.children()
        if len(ias) != 2 or ias[0].tag != der.SEQUENCE:
            raise ValueError("bad IssuerAndSerialNumber")
        ias[1].as_int()  # an INTEGER, minimally encoded
        issuer, serial = ias[0].raw, ias[1].content
    elif sid.tag == 0x80:  # subjectKeyIdentifier [0] IMPLICIT OCTET STRING
        ski = sid.content
    else:
        raise ValueError(f"unknown SignerInfo sid (tag {sid.tag:#04x})")
    digest = algorithm(kids[2], "SignerInfo digestAlgorithm")
    rest = kids[3:]
    signed = None
    if rest and rest[0].tag == 0xA0:
        signed, rest = rest[0], rest[1:]
    if len(rest) < 2:
        raise ValueError("SignerInfo lacks its signature")
    sig_alg = algorithm(rest[0], "SignerInfo signatureAlgorithm")
    if rest[1].tag != der.OCTET_STRING:
        raise ValueError("SignerInfo signature is not an OCTET STRING")
    unsigned = None
    if len(rest) > 2 and rest[2].tag == 0xA1:
        unsigned = rest[2]
        unsigned.children()  # well formed, whatever it holds
    if len(rest) > 2 + (unsigned is not None):
        raise ValueError("unexpected fields after the SignerInfo signature")
    return SignerInfo(version, issuer, serial, ski, digest, signed, sig_alg, rest[1].content, unsigned)


def parse_signed_data(blob: bytes) -> SignedData:
    """Parse a DER ContentInfo holding SignedData, field by field; ValueError on anything else.

    Strict on structure (RFC 5652 5.1): every field in its place, nothing left over, each
    optional field at most once; certificates must be X.509 SEQUENCEs (the kernel's parser
    refuses the other CertificateChoices too). The values are checked by the callers.
    """
    top = der.parse(blob)  # exactly one element, nothing after it
    ci = top.children() if top.tag == der.SEQUENCE else []
    if len(ci) != 2 or ci[0].tag != der.OID or ci[0].as_oid() != OID_SIGNED_DATA:
        raise ValueError("not a PKCS#7 SignedData ContentInfo")
    if ci[1].tag != 0xA0:
        raise ValueError("SignedData content is missing")
    inner = ci[1].children()
    if len(inner) != 1 or inner[0].tag != der.SEQUENCE:
        raise ValueError("SignedData is not a SEQUENCE")
    sd = inner[0].children()
    if len(sd) < 4:
        raise ValueError("SignedData is too short")
    version = sd[0].as_int()
    if sd[1].tag != der.SET:
        raise ValueError("SignedData digestAlgorithms is not a SET")
    digest_algs = [algorithm(n, "a SignedData digestAlgorithm") for n in sd[1].children()]
    encap = sd[2].children() if sd[2].tag == der.SEQUENCE else []
    if not 1 <= len(encap) <= 2 or encap[0].tag != der.OID:
        raise ValueError("bad encapsulated ContentInfo")
    content = None
    if len(encap) == 2:
        wrapped = encap[1].children() if encap[1].tag == 0xA0 else []
        if len(wrapped) != 1:
            raise ValueError("bad encapsulated content")
        content = wrapped[0]
    rest = sd[3:]
    certificates: list[bytes] = []
    if rest and rest[0].tag == 0xA0:  # certificates [0] IMPLICIT SET OF
        for c in rest[0].children():
            if c.tag != der.SEQUENCE:
                raise ValueError(f"an embedded certificate is not an X.509 SEQUENCE (tag {c.tag:#04x})")
            certificates.append(c.raw)
        rest = rest[1:]
    if rest and rest[0].tag == 0xA1:  # crls [1] IMPLICIT: not used here, but well formed
        rest[0].children()
        rest = rest[1:]
    if len(rest) != 1 or rest[0].tag != der.SET:
        raise ValueError("signerInfos missing or followed by unexpected fields")
    signers = [_signer_info(n) for n in rest[0].children()]
    return SignedData(version, digest_algs, encap[0].as_oid(), content, certificates, signers)


def version_problems(sd: SignedData, si: SignerInfo, *, allow_ski: bool) -> list[str]:
    """The version pairs the kernel's parser accepts (pkcs7_note_signeddata_version and
    pkcs7_note_signerinfo_version): 1/1 with issuer and serial, 3/3 with a key identifier
    (PKCS#7 v1.5 and Authenticode know only 1/1)."""
    by_ski = si.ski is not None
    want = 3 if by_ski else 1
    if by_ski and not allow_ski:
        return ["PKCS#7 SignerInfo names its certificate by key identifier; Authenticode needs issuer and serial"]
    if (sd.version, si.version) != (want, want):
        how = "a subject key identifier" if by_ski else "issuer and serial"
        return [f"PKCS#7 SignedData version {sd.version} with SignerInfo version {si.version}; a signer "
                f"named by {how} needs version {want} for both"]
    return []


def digest_problems(sd: SignedData, si: SignerInfo) -> list[str]:
    """The digest algorithms must all be SHA-256: SignedData's list and the SignerInfo's."""
    problems = []
    others = sorted({a.oid for a in sd.digest_algs} - {OID_SHA256})
    if others or not sd.digest_algs:
        problems.append("PKCS#7 SignedData digestAlgorithms are " + (", ".join(others) or "empty")
                        + ", expected SHA-256 only")
    if si.digest.oid != OID_SHA256:
        problems.append(f"PKCS#7 SignerInfo digest algorithm is {si.digest.oid}, expected SHA-256")
    return problems


# --- certificates and trust --------------------------------------------------------------------


@dataclass(frozen=True)
class EmbeddedCert:
    """A certificate carried in a signature: its DER, the parsed form and the raw fields that
    signers and issuers are matched on (byte for byte, as the kernel's asymmetric key IDs)."""

    der: bytes
    cert: x509.Certificate
    issuer: bytes  # raw DER Name
    serial: bytes  # raw value octets of serialNumber
    subject: bytes  # raw DER Name

    def ski(self) -> bytes | None:
        """The subjectKeyIdentifier extension's value (extensions are parsed by now)."""
        try:
            ext = self.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
        except x509.ExtensionNotFound:
            return None
        return ext.value.digest


#: What python-cryptography raises on malformed certificate contents, beside ValueError.
CERT_ERRORS: tuple[type[Exception], ...] = (ValueError, TypeError, x509.InvalidVersion,
                                            x509.DuplicateExtension, x509.UnsupportedGeneralNameType,
                                            UnsupportedAlgorithm)


def parse_certificate(raw: bytes) -> EmbeddedCert:
    """Parse a DER X.509 certificate strictly; ValueError (one line, why) if it is malformed.

    python-cryptography reads it; the raw issuer, serial and subject come from our own reader.
    Refused here too, as OpenSSL and the kernel refuse them though python-cryptography does
    not: a signature BIT STRING with unused bits (its bytes would still verify) and two
    different signature algorithm fields (RFC 5280 4.1.1.2).
    """
    node = der.parse(raw)
    kids = node.children() if node.tag == der.SEQUENCE else []
    if len(kids) != 3 or kids[0].tag != der.SEQUENCE or kids[2].tag != der.BIT_STRING:
        raise ValueError("not an X.509 Certificate SEQUENCE")
    if kids[2].content[:1] != b"\0":  # as x509_note_signature and OpenSSL's ASN1_item_verify
        raise ValueError("the certificate's signature BIT STRING has unused bits")
    tbs = kids[0].children()
    if tbs and tbs[0].tag == 0xA0:  # version [0] EXPLICIT
        tbs = tbs[1:]
    if len(tbs) < 6 or tbs[0].tag != der.INTEGER or any(n.tag != der.SEQUENCE for n in tbs[1:6]):
        raise ValueError("malformed TBSCertificate")
    if tbs[1].raw != kids[1].raw:
        raise ValueError("signatureAlgorithm differs from the one in the TBSCertificate")
    try:
        with warnings.catch_warnings():
            # A serial that is not positive: RFC 5280 forbids it, but the kernel and OpenSSL take
            # it, and the certificate is compared byte for byte below anyway. No stderr noise.
            warnings.simplefilter("ignore", CryptographyDeprecationWarning)
            cert = x509.load_der_x509_certificate(raw)
            # python-cryptography decodes most fields on first use: use them all now, so that a
            # malformed one is this ValueError and not an exception from whoever reads it later.
            _ = (cert.subject.rfc4514_string(), cert.issuer.rfc4514_string(), cert.serial_number,
                 cert.not_valid_before_utc, cert.not_valid_after_utc, cert.signature_algorithm_oid,
                 list(cert.extensions), cert.public_key())
    except CERT_ERRORS as exc:
        raise ValueError(_first_line(exc)) from None
    return EmbeddedCert(raw, cert, tbs[2].raw, tbs[0].content, tbs[4].raw)


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def check_signer(sd: SignedData, si: SignerInfo,
                 trusted: x509.Certificate | None) -> tuple[list[str], EmbeddedCert | None]:
    """Find the certificate the SignerInfo names among the embedded ones and check its trust.

    Every embedded certificate must be well formed (the kernel refuses the whole message
    otherwise). The SignerInfo must name one of them, byte for byte, by issuer and serial or
    by subject key identifier. With ``trusted`` that certificate must be it or chain to it.
    """
    certs: list[EmbeddedCert] = []
    for n, raw in enumerate(sd.certificates, 1):
        try:
            certs.append(parse_certificate(raw))
        except ValueError as exc:
            return [f"PKCS#7 embedded certificate {n} is malformed: {exc}"], None
    if si.ski is not None:
        signer = next((c for c in certs if c.ski() == si.ski), None)
    else:
        signer = next((c for c in certs if (c.issuer, c.serial) == (si.issuer, si.serial)), None)
    if signer is None:
        what = "key identifier" if si.ski is not None else "issuer and serial"
        return [f"PKCS#7 signer certificate is not embedded (no certificate has the SignerInfo's {what})"], None
    if trusted is None:
        return [], signer
    return check_trust(signer, certs, trusted), signer


#: Longest chain of embedded certificates followed from the signer to the given one.
MAX_CHAIN = 8


def check_trust(signer: EmbeddedCert, certs: list[EmbeddedCert], trusted: x509.Certificate) -> list[str]:
    """``[]`` when ``signer`` is the ``trusted`` certificate (same DER) or a chain of embedded
    certificates leads from it to one ``trusted`` issued. Names and signatures are checked along
    the chain; validity dates and CA flags are not (the kernel's pkcs7_validate_trust checks
    neither, nor does systemd)."""
    try:
        anchor = parse_certificate(trusted.public_bytes(serialization.Encoding.DER))
    except ValueError as exc:
        return [f"the given certificate {trusted.subject.rfc4514_string()} cannot be used: {exc}"]
    current, seen = signer, {signer.der}
    for _ in range(MAX_CHAIN):
        if current.der == anchor.der or _issued(current, anchor):
            return []
        parent = next((c for c in certs if c.der not in seen and _issued(current, c)), None)
        if parent is None:
            break
        current = parent
        seen.add(parent.der)
    return [f"PKCS#7 signer {signer.cert.subject.rfc4514_string()} is not the given certificate "
            f"{trusted.subject.rfc4514_string()} and does not chain to it"]


def _issued(child: EmbeddedCert, parent: EmbeddedCert) -> bool:
    """Whether ``parent`` issued ``child``: names equal byte for byte and the signature holds."""
    if child.issuer != parent.subject:
        return False
    try:
        child.cert.verify_directly_issued_by(parent.cert)
    except (InvalidSignature, *CERT_ERRORS):
        return False
    return True


def verify_rsa(cert: x509.Certificate, signature: bytes, data: bytes) -> list[str]:
    """``[]`` when ``signature`` is RSA PKCS#1 v1.5 over SHA-256 of ``data`` by ``cert``'s key."""
    try:
        key = cert.public_key()
    except CERT_ERRORS as exc:
        return [f"the signer certificate's public key cannot be read: {_first_line(exc)}"]
    if not isinstance(key, rsa.RSAPublicKey):
        return ["the signer certificate has no RSA key"]
    try:
        key.verify(signature, data, padding.PKCS1v15(), hashes.SHA256())
    except InvalidSignature:
        return [f"the RSA signature does not verify with {cert.subject.rfc4514_string()}"]
    return []


def _hex(value: str) -> str:
    value = value.lower()
    if len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
        raise ValueError(f"root hash {value!r} is not 64 hex digits")
    return value
