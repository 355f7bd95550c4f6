"""The ``sysextant`` command's entry point, and the guard it runs before anything else.

Loading the program takes a few tenths of a second. A stop signal in that window (Ctrl-C as the
command starts, a service manager's SIGTERM, a closed terminal) arrives before the CLI has put
its own handlers in place (:func:`sysextant.tui.cli._handle_stop_signals`), and Python would end
it with a ``KeyboardInterrupt`` traceback from inside some import. Nothing has been read or
written yet at that point, so the guard ends the process at once with the CLI's own one line and
exit code. The CLI replaces the guard with its handlers as its first step.
"""

from __future__ import annotations

import os
import signal


def stopped(signum: int | None) -> tuple[str, int]:
    """The line and exit code of a command a stop signal ended (None: cancelled, as Ctrl-C)."""
    if signum is None or signum == signal.SIGINT:
        return "sysextant: cancelled; no partial output was left behind", 130
    return f"sysextant: stopped by {signal.Signals(signum).name}; no partial output was left behind", 128 + signum


def _stop_while_starting(signum: int, _frame: object) -> None:
    line, code = stopped(signum)
    os.write(2, line.encode() + b"\n")
    os._exit(code)


def guard_startup() -> None:
    """Until the CLI installs its handlers: a stop signal ends the process with one line."""
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _stop_while_starting)


def main() -> int:
    guard_startup()
    from sysextant.tui.cli import main as cli_main

    return cli_main()
