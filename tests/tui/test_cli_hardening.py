"""Odd inputs as users hit them on the command line: each is one clear error line naming what and
where (a spec problem at file:line:col), with exit code 2 for bad input, or a plan warning; never
a traceback or a hang."""

from __future__ import annotations

import io
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_helpers import CLI
from cryptography.hazmat.primitives import serialization

from sysextant.core.demo import create_demo


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return create_demo(tmp_path_factory.mktemp("hardening") / "demo", scale=0.02)


def run(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """The CLI in a child process; a hang fails the test after ``timeout`` seconds instead of
    hanging the suite (subprocess.run kills the child and raises TimeoutExpired)."""
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def variant(demo: Path, name: str, old: str, new: str) -> Path:
    """A copy of the demo spec beside it (same relative paths) with ``old`` replaced by ``new``."""
    text = demo.read_text()
    assert old in text, old
    path = demo.with_name(name)
    path.write_text(text.replace(old, new, 1))
    return path


def where(spec: Path, needle: str) -> str:
    """``spec:LINE:COL`` of the value after ``needle`` (a key with its colon and space)."""
    for n, line in enumerate(spec.read_text().splitlines(), 1):
        if needle in line:
            return f"{spec}:{n}:{line.index(needle) + len(needle) + 1}"
    raise AssertionError(needle)


def one_error(proc: subprocess.CompletedProcess[str]) -> str:
    """The single error line of a failed command (exit code 2, no traceback)."""
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("sysextant: error: "), proc.stderr
    return lines[0]


# 1 -------------------------------------------------------------------------------------------
def test_tilde_of_an_unknown_user(demo: Path) -> None:
    spec = variant(demo, "tilde.yaml", "root: rootfs ", "root: ~nosuchuser-sysextant/rootfs ")
    err = one_error(run("plan", str(spec), "--no-estimate"))
    assert f"{where(spec, 'root: ')}: os.root" in err
    assert "no user 'nosuchuser-sysextant'" in err and "RuntimeError" not in err
    spec = variant(demo, "tilde-key.yaml", "key: keys/db.key", "key: ~nosuchuser-sysextant/db.key")
    err = one_error(run("plan", str(spec), "--no-estimate"))
    assert f"{where(spec, 'key: ')}: signing.key" in err and "no user 'nosuchuser-sysextant'" in err


# 2 -------------------------------------------------------------------------------------------
def test_empty_passphrase_variable(demo: Path) -> None:
    plain = (demo.parent / "keys/db.key").read_bytes()
    key = serialization.load_pem_private_key(plain, password=None)
    encrypted = demo.parent / "keys/encrypted.key"
    encrypted.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                            serialization.BestAvailableEncryption(b"secret")))
    encrypted.chmod(0o600)
    spec = variant(demo, "empty-pass.yaml", "key: keys/db.key",
                   "key: keys/encrypted.key\n  passphrase_env: SYSEXTANT_TEST_PASS")
    err = one_error(run("build", str(spec), "--only", "firmware", env={"SYSEXTANT_TEST_PASS": ""}))
    assert str(encrypted) in err and "$SYSEXTANT_TEST_PASS" in err and "empty" in err
    assert "TypeError" not in err


# 3 -------------------------------------------------------------------------------------------
def _import_everything() -> None:
    """Import the engine (and the compressors it loads lazily) before forking: the child runs as
    nobody, who may not be able to read the Python installation (e.g. pyenv under /root)."""
    import bz2  # noqa: F401
    import gzip  # noqa: F401
    import importlib
    import lzma  # noqa: F401
    import pkgutil

    import sysextant.core
    import sysextant.tui.cli  # noqa: F401

    for module in pkgutil.walk_packages(sysextant.core.__path__, "sysextant.core."):
        importlib.import_module(module.name)


def _cli_in_child(argv: list[str]) -> tuple[int, str]:
    """``sysextant ARGV`` in this (forked, unprivileged) process: its exit code and stderr."""
    from sysextant.tui.cli import main

    err = io.StringIO()
    sys.stderr = err
    try:
        code = main(argv)
    finally:
        sys.stderr = sys.__stderr__
    return code, err.getvalue()


@pytest.fixture
def shared_demo(demo: Path) -> Iterator[Path]:
    """A copy of the demo project owned by nobody, in a folder nobody can reach (tmp_path cannot:
    pytest makes it 0700 for root), with unsigned, uncompressed builds to keep the test quick."""
    folder = Path(tempfile.mkdtemp(prefix="sysextant-ro-"))
    try:
        folder.chmod(0o755)
        project = folder / "demo"
        shutil.copytree(demo.parent, project, symlinks=True, ignore=shutil.ignore_patterns("build", "*.yaml"))
        text = demo.read_text().replace("compression: zstd", "compression: none")
        text = re.sub(r"signing:.*?\n\n", "", text, flags=re.S)
        (project / "sysextant.yaml").write_text(text)
        if os.geteuid() == 0:
            for path in [project, *project.rglob("*")]:
                os.lchown(path, 65534, 65534)
        yield project / "sysextant.yaml"
    finally:
        shutil.rmtree(folder)


def test_read_only_output_folder(shared_demo: Path) -> None:
    from unprivileged import run_unprivileged

    _import_everything()
    project = shared_demo.parent
    out = project / "build"
    out.mkdir()
    out.chmod(0o555)
    if os.geteuid() == 0:
        os.chown(out, 0, 0)  # nobody cannot write into it
    code, err = run_unprivileged(_cli_in_child, ["build", str(shared_demo), "--only", "firmware", "--json"])
    assert code == 2 and "Traceback" not in err and len(err.splitlines()) == 1, err
    assert str(out) in err and "ermission denied" in err, err


def test_read_only_uki_output_folder(shared_demo: Path) -> None:
    """uki.output may sit in a folder of its own; the UKI's scratch initrd is made there first."""
    from unprivileged import run_unprivileged

    _import_everything()
    project = shared_demo.parent
    readonly = project / "esp"
    readonly.mkdir()
    readonly.chmod(0o555)
    if os.geteuid() == 0:
        os.chown(readonly, 0, 0)
    spec = shared_demo.with_name("esp.yaml")
    spec.write_text(shared_demo.read_text().replace("output: build/uki.efi", "output: esp/uki.efi"))
    code, err = run_unprivileged(_cli_in_child, ["build", str(spec), "--only", "uki", "--json"])
    assert code == 2 and "Traceback" not in err and len(err.splitlines()) == 1, err
    assert f"cannot write into the output folder {readonly} (to write uki.efi): permission denied" in err, err


# 4 -------------------------------------------------------------------------------------------
def test_fifo_spec_is_refused_without_waiting(tmp_path: Path) -> None:
    fifo = tmp_path / "spec.yaml"
    os.mkfifo(fifo)
    err = one_error(run("plan", str(fifo), timeout=30))
    assert f"{fifo}: is a named pipe (FIFO), not a spec file" in err


# 5 -------------------------------------------------------------------------------------------
def test_control_characters_in_cmdline_and_uname(demo: Path) -> None:
    spec = variant(demo, "nul.yaml", 'cmdline: "console=ttyS0 rd.immucore.debug"',
                   'cmdline: "console=ttyS0\\0 init=/bin/sh"')
    err = one_error(run("plan", str(spec), "--no-estimate"))
    assert f"{where(spec, 'cmdline: ')}: uki.cmdline contains a control character (NUL) at position 14" in err
    spec = variant(demo, "uname.yaml", "output: build/uki.efi", 'output: build/uki.efi\n  uname: "6.6.1\\e[2J"')
    err = one_error(run("plan", str(spec), "--no-estimate"))
    assert f"{where(spec, 'uname: ')}: uki.uname" in err and "control character (ESC) at position 6" in err


# 6 -------------------------------------------------------------------------------------------
def test_splash_that_is_not_a_bmp(demo: Path) -> None:
    png = demo.parent / "splash.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(200))
    spec = variant(demo, "splash.yaml", "output: build/uki.efi", "output: build/uki.efi\n  splash: splash.png")
    proc = run("plan", str(spec), "--no-estimate")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr  # plan: 1 when the spec has problems
    problem = f"problem: {where(spec, 'splash: ')}: uki.splash {png} is not a BMP image"
    assert problem in proc.stdout, proc.stdout
    proc = run("build", str(spec), "--only", "firmware")  # the build refuses it before any work
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"uki.splash {png} is not a BMP image" in proc.stderr


# 7 -------------------------------------------------------------------------------------------
def test_readable_private_key_is_a_warning(demo: Path) -> None:
    loose = demo.parent / "keys/loose.key"
    shutil.copy(demo.parent / "keys/db.key", loose)
    loose.chmod(0o644)
    spec = variant(demo, "loose.yaml", "key: keys/db.key", "key: keys/loose.key")
    proc = run("plan", str(spec), "--no-estimate")
    assert proc.returncode == 0, proc.stderr
    assert (f"warning: {where(spec, 'key: ')}: signing.key {loose} is a private key open to its group and others "
            f"(mode 0644); run `chmod 600 {loose}`") in proc.stdout, proc.stdout
    assert "private key" not in run("plan", str(demo), "--no-estimate").stdout  # the demo's is 0600


# 8 -------------------------------------------------------------------------------------------
def test_root_that_is_a_symlink_to_a_folder(demo: Path) -> None:
    link = demo.parent / "rootfs-link"
    if not link.is_symlink():
        link.symlink_to("rootfs")
    spec = variant(demo, "link.yaml", "root: rootfs ", "root: rootfs-link ")
    proc = run("plan", str(spec), "--no-estimate")
    assert proc.returncode == 0, proc.stderr
    assert "firmware" in proc.stdout and "not a folder" not in proc.stdout + proc.stderr
    scanned = run("scan", str(link))
    assert scanned.returncode == 0 and "not a folder" not in scanned.stderr, scanned.stderr


# 9 -------------------------------------------------------------------------------------------
def test_hard_links_outside_the_tree_are_a_warning(tmp_path: Path) -> None:
    root = tmp_path / "rootfs"
    (root / "etc").mkdir(parents=True)
    (root / "boot").mkdir()
    (root / "usr/bin").mkdir(parents=True)
    (root / "etc/os-release").write_text("ID=test\n")
    (root / "boot/vmlinuz").write_bytes(b"MZ" + bytes(100))
    (root / "usr/bin/tool").write_bytes(b"tool")
    (root / "usr/bin/inside").write_bytes(b"both names inside")
    os.link(root / "usr/bin/inside", root / "etc/inside-too")
    os.link(root / "usr/bin/tool", tmp_path / "outside-name")
    (root / "usr/bin/tool").chmod(0o755)
    spec = tmp_path / "spec.yaml"
    spec.write_text("version: 1\nos:\n  root: rootfs\nuki:\n  compression: none\n  init: /usr/bin/tool\n")
    proc = run("plan", str(spec), "--no-estimate")
    assert proc.returncode == 0, proc.stderr
    warnings = [ln for ln in proc.stdout.splitlines() if "links outside" in ln]
    assert warnings == [f"warning: {spec}:3:9: 1 hardlinked file(s) in the OS tree also have links outside it, "
                        "e.g. usr/bin/tool (2 links, 1 in the tree); their content is packed all the same"]


def test_a_bmp_splash_passes(demo: Path) -> None:
    """The check does not refuse what the stub draws: a 2x2 24-bit BMP."""
    row = bytes(6) + bytes(2)  # 2 pixels of 3 bytes, padded to 4
    pixels = row * 2
    bmp = demo.parent / "splash.bmp"
    bmp.write_bytes(struct.pack("<2sIHHI", b"BM", 54 + len(pixels), 0, 0, 54)
                    + struct.pack("<IiiHHIIiiII", 40, 2, 2, 1, 24, 0, len(pixels), 0, 0, 0, 0) + pixels)
    spec = variant(demo, "bmp.yaml", "output: build/uki.efi", "output: build/uki.efi\n  splash: splash.bmp")
    proc = run("plan", str(spec), "--no-estimate")
    assert proc.returncode == 0 and "splash" not in proc.stdout, proc.stdout


# -- a stop signal while the program is still loading --------------------------------------------
# The CI's chaos run once sent SIGINT while `python -m sysextant.tui.cli build` was importing
# sysextant.core (a loaded machine: past 0.2 s) and got a KeyboardInterrupt traceback. The child
# below sends itself the signal at the moment the engine's first module is imported, through an
# import hook, so the test hits that window every time.
LOADING_STOP = """
import importlib.abc, os, runpy, signal, sys
SIG = getattr(signal, sys.argv[1])

class StopAtCore(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "sysextant.core":
            sys.meta_path.remove(self)
            os.kill(os.getpid(), SIG)
        return None

sys.meta_path.insert(0, StopAtCore())
sys.argv = ["sysextant", "--help"]
if {how!r} == "module":
    runpy.run_module("sysextant.tui.cli", run_name="__main__")
else:
    from sysextant.tui.entry import main
    sys.exit(main())
"""


@pytest.mark.parametrize("how", ["module", "console-script"])
@pytest.mark.parametrize(("sig", "code", "words"), [
    ("SIGINT", 130, "sysextant: cancelled; no partial output was left behind"),
    ("SIGTERM", 143, "sysextant: stopped by SIGTERM; no partial output was left behind"),
])
def test_a_stop_while_the_program_loads_is_one_line_not_a_traceback(how: str, sig: str, code: int,
                                                                     words: str) -> None:
    proc = subprocess.run([sys.executable, "-c", LOADING_STOP.format(how=how), sig], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == code, proc.stderr
    assert proc.stderr.strip() == words and "Traceback" not in proc.stderr
    assert proc.stdout == ""  # stopped before --help was printed: the hook fired while loading
