"""The gradient workload with real mpiexec jobs: exact under real stragglers, and faster."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from hmtl_mpi.planning.topology import tree
from mpi_util import REPO, run_job

pytestmark = pytest.mark.mpi


@pytest.fixture
def t444(tmp_path):
    path = tmp_path / "t444.npy"
    np.save(path, tree([4, 4, 4]))                 # 1 master, 3 edges, 12 workers: 16 ranks
    return path


def test_the_issues_run_is_exact_and_hgc_beats_a_fixed_straggler(t444, tmp_path):
    report_path = tmp_path / "r.json"
    proc, _ = run_job(16, "--workload", "gd", "--scheme", "uncoded,gc,hgc", "--topology", str(t444),
                      "--stragglers", "1,1", "--partitions", "12", "--straggle", "fixed:5=0.3",
                      "--iterations", "6", "--quiet", "--report", str(report_path), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(report_path.read_text())
    runs = report["runs"]
    assert list(runs) == ["uncoded", "gc", "hgc"] and report["model_digests_equal"] is True
    assert len({r["gradient_digest"] for r in runs.values()}) == 1      # every iteration's sum
    assert all(r["models_delivered_intact"] for r in runs.values())
    unc, gc, hgc = (runs[n]["median_seconds"]["total"] for n in ("uncoded", "gc", "hgc"))
    assert unc > 0.3                                 # everybody waits for rank 5's 0.3 s
    assert hgc < 0.5 * unc and gc < 0.5 * unc, (unc, gc, hgc)
    # bytes that reach the server per iteration, late messages included; a worker that
    # gives an iteration up sends an empty message instead (gc: rank 5, every iteration)
    assert runs["hgc"]["planned_loads"] == {"uplink": 3, "downlink": 3}
    assert runs["gc"]["planned_loads"] == {"uplink": 12, "downlink": 3}
    assert runs["uncoded"]["measured_loads"]["uplink"] == 3           # nobody gives up
    for name, used, most in (("gc", 9, 11), ("hgc", 2, 3)):
        assert used <= runs[name]["measured_loads"]["uplink"] <= most, name
    assert all(r["workload"] == "gd" for r in runs.values())
    assert (runs["hgc"]["load_per_worker"], runs["uncoded"]["load_per_worker"]) == (4, 1)
    assert runs["hgc"]["master_messages_used"] == 2 and runs["gc"]["master_messages_used"] == 9
    acc = runs["hgc"]["test_accuracy"]
    assert len(acc) == 6 and acc[-1] > 0.5 and acc == runs["uncoded"]["test_accuracy"]
    assert "decoded gradients bit-identical in every iteration: True" in proc.stdout


def test_jncss_selects_and_stays_exact(t444, tmp_path):
    report_path = tmp_path / "r.json"
    proc, _ = run_job(16, "--workload", "gd", "--scheme", "uncoded,hgc-jncss", "--topology",
                      str(t444), "--partitions", "12", "--straggle", "shifted-exp:0.002:100",
                      "--iterations", "4", "--quiet", "--report", str(report_path), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(report_path.read_text())
    assert report["model_digests_equal"] is True
    run = report["runs"]["hgc-jncss"]
    assert run["straggle"] == "shifted-exp:0.002:100" and len(run["stragglers"]) == 2


@pytest.mark.parametrize("flags,needle", [
    (("--topology", "paper-fig2"), "--scheme hgc: the gradient schemes need a tree"),
    (("--stragglers", "3,1"), "s_e = 3 >= n = 3 edges"),
    (("--straggle", "fixed:5"), "--straggle"),
    (("--straggle", "fixed:0=1"), "rank 0 is the server"),
    (("--straggle", "shifted-exp:1"), "expected shifted-exp:SHIFT:RATE"),
    (("--partitions", "7"), "--scheme hgc"),
])
def test_bad_gradient_input_is_one_clear_error(t444, flags, needle):
    args = ["--workload", "gd", "--scheme", "hgc", "--topology", str(t444), "--iterations", "2",
            *flags]
    n = 16 if "paper-fig2" not in flags else 16
    proc, _ = run_job(n, *args, timeout=120)
    assert proc.returncode == 2, proc.stderr
    ours = [x for x in proc.stderr.splitlines() if x.startswith("hmtl_mpi")]
    assert len(ours) == 1 and needle in ours[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_hung_worker_is_tolerated_then_named_when_its_message_never_comes(t444):
    """hgc does not wait for a hung worker; draining its late messages at the end does."""
    proc, _ = run_job(16, "--workload", "gd", "--scheme", "hgc", "--topology", str(t444),
                      "--partitions", "12", "--iterations", "3", "--quiet", "--timeout", "4",
                      "--inject-fault", "6:1:hang", timeout=120)
    assert proc.returncode == 4, proc.stderr
    ours = [x for x in proc.stderr.splitlines() if x.startswith("hmtl_mpi")]
    assert len(ours) == 1 and "rank 6 (user 3) stopped answering" in ours[0], proc.stderr


def test_plan_cli_for_hgc(t444):
    proc = subprocess.run([sys.executable, "-m", "hmtl_mpi.plan", "--scheme", "hgc", "--topology",
                           str(t444), "--stragglers", "1,1", "--partitions", "12", "--verify",
                           "--json"], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["load_per_worker"] == 4 and out["load_lower_bound"] == 4.0
    assert out["partitions_per_edge"] == [8, 8, 8]
    assert out["verify"]["patterns"] == 48 and out["verify"]["exact"] is True
