"""``python -m hmtl_mpi.bench pipeline``: the pipelined coded exchange (``--segments``) in
the Fig. 6 setting on the emulated network (root; ``launch/netns-run``).

H = 5, r = 3, the Theorem 3 symmetric G, W1 = W2 = 100 Mbit/s, 400 KB IVs (synthetic,
``--dim 51200``). For every K of ``--Ks``, side by side: one job running uncoded then
coded unsegmented (the reference, and the job's own prediction of both before the run:
eq. 13 + latency with the measured links and coding speed, learning left out), then
one job of coded per entry of ``--segments`` (default ``auto,4,16``). Each coded run's
total saving over the uncoded run of its K is printed beside the predicted saving and
their ratio (the issue's target: at least 0.8 at every K). The machine's 1-minute load
average is printed before and after every job (the machine may be shared), and the
relays' CPU seconds per iteration in the exchange (the report's ``median_cpu_seconds``).
Files: ``<out>.csv`` and the reports in ``<out>_reports/``.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from ..cli import positive_int, positive_int_list
from ..planning import topology as T
from .network import run_one

OUT = Path(__file__).resolve().parents[2] / "benchmarks" / "pipeline" / "fig6"


def _relay_exchange_cpu(run: dict) -> float:
    cpu = run.get("median_cpu_seconds", {}).get("relay", {})
    return sum(cpu.get(k, 0.0) for k in ("encode", "relay_to_server", "server_to_relay",
                                          "decode", "exchange"))


def _saving(coded: float, uncoded: float) -> float:
    return 100.0 * (uncoded - coded) / uncoded


def run(Ks=(10, 40), segments=("auto", "4", "16"), iterations=5, dim=51_200, rate="100mbit",
        out: Path = OUT, timeout: float = 600, log=print) -> list:
    """The jobs, one row per (K, coded run); returns the rows."""
    out.parent.mkdir(parents=True, exist_ok=True)
    reports = Path(f"{out}_reports")
    reports.mkdir(exist_ok=True)
    rows = []
    for K in Ks:
        if K % math.comb(5, 3):
            raise SystemExit(f"--Ks: K = {K} is not a multiple of C(5, 3) = 10 (the symmetric design)")
        G = T.validate(np.asarray(T.symmetric(5, 3, per_group=K // 10), dtype=np.uint8),
                       source="symmetric")
        with tempfile.TemporaryDirectory() as tmp:
            gpath = os.path.join(tmp, f"fig6_K{K}.npy")
            np.save(gpath, G)
            setting = dict(H=5, K=K, w1=rate, w2=rate, dim=dim, iterations=iterations, seed=0,
                           dataset="synthetic", job_args=[])
            jobs = [("1", "uncoded,coded")] + [(str(j), "coded") for j in segments]
            got = {}
            for J, schemes in jobs:
                s = dict(setting, job_args=["--segments", J])
                path = reports / f"K{K}_segments-{J}.json"
                info = run_one(s, schemes, gpath, path, Path(tmp) / "counters.json", timeout,
                               log)
                if info["status"] != "ok":
                    log(f"K = {K}, --segments {J}: {info['status']}")
                    continue
                payload = json.loads(path.read_text())
                runs = payload.get("runs") or {payload["scheme"]: payload}
                got[J] = (runs, info)
                log(f"K = {K}, --segments {J}: done in {info['wall_s']:.0f} s, load "
                    f"{info['loadavg_before']:.1f} -> {info['loadavg_after']:.1f}")
        if "1" not in got:
            continue
        base, _ = got["1"]
        uncoded, coded1 = base["uncoded"], base["coded"]
        u_total = uncoded["median_seconds"]["total"]
        predicted = _saving(coded1["predicted_seconds"]["total"],
                            uncoded["predicted_seconds"]["total"])
        for J, (runs, info) in got.items():
            c = runs["coded"]
            saving = _saving(c["median_seconds"]["total"], u_total)
            rows.append({
                "K": K, "segments_arg": J, "segments": c.get("segments", 1),
                "uncoded_s": u_total, "coded_s": c["median_seconds"]["total"],
                "relay_server_s": sum(c["median_seconds"].get(k, 0.0) for k in
                                      ("encode", "relay_to_server", "server_to_relay", "decode",
                                       "exchange")),
                "saving_pct": saving, "predicted_saving_pct": predicted,
                "ratio": saving / predicted if predicted > 0 else float("nan"),
                "relay_exchange_cpu_s": _relay_exchange_cpu(c),
                "bit_exact": bool(c.get("ivs_bit_exact")) and bool(
                    runs["coded"].get("models_delivered_intact")),
                "model_digest": c["model_digest"][:16],
                "load_before": info["loadavg_before"], "load_after": info["loadavg_after"],
                "wall_s": info["wall_s"]})
    return rows


def table(rows: list) -> str:
    lines = ["| K | --segments | J | uncoded s | coded s | relay<->server s (coding incl.) | "
             "saving | predicted | ratio | relays' exchange CPU s | load |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['K']} | {r['segments_arg']} | {r['segments']} | {r['uncoded_s']:.3f} | "
                     f"{r['coded_s']:.3f} | {r['relay_server_s']:.3f} | {r['saving_pct']:.1f}% | "
                     f"{r['predicted_saving_pct']:.1f}% | {r['ratio']:.2f} | "
                     f"{r['relay_exchange_cpu_s']:.3f} | {r['load_before']:.1f}-"
                     f"{r['load_after']:.1f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m hmtl_mpi.bench pipeline",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--Ks", type=positive_int_list, default="10,40",
                   help="K values, multiples of 10 (default 10,40)")
    p.add_argument("--segments", default="auto,4,16",
                   help="the coded runs besides the unsegmented one: --segments values "
                        "(default auto,4,16)")
    p.add_argument("--iterations", type=positive_int, default=5)
    p.add_argument("--dim", type=positive_int, default=51_200,
                   help="values per IV (default 51200: 400 KB)")
    p.add_argument("--rate", default="100mbit", help="W1 = W2 (default 100mbit)")
    p.add_argument("--out", type=Path, default=OUT, help=f"CSV path stem (default {OUT})")
    p.add_argument("--timeout", type=float, default=600, help="seconds per job")
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        sys.stderr.write("bench pipeline: launch/netns-run needs root\n")
        return 2
    segments = [x.strip() for x in args.segments.split(",") if x.strip()]
    t0 = time.monotonic()
    print(f"bench pipeline: uptime load {os.getloadavg()[0]:.2f} at the start", flush=True)
    rows = run(tuple(args.Ks), segments, args.iterations, args.dim, args.rate, args.out,
               args.timeout, log=lambda m: print(m, flush=True))
    if rows:
        path = Path(f"{args.out}.csv")
        with open(path, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
        print(table(rows))
        print(f"rows in {path}; {time.monotonic() - t0:.0f} s in all; uptime load "
              f"{os.getloadavg()[0]:.2f} at the end", flush=True)
    return 0 if rows else 1


if __name__ == "__main__":
    sys.exit(main())
