"""Shared by every test folder: the helper modules of tests/helpers/ import by name (``from kernel
import real_kernel``) from any folder, and the asyncio backend the Textual pilot tests run on.

Test folders have no ``__init__.py`` (pytest's default prepend import mode), so test file names
stay unique across folders."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

HELPERS = Path(__file__).resolve().parent / "helpers"
if str(HELPERS) not in sys.path:
    sys.path.insert(0, str(HELPERS))


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
