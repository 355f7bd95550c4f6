"""Tiny synthetic ELF files for the reader's tests: any class, byte order and machine, with the
program headers the loader reads (PT_LOAD, PT_INTERP, PT_DYNAMIC, PT_NOTE) laid out the way a
linker does (gABI). Real files cover the common case; these cover 32-bit and big-endian ones,
which this machine has none of. And real ones built with gcc: a program carrying systemd's
``.note.dlopen`` notes (DLOPEN_C), for the reader's and the closure's tests."""

from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path

import pytest

VADDR = 0x10000
GCC = shutil.which("gcc")


def note(owner: bytes, ntype: int, desc: bytes, *, little: bool = True, align: int = 4) -> bytes:
    """One ELF note, name and descriptor padded to ``align``."""
    name = owner + b"\0"
    pad = lambda b: b + bytes(-len(b) % align)  # noqa: E731
    return struct.pack("<III" if little else ">III", len(name), len(desc), ntype) + pad(name) + pad(desc)


def make_elf(*, elf_class: int = 2, little: bool = True, machine: int = 62, interp: str | None = None,
             needed: tuple[str, ...] = (), soname: str | None = None, runpath: str | None = None,
             rpath: str | None = None, notes: bytes = b"", e_type: int = 3) -> bytes:
    """A minimal ELF file with those facts (notes must be encoded in the same byte order)."""
    end = "<" if little else ">"
    is64 = elf_class == 2
    ehsize, phentsize = (64, 56) if is64 else (52, 32)
    strtab = bytearray(b"\0")

    def s(text: str) -> int:
        off = len(strtab)
        strtab.extend(text.encode() + b"\0")
        return off

    dyn: list[tuple[int, int]] = [(1, s(n)) for n in needed]
    if soname is not None:
        dyn.append((14, s(soname)))
    if runpath is not None:
        dyn.append((29, s(runpath)))
    if rpath is not None:
        dyn.append((15, s(rpath)))
    phnum = 1 + (interp is not None) + 1 + bool(notes)
    off = ehsize + phnum * phentsize
    interp_b = interp.encode() + b"\0" if interp is not None else b""
    interp_off = off
    off += len(interp_b)
    off += -off % 8
    str_off = off
    off += len(strtab)
    off += -off % 8
    dyn.append((5, VADDR + str_off))
    dyn.append((10, len(strtab)))
    dyn.append((0, 0))
    dfmt = end + ("qQ" if is64 else "iI")
    dyn_b = b"".join(struct.pack(dfmt, t, v) for t, v in dyn)
    dyn_off = off
    off += len(dyn_b)
    off += -off % 8
    note_off = off
    off += len(notes)
    total = off

    def ph(p_type: int, p_offset: int, p_filesz: int, p_align: int) -> bytes:
        if is64:
            return struct.pack(end + "IIQQQQQQ", p_type, 4, p_offset, VADDR + p_offset, VADDR + p_offset,
                               p_filesz, p_filesz, p_align)
        return struct.pack(end + "IIIIIIII", p_type, p_offset, VADDR + p_offset, VADDR + p_offset, p_filesz,
                           p_filesz, 4, p_align)

    phdrs = ph(1, 0, total, 0x1000)
    if interp is not None:
        phdrs += ph(3, interp_off, len(interp_b), 1)
    phdrs += ph(2, dyn_off, len(dyn_b), 8)
    if notes:
        phdrs += ph(4, note_off, len(notes), 4)
    ident = b"\x7fELF" + bytes([elf_class, 1 if little else 2, 1]) + bytes(9)
    if is64:
        hdr = ident + struct.pack(end + "HHIQQQIHHHHHH", e_type, machine, 1, 0, ehsize, 0, 0, ehsize, phentsize,
                                  phnum, 64, 0, 0)
    else:
        hdr = ident + struct.pack(end + "HHIIIIIHHHHHH", e_type, machine, 1, 0, ehsize, 0, 0, ehsize, phentsize,
                                  phnum, 40, 0, 0)
    out = bytearray(total)
    out[0:len(hdr)] = hdr
    out[ehsize:ehsize + len(phdrs)] = phdrs
    out[interp_off:interp_off + len(interp_b)] = interp_b
    out[str_off:str_off + len(strtab)] = strtab
    out[dyn_off:dyn_off + len(dyn_b)] = dyn_b
    out[note_off:note_off + len(notes)] = notes
    return bytes(out)


DLOPEN_C = r"""
#include <stdint.h>
#define ELF_NOTE_DLOPEN_VENDOR "FDO"
#define ELF_NOTE_DLOPEN_TYPE UINT32_C(0x407c0c0a)
/* systemd's src/fundamental/dlopen-note macro, as documented on systemd.io/ELF_DLOPEN_METADATA */
#define ELF_NOTE_DLOPEN(json, variable_name) \
    __attribute__((used, section(".note.dlopen"))) _Alignas(sizeof(uint32_t)) static const struct { \
        struct { uint32_t n_namesz, n_descsz, n_type; } nhdr; \
        char name[sizeof(ELF_NOTE_DLOPEN_VENDOR)]; \
        _Alignas(sizeof(uint32_t)) char dlopen_json[sizeof(json)]; \
    } variable_name = { \
        .nhdr = { .n_namesz = sizeof(ELF_NOTE_DLOPEN_VENDOR), .n_descsz = sizeof(json), \
                  .n_type = ELF_NOTE_DLOPEN_TYPE }, \
        .name = ELF_NOTE_DLOPEN_VENDOR, .dlopen_json = json, }
ELF_NOTE_DLOPEN("[{\"feature\":\"idn\",\"description\":\"Support for internationalized domain names\","
                "\"priority\":\"suggested\",\"soname\":[\"libidn2.so.0\"]}]", note_idn);
ELF_NOTE_DLOPEN("[{\"feature\":\"tpm\",\"description\":\"TPM2\",\"priority\":\"required\","
                "\"soname\":[\"libtss2-esys.so.0\",\"libtss2-esys.so.1\"]},"
                "{\"soname\":[\"libpcre2-8.so.0\"]}]", note_two);
int main(void) { return 0; }
"""


def gcc_build(tmp_path: Path, source: str, name: str, *args: str) -> Path:
    if GCC is None:
        pytest.skip("gcc missing (Debian package gcc): cannot build the ELF files this test reads")
    src = tmp_path / f"{name}.c"
    src.write_text(source)
    out = tmp_path / name
    subprocess.run([GCC, "-o", str(out), str(src), *args], check=True, capture_output=True)
    return out
