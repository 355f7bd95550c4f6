"""Kernel modules: which must stay in the UKI, and which an extension may carry.

Read from the tree's own depmod output (``usr/lib/modules/RELEASE/modules.dep``, ``.softdep``,
``.alias``, ``.builtin``), never from this machine. The rules, measured by booting sysextant's
output (a Debian 12 tree, kernel 6.1):

- the modules the system needs before extensions can be merged stay in the UKI, with their
  dependencies (``modules.dep`` lists each module's full load order) and soft dependencies: the
  storage and bus drivers that find the disk holding the extensions, loop and device-mapper with
  dm-verity, overlay, the filesystems of the extensions and of the ESP, and, with a PCR key, the
  TPM drivers; a Kairos tree adds the fixed list immucore loads before it switches root;
- the index files (``modules.dep``, ``.alias``, ``.softdep``, ``.builtin``, ... and their
  ``.bin`` forms) stay in the UKI: modprobe reads them before any merge and, after it, reads the
  merged copy, which is still the UKI's;
- so a module moved into an extension can be loaded after the merge only if that ``modules.dep``
  lists it (built by depmod over the whole tree, it lists every module the tree had).

See docs/formats.md, sections 12 (kernel modules) and 14 (Kairos conventions).
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass, field

from ..spec.model import Spec
from ..tree.index import TreeIndex
from ..tree.selection import subtree_set

#: what immucore modprobes before it switches root (pkg/state/steps_uki.go; see the docstring)
KAIROS_MODULES = ("ahci", "ata_piix", "libata", "nvme", "nvme_core", "virtio", "virtio_blk", "virtio_scsi",
                  "virtio_pci", "virtio_net", "sd_mod", "sr_mod", "scsi_mod", "usb_storage", "uas", "xhci_hcd",
                  "xhci_pci", "ehci_hcd", "ehci_pci", "ohci_hcd", "ohci_pci", "uhci_hcd", "mmc_block", "sdhci_pci",
                  "dm_mod", "dm_verity", "loop", "overlay", "squashfs", "ext2", "ext4", "fat", "vfat", "iso9660",
                  "nls_cp437", "nls_iso8859_1", "fuse", "simpledrm", "nfit", "libnvdimm", "nd_pmem", "dax_pmem",
                  "e1000", "e1000e", "af_packet")
#: what a plain systemd boot needs up to local-fs.target and the merge: disks, loop, dm-verity,
#: overlay, the ESP's vfat, efivarfs and autofs4 (systemd mounts them early)
SYSTEMD_MODULES = ("ahci", "libata", "nvme", "nvme_core", "virtio_blk", "virtio_scsi", "virtio_pci", "sd_mod",
                   "scsi_mod", "usb_storage", "uas", "xhci_hcd", "xhci_pci", "mmc_block", "sdhci_pci", "dm_mod",
                   "dm_verity", "loop", "overlay", "ext4", "fat", "vfat", "nls_cp437", "nls_iso8859_1", "efivarfs",
                   "autofs4")
TPM_MODULES = ("tpm", "tpm_tis", "tpm_tis_core", "tpm_crb")
#: files depmod writes: read by modprobe before and after a merge
INDEX_FILE = re.compile(r"modules\.[a-z.]+")
_KO = re.compile(r"\.ko(\.(xz|zst|gz))?$")


def module_name(path: str) -> str:
    """``kernel/drivers/md/dm-verity.ko.xz`` -> ``dm_verity`` (kmod treats '-' and '_' alike)."""
    return _KO.sub("", os.path.basename(path)).replace("-", "_")


@dataclass
class ModuleTree:
    """One kernel release's modules in the tree: paths relative to its folder."""

    release: str
    folder: str  # tree path: usr/lib/modules/RELEASE
    deps: dict[str, list[str]] = field(default_factory=dict)  # module path -> dependency paths, in load order
    by_name: dict[str, str] = field(default_factory=dict)  # module name -> path
    softdeps: dict[str, list[str]] = field(default_factory=dict)  # module name -> pre and post names
    aliases: dict[str, list[str]] = field(default_factory=dict)  # alias (no wildcard) -> module names
    builtin: set[str] = field(default_factory=set)

    def resolve(self, name: str) -> list[str]:
        """The paths module ``name`` or alias ``name`` (``fs-erofs``, ``crc32c``) loads: none when
        built in or absent, several when an alias names several modules (modprobe loads them all)."""
        key = name.replace("-", "_")
        if key in self.by_name:
            return [self.by_name[key]]
        return [self.by_name[m] for m in self.aliases.get(name, []) if m in self.by_name]

    def closure(self, names: list[tuple[str, str]]) -> dict[str, str]:
        """Module paths needed by ``names`` ((name, why) pairs), each with the reason it is kept:
        their modules.dep dependencies and soft dependencies, transitively."""
        kept: dict[str, str] = {}
        todo = list(names)
        while todo:
            name, why = todo.pop(0)
            for path in self.resolve(name):
                if path in kept:
                    continue
                kept[path] = why
                for dep in self.deps.get(path, []):
                    if dep not in kept:
                        todo.append((module_name(dep), f"needed by {module_name(path)} (modules.dep), {why}"))
                for soft in self.softdeps.get(module_name(path), []):
                    todo.append((soft, f"soft dependency of {module_name(path)}, {why}"))
        return kept


def _read(index: TreeIndex, rel: str) -> str | None:
    k = index.lookup(rel)
    if k is None:
        return None
    try:
        with open(os.path.join(index.root, os.fsencode(rel)), "rb",
                  opener=lambda p, f: os.open(p, f | os.O_NOFOLLOW)) as fh:
            return fh.read(64 << 20).decode("utf-8", "replace")
    except OSError:
        return None


def read_module_trees(index: TreeIndex) -> list[ModuleTree]:
    """Every ``usr/lib/modules/RELEASE`` with a ``modules.dep`` (the tree's depmod output)."""
    top = index.lookup("usr/lib/modules")
    if top is None or not index.is_dir(top):
        return []
    found = []
    for child in index.children(top):
        if not index.is_dir(child):
            continue
        release = os.fsdecode(index.names[child])
        folder = f"usr/lib/modules/{release}"
        dep_text = _read(index, f"{folder}/modules.dep")
        if dep_text is None:
            continue
        mt = ModuleTree(release, folder)
        for line in dep_text.splitlines():
            path, sep, rest = line.partition(":")
            if not sep:
                continue
            mt.deps[path.strip()] = rest.split()
            mt.by_name.setdefault(module_name(path.strip()), path.strip())
        for line in (_read(index, f"{folder}/modules.softdep") or "").splitlines():
            words = line.split()
            if len(words) < 3 or words[0] != "softdep":
                continue
            mode, soft = None, []
            for w in words[2:]:
                if w in ("pre:", "post:"):
                    mode = w
                elif mode:
                    soft.append(w)
            # kmod uses only the first softdep line of a module ("as modprobe from module-init-tools
            # does", libkmod-module.c): later lines for it (btrfs has four) are never loaded
            mt.softdeps.setdefault(words[1].replace("-", "_"), soft)
        for line in (_read(index, f"{folder}/modules.alias") or "").splitlines():
            words = line.split()
            # plain names only (fs-erofs, crc32c, blake2b-256): softdeps and the spec name modules so;
            # the wildcard ones match devices, which udev loads
            if len(words) == 3 and words[0] == "alias" and not any(c in words[1] for c in "*?["):
                mt.aliases.setdefault(words[1], []).append(words[2].replace("-", "_"))
        for line in (_read(index, f"{folder}/modules.builtin") or "").splitlines():
            if line.strip():
                mt.builtin.add(module_name(line.strip()))
        found.append(mt)
    return found


def is_kairos(index: TreeIndex) -> bool:
    return index.lookup("usr/bin/immucore") is not None or index.lookup("etc/kairos-release") is not None


def boot_modules(spec: Spec, index: TreeIndex, mt: ModuleTree) -> dict[str, str]:
    """The modules of ``mt`` that must stay in the UKI (path -> why): the boot profile's list
    (``boot.profile``, else Kairos when its markers are in the tree, else systemd; none with
    ``boot.profile: none``), the extensions' filesystems, TPM drivers with a PCR key."""
    seeds: list[tuple[str, str]] = []
    chosen = spec.boot.profile or ("kairos" if is_kairos(index) else "systemd")
    if chosen == "kairos":
        seeds += [(n, "boot profile kairos (immucore loads it before switching root)") for n in KAIROS_MODULES]
    elif chosen == "systemd":
        seeds += [(n, "boot profile systemd (needed up to local-fs.target and the merge)") for n in SYSTEMD_MODULES]
    for fs in sorted({e.filesystem for e in spec.extensions}):
        seeds.append((f"fs-{fs}", f"mounts the {fs} extension images"))
        seeds.append((fs, f"mounts the {fs} extension images"))
    if spec.uki.pcr_key is not None:
        seeds += [(n, "TPM driver (uki.pcr_key is set)") for n in TPM_MODULES]
    return mt.closure(seeds)


def module_problems(spec: Spec, index: TreeIndex, ext_plans: list) -> list[str]:
    """What extensions do wrong with kernel modules (see the module docstring), one line each."""
    problems: list[str] = []
    movers = [(n, ep) for n, ep in enumerate(ext_plans) if ep.entries]
    if not movers:
        return problems
    for mt in read_module_trees(index):
        top = index.lookup(mt.folder)
        span = subtree_set(index, [top])
        needed = None
        for n, ep in movers:
            mine = span.intersection(ep.selected)
            if not mine:
                continue
            where = spec.where("extensions", n, "paths")
            if needed is None:
                needed = boot_modules(spec, index, mt)
            moved_boot = [(path, why) for path, why in needed.items()
                          if (k := index.lookup(f"{mt.folder}/{path}")) is not None and k in mine]
            if moved_boot:
                path, why = moved_boot[0]
                folders = sorted({f"{mt.folder}/{os.path.dirname(p)}" for p, _ in moved_boot})
                problems.append(
                    f"{where}: extension {ep.name} moves {len(moved_boot)} kernel module(s) the system needs before "
                    f"it can merge extensions out of the UKI, e.g. {mt.folder}/{path} ({module_name(path)}: {why}); "
                    f"booted, the disk holding the extensions would not be read. Leave them in the UKI, e.g. "
                    f"exclude: [{', '.join(folders[:6])}{', ...' if len(folders) > 6 else ''}]")
            index_files = [index.names[c] for c in index.children(top)
                           if c in mine and INDEX_FILE.fullmatch(os.fsdecode(index.names[c]))]
            if index_files:
                problems.append(
                    f"{where}: extension {ep.name} moves {mt.folder}/{os.fsdecode(index_files[0])}"
                    + (f" and {len(index_files) - 1} more index file(s)" if len(index_files) > 1 else "")
                    + " out of the UKI: modprobe reads them before any merge (and the merged copy after it); "
                    f"leave usr/lib/modules/{mt.release}/modules.* in the UKI")
            unlisted = [k for k in mine.indices() if stat.S_ISREG(index.mode[k]) and _KO.search(os.fsdecode(index.names[k]))
                        and os.fsdecode(index.path(k))[len(mt.folder) + 1:] not in mt.deps]
            if unlisted:
                problems.append(
                    f"{where}: extension {ep.name} holds {len(unlisted)} kernel module(s) that {mt.folder}/modules.dep "
                    f"does not list, e.g. {os.fsdecode(index.path(unlisted[0]))}: modprobe could not load them after "
                    "the merge; run depmod over the tree (depmod -b ROOT RELEASE) and plan again")
    return problems
