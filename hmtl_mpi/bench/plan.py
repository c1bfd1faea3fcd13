"""Benchmark of the load planner on a large topology (K = 2,000 users, H = 50 relays).

Two topologies are planned:

* ``mixed``: user k joins r_k relays, r_k drawn uniformly from 1..H-1, so nearly
  every z = 1..H-1 has users and the planner solves ~H-1 LPs (the hard case);
* ``r=3``: every user joins 3 random relays (one round, one big LP).

For each, the wall time of ``make_plan`` is printed next to references measured
in the same run: the set computations alone (``round_counts`` for every round,
i.e. n_i^z of eq. 16 and min_i |N_i ∩ I_z|), and a naive pure-Python-set
implementation of eq. (16) (which must agree with the planner). Also printed:
the number of rounds, the LP sizes (H variables; one constraint per distinct
relay set of the round's users), how many rounds kept the LP's alphas, and the
loads against the bounds. The first ``make_plan`` of a process also pays for
importing cvxpy; that import is timed separately, before the plans.

    python -m hmtl_mpi.bench plan [--users K] [--relays H] [--seed S] [--repeat R] [--json]
    python -m hmtl_mpi.bench plan --scale [--sizes KxH,...] [--random-budget S] [--json]

``--scale`` measures K = 1,000 to 100,000 instead (:mod:`.scale`).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import numpy as np

from . import scale
from ..planning.hierarchical import make_plan, round_counts
from ..planning.topology import random_regular, validate


def mixed_topology(K: int, H: int, seed: int = 0) -> np.ndarray:
    """User k joins r_k distinct random relays, r_k uniform on 1..H-1."""
    rng = np.random.default_rng(seed)
    for _ in range(100):
        G = np.zeros((H, K), dtype=np.uint8)
        degrees = rng.integers(1, H, size=K)
        for k, r in enumerate(degrees):
            G[rng.choice(H, size=int(r), replace=False), k] = 1
        if G.sum(axis=1).min() > 0 and G.sum(axis=1).max() < K:
            return validate(G, source="mixed")
    raise RuntimeError(f"could not draw a valid mixed topology with K = {K}, H = {H}")


def naive_counts(G: np.ndarray) -> dict:
    """Eq. (16) and min_i |N_i ∩ I_z| with Python sets, straight from the definitions."""
    H, K = G.shape
    N = [set(np.flatnonzero(G[i]).tolist()) for i in range(H)]
    degree = G.sum(axis=0)
    out = {}
    for z in range(1, H):
        Iz = set(np.flatnonzero(degree == z).tolist())
        if not Iz:
            continue
        own = [N[i] & Iz for i in range(H)]
        n = [len(own[i]) - min(len(own[i] & N[j]) for j in range(H) if j != i)
             for i in range(H)]
        out[z] = (n, min(len(o) for o in own))
    return out


def _timed(fn, repeat: int):
    times, result = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t)
    return min(times), result


def bench_one(name: str, G: np.ndarray, repeat: int = 3) -> dict:
    H, K = G.shape
    degree = G.sum(axis=0)
    zs = [z for z in range(1, H) if np.any(degree == z)]

    def sets_only():
        return {z: round_counts(G, np.flatnonzero(degree == z)) for z in zs}

    t_sets, fast = _timed(sets_only, repeat)
    t_naive, naive = _timed(lambda: naive_counts(G), 1)
    for z in zs:                                  # the planner's counts must match the definition
        assert fast[z][0].tolist() == naive[z][0] and fast[z][1] == naive[z][1], z
    t_plan, plan = _timed(lambda: make_plan(G), repeat)
    rows = [int(np.unique(G[:, r.users].T, axis=0).shape[0]) for r in plan.rounds]
    sources = [r.alpha_source for r in plan.rounds]
    return {
        "name": name,
        "K": K,
        "H": H,
        "rounds": len(plan.rounds),
        "lp_variables": H,
        "lp_constraints": {"min": min(rows), "median": statistics.median(rows),
                           "max": max(rows), "total": sum(rows)},
        "rounds_alpha_from_lp": sources.count("lp"),
        "rounds_equal_split": sources.count("equal-split"),
        "max_D": max(r.D for r in plan.rounds),
        "make_plan_s": t_plan,
        "set_computations_s": t_sets,
        "naive_python_sets_eq16_s": t_naive,
        "uplink_load": float(plan.uplink_load),
        "uplink_lp_optimum_sum": float(sum(r.lp_optimum for r in plan.rounds)),
        "uplink_equal_split": float(plan.equal_split_uplink_load),
        "uplink_lower_bound": float(plan.uplink_lower_bound),
        "downlink_load": float(plan.downlink_load),
        "downlink_lower_bound": float(plan.downlink_lower_bound),
    }


def run(json_out: bool = False, K: int = 2000, H: int = 50, seed: int = 0,
        repeat: int = 3) -> dict:
    """Run the benchmark, print a table (or one JSON object), and return the results."""
    t = time.perf_counter()
    import cvxpy  # local: cvxpy costs ~0.7 s to import, only when planning
    t_import = time.perf_counter() - t

    t = time.perf_counter()
    G_mixed = mixed_topology(K, H, seed)
    G_r3 = random_regular(K, H, 3, seed)
    t_gen = time.perf_counter() - t

    # warm-up: the first solve builds cvxpy's solver interface
    make_plan(random_regular(20, 5, 2, seed))
    cases = [bench_one("mixed r_k in 1..H-1", G_mixed, repeat),
             bench_one("every user r = 3", G_r3, repeat)]
    result = {"cvxpy_import_s": t_import, "topology_generation_s": t_gen,
              "repeat": repeat, "cases": cases}
    if json_out:
        json.dump(result, sys.stdout, indent=1)
        sys.stdout.write("\n")
        return result

    print(f"planner benchmark: K = {K}, H = {H}, seed = {seed} "
          f"(times: best of {repeat}; cvxpy import {t_import:.2f} s, "
          f"topology generation {t_gen:.2f} s, both excluded)")
    for c in cases:
        lc = c["lp_constraints"]
        print()
        print(f"{c['name']}: {c['rounds']} round{'s' * (c['rounds'] != 1)}, LPs of {c['lp_variables']} variables and "
              f"{lc['min']}..{lc['max']} constraints (median {lc['median']}, total {lc['total']})")
        print(f"  make_plan                          {c['make_plan_s']:8.3f} s")
        print(f"  set computations alone (eq. 16)    {c['set_computations_s']:8.3f} s")
        print(f"  naive Python sets for eq. 16       {c['naive_python_sets_eq16_s']:8.3f} s")
        print(f"  alphas from the LP in {c['rounds_alpha_from_lp']} rounds, equal split in "
              f"{c['rounds_equal_split']}; largest D = {c['max_D']}")
        print(f"  uplink {c['uplink_load']:.2f} (LP optimum {c['uplink_lp_optimum_sum']:.2f}, "
              f"equal split {c['uplink_equal_split']:.2f}, bound {c['uplink_lower_bound']:.2f}); "
              f"downlink {c['downlink_load']:.0f} (bound {c['downlink_lower_bound']:.0f}); "
              f"uncoded {c['K']}")
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hmtl_mpi.bench plan",
                                     description="Time the load planner on K x H topologies.")
    parser.add_argument("--users", "-K", type=int, default=2000)
    parser.add_argument("--relays", "-H", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=3, help="timings are the best of this many")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--scale", action="store_true",
                        help="instead: plan, structured code and the plan command at K = 1,000, "
                             "10,000 and 100,000 (r = 3), each in a fresh process with its peak "
                             "memory, and the random code within --random-budget")
    parser.add_argument("--sizes", default=None, metavar="KxH,...",
                        help="with --scale: the sizes (default 1000x30,10000x100,100000x1000)")
    parser.add_argument("--random-budget", type=float, default=300.0, metavar="S",
                        help="with --scale: seconds the random code's build may take (default 300)")
    args = parser.parse_args(argv)
    if args.scale:
        try:
            sizes = scale.parse_sizes(args.sizes) if args.sizes else scale.DEFAULT_SIZES
        except ValueError as exc:
            parser.error(str(exc))
        scale.run_plan(sizes, seed=args.seed, random_budget=args.random_budget,
                       json_out=args.json)
        return 0
    if args.relays < 4 or args.users < 2 * args.relays or args.repeat < 1:
        parser.error("need H >= 4, K >= 2H and --repeat >= 1")
    run(json_out=args.json, K=args.users, H=args.relays, seed=args.seed, repeat=args.repeat)
    return 0


if __name__ == "__main__":
    sys.exit(main())
