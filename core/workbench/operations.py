"""The workbench's edits: every user action as an operation *as data*, its refusal rules, and how
it is spelt in the spec text.

Each action (mark, unmark, exclude, add/rename/remove an extension, a package, a fit proposal)
is checked first and refused with one clear reason, or turned into an :data:`Operation`;
:meth:`Session.apply <sysextant.core.workbench.session.Session.apply>` then writes it into the
spec text through :func:`edited` (:mod:`sysextant.core.spec.edit`: comments and key order kept),
which also gives the operation that undoes it.

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
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..rules import FORBIDDEN_IN_EXTENSION, MERGED_TOPS, extension_name_problem
from ..sizing.forecast import Figures
from ..sizing.merge import unmerged
from ..spec.model import ExtensionSpec, Spec
from ..tree.index import TreeIndex
from ..tree.selection import IntervalSet
from .figures import SessionFigures

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


def refuse(message: str) -> Outcome:
    return Outcome(False, message)


def _rel(index: TreeIndex, i: int) -> str:
    return os.fsdecode(index.path(i))




def edited(op: Operation, text: str, path: Path, spec: Spec) -> tuple[str, Operation]:
    """The spec text after ``op`` and the operation that undoes it."""
    from ..spec.edit import SpecEditor

    editor = SpecEditor(text, path)
    if isinstance(op, SetPaths):
        old = spec.extension(op.ext)
        if old is None:
            raise UserError(f"there is no extension {op.ext}")
        editor.set_paths(op.ext, list(op.paths))
        if op.exclude is not None or op.drop_exclude:
            editor.set_exclude(op.ext, None if op.drop_exclude else list(op.exclude or ()))
        had_key = (*_ext_key(spec, op.ext), "exclude") in spec.locations
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
        old = spec.extension(op.name)
        if old is None:
            raise UserError(f"there is no extension {op.name}")
        editor.remove_extension(op.name)
        inverse = AddExtension(replace(old, paths=list(old.paths), exclude=list(old.exclude),
                                       release=dict(old.release)), op.label)
    elif isinstance(op, SetOsExclude):
        editor.set_os_exclude(list(op.globs))
        inverse = SetOsExclude(tuple(spec.os.exclude), op.label)
    elif isinstance(op, SetPackages):
        old = spec.extension(op.ext)
        if old is None:
            raise UserError(f"there is no extension {op.ext}")
        editor.set_packages(op.ext, None if op.packages is None else list(op.packages))
        had_key = (*_ext_key(spec, op.ext), "packages") in spec.locations
        inverse = SetPackages(op.ext, tuple(old.packages) if had_key else None, op.label)
    elif isinstance(op, SetText):
        inverse = SetText(text, op.label)
        return op.text, inverse
    else:  # pragma: no cover - the union above is exhaustive
        raise TypeError(op)
    return editor.text, inverse



def _ext_key(spec: Spec, name: str) -> tuple[str, int]:
    """The spec key path of extension ``name`` (for :attr:`Spec.locations`)."""
    n = next((k for k, e in enumerate(spec.extensions) if e.name == name), -1)
    return ("extensions", n)


class SessionEdits(SessionFigures):
    """The edits half of :class:`~sysextant.core.workbench.session.Session`: each action checks
    its refusal rules, then hands an :data:`Operation` to the session's ``apply`` (which saves
    it and records its undo)."""

    text: str
    apply: Callable[..., Outcome]  # Session.apply(op, *, record=True)

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
            return refuse(f"{_rel(index, i)} itself is needed to boot: {boot.chain(i).split(' <- ', 1)[-1]}")
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
            return refuse(why)
        e = self.spec.extension(ext)
        paths = [p for p in e.paths if p != text]
        excludes = [x for x in e.exclude if x not in exclude] + exclude
        return self.apply(SetPaths(ext, (*paths, text), f"mark {text} into {ext} but the {len(exclude)} "
                                   f"entr{'y' if len(exclude) == 1 else 'ies'} boot needs "
                                   f"({needed:,} entr{'y' if needed == 1 else 'ies'} stay in the UKI)",
                                   exclude=tuple(excludes)))

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
                    f"{_rel(index, next(lost.indices()))} ({hier.source}); mark the folders inside them instead")
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
                first, _, rest = boot.chain(next(inside.indices())).partition(" <- ")
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
                        f"(e.g. {_rel(index, next(both.indices()))})")
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
            return refuse(why)
        assert self.index is not None and self.plan is not None and ext is not None
        index = self.index
        text = _rel(index, i)
        paths = self.marked_paths(ext)
        if text in paths:
            return refuse(f"{text} is already marked in {ext}")
        ep = next(e for e in self.plan.extensions if e.name == ext)
        if i in ep.selected:
            holder = next((m for m in ep.marks if m in index.ancestors(i) or m == i), None)
            via = f" through {_rel(index, holder)}" if holder is not None else ""
            return refuse(f"{text} is already in {ext}{via}")
        nested = [p for p in paths if p.startswith(text + "/")]
        note = f" (holds {len(nested)} earlier mark(s), counted once)" if nested else ""
        return self.apply(SetPaths(ext, (*paths, text), f"mark {text} into {ext}{note}"))

    def unmark(self, i: int, ext: str) -> Outcome:
        if self.index is None:
            return refuse("the tree is still being scanned")
        return self.unmark_path(ext, _rel(self.index, i))

    def unmark_path(self, ext: str, path: str) -> Outcome:
        paths = self.marked_paths(ext)
        if path not in paths:
            if self.spec.extension(ext) is None:
                return refuse(f"there is no extension {ext}")
            return refuse(f"{path} is not one of {ext}'s paths (a pattern or a folder above it marks it; "
                          "edit that path to change it)")
        return self.apply(SetPaths(ext, tuple(p for p in paths if p != path), f"unmark {path} from {ext}"))

    def toggle_package(self, key: str, ext: str | None) -> Outcome:
        """Space in the packages view: list package ``key`` in ``ext``'s ``packages`` (its files that
        may move go with it, resolved at plan time), or take it out again."""
        tp, why = self.package_db()
        if tp is None:
            return refuse(why or "no package database")
        if ext is None or self.spec.extension(ext) is None:
            return refuse("there is no extension to mark into yet: press + to add one")
        if key not in tp.files:
            return refuse(f"there is no package {key} in the tree's {tp.db.describe()}")
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
            return refuse(f"package {key} is already in extension {other}")
        row = next((r for r in self.package_rows() if r.key == key), None)
        if row is not None and not row.movable:
            stays = "; ".join(f"{n:,} {reason}" for reason, n, _ex in self.package_stays(key)[:2])
            return refuse(f"none of the {row.files:,} files of package {key} may move: {stays}")
        if row is not None and row.held >= row.movable:
            return refuse(f"the files of package {key} that may move are already in an extension")
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
            return refuse("the proposal moves nothing")
        try:
            text = apply_fit(self.text, self.path, self.spec, fit)
        except UserError as exc:
            return refuse(str(exc))
        parts = [f"{len(fit.extensions)} extension{'s' if len(fit.extensions) != 1 else ''}"]
        if fit.os_exclude:
            parts.append(f"{len(fit.os_exclude)} os.exclude glob{'s' if len(fit.os_exclude) != 1 else ''} "
                         "(content removed from the OS)")
        return self.apply(SetText(text, "apply the fit proposal: " + " and ".join(parts)))

    # -- excluding ----------------------------------------------------------------------------
    def exclude(self, i: int) -> Outcome:
        """Toggle entry ``i`` in the ``exclude:`` of the extension a folder mark puts it in (it
        then stays in the UKI); an excluded entry (or one in ``os.exclude``) is taken back."""
        index = self.index
        if index is None or self.plan is None:
            return refuse("the tree is still being scanned; exclude when the scan is done")
        if i <= 0 or i >= len(index):
            return refuse("the root of the tree cannot be excluded")
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
                return refuse(f"{text} is in no extension; leaving it out of the UKI entirely (os.exclude) "
                              "removes it from the booted OS")
            return refuse(f"{text} is in no extension: x excludes an entry a marked folder puts in one")
        if text in self.marked_paths(own):
            return refuse(f"{text} is one of {own}'s paths: space unmarks it")
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
            return refuse(why)
        assert self.index is not None
        text = _rel(self.index, i)
        return self.apply(SetOsExclude((*self.spec.os.exclude, text),
                                       f"leave {text} out of the UKI (os.exclude): it is gone from the booted OS"))

    # -- extensions ---------------------------------------------------------------------------
    def add_extension(self, name: str) -> Outcome:
        name = name.strip()
        why = extension_name_problem(name)
        if why:
            return refuse(why)
        if any(e.name.lower() == name.lower() for e in self.spec.extensions):
            return refuse(f"an extension named {name} already exists")
        arch = self.spec.extensions[0].architecture if self.spec.extensions else "x86-64"
        ext = ExtensionSpec(name=name, release={"ID": "_any", "ARCHITECTURE": arch})
        return self.apply(AddExtension(ext, f"add extension {name}"))

    def rename_extension(self, old: str, new: str) -> Outcome:
        new = new.strip()
        if self.spec.extension(old) is None:
            return refuse(f"there is no extension {old}")
        if new == old:
            return refuse(f"the extension is already named {new}")
        why = extension_name_problem(new)
        if why:
            return refuse(why)
        if any(e.name.lower() == new.lower() and e.name != old for e in self.spec.extensions):
            return refuse(f"an extension named {new} already exists")
        return self.apply(RenameExtension(old, new, f"rename extension {old} to {new}"))

    def remove_extension(self, name: str) -> Outcome:
        if self.spec.extension(name) is None:
            return refuse(f"there is no extension {name}")
        return self.apply(RemoveExtension(name, f"remove extension {name}"))
