"""PCR 11 predictions compared with systemd-measure calculate (the systemd 252 oracle)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from kernel import real_kernel

from sysextant.core.errors import UserError
from sysextant.core.formats.pcr import (
    MEASURED_252,
    MEASURED_CURRENT,
    expected_pcr11,
    measured_sections,
    stub_version,
)

MEASURE = Path("/usr/lib/systemd/systemd-measure")
STUB = Path("/usr/lib/systemd/boot/efi/linuxx64.efi.stub")
needs_measure = pytest.mark.skipif(not MEASURE.is_file(), reason=f"{MEASURE} missing (Debian package systemd)")


def oracle(files: dict[str, Path], bank: str) -> dict[str, str]:
    args = [f"--{name.removeprefix('.')}={path}" for name, path in files.items()]
    res = subprocess.run([str(MEASURE), "calculate", *args, f"--bank={bank}", "--json=short"],
                         capture_output=True, text=True, check=True)
    return {entry["phase"]: entry["hash"] for entry in json.loads(res.stdout)[bank]}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("pcr")
    files = {".linux": real_kernel(), ".osrel": d / "osrel", ".cmdline": d / "cmdline",
             ".initrd": d / "initrd", ".pcrpkey": d / "pcrpkey"}
    files[".osrel"].write_bytes(b"ID=kairos\nVERSION_ID=3\n")
    files[".cmdline"].write_bytes(b"console=ttyS0 rd.immucore.uki")
    files[".initrd"].write_bytes(os.urandom(1_500_001))
    files[".pcrpkey"].write_bytes(b"-----BEGIN PUBLIC KEY-----\nnot checked here\n-----END PUBLIC KEY-----\n")
    return files


@needs_measure
@pytest.mark.parametrize("bank", ["sha256", "sha1"])
@pytest.mark.parametrize("names", [(".linux",), (".linux", ".osrel", ".cmdline", ".initrd"),
                                   (".initrd", ".cmdline", ".linux", ".osrel", ".pcrpkey")])
def test_matches_systemd_measure(inputs: dict[str, Path], bank: str, names: tuple[str, ...]) -> None:
    files = {n: inputs[n] for n in names}
    expect = oracle(files, bank)
    assert list(expect) == ["enter-initrd", "enter-initrd:leave-initrd",
                            "enter-initrd:leave-initrd:sysinit", "enter-initrd:leave-initrd:sysinit:ready"]
    assert expected_pcr11(list(files.items()), bank=bank) == expect


@needs_measure
def test_bytes_and_files_agree_and_content_matters(inputs: dict[str, Path]) -> None:
    as_files = [(".linux", inputs[".linux"]), (".cmdline", inputs[".cmdline"])]
    as_bytes = [(".linux", inputs[".linux"]), (".cmdline", inputs[".cmdline"].read_bytes())]
    assert expected_pcr11(as_files) == expected_pcr11(as_bytes)
    changed = [(".linux", inputs[".linux"]), (".cmdline", b"console=ttyS1 rd.immucore.uki")]
    assert expected_pcr11(changed) != expected_pcr11(as_files)


def test_unmeasured_sections_are_ignored_by_a_252_stub(inputs: dict[str, Path]) -> None:
    base = [(".linux", inputs[".linux"]), (".osrel", inputs[".osrel"])]
    with_uname = base + [(".uname", b"6.1.0-56-cloud-amd64"), (".pcrsig", b"{}")]
    assert expected_pcr11(with_uname) == expected_pcr11(base)
    assert expected_pcr11(with_uname, measured=MEASURED_CURRENT) != expected_pcr11(base)


@pytest.mark.skipif(not STUB.is_file(), reason=f"{STUB} missing")
def test_stub_version_selects_the_measured_set() -> None:
    version = stub_version(STUB)
    assert version is not None and version >= 252
    if version == 252:
        assert measured_sections(version) == MEASURED_252
    assert measured_sections(257) == MEASURED_CURRENT


def test_refusals() -> None:
    with pytest.raises(UserError, match="needs the .linux"):
        expected_pcr11([(".osrel", b"x")])
    with pytest.raises(UserError, match="unknown PCR bank"):
        expected_pcr11([(".linux", b"x")], bank="md5")
