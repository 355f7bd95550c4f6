"""The run-time closure of programs against lddtree, glibc's own loader, and a foreign tree.

- On this machine's /usr (a real Debian 12): the closure of a few dozen programs of /usr/bin,
  /usr/sbin and /usr/lib/systemd equals lddtree's (pax-utils), compared as real paths.
- RPATH inheritance and RUNPATH's lack of it, checked against ``ldd`` (glibc's loader) on
  gcc-built programs.
- A small foreign tree in tmp_path with the real libc and ld.so copied in and absolute symlinks
  (``lib64 -> /usr/lib64``): everything resolves inside it, nothing outside is ever touched, and
  decoys (a 32-bit libc first in ld.so.conf, a link climbing out with ``..``) are passed over.
- ``#!`` interpreters (``env -S NAME`` through PATH) and ``.note.dlopen`` priorities.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from elf_helpers import DLOPEN_C, gcc_build, make_elf

from sysextant.core.formats.elf import read_elf
from sysextant.core.sizing.libs import Closure

LDDTREE = shutil.which("lddtree")
MULTIARCH = "usr/lib/x86_64-linux-gnu"
REAL_LIBC = Path("/", MULTIARCH, "libc.so.6")
REAL_LDSO = Path("/", MULTIARCH, "ld-linux-x86-64.so.2")
needs_debian_amd64 = pytest.mark.skipif(not (REAL_LIBC.is_file() and REAL_LDSO.is_file()),
                                        reason="needs a Debian/Ubuntu x86-64 /usr (multiarch libc and ld.so)")


def lddtree_python() -> str | None:
    """A Python that can run lddtree (it needs pyelftools, Debian's python3-pyelftools)."""
    for py in ("/usr/bin/python3", shutil.which("python3")):
        if py and subprocess.run([py, "-c", "import elftools"], capture_output=True).returncode == 0:
            return py
    return None


def dynamic_programs(pattern: str) -> list[str]:
    out = []
    for p in sorted(glob.glob(pattern)):
        if os.path.islink(p) or not os.path.isfile(p):
            continue
        fd = os.open(p, os.O_RDONLY)
        try:
            info = read_elf(fd)
        finally:
            os.close(fd)
        if info is not None and info.interp:
            out.append(p)
    return out


def files_of(closure: Closure, root: str = "/") -> set[str]:
    """The regular files of a closure as real host paths (links on the way left out)."""
    return {os.path.join(root, k) for k in closure.needs if not os.path.islink(os.path.join(root, k))}


@pytest.mark.skipif(LDDTREE is None, reason="lddtree missing (Debian package pax-utils)")
def test_closure_equals_lddtree_on_real_programs() -> None:
    py = lddtree_python()
    if py is None:
        pytest.skip("lddtree needs pyelftools (Debian package python3-pyelftools)")
    programs = dynamic_programs("/usr/lib/systemd/*")
    for pattern, n in (("/usr/bin/*", 25), ("/usr/sbin/*", 10)):
        found = dynamic_programs(pattern)
        programs += found[:: max(1, len(found) // n)]
    assert len(programs) >= 30

    # one lddtree run for all (its start-up dominates): -l prints each program, then its closure
    out = subprocess.run([py, LDDTREE or "lddtree", "-l", *programs], capture_output=True, text=True,
                         check=True).stdout.split("\n")
    theirs: dict[str, set[str]] = {}
    current = None
    for line in filter(None, out):
        if len(theirs) < len(programs) and line == programs[len(theirs)]:
            current = theirs.setdefault(line, set())
        assert current is not None, line
        current.add(os.path.realpath(line))
    assert list(theirs) == programs
    for program in programs:
        closure = Closure(b"/")
        closure.add(program, "test seed")
        assert closure.missing == []
        assert files_of(closure) == theirs[program], program


def test_real_tree_is_fast() -> None:
    """Every program of /usr/lib/systemd and /usr/bin: the boot set must take well under a second."""
    seeds = [p for p in glob.glob("/usr/lib/systemd/*") + glob.glob("/usr/bin/*") if os.path.isfile(p)]
    start = time.perf_counter()
    closure = Closure(b"/")
    for seed in seeds:
        closure.add(seed, "test seed")
    took = time.perf_counter() - start
    assert len(closure.needs) >= len(seeds)
    assert took < 2.0, f"{len(seeds)} seeds took {took:.2f} s"


def ldd(path: Path) -> tuple[set[str], set[str]]:
    """(real paths glibc's loader maps, sonames it finds nowhere) for ``path``, from ``ldd``."""
    out = subprocess.run(["ldd", str(path)], capture_output=True, text=True).stdout
    found, missing = set(), set()
    for line in out.splitlines():
        if m := re.match(r"\s*(\S+) => not found", line):
            missing.add(m.group(1))
        elif (m := re.match(r"\s*\S+ => (/\S+) \(", line)) or (m := re.match(r"\s*(/\S+) \(", line)):
            found.add(os.path.realpath(m.group(1)))
    return found, missing


@pytest.mark.skipif(shutil.which("ldd") is None, reason="ldd missing (Debian package libc-bin)")
def test_rpath_is_inherited_and_runpath_is_not_as_glibc_does(tmp_path: Path) -> None:
    app = tmp_path / "app"
    (app / "lib").mkdir(parents=True)
    (app / "bin").mkdir()
    gcc_build(tmp_path, "int b(void){return 1;}", "libsysxb.so", "-shared", "-fPIC", "-Wl,-soname,libsysxb.so")
    shutil.move(tmp_path / "libsysxb.so", app / "lib/libsysxb.so")
    gcc_build(tmp_path, "int b(void); int a(void){return b();}", "libsysxa.so", "-shared", "-fPIC",
              "-Wl,-soname,libsysxa.so", f"-L{app / 'lib'}", "-lsysxb")
    shutil.move(tmp_path / "libsysxa.so", app / "lib/libsysxa.so")
    main = "int a(void); int main(void){return a();}"
    for name, dtags in (("rpath", "--disable-new-dtags"), ("runpath", "--enable-new-dtags")):
        prog = gcc_build(tmp_path, main, name, f"-L{app / 'lib'}", "-lsysxa", "-Wl,-rpath,$ORIGIN/../lib",
                         f"-Wl,{dtags}", "-Wl,--allow-shlib-undefined")
        shutil.move(prog, app / "bin" / name)
    closure = Closure(b"/")
    closure.add(str(app / "bin/rpath"), "test")
    found, missing = ldd(app / "bin/rpath")
    assert not missing and str(app / "lib/libsysxb.so") in found  # the program's RPATH serves liba's needs
    assert files_of(closure) == found | {str(app / "bin/rpath")}
    assert closure.missing == []

    closure = Closure(b"/")
    closure.add(str(app / "bin/runpath"), "test")
    found, missing = ldd(app / "bin/runpath")
    assert missing == {"libsysxb.so"}  # glibc: RUNPATH serves only the object's own DT_NEEDED
    assert files_of(closure) == found | {str(app / "bin/runpath")}
    assert closure.missing == [("libsysxb.so", str(app / "lib/libsysxa.so").lstrip("/"))]


def copy_in(root: Path, rel: str, src: Path | bytes, mode: int = 0o755) -> None:
    dst = root / rel
    dst.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(src, bytes):
        dst.write_bytes(src)
    else:
        shutil.copyfile(src, dst)
    dst.chmod(mode)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A usr-merged Debian-shaped tree: real libc, ld.so, true, dash and env copied in; absolute
    links (``lib64 -> /usr/lib64``, the interpreter link) that mean this tree, not this machine."""
    root = tmp_path / "rootfs"
    copy_in(root, f"{MULTIARCH}/libc.so.6", REAL_LIBC)
    copy_in(root, f"{MULTIARCH}/ld-linux-x86-64.so.2", REAL_LDSO)
    for prog in ("true", "dash", "env"):
        copy_in(root, f"usr/bin/{prog}", Path("/usr/bin", prog))
    (root / "usr/lib64").mkdir()
    os.symlink("/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2", root / "usr/lib64/ld-linux-x86-64.so.2")
    os.symlink("/usr/lib64", root / "lib64")
    os.symlink("usr/lib", root / "lib")
    os.symlink("usr/bin", root / "bin")
    os.symlink("dash", root / "usr/bin/sh")
    (root / "etc/ld.so.conf.d").mkdir(parents=True)
    (root / "etc/ld.so.conf").write_text("include /etc/ld.so.conf.d/*.conf\n")
    (root / "etc/ld.so.conf.d/x86_64-linux-gnu.conf").write_text(
        "# Multiarch support\n/usr/local/lib/x86_64-linux-gnu\n/lib/x86_64-linux-gnu\n/usr/lib/x86_64-linux-gnu\n")
    return root


BASE = {"lib64", "usr/lib64/ld-linux-x86-64.so.2", "lib", f"{MULTIARCH}/ld-linux-x86-64.so.2", f"{MULTIARCH}/libc.so.6"}


@needs_debian_amd64
def test_foreign_tree_resolves_inside_it_only(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    touched: list[bytes] = []
    for name in ("lstat", "stat", "listdir", "readlink", "open"):
        real = getattr(os, name)

        def spy(path: object, *args: object, _real: object = real, **kw: object) -> object:
            if isinstance(path, (str, bytes)) and os.fsencode(path).startswith(b"/") and kw.get("dir_fd") is None:
                touched.append(os.fsencode(path))
            return _real(path, *args, **kw)  # type: ignore[operator]

        monkeypatch.setattr(os, name, spy)
    closure = Closure(os.fsencode(tree))
    closure.add("usr/bin/true", "the test's seed")
    monkeypatch.undo()
    assert set(closure.needs) == {"usr/bin/true", *BASE}
    assert closure.missing == [] and closure.unreadable == []
    assert closure.needs["lib64"].why == f"symlink on the way to {MULTIARCH}/ld-linux-x86-64.so.2"
    assert closure.chain("lib64") == ["lib64", f"{MULTIARCH}/ld-linux-x86-64.so.2", "usr/bin/true"]
    assert closure.needs[f"{MULTIARCH}/libc.so.6"].why == "DT_NEEDED libc.so.6 of usr/bin/true"
    assert closure.needs["usr/bin/true"].why == "the test's seed"
    outside = [p for p in touched if not p.startswith(os.fsencode(tree))]
    assert touched and outside == []


@needs_debian_amd64
def test_a_library_missing_from_the_tree_is_missing_even_if_this_machine_has_it(tree: Path) -> None:
    (tree / MULTIARCH / "libc.so.6").unlink()
    closure = Closure(os.fsencode(tree))
    closure.add("/usr/bin/true", "seed")
    assert closure.missing == [("libc.so.6", "usr/bin/true")]
    closure.add("usr/bin/nothere", "a seed the tree lacks")
    assert ("usr/bin/nothere", "a seed the tree lacks") in closure.missing


@needs_debian_amd64
def test_wrong_class_and_non_elf_candidates_are_passed_over(tree: Path) -> None:
    (tree / "etc/ld.so.conf.d/00-local.conf").write_text("/usr/local/lib\n/opt/junk\n")
    copy_in(tree, "usr/local/lib/libc.so.6", make_elf(elf_class=1, machine=3, soname="libc.so.6"))
    copy_in(tree, "opt/junk/libc.so.6", b"not a library")
    # a link that climbs above the root with '..' lands inside the tree, as in a chroot
    os.symlink("../../../../../../../../../usr/lib/x86_64-linux-gnu/libc.so.6", tree / "usr/local/lib/libesc.so.1")
    closure = Closure(os.fsencode(tree))
    assert closure.conf_dirs == ("usr/local/lib", "opt/junk", "usr/local/lib/x86_64-linux-gnu",
                                 "lib/x86_64-linux-gnu", "usr/lib/x86_64-linux-gnu")
    closure.add("usr/bin/true", "seed")
    assert set(closure.needs) == {"usr/bin/true", *BASE}
    assert closure.needs[f"{MULTIARCH}/libc.so.6"].parent == "usr/bin/true"
    closure.add("usr/local/lib/libesc.so.1", "seed")
    assert "usr/local/lib/libesc.so.1" in closure.needs and closure.missing == []


@needs_debian_amd64
def test_script_interpreters(tree: Path) -> None:
    copy_in(tree, "usr/bin/python3", Path("/usr/bin/true"))
    copy_in(tree, "usr/libexec/a", b"#!/bin/sh -e\necho a\n")
    copy_in(tree, "usr/libexec/b", b"#! /usr/bin/env -S python3 -u\nprint()\n")
    copy_in(tree, "usr/libexec/c", b"#!/usr/bin/env nothere\n")
    copy_in(tree, "usr/share/doc/readme", b"plain text\n", 0o644)
    closure = Closure(os.fsencode(tree))
    for seed in ("usr/libexec/a", "usr/libexec/b", "usr/libexec/c", "usr/share/doc/readme"):
        closure.add(seed, "seed")
    assert set(closure.needs) == {"usr/libexec/a", "usr/libexec/b", "usr/libexec/c", "usr/share/doc/readme",
                                  "bin", "usr/bin/sh", "usr/bin/dash", "usr/bin/env", "usr/bin/python3", *BASE}
    assert closure.needs["usr/bin/dash"].why == "#! interpreter of usr/libexec/a"
    assert closure.needs["usr/bin/python3"].why == "#! /usr/bin/env python3 of usr/libexec/b"
    assert closure.chain(f"{MULTIARCH}/libc.so.6") == [f"{MULTIARCH}/libc.so.6", "usr/bin/dash", "usr/libexec/a"]
    assert closure.missing == [("nothere", "usr/libexec/c")]


DLOPEN_PROG = DLOPEN_C.replace("int main", """
ELF_NOTE_DLOPEN("[{\\"priority\\":\\"required\\",\\"soname\\":[\\"libsysxreq.so.1\\"]},"
                "{\\"priority\\":\\"recommended\\",\\"soname\\":[\\"libsysxnone.so.9\\",\\"libsysxrec.so.1\\"]},"
                "{\\"priority\\":\\"suggested\\",\\"soname\\":[\\"libsysxsug.so.1\\"]},"
                "{\\"priority\\":\\"recommended\\",\\"soname\\":[\\"libsysxnope.so.1\\"]},"
                "{\\"priority\\":\\"required\\",\\"soname\\":[\\"libsysxgone.so.1\\"]}]", note_test);
int main""")


@needs_debian_amd64
def test_dlopen_notes_keep_required_and_recommended(tree: Path, tmp_path: Path) -> None:
    for name in ("libsysxreq.so.1", "libsysxrec.so.1", "libsysxsug.so.1"):
        lib = gcc_build(tmp_path, "int f(void){return 0;}", name, "-shared", "-fPIC", f"-Wl,-soname,{name}")
        copy_in(tree, f"{MULTIARCH}/{name}", lib)
    # libtss2-esys and libpcre2-8 of DLOPEN_C: one absent (required: missing), one present
    copy_in(tree, f"{MULTIARCH}/libpcre2-8.so.0", gcc_build(tmp_path, "int g(void){return 0;}", "libpcre2-8.so.0",
                                                            "-shared", "-fPIC", "-Wl,-soname,libpcre2-8.so.0"))
    copy_in(tree, "usr/bin/prog", gcc_build(tmp_path, DLOPEN_PROG, "prog"))
    closure = Closure(os.fsencode(tree))
    closure.add("usr/bin/prog", "seed")
    libs = {k for k in closure.needs if k.startswith(f"{MULTIARCH}/lib")}
    assert libs == {f"{MULTIARCH}/libc.so.6", f"{MULTIARCH}/libsysxreq.so.1", f"{MULTIARCH}/libsysxrec.so.1",
                    f"{MULTIARCH}/libpcre2-8.so.0"}
    assert closure.needs[f"{MULTIARCH}/libsysxrec.so.1"].why == \
        ".note.dlopen (recommended) libsysxrec.so.1 of usr/bin/prog"
    assert sorted(closure.missing) == [("libsysxgone.so.1", "usr/bin/prog"),
                                       ("libtss2-esys.so.0 | libtss2-esys.so.1", "usr/bin/prog")]
