"""The load planner: from a topology G to the paper's rounds, exact alphas and loads.

Per round z (users I_z linked to exactly z relays, eq. 4):

* ``n_i^z = |N_i ∩ I_z| - min_{j != i} |N_i ∩ N_j ∩ I_z|`` (eq. 16);
* the LP P(z) (eq. 28), solved with cvxpy: minimise ``sum_i n_i^z a_i`` subject
  to ``sum_{i: k in N_i} a_i >= 1`` for every k in I_z and ``0 <= a_i <= 1``;
* the optimal ``a_i^z`` made exact: rationals with a common denominator D_z,
  checked in exact arithmetic (feasible and as good as the LP optimum); if that
  fails, the paper's equal split ``a_i = 1/z`` (Remark 2) is used instead;
* uplink load ``sum_i n_i^z a_i^z`` (eq. 27) and downlink load
  ``|I_z| - min_i |I_z ∩ N_i|`` (eq. 32).

Totals are Theorem 1's loads; Theorem 2's lower bounds, the uncoded loads (K, K)
of Example 1 and the equal-split loads of Remark 2 are computed beside them.

Its command line is :mod:`hmtl_mpi.plan`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np

from .lp import lp_solver, solve_quietly
from .topology import OnTopology

# Largest denominator accepted when turning the LP's floats into rationals. The
# LP's vertices have small denominators in practice (1/2, 1/3, ...); a larger D
# only means smaller units and larger coding matrices.
MAX_DENOMINATOR = 64


@dataclass
class Round:
    """One communication round z of the coded scheme."""

    z: int
    users: np.ndarray          # I_z, 0-based user indices
    n: np.ndarray              # n_i^z for every relay (eq. 16), int64, length H
    alpha: list                # a_i^z as Fractions, length H
    alpha_source: str          # "lp" or "equal-split"
    D: int                     # common denominator of alpha: units per IV in this round
    min_known: int             # min_i |I_z ∩ N_i|
    lp_optimum: float          # the LP's own objective value (for the record)

    @property
    def uplink_load(self) -> Fraction:
        """Eq. (27): sum_i n_i^z a_i^z, in IVs."""
        return sum((int(n) * a for n, a in zip(self.n, self.alpha)), Fraction(0))

    @property
    def downlink_load(self) -> Fraction:
        """Eq. (32): |I_z| - min_i |I_z ∩ N_i|, in IVs."""
        return Fraction(len(self.users) - self.min_known)

    @property
    def units(self) -> list[int]:
        """a_i^z D_z: how many of an IV's D_z units relay i carries."""
        return [int(a * self.D) for a in self.alpha]


@dataclass
class Plan(OnTopology):
    """The coded scheme's plan for one topology (Theorem 1 loads and references)."""

    G: np.ndarray
    rounds: list = field(default_factory=list)

    @property
    def uplink_load(self) -> Fraction:
        """Theorem 1 / eq. (29)."""
        return sum((r.uplink_load for r in self.rounds), Fraction(0))

    @property
    def downlink_load(self) -> Fraction:
        """Theorem 1: K - sum_z min_i |N_i ∩ I_z| (over the users that take part in rounds)."""
        return sum((r.downlink_load for r in self.rounds), Fraction(0))

    @property
    def uplink_lower_bound(self) -> Fraction:
        """Theorem 2: (H K - sum_z z |I_z|) / (H - 1) = sum_k (H - r_k) / (H - 1)."""
        r = self.G.sum(axis=0)
        return Fraction(int(self.H * self.K - r.sum()), self.H - 1)

    @property
    def downlink_lower_bound(self) -> Fraction:
        """Theorem 2: K - min_i |N_i|."""
        return Fraction(self.K - int(self.G.sum(axis=1).min()))

    @property
    def equal_split_uplink_load(self) -> Fraction:
        """Remark 2: a_i^z = 1/z, so the uplink load is sum_z sum_i n_i^z / z."""
        return sum((Fraction(int(r.n.sum()), r.z) for r in self.rounds), Fraction(0))

    def to_dict(self) -> dict:
        """The JSON form (users and relays numbered from 1 as in the paper)."""
        return {
            "K": self.K,
            "H": self.H,
            "ranks": 1 + self.H + self.K,
            "numbering": "users and relays are numbered from 1, as in the paper",
            "uplink_load": float(self.uplink_load),
            "downlink_load": float(self.downlink_load),
            "uplink_load_exact": str(self.uplink_load),
            "downlink_load_exact": str(self.downlink_load),
            "uplink_lower_bound": float(self.uplink_lower_bound),
            "downlink_lower_bound": float(self.downlink_lower_bound),
            "uncoded": {"uplink_load": float(self.K), "downlink_load": float(self.K)},
            "equal_split": {"uplink_load": float(self.equal_split_uplink_load),
                            "downlink_load": float(self.downlink_load)},
            "rounds": [
                {
                    "z": r.z,
                    "users": [int(k) + 1 for k in r.users],
                    "n": [int(x) for x in r.n],
                    "alpha": [float(a) for a in r.alpha],
                    "alpha_exact": [str(a) for a in r.alpha],
                    "alpha_source": r.alpha_source,
                    "D": r.D,
                    "uplink_load": float(r.uplink_load),
                    "downlink_load": float(r.downlink_load),
                }
                for r in self.rounds
            ],
        }


def user_relays(G: np.ndarray) -> tuple:
    """Every user's relays as CSR (ptr, relays): user k's are ``relays[ptr[k]:ptr[k + 1]]``,
    increasing; ``diff(ptr)`` is r_k. One pass over G, O(H K)."""
    rel, col = np.nonzero(G)
    order = np.argsort(col, kind="stable")
    ptr = np.zeros(G.shape[1] + 1, dtype=np.int64)
    np.cumsum(np.bincount(col, minlength=G.shape[1]), out=ptr[1:])
    return ptr, rel[order].astype(np.int64)


def distinct_sets(sets: np.ndarray, H: int) -> np.ndarray:
    """The distinct rows of ``sets`` (relay sets of one round, m x z, increasing), sorted."""
    if sets.shape[1] and sets.shape[1] * math.log2(max(H, 2)) < 62:   # one integer per set
        key = np.zeros(len(sets), dtype=np.int64)
        for a in range(sets.shape[1]):
            key = key * H + sets[:, a]
        _, first = np.unique(key, return_index=True)
        return sets[first]
    return np.unique(sets, axis=0)


def incidence(sets: np.ndarray, H: int) -> np.ndarray:
    """The relay sets as a dense m x H 0/1 matrix (the LP's constraint rows)."""
    M = np.zeros((len(sets), H))
    M[np.repeat(np.arange(len(sets)), sets.shape[1]), sets.reshape(-1)] = 1.0
    return M


# Pair counts |N_i ∩ N_j ∩ I_z| from the relay sets when that is cheaper than a dense product:
# m z^2 pairs against H^2 m multiply-adds (in BLAS, ~30x faster per operation).
PAIR_COUNT_FACTOR = 30


def round_counts(G: np.ndarray, users: np.ndarray, sets: np.ndarray | None = None
                 ) -> tuple[np.ndarray, int]:
    """n_i^z (eq. 16) and min_i |I_z ∩ N_i| for the users ``users`` of one round.

    Every |N_i ∩ N_j ∩ I_z| at once: counted over the pairs of each user's relays
    (``sets``, the round's relay sets, m x z) when users have few relays, else one
    H x H product (float64 BLAS, exact below 2^53).
    """
    H = G.shape[0]
    z = sets.shape[1] if sets is not None else int(G[:, users[:1]].sum()) if len(users) else 0
    if sets is not None and len(users) * z * z * PAIR_COUNT_FACTOR <= H * H * len(users):
        own = np.bincount(sets.reshape(-1), minlength=H).astype(np.int64)
        a, b = np.nonzero(~np.eye(z, dtype=bool))
        common = np.bincount((sets[:, a] * H + sets[:, b]).reshape(-1),
                             minlength=H * H).reshape(H, H).astype(np.int64)
    else:
        common = np.zeros((H, H), dtype=np.int64)
        step = max(1, (1 << 24) // max(H, 1))
        for start in range(0, len(users), step):           # H x step float64 at a time
            A = G[:, users[start: start + step]].astype(np.float64)
            common += np.rint(A @ A.T).astype(np.int64)     # common[i, j] = |N_i ∩ N_j ∩ I_z|
        own = np.diag(common).copy()                        # |N_i ∩ I_z|
    np.fill_diagonal(common, np.iinfo(np.int64).max)
    n = own - common.min(axis=1)
    return n, int(own.min())


def _lp_result(problem, a) -> np.ndarray:
    if a.value is None or problem.status not in ("optimal", "optimal_inaccurate"):
        raise RuntimeError(f"LP P(z) did not solve: status {problem.status}")
    return np.clip(np.asarray(a.value, dtype=float), 0.0, 1.0)


def solve_sets_lp(n: np.ndarray, sets: np.ndarray, H: int) -> np.ndarray:
    """Solve P(z) (eq. 28) with cvxpy: one constraint per distinct relay set (``sets``,
    m x z), as a sparse matrix (m x H with z ones per row)."""
    import cvxpy as cp  # local: cvxpy costs ~0.7 s to import, only when planning
    import scipy.sparse as sp  # local: cvxpy's own dependency, only when planning

    m, z = sets.shape
    M = sp.csr_matrix((np.ones(m * z), (np.repeat(np.arange(m), z), sets.reshape(-1))),
                      shape=(m, H))
    a = cp.Variable(H)
    problem = cp.Problem(cp.Minimize(n.astype(float) @ a), [M @ a >= 1, a >= 0, a <= 1])
    # no Parameters here, so skip cvxpy's DPP analysis (about a third of the build time)
    solve_quietly(problem, solver=lp_solver(), ignore_dpp=True)
    return _lp_result(problem, a)


def solve_round_lp(n: np.ndarray, A: np.ndarray) -> np.ndarray:
    """Solve P(z) (eq. 28) with cvxpy; A is the H x |I_z| incidence of the round.

    Users with the same relay set give the same constraint, so only the distinct
    columns of A are kept.
    """
    A = np.asarray(A)
    cols = np.unique(A.T, axis=0)               # distinct relay sets, m x H
    rows, relays = np.nonzero(cols)
    z = np.bincount(rows, minlength=len(cols))
    if len(cols) and (z == z[0]).all() and z[0] > 0:
        return solve_sets_lp(n, relays.reshape(len(cols), -1), A.shape[0])
    import cvxpy as cp  # local: cvxpy costs ~0.7 s to import, only when planning

    a = cp.Variable(A.shape[0])
    problem = cp.Problem(cp.Minimize(n.astype(float) @ a),
                         [cols.astype(float) @ a >= 1, a >= 0, a <= 1])
    solve_quietly(problem, solver=lp_solver(), ignore_dpp=True)
    return _lp_result(problem, a)


class RoundLP:
    """P(z) built once per topology with cvxpy Parameters, re-solved for every round.

    Building and canonicalising a cvxpy problem costs several milliseconds; with
    ~H rounds (mixed user degrees) that dominated planning. Here the objective n^z
    and the constraint rows are Parameters of fixed shape (``rows`` x H): a round
    with fewer distinct relay sets repeats its first row, which changes nothing.
    """

    def __init__(self, H: int, rows: int):
        import cvxpy as cp  # local: cvxpy costs ~0.7 s to import, only when planning

        self.rows = rows
        self.c = cp.Parameter(H)
        self.M = cp.Parameter((rows, H))
        self.a = cp.Variable(H)
        self.problem = cp.Problem(cp.Minimize(self.c @ self.a),
                                  [self.M @ self.a >= 1, self.a >= 0, self.a <= 1])

    def solve(self, n: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """Solve P(z) for n^z and the distinct relay sets ``cols`` (m x H, m <= rows)."""
        m = cols.shape[0]
        if m > self.rows:
            raise ValueError(f"RoundLP built for {self.rows} rows, got {m}")
        M = np.empty((self.rows, cols.shape[1]))
        M[:m] = cols
        M[m:] = cols[0]
        self.c.value = n.astype(float)
        self.M.value = M
        solve_quietly(self.problem, solver=lp_solver())
        return _lp_result(self.problem, self.a)


def exact_alpha(a: np.ndarray, n: np.ndarray, A, lp_opt: float,
                max_denominator: int = MAX_DENOMINATOR, *, sets: np.ndarray | None = None):
    """Turn the LP's floats into exact rationals, or None if they fail the checks.

    Checked in rationals: 0 <= a_i <= 1, every user of the round covered
    (sum_{i: k in N_i} a_i >= 1), and the objective no worse than the LP optimum.
    The round's users are given by their incidence ``A`` (H x |I_z|) or, without it,
    by their distinct relay sets ``sets`` (m x z relay indices).
    """
    alpha = [Fraction(float(x)).limit_denominator(max_denominator) for x in a]
    if any(x < 0 or x > 1 for x in alpha):
        return None
    # coverage in integers: numerators over the common denominator L
    L = math.lcm(*(x.denominator for x in alpha))
    nums = [x.numerator * (L // x.denominator) for x in alpha]
    if sets is not None:
        flat = np.asarray(sets, dtype=np.int64).reshape(len(sets), -1)
        if L * len(alpha) < 2 ** 62:
            cover = np.array(nums, dtype=np.int64)[flat].sum(axis=1)
        else:                                   # exact Python integers, no overflow
            cover = np.array(nums, dtype=object)[flat].sum(axis=1)
    else:
        cols = np.unique(np.asarray(A).T, axis=0)
        if L * len(alpha) < 2 ** 62:
            cover = cols.astype(np.int64) @ np.array(nums, dtype=np.int64)
        else:                                   # exact Python integers, no overflow
            cover = cols.astype(object) @ np.array(nums, dtype=object)
    if any(c < L for c in np.asarray(cover).tolist()):
        return None
    objective = sum((int(ni) * ai for ni, ai in zip(n, alpha)), Fraction(0))
    if float(objective) > lp_opt + 1e-7 * max(1.0, abs(lp_opt)):
        return None
    return alpha


# With this many rounds or more, make_plan builds one parametrised LP (RoundLP)
# instead of a fresh cvxpy problem per round -- unless padding every round to the
# largest one would more than double the constraint rows (one huge round among
# small ones), where fresh problems are faster, or the dense parameter would exceed
# PARAM_LP_MAX_ENTRIES (the fresh problems' constraints are sparse).
PARAM_LP_MIN_ROUNDS = 3
PARAM_LP_MAX_ENTRIES = 2_000_000


def make_plan(G: np.ndarray, max_denominator: int = MAX_DENOMINATOR) -> Plan:
    """The plan of the coded scheme for a validated topology G (Section IV).

    Scales with the links, not with H K: each user's relays are listed once; round z's
    counts (eq. 16) come from its users' relay sets, and its LP P(z) has one sparse
    constraint per distinct relay set.
    """
    G = np.asarray(G, dtype=np.uint8)
    H = G.shape[0]
    ptr, rel = user_relays(G)
    degree = np.diff(ptr)
    plan = Plan(G=G)
    work = []
    for z in range(1, H):
        users = np.flatnonzero(degree == z)
        if len(users) == 0:
            continue
        sets = rel[ptr[users][:, None] + np.arange(z)]       # |I_z| x z relay indices
        work.append((z, users, sets, distinct_sets(sets, H)))
    lp = None
    rows = [d.shape[0] for *_, d in work]
    if len(work) >= PARAM_LP_MIN_ROUNDS and max(rows) * len(rows) <= 2 * sum(rows) \
            and max(rows) * H <= PARAM_LP_MAX_ENTRIES:
        lp = RoundLP(H, max(rows))
    for z, users, sets, distinct in work:
        n, min_known = round_counts(G, users, sets=sets)
        involved = np.bincount(sets.reshape(-1), minlength=H) > 0   # relays with users in I_z
        a = lp.solve(n, incidence(distinct, H)) if lp is not None else \
            solve_sets_lp(n, distinct, H)
        a[~involved] = 0.0                      # such relays carry nothing (n_i^z = 0)
        lp_opt = float(n @ a)
        alpha = exact_alpha(a, n, None, lp_opt, max_denominator, sets=distinct)
        source = "lp"
        if alpha is None:
            alpha = [Fraction(1, z) if involved[i] else Fraction(0) for i in range(H)]
            source = "equal-split"
        D = math.lcm(*(x.denominator for x in alpha))
        plan.rounds.append(Round(z=z, users=users, n=n, alpha=alpha, alpha_source=source,
                                 D=D, min_known=min_known, lp_optimum=lp_opt))
    return plan


# --- the readable plan -----------------------------------------------------------------

def _fmt(x: Fraction) -> str:
    return str(x) if x.denominator == 1 else f"{x} = {float(x):.4g}"


def format_plan(plan: Plan) -> str:
    """The readable per-round table and totals."""
    lines = [f"Topology: H = {plan.H} relays, K = {plan.K} users "
             f"(mpirun -n {1 + plan.H + plan.K}); users and relays numbered from 1"]
    for r in plan.rounds:
        lines.append("")
        lines.append(f"round z = {r.z}: I_{r.z} = {{{', '.join(str(k + 1) for k in r.users)}}}, "
                     f"D = {r.D} units per IV, alpha from {r.alpha_source}")
        lines.append(f"  {'relay':>5} {'n_i':>5} {'a_i':>7} {'n_i*a_i':>8}")
        for i in range(plan.H):
            lines.append(f"  {i + 1:>5} {int(r.n[i]):>5} {str(r.alpha[i]):>7} "
                         f"{str(int(r.n[i]) * r.alpha[i]):>8}")
        lines.append(f"  uplink load {_fmt(r.uplink_load)}, downlink load {_fmt(r.downlink_load)}")
    lines.append("")
    lines.append(f"{'':22}{'uplink':>10}{'downlink':>10}")
    for name, up, down in [
        ("coded (Theorem 1)", plan.uplink_load, plan.downlink_load),
        ("lower bound (Thm 2)", plan.uplink_lower_bound, plan.downlink_lower_bound),
        ("equal split (Rem. 2)", plan.equal_split_uplink_load, plan.downlink_load),
        ("uncoded (Example 1)", Fraction(plan.K), Fraction(plan.K)),
    ]:
        lines.append(f"{name:22}{float(up):>10.4g}{float(down):>10.4g}")
    return "\n".join(lines)
