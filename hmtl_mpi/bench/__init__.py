"""Benchmarks of hmtl_mpi: ``python -m hmtl_mpi.bench WHAT`` (see :mod:`.__main__`)."""

import os
import sys


def mpiexec() -> str:
    """The mpiexec of the MPI wheel installed next to this Python, else the one on PATH."""
    here = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    return here if os.path.exists(here) else "mpiexec"
