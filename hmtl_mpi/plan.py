"""``python -m hmtl_mpi.plan``: the command line of every scheme's planner.

Prints a scheme's plan for a topology (the coded scheme's rounds, exact alphas and
loads with Theorem 2's bounds by default; ``--scheme`` for another scheme), as a table
or as one JSON object (``--json``). ``--verify`` runs the scheme's exchange in one
process through the in-process transport (:mod:`hmtl_mpi.wire.inprocess`) on
awkward bit patterns and checks that every relay recovers every IV bit for bit.

    python -m hmtl_mpi.plan --topology PATH_OR_NAME [--json]
    python -m hmtl_mpi.plan --topology PATH_OR_NAME --verify --dim D [--seed S] [--json]
    python -m hmtl_mpi.plan --topology PATH_OR_NAME --code {auto,structured,random} [--json]
    python -m hmtl_mpi.plan --topology PATH_OR_NAME --relay-rates R1,...,RH [--plan time] [--json]

The planners themselves live in :mod:`hmtl_mpi.planning`.
"""

from __future__ import annotations

import argparse
import json
import sys

from .cli import straggle_value, stragglers_pair
from .job.verify import verify_exchange
from .planning.bandwidth import RateError, parse_rate, parse_rates
from .planning.hierarchical import MAX_DENOMINATOR
from .planning.topology import TopologyError, load_topology
from .schemes import REGISTRY, get

def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m hmtl_mpi.plan",
        description="Plan a scheme for a topology: the coded scheme's rounds, exact alphas and "
                    "loads (Theorem 1) with the bounds (Theorem 2), uncoded and equal-split "
                    "loads; or another scheme's plan (--scheme).",
        epilog="schemes:\n" + "\n".join(f"  {n:10} ({w}) {c.summary}"
                                        for (w, n), c in REGISTRY.items()),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--topology", default="paper-fig2",
                        help="a .npy file (H x K, rows relays) or a built-in name (default paper-fig2)")
    parser.add_argument("--scheme", choices=sorted({n for _, n in REGISTRY}), default="coded",
                        help="the scheme to plan (default coded, the paper's)")
    parser.add_argument("--workload", choices=("mtl", "gd"), default=None,
                        help="the workload whose scheme is meant (default: the one that has "
                             "it; uncoded is then mtl's)")
    parser.add_argument("--stragglers", type=stragglers_pair, default=(1, 1), metavar="S_E,S_W",
                        help="gradient schemes: tolerated straggling edges and workers per edge")
    parser.add_argument("--partitions", type=int, default=None, metavar="P",
                        help="gradient schemes: partitions of the data (default K)")
    parser.add_argument("--straggle", type=straggle_value, default="none",
                        help="hgc-jncss: the delay model to select nodes for (as the job's)")
    parser.add_argument("--relay-stragglers", type=int, default=0, metavar="S",
                        help="coded, joint: the exchange tolerant of S slow relays "
                             "(docs/tolerant.md); with --verify, every set of H - S relays "
                             "is decoded")
    parser.add_argument("--json", action="store_true", help="print one JSON object to stdout")
    parser.add_argument("--max-denominator", type=int, default=None,
                        help=f"largest denominator for exact alphas / loads (default: the "
                             f"planner's, {MAX_DENOMINATOR} for coded; 64, 720, 5040 in turn "
                             f"for joint)")
    parser.add_argument("--verify", action="store_true",
                        help="also run one iteration of the scheme's exchange in this process, "
                             "every rank's part over the in-process transport, on IVs with "
                             "awkward bit patterns, and check every IV arrives bit-exactly "
                             "wherever it is held; for a gradient scheme, decode every "
                             "straggler pattern of its code")
    parser.add_argument("--dim", type=int, default=1000, help="with --verify: float64 values per IV")
    parser.add_argument("--seed", type=int, default=0, help="with --verify: coefficient seed")
    parser.add_argument("--code", choices=("auto", "structured", "random"), default="auto",
                        help="coded schemes: how the code is built (default auto: structured, "
                             "decodable by construction, where it covers the plan, else random "
                             "and verified; docs/codes.md)")
    parser.add_argument("--plan", choices=("load", "time"), default="load",
                        help="coded and joint: the plan the code follows: load (default, the "
                             "papers': least total load) or time (least uplink time for the "
                             "rates of --relay-rates; docs/bandwidth.md)")
    parser.add_argument("--relay-rates", default=None, metavar="R1,...,RH",
                        help="every relay's rate to the server (tc syntax, e.g. 20mbit, or "
                             "bytes/s): with it both plans are shown side by side")
    parser.add_argument("--server-rate", default=None, metavar="RATE",
                        help="with --relay-rates: the server's own link, shared by every "
                             "relay (default: not a bottleneck)")
    args = parser.parse_args(argv)
    if args.max_denominator is not None and args.max_denominator < 1:
        parser.error(f"--max-denominator must be at least 1, got {args.max_denominator}")
    if args.verify and args.dim < 1:
        parser.error(f"--dim must be at least 1, got {args.dim}")
    if args.relay_stragglers < 0:
        parser.error(f"--relay-stragglers must be at least 0, got {args.relay_stragglers}")
    if args.partitions is not None and args.partitions < 1:
        parser.error(f"--partitions must be at least 1, got {args.partitions}")
    if args.server_rate is not None and args.relay_rates is None:
        parser.error("--server-rate goes with --relay-rates")
    try:
        G = load_topology(args.topology)
        rates, server = plan_rates(args, G, parser)
        scheme = get(args.scheme, args.workload).plan(
            G, seed=args.seed, max_denominator=args.max_denominator, stragglers=args.stragglers,
            partitions=args.partitions or G.shape[1], straggle=args.straggle,
            construction=args.code, relay_stragglers=args.relay_stragglers, plan=args.plan,
            relay_rates=rates, server_rate=server)
    except (TopologyError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = scheme.plan_dict()
    verify = None
    if args.verify:
        if scheme.barrier_free:          # a straggler-tolerant code: every pattern decoded
            verify = scheme.verify_code(seed=args.seed)
        else:                            # the exchange, through the parts, in this process
            verify = verify_exchange(scheme, dim=args.dim, seed=args.seed)
        out["verify"] = verify
    try:
        _print_result(args, scheme, out, verify)
    except BrokenPipeError:                    # e.g. piped into head: not an error of ours
        sys.stderr.close()
        return 0
    return 0 if verify is None or verify.get("bit_exact", verify.get("exact")) else 1


def plan_rates(args, G, parser):
    """(--relay-rates as bytes/s, --server-rate) checked against G; exit 2 naming the value."""
    if args.plan == "time" and args.relay_rates is None:
        parser.error("--plan time needs --relay-rates R1,...,RH (every relay's rate to the "
                     "server)")
    if args.relay_rates is None:
        return None, None
    if args.scheme not in ("coded", "joint"):
        parser.error(f"--relay-rates: the {args.scheme} scheme has no plan to choose "
                     f"(coded and joint have)")
    if args.relay_stragglers:
        parser.error("--relay-rates does not go with --relay-stragglers: the tolerant "
                     "exchange has a plan of its own")
    try:
        rates = parse_rates(args.relay_rates, G.shape[0], "--relay-rates")
        server = None if args.server_rate is None else parse_rate(args.server_rate,
                                                                  "--server-rate")
    except RateError as exc:
        parser.error(str(exc))
    return rates, server


def _print_result(args, scheme, out, verify) -> None:
    if args.json:
        json.dump(out, sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        print(scheme.format_plan())
        if verify is not None:
            print()
            print("verify: " + ", ".join(f"{k} = {v}" for k, v in verify.items()))


if __name__ == "__main__":
    sys.exit(main())
