"""The straggler-tolerant exchange (--relay-stragglers S): plan, code, and runs in one process.

Brute force over every straggler set on small topologies: the server decodes every IV it
must from the first H - S relays, whichever they are, and every relay then decodes the
broadcast, bit for bit (IVs with NaN, inf, -0.0 and subnormals among them).
"""

from __future__ import annotations

import json
from fractions import Fraction
from itertools import combinations

import numpy as np
import pytest

from hmtl_mpi.codes import coding
from hmtl_mpi.codes import tolerant as tcode
from hmtl_mpi.job.config import JobConfig
from hmtl_mpi.job.runtime import run_inprocess
from hmtl_mpi.learning.straggle import parse as straggle
from hmtl_mpi.planning import tolerant as tplan
from hmtl_mpi.planning.topology import cyclic, load_topology, random_regular, symmetric
from hmtl_mpi.schemes import get
from hmtl_mpi.vocabulary import EXIT_BAD_INPUT

SMALL = [("paper-fig2", load_topology("paper-fig2"), 1),
         ("cyclic 5,3", cyclic(5, 3), 1), ("cyclic 5,3", cyclic(5, 3), 2),
         ("symmetric 4,2", symmetric(4, 2), 1),
         ("random 12 on 6, r = 3", random_regular(12, 6, 3, 1), 2),
         ("mixed degrees", np.array([[1, 1, 0, 1, 1, 0], [1, 0, 1, 1, 0, 1], [0, 1, 1, 1, 1, 1],
                                     [1, 1, 1, 0, 0, 1]], dtype=np.uint8), 1),
         ("a user on every relay", np.array([[1, 1, 0, 1, 1], [1, 0, 1, 1, 0], [0, 1, 1, 1, 1],
                                             [1, 1, 1, 1, 0]], dtype=np.uint8), 1)]


def exchange(G, S, by_round, dim=37, seed=0):
    """Every straggler set: (the server's decoded IVs, every relay's IVs) against the sent."""
    H, K = G.shape
    tp = tplan.make_tolerant_plan(G, S, by_round)
    code = tcode.load(G, tcode.build(G, S, [(b.F, b.users, b.units) for b in tp.blocks],
                                     seed=seed).to_buffer())     # as every other rank gets it
    ivs = coding.special_ivs(K, dim, seed)
    own = [{int(k): ivs[k] for k in np.flatnonzero(G[i])} for i in range(H)]
    sizes = [tcode.uplink_symbols(code, i, dim) for i in range(H)]
    messages = [tcode.unwire(tcode.wire(tcode.relay_encode(code, i, own[i], dim)), sizes[i])
                for i in range(H)]
    server = tcode.ServerDecoder(code, dim)
    sent = {int(k) for b in tp.blocks for k in b.users}
    sets = 0
    for A in combinations(range(H), H - S):
        sets += 1
        xs = server.decode({i: messages[i] for i in A})
        got = server.ivs(xs)
        assert set(got) == sent
        assert all(got[k].tobytes() == ivs[k].tobytes() for k in got), (A, "server")
        down = tcode.unwire(tcode.wire(server.downlink(xs)), tcode.downlink_symbols(code, dim))
        for i in range(H):
            out = tcode.relay_decode(code, i, own[i], down, dim)
            assert sorted(out) == list(range(K))
            assert all(out[k].tobytes() == ivs[k].tobytes() for k in range(K)), (A, i)
    return tp, code, sets


@pytest.mark.parametrize("name,G,S", SMALL, ids=[f"{n} S={s}" for n, _, s in SMALL])
@pytest.mark.parametrize("by_round", [True, False], ids=["coded", "joint"])
def test_server_and_every_relay_decode_for_every_straggler_set(name, G, S, by_round):
    H = G.shape[0]
    tp, code, sets = exchange(G, S, by_round)
    assert sets == len(list(combinations(range(H), H - S))) == code.checked_sets
    # the loads meet every cut-set constraint, in exact integers, and the averaging bound
    for b in tp.blocks:
        A, rhs = tplan.constraints(tp.G, b.users, S)
        assert tplan.satisfied(A, rhs, b.loads)
        assert sum(b.loads) <= sum(tplan.per_user_mds(tp.G, b.users, S))
    assert tp.uplink_load >= tp.uplink_lower_bound


def test_a_load_below_the_plan_leaves_some_straggler_set_undecodable():
    """The LP's constraints are needed: one unit less at any relay that sends, and some set
    of H - S relays no longer has enough rows for the server (counting, no code)."""
    G = load_topology("paper-fig2")
    tp = tplan.make_tolerant_plan(G, 1, by_round=False)
    (b,) = tp.blocks
    A, rhs = tplan.constraints(tp.G, b.users, 1)
    for i in range(tp.H):
        if b.loads[i]:
            fewer = list(b.loads)
            fewer[i] -= Fraction(1, b.F)
            assert not tplan.satisfied(A, rhs, fewer)


def test_paper_fig2_loads():
    G = load_topology("paper-fig2")
    for by_round in (True, False):
        tp = tplan.make_tolerant_plan(G, 1, by_round)
        assert tp.uplink_load == Fraction(25, 2) == tp.uplink_lower_bound   # 10 * 5 / 4
        assert tp.downlink_load == 7


def test_a_user_on_too_few_relays_is_refused_by_name():
    G = load_topology("paper-fig2")              # users 3, 4, 5, 7, 8, 9 are on 2 relays
    with pytest.raises(tplan.TolerantPlanError, match=r"user 3 is linked to 2 relay\(s\) "
                       r"\(1, 2\); every user needs at least S \+ 1 = 3"):
        tplan.make_tolerant_plan(G, 2, by_round=True)
    with pytest.raises(ValueError, match="user 3 is linked to 2"):
        get("joint").plan(G, relay_stragglers=2)
    with pytest.raises(tplan.TolerantPlanError, match="H = 5 relays"):
        tplan.make_tolerant_plan(G, 5, by_round=False)


def test_the_cli_refuses_with_exit_2_naming_the_user(tmp_path, capsys):
    config = JobConfig(topology="paper-fig2", schemes=("coded",), scheme_arg="coded",
                       relay_stragglers=2, iterations=1, quiet=True, straggle=straggle("none"))
    assert run_inprocess(config) == EXIT_BAD_INPUT
    assert "--scheme coded: --relay-stragglers 2: user 3 is linked to 2 relay(s)" in \
        capsys.readouterr().err
    config = JobConfig(topology="paper-fig2", schemes=("coded",), scheme_arg="coded",
                       iterations=1, quiet=True, straggle=straggle("fixed:9=0.1"))
    assert run_inprocess(config) == EXIT_BAD_INPUT
    assert "rank 9 is user 4; under --workload mtl only relays" in capsys.readouterr().err


def test_inprocess_with_a_slow_relay_is_exact_and_never_waits_for_it(tmp_path):
    path = tmp_path / "r.json"
    config = JobConfig(topology="paper-fig2", schemes=("uncoded", "coded", "joint"),
                       scheme_arg="uncoded,coded,joint", relay_stragglers=1, iterations=4,
                       quiet=True, straggle=straggle("fixed:2=0.3"), report=str(path))
    assert run_inprocess(config) == 0
    rep = json.loads(path.read_text())
    runs = rep["runs"]
    assert rep["model_digests_equal"] is True
    for name in ("coded", "joint"):
        run = runs[name]
        assert run["ivs_bit_exact"] is True and run["models_delivered_intact"] is True
        assert run["relay_stragglers"] == 1
        assert run["relay_uplinks_not_waited_for"] == [0, 4, 0, 0, 0]   # relay 2 = rank 2
        assert run["median_seconds"]["total"] < 0.1
    assert runs["uncoded"]["median_seconds"]["total"] >= 0.3          # it waits for relay 2


def test_resumed_from_a_checkpoint_ends_bit_identical(tmp_path):
    def run(**options):
        path = tmp_path / f"r{len(list(tmp_path.iterdir()))}.json"
        config = JobConfig(topology="paper-fig2", schemes=("uncoded", "coded"),
                           scheme_arg="uncoded,coded", relay_stragglers=1, iterations=5,
                           quiet=True, straggle=straggle("fixed:2=0.3"), report=str(path),
                           **options)
        assert run_inprocess(config) == 0
        rep = json.loads(path.read_text())
        return {n: (r["model_digest"], len(r["iterations"]), r["ivs_bit_exact"],
                    r.get("relay_uplinks_not_waited_for")) for n, r in rep["runs"].items()}
    reference = run()
    ck = tmp_path / "ck"
    assert run(checkpoint=str(ck), checkpoint_every=2) == reference
    (ck / "ckpt-1-00000004.hmtl").unlink()          # resume the tolerant run after iteration 2
    assert run(resume=str(ck)) == reference


def test_the_servers_message_cut_into_pieces_and_joined_in_any_order():
    rng = np.random.default_rng(3)
    symbols = rng.integers(0, 65537, size=1001)
    symbols[[5, 500, 1000]] = 65536                           # escaped symbols
    message = tcode.wire(symbols)
    for n in range(1, 6):
        cap = tcode.piece_capacity(symbols.size, n)
        received = []
        for piece in tcode.pieces(message, n):
            buf = np.zeros(cap, dtype=np.uint16)              # a receive buffer, longer
            buf[: piece.size] = piece
            assert np.array_equal(tcode.trim(buf), piece)     # forwarded as it came
            received.append(buf)
        order = rng.permutation(n)
        joined = tcode.join([received[j] for j in order])
        assert np.array_equal(tcode.unwire(joined, symbols.size), symbols)
    assert tcode.piece_index(tcode.no_piece(4)) is None


def test_a_corrupted_decode_is_caught(tmp_path, monkeypatch):
    """The digest chains are not vacuous: one bit flipped in one IV one relay decoded, in
    one iteration, and the run reports it."""
    from hmtl_mpi.schemes import tolerant as scheme_module

    real = scheme_module.tcode.relay_decode
    calls = {"n": 0}

    def corrupt(code, i, ivs, downlink, dim):
        out = real(code, i, ivs, downlink, dim)
        calls["n"] += 1
        if i == 3 and calls["n"] > 5 and not calls.get("done"):
            k = next(k for k in out if k not in ivs)           # an IV relay 4 decoded
            out[k] = out[k].copy()
            out[k].view(np.uint64)[0] ^= 1
            calls["done"] = True
        return out
    monkeypatch.setattr(scheme_module.tcode, "relay_decode", corrupt)
    path = tmp_path / "r.json"
    config = JobConfig(topology="paper-fig2", schemes=("coded",), scheme_arg="coded",
                       relay_stragglers=1, iterations=3, quiet=True, straggle=straggle("none"),
                       report=str(path))
    run_inprocess(config)
    rep = json.loads(path.read_text())
    assert calls.get("done") and rep["ivs_bit_exact"] is False
