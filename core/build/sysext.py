"""One system extension image: the selected files, its release file, a filesystem, a signed DDI.

The image holds the extension's selection from the OS tree (only under ``usr/`` and ``opt/``),
the folders leading to it, and ``usr/lib/extension-release.d/extension-release.NAME`` written
from the spec's ``release`` fields. That file carries the xattr
``user.extension-release.strict=0``: systemd >= 255 matches ``NAME.sysext.raw`` to
``extension-release.NAME`` directly, and systemd 252 (which would want
``extension-release.NAME.sysext``) accepts the single marked file instead. Measured with
systemd-sysext 252 merges; the rules are in :mod:`..rules`.

The filesystem comes from the built-in EROFS writer (uncompressed), ``mkfs.erofs`` (EROFS with
compression) or ``mksquashfs``; :func:`sysextant.core.formats.ddi.assemble` then adds dm-verity and the
signature. Salt, UUIDs and timestamps derive from the inputs and ``SOURCE_DATE_EPOCH``, so the
same selection gives the same bytes.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from .. import rules
from ..atomic import scratch_for
from ..errors import UserError
from ..formats import ddi
from ..keys import Signer
from ..progress import Reporter
from ..sizing.plan import ExtensionPlan
from ..spec.model import ExtensionSpec
from ..tree.fsentry import FsEntry, entry_from_lstat
from ..tree.index import TreeIndex
from ..tree.selection import with_ancestors

RELEASE_DIR = rules.RELEASE_DIR.encode()
STRICT_XATTR = rules.STRICT_XATTR
FORMAT_VERSION = "sysextant-sysext-1"  # bump when the image layout changes, to invalidate reuse


def source_date_epoch() -> int:
    """``SOURCE_DATE_EPOCH`` as an int (0 when unset); a bad value is a user error."""
    raw = os.environ.get("SOURCE_DATE_EPOCH", "0").strip() or "0"
    if not raw.isdigit():
        raise UserError(f"SOURCE_DATE_EPOCH={raw!r} is not a number of seconds")
    return int(raw)


_SAFE = re.compile(r"^[A-Za-z0-9_.:/+@%-]*$")


def release_text(ext: ExtensionSpec) -> bytes:
    """The extension-release file in os-release syntax (values quoted where needed)."""
    fields = dict(ext.release)
    fields.setdefault("ID", "_any")
    fields.setdefault("IMAGE_ID", ext.name)
    fields.setdefault("IMAGE_VERSION", ext.version)
    lines = []
    for key, value in fields.items():
        value = str(value)
        if not _SAFE.match(value):
            value = '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$").replace("`", "\\`") + '"'
        lines.append(f"{key}={value}")
    return ("\n".join(lines) + "\n").encode()


def _synth_dir(path: bytes) -> FsEntry:
    return FsEntry(path=path, mode=stat.S_IFDIR | 0o755)


def collect_entries(index: TreeIndex, plan: ExtensionPlan, ext: ExtensionSpec) -> list[FsEntry]:
    """Everything the image holds, sorted by path: the selection, its parent folders (with the
    tree's metadata) and the release file. Reads metadata with lstat only."""
    root = index.root
    wanted: dict[bytes, None] = {}
    # every folder above what it holds: a selection made of files (extensions[].packages, a
    # derived image's additions) has no mark above them; an image needs their parents too
    for i in with_ancestors(index, plan.selected).indices():
        wanted[index.path(i)] = None
    for i in plan.marks:
        for a in index.ancestors(i):
            if a:
                wanted[index.path(a)] = None
    entries: dict[bytes, FsEntry] = {}
    for rel in wanted:
        host = os.path.join(root, rel)
        try:
            st = os.lstat(host)
        except OSError as exc:
            raise UserError(f"{os.fsdecode(host)} vanished or became unreadable while building "
                            f"extension {ext.name} ({exc.strerror}); rescan and build again") from None
        entries[rel] = entry_from_lstat(root, rel, st)
    for anc in (b"usr", b"usr/lib", RELEASE_DIR):
        if anc not in entries:
            entries[anc] = _synth_dir(anc)
    release_path = rules.release_path(ext.name).encode()
    data = release_text(ext)
    entries[release_path] = FsEntry(path=release_path, mode=stat.S_IFREG | 0o644, size=len(data), data=data,
                                    xattrs={STRICT_XATTR: b"0"})
    return [entries[k] for k in sorted(entries)]


def inputs_digest(ext: ExtensionSpec, entries: list[FsEntry], *, with_times: bool) -> bytes:
    """A digest of everything that decides the image bytes. ``with_times`` adds the tree's own
    mtimes, inodes and ctimes (for recognising an unchanged extension between builds)."""
    h = hashlib.sha256()
    h.update(repr((FORMAT_VERSION, ext.name, ext.version, ext.filesystem, ext.compression,
                   sorted(ext.release.items()), source_date_epoch())).encode())
    for e in entries:
        h.update(repr((e.path, e.mode, e.uid, e.gid, e.size, e.rdev, e.target, sorted(e.xattrs.items()),
                       e.data, e.link_id is not None)).encode())
        if with_times:
            h.update(f"{e.mtime}:{e.stamp[0]}:{e.stamp[1]}".encode())
    return h.digest()


@dataclass
class ExtensionImage:
    name: str
    path: Path
    size: int
    root_hash: str
    signed: bool
    filesystem: str
    entries: int


def write_filesystem(ext: ExtensionSpec, entries: list[FsEntry], out_path: Path, *, tree_root: bytes,
                     seed: bytes, mtime: int, reporter: Reporter | None) -> int:
    """Write the extension's filesystem image to ``out_path``; returns its size."""
    task = f"{ext.name}: pack"
    fs_uuid = hashlib.sha256(b"fs-uuid" + seed).digest()[:16]
    if ext.filesystem == "erofs" and ext.compression == "none":
        from ..formats.erofs import write_image

        with open(out_path, "wb") as fh:
            return write_image(entries, fh, tree_root=tree_root, uuid=fs_uuid, mtime=mtime, reporter=reporter,
                               task=task)
    from ..formats.mkfs import write_erofs_tool, write_squashfs

    if ext.filesystem == "erofs":
        return write_erofs_tool(entries, out_path, tree_root=tree_root, compression=ext.compression,
                                uuid=fs_uuid, mtime=mtime, reporter=reporter, task=task)
    if ext.filesystem == "squashfs":
        return write_squashfs(entries, out_path, tree_root=tree_root, compression=ext.compression, mtime=mtime,
                              reporter=reporter, task=task)
    raise UserError(f"extension {ext.name}: unknown filesystem {ext.filesystem!r}")


def build_extension(index: TreeIndex, plan: ExtensionPlan, ext: ExtensionSpec, out_dir: Path, *,
                    signer: Signer | None, reporter: Reporter | None = None,
                    entries: list[FsEntry] | None = None) -> ExtensionImage:
    """Build ``out_dir/NAME.sysext.raw``; it appears atomically, or not at all."""
    if entries is None:
        entries = collect_entries(index, plan, ext)
    for e in entries:
        if e.path == b"usr/lib/os-release":
            raise UserError(f"extension {ext.name} would hold usr/lib/os-release, which systemd-sysext refuses")
    mtime = source_date_epoch()
    seed = inputs_digest(ext, entries, with_times=False)
    final = out_dir / ext.image_name
    with scratch_for(final, "fs") as fs_image:
        write_filesystem(ext, entries, fs_image, tree_root=index.root, seed=seed, mtime=mtime, reporter=reporter)
        result = ddi.assemble(fs_image, final, arch=ext.architecture, signer=signer, seed=seed,
                              reporter=reporter, task=ext.name)
    return ExtensionImage(ext.name, final, result.size, result.root_hash, result.signed, ext.filesystem,
                          len(entries))
