"""extensions[].packages resolved at plan time, and the fit planner (`plan --fit`): on a small
usr-merged tree with a dpkg database written in dpkg's format, with compression none so every
figure is exact."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest

from sysextant.core.sizing.fit import apply_fit, propose_fit
from sysextant.core.sizing.forecast import UkiLayout, forecast
from sysextant.core.sizing.plan import make_plan
from sysextant.core.spec.load import SpecError, load_spec, loads_spec
from sysextant.core.spec.model import ExtensionSpec
from sysextant.core.spec.write import extension_lines
from sysextant.core.tree.index import scan
from sysextant.tui.cli import main

MiB = 1 << 20
PACKAGES = {  # name -> (section, files as dpkg lists them)
    "tool": ("utils", ["/bin/tool", "/usr/lib/tool/data", "/etc/tool.conf", "/usr/share/doc/tool/copyright"]),
    "firmware-misc": ("non-free-firmware/kernel", ["/lib/firmware/big1.bin", "/lib/firmware/big2.bin"]),
    "base": ("admin", ["/usr/bin/keepme", "/usr/bin/init", "/usr/lib/os-release"]),
    "docs-big": ("doc", ["/usr/share/doc/docs-big/manual.txt"]),
}


def make_tree(root: Path, *, with_db: bool = True) -> None:
    rnd = random.Random(7)
    for d in ("etc", "boot", "usr/bin", "usr/lib/tool", "usr/lib/firmware", "usr/share/doc/tool",
              "usr/share/doc/docs-big", "var/cache/apt/archives", "var/lib/apt/lists", "var/lib/dpkg/info"):
        (root / d).mkdir(parents=True, exist_ok=True)
    for top in ("bin", "lib"):
        (root / top).symlink_to(f"usr/{top}")
    (root / "usr/lib/os-release").write_text("ID=test\nVERSION_ID=1\n")
    (root / "etc/os-release").symlink_to("../usr/lib/os-release")
    (root / "boot/vmlinuz").write_bytes(b"MZ" + b"k" * 5000)
    for rel, size in (("usr/bin/tool", 2 * MiB), ("usr/lib/tool/data", MiB), ("usr/lib/firmware/big1.bin", 3 * MiB),
                      ("usr/lib/firmware/big2.bin", 2 * MiB), ("usr/bin/keepme", MiB),
                      ("var/cache/apt/archives/x.deb", MiB), ("var/lib/apt/lists/deb_Packages", MiB // 2)):
        (root / rel).write_bytes(rnd.randbytes(size))
    (root / "usr/bin/init").write_bytes(b"#!/bin/sh\n")
    (root / "usr/bin/init").chmod(0o755)
    (root / "etc/tool.conf").write_text("x=1\n")
    (root / "usr/share/doc/tool/copyright").write_text("c" * 5000)
    (root / "usr/share/doc/docs-big/manual.txt").write_bytes(rnd.randbytes(MiB))
    if not with_db:
        return
    status = []
    for name, (section, files) in PACKAGES.items():
        status.append(f"Package: {name}\nStatus: install ok installed\nSection: {section}\nInstalled-Size: 100\n"
                      f"Architecture: amd64\nVersion: 1.0-1\nDescription: {name}\n")
        folders = sorted({"/".join(f.split("/")[:n]) or "/." for f in files for n in range(1, f.count("/"))})
        (root / f"var/lib/dpkg/info/{name}.list").write_text("\n".join(["/.", *folders[1:], *files]) + "\n")
    (root / "var/lib/dpkg/status").write_text("\n".join(status))


def write_spec(dir: Path, extensions: str = "  []", limit: str = "1GiB") -> Path:
    spec = dir / "spec.yaml"
    spec.write_text(f"""\
version: 1
os:
  root: rootfs
  exclude: []   # what the OS leaves out of the UKI
uki:
  init: /usr/bin/init
  compression: none
  limit: {limit}
boot:
  profile: none
  keep: [usr/bin/keepme]
extensions:
{extensions}
""")
    return spec


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    make_tree(tmp_path / "rootfs")
    return tmp_path


def test_packages_in_the_spec_are_read_located_and_written(tmp_path: Path) -> None:
    make_tree(tmp_path / "rootfs")
    spec = load_spec(write_spec(tmp_path, "  - name: apps\n    packages: [tool, libc6:amd64]\n"))
    assert spec.extensions[0].packages == ["tool", "libc6:amd64"] and spec.extensions[0].paths == []
    assert spec.where("extensions", 0, "packages", 1).endswith(":14:22")
    bad = write_spec(tmp_path, "  - name: apps\n    packages: [tool, 'no spaces', tool]\n")
    with pytest.raises(SpecError) as err:
        load_spec(bad)
    text = str(err.value)
    assert "packages[1]: 'no spaces' is not a package name" in text or "no spaces" in text
    assert "is listed twice" in text
    lines = extension_lines(ExtensionSpec(name="apps", packages=["tool"]))
    assert "    packages: [tool]" in lines
    assert loads_spec("version: 1\nos: {root: rootfs}\nextensions:\n" + "\n".join(lines) + "\n",
                      tmp_path / "s.yaml").extensions[0].packages == ["tool"]


def test_a_package_moves_what_may_move_and_says_why_the_rest_stays(tree: Path) -> None:
    spec = load_spec(write_spec(tree, "  - name: docs\n    paths: [usr/share/doc]\n"
                                      "  - name: apps\n    packages: [tool, base]\n"))
    index = scan(spec.os.root)
    plan = make_plan(spec, index)
    assert plan.problems == [], plan.problems
    moves = {m.name: m for m in plan.packages.moves}
    tool = moves["tool"]
    assert sorted(os.fsdecode(index.path(k)) for k in tool.moved.indices()) == ["usr/bin/tool", "usr/lib/tool/data"]
    reasons = {s.reason.split(" (")[0]: s for s in tool.stayed}
    assert "outside /usr and /opt" in reasons and reasons["outside /usr and /opt"].example == "etc/tool.conf"
    assert "already in extension docs" in reasons
    base = {s.reason.split(" (")[0]: s for s in moves["base"].stayed}
    assert base["needed to boot"].example.startswith("usr/bin/")  # init and keepme, with their chain
    assert len(base["needed to boot"].entries) == 2
    assert "the OS release file" in " ".join(base)
    assert not moves["base"].moved
    apps = plan.extensions[1]
    assert index.lookup("usr/bin/tool") in apps.selected and index.lookup("usr/bin/keepme") not in apps.selected
    text = plan.render()
    assert "tool -> apps: 2 files moved" in text and "stay: needed to boot" in text
    assert plan.to_json()["packages"][0]["moved_entries"] == 2
    assert any("none of the 3 files of package base may move" in w for w in plan.warnings)


def test_unknown_packages_and_trees_without_a_database_are_problems(tmp_path: Path) -> None:
    make_tree(tmp_path / "rootfs")
    spec = load_spec(write_spec(tmp_path, "  - name: apps\n    packages: [tol]\n"))
    plan = make_plan(spec, scan(spec.os.root))
    assert len(plan.problems) == 1 and "spec.yaml:14:16: package tol is not installed" in plan.problems[0]
    assert "did you mean tool?" in plan.problems[0]
    bare = tmp_path / "bare"
    bare.mkdir()
    make_tree(bare / "rootfs", with_db=False)
    spec = load_spec(write_spec(bare, "  - name: apps\n    packages: [tool]\n"))
    plan = make_plan(spec, scan(spec.os.root))
    assert any("has no package database" in p for p in plan.problems)


def _fit(spec_path: Path, limit: int, **kw):
    spec = load_spec(spec_path)
    index = scan(spec.os.root)
    plan = make_plan(spec, index)
    layout = UkiLayout(spec, index)
    return spec, plan, layout, propose_fit(spec, plan, layout, None, limit=limit, **kw)


def test_fit_by_package_lands_under_the_limit_once_applied(tree: Path) -> None:
    spec_path = write_spec(tree)
    spec, plan, layout, _ = _fit(spec_path, 1 << 30)
    now = forecast(spec, plan, layout).uki_bytes
    limit = now - 6 * MiB  # firmware (5 MiB) alone is not enough with the margin
    spec, plan, layout, fit = _fit(spec_path, limit)
    assert fit.reached and fit.by_packages and fit.uki_before == now
    assert [g for g, _w, _s in fit.os_exclude] == ["var/cache/apt/*", "var/lib/apt/lists/*"]
    names = {p.name: p for p in fit.extensions}
    assert names["firmware"].packages == ["firmware-misc"]
    assert all("base" not in p.packages for p in fit.extensions)  # all of it stays: nothing to gain
    text = apply_fit(spec_path.read_text(), spec_path, spec, fit)
    assert "# what the OS leaves out of the UKI" in text  # comments kept
    assert f"limit: {fit.limit_text}" in text
    spec_path.write_text(text)
    spec2 = load_spec(spec_path)
    plan2 = make_plan(spec2, scan(spec2.os.root))
    assert plan2.problems == []
    fig = forecast(spec2, plan2, UkiLayout(spec2, plan2.index))
    assert fig.uki_bytes == fit.uki_after <= limit - fit.margin  # exact: compression none
    assert fit.extensions[-1].uki_after == fit.uki_after
    assert "os.exclude (REMOVES content" in fit.render()


def test_fit_by_folder_without_a_database(tmp_path: Path) -> None:
    make_tree(tmp_path / "rootfs", with_db=False)
    spec_path = write_spec(tmp_path)
    spec, plan, layout, _ = _fit(spec_path, 1 << 30)
    limit = forecast(spec, plan, layout).uki_bytes - 4 * MiB
    spec, plan, layout, fit = _fit(spec_path, limit, junk=False)
    assert fit.reached and not fit.by_packages and not fit.os_exclude
    assert fit.extensions[0].paths == ["usr/lib/firmware"]
    spec_path.write_text(apply_fit(spec_path.read_text(), spec_path, spec, fit))
    spec2 = load_spec(spec_path)
    plan2 = make_plan(spec2, scan(spec2.os.root))
    assert plan2.problems == [] and forecast(spec2, plan2, UkiLayout(spec2, plan2.index)).uki_bytes <= limit


def test_fit_that_cannot_be_reached_says_how_close_and_what_blocks(tree: Path) -> None:
    spec, plan, layout, fit = _fit(write_spec(tree), MiB)
    assert not fit.reached
    assert fit.blockers and any("needed to boot" in what for what, _ in fit.blockers)
    assert "does NOT fit" in fit.render() and "what stays and blocks the rest" in fit.render()


def test_cli_plan_fit_json_and_apply(tree: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec_path = write_spec(tree)
    before = spec_path.read_text()
    assert main(["plan", str(spec_path), "--fit", "1MiB", "--json"]) == 1
    data = json.loads(capsys.readouterr().out)
    assert data["fit"]["reached"] is False and data["written"] is False
    assert spec_path.read_text() == before
    assert main(["plan", str(spec_path), "--fit", "20MiB", "--apply"]) == 0
    out = capsys.readouterr().out
    assert "fits with the margin" in out and "written to" in out
    assert main(["plan", str(spec_path)]) == 0
    assert main(["plan", str(spec_path), "--fit", "lots"]) == 2
