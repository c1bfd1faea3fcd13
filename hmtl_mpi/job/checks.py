"""Lossless, checked: IV and model digests compared across ranks, after the timed part.

Every rank hashes (SHA-256) what its part reports (see :class:`hmtl_mpi.schemes.base.Part`):
the IVs it computed, the IVs it holds after the exchange, the models it computed
in the global update and the models it uses for its local updates. Rank 0
gathers the tables and checks that every copy of every IV and of every model is
the same bit for bit. Nothing here is timed: it runs between iterations.
"""

from __future__ import annotations

import hashlib

import numpy as np

from ..vocabulary import WORLD

DIGEST = 32


def sha(buf) -> np.ndarray:
    """SHA-256 of an array's bytes, as 32 uint8."""
    return np.frombuffer(hashlib.sha256(np.ascontiguousarray(buf).tobytes()).digest(), np.uint8)


def gather_to_root(endpoint, arrays, what):
    """Gather same-shaped arrays from every rank to rank 0 (stacked by rank; None elsewhere)."""
    return [endpoint.gather(WORLD, a, 0, what) for a in arrays]


def _table(items: dict, K: int):
    """Digests of user -> array, and the mask of the users present."""
    table = np.zeros((K, DIGEST), dtype=np.uint8)
    mask = np.zeros(K, dtype=np.uint8)
    for k, value in items.items():
        table[k] = sha(value)
        mask[k] = 1
    return table, mask


def _consistent(tables, masks, K):
    """Per user, the one digest every rank that has it agrees on (None: disagreement or none)."""
    agreed = np.zeros((K, DIGEST), dtype=np.uint8)
    for k in range(K):
        have = np.flatnonzero(masks[:, k])
        if len(have) == 0 or not (tables[have, k] == tables[have[0], k]).all():
            return None
        agreed[k] = tables[have[0], k]
    return agreed


def check_ivs(endpoint, part, K) -> bool:
    """Every IV, wherever it was computed and wherever it is held, is the same bit for bit."""
    computed, cmask = _table(part.computed_ivs(), K)
    held_ivs = part.held_ivs()
    held = np.zeros((K, DIGEST), dtype=np.uint8)
    flag = np.zeros(1, dtype=np.uint8)
    if held_ivs is not None:
        held[:] = [sha(v) for v in held_ivs]
        flag[0] = 1
    tables = gather_to_root(endpoint, (computed, cmask, held, flag), "IV digests")
    if endpoint.rank != 0:
        return True
    computed, cmask, held, flag = tables
    sent = _consistent(computed, cmask, K)
    holders = np.flatnonzero(flag[:, 0])
    return sent is not None and len(holders) > 0 and all((held[r] == sent).all() for r in holders)


def model_digests(endpoint, part, K):
    """SHA-256 of the final models in user order, and whether every model in use is intact."""
    final = np.zeros((K + 1, DIGEST), dtype=np.uint8)
    flag = np.zeros(1, dtype=np.uint8)
    models = part.final_models()
    if models is not None:
        final[:K] = [sha(m) for m in models]
        final[K] = sha(models)
        flag[0] = 1
    used, umask = _table(part.models_in_use(), K)
    tables = gather_to_root(endpoint, (final, flag, used, umask), "model digests")
    if endpoint.rank != 0:
        return None, None
    final, flag, used, umask = tables
    holders = np.flatnonzero(flag[:, 0])
    reference = final[holders[0]]
    agree = all((final[r] == reference).all() for r in holders)
    intact = all((used[r, k] == reference[k]).all()
                 for r in range(len(used)) for k in np.flatnonzero(umask[r]))
    return reference[K].tobytes().hex(), bool(agree and intact)


def gather_accuracy(endpoint, part, K):
    """Test errors of the models in use, gathered to rank 0 (outside the timed phases)."""
    errs = np.full(K, np.nan)
    learner = part.job.learner
    for k, model in part.models_in_use().items():
        value = learner.test_error(k, model)
        errs[k] = np.nan if value is None else value
    (table,) = gather_to_root(endpoint, (errs,), "test errors")
    if endpoint.rank != 0:
        return None
    per_task = [float(table[np.flatnonzero(~np.isnan(table[:, k]))[0], k])
                if (~np.isnan(table[:, k])).any() else float("nan") for k in range(K)]
    return {"mean_test_error": float(np.mean(per_task)), "per_task": per_task}
