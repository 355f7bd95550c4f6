"""What the UKI is made of besides the initrd, read from the spec and the tree: the os-release for
``.osrel``, the kernel for ``.linux`` and its release for ``.uname``. The forecast sizes them and
the build packs them: one reading for both. Files inside the OS tree are resolved the way that OS
would resolve them (:func:`..tree.fsentry.host_path_in_tree`), never through this machine's paths.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import UserError
from ..formats.uki import read_uname
from ..spec.load import uname_problem
from ..spec.model import Spec
from ..tree.fsentry import host_path_in_tree
from ..tree.index import TreeIndex


def _tree_file(spec: Spec, rel: str) -> Path | None:
    try:
        p = Path(host_path_in_tree(spec.os.root, spec.os.root / rel))
    except OSError:
        return None
    return p if p.is_file() else None


def os_release(spec: Spec) -> bytes:
    """The .osrel section: ``uki.os_release`` if set, else the tree's own os-release."""
    if spec.uki.os_release:
        path: Path | None = spec.uki.os_release
    else:
        path = _tree_file(spec, "etc/os-release") or _tree_file(spec, "usr/lib/os-release")
    if path is None:
        raise UserError(f"{spec.where('os', 'root')}: the OS tree {spec.os.root} has no etc/os-release or "
                        "usr/lib/os-release for the UKI's .osrel section; set uki.os_release")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror}") from None


def kernel_path(spec: Spec) -> Path:
    try:
        path = Path(host_path_in_tree(spec.os.root, spec.os.kernel))
    except OSError:
        path = spec.os.kernel
    if not path.is_file():
        raise UserError(f"{spec.where('os', 'kernel')}: kernel {spec.os.kernel} does not exist")
    return path


def uname(spec: Spec, index: TreeIndex, kernel: Path) -> str | None:
    """The kernel release for .uname: the spec's, the kernel header's, or the only modules folder."""
    if spec.uki.uname:
        return spec.uki.uname
    found = read_uname(kernel)
    if found:
        return found
    mods = index.lookup("usr/lib/modules")
    if mods is not None:
        versions = [index.names[c] for c in index.children(mods) if index.is_dir(c)]
        if len(versions) == 1:
            try:
                release = versions[0].decode("utf-8")
            except UnicodeDecodeError:
                return None  # not a kernel release: no .uname rather than bytes the stub would mangle
            return release if uname_problem(release) is None else None
    return None
