"""The paper's Fig. 3 and Fig. 4: communication loads over random placements (planner only).

``python -m hmtl_mpi.bench loads fig3|fig4 [--placements N] [--seed S] [--csv PATH] [--png PATH]``

No MPI: for every point of a sweep, ``--placements`` random topologies G are drawn
and planned, and the mean and the range (min, max) over them are reported of

* the coded scheme's loads (Theorem 1, :func:`hmtl_mpi.planning.hierarchical.make_plan`),
* the uncoded loads (K, K) of Example 1 (the ``uncoded`` scheme's plan),
* Theorem 2's lower bounds (eq. 35a/35b, the plan's ``*_lower_bound``),
* extra: the joint scheme's loads (seed 001, :mod:`hmtl_mpi.schemes.joint`, H <= 16),
  which move the same IVs over the same relay<->server link and so compare
  directly (IVs per iteration, uplink and downlink separately), the joint
  planner's uplink bound max(eq. 35a, K - min_i |N_i|) and Remark 2's
  equal-split uplink load.

Placements:

* ``fig3``: K users, H in {5, 10} relays, every user on r = 3 relays drawn
  uniformly among the 3-subsets, independently (:func:`hmtl_mpi.planning.topology.random_regular`,
  which redraws the rare G with a relay linked to no user or to every user);
  K = 10, 20, ..., 100 (the x axis of the paper's Fig. 3).
* ``fig4``: K = 50, H = 4, relay degrees (1/2 + d)K, (1/2 + d)K, (1/2 - d)K,
  (1/2 - d)K (2K links), d = 0, 0.1, ..., 0.4 (the d with whole degrees). By
  default every user is on exactly 2 relays and G is drawn uniformly among all
  such bipartite graphs (:func:`random_with_degrees`, exact, no rejection);
  ``--fig4-users independent`` instead lets every relay pick its |N_i| users
  independently (users on 0..4 relays, redrawn until every user has one).

Each placement has its own seed derived from (--seed, figure, point, placement),
so a point's numbers do not depend on the other points swept.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from fractions import Fraction
from pathlib import Path

import numpy as np

from ..cli import float_list, positive_int, positive_int_list, seed_value
from ..planning.hierarchical import make_plan
from ..planning.joint import MAX_RELAYS, make_joint_plan
from ..planning.topology import TopologyError, random_regular, random_with_degrees, validate
from ..schemes import get
from .network import heterogeneous_ds, write_csv

# The columns every CSV starts with, in this order (x = K for fig3, d for fig4).
COLUMNS = ("x", "H", "K", "d", "placements", "uplink_coded", "downlink_coded",
           "uplink_uncoded", "downlink_uncoded", "uplink_bound", "downlink_bound")
# Quantities that vary between placements: their min and max are extra columns.
SPREAD = ("uplink_coded", "downlink_coded", "uplink_bound", "downlink_bound",
          "uplink_joint", "downlink_joint")
EXTRA = ("uplink_joint", "downlink_joint", "uplink_cut_bound", "uplink_equal_split")

FIG3_KS = tuple(range(10, 101, 10))
FIG3_HS = (5, 10)
FIG3_R = 3
FIG4_K = 50
FIG4_H = 4
FIG4_R = 2
FIG4_USERS = ("exact", "independent")
DEFAULT_PLACEMENTS = 50          # the paper: "50 random data placements"


# --- placements ---------------------------------------------------------------------------

def placement_seed(seed: int, *key) -> int:
    """One 32-bit seed per (seed, figure, point, placement), independent of the sweep."""
    return int(np.random.SeedSequence([int(seed), *(int(k) for k in key)]).generate_state(1)[0])


def fig4_degrees(K: int, d: float) -> list[int]:
    """Fig. 4's relay degrees (1/2 + d)K, (1/2 + d)K, (1/2 - d)K, (1/2 - d)K (2K links)."""
    hi, lo = (0.5 + d) * K, (0.5 - d) * K
    if abs(hi - round(hi)) > 1e-9 or abs(lo - round(lo)) > 1e-9:
        raise TopologyError(f"d = {d:g}: (1/2 +- d)K = {hi:g}, {lo:g} are not whole numbers "
                            f"of users (K = {K})")
    degrees = [round(hi)] * 2 + [round(lo)] * 2
    if min(degrees) < 1 or max(degrees) > K - 1:
        raise TopologyError(f"d = {d:g}: relay degrees {degrees} must lie in 1..K-1 = {K - 1}")
    return degrees


def random_relay_choice(K: int, degrees, rng, tries: int = 100_000) -> np.ndarray:
    """Every relay i picks its ``degrees[i]`` users uniformly and independently of the
    others; redrawn until every user has a relay (users may have 0..H relays otherwise)."""
    for _ in range(tries):
        G = np.zeros((len(degrees), K), dtype=np.uint8)
        for i, m in enumerate(degrees):
            G[i, rng.choice(K, size=int(m), replace=False)] = 1
        if G.sum(axis=0).min() > 0:
            return G
    raise TopologyError(f"random_relay_choice: no draw in {tries} gave every user a relay "
                        f"(degrees {list(degrees)}, K = {K})")


def fig3_placement(K: int, H: int, p: int, seed: int, r: int = FIG3_R) -> np.ndarray:
    """Placement p of Fig. 3's point (K, H): every user on r uniformly random relays."""
    return random_regular(K, H, r, seed=placement_seed(seed, 3, H, K, r, p))


def fig4_placement(K: int, d: float, p: int, seed: int, users: str = "exact") -> np.ndarray:
    """Placement p of Fig. 4's point d (H = 4, relay degrees (1/2 +- d)K)."""
    degrees = fig4_degrees(K, d)
    rng = np.random.default_rng(np.random.SeedSequence(
        [int(seed), 4, K, *degrees, p, FIG4_USERS.index(users)]))
    if users == "exact":
        G = random_with_degrees(K, degrees, FIG4_R, rng)
    else:
        G = random_relay_choice(K, degrees, rng)
    return validate(G, source=f"fig4 d={d:g}")


# --- loads ---------------------------------------------------------------------------------

def placement_loads(G: np.ndarray, joint: bool = True, clock: dict | None = None) -> dict:
    """The loads of one placement G, exact (Fractions), in IVs per iteration.

    ``clock`` (optional) accumulates the seconds spent in each planner."""
    clock = {} if clock is None else clock
    t0 = time.perf_counter()
    plan = make_plan(G)
    t1 = time.perf_counter()
    clock["coded"] = clock.get("coded", 0.0) + t1 - t0
    up_u, down_u = get("uncoded").plan(G).planned_loads        # Example 1: (K, K)
    out = {"uplink_coded": plan.uplink_load, "downlink_coded": plan.downlink_load,
           "uplink_uncoded": Fraction(up_u), "downlink_uncoded": Fraction(down_u),
           "uplink_bound": plan.uplink_lower_bound, "downlink_bound": plan.downlink_lower_bound}
    if joint:
        t0 = time.perf_counter()
        jp = make_joint_plan(G)
        clock["joint"] = clock.get("joint", 0.0) + time.perf_counter() - t0
        out.update(uplink_joint=jp.uplink_load, downlink_joint=jp.downlink_load,
                   uplink_cut_bound=jp.uplink_lower_bound)
    out["uplink_equal_split"] = plan.equal_split_uplink_load
    return out


def summarize(loads: list[dict]) -> dict:
    """Mean (exact, then float) of every quantity over the placements, and min/max of
    the ones that vary (:data:`SPREAD`)."""
    keys = [k for k in loads[0]]
    n = len(loads)
    out = {k: float(sum((x[k] for x in loads), Fraction(0)) / n) for k in keys}
    for k in SPREAD:
        if k in loads[0]:
            out[f"{k}_min"] = float(min(x[k] for x in loads))
            out[f"{k}_max"] = float(max(x[k] for x in loads))
    return out


def row_of(x, H: int, K: int, d, loads: list[dict]) -> dict:
    """One CSV row: :data:`COLUMNS` first, then the extra columns."""
    s = summarize(loads)
    row = {"x": x, "H": H, "K": K, "d": d, "placements": len(loads)}
    row.update({k: s[k] for k in COLUMNS[5:]})
    row.update({k: s[k] for k in EXTRA if k in s})
    row.update({f"{k}_{e}": s[f"{k}_{e}"] for k in SPREAD for e in ("min", "max")
                if f"{k}_{e}" in s})
    return row


def fig3_rows(Ks=FIG3_KS, Hs=FIG3_HS, placements: int = DEFAULT_PLACEMENTS, seed: int = 0,
              r: int = FIG3_R, joint: bool = True, clock: dict | None = None, log=None) -> list:
    """Fig. 3: one row per (H, K)."""
    rows = []
    for H in Hs:
        for K in Ks:
            loads = [placement_loads(fig3_placement(K, H, p, seed, r), joint, clock)
                     for p in range(placements)]
            rows.append(row_of(K, H, K, "", loads))
            if log:
                log(_progress(rows[-1]))
    return rows


def fig4_rows(ds=None, K: int = FIG4_K, placements: int = DEFAULT_PLACEMENTS, seed: int = 0,
              users: str = "exact", joint: bool = True, clock: dict | None = None,
              log=None) -> list:
    """Fig. 4: one row per d."""
    ds = default_ds(K) if ds is None else ds
    rows = []
    for d in ds:
        loads = [placement_loads(fig4_placement(K, d, p, seed, users), joint, clock)
                 for p in range(placements)]
        rows.append(row_of(d, FIG4_H, K, d, loads))
        if log:
            log(_progress(rows[-1]))
    return rows


def default_ds(K: int = FIG4_K) -> list[float]:
    """d = 0, 0.1, 0.2, ... with whole relay degrees (1/2 +- d)K in 1..K-1."""
    return heterogeneous_ds(K, r=FIG4_R, H=FIG4_H, step=0.1)


def _progress(row: dict) -> str:
    return (f"  H={row['H']} K={row['K']} d={row['d']}: coded ({row['uplink_coded']:.2f}, "
            f"{row['downlink_coded']:.2f}), uncoded ({row['uplink_uncoded']:g}, "
            f"{row['downlink_uncoded']:g}), bound ({row['uplink_bound']:.2f}, "
            f"{row['downlink_bound']:.2f})"
            + (f", joint ({row['uplink_joint']:.2f}, {row['downlink_joint']:.2f})"
               if "uplink_joint" in row else ""))


def format_table(rows: list[dict]) -> str:
    """The :data:`COLUMNS` of the rows as an aligned text table."""
    head = [c for c in COLUMNS] + [c for c in ("uplink_joint", "downlink_joint") if rows and c in rows[0]]
    lines = [" ".join(f"{c:>{max(8, len(c))}}" for c in head)]
    for r in rows:
        lines.append(" ".join(f"{r[c]:>{max(8, len(c))}.6g}" if isinstance(r[c], (int, float))
                              else f"{r[c]!s:>{max(8, len(c))}}" for c in head))
    return "\n".join(lines)


# --- plotting ------------------------------------------------------------------------------

def plot(rows: list[dict], path, figure: str) -> None:
    """The paper's layout: (a) uplink, (b) downlink; coded (red stars), uncoded (blue
    squares), Theorem 2 bound (green diamonds); Fig. 3 draws H = 5 solid, H = 10 dotted.
    Coded has its min-max range over the placements shaded; joint is the extra purple line."""
    import matplotlib  # local: plots only; matplotlib is optional (the [plots] extra)
    matplotlib.use("Agg")
    # local: plots only; matplotlib is optional (the [plots] extra)
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.3))
    series = sorted({r["H"] for r in rows})
    styles = ["-", ":", "--", "-."]
    for ax, link, name in ((axes[0], "uplink", "(a) Uplink Communication Loads"),
                           (axes[1], "downlink", "(b) Downlink Communication Loads")):
        for si, H in enumerate(series):
            pts = sorted((float(r["x"]), r) for r in rows if r["H"] == H)
            xs = [p for p, _ in pts]
            ls = styles[si % len(styles)]
            tag = f" (H = {H})" if figure == "fig3" else ""

            def col(key, pts=pts):
                return [float(r[key]) for _, r in pts]

            ax.plot(xs, col(f"{link}_coded"), ls, marker="*", markersize=9, color="tab:red",
                    label=f"coded{tag}")
            ax.fill_between(xs, col(f"{link}_coded_min"), col(f"{link}_coded_max"),
                            color="tab:red", alpha=0.12, linewidth=0)
            if si == 0 or figure != "fig3":
                ax.plot(xs, col(f"{link}_uncoded"), "-", marker="s", color="tab:blue",
                        label="uncoded")
            ax.plot(xs, col(f"{link}_bound"), ls, marker="D", markersize=5, color="tab:green",
                    label=f"lower bound (Thm 2){tag}")
            if f"{link}_joint" in pts[0][1]:
                ax.plot(xs, col(f"{link}_joint"), ls, marker="o", markersize=3, linewidth=1,
                        color="tab:purple", alpha=0.8, label=f"joint (seed 001){tag}")
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("number of users K" if figure == "fig3" else "heterogeneity d")
        ax.set_ylabel("communication load (IVs per iteration)")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    n = rows[0]["placements"] if rows else 0
    fig.suptitle(("Fig. 3: every user on 3 random relays" if figure == "fig3" else
                  f"Fig. 4: K = {rows[0]['K'] if rows else FIG4_K}, H = 4, relay degrees "
                  f"(1/2 ± d)K") + f"; mean of {n} placements, coded min-max shaded",
                 fontsize=10)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def have_matplotlib() -> bool:
    try:
        import matplotlib  # local: plots only; matplotlib is optional (the [plots] extra)
    except ImportError:
        return False
    return True


NO_MATPLOTLIB = ("matplotlib is not installed, so no PNG was written "
                 "(pip install -e '.[plots]'); the CSV was written")


# --- command line --------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    # a one-line usage: a bad option gives two short lines (usage, error) and exit 2
    p = argparse.ArgumentParser(prog="python -m hmtl_mpi.bench loads",
                usage="python -m hmtl_mpi.bench loads {fig3,fig4} [options]  (--help lists them)",
                description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("figure", choices=("fig3", "fig4"))
    p.add_argument("--placements", type=positive_int, default=DEFAULT_PLACEMENTS,
                   help=f"random placements per point (default {DEFAULT_PLACEMENTS}, as the paper)")
    p.add_argument("--seed", type=seed_value, default=0, help="seed of the placements (default 0)")
    p.add_argument("--csv", help="write the rows here")
    p.add_argument("--png", help="draw the figure here (needs matplotlib)")
    p.add_argument("--Ks", type=positive_int_list, default=FIG3_KS,
                   help="fig3: the K values (default 10,20,...,100)")
    p.add_argument("--Hs", type=positive_int_list, default=FIG3_HS,
                   help="fig3: the H values (default 5,10)")
    p.add_argument("--r", type=positive_int, default=FIG3_R,
                   help="fig3: relays per user (default 3)")
    p.add_argument("--K", type=positive_int, default=FIG4_K, help="fig4: K (default 50)")
    p.add_argument("--ds", type=float_list, default=None,
                   help="fig4: the d values (default 0,0.1,... with whole relay degrees)")
    p.add_argument("--fig4-users", choices=FIG4_USERS, default="exact",
                   help="fig4: exact = every user on exactly 2 relays, uniform over such "
                        "graphs (default); independent = every relay picks its users "
                        "independently")
    p.add_argument("--no-joint", action="store_true", help="skip the joint scheme's planner")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    return p


def check_args(parser, args) -> None:
    """Errors the types cannot see; each names its option (exit 2)."""
    if args.figure == "fig3":
        for K in args.Ks:
            if K < 2:
                parser.error(f"argument --Ks: K = {K}; at least 2 users are needed")
        for H in args.Hs:
            if not args.r <= H - 1:
                parser.error(f"argument --Hs: H = {H} needs more than --r = {args.r} relays")
            if not args.no_joint and H > MAX_RELAYS:
                parser.error(f"argument --Hs: H = {H} is above the joint planner's "
                             f"{MAX_RELAYS}; give --no-joint")
    else:
        ds = default_ds(args.K) if args.ds is None else args.ds
        if not ds:
            parser.error(f"argument --ds: no d gives whole relay degrees for --K {args.K}")
        for d in ds:
            try:
                fig4_degrees(args.K, d)
            except TopologyError as exc:
                parser.error(f"argument --ds: {exc}")
        args.ds = ds


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_args(parser, args)
    log = None if args.quiet else (lambda m: print(m, file=sys.stderr, flush=True))
    clock = {}
    load0 = os.getloadavg()
    t0 = time.perf_counter()
    joint = not args.no_joint
    if args.figure == "fig3":
        rows = fig3_rows(args.Ks, args.Hs, args.placements, args.seed, args.r, joint, clock, log)
    else:
        rows = fig4_rows(args.ds, args.K, args.placements, args.seed, args.fig4_users, joint,
                         clock, log)
    wall = time.perf_counter() - t0
    load1 = os.getloadavg()
    if args.csv:
        write_csv(rows, Path(args.csv))
        print(f"wrote {args.csv}")
    if args.png:
        if have_matplotlib():
            plot(rows, args.png, args.figure)
            print(f"wrote {args.png}")
        else:
            print(f"warning: --png: {NO_MATPLOTLIB}", file=sys.stderr)
    if not args.csv:
        print(format_table(rows))
    n = sum(r["placements"] for r in rows)
    print(f"{args.figure}: {n} placements in {wall:.1f} s (coded planner "
          f"{clock.get('coded', 0):.1f} s, joint planner {clock.get('joint', 0):.1f} s); "
          f"load average (1 min) {load0[0]:.1f} before, {load1[0]:.1f} after, "
          f"{os.cpu_count()} cores", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
