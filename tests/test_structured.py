"""The structured code (hmtl_mpi.codes.structured): decodable by construction, checked here
exactly anyway.

Every structured block is rebuilt as the equivalent dense code (identity rows and Cauchy
parities on the uplink, [I | B] on the downlink) and every relay's system is eliminated
over GF(65537): full rank, or the test fails. Exchanges run through the coded scheme's
parts (``verify_exchange``) on awkward bit patterns and are compared bit for bit, and
the wire bytes equal those of the dense equivalent and the loads those of the random
code of the same plan.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest

from hmtl_mpi.codes import coding, structured
from hmtl_mpi.codes.coding import (P, Code, DecodeError, pack, relay_decode, special_ivs,
                                   unit_symbols, unpack)
from hmtl_mpi.job.verify import verify_exchange
from hmtl_mpi.planning.hierarchical import make_plan
from hmtl_mpi.planning.topology import cyclic, paper_fig2, random_regular, symmetric, validate
from hmtl_mpi.schemes.coded import Coded
from hmtl_mpi.schemes.joint import Joint

from test_coding import MULTI_UNIT_G, assert_all_exact, bits, random_topology, run_exchange

TOPOLOGIES = {
    "paper-fig2": paper_fig2(),
    "cyclic-5-2": cyclic(5, 2),
    "cyclic-6-3": cyclic(6, 3),
    "cyclic-7-3": cyclic(7, 3),
    "cyclic-8-2": cyclic(8, 2),
    "rr-12-4-2": random_regular(12, 4, 2, seed=1),
    "rr-30-6-2": random_regular(30, 6, 2, seed=4),
    "rr-20-6-3": random_regular(20, 6, 3, seed=2),
    "rr-60-10-3": random_regular(60, 10, 3, seed=0),
    "rr-9-3-1": random_regular(9, 3, 1, seed=3),
    "sym-5-2": symmetric(5, 2),
    "sym-6-3": symmetric(6, 3),
    "multi-unit": MULTI_UNIT_G,
}

_SCHEMES: dict = {}


def coded(name: str, construction: str = "auto") -> Coded:
    key = (name, construction)
    if key not in _SCHEMES:
        _SCHEMES[key] = Coded.plan(validate(TOPOLOGIES[name]), construction=construction)
    return _SCHEMES[key]


def relays_decode_by_elimination(G, blk) -> bool:
    """Every relay's system of the block's dense equivalent has full rank (exact Gauss-Jordan
    over GF(p)): what D0-D3 promise, checked without them."""
    return structured.dense_equivalent(G, blk) is not None


# --- the field's helpers ---------------------------------------------------------------

def test_inverse_table():
    inv = structured.inverses()
    a = np.arange(1, P)
    assert inv[0] == 0 and np.all(a * inv[1:] % P == 1)


@pytest.mark.parametrize("n", [1, 2, 3, 17, 80])
def test_cauchy_inverse_closed_form(n):
    rng = np.random.default_rng(n)
    points = rng.choice(P, size=2 * n, replace=False)
    x, y = points[:n], points[n:]
    C = structured.cauchy(x, y)
    D = structured.cauchy_inverse(x, y)
    assert np.array_equal((D.astype(object) @ C.astype(object)) % P, np.eye(n, dtype=object))
    assert np.array_equal(D, coding._inverse_mod_p(C))


def test_field_mul_holds_65536_inputs():
    rng = np.random.default_rng(1)
    values = rng.integers(0, 65537, size=(9, 300)).astype(np.uint32)
    values[0, :5] = 65536
    coeffs = rng.integers(0, P, size=(4, 9))
    want = (coeffs.astype(object) @ values.astype(object)) % P
    assert np.array_equal(structured.field_mul(coeffs, values).astype(object), want)


# --- every relay decodes: by construction, and by elimination -------------------------------

@pytest.mark.parametrize("name", sorted(TOPOLOGIES))
def test_structured_codes_decode_at_every_relay(name):
    scheme = coded(name)
    code = scheme.code
    assert code.construction == "structured" and code.fallback == ""
    assert scheme.report_fields()["code_construction"] == "structured"
    for blk in code.blocks:
        assert isinstance(blk, structured.StructuredBlock)
        assert relays_decode_by_elimination(code.G, blk), (name, blk.label)
        # the planned loads, exactly: n_i messages of width_i units, R broadcast units
        assert blk.R == coding.downlink_rows(code.G, blk)
        t = blk.tables()
        for i in range(code.H):
            if blk.messages[i]:
                assert len(t["raw"][i]) + t["parity"][i] == blk.messages[i]
    for dim in (1, 2, 3, 7, 64, 1001):
        res = verify_exchange(scheme, dim, seed=dim)
        assert res["bit_exact"], (name, dim)


@pytest.mark.parametrize("kernel", [False, True])
@pytest.mark.parametrize("name", sorted(TOPOLOGIES))
def test_long_unit_decoder_at_every_relay(name, kernel, monkeypatch):
    """The decoder of long units (rows in wire form, written in place) forced at small
    dims, on both paths of combine_mod_p: every relay's IVs bit-exact."""
    monkeypatch.setattr(coding, "ROW_LIST_MIN_SYMBOLS", 0)
    monkeypatch.setattr(coding, "KERNEL", kernel)
    monkeypatch.setattr(coding, "KERNEL_MIN_SYMBOLS", 0)
    code = coded(name).code
    for dim in (1, 7, 64, 1001):
        ivs = special_ivs(code.K, dim, seed=dim)
        _, _, decoded = run_exchange(code, ivs)
        assert_all_exact(code, ivs, decoded)


@pytest.mark.parametrize("name", ["paper-fig2", "rr-20-6-3", "multi-unit", "sym-6-3"])
def test_wire_bytes_equal_the_dense_equivalent_and_loads_the_random_code(name):
    scheme = coded(name)
    code = scheme.code
    dense = Code(G=code.G, blocks=[structured.dense_equivalent(code.G, b) for b in code.blocks])
    rand = coded(name, "random")
    assert rand.code.construction == "random"
    assert scheme.planned_loads == rand.planned_loads
    dim = 301
    ivs = special_ivs(code.K, dim, seed=4)
    up_s, down_s, dec_s = run_exchange(code, ivs)
    up_d, down_d, dec_d = run_exchange(dense, ivs)
    up_r, down_r, _ = run_exchange(rand.code, ivs)
    for i in range(code.H):
        for b in range(len(code.blocks)):
            if up_s[i][b] is None:
                assert up_d[i][b] is None and up_r[i][b] is None
                continue
            assert np.array_equal(up_s[i][b], up_d[i][b]), (i, b)
            symbols = coding.uplink_symbols(code, b, i, dim)
            assert up_r[i][b].size - symbols >= 0
            assert (up_s[i][b].size - symbols) % 2 == 0     # payload + 4-byte escapes
    for b in range(len(code.blocks)):
        assert np.array_equal(down_s[b], down_d[b])
        payload = math.prod(coding.downlink_shape(code, b, dim))
        assert coding.downlink_shape(code, b, dim) == coding.downlink_shape(rand.code, b, dim)
        assert down_s[b].size >= payload and (down_s[b].size - payload) % 2 == 0
    assert_all_exact(code, ivs, dec_s)
    assert_all_exact(dense, ivs, dec_d)


def test_awkward_bit_patterns_at_every_relay():
    code = coded("paper-fig2").code
    dim = 37
    ivs = special_ivs(code.K, dim, seed=3)
    b = bits(ivs)
    b[:, -6:] = np.array([0x7FF8DEADBEEF0001, 0xFFFFFFFFFFFFFFFF, 0x0000000000000001,
                          0x800FFFFFFFFFFFFF, 0x8000000000000000, 0xFFF0000000000000],
                         dtype=np.uint64)
    _, _, decoded = run_exchange(code, ivs)
    assert_all_exact(code, ivs, decoded)


@pytest.mark.parametrize("kernel,short", [(False, None), (True, None), (True, 1 << 30)])
@pytest.mark.parametrize("name", ["paper-fig2", "rr-20-6-3"])
def test_natural_escapes_on_parities_and_broadcast(name, kernel, short, monkeypatch):
    """At 20000 values coded symbols equal 65536 by themselves; they are escaped on the wire
    (uplink parities and broadcast) and decoded, on both paths of combine_mod_p (the
    decoder's in-between units are wire rows with escapes too), and by the short-unit
    decoder (stacked field elements) when every unit counts as short."""
    monkeypatch.setattr(coding, "KERNEL", kernel)
    monkeypatch.setattr(coding, "KERNEL_MIN_SYMBOLS", 0)
    monkeypatch.setattr(coding, "ROW_LIST_MIN_SYMBOLS", 0 if short is None else short)
    code = coded(name).code
    assert sum(int(b.tables()["parity"].sum()) for b in code.blocks) >= 3
    dim = 20000
    ivs = special_ivs(code.K, dim, seed=5)
    up, down, decoded = run_exchange(code, ivs)
    up_esc = sum((m.size - coding.uplink_symbols(code, b, i, dim)) // 2
                 for i in range(code.H) for b, m in enumerate(up[i]) if m is not None)
    down_esc = sum((m.size - math.prod(coding.downlink_shape(code, b, dim))) // 2
                   for b, m in enumerate(down))
    assert up_esc >= 1 and down_esc >= 1
    assert_all_exact(code, ivs, decoded)


def test_many_random_topologies_covered_and_exact():
    """Bernoulli placements of mixed degree (the tests' random_topology): most are covered;
    every covered one decodes at every relay by elimination and bit-exactly."""
    rng = np.random.default_rng(11)
    covered = 0
    total = 40
    for n in range(total):
        G = random_topology(rng)
        scheme = Coded.plan(G)
        if scheme.code.construction != "structured":
            assert scheme.code.fallback
            continue
        covered += 1
        for blk in scheme.code.blocks:
            assert relays_decode_by_elimination(scheme.code.G, blk), G.tolist()
        assert verify_exchange(scheme, 5 + n, seed=n)["bit_exact"], G.tolist()
    assert covered >= 0.85 * total


def test_buffer_round_trip_and_determinism():
    scheme = coded("rr-20-6-3")
    code = scheme.code
    buf = code.to_buffer()
    again = Coded.plan(validate(TOPOLOGIES["rr-20-6-3"]), seed=123).code
    assert Coded.plan(validate(TOPOLOGIES["rr-20-6-3"])).code.to_buffer().tobytes() == buf.tobytes()
    back = structured.load_code(buf)
    assert back.construction == "structured" and len(back.blocks) == len(code.blocks)
    for a, b in zip(code.blocks, back.blocks):
        assert (a.label, a.F, a.R, a.j0) == (b.label, b.F, b.R, b.j0)
        assert np.array_equal(a.q0, b.q0) and np.array_equal(a.beta, b.beta)
        assert all(np.array_equal(x, y) for x, y in zip(a.hidden, b.hidden))
        assert all(np.array_equal(x, y) for x, y in zip(a.rows, b.rows))
    assert back.to_buffer().tobytes() == buf.tobytes()
    res = verify_exchange(Coded(back.G, back), 19)
    assert res["bit_exact"]
    with pytest.raises(ValueError, match="structured.load_code"):
        Code.from_buffer(buf)
    # the structured code does not depend on the seed
    for a, b in zip(again.blocks, code.blocks):
        assert np.array_equal(a.q0, b.q0) and np.array_equal(a.beta, b.beta)


def test_points_reused_when_the_broadcast_outgrows_the_field():
    """With more broadcast units than free points, beta repeats but every relay still sees
    as many distinct points as it has unknowns among the units of Qc (D3)."""
    rng = np.random.default_rng(0)
    R, nq, H = 70000, 100, 50
    rel = rng.integers(0, H, size=4 * R)
    row = rng.integers(0, R, size=4 * R)
    need = np.full(H, 90)
    beta = structured.assign_points((row, rel), R, nq, need, H)
    assert beta.min() >= nq and beta.max() < P
    assert len(np.unique(beta)) < R
    key = rel * P + beta[row]
    assert np.all(np.bincount(np.unique(key) // P, minlength=H) >= need)


# --- corruption ------------------------------------------------------------------------------

@pytest.mark.parametrize("kernel,rows", [(False, False), (False, True), (True, True)])
def test_corrupted_broadcast_is_caught_or_wrong(kernel, rows, monkeypatch):
    """(``rows``: the decoder of long units, rows in wire form, forced at this small dim.)"""
    monkeypatch.setattr(coding, "KERNEL", kernel)
    monkeypatch.setattr(coding, "KERNEL_MIN_SYMBOLS", 0)
    if rows:
        monkeypatch.setattr(coding, "ROW_LIST_MIN_SYMBOLS", 0)
    code = coded("rr-20-6-3").code
    dim = 11
    ivs = special_ivs(code.K, dim, seed=2)
    up, down, _ = run_exchange(code, ivs)
    blk = code.blocks[0]
    j = next(i for i in range(code.H) if len(blk.decoder(code.G, i)["aff"]))
    known = {int(k): ivs[k] for k in np.flatnonzero(code.G[j])}
    u = unit_symbols(dim, blk.F)
    Y = unpack(down[0], (blk.R, u))
    row = int(blk.decoder(code.G, j)["aff"][0])
    unknown = [int(k) for k in blk.users if not code.G[j, k]]

    def symbols(bufs):
        got = relay_decode(code, j, known, bufs, dim)
        return np.concatenate([got[k].view(np.uint16).astype(np.int64) for k in unknown])

    honest = symbols(down)
    bad = Y.copy()
    bad[row, 1] = (bad[row, 1] + 1) % P
    try:
        shifted = symbols([pack(bad)] + list(down[1:]))
    except DecodeError:
        shifted = None
    if shifted is not None:                           # decodes, but wrong: linear in Y
        assert not np.array_equal(shifted, honest)
        slope = (shifted - honest) % P
        s = int(np.flatnonzero(slope)[0])
        delta = (65536 - honest[s]) * pow(int(slope[s]), P - 2, P) % P
        bad = Y.copy()
        bad[row, 1] = (bad[row, 1] + delta) % P
    with pytest.raises(DecodeError, match="corrupted"):
        symbols([pack(bad)] + list(down[1:]))
    with pytest.raises(ValueError):
        relay_decode(code, j, known, [down[0][:-1]] + list(down[1:]), dim)


# --- what it does not cover: the random code, and why ---------------------------------------

def test_joint_exchange_falls_back_to_random_with_the_reason():
    scheme = Joint.plan(paper_fig2())
    assert scheme.code.construction == "random"
    assert "fewer than" in scheme.code.fallback
    assert scheme.plan_dict()["code_construction"] == "random"
    assert scheme.plan_dict()["code_fallback"] == scheme.code.fallback
    with pytest.raises(ValueError, match="does not cover this plan: joint block: relay"):
        Joint.plan(paper_fig2(), construction="structured")
    assert verify_exchange(scheme, 9)["bit_exact"]


def test_uncovered_round_falls_back_and_still_decodes():
    G = validate(cyclic(6, 4))            # every relay shares 3 users with every other: D2 fails
    scheme = Coded.plan(G)
    assert scheme.code.construction == "random" and "broadcast" in scheme.code.fallback
    assert "structured one does not cover" in scheme.format_plan()
    assert verify_exchange(scheme, 7)["bit_exact"]


def test_fallback_refused_when_its_systems_are_too_large(monkeypatch):
    monkeypatch.setattr(structured, "RANDOM_MAX_UNKNOWNS", 3)
    with pytest.raises(ValueError, match=r"dense systems of \d+ units per relay are too large"):
        Coded.plan(validate(cyclic(6, 4)))
    assert Coded.plan(validate(cyclic(6, 4)), construction="random").code.construction == "random"


def test_bad_construction_named():
    with pytest.raises(ValueError, match="'fastest'"):
        structured.build_code(paper_fig2(), [], construction="fastest")


def test_layout_a_relay_cannot_decode_is_not_covered():
    """A relay that leaves out more rows than another relay knows of them (D1 impossible)."""
    G = validate(paper_fig2())
    plan = make_plan(G)
    layout = Coded.layouts(plan)[0]
    layout.messages = layout.messages.copy()
    layout.messages[0] -= 2                     # relay 1 now leaves out 3 of its 4 rows
    with pytest.raises(structured.NotCovered, match="knows 1 of relay 1's 4 rows, fewer than the 3"):
        structured.build_block(G, layout)


# --- decoding cost and the command line ----------------------------------------------------

def test_structured_decoder_costs_a_fraction_of_the_random_one():
    """Multiply-adds per symbol position at every relay: the structured decoder's about
    |Qc| = T - R per decoded unit, the random one's R + known units."""
    s, r = coded("rr-60-10-3"), coded("rr-60-10-3", "random")
    blk = s.code.blocks[0]
    nq = len(blk.tables()["qc"])
    for i in range(s.H):
        got = blk.decode_multiply_adds(s.code.G, i)
        dense = r.code.blocks[0].decode_multiply_adds(r.code.G, i)
        unknown = blk.F * int((s.code.G[i, blk.users] == 0).sum())
        assert 0 < got < dense / 4
        assert got < unknown * 2 * nq + nq * nq


def test_plan_cli_says_which_construction():
    for code, want in (("auto", "structured"), ("random", "random")):
        proc = subprocess.run([sys.executable, "-m", "hmtl_mpi.plan", "--topology", "paper-fig2",
                               "--code", code, "--verify", "--dim", "5", "--json"],
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        out = json.loads(proc.stdout)
        assert out["code_construction"] == want and out["verify"]["bit_exact"] is True
    proc = subprocess.run([sys.executable, "-m", "hmtl_mpi.plan", "--topology", "paper-fig2",
                           "--scheme", "joint", "--code", "structured"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "does not cover this plan" in proc.stderr


def test_segments_follow_increasing_relay_order():
    """round_layout's segments, vectorised, against the definition (docs/scheme.md,
    "Segments"): the relays of k with a_i > 0 take consecutive units in increasing order."""
    from hmtl_mpi.schemes.coded import round_layout
    rng = np.random.default_rng(8)
    for G in [paper_fig2(), MULTI_UNIT_G] + [random_topology(rng) for _ in range(25)]:
        plan = make_plan(validate(G))
        for rnd in plan.rounds:
            layout = round_layout(plan.G, rnd)
            units = rnd.units
            for c, k in enumerate(rnd.users):
                start = 0
                for i in range(plan.H):
                    if plan.G[i, k] and units[i] > 0:
                        rows = layout.rows[i]
                        assert [start] == rows[rows[:, 0] == c, 1].tolist(), (rnd.z, k, i)
                        start += units[i]
                assert start >= rnd.D
            for i in range(plan.H):
                assert np.all(np.diff(layout.rows[i][:, 0]) > 0)


def test_scale_benchmarks_smoke(capsys):
    """bench plan --scale / bench coding --scale at toy sizes: every row measured, the
    random code built where it fits, decoding bit-exact (no speed asserted)."""
    from hmtl_mpi.bench import scale
    rows = scale.run_plan(((120, 8),), random_budget=120, json_out=True)
    out = json.loads(capsys.readouterr().out)
    assert out["rows"][0]["construction"] == "structured" and rows[0]["plan_cli"]["exit"] == 0
    assert rows[0]["random"]["finished"] and rows[0]["random"]["construction"] == "random"
    assert rows[0]["peak_rss_mb"] >= rows[0]["baseline_rss_mb"] > 0
    rows = scale.run_coding(((150, 10),), ((60, 6),), dims={(150, 10): 50, (60, 6): 20},
                            json_out=True)
    capsys.readouterr()
    assert [r["construction"] for r in rows] == ["structured", "structured", "random"]
    for r in rows:
        assert r["finished"] and r["bit_exact"] and r["decode_MBps"] > 0 and r["encode_MBps"] > 0
    assert rows[1]["decode_multiply_adds_per_symbol"] < rows[2]["decode_multiply_adds_per_symbol"]
    with pytest.raises(ValueError, match="'10x'"):
        scale.parse_sizes("10x")


@pytest.mark.parametrize("r,c,L", [(5, 7, 3000), (1, 1, 9), (40, 3, 20_000), (3, 0, 50)])
def test_combine_with_add_equals_python_integers(r, c, L):
    """combine_mod_p's fused ``add`` (the structured broadcast's systematic part), escapes
    in the rows, in the added rows and in the output, against Python integers."""
    rng = np.random.default_rng([r, c, L])
    coeffs = rng.integers(0, P, size=(r, c))
    rows = rng.integers(0, 65536, size=(c, L)).astype(np.uint16)
    add = rng.integers(0, 65536, size=(r, L)).astype(np.uint16)
    pos = np.unique(rng.integers(0, max(c * L, 1), 1 + L // 40)) if c else np.zeros(0, int)
    er, ec = pos // L, pos % L
    rows[er, ec] = 0
    apos = np.unique(rng.integers(0, r * L, 1 + L // 40))
    ar, ac = apos // L, apos % L
    add[ar, ac] = 0
    exact_rows = rows.astype(object)
    exact_rows[er, ec] = 65536
    exact_add = add.astype(object)
    exact_add[ar, ac] = 65536
    want = (exact_add + coeffs.astype(object) @ exact_rows) % P if c else exact_add % P
    out = np.empty((r, L), dtype=np.uint16)
    found = coding.combine_mod_p(coeffs, rows, out, (er, ec), add=add, add_escapes=(ar, ac))
    full = out.astype(np.int64)
    full.reshape(-1)[found.astype(np.int64)] = 65536
    assert np.array_equal(full, want.astype(np.int64))
    out32 = np.empty((r, L), dtype=np.uint32)
    coding.combine_mod_p(coeffs, rows, out32, (er, ec), add=add, add_escapes=(ar, ac))
    assert np.array_equal(out32.astype(object), want % P)
