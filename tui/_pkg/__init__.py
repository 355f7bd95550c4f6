"""Sysextant: carve signed systemd system extensions out of an OS image.

The engine is :mod:`sysextant.core`; the front ends (command line and Textual
workbench) are :mod:`sysextant.tui`.
"""

__version__ = "0.1.0"
