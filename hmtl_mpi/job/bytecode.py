"""The job's own compiled bytecode, kept in the cache when the environment says not to write it.

With ``PYTHONDONTWRITEBYTECODE=1`` (set on this development machine and in the
project's Docker image) Python never writes ``.pyc`` files, so every rank of every
job compiled the package's ~45 modules from source: 0.2-0.3 s of CPU per rank
against 0.06 s when compiled code is read, i.e. 16 ranks on 2 cores lost more than
a second of wall time to it at every start (BENCHMARKS.md, "Start-up"). The
environment's wish is kept for the source tree, which gets no ``__pycache__``: while
the job's modules are imported (:func:`kept`), compiled code is read from and
written to ``bytecode/`` in the job's cache folder (``sys.pycache_prefix``), the
folder of :func:`hmtl_mpi.learning.mocha.cache_root` (``$HMTL_CACHE``, else
``$XDG_CACHE_HOME/hmtl_mpi`` or ``~/.cache/hmtl_mpi``; ``HMTL_CACHE=`` turns it off),
found here without importing that module, which loads NumPy. Where bytecode may be
written anyway, or a prefix is already set, nothing changes. Python writes each
file atomically, so ranks compiling at once cannot damage it, and a file older than
its source is recompiled.
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path


def bytecode_folder() -> Path | None:
    """``bytecode/`` in the job's cache folder; None when the cache is turned off."""
    root = os.environ.get("HMTL_CACHE")
    if root == "":
        return None
    if root is None:
        return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "hmtl_mpi" / "bytecode"
    return Path(root) / "bytecode"


@contextlib.contextmanager
def kept():
    """Within: modules imported use compiled code kept in :func:`bytecode_folder`, if
    the environment turned bytecode off; the settings are put back on leaving."""
    folder = bytecode_folder() if sys.dont_write_bytecode and sys.pycache_prefix is None \
        else None
    if folder is None:
        yield
        return
    sys.pycache_prefix, sys.dont_write_bytecode = str(folder), False
    try:
        yield
    finally:
        sys.pycache_prefix, sys.dont_write_bytecode = None, True
