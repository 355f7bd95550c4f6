"""The spec loader: values, defaults, paths, and a precise problem for every kind of mistake."""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sysextant.core.errors import UserError
from sysextant.core.spec import load as S
from sysextant.core.spec.load import (
    Problem,
    SpecError,
    extension_name_problem,
    load_spec,
    loads_spec,
)
from sysextant.core.spec.model import ExtensionSpec
from sysextant.core.spec.write import new_spec_text, scalar_text
from sysextant.core.units import GiB, MiB

FULL = """\
version: 1
os:
  root: rootfs
  kernel: boot/vmlinuz-6.1
  exclude: [var/cache, usr/share/doc/*]
uki:
  stub: stub/linuxx64.efi.stub
  cmdline: "console=ttyS0 rd.immucore.debug"
  init: /usr/bin/immucore
  compression: gzip
  level: 6
  limit: ovmf
  output: out/uki.efi
  splash: splash.bmp
  os_release: os-release
  uname: 6.1.0-18-amd64
  pcr_key: keys/pcr.key
  pcr_cert: keys/pcr.pem
signing:
  key: keys/db.key
  cert: /etc/keys/db.pem
  passphrase_env: DB_PASS
extensions:
  - name: firmware
    version: 1.10
    paths: [usr/lib/firmware, usr/share/firmware/]
    exclude: [usr/lib/firmware/amdgpu/*]
    filesystem: squashfs
    compression: zstd
    release: {ID: kairos, VERSION_ID: 1.0, ARCHITECTURE: arm64, SYSEXT_SCOPE: system initrd}
  - name: k3s.tools
    paths:
      - opt/k3s
      - usr/bin/k3s
output: images
"""

MINIMAL = """\
version: 1
os:
  root: rootfs
extensions:
  - name: firmware
    paths: [usr/lib/firmware]
"""


def load(text: str, name: str = "/srv/proj/spec.yaml") -> S.Spec:
    return loads_spec(text, Path(name))


def problems(text: str) -> list[Problem]:
    with pytest.raises(SpecError) as info:
        load(text)
    assert info.value.problems, "a SpecError always lists its problems"
    return info.value.problems


def test_full_spec_values_and_paths() -> None:
    spec = load(FULL)
    base = Path("/srv/proj")
    assert spec.os.root == base / "rootfs"
    assert spec.os.kernel == base / "rootfs/boot/vmlinuz-6.1"
    assert spec.os.exclude == ["var/cache", "usr/share/doc/*"]
    u = spec.uki
    assert u.stub == base / "stub/linuxx64.efi.stub"
    assert u.cmdline == "console=ttyS0 rd.immucore.debug"
    assert u.init == "/usr/bin/immucore"
    assert (u.compression, u.level) == ("gzip", 6)
    assert (u.limit, u.limit_text) == (2 * GiB, "ovmf")
    assert u.output == base / "out/uki.efi"
    assert u.splash == base / "splash.bmp" and u.os_release == base / "os-release"
    assert u.uname == "6.1.0-18-amd64"
    assert (u.pcr_key, u.pcr_cert) == (base / "keys/pcr.key", base / "keys/pcr.pem")
    assert spec.signing is not None
    assert spec.signing.key == base / "keys/db.key"
    assert spec.signing.cert == Path("/etc/keys/db.pem")
    assert spec.signing.passphrase_env == "DB_PASS"
    fw, k3s = spec.extensions
    # The scalar text as written: 1.10 and 1.0 are not floats here.
    assert fw.version == "1.10"
    assert fw.release == {"ID": "kairos", "VERSION_ID": "1.0", "ARCHITECTURE": "arm64",
                          "SYSEXT_SCOPE": "system initrd"}
    assert fw.paths == ["usr/lib/firmware", "usr/share/firmware"]  # trailing '/' normalised
    assert fw.exclude == ["usr/lib/firmware/amdgpu/*"]
    assert (fw.filesystem, fw.compression) == ("squashfs", "zstd")
    assert fw.architecture == "arm64"
    assert k3s.name == "k3s.tools" and k3s.paths == ["opt/k3s", "usr/bin/k3s"]
    assert spec.output == base / "images"


def test_locations_cover_every_key_and_list_item() -> None:
    spec = load(FULL)
    assert spec.locations[("version",)] == (1, 10)
    assert spec.locations[("extensions", 0, "paths", 1)] == (26, 31)
    assert spec.locations[("extensions", 1, "paths", 1)] == (34, 9)
    assert spec.locations[("extensions", 0, "release", "ARCHITECTURE")] == (30, 58)
    assert spec.where("extensions", 1, "paths", 0) == "/srv/proj/spec.yaml:33:9"
    assert spec.where("extensions", 1, "no-such-key") == "/srv/proj/spec.yaml:31:5"


def test_defaults() -> None:
    spec = load(MINIMAL)
    base = Path("/srv/proj")
    assert spec.os.kernel == base / "rootfs/boot/vmlinuz"
    assert spec.os.exclude == []
    assert spec.uki.stub == Path("/usr/lib/systemd/boot/efi/linuxx64.efi.stub")
    assert (spec.uki.compression, spec.uki.level, spec.uki.limit) == ("zstd", 19, 1 * GiB)
    assert spec.uki.output == base / "build/uki.efi"
    assert spec.uki.init is None and spec.uki.cmdline == "console=ttyS0"
    assert spec.signing is None
    ext = spec.extensions[0]
    assert (ext.version, ext.filesystem, ext.compression) == ("1.0", "erofs", "none")
    assert ext.release == {"ID": "_any", "ARCHITECTURE": "x86-64"}
    assert spec.output == base / "build"


def test_compression_picks_its_default_level_and_absolute_kernel() -> None:
    text = MINIMAL.replace("  root: rootfs\n", "  root: rootfs\n  kernel: /boot/vmlinuz\n")
    spec = load(text + "uki: {compression: xz}\nsigning: null\n")
    assert (spec.uki.compression, spec.uki.level) == ("xz", 6)
    assert spec.os.kernel == Path("/boot/vmlinuz")
    assert spec.signing is None


def test_relative_spec_path_resolves_against_its_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub/spec.yaml").write_text(MINIMAL)
    monkeypatch.chdir(tmp_path)
    spec = load_spec(Path("sub/spec.yaml"))
    assert spec.os.root == tmp_path / "sub/rootfs"
    assert spec.path == Path("sub/spec.yaml")


def test_problem_text() -> None:
    p = Problem(Path("spec.yaml"), 12, 7, "unknown key 'filesytem' in extensions[0]", "did you mean 'filesystem'?")
    assert str(p) == "spec.yaml:12:7: unknown key 'filesytem' in extensions[0] (did you mean 'filesystem'?)"
    assert str(Problem(Path("s.yaml"), 0, 0, "is a folder")) == "s.yaml: is a folder"
    err = SpecError([Problem(Path("a"), 3, 1, "x"), Problem(Path("a"), 1, 2, "y")])
    assert str(err) == "a:1:2: y\na:3:1: x"
    assert isinstance(err, UserError)


# Each case: a change to FULL, the expected (line, column) and words of the message / hint.
CASES = [
    ("version: 1\n", "version: 2\n", (1, 10), "unsupported spec version", "version 1"),
    ("version: 1\n", 'version: "1"\n', (1, 10), "not the text '1'", "remove the quotes"),
    ("version: 1\n", "", (1, 1), "no 'version: 1'", ""),
    ("  kernel: boot/vmlinuz-6.1\n", "  kernle: boot/vmlinuz-6.1\n", (4, 3), "unknown key 'kernle' in os", "did you mean 'kernel'?"),
    ("    filesystem: squashfs\n", "    filesytem: squashfs\n", (28, 5), "unknown key 'filesytem' in extensions[0]", "did you mean 'filesystem'?"),
    ("  root: rootfs\n", "  root: rootfs\n  root: other\n", (4, 3), "duplicate key 'root' in os", "first at line 3"),
    ("  root: rootfs\n", "", (3, 3), "os has no 'root'", ""),
    ("  level: 6\n", "  level: 10\n", (11, 10), "uki.level 10 is out of range for gzip", "from 1 to 9"),
    ("  level: 6\n", "  level: high\n", (11, 10), "uki.level must be a whole number", ""),
    ("  level: 6\n", '  level: "6"\n', (11, 10), "must be a whole number, not the text '6'", "remove the quotes"),
    ("  level: 6\n", "  level: 1.5\n", (11, 10), "must be a whole number", ""),
    ("  compression: gzip\n  level: 6\n", "  compression: zstd\n  level: 23\n", (11, 10), "out of range for zstd", "from 1 to 22"),
    ("  compression: gzip\n  level: 6\n", "  compression: xz\n  level: -1\n", (11, 10), "out of range for xz", "from 0 to 9"),
    ("  compression: gzip\n", "  compression: lzma\n", (10, 16), "uki.compression: unknown value 'lzma'", "zstd, gzip, xz, none"),
    ("  limit: ovmf\n", "  limit: 800\n", (12, 10), "has no unit: write 800B, or 800MiB", "or a preset: small-firmware"),
    ("  limit: ovmf\n", "  limit: 800 parsecs\n", (12, 10), "unknown unit 'parsecs'", ""),
    ("  limit: ovmf\n", "  limit: firmware\n", (12, 10), "cannot read size 'firmware': write a number with a unit such as 1GiB or a preset (small-firmware", ""),
    ("  limit: ovmf\n", "  limit: 5GiB\n", (12, 10), "above 4 GiB", "pe-max"),
    ("  limit: ovmf\n", "  limit: 0B\n", (12, 10), "more than 0", ""),
    ("  init: /usr/bin/immucore\n", "  init: immucore\n", (9, 9), "must be an absolute path", "/usr/bin/immucore"),
    ("  uname: 6.1.0-18-amd64\n", "  uname: 6.1 amd64\n", (16, 10), "must be one word", ""),
    ("  pcr_key: keys/pcr.key\n", "", (17, 13), "pcr_cert is set without uki.pcr_key", ""),
    ("  cert: /etc/keys/db.pem\n", "", (20, 3), "signing has no 'cert'", "remove signing"),
    ("  passphrase_env: DB_PASS\n", "  passphrase_env: hunter 2\n", (22, 19), "not an environment variable name", ""),
    ("  - name: firmware\n", "  - name: firm_ware\n", (24, 11), "contains '_'", ""),
    ("  - name: firmware\n", "  - name: .firmware\n", (24, 11), "starts with '.'", ""),
    ("  - name: firmware\n", "  - name: fw/x\n", (24, 11), "contains '/'", ""),
    ("  - name: firmware\n", "  - name: fw x\n", (24, 11), "may only hold letters", ""),
    ("  - name: firmware\n", "  - name: ''\n", (24, 11), "name is empty", ""),
    ("  - name: firmware\n", "  - name:\n", (24, 10), "extensions[0].name has no value", ""),
    ("  - name: firmware\n", "  - version: '1'\n", (24, 5), "extensions[0] has no name", ""),
    ("  - name: k3s.tools\n", "  - name: firmware\n", (31, 11), "name 'firmware' is used twice", "first at line 24"),
    ("  - name: k3s.tools\n", "  - name: Firmware\n", (31, 11), "differ only in case", "FAT"),
    ("    version: 1.10\n", "    version: 1 0\n", (25, 14), "is not a version", ""),
    ("[usr/lib/firmware, usr/share/firmware/]", "usr/lib/firmware", (26, 12), "paths must be a list", "write paths: [usr/lib/firmware]"),
    ("[usr/lib/firmware, usr/share/firmware/]", "[usr/lib/firmware, [a]]", (26, 31), "paths[1] must be text", ""),
    ("[usr/lib/firmware, usr/share/firmware/]", "[/usr/lib/firmware]", (26, 13), "is absolute", "'usr/lib/firmware'"),
    ("[usr/lib/firmware, usr/share/firmware/]", "[usr/lib/../../etc]", (26, 13), "contains '..'", ""),
    ("[usr/lib/firmware, usr/share/firmware/]", "[etc/ssl]", (26, 13), "outside usr/ and opt/", "merges only /usr and /opt"),
    ("[usr/lib/firmware, usr/share/firmware/]", "['*/lib']", (26, 13), "glob in its first folder", ""),
    ("[usr/lib/firmware, usr/share/firmware/]", "[usr/lib/os-release]", (26, 13), "usr/lib/os-release", "remove it"),
    ("[usr/lib/firmware, usr/share/firmware/]", "[usr/lib/os-*]", (26, 13), "usr/lib/os-release", "exclude"),
    ("[usr/lib/firmware, usr/share/firmware/]", "[usr/lib]", (26, 13), "usr/lib/os-release", "exclude"),
    ("[usr/lib/firmware, usr/share/firmware/]", "[usr/lib/extension-release.d/x]", (26, 13), "extension-release.d", ""),
    ("[usr/lib/firmware, usr/share/firmware/]", "[usr/x, usr/x/]", (26, 20), "listed twice", "paths[0]"),
    ("[usr/lib/firmware, usr/share/firmware/]", "['']", (26, 13), "empty path", ""),
    ("[usr/lib/firmware, usr/share/firmware/]", "[usr/x/., ./usr/x/]", (26, 22), "listed twice", ""),
    ("    exclude: [usr/lib/firmware/amdgpu/*]\n", "    exclude: [/usr/x]\n", (27, 15), "exclude[0]: glob '/usr/x' is absolute", ""),
    ("    filesystem: squashfs\n", "    filesystem: ext4\n", (28, 17), "unknown value 'ext4'", "erofs, squashfs"),
    ("    compression: zstd\n", "    compression: zstd2\n", (29, 18), "unknown value 'zstd2'", "did you mean 'zstd'?"),
    ("    filesystem: squashfs\n    compression: zstd\n", "    compression: zstd\n", (28, 18), "unknown value 'zstd'", "none, lz4, lz4hc"),
    ("{ID: kairos, ", "{", (30, 14), "release has no ID", "_any"),
    ("ID: kairos", "ID: Kairos OS", (30, 19), "is not an os-release ID", ""),
    ("ARCHITECTURE: arm64", "ARCHITECTURE: amd64", (30, 58), "unknown architecture 'amd64'", "x86-64"),
    ("VERSION_ID: 1.0", "version_id: 1.0", (30, 27), "release key 'version_id'", "write 'VERSION_ID'"),
    ("VERSION_ID: 1.0", "VERSION_ID: [1]", (30, 39), "must be text", ""),
    ("SYSEXT_SCOPE: system initrd", "SYSEXT_SCOPE: system host", (30, 79), "unknown scope 'host'", ""),
    ("release: {ID: kairos, ", "release: {ID: a, ID: b, ", (30, 22), "duplicate key 'ID'", ""),
    ("output: images\n", "output: [images]\n", (35, 9), "output must be text", ""),
    ("os:\n", "os: 3\nx:\n", (2, 5), "os must be a mapping", "valid keys"),
    ("extensions:\n", "extensions: {}\nx:\n", (23, 13), "extensions must be a list", ""),
    ("  - name: firmware\n", "  - 3\n  - name: firmware\n", (24, 5), "extensions[0] must be a mapping", ""),
    ("os:\n", "? [a]\n: b\nos:\n", (2, 3), "keys must be words", ""),
    ("version: 1\n", "version: 1\nversion: 1\n", (2, 1), "duplicate key 'version'", ""),
    ("output: images\n", "output: !!str images\n", (35, 9), "YAML tag '!!str'", ""),
    ("output: images\n", "output: &o images\nx: *o\n", (35, 9), "YAML anchor '&o'", ""),
    ("output: images\n", "output: images\n  bad: indent\n", (36, 6), "YAML syntax error", ""),
    ("output: images\n", "output: images\n\tx: 1\n", (36, 1), "YAML syntax error", "not tabs"),
    ("output: images\n", "output: images\n---\nx: 1\n", (36, 1), "expected a single document", ""),
    ("output: images\n", "output: a: b\n", (35, 10), "mapping values are not allowed", "quote"),
    ("output: images\n", "output: images\x07\n", (35, 15), "character '\\x07' is not allowed", ""),
    # '~user' of a user this machine does not have (pathlib raises RuntimeError)
    ("  root: rootfs\n", "  root: ~nosuchuser-x/rootfs\n", (3, 9),
     "os.root: '~nosuchuser-x/rootfs' starts with '~nosuchuser-x', but this machine has no user 'nosuchuser-x'",
     "in full"),
    ("  kernel: boot/vmlinuz-6.1\n", "  kernel: ~nosuchuser-x/vmlinuz\n", (4, 11), "os.kernel: '~nosuchuser-x/vmlinuz'", ""),
    ("  splash: splash.bmp\n", "  splash: ~nosuchuser-x/s.bmp\n", (14, 11), "uki.splash: '~nosuchuser-x/s.bmp'", ""),
    ("  key: keys/db.key\n", "  key: ~nosuchuser-x/db.key\n", (20, 8), "no user 'nosuchuser-x'", ""),
    # control characters in what the stub reads as text
    ('  cmdline: "console=ttyS0 rd.immucore.debug"\n', '  cmdline: "console=ttyS0\\0 init=/bin/sh"\n', (8, 12),
     "uki.cmdline contains a control character (NUL) at position 14", "ends the command line at a NUL"),
    ('  cmdline: "console=ttyS0 rd.immucore.debug"\n', '  cmdline: "quiet \\e[2J"\n', (8, 12),
     "control character (ESC) at position 7", "into spaces"),
    ('  cmdline: "console=ttyS0 rd.immucore.debug"\n', '  cmdline: "a\\x7fb"\n', (8, 12), "(DEL) at position 2", ""),
    ('  cmdline: "console=ttyS0 rd.immucore.debug"\n', '  cmdline: "a\\x9bb"\n', (8, 12), "(U+009B) at position 2", ""),
    ("  uname: 6.1.0-18-amd64\n", '  uname: "6.1.0\\0-amd64"\n', (16, 10),
     "uki.uname '6.1.0\\x00-amd64' contains a control character (NUL) at position 6", ""),
    ("  uname: 6.1.0-18-amd64\n", '  uname: "6.1.0-18-amd64\\n"\n', (16, 10), "(line break) at position 15", ""),
]


@pytest.mark.parametrize(("old", "new", "where", "message", "hint"), CASES,
                         ids=[f"{i}-{c[3][:30]}" for i, c in enumerate(CASES)])
def test_each_problem_is_reported_where_it_is(old: str, new: str, where: tuple[int, int],
                                              message: str, hint: str) -> None:
    assert old in FULL
    found = problems(FULL.replace(old, new, 1))
    match = [p for p in found if message in p.message]
    assert match, f"no problem with {message!r} in:\n" + "\n".join(map(str, found))
    p = match[0]
    assert (p.line, p.column) == where, str(p)
    assert hint in p.hint, str(p)
    assert str(p).startswith(f"/srv/proj/spec.yaml:{where[0]}:{where[1]}: ")


def test_cmdline_line_breaks_and_tabs_are_spaces() -> None:
    """What the stub (and the kernel) treat as spaces is folded, not refused: a block scalar's
    line breaks, a trailing newline, tabs."""
    for written in ('"console=ttyS0\\tquiet\\r\\n"', "|\n    console=ttyS0\n    quiet\n", ">-\n    console=ttyS0\n\n    quiet"):
        spec = load(FULL.replace('"console=ttyS0 rd.immucore.debug"', written))
        assert spec.uki.cmdline == "console=ttyS0 quiet", written


def test_root_symlink_is_resolved_but_only_the_root(tmp_path: Path) -> None:
    real = tmp_path / "images/rootfs"
    (real / "boot").mkdir(parents=True)
    (tmp_path / "rootfs").symlink_to("images/rootfs")
    (tmp_path / "file").write_text("x")
    (tmp_path / "to-file").symlink_to("file")
    spec = loads_spec(MINIMAL, tmp_path / "spec.yaml")
    assert spec.os.root == real.resolve() and spec.os.kernel == real.resolve() / "boot/vmlinuz"
    through_link = MINIMAL.replace("root: rootfs", f"root: rootfs\n  kernel: {tmp_path}/rootfs/boot/vmlinuz-6")
    assert loads_spec(through_link, tmp_path / "spec.yaml").os.kernel == real.resolve() / "boot/vmlinuz-6"
    # a link to something else stays as written: the scan names it and says what is wrong
    spec = loads_spec(MINIMAL.replace("root: rootfs", "root: to-file"), tmp_path / "spec.yaml")
    assert spec.os.root == tmp_path / "to-file"
    spec = loads_spec(MINIMAL.replace("root: rootfs", "root: plain"), tmp_path / "spec.yaml")
    assert spec.os.root == tmp_path / "plain"


def test_every_problem_is_reported_not_only_the_first() -> None:
    text = (FULL.replace("  kernel: boot", "  kernle: boot")
            .replace("  level: 6", "  level: 60")
            .replace("    filesystem: squashfs", "    filesytem: squashfs")
            .replace("ARCHITECTURE: arm64", "ARCHITECTURE: amd64")
            .replace("      - opt/k3s", "      - etc/k3s"))
    found = problems(text)
    assert [p.line for p in found] == [4, 11, 28, 29, 30, 33]


def test_missing_sections_and_empty_or_odd_documents() -> None:
    assert "no 'os' section" in problems("version: 1\n")[0].message
    assert "empty" in problems("")[0].message
    assert "empty" in problems("# only a comment\n")[0].message
    assert "must be a mapping" in problems("- a\n- b\n")[0].message
    assert "must be a mapping" in problems("just words")[0].message
    assert problems("[" * 20000)  # a SpecError, never a RecursionError
    assert "nested far too deeply" in problems("a: " + "[" * 20000)[0].message


@pytest.mark.parametrize(("text", "message"), [
    ("uki:\n  level: 0b_\n", "must be a whole number"),
    ("uki:\n  level: 0x_\n", "must be a whole number"),
    ("uki:\n  level: 1:30\n", "90 is out of range"),
    ("uki: {limit: " + "9" * 400 + "GiB}\n", "is not a size"),
    ("uki: {limit: 1e3GiB}\n", "cannot read size"),
    ("extensions:\n- name: a\n  paths: [usr/x]\n  release: {ID: _any, 3: x}\n", "release key '3'"),
    ("extensions:\n- {name: a, paths: [usr/x], <<: {version: '2'}}\n", "merge key"),
])
def test_odd_values_that_plain_yaml_would_choke_on(text: str, message: str) -> None:
    found = problems("version: 1\nos: {root: r}\n" + text)
    assert any(message in p.message for p in found), found


def test_file_problems_name_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(SpecError, match=r"nope\.yaml: the spec file does not exist"):
        load_spec(missing)
    with pytest.raises(SpecError, match="is a folder"):
        load_spec(tmp_path)
    latin = tmp_path / "latin.yaml"
    latin.write_bytes(b"version: 1\nos:\n  root: r\xe9sum\xe9\n")
    with pytest.raises(SpecError, match=r"latin\.yaml:3:10: byte 0xe9 is not UTF-8"):
        load_spec(latin)
    big = tmp_path / "big.yaml"
    big.write_bytes(b"#" * (S.MAX_SPEC_BYTES + 1))
    with pytest.raises(SpecError, match="larger than"):
        load_spec(big)
    bom = tmp_path / "bom.yaml"
    bom.write_bytes(b"\xef\xbb\xbf" + MINIMAL.encode())
    assert load_spec(bom).extensions[0].name == "firmware"


def test_spec_that_is_not_a_regular_file(tmp_path: Path) -> None:
    """A device or a FIFO is refused before it is opened (a FIFO would block open() for good;
    the command line test checks that no hang happens)."""
    with pytest.raises(SpecError, match=r"^/dev/null: is a character device, not a spec file"):
        load_spec(Path("/dev/null"))
    fifo = tmp_path / "spec.yaml"
    os.mkfifo(fifo)

    def hung(signum: int, frame: object) -> None:
        raise TimeoutError("load_spec blocked on a FIFO")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(10)  # a blocking open() is interrupted: the test fails instead of hanging the suite
    try:
        with pytest.raises(SpecError, match=r"spec\.yaml: is a named pipe \(FIFO\), not a spec file"):
            load_spec(fifo)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    (tmp_path / "link.yaml").symlink_to("/dev/null")
    with pytest.raises(SpecError, match="character device"):
        load_spec(tmp_path / "link.yaml")


def bmp(width: int = 2, height: int = 2, depth: int = 24, compression: int = 0, *, palette: int | None = None,
        dib: int = 40, size_field: int | None = None, pixels: bytes | None = None) -> bytes:
    """A Windows BMP (file header, info header, colour table, pixel rows padded to 4 bytes)."""
    import struct

    colours = (1 << depth if depth <= 8 else 0) if palette is None else palette
    rows = (depth * width + 31) // 32 * 4 * abs(height) if pixels is None else len(pixels)
    offset = 14 + dib + 4 * colours
    size = offset + rows
    info = struct.pack("<IiiHHIIiiII", dib, width, height, 1, depth, compression, rows, 0, 0, 0, 0)
    return (struct.pack("<2sIHHI", b"BM", size if size_field is None else size_field, 0, 0, offset)
            + info + bytes(dib - 40) + bytes(4 * colours) + (bytes(rows) if pixels is None else pixels))


@pytest.mark.parametrize(("data", "why"), [
    (bmp(), None),
    (bmp(3, 5, 8), None),
    (bmp(7, 3, 1), None),
    (bmp(4, 4, 32, compression=3, dib=56), None),
    (bmp(4, 4, 16), None),
    (b"\x89PNG\r\n\x1a\n" + bytes(100), "is not a BMP image (it starts with b'\\x89PNG', not 'BM')"),
    (b"", "is empty"),
    (b"BM" + bytes(20), "truncated BMP (22 bytes"),
    (bmp(size_field=10_000), "its header says 10000 bytes, the file has 70"),
    (bmp(depth=2), "2 bits per pixel"),
    (bmp(compression=1), "compressed (method 1)"),
    (bmp(4, 4, 16, compression=4), "compressed (method 4)"),
    (bmp(100, 100, pixels=bytes(64)), "pixel data does not fit the file (100x100 at 24 bits)"),
    (bmp(4, -4), "stored top-down (a negative height)"),  # the stub reads the height unsigned
    (bmp(0, 4), "no pixels to show (0x4)"),
    (bmp(3, 5, 8, palette=16), "colour table is shorter than 256 colours"),
    (bmp(5000, 5000, 24, pixels=b""), "pixel data does not fit"),
])
def test_splash_must_be_a_bmp_the_stub_draws(tmp_path: Path, data: bytes, why: str | None) -> None:
    path = tmp_path / "splash.bmp"
    path.write_bytes(data)
    got = S.splash_problem(path)
    if why is None:
        assert got is None, got
    else:
        assert got is not None and got.startswith(f"uki.splash {path} ") and why in got, got


def test_splash_that_is_no_file(tmp_path: Path) -> None:
    assert S.splash_problem(tmp_path / "nope.bmp") == f"uki.splash {tmp_path}/nope.bmp does not exist"
    assert S.splash_problem(tmp_path) == f"uki.splash {tmp_path} is a folder, not a BMP image"
    os.mkfifo(tmp_path / "fifo.bmp")  # refused from its stat: never opened, so never waited on
    assert S.splash_problem(tmp_path / "fifo.bmp") == f"uki.splash {tmp_path}/fifo.bmp is a named pipe (FIFO), not a BMP image"
    rows = 4096 * 4 * 4097  # 64 MiB and a row: more than the stub draws
    big = tmp_path / "big.bmp"
    big.write_bytes(bmp(4096, 4097, 32, pixels=b"", size_field=54 + rows))
    os.truncate(big, 54 + rows)  # sparse
    assert "more than the 64 MiB" in S.splash_problem(big)


def test_unreadable_file(tmp_path: Path) -> None:
    from unprivileged import RaisedInChild, run_unprivileged

    folder = Path(tempfile.mkdtemp(prefix="sysextant-spec-"))  # reachable by nobody, unlike tmp_path
    try:
        folder.chmod(0o755)
        path = folder / "spec.yaml"
        path.write_text(MINIMAL)
        path.chmod(0)
        with pytest.raises(RaisedInChild, match="SpecError: .*spec.yaml.*not readable"):
            run_unprivileged(load_spec, path)
    finally:
        shutil.rmtree(folder)


@pytest.mark.parametrize(("name", "why"), [
    ("firmware", None), ("k3s", None), ("nvidia-550.1", None), ("A1", None),
    ("", "empty"), (".", "not a file name"), ("..", "not a file name"), (".hidden", "hidden"),
    ("a/b", "'/'"), ("a_b", "'_'"), ("a+b", "'+'"), ("-a", "start with a letter"),
    ("a b", "letters"), ("ä", "letters"), ("a" * 237, None), ("a" * 238, "bytes"),
])
def test_extension_names(name: str, why: str | None) -> None:
    got = extension_name_problem(name)
    assert (got is None) if why is None else (got is not None and why in got), got


def test_new_spec_text_loads_and_carries_the_arguments() -> None:
    plain = load(new_spec_text("rootfs"))
    assert plain.os.root == Path("/srv/proj/rootfs") and plain.signing is None and plain.extensions == []
    ext = ExtensionSpec(name="firmware", paths=["usr/lib/firmware", "usr/share/yes"],
                        exclude=["usr/lib/firmware/*.bin"])
    many = ExtensionSpec(name="docs", version="2", paths=[f"usr/share/doc/package-{i}" for i in range(8)])
    text = new_spec_text("my root", kernel="boot/vmlinuz-6.1", init="/usr/bin/immucore", limit="ovmf",
                         key="keys/db.key", cert="keys/db.pem", extensions=[ext, many])
    spec = load(text)
    assert spec.os.root == Path("/srv/proj/my root")
    assert spec.uki.init == "/usr/bin/immucore" and spec.uki.limit == 2 * GiB
    assert spec.signing is not None and spec.signing.cert == Path("/srv/proj/keys/db.pem")
    assert spec.extensions == [ext, many]
    assert "# signing" not in text and text.count("#") >= 5


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(), st.integers(), st.booleans(), st.none()))
def test_scalar_text_round_trips_in_block_and_flow(value: str | int | bool | None) -> None:
    block = scalar_text(value)
    flow = scalar_text(value, flow=True)
    assert "\n" not in block and "\n" not in flow
    assert yaml.safe_load(f"k: {block}\n") == {"k": value}
    assert yaml.safe_load(f"k: [{flow}, x]\n") == {"k": [value, "x"]}


def test_scalar_text_quotes_only_when_needed() -> None:
    assert scalar_text("usr/lib/firmware") == "usr/lib/firmware"
    assert scalar_text("1.0") == "'1.0'"
    assert scalar_text("yes") == "'yes'"
    assert scalar_text("a,b") == "a,b" and scalar_text("a,b", flow=True) == "'a,b'"
    assert scalar_text("a\nb") == '"a\\nb"'


# ---------------------------------------------------------------------------------------------
# Fuzzing: whatever a user writes, the loader returns a Spec or raises SpecError.


def assert_loads_or_spec_error(text: str) -> None:
    try:
        spec = loads_spec(text, Path("fuzz.yaml"))
    except SpecError as err:
        assert err.problems and all(isinstance(p, Problem) for p in err.problems)
        assert str(err)
    else:
        assert isinstance(spec, S.Spec)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text())
def test_fuzz_random_text(text: str) -> None:
    assert_loads_or_spec_error(text)


YAML_ALPHABET = st.sampled_from(list("abc:-[]{},'\"#&*!|>?% \n\t.0123456789/_~@`\\") + ["\r\n", "  ", "- ", ": "])


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(YAML_ALPHABET, max_size=80).map("".join))
def test_fuzz_yaml_punctuation(text: str) -> None:
    assert_loads_or_spec_error(text)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_fuzz_random_bytes(tmp_path_factory: pytest.TempPathFactory, data: bytes) -> None:
    path = tmp_path_factory.mktemp("fuzz") / "spec.yaml"
    path.write_bytes(data)
    try:
        load_spec(path)
    except SpecError as err:
        assert str(err).startswith(str(path))


ALL_KEYS = sorted(set(S.TOP_KEYS + S.OS_KEYS + S.UKI_KEYS + S.SIGNING_KEYS + S.EXTENSION_KEYS
                      + ("ID", "ARCHITECTURE", "VERSION_ID", "SYSEXT_SCOPE")))
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True),
                    st.text(max_size=12),
                    st.sampled_from(["1", "1GiB", "ovmf", "usr/lib/firmware", "/usr/x", "../x", "usr",
                                     "erofs", "squashfs", "zstd", "gzip", "x86-64", "_any", "0b_", "1e400GiB",
                                     "9" * 400 + "GiB", "opt/*", "usr/lib/os-release", "a_b", ""]))
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=4),
    st.dictionaries(st.one_of(st.sampled_from(ALL_KEYS), st.text(max_size=5)), inner, max_size=5)),
    max_leaves=25)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(ALL_KEYS), VALUES, max_size=7), st.booleans())
def test_fuzz_structures_with_the_right_keys(doc: dict, flow: bool) -> None:
    assert_loads_or_spec_error(yaml.safe_dump(doc, default_flow_style=flow, allow_unicode=True))


def _paths_of(node: object, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths_of(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths_of(v, (*prefix, i))
    return out


FULL_DOC = yaml.safe_load(FULL)
FULL_PATHS = [p for p in _paths_of(FULL_DOC) if p]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(FULL_PATHS), VALUES), min_size=1, max_size=3))
def test_fuzz_wrong_values_in_a_valid_spec(changes: list[tuple[tuple, object]]) -> None:
    import copy

    doc = copy.deepcopy(FULL_DOC)
    for path, value in changes:
        node = doc
        try:
            for key in path[:-1]:
                node = node[key]
            node[path[-1]] = value
        except (KeyError, IndexError, TypeError):
            continue
    assert_loads_or_spec_error(yaml.safe_dump(doc, allow_unicode=True))


def test_size_units_reach_the_model() -> None:
    spec = load(MINIMAL + "uki:\n  limit: 800 MiB\n")
    assert spec.uki.limit == 800 * MiB and spec.uki.limit_text == "800 MiB"


# Found by the structure-aware fuzzing (tests/core/spec/test_spec_fuzz.py, bench/fuzz_spec.py): each was a
# traceback, a hang or an unreadable problem; each is now one clear problem line at its place.
_HEAD = "version: 1\nos:\n  root: rootfs\n"
FUZZ_FINDINGS = [
    # int() of a number past Python's 4300-digit string limit (ValueError while writing the problem)
    (_HEAD + "uki:\n  level: 0x" + "f" * 4000 + "\n", (5, 10),
     "uki.level '0xffffffffffffffffffffffffffffffffffffffffffffffffffffffffff'... (4002 characters) "
     "is far too large a number"),
    (_HEAD + "uki:\n  level: 1" + ":30" * 3000 + "\n", (5, 10), "(9001 characters) is far too large a number"),
    (_HEAD + "uki:\n  level: " + "9" * 5000 + "\n", (5, 10), "(5000 characters) is far too large a number"),
    (_HEAD + "uki:\n  level: 1000000000000000000\n", (5, 10), "uki.level '1000000000000000000' is far too large"),
    # PyYAML's int constructor indexes an empty string (IndexError)
    (_HEAD + "uki:\n  level: !!int ''\n", (5, 10), "uki.level must be a whole number, not ''"),
    (_HEAD + "uki:\n  level: !!int '-'\n", (5, 10), "uki.level must be a whole number, not '-'"),
    # PyYAML's scanner: chr() of an escape past U+10FFFF (OverflowError, ValueError)
    (_HEAD + 'uki:\n  cmdline: "quiet \\UFFFFFFFF"\n', (5, 21), "YAML syntax error: an escape names a character beyond U+10FFFF"),
    (_HEAD + 'uki:\n  cmdline: "\\U00110000"\n', (5, 15), "an escape names a character beyond U+10FFFF"),
    # and int() of a %YAML version of 5000 digits (ValueError)
    ("%YAML 1." + "9" * 5000 + "\n---\n" + _HEAD, (1, 9), "the %YAML directive's version number has far too many digits"),
    # pwd.getpwnam() of '~\0' (ValueError), of a lone surrogate (UnicodeEncodeError)
    (_HEAD + '  kernel: "~\\0/vmlinuz"\n', (4, 11), "os.kernel contains a NUL character"),
    (_HEAD + '  kernel: "~\\ud800/vmlinuz"\n', (4, 11),
     "os.kernel contains U+D800, half of a UTF-16 surrogate pair, which is no character (at position 2)"),
    # accepted before, and no file system or file can hold it
    ('version: 1\nos:\n  root: "rootfs\\udcff"\n', (3, 9), "os.root contains U+DCFF"),
    (_HEAD + 'extensions:\n  - name: a\n    paths: [usr/x]\n    release: {ID: "\\ud83d\\ude00"}\n', (7, 19),
     "extensions[0].release.ID contains U+D83D"),
    # quadratic size regex: seconds for 20000 spaces, hours for a MiB
    (_HEAD + "uki:\n  limit: '1" + " " * 100_000 + "!'\n", (5, 10), "(100002 characters): write a number with a unit"),
    # a value quoted in full made a problem line of megabytes, or several lines
    (_HEAD + "extensions:\n  - name: " + "a" * 100_000 + "\n    paths: [usr/x]\n", (5, 11),
     "extension name is 100000 bytes; at most 237 fit a file name"),
    (_HEAD + 'extensions:\n  - name: a\n    paths: "usr/a\\nb"\n', (6, 12),
     "extensions[0].paths must be a list, not the value 'usr/a\\nb'"),
    (_HEAD + "? " + "x" * 100_000 + "\n: 1\n", (4, 3), "unknown key 'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx'... (100000 characters)"),
    # an alias was read as the shared node: every alias re-read it (quadratic)
    (_HEAD + "uki: &u {level: 3}\noutput: *u\n", (5, 9), "YAML alias '*u' is not supported"),
    # os.kernel with no value was reported twice ("has no value", "is empty")
    (_HEAD + "  kernel:\n", (4, 10), "os.kernel has no value"),
]


@pytest.mark.parametrize(("text", "where", "message"), FUZZ_FINDINGS,
                         ids=[f"{i}-{c[2][:30]}" for i, c in enumerate(FUZZ_FINDINGS)])
def test_fuzz_findings_are_one_clear_problem(text: str, where: tuple[int, int], message: str) -> None:
    found = problems(text)
    match = [p for p in found if message in p.message]
    assert match, "\n".join(str(p)[:300] for p in found)
    assert (match[0].line, match[0].column) == where, str(match[0])[:300]
    for p in found:
        line = str(p)
        assert "\n" not in line and len(line) < 400 and line.isprintable(), line[:300]
    assert len(found) <= 2, found  # the problem, and at most the tag it came with


def test_spec_error_lists_at_most_a_hundred_problems() -> None:
    text = "version: 1\nos: {root: r}\n" + "".join(f"k{i}: 1\n" for i in range(250))
    err = pytest.raises(SpecError, load, text).value
    assert len(err.problems) == 250
    lines = str(err).splitlines()
    assert len(lines) == 101 and lines[-1] == "... and 150 more problems"


def test_spec_text_over_the_size_limit_is_refused() -> None:
    found = problems("#" * (S.MAX_SPEC_BYTES + 1))
    assert found[0].message.startswith("is larger than 512 KiB")
    assert load("#" * (S.MAX_SPEC_BYTES - len(MINIMAL) - 1) + "\n" + MINIMAL).extensions[0].name == "firmware"


@pytest.mark.parametrize(("encoding", "name"), [("utf-16", "UTF-16"), ("utf-16-be", None), ("utf-32", "UTF-32")])
def test_spec_file_in_another_encoding(tmp_path: Path, encoding: str, name: str | None) -> None:
    path = tmp_path / "spec.yaml"
    path.write_bytes(MINIMAL.encode(encoding))
    with pytest.raises(SpecError) as info:
        load_spec(path)
    (p,) = info.value.problems
    if name:
        assert p.message == f"is {name} text (it starts with a {name} byte order mark), not UTF-8"
    else:  # no byte order mark: the first NUL byte is text YAML refuses
        assert "not allowed in YAML" in p.message or "not UTF-8" in p.message, p
    assert p.hint == "save the spec as UTF-8" or p.hint.startswith("remove it")


def test_spec_file_name_that_no_file_can_have() -> None:
    for name in ("spec\0.yaml", "spec\ud800.yaml"):
        with pytest.raises(SpecError, match="is not a file name"):
            load_spec(Path(name))


def test_unclosed_bracket_is_reported_where_it_opens() -> None:
    """PyYAML notices an unclosed '[' at the next line's ':'; the problem points at the '['."""
    text = "version: 1\nos: {root: r}\nextensions:\n  - name: a\n    paths: [usr/a, usr/b\n  - name: b\n"
    found = problems(text)
    assert [(p.line, p.column) for p in found] == [(5, 12)]
    assert "noticed at line 6" in found[0].message and "close the list's '['" in found[0].hint
