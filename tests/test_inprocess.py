"""The in-process transport: the fabric's rules, and every scheme's parts run without mpiexec.

Each scheme's parts run here through the job itself (``--transport inprocess``), in
this process's subprocess or in this process: the same parts, checks and report as
under mpirun (tests/test_inprocess_mpi.py compares their digests with mpirun's).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from hmtl_mpi.job.config import JobConfig
from hmtl_mpi.job.runtime import run_inprocess
from hmtl_mpi.job.verify import verify_exchange
from hmtl_mpi.learning.straggle import parse as straggle
from hmtl_mpi.planning.topology import cyclic, load_topology, tree
from hmtl_mpi.schemes import get
from hmtl_mpi.vocabulary import EXIT_BAD_INPUT, EXIT_FAULT, EXIT_HANG, UPLINK, WORLD
from hmtl_mpi.wire.inprocess import Deadlock, Fabric, InProcessEndpoint

REPO = Path(__file__).resolve().parent.parent


def run(fabric_size, job):
    fabric = Fabric(fabric_size)
    return fabric.run(lambda r: job(InProcessEndpoint(fabric, r)))


# --- the fabric ----------------------------------------------------------------------------

def test_messages_match_by_source_and_tag_in_order_and_count_their_bytes():
    def job(ep):
        if ep.rank == 0:
            for v in (1.0, 2.0):
                ep.wait(ep.isend(1, np.full(3, v), 7, "relay_to_server"), "send")
            ep.wait(ep.isend(1, np.full(3, 9.0), 8, "relay_to_server"), "send")
            return ep.sent["relay_to_server"]
        a, b, c = np.empty(3), np.empty(3), np.empty(3)
        reqs = [ep.irecv(0, c, 8), ep.irecv(0, a, 7), ep.irecv(0, b, 7)]
        ep.wait(reqs, "three messages")
        return a[0], b[0], c[0]
    sent, got = run(2, job)
    assert sent == 3 * 24 and got == (1.0, 2.0, 9.0)


def test_collectives_over_groups():
    def job(ep):
        ep.connect(np.array([[1, 0], [0, 1]], dtype=np.uint8), False)
        buf = np.arange(4.0) if ep.rank == 0 else np.zeros(4)
        ep.bcast(WORLD, buf, 0, "bcast")
        gathered = ep.gather(WORLD, np.array([ep.rank]), 0, "gather")
        total = ep.reduce(WORLD, np.array([ep.rank, 1]), "sum", 0, "reduce")
        mine = np.zeros(2, dtype=np.uint8)
        if ep.rank <= 2:                                # server + 2 relays
            send = np.arange(4, dtype=np.uint8) if ep.rank == 0 else None
            ep.scatterv(UPLINK, send, [0, 2, 2], [0, 0, 2], None if ep.rank == 0 else mine,
                        0, "scatter")
        return buf.tolist(), gathered, total, mine.tolist()
    out = run(5, job)
    assert all(o[0] == [0.0, 1.0, 2.0, 3.0] for o in out)
    assert out[0][1].ravel().tolist() == [0, 1, 2, 3, 4] and out[1][1] is None
    assert out[0][2].tolist() == [10, 5]
    assert out[1][3] == [0, 1] and out[2][3] == [2, 3]


def test_first_arrivals_follow_the_virtual_clock():
    """Rank 1 sends after an injected delay of 5 s, rank 2 after 1 s, rank 3 at once: the
    server's first two are ranks 3 and 2, whatever order the threads ran in."""
    delays = {1: 5.0, 2: 1.0, 3: 0.0}

    def job(ep):
        if ep.rank == 0:
            bufs = [np.empty(1) for _ in delays]
            reqs = [ep.irecv(r, b, 5) for r, b in zip(delays, bufs)]
            first = ep.wait_first(reqs, 2, "first two")
            ep.wait(reqs, "the rest")
            return first, ep.clock()
        ep.delay(delays[ep.rank], 0, 99)               # nothing comes: the full delay
        ep.isend(0, np.array([float(ep.rank)]), 5, "relay_to_server")
        return ep.clock()
    out = run(4, job)
    first, t = out[0]
    assert [list(delays)[i] for i in first] == [3, 2]
    assert 5.0 <= t < 5.5 and 1.0 <= out[2] < 1.5


def test_a_delay_is_cut_short_by_the_message_it_waits_for():
    def job(ep):
        if ep.rank == 0:
            ep.delay(0.5, 1, 99)
            ep.isend(1, np.zeros(1), 3, "server_to_relay")
            return None
        cut = ep.delay(10.0, 0, 3)
        return cut, ep.clock()
    _, (cut, t) = run(2, job)
    assert cut is True and 0.5 <= t < 1.0


def test_a_deadlock_names_who_waits_for_what():
    def job(ep):
        ep.wait(ep.irecv(1 - ep.rank, np.empty(1), 4), f"a message from rank {1 - ep.rank}")
    with pytest.raises(Deadlock) as err:
        run(2, job)
    assert err.value.waiting == {0: "a message from rank 1", 1: "a message from rank 0"}


def test_an_exception_on_one_rank_ends_all_and_names_it():
    def job(ep):
        if ep.rank == 2:
            raise ValueError("boom")
        ep.barrier(WORLD, "never complete")
    with pytest.raises(ValueError) as err:
        run(3, job)
    assert err.value.rank == 2


def test_every_waiting_rank_is_ended_and_runs_its_cleanup():
    ended = []

    def job(ep):
        try:
            if ep.rank == 4:           # the last to start: the others all wait
                raise ValueError("boom")
            ep.barrier(WORLD, "never complete")
        finally:
            ended.append(ep.rank)
    with pytest.raises(ValueError):
        run(5, job)
    assert sorted(ended) == [0, 1, 2, 3, 4]


def test_a_rank_that_never_waits_is_stopped_by_the_watchdog():
    fabric = Fabric(3, watchdog=0.5)

    def job(r):
        ep = InProcessEndpoint(fabric, r)
        if r == 1:
            while True:                 # busy: never reaches a wait
                pass
        ep.barrier(WORLD, "never complete")
    with pytest.raises(TimeoutError, match="ran 0.5 s without reaching a wait") as err:
        fabric.run(job)
    assert err.value.rank == 1


def test_ten_thousand_ranks_switch_in_microseconds():
    """Every rank a greenlet: 10,001 ranks through 3 barriers (40,004 switches) in one
    process; after the last one every virtual clock starts from the same time (they
    differ by the few statements each ran since)."""
    fabric = Fabric(10_001)

    def job(r):
        ep = InProcessEndpoint(fabric, r)
        for _ in range(3):
            ep.barrier(WORLD, "b")
        return ep.clock()
    clocks = fabric.run(job)
    assert len(clocks) == 10_001 and max(clocks) - min(clocks) < 0.005


# --- every scheme's parts, without mpiexec ----------------------------------------------------

def job_report(tmp_path, **options) -> dict:
    """The whole job in this process (run_inprocess), its report."""
    path = tmp_path / "report.json"
    config = JobConfig(quiet=True, report=str(path), straggle=straggle("none"), **options)
    assert run_inprocess(config) == 0
    return json.loads(path.read_text())


def test_uncoded_coded_and_joint_parts(tmp_path):
    rep = job_report(tmp_path, topology="paper-fig2", dataset="synthetic", dim=701, iterations=2,
                     schemes=("uncoded", "coded", "joint"), scheme_arg="uncoded,coded,joint")
    assert rep["model_digests_equal"] is True and rep["transport"] == "inprocess"
    assert rep["links"].startswith("none")
    for name, (up, down) in {"uncoded": (10, 10), "coded": (8.5, 7),
                             "joint": (rep["runs"]["joint"]["planned_loads"]["uplink"],
                                       rep["runs"]["joint"]["planned_loads"]["downlink"])}.items():
        run = rep["runs"][name]
        assert run["ivs_bit_exact"] is True and run["models_delivered_intact"] is True
        assert run["transport"] == "inprocess"
        assert up <= run["measured_loads"]["uplink"] <= up * 1.01
        assert down <= run["measured_loads"]["downlink"] <= down * 1.01
        assert all(it["seconds"]["total"] > 0 for it in run["iterations"])


def test_flat_layout_parts(tmp_path):
    rep = job_report(tmp_path, topology="example-a", layout="flat", dataset="synthetic", dim=97,
                     iterations=3, schemes=("uncoded", "joint"), scheme_arg="uncoded,joint")
    assert rep["model_digests_equal"] is True and rep["ranks"] == 4
    assert rep["runs"]["joint"]["measured_loads"]["uplink"] >= 2


def test_mocha_parts_match_across_schemes(tmp_path):
    rep = job_report(tmp_path, iterations=3, schemes=("uncoded", "coded"), scheme_arg="both")
    assert rep["model_digests_equal"] is True
    assert rep["runs"]["coded"]["accuracy"]["mean_test_error"] < 0.2


def test_gradient_parts_under_a_straggler(tmp_path):
    """Rank 5 is 0.3 s late every iteration: uncoded waits for it, hgc does not; the virtual
    clock shows it without sleeping, and every scheme decodes the same sums."""
    G = tree([4, 4, 4])
    np.save(tmp_path / "t.npy", G)
    path = tmp_path / "report.json"
    config = JobConfig(topology=str(tmp_path / "t.npy"), workload="gd", iterations=4, quiet=True,
                       schemes=("uncoded", "gc", "hgc", "hgc-jncss"),
                       scheme_arg="uncoded,gc,hgc,hgc-jncss", straggle=straggle("fixed:5=0.3"),
                       report=str(path))
    assert run_inprocess(config) == 0
    rep = json.loads(path.read_text())
    runs = rep["runs"]
    assert rep["model_digests_equal"] is True
    assert len({r["gradient_digest"] for r in runs.values()}) == 1
    assert runs["uncoded"]["median_seconds"]["total"] >= 0.3
    assert runs["hgc"]["median_seconds"]["total"] < 0.1


def test_verify_runs_the_exchange_through_the_parts():
    for name in ("coded", "joint", "uncoded"):
        scheme = get(name).plan(load_topology("paper-fig2"))
        res = verify_exchange(scheme, 257, seed=4)
        up, down = scheme.planned_loads
        assert res["bit_exact"] is True and res["transport"] == "inprocess"
        assert Fraction(res["uplink_bytes"], 8 * 257) >= up
        assert Fraction(res["downlink_bytes"], 8 * 257) >= down
    scheme = get("coded").plan(cyclic(4, 2))
    assert verify_exchange(scheme, 5, seed=1)["bit_exact"] is True


# --- the command line ----------------------------------------------------------------------

def cli(*args, timeout=240):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    for key in ("PMI_RANK", "PMI_SIZE", "OMPI_COMM_WORLD_RANK", "PMIX_RANK", "SLURM_PROCID"):
        env.pop(key, None)
    return subprocess.run([sys.executable, "-m", "hmtl_mpi", "--transport", "inprocess", *args],
                          capture_output=True, text=True, timeout=timeout, env=env)


def test_the_command_runs_without_mpirun(tmp_path):
    proc = cli("--iterations", "2", "--quiet", "--report", str(tmp_path / "r.json"))
    assert proc.returncode == 0, proc.stderr
    assert "in one process (--transport inprocess)" in proc.stdout
    assert "final models bit-identical across uncoded, coded: True" in proc.stdout
    assert json.loads((tmp_path / "r.json").read_text())["transport"] == "inprocess"


@pytest.mark.parametrize("fault, code, words", [
    ("9:1", EXIT_FAULT, "rank 9 (user 4) failed in iteration 1 of the uncoded run"),
    ("3:1:hang", EXIT_HANG, "rank 3 (relay 3) stopped answering in iteration 1 of the uncoded"),
    ("9:1:kill", EXIT_BAD_INPUT, "needs a process per rank"),
])
def test_failures_are_named_once(tmp_path, fault, code, words):
    report = tmp_path / "r.json"
    proc = cli("--iterations", "2", "--quiet", "--inject-fault", fault, "--report", str(report))
    assert proc.returncode == code, proc.stderr
    assert words in proc.stderr and proc.stderr.count("hmtl_mpi:") == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert not report.exists() and list(tmp_path.iterdir()) == []


def test_bad_topology_is_refused(tmp_path):
    proc = cli("--topology", str(tmp_path / "missing.npy"))
    assert proc.returncode == EXIT_BAD_INPUT and "missing.npy" in proc.stderr
    assert "Traceback" not in proc.stderr
