"""Verify a sysext DDI from its bytes alone, the way systemd will look at it.

Nothing here trusts the writer's bookkeeping: the GPT is parsed and CRC-checked
(:mod:`.gpt`), the partition types must form the root layout of one architecture (Discoverable
Partitions Specification), the partition UUIDs must be the halves of the verity root hash, the
dm-verity tree is recomputed from the data partition (:func:`.verity.verify_tree`), the
signature partition is checked (:func:`.pkcs7.check_signature`), and the filesystem is read
for the rules systemd-sysext applies (``src/sysext/sysext.c``, ``src/basic/os-util.c``):
an ``extension-release`` file matching the image name, os-release syntax with ``ID=``,
nothing but ``usr/`` and ``opt/``, no ``usr/lib/os-release``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import stat
import struct
import subprocess
import uuid
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from cryptography import x509

from .. import rules
from ..atomic import private_tempdir
from ..errors import UserError
from ..formats import erofs, gpt, pkcs7, verity
from ..formats.authenticode import promised_size, verify_authenticode
from ..formats.pe import parse_pe
from ..keys import load_certificate
from ..rules import parse_os_release

SQUASHFS_MAGIC = b"hsqs"
RELEASE_DIR = rules.RELEASE_DIR.encode()
RELEASE_PREFIX = rules.RELEASE_PREFIX.encode()
STRICT_XATTR = rules.STRICT_XATTR
ALLOWED_TOP = {t.encode() for t in rules.MERGED_TOPS}


@dataclass
class Check:
    """One named check of an image or a UKI: ``ok``, a one-line ``detail`` saying what was found,
    and the facts it established as fields of their own (a front end shows them without reading
    the detail): ``root_hash``, the dm-verity root hash the verity check recomputed."""

    name: str
    ok: bool
    detail: str = ""
    root_hash: str | None = None

    @property
    def text(self) -> str:
        """The detail with the facts, one line: what ``verify`` prints and the JSON's ``detail``."""
        return f"{self.detail}; root hash {self.root_hash}" if self.root_hash else self.detail

    def as_dict(self) -> dict:
        """The JSON of one check (``verify --json``, ``build --json``): name, ok, detail."""
        return {"name": self.name, "ok": self.ok, "detail": self.text}


@dataclass
class VerifyReport:
    """All checks of one artefact (a sysext image or a UKI); ``ok`` only when every check passed."""

    path: str
    checks: list[Check] = field(default_factory=list)
    kind: str = "sysext"  # sysext | uki
    root_hash: str | None = None
    architecture: str | None = None
    signed: bool = False
    filesystem: str | None = None

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks)

    def failed(self) -> list[Check]:
        return [c for c in self.checks if not c.ok]

    def check(self, name: str) -> Check | None:
        return next((c for c in self.checks if c.name == name), None)

    def add(self, name: str, problems: list[str], good: str, *, root_hash: str | None = None) -> bool:
        """Record check ``name``: passed with ``good`` (and its facts) when there are no problems."""
        self.checks.append(Check(name, False, "; ".join(problems)) if problems else Check(name, True, good, root_hash))
        return not problems

    def check_dicts(self) -> list[dict]:
        return [c.as_dict() for c in self.checks]

    def as_dict(self) -> dict:
        """The JSON of ``verify --json`` (a UKI: only its checks; an image: what was read too)."""
        if self.kind == "uki":
            return {"ok": self.ok, "checks": self.check_dicts()}
        return {"path": self.path, "ok": self.ok, "root_hash": self.root_hash,
                "architecture": self.architecture, "signed": self.signed,
                "filesystem": self.filesystem, "checks": self.check_dicts()}

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), indent=2)


def image_names(file_name: str) -> dict[str, str]:
    """The extension name each systemd generation derives from an image file name.

    systemd 252 takes the file name minus ``.raw``; systemd >= 255 (``path_extract_image_name``)
    strips ``.sysext.raw``/``.confext.raw``/``.raw`` and cuts at the first ``_`` or ``+``.
    """
    old = file_name[:-4] if file_name.endswith(".raw") else file_name
    new = file_name
    for suffix in (".sysext.raw", ".confext.raw", ".raw"):
        if new.endswith(suffix):
            new = new[: -len(suffix)]
            break
    new = re.split(r"[_+]", new, maxsplit=1)[0]
    return {"252": old, ">=255": new}


def _false(value: bytes) -> bool:
    """systemd's parse_boolean() for a false value."""
    return value.strip(b"\0").strip().lower() in (b"0", b"no", b"n", b"false", b"f", b"off")


# --- filesystem views --------------------------------------------------------------------------


@dataclass
class _Entry:
    path: bytes
    mode: int
    target: bytes | None
    xattrs: dict[bytes, bytes]
    handle: object  # what the reader needs to fetch the content


class _ErofsView:
    def __init__(self, f: BinaryIO, offset: int) -> None:
        self._erofs, self._f, self._offset = erofs, f, offset
        self.entries = [_Entry(i.path.strip(b"/"), i.mode, i.target, dict(i.xattrs), i)
                        for i in erofs.read_tree(f, offset)]

    def read(self, entry: _Entry) -> bytes:
        return self._erofs.read_file(self._f, entry.handle, self._offset)


class _SquashfsView:
    """Listing with ``unsquashfs -lln``, the release files extracted (with xattrs) to read them."""

    def __init__(self, image: Path, offset: int, tmp: Path) -> None:
        base = ["unsquashfs", "-o", str(offset), "-n"]
        run = subprocess.run(base + ["-lln", str(image)], capture_output=True)
        if run.returncode != 0:
            raise ValueError(f"unsquashfs cannot list the filesystem: {run.stderr.decode(errors='replace').strip()}")
        self.entries: list[_Entry] = []
        for line in run.stdout.splitlines():
            m = re.match(rb"^([-dlcbps])\S*\s+\S+\s+\S+\s+\S+\s+\S+\s+squashfs-root(/.*)?$", line)
            if not m:
                continue
            name = (m.group(2) or b"").strip(b"/")
            target = None
            if m.group(1) == b"l" and b" -> " in name:
                name, target = name.split(b" -> ", 1)
            kind = {b"d": stat.S_IFDIR, b"l": stat.S_IFLNK, b"-": stat.S_IFREG}.get(m.group(1), stat.S_IFCHR)
            self.entries.append(_Entry(name, kind | 0o644, target, {}, None))
        dest = tmp / "x"
        subprocess.run(base + ["-q", "-d", str(dest), str(image), RELEASE_DIR.decode()],
                       capture_output=True)
        self._dest = dest
        for e in self.entries:
            if e.path.startswith(RELEASE_DIR + b"/"):
                p = dest / e.path.decode(errors="surrogateescape")
                with contextlib.suppress(OSError):  # no xattrs: the strict=0 escape hatch is absent
                    e.xattrs = {n.encode(): os.getxattr(p, n, follow_symlinks=False)
                                for n in os.listxattr(p, follow_symlinks=False)}

    def read(self, entry: _Entry) -> bytes:
        return (self._dest / entry.path.decode(errors="surrogateescape")).read_bytes()


def _content_checks(report: VerifyReport, view: _ErofsView | _SquashfsView, file_name: str,
                    arch: str | None) -> None:
    by_path = {e.path: e for e in view.entries}

    outside = sorted({e.path.split(b"/")[0] for e in view.entries if e.path} - ALLOWED_TOP)
    report.add("content-scope",
               [f"entries outside usr/ and opt/: {', '.join(p.decode(errors='replace') for p in outside)}"]
               if outside else [], "only usr/ and opt/ at the top level")
    report.add("no-os-release",
               ["usr/lib/os-release is present; systemd-sysext refuses extensions carrying it"]
               if b"usr/lib/os-release" in by_path else [], "no usr/lib/os-release")

    names = image_names(file_name)
    releases = {e.path[len(RELEASE_DIR) + 1:]: e for e in view.entries
                if e.path.startswith(RELEASE_DIR + b"/" + RELEASE_PREFIX)
                and b"/" not in e.path[len(RELEASE_DIR) + 1:]}
    accepted: dict[str, bytes] = {}
    for version, name in names.items():
        fn = RELEASE_PREFIX + name.encode()
        if fn in releases:
            accepted[version] = fn
    relaxed = [fn for fn, e in releases.items()
               if stat.S_ISREG(e.mode) and STRICT_XATTR in e.xattrs and _false(e.xattrs[STRICT_XATTR])]
    how = []
    chosen: bytes | None = None
    if accepted:
        chosen = next(iter(accepted.values()))
        how.append("named for systemd " + " and ".join(accepted))
    if len(relaxed) == 1:
        chosen = chosen or relaxed[0]
        how.append("user.extension-release.strict=0 (any name, every version)")
    problems: list[str] = []
    if chosen is None:
        if not releases:
            problems.append(f"no {RELEASE_DIR.decode()}/extension-release.* file")
        else:
            found = ", ".join(sorted(f.decode(errors="replace") for f in releases))
            problems.append(f"{found} does not match the image name: systemd 252 needs "
                            f"extension-release.{names['252']}, systemd >= 255 "
                            f"extension-release.{names['>=255']}, or set the xattr "
                            "user.extension-release.strict=0 on exactly one file")
            if len(relaxed) > 1:
                problems.append("more than one extension-release file has strict=0")
    fields: dict[str, str] = {}
    if chosen is not None:
        entry = releases[chosen]
        hops = 0
        while entry is not None and stat.S_ISLNK(entry.mode) and hops < 8 and entry.target:
            tgt = entry.target
            full = tgt.lstrip(b"/") if tgt.startswith(b"/") else RELEASE_DIR + b"/" + tgt
            entry = by_path.get(os.path.normpath(full.decode(errors="surrogateescape")).encode(
                errors="surrogateescape"))
            hops += 1
        if entry is None or not stat.S_ISREG(entry.mode):
            problems.append(f"{chosen.decode(errors='replace')} is not a regular file inside the image")
        else:
            try:
                fields = parse_os_release(view.read(entry).decode("utf-8"))
            except (UnicodeDecodeError, ValueError) as exc:
                problems.append(f"{chosen.decode(errors='replace')} is not os-release syntax: {exc}")
            else:
                if not fields.get("ID"):
                    problems.append(f"{chosen.decode(errors='replace')} has no ID= (use ID=_any to match every host)")
                declared = fields.get("ARCHITECTURE")
                if declared and arch and declared != arch:
                    problems.append(f"ARCHITECTURE={declared} but the partitions are for {arch}")
    if chosen is not None and not problems and len(accepted) < 2 and len(relaxed) != 1:
        missing = ">=255" if "252" in accepted else "252"
        how.append(f"systemd {missing} would not find it (it wants "
                   f"extension-release.{names[missing]})")
    good = f"{chosen.decode(errors='replace') if chosen else ''}: " + "; ".join(how)
    if fields:
        good += f"; ID={fields.get('ID')}"
    report.add("extension-release", problems, good)


# --- the image ---------------------------------------------------------------------------------


def _load_cert(path: Path) -> x509.Certificate:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise UserError(f"cannot read the certificate {path}: {exc.strerror}") from None
    return load_certificate(raw, path)


def _promised_size(f: BinaryIO) -> int | None:
    """The image size the primary GPT header promises: its backup header sits on the last LBA.

    None when LBA 1 holds no valid header (signature, size and CRC32 as UEFI 5.3.2 has them):
    then nothing says how long the image should be.
    """
    f.seek(gpt.LBA)
    raw = f.read(gpt.LBA)
    if len(raw) < gpt.HEADER_SIZE or raw[:8] != gpt.SIGNATURE:
        return None
    hsize, crc = struct.unpack_from("<II", raw, 12)
    check = bytearray(raw[:hsize])
    check[16:20] = bytes(4)
    if not gpt.HEADER_SIZE <= hsize <= gpt.LBA or zlib.crc32(check) != crc:
        return None
    backup_lba = struct.unpack_from("<Q", raw, 32)[0]
    return (backup_lba + 1) * gpt.LBA if backup_lba > 1 else None


class _CutFile:
    """A file read as if it were ``size`` bytes long: reads past its real end give nothing, and
    never seek there (an offset a corrupt header promises may be beyond what a file can have)."""

    def __init__(self, f: BinaryIO, size: int) -> None:
        self._f, self._end, self._pos = f, size, 0
        self._real = os.fstat(f.fileno()).st_size

    def seek(self, pos: int, whence: int = 0) -> int:
        self._pos = pos if whence == 0 else self._pos + pos if whence == 1 else self._end + pos
        return self._pos

    def read(self, n: int = -1) -> bytes:
        if self._pos >= self._real:
            return b""
        self._f.seek(self._pos)
        data = self._f.read(n)
        self._pos += len(data)
        return data


def _layout(report: VerifyReport, parts: list[gpt.Partition], size: int) -> dict[str, gpt.Partition] | None:
    """Find root, root-verity and root-verity-sig of one architecture, each inside the file's
    ``size`` bytes; record the check (once). None when root and root-verity are not usable."""
    found: dict[str, gpt.Partition] = {}
    arches: set[str] = set()
    problems: list[str] = []
    for p in parts:
        role = None
        for arch, types in gpt.ROOT_TYPES.items():
            if p.type_guid in types:
                role = ("root", "root-verity", "root-verity-sig")[types.index(p.type_guid)]
                arches.add(arch)
                break
        if role is None:
            problems.append(f"partition {p.index + 1} ({p.name!r}) has type {p.type_guid}, "
                            "not a root/verity/signature type")
            continue
        if role in found:
            problems.append(f"more than one {role} partition")
        found[role] = p
        if p.attributes & gpt.ATTR_NO_AUTO:
            problems.append(f"{role} partition has the no-auto flag (bit 63): systemd would ignore it")
        if p.offset + p.size > size:
            problems.append(f"{role} partition {p.name!r} (bytes {p.offset}-{p.offset + p.size - 1}) "
                            f"runs past the end of the file at {size} bytes")
    if len(arches) > 1:
        problems.append(f"partitions for several architectures: {', '.join(sorted(arches))}")
    for role in ("root", "root-verity"):
        if role not in found:
            problems.append(f"no {role} partition")
    if arches:
        report.architecture = sorted(arches)[0]
    report.signed = "root-verity-sig" in found
    roles = ", ".join(found)
    report.add("layout", problems, f"root layout for {report.architecture}: {roles}")
    if "root" not in found or "root-verity" not in found or any(p.offset + p.size > size for p in found.values()):
        return None
    return found


def verify_image(path: Path, cert: Path | None = None) -> VerifyReport:
    """Check a sysext DDI at ``path``; with ``cert`` the signature must be by that certificate."""
    report = VerifyReport(str(path))
    trusted = _load_cert(cert) if cert is not None else None
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed below
    except OSError as exc:
        raise UserError(f"cannot read the image {path}: {exc.strerror}") from None
    with f:
        size = os.fstat(f.fileno()).st_size
        promised = _promised_size(f)
        if promised is not None and size < promised:
            # Cut short: read the primary table as if the file were whole. What that says about
            # the backup (which lived at the missing end) is the truncation itself, said once.
            table = gpt.read_gpt(_CutFile(f, promised), promised)
            problems = [f"truncated at {size} of {promised} bytes (the backup GPT header belongs "
                        f"on LBA {promised // gpt.LBA - 1})"]
            problems += [p for p in table.problems if not p.startswith("backup ")]
        else:
            table = gpt.read_gpt(f, size)
            problems = table.problems
        report.add("gpt", problems,
                   f"protective MBR, both headers and entry arrays valid; {len(table.partitions)} partitions")
        if not table.partitions:
            return report
        found = _layout(report, table.partitions, size)
        if found is None:
            return report
        root, hashp = found["root"], found["root-verity"]

        # The root hash as systemd pairs partitions: the two UUID halves.
        rh = root.part_guid.bytes + hashp.part_guid.bytes
        report.root_hash = rh.hex()
        sig_raw = None
        if "root-verity-sig" in found:
            sp = found["root-verity-sig"]
            if sp.size > pkcs7.MAX_SIG_PARTITION:
                report.add("signature", [f"signature partition is {sp.size} bytes, more than 4 MiB"], "")
            else:
                f.seek(sp.offset)
                sig_raw = f.read(sp.size)
        uuid_problems = []
        if sig_raw is not None:
            try:
                claimed = pkcs7.parse_signature_partition(sig_raw)["rootHash"]
                if claimed != rh.hex():
                    uuid_problems.append(f"partition UUIDs give root hash {rh.hex()}, the signature "
                                         f"partition says {claimed}")
            except ValueError:
                pass  # reported by the signature check
        report.add("partition-uuids", uuid_problems,
                   f"root {uuid.UUID(bytes=rh[:16])} and verity {uuid.UUID(bytes=rh[16:])} are the root hash halves")

        report.add("verity", verity.verify_tree(f, root.offset, root.size, f, hashp.offset, rh),
                   f"hash tree recomputed from {root.size} data bytes matches", root_hash=rh.hex())

        if sig_raw is not None:
            problems = pkcs7.check_signature(sig_raw, rh, trusted)
            good = ("signed by the given certificate" if trusted is not None else
                    "signature valid for its embedded certificate; trust NOT checked (no certificate given)")
            report.add("signature", problems, good)
        elif trusted is not None:
            report.add("signature", ["image has no root-verity-sig partition, but a certificate was given"], "")
        else:
            report.add("signature", [], "unsigned image (no root-verity-sig partition)")

        f.seek(root.offset)
        head = f.read(4096)
        if head[:4] == SQUASHFS_MAGIC:
            report.filesystem = "squashfs"
            if shutil.which("unsquashfs") is None:
                report.add("content", ["content not checked: unsquashfs missing (Debian package squashfs-tools)"], "")
                return report
            with private_tempdir() as tmp:
                try:
                    view: _ErofsView | _SquashfsView = _SquashfsView(path, root.offset, tmp)
                except ValueError as exc:
                    report.add("filesystem", [str(exc)], "")
                    return report
                report.add("filesystem", [], "squashfs")
                _content_checks(report, view, path.name, report.architecture)
        elif int.from_bytes(head[erofs.SUPER_OFFSET:erofs.SUPER_OFFSET + 4], "little") == erofs.MAGIC:
            report.filesystem = "erofs"
            try:
                view = _ErofsView(f, root.offset)
            except ValueError as exc:
                report.add("filesystem", [str(exc)], "")
                return report
            report.add("filesystem", [], "erofs")
            _content_checks(report, view, path.name, report.architecture)
        else:
            report.add("filesystem", ["root partition holds neither EROFS nor squashfs"], "")
    return report


def verify_uki(path: Path, cert: Path | None = None) -> VerifyReport:
    """Independent checks of a built UKI: PE structure (and that the file is whole), required
    sections, Authenticode (with ``cert``: by that certificate; without: valid for its own
    embedded certificate, trust not checked).

    Each check appears at most once. A damaged or cut file gives failed checks, never a
    UserError: that is kept for a certificate or file that cannot be read at all.
    """
    trusted = None
    if cert is not None:
        try:
            trusted = load_certificate(cert.read_bytes(), cert)
        except OSError as exc:
            raise UserError(f"cannot read the certificate {cert}: {exc.strerror}") from None
    report = VerifyReport(str(path), kind="uki")
    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            promised = promised_size(fh)  # from the headers and section table, read leniently
            if promised is not None and size < promised:
                report.checks.append(Check("pe", False, f"truncated at {size} of {promised} bytes"))
                return report
            pe = parse_pe(fh, str(path))
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror}") from None
    except UserError as exc:  # not a PE at all, or headers that contradict the file
        report.checks.append(Check("pe", False, str(exc)))
        return report
    names = [s.name for s in pe.sections]
    missing = [n for n in (".linux", ".initrd", ".osrel", ".cmdline") if n not in names]
    report.checks.append(Check("pe", True, f"{len(names)} sections, {size} bytes"))
    report.checks.append(Check("sections", not missing, "missing " + ", ".join(missing) if missing else ", ".join(names)))
    if not pe.security[1]:
        report.checks.append(Check("signature", cert is None, "unsigned (no certificate table)" if cert is None else
                                   "not signed (no certificate table), but a certificate was given"))
        return report
    report.signed = True
    problems = verify_authenticode(path, trusted)
    if problems:
        detail = "; ".join(problems)
    elif cert is not None:
        detail = f"Authenticode signature by {cert.name} verified"
    else:
        detail = "Authenticode signature valid for its embedded certificate; trust NOT checked (no certificate given)"
    report.checks.append(Check("signature", not problems, detail))
    return report


def verify_artefact(path: Path, cert: Path | None = None) -> VerifyReport:
    """Verify a UKI or a sysext image, told apart by their first bytes (a PE file starts "MZ")."""
    try:
        with open(path, "rb") as fh:
            is_pe = fh.read(2) == b"MZ"
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror}") from None
    return verify_uki(path, cert) if is_pe else verify_image(path, cert)
