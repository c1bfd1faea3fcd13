"""Many users per MPI rank: ``python -m hmtl_mpi.bench users [options]``.

Runs the job at K users on H relays (every user on ``--r`` random relays, synthetic IVs
of ``--dim`` values, ``--scheme both``) under mpirun with ``--users-per-rank N``, so
1 + H + ceil(K / N) ranks, and, as the reference measured in the same run, the same
job in one process with one rank per user (``--transport inprocess``: 1 + H + K
threads). Prints for each: the wall time of the whole command (set-up included), every
iteration's time, the peak resident memory of the whole process tree (sampled every
0.2 s from /proc, summed over the processes) and of its largest process, the loads
measured against the planned ones, the IV checks, and whether the two commands ended
with the same model digests and the same bytes in every link class in every
iteration. The load average before and after goes with the figures: on a shared
machine the wall times depend on it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

from ..cli import positive_int
from ..planning.topology import random_regular, validate
from ..vocabulary import ranks_needed
from . import mpiexec


def _tree_rss_kb(root: int) -> tuple:
    """(summed, largest) resident memory in KiB of process ``root`` and its descendants."""
    parent, rss = {}, {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            parent[int(entry)] = int(fields[1])
            rss[int(entry)] = int(fields[21]) * os.sysconf("SC_PAGE_SIZE") // 1024
        except (OSError, IndexError, ValueError):
            continue
    members, frontier = {root}, [root]
    while frontier:
        frontier = [p for p, pp in parent.items() if pp in frontier and p not in members]
        members.update(frontier)
    sizes = [rss.get(p, 0) for p in members]
    return sum(sizes), max(sizes)


def timed(cmd: list, env: dict, timeout: float) -> dict:
    """Run ``cmd``; its wall time, exit code, stderr tail and peak memory (sampled)."""
    peak = [0, 0]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)
    done = threading.Event()

    def sample():
        while not done.is_set():
            total, largest = _tree_rss_kb(proc.pid)
            peak[0], peak[1] = max(peak[0], total), max(peak[1], largest)
            done.wait(0.2)
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        done.set()
        sampler.join()
    return {"wall_s": time.perf_counter() - t0, "exit": proc.returncode, "stderr": err[-2000:],
            "peak_rss_mb": peak[0] / 1024, "largest_process_rss_mb": peak[1] / 1024,
            "cmd": " ".join(cmd)}


def summary(report: dict) -> dict:
    """Per scheme: model digest, IV and model checks, bytes per iteration."""
    return {name: (run["model_digest"], run["ivs_bit_exact"], run["models_delivered_intact"],
                   [it["bytes"] for it in run["iterations"]])
            for name, run in report["runs"].items()}


def run(K=1000, H=10, r=3, per_rank=100, dim=16, iterations=2, seed=1, reference=True,
        timeout=1800.0) -> dict:
    G = validate(random_regular(K, H, r, seed), "random")
    env = dict(os.environ)
    n = ranks_needed(H, K, per_rank=per_rank)
    out = {"K": K, "H": H, "r": r, "seed": seed, "users_per_rank": per_rank, "ranks": n, "dim": dim,
           "iterations": iterations, "cores": os.cpu_count(),
           "loadavg_before": os.getloadavg()[0]}
    with tempfile.TemporaryDirectory() as tmp:
        topo = os.path.join(tmp, "g.npy")
        np.save(topo, G)
        job = ["--topology", topo, "--dataset", "synthetic", "--dim", str(dim), "--iterations",
               str(iterations), "--scheme", "both", "--quiet", "--seed", "0"]
        runs = {"mpirun": [mpiexec(), "-n", str(n), sys.executable, "-m", "hmtl_mpi", *job,
                           "--users-per-rank", str(per_rank),
                           "--report", os.path.join(tmp, "mpirun.json")]}
        if reference:
            runs["inprocess"] = [sys.executable, "-m", "hmtl_mpi", "--transport", "inprocess",
                                 *job, "--report", os.path.join(tmp, "inprocess.json")]
        for name, cmd in runs.items():
            got = timed(cmd, env, timeout)
            if got["exit"] != 0:
                raise RuntimeError(f"{name} failed (exit {got['exit']}):\n{got['stderr']}")
            with open(os.path.join(tmp, f"{name}.json")) as fh:
                got["report"] = json.load(fh)
            out[name] = got
    out["loadavg_after"] = os.getloadavg()[0]
    if reference:
        out["same_as_one_rank_per_user"] = (summary(out["mpirun"]["report"])
                                            == summary(out["inprocess"]["report"]))
    return out


def show(out: dict) -> None:
    print(f"K = {out['K']} users, H = {out['H']} relays, r = {out['r']}, --dim {out['dim']}, "
          f"{out['iterations']} iterations, --scheme both, on {out['cores']} cores; load "
          f"average {out['loadavg_before']:.1f} before, {out['loadavg_after']:.1f} after")
    for name in ("mpirun", "inprocess"):
        if name not in out:
            continue
        got, rep = out[name], out[name]["report"]
        what = (f"mpirun, {out['ranks']} ranks, --users-per-rank {out['users_per_rank']}"
                if name == "mpirun" else f"in one process, one rank per user "
                f"({rep['ranks']} threads; reference)")
        print(f"\n{what}: wall {got['wall_s']:.1f} s (whole command), peak memory "
              f"{got['peak_rss_mb']:.0f} MB (largest process {got['largest_process_rss_mb']:.0f} "
              f"MB)")
        for scheme, run_ in rep["runs"].items():
            its = ", ".join(f"{it['seconds']['total']:.3f}" for it in run_["iterations"])
            m, p = run_["measured_loads"], run_["planned_loads"]
            clock = "" if name == "mpirun" else " (virtual clock: computing only)"
            print(f"  {scheme:8} iterations {its} s{clock}; loads measured ({m['uplink']:.3f}, "
                  f"{m['downlink']:.3f}) planned ({p['uplink']:.3f}, {p['downlink']:.3f}) IVs; "
                  f"IVs bit-exact {run_['ivs_bit_exact']}; digest {run_['model_digest'][:16]}")
        print(f"  models bit-identical across schemes: {rep['model_digests_equal']}")
    if "same_as_one_rank_per_user" in out:
        print(f"\nsame digests and bytes per link class and iteration as one rank per user: "
              f"{out['same_as_one_rank_per_user']}")
    print(f"\nthe placement: python -m hmtl_mpi.topology random -K {out['K']} -H {out['H']} "
          f"--r {out['r']} --seed {out['seed']} -o g.npy; the mpirun command (g.npy in a "
          f"temporary folder): {out['mpirun']['cmd']}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hmtl_mpi.bench users", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", "-K", type=positive_int, default=1000, help="K (default 1000)")
    parser.add_argument("--relays", "-H", type=positive_int, default=10, help="H (default 10)")
    parser.add_argument("--r", type=positive_int, default=3, help="relays per user (default 3)")
    parser.add_argument("--per-rank", type=positive_int, default=100,
                        help="--users-per-rank of the mpirun job (default 100: 21 ranks)")
    parser.add_argument("--dim", type=positive_int, default=16, help="--dim (default 16)")
    parser.add_argument("--iterations", type=positive_int, default=2, help="default 2")
    parser.add_argument("--seed", type=int, default=1, help="the placement's seed (default 1)")
    parser.add_argument("--no-reference", action="store_true",
                        help="skip the one-process run with one rank per user")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    if args.r > args.relays:
        parser.error(f"--r {args.r} exceeds --relays {args.relays}")
    out = run(args.users, args.relays, args.r, args.per_rank, args.dim, args.iterations,
              args.seed, not args.no_reference)
    if args.json:
        print(json.dumps(out, indent=1))
    else:
        show(out)
    return 0 if out.get("same_as_one_rank_per_user", True) else 1


if __name__ == "__main__":
    sys.exit(main())
