"""Expected TPM PCR 11 values for a UKI, as systemd-stub and systemd-pcrphase will extend them.

References: systemd src/boot/efi/stub.c (each UKI section is measured into PCR 11 as two events:
the section name with its trailing NUL, then the section content), src/fundamental/uki.c (the
order: the ``unified_sections`` table, not the PE file order; ``.pcrsig`` is never measured),
src/boot/measure.c (``systemd-measure calculate``: PCR starts at zero, then the boot phases
``enter-initrd``, ``leave-initrd``, ``sysinit``, ``ready`` are extended as plain words, without
NUL). Checked against systemd-measure 252.

The set of measured sections depends on the stub's version: systemd 252 knows .linux .osrel
.cmdline .initrd .splash .dtb .pcrpkey; later stubs add .ucode, .uname and .sbat.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from pathlib import Path

from .errors import UserError
from .pe import parse_pe

# systemd 252 (Debian 12): UNIFIED_SECTION_* order, .pcrsig left out (not measured).
MEASURED_252 = (".linux", ".osrel", ".cmdline", ".initrd", ".splash", ".dtb", ".pcrpkey")
# Current upstream unified_sections order (src/fundamental/uki.c), .pcrsig left out.
MEASURED_CURRENT = (".linux", ".osrel", ".cmdline", ".initrd", ".ucode", ".splash", ".dtb",
                    ".uname", ".sbat", ".pcrpkey")
PHASES = ("enter-initrd", "leave-initrd", "sysinit", "ready")
BANKS = ("sha1", "sha256", "sha384", "sha512")
CHUNK = 1 << 20


def stub_version(stub: Path) -> int | None:
    """The systemd major version of a stub, from its ``.sdmagic`` LoaderInfo string."""
    pe = parse_pe(stub)
    sec = pe.section(".sdmagic")
    if sec is None:
        return None
    with open(stub, "rb") as fh:
        fh.seek(sec.raw_offset)
        text = fh.read(min(sec.virtual_size, sec.raw_size)).decode("ascii", "replace")
    m = re.search(r"systemd-stub (\d+)", text)
    return int(m.group(1)) if m else None


def measured_sections(version: int | None) -> tuple[str, ...]:
    """The sections a stub of this systemd version measures, in measuring order."""
    return MEASURED_252 if version is not None and version <= 252 else MEASURED_CURRENT


def _digest(content: Path | bytes, bank: str) -> bytes:
    h = hashlib.new(bank)
    if isinstance(content, bytes):
        h.update(content)
        return h.digest()
    with open(content, "rb") as fh:
        while data := fh.read(CHUNK):
            h.update(data)
    return h.digest()


def expected_pcr11(sections: Sequence[tuple[str, Path | bytes]], *, bank: str = "sha256",
                   measured: Sequence[str] = MEASURED_252) -> dict[str, str]:
    """PCR 11 (hex) after each boot phase path, e.g. ``enter-initrd:leave-initrd``.

    ``sections`` are the UKI sections (name, file or bytes) in any order; ``measured`` is the
    stub's measuring order (see :func:`measured_sections`). Equals ``systemd-measure calculate``.
    """
    if bank not in BANKS:
        raise UserError(f"unknown PCR bank {bank!r}; use one of {', '.join(BANKS)}")
    by_name = dict(sections)
    if ".linux" not in by_name:
        raise UserError("PCR 11 prediction needs the .linux section")
    size = hashlib.new(bank).digest_size
    pcr = bytes(size)

    def extend(event: bytes) -> None:
        nonlocal pcr
        pcr = hashlib.new(bank, pcr + event).digest()

    for name in measured:
        if name not in by_name:
            continue
        extend(hashlib.new(bank, name.encode() + b"\0").digest())
        extend(_digest(by_name[name], bank))
    out = {}
    path: list[str] = []
    for phase in PHASES:
        extend(hashlib.new(bank, phase.encode()).digest())
        path.append(phase)
        out[":".join(path)] = pcr.hex()
    return out
