"""Benchmark of MOCHA's local update (eq. 2): pure NumPy/Python reference vs numba.

For three problem sizes -- the digits tasks (64 features, real data), an
MNIST-sized user (784 features, 375 training points, the seed paper's 75 % of
500) and a HAR-sized user (561 features, 375 points), the latter two with random
unit-norm rows -- it times one user's local update, i.e. H = floor(0.5 n) SDCA
coordinate steps, per iteration, and the global update (eq. 3) plus the
task-relationship refresh for K = 20 users. JIT compilation is excluded from
the per-iteration figures and reported separately: the compile time of the
kernel from scratch (no cache) and the first call in this process (which loads
numba's on-disk cache when there is one).

Run ``python -m hmtl_mpi.bench mocha [--json]``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import numpy as np

from ..learning import mocha
from ..learning.datasets import load_tasks

FRAC = 0.5
K_GLOBAL = 20


def _problems():

    digits = load_tasks("digits", 10, seed=0)[0]
    yield "digits", digits.X_train, digits.y_train
    for name, d in (("mnist-sized", 784), ("har-sized", 561)):
        rng = np.random.default_rng([7, d])
        X = rng.normal(size=(375, d))
        X /= np.linalg.norm(X, axis=1, keepdims=True)
        w = rng.normal(size=d)
        y = np.where(X @ w + 0.3 * rng.normal(size=375) >= 0, 1.0, -1.0)
        yield name, X, y


def _median_time(fn, repeats):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


_FIRST_CALL = r"""
import time
t0 = time.perf_counter()
import numpy as np
from hmtl_mpi.learning import mocha
X = np.ones((8, 3)); args = (X, np.ones(8), np.zeros(8), np.zeros(3), 0.5, 1.0, 0.1, 4,
                             np.arange(8, dtype=np.int64))
mocha.sdca_local_update(*args)
print(time.perf_counter() - t0)
"""


def _first_call_times():
    """(compile from scratch, numba's cost to a fresh process: import numba and the first
    call with numba's on-disk cache, the cost ``--local-kernel auto`` weighs) in seconds."""

    from numba import njit  # local: numba costs ~1 s to import; only where it pays

    rng = np.random.default_rng(0)
    X = rng.normal(size=(8, 3))
    y = np.ones(8)
    args = (X, y, np.zeros(8), np.zeros(3), 0.5, 1.0, 0.1, 4, np.arange(8, dtype=np.int64))
    mocha.sdca_local_update(*args)               # fills numba's cache if it was empty
    out = subprocess.run([sys.executable, "-c", _FIRST_CALL], capture_output=True, text=True,
                         timeout=300, check=True)
    first = float(out.stdout.split()[-1])
    fresh = njit(cache=False)(mocha._sdca_steps)
    t0 = time.perf_counter()
    fresh(*args)
    compile_s = time.perf_counter() - t0
    return compile_s, first


def run(json_out: bool = False) -> dict:
    """Time the local update (reference vs numba) and the global update; print a table or JSON."""
    compile_s, first_s = _first_call_times()
    rows = []
    for name, X, y in _problems():
        n, d = X.shape
        steps = int(np.floor(FRAC * n))
        rng = np.random.default_rng(1)
        alpha = np.zeros(n)
        w = np.zeros(d)
        lam, sigma_tt, rho = mocha.DEFAULT_LAMBDA, 1.0 / K_GLOBAL, 1.0
        for _ in range(3):  # a few iterations so that alpha and w are not all zero
            db, alpha = mocha.sdca_local_update(X, y, alpha, w, sigma_tt, rho, lam, steps, rng.permutation(n))
            w = w + sigma_tt * db / lam
        perm = rng.permutation(n)
        args = (X, y, alpha, w, sigma_tt, rho, lam, steps, perm)
        fast = mocha.sdca_local_update(*args)
        ref = mocha.sdca_local_update_reference(*args)
        t_ref = _median_time(lambda: mocha.sdca_local_update_reference(*args), 7)
        t_fast = _median_time(lambda: mocha.sdca_local_update(*args), 101)
        W = np.random.default_rng(2).normal(size=(d, K_GLOBAL))
        dB = np.random.default_rng(3).normal(size=(d, K_GLOBAL))
        Sigma, _ = mocha.refresh_task_relationship(W)
        t_glob = _median_time(lambda: mocha.global_update(W, dB, Sigma, lam), 51)
        t_refresh = _median_time(lambda: mocha.refresh_task_relationship(W), 21)
        rows.append({
            "data": name, "d": d, "n_train": n, "steps": steps,
            "reference_ms": 1e3 * t_ref, "numba_ms": 1e3 * t_fast, "speedup": t_ref / t_fast,
            "bitwise_equal": bool(np.array_equal(fast[0], ref[0]) and np.array_equal(fast[1], ref[1])),
            "global_update_ms_K20": 1e3 * t_glob, "refresh_ms_K20": 1e3 * t_refresh,
        })
    result = {"local_update": rows, "numba_compile_s": compile_s, "numba_first_call_s": first_s,
              "frac": FRAC, "K_global": K_GLOBAL}
    if json_out:
        print(json.dumps(result, indent=2))
    else:
        print(f"MOCHA local update per user per iteration (H = floor({FRAC} n) SDCA steps; median)")
        print(f"{'data':<13}{'d':>5}{'n':>6}{'H':>5}{'reference ms':>14}{'numba ms':>10}"
              f"{'speed-up':>10}{'equal':>7}{'global ms':>11}{'refresh ms':>12}")
        for r in rows:
            print(f"{r['data']:<13}{r['d']:>5}{r['n_train']:>6}{r['steps']:>5}{r['reference_ms']:>14.3f}"
                  f"{r['numba_ms']:>10.4f}{r['speedup']:>9.0f}x{str(r['bitwise_equal']):>7}"
                  f"{r['global_update_ms_K20']:>11.4f}{r['refresh_ms_K20']:>12.4f}")
        print(f"global/refresh: eq. 3 and the Sigma, rho refresh for K = {K_GLOBAL} users")
        print(f"numba compile from scratch (no cache): {compile_s:.2f} s")
        print(f"numba's cost to a fresh process (import numba + first call from the cache): "
              f"{first_s:.3f} s; --local-kernel auto assumes {mocha.NUMBA_START_S} s")
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hmtl_mpi.bench mocha",
                                     description="MOCHA's local update: numba kernel vs reference.")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    run(json_out=args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
