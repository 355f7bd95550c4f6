"""Kernel modules' ``.modinfo`` against kmod's own ``modinfo``, on a real Debian kernel's modules.

Every module of the kernel the suite fetches (tests/helpers/kernel.py) names the same firmware files, in
the same order, as ``modinfo -F firmware``; so do xz, zstd and gzip compressed copies of some;
other keys (alias, depends, license) agree too. Garbage and compression bombs are refused.
"""

from __future__ import annotations

import gzip
import lzma
import os
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import zstandard
from kernel import real_modules

from sysextant.core.formats import kmodinfo
from sysextant.core.formats.kmodinfo import ModinfoError, firmware, read_modinfo

MODINFO = shutil.which("modinfo") or ("/usr/sbin/modinfo" if os.path.exists("/usr/sbin/modinfo") else None)
needs_modinfo = pytest.mark.skipif(MODINFO is None, reason="modinfo missing (Debian package kmod)")


def all_modules() -> list[Path]:
    base, release = real_modules()
    mods = sorted((base / "lib/modules" / release).rglob("*.ko*"))
    assert mods, f"no modules under {base}"
    return mods


def modinfo_field(path: Path, field: str) -> list[str]:
    out = subprocess.run([MODINFO or "modinfo", "-F", field, str(path)], capture_output=True, text=True, check=True)
    return out.stdout.splitlines()


@needs_modinfo
def test_firmware_of_every_real_module_equals_modinfo() -> None:
    mods = all_modules()
    with ThreadPoolExecutor(8) as pool:
        theirs = dict(zip(mods, pool.map(lambda p: modinfo_field(p, "firmware"), mods), strict=True))
    ours = {p: firmware(p) for p in mods}
    assert ours == theirs
    assert sum(1 for v in ours.values() if v) >= 3  # the cloud kernel still has a few that name firmware


@needs_modinfo
@pytest.mark.parametrize("compression", ["xz", "zst", "gz"])
def test_compressed_copies_read_the_same(tmp_path: Path, compression: str) -> None:
    mods = all_modules()
    with_fw = [p for p in mods if firmware(p)][:3]
    picks = with_fw + [p for p in mods if p.name in ("loop.ko", "dm-verity.ko", "overlay.ko", "ext4.ko")]
    pack = {"xz": lambda b: lzma.compress(b, check=lzma.CHECK_CRC32),
            "zst": lambda b: zstandard.ZstdCompressor().compress(b), "gz": gzip.compress}[compression]
    for mod in picks:
        copy = tmp_path / f"{mod.name}.{compression}"
        copy.write_bytes(pack(mod.read_bytes()))
        assert read_modinfo(copy) == read_modinfo(mod)
        assert firmware(copy) == modinfo_field(mod, "firmware")
        fd = os.open(copy, os.O_RDONLY)
        try:
            assert firmware(fd) == firmware(mod)
        finally:
            os.close(fd)


@needs_modinfo
def test_other_keys_equal_modinfo() -> None:
    mods = all_modules()[::60]
    for mod in mods:
        info = read_modinfo(mod)
        for key in ("alias", "depends", "license", "vermagic"):
            theirs = modinfo_field(mod, key)
            ours = info.get(key, [])
            if key == "depends":  # modinfo prints the comma-separated value, empty when none
                assert (ours or [""]) == (theirs or [""]), (mod, key)
            else:
                assert ours == theirs, (mod, key)


def test_garbage_and_bombs_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    junk = tmp_path / "junk.ko"
    junk.write_bytes(b"hello, not a module")
    with pytest.raises(ModinfoError, match="neither an ELF kernel module"):
        read_modinfo(junk)
    broken = tmp_path / "broken.ko.xz"
    broken.write_bytes(b"\xfd7zXZ\x00" + bytes(64))
    with pytest.raises(ModinfoError, match="does not decompress"):
        read_modinfo(broken)
    monkeypatch.setattr(kmodinfo, "MAX_MODULE", 1 << 20)
    for name, pack in (("bomb.ko.xz", lzma.compress), ("bomb.ko.gz", gzip.compress),
                       ("bomb.ko.zst", zstandard.ZstdCompressor().compress)):
        bomb = tmp_path / name
        bomb.write_bytes(pack(b"\x7fELF" + bytes(4 << 20)))
        with pytest.raises(ModinfoError, match="inflates to over"):
            read_modinfo(bomb)
    notmod = tmp_path / "text.ko.gz"
    notmod.write_bytes(gzip.compress(b"just text"))
    with pytest.raises(ModinfoError, match="not ELF"):
        read_modinfo(notmod)
