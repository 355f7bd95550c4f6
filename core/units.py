"""Byte sizes with units, and the firmware size limits a UKI is judged against.

Limits seen in the field (Kairos blog, AuroraBoot's --efi-size-warn of 1024 MB): warn at 800 MiB,
high risk above 1 GiB, known failure at 2 GiB (OVMF, systemd issue 31452), impossible at 4 GiB
(PE 32-bit fields).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB

_UNITS = {
    "b": 1,
    "k": KiB, "kb": 1000, "kib": KiB,
    "m": MiB, "mb": 1000**2, "mib": MiB,
    "g": GiB, "gb": 1000**3, "gib": GiB,
    "t": 1024 * GiB, "tb": 1000**4, "tib": 1024 * GiB,
}
#: Matched against the stripped text. The possessive ``\s*+`` keeps it linear: with a plain
#: ``\s*`` before ``[A-Za-z]*`` and another ``\s*$``, "1", 20000 spaces and "!" took seconds.
_SIZE_RE = re.compile(r"([0-9]+(?:\.[0-9]+)?)\s*+([A-Za-z]*)")


def _shown(value: str, limit: int = 60) -> str:
    """``repr(value)``, cut to ``limit`` characters when longer (a message stays one line)."""
    return repr(value) if len(value) <= limit else f"{value[:limit]!r}... ({len(value)} characters)"



@dataclass(frozen=True)
class Thresholds:
    """Where a UKI size turns from fine to risky to broken."""

    warn: int = 800 * MiB
    high_risk: int = 1 * GiB
    fails: int = 2 * GiB
    impossible: int = 4 * GiB

    def verdict(self, size: int, limit: int | None = None) -> str:
        """One word for a size: ok, warn, high-risk, over (the spec's limit), fails, impossible."""
        if size >= self.impossible:
            return "impossible"
        if size >= self.fails:
            return "fails"
        if limit is not None and size > limit:
            return "over"
        if size > self.high_risk:
            return "high-risk"
        if size > self.warn:
            return "warn"
        return "ok"


THRESHOLDS = Thresholds()
#: verdicts that mean the UKI will not boot where the spec says it must: a failed build or plan
FAILING_VERDICTS = ("over", "fails", "impossible")


def failing_verdict(verdict: str | None) -> bool:
    """Whether a :meth:`Thresholds.verdict` word is a failure (exit 1, no deploy advice)."""
    return verdict in FAILING_VERDICTS

#: Named firmware limits a spec may use instead of a number (`uki.limit: ovmf`).
LIMIT_PRESETS: dict[str, int] = {
    "small-firmware": 300 * MiB,  # the smallest limit reported on real boards
    "warn": THRESHOLDS.warn,  # AuroraBoot's --efi-size-warn neighbourhood, a safe default
    "typical": THRESHOLDS.high_risk,  # most firmware seen boots up to about 1 GiB
    "ovmf": THRESHOLDS.fails,  # QEMU/OVMF and every firmware seen fail at 2 GiB
    "pe-max": THRESHOLDS.impossible,  # the PE format's 32-bit size fields
}


class SizeError(ValueError):
    """A size string that cannot be read; the message says what is accepted."""


def parse_size(value: object, *, allow_presets: bool = False) -> int:
    """Parse ``1GiB``, ``800 MiB``, ``300MB`` or a preset name into bytes.

    A bare number is refused (is it bytes or MiB?) unless it is 0; say ``123B`` for bytes.
    """
    if isinstance(value, bool):
        raise SizeError(f"expected a size such as 1GiB, got {value!r}")
    if isinstance(value, int):
        if value == 0:
            return 0
        raise SizeError(f"size {value} has no unit: write {value}B, or {value}MiB if you meant MiB")
    if not isinstance(value, str):
        raise SizeError(f"expected a size such as 1GiB, got {type(value).__name__}")
    text = value.strip()
    if allow_presets and text.lower() in LIMIT_PRESETS:
        return LIMIT_PRESETS[text.lower()]
    match = _SIZE_RE.fullmatch(text)
    if not match:
        presets = f" or a preset ({', '.join(LIMIT_PRESETS)})" if allow_presets else ""
        raise SizeError(f"cannot read size {_shown(value)}: write a number with a unit such as 1GiB{presets}")
    number, unit = match.groups()
    if not unit:
        if len(number) > 20:
            raise SizeError(f"size {_shown(value)} has no unit and far too many digits")
        raise SizeError(f"size {_shown(value)} has no unit: write {number}B, or {number}MiB if you meant MiB")
    factor = _UNITS.get(unit.lower())
    if factor is None:
        raise SizeError(f"unknown unit {_shown(unit)} in {_shown(value)}: use B, KiB, MiB, GiB (or KB, MB, GB)")
    return int(float(number) * factor)  # OverflowError past float's range, as int() raises it


def format_size(n: int | float, *, signed: bool = False) -> str:
    """Human size in binary units, three significant digits: ``812 MiB``, ``1.02 GiB``."""
    sign = ""
    if signed:
        sign = "+" if n > 0 else ("-" if n < 0 else "±")
    elif n < 0:
        sign = "-"
    n = abs(n)
    for unit, factor in (("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if n >= factor:
            value = n / factor
            digits = 2 if value < 10 else (1 if value < 100 else 0)
            return f"{sign}{value:.{digits}f} {unit}"
    return f"{sign}{int(n)} B"
