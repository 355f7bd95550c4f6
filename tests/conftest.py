"""Fixtures shared by the test files: the asyncio backend the Textual pilot tests run on."""

from __future__ import annotations

import pytest


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
