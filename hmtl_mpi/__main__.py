"""``mpirun -n 1+H+K python -m hmtl_mpi``: see :mod:`hmtl_mpi.job.runtime`.

The watcher is forked first, before NumPy and MPI are loaded
(:mod:`hmtl_mpi.job.supervisor`); the child goes on to be the rank.
"""

import sys

from .job.supervisor import start

page = start()

from .job.runtime import main  # noqa: E402  (after the fork, on purpose)

sys.exit(main(page=page))
