"""A request given up at a loss keeps its buffer (hmtl_mpi.wire.ulfm.ABANDONED).

In one process (an Open MPI singleton with ULFM, the venv of tests/test_recovery_mpi.py):
a receive is posted through the endpoint into a 64 MB buffer (glibc maps a block that
large on its own and unmaps it when it is freed) and its caller drops both, as a scheme
does when a loss ends its iteration; the endpoint shrinks (revoke, shrink: the recovery's
first step), and only then does the matching message arrive. With the endpoint keeping the
request, the message lands in the kept buffer and the process goes on; with the request
dropped (the endpoint's bookkeeping switched off in the same script), the same message is
written into unmapped memory as soon as MPI progresses it and the process dies of SIGSEGV:
the test can fail.
"""

from __future__ import annotations

import os
import signal
import subprocess

import pytest
from test_recovery_mpi import ompi_python  # noqa: F401 - the fixture

from mpi_util import REPO

pytestmark = pytest.mark.mpi

SCRIPT = """
import gc, sys
import numpy as np
from mpi4py import MPI
from hmtl_mpi.wire import ulfm
from hmtl_mpi.wire.transport import MpiEndpoint

N = 8 << 20
if sys.argv[1] == "dropped":
    MpiEndpoint._track = lambda self, request, buf: request
ep = MpiEndpoint(MPI.COMM_WORLD, 5.0, survive=True)
data = np.full(N, 3.0)
ep.irecv(0, np.zeros(N), tag=7)          # given up: request and buffer dropped here
gc.collect()
send = MPI.COMM_WORLD.Isend(data, dest=0, tag=7)
lost, _ = ep.shrink()
print("lost", lost, "kept", len(ulfm.ABANDONED), flush=True)
junk = [np.ones(N // 4) for _ in range(4)]
try:
    send.Wait()                          # the message arrives after the shrink
except MPI.Exception as exc:
    print("send:", exc.Get_error_string(), flush=True)
for request, buf in ulfm.ABANDONED:
    request.Wait()
    print("landed", float(buf.min()), float(buf.max()), flush=True)
"""


def _run(python, mode: str, tmp_path):
    script = tmp_path / "abandon.py"
    script.write_text(SCRIPT)
    env = dict(os.environ, PYTHONPATH=str(REPO), OMPI_ALLOW_RUN_AS_ROOT="1",
               OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", OMPI_MCA_mpi_ft_enable="true")
    return subprocess.run([str(python), str(script), mode], capture_output=True, text=True,
                          timeout=120, env=env, cwd=str(tmp_path))


def test_a_receive_given_up_at_a_shrink_keeps_its_buffer(ompi_python, tmp_path):  # noqa: F811
    kept = _run(ompi_python, "kept", tmp_path)
    assert kept.returncode == 0, kept.stdout + kept.stderr[-2000:]
    assert "lost [] kept 1" in kept.stdout, kept.stdout
    assert "landed 3.0 3.0" in kept.stdout, kept.stdout          # the late message, whole


def test_the_same_receive_dropped_is_a_sigsegv(ompi_python, tmp_path):  # noqa: F811
    """What the endpoint's bookkeeping prevents (the test above would pass vacuously if
    this scenario did not write into freed memory)."""
    dropped = _run(ompi_python, "dropped", tmp_path)
    assert dropped.returncode == -signal.SIGSEGV, (dropped.returncode, dropped.stdout,
                                                   dropped.stderr[-2000:])
    assert "landed" not in dropped.stdout, dropped.stdout
