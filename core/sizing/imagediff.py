"""An extension made of what a derived image adds over its base (``extensions[].from``).

Kairos extensions are often built as a Dockerfile ``FROM`` the OS image: the extension is what
that image adds or changes (kairos#2631, kairos#2117). Both images (or OS tree folders) are
flattened (:mod:`..tree.oci`) and compared by content (:mod:`..tree.treediff`); what the derived
tree adds or changes under the hierarchies the *base* merges (:mod:`.merge`) is the extension's
content, taken from the derived tree. What it deletes there is a problem (a system extension
overlays; it cannot delete a file of the base), what it adds or changes elsewhere (``/etc``) a
warning: a system extension cannot carry it. Such an extension does not slim the UKI; it is
built, signed and verified like any other.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from ..progress import Reporter
from ..spec.model import ExtensionSpec, Spec
from ..tree.index import TreeIndex, scan
from ..tree.oci import platform_for_arch, tree_folder
from ..tree.selection import IntervalSet, Sums, match, subtree_set
from ..tree.treediff import TreeDiff, diff_trees
from .merge import read_hierarchies

#: problems and warnings listed one by one before "and N more"
SHOWN = 5


@dataclass
class DiffSource:
    """The derived tree an extension's content comes from, and its selection over that tree."""

    index: TreeIndex
    marks: list[int]
    selected: IntervalSet
    diff: TreeDiff
    base_root: Path


def source_tree(path: Path, platform: str) -> Path:
    """The folder of ``path``: itself, or the flattened tree of the image it names."""
    if not path.exists():
        raise UserError(f"{path} does not exist")
    return tree_folder(path, platform=platform)


def diff_content(base_path: Path, image_path: Path, ext: ExtensionSpec, *, platform: str | None = None,
                 reporter: Reporter | None = None) -> tuple[DiffSource | None, list[str], list[str]]:
    """What ``image_path`` adds over ``base_path`` as ``ext``'s content (its ``exclude`` applied),
    with the problems (deletions under the merged hierarchies, nothing to carry) and warnings."""
    try:
        base_root = source_tree(base_path, platform or platform_for_arch(ext.architecture))
        derived_root = source_tree(image_path, platform or platform_for_arch(ext.architecture))
    except (UserError, OSError) as exc:
        return None, [f"extension {ext.name}: {exc}"], []
    base, derived = scan(base_root), scan(derived_root)
    hier = read_hierarchies(base)
    diff = diff_trees(base, derived, hier.covers, above=hier.above, reporter=reporter)
    marks = sorted(k for c in diff.carried if (k := derived.lookup(c.path)) is not None)
    added = [k for k in marks if base.lookup(derived.path(k)) is None]  # a new folder brings all it holds
    selected = subtree_set(derived, added).union(IntervalSet((k, k + 1) for k in marks))
    excluded = [k for pattern in ext.exclude for k in match(derived, pattern)]
    if excluded:
        selected = selected.difference(subtree_set(derived, excluded))
    problems = [f"extension {ext.name}: {p}" for p in diff.problems(hier.covers)]
    warnings = [f"extension {ext.name}: {w}" for w in diff.warnings(hier.covers)]
    if not selected:
        problems.append(f"extension {ext.name}: {image_path} adds nothing over {base_path} under the merged "
                        f"hierarchies ({hier.source}: {':'.join(hier.paths)})")
    return DiffSource(derived, marks, selected, diff, base_root), _capped(problems), _capped(warnings)


def diff_source(spec: Spec, n: int, ext: ExtensionSpec) -> tuple[DiffSource | None, list[str], list[str]]:
    """The content of the spec's extension ``n`` (``from: {image, base}``), problems located."""
    assert ext.from_images is not None
    where = spec.where("extensions", n, "from")
    src, problems, warnings = diff_content(ext.from_images.base, ext.from_images.image, ext,
                                           platform=spec.os.platform)
    return src, [f"{where}: {p}" for p in problems], [f"{where}: {w}" for w in warnings]


def _capped(lines: list[str]) -> list[str]:
    if len(lines) <= SHOWN + 1:
        return lines
    return [*lines[:SHOWN], f"... and {len(lines) - SHOWN} more like these"]


def source_bytes(src: DiffSource) -> int:
    """Apparent bytes of the files the extension takes from the derived tree (hardlinks once)."""
    return Sums(src.index).apparent(src.selected)

