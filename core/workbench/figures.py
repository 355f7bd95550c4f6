"""The workbench's figures for a :class:`~sysextant.core.workbench.session.Session`: the UKI
against its limit, each extension's saving, per-entry sums, what boot needs and why, package rows
(a front end draws them as it likes; nothing here knows how).

Read-only queries over the session's plan (nothing here edits the spec): the UKI forecast and
each extension's share of it, per-entry sums for a row (compressed bytes, newc bytes still in
the initrd, the extensions that take something below a folder), what boot needs and why, the
packages view's rows, and what a derived tree adds over a base. The rows' sums are cached per
plan and estimator: the tree list asks for them on every redraw.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..sizing.bootset import BootSet
from ..sizing.forecast import Figures, UkiLayout, extension_savings, forecast
from ..sizing.merge import Hierarchies, read_hierarchies
from ..sizing.plan import Plan
from ..spec.model import Spec
from ..tree.index import TreeIndex, scan
from ..tree.selection import IntervalSet, Sums

#: dm-verity with 4 KiB blocks and SHA-256 stores 32 bytes per 4 KiB block: 1/128, plus upper levels.
VERITY_FRACTION = 127
#: GPT, alignment, the signature partition and the filesystem's own metadata, roughly.
IMAGE_FIXED_OVERHEAD = 1024 * 1024 + 16 * 1024
IMAGE_INODE_BYTES = 64  # erofs extended inode, per entry


@dataclass(frozen=True)
class PackageRow:
    """One row of the packages view: an installed package over the scanned tree."""

    key: str  # the database key (``name`` or ``name:arch``)
    version: str
    files: int  # its files found in the tree
    cost: int  # what its files cost in the UKI initrd (compressed estimate, else newc bytes)
    outside: int  # files outside /usr and /opt or the merged hierarchies: they stay
    boot: int  # files in the boot set (or firmware its modules load): they stay
    movable: int  # files an extension may take
    ext: str | None = None  # the extension whose ``packages`` lists it
    held: int = 0  # files already in some extension (through its paths or packages)


@dataclass(frozen=True)
class DiffFilter:
    """What the scanned tree adds or changes over a base tree (the workbench's diff filter)."""

    base: str  # the base as the user named it
    shown: IntervalSet  # changed entries, what added folders hold, and their folders
    added: int
    changed: int
    deleted: int
    carried: int  # of the added or changed: under the hierarchies the base merges
    bytes: int

@dataclass(frozen=True)
class ExtensionFigures:
    """One extension's figures: what it takes and what it saves the UKI."""

    name: str
    paths: tuple[str, ...]
    entries: int
    bytes: int  # apparent bytes of the files it takes, hardlinks once, nested marks once
    image_bytes: int  # rough image size: allocated bytes + inodes + verity + partition overhead
    initrd_saved: int  # exact newc bytes it takes out of the initrd
    special: int
    uki_saved: int = 0  # what it takes off the UKI: compressed estimate, or initrd_saved without one
    uki_saved_estimated: bool = False




class SessionFigures:
    """The figures half of :class:`~sysextant.core.workbench.session.Session` (which holds the
    state below and invalidates the caches when the spec or the tree changes)."""

    path: Path
    spec: Spec
    index: TreeIndex | None
    sums: Sums | None
    plan: Plan | None
    estimator: Any  # the best estimator at hand (Session.forecaster's), or None
    _layout: UkiLayout | None  # see layout()
    _fig_cache: tuple[Plan, Any, Figures] | None  # (plan, estimator, figures)
    #: compressed figure per entry for (initrd base, estimator): the tree list asks per row
    _squeezed: tuple[IntervalSet, Any, dict[int, int]] | None
    #: the packages view's marks-independent figures: (key, rows by database key)
    _pkg_rows: tuple[tuple, dict[str, PackageRow]] | None

    # -- figures ------------------------------------------------------------------------------
    def layout(self) -> UkiLayout:
        """The UKI's exact PE layout around the initrd (cached per spec: parsed once)."""
        if self._layout is None:
            self._layout = UkiLayout(self.spec, self.index)
        return self._layout

    def _uki_size(self, initrd: int) -> int:
        return self.layout().size(initrd)

    def estimator_changed(self) -> None:
        """The estimator learnt more (a group compressed at the target level, a calibration):
        figures are computed afresh."""
        self._fig_cache = None
        self._squeezed = None

    def figures(self) -> Figures | None:
        """The gauge figures for the current plan (None until the tree is scanned)."""
        plan = self.plan
        if plan is None:
            return None
        cached = self._fig_cache
        if cached is not None and cached[0] is plan and cached[1] is self.estimator and self._layout is not None:
            return cached[2]
        fig = self._figures(plan)
        self._fig_cache = (plan, self.estimator, fig)
        return fig

    def _figures(self, plan: Plan) -> Figures:
        return forecast(self.spec, plan, self.layout(), self.estimator)

    def extension_figures(self) -> list[ExtensionFigures]:
        """Per extension: entries, bytes, rough image size, initrd bytes saved."""
        plan, sums = self.plan, self.sums
        savings = extension_savings(plan, self.layout(), self.estimator) if plan is not None else {}
        out = []
        for ext in self.spec.extensions:
            ep = next((e for e in plan.extensions if e.name == ext.name), None) if plan else None
            if ep is None or sums is None:
                out.append(ExtensionFigures(ext.name, tuple(ext.paths), 0, 0, 0, 0, 0))
                continue
            alloc = sums.allocated(ep.selected)
            data = alloc + ep.entries * IMAGE_INODE_BYTES
            image = data + data // VERITY_FRACTION + IMAGE_FIXED_OVERHEAD if ep.entries else 0
            saved = savings.get(ext.name, ep.initrd_bytes)
            estimated = self.estimator is not None and bool(ep.entries)
            out.append(ExtensionFigures(ext.name, tuple(ext.paths), ep.entries, ep.bytes, image, ep.initrd_bytes,
                                        len(ep.special), saved, estimated))
        return out

    def owner(self, i: int) -> str | None:
        return self.plan.owner(i) if self.plan is not None else None

    def _spans(self, i: int) -> list[tuple[int, int]]:
        """Entry ``i`` and its subtree as half-open index ranges (a subtree is contiguous, but
        not adjacent to its folder: see :mod:`sysextant.core.tree.index`)."""
        assert self.index is not None
        sub = self.index.subtree(i)
        return [(i, i + 1), (sub.start, sub.stop)] if sub else [(i, i + 1)]

    @staticmethod
    def _within(spans: list[tuple[int, int]], k: int) -> bool:
        return any(lo <= k < hi for lo, hi in spans)

    def owners_in(self, i: int) -> list[str]:
        """Extensions that take entry ``i`` or anything below it (for a folder's tag)."""
        plan, index = self.plan, self.index
        if plan is None or index is None:
            return []
        spans = self._spans(i)
        out = []
        for ep in plan.extensions:
            if any(next(ep.selected.clip(lo, hi), None) is not None for lo, hi in spans):
                out.append(ep.name)
        return out

    def compressed_bytes(self, i: int) -> int | None:
        """Estimated compressed bytes entry ``i`` and its subtree take in the initrd (what moving
        them out saves, roughly; 0 for what the initrd never holds); None until the estimator
        is ready."""
        plan, index, est = self.plan, self.index, self.estimator
        if plan is None or index is None or est is None:
            return None
        cached = self._squeezed
        if cached is None or cached[0] is not plan.initrd_base or cached[1] is not est:
            # the figure depends on the initrd base and the estimator only, not on the marks
            cached = self._squeezed = (plan.initrd_base, est, {-1: est.estimate(IntervalSet()).bytes})
        figures = cached[2]
        value = figures.get(i)
        if value is None:
            kept = IntervalSet(self._spans(i)).intersection(plan.initrd_base)
            value = figures[i] = max(0, est.estimate(kept).bytes - figures[-1]) if kept else 0
        return value

    def kept_cpio(self, i: int) -> int:
        """newc bytes of entry ``i`` and its subtree that are still in the initrd (display only:
        hardlink corrections are left out)."""
        plan, sums, index = self.plan, self.sums, self.index
        if plan is None or sums is None or index is None:
            return 0
        after, prefix = plan.initrd_after, sums.cpio
        return sum(prefix[e] - prefix[s] for lo, hi in self._spans(i) for s, e in after.clip(lo, hi))

    # -- what boot needs --------------------------------------------------------------------
    def boot(self) -> BootSet | None:
        """What must stay in the UKI (the plan's boot set, computed once per tree and boot-relevant
        spec fields, so marks stay as fast as before)."""
        return self.plan.boot if self.plan is not None else None

    def boot_reason(self, i: int) -> str | None:
        """Why entry ``i`` must stay in the UKI (its chain of reasons), or None. Firmware that
        modules kept in the UKI load is named too, marked as a should."""
        boot = self.boot()
        if boot is None or not 0 < i < len(boot.index):
            return None
        if i in boot.entries:
            return boot.chain(i)
        if i in boot.soft:
            return f"{boot.chain(i)} (should stay: a device probed before the merge would miss it)"
        return None

    def boot_count(self, i: int) -> int:
        """How many entries of folder ``i`` (itself included) must stay in the UKI to boot."""
        boot = self.boot()
        if boot is None or not 0 <= i < len(boot.index):
            return 0
        return boot.count(i)

    def hierarchies(self) -> Hierarchies:
        """What the OS merges from extensions, read from the tree once per scan."""
        cached = getattr(self, "_hierarchies", None)
        if cached is None or cached[0] is not self.index:
            cached = self._hierarchies = (self.index, read_hierarchies(self.index))
        return cached[1]

    # -- packages -----------------------------------------------------------------------------
    def package_db(self) -> tuple[Any, str | None]:
        """The tree's package database over the index (:class:`TreePackages`, read once per scan)
        and None, or None and why there is none."""
        from ..sizing.packages import tree_database

        if self.index is None or self.plan is None:
            return None, "the tree is still being scanned"
        try:
            db, tp = tree_database(self.index)
        except UserError as exc:
            return None, str(exc)
        if tp is None:
            return None, (f"the OS tree {self.spec.os.root} has no package database (dpkg var/lib/dpkg/status, "
                          "rpm rpmdb.sqlite, apk lib/apk/db/installed)")
        return tp, None

    def package_of(self, i: int) -> list[str]:
        """The packages that installed entry ``i`` (empty without a database)."""
        tp, _why = self.package_db()
        return tp.owners(i) if tp is not None else []

    def package_rows(self) -> list[PackageRow]:
        """Every package with files in the tree, the costliest first (see :class:`PackageRow`)."""
        from ..sizing.packages import Rules

        tp, _why = self.package_db()
        plan, index, sums = self.plan, self.index, self.sums
        if tp is None or plan is None or index is None or sums is None:
            return []
        est, boot = self.estimator, self.boot()
        key = (id(index), id(tp), est, id(boot), tuple(self.spec.os.exclude), self.spec.uki.init)
        if self._pkg_rows is None or self._pkg_rows[0] != key:
            rules = Rules(self.spec, index, boot, self.hierarchies(), plan.initrd_base)
            zero = est.estimate(IntervalSet()).bytes if est is not None else 0
            rows: dict[str, PackageRow] = {}
            for name, pf in tp.files.items():
                if not pf.entries:
                    continue
                movable, stayed = rules.split(pf.selection, [], IntervalSet())
                outside = sum(len(x.entries) for x in stayed if x.reason.startswith("outside"))
                booted = sum(len(x.entries) for x in stayed if "boot" in x.reason or "firmware" in x.reason)
                kept = pf.selection.intersection(plan.initrd_base)
                cost = (max(0, est.estimate(kept).bytes - zero) if est is not None else sums.cpio_bytes(kept)) if kept else 0
                rows[name] = PackageRow(name, pf.package.version, len(pf.entries), cost, outside, booted, len(movable))
            self._pkg_rows = (key, rows)
        rows = self._pkg_rows[1]
        listed = {p: e.name for e in self.spec.extensions for p in e.packages}
        held = IntervalSet().union(*(e.selected for e in plan.extensions)) if plan.extensions else IntervalSet()
        out = []
        for name, row in rows.items():
            pkg = tp.files[name].package
            ext = listed.get(name) or listed.get(pkg.name)
            taken = len(tp.files[name].selection.intersection(held)) if held else 0
            out.append(replace(row, ext=ext, held=taken))
        out.sort(key=lambda r: (-r.cost, r.key))
        return out

    def package_stays(self, key: str) -> list[tuple[str, int, str]]:
        """Why files of package ``key`` stay in the UKI: (reason, files, example), biggest first."""
        from ..sizing.packages import Rules

        tp, _why = self.package_db()
        if tp is None or key not in tp.files or self.index is None or self.plan is None:
            return []
        rules = Rules(self.spec, self.index, self.boot(), self.hierarchies(), self.plan.initrd_base)
        _movable, stayed = rules.split(tp.files[key].selection, [], IntervalSet())
        return sorted(((x.reason, len(x.entries), x.example) for x in stayed), key=lambda t: -t[1])

    # -- what a derived tree adds over a base -----------------------------------------------------
    def diff_base(self) -> str | None:
        """The base the diff filter starts with: ``from.base`` of an extension made from images."""
        for e in self.spec.extensions:
            if e.from_images is not None:
                return str(e.from_images.base)
        return None

    def diff_over(self, base: str, check: Callable[[], None] | None = None) -> DiffFilter:
        """What the scanned tree adds or changes over ``base`` (a folder or container image,
        relative to the spec's folder), compared by content (slow: run it off the UI thread)."""
        from ..sizing.imagediff import source_tree
        from ..tree.oci import platform_for_arch
        from ..tree.selection import subtree_set, with_ancestors
        from ..tree.treediff import diff_trees

        index = self.index
        if index is None:
            raise UserError("the tree is still being scanned")
        path = Path(base).expanduser()
        if not path.is_absolute():
            path = self.path.absolute().parent / path
        arch = self.spec.extensions[0].architecture if self.spec.extensions else "x86-64"
        root = source_tree(path, self.spec.os.platform or platform_for_arch(arch))
        if os.path.realpath(root) == os.path.realpath(os.fsdecode(index.root)):
            raise UserError(f"{base} is the workbench's own tree: nothing differs")
        base_index = scan(root, check=check)
        hier = read_hierarchies(base_index)
        diff = diff_trees(base_index, index, hier.covers, above=hier.above)
        found = [(c, k) for c in (*diff.carried, *diff.outside) if (k := index.lookup(c.path)) is not None]
        added = [k for c, k in found if c.kind == "added"]
        shown = subtree_set(index, added).union(IntervalSet((k, k + 1) for _c, k in found))
        shown = with_ancestors(index, shown)
        return DiffFilter(base, shown, len(added), len(found) - len(added), len(diff.deleted), len(diff.carried),
                          sum(c.bytes for c, _k in found))

