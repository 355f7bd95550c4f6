"""The one native part: core/tree/_listdir.c, the scan's per-folder listing and lstat, the quick
estimate's content kinds and likely copies, the archive order, and the initrd's runs of plain
files (optional: each has a Python twin used when it is not built, e.g. without a C compiler)."""

from setuptools import Extension, setup

setup(ext_modules=[Extension("sysextant.core.tree._listdir", ["core/tree/_listdir.c"], optional=True,
                             extra_compile_args=["-O2", "-Wall", "-Wextra"])])
