"""Lossless, checked: IV and model digests compared across ranks, after the timed part.

Every rank hashes (SHA-256) what its part reports (see :class:`hmtl_mpi.schemes.base.Part`):
the IVs it computed, the IVs it holds after the exchange, the models it computed
in the global update and the models it uses for its local updates. Rank 0
gathers the digests and checks that every copy of every IV and of every model is
the same bit for bit. Nothing here is timed: it runs between iterations.

Each rank sends only the digests it has, as records (what, user, digest): a user
rank sends one or two, a relay K + 1, so rank 0 receives O(H K) records and no
rank builds a table over all users per rank (which at K = 10,000 users in one
process, ``--transport inprocess``, was 3 GB per check).
"""

from __future__ import annotations

import hashlib

import numpy as np

DIGEST = 32
RECORD = np.dtype([("what", np.uint8), ("k", np.int64), ("digest", np.uint8, DIGEST)])
COMPUTED, HELD, FINAL, USED = 0, 1, 2, 3          # the record's "what"
ERROR = np.dtype([("k", np.int64), ("error", np.float64)])


def sha(buf) -> np.ndarray:
    """SHA-256 of an array's bytes, as 32 uint8."""
    return np.frombuffer(hashlib.sha256(np.ascontiguousarray(buf).tobytes()).digest(), np.uint8)


def _records(what: int, items) -> np.ndarray:
    """Records (what, k, SHA-256 of the value) of the (k, value) pairs ``items``."""
    items = list(items)
    out = np.zeros(len(items), dtype=RECORD)
    out["what"] = what
    for n, (k, value) in enumerate(items):
        out["k"][n] = k
        out["digest"][n] = sha(value)
    return out


def _gather(endpoint, parts: list, dtype, what: str):
    """Every rank's records, concatenated in rank order on rank 0 (None elsewhere)."""
    mine = np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)
    got = endpoint.gather_bytes(mine.view(np.uint8), what)
    if got is None:
        return None
    return np.concatenate([np.frombuffer(b.tobytes(), dtype=dtype) for b in got])


def _agreed(records: np.ndarray, n: int):
    """The one digest per k in 0..n-1 that every record of k agrees on; None if some k
    has no record or two records of one k differ."""
    keys, first, inverse = np.unique(records["k"], return_index=True, return_inverse=True)
    if len(keys) != n or (n and (keys[0] != 0 or keys[-1] != n - 1)):
        return None
    agreed = records["digest"][first]
    if not (records["digest"] == agreed[inverse]).all():
        return None
    return agreed


def check_ivs(endpoint, part, K) -> bool:
    """Every IV, wherever it was computed and wherever it is held, is the same bit for bit."""
    parts = [_records(COMPUTED, part.computed_ivs().items())]
    held_ivs = part.held_ivs()
    if held_ivs is not None:
        parts.append(_records(HELD, enumerate(held_ivs)))
    table = _gather(endpoint, parts, RECORD, "IV digests")
    if table is None:
        return True
    sent = _agreed(table[table["what"] == COMPUTED], K)
    held = table[table["what"] == HELD]
    return (sent is not None and held.size > 0 and held.size % K == 0
            and bool((held["digest"] == sent[held["k"]]).all()))


def model_digests(endpoint, part, K):
    """SHA-256 of the final models in user order, and whether every model in use is intact
    (on rank 0; (None, None) elsewhere)."""
    parts = []
    models = part.final_models()
    if models is not None:
        parts.append(_records(FINAL, [*enumerate(models), (K, models)]))
    parts.append(_records(USED, part.models_in_use().items()))
    table = _gather(endpoint, parts, RECORD, "model digests")
    if table is None:
        return None, None
    final = table[table["what"] == FINAL]
    reference = _agreed(final, K + 1)
    if reference is None:       # two holders disagree (or none holds them): not intact
        whole = final["digest"][final["k"] == K]
        return (whole[0].tobytes().hex() if whole.size else ""), False
    used = table[table["what"] == USED]
    intact = bool((used["digest"] == reference[used["k"]]).all())
    return reference[K].tobytes().hex(), intact


def gather_accuracy(endpoint, part, K):
    """Test errors of the models in use, gathered to rank 0 (outside the timed phases):
    per task, the first rank's (in rank order) that evaluated it."""
    learner = part.job.learner
    mine = [(k, learner.test_error(k, model)) for k, model in part.models_in_use().items()]
    records = np.array([(k, np.nan if e is None else e) for k, e in mine], dtype=ERROR)
    table = _gather(endpoint, [records], ERROR, "test errors")
    if table is None:
        return None
    table = table[~np.isnan(table["error"])]
    per_task = np.full(K, np.nan)
    keys, first = np.unique(table["k"], return_index=True)
    per_task[keys] = table["error"][first]
    return {"mean_test_error": float(np.mean(per_task)), "per_task": [float(e) for e in per_task]}
