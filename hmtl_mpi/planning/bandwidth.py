"""The time-optimal plan (``--plan time``): segment sizes and relay loads for unequal links.

Ours, not the papers': both planners (:mod:`.hierarchical`, the paper's P(z) per round;
:mod:`.joint`, seed 001's LP over relay subsets) minimise the *total* load, which is the
exchange's time when every relay reaches the server over one shared link. When relay i
has a link of its own at rate R_i, the uplink lasts as long as the slowest relay:

    T(L) = max( max_i L_i V / R_i ,  sum_i L_i V / S ) + rounds * latency

with L_i relay i's uplink in IVs, V the IV's bytes and S the server's own link (the one
every relay's bytes cross; ``None``: not a bottleneck). ``rounds`` and the downlink do
not depend on the loads, so the plan minimises the first term over the *same*
decodability conditions as the load plan (docs/bandwidth.md):

* coded (the paper's rounds): ``L_i = sum_z n_i^z a_i^z`` with every round's coverage
  ``sum_{i in N_k} a_i^z >= 1`` for k in I_z and ``0 <= a_i^z <= 1`` (eq. 28's
  constraints), one LP over all rounds at once;
* joint: T2, ``sum_{i in J} L_i >= b(J)`` for every essential relay set J.

Two LPs: the first minimises t subject to ``L_i <= t R_i`` and ``sum_i L_i <= t S``; the
second, at that t, minimises the total load (so that no relay sends more than it must).
The floats are made exact (Fractions): the nearest rationals with small denominators
when they pass the exact checks, else on a grid 1/D: every value rounded down, then
raised one step at a time where coverage (or T2) needs it, on the relay that stays
fastest, for the smallest D whose time is within ``TIME_RTOL`` of the LP's;
no IV is cut into more than ``MAX_UNITS`` units (the code grows with them).
Finally the load plan is kept whenever it is as fast: equal rates on a shared server
link, or a load plan that is already balanced, give the paper's plan unchanged.

Pure NumPy and cvxpy (imported when planning); no MPI.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np

from . import hierarchical as hplan
from . import joint as jplan
from .lp import lp_solver, solve_quietly

# The exact plan may be this much slower (relative) than the LP's optimum.
TIME_RTOL = 0.02
# Grids 1/D tried in turn when the nearest small-denominator rationals fail the checks.
GRID_DENOMINATORS = (2, 3, 4, 5, 6, 8, 10, 12, 16, 20, 24, 30, 32, 40, 48, 60, 64)
# Largest number of units (coded: D_z per round) or sub-packets (joint: F) per IV a time
# plan may cut an IV into: the lcm of near-optimal rationals can be huge, and the code's
# size grows with it.
MAX_UNITS = 64

_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?(?:e[+-]?\d+)?)\s*([kmgt]i?)?(bit|bps|b/s|B/s)?\s*$",
                   re.I)
_UNITS = {"": 1, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12,
          "ki": 1024.0, "mi": 1024.0 ** 2, "gi": 1024.0 ** 3, "ti": 1024.0 ** 4}


class RateError(ValueError):
    """A rate list that cannot be used; the message names the option and the value."""


def parse_rate(text: str, option: str = "rate") -> float:
    """Bytes per second from tc's syntax (``20mbit``, ``2.5mbps``, ``500kbit``) or a plain
    number of bytes per second. Raises RateError naming ``option`` and the value."""
    m = _RATE.match(str(text))
    if not m:
        raise RateError(f"{option}: {text!r} is not a rate (e.g. 20mbit, 2.5mbps, 500kbit, "
                        f"or bytes per second)")
    value = float(m.group(1)) * _UNITS[(m.group(2) or "").lower()]
    unit = (m.group(3) or "").lower()
    value = value / 8 if unit == "bit" else value
    if not math.isfinite(value) or value <= 0:
        raise RateError(f"{option}: {text!r} must be a rate above 0")
    return value


def parse_rates(text: str, count: int | None = None, option: str = "--relay-rates",
                what: str = "relays") -> tuple:
    """A comma list of rates (bytes/s), one per relay (or user): ``count`` of them when
    given. Raises RateError naming the option, the value and the count expected."""
    parts = [p for p in str(text).split(",")]
    if any(not p.strip() for p in parts):
        raise RateError(f"{option} {text!r}: an empty rate in the list")
    rates = tuple(parse_rate(p, f"{option} {text!r}") for p in parts)
    if count is not None and len(rates) != count:
        raise RateError(f"{option} {text!r}: {len(rates)} rate(s) given, but the topology has "
                        f"{count} {what} (one rate per {what[:-1]})")
    return rates


def uplink_seconds(loads, rates, iv_bytes: float = 1.0, server_rate: float | None = None
                   ) -> float:
    """The load-dependent term of T: ``max(max_i L_i V / R_i, sum_i L_i V / S)``."""
    L = np.array([float(x) for x in loads])
    R = np.asarray(rates, dtype=float)
    t = float(np.max(L * iv_bytes / R)) if len(L) else 0.0
    if server_rate is not None and math.isfinite(server_rate):
        t = max(t, float(L.sum()) * iv_bytes / server_rate)
    return t


@dataclass
class TimePlan:
    """The time-optimal plan of one scheme beside its load plan, for one set of rates."""

    scheme: str                       # "coded" or "joint"
    planned: object                   # a hierarchical.Plan or a joint.JointPlan (time-optimal)
    load_plan: object                 # the same planner's load-optimal plan
    rates: tuple                      # bytes/s per relay
    server_rate: float | None
    lp_seconds_per_byte: float        # the LP's optimum t (seconds per IV byte)
    source: str                       # "lp-exact", "lp-grid D", "load-plan"
    notes: list = field(default_factory=list)

    @property
    def relay_loads(self) -> list:
        return relay_loads(self.planned)

    @property
    def load_relay_loads(self) -> list:
        return relay_loads(self.load_plan)

    def seconds(self, iv_bytes: float, plan=None) -> float:
        """The plan's uplink time (without latency) for IVs of ``iv_bytes``."""
        return uplink_seconds(relay_loads(plan if plan is not None else self.planned),
                              self.rates, iv_bytes, self.server_rate)

    def to_dict(self, iv_bytes: float | None = None) -> dict:
        """Both plans side by side: per-relay loads, totals, predicted uplink seconds per
        IV byte (and for ``iv_bytes`` when given)."""
        out = {"rates_bytes_per_s": [float(r) for r in self.rates],
               "server_rate_bytes_per_s": self.server_rate, "source": self.source}
        for name, p in (("time", self.planned), ("load", self.load_plan)):
            loads = relay_loads(p)
            up, down = plan_loads(p)
            d = {"uplink_load": float(up), "downlink_load": float(down),
                 "uplink_load_exact": str(up),
                 "per_relay_uplink": [float(x) for x in loads],
                 "per_relay_uplink_exact": [str(x) for x in loads],
                 "uplink_seconds_per_iv_byte": self.seconds(1.0, p)}
            if iv_bytes:
                d["uplink_seconds"] = self.seconds(iv_bytes, p)
            out[name] = d
        out["time_over_load"] = (out["time"]["uplink_seconds_per_iv_byte"]
                                 / out["load"]["uplink_seconds_per_iv_byte"]
                                 if out["load"]["uplink_seconds_per_iv_byte"] > 0 else 1.0)
        if self.notes:
            out["notes"] = list(self.notes)
        return out


def relay_loads(planned) -> list:
    """Relay i's uplink in IVs (Fractions) of a hierarchical or joint plan."""
    if isinstance(planned, jplan.JointPlan):
        return list(planned.loads)
    return jplan.hierarchical_relay_loads(planned.G, planned)


def plan_loads(planned) -> tuple:
    return planned.uplink_load, planned.downlink_load


def _check_rates(rates, H: int) -> np.ndarray:
    R = np.asarray(rates, dtype=float)
    if R.shape != (H,):
        raise RateError(f"relay rates: {len(R)} given, but the topology has {H} relays")
    bad = np.flatnonzero(~np.isfinite(R) | (R <= 0))
    if len(bad):
        raise RateError(f"relay rates: relay {bad[0] + 1}'s rate {R[bad[0]]} is not above 0")
    return R


# --- the LPs -----------------------------------------------------------------------------

def _two_stage(build, H: int, r: np.ndarray, s: float | None):
    """Minimise t, then the total load at that t. ``build(cp)`` returns (loads expression
    of length H, constraints, the variables to read). Returns (t*, values) or raises."""
    import cvxpy as cp  # local: cvxpy costs ~0.7 s to import, only when planning

    solver = lp_solver()
    L, cons, var = build(cp)
    t = cp.Variable(nonneg=True)
    first_cons = cons + [L <= t * r] + ([cp.sum(L) <= t * s] if s is not None else [])
    first = cp.Problem(cp.Minimize(t), first_cons)
    solve_quietly(first, solver=solver, ignore_dpp=True)
    if t.value is None or first.status not in ("optimal", "optimal_inaccurate"):
        raise RuntimeError(f"time LP did not solve: status {first.status}")
    tstar = float(t.value)
    slack = tstar * (1 + 1e-7) + 1e-12
    second_cons = cons + [L <= slack * r] + ([cp.sum(L) <= slack * s] if s is not None else [])
    second = cp.Problem(cp.Minimize(cp.sum(L)), second_cons)
    solve_quietly(second, solver=solver, ignore_dpp=True)
    if second.status not in ("optimal", "optimal_inaccurate"):
        solve_quietly(first, solver=solver, ignore_dpp=True)       # fall back to the first
    return tstar, var


def _normalised(rates, server_rate):
    R = np.asarray(rates, dtype=float)
    top = float(R.max())
    s = None if server_rate is None or not math.isfinite(server_rate) else server_rate / top
    return R / top, s


def _coded_rounds(G):
    """Per round z: (z, users, n^z, distinct relay sets, involved relays, min_known)."""
    H = G.shape[0]
    ptr, rel = hplan.user_relays(G)
    degree = np.diff(ptr)
    out = []
    for z in range(1, H):
        users = np.flatnonzero(degree == z)
        if len(users) == 0:
            continue
        sets = rel[ptr[users][:, None] + np.arange(z)]
        n, min_known = hplan.round_counts(G, users, sets=sets)
        involved = np.bincount(sets.reshape(-1), minlength=H) > 0
        out.append((z, users, n, hplan.distinct_sets(sets, H), involved, min_known))
    return out


def _coded_exact(rounds, values, G, candidate):
    """A hierarchical Plan from per-round float alphas made exact by ``candidate``
    (a function from (floats, n, relay sets, the other rounds' loads) to Fractions or
    None); None if a round fails."""
    plan = hplan.Plan(G=G)
    values = [np.where(rd[4], np.clip(a, 0.0, 1.0), 0.0) for rd, a in zip(rounds, values)]
    total = sum(rd[2].astype(float) * a for rd, a in zip(rounds, values))
    for (z, users, n, distinct, involved, min_known), a in zip(rounds, values):
        alpha = candidate(a, n, distinct, total - n * a)
        if alpha is None:
            return None
        D = math.lcm(*(x.denominator for x in alpha))
        if D > MAX_UNITS:
            return None
        plan.rounds.append(hplan.Round(z=z, users=users, n=n, alpha=alpha, alpha_source="time-lp",
                                       D=D, min_known=min_known, lp_optimum=float(n @ a)))
    return plan


def _covered(alpha, distinct) -> bool:
    """Exact: 0 <= a_i <= 1 and every relay set of the round carries at least one IV."""
    if any(x < 0 or x > 1 for x in alpha):
        return False
    L = math.lcm(*(x.denominator for x in alpha))
    nums = np.array([x.numerator * (L // x.denominator) for x in alpha], dtype=object)
    cover = nums[np.asarray(distinct, dtype=np.int64)].sum(axis=1)
    return all(int(c) >= L for c in np.atleast_1d(cover))


def _nearest(max_den):
    def make(a, n, distinct, other=None):
        alpha = [Fraction(float(x)).limit_denominator(max_den) for x in a]
        return alpha if _covered(alpha, distinct) else None
    return make


def _repair(units: np.ndarray, rows: np.ndarray, need: np.ndarray, weight: np.ndarray,
            base: np.ndarray, step: np.ndarray, cap: np.ndarray) -> np.ndarray | None:
    """Greedy rounding: raise ``units`` (integers, one per relay) until every row's relays
    (``rows``, 0/1 m x H) hold ``need`` units, each time on the relay of a short row whose
    time after the step (``(base + step units) / weight``) is least; None if capped out."""
    units = units.copy()
    while True:
        short = np.flatnonzero(rows @ units < need)
        if not len(short):
            return units
        cand = (rows[short[0]] > 0) & (units < cap)
        if not cand.any():
            return None
        after = np.where(cand, (base + step * (units + 1)) / weight, np.inf)
        units[int(np.argmin(after))] += 1


def _grid(D, r):
    """Round z's alphas on the grid 1/D: down, then up where coverage needs it, the relay
    that stays fastest first (its other rounds' load counted in)."""
    def make(rounds_values):
        def per_round(a, n, distinct, other):
            H = len(a)
            rows = hplan.incidence(distinct, H)
            units = np.floor(np.asarray(a) * D + 1e-9).astype(np.int64)
            got = _repair(units, rows, np.full(len(rows), D), r, other,
                          n.astype(float) / D, np.full(H, D))
            return None if got is None else [Fraction(int(u), D) for u in got]
        return per_round
    return make


def _pick(candidates, load_plan, rates, server_rate, tstar_per_byte, notes):
    """The first exact candidate within TIME_RTOL of the LP's optimum, else the fastest;
    the load plan when it is no slower."""
    best, best_t, best_src = None, float("inf"), None
    for src, make in candidates:
        p = make()
        if p is None:
            continue
        t = uplink_seconds(relay_loads(p), rates, 1.0, server_rate)
        if t < best_t - 1e-15:
            best, best_t, best_src = p, t, src
        if t <= tstar_per_byte * (1 + TIME_RTOL) + 1e-15:
            break
    t_load = uplink_seconds(relay_loads(load_plan), rates, 1.0, server_rate)
    if best is None or t_load <= best_t * (1 + 1e-9):
        if best is None:
            notes.append("no exact time plan passed the checks; the load plan is used")
        return load_plan, "load-plan"
    return best, best_src


def coded_time_plan(G, rates, server_rate: float | None = None,
                    max_denominator: int = hplan.MAX_DENOMINATOR) -> TimePlan:
    """The paper's rounds with every round's a_i^z chosen, all rounds at once, for the
    shortest uplink under per-relay ``rates`` (bytes/s) and the server's ``server_rate``."""
    G = np.asarray(G, dtype=np.uint8)
    H = G.shape[0]
    R = _check_rates(rates, H)
    load_plan = hplan.make_plan(G, max_denominator)
    rounds = _coded_rounds(G)
    r, s = _normalised(R, server_rate)
    notes = []
    if not rounds:
        return TimePlan("coded", load_plan, load_plan, tuple(R), server_rate, 0.0, "load-plan")

    def build(cp):
        avars, cons, L = [], [], 0
        for z, users, n, distinct, involved, _ in rounds:
            a = cp.Variable(H)
            M = hplan.incidence(distinct, H)
            cons += [M @ a >= 1, a >= 0, a <= np.where(involved, 1.0, 0.0)]
            L = L + cp.multiply(n.astype(float), a)
            avars.append(a)
        return L, cons, avars

    tstar, avars = _two_stage(build, H, r, s)
    values = [np.asarray(a.value, dtype=float) for a in avars]
    tstar_per_byte = tstar / float(R.max())
    cands = [(f"lp-exact (denominators <= {max_denominator})",
              lambda: _coded_exact(rounds, values, G, _nearest(max_denominator)))]
    cands += [(f"lp-grid 1/{D}", lambda D=D: _coded_exact(rounds, values, G, _grid(D, r)(values)))
              for D in GRID_DENOMINATORS if D <= max(max_denominator, 2)]
    chosen, src = _pick(cands, load_plan, R, server_rate, tstar_per_byte, notes)
    return TimePlan("coded", chosen, load_plan, tuple(R), server_rate, tstar_per_byte, src, notes)


def joint_time_plan(G, rates, server_rate: float | None = None,
                    max_denominators=jplan.MAX_DENOMINATORS) -> TimePlan:
    """Seed 001's loads chosen under T2 for the shortest uplink under per-relay ``rates``."""
    load_plan = jplan.make_joint_plan(G, max_denominators=max_denominators)
    G = load_plan.G
    H = G.shape[0]
    R = _check_rates(rates, H)
    b = jplan.subset_bounds(G, load_plan.users)
    rows = jplan.essential_subsets(b, H)
    notes = []
    if len(rows) == 0:
        return TimePlan("joint", load_plan, load_plan, tuple(R), server_rate, 0.0, "load-plan")
    A = jplan.subset_masks(H)[:, rows].T.astype(float)
    r, s = _normalised(R, server_rate)

    def build(cp):
        L = cp.Variable(H, nonneg=True)
        return L, [A @ L >= b[rows].astype(float)], L

    tstar, Lvar = _two_stage(build, H, r, s)
    x = np.clip(np.asarray(Lvar.value, dtype=float), 0.0, None)
    tstar_per_byte = tstar / float(R.max())

    def joint_of(loads):
        if loads is None or not jplan.satisfies_t2(loads, b):
            return None
        F = math.lcm(*(v.denominator for v in loads))
        if F > MAX_UNITS:
            return None
        return jplan.JointPlan(G=G, loads=loads, F=F, users=load_plan.users,
                               dropped=load_plan.dropped, lp_optimum=float(sum(x)),
                               source="time-lp", constraints=int(len(rows)))

    cands = [(f"lp-exact (denominators <= {d})",
              lambda d=d: joint_of([Fraction(float(v)).limit_denominator(d) for v in x]))
             for d in max_denominators if d <= MAX_UNITS]
    rows_b = A.astype(np.int64)

    def grid(D):
        units = np.floor(x * D + 1e-9).astype(np.int64)
        got = _repair(units, rows_b, D * b[rows], r, np.zeros(H), np.full(H, 1.0 / D),
                      np.full(H, np.iinfo(np.int64).max))
        return None if got is None else joint_of([Fraction(int(u), D) for u in got])

    cands += [(f"lp-grid 1/{D}", lambda D=D: grid(D)) for D in GRID_DENOMINATORS]
    chosen, src = _pick(cands, load_plan, R, server_rate, tstar_per_byte, notes)
    return TimePlan("joint", chosen, load_plan, tuple(R), server_rate, tstar_per_byte, src, notes)


def time_plan(scheme: str, G, rates, server_rate: float | None = None,
              max_denominator: int | None = None) -> TimePlan:
    """The time plan of ``scheme`` ("coded" or "joint")."""
    if scheme == "coded":
        return coded_time_plan(G, rates, server_rate,
                               max_denominator or hplan.MAX_DENOMINATOR)
    if scheme == "joint":
        return joint_time_plan(G, rates, server_rate,
                               (max_denominator,) if max_denominator else jplan.MAX_DENOMINATORS)
    raise ValueError(f"--plan time: the {scheme} scheme has no load plan to choose "
                     f"(coded and joint have)")


def _rate_text(b: float) -> str:
    return f"{8 * b / 1e9:.3g} Gbit/s" if b >= 1.25e8 else f"{8 * b / 1e6:.3g} Mbit/s"


def format_time_plan(tp: TimePlan) -> str:
    """Both plans side by side: per relay its rate, loads and uplink seconds per MB of IV."""
    lines = [f"time-optimal plan (--plan time) beside the load-optimal one (--plan load): "
             f"{tp.source}",
             f"  {'relay':>5} {'rate':>12} {'L_i load':>9} {'L_i time':>9} "
             f"{'s/MB load':>10} {'s/MB time':>10}"]
    for i, (a, b, r) in enumerate(zip(tp.load_relay_loads, tp.relay_loads, tp.rates)):
        lines.append(f"  {i + 1:>5} {_rate_text(r):>12} {float(a):>9.4g} {float(b):>9.4g} "
                     f"{1e6 * float(a) / r:>10.4g} {1e6 * float(b) / r:>10.4g}")
    if tp.server_rate is not None:
        lines.append(f"  server link {_rate_text(tp.server_rate)} shared by every relay")
    tl, tt = tp.seconds(1e6, tp.load_plan), tp.seconds(1e6)
    lines.append(f"  uplink {float(tp.load_plan.uplink_load):.4g} -> "
                 f"{float(tp.planned.uplink_load):.4g} IVs; slowest relay {tl:.4g} -> {tt:.4g} s "
                 f"per MB of IV ({tt / tl if tl else 1:.3f}x)")
    lines.extend(f"  note: {n}" for n in tp.notes)
    return "\n".join(lines)
