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
#: errors that mean the output could not be written (not a problem with the inputs)
WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS)


def disk_error(path: Path, exc: OSError) -> UserError:
    """The one-line error for a failed write of ``path`` (full disk, read-only, no permission)."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return UserError(f"no space left on the device while writing {path}; free some space and build again")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return UserError(f"cannot write {path}: {exc.strerror}")
    return UserError(f"writing {path} failed: {exc.strerror or exc}")


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike[str], mode: int = 0o644) -> Iterator[BinaryIO]:
    """Open a temp file for writing; on success it becomes ``path`` with ``mode``.

    The temp file is created 0600 (it may hold signatures or half an image), and removed on any
    exception, including KeyboardInterrupt.
    """
    dest = Path(path)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX, dir=dest.parent)
    except OSError as exc:
        raise disk_error(dest, exc) from exc
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
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f"{TEMP_PREFIX}{kind}-", dir=final.parent)
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
