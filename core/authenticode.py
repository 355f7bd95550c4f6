"""Authenticode signing and checking of PE images (what Secure Boot firmware verifies).

References: Microsoft "Windows Authenticode Portable Executable Signature Format" (v1.1: the
image hash skips the CheckSum field and the certificate-table directory entry, hashes the
headers, the sections in file-offset order, then any data after them up to the certificate
table); PKCS#7 v1.5 (RFC 2315) SignedData; sbsigntools src/idc.c and src/image.c for what
Linux Secure Boot tooling writes (SpcPeImageData with an empty flags BIT STRING and the
``<<<Obsolete>>>`` file link, WIN_CERTIFICATE revision 0x0200 type 0x0002 padded to 8 bytes,
image padded to 8 before the table, CheckSum recomputed over the signed file).

The signed attributes are contentType, SpcSpOpusInfo (empty) and messageDigest, the latter over
the value octets of SpcIndirectDataContent (without its outer tag and length), as Authenticode
requires. No signingTime, so the same inputs give the same bytes (RSA PKCS#1 v1.5 is
deterministic).
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from . import der
from .errors import UserError
from .keys import Signer, load_certificate
from .pe import PeChecksum, PeFile, parse_pe, round_up
from .progress import Reporter

OID_SIGNED_DATA = "1.2.840.113549.1.7.2"
OID_SPC_INDIRECT_DATA = "1.3.6.1.4.1.311.2.1.4"
OID_SPC_PE_IMAGE_DATA = "1.3.6.1.4.1.311.2.1.15"
OID_SPC_SP_OPUS_INFO = "1.3.6.1.4.1.311.2.1.12"
OID_CONTENT_TYPE = "1.2.840.113549.1.9.3"
OID_MESSAGE_DIGEST = "1.2.840.113549.1.9.4"
OID_SHA256 = "2.16.840.1.101.3.4.2.1"
OID_RSA_ENCRYPTION = "1.2.840.113549.1.1.1"

WIN_CERT_REVISION_2_0 = 0x0200
WIN_CERT_TYPE_PKCS_SIGNED_DATA = 0x0002
CHUNK = 1 << 20


def _hashed_ranges(pe: PeFile, end: int) -> list[tuple[int, int]]:
    """The byte ranges the Authenticode hash covers, in file order, for data ending at ``end``."""
    csum = pe.checksum_offset
    secdir = pe.security_dir_offset
    ranges = [(0, csum), (csum + 4, secdir), (secdir + 8, pe.size_of_headers)]
    covered = pe.size_of_headers
    pos = pe.size_of_headers
    for s in sorted((s for s in pe.sections if s.raw_size), key=lambda s: s.raw_offset):
        if s.raw_offset < pos:
            raise UserError(f"{pe.name}: section {s.name} overlaps the previous one; cannot hash it")
        ranges.append((s.raw_offset, s.raw_offset + s.raw_size))
        pos = s.raw_offset + s.raw_size
        covered += s.raw_size
    if pos > end:
        raise UserError(f"{pe.name}: section data runs past the end of the file")
    # Spec: the extra data starts at SUM_OF_BYTES_HASHED (headers + section sizes).
    if covered < end:
        ranges.append((covered, end))
    return [r for r in ranges if r[1] > r[0]]


def image_digest(fh: BinaryIO, pe: PeFile | None = None, *, checksum: PeChecksum | None = None,
                 reporter: Reporter | None = None, task: str = "authenticode hash") -> bytes:
    """SHA-256 Authenticode digest of an open PE file, streamed in 1 MiB chunks.

    If ``checksum`` is given, every byte up to the certificate table (CheckSum field and
    certificate-table entry counted as zero) is also added to it in the same pass.
    """
    pe = pe or parse_pe(fh)
    cert_offset, cert_size = pe.security
    end = cert_offset if cert_size else pe.file_size
    ranges = _hashed_ranges(pe, end)
    linear = all(a[1] <= b[0] for a, b in zip(ranges, ranges[1:], strict=False))
    h = hashlib.sha256()
    zero_ranges = [(pe.checksum_offset, pe.checksum_offset + 4),
                   (pe.security_dir_offset, pe.security_dir_offset + 8)]
    fh.seek(0)
    if linear:
        pos = 0
        idx = 0
        while pos < end:
            data = fh.read(min(CHUNK, end - pos))
            if not data:
                raise UserError(f"{pe.name} is shorter than its headers say")
            chunk_end = pos + len(data)
            while idx < len(ranges) and ranges[idx][0] < chunk_end:
                a, b = ranges[idx]
                h.update(memoryview(data)[max(a, pos) - pos:min(b, chunk_end) - pos])
                if b <= chunk_end:
                    idx += 1
                else:
                    break
            if checksum is not None:
                if any(a < chunk_end and b > pos for a, b in zero_ranges):
                    buf = bytearray(data)
                    for a, b in zero_ranges:
                        lo, hi = max(a, pos), min(b, chunk_end)
                        if lo < hi:
                            buf[lo - pos:hi - pos] = bytes(hi - lo)
                    data = bytes(buf)
                checksum.add(data, pos)
            pos = chunk_end
            if reporter is not None:
                reporter(task, pos, end)
        return h.digest()
    if checksum is not None:
        raise UserError(f"{pe.name} has gaps between its sections; it cannot be signed here")
    for a, b in ranges:  # gaps between sections: the extra-data range overlaps, hash range by range
        fh.seek(a)
        left = b - a
        while left:
            data = fh.read(min(CHUNK, left))
            if not data:
                raise UserError(f"{pe.name} is shorter than its headers say")
            h.update(data)
            left -= len(data)
            if reporter is not None:
                reporter(task, b - left, end)
    return h.digest()


def _alg_sha256() -> bytes:
    return der.seq(der.oid(OID_SHA256), der.null())


def spc_indirect_data(digest: bytes) -> bytes:
    """SpcIndirectDataContent for a PE image with a SHA-256 digest (as sbsign writes it)."""
    obsolete = der.tlv(0x80, "<<<Obsolete>>>".encode("utf-16-be"))  # SpcString unicode [0]
    pe_image_data = der.seq(
        der.tlv(der.BIT_STRING, b"\x00"),  # SpcPeImageFlags: no bits set
        der.explicit(0, der.explicit(2, obsolete)),  # file [0] SpcLink -> file [2] SpcString
    )
    return der.seq(
        der.seq(der.oid(OID_SPC_PE_IMAGE_DATA), pe_image_data),
        der.seq(_alg_sha256(), der.octets(digest)),  # DigestInfo
    )


def _signed_attributes(content: bytes) -> bytes:
    """The signed attributes as a DER SET OF (the bytes the RSA signature covers)."""
    inner = der.parse(content).content  # messageDigest excludes the outer tag and length
    return der.set_of(
        der.seq(der.oid(OID_CONTENT_TYPE), der.set_of(der.oid(OID_SPC_INDIRECT_DATA))),
        der.seq(der.oid(OID_SPC_SP_OPUS_INFO), der.set_of(der.seq())),
        der.seq(der.oid(OID_MESSAGE_DIGEST), der.set_of(der.octets(hashlib.sha256(inner).digest()))),
    )


def pkcs7_signature(digest: bytes, signer: Signer) -> bytes:
    """DER PKCS#7 SignedData (v1) over an image digest, signer certificate included."""
    content = spc_indirect_data(digest)
    attrs = _signed_attributes(content)
    signature = signer.key.sign(attrs, padding.PKCS1v15(), hashes.SHA256())
    issuer_serial = der.seq(signer.cert.issuer.public_bytes(), der.integer(signer.cert.serial_number))
    signer_info = der.seq(
        der.integer(1),
        issuer_serial,
        _alg_sha256(),
        der.tlv(0xA0, der.parse(attrs).content),  # authenticatedAttributes [0] IMPLICIT
        der.seq(der.oid(OID_RSA_ENCRYPTION), der.null()),
        der.octets(signature),
    )
    signed_data = der.seq(
        der.integer(1),
        der.set_of(_alg_sha256()),
        der.seq(der.oid(OID_SPC_INDIRECT_DATA), der.explicit(0, content)),
        der.tlv(0xA0, signer.cert_der),  # certificates [0] IMPLICIT SET OF
        der.set_of(signer_info),
    )
    return der.seq(der.oid(OID_SIGNED_DATA), der.explicit(0, signed_data))


def win_certificate(pkcs7: bytes) -> bytes:
    """A WIN_CERTIFICATE holding ``pkcs7``, zero padded to a multiple of 8 bytes."""
    body = struct.pack("<IHH", 8 + len(pkcs7), WIN_CERT_REVISION_2_0, WIN_CERT_TYPE_PKCS_SIGNED_DATA) + pkcs7
    return body + bytes(round_up(len(body), 8) - len(body))


def signature_length(signer: Signer) -> int:
    """Length of the DER PKCS#7 this module writes for ``signer`` (the same for every image)."""
    return len(pkcs7_signature(bytes(32), signer))


def signed_size(unsigned_size: int, signature_len: int) -> int:
    """File size after signing a PE of ``unsigned_size`` bytes with a PKCS#7 of that length."""
    return round_up(unsigned_size, 8) + round_up(8 + signature_len, 8)


@dataclass(frozen=True)
class SignResult:
    digest: bytes  # the Authenticode SHA-256 image digest
    cert_offset: int
    cert_size: int
    file_size: int


def sign_pe(fh: BinaryIO, signer: Signer, *, reporter: Reporter | None = None,
            task: str = "authenticode sign") -> SignResult:
    """Sign an unsigned PE image in place (``fh`` open r+b): one streaming read pass.

    Pads the image to 8 bytes, hashes it, appends the WIN_CERTIFICATE, points data directory 4
    at it and writes the recomputed CheckSum (all computed in the same pass).
    """
    pe = parse_pe(fh)
    if pe.security != (0, 0):
        raise UserError(f"{pe.name} is already signed")
    size = pe.file_size
    aligned = round_up(size, 8)
    if aligned != size:
        fh.seek(size)
        fh.write(bytes(aligned - size))
        fh.flush()
        pe.file_size = aligned
    acc = PeChecksum()
    digest = image_digest(fh, pe, checksum=acc, reporter=reporter, task=task)
    table = win_certificate(pkcs7_signature(digest, signer))
    entry = struct.pack("<II", aligned, len(table))
    acc.add(entry, pe.security_dir_offset)
    acc.add(table, aligned)
    fh.seek(aligned)
    fh.write(table)
    fh.seek(pe.security_dir_offset)
    fh.write(entry)
    fh.seek(pe.checksum_offset)
    fh.write(struct.pack("<I", acc.value(aligned + len(table))))
    fh.flush()
    return SignResult(digest, aligned, len(table), aligned + len(table))


# ---------------------------------------------------------------------------------------------
# Checking


def _load_cert(cert: x509.Certificate | Path | str | bytes) -> x509.Certificate:
    if isinstance(cert, x509.Certificate):
        return cert
    if isinstance(cert, str | Path):
        return load_certificate(Path(cert).read_bytes(), cert)
    return load_certificate(cert, "given")


def _attr_values(signer_info_attrs: der.Node) -> dict[str, list[der.Node]]:
    out: dict[str, list[der.Node]] = {}
    for attr in signer_info_attrs.children():
        kids = attr.children()
        out[kids[0].as_oid()] = kids[1].children()
    return out


def verify_authenticode(path: str | Path, cert: x509.Certificate | Path | str | bytes) -> list[str]:
    """Check the Authenticode signature of ``path`` against ``cert``; return the problems found.

    An empty list means: exactly the image digest we compute is signed, the signed attributes are
    consistent, and the RSA signature verifies with ``cert``'s key (direct signer; no chain).
    """
    problems: list[str] = []
    trusted = _load_cert(cert)
    with open(path, "rb") as fh:
        pe = parse_pe(fh, str(path))
        offset, size = pe.security
        if not size:
            return [f"{path} is not signed (no certificate table)"]
        if offset + size > pe.file_size or offset % 8:
            return [f"{path}: the certificate table at {offset:#x} (+{size}) is misplaced"]
        if offset + size != pe.file_size:
            problems.append(f"{path}: {pe.file_size - offset - size} bytes follow the certificate table")
        fh.seek(offset)
        table = fh.read(size)
        digest = image_digest(fh, pe)
    length, revision, ctype = struct.unpack_from("<IHH", table, 0)
    if revision != WIN_CERT_REVISION_2_0 or ctype != WIN_CERT_TYPE_PKCS_SIGNED_DATA:
        return problems + [f"{path}: WIN_CERTIFICATE revision {revision:#x} type {ctype:#x} is not PKCS#7"]
    if length > size or length < 8:
        return problems + [f"{path}: WIN_CERTIFICATE length {length} does not fit its table"]
    try:
        problems += _check_pkcs7(table[8:length], digest, trusted, str(path))
    except (ValueError, IndexError) as exc:
        problems.append(f"{path}: malformed PKCS#7 signature ({exc})")
    return problems


def _check_pkcs7(blob: bytes, digest: bytes, trusted: x509.Certificate, name: str) -> list[str]:
    problems = []
    top = der.parse(blob).children()
    if top[0].as_oid() != OID_SIGNED_DATA:
        return [f"{name}: the signature is not PKCS#7 SignedData"]
    signed_data = top[1].children()[0].children()
    content_info = signed_data[2].children()
    if content_info[0].as_oid() != OID_SPC_INDIRECT_DATA:
        return [f"{name}: the signed content is not SpcIndirectDataContent"]
    content = content_info[1].children()[0]
    digest_info = content.children()[1].children()
    alg = digest_info[0].children()[0].as_oid()
    if alg != OID_SHA256:
        return [f"{name}: image digest algorithm {alg} is not SHA-256"]
    if digest_info[1].content != digest:
        problems.append(f"{name}: the image digest does not match the signed one (file modified after signing)")
    signer_infos = signed_data[-1].children()
    if len(signer_infos) != 1:
        return problems + [f"{name}: {len(signer_infos)} signers, expected 1"]
    si = signer_infos[0].children()
    issuer, serial = si[1].children()
    attrs_node = si[3]
    if attrs_node.tag != 0xA0:
        return problems + [f"{name}: the signer has no signed attributes"]
    attrs = _attr_values(attrs_node)
    ct = attrs.get(OID_CONTENT_TYPE)
    if not ct or ct[0].as_oid() != OID_SPC_INDIRECT_DATA:
        problems.append(f"{name}: the contentType attribute is missing or wrong")
    md = attrs.get(OID_MESSAGE_DIGEST)
    if not md or md[0].content != hashlib.sha256(content.content).digest():
        problems.append(f"{name}: the messageDigest attribute does not match the signed content")
    if issuer.raw != trusted.issuer.public_bytes() or serial.as_int() != trusted.serial_number:
        problems.append(f"{name}: signed by a different certificate than {trusted.subject.rfc4514_string()}")
    signature = si[5].content
    signed_bytes = der.tlv(der.SET, attrs_node.content)
    key = trusted.public_key()
    if not isinstance(key, rsa.RSAPublicKey):
        return problems + [f"{name}: the given certificate has no RSA key"]
    try:
        key.verify(signature, signed_bytes, padding.PKCS1v15(), hashes.SHA256())
    except InvalidSignature:
        problems.append(f"{name}: the RSA signature does not verify with {trusted.subject.rfc4514_string()}")
    return problems
