"""The UKI size forecast: exact PE layout around an initrd figure, against the firmware limit.

Everything in the UKI but the compressed initrd is known exactly before a build (the stub, the
kernel, os-release, cmdline, uname, splash, .pcrpkey and .pcrsig, the Authenticode signature), and the file size is
linear in the initrd's size (sections are file-aligned in order, the signature appended:
:mod:`..formats.uki`, :mod:`..formats.authenticode`): :class:`UkiLayout` parses the stub once,
after which each new initrd figure costs an addition. :func:`forecast` combines it with the
exact newc figures of a plan and, when one is prepared, the compressed estimate of
:class:`~sysextant.core.sizing.estimate.Estimator`. The CLI's ``plan``, the build's prediction and the
workbench's gauge all come from here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from ..errors import UserError
from ..formats.authenticode import signature_length_for
from ..formats.pcr import pcrsig_size
from ..keys import PcrKey, load_certificate, load_pcr_key
from ..spec.model import Spec
from ..tree.index import TreeIndex
from ..units import LIMIT_PRESETS, THRESHOLDS, format_size
from .plan import Plan

#: an Authenticode PKCS#7 is the signer certificate plus about this much (digest info, signer
#: info, attributes, the RSA signature); used when the key is not loaded (the workbench)
#: a PKCS#7 with a 2048-bit key and a typical certificate, used only when the certificate is unreadable
GUESSED_SIGNATURE_BYTES = 1800


@dataclass(frozen=True)
class Figures:
    """The initrd and the predicted UKI against the spec's limit."""

    initrd_cpio_before: int  # exact newc bytes, no extension
    initrd_cpio: int  # exact newc bytes after the extensions take their share
    initrd_bytes: int  # what goes into the UKI: compressed estimate, or the cpio when none
    initrd_low: int
    initrd_high: int
    estimated: bool  # initrd_bytes is a compressed estimate (else the exact uncompressed cpio)
    method: str  # how the initrd figure was obtained, for the label
    uki_bytes: int  # predicted UKI file size
    uki_low: int
    uki_high: int
    limit: int
    limit_text: str
    verdict: str  # units.Thresholds.verdict of uki_bytes against the limit

    @property
    def level(self) -> str:
        """How close to the limit, in four steps: ``ok``, ``warn`` (a threshold passed, or within 10% of the limit),
        ``high-risk``, or ``over`` (over the limit or a hard failure size)."""
        if self.verdict in ("over", "fails", "impossible"):
            return "over"
        if self.verdict == "ok" and self.uki_high > self.limit * 0.9:
            return "warn"
        return self.verdict

    @property
    def limit_label(self) -> str:
        """The limit as every other size is shown (``256 MiB``), with the preset's name if it is one."""
        shown = format_size(self.limit)
        return f"{shown} ({self.limit_text})" if self.limit_text in LIMIT_PRESETS else shown

    @property
    def error_pct(self) -> float:
        """Half the error band as a percentage of the figure (0 when exact)."""
        if not self.uki_bytes:
            return 0.0
        return (self.uki_high - self.uki_low) / 2 / self.uki_bytes * 100

    @property
    def over_by(self) -> int:
        """Bytes of UKI that must still go for the prediction to fit the limit (0 if it fits)."""
        return max(0, self.uki_bytes - self.limit)


class UkiLayout:
    """The UKI's file size as a function of its initrd's size, exact but for the initrd."""

    def __init__(self, spec: Spec, index: TreeIndex | None, *, signature_len: int | None = None,
                 pcr_key: PcrKey | None = None) -> None:
        """``signature_len`` and ``pcr_key``: what the caller has loaded already (a build has both);
        otherwise they are read from the spec's files (the certificate alone gives the exact
        signature length)."""
        from .ukiinputs import kernel_path, os_release, uname

        sizes: dict[str, int] = {".cmdline": len(spec.uki.cmdline.encode())}
        self.exact = True
        self.notes: list[str] = []
        try:
            kernel = kernel_path(spec)
            sizes[".linux"] = os.path.getsize(kernel)
            if index is not None:
                release = uname(spec, index, kernel)
                if release:
                    sizes[".uname"] = len(release.encode())
        except (UserError, OSError) as exc:
            sizes[".linux"] = 0
            self.exact = False
            self.notes.append(str(exc))
        try:
            sizes[".osrel"] = len(os_release(spec))
        except UserError as exc:
            sizes[".osrel"] = 0
            self.exact = False
            self.notes.append(str(exc))
        if spec.uki.splash:
            try:
                sizes[".splash"] = os.path.getsize(spec.uki.splash)
            except OSError:
                self.exact = False
        if spec.uki.pcr_key is not None:
            try:
                if pcr_key is None:
                    pcr_key = load_pcr_key(spec)
                if pcr_key is not None:
                    sizes[".pcrpkey"] = len(pcr_key.public_pem)
                    sizes[".pcrsig"] = pcrsig_size(pcr_key.public_key)
            except UserError as exc:
                self.exact = False
                self.notes.append(str(exc))
        if spec.signing is not None and signature_len is None:
            try:
                cert = load_certificate(spec.signing.cert.read_bytes(), spec.signing.cert)
                signature_len = signature_length_for(cert)
            except (OSError, UserError) as exc:
                signature_len = GUESSED_SIGNATURE_BYTES
                self.exact = False
                self.notes.append(f"signature length guessed: {getattr(exc, 'strerror', None) or exc}")
        self.sizes = sizes
        try:
            from ..formats.uki import predict_size

            stub = spec.uki.stub
            self.base = predict_size(stub, sizes, signed=False)
            self.align = predict_size(stub, {**sizes, ".initrd": 1}, signed=False) - self.base
            self.signing = (predict_size(stub, sizes, signed=True, signature_len=signature_len) - self.base
                            if signature_len else 0)
        except (UserError, OSError, ValueError) as exc:
            self.exact = False
            self.notes.append(str(exc))
            try:
                stub_bytes = os.path.getsize(spec.uki.stub)
            except OSError:
                stub_bytes = 0
            self.align = 512
            self.base = stub_bytes + sum(-(-n // 512) * 512 for n in sizes.values())
            self.signing = signature_len or 0

    def size(self, initrd: int) -> int:
        return self.base + -(-initrd // self.align) * self.align + self.signing


def forecast(spec: Spec, plan: Plan, layout: UkiLayout, estimator: Any = None) -> Figures:
    """The figures of ``plan``: exact newc bytes, the compressed estimate when ``estimator`` is
    prepared, and the UKI size around it against ``uki.limit``."""
    cpio = plan.initrd_cpio_after
    if estimator is not None:
        est = estimator.estimate(plan.initrd_after)
        initrd, low, high = est.bytes, est.low, est.high
        estimated, method = not est.exact, est.method
    else:
        initrd = low = high = cpio
        estimated = False
        method = ("exact (uncompressed)" if spec.uki.compression == "none"
                  else f"uncompressed; {spec.uki.compression} estimate not available")
    uki = layout.size(initrd)
    return Figures(plan.initrd_cpio_before, cpio, initrd, low, high, estimated, method, uki,
                   uki - (initrd - low), uki + (high - initrd), spec.uki.limit, spec.uki.limit_text,
                   THRESHOLDS.verdict(uki, spec.uki.limit))


def extension_savings(plan: Plan, layout: UkiLayout, estimator: Any = None) -> dict[str, int]:
    """What each extension takes off the UKI, given the others: the UKI without its moves minus
    the UKI with them (compressed when an estimator is ready, else newc bytes)."""
    out: dict[str, int] = {}
    now = estimator.estimate(plan.initrd_after).bytes if estimator is not None else None
    for ep in plan.extensions:
        if estimator is not None and ep.entries:
            without = plan.initrd_after.union(ep.selected.intersection(plan.initrd_base))
            out[ep.name] = layout.size(estimator.estimate(without).bytes) - layout.size(now)
        else:
            out[ep.name] = ep.initrd_bytes
    return out


def prepared_estimator(spec: Spec, plan: Plan, reporter: Any = None, *, threads: int | None = None) -> Any:
    """An :class:`~sysextant.core.sizing.estimate.Estimator` for the spec's compressor, prepared (the
    fast pass over the base initrd; calibration from earlier builds in the output folder).
    ``threads`` caps the compressor workers of its target-level passes (default: every CPU that
    fits in memory; one when ``uki.zstd_mode`` compresses single-threaded, to keep memory least)."""
    from ..formats.initrd import initrd_extra
    from .estimate import Estimator

    if threads is None and spec.uki.zstd_single():
        threads = 1

    est = Estimator(plan.index, plan.initrd_base, compression=spec.uki.compression, level=spec.uki.level,
                    cache_dir=spec.output, reporter=reporter, extra=initrd_extra(spec, plan.index, plan.initrd_base),
                    threads=threads)
    est.prepare()
    release_freed_memory()
    return est


def release_freed_memory() -> None:
    """Hand memory the compressors freed back to the system (glibc keeps it in per-thread arenas
    otherwise, and the build's own compressor would come on top of it). No-op elsewhere."""
    import contextlib
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if name:
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(name).malloc_trim(0)


def describe(fig: Figures) -> str:
    """One line for the UKI: size, band, verdict, room or overshoot."""
    label = f"estimate ±{fig.error_pct:.1f}%" if fig.estimated else "exact" if "exact" in fig.method else "uncompressed"
    room = (f"{format_size(fig.limit - fig.uki_bytes)} left" if fig.uki_bytes <= fig.limit
            else f"{format_size(fig.over_by)} over: move about that much more (compressed) out")
    return f"UKI {format_size(fig.uki_bytes)} ({label}) against the limit {fig.limit_label}: {fig.verdict}; {room}"
