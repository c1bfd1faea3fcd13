"""The MPI job on one machine: ``python -m hmtl_mpi.bench runtime [--dims ...]``.

Runs the job with the synthetic learner at several ``--dim`` values and prints
the median seconds per phase of every scheme side by side. On one machine with
more ranks than cores the ranks share CPUs and the links are memory copies:
these are not network figures (``launch/netns-run`` and ``bench network`` give those).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

from ..cli import positive_int, positive_int_list
from ..planning.topology import load_topology
from ..vocabulary import PHASES
from . import mpiexec


def run(dims=(1_000, 100_000, 1_000_000), iterations=3, topology="paper-fig2",
        json_out=False, schemes="uncoded,coded,joint") -> dict:
    """Run the MPI job (``schemes``, synthetic learner) at several --dim values.

    Reports the median seconds per phase of each scheme, and each one's ratio to
    the first. On one machine with more ranks than cores the ranks share CPUs and
    the links are memory copies: these are not network figures.
    """

    H, K = load_topology(topology).shape
    launcher = mpiexec()
    results = {"topology": topology, "ranks": 1 + H + K, "cores": os.cpu_count(),
               "iterations": iterations, "schemes": schemes, "runs": []}
    for dim in dims:
        with tempfile.TemporaryDirectory() as tmp:
            report = os.path.join(tmp, "r.json")
            cmd = [launcher, "-n", str(1 + H + K), sys.executable, "-m", "hmtl_mpi",
                   "--topology", topology, "--scheme", schemes, "--dataset", "synthetic",
                   "--dim", str(dim), "--iterations", str(iterations), "--quiet", "--report", report]
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
            if proc.returncode != 0:
                raise RuntimeError(f"dim {dim}: job failed:\n{proc.stderr[-2000:]}")
            with open(report) as fh:
                data = json.load(fh)
        runs = data["runs"] if "runs" in data else {data["scheme"]: data}
        row = {"dim": dim, "model_digests_equal": data.get("model_digests_equal", True)}
        for name, run_ in runs.items():
            row[name] = {"median_seconds": run_["median_seconds"],
                         "measured_loads": run_["measured_loads"]}
        results["runs"].append(row)
        if not json_out:
            names = list(runs)
            print(f"\n--dim {dim} ({8 * dim / 1e6:g} MB per IV), {1 + H + K} ranks on "
                  f"{os.cpu_count()} cores, median of {iterations} iterations (seconds):")
            print(f"  {'phase':18}" + "".join(f"{n:>12}" for n in names)
                  + "".join(f"{n + '/' + names[0]:>18}" for n in names[1:]))
            for p in PHASES:
                vals = [row[n]["median_seconds"][p] for n in names]
                print(f"  {p:18}" + "".join(f"{v:>12.4f}" for v in vals)
                      + "".join(f"{v / vals[0]:>18.3f}" if vals[0] > 0 else f"{'':>18}"
                                for v in vals[1:]))
            print("  loads: " + "; ".join(
                f"{n} ({row[n]['measured_loads']['uplink']:.4f}, "
                f"{row[n]['measured_loads']['downlink']:.4f})" for n in names)
                  + f"; models bit-identical: {row['model_digests_equal']}")
    if json_out:
        print(json.dumps(results, indent=1))
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hmtl_mpi.bench runtime", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--dims", default="1000,100000,1000000", type=positive_int_list,
                        help="comma-separated --dim values (default 1000,100000,1000000)")
    parser.add_argument("--iterations", type=positive_int, default=3, help="iterations per run")
    parser.add_argument("--topology", default="paper-fig2", help="topology (default paper-fig2)")
    parser.add_argument("--scheme", default="uncoded,coded,joint",
                        help="schemes to compare (default uncoded,coded,joint)")
    args = parser.parse_args(argv)
    run(args.dims, args.iterations, args.topology, args.json, args.scheme)
    return 0


if __name__ == "__main__":
    sys.exit(main())
