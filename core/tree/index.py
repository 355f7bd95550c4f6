"""The OS tree index: one lstat per entry, compact columns, exact newc cpio sizes.

The scan walks the tree depth-first, one folder listing and one lstat per entry (natively in
core/tree/_listdir.c, with a pure-Python twin), and never follows a symlink. All entries
of one folder are appended together, and a folder's whole subtree is scanned before the walk
returns to its siblings, so the descendants of folder ``d`` are exactly the contiguous index
range ``[first_child[d], first_child[d] + count[d])``. Subtrees are therefore intervals, which
keeps marks, lookups and the workbench cheap on a million entries.

Per entry the index keeps a few typed array columns (about 70 bytes an entry with the name):
mode, apparent size, allocated bytes, the newc archive bytes of the entry itself, and the
recursive totals for folders, which grow live while a scan runs (each finished folder adds its
children's figures to itself and its ancestors).

newc sizes follow the cpio(5) "new ASCII" format as GNU cpio writes it: every entry takes
``align4(110 + len(name) + 1) + align4(data)``; data is the file size (counted once per
hardlinked inode), the link target for a symlink, nothing for folders and devices; the archive
ends with the 124-byte ``TRAILER!!!`` entry. Names are relative to the root, without ``./``.
"""

from __future__ import annotations

import os
import stat
from array import array
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from ..errors import UserError
from .sidecar import apply_to_index

HEADER = 110
TRAILER_BYTES = 124  # align4(110 + len("TRAILER!!!") + 1)


def cpio_entry_bytes(name_len: int, data_len: int) -> int:
    """Bytes one entry takes in a newc archive: header + NUL-terminated name + data, each 4-aligned."""
    return ((HEADER + name_len + 1 + 3) & ~3) + ((data_len + 3) & ~3)


@dataclass
class ScanProblem:
    path: bytes
    message: str

    def __str__(self) -> str:
        return f"{os.fsdecode(self.path)}: {self.message}"


@dataclass
class TreeIndex:
    """A scanned tree. Entry 0 is the root itself (name ``b""``, not part of any archive)."""

    root: bytes
    names: list[bytes] = field(default_factory=list)
    parent: array = field(default_factory=lambda: array("i"))
    mode: array = field(default_factory=lambda: array("I"))
    size: array = field(default_factory=lambda: array("q"))  # own apparent bytes (0 for a repeated hardlink)
    alloc: array = field(default_factory=lambda: array("q"))  # own allocated bytes (st_blocks * 512)
    cpio: array = field(default_factory=lambda: array("q"))  # own newc bytes
    first_child: array = field(default_factory=lambda: array("i"))  # -1 until the folder is scanned
    nchild: array = field(default_factory=lambda: array("i"))  # direct children
    tot_size: array = field(default_factory=lambda: array("q"))  # recursive, self included
    tot_alloc: array = field(default_factory=lambda: array("q"))
    tot_cpio: array = field(default_factory=lambda: array("q"))
    tot_count: array = field(default_factory=lambda: array("i"))  # descendants, self excluded
    #: (dev, ino) -> entries sharing one inode with st_nlink > 1; the first counts the data.
    hardlinks: dict[tuple[int, int], list[int]] = field(default_factory=dict)
    #: first name of each hardlinked inode's real size, for entries whose own size was zeroed
    link_size: dict[int, int] = field(default_factory=dict)
    #: (dev, ino) -> that inode's links (st_nlink) the scan has not met: more than 0 once the scan
    #: is done means names outside the tree (or in folders it could not read)
    links_unseen: dict[tuple[int, int], int] = field(default_factory=dict)
    #: hardlinked inodes with links_unseen above 0, kept as the scan goes (no pass over the dict)
    outside_inodes: int = 0
    special: list[int] = field(default_factory=list)  # devices, fifos, sockets
    problems: list[ScanProblem] = field(default_factory=list)
    complete: bool = False
    _child_maps: dict[int, dict[bytes, int]] = field(default_factory=dict, repr=False)

    # -- basic access -------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.names)

    def path(self, i: int) -> bytes:
        """Path relative to the root, bytes, no leading ``./`` (``b""`` for the root)."""
        parts = []
        while i > 0:
            parts.append(self.names[i])
            i = self.parent[i]
        return b"/".join(reversed(parts))

    def is_dir(self, i: int) -> bool:
        return stat.S_ISDIR(self.mode[i])

    def children(self, i: int) -> range:
        start = self.first_child[i]
        if start < 0:
            return range(0)
        return range(start, start + self.nchild[i])

    def subtree(self, i: int) -> range:
        """Indices of every descendant of ``i`` (not ``i`` itself); contiguous by construction."""
        start = self.first_child[i]
        if start < 0:
            return range(0)
        return range(start, start + self.tot_count[i])

    def ancestors(self, i: int) -> Iterator[int]:
        i = self.parent[i]
        while i >= 0:
            yield i
            i = self.parent[i]

    def depth(self, i: int) -> int:
        return sum(1 for _ in self.ancestors(i))

    def child(self, i: int, name: bytes) -> int | None:
        m = self._child_maps.get(i)
        if m is None:
            m = {self.names[c]: c for c in self.children(i)}
            if self.complete:
                self._child_maps[i] = m
        return m.get(name)

    def lookup(self, rel: bytes | str) -> int | None:
        """Index of the entry at ``rel`` (relative to the root), or None."""
        if isinstance(rel, str):
            rel = os.fsencode(rel)
        i = 0
        for part in rel.split(b"/"):
            if not part or part == b".":
                continue
            if not self.is_dir(i):
                return None
            found = self.child(i, part)
            if found is None:
                return None
            i = found
        return i

    def outside_link_example(self) -> tuple[int, int, int] | None:
        """(first entry, its names in the tree, its links in all) of one inode with hard links
        outside the tree, or None when there is none (a dict lookup: the scan keeps the count)."""
        if not self.outside_inodes:
            return None
        key = next(k for k, unseen in self.links_unseen.items() if unseen > 0)
        group = self.hardlinks[key]
        return group[0], len(group), len(group) + self.links_unseen[key]

    # -- totals ------------------------------------------------------------------------------
    def data_bytes(self, i: int) -> int:
        """cpio data bytes this entry stores if it is the one carrying its inode's data."""
        m = self.mode[i]
        if stat.S_ISREG(m) or stat.S_ISLNK(m):
            return self.link_size.get(i, self.size[i])
        return 0

    def counts(self) -> dict[str, int]:
        """Totals under the root, the root itself excluded (what ``sysextant scan`` prints)."""
        files = dirs = links = special = 0
        for m in self.mode[1:]:
            if stat.S_ISREG(m):
                files += 1
            elif stat.S_ISDIR(m):
                dirs += 1
            elif stat.S_ISLNK(m):
                links += 1
            else:
                special += 1
        return {
            "entries": len(self) - 1,
            "files": files,
            "dirs": dirs,
            "symlinks": links,
            "special": special,
            "hardlinked_inodes": len(self.hardlinks),
            "apparent_bytes": self.tot_size[0] - self.size[0],
            "allocated_bytes": self.tot_alloc[0] - self.alloc[0],
            "cpio_bytes": self.tot_cpio[0] + TRAILER_BYTES,
        }


STAT_FIELDS = 6  # per entry in a listing: st_mode, st_nlink, st_size, st_blocks, st_dev, st_ino


def _listdir_lstat_py(path: bytes) -> tuple[list[bytes], bytes, list[tuple[bytes, int]]]:
    """One folder's names, their packed lstat figures (``STAT_FIELDS`` int64 each) and the names
    whose lstat failed, with the errno. The folder is opened with ``O_NOFOLLOW`` and its entries
    are examined relative to it, never through a symlink. Pure-Python twin of the native
    ``_listdir.listdir_lstat`` (core/_listdir.c), used when that is not built."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        with os.scandir(fd) as it:
            entries = list(it)
        names: list[bytes] = []
        figures: list[int] = []
        failed: list[tuple[bytes, int]] = []
        for e in entries:
            name = os.fsencode(e.name)
            try:
                st = e.stat(follow_symlinks=False)
            except OSError as exc:
                failed.append((name, exc.errno or 5))
                continue
            names.append(name)
            figures += (st.st_mode, st.st_nlink, st.st_size, st.st_blocks, st.st_dev, st.st_ino)
        return names, array("q", figures).tobytes(), failed
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, path) from None
    finally:
        os.close(fd)


try:
    from ._listdir import listdir_lstat
except ImportError:  # not built (no C compiler at install time): same results, ~2x slower scans
    listdir_lstat = _listdir_lstat_py


def scan(root: str | os.PathLike[str] | bytes, *, progress: Callable[[TreeIndex], None] | None = None,
         every: int = 20000, check: Callable[[], None] | None = None) -> TreeIndex:
    """Index the tree at ``root``. ``progress(index)`` runs every ``every`` entries (the index is
    consistent for finished folders at that point); ``check()`` may raise to cancel."""
    broot = os.fsencode(root)
    try:
        st = os.lstat(broot)
    except OSError as exc:
        raise UserError(f"cannot read the OS tree {os.fsdecode(broot)}: {exc.strerror}") from None
    if stat.S_ISLNK(st.st_mode):
        # The root itself may be a link to the tree (rootfs -> /srv/images/x): it is resolved, and
        # it alone; the walk below opens every folder with O_NOFOLLOW, so no link inside the tree
        # is ever followed. The index names the real folder, as the spec's model does.
        real = os.path.realpath(broot)
        try:
            st = os.stat(real)
        except OSError as exc:
            raise UserError(f"cannot read the OS tree {os.fsdecode(broot)}, a symlink to {os.fsdecode(real)}: "
                            f"{exc.strerror}") from None
        if not stat.S_ISDIR(st.st_mode):
            raise UserError(f"the OS tree {os.fsdecode(broot)} is a symlink to {os.fsdecode(real)}, which is not a folder")
        broot = real
    if not stat.S_ISDIR(st.st_mode):
        raise UserError(f"the OS tree {os.fsdecode(broot)} is not a folder")
    broot = os.path.normpath(broot)
    idx = TreeIndex(root=broot)
    names = idx.names
    parent, mode, size, alloc, cpio = idx.parent, idx.mode, idx.size, idx.alloc, idx.cpio
    first_child, nchild = idx.first_child, idx.nchild
    tot_size, tot_alloc, tot_cpio, tot_count = idx.tot_size, idx.tot_alloc, idx.tot_cpio, idx.tot_count
    hardlinks, link_size, special, problems = idx.hardlinks, idx.link_size, idx.special, idx.problems
    links_unseen = idx.links_unseen
    outside = 0  # inodes with links not met yet

    names.append(b"")
    parent.append(-1)
    mode.append(st.st_mode)
    size.append(st.st_size)
    alloc.append(st.st_blocks * 512)
    cpio.append(0)
    first_child.append(-1)
    nchild.append(0)
    tot_size.append(st.st_size)
    tot_alloc.append(st.st_blocks * 512)
    tot_cpio.append(0)
    tot_count.append(0)

    S_IFMT, DIR, REG, LNK = 0o170000, stat.S_IFDIR, stat.S_IFREG, stat.S_IFLNK
    # (host path, index, bytes a child's archive name adds to its own name: "dir/" or nothing)
    stack: list[tuple[bytes, int, int]] = [(broot, 0, 0)]
    next_report = every
    while stack:
        path, d, prefix = stack.pop()
        try:
            l_name, packed, failed = listdir_lstat(path)
        except OSError as exc:
            problems.append(ScanProblem(path, f"folder not readable ({exc.strerror}); its contents are not counted"))
            continue
        for name, err in failed:
            problems.append(ScanProblem(os.path.join(path, name), f"not readable ({os.strerror(err)}); left out"))
        start = len(names)
        first_child[d] = start
        # Columns of the packed lstat figures; comprehensions keep the per-entry Python work small.
        cols = memoryview(packed).cast("q")
        l_mode = cols[0::STAT_FIELDS].tolist()
        l_size = cols[2::STAT_FIELDS].tolist()
        l_alloc = [b * 512 for b in cols[3::STAT_FIELDS].tolist()]
        head = HEADER + 4 + prefix  # align4(110 + len(archive name) + 1) = (head + len(name)) & ~3
        l_cpio = [((head + len(nm)) & ~3) + ((z + 3) & ~3) for nm, z in zip(l_name, l_size, strict=True)]
        subdirs: list[tuple[bytes, int, int]] = []
        nlinks = cols[1::STAT_FIELDS]
        for k in [k for k, m in enumerate(l_mode) if m & S_IFMT == REG and nlinks[k] > 1]:
            i = start + k
            key = (cols[k * STAT_FIELDS + 4], cols[k * STAT_FIELDS + 5])
            group = hardlinks.get(key)
            if group is None:
                hardlinks[key] = [i]
                links_unseen[key] = nlinks[k] - 1
                outside += 1
            else:  # a further name of an inode already counted: no data of its own
                group.append(i)
                unseen = links_unseen[key] - 1
                links_unseen[key] = unseen
                if unseen == 0:
                    outside -= 1
                link_size[i] = l_size[k]
                l_size[k] = l_alloc[k] = 0
                l_cpio[k] = (head + len(l_name[k])) & ~3
        for k in [k for k, m in enumerate(l_mode) if m & S_IFMT != REG]:
            kind = l_mode[k] & S_IFMT
            if kind == DIR:
                l_cpio[k] = (head + len(l_name[k])) & ~3
                subdirs.append((os.path.join(path, l_name[k]), start + k, prefix + len(l_name[k]) + 1))
            elif kind != LNK:  # devices, fifos, sockets: a header and nothing else
                l_size[k] = l_alloc[k] = 0
                l_cpio[k] = (head + len(l_name[k])) & ~3
                special.append(start + k)
        n = len(l_name)
        names.extend(l_name)
        parent.extend(array("i", (d,)) * n)
        mode.extend(array("I", l_mode))
        own_size = array("q", l_size)
        own_alloc = array("q", l_alloc)
        own_cpio = array("q", l_cpio)
        size.extend(own_size)
        alloc.extend(own_alloc)
        cpio.extend(own_cpio)
        tot_size.extend(own_size)
        tot_alloc.extend(own_alloc)
        tot_cpio.extend(own_cpio)
        minus_one = array("i", (-1,)) * n
        zero = array("i", (0,)) * n
        first_child.extend(minus_one)
        nchild.extend(zero)
        tot_count.extend(zero)
        s_size = sum(l_size)
        s_alloc = sum(l_alloc)
        s_cpio = sum(l_cpio)
        nchild[d] = n
        a = d
        while a >= 0:
            tot_size[a] += s_size
            tot_alloc[a] += s_alloc
            tot_cpio[a] += s_cpio
            tot_count[a] += n
            a = parent[a]
        subdirs.reverse()  # pop in name-listing order; keeps descendants contiguous either way
        stack.extend(subdirs)
        if len(names) >= next_report:
            idx.outside_inodes = outside
            next_report = len(names) + every
            if check is not None:
                check()
            if progress is not None:
                progress(idx)
    idx.outside_inodes = outside
    idx.complete = True
    apply_to_index(idx)  # a flattened container image: what this user could not put on disk
    if progress is not None:
        progress(idx)
    return idx
