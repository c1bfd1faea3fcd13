"""What both planners' LPs share: the solver, and solver banners kept off standard output.

The LPs themselves are the planners' (:mod:`.hierarchical`: P(z), eq. 28;
:mod:`.joint`: T3 over relay subsets); they are built and solved with cvxpy, which
is imported only when a plan is made (it costs ~0.7 s, and most commands never plan).
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys


@functools.lru_cache(maxsize=None)
def lp_solver():
    """HiGHS when cvxpy has it, else cvxpy's default. Looked up once:
    ``installed_solvers()`` costs ~7 ms, which per round added up."""
    import cvxpy as cp  # local: 0.7 s of start-up, only when planning

    return cp.HIGHS if "HIGHS" in cp.installed_solvers() else None


@contextlib.contextmanager
def stdout_silenced():
    """Send whatever C code writes to file descriptor 1 to /dev/null meanwhile.

    Solvers print banners from C (highspy 1.16: "Running HiGHS 1.16.0 ...") on
    standard output whatever cvxpy's ``verbose`` says, and standard output is
    reserved for our own results (``--json`` prints one JSON document there).
    """
    sys.stdout.flush()
    try:
        saved = os.dup(1)
    except OSError:                 # no file descriptor 1 at all: nothing to protect
        yield
        return
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def solve_quietly(problem, **options) -> None:
    """``problem.solve(**options)`` with solver banners kept off standard output."""
    with stdout_silenced():
        problem.solve(**options)
