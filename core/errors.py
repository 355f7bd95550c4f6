"""The one error type a user can meet: a clear sentence naming what and where.

Front ends print ``str(err)`` and exit non-zero; they never show a traceback for these.
Anything else escaping the engine is a bug and is allowed to surface.
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input or environment the user can fix (a file, a field, a missing tool)."""


class Cancelled(Exception):
    """The user asked to stop (Esc in the workbench, Ctrl-C on the command line)."""


class MissingToolError(UserError):
    """An external program is needed and not installed; names the Debian package."""

    def __init__(self, tool: str, package: str, why: str) -> None:
        super().__init__(f"{tool} is not installed (needed {why}); install the Debian package {package!r}")
        self.tool = tool
        self.package = package
