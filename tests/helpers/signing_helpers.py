"""Signing material and the real tools that check it, shared by the Authenticode and UKI tests:
a test signer (demo key pair written to files), a skip mark for a missing tool, sbverify."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from sysextant.core.keys import Signer, generate_demo_pair, load_signer


def tool(name: str, package: str):
    return pytest.mark.skipif(shutil.which(name) is None, reason=f"{name} missing (Debian package {package})")


def make_signer(directory: Path, name: str) -> Signer:
    key_pem, cert_pem = generate_demo_pair(common_name=f"test {name}")
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{name}.key").write_bytes(key_pem)
    (directory / f"{name}.crt").write_bytes(cert_pem)
    return load_signer(directory / f"{name}.key", directory / f"{name}.crt")


def sbverify(path: Path, cert: Path) -> bool:
    return subprocess.run(["sbverify", "--cert", str(cert), str(path)], capture_output=True).returncode == 0
