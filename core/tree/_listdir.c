/* One folder's names and lstat figures in one call: the scan's hot loop, natively.
 *
 * listdir_lstat(path: bytes) -> (names: list[bytes], stats: bytes, failed: list[tuple[bytes, int]])
 *
 * ``stats`` packs six native int64 per listed name, in ``names`` order: st_mode, st_nlink,
 * st_size, st_blocks, st_dev, st_ino (read with ``memoryview(stats).cast("q")``). Entries
 * whose lstat failed (vanished, or a folder that can be listed but not searched) are left out
 * of both and come back in ``failed`` with their errno. The folder itself is opened with
 * O_NOFOLLOW, entries are examined with fstatat(AT_SYMLINK_NOFOLLOW) relative to it: no
 * symlink is ever followed. Opening or reading the folder fails with OSError naming ``path``.
 *
 * The listing and the stat calls run without the GIL (the workbench scans in a background
 * thread); Python objects are made afterwards in one go. The pure-Python equivalent, used when
 * this module is not built, is sysextant.core.index._listdir_lstat_py; tests check both agree.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define FIELDS 6

typedef struct {
    char *names;      /* NUL-separated names */
    size_t names_len, names_cap;
    int64_t *stats;   /* FIELDS per kept entry */
    size_t kept, stats_cap;
    struct entry { size_t offset; int err; } *entries; /* name start; 0 or the lstat errno */
    size_t count, entries_cap;
} listing;

static void listing_free(listing *l) {
    free(l->names);
    free(l->stats);
    free(l->entries);
}

static int grow(void **buf, size_t *cap, size_t need, size_t item) {
    if (need <= *cap)
        return 0;
    size_t cap2 = *cap ? *cap : 64;
    while (cap2 < need)
        cap2 *= 2;
    void *p = realloc(*buf, cap2 * item);
    if (p == NULL)
        return -1;
    *buf = p;
    *cap = cap2;
    return 0;
}

/* Fills ``l``; returns 0, or the errno of opening or reading the folder itself. */
static int read_folder(const char *path, listing *l) {
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

static PyObject *listdir_lstat(PyObject *self, PyObject *arg) {
    (void)self;
    if (!PyBytes_Check(arg)) {
        PyErr_SetString(PyExc_TypeError, "listdir_lstat: path must be bytes");
        return NULL;
    }
    const char *path = PyBytes_AS_STRING(arg);
    if ((Py_ssize_t)strlen(path) != PyBytes_GET_SIZE(arg)) {
        PyErr_SetString(PyExc_ValueError, "listdir_lstat: embedded NUL in path");
        return NULL;
    }
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

static PyMethodDef methods[] = {
    {"listdir_lstat", listdir_lstat, METH_O,
     "listdir_lstat(path: bytes) -> (names, packed int64 stats, failed): one folder, no symlink followed."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_listdir", "One folder's names and lstat figures per call (the scan's hot loop).",
    -1, methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__listdir(void) { return PyModule_Create(&module); }
