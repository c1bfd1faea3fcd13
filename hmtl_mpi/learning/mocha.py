"""MOCHA (Smith, Chiang, Sanjabi, Talwalkar, "Federated Multi-Task Learning", NIPS 2017)
as the users' local update (eq. 2 of the seed paper) and the global update (eq. 3).

Everything here is pure (no MPI): functions over NumPy arrays plus the learner
adapter :class:`MochaLearner` that the MPI runtime drives. The algorithm follows
docs/mocha.md (the reference MATLAB code ``opt/run_mocha.m``) step by
step; the notation is docs/mocha.md's:

* task t = user t, m = K tasks, d features, n_t local training points, labels
  y in {-1, +1}, hinge loss;
* W is d x K (column t is w_t), Sigma = Omega^{-1} is the K x K task covariance;
* primal  P(W) = sum_t (1/n_t) sum_i max(0, 1 - y_ti x_ti^T w_t)
                 + (lambda/2) tr(W Omega W^T);
* dual variables alpha_ti = y_ti a_ti with a_ti in [0, 1]; with
  b_t = (1/n_t) sum_i alpha_ti x_ti and B = [b_1 ... b_K] the dual is
  D(alpha) = sum_t (1/n_t) sum_i a_ti - (1/(2 lambda)) tr(B Sigma B^T),
  and the primal-dual map is W(alpha) = B Sigma / lambda.

One iteration
-------------
Local update of user t (:func:`sdca_local_update`, docs/mocha.md "Users"): H_t =
floor(n_t * frac) SDCA coordinate steps over a fresh random permutation, each

    u     = y x^T (w_t + rho dw)
    g     = lambda n_t (1 - u) / (Sigma_tt rho ||x||^2) + alpha_old y
    alpha = y clip(g, 0, 1)
    dw   += Sigma_tt (alpha - alpha_old) x / (lambda n_t)
    db   += (alpha - alpha_old) x / n_t

and the intermediate value (IV) sent up is v_t = db, a float64 d-vector.
Global update (:func:`global_update`, eq. 3): W <- W + dB Sigma / lambda with
dB = [v_1 ... v_K]. Every ``inner`` iterations, after the W update, the task
relationship is refreshed (:func:`refresh_task_relationship`).

Decisions on the reference code's quirks (docs/mocha.md "Known quirks")
------------------------------------------------------------------
* W is *not* recomputed from the dual after Sigma changes (as the reference):
  the global node only ever sees the IVs, and the paper's scheme is "the same
  local and global update rules as [7]". Consequently the duality gap is only a
  certificate between two Sigma refreshes; :func:`dual_objective` evaluates the
  dual from alpha itself (always a valid lower bound for the current Sigma).
* The eigenvalue floor is applied unconditionally: every eigenvalue of
  A = W^T W below 1e-7 is raised to 1e-7 (the reference only does so when some
  eigenvalue is negative, which round-off makes the usual case for a
  rank-deficient A anyway). With W = 0 this gives Sigma = I/K, the initial state.
* sqrtm(A) is computed through ``eigh`` (A is symmetric), symmetrised exactly.
* rho is the scalar max_t (sum_t' |Sigma_tt'|) / Sigma_tt (the reference's
  ``max(sum(abs(Sigma),2) ./ diag(Sigma))``), i.e. the largest ratio of a row's
  absolute sum to its diagonal entry; it is >= 1 and equals 1 for diagonal Sigma.
* Point s of the local loop is ``perm[s % n_t]`` (the reference visits
  ``tperm(mod(s, n) + 1)``, the same permutation rotated by one).
* u is evaluated as y (x^T w_t + rho x^T dw), algebraically identical to the
  docs/mocha.md's y x^T (w_t + rho dw) and free of a temporary d-vector per step.
* A point with ||x|| = 0 (never produced by :mod:`hmtl_mpi.learning.datasets`) has no
  effect on w; its exact coordinate maximiser a = 1 is taken instead of the
  reference's division by zero.
* Prediction is sign(x^T w); sign(0) = 0 counts as an error, as in the reference
  (so the all-zero initial model has test error 1).
* lambda is chosen by 5-fold cross-validation over
  {1e-5, 1e-4, 1e-3, 1e-2, 0.1, 1, 10} (:func:`cross_validate_lambda`); the
  folds are the reference's strided ones (``cv_idx : folds : n_t``).

Determinism
-----------
Every function is deterministic given its inputs; :class:`MochaLearner` draws
user k's permutations from ``np.random.default_rng([seed, k])``, one per
iteration. The numba kernel and the NumPy reference perform the same floating
point operations in the same order (dot products through ``np.dot``, no
fast-math), and agree bitwise on this machine. The global update and the
refresh use NumPy's BLAS/LAPACK (``@``, ``eigh``), which are bitwise
reproducible for the same library on the same kind of CPU; ranks on
heterogeneous hosts should pin the BLAS kernel (e.g. ``OPENBLAS_CORETYPE``) if
the relays' results must agree bit for bit.

Default lambda
--------------
``DEFAULT_LAMBDA = 1e-4``. 5-fold CV (:func:`cross_validation_errors`, 40
iterations, inner = 10, frac = 0.5) on the digits tasks of
:mod:`hmtl_mpi.learning.datasets` puts 1e-4 and 1e-5 within noise of each other and
everything from 1e-3 up clearly worse (Sigma = I/K at the start makes the
effective per-task regulariser K * lambda). Mean CV error of 1e-4 vs 1e-5:
K = 10, seeds 0-2: 3.29 % vs 3.48 % (1e-4 best for seeds 0 and 2); K = 20,
seeds 0-2: 4.17 % vs 4.13 % (1e-4 best for seed 2); K = 30 and K = 40, seed 0:
4.84 % vs 4.92 % and 6.20 % vs 6.31 %. 1e-4 is the better choice on average and
the larger, faster-converging of the two; ``--cv`` reruns the selection.

``DEFAULT_INNER = 10`` (iterations between task-relationship refreshes): with
the seed paper's 150 rounds that is 15 refreshes; the reference driver's 100
would refresh once in 150 rounds and never within a 40-iteration run.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np

from .datasets import Task

__all__ = [
    "LAMBDA_GRID",
    "DEFAULT_LAMBDA",
    "DEFAULT_INNER",
    "EIG_FLOOR",
    "sdca_local_update",
    "sdca_local_update_reference",
    "global_update",
    "refresh_task_relationship",
    "primal_objective",
    "dual_objective",
    "duality_gap",
    "task_test_error",
    "MochaLearner",
    "run_in_process",
    "cross_validation_errors",
    "cross_validate_lambda",
]

LAMBDA_GRID: tuple[float, ...] = (1e-5, 1e-4, 1e-3, 1e-2, 0.1, 1.0, 10.0)
DEFAULT_LAMBDA = 1e-4
DEFAULT_INNER = 10
EIG_FLOOR = 1e-7


# --------------------------------------------------------------------------
# Local update (eq. 2): SDCA on user t's data-local subproblem.
# --------------------------------------------------------------------------

def _check_local_inputs(X, y, alpha, w, perm):
    X = np.ascontiguousarray(X, dtype=np.float64)
    y = np.ascontiguousarray(y, dtype=np.float64)
    alpha = np.array(alpha, dtype=np.float64, copy=True, order="C")
    w = np.ascontiguousarray(w, dtype=np.float64)
    perm = np.ascontiguousarray(perm, dtype=np.int64)
    if X.ndim != 2:
        raise ValueError(f"X must be 2-D (n_t x d), got shape {X.shape}")
    n, d = X.shape
    if y.shape != (n,) or alpha.shape != (n,):
        raise ValueError(f"y and alpha must have shape ({n},), got {y.shape} and {alpha.shape}")
    if w.shape != (d,):
        raise ValueError(f"w must have shape ({d},), got {w.shape}")
    if perm.shape != (n,):
        raise ValueError(f"perm must be a permutation of range({n}), got shape {perm.shape}")
    if n > 0 and (perm.min() < 0 or perm.max() >= n):
        raise ValueError(f"perm entries must lie in [0, {n})")
    return X, y, alpha, w, perm


def sdca_local_update_reference(X, y, alpha, w, sigma_tt, rho, lam, n_steps, perm):
    """User t's local update, docs/mocha.md "Users" (eq. 2), in plain NumPy/Python.

    Runs ``n_steps`` (H_t = floor(n_t * frac)) SDCA coordinate steps on points
    ``perm[s % n_t]`` starting from dw = db = 0; each step computes u, g, the
    clipped alpha and the dw, db increments of docs/mocha.md. Returns
    ``(db, alpha_new)``: db is the IV v_t (float64 d-vector), alpha_new the
    updated dual variables (the input ``alpha`` is not modified).
    Reference for :func:`sdca_local_update`; same arithmetic, same order.
    """
    X, y, alpha, w, perm = _check_local_inputs(X, y, alpha, w, perm)
    n, d = X.shape
    sigma_tt = float(sigma_tt)
    rho = float(rho)
    lam = float(lam)
    dw = np.zeros(d)
    db = np.zeros(d)
    if n == 0:
        return db, alpha
    lam_n = lam * n
    for s in range(int(n_steps)):
        idx = perm[s % n]
        x = X[idx]
        yi = y[idx]
        alpha_old = alpha[idx]
        xx = float(np.dot(x, x))
        if xx > 0.0:
            u = yi * (float(np.dot(x, w)) + rho * float(np.dot(x, dw)))
            g = lam_n * (1.0 - u) / (sigma_tt * rho * xx) + alpha_old * yi
            a = min(1.0, max(0.0, g))
        else:
            a = 1.0
        alpha_new = yi * a
        alpha[idx] = alpha_new
        delta = alpha_new - alpha_old
        if delta != 0.0:
            dw += (sigma_tt * delta / lam_n) * x
            db += (delta / n) * x
    return db, alpha


def _sdca_steps(X, y, alpha, w, sigma_tt, rho, lam, n_steps, perm):  # pragma: no cover - compiled
    """The SDCA steps as numba compiles them (:func:`compiled_kernel`); updates alpha in place."""
    n, d = X.shape
    dw = np.zeros(d)
    db = np.zeros(d)
    if n == 0:
        return db
    lam_n = lam * n
    for s in range(n_steps):
        idx = perm[s % n]
        x = X[idx]
        yi = y[idx]
        alpha_old = alpha[idx]
        xx = np.dot(x, x)
        if xx > 0.0:
            u = yi * (np.dot(x, w) + rho * np.dot(x, dw))
            g = lam_n * (1.0 - u) / (sigma_tt * rho * xx) + alpha_old * yi
            a = min(1.0, max(0.0, g))
        else:
            a = 1.0
        alpha_new = yi * a
        alpha[idx] = alpha_new
        delta = alpha_new - alpha_old
        if delta != 0.0:
            cw = sigma_tt * delta / lam_n
            cb = delta / n
            for j in range(d):
                dw[j] += cw * x[j]
            for j in range(d):
                db[j] += cb * x[j]
    return db


_COMPILED = None
KERNELS = ("numpy", "numba")


def compiled_kernel():
    """:func:`_sdca_steps` compiled by numba (imported here, on first use only: importing
    numba costs a rank about a second of CPU, which only long runs win back; cached
    on disk by numba, in ``__pycache__`` or its user-wide cache when that is read-only)."""
    global _COMPILED
    if _COMPILED is None:
        from numba import njit  # local: numba costs ~1 s to import; only where it pays
        _COMPILED = njit(cache=True)(_sdca_steps)
    return _COMPILED


def sdca_local_update(X, y, alpha, w, sigma_tt, rho, lam, n_steps, perm):
    """User t's local update, docs/mocha.md "Users" (eq. 2), numba-compiled.

    Same contract and same arithmetic as :func:`sdca_local_update_reference`
    (u, g, clip, dw, db per coordinate step, sequential over the points
    ``perm[s % n_t]``, s < n_steps); returns ``(db, alpha_new)`` with db the IV
    v_t (float64, C-contiguous, shape (d,)). Deterministic given its inputs.
    """
    X, y, alpha, w, perm = _check_local_inputs(X, y, alpha, w, perm)
    db = compiled_kernel()(X, y, alpha, w, float(sigma_tt), float(rho), float(lam),
                           int(n_steps), perm)
    return db, alpha


LOCAL_UPDATE = {"numpy": sdca_local_update_reference, "numba": sdca_local_update}
# Seconds one reference SDCA step takes, a + b d (bench mocha: 0.53 ms for 130 steps at
# d = 64, 1.08 ms for 187 steps at d = 784), and what numba costs a rank before its
# first step (import and a cached compile, BENCHMARKS.md): "auto" picks numba only for
# runs whose reference local updates would take longer than that.
REFERENCE_STEP_S = (4.0e-6, 2.3e-9)
NUMBA_START_S = 1.5


def choose_kernel(kernel: str, iterations: int, n_steps: int, dim: int) -> str:
    """``numpy`` or ``numba`` for ``--local-kernel`` (``auto``: the faster for the whole run,
    from :data:`REFERENCE_STEP_S` and :data:`NUMBA_START_S`). Both give identical bits."""
    if kernel != "auto":
        return kernel
    a, b = REFERENCE_STEP_S
    reference_s = iterations * n_steps * (a + b * dim)
    return "numba" if reference_s > NUMBA_START_S else "numpy"


# --------------------------------------------------------------------------
# Global update (eq. 3) and task-relationship refresh.
# --------------------------------------------------------------------------

def global_update(W, dB, Sigma, lam):
    """Global update, eq. 3 / docs/mocha.md: returns ``W + dB @ Sigma / lam``.

    W and dB are d x K (column t of dB is user t's IV v_t), Sigma is K x K.
    """
    W = np.asarray(W, dtype=np.float64)
    dB = np.asarray(dB, dtype=np.float64)
    Sigma = np.asarray(Sigma, dtype=np.float64)
    if W.shape != dB.shape or W.ndim != 2 or Sigma.shape != (W.shape[1], W.shape[1]):
        raise ValueError(f"shapes W {W.shape}, dB {dB.shape}, Sigma {Sigma.shape} do not match")
    return W + (dB @ Sigma) / float(lam)


def refresh_task_relationship(W):
    """Task-relationship refresh of docs/mocha.md (every ``inner`` iterations).

    A = W^T W with eigenvalues below 1e-7 raised to 1e-7; Sigma =
    sqrtm(A) / trace(sqrtm(A)) (sqrtm via ``eigh``, made exactly symmetric);
    rho = max_t (sum_t' |Sigma_tt'|) / Sigma_tt, a scalar >= 1.
    Returns ``(Sigma, rho)``; Omega = inv(Sigma) is not needed by the updates.
    """
    W = np.asarray(W, dtype=np.float64)
    A = W.T @ W
    A = 0.5 * (A + A.T)
    evals, V = np.linalg.eigh(A)
    evals = np.maximum(evals, EIG_FLOOR)
    sq = (V * np.sqrt(evals)) @ V.T
    sq = 0.5 * (sq + sq.T)
    Sigma = sq / np.trace(sq)
    rho = float(np.max(np.sum(np.abs(Sigma), axis=1) / np.diag(Sigma)))
    return Sigma, rho


# --------------------------------------------------------------------------
# Objectives and errors.
# --------------------------------------------------------------------------

def primal_objective(W, Xs: Sequence[np.ndarray], ys: Sequence[np.ndarray], Sigma, lam):
    """Primal P(W) of docs/mocha.md "Objective" (``util/compute_primal.m``).

    sum_t mean_i max(0, 1 - y_ti x_ti^T w_t) + (lambda/2) tr(W Omega W^T),
    with Omega = Sigma^{-1} applied through a linear solve.
    """
    W = np.asarray(W, dtype=np.float64)
    loss = 0.0
    for t, (X, y) in enumerate(zip(Xs, ys)):
        if len(y):
            loss += float(np.mean(np.maximum(0.0, 1.0 - y * (X @ W[:, t]))))
    OmegaWt = np.linalg.solve(np.asarray(Sigma, dtype=np.float64), W.T)  # Omega W^T, K x d
    return loss + 0.5 * float(lam) * float(np.sum(W.T * OmegaWt))


def dual_objective(alphas: Sequence[np.ndarray], Xs, ys, Sigma, lam):
    """Dual D(alpha) = sum_t mean_i a_ti - (1/(2 lambda)) tr(B Sigma B^T).

    a_ti = alpha_ti y_ti, b_t = X_t^T alpha_t / n_t. Equals the reference's
    ``compute_dual.m`` whenever W = B Sigma / lambda (i.e. between refreshes),
    and is a lower bound on min_W P(W) for the given Sigma in every case.
    """
    Sigma = np.asarray(Sigma, dtype=np.float64)
    cols = []
    total_a = 0.0
    for a, X, y in zip(alphas, Xs, ys):
        n = len(y)
        if n:
            total_a += float(np.mean(np.asarray(a) * y))
            cols.append(X.T @ a / n)
        else:
            cols.append(np.zeros(X.shape[1]))
    B = np.column_stack(cols)
    return total_a - float(np.sum((B @ Sigma) * B)) / (2.0 * float(lam))


def duality_gap(W, alphas, Xs, ys, Sigma, lam):
    """P(W) - D(alpha); >= 0, and -> 0 as MOCHA converges for a fixed Sigma."""
    return primal_objective(W, Xs, ys, Sigma, lam) - dual_objective(alphas, Xs, ys, Sigma, lam)


def task_test_error(w, X, y):
    """0/1 error of sign(X w) against y in {-1, +1} (sign(0) counts as wrong)."""
    y = np.asarray(y, dtype=np.float64)
    if len(y) == 0:
        return 0.0
    pred = np.sign(np.asarray(X, dtype=np.float64) @ np.asarray(w, dtype=np.float64))
    return float(np.mean(pred != y))


# --------------------------------------------------------------------------
# Learner adapter driven by the MPI runtime.
# --------------------------------------------------------------------------

def _task_arrays(task):
    X_tr = np.ascontiguousarray(task.X_train, dtype=np.float64)
    y_tr = np.ascontiguousarray(task.y_train, dtype=np.float64)
    X_te = np.ascontiguousarray(task.X_test, dtype=np.float64)
    y_te = np.ascontiguousarray(task.y_test, dtype=np.float64)
    return X_tr, y_tr, X_te, y_te


class MochaLearner:
    """MOCHA as the hierarchical runtime's learner (seed paper Section V).

    Every rank builds one with the same arguments; a user rank calls only
    :meth:`local_update` for its k (keeping user k's alpha and permutation RNG
    ``np.random.default_rng([seed, k])`` here), a relay/server rank calls only
    :meth:`global_update`. Both are deterministic, so all ranks agree bitwise.

    Model message of user k (``model_len = d + 2``): ``[w_k, Sigma_kk, rho]``.
    IV of user k (``dim = d``): v_k = db, float64. The last ``extra_len = 2``
    values change only when Sigma and rho are refreshed (:meth:`extras_changed`),
    so the runtime sends them only then; every other iteration the downlink
    carries w_k alone, an IV-sized vector, as in the paper's load accounting.
    """

    def __init__(self, tasks, lam: float = DEFAULT_LAMBDA, inner: int = DEFAULT_INNER,
                 frac: float = 0.5, seed: int = 0, kernel: str = "numpy", K: int | None = None,
                 dim: int | None = None):
        """``tasks``: all K tasks (a list), or the ones this rank needs as a dict user ->
        task with ``K`` and ``dim`` given (a relay needs none, a user its own: the
        runtime reads the data once, on rank 0, and sends each rank its share).
        ``kernel``: the local update's implementation, ``numpy`` or ``numba``
        (identical results)."""
        if isinstance(tasks, dict):
            if K is None or dim is None:
                raise ValueError("MochaLearner with a dict of tasks needs K and dim")
            held = {int(k): t for k, t in tasks.items()}
        else:
            held = dict(enumerate(tasks))
            K = len(held)
        if K < 1:
            raise ValueError("MochaLearner needs at least one task")
        if kernel not in LOCAL_UPDATE:
            raise ValueError(f"kernel must be one of {', '.join(KERNELS)}, got {kernel!r}")
        if not lam > 0:
            raise ValueError(f"lam must be > 0, got {lam}")
        if int(inner) < 1:
            raise ValueError(f"inner must be >= 1, got {inner}")
        if not frac > 0:
            raise ValueError(f"frac must be > 0, got {frac}")
        self._data = {k: _task_arrays(t) for k, t in held.items()}
        dims = ({X.shape[1] for X, _, _, _ in self._data.values()}
                | {Xt.shape[1] for _, _, Xt, _ in self._data.values()}
                | ({int(dim)} if dim is not None else set()))
        if len(dims) != 1:
            raise ValueError(f"all tasks must have the same number of features, got {sorted(dims)}")
        for k, (_, y_tr, _, y_te) in self._data.items():
            if not (np.all(np.abs(y_tr) == 1.0) and np.all(np.abs(y_te) == 1.0)):
                raise ValueError(f"task {k}: labels must be in {{-1, +1}}")
        self.lam = float(lam)
        self.inner = int(inner)
        self.frac = float(frac)
        self.seed = int(seed)
        self.kernel = kernel
        self._local_update = LOCAL_UPDATE[kernel]
        self.K: int = int(K)
        self.dim: int = dims.pop()
        self.model_len: int = self.dim + 2
        self.extra_len: int = 2
        self.evaluates = True                  # test errors and SVM baselines are reported
        self.n_steps = {k: int(math.floor(len(y_tr) * self.frac))
                        for k, (_, y_tr, _, _) in self._data.items()}
        # global state (meaningful on the rank running global_update)
        self.W = np.zeros((self.dim, self.K))
        self.Sigma = np.eye(self.K) / self.K
        self.rho = 1.0
        # local state, per user (meaningful on user k's rank)
        self.alphas = {k: np.zeros(len(y_tr)) for k, (_, y_tr, _, _) in self._data.items()}
        self._rngs: dict[int, np.random.Generator] = {}
        self._last_iteration: dict[int, int] = {}
        self._baselines: dict | None = None

    # -- explicit state (checkpoints) ---------------------------------------
    def state(self) -> dict:
        """Everything that changes while training, as arrays: the global state (W, Sigma,
        rho) and, per user held here, its dual variables, its permutation stream and the
        last iteration it ran. :meth:`load_state` puts it back bit for bit."""
        out = {"W": self.W, "Sigma": self.Sigma, "rho": np.array(self.rho)}
        for k, alpha in self.alphas.items():
            out[f"alpha/{k}"] = alpha
        for k, rng in self._rngs.items():
            out[f"rng/{k}"] = np.frombuffer(json.dumps(rng.bit_generator.state).encode(),
                                            dtype=np.uint8)
        for k, last in self._last_iteration.items():
            out[f"last/{k}"] = np.array(last)
        return out

    def load_state(self, state: dict) -> None:
        self.W = np.array(state["W"], dtype=np.float64)
        self.Sigma = np.array(state["Sigma"], dtype=np.float64)
        self.rho = float(state["rho"])
        for key, value in state.items():
            kind, _, k = key.partition("/")
            if kind == "alpha":
                self.alphas[int(k)] = np.array(value, dtype=np.float64)
            elif kind == "rng":
                rng = np.random.default_rng([self.seed, int(k)])
                rng.bit_generator.state = json.loads(bytes(value).decode())
                self._rngs[int(k)] = rng
            elif kind == "last":
                self._last_iteration[int(k)] = int(value)

    # -- messages ---------------------------------------------------------
    def _message(self, w, sigma_kk, rho):
        msg = np.empty(self.model_len)
        msg[: self.dim] = w
        msg[self.dim] = sigma_kk
        msg[self.dim + 1] = rho
        return msg

    def _check_k(self, k):
        k = int(k)
        if not 0 <= k < self.K:
            raise IndexError(f"user index {k} out of range [0, {self.K})")
        return k

    def initial_model(self, k) -> np.ndarray:
        """User k's first model message: w_k = 0, Sigma_kk = 1/K, rho = 1."""
        self._check_k(k)
        return self._message(0.0, 1.0 / self.K, 1.0)

    def models(self) -> np.ndarray:
        """Current model messages of all users, (K, d + 2): row k = [w_k, Sigma_kk, rho]."""
        out = np.empty((self.K, self.model_len))
        out[:, : self.dim] = self.W.T
        out[:, self.dim] = np.diag(self.Sigma)
        out[:, self.dim + 1] = self.rho
        return out

    def task(self, k):
        """User k's data as a :class:`hmtl_mpi.learning.datasets.Task`, if this learner holds it."""

        return Task(*self._data[self._check_k(k)])

    def warm_up(self) -> None:
        """Compile (or load from numba's cache) the SDCA kernel outside any timed phase,
        on the ranks that run local updates with ``kernel="numba"``."""
        if self.kernel != "numba" or not self._data:
            return
        X = np.ones((1, self.dim))
        sdca_local_update(X, np.ones(1), np.zeros(1), np.zeros(self.dim), 1.0, 1.0, self.lam, 1,
                          np.zeros(1, dtype=np.int64))

    # -- eq. 2 ------------------------------------------------------------
    def local_update(self, k, iteration, model) -> np.ndarray:
        """User k's local update (eq. 2): H_k SDCA steps, returns the IV v_k = db.

        ``model`` is user k's model message [w_k, Sigma_kk, rho]. A fresh
        permutation is drawn from ``default_rng([seed, k])`` on every call, so
        calls for one user must come once per iteration, in order.
        """
        k = self._check_k(k)
        iteration = int(iteration)
        last = self._last_iteration.get(k)
        if last is not None and iteration != last + 1:
            raise ValueError(f"user {k}: local update for iteration {iteration} after {last}; "
                             "iterations must be consecutive (the permutation RNG is sequential)")
        model = np.asarray(model, dtype=np.float64)
        if model.shape != (self.model_len,):
            raise ValueError(f"model message must have shape ({self.model_len},), got {model.shape}")
        X, y, _, _ = self._data[k]
        rng = self._rngs.get(k)
        if rng is None:
            rng = self._rngs[k] = np.random.default_rng([self.seed, k])
        perm = rng.permutation(len(y))
        db, alpha = self._local_update(X, y, self.alphas[k], model[: self.dim], model[self.dim],
                                       model[self.dim + 1], self.lam, self.n_steps[k], perm)
        self.alphas[k] = alpha
        self._last_iteration[k] = iteration
        return np.ascontiguousarray(db, dtype=np.float64)

    # -- eq. 3 ------------------------------------------------------------
    def global_update(self, iteration, ivs) -> np.ndarray:
        """Global update (eq. 3) from all IVs; refreshes Sigma, rho when (iteration+1) % inner == 0.

        ``ivs`` is (K, d) with row k = v_k. Returns the model messages (K, d + 2).
        """
        ivs = np.asarray(ivs, dtype=np.float64)
        if ivs.shape != (self.K, self.dim):
            raise ValueError(f"ivs must have shape ({self.K}, {self.dim}), got {ivs.shape}")
        self.W = global_update(self.W, ivs.T, self.Sigma, self.lam)
        if (int(iteration) + 1) % self.inner == 0:
            self.Sigma, self.rho = refresh_task_relationship(self.W)
        return self.models()

    def extras_changed(self, iteration) -> bool:
        """Whether the global update of ``iteration`` refreshed Sigma_kk and rho."""
        return (int(iteration) + 1) % self.inner == 0

    # -- evaluation ---------------------------------------------------------
    def test_error(self, k, model) -> float:
        """User k's 0/1 test error for the w_k in its model message."""
        k = self._check_k(k)
        model = np.asarray(model, dtype=np.float64)
        _, _, X_te, y_te = self._data[k]
        return task_test_error(model[: self.dim], X_te, y_te)

    def objectives(self) -> tuple[float, float]:
        """(P(W), D(alpha)) for the in-process state (all users' alpha held here)."""
        data = [self._data[k] for k in range(self.K)]
        Xs = [d[0] for d in data]
        ys = [d[1] for d in data]
        alphas = [self.alphas[k] for k in range(self.K)]
        return (primal_objective(self.W, Xs, ys, self.Sigma, self.lam),
                dual_objective(alphas, Xs, ys, self.Sigma, self.lam))

    def baselines(self) -> dict:
        """Local (one linear SVM per task) and global (one SVM on all tasks) baselines.

        Both are scikit-learn ``LinearSVC(loss="hinge", fit_intercept=False)``,
        the reference's ``simple_svm`` objective (1/n) sum hinge + (lambda/2)||w||^2
        with C = 1 / (lambda n); lambda per method by 5-fold CV over
        :data:`LAMBDA_GRID` (mean per-task error, strided folds). Errors are the
        mean over tasks of each task's 0/1 test error. Cached after the first call.
        """
        if self._baselines is None:
            self._baselines = cached_baselines([self._data[k] for k in range(self.K)])
        return dict(self._baselines)


def _fit_svm(X, y, lam):
    """Linear SVM without bias, (1/n) sum hinge + (lambda/2)||w||^2, via LinearSVC with C = 1/(lambda n).

    A training set holding a single class (possible only for tiny tasks) gets
    w = y_0 * mean(x), which predicts that class, as the hinge minimiser would.
    """

    # local: scikit-learn costs ~0.9 s to import, only for the baselines
    from sklearn.exceptions import ConvergenceWarning

    # local: scikit-learn costs ~0.9 s to import, only for the baselines
    from sklearn.svm import LinearSVC

    if len(y) == 0:
        return np.zeros(X.shape[1])
    if len(np.unique(y)) < 2:
        return y[0] * X.mean(axis=0)
    clf = LinearSVC(C=1.0 / (lam * len(y)), loss="hinge", fit_intercept=False, dual=True,
                    max_iter=5000, tol=1e-4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(X, y)
    return clf.coef_.ravel().astype(np.float64)


def _local_errors(data, lam):
    return [task_test_error(_fit_svm(X, y, lam), Xt, yt) for X, y, Xt, yt in data]


def _global_errors(data, lam):
    w = _fit_svm(np.vstack([d[0] for d in data]), np.concatenate([d[1] for d in data]), lam)
    return [task_test_error(w, Xt, yt) for _, _, Xt, yt in data]


def _strided_folds(data, folds):
    """The reference's CV folds: fold f holds out points f, f+folds, f+2 folds, ... of every task."""
    for f in range(folds):
        fold = []
        for X, y, _, _ in data:
            te = np.arange(f, len(y), folds)
            tr = np.setdiff1d(np.arange(len(y)), te)
            fold.append((X[tr], y[tr], X[te], y[te]))
        yield fold


def _cv_best(data, errors_fn, grid=LAMBDA_GRID, folds=5):
    scores = np.zeros(len(grid))
    for fold in _strided_folds(data, folds):
        for i, lam in enumerate(grid):
            scores[i] += np.mean(errors_fn(fold, lam))
    return float(grid[int(np.argmin(scores))])


def cache_root() -> Path | None:
    """The folder of the job's caches: ``$HMTL_CACHE`` or ``$XDG_CACHE_HOME/hmtl_mpi``
    (default ``~/.cache/hmtl_mpi``); None when ``HMTL_CACHE`` is empty (no cache)."""
    root = os.environ.get("HMTL_CACHE")
    if root == "":
        return None
    if root is None:
        return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "hmtl_mpi"
    return Path(root)


def baseline_cache_path(data) -> Path | None:
    """Where the baselines of these data are cached (:func:`cache_root`), one JSON file
    named by a SHA-256 of the data, the lambda grid and scikit-learn's version (read from
    its installed metadata: importing scikit-learn costs ~0.9 s, which a cached run no
    longer pays); None without a cache."""
    import importlib.metadata  # local: it imports email, zipfile...; only rank 0 at the end
    root = cache_root()
    if root is None:
        return None
    try:
        version = importlib.metadata.version("scikit-learn")
    except importlib.metadata.PackageNotFoundError:
        version = "not installed"
    h = hashlib.sha256(f"svm-baselines {LAMBDA_GRID} sklearn {version}".encode())
    for arrays in data:
        for a in arrays:
            h.update(np.ascontiguousarray(a, dtype=np.float64).tobytes())
            h.update(str(a.shape).encode())
    return Path(root) / f"baselines-{h.hexdigest()[:32]}.json"


def cached_baselines(data) -> dict:
    """:func:`_svm_baselines`, computed once per data set and kept on disk (they take
    seconds: 7 lambdas x 5 folds x (K + 1) SVM fits). An unreadable or unwritable cache
    is ignored; the file is written atomically."""

    path = baseline_cache_path(data)
    if path is not None and path.is_file():
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            pass
    result = _svm_baselines(data)
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(result))
            os.replace(tmp, path)
        except OSError:
            pass
    return result


def _svm_baselines(data):
    lam_local = _cv_best(data, _local_errors)
    lam_global = _cv_best(data, _global_errors)
    per_local = _local_errors(data, lam_local)
    per_global = _global_errors(data, lam_global)
    return {
        "baseline_local_error": float(np.mean(per_local)),
        "baseline_global_error": float(np.mean(per_global)),
        "per_task_local": [float(e) for e in per_local],
        "per_task_global": [float(e) for e in per_global],
        "local_lambda": lam_local,
        "global_lambda": lam_global,
    }


# --------------------------------------------------------------------------
# In-process driver and cross-validation.
# --------------------------------------------------------------------------

def run_in_process(learner: MochaLearner, iterations: int, start: int = 0) -> list[float]:
    """Run MOCHA in one process: each iteration, local_update for every user, then global_update.

    Returns the mean (over users) test error after each iteration.
    """
    models = np.stack([learner.initial_model(k) for k in range(learner.K)]) if start == 0 \
        else learner.models()
    history = []
    for it in range(start, start + int(iterations)):
        ivs = np.stack([learner.local_update(k, it, models[k]) for k in range(learner.K)])
        models = learner.global_update(it, ivs)
        history.append(float(np.mean([learner.test_error(k, models[k]) for k in range(learner.K)])))
    return history


class _Split:
    __slots__ = ("X_train", "y_train", "X_test", "y_test")

    def __init__(self, X_train, y_train, X_test, y_test):
        self.X_train, self.y_train, self.X_test, self.y_test = X_train, y_train, X_test, y_test


def cross_validation_errors(tasks, grid=LAMBDA_GRID, folds: int = 5, iterations: int = 40,
                            seed: int = 0, inner: int = DEFAULT_INNER, frac: float = 0.5) -> dict:
    """Mean held-out error of MOCHA after ``iterations`` for each lambda in ``grid``.

    ``folds``-fold CV on the training sets (the reference's ``cross_val_1.m``:
    strided folds, the score is the mean over folds of the mean per-task error).
    """
    data = [_task_arrays(t) for t in tasks]
    scores = {float(lam): 0.0 for lam in grid}
    for fold in _strided_folds(data, folds):
        split = [_Split(*f) for f in fold]
        for lam in grid:
            learner = MochaLearner(split, lam=lam, inner=inner, frac=frac, seed=seed)
            scores[float(lam)] += run_in_process(learner, iterations)[-1] / folds
    return scores


def cross_validate_lambda(tasks, grid=LAMBDA_GRID, folds: int = 5, iterations: int = 40,
                          seed: int = 0, inner: int = DEFAULT_INNER, frac: float = 0.5) -> float:
    """The lambda of ``grid`` with the lowest ``folds``-fold CV error of MOCHA (first on ties)."""
    scores = cross_validation_errors(tasks, grid, folds, iterations, seed, inner, frac)
    return min(scores, key=lambda lam: (scores[lam], list(scores).index(lam)))
