"""The boot set: every entry of an OS tree that must stay in the UKI, each with its chain of reasons.

A trusted-boot UKI boots with the initrd as its root filesystem, and the extensions are merged
only later, by the very system this initrd starts (systemd-sysext.service, ``After=local-fs.target``;
Kairos: immucore links them into ``/run/extensions`` first). So whatever runs before the merge,
and whatever it loads, must stay in the UKI. What runs comes from a *boot profile*
(``boot.profile``, detected when absent):

- ``kairos`` (immucore or ``etc/kairos-release`` in the tree): immucore and the commands it and its
  bundled yip stages run before systemd (immucore ``pkg/dag/dag_uki_boot.go``,
  ``pkg/state/steps_uki.go``), kairos-agent (recovery and reset boots get no extensions), then
  everything of the systemd profile;
- ``systemd``: the init and systemd's early set up to ``local-fs.target`` and the merge: PID 1,
  journald, udevd and its helpers and rules, the generators, systemd-sysext and systemd-dissect,
  mount, modprobe, fsck, the unit files, tmpfiles/sysctl/modprobe/modules-load drop-ins;
- ``none``: only the init, the kernel's boot modules and what ``boot.keep`` names.

Then the closure: ELF libraries (:mod:`.libs`: PT_INTERP, DT_NEEDED, RUNPATH, ld.so.conf,
``.note.dlopen``, ``#!`` interpreters), the kernel modules needed before the merge
(:mod:`.modules`: modules.dep, softdeps, aliases) with the index files modprobe reads, and the
firmware those modules name (``.modinfo`` ``firmware=``; moving it is a warning: devices probed
before the merge miss it). ``boot.keep`` adds globs; ``boot.allow`` waives a path with a reason.
Everything resolves inside the tree, through the tree's own symlinks, never through this machine.
"""

from __future__ import annotations

import os
import time
import weakref
from collections.abc import Iterable
from dataclasses import dataclass, field

from ..errors import UserError
from ..formats.kmodinfo import firmware as module_firmware
from ..rules import OS_RELEASE
from ..spec.model import Spec
from ..tree.fsentry import resolve_in_tree
from ..tree.index import TreeIndex
from ..tree.selection import IntervalSet, match, subtree_set
from .init import init_program
from .libs import Closure
from .merge import KAIROS_MARKERS
from .modules import INDEX_FILE, boot_modules, module_name, read_module_trees

#: where commands are looked up, in the order of Debian's default PATH (the tree's own links,
#: such as bin -> usr/bin, are followed inside the tree)
PATH_DIRS = ("usr/local/sbin", "usr/local/bin", "usr/sbin", "usr/bin", "sbin", "bin")
#: programs systemd runs up to local-fs.target and the merge (systemd 252-256 unit files of
#: sysinit.target's early services, local-fs.target's mounts and fsck, systemd-sysext.service)
SYSTEMD_HELPERS = ("usr/lib/systemd/systemd", "usr/lib/systemd/systemd-journald", "usr/lib/systemd/systemd-udevd",
                   "usr/lib/systemd/systemd-executor", "usr/lib/systemd/systemd-shutdown",
                   "usr/lib/systemd/systemd-fsck", "usr/lib/systemd/systemd-remount-fs",
                   "usr/lib/systemd/systemd-modules-load", "usr/lib/systemd/systemd-sysctl",
                   "usr/lib/systemd/systemd-makefs", "usr/lib/systemd/systemd-growfs",
                   "usr/lib/systemd/systemd-veritysetup", "usr/lib/systemd/systemd-sulogin-shell",
                   "usr/lib/systemd/systemd-random-seed", "usr/lib/systemd/systemd-tpm2-setup")
SYSTEMD_COMMANDS = ("systemd-sysext", "systemd-dissect", "systemd-tmpfiles", "systemd-sysusers", "systemctl",
                    "systemd-machine-id-setup", "udevadm", "mount", "umount", "modprobe", "kmod", "depmod", "fsck",
                    "sulogin", "sh", "losetup")
#: data systemd reads before the merge: whole folders (small; a missing unit file means the
#: merge itself never runs)
SYSTEMD_DATA = ("usr/lib/systemd/system", "usr/lib/systemd/system-generators",
                "usr/lib/systemd/system-environment-generators", "usr/lib/systemd/system-preset", "usr/lib/udev",
                "usr/lib/tmpfiles.d", "usr/lib/sysctl.d", "usr/lib/modprobe.d", "usr/lib/modules-load.d",
                "usr/lib/sysusers.d", "usr/lib/systemd/systemd-sysext", OS_RELEASE)
#: what immucore runs before it execs /sbin/init, and the yip stages bundled with Kairos
#: (domain facts, section 8)
KAIROS_COMMANDS = ("immucore", "kairos-agent", "depmod", "modprobe", "cp", "rsync", "blkid", "findmnt", "lsblk",
                   "udevadm", "systemd-udevd", "systemd-dissect", "systemd-tpm2-setup", "lvm", "systemctl", "mount",
                   "umount", "sh", "ls", "rm", "mv", "cat", "ln", "chmod", "chown", "sed", "date", "passwd",
                   "ssh-keygen", "systemd-machine-id-setup", "networkctl")
#: libraries systemd dlopen()s before the merge, for systemd releases whose binaries carry no
#: ``.note.dlopen`` (before 256; src/shared/cryptsetup-util.c, tpm2-util.c): without libcryptsetup,
#: systemd-sysext cannot set up dm-verity and a signed extension never activates
SYSTEMD_DLOPEN = ("libcryptsetup.so.12",)
SYSTEMD_DLOPEN_TPM = ("libtss2-esys.so.0", "libtss2-rc.so.0", "libtss2-mu.so.0")
#: where those are looked for (Debian multiarch first, then the others' folders)
LIB_DIRS = ("usr/lib/x86_64-linux-gnu", "usr/lib/aarch64-linux-gnu", "usr/lib64", "usr/lib", "lib64", "lib")
KINDS = ("kernel", "init", "program", "library", "data", "module", "module-index", "firmware", "keep")


@dataclass
class Reason:
    """Why one entry stays: ``why`` names the parent when there is one (``DT_NEEDED of ...``)."""

    why: str
    kind: str  # one of KINDS
    parent: int | None = None  # the index entry that needed it


@dataclass
class BootSet:
    """What must stay in the UKI for a spec's tree. ``entries`` must stay (a mark of one is
    refused); ``soft`` should (firmware named by kept modules: moving it is a warning)."""

    index: TreeIndex
    profile: str
    profile_source: str
    entries: IntervalSet
    soft: IntervalSet
    reasons: dict[int, Reason] = field(default_factory=dict)  # seeded entries; a folder's reason covers its subtree
    waived: list[tuple[int, str]] = field(default_factory=list)  # boot.allow: entry, reason
    missing: list[tuple[str, str]] = field(default_factory=list)  # (library or program, who needed it)
    seconds: float = 0.0
    by_kind: dict[str, IntervalSet] = field(default_factory=dict)

    def __contains__(self, i: int) -> bool:
        return i in self.entries

    def reason(self, i: int) -> Reason | None:
        """The reason entry ``i`` stays (its own, or that of the kept folder holding it)."""
        k: int | None = i
        while k is not None and k >= 0:
            r = self.reasons.get(k)
            if r is not None:
                if k != i:
                    return Reason(f"in {os.fsdecode(self.index.path(k))}, {r.why}", r.kind, r.parent)
                return r
            k = self.index.parent[k]
        return None

    def chain(self, i: int, *, limit: int = 8) -> str:
        """``usr/lib/x86_64-linux-gnu/libc.so.6 <- DT_NEEDED of usr/lib/systemd/systemd <- the init
        program /usr/lib/systemd/systemd (uki.init)``."""
        parts = [os.fsdecode(self.index.path(i))]
        seen = {i}
        r = self.reason(i)
        while r is not None and len(parts) <= limit:
            parts.append(r.why)
            if r.parent is None or r.parent in seen:
                break
            seen.add(r.parent)
            r = self.reason(r.parent)
        return " <- ".join(parts)

    def count(self, i: int) -> int:
        """How many entries in folder ``i``'s subtree (``i`` included) must stay."""
        span = self.index.subtree(i)
        return len(IntervalSet([(i, i + 1), (span.start, span.stop)] if span else [(i, i + 1)]).intersection(self.entries))

    def in_kinds(self, sel: IntervalSet, kinds: Iterable[str]) -> IntervalSet:
        """The part of ``sel`` that stays for one of ``kinds``."""
        out = IntervalSet()
        for kind in kinds:
            part = self.by_kind.get(kind)
            if part:
                out = out.union(sel.intersection(part))
        return out

    def to_json(self) -> dict:
        return {
            "profile": self.profile,
            "profile_source": self.profile_source,
            "entries": len(self.entries),
            "seconds": round(self.seconds, 3),
            "paths": [{"path": os.fsdecode(self.index.path(k)), "kind": r.kind, "chain": self.chain(k),
                       "entries": self.count(k)} for k, r in sorted(self.reasons.items()) if k in self.entries],
            "soft": [{"path": os.fsdecode(self.index.path(k)), "chain": self.chain(k)} for k in self.soft.indices()],
            "waived": [{"path": os.fsdecode(self.index.path(k)), "reason": why} for k, why in self.waived],
            "missing": [{"name": n, "needed_by": by} for n, by in self.missing],
        }


def detect_profile(spec: Spec, index: TreeIndex) -> tuple[str, str]:
    """The boot profile and where it came from, for messages."""
    if spec.boot.profile:
        return spec.boot.profile, f"boot.profile in {spec.where('boot', 'profile')}"
    for marker in KAIROS_MARKERS:
        if index.lookup(marker) is not None:
            return "kairos", f"detected: {marker} is in the tree"
    if index.lookup("usr/lib/systemd/systemd") is not None or index.lookup("lib/systemd/systemd") is not None:
        return "systemd", "detected: usr/lib/systemd/systemd is in the tree"
    return "none", "detected: neither Kairos nor systemd is in the tree"


class _Builder:
    def __init__(self, spec: Spec, index: TreeIndex) -> None:
        self.spec, self.index = spec, index
        self.root = index.root
        self.reasons: dict[int, Reason] = {}
        self.kinds: dict[str, list[int]] = {k: [] for k in KINDS}
        self.soft: list[int] = []

    def keep(self, i: int | None, why: str, kind: str, parent: int | None = None) -> bool:
        if i is None or i in self.reasons:
            return False
        self.reasons[i] = Reason(why, kind, parent)
        self.kinds[kind].append(i)
        return True

    def find_command(self, name: str) -> str | None:
        """Tree path of command ``name`` on the tree's PATH (the first folder that has it)."""
        for folder in PATH_DIRS:
            rel = f"{folder}/{name}"
            try:
                resolve_in_tree(self.root, os.fsencode(rel))
            except OSError:
                continue
            return rel
        return None


_cache: list = []  # [(weak index, key, BootSet)]: the last one computed


def _key(spec: Spec) -> tuple:
    """What the boot set depends on besides the tree."""
    return (str(spec.os.root), str(spec.os.kernel), spec.uki.init, spec.uki.pcr_key is not None,
            tuple(sorted({e.filesystem for e in spec.extensions})), spec.boot.profile, tuple(spec.boot.keep),
            tuple((a.path, a.reason) for a in spec.boot.allow), spec.locations.get(("boot", "profile")),
            tuple(spec.locations.get(("boot", "keep", n)) for n in range(len(spec.boot.keep))),
            spec.locations.get(("os", "kernel")), str(spec.path))


def boot_set(spec: Spec, index: TreeIndex) -> BootSet:
    """The boot set of ``spec``'s tree (see the module docstring); the last one is cached for a
    complete index, so re-planning after each mark costs nothing."""
    key = _key(spec)
    if _cache and _cache[0][0]() is index and _cache[0][1] == key and index.complete:
        return _cache[0][2]
    result = _compute(spec, index)
    if index.complete:
        _cache[:] = [(weakref.ref(index), key, result)]
    return result


def _compute(spec: Spec, index: TreeIndex) -> BootSet:
    started = time.perf_counter()
    b = _Builder(spec, index)
    profile, source = detect_profile(spec, index)
    closure = Closure(index.root)
    seeds: list[tuple[str, str, str]] = []  # tree path, why, kind

    try:
        rel = os.path.relpath(spec.os.kernel, spec.os.root)
    except ValueError:
        rel = ""
    if rel and not rel.startswith(".."):  # the kernel and every link on the way to it, in the tree
        links: list[bytes] = []
        try:
            resolved = resolve_in_tree(index.root, os.fsencode(rel), links=links)
        except OSError:
            resolved = os.fsencode(rel)
        for path in [*links, resolved]:
            b.keep(index.lookup(path), f"the kernel (os.kernel, {spec.where('os', 'kernel')})", "kernel")

    prog = init_program(spec, index)
    if prog is not None and prog.needed:
        *way, program = prog.needed
        what = f"the init program {prog.path} ({prog.source})"
        for k in way:
            b.keep(k, f"a link on the way to {what}", "init")
        b.keep(program, what, "init")
        seeds.append((os.fsdecode(index.path(program)), what, "init"))

    if profile in ("kairos", "systemd"):
        label = f"boot profile {profile}"
        names: list[str] = []
        if profile == "kairos":
            names += KAIROS_COMMANDS
        names += SYSTEMD_COMMANDS
        for path in SYSTEMD_HELPERS:  # PID 1 first: what it loads is named after it
            if index.lookup(path) is not None:
                seeds.append((path, f"run before the merge ({label})", "program"))
        for name in dict.fromkeys(names):
            found = b.find_command(name)
            if found is not None:
                seeds.append((found, f"run before the merge ({label})", "program"))
        for name in (*SYSTEMD_DLOPEN, *(SYSTEMD_DLOPEN_TPM if spec.uki.pcr_key is not None else ())):
            found = next((f"{d}/{name}" for d in LIB_DIRS if index.lookup(f"{d}/{name}") is not None), None)
            if found is not None:
                seeds.append((found, f"dlopen()ed by systemd before the merge ({label}; dm-verity, TPM)", "program"))
        for path in SYSTEMD_DATA:
            k = index.lookup(path)
            if k is not None:
                b.keep(k, f"read before the merge ({label})", "data")
        # helpers udev rules run when disks appear (ata_id, scsi_id, ...), and the generators
        for folder in ("usr/lib/udev", "usr/lib/systemd/system-generators",
                       "usr/lib/systemd/system-environment-generators"):
            top = index.lookup(folder)
            if top is not None and index.is_dir(top):
                for c in index.children(top):
                    if not index.is_dir(c) and index.mode[c] & 0o111:
                        seeds.append((os.fsdecode(index.path(c)), f"run before the merge ({label})", "program"))

    for n, pattern in enumerate(spec.boot.keep):
        for k in match(index, pattern):
            b.keep(k, f"boot.keep {pattern} ({spec.where('boot', 'keep', n)})", "keep")
            if not index.is_dir(k):
                seeds.append((os.fsdecode(index.path(k)), f"boot.keep {pattern}", "keep"))

    # the ELF/script closure of every seeded program
    for path, why, _kind in seeds:
        closure.add(path, why)
    seed_kinds = {p: kd for p, _w, kd in reversed(seeds)}  # the first seed of a path names its kind
    for path, need in closure.needs.items():
        k = index.lookup(path)
        if k is None or k in b.reasons:
            continue
        parent = index.lookup(need.parent) if need.parent else None
        kind = seed_kinds.get(path, "library" if need.parent else "program")
        b.keep(k, need.why, kind, parent)

    # kernel modules needed before the merge, the index files modprobe reads, their firmware
    for mt in read_module_trees(index):
        kept_modules: list[tuple[int, str]] = []
        for path, why in boot_modules(spec, index, mt).items():
            k = index.lookup(f"{mt.folder}/{path}")
            if b.keep(k, f"kernel module {module_name(path)} ({why})", "module"):
                kept_modules.append((k, path))
        top = index.lookup(mt.folder)
        for c in index.children(top):
            if INDEX_FILE.fullmatch(os.fsdecode(index.names[c])):
                b.keep(c, "a modules index file modprobe reads before any merge", "module-index")
        for k, path in kept_modules:
            try:
                names = module_firmware(os.path.join(index.root, os.fsencode(f"{mt.folder}/{path}")))
            except (OSError, ValueError, UserError):
                continue
            for fw in names:
                for cand in (f"usr/lib/firmware/{fw}", f"usr/lib/firmware/{fw}.zst", f"usr/lib/firmware/{fw}.xz",
                             f"lib/firmware/{fw}", f"lib/firmware/{fw}.zst", f"lib/firmware/{fw}.xz"):
                    f = index.lookup(cand)
                    if f is not None and f not in b.reasons:
                        b.reasons[f] = Reason(f"firmware of kernel module {module_name(path)} (modinfo firmware=)",
                                              "firmware", k)
                        b.soft.append(f)
                        break

    hard = [k for kind, ks in b.kinds.items() if kind != "firmware" for k in ks]
    folders = [k for k in hard if index.is_dir(k) and b.reasons[k].kind in ("data", "keep")]
    entries = subtree_set(index, folders).union(IntervalSet((k, k + 1) for k in hard))
    waived: list[tuple[int, str]] = []
    for allow in spec.boot.allow:
        for k in match(index, allow.path):
            sub = subtree_set(index, [k])
            if sub.intersection(entries):
                waived.append((k, allow.reason))
            entries = entries.difference(sub)
    by_kind = {kind: (subtree_set(index, ks) if kind in ("data", "keep") else IntervalSet((k, k + 1) for k in sorted(ks)))
               .intersection(entries) for kind, ks in b.kinds.items() if ks}
    return BootSet(index, profile, source, entries, IntervalSet((k, k + 1) for k in sorted(b.soft)), b.reasons,
                   waived, list(closure.missing), time.perf_counter() - started, by_kind)
