"""One job, two transports: ``--transport inprocess`` ends with the digests mpirun ends with.

For every scheme of both workloads and both layouts: the same options run once under
mpirun and once in one process, and their reports' model digests (and, under
``--workload gd``, the decoded gradients' digests) must be equal, as must the bytes
every link class carried (schemes with steps; a barrier-free run's bytes depend on
who was late).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from hmtl_mpi.planning.topology import tree
from mpi_util import REPO, run_job

pytestmark = pytest.mark.mpi


def inprocess(*args, timeout=300):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "hmtl_mpi", "--transport", "inprocess", *args],
                          capture_output=True, text=True, timeout=timeout, env=env, cwd=str(REPO))


def both(tmp_path, n, *args):
    """The job under mpirun (n ranks) and in one process; their two reports."""
    reports = []
    for name in ("mpi", "inprocess"):
        path = tmp_path / f"{name}.json"
        full = (*args, "--quiet", "--report", str(path))
        proc = run_job(n, *full)[0] if name == "mpi" else inprocess(*full)
        assert proc.returncode == 0, (name, proc.stderr[-3000:])
        reports.append(json.loads(path.read_text()))
    mpi, local = reports
    assert mpi["transport"] == "mpi" and local["transport"] == "inprocess"
    assert mpi["model_digests_equal"] and local["model_digests_equal"]
    for scheme, run in mpi["runs"].items():
        other = local["runs"][scheme]
        assert run["model_digest"] == other["model_digest"], scheme
        assert run.get("gradient_digest") == other.get("gradient_digest"), scheme
        # the same bytes on every link class in every iteration (not under stragglers:
        # there a late sender's empty "gave up" depends on who was late, which differs)
        if "gradient_digest" not in run:
            assert [it["bytes"] for it in run["iterations"]] == \
                [it["bytes"] for it in other["iterations"]], scheme
    return mpi, local


def test_uncoded_coded_joint_hierarchical(tmp_path):
    both(tmp_path, 16, "--scheme", "uncoded,coded,joint", "--iterations", "3")


def test_uncoded_joint_flat(tmp_path):
    both(tmp_path, 4, "--layout", "flat", "--topology", "example-a", "--scheme",
         "uncoded,joint", "--dataset", "synthetic", "--dim", "300", "--iterations", "3")


def test_gradient_schemes(tmp_path):
    np.save(tmp_path / "t.npy", tree([4, 4, 4]))
    mpi, local = both(tmp_path, 16, "--workload", "gd", "--topology", str(tmp_path / "t.npy"),
                      "--scheme", "uncoded,gc,hgc", "--iterations", "4")
    assert len({r["gradient_digest"] for r in local["runs"].values()}) == 1
