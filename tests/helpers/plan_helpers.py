"""A tiny OS tree with the cases the plan's figures care about (a hardlink across an extension's
edge, a kernel module and its modules.dep, an init, folders outside /usr) and a spec on it: shared
by the plan's, the merge rules' and the VM check build's tests."""

from __future__ import annotations

import os
from pathlib import Path


def make_os(root: Path) -> None:
    for d in ("proc", "sys", "dev", "run", "tmp", "boot", "etc", "usr/bin", "usr/lib/firmware/amd",
              "usr/lib/modules/6.1/kernel/gpu", "usr/share/doc/pkg", "opt/tool", "var/cache"):
        (root / d).mkdir(parents=True, exist_ok=True)
    (root / "etc/os-release").write_text("ID=test\nVERSION_ID=1\n")
    (root / "boot/vmlinuz").write_bytes(b"MZ" + b"k" * 5000)
    (root / "tmp/scratch").write_bytes(b"t" * 999)
    (root / "usr/bin/immucore").write_bytes(b"i" * 1234)
    (root / "usr/bin/immucore").chmod(0o755)
    (root / "usr/lib/firmware/amd/a.bin").write_bytes(os.urandom(7000))
    (root / "usr/lib/firmware/b.bin").write_bytes(os.urandom(3001))
    (root / "usr/lib/modules/6.1/kernel/gpu/drm.ko").write_bytes(b"m" * 2222)
    (root / "usr/lib/modules/6.1/modules.dep").write_text("kernel/gpu/drm.ko:\n")  # as depmod writes it
    (root / "usr/share/doc/pkg/README").write_text("doc " * 100)
    (root / "opt/tool/bin").write_bytes(b"o" * 500)
    (root / "var/cache/x").write_bytes(b"c" * 100)
    os.link(root / "usr/lib/firmware/b.bin", root / "usr/share/doc/pkg/b-hardlink")


def write_spec(dir: Path, extensions: str, extra_uki: str = "", os_exclude: str = "[]") -> Path:
    spec = dir / "spec.yaml"
    spec.write_text(f"""\
version: 1
os:
  root: rootfs
  exclude: {os_exclude}
uki:
  limit: 1GiB
{extra_uki}
extensions:
{extensions}
""")
    return spec
