"""``mpirun -n 1+H+K python -m hmtl_mpi``: see :mod:`hmtl_mpi.runtime`.

The watcher is forked first, before NumPy and MPI are loaded
(:mod:`hmtl_mpi.supervisor`); the child goes on to be the rank.
"""

import sys

from .supervisor import start

page = start()

from .runtime import main  # noqa: E402  (after the fork, on purpose)

sys.exit(main(page=page))
