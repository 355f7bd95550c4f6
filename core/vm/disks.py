"""The VM's disks, made without root: a FAT ESP holding the UKI as the removable-media boot file,
and an ext4 disk holding the extension images.

The ESP: ``mkfs.vfat`` (dosfstools) formats a sparse file and mtools (``mmd``, ``mcopy``) writes
into it, no loop device or mount; the UKI goes to ``EFI/BOOT/BOOTX64.EFI``, the path UEFI firmware
boots from removable media with no boot entries (UEFI 2.10 section 3.5.1.1), so a fresh OVMF
variable store finds it. The disk is a bare FAT volume (no partition table): OVMF's FAT driver
binds to a whole disk too. The extension disk: ``mkfs.ext4 -d DIR`` (e2fsprogs >= 1.43) copies a
folder into a new filesystem image, also without root; its label is :data:`EXT_LABEL`, which
the check build's unit finds under ``/dev/disk/by-label``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from ..errors import UserError
from ..formats.mkfs import find_tool

MiB = 1 << 20
ESP_LABEL = "SYSEXTANT"
EXT_LABEL = "sysext-disk"
BOOT_FILE = "EFI/BOOT/BOOTX64.EFI"
#: fixed volume serial and timestamps keep the images the same for the same inputs
VOLUME_ID = "5953584e"


def _run(cmd: Sequence[str], what: str, env: dict[str, str] | None = None) -> None:
    proc = subprocess.run(list(cmd), capture_output=True, text=True, check=False, env=env,
                          stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise UserError(f"{what} failed ({os.path.basename(cmd[0])} exit {proc.returncode}): " + " | ".join(tail))


def esp_size(uki_bytes: int) -> int:
    """Bytes for an ESP that holds a UKI of ``uki_bytes``: the file, FAT32's tables and 8 MiB
    spare, in whole MiB, at least 64 MiB (FAT32's minimum cluster count with 512-byte clusters)."""
    need = uki_bytes + uki_bytes // 32 + 8 * MiB
    return max(64 * MiB, -(-need // MiB) * MiB)


def make_esp(uki: Path, out: Path) -> int:
    """A FAT32 image at ``out`` holding ``uki`` as EFI/BOOT/BOOTX64.EFI. Returns its size."""
    mkfs = find_tool("mkfs.vfat", "dosfstools", "to make the VM's EFI system partition")
    mmd = find_tool("mmd", "mtools", "to write the UKI into the VM's EFI system partition without root")
    mcopy = find_tool("mcopy", "mtools", "to write the UKI into the VM's EFI system partition without root")
    size = esp_size(uki.stat().st_size)
    with open(out, "wb") as f:
        f.truncate(size)
    _run([mkfs, "-F", "32", "-n", ESP_LABEL, "-i", VOLUME_ID, os.fspath(out)], "formatting the ESP image")
    env = {**os.environ, "MTOOLS_SKIP_CHECK": "1", "MTOOLS_NO_VFAT": "0"}
    img = os.fspath(out)
    _run([mmd, "-i", img, "::/EFI", "::/EFI/BOOT"], "creating EFI/BOOT on the ESP image", env)
    _run([mcopy, "-i", img, "-m", os.fspath(uki), "::/" + BOOT_FILE], "copying the UKI onto the ESP image", env)
    return size


def ext_size(total: int) -> int:
    """Bytes for an ext4 disk holding ``total`` bytes of images: 10% and 32 MiB spare (inodes,
    journal), in whole MiB."""
    need = total + total // 10 + 32 * MiB
    return -(-need // MiB) * MiB


def make_extension_disk(images: Sequence[Path], out: Path, stage: Path) -> int:
    """An ext4 image at ``out`` labelled :data:`EXT_LABEL` with each image at its top level
    (staged in ``stage``, a private folder: hard links where possible, copies otherwise).
    Returns its size."""
    mkfs = find_tool("mkfs.ext4", "e2fsprogs", "to make the VM's disk holding the extension images")
    stage.mkdir(mode=0o700, exist_ok=True)
    total = 0
    for img in images:
        dest = stage / img.name
        try:
            os.link(img, dest)
        except OSError:
            shutil.copyfile(img, dest)
        with contextlib.suppress(OSError):
            os.chmod(dest, 0o644)
        total += img.stat().st_size
    size = ext_size(total)
    with open(out, "wb") as f:
        f.truncate(size)
    env = {**os.environ, "E2FSPROGS_FAKE_TIME": os.environ.get("SOURCE_DATE_EPOCH", "")}
    if not env["E2FSPROGS_FAKE_TIME"]:
        del env["E2FSPROGS_FAKE_TIME"]
    _run([mkfs, "-q", "-F", "-t", "ext4", "-L", EXT_LABEL, "-E", "root_owner=0:0", "-d", os.fspath(stage),
          os.fspath(out)], "making the extension disk image", env)
    return size
