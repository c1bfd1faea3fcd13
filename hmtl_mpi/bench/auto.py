"""``--scheme auto`` against the measured fastest: ``python -m hmtl_mpi.bench auto``.

For every setting, two jobs: one runs every multi-task scheme (uncoded, coded, joint)
one after the other on the same links (the measured medians, and which one is
fastest), the next runs ``--scheme auto`` (what it predicted per scheme and chose,
and its own measured median). A choice is *right* when the chosen scheme's measured
median is within ``--tolerance`` (default 5%) of the fastest's in the first job.

Settings (``--settings``, comma list; default all):

* ``default``: the default job (``mpirun -n 16 python -m hmtl_mpi``: paper-fig2,
  digits, 30 iterations) on this machine, memory-copy links;
* ``W2:DATA``: paper-fig2 on the emulated network of ``launch/netns-run`` (root),
  W1 = 100 Mbit/s, the server link W2 in ``5mbit``, ``20mbit``, ``100mbit``, and
  DATA ``digits`` (512-byte IVs), ``mnist`` (6,272-byte IVs, ``--data local``) or
  ``synth`` (400 KB IVs: ``--dataset synthetic --dim 50000``).

Prints one table row per setting, the 1-minute load average at the start and end
of its jobs, and the share of settings where auto's choice was right. Results:
``benchmarks/auto/auto.csv`` and the reports in ``benchmarks/auto/reports/``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from ..cli import positive_float, positive_int
from . import mpiexec
from .network import REPO, run_one, write_csv

OUT_DIR = REPO / "benchmarks" / "auto"
SCHEMES = "uncoded,coded,joint"
RATES = ("5mbit", "20mbit", "100mbit")
DATA = {"digits": ("digits", None, 10), "mnist": ("mnist", None, 10),
        "synth": ("synthetic", 50_000, 3)}       # name -> (dataset, dim, iterations)
ALL = ("default",) + tuple(f"{w}:{d}" for d in DATA for w in RATES)


def right(chosen: str, medians: dict, tolerance: float) -> bool:
    """Whether ``chosen`` is the measured fastest of ``medians`` or within ``tolerance``."""
    return medians[chosen] <= (1.0 + tolerance) * min(medians.values())


def medians_of(report: dict) -> dict:
    """Scheme -> median seconds per iteration, from a job's report."""
    runs = report["runs"] if "runs" in report else {report["scheme"]: report}
    return {name: run["median_seconds"]["total"] for name, run in runs.items()}


def run_local(schemes: str, report: Path, timeout: float) -> dict:
    """The default job on this machine with ``--scheme schemes``; run info."""
    cmd = [mpiexec(), "-n", "16", sys.executable, "-m", "hmtl_mpi", "--scheme", schemes,
           "--quiet", "--report", str(report)]
    info = {"cmd": " ".join(cmd), "loadavg_before": os.getloadavg()[0]}
    t0 = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=str(REPO))
    info.update(wall_s=time.monotonic() - t0, loadavg_after=os.getloadavg()[0],
                status="ok" if proc.returncode == 0 else f"failed (exit {proc.returncode})",
                error=proc.stderr[-2000:])
    return info


def run_setting(name: str, reports: Path, timeout: float) -> dict | None:
    """Both jobs of one setting; its table row, or None if a job failed."""
    out = {}
    for label, schemes in (("all", SCHEMES), ("auto", "auto")):
        path = reports / f"{name.replace(':', '_')}_{label}.json"
        if path.exists():
            path.unlink()
        if name == "default":
            info = run_local(schemes, path, timeout)
        else:
            w2, data = name.split(":")
            dataset, dim, iterations = DATA[data]
            s = {"H": 5, "K": 10, "w1": "100mbit", "w2": w2, "dim": dim, "dataset": dataset,
                 "iterations": iterations, "seed": 1,
                 "job_args": ["--data", "local"] if dataset == "mnist" else []}
            info = run_one(s, schemes, "paper-fig2", path,
                           reports / f"{name.replace(':', '_')}_{label}.counters.json",
                           timeout, print)
        if info["status"] != "ok":
            print(f"  {name} {label}: {info['status']}\n{info.get('error', '')}", flush=True)
            return None
        out[label] = (json.loads(path.read_text()), info)
    measured = medians_of(out["all"][0])
    auto_report, auto_info = out["auto"]
    auto = auto_report["auto"]
    return {"setting": name, "iv_bytes": auto_report["iv_bytes"],
            "measured": measured, "fastest": min(measured, key=measured.get),
            "predicted": auto["predicted_seconds"], "chosen": auto["chosen"],
            "auto_measured": auto_report["median_seconds"]["total"],
            "load": (out["all"][1]["loadavg_before"], auto_info["loadavg_after"])}


def row_text(r: dict, tolerance: float) -> str:
    def ms(x):
        return f"{x:.2f} s" if x >= 1 else f"{1e3 * x:.1f} ms"
    names = list(r["measured"])
    ok = right(r["chosen"], r["measured"], tolerance)
    gap = 100 * (r["measured"][r["chosen"]] / min(r["measured"].values()) - 1)
    return (f"| {r['setting']} | {r['iv_bytes']} | "
            + " / ".join(ms(r["measured"][n]) for n in names) + f" | {r['fastest']} | "
            + " / ".join(ms(r["predicted"][n]) for n in names if n in r["predicted"])
            + f" | {r['chosen']} | {ms(r['auto_measured'])} | "
            + f"{'yes' if ok else 'no'} (+{gap:.1f}%) | {r['load'][0]:.1f}-{r['load'][1]:.1f} |")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hmtl_mpi.bench auto", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--settings", default=",".join(ALL),
                        help="comma list of default and W2:DATA (default: all ten)")
    parser.add_argument("--tolerance", type=positive_float, default=0.05,
                        help="a choice is right within this fraction of the fastest (0.05)")
    parser.add_argument("--run-timeout", type=positive_int, default=900,
                        help="seconds per job (default 900)")
    parser.add_argument("--out", default=str(OUT_DIR / "auto.csv"), help="CSV path")
    args = parser.parse_args(argv)
    names = [s for s in args.settings.split(",") if s]
    unknown = [s for s in names if s not in ALL]
    if unknown:
        parser.error(f"--settings: unknown {unknown[0]!r}; choose from {', '.join(ALL)}")
    if any(s != "default" for s in names) and os.geteuid() != 0:
        print("bench auto: the emulated network (launch/netns-run) needs root", file=sys.stderr)
        return 2
    out = Path(args.out)
    reports = out.parent / "reports"
    reports.mkdir(parents=True, exist_ok=True)
    print(f"bench auto: {len(names)} settings; load average {os.getloadavg()[0]:.1f} "
          f"on {os.cpu_count()} cores", flush=True)
    rows = []
    for name in names:
        print(f"{name} ...", flush=True)
        r = run_setting(name, reports, args.run_timeout)
        if r is not None:
            rows.append(r)
            print(row_text(r, args.tolerance), flush=True)
    if not rows:
        print("bench auto: no setting ran", file=sys.stderr)
        return 1
    names_ = list(rows[0]["measured"])
    print("\n| setting | IV bytes | measured median " + " / ".join(names_) + " | fastest | "
          "auto predicted " + " / ".join(names_) + " | auto chose | auto's run | right "
          "(chosen vs fastest) | load avg |")
    print("|" + "---|" * 9)
    for r in rows:
        print(row_text(r, args.tolerance))
    good = sum(right(r["chosen"], r["measured"], args.tolerance) for r in rows)
    print(f"\nauto chose the measured fastest or one within {100 * args.tolerance:g}% of it in "
          f"{good} of {len(rows)} settings ({100 * good / len(rows):.0f}%); load average "
          f"{os.getloadavg()[0]:.1f} at the end", flush=True)
    flat = [{"setting": r["setting"], "iv_bytes": r["iv_bytes"], "fastest": r["fastest"],
             "chosen": r["chosen"], "right": right(r["chosen"], r["measured"], args.tolerance),
             "auto_measured_s": r["auto_measured"], "load_start": r["load"][0],
             "load_end": r["load"][1],
             **{f"measured_{n}_s": v for n, v in r["measured"].items()},
             **{f"predicted_{n}_s": v for n, v in r["predicted"].items()}} for r in rows]
    write_csv(flat, out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
