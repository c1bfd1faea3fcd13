"""hmtl_mpi.bench paper: every figure into one folder; and the network.py helpers its
time figures use (placements, aggregation, load polling, the job's data options).

The --quick run of the time figures needs root and network namespaces (marker
``netns``); the loads part and the helpers run anywhere."""

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

from hmtl_mpi.bench import loads as bl
from hmtl_mpi.bench import network as bn
from hmtl_mpi.bench import paper as bp


def _netns_unavailable():
    if os.geteuid() != 0:
        return "needs root (netns-run creates network namespaces)"
    for tool in ("ip", "tc", "mpiexec"):
        if shutil.which(tool) is None:
            return f"needs '{tool}' on PATH"
    probe = f"hmtl-probe-paper-{os.getpid()}"
    try:
        res = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True,
                             timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"'ip netns add' failed: {exc}"
    if res.returncode != 0:
        return f"'ip netns add' failed: {res.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True, timeout=30, check=False)
    return None


_REASON = _netns_unavailable()
needs_netns = pytest.mark.skipif(_REASON is not None, reason=str(_REASON))


def _paper(*args, timeout):
    return subprocess.run([sys.executable, "-m", "hmtl_mpi.bench", "paper", *args],
                          capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, check=False)


def _read(path):
    with open(path, newline="") as fh:
        rd = csv.DictReader(fh)
        return rd.fieldnames, list(rd)


def _check_loads_csv(path, n_rows):
    cols, rows = _read(path)
    assert cols[:len(bl.COLUMNS)] == list(bl.COLUMNS)
    assert len(rows) == n_rows
    for r in rows:
        v = {k: float(x) for k, x in r.items() if x != ""}
        assert v["placements"] == 3
        for link in ("uplink", "downlink"):
            assert v[f"{link}_coded"] <= v[f"{link}_uncoded"]
            assert v[f"{link}_coded"] >= v[f"{link}_bound"] - 1e-4
            assert v[f"{link}_coded_min"] <= v[f"{link}_coded"] <= v[f"{link}_coded_max"]


def test_quick_loads_figures(tmp_path):
    res = _paper("--quick", "--figs", "fig3,fig4", "--out", str(tmp_path), timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    _check_loads_csv(tmp_path / "fig3.csv", 4)          # K in {10, 20} x H in {5, 10}
    _check_loads_csv(tmp_path / "fig4.csv", 2)          # d in {0, 0.4}
    if bl.have_matplotlib():
        assert (tmp_path / "fig3.png").stat().st_size > 0
        assert (tmp_path / "fig4.png").stat().st_size > 0
    summary = json.loads((tmp_path / "paper_run.json").read_text())
    assert [f["figure"] for f in summary["figures"]] == ["fig3", "fig4"] and summary["quick"]


@pytest.mark.netns
@needs_netns
def test_quick_everything(tmp_path):
    """The whole --quick run: Fig. 3/4 and one time point on the emulated network."""
    t0 = time.monotonic()
    res = _paper("--quick", "--out", str(tmp_path), timeout=400)
    took = time.monotonic() - t0
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    _check_loads_csv(tmp_path / "fig3.csv", 4)
    _check_loads_csv(tmp_path / "fig4.csv", 2)
    cols, rows = _read(tmp_path / "fig6.csv")
    for c in ("coded_total_s", "uncoded_total_s", "coded_relay_server_s", "uncoded_relay_server_s",
              "coded_compute_s", "coded_model_total_s", "coded_paper_model_total_s",
              "uncoded_paper_model_total_s", "coded_foreign_load", "coded_loadavg",
              "coded_loaded", "placements", "digests_equal"):
        assert c in cols, c
    (row,) = rows
    assert row["coded_status"] == row["uncoded_status"] == "ok"
    assert row["digests_equal"] == "True" and row["coded_bit_exact"] == "True"
    v = {k: float(x) for k, x in row.items() if x not in ("", "True", "False")
         and k.endswith(("_s", "_up", "_down", "_load", "placements"))}
    assert v["placements"] == 1
    assert v["coded_planned_up"] <= v["uncoded_planned_up"] == 10
    assert v["coded_planned_down"] <= v["uncoded_planned_down"] == 10
    assert abs(v["coded_measured_up"] - v["coded_planned_up"]) < 0.05
    for s in ("coded", "uncoded"):
        assert 0 < v[f"{s}_total_s"] < 60 and v[f"{s}_compute_s"] <= v[f"{s}_total_s"]
        assert v[f"{s}_paper_model_total_s"] > 0
    report = json.loads(next((tmp_path / "reports").glob("fig6_*_both.json")).read_text())
    assert report["model_digests_equal"] is True
    assert report["runs"]["coded"]["dataset"] == "mnist"
    print(f"--quick took {took:.0f} s, load average {os.getloadavg()}")


def test_bad_arguments_exit_2_with_one_line():
    for args, option in ((["--figs", "fig9"], "--figs"), (["--placements", "0"], "--placements"),
                         (["--rates", "100mbit"], "--rates"), (["--seed", "x"], "--seed")):
        res = _paper(*args, timeout=120)
        assert res.returncode == 2, (args, res.stderr)
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 2 and lines[0].startswith("usage:") and option in lines[1], lines


def test_list_counts_the_jobs():
    res = _paper("--list", timeout=120)
    assert res.returncode == 0, res.stderr
    # fig5 10 points, fig6 14, fig7 10; 2 rate pairs; 3 placements each
    assert res.stdout.strip().splitlines()[-1].startswith("204 jobs")
    res = _paper("--quick", "--list", timeout=120)
    assert res.stdout.strip().splitlines()[-1].startswith("1 jobs")


# --- network.py helpers for the time figures ------------------------------------------------

def _ns(**kw):
    base = dict(rates="100mbit:100mbit", iterations=2, seed=3, dim=0, dataset="mnist",
                job_args=["--lam", "1e-4"], **bp.FULL)
    base.update(kw)
    return argparse.Namespace(**base)


def test_settings_placements_and_tags():
    s7 = bn.settings_for("fig7", _ns())
    assert {s["K"] for s in s7} == {20, 30} and {s["topology"] for s in s7} == {
        "heterogeneous-random"}
    assert sorted({s["d"] for s in s7}) == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4])
    s = s7[0]
    assert s["dataset"] == "mnist" and s["dim"] == "" and s["job_args"] == ["--lam", "1e-4"]
    ps = bn.placements_of(s, 3)
    assert [p["topology_seed"] for p in ps] == [3, 4, 5]
    tags = [bn.setting_tag(p) for p in ps]
    assert len(set(tags)) == 3 and "mnist" in tags[0] and tags[1].endswith("_p1")
    assert bn.job_data_args(s) == ["--dataset", "mnist", "--lam", "1e-4"]
    assert bn.job_data_args({"dim": 50}) == ["--dataset", "synthetic", "--dim", "50"]
    fixed = dict(s, topology="symmetric")
    assert len(bn.placements_of(fixed, 3)) == 1
    with pytest.raises(SystemExit, match="--ds"):
        bn.settings_for("fig7", _ns(ds=(0.05,)))     # 16.5 users for K = 30
    assert len(bn.settings_for("fig6", _ns())) == 14 and len(bn.settings_for("fig5", _ns())) == 10


def test_heterogeneous_random_topology(tmp_path):
    s = dict(bn.settings_for("fig7", _ns())[-1], topology_seed=9)      # K = 30, d = 0.4
    G, kind = bn.make_topology(s, str(tmp_path / "g.npy"))
    G = np.array(G)
    assert kind == "heterogeneous-random" and G.shape == (4, 30)
    assert G.sum(axis=1).tolist() == [27, 27, 3, 3] and (G.sum(axis=0) == 2).all()
    G2, _ = bn.make_topology(s, str(tmp_path / "g2.npy"))
    assert G2 == G.tolist()                                          # seeded


def _row(p, coded, uncoded, loaded=False, digest=True):
    row = {"experiment": "fig6", "sweep": "K", "x": 10, "series": "r=3", "K": 10, "H": 5,
           "r": 3, "d": "", "w1": "100mbit", "w2": "100mbit", "placement": p,
           "topology_seed": p, "digests_equal": digest}
    for s, t in (("coded", coded), ("uncoded", uncoded)):
        row.update({f"{s}_status": "ok", f"{s}_total_s": t, f"{s}_relay_server_s": t / 2,
                    f"{s}_model_total_s": t, f"{s}_model13_total_s": t,
                    f"{s}_model_relay_server_s": t / 2, f"{s}_paper_model_total_s": t,
                    f"{s}_loaded": loaded, f"{s}_bit_exact": True})
    bn.add_reductions(row)
    return row


def test_aggregate_means_over_placements():
    rows = [_row(0, 1.0, 2.0), _row(1, 3.0, 2.0, loaded=True)]
    failed = _row(2, 9.0, 9.0)
    failed["coded_status"] = "failed (exit 4)"
    (agg,) = bn.aggregate(rows + [failed])
    assert agg["coded_total_s"] == 2.0 and agg["uncoded_total_s"] == 2.0
    assert agg["coded_total_s_std"] == 1.0 and agg["placements"] == 2
    assert agg["placements_run"] == 3 and agg["coded_loaded_runs"] == 1
    assert agg["reduction_total_pct"] == 0.0          # recomputed from the means
    assert agg["digests_equal"] is True and agg["coded_bit_exact"] is True
    assert "placement" not in agg and agg["x"] == 10
    other = dict(_row(0, 1.0, 2.0), x=20)
    assert len(bn.aggregate(rows + [other])) == 2


def test_foreign_runnable_leaves_out_our_process_tree():
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        for _ in range(100):                         # until it runs its loop
            time.sleep(0.05)
            table = bn._process_table()
            if table[busy.pid][0] == "R":
                break
        assert table[busy.pid][0] == "R"             # a busy loop is always runnable
        # the busy child counts as foreign unless our tree is left out
        assert bn.foreign_runnable([], table) >= bn.foreign_runnable([os.getpid()], table) + 1
        with bn.LoadPoller([os.getpid()], period=0.05) as poller:
            time.sleep(0.3)
        summary = poller.summary()
        assert summary["load_samples"] >= 2 and summary["foreign_load"] >= 0
    finally:
        busy.kill()
        busy.wait()
