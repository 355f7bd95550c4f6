"""A minimal ASN.1 DER encoder and reader, enough for Authenticode's PKCS#7.

Reference: ITU-T X.690 (DER: definite lengths, minimal encodings, SET OF sorted by encoding).
python-cryptography parses certificates and does the RSA/SHA-256 work; it cannot build a PKCS#7
SignedData whose content type is SpcIndirectDataContent, hence this small module.
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

    def children(self) -> list[Node]:
        out = []
        pos = 0
        while pos < len(self.content):
            node, pos = _read(self.content, pos)
            out.append(node)
        return out

    def as_oid(self) -> str:
        if self.tag != OID or not self.content:
            raise ValueError("not an OBJECT IDENTIFIER")
        first = self.content[0]
        parts = [min(first // 40, 2), first - 40 * min(first // 40, 2)]
        value = 0
        for b in self.content[1:]:
            value = (value << 7) | (b & 0x7F)
            if not b & 0x80:
                parts.append(value)
                value = 0
        return ".".join(map(str, parts))

    def as_int(self) -> int:
        if self.tag != INTEGER:
            raise ValueError("not an INTEGER")
        return int.from_bytes(self.content, "big", signed=True)


def _read(data: bytes, pos: int) -> tuple[Node, int]:
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
        if count == 0 or count > 4 or pos + count > len(data):
            raise ValueError("bad DER length")
        n = int.from_bytes(data[pos:pos + count], "big")
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
