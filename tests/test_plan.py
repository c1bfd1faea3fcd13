"""The planner: the paper's worked example, Theorem 3, the bounds and exact alphas.

Every property is checked in exact rationals (``Fraction``) where the plan offers
them. n_i^z and min_i |N_i ∩ I_z| are recomputed here with plain Python sets,
straight from eq. (16) and (32), rather than trusting the planner's matrix code.
"""

from __future__ import annotations

import io
import json
import math
import os
import subprocess
import sys
from contextlib import redirect_stdout
from fractions import Fraction
from math import comb
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.optimize import linprog

import hmtl_mpi.planning.hierarchical as plan_mod
from hmtl_mpi.planning.hierarchical import (Plan, exact_alpha, format_plan, make_plan, solve_round_lp)
from hmtl_mpi.plan import main
from hmtl_mpi.planning.topology import paper_fig2, random_regular, symmetric, validate

REPO = Path(__file__).resolve().parents[1]
F = Fraction


# --- the worked example (docs/scheme.md "Worked example", paper Section III) -----------------

EXPECTED_ROUNDS = [
    # z, I_z (1-based), n_i^z, alpha_i^z, uplink, downlink
    (2, [3, 4, 5, 7, 8, 9], [3, 2, 2, 2, 2], [F(1, 2)] * 5, F(11, 2), F(4)),
    (3, [1, 2, 6, 10], [3, 2, 1, 2, 2], [F(0), F(1, 2), F(0), F(1, 2), F(1, 2)], F(3), F(3)),
]


def test_paper_fig2_cli_json():
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, "-m", "hmtl_mpi.plan", "--topology", "paper-fig2",
                           "--json"], capture_output=True, text=True, timeout=300, cwd=REPO,
                          env=env)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    out = json.loads(proc.stdout)
    assert (out["K"], out["H"], out["ranks"]) == (10, 5, 16)
    assert out["uplink_load"] == 8.5 and out["uplink_load_exact"] == "17/2"
    assert out["downlink_load"] == 7 and out["downlink_load_exact"] == "7"
    assert (out["uplink_lower_bound"], out["downlink_lower_bound"]) == (6.5, 7)
    assert out["uncoded"] == {"uplink_load": 10, "downlink_load": 10}
    assert out["equal_split"]["uplink_load"] == pytest.approx(53 / 6)
    assert [r["z"] for r in out["rounds"]] == [2, 3]
    for r, (z, users, n, alpha, up, down) in zip(out["rounds"], EXPECTED_ROUNDS):
        assert r["z"] == z
        assert r["users"] == users
        assert r["n"] == n
        assert [F(a) for a in r["alpha_exact"]] == alpha
        assert r["alpha"] == [float(a) for a in alpha]
        assert r["alpha_source"] == "lp"
        assert r["D"] == 2
        assert r["uplink_load"] == float(up) and r["downlink_load"] == float(down)


@pytest.mark.parametrize("param_lp", [False, True], ids=["lp-per-round", "param-lp"])
def test_paper_fig2_exact(param_lp, monkeypatch):
    if param_lp:               # force the parametrised LP (built once) onto this 2-round case
        monkeypatch.setattr(plan_mod, "PARAM_LP_MIN_ROUNDS", 1)
    p = make_plan(paper_fig2())
    assert [r.z for r in p.rounds] == [2, 3]
    for r, (z, users, n, alpha, up, down) in zip(p.rounds, EXPECTED_ROUNDS):
        assert (r.users + 1).tolist() == users
        assert r.n.tolist() == n
        assert r.alpha == alpha and all(isinstance(a, Fraction) for a in r.alpha)
        assert r.alpha_source == "lp" and r.D == 2
        assert r.units == [int(a * 2) for a in alpha]
        assert r.uplink_load == up and r.downlink_load == down
    assert (p.uplink_load, p.downlink_load) == (F(17, 2), F(7))
    assert (p.uplink_lower_bound, p.downlink_lower_bound) == (F(13, 2), F(7))
    assert p.equal_split_uplink_load == F(53, 6)
    text = format_plan(p)
    assert "round z = 2: I_2 = {3, 4, 5, 7, 8, 9}" in text
    assert "uplink load 11/2 = 5.5, downlink load 4" in text


# --- Theorem 3 -------------------------------------------------------------------------------

@pytest.mark.parametrize("H,r,per_group,expected", [
    (5, 2, 1, (F(15, 2), F(6))),      # docs/scheme.md: H=5, r=2, K=10 -> (7.5, 6)
    (4, 2, 3, (F(12), F(9))),         # H=4, r=2, K=18 -> (12, 9)
    (6, 3, 1, (F(12), F(10))),        # H=6, r=3, K=20 -> (12, 10)
    (3, 1, 1, None), (3, 2, 4, None), (4, 1, 2, None), (4, 3, 3, None), (5, 1, 1, None),
    (5, 3, 2, None), (5, 4, 1, None), (6, 2, 1, None), (6, 4, 1, None), (7, 3, 1, None),
    (2, 1, 5, None),
])
def test_theorem3_symmetric_meets_bounds(H, r, per_group, expected):
    G = symmetric(H, r, per_group)
    K = comb(H, r) * per_group
    p = make_plan(G)
    up, down = F(K * (H - r), H - 1), K - F(r * K, H)
    if expected is not None:
        assert (up, down) == expected
    assert p.uplink_load == up == p.uplink_lower_bound
    assert p.downlink_load == down == p.downlink_lower_bound
    assert [rd.z for rd in p.rounds] == [r]
    assert p.rounds[0].alpha_source == "lp"
    check_plan(G, p)


# --- properties on many topologies ------------------------------------------------------------

def sets_of(G):
    H, K = G.shape
    N = [set(np.flatnonzero(G[i]).tolist()) for i in range(H)]
    deg = G.sum(axis=0)
    I = {z: set(np.flatnonzero(deg == z).tolist()) for z in range(1, H + 1)}
    return N, I


def check_plan(G: np.ndarray, p: Plan) -> None:
    """Every property the spec and the paper promise, in exact arithmetic."""
    H, K = G.shape
    N, I = sets_of(G)
    min_N = min(len(Ni) for Ni in N)

    # rounds: exactly the z in 1..H-1 with I_z non-empty, in order
    assert [r.z for r in p.rounds] == [z for z in range(1, H) if I[z]]
    sum_min_known = 0
    paper_slack = F(0)            # sum_z sum_i (1/z) min_j |N_i ∩ N_j ∩ I_z| (eq. 36a)
    for r in p.rounds:
        z, Iz = r.z, I[r.z]
        assert set(r.users.tolist()) == Iz
        # eq. (16), min over j in [H] as the paper writes it (j = i never attains it)
        n = [len(N[i] & Iz) - min(len(N[i] & N[j] & Iz) for j in range(H)) for i in range(H)]
        assert r.n.tolist() == n
        assert r.min_known == min(len(N[i] & Iz) for i in range(H))
        sum_min_known += r.min_known
        paper_slack += sum(F(min(len(N[i] & N[j] & Iz) for j in range(H)), z) for i in range(H))
        # exact alphas: rationals in [0, 1], every user of the round covered (>= 1)
        assert len(r.alpha) == H and all(isinstance(a, Fraction) for a in r.alpha)
        assert all(0 <= a <= 1 for a in r.alpha)
        for k in Iz:
            assert sum((r.alpha[i] for i in range(H) if k in N[i]), F(0)) >= 1, (z, k)
        for i in range(H):
            if not N[i] & Iz:
                assert r.alpha[i] == 0
        assert r.D == math.lcm(*(a.denominator for a in r.alpha))
        assert [F(u, r.D) for u in r.units] == r.alpha
        assert r.alpha_source in ("lp", "equal-split")
        if r.alpha_source == "equal-split":
            assert r.alpha == [F(1, z) if N[i] & Iz else F(0) for i in range(H)]
        # per round: eq. (27) and (32), and LP <= equal split (Remark 2)
        assert r.uplink_load == sum((n[i] * r.alpha[i] for i in range(H)), F(0))
        assert r.downlink_load == len(Iz) - r.min_known
        assert r.uplink_load <= F(sum(n), z)
        assert r.uplink_load >= F(r.lp_optimum) - F(1, 10 ** 6)
    assert p.uplink_load == sum((r.uplink_load for r in p.rounds), F(0))

    up, down = p.uplink_load, p.downlink_load
    ub, db = p.uplink_lower_bound, p.downlink_lower_bound
    # Theorem 2 bounds as the paper states them (35a sums z = 1..H)
    assert ub == F(H * K - sum(z * len(I[z]) for z in range(1, H + 1)), H - 1)
    assert db == K - min_N
    # Theorem 1 downlink; users linked to all H relays (I_H) need no transmission at all
    assert down == K - len(I[H]) - sum_min_known
    # achieved loads between the bounds and the uncoded (K, K)
    assert ub <= up <= K and db <= down <= K
    # the converse of the downlink bound also bounds any uplink (relays j != i must
    # carry the K - |N_i| IVs relay i lacks)
    assert up >= db
    # Corollary 1 as docs/scheme.md states it ...
    assert up - max(ub, db) <= min_N
    assert down - (K - min_N) <= min_N - sum_min_known
    # ... and the paper's sharper (36a)
    assert up - max(ub, db) <= min_N - paper_slack
    # Remark 2 / eq. (44): the equal split is feasible and no better than the LP
    es = p.equal_split_uplink_load
    assert es == sum((F(int(r.n.sum()), r.z) for r in p.rounds), F(0))
    assert es == K - len(I[H]) - paper_slack
    assert up <= es


def repaired(G: np.ndarray, rng) -> np.ndarray:
    """Make a Bernoulli G valid with as few changes as possible (needs K >= 2, H >= 2)."""
    G = G.astype(np.uint8).copy()
    H, K = G.shape
    for k in np.flatnonzero(G.sum(axis=0) == 0):
        G[rng.integers(H), k] = 1
    for i in np.flatnonzero(G.sum(axis=1) == 0):
        G[i, rng.integers(K)] = 1
    for _ in range(H * K):
        full = np.flatnonzero(G.sum(axis=1) == K)
        if not len(full):
            break
        i = full[0]
        spare = [k for k in range(K) if G[:, k].sum() > 1]   # users with another relay
        G[i, spare[rng.integers(len(spare))]] = 0
    return validate(G)


def lp_reference(n, users_relays, H):
    """Optimum of P(z) by scipy's HiGHS, independent of cvxpy."""
    A = np.zeros((len(users_relays), H))
    for row, rel in enumerate(users_relays):
        A[row, list(rel)] = 1
    res = linprog(np.asarray(n, float), A_ub=-A, b_ub=-np.ones(len(A)), bounds=(0, 1),
                  method="highs")
    assert res.status == 0
    return res.fun


def check_lp_optimal(G, p):
    N, I = sets_of(G)
    for r in p.rounds:
        rel = [tuple(i for i in range(G.shape[0]) if k in N[i]) for k in sorted(I[r.z])]
        ref = lp_reference(r.n, rel, G.shape[0])
        assert r.lp_optimum == pytest.approx(ref, abs=1e-6)
        if r.alpha_source == "lp":
            assert float(r.uplink_load) == pytest.approx(ref, abs=1e-6)


def random_topologies(count: int, seed: int):
    rng = np.random.default_rng(seed)
    out = []
    while len(out) < count:
        H = int(rng.integers(2, 8))
        K = int(rng.integers(2, 22))
        p = float(rng.uniform(0.15, 0.95))
        G = repaired((rng.random((H, K)) < p), rng)
        if len(out) % 4 == 0:                 # add users linked to every relay (I_H)
            extra = np.ones((H, int(rng.integers(1, 4))), dtype=np.uint8)
            G = validate(np.hstack([G, extra]))
        out.append(G)
    return out


@pytest.mark.parametrize("G", random_topologies(40, seed=2024),
                         ids=lambda G: f"H{G.shape[0]}K{G.shape[1]}")
def test_random_topologies(G):
    p = make_plan(G)
    check_plan(G, p)
    check_lp_optimal(G, p)


@pytest.mark.parametrize("K,H,r,seed", [(12, 4, 1, 0), (15, 5, 2, 1), (20, 6, 3, 2),
                                        (25, 7, 5, 3), (9, 3, 2, 4), (30, 8, 4, 5)])
def test_random_regular_topologies(K, H, r, seed):
    G = random_regular(K, H, r, seed=seed)
    p = make_plan(G)
    check_plan(G, p)
    check_lp_optimal(G, p)


def test_many_rounds_param_lp_matches_per_round_lp(monkeypatch):
    """Mixed degrees 1..H-1 (one round per degree): the parametrised LP path is used
    and agrees with a fresh cvxpy problem per round."""
    rng = np.random.default_rng(7)
    H, K = 9, 60
    G = np.zeros((H, K), dtype=np.uint8)
    for k in range(K):
        G[rng.choice(H, size=1 + k % (H - 1), replace=False), k] = 1
    G = validate(G)
    calls = []
    real_solve = plan_mod.RoundLP.solve
    monkeypatch.setattr(plan_mod.RoundLP, "solve",
                        lambda self, n, cols: calls.append(len(cols)) or real_solve(self, n, cols))
    p = make_plan(G)
    assert len(p.rounds) == H - 1 == len(calls)
    check_plan(G, p)
    for r in p.rounds:
        A = G[:, r.users]
        a = solve_round_lp(r.n, A)
        a[~A.any(axis=1)] = 0
        assert float(r.n @ a) == pytest.approx(r.lp_optimum, abs=1e-6)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(H=st.integers(2, 6), K=st.integers(2, 16), p=st.floats(0.1, 1.0),
       all_linked=st.integers(0, 2), seed=st.integers(0, 2 ** 32 - 1))
def test_random_topologies_hypothesis(H, K, p, all_linked, seed):
    rng = np.random.default_rng(seed)
    G = repaired(rng.random((H, K)) < p, rng)
    if all_linked:
        G = validate(np.hstack([G, np.ones((H, all_linked), dtype=np.uint8)]))
    check_plan(G, make_plan(G))


# --- exact conversion and the equal-split fallback --------------------------------------------

def test_fallback_when_denominator_too_small():
    """max_denominator = 1 cannot represent 1/2: every round falls back to 1/z."""
    G = paper_fig2()
    p = make_plan(G, max_denominator=1)
    assert [r.alpha_source for r in p.rounds] == ["equal-split", "equal-split"]
    assert p.rounds[0].alpha == [F(1, 2)] * 5 and p.rounds[0].D == 2
    assert p.rounds[1].alpha == [F(1, 3)] * 5 and p.rounds[1].D == 3
    assert p.uplink_load == p.equal_split_uplink_load == F(53, 6)
    assert p.downlink_load == 7
    check_plan(G, p)


def test_fallback_when_exact_alpha_fails(monkeypatch):
    monkeypatch.setattr(plan_mod, "exact_alpha", lambda *a, **k: None)
    for G in [paper_fig2(), symmetric(5, 2), random_topologies(1, seed=99)[0]]:
        p = make_plan(G)
        assert all(r.alpha_source == "equal-split" for r in p.rounds)
        assert all(r.D == r.z for r in p.rounds)
        assert p.uplink_load == p.equal_split_uplink_load
        check_plan(G, p)


def test_fallback_json_cli(monkeypatch):
    buf = io.StringIO()
    with redirect_stdout(buf):
        assert main(["--topology", "paper-fig2", "--json", "--max-denominator", "1"]) == 0
    out = json.loads(buf.getvalue())
    assert [r["alpha_source"] for r in out["rounds"]] == ["equal-split"] * 2
    assert out["uplink_load_exact"] == "53/6"


def test_exact_alpha_checks():
    A = np.array([[1, 1, 0], [1, 0, 1], [0, 1, 1]])          # 3 relays, 3 users, z = 2
    n = np.array([2, 2, 2])
    # the optimum 1/2, 1/2, 1/2 (with float noise) is accepted exactly
    got = exact_alpha(np.array([0.4999999999, 0.5000000001, 0.5]), n, A, 3.0)
    assert got == [F(1, 2)] * 3
    # under-covering after rounding: rejected
    assert exact_alpha(np.array([0.4, 0.4, 0.6]), n, A, 2.8) is None
    # feasible but worse than the LP optimum: rejected
    assert exact_alpha(np.array([1.0, 1.0, 1.0]), n, A, 3.0) is None
    # one user on three relays, optimum 1/3 each: fine with D = 3, not with D <= 2
    A1, n1, a1 = np.ones((3, 1)), np.array([3, 3, 3]), np.full(3, 1 / 3)
    assert exact_alpha(a1, n1, A1, 3.0) == [F(1, 3)] * 3
    assert exact_alpha(a1, n1, A1, 3.0, max_denominator=2) is None
    # a huge common denominator is checked without overflow (Python integers)
    primes = [2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47, 53, 59, 61]
    assert math.prod(primes) * len(primes) > 2 ** 62
    A2, n2 = np.ones((len(primes), 1)), np.zeros(len(primes), dtype=int)
    got = exact_alpha(np.array([1 / p for p in primes]), n2, A2, 0.0)
    assert got == [F(1, p) for p in primes]
    A3 = np.ones((len(primes), 1))
    A3[:2] = 0                         # without relays 1, 2 (1/2, 1/3) the user is not covered
    assert sum(F(1, p) for p in primes[2:]) < 1
    assert exact_alpha(np.array([1 / p for p in primes]), n2, A3, 0.0) is None


def test_plan_cli_rejects_bad_max_denominator():
    with pytest.raises(SystemExit) as info:
        main(["--topology", "paper-fig2", "--max-denominator", "0"])
    assert info.value.code == 2


def test_plan_cli_invalid_topology_in_process(tmp_path, capsys):
    bad = tmp_path / "bad.npy"
    np.save(bad, np.array([[1, 1], [0, 1]]))
    assert main(["--topology", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "relay 1 is linked to all 2 users" in err


# --- scale: the same plan from relay sets, pair counts and sparse LPs ---------------------

@pytest.mark.parametrize("K,H,r,seed", [(600, 60, 3, 0), (400, 40, 2, 1), (300, 12, 5, 2)])
def test_plan_at_larger_scale_from_the_definitions(K, H, r, seed, monkeypatch):
    """Pair counts over the users' relay sets (H >> z) and one sparse constraint per
    distinct relay set give the definitions' n_i^z, min |N_i ∩ I_z| and LP optimum; the
    dense product gives the same counts."""
    G = random_regular(K, H, r, seed=seed)
    p = make_plan(G)
    check_plan(G, p)
    check_lp_optimal(G, p)
    monkeypatch.setattr(plan_mod, "PAIR_COUNT_FACTOR", 10 ** 9)      # force the dense product
    dense = make_plan(G)
    for a, b in zip(p.rounds, dense.rounds):
        assert np.array_equal(a.n, b.n) and a.min_known == b.min_known and a.alpha == b.alpha


def test_relay_sets_and_their_distinct_rows():
    G = validate(np.array([[1, 0, 1, 1, 0], [1, 1, 0, 1, 1], [0, 1, 1, 0, 1]], dtype=np.uint8))
    ptr, rel = plan_mod.user_relays(G)
    assert [rel[ptr[k]: ptr[k + 1]].tolist() for k in range(5)] == \
        [[0, 1], [1, 2], [0, 2], [0, 1], [1, 2]]
    sets = np.array([[0, 1], [1, 2], [0, 2], [0, 1], [1, 2]])
    assert plan_mod.distinct_sets(sets, 3).tolist() == [[0, 1], [0, 2], [1, 2]]
    wide = np.array([[0, 5, 9], [0, 5, 9], [1, 2, 3]])               # 3 log2(H) > 62: rows
    assert plan_mod.distinct_sets(wide, 2 ** 21).tolist() == [[0, 5, 9], [1, 2, 3]]
    assert exact_alpha(np.full(3, 0.5), np.array([1, 1, 1]), None, 1.5,
                       sets=plan_mod.distinct_sets(sets, 3)) == [F(1, 2)] * 3
