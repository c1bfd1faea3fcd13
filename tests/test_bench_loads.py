"""hmtl_mpi.bench.loads: the paper's Fig. 3 / Fig. 4 load sweeps (planner only, no MPI)."""

import csv
import subprocess
import sys
from collections import Counter
from fractions import Fraction

import numpy as np
import pytest

from hmtl_mpi.bench import loads as bl
from hmtl_mpi.planning.topology import random_with_degrees
from hmtl_mpi.planning.topology import TopologyError


def _check_order(d: dict) -> None:
    """coded <= uncoded and coded >= Theorem 2's bound, exactly (Fractions)."""
    for link in ("uplink", "downlink"):
        assert d[f"{link}_bound"] <= d[f"{link}_coded"] <= d[f"{link}_uncoded"], (link, d)
        assert d[f"{link}_bound"] <= d[f"{link}_joint"] <= d[f"{link}_uncoded"], (link, d)
    assert d["uplink_cut_bound"] >= d["uplink_bound"]
    assert d["uplink_joint"] >= d["uplink_cut_bound"]


@pytest.mark.parametrize("K,H", [(10, 5), (30, 5), (10, 10), (40, 10)])
def test_fig3_placements_coded_between_bound_and_uncoded(K, H):
    for p in range(3):
        G = bl.fig3_placement(K, H, p, seed=0)
        assert (G.sum(axis=0) == 3).all() and G.shape == (H, K)
        d = bl.placement_loads(G)
        assert all(isinstance(v, Fraction) for v in d.values())
        assert d["uplink_uncoded"] == d["downlink_uncoded"] == K
        _check_order(d)


@pytest.mark.parametrize("d", [0.0, 0.2, 0.4])
def test_fig4_placements_coded_between_bound_and_uncoded(d):
    for users in bl.FIG4_USERS:
        for p in range(3):
            G = bl.fig4_placement(50, d, p, seed=1, users=users)
            assert G.sum(axis=1).tolist() == bl.fig4_degrees(50, d)
            assert G.sum() == 100 and G.sum(axis=0).min() >= 1     # 2K links, nobody alone
            if users == "exact":
                assert (G.sum(axis=0) == 2).all()
            _check_order(bl.placement_loads(G))


def test_random_with_degrees_gives_the_degrees():
    rng = np.random.default_rng(0)
    for degrees, r in [((30, 30, 20, 20), 2), ((45, 45, 5, 5), 2), ((3, 3, 3, 3, 3), 3),
                       ((4, 2, 2), 1)]:
        K = sum(degrees) // r
        for _ in range(5):
            G = random_with_degrees(K, degrees, r, rng)
            assert G.sum(axis=1).tolist() == list(degrees)
            assert (G.sum(axis=0) == r).all()
    with pytest.raises(TopologyError, match="add up"):
        random_with_degrees(10, (5, 5, 5, 4), 2, rng)
    with pytest.raises(TopologyError, match="must lie"):
        random_with_degrees(3, (4, 1, 1), 2, rng)    # a relay with more users than K
    with pytest.raises(TopologyError, match="whole numbers"):
        bl.fig4_degrees(50, 0.05)


def test_random_with_degrees_is_uniform():
    """K = 4 users on 2 of H = 4 relays, every relay degree 2: the 90 such graphs
    (4 x 4 0/1 matrices with all line sums 2) come out equally often."""
    rng = np.random.default_rng(7)
    n = 9000
    seen = Counter(random_with_degrees(4, (2, 2, 2, 2), 2, rng).tobytes() for _ in range(n))
    assert len(seen) == 90
    counts = np.array(list(seen.values()))
    chi2 = ((counts - n / 90) ** 2 / (n / 90)).sum()
    assert chi2 < 150          # 89 degrees of freedom: p ~ 1e-4 at 150


def test_rows_columns_spread_and_determinism():
    rows = bl.fig3_rows(Ks=(10, 20), Hs=(5,), placements=3, seed=4)
    assert list(rows[0])[:len(bl.COLUMNS)] == list(bl.COLUMNS)
    again = bl.fig3_rows(Ks=(20,), Hs=(5,), placements=3, seed=4)
    assert again[0] == rows[1]                        # a point does not depend on the sweep
    other = bl.fig3_rows(Ks=(20,), Hs=(5,), placements=3, seed=5)
    assert other[0] != rows[1]
    for r in rows:
        assert r["x"] == r["K"] and r["d"] == "" and r["placements"] == 3
        for link in ("uplink", "downlink"):
            assert r[f"{link}_coded_min"] <= r[f"{link}_coded"] <= r[f"{link}_coded_max"]
            assert r[f"{link}_bound"] <= r[f"{link}_coded"] + 1e-12
            assert r[f"{link}_coded"] <= r[f"{link}_uncoded"]
    f4 = bl.fig4_rows(ds=(0.0, 0.3), placements=2, seed=0)
    assert [r["x"] for r in f4] == [0.0, 0.3] and all(r["H"] == 4 and r["K"] == 50 for r in f4)
    assert bl.default_ds(50) == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4])


def _run(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "hmtl_mpi.bench", "loads", *args],
                          capture_output=True, text=True, timeout=timeout, check=False)


def _read(path):
    with open(path, newline="") as fh:
        rd = csv.DictReader(fh)
        return rd.fieldnames, list(rd)


def test_cli_csv_columns_and_values(tmp_path):
    out = tmp_path / "fig4.csv"
    res = _run("fig4", "--placements", "2", "--ds", "0,0.4", "--csv", str(out), "--quiet")
    assert res.returncode == 0, res.stderr
    cols, rows = _read(out)
    assert cols[:len(bl.COLUMNS)] == list(bl.COLUMNS)
    assert {"uplink_joint", "downlink_joint", "uplink_coded_min", "uplink_coded_max"} <= set(cols)
    assert [float(r["x"]) for r in rows] == [0.0, 0.4]
    for r in rows:
        v = {k: float(x) for k, x in r.items()}
        assert v["d"] == v["x"] and v["H"] == 4 and v["K"] == 50 and v["placements"] == 2
        for link in ("uplink", "downlink"):
            assert v[f"{link}_bound"] - 1e-4 <= v[f"{link}_coded"] <= v[f"{link}_uncoded"]
    # the same seed gives the same file
    out2 = tmp_path / "again.csv"
    assert _run("fig4", "--placements", "2", "--ds", "0,0.4", "--csv", str(out2),
                "--quiet").returncode == 0
    assert out.read_text() == out2.read_text()


@pytest.mark.parametrize("args,option", [
    (["fig3", "--placements", "0"], "--placements"),
    (["fig3", "--Hs", "3"], "--Hs"),
    (["fig3", "--Ks", "1"], "--Ks"),
    (["fig3", "--Ks", "ten"], "--Ks"),
    (["fig4", "--ds", "0.05"], "--ds"),
    (["fig4", "--ds", "0.5"], "--ds"),
    (["fig4", "--seed", "-1"], "--seed"),
    (["fig5"], "figure"),
])
def test_cli_bad_arguments_exit_2_with_one_line(args, option):
    res = _run(*args, timeout=120)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("usage:"), res.stderr
    assert "error:" in lines[1] and option in lines[1], lines[1]
    assert "Traceback" not in res.stderr
