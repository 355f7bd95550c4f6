"""A real Linux kernel (x86-64 bzImage) for the UKI tests.

Looks at $SYSEXTANT_TEST_KERNEL, then ~/.cache/sysextant/vmlinuz; if neither exists it runs
.ci/fetch-kernel (apt-get download of Debian's linux-image-cloud-amd64) once. Tests skip with the
reason when no kernel can be had (no apt, no network).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from paths import REPO

FETCH = REPO / ".ci" / "fetch-kernel"
CACHE = Path.home() / ".cache" / "sysextant" / "vmlinuz"


def find_kernel() -> Path | None:
    """The path of a real vmlinuz, fetching it into the cache if possible; None otherwise."""
    env = os.environ.get("SYSEXTANT_TEST_KERNEL")
    if env:
        return Path(env) if Path(env).is_file() else None
    if not CACHE.is_file() and FETCH.is_file() and shutil.which("apt-get"):
        subprocess.run([str(FETCH), str(CACHE.parent)], capture_output=True, timeout=600, check=False)
    return CACHE if CACHE.is_file() else None


def real_kernel() -> Path:
    """A real vmlinuz, or skip the calling test with the reason."""
    kernel = find_kernel()
    if kernel is None:
        pytest.skip("no real kernel: set SYSEXTANT_TEST_KERNEL=/path/to/vmlinuz or run "
                    f".ci/fetch-kernel {CACHE.parent} (needs apt-get and network)")
    return kernel


def real_modules() -> tuple[Path, str]:
    """(a folder holding lib/modules/RELEASE with depmod's index files, RELEASE) of a real Debian
    kernel, fetched with the kernel by .ci/fetch-kernel; or skip the calling test with the reason."""
    base = CACHE.parent / "modules"
    if not (base / "lib/modules").is_dir() and FETCH.is_file() and shutil.which("apt-get"):
        subprocess.run([str(FETCH), str(CACHE.parent)], capture_output=True, timeout=600, check=False)
    releases = sorted(p.name for p in (base / "lib/modules").iterdir()) if (base / "lib/modules").is_dir() else []
    if not releases:
        pytest.skip(f"no real kernel modules: run .ci/fetch-kernel {CACHE.parent} (needs apt-get, network, depmod)")
    return base, releases[0]
