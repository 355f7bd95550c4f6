"""Run a test function as an unprivileged user, so permission checks are real even when the
suite runs as root (as it does in CI)."""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable
from typing import Any

NOBODY = 65534


class RaisedInChild(Exception):
    """``fn`` raised in the child: ``kind`` is the exception's class name, ``str()`` its message."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(f"{kind}: {message}")
        self.kind = kind


def run_unprivileged(fn: Callable[..., Any], *args: Any) -> Any:
    """Call ``fn(*args)`` in a forked child that drops to nobody when root; return its result, or
    raise :class:`RaisedInChild` naming the exception it raised."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(read_fd)
            if os.geteuid() == 0:
                os.setgroups([])
                os.setgid(NOBODY)
                os.setuid(NOBODY)
            try:
                payload = ("ok", fn(*args))
            except BaseException as exc:  # sent back to the parent as text
                payload = ("err", (type(exc).__name__, str(exc)))
            with os.fdopen(write_fd, "wb") as fh:
                pickle.dump(payload, fh)
        finally:
            os._exit(0)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as fh:
        data = fh.read()
    os.waitpid(pid, 0)
    kind, value = pickle.loads(data)
    if kind == "err":
        raise RaisedInChild(*value)
    return value
