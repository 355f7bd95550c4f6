/* The native part: the scan's folder listings with lstat and the tree walk that lays out the
 * index's columns (sysextant.core.tree.index; the column layout and the newc sizes are
 * described there and in docs/formats.md), and four loops over those columns that Python is
 * slow at (the quick estimate's content kinds, per-kind columns and likely copies, the initrd's
 * plain files).
 *
 * listdir_lstat(path: bytes) -> (names: list[bytes], stats: bytes, failed: list[tuple[bytes, int]])
 *
 *   ``stats`` packs six native int64 per listed name, in ``names`` order: st_mode, st_nlink,
 *   st_size, st_blocks, st_dev, st_ino (read with ``memoryview(stats).cast("q")``). Entries
 *   whose lstat failed (vanished, or a folder that can be listed but not searched) are left out
 *   of both and come back in ``failed`` with their errno. Opening or reading the folder fails
 *   with OSError naming ``path``.
 *
 * Walker(root: bytes).step(limit, names) -> chunk | None
 *
 *   The depth-first walk of index.scan: each call lists whole folders until at least ``limit``
 *   entries are out (or the tree is done: then the next call returns None), appends their names
 *   to ``names`` (a Names) and returns their columns packed, ready for array.frombytes. The
 *   tuple is documented at index._Walker.step, the pure-Python twin the tests compare it to.
 *
 * Folders(): the index's folder columns (first_child, nchild, tot_size, tot_alloc, tot_cpio,
 *   tot_count) kept for folders only, a file's read as -1, 0, its own figures and 0; add() grows
 *   it by a chunk, column(name, own) is one column seen per entry (a FolderColumn).
 *
 * settle(folders, parent, layout)
 *
 *   Records a chunk's listed folders in the Folders ``layout`` and adds each folder's children
 *   to its own and its ancestors' totals.
 *
 * classify(names, parent, mode, size, suffixes) -> bytearray
 *
 *   Every entry's content kind for the quick estimate (sysextant.core.sizing.quick.entry_kinds,
 *   whose pure-Python twin the tests compare it to): 0 meta, 1 compressed, 2 firmware, 3 elf,
 *   4 text, 5 other, from the name's last suffix (``suffixes``: bytes -> kind), the mode and
 *   whether a folder named ``firmware`` holds it. No I/O.
 *
 * columns(kinds, values, intervals, nkinds) -> (entries, prefix)
 *
 *   Per kind k < nkinds, the entries of ``intervals`` (pairs (start, end), entry 0 left out)
 *   whose ``kinds`` byte is k, in order, packed as native int32 (``entries[k]``), and the prefix
 *   sums of their ``values`` (an array of typecode 'q'), 0 first, packed as native int64
 *   (``prefix[k]``): quick.kind_columns, whose pure-Python twin the tests compare it to.
 *
 * pack_files(dir_fd, prefix, names, entries, start, parent, mode, size, skip, ino, mtime, limit, at=0)
 *   -> (data, ends)
 *
 *   The newc bytes of plain files for the initrd writer (sysextant.core.formats.cpio, whose
 *   Python path writes the same bytes and handles everything else): from archive position
 *   ``start`` of ``entries`` (int32 entry numbers) on, while the entries are regular files of the
 *   same folder (``dir_fd``, whose path is ``prefix``, "" or ending in "/"), not marked in
 *   ``skip`` (a byte an entry: hardlinks), at most 1 MiB, still of their scanned ``size`` and
 *   readable, and ``data`` is shorter than ``limit``. Inode numbers count from ``ino``; uid, gid
 *   and device numbers are 0, nlink 1. ``ends`` packs each entry's end offset in ``data`` plus
 *   ``at`` (where ``data`` goes in the archive) as native int64; an entry it stops at (cannot
 *   open, changed) is left to the caller, which names the problem. Files are opened relative to
 *   ``dir_fd`` with O_NOFOLLOW, without the GIL.
 *
 * copies(order, names, size, cpio, kinds, window, least) -> bytes
 *
 *   The quick estimate's likely copies (sysextant.core.sizing.quick.copies, whose pure-Python
 *   twin the tests compare it to): walking ``order`` (int32 entries, archive order) with their
 *   archive offsets (sums of ``cpio``), each entry not of kind 0 with ``size`` >= ``least`` whose
 *   size and name match an entry at most ``window`` bytes before it (the last one with both).
 *   Packed (entry, earlier entry) pairs of native int32. No I/O.
 *
 * archive_order(names, folders) -> bytes
 *
 *   Every entry but the root (entry 0) in bytewise full-path order, the initrd's order
 *   (sysextant.core.formats.cpio.archive_order, whose pure-Python twin the tests compare it to),
 *   packed as native int32, without building a path: in a folder each child sorts by its name and
 *   each child folder's subtree by its name and "/". ``folders`` is the index's Folders. No I/O.
 *
 * Names: the index's names column, one blob and 4 bytes an entry for where each name ends
 *   (where a list of bytes takes about 56 a name): len, [i], iteration, ==, append.
 *
 * Every folder is opened with O_NOFOLLOW, its entries examined with fstatat(AT_SYMLINK_NOFOLLOW)
 * relative to it: no symlink is ever followed. The listing and the stat calls run without the
 * GIL (the workbench scans in a background thread); Python objects are made afterwards in one go.
 * Buffers come from PyMem_Raw* so tracemalloc (bench/scan.py) sees them.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define FIELDS 6
#define HEADER 110

typedef struct {
    char *names;      /* NUL-separated names */
    size_t names_len, names_cap;
    int64_t *stats;   /* FIELDS per kept entry */
    size_t kept, stats_cap;
    struct entry { size_t offset, len; int err; } *entries; /* name start and length; 0 or the lstat errno */
    size_t count, entries_cap;
} listing;

static void listing_free(listing *l) {
    PyMem_RawFree(l->names);
    PyMem_RawFree(l->stats);
    PyMem_RawFree(l->entries);
    memset(l, 0, sizeof *l);
}

/* Makes room for ``need`` items of ``item`` bytes; 0, or -1 when out of memory. */
static int grow(void **buf, size_t *cap, size_t need, size_t item) {
    if (need <= *cap)
        return 0;
    size_t cap2 = *cap ? *cap : 64;
    while (cap2 < need)
        cap2 *= 2;
    void *p = PyMem_RawRealloc(*buf, cap2 * item);
    if (p == NULL)
        return -1;
    *buf = p;
    *cap = cap2;
    return 0;
}

/* Fills ``l`` (emptied first, its buffers kept); returns 0, or the errno of opening or reading
 * the folder itself. */
static int read_folder(const char *path, listing *l) {
    l->names_len = l->kept = l->count = 0;
    int fd = open(path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0)
        return errno;
    DIR *dir = fdopendir(fd);
    if (dir == NULL) {
        int e = errno;
        close(fd);
        return e;
    }
    int err = 0;
    for (;;) {
        errno = 0;
        struct dirent *de = readdir(dir);
        if (de == NULL) {
            err = errno;
            break;
        }
        const char *n = de->d_name;
        if (n[0] == '.' && (n[1] == 0 || (n[1] == '.' && n[2] == 0)))
            continue;
        size_t len = strlen(n);
        if (grow((void **)&l->names, &l->names_cap, l->names_len + len + 1, 1) ||
            grow((void **)&l->entries, &l->entries_cap, l->count + 1, sizeof(struct entry))) {
            err = ENOMEM;
            break;
        }
        memcpy(l->names + l->names_len, n, len + 1);
        struct entry *ent = &l->entries[l->count++];
        ent->offset = l->names_len;
        ent->len = len;
        ent->err = 0;
        l->names_len += len + 1;

        struct stat st;
        if (fstatat(fd, n, &st, AT_SYMLINK_NOFOLLOW) != 0) {
            ent->err = errno ? errno : EIO;
            continue;
        }
        if (grow((void **)&l->stats, &l->stats_cap, (l->kept + 1) * FIELDS, sizeof(int64_t))) {
            err = ENOMEM;
            break;
        }
        int64_t *r = l->stats + l->kept * FIELDS;
        r[0] = (int64_t)st.st_mode;
        r[1] = (int64_t)st.st_nlink;
        r[2] = (int64_t)st.st_size;
        r[3] = (int64_t)st.st_blocks;
        r[4] = (int64_t)st.st_dev;
        r[5] = (int64_t)st.st_ino;
        l->kept++;
    }
    closedir(dir); /* closes fd */
    return err;
}

static int check_path(PyObject *arg, const char *who) {
    if (!PyBytes_Check(arg)) {
        PyErr_Format(PyExc_TypeError, "%s: path must be bytes", who);
        return -1;
    }
    if ((Py_ssize_t)strlen(PyBytes_AS_STRING(arg)) != PyBytes_GET_SIZE(arg)) {
        PyErr_Format(PyExc_ValueError, "%s: embedded NUL in path", who);
        return -1;
    }
    return 0;
}

static PyObject *listdir_lstat(PyObject *self, PyObject *arg) {
    (void)self;
    if (check_path(arg, "listdir_lstat"))
        return NULL;
    const char *path = PyBytes_AS_STRING(arg);
    listing l;
    memset(&l, 0, sizeof l);
    int err;
    Py_BEGIN_ALLOW_THREADS
    err = read_folder(path, &l);
    Py_END_ALLOW_THREADS
    if (err) {
        listing_free(&l);
        errno = err;
        return PyErr_SetFromErrnoWithFilenameObject(PyExc_OSError, arg);
    }
    PyObject *names = PyList_New((Py_ssize_t)l.kept);
    PyObject *failed = PyList_New(0);
    PyObject *stats = PyBytes_FromStringAndSize((const char *)l.stats,
                                                (Py_ssize_t)(l.kept * FIELDS * sizeof(int64_t)));
    if (names == NULL || failed == NULL || stats == NULL)
        goto error;
    Py_ssize_t k = 0;
    for (size_t i = 0; i < l.count; i++) {
        PyObject *name = PyBytes_FromString(l.names + l.entries[i].offset);
        if (name == NULL)
            goto error;
        if (l.entries[i].err == 0) {
            PyList_SET_ITEM(names, k++, name);
        } else {
            PyObject *item = Py_BuildValue("(Ni)", name, l.entries[i].err);
            if (item == NULL || PyList_Append(failed, item) != 0) {
                Py_XDECREF(item);
                goto error;
            }
            Py_DECREF(item);
        }
    }
    listing_free(&l);
    return Py_BuildValue("(NNN)", names, stats, failed);

error:
    listing_free(&l);
    Py_XDECREF(names);
    Py_XDECREF(failed);
    Py_XDECREF(stats);
    return NULL;
}

/* ---- Names ------------------------------------------------------------------------------ */

/* Names are kept one after another in ``blob``. Name ``i`` ends at ``base[i / BLOCK] + rel[i]``
 * and starts where name ``i - 1`` ends, or at ``base[i / BLOCK]`` for the first of a block: 4
 * bytes an entry, as any name but the block's first starts within 4 GiB of its block's base. */
#define BLOCK 1024

typedef struct {
    PyObject_HEAD
    char *blob;
    size_t blob_len, blob_cap;
    uint32_t *rel;
    Py_ssize_t n, cap;
    int64_t *base;    /* where each block starts in blob */
    Py_ssize_t bcap;
} NamesObject;

static PyTypeObject NamesType;

static size_t spare(size_t need, size_t floor) { return need + (need >> 3) + floor; } /* arrays grow so */

/* Room for ``more`` names of ``bytes`` bytes in all. */
static int names_reserve(NamesObject *o, Py_ssize_t more, size_t bytes) {
    if (o->blob_len + bytes > o->blob_cap) {
        size_t cap = spare(o->blob_len + bytes, 256);
        char *p = PyMem_RawRealloc(o->blob, cap);
        if (p == NULL)
            goto nomem;
        o->blob = p;
        o->blob_cap = cap;
    }
    if (o->n + more > o->cap) {
        size_t cap = spare((size_t)(o->n + more), 32);
        uint32_t *p = PyMem_RawRealloc(o->rel, cap * sizeof(uint32_t));
        if (p == NULL)
            goto nomem;
        o->rel = p;
        o->cap = (Py_ssize_t)cap;
    }
    Py_ssize_t blocks = (o->n + more + BLOCK - 1) / BLOCK;
    if (blocks > o->bcap) {
        size_t cap = spare((size_t)blocks, 4);
        int64_t *p = PyMem_RawRealloc(o->base, cap * sizeof(int64_t));
        if (p == NULL)
            goto nomem;
        o->base = p;
        o->bcap = (Py_ssize_t)cap;
    }
    return 0;
nomem:
    PyErr_NoMemory();
    return -1;
}

/* Appends a name there is room for; -1 (ValueError) for a name of 4 GiB or more. */
static int names_put(NamesObject *o, const char *s, size_t len) {
    Py_ssize_t i = o->n;
    if (i % BLOCK == 0)
        o->base[i / BLOCK] = (int64_t)o->blob_len;
    uint64_t end = o->blob_len + len - (uint64_t)o->base[i / BLOCK];
    if (end > UINT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "Names: a name of 4 GiB or more");
        return -1;
    }
    memcpy(o->blob + o->blob_len, s, len);
    o->blob_len += len;
    o->rel[i] = (uint32_t)end;
    o->n++;
    return 0;
}

static int names_push(NamesObject *o, const char *s, size_t len) {
    if (names_reserve(o, 1, len))
        return -1;
    return names_put(o, s, len);
}

static PyObject *names_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    PyObject *items = NULL;
    static char *kwlist[] = {"items", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|O:Names", kwlist, &items))
        return NULL;
    NamesObject *o = (NamesObject *)type->tp_alloc(type, 0);
    if (o == NULL)
        return NULL;
    if (items != NULL) {
        PyObject *it = PyObject_GetIter(items);
        if (it == NULL)
            goto error;
        PyObject *x;
        while ((x = PyIter_Next(it)) != NULL) {
            int bad = !PyBytes_Check(x);
            if (bad)
                PyErr_SetString(PyExc_TypeError, "Names holds bytes");
            else
                bad = names_push(o, PyBytes_AS_STRING(x), (size_t)PyBytes_GET_SIZE(x));
            Py_DECREF(x);
            if (bad) {
                Py_DECREF(it);
                goto error;
            }
        }
        Py_DECREF(it);
        if (PyErr_Occurred())
            goto error;
    }
    return (PyObject *)o;
error:
    Py_DECREF(o);
    return NULL;
}

static void names_dealloc(NamesObject *o) {
    PyMem_RawFree(o->blob);
    PyMem_RawFree(o->rel);
    PyMem_RawFree(o->base);
    Py_TYPE(o)->tp_free((PyObject *)o);
}

static Py_ssize_t names_len(NamesObject *o) { return o->n; }

static void names_span(const NamesObject *o, Py_ssize_t i, const char **s, Py_ssize_t *len) {
    int64_t base = o->base[i / BLOCK];
    uint32_t start = i % BLOCK ? o->rel[i - 1] : 0;
    *s = o->blob + base + start;
    *len = (Py_ssize_t)(o->rel[i] - start);
}

static PyObject *names_at(NamesObject *o, Py_ssize_t i) {
    const char *s;
    Py_ssize_t len;
    names_span(o, i, &s, &len);
    return PyBytes_FromStringAndSize(s, len);
}

static PyObject *names_item(NamesObject *o, Py_ssize_t i) {
    if (i < 0 || i >= o->n) {
        PyErr_SetString(PyExc_IndexError, "Names index out of range");
        return NULL;
    }
    return names_at(o, i);
}

static PyObject *names_subscript(NamesObject *o, PyObject *key) {
    if (PyIndex_Check(key)) {
        Py_ssize_t i = PyNumber_AsSsize_t(key, PyExc_IndexError);
        if (i == -1 && PyErr_Occurred())
            return NULL;
        if (i < 0)
            i += o->n;
        return names_item(o, i);
    }
    if (PySlice_Check(key)) {
        Py_ssize_t start, stop, step;
        if (PySlice_Unpack(key, &start, &stop, &step) < 0)
            return NULL;
        Py_ssize_t len = PySlice_AdjustIndices(o->n, &start, &stop, step);
        PyObject *out = PyList_New(len);
        if (out == NULL)
            return NULL;
        for (Py_ssize_t k = 0, i = start; k < len; k++, i += step) {
            PyObject *x = names_at(o, i);
            if (x == NULL) {
                Py_DECREF(out);
                return NULL;
            }
            PyList_SET_ITEM(out, k, x);
        }
        return out;
    }
    PyErr_Format(PyExc_TypeError, "Names indices must be integers or slices, not %.200s", Py_TYPE(key)->tp_name);
    return NULL;
}

/* Equal to another Names or to a list or tuple of the same bytes, in order. */
static PyObject *names_richcompare(NamesObject *o, PyObject *other, int op) {
    if (op != Py_EQ && op != Py_NE)
        Py_RETURN_NOTIMPLEMENTED;
    int same;
    if (PyObject_TypeCheck(other, &NamesType)) {
        NamesObject *b = (NamesObject *)other;
        same = o->n == b->n && o->blob_len == b->blob_len &&
               (o->n == 0 || (memcmp(o->rel, b->rel, (size_t)o->n * sizeof(uint32_t)) == 0 &&
                              memcmp(o->base, b->base, (size_t)((o->n + BLOCK - 1) / BLOCK) * sizeof(int64_t)) == 0 &&
                              memcmp(o->blob, b->blob, o->blob_len) == 0));
    } else if (PyList_Check(other) || PyTuple_Check(other)) {
        PyObject *seq = PySequence_Fast(other, "");
        if (seq == NULL)
            return NULL;
        Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
        same = n == o->n;
        for (Py_ssize_t i = 0; same && i < n; i++) {
            PyObject *x = PySequence_Fast_GET_ITEM(seq, i);
            const char *s;
            Py_ssize_t len;
            names_span(o, i, &s, &len);
            same = PyBytes_Check(x) && PyBytes_GET_SIZE(x) == len && memcmp(PyBytes_AS_STRING(x), s, (size_t)len) == 0;
        }
        Py_DECREF(seq);
    } else {
        Py_RETURN_NOTIMPLEMENTED;
    }
    if (op == Py_NE)
        same = !same;
    return PyBool_FromLong(same);
}

static PyObject *names_append(NamesObject *o, PyObject *x) {
    if (!PyBytes_Check(x)) {
        PyErr_SetString(PyExc_TypeError, "Names holds bytes");
        return NULL;
    }
    if (names_push(o, PyBytes_AS_STRING(x), (size_t)PyBytes_GET_SIZE(x)))
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *names_sizeof(NamesObject *o, PyObject *unused) {
    (void)unused;
    return PyLong_FromSize_t(sizeof(NamesObject) + o->blob_cap + (size_t)o->cap * sizeof(uint32_t) +
                             (size_t)o->bcap * sizeof(int64_t));
}

static PyObject *names_repr(NamesObject *o) {
    return PyUnicode_FromFormat("<Names: %zd names, %zu bytes>", o->n, o->blob_len);
}

static PyMethodDef names_methods[] = {
    {"append", (PyCFunction)names_append, METH_O, "append(name: bytes): one more name at the end."},
    {"__sizeof__", (PyCFunction)names_sizeof, METH_NOARGS, "Bytes held, the buffers' spare room included."},
    {NULL, NULL, 0, NULL},
};

static PySequenceMethods names_as_sequence = {
    .sq_length = (lenfunc)names_len,
    .sq_item = (ssizeargfunc)names_item,
};

static PyMappingMethods names_as_mapping = {
    .mp_length = (lenfunc)names_len,
    .mp_subscript = (binaryfunc)names_subscript,
};

static PyTypeObject NamesType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "sysextant.core.tree._listdir.Names",
    .tp_doc = "Names(items=()): the index's names, bytes each, in one buffer (4 bytes an entry and the name).",
    .tp_basicsize = sizeof(NamesObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_SEQUENCE,
    .tp_new = names_new,
    .tp_dealloc = (destructor)names_dealloc,
    .tp_repr = (reprfunc)names_repr,
    .tp_as_sequence = &names_as_sequence,
    .tp_as_mapping = &names_as_mapping,
    .tp_richcompare = (richcmpfunc)names_richcompare,
    .tp_hash = PyObject_HashNotImplemented,
    .tp_methods = names_methods,
};

/* ---- the walk ---------------------------------------------------------------------------- */

typedef struct { char *path; int32_t index, prefix; } pending;

/* A growable buffer of fixed-size items. */
typedef struct { void *p; size_t n, cap; } vec;

static int vec_push(vec *v, const void *item, size_t size) {
    if (grow(&v->p, &v->cap, v->n + 1, size))
        return -1;
    memcpy((char *)v->p + v->n * size, item, size);
    v->n++;
    return 0;
}

/* The (dev, ino) of hardlinked files met so far: open addressing, linear probing. */
typedef struct { int64_t dev, ino; } inode;
typedef struct { inode *slots; unsigned char *used; size_t cap, count; } inode_set;

static size_t inode_hash(int64_t dev, int64_t ino, size_t mask) {
    uint64_t h = (uint64_t)ino * 0x9E3779B97F4A7C15ull ^ (uint64_t)dev * 0xC2B2AE3D27D4EB4Full;
    return (size_t)(h ^ (h >> 29)) & mask;
}

/* 1 if (dev, ino) was there already, 0 if added now, -1 when out of memory. */
static int inode_add(inode_set *s, int64_t dev, int64_t ino) {
    if ((s->count + 1) * 2 > s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 1024;
        inode *slots = PyMem_RawMalloc(cap * sizeof(inode));
        unsigned char *used = PyMem_RawCalloc(cap, 1);
        if (slots == NULL || used == NULL) {
            PyMem_RawFree(slots);
            PyMem_RawFree(used);
            return -1;
        }
        for (size_t k = 0; k < s->cap; k++) {
            if (!s->used[k])
                continue;
            size_t j = inode_hash(s->slots[k].dev, s->slots[k].ino, cap - 1);
            while (used[j])
                j = (j + 1) & (cap - 1);
            used[j] = 1;
            slots[j] = s->slots[k];
        }
        PyMem_RawFree(s->slots);
        PyMem_RawFree(s->used);
        s->slots = slots;
        s->used = used;
        s->cap = cap;
    }
    size_t j = inode_hash(dev, ino, s->cap - 1);
    while (s->used[j]) {
        if (s->slots[j].dev == dev && s->slots[j].ino == ino)
            return 1;
        j = (j + 1) & (s->cap - 1);
    }
    s->used[j] = 1;
    s->slots[j].dev = dev;
    s->slots[j].ino = ino;
    s->count++;
    return 0;
}

typedef struct { int kind, err; size_t offset, len; } problem; /* kind 0: a folder, 1: an entry */
typedef struct { size_t k; int32_t index; } subdir; /* position in the listing, index */

typedef struct {
    PyObject_HEAD
    vec stack;          /* pending folders, popped from the end */
    int64_t next;       /* index of the next entry */
    int busy;           /* a step is running (two threads must not share a walker) */
    listing l;
    inode_set seen;
    /* one chunk */
    vec blob;           /* char: the chunk's names */
    vec ends;           /* int64: where each name ends in blob */
    vec parent;         /* int32 */
    vec mode;           /* uint32 */
    vec size, alloc, cpio;  /* int64 */
    vec dirs;           /* int32: the entries that are folders */
    vec folders;        /* int64 x 6: folder, first child, children, their size, alloc, cpio */
    vec links;          /* int64 x 5: entry, st_dev, st_ino, st_nlink, st_size of hardlinked files */
    vec special;        /* int32 */
    vec problems;       /* problem */
    vec ptext;          /* char: the problems' paths */
    vec subdirs;        /* subdir: one folder's subfolders */
} WalkerObject;

static void walker_clear_stack(WalkerObject *w) {
    pending *p = w->stack.p;
    for (size_t k = 0; k < w->stack.n; k++)
        PyMem_RawFree(p[k].path);
    w->stack.n = 0;
}

static void walker_dealloc(WalkerObject *w) {
    walker_clear_stack(w);
    vec *vs[] = {&w->stack, &w->blob, &w->ends, &w->parent, &w->mode, &w->size, &w->alloc, &w->cpio,
                 &w->dirs, &w->folders, &w->links, &w->special, &w->problems, &w->ptext, &w->subdirs};
    for (size_t k = 0; k < sizeof vs / sizeof vs[0]; k++)
        PyMem_RawFree(vs[k]->p);
    listing_free(&w->l);
    PyMem_RawFree(w->seen.slots);
    PyMem_RawFree(w->seen.used);
    Py_TYPE(w)->tp_free((PyObject *)w);
}

/* os.path.join(path, name) for a name without '/': a copy from PyMem_RawMalloc, or NULL. */
static char *join(const char *path, size_t plen, const char *name, size_t nlen, size_t *out_len) {
    int sep = plen == 0 || path[plen - 1] != '/';
    char *s = PyMem_RawMalloc(plen + sep + nlen + 1);
    if (s == NULL)
        return NULL;
    memcpy(s, path, plen);
    if (sep)
        s[plen] = '/';
    memcpy(s + plen + sep, name, nlen);
    s[plen + sep + nlen] = 0;
    *out_len = plen + sep + nlen;
    return s;
}

static int add_problem(WalkerObject *w, int kind, int err, const char *path, size_t plen, const char *name,
                       size_t nlen) {
    size_t len = plen;
    char *joined = NULL;
    if (name != NULL) {
        joined = join(path, plen, name, nlen, &len);
        if (joined == NULL)
            return -1;
        path = joined;
    }
    problem pr = {kind, err, w->ptext.n, len};
    int bad = grow(&w->ptext.p, &w->ptext.cap, w->ptext.n + len, 1);
    if (!bad) {
        memcpy((char *)w->ptext.p + w->ptext.n, path, len);
        w->ptext.n += len;
        bad = vec_push(&w->problems, &pr, sizeof pr);
    }
    PyMem_RawFree(joined);
    return bad;
}

/* Lists one folder into the chunk and pushes its subfolders; 0, or -1 when out of memory, -2
 * past the int32 index. Runs without the GIL. */
static int walk_folder(WalkerObject *w, pending *f) {
    listing *l = &w->l;
    size_t plen = strlen(f->path);
    int err = read_folder(f->path, l);
    if (err == ENOMEM)
        return -1;
    if (err)
        return add_problem(w, 0, err, f->path, plen, NULL, 0);
    if (w->next + (int64_t)l->count > INT32_MAX)
        return -2;
    size_t n = l->count;
    if (grow(&w->parent.p, &w->parent.cap, w->parent.n + n, sizeof(int32_t)) ||
        grow(&w->mode.p, &w->mode.cap, w->mode.n + n, sizeof(uint32_t)) ||
        grow(&w->size.p, &w->size.cap, w->size.n + n, sizeof(int64_t)) ||
        grow(&w->alloc.p, &w->alloc.cap, w->alloc.n + n, sizeof(int64_t)) ||
        grow(&w->cpio.p, &w->cpio.cap, w->cpio.n + n, sizeof(int64_t)) ||
        grow(&w->ends.p, &w->ends.cap, w->ends.n + n, sizeof(int64_t)) ||
        grow(&w->blob.p, &w->blob.cap, w->blob.n + l->names_len, 1))
        return -1;
    int32_t *parent = w->parent.p;
    uint32_t *mode = w->mode.p;
    int64_t *size = w->size.p, *alloc = w->alloc.p, *cpio = w->cpio.p, *ends = w->ends.p;
    char *blob = w->blob.p;
    int64_t start = w->next, s_size = 0, s_alloc = 0, s_cpio = 0;
    int64_t head = HEADER + 4 + f->prefix; /* align4(110 + len(archive name) + 1) = (head + len) & ~3 */
    w->subdirs.n = 0;
    const int64_t *r = l->stats;
    for (size_t k = 0; k < n; k++) {
        const struct entry *e = &l->entries[k];
        const char *name = l->names + e->offset;
        if (e->err) {
            if (add_problem(w, 1, e->err, f->path, plen, name, e->len))
                return -1;
            continue;
        }
        int64_t m = r[0], nlink = r[1], z = r[2], a = r[3] * 512, dev = r[4], ino = r[5];
        r += FIELDS;
        int64_t i = w->next++;
        int64_t hdr = (head + (int64_t)e->len) & ~(int64_t)3;
        int64_t c = hdr;
        switch (m & S_IFMT) {
        case S_IFREG:
            if (nlink > 1) {
                int64_t rec[5] = {i, dev, ino, nlink, z};
                int seen = inode_add(&w->seen, dev, ino);
                if (seen < 0 || vec_push(&w->links, rec, sizeof rec))
                    return -1;
                if (seen) { /* a further name of an inode already counted: no data of its own */
                    z = a = 0;
                    break;
                }
            }
            c = hdr + ((z + 3) & ~(int64_t)3);
            break;
        case S_IFLNK:
            c = hdr + ((z + 3) & ~(int64_t)3);
            break;
        case S_IFDIR: {
            subdir sd = {k, (int32_t)i};
            if (vec_push(&w->subdirs, &sd, sizeof sd) || vec_push(&w->dirs, &sd.index, sizeof sd.index))
                return -1;
            break;
        }
        default: { /* devices, fifos, sockets: a header and nothing else */
            int32_t si = (int32_t)i;
            z = a = 0;
            if (vec_push(&w->special, &si, sizeof si))
                return -1;
        }
        }
        size_t j = w->parent.n++;
        w->mode.n++, w->size.n++, w->alloc.n++, w->cpio.n++, w->ends.n++;
        parent[j] = f->index;
        mode[j] = (uint32_t)m;
        size[j] = z;
        alloc[j] = a;
        cpio[j] = c;
        memcpy(blob + w->blob.n, name, e->len);
        w->blob.n += e->len;
        ends[j] = (int64_t)w->blob.n;
        s_size += z;
        s_alloc += a;
        s_cpio += c;
    }
    int64_t rec[6] = {f->index, start, w->next - start, s_size, s_alloc, s_cpio};
    if (vec_push(&w->folders, rec, sizeof rec))
        return -1;
    /* subfolders pushed last first, so they are walked in listing order */
    const subdir *sub = w->subdirs.p;
    for (size_t s = w->subdirs.n; s-- > 0;) {
        const struct entry *e = &l->entries[sub[s].k];
        pending p;
        size_t len;
        p.path = join(f->path, plen, l->names + e->offset, e->len, &len);
        if (p.path == NULL)
            return -1;
        p.index = sub[s].index;
        p.prefix = f->prefix + (int32_t)e->len + 1;
        if (vec_push(&w->stack, &p, sizeof p)) {
            PyMem_RawFree(p.path);
            return -1;
        }
    }
    return 0;
}

static int walker_init(WalkerObject *w, PyObject *args, PyObject *kwds) {
    PyObject *root;
    static char *kwlist[] = {"root", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O:Walker", kwlist, &root) || check_path(root, "Walker"))
        return -1;
    if (w->busy) {
        PyErr_SetString(PyExc_RuntimeError, "Walker: a step is running");
        return -1;
    }
    walker_clear_stack(w);
    PyMem_RawFree(w->seen.slots);
    PyMem_RawFree(w->seen.used);
    memset(&w->seen, 0, sizeof w->seen);
    Py_ssize_t len = PyBytes_GET_SIZE(root);
    pending p = {PyMem_RawMalloc((size_t)len + 1), 0, 0};
    if (p.path == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    memcpy(p.path, PyBytes_AS_STRING(root), (size_t)len + 1);
    if (vec_push(&w->stack, &p, sizeof p)) {
        PyMem_RawFree(p.path);
        PyErr_NoMemory();
        return -1;
    }
    w->next = 1; /* entry 0 is the root, laid out by the caller */
    return 0;
}

static PyObject *vec_bytes(const vec *v, size_t size) {
    return PyBytes_FromStringAndSize(v->p, (Py_ssize_t)(v->n * size));
}

static PyObject *walker_step(WalkerObject *w, PyObject *args) {
    Py_ssize_t limit;
    PyObject *names_obj;
    if (!PyArg_ParseTuple(args, "nO!:step", &limit, &NamesType, &names_obj))
        return NULL;
    if (w->busy) {
        PyErr_SetString(PyExc_RuntimeError, "Walker: a step is running");
        return NULL;
    }
    if (w->stack.n == 0)
        Py_RETURN_NONE;
    vec *chunk[] = {&w->blob, &w->ends, &w->parent, &w->mode, &w->size, &w->alloc, &w->cpio,
                    &w->dirs, &w->folders, &w->links, &w->special, &w->problems, &w->ptext};
    for (size_t k = 0; k < sizeof chunk / sizeof chunk[0]; k++)
        chunk[k]->n = 0;
    int failed = 0;
    w->busy = 1;
    Py_BEGIN_ALLOW_THREADS
    while (w->stack.n > 0 && (Py_ssize_t)w->parent.n < limit) {
        pending f = ((pending *)w->stack.p)[--w->stack.n];
        failed = walk_folder(w, &f);
        PyMem_RawFree(f.path);
        if (failed)
            break;
    }
    Py_END_ALLOW_THREADS
    w->busy = 0;
    if (failed) {
        walker_clear_stack(w); /* the walk cannot go on consistently */
        if (failed == -2)
            return PyErr_Format(PyExc_OverflowError, "the tree has more than %d entries", INT32_MAX - 1);
        return PyErr_NoMemory();
    }
    NamesObject *names = (NamesObject *)names_obj;
    size_t n = w->parent.n;
    if (names_reserve(names, (Py_ssize_t)n, w->blob.n))
        return NULL;
    const int64_t *ends = w->ends.p;
    for (size_t k = 0, start = 0; k < n; start = (size_t)ends[k], k++)
        if (names_put(names, (const char *)w->blob.p + start, (size_t)ends[k] - start))
            return NULL;

    PyObject *problems = PyList_New((Py_ssize_t)w->problems.n);
    if (problems == NULL)
        return NULL;
    const problem *pr = w->problems.p;
    for (size_t k = 0; k < w->problems.n; k++) {
        PyObject *item = Py_BuildValue("(iy#i)", pr[k].kind, (char *)w->ptext.p + pr[k].offset,
                                       (Py_ssize_t)pr[k].len, pr[k].err);
        if (item == NULL) {
            Py_DECREF(problems);
            return NULL;
        }
        PyList_SET_ITEM(problems, (Py_ssize_t)k, item);
    }
    return Py_BuildValue("(NNNNNNNNNN)", vec_bytes(&w->parent, sizeof(int32_t)), vec_bytes(&w->mode, sizeof(uint32_t)),
                         vec_bytes(&w->size, sizeof(int64_t)), vec_bytes(&w->alloc, sizeof(int64_t)),
                         vec_bytes(&w->cpio, sizeof(int64_t)), vec_bytes(&w->dirs, sizeof(int32_t)),
                         vec_bytes(&w->folders, 6 * sizeof(int64_t)),
                         vec_bytes(&w->links, 5 * sizeof(int64_t)), vec_bytes(&w->special, sizeof(int32_t)),
                         problems);
}

static PyMethodDef walker_methods[] = {
    {"step", (PyCFunction)walker_step, METH_VARARGS,
     "step(limit, names) -> (parent, mode, size, alloc, cpio, dirs, folders, links, special, problems) | None"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject WalkerType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "sysextant.core.tree._listdir.Walker",
    .tp_doc = "Walker(root: bytes): the scan's depth-first walk, a chunk of whole folders per step().",
    .tp_basicsize = sizeof(WalkerObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)walker_init,
    .tp_dealloc = (destructor)walker_dealloc,
    .tp_methods = walker_methods,
};

/* ---- the folder columns ----------------------------------------------------------------- */

/* first_child, nchild, tot_size, tot_alloc, tot_cpio and tot_count mean something for folders
 * only: a file's are -1, 0, its own size, alloc and cpio, and 0. Folders keeps them for the
 * folders (36 bytes each) and one int32 per entry, the entry's folder slot or -1, where six
 * arrays take 36 bytes an entry. FolderColumn is one of them seen as a per-entry sequence. */

enum { FIRST_CHILD, NCHILD, TOT_SIZE, TOT_ALLOC, TOT_CPIO, TOT_COUNT, NCOLUMNS };
static const char *column_names[NCOLUMNS] = {"first_child", "nchild", "tot_size", "tot_alloc", "tot_cpio", "tot_count"};

typedef struct {
    PyObject_HEAD
    int32_t *slot;                 /* per entry */
    Py_ssize_t n, cap;
    int32_t *first_child, *nchild, *tot_count;   /* per folder */
    int64_t *tot_size, *tot_alloc, *tot_cpio;
    Py_ssize_t nf, fcap;
} FoldersObject;

static PyTypeObject FoldersType;

static void folders_dealloc(FoldersObject *o) {
    PyMem_RawFree(o->slot);
    PyMem_RawFree(o->first_child);
    PyMem_RawFree(o->nchild);
    PyMem_RawFree(o->tot_count);
    PyMem_RawFree(o->tot_size);
    PyMem_RawFree(o->tot_alloc);
    PyMem_RawFree(o->tot_cpio);
    Py_TYPE(o)->tp_free((PyObject *)o);
}

static int realloc_to(void **p, size_t items, size_t size) {
    void *q = PyMem_RawRealloc(*p, items * size);
    if (q == NULL)
        return -1;
    *p = q;
    return 0;
}

/* add(count, dirs, size, alloc, cpio): ``count`` more entries, the folders among them at the
 * int32 indices ``dirs``, their own figures in the packed int64 ``size``, ``alloc``, ``cpio``
 * of those ``count`` entries. */
static PyObject *folders_add(FoldersObject *o, PyObject *args) {
    Py_ssize_t count;
    Py_buffer dirs, cols[3];
    if (!PyArg_ParseTuple(args, "ny*y*y*y*:add", &count, &dirs, &cols[0], &cols[1], &cols[2]))
        return NULL;
    PyObject *out = NULL;
    Py_ssize_t first = o->n, nd = dirs.len / (Py_ssize_t)sizeof(int32_t);
    const int32_t *d = dirs.buf;
    if (count < 0 || nd > count || first + count > INT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "Folders.add: bad count");
        goto done;
    }
    for (int c = 0; c < 3; c++)
        if (cols[c].len != count * (Py_ssize_t)sizeof(int64_t)) {
            PyErr_SetString(PyExc_ValueError, "Folders.add: figures for `count` entries expected");
            goto done;
        }
    for (Py_ssize_t k = 0; k < nd; k++)
        if (d[k] < first || d[k] >= first + count || (k && d[k] <= d[k - 1])) {
            PyErr_SetString(PyExc_ValueError, "Folders.add: folders must be new entries, ascending");
            goto done;
        }
    if (first + count > o->cap) {
        size_t cap = spare((size_t)(first + count), 64);
        if (realloc_to((void **)&o->slot, cap, sizeof(int32_t))) {
            PyErr_NoMemory();
            goto done;
        }
        o->cap = (Py_ssize_t)cap;
    }
    if (o->nf + nd > o->fcap) {
        size_t cap = spare((size_t)(o->nf + nd), 16);
        if (realloc_to((void **)&o->first_child, cap, sizeof(int32_t)) ||
            realloc_to((void **)&o->nchild, cap, sizeof(int32_t)) ||
            realloc_to((void **)&o->tot_count, cap, sizeof(int32_t)) ||
            realloc_to((void **)&o->tot_size, cap, sizeof(int64_t)) ||
            realloc_to((void **)&o->tot_alloc, cap, sizeof(int64_t)) ||
            realloc_to((void **)&o->tot_cpio, cap, sizeof(int64_t))) {
            PyErr_NoMemory(); /* the grown ones stay grown: fcap still fits them all */
            goto done;
        }
        o->fcap = (Py_ssize_t)cap;
    }
    for (Py_ssize_t k = 0; k < count; k++)
        o->slot[first + k] = -1;
    const int64_t *size = cols[0].buf, *alloc = cols[1].buf, *cpio = cols[2].buf;
    for (Py_ssize_t k = 0; k < nd; k++) {
        Py_ssize_t i = d[k], f = o->nf++;
        o->slot[i] = (int32_t)f;
        o->first_child[f] = -1;
        o->nchild[f] = o->tot_count[f] = 0;
        o->tot_size[f] = size[i - first];
        o->tot_alloc[f] = alloc[i - first];
        o->tot_cpio[f] = cpio[i - first];
    }
    o->n = first + count;
    out = Py_NewRef(Py_None);
done:
    PyBuffer_Release(&dirs);
    for (int c = 0; c < 3; c++)
        PyBuffer_Release(&cols[c]);
    return out;
}

typedef struct {
    PyObject_HEAD
    FoldersObject *folders;
    int which;
    PyObject *own;   /* a file's figure: own[i], or ``fallback`` when NULL */
    long fallback;
} FolderColumnObject;

static PyTypeObject FolderColumnType;

static PyObject *folders_column(FoldersObject *o, PyObject *args) {
    const char *name;
    PyObject *own = Py_None;
    if (!PyArg_ParseTuple(args, "s|O:column", &name, &own))
        return NULL;
    int which = 0;
    while (which < NCOLUMNS && strcmp(name, column_names[which]) != 0)
        which++;
    if (which == NCOLUMNS)
        return PyErr_Format(PyExc_ValueError, "Folders.column: no column %s", name);
    int totals = which == TOT_SIZE || which == TOT_ALLOC || which == TOT_CPIO;
    if (totals == (own == Py_None))
        return PyErr_Format(PyExc_TypeError, "Folders.column: %s %s the entries' own figures", name,
                            totals ? "needs" : "takes no");
    FolderColumnObject *c = PyObject_New(FolderColumnObject, &FolderColumnType);
    if (c == NULL)
        return NULL;
    c->folders = (FoldersObject *)Py_NewRef(o);
    c->which = which;
    c->own = totals ? Py_NewRef(own) : NULL;
    c->fallback = which == FIRST_CHILD ? -1 : 0;
    return (PyObject *)c;
}

static PyObject *folders_sizeof(FoldersObject *o, PyObject *unused) {
    (void)unused;
    return PyLong_FromSize_t(sizeof(FoldersObject) + (size_t)o->cap * sizeof(int32_t) +
                             (size_t)o->fcap * (3 * sizeof(int32_t) + 3 * sizeof(int64_t)));
}

static PyObject *folders_len_py(FoldersObject *o, PyObject *unused) {
    (void)unused;
    return PyLong_FromSsize_t(o->nf);
}

static Py_ssize_t folders_len(FoldersObject *o) { return o->n; }

static PyMethodDef folders_methods[] = {
    {"add", (PyCFunction)folders_add, METH_VARARGS,
     "add(count, dirs, size, alloc, cpio): more entries, the folders among them at the int32 indices dirs."},
    {"column", (PyCFunction)folders_column, METH_VARARGS,
     "column(name, own=None) -> FolderColumn: first_child, nchild, tot_count, or tot_size/alloc/cpio over own."},
    {"folders", (PyCFunction)folders_len_py, METH_NOARGS, "How many entries are folders."},
    {"__sizeof__", (PyCFunction)folders_sizeof, METH_NOARGS, "Bytes held, the buffers' spare room included."},
    {NULL, NULL, 0, NULL},
};

static PySequenceMethods folders_as_sequence = {.sq_length = (lenfunc)folders_len};

static PyTypeObject FoldersType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "sysextant.core.tree._listdir.Folders",
    .tp_doc = "Folders(): the index's folder columns (first_child, nchild, totals), kept for folders only.",
    .tp_basicsize = sizeof(FoldersObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_dealloc = (destructor)folders_dealloc,
    .tp_as_sequence = &folders_as_sequence,
    .tp_methods = folders_methods,
};

static void column_dealloc(FolderColumnObject *c) {
    Py_DECREF(c->folders);
    Py_XDECREF(c->own);
    PyObject_Free(c);
}

static Py_ssize_t column_len(FolderColumnObject *c) { return c->folders->n; }

static PyObject *column_at(FolderColumnObject *c, Py_ssize_t i) {
    FoldersObject *o = c->folders;
    int32_t f = o->slot[i];
    if (f < 0)
        return c->own ? PySequence_GetItem(c->own, i) : PyLong_FromLong(c->fallback);
    switch (c->which) {
    case FIRST_CHILD: return PyLong_FromLong(o->first_child[f]);
    case NCHILD: return PyLong_FromLong(o->nchild[f]);
    case TOT_SIZE: return PyLong_FromLongLong(o->tot_size[f]);
    case TOT_ALLOC: return PyLong_FromLongLong(o->tot_alloc[f]);
    case TOT_CPIO: return PyLong_FromLongLong(o->tot_cpio[f]);
    default: return PyLong_FromLong(o->tot_count[f]);
    }
}

static PyObject *column_item(FolderColumnObject *c, Py_ssize_t i) {
    if (i < 0 || i >= c->folders->n) {
        PyErr_Format(PyExc_IndexError, "%s index out of range", column_names[c->which]);
        return NULL;
    }
    return column_at(c, i);
}

static PyObject *column_slice(FolderColumnObject *c, Py_ssize_t start, Py_ssize_t step, Py_ssize_t len) {
    PyObject *out = PyList_New(len);
    if (out == NULL)
        return NULL;
    for (Py_ssize_t k = 0, i = start; k < len; k++, i += step) {
        PyObject *x = column_at(c, i);
        if (x == NULL) {
            Py_DECREF(out);
            return NULL;
        }
        PyList_SET_ITEM(out, k, x);
    }
    return out;
}

static PyObject *column_subscript(FolderColumnObject *c, PyObject *key) {
    if (PyIndex_Check(key)) {
        Py_ssize_t i = PyNumber_AsSsize_t(key, PyExc_IndexError);
        if (i == -1 && PyErr_Occurred())
            return NULL;
        if (i < 0)
            i += c->folders->n;
        return column_item(c, i);
    }
    if (PySlice_Check(key)) {
        Py_ssize_t start, stop, step;
        if (PySlice_Unpack(key, &start, &stop, &step) < 0)
            return NULL;
        return column_slice(c, start, step, PySlice_AdjustIndices(c->folders->n, &start, &stop, step));
    }
    PyErr_Format(PyExc_TypeError, "%s indices must be integers or slices, not %.200s", column_names[c->which],
                 Py_TYPE(key)->tp_name);
    return NULL;
}

static PyObject *column_tolist(FolderColumnObject *c, PyObject *unused) {
    (void)unused;
    return column_slice(c, 0, 1, c->folders->n);
}

/* Equal to any sequence of the same numbers (an array of the pure-Python scan, a list). */
static PyObject *column_richcompare(FolderColumnObject *c, PyObject *other, int op) {
    if ((op != Py_EQ && op != Py_NE) || !PySequence_Check(other))
        Py_RETURN_NOTIMPLEMENTED;
    Py_ssize_t n = PySequence_Size(other);
    if (n < 0)
        return NULL;
    int same = n == c->folders->n;
    for (Py_ssize_t i = 0; same && i < n; i++) {
        PyObject *a = column_at(c, i), *b = a ? PySequence_GetItem(other, i) : NULL;
        int eq = b ? PyObject_RichCompareBool(a, b, Py_EQ) : -1;
        Py_XDECREF(a);
        Py_XDECREF(b);
        if (eq < 0)
            return NULL;
        same = eq;
    }
    return PyBool_FromLong(op == Py_EQ ? same : !same);
}

static PyObject *column_repr(FolderColumnObject *c) {
    return PyUnicode_FromFormat("<FolderColumn %s: %zd entries>", column_names[c->which], c->folders->n);
}

static PyMethodDef column_methods[] = {
    {"tolist", (PyCFunction)column_tolist, METH_NOARGS, "Every entry's figure, in a list."},
    {NULL, NULL, 0, NULL},
};

static PySequenceMethods column_as_sequence = {
    .sq_length = (lenfunc)column_len,
    .sq_item = (ssizeargfunc)column_item,
};

static PyMappingMethods column_as_mapping = {
    .mp_length = (lenfunc)column_len,
    .mp_subscript = (binaryfunc)column_subscript,
};

static PyTypeObject FolderColumnType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "sysextant.core.tree._listdir.FolderColumn",
    .tp_doc = "One of the index's folder columns seen per entry (read-only; the scan writes it through settle).",
    .tp_basicsize = sizeof(FolderColumnObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_SEQUENCE,
    .tp_dealloc = (destructor)column_dealloc,
    .tp_repr = (reprfunc)column_repr,
    .tp_as_sequence = &column_as_sequence,
    .tp_as_mapping = &column_as_mapping,
    .tp_richcompare = (richcmpfunc)column_richcompare,
    .tp_hash = PyObject_HashNotImplemented,
    .tp_methods = column_methods,
};

/* ---- totals ------------------------------------------------------------------------------ */

/* ``obj``'s buffer as a column: C-contiguous, of ``format``, at least ``n`` items; else TypeError. */
static int get_column(PyObject *obj, Py_buffer *b, const char *format, Py_ssize_t n, const char *what) {
    if (PyObject_GetBuffer(obj, b, PyBUF_FORMAT | PyBUF_C_CONTIGUOUS) < 0)
        return -1;
    if (b->format == NULL || strcmp(b->format, format) != 0 || b->len / b->itemsize < n) {
        PyErr_Format(PyExc_TypeError, "%s must be an array of typecode '%s', one item an entry", what,
                     format);
        PyBuffer_Release(b);
        return -1;
    }
    return 0;
}

/* settle(folders, parent, layout): each listed folder's first child and children into the
 * folder columns, its children's figures added to its own totals and its ancestors'. */
static PyObject *settle(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer recs, pb;
    PyObject *parent_obj;
    FoldersObject *o;
    if (!PyArg_ParseTuple(args, "y*OO!:settle", &recs, &parent_obj, &FoldersType, &o))
        return NULL;
    if (get_column(parent_obj, &pb, "i", 0, "settle: parent") < 0) {
        PyBuffer_Release(&recs);
        return NULL;
    }
    PyObject *out = NULL;
    const int32_t *parent = pb.buf;
    Py_ssize_t n = pb.len / (Py_ssize_t)sizeof(int32_t);
    if (o->n < n)
        n = o->n;
    const int64_t *rec = recs.buf;
    Py_ssize_t nrec = recs.len / (Py_ssize_t)(6 * sizeof(int64_t));
    for (Py_ssize_t r = 0; r < nrec; r++, rec += 6) {
        int64_t d = rec[0], hops = 0;
        if (d < 0 || d >= n || o->slot[d] < 0)
            goto bad;
        int32_t f = o->slot[d];
        o->first_child[f] = (int32_t)rec[1];
        o->nchild[f] = (int32_t)rec[2];
        for (int64_t a = d; a >= 0; a = parent[a]) {
            if (a >= n || o->slot[a] < 0 || ++hops > n)
                goto bad;
            f = o->slot[a];
            o->tot_size[f] += rec[3];
            o->tot_alloc[f] += rec[4];
            o->tot_cpio[f] += rec[5];
            o->tot_count[f] += (int32_t)rec[2];
        }
    }
    out = Py_NewRef(Py_None);
    goto done;
bad:
    PyErr_SetString(PyExc_ValueError, "settle: a folder or a parent that is not a folder of the index");
done:
    PyBuffer_Release(&pb);
    PyBuffer_Release(&recs);
    return out;
}

/* ---- content kinds ----------------------------------------------------------------------- */

enum { K_META, K_COMPRESSED, K_FIRMWARE, K_ELF, K_TEXT, K_OTHER };

typedef struct { const char *s; Py_ssize_t len; int kind; } suffix_slot;

static uint64_t fnv(const char *s, Py_ssize_t len) {
    uint64_t h = 1469598103934665603ULL;
    for (Py_ssize_t k = 0; k < len; k++)
        h = (h ^ (unsigned char)s[k]) * 1099511628211ULL;
    return h;
}

/* The slot holding suffix ``s``, or the empty slot where it would go (open addressing). */
static suffix_slot *suffix_slot_of(suffix_slot *t, size_t mask, const char *s, Py_ssize_t len) {
    size_t h = fnv(s, len) & mask;
    while (t[h].s != NULL && !(t[h].len == len && memcmp(t[h].s, s, (size_t)len) == 0))
        h = (h + 1) & mask;
    return &t[h];
}


/* classify(names, parent, mode, size, suffixes): see the top of this file. */
static PyObject *classify(PyObject *self, PyObject *args) {
    (void)self;
    NamesObject *names;
    PyObject *parent_obj, *mode_obj, *size_obj, *suffixes;
    if (!PyArg_ParseTuple(args, "O!OOOO!:classify", &NamesType, &names, &parent_obj, &mode_obj, &size_obj,
                          &PyDict_Type, &suffixes))
        return NULL;
    Py_ssize_t n = names->n;
    Py_buffer pb, mb, sb;
    if (get_column(parent_obj, &pb, "i", n, "parent") < 0)
        return NULL;
    if (get_column(mode_obj, &mb, "I", n, "mode") < 0) {
        PyBuffer_Release(&pb);
        return NULL;
    }
    if (get_column(size_obj, &sb, "q", n, "size") < 0) {
        PyBuffer_Release(&pb);
        PyBuffer_Release(&mb);
        return NULL;
    }
    PyObject *out = NULL;
    suffix_slot *table = NULL;
    unsigned char *fw = NULL;
    size_t cap = 16;
    while (cap < 4 * (size_t)PyDict_GET_SIZE(suffixes))
        cap <<= 1;
    table = PyMem_RawCalloc(cap, sizeof *table);
    fw = PyMem_RawCalloc(n ? (size_t)n : 1, 1);
    if (table == NULL || fw == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    PyObject *key, *value;
    Py_ssize_t pos = 0;
    while (PyDict_Next(suffixes, &pos, &key, &value)) {
        long kind = PyLong_AsLong(value);
        if (!PyBytes_Check(key) || (kind == -1 && PyErr_Occurred()) || kind < K_META || kind > K_OTHER) {
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_TypeError, "classify: suffixes maps bytes to a kind 0-5");
            goto done;
        }
        const char *s = PyBytes_AS_STRING(key);
        Py_ssize_t len = PyBytes_GET_SIZE(key);
        *suffix_slot_of(table, cap - 1, s, len) = (suffix_slot){s, len, (int)kind}; /* the dict keeps the key alive */
    }
    out = PyByteArray_FromStringAndSize(NULL, n);
    if (out == NULL)
        goto done;
    unsigned char *kinds = (unsigned char *)PyByteArray_AS_STRING(out);
    const int32_t *parent = pb.buf;
    const uint32_t *mode = mb.buf;
    const int64_t *size = sb.buf;
    for (Py_ssize_t i = 0; i < n; i++) {
        int32_t p = parent[i];
        int in_fw = i > 0 && p >= 0 && p < i && fw[p]; /* parents come before their children */
        uint32_t m = mode[i] & S_IFMT;
        const char *s;
        Py_ssize_t len;
        names_span(names, i, &s, &len);
        kinds[i] = K_META;
        if (i == 0)
            continue;
        if (m == S_IFDIR) {
            fw[i] = in_fw || (len == 8 && memcmp(s, "firmware", 8) == 0);
            continue;
        }
        if (m != S_IFREG || size[i] == 0)
            continue;
        const char *dot = NULL;
        for (Py_ssize_t k = len; k > 0; k--)
            if (s[k - 1] == '.') {
                dot = s + k - 1;
                break;
            }
        const char *suf = dot ? dot + 1 : s; /* bytes.rpartition: no dot, the whole name */
        const suffix_slot *slot = suffix_slot_of(table, cap - 1, suf, s + len - suf);
        int t = slot->s != NULL ? slot->kind : -1;
        int so = 0;
        for (Py_ssize_t k = 0; k + 4 <= len && !so; k++)
            so = memcmp(s + k, ".so.", 4) == 0;
        kinds[i] = t == K_COMPRESSED ? K_COMPRESSED
                 : in_fw ? K_FIRMWARE
                 : t == K_ELF || so ? K_ELF
                 : t == K_TEXT ? K_TEXT
                 : mode[i] & 0111 ? K_ELF
                 : K_OTHER;
    }
done:
    PyMem_RawFree(table);
    PyMem_RawFree(fw);
    PyBuffer_Release(&pb);
    PyBuffer_Release(&mb);
    PyBuffer_Release(&sb);
    return out;
}

typedef struct { int64_t size, off; int32_t entry; int32_t used; } copy_slot;

static uint64_t copy_hash(int64_t size, const char *s, Py_ssize_t len) {
    uint64_t h = 1469598103934665603ULL ^ (uint64_t)size * 0x9E3779B97F4A7C15ULL;
    for (Py_ssize_t k = 0; k < len; k++)
        h = (h ^ (unsigned char)s[k]) * 1099511628211ULL;
    return h ^ (h >> 29);
}

/* copies(order, names, size, cpio, kinds, window, least): see the top of this file. */
static PyObject *copies(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *order_obj, *size_obj, *cpio_obj, *out = NULL;
    NamesObject *names;
    Py_buffer ob, sb, cb, kb;
    long long window, least;
    if (!PyArg_ParseTuple(args, "OO!OOy*LL:copies", &order_obj, &NamesType, &names, &size_obj, &cpio_obj, &kb,
                          &window, &least))
        return NULL;
    if (get_column(order_obj, &ob, "i", 0, "copies: order") < 0) {
        PyBuffer_Release(&kb);
        return NULL;
    }
    if (get_column(size_obj, &sb, "q", names->n, "copies: size") < 0) {
        PyBuffer_Release(&ob);
        PyBuffer_Release(&kb);
        return NULL;
    }
    if (get_column(cpio_obj, &cb, "q", names->n, "copies: cpio") < 0) {
        PyBuffer_Release(&sb);
        PyBuffer_Release(&ob);
        PyBuffer_Release(&kb);
        return NULL;
    }
    const int32_t *order = ob.buf;
    const int64_t *size = sb.buf, *cpio = cb.buf;
    const unsigned char *kinds = kb.buf;
    Py_ssize_t n = ob.len / (Py_ssize_t)sizeof(int32_t), nent = names->n;
    if (kb.len < nent)
        nent = kb.len;
    size_t candidates = 0;
    for (Py_ssize_t p = 0; p < n; p++) {
        int32_t i = order[p];
        if (i < 0 || i >= nent) {
            PyErr_SetString(PyExc_IndexError, "copies: an entry beyond the columns");
            goto done;
        }
        if (size[i] >= least && kinds[i] != 0)
            candidates++;
    }
    size_t cap = 16;
    while (cap < 2 * candidates)
        cap <<= 1;
    copy_slot *slots = PyMem_RawCalloc(cap, sizeof *slots);
    vec pairs = {0};
    if (slots == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    int64_t off = 0;
    for (Py_ssize_t p = 0; p < n; p++) {
        int32_t i = order[p];
        int64_t sz = size[i];
        if (sz >= least && kinds[i] != 0) {
            const char *s;
            Py_ssize_t len;
            names_span(names, i, &s, &len);
            size_t h = (size_t)copy_hash(sz, s, len) & (cap - 1);
            for (;; h = (h + 1) & (cap - 1)) {
                copy_slot *slot = &slots[h];
                if (!slot->used) {
                    slot->used = 1;
                    slot->size = sz;
                    slot->entry = i;
                    slot->off = off;
                    break;
                }
                if (slot->size != sz)
                    continue;
                const char *t;
                Py_ssize_t tlen;
                names_span(names, slot->entry, &t, &tlen);
                if (tlen != len || memcmp(s, t, (size_t)len) != 0)
                    continue;
                if (off - slot->off <= window) {
                    int32_t pair[2] = {i, slot->entry};
                    if (vec_push(&pairs, pair, sizeof pair) < 0) {
                        PyErr_NoMemory();
                        PyMem_RawFree(slots);
                        PyMem_RawFree(pairs.p);
                        goto done;
                    }
                }
                slot->entry = i;
                slot->off = off;
                break;
            }
        }
        off += cpio[i];
    }
    out = PyBytes_FromStringAndSize(pairs.p, (Py_ssize_t)(pairs.n * 2 * sizeof(int32_t)));
    PyMem_RawFree(slots);
    PyMem_RawFree(pairs.p);
done:
    PyBuffer_Release(&cb);
    PyBuffer_Release(&sb);
    PyBuffer_Release(&ob);
    PyBuffer_Release(&kb);
    return out;
}

typedef struct { int32_t *ents; int64_t *pre; size_t n, cap; } kind_column;

/* columns(kinds, values, intervals, nkinds): see the top of this file. */
static PyObject *columns(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer kb, vb;
    PyObject *intervals, *values_obj, *out = NULL, *seq = NULL;
    int nkinds;
    if (!PyArg_ParseTuple(args, "y*OOi:columns", &kb, &values_obj, &intervals, &nkinds))
        return NULL;
    if (get_column(values_obj, &vb, "q", 0, "values") < 0) {
        PyBuffer_Release(&kb);
        return NULL;
    }
    kind_column *cols = NULL;
    if (nkinds < 1 || nkinds > 256) {
        PyErr_SetString(PyExc_ValueError, "columns: nkinds must be 1-256");
        goto done;
    }
    cols = PyMem_RawCalloc((size_t)nkinds, sizeof *cols);
    seq = PySequence_Fast(intervals, "columns: intervals must be a sequence of (start, end)");
    if (cols == NULL || seq == NULL) {
        if (cols == NULL)
            PyErr_NoMemory();
        goto done;
    }
    const unsigned char *kinds = kb.buf;
    const int64_t *values = vb.buf;
    Py_ssize_t n = kb.len < vb.len / 8 ? kb.len : vb.len / 8;
    for (int k = 0; k < nkinds; k++) {
        cols[k].pre = PyMem_RawMalloc(sizeof(int64_t));
        if (cols[k].pre == NULL) {
            PyErr_NoMemory();
            goto done;
        }
        cols[k].pre[0] = 0;
    }
    for (Py_ssize_t r = 0; r < PySequence_Fast_GET_SIZE(seq); r++) {
        Py_ssize_t start, end;
        if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(seq, r), "nn:columns", &start, &end))
            goto done;
        if (start < 1)
            start = 1;
        if (end > n) {
            PyErr_SetString(PyExc_IndexError, "columns: an interval beyond the kinds or the values");
            goto done;
        }
        for (Py_ssize_t i = start; i < end; i++) {
            unsigned k = kinds[i];
            if (k >= (unsigned)nkinds)
                continue;
            kind_column *c = &cols[k];
            if (c->n == c->cap) {
                size_t cap = spare(c->cap, 1024);
                int32_t *e = PyMem_RawRealloc(c->ents, cap * sizeof *e);
                if (e != NULL)
                    c->ents = e;
                int64_t *p = e == NULL ? NULL : PyMem_RawRealloc(c->pre, (cap + 1) * sizeof *p);
                if (p == NULL) {
                    PyErr_NoMemory();
                    goto done;
                }
                c->pre = p;
                c->cap = cap;
            }
            c->ents[c->n] = (int32_t)i;
            c->pre[c->n + 1] = c->pre[c->n] + values[i];
            c->n++;
        }
    }
    PyObject *ents = PyList_New(nkinds), *pre = PyList_New(nkinds);
    if (ents == NULL || pre == NULL) {
        Py_XDECREF(ents);
        Py_XDECREF(pre);
        goto done;
    }
    for (int k = 0; k < nkinds; k++) {
        PyObject *e = PyBytes_FromStringAndSize((const char *)cols[k].ents, (Py_ssize_t)(cols[k].n * sizeof(int32_t)));
        PyObject *p = PyBytes_FromStringAndSize((const char *)cols[k].pre, (Py_ssize_t)((cols[k].n + 1) * sizeof(int64_t)));
        if (e == NULL || p == NULL) {
            Py_XDECREF(e);
            Py_XDECREF(p);
            Py_DECREF(ents);
            Py_DECREF(pre);
            goto done;
        }
        PyList_SET_ITEM(ents, k, e);
        PyList_SET_ITEM(pre, k, p);
    }
    out = Py_BuildValue("(NN)", ents, pre);
done:
    if (cols != NULL)
        for (int k = 0; k < nkinds; k++) {
            PyMem_RawFree(cols[k].ents);
            PyMem_RawFree(cols[k].pre);
        }
    PyMem_RawFree(cols);
    Py_XDECREF(seq);
    PyBuffer_Release(&vb);
    PyBuffer_Release(&kb);
    return out;
}

/* ---- newc bytes of plain files ----------------------------------------------------------- */

#define PACK_MAX_FILE (1 << 20)

static char *hex8(char *p, uint32_t v) {
    static const char digits[] = "0123456789ABCDEF";
    for (int k = 7; k >= 0; k--, v >>= 4)
        p[k] = digits[v & 15];
    return p + 8;
}

/* pack_files(...): see the top of this file. */
static PyObject *pack_files(PyObject *self, PyObject *args) {
    (void)self;
    int dir_fd;
    Py_buffer prefix, skip, eb, pb, mb, sb;
    NamesObject *names;
    PyObject *entries_o, *parent_o, *mode_o, *size_o;
    Py_ssize_t start, limit;
    long long ino, mtime, at = 0;
    if (!PyArg_ParseTuple(args, "iy*O!OnOOOy*LLn|L:pack_files", &dir_fd, &prefix, &NamesType, &names, &entries_o,
                          &start, &parent_o, &mode_o, &size_o, &skip, &ino, &mtime, &limit, &at))
        return NULL;
    Py_ssize_t n = names->n;
    int got_e = 0, got_p = 0, got_m = 0, got_s = 0;
    PyObject *out = NULL;
    char *buf = NULL;
    vec ends = {0};
    if (get_column(entries_o, &eb, "i", 0, "entries") < 0)
        goto done;
    got_e = 1;
    if (get_column(parent_o, &pb, "i", n, "parent") < 0)
        goto done;
    got_p = 1;
    if (get_column(mode_o, &mb, "I", n, "mode") < 0)
        goto done;
    got_m = 1;
    if (get_column(size_o, &sb, "q", n, "size") < 0)
        goto done;
    got_s = 1;
    if (skip.len < n) {
        PyErr_SetString(PyExc_ValueError, "pack_files: skip must hold a byte an entry");
        goto done;
    }
    const int32_t *entries = eb.buf, *parent = pb.buf;
    const uint32_t *mode = mb.buf;
    const int64_t *size = sb.buf;
    const unsigned char *skipped = skip.buf;
    Py_ssize_t count = eb.len / (Py_ssize_t)sizeof(int32_t);
    if (start < 0 || start >= count || entries[start] < 0 || entries[start] >= n) {
        PyErr_SetString(PyExc_IndexError, "pack_files: start is not a position of entries");
        goto done;
    }
    size_t cap = 256 * 1024, len = 0; /* grows as files come: a run may be one small file */
    buf = PyMem_RawMalloc(cap);
    if (buf == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    int32_t folder = parent[entries[start]];
    int nomem = 0;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t k = start; k < count && (Py_ssize_t)len < limit; k++) {
        int32_t i = entries[k];
        if (i < 0 || i >= n || parent[i] != folder || (mode[i] & S_IFMT) != S_IFREG || skipped[i] ||
            size[i] < 0 || size[i] > PACK_MAX_FILE)
            break;
        const char *s;
        Py_ssize_t nlen;
        names_span(names, i, &s, &nlen);
        char name[NAME_MAX + 1];
        if (nlen <= 0 || nlen > NAME_MAX || memchr(s, 0, (size_t)nlen) != NULL)
            break;
        memcpy(name, s, (size_t)nlen);
        name[nlen] = 0;
        size_t path_len = (size_t)prefix.len + (size_t)nlen, fsize = (size_t)size[i];
        size_t head = HEADER + path_len + 1, need = head + (-head & 3) + fsize + (-fsize & 3);
        if (len + need > cap) {
            size_t ncap = spare(len + need, PACK_MAX_FILE);
            char *nb = PyMem_RawRealloc(buf, ncap);
            if (nb == NULL) {
                nomem = 1;
                break;
            }
            buf = nb;
            cap = ncap;
        }
        int flags = O_RDONLY | O_NOFOLLOW | O_CLOEXEC;
#ifdef O_NOATIME
        flags |= O_NOATIME;
#endif
        int fd = openat(dir_fd, name, flags);
        if (fd < 0)
            break;
        struct stat st;
        if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_size != size[i]) {
            close(fd);
            break;
        }
        char *p = buf + len;
        memcpy(p, "070701", 6);
        p = hex8(p + 6, (uint32_t)ino);
        p = hex8(p, mode[i]);
        p = hex8(p, 0);             /* uid */
        p = hex8(p, 0);             /* gid */
        p = hex8(p, 1);             /* nlink */
        p = hex8(p, (uint32_t)mtime);
        p = hex8(p, (uint32_t)fsize);
        memset(p, '0', 16);         /* dev major, minor */
        p = hex8(p + 16, 0);        /* rdev major */
        p = hex8(p, 0);             /* rdev minor */
        p = hex8(p, (uint32_t)(path_len + 1));
        p = hex8(p, 0);             /* check */
        memcpy(p, prefix.buf, (size_t)prefix.len);
        memcpy(p + prefix.len, name, (size_t)nlen);
        p += path_len;
        memset(p, 0, 1 + (-head & 3));
        p += 1 + (-head & 3);
        size_t got = 0;
        while (got < fsize) {
            ssize_t r = read(fd, p + got, fsize - got);
            if (r < 0 && errno == EINTR)
                continue;
            if (r <= 0)
                break;
            got += (size_t)r;
        }
        close(fd);
        if (got != fsize)
            break; /* shrank or unreadable: the caller's careful path says so */
        memset(p + fsize, 0, -fsize & 3);
        len += need;
        ino++;
        int64_t end = (int64_t)at + (int64_t)len;
        if (vec_push(&ends, &end, sizeof end) < 0) {
            nomem = 1;
            break;
        }
    }
    Py_END_ALLOW_THREADS
    if (nomem) {
        PyErr_NoMemory();
        goto done;
    }
    out = Py_BuildValue("(y#y#)", buf, (Py_ssize_t)len, ends.p != NULL ? (const char *)ends.p : "",
                        (Py_ssize_t)(ends.n * sizeof(int64_t)));
done:
    PyMem_RawFree(buf);
    PyMem_RawFree(ends.p);
    if (got_e)
        PyBuffer_Release(&eb);
    if (got_p)
        PyBuffer_Release(&pb);
    if (got_m)
        PyBuffer_Release(&mb);
    if (got_s)
        PyBuffer_Release(&sb);
    PyBuffer_Release(&prefix);
    PyBuffer_Release(&skip);
    return out;
}

/* ---- archive order ---------------------------------------------------------------------- */

/* val < 0: -1 - folder, its subtree; head: the item's first 8 bytes big-endian, NUL-padded */
typedef struct { uint64_t head; const char *s; Py_ssize_t len; int32_t val; } order_item;

static uint64_t order_head(const char *s, Py_ssize_t len, int subtree) {
    unsigned char b[8] = {0};
    Py_ssize_t k = len < 8 ? len : 8;
    memcpy(b, s, (size_t)k);
    if (subtree && len < 8)
        b[len] = '/';
    uint64_t h = 0;
    for (int j = 0; j < 8; j++)
        h = h << 8 | b[j];
    return h;
}

/* A child's name, or a subtree's (its folder's name and "/"), bytewise: the heads first (names
 * hold no NUL, so padding sorts an end before any byte). Names in a folder are distinct and hold
 * no "/", so two items compare equal only when they are one. */
static int order_cmp(const void *pa, const void *pb) {
    const order_item *a = pa, *b = pb;
    if (a->head != b->head)
        return a->head < b->head ? -1 : 1;
    Py_ssize_t k = a->len < b->len ? a->len : b->len;
    int r = memcmp(a->s, b->s, (size_t)k);
    if (r)
        return r;
    int ca = k < a->len ? (unsigned char)a->s[k] : a->val < 0 && k == a->len ? '/' : -1;
    int cb = k < b->len ? (unsigned char)b->s[k] : b->val < 0 && k == b->len ? '/' : -1;
    return ca - cb;
}

static inline int order_less(const order_item *a, const order_item *b) {
    return a->head != b->head ? a->head < b->head : order_cmp(a, b) < 0;
}

/* Sorts ``n`` items (``tmp`` holds as many): insertion sort of runs of 16, then bottom-up
 * merges, the comparison inlined (qsort's call per comparison took two thirds of the time). */
static void order_sort(order_item *a, order_item *tmp, Py_ssize_t n) {
    enum { RUN = 16 };
    for (Py_ssize_t lo = 0; lo < n; lo += RUN) {
        Py_ssize_t hi = lo + RUN < n ? lo + RUN : n;
        for (Py_ssize_t i = lo + 1; i < hi; i++) {
            order_item x = a[i];
            Py_ssize_t j = i;
            for (; j > lo && order_less(&x, &a[j - 1]); j--)
                a[j] = a[j - 1];
            a[j] = x;
        }
    }
    order_item *src = a, *dst = tmp;
    for (Py_ssize_t w = RUN; w < n; w *= 2) {
        for (Py_ssize_t lo = 0; lo < n; lo += 2 * w) {
            Py_ssize_t mid = lo + w < n ? lo + w : n, hi = lo + 2 * w < n ? lo + 2 * w : n, i = lo, j = mid, k = lo;
            while (i < mid && j < hi)
                dst[k++] = order_less(&src[j], &src[i]) ? src[j++] : src[i++];
            while (i < mid)
                dst[k++] = src[i++];
            while (j < hi)
                dst[k++] = src[j++];
        }
        order_item *t = src;
        src = dst;
        dst = t;
    }
    if (src != a)
        memcpy(a, src, (size_t)n * sizeof *a);
}

typedef struct { order_item *items; Py_ssize_t n, k; } order_frame;

/* archive_order(names, folders): see the top of this file. */
static PyObject *archive_order(PyObject *self, PyObject *args) {
    (void)self;
    NamesObject *names;
    FoldersObject *f;
    if (!PyArg_ParseTuple(args, "O!O!:archive_order", &NamesType, &names, &FoldersType, &f))
        return NULL;
    Py_ssize_t n = f->n < names->n ? f->n : names->n;
    if (n < 1)
        return PyBytes_FromStringAndSize(NULL, 0);
    PyObject *out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)((n - 1) * sizeof(int32_t)));
    if (out == NULL)
        return NULL;
    int32_t *dst = (int32_t *)PyBytes_AS_STRING(out);
    Py_ssize_t put = 0, depth = 0, cap = 0;
    order_frame *stack = NULL;
    int32_t d = 0, err = 0;
    for (;;) {
        if (d >= 0) { /* open folder d: its children and its child folders' subtrees, sorted */
            int32_t slot = f->slot[d], first = slot < 0 ? -1 : f->first_child[slot];
            Py_ssize_t nc = first < 0 ? 0 : f->nchild[slot], m = 0;
            if (first + nc > n) {
                err = 1;
                break;
            }
            order_item *items = nc ? PyMem_RawMalloc(4 * (size_t)nc * sizeof *items) : NULL; /* and the sort's room */
            if (nc && items == NULL) {
                err = 2;
                break;
            }
            for (Py_ssize_t c = first; c < first + nc; c++) {
                order_item *it = &items[m++];
                names_span(names, c, &it->s, &it->len);
                it->val = (int32_t)c;
                it->head = order_head(it->s, it->len, 0);
                int32_t cs = f->slot[c];
                if (cs >= 0 && f->nchild[cs] > 0) {
                    items[m] = *it;
                    items[m].head = order_head(it->s, it->len, 1);
                    items[m++].val = -1 - (int32_t)c;
                }
            }
            order_sort(items, items + 2 * nc, m);
            if (depth == cap) {
                Py_ssize_t more = cap ? 2 * cap : 64;
                order_frame *p = PyMem_RawRealloc(stack, (size_t)more * sizeof *p);
                if (p == NULL) {
                    PyMem_RawFree(items);
                    err = 2;
                    break;
                }
                stack = p;
                cap = more;
            }
            stack[depth++] = (order_frame){items, m, 0};
            d = -1;
        }
        if (depth == 0)
            break;
        order_frame *top = &stack[depth - 1];
        while (top->k < top->n && top->items[top->k].val >= 0) {
            if (put == n - 1) {
                err = 1;
                break;
            }
            dst[put++] = top->items[top->k++].val;
        }
        if (err)
            break;
        if (top->k < top->n) {
            d = -1 - top->items[top->k++].val;
        } else {
            PyMem_RawFree(top->items);
            depth--;
        }
    }
    while (depth > 0)
        PyMem_RawFree(stack[--depth].items);
    PyMem_RawFree(stack);
    if (err || put != n - 1) {
        Py_DECREF(out);
        if (err == 2)
            return PyErr_NoMemory();
        PyErr_SetString(PyExc_ValueError, "archive_order: the folder columns do not make one tree of the entries");
        return NULL;
    }
    return out;
}

static PyMethodDef methods[] = {
    {"listdir_lstat", listdir_lstat, METH_O,
     "listdir_lstat(path: bytes) -> (names, packed int64 stats, failed): one folder, no symlink followed."},
    {"settle", settle, METH_VARARGS,
     "settle(folders, parent, layout): a chunk's listed folders into the folder columns and the totals."},
    {"classify", classify, METH_VARARGS,
     "classify(names, parent, mode, size, suffixes) -> bytearray: every entry's content kind (quick estimate)."},
    {"pack_files", pack_files, METH_VARARGS,
     "pack_files(dir_fd, prefix, names, entries, start, parent, mode, size, skip, ino, mtime, limit) -> (data, ends): "
     "newc bytes of a folder's plain files."},
    {"copies", copies, METH_VARARGS,
     "copies(order, names, size, cpio, kinds, window, least) -> bytes: likely copies (quick estimate)."},
    {"archive_order", archive_order, METH_VARARGS,
     "archive_order(names, folders) -> bytes: every entry but the root in bytewise full-path order (int32)."},
    {"columns", columns, METH_VARARGS,
     "columns(kinds, values, intervals, nkinds) -> (entries, prefix): per kind, its entries and their values' prefix sums."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_listdir", "The native part: the scan's listings, walk and names column; content kinds and copies; newc runs of plain files.",
    -1, methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__listdir(void) {
    if (PyType_Ready(&NamesType) < 0 || PyType_Ready(&WalkerType) < 0 || PyType_Ready(&FoldersType) < 0 ||
        PyType_Ready(&FolderColumnType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    if (PyModule_AddObjectRef(m, "Names", (PyObject *)&NamesType) < 0 ||
        PyModule_AddObjectRef(m, "Walker", (PyObject *)&WalkerType) < 0 ||
        PyModule_AddObjectRef(m, "Folders", (PyObject *)&FoldersType) < 0 ||
        PyModule_AddObjectRef(m, "FolderColumn", (PyObject *)&FolderColumnType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
