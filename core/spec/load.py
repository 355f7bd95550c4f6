"""The YAML spec, version 1: read it into the model and report every problem at its line.

The file is read into located YAML nodes by :mod:`.nodes` (limits, every value with its line and
column); the checks below walk that tree along the schema and collect *all* problems before
raising one :class:`SpecError`. Nothing a user can type raises anything else.

Shape (relative host paths resolve against the spec file's folder)::

    version: 1
    os: {root: DIR, kernel: boot/vmlinuz, exclude: [GLOB...]}   # kernel: inside root unless absolute
    uki: {stub, cmdline, init, compression, level, zstd_mode, limit, output, splash, os_release,
          uname, pcr_key, pcr_cert}                             # all optional
    signing: {key, cert, passphrase_env, trust_in_uki}          # optional: unsigned without it
    boot: {profile, keep, allow: [{path, reason}]}              # optional: what must stay to boot
    extensions: [{name, version, paths, exclude, packages, from: {image, base}, filesystem, compression,
                  release}]
    output: build                                               # folder for the sysext images

``uki.output``, ``uki.splash``, ``uki.os_release``, ``uki.pcr_key``, ``uki.pcr_cert`` and
``output`` are host paths relative to the spec's folder, like ``os.root`` and the signing files.

References for the checks:

- Extension names: systemd ``image_name_is_valid()`` (src/basic/os-util.c: ``filename_is_valid``,
  no control characters, valid UTF-8, no ``.#`` prefix) and ``path_extract_image_name()``, which
  in systemd >= 255 cuts the name at the first ``_`` or ``+``. We accept the portable subset
  ``[A-Za-z0-9][A-Za-z0-9.-]*`` of at most 237 bytes (``extension-release.NAME`` must fit NAME_MAX).
- Extension contents: systemd-sysext(8) merges only ``/usr`` and ``/opt`` and refuses an image
  holding ``usr/lib/os-release``.
- Release fields: os-release(5) (upper-case keys, ``ID`` in ``[a-z0-9._-]``) and the
  extension-release rules in systemd-sysext(8) (``ID=`` mandatory, ``_any`` matches every host,
  ``ARCHITECTURE=`` systemd names, ``SYSEXT_SCOPE=`` words).
"""

from __future__ import annotations

import fnmatch
import os
import re
import stat
import struct
from pathlib import Path

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from ..errors import UserError
from ..rules import MAX_NAME_BYTES, MERGED_TOPS, OS_RELEASE, RELEASE_DIR, extension_name_problem
from ..units import LIMIT_PRESETS, THRESHOLDS, SizeError, parse_size
from .model import (
    ARCHITECTURES,
    BOOT_PROFILES,
    FILESYSTEMS,
    FS_COMPRESSIONS,
    UKI_COMPRESSIONS,
    ZSTD_MODES,
    BootAllow,
    BootSpec,
    ExtensionSpec,
    ImageDiff,
    OsSpec,
    SigningSpec,
    Spec,
    UkiSpec,
)
from .nodes import (  # noqa: F401 - MAX_* and compose are read from here by callers and tests
    _GLOB_CHARS,
    _INT_TAG,
    ALIAS_TAG,
    MAX_INT_DIGITS,
    MAX_SHOWN,
    MAX_SHOWN_PROBLEMS,
    MAX_SPEC_BYTES,
    MAX_SPEC_DEPTH,
    MAX_SPEC_TOKENS,
    KeyPath,
    Problem,
    SpecError,
    _kind,
    _Reader,
    _suggest,
    compose,
    control_character,
    dotted,
    is_null,
    shown,
)

SPEC_VERSION = 1
#: Compression level range per UKI initrd compressor, and the level used when none is given.
UKI_LEVELS: dict[str, tuple[int, int]] = {"zstd": (1, 22), "gzip": (1, 9), "xz": (0, 9)}
UKI_DEFAULT_LEVELS: dict[str, int] = {"zstd": 19, "gzip": 9, "xz": 6, "none": 0}

TOP_KEYS = ("version", "os", "uki", "signing", "boot", "extensions", "output")
OS_KEYS = ("root", "kernel", "exclude", "platform")
UKI_KEYS = ("stub", "cmdline", "init", "compression", "level", "zstd_mode", "limit", "output", "splash",
            "os_release", "uname", "pcr_key", "pcr_cert")
SIGNING_KEYS = ("key", "cert", "passphrase_env", "trust_in_uki")
BOOT_KEYS = ("profile", "keep", "allow")
BOOT_ALLOW_KEYS = ("path", "reason")
EXTENSION_KEYS = ("name", "version", "paths", "exclude", "packages", "from", "filesystem", "compression", "release")
FROM_KEYS = ("image", "base")

_VERSION_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+~-]*")
_RELEASE_KEY_RE = re.compile(r"[A-Z][A-Z0-9_]*")
_OS_ID_RE = re.compile(r"[a-z0-9._-]+")
_ENV_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SYSEXT_SCOPES = ("system", "initrd", "portable")
def uname_problem(release: str) -> str | None:
    """Why ``release`` cannot be a UKI's .uname (a kernel release such as 6.1.0-18-amd64), or None.

    The stub compares .uname with add-ons' and systemd-boot shows it: a control character (a
    NUL would cut it short) or a space has no place in it.
    """
    bad = control_character(release)
    if bad:
        return f"{shown(release)} contains {bad}; a kernel release is one word, like 6.1.0-18-amd64"
    if not release.strip() or any(c.isspace() for c in release):
        return f"{shown(release)} must be one word, like 6.1.0-18-amd64"
    return None


def _glob_selects(pattern: str, target: str) -> bool:
    """Whether ``pattern`` names ``target`` or one of its parent folders, component by component."""
    p_parts, t_parts = pattern.split("/"), target.split("/")
    if len(p_parts) > len(t_parts):
        return False
    # a component without glob characters matches only itself: no regex to compile (fnmatch
    # compiles one per distinct pattern, which made thousands of distinct paths slow)
    return all(fnmatch.fnmatchcase(t, p) if any(c in p for c in _GLOB_CHARS) else t == p
               for p, t in zip(p_parts, t_parts, strict=False))


def _read_os(r: _Reader, node: Node | None) -> OsSpec | None:
    if node is None:
        return None
    entries = r.mapping(node, ("os",), OS_KEYS)
    if entries is None:
        return None
    root = None
    if "root" not in entries:
        r.problem(node, "os has no 'root'", "name the OS tree folder, e.g. 'root: rootfs'")
    else:
        root = r.host_path(entries["root"], ("os", "root"))
    kernel_text = "boot/vmlinuz"
    if "kernel" in entries:
        written = r.text(entries["kernel"], ("os", "kernel"))  # None: reported (no value, not text)
        kernel_text = written or ""
        if written is not None and not kernel_text.strip():
            r.problem(entries["kernel"], "os.kernel is empty", "for example boot/vmlinuz")
            kernel_text = ""
        elif kernel_text and not kernel_text.startswith("/") and ".." in kernel_text.split("/"):
            r.problem(entries["kernel"], f"os.kernel {shown(kernel_text)} contains '..'",
                      "name the kernel inside the OS tree, or give an absolute path on this machine")
            kernel_text = ""
    exclude = _read_globs(r, entries.get("exclude"), ("os", "exclude"))
    kpath = None
    if kernel_text:
        kpath = r.expand(entries.get("kernel", node), ("os", "kernel"), kernel_text)
    platform = None
    if "platform" in entries:
        platform = r.text(entries["platform"], ("os", "platform"))
        if platform is not None and not re.fullmatch(r"[a-z0-9]+/[a-z0-9_]+(/[a-z0-9]+)?", platform):
            r.problem(entries["platform"], f"os.platform {shown(platform)} is not an OCI platform",
                      "for example linux/amd64 or linux/arm64")
            return None
    if root is None or kpath is None or exclude is None:
        return None
    real = _resolve_root_link(root)
    if kpath.is_absolute() and kpath.is_relative_to(root):  # written through the link: still in the tree
        kpath = real / kpath.relative_to(root)
    image = real if _is_image(real) else None  # opened once the extensions' architecture is known
    return OsSpec(root=real, kernel=kpath if kpath.is_absolute() else real / kpath, exclude=exclude,
                  image=image, platform=platform)


#: Opens a container image named by os.root: (image, os.platform, the extensions' architecture)
#: -> the folder of its flattened tree. The tree layer (core/tree/oci.py) sets it when the engine
#: is imported (core/__init__.py): the spec layer cannot import the tree layer itself.
IMAGE_OPENER = None


def _is_image(root: Path) -> bool:
    """os.root names a container image: a tar (ustar magic), a gzip or zstd file, or a folder
    holding an OCI layout. Anything else stays as written, for the scan to say what is wrong."""
    try:
        if root.is_dir():
            return (root / "oci-layout").is_file() and (root / "index.json").is_file()
        if not root.is_file():
            return False
        with open(root, "rb") as fh:
            head = fh.read(512)
    except OSError:
        return False
    return head[:2] == b"\x1f\x8b" or head[:4] == b"\x28\xb5\x2f\xfd" or head[257:262] == b"ustar"


def _value_node(mapping: Node | None, key: str) -> Node | None:
    if isinstance(mapping, MappingNode):
        for k, v in mapping.value:
            if isinstance(k, ScalarNode) and k.value == key:
                return v
    return mapping


def _open_os_image(r: _Reader, node: Node | None, os_spec: OsSpec, extensions: list[ExtensionSpec] | None) -> OsSpec | None:
    """os.root as the flattened tree of the image it names; os.kernel rebased into it."""
    image = os_spec.image
    assert image is not None
    arches = {e.architecture for e in extensions or []}
    where = node if node is not None else yaml.Mark("", 0, 0, 0, None, None)
    if IMAGE_OPENER is None:  # pragma: no cover - core/__init__.py sets it
        r.problem(where, f"os.root {image} is a file, not an OS tree folder")
        return None
    try:
        root = IMAGE_OPENER(image, os_spec.platform, arches.pop() if len(arches) == 1 else None)
    except UserError as exc:
        r.problem(where, f"os.root: {exc}")
        return None
    kernel = os_spec.kernel
    if kernel.is_relative_to(image):
        kernel = root / kernel.relative_to(image)
    return OsSpec(root=root, kernel=kernel, exclude=os_spec.exclude, image=image, platform=os_spec.platform)


def _resolve_root_link(root: Path) -> Path:
    """``root`` itself resolved when it is a symlink to a folder (``rootfs -> /srv/images/x``), so
    the model, the index and the workbench all name the folder that is scanned; anything else is
    kept as written for the scan to report. Only the root is resolved: links inside the tree are
    never followed."""
    try:
        if root.is_symlink() and root.is_dir():
            return Path(os.path.realpath(root))
    except OSError:
        pass
    return root


def _read_globs(r: _Reader, node: Node | None, keys: KeyPath) -> list[str] | None:
    if node is None:
        return []
    items = r.text_list(node, keys, "[var/cache, usr/share/doc]")
    if items is None:
        return None
    out: list[str] = []
    for i, (value, item) in enumerate(items):
        norm = r.tree_glob(item, (*keys, i), value, "glob")
        if norm is None:
            return None
        out.append(norm)
    return out


def _read_uki(r: _Reader, node: Node | None) -> UkiSpec | None:
    uki = UkiSpec(output=r.base / "build" / "uki.efi")
    if node is None or is_null(node):
        return uki
    entries = r.mapping(node, ("uki",), UKI_KEYS)
    if entries is None:
        return None
    ok = True

    def path(key: str, *, null_ok: bool = False) -> Path | None:
        nonlocal ok
        if key not in entries:
            return None
        value = r.host_path(entries[key], ("uki", key), null_ok=null_ok)
        if value is None and not is_null(entries[key]):
            ok = False
        return value

    for key in ("stub", "output"):
        if key in entries:
            value = path(key)
            if value is not None:
                setattr(uki, key, value)
    for key in ("splash", "os_release", "pcr_key", "pcr_cert"):
        setattr(uki, key, path(key, null_ok=True))
    if uki.pcr_cert is not None and uki.pcr_key is None:
        r.problem(entries["pcr_cert"], "uki.pcr_cert is set without uki.pcr_key",
                  "the PCR signature needs the private key: add pcr_key")
        ok = False
    if "cmdline" in entries:
        cmdline = r.text(entries["cmdline"], ("uki", "cmdline"), null_ok=True)
        if cmdline is None and not is_null(entries["cmdline"]):
            ok = False
        # Tab, line feed and carriage return are separators like a space: a folded or literal YAML
        # scalar (``cmdline: >``) brings line breaks, the kernel's parser splits on them, and the
        # stub's mangle_stub_cmdline() (src/boot/util.c) turns every character up to 0x20 into a
        # space and chops trailing ones, so a trailing newline is harmless; all of them are folded
        # into single spaces here. Any other control character is refused: a NUL ends the command
        # line the stub passes on (what follows it would be signed and measured, never used), and
        # the stub turns the rest into spaces, so the signed text would not be what the kernel reads.
        bad = control_character(cmdline or "", allowed="\t\n\r")
        if bad is not None:
            r.problem(entries["cmdline"], f"uki.cmdline contains {bad}",
                      "the stub ends the command line at a NUL: what follows would be signed but never used"
                      if "(NUL)" in bad else
                      "the stub turns control characters into spaces: the kernel would not get what is signed")
            ok = False
        uki.cmdline = " ".join((cmdline or "").split())
    if "init" in entries:
        init = r.text(entries["init"], ("uki", "init"), null_ok=True)
        if init is not None and not init.startswith("/"):
            r.problem(entries["init"], f"uki.init {shown(init)} must be an absolute path inside the OS",
                      "for example /usr/bin/immucore")
            ok = False
        elif init is None and not is_null(entries["init"]):
            ok = False
        uki.init = init
    if "uname" in entries:
        uname = r.text(entries["uname"], ("uki", "uname"), null_ok=True)
        why = uname_problem(uname) if uname is not None else None
        if why:
            r.problem(entries["uname"], f"uki.uname {why}")
            ok = False
        uki.uname = uname
    if "compression" in entries:
        compression = r.choice(entries["compression"], ("uki", "compression"), UKI_COMPRESSIONS)
        if compression is None:
            ok = False
        else:
            uki.compression = compression
    uki.level = UKI_DEFAULT_LEVELS.get(uki.compression, uki.level)
    if "level" in entries:
        level = r.integer(entries["level"], ("uki", "level"))
        span = UKI_LEVELS.get(uki.compression)
        if level is None:
            ok = False
        elif span and not span[0] <= level <= span[1]:
            r.problem(entries["level"], f"uki.level {level} is out of range for {uki.compression}",
                      f"{uki.compression} levels go from {span[0]} to {span[1]}")
            ok = False
        else:
            uki.level = level
    if "zstd_mode" in entries:  # meaningful for zstd only; kept when the compression changes
        mode = r.choice(entries["zstd_mode"], ("uki", "zstd_mode"), ZSTD_MODES)
        if mode is None:
            ok = False
        else:
            uki.zstd_mode = mode
    if "limit" in entries:
        limit = _read_limit(r, entries["limit"])
        if limit is None:
            ok = False
        else:
            uki.limit, uki.limit_text = limit
    return uki if ok else None


def _read_limit(r: _Reader, node: Node) -> tuple[int, str] | None:
    text = r.text(node, ("uki", "limit"))
    if text is None:
        return None
    try:
        value = parse_size(text, allow_presets=True)
    except SizeError as exc:
        r.problem(node, f"uki.limit: {exc}", "" if "preset" in str(exc) else f"or a preset: {', '.join(LIMIT_PRESETS)}")
        return None
    except (ValueError, OverflowError):
        r.problem(node, f"uki.limit {shown(text)} is not a size", "write a number with a unit such as 1GiB")
        return None
    if value <= 0:
        r.problem(node, "uki.limit must be more than 0", "for example 1GiB")
        return None
    if value > THRESHOLDS.impossible:
        r.problem(node, f"uki.limit {shown(text)} is above 4 GiB, which no PE file can reach",
                  "use at most 4GiB (preset 'pe-max')")
        return None
    return value, text.strip()


def _read_signing(r: _Reader, node: Node | None) -> SigningSpec | None:
    """The signing section; None when there is none (``signing: null`` too: unsigned) or it has
    problems (each reported)."""
    if node is None or is_null(node):
        return None
    entries = r.mapping(node, ("signing",), SIGNING_KEYS)
    if entries is None:
        return None
    ok = True
    found: dict[str, Path] = {}
    for key in ("key", "cert"):
        if key not in entries:
            r.problem(node, f"signing has no {key!r}",
                      "give both key and cert of the db key pair, or remove signing for unsigned images")
            ok = False
            continue
        value = r.host_path(entries[key], ("signing", key))
        if value is None:
            ok = False
        else:
            found[key] = value
    env = None
    if "passphrase_env" in entries:
        env = r.text(entries["passphrase_env"], ("signing", "passphrase_env"), null_ok=True)
        if env is not None and not _ENV_RE.fullmatch(env):
            r.problem(entries["passphrase_env"], f"signing.passphrase_env {shown(env)} is not an environment variable name",
                      "name the variable that holds the passphrase, e.g. DB_KEY_PASSPHRASE; never the passphrase itself")
            ok = False
    trust = False
    if "trust_in_uki" in entries:
        value = r.boolean(entries["trust_in_uki"], ("signing", "trust_in_uki"))
        ok = ok and value is not None
        trust = bool(value)
    if not ok:
        return None
    return SigningSpec(key=found["key"], cert=found["cert"], passphrase_env=env, trust_in_uki=trust)


def _read_boot(r: _Reader, node: Node | None) -> BootSpec | None:
    """The boot section: the boot profile, globs to keep in the UKI, paths allowed to move."""
    if node is None or is_null(node):
        return BootSpec()
    entries = r.mapping(node, ("boot",), BOOT_KEYS)
    if entries is None:
        return None
    ok = True
    boot = BootSpec()
    if "profile" in entries:
        boot.profile = r.choice(entries["profile"], ("boot", "profile"), BOOT_PROFILES)
        ok = boot.profile is not None
    keep = _read_globs(r, entries.get("keep"), ("boot", "keep"))
    if keep is None:
        ok = False
    else:
        boot.keep = keep
    allow = entries.get("allow")
    if allow is not None and not is_null(allow):
        if not isinstance(allow, SequenceNode):
            r.problem(allow, f"boot.allow must be a list, not {_kind(allow)}",
                      "for example allow: [{path: usr/bin/mount, reason: the initrd mounts with busybox}]")
            return None
        for i, item in enumerate(allow.value):
            keys = ("boot", "allow", i)
            r.locate(keys, item)
            fields = r.mapping(item, keys, BOOT_ALLOW_KEYS)
            if fields is None:
                ok = False
                continue
            missing = [k for k in BOOT_ALLOW_KEYS if k not in fields]
            if missing:
                r.problem(item, f"boot.allow[{i}] has no {missing[0]!r}",
                          "each waiver names the path (a glob in the tree) and the reason it may move")
                ok = False
                continue
            text = r.text(fields["path"], (*keys, "path"))
            path = None if text is None else r.tree_glob(fields["path"], (*keys, "path"), text, "glob")
            reason = r.text(fields["reason"], (*keys, "reason"))
            if reason is not None and not reason.strip():
                r.problem(fields["reason"], f"boot.allow[{i}].reason is empty", "say why this may leave the UKI")
                reason = None
            if path is None or reason is None:
                ok = False
                continue
            boot.allow.append(BootAllow(path, reason.strip()))
    return boot if ok else None


def _read_release(r: _Reader, node: Node, keys: KeyPath) -> dict[str, str] | None:
    entries = r.mapping_of_text(node, keys)
    if entries is None:
        return None
    release: dict[str, str] = {}
    ok = True
    for key, (key_node, value_node) in entries.items():
        if not _RELEASE_KEY_RE.fullmatch(key):
            hint = f"write {shown(key.upper())}" if _RELEASE_KEY_RE.fullmatch(key.upper()) else "os-release keys look like ID, VERSION_ID, ARCHITECTURE"
            r.problem(key_node, f"release key {shown(key)} in {dotted(keys)} is not an os-release key", hint)
            ok = False
            continue
        value = r.text(value_node, (*keys, key))
        if value is None:
            ok = False
            continue
        if any(ord(c) < 32 or ord(c) == 127 for c in value):
            r.problem(value_node, f"{dotted((*keys, key))} contains a control character or line break")
            ok = False
            continue
        release[key] = value
    if "ID" not in entries:
        r.problem(node, f"{dotted(keys)} has no ID", "ID: _any matches every host; otherwise the host's os-release ID")
        ok = False
    elif "ID" in release and release["ID"] != "_any" and not _OS_ID_RE.fullmatch(release["ID"]):
        r.problem(entries["ID"][1], f"{dotted((*keys, 'ID'))} {shown(release['ID'])} is not an os-release ID",
                  "lower-case letters, digits, '.', '_', '-' (like debian), or _any")
        ok = False
    if "ARCHITECTURE" in release and release["ARCHITECTURE"] not in ARCHITECTURES:
        arch = release["ARCHITECTURE"]
        near = _suggest(arch, ARCHITECTURES, prefix="")
        r.problem(entries["ARCHITECTURE"][1], f"{dotted((*keys, 'ARCHITECTURE'))}: unknown architecture {shown(arch)}",
                  f"{near + ' ' if near else ''}systemd names: {', '.join(ARCHITECTURES)}")
        ok = False
    if "SYSEXT_SCOPE" in release:
        words = release["SYSEXT_SCOPE"].split()
        wrong = [w for w in words if w not in _SYSEXT_SCOPES]
        if wrong or not words:
            r.problem(entries["SYSEXT_SCOPE"][1], f"{dotted((*keys, 'SYSEXT_SCOPE'))}: unknown scope {shown(' '.join(wrong))}",
                      f"a space-separated list of {', '.join(_SYSEXT_SCOPES)}")
            ok = False
    return release if ok else None


def _read_extension(r: _Reader, node: Node, i: int) -> ExtensionSpec | None:
    keys: KeyPath = ("extensions", i)
    entries = r.mapping(node, keys, EXTENSION_KEYS)
    if entries is None:
        return None
    ok = True
    name = None
    if "name" not in entries:
        r.problem(node, f"{dotted(keys)} has no name", "every extension needs 'name:', e.g. name: firmware")
        ok = False
    else:
        name = r.text(entries["name"], (*keys, "name"))
        why = extension_name_problem(name) if name is not None else None
        if name is not None and len(name.encode()) > MAX_NAME_BYTES:  # not quoted in full: too long
            why = f"extension name is {len(name.encode())} bytes; at most {MAX_NAME_BYTES} fit a file name"
        if why:
            r.problem(entries["name"], why)
        if name is None or why:
            ok = False
    ext = ExtensionSpec(name=name or "")
    if "version" in entries:
        version = r.text(entries["version"], (*keys, "version"))
        if version is not None and not _VERSION_RE.fullmatch(version):
            r.problem(entries["version"], f"{dotted((*keys, 'version'))} {shown(version)} is not a version",
                      "letters, digits and . _ + ~ -, starting with a letter or digit, e.g. \"1.0\"")
            version = None
        if version is None:
            ok = False
        else:
            ext.version = version
    if "from" in entries:
        if "paths" in entries or "packages" in entries:
            r.problem(entries["from"], f"{dotted(keys)} takes its content from two images (from:) and also names "
                      "paths or packages", "an extension made of an image's difference carries just that: "
                      "give the paths an extension of their own")
            ok = False
        diff = _read_from(r, entries["from"], (*keys, "from"))
        if diff is None:
            ok = False
        else:
            ext.from_images = diff
    elif "paths" not in entries and "packages" not in entries:
        r.problem(node, f"{dotted(keys)} has no paths", "list what it carries, e.g. paths: [usr/lib/firmware]")
        ok = False
    if "packages" in entries:
        packages = _read_packages(r, entries["packages"], (*keys, "packages"))
        if packages is None:
            ok = False
        else:
            ext.packages = packages
    exclude = _read_globs(r, entries.get("exclude"), (*keys, "exclude"))
    if exclude is None:
        ok = False
    else:
        ext.exclude = exclude
    if "paths" in entries:
        paths = _read_ext_paths(r, entries["paths"], (*keys, "paths"), exclude or [])
        if paths is None:
            ok = False
        else:
            ext.paths = paths
    fs_ok = True
    if "filesystem" in entries:
        fs = r.choice(entries["filesystem"], (*keys, "filesystem"), FILESYSTEMS)
        if fs is None:
            ok = fs_ok = False
        else:
            ext.filesystem = fs
    if "compression" in entries and fs_ok:
        choices = FS_COMPRESSIONS.get(ext.filesystem, ())
        comp = r.choice(entries["compression"], (*keys, "compression"), choices)
        if comp is None:
            ok = False
        else:
            ext.compression = comp
    if "release" in entries:
        release = _read_release(r, entries["release"], (*keys, "release"))
        if release is None:
            ok = False
        else:
            ext.release = release
    return ext if ok else None


def _read_ext_paths(r: _Reader, node: Node, keys: KeyPath, exclude: list[str]) -> list[str] | None:
    items = r.text_list(node, keys, "[usr/lib/firmware, opt/tool]")
    if items is None:
        return None
    out: list[str] = []
    ok = True
    seen: dict[str, int] = {}
    os_release_excluded = any(_glob_selects(e, OS_RELEASE) for e in exclude)  # once, not once a path
    for i, (value, item) in enumerate(items):
        norm = r.tree_glob(item, (*keys, i), value, "path")
        if norm is None:
            ok = False
            continue
        top = norm.split("/", 1)[0]
        if any(c in top for c in _GLOB_CHARS):
            r.problem(item, f"{dotted((*keys, i))}: {shown(value)} has a glob in its first folder",
                      "start with usr/ or opt/ so it cannot match anything else")
            ok = False
            continue
        if top not in MERGED_TOPS:
            r.problem(item, f"{dotted((*keys, i))}: {shown(value)} is outside usr/ and opt/",
                      "systemd-sysext merges only /usr and /opt; leave the rest in the UKI")
            ok = False
            continue
        if _glob_selects(norm, OS_RELEASE) and not os_release_excluded:
            r.problem(item, f"{dotted((*keys, i))}: {shown(value)} would put usr/lib/os-release into the extension, "
                            "which systemd-sysext refuses",
                      "add usr/lib/os-release to this extension's exclude" if norm != "usr/lib/os-release"
                      else "remove it; the OS release file stays in the UKI")
            ok = False
            continue
        if _glob_selects(RELEASE_DIR, norm):
            r.problem(item, f"{dotted((*keys, i))}: {shown(value)} is inside usr/lib/extension-release.d",
                      "sysextant writes the extension's release file itself; remove this path")
            ok = False
            continue
        if norm in seen:
            r.problem(item, f"{dotted((*keys, i))}: {shown(value)} is listed twice",
                      f"already {dotted((*keys, seen[norm]))}")
            ok = False
            continue
        seen[norm] = i
        out.append(norm)
    return out if ok else None


#: package names as dpkg, rpm and apk write them, with dpkg's optional ``:ARCH``
_PACKAGE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9+._~@-]*(:[a-z0-9-]+)?")


def _read_from(r: _Reader, node: Node, keys: KeyPath) -> ImageDiff | None:
    """``from: {image: app.tar, base: kairos.tar}``: host paths, checked when planned."""
    entries = r.mapping(node, keys, FROM_KEYS)
    if entries is None:
        return None
    found: dict[str, Path] = {}
    for key in FROM_KEYS:
        if key not in entries:
            r.problem(node, f"{dotted(keys)} has no {key!r}",
                      "name the derived image (image:) and the image it was built on (base:)")
            continue
        value = r.host_path(entries[key], (*keys, key))
        if value is not None:
            found[key] = value
    if len(found) != len(FROM_KEYS):
        return None
    return ImageDiff(image=found["image"], base=found["base"])


def _read_packages(r: _Reader, node: Node, keys: KeyPath) -> list[str] | None:
    """``packages:``: names of installed packages (checked against the tree at plan time)."""
    items = r.text_list(node, keys, "[linux-firmware, nvidia-driver]")
    if items is None:
        return None
    out: list[str] = []
    ok = True
    for i, (value, item) in enumerate(items):
        if not _PACKAGE_RE.fullmatch(value) or len(value) > 255:
            r.problem(item, f"{dotted((*keys, i))}: {shown(value)} is not a package name",
                      "a name as the package manager lists it, e.g. linux-firmware or libc6:amd64")
            ok = False
        elif value in out:
            r.problem(item, f"{dotted((*keys, i))}: {shown(value)} is listed twice",
                      f"already {dotted((*keys, out.index(value)))}")
            ok = False
        else:
            out.append(value)
    return out if ok else None


def _read_extensions(r: _Reader, node: Node | None) -> list[ExtensionSpec] | None:
    if node is None or is_null(node):
        return []
    if not isinstance(node, SequenceNode):
        r.problem(node, f"extensions must be a list of '- name: ...' items, not {_kind(node)}")
        return None
    out: list[ExtensionSpec] = []
    ok = True
    names: dict[str, Node] = {}
    for i, item in enumerate(node.value):
        r.locate(("extensions", i), item)
        ext = _read_extension(r, item, i)
        if ext is None:
            ok = False
            continue
        folded = ext.name.lower()
        if folded in names:
            other = names[folded]
            same = other.value == ext.name
            r.problem(_name_node(item) or item,
                      f"extension name {shown(ext.name)} is used twice" if same
                      else f"extension names {shown(other.value)} and {shown(ext.name)} differ only in case",
                      f"first at line {other.start_mark.line + 1}" + (
                          "" if same else "; the Kairos ESP (FAT) does not tell them apart"))
            ok = False
            continue
        names[folded] = _name_node(item) or item
        out.append(ext)
    return out if ok else None


def _name_node(item: Node) -> Node | None:
    if isinstance(item, MappingNode):
        for key, value in item.value:
            if isinstance(key, ScalarNode) and key.value == "name":
                return value
    return None


def _read_version(r: _Reader, top: MappingNode, node: Node | None) -> None:
    if node is None:
        r.problem(top, f"the spec has no 'version: {SPEC_VERSION}'", f"add 'version: {SPEC_VERSION}' as the first line")
        return
    if isinstance(node, ScalarNode) and node.tag == _INT_TAG and node.value == str(SPEC_VERSION):
        return
    if isinstance(node, ScalarNode) and node.value.strip() == str(SPEC_VERSION):
        r.problem(node, f"version must be the number {SPEC_VERSION}, not the text {shown(node.value)}", "remove the quotes")
        return
    what = shown(node.value) if isinstance(node, ScalarNode) else _kind(node)
    r.problem(node, f"unsupported spec version {what}", f"this sysextant reads version {SPEC_VERSION}")


def loads_spec(text: str, path: Path) -> Spec:
    """Read spec ``text`` (from the file ``path``, used for messages and relative paths)."""
    path = Path(path)
    if len(text) > MAX_SPEC_BYTES:  # what read_spec_text refuses from a file, refused as text too
        raise SpecError([Problem(path, 0, 0, f"is larger than {MAX_SPEC_BYTES // 1024} KiB; "
                                             "a spec is a small YAML file", "is this the right file?")])
    node, problems = compose(text, path)
    if node is None:
        if not problems:
            problems.append(Problem(path, 1, 1, "the spec is empty", "start from `sysextant init`"))
        raise SpecError(problems)
    r = _Reader(path, path.absolute().parent)
    r.problems.extend(problems)
    if not isinstance(node, MappingNode):
        r.problem(node, f"the spec must be a mapping of keys ({', '.join(TOP_KEYS)}), not {_kind(node)}")
        raise SpecError(r.problems)
    entries = r.mapping(node, (), TOP_KEYS) or {}
    _read_version(r, node, entries.get("version"))
    if "os" not in entries:
        r.problem(node, "the spec has no 'os' section", "add 'os:' with 'root: DIR', the OS tree to slim")
    os_spec = _read_os(r, entries.get("os"))
    uki = _read_uki(r, entries.get("uki"))
    signing = _read_signing(r, entries.get("signing"))
    boot = _read_boot(r, entries.get("boot"))
    extensions = _read_extensions(r, entries.get("extensions"))
    output = r.base / "build"
    if "output" in entries:
        output = r.host_path(entries["output"], ("output",))
    if os_spec is not None and os_spec.image is not None and not r.problems:
        os_spec = _open_os_image(r, _value_node(entries.get("os"), "root"), os_spec, extensions)
    if r.problems or os_spec is None or uki is None or boot is None or extensions is None or output is None:
        if not r.problems:  # pragma: no cover - every None above reports a problem
            r.problem(node, "the spec could not be read")
        raise SpecError(r.problems)
    r.locations.setdefault((), (1, 1))
    return Spec(path=path, os=os_spec, uki=uki, signing=signing, extensions=extensions,
                output=output, boot=boot, locations=r.locations)


def _file_kind(mode: int) -> str:
    """``a named pipe (FIFO)`` and the like, for a file that is neither regular nor a folder."""
    if stat.S_ISFIFO(mode):
        return "a named pipe (FIFO)"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "a file of an unknown kind"


def load_spec(path: Path) -> Spec:
    """Read and check the spec file at ``path``; :class:`SpecError` lists every problem."""
    path = Path(path)
    return loads_spec(read_spec_text(path), path)


def read_spec_text(path: Path) -> str:
    """The text of the spec file at ``path``; one :class:`SpecError` when it is missing, not a
    regular file (never waiting on a FIFO), unreadable, too big or not UTF-8. Meant for whoever
    reads the spec file, so that none of them can hang on a FIFO put in its place."""
    path = Path(path)

    def fail(message: str, hint: str = "") -> SpecError:
        return SpecError([Problem(path, 0, 0, message, hint)])

    def refuse_kind(mode: int) -> None:
        if stat.S_ISDIR(mode):
            raise fail("is a folder, not a spec file", "name the YAML file, e.g. sysextant.yaml")
        if not stat.S_ISREG(mode):
            raise fail(f"is {_file_kind(mode)}, not a spec file", "name the YAML file itself, e.g. sysextant.yaml")

    # A FIFO would block open() until a writer comes (forever, for a stray one) and a device may
    # act on being opened: the kind is checked before opening, and again on the open descriptor
    # (O_NONBLOCK never waits for a FIFO's writer) in case the path was swapped in between.
    try:
        refuse_kind(os.stat(path).st_mode)
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as fh:
            refuse_kind(os.fstat(fh.fileno()).st_mode)
            data = fh.read(MAX_SPEC_BYTES + 1)
    except FileNotFoundError:
        raise fail("the spec file does not exist", "create one with `sysextant init`") from None
    except IsADirectoryError:
        raise fail("is a folder, not a spec file", "name the YAML file, e.g. sysextant.yaml") from None
    except PermissionError:
        raise fail("the spec file is not readable by this user") from None
    except OSError as exc:
        raise fail(f"cannot read the spec file: {exc.strerror or exc}") from None
    except ValueError:  # os.stat() of a name with a NUL (or a lone surrogate: UnicodeEncodeError)
        raise fail("is not a file name (it contains a NUL character or a lone surrogate)") from None
    if len(data) > MAX_SPEC_BYTES:
        raise fail(f"is larger than {MAX_SPEC_BYTES // 1024} KiB; a spec is a small YAML file",
                   "is this the right file?")
    for bom, encoding in ((b"\xff\xfe\x00\x00", "UTF-32"), (b"\x00\x00\xfe\xff", "UTF-32"),
                          (b"\xff\xfe", "UTF-16"), (b"\xfe\xff", "UTF-16")):
        if data.startswith(bom):
            raise fail(f"is {encoding} text (it starts with a {encoding} byte order mark), not UTF-8",
                       "save the spec as UTF-8")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        col = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise SpecError([Problem(path, line, col, f"byte 0x{data[exc.start]:02x} is not UTF-8 text",
                                 "save the spec as UTF-8")]) from None
    return text


# --------------------------------------------------------------------------------------------
# Files the spec names, checked when the spec is applied (the plan), not when it is read

#: BITMAPFILEHEADER (14 bytes) plus the BITMAPINFOHEADER fields systemd-stub reads (40 bytes).
_BMP_HEAD = struct.Struct("<2sIHHIIiiHHIIiiII")
#: Pixel data systemd-stub agrees to draw (src/boot/splash.c ``bmp_parse_header``).
_BMP_MAX_PIXELS = 64 * 1024 * 1024


def splash_problem(path: Path) -> str | None:
    """Why systemd-stub would not show ``path`` as the UKI's .splash, or None.

    The stub draws only uncompressed Windows BMPs and silently skips anything else (the section
    is still measured and signed). The checks are the main ones of ``bmp_parse_header()`` in
    systemd's src/boot/splash.c: the ``BM`` magic, a file size field equal to the file's size,
    an info header of at least 40 bytes, a depth of 1, 4, 8 or 24 bits (uncompressed) or 16 or
    32 (also BI_BITFIELDS), pixel rows that fit the file and at most 64 MiB of them, a full
    colour table at 8 bits and fewer. Only the header is read; a FIFO or a device is refused
    without being opened.
    """
    try:
        st = os.stat(path)
        if stat.S_ISDIR(st.st_mode):
            return f"uki.splash {path} is a folder, not a BMP image"
        if not stat.S_ISREG(st.st_mode):
            return f"uki.splash {path} is {_file_kind(st.st_mode)}, not a BMP image"
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as fh:
            head = fh.read(_BMP_HEAD.size)
            size = os.fstat(fh.fileno()).st_size
    except FileNotFoundError:
        return f"uki.splash {path} does not exist"
    except PermissionError:
        return f"uki.splash {path} is not readable by this user"
    except OSError as exc:
        return f"cannot read uki.splash {path}: {exc.strerror or exc}"
    if not size:
        return f"uki.splash {path} is empty, not a BMP image"
    if head[:2] != b"BM":
        return (f"uki.splash {path} is not a BMP image (it starts with {head[:4]!r}, not 'BM'); "
                "systemd-stub shows only BMP splashes: convert it, e.g. with ImageMagick `convert IN BMP3:OUT.bmp`")
    if len(head) < _BMP_HEAD.size:
        return f"uki.splash {path} is a truncated BMP ({size} bytes, less than its 54-byte header)"
    (_, file_size, _, _, offset, dib_size, width, height, _, depth, compression, *_rest) = _BMP_HEAD.unpack(head)
    cannot = f"uki.splash {path} is a BMP systemd-stub cannot show"
    if file_size != size:
        return f"{cannot}: its header says {file_size} bytes, the file has {size}"
    if dib_size < 40:
        return f"{cannot}: an old {dib_size}-byte info header (save it as a Windows BMP, version 3 or later)"
    if depth not in (1, 4, 8, 16, 24, 32):
        return f"{cannot}: {depth} bits per pixel (1, 4, 8, 16, 24 or 32 work)"
    if compression not in ((0, 3) if depth in (16, 32) else (0,)):
        return f"{cannot}: it is compressed (method {compression}); save it uncompressed"
    if height < 0:  # the stub reads it unsigned: a top-down BMP would be read as a huge one
        return f"{cannot}: it is stored top-down (a negative height); save it as an ordinary bottom-up BMP"
    if width <= 0 or height == 0:
        return f"{cannot}: it has no pixels to show ({width}x{height})"
    rows, columns = height, width
    pixels = (depth * columns + 31) // 32 * 4 * rows
    if not 14 + dib_size <= offset <= size or pixels > size - offset:
        return f"{cannot}: its pixel data does not fit the file ({columns}x{rows} at {depth} bits)"
    if depth <= 8 and offset - (14 + dib_size) < 4 << depth:
        return f"{cannot}: its colour table is shorter than {1 << depth} colours for {depth} bits per pixel"
    if pixels > _BMP_MAX_PIXELS:
        return f"{cannot}: {columns}x{rows} pixels are more than the 64 MiB of pixel data it draws"
    return None
