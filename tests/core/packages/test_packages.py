"""Package databases read from a tree: dpkg (against dpkg-query on this machine's own database
and on a usr-merged tree built from it), apk (a database written in its format), rpm (sqlite
with header blobs: built by rpmbuild and rpm itself when they are installed, and by
:func:`header_blob`, which real rpm reads back)."""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import sqlite3
import stat
import subprocess
from pathlib import Path

import pytest

from sysextant.core.errors import UserError
from sysextant.core.packages import rpm
from sysextant.core.packages.db import UnsupportedDatabase
from sysextant.core.packages.find import read_database
from sysextant.core.packages.owners import TreePackages
from sysextant.core.tree.fsentry import resolve_in_tree
from sysextant.core.tree.index import scan

HOST_DPKG = Path("/var/lib/dpkg")
DEBIAN_TREES = sorted(Path.home().glob(".cache/sysextant/debian-bookworm-*/rootfs"))


def _dpkg_query(admindir: Path, *args: str) -> str:
    return subprocess.run(["dpkg-query", f"--admindir={admindir}", *args], capture_output=True, text=True,
                          check=False).stdout


needs_dpkg = pytest.mark.skipif(not (shutil.which("dpkg-query") and (HOST_DPKG / "status").is_file()),
                                reason="needs dpkg-query and this machine's dpkg database")


@needs_dpkg
def test_dpkg_reader_lists_what_dpkg_query_lists_for_every_package_of_this_machine() -> None:
    db = read_database("/")
    assert db is not None and db.kind == "dpkg" and not db.problems
    names = list(db.packages)
    blocks = _dpkg_query(HOST_DPKG, "-L", *names).split("\n\n")
    assert len(blocks) == len(names)
    for name, block in zip(names, blocks, strict=True):
        lines = [line for line in block.splitlines() if line]
        assert [x for x in lines if x.startswith("/") and x != "/."] == db.packages[name].files, name
        for line in lines:  # "diverted by P to: PATH" follows the diverted path
            if line.startswith("diverted by "):
                assert line.split(" to: ", 1)[1] in db.packages[name].moved.values(), name


def _copy_packages(root: Path, names: list[str]) -> list[str]:
    """A usr-merged tree holding the files of ``names`` (this machine's packages: small stand-in
    content, the real symlinks) with their slice of the dpkg database."""
    for top in ("bin", "sbin", "lib", "lib64"):
        (root / top).symlink_to(f"usr/{top}")
    (root / "usr").mkdir()
    for top in ("bin", "sbin", "lib", "lib64"):
        (root / "usr" / top).mkdir()
    admin = root / "var/lib/dpkg"
    (admin / "info").mkdir(parents=True)
    if (HOST_DPKG / "info/format").is_file():  # 1: Multi-Arch: same packages list as NAME:ARCH.list
        shutil.copyfile(HOST_DPKG / "info/format", admin / "info/format")
    status = (HOST_DPKG / "status").read_text(errors="replace").split("\n\n")
    kept, found = [], []
    for para in status:
        name = next((line[9:] for line in para.splitlines() if line.startswith("Package: ")), None)
        if name in names and "Status: install ok installed" in para:
            kept.append(para.strip("\n"))
            found.append(name)
            arch = next(line[14:] for line in para.splitlines() if line.startswith("Architecture: "))
            for cand in (f"{name}:{arch}.list", f"{name}.list"):
                if (HOST_DPKG / "info" / cand).is_file():
                    listing = (HOST_DPKG / "info" / cand).read_text()
                    (admin / "info" / cand).write_text(listing)
                    break
            for path in listing.splitlines():
                if path == "/." or not path.startswith("/"):
                    continue
                host = Path(path)
                dest = root / os.path.relpath(os.path.realpath(host.parent), "/") / host.name
                st = os.lstat(host) if os.path.lexists(host) else None
                if st is None:
                    continue
                if stat.S_ISDIR(st.st_mode):
                    dest.mkdir(parents=True, exist_ok=True)
                elif stat.S_ISLNK(st.st_mode):
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    if not os.path.lexists(dest):
                        dest.symlink_to(os.readlink(host))
                else:
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    dest.write_bytes(path.encode())
    (admin / "status").write_text("\n\n".join(kept) + "\n")
    return found


@needs_dpkg
def test_dpkg_files_map_onto_a_usr_merged_tree_as_dpkg_and_the_trees_links_say(tmp_path: Path) -> None:
    root = tmp_path / "rootfs"
    root.mkdir()
    names = _copy_packages(root, ["base-files", "grep", "sed", "dash", "libpcre2-8-0", "libselinux1", "coreutils"])
    assert "grep" in names and "base-files" in names
    admin = root / "var/lib/dpkg"
    if shutil.which("dpkg-divert"):  # a diversion as dpkg-divert writes it: grep's /bin/grep moved aside
        subprocess.run(["dpkg-divert", f"--admindir={admin}", "--package", "sed", "--no-rename", "--divert",
                        "/bin/grep.distrib", "--add", "/bin/grep"], check=True, capture_output=True)
        (root / "usr/bin/grep.distrib").write_bytes(b"real grep")
    index = scan(root)
    db = read_database(root)
    assert db is not None and db.kind == "dpkg" and sorted(db.packages) == sorted(names)
    tp = TreePackages(db, index)
    broot = os.fsencode(root)
    listed = _dpkg_query(admin, "-L", *names).split("\n\n")
    for name, block in zip(names, listed, strict=True):
        paths = [x for x in block.splitlines() if x.startswith("/") and x != "/."]
        assert paths == db.packages[name].files
        for line in block.splitlines():
            if line.startswith("diverted by "):
                assert name == "grep" and db.packages[name].moved == {"/bin/grep": "/bin/grep.distrib"}
        expected = set()
        for p in paths:
            if p in db.packages[name].dirs:  # a folder to dpkg (/bin holds /bin/grep), a link in the tree
                continue
            real = db.packages[name].moved.get(p, p)
            parent, _, base = real.rpartition("/")
            try:
                where = resolve_in_tree(broot, os.fsencode(parent.lstrip("/")))
            except OSError:
                continue
            k = index.lookup(os.path.join(where, base.encode()))
            if k is not None and not index.is_dir(k):
                expected.add(k)
        assert set(tp.files[name].entries) == expected, name
    # owners agree with `dpkg -S` for every owned entry (dpkg -S names the path as listed)
    grep_bin = index.lookup("usr/bin/grep")
    assert tp.owners(index.lookup("usr/lib/os-release")) == ["base-files"]
    if shutil.which("dpkg-divert"):
        assert tp.owners(index.lookup("usr/bin/grep.distrib")) == ["grep"] and grep_bin is not None
        assert tp.owners(grep_bin) == []  # sed diverted it away and ships no /bin/grep
    sample = random.Random(5).sample(sorted(tp.owned().indices()), 40)
    for k in sample:
        for owner in tp.owners(k):
            paths = [p for p in db.packages[owner].files if tp.resolve(db.packages[owner].moved.get(p, p)) == k]
            out = _dpkg_query(admin, "-S", paths[0])
            assert owner in [o.strip() for o in out.split(":", 1)[0].split(",")] or f"{owner}:" in out, (paths, out)


@pytest.mark.skipif(not DEBIAN_TREES or not shutil.which("dpkg-query"),
                    reason="needs the debootstrap Debian tree in ~/.cache/sysextant and dpkg-query")
def test_every_package_of_a_real_debian_tree_maps_onto_the_tree() -> None:
    root = DEBIAN_TREES[0]
    db = read_database(root)
    assert db is not None and not db.problems
    names = list(db.packages)
    blocks = _dpkg_query(root / "var/lib/dpkg", "-L", *names).split("\n\n")
    index = scan(root)
    tp = TreePackages(db, index)
    for name, block in zip(names, blocks, strict=True):
        assert [x for x in block.splitlines() if x.startswith("/") and x != "/."] == db.packages[name].files
    missing = sum(pf.missing for pf in tp.files.values())
    assert missing == 0  # every listed path exists in a fresh debootstrap tree
    assert tp.owners(index.lookup("usr/bin/bash")) == ["bash"]  # listed as /bin/bash
    assert tp.owners(index.lookup("usr/lib/x86_64-linux-gnu/libc.so.6")) == ["libc6"]  # listed under /lib


def test_apk_database_in_its_format(tmp_path: Path) -> None:
    root = tmp_path / "alpine"
    for rel in ("lib/apk/db", "usr/bin", "usr/share/doc/tool", "lib"):
        (root / rel).mkdir(parents=True, exist_ok=True)
    (root / "lib/ld-musl-x86_64.so.1").write_bytes(b"musl")
    (root / "lib/libc.musl-x86_64.so.1").symlink_to("ld-musl-x86_64.so.1")
    (root / "usr/bin/tool").write_bytes(b"tool")
    (root / "usr/share/doc/tool/README").write_bytes(b"doc")
    (root / "lib/apk/db/installed").write_text(
        "C:Q1abc=\nP:musl\nV:1.2.4-r2\nA:x86_64\nS:383152\nI:622592\nT:the musl c library\no:musl\n"
        "F:lib\nR:ld-musl-x86_64.so.1\na:0:0:755\nZ:Q1x=\nR:libc.musl-x86_64.so.1\na:0:0:777\nZ:Q1y=\n\n"
        "C:Q1def=\nP:tool\nV:2.0-r0\nA:x86_64\nI:4096\no:tool-src\nF:usr\nF:usr/bin\nR:tool\n"
        "F:usr/share/doc/tool\nR:README\nR:gone\n\n")
    db = read_database(root)
    assert db is not None and db.kind == "apk"
    assert list(db.packages) == ["musl", "tool"]
    tool = db.packages["tool"]
    assert (tool.version, tool.arch, tool.source, tool.installed_bytes) == ("2.0-r0", "x86_64", "tool-src", 4096)
    assert tool.files == ["/usr", "/usr/bin", "/usr/bin/tool", "/usr/share/doc/tool", "/usr/share/doc/tool/README",
                          "/usr/share/doc/tool/gone"]
    index = scan(root)
    tp = TreePackages(db, index)
    assert sorted(os.fsdecode(index.path(k)) for k in tp.files["tool"].entries) == [
        "usr/bin/tool", "usr/share/doc/tool/README"]
    assert tp.files["tool"].missing == 1
    assert tp.owners(index.lookup("lib/libc.musl-x86_64.so.1")) == ["musl"]  # the link itself, not followed


def _rpm_tree(tmp_path: Path, blobs: list[bytes], folder: str = "usr/lib/sysimage/rpm", *, name: str = "rpmtree",
              with_rpm: bool = False) -> Path:
    """A tree whose rpmdb.sqlite holds ``blobs``: the schema rpm --initdb writes (``with_rpm``), or
    the one table sysextant reads."""
    root = tmp_path / name
    (root / folder).mkdir(parents=True)
    path = root / folder / "rpmdb.sqlite"
    if with_rpm:
        subprocess.run(["rpm", "--dbpath", str(root / folder), "--define", "_db_backend sqlite", "--initdb"],
                       check=True, capture_output=True)
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE IF NOT EXISTS 'Packages' (hnum INTEGER PRIMARY KEY AUTOINCREMENT,blob BLOB NOT NULL)")
    con.executemany("INSERT INTO Packages(blob) VALUES (?)", [(b,) for b in blobs])
    con.commit()
    con.close()
    return root


def _blob(name: str, files: dict[str, int], extra: dict[int, tuple[int, object]] | None = None) -> bytes:
    dirs = sorted({f.rsplit("/", 1)[0] + "/" for f in files})
    return rpm.header_blob({
        rpm.NAME: (rpm.STRING, name), rpm.VERSION: (rpm.STRING, "1.0"), rpm.RELEASE: (rpm.STRING, "1.fc40"),
        rpm.ARCH: (rpm.STRING, "x86_64"), rpm.GROUP: (rpm.I18NSTRING, ["Unspecified"]),
        rpm.SOURCERPM: (rpm.STRING, f"{name}-src-1.0-1.fc40.src.rpm"), rpm.SIZE: (rpm.INT32, [12345]),
        rpm.BASENAMES: (rpm.STRING_ARRAY, [f.rsplit("/", 1)[1] for f in files]),
        rpm.DIRNAMES: (rpm.STRING_ARRAY, dirs),
        rpm.DIRINDEXES: (rpm.INT32, [dirs.index(f.rsplit("/", 1)[0] + "/") for f in files]),
        rpm.FILEMODES: (rpm.INT16, list(files.values())), **(extra or {})})


def test_rpm_sqlite_header_blobs_written_by_the_formats_rules(tmp_path: Path) -> None:
    files = {"/usr/bin/kubectl": 0o100755, "/usr/lib/k8s": 0o040755, "/usr/lib/k8s/plugin": 0o100644,
             "/usr/share/man/man1/kubectl.1.gz": 0o100644}
    root = _rpm_tree(tmp_path, [_blob("kubectl", files, {rpm.EPOCH: (rpm.INT32, [2])}), b"\0\0\0\xff",
                                _blob("gpg-pubkey", {})])
    for rel in ("usr/bin", "usr/lib/k8s", "usr/share/man/man1"):
        (root / rel).mkdir(parents=True, exist_ok=True)
    for rel in ("usr/bin/kubectl", "usr/lib/k8s/plugin"):
        (root / rel).write_bytes(b"x")
    db = read_database(root)
    assert db is not None and db.kind == "rpm" and list(db.packages) == ["kubectl"]
    assert len(db.problems) == 1 and "header 2 is malformed" in db.problems[0]
    p = db.packages["kubectl"]
    assert (p.version, p.arch, p.section, p.source, p.installed_bytes) == ("2:1.0-1.fc40", "x86_64", "Unspecified",
                                                                           "kubectl-src", 12345)
    assert p.files == list(files) and p.dirs == {"/usr/lib/k8s"}
    tp = TreePackages(db, scan(root))
    assert len(tp.files["kubectl"].entries) == 2 and tp.files["kubectl"].missing == 1
    if shutil.which("rpm"):  # real rpm reads the very blob
        other = _rpm_tree(tmp_path, [_blob("kubectl", files, {rpm.EPOCH: (rpm.INT32, [2])})], name="real", with_rpm=True)
        out = subprocess.run(["rpm", "--dbpath", str(other / "usr/lib/sysimage/rpm"), "-qa", "--qf",
                              "%{NAME} %{EPOCH}:%{VERSION}-%{RELEASE}\n[%{FILENAMES}\n]"],
                             capture_output=True, text=True, check=False).stdout
        assert out.splitlines()[:5] == ["kubectl 2:1.0-1.fc40", *files]


def test_rpm_header_reader_is_defensive() -> None:
    good = _blob("x", {"/usr/bin/x": 0o100755})
    for cut in range(0, len(good), 7):
        with contextlib.suppress(rpm.HeaderError):
            rpm.parse_header(good[:cut])
    rng = random.Random(1)
    for _ in range(300):
        bad = bytearray(good)
        for _ in range(3):
            bad[rng.randrange(len(bad))] = rng.randrange(256)
        with contextlib.suppress(rpm.HeaderError):
            rpm.package_from_header(rpm.parse_header(bytes(bad)))
    assert rpm.parse_header(b"\x8e\xad\xe8\x01\0\0\0\0" + good)[rpm.NAME] == "x"  # with the .rpm magic


@pytest.mark.skipif(not (shutil.which("rpmbuild") and shutil.which("rpm")), reason="needs rpmbuild and rpm (apt-get install rpm)")
def test_rpm_database_written_by_rpm_itself(tmp_path: Path) -> None:
    top = tmp_path / "top"
    (top / "SPECS").mkdir(parents=True)
    (top / "SPECS/demo.spec").write_text(
        "Name: demo-tool\nVersion: 1.2\nRelease: 3\nSummary: demo\nLicense: MIT\nGroup: Applications/System\n"
        "BuildArch: noarch\n%description\ndemo\n%install\n"
        "mkdir -p %{buildroot}/usr/bin %{buildroot}/usr/share/doc/demo-tool %{buildroot}/usr/lib/demo %{buildroot}/etc\n"
        "echo hi > %{buildroot}/usr/bin/demo\necho doc > %{buildroot}/usr/share/doc/demo-tool/README\n"
        "echo cfg > %{buildroot}/etc/demo.conf\nln -s ../../bin/demo %{buildroot}/usr/lib/demo/link\n"
        "%files\n/usr/bin/demo\n/usr/lib/demo\n%doc /usr/share/doc/demo-tool/README\n%config /etc/demo.conf\n")
    built = subprocess.run(["rpmbuild", "--define", f"_topdir {top}", "-bb", str(top / "SPECS/demo.spec")],
                           capture_output=True, text=True, check=False)
    if built.returncode:
        pytest.skip(f"rpmbuild failed here: {built.stderr[-300:]}")
    package = next((top / "RPMS").rglob("*.rpm"))
    root = tmp_path / "fedora"
    dbpath = root / "var/lib/rpm"
    dbpath.mkdir(parents=True)
    subprocess.run(["rpm", "--dbpath", str(dbpath), "--define", "_db_backend sqlite", "-i", "--justdb", "--nodeps",
                    "--noscripts", "--notriggers", str(package)], capture_output=True, check=True)
    before = {p.name: p.stat().st_mtime_ns for p in dbpath.iterdir()}
    db = read_database(root)
    assert {p.name: p.stat().st_mtime_ns for p in dbpath.iterdir()} == before  # read-only
    assert db is not None and db.kind == "rpm" and db.path == "var/lib/rpm/rpmdb.sqlite"
    ql = subprocess.run(["rpm", "--dbpath", str(dbpath), "-ql", "demo-tool"], capture_output=True, text=True,
                        check=True).stdout.split()
    assert db.packages["demo-tool"].files == ql
    assert db.packages["demo-tool"].dirs == {"/usr/lib/demo"}
    assert db.packages["demo-tool"].version == "1.2-3"


def test_rpm_berkeley_db_is_named_as_unsupported(tmp_path: Path) -> None:
    root = tmp_path / "old"
    (root / "var/lib/rpm").mkdir(parents=True)
    (root / "var/lib/rpm/Packages").write_bytes(b"\0" * 12 + b"\x61\x15\x06\x00" + b"\0" * 100)
    with pytest.raises(UnsupportedDatabase, match="Berkeley DB.*rebuilddb"):
        read_database(root)
    assert isinstance(UnsupportedDatabase("x"), UserError)


def test_a_tree_without_a_database_has_none(tmp_path: Path) -> None:
    (tmp_path / "usr/bin").mkdir(parents=True)
    assert read_database(tmp_path) is None
