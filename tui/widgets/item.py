"""What the workbench says about the entry under the cursor: a one-line summary under the list
(what boot needs of it first), and the item pane ``i`` opens (ncdu's and gdu's ``i``): full path,
apparent, on-disk, newc and compressed sizes, hard links, the extension holding it, why a mark
would be refused and why boot needs it. Every figure comes from the session.
"""

from __future__ import annotations

import os
import stat

from rich.markup import escape

from sysextant.core.tree.index import TreeIndex
from sysextant.core.units import format_size
from sysextant.core.workbench.session import Session

from .tree_list import BOOT_HOLDS, BOOT_NEEDED


def plural(n: int, one: str, many: str | None = None) -> str:
    """``1 entry``, ``2 entries``: the count with its noun."""
    return f"{n:,} {one if n == 1 else (many or one + 's')}"


def _kind(index: TreeIndex, i: int) -> str:
    mode = index.mode[i]
    if stat.S_ISDIR(mode):
        return "folder"
    if stat.S_ISLNK(mode):
        return "symlink"
    if stat.S_ISREG(mode):
        return "file"
    return "special file"


def _boot_words(session: Session, i: int) -> tuple[str, str] | None:
    """(glyph, words) when boot needs ``i`` or entries inside it, else None."""
    reason = session.boot_reason(i)
    if reason:
        why = reason.split(" <- ", 1)[-1] if " <- " in reason else reason
        return BOOT_NEEDED, f"needed to boot: {why}"
    index = session.index
    if index is not None and stat.S_ISDIR(index.mode[i]):
        n = session.boot_count(i)
        if n:
            return BOOT_HOLDS, f"{plural(n, 'entry', 'entries')} inside needed to boot"
    return None


def item_line(session: Session, i: int | None, ext: str | None, warn: str = "yellow") -> str:
    """One line of markup about entry ``i``: its name, then what boot needs of it (with the key
    that marks the rest), else its kind and item count."""
    index = session.index
    if index is None or i is None or not 0 <= i < len(index):
        return ""
    name = escape(os.fsdecode(index.names[i]) or "/")
    boot = _boot_words(session, i) if session.plan is not None else None
    if boot is not None:
        glyph, words = boot
        tail = (" · [b]e[/b] marks the rest into " + escape(ext)
                if glyph == BOOT_HOLDS and ext and session.owner(i) is None else "")
        return f"[b]{name}[/b]  [{warn}]{glyph} {escape(words)}[/]{tail}"
    kind = _kind(index, i)
    if kind == "folder":
        kind += f", {plural(index.tot_count[i], 'item')}"
    own = session.owner(i)
    where = f" · in [b]{escape(own)}[/b]" if own else ""
    if own is None and session.plan is not None and session.os_exclude_refusal(i) is None:
        where = " · [b]x[/b] leaves it out of the UKI"  # outside usr/ and opt/: os.exclude
    return f"[b]{name}[/b]  [dim]{kind}[/]{where}"


def hard_links(index: TreeIndex, i: int) -> list[int]:
    """Other names of ``i``'s inode in the tree (empty when it has one name)."""
    for names in index.hardlinks.values():
        if i in names:
            return [k for k in names if k != i]
    return []


def item_pane(session: Session, i: int | None, ext: str | None, warn: str = "yellow") -> str:
    """The item pane's markup (Rich) for entry ``i``; ``warn``: the colour of what boot needs."""
    index = session.index
    if index is None or i is None or not 0 <= i < len(index):
        return "[dim]nothing under the cursor[/]"
    rel = os.fsdecode(index.path(i))
    lines = [f"[b]/{escape(rel)}[/b]  [dim]{_kind(index, i)}[/]"]
    sizes = (f"apparent {format_size(index.tot_size[i])} · on disk {format_size(index.tot_alloc[i])} · "
             f"initrd (newc) {format_size(index.tot_cpio[i])}")
    squeezed = session.compressed_bytes(i)
    sizes += f" · compressed ≈{format_size(squeezed)}" if squeezed is not None else " · compressed: estimate not ready"
    lines.append(sizes)
    if stat.S_ISDIR(index.mode[i]):
        lines.append(f"{plural(index.tot_count[i], 'item')} inside")
    else:
        pkgs = session.package_of(i) if session.plan is not None else []
        lines.append(f"package [b]{escape(', '.join(pkgs))}[/b]" if pkgs else
                     "installed by no package" if session.package_db()[0] is not None else "")
    links = hard_links(index, i)
    if links:
        others = ", ".join(os.fsdecode(index.path(k)) for k in links[:3]) + (" …" if len(links) > 3 else "")
        lines.append(f"hard links: {len(links) + 1} names, also {escape(others)} (its data counts once)")
    if session.plan is not None:
        own = session.owner(i)
        inside = session.owners_in(i)
        if own:
            lines.append(f"in extension [b]{escape(own)}[/b]")
        elif inside:
            lines.append(f"partly in {', '.join(escape(n) for n in inside)}; the rest stays in the UKI")
        else:
            lines.append("stays in the UKI")
        reason = session.boot_reason(i)
        if reason:
            lines.append(f"[{warn}]{BOOT_NEEDED} needed to boot:[/] {escape(reason)}")
        elif stat.S_ISDIR(index.mode[i]) and session.boot_count(i):
            n = session.boot_count(i)
            lines.append(f"[{warn}]{BOOT_HOLDS} {plural(n, 'entry', 'entries')} inside needed to boot[/]"
                         + (f" · e marks the rest into {escape(ext)}" if ext else ""))
        if not own:
            why = session.refusal(i, ext)
            lines.append(f"a mark would be refused: {escape(why)}" if why
                         else f"space marks it into {escape(ext)}" if ext else "")
    return "\n".join(line for line in lines if line)
