"""A slow relay against the straggler-tolerant exchange: ``python -m hmtl_mpi.bench tolerant``.

One relay (``--slow``, a world rank 1..H) is late by ``--delay`` seconds before its
uplink in every iteration (``--straggle fixed:RANK=DELAY``, a real sleep). Four jobs
on the same topology, data and seed (mpirun, one process per rank):

1. ``--scheme uncoded,coded,joint`` with the slow relay: everybody waits for it;
2. ``--scheme coded,joint --relay-stragglers S`` with the slow relay: nobody does;
3. and 4. the same two without any delay (what the tolerance costs when nobody is slow).

Per run: the median and mean iteration time (schemes with steps: barrier to barrier;
the tolerant exchange: the server's clock from one broadcast sent to the next), the
loads measured on the server's link against the plan, and the final model's digest:
every run of the four jobs must end with the same models. The machine's load average
is printed beside the figures.

Results: ``benchmarks/tolerant/tolerant.csv`` and the reports in
``benchmarks/tolerant/reports/``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from ..cli import positive_int
from . import mpiexec
from .network import REPO, write_csv

OUT_DIR = REPO / "benchmarks" / "tolerant"


def rows_of(report: dict, job: str, straggle: str, S: int) -> list:
    runs = report["runs"] if "runs" in report else {report["scheme"]: report}
    rows = []
    for name, run in runs.items():
        seconds = [it["seconds"]["total"] for it in run["iterations"]]
        rows.append({"job": job, "scheme": name, "relay_stragglers": S, "straggle": straggle,
                     "iterations": len(seconds),
                     "median_s": float(np.median(seconds)), "mean_s": float(np.mean(seconds)),
                     "uplink_measured": run["measured_loads"]["uplink"],
                     "uplink_planned": run["planned_loads"]["uplink"],
                     "downlink_measured": run["measured_loads"]["downlink"],
                     "downlink_planned": run["planned_loads"]["downlink"],
                     "ivs_bit_exact": run["ivs_bit_exact"],
                     "models_intact": run["models_delivered_intact"],
                     "model_digest": run["model_digest"][:16]})
    return rows


def markdown(rows: list) -> str:
    head = ("| job | scheme | S | slow relay | median s/it | mean s/it | uplink meas./plan "
            "(IVs) | downlink meas./plan (IVs) | model digest |")
    lines = [head, "|" + "---|" * 9]
    for r in rows:
        lines.append(f"| {r['job']} | {r['scheme']} | {r['relay_stragglers']} | "
                     f"`{r['straggle']}` | {r['median_s']:.4f} | {r['mean_s']:.4f} | "
                     f"{r['uplink_measured']:.2f} / {r['uplink_planned']:.2f} | "
                     f"{r['downlink_measured']:.2f} / {r['downlink_planned']:.2f} | "
                     f"{r['model_digest']} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hmtl_mpi.bench tolerant", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--topology", default="paper-fig2")
    parser.add_argument("--ranks", type=positive_int, default=16,
                        help="1 + H + K of the topology (default 16, paper-fig2)")
    parser.add_argument("--slow", type=positive_int, default=2,
                        help="world rank of the slow relay (default 2: relay 2)")
    parser.add_argument("--delay", type=float, default=0.3, help="seconds late (default 0.3)")
    parser.add_argument("--relay-stragglers", type=positive_int, default=1)
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--iterations", type=positive_int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(OUT_DIR / "tolerant.csv"), help="CSV path")
    args = parser.parse_args(argv)

    out = Path(args.out)
    reports = out.parent / "reports"
    reports.mkdir(parents=True, exist_ok=True)
    slow = f"fixed:{args.slow}={args.delay:g}"
    S = args.relay_stragglers
    jobs = [("waits", "uncoded,coded,joint", 0, slow),
            ("tolerant", "coded,joint", S, slow),
            ("waits, no delay", "uncoded,coded,joint", 0, "none"),
            ("tolerant, no delay", "coded,joint", S, "none")]
    rows = []
    for job, schemes, s, straggle in jobs:
        rpath = reports / f"{job.replace(', ', '-').replace(' ', '-')}.json"
        cmd = [mpiexec(), "-n", str(args.ranks), sys.executable, "-m", "hmtl_mpi",
               "--topology", args.topology, "--scheme", schemes, "--dataset", args.dataset,
               "--iterations", str(args.iterations), "--seed", str(args.seed), "--quiet",
               "--report", str(rpath)]
        if s:
            cmd += ["--relay-stragglers", str(s)]
        if straggle != "none":
            cmd += ["--straggle", straggle]
        load = os.getloadavg()[0]
        print(f"{job}: --scheme {schemes}{f' --relay-stragglers {s}' if s else ''} "
              f"--straggle {straggle}; load {load:.1f}", flush=True)
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=3600,
                              env=dict(os.environ, PYTHONPATH=str(REPO)))
        if proc.returncode != 0:
            print(f"  FAILED (exit {proc.returncode}): {proc.stderr[-800:]}", flush=True)
            continue
        for r in rows_of(json.loads(rpath.read_text()), job, straggle, s):
            r["loadavg"] = round(max(load, os.getloadavg()[0]), 1)
            rows.append(r)
    if not rows:
        print("bench tolerant: no run succeeded", file=sys.stderr)
        return 1
    write_csv(rows, out)
    print(markdown(rows))
    by = {(r["job"], r["scheme"]): r["mean_s"] for r in rows}
    for name in ("coded", "joint"):
        if (("waits", name) in by) and (("tolerant", name) in by):
            print(f"{name} with a slow relay: tolerant {by[('tolerant', name)]:.4f} s/it against "
                  f"{by[('waits', name)]:.4f} s/it waiting for it: "
                  f"{by[('tolerant', name)] / by[('waits', name)]:.3f}x (mean)")
    print(f"every run ends with the same models: {len({r['model_digest'] for r in rows}) == 1}")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
