"""Packages at plan time: which files of a package named in ``extensions[].packages`` may move,
and why the rest stays in the UKI.

A package is resolved against the tree's own database (:mod:`..packages`) every time the spec
is planned, so a rebuilt image with a newer package still moves the right files. Of its files,
those that may move go into the extension; the others stay, each group with its reason:

- outside ``/usr`` and ``/opt`` (systemd-sysext merges nothing else), or outside the hierarchies
  this OS merges (:mod:`.merge`);
- ``usr/lib/os-release`` and the extension-release folder, which an extension must not hold;
- the boot set (:mod:`.bootset`): needed before any extension is merged; firmware a kernel
  module kept in the UKI loads (a device probed before the merge would miss it);
- special files; files ``os.exclude`` leaves out of the OS or the extension's ``exclude`` keeps;
- files another extension claims (its ``paths``, or a package an earlier extension lists).
"""

from __future__ import annotations

import difflib
import os
import weakref
from dataclasses import dataclass, field
from typing import Any

from ..errors import UserError
from ..packages.db import PackageDb
from ..packages.find import read_database
from ..packages.owners import TreePackages, tree_packages
from ..rules import FORBIDDEN_IN_EXTENSION, MERGED_TOPS
from ..spec.model import Spec
from ..tree.index import TreeIndex
from ..tree.selection import IntervalSet, Sums, match, subtree_set
from .bootset import BootSet
from .merge import Hierarchies, unmerged


@dataclass
class Stayed:
    """Entries of a package that stay in the UKI for one reason, with an example."""

    reason: str
    entries: IntervalSet
    example: str  # a path, or the boot set's chain for it


@dataclass
class PackageMove:
    """What ``extensions[n].packages[j]`` moved and what had to stay."""

    name: str  # as the spec names it
    ext: str
    where: str  # spec.yaml:LINE:COL
    packages: list[str] = field(default_factory=list)  # the database keys it matched
    moved: IntervalSet = field(default_factory=IntervalSet)
    moved_bytes: int = 0
    stayed: list[Stayed] = field(default_factory=list)
    missing: int = 0  # listed paths the tree does not hold

    def to_json(self, index: TreeIndex) -> dict:
        return {"package": self.name, "extension": self.ext, "matched": self.packages, "moved_entries": len(self.moved),
                "moved_bytes": self.moved_bytes, "missing": self.missing,
                "stayed": [{"reason": s.reason, "entries": len(s.entries), "example": s.example} for s in self.stayed]}


@dataclass
class PackagePlan:
    """Every package the spec names, resolved: the database, the moves, the problems."""

    db: PackageDb | None
    moves: list[PackageMove] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


_cache: list = []  # [(weak index, (db, TreePackages) or UserError)]


def tree_database(index: TreeIndex) -> tuple[PackageDb | None, TreePackages | None]:
    """The package database of the index's tree laid over it (read once per complete index).
    Raises :class:`UserError` for a database that exists but cannot be read."""
    if _cache and _cache[0][0]() is index and index.complete:
        found = _cache[0][1]
    else:
        try:
            db = read_database(index.root)
            found = (db, tree_packages(index, db) if db is not None else None)
        except UserError as exc:
            found = exc
        if index.complete:
            _cache[:] = [(weakref.ref(index), found)]
    if isinstance(found, UserError):
        raise found
    return found


class Rules:
    """What may move out of the UKI, as masks over one index (the boot set, the hierarchies, ...)."""

    def __init__(self, spec: Spec, index: TreeIndex, boot: BootSet | None, hier: Hierarchies,
                 base: IntervalSet | None = None) -> None:
        self.spec, self.index, self.boot, self.hier = spec, index, boot, hier
        tops = [c for c in index.children(0) if os.fsdecode(index.names[c]) in MERGED_TOPS]
        self.merged_tops = subtree_set(index, tops)
        forbidden = [k for p in FORBIDDEN_IN_EXTENSION if (k := index.lookup(p)) is not None]
        self.forbidden = subtree_set(index, forbidden)
        self.special = IntervalSet((k, k + 1) for k in index.special)
        self.base = base

    def split(self, sel: IntervalSet, claims: list[tuple[str, IntervalSet]], exclude: IntervalSet) -> tuple[
            IntervalSet, list[Stayed]]:
        """``sel`` cut into what may move and what stays, by reason (first reason wins)."""
        index, boot = self.index, self.boot
        stayed: list[Stayed] = []

        def take(part: IntervalSet, reason: str, example=None) -> None:
            nonlocal sel
            part = part.intersection(sel)
            if part:
                first = part.starts[0]
                stayed.append(Stayed(reason, part, example(first) if example else os.fsdecode(index.path(first))))
                sel = sel.difference(part)

        take(sel.difference(self.merged_tops), "outside /usr and /opt (systemd-sysext merges nothing else)")
        take(unmerged(index, self.hier, sel), f"outside the hierarchies this OS merges ({self.hier.source})")
        take(self.forbidden, "the OS release file or extension-release folder, which an extension must not hold")
        if boot is not None:
            take(boot.entries, "needed to boot (the boot set)", boot.chain)
            take(boot.soft, "firmware a kernel module kept in the UKI loads", boot.chain)
        take(self.special, "special files an extension cannot carry")
        if self.base is not None:
            everything = IntervalSet([(1, len(index))])
            top_skipped = everything.difference(self.base)
            take(top_skipped, "left out of the UKI by os.exclude (or a folder Kairos never packs)")
        take(exclude, "kept by the extension's exclude")
        for name, claimed in claims:
            take(claimed, f"already in extension {name}")
        return sel, stayed


def _suggest(name: str, db: PackageDb) -> str:
    close = difflib.get_close_matches(name, list(db.packages), n=3, cutoff=0.75)
    return f"; did you mean {', '.join(close)}?" if close else ""


def resolve_packages(spec: Spec, index: TreeIndex, ext_plans: list[Any], sums: Sums, boot: BootSet | None,
                     hier: Hierarchies, base: IntervalSet) -> PackagePlan | None:
    """Add to each extension plan the files of its packages that may move (``selected``,
    ``entries``, ``bytes`` updated), in spec order. None when no extension names a package."""
    if not any(ext.packages for ext in spec.extensions):
        return None
    try:
        db, tp = tree_database(index)
    except UserError as exc:
        return PackagePlan(None, problems=[f"{spec.where('extensions')}: {exc}"])
    result = PackagePlan(db)
    if db is None or tp is None:
        n = next(k for k, e in enumerate(spec.extensions) if e.packages)
        result.problems.append(
            f"{spec.where('extensions', n, 'packages')}: the OS tree {os.fsdecode(index.root)} has no package database "
            "(dpkg var/lib/dpkg/status, rpm rpmdb.sqlite, apk lib/apk/db/installed): name paths instead")
        return result
    result.warnings += [f"{spec.where('os', 'root')}: {p}" for p in db.problems[:3]]
    rules = Rules(spec, index, boot, hier, base)
    for n, (ext, ep) in enumerate(zip(spec.extensions, ext_plans, strict=True)):
        if not ext.packages:
            continue
        excluded = subtree_set(index, [k for g in ext.exclude for k in match(index, g)])
        for j, name in enumerate(ext.packages):
            where = spec.where("extensions", n, "packages", j)
            found = db.find(name)
            if not found:
                result.problems.append(f"{where}: package {name} is not installed in the OS tree "
                                       f"({db.describe()}){_suggest(name, db)}")
                continue
            keys = [k for k, p in db.packages.items() if any(p is q for q in found)]
            sel = IntervalSet().union(*(tp.files[k].selection for k in keys))
            claims = [(o.name, o.selected) for o in ext_plans if o is not ep]
            moving, stayed = rules.split(sel, claims, excluded)
            move = PackageMove(name, ext.name, where, keys, moving, sums.apparent(moving), stayed,
                               sum(tp.files[k].missing for k in keys))
            result.moves.append(move)
            ep.selected = ep.selected.union(moving)
            # the image holds the parent folders of its marks: each run's first entry has them all
            ep.marks = sorted(set(ep.marks).union(moving.starts))
            if sel and not moving:
                result.warnings.append(f"{where}: none of the {len(sel):,} files of package {name} may move: "
                                       + "; ".join(f"{len(s.entries):,} {s.reason}" for s in stayed))
        ep.entries = len(ep.selected)
        ep.bytes = sums.apparent(ep.selected)
        ep.special = [i for i in index.special if i in ep.selected]
    return result


def render_packages(pp: PackagePlan | None, index: TreeIndex) -> list[str]:
    """Lines for `sysextant plan`: per package what moved and what had to stay, and why."""
    from ..units import format_size

    if pp is None or not pp.moves:
        return []
    lines = ["  packages (resolved now against the tree's " + (pp.db.describe() if pp.db else "database") + "):"]
    for m in pp.moves:
        lines.append(f"    {m.name} -> {m.ext}: {len(m.moved):,} files moved ({format_size(m.moved_bytes)})"
                     + (f"; {m.missing:,} listed files are not in the tree" if m.missing else ""))
        for s in m.stayed:
            lines.append(f"      {len(s.entries):,} stay: {s.reason}, e.g. {s.example}")
    return lines

