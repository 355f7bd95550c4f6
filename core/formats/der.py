"""A minimal ASN.1 DER encoder and reader, enough for Authenticode's PKCS#7.

Reference: ITU-T X.690 (DER: definite lengths, minimal encodings, SET OF sorted by encoding).
python-cryptography parses certificates and does the RSA/SHA-256 work; it cannot build a PKCS#7
SignedData whose content type is SpcIndirectDataContent, hence this small module.

The reader is strict, since it reads signatures that an attacker may have shaped: definite and
minimal lengths only, every constructed element filled exactly by its children, INTEGERs and
OBJECT IDENTIFIERs minimally encoded. Anything else is a ValueError naming the rule broken.

See docs/formats.md, section 9 (Authenticode).
"""

from __future__ import annotations

from dataclasses import dataclass

# Universal tags
BOOLEAN = 0x01
INTEGER = 0x02
BIT_STRING = 0x03
OCTET_STRING = 0x04
NULL = 0x05
OID = 0x06
BMP_STRING = 0x1E
SEQUENCE = 0x30
SET = 0x31


def length(n: int) -> bytes:
    """DER length octets."""
    if n < 0x80:
        return bytes([n])
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(body)]) + body


def tlv(tag: int, content: bytes) -> bytes:
    return bytes([tag]) + length(len(content)) + content


def seq(*items: bytes) -> bytes:
    return tlv(SEQUENCE, b"".join(items))


def set_of(*items: bytes) -> bytes:
    """A DER SET OF: elements sorted by their encodings."""
    return tlv(SET, b"".join(sorted(items)))


def integer(value: int) -> bytes:
    size = max(1, (value.bit_length() + 8) // 8)  # room for the sign bit
    return tlv(INTEGER, value.to_bytes(size, "big", signed=True))


def oid(dotted: str) -> bytes:
    parts = [int(p) for p in dotted.split(".")]
    body = bytearray([40 * parts[0] + parts[1]])
    for p in parts[2:]:
        chunk = [p & 0x7F]
        p >>= 7
        while p:
            chunk.append(0x80 | (p & 0x7F))
            p >>= 7
        body += bytes(reversed(chunk))
    return tlv(OID, bytes(body))


def null() -> bytes:
    return b"\x05\x00"


def octets(data: bytes) -> bytes:
    return tlv(OCTET_STRING, data)


def explicit(number: int, inner: bytes) -> bytes:
    """[number] EXPLICIT: a constructed context tag around the inner encoding."""
    return tlv(0xA0 | number, inner)


@dataclass(frozen=True)
class Node:
    """One decoded TLV; ``raw`` is the whole encoding, ``content`` its value octets."""

    tag: int
    content: bytes
    raw: bytes

    @property
    def constructed(self) -> bool:
        return bool(self.tag & 0x20)

    def children(self) -> list[Node]:
        """The elements inside a constructed node; they must fill its content exactly."""
        if not self.constructed:
            raise ValueError(f"element with tag {self.tag:#04x} is primitive, not constructed")
        out = []
        pos = 0
        while pos < len(self.content):
            node, pos = _read(self.content, pos)
            out.append(node)
        return out

    def as_oid(self) -> str:
        """The dotted OBJECT IDENTIFIER; ValueError unless it is one, minimally encoded."""
        if self.tag != OID or not self.content:
            raise ValueError("not an OBJECT IDENTIFIER")
        body = self.content
        if body[-1] & 0x80:
            raise ValueError("OBJECT IDENTIFIER ends inside a sub-identifier")
        arcs: list[int] = []
        value = 0
        start = True
        for b in body:
            if start and b == 0x80:
                raise ValueError("OBJECT IDENTIFIER sub-identifier has a leading 0x80 (not DER)")
            value = (value << 7) | (b & 0x7F)
            start = not b & 0x80
            if start:
                arcs.append(value)
                value = 0
        first = min(arcs[0] // 40, 2)
        return ".".join(map(str, [first, arcs[0] - 40 * first, *arcs[1:]]))

    def as_int(self) -> int:
        """The INTEGER's value; ValueError unless it is one, minimally encoded (X.690 8.3.2)."""
        if self.tag != INTEGER or not self.content:
            raise ValueError("not an INTEGER")
        c = self.content
        if len(c) > 1 and ((c[0] == 0x00 and not c[1] & 0x80) or (c[0] == 0xFF and c[1] & 0x80)):
            raise ValueError("INTEGER is not minimally encoded (not DER)")
        return int.from_bytes(c, "big", signed=True)


def _read(data: bytes, pos: int) -> tuple[Node, int]:
    """One TLV at ``pos``: DER only (definite, minimal lengths; X.690 10.1), single-byte tags."""
    if pos + 2 > len(data):
        raise ValueError("truncated DER")
    start = pos
    tag = data[pos]
    if tag & 0x1F == 0x1F:
        raise ValueError("multi-byte DER tags are not supported")
    first = data[pos + 1]
    pos += 2
    if first < 0x80:
        n = first
    else:
        count = first & 0x7F
        if count == 0:
            raise ValueError("indefinite length (BER, not DER)")
        if count > 4 or pos + count > len(data):
            raise ValueError("bad DER length")
        if data[pos] == 0:
            raise ValueError("DER length with a leading zero byte (not minimal)")
        n = int.from_bytes(data[pos:pos + count], "big")
        if n < 0x80:
            raise ValueError("long-form DER length below 128 (not minimal)")
        pos += count
    if pos + n > len(data):
        raise ValueError("DER element runs past its container")
    return Node(tag, data[pos:pos + n], data[start:pos + n]), pos + n


def parse(data: bytes) -> Node:
    """Decode one DER element that must fill ``data`` exactly."""
    node, end = _read(data, 0)
    if end != len(data):
        raise ValueError("trailing bytes after DER element")
    return node
