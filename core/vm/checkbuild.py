"""The check build: the spec's UKI plus a few files under ``etc/`` that make the booted VM merge
the extensions from its second disk and report what it sees, then power off.

Same kernel, stub, cmdline, key and tree; the added files (``Spec.extra_files``, never written to
the tree) are, all under ``etc/``:

- ``sysextant-check/link-extensions`` run by ``sysextant-link-extensions.service`` before
  ``systemd-sysext.service``: mounts the disk labelled ``sysext-disk`` read-only and links its
  ``*.raw`` into ``/run/extensions``, as Kairos' immucore links its store before systemd merges;
- ``sysextant-check/run`` run by ``sysextant-check.service`` after ``multi-user.target``: prints
  one ``sysextant-check: NAME: ok|FAIL|value: DETAIL`` line per check on /dev/console (see
  :mod:`.console`): the boot-time merge, ``systemd-sysext status``, the dm-verity devices, sample
  files of each extension against their SHA-256 in the tree, a moved kernel module loaded with
  modprobe, PCR 11 (judged on the host against the prediction from the booted UKI's sections);
- the symlinks that enable those units (and ``systemd-sysext.service`` when the tree does not);
- a drop-in running systemd-sysext with ``SYSTEMD_LOG_LEVEL=debug`` so a failed merge explains
  itself in the lines the check prints from the journal.

The build goes to ``OUTPUT/boot-check/`` (its own state and lock) and is labelled so in every
report; it is not for deployment.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import shlex
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..formats.pcr import extend_phase, kernel_pcr11, measured_sections, stub_version
from ..formats.pe import parse_pe
from ..sizing.plan import Plan
from ..spec.model import ExtraFile, Spec
from .disks import EXT_LABEL

CHECK_DIR = "boot-check"
UNIT_DIR = "etc/systemd/system"
SAMPLES_PER_EXTENSION = 3
_SAFE_PATH = re.compile(rb"^[A-Za-z0-9_./+@:=-]+$")
_MODULE = re.compile(rb"^usr/lib/modules/[^/]+/.+/([^/]+)\.ko(\.xz|\.zst|\.gz)?$")

LINK_SCRIPT = f"""#!/bin/sh
# sysextant boot check build: the extension images on the VM's second disk into /run/extensions,
# as Kairos' immucore links its store before systemd-sysext.service merges. It runs before the
# merge, so it uses only what the boot set keeps in the UKI: sh and its builtins, mount and
# systemd-tmpfiles (no coreutils: a spec may move them into an extension)
set -u
conf=/run/sysextant-links.conf
printf 'd /run/sysextant-disk 0755 - - -\\nd /run/extensions 0755 - - -\\n' > "$conf"
systemd-tmpfiles --create "$conf" || exit 1
mount -o ro /dev/disk/by-label/{EXT_LABEL} /run/sysextant-disk || exit 1
: > "$conf"
for img in /run/sysextant-disk/*.raw; do
    [ -e "$img" ] && printf 'L+ /run/extensions/%s - - - - %s\\n' "${{img##*/}}" "$img" >> "$conf"
done
systemd-tmpfiles --create "$conf"
"""

# systemd escapes '-' in a device path as \\x2d
_DEVICE_UNIT = "dev-disk-by\\x2dlabel-" + EXT_LABEL.replace("-", "\\x2d") + ".device"

LINK_UNIT = f"""[Unit]
Description=sysextant check: link the extension images into /run/extensions
DefaultDependencies=no
BindsTo={_DEVICE_UNIT}
After={_DEVICE_UNIT}
Before=systemd-sysext.service

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/etc/sysextant-check/link-extensions
"""

CHECK_UNIT = """[Unit]
Description=sysextant check: report the extensions, dm-verity, files, modules and PCR 11
After=multi-user.target systemd-sysext.service systemd-pcrphase.service

[Service]
Type=oneshot
ExecStart=/etc/sysextant-check/run
StandardOutput=tty
StandardError=tty
TTYPath=/dev/console
TTYReset=no
TTYVHangup=no
"""

SYSEXT_DEBUG = """[Service]
Environment=SYSTEMD_LOG_LEVEL=debug
"""

RUN_HEAD = r"""#!/bin/sh
# sysextant boot check build: one line per check on the console, read by `sysextant boot`
say() { printf 'sysextant-check: %s: %s: %s\n' "$1" "$2" "$3"; }
log() { sed 's/^/sysextant-log: /'; }

check_service() {
    state=$(systemctl show -p ActiveState --value systemd-sysext.service)
    result=$(systemctl show -p Result --value systemd-sysext.service)
    if [ "$state" = active ]; then
        say sysext-service ok "systemd-sysext.service ran at boot ($state, $result; 252 exits 0 even when an image fails)"
    else
        say sysext-service FAIL "systemd-sysext.service is $state ($result) at boot"
    fi
    # why an image did not activate (a signature refused, a bad image), whatever the tail below keeps
    journalctl -b -u systemd-sysext.service --no-pager -o cat 2>&1 \
        | grep -i -E 'verity|signature|key not available|corrupt|failed to' | tail -n 12 | log
    journalctl -b -u systemd-sysext.service --no-pager -o cat 2>&1 | grep -v -i -E '^(Running in|Calling|Successfully|Found|Received|Got|Entered|Parsed|Checking)' | tail -n 25 | log
}

check_merged() {
    status=$(systemd-sysext status 2>&1)
    printf '%s\n' "$status" | log
    name=$1
    if printf '%s\n' "$status" | grep -q -E "(^|[ ,])$name(\.sysext)?(\.raw)?(,|[[:space:]]|$)"; then
        say "merged-$name" ok "listed by systemd-sysext status"
    else
        say "merged-$name" FAIL "not listed by systemd-sysext status"
    fi
}

check_verity() {
    want=$1; n=0; names=""
    for d in /sys/block/dm-*; do
        [ -r "$d/dm/uuid" ] || continue
        case $(cat "$d/dm/uuid") in
            CRYPT-VERITY-*) n=$((n + 1)); names="$names $(cat "$d/dm/name")" ;;
        esac
    done
    if [ "$n" -ge "$want" ]; then say verity ok "$n dm-verity device(s):$names"
    else say verity FAIL "$n dm-verity device(s) for $want extension(s):$names"; fi
}

check_files() {
    name=$1; shift; bad=""; n=0
    for pair in "$@"; do
        sum=${pair%% *}; path=${pair#* }; n=$((n + 1))
        # a read error (dm-verity's EIO for a corrupted block) is told apart from other content
        if ! got=$(sha256sum 2>&1 < "$path"); then bad="$bad $path (unreadable: ${got##*: })"; continue; fi
        [ "${got%% *}" = "$sum" ] || bad="$bad $path (differs)"
    done
    if [ -z "$bad" ]; then say "files-$name" ok "$n file(s) read back identical to the tree"
    else say "files-$name" FAIL "differ from the tree or unreadable:$bad"; fi
}

check_module() {
    module=$1; file=$2
    if out=$(modprobe "$module" 2>&1) && [ -d "/sys/module/$(echo "$module" | tr - _)" ]; then
        say "module-$module" ok "modprobe $module loaded $file"
    else
        say "module-$module" FAIL "modprobe $module: ${out:-not loaded}"
    fi
}

check_pcr11() {
    value=$(cat /sys/class/tpm/tpm0/pcr-sha256/11 2>/dev/null)
    sysinit=$(systemctl show -p ActiveState --value systemd-pcrphase-sysinit.service)
    ready=$(systemctl show -p ActiveState --value systemd-pcrphase.service)
    say pcr11 value "${value:-none} sysinit=$sysinit ready=$ready"
}

"""


@dataclass
class CheckBuild:
    """The check spec and what its guest will report."""

    spec: Spec
    checks: list[tuple[str, str]]  # (name, title) in report order
    notes: list[str] = field(default_factory=list)
    judges: dict[str, Callable[[str], tuple[bool, str]]] = field(default_factory=dict)


def _sha256(path: str | bytes) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while data := f.read(1 << 20):
            h.update(data)
    return h.hexdigest()


def _samples(plan: Plan, ext_index: int) -> list[bytes]:
    """Up to SAMPLES_PER_EXTENSION regular files of an extension (the largest, the smallest, one
    in between), with plain path names the check script can quote."""
    index = plan.index
    files = [i for i in plan.extensions[ext_index].selected.indices()
             if stat.S_ISREG(index.mode[i]) and index.size[i] > 0 and _SAFE_PATH.match(index.path(i))]
    if not files:
        return []
    files.sort(key=lambda i: (index.size[i], index.path(i)))
    picks = {files[0], files[len(files) // 2], files[-1]}
    return [index.path(i) for i in sorted(picks, key=lambda i: index.path(i))][:SAMPLES_PER_EXTENSION]


def _module(plan: Plan, ext_index: int) -> tuple[str, bytes] | None:
    """A kernel module the extension carries: (modprobe name, path), the first by path."""
    index = plan.index
    for i in plan.extensions[ext_index].selected.indices():
        m = _MODULE.match(index.path(i))
        if m and stat.S_ISREG(index.mode[i]):
            return m.group(1).decode(), index.path(i)
    return None


def make_check_build(spec: Spec, plan: Plan) -> CheckBuild:
    """The check spec for ``spec`` (planned as ``plan``): output in ``OUTPUT/boot-check``, the
    files above added to the initrd; the checks the guest will report."""
    root = os.fsencode(spec.os.root)
    index = plan.index
    files: list[ExtraFile] = []
    checks: list[tuple[str, str]] = [("sysext-service", "systemd-sysext.service ran at boot")]
    notes: list[str] = []
    body: list[str] = ["check_service"]
    built = [(k, e) for k, e in enumerate(spec.extensions) if plan.extensions[k].entries]
    for _, ext in built:
        checks.append((f"merged-{ext.name}", f"extension {ext.name} merged"))
        body.append(f"check_merged {shlex.quote(ext.name)}")
    if built and spec.signing is not None:
        checks.append(("verity", "dm-verity devices for the signed extensions"))
        body.append(f"check_verity {len(built)}")
    for k, ext in built:
        pairs = []
        for rel in _samples(plan, k):
            pairs.append(f"{_sha256(os.path.join(root, rel))} /{rel.decode()}")
        if pairs:
            checks.append((f"files-{ext.name}", f"files of {ext.name} read back identical to the tree"))
            body.append(f"check_files {shlex.quote(ext.name)} " + " ".join(shlex.quote(p) for p in pairs))
        mod = _module(plan, k)
        if mod is not None:
            name, path = mod
            checks.append((f"module-{name}", f"kernel module {name} from {ext.name} loads"))
            body.append(f"check_module {shlex.quote(name)} {shlex.quote('/' + path.decode())}")
    if spec.uki.pcr_key is not None:
        checks.append(("pcr11", "PCR 11 equals the prediction"))
        body.append("check_pcr11")
    body += ["say end '' ''", "systemctl poweroff --no-block"]
    script = RUN_HEAD + "\n".join(body) + "\n"
    # the end line is 'sysextant-check: end' (no verdict): console.py's end marker
    script = script.replace("say end '' ''", "printf 'sysextant-check: end\\n'")

    files += [
        ExtraFile("etc/sysextant-check/README", f"sysextant boot check build of {spec.path}: not for deployment\n".encode()),
        ExtraFile("etc/sysextant-check/link-extensions", LINK_SCRIPT.encode(), 0o755),
        ExtraFile("etc/sysextant-check/run", script.encode(), 0o755),
        ExtraFile(f"{UNIT_DIR}/sysextant-link-extensions.service", LINK_UNIT.encode()),
        ExtraFile(f"{UNIT_DIR}/systemd-sysext.service.wants/sysextant-link-extensions.service",
                  target="../sysextant-link-extensions.service"),
        ExtraFile(f"{UNIT_DIR}/sysextant-check.service", CHECK_UNIT.encode()),
        ExtraFile(f"{UNIT_DIR}/multi-user.target.wants/sysextant-check.service", target="../sysextant-check.service"),
        ExtraFile(f"{UNIT_DIR}/systemd-sysext.service.d/sysextant-check.conf", SYSEXT_DEBUG.encode()),
    ]
    tmp = index.lookup("tmp")
    if tmp is None or tmp not in plan.initrd_after:
        notes.append("the UKI has no /tmp (top-level tmp is left out of the initrd, as Kairos packs it): "
                     "systemd-sysext 252 mounts each image under /tmp/dissect-XXXXXX to read its metadata and "
                     "fails at boot with 'Failed to read metadata for image NAME: No such file or directory'. "
                     "Kairos' immucore mounts a tmpfs on /tmp before systemd starts, and so does this check "
                     "build's link unit; a plain systemd OS booting this UKI needs /tmp created before "
                     "systemd-sysext.service")
    enabled = any(index.lookup(f"{UNIT_DIR}/{t}.wants/systemd-sysext.service") is not None
                  for t in ("sysinit.target", "multi-user.target", "local-fs.target"))
    if not enabled:
        unit = next((p for p in ("usr/lib/systemd/system/systemd-sysext.service", "lib/systemd/system/systemd-sysext.service")
                     if index.lookup(p) is not None), "usr/lib/systemd/system/systemd-sysext.service")
        files.append(ExtraFile(f"{UNIT_DIR}/sysinit.target.wants/systemd-sysext.service", target="/" + unit))
        notes.append("systemd-sysext.service is not enabled in the OS tree: the check build enables it "
                     "(Kairos enables it itself; a plain systemd OS must, or nothing merges at boot)")
    check_spec = dataclasses.replace(
        spec,
        output=spec.output / CHECK_DIR,
        uki=dataclasses.replace(spec.uki, output=spec.output / CHECK_DIR / "uki.efi"),
        extra_files=[*spec.extra_files, *files],
    )
    return CheckBuild(check_spec, checks, notes)


def uki_sections(uki: Path) -> list[tuple[str, bytes]]:
    """The sections of a built UKI (name, content without padding), as the stub measures them."""
    pe = parse_pe(uki)
    out = []
    with open(uki, "rb") as f:
        for s in pe.sections:
            f.seek(s.raw_offset)
            out.append((s.name, f.read(min(s.virtual_size, s.raw_size))))
    return out


def pcr11_judge(uki: Path, stub: Path) -> Callable[[str], tuple[bool, str]]:
    """A judge for the guest's ``pcr11`` value line: PCR 11 from the UKI's sections, then the
    boot phases the guest ran (``sysinit``, ``ready``), against the value it read."""
    base = kernel_pcr11(uki_sections(uki), ("sha256",), measured=measured_sections(stub_version(stub)))["sha256"]

    def judge(detail: str) -> tuple[bool, str]:
        words = detail.split()
        value = words[0].lower() if words else ""
        ran = [w.split("=")[0] for w in words[1:] if w.endswith("=active")]
        expected = extend_phase(base, ":".join(ran), "sha256").hex()
        phases = "+".join(["stub", *ran])
        failed = [w.split("=")[0] for w in words[1:] if w.endswith("=failed")]
        if failed:  # e.g. no libtss2 in the tree: systemd-pcrphase cannot reach the TPM
            phases += f"; systemd-pcrphase failed for {', '.join(failed)}"
        if value == expected:
            return True, f"PCR 11 = {value[:16]}… equals the prediction ({phases})"
        return False, f"PCR 11 = {value or 'unreadable'}, predicted {expected} ({phases})"

    return judge
