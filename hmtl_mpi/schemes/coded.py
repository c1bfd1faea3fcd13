"""The paper's hierarchical coded scheme (Hu, Li, Cheng, Wu; docs/scheme.md), round by round.

One coding block per round z (users I_z linked to exactly z relays, eq. 4),
planned by :func:`hmtl_mpi.planning.hierarchical.make_plan` (n_i^z of eq. 16, the LP P(z) of eq. 28,
exact alphas with a common denominator D_z). Each IV of the round is cut into D_z
units; relay i carries ``a_i D_z`` consecutive units of every v_k it knows, the
relays of k taking their units in increasing relay order (units past D_z are
padding), and sends ``n_i^z`` combinations of those segments (eq. 26). The
server broadcasts ``D_z (|I_z| - min_i |I_z ∩ N_i|)`` unit combinations (eq. 31,
32). Loads: Theorem 1, e.g. (8.5, 7) on the paper's Fig. 2 network.
"""

from __future__ import annotations

import numpy as np

from ..codes import coding
from ..planning import hierarchical as hplan
from .base import CodedExchange


def segment_starts(G: np.ndarray, users: np.ndarray, units: np.ndarray, D: int) -> np.ndarray:
    """first[i, c]: where relay i's segment of v_{users[c]} starts (relays in increasing order)."""
    H = G.shape[0]
    first = np.full((H, len(users)), -1, dtype=np.int64)
    for col, k in enumerate(users):
        start = 0
        for i in range(H):
            if G[i, k] and units[i] > 0:
                first[i, col] = start
                start += int(units[i])
        if start < D:
            raise coding.DecodeError(f"user {k + 1}: its relays carry {start} of {D} units")
    return first


def round_layout(G: np.ndarray, rnd) -> coding.BlockLayout:
    """Round z as a coding block: relay i's input rows are its segments of N_i ∩ I_z."""
    H = G.shape[0]
    users = np.asarray(rnd.users, dtype=np.int64)
    units = np.array(rnd.units, dtype=np.int64)
    first = segment_starts(G, users, units, rnd.D)
    rows, messages = [], np.zeros(H, dtype=np.int64)
    for i in range(H):
        if units[i] > 0:
            cols = [c for c, k in enumerate(users) if G[i, k]]
            rows.append(np.array([(c, first[i, c]) for c in cols], dtype=np.int64).reshape(-1, 2))
            messages[i] = int(rnd.n[i])
        else:
            rows.append(np.zeros((0, 2), dtype=np.int64))
    return coding.BlockLayout(label=f"round z = {rnd.z}", F=rnd.D, users=users, rows=rows,
                              width=units, messages=messages)


class Coded(CodedExchange):
    name = "coded"
    summary = ("the paper's hierarchical scheme: one coded round per user degree z, "
               "segment LPs P(z) (Theorem 1)")

    @classmethod
    def make_plan(cls, G, max_denominator=None):
        return hplan.make_plan(G, max_denominator or hplan.MAX_DENOMINATOR)

    @classmethod
    def layouts(cls, planned):
        return [round_layout(planned.G, rnd) for rnd in planned.rounds]

    def plan_dict(self):
        return dict(self.planned.to_dict(), scheme=self.name, **self.code_fields())

    def format_plan(self):
        return hplan.format_plan(self.planned) + "\n" + self.format_code()
