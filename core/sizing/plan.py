"""A spec applied to a scanned tree: what each extension takes and what stays in the initrd.

Moving is logical: the tree is never touched. The UKI initrd holds every entry under the root
except what the top-level ``proc sys dev run tmp boot`` folders hold (they stay, empty, as mount
points) and ``os.exclude``, as Kairos packs it (plus ``/init`` when ``uki.init`` is set); the slimmed initrd leaves out what the extensions
take as well. All figures here are exact newc byte counts from the index.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from ..errors import UserError
from ..formats.cpio import extra_bytes
from ..formats.initrd import extra_paths, initrd_extra
from ..keys import private_key_warnings
from ..spec.load import splash_problem
from ..spec.model import INITRD_SKIP_TOP, Spec
from ..spec.outputs import output_problems
from ..tree.fsentry import host_path_in_tree
from ..tree.index import TRAILER_BYTES, TreeIndex, scan
from ..tree.selection import IntervalSet, Sums, match, subtree_set, with_ancestors
from ..units import format_size
from .bootset import BootSet, boot_set
from .imagediff import DiffSource, diff_source, source_bytes
from .init import init_problems, init_program
from .merge import read_hierarchies, release_problems, unmerged
from .modules import module_problems
from .packages import PackagePlan, render_packages, resolve_packages


@dataclass
class ExtensionPlan:
    name: str
    marks: list[int]  # entries named by the spec's paths (nested ones dropped)
    selected: IntervalSet  # marks and their subtrees, minus the extension's excludes
    entries: int
    bytes: int  # apparent bytes of the files it takes (hardlinks once)
    initrd_bytes: int  # cpio bytes it alone takes out of the initrd
    special: list[int] = field(default_factory=list)
    #: ``from: {image, base}``: the derived tree its content comes from (``selected`` is then empty:
    #: it takes nothing out of this tree)
    source: DiffSource | None = None


@dataclass
class Plan:
    spec: Spec
    index: TreeIndex
    sums: Sums
    extensions: list[ExtensionPlan]
    initrd_base: IntervalSet  # what the initrd would hold with no extension
    initrd_after: IntervalSet
    initrd_cpio_before: int
    initrd_cpio_after: int
    problems: list[str]
    warnings: list[str]
    boot: BootSet | None = None  # what must stay in the UKI
    packages: PackagePlan | None = None  # extensions[].packages resolved: what moved, what stayed and why

    def owner(self, i: int) -> str | None:
        """Name of the extension that takes entry ``i``, if any."""
        for ext in self.extensions:
            if i in ext.selected:
                return ext.name
        return None

    def render(self) -> str:
        return render(self)

    def to_json(self) -> dict:
        return {
            "spec": str(self.spec.path),
            "root": os.fsdecode(self.index.root),
            "extensions": [
                {"name": e.name, "entries": e.entries, "bytes": e.bytes, "initrd_cpio_bytes": e.initrd_bytes}
                for e in self.extensions
            ],
            "initrd_cpio_bytes": {"before": self.initrd_cpio_before, "after": self.initrd_cpio_after},
            "problems": self.problems,
            "warnings": self.warnings,
            "boot": None if self.boot is None else {
                "profile": self.boot.profile, "profile_source": self.boot.profile_source,
                "entries": len(self.boot.entries), "seconds": round(self.boot.seconds, 3)},
            "packages": [m.to_json(self.index) for m in self.packages.moves] if self.packages else [],
        }


def plan_spec(spec: Spec, index: TreeIndex | None = None) -> Plan:
    """Scan the spec's tree (unless an index is given) and plan it."""
    return make_plan(spec, index if index is not None else scan(spec.os.root))


def render(plan: Plan) -> str:
    """The human-readable plan `sysextant plan` prints."""
    lines = [f"spec {plan.spec.path}  ·  OS tree {os.fsdecode(plan.index.root)}"]
    width = max([len(e.name) for e in plan.extensions] + [9])
    lines.append(f"  {'extension':<{width}}  {'entries':>8}  {'bytes':>10}  {'initrd saved':>12}")
    for e in plan.extensions:
        lines.append(f"  {e.name:<{width}}  {e.entries:>8,}  {format_size(e.bytes):>10}  {format_size(e.initrd_bytes):>12}")
    lines.append(f"  initrd (newc, uncompressed): {format_size(plan.initrd_cpio_before)} before, "
                 f"{format_size(plan.initrd_cpio_after)} after ({plan.initrd_cpio_after:,} bytes)")
    lines += render_packages(plan.packages, plan.index)
    for w in plan.warnings:
        lines.append(f"warning: {w}")
    for p in plan.problems:
        lines.append(f"problem: {p}")
    return "\n".join(lines)


def extra_entry_bytes(spec: Spec, index: TreeIndex | None = None, selection: IntervalSet | None = None) -> int:
    """newc bytes of the entries sysextant adds to the initrd (the ``init -> uki.init`` link Kairos
    adds, the trust_in_uki certificate, the folders they need): the very entries the build
    writes (:func:`.initrd.initrd_extra`); 0 when there are none or the certificate is unreadable
    (which the plan reports)."""
    try:
        return extra_bytes(initrd_extra(spec, index, selection))
    except UserError:
        return 0


def init_entry_bytes(spec: Spec) -> int:
    """newc bytes of the entries sysextant adds, every parent folder counted (no tree at hand)."""
    return extra_entry_bytes(spec)


def initrd_base(spec: Spec, index: TreeIndex) -> IntervalSet:
    """Entries the initrd holds before any extension takes its share."""
    everything = IntervalSet([(1, len(index))])
    tops = [c for c in index.children(0) if index.names[c] in INITRD_SKIP_TOP]
    # their content stays out, the folders themselves stay in, empty, as mount points: a plain
    # systemd boot mounts nothing on /tmp, and systemd-sysext 252 cannot read an image's metadata
    # without it (seen booting the UKI: "Failed to read metadata for image ...")
    emptied = IntervalSet((sub.start, sub.stop) for c in tops if (sub := index.subtree(c)))
    skipped = [c for c in tops if not index.is_dir(c)]
    for path in extra_paths(spec):  # replaced by what sysextant adds there (the /init link, ...)
        parts = path.split(b"/")
        for n in range(1, len(parts) + 1):
            k = index.lookup(b"/".join(parts[:n]))
            if k is None:
                break
            if n == len(parts) or not index.is_dir(k):  # a file or link where a folder must be
                skipped.append(k)
                break
    for pattern in spec.os.exclude:
        skipped.extend(match(index, pattern))
    return everything.difference(subtree_set(index, skipped)).difference(emptied)


def _nested_dropped(index: TreeIndex, marks: list[int]) -> list[int]:
    marked = set(marks)
    return sorted(m for m in marked if not any(a in marked for a in index.ancestors(m)))


def make_plan(spec: Spec, index: TreeIndex, sums: Sums | None = None) -> Plan:
    """Resolve the spec's paths against the index and compute the exact figures."""
    sums = sums or Sums.of(index)
    problems: list[str] = output_problems(spec)  # an output that would destroy a key, the spec or the tree
    warnings: list[str] = []
    root_text = os.fsdecode(index.root)

    if index.lookup("etc/os-release") is None and index.lookup("usr/lib/os-release") is None:
        problems.append(f"{spec.where('os', 'root')}: {root_text} does not look like an OS tree "
                        "(no etc/os-release or usr/lib/os-release)")
    try:
        kernel_ok = os.path.isfile(host_path_in_tree(spec.os.root, spec.os.kernel))
    except OSError:
        kernel_ok = False
    if not kernel_ok:
        problems.append(f"{spec.where('os', 'kernel')}: kernel {spec.os.kernel} does not exist")
    splash_why = splash_problem(spec.uki.splash) if spec.uki.splash is not None else None
    if splash_why:
        problems.append(f"{spec.where('uki', 'splash')}: {splash_why}")
    warnings.extend(private_key_warnings(spec))
    outside = index.outside_link_example() if index.complete else None  # counted by the scan
    if outside is not None:
        first, inside, links = outside
        warnings.append(f"{spec.where('os', 'root')}: {index.outside_inodes:,} hardlinked file(s) in the OS tree "
                        f"also have links outside it, e.g. {os.fsdecode(index.path(first))} ({links} links, {inside} "
                        "in the tree); their content is packed all the same")

    ext_plans: list[ExtensionPlan] = []
    for n, ext in enumerate(spec.extensions):
        if ext.from_images is not None:  # content from a derived image: nothing of this tree moves
            src, found_problems, found_warnings = diff_source(spec, n, ext)
            problems += found_problems
            warnings += found_warnings
            taken = src.selected if src is not None else IntervalSet()
            ext_plans.append(ExtensionPlan(ext.name, [], IntervalSet(), len(taken),
                                           source_bytes(src) if src is not None else 0, 0, source=src))
            continue
        marks: list[int] = []
        for j, pattern in enumerate(ext.paths):
            found = match(index, pattern)
            if not found:
                problems.append(f"{spec.where('extensions', n, 'paths', j)}: {pattern} is not in the OS tree "
                                f"{root_text} (extension {ext.name})")
            marks.extend(found)
        excluded: list[int] = []
        for pattern in ext.exclude:
            excluded.extend(match(index, pattern))
        marks = _nested_dropped(index, marks)
        selected = subtree_set(index, marks).difference(subtree_set(index, excluded))
        special = [i for i in index.special if i in selected]
        if special:
            warnings.append(f"extension {ext.name} holds {len(special)} special file(s), e.g. "
                            f"{os.fsdecode(index.path(special[0]))}")
        ext_plans.append(ExtensionPlan(ext.name, marks, selected, len(selected), sums.apparent(selected), 0,
                                       special))

    packages = None
    if any(e.packages for e in spec.extensions):  # the files of extensions[].packages that may move
        packages = resolve_packages(spec, index, ext_plans, sums, boot_set(spec, index), read_hierarchies(index),
                                    initrd_base(spec, index))
        problems += packages.problems if packages else []
        warnings += packages.warnings if packages else []

    # files outside the hierarchies the OS merges would never appear
    hierarchies = read_hierarchies(index)
    for n, ep in enumerate(ext_plans):
        lost = unmerged(index, hierarchies, ep.selected)
        if lost:
            problems.append(f"{spec.where('extensions', n, 'paths')}: extension {ep.name} holds {len(lost):,} "
                            f"entries outside the hierarchies this OS merges, e.g. "
                            f"{os.fsdecode(index.path(lost.starts[0]))}: they would never appear once merged "
                            f"({hierarchies.source}: {':'.join(hierarchies.paths)}); leave them in the UKI")

    problems += module_problems(spec, index, ext_plans)
    problems += release_problems(spec, index)

    # two extensions claiming the same entries
    for a in range(len(ext_plans)):
        for b in range(a + 1, len(ext_plans)):
            both = ext_plans[a].selected.intersection(ext_plans[b].selected)
            if both:
                first = next(both.indices())
                problems.append(
                    f"{spec.where('extensions', b, 'paths')}: extensions {ext_plans[a].name} and "
                    f"{ext_plans[b].name} both claim {os.fsdecode(index.path(first))}"
                    + (f" and {len(both) - 1} more entries" if len(both) > 1 else "")
                )

    # the init the kernel starts from the initrd, and every link on its way, must stay in the UKI
    problems += init_problems(spec, index)
    prog = init_program(spec, index)
    base = initrd_base(spec, index)
    if prog is not None and prog.needed:
        key = ("uki", "init") if prog.source == "uki.init" else ("os", "root")
        way = " -> ".join(os.fsdecode(index.path(k)) for k in prog.needed)
        for e in ext_plans:
            taken = next((k for k in prog.needed if k in e.selected), None)
            if taken is not None:
                problems.append(f"{spec.where(*key)}: {prog.path} is needed to boot ({way}) but extension "
                                f"{e.name} moves {os.fsdecode(index.path(taken))} out of the UKI")
        dropped = next((k for k in prog.needed if k not in base), None)
        if dropped is not None:
            problems.append(f"{spec.where('os', 'exclude')}: {prog.path} is needed to boot ({way}) but os.exclude "
                            f"leaves {os.fsdecode(index.path(dropped))} out of the UKI")

    boot = boot_set(spec, index)
    problems += boot_problems(spec, boot, ext_plans, base)
    warnings += boot_warnings(spec, boot, ext_plans)

    moved = IntervalSet().union(*(e.selected for e in ext_plans)) if ext_plans else IntervalSet()
    after = with_ancestors(index, base.difference(moved))  # an excluded file keeps its folders
    if spec.signing is not None and spec.signing.trust_in_uki:
        try:
            initrd_extra(spec)
        except UserError as exc:
            problems.append(f"{spec.where('signing', 'trust_in_uki')}: {exc}")
    before_bytes = sums.cpio_bytes(base) + TRAILER_BYTES + extra_entry_bytes(spec, index, base)
    after_bytes = sums.cpio_bytes(after) + TRAILER_BYTES + extra_entry_bytes(spec, index, after)
    base_bytes = sums.cpio_bytes(base)
    for e in ext_plans:  # what this extension alone takes out (a hardlink kept elsewhere keeps its data)
        e.initrd_bytes = base_bytes - sums.cpio_bytes(with_ancestors(index, base.difference(e.selected)))
    return Plan(spec, index, sums, ext_plans, base, after, before_bytes, after_bytes, problems, warnings, boot, packages)


#: boot-set kinds the plan reports here; the init's way and the kernel modules have problems of
#: their own (init_problems, module_problems) that say more
_GENERIC_KINDS = ("program", "library", "data", "keep")


def _hint(boot: BootSet, hit: IntervalSet, most: int = 6) -> str:
    """The entries to name in ``exclude:`` so the extension leaves ``hit`` in the UKI."""
    index = boot.index
    tops: dict[int, None] = {}
    for k in hit.indices():
        a: int | None = k
        while a is not None and a >= 0 and a not in boot.reasons:
            a = index.parent[a]
        tops.setdefault(k if a is None or a < 0 else a, None)
        if len(tops) > most:
            break
    names = [os.fsdecode(index.path(k)) for k in list(tops)[:most]]
    return ", ".join(names) + (", ..." if len(tops) > most else "")


def boot_problems(spec: Spec, boot: BootSet, ext_plans: list[ExtensionPlan], base: IntervalSet) -> list[str]:
    """Extensions (and os.exclude) that take out of the UKI what the system needs to boot."""
    out = []
    for n, ep in enumerate(ext_plans):
        hit = boot.in_kinds(ep.selected, _GENERIC_KINDS)
        if hit:
            first = hit.starts[0]
            out.append(f"{spec.where('extensions', n, 'paths')}: extension {ep.name} moves {len(hit):,} "
                       f"entr{'y' if len(hit) == 1 else 'ies'} the system needs to boot out of the UKI, e.g. "
                       f"{boot.chain(first)}. Booted, {'it is' if len(hit) == 1 else 'they are'} needed before any "
                       f"extension is merged: leave {'it' if len(hit) == 1 else 'them'} in the UKI (exclude: "
                       f"[{_hint(boot, hit)}]) or waive a path with boot.allow and a reason")
    dropped = boot.in_kinds(IntervalSet([(1, len(boot.index))]).difference(base),
                            (*_GENERIC_KINDS, "module", "module-index"))
    if dropped:
        out.append(f"{spec.where('os', 'exclude')}: os.exclude leaves {len(dropped):,} entr"
                   f"{'y' if len(dropped) == 1 else 'ies'} the system needs to boot out of the UKI, e.g. "
                   f"{boot.chain(dropped.starts[0])}")
    return out


def boot_warnings(spec: Spec, boot: BootSet, ext_plans: list[ExtensionPlan]) -> list[str]:
    """Firmware kept modules name moved out; signatures a plain systemd OS cannot check; libraries
    nothing in the tree provides; boot.keep and boot.allow entries that name nothing."""
    out = []
    index = boot.index
    for n, pattern in enumerate(spec.boot.keep):
        if not match(index, pattern):
            out.append(f"{spec.where('boot', 'keep', n)}: boot.keep {pattern} matches nothing in the OS tree")
    waived = {k for k, _ in boot.waived}
    for n, allow in enumerate(spec.boot.allow):
        if not any(k in waived for k in match(index, allow.path)):
            out.append(f"{spec.where('boot', 'allow', n)}: boot.allow {allow.path} waives nothing: it is not in "
                       "the boot set (or not in the OS tree); remove it")
    for n, ep in enumerate(ext_plans):
        hit = ep.selected.intersection(boot.soft)
        if hit:
            out.append(f"{spec.where('extensions', n, 'paths')}: extension {ep.name} moves {len(hit)} firmware "
                       f"file(s) that kernel modules kept in the UKI load, e.g. {boot.chain(hit.starts[0])}: a "
                       "device probed before the merge would miss it")
    signed = spec.signing is not None and any(ep.entries for ep in ext_plans)
    if signed and boot.profile == "systemd" and not spec.signing.trust_in_uki:
        index = boot.index
        certs = [k for folder in ("etc/verity.d", "usr/lib/verity.d") if (top := index.lookup(folder)) is not None
                 for k in index.children(top) if index.names[k].endswith(b".crt")]
        if not certs:
            out.append(f"{spec.where('signing')}: the extensions are signed, but this plain systemd OS has no "
                       "certificate in etc/verity.d: a kernel that trusts only its builtin keyrings for dm-verity "
                       "(Debian 12's) refuses the signature, systemd then checks in userspace and finds no cert, "
                       "and the extensions never merge. Set signing.trust_in_uki: true")
    if boot.missing:
        name, by = boot.missing[0]
        out.append(f"{spec.where('os', 'root')}: {len(boot.missing)} librar{'y' if len(boot.missing) == 1 else 'ies'} "
                   f"needed to boot resolve nowhere in the tree, e.g. {name} (needed by {by})")
    return out
