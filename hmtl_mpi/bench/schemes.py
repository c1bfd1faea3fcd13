"""The schemes side by side on the emulated network: ``python -m hmtl_mpi.bench schemes``.

For each topology (the paper's Fig. 2 network, and a heterogeneous one of the
Fig. 4/7 kind where the joint exchange saves more) and each W1:W2 pair, one
``launch/netns-run`` job runs every scheme of ``--scheme`` (default
uncoded,coded,joint) one after the other on the same shaped links and checks
that they end with identical models. Per scheme it records the planned and
measured loads and the median relay->server, server->relay and total seconds,
and prints them next to the ratios to the first scheme: the time ratio of each
relay<->server phase beside its load ratio, which it should follow when the
server link is the bottleneck. Needs root (network namespaces).

Results: ``benchmarks/schemes/schemes.csv`` and the per-run reports in
``benchmarks/schemes/reports/``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

from ..cli import positive_int, positive_int_list, scheme_list
from ..planning.topology import heterogeneous, load_topology
from .network import REPO, _parse_rates, run_one, write_csv

OUT_DIR = REPO / "benchmarks" / "schemes"
# name -> None (built in) or (K, r, d) of topology.heterogeneous (H = 4)
TOPOLOGIES = {"paper-fig2": None, "heterogeneous-16": (16, 2, 0.125)}


def _topology(name: str, tmp: str) -> tuple:
    """(--topology argument, G) for a named setting."""

    if TOPOLOGIES[name] is None:
        return name, load_topology(name)
    G = heterogeneous(*TOPOLOGIES[name])
    path = os.path.join(tmp, f"{name}.npy")
    np.save(path, G)
    return path, G


def rows_of(report: dict, setting: dict) -> list:
    """One row per scheme of a job's report."""
    runs = report["runs"] if "runs" in report else {report["scheme"]: report}
    first = next(iter(runs.values()))
    rows = []
    for name, run in runs.items():
        med = run["median_seconds"]
        ref = first["median_seconds"]
        row = dict(setting, scheme=name,
                   planned_up=run["planned_loads"]["uplink"],
                   planned_down=run["planned_loads"]["downlink"],
                   measured_up=round(run["measured_loads"]["uplink"], 4),
                   measured_down=round(run["measured_loads"]["downlink"], 4),
                   relay_to_server_s=round(med["relay_to_server"], 4),
                   server_to_relay_s=round(med["server_to_relay"], 4),
                   coding_s=round(med["encode"] + med["decode"], 4),
                   total_s=round(med["total"], 4),
                   up_time_ratio=round(med["relay_to_server"] / ref["relay_to_server"], 3),
                   up_load_ratio=round(run["measured_loads"]["uplink"]
                                       / first["measured_loads"]["uplink"], 3),
                   down_time_ratio=round(med["server_to_relay"] / ref["server_to_relay"], 3),
                   down_load_ratio=round(run["measured_loads"]["downlink"]
                                         / first["measured_loads"]["downlink"], 3),
                   total_ratio=round(med["total"] / ref["total"], 3),
                   identical_models=bool(report.get("model_digests_equal", True)),
                   bit_exact=bool(run["ivs_bit_exact"] and run["models_delivered_intact"]))
        rows.append(row)
    return rows


def markdown(rows: list) -> str:
    head = ("| topology | W1 / W2 | scheme | loads planned (up, down) | relay->server s "
            "(time / load vs first) | server->relay s (time / load vs first) | coding s | "
            "total s (vs first) | load avg |")
    lines = [head, "|" + "---|" * 9]
    for r in rows:
        lines.append(
            f"| {r['topology']} | {r['w1']} / {r['w2']} | {r['scheme']} | "
            f"({r['planned_up']:g}, {r['planned_down']:g}) | {r['relay_to_server_s']:.3f} "
            f"({r['up_time_ratio']:.3f} / {r['up_load_ratio']:.3f}) | {r['server_to_relay_s']:.3f} "
            f"({r['down_time_ratio']:.3f} / {r['down_load_ratio']:.3f}) | {r['coding_s']:.3f} | "
            f"{r['total_s']:.3f} ({r['total_ratio']:.3f}) | {r['loadavg']:.1f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hmtl_mpi.bench schemes", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scheme", type=scheme_list, default="uncoded,coded,joint",
                        help="schemes to compare, the first being the reference "
                             "(default uncoded,coded,joint)")
    parser.add_argument("--topologies", default=",".join(TOPOLOGIES),
                        help=f"comma list of {', '.join(TOPOLOGIES)} (default both)")
    parser.add_argument("--rates", default="100mbit:20mbit,100mbit:100mbit",
                        help="W1:W2 pairs in tc syntax (default 100mbit:20mbit,100mbit:100mbit)")
    parser.add_argument("--dim", type=positive_int, default=50_000,
                        help="float64 values per IV (default 50000 = 400 KB)")
    parser.add_argument("--iterations", type=positive_int, default=3,
                        help="iterations per scheme (default 3)")
    parser.add_argument("--repeats", type=positive_int_list, default="1",
                        help="seeds of the repeated jobs per setting, comma list (default 1)")
    parser.add_argument("--run-timeout", type=positive_int, default=600,
                        help="seconds per netns-run job (default 600)")
    parser.add_argument("--out", default=str(OUT_DIR / "schemes.csv"), help="CSV path")
    args = parser.parse_args(argv)
    names = [t for t in args.topologies.split(",") if t]
    unknown = [t for t in names if t not in TOPOLOGIES]
    if unknown:
        parser.error(f"--topologies: unknown {unknown[0]!r}; choose from {', '.join(TOPOLOGIES)}")
    if os.geteuid() != 0:
        print("bench schemes: netns-run needs root", file=sys.stderr)
        return 2
    out = Path(args.out)
    reports = out.parent / "reports"
    reports.mkdir(parents=True, exist_ok=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_schemes_") as tmp:
        for name in names:
            gpath, G = _topology(name, tmp)
            H, K = G.shape
            for w1, w2 in _parse_rates(args.rates):
                for seed in args.repeats:
                    s = {"H": H, "K": K, "w1": w1, "w2": w2, "dim": args.dim,
                         "iterations": args.iterations, "seed": seed}
                    tag = f"{name}_{w1}_{w2}_seed{seed}"
                    rpath = reports / f"{tag}.json"
                    print(f"{tag}: {1 + H + K} ranks, load {os.getloadavg()[0]:.1f}", flush=True)
                    info = run_one(s, ",".join(args.scheme), gpath, rpath,
                                   reports / f"{tag}.counters.json", args.run_timeout, print)
                    if info["status"] != "ok":
                        continue
                    report = json.loads(rpath.read_text())
                    setting = {"topology": name, "H": H, "K": K, "w1": w1, "w2": w2,
                               "dim": args.dim, "iterations": args.iterations, "seed": seed,
                               "loadavg": round(max(info["loadavg_before"],
                                                    info["loadavg_after"]), 1)}
                    rows += rows_of(report, setting)
    if not rows:
        print("bench schemes: no run succeeded", file=sys.stderr)
        return 1
    write_csv(rows, out)
    print(markdown(rows))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
