"""Benchmarks of hmtl_mpi: ``python -m hmtl_mpi.bench WHAT`` (see :mod:`.__main__`)."""
