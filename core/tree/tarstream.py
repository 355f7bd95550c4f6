"""A defensive, streaming tar reader for container image layers.

Formats read: POSIX ustar (the ``prefix`` field), GNU (``././@LongLink`` long names and long link
targets, base-256 numbers) and POSIX.1-2001 PAX extended headers (``path``, ``linkpath``,
``size``, ``uid``, ``gid``, ``mtime`` with fractions, ``SCHILY.xattr.NAME`` and libarchive's
``LIBARCHIVE.xattr.NAME``), as Go's ``archive/tar`` (Docker, containerd, buildkit) and GNU tar
write them. References: POSIX ``pax`` (IEEE 1003.1-2017, "pax Interchange Format"), GNU tar's
"Basic Tar Format" chapter, and the OCI image spec ``layer.md``.

The reader takes any object with ``read(n)`` and never seeks, so a layer is decompressed as a
stream and memory does not grow with its size. It refuses what it cannot read exactly (sparse
files, multi-volume parts, bad checksums) and bounds what a hostile archive could make it hold:
an extended header is at most 1 MiB, a name at most 64 KiB. A member that claims more bytes than
the stream holds fails when the stream ends, naming the member.

:func:`open_stream` sniffs gzip and zstd by their magic numbers and returns a decompressed
stream that stops (:class:`LimitExceeded`) past a byte bound, so a bomb is cut off early.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field

BLOCK = 512
MAX_EXTENDED = 1 << 20  # a PAX or GNU long-name header larger than this is refused
MAX_NAME = 1 << 16

REG, AREG, LNK, SYM, CHR, BLK, DIR, FIFO, CONT = b"0", b"\0", b"1", b"2", b"3", b"4", b"5", b"6", b"7"
PAX, PAX_GLOBAL, GNU_LONGNAME, GNU_LONGLINK = b"x", b"g", b"L", b"K"
GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


class TarError(Exception):
    """The archive cannot be read as it claims to be; the message names the member."""


class LimitExceeded(TarError):
    """The decompressed stream grew past its bound (a decompression bomb, or a limit too low)."""


@dataclass(slots=True)
class Member:
    """One archive member after its extended headers were applied. ``name`` and ``linkname`` are
    bytes exactly as stored (no normalisation: the caller decides what is safe)."""

    name: bytes
    type: bytes
    mode: int
    uid: int
    gid: int
    size: int
    mtime_ns: int
    linkname: bytes = b""
    devmajor: int = 0
    devminor: int = 0
    xattrs: dict[bytes, bytes] = field(default_factory=dict)
    offset: int = -1  # where the data starts in a seekable stream


def _num(field_: bytes, what: str) -> int:
    """A numeric header field: octal ASCII (NUL or space terminated) or GNU base-256."""
    if field_ and field_[0] & 0x80:
        value = int.from_bytes(field_[1:], "big") | ((field_[0] & 0x3F) << (8 * (len(field_) - 1)))
        if field_[0] & 0x40:  # negative (0xff prefix)
            value -= 1 << (8 * len(field_) - 1)
        return value
    text = field_.split(b"\0", 1)[0].strip(b" ")
    if not text:
        return 0
    try:
        return int(text, 8)
    except ValueError:
        raise TarError(f"the {what} field {field_!r} is not a number") from None


def _cstr(field_: bytes) -> bytes:
    return field_.split(b"\0", 1)[0]


def _checksum_ok(buf: bytes) -> bool:
    stored = _num(buf[148:156], "checksum")
    unsigned = sum(buf[:148]) + 8 * 32 + sum(buf[156:])
    if stored == unsigned:
        return True
    signed = sum((b - 256 if b > 127 else b) for b in buf[:148] + buf[156:]) + 8 * 32
    return stored == signed


def _parse_pax(data: bytes, where: str) -> dict[bytes, bytes]:
    """``LEN KEY=VALUE\\n`` records; the values stay bytes (xattr values are binary)."""
    out: dict[bytes, bytes] = {}
    pos = 0
    while pos < len(data):
        if data[pos] == 0:  # NUL padding after the last record
            break
        sp = data.find(b" ", pos)
        if sp < 0:
            raise TarError(f"{where}: malformed PAX record")
        try:
            length = int(data[pos:sp])
        except ValueError:
            raise TarError(f"{where}: malformed PAX record length") from None
        if length <= sp - pos + 1 or pos + length > len(data) or data[pos + length - 1] != 0x0A:
            raise TarError(f"{where}: PAX record length {length} does not fit")
        record = data[sp + 1 : pos + length - 1]
        key, eq, value = record.partition(b"=")
        if not eq:
            raise TarError(f"{where}: PAX record without '='")
        out[key] = value
        pos += length
    return out


class TarReader:
    """Iterate the members of a tar stream: ``for m in reader: ...``. Inside the loop, the
    member's data is read with :meth:`read` / :meth:`copy_to` (what is not read is skipped)."""

    def __init__(self, stream, what: str) -> None:
        self.stream = stream
        self.what = what
        self._left = 0  # data bytes of the current member not read yet
        self._pad = 0
        self._member: Member | None = None
        self._global: dict[bytes, bytes] = {}
        self.members = 0
        # a seekable file (an outer archive read for its table of contents) is skipped by seeking
        self._seekable = bool(getattr(stream, "seekable", lambda: False)())
        if self._seekable:
            here = stream.tell()
            self._end = stream.seek(0, 2)
            stream.seek(here)

    # -- raw reading ----------------------------------------------------------------------------
    def _exact(self, n: int, why: str) -> bytes:
        parts = []
        got = 0
        while got < n:
            chunk = self.stream.read(n - got)
            if not chunk:
                raise TarError(f"{self.what}: {why}: the stream ends after {got} of {n} bytes "
                               "(the archive is truncated or a header claims more than it holds)")
            parts.append(chunk)
            got += len(chunk)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _skip(self, n: int, why: str) -> None:
        if n > 0 and self._seekable:
            pos = self.stream.seek(n, 1)
            if pos > self._end:
                raise TarError(f"{self.what}: {why}: the archive ends {pos - self._end} bytes early "
                               "(it is truncated or a header claims more than it holds)")
            return
        while n > 0:
            chunk = self.stream.read(min(n, 1 << 20))
            if not chunk:
                raise TarError(f"{self.what}: {why}: the stream ends {n} bytes early "
                               "(the archive is truncated or a header claims more than it holds)")
            n -= len(chunk)

    def _finish_member(self) -> None:
        if self._member is not None:
            self._skip(self._left + self._pad, f"entry {self._member.name.decode(errors='replace')}")
            self._left = self._pad = 0
            self._member = None

    # -- member data ----------------------------------------------------------------------------
    def read(self, n: int) -> bytes:
        """Up to ``n`` bytes of the current member's data (b"" at its end)."""
        n = min(n, self._left)
        if n <= 0:
            return b""
        chunk = self.stream.read(n)
        if not chunk:
            m = self._member
            raise TarError(f"{self.what}: entry {m.name.decode(errors='replace') if m else '?'} claims "
                           f"{m.size if m else '?'} bytes but the layer ends {self._left} bytes short")
        self._left -= len(chunk)
        return chunk

    def copy_to(self, write, chunk: int = 1 << 20) -> int:
        """Write the rest of the member's data through ``write(bytes)``; returns the bytes copied."""
        total = 0
        while self._left:
            data = self.read(chunk)
            write(data)
            total += len(data)
        return total

    # -- headers --------------------------------------------------------------------------------
    def _extended(self, size: int, kind: str, name: bytes) -> bytes:
        if size > MAX_EXTENDED:
            raise TarError(f"{self.what}: a {kind} header of {size} bytes (before {name.decode(errors='replace')!r}) "
                           f"is larger than {MAX_EXTENDED} bytes; refused")
        data = self._exact(size, f"{kind} header")
        self._skip(-size % BLOCK, f"{kind} header")
        return data

    def __iter__(self) -> Iterator[Member]:
        return self

    def __next__(self) -> Member:
        self._finish_member()
        pax: dict[bytes, bytes] = {}
        longname: bytes | None = None
        longlink: bytes | None = None
        while True:
            buf = self.stream.read(BLOCK)
            if len(buf) < BLOCK:
                if buf:
                    buf += self._exact(BLOCK - len(buf), "header")
                else:  # no end-of-archive blocks: tolerated (some writers stop there)
                    raise StopIteration
            if buf == b"\0" * BLOCK:
                raise StopIteration  # end of archive; what follows is not read
            if not _checksum_ok(buf):
                raise TarError(f"{self.what}: a header after {self.members} entries has a bad checksum "
                               "(not a tar archive, or corrupted)")
            typ = buf[156:157]
            size = _num(buf[124:136], "size")
            if size < 0:
                raise TarError(f"{self.what}: a header claims a negative size")
            raw_name = _cstr(buf[0:100])
            if typ == PAX:
                pax.update(_parse_pax(self._extended(size, "PAX", raw_name), self.what))
                continue
            if typ == PAX_GLOBAL:
                self._global.update(_parse_pax(self._extended(size, "PAX global", raw_name), self.what))
                continue
            if typ == GNU_LONGNAME:
                longname = _cstr(self._extended(size, "GNU long name", raw_name))
                continue
            if typ == GNU_LONGLINK:
                longlink = _cstr(self._extended(size, "GNU long link", raw_name))
                continue
            break
        magic = buf[257:263]
        name = raw_name
        if magic == b"ustar\x00":  # POSIX: a prefix before the name
            prefix = _cstr(buf[345:500])
            if prefix:
                name = prefix + b"/" + name
        if longname is not None:
            name = longname
        linkname = longlink if longlink is not None else _cstr(buf[157:257])
        m = Member(name=name, type=typ, mode=_num(buf[100:108], "mode") & 0o7777,
                   uid=_num(buf[108:116], "uid"), gid=_num(buf[116:124], "gid"), size=size,
                   mtime_ns=_num(buf[136:148], "mtime") * 1_000_000_000, linkname=linkname,
                   devmajor=_num(buf[329:337], "devmajor") if typ in (CHR, BLK) else 0,
                   devminor=_num(buf[337:345], "devminor") if typ in (CHR, BLK) else 0)
        records = {**self._global, **pax} if self._global else pax
        if records:
            self._apply_pax(m, records)
        if len(m.name) > MAX_NAME or len(m.linkname) > MAX_NAME:
            raise TarError(f"{self.what}: an entry name of {len(m.name)} bytes is longer than {MAX_NAME}")
        shown = m.name.decode(errors="replace")
        if m.type == b"S" or any(k.startswith(b"GNU.sparse.") for k in records):
            raise TarError(f"{self.what}: entry {shown} is a sparse file, which image layers do not use; refused")
        if m.type in (b"M", b"V"):
            raise TarError(f"{self.what}: entry {shown} is a multi-volume or volume-label header; refused")
        if m.type == AREG and m.name.endswith(b"/"):  # old tars: a folder as a file with a trailing '/'
            m.type = DIR
        if m.type not in (REG, AREG, CONT, LNK, SYM, CHR, BLK, DIR, FIFO):
            raise TarError(f"{self.what}: entry {shown} has the unknown type {m.type!r}; refused")
        # only regular files carry data; a size on a link, folder or device is ignored, as GNU tar
        # and Python's tarfile do
        data = m.size if m.type in (REG, AREG, CONT) else 0
        if data != m.size:
            m.size = 0
        self._left = data
        self._pad = -data % BLOCK
        if self._seekable:
            m.offset = self.stream.tell()
        self._member = m
        self.members += 1
        return m

    def _apply_pax(self, m: Member, records: dict[bytes, bytes]) -> None:
        for key, value in records.items():
            try:
                if key == b"path":
                    m.name = value
                elif key == b"linkpath":
                    m.linkname = value
                elif key == b"size":
                    m.size = int(value)
                elif key == b"uid":
                    m.uid = int(value)
                elif key == b"gid":
                    m.gid = int(value)
                elif key == b"mtime":
                    m.mtime_ns = _pax_time_ns(value)
                elif key.startswith(b"SCHILY.xattr."):
                    m.xattrs[key[len(b"SCHILY.xattr."):]] = value
                elif key.startswith(b"LIBARCHIVE.xattr."):
                    xname = urllib.parse.unquote_to_bytes(key[len(b"LIBARCHIVE.xattr."):])
                    m.xattrs.setdefault(xname, base64.b64decode(value + b"=" * (-len(value) % 4)))
            except ValueError:
                raise TarError(f"{self.what}: entry {m.name.decode(errors='replace')}: PAX {key.decode(errors='replace')}="
                               f"{value[:40]!r} is not valid") from None
        if m.size < 0 or m.uid < 0 or m.gid < 0:
            raise TarError(f"{self.what}: entry {m.name.decode(errors='replace')}: negative size or id in PAX")


def _pax_time_ns(value: bytes) -> int:
    text = value.decode("ascii")
    neg = text.startswith("-")
    whole, _, frac = text.lstrip("-").partition(".")
    ns = int(whole or "0") * 1_000_000_000 + int((frac + "000000000")[:9] or "0")
    return -ns if neg else ns


# -- streams --------------------------------------------------------------------------------------
class Bounded(io.RawIOBase):
    """At most ``size`` bytes of ``raw`` from its current position, hashed on the way (``digest``
    when all were read): a blob inside an outer archive, or a file whose size a descriptor states."""

    def __init__(self, raw, size: int | None, *, algorithm: str = "sha256") -> None:
        self.raw = raw
        self.left = size
        self.read_bytes = 0
        self.hash = hashlib.new(algorithm)

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        n = len(b)
        if self.left is not None:
            n = min(n, self.left)
        if n <= 0:
            return 0
        data = self.raw.read(n)
        k = len(data)
        b[:k] = data
        if self.left is not None:
            self.left -= k
        self.read_bytes += k
        self.hash.update(data)
        return k

    def drain(self) -> None:
        """Read (and hash) what is left, e.g. the zero blocks after a tar's end marker."""
        while self.read(1 << 20):
            pass


class Limited:
    """A decompressed stream that raises :class:`LimitExceeded` once more than ``limit`` bytes came
    out of it, and hashes what it returns (the layer's DiffID)."""

    def __init__(self, inner, limit: int, what: str, *, hash_it: bool = True) -> None:
        self.inner = inner
        self.limit = limit
        self.what = what
        self.out = 0
        self.hash = hashlib.sha256() if hash_it else None

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            n = 1 << 20
        data = self.inner.read(n)
        self.out += len(data)
        if self.out > self.limit:
            raise LimitExceeded(f"{self.what} expands past {self.limit} bytes; stopped "
                                "(a decompression bomb, or raise the image size limit)")
        if self.hash is not None:
            self.hash.update(data)
        return data

    def drain(self) -> None:
        while self.read(1 << 20):
            pass


def sniff(head: bytes) -> str:
    """``gzip``, ``zstd`` or ``tar`` from a stream's first bytes."""
    if head.startswith(GZIP_MAGIC):
        return "gzip"
    if head.startswith(ZSTD_MAGIC):
        return "zstd"
    return "tar"


class _Prefixed(io.RawIOBase):
    """``head`` then the rest of ``raw`` (to sniff a stream without seeking)."""

    def __init__(self, head: bytes, raw) -> None:
        self.head = head
        self.raw = raw

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        if self.head:
            k = min(len(b), len(self.head))
            b[:k] = self.head[:k]
            self.head = self.head[k:]
            return k
        data = self.raw.read(len(b))
        b[: len(data)] = data
        return len(data)


def open_stream(raw, what: str, *, limit: int) -> tuple[Limited, str]:
    """The decompressed stream of ``raw`` (gzip, zstd or plain, sniffed) bounded by ``limit``
    bytes, and the compression found."""
    head = raw.read(4)
    kind = sniff(head)
    src = io.BufferedReader(_Prefixed(head, raw), 1 << 16)
    if kind == "gzip":
        inner = gzip.GzipFile(fileobj=src, mode="rb")
    elif kind == "zstd":
        import zstandard

        inner = zstandard.ZstdDecompressor().stream_reader(src, read_across_frames=True, read_size=1 << 17)
    else:
        inner = src
    return Limited(_Errors(inner, what), limit, what), kind


class _Errors:
    """Turns a decompressor's own errors into a :class:`TarError` naming the layer."""

    def __init__(self, inner, what: str) -> None:
        self.inner = inner
        self.what = what

    def read(self, n: int) -> bytes:
        try:
            return self.inner.read(n)
        except (OSError, EOFError, ValueError) as exc:
            raise TarError(f"{self.what}: cannot decompress ({exc})") from None
        except Exception as exc:  # zstandard.ZstdError
            if type(exc).__name__ == "ZstdError":
                raise TarError(f"{self.what}: cannot decompress ({exc})") from None
            raise
