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
from .pipelined import Pipelines
from .tolerant import ToleratesSlowRelays


def segments(G: np.ndarray, users: np.ndarray, units: np.ndarray, D: int) -> tuple:
    """Every segment of round z as (relay, column into users, first unit), relays in
    increasing order within each user, each relay with ``units[i] > 0`` taking its units
    after the previous one's (docs/scheme.md, "Segments"); sorted by relay, then column.
    Raises DecodeError naming a user whose relays carry fewer than D units."""
    rel, col = np.nonzero(G[:, users])                 # by relay, then column
    keep = units[rel] > 0
    rel, col = rel[keep], col[keep]
    by_user = np.lexsort((rel, col))                   # by column, then relay
    carry = units[rel[by_user]]
    total = np.bincount(col, weights=units[rel], minlength=len(users)).astype(np.int64)
    short = np.flatnonzero(total < D)
    if len(short):
        k = int(users[short[0]])
        raise coding.DecodeError(f"user {k + 1}: its relays carry {total[short[0]]} of {D} units")
    ends = np.cumsum(carry)
    group_start = np.concatenate([[0], np.cumsum(np.bincount(col, minlength=len(users)))])[:-1]
    before = np.concatenate([[0], ends])[group_start]  # units of the users before this one
    first = np.empty(len(rel), dtype=np.int64)
    first[by_user] = ends - carry - before[col[by_user]]
    return rel, col, first


def round_layout(G: np.ndarray, rnd) -> coding.BlockLayout:
    """Round z as a coding block: relay i's input rows are its segments of N_i ∩ I_z."""
    H = G.shape[0]
    users = np.asarray(rnd.users, dtype=np.int64)
    units = np.array(rnd.units, dtype=np.int64)
    rel, col, first = segments(G, users, units, rnd.D)
    bounds = np.searchsorted(rel, np.arange(H + 1))
    rows = [np.stack([col[bounds[i]: bounds[i + 1]], first[bounds[i]: bounds[i + 1]]], axis=1)
            for i in range(H)]
    messages = np.where(units > 0, np.asarray(rnd.n, dtype=np.int64), 0)
    return coding.BlockLayout(label=f"round z = {rnd.z}", F=rnd.D, users=users, rows=rows,
                              width=units, messages=messages)


class Coded(ToleratesSlowRelays, Pipelines, CodedExchange):
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
        return dict(self.planned.to_dict(), scheme=self.name, **self.code_fields(),
                    **self.time_fields())

    def format_plan(self):
        return hplan.format_plan(self.planned) + "\n" + self.format_code()
