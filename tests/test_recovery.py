"""``--on-failure continue`` (hmtl_mpi.job.recovery): the reduced topology, the state renamed
to it, the in-process fabric's deaths, and whole jobs that lose a relay or a user and go on,
lossless, with the reduced plan's loads. The MPI path is in tests/test_recovery_mpi.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hmtl_mpi.job.recovery import Snapshots, Unrecoverable, reduce_topology, remap_state
from hmtl_mpi.planning.topology import paper_fig2
from hmtl_mpi.schemes import get
from hmtl_mpi.vocabulary import EXIT_BAD_INPUT, EXIT_FAULT
from hmtl_mpi.wire.inprocess import Fabric, InProcessEndpoint
from hmtl_mpi.wire.interfaces import ProcessFailed

REPO = Path(__file__).resolve().parent.parent


def cli(*args, timeout=300):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "hmtl_mpi", "--transport", "inprocess", *args],
                          capture_output=True, text=True, timeout=timeout, env=env, cwd=str(REPO))


# --- the reduced topology and the state renamed to it ------------------------------------------

def test_a_lost_relay_leaves_g_and_the_ranks_are_renumbered():
    G = paper_fig2()                                  # H = 5, K = 10
    red = reduce_topology(G, [3])                     # relay 3 (index 2)
    assert red.G.shape == (4, 10) and red.relays == (0, 1, 3, 4) and red.dropped == ()
    assert (red.G == np.delete(G, 2, axis=0)).all()
    assert red.ranks == (0, 1, 2, 4, 5) + tuple(range(6, 16))


def test_a_lost_user_leaves_g_and_a_user_without_relay_is_dropped():
    G = paper_fig2()
    red = reduce_topology(G, [8])                     # user 3 (index 2)
    assert red.G.shape == (5, 9) and 2 not in red.users and red.new_user(3) == 2
    only = np.flatnonzero(G.sum(axis=0) == G.sum(axis=0).min())[0]   # a user with fewest relays
    relays = np.flatnonzero(G[:, only])
    red = reduce_topology(G, [1 + int(i) for i in relays])
    assert only in red.dropped and only not in red.users
    assert all(red.G[:, j].any() for j in range(red.G.shape[1]))


def test_losing_the_server_or_everything_cannot_be_recovered():
    G = paper_fig2()
    with pytest.raises(Unrecoverable, match="server"):
        reduce_topology(G, [0])
    with pytest.raises(Unrecoverable, match="every relay"):
        reduce_topology(G, [1, 2, 3, 4, 5])


def test_state_is_renamed_to_the_users_kept():
    K, d = 4, 3
    W = np.arange(d * K, dtype=float).reshape(d, K)
    Sigma = np.arange(K * K, dtype=float).reshape(K, K)
    state = {"learner/W": W, "learner/Sigma": Sigma, "learner/rho": np.array(1.0),
             "learner/alpha/1": np.ones(2), "learner/alpha/2": np.zeros(2),
             "learner/rng/2": np.arange(3, dtype=np.uint8), "model": np.ones(5)}
    out = remap_state(state, (0, 2, 3))                # user 1 gone
    assert (out["learner/W"] == W[:, [0, 2, 3]]).all()
    assert (out["learner/Sigma"] == Sigma[np.ix_([0, 2, 3], [0, 2, 3])]).all()
    assert set(out) == {"learner/W", "learner/Sigma", "learner/rho", "learner/alpha/1",
                        "learner/rng/1", "model"}
    assert (out["learner/alpha/1"] == 0).all()         # old user 2 is user 1 now


def test_synthetic_learners_rows_are_cut_to_the_users_kept():
    """--dataset synthetic keeps a K x dim W (one row per user); a lost user's row goes
    (it was kept whole, and the next global update failed on a K - 1 by dim IV block)."""
    K, dim = 4, 3
    W = np.arange(K * dim, dtype=float).reshape(K, dim)
    out = remap_state({"learner/W": W}, (0, 2, 3), K)
    assert (out["learner/W"] == W[[0, 2, 3]]).all()
    assert (remap_state({"learner/W": W}, (0, 1, 2, 3), K)["learner/W"] == W).all()


def test_a_lost_user_with_synthetic_ivs_goes_on(tmp_path):
    report = tmp_path / "r.json"
    proc = subprocess.run([sys.executable, "-m", "hmtl_mpi", "--transport", "inprocess",
                           "--scheme", "coded", "--dataset", "synthetic", "--dim", "100",
                           "--iterations", "8", "--quiet", "--on-failure", "continue",
                           "--inject-fault", "8:3", "--report", str(report)],
                          capture_output=True, text=True, timeout=600, cwd=str(REPO),
                          env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert proc.returncode == 0, proc.stderr
    r = json.loads(report.read_text())
    assert [(x["rank"], x["role"]) for x in r["losses"]] == [(8, "user")]
    assert r["K"] == 9 and all(x["ivs_bit_exact"] for x in r["iterations"])


def test_snapshots_keep_the_last_iterations_as_copies():
    snaps = Snapshots(keep=2)
    a = np.zeros(2)
    for it in range(4):
        a[:] = it
        snaps.keep(it, {"x": a})
    assert sorted(snaps.states) == [2, 3] and snaps.last() == 3
    assert snaps.states[2]["x"][0] == 2.0


# --- the fabric: a rank's death ---------------------------------------------------------------

def test_a_dead_rank_interrupts_the_others_and_shrink_names_it():
    fabric = Fabric(3, survive=True)

    def job(r):
        ep = InProcessEndpoint(fabric, r)
        if r == 2:
            raise RuntimeError("dies")
        try:
            ep.wait(ep.irecv(2, np.empty(1), 5), "a message from rank 2")
        except ProcessFailed:
            lost, _ = ep.shrink()
            ep.remap([0, 1], ep.rank)
            ep.connect(np.ones((1, 0), dtype=np.uint8), True)
            total = ep.reduce("world", np.array([ep.rank + 1]), "sum", 0, "after the shrink")
            return lost, None if total is None else int(total[0])
        return "no failure seen"
    got = fabric.run(job)
    assert got[0] == ([2], 3) and got[1] == ([2], None)
    assert isinstance(got[2], RuntimeError)


# --- whole jobs ---------------------------------------------------------------------------------

def reduced_plan(name, lost):
    red = reduce_topology(paper_fig2(), lost)
    return get(name).plan(red.G, seed=0), red


@pytest.mark.parametrize("lost,role", [(3, "relay"), (8, "user")])
def test_the_job_goes_on_without_a_lost_rank(tmp_path, lost, role):
    report = tmp_path / "r.json"
    proc = cli("--scheme", "coded", "--iterations", "15", "--quiet", "--on-failure", "continue",
               "--inject-fault", f"{lost}:5", "--report", str(report))
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    r = json.loads(report.read_text())
    (loss,) = r["losses"]
    assert (loss["rank"], loss["role"], loss["iteration"]) == (lost, role, 5)
    assert loss["cause"] == "died" and "unanswered_s" not in loss
    assert loss["detected_s"] >= 0 and loss["recovered_s"] > 0
    assert loss["rolled_back_to"] == 4
    plan, red = reduced_plan("coded", [lost])
    assert loss["planned_loads_after"] == {"uplink": float(plan.planned_loads[0]),
                                           "downlink": float(plan.planned_loads[1])}
    assert r["planned_loads"] == loss["planned_loads_after"]
    assert (r["K"], r["H"]) == red.G.shape[::-1]
    its = r["iterations"]
    assert [x["iteration"] for x in its] == list(range(15))
    assert all(x["ivs_bit_exact"] for x in its) and r["models_delivered_intact"]
    iv = r["iv_bytes"]
    for x in its[5:]:     # the reduced plan: the uplink exactly, the downlink + its escapes
        assert x["bytes"]["relay_to_server"] == plan.planned_loads[0] * iv
        assert 0 <= x["bytes"]["server_to_relay"] - plan.planned_loads[1] * iv < 0.1 * iv
    full = get("coded").plan(paper_fig2(), seed=0)
    assert all(x["bytes"]["relay_to_server"] == full.planned_loads[0] * iv for x in its[:5])
    assert r["measured_from_iteration"] == 5
    assert f"lost: {role}" in proc.stdout and f"(rank {lost}) in iteration 5" in proc.stdout


def test_a_lost_relay_leaves_the_models_of_a_run_that_lost_nothing(tmp_path):
    """Its users keep a relay, so the learning sees every IV as before: each survivor
    rolled back to the same state and the models end bit-identical to an uninterrupted
    run's, under both schemes (which are still compared: exit 0 means they agree)."""
    digests = []
    for fault in (["--inject-fault", "2:4"], []):
        report = tmp_path / "r.json"
        proc = cli("--scheme", "both", "--iterations", "8", "--quiet", "--on-failure",
                   "continue", *fault, "--report", str(report))
        assert proc.returncode == 0, proc.stderr
        r = json.loads(report.read_text())
        assert r["model_digests_equal"]
        digests.append(r["runs"]["coded"]["model_digest"])
    assert digests[0] == digests[1]


def test_a_lost_user_changes_the_models_but_not_their_agreement(tmp_path):
    """Uncoded and coded lose the same user in the same iteration: they learn K - 1 tasks
    from there, both the same way (their models agree bit for bit)."""
    digests = []
    for scheme in ("uncoded", "coded"):
        report = tmp_path / f"{scheme}.json"
        proc = cli("--scheme", scheme, "--iterations", "8", "--quiet", "--on-failure",
                   "continue", "--inject-fault", "9:4", "--report", str(report))
        assert proc.returncode == 0, proc.stderr
        digests.append(json.loads(report.read_text())["model_digest"])
    assert digests[0] == digests[1]


def test_losing_the_server_still_ends_the_job():
    proc = cli("--scheme", "coded", "--iterations", "6", "--quiet", "--on-failure", "continue",
               "--inject-fault", "0:2")
    assert proc.returncode == EXIT_FAULT, proc.stderr
    assert "rank 0 (server)" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("flags", [("--layout", "flat"),
                                   ("--users-per-rank", "2"), ("--scheme", "auto"),
                                   ("--plan", "time")])
def test_continue_is_refused_where_it_is_not_handled(flags):
    proc = cli(*flags, "--on-failure", "continue")
    assert proc.returncode == EXIT_BAD_INPUT
    assert "--on-failure continue" in proc.stderr and "Traceback" not in proc.stderr


def test_users_left_without_a_relay_are_removed_and_named(tmp_path):
    topology, report = tmp_path / "t.npy", tmp_path / "r.json"
    np.save(topology, np.array([[1, 1, 0, 0, 0, 0], [0, 0, 1, 1, 0, 0], [0, 0, 0, 0, 1, 1]],
                               dtype=np.uint8))                  # tree 2,2,2
    proc = cli("--topology", str(topology), "--scheme", "coded", "--iterations", "5", "--quiet",
               "--on-failure", "continue", "--inject-fault", "1:2", "--report", str(report))
    assert proc.returncode == 0, proc.stderr
    r = json.loads(report.read_text())
    assert [(x["rank"], x["role"], x.get("removed") is not None) for x in r["losses"]] == [
        (1, "relay", False), (4, "user", True), (5, "user", True)]
    assert (r["H"], r["K"]) == (2, 4) and r["ivs_bit_exact"]
    assert "user 1 (rank 4) removed" in proc.stdout and "user 2 (rank 5) removed" in proc.stdout
