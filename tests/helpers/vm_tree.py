"""A real bootable Debian 12 tree for the VM tests, made once per machine and cached.

``debootstrap --variant=minbase`` of bookworm with systemd as init, plus the Debian kernel and
modules .ci/fetch-kernel fetched (tests/helpers/kernel.py) under ``usr/lib/modules/RELEASE`` and
``boot/vmlinuz``. The cache folder's name carries a digest of the package list, the mirror and the
kernel release, so changing any of them makes a new tree and CI pays the ~2-4 minutes once.
debootstrap needs root: elsewhere (and with no network) the tests that need the tree skip, saying
why. Run ``python tests/helpers/vm_tree.py`` to make it by hand.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

SUITE = "bookworm"
MIRROR = os.environ.get("SYSEXTANT_DEBIAN_MIRROR", "http://deb.debian.org/debian")
#: systemd as PID 1 with udev and kmod (modprobe, depmod); libcryptsetup12 is what systemd-sysext
#: dlopens for dm-verity (without it signed images never activate); e2fsprogs for the ext4 disk
PACKAGES = ("systemd", "systemd-sysv", "udev", "kmod", "libcryptsetup12", "e2fsprogs")
CACHE = Path(os.environ.get("SYSEXTANT_TREE_CACHE", Path.home() / ".cache" / "sysextant"))


def _key(release: str) -> str:
    text = "\n".join([SUITE, MIRROR, "minbase", *PACKAGES, release, "v1"])
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def tree_path(release: str) -> Path:
    return CACHE / f"debian-{SUITE}-{_key(release)}" / "rootfs"


def make_tree(kernel: Path, modules: Path, release: str, *, log=sys.stderr) -> Path:
    """The cached tree for this kernel, made now if missing (root, debootstrap, network).
    ``modules`` holds lib/modules/RELEASE. Raises RuntimeError saying what is missing."""
    target = tree_path(release)
    if (target / "usr/lib/systemd/systemd").is_file() and (target / "boot/vmlinuz").is_file():
        return target
    target.parent.parent.mkdir(parents=True, exist_ok=True)
    # tests run in two processes (pytest-xdist): one makes the tree, the other waits for it
    with open(target.parent.parent / ".tree.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _make_tree(target, kernel, modules, release, log)


def _make_tree(target: Path, kernel: Path, modules: Path, release: str, log) -> Path:
    if (target / "usr/lib/systemd/systemd").is_file() and (target / "boot/vmlinuz").is_file():
        return target  # made while this process waited for the lock
    if os.geteuid() != 0:
        raise RuntimeError(f"no cached Debian tree at {target} and debootstrap needs root")
    if shutil.which("debootstrap") is None and not Path("/usr/sbin/debootstrap").is_file():
        raise RuntimeError("debootstrap is not installed (Debian package 'debootstrap')")
    target.parent.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".tree-", dir=target.parent.parent))
    try:
        root = work / "rootfs"
        cmd = ["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}", SUITE, str(root), MIRROR]
        print("vm_tree: " + " ".join(cmd), file=log, flush=True)
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1200, check=False)
        if proc.returncode != 0:
            tail = (proc.stdout + proc.stderr).strip().splitlines()[-5:]
            raise RuntimeError("debootstrap failed: " + " | ".join(tail))
        # what a VM boot does not need and only slows the firmware's hashing of the UKI
        for sub in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for p in (root / sub).glob("*"):
                if p.is_file():
                    p.unlink()
        mods = root / "usr/lib/modules" / release
        mods.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(modules / "lib/modules" / release, mods, symlinks=True)
        (root / "boot").mkdir(exist_ok=True)
        shutil.copy2(kernel, root / "boot/vmlinuz")
        (root / "etc/hostname").write_text("sysextant-vm\n")
        target.parent.mkdir(parents=True, exist_ok=True)
        os.rename(root, target)
    finally:
        with contextlib.suppress(OSError):
            shutil.rmtree(work)
    return target


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    from kernel import CACHE as KCACHE  # noqa: E402

    base = KCACHE.parent / "modules"
    rel = sorted(p.name for p in (base / "lib/modules").iterdir())[0]
    print(make_tree(KCACHE, base, rel))
