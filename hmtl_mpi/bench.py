"""Benchmarks: ``python -m hmtl_mpi.bench {plan,coding,mocha,runtime,network} ...``.

``network`` takes the options of ``python -m hmtl_mpi.bench_network`` (the
emulated cluster of ``launch/netns-run``; needs root).

Each prints measured figures next to a reference measured in the same run.
They are benchmarks, not tests: nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

from .cli import positive_int, positive_int_list


def runtime_bench(dims=(1_000, 100_000, 1_000_000), iterations=3, topology="paper-fig2",
                  json_out=False) -> dict:
    """Run the MPI job (both schemes, synthetic learner) at several --dim values.

    Reports the median seconds per phase of each scheme. On one machine with
    more ranks than cores the ranks share CPUs and the links are memory copies:
    these are not network figures (``launch/netns-run`` gives those).
    """
    from .topology import load_topology
    from .transport import PHASES

    H, K = load_topology(topology).shape
    mpiexec = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    if not os.path.exists(mpiexec):
        mpiexec = "mpiexec"
    results = {"topology": topology, "ranks": 1 + H + K, "cores": os.cpu_count(),
               "iterations": iterations, "runs": []}
    for dim in dims:
        with tempfile.TemporaryDirectory() as tmp:
            report = os.path.join(tmp, "r.json")
            cmd = [mpiexec, "-n", str(1 + H + K), sys.executable, "-m", "hmtl_mpi",
                   "--topology", topology, "--dataset", "synthetic", "--dim", str(dim), "--iterations", str(iterations),
                   "--quiet", "--report", report]
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
            if proc.returncode != 0:
                raise RuntimeError(f"dim {dim}: job failed:\n{proc.stderr[-2000:]}")
            with open(report) as fh:
                data = json.load(fh)
        row = {"dim": dim, "model_digests_equal": data["model_digests_equal"]}
        for scheme, run in data["runs"].items():
            row[scheme] = {"median_seconds": run["median_seconds"],
                           "measured_loads": run["measured_loads"]}
        results["runs"].append(row)
        if not json_out:
            print(f"\n--dim {dim} ({8 * dim / 1e6:g} MB per IV), {1 + H + K} ranks on "
                  f"{os.cpu_count()} cores, median of {iterations} iterations:")
            print(f"  {'phase':18}{'uncoded s':>12}{'coded s':>12}{'coded/uncoded':>15}")
            for p in PHASES:
                u = row["uncoded"]["median_seconds"][p]
                c = row["coded"]["median_seconds"][p]
                ratio = f"{c / u:>15.3f}" if u > 0 else f"{'':>15}"
                print(f"  {p:18}{u:>12.4f}{c:>12.4f}{ratio}")
            print(f"  loads: coded {row['coded']['measured_loads']}, "
                  f"uncoded {row['uncoded']['measured_loads']}; "
                  f"models bit-identical: {row['model_digests_equal']}")
    if json_out:
        print(json.dumps(results, indent=1))
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hmtl_mpi.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] == "network":
        from .bench_network import run as network_run
        return network_run(argv[1:])
    parser.add_argument("what", choices=("plan", "coding", "mocha", "runtime", "network"),
                        help="plan: planner at K = 2,000, H = 50; coding: encode/combine/decode "
                             "throughput vs memcpy; mocha: local update, numba vs Python; "
                             "runtime: the MPI job at --dim 1e3, 1e5, 1e6; network: the emulated "
                             "cluster (see python -m hmtl_mpi.bench network --help)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--dims", default="1000,100000,1000000", type=positive_int_list,
                        help="runtime: comma-separated --dim values")
    parser.add_argument("--iterations", type=positive_int, default=3, help="runtime: iterations per run")
    parser.add_argument("--topology", default="paper-fig2", help="runtime: topology")
    args = parser.parse_args(argv)
    if args.what == "runtime":
        runtime_bench(args.dims, args.iterations, args.topology, args.json)
        return 0
    module = {"plan": "bench_plan", "coding": "bench_coding", "mocha": "bench_mocha"}[args.what]
    mod = __import__(f"hmtl_mpi.{module}", fromlist=["run"])
    mod.run(json_out=args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
