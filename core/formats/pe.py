"""PE/COFF reading and section appending, as a UKI needs it.

Reference: Microsoft "PE Format" specification (DOS stub, COFF file header, optional header
PE32/PE32+, data directories, section table, CheckSum algorithm as in imagehlp's
CheckSumMappedFile). The layout of appended sections follows systemd's ukify
(src/ukify/ukify.py, pe_add_sections): strip a trailing COFF symbol table, put each new section
at the next FileAlignment boundary with VirtualAddress = previous end rounded to
SectionAlignment, VirtualSize = data length, SizeOfRawData rounded to FileAlignment, `.linux`
marked code and every other section initialized data, all read-only; a section the stub already
has (`.sbat`) is replaced in place.

Only headers are parsed here (a few KiB); section data is streamed by the caller, so a 500 MB
initrd never has to be in memory.

See docs/formats.md, section 8 (PE/COFF and the UKI).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from ..errors import UserError

SECTION_HEADER_SIZE = 40
COFF_HEADER_SIZE = 20
SYMBOL_SIZE = 18
DIR_SECURITY = 4  # IMAGE_DIRECTORY_ENTRY_SECURITY: the Authenticode certificate table

PE32 = 0x10B
PE32_PLUS = 0x20B

FILE_LOCAL_SYMS_STRIPPED = 0x0008
SCN_CNT_CODE = 0x00000020
SCN_CNT_INITIALIZED_DATA = 0x00000040
SCN_MEM_READ = 0x40000000

# Offsets inside the optional header that differ between PE32 and PE32+.
_NUM_RVA_OFFSET = {PE32: 92, PE32_PLUS: 108}
_DATADIR_OFFSET = {PE32: 96, PE32_PLUS: 112}
# Common to both: SizeOfCode 4, SizeOfInitializedData 8, SectionAlignment 32, FileAlignment 36,
# SizeOfImage 56, SizeOfHeaders 60, CheckSum 64.


def round_up(value: int, alignment: int) -> int:
    """``value`` rounded up to a multiple of ``alignment`` (any positive integer)."""
    return (value + alignment - 1) // alignment * alignment


@dataclass(frozen=True)
class Section:
    """One section table entry."""

    name: str
    virtual_size: int
    virtual_address: int
    raw_size: int
    raw_offset: int
    characteristics: int

    def pack(self) -> bytes:
        name = self.name.encode("ascii")
        return struct.pack("<8sIIIIIIHHI", name, self.virtual_size, self.virtual_address,
                           self.raw_size, self.raw_offset, 0, 0, 0, 0, self.characteristics)


@dataclass
class PeFile:
    """The parsed headers of a PE image; offsets are file offsets."""

    name: str  # for error messages: usually the path
    header: bytes  # the first ``size_of_headers`` bytes, as stored
    file_size: int
    pe_offset: int
    machine: int
    coff_characteristics: int
    symtab_offset: int
    symbol_count: int
    opt_offset: int
    opt_size: int
    magic: int
    section_alignment: int
    file_alignment: int
    size_of_image: int
    size_of_headers: int
    checksum: int
    data_dirs: list[tuple[int, int]]
    sections: list[Section] = field(default_factory=list)

    @property
    def checksum_offset(self) -> int:
        return self.opt_offset + 64

    def data_dir_offset(self, index: int) -> int:
        return self.opt_offset + _DATADIR_OFFSET[self.magic] + 8 * index

    @property
    def security_dir_offset(self) -> int:
        """File offset of the certificate-table directory entry (8 bytes)."""
        return self.data_dir_offset(DIR_SECURITY)

    @property
    def security(self) -> tuple[int, int]:
        """(file offset, size) of the certificate table, (0, 0) if unsigned."""
        return self.data_dirs[DIR_SECURITY] if len(self.data_dirs) > DIR_SECURITY else (0, 0)

    @property
    def section_table_offset(self) -> int:
        return self.opt_offset + self.opt_size

    @property
    def data_end(self) -> int:
        """End of the last section's raw data (or of the headers if there is none)."""
        ends = [s.raw_offset + s.raw_size for s in self.sections if s.raw_size]
        return max(ends, default=self.size_of_headers)

    def section(self, name: str) -> Section | None:
        return next((s for s in self.sections if s.name == name), None)


def _u16(data: bytes, offset: int) -> int:
    return struct.unpack_from("<H", data, offset)[0]


def _u32(data: bytes, offset: int) -> int:
    return struct.unpack_from("<I", data, offset)[0]


def parse_pe(source: str | Path | BinaryIO, name: str | None = None) -> PeFile:
    """Parse the headers of a PE file (path or open binary file); UserError if it is not one."""
    if isinstance(source, str | Path):
        try:
            with open(source, "rb") as fh:
                return parse_pe(fh, name or str(source))
        except FileNotFoundError:
            raise UserError(f"{source} does not exist") from None
        except IsADirectoryError:
            raise UserError(f"{source} is a folder, not a PE file") from None
    fh = source
    name = name or getattr(fh, "name", "<PE file>")
    fh.seek(0, 2)
    file_size = fh.tell()
    fh.seek(0)
    head = fh.read(4096)

    def bad(why: str) -> UserError:
        return UserError(f"{name} is not a PE/EFI image ({why})")

    if len(head) < 0x40 or head[:2] != b"MZ":
        raise bad("no MZ header")
    pe_offset = _u32(head, 0x3C)
    if pe_offset + 24 > file_size:
        raise bad("the PE header offset points past the end of the file")
    if pe_offset + 24 + 240 > len(head):
        fh.seek(0)
        head = fh.read(pe_offset + 24 + 240 + 64 * SECTION_HEADER_SIZE)
    if head[pe_offset:pe_offset + 4] != b"PE\0\0":
        raise bad("no PE signature")
    machine, n_sections, _ts, symtab, nsyms, opt_size, characteristics = struct.unpack_from(
        "<HHIIIHH", head, pe_offset + 4)
    opt = pe_offset + 4 + COFF_HEADER_SIZE
    if opt_size < 2 or opt + opt_size > len(head):
        raise bad("truncated optional header")
    magic = _u16(head, opt)
    if magic not in (PE32, PE32_PLUS):
        raise bad(f"unknown optional header magic {magic:#x}")
    if opt_size < _DATADIR_OFFSET[magic]:
        raise bad("optional header too small")
    section_alignment = _u32(head, opt + 32)
    file_alignment = _u32(head, opt + 36)
    size_of_image = _u32(head, opt + 56)
    size_of_headers = _u32(head, opt + 60)
    checksum = _u32(head, opt + 64)
    n_rva = _u32(head, opt + _NUM_RVA_OFFSET[magic])
    n_rva = min(n_rva, (opt_size - _DATADIR_OFFSET[magic]) // 8)
    dirs = [struct.unpack_from("<II", head, opt + _DATADIR_OFFSET[magic] + 8 * i) for i in range(n_rva)]
    if file_alignment == 0 or section_alignment == 0:
        raise bad("zero FileAlignment or SectionAlignment")
    table = opt + opt_size
    table_end = table + n_sections * SECTION_HEADER_SIZE
    if table_end > size_of_headers or size_of_headers > file_size:
        raise bad("the section table does not fit in SizeOfHeaders")
    fh.seek(0)
    header = fh.read(size_of_headers)
    sections = []
    for i in range(n_sections):
        fields = struct.unpack_from("<8sIIIIIIHHI", header, table + i * SECTION_HEADER_SIZE)
        raw_name = fields[0].rstrip(b"\0")
        sections.append(Section(raw_name.decode("ascii", "replace"), fields[1], fields[2],
                                fields[3], fields[4], fields[9]))
    return PeFile(name=name, header=header, file_size=file_size, pe_offset=pe_offset,
                  machine=machine, coff_characteristics=characteristics, symtab_offset=symtab,
                  symbol_count=nsyms, opt_offset=opt, opt_size=opt_size, magic=magic,
                  section_alignment=section_alignment, file_alignment=file_alignment,
                  size_of_image=size_of_image, size_of_headers=size_of_headers,
                  checksum=checksum, data_dirs=[tuple(d) for d in dirs], sections=sections)


def stub_data_end(pe: PeFile, fh: BinaryIO) -> int:
    """Where the stub's useful bytes end: after its last section, dropping a COFF symbol table.

    Refuses anything else after the sections (a signature, an unknown overlay), because it would
    land between the stub and the new sections and change what gets hashed and loaded.
    """
    _refuse_signed(pe)
    end = pe.data_end
    if pe.file_size <= end:
        return end
    if pe.symtab_offset and pe.symtab_offset >= end:
        fh.seek(pe.symtab_offset + SYMBOL_SIZE * pe.symbol_count)
        raw = fh.read(4)
        strings = _u32(raw, 0) if len(raw) == 4 else 0
        symtab_end = pe.symtab_offset + SYMBOL_SIZE * pe.symbol_count + strings
        if symtab_end == pe.file_size and all(b == 0 for b in _read_range(fh, end, pe.symtab_offset)):
            return end
    raise UserError(f"stub {pe.name} has {pe.file_size - end} bytes of unknown data after its last "
                    "section; use an unmodified systemd-stub (linuxx64.efi.stub)")


def _refuse_signed(stub: PeFile) -> None:
    if stub.security != (0, 0):
        raise UserError(f"stub {stub.name} is already signed; use the unsigned stub "
                        "(/usr/lib/systemd/boot/efi/linuxx64.efi.stub), the UKI is signed as a whole")


def _read_range(fh: BinaryIO, start: int, end: int) -> bytes:
    fh.seek(start)
    return fh.read(max(0, end - start))


@dataclass(frozen=True)
class AppendPlan:
    """Where everything goes when sections are added to a stub.

    ``header`` is the complete new header block (``size_of_headers`` bytes, CheckSum 0, no
    certificate table); the stub's bytes from ``size_of_headers`` to ``stub_end`` follow
    unchanged except for replaced sections; then the new sections, each at ``raw_offset``.
    """

    header: bytes
    stub_copy_from: int  # the stub's original SizeOfHeaders
    stub_end: int
    new_sections: list[Section]
    replaced: list[Section]  # stub sections whose data is replaced in place (new header values)
    file_size: int
    checksum_offset: int
    security_dir_offset: int


def plan_append(stub: PeFile, stub_end: int, sections: Iterable[tuple[str, int]]) -> AppendPlan:
    """Lay out ``sections`` (name, length) after ``stub`` the way ukify does."""
    sections = list(sections)
    _refuse_signed(stub)
    fa, sa = stub.file_alignment, stub.section_alignment
    for s in stub.sections:
        if s.raw_size and (s.raw_offset % fa or s.raw_size % fa):
            raise UserError(f"stub {stub.name}: section {s.name} is not aligned to FileAlignment "
                            f"{fa:#x}; use an unmodified systemd-stub")
    existing = {s.name: i for i, s in enumerate(stub.sections)}
    appended = [(n, size) for n, size in sections if n not in existing]
    replacing = [(n, size) for n, size in sections if n in existing]
    for n, _size in sections:
        if not n.isascii() or not n.isprintable() or not 0 < len(n) <= 8:
            raise UserError(f"bad PE section name {n!r}: at most 8 printable ASCII characters")
    if len({n for n, _ in sections}) != len(sections):
        raise UserError("duplicate section names: " + ", ".join(n for n, _ in sections))

    # Room for new section headers: up to SizeOfHeaders rounded to FileAlignment, but never into
    # the first section's data (what ukify relies on too).
    first_raw = min((s.raw_offset for s in stub.sections if s.raw_size), default=stub.file_size)
    headers_end = min(round_up(stub.size_of_headers, fa), first_raw)
    table_end = stub.section_table_offset + len(stub.sections) * SECTION_HEADER_SIZE
    room = (headers_end - table_end) // SECTION_HEADER_SIZE
    if len(appended) > room:
        raise UserError(f"stub {stub.name} has header room for {room} new sections but "
                        f"{len(appended)} are needed ({', '.join(n for n, _ in appended)}); "
                        "drop optional sections or use a newer systemd-stub")
    header = bytearray(stub.header[:headers_end])
    if len(header) < headers_end:  # SizeOfHeaders rounded up: fill from the stub's data area
        header += bytes(headers_end - len(header))
    new_end = table_end + len(appended) * SECTION_HEADER_SIZE
    if any(header[table_end:new_end]):
        raise UserError(f"stub {stub.name}: the space after its section table is not empty; "
                        "use an unmodified systemd-stub")

    replaced = []
    for n, size in replacing:
        old = stub.sections[existing[n]]
        if size > old.raw_size:
            raise UserError(f"the new {n} ({size} bytes) does not fit in the stub's own {n} "
                            f"section ({old.raw_size} bytes) of {stub.name}")
        new = Section(n, size, old.virtual_address, old.raw_size, old.raw_offset, old.characteristics)
        replaced.append(new)
        struct.pack_into("<I", header, stub.section_table_offset + existing[n] * SECTION_HEADER_SIZE + 8, size)

    offset = round_up(stub_end, fa)
    last = max(stub.sections, key=lambda s: s.virtual_address + s.virtual_size)
    vend = last.virtual_address + last.virtual_size
    new_sections = []
    added_init = 0
    for n, size in appended:
        chars = SCN_MEM_READ | (SCN_CNT_CODE if n == ".linux" else SCN_CNT_INITIALIZED_DATA)
        va = round_up(vend, sa)
        s = Section(n, size, va, round_up(size, fa), offset, chars)
        new_sections.append(s)
        offset += s.raw_size
        vend = va + size
        added_init += size
    if offset > 0xFFFFFFFF:
        raise UserError(f"the UKI would be {offset} bytes; a PE file cannot exceed 4 GiB")

    table = stub.section_table_offset + len(stub.sections) * SECTION_HEADER_SIZE
    for s in new_sections:
        header[table:table + SECTION_HEADER_SIZE] = s.pack()
        table += SECTION_HEADER_SIZE
    coff = stub.pe_offset + 4
    struct.pack_into("<H", header, coff + 2, len(stub.sections) + len(new_sections))
    if stub.symtab_offset or stub.symbol_count:
        struct.pack_into("<II", header, coff + 8, 0, 0)
        struct.pack_into("<H", header, coff + 18, stub.coff_characteristics | FILE_LOCAL_SYMS_STRIPPED)
    opt = stub.opt_offset
    init = _u32(stub.header, opt + 8)
    struct.pack_into("<I", header, opt + 8, (init + added_init) & 0xFFFFFFFF)
    struct.pack_into("<I", header, opt + 56, round_up(vend, sa) if new_sections else stub.size_of_image)
    struct.pack_into("<I", header, opt + 60, headers_end)
    struct.pack_into("<I", header, opt + 64, 0)
    return AppendPlan(header=bytes(header), stub_copy_from=headers_end, stub_end=stub_end,
                      new_sections=new_sections, replaced=replaced, file_size=offset,
                      checksum_offset=stub.checksum_offset,
                      security_dir_offset=stub.security_dir_offset)


def _fold(value: int) -> int:
    """Shrink ``value`` keeping it mod 0xFFFF: add its high and low halves (cut at 16-bit steps).

    Cheaper than one big-integer division for megabyte-sized values.
    """
    while value.bit_length() > 4096:
        half = (value.bit_length() // 32) * 16
        value = (value >> half) + (value & ((1 << half) - 1))
    return value


class PeChecksum:
    """The PE optional-header CheckSum, accumulated over streamed chunks.

    The algorithm (imagehlp CheckSumMappedFile, sbsigntools image.c) adds the file as 16-bit
    little-endian words with end-around carry, the CheckSum field counted as zero, then adds the
    file length. Because 0x10000 = 1 (mod 0xFFFF), a chunk's contribution is simply its bytes
    read as one little-endian integer, modulo 0xFFFF, which Python does at C speed.
    """

    def __init__(self) -> None:
        self._acc = 0
        self._nonzero = False

    def add(self, data: bytes | memoryview, offset: int) -> None:
        """Add ``data`` found at file ``offset`` (with the CheckSum field already zeroed)."""
        value = int.from_bytes(data, "little")
        if value:
            self._nonzero = True
            if offset & 1:
                value <<= 8
            self._acc = (self._acc + _fold(value)) % 0xFFFF

    def value(self, length: int) -> int:
        """The CheckSum of a file of ``length`` bytes whose contents were all added."""
        folded = (self._acc or 0xFFFF) if self._nonzero else 0
        return (folded + length) & 0xFFFFFFFF


def pe_checksum(fh: BinaryIO, pe: PeFile, chunk: int = 1 << 20) -> int:
    """Compute the CheckSum of a whole PE file by streaming it."""
    acc = PeChecksum()
    fh.seek(0)
    offset = 0
    skip = pe.checksum_offset
    while True:
        data = fh.read(chunk)
        if not data:
            break
        if offset <= skip < offset + len(data):
            buf = bytearray(data)
            buf[skip - offset:skip - offset + 4] = bytes(min(4, len(data) - (skip - offset)))
            data = bytes(buf)
        acc.add(data, offset)
        offset += len(data)
    return acc.value(offset)
