"""Gradient codes over GF(2^31 - 1) (docs/gradient-coding.md sections 2-3) and JNCSS
(section 4).

Oracles: the spec's worked example (its tables, in exact integers), exact Python
integers / Fractions for the field arithmetic and the decoders, closed-form order
statistics for the delay model, and brute force for the greedy selection. The
whole file runs in well under a minute on two shared cores.
"""

from __future__ import annotations

import itertools
import json
import math
import re
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hmtl_mpi.codes.gradcode import (HALF, P31, SUM_BOUND, DelayModel, GradCodeError, Selection, TreeCode, expected_time, feasibility_error, field_combine, field_from_rational, field_inv, flat_code, from_field, hgc_code, jncss_brute_force, jncss_greedy, pattern_count, plain_sum_code, sample_gradients, to_field, uncoded_code, verify)

HYP = settings(max_examples=25, deadline=None, derandomize=True,
               suppress_health_check=[HealthCheck.too_slow])


# --- helpers ----------------------------------------------------------------------------

def decode(code: TreeCode, g: np.ndarray, late_edges=(), late_workers=None) -> np.ndarray:
    """Encode int64 gradients g (P, d), drop the given stragglers, decode: signed sum."""
    late_workers = late_workers or {}
    gf = to_field(g)
    edges = [i for i in range(code.n) if i not in late_edges][: code.n - code.s_e]
    ys = []
    for i in edges:
        arrived = [j for j in range(code.m[i]) if j not in late_workers.get(i, ())]
        arrived = arrived[: code.m[i] - code.s_w]
        z = np.stack([code.worker_message(i, j, gf) for j in arrived])
        ys.append(field_combine(code.edge_decoder(i, arrived), z))
    return from_field(field_combine(code.master_decoder(edges), np.stack(ys)))


def holders(code: TreeCode):
    """Per partition: the edges holding it; per (edge, partition): its workers."""
    edge_of = {k: [] for k in range(code.P)}
    worker_of = {}
    for i in range(code.n):
        for k in code.edge_parts[i].tolist():
            edge_of[k].append(i)
        for j in range(code.m[i]):
            for k in code.worker_parts[i][j].tolist():
                worker_of.setdefault((i, k), []).append(j)
    return edge_of, worker_of


def check_structure(code: TreeCode) -> None:
    """Loads, replication and nonzero coefficients exactly as docs/gradient-coding.md
    section 2 demands."""
    edge_of, worker_of = holders(code)
    assert all(len(set(e)) == len(e) == code.s_e + 1 for e in edge_of.values())
    for i in range(code.n):
        assert set(code.edge_parts[i].tolist()) == {k for (ii, k) in worker_of if ii == i}
        assert len(set(code.edge_parts[i].tolist())) == len(code.edge_parts[i])
        for j in range(code.m[i]):
            parts, coeffs = code.worker_parts[i][j], code.worker_coeffs[i][j]
            assert len(parts) == len(set(parts.tolist())) == code.D
            assert coeffs.shape == (code.D,) and np.all((coeffs > 0) & (coeffs < P31))
            assert np.count_nonzero(code.worker_matrix(i)[j]) == code.D
    assert all(len(set(w)) == len(w) == code.s_w + 1 for w in worker_of.values())


def random_model(seed: int, n: int, m_max: int, P: int | None = None, heavy: bool = False):
    """A heterogeneous instance (docs/gradient-coding.md section 4's delay model), m_i in 2..m_max.

    mild: shifts a_ij ~ U(0.5, 2) / P, rates mu_ij ~ U(0.2, 2) P with 20% of the workers
    10x slower, uploads c_ij ~ U(0, 0.1), edge delays e_i ~ U(0, 0.5).
    heavy: small shifts U(0.1, 0.3) / P, rates U(0.5, 2) P with 30% of the workers 10x
    slower, c_ij ~ U(0, 0.02), e_i ~ U(0, 0.05) and, half the time, one edge 1 s late.
    P defaults to lcm(1..M), for which every selection's K_i and D are integers (only
    m_i (s_e+1) <= M can bind).
    """
    rng = np.random.default_rng(seed)
    m = tuple(int(x) for x in rng.integers(2, m_max + 1, size=n))
    M = sum(m)
    if P is None:
        P = math.lcm(*range(1, M + 1))
    if heavy:
        a = [rng.uniform(0.1, 0.3, size=mi) / P for mi in m]
        mu = [rng.uniform(0.5, 2.0, size=mi) * P for mi in m]
        slow, c_max, e_max = 0.3, 0.02, 0.05
    else:
        a = [rng.uniform(0.5, 2.0, size=mi) / P for mi in m]
        mu = [rng.uniform(0.2, 2.0, size=mi) * P for mi in m]
        slow, c_max, e_max = 0.2, 0.1, 0.5
    for x in mu:
        x[rng.random(x.size) < slow] /= 10
    c = [rng.uniform(0.0, c_max, size=mi) for mi in m]
    e = rng.uniform(0.0, e_max, size=n)
    if heavy and rng.random() < 0.5:
        e[rng.integers(n)] += 1.0
    return DelayModel(a=a, mu=mu, c=c, e=e), P


# --- field arithmetic -------------------------------------------------------------------

def test_field_constants_and_mapping():
    assert P31 == 2 ** 31 - 1 and HALF == 2 ** 30 - 1 and SUM_BOUND == 2 ** 30
    x = np.array([0, 1, -1, HALF, -HALF, 2 ** 30, -2 ** 30, 2 ** 62, -2 ** 63, 2 ** 63 - 1,
                  P31, -P31], dtype=np.int64)
    f = to_field(x)
    assert f.dtype == np.int64 and np.all((f >= 0) & (f < P31))
    assert f.tolist() == [int(v) % P31 for v in x.tolist()]
    small = x[:5]                                         # |x| <= 2^30 - 1
    assert from_field(to_field(small)).tolist() == small.tolist()
    # the first values past the bound wrap: +2^30 comes back as -(2^30 - 1)
    assert from_field(to_field(np.array([2 ** 30, -2 ** 30]))).tolist() == [-HALF, HALF]
    with pytest.raises(TypeError):
        to_field(np.array([0.5]))


def test_field_inverse_and_rationals():
    for a in (1, 2, 3, 12345, P31 - 1, -7, 2 ** 40):
        assert field_inv(a) * (a % P31) % P31 == 1
    arr = np.array([1, 2, 5, P31 - 2, 2 ** 30], dtype=np.int64)
    assert ((field_inv(arr) * arr) % P31).tolist() == [1] * 5
    with pytest.raises(ZeroDivisionError):
        field_inv(P31)
    with pytest.raises(ZeroDivisionError):
        field_inv(np.array([3, 0]))
    for q in (Fraction(-1, 2), Fraction(7, 6), Fraction(-5, 24), Fraction(3)):
        v = field_from_rational(q)
        assert 0 <= v < P31 and v * q.denominator % P31 == q.numerator % P31


@given(st.integers(1, 40), st.integers(1, 6), st.integers(0, 2 ** 32))
@HYP
def test_field_combine_against_python_integers(r, d, seed):
    rng = np.random.default_rng(seed)
    coeffs = rng.integers(0, P31, size=r)
    rows = rng.integers(0, P31, size=(r, d))
    coeffs[0], rows[0, 0] = P31 - 1, P31 - 1          # the largest product, (p-1)^2 ~ 2^62
    rows[-1, :] = P31 - 1
    got = field_combine(coeffs, rows)
    want = [sum(int(coeffs[t]) * int(rows[t, col]) for t in range(r)) % P31 for col in range(d)]
    assert got.dtype == np.int64 and got.tolist() == want


def test_field_combine_refuses_bad_input():
    with pytest.raises(ValueError):
        field_combine([1, 2], np.zeros((3, 4), dtype=np.int64))
    with pytest.raises(ValueError):
        field_combine([P31], np.zeros((1, 4), dtype=np.int64))
    with pytest.raises(ValueError):
        field_combine([-1], np.zeros((1, 4), dtype=np.int64))
    assert field_combine([5], np.full((1, 2, 3), 7)).shape == (2, 3)     # any trailing shape


# --- the spec's worked example (docs/gradient-coding.md section 3) ---------------------

EXAMPLE_B = [[-2, -2, -1, -1, 0, 0, 0, 0],
             [-1, -1, 0, 0, 1, 1, 1, 1],
             [0, 0, 1, 1, 2, 2, 2, 2]]
EXAMPLE_W = [[[-2, -2, -1, -1, 0, 0, 0, 0],
              [-2, -2, -1, -1, 0, 0, 0, 0]],
             [[0, 0, 0, 0, -2, -2, -1, -1],
              [-1, -1, 0, 0, -1, -1, 0, 0],
              [-2, -2, 0, 0, 0, 0, 1, 1]],
             [[0, 0, -2, -2, -2, -2, 0, 0],
              [0, 0, -1, -1, 0, 0, 2, 2],
              [0, 0, 0, 0, 2, 2, 4, 4]]]


@pytest.fixture(scope="module")
def example():
    return hgc_code((2, 3, 3), 8, 1, 1)


def test_worked_example_placement(example):
    c = example
    assert (c.n, c.M, c.D, c.P) == (3, 8, 4, 8)
    assert c.load_lower_bound == Fraction(4) and c.partitions_per_edge == [4, 6, 6]
    assert [p.tolist() for p in c.edge_parts] == [[0, 1, 2, 3], [4, 5, 6, 7, 0, 1],
                                                  [2, 3, 4, 5, 6, 7]]
    assert [sorted(p.tolist()) for p in c.edge_parts] == [[0, 1, 2, 3], [0, 1, 4, 5, 6, 7],
                                                          [2, 3, 4, 5, 6, 7]]
    check_structure(c)


def test_worked_example_coefficients(example):
    assert from_field(example.edge_matrix()).tolist() == EXAMPLE_B
    for i in range(3):
        assert from_field(example.worker_matrix(i)).tolist() == EXAMPLE_W[i]
        assert all(np.count_nonzero(row) == 4 for row in EXAMPLE_W[i])


def test_worked_example_decoders(example):
    half, minus_half = field_from_rational(Fraction(1, 2)), field_from_rational(Fraction(-1, 2))
    one, minus_one = 1, P31 - 1
    # master: {E0,E1}: y1 - y0, {E0,E2}: (y2 - y0)/2, {E1,E2}: y2 - y1
    assert example.master_decoder([0, 1]).tolist() == [minus_one, one]
    assert example.master_decoder([0, 2]).tolist() == [minus_half, half]
    assert example.master_decoder([1, 2]).tolist() == [minus_one, one]
    assert example.master_decoder([2, 0]).tolist() == [half, minus_half]    # order given
    # edges 1 and 2 (three workers, s_w = 1): the same pattern; edge 0: either replica
    for i in (1, 2):
        assert example.edge_decoder(i, [0, 1]).tolist() == [minus_one, one]
        assert example.edge_decoder(i, [0, 2]).tolist() == [minus_half, half]
        assert example.edge_decoder(i, [2, 1]).tolist() == [one, minus_one]
    assert example.edge_decoder(0, [1]).tolist() == [1]
    assert example.edge_decoder(0, [0]).tolist() == [1]
    # more arrivals than needed: the first m_i - s_w are used, the rest get 0
    assert example.edge_decoder(1, [2, 0, 1]).tolist() == [half, minus_half, 0]
    assert example.master_decoder([1, 2, 0]).tolist() == [minus_one, one, 0]


def test_worked_example_all_21_patterns(example):
    r = verify(example)
    assert r["patterns"] == r["total_patterns"] == 21 == pattern_count(example)
    assert r["exact"] is True and r["sampled"] is False and r["failures"] == 0


def test_worked_example_exact_rationals(example):
    """Independent of the field: the spec's integer tables and decoders in Fractions."""
    rng = np.random.default_rng(5)
    g = [int(v) for v in rng.integers(-10 ** 6, 10 ** 6, size=8)]
    z = [[sum(Fraction(w) * gk for w, gk in zip(row, g)) for row in EXAMPLE_W[i]]
         for i in range(3)]

    def lead(points, chosen, values):
        return sum(values[t] / math.prod(points[c] - points[cc] for cc in chosen if cc != c)
                   for t, c in enumerate(chosen))

    count = 0
    for late_edge in range(3):
        alive = [i for i in range(3) if i != late_edge]
        for late in itertools.product(*(range((2, 3, 3)[i]) for i in alive)):
            ys = []
            for i, lw in zip(alive, late):
                J = [j for j in range((2, 3, 3)[i]) if j != lw]
                ys.append(lead(list(range(3)), J, [z[i][j] for j in J]))
            assert lead([0, 1, 2], alive, ys) == sum(g)
            count += 1
    assert count == 21


# --- the spec's verified configurations --------------------------------------------------

SPEC_CONFIGS = [  # (m, P, s_e, s_w, patterns)
    ((3, 3, 3), 9, 1, 1, 27),
    ((4, 4, 4), 12, 1, 1, 48),            # the suggested 16-rank configuration
    ((3, 4, 5), 12, 1, 1, 47),
    ((4,) * 4, 16, 1, 1, 256),
    ((4,) * 4, 8, 1, 2, 864),
    ((5,) * 5, 25, 2, 1, 1250),
    ((6, 6, 6), 18, 0, 2, 3375),
    ((3,) * 4, 12, 2, 0, 6),
    ((5,) * 6, 30, 2, 2, 150_000),        # ~5 s: the largest one the spec enumerated
]


@pytest.mark.parametrize("m, P, s_e, s_w, patterns", SPEC_CONFIGS,
                         ids=[f"{c[0]};{c[1]};{c[2]};{c[3]}" for c in SPEC_CONFIGS])
def test_spec_configurations_every_pattern(m, P, s_e, s_w, patterns):
    code = hgc_code(m, P, s_e, s_w)
    assert code.D == code.load_lower_bound                 # the bound is met
    assert code.partitions_per_edge == [P * (s_e + 1) * mi // sum(m) for mi in m]
    check_structure(code)
    r = verify(code, limit=200_000)
    assert r == {"patterns": patterns, "total_patterns": patterns, "sampled": False,
                 "exact": True, "failures": 0, "d": 8}


def test_suggested_16_rank_configs():
    a, b = hgc_code((4, 4, 4), 12, 1, 1), hgc_code((3, 4, 5), 12, 1, 1)
    assert (a.D, a.partitions_per_edge, a.master_messages) == (4, [8, 8, 8], 2)
    assert (b.D, b.partitions_per_edge, b.master_messages) == (4, [6, 8, 10], 2)
    assert 1 + a.n + a.M == 16 and 1 + b.n + b.M == 16


def test_large_configuration_sampled():
    code = hgc_code((16,) * 8, 128, 2, 3)
    assert code.D == 12 == code.load_lower_bound
    r = verify(code, limit=300, seed=3)
    assert pattern_count(code) == math.comb(8, 2) * math.comb(16, 3) ** 6
    assert r["patterns"] == 300 and r["sampled"] is True and r["exact"] is True


@st.composite
def configs(draw):
    n = draw(st.integers(1, 4))
    m = tuple(draw(st.lists(st.integers(1, 5), min_size=n, max_size=n)))
    s_e = draw(st.integers(0, n))
    s_w = draw(st.integers(0, max(m)))
    P = draw(st.sampled_from([sum(m), 2 * sum(m), draw(st.integers(1, 30))]))
    return m, P, s_e, s_w


@given(configs())
@settings(max_examples=120, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
def test_every_config_is_built_exactly_when_the_conditions_hold(cfg):
    m, P, s_e, s_w = cfg
    err = feasibility_error(m, P, s_e, s_w)
    M = sum(m)
    conditions = (s_e < len(m) and s_w < min(m) and max(m) * (s_e + 1) <= M
                  and all(P * (s_e + 1) * mi % M == 0 for mi in m)
                  and P * (s_e + 1) * (s_w + 1) % M == 0)
    assert (err is None) == conditions
    if err is not None:
        with pytest.raises(GradCodeError, match=re.escape(err)):
            hgc_code(m, P, s_e, s_w)
        return
    code = hgc_code(m, P, s_e, s_w)
    assert code.D == code.load_lower_bound
    check_structure(code)
    r = verify(code, limit=400, d=4)
    assert r["exact"] and r["patterns"] == min(400, pattern_count(code))


def test_verify_detects_a_wrong_coefficient():
    code = hgc_code((4, 4, 4), 12, 1, 1)
    code.worker_coeffs[1][2] = code.worker_coeffs[1][2].copy()
    code.worker_coeffs[1][2][0] = (code.worker_coeffs[1][2][0] + 1) % P31
    r = verify(code)
    assert r["exact"] is False and 0 < r["failures"] < r["patterns"] == 48


# --- magnitudes: the representability bound ----------------------------------------------

def test_extreme_magnitudes_decode_exactly():
    code = hgc_code((4, 4, 4), 12, 1, 1)
    B = HALF // code.P                                    # largest uniform magnitude
    g = np.array([[B, -B, B if k % 2 else -B, 0] for k in range(code.P)], dtype=np.int64)
    g[3, 3] = HALF                                        # one partition at the bound
    for late_edges, late in [((0,), {1: (3,), 2: (0,)}), ((2,), {0: (1,), 1: (2,)})]:
        got = decode(code, g, late_edges, late)
        assert got.tolist() == g.sum(axis=0).tolist() == [12 * B, -12 * B, 0, HALF]
        assert abs(12 * B) < SUM_BOUND


def test_only_the_total_is_bounded():
    code = hgc_code((3, 4, 5), 12, 1, 1)
    g = np.zeros((12, 2), dtype=np.int64)
    g[:, 0] = [2 ** 50, -2 ** 50] * 6                    # far outside the field's range
    g[0, 0] += -HALF
    g[:, 1] = [2 ** 40 + k for k in range(12)]
    g[11, 1] = -int(g[:11, 1].sum()) + HALF
    assert decode(code, g, (1,), {0: (0,), 2: (4,)}).tolist() == [-HALF, HALF]


def test_sums_at_the_bound_wrap_around():
    """|sum| = 2^30 is the first magnitude that does not come back (the bound is tight)."""
    code = hgc_code((4, 4, 4), 12, 1, 1)
    g = np.zeros((12, 2), dtype=np.int64)
    g[:2, 0] = 2 ** 29                                   # sum = +2^30
    g[:2, 1] = -2 ** 29                                  # sum = -2^30
    got = decode(code, g, (0,), {1: (0,), 2: (1,)})
    assert got.tolist() == [2 ** 30 - P31, P31 - 2 ** 30] == [-HALF, HALF]


def test_sample_gradients_stay_in_range():
    for P in (8, 12, 30, 128):
        g = sample_gradients(P, 16, seed=P)
        s = g.sum(axis=0)
        assert np.all(np.abs(s) <= HALF) and s.max() == HALF and s.min() == -HALF
        assert np.abs(g).max() > 2 ** 31                  # some partitions beyond the field


# --- the baselines -----------------------------------------------------------------------

@pytest.mark.parametrize("s", [1, 2])
def test_flat_code(s):
    code = flat_code(12, 12, s)
    assert code.m == (1,) * 12 and (code.s_e, code.s_w, code.D) == (s, 0, s + 1)
    assert code.D == code.load_lower_bound and code.master_messages == 12 - s
    for i in range(12):                                   # Tandon's cyclic placement
        assert code.worker_parts[i][0].tolist() == [(i + t) % 12 for t in range(s + 1)]
        assert code.edge_decoder(i, [0]).tolist() == [1]
        assert code.worker_coeffs[i][0].tolist() == code.edge_coeffs[i].tolist()
    check_structure(code)
    r = verify(code)
    assert r["patterns"] == math.comb(12, s) and r["exact"] and not r["sampled"]
    with pytest.raises(ValueError, match=f"need {12 - s}"):
        code.master_decoder(list(range(11 - s)))


def test_flat_code_blocks():
    code = flat_code(4, 12, 1)                           # q = 3 partitions per block
    assert code.D == 6 and code.worker_parts[3][0].tolist() == [9, 10, 11, 0, 1, 2]
    assert verify(code)["exact"]


@pytest.mark.parametrize("P", [12, 24])
def test_plain_sum_code(P):
    code = uncoded_code((4, 4, 4), P)
    assert uncoded_code is plain_sum_code
    assert (code.s_e, code.s_w, code.D, code.master_messages) == (0, 0, P // 12, 3)
    assert code.D == code.load_lower_bound
    parts = np.concatenate([p for w in code.worker_parts for p in w])
    assert sorted(parts.tolist()) == list(range(P))      # disjoint, all covered
    assert all(np.all(c == 1) for w in code.worker_coeffs for c in w)
    assert code.edge_decoder(1, [3, 1, 0, 2]).tolist() == [1, 1, 1, 1]
    assert code.master_decoder([2, 0, 1]).tolist() == [1, 1, 1]
    with pytest.raises(ValueError, match="need 4"):
        code.edge_decoder(0, [0, 1, 2])
    r = verify(code)
    assert r["patterns"] == 1 and r["exact"]


def test_to_dict_is_json():
    d = json.loads(json.dumps(hgc_code((3, 4, 5), 12, 1, 1).to_dict()))
    assert d == {"m": [3, 4, 5], "n": 3, "M": 12, "P": 12, "s_e": 1, "s_w": 1,
                 "load_per_worker": 4, "load_lower_bound": 4.0, "load_lower_bound_exact": "4",
                 "partitions_per_edge": [6, 8, 10], "master_messages": 2}
    f = flat_code(12, 12, 2).to_dict()
    assert f["master_messages"] == 10 and f["load_per_worker"] == 3 and f["n"] == 12


# --- refusals ----------------------------------------------------------------------------

REFUSALS = [
    (lambda: hgc_code((3, 3, 3), 9, 3, 0), "s_e = 3 >= n = 3 edges"),
    (lambda: hgc_code((5, 5, 4, 5), 19, 0, 4), "edge 3: s_w = 4 >= m_i = 4"),
    (lambda: hgc_code((2, 5, 2), 9, 1, 0),
     "edge 2: m_i (s_e + 1) = 10 > M = 9, so it would need more than all P partitions"),
    (lambda: hgc_code((5, 3, 4), 9, 1, 0),
     "P (s_e+1) m_i / M = 7.5 is not an integer for edge 1 (choose P a multiple of M = 12)"),
    (lambda: hgc_code((4, 4, 3), 6, 0, 0), "P (s_e+1) m_i / M = 24/11 is not an integer for edge 1"),
    (lambda: hgc_code((2, 2), 1, 1, 0),
     "D = P (s_e+1)(s_w+1) / M = 0.5 is not an integer (choose P a multiple of M = 4)"),
    (lambda: hgc_code((2, 2), 0, 0, 0), "P = 0 partitions"),
    (lambda: hgc_code((2, 0, 2), 4, 0, 0), "edge 2: m_i = 0 < 1 worker"),
    (lambda: hgc_code((), 4, 0, 0), "m is empty"),
    (lambda: hgc_code((2, 2), 4, -1, 0), "tolerances must be >= 0"),
    (lambda: hgc_code((2, 2.5), 4, 0, 0), "edge 2: m_i = 2.5 is not an integer"),
    (lambda: flat_code(3, 3, 3), "s = 3 >= M = 3 workers"),
    (lambda: flat_code(4, 10, 1), "P = 10 is not a positive multiple of M = 4 workers"),
    (lambda: uncoded_code((2, 2), 6), "P = 6 is not a positive multiple of M = 4 workers"),
]


@pytest.mark.parametrize("build, message", REFUSALS, ids=[r[1][:40] for r in REFUSALS])
def test_refusals_name_the_edge_and_condition(build, message):
    with pytest.raises(GradCodeError) as info:
        build()
    assert message in str(info.value)
    assert isinstance(info.value, ValueError)


def test_decoders_refuse_bad_arrivals(example):
    with pytest.raises(ValueError, match="need 2"):
        example.edge_decoder(1, [0])
    with pytest.raises(ValueError, match="not distinct"):
        example.edge_decoder(1, [0, 0])
    with pytest.raises(ValueError, match="out of range"):
        example.edge_decoder(0, [2])
    with pytest.raises(ValueError, match="need 2"):
        example.master_decoder([1])


# --- JNCSS: the delay model --------------------------------------------------------------

def test_expected_time_matches_order_statistics():
    """One edge of i.i.d. workers: E[(m - s_w)-th of m] = D a + (D / mu)(H_m - H_s_w)."""
    m, P, a, mu, c, e = 6, 12, 0.01, 50.0, 0.02, 0.3
    model = DelayModel.uniform((m,), a, mu, c=c, e=e)

    def H(k):
        return sum(Fraction(1, t) for t in range(1, k + 1))

    for s_w in (0, 1, 2):
        D = P * (s_w + 1) // m
        want = e + c + D * a + D / mu * float(H(m) - H(s_w))
        got = expected_time(model, P, [0], [list(range(m))], 0, s_w, samples=40_000, seed=1)
        assert got == pytest.approx(want, rel=0.01)


def test_expected_time_master_order_statistic():
    """Deterministic workers (a only): T = (n' - s_e)-th smallest of the edge delays."""
    model = DelayModel(a=[[0.01] * 2] * 4, mu=[[1e12] * 2] * 4, c=[[0.0] * 2] * 4,
                       e=[0.5, 0.1, 0.9, 0.3])
    D = 8 * 2 // 8
    t = expected_time(model, 8, [0, 1, 2, 3], [[0, 1]] * 4, 1, 0, samples=10)
    assert t == pytest.approx(D * 0.01 + 0.5)          # 3rd smallest of (.1, .3, .5, .9)
    t = expected_time(model, 8, [2, 3], [[0, 1], [1, 0]], 1, 0, samples=10)
    assert t == pytest.approx(8 * 2 // 4 * 0.01 + 0.3)     # D = 4 with M' = 4


def test_fixed_stragglers_and_model_validation():
    base = DelayModel.uniform((3, 3), 0.01, 100.0)
    slow = base.with_worker_delay(0, 1, 5.0).with_edge_delay(1, 2.0)
    assert slow.c[0].tolist() == [0.0, 5.0, 0.0] and slow.e.tolist() == [0.0, 2.0]
    assert base.c[0].tolist() == [0.0, 0.0, 0.0]           # copies, base untouched
    sel = [[0, 1, 2], [0, 1, 2]]
    assert expected_time(slow, 6, [0, 1], sel, 1, 1) < 1.0      # tolerates both
    assert expected_time(slow, 6, [0, 1], sel, 0, 0) > 5.0      # waits for everyone
    with pytest.raises(GradCodeError, match="edge 2"):
        DelayModel(a=[[1.0], [1.0, 1.0]], mu=[[1.0], [1.0]], c=[[0.0], [0.0, 0.0]], e=[0, 0])
    with pytest.raises(GradCodeError, match="mu_ij"):
        DelayModel.uniform((2,), 1.0, 0.0)
    with pytest.raises(GradCodeError, match="infeasible: s_e = 2 >= n = 2"):
        expected_time(base, 6, [0, 1], sel, 2, 0)


def test_greedy_avoids_fixed_stragglers():
    P = 27720                                            # lcm(1..12): every D is an integer
    model = DelayModel.uniform((4, 4, 4), 0.1 / P, 10.0 * P, c=0.01, e=0.05)
    model = model.with_worker_delay(1, 2, 3.0).with_edge_delay(2, 3.0)
    sel = jncss_greedy(model, P, samples=300)
    assert sel.expected_time < 1.0
    workers = {(i, j) for i, w in zip(sel.edges, sel.workers) for j in w}
    # the slow worker / edge is dropped or out-waited by the tolerance
    assert (1, 2) not in workers or sel.s_w >= 1
    assert 2 not in sel.edges or sel.s_e >= 1


# --- JNCSS: greedy vs brute force --------------------------------------------------------

# (family, seed, n, m_max, P): P None = lcm(1..M) (integrality never binds)
INSTANCES = [(fam, seed, n, m_max, P) for seed in range(4)
             for n, m_max in ((3, 4), (4, 3), (2, 5))
             for fam, P in (("mild", None), ("mild", 12), ("heavy", None))]


def test_greedy_against_brute_force():
    """greedy >= brute force on every instance (same common random numbers); the
    measured worst relative gap per family is printed (run with -s)."""
    gaps = {}
    for fam, seed, n, m_max, P0 in INSTANCES:
        model, P = random_model(seed, n, m_max, P0, heavy=fam == "heavy")
        g = jncss_greedy(model, P, samples=400, seed=7)
        b = jncss_brute_force(model, P, samples=400, seed=7)
        assert g.expected_time >= b.expected_time
        for sel in (g, b):
            assert sel.D == P * (sel.s_e + 1) * (sel.s_w + 1) // sum(sel.m)
            assert feasibility_error(sel.m, P, sel.s_e, sel.s_w) is None
            assert sel.expected_time == expected_time(model, P, sel.edges, sel.workers,
                                                      sel.s_e, sel.s_w, samples=400, seed=7)
        family = f"{fam}, P = {'lcm(1..M)' if P0 is None else P0}"
        gaps.setdefault(family, []).append(
            (g.expected_time / b.expected_time - 1, seed, model.m, (g.s_e, g.s_w, g.m),
             (b.s_e, b.s_w, b.m)))
    print("\nJNCSS greedy vs brute force (400 samples, common random numbers):")
    for family, rows in gaps.items():
        gap, seed, m, gs, bs = max(rows)
        print(f"  {family}: {len(rows)} instances, greedy optimal on "
              f"{sum(r[0] == 0 for r in rows)}, worst gap {gap:.4f} (seed {seed}, m {m}: "
              f"greedy (s_e, s_w, m') {gs}, brute force {bs})")
    assert any(r[0] == 0 for rows in gaps.values() for r in rows)
    # the heavy family makes coding pay: brute force picks s_e or s_w > 0 somewhere
    assert any(r[4][:2] != (0, 0) for r in gaps["heavy, P = lcm(1..M)"])


def test_selections_build_exact_codes():
    model, P = random_model(11, 3, 4, P=None)
    sel = jncss_greedy(model, P, samples=200)
    assert isinstance(sel, Selection)
    code = sel.code()
    assert code.D == sel.D and code.m == sel.m
    assert verify(code, limit=100)["exact"]
    assert json.loads(json.dumps(sel.to_dict()))["D"] == sel.D


def test_greedy_is_deterministic():
    model, P = random_model(3, 4, 3)
    a = jncss_greedy(model, P, samples=300, seed=2)
    b = jncss_greedy(model, P, samples=300, seed=2)
    assert a == b
    c = jncss_brute_force(model, P, samples=300, seed=2)
    assert c == jncss_brute_force(model, P, samples=300, seed=2)


def test_search_refusals():
    model = DelayModel.uniform((5, 5, 5, 5, 5), 0.01, 10.0)
    with pytest.raises(GradCodeError, match="candidates"):
        jncss_brute_force(model, 25, max_candidates=10_000)
    # P = 7 fits no M' but a single edge's full replication (s_w = m_i - 1, D = P):
    # some pair always has a feasible start
    sel = jncss_greedy(DelayModel.uniform((2, 3), 0.01, 10.0), 7, samples=50)
    assert feasibility_error(sel.m, 7, sel.s_e, sel.s_w) is None
