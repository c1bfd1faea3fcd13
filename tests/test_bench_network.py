"""Pure helpers of hmtl_mpi.bench.network: rates, the eq. (13)/(15) time model,
report summaries and the Fig. 7 d grid. No MPI, no namespaces."""

import math

import numpy as np
import pytest

from hmtl_mpi.bench import network as bn


def test_rate_bps_tc_units():
    assert bn.rate_bps("100mbit") == 100e6
    assert bn.rate_bps("1gbit") == 1e9
    assert bn.rate_bps("500kbit") == 500e3
    assert bn.rate_bps("12.5mbps") == 100e6      # tc: bps = bytes per second
    assert bn.rate_bps("2mibit") == 2 * 1024 ** 2
    assert bn.rate_bps("8000") == 8000           # bare number: bit/s
    with pytest.raises(ValueError):
        bn.rate_bps("fast")


def test_uncoded_model_is_eq15():
    # K = 10, V = 3.2 Mbit, W1 = W2 = 100 Mbit/s: 2KV/W1 + 2KV/W2 = 0.64 + 0.64
    V = 400_000 * 8
    assert bn.uncoded_model(10, V, 100e6, 100e6, compute_s=0.1) == pytest.approx(1.38)
    loads = dict(user_to_relay=10, relay_to_server=10, server_to_relay=10, relay_to_user=10)
    m = bn.time_model(loads, V, 100e6, 100e6, compute_s=0.1)
    assert m["total_s"] == pytest.approx(bn.uncoded_model(10, V, 100e6, 100e6, 0.1))


def test_time_model_paper_fig2_coded():
    # paper-fig2 coded: (L_up, L_down) = (8.5, 7); W2 = 20 Mbit/s, V = 3.2 Mbit
    V = 400_000 * 8
    loads = dict(user_to_relay=24, relay_to_server=8.5, server_to_relay=7, relay_to_user=10)
    m = bn.time_model(loads, V, 100e6, 20e6, compute_s=0.0, user_up_max=3, user_down_max=1)
    assert m["relay_to_server_s"] == pytest.approx(8.5 * 3.2 / 20)
    assert m["server_to_relay_s"] == pytest.approx(7 * 3.2 / 20)
    assert m["relay_server_s"] == pytest.approx(15.5 * 3.2 / 20)
    assert m["w1_s"] == pytest.approx(34 * 3.2 / 100)          # eq. (13): one W1 pipe
    assert m["net_w1_s"] == pytest.approx(4 * 3.2 / 100)       # busiest user's own link
    assert m["total_s"] == pytest.approx(m["w1_s"] + m["w2_s"])
    assert m["net_total_s"] == pytest.approx(m["net_w1_s"] + m["w2_s"])


def test_reduction_pct():
    assert bn.reduction_pct(74, 100) == pytest.approx(26)
    assert math.isnan(bn.reduction_pct(1.0, 0.0))
    assert math.isnan(bn.reduction_pct(float("nan"), 1.0))


def test_heterogeneous_ds_integer_degrees():
    assert bn.heterogeneous_ds(20) == pytest.approx([0.05 * i for i in range(10)])
    assert bn.heterogeneous_ds(30) == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4])
    for K in (20, 30):
        for d in bn.heterogeneous_ds(K):
            hi, lo = (0.5 + d) * K, (0.5 - d) * K
            assert abs(hi - round(hi)) < 1e-9 and 1 <= round(lo) and round(hi) <= K - 1


def _report(scheme, K, iv, per_it_bytes, med):
    return {"scheme": scheme, "K": K, "H": 2, "iv_bytes": iv,
            "iterations": [{"bytes": b} for b in per_it_bytes],
            "median_seconds": med, "measured_loads": {"uplink": 1.5, "downlink": 1.0},
            "planned_loads": {"uplink": 1.5, "downlink": 1.0},
            "ivs_bit_exact": True, "models_delivered_intact": True}


def test_summarize_report_loads_and_busiest_user():
    G = np.array([[1, 1, 0], [0, 1, 1]])  # user 2 has r = 2
    iv = 100
    b = {"user_to_relay": 400, "relay_to_server": 150, "server_to_relay": 100,
         "relay_to_user": 300, "relay_to_relay": 100}
    med = {p: 0.1 for p in bn.PHASES if p != "exchange"}    # the unsegmented exchange's
    sm = bn.summarize_report(_report("coded", 3, iv, [b, b, b], med), G)
    assert sm["loads"]["user_to_relay"] == 4
    assert sm["loads"]["relay_to_server"] == 1.5
    assert sm["user_up_max"] == 2      # 4 IVs over copies (1, 2, 1): the busiest sends 2
    assert sm["user_down_max"] == 1
    assert sm["compute_s"] == pytest.approx(0.4)
    assert sm["relay_server_s"] == pytest.approx(0.2)
    sm_u = bn.summarize_report(_report("uncoded", 3, iv, [dict(b, user_to_relay=300)] * 3, med), G)
    assert sm_u["user_up_max"] == 1
    piped = dict(med, encode=0.0, relay_to_server=0.0, server_to_relay=0.0, decode=0.0,
                 exchange=0.5)                              # --segments: one phase, coding in it
    assert bn.summarize_report(_report("coded", 3, iv, [b] * 3, piped), G)["relay_server_s"] == 0.5


def test_balanced_random_valid_for_r1_K_equals_H():
    G = bn.balanced_random(20, 20, 1, seed=0)
    assert G.shape == (20, 20)
    assert (G.sum(axis=0) == 1).all() and (G.sum(axis=1) == 1).all()
    G = bn.balanced_random(20, 10, 3, seed=1)
    assert (G.sum(axis=0) == 3).all() and G.sum(axis=1).max() - G.sum(axis=1).min() <= 1


def test_schemes_rows_from_a_kept_report():
    """bench schemes: one row per scheme, ratios to the first, from a kept netns report."""
    import json
    from pathlib import Path

    from hmtl_mpi.bench import schemes as bs

    path = Path(__file__).resolve().parent.parent / "benchmarks" / "schemes" / "reports" / \
        "paper-fig2_100mbit_20mbit_seed1.json"
    report = json.loads(path.read_text())
    rows = bs.rows_of(report, {"topology": "paper-fig2", "w1": "100mbit", "w2": "20mbit",
                               "loadavg": 1.0})
    assert [r["scheme"] for r in rows] == ["uncoded", "coded", "joint"]
    assert rows[0]["up_time_ratio"] == rows[0]["up_load_ratio"] == 1.0
    assert (rows[1]["planned_up"], rows[1]["planned_down"]) == (8.5, 7.0)
    assert (rows[2]["planned_up"], rows[2]["planned_down"]) == (7.0, 7.0)
    assert abs(rows[2]["up_load_ratio"] - 0.7) < 0.01 and all(r["identical_models"] for r in rows)
    run = report["runs"]["joint"]
    assert rows[2]["relay_to_server_s"] == round(run["median_seconds"]["relay_to_server"], 4)
    table = bs.markdown(rows)
    assert table.count("\n") == len(rows) + 1 and "| joint |" in table


def test_hgc_rows_from_a_kept_report():
    """bench hgc: speed-ups and time to target from a kept report of real runs."""
    import json
    from pathlib import Path

    from hmtl_mpi.bench import hgc as bh

    path = Path(__file__).resolve().parent.parent / "benchmarks" / "hgc" / "reports" / \
        "fixed_5-0.3.json"
    report = json.loads(path.read_text())
    rows = bh.rows_of(report, "fixed:5=0.3", 0.9)
    assert [r["scheme"] for r in rows] == ["uncoded", "gc", "hgc", "hgc-jncss"]
    assert rows[0]["speedup_mean"] == 1.0 and all(r["identical_models"] for r in rows)
    unc = report["runs"]["uncoded"]
    seconds = [it["seconds"]["total"] for it in unc["iterations"]]
    assert rows[0]["mean_s"] == sum(seconds) / len(seconds)
    first = next(i for i, a in enumerate(unc["test_accuracy"]) if a >= 0.9)
    assert abs(rows[0]["time_to_target_s"] - sum(seconds[: first + 1])) < 1e-12
    assert bh.time_to([0.1, 0.5], [1.0, 2.0], 0.9) is None
    assert rows[2]["speedup_mean"] > 10          # hgc skips the slow worker
    assert "| `fixed:5=0.3` | hgc |" in bh.markdown(rows)
