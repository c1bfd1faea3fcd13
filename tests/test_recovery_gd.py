"""``--on-failure continue`` under ``--workload gd`` (in-process transport): a lost worker
or edge keeps its place in the gradient code as a straggler for good, so the gradient sums,
and the model, stay those of a run that lost nothing; beyond the code's tolerance the job
ends naming it. The mpirun path is in tests/test_recovery_mpi.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hmtl_mpi.job.recovery import reduce_topology
from hmtl_mpi.schemes import get
from hmtl_mpi.schemes.gradient import ABSENT
from hmtl_mpi.vocabulary import EXIT_FAULT

REPO = Path(__file__).resolve().parent.parent
TREE = np.kron(np.eye(3, dtype=np.uint8), np.ones((1, 3), dtype=np.uint8))  # tree 3,3,3


def cli(tmp_path, *args, timeout=300):
    topology = tmp_path / "t.npy"
    np.save(topology, TREE)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "hmtl_mpi", "--transport", "inprocess",
                           "--workload", "gd", "--topology", str(topology), "--iterations", "10",
                           "--quiet", "--on-failure", "continue", *args],
                          capture_output=True, text=True, timeout=timeout, env=env,
                          cwd=str(REPO))


def after(name, lost, **options):
    plan = get(name, "gd").plan(TREE, seed=0, **options)
    red = reduce_topology(TREE, lost)
    return plan.after_loss(red.G, red.relays, red.users), red


def test_a_lost_worker_keeps_its_place_as_a_straggler():
    new, red = after("hgc", [6])                            # user 3: edge 1, worker 3
    assert new.layout_users == [[0, 1, ABSENT], [2, 3, 4], [5, 6, 7]]
    assert new.layout_relays == [0, 1, 2] and new.senders == 3 and new.K == 8
    old = get("hgc", "gd").plan(TREE, seed=0)
    assert new.code.to_dict() == old.code.to_dict()          # the same partitions, coefficients
    assert all((a == b).all() for a, b in zip(new.code.edge_parts, old.code.edge_parts))
    buf = new.to_buffer()
    back = get("hgc", "gd").from_buffer(red.G, buf)
    assert back.layout_users == new.layout_users and back.layout_relays == new.layout_relays


def test_an_edge_beyond_its_worker_tolerance_or_lost_is_a_straggler_edge():
    new, _ = after("hgc", [6], stragglers=(1, 0))           # s_w = 0: edge 1 out
    assert new.layout_relays == [ABSENT, 1, 2] and new.senders == 2
    assert new.position_of_user(0) is None                   # its workers idle
    new, red = after("hgc", [2])                             # relay 2 and its users
    assert red.dropped == (3, 4, 5)
    assert new.layout_relays == [0, ABSENT, 1] and new.layout_users[1] == [ABSENT] * 3


def test_beyond_the_tolerance_is_refused_naming_it():
    with pytest.raises(ValueError, match=r"hgc tolerates 1 lost edges .* 2 of its 3 are lost"):
        after("hgc", [1, 2])
    with pytest.raises(ValueError, match="partitions are gone"):
        after("uncoded", [6])
    with pytest.raises(ValueError, match=r"gc tolerates 3 lost workers; 4 of its 9"):
        after("gc", [4, 5, 6, 7])


@pytest.mark.parametrize("scheme,lost,H,K", [("hgc", 6, 3, 8), ("gc", 6, 3, 8),
                                             ("hgc", 2, 2, 6)])
def test_the_gradient_of_a_run_that_lost_a_rank_is_that_of_one_that_did_not(
        tmp_path, scheme, lost, H, K):
    digests = []
    for fault in (["--inject-fault", f"{lost}:4"], []):
        report = tmp_path / "r.json"
        proc = cli(tmp_path, "--scheme", scheme, *fault, "--report", str(report))
        assert proc.returncode == 0, proc.stderr
        assert "Traceback" not in proc.stderr
        r = json.loads(report.read_text())
        digests.append((r["gradient_digest"], r["test_accuracy"]))
        if fault:
            assert (r["losses"][0]["rank"], r["losses"][0]["iteration"]) == (lost, 4)
            assert r["losses"][0]["recovered_s"] > 0 and (r["H"], r["K"]) == (H, K)
            assert [x["iteration"] for x in r["iterations"]] == list(range(10))
            assert f"(rank {lost}) in iteration 4" in proc.stdout
    assert digests[0] == digests[1]


def test_uncoded_gd_cannot_lose_a_worker_and_says_why(tmp_path):
    proc = cli(tmp_path, "--scheme", "uncoded", "--inject-fault", "6:4")
    assert proc.returncode == EXIT_FAULT
    assert "after losing rank(s) 6" in proc.stderr and "partitions are gone" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_beyond_the_tolerance_in_a_job_ends_it_naming_the_tolerance(tmp_path):
    proc = cli(tmp_path, "--scheme", "hgc", "--stragglers", "0,0", "--inject-fault", "6:4")
    assert proc.returncode == EXIT_FAULT
    assert "hgc tolerates 0 lost edges and 0 lost workers per edge" in proc.stderr
    assert "Traceback" not in proc.stderr
