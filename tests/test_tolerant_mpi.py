"""The straggler-tolerant exchange under mpirun: a relay really 0.3 s late every iteration."""

from __future__ import annotations

import json

import pytest
from mpi_util import run_job

pytestmark = pytest.mark.mpi


def test_a_slow_relay_is_not_waited_for_and_the_models_equal_uncoded(tmp_path):
    report_path = tmp_path / "r.json"
    proc, _ = run_job(16, "--scheme", "uncoded,coded,joint", "--relay-stragglers", "1",
                      "--straggle", "fixed:2=0.3", "--iterations", "5", "--quiet",
                      "--report", str(report_path), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(report_path.read_text())
    runs = report["runs"]
    assert report["model_digests_equal"] is True
    assert runs["uncoded"]["median_seconds"]["total"] >= 0.3     # the delay is real
    for name in ("coded", "joint"):
        run = runs[name]
        assert run["ivs_bit_exact"] is True and run["models_delivered_intact"] is True
        missed = run["relay_uplinks_not_waited_for"]
        assert missed[1] >= 3 and sum(missed) == 5, missed      # one relay left out each time


def test_too_few_relays_for_s_is_exit_2_naming_the_user():
    proc, _ = run_job(16, "--scheme", "coded", "--relay-stragglers", "2", "--iterations", "1",
                      timeout=120)
    assert proc.returncode == 2
    assert "user 3 is linked to 2 relay(s) (1, 2); every user needs at least S + 1 = 3" in \
        proc.stderr
    assert "Traceback" not in proc.stderr
