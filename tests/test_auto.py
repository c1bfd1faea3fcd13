"""``--scheme auto``: the choice from predicted times, the prediction's parts, the report's
``auto`` field in-process and under mpiexec, and the options it refuses."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hmtl_mpi.bench.auto import medians_of, right
from hmtl_mpi.cli import parse_job_args
from hmtl_mpi.job.auto import choose, concurrent, predict
from hmtl_mpi.job.config import JobConfig
from hmtl_mpi.job.runtime import run_inprocess
from hmtl_mpi.planning.topology import cyclic, load_topology
from hmtl_mpi.schemes import get
from hmtl_mpi.vocabulary import EXIT_BAD_INPUT
from mpi_util import run_job

REPO = Path(__file__).resolve().parent.parent


# --- the choice (pure) ------------------------------------------------------------------------

def test_the_smallest_predicted_time_is_chosen_and_the_reason_names_every_scheme():
    chosen, reason = choose({"uncoded": 0.020, "coded": 0.027, "joint": 0.0216})
    assert chosen == "uncoded"
    assert reason.startswith("uncoded is predicted fastest: 20 ms per iteration")
    assert "joint 21.6 ms (+8%)" in reason and "coded 27 ms (+35%)" in reason
    assert reason.index("joint") < reason.index(" coded ")        # next best first
    chosen, reason = choose({"uncoded": 3.43, "coded": 2.86, "joint": 2.60})
    assert chosen == "joint" and "2.60 s per iteration" in reason


def test_a_tie_goes_to_the_scheme_listed_first_and_skipped_schemes_are_named():
    assert choose({"coded": 0.5, "joint": 0.5})[0] == "coded"
    assert choose({"joint": 0.5, "coded": 0.5})[0] == "joint"
    chosen, reason = choose({"uncoded": 1.0}, {"joint": "H = 1: the LP needs 2 relays"})
    assert chosen == "uncoded"
    assert reason.endswith("not applicable: joint (H = 1: the LP needs 2 relays)")
    with pytest.raises(ValueError, match="no scheme"):
        choose({})


def test_work_run_at_once_is_shared_over_the_cores_of_its_host():
    assert concurrent([1.0, 1.0, 1.0, 1.0], ["a"] * 4, 2) == 2.0
    assert concurrent([3.0, 0.1, 0.1], ["a"] * 3, 2) == 3.0        # the longest item
    assert concurrent([1.0, 1.0, 1.0, 1.0], ["a", "a", "b", "b"], 2) == 1.0
    assert concurrent([], [], 2) == 0.0


def test_the_prediction_adds_fixed_cost_bytes_coding_and_learning():
    G = load_topology("paper-fig2")
    uncoded, coded = get("uncoded").plan(G), get("coded").plan(G)
    V, dim = 8000, 1000
    links = {"w1": (1e-3, 1e6), "w2": (5e-3, 1e5)}       # latencies: in the fixed cost
    learning = {"local": 0.01, "global": 0.002}

    def parallel(n):
        return math.ceil(min(n, 5) / 2) if n > 1 else 1
    u = predict(uncoded, 0.004, V, dim, links, 1e8, learning, parallel)
    # uncoded: one IV up per user over W1, 10 up and 10 down over W2, one model down
    assert u["transfer"] == pytest.approx(V / 1e6 + 10 * V / 1e5 + 10 * V / 1e5 + V / 1e6)
    assert u["coding"] == 0 and u["learning"] == pytest.approx(0.012)
    assert u["total"] == pytest.approx(0.004 + u["transfer"] + 0.012)
    c = predict(coded, 0.009, V, dim, links, 1e8, learning, parallel)
    work = coded.coding_work(dim)
    assert c["coding"] == pytest.approx(3 * (work["encode"] + work["combine"] + work["decode"])
                                        / 1e8)
    assert c["learning"] == pytest.approx(0.01 + 3 * 0.002)      # 5 relays on 2 cores
    copies = int(G.sum(axis=0).max())                              # the busiest user's IVs up
    up = copies * V / 1e6 + 8.5 * V / 1e5 + 7 * V / 1e5 + V / 1e6
    assert c["transfer"] == pytest.approx(up)
    assert c["total"] == pytest.approx(
        0.009 + c["transfer"] + c["coding"] + c["learning"])


# --- the command line -------------------------------------------------------------------------

@pytest.mark.parametrize("args, words", [
    (["--scheme", "auto", "--workload", "gd"], "multi-task schemes"),
    (["--scheme", "auto", "--checkpoint", "ck"], "cannot be checkpointed or resumed"),
    (["--scheme", "auto", "--resume", "ck"], "cannot be checkpointed or resumed"),
    (["--scheme", "auto", "--relay-stragglers", "1"], "makes coded and joint barrier-free"),
])
def test_auto_refuses_what_it_cannot_do(args, words, capsys):
    config, code = parse_job_args(args, 0, 16)
    assert config is None and code == EXIT_BAD_INPUT
    assert words in capsys.readouterr().err


def test_auto_is_every_multi_task_scheme_until_the_setup_chooses():
    config, _ = parse_job_args(["--scheme", "auto"], 0, 16)
    assert config.auto and config.scheme_arg == "auto"
    assert config.schemes == ("uncoded", "coded", "joint")
    assert not parse_job_args(["--scheme", "uncoded,coded"], 0, 16)[0].auto


# --- whole jobs -------------------------------------------------------------------------------

def check_auto(rep: dict, candidates: set) -> None:
    auto = rep["auto"]
    assert set(auto["predicted_seconds"]) == candidates
    assert auto["chosen"] == rep["scheme"] == min(auto["predicted_seconds"],
                                                  key=auto["predicted_seconds"].get)
    assert all(v > 0 for v in auto["predicted_seconds"].values())
    assert auto["reason"].startswith(f"{auto['chosen']} is predicted fastest")
    for name, parts in auto["predicted_parts"].items():
        assert parts["fixed"] > 0 and parts["learning"] > 0
        assert parts["total"] == pytest.approx(auto["predicted_seconds"][name])
    assert rep["ivs_bit_exact"] is True and rep["models_delivered_intact"] is True


@pytest.mark.parametrize("more", [[], ["--users-per-rank", "5"]])
def test_inprocess_auto_runs_one_scheme_with_the_models_of_that_scheme_alone(tmp_path, more):
    path = tmp_path / "auto.json"
    config, _ = parse_job_args(["--transport", "inprocess", "--scheme", "auto", "--iterations",
                                "3", "--quiet", "--report", str(path), *more], -1, None)
    assert run_inprocess(config) == 0
    rep = json.loads(path.read_text())
    check_auto(rep, {"uncoded", "coded", "joint"})
    assert "runs" not in rep and len(rep["iterations"]) == 3
    # the trials and the timed warm-up leave the run's learning untouched
    alone = tmp_path / "alone.json"
    config, _ = parse_job_args(["--transport", "inprocess", "--scheme", rep["scheme"],
                                "--iterations", "3", "--quiet", "--report", str(alone), *more],
                               -1, None)
    assert run_inprocess(config) == 0
    assert json.loads(alone.read_text())["model_digest"] == rep["model_digest"]


def test_inprocess_auto_leaves_out_a_scheme_that_does_not_plan(tmp_path):
    np.save(tmp_path / "g.npy", cyclic(17, 1))     # 17 relays: the joint LP takes 16 at most
    path = tmp_path / "auto.json"
    config = JobConfig(topology=str(tmp_path / "g.npy"), dataset="synthetic", dim=50,
                       iterations=2, quiet=True, report=str(path),
                       schemes=("uncoded", "coded", "joint"), scheme_arg="auto")
    assert run_inprocess(config) == 0
    rep = json.loads(path.read_text())
    check_auto(rep, {"uncoded", "coded"})
    assert "not applicable: joint (H = 17 relays is more than" in rep["auto"]["reason"]


def test_inprocess_auto_in_the_flat_layout(tmp_path):
    path = tmp_path / "auto.json"
    config, _ = parse_job_args(["--transport", "inprocess", "--layout", "flat", "--topology",
                                "example-a", "--scheme", "auto", "--iterations", "2", "--quiet",
                                "--report", str(path)], -1, None)
    assert run_inprocess(config) == 0
    rep = json.loads(path.read_text())
    check_auto(rep, {"uncoded", "coded", "joint"})
    assert rep["layout"] == "flat" and rep["ranks"] == 4


@pytest.mark.mpi
def test_mpirun_auto_reports_its_choice_and_why(tmp_path):
    report = tmp_path / "r.json"
    proc, _ = run_job(16, "--scheme", "auto", "--iterations", "3", "--quiet", "--report",
                      str(report), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rep = json.loads(report.read_text())
    check_auto(rep, {"uncoded", "coded", "joint"})
    assert f"--scheme auto chose {rep['scheme']}: " in proc.stdout
    measured = rep["auto"]["measured"]
    assert measured["w2_bytes_per_s"] > 0 and measured["coding_bytes_per_s"] > 0
    assert len(measured["local_update_s"]) == 10 and measured["cores"] == os.cpu_count()
    assert rep["predicted_seconds"]["total"] > 0            # the link prediction, as before


def test_the_sweep_counts_a_choice_right_within_the_tolerance():
    measured = {"uncoded": 0.0901, "coded": 0.0879, "joint": 0.0784}
    assert right("joint", measured, 0.05)
    assert not right("uncoded", measured, 0.05)             # 14.9% slower
    assert right("coded", measured, 0.13) and not right("coded", measured, 0.12)
    report = {"scheme": "uncoded,joint", "runs": {
        "uncoded": {"median_seconds": {"total": 2.0}}, "joint": {"median_seconds": {"total": 1.5}}}}
    assert medians_of(report) == {"uncoded": 2.0, "joint": 1.5}
    assert medians_of({"scheme": "joint", "median_seconds": {"total": 1.5}}) == {"joint": 1.5}
