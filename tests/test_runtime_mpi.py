"""Real mpiexec jobs: measured loads equal planned ones, lossless, fail fast, never hang."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hmtl_mpi.planning.hierarchical import make_plan
from hmtl_mpi.planning.topology import load_topology, random_regular, symmetric
from mpi_util import run_job

pytestmark = pytest.mark.mpi


def assert_lossless_and_planned(report, G, tolerance=0.01):
    plan = make_plan(G)
    runs = report["runs"]
    coded, uncoded = runs["coded"], runs["uncoded"]
    assert report["model_digests_equal"] is True
    assert coded["model_digest"] == uncoded["model_digest"]
    for run in (coded, uncoded):
        assert run["ivs_bit_exact"] is True
        assert run["models_delivered_intact"] is True
        assert len(run["model_digest"]) == 64
        for it in run["iterations"]:
            assert set(it["seconds"]) >= {"local_update", "user_to_relay", "encode",
                                          "relay_to_server", "server_to_relay", "decode",
                                          "global_update", "relay_to_user", "total"}
            assert it["seconds"]["total"] > 0
    K = G.shape[1]
    assert coded["planned_loads"] == {"uplink": float(plan.uplink_load),
                                      "downlink": float(plan.downlink_load)}
    up, down = coded["measured_loads"]["uplink"], coded["measured_loads"]["downlink"]
    assert float(plan.uplink_load) <= up <= float(plan.uplink_load) * (1 + tolerance)
    assert float(plan.downlink_load) <= down <= float(plan.downlink_load) * (1 + tolerance)
    assert uncoded["measured_loads"] == {"uplink": K, "downlink": K}
    # bytes per link class, counted at the senders, per iteration
    iv = coded["iv_bytes"]
    for it in uncoded["iterations"]:
        assert it["bytes"]["user_to_relay"] == K * iv
        assert it["bytes"]["relay_to_user"] == K * iv
    r = G.sum(axis=0)
    for it in coded["iterations"]:
        assert it["bytes"]["user_to_relay"] == int(r.sum()) * iv   # every user to each relay
        assert it["bytes"]["relay_to_user"] == K * iv              # one model per user


def test_paper_example_both_schemes(tmp_path):
    report_path = tmp_path / "r.json"
    proc, _ = run_job(16, "--topology", "paper-fig2", "--dataset", "synthetic", "--dim", "2000", "--iterations", "2",
                      "--report", str(report_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(report_path.read_text())
    assert report["scheme"] == "both" and report["K"] == 10 and report["H"] == 5
    assert_lossless_and_planned(report, load_topology("paper-fig2"))
    coded = report["runs"]["coded"]["measured_loads"]
    assert abs(coded["uplink"] - 8.5) / 8.5 < 0.01 and abs(coded["downlink"] - 7) / 7 < 0.01
    assert "final models bit-identical across uncoded, coded: True" in proc.stdout
    assert proc.stdout.count("iteration ") >= 4             # a progress line per iteration
    assert "HiGHS" not in proc.stdout + proc.stderr        # no solver banner anywhere
    # CPU seconds per role and step (every rank's process_time, summed at rank 0)
    for name, run in report["runs"].items():
        assert all(set(it["cpu_seconds"]) == {"server", "relay", "user"} for it in run["iterations"])
        cpu = run["median_cpu_seconds"]
        for role, phases in cpu.items():
            assert all(v >= 0 for v in phases.values()), (name, role, phases)
            assert phases["total"] >= max(v for p, v in phases.items() if p != "total")
        assert cpu["user"]["local_update"] > 0
    assert report["runs"]["coded"]["median_cpu_seconds"]["relay"]["decode"] > 0
    assert "decode" not in report["runs"]["uncoded"]["median_cpu_seconds"]["relay"]


@pytest.mark.parametrize("name,G", [
    ("symmetric-4-2", symmetric(4, 2, 1)),                   # H = 4, K = 6: 11 ranks
    ("random-3-r1-2", random_regular(8, 3, 2, seed=3)),      # H = 3, K = 8: 12 ranks
])
def test_other_topologies(tmp_path, name, G):
    path = tmp_path / f"{name}.npy"
    np.save(path, G)
    report_path = tmp_path / "r.json"
    H, K = G.shape
    proc, _ = run_job(1 + H + K, "--topology", str(path), "--dataset", "synthetic", "--dim", "1500", "--iterations", "2",
                      "--report", str(report_path), "--quiet")
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(report_path.read_text())
    assert (report["H"], report["K"]) == (H, K)
    assert_lossless_and_planned(report, G)


def test_bcast_downlink_and_single_scheme(tmp_path):
    report_path = tmp_path / "r.json"
    proc, _ = run_job(16, "--scheme", "coded", "--downlink", "bcast", "--dataset", "synthetic", "--dim", "999",
                      "--iterations", "2", "--report", str(report_path), "--quiet")
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(report_path.read_text())
    assert report["scheme"] == "coded" and report["downlink_method"] == "bcast"
    assert report["ivs_bit_exact"] is True
    assert abs(report["measured_loads"]["uplink"] - 8.5) / 8.5 < 0.01
    assert abs(report["measured_loads"]["downlink"] - 7) / 7 < 0.01
    assert len(report["iterations"]) == 2


def test_bad_topology_rejected_before_training(tmp_path):
    G = np.zeros((3, 5), dtype=np.uint8)
    G[0, :] = 1                                               # relay 1 linked to every user
    G[1, 0] = G[2, 1] = 1
    path = tmp_path / "g.npy"
    np.save(path, G)
    proc, _ = run_job(9, "--topology", str(path), timeout=120)
    assert proc.returncode == 2
    assert "relay 1 is linked to all 5 users" in proc.stderr
    assert "iteration" not in proc.stdout
    assert "Traceback" not in proc.stderr


def test_bad_flag_value_is_one_clear_error():
    proc, _ = run_job(16, "--dim", "0", timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.count("--dim: must be at least 1") == 1
    assert "Traceback" not in proc.stderr


def test_bad_poll_max_is_one_clear_error():
    proc, _ = run_job(16, "--iterations", "1", timeout=120, env={"HMTL_POLL_MAX": "2ms"})
    assert proc.returncode == 2
    assert proc.stderr.count("HMTL_POLL_MAX='2ms': must be seconds from 1e-05 to 1") == 1
    assert "Traceback" not in proc.stderr


def test_hung_user_on_the_paper_network_is_named_within_the_timeout():
    """The issue's case: 16 ranks, user rank 9 hangs in iteration 2, --timeout 5."""
    proc, seconds = run_job(16, "--dataset", "synthetic", "--iterations", "4",
                            "--inject-fault", "9:2:hang", "--quiet", "--timeout", "5", timeout=120)
    assert proc.returncode == 4
    lines = [x for x in proc.stderr.splitlines() if x.startswith("hmtl_mpi:")]
    assert lines == ["hmtl_mpi: rank 9 (user 4) stopped answering in iteration 2 of the uncoded "
                     "run, phase relay_to_server: the other ranks waited more than 5 s and it did "
                     "not answer a status request"], proc.stderr
    # start-up (16 ranks on 2 cores) + two iterations + the 5 s timeout + the 1 s status grace
    assert seconds < 25, f"{seconds:.1f} s"


def test_mocha_digits_coded_equals_uncoded(tmp_path):
    """Coding changes nothing about learning: same models bit for bit, and they learn."""
    report_path = tmp_path / "r.json"
    proc, _ = run_job(16, "--iterations", "12", "--inner", "5", "--quiet",   # digits: the default
                      "--report", str(report_path), timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(report_path.read_text())
    coded, uncoded = report["runs"]["coded"], report["runs"]["uncoded"]
    assert report["model_digests_equal"] is True
    assert coded["ivs_bit_exact"] and uncoded["ivs_bit_exact"]
    assert coded["dataset"] == "digits"
    assert coded["dim"] == 64 and coded["iv_bytes"] == 512 and coded["model_extra_bytes"] == 16
    # the model goes down as w_k (one IV) every iteration, with Sigma_kk and rho only after
    # a refresh (iterations 5 and 10 with --inner 5)
    for it in uncoded["iterations"]:
        extra = 16 * 10 if (it["iteration"] + 1) % 5 == 0 else 0
        assert it["bytes"]["server_to_relay"] == 10 * 512 + extra
        assert it["bytes"]["relay_to_user"] == 10 * 512 + extra
    for it in coded["iterations"]:
        extra = 16 * 10 if (it["iteration"] + 1) % 5 == 0 else 0
        assert it["bytes"]["relay_to_user"] == 10 * 512 + extra
    assert abs(coded["measured_loads"]["uplink"] - 8.5) / 8.5 < 0.01
    assert abs(coded["measured_loads"]["downlink"] - 7) / 7 < 0.01
    acc = coded["accuracy"]
    assert acc["mean_test_error"] == uncoded["accuracy"]["mean_test_error"]
    assert len(acc["per_task"]) == 10
    assert 0 <= acc["baseline_local_error"] <= 1 and 0 <= acc["baseline_global_error"] <= 1
    # 12 iterations of MOCHA on digits already beat chance by far
    assert acc["mean_test_error"] < 0.15
    assert "baselines: independent per-task SVMs" in proc.stdout


def test_three_schemes_move_their_planned_bytes_and_end_identical(tmp_path):
    """uncoded, coded (8.5, 7) and joint (7, 7) on the paper's network, side by side."""
    report_path = tmp_path / "r.json"
    proc, _ = run_job(16, "--scheme", "uncoded,coded,joint", "--dataset", "synthetic",
                      "--dim", "2000", "--iterations", "2", "--quiet", "--report", str(report_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(report_path.read_text())
    assert report["scheme"] == "uncoded,coded,joint" and report["model_digests_equal"] is True
    runs = report["runs"]
    assert list(runs) == ["uncoded", "coded", "joint"]
    for name, (up, down) in {"uncoded": (10, 10), "coded": (8.5, 7), "joint": (7, 7)}.items():
        run = runs[name]
        assert run["planned_loads"] == {"uplink": up, "downlink": down}
        assert up <= run["measured_loads"]["uplink"] <= up * 1.01
        assert down <= run["measured_loads"]["downlink"] <= down * 1.01
        assert run["ivs_bit_exact"] and run["models_delivered_intact"]
    assert len({r["model_digest"] for r in runs.values()}) == 1
    assert runs["joint"]["code_attempts"] >= 1 and runs["joint"]["downlink_method"] == "scatter-allgather"
    assert "joint/uncoded" in proc.stdout
    assert "final models bit-identical across uncoded, coded, joint: True" in proc.stdout


def test_flat_layout_matches_the_hierarchical_one(tmp_path):
    """Seed 001's own system: 1 + H ranks, relays compute their tasks; same models."""
    flat, hier = tmp_path / "flat.json", tmp_path / "hier.json"
    proc, _ = run_job(4, "--layout", "flat", "--topology", "example-a", "--scheme",
                      "uncoded,joint", "--iterations", "6", "--quiet", "--report", str(flat))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "1 server, 3 workers" in proc.stdout
    proc, _ = run_job(8, "--topology", "example-a", "--scheme", "uncoded,joint",
                      "--iterations", "6", "--quiet", "--report", str(hier))
    assert proc.returncode == 0, proc.stderr[-3000:]
    f, h = json.loads(flat.read_text()), json.loads(hier.read_text())
    assert f["model_digests_equal"] and h["model_digests_equal"]
    assert f["runs"]["joint"]["model_digest"] == h["runs"]["joint"]["model_digest"]
    fj = f["runs"]["joint"]
    assert fj["layout"] == "flat" and fj["planned_loads"] == {"uplink": 2, "downlink": 2}
    for it in fj["iterations"]:          # no users: nothing on the user links
        assert it["bytes"]["user_to_relay"] == 0 and it["bytes"]["relay_to_user"] == 0
        # digits: 512-byte IVs; a coded symbol of 65536 (probability 1/65537 per symbol)
        # travels as a 4-byte escape (docs/codes.md): seen in iteration 0 with seed 0
        extra = it["bytes"]["relay_to_server"] - 2 * 512
        assert 0 <= extra <= 16 and extra % 4 == 0, it["bytes"]
    # uncoded in the flat layout broadcasts the K models: K IVs, Sigma/rho after a refresh
    fu = f["runs"]["uncoded"]
    assert fu["downlink_method"] == "scatter-allgather"
    assert all(it["bytes"]["server_to_relay"] in (4 * 512, 4 * 528) for it in fu["iterations"])


def test_flat_layout_wrong_rank_count_and_joint_limit(tmp_path):
    proc, _ = run_job(8, "--layout", "flat", "--topology", "example-a", timeout=120)
    assert proc.returncode == 2
    assert "1 + H = 4 ranks (1 server and 3 workers, --layout flat); 8 were started" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    G = np.zeros((17, 18), dtype=np.uint8)
    for i in range(17):
        G[i, i] = G[i, i + 1] = 1
    np.save(tmp_path / "g17.npy", G)
    proc, _ = run_job(18, "--layout", "flat", "--topology", str(tmp_path / "g17.npy"),
                      "--scheme", "joint", timeout=120)
    assert proc.returncode == 2
    assert "--scheme joint: H = 17 relays is more than the joint planner's limit of 16" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_phase_barriers_and_numba_kernel_change_no_bit(tmp_path):
    """--sync phase (a barrier between phases) with numba's local update against the
    default (barriers around iterations only, NumPy local update): same models, and
    in both the phases add up to at most the iteration's time."""
    digests = []
    for extra in ((), ("--sync", "phase", "--local-kernel", "numba")):
        path = tmp_path / f"r{len(digests)}.json"
        proc, _ = run_job(16, "--iterations", "4", "--quiet", "--report", str(path), *extra,
                          timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        report = json.loads(path.read_text())
        assert report["model_digests_equal"] is True
        for run in report["runs"].values():
            for it in run["iterations"]:
                s = it["seconds"]
                phases = sum(v for k, v in s.items() if k != "total")
                assert 0 < phases <= s["total"] + 1e-9
                assert all(v >= 0 for v in s.values())
        digests.append(report["runs"]["coded"]["model_digest"])
    assert digests[0] == digests[1]


def test_each_rank_holds_only_the_data_it_needs():
    from hmtl_mpi.vocabulary import tasks_of_rank

    G = load_topology("paper-fig2")
    H, K = G.shape
    assert tasks_of_rank(0, G, False) == list(range(K))            # server: baselines
    assert all(tasks_of_rank(1 + i, G, False) == [] for i in range(H))
    assert [tasks_of_rank(1 + H + k, G, False) for k in range(K)] == [[k] for k in range(K)]
    assert tasks_of_rank(2, G, True) == list(np.flatnonzero(G[1]))  # a flat worker: its row


def test_data_read_locally_or_scattered_give_the_same_models(tmp_path):
    """--data local (every rank reads the data set) against the default scatter from rank 0."""
    digests = []
    for extra in ((), ("--data", "local")):
        path = tmp_path / f"d{len(digests)}.json"
        proc, _ = run_job(16, "--iterations", "3", "--quiet", "--scheme", "coded",
                          "--report", str(path), *extra, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        digests.append(json.loads(path.read_text())["model_digest"])
    assert digests[0] == digests[1]
