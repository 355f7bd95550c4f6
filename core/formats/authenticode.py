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

Checking (:func:`verify_authenticode`) reads the PKCS#7 with :mod:`.pkcs7`'s strict reader and
shares its certificate and trust checks; tests/core/formats/test_signature_flips.py holds its verdicts to
sbverify's and osslsigncode's, byte flip by byte flip.

See docs/formats.md, section 9 (Authenticode).
"""

from __future__ import annotations

import hashlib
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding

from ..errors import UserError
from ..keys import Signer, load_certificate
from ..progress import Reporter
from . import der, pkcs7
from .pe import DIR_SECURITY, PeChecksum, PeFile, parse_pe, round_up

OID_SIGNED_DATA = "1.2.840.113549.1.7.2"
OID_SPC_INDIRECT_DATA = "1.3.6.1.4.1.311.2.1.4"
OID_SPC_PE_IMAGE_DATA = "1.3.6.1.4.1.311.2.1.15"
OID_SPC_SP_OPUS_INFO = "1.3.6.1.4.1.311.2.1.12"
OID_CONTENT_TYPE = "1.2.840.113549.1.9.3"
OID_MESSAGE_DIGEST = "1.2.840.113549.1.9.4"
OID_SHA256 = "2.16.840.1.101.3.4.2.1"
OID_RSA_ENCRYPTION = "1.2.840.113549.1.1.1"
OID_SHA256_RSA = "1.2.840.113549.1.1.11"

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
    return _signed_data(content, attrs, signature, signer.cert, signer.cert_der)


def _signed_data(content: bytes, attrs: bytes, signature: bytes, cert: x509.Certificate, cert_der: bytes) -> bytes:
    issuer_serial = der.seq(cert.issuer.public_bytes(), der.integer(cert.serial_number))
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
        der.tlv(0xA0, cert_der),  # certificates [0] IMPLICIT SET OF
        der.set_of(signer_info),
    )
    return der.seq(der.oid(OID_SIGNED_DATA), der.explicit(0, signed_data))


def win_certificate(pkcs7: bytes) -> bytes:
    """A WIN_CERTIFICATE holding ``pkcs7``, zero padded to a multiple of 8 bytes."""
    body = struct.pack("<IHH", 8 + len(pkcs7), WIN_CERT_REVISION_2_0, WIN_CERT_TYPE_PKCS_SIGNED_DATA) + pkcs7
    return body + bytes(round_up(len(body), 8) - len(body))


def signature_length(signer: Signer) -> int:
    """Length of the DER PKCS#7 this module writes for ``signer`` (the same for every image)."""
    return signature_length_for(signer.cert)


def signature_length_for(cert: x509.Certificate) -> int:
    """The same length from the certificate alone (no private key needed: the workbench knows it
    before an encrypted key is unlocked). An RSA PKCS#1 v1.5 signature is always as long as the
    modulus, and nothing else in the structure depends on the image."""
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.hazmat.primitives.serialization import Encoding

    key = cert.public_key()
    if not isinstance(key, rsa.RSAPublicKey):
        raise UserError("the signing certificate does not hold an RSA key; Secure Boot signatures need RSA")
    content = spc_indirect_data(bytes(32))
    return len(_signed_data(content, _signed_attributes(content), bytes((key.key_size + 7) // 8), cert,
                            cert.public_bytes(Encoding.DER)))


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
        try:
            return load_certificate(Path(cert).read_bytes(), cert)
        except OSError as exc:
            raise UserError(f"cannot read the certificate {cert}: {exc.strerror}") from None
    return load_certificate(cert, "given")


#: Signature algorithm OIDs taken in an Authenticode SignerInfo: both mean RSA PKCS#1 v1.5 here
#: (sbsign and osslsigncode write rsaEncryption; RFC 4055 allows sha256WithRSAEncryption).
SIGNATURE_OIDS = (OID_RSA_ENCRYPTION, OID_SHA256_RSA)


def promised_size(fh: BinaryIO) -> int | None:
    """The file size a PE's own headers promise, read leniently from whatever bytes are there:
    where SizeOfHeaders, the last section's raw data or the certificate table ends, whichever is
    last. None when the headers up to the section count cannot be read (then :func:`.pe.parse_pe`
    says what is wrong)."""
    fh.seek(0)
    head = fh.read(1 << 16)

    def field(at: int, fmt: str = "<I") -> int | None:
        """A little-endian field at ``at``, None if the bytes are not there."""
        return struct.unpack_from(fmt, head, at)[0] if at >= 0 and at + struct.calcsize(fmt) <= len(head) else None

    pe = field(0x3C)
    if head[:2] != b"MZ" or pe is None or head[pe:pe + 4] != b"PE\0\0":
        return None
    count, opt_size, opt = field(pe + 6, "<H"), field(pe + 20, "<H"), pe + 24
    magic = field(opt, "<H")
    headers = field(opt + 60)  # SizeOfHeaders
    if count is None or opt_size is None or magic not in (0x10B, 0x20B) or headers is None:
        return None
    ends = [headers]
    dirs = opt + (96 if magic == 0x10B else 112)  # the data directories, PE32 or PE32+
    n_dirs = min(field(dirs - 4) or 0, (opt_size - (dirs - opt)) // 8)
    if n_dirs > DIR_SECURITY:
        cert_offset, cert_size = field(dirs + 8 * DIR_SECURITY), field(dirs + 8 * DIR_SECURITY + 4)
        if cert_offset is not None and cert_size:
            ends.append(cert_offset + cert_size)
    table = opt + opt_size
    for i in range(count):
        raw_size, raw_offset = field(table + 40 * i + 16), field(table + 40 * i + 20)
        if raw_size is None or raw_offset is None:
            break  # the section table itself is cut: what could be read still counts
        if raw_size:
            ends.append(raw_offset + raw_size)
    return max(ends)


def verify_authenticode(path: str | Path, cert: x509.Certificate | Path | str | bytes | None) -> list[str]:
    """Check the Authenticode signature of ``path``; return the problems found (``[]``: good).

    With ``cert`` the signer must be that certificate or chain to it; with None the signature is
    checked against its own embedded signer certificate (integrity, not trust). An unreadable
    ``cert`` is a UserError; anything wrong with the file itself is a problem in the list.

    Besides what sbverify and osslsigncode check (the image digest, the signed attributes, the
    signer certificate, the RSA signature, the WIN_CERTIFICATE header), the PKCS#7 must be
    strict DER with nothing after it inside its WIN_CERTIFICATE, SignedData and SignerInfo
    version 1, and the signature algorithm rsaEncryption or sha256WithRSAEncryption.
    """
    trusted = _load_cert(cert) if cert is not None else None
    try:
        with open(path, "rb") as fh:
            expected, actual = promised_size(fh), os.fstat(fh.fileno()).st_size
            if expected is not None and actual < expected:
                return [f"{path}: truncated at {actual} of {expected} bytes"]
            pe = parse_pe(fh, str(path))
            offset, size = pe.security
            if not size:
                return [f"{path} is not signed (no certificate table)"]
            if offset + size > pe.file_size or offset % 8 or size < 8:
                return [f"{path}: the certificate table at {offset:#x} (+{size}) is misplaced"]
            problems: list[str] = []
            if offset + size != pe.file_size:
                problems.append(f"{path}: {pe.file_size - offset - size} bytes follow the certificate table")
            fh.seek(offset)
            table = fh.read(size)
            digest = image_digest(fh, pe)
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror}") from None
    except UserError as exc:  # not a PE, or its headers contradict the file
        return [str(exc)]
    length, revision, ctype = struct.unpack_from("<IHH", table, 0)
    if revision != WIN_CERT_REVISION_2_0 or ctype != WIN_CERT_TYPE_PKCS_SIGNED_DATA:
        return problems + [f"{path}: WIN_CERTIFICATE revision {revision:#x} type {ctype:#x} is not PKCS#7"]
    if length > size or length <= 8:
        return problems + [f"{path}: WIN_CERTIFICATE length {length} does not fit its table"]
    if round_up(length, 8) != size:  # one signature, padded to 8 bytes, is all we write or take
        problems.append(f"{path}: the certificate table is {size} bytes, its WIN_CERTIFICATE of {length} "
                        f"bytes padded to 8 makes {round_up(length, 8)}")
    return problems + [f"{path}: {p}" for p in check_pkcs7(table[8:length], digest, trusted)]


def check_pkcs7(blob: bytes, digest: bytes, trusted: x509.Certificate | None) -> list[str]:
    """Problems with an Authenticode PKCS#7 over the image digest ``digest`` (``[]``: good)."""
    try:
        sd = pkcs7.parse_signed_data(blob)
        if sd.content_type != OID_SPC_INDIRECT_DATA or sd.content is None:
            return ["the signed content is not SpcIndirectDataContent"]
        content = sd.content
        digest_alg, signed_digest = _indirect_data(content)
        if len(sd.signers) != 1:
            return [f"{len(sd.signers)} signers, expected 1"]
        si = sd.signers[0]
        if si.signed_attrs is None:
            return ["the signer has no signed attributes"]
        attrs = si.attributes()
        ct = attrs.get(OID_CONTENT_TYPE, [[]])[0]
        content_type = ct[0].as_oid() if len(ct) == 1 and ct[0].tag == der.OID else None
        md = attrs.get(OID_MESSAGE_DIGEST, [[]])[0]
        message_digest = md[0].content if len(md) == 1 and md[0].tag == der.OCTET_STRING else None
    except ValueError as exc:
        return [f"malformed PKCS#7 signature ({exc})"]
    problems = pkcs7.version_problems(sd, si, allow_ski=False)
    problems += pkcs7.digest_problems(sd, si)
    if digest_alg != OID_SHA256:
        problems.append(f"image digest algorithm {digest_alg} is not SHA-256")
    elif signed_digest != digest:
        problems.append("the image digest does not match the signed one (file modified after signing)")
    if si.signature_alg.oid not in SIGNATURE_OIDS:
        problems.append(f"signature algorithm {si.signature_alg.oid} is not RSA "
                        f"({' or '.join(SIGNATURE_OIDS)})")
    repeated = [oid for oid, found in attrs.items() if len(found) > 1]
    if repeated:
        problems.append(f"signed attributes repeated: {', '.join(repeated)}")
    if content_type != OID_SPC_INDIRECT_DATA:
        problems.append("the contentType attribute is missing or wrong")
    if message_digest != hashlib.sha256(content.content).digest():
        problems.append("the messageDigest attribute does not match the signed content")
    found, signer = pkcs7.check_signer(sd, si, trusted)
    if found and trusted is not None and signer is not None:
        # Not the given certificate: say so, and that the signature does not verify with it.
        return problems + [f"signed by a different certificate than {trusted.subject.rfc4514_string()}"] + \
            pkcs7.verify_rsa(trusted, si.signature, si.signed_bytes())
    problems += found
    if signer is not None:
        problems += pkcs7.verify_rsa(signer.cert, si.signature, si.signed_bytes())
    return problems


def _indirect_data(content: der.Node) -> tuple[str, bytes]:
    """(digest algorithm OID, digest) of a SpcIndirectDataContent; ValueError if malformed."""
    kids = content.children() if content.tag == der.SEQUENCE else []
    if len(kids) != 2 or kids[0].tag != der.SEQUENCE or kids[1].tag != der.SEQUENCE:
        raise ValueError("SpcIndirectDataContent is not SEQUENCE { data, messageDigest }")
    data = kids[0].children()
    if not 1 <= len(data) <= 2 or data[0].as_oid() != OID_SPC_PE_IMAGE_DATA:
        raise ValueError("SpcIndirectDataContent does not describe a PE image")
    info = kids[1].children()
    if len(info) != 2 or info[1].tag != der.OCTET_STRING:
        raise ValueError("SpcIndirectDataContent DigestInfo is malformed")
    return pkcs7.algorithm(info[0], "the image digest algorithm").oid, info[1].content
