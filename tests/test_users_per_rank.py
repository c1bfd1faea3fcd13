"""``--users-per-rank N``: N users on one rank end with the digests and bytes of one rank per user.

The same job (paper-fig2: H = 5, K = 10; MOCHA on digits, so every hosting rank's
learner holds several tasks) runs with one user per rank and with N = 3 and 4 (10 % N
leaves the last rank with fewer users), in one process and under mpirun: the model
digests, the IV checks and the bytes of every link class in every iteration must be
those of one rank per user. Bad values, the rank count, a fault on a hosting rank and
checkpoints are checked too.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from hmtl_mpi.vocabulary import (EXIT_BAD_INPUT, EXIT_FAULT, EXIT_HANG, TAG_IV, TAG_MODEL,
                                 group_members, host_rank, ranks_formula, ranks_needed,
                                 role_names, user_tag, users_of_rank)
from mpi_util import REPO, run_job

COMMON = ("--iterations", "4", "--quiet")


def inprocess(*args, timeout=300):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "hmtl_mpi", "--transport", "inprocess", *args],
                          capture_output=True, text=True, timeout=timeout, env=env, cwd=str(REPO))


def summary(path) -> dict:
    """Per scheme: the model digest, the IV check, and the bytes of every link class in
    every iteration."""
    report = json.loads(path.read_text())
    return {name: (run["model_digest"], run["ivs_bit_exact"], run["models_delivered_intact"],
                   [it["bytes"] for it in run["iterations"]])
            for name, run in report["runs"].items()}


@pytest.fixture(scope="module")
def one_per_rank(tmp_path_factory):
    """The reference: one rank per user, in one process."""
    path = tmp_path_factory.mktemp("ref") / "ref.json"
    proc = inprocess(*COMMON, "--report", str(path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = summary(path)
    assert all(v[1] and v[2] for v in got.values())
    assert len({v[0] for v in got.values()}) == 1          # uncoded and coded agree
    return got


# --- the arithmetic --------------------------------------------------------------------------

def test_rank_arithmetic():
    H, K = 5, 10
    assert ranks_needed(H, K) == 16 and ranks_needed(H, K, per_rank=3) == 10
    assert ranks_needed(H, K, per_rank=4) == 9 and ranks_needed(H, K, per_rank=10) == 7
    assert ranks_needed(H, K, flat=True, per_rank=3) == 6
    assert ranks_formula(per_rank=3) == "1 + H + ceil(K / 3)" and ranks_formula() == "1 + H + K"
    assert [host_rank(k, H, 3) for k in range(K)] == [6, 6, 6, 7, 7, 7, 8, 8, 8, 9]
    assert users_of_rank(9, H, K, 3) == [9] and users_of_rank(7, H, K, 3) == [3, 4, 5]
    assert users_of_rank(2, H, K, 3) == [] and users_of_rank(0, H, K, 3) == []
    assert [host_rank(k, H) for k in range(K)] == list(range(6, 16))     # one per rank
    # tags: the user's slot on its rank, so N users never share a (source, tag)
    tags = {(host_rank(k, H, 4), user_tag(t, k, 4)) for k in range(K) for t in (TAG_IV, TAG_MODEL)}
    assert len(tags) == 2 * K and user_tag(TAG_IV, 7, 1) == TAG_IV
    G = np.zeros((2, 6), dtype=np.uint8)
    G[0, [0, 1, 4]] = 1
    G[1, [2, 5]] = 1
    assert group_members(G, 0, 2) == [1, 3, 5] and group_members(G, 1, 2) == [2, 4, 5]
    assert group_members(G, 0) == [1, 3, 4, 7]
    name = role_names(H, K=K, per_rank=3)
    assert (name(0), name(1), name(6), name(9)) == ("server", "relay 1", "users 1-3", "user 10")


# --- bad input ---------------------------------------------------------------------------------

@pytest.mark.parametrize("value,words", [
    ("0", "argument --users-per-rank: must be at least 1, got 0"),
    ("-2", "argument --users-per-rank: must be at least 1, got -2"),
    ("x", "argument --users-per-rank: expected an integer, got 'x'"),
    ("512", "--users-per-rank 512: at most 511 users per rank"),
])
def test_a_bad_value_exits_2(value, words):
    proc = inprocess("--users-per-rank", value)
    assert proc.returncode == EXIT_BAD_INPUT and words in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


def test_gd_and_flat_refuse_it():
    proc = inprocess("--workload", "gd", "--users-per-rank", "2")
    assert proc.returncode == EXIT_BAD_INPUT
    assert "--users-per-rank 2: --workload gd needs one rank per user" in proc.stderr
    proc = inprocess("--layout", "flat", "--users-per-rank", "2")
    assert proc.returncode == EXIT_BAD_INPUT
    assert "--users-per-rank 2: --layout flat has no user ranks" in proc.stderr
    proc = inprocess("--scheme", "coded", "--relay-stragglers", "1", "--users-per-rank", "3")
    assert proc.returncode == EXIT_BAD_INPUT
    assert "--users-per-rank 3: --relay-stragglers 1 needs one rank per user" in proc.stderr


# --- in one process ------------------------------------------------------------------------------

@pytest.mark.parametrize("n", [3, 4])
def test_inprocess_same_digests_and_bytes_as_one_rank_per_user(tmp_path, one_per_rank, n):
    path = tmp_path / "r.json"
    proc = inprocess(*COMMON, "--users-per-rank", str(n), "--report", str(path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert summary(path) == one_per_rank
    report = json.loads(path.read_text())
    assert report["users_per_rank"] == n and report["ranks"] == ranks_needed(5, 10, per_rank=n)


def test_a_fault_on_a_hosting_rank_names_its_users():
    proc = inprocess("--iterations", "3", "--quiet", "--users-per-rank", "3",
                     "--inject-fault", "7:1")
    assert proc.returncode == EXIT_FAULT, proc.stderr
    assert "rank 7 (users 4-6) failed in iteration 1 of the uncoded run" in proc.stderr


def test_checkpoint_and_resume_with_users_sharing_ranks(tmp_path, one_per_rank):
    ck = tmp_path / "ck"
    args = (*COMMON, "--users-per-rank", "3")
    proc = inprocess(*args, "--checkpoint", str(ck), "--checkpoint-every", "2")
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in ck.iterdir()) == ["ckpt-0-00000002.hmtl", "ckpt-1-00000002.hmtl"]
    path = tmp_path / "resumed.json"
    proc = inprocess(*args, "--resume", str(ck), "--report", str(path))
    assert proc.returncode == 0, proc.stderr
    assert {k: v[0] for k, v in summary(path).items()} == {k: v[0] for k, v in one_per_rank.items()}
    # another number of users per rank is another command
    proc = inprocess(*COMMON, "--users-per-rank", "4", "--resume", str(ck))
    assert proc.returncode == EXIT_BAD_INPUT
    assert "users_per_rank: 3 in the checkpoint, 4 now" in proc.stderr


# --- under mpirun ------------------------------------------------------------------------------

@pytest.mark.mpi
@pytest.mark.parametrize("n", [3, 4])
def test_mpirun_same_digests_and_bytes_as_one_rank_per_user(tmp_path, one_per_rank, n):
    path = tmp_path / "mpi.json"
    proc, _ = run_job(ranks_needed(5, 10, per_rank=n), *COMMON, "--users-per-rank", str(n),
                      "--report", str(path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert summary(path) == one_per_rank


@pytest.mark.mpi
def test_mpirun_rank_count_names_the_formula():
    proc, _ = run_job(16, "--iterations", "1", "--users-per-rank", "3", timeout=120)
    assert proc.returncode == EXIT_BAD_INPUT, proc.stderr
    assert "so the job needs 1 + H + ceil(K / 3) = 10 ranks" in proc.stderr
    assert "16 were started. Run: mpirun -n 10 python -m hmtl_mpi" in proc.stderr


def test_users_on_one_rank_are_told_apart_by_tag():
    """Two users on one rank send and receive out of user order: each IV and each model
    still reaches its own user (a relay matches by tag, not by arrival order)."""
    from hmtl_mpi.wire.inprocess import Fabric, InProcessEndpoint
    from hmtl_mpi.wire.roles import RelayNet, UserNet

    G = np.ones((1, 2), dtype=np.uint8)                  # relay 1, users 1 and 2 on rank 2
    fabric = Fabric(ranks_needed(1, 2, per_rank=2))
    got = {}

    def rank_job(r):
        ep = InProcessEndpoint(fabric, r, 30.0)
        if r == 1:
            net = RelayNet(ep, G, 0, per_rank=2)
            got["ivs"] = net.recv_ivs([0, 1], 3)
            net.send_models({1: np.full(2, 21.0), 0: np.full(2, 20.0)})   # user 2's first
        elif r == 2:
            nets = {k: UserNet(ep, G, k, per_rank=2) for k in (0, 1)}
            nets[1].send_iv([0], np.full(3, 11.0))                         # user 2's first
            nets[0].send_iv([0], np.full(3, 10.0))
            got["models"] = {k: nets[k].recv_model(2) for k in (0, 1)}
        return 0
    assert fabric.run(rank_job) == [0, 0, 0]
    assert {k: v.tolist() for k, v in got["ivs"].items()} == {0: [10.0] * 3, 1: [11.0] * 3}
    assert {k: v.tolist() for k, v in got["models"].items()} == {0: [20.0] * 2, 1: [21.0] * 2}


@pytest.mark.mpi
def test_mpirun_a_hanging_hosting_rank_is_named_with_its_users():
    proc, _ = run_job(10, "--iterations", "3", "--quiet", "--users-per-rank", "3", "--dataset",
                      "synthetic", "--dim", "16", "--timeout", "10", "--inject-fault", "7:1:hang",
                      timeout=180)
    assert proc.returncode == EXIT_HANG, proc.stderr[-3000:]
    assert "rank 7 (users 4-6) stopped answering in iteration 1 of the uncoded run" in proc.stderr


def test_the_prediction_puts_a_ranks_users_on_its_link():
    from hmtl_mpi.job.hosting import rank_link_loads
    from hmtl_mpi.job.predict import phase_seconds

    loads = {"user_up_max": 2, "user_down_max": 1, "relay_to_server": 8.5,
             "server_to_relay": 7.0, "uplink_rounds": 1, "downlink_rounds": 2}
    assert rank_link_loads(loads, 10, 1) is loads
    hosted = rank_link_loads(loads, 10, 3)
    assert (hosted["user_up_max"], hosted["user_down_max"], hosted["user_rounds"]) == (6, 3, 3)
    assert rank_link_loads(loads, 2, 5)["user_rounds"] == 2          # no more users than K
    links = {"w1": (1e-3, 1e6), "w2": (2e-3, 1e6)}
    one, three = (phase_seconds(x, 1000, links, {}, 1e9) for x in (loads, hosted))
    assert one["user_to_relay"] == pytest.approx(1e-3 + 2e-3)
    assert three["user_to_relay"] == pytest.approx(3e-3 + 6e-3)
    assert three["relay_to_server"] == one["relay_to_server"]
