"""The run-time closure of programs inside a foreign OS tree: every file they need to start.

Followed as the tree's own dynamic loader and kernel would, never through this machine:

- ``PT_INTERP`` of each program that is executed (a seed, a ``#!`` interpreter); the kernel maps
  it, and glibc ignores it in shared libraries;
- ``DT_NEEDED``, breadth-first, searched as glibc's ``_dl_map_object`` (``elf/dl-load.c``) does:
  a name with a ``/`` is a path; else, when the needing object has no ``DT_RUNPATH``, its
  ``DT_RPATH`` and then those of the objects that loaded it, up to the program (glibc's
  ``l_loader`` chain; an object with ``DT_RUNPATH`` has its ``DT_RPATH`` ignored,
  ``elf/get-dynamic-info.h``); then its ``DT_RUNPATH``; then the folders of the tree's
  ``etc/ld.so.conf`` (with ``include`` globs, as ``ldconfig`` reads them into ``ld.so.cache``);
  then the default folders (skipped for ``DF_1_NODEFLIB``). ``$ORIGIN`` is the folder the object
  was found in (the program's real folder, as ``/proc/self/exe`` gives it); ``$LIB`` and
  ``$PLATFORM`` expand to every value a glibc for that machine may use (Debian's
  ``lib/<triplet>``, ``lib64``, ``lib``). Relative entries (relative to the working directory at
  run time) cannot be known and are skipped. A candidate of another ELF class, byte order or
  machine is passed over, as the loader (and lddtree) do;
- ``.note.dlopen`` (systemd.io/ELF_DLOPEN_METADATA): the first soname found of each
  ``required`` or ``recommended`` entry, searched as the noting object's own ``DT_NEEDED``
  (``dlopen`` uses the caller's paths); a missing ``required`` one is reported, a missing
  ``recommended`` one is not (the program runs without it);
- ``#!`` interpreters (the first line, up to the kernel's 256-byte ``BINPRM_BUF_SIZE``); for
  ``/usr/bin/env NAME`` also NAME, found in the PATH folders systemd gives services
  (``usr/local/sbin:usr/local/bin:usr/sbin:usr/bin``, plus ``sbin`` and ``bin``).

The default folders: glibc's ``SYSTEM_DIRS`` is ``slibdir:libdir`` as configured per
distribution; Debian's multiarch patch makes it ``/lib/<triplet>:/usr/lib/<triplet>:/lib:/usr/lib``
(``ld.so --help``), Fedora's is ``/lib64:/usr/lib64``, Arch's ``/usr/lib`` (and ``/usr/lib32``).
A foreign tree does not say which glibc built it, so all are searched in that order and the
class/machine check drops wrong ones. lddtree (pax-utils) searches ``ld.so.conf`` and the
interpreter's folder instead, and dracut-install runs ``ldd``, which cannot read a tree of another
machine; the tests compare with lddtree on this machine's ``/usr``.

Every symlink passed on the way (``lib64 -> usr/lib64``, the soname link) is part of the result:
the UKI needs it as much as the file. Symlinks resolve inside the tree only
(:func:`~sysextant.core.tree.fsentry.resolve_in_tree`). Not followed: glibc-hwcaps and legacy
hwcap subfolders, ``LD_LIBRARY_PATH``/``LD_PRELOAD`` and ``etc/ld.so.preload``.

The result is a superset of what one run of each program loads: a library reached by two
programs with different search paths is kept as found by both.
"""

from __future__ import annotations

import fnmatch
import os
import stat
from collections import deque
from dataclasses import dataclass

from ..formats.elf import DlopenNote, ElfError, ElfInfo, read_elf
from ..tree.fsentry import open_nofollow, resolve_in_tree

#: Debian multiarch triplets by (ELF class, e_machine, little-endian) (Debian's dpkg cputable/ostable)
TRIPLETS: dict[tuple[int, int, bool], tuple[str, ...]] = {
    (2, 62, True): ("x86_64-linux-gnu",),
    (1, 62, True): ("x86_64-linux-gnux32",),
    (1, 3, True): ("i386-linux-gnu",),
    (2, 183, True): ("aarch64-linux-gnu",),
    (1, 40, True): ("arm-linux-gnueabihf", "arm-linux-gnueabi"),
    (2, 243, True): ("riscv64-linux-gnu",),
    (2, 21, True): ("powerpc64le-linux-gnu",),
    (2, 21, False): ("powerpc64-linux-gnu",),
    (1, 20, False): ("powerpc-linux-gnu",),
    (2, 22, False): ("s390x-linux-gnu",),
    (2, 258, True): ("loongarch64-linux-gnu",),
    (2, 8, True): ("mips64el-linux-gnuabi64",),
    (1, 8, True): ("mipsel-linux-gnu",),
    (2, 2, False): ("sparc64-linux-gnu",),
}
#: ``$PLATFORM`` (the kernel's AT_PLATFORM, as ``uname -m`` names the machine) by e_machine
PLATFORMS: dict[int, tuple[str, ...]] = {62: ("x86_64", "haswell", "xeon_phi"), 3: ("i686", "i586", "i386"),
                                         183: ("aarch64",), 40: ("v7l", "v6l"), 243: ("riscv64",),
                                         21: ("ppc64le", "power8", "power9", "power10"), 22: ("s390x", "z900"),
                                         258: ("loongarch64",)}
#: PATH folders a ``/usr/bin/env NAME`` interpreter is looked up in (systemd's default PATH, then /sbin, /bin)
PATH_DIRS = ("usr/local/sbin", "usr/local/bin", "usr/sbin", "usr/bin", "sbin", "bin")
#: the kernel reads this much of a script for its ``#!`` line (``BINPRM_BUF_SIZE``, Linux >= 5.1)
SHEBANG_MAX = 256
_MAX_CONF = 1 << 20
_CONF_DEPTH = 16


@dataclass
class Need:
    """Why one tree path must stay: the tree path that needed it (``None`` for a seed) and the reason."""

    parent: str | None
    why: str


@dataclass
class _File:
    """What the closure read of one regular file (cached per resolved tree path)."""

    info: ElfInfo | None = None
    shebang: bytes | None = None  # the first line after '#!' of a script
    error: str | None = None


def default_dirs(elf_class: int, machine: int, little_endian: bool) -> tuple[str, ...]:
    """glibc's default library folders (tree paths) for this ELF class and machine, every
    distribution's form: Debian multiarch first, then ``lib64`` (64-bit) or ``lib32`` (32-bit),
    then ``lib`` and ``usr/lib``."""
    out: list[str] = []
    for triplet in TRIPLETS.get((elf_class, machine, little_endian), ()):
        out += [f"lib/{triplet}", f"usr/lib/{triplet}"]
    if (elf_class, machine) == (1, 62):
        out += ["libx32", "usr/libx32"]
    elif elf_class == 2:
        out += ["lib64", "usr/lib64"]
    else:
        out += ["lib32", "usr/lib32"]
    return (*out, "lib", "usr/lib")


def _lib_values(info: ElfInfo) -> tuple[str, ...]:
    """What ``$LIB`` may expand to for this object (Debian ``lib/<triplet>``, ``lib64``, ``lib``)."""
    vals = [f"lib/{t}" for t in TRIPLETS.get((info.elf_class, info.machine, info.little_endian), ())]
    vals.append("lib64" if info.elf_class == 2 else "lib32")
    return (*vals, "lib")


def _join(folder: str, name: str) -> str:
    folder = folder.strip("/")
    return f"{folder}/{name}" if folder else name


class Closure:
    """The closure of the seeds :meth:`add` was given, in the OS tree at ``root``.

    ``needs`` maps every tree path that must stay (resolved files and each symlink on the way)
    to its :class:`Need`; ``missing`` lists (soname or path, who needed it) found nowhere in the
    tree; ``unreadable`` lists (tree path, what is wrong) for malformed ELF files met on the way.
    """

    def __init__(self, root: bytes) -> None:
        self.root = os.fsencode(root)
        self.needs: dict[str, Need] = {}
        self.missing: list[tuple[str, str]] = []
        self.unreadable: list[tuple[str, str]] = []
        self._missing_seen: set[tuple[str, str]] = set()
        self._files: dict[str, _File] = {}
        self._dirs: dict[str, tuple[str, tuple[str, ...]] | None] = {}
        self._listings: dict[str, frozenset[str]] = {}
        self._found: dict[tuple[str, tuple[str, ...], int, int, bool], tuple[str, str, tuple[str, ...]] | None] = {}
        self._searches: dict[tuple[str, tuple[str, ...], str | None], tuple[tuple[str, ...], tuple[str, ...]]] = {}
        self._ran: set[str] = set()
        self._programs: deque[str] = deque()
        self.conf_dirs: tuple[str, ...] = tuple(self._read_conf("etc/ld.so.conf", set(), 0))

    # -- the tree ------------------------------------------------------------------------------

    def _resolve(self, path: str) -> tuple[str, list[str]] | None:
        """(resolved tree path, symlinks passed) of ``path`` inside the tree; None if it leads nowhere."""
        links: list[bytes] = []
        try:
            resolved = resolve_in_tree(self.root, os.fsencode(path), links=links)
        except OSError:
            return None
        return os.fsdecode(resolved), [os.fsdecode(link) for link in links]

    def _read_text(self, path: str) -> str | None:
        found = self._resolve(path)
        if found is None:
            return None
        try:
            fd = open_nofollow(self.root, os.fsencode(found[0]))
        except OSError:
            return None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return None
            return os.pread(fd, _MAX_CONF, 0).decode("utf-8", "replace")
        finally:
            os.close(fd)

    def _glob(self, pattern: str) -> list[str]:
        """Tree paths matching an ``include`` glob of ld.so.conf, resolved inside the tree, sorted
        (ldconfig uses glob(3), which sorts)."""
        bases = [""]
        for part in [p for p in pattern.split("/") if p]:
            if not any(c in part for c in "*?["):
                bases = [_join(b, part) for b in bases]
                continue
            nxt: list[str] = []
            for base in bases:
                found = self._resolve(base) if base else ("", [])
                if found is None:
                    continue
                try:
                    names = os.listdir(os.path.join(self.root, os.fsencode(found[0])) or b".")
                except OSError:
                    continue
                for name in sorted(os.fsdecode(n) for n in names):
                    if fnmatch.fnmatchcase(name, part) and (part.startswith(".") or not name.startswith(".")):
                        nxt.append(_join(base, name))
            bases = nxt
        return bases

    def _read_conf(self, path: str, seen: set[str], depth: int) -> list[str]:
        """The library folders of one ld.so.conf file, includes expanded in place (ldconfig's
        ``parse_conf``: ``#`` comments, ``include PATTERN...`` relative to the file's folder,
        ``hwcap`` lines ignored, a ``=TYPE`` suffix cut)."""
        if depth > _CONF_DEPTH or path in seen:
            return []
        seen.add(path)
        text = self._read_text(path)
        if text is None:
            return []
        out: list[str] = []
        for line in text.splitlines():
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            word, _, rest = line.partition(" ")
            if word == "include" or line.startswith("include\t"):
                for pattern in line[len("include"):].split():
                    if not pattern.startswith("/"):
                        pattern = _join(os.path.dirname(path), pattern)
                    for match in self._glob(pattern):
                        out += self._read_conf(match, seen, depth + 1)
            elif word == "hwcap" or line.startswith("hwcap\t"):
                continue
            else:
                folder = line.split("=", 1)[0].strip().strip("/")
                if folder and folder not in out:
                    out.append(folder)
        if depth == 0:
            return list(dict.fromkeys(out))
        return out

    def _file(self, resolved: str) -> _File:
        """The cached read of one resolved tree path (a regular file, else an empty record)."""
        got = self._files.get(resolved)
        if got is not None:
            return got
        got = _File()
        try:
            fd = open_nofollow(self.root, os.fsencode(resolved))
        except OSError as exc:
            got.error = f"cannot open: {exc.strerror}"
            self._files[resolved] = got
            return got
        try:
            if stat.S_ISREG(os.fstat(fd).st_mode):
                try:
                    got.info = read_elf(fd)
                except ElfError as exc:
                    got.error = str(exc)
                    self.unreadable.append((resolved, str(exc)))
                if got.info is None and got.error is None:
                    head = os.pread(fd, SHEBANG_MAX, 0)
                    if head.startswith(b"#!"):
                        got.shebang = head[2:].split(b"\n", 1)[0]
        except OSError as exc:
            got.error = f"cannot read: {exc.strerror}"
        finally:
            os.close(fd)
        self._files[resolved] = got
        return got

    def _dir(self, folder: str) -> tuple[str, tuple[str, ...]] | None:
        """(resolved folder, symlinks passed) of a search folder, cached; None if it is no folder."""
        if folder in self._dirs:
            return self._dirs[folder]
        found = self._resolve(folder)
        result = None
        if found is not None:
            try:
                if stat.S_ISDIR(os.lstat(os.path.join(self.root, os.fsencode(found[0]))).st_mode):
                    result = (found[0], tuple(found[1]))
            except OSError:
                pass
        self._dirs[folder] = result
        return result

    def _listing(self, resolved_dir: str) -> frozenset[str]:
        names = self._listings.get(resolved_dir)
        if names is None:
            try:
                names = frozenset(os.fsdecode(n) for n in os.listdir(os.path.join(self.root, os.fsencode(resolved_dir))))
            except OSError:
                names = frozenset()
            self._listings[resolved_dir] = names
        return names

    def _find(self, soname: str, dirs: tuple[str, ...], like: ElfInfo) -> tuple[str, str, tuple[str, ...]] | None:
        """(path as found, resolved path, symlinks passed) of the first library called ``soname``
        in ``dirs`` that matches ``like``'s class, byte order and machine; cached."""
        key = (soname, dirs, like.elf_class, like.machine, like.little_endian)
        if key in self._found:
            return self._found[key]
        result = None
        for folder in dirs:
            d = self._dir(folder)
            if d is None or soname not in self._listing(d[0]):
                continue
            found = self._resolve(_join(d[0], soname))
            if found is None:
                continue
            info = self._file(found[0]).info
            if info is None or (info.elf_class, info.machine, info.little_endian) != (
                    like.elf_class, like.machine, like.little_endian):
                continue
            result = (_join(folder, soname), found[0], (*d[1], *found[1]))
            break
        self._found[key] = result
        return result

    # -- the closure ---------------------------------------------------------------------------

    def _keep(self, resolved: str, links: list[str] | tuple[str, ...], need: Need) -> None:
        if resolved not in self.needs:
            self.needs[resolved] = need
        for link in links:
            if link not in self.needs:
                self.needs[link] = Need(resolved, f"symlink on the way to {resolved}")

    def _miss(self, what: str, who: str) -> None:
        if (what, who) not in self._missing_seen:
            self._missing_seen.add((what, who))
            self.missing.append((what, who))

    def _expand(self, entries: tuple[str, ...], origin: str, info: ElfInfo) -> list[str]:
        """RPATH/RUNPATH entries as tree folders (``$ORIGIN``, ``$LIB``, ``$PLATFORM`` expanded;
        entries relative to the run-time working directory dropped)."""
        out: list[str] = []
        for entry in entries:
            values = [entry.replace("${ORIGIN}", "/" + origin).replace("$ORIGIN", "/" + origin)]
            for token, choices in (("LIB", _lib_values(info)), ("PLATFORM", PLATFORMS.get(info.machine, ()))):
                if "$" + token in entry or "${" + token + "}" in entry:
                    values = [v.replace("${" + token + "}", c).replace("$" + token, c) for v in values for c in choices]
            for value in values:
                if value.startswith("/") and value.strip("/") not in out:
                    out.append(value.strip("/"))
        return out

    def add(self, path: str, why: str) -> None:
        """Keep the tree path ``path`` (a program, library, script or any file) and all it needs;
        ``why`` says why it is a seed. Its closure is complete when this returns."""
        rel = path.strip("/")
        found = self._resolve(rel)
        if found is None:
            self._miss(rel, why)
            return
        self._keep(found[0], found[1], Need(None, why))
        self._programs.append(found[0])
        while self._programs:
            self._run(self._programs.popleft())

    def _run(self, program: str) -> None:
        """One execution of ``program``: a script's interpreter, or an ELF program's interpreter
        and everything its loader maps, each soname once (glibc reuses a loaded object whose name
        or DT_SONAME matches, ``_dl_name_match_p``), then what its dlopen notes name."""
        if program in self._ran:
            return
        self._ran.add(program)
        f = self._file(program)
        info = f.info
        if info is None:
            if f.shebang is not None:
                self._script(program, f.shebang)
            return
        loaded: dict[str, str] = {}
        if info.interp:
            interp = self._follow_path(info.interp, program, f"PT_INTERP of {program}")
            if interp is not None:
                iinfo = self._file(interp).info
                if iinfo is not None and iinfo.soname:
                    loaded[iinfo.soname] = interp
        mapped = {program}
        queue: deque[tuple[str, tuple[str, ...], str]] = deque([(program, (), os.path.dirname(program))])
        later: list[tuple[DlopenNote, tuple[str, ...], ElfInfo, str, tuple[str, ...]]] = []
        while True:
            while queue:
                obj, inherited, origin = queue.popleft()
                oinfo = self._file(obj).info
                if oinfo is None:
                    continue
                dirs, child_inherited = self._search(obj, oinfo, inherited, origin)
                for soname in oinfo.needed:
                    self._map(soname, dirs, oinfo, obj, child_inherited, f"DT_NEEDED {soname} of {obj}",
                              loaded, mapped, queue, required=True)
                later += [(note, dirs, oinfo, obj, child_inherited) for note in oinfo.dlopen
                          if note.priority in ("required", "recommended")]
            if not later:
                break
            note, dirs, oinfo, obj, child_inherited = later.pop(0)
            hit = False
            for soname in note.sonames:
                hit = self._map(soname, dirs, oinfo, obj, child_inherited,
                                f".note.dlopen ({note.priority}) {soname} of {obj}", loaded, mapped, queue,
                                required=False)
                if hit:
                    break
            if not hit and note.priority == "required":
                self._miss(" | ".join(note.sonames), obj)

    def _search(self, obj: str, info: ElfInfo, inherited: tuple[str, ...],
                origin: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """(folders searched for ``obj``'s needs, the DT_RPATH chain its own needs inherit); cached."""
        uses_origin = any("ORIGIN" in e for e in (*info.rpath, *info.runpath))
        key = (obj, inherited, origin if uses_origin else None)
        got = self._searches.get(key)
        if got is None:
            own_rpath = () if info.runpath else tuple(self._expand(info.rpath, origin, info))
            defaults = () if info.nodeflib else default_dirs(info.elf_class, info.machine, info.little_endian)
            if info.runpath:
                first: tuple[str, ...] = tuple(self._expand(info.runpath, origin, info))
            else:
                first = (*own_rpath, *inherited)
            got = (tuple(dict.fromkeys((*first, *self.conf_dirs, *defaults))),
                   tuple(dict.fromkeys((*own_rpath, *inherited))))
            self._searches[key] = got
        return got

    def _follow_path(self, path: str, parent: str, why: str) -> str | None:
        found = self._resolve(path.lstrip("/"))
        if found is None:
            self._miss(path, parent)
            return None
        self._keep(found[0], found[1], Need(parent, why))
        return found[0]

    def _map(self, soname: str, dirs: tuple[str, ...], info: ElfInfo, needer: str, inherited: tuple[str, ...],
             why: str, loaded: dict[str, str], mapped: set[str],
             queue: deque[tuple[str, tuple[str, ...], str]], *, required: bool) -> bool:
        """Map ``soname`` for ``needer`` in one program's run: reuse a loaded one, else search
        ``dirs``; a path (a name with ``/``) is used as is. False when found nowhere (a required
        one is then reported missing)."""
        if soname in loaded:
            return True
        if "/" in soname:  # a relative path depends on the working directory: unknowable
            found = self._resolve(soname.lstrip("/")) if soname.startswith("/") else None
            hit = (soname.lstrip("/"), found[0], tuple(found[1])) if found else None
        else:
            hit = self._find(soname, dirs, info)
        if hit is None:
            if required:
                self._miss(soname, needer)
            return False
        as_found, real, links = hit
        self._keep(real, links, Need(needer, why))
        loaded[soname] = real
        rinfo = self._file(real).info
        if rinfo is not None and rinfo.soname:
            loaded.setdefault(rinfo.soname, real)
        if real not in mapped:
            mapped.add(real)
            queue.append((real, inherited, os.path.dirname(as_found)))
        return True

    def _script(self, resolved: str, line: bytes) -> None:
        """Keep a script's ``#!`` interpreter (and, for ``env NAME``, NAME found through PATH)."""
        text = line.decode("utf-8", "surrogateescape").strip(" \t\r")
        interp, _, arg = text.partition(" ")
        if "\t" in interp:
            interp, _, rest = interp.partition("\t")
            arg = rest + " " + arg
        if not interp:
            return
        if not interp.startswith("/"):
            self._miss(interp, resolved)
            return
        target = self._follow_path(interp, resolved, f"#! interpreter of {resolved}")
        if target is not None:
            self._programs.append(target)
        if target is None or os.path.basename(interp) != "env":
            return
        name = next((w for w in arg.split() if not w.startswith("-") and "=" not in w), None)
        if name is None:
            return
        why = f"#! {interp} {name} of {resolved}"
        if "/" in name:
            found = self._follow_path(name, resolved, why)
            if found is not None:
                self._programs.append(found)
            return
        for folder in PATH_DIRS:
            d = self._dir(folder)
            if d is not None and name in self._listing(d[0]) and self._resolve(_join(d[0], name)) is not None:
                found = self._follow_path(_join(folder, name), resolved, why)
                if found is not None:
                    self._programs.append(found)
                return
        self._miss(name, resolved)

    def chain(self, path: str) -> list[str]:
        """``path`` and who needed it, up to the seed: ``[libc.so.6, usr/bin/mount]``, for messages."""
        out = [path.strip("/")]
        seen = set(out)
        need = self.needs.get(out[0])
        while need is not None and need.parent is not None and need.parent not in seen:
            out.append(need.parent)
            seen.add(need.parent)
            need = self.needs.get(need.parent)
        return out
