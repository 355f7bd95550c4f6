"""A kernel module's ``.modinfo``: the key=value facts ``modinfo`` prints, firmware names among them.

Sources: Linux ``include/linux/moduleparam.h`` (``__MODULE_INFO`` puts each ``key=value`` string,
NUL-terminated, into the ``.modinfo`` section of the module's ELF file; padding NULs may sit between
them) and kmod's ``libkmod-elf.c`` / ``libkmod-file.c`` (the same section read from ``.ko``,
``.ko.xz``, ``.ko.zst`` and ``.ko.gz``; the compression is told by the content's magic, not the
name). ``modinfo -F firmware`` lists the ``firmware=`` values in section order; so does
:func:`firmware`.

Compressed modules are inflated in memory up to :data:`MAX_MODULE` bytes (the largest real module,
amdgpu, is about 30 MiB uncompressed); a plain ``.ko`` is read with ``pread``, section by section.

See docs/formats.md, section 12 (kernel modules).
"""

from __future__ import annotations

import gzip
import lzma
import os
import zlib
from collections.abc import Callable

import zstandard

from .elf import ElfError, read_section

#: the most a module may inflate to before we call it hostile
MAX_MODULE = 256 * 1024 * 1024
#: the most its ``.modinfo`` section may hold
MAX_MODINFO = 4 * 1024 * 1024

_XZ = b"\xfd7zXZ\x00"
_ZSTD = b"\x28\xb5\x2f\xfd"
_GZIP = b"\x1f\x8b"


class ModinfoError(ValueError):
    """A module that cannot be read: bad compression, too large, or malformed ELF."""


def _inflate(fd: int, what: str) -> bytes:
    """The module on ``fd`` decompressed (xz, zstd or gzip by magic), at most :data:`MAX_MODULE` bytes."""
    size = os.fstat(fd).st_size
    if size > MAX_MODULE:
        raise ModinfoError(f"{what} is {size} bytes compressed, over the {MAX_MODULE} allowed for a module")
    data = os.pread(fd, size, 0)
    magic = data[:6]
    try:
        if magic.startswith(_XZ):
            dec = lzma.LZMADecompressor()
            out = dec.decompress(data, max_length=MAX_MODULE + 1)
        elif magic.startswith(_GZIP):
            zdec = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
            out = zdec.decompress(data, MAX_MODULE + 1)
        else:
            chunks: list[bytes] = []
            total = 0
            with zstandard.ZstdDecompressor().stream_reader(data, read_across_frames=True) as reader:
                while total <= MAX_MODULE:
                    chunk = reader.read(1 << 20)
                    if not chunk:
                        break
                    chunks.append(chunk)
                    total += len(chunk)
            out = b"".join(chunks)
    except (lzma.LZMAError, zlib.error, gzip.BadGzipFile, zstandard.ZstdError, EOFError) as exc:
        raise ModinfoError(f"{what} does not decompress: {exc}") from None
    if len(out) > MAX_MODULE:
        raise ModinfoError(f"{what} inflates to over {MAX_MODULE} bytes: not a kernel module")
    return out


def _with_fd(path_or_fd: int | str | bytes | os.PathLike[str], use: Callable[[int], bytes | None]) -> bytes | None:
    if isinstance(path_or_fd, int):
        return use(path_or_fd)
    fd = os.open(path_or_fd, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    try:
        return use(fd)
    finally:
        os.close(fd)


def modinfo_section(path_or_fd: int | str | bytes | os.PathLike[str]) -> bytes | None:
    """The raw ``.modinfo`` section of a module file (compressed or not); ``None`` if it has none.
    Raises :class:`ModinfoError` for a file that is neither a module nor a compressed one."""
    what = "the module" if isinstance(path_or_fd, int) else os.fsdecode(path_or_fd)

    def use(fd: int) -> bytes | None:
        magic = os.pread(fd, 6, 0)
        try:
            if magic.startswith(b"\x7fELF"):
                return read_section(fd, ".modinfo", limit=MAX_MODINFO)
            if magic.startswith((_XZ, _ZSTD, _GZIP)):
                data = _inflate(fd, what)
                if not data.startswith(b"\x7fELF"):
                    raise ModinfoError(f"{what} decompresses to something that is not ELF")
                return read_section(data, ".modinfo", limit=MAX_MODINFO)
        except ElfError as exc:
            raise ModinfoError(f"{what}: {exc}") from None
        raise ModinfoError(f"{what} is neither an ELF kernel module nor an xz, zstd or gzip compressed one")

    return _with_fd(path_or_fd, use)


def read_modinfo(path_or_fd: int | str | bytes | os.PathLike[str]) -> dict[str, list[str]]:
    """Each ``.modinfo`` key with its values in section order (``{"firmware": [...], "alias": [...]}``)."""
    raw = modinfo_section(path_or_fd) or b""
    out: dict[str, list[str]] = {}
    for item in raw.split(b"\0"):
        if not item:
            continue
        key, sep, value = item.partition(b"=")
        if not sep:
            continue
        out.setdefault(key.decode("utf-8", "replace"), []).append(value.decode("utf-8", "replace"))
    return out


def firmware(path_or_fd: int | str | bytes | os.PathLike[str]) -> list[str]:
    """The firmware files a module names (``modinfo -F firmware``), in its order."""
    return read_modinfo(path_or_fd).get("firmware", [])
