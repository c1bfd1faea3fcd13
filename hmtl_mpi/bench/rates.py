"""Unequal relay links: the time-optimal plan against the load-optimal plan and uncoded.

``python -m hmtl_mpi.bench rates [--relay-rates 20mbit,2mbit,20mbit,20mbit,20mbit]
[--w1 100mbit] [--w2 none] [--dim 20000] [--iterations 5] [--repeats 1] [--json PATH]``
(root: it runs ``launch/netns-run``). Per repeat, two jobs on the same emulated links,
each ``--scheme uncoded,coded,joint`` on paper-fig2 with synthetic IVs: one with
``--plan load`` (the papers' plans), one with ``--plan time`` (re-planned for the rates
the probe measures). Printed per scheme and plan: the relays' planned uplink loads, the
predicted and measured (median over iterations, then over repeats) relay->server,
server->relay and iteration times (the predicted iteration leaves the learning out,
as the job's own prediction does), and the model digest (every run must agree). The
1-minute load average (``uptime``) before and after every job is printed beside them:
the machine is shared, and the times depend on it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
NETNS_RUN = REPO / "launch" / "netns-run"


def load_average() -> float:
    return os.getloadavg()[0]


def run_job(args, plan: str, report: str) -> dict:
    cmd = [sys.executable, str(NETNS_RUN), "--w1", args.w1, "--w2", args.w2,
           "--relay-rates", args.relay_rates, "-n", "16", "--",
           sys.executable, "-m", "hmtl_mpi", "--dataset", "synthetic", "--dim", str(args.dim),
           "--iterations", str(args.iterations), "--scheme", "uncoded,coded,joint",
           "--plan", plan, "--quiet", "--report", report]
    before = load_average()
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout,
                         env=dict(os.environ, PYTHONPATH=str(REPO)))
    if res.returncode != 0:
        sys.stderr.write(res.stdout[-3000:] + res.stderr[-3000:])
        raise SystemExit(f"hmtl_mpi.bench rates: the --plan {plan} job failed "
                         f"(exit {res.returncode})")
    with open(report) as fh:
        out = json.load(fh)
    out["load_before"], out["load_after"] = before, load_average()
    return out


def row(run: dict) -> dict:
    med, pred = run["median_seconds"], run["predicted_seconds"]
    plans = run.get("plans")
    loads = plans["time"]["per_relay_uplink"] if plans else None
    return {"up": med["relay_to_server"], "down": med["server_to_relay"], "total": med["total"],
            "up_pred": pred["relay_to_server"], "down_pred": pred["server_to_relay"],
            "total_pred": pred["total"],
            "digest": run["model_digest"], "loads": loads}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m hmtl_mpi.bench rates", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--relay-rates", default="20mbit,2mbit,20mbit,20mbit,20mbit")
    p.add_argument("--w1", default="100mbit")
    p.add_argument("--w2", default="none")
    p.add_argument("--dim", type=int, default=20000)
    p.add_argument("--iterations", type=int, default=5)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--timeout", type=int, default=600)
    p.add_argument("--json", default=None, help="write every run's figures to this file")
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        p.error("needs root (launch/netns-run creates network namespaces)")
    rows: dict = {}
    loads = []
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.repeats):
            for plan in ("load", "time"):
                rep_path = os.path.join(tmp, f"{plan}{rep}.json")
                job = run_job(args, plan, rep_path)
                loads.append((plan, rep, job["load_before"], job["load_after"]))
                for name, run in job["runs"].items():
                    key = (name, plan if name != "uncoded" else f"({plan} job)")
                    rows.setdefault(key, []).append(row(run))
                    if run.get("plans"):              # the load plan's loads, from beside it
                        for r in rows.get((name, "load"), []):
                            r["loads"] = run["plans"]["load"]["per_relay_uplink"]
    digests = {r["digest"] for rs in rows.values() for r in rs}
    print(f"paper-fig2, relay rates {args.relay_rates}, W1 {args.w1}, W2 {args.w2}, "
          f"synthetic IVs of {8 * args.dim} bytes, {args.iterations} iterations, "
          f"{args.repeats} repeat(s); ms per iteration, predicted / measured (medians)")
    print(f"{'scheme':8} {'plan':12} {'relay->server':>17} {'server->relay':>17} "
          f"{'iteration':>17}  relay uplink loads (IVs)")
    out = []
    for (name, plan), rs in rows.items():
        def med(k):
            return statistics.median(r[k] for r in rs)
        lds = rs[0]["loads"]
        print(f"{name:8} {plan:12} {1e3 * med('up_pred'):>8.0f} / {1e3 * med('up'):<6.0f} "
              f"{1e3 * med('down_pred'):>8.0f} / {1e3 * med('down'):<6.0f} "
              f"{1e3 * med('total_pred'):>8.0f} / {1e3 * med('total'):<6.0f}  "
              f"{', '.join(f'{x:.3g}' for x in lds) if lds else ''}")
        out.append({"scheme": name, "plan": plan, **{k: med(k) for k in
                    ("up", "down", "total", "up_pred", "down_pred", "total_pred")},
                    "loads": lds,
                    "runs": rs})
    byk = {(o["scheme"], o["plan"]): o for o in out}
    for s in ("coded", "joint"):
        t, ld = byk.get((s, "time")), byk.get((s, "load"))
        if t and ld:
            print(f"{s}: time plan's relay->server {t['up'] / ld['up']:.2f}x the load plan's, "
                  f"{100 * (t['up'] / t['up_pred'] - 1):+.0f}% against its prediction; "
                  f"relay<->server {(t['up'] + t['down']) / (ld['up'] + ld['down']):.2f}x; "
                  f"iteration {t['total'] / ld['total']:.2f}x")
    print(f"model digests equal across every run: {len(digests) == 1}")
    print("load average (1 min) before/after each job: "
          + "; ".join(f"{plan} #{rep}: {a:.1f}/{b:.1f}" for plan, rep, a, b in loads))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"args": vars(args), "rows": out, "load": loads,
                       "digests_equal": len(digests) == 1}, fh, indent=1)
    return 0 if len(digests) == 1 else 1
