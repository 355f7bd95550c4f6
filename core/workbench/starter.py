"""``sysextant init``: a starter spec for an OS tree, its kernel, init and boot profile detected.

Detected inside the tree, through its own symlinks (never this machine's): the kernel
(``boot/vmlinuz``, ``vmlinuz``, the newest ``boot/vmlinuz-*``, ``usr/lib/modules/*/vmlinuz``),
the boot profile (Kairos when immucore or ``etc/kairos-release`` is there, else systemd when
systemd is) and the init the UKI must start: ``/usr/bin/immucore`` for Kairos (its ``/init``
link), the tree's own ``/init`` when it has one, else systemd. Values not detected are the
model's defaults (:func:`..spec.write.new_spec_text`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..atomic import write_atomic
from ..errors import UserError
from ..progress import Reporter
from ..sizing.merge import KAIROS_MARKERS
from ..spec.write import new_spec_text
from ..tree.fsentry import resolve_in_tree
from ..tree.oci import is_image_path, open_image

KERNEL_CANDIDATES = ("boot/vmlinuz", "vmlinuz", "boot/vmlinuz-linux")
SYSTEMD_INITS = ("usr/lib/systemd/systemd", "lib/systemd/systemd", "sbin/init")


@dataclass
class Detected:
    kernel: str | None
    init: str | None
    profile: str
    notes: list[str]


def _exists(root: bytes, rel: str, *, executable: bool = False) -> bool:
    try:
        resolved = resolve_in_tree(root, os.fsencode(rel))
        st = os.stat(os.path.join(root, resolved), follow_symlinks=False)
    except OSError:
        return False
    return os.path.isfile(os.path.join(root, resolved)) and (not executable or bool(st.st_mode & 0o111))


def _version_key(name: str) -> list:
    return [int(p) if p.isdigit() else p for p in name.replace("-", ".").split(".")]


def detect(root: Path) -> Detected:
    """What the starter spec says about ``root`` (a folder)."""
    raw = os.fsencode(root)
    notes: list[str] = []
    kernel = next((k for k in KERNEL_CANDIDATES if _exists(raw, k)), None)
    if kernel is None:
        found = []
        for folder, prefix in (("boot", "vmlinuz-"), ("usr/lib/modules", "")):
            try:
                names = os.listdir(os.path.join(raw, os.fsencode(folder)))
            except OSError:
                continue
            for name in (os.fsdecode(n) for n in names):
                rel = f"{folder}/{name}" if prefix else f"{folder}/{name}/vmlinuz"
                if name.startswith(prefix) and _exists(raw, rel):
                    found.append(rel)
        if found:
            kernel = max(found, key=lambda r: _version_key(r.split("/")[-1 if r.startswith("boot") else -2]))
    if kernel is None:
        notes.append("no kernel found (boot/vmlinuz, boot/vmlinuz-*, usr/lib/modules/*/vmlinuz): set os.kernel")
    if any(_exists(raw, m) for m in KAIROS_MARKERS):
        profile, init = "kairos", "/usr/bin/immucore"
    elif any(_exists(raw, p, executable=True) for p in SYSTEMD_INITS):
        profile = "systemd"
        init = None if _exists(raw, "init", executable=True) else "/" + next(
            p for p in SYSTEMD_INITS if _exists(raw, p, executable=True))
    else:
        profile = "none"
        init = None
        if not _exists(raw, "init", executable=True):
            notes.append("neither Kairos nor systemd nor an /init found: set uki.init to the program the UKI starts")
    return Detected(kernel, init, profile, notes)


def write_starter(root: Path, spec_path: Path, *, key: Path | None = None, cert: Path | None = None,
                  limit: str | None = None, reporter: Reporter | None = None) -> Detected:
    """Write a starter spec for ``root`` at ``spec_path`` (never over an existing file). ``root``
    may be a container image (core/tree/oci.py): the spec names the image, detection reads its
    flattened tree."""
    root, spec_path = Path(root), Path(spec_path)
    named = root
    if is_image_path(root):  # a file, or a folder holding an OCI layout
        root = open_image(root, reporter=reporter).root
    if not root.is_dir():
        raise UserError(f"{root} is not a folder: give the OS tree to slim (a folder holding usr/, etc/, boot/)")
    if not (root / "usr").is_dir() and not (root / "etc").is_dir():
        raise UserError(f"{root} does not look like an OS tree (no usr/ and no etc/ in it)")
    if spec_path.exists() or spec_path.is_symlink():
        raise UserError(f"{spec_path} already exists; give another --spec path or edit that one")
    if (key is None) != (cert is None):
        raise UserError("give both --key and --cert (the db key pair), or neither for unsigned images")
    found = detect(root)
    base = spec_path.absolute().parent

    def rel(p: Path) -> str:
        p = p.absolute()
        try:
            return os.path.relpath(p, base) if os.path.commonpath([p, base]) != "/" else str(p)
        except ValueError:
            return str(p)

    text = new_spec_text(rel(named), kernel=found.kernel or "boot/vmlinuz", init=found.init, limit=limit,
                         key=rel(key) if key else None, cert=rel(cert) if cert else None, profile=found.profile)
    try:
        write_atomic(spec_path, text.encode())
    except OSError as exc:
        raise UserError(f"cannot write {spec_path}: {exc.strerror or exc}") from None
    return found
