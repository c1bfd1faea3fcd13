"""What a job costs besides its iterations: ``python -m hmtl_mpi.bench startup``.

Measured in one run, alternating so that the machine's load hits every variant alike
(median of ``--repeats``):

* ``bare``   -- ``mpiexec -n N python -c "from mpi4py import MPI; import numpy"`` and a
  barrier: the floor any MPI job on this machine pays to start;
* ``job``    -- the default job (``python -m hmtl_mpi``: digits, MOCHA, uncoded and
  coded), wall time, and the sum of its iterations' measured totals (from
  ``--report``); issue 12's target is ``job <= 2.5 x (bare + iterations)``, issue
  23's ``job - iterations <= 2.5 x bare``: the start-up itself within 2.5 bare starts.
  One untimed job of each checkout goes first, so that every timed one finds the
  caches of a machine that ran the job before (SVM baselines, plans and codes,
  bytecode);
* ``--against DIR``: the same job from another checkout of the package (e.g. a
  ``git worktree`` of an older commit), run from that folder, for a before/after;
* ``imports``: CPU seconds one rank spends importing the job's modules (NumPy already
  loaded), compiling them from source as under ``PYTHONDONTWRITEBYTECODE=1`` and
  reading the bytecode the job keeps in its cache (:mod:`hmtl_mpi.job.bytecode`);
* ``barrier``: seconds per barrier of N ranks with the runtime's way of waiting
  (``Ibarrier`` + ``Test`` + the sleep of :mod:`hmtl_mpi.wire.transport`), with the earlier
  way (sleeps doubling from 20 us to 1 ms) and with a blocking ``MPI_Barrier``.

With more ranks than cores every figure includes the ranks' competition for CPUs:
that is what the job meets too.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from ..cli import positive_int
from . import mpiexec

BARE = "from mpi4py import MPI; import numpy; MPI.COMM_WORLD.Barrier()"

BARRIERS = r"""
import sys, time
from mpi4py import MPI
from hmtl_mpi.wire import transport
comm = MPI.COMM_WORLD
n = int(sys.argv[1])

def old_wait(req):
    pause = 2e-5
    while not req.Test():
        time.sleep(pause)
        pause = min(pause * 2, 1e-3)

endpoint = transport.MpiEndpoint(comm, 60.0)
ways = {"runtime": lambda: endpoint.barrier("world", "barrier"), "doubling to 1 ms": lambda: old_wait(comm.Ibarrier()),
        "blocking MPI_Barrier": comm.Barrier}
out = {}
for name, fn in ways.items():
    for _ in range(5):
        fn()
    comm.Barrier()
    t0 = MPI.Wtime()
    for _ in range(n):
        fn()
    out[name] = (MPI.Wtime() - t0) / n
if comm.rank == 0:
    import json
    print(json.dumps(out))
"""


IMPORTS = r"""
import sys, time
import numpy
from hmtl_mpi.job.bytecode import kept
t0 = time.process_time()
if sys.argv[1] == "kept":
    with kept():
        import hmtl_mpi.job.runtime
else:
    import hmtl_mpi.job.runtime
print(time.process_time() - t0)
"""


def import_cpu(repeats: int) -> dict:
    """Median CPU seconds of one rank's imports: compiled from source, and kept bytecode
    (filled by an untimed first run)."""
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    env.pop("PYTHONPYCACHEPREFIX", None)
    out = {}
    for how in ("source", "kept"):
        subprocess.run([sys.executable, "-c", IMPORTS, how], env=env, check=True,
                       capture_output=True)
        out[how] = statistics.median(float(subprocess.run(
            [sys.executable, "-c", IMPORTS, how], env=env, check=True, capture_output=True,
            text=True).stdout) for _ in range(repeats))
    return out


def _timed(cmd, cwd=None, timeout=600) -> tuple:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=cwd)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return time.perf_counter() - t0, proc


def _job(n: int, cwd: str | None, tmp: str, tag: str) -> dict:
    report = os.path.join(tmp, f"{tag}.json")
    wall, _ = _timed([mpiexec(), "-n", str(n), sys.executable, "-m", "hmtl_mpi", "--quiet",
                      "--report", report], cwd=cwd)
    data = json.load(open(report))
    runs = data["runs"].values() if "runs" in data else [data]
    iterations = sum(it["seconds"]["total"] for r in runs for it in r["iterations"])
    ratio = {r["scheme"]: r["median_seconds"]["total"] for r in runs}
    return {"wall_s": wall, "iterations_s": iterations, "median_total_s": ratio}


def run(repeats: int = 3, against: str | None = None, barriers: int = 200,
        json_out: bool = False) -> dict:
    ranks = 16                                     # the default job: paper-fig2
    rows = {"bare": [], "job": [], "against": []}
    with tempfile.TemporaryDirectory() as tmp:
        _job(ranks, None, tmp, "warm")                 # caches filled, untimed
        if against:
            _job(ranks, against, tmp, "warm-against")
        for rep in range(repeats):
            rows["bare"].append(_timed([mpiexec(), "-n", str(ranks), sys.executable, "-c",
                                        BARE])[0])
            rows["job"].append(_job(ranks, None, tmp, f"job{rep}"))
            if against:
                rows["against"].append(_job(ranks, against, tmp, f"against{rep}"))
        _, proc = _timed([mpiexec(), "-n", str(ranks), sys.executable, "-c", BARRIERS,
                          str(barriers)])
    barrier = json.loads(proc.stdout.strip().splitlines()[-1])
    imports = import_cpu(max(repeats, 3))
    med = statistics.median
    result = {"ranks": ranks, "cores": os.cpu_count(), "repeats": repeats,
              "load_average_end": os.getloadavg()[0],
              "bare_s": med(rows["bare"]),
              "job_wall_s": med(r["wall_s"] for r in rows["job"]),
              "job_iterations_s": med(r["iterations_s"] for r in rows["job"]),
              "barrier_s": barrier, "import_cpu_s": imports}
    result["target_s"] = 2.5 * (result["bare_s"] + result["job_iterations_s"])
    result["startup_s"] = med(r["wall_s"] - r["iterations_s"] for r in rows["job"])
    result["startup_x_bare"] = result["startup_s"] / result["bare_s"]
    result["job_median_total_s"] = {k: med(r["median_total_s"][k] for r in rows["job"])
                                    for k in rows["job"][0]["median_total_s"]}
    if against:
        result["against"] = against
        result["against_wall_s"] = med(r["wall_s"] for r in rows["against"])
        result["against_iterations_s"] = med(r["iterations_s"] for r in rows["against"])
        result["against_startup_s"] = med(r["wall_s"] - r["iterations_s"]
                                          for r in rows["against"])
        result["against_startup_x_bare"] = result["against_startup_s"] / result["bare_s"]
        result["against_median_total_s"] = {
            k: med(r["median_total_s"][k] for r in rows["against"])
            for k in rows["against"][0]["median_total_s"]}
    if json_out:
        print(json.dumps(result, indent=1))
        return result
    print(f"start-up and waiting, {ranks} ranks on {result['cores']} cores, median of {repeats} "
          f"(load average {result['load_average_end']:.1f} at the end)")
    print(f"  bare MPI start (mpi4py + numpy + a barrier)   {result['bare_s']:7.2f} s")
    print(f"  default job, wall                             {result['job_wall_s']:7.2f} s "
          f"(iterations {result['job_iterations_s']:.2f} s; target 2.5 x (bare + iterations) "
          f"= {result['target_s']:.2f} s)")
    print(f"  start-up (wall - iterations)                  {result['startup_s']:7.2f} s "
          f"= {result['startup_x_bare']:.2f} x bare (issue 23's goal: 2.5 x)")
    print("  median iteration: " + ", ".join(f"{k} {1e3 * v:.1f} ms"
                                            for k, v in result["job_median_total_s"].items()))
    if against:
        print(f"  the same job from {against}: wall {result['against_wall_s']:.2f} s "
              f"(iterations {result['against_iterations_s']:.2f} s; start-up "
              f"{result['against_startup_s']:.2f} s = {result['against_startup_x_bare']:.2f} x "
              f"bare); median iteration: "
              + ", ".join(f"{k} {1e3 * v:.1f} ms"
                          for k, v in result["against_median_total_s"].items()))
    print(f"  one rank's imports of the job, CPU: compiled from source {imports['source']:.3f} s, "
          f"kept bytecode {imports['kept']:.3f} s (x {ranks} ranks on {result['cores']} cores)")
    print(f"  one barrier of {ranks} ranks: " + ", ".join(f"{k} {1e3 * v:.2f} ms"
                                                       for k, v in barrier.items()))
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hmtl_mpi.bench startup",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=positive_int, default=3)
    parser.add_argument("--against", metavar="DIR",
                        help="a checkout of the package to time side by side (run from DIR)")
    parser.add_argument("--barriers", type=positive_int, default=200)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.against and not os.path.isdir(os.path.join(args.against, "hmtl_mpi")):
        parser.error(f"--against {args.against}: no hmtl_mpi package in that folder")
    run(args.repeats, args.against, args.barriers, json_out=args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
