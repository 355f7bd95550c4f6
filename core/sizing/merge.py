"""Which folders the booted OS merges from its extensions, read from the tree itself.

systemd-sysext merges the hierarchies in ``SYSTEMD_SYSEXT_HIERARCHIES`` (colon-separated
absolute paths), ``/usr`` and ``/opt`` when it is unset. Kairos sets it in a systemd drop-in that
its bundled cloud-config writes at boot (kairos-init's ``99_sysext.yaml``): not ``/opt``, not
``/usr/lib64``, ``/usr/libexec`` or ``/usr/lib32``; files an extension holds there never appear.
So the value is looked for where the tree keeps it (drop-ins of systemd-sysext.service, the
Kairos cloud-configs) and, in a Kairos tree where none is found, Kairos' own list is assumed.

See docs/formats.md, sections 13 (what systemd-sysext merges) and 14 (Kairos conventions).
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass

from ..errors import UserError
from ..formats.pe import parse_pe
from ..rules import parse_os_release, release_mismatch
from ..spec.model import Spec
from ..tree.index import TreeIndex
from ..tree.selection import IntervalSet, subtree_set
from .ukiinputs import os_release

#: systemd's default (src/sysext/sysext.c)
SYSTEMD_DEFAULT = ("/usr", "/opt")
#: what Kairos merges (kairos-init's bundled 99_sysext.yaml)
KAIROS_DEFAULT = ("/usr/local/bin", "/usr/local/sbin", "/usr/local/include", "/usr/local/lib", "/usr/local/share",
                  "/usr/local/src", "/usr/bin", "/usr/share", "/usr/lib", "/usr/include", "/usr/src", "/usr/sbin")
#: folders (relative to the tree) whose files may set the variable, and the file names read there
_SOURCES = (("etc/systemd/system/systemd-sysext.service.d", ".conf"),
            ("usr/lib/systemd/system/systemd-sysext.service.d", ".conf"),
            ("system/oem", ".yaml"), ("system/oem", ".yml"), ("oem", ".yaml"), ("etc/elemental/config.d", ".yaml"))
_VALUE = re.compile(rb"SYSTEMD_SYSEXT_HIERARCHIES=([^\s\"']+)")
#: what marks a Kairos tree (its init, its release file)
KAIROS_MARKERS = ("usr/bin/immucore", "etc/kairos-release")


@dataclass(frozen=True)
class Hierarchies:
    """The merged hierarchies (absolute paths) and where that came from, for messages."""

    paths: tuple[str, ...]
    source: str

    def covers(self, rel: str) -> bool:
        """Whether the entry at tree path ``rel`` (a file, link or folder) is merged."""
        path = "/" + rel.strip("/")
        return any(path == h or path.startswith(h.rstrip("/") + "/") for h in self.paths)

    def above(self, rel: str) -> bool:
        """Whether folder ``rel`` lies above a merged hierarchy (``usr`` above ``/usr/lib``)."""
        path = "/" + rel.strip("/")
        return any(h.startswith(path.rstrip("/") + "/") for h in self.paths)


def read_hierarchies(index: TreeIndex) -> Hierarchies:
    """The hierarchies the OS in ``index`` merges."""
    root = index.root
    for folder, suffix in _SOURCES:
        k = index.lookup(folder)
        if k is None or not index.is_dir(k):
            continue
        for child in sorted(index.children(k), key=lambda c: index.names[c]):
            name = index.names[child]
            if not name.endswith(suffix.encode()) or not stat.S_ISREG(index.mode[child]):
                continue
            rel = os.path.join(os.fsencode(folder), name)
            try:
                with open(os.path.join(root, rel), "rb", opener=_no_follow) as fh:
                    found = _VALUE.search(fh.read(1 << 20))
            except OSError:
                continue
            if found:
                paths = tuple(p for p in found.group(1).decode(errors="replace").split(":") if p.startswith("/"))
                if paths:
                    return Hierarchies(paths, f"SYSTEMD_SYSEXT_HIERARCHIES in {os.fsdecode(rel)}")
    if any(index.lookup(m) is not None for m in KAIROS_MARKERS):
        return Hierarchies(KAIROS_DEFAULT, "Kairos' SYSTEMD_SYSEXT_HIERARCHIES (a Kairos tree)")
    return Hierarchies(SYSTEMD_DEFAULT, "systemd's default (/usr and /opt)")


def _no_follow(path: str, flags: int) -> int:
    return os.open(path, flags | os.O_NOFOLLOW)


def unmerged(index: TreeIndex, hier: Hierarchies, selection: IntervalSet) -> IntervalSet:
    """The entries of ``selection`` that would never appear once merged: outside every hierarchy,
    the folders above a hierarchy aside (an image needs ``usr`` to hold ``usr/lib``)."""
    inside = [k for k in (index.lookup(h.strip("/")) for h in hier.paths) if k is not None]
    outside = selection.difference(subtree_set(index, inside))
    above = _above_entries(index, hier, outside)
    return outside.difference(IntervalSet((k, k + 1) for k in above)) if above else outside


def _above_entries(index: TreeIndex, hier: Hierarchies, outside: IntervalSet) -> list[int]:
    """The folders above a hierarchy that lie in ``outside``: the prefixes of the hierarchies'
    paths, looked up (a large selection is never walked entry by entry)."""
    found = set()
    for h in hier.paths:
        parts = h.strip("/").split("/")
        for n in range(1, len(parts)):
            k = index.lookup("/".join(parts[:n]))
            if k is not None and k in outside:
                found.add(k)
    return sorted(found)


#: PE machine types -> systemd architecture names (the UKI runs where its stub runs)
PE_MACHINES = {0x8664: "x86-64", 0xAA64: "arm64", 0x14C: "x86", 0x1C2: "arm", 0x5064: "riscv64",
               0x6264: "loongarch64"}


def host_release(spec: Spec, index: TreeIndex) -> dict[str, str]:
    """The booted OS's os-release fields (``uki.os_release`` when set: it is what the UKI says)."""
    try:
        return parse_os_release(os_release(spec).decode("utf-8", "replace"))
    except (UserError, ValueError):
        return {}


def host_architecture(spec: Spec) -> str | None:
    """The systemd architecture name of the UKI's stub (None when it cannot be read)."""
    try:
        return PE_MACHINES.get(parse_pe(spec.uki.stub).machine)
    except (UserError, OSError):
        return None


def release_problems(spec: Spec, index: TreeIndex) -> list[str]:
    """Extensions whose release file systemd-sysext on this OS would refuse: the image would
    never merge (and `systemd-sysext merge` still exits 0)."""
    host = host_release(spec, index)
    arch = host_architecture(spec)
    problems = []
    for n, ext in enumerate(spec.extensions):
        why = release_mismatch(ext.release, host, arch)
        if why:
            problems.append(f"{spec.where('extensions', n, 'release')}: extension {ext.name} would never merge: {why}")
    return problems
