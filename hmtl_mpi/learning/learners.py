"""Learners: what users compute (local update -> IV) and what the global update does.

The runtime calls a learner through this interface only (every rank builds the
same learner from the same arguments, so all of it must be deterministic):

``K``, ``dim`` (float64 values per IV), ``model_len`` (float64 values per model
message), ``extra_len`` and ``extras_changed(iteration)`` (the message's last
``extra_len`` values change only in the iterations where ``extras_changed`` is
true, and are sent only then), ``initial_model(k)``, ``local_update(k, iteration, model) -> IV``
(eq. 2, on user k's rank), ``global_update(iteration, ivs) -> models`` (eq. 3,
``ivs`` is K x dim in user order; on every relay in the coded scheme, on the
server in the uncoded one), ``evaluates`` (whether test errors and baselines
mean anything), ``warm_up()`` (one-time compilation, before any
timed phase), ``test_error(k, model)`` (float or None), ``baselines()``
(dict, may be empty), and ``state()`` / ``load_state(state)``: everything that
changes while training, as a dict of arrays, put back bit for bit (checkpoints).
"""

from __future__ import annotations

import numpy as np

from .datasets import load_tasks
from .mocha import MochaLearner

DATASETS = ("digits", "mnist", "har", "synthetic")


class CommunicationLearner:
    """What the learners for communication work share: K models of ``dim`` values, no
    extras, nothing to compile, nothing to evaluate."""

    extra_len = 0
    evaluates = False

    def initial_model(self, k: int) -> np.ndarray:
        return np.zeros(self.model_len)

    def extras_changed(self, iteration: int) -> bool:
        return False

    def warm_up(self) -> None:
        """Nothing to compile."""

    def test_error(self, k: int, model: np.ndarray):
        return None

    def baselines(self) -> dict:
        return {}

    def state(self) -> dict:
        """What changes while training (checkpoints): nothing, unless a subclass says."""
        return {}

    def load_state(self, state: dict) -> None:
        """Put back what :meth:`state` returned."""


class SyntheticLearner(CommunicationLearner):
    """Random IVs and a fixed mixing global update, for communication work.

    User k's IV at iteration t is drawn from ``default_rng([seed, k, t])`` and
    shifted by 1e-3 times its current model, so every IV depends on the past.
    The global update keeps a K x dim state W and sets
    ``W <- 0.5 W + V + 0.1 mean_k(v_k)``: every model depends on every IV, so a
    single wrong bit anywhere changes the final model digest.
    """

    def __init__(self, K: int, dim: int, seed: int = 0):
        if dim < 1:
            raise ValueError(f"--dim must be at least 1, got {dim}")
        self.K, self.dim, self.model_len, self.seed = int(K), int(dim), int(dim), int(seed)
        self.W = None

    def local_update(self, k: int, iteration: int, model: np.ndarray) -> np.ndarray:
        rng = np.random.default_rng([self.seed, k, iteration])
        iv = rng.standard_normal(self.dim)
        iv += 1e-3 * model
        return iv

    def global_update(self, iteration: int, ivs: np.ndarray) -> np.ndarray:
        if self.W is None:
            self.W = np.zeros((self.K, self.dim))
        self.W *= 0.5
        self.W += ivs
        self.W += 0.1 * ivs.mean(axis=0)
        return self.W.copy()

    def state(self) -> dict:
        return {} if self.W is None else {"W": self.W}

    def load_state(self, state: dict) -> None:
        self.W = np.array(state["W"], dtype=np.float64) if "W" in state else None


class FixedIVLearner(CommunicationLearner):
    """Given IVs, unchanged every iteration, and a global update that keeps them: what
    ``plan --verify`` runs the exchange on (:mod:`hmtl_mpi.job.verify`), so that the IVs
    can be chosen for their awkward bit patterns (:func:`hmtl_mpi.codes.coding.special_ivs`)."""

    def __init__(self, ivs: np.ndarray):
        self.ivs = np.ascontiguousarray(ivs, dtype=np.float64)
        self.K, self.dim = self.ivs.shape
        self.model_len = self.dim

    def local_update(self, k: int, iteration: int, model: np.ndarray) -> np.ndarray:
        return self.ivs[k].copy()

    def global_update(self, iteration: int, ivs: np.ndarray) -> np.ndarray:
        return np.array(ivs, copy=True)


def make_learner(dataset: str, K: int, dim: int | None, seed: int = 0, tasks=None,
                 **options):
    """Build the learner for ``--dataset``.

    ``tasks``: the MOCHA tasks this rank needs (a dict user -> task, see
    :func:`hmtl_mpi.learning.datasets.pack_tasks`) when rank 0 read the data and sent them;
    None reads the data set here. ``dim`` is then the number of features.
    Options: ``data_dir``, ``har_tasks``, ``lam``, ``inner``, ``kernel`` (the local
    update's implementation, ``numpy`` or ``numba``).
    """
    if dataset == "synthetic":
        return SyntheticLearner(K, dim if dim is not None else 1000, seed)

    kwargs = {k: options[k] for k in ("lam", "inner", "kernel") if options.get(k) is not None}
    if tasks is not None:
        return MochaLearner(tasks, seed=seed, K=K, dim=dim, **kwargs)

    tasks = load_tasks(dataset, K, seed=seed, data_dir=options.get("data_dir"),
                       har_tasks=options.get("har_tasks", "sitting"))
    return MochaLearner(tasks, seed=seed, **kwargs)
