"""Unified Kernel Image assembly: systemd-stub + kernel + initrd + metadata, optionally signed.

References: the UAPI Unified Kernel Image specification; systemd's ukify (src/ukify/ukify.py:
section order, layout, .sbat merging, uname scraping); the Linux x86 boot protocol
(Documentation/arch/x86/boot.rst: "HdrS" at 0x202, kernel_version pointer at 0x20e).

Everything is streamed: section files are copied in 1 MiB chunks into the atomic output, the
Authenticode digest and CheckSum are computed by re-reading the written temp file, and the
signature is appended to the same temp file before it is renamed into place. Peak memory does
not grow with the initrd.

See docs/formats.md, section 8 (PE/COFF and the UKI).
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from ..atomic import atomic_output
from ..errors import UserError
from ..keys import Signer
from ..progress import Reporter
from .authenticode import sign_pe, signature_length, signed_size
from .pe import parse_pe, pe_checksum, plan_append, round_up, stub_data_end

DEFAULT_STUB = Path("/usr/lib/systemd/boot/efi/linuxx64.efi.stub")
CHUNK = 1 << 20

# ukify's order (make_uki): metadata first, the big initrd, then extra sections, the kernel last;
# .sbat replaces the stub's own section and .pcrsig is added after measuring.
SECTION_ORDER = (".osrel", ".cmdline", ".dtb", ".uname", ".splash", ".pcrpkey", ".initrd", ".ucode")
SECTION_TAIL = (".linux", ".sbat", ".pcrsig")
SBAT_HEADER = "sbat,1,SBAT Version,sbat,1,https://github.com/rhboot/shim/blob/main/SBAT.md"

Content = Path | bytes


@dataclass
class UkiResult:
    path: Path
    size: int
    sha256: str
    signed: bool
    sections: list[tuple[str, int, int]] = field(default_factory=list)  # (name, file offset, size)


def _rank(name: str) -> tuple[int, int]:
    if name in SECTION_ORDER:
        return (0, SECTION_ORDER.index(name))
    if name in SECTION_TAIL:
        return (2, SECTION_TAIL.index(name))
    return (1, 0)


def order_sections(names: Sequence[str]) -> list[str]:
    """``names`` in ukify's order (unknown sections keep their order, before ``.linux``)."""
    return sorted(names, key=_rank)


def _size_of(content: Content, name: str) -> int:
    if isinstance(content, bytes):
        return len(content)
    try:
        st = os.stat(content)
    except FileNotFoundError:
        raise UserError(f"{content} (for the UKI's {name} section) does not exist") from None
    except PermissionError:
        raise UserError(f"{content} (for the UKI's {name} section) is not readable") from None
    if not stat.S_ISREG(st.st_mode):
        raise UserError(f"{content} (for the UKI's {name} section) is not a regular file")
    return st.st_size


def check_kernel(kernel: Path) -> None:
    """Refuse a .linux that is not a kernel image the stub can start (x86 bzImage / EFI Image)."""
    try:
        with open(kernel, "rb") as fh:
            head = fh.read(0x240)
    except FileNotFoundError:
        raise UserError(f"kernel {kernel} does not exist") from None
    ok = False
    if head[:2] == b"MZ":
        if head[0x202:0x206] == b"HdrS":
            ok = True
        else:
            try:
                parse_pe(kernel)
                ok = True
            except UserError:
                ok = False
    if not ok:
        raise UserError(f"{kernel} is not a Linux kernel image (an x86 bzImage or an EFI-stub "
                        "Image, e.g. boot/vmlinuz-*); a compressed or ELF vmlinux cannot be booted by the stub")


def read_uname(kernel: Path) -> str | None:
    """The kernel release (``uname -r``) from an x86 bzImage header, or None if not found."""
    try:
        with open(kernel, "rb") as fh:
            head = fh.read(0x210)
            if len(head) < 0x210 or head[0x202:0x206] != b"HdrS":
                return None
            pointer = struct.unpack_from("<H", head, 0x20E)[0]
            if not pointer:
                return None
            fh.seek(0x200 + pointer)
            text = fh.read(256).split(b"\0", 1)[0].decode("ascii", "replace")
    except OSError:
        return None
    m = re.match(r"([A-Za-z0-9._+-]+) \([^ )]+\) ", text)
    return m.group(1) if m else None


def _stub_sbat(stub: Path) -> str:
    pe = parse_pe(stub, str(stub))
    sec = pe.section(".sbat")
    if sec is None:
        return ""
    with open(stub, "rb") as fh:
        fh.seek(sec.raw_offset)
        data = fh.read(min(sec.virtual_size, sec.raw_size))
    return data.split(b"\0", 1)[0].decode("utf-8", "replace")


def merge_sbat(*texts: str) -> bytes:
    """Merge SBAT CSV texts as ukify does: one ``sbat,1`` header line, then every entry line."""
    lines: list[str] = []
    for text in texts:
        split = text.splitlines()
        if not split:
            continue
        if not split[0].startswith("sbat,"):
            raise UserError(f"SBAT data must start with an 'sbat,' line, got {split[0][:40]!r}")
        lines += [ln for ln in split[1:] if ln.strip() and ln not in lines]
    return (SBAT_HEADER + "\n" + "\n".join(lines) + "\n\0").encode()


def _prepare(stub: Path, sections: Sequence[tuple[str, Content]]) -> list[tuple[str, Content, int]]:
    names = [n for n, _ in sections]
    if len(set(names)) != len(names):
        raise UserError("a UKI section is given twice: " + ", ".join(sorted({n for n in names if names.count(n) > 1})))
    if ".linux" not in names:
        raise UserError("a UKI needs a .linux section (the kernel)")
    out = []
    for name, content in sections:
        if name == ".sbat":
            text = content.decode() if isinstance(content, bytes) else Path(content).read_text()
            content = merge_sbat(_stub_sbat(stub), text)
        size = _size_of(content, name)
        if name == ".linux":
            if isinstance(content, bytes):
                raise UserError("the .linux section must be a kernel file, not bytes")
            check_kernel(content)
        if size == 0:  # ukify leaves out empty sections
            continue
        out.append((name, content, size))
    rank = {n: i for i, n in enumerate(order_sections([n for n, _, _ in out]))}
    return sorted(out, key=lambda item: rank[item[0]])


def predict_size(stub: Path, section_sizes: dict[str, int], *, signed: bool,
                 signature_len: int | None = None, signer: Signer | None = None) -> int:
    """The exact size of the UKI ``build_uki`` writes for these section sizes.

    round_up(end of stub data, FileAlignment) + sum(round_up(len, FileAlignment)); signing adds
    the 8-byte alignment and the WIN_CERTIFICATE. ``signature_len`` (the PKCS#7 DER length)
    defaults to the exact length our signer produces for ``signer``. Sections the stub already
    has (``.sbat``) are replaced in place and add nothing; empty sections are left out.
    """
    pe = parse_pe(stub, str(stub))
    with open(stub, "rb") as fh:
        end = stub_data_end(pe, fh)
    existing = {s.name for s in pe.sections}
    size = round_up(end, pe.file_alignment)
    size += sum(round_up(n, pe.file_alignment) for name, n in section_sizes.items() if name not in existing)
    if not signed:
        return size
    if signature_len is None:
        if signer is None:
            raise ValueError("predict_size(signed=True) needs signature_len or signer")
        signature_len = signature_length(signer)
    return signed_size(size, signature_len)


def _copy(src: Content, fh: BinaryIO, size: int, name: str, progress) -> None:
    if isinstance(src, bytes):
        fh.write(src)
        progress(len(src))
        return
    left = size
    with open(src, "rb") as inp:
        while left:
            data = inp.read(min(CHUNK, left))
            if not data:
                break
            fh.write(data)
            left -= len(data)
            progress(len(data))
        if left or inp.read(1):
            raise UserError(f"{src} (the {name} section) changed size while the UKI was being written")


def build_uki(stub: Path, sections: Sequence[tuple[str, Content]], out: Path, *,
              signer: Signer | None = None, reporter: Reporter | None = None,
              task: str = "uki") -> UkiResult:
    """Write the UKI ``out`` from ``stub`` and ``sections`` (name, file or bytes); sign if asked.

    Sections are put in ukify's order whatever order they are given in. The output appears
    atomically and only complete (signed, if ``signer`` is given).
    """
    stub = Path(stub)
    out = Path(out)
    items = _prepare(stub, sections)
    pe = parse_pe(stub, str(stub))
    with open(stub, "rb") as sfh:
        end = stub_data_end(pe, sfh)
        plan = plan_append(pe, end, [(n, size) for n, _, size in items])
        replaced = {s.name: s for s in plan.replaced}
        total = plan.file_size
        written = 0

        def progress(n: int) -> None:
            nonlocal written
            written += n
            if reporter is not None:
                reporter(f"{task}: write", written, total)

        with atomic_output(out, 0o644) as fh:
            fh.write(plan.header)
            sfh.seek(plan.stub_copy_from)
            left = end - plan.stub_copy_from
            while left > 0:
                data = sfh.read(min(CHUNK, left))
                fh.write(data)
                left -= len(data)
            progress(end)
            by_name = {n: (c, size) for n, c, size in items}
            for name, sec in replaced.items():
                content, size = by_name[name]
                fh.seek(sec.raw_offset)
                _copy(content, fh, size, name, progress)
                fh.write(bytes(sec.raw_size - size))
            fh.seek(end)
            layout = []
            for sec in plan.new_sections:
                content, size = by_name[sec.name]
                fh.write(bytes(sec.raw_offset - fh.tell()))
                layout.append((sec.name, sec.raw_offset, size))
                _copy(content, fh, size, sec.name, progress)
                fh.write(bytes(sec.raw_size - size))
            fh.write(bytes(plan.file_size - fh.tell()))  # stub end padding if nothing was added
            progress(plan.file_size - written)  # the padding
            fh.flush()
            if signer is not None:
                result = sign_pe(fh, signer, reporter=reporter, task=f"{task}: sign")
                size = result.file_size
            else:
                written_pe = parse_pe(fh, str(out))
                checksum = pe_checksum(fh, written_pe)
                fh.seek(plan.checksum_offset)
                fh.write(struct.pack("<I", checksum))
                size = plan.file_size
            fh.flush()
            digest = _sha256(fh, size, reporter, f"{task}: sha256")
    for name, sec in replaced.items():
        layout.append((name, sec.raw_offset, sec.virtual_size))
    layout.sort(key=lambda t: t[1])
    return UkiResult(path=out, size=size, sha256=digest, signed=signer is not None, sections=layout)


def _sha256(fh: BinaryIO, size: int, reporter: Reporter | None, task: str) -> str:
    h = hashlib.sha256()
    fh.seek(0)
    done = 0
    while True:
        data = fh.read(CHUNK)
        if not data:
            break
        h.update(data)
        done += len(data)
        if reporter is not None:
            reporter(task, done, size)
    if done != size:
        raise UserError(f"the UKI temp file has {done} bytes, expected {size}")
    return h.hexdigest()
