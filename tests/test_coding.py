"""The GF(65537) coding layer: exactness, loads, escapes, code construction, wire format.

Oracle: galois' GF(65537) arithmetic. Every exchange is checked bit for bit on the
float64 IVs through ``.view(np.uint64)``. Dimensions are kept small: the whole file
runs in well under a minute on two shared cores.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from hmtl_mpi.codes import coding
from hmtl_mpi.codes.coding import (P, Code, DecodeError, build_code, combine_mod_p, pack, relay_decode, relay_encode, server_combine, special_ivs, split_packed, unit_symbols, unpack)
from hmtl_mpi.job.verify import verify_exchange as _verify_scheme
from hmtl_mpi.planning.hierarchical import make_plan
from hmtl_mpi.schemes.coded import Coded
from hmtl_mpi.planning.topology import (TopologyError, paper_fig2, random_regular, symmetric, validate)

def verify_exchange(code, dim, seed=0):
    """The exchange of ``code`` run through the coded scheme's parts, every rank in this
    process (what ``plan --verify`` runs: :mod:`hmtl_mpi.job.verify`)."""
    return _verify_scheme(Coded(code.G, code), dim, seed)

HYP = settings(max_examples=8, deadline=None, derandomize=True,
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.fixture(scope="module")
def GF():
    import galois
    return galois.GF(P)


# --- helpers --------------------------------------------------------------------------

_CODES: dict = {}


def plan_and_code(G, seed: int = 0):
    """make_plan + the hierarchical scheme's code, cached per (G, seed): planning is slow."""
    key = (G.shape, G.tobytes(), seed)
    if key not in _CODES:
        plan = make_plan(G)
        _CODES[key] = (plan, build(plan, seed=seed))
    return _CODES[key]


def build(plan, **kw):
    """The code of the paper's scheme: one block per round (``schemes.coded``)."""
    return build_code(plan.G, Coded.layouts(plan), **kw)


def first_unit(blk, i, col) -> int:
    """Where relay i's input row of the block's user ``col`` starts (its segment)."""
    rows = blk.rows[i]
    return int(rows[list(rows[:, 0]).index(col), 1])


# A topology whose plan has a relay carrying 2 of D = 3 units of an IV in round z = 3
# (a_i = 2/3): uplink messages of several units per row, and user 6 linked to all relays.
MULTI_UNIT_G = np.array([[1, 0, 0, 0, 1, 1, 0, 0, 0, 1], [1, 1, 0, 0, 1, 1, 0, 1, 0, 1],
                         [1, 0, 1, 1, 1, 1, 0, 0, 1, 0], [1, 1, 0, 1, 0, 1, 0, 0, 1, 1],
                         [1, 0, 0, 0, 1, 1, 1, 1, 1, 0], [1, 0, 1, 1, 1, 1, 0, 1, 0, 0]],
                        dtype=np.uint8)


def random_topology(rng, H=None, K=None, all_relay_users=None):
    """A valid G from Bernoulli draws (redrawn until ``validate`` accepts it).

    With ``all_relay_users`` some users are linked to every relay (they take part in
    no round: every relay already knows their IV).
    """
    H = int(rng.integers(2, 8)) if H is None else H
    K = int(rng.integers(2, 26)) if K is None else K
    if all_relay_users is None:
        all_relay_users = bool(rng.random() < 0.4)
    for attempt in range(10_000):
        p = rng.uniform(0.15, 0.85)
        G = (rng.random((H, K)) < p).astype(np.uint8)
        if all_relay_users and attempt < 2_000:   # impossible for some tiny K: then give up
            G[:, rng.choice(K, size=int(rng.integers(1, max(2, K // 3))), replace=False)] = 1
        try:
            return validate(G)
        except TopologyError:
            continue
    raise AssertionError(f"no valid topology drawn for H = {H}, K = {K}")


def bits(a) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float64).view(np.uint64)


def run_exchange(code: Code, ivs: np.ndarray):
    """The coded exchange in one process; returns what moved and what every relay decoded."""
    dim = ivs.shape[1]
    G = code.G
    known = [{int(k): ivs[k] for k in np.flatnonzero(G[i])} for i in range(code.H)]
    uplinks = [relay_encode(code, i, known[i]) for i in range(code.H)]
    downlinks = [server_combine(code, r, {i: uplinks[i][r] for i in range(code.H)}, dim)
                 for r in range(len(code.blocks))]
    decoded = [relay_decode(code, i, known[i], downlinks, dim) for i in range(code.H)]
    return uplinks, downlinks, decoded


def assert_all_exact(code: Code, ivs: np.ndarray, decoded) -> None:
    for i in range(code.H):
        assert sorted(decoded[i]) == list(range(code.K)), f"relay {i + 1} misses IVs"
        for k in range(code.K):
            assert np.array_equal(bits(decoded[i][k]), bits(ivs[k])), \
                f"relay {i + 1}, user {k + 1}: not bit-exact"


def escape_count(buf: np.ndarray, payload_symbols: int) -> int:
    extra = buf.size - payload_symbols
    assert extra >= 0 and extra % 2 == 0
    return extra // 2


def check_loads(plan, code: Code, res: dict) -> None:
    """Bytes on the wire = planned load x padded unit size + 4 bytes per escape, exactly,
    plus, in the broadcast, each block's 8-byte escape count (docs/wire.md)."""
    dim = res["dim"]
    up_payload = down_payload = 0
    for rnd, rc in zip(plan.rounds, code.blocks):
        u = unit_symbols(dim, rc.F)
        up = rnd.uplink_load * rc.F * u                 # symbols: sum_i n_i a_i D u
        down = rnd.downlink_load * rc.F * u             # R u
        assert up.denominator == 1 and down.denominator == 1
        up_payload += 2 * int(up)
        down_payload += 2 * int(down)
    header = 8 * len(code.blocks)          # the broadcast's escape count per block
    for got, payload, planned in ((res["uplink_bytes"], up_payload, plan.uplink_load),
                                  (res["downlink_bytes"] - header, down_payload,
                                   plan.downlink_load)):
        extra = got - payload
        assert extra >= 0 and extra % 4 == 0, (got, payload)
        assert extra // 4 <= 8 + payload // 2 // 1000        # escapes: ~1 / 65537 of symbols
        # measured <= planned * (padded units / dim) + escape bytes
        padded = Fraction(payload, 8 * dim)
        assert padded >= planned
        assert Fraction(got, 8 * dim) == padded + Fraction(extra, 8 * dim)
        if planned:
            slack = max(rc.F for rc in code.blocks) / (4 * dim)     # at most one unit of padding
            assert padded <= planned * (1 + Fraction(slack).limit_denominator(10**9)) + \
                Fraction(1, 10**9)


# --- the paper example ------------------------------------------------------------------

def test_paper_example_plan_and_exchange():
    plan, code = plan_and_code(paper_fig2())
    assert (plan.uplink_load, plan.downlink_load) == (Fraction(17, 2), Fraction(7))
    for dim in (1, 3, 7, 1001, 4000):
        res = verify_exchange(code, dim, seed=dim)
        assert res["bit_exact"], dim
        check_loads(plan, code, res)
    res = verify_exchange(code, 4000)
    assert abs(res["measured_uplink_load"] / 8.5 - 1) < 0.01
    assert abs(res["measured_downlink_load"] / 7 - 1) < 0.01


def test_special_ivs_bit_exact_at_every_relay():
    """NaN with payloads, +-inf, -0.0, subnormals and random bit patterns survive."""
    plan, code = plan_and_code(paper_fig2())
    dim = 37
    ivs = special_ivs(code.K, dim, seed=3)
    b = bits(ivs)
    extra = np.array([0x7FF8DEADBEEF0001, 0x7FF0000000000001, 0xFFF8000000000000,
                      0xFFFFFFFFFFFFFFFF, 0x0000000000000001, 0x800FFFFFFFFFFFFF,
                      0x8000000000000000, 0x7FF0000000000000, 0xFFF0000000000000],
                     dtype=np.uint64)
    b[:, -len(extra):] = extra                     # every user gets each pattern
    flat = ivs.reshape(-1)
    assert np.isnan(flat).any() and np.isposinf(flat).any() and np.isneginf(flat).any()
    assert ((flat == 0) & np.signbit(flat)).any()
    assert ((flat != 0) & (np.abs(flat) < np.finfo(np.float64).tiny)).any()
    nan_payloads = set(b[np.isnan(ivs)].tolist())
    assert 0x7FF8DEADBEEF0001 in nan_payloads and 0x7FF0000000000001 in nan_payloads
    _, _, decoded = run_exchange(code, ivs)
    assert_all_exact(code, ivs, decoded)


# --- many topologies -----------------------------------------------------------------------

def test_random_bernoulli_topologies_seeded():
    rng = np.random.default_rng(2024)
    shapes = [(2, 9), (2, 2), (3, 5), (3, 17), (4, 12), (5, 25), (6, 8), (6, 21),
              (7, 14), (7, 25), (4, 3), (5, 11)]
    seen_full_user = 0
    for n, (H, K) in enumerate(shapes):
        G = random_topology(rng, H, K, all_relay_users=(n % 2 == 0))
        seen_full_user += int((G.sum(axis=0) == H).any())
        plan, code = plan_and_code(G)
        dims = (1, 3, 1001) if n % 3 else (7, 64)
        for dim in dims:
            res = verify_exchange(code, dim, seed=n)
            assert res["bit_exact"], (G.tolist(), dim)
            check_loads(plan, code, res)
    assert seen_full_user >= 5


@settings(HYP, max_examples=20)
@given(seed=st.integers(0, 2**32 - 1), dim=st.sampled_from([1, 2, 3, 5, 7, 13, 100]))
def test_random_topologies_hypothesis(seed, dim):
    G = random_topology(np.random.default_rng(seed))
    plan, code = plan_and_code(G)
    res = verify_exchange(code, dim, seed=seed % 1000)
    assert res["bit_exact"], G.tolist()
    check_loads(plan, code, res)


@pytest.mark.parametrize("G, loads", [
    (symmetric(5, 2), (Fraction(15, 2), Fraction(6))),
    (symmetric(4, 2, per_group=3), (Fraction(12), Fraction(9))),
    (symmetric(6, 3), (Fraction(12), Fraction(10))),
    (random_regular(12, 4, 2, seed=1), None),
    (random_regular(20, 6, 3, seed=2), None),
    (random_regular(9, 3, 1, seed=3), None),
    (MULTI_UNIT_G, None),
], ids=["sym-5-2", "sym-4-2x3", "sym-6-3", "rr-12-4-2", "rr-20-6-3", "rr-9-3-1", "multi-unit"])
def test_generated_topologies(G, loads):
    plan, code = plan_and_code(validate(G))
    if loads is not None:                           # Theorem 3
        assert (plan.uplink_load, plan.downlink_load) == loads
    for dim in (1, 7, 1001):
        res = verify_exchange(code, dim, seed=dim)
        assert res["bit_exact"]
        check_loads(plan, code, res)
    if loads is not None:
        res = verify_exchange(code, 3000)
        assert abs(res["measured_uplink_load"] / float(loads[0]) - 1) < 0.01
        assert abs(res["measured_downlink_load"] / float(loads[1]) - 1) < 0.01


def test_loads_within_one_percent_at_a_few_thousand_values():
    rng = np.random.default_rng(77)
    for H, K in ((4, 10), (6, 18), (7, 24)):
        plan, code = plan_and_code(random_topology(rng, H, K))
        dim = max(3000, 100 * max(rc.F for rc in code.blocks))
        res = verify_exchange(code, dim)
        assert res["bit_exact"]
        check_loads(plan, code, res)
        assert abs(res["measured_uplink_load"] / float(plan.uplink_load) - 1) < 0.01
        assert abs(res["measured_downlink_load"] / float(plan.downlink_load) - 1) < 0.01


# --- the kernel against galois -------------------------------------------------------------

def oracle(GF, coeffs, values):
    return np.asarray(GF(np.asarray(coeffs, dtype=np.int64) % P) @
                      GF(np.asarray(values, dtype=np.int64)), dtype=np.int64)


def kernel(coeffs, values):
    """combine_mod_p on field elements 0..65536 given as int64; back as int64 elements."""
    values = np.asarray(values, dtype=np.int64)
    er, ec = np.nonzero(values == 65536)
    rows = np.where(values == 65536, 0, values).astype(np.uint16)
    out = np.empty((coeffs.shape[0], values.shape[1]), dtype=np.uint16)
    found = combine_mod_p(coeffs, rows, out, (er, ec))
    assert found.dtype == np.uint32
    return unpack(np.concatenate([out.reshape(-1), found.view(np.uint16)]), out.shape)


def test_forced_output_escape_minimal(GF):
    out = np.empty((1, 1), dtype=np.uint16)
    found = combine_mod_p(np.array([[1, 1]]), np.array([[65535], [1]], dtype=np.uint16), out)
    assert out[0, 0] == 0 and found.tolist() == [0]
    buf = coding.combine_packed(np.array([[1, 1]]), np.array([[65535], [1]], dtype=np.uint16))
    assert buf.size == 1 + 2
    assert unpack(buf, (1, 1)).tolist() == [[65536]]
    assert oracle(GF, [[1, 1]], [[65535], [1]]).tolist() == [[65536]]


@pytest.mark.parametrize("r, c, L", [(1, 1, 1), (3, 5, 7), (8, 10, 1000), (2, 3, 16384 + 77),
                                     (12, 20, 5003), (40, 100, 300), (5, 2000, 9)])
def test_combine_matches_galois(GF, r, c, L):
    rng = np.random.default_rng(r * 1000 + c + L)
    C = rng.integers(0, P, size=(r, c))
    C[0, 0] = P - 1
    X = rng.integers(0, 65536, size=(c, L))
    X[rng.random((c, L)) < 0.01] = 65536            # escaped inputs
    X[0, 0] = 65536
    # force output escapes: solve row 0 so that some outputs are 65536
    if C[0, 0]:
        inv = int(GF(int(C[0, 0])) ** -1)
        for col in range(0, L, max(1, L // 5)):
            rest = int((C[0, 1:] @ X[1:, col]) % P)
            v = (65536 - rest) * inv % P
            if v != 65536 or col == 0:
                X[0, col] = v
    want = oracle(GF, C, X)
    assert np.array_equal(kernel(C, X), want)
    assert (want == 65536).any() or L < 5


def test_combine_extremes_and_chunking(GF, monkeypatch):
    """Largest magnitudes (every term (p-1)^2), tiny chunks, BLAS left as configured."""
    C = np.full((3, 64), P - 1)
    X = np.full((64, 3001), 65536)
    X[:, ::2] = 65535
    want = oracle(GF, C, X)
    assert np.array_equal(kernel(C, X), want)
    monkeypatch.setattr(coding, "CHUNK_BYTES", 1)          # 256-column chunks
    monkeypatch.setattr(coding, "BLAS_THREADS", None)
    rng = np.random.default_rng(5)
    for L in (255, 256, 257, 1000, 16384 + 1):
        C = rng.integers(0, P, size=(4, 6))
        X = rng.integers(0, 65537, size=(6, L))
        assert np.array_equal(kernel(C, X), oracle(GF, C, X)), L


def test_combine_exact_at_the_term_limit():
    """c = 2^21 - 1 terms of (p-1)^2 each: the largest sum the kernel accepts (< 2^53)."""
    c = 2 ** 53 // (P - 1) ** 2 - 1
    assert c * (P - 1) ** 2 < 2 ** 53
    C = np.full((1, c), P - 1)
    X = np.full((c, 3), 65535, dtype=np.int64)
    X[:, 1] = 65536                                   # every term (p-1)^2 = 2^32 in column 1
    X[::3, 2] = 12345
    X[5, 0] = 65536
    want = [int((C[0] * X[:, j]).sum() % P) for j in range(3)]   # int64: < 2^53, exact
    assert kernel(C, X)[0].tolist() == want


@HYP
@given(r=st.integers(1, 6), c=st.integers(1, 12), L=st.integers(1, 600), seed=st.integers(0, 2**31))
def test_combine_property(GF, r, c, L, seed):
    rng = np.random.default_rng(seed)
    C = rng.integers(0, P, size=(r, c))
    X = rng.integers(0, 65536, size=(c, L))
    X[rng.random((c, L)) < 0.05] = 65536
    assert np.array_equal(kernel(C, X), oracle(GF, C, X))


def test_combine_rejects_bad_shapes():
    with pytest.raises(ValueError):
        combine_mod_p(np.ones((2, 3)), np.zeros((4, 5), np.uint16), np.empty((2, 5), np.uint16))
    with pytest.raises(ValueError):
        combine_mod_p(np.ones((2, 3)), np.zeros((3, 5), np.uint16), np.empty((2, 4), np.uint16))
    c = 2 ** 53 // (P - 1) ** 2 + 1                          # would not be exact in float64
    with pytest.raises(ValueError, match="exact"):
        combine_mod_p(np.ones((1, c)), np.zeros((c, 0), np.uint16), np.empty((1, 0), np.uint16))


# --- wire format -----------------------------------------------------------------------

@HYP
@given(r=st.integers(1, 5), L=st.integers(1, 300), p_esc=st.sampled_from([0.0, 0.01, 0.5, 1.0]),
       seed=st.integers(0, 2**31))
def test_pack_unpack_split_round_trip(r, L, p_esc, seed):
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 65536, size=(r, L))
    a[rng.random((r, L)) < p_esc] = 65536
    buf = pack(a)
    assert buf.dtype == np.uint16
    n_esc = int((a == 65536).sum())
    assert buf.size == r * L + 2 * n_esc
    assert np.array_equal(unpack(buf, (r, L)), a)
    payload, (er, ec) = split_packed(buf, (r, L))
    assert np.array_equal(payload, np.where(a == 65536, 0, a))
    assert sorted(zip(er.tolist(), ec.tolist())) == sorted(zip(*map(list, np.nonzero(a == 65536))))
    flat = pack(a.reshape(-1))
    assert np.array_equal(unpack(flat, (r * L,)), a.reshape(-1))


def test_split_packed_rejects_malformed():
    buf = pack(np.array([[1, 65536, 3]]))
    with pytest.raises(ValueError):
        split_packed(buf[:2], (1, 3))               # shorter than the payload
    with pytest.raises(ValueError):
        split_packed(np.concatenate([buf, [7]]).astype(np.uint16), (1, 3))   # odd escape tail


# --- escapes inside the scheme -------------------------------------------------------------

def _set_symbol(ivs, k, s, value):
    ivs[k].view(np.uint16)[s] = value


def _force_65536(ivs, k, s, probe):
    """Choose IV symbol s of user k so that ``probe(ivs)`` (a field element, linear in
    that symbol) becomes 65536; returns False when no 16-bit value does it."""
    _set_symbol(ivs, k, s, 0)
    f0 = probe(ivs)
    _set_symbol(ivs, k, s, 1)
    g = (probe(ivs) - f0) % P
    if g == 0:
        return False
    v = (65536 - f0) * pow(g, P - 2, P) % P
    if v >= 65536:
        return False
    _set_symbol(ivs, k, s, v)
    assert probe(ivs) == 65536
    return True


def test_escapes_on_uplink_and_downlink_are_forced_and_decoded():
    """Craft IVs whose uplink and broadcast both carry a 65536: the server combines an
    escaped input, and relays decode from an escaped broadcast symbol, bit-exactly."""
    plan, code = plan_and_code(paper_fig2())
    dim = 5
    ivs = special_ivs(code.K, dim, seed=11)
    rc = code.blocks[0]
    u = unit_symbols(dim, rc.F)
    k = int(rc.users[0])
    i = next(j for j in range(code.H)
             if code.G[j, k] and rc.width[j] > 0 and rc.uplink_coeffs[j].shape[0] > 0)
    col = int(np.searchsorted(rc.users, k))
    start = first_unit(rc, i, col)
    m = int(np.searchsorted(rc.known(code.G, i), k))
    s = start * u                                   # first symbol of relay i's segment of v_k
    assert rc.uplink_coeffs[i][0, m] != 0
    shape = coding.uplink_shape(code, 0, i, dim)

    def uplink_probe(v):
        known = {int(j): v[j] for j in np.flatnonzero(code.G[i])}
        return int(unpack(relay_encode(code, i, known)[0], shape)[0, 0])
    assert _force_65536(ivs, k, s, uplink_probe)

    # now a broadcast symbol, at a row some relay that does not know user k2 uses
    k2 = int(rc.users[-1])
    relay = int(np.flatnonzero(code.G[:, k2] == 0)[0])
    row = int(rc.decode_rows[relay][0])
    i2 = int(np.flatnonzero((code.G[:, k2] == 1) & (rc.width > 0))[0])
    s2 = first_unit(rc, i2, int(np.searchsorted(rc.users, k2))) * u + 1

    def downlink_probe(v):
        _, downlinks, _ = run_exchange_no_decode(code, v)
        return int(unpack(downlinks[0], (rc.R, u))[row, 1])
    if not _force_65536(ivs, k2, s2, downlink_probe):
        pytest.skip("no 16-bit value forces this broadcast symbol")   # p ~ 1/65537
    uplinks, downlinks, decoded = run_exchange(code, ivs)
    assert escape_count(uplinks[i][0], math.prod(shape)) >= 1
    assert escape_count(downlinks[0], rc.R * u) >= 1
    assert_all_exact(code, ivs, decoded)


def run_exchange_no_decode(code, ivs):
    dim = ivs.shape[1]
    known = [{int(k): ivs[k] for k in np.flatnonzero(code.G[i])} for i in range(code.H)]
    uplinks = [relay_encode(code, i, known[i]) for i in range(code.H)]
    downlinks = [server_combine(code, r, {i: uplinks[i][r] for i in range(code.H)}, dim)
                 for r in range(len(code.blocks))]
    return uplinks, downlinks, None


@pytest.mark.parametrize("G", [paper_fig2(), MULTI_UNIT_G], ids=["paper-fig2", "multi-unit"])
def test_natural_escapes_at_larger_dim(G):
    """At 20000 values escapes occur by themselves (~1 in 65537 coded symbols)."""
    plan, code = plan_and_code(G)
    dim = 20000
    ivs = special_ivs(code.K, dim, seed=5)
    uplinks, downlinks, decoded = run_exchange(code, ivs)
    up_esc = sum(escape_count(m, coding.uplink_symbols(code, r, i, dim))
                 for i in range(code.H) for r, m in enumerate(uplinks[i]) if m is not None)
    down_esc = 0
    used = 0
    for r, (rc, m) in enumerate(zip(code.blocks, downlinks)):
        shape = coding.downlink_shape(code, r, dim)
        down_esc += escape_count(m, math.prod(shape))
        _, (er, _) = split_packed(m, shape)
        used += sum(np.isin(er, rc.decode_rows[i]).sum() for i in range(code.H))
    assert up_esc > 0 and down_esc > 0 and used > 0
    assert_all_exact(code, ivs, decoded)


@pytest.mark.parametrize("G", [paper_fig2(), MULTI_UNIT_G], ids=["paper-fig2", "multi-unit"])
def test_server_combine_with_escaped_uplinks(GF, G):
    """Uplink messages full of 65536 (built with ``pack``) against the galois oracle."""
    plan, code = plan_and_code(G)
    dim = 11
    rng = np.random.default_rng(8)
    if G is MULTI_UNIT_G:      # a message row spans several units: escapes map across them
        assert max(int(x) for rc in code.blocks for x in rc.width) >= 2
    for r, rc in enumerate(code.blocks):
        u = unit_symbols(dim, rc.F)
        msgs, units = {}, []
        for i in range(code.H):
            shape = coding.uplink_shape(code, r, i, dim)
            if shape[0] == 0:
                msgs[i] = None
                continue
            vals = rng.integers(0, 65537, size=shape)
            vals[rng.random(shape) < 0.2] = 65536
            msgs[i] = pack(vals)
            units.append(vals.reshape(-1, u))
        want = oracle(GF, rc.downlink_coeffs, np.concatenate(units))
        got = unpack(server_combine(code, r, msgs, dim), (rc.R, u))
        assert np.array_equal(got, want)


def test_relay_decode_with_escaped_broadcast(GF):
    """A broadcast with escapes on rows the relay uses decodes as the oracle says."""
    plan, code = plan_and_code(paper_fig2())
    dim = 9
    ivs = special_ivs(code.K, dim, seed=1)
    _, downlinks, _ = run_exchange_no_decode(code, ivs)
    for r, rc in enumerate(code.blocks):
        u = unit_symbols(dim, rc.F)
        for i in range(code.H):
            if rc.decode_matrix[i].shape[0] == 0:
                continue
            Y = unpack(downlinks[r], (rc.R, u))
            rows = rc.decode_rows[i]
            Y2 = Y.copy()
            Y2[rows[0], 0] = 65536                      # any field element is a valid broadcast
            known = [coding.iv_units(ivs[k], rc.F).astype(np.int64)
                     for k in rc.known(code.G, i)]
            stacked = np.concatenate([Y2[rows]] + known)
            want = oracle(GF, rc.decode_matrix[i], stacked)
            bufs = list(downlinks)
            bufs[r] = pack(Y2)
            kn = {int(k): ivs[k] for k in np.flatnonzero(code.G[i])}
            if (want == 65536).any():
                with pytest.raises(DecodeError):
                    relay_decode(code, i, kn, bufs, dim)
                continue
            got = relay_decode(code, i, kn, bufs, dim)
            unknown = [int(k) for k in rc.users if not code.G[i, k]]
            want_units = want.reshape(len(unknown), rc.F * u)
            for m, k in enumerate(unknown):
                assert np.array_equal(bits(got[k]),
                                      want_units[m][: 4 * dim].astype(np.uint16).view(np.uint64))


# --- code construction ---------------------------------------------------------------------

def _draw_bad_first(bad_attempts: int):
    """All-ones coefficients for the first ``bad_attempts`` draws (one rng per attempt)."""
    seen = []

    def draw(rng, shape):
        for n, r in enumerate(seen):
            if r is rng:
                break
        else:
            seen.append(rng)
            n = len(seen) - 1
        if n < bad_attempts:
            return np.ones(shape, dtype=np.int64)
        return rng.integers(1, P, size=shape, dtype=np.int64)
    draw.seen = seen
    return draw


def test_undecodable_draw_is_redrawn():
    plan, _ = plan_and_code(paper_fig2())
    draw = _draw_bad_first(2)
    code = build(plan, seed=40, draw=draw)
    assert code.attempts == 3 and code.seed == 42 and len(draw.seen) == 3
    res = verify_exchange(code, 33)
    assert res["bit_exact"] and res["attempts"] == 3 and res["seed"] == 42
    # the recorded seed reproduces the code that decodes
    again = build(plan, seed=42, draw=_draw_bad_first(0))
    assert again.attempts == 1 and again.seed == 42
    for a, b in zip(code.blocks, again.blocks):
        assert np.array_equal(a.downlink_coeffs, b.downlink_coeffs)
        assert all(np.array_equal(x, y) for x, y in zip(a.uplink_coeffs, b.uplink_coeffs))
        assert all(np.array_equal(x, y) for x, y in zip(a.decode_matrix, b.decode_matrix))


def test_never_decodable_draw_raises():
    plan, _ = plan_and_code(paper_fig2())
    draw = _draw_bad_first(10**9)
    with pytest.raises(DecodeError, match="3 attempts"):
        build(plan, seed=5, max_attempts=3, draw=draw)
    assert len(draw.seen) == 3


def test_default_seed_reproduces_and_buffer_is_deterministic():
    plan, code = plan_and_code(paper_fig2(), seed=9)
    again = build(plan, seed=9)
    buf = code.to_buffer()
    assert buf.dtype == np.uint8
    assert buf.tobytes() == again.to_buffer().tobytes()
    other = build(plan, seed=10)
    assert other.to_buffer().tobytes() != buf.tobytes()


def test_buffer_round_trip_decodes():
    G = random_topology(np.random.default_rng(4), 6, 15, all_relay_users=True)
    plan, code = plan_and_code(G)
    back = Code.from_buffer(code.to_buffer())
    assert np.array_equal(back.G, code.G) and back.G.dtype == code.G.dtype
    assert (back.seed, back.attempts, len(back.blocks)) == (code.seed, code.attempts,
                                                            len(code.blocks))
    for a, b in zip(code.blocks, back.blocks):
        assert (a.label, a.F, a.R) == (b.label, b.F, b.R)
        for name in ("users", "width", "messages", "downlink_coeffs"):
            x, y = getattr(a, name), getattr(b, name)
            assert np.array_equal(x, y) and x.shape == y.shape and x.dtype == y.dtype, name
        for name in ("rows", "uplink_coeffs", "decode_rows", "decode_matrix"):
            for x, y in zip(getattr(a, name), getattr(b, name)):
                assert np.array_equal(x, y) and x.shape == y.shape and x.dtype == y.dtype, name
    assert back.to_buffer().tobytes() == code.to_buffer().tobytes()
    res = verify_exchange(back, 19)
    assert res["bit_exact"]
    check_loads(plan, back, res)


# --- corruption ----------------------------------------------------------------------------

@pytest.mark.parametrize("rows", [False, True])
def test_corrupted_broadcast_is_not_silently_exact(rows, monkeypatch):
    """relay_decode has no checksum: a flipped broadcast symbol decodes to wrong IVs
    (which verify_exchange-style comparison flags) unless it hits 65536, which raises
    (``rows``: the decoder of long units, its inputs as row views, forced at this dim)."""
    if rows:
        monkeypatch.setattr(coding, "ROW_LIST_MIN_SYMBOLS", 0)
    plan, code = plan_and_code(paper_fig2())
    dim = 13
    ivs = special_ivs(code.K, dim, seed=2)
    _, downlinks, _ = run_exchange_no_decode(code, ivs)
    rc = code.blocks[0]
    u = unit_symbols(dim, rc.F)
    i = next(j for j in range(code.H) if rc.decode_matrix[j].shape[0])
    kn = {int(k): ivs[k] for k in np.flatnonzero(code.G[i])}
    Y = unpack(downlinks[0], (rc.R, u))
    row = int(rc.decode_rows[i][0])

    # (a) an ordinary corruption: decoded, but wrong
    bad = Y.copy()
    bad[row, 2] = (bad[row, 2] + 1) % P
    bufs = [pack(bad)] + list(downlinks[1:])
    try:
        got = relay_decode(code, i, kn, bufs, dim)
    except DecodeError:
        pass
    else:
        unknown = [int(k) for k in rc.users if not code.G[i, k]]
        assert any(not np.array_equal(bits(got[k]), bits(ivs[k])) for k in unknown)

    # (b) a corruption chosen to decode to 65536: DecodeError
    dec = rc.decode_matrix[i]
    known = np.concatenate([coding.iv_units(ivs[k], rc.F).astype(np.int64)
                            for k in rc.known(code.G, i)] or [np.zeros((0, u), np.int64)])
    col = 3
    stacked = np.concatenate([Y[rc.decode_rows[i]], known])
    x0 = int(dec[0] @ stacked[:, col] % P)
    assert x0 < 65536                                # an honest decode
    j = int(np.flatnonzero(dec[0, : len(rc.decode_rows[i])])[0])
    delta = (65536 - x0) * pow(int(dec[0, j]), P - 2, P) % P
    bad = Y.copy()
    bad[rc.decode_rows[i][j], col] = (bad[rc.decode_rows[i][j], col] + delta) % P
    with pytest.raises(DecodeError, match="corrupted"):
        relay_decode(code, i, kn, [pack(bad)] + list(downlinks[1:]), dim)

    # (c) a truncated broadcast
    with pytest.raises(ValueError):
        relay_decode(code, i, kn, [downlinks[0][:-1]] + list(downlinks[1:]), dim)


# --- command line --------------------------------------------------------------------------

def test_cli_verify_json():
    proc = subprocess.run([sys.executable, "-m", "hmtl_mpi.plan", "--topology", "paper-fig2",
                           "--verify", "--dim", "1000", "--json"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    v = out["verify"]
    assert v["bit_exact"] is True
    assert abs(v["measured_uplink_load"] / 8.5 - 1) < 0.01
    assert abs(v["measured_downlink_load"] / 7 - 1) < 0.01
    assert (v["planned_uplink_load"], v["planned_downlink_load"]) == (8.5, 7.0)


def test_bench_smoke(capsys):
    from hmtl_mpi.bench import coding as bench_coding
    res = bench_coding.run(json_out=True, dim=1000, repeats=1, first_use=False)
    printed = json.loads(capsys.readouterr().out)
    for key in ("memcpy_MBps", "encode_MBps", "combine_MBps", "decode_MBps", "joint_decode_MBps",
                "encode_kernel_MBps", "encode_12x20_kernel_cpu_MBps", "decode_kernel_MBps"):
        assert printed[key] > 0 and res[key] == printed[key]
    assert printed["decode_bit_exact"] is True
    for key in ("decode", "decode_random", "joint_decode", "decode_sym52"):   # kernel's share
        assert 0 < printed[f"{key}_kernel_share"] <= 1.0001


# --- combine_mod_p against Python integers, escapes in and out ---------------------------

@pytest.mark.parametrize("r,c,L", [(8, 10, 20_000), (1, 1, 5), (12, 20, 3_000), (3, 7, 9_999)])
def test_combine_with_escapes_equals_python_integers(r, c, L):
    rng = np.random.default_rng([r, c, L])
    coeffs = rng.integers(1, P, size=(r, c))
    coeffs[0, 0] = P - 1                       # -1: a zero input column then gives 65536 ...
    rows = rng.integers(0, 65536, size=(c, L)).astype(np.uint16)
    rows[:, 0] = 0
    rows[0, 0] = 1                             # ... here, in output row 0: an output escape
    pos = np.unique(rng.integers(0, c * L, 1 + L // 50))
    pos = pos[pos % L != 0]
    er, ec = pos // L, pos % L
    rows[er, ec] = 0                           # escaped inputs are 0 in the payload
    exact = rows.astype(object)
    exact[er, ec] = 65536
    want = (coeffs.astype(object) @ exact) % P
    out = np.empty((r, L), dtype=np.uint16)
    found = combine_mod_p(coeffs, rows, out, (er, ec))
    full = out.astype(np.int64)
    full.reshape(-1)[found.astype(np.int64)] = 65536
    assert np.array_equal(full, want.astype(np.int64))
    assert 0 in found


def test_compiled_elimination_equals_the_numpy_one(monkeypatch):
    """Large systems are eliminated by numba with delayed reduction: same RREF, same pivots."""
    rng = np.random.default_rng(5)
    A = rng.integers(0, P, size=(70, 110))
    A[:, 4] = 0
    A[9] = A[2] * 12345 % P                     # a dependent row: one pivot fewer
    monkeypatch.setattr(coding, "NUMBA_MIN_ELIMINATION", 0)
    fast, fast_pivots = coding._gauss_jordan(A)
    monkeypatch.setattr(coding, "NUMBA_MIN_ELIMINATION", 10 ** 18)
    slow, slow_pivots = coding._gauss_jordan(A)
    assert np.array_equal(fast, slow) and fast_pivots == slow_pivots
    assert len(fast_pivots) == 69 and 4 not in fast_pivots
