"""The workbench session: one spec, its scanned tree and plan, and the edits a user makes.

This is the engine half of ``sysextant SPEC``; the Textual app in :mod:`sysextant.tui` is a
view over it, and the tests drive it without a terminal. A session holds the spec file's text
and model, the tree index and the current :class:`~sysextant.core.sizing.plan.Plan`. Every user action
(mark, unmark, add/rename/remove an extension, undo) is an operation *as data*: it is checked
(refused with one clear reason), applied to the spec text through
:mod:`sysextant.core.spec.edit` (comments and key order kept), re-read with the spec loader,
re-planned, and saved atomically. Each applied operation pushes its inverse on the undo stack.

Refusal rules follow systemd-sysext(8): an extension holds only ``usr/`` and ``opt/``, never
``usr/lib/os-release`` or ``usr/lib/extension-release.d``, and no device nodes, FIFOs or sockets;
an entry belongs to at most one extension; what the UKI needs to boot (the kernel and the
``uki.init`` target) stays in the UKI. Nested marks are counted once (dua's rule, and
:func:`sysextant.core.sizing.plan.make_plan` drops them).
"""

from __future__ import annotations

import bisect
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..rules import FORBIDDEN_IN_EXTENSION, MERGED_TOPS, extension_name_problem
from ..sizing.bootset import BootSet
from ..sizing.forecast import Figures, UkiLayout, extension_savings, forecast
from ..sizing.merge import Hierarchies, read_hierarchies, unmerged
from ..sizing.plan import Plan, make_plan
from ..spec.model import ExtensionSpec, Spec
from ..tree.index import TreeIndex, scan
from ..tree.selection import IntervalSet, Sums

#: dm-verity with 4 KiB blocks and SHA-256 stores 32 bytes per 4 KiB block: 1/128, plus upper levels.
VERITY_FRACTION = 127
#: GPT, alignment, the signature partition and the filesystem's own metadata, roughly.
IMAGE_FIXED_OVERHEAD = 1024 * 1024 + 16 * 1024
IMAGE_INODE_BYTES = 64  # erofs extended inode, per entry

#: Paths an extension image must never hold (systemd-sysext refuses or overwrites them).
FORBIDDEN = tuple(p.encode() for p in FORBIDDEN_IN_EXTENSION)


# --------------------------------------------------------------------------------------------
# Operations as data


@dataclass(frozen=True)
class SetPaths:
    """Replace an extension's ``paths`` list (and its ``exclude`` list, when given)."""

    ext: str
    paths: tuple[str, ...]
    label: str = ""
    exclude: tuple[str, ...] | None = None
    drop_exclude: bool = False  # remove the exclude key (the undo of an edit that added it)


@dataclass(frozen=True)
class AddExtension:
    ext: ExtensionSpec
    label: str = ""


@dataclass(frozen=True)
class RenameExtension:
    old: str
    new: str
    label: str = ""


@dataclass(frozen=True)
class RemoveExtension:
    name: str
    label: str = ""


@dataclass(frozen=True)
class SetOsExclude:
    """Replace ``os.exclude``: what is left out of the UKI, and so of the booted OS."""

    globs: tuple[str, ...]
    label: str = ""


@dataclass(frozen=True)
class SetPackages:
    """Replace an extension's ``packages`` list (None removes the key: the undo of adding it)."""

    ext: str
    packages: tuple[str, ...] | None
    label: str = ""


@dataclass(frozen=True)
class SetText:
    """Replace the whole spec text: a fit proposal applied in one step, and its undo."""

    text: str
    label: str = ""


Operation = SetPaths | AddExtension | RenameExtension | RemoveExtension | SetOsExclude | SetPackages | SetText


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


# --------------------------------------------------------------------------------------------
# Figures


@dataclass(frozen=True)
class ExtensionFigures:
    """One row of the extensions panel."""

    name: str
    paths: tuple[str, ...]
    entries: int
    bytes: int  # apparent bytes of the files it takes, hardlinks once, nested marks once
    image_bytes: int  # rough image size: allocated bytes + inodes + verity + partition overhead
    initrd_saved: int  # exact newc bytes it takes out of the initrd
    special: int
    uki_saved: int = 0  # what it takes off the UKI: compressed estimate, or initrd_saved without one
    uki_saved_estimated: bool = False


@dataclass(frozen=True)
class Outcome:
    """The result of an operation: refused (``ok`` False, ``message`` says why) or applied."""

    ok: bool
    message: str
    before: Figures | None = None
    after: Figures | None = None

    @property
    def delta(self) -> int:
        """Change of the predicted UKI size (negative = smaller)."""
        if self.before is None or self.after is None:
            return 0
        return self.after.uki_bytes - self.before.uki_bytes

    @property
    def cpio_delta(self) -> int:
        if self.before is None or self.after is None:
            return 0
        return self.after.initrd_cpio - self.before.initrd_cpio


@dataclass
class Reload:
    """What re-reading the spec from disk found."""

    changed: bool  # the text differs from what the session last wrote or read
    ok: bool  # the new text loaded (else ``problems`` says why and the last good spec is kept)
    rescan: bool = False  # os.root changed: the tree must be scanned again
    problems: list[Any] = field(default_factory=list)  # spec.Problem items (file, line, column, message, hint)


def _refuse(message: str) -> Outcome:
    return Outcome(False, message)


def _rel(index: TreeIndex, i: int) -> str:
    return os.fsdecode(index.path(i))


class Session:
    """A spec being worked on. Create with :meth:`open`; scan or attach an index before marking."""

    def __init__(self, path: Path, text: str, spec: Spec) -> None:
        self.path = Path(path)
        self.text = text
        self.spec = spec
        self.index: TreeIndex | None = None
        self.sums: Sums | None = None
        self.plan: Plan | None = None
        self.estimator: Any = None  # a prepared core.estimate.Estimator, when available
        self.undo_stack: list[tuple[Operation, str]] = []  # (inverse, what it undoes)
        self.pending_text: str | None = None  # a save that failed; retried on the next change
        self.save_error: str | None = None
        #: problems of the file on disk when it failed to load: edits are refused until it is fixed
        self.disk_problems: list[Any] = []
        self._layout: UkiLayout | None = None  # see layout()
        self._fig_cache: tuple[Plan, Any, Figures] | None = None  # (plan, estimator, figures)
        #: compressed figure per entry for (initrd base, estimator): the tree list asks per row
        self._squeezed: tuple[IntervalSet, Any, dict[int, int]] | None = None
        #: the packages view's marks-independent figures: (key, rows by database key)
        self._pkg_rows: tuple[tuple, dict[str, PackageRow]] | None = None

    # -- loading ------------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> Session:
        """Read the spec at ``path``; raises ``SpecError`` (a UserError listing problems)."""
        from ..spec.load import loads_spec, read_spec_text

        path = Path(path)
        text = read_spec_text(path)  # never waits on a FIFO put in the spec's place
        return cls(path, text, loads_spec(text, path))

    @property
    def root(self) -> Path:
        return self.spec.os.root

    @property
    def ready(self) -> bool:
        """The tree is fully scanned and planned: marks can be made."""
        return self.plan is not None

    def scan(self, *, progress: Callable[[TreeIndex], None] | None = None, every: int = 5000,
             check: Callable[[], None] | None = None) -> TreeIndex:
        """Scan the spec's OS tree (slow: run it off the UI thread) and plan it."""
        root = self.spec.os.root
        index = scan(root, progress=progress, every=every, check=check)
        self.attach(index)
        return index

    def attach(self, index: TreeIndex, sums: Sums | None = None) -> None:
        """Use a (complete) index of the spec's tree and plan the spec against it."""
        self.index = index
        self.sums = sums if sums is not None else Sums(index)
        self.estimator = None
        self.plan = make_plan(self.spec, index, self.sums)

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
            sel = ep.selected
            for lo, hi in spans:
                k = bisect.bisect_right(sel.starts, hi - 1) - 1
                if k >= 0 and sel.ends[k] > lo:
                    out.append(ep.name)
                    break
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
        after = plan.initrd_after
        prefix = sums.cpio
        total = 0
        for lo, hi in self._spans(i):
            k = max(0, bisect.bisect_right(after.starts, lo) - 1)
            while k < len(after.starts) and after.starts[k] < hi:
                s, e = max(after.starts[k], lo), min(after.ends[k], hi)
                if s < e:
                    total += prefix[e] - prefix[s]
                k += 1
        return total

    # -- checks -------------------------------------------------------------------------------
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

    def mark_all_but_boot(self, i: int, ext: str | None) -> Outcome:
        """Mark folder ``i`` into ``ext`` with excludes for the entries boot needs (its kept
        folders whole, else the entries themselves), as one undoable step."""
        boot, index = self.boot(), self.index
        if boot is None or index is None or ext is None or self.spec.extension(ext) is None:
            return self.mark(i, ext)  # the same refusal a plain mark gives
        needed = self.boot_count(i)
        if not needed:
            return self.mark(i, ext)
        if i in boot.entries:
            return _refuse(f"{_rel(index, i)} itself is needed to boot: {boot.chain(i).split(' <- ', 1)[-1]}")
        text = _rel(index, i)
        span = IntervalSet(self._spans(i))
        hit = span.intersection(boot.entries)
        keep: dict[int, None] = {}
        for k in hit.indices():
            a = k
            while a > i and a not in boot.reasons:
                a = index.parent[a]
            keep.setdefault(a if a > i else k, None)
        exclude = [_rel(index, k) for k in keep]
        why = self.refusal(i, ext, ignore_boot=True)
        if why:
            return _refuse(why)
        e = self.spec.extension(ext)
        paths = [p for p in e.paths if p != text]
        excludes = [x for x in e.exclude if x not in exclude] + exclude
        return self.apply(SetPaths(ext, (*paths, text), f"mark {text} into {ext} but the {len(exclude)} "
                                   f"entr{'y' if len(exclude) == 1 else 'ies'} boot needs "
                                   f"({needed:,} entr{'y' if needed == 1 else 'ies'} stay in the UKI)",
                                   exclude=tuple(excludes)))

    def hierarchies(self) -> Hierarchies:
        """What the OS merges from extensions, read from the tree once per scan."""
        cached = getattr(self, "_hierarchies", None)
        if cached is None or cached[0] is not self.index:
            cached = self._hierarchies = (self.index, read_hierarchies(self.index))
        return cached[1]

    def refusal(self, i: int, ext: str | None, *, ignore_boot: bool = False) -> str | None:
        """Why entry ``i`` cannot be marked into extension ``ext``, or None when it can
        (``ignore_boot``: as if what boot needs were excluded)."""
        index, plan = self.index, self.plan
        if index is None or plan is None:
            return "the tree is still being scanned; mark when the scan is done"
        if ext is None or self.spec.extension(ext) is None:
            return "there is no extension to mark into yet: press + to add one"
        if i <= 0 or i >= len(index):
            return "the root of the tree cannot be marked; mark folders under usr/ or opt/"
        rel = index.path(i)
        text = os.fsdecode(rel)
        top = rel.split(b"/", 1)[0]
        if top.decode(errors="replace") not in MERGED_TOPS:
            return (f"{text} is outside usr/ and opt/: systemd-sysext merges only /usr and /opt"
                    + ("; x leaves it out of the UKI (os.exclude)" if self.os_exclude_refusal(i) is None else ""))
        spans = self._spans(i)
        hier = self.hierarchies()
        if not hier.covers(text) and not hier.above(text):
            return (f"{text} is outside the hierarchies this OS merges ({', '.join(hier.paths)}; "
                    f"{hier.source}): its files would never appear")
        lost = unmerged(index, hier, IntervalSet(spans))
        if lost:
            return (f"{text} holds {len(lost):,} entries outside the hierarchies this OS merges, e.g. "
                    f"{_rel(index, lost.starts[0])} ({hier.source}); mark the folders inside them instead")
        for bad in FORBIDDEN:
            k = index.lookup(bad)
            if k is not None and self._within(spans, k):
                what = ("the OS release file, which systemd-sysext refuses in an extension"
                        if bad.endswith(b"os-release") else "the extension release folder sysextant writes itself")
                if k == i:  # not "usr/lib/os-release holds usr/lib/os-release"
                    return f"{text} is {what}"
                return f"{text} holds {os.fsdecode(bad)}, {what}; mark its other folders instead"
        boot = self.boot()
        if boot is not None and not ignore_boot:
            if i in boot.entries:
                return f"{text} is needed to boot: {boot.chain(i).split(' <- ', 1)[-1]}"
            inside = IntervalSet(spans).intersection(boot.entries)
            if inside:
                n = len(inside)
                first, _, rest = boot.chain(inside.starts[0]).partition(" <- ")
                if n == 1:
                    return f"{text} holds {first}, needed to boot: {rest}; mark its other entries instead"
                return (f"{text} holds {n:,} entries needed to boot, e.g. {first} <- {rest}; "
                        "mark all but what boot needs instead")
        specials = index.special  # in index order, so sorted
        if not (stat.S_ISREG(index.mode[i]) or stat.S_ISDIR(index.mode[i]) or stat.S_ISLNK(index.mode[i])):
            return f"{text} is a special file (device, FIFO or socket), which an extension cannot carry"
        for lo, hi in spans[1:]:
            s = bisect.bisect_left(specials, lo)
            if s < len(specials) and specials[s] < hi:
                n = bisect.bisect_left(specials, hi) - s
                return (f"{text} holds {n} special file(s) such as {_rel(index, specials[s])}, which an "
                        "extension cannot carry")
        mine = IntervalSet(spans)
        for ep in plan.extensions:
            if ep.name == ext:
                continue
            if i in ep.selected:
                return f"{text} is already in extension {ep.name}"
            both = ep.selected.intersection(mine)
            if both:
                return (f"{text} holds {len(both):,} entries already in extension {ep.name} "
                        f"(e.g. {_rel(index, both.starts[0])})")
        return None

    # -- marking ------------------------------------------------------------------------------
    def marked_paths(self, ext: str) -> list[str]:
        e = self.spec.extension(ext)
        return list(e.paths) if e else []

    def toggle(self, i: int, ext: str | None) -> Outcome:
        """Space: unmark ``i`` if it is one of ``ext``'s paths, else mark it."""
        if (self.index is not None and ext is not None and 0 < i < len(self.index)
                and _rel(self.index, i) in self.marked_paths(ext)):
            return self.unmark(i, ext)
        return self.mark(i, ext)

    def mark(self, i: int, ext: str | None) -> Outcome:
        why = self.refusal(i, ext)
        if why:
            return _refuse(why)
        assert self.index is not None and self.plan is not None and ext is not None
        index = self.index
        text = _rel(index, i)
        paths = self.marked_paths(ext)
        if text in paths:
            return _refuse(f"{text} is already marked in {ext}")
        ep = next(e for e in self.plan.extensions if e.name == ext)
        if i in ep.selected:
            holder = next((m for m in ep.marks if m in index.ancestors(i) or m == i), None)
            via = f" through {_rel(index, holder)}" if holder is not None else ""
            return _refuse(f"{text} is already in {ext}{via}")
        nested = [p for p in paths if p.startswith(text + "/")]
        note = f" (holds {len(nested)} earlier mark(s), counted once)" if nested else ""
        return self.apply(SetPaths(ext, (*paths, text), f"mark {text} into {ext}{note}"))

    def unmark(self, i: int, ext: str) -> Outcome:
        if self.index is None:
            return _refuse("the tree is still being scanned")
        return self.unmark_path(ext, _rel(self.index, i))

    def unmark_path(self, ext: str, path: str) -> Outcome:
        paths = self.marked_paths(ext)
        if path not in paths:
            if self.spec.extension(ext) is None:
                return _refuse(f"there is no extension {ext}")
            return _refuse(f"{path} is not one of {ext}'s paths (a pattern or a folder above it marks it; "
                           "edit that path to change it)")
        return self.apply(SetPaths(ext, tuple(p for p in paths if p != path), f"unmark {path} from {ext}"))

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
            return None, (f"the OS tree {self.root} has no package database (dpkg var/lib/dpkg/status, "
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

    def toggle_package(self, key: str, ext: str | None) -> Outcome:
        """Space in the packages view: list package ``key`` in ``ext``'s ``packages`` (its files that
        may move go with it, resolved at plan time), or take it out again."""
        tp, why = self.package_db()
        if tp is None:
            return _refuse(why or "no package database")
        if ext is None or self.spec.extension(ext) is None:
            return _refuse("there is no extension to mark into yet: press + to add one")
        if key not in tp.files:
            return _refuse(f"there is no package {key} in the tree's {tp.db.describe()}")
        e = self.spec.extension(ext)
        assert e is not None
        name = tp.files[key].package.name
        mine = [p for p in e.packages if p in (key, name)]
        if mine:  # the last one out takes the key with it
            rest = tuple(p for p in e.packages if p not in mine)
            return self.apply(SetPackages(ext, rest or None, f"take package {key} out of {ext}"))
        other = next((x.name for x in self.spec.extensions if x.name != ext and
                      any(p in (key, name) for p in x.packages)), None)
        if other:
            return _refuse(f"package {key} is already in extension {other}")
        row = next((r for r in self.package_rows() if r.key == key), None)
        if row is not None and not row.movable:
            stays = "; ".join(f"{n:,} {reason}" for reason, n, _ex in self.package_stays(key)[:2])
            return _refuse(f"none of the {row.files:,} files of package {key} may move: {stays}")
        if row is not None and row.held >= row.movable:
            return _refuse(f"the files of package {key} that may move are already in an extension")
        stays = row.files - row.movable if row is not None else 0
        note = f" ({stays:,} of its files stay in the UKI: i says why)" if stays else ""
        return self.apply(SetPackages(ext, (*e.packages, key), f"mark package {key} into {ext}{note}"))

    # -- the fit planner ------------------------------------------------------------------------
    def propose_fit(self, limit: int | None = None, limit_text: str | None = None) -> Any:
        """What :func:`~sysextant.core.sizing.fit.propose_fit` proposes for the current plan (slow
        on a big tree: run it off the UI thread). Raises UserError before the scan is done."""
        from ..sizing.fit import propose_fit

        if self.plan is None:
            raise UserError("the tree is still being scanned; propose a fit when the scan is done")
        return propose_fit(self.spec, self.plan, self.layout(), self.estimator, limit=limit, limit_text=limit_text)

    def apply_fit(self, fit: Any) -> Outcome:
        """Write the proposal ``fit`` into the spec (comments kept) as one step that one undo reverts."""
        from ..sizing.fit import apply_fit

        if not fit.extensions and not fit.os_exclude:
            return _refuse("the proposal moves nothing")
        try:
            text = apply_fit(self.text, self.path, self.spec, fit)
        except UserError as exc:
            return _refuse(str(exc))
        parts = [f"{len(fit.extensions)} extension{'s' if len(fit.extensions) != 1 else ''}"]
        if fit.os_exclude:
            parts.append(f"{len(fit.os_exclude)} os.exclude glob{'s' if len(fit.os_exclude) != 1 else ''} "
                         "(content removed from the OS)")
        return self.apply(SetText(text, "apply the fit proposal: " + " and ".join(parts)))

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

    # -- excluding ----------------------------------------------------------------------------
    def exclude(self, i: int) -> Outcome:
        """Toggle entry ``i`` in the ``exclude:`` of the extension a folder mark puts it in (it
        then stays in the UKI); an excluded entry (or one in ``os.exclude``) is taken back."""
        index = self.index
        if index is None or self.plan is None:
            return _refuse("the tree is still being scanned; exclude when the scan is done")
        if i <= 0 or i >= len(index):
            return _refuse("the root of the tree cannot be excluded")
        text = _rel(index, i)
        for e in self.spec.extensions:
            if text in e.exclude:
                return self.apply(SetPaths(e.name, tuple(e.paths), f"take {text} back into {e.name} (no longer "
                                           "excluded)", exclude=tuple(x for x in e.exclude if x != text)))
        if text in self.spec.os.exclude:
            return self.apply(SetOsExclude(tuple(x for x in self.spec.os.exclude if x != text),
                                           f"take {text} back into the UKI (no longer in os.exclude)"))
        own = self.owner(i)
        if own is None:
            if self.os_exclude_refusal(i) is None:
                return _refuse(f"{text} is in no extension; leaving it out of the UKI entirely (os.exclude) "
                               "removes it from the booted OS")
            return _refuse(f"{text} is in no extension: x excludes an entry a marked folder puts in one")
        if text in self.marked_paths(own):
            return _refuse(f"{text} is one of {own}'s paths: space unmarks it")
        e = self.spec.extension(own)
        assert e is not None
        return self.apply(SetPaths(own, tuple(e.paths), f"exclude {text} from {own}: it stays in the UKI",
                                   exclude=(*e.exclude, text)))

    def os_exclude_refusal(self, i: int) -> str | None:
        """Why entry ``i`` (outside ``usr/`` and ``opt/``) cannot go into ``os.exclude``, or None."""
        index, plan = self.index, self.plan
        if index is None or plan is None:
            return "the tree is still being scanned"
        if i <= 0 or i >= len(index):
            return "the root of the tree cannot be left out"
        text = _rel(index, i)
        if text.split("/", 1)[0] in MERGED_TOPS:
            return f"{text} is under usr/ or opt/: mark it into an extension instead"
        if not IntervalSet(self._spans(i)).intersection(plan.initrd_base):
            return f"{text} is already left out of the UKI"
        boot = self.boot()
        if boot is not None and (i in boot.entries or self.boot_count(i)):
            n = max(1, self.boot_count(i))
            return f"{text} holds {n:,} entr{'y' if n == 1 else 'ies'} needed to boot"
        return None

    def os_exclude(self, i: int) -> Outcome:
        """Add entry ``i`` to ``os.exclude``: left out of the UKI, so gone from the booted OS."""
        why = self.os_exclude_refusal(i)
        if why:
            return _refuse(why)
        assert self.index is not None
        text = _rel(self.index, i)
        return self.apply(SetOsExclude((*self.spec.os.exclude, text),
                                       f"leave {text} out of the UKI (os.exclude): it is gone from the booted OS"))

    # -- extensions ---------------------------------------------------------------------------
    def add_extension(self, name: str) -> Outcome:
        name = name.strip()
        why = extension_name_problem(name)
        if why:
            return _refuse(why)
        if any(e.name.lower() == name.lower() for e in self.spec.extensions):
            return _refuse(f"an extension named {name} already exists")
        arch = self.spec.extensions[0].architecture if self.spec.extensions else "x86-64"
        ext = ExtensionSpec(name=name, release={"ID": "_any", "ARCHITECTURE": arch})
        return self.apply(AddExtension(ext, f"add extension {name}"))

    def rename_extension(self, old: str, new: str) -> Outcome:
        new = new.strip()
        if self.spec.extension(old) is None:
            return _refuse(f"there is no extension {old}")
        if new == old:
            return _refuse(f"the extension is already named {new}")
        why = extension_name_problem(new)
        if why:
            return _refuse(why)
        if any(e.name.lower() == new.lower() and e.name != old for e in self.spec.extensions):
            return _refuse(f"an extension named {new} already exists")
        return self.apply(RenameExtension(old, new, f"rename extension {old} to {new}"))

    def remove_extension(self, name: str) -> Outcome:
        if self.spec.extension(name) is None:
            return _refuse(f"there is no extension {name}")
        return self.apply(RemoveExtension(name, f"remove extension {name}"))

    # -- applying, undo, saving ------------------------------------------------------------------
    def _edit(self, op: Operation) -> tuple[str, Operation]:
        """The spec text after ``op`` and the operation that undoes it."""
        from ..spec.edit import SpecEditor

        editor = SpecEditor(self.text, self.path)
        if isinstance(op, SetPaths):
            old = self.spec.extension(op.ext)
            if old is None:
                raise UserError(f"there is no extension {op.ext}")
            editor.set_paths(op.ext, list(op.paths))
            if op.exclude is not None or op.drop_exclude:
                editor.set_exclude(op.ext, None if op.drop_exclude else list(op.exclude or ()))
            had_key = (*self._ext_key(op.ext), "exclude") in self.spec.locations
            inverse: Operation = SetPaths(op.ext, tuple(old.paths), op.label,
                                          None if op.exclude is None else tuple(old.exclude),
                                          drop_exclude=op.exclude is not None and not had_key)
        elif isinstance(op, AddExtension):
            editor.add_extension(op.ext)
            inverse = RemoveExtension(op.ext.name, op.label)
        elif isinstance(op, RenameExtension):
            editor.rename_extension(op.old, op.new)
            inverse = RenameExtension(op.new, op.old, op.label)
        elif isinstance(op, RemoveExtension):
            old = self.spec.extension(op.name)
            if old is None:
                raise UserError(f"there is no extension {op.name}")
            editor.remove_extension(op.name)
            inverse = AddExtension(replace(old, paths=list(old.paths), exclude=list(old.exclude),
                                           release=dict(old.release)), op.label)
        elif isinstance(op, SetOsExclude):
            editor.set_os_exclude(list(op.globs))
            inverse = SetOsExclude(tuple(self.spec.os.exclude), op.label)
        elif isinstance(op, SetPackages):
            old = self.spec.extension(op.ext)
            if old is None:
                raise UserError(f"there is no extension {op.ext}")
            editor.set_packages(op.ext, None if op.packages is None else list(op.packages))
            had_key = (*self._ext_key(op.ext), "packages") in self.spec.locations
            inverse = SetPackages(op.ext, tuple(old.packages) if had_key else None, op.label)
        elif isinstance(op, SetText):
            inverse = SetText(self.text, op.label)
            return op.text, inverse
        else:  # pragma: no cover - the union above is exhaustive
            raise TypeError(op)
        return editor.text, inverse

    def _ext_key(self, name: str) -> tuple[str, int]:
        """The spec key path of extension ``name`` (for :attr:`Spec.locations`)."""
        n = next((k for k, e in enumerate(self.spec.extensions) if e.name == name), -1)
        return ("extensions", n)

    def apply(self, op: Operation, *, record: bool = True) -> Outcome:
        """Apply ``op`` to the spec (checked by the loader), re-plan, save; push its inverse."""
        from ..spec.load import SpecError, loads_spec

        if self.disk_problems:
            p = self.disk_problems[0]
            where = f"line {p.line}: " if getattr(p, "line", 0) else ""
            return _refuse(f"the spec file has errors ({where}{p.message}); fix them first, so that saving "
                           "this change does not overwrite your edit")
        before = self.figures()
        try:
            text, inverse = self._edit(op)
            spec = loads_spec(text, self.path)
        except SpecError as exc:
            first = exc.problems[0] if exc.problems else None
            msg = first.message if first is not None else str(exc)
            return _refuse(f"the spec would not be valid: {msg}")
        except UserError as exc:
            return _refuse(str(exc))
        self._set_spec(text, spec)
        self.save()
        if record:
            self.undo_stack.append((inverse, op.label))
        after = self.figures()
        msg = op.label or "done"
        if self.save_error:
            msg += f" — NOT SAVED: {self.save_error}"
        return Outcome(True, msg, before, after)

    def undo(self) -> Outcome:
        if not self.undo_stack:
            return _refuse("nothing to undo")
        inverse, label = self.undo_stack.pop()
        result = self.apply(inverse, record=False)
        if not result.ok:
            return _refuse(f"cannot undo {label}: {result.message}")
        return replace(result, message=f"undid: {label}")

    def _set_spec(self, text: str, spec: Spec) -> None:
        old = self.spec
        self.text, self.spec = text, spec
        if (spec.uki.stub, spec.os.kernel, spec.uki.cmdline, spec.uki.uname, spec.uki.os_release,
                spec.signing) != (old.uki.stub, old.os.kernel, old.uki.cmdline, old.uki.uname,
                                  old.uki.os_release, old.signing):
            self._layout = None
        if (spec.uki.compression, spec.uki.level, spec.os.exclude, spec.uki.init) != (
                old.uki.compression, old.uki.level, old.os.exclude, old.uki.init):
            self.estimator = None  # its base or parameters changed: prepare again
        if self.index is not None and self.sums is not None:
            self.plan = make_plan(spec, self.index, self.sums)

    def save(self) -> bool:
        """Write the current text atomically; on failure keep it pending and say why."""
        from ..spec.edit import save_text_atomic

        try:
            save_text_atomic(self.path, self.text)
        except (OSError, UserError) as exc:
            self.pending_text = self.text
            self.save_error = str(exc) if isinstance(exc, UserError) else (exc.strerror or str(exc))
            return False
        self.pending_text = None
        self.save_error = None
        return True

    @property
    def unsaved(self) -> bool:
        return self.pending_text is not None

    # -- outside edits ------------------------------------------------------------------------
    def reload(self, text: str | None = None) -> Reload:
        """Take the spec file's current text (read from disk unless given).

        Our own saves come back as change events with identical text: those are ignored. A text
        that fails to load keeps the last good spec and returns the problems.
        """
        from ..spec.load import Problem, SpecError, loads_spec, read_spec_text

        if text is None:
            if not self.path.exists() and not self.path.is_symlink():
                return Reload(True, False, problems=[Problem(self.path, 0, 0, "the spec file was removed",
                                                             "the workbench keeps the last good spec")])
            try:
                text = read_spec_text(self.path)  # a FIFO swapped in is refused, not waited on
            except SpecError as exc:
                return Reload(True, False, problems=list(exc.problems))
        if text == self.text:
            self.disk_problems = []
            return Reload(False, True)
        try:
            spec = loads_spec(text, self.path)
        except SpecError as exc:
            self.disk_problems = list(exc.problems)
            return Reload(True, False, problems=self.disk_problems)
        rescan = spec.os.root != self.spec.os.root
        if rescan:
            self.text, self.spec = text, spec
            self.index = self.sums = self.plan = None
            self.estimator = None
            self._layout = None
        else:
            self._set_spec(text, spec)
        self.pending_text = None
        self.save_error = None
        self.disk_problems = []
        return Reload(True, True, rescan=rescan)
