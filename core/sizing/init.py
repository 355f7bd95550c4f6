"""The program the kernel starts from the UKI's initrd, and what it takes to keep it there.

The kernel unpacks the initrd into its rootfs and runs ``/init``; with no ``/init`` it falls back
to mounting ``root=`` and, in a trusted-boot UKI that has none, panics ("VFS: Unable to mount root
fs", seen booting such a UKI under OVMF). So the UKI's initrd needs an ``/init``: either the link
``init -> uki.init`` sysextant adds (Kairos: ``/usr/bin/immucore``), or the tree's own ``/init``.
Either is resolved the way the booted system resolves it, through the tree's own symlinks
(``/lib -> usr/lib`` on a usr-merged tree), and every file and link on that way must stay in the
UKI: an extension is merged only later, by the very system this program starts.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field

from ..spec.model import Spec
from ..tree.fsentry import resolve_in_tree
from ..tree.index import TreeIndex


@dataclass
class InitProgram:
    """Where ``/init`` leads in the tree: the entries it needs (links followed, then the program;
    empty when it leads nowhere), and ``problem`` when that is not a program the kernel can run."""

    path: str  # as the spec or the tree names it (/usr/bin/immucore, or /init)
    source: str  # "uki.init" | "the tree's /init"
    needed: list[int] = field(default_factory=list)  # index entries: each link on the way, then the program
    problem: str | None = None


def init_program(spec: Spec, index: TreeIndex) -> InitProgram | None:
    """The init the UKI will run, resolved inside the tree; None when there is none at all."""
    if spec.uki.init:
        prog = InitProgram(spec.uki.init, "uki.init")
    elif index.lookup("init") is not None:
        prog = InitProgram("/init", "the tree's /init")
    else:
        return None
    root = index.root
    links: list[bytes] = []
    try:
        resolved = resolve_in_tree(root, os.fsencode(prog.path.lstrip("/")), links=links)
        st = os.lstat(os.path.join(root, resolved))
    except OSError as exc:
        prog.problem = (f"{prog.path} ({prog.source}) leads nowhere in the OS tree "
                        f"({exc.strerror or exc}): the UKI would have no init and the kernel would panic")
        return prog
    for rel in [*links, resolved]:
        k = index.lookup(os.fsdecode(rel))
        if k is not None and k not in prog.needed:
            prog.needed.append(k)
    if not stat.S_ISREG(st.st_mode) or not st.st_mode & 0o111:
        what = "not a regular file" if not stat.S_ISREG(st.st_mode) else "not executable"
        prog.problem = f"{prog.path} ({prog.source}) resolves to {os.fsdecode(resolved)}, which is {what}"
    return prog


def init_problems(spec: Spec, index: TreeIndex) -> list[str]:
    """Problems with the UKI's init, before any extension is considered."""
    prog = init_program(spec, index)
    if prog is None:
        return [f"{spec.where('uki')}: the UKI's initrd would have no /init (no uki.init, and the OS tree has "
                "no /init): the kernel would panic with 'VFS: Unable to mount root fs'. Set uki.init to the "
                "tree's init program, e.g. /usr/bin/immucore (Kairos) or /usr/lib/systemd/systemd"]
    if prog.problem:
        return [f"{spec.where('uki', 'init') if prog.source == 'uki.init' else spec.where('os', 'root')}: "
                f"{prog.problem}"]
    return []
