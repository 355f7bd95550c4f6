"""Filesystem images made by the external tools: ``mksquashfs`` and ``mkfs.erofs``.

Both tools pack a directory, so the entries are first staged into a private (0700) temp
directory: content copied through ``O_NOFOLLOW`` reads, symlinks, hardlinks, device nodes, fifos
and sockets recreated, then ownership (``os.lchown``), modes, xattrs and a fixed mtime applied.
References: squashfs-tools 4.5.1 ``mksquashfs -help`` (``-reproducible``, ``-mkfs-time``,
``-all-time``, pseudo definitions ``-pf``) and erofs-utils 1.5 ``mkfs.erofs --help`` (``-T``,
``-U``, ``-z``).

Ownership without root: ``lchown`` to a foreign uid fails, so for squashfs the owner, mode and
device nodes are given to mksquashfs as pseudo definitions instead (names with a newline, a
double quote or a backslash cannot be written there and are refused with a clear error);
mkfs.erofs has no such mechanism, so a non-root build that would lose ownership is refused.
The tool is run as a child that is terminated when the build is cancelled or interrupted.

See docs/formats.md, sections 3 (EROFS) and 4 (squashfs).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import subprocess
import uuid as uuidlib
from collections.abc import Iterable
from pathlib import Path

from ..atomic import private_tempdir
from ..errors import MissingToolError, UserError
from ..progress import Reporter
from ..spec.model import FS_COMPRESSIONS
from ..tree.fsentry import FsEntry, open_entry

SQUASHFS_COMPRESSIONS = FS_COMPRESSIONS["squashfs"]  # one list for the spec checker and the packers
EROFS_COMPRESSIONS = FS_COMPRESSIONS["erofs"]
_CHUNK = 1 << 20
_POLL = 0.1


def _show(path: bytes) -> str:
    return "/" + path.decode(errors="replace")


def _copy(src: int, dst: int, count: int, what: bytes) -> None:
    offset = 0
    with contextlib.suppress(OSError):
        while offset < count:
            n = os.copy_file_range(src, dst, count - offset, offset, offset)
            if n == 0:
                break
            offset += n
    while offset < count:
        data = os.pread(src, min(_CHUNK, count - offset), offset)
        if not data:
            raise UserError(f"{_show(what)} became shorter while it was packed; build again")
        os.pwrite(dst, data, offset)
        offset += len(data)


class _Stage:
    """Recreates entries below ``root``; collects what only pseudo definitions can express."""

    def __init__(self, root: Path, tree_root: bytes, *, pseudo_ok: bool, tool: str) -> None:
        self.root = os.fsencode(root)
        self.tree_root = tree_root
        self.pseudo_ok = pseudo_ok
        self.tool = tool
        self.is_root = os.geteuid() == 0
        self.links: dict[tuple[int, int], bytes] = {}
        self.pseudo: list[str] = []
        self.dirs: list[FsEntry] = []
        self.all: list[tuple[bytes, bool]] = []  # (host path, is symlink) for the final utime

    def host(self, entry: FsEntry) -> bytes:
        rel = entry.path.strip(b"/")
        if rel and (b"\0" in rel or any(p in (b"", b".", b"..") for p in rel.split(b"/"))):
            raise ValueError(f"invalid entry path {entry.path!r}")
        return os.path.join(self.root, rel) if rel else self.root

    def _pseudo_line(self, entry: FsEntry, rest: str) -> None:
        name = entry.path.strip(b"/") or b"/"
        if any(c in name for c in (b"\n", b'"', b"\\")):
            raise UserError(
                f"{_show(entry.path)}: ownership or a device node needs root for {self.tool} with this "
                "name (it cannot be written as a mksquashfs pseudo definition); build as root"
            )
        self.pseudo.append(f'"{name.decode("utf-8", "surrogateescape")}" {rest}')

    def owner(self, entry: FsEntry, path: bytes) -> None:
        try:
            os.lchown(path, entry.uid, entry.gid)
            return
        except PermissionError:
            if not self.pseudo_ok:
                raise UserError(
                    f"{_show(entry.path)} is owned by {entry.uid}:{entry.gid}, which {self.tool} can "
                    "keep only when the build runs as root; build as root or use the built-in EROFS "
                    "writer (compression none)"
                ) from None
        mode = 0o777 if stat.S_ISLNK(entry.mode) else stat.S_IMODE(entry.mode)
        self._pseudo_line(entry, f"m {mode:o} {entry.uid} {entry.gid}")

    def xattrs(self, entry: FsEntry, path: bytes) -> None:
        for name, value in sorted(entry.xattrs.items()):
            try:
                os.setxattr(path, name, value, follow_symlinks=False)
            except OSError as exc:
                raise UserError(
                    f"cannot keep extended attribute {name.decode(errors='replace')!r} of "
                    f"{_show(entry.path)} while staging for {self.tool}: {exc.strerror}"
                    + ("" if self.is_root else "; build as root")
                ) from exc

    def add(self, entry: FsEntry) -> int:
        """Stage one entry; returns the content bytes copied."""
        path = self.host(entry)
        fmt = stat.S_IFMT(entry.mode)
        copied = 0
        if fmt == stat.S_IFDIR:
            if path != self.root:
                os.mkdir(path, 0o700)
            self.dirs.append(entry)
            self.all.append((path, False))
            return 0
        if fmt == stat.S_IFREG and entry.link_id is not None and entry.link_id in self.links:
            os.link(self.links[entry.link_id], path)
            return 0
        if fmt == stat.S_IFREG:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            try:
                if entry.data is not None:
                    os.write(fd, entry.data)
                    copied = len(entry.data)
                elif entry.size:
                    src = open_entry(self.tree_root, entry)
                    try:
                        st = os.fstat(src)
                        if not stat.S_ISREG(st.st_mode) or st.st_size != entry.size:
                            raise UserError(f"{_show(entry.path)} changed since the tree was scanned; build again")
                        _copy(src, fd, entry.size, entry.path)
                    finally:
                        os.close(src)
                    copied = entry.size
            finally:
                os.close(fd)
            if entry.link_id is not None:
                self.links[entry.link_id] = path
        elif fmt == stat.S_IFLNK:
            if not entry.target:
                raise UserError(f"symlink {_show(entry.path)} has no target")
            os.symlink(entry.target, path)
        elif fmt in (stat.S_IFCHR, stat.S_IFBLK):
            try:
                os.mknod(path, fmt | 0o600, entry.rdev)
            except PermissionError:
                if not self.pseudo_ok:
                    raise UserError(f"{_show(entry.path)} is a device node, which {self.tool} can keep only when the build runs as root") from None
                kind = "c" if fmt == stat.S_IFCHR else "b"
                self._pseudo_line(entry, f"{kind} {stat.S_IMODE(entry.mode):o} {entry.uid} {entry.gid} "
                                         f"{os.major(entry.rdev)} {os.minor(entry.rdev)}")
                return 0
        elif fmt in (stat.S_IFIFO, stat.S_IFSOCK):
            os.mknod(path, fmt | 0o600)
        else:
            raise ValueError(f"entry {entry.path!r} has an unknown file type {entry.mode:o}")
        self.owner(entry, path)
        if fmt != stat.S_IFLNK:
            os.chmod(path, stat.S_IMODE(entry.mode))
        self.xattrs(entry, path)
        self.all.append((path, fmt == stat.S_IFLNK))
        return copied

    def finish(self, mtime: int, has_root: bool) -> None:
        """Directory attributes (children first) and every timestamp."""
        if not has_root:
            if self.is_root:
                os.chown(self.root, 0, 0)
            elif self.pseudo_ok:
                self.pseudo.append('"/" m 755 0 0')
            else:
                raise UserError(f"the image root must be owned by root, which {self.tool} can keep only when the build runs as root")
            os.chmod(self.root, 0o755)
        for entry in reversed(self.dirs):
            path = self.host(entry)
            self.owner(entry, path)
            os.chmod(path, stat.S_IMODE(entry.mode))
            self.xattrs(entry, path)
        for path, is_link in reversed(self.all):
            os.utime(path, (mtime, mtime), follow_symlinks=not is_link)


def _stage(entries: Iterable[FsEntry], stage: _Stage, mtime: int, reporter: Reporter | None, task: str) -> None:
    entries = list(entries)
    total = sum(len(e.data) if e.data is not None else e.size for e in entries if e.is_reg)
    done = 0
    has_root = False
    if reporter is not None:
        reporter(f"{task}: stage", 0, total, "bytes")
    for entry in entries:
        if not entry.path.strip(b"/"):
            if not entry.is_dir:
                raise ValueError("the root entry must be a directory")
            has_root = True
        done += stage.add(entry)
        if reporter is not None:
            reporter(f"{task}: stage", done, total, "bytes")
    stage.finish(mtime, has_root)


def _run(cmd: list[str], out_path: Path, log: Path, reporter: Reporter | None, task: str) -> None:
    """Run ``cmd``; terminate it on cancellation, Ctrl-C or any error; raise on failure.

    The tool gets every timestamp on its command line (already taken from ``SOURCE_DATE_EPOCH``),
    so the variable itself is withheld: mksquashfs refuses to run when both are given."""
    env = {k: v for k, v in os.environ.items() if k != "SOURCE_DATE_EPOCH"}
    with open(log, "wb") as logf:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT, env=env)
    try:
        if reporter is not None:
            reporter.log(task, " ".join(cmd))
        while True:
            try:
                rc = proc.wait(timeout=_POLL)
                break
            except subprocess.TimeoutExpired:
                if reporter is not None:
                    reporter.check()
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    if rc != 0:
        tail = log.read_bytes()[-2000:].decode(errors="replace").strip()
        raise UserError(f"{cmd[0]} failed (exit {rc}) building {out_path}: {tail}")


def find_tool(name: str, package: str, why: str) -> str:
    """The path of tool ``name`` (PATH, then the sbin folders a non-login shell may lack), or
    :class:`MissingToolError` naming the Debian ``package``."""
    path = shutil.which(name)
    if path is None:
        for d in ("/usr/sbin", "/sbin", "/usr/bin"):
            cand = os.path.join(d, name)
            if os.access(cand, os.X_OK):
                return cand
        raise MissingToolError(name, package, why)
    return path


def _build(
    entries: Iterable[FsEntry], out_path: Path, tree_root: bytes, mtime: int,
    reporter: Reporter | None, task: str, tool: str, pseudo_ok: bool, make_cmd,
) -> int:
    out_path = Path(out_path)
    if not 0 <= mtime < 1 << 32:
        raise UserError(f"timestamp {mtime} (SOURCE_DATE_EPOCH) is out of range for {tool}")
    try:
        with private_tempdir("sysextant-stage-") as tmp:
            root = tmp / "root"
            root.mkdir(mode=0o700)
            stage = _Stage(root, tree_root, pseudo_ok=pseudo_ok, tool=tool)
            _stage(entries, stage, mtime, reporter, task)
            pseudo = None
            if stage.pseudo:
                pseudo = tmp / "pseudo"
                pseudo.write_text("\n".join(stage.pseudo) + "\n", encoding="utf-8", errors="surrogateescape")
            with contextlib.suppress(FileNotFoundError):
                out_path.unlink()
            _run(make_cmd(os.fspath(root), pseudo), out_path, tmp / "log", reporter, task)
        size = out_path.stat().st_size
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            out_path.unlink()
        raise
    if reporter is not None:
        reporter(task, size, size, "bytes")
    return size


def write_squashfs(
    entries: Iterable[FsEntry], out_path: Path, *, tree_root: bytes, compression: str,
    mtime: int = 0, reporter: Reporter | None = None, task: str = "pack",
) -> int:
    """Build a squashfs image of ``entries`` at ``out_path`` with mksquashfs; returns its size.

    Reproducible (``-reproducible``, every time set to ``mtime``); ownership and xattrs kept.
    """
    if compression not in SQUASHFS_COMPRESSIONS:
        raise UserError(f"squashfs compression {compression!r} is not one of {', '.join(SQUASHFS_COMPRESSIONS)}")
    exe = find_tool("mksquashfs", "squashfs-tools", "for squashfs extension images")

    def cmd(src: str, pseudo: Path | None) -> list[str]:
        args = [exe, src, os.fspath(out_path), "-noappend", "-reproducible", "-quiet", "-no-progress",
                "-mkfs-time", str(mtime), "-all-time", str(mtime), "-xattrs"]
        args += ["-noI", "-noD", "-noF", "-noX"] if compression == "none" else ["-comp", compression]
        if pseudo is not None:
            args += ["-pf", os.fspath(pseudo)]
        return args

    return _build(entries, out_path, tree_root, mtime, reporter, task, "mksquashfs", True, cmd)


def write_erofs_tool(
    entries: Iterable[FsEntry], out_path: Path, *, tree_root: bytes, compression: str, uuid: bytes,
    mtime: int = 0, reporter: Reporter | None = None, task: str = "pack",
) -> int:
    """Build an EROFS image of ``entries`` at ``out_path`` with mkfs.erofs; returns its size.

    ``compression`` is ``none``, ``lz4`` or ``lz4hc`` (erofs-utils 1.5); timestamps ``-T mtime``,
    UUID fixed, ownership and xattrs kept (no ``--all-root``).
    """
    if compression not in EROFS_COMPRESSIONS:
        raise UserError(f"EROFS compression {compression!r} is not one of {', '.join(EROFS_COMPRESSIONS)}")
    if len(uuid) != 16:
        raise ValueError("the EROFS UUID must be 16 bytes")
    exe = find_tool("mkfs.erofs", "erofs-utils", "for EROFS extension images")

    def cmd(src: str, pseudo: Path | None) -> list[str]:
        assert pseudo is None
        args = [exe, "--quiet", f"-T{mtime}", "-U", str(uuidlib.UUID(bytes=uuid))]
        if compression != "none":
            args.append(f"-z{compression}")
        return [*args, os.fspath(out_path), src]

    return _build(entries, out_path, tree_root, mtime, reporter, task, "mkfs.erofs", False, cmd)

