"""A small, defensive ELF reader: what the dynamic loader needs to know about one file.

Sources: the System V gABI (``elf.h`` in glibc: the file header, program and section headers,
``PT_INTERP``, ``PT_DYNAMIC`` with ``DT_NEEDED``/``DT_RUNPATH``/``DT_RPATH``/``DT_SONAME`` whose
values are offsets into the string table at the *address* ``DT_STRTAB``, mapped to a file offset
through the ``PT_LOAD`` segments; ``PT_NOTE`` entries padded to the segment's alignment) and
systemd.io/ELF_DLOPEN_METADATA (the ``.note.dlopen`` note: owner ``FDO``, type ``0x407c0c0a``, a
NUL-padded JSON array of ``{"soname": [...], "priority": ..., "feature": ..., "description": ...}``
objects, priority ``recommended`` when absent).

Why our own reader and not pyelftools: we need five facts per file, for a few hundred files in
well under a second. This reader takes one ``pread`` of the file's first 16 KiB (which holds the
headers, the interpreter and usually the dynamic segment) plus a few small ones, never the whole
file, and bounds every size it reads before it allocates. pyelftools (pure Python, maintained)
builds a construct-based parser per file and walks segments lazily through a file object; it
would add a dependency for no fact we lack, and its errors on hostile input are its own
exception types (``ELFError``, ``ELFParseError``, struct and construct errors) rather than one.

Both classes (32/64-bit) and both byte orders are read. Malformed input raises :class:`ElfError`
naming what is wrong and at which offset; a file that is not ELF at all gives ``None``.

See docs/formats.md, section 11 (ELF: what the boot set reads).
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass

ELF_MAGIC = b"\x7fELF"
ELFCLASS32, ELFCLASS64 = 1, 2
PT_LOAD, PT_DYNAMIC, PT_INTERP, PT_NOTE = 1, 2, 3, 4
DT_NULL, DT_NEEDED, DT_STRTAB, DT_STRSZ, DT_SONAME, DT_RPATH, DT_RUNPATH = 0, 1, 5, 10, 14, 15, 29
DT_FLAGS_1 = 0x6FFFFFFB
DF_1_NODEFLIB = 0x800
SHT_NOTE = 7
PN_XNUM = 0xFFFF
SHN_XINDEX = 0xFFFF
#: the dlopen note (systemd.io/ELF_DLOPEN_METADATA)
DLOPEN_OWNER = b"FDO"
DLOPEN_TYPE = 0x407C0C0A
PRIORITIES = ("required", "recommended", "suggested")

#: bounds on what one file may make us read: far above any real file, low enough to never hurt
_HEAD = 16 * 1024
_MAX_INTERP = 4096  # PATH_MAX
_MAX_DYNAMIC = 1 << 20
_MAX_NOTES = 1 << 20
_MAX_STRING = 64 * 1024
_MAX_HEADERS = 1 << 16  # program or section header entries


class ElfError(ValueError):
    """A malformed ELF file: the message says what is wrong and at which offset."""


@dataclass(frozen=True)
class DlopenNote:
    """One entry of a ``.note.dlopen`` note: libraries the file may ``dlopen`` (alternatives, in
    the order it tries them) and how much it needs them."""

    sonames: tuple[str, ...]
    priority: str  # "required" | "recommended" | "suggested"
    feature: str | None
    description: str | None


@dataclass(frozen=True)
class ElfInfo:
    """What the dynamic loader reads from one ELF file."""

    elf_class: int  # 1 = 32-bit, 2 = 64-bit
    machine: int  # e_machine
    interp: str | None  # PT_INTERP
    needed: tuple[str, ...]  # DT_NEEDED in order
    runpath: tuple[str, ...]  # DT_RUNPATH split on ':'
    rpath: tuple[str, ...]  # DT_RPATH split on ':' (glibc ignores it when DT_RUNPATH is set)
    soname: str | None
    dlopen: tuple[DlopenNote, ...]
    little_endian: bool = True  # EI_DATA: a library must match its user's byte order too
    e_type: int = 0  # ET_REL 1, ET_EXEC 2, ET_DYN 3
    nodeflib: bool = False  # DF_1_NODEFLIB: the loader skips its default folders for this file's needs


@dataclass(frozen=True)
class _Header:
    elf_class: int
    little_endian: bool
    e_type: int
    machine: int
    phoff: int
    shoff: int
    phentsize: int
    phnum: int
    shentsize: int
    shnum: int
    shstrndx: int


class _Source:
    """Bounded reads of one file (by ``pread`` on a descriptor) or of bytes already in memory."""

    def __init__(self, fd: int | None = None, data: bytes | None = None) -> None:
        self.fd = fd
        if data is not None:
            self.size = len(data)
            self.head = data
        else:
            assert fd is not None
            self.size = os.fstat(fd).st_size
            self.head = os.pread(fd, _HEAD, 0)

    def read(self, offset: int, length: int, what: str) -> bytes:
        if offset < 0 or length < 0 or offset + length > self.size:
            raise ElfError(f"{what} at offset {offset:#x} ({length} bytes) runs past the end of the file "
                           f"({self.size} bytes)")
        if offset + length <= len(self.head):
            return self.head[offset:offset + length]
        assert self.fd is not None
        got = os.pread(self.fd, length, offset)
        if len(got) != length:
            raise ElfError(f"{what} at offset {offset:#x}: the file ended early (it shrank while read?)")
        return got


def _header(src: _Source) -> _Header | None:
    ident = src.head[:16]
    if len(ident) < 4 or ident[:4] != ELF_MAGIC:
        return None
    if len(ident) < 16:
        raise ElfError(f"ELF identification truncated at offset {len(ident):#x} (16 bytes needed)")
    cls, data = ident[4], ident[5]
    if cls not in (ELFCLASS32, ELFCLASS64):
        raise ElfError(f"EI_CLASS {cls} at offset 0x4 is neither 1 (32-bit) nor 2 (64-bit)")
    if data not in (1, 2):
        raise ElfError(f"EI_DATA {data} at offset 0x5 is neither 1 (little-endian) nor 2 (big-endian)")
    end = "<" if data == 1 else ">"
    fmt = end + ("HHIIIIIHHHHHH" if cls == ELFCLASS32 else "HHIQQQIHHHHHH")
    raw = src.read(16, struct.calcsize(fmt), "ELF header")
    (e_type, machine, _version, _entry, phoff, shoff, _flags, _ehsize, phentsize, phnum, shentsize, shnum,
     shstrndx) = struct.unpack(fmt, raw)
    hdr = _Header(cls, data == 1, e_type, machine, phoff, shoff, phentsize, phnum, shentsize, shnum, shstrndx)
    if phnum == PN_XNUM or (shnum == 0 and shoff) or shstrndx == SHN_XINDEX:
        # extended numbering: the real counts live in section header 0 (gABI "Extended numbering")
        first = _section_headers(src, hdr, count=1)
        if not first:
            raise ElfError(f"extended header counts but no section header 0 at offset {shoff:#x}")
        s0 = first[0]
        hdr = _Header(cls, data == 1, e_type, machine, phoff, shoff, phentsize,
                      s0[7] if phnum == PN_XNUM else phnum, shentsize,
                      s0[5] if shnum == 0 else shnum, s0[6] if shstrndx == SHN_XINDEX else shstrndx)
    return hdr


def _program_headers(src: _Source, hdr: _Header) -> list[tuple[int, int, int, int, int]]:
    """(p_type, p_offset, p_vaddr, p_filesz, p_align) of every program header."""
    if hdr.phnum == 0 or hdr.phoff == 0:
        return []
    fmt = ("<" if hdr.little_endian else ">") + ("IIIIIIII" if hdr.elf_class == ELFCLASS32 else "IIQQQQQQ")
    size = struct.calcsize(fmt)
    if hdr.phentsize < size:
        raise ElfError(f"e_phentsize {hdr.phentsize} (header offset 0x2a/0x36) is below the {size} bytes "
                       "of a program header")
    if hdr.phnum > _MAX_HEADERS:
        raise ElfError(f"{hdr.phnum} program headers at offset {hdr.phoff:#x}: more than any real file has")
    table = src.read(hdr.phoff, hdr.phnum * hdr.phentsize, "program header table")
    out = []
    for i in range(hdr.phnum):
        f = struct.unpack_from(fmt, table, i * hdr.phentsize)
        if hdr.elf_class == ELFCLASS32:
            p_type, p_offset, p_vaddr, _paddr, p_filesz, _memsz, _flags, p_align = f
        else:
            p_type, _flags, p_offset, p_vaddr, _paddr, p_filesz, _memsz, p_align = f
        out.append((p_type, p_offset, p_vaddr, p_filesz, p_align))
    return out


def _section_headers(src: _Source, hdr: _Header, count: int | None = None) -> list[tuple[int, ...]]:
    """(sh_name, sh_type, sh_offset, sh_size, sh_link, sh_info) of the section headers."""
    if hdr.shoff == 0:
        return []
    n = hdr.shnum if count is None else count
    fmt = ("<" if hdr.little_endian else ">") + ("IIIIIIIIII" if hdr.elf_class == ELFCLASS32 else "IIQQQQIIQQ")
    size = struct.calcsize(fmt)
    if hdr.shentsize < size:
        raise ElfError(f"e_shentsize {hdr.shentsize} is below the {size} bytes of a section header")
    if n > _MAX_HEADERS:
        raise ElfError(f"{n} section headers at offset {hdr.shoff:#x}: more than any real file has")
    table = src.read(hdr.shoff, n * hdr.shentsize, "section header table")
    out = []
    for i in range(n):
        name, typ, _flags, _addr, offset, sz, link, info, _align, _entsize = struct.unpack_from(
            fmt, table, i * hdr.shentsize)
        out.append((name, typ, offset, sz, link, info))
    return out


def _string(src: _Source, base: int, limit: int, offset: int, what: str) -> str:
    """The NUL-terminated string at ``offset`` into the string table at file offset ``base``
    (``limit`` bytes long), decoded as the loader would use it (bytes kept via surrogateescape)."""
    if offset >= limit:
        raise ElfError(f"{what}: string offset {offset} is past the string table at {base:#x} ({limit} bytes)")
    start = base + offset
    avail = min(limit - offset, _MAX_STRING, src.size - start)
    chunk = 256
    while True:
        n = min(chunk, avail)
        raw = src.read(start, n, what)
        end = raw.find(b"\0")
        if end >= 0:
            return raw[:end].decode("utf-8", "surrogateescape")
        if n >= avail:
            raise ElfError(f"{what}: the string at offset {start:#x} has no terminating NUL within {n} bytes")
        chunk *= 8


def _vaddr_to_offset(loads: list[tuple[int, int, int, int, int]], addr: int, what: str) -> tuple[int, int]:
    """File offset of virtual address ``addr`` and the bytes its PT_LOAD segment holds from there."""
    for _t, p_offset, p_vaddr, p_filesz, _a in loads:
        if p_vaddr <= addr < p_vaddr + p_filesz:
            return p_offset + (addr - p_vaddr), p_filesz - (addr - p_vaddr)
    raise ElfError(f"{what} address {addr:#x} lies in no PT_LOAD segment")


def _notes(raw: bytes, base: int, align: int, little: bool) -> list[tuple[bytes, int, bytes]]:
    """(owner, type, descriptor) of each note in a PT_NOTE segment read at file offset ``base``."""
    end = "<" if little else ">"
    step = 8 if align == 8 else 4
    out = []
    pos = 0
    while pos + 12 <= len(raw):
        namesz, descsz, ntype = struct.unpack_from(end + "III", raw, pos)
        name_at = pos + 12
        desc_at = -(-(name_at + namesz) // step) * step  # offsets padded from the segment's start
        nxt = -(-(desc_at + descsz) // step) * step
        if desc_at + descsz > len(raw):
            raise ElfError(f"note at offset {base + pos:#x} (name {namesz} bytes, descriptor {descsz} bytes) "
                           "runs past its PT_NOTE segment")
        out.append((raw[name_at:name_at + namesz].rstrip(b"\0"), ntype, raw[desc_at:desc_at + descsz]))
        pos = nxt
    return out


def _dlopen_entries(desc: bytes, offset: int) -> list[DlopenNote]:
    """The entries of one FDO dlopen note's JSON descriptor (systemd.io/ELF_DLOPEN_METADATA)."""
    text = desc.rstrip(b"\0")
    try:
        doc = json.loads(text.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ElfError(f".note.dlopen at offset {offset:#x} is not JSON: {exc}") from None
    if not isinstance(doc, list):
        raise ElfError(f".note.dlopen at offset {offset:#x} is not a JSON array")
    out = []
    for item in doc:
        if not isinstance(item, dict):
            raise ElfError(f".note.dlopen at offset {offset:#x} holds a non-object entry")
        sonames = item.get("soname")
        if not (isinstance(sonames, list) and sonames and all(isinstance(s, str) and s for s in sonames)):
            raise ElfError(f".note.dlopen at offset {offset:#x}: an entry's 'soname' is not a list of names")
        priority = item.get("priority", "recommended")
        if priority not in PRIORITIES:
            raise ElfError(f".note.dlopen at offset {offset:#x}: priority {priority!r} is none of "
                           + ", ".join(PRIORITIES))
        feature, description = item.get("feature"), item.get("description")
        out.append(DlopenNote(tuple(sonames), priority, feature if isinstance(feature, str) else None,
                              description if isinstance(description, str) else None))
    return out


def _split_path(value: str) -> tuple[str, ...]:
    return tuple(value.split(":")) if value else ()


def _info(src: _Source) -> ElfInfo | None:
    hdr = _header(src)
    if hdr is None:
        return None
    phdrs = _program_headers(src, hdr)
    loads = [p for p in phdrs if p[0] == PT_LOAD]
    interp = None
    for p_type, p_offset, _v, p_filesz, _a in phdrs:
        if p_type == PT_INTERP:
            if p_filesz > _MAX_INTERP:
                raise ElfError(f"PT_INTERP at offset {p_offset:#x} is {p_filesz} bytes, longer than PATH_MAX")
            interp = src.read(p_offset, p_filesz, "PT_INTERP").split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
            break
    needed_offsets: list[int] = []
    runpath_at = rpath_at = soname_at = strtab = None
    strsz = 0
    flags_1 = 0
    for p_type, p_offset, _v, p_filesz, _a in phdrs:
        if p_type != PT_DYNAMIC:
            continue
        if p_filesz > _MAX_DYNAMIC:
            raise ElfError(f"PT_DYNAMIC at offset {p_offset:#x} is {p_filesz} bytes, far beyond a real one")
        raw = src.read(p_offset, p_filesz, "PT_DYNAMIC")
        fmt = ("<" if hdr.little_endian else ">") + ("iI" if hdr.elf_class == ELFCLASS32 else "qQ")
        size = struct.calcsize(fmt)
        for tag, val in struct.iter_unpack(fmt, raw[: len(raw) - len(raw) % size]):
            if tag == DT_NULL:
                break
            if tag == DT_NEEDED:
                needed_offsets.append(val)
            elif tag == DT_STRTAB:
                strtab = val
            elif tag == DT_STRSZ:
                strsz = val
            elif tag == DT_SONAME:
                soname_at = val
            elif tag == DT_RPATH:
                rpath_at = val
            elif tag == DT_RUNPATH:
                runpath_at = val
            elif tag == DT_FLAGS_1:
                flags_1 = val
        break  # the loader reads the first PT_DYNAMIC only
    strings_used = needed_offsets or soname_at is not None or rpath_at is not None or runpath_at is not None
    needed: list[str] = []
    soname = None
    runpath: tuple[str, ...] = ()
    rpath: tuple[str, ...] = ()
    if strings_used:
        if strtab is None:
            raise ElfError("PT_DYNAMIC names libraries but has no DT_STRTAB")
        base, room = _vaddr_to_offset(loads, strtab, "DT_STRTAB")
        limit = min(strsz or room, room)
        needed = [_string(src, base, limit, off, "DT_NEEDED") for off in needed_offsets]
        soname = _string(src, base, limit, soname_at, "DT_SONAME") if soname_at is not None else None
        if runpath_at is not None:
            runpath = _split_path(_string(src, base, limit, runpath_at, "DT_RUNPATH"))
        if rpath_at is not None:
            rpath = _split_path(_string(src, base, limit, rpath_at, "DT_RPATH"))
    dlopen: list[DlopenNote] = []
    notes_read = 0
    for p_type, p_offset, _v, p_filesz, p_align in phdrs:
        if p_type != PT_NOTE:
            continue
        notes_read += p_filesz
        if notes_read > _MAX_NOTES:
            raise ElfError(f"PT_NOTE segments add up to over {_MAX_NOTES} bytes (at offset {p_offset:#x})")
        raw = src.read(p_offset, p_filesz, "PT_NOTE")
        for owner, ntype, desc in _notes(raw, p_offset, p_align, hdr.little_endian):
            if owner == DLOPEN_OWNER and ntype == DLOPEN_TYPE:
                dlopen += _dlopen_entries(desc, p_offset)
    return ElfInfo(elf_class=hdr.elf_class, machine=hdr.machine, interp=interp, needed=tuple(needed),
                   runpath=runpath, rpath=rpath, soname=soname, dlopen=tuple(dlopen),
                   little_endian=hdr.little_endian, e_type=hdr.e_type,
                   nodeflib=bool(flags_1 & DF_1_NODEFLIB))


def read_elf(fd: int) -> ElfInfo | None:
    """What the loader needs from the ELF file open on ``fd`` (read with ``pread``, the offset of
    ``fd`` is left alone). ``None`` when it is not ELF; :class:`ElfError` when it is malformed."""
    try:
        return _info(_Source(fd=fd))
    except struct.error as exc:  # a bound check missed: still the file's fault, said as such
        raise ElfError(f"malformed ELF structure: {exc}") from None


def read_elf_bytes(data: bytes) -> ElfInfo | None:
    """:func:`read_elf` of a file already in memory."""
    try:
        return _info(_Source(data=data))
    except struct.error as exc:
        raise ElfError(f"malformed ELF structure: {exc}") from None


def read_section(source: int | bytes, name: str, *, limit: int) -> bytes | None:
    """The contents of the section called ``name`` (e.g. ``.modinfo`` of a kernel module), from a
    descriptor or bytes; ``None`` when the file is not ELF or has no such section. Sections are
    found by name through ``e_shstrndx`` (gABI); one longer than ``limit`` bytes is an
    :class:`ElfError`."""
    src = _Source(fd=source) if isinstance(source, int) else _Source(data=source)
    try:
        hdr = _header(src)
        if hdr is None:
            return None
        sections = _section_headers(src, hdr)
        if not sections:
            return None
        if hdr.shstrndx >= len(sections):
            raise ElfError(f"e_shstrndx {hdr.shstrndx} names no section (there are {len(sections)})")
        _n, _t, str_off, str_size, _l, _i = sections[hdr.shstrndx]
        want = name.encode()
        for sh_name, sh_type, offset, size, _link, _info in sections:
            if sh_name >= str_size:
                continue
            probe = src.read(str_off + sh_name, min(len(want) + 1, str_size - sh_name), "section name")
            if probe != want + b"\0":
                continue
            if sh_type == 8:  # SHT_NOBITS: no bytes in the file
                return b""
            if size > limit:
                raise ElfError(f"section {name} at offset {offset:#x} is {size} bytes, over the {limit} allowed")
            return src.read(offset, size, f"section {name}")
        return None
    except struct.error as exc:
        raise ElfError(f"malformed ELF structure: {exc}") from None
