"""The fit planner: which moves bring the UKI under a limit, grouped into a few sensible extensions.

Candidates are only what may move (:class:`.packages.Rules`: the boot set, the merged
hierarchies, the kernel-module rules, what other extensions already claim): with a package
database, whole packages (their movable files) plus folders of files no package owns; without
one, folders (split where what must stay lies inside, or with a short ``exclude``). Docs, man
pages and locales are always taken as folders, across packages. Each candidate is ranked by
what it takes off the compressed initrd (the estimator's figure for its entries, else its newc
bytes times a fair ratio); the biggest are taken until the predicted UKI, with the estimate's
upper band, is under the limit less a margin. The picks are grouped into extensions by kind:
firmware, kernel modules, docs (man pages, locales), each big application on its own, the rest
together; each extension is shown with what it saves and the UKI figure after it.

It also proposes what should not be in the OS at all (package caches and lists, logs, the
modules of kernels other than the UKI's) as ``os.exclude``, labelled as removing content.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass, field, replace
from typing import Any

from ..errors import UserError
from ..spec.model import ExtensionSpec, Spec
from ..tree.index import TRAILER_BYTES, TreeIndex
from ..tree.selection import IntervalSet, match, subtree_set, with_ancestors
from ..units import format_size
from .bootset import boot_set
from .forecast import UkiLayout
from .merge import host_architecture, read_hierarchies
from .packages import Rules, tree_database
from .plan import Plan, extra_entry_bytes

#: a compressed/uncompressed ratio when no estimate is prepared (zstd 19 on OS trees: 0.3-0.45)
FAIR_RATIO = {"zstd": 0.4, "gzip": 0.45, "xz": 0.35, "none": 1.0}
#: folders taken across packages: documentation, man pages, locales
DOC_FOLDERS = ("usr/share/doc", "usr/share/man", "usr/share/info", "usr/share/locale", "usr/share/help",
               "usr/share/gtk-doc", "usr/share/i18n", "usr/lib/locale")
#: what should not be in an OS image at all: (glob, what it is)
JUNK = (("var/cache/apt/*", "apt's package cache"), ("var/lib/apt/lists/*", "apt's package lists"),
        ("var/cache/dnf/*", "dnf's cache"), ("var/cache/yum/*", "yum's cache"), ("var/cache/zypp/*", "zypper's cache"),
        ("var/cache/apk/*", "apk's cache"), ("var/cache/pacman/pkg/*", "pacman's package cache"),
        ("var/cache/debconf/*-old", "debconf's backups"), ("var/lib/dpkg/*-old", "dpkg's backups"),
        ("var/log/**/*.gz", "rotated logs"), ("var/tmp/*", "temporary files"))
#: smallest candidate worth an entry of its own (compressed bytes)
MIN_UNIT = 64 * 1024
#: a candidate saving at least this share of what must go gets an extension of its own
BIG_SHARE = 0.15
#: folders with more kept entries inside than this are split instead of excluded
MAX_EXCLUDES = 6


@dataclass
class Unit:
    """One candidate move: a package or a folder (with excludes), its movable entries, its saving."""

    kind: str  # "package" or "path"
    name: str  # package key or tree path
    entries: IntervalSet
    exclude: list[str] = field(default_factory=list)
    saves: int = 0  # compressed bytes off the initrd (estimate or fair ratio)
    category: str = ""  # firmware, modules, docs, or an application name


@dataclass
class Proposal:
    """Extensions proposed for the fit, in the order taken, with the UKI figure after each."""

    name: str
    paths: list[str]
    packages: list[str]
    exclude: list[str]
    entries: int
    saves: int
    uki_after: int


@dataclass
class FitResult:
    limit: int
    limit_text: str
    margin: int
    target: int  # the UKI's upper band must end here
    uki_before: int
    uki_after: int
    uki_after_high: int
    exact_estimate: bool  # compressed estimate (else a fair ratio over newc bytes)
    os_exclude: list[tuple[str, str, int]]  # (glob, what, compressed bytes removed)
    extensions: list[Proposal]
    reached: bool
    blockers: list[tuple[str, int]] = field(default_factory=list)  # (what stays, compressed bytes)
    seconds: float = 0.0
    by_packages: bool = False
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"limit_bytes": self.limit, "limit": self.limit_text, "margin_bytes": self.margin,
                "target_bytes": self.target, "uki_before_bytes": self.uki_before, "uki_after_bytes": self.uki_after,
                "uki_after_high_bytes": self.uki_after_high, "estimated": self.exact_estimate,
                "reached": self.reached, "by_packages": self.by_packages, "seconds": round(self.seconds, 3),
                "os_exclude": [{"glob": g, "what": w, "saves_bytes": s, "removes_content": True}
                               for g, w, s in self.os_exclude],
                "extensions": [{"name": p.name, "paths": p.paths, "packages": p.packages, "exclude": p.exclude,
                                "entries": p.entries, "saves_bytes": p.saves, "uki_after_bytes": p.uki_after}
                               for p in self.extensions],
                "blockers": [{"what": w, "bytes": b} for w, b in self.blockers], "notes": self.notes}

    def render(self) -> str:
        how = "estimate" if self.exact_estimate else "fair ratio over newc bytes, no estimate"
        lines = [f"fit: UKI {format_size(self.uki_before)} now; limit {self.limit_text} less a margin of "
                 f"{format_size(self.margin)}: the estimate's upper band must end under {format_size(self.target)} "
                 f"({how}; {'by package' if self.by_packages else 'by folder: no package database'}; "
                 f"{self.seconds:.2f} s)"]
        if self.os_exclude:
            lines.append("  os.exclude (REMOVES content from the OS: it is in no extension either):")
            for glob, what, saves in self.os_exclude:
                lines.append(f"    {glob:<32} {what}, -{format_size(saves)}")
        if self.extensions:
            width = max(len(p.name) for p in self.extensions)
            lines.append(f"  {'extension':<{width}}  {'saves':>9}  {'UKI after':>9}  what")
            for p in self.extensions:
                what = [*p.packages, *p.paths]
                shown = ", ".join(what[:6]) + (f", ... ({len(what)} in all)" if len(what) > 6 else "")
                lines.append(f"  {p.name:<{width}}  {format_size(p.saves):>9}  {format_size(p.uki_after):>9}  {shown}"
                             + (f"  (exclude {len(p.exclude)})" if p.exclude else ""))
        verdict = (f"UKI {format_size(self.uki_after)} (up to {format_size(self.uki_after_high)}) against the limit "
                   f"{self.limit_text}: " + ("fits with the margin" if self.reached else "does NOT fit"))
        lines.append(verdict)
        if not self.reached:
            lines.append(f"  no boot-safe plan reaches it: {format_size(self.uki_after_high - self.target)} more would "
                         "have to go; what stays and blocks the rest:")
            for what, size in self.blockers:
                lines.append(f"    {format_size(size):>9}  {what}")
        for note in self.notes:
            lines.append(f"  note: {note}")
        return "\n".join(lines)


class _Sizer:
    """Compressed bytes a selection adds to the initrd: the estimator's figure, or a fair ratio."""

    def __init__(self, plan: Plan, estimator: Any, compression: str) -> None:
        self.plan, self.est, self.spec = plan, estimator, plan.spec
        self.ratio = FAIR_RATIO.get(compression, 0.4)
        self.zero = estimator.estimate(IntervalSet()).bytes if estimator is not None else 0

    def part(self, sel: IntervalSet) -> int:
        sel = sel.intersection(self.plan.initrd_base)
        if not sel:
            return 0
        if self.est is not None:
            return max(0, self.est.estimate(sel).bytes - self.zero)
        return int(self.plan.sums.cpio_bytes(sel) * self.ratio)

    def initrd(self, kept: IntervalSet) -> tuple[int, int]:
        """(expected, upper band) of the compressed initrd holding ``kept``."""
        if self.est is not None:
            e = self.est.estimate(kept)
            return e.bytes, e.high
        raw = self.plan.sums.cpio_bytes(kept) + TRAILER_BYTES + extra_entry_bytes(self.spec, self.plan.index, kept)
        n = int(raw * self.ratio)
        return n, n if self.ratio == 1.0 else int(n * 1.15)  # a fair ratio is a guess: a wide band


def _rel(index: TreeIndex, i: int) -> str:
    return os.fsdecode(index.path(i))


def _category_of_path(path: str) -> str:
    if path.startswith(("usr/lib/firmware", "lib/firmware")):
        return "firmware"
    if path.startswith("usr/lib/modules/"):
        return "modules"
    if any(path == d or path.startswith(d + "/") for d in DOC_FOLDERS):
        return "docs"
    return ""


def _name(text: str) -> str:
    """An extension name made from a package or folder name."""
    name = re.sub(r"[^A-Za-z0-9.-]+", "-", text).strip("-.") or "apps"
    return name[:60]


def propose_fit(spec: Spec, plan: Plan, layout: UkiLayout, estimator: Any = None, *, limit: int | None = None,
                limit_text: str | None = None, margin: float = 0.03, junk: bool = True) -> FitResult:
    """Propose the moves (see the module docstring) for ``plan`` under ``limit`` (default the
    spec's), keeping ``margin`` (a share of the limit) between the estimate's upper band and it."""
    started = time.perf_counter()
    index = plan.index
    limit = spec.uki.limit if limit is None else limit
    limit_text = limit_text or (spec.uki.limit_text if limit == spec.uki.limit else format_size(limit))
    margin_bytes = int(limit * margin)
    target = limit - margin_bytes
    sizer = _Sizer(plan, estimator, spec.uki.compression)
    notes: list[str] = []

    uki_before = layout.size(sizer.initrd(plan.initrd_after)[0])
    # the boot set as it will be with the proposed extensions: mounting their (erofs) images needs
    # the filesystem's modules and their dependencies in the UKI
    fs = ExtensionSpec(name="proposed").filesystem
    boot = plan.boot
    if all(e.filesystem != fs for e in spec.extensions):
        boot = boot_set(replace(spec, extensions=[*spec.extensions, ExtensionSpec(name="proposed")]), index)
    rules = Rules(spec, index, boot, read_hierarchies(index), plan.initrd_base)
    claimed = IntervalSet().union(*(e.selected for e in plan.extensions)) if plan.extensions else IntervalSet()
    claims = [(e.name, e.selected) for e in plan.extensions]
    kept = plan.initrd_after

    # 1. what should not be in the OS at all
    excludes: list[tuple[str, str, int]] = []
    if junk:
        base = plan.initrd_base
        for glob, what in JUNK:
            if glob in spec.os.exclude:
                continue
            hits = subtree_set(index, match(index, glob)).intersection(base)
            if boot is not None:
                hits = hits.difference(boot.entries)
            saves = sizer.part(hits)
            if hits and saves >= 4096:
                excludes.append((glob, what, saves))
                kept = kept.difference(hits)
        for mt_top in _stale_module_trees(spec, index):
            hits = subtree_set(index, [mt_top]).intersection(base).difference(claimed)
            saves = sizer.part(hits)
            if hits and saves:
                excludes.append((_rel(index, mt_top), "modules of a kernel other than the UKI's", saves))
                kept = kept.difference(hits)
                claimed = claimed.union(hits)

    # 2. candidates
    try:
        _db, tp = tree_database(index)
    except UserError as exc:
        tp = None
        notes.append(f"planned by folder: {exc}")
    units: list[Unit] = []
    taken = claimed
    for folder in DOC_FOLDERS:  # docs, man pages, locales: folders across packages
        k = index.lookup(folder)
        if k is not None and index.is_dir(k):
            units += _folder_units(index, rules, k, claims, taken, None)
    doc_sel = IntervalSet().union(*(u.entries for u in units)) if units else IntervalSet()
    taken = taken.union(doc_sel)
    if tp is not None:
        owned = tp.owned()
        for key, pf in tp.files.items():
            if not pf.selection:
                continue
            movable, _stayed = rules.split(pf.selection.difference(taken), [("", taken)], IntervalSet())
            if movable:
                units.append(Unit("package", key, movable))
        pool = IntervalSet([(1, len(index))]).difference(owned)  # files no package owns
        for top in ("usr", "opt"):
            k = index.lookup(top)
            if k is not None and index.is_dir(k):
                units += _folder_units(index, rules, k, claims, taken, pool)
    else:
        for top in ("usr", "opt"):
            k = index.lookup(top)
            if k is not None and index.is_dir(k):
                units += _folder_units(index, rules, k, claims, taken, None)

    # 3. rank by compressed savings; take the biggest until the upper band is under the target
    for u in units:
        u.saves = sizer.part(u.entries)
    units = [u for u in units if u.saves >= MIN_UNIT // (4 if u.kind == "path" and _category_of_path(u.name) else 1)]
    units.sort(key=lambda u: -u.saves)
    chosen: list[Unit] = []
    now, high = sizer.initrd(kept)
    for u in units:
        if layout.size(high) <= target:
            break
        chosen.append(u)
        kept = kept.difference(u.entries)
        # the sum of parts drifts from the whole; re-estimate every few picks
        if len(chosen) % 8 == 0 or u.saves > (layout.size(high) - target) / 2:
            now, high = sizer.initrd(with_ancestors(index, kept))
        else:
            now, high = now - u.saves, high - u.saves
    kept = with_ancestors(index, kept)
    now, high = sizer.initrd(kept)

    # 4. group into extensions
    need = max(1, uki_before - target)
    groups: dict[str, list[Unit]] = {}
    for u in chosen:
        u.category = _category(u, tp, need)
        groups.setdefault(u.category, []).append(u)
    order = sorted(groups, key=lambda c: -sum(u.saves for u in groups[c]))
    existing = {e.name.lower() for e in spec.extensions}
    proposals: list[Proposal] = []
    progress = plan.initrd_after
    for g, _what, _s in excludes:
        progress = progress.difference(subtree_set(index, match(index, g)))
    prev = layout.size(sizer.initrd(with_ancestors(index, progress))[0])
    for cat in order:
        name = _name(cat)
        n = 2
        while name.lower() in existing:
            name, n = f"{_name(cat)}-{n}", n + 1
        existing.add(name.lower())
        us = groups[cat]
        sel = IntervalSet().union(*(u.entries for u in us))
        progress = progress.difference(sel)
        after = layout.size(sizer.initrd(with_ancestors(index, progress))[0])
        proposals.append(Proposal(name, [u.name for u in us if u.kind == "path"],
                                  sorted(u.name for u in us if u.kind == "package"),
                                  [x for u in us for x in u.exclude], len(sel), prev - after, after))
        prev = after

    reached = layout.size(high) <= target
    result = FitResult(limit, limit_text, margin_bytes, target, uki_before, layout.size(now), layout.size(high),
                       estimator is not None, excludes, proposals, reached, by_packages=tp is not None, notes=notes)
    if not reached:
        result.blockers = _blockers(index, rules, kept, sizer)
    result.seconds = time.perf_counter() - started
    return result


def _category(u: Unit, tp: Any, need: int) -> str:
    if u.kind == "path":
        cat = _category_of_path(u.name)
        if cat:
            return cat
        if u.saves >= BIG_SHARE * need:
            return os.path.basename(u.name)
        return "apps"
    pkg = tp.db.packages[u.name] if tp is not None else None
    paths = [_rel(tp.index, k) for k in list(u.entries.indices())[:50]] if tp is not None else []
    cats = [_category_of_path(p) for p in paths]
    for cat in ("firmware", "modules", "docs"):
        if cats and cats.count(cat) * 2 >= len(cats):
            return cat
    if pkg is not None:
        if "firmware" in pkg.name:
            return "firmware"
        if pkg.section.endswith("doc") or pkg.name.endswith("-doc"):
            return "docs"
        if u.saves >= BIG_SHARE * need:
            return pkg.source or pkg.name
    return "apps"


def _folder_units(index: TreeIndex, rules: Rules, k: int, claims: list, taken: IntervalSet,
                  pool: IntervalSet | None, depth: int = 0) -> list[Unit]:
    """Folder ``k`` as one unit when it may move whole (or with a few excludes), else its children."""
    sel = subtree_set(index, [k]).difference(taken)
    if pool is not None:
        sel = sel.intersection(pool)
    if not sel:
        return []
    movable, stayed = rules.split(sel, claims, IntervalSet())
    if not movable:
        return []
    whole = pool is None or not subtree_set(index, [k]).difference(pool).difference(taken)
    kept = IntervalSet().union(*(s.entries for s in stayed)) if stayed else IntervalSet()
    path = _rel(index, k)
    if whole and not taken.intersection(subtree_set(index, [k])) and not _too_broad(path) and rules.hier.covers(path):
        if not kept:
            return [Unit("path", path, movable)]
        tops = _exclude_tops(index, k, kept)
        if len(tops) <= MAX_EXCLUDES and len(movable) > len(kept):
            return [Unit("path", path, movable, [_rel(index, t) for t in tops])]
    if depth > 12:
        return []
    out: list[Unit] = []
    for c in index.children(k):
        if index.is_dir(c):
            out += _folder_units(index, rules, c, claims, taken, pool, depth + 1)
        elif c in movable and path != "usr" and index.cpio[c] >= MIN_UNIT and rules.hier.covers(_rel(index, c)):
            out.append(  # a big file on its own (k3s, a GPU library)
                Unit("path", _rel(index, c), IntervalSet([(c, c + 1)])))
    return out


def _too_broad(path: str) -> bool:
    """Folders never proposed whole: the hierarchies' own folders (usr/lib, usr/share, usr/bin,
    opt) and the library folders every program loads from (usr/lib/x86_64-linux-gnu, usr/lib64)."""
    parts = path.split("/")
    if parts[0] not in ("usr", "opt") or len(parts) < (2 if parts[0] == "opt" else 3):
        return True
    if parts[0] == "usr" and parts[1] == "local" and len(parts) < 4:
        return True
    return len(parts) == 3 and parts[1] == "lib" and ("-linux-" in parts[2] or parts[2] in ("lib64", "lib32"))


def _exclude_tops(index: TreeIndex, k: int, kept: IntervalSet) -> list[int]:
    """The fewest entries under folder ``k`` whose subtrees hold exactly the kept ones."""
    tops: list[int] = []
    for i in kept.indices():
        a = i
        while index.parent[a] != k and index.parent[a] >= 0:
            p = index.parent[a]
            span = subtree_set(index, [p])
            if span.difference(kept):  # the parent holds movable entries too: stop below it
                break
            a = p
        if a not in tops:
            tops.append(a)
        if len(tops) > MAX_EXCLUDES:
            break
    return tops


def _stale_module_trees(spec: Spec, index: TreeIndex) -> list[int]:
    """``usr/lib/modules/RELEASE`` folders of releases other than the UKI kernel's."""
    from .ukiinputs import kernel_path, uname

    top = index.lookup("usr/lib/modules")
    if top is None or not index.is_dir(top):
        return []
    try:
        release = uname(spec, index, kernel_path(spec))
    except (UserError, OSError):
        return []
    if not release:
        return []
    names = [c for c in index.children(top) if index.is_dir(c)]
    if not any(os.fsdecode(index.names[c]) == release for c in names):
        return []
    return [c for c in names if os.fsdecode(index.names[c]) != release]


def _blockers(index: TreeIndex, rules: Rules, kept: IntervalSet, sizer: _Sizer) -> list[tuple[str, int]]:
    """What stays in the UKI and why, biggest first."""
    _movable, stayed = rules.split(kept, [], IntervalSet())
    out = [(f"{s.reason} (e.g. {s.example.split(' <- ')[0]})", sizer.part(s.entries)) for s in stayed]
    rest = kept.difference(IntervalSet().union(*(s.entries for s in stayed))) if stayed else kept
    out.append(("movable, but each piece too small to propose", sizer.part(rest)))
    return sorted(out, key=lambda x: -x[1])


def apply_fit(text: str, path: Any, spec: Spec, fit: FitResult) -> str:
    """The spec text with the proposal written in (comments kept): the os.exclude globs added,
    one extension per proposal."""
    from ..spec.edit import SpecEditor

    editor = SpecEditor(text, path)
    if fit.limit != spec.uki.limit:  # the limit the proposal was made for is the one to judge by
        editor.set_value(("uki", "limit"), fit.limit_text)
    if fit.os_exclude:
        editor.set_os_exclude([*spec.os.exclude, *(g for g, _w, _s in fit.os_exclude if g not in spec.os.exclude)])
    arch = host_architecture(spec) or (spec.extensions[0].architecture if spec.extensions else "x86-64")
    for p in fit.extensions:
        editor.add_extension(ExtensionSpec(name=p.name, paths=list(p.paths), exclude=list(p.exclude),
                                           packages=list(p.packages), release={"ID": "_any", "ARCHITECTURE": arch}))
    return editor.text


__all__ = ["FitResult", "Proposal", "apply_fit", "propose_fit"]
