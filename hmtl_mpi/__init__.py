"""hmtl_mpi: hierarchical multi-task learning over MPI with coded communication.

The coded scheme is the one of "Coded Distributed Computing for Hierarchical
Multi-task Learning" (Hu, Li, Cheng, Wu). The package's layers, bottom to top
(README, "Architecture"): :mod:`~hmtl_mpi.vocabulary`; the pure math,
:mod:`~hmtl_mpi.planning`, :mod:`~hmtl_mpi.codes`, :mod:`~hmtl_mpi.learning`;
:mod:`~hmtl_mpi.wire`; :mod:`~hmtl_mpi.schemes`; :mod:`~hmtl_mpi.job`. The job
is started with ``mpirun -n 1+H+K python -m hmtl_mpi``, or in one process with
``python -m hmtl_mpi --transport inprocess``.
"""

__version__ = "0.1.0"
