"""Outputs that appear whole or not at all.

Every artefact is written to a hidden temp file beside its destination (same filesystem, so the
final ``rename`` is atomic), flushed, then renamed into place. A failure or Ctrl-C removes the
temp file, so a previous good output stays untouched and no partial file is ever visible.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from .errors import UserError

TEMP_PREFIX = ".sysextant-tmp-"


def temp_prefix(kind: str = "") -> str:
    """The name prefix of this process's temp files: ``.sysextant-tmp-PID-[KIND-]``. The pid lets
    the next build remove what a killed one left (:func:`stale_temps`) without touching the temps
    of a build still running."""
    return f"{TEMP_PREFIX}{os.getpid()}-{kind + '-' if kind else ''}"


def _owner_alive(name: str) -> bool | None:
    """Whether the process that made temp file ``name`` still runs; None for a name without a pid."""
    pid_text = name[len(TEMP_PREFIX):].split("-", 1)[0]
    if not pid_text.isdigit():
        return None
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def stale_temps(folder: Path, *, older_than: float = 3600) -> list[Path]:
    """Temp files in ``folder`` whose build is gone: their process no longer runs, or (a name
    from before pids were recorded) they are older than ``older_than`` seconds."""
    import time

    found = []
    limit = time.time() - older_than
    with contextlib.suppress(OSError):
        for p in folder.glob(f"{TEMP_PREFIX}*"):
            alive = _owner_alive(p.name)
            with contextlib.suppress(OSError):
                if alive is False or (alive is None and p.lstat().st_mtime < limit):
                    found.append(p)
    return found
#: errors that mean the output could not be written (not a problem with the inputs)
WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS)


def disk_error(path: Path, exc: OSError) -> UserError:
    """The one-line error for a failed write of ``path`` (full disk, read-only, no permission)."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return UserError(f"no space left on the device while writing {path}; free some space and build again")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return UserError(f"cannot write {path}: {exc.strerror}")
    return UserError(f"writing {path} failed: {exc.strerror or exc}")


def folder_error(folder: Path, exc: OSError, what: Path | None = None, *, label: str = "folder") -> UserError:
    """The one-line error for a folder that cannot be created or written into (read-only, no
    permission, a file in the way), naming the folder (``label``: "output folder" for the build's),
    the reason and the file that was to go there."""
    to_write = f" (to write {what.name})" if what is not None else ""
    if exc.errno in (errno.EEXIST, errno.ENOTDIR):
        blocker = next((p for p in (folder, *folder.parents) if p.exists() and not p.is_dir()), folder)
        return UserError(f"cannot create the {label} {folder}{to_write}: {blocker} is a file, not a folder")
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return UserError(f"no space left on the device for the {label} {folder}{to_write}; free some space")
    reason = {errno.EROFS: "it is on a read-only file system",
              errno.EACCES: "permission denied", errno.EPERM: "permission denied"}.get(exc.errno)
    return UserError(f"cannot write into the {label} {folder}{to_write}: {reason or exc.strerror or exc}")


def ensure_folder(folder: Path, what: Path | None = None, *, label: str = "output folder") -> Path:
    """Create ``folder`` and its parents if missing; :func:`folder_error` when that fails. ``what``
    is the file about to be written there, for the message. The build's ``out.mkdir`` belongs here."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise folder_error(folder, exc, what, label=label) from None
    return folder


def _mkstemp(final: Path, prefix: str, label: str) -> tuple[int, str]:
    """A 0600 temp file beside ``final``, its folder created first; a folder that cannot take it
    (read-only, no permission) is one clear error naming the folder, not an OSError."""
    ensure_folder(final.parent, final, label=label)
    try:
        return tempfile.mkstemp(prefix=prefix, dir=final.parent)
    except OSError as exc:
        raise folder_error(final.parent, exc, final, label=label) from None


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike[str], mode: int = 0o644) -> Iterator[BinaryIO]:
    """Open a temp file for writing; on success it becomes ``path`` with ``mode``.

    The temp file is created 0600 (it may hold signatures or half an image), and removed on any
    exception, including KeyboardInterrupt.
    """
    dest = Path(path)
    fd, tmp = _mkstemp(dest, temp_prefix(), "folder")
    try:
        with os.fdopen(fd, "w+b") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, dest)
    except OSError as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise disk_error(dest, exc) from exc
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_atomic(path: str | os.PathLike[str], data: bytes, mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_output(path, mode) as fh:
        fh.write(data)


@contextlib.contextmanager
def scratch_for(final: Path, kind: str) -> Iterator[Path]:
    """A 0600 temp file beside ``final`` for an intermediate of it (a filesystem image, an
    initrd), removed afterwards whatever happens; a write error on the way (a full disk, a
    read-only folder) becomes one clear error naming ``final``."""
    fd, tmp = _mkstemp(final, temp_prefix(kind), "output folder")
    os.close(fd)
    try:
        yield Path(tmp)
    except OSError as exc:
        if exc.errno in WRITE_ERRNOS:
            raise disk_error(final, exc) from exc
        raise
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


@contextlib.contextmanager
def private_tempdir(prefix: str = "sysextant-") -> Iterator[Path]:
    """A 0700 scratch directory removed afterwards, for anything that must not be world-readable."""
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        os.chmod(tmp, 0o700)
        yield Path(tmp)
