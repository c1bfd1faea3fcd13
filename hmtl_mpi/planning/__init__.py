"""Planning, pure (no MPI): topologies G and the planners of the coded exchanges.

:mod:`.topology` (load, one validation, generators), :mod:`.hierarchical` (the paper's
rounds, LP P(z), exact alphas, Theorem 1 loads and Theorem 2 bounds), :mod:`.joint`
(seed 001's LP over relay subsets) and :mod:`.lp` (what the two LPs share).
"""
