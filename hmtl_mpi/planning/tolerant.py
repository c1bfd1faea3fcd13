"""The straggler-tolerant exchange's planner (``--relay-stragglers S``; docs/tolerant.md).

The server must decode every IV that some relay lacks from the messages of the
first H - S relays to answer, whichever S relays are slow; it then broadcasts
combinations from which every relay decodes what it lacks. Pure module: no MPI.

Per block of users (the coded scheme: one block per round z, the users linked to
exactly z relays; the joint scheme: one block of all users), relay i sends L_i IVs'
worth of combinations of the IVs it holds. The loads are the optimum of the LP

    minimise    sum_i L_i
    subject to  sum_{i in W \\ T} L_i >= e(W)     for every relay set W and every
                                                 set T of S relays (T within W)
                0 <= L_i <= |N_i ∩ block|

where e(W) is the number of the block's users whose relays all lie in W. Every
constraint is necessary for any scheme (the server hears only W \\ T among the
relays that hold those users: a cut), and sufficient for random linear
combinations (Hall's condition on the decoding matrix's pattern), so the LP's
optimum is the least uplink of any exchange in which the server decodes from any
H - S relays. The LP's floats are made exact (denominators <= 64, every constraint
re-checked in integers); if that fails the block uses the *per-user MDS* loads
``L_i = sum_{k in N_i ∩ block} 1 / (r_k - S)``, which satisfy every constraint.

A user on at most S relays cannot be heard when those relays are the slow ones:
such topologies are refused naming the user (:class:`TolerantPlanError`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction
from itertools import combinations

import numpy as np

from .topology import OnTopology, validate

MAX_RELAYS = 12                  # the LP enumerates every relay subset and straggler set
MAX_DENOMINATOR = 64


class TolerantPlanError(ValueError):
    """A topology or S the tolerant exchange refuses; the message names the user or limit."""


@dataclass
class TolerantBlock:
    """One block's plan: its users, the per-relay loads (IVs) and F sub-packets per IV."""

    label: str
    users: np.ndarray              # 0-based users of the block
    loads: list                    # L_i (Fractions)
    F: int                         # sub-packets per IV: lcm of the loads' denominators
    source: str                    # "lp" or "per-user-mds"
    lp_optimum: float = float("nan")

    @property
    def units(self) -> list:
        """``F L_i``: combinations (of one sub-packet each) relay i sends."""
        return [int(x * self.F) for x in self.loads]


@dataclass
class TolerantPlan(OnTopology):
    G: np.ndarray
    S: int
    blocks: list
    dropped: np.ndarray            # users on every relay: never sent
    notes: list = field(default_factory=list)

    @property
    def uplink_load(self) -> Fraction:
        return sum((sum(b.loads, Fraction(0)) for b in self.blocks), Fraction(0))

    @property
    def downlink_load(self) -> Fraction:
        """Per block ``|users| - min_i |N_i ∩ users|``: what the relay knowing least lacks."""
        return sum((Fraction(downlink_ivs(self.G, b.users)) for b in self.blocks), Fraction(0))

    @property
    def uplink_lower_bound(self) -> Fraction:
        """W = all relays: any H - S relays carry every sent IV, so the loads add up to at
        least ``K' H / (H - S)`` (K' users not on every relay), averaging over the sets."""
        sent = sum(len(b.users) for b in self.blocks)
        return Fraction(sent * self.H, self.H - self.S)

    def to_dict(self) -> dict:
        return {"relay_stragglers": self.S,
                "tolerant_uplink_load": float(self.uplink_load),
                "tolerant_uplink_load_exact": str(self.uplink_load),
                "tolerant_downlink_load": float(self.downlink_load),
                "tolerant_uplink_lower_bound": float(self.uplink_lower_bound),
                "tolerant_blocks": [{"label": b.label, "users": [int(k) + 1 for k in b.users],
                                     "per_relay_uplink": [str(x) for x in b.loads],
                                     "F": b.F, "source": b.source} for b in self.blocks]}


def downlink_ivs(G: np.ndarray, users: np.ndarray) -> int:
    if len(users) == 0:
        return 0
    return int(len(users) - G[:, users].sum(axis=1).min())


def check_topology(G: np.ndarray, S: int) -> np.ndarray:
    """Validate G for S stragglers; the relays per user (r_k). Raises TolerantPlanError."""
    G = validate(np.asarray(G))
    H = G.shape[0]
    if not isinstance(S, (int, np.integer)) or S < 1:
        raise TolerantPlanError(f"--relay-stragglers must be an integer >= 1, got {S!r}")
    if S >= H:
        raise TolerantPlanError(f"--relay-stragglers {S}: the topology has H = {H} relays; "
                                f"at least one must answer (S <= {H - 1})")
    if H > MAX_RELAYS:
        raise TolerantPlanError(f"--relay-stragglers: the tolerant planner enumerates every "
                                f"relay subset; H = {H} relays is above its limit {MAX_RELAYS}")
    r = G.sum(axis=0).astype(int)
    short = np.flatnonzero(r < S + 1)
    if len(short):
        k = int(short[0])
        raise TolerantPlanError(
            f"--relay-stragglers {S}: user {k + 1} is linked to {int(r[k])} relay(s) "
            f"({', '.join(str(int(i) + 1) for i in np.flatnonzero(G[:, k]))}); every user needs "
            f"at least S + 1 = {S + 1}, else it is not heard when its relays are the slow ones")
    return r


def constraints(G: np.ndarray, users: np.ndarray, S: int) -> tuple:
    """(A, b): ``A @ L >= b`` for every relay set W with e(W) > 0 and straggler set T of
    min(S, |W|) relays of W: row = indicator of W \\ T, b = e(W)."""
    H = G.shape[0]
    weights = 1 << np.arange(H)
    masks = (G[:, users].astype(np.int64) * weights[:, None]).sum(axis=0)   # R_k as bits
    rows, rhs = [], []
    for W in range(1, 1 << H):
        e = int(np.count_nonzero((masks & ~W) == 0))
        if e == 0:
            continue
        members = [i for i in range(H) if W >> i & 1]
        for T in combinations(members, min(S, len(members))):
            row = np.zeros(H, dtype=np.int64)
            row[[i for i in members if i not in T]] = 1
            rows.append(row)
            rhs.append(e)
    if not rows:
        return np.zeros((0, H), dtype=np.int64), np.zeros(0, dtype=np.int64)
    A, b = np.array(rows), np.array(rhs, dtype=np.int64)
    A, idx = np.unique(A, axis=0, return_inverse=True)     # one row per W \ T, largest e
    best = np.zeros(len(A), dtype=np.int64)
    np.maximum.at(best, idx.reshape(-1), b)
    return A, best


def satisfied(A: np.ndarray, b: np.ndarray, loads) -> bool:
    """Every constraint, in exact integers (loads as Fractions)."""
    F = math.lcm(*[x.denominator for x in loads]) if loads else 1
    units = np.array([int(x * F) for x in loads], dtype=object)
    return all(int((A[j] * units).sum()) >= int(b[j]) * F for j in range(len(b)))


def per_user_mds(G: np.ndarray, users: np.ndarray, S: int) -> list:
    """``L_i = sum_{k in N_i ∩ users} 1 / (r_k - S)``: each IV cut into r_k - S pieces, an
    MDS code of length r_k over its relays (feasible for every constraint)."""
    r = G.sum(axis=0)
    return [sum((Fraction(1, int(r[k]) - S) for k in users if G[i, k]), Fraction(0))
            for i in range(G.shape[0])]


def plan_block(G: np.ndarray, users: np.ndarray, S: int, label: str) -> TolerantBlock:
    """The LP's loads for one block of users, exact, or the per-user MDS ones."""
    from scipy.optimize import linprog  # local: scipy's import is slow; only at plan time

    H = G.shape[0]
    users = np.asarray(users, dtype=np.int64)
    A, b = constraints(G, users, S)
    held = G[:, users].sum(axis=1).astype(float)
    res = linprog(np.ones(H), A_ub=-A, b_ub=-b, bounds=list(zip([0.0] * H, held)),
                  method="highs")
    if res.status == 0:
        loads = [Fraction(float(x)).limit_denominator(MAX_DENOMINATOR) for x in res.x]
        loads = [max(x, Fraction(0)) for x in loads]
        if satisfied(A, b, loads) and float(sum(loads)) <= res.fun * (1 + 1e-7) + 1e-9:
            F = math.lcm(*[x.denominator for x in loads])
            return TolerantBlock(label, users, loads, F, "lp", float(res.fun))
    loads = per_user_mds(G, users, S)
    F = math.lcm(*[x.denominator for x in loads])
    return TolerantBlock(label, users, loads, F, "per-user-mds",
                         float(res.fun) if res.status == 0 else float("nan"))


def make_tolerant_plan(G: np.ndarray, S: int, by_round: bool) -> TolerantPlan:
    """Blocks by round z (the coded scheme) or one block (joint); users on every relay are
    never sent. Raises TolerantPlanError naming the user or the limit."""
    G = np.asarray(G, dtype=np.uint8)
    r = check_topology(G, S)
    H = G.shape[0]
    dropped = np.flatnonzero(r == H)
    sent = np.flatnonzero(r < H)
    if by_round:
        groups = [(f"round z = {z}", sent[r[sent] == z]) for z in range(S + 1, H)]
    else:
        groups = [("joint block", sent)]
    blocks = [plan_block(G, users, S, label) for label, users in groups if len(users)]
    return TolerantPlan(G=G, S=S, blocks=blocks, dropped=dropped)


def format_tolerant_plan(tp: TolerantPlan) -> str:
    lines = [(f"  tolerant exchange, S = {tp.S} slow relay(s): the server decodes from the "
              f"first {tp.H - tp.S} of {tp.H} relays")]
    for b in tp.blocks:
        lines.append(f"    {b.label}: users {[int(k) + 1 for k in b.users]}, F = {b.F}, loads "
                     f"{[str(x) for x in b.loads]} ({b.source})")
    lines.append(f"    loads: uplink {tp.uplink_load} (lower bound {tp.uplink_lower_bound}), "
                 f"broadcast {tp.downlink_load} IVs per iteration (lower bound, Theorem 2)")
    return "\n".join(lines)
