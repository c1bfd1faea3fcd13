"""The time prediction (hmtl_mpi.job.predict) and what the schemes tell it; no MPI."""

from __future__ import annotations

import math

import numpy as np
import pytest

from hmtl_mpi.codes import coding
from hmtl_mpi.job.predict import phase_seconds, saving_pct, verdict
from hmtl_mpi.schemes import get
from hmtl_mpi.planning.topology import paper_fig2


@pytest.fixture(scope="module")
def schemes():
    G = paper_fig2()
    return {name: get(name, "mtl").plan(G) for name in ("uncoded", "coded")}


def test_eq13_terms_with_latency(schemes):
    """W2 carries (L_up + L_down) V bytes, W1 the busiest user's copies, plus a latency per round."""
    V = 400_000
    links = {"w1": (1e-3, 12.5e6), "w2": (2e-3, 2.5e6)}        # 100 and 20 Mbit/s
    coded = schemes["coded"]
    loads = coded.link_loads()
    assert loads["relay_to_server"] == 8.5 and loads["server_to_relay"] == 7
    assert loads["user_up_max"] == int(paper_fig2().sum(axis=0).max())
    p = phase_seconds(loads, V, links, {}, 1e9)
    assert p["relay_to_server"] == pytest.approx(loads["uplink_rounds"] * 2e-3 + 8.5 * V / 2.5e6)
    assert p["server_to_relay"] == pytest.approx(loads["downlink_rounds"] * 2e-3 + 7 * V / 2.5e6)
    assert p["user_to_relay"] == pytest.approx(1e-3 + loads["user_up_max"] * V / 12.5e6)
    assert p["total"] == pytest.approx(sum(p[k] for k in ("user_to_relay", "relay_to_server",
                                                          "server_to_relay", "relay_to_user")))
    u = phase_seconds(schemes["uncoded"].link_loads(), V, links, {}, 1e9)
    assert u["user_to_relay"] == pytest.approx(1e-3 + V / 12.5e6)  # home relay only
    assert u["relay_to_server"] == pytest.approx(2e-3 + 10 * V / 2.5e6)


def test_coding_work_is_what_the_kernels_read(schemes):
    coded, uncoded = schemes["coded"], schemes["uncoded"]
    assert uncoded.coding_work(1000) == {}
    work = coded.coding_work(1000)
    assert set(work) == {"encode", "combine", "decode"}
    # the server reads every uplink symbol once: 8.5 IVs of 4000 symbols, 2 bytes each
    assert work["combine"] == pytest.approx(8.5 * 4000 * 2, rel=0.01)
    assert 0 < work["encode"] and 0 < work["decode"]
    p = phase_seconds(coded.link_loads(), 8000, {"w1": (0, 1e9), "w2": (0, 1e9)}, work, 1e8)
    assert p["encode"] == pytest.approx((work["encode"] + work["combine"]) / 1e8)
    assert p["decode"] == pytest.approx(work["decode"] / 1e8)


def test_verdict_names_the_winner():
    pred = {"uncoded": {"total": 0.010, "relay_to_server": 0.004, "server_to_relay": 0.004,
                        "user_to_relay": 0.001, "relay_to_user": 0.001, "encode": 0, "decode": 0},
            "coded": {"total": 0.008, "relay_to_server": 0.003, "server_to_relay": 0.002,
                      "user_to_relay": 0.001, "relay_to_user": 0.001, "encode": 0.0005,
                      "decode": 0.0005}}
    lines = verdict(pred, "uncoded")
    assert lines[1].endswith("20% less than uncoded")
    assert saving_pct(0.012, 0.010) == pytest.approx(-20)
    assert math.isnan(saving_pct(1.0, 0.0))


def test_broadcast_wire_round_trip_with_escapes(schemes):
    """One buffer of a size every relay knows, escapes in a second one only when present."""
    code = schemes["coded"].code
    dim = 50
    packed = []
    for b in range(len(code.blocks)):
        R, u = coding.downlink_shape(code, b, dim)
        symbols = np.random.default_rng(b).integers(0, 65536, size=(R, u))
        if b == 1:
            symbols[0, 3] = 65536                        # an escaped symbol in block 1
        packed.append(coding.pack(symbols))
    first, escapes = coding.downlink_wire(code, packed, dim)
    assert first.nbytes == coding.downlink_size(code, dim)
    assert escapes.nbytes == coding.downlink_escape_bytes(code, first) == 4
    back = coding.downlink_unwire(code, first, escapes, dim)
    assert all(np.array_equal(a, b) for a, b in zip(back, packed))
    clean = [p[: math.prod(coding.downlink_shape(code, b, dim))] for b, p in enumerate(packed)]
    first, escapes = coding.downlink_wire(code, clean, dim)
    assert escapes.size == 0 and coding.downlink_escape_bytes(code, first) == 0
