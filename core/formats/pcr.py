"""Expected TPM PCR 11 values for a UKI, as systemd-stub and systemd-pcrphase will extend them.

References: systemd src/boot/efi/stub.c (each UKI section is measured into PCR 11 as two events:
the section name with its trailing NUL, then the section content), src/fundamental/uki.c (the
order: the ``unified_sections`` table, not the PE file order; ``.pcrsig`` is never measured),
src/boot/measure.c (``systemd-measure calculate``: PCR starts at zero, then the boot phases
``enter-initrd``, ``leave-initrd``, ``sysinit``, ``ready`` are extended as plain words, without
NUL). Checked against systemd-measure 252.

The set of measured sections depends on the stub's version: systemd 252 knows .linux .osrel
.cmdline .initrd .splash .dtb .pcrpkey; later stubs add .ucode, .uname and .sbat.

The ``.pcrsig`` section (what ``systemd-measure sign`` prints; src/boot/measure.c ``verb_sign`` of
systemd 252) holds, per bank and per boot phase path, ``{"pcrs":[11],"pkfp":...,"pol":...,
"sig":...}``: ``pol`` is the TPM2 PolicyPCR digest for PCR 11 at that phase (TPM 2.0 Library
Part 3, TPM2_PolicyPCR: policyDigest' = SHA-256(policyDigest || TPM_CC_PolicyPCR ||
TPML_PCR_SELECTION || SHA-256(PCR values)), starting from 32 zero bytes; systemd 252 computes it
in a SHA-256 trial session for every bank), ``sig`` an RSA PKCS#1 v1.5 signature with the bank's
hash over ``pol``, ``pkfp`` the SHA-256 of the public key's DER (OpenSSL ``i2d_PublicKey``: the
PKCS#1 RSAPublicKey, see src/shared/openssl-util.c ``pubkey_fingerprint``). ``.pcrpkey`` is that
public key as PEM SubjectPublicKeyInfo (what ukify writes when given only the private key); it is
measured, ``.pcrsig`` is not. Checked byte for byte against systemd-measure 252 on a software TPM.

See docs/formats.md, section 10 (PCR 11 prediction and .pcrsig).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import struct
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from ..errors import UserError
from ..keys import PcrKey, public_key_fingerprint
from .pe import parse_pe

# systemd 252 (Debian 12): UNIFIED_SECTION_* order, .pcrsig left out (not measured).
MEASURED_252 = (".linux", ".osrel", ".cmdline", ".initrd", ".splash", ".dtb", ".pcrpkey")
# Current upstream unified_sections order (src/fundamental/uki.c), .pcrsig left out.
MEASURED_CURRENT = (".linux", ".osrel", ".cmdline", ".initrd", ".ucode", ".splash", ".dtb",
                    ".uname", ".sbat", ".pcrpkey")
PHASES = ("enter-initrd", "leave-initrd", "sysinit", "ready")
# systemd-measure sign's default phase paths: from entering the initrd to the start of shutdown.
DEFAULT_PHASES = tuple(":".join(PHASES[:n]) for n in range(1, len(PHASES) + 1))
BANKS = ("sha1", "sha256", "sha384", "sha512")
PCR_KERNEL_IMAGE = 11  # TPM_PCR_INDEX_KERNEL_IMAGE
CHUNK = 1 << 20

# TPM 2.0 Library Part 2: TPM_CC_PolicyPCR, TPM_ALG_* of each bank; PCR selections are 3 bytes
# (24 PCRs), as systemd's tpm2_pcr_mask_to_selection writes them.
TPM_CC_POLICY_PCR = 0x0000017F
TPM_ALG = {"sha1": 0x0004, "sha256": 0x000B, "sha384": 0x000C, "sha512": 0x000D}
PCR_SELECT_BYTES = 3
_HASHES = {"sha1": hashes.SHA1, "sha256": hashes.SHA256, "sha384": hashes.SHA384, "sha512": hashes.SHA512}

Content = Path | bytes
Progress = Callable[[int], None]


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


def _check_banks(banks: Iterable[str]) -> None:
    for bank in banks:
        if bank not in BANKS:
            raise UserError(f"unknown PCR bank {bank!r}; use one of {', '.join(BANKS)}")


def _digests(content: Content, banks: Sequence[str], progress: Progress | None) -> tuple[dict[str, bytes], int]:
    """The content's digest in every bank (one pass over a file) and its length."""
    hs = {bank: hashlib.new(bank) for bank in banks}
    if isinstance(content, bytes):
        for h in hs.values():
            h.update(content)
        return {b: h.digest() for b, h in hs.items()}, len(content)
    size = 0
    with open(content, "rb") as fh:
        while data := fh.read(CHUNK):
            for h in hs.values():
                h.update(data)
            size += len(data)
            if progress is not None:
                progress(len(data))
    return {b: h.digest() for b, h in hs.items()}, size


def _extend(pcr: bytes, event: bytes, bank: str) -> bytes:
    return hashlib.new(bank, pcr + event).digest()


def kernel_pcr11(sections: Sequence[tuple[str, Content]], banks: Sequence[str] = ("sha256",), *,
                 measured: Sequence[str] = MEASURED_252, progress: Progress | None = None) -> dict[str, bytes]:
    """PCR 11 per bank after the stub measured the sections, before any boot phase.

    Empty sections are skipped, as the stub and systemd-measure do (ukify leaves them out).
    """
    _check_banks(banks)
    by_name = dict(sections)
    if ".linux" not in by_name:
        raise UserError("PCR 11 prediction needs the .linux section")
    pcrs = {bank: bytes(hashlib.new(bank).digest_size) for bank in banks}
    for name in measured:
        if name not in by_name:
            continue
        digests, size = _digests(by_name[name], banks, progress)
        if size == 0:
            continue
        for bank in banks:
            pcr = _extend(pcrs[bank], hashlib.new(bank, name.encode() + b"\0").digest(), bank)
            pcrs[bank] = _extend(pcr, digests[bank], bank)
    return pcrs


def extend_phase(pcr: bytes, phase: str, bank: str) -> bytes:
    """PCR 11 after systemd-pcrphase measured each word of a phase path like ``enter-initrd:leave-initrd``."""
    for word in phase.split(":"):
        if word:
            pcr = _extend(pcr, hashlib.new(bank, word.encode()).digest(), bank)
    return pcr


def expected_pcr11(sections: Sequence[tuple[str, Content]], *, bank: str = "sha256",
                   measured: Sequence[str] = MEASURED_252) -> dict[str, str]:
    """PCR 11 (hex) after each boot phase path, e.g. ``enter-initrd:leave-initrd``.

    ``sections`` are the UKI sections (name, file or bytes) in any order; ``measured`` is the
    stub's measuring order (see :func:`measured_sections`). Equals ``systemd-measure calculate``.
    """
    base = kernel_pcr11(sections, (bank,), measured=measured)[bank]
    return {phase: extend_phase(base, phase, bank).hex() for phase in DEFAULT_PHASES}


def pcr_selection(indices: Iterable[int], bank: str) -> bytes:
    """A marshalled TPML_PCR_SELECTION with one TPMS_PCR_SELECTION for ``bank``."""
    _check_banks([bank])
    select = bytearray(PCR_SELECT_BYTES)
    for index in indices:
        if not 0 <= index < 8 * PCR_SELECT_BYTES:
            raise ValueError(f"PCR index {index} out of range")
        select[index // 8] |= 1 << (index % 8)
    return struct.pack(">IHB", 1, TPM_ALG[bank], PCR_SELECT_BYTES) + bytes(select)


def policy_pcr_digest(pcr_values: Mapping[int, bytes], bank: str, *, previous: bytes | None = None) -> bytes:
    """The TPM2 PolicyPCR policy digest (SHA-256 session) for these PCR values of ``bank``.

    ``pcr_values`` maps PCR index to value; the PCR digest hashes the values in index order.
    ``previous`` is the policy digest before this assertion (32 zero bytes for a fresh session).
    """
    pcr_digest = hashlib.sha256(b"".join(pcr_values[i] for i in sorted(pcr_values))).digest()
    old = previous if previous is not None else bytes(32)
    return hashlib.sha256(old + struct.pack(">I", TPM_CC_POLICY_PCR) + pcr_selection(pcr_values, bank)
                          + pcr_digest).digest()


def _render(signed: Mapping[str, Sequence[tuple[str, bytes, bytes]]]) -> bytes:
    """systemd-measure's JSON (``--json=short``, one trailing newline) from per-bank
    (pkfp, policy digest, signature) triples in phase order."""
    doc = {bank: [{"pcrs": [PCR_KERNEL_IMAGE], "pkfp": fp, "pol": pol.hex(),
                   "sig": base64.b64encode(sig).decode("ascii")} for fp, pol, sig in entries]
           for bank, entries in signed.items()}
    return (json.dumps(doc, separators=(",", ":")) + "\n").encode("ascii")


def _banks_in_order(banks: Sequence[str]) -> list[str]:
    _check_banks(banks)
    return sorted(set(banks), key=str.upper)  # systemd-measure sorts the bank names (upper case)


def pcrsig_json(sections: Sequence[tuple[str, Content]], private_key: rsa.RSAPrivateKey,
                public_key: rsa.RSAPublicKey | None = None, *, banks: Sequence[str] = ("sha256",),
                phases: Sequence[str] = DEFAULT_PHASES, measured: Sequence[str] = MEASURED_252,
                progress: Progress | None = None) -> bytes:
    """The ``.pcrsig`` section: exactly what ``systemd-measure sign`` (252) prints for these
    sections, key, banks and phase paths. ``sections`` must include ``.pcrpkey`` when the UKI
    has one (it is measured). ``public_key`` defaults to the private key's."""
    if public_key is None:
        public_key = private_key.public_key()
    if public_key.public_numbers() != private_key.public_key().public_numbers():
        raise UserError("the PCR public key does not belong to the PCR private key")
    order = _banks_in_order(banks)
    base = kernel_pcr11(sections, order, measured=measured, progress=progress)
    fp = public_key_fingerprint(public_key)
    signed: dict[str, list[tuple[str, bytes, bytes]]] = {bank: [] for bank in order}
    for phase in phases:
        for bank in order:
            pol = policy_pcr_digest({PCR_KERNEL_IMAGE: extend_phase(base[bank], phase, bank)}, bank)
            sig = private_key.sign(pol, padding.PKCS1v15(), _HASHES[bank]())
            signed[bank].append((fp, pol, sig))
    return _render(signed)


def pcrsig_size(public_key: rsa.RSAPublicKey, *, banks: Sequence[str] = ("sha256",),
                phases: Sequence[str] = DEFAULT_PHASES) -> int:
    """The exact length of :func:`pcrsig_json` for this key: every field has a fixed width
    (64 hex digits, a base64 signature of the key's size), so no content is needed."""
    order = _banks_in_order(banks)
    entry = ("0" * 64, bytes(32), bytes((public_key.key_size + 7) // 8))
    return len(_render({bank: [entry] * len(phases) for bank in order}))


def pcr_sections(sections: Sequence[tuple[str, Content]], pcr_key: PcrKey, *,
                 measured: Sequence[str] = MEASURED_252, banks: Sequence[str] = ("sha256",),
                 progress: Progress | None = None) -> list[tuple[str, Content]]:
    """``sections`` plus ``.pcrpkey`` and the ``.pcrsig`` signing the PCR 11 values they give."""
    out = [(n, c) for n, c in sections if n not in (".pcrpkey", ".pcrsig")]
    out.append((".pcrpkey", pcr_key.public_pem))
    out.append((".pcrsig", pcrsig_json(out, pcr_key.private_key, pcr_key.public_key, banks=banks,
                                       measured=measured, progress=progress)))
    return out
