"""A small project with every case the workbench's refusal rules care about (a hand-made spec
with a comment that must survive every edit), and an entry's index by path: shared by the
workbench's tests and the merge rules' tests."""

from __future__ import annotations

import os
from pathlib import Path

from sysextant.core.workbench.session import Session

SPEC = """\
# a hand-made test spec; this comment must survive every edit
version: 1
os:
  root: rootfs        # the tree
  kernel: usr/lib/modules/6.1.0/vmlinuz
uki:
  init: /usr/bin/init
  compression: none
  limit: 1MiB
extensions:
  - name: tools       # big binaries
    paths: [usr/bin/big]
  - name: docs
    paths: [usr/share/doc/*]
output: build
"""


def _file(path: Path, size: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(os.urandom(size))


def make_project(tmp: Path) -> Path:
    """A small OS tree with every case the refusal rules care about, and its spec."""
    root = tmp / "rootfs"
    _file(root / "etc/os-release", 60)
    _file(root / "usr/lib/os-release", 60)
    _file(root / "usr/lib/modules/6.1.0/vmlinuz", 50_000)
    _file(root / "usr/lib/modules/6.1.0/kernel/drivers/gpu.ko", 120_000)
    _file(root / "usr/lib/modules/6.1.0/kernel/drivers/net.ko", 80_000)
    _file(root / "usr/lib/firmware/a.bin", 200_000)
    _file(root / "usr/lib/firmware/b/c.bin", 300_000)
    _file(root / "usr/bin/init", 20_000)
    _file(root / "usr/bin/big", 400_000)
    _file(root / "usr/bin/small", 1_000)
    os.link(root / "usr/bin/small", root / "usr/bin/small-link")
    _file(root / "usr/share/doc/pkg1/copyright", 5_000)
    _file(root / "usr/share/doc/pkg2/copyright", 7_000)
    _file(root / "usr/share/man/man1/ls.1", 3_000)
    (root / "usr/share/pipes").mkdir(parents=True)
    os.mkfifo(root / "usr/share/pipes/fifo")
    _file(root / "opt/agent/bin/agent", 90_000)
    (root / "proc").mkdir()
    spec = tmp / "sysextant.yaml"
    spec.write_text(SPEC)
    return spec


def idx(s: Session, rel: str) -> int:
    i = s.index.lookup(rel)
    assert i is not None, rel
    return i
