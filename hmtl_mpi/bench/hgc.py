"""Gradient coding under real stragglers: ``python -m hmtl_mpi.bench hgc``.

For every straggler model (``--models``, the job's ``--straggle`` syntax) one job
runs uncoded, gc, hgc and hgc-jncss one after the other on the same data, tree
and delays (``--workload gd``: full-batch gradient descent on digits by default),
and checks that they end with the same model. Per scheme it records the median
and mean iteration time (the server's clock), the time to reach ``--target``
test accuracy (the sum of the iteration times until the model first reaches it)
and the bytes that reach the server per iteration, and prints every speed-up
over uncoded next to the delay model that produced it. The delays are real
sleeps of the straggling ranks; on one machine the links are memory copies, so
these times measure straggling, not the network.

Results: ``benchmarks/hgc/hgc.csv``, ``hgc.png`` and the reports in
``benchmarks/hgc/reports/``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from ..cli import positive_int
from ..planning.topology import tree
from . import mpiexec
from .network import REPO, write_csv

OUT_DIR = REPO / "benchmarks" / "hgc"
MODELS = ("fixed:5=0.3",                        # one persistently slow worker (rank 5 = user 2)
          "bernoulli:0.1:0.5",                  # each worker, each iteration: 10% chance of +0.5 s
          "shifted-exp:0.0005:5",               # heavy: 0.5 ms + Exp(mean 200 ms) per partition
          "shifted-exp:0.002:50+fixed:2=0.3")   # light random work and a slow edge (relay 2)
SCHEMES = "uncoded,gc,hgc,hgc-jncss"


def time_to(accuracy: list, seconds: list, target: float):
    """Seconds of training until the test accuracy first reaches ``target`` (None: never)."""
    total = 0.0
    for acc, s in zip(accuracy, seconds):
        total += s
        if acc >= target:
            return total
    return None


def rows_of(report: dict, model: str, target: float) -> list:
    runs = report["runs"] if "runs" in report else {report["scheme"]: report}
    rows = []
    for name, run in runs.items():
        seconds = [it["seconds"]["total"] for it in run["iterations"]]
        up = [it["bytes"]["relay_to_server"] + it["bytes"]["user_to_server"]
              for it in run["iterations"]]
        rows.append({"straggle": model, "scheme": name, "iterations": len(seconds),
                     "stragglers": "/".join(map(str, run["stragglers"])),
                     "load_per_worker": run["load_per_worker"],
                     "median_s": float(np.median(seconds)), "mean_s": float(np.mean(seconds)),
                     "time_to_target_s": time_to(run["test_accuracy"], seconds, target),
                     "target": target, "final_accuracy": run["test_accuracy"][-1],
                     "server_bytes_per_iteration": float(np.mean(up)),
                     "server_messages_used": run["master_messages_used"],
                     "identical_models": bool(report.get("model_digests_equal", True))})
    base = rows[0]
    for r in rows:
        r["speedup_mean"] = base["mean_s"] / r["mean_s"]
        r["speedup_to_target"] = (base["time_to_target_s"] / r["time_to_target_s"]
                                  if base["time_to_target_s"] and r["time_to_target_s"] else None)
    return rows


def markdown(rows: list) -> str:
    f = lambda x, fmt="{:.3f}": "-" if x is None else fmt.format(x)   # noqa: E731
    lines = ["| delay model (--straggle) | scheme | s_e/s_w | D | median s/it | mean s/it | "
             "speed-up (mean) | s to target | speed-up (to target) | server bytes/it |",
             "|" + "---|" * 10]
    for r in rows:
        lines.append(f"| `{r['straggle']}` | {r['scheme']} | {r['stragglers']} | "
                     f"{r['load_per_worker']} | {f(r['median_s'])} | {f(r['mean_s'])} | "
                     f"{f(r['speedup_mean'], '{:.2f}x')} | {f(r['time_to_target_s'], '{:.2f}')} | "
                     f"{f(r['speedup_to_target'], '{:.2f}x')} | "
                     f"{r['server_bytes_per_iteration']:,.0f} |")
    return "\n".join(lines)


def plot(rows: list, path: Path) -> None:
    import matplotlib  # local: plots only; matplotlib is optional (the [plots] extra)
    matplotlib.use("Agg")
    # local: plots only; matplotlib is optional (the [plots] extra)
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(r["straggle"] for r in rows))
    schemes = list(dict.fromkeys(r["scheme"] for r in rows))
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    x = np.arange(len(models))
    width = 0.8 / len(schemes)
    for s_idx, name in enumerate(schemes):
        mean = [next(r["mean_s"] for r in rows if r["straggle"] == m and r["scheme"] == name)
                for m in models]
        tt = [next(r["time_to_target_s"] or np.nan for r in rows
                   if r["straggle"] == m and r["scheme"] == name) for m in models]
        axes[0].bar(x + s_idx * width, mean, width, label=name)
        axes[1].bar(x + s_idx * width, tt, width, label=name)
    for ax, title in ((axes[0], "mean seconds per iteration"),
                      (axes[1], f"seconds to {rows[0]['target']:.0%} test accuracy")):
        ax.set_xticks(x + 0.4 - width / 2)
        ax.set_xticklabels([m.replace("+", "+\n") for m in models], fontsize=7)
        ax.set_title(title)
        ax.legend(fontsize=8)
    fig.suptitle("gradient coding under injected stragglers (real sleeps; digits, tree 4,4,4)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hmtl_mpi.bench hgc", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=";".join(MODELS),
                        help="straggler models separated by ';' (the --straggle syntax)")
    parser.add_argument("--scheme", default=SCHEMES, help=f"schemes (default {SCHEMES})")
    parser.add_argument("--tree", default="4,4,4", help="users per relay (default 4,4,4)")
    parser.add_argument("--dataset", default="digits", choices=("digits", "mnist"))
    parser.add_argument("--partitions", type=positive_int, default=12)
    parser.add_argument("--stragglers", default="1,1", help="hgc and gc: S_E,S_W (default 1,1)")
    parser.add_argument("--iterations", type=positive_int, default=40)
    parser.add_argument("--target", type=float, default=0.9,
                        help="test accuracy for the time-to-target figures (default 0.9)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(OUT_DIR / "hgc.csv"), help="CSV path")
    args = parser.parse_args(argv)

    sizes = [int(x) for x in args.tree.split(",")]
    n = 1 + len(sizes) + sum(sizes)
    out = Path(args.out)
    reports = out.parent / "reports"
    reports.mkdir(parents=True, exist_ok=True)
    launcher = mpiexec()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_hgc_") as tmp:
        gpath = os.path.join(tmp, "tree.npy")
        np.save(gpath, tree(sizes))
        for model in [m for m in args.models.split(";") if m]:
            tag = model.replace(":", "_").replace("+", "__").replace("=", "-").replace(",", "_")
            rpath = reports / f"{tag}.json"
            cmd = [launcher, "-n", str(n),
                   sys.executable, "-m", "hmtl_mpi", "--workload", "gd", "--topology", gpath,
                   "--scheme", args.scheme, "--dataset", args.dataset, "--partitions",
                   str(args.partitions), "--stragglers", args.stragglers, "--straggle", model,
                   "--iterations", str(args.iterations), "--seed", str(args.seed), "--quiet",
                   "--report", str(rpath)]
            load = os.getloadavg()[0]
            print(f"{model}: {n} ranks, load {load:.1f}", flush=True)
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=3600,
                                  env=dict(os.environ, PYTHONPATH=str(REPO)))
            if proc.returncode != 0:
                print(f"  FAILED (exit {proc.returncode}): {proc.stderr[-800:]}", flush=True)
                continue
            for r in rows_of(json.loads(rpath.read_text()), model, args.target):
                r["loadavg"] = round(max(load, os.getloadavg()[0]), 1)
                rows.append(r)
    if not rows:
        print("bench hgc: no run succeeded", file=sys.stderr)
        return 1
    write_csv(rows, out)
    try:
        plot(rows, out.with_suffix(".png"))
        print(f"wrote {out.with_suffix('.png')}")
    except ImportError:
        print("(matplotlib not installed: no plot; pip install -e '.[plots]')")
    print(markdown(rows))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
