"""hmtl_mpi: hierarchical multi-task learning over MPI with coded communication.

The coded scheme is the one of "Coded Distributed Computing for Hierarchical
Multi-task Learning" (Hu, Li, Cheng, Wu). Pure modules (no MPI): ``topology``,
``plan``, ``coding``, ``mocha``, ``datasets``. The MPI runtime lives in
``runtime`` and is started with ``mpirun -n 1+H+K python -m hmtl_mpi``.
"""

__version__ = "0.1.0"
