"""GUID Partition Table: writer for DDIs and a defensive reader for verification.

Reference: UEFI Specification 2.10, chapter 5 "GUID Partition Table (GPT) Disk Layout"
(protective MBR, header, partition entry array, CRC32s, backup at the end of the disk), and the
Discoverable Partitions Specification (systemd ``docs/DISCOVERABLE_PARTITIONS.md``, uapi-group)
for the partition type GUIDs. The type table below was checked against
``systemd-id128 show`` of systemd 252. 512-byte LBAs, 128 entries of 128 bytes, GUIDs stored
mixed-endian (``uuid.UUID.bytes_le``), partition names UTF-16LE.

See docs/formats.md, section 6 (GPT and the sysext DDI).
"""

from __future__ import annotations

import struct
import uuid
import zlib
from dataclasses import dataclass, field
from typing import BinaryIO

LBA = 512
ENTRY_SIZE = 128
ENTRY_COUNT = 128
ARRAY_LBAS = ENTRY_SIZE * ENTRY_COUNT // LBA  # 32
FIRST_PARTITION_LBA = 2048  # 1 MiB, the conventional start
ALIGN = 4096  # partitions start and end on 4 KiB boundaries
HEADER_SIZE = 92
SIGNATURE = b"EFI PART"
REVISION = 0x00010000

#: Bit 60: mount read-only (Discoverable Partitions Specification). Bit 63 (no-auto) never set.
ATTR_READ_ONLY = 1 << 60
ATTR_NO_AUTO = 1 << 63

#: Root-layout partition types per systemd architecture name: (root, root-verity, root-verity-sig).
ROOT_TYPES: dict[str, tuple[uuid.UUID, uuid.UUID, uuid.UUID]] = {
    arch: (uuid.UUID(root), uuid.UUID(verity), uuid.UUID(sig))
    for arch, root, verity, sig in (
        ("x86-64", "4f68bce3-e8cd-4db1-96e7-fbcaf984b709", "2c7357ed-ebd2-46d9-aec1-23d437ec2bf5",
         "41092b05-9fc8-4523-994f-2def0408b176"),
        ("arm64", "b921b045-1df0-41c3-af44-4c6f280d3fae", "df3300ce-d69f-4c92-978c-9bfb0f38d820",
         "6db69de6-29f4-4758-a7a5-962190f00ce3"),
        ("riscv64", "72ec70a6-cf74-40e6-bd49-4bda08e8f224", "b6ed5582-440b-4209-b8da-5ff7c419ea3d",
         "efe0f087-ea8d-4469-821a-4c2a96a8386a"),
        ("x86", "44479540-f297-41b2-9af7-d131d5f0458a", "d13c5d3b-b5d1-422a-b29f-9454fdc89d76",
         "5996fc05-109c-48de-808b-23fa0830b676"),
        ("arm", "69dad710-2ce4-4e3c-b16c-21a1d49abed3", "7386cdf2-203c-47a9-a498-f2ecce45a2d6",
         "42b0455f-eb11-491d-98d3-56145ba9d037"),
        ("loongarch64", "77055800-792c-4f94-b39a-98c91b762bb6", "f3393b22-e9af-4613-a948-9d3bfbd0c535",
         "5afb67eb-ecc8-4f85-ae8e-ac1e7c50e7d0"),
        ("ppc64-le", "c31c45e6-3f39-412e-80fb-4809c4980599", "906bd944-4589-4aae-a4e4-dd983917446a",
         "d4a236e7-e873-4c07-bf1d-bf6cf7f1c3c6"),
        ("s390x", "5eead9a9-fe09-4a1e-a1d7-520d00531306", "b325bfbe-c7be-4ab8-8357-139e652d2f6b",
         "c80187a5-73a3-491a-901a-017c3fa953e9"),
    )
}

_HEADER = struct.Struct("<8sIIIIQQQQ16sQIII")  # the 92 bytes of a GPT header
_ENTRY = struct.Struct("<16s16sQQQ72s")
assert _HEADER.size == HEADER_SIZE and _ENTRY.size == ENTRY_SIZE


@dataclass(frozen=True)
class Partition:
    """One GPT entry; ``first_lba``/``last_lba`` inclusive, as stored."""

    type_guid: uuid.UUID
    part_guid: uuid.UUID
    first_lba: int
    last_lba: int
    name: str
    attributes: int = 0
    index: int = 0  # slot in the entry array (0-based), filled by the reader

    @property
    def offset(self) -> int:
        return self.first_lba * LBA

    @property
    def size(self) -> int:
        return (self.last_lba - self.first_lba + 1) * LBA


@dataclass
class GptTable:
    """What :func:`read_gpt` found; ``problems`` is empty for a well-formed table."""

    disk_guid: uuid.UUID | None = None
    partitions: list[Partition] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    first_usable: int = 0
    last_usable: int = 0


def align_up(value: int, to: int = ALIGN) -> int:
    return -(-value // to) * to


def plan(sizes: list[int]) -> tuple[list[tuple[int, int]], int]:
    """Place partitions of ``sizes`` bytes back to back from LBA 2048, 4 KiB aligned.

    Returns per partition ``(first_lba, last_lba)`` and the disk size in bytes (a multiple of
    4 KiB, with room for the backup entry array and header after the last partition).
    """
    spans = []
    lba = FIRST_PARTITION_LBA
    for size in sizes:
        if size <= 0:
            raise ValueError("a partition must not be empty")
        nlba = align_up(size) // LBA
        spans.append((lba, lba + nlba - 1))
        lba += nlba
    disk = align_up((lba + ARRAY_LBAS + 1) * LBA)
    return spans, disk


def _protective_mbr(disk_lbas: int) -> bytes:
    mbr = bytearray(LBA)
    # One partition of type 0xEE from LBA 1 covering the disk (capped at 32 bits).
    mbr[446:462] = struct.pack("<B3sB3sII", 0, b"\x00\x02\x00", 0xEE, b"\xff\xff\xff", 1,
                               min(disk_lbas - 1, 0xFFFFFFFF))
    mbr[510:512] = b"\x55\xaa"
    return bytes(mbr)


def _entry_array(partitions: list[Partition]) -> bytes:
    if len(partitions) > ENTRY_COUNT:
        raise ValueError(f"at most {ENTRY_COUNT} partitions fit a GPT")
    out = bytearray(ENTRY_SIZE * ENTRY_COUNT)
    for i, p in enumerate(partitions):
        name = p.name.encode("utf-16-le")
        if len(name) > 72:
            raise ValueError(f"GPT partition name {p.name!r} is longer than 36 UTF-16 units")
        out[i * ENTRY_SIZE:(i + 1) * ENTRY_SIZE] = _ENTRY.pack(
            p.type_guid.bytes_le, p.part_guid.bytes_le, p.first_lba, p.last_lba, p.attributes, name)
    return bytes(out)


def _header(*, my_lba: int, alt_lba: int, first_usable: int, last_usable: int, disk_guid: uuid.UUID,
            entries_lba: int, entries_crc: int) -> bytes:
    fields = [SIGNATURE, REVISION, HEADER_SIZE, 0, 0, my_lba, alt_lba, first_usable, last_usable,
              disk_guid.bytes_le, entries_lba, ENTRY_COUNT, ENTRY_SIZE, entries_crc]
    crc = zlib.crc32(_HEADER.pack(*fields))
    fields[3] = crc
    return _HEADER.pack(*fields) + bytes(LBA - HEADER_SIZE)


def write_gpt(out: BinaryIO, disk_size: int, partitions: list[Partition], disk_guid: uuid.UUID,
              base: int = 0) -> None:
    """Write the protective MBR, primary GPT (LBA 0-33) and backup GPT (last 33 LBAs).

    Partition contents are not touched; ``out`` must be seekable and ``disk_size`` a multiple
    of 512. The disk is extended to ``disk_size`` by writing the backup header last.
    """
    if disk_size % LBA:
        raise ValueError("disk size must be a multiple of 512")
    lbas = disk_size // LBA
    first_usable = 2 + ARRAY_LBAS
    last_usable = lbas - 2 - ARRAY_LBAS
    for p in partitions:
        if not first_usable <= p.first_lba <= p.last_lba <= last_usable:
            raise ValueError(f"partition {p.name!r} (LBA {p.first_lba}-{p.last_lba}) is outside "
                             f"the usable area {first_usable}-{last_usable}")
    array = _entry_array(partitions)
    crc = zlib.crc32(array)
    common = dict(first_usable=first_usable, last_usable=last_usable, disk_guid=disk_guid,
                  entries_crc=crc)
    out.seek(base)
    out.write(_protective_mbr(lbas))
    out.write(_header(my_lba=1, alt_lba=lbas - 1, entries_lba=2, **common))
    out.write(array)
    out.seek(base + (lbas - 1 - ARRAY_LBAS) * LBA)
    out.write(array)
    out.write(_header(my_lba=lbas - 1, alt_lba=1, entries_lba=lbas - 1 - ARRAY_LBAS, **common))


def _parse_header(raw: bytes, where: str, problems: list[str]) -> tuple | None:
    if len(raw) < HEADER_SIZE:
        problems.append(f"{where} GPT header is truncated")
        return None
    h = _HEADER.unpack(raw[:HEADER_SIZE])
    sig, rev, hsize, crc = h[0], h[1], h[2], h[3]
    if sig != SIGNATURE:
        problems.append(f"{where} GPT header has no 'EFI PART' signature")
        return None
    if hsize < HEADER_SIZE or hsize > LBA:
        problems.append(f"{where} GPT header size {hsize} is not within 92..512")
        return None
    if rev != REVISION:
        problems.append(f"{where} GPT header revision {rev:#x} is not 1.0")
    check = bytearray(raw[:hsize])
    check[16:20] = b"\0\0\0\0"
    if zlib.crc32(check) != crc:
        problems.append(f"{where} GPT header CRC32 mismatch")
        return None
    return h


def read_gpt(f: BinaryIO, disk_size: int | None = None) -> GptTable:
    """Parse and cross-check MBR, both headers and both entry arrays; never raises on bad data.

    Partitions come from the primary table when its CRCs hold, else from the backup.
    """
    t = GptTable()
    if disk_size is None:
        disk_size = f.seek(0, 2)
    if disk_size < (3 + 2 * ARRAY_LBAS) * LBA:
        t.problems.append(f"image of {disk_size} bytes is too small to hold a GPT")
        return t
    if disk_size % LBA:
        t.problems.append(f"image size {disk_size} is not a multiple of 512")
    lbas = disk_size // LBA

    def read(lba: int, n: int = 1) -> bytes:
        f.seek(lba * LBA)
        return f.read(n * LBA)

    mbr = read(0)
    if mbr[510:512] != b"\x55\xaa":
        t.problems.append("protective MBR has no 0x55AA signature")
    elif not any(mbr[446 + 16 * i + 4] == 0xEE for i in range(4)):
        t.problems.append("MBR has no protective 0xEE partition")

    tables: dict[str, tuple[tuple, bytes]] = {}
    primary = _parse_header(read(1), "primary", t.problems)
    candidates = [("primary", primary, 1)]
    backup_lba = lbas - 1
    if primary is not None:
        if primary[5] != 1:
            t.problems.append(f"primary GPT header says it is at LBA {primary[5]}, not 1")
        if primary[6] != lbas - 1:
            t.problems.append(f"primary GPT header places the backup at LBA {primary[6]}, "
                              f"but the last LBA is {lbas - 1}")
        if 0 < primary[6] < lbas:
            backup_lba = primary[6]
    backup = _parse_header(read(backup_lba), "backup", t.problems)
    candidates.append(("backup", backup, backup_lba))

    for where, h, at in candidates:
        if h is None:
            continue
        my_lba, alt_lba, first_usable, last_usable = h[5], h[6], h[7], h[8]
        entries_lba, count, esize, ecrc = h[10], h[11], h[12], h[13]
        if my_lba != at:
            t.problems.append(f"{where} GPT header says it is at LBA {my_lba}, found at {at}")
        if where == "backup" and alt_lba != 1:
            t.problems.append(f"backup GPT header points to the primary at LBA {alt_lba}, not 1")
        if esize < 128 or esize & (esize - 1) or count == 0 or count * esize > 1 << 20:
            t.problems.append(f"{where} GPT entry array geometry ({count} x {esize}) is invalid")
            continue
        nlba = -(-count * esize // LBA)
        if not 2 <= entries_lba < lbas or entries_lba + nlba > lbas:
            t.problems.append(f"{where} GPT entry array at LBA {entries_lba} is outside the image")
            continue
        if not (entries_lba + nlba <= first_usable <= last_usable < lbas) and where == "primary":
            t.problems.append(f"primary GPT usable area {first_usable}-{last_usable} is inconsistent")
        array = read(entries_lba, nlba)[:count * esize]
        if zlib.crc32(array) != ecrc:
            t.problems.append(f"{where} GPT entry array CRC32 mismatch")
            continue
        tables[where] = (h, array)

    if "primary" in tables and "backup" in tables:
        p, b = tables["primary"][0], tables["backup"][0]
        if (p[7], p[8], p[9], p[13]) != (b[7], b[8], b[9], b[13]):
            t.problems.append("primary and backup GPT headers disagree (usable area, disk GUID or entries)")
        if tables["primary"][1] != tables["backup"][1]:
            t.problems.append("primary and backup GPT entry arrays differ")
    chosen = tables.get("primary") or tables.get("backup")
    if chosen is None:
        t.problems.append("no valid GPT header with a valid entry array")
        return t
    h, array = chosen
    t.disk_guid = uuid.UUID(bytes_le=h[9])
    t.first_usable, t.last_usable = h[7], h[8]
    esize = h[12]
    for i in range(h[11]):
        raw = array[i * esize:i * esize + ENTRY_SIZE]
        tguid, pguid, first, last, attrs, name = _ENTRY.unpack(raw)
        if tguid == bytes(16):
            continue
        try:
            text = name.decode("utf-16-le").split("\0", 1)[0]
        except UnicodeDecodeError:
            t.problems.append(f"GPT entry {i + 1} has a name that is not valid UTF-16")
            text = ""
        part = Partition(uuid.UUID(bytes_le=tguid), uuid.UUID(bytes_le=pguid), first, last, text,
                         attrs, i)
        if first > last or first < t.first_usable or last > t.last_usable:
            t.problems.append(f"GPT entry {i + 1} ({text!r}, LBA {first}-{last}) lies outside "
                              f"the usable area {t.first_usable}-{t.last_usable}")
        t.partitions.append(part)
    ordered = sorted(t.partitions, key=lambda p: p.first_lba)
    for a, b in zip(ordered, ordered[1:], strict=False):
        if b.first_lba <= a.last_lba:
            t.problems.append(f"GPT partitions {a.name!r} and {b.name!r} overlap")
    return t
