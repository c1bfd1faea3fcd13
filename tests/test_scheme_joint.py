"""The joint scheme (docs/joint.md): acceptance numbers, exact T2, bounds, limits, the code.

Loads are compared as exact Fractions. T2's right-hand sides b(J) are recomputed
here independently -- a plain Python loop over subsets with sets for small H, and a
different vectorisation (users x subsets) for H = 16 -- rather than trusting the
planner's zeta transform. Where LP optima tie, only loads are asserted, never a
particular vertex.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from scipy.optimize import linprog

from hmtl_mpi.planning.hierarchical import make_plan
from hmtl_mpi.planning.joint import (MAX_RELAYS, JointPlan, JointPlanError, _exact_candidate, format_joint_plan, hierarchical_relay_loads, make_joint_plan, satisfies_t2, subset_bounds)
from hmtl_mpi.planning.topology import TopologyError, load_topology, symmetric, validate

REPO = Path(__file__).resolve().parents[1]
F = Fraction


# --- topologies ------------------------------------------------------------------------

def from_sets(K: int, sets) -> np.ndarray:
    """G from relay user sets numbered from 1 (the spec's Z_k)."""
    G = np.zeros((len(sets), K), dtype=np.uint8)
    for i, s in enumerate(sets):
        G[i, [k - 1 for k in s]] = 1
    return G


def cyclic(K: int, r: int) -> np.ndarray:
    """K = N: relay i holds users i .. i+r-1 (mod K)."""
    G = np.zeros((K, K), dtype=np.uint8)
    for i in range(K):
        for j in range(r):
            G[i, (i + j) % K] = 1
    return G


EXAMPLE_A = from_sets(4, [{1, 2, 3}, {2, 3, 4}, {1, 4}])
SMALL_GAP = from_sets(3, [{1, 2}, {1, 2}, {3}])

# name, G, (uplink, downlink), simple uplink bound (None: not stated by the spec)
ACCEPTANCE = [
    ("example-A", EXAMPLE_A, (F(2), F(2)), F(2)),
    ("example-B cyclic 3,2", cyclic(3, 2), (F(3, 2), F(1)), F(3, 2)),
    ("paper-fig2", "paper-fig2", (F(7), F(7)), F(7)),
    ("{1,2},{1,2},{3}", SMALL_GAP, (F(3), F(2)), F(2)),
    ("cyclic 5,2", cyclic(5, 2), (F(15, 4), F(3)), None),
    ("cyclic 5,3", cyclic(5, 3), (F(5, 2), F(2)), None),
    ("cyclic 6,2", cyclic(6, 2), (F(24, 5), F(4)), None),
    ("cyclic 6,3", cyclic(6, 3), (F(18, 5), F(3)), None),
    ("cyclic 7,3", cyclic(7, 3), (F(14, 3), F(4)), None),
    ("cyclic 4,2", cyclic(4, 2), (F(8, 3), F(2)), None),
    # spec (K, r, N) = our (H, r, K); symmetric(H, r, per_group) has K = C(H, r) per_group
    ("symmetric 5,2,10", ("sym", 5, 2, 1), (F(15, 2), F(6)), None),
    ("symmetric 4,2,18", ("sym", 4, 2, 3), (F(12), F(9)), None),
    ("symmetric 6,3,20", ("sym", 6, 3, 1), (F(12), F(10)), None),
]


def build(spec) -> np.ndarray:
    if isinstance(spec, str):
        return load_topology(spec)
    if isinstance(spec, tuple):
        _, H, r, per_group = spec
        return validate(symmetric(H, r, per_group))
    return validate(spec)


# --- independent oracles -----------------------------------------------------------------

def oracle_bounds(G: np.ndarray) -> dict[int, int]:
    """b(J) straight from T2, with sets, for every non-empty bitmask J (all users)."""
    H, K = G.shape
    relays_of = [frozenset(np.flatnonzero(G[:, k]).tolist()) for k in range(K)]
    N = [set(np.flatnonzero(G[i]).tolist()) for i in range(H)]
    out = {}
    for J in range(1, 1 << H):
        members = {i for i in range(H) if J >> i & 1}
        E = {k for k in range(K) if relays_of[k] <= members}
        out[J] = len(E) - min(len(E & N[k]) for k in range(H))
    return out


def exact_t2_holds(loads, bounds: dict[int, int]) -> list[int]:
    """The bitmasks whose T2 constraint the loads violate (exact Fractions)."""
    H = len(loads)
    return [J for J, b in bounds.items()
            if sum((loads[i] for i in range(H) if J >> i & 1), F(0)) < b]


def oracle_lp(G: np.ndarray) -> float:
    """LP(Z) of T3 with every subset as a row, solved by scipy (no pruning, no cvxpy)."""
    H = G.shape[0]
    bounds = oracle_bounds(G)
    A = np.array([[-(J >> i & 1) for i in range(H)] for J in bounds], dtype=float)
    b = -np.array(list(bounds.values()), dtype=float)
    res = linprog(np.ones(H), A_ub=A, b_ub=b, bounds=[(0, None)] * H, method="highs")
    assert res.status == 0, res.message
    return float(res.fun)


def simple_bound(G: np.ndarray) -> Fraction:
    H, K = G.shape
    m = int(G.sum(axis=1).min())
    return max(F(H * K - int(G.sum()), H - 1), F(K - m))


def check_plan(jp: JointPlan, G: np.ndarray, bounds=None) -> None:
    """Every invariant of a plan that does not depend on which optimum the LP chose."""
    H, K = G.shape
    assert (jp.H, jp.K) == (H, K)
    assert np.array_equal(jp.G, G)
    assert len(jp.loads) == H and all(isinstance(x, Fraction) and x >= 0 for x in jp.loads)
    assert jp.F == math.lcm(*(x.denominator for x in jp.loads))
    assert all(isinstance(u, int) for u in jp.units)
    assert [F(u, jp.F) for u in jp.units] == jp.loads
    assert sum(jp.units) == jp.F * jp.uplink_load
    assert jp.uplink_load == sum(jp.loads, F(0))
    m = int(G.sum(axis=1).min())
    assert jp.downlink_load == jp.downlink_lower_bound == K - m
    assert jp.downlink_units == jp.F * (K - m)
    assert jp.uplink_lower_bound == simple_bound(G)
    assert jp.uplink_load >= jp.uplink_lower_bound >= jp.downlink_load
    full = G.sum(axis=0) == H
    assert jp.dropped.tolist() == np.flatnonzero(full).tolist()
    assert jp.users.tolist() == np.flatnonzero(~full).tolist()
    if bounds is not None:
        assert exact_t2_holds(jp.loads, bounds) == []
    assert jp.source in ("lp", "hierarchical-fallback")


# --- acceptance numbers --------------------------------------------------------------------

@pytest.mark.parametrize("name,spec,expected,bound", ACCEPTANCE, ids=[a[0] for a in ACCEPTANCE])
def test_acceptance_numbers(name, spec, expected, bound):
    G = build(spec)
    jp = make_joint_plan(G)
    assert (jp.uplink_load, jp.downlink_load) == expected
    if bound is not None:
        assert jp.uplink_lower_bound == bound
    assert jp.source == "lp"
    check_plan(jp, G, oracle_bounds(G) if G.shape[0] <= 8 else None)
    # joint is never worse than hierarchical on either link (T5)
    hp = make_plan(G)
    assert jp.uplink_load <= hp.uplink_load and jp.downlink_load <= hp.downlink_load


def test_cyclic_closed_form():
    """T4 homogeneous: cyclic K = N gives (K(K - r)/(K - 1), K - r)."""
    for K in range(3, 8):
        for r in range(1, K):
            jp = make_joint_plan(cyclic(K, r))
            assert (jp.uplink_load, jp.downlink_load) == (F(K * (K - r), K - 1), F(K - r)), (K, r)


@pytest.mark.parametrize("G,hier,joint", [
    (EXAMPLE_A, (F(5, 2), F(2)), (F(2), F(2))),
    ("paper-fig2", (F(17, 2), F(7)), (F(7), F(7))),
    (cyclic(5, 2), (F(5), F(3)), (F(15, 4), F(3))),
    (cyclic(5, 3), (F(10, 3), F(2)), (F(5, 2), F(2))),
    (("sym", 5, 2, 1), (F(15, 2), F(6)), (F(15, 2), F(6))),
    (("sym", 4, 2, 3), (F(12), F(9)), (F(12), F(9))),
    (("sym", 6, 3, 1), (F(12), F(10)), (F(12), F(10))),
], ids=["example-A", "paper-fig2", "cyclic-5-2", "cyclic-5-3", "sym-5-2-10", "sym-4-2-18",
        "sym-6-3-20"])
def test_against_hierarchical(G, hier, joint):
    """Spec section 4: the stated hierarchical vs joint pairs on the same G."""
    G = build(G)
    hp = make_plan(G)
    jp = make_joint_plan(G)
    assert (hp.uplink_load, hp.downlink_load) == hier
    assert (jp.uplink_load, jp.downlink_load) == joint
    assert sum(hierarchical_relay_loads(G, hp), F(0)) == hp.uplink_load


def test_paper_fig2_lp_matches_oracle_and_is_deterministic():
    G = load_topology("paper-fig2")
    a, b = make_joint_plan(G), make_joint_plan(G)
    assert a.loads == b.loads and a.F == b.F
    assert a.lp_optimum == pytest.approx(oracle_lp(G), abs=1e-7)
    # the tie-break LP minimises max_i L_i: no optimal allocation has a smaller maximum
    H = G.shape[0]
    bounds = oracle_bounds(G)
    rows = [[-(J >> i & 1) for i in range(H)] + [0] for J in bounds]
    rows += [[1 if j == i else 0 for j in range(H)] + [-1] for i in range(H)]
    rhs = [-v for v in bounds.values()] + [0] * H
    res = linprog([0] * H + [1], A_ub=rows, b_ub=rhs, A_eq=[[1] * H + [0]], b_eq=[7],
                  bounds=[(0, None)] * (H + 1), method="highs")
    assert res.status == 0
    if a.tie_broken:
        assert float(max(a.loads)) == pytest.approx(res.fun, abs=1e-7)


def test_without_tie_break():
    for G in [load_topology("paper-fig2"), cyclic(5, 2), EXAMPLE_A]:
        jp = make_joint_plan(G, tie_break=False)
        assert not jp.tie_broken and jp.source == "lp"
        check_plan(jp, G, oracle_bounds(G))
        tied = make_joint_plan(G)
        assert tied.tie_broken and tied.uplink_load == jp.uplink_load
        assert max(tied.loads) <= max(jp.loads)


def test_subset_bounds_match_oracle():
    rng = np.random.default_rng(5)
    for _ in range(20):
        H, K = int(rng.integers(2, 7)), int(rng.integers(1, 9))
        G = np.zeros((H, K), dtype=np.uint8)
        for k in range(K):
            G[:, k] = (int(rng.integers(1, 1 << H)) >> np.arange(H)) & 1
        b = subset_bounds(G)
        assert b[0] == 0
        assert {J: int(b[J]) for J in range(1, 1 << H)} == oracle_bounds(G)


# --- property test against the hierarchical scheme -----------------------------------------

@st.composite
def topologies(draw):
    H = draw(st.integers(2, 5))
    K = draw(st.integers(2, 7))
    masks = draw(st.lists(st.integers(1, (1 << H) - 1), min_size=K, max_size=K))
    G = np.array([[(mask >> i) & 1 for mask in masks] for i in range(H)], dtype=np.uint8)
    try:
        return validate(G)                  # what load_topology accepts
    except TopologyError:
        assume(False)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.filter_too_much,
                                                                  HealthCheck.too_slow])
@given(topologies())
def test_joint_never_worse_than_hierarchical(G):
    jp = make_joint_plan(G)
    hp = make_plan(G)
    bounds = oracle_bounds(G)
    check_plan(jp, G, bounds)
    assert jp.uplink_load <= hp.uplink_load
    assert jp.downlink_load <= hp.downlink_load
    assert jp.downlink_load == G.shape[1] - int(G.sum(axis=1).min())
    assert jp.uplink_load >= jp.uplink_lower_bound
    assert float(jp.uplink_load) == pytest.approx(oracle_lp(G), rel=1e-7, abs=1e-7)


# --- dropped users, fallback ---------------------------------------------------------------

def test_users_held_by_every_relay_are_dropped():
    base = load_topology("paper-fig2")
    G = np.concatenate([base[:, :4], np.ones((5, 1), np.uint8), base[:, 4:],
                        np.ones((5, 1), np.uint8)], axis=1)         # users 5 and 12 on all
    G = validate(G)
    jp = make_joint_plan(G)
    assert jp.dropped.tolist() == [4, 11]
    assert 4 not in jp.users and 11 not in jp.users and len(jp.users) == 10
    assert jp.to_dict()["dropped_users"] == [5, 12]
    # the dropped users change neither the LP nor T1's downlink
    ref = make_joint_plan(base)
    assert (jp.uplink_load, jp.downlink_load) == (ref.uplink_load, ref.downlink_load) == (7, 7)
    check_plan(jp, G, oracle_bounds(G))
    # and the bounds: K - m and (HK - S)/(H - 1) are unchanged by a user held by all
    assert (jp.uplink_lower_bound, jp.downlink_lower_bound) == (ref.uplink_lower_bound,
                                                               ref.downlink_lower_bound)


def test_every_user_dropped():
    """Degenerate but legal for the planner: nothing to send on either link."""
    G = np.ones((3, 2), dtype=np.uint8)
    jp = make_joint_plan(G)
    assert jp.dropped.tolist() == [0, 1] and jp.users.tolist() == []
    assert (jp.uplink_load, jp.downlink_load, jp.F, jp.units) == (0, 0, 1, [0, 0, 0])


def test_hierarchical_fallback_when_no_rationalisation_passes():
    G = cyclic(5, 2)                         # optimum 3/4 per relay: no integer loads pass
    jp = make_joint_plan(G, max_denominators=(1,))
    assert jp.source == "hierarchical-fallback"
    hp = make_plan(G)
    assert jp.loads == hierarchical_relay_loads(G, hp)
    assert jp.uplink_load == hp.uplink_load == 5
    assert jp.lp_optimum == pytest.approx(3.75)
    check_plan(jp, G, oracle_bounds(G))
    assert jp.to_dict()["source"] == "hierarchical-fallback"


def test_exact_checks_reject_bad_loads():
    G = load_topology("paper-fig2")
    b = subset_bounds(G)
    jp = make_joint_plan(G)
    assert satisfies_t2(jp.loads, b)
    for i, x in enumerate(jp.loads):        # the total is optimal: any cut breaks T2
        if x > 0:
            worse = list(jp.loads)
            worse[i] = x - F(1, 2)
            assert not satisfies_t2(worse, b)
            assert exact_t2_holds(worse, oracle_bounds(G)) != []
    # a float vector whose rationals are cheap but infeasible is refused, not used
    B = cyclic(3, 2)
    assert _exact_candidate(np.array([0.5, 0.5, 0.4]), 64, subset_bounds(B), 1.5) is None
    assert _exact_candidate(np.array([0.5, 0.5, 0.5]), 64, subset_bounds(B), 1.5) == [F(1, 2)] * 3
    assert _exact_candidate(np.array([0.5, 0.5, 0.6]), 64, subset_bounds(B), 1.5) is None  # > opt


# --- refusals --------------------------------------------------------------------------------

def test_too_many_relays_refused():
    assert MAX_RELAYS == 16
    rng = np.random.default_rng(0)
    G = (rng.random((17, 30)) < 0.3).astype(np.uint8)
    G[0] = 1
    G[0, 0] = 0                              # every user held, no relay with all users
    with pytest.raises(JointPlanError) as err:
        make_joint_plan(G)
    msg = str(err.value)
    assert "16" in msg and "17" in msg and "2^H = 131072" in msg
    assert isinstance(err.value, ValueError)


def test_far_too_many_relays_refused_at_once():
    """H = 1,000 (the coded scheme's scale): refused with the limit, before any work."""
    rng = np.random.default_rng(1)
    G = np.zeros((1000, 3000), dtype=np.uint8)
    G[rng.integers(0, 1000, size=3000), np.arange(3000)] = 1
    G[np.arange(1000), np.arange(1000)] = 1
    with pytest.raises(JointPlanError, match=r"H = 1000 relays is more than the joint "
                                             r"planner's limit of 16.*2\^H = 1.07e\+301"):
        make_joint_plan(G)


def test_user_without_relay_refused():
    G = EXAMPLE_A.copy()
    G[:, 2] = 0                              # user 3 (from 1) on no relay
    with pytest.raises(JointPlanError, match=r"user 3 is linked to no relay"):
        make_joint_plan(G)


@pytest.mark.parametrize("G", [np.zeros((1, 3)), np.array([[0, 2], [1, 0]]),
                               np.zeros((2, 2, 2))])
def test_malformed_g_refused(G):
    with pytest.raises(JointPlanError):
        make_joint_plan(G)


# --- H = 16 ----------------------------------------------------------------------------------

def random_16(seed: int = 1, K: int = 40) -> np.ndarray:
    rng = np.random.default_rng(seed)
    while True:
        G = np.zeros((16, K), dtype=np.uint8)
        for k in range(K):
            G[rng.choice(16, size=int(rng.integers(2, 5)), replace=False), k] = 1
        try:
            return validate(G)
        except TopologyError:
            continue


def vectorised_oracle_bounds(G: np.ndarray) -> np.ndarray:
    """b(J) for every bitmask J via an explicit (subsets x users) membership table."""
    H, K = G.shape
    masks = (G.astype(np.int64) << np.arange(H)[:, None]).sum(axis=0)
    J = np.arange(1 << H, dtype=np.int64)
    in_E = (masks[None, :] & ~J[:, None]) == 0                 # (2^H, K): relays(k) ⊆ J
    inter = in_E.astype(np.int64) @ G.T.astype(np.int64)        # |E(J) ∩ N_k|
    return in_E.sum(axis=1) - inter.min(axis=1)


def test_sixteen_relays():
    G = random_16()
    t0 = time.perf_counter()
    jp = make_joint_plan(G)
    elapsed = time.perf_counter() - t0
    print(f"\nmake_joint_plan, H = 16, K = 40: {elapsed:.3f} s, {jp.constraints} LP rows, "
          f"uplink {jp.uplink_load}, downlink {jp.downlink_load}, F = {jp.F}")
    check_plan(jp, G)
    b = vectorised_oracle_bounds(G)
    bits = (np.arange(1 << 16)[:, None] >> np.arange(16)) & 1
    assert np.all(bits @ np.array(jp.units, dtype=np.int64) >= jp.F * b)
    assert jp.uplink_load <= make_plan(G).uplink_load


# --- output -----------------------------------------------------------------------------------

def test_stdout_stays_clean(capfd):
    make_joint_plan(load_topology("paper-fig2"))
    make_joint_plan(cyclic(6, 3))
    out, _ = capfd.readouterr()
    assert out == ""


def test_to_dict_and_format():
    jp = make_joint_plan(load_topology("paper-fig2"))
    d = json.loads(json.dumps(jp.to_dict()))
    assert d["scheme"] == "joint"
    assert (d["K"], d["H"], d["ranks"]) == (10, 5, 16)
    assert "numbered from 1" in d["numbering"]
    assert (d["uplink_load"], d["downlink_load"]) == (7, 7)
    assert (d["uplink_load_exact"], d["downlink_load_exact"]) == ("7", "7")
    assert (d["uplink_lower_bound"], d["downlink_lower_bound"]) == (7, 7)
    assert sum(d["per_relay_uplink"]) == 7
    assert sum(F(x) for x in d["per_relay_uplink_exact"]) == 7
    assert sum(d["units"]) == d["F"] * 7
    assert d["dropped_users"] == [] and d["source"] == "lp"
    assert d["uncoded"] == {"uplink_load": 10, "downlink_load": 10}
    text = format_joint_plan(jp)
    assert "H = 5 relays, K = 10 users" in text
    lines = text.splitlines()
    for name, up in [("joint (", "7"), ("simple bound", "7"), ("hierarchical", "8.5"),
                     ("uncoded", "10")]:
        line = next(row for row in lines if row.startswith(name))
        assert line.split()[-2] == up, line
    assert len([row for row in lines if row.strip()[:1].isdigit()]) == 5     # one per relay


def test_cli_json_is_clean():
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, "-m", "hmtl_mpi.plan", "--scheme", "joint", "--topology",
                           "paper-fig2", "--json"], capture_output=True, text=True,
                          timeout=300, cwd=REPO, env=env)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)                # nothing but the JSON document on stdout
    assert out["uplink_load_exact"] == "7" and out["scheme"] == "joint"


# --- the code: the exchange runs bit-exactly and moves the planned bytes -----------------

from hmtl_mpi.job.verify import verify_exchange as _verify_scheme  # noqa: E402
from hmtl_mpi.schemes.coded import Coded  # noqa: E402

def verify_exchange(code, dim, seed=0):
    """The exchange of ``code`` run through the coded scheme's parts, every rank in this
    process (what ``plan --verify`` runs: :mod:`hmtl_mpi.job.verify`)."""
    return _verify_scheme(Coded(code.G, code), dim, seed)

from hmtl_mpi.schemes import get  # noqa: E402
from hmtl_mpi.planning.topology import cyclic, example_a  # noqa: E402


@pytest.mark.parametrize("name,G,loads", [
    ("example-a", example_a(), (2, 2)),
    ("paper-fig2", load_topology("paper-fig2"), (7, 7)),
    ("cyclic-5-2", cyclic(5, 2), (Fraction(15, 4), 3)),
    ("cyclic-6-3", cyclic(6, 3), (Fraction(18, 5), 3)),
    ("symmetric-5-2", symmetric(5, 2, 1), (Fraction(15, 2), 6)),
])
def test_joint_code_decodes_bit_exactly_with_the_planned_bytes(name, G, loads):
    scheme = get("joint").plan(G, seed=3)
    assert scheme.planned_loads == (Fraction(loads[0]), Fraction(loads[1]))
    assert len(scheme.code.blocks) == 1 and scheme.code.blocks[0].F == scheme.planned.F
    F = scheme.planned.F
    dim = 997 * F                                       # a multiple of F: no padding at all
    res = verify_exchange(scheme.code, dim, seed=5)
    assert res["bit_exact"] is True
    iv = 8 * dim
    # bytes = planned IVs exactly, plus 4 bytes per escaped coded symbol (~1 in 65537)
    for got, planned in ((res["uplink_bytes"], loads[0]), (res["downlink_bytes"], loads[1])):
        extra = got - Fraction(planned) * iv
        assert extra >= 0 and extra % 4 == 0 and extra <= 4 * (1 + got // 2 // 4000), (got, planned)


def test_joint_code_survives_a_buffer_round_trip():
    scheme = get("joint").plan(load_topology("paper-fig2"), seed=1)
    back = get("joint").from_buffer(scheme.G, scheme.to_buffer())
    assert back.planned_loads == scheme.planned_loads
    assert verify_exchange(back.code, 101, seed=2)["bit_exact"] is True


@given(st.integers(0, 10_000))
@settings(max_examples=12, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
def test_joint_code_decodes_on_random_topologies(seed):
    rng = np.random.default_rng(seed)
    H, K = int(rng.integers(2, 6)), int(rng.integers(3, 12))
    G = (rng.random((H, K)) < rng.uniform(0.3, 0.8)).astype(np.uint8)
    try:
        G = validate(G)
    except TopologyError:
        assume(False)
    scheme = get("joint").plan(G, seed=seed)
    res = verify_exchange(scheme.code, 3 * scheme.planned.F + 1, seed=seed)
    assert res["bit_exact"] is True


def test_cli_verify_json():
    proc = subprocess.run([sys.executable, "-m", "hmtl_mpi.plan", "--scheme", "joint",
                           "--topology", "example-a", "--verify", "--dim", "500", "--json"],
                          capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert (out["uplink_load"], out["downlink_load"], out["uplink_lower_bound"]) == (2, 2, 2)
    assert out["per_relay_uplink"] == [1, 1, 0] and out["F"] == 1
    v = out["verify"]
    assert v["bit_exact"] is True
    assert abs(v["measured_uplink_load"] - 2) < 0.01 and abs(v["measured_downlink_load"] - 2) < 0.01


def test_cli_refuses_too_many_relays(tmp_path):
    G = np.zeros((17, 18), dtype=np.uint8)
    for i in range(17):
        G[i, i] = G[i, i + 1] = 1
    np.save(tmp_path / "g.npy", G)
    proc = subprocess.run([sys.executable, "-m", "hmtl_mpi.plan", "--scheme", "joint",
                           "--topology", str(tmp_path / "g.npy")],
                          capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 2
    assert "H = 17 relays is more than the joint planner's limit of 16" in proc.stderr
    assert "Traceback" not in proc.stderr
