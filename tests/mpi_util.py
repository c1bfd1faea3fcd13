"""Starting real mpiexec jobs from tests, always with a timeout."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def mpiexec() -> str:
    """The mpiexec of the MPI wheel installed next to this Python, else the one on PATH."""
    here = Path(sys.executable).parent / "mpiexec"
    return str(here) if here.exists() else (shutil.which("mpiexec") or "mpiexec")


def run_job(n: int, *args: str, timeout: float = 240, env=None) -> tuple:
    """Run ``mpiexec -n n python -m hmtl_mpi ARGS``; returns (completed process, seconds).

    MPIEXEC_TIMEOUT makes hydra kill the job too, should the subprocess timeout
    itself ever fail to.
    """
    full_env = dict(os.environ)
    full_env.setdefault("MPIEXEC_TIMEOUT", str(int(timeout)))
    full_env["PYTHONPATH"] = str(REPO) + os.pathsep + full_env.get("PYTHONPATH", "")
    full_env.update(env or {})
    start = time.monotonic()
    proc = subprocess.run([mpiexec(), "-n", str(n), sys.executable, "-m", "hmtl_mpi", *args],
                          capture_output=True, text=True, timeout=timeout, env=full_env,
                          cwd=str(REPO))
    return proc, time.monotonic() - start
