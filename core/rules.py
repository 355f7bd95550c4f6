"""What systemd-sysext merges and refuses: the one home of those rules.

The spec reader refuses paths and names by them, the workbench refuses marks by them, the image
writer follows them and the verifier checks images against them. Facts from systemd-sysext(8)
and ``src/sysext/sysext.c`` / ``src/basic/os-util.c`` of systemd 252-256:

- only the ``/usr`` and ``/opt`` hierarchies of an extension are merged;
- an extension must carry ``usr/lib/extension-release.d/extension-release.NAME`` (NAME being the
  image name), with ``ID=`` (``_any`` matches every host); the xattr
  ``user.extension-release.strict=0`` on it lets a renamed image still match;
- an extension must not carry ``usr/lib/os-release`` (it would replace the host's);
- the name becomes a file name, and systemd 255+ cuts an image name at the first ``_`` or ``+``.

Boot safety (what must stay in the UKI for the system to boot and merge) lands beside these rules.

See docs/formats.md, section 13 (what systemd-sysext merges and refuses).
"""

from __future__ import annotations

import re

#: top-level folders systemd-sysext merges (plain systemd; Kairos narrows this, see the boot rules)
MERGED_TOPS = ("usr", "opt")
RELEASE_DIR = "usr/lib/extension-release.d"
RELEASE_PREFIX = "extension-release."
#: on the release file: "0" lets the image match even when renamed
STRICT_XATTR = b"user.extension-release.strict"
#: the host's own release file: an extension holding it is refused
OS_RELEASE = "usr/lib/os-release"
#: paths no extension may hold (the host's os-release, other extensions' release files)
FORBIDDEN_IN_EXTENSION = (OS_RELEASE, RELEASE_DIR)

#: Longest name such that ``extension-release.NAME`` fits in NAME_MAX (255 bytes).
MAX_NAME_BYTES = 255 - len(RELEASE_PREFIX)
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9.-]*")


def release_path(name: str) -> str:
    """Where extension ``name`` keeps its release file inside the image."""
    return f"{RELEASE_DIR}/{RELEASE_PREFIX}{name}"


def extension_name_problem(name: str) -> str | None:
    """Why systemd (or a Kairos ESP) would not take ``name`` as an extension name, or None."""
    if not name:
        return "the extension name is empty"
    if name in (".", ".."):
        return f"{name!r} is not a file name"
    if "/" in name:
        return f"extension name {name!r} contains '/'; it becomes a file name"
    if name.startswith("."):
        return f"extension name {name!r} starts with '.', so systemd treats the image as hidden"
    bad_cut = next((c for c in name if c in "_+"), None)
    if bad_cut:
        return (f"extension name {name!r} contains {bad_cut!r}: systemd 255 and later cut an image "
                f"name at the first '_' or '+' (a version suffix), so the release file would not "
                f"match; use '-' instead")
    if not _NAME_RE.fullmatch(name):
        return (f"extension name {name!r} may only hold letters, digits, '.' and '-', "
                f"and must start with a letter or digit")
    if len(name.encode()) > MAX_NAME_BYTES:
        return f"extension name is {len(name.encode())} bytes; at most {MAX_NAME_BYTES} fit a file name"
    return None


def parse_os_release(text: str) -> dict[str, str]:
    """Parse os-release syntax (freedesktop os-release(5)); ValueError naming the bad line."""
    out: dict[str, str] = {}
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            raise ValueError(f"line {n} is not KEY=VALUE: {line[:60]!r}")
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            quote, value = value[0], value[1:-1]
            if quote == '"':
                value = re.sub(r'\\(["\\`$])', r"\1", value)
        elif value and (value[0] in "\"'" or re.search(r"\s", value)):
            raise ValueError(f"line {n} has an unbalanced quote or unquoted blank: {line[:60]!r}")
        out[key] = value
    return out


def release_mismatch(release: dict[str, str], host: dict[str, str], host_arch: str | None) -> str | None:
    """Why systemd-sysext on a host with os-release ``host`` (and architecture ``host_arch``, a
    systemd name such as x86-64) would refuse an extension whose release file says ``release``,
    or None. The rules of systemd 252-256 (``extension_release_validate``): ``ID`` must be
    ``_any`` or the host's; then ``SYSEXT_LEVEL`` must match when both set it, else
    ``VERSION_ID`` when the extension sets it; ``ARCHITECTURE``, when set, must be the host's."""
    ext_id = release.get("ID")
    if not ext_id:
        return "its release has no ID= (systemd-sysext refuses it)"
    arch = release.get("ARCHITECTURE")
    if arch and host_arch and arch not in ("_any", host_arch):
        return f"ARCHITECTURE={arch}, but this OS runs {host_arch}"
    if ext_id == "_any":
        return None
    host_id = host.get("ID")
    if ext_id != host_id:
        return f"ID={ext_id}, but the OS tree's os-release says ID={host_id or '(none)'}; use ID=_any or {host_id}"
    if "SYSEXT_LEVEL" in release and "SYSEXT_LEVEL" in host:
        if release["SYSEXT_LEVEL"] != host["SYSEXT_LEVEL"]:
            return (f"SYSEXT_LEVEL={release['SYSEXT_LEVEL']}, but the OS tree's os-release says "
                    f"SYSEXT_LEVEL={host['SYSEXT_LEVEL']}")
        return None
    if "VERSION_ID" in release and release["VERSION_ID"] != host.get("VERSION_ID"):
        return (f"VERSION_ID={release['VERSION_ID']}, but the OS tree's os-release says "
                f"VERSION_ID={host.get('VERSION_ID', '(none)')}")
    return None
