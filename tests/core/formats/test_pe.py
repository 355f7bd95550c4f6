"""PE/COFF parsing, section planning and the PE CheckSum, against the real stub and objdump."""

from __future__ import annotations

import io
import os
import random
import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from sysextant.core.errors import UserError
from sysextant.core.formats.pe import (
    SCN_CNT_CODE,
    SCN_CNT_INITIALIZED_DATA,
    SCN_MEM_READ,
    PeChecksum,
    parse_pe,
    pe_checksum,
    plan_append,
    round_up,
    stub_data_end,
)

STUB = Path("/usr/lib/systemd/boot/efi/linuxx64.efi.stub")
ELF_STUB = Path("/usr/lib/systemd/boot/efi/linuxx64.elf.stub")
needs_stub = pytest.mark.skipif(not STUB.is_file(), reason=f"{STUB} missing (Debian package systemd-boot-efi)")
needs_objdump = pytest.mark.skipif(shutil.which("objdump") is None, reason="objdump missing (binutils)")


def make_pe(n_sections: int, size_of_headers: int = 0x200, fa: int = 0x200, sa: int = 0x1000,
            security: tuple[int, int] = (0, 0), trailing: bytes = b"") -> bytes:
    """A minimal synthetic PE32+ image with ``n_sections`` sections of 0x200 bytes each."""
    e_lfanew = 0x40
    dos = bytearray(0x40)
    dos[0:2] = b"MZ"
    struct.pack_into("<I", dos, 0x3C, e_lfanew)
    coff = b"PE\0\0" + struct.pack("<HHIIIHH", 0x8664, n_sections, 0, 0, 0, 240, 0x206)
    opt = bytearray(240)
    struct.pack_into("<H", opt, 0, 0x20B)
    struct.pack_into("<II", opt, 32, sa, fa)
    struct.pack_into("<II", opt, 56, sa * (n_sections + 1), size_of_headers)
    struct.pack_into("<I", opt, 108, 16)
    struct.pack_into("<II", opt, 112 + 8 * 4, *security)
    table = b""
    for i in range(n_sections):
        table += struct.pack("<8sIIIIIIHHI", f".s{i}".encode(), 0x100, sa * (i + 1), fa,
                             size_of_headers + i * fa, 0, 0, 0, 0, SCN_CNT_INITIALIZED_DATA | SCN_MEM_READ)
    head = bytes(dos) + coff + bytes(opt) + table
    assert len(head) <= size_of_headers
    body = b"".join(bytes([i + 1]) * fa for i in range(n_sections))
    return head + bytes(size_of_headers - len(head)) + body + trailing


def reference_checksum(data: bytes, checksum_offset: int) -> int:
    """The PE CheckSum, word by word, as imagehlp/sbsigntools compute it."""
    buf = bytearray(data)
    buf[checksum_offset:checksum_offset + 4] = bytes(4)
    csum = 0
    for i in range(0, len(buf) - 1, 2):
        csum += buf[i] | buf[i + 1] << 8
        csum = (csum & 0xFFFF) + (csum >> 16)
    if len(buf) % 2:
        csum += buf[-1]
        csum = (csum & 0xFFFF) + (csum >> 16)
    return (csum + len(buf)) & 0xFFFFFFFF


@needs_stub
def test_stub_headers_parse() -> None:
    pe = parse_pe(STUB)
    assert pe.magic == 0x20B and pe.machine == 0x8664
    assert pe.file_alignment == 0x200
    names = [s.name for s in pe.sections]
    assert names[0] == ".text" and ".sbat" in names and ".sdmagic" in names
    assert pe.security == (0, 0)
    assert pe.data_end <= pe.file_size


@needs_stub
@needs_objdump
def test_stub_sections_match_objdump() -> None:
    pe = parse_pe(STUB)
    out = subprocess.run(["objdump", "-h", str(STUB)], capture_output=True, text=True, check=True).stdout
    rows = re.findall(r"^\s*\d+\s+(\S+)\s+([0-9a-f]+)\s+([0-9a-f]+)\s+[0-9a-f]+\s+([0-9a-f]+)", out, re.M)
    assert [(s.name, s.virtual_size, s.virtual_address, s.raw_offset) for s in pe.sections] == [
        (n, int(size, 16), int(vma, 16), int(off, 16)) for n, size, vma, off in rows]


@needs_stub
def test_stub_symbol_table_is_stripped() -> None:
    pe = parse_pe(STUB)
    with open(STUB, "rb") as fh:
        end = stub_data_end(pe, fh)
    assert end == pe.data_end
    if pe.symtab_offset:  # the Debian 12 stub ships one
        assert end < pe.file_size
    plan = plan_append(pe, end, [(".osrel", 10)])
    coff = pe.pe_offset + 4
    assert struct.unpack_from("<II", plan.header, coff + 8) == (0, 0)


@needs_stub
def test_stub_checksum_matches_linker() -> None:
    pe = parse_pe(STUB)
    with open(STUB, "rb") as fh:
        assert pe_checksum(fh, pe) == pe.checksum


@pytest.mark.parametrize("length", [0, 1, 2, 3, 1001, 4096, 65537])
def test_checksum_streaming_matches_reference(length: int) -> None:
    rng = random.Random(length)
    data = make_pe(2) + rng.randbytes(length)
    pe = parse_pe(io.BytesIO(data))
    expect = reference_checksum(data, pe.checksum_offset)
    assert pe_checksum(io.BytesIO(data), pe) == expect
    # any split into chunks, at odd offsets too, gives the same value
    acc = PeChecksum()
    zeroed = bytearray(data)
    zeroed[pe.checksum_offset:pe.checksum_offset + 4] = bytes(4)
    pos = 0
    while pos < len(zeroed):
        step = rng.randint(1, 777)
        acc.add(bytes(zeroed[pos:pos + step]), pos)
        pos += step
    assert acc.value(len(data)) == expect


def test_checksum_of_all_ones_folds_like_reference() -> None:
    data = make_pe(1) + b"\xff" * 4096
    pe = parse_pe(io.BytesIO(data))
    assert pe_checksum(io.BytesIO(data), pe) == reference_checksum(data, pe.checksum_offset)


def test_not_a_pe_is_refused(tmp_path: Path) -> None:
    junk = tmp_path / "junk.efi"
    junk.write_bytes(os.urandom(4096))
    with pytest.raises(UserError, match="junk.efi is not a PE/EFI image"):
        parse_pe(junk)
    mz_only = tmp_path / "mz.efi"
    mz_only.write_bytes(b"MZ" + bytes(200))
    with pytest.raises(UserError, match="not a PE"):
        parse_pe(mz_only)


@pytest.mark.skipif(not ELF_STUB.is_file(), reason=f"{ELF_STUB} missing")
def test_elf_stub_is_refused() -> None:
    with pytest.raises(UserError, match="not a PE/EFI image"):
        parse_pe(ELF_STUB)


def test_layout_follows_ukify() -> None:
    data = make_pe(2, size_of_headers=0x400)
    pe = parse_pe(io.BytesIO(data), "synthetic.efi")
    end = stub_data_end(pe, io.BytesIO(data))
    plan = plan_append(pe, end, [(".osrel", 5), (".initrd", 0x201), (".linux", 0x400)])
    osrel, initrd, linux = plan.new_sections
    assert osrel.raw_offset == round_up(end, 0x200)
    assert initrd.raw_offset == osrel.raw_offset + 0x200
    assert linux.raw_offset == initrd.raw_offset + 0x400
    assert osrel.virtual_address == 0x3000  # after .s1 at 0x2000 + 0x100, SectionAlignment 0x1000
    assert initrd.virtual_address == 0x4000
    assert linux.virtual_address == 0x5000
    assert (osrel.virtual_size, initrd.virtual_size, linux.virtual_size) == (5, 0x201, 0x400)
    assert osrel.characteristics == SCN_CNT_INITIALIZED_DATA | SCN_MEM_READ
    assert linux.characteristics == SCN_CNT_CODE | SCN_MEM_READ
    assert plan.file_size == linux.raw_offset + 0x400
    new = parse_pe(io.BytesIO(plan.header + bytes(plan.file_size - len(plan.header))))
    assert [s.name for s in new.sections] == [".s0", ".s1", ".osrel", ".initrd", ".linux"]
    assert new.size_of_image == 0x6000
    assert new.checksum == 0


def test_too_little_header_room_is_refused() -> None:
    data = make_pe(3)  # table ends at 0x1c0: room for exactly one more header below 0x200
    pe = parse_pe(io.BytesIO(data), "tight.efi")
    end = stub_data_end(pe, io.BytesIO(data))
    plan_append(pe, end, [(".linux", 16)])
    with pytest.raises(UserError, match=r"stub tight.efi has header room for 1 new sections but 2"):
        plan_append(pe, end, [(".initrd", 16), (".linux", 16)])


def test_signed_stub_is_refused() -> None:
    data = make_pe(1, security=(0x400, 0x10), trailing=bytes(0x10))
    pe = parse_pe(io.BytesIO(data), "signed.efi")
    with pytest.raises(UserError, match="stub signed.efi is already signed; use the unsigned stub"):
        plan_append(pe, pe.data_end, [(".linux", 16)])


def test_unknown_trailing_data_is_refused() -> None:
    data = make_pe(1, trailing=b"overlay!")
    pe = parse_pe(io.BytesIO(data), "overlay.efi")
    with pytest.raises(UserError, match="8 bytes of unknown data"):
        stub_data_end(pe, io.BytesIO(data))


def test_bad_section_names_are_refused() -> None:
    data = make_pe(1)
    pe = parse_pe(io.BytesIO(data))
    with pytest.raises(UserError, match="bad PE section name"):
        plan_append(pe, pe.data_end, [(".waytoolongname", 1)])
    with pytest.raises(UserError, match="duplicate"):
        plan_append(pe, pe.data_end, [(".a", 1), (".a", 2)])


def test_existing_section_is_replaced_in_place() -> None:
    data = make_pe(2)
    pe = parse_pe(io.BytesIO(data))
    plan = plan_append(pe, pe.data_end, [(".s1", 0x80), (".linux", 1)])
    assert [s.name for s in plan.new_sections] == [".linux"]
    (s1,) = plan.replaced
    assert (s1.raw_offset, s1.raw_size, s1.virtual_size) == (0x400, 0x200, 0x80)
    with pytest.raises(UserError, match="does not fit"):
        plan_append(pe, pe.data_end, [(".s1", 0x201)])
