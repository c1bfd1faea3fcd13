"""Every figure of the paper's Sections IV-V into one folder: ``python -m hmtl_mpi.bench paper``.

    python -m hmtl_mpi.bench paper [--out DIR] [--quick] [--placements N]
                                   [--time-placements N] [--figs fig3,...] [--list]

* Fig. 3 and Fig. 4 (planned loads, no MPI): :mod:`.loads` with ``--placements``
  random placements per point (default 50, as the paper): ``fig3.csv``/``.png``,
  ``fig4.csv``/``.png``.
* Fig. 5, 6, 7 (time per iteration, root: network namespaces): :func:`.network.sweep`
  on ``launch/netns-run`` with MOCHA on MNIST (the paper's learner and data, the
  job's ``--dataset mnist``), at W1 = W2 = 100 Mbit/s and at W1 = 100, W2 = 20
  Mbit/s (server link dominant; ``--rates``), ``--time-placements`` random
  placements per point (default 3), both schemes in one job per placement (one
  after the other on the same links, final models compared). Per point the CSV
  has the measured total and relay<->server seconds (median over the iterations,
  mean over the placements), the compute phases, eq. (13)'s model (as the paper
  evaluates it, ``*_paper_model_total_s``, and per link with the measured loads,
  ``*_model_total_s``), the load during every run and whether it was loaded
  (others kept more than ``--max-load`` processes runnable; such runs are run once
  more). ``figN.csv`` (means), ``figN_runs.csv`` (every placement), ``figN.png``,
  ``reports/`` (every job's JSON report, counters and command).

  Settings (the paper's Section V-B, where feasible here):
  fig5  K = 20, H in {10, 20}, every user on r random relays, r in {1, 3, 5, 7, 9}
  fig6  H = 5, r in {2, 3}, every user on r random relays, K in {10, 15, ..., 40}
  fig7  K in {20, 30}, H = 4, r = 2, relay degrees (1/2 +- d)K, G uniform among
        such graphs, d in {0, 0.1, ..., 0.4} (whole degrees for both K)

``--quick`` (CI): Fig. 3/4 with 3 placements and 2 x values each, and one time
point (the Fig. 6 setting K = 10, H = 5, r = 3, one placement, 2 iterations, 1
Gbit/s links, no repeat of loaded runs) into ``DIR`` (default
``benchmarks/paper/quick``).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path

from ..cli import positive_float, positive_int, seed_value
from ..learning.learners import DATASETS
from . import loads as bl
from . import network as bn

OUT_DIR = bn.REPO / "benchmarks" / "paper"
FIGS = ("fig3", "fig4", "fig5", "fig6", "fig7")
TIME_FIGS = ("fig5", "fig6", "fig7")
RATES = "100mbit:100mbit,100mbit:20mbit"
TIME_PLACEMENTS = 3
ITERATIONS = 10

# The time figures' settings, as network.settings_for reads them.
FULL = dict(K5=20, H5=(10, 20), rs=(1, 3, 5, 7, 9), r6=(2, 3), Ks=tuple(range(10, 41, 5)),
            fig6_topology="random", K7=(20, 30), ds=(), fig7_topology="random")
QUICK = dict(FULL, r6=(3,), Ks=(10,))
QUICK_LOADS = dict(placements=3, Ks=(10, 20), Hs=bl.FIG3_HS, ds=(0.0, 0.4))
QUICK_TIME = dict(figs=("fig6",), rates="1gbit:1gbit", iterations=2, placements=1)

TITLES = {
    "fig5": "Fig. 5 setting: K = 20, H in {10, 20}, r random relays per user, r swept",
    "fig6": "Fig. 6 setting: H = 5, r in {2, 3} random relays per user, K swept",
    "fig7": "Fig. 7 setting: K in {20, 30}, H = 4, r = 2, relay degrees (1/2 +- d)K, d swept",
}


def time_settings(fig: str, rates: str, iterations: int, seed: int, dataset: str,
                  job_args=(), quick: bool = False) -> list[dict]:
    """The settings of time figure ``fig`` (no runs)."""
    ns = argparse.Namespace(rates=rates, iterations=iterations, seed=seed, dim=0,
                            dataset=dataset, job_args=list(job_args),
                            **(QUICK if quick else FULL))
    return bn.settings_for(fig, ns)


def loads_figure(fig: str, out: Path, placements: int, seed: int, quick: bool, log) -> dict:
    """Fig. 3 or 4: CSV (and PNG if matplotlib is there); returns what it did."""
    t0, load0 = time.perf_counter(), os.getloadavg()[0]
    clock = {}
    if fig == "fig3":
        Ks = QUICK_LOADS["Ks"] if quick else bl.FIG3_KS
        rows = bl.fig3_rows(Ks, bl.FIG3_HS, placements, seed, clock=clock, log=log)
    else:
        ds = QUICK_LOADS["ds"] if quick else bl.default_ds()
        rows = bl.fig4_rows(ds, bl.FIG4_K, placements, seed, clock=clock, log=log)
    csv_path, png = out / f"{fig}.csv", out / f"{fig}.png"
    bn.write_csv(rows, csv_path)
    drawn = bl.have_matplotlib()
    if drawn:
        bl.plot(rows, png, fig)
    else:
        log(f"warning: {fig}: {bl.NO_MATPLOTLIB}")
    return {"figure": fig, "csv": str(csv_path), "png": str(png) if drawn else None,
            "placements": placements, "points": len(rows),
            "seconds": round(time.perf_counter() - t0, 1), "planner_seconds": clock,
            "loadavg_before": load0, "loadavg_after": os.getloadavg()[0]}


def time_figure(fig: str, out: Path, settings: list[dict], placements: int, quick: bool,
                args, log) -> dict:
    """Fig. 5, 6 or 7 on the emulated network: CSV, runs CSV, PNG, reports."""
    t0, load0 = time.perf_counter(), os.getloadavg()[0]
    csv_path = out / f"{fig}.csv"
    rows = bn.sweep(settings, csv_path, out / "reports", run_timeout=args.run_timeout,
                    budget=args.budget, reuse=args.reuse, placements=placements, one_job=True,
                    max_load=args.max_load, repeat_loaded=not quick, log=log)
    png = out / f"{fig}.png"
    drawn = bool(rows) and bl.have_matplotlib()
    if drawn:
        bn.plot(rows, png, TITLES[fig] + f"  ({bn.data_label(args.dataset, '')}, mean of "
                f"{placements} placement(s); solid measured, dashed model)")
    elif rows:
        log(f"warning: {fig}: {bl.NO_MATPLOTLIB}")
    return {"figure": fig, "csv": str(csv_path), "png": str(png) if drawn else None,
            "placements": placements, "points": len(rows),
            "jobs": sum(len(bn.placements_of(s, placements)) for s in settings),
            "seconds": round(time.perf_counter() - t0, 1),
            "loadavg_before": load0, "loadavg_after": os.getloadavg()[0]}


def fig_list(text) -> tuple:
    figs = tuple(x.strip() for x in str(text).split(",") if x.strip())
    bad = [f for f in figs if f not in FIGS]
    if not figs or bad:
        raise argparse.ArgumentTypeError(f"expected a comma list of {', '.join(FIGS)}, got "
                                         f"{text!r}")
    return figs


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m hmtl_mpi.bench paper",
        usage="python -m hmtl_mpi.bench paper [--out DIR] [--quick] [--placements N] [options]",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", help="the folder (default benchmarks/paper, with --quick "
                                 "benchmarks/paper/quick)")
    p.add_argument("--quick", action="store_true", help="the tiny CI version (see above)")
    p.add_argument("--figs", type=fig_list, default=FIGS,
                   help="which figures, a comma list (default all: fig3,fig4,fig5,fig6,fig7)")
    p.add_argument("--placements", type=positive_int, default=None,
                   help=f"Fig. 3/4: random placements per point (default {bl.DEFAULT_PLACEMENTS}; "
                        f"--quick {QUICK_LOADS['placements']})")
    p.add_argument("--time-placements", type=positive_int, default=None,
                   help=f"Fig. 5-7: random placements per point (default {TIME_PLACEMENTS}; "
                        f"--quick 1)")
    p.add_argument("--rates", default=None,
                   help=f"Fig. 5-7: W1:W2 pairs in tc syntax (default {RATES}; --quick "
                        f"{QUICK_TIME['rates']})")
    p.add_argument("--iterations", type=positive_int, default=None,
                   help=f"Fig. 5-7: MOCHA iterations per job (default {ITERATIONS}; --quick 2)")
    p.add_argument("--dataset", choices=[d for d in DATASETS if d != "synthetic"],
                   default="mnist", help="Fig. 5-7: the data MOCHA learns (default mnist)")
    p.add_argument("--job-args", type=shlex.split, default=[], metavar="'ARGS'",
                   help="Fig. 5-7: more options for every job, one quoted string (e.g. "
                        "--job-args='--data-dir UCI_HAR' with --dataset har)")
    p.add_argument("--seed", type=seed_value, default=0,
                   help="seed of the placements and of the jobs' data and code (default 0)")
    p.add_argument("--max-load", type=positive_float, default=float(os.cpu_count() or 1),
                   help="Fig. 5-7: a run is 'loaded' (marked, run once more) when others kept "
                        "more processes than this runnable on average (default: the cores)")
    p.add_argument("--run-timeout", type=positive_float, default=300,
                   help="seconds per netns-run job (default 300)")
    p.add_argument("--budget", type=float, default=0,
                   help="Fig. 5-7: stop starting jobs after this many seconds (0: no limit)")
    p.add_argument("--reuse", action="store_true",
                   help="Fig. 5-7: use the kept report of a job instead of running it again")
    p.add_argument("--list", action="store_true",
                   help="print the time figures' jobs and their number, run nothing")
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    quick = args.quick
    out = Path(args.out) if args.out else (OUT_DIR / "quick" if quick else OUT_DIR)
    placements = args.placements or (QUICK_LOADS["placements"] if quick else bl.DEFAULT_PLACEMENTS)
    time_placements = args.time_placements or (QUICK_TIME["placements"] if quick
                                               else TIME_PLACEMENTS)
    rates = args.rates or (QUICK_TIME["rates"] if quick else RATES)
    iterations = args.iterations or (QUICK_TIME["iterations"] if quick else ITERATIONS)
    time_figs = [f for f in args.figs if f in TIME_FIGS and (not quick or f in QUICK_TIME["figs"])]
    try:
        for w1, w2 in bn._parse_rates(rates):
            bn.rate_bps(w1), bn.rate_bps(w2)
    except (SystemExit, ValueError) as exc:
        parser.error(f"argument --rates: {str(exc).replace('--rates: ', '')}")
    settings = {f: time_settings(f, rates, iterations, args.seed, args.dataset, args.job_args,
                                 quick=quick)
                for f in time_figs}
    if args.list:
        n = 0
        for f in time_figs:
            for s in settings[f]:
                for p in bn.placements_of(s, time_placements):
                    print(bn.setting_tag(p), f"ranks={1 + p['H'] + p['K']}")
                    n += 1
        print(f"{n} jobs (each runs uncoded then coded)")
        return 0
    if time_figs and os.geteuid() != 0:
        parser.error(f"argument --figs: {', '.join(time_figs)} run on emulated networks "
                     f"(launch/netns-run) and need root; give --figs fig3,fig4 for the loads only")

    def log(msg):
        print(msg, flush=True)

    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    done = []
    for fig in args.figs:
        if fig in ("fig3", "fig4"):
            log(f"== {fig}: planned loads, {placements} placements per point")
            done.append(loads_figure(fig, out, placements, args.seed, quick, log))
        elif fig in time_figs:
            log(f"== {fig}: MOCHA on {args.dataset}, {len(settings[fig])} points x "
                f"{time_placements} placement(s), rates {rates}, {iterations} iterations")
            done.append(time_figure(fig, out, settings[fig], time_placements, quick, args, log))
        else:
            log(f"== {fig}: skipped (--quick has one time point, the fig6 one)")
            continue
        log(f"   {fig}: {done[-1]['points']} points in {done[-1]['seconds']} s, load average "
            f"{done[-1]['loadavg_before']:.1f} -> {done[-1]['loadavg_after']:.1f}")
    given = sys.argv[1:] if argv is None else list(argv)
    summary = {"command": " ".join(["python -m hmtl_mpi.bench paper", *given]),
               "quick": quick, "seconds": round(time.perf_counter() - t0, 1),
               "cores": os.cpu_count(), "loadavg_end": os.getloadavg(), "figures": done}
    (out / "paper_run.json").write_text(json.dumps(summary, indent=1) + "\n")
    log(f"wrote {out}/: " + ", ".join(Path(d['csv']).name for d in done)
        + f"; {summary['seconds']} s; load average now {os.getloadavg()[0]:.1f} "
          f"({os.cpu_count()} cores)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
