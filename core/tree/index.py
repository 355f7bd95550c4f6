"""The OS tree index: one lstat per entry, compact columns, exact newc cpio sizes.

The scan walks the tree depth-first, one folder listing and one lstat per entry, and never
follows a symlink. All entries of one folder are appended together, and a folder's whole
subtree is scanned before the walk returns to its siblings, so the descendants of folder ``d``
are exactly the contiguous index range ``[first_child[d], first_child[d] + count[d])``. Subtrees
are therefore intervals, which keeps marks, lookups and the workbench cheap on a million entries.

The walk and the per-entry layout run natively (core/tree/_listdir.c: ``Walker`` lists whole
folders per step without the GIL and hands back the chunk's columns packed, ``settle`` adds a
chunk's folders to the totals); :class:`_Walker` and :func:`_settle_py` are the pure-Python twins
used when it is not built, and the tests check both give the same index.

Per entry the index keeps a few typed array columns: parent, mode, apparent size, allocated
bytes and the newc archive bytes of the entry itself (28 bytes), and the name. The folder
columns (first child, children, and the recursive totals, which grow live while a scan runs:
each listed folder adds its children's figures to itself and its ancestors) mean something for
folders only. Natively, names live in one ``Names`` buffer (the name's bytes and 4 more, where a
list of bytes objects takes about 56 a name) and the folder columns in ``Folders`` (36 bytes a
folder and a 4-byte slot an entry, where six arrays take 36 bytes an entry): about 60 bytes an
entry on the demo tree, 68 on ``/usr`` (bench/scan.py). The pure-Python twins keep a list and
six arrays; either way the columns read the same.

newc sizes follow the cpio(5) "new ASCII" format as GNU cpio writes it (docs/formats.md,
section 1): every entry takes ``align4(110 + len(name) + 1) + align4(data)``; data is the file
size (counted once per hardlinked inode), the link target for a symlink, nothing for folders and
devices; the archive ends with the 124-byte ``TRAILER!!!`` entry. Names are relative to the
root, without ``./``.
"""

from __future__ import annotations

import os
import stat
from array import array
from collections.abc import Callable, Iterator, MutableSequence, Sequence
from dataclasses import dataclass, field
from typing import Any

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
    #: the entries' names: a native ``Names`` (len, [i], iteration, ==, append), or a list
    names: MutableSequence[bytes] = field(default_factory=lambda: new_names())
    parent: array = field(default_factory=lambda: array("i"))
    mode: array = field(default_factory=lambda: array("I"))
    size: array = field(default_factory=lambda: array("q"))  # own apparent bytes (0 for a repeated hardlink)
    alloc: array = field(default_factory=lambda: array("q"))  # own allocated bytes (st_blocks * 512)
    cpio: array = field(default_factory=lambda: array("q"))  # own newc bytes
    #: where the folder columns below live: the native ``Folders`` keeps them for folders only
    #: (a file's are -1, 0, its own figures and 0), the pure-Python twin as six arrays
    layout: Any = field(default_factory=lambda: new_folders(), repr=False)
    # The folder columns, read-only sequences of ints (or arrays), one item an entry:
    first_child: Sequence[int] = field(init=False)  # -1 until the folder is scanned, and for a non-folder
    nchild: Sequence[int] = field(init=False)  # direct children
    tot_size: Sequence[int] = field(init=False)  # recursive, self included
    tot_alloc: Sequence[int] = field(init=False)
    tot_cpio: Sequence[int] = field(init=False)
    tot_count: Sequence[int] = field(init=False)  # descendants, self excluded
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

    def __post_init__(self) -> None:
        layout = self.layout
        self.first_child, self.nchild, self.tot_count = (layout.column("first_child"), layout.column("nchild"),
                                                         layout.column("tot_count"))
        self.tot_size = layout.column("tot_size", self.size)
        self.tot_alloc = layout.column("tot_alloc", self.alloc)
        self.tot_cpio = layout.column("tot_cpio", self.cpio)

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


class _Walker:
    """The scan's depth-first walk, one chunk of whole folders per :meth:`step`: the pure-Python
    twin of the native ``_listdir.Walker`` (core/tree/_listdir.c), used when that is not built.
    Entry 0, the root, is laid out by the caller; the walk numbers entries from 1."""

    def __init__(self, root: bytes, listing: Callable[[bytes], tuple] | None = None) -> None:
        # (host path, index, bytes a child's archive name adds to its own name: "dir/" or nothing)
        self._stack: list[tuple[bytes, int, int]] = [(root, 0, 0)]
        self._next = 1
        self._seen: set[tuple[int, int]] = set()  # (st_dev, st_ino) of hardlinked files met
        self._listing = listing or _listdir_lstat_py

    def step(self, limit: int, names: MutableSequence[bytes]) -> tuple | None:
        """List folders until at least ``limit`` entries are out (or the walk is done; None once
        it is), append their names to ``names`` and return their figures, in index order:
        ``(parent, mode, size, alloc, cpio, dirs, folders, links, special, problems)``: packed
        native int32 / uint32 / int64 / int64 / int64 columns of the entries (sizes already 0 for
        devices and for the further names of a hardlinked inode); ``dirs``, int32 indices of the
        entries that are folders, ascending; ``folders``, six int64 per
        listed folder (index, first child, children, and the sums of the children's size, alloc
        and cpio); ``links``, five int64 per regular file with more than one link (index, st_dev,
        st_ino, st_nlink, st_size); ``special``, int32 indices of devices, fifos and sockets;
        ``problems``, (0, folder, errno) for a folder that could not be read and (1, path, errno)
        for an entry that could not be examined."""
        if not self._stack:
            return None
        parent, mode, size, alloc, cpio = array("i"), array("I"), array("q"), array("q"), array("q")
        dirs, folders, links, special = array("i"), array("q"), array("q"), array("i")
        problems: list[tuple[int, bytes, int]] = []
        S_IFMT, DIR, REG, LNK = 0o170000, stat.S_IFDIR, stat.S_IFREG, stat.S_IFLNK
        seen = self._seen
        while self._stack and len(parent) < limit:
            path, d, prefix = self._stack.pop()
            try:
                l_name, packed, failed = self._listing(path)
            except OSError as exc:
                problems.append((0, path, exc.errno or 5))
                continue
            problems += [(1, os.path.join(path, name), err) for name, err in failed]
            start = self._next
            n = len(l_name)
            if start + n > 2**31 - 1:
                raise OverflowError(f"the tree has more than {2**31 - 2} entries")
            self._next = start + n
            cols = memoryview(packed).cast("q")
            l_mode = cols[0::STAT_FIELDS].tolist()
            l_size = cols[2::STAT_FIELDS].tolist()
            l_alloc = [b * 512 for b in cols[3::STAT_FIELDS].tolist()]
            head = HEADER + 4 + prefix  # align4(110 + len(archive name) + 1) = (head + len(name)) & ~3
            l_cpio = [((head + len(nm)) & ~3) + ((z + 3) & ~3) for nm, z in zip(l_name, l_size, strict=True)]
            subdirs: list[tuple[bytes, int, int]] = []
            for k, m in enumerate(l_mode):
                kind = m & S_IFMT
                if kind == REG:
                    nlink = cols[k * STAT_FIELDS + 1]
                    if nlink > 1:
                        key = (cols[k * STAT_FIELDS + 4], cols[k * STAT_FIELDS + 5])
                        links += array("q", (start + k, key[0], key[1], nlink, l_size[k]))
                        if key in seen:  # a further name of an inode already counted: no data of its own
                            l_size[k] = l_alloc[k] = 0
                            l_cpio[k] = (head + len(l_name[k])) & ~3
                        else:
                            seen.add(key)
                elif kind == DIR:
                    l_cpio[k] = (head + len(l_name[k])) & ~3
                    dirs.append(start + k)
                    subdirs.append((os.path.join(path, l_name[k]), start + k, prefix + len(l_name[k]) + 1))
                elif kind != LNK:  # devices, fifos, sockets: a header and nothing else
                    l_size[k] = l_alloc[k] = 0
                    l_cpio[k] = (head + len(l_name[k])) & ~3
                    special.append(start + k)
            for name in l_name:
                names.append(name)
            parent += array("i", (d,)) * n
            mode += array("I", l_mode)
            size += array("q", l_size)
            alloc += array("q", l_alloc)
            cpio += array("q", l_cpio)
            folders += array("q", (d, start, n, sum(l_size), sum(l_alloc), sum(l_cpio)))
            subdirs.reverse()  # pop in name-listing order; keeps descendants contiguous either way
            self._stack += subdirs
        return (parent.tobytes(), mode.tobytes(), size.tobytes(), alloc.tobytes(), cpio.tobytes(), dirs.tobytes(),
                folders.tobytes(), links.tobytes(), special.tobytes(), problems)


class _Folders:
    """The folder columns as six per-entry arrays: the pure-Python twin of ``_listdir.Folders``
    (which keeps them for folders only)."""

    def __init__(self) -> None:
        self.first_child, self.nchild, self.tot_count = array("i"), array("i"), array("i")
        self.tot_size, self.tot_alloc, self.tot_cpio = array("q"), array("q"), array("q")

    def __len__(self) -> int:
        return len(self.first_child)

    def add(self, count: int, dirs: bytes, size: bytes, alloc: bytes, cpio: bytes) -> None:
        """``count`` more entries, their own figures packed in ``size``, ``alloc``, ``cpio``."""
        self.first_child.extend(array("i", (-1,)) * count)
        zero = array("i", (0,)) * count
        self.nchild.extend(zero)
        self.tot_count.extend(zero)
        self.tot_size.frombytes(size)
        self.tot_alloc.frombytes(alloc)
        self.tot_cpio.frombytes(cpio)

    def column(self, name: str, own: array | None = None) -> array:
        return getattr(self, name)


def _settle_py(folders: bytes, parent: array, layout: _Folders) -> None:
    """Record a chunk's listed folders (``folders`` of :meth:`_Walker.step`) in the folder
    columns and add their children to their own and their ancestors' totals. Twin of
    ``_listdir.settle``."""
    first_child, nchild, tot_count = layout.first_child, layout.nchild, layout.tot_count
    tot_size, tot_alloc, tot_cpio = layout.tot_size, layout.tot_alloc, layout.tot_cpio
    rec = memoryview(folders).cast("q")
    for r in range(0, len(rec), 6):
        d, start, n, s_size, s_alloc, s_cpio = rec[r:r + 6].tolist()
        first_child[d] = start
        nchild[d] = n
        a = d
        while a >= 0:
            tot_size[a] += s_size
            tot_alloc[a] += s_alloc
            tot_cpio[a] += s_cpio
            tot_count[a] += n
            a = parent[a]


try:
    from ._listdir import Folders as new_folders
    from ._listdir import Names as new_names
    from ._listdir import Walker, listdir_lstat, settle
except ImportError:  # not built (no C compiler at install time): the same index, slower scans
    listdir_lstat = _listdir_lstat_py
    Walker = _Walker
    settle = _settle_py
    new_names = list
    new_folders = _Folders


#: entries a walker step lists at most (whole folders: a bigger folder comes in one step), so the
#: step's buffers stay small next to the index (a few hundred kB)
CHUNK = 4096


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
    parent, mode, size, alloc, cpio, layout = idx.parent, idx.mode, idx.size, idx.alloc, idx.cpio, idx.layout
    hardlinks, link_size, special, problems = idx.hardlinks, idx.link_size, idx.special, idx.problems
    links_unseen = idx.links_unseen
    outside = 0  # inodes with links not met yet

    names.append(b"")
    parent.append(-1)
    mode.append(st.st_mode)
    size.append(st.st_size)
    alloc.append(st.st_blocks * 512)
    cpio.append(0)
    layout.add(1, array("i", (0,)).tobytes(), size.tobytes(), alloc.tobytes(), cpio.tobytes())

    walker = Walker(broot)
    next_report = every
    while True:
        chunk = walker.step(min(max(next_report - len(names), 1), CHUNK), names)
        if chunk is None:
            break
        parents, modes, sizes, allocs, cpios, dirs, folders, links, specials, failures = chunk
        parent.frombytes(parents)
        mode.frombytes(modes)
        size.frombytes(sizes)
        alloc.frombytes(allocs)
        cpio.frombytes(cpios)
        layout.add(len(parents) // 4, dirs, sizes, allocs, cpios)
        settle(folders, parent, layout)
        if links:
            rec = memoryview(links).cast("q").tolist()
            for r in range(0, len(rec), 5):
                i, dev, ino, nlink, z = rec[r:r + 5]
                key = (dev, ino)
                group = hardlinks.get(key)
                if group is None:
                    hardlinks[key] = [i]
                    links_unseen[key] = nlink - 1
                    outside += 1
                else:  # a further name of an inode already counted: its size is the first's
                    group.append(i)
                    unseen = links_unseen[key] - 1
                    links_unseen[key] = unseen
                    if unseen == 0:
                        outside -= 1
                    link_size[i] = z
        if specials:
            special += memoryview(specials).cast("i").tolist()
        for kind, path, err in failures:
            if kind == 0:
                problems.append(ScanProblem(path, f"folder not readable ({os.strerror(err)}); "
                                                  "its contents are not counted"))
            else:
                problems.append(ScanProblem(path, f"not readable ({os.strerror(err)}); left out"))
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
