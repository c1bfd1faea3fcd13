"""The joint exchange's planner (seed 001): one LP over all relay subsets.

This is the scheme of ``docs/joint.md`` (arXiv 2507.18025, as reconstructed there)
applied to our topology: its placement Z (workers x items) is our G (H relays x K
users, rows relays), so "worker" = relay, "item" = user, docs/joint.md's N is our K and
docs/joint.md's K is our H (docs/joint.md section 4). Pure module: no MPI.

Steps (docs/joint.md section 3, steps 1-2):

1. Validate G (0/1, H >= 2, every user held by a relay) and drop the users that
   every relay holds: every relay already knows their IVs, so they are never sent.
2. Downlink ``L_d = K - m`` with ``m = min_i |N_i|`` (T1).
3. Uplink: the LP of T3, ``min sum_i L_i`` subject to T2,
   ``sum_{i in J} L_i >= b(J) = |E(J)| - min_k |E(J) ∩ N_k|`` for every non-empty
   relay set J, where ``E(J)`` is the set of users whose relays all lie in J. All
   2^H values b(J) come from bitmask counts and a subset-sum (zeta) transform.
4. Ties broken deterministically by a second LP that minimises ``max_i L_i`` at
   the optimal total (docs/joint.md step 2).
5. The loads made exact (Fractions) and T2 re-checked in integers for all 2^H
   sets; if no rationalisation passes, the hierarchical scheme's per-relay loads
   (``plan.make_plan``) are used instead -- they satisfy T2 too, by T5.
6. ``F`` = lcm of the denominators: relay i sends ``units[i] = F L_i`` of the F
   sub-packets an IV is cut into; the server broadcasts ``F L_d`` of them.
7. The code (section 3, the *generic* variant): relay i's rows are random
   combinations of all the sub-packets of the IVs it holds, the server's are
   random combinations of everything it receives; drawn once, every relay's
   decodability checked by rank and redrawn on failure, decoders precomputed
   (:func:`hmtl_mpi.codes.coding.build_code`, shared with the hierarchical scheme;
   the scheme is :mod:`hmtl_mpi.schemes.joint`).

Bounds reported beside the loads: the simple bound ``max((HK - S)/(H - 1), K - m)``
of T2 (the hierarchical paper's Theorem 2) and ``K - m`` for the downlink (T1).
When T4's conditions hold the LP meets the simple bound; otherwise it is larger
and still optimal among all schemes (T2 binds every scheme).

Command line: ``python -m hmtl_mpi.plan --scheme joint --topology PATH [--json] [--verify]``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np

from . import hierarchical as hplan
from .lp import lp_solver, solve_quietly
from .topology import OnTopology, TopologyError, validate

# The LP has one constraint per relay subset (2^H of them before pruning); b(J) is
# computed for all of them at once, which needs (H + 1) 2^H integers of memory.
MAX_RELAYS = 16

# Largest denominators tried, in turn, when making the LP's floats exact. Small ones
# first: F (sub-packets per IV) is the lcm of the denominators.
MAX_DENOMINATORS = (64, 720, 5040)

# Relative slack on the optimal total allowed in the tie-break LP and the exact check.
OPT_RTOL = 1e-7


class JointPlanError(ValueError):
    """A topology the joint planner refuses; the message names the relay/user or limit."""


@dataclass
class JointPlan(OnTopology):
    """The joint scheme's plan for one topology G (docs/joint.md: T1-T3, section 3)."""

    G: np.ndarray                  # H x K uint8, rows relays
    loads: list                    # L_i per relay, Fractions (IVs)
    F: int                         # sub-packets per IV: lcm of the loads' denominators
    users: np.ndarray              # 0-based users that take part (not held by every relay)
    dropped: np.ndarray            # 0-based users held by every relay: never sent
    lp_optimum: float              # the LP's own optimum (nan if the LP was not solved)
    source: str                    # "lp" or "hierarchical-fallback"
    tie_broken: bool = False       # loads from the max_i L_i tie-break LP (step 2)
    constraints: int = 0           # rows of the LP after pruning implied ones
    notes: list = field(default_factory=list)

    @property
    def units(self) -> list[int]:
        """``F L_i``: how many of an IV's F sub-packets relay i sends (integers)."""
        return [int(x * self.F) for x in self.loads]

    @property
    def uplink_load(self) -> Fraction:
        """``L_up = sum_i L_i`` in IVs (T3)."""
        return sum(self.loads, Fraction(0))

    @property
    def downlink_load(self) -> Fraction:
        """T1: ``L_d = K - m`` (= N' - m' over the users that take part): the bound, met."""
        return self.downlink_lower_bound

    @property
    def downlink_units(self) -> int:
        """``F L_d``: sub-packets the server broadcasts."""
        return int(self.downlink_load * self.F)

    @property
    def uplink_lower_bound(self) -> Fraction:
        """T2's simple bound ``max((H K - S)/(H - 1), K - m)``, S = sum of G
        (the hierarchical paper's Theorem 2, H -> K, K -> N)."""
        S = int(self.G.sum())
        return max(Fraction(self.H * self.K - S, self.H - 1), self.downlink_lower_bound)

    @property
    def downlink_lower_bound(self) -> Fraction:
        """T1: ``K - min_i |N_i|``."""
        return Fraction(self.K - int(self.G.sum(axis=1).min()))

    def to_dict(self) -> dict:
        """The JSON form (users and relays numbered from 1 as in the paper)."""
        return {
            "scheme": "joint",
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
            "per_relay_uplink": [float(x) for x in self.loads],
            "per_relay_uplink_exact": [str(x) for x in self.loads],
            "F": self.F,
            "units": self.units,
            "downlink_units": self.downlink_units,
            "dropped_users": [int(k) + 1 for k in self.dropped],
            "source": self.source,
            "tie_broken": self.tie_broken,
            "lp_optimum": None if math.isnan(self.lp_optimum) else self.lp_optimum,
            "uncoded": {"uplink_load": float(self.K), "downlink_load": float(self.K)},
        }


# --- T2's right-hand sides -------------------------------------------------------------

def subset_masks(H: int) -> np.ndarray:
    """``bits[i, J] = 1`` iff relay i is in the set with bitmask J (bit i = relay i)."""
    J = np.arange(1 << H, dtype=np.int64)
    return ((J[None, :] >> np.arange(H, dtype=np.int64)[:, None]) & 1).astype(np.int64)


def _zeta(f: np.ndarray, H: int) -> None:
    """In place, along the last axis: ``f[..., J] <- sum_{S ⊆ J} f[..., S]`` (O(H 2^H))."""
    lead = f.shape[:-1]
    for i in range(H):
        v = f.reshape(*lead, -1, 2, 1 << i)          # a view: index J = (a, bit i, c)
        v[..., 1, :] += v[..., 0, :]


def subset_bounds(G: np.ndarray, users=None) -> np.ndarray:
    """b(J) of T2 for every bitmask J in 0 .. 2^H - 1 (b(empty) = 0).

    ``b(J) = |E(J)| - min over all relays k of |E(J) ∩ N_k|`` with E(J) the users in
    ``users`` (default all) whose relay set is a subset of J. Users with relay set S
    are counted once (bincount over masks), then one zeta transform gives |E(J)| and
    H more give |E(J) ∩ N_k|: O(H^2 2^H) integer operations. (For J a proper subset
    the min is 0, reached by any relay outside J; only J = all relays subtracts m'.)
    """
    G = np.asarray(G)
    H = G.shape[0]
    A = G if users is None else G[:, np.asarray(users, dtype=np.int64)]
    weights = np.int64(1) << np.arange(H, dtype=np.int64)
    masks = weights @ A.astype(np.int64)             # relay set of every user, as a bitmask
    size = 1 << H
    f = np.empty((H + 1, size), dtype=np.int64)
    f[0] = np.bincount(masks, minlength=size)
    f[1:] = f[0] * subset_masks(H)                   # users with relay set S and k in S
    _zeta(f, H)
    return f[0] - f[1:].min(axis=0)


def essential_subsets(b: np.ndarray, H: int) -> np.ndarray:
    """The bitmasks J whose T2 constraint is not implied by another one and L >= 0.

    Kept: b(J) > 0 and ``b(J) > b(J \\ {i})`` for every i in J. If instead
    ``b(J) <= b(J \\ {i})``, then ``sum_J L >= sum_{J\\{i}} L >= b(J\\{i}) >= b(J)``.
    (The set of all relays is always implied by the one without the weakest relay.)
    """
    J = np.arange(1 << H, dtype=np.int64)
    keep = b > 0
    for i in range(H):
        bit = np.int64(1) << i
        has = (J & bit) != 0
        keep &= ~has | (b > b[J ^ bit])
    return np.flatnonzero(keep)


def satisfies_t2(loads, b: np.ndarray) -> bool:
    """Exact check of T2 for every subset: ``sum_{i in J} L_i >= b(J)`` for all J.

    ``loads`` are Fractions; the check runs in integers over their common denominator.
    """
    H = len(loads)
    if any(x < 0 for x in loads):
        return False
    F = math.lcm(*(Fraction(x).denominator for x in loads)) if loads else 1
    units = [int(Fraction(x) * F) for x in loads]
    bits = subset_masks(H)
    if F * (abs(int(b.max())) + 1) < 2 ** 62 and (sum(units) + 1) < 2 ** 62:
        sums = np.array(units, dtype=np.int64) @ bits
        return bool(np.all(sums >= F * b))
    sums = np.array(units, dtype=object) @ bits.astype(object)      # exact, no overflow
    return all(s >= F * int(x) for s, x in zip(sums.tolist(), b.tolist()))


# --- the LPs ---------------------------------------------------------------------------

def _solve_lps(A: np.ndarray, rhs: np.ndarray, H: int, tie_break: bool = True):
    """T3's LP and the tie-break LP (section 3 step 2).

    Returns ``(optimum, x_min_sum, x_tie_broken)``; ``x_tie_broken`` is None when the
    second LP was not asked for or did not solve. Raises RuntimeError if the first one
    did not.
    """
    import cvxpy as cp  # local: cvxpy costs ~0.7 s to import, only when planning

    solver = lp_solver()
    L = cp.Variable(H, nonneg=True)
    first = cp.Problem(cp.Minimize(cp.sum(L)), [A @ L >= rhs])
    solve_quietly(first, solver=solver, ignore_dpp=True)
    if L.value is None or first.status not in ("optimal", "optimal_inaccurate"):
        raise RuntimeError(f"joint LP (T3) did not solve: status {first.status}")
    opt = float(first.value)
    x_sum = np.clip(np.asarray(L.value, dtype=float), 0.0, None)
    if not tie_break:
        return opt, x_sum, None

    L2 = cp.Variable(H, nonneg=True)
    t = cp.Variable()
    second = cp.Problem(cp.Minimize(t), [A @ L2 >= rhs, L2 <= t,
                                         cp.sum(L2) <= opt + 1e-9 * max(1.0, abs(opt))])
    try:
        solve_quietly(second, solver=solver, ignore_dpp=True)
    except cp.error.SolverError:
        return opt, x_sum, None
    if L2.value is None or second.status not in ("optimal", "optimal_inaccurate"):
        return opt, x_sum, None
    return opt, x_sum, np.clip(np.asarray(L2.value, dtype=float), 0.0, None)


def _exact_candidate(x: np.ndarray, max_den: int, b: np.ndarray, opt: float):
    """Fractions near x (denominators <= max_den) that pass T2 exactly and are optimal."""
    loads = [Fraction(float(v)).limit_denominator(max_den) for v in x]
    if not satisfies_t2(loads, b):
        return None
    if float(sum(loads, Fraction(0))) > opt + OPT_RTOL * max(1.0, abs(opt)):
        return None
    return loads


def hierarchical_relay_loads(G: np.ndarray, hierarchical=None) -> list:
    """Relay i's uplink in the hierarchical scheme: ``sum_z n_i^z a_i^z`` (Fractions)."""
    p = hierarchical if hierarchical is not None else hplan.make_plan(G)
    loads = [Fraction(0)] * int(np.asarray(G).shape[0])
    for r in p.rounds:
        for i, (n, a) in enumerate(zip(r.n, r.alpha)):
            loads[i] += int(n) * a
    return loads


# --- the planner -----------------------------------------------------------------------

def _check_topology(G) -> np.ndarray:
    """Spec section 3 step 1, by the one topology validation
    (:func:`hmtl_mpi.planning.topology.validate`): 0/1, H >= 2, every user held; a relay
    with no user or with every user is allowed here. Then the LP's limit, H <= MAX_RELAYS."""
    try:
        arr = validate(G, source="G", allow_idle_relays=True, allow_full_relays=True)
    except TopologyError as exc:
        raise JointPlanError(str(exc).removeprefix("G: ")) from None
    H = arr.shape[0]
    if H > MAX_RELAYS:
        raise JointPlanError(
            f"H = {H} relays is more than the joint planner's limit of {MAX_RELAYS}: its LP "
            f"(T3) has one constraint per subset of relays, 2^H = "
            f"{2 ** H if H <= 64 else f'{2.0 ** min(H, 1023):.3g}' if H < 1024 else f'2^{H}'} "
            f"of them; the coded scheme (--scheme coded) has no such limit")
    return arr


def make_joint_plan(G, max_denominators=MAX_DENOMINATORS, tie_break: bool = True) -> JointPlan:
    """The joint scheme's plan for a 0/1 H x K topology G (docs/joint.md section 3 steps 1-2).

    ``tie_break``: pick, among the optimal loads, ones minimising ``max_i L_i`` (docs/joint.md
    step 2). That evens the relays' loads but often makes them fractional where the
    first LP's vertex was integral (a larger F, i.e. more sub-packets per IV); with
    False the first LP's vertex is used as is (HiGHS is deterministic for a given G).
    If the tie-broken loads fail the exact checks, the first LP's are tried next.

    Raises JointPlanError for H > MAX_RELAYS (16), H < 2, a user with no relay or a
    G that is not 0/1. Never writes to standard output (solver banners included).
    """
    G = _check_topology(G)
    H, K = G.shape
    held_by_all = G.sum(axis=0) == H
    users = np.flatnonzero(~held_by_all)
    dropped = np.flatnonzero(held_by_all)

    # T1 on the users that take part equals K - m on all of them
    m = int(G.sum(axis=1).min())
    m_part = int(G[:, users].sum(axis=1).min()) if len(users) else 0
    if len(users) - m_part != K - m:                 # each dropped user is in every N_i
        raise RuntimeError(f"T1: N' - m' = {len(users) - m_part} differs from K - m = {K - m}")

    b = subset_bounds(G, users)
    rows = essential_subsets(b, H)
    notes = []
    loads = None
    source = "lp"
    tie_broken = False
    opt = float("nan")
    if len(rows) == 0:                               # nothing to send (all users dropped)
        opt = 0.0
        loads = [Fraction(0)] * H
    else:
        A = subset_masks(H)[:, rows].T.astype(float)
        try:
            opt, x_sum, x_tie = _solve_lps(A, b[rows].astype(float), H, tie_break)
        except Exception as exc:                     # noqa: BLE001 - recorded, fallback below
            notes.append(f"LP failed ({exc.__class__.__name__}: {exc})")
            x_sum = x_tie = None
        candidates = [(x_tie, True), (x_sum, False)] if x_sum is not None else []
        for x, tied in candidates:
            if x is None:
                continue
            for den in max_denominators:
                loads = _exact_candidate(x, den, b, opt)
                if loads is not None:
                    tie_broken = tied
                    break
            if loads is not None:
                break
        if loads is None:
            if candidates:
                notes.append(f"no rationalisation with denominators <= {max(max_denominators)} "
                             f"passed the exact checks")
            loads = hierarchical_relay_loads(G)
            source = "hierarchical-fallback"
            if not satisfies_t2(loads, b):           # T5 says this cannot happen
                raise RuntimeError("hierarchical loads fail T2: planner bug")
    F = math.lcm(*(x.denominator for x in loads))
    return JointPlan(G=G, loads=loads, F=F, users=users, dropped=dropped, lp_optimum=opt,
                     source=source, tie_broken=tie_broken, constraints=int(len(rows)),
                     notes=notes)


# --- output ----------------------------------------------------------------------------

def format_joint_plan(jp: JointPlan, hierarchical=None) -> str:
    """A readable per-relay table and the totals beside the bound, the hierarchical
    scheme (``plan.make_plan``, computed here unless given) and uncoded."""
    hp = hierarchical if hierarchical is not None else hplan.make_plan(jp.G)
    lines = [f"Topology: H = {jp.H} relays, K = {jp.K} users "
             f"(mpirun -n {1 + jp.H + jp.K}); users and relays numbered from 1",
             f"joint scheme: loads from {jp.source}"
             + (" (tie broken by min max_i L_i)" if jp.tie_broken else "")
             + f", F = {jp.F} sub-packets per IV, {jp.constraints} LP constraints"]
    if len(jp.dropped):
        lines.append(f"users held by every relay (never sent): "
                     f"{{{', '.join(str(k + 1) for k in jp.dropped)}}}")
    lines.append("")
    lines.append(f"  {'relay':>5} {'|N_i|':>6} {'L_i':>8} {'units':>6}")
    for i in range(jp.H):
        lines.append(f"  {i + 1:>5} {int(jp.G[i].sum()):>6} {str(jp.loads[i]):>8} "
                     f"{jp.units[i]:>6}")
    lines.append(f"  {'total':>5} {'':>6} {str(jp.uplink_load):>8} {sum(jp.units):>6}")
    lines.append(f"  server broadcast: {jp.downlink_load} IVs = {jp.downlink_units} units")
    lines.append("")
    lines.append(f"{'':24}{'uplink':>10}{'downlink':>10}")
    for name, up, down in [
        ("joint (T3, T1)", jp.uplink_load, jp.downlink_load),
        ("simple bound (T2, T1)", jp.uplink_lower_bound, jp.downlink_lower_bound),
        ("hierarchical (Thm 1)", hp.uplink_load, hp.downlink_load),
        ("uncoded", Fraction(jp.K), Fraction(jp.K)),
    ]:
        lines.append(f"{name:24}{float(up):>10.4g}{float(down):>10.4g}")
    for note in jp.notes:
        lines.append(f"note: {note}")
    return "\n".join(lines)
