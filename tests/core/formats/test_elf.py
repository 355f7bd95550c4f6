"""The ELF reader against real files and binutils' readelf, gcc-built notes, and hostile input.

Real: every ELF program of /usr/lib/systemd and a few dozen of /usr/bin, /usr/sbin and the
libraries read the same as ``readelf -hlWd`` prints them (interpreter, DT_NEEDED in order,
RUNPATH, RPATH, SONAME, class). 32-bit and big-endian files (none on this machine) are built
byte by byte. A ``.note.dlopen`` note is compiled with gcc exactly as systemd's ``ELF_NOTE_DLOPEN``
macro lays it out. Truncated, garbage and fuzzed input gives ``ElfError`` or ``None``, nothing else.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from elf_helpers import DLOPEN_C, gcc_build, make_elf, note
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sysextant.core.formats.elf import (
    DLOPEN_TYPE,
    DlopenNote,
    ElfError,
    ElfInfo,
    read_elf,
    read_elf_bytes,
)

READELF = shutil.which("readelf")


def read_path(path: str | Path) -> ElfInfo | None:
    fd = os.open(path, os.O_RDONLY)
    try:
        return read_elf(fd)
    finally:
        os.close(fd)


def real_elves() -> list[str]:
    """ELF regular files of this machine: all of /usr/lib/systemd, some programs and libraries."""
    picks = sorted(glob.glob("/usr/lib/systemd/*"))
    for pattern, n in (("/usr/bin/*", 30), ("/usr/sbin/*", 15), ("/usr/lib/x86_64-linux-gnu/lib*.so.*", 25)):
        found = sorted(glob.glob(pattern))
        picks += found[:: max(1, len(found) // n)]
    out = []
    for p in picks:
        if os.path.isfile(p) and not os.path.islink(p) and Path(p).read_bytes()[:4] == b"\x7fELF":
            out.append(p)
    return out


def readelf_facts(path: str) -> dict[str, object]:
    text = subprocess.run([READELF or "readelf", "-hlWd", path], capture_output=True, text=True, check=True).stdout
    interp = re.search(r"Requesting program interpreter: (.*)\]", text)
    one = lambda tag: (m.group(1) if (m := re.search(rf"\({tag}\)\s+Library \w+: \[(.*)\]", text)) else None)  # noqa: E731
    return {
        "elf_class": 2 if "ELF64" in text else 1,
        "interp": interp.group(1) if interp else None,
        "needed": tuple(re.findall(r"\(NEEDED\)\s+Shared library: \[(.*)\]", text)),
        "soname": one("SONAME"),
        "runpath": tuple(v.split(":")) if (v := one("RUNPATH")) else (),
        "rpath": tuple(v.split(":")) if (v := one("RPATH")) else (),
    }


@pytest.mark.skipif(READELF is None, reason="readelf missing (Debian package binutils)")
def test_real_files_read_as_readelf_prints_them() -> None:
    files = real_elves()
    assert len(files) > 60
    for path in files:
        info = read_path(path)
        assert info is not None, path
        want = readelf_facts(path)
        got = {k: getattr(info, k) for k in want}
        assert got == want, path
        assert info.machine == 62 and info.little_endian, path


def test_reading_is_fast_and_partial() -> None:
    """A few hundred real files in well under a second: only headers are read, never whole files."""
    files = [p for p in sorted(glob.glob("/usr/bin/*")) if os.path.isfile(p)][:400]
    start = time.perf_counter()
    for path in files:
        read_path(path)
    assert time.perf_counter() - start < 1.0


@pytest.mark.parametrize("elf_class", [1, 2])
@pytest.mark.parametrize("little", [True, False])
def test_both_classes_and_byte_orders(elf_class: int, little: bool) -> None:
    doc = [{"feature": "tpm", "description": "TPM2 support", "priority": "required", "soname": ["libtss2-esys.so.0"]},
           {"soname": ["libfoo.so.2", "libfoo.so.1"]}]
    notes = note(b"GNU", 3, bytes(20), little=little) + note(b"FDO", DLOPEN_TYPE, json.dumps(doc).encode() + b"\0",
                                                             little=little)
    data = make_elf(elf_class=elf_class, little=little, machine=20 if elf_class == 1 else 21, interp="/lib/ld.so.1",
                    needed=("liba.so.1", "libb.so.2"), soname="libme.so.3", runpath="$ORIGIN/../lib:/opt/x",
                    rpath="/r", notes=notes)
    info = read_elf_bytes(data)
    assert info == ElfInfo(elf_class=elf_class, machine=20 if elf_class == 1 else 21, interp="/lib/ld.so.1",
                           needed=("liba.so.1", "libb.so.2"), runpath=("$ORIGIN/../lib", "/opt/x"), rpath=("/r",),
                           soname="libme.so.3",
                           dlopen=(DlopenNote(("libtss2-esys.so.0",), "required", "tpm", "TPM2 support"),
                                   DlopenNote(("libfoo.so.2", "libfoo.so.1"), "recommended", None, None)),
                           little_endian=little, e_type=3)


def test_dlopen_note_built_with_gcc(tmp_path: Path) -> None:
    prog = gcc_build(tmp_path, DLOPEN_C, "prog", "-Wl,-rpath,/opt/lib", "-Wl,--disable-new-dtags")
    info = read_path(prog)
    assert info is not None
    assert sorted(info.dlopen, key=lambda n: n.sonames) == sorted([
        DlopenNote(("libidn2.so.0",), "suggested", "idn", "Support for internationalized domain names"),
        DlopenNote(("libtss2-esys.so.0", "libtss2-esys.so.1"), "required", "tpm", "TPM2"),
        DlopenNote(("libpcre2-8.so.0",), "recommended", None, None)], key=lambda n: n.sonames)
    assert info.rpath == ("/opt/lib",) and info.runpath == ()
    assert info.interp == "/lib64/ld-linux-x86-64.so.2" and "libc.so.6" in info.needed
    if READELF:  # binutils sees the same note where we do
        notes = subprocess.run([READELF, "-nW", str(prog)], capture_output=True, text=True).stdout
        assert notes.count("FDO") == 2


def test_bad_dlopen_notes_are_elf_errors() -> None:
    for desc in (b"{not json", b'{"soname": ["x"]}', b'[{"soname": "libx.so"}]', b'[{"soname": []}]',
                 b'[{"soname": ["a"], "priority": "maybe"}]', b"[" * 5000 + b"]" * 5000, b"\xff\xfe"):
        with pytest.raises(ElfError, match=r"\.note\.dlopen at offset 0x"):
            read_elf_bytes(make_elf(notes=note(b"FDO", DLOPEN_TYPE, desc)))


def test_not_elf_gives_none(tmp_path: Path) -> None:
    for data in (b"", b"\x7fEL", b"#!/bin/sh\necho hi\n", b"MZ" + bytes(100), bytes(4096)):
        assert read_elf_bytes(data) is None
        f = tmp_path / "f"
        f.write_bytes(data)
        assert read_path(f) is None


def test_hostile_sizes_are_refused_without_allocating() -> None:
    base = bytearray(make_elf(interp="/lib/ld.so", needed=("libc.so.6",)))
    # e_phnum = 0xffff with no section header 0
    bad = bytearray(base)
    bad[56:58] = (0xFFFF).to_bytes(2, "little")
    with pytest.raises(ElfError, match="section header 0|header"):
        read_elf_bytes(bytes(bad))
    # a PT_DYNAMIC claiming a terabyte
    bad = bytearray(base)
    ph_dyn = 64 + 2 * 56  # PT_LOAD, PT_INTERP, PT_DYNAMIC
    bad[ph_dyn + 32:ph_dyn + 40] = (1 << 40).to_bytes(8, "little")
    with pytest.raises(ElfError, match="PT_DYNAMIC at offset 0x.* far beyond"):
        read_elf_bytes(bytes(bad))
    # DT_STRTAB outside every PT_LOAD
    bad = bytearray(base)
    ph_load = 64
    bad[ph_load + 32:ph_load + 40] = (16).to_bytes(8, "little")
    with pytest.raises(ElfError, match="DT_STRTAB address 0x"):
        read_elf_bytes(bytes(bad))
    # a string with no NUL before the end of the file
    text = make_elf(needed=("x" * 100,))
    with pytest.raises(ElfError):
        read_elf_bytes(text.replace(b"x" * 100 + b"\0", b"x" * 101))


def test_truncated_real_file_is_an_elf_error_or_still_readable(tmp_path: Path) -> None:
    data = Path("/usr/bin/mount").read_bytes()
    whole = read_elf_bytes(data)
    f = tmp_path / "cut"
    for n in [*range(0, 1200, 7), *range(1200, min(len(data), 20000), 97), len(data) - 1]:
        try:
            got = read_elf_bytes(data[:n])
        except ElfError as exc:
            assert "offset" in str(exc) or "ELF" in str(exc)
            continue
        assert got is None or got == whole
    for n in (3, 40, 63, 64, 300, 1000, 5000):
        f.write_bytes(data[:n])
        with contextlib.suppress(ElfError):
            read_path(f)


SAMPLE = Path("/usr/bin/true").read_bytes() if Path("/usr/bin/true").is_file() else make_elf(needed=("libc.so.6",))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, 4095), st.integers(0, 255)), min_size=1, max_size=12),
       st.one_of(st.none(), st.integers(0, len(SAMPLE))))
def test_fuzzed_real_file_gives_elf_error_or_a_result(flips: list[tuple[int, int]], cut: int | None) -> None:
    data = bytearray(SAMPLE)
    for pos, value in flips:
        if pos < len(data):
            data[pos] = value
    if cut is not None:
        del data[cut:]
    with contextlib.suppress(ElfError):
        read_elf_bytes(bytes(data))


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=0, max_size=600), st.sampled_from([1, 2]), st.booleans())
def test_fuzzed_headers_give_elf_error_or_a_result(tail: bytes, cls: int, little: bool) -> None:
    data = b"\x7fELF" + bytes([cls, 1 if little else 2, 1]) + bytes(9) + tail
    with contextlib.suppress(ElfError):
        read_elf_bytes(data)
