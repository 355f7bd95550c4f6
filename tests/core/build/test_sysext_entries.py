"""What a system extension image holds when its selection is files, not folders (a package's
files, a derived image's additions): every folder above them comes along, with the tree's
metadata, and the image builds (found building a `plan --fit` proposal that listed systemd)."""

from __future__ import annotations

from pathlib import Path

from sysextant.core.build.sysext import build_extension, collect_entries
from sysextant.core.sizing.plan import ExtensionPlan
from sysextant.core.spec.model import ExtensionSpec
from sysextant.core.tree.index import scan
from sysextant.core.tree.selection import IntervalSet


def test_a_selection_of_files_brings_every_folder_above_them(tmp_path: Path) -> None:
    root = tmp_path / "rootfs"
    (root / "usr/lib/systemd/catalog").mkdir(parents=True)
    (root / "usr/lib/systemd/catalog/systemd.be.catalog").write_text("catalog\n")
    (root / "usr/lib/systemd/catalog").chmod(0o750)
    (root / "usr/bin").mkdir()
    (root / "usr/bin/tool").write_bytes(b"\x7fELF")
    index = scan(root)
    files = [index.lookup("usr/lib/systemd/catalog/systemd.be.catalog"), index.lookup("usr/bin/tool")]
    plan = ExtensionPlan("apps", [], IntervalSet((k, k + 1) for k in files), 2, 12, 0)
    ext = ExtensionSpec("apps")
    entries = collect_entries(index, plan, ext)
    paths = [e.path for e in entries]
    for folder in (b"usr", b"usr/lib", b"usr/lib/systemd", b"usr/lib/systemd/catalog", b"usr/bin"):
        assert folder in paths, folder
    catalog = next(e for e in entries if e.path == b"usr/lib/systemd/catalog")
    assert catalog.mode & 0o777 == 0o750  # the tree's own folder, not a made-up one
    assert paths == sorted(paths)
    image = build_extension(index, plan, ext, tmp_path / "out", signer=None, entries=entries)
    assert image.path.is_file() and image.entries == len(entries)


def test_with_ancestors_equals_every_parent_of_every_entry_on_random_selections(tmp_path: Path) -> None:
    """Against the plain definition, on random selections of a demo tree (intervals that run
    across unrelated folders included): the initrd and every image rely on it."""
    import random

    from sysextant.core.demo import generate_tree
    from sysextant.core.tree.selection import with_ancestors

    generate_tree(tmp_path / "demo", scale=0.01)
    index = scan(tmp_path / "demo")
    rng = random.Random(7)
    n = len(index)
    for _ in range(200):
        picks = set()
        for _ in range(rng.randint(1, 12)):
            a = rng.randrange(1, n)
            picks.update(range(a, min(n, a + rng.randint(1, 40))))
        sel = IntervalSet((k, k + 1) for k in picks)
        want = set(picks)
        for k in picks:
            want.update(x for x in index.ancestors(k) if x > 0)
        assert set(with_ancestors(index, sel).indices()) == want
