"""Learning, pure (no MPI): what users and relays compute, and the data.

:mod:`.mocha` (the local and global updates, eq. 2 and 3), :mod:`.gd` (the gradient
workload), :mod:`.learners` (the learner interface the job drives; synthetic and
fixed IVs), :mod:`.datasets` (digits, MNIST, HAR as tasks), :mod:`.straggle` (the
delays ``--straggle`` injects).
"""
