"""``python -m hmtl_mpi.topology``: generate or inspect a topology G (the command line).

    python -m hmtl_mpi.topology KIND [options] -o g.npy
    python -m hmtl_mpi.topology show PATH_OR_NAME

The topologies themselves (loading, validation, generators) are
:mod:`hmtl_mpi.planning.topology`.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

from .planning.topology import (BUILTIN, TopologyError, cyclic, describe, heterogeneous, load_topology, random_regular, symmetric, tree, validate)

KIND_HELP = """\
kinds:
  paper-fig2     the paper's Fig. 2 example (K = 10, H = 5); no options
  example-a      Example A of seed 001 (docs/joint.md): H = 3, K = 4; no options
  cyclic         K = H users, relay i holds users i .. i+r-1 (mod H): --relays H --r r
  tree           every user on one relay, relay i with M_i users (gradient coding):
                 tree M1,M2,... (e.g. tree 4,4,4: H = 3, K = 12)
  random         every user joins r distinct relays chosen at random:
                 --users K --relays H --r r [--seed S]
  symmetric      Theorem 3 design, one group of --per-group users for every
                 r-subset of the H relays (K = C(H, r) * per-group):
                 --relays H --r r [--per-group P]
  heterogeneous  Fig. 4/7 design, H = 4, relay degrees (r/4 + d)K, (r/4 + d)K,
                 (r/4 - d)K, (r/4 - d)K: --users K --r r --d d [--seed S]
  show           print N_i and I_z of an existing file or built-in name:
                 show PATH_OR_NAME
"""


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m hmtl_mpi.topology",
        description="Generate or inspect a network topology G (H x K 0/1 .npy, rows relays).",
        epilog=KIND_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("kind", choices=["paper-fig2", "example-a", "cyclic", "tree", "random",
                                         "symmetric", "heterogeneous", "show"],
                        help="what to generate (see kinds below)")
    parser.add_argument("source", nargs="?",
                        help="with 'show': the .npy file or built-in name; with 'tree': M1,M2,...")
    parser.add_argument("--users", "-K", type=int, help="K, number of users")
    parser.add_argument("--relays", "-H", type=int, help="H, number of relays")
    parser.add_argument("--r", type=int, help="relays per user")
    parser.add_argument("--per-group", type=int, default=1, help="users per r-subset (symmetric)")
    parser.add_argument("--d", type=float, help="heterogeneity d (heterogeneous)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("-o", "--output", help="where to write G (.npy)")
    args = parser.parse_args(argv)

    def need(*names):
        missing = [n for n in names if getattr(args, n.replace("-", "_")) is None]
        if missing:
            parser.error(f"{args.kind} needs " + ", ".join(f"--{n}" for n in missing))

    try:
        if args.kind == "show":
            if not args.source:
                parser.error("show needs a PATH_OR_NAME")
            return _print(describe(load_topology(args.source)))
        if args.kind in BUILTIN:
            G = BUILTIN[args.kind]()
        elif args.kind == "tree":
            if not args.source:
                parser.error("tree needs the users per relay, e.g. tree 4,4,4")
            try:
                sizes = [int(x) for x in args.source.split(",")]
            except ValueError:
                parser.error(f"tree: expected comma-separated user counts, got {args.source!r}")
            G = validate(tree(sizes), "tree")
        elif args.kind == "cyclic":
            need("relays", "r")
            G = validate(cyclic(args.relays, args.r), "cyclic")
        elif args.kind == "random":
            need("users", "relays", "r")
            G = validate(random_regular(args.users, args.relays, args.r, args.seed), "random")
        elif args.kind == "symmetric":
            need("relays", "r")
            G = validate(symmetric(args.relays, args.r, args.per_group), "symmetric")
        else:
            need("users", "r", "d")
            G = heterogeneous(args.users, args.r, args.d, args.seed)
    except TopologyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not args.output:
        parser.error("give -o PATH.npy to write the topology")
    out = args.output if args.output.endswith(".npy") else args.output + ".npy"
    try:
        np.save(out, G)
    except OSError as exc:
        print(f"error: cannot write {out}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    return _print(f"wrote {out}\n{describe(G)}")


def _print(text: str) -> int:
    """Print ``text``; piped into ``head``, the closed pipe is not an error of ours."""
    try:
        print(text, flush=True)
    except BrokenPipeError:
        try:
            sys.stdout = open(os.devnull, "w")     # nothing more reaches the closed pipe
        except OSError:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
