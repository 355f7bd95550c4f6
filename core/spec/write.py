"""Writing spec YAML: scalars quoted only when YAML needs it, extension items, fresh specs.

:mod:`.edit` splices these into a user's file (comments kept); :func:`new_spec_text` writes the
starter spec of ``sysextant init``, its values taken from the model's defaults
(:mod:`.model`), so the file a user starts from says what leaving a key out means.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import yaml

from ..units import LIMIT_PRESETS
from .load import SPEC_VERSION
from .model import UKI_COMPRESSIONS, ExtensionSpec, UkiSpec


def scalar_text(value: str | int | bool | None, *, flow: bool = False, style: str | None = None) -> str:
    """``value`` as YAML scalar text, quoted only when YAML needs it.

    ``flow`` asks for text that is also safe inside ``[...]`` or ``{...}``. Strings with line
    breaks or unprintable characters are double-quoted with escapes, so the result is one line.
    ``style`` ``'`` or ``"`` keeps the quoting of a string being replaced.
    """
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if not isinstance(value, str):
        raise TypeError(f"cannot write {type(value).__name__} as a spec value")
    one_line = value.isprintable() and not any(c in value for c in "\x85\u2028\u2029")
    if not one_line:
        dumped = yaml.safe_dump(value, default_style='"', width=math.inf, allow_unicode=False)
        return dumped.rstrip("\n").removesuffix("\n...").rstrip("\n")
    if style in ("'", '"'):
        return yaml.safe_dump(value, default_style=style, width=math.inf, allow_unicode=True).rstrip("\n")
    dumped = yaml.safe_dump([value], default_flow_style=flow, width=math.inf, allow_unicode=True)
    if flow:
        return dumped.strip()[1:-1]
    return dumped.rstrip("\n")[2:]


def flow_text(value: object) -> str:
    """A scalar, list or mapping as one line of YAML flow text, quoting only as needed."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{flow_text(k)}: {flow_text(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(flow_text(v) for v in value) + "]"
    return scalar_text(value, flow=True)  # type: ignore[arg-type]


def extension_fields(ext: ExtensionSpec) -> dict[str, object]:
    """The keys sysextant writes for a new extension, in file order (``exclude`` only if set)."""
    fields: dict[str, object] = {"name": ext.name, "version": ext.version, "paths": list(ext.paths)}
    if ext.exclude:
        fields["exclude"] = list(ext.exclude)
    if ext.packages:
        fields["packages"] = list(ext.packages)
    fields.update(filesystem=ext.filesystem, compression=ext.compression, release=dict(ext.release))
    return fields


#: Lists longer than this (with their key and indent) are written one item a line.
FLOW_WIDTH = 96


def extension_lines(ext: ExtensionSpec, indent: int = 2, unit: int = 2) -> list[str]:
    """The block lines (no line ends) of one ``extensions`` item, its dash at column ``indent``.

    Short lists and the release mapping are written flow style; long lists one item a line.
    """
    pad = " " * (indent + 2)
    lines: list[str] = []
    for key, value in extension_fields(ext).items():
        lead = " " * indent + "- " if not lines else pad
        text = flow_text(value)
        if isinstance(value, list) and value and len(pad) + len(key) + 2 + len(text) > FLOW_WIDTH:
            lines.append(f"{lead}{key}:")
            lines.extend(f"{pad}{' ' * unit}- {scalar_text(v)}" for v in value)
        else:
            lines.append(f"{lead}{key}: {text if not isinstance(value, str) else scalar_text(value)}")
    return lines


def new_spec_text(root: str, *, kernel: str = "boot/vmlinuz", cmdline: str | None = None,
                  init: str | None = None, limit: str | None = None, uki_output: str = "build/uki.efi",
                  key: str | None = None, cert: str | None = None, profile: str | None = None,
                  extensions: Sequence[ExtensionSpec] = (), output: str = "build") -> str:
    """A fresh, commented version-1 spec for ``sysextant init``: every value not given is the
    model's default (:class:`.model.UkiSpec`), written out so the file says what it means.

    Without ``key`` and ``cert`` the signing section is written commented out (unsigned builds).
    """
    d = UkiSpec()
    s = scalar_text

    def c(line: str, comment: str) -> str:  # a comment aligned at column 31 (or after a long value)
        return f"{line.ljust(30)} # {comment}"

    lines = [
        "# Sysextant spec: which parts of the OS tree leave the UKI as signed system extensions.",
        "# Relative paths are relative to this file's folder. `sysextant plan` checks it.",
        f"version: {SPEC_VERSION}",
        "",
        "os:",
        c(f"  root: {s(root)}", "the OS tree (a folder); never modified"),
        c(f"  kernel: {s(kernel)}", "inside root unless absolute"),
        c("  exclude: []", "extra globs left out of the UKI initrd"),
        "",
        "uki:",
        f"  stub: {s(str(d.stub))}",
        f"  cmdline: {s(d.cmdline if cmdline is None else cmdline)}",
        c(f"  init: {s(init)}", "e.g. /usr/bin/immucore: the /init symlink Kairos uses") if init is None
        else c(f"  init: {s(init)}", "what the kernel starts from the initrd"),
        c(f"  compression: {s(d.compression)}", " | ".join(UKI_COMPRESSIONS)),
        f"  level: {d.level}",
        c(f"  limit: {s(d.limit_text if limit is None else limit)}", f"a size with unit, or a preset: "
          f"{', '.join(LIMIT_PRESETS)}"),
        f"  output: {s(uki_output)}",
        "",
    ]
    if key and cert:
        lines += [c("signing:", "the Secure Boot db key pair"),
                  f"  key: {s(key)}", f"  cert: {s(cert)}", ""]
    else:
        lines += [c("# signing:", "without it, images are built unsigned"),
                  "#   key: keys/db.key", "#   cert: keys/db.pem",
                  c("#   trust_in_uki: false", "true: the cert goes into the UKI's etc/verity.d (plain systemd)"), ""]
    if profile:
        lines += ["boot:", c(f"  profile: {s(profile)}", "kairos | systemd | none: what runs before the merge "
                             "(`sysextant boot-set`)"), ""]
    if extensions:
        lines.append("extensions:")
        for ext in extensions:
            lines.extend(extension_lines(ext))
    else:
        lines += [c("extensions: []", "e.g. - name: firmware"), c("", "       paths: [usr/lib/firmware]")]
    lines += ["", "# Where the extension images go.", f"output: {s(output)}", ""]
    return "\n".join(lines)
