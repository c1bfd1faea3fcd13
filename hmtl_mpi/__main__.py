"""``mpirun -n 1+H+K python -m hmtl_mpi``: see :mod:`hmtl_mpi.job.runtime`.

The watcher is forked first, before NumPy and MPI are loaded
(:mod:`hmtl_mpi.job.supervisor`); the child goes on to be the rank.
"""

import sys

from .job.bytecode import kept
from .job.supervisor import start

page = start()

import numpy  # noqa: E402,F401  (NumPy reads its own installed bytecode, outside kept())

with kept():                      # the package compiled once, not by every rank of every job
    from .job.runtime import main  # noqa: E402  (after the fork, on purpose)

sys.exit(main(page=page))
