"""The spec's data model: what a YAML spec file says, resolved to absolute paths.

:mod:`sysextant.core.spec.load` reads and checks the YAML into these objects;
:mod:`sysextant.core.spec.edit` writes changes back without touching the user's comments.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..units import GiB

ARCHITECTURES = ("x86-64", "arm64", "riscv64", "x86", "arm", "loongarch64", "ppc64-le", "s390x")
FILESYSTEMS = ("erofs", "squashfs")
FS_COMPRESSIONS = {"erofs": ("none", "lz4", "lz4hc"), "squashfs": ("none", "gzip", "xz", "zstd", "lz4", "lzo")}
UKI_COMPRESSIONS = ("zstd", "gzip", "xz", "none")
#: libzstd's multi-threaded mode (fast, same bytes on any machine) or its single-threaded mode
#: (least memory; other bytes, so the choice lives in the spec and builds stay reproducible);
#: ``auto`` is single up to AUTO_SINGLE_MAX_LEVEL, where one core compresses at ~100 MiB/s and
#: more (the demo at zstd 6: 61 MiB peak and 6.6 s single, 185 MiB and 6.0 s parallel)
ZSTD_MODES = ("auto", "parallel", "single")
AUTO_SINGLE_MAX_LEVEL = 6
#: Top-level folders Kairos leaves out of the UKI initrd (plus ``boot``, whose kernel goes to .linux).
INITRD_SKIP_TOP = (b"proc", b"sys", b"dev", b"run", b"tmp", b"boot")


@dataclass
class OsSpec:
    root: Path
    kernel: Path  # absolute on this machine (inside root unless the spec gave an absolute path)
    exclude: list[str] = field(default_factory=list)
    #: the container image os.root named (root is then its flattened tree, see core/tree/oci.py)
    image: Path | None = None
    platform: str | None = None  # os.platform: which image of a multi-platform index (linux/arm64)


@dataclass
class UkiSpec:
    stub: Path = Path("/usr/lib/systemd/boot/efi/linuxx64.efi.stub")
    cmdline: str = "console=ttyS0"
    init: str | None = None  # e.g. /usr/bin/immucore: adds the /init symlink Kairos uses
    compression: str = "zstd"
    level: int = 19
    zstd_mode: str = "auto"  # see ZSTD_MODES
    limit: int = 1 * GiB
    limit_text: str = "1GiB"  # as written, for display
    output: Path = Path("build/uki.efi")
    splash: Path | None = None
    os_release: Path | None = None  # default: the tree's etc/os-release (or usr/lib/os-release)
    uname: str | None = None  # default: read from the kernel or usr/lib/modules
    pcr_key: Path | None = None  # optional: .pcrpkey/.pcrsig for TPM-bound unlock
    pcr_cert: Path | None = None

    def zstd_single(self) -> bool:
        """Whether the initrd is compressed with libzstd's single-threaded mode (zstd only)."""
        if self.compression != "zstd":
            return False
        return self.zstd_mode == "single" or (self.zstd_mode == "auto" and self.level <= AUTO_SINGLE_MAX_LEVEL)


@dataclass
class SigningSpec:
    key: Path
    cert: Path
    passphrase_env: str | None = None  # name of an environment variable holding the key passphrase
    #: put the certificate into the UKI's ``etc/verity.d/`` so systemd checks the extensions'
    #: signatures in userspace: a plain systemd OS whose kernel trusts only its builtin keyrings
    #: for dm-verity (Debian 12's 6.1) merges signed extensions only then (Kairos fills
    #: ``/run/verity.d`` itself)
    trust_in_uki: bool = False


#: boot profiles: what the OS runs before it merges extensions (see sizing/bootset.py)
BOOT_PROFILES = ("kairos", "systemd", "none")


@dataclass
class BootAllow:
    """A path (glob) the user lets move although the boot set holds it, and why."""

    path: str
    reason: str


@dataclass
class BootSpec:
    profile: str | None = None  # one of BOOT_PROFILES; None: detected from the tree
    keep: list[str] = field(default_factory=list)  # globs that must stay in the UKI too
    allow: list[BootAllow] = field(default_factory=list)


@dataclass(frozen=True)
class ExtraFile:
    """A file or symlink added to the UKI's initrd that is not in the OS tree (never written to
    the tree). Not read from YAML: set by sysextant itself (the db certificate of
    ``signing.trust_in_uki``, the units of ``sysextant boot``'s check build). Missing parent
    folders are added; a tree entry at the same path is replaced."""

    path: str  # relative to the tree root, normalised, no leading '/'
    data: bytes | None = None  # a regular file's content
    mode: int = 0o644
    target: str | None = None  # a symlink's target instead of data


@dataclass(frozen=True)
class ImageDiff:
    """``extensions[].from``: the extension carries what ``image`` adds or changes over ``base``
    under the merged hierarchies (two container images, or OS tree folders)."""

    image: Path
    base: Path


@dataclass
class ExtensionSpec:
    name: str
    version: str = "1.0"
    paths: list[str] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)
    #: installed packages whose files it carries, resolved against the tree's package database at
    #: plan time (the files that may move; see sizing/packages.py)
    packages: list[str] = field(default_factory=list)
    from_images: ImageDiff | None = None  # ``from: {image, base}``
    filesystem: str = "erofs"
    compression: str = "none"
    release: dict[str, str] = field(default_factory=lambda: {"ID": "_any", "ARCHITECTURE": "x86-64"})

    @property
    def architecture(self) -> str:
        return self.release.get("ARCHITECTURE", "x86-64")

    @property
    def image_name(self) -> str:
        """The Kairos file name: ``NAME.sysext.raw``."""
        return f"{self.name}.sysext.raw"


@dataclass
class Spec:
    path: Path  # the spec file; relative paths resolve against its folder
    os: OsSpec
    uki: UkiSpec
    signing: SigningSpec | None
    extensions: list[ExtensionSpec]
    output: Path
    boot: BootSpec = field(default_factory=BootSpec)
    #: added to the initrd (see ExtraFile); the build adds trust_in_uki's certificate itself
    extra_files: list[ExtraFile] = field(default_factory=list)
    #: Where each value stands in the file: key path such as ("extensions", 0, "paths", 2)
    #: -> (line, column), both 1-based. Used to point problems at the right line.
    locations: dict[tuple[str | int, ...], tuple[int, int]] = field(default_factory=dict)

    @property
    def base(self) -> Path:
        return self.path.parent

    def where(self, *keys: str | int) -> str:
        """``spec.yaml:12:7`` for the value at ``keys``, or the nearest enclosing key known."""
        path = tuple(keys)
        while path and path not in self.locations:
            path = path[:-1]
        line, col = self.locations.get(path, (1, 1))
        return f"{self.path}:{line}:{col}"

    def extension(self, name: str) -> ExtensionSpec | None:
        return next((e for e in self.extensions if e.name == name), None)
