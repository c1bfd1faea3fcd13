"""``mpirun -n 1+H+K python -m hmtl_mpi``: see :mod:`hmtl_mpi.runtime`."""

import sys

from .runtime import main

sys.exit(main())
