"""Network benchmark: the paper's Fig. 5/6/7 sweeps on an emulated network.

``python -m hmtl_mpi.bench network EXPERIMENT [...]`` (the lead wires it as
``python -m hmtl_mpi.bench network ...``). For every setting of an experiment it
generates the topology G, runs ``launch/netns-run --w1 W1 --w2 W2 -n 1+H+K --
python -m hmtl_mpi --topology G --scheme coded`` and then the same with
``--scheme uncoded`` (separate jobs, so each scheme has the network to itself),
reads both JSON reports and writes one CSV row per setting: the median seconds
of every phase of both schemes, the measured and planned loads, and the time
model of eq. (13)/(15) fed with the measured loads, V = iv_bytes * 8 and the
W1/W2 rates, plus the measured compute phases. A PNG plots measured total and
relay<->server time (coded vs uncoded) against the swept variable with the model
as dashed lines.

Experiments (defaults; ``--dim``, ``--iterations``, ``--rates`` and the per-
experiment lists can be overridden):

  check  the paper's Fig. 2 topology (K = 10, H = 5), W1 = 100mbit, W2 = 20mbit,
         4 iterations
  fig6   H = 5, r in {2, 3}, K = 10, 20, 30, 40 (``--Ks``), the Theorem 3 symmetric
         design (``--fig6-topology random`` for r random relays per user)
  fig5   K = 20, H in {10, 20}, r in {1, 3, 5, 7, 9} (``--rs``)
  fig7   H = 4, r = 2, K = 30 (``--K7``, a list), heterogeneity d in {0, .1, .2, .3, .4}
         (``--ds``; (r/4 +- d)K must be whole numbers); ``--fig7-topology random``
         draws G uniformly among the graphs with those relay degrees

The job: ``--dataset synthetic --dim D`` by default (random IVs); ``--dataset
mnist`` (or digits, har) runs MOCHA, the paper's learner, on that data, and
``--job-args "..."`` appends more of the job's options (e.g. ``--lam 1e-4``).

Placements and load (the paper averages 50 random placements per point):
``--placements N`` runs every setting of a random topology on N placements
(topology seeds --seed, --seed + 1, ...; the job's own seed stays --seed), writes
one row per placement to ``<out>_runs.csv`` and their means (and the std of the
totals) to ``<out>``. ``--one-job`` runs both schemes in one netns-run job, one
after the other on the same links (half the start-up cost; the job checks the
final models are identical). While a job runs, the processes that are runnable
and not part of it are counted every 0.5 s (``foreign_load``: other people's
work; the 1-minute load average is recorded too but includes our own ranks,
which poll); a run whose mean foreign load exceeds ``--max-load`` (default the
number of cores) is marked ``loaded``, and with ``--repeat-loaded`` run once more
(the second run is kept, ``repeated`` is set).

Rates: ``--rates 100mbit:100mbit,100mbit:20mbit`` (W1:W2 pairs; default both
for fig6/fig7, only 100mbit:100mbit for fig5, 100mbit:20mbit for check).

The model columns (per iteration; V bits per IV; loads in IVs, measured as the
bytes each link class carried divided by iv_bytes):

  model13_*   eq. (13)/(15) literally: (L_ue + L_eu) V / W1 + (L_up + L_down) V / W2
              + measured compute (local_update + encode + decode + global_update).
              One W1 pipe carries every user's traffic in turn.
  model_*     the same with the W1 term per link, as netns-run builds the network:
              every user has its own W1 link, so the user<->relay phases take
              the busiest user's load: max_k (copies user k sends) V / W1 up and
              one model V / W1 down. The W2 term (one server link shared by all
              relays) is the same as in (13).

The relay<->server model, (L_up + L_down) V / W2, is the same in both.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from ..cli import float_list, positive_float, positive_int, positive_int_list
from ..learning.learners import DATASETS
from ..planning import topology as T
from ..planning.hierarchical import make_plan
from ..vocabulary import PHASES

REPO = Path(__file__).resolve().parents[2]
NETNS_RUN = REPO / "launch" / "netns-run"
OUT_DIR = REPO / "benchmarks" / "network"

COMPUTE_PHASES = ("local_update", "encode", "decode", "global_update")
LINKS = ("user_to_relay", "relay_to_server", "server_to_relay", "relay_to_user")
SCHEMES = ("coded", "uncoded")
EXPERIMENTS = ("check", "fig6", "fig5", "fig7")

# Ethernet framing of a full TCP segment on these veths (MTU 1500, TCP timestamps):
# 1448 payload bytes travel in a 1514-byte frame, and tbf counts the frame.
TCP_FRAME_OVERHEAD = 1514 / 1448


# --- pure helpers (unit-tested) ---------------------------------------------------------

_RATE_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([kmgt]?)(i?)(bit|bps)?\s*$",
                      re.IGNORECASE)


def rate_bps(rate: str) -> float:
    """A tc rate ('100mbit', '1gbit', '500kbit', '12.5mbps', '2mibit', '8000') in bit/s.

    As in tc: 'bit' or a bare number are bits per second, 'bps' is BYTES per
    second, k/m/g/t are powers of 1000 and ki/mi/gi/ti powers of 1024.
    """
    m = _RATE_RE.match(str(rate))
    if not m:
        raise ValueError(f"not a tc rate: {rate!r}")
    value, prefix, binary, unit = m.groups()
    base = 1024 if binary else 1000
    scale = base ** ("kmgt".index(prefix.lower()) + 1) if prefix else 1
    bits = float(value) * scale
    if unit and unit.lower() == "bps":
        bits *= 8
    return bits


def time_model(loads: dict, V_bits: float, w1_bps: float, w2_bps: float,
               compute_s: float = 0.0, user_up_max: float | None = None,
               user_down_max: float | None = None) -> dict:
    """Per-iteration time of eq. (12)/(13) (coded) or (15) (uncoded, loads K).

    ``loads``: IVs carried per link class, keys user_to_relay, relay_to_server,
    server_to_relay, relay_to_user. Returns the eq. (13) terms and totals:

    * ``w1_s`` = (L_ue + L_eu) V / W1, ``w2_s`` = (L_up + L_down) V / W2,
      ``comm_s`` = their sum, ``total_s`` = compute_s + comm_s (eq. 12);
    * with ``user_up_max`` / ``user_down_max`` (IVs the busiest user sends /
      receives on its own W1 link) also the per-link variant ``net_w1_s`` =
      (user_up_max + user_down_max) V / W1, ``net_comm_s``, ``net_total_s``;
    * ``relay_to_server_s`` = L_up V / W2, ``server_to_relay_s`` = L_down V / W2,
      ``relay_server_s`` = their sum (the same in both variants).
    """
    up, down = loads["relay_to_server"], loads["server_to_relay"]
    w1 = (loads["user_to_relay"] + loads["relay_to_user"]) * V_bits / w1_bps
    w2 = (up + down) * V_bits / w2_bps
    out = {"w1_s": w1, "w2_s": w2, "comm_s": w1 + w2, "total_s": compute_s + w1 + w2,
           "relay_to_server_s": up * V_bits / w2_bps,
           "server_to_relay_s": down * V_bits / w2_bps, "relay_server_s": w2}
    if user_up_max is not None and user_down_max is not None:
        nw1 = (user_up_max + user_down_max) * V_bits / w1_bps
        out.update({"net_w1_s": nw1, "net_comm_s": nw1 + w2, "net_total_s": compute_s + nw1 + w2})
    return out


def uncoded_model(K: int, V_bits: float, w1_bps: float, w2_bps: float,
                  compute_s: float = 0.0) -> float:
    """Eq. (15): T = T_comp + 2KV/W1 + 2KV/W2."""
    return compute_s + 2 * K * V_bits / w1_bps + 2 * K * V_bits / w2_bps


def reduction_pct(coded: float, uncoded: float) -> float:
    """How much less time coded takes than uncoded, in % of uncoded."""
    if not uncoded or uncoded != uncoded or coded != coded:
        return float("nan")
    return 100.0 * (uncoded - coded) / uncoded


def heterogeneous_ds(K: int, r: int = 2, H: int = 4, step: float = 0.05) -> list[float]:
    """Values d = 0, step, 2 step, ... for which (r/H +- d) K are whole numbers of
    users between 1 and K - 1 (the Fig. 7 design)."""
    out = []
    i = 0
    while True:
        d = round(i * step, 10)
        hi, lo = (r / H + d) * K, (r / H - d) * K
        if hi >= K - 0.5 or lo < 0.5:
            break
        if abs(hi - round(hi)) < 1e-9 and abs(lo - round(lo)) < 1e-9:
            out.append(d)
        i += 1
    return out


def summarize_report(report: dict, G=None) -> dict:
    """Medians of one scheme's report, and its loads per link class.

    Loads per link class are the median over iterations of bytes / iv_bytes.
    With G (H x K 0/1) also the busiest user's uplink load: users of a coded
    scheme send their IV to each of their r_k relays (user_to_relay carries sum r_k
    IVs), uncoded users to their home relay only (K IVs).
    """
    iv = report["iv_bytes"]
    its = report["iterations"]
    loads = {link: statistics.median(it["bytes"].get(link, 0) for it in its) / iv
             for link in LINKS}
    loads["relay_to_relay"] = statistics.median(it["bytes"].get("relay_to_relay", 0)
                                                for it in its) / iv
    med = dict(report["median_seconds"])
    out = {"median_seconds": med, "loads": loads,
           "compute_s": sum(med.get(p, 0.0) for p in COMPUTE_PHASES),
           "relay_server_s": (med["relay_to_server"] + med["server_to_relay"]
                              + med.get("exchange", 0.0)),      # pipelined: coding included
           "phase_sum_s": sum(med.get(p, 0.0) for p in PHASES if p != "total"),
           "measured_loads": report["measured_loads"], "planned_loads": report["planned_loads"],
           "K": report["K"], "H": report["H"], "iv_bytes": iv,
           "bit_exact": bool(report.get("ivs_bit_exact")) and bool(report.get("models_delivered_intact"))}
    if G is not None:
        K = report["K"]
        degrees = [int(sum(int(G[i][k]) for i in range(len(G)))) for k in range(K)]
        copies = degrees if round(loads["user_to_relay"]) == sum(degrees) else [1] * K
        per_copy = loads["user_to_relay"] / max(1, sum(copies))
        out["user_up_max"] = max(copies) * per_copy
        out["user_down_max"] = loads["relay_to_user"] / K
    return out


# --- settings ----------------------------------------------------------------------------

def _parse_rates(text):
    pairs = []
    for item in text.split(","):
        w1, _, w2 = item.partition(":")
        if not w2:
            raise SystemExit(f"--rates: '{item}' is not W1:W2")
        rate_bps(w1), rate_bps(w2)
        pairs.append((w1.strip(), w2.strip()))
    return pairs


def settings_for(experiment: str, args) -> list[dict]:
    """The list of settings of an experiment (no runs)."""
    default_rates = {"check": "100mbit:20mbit", "fig6": "100mbit:100mbit,100mbit:20mbit",
                     "fig5": "100mbit:100mbit", "fig7": "100mbit:100mbit,100mbit:20mbit"}
    rates = _parse_rates(args.rates or default_rates[experiment])
    out = []
    for w1, w2 in rates:
        if experiment == "check":
            out.append(dict(topology="paper-fig2", K=10, H=5, r="", d="", sweep="setting", x=0,
                            series="paper-fig2", w1=w1, w2=w2))
        elif experiment == "fig6":
            for r in args.r6:
                for K in args.Ks:
                    out.append(dict(topology=args.fig6_topology, K=K, H=5, r=r, d="", sweep="K",
                                    x=K, series=f"r={r}", w1=w1, w2=w2))
        elif experiment == "fig5":
            for H in args.H5:
                for r in args.rs:
                    if r >= H:
                        continue
                    out.append(dict(topology="random", K=args.K5, H=H, r=r, d="", sweep="r", x=r,
                                    series=f"H={H}", w1=w1, w2=w2))
        elif experiment == "fig7":
            kind = ("heterogeneous-random" if getattr(args, "fig7_topology", "") == "random"
                    else "heterogeneous")
            for K in _as_tuple(args.K7):
                ds = (list(args.ds) if args.ds
                      else [d for d in heterogeneous_ds(K) if abs(d * 10 - round(d * 10)) < 1e-9])
                whole = heterogeneous_ds(K, step=0.01)
                bad = [d for d in ds if not any(abs(d - w) < 1e-9 for w in whole)]
                if bad:
                    raise SystemExit(f"--ds: d = {bad[0]:g} does not give whole relay degrees "
                                     f"(1/2 +- d) K in 1..K-1 for K = {K}")
                for d in ds:
                    out.append(dict(topology=kind, K=K, H=4, r=2, d=d, sweep="d", x=d,
                                    series=f"K={K}", w1=w1, w2=w2))
        else:
            raise SystemExit(f"unknown experiment {experiment!r}; choose from {EXPERIMENTS}")
    for s in out:
        s["experiment"] = experiment
        s["dim"] = args.dim if getattr(args, "dataset", "synthetic") == "synthetic" else ""
        s["iterations"] = args.iterations or (4 if experiment == "check" else 3)
        s["seed"] = args.seed
        s["dataset"] = getattr(args, "dataset", "synthetic")
        s["job_args"] = list(getattr(args, "job_args", ()) or ())
    return out


def _as_tuple(v) -> tuple:
    return tuple(v) if isinstance(v, (list, tuple)) else (v,)


def placements_of(s: dict, placements: int) -> list[dict]:
    """Setting s on ``placements`` random topologies: topology seeds seed, seed + 1, ...
    (fixed designs -- paper-fig2, symmetric -- have one placement)."""
    n = placements if s["topology"] in RANDOM_TOPOLOGIES else 1
    return [dict(s, placement=p, topology_seed=s["seed"] + p) for p in range(n)]


RANDOM_TOPOLOGIES = ("random", "heterogeneous", "heterogeneous-random")


def make_topology(s: dict, path: str):
    """Write G of setting s to path; returns (G as list of lists, how it was drawn)."""

    kind = s["topology"]
    seed = s.get("topology_seed", s["seed"])
    if kind == "paper-fig2":
        G = T.paper_fig2()
    elif kind == "random":
        try:
            G = T.random_regular(s["K"], s["H"], s["r"], seed=seed)
        except T.TopologyError:
            # e.g. K = H with r = 1: every relay needs exactly one user, which a uniform
            # draw almost never gives; deal users to the least-loaded relays instead.
            G = balanced_random(s["K"], s["H"], s["r"], seed=seed)
            kind = "balanced-random"
    elif kind == "symmetric":
        groups = math.comb(s["H"], s["r"])
        if s["K"] % groups:
            raise SystemExit(f"symmetric: K = {s['K']} is not a multiple of C({s['H']}, {s['r']}) "
                             f"= {groups}")
        G = T.symmetric(s["H"], s["r"], per_group=s["K"] // groups)
    elif kind == "heterogeneous":
        G = T.heterogeneous(s["K"], s["r"], s["d"], seed=seed)
    elif kind == "heterogeneous-random":
        # the Fig. 4/7 degrees, G uniform among the graphs that have them
        K, r, d = s["K"], s["r"], s["d"]
        degrees = [round((r / 4 + d) * K)] * 2 + [round((r / 4 - d) * K)] * 2
        G = T.random_with_degrees(K, degrees, r, np.random.default_rng([seed, 7]))
    else:
        raise ValueError(kind)
    G = T.validate(np.asarray(G, dtype=np.uint8), source=kind)
    np.save(path, G)
    return G.tolist(), kind


def balanced_random(K: int, H: int, r: int, seed: int = 0):
    """Every user joins the r relays with the fewest users so far (ties at random),
    users taken in a random order: relay degrees differ by at most one."""

    rng = np.random.default_rng(seed)
    G = np.zeros((H, K), dtype=np.uint8)
    deg = np.zeros(H)
    for k in rng.permutation(K):
        order = sorted(range(H), key=lambda i: (deg[i], rng.random()))[:r]
        G[order, k] = 1
        deg[order] += 1
    return G


def print_plans(settings, n_seeds):
    """Planned (L_up, L_down) per setting: the setting's own G, and for random
    placements also seeds 1..n_seeds and the symmetric design where it exists."""

    def loads(G):
        p = make_plan(G)
        return f"({float(p.uplink_load):.2f}, {float(p.downlink_load):.2f})"

    seen = set()
    for s in settings:
        key = (s["K"], s["H"], s["r"], s["d"], s["topology"])
        if key in seen:
            continue
        seen.add(key)
        with tempfile.TemporaryDirectory() as tmp:
            G, kind = make_topology(s, os.path.join(tmp, "g.npy"))
        line = f"K={s['K']} H={s['H']} r={s['r']} d={s['d']} {kind}: {loads(np.array(G))}"
        if s["r"] != "" and s["topology"] in ("random", "symmetric"):
            rnd = []
            for seed in range(1, n_seeds + 1):
                try:
                    rnd.append(loads(T.random_regular(s["K"], s["H"], s["r"], seed=seed)))
                except T.TopologyError:
                    rnd.append("-")
            line += f"; random seeds 1..{n_seeds}: " + " ".join(rnd)
            if s["K"] % math.comb(s["H"], s["r"]) == 0:
                line += "; symmetric: " + loads(T.symmetric(s["H"], s["r"],
                                                            s["K"] // math.comb(s["H"], s["r"])))
        line += f"; uncoded ({s['K']}, {s['K']})"
        print(line, flush=True)


def data_label(dataset: str, dim) -> str:
    return f"synthetic IVs, dim {dim}" if dataset == "synthetic" else f"MOCHA on {dataset}"


def setting_tag(s: dict) -> str:
    parts = [s["experiment"], f"K{s['K']}", f"H{s['H']}"]
    if s["topology"] not in ("paper-fig2", "heterogeneous"):
        parts.append(s["topology"][:3])
    if s["r"] != "":
        parts.append(f"r{s['r']}")
    if s["d"] != "":
        parts.append(f"d{s['d']:g}")
    data = s.get("dataset", "synthetic")
    parts += [f"w1-{s['w1']}", f"w2-{s['w2']}",
              f"dim{s['dim']}" if data == "synthetic" else data, f"it{s['iterations']}"]
    if s.get("placement", 0):
        parts.append(f"p{s['placement']}")
    return "_".join(parts)


# --- running -----------------------------------------------------------------------------

def job_data_args(s: dict) -> list[str]:
    """The job's learner options of setting s: synthetic IVs of --dim values, or MOCHA on
    a data set (its dimension is the data's), then any extra ``job_args``."""
    data = s.get("dataset", "synthetic")
    args = ["--dataset", data] + (["--dim", str(s["dim"])] if data == "synthetic" else [])
    return args + list(s.get("job_args", ()))


def _process_table() -> dict:
    """pid -> (state, parent pid) of every process in /proc."""
    table = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as fh:
                text = fh.read()
        except OSError:                        # gone meanwhile
            continue
        fields = text[text.rfind(")") + 2:].split()
        table[int(name)] = (fields[0], int(fields[1]))
    return table


def foreign_runnable(roots, table: dict | None = None) -> int:
    """Runnable processes that are not ``roots`` or descendants of them, nor kernel
    threads (children of kthreadd, pid 2: e.g. the network-namespace clean-up our own
    jobs cause): the load that other work puts on the machine while our job runs (our
    ranks poll, so the load average counts every one of them)."""
    table = _process_table() if table is None else table
    children = {}
    for pid, (_, ppid) in table.items():
        children.setdefault(ppid, []).append(pid)
    ours, todo = set(), [*roots, 2]
    while todo:
        pid = todo.pop()
        if pid not in ours:
            ours.add(pid)
            todo += children.get(pid, [])
    return sum(1 for pid, (state, _) in table.items() if state == "R" and pid not in ours)


class LoadPoller:
    """Counts :func:`foreign_runnable` every ``period`` seconds in a thread."""

    def __init__(self, roots, period: float = 0.5):
        self.roots, self.period, self.samples = list(roots), period, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.wait(self.period):
            try:
                self.samples.append(foreign_runnable(self.roots))
            except OSError:
                pass

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def summary(self) -> dict:
        s = self.samples
        return {"foreign_load": statistics.fmean(s) if s else float("nan"),
                "foreign_load_max": max(s) if s else float("nan"), "load_samples": len(s)}


def run_one(s: dict, scheme: str, gpath: str, report_path: Path, counters_path: Path,
            run_timeout: float, log) -> dict:
    """One netns-run job; returns {status, wall_s, loadavg_before, loadavg_after,
    foreign_load, foreign_load_max, load_samples, error}. ``scheme`` may be a comma list
    (the schemes then run one after the other in the one job)."""
    n = 1 + s["H"] + s["K"]
    cmd = [str(NETNS_RUN), "--w1", s["w1"], "--w2", s["w2"], "-n", str(n),
           "--timeout", str(int(run_timeout)), "--counters", str(counters_path), "--",
           sys.executable, "-m", "hmtl_mpi", "--topology", gpath, "--scheme", scheme,
           *job_data_args(s), "--iterations", str(s["iterations"]),
           "--seed", str(s["seed"]), "--quiet", "--report", str(report_path)]
    info = {"cmd": " ".join(cmd), "loadavg_before": os.getloadavg()[0]}
    if report_path.exists():
        report_path.unlink()
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL, cwd=str(REPO))
    poller = LoadPoller([os.getpid(), proc.pid])
    try:
        with poller:
            out, err = proc.communicate(timeout=run_timeout + 60)
        rc = proc.returncode
    except subprocess.TimeoutExpired:
        proc.terminate()  # netns-run traps SIGTERM: stops the job, removes the namespaces
        try:
            out, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        rc = "timeout"
    info["wall_s"] = time.monotonic() - t0
    info["loadavg_after"] = os.getloadavg()[0]
    info.update(poller.summary())
    if rc == 0 and report_path.exists():
        info["status"] = "ok"
    else:
        info["status"] = f"failed (exit {rc})"
        # netns-run prints a counter line per rank: keep the job's own messages
        lines = [ln for ln in (err or "").splitlines()
                 if not re.match(r"netns-run:\s+(\d+\s|server_link|relays_total|users_total|"
                                 r"rank\s)", ln)]
        info["error"] = "\n".join(lines)[-2000:]
        log(f"    {scheme}: FAILED exit {rc}: " + "\n      ".join(lines[-6:]))
    return info


def _server_wire(counters_path: Path):
    try:
        data = json.loads(counters_path.read_text())
        r0 = next(r for r in data["ranks"] if r["rank"] == 0)
        return r0["rx_bytes"] + r0["tx_bytes"]
    except (OSError, ValueError, KeyError, StopIteration):
        return ""


def build_row(s: dict, G, kind: str, results: dict) -> dict:
    """One CSV row from the setting, the topology and both schemes' run info+report."""
    w1b, w2b = rate_bps(s["w1"]), rate_bps(s["w2"])
    row = {k: s[k] for k in ("experiment", "sweep", "x", "series", "K", "H", "r", "d", "w1", "w2",
                              "dim", "iterations", "seed")}
    row["topology"] = kind
    row["ranks"] = 1 + s["H"] + s["K"]
    row["w1_bps"], row["w2_bps"] = w1b, w2b
    if "placement" in s:
        row["dataset"] = s.get("dataset", "synthetic")
        row["placement"] = s["placement"]
        row["topology_seed"] = s["topology_seed"]
    for scheme in SCHEMES:
        res = results.get(scheme, {})
        row[f"{scheme}_status"] = res.get("status", "skipped")
        row[f"{scheme}_wall_s"] = round(res.get("wall_s", float("nan")), 2)
        row[f"{scheme}_loadavg"] = round(res.get("loadavg_before", float("nan")), 2)
        if "foreign_load" in res:
            row[f"{scheme}_loadavg_after"] = round(res["loadavg_after"], 2)
            row[f"{scheme}_foreign_load"] = round(res["foreign_load"], 2)
            row[f"{scheme}_foreign_load_max"] = res["foreign_load_max"]
            row[f"{scheme}_loaded"] = bool(res.get("loaded", False))
            row[f"{scheme}_repeated"] = bool(res.get("repeated", False))
        report = res.get("report")
        if not report:
            continue
        sm = summarize_report(report, G)
        V = report["iv_bytes"] * 8
        row["iv_bytes"] = report["iv_bytes"]
        for p in PHASES:
            row[f"{scheme}_{p}_s"] = sm["median_seconds"][p]
        row[f"{scheme}_relay_server_s"] = sm["relay_server_s"]
        row[f"{scheme}_compute_s"] = sm["compute_s"]
        row[f"{scheme}_phase_sum_s"] = sm["phase_sum_s"]
        for link in LINKS + ("relay_to_relay",):
            row[f"{scheme}_L_{link}"] = sm["loads"][link]
        row[f"{scheme}_measured_up"] = sm["measured_loads"]["uplink"]
        row[f"{scheme}_measured_down"] = sm["measured_loads"]["downlink"]
        row[f"{scheme}_planned_up"] = sm["planned_loads"]["uplink"]
        row[f"{scheme}_planned_down"] = sm["planned_loads"]["downlink"]
        m = time_model(sm["loads"], V, w1b, w2b, sm["compute_s"], sm["user_up_max"],
                       sm["user_down_max"])
        row[f"{scheme}_model13_total_s"] = m["total_s"]
        row[f"{scheme}_model_total_s"] = m["net_total_s"]
        row[f"{scheme}_model_relay_to_server_s"] = m["relay_to_server_s"]
        row[f"{scheme}_model_server_to_relay_s"] = m["server_to_relay_s"]
        row[f"{scheme}_model_relay_server_s"] = m["relay_server_s"]
        # eq. (12)/(13) as the paper evaluates it: user links (K, K), the planned relay
        # loads, the measured compute (eq. (15) for uncoded)
        planned = sm["planned_loads"]["uplink"] + sm["planned_loads"]["downlink"]
        row[f"{scheme}_paper_model_total_s"] = (sm["compute_s"] + 2 * s["K"] * V / w1b
                                                + planned * V / w2b)
        row[f"{scheme}_bit_exact"] = sm["bit_exact"]
        wire = res.get("server_wire_bytes", "")
        row[f"{scheme}_server_wire_bytes"] = wire
        payload = sum(it["bytes"]["relay_to_server"] + it["bytes"]["server_to_relay"]
                      for it in report["iterations"])
        row[f"{scheme}_server_payload_bytes"] = payload
        row[f"{scheme}_server_wire_ratio"] = (wire / payload) if wire and payload else ""
    digests = [results.get(s_, {}).get("report", {}).get("model_digest") for s_ in SCHEMES]
    if all(digests):
        row["digests_equal"] = len(set(digests)) == 1
    add_reductions(row)
    return row


def add_reductions(row: dict) -> None:
    """The reduction columns (coded vs uncoded, %) of a row that has both schemes' times."""
    if all(f"{s_}_total_s" in row for s_ in SCHEMES):
        row["reduction_total_pct"] = reduction_pct(row["coded_total_s"], row["uncoded_total_s"])
        row["reduction_relay_server_pct"] = reduction_pct(row["coded_relay_server_s"],
                                                          row["uncoded_relay_server_s"])
        row["model_reduction_total_pct"] = reduction_pct(row["coded_model_total_s"],
                                                         row["uncoded_model_total_s"])
        row["model13_reduction_total_pct"] = reduction_pct(row["coded_model13_total_s"],
                                                           row["uncoded_model13_total_s"])
        row["model_reduction_relay_server_pct"] = reduction_pct(
            row["coded_model_relay_server_s"], row["uncoded_model_relay_server_s"])
        row["paper_model_reduction_total_pct"] = reduction_pct(
            row["coded_paper_model_total_s"], row["uncoded_paper_model_total_s"])


# Columns that identify a point of a sweep (the placements of a point share them).
POINT_KEYS = ("experiment", "sweep", "x", "series", "K", "H", "r", "d", "w1", "w2")


def aggregate(rows: list[dict]) -> list[dict]:
    """One row per point from the per-placement rows: the mean of every number over the
    placements where both schemes ran (``placements``), the std of the totals, how many
    runs were loaded, whether every placement's models agreed; reductions recomputed
    from the means (as the paper averages before comparing)."""
    groups = {}
    for row in rows:
        groups.setdefault(tuple(row.get(k) for k in POINT_KEYS), []).append(row)
    out = []
    for members in groups.values():
        ok = [r for r in members if all(r.get(f"{s_}_status") == "ok" for s_ in SCHEMES)]
        use = ok or members[:1]
        agg = {}
        for key in use[0]:
            vals = [r.get(key) for r in use]
            if key.endswith("_pct") or key in ("placement", "topology_seed"):
                continue
            if all(isinstance(v, bool) for v in vals):
                agg[key] = all(vals)
            elif all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vals) \
                    and key not in POINT_KEYS and any(v != vals[0] for v in vals):
                agg[key] = statistics.fmean(vals)
            else:
                agg[key] = vals[0]
        agg["placements"] = len(ok)
        agg["placements_run"] = len(members)
        for s_ in SCHEMES:
            tot = [r[f"{s_}_total_s"] for r in ok if f"{s_}_total_s" in r]
            if tot:
                agg[f"{s_}_total_s_std"] = statistics.pstdev(tot)
            agg[f"{s_}_loaded_runs"] = sum(bool(r.get(f"{s_}_loaded")) for r in members)
        if any("digests_equal" in r for r in members):
            agg["digests_equal"] = all(r.get("digests_equal", False) for r in ok)
        add_reductions(agg)
        out.append(agg)
    return out


def write_csv(rows: list[dict], path: Path):
    cols = []
    for row in rows:
        for k in row:
            if k not in cols:
                cols.append(k)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=cols)
        w.writeheader()
        for row in rows:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    for row in rows:
        for k, v in row.items():
            if v in ("", None) or k.endswith(("status", "w1", "w2", "series", "sweep",
                                               "experiment", "topology")):
                continue
            try:
                row[k] = float(v)
            except ValueError:
                pass
    return rows


def markdown_table(rows: list[dict]) -> str:
    """The rows as a Markdown table: totals, relay<->server times, reductions, loads."""
    def f(v, fmt="{:.2f}"):
        try:
            v = float(v)
        except (TypeError, ValueError):
            return "-"
        return "-" if v != v else fmt.format(v)

    head = ("| W1 / W2 | series | {x} | total coded s | total uncoded s | reduction % "
            "(model %) | r<->s coded s (model) | r<->s uncoded s (model) | r<->s reduction % "
            "(model %) | coded compute s | coded loads up, down | load avg |")
    sweep = rows[0]["sweep"] if rows else "x"
    lines = [head.format(x=sweep), "|" + "---|" * 12]
    for r in rows:
        lines.append(
            f"| {r['w1']} / {r['w2']} | {r['series']} | {f(r['x'], '{:g}')} "
            f"| {f(r.get('coded_total_s'))} | {f(r.get('uncoded_total_s'))} "
            f"| **{f(r.get('reduction_total_pct'), '{:.1f}')}** "
            f"({f(r.get('model_reduction_total_pct'), '{:.1f}')}) "
            f"| {f(r.get('coded_relay_server_s'))} ({f(r.get('coded_model_relay_server_s'))}) "
            f"| {f(r.get('uncoded_relay_server_s'))} ({f(r.get('uncoded_model_relay_server_s'))}) "
            f"| **{f(r.get('reduction_relay_server_pct'), '{:.1f}')}** "
            f"({f(r.get('model_reduction_relay_server_pct'), '{:.1f}')}) "
            f"| {f(r.get('coded_compute_s'))} "
            f"| {f(r.get('coded_L_relay_to_server'), '{:.2f}')}, "
            f"{f(r.get('coded_L_server_to_relay'), '{:.2f}')} "
            f"| {f(r.get('coded_loadavg'), '{:.0f}')}/{f(r.get('uncoded_loadavg'), '{:.0f}')} |")
    return "\n".join(lines)


# --- plotting ----------------------------------------------------------------------------

def plot(rows: list[dict], path: Path, title: str):
    """Rows of one experiment -> PNG: per rate setting, total and relay<->server time."""
    import matplotlib  # local: plots only; matplotlib is optional (the [plots] extra)
    matplotlib.use("Agg")
    # local: plots only; matplotlib is optional (the [plots] extra)
    import matplotlib.pyplot as plt

    def f(v):
        try:
            return float(v)
        except (TypeError, ValueError):
            return float("nan")

    rates = []
    for row in rows:
        if (row["w1"], row["w2"]) not in rates:
            rates.append((row["w1"], row["w2"]))
    experiment = rows[0]["experiment"] if rows else ""
    fig, axes = plt.subplots(len(rates), 2, figsize=(11, 4.2 * len(rates)), squeeze=False)
    colors = {"coded": "tab:red", "uncoded": "tab:blue"}
    markers = ["*", "s", "o", "^", "D", "v"]
    for ri, (w1, w2) in enumerate(rates):
        sub = [r for r in rows if (r["w1"], r["w2"]) == (w1, w2)]
        series = []
        for r in sub:
            if r["series"] not in series:
                series.append(r["series"])
        for ci, (metric, label) in enumerate((("total", "total time per iteration"),
                                              ("relay_server", "relay<->server time per iteration"))):
            ax = axes[ri][ci]
            for si, ser in enumerate(series):
                pts = sorted((f(r["x"]), r) for r in sub if r["series"] == ser)
                xs = [p[0] for p in pts]
                for scheme in SCHEMES:
                    key = f"{scheme}_{metric}_s"
                    mkey = f"{scheme}_model_{metric}_s"
                    ys = [f(p[1].get(key)) for p in pts]
                    ms = [f(p[1].get(mkey)) for p in pts]
                    ls = "-" if si == 0 else ":"
                    if experiment == "check":
                        continue
                    ax.plot(xs, ys, ls, marker=markers[si % len(markers)], color=colors[scheme],
                            markersize=8 if markers[si % len(markers)] == "*" else 5,
                            label=f"{scheme} {ser} measured")
                    ax.plot(xs, ms, "--", color=colors[scheme], alpha=0.55, linewidth=1.3,
                            marker=markers[si % len(markers)], markersize=3,
                            label=f"{scheme} {ser} model")
            if experiment == "check":
                _bars(ax, sub, metric, colors)
            ax.set_title(f"{label}\nW1 = {w1}, W2 = {w2}", fontsize=10)
            ax.set_xlabel({"K": "users K", "r": "relays per user r", "d": "heterogeneity d",
                           "setting": ""}.get(sub[0]["sweep"], sub[0]["sweep"]))
            ax.set_ylabel("seconds (median over iterations)")
            ax.set_ylim(bottom=0)
            ax.grid(alpha=0.3)
            if ci == 0:
                ax.legend(fontsize=7, ncol=2)
            if sub[0]["sweep"] in ("K", "r"):
                ax.set_xticks(sorted({f(r["x"]) for r in sub}))
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _bars(ax, sub, metric, colors):
    phases = (["local_update", "user_to_relay", "encode", "relay_to_server", "server_to_relay",
               "decode", "global_update", "relay_to_user", "total"] if metric == "total"
              else ["relay_to_server", "server_to_relay", "relay_server"])
    row = sub[0]
    width = 0.38
    for j, scheme in enumerate(SCHEMES):
        xs = [i + (j - 0.5) * width for i in range(len(phases))]
        ys = [float(row.get(f"{scheme}_{p}_s") or "nan") for p in phases]
        ax.bar(xs, ys, width, color=colors[scheme], alpha=0.8, label=f"{scheme} measured")
        model = {"relay_to_server": row.get(f"{scheme}_model_relay_to_server_s"),
                 "server_to_relay": row.get(f"{scheme}_model_server_to_relay_s"),
                 "relay_server": row.get(f"{scheme}_model_relay_server_s"),
                 "total": row.get(f"{scheme}_model_total_s")}
        for x, p in zip(xs, phases):
            if model.get(p) not in (None, ""):
                ax.hlines(float(model[p]), x - width / 2, x + width / 2, colors="k",
                          linestyles="--", linewidth=1.5,
                          label="model (eq. 13)" if (p == phases[-1] and j == 0) else None)
    ax.set_xticks(range(len(phases)))
    ax.set_xticklabels([p.replace("_", "\n") for p in phases], fontsize=7)


# --- command line ------------------------------------------------------------------------

def run(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m hmtl_mpi.bench network", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("experiment", choices=EXPERIMENTS)
    parser.add_argument("--out", help="CSV path (default benchmarks/network/<experiment>.csv); "
                                      "the PNG goes next to it with .png")
    parser.add_argument("--dim", type=positive_int, default=50_000,
                        help="float64 values per IV (default 50000 = 400 KB)")
    parser.add_argument("--iterations", type=int, default=0,
                        help="iterations per run (default 4 for check, 3 otherwise)")
    parser.add_argument("--rates", help="comma-separated W1:W2 pairs in tc syntax")
    parser.add_argument("--seed", type=int, default=1, help="topology, data and code seed")
    parser.add_argument("--Ks", type=positive_int_list, default="10,20,30,40", help="fig6: K values")
    parser.add_argument("--r6", type=positive_int_list, default="2,3", help="fig6: r values")
    parser.add_argument("--fig6-topology", choices=("symmetric", "random"), default="symmetric",
                        help="fig6: Theorem 3 design (K a multiple of C(5, r) = 10; default) or "
                             "every user on r random relays (seed --seed)")
    parser.add_argument("--plans", type=int, default=0, metavar="N",
                        help="print the planned loads of the settings' topologies (and, for "
                             "random ones, of N seeds) and exit; no runs")
    parser.add_argument("--K5", type=positive_int, default=20, help="fig5: K")
    parser.add_argument("--H5", type=positive_int_list, default="10,20", help="fig5: H values")
    parser.add_argument("--rs", type=positive_int_list, default="1,3,5,7,9", help="fig5: r values (r < H kept)")
    parser.add_argument("--K7", type=positive_int_list, default="30", help="fig7: K values")
    parser.add_argument("--fig7-topology", choices=("heterogeneous", "random"),
                        default="heterogeneous",
                        help="fig7: users dealt round-robin to the relays that need the most "
                             "(topology.heterogeneous; default) or G uniform among the graphs "
                             "with those relay degrees")
    parser.add_argument("--ds", type=float_list, default="", help="fig7: d values (default 0, .1, ... with "
                                                 "integer degrees)")
    parser.add_argument("--dataset", choices=DATASETS, default="synthetic",
                        help="the job's data: synthetic IVs of --dim values (default), or MOCHA "
                             "on digits / mnist / har (the paper's learner)")
    parser.add_argument("--job-args", type=shlex.split, default=[], metavar="'ARGS'",
                        help="more options for every job, one quoted string (e.g. "
                             "--job-args='--lam 1e-4')")
    parser.add_argument("--placements", type=positive_int, default=1,
                        help="random topologies per setting (seeds --seed, --seed + 1, ...); the "
                             "CSV holds their means, <out>_runs.csv every one (default 1)")
    parser.add_argument("--one-job", action="store_true",
                        help="run uncoded and coded in one job, one after the other")
    parser.add_argument("--max-load", type=positive_float, default=float(os.cpu_count() or 1),
                        help="mark a run 'loaded' when other work kept more processes than "
                             "this runnable on average (default: the number of cores)")
    parser.add_argument("--repeat-loaded", action="store_true",
                        help="run a loaded run once more (the second run is kept)")
    parser.add_argument("--run-timeout", type=positive_float, default=300,
                        help="seconds per netns-run job (MPIEXEC_TIMEOUT; default 300)")
    parser.add_argument("--budget", type=float, default=0,
                        help="stop starting new settings after this many seconds (0: no limit)")
    parser.add_argument("--reports-dir", help="where the per-run JSON reports are kept "
                                              "(default <out dir>/reports)")
    parser.add_argument("--reuse", action="store_true",
                        help="use a run's kept report instead of running it again")
    parser.add_argument("--reuse-only", action="store_true",
                        help="build the CSV/PNG from kept reports only; settings without one "
                             "are left out (no runs)")
    parser.add_argument("--plot-only", action="store_true",
                        help="re-plot an existing CSV, run nothing")
    parser.add_argument("--table", action="store_true",
                        help="with --plot-only: also print the CSV as a Markdown table")
    parser.add_argument("--list", action="store_true", help="print the settings and exit")
    args = parser.parse_args(argv)

    out = Path(args.out) if args.out else OUT_DIR / f"{args.experiment}.csv"
    png = out.with_suffix(".png")
    title = {"check": "check: paper-fig2 (K = 10, H = 5)",
             "fig6": "Fig. 6 setting: H = 5, r in {2, 3}, K swept",
             "fig5": f"Fig. 5 setting: K = {args.K5}, H in {{{', '.join(map(str, args.H5))}}}, r swept",
             "fig7": f"Fig. 7 setting: K = {', '.join(map(str, args.K7))}, H = 4, r = 2, "
                     f"d swept"}[args.experiment]
    title += f"  ({data_label(args.dataset, args.dim)}; solid measured, dashed model)"
    if args.plot_only:
        rows = read_csv(out)
        plot(rows, png, title)
        print(f"wrote {png}")
        if args.table:
            print(markdown_table(rows))
        return 0

    settings = settings_for(args.experiment, args)
    if args.plans:
        print_plans(settings, args.plans)
        return 0
    if args.reuse_only:
        args.reuse = True
    if args.list:
        for s in (p for s0 in settings for p in placements_of(s0, args.placements)):
            print(setting_tag(s), f"ranks={1 + s['H'] + s['K']}")
        return 0
    if os.geteuid() != 0:
        print("bench_network: netns-run needs root", file=sys.stderr)
        return 2
    reports_dir = Path(args.reports_dir) if args.reports_dir else out.parent / "reports"
    t_start = time.monotonic()
    rows = sweep(settings, out, reports_dir, run_timeout=args.run_timeout, budget=args.budget,
                 reuse=args.reuse, reuse_only=args.reuse_only, placements=args.placements,
                 one_job=args.one_job, max_load=args.max_load,
                 repeat_loaded=args.repeat_loaded)
    plot(rows, png, title)
    print(f"wrote {out} and {png}; wall time {time.monotonic() - t_start:.0f} s", flush=True)
    return 0


def _log(msg):
    print(msg, flush=True)


def run_measured(s: dict, schemes: str, gpath: str, rpath: Path, cpath: Path,
                 run_timeout: float, log, max_load: float, repeat_loaded: bool) -> dict:
    """:func:`run_one`, marked ``loaded`` when the mean foreign load during it exceeded
    ``max_load``; such a run is run once more if ``repeat_loaded`` (``repeated``)."""
    info = run_one(s, schemes, gpath, rpath, cpath, run_timeout, log)
    info["loaded"] = bool(info.get("foreign_load", 0) > max_load)
    if info["loaded"] and repeat_loaded:
        log(f"    loaded: {info['foreign_load']:.1f} runnable processes of others on average "
            f"(> {max_load:g}); running it once more")
        first = info["foreign_load"]
        info = run_one(s, schemes, gpath, rpath, cpath, run_timeout, log)
        info["loaded"] = bool(info.get("foreign_load", 0) > max_load)
        info["repeated"] = True
        info["first_foreign_load"] = first
    return info


def sweep(settings: list[dict], out: Path, reports_dir: Path, *, run_timeout: float = 300,
          budget: float = 0, reuse: bool = False, reuse_only: bool = False, placements: int = 1,
          one_job: bool = False, max_load: float | None = None, repeat_loaded: bool = False,
          log=_log) -> list[dict]:
    """Run every setting on ``placements`` placements (random topologies only), coded and
    uncoded (two jobs, or one with ``one_job``); returns one row per point (means over
    the placements, :func:`aggregate`) and writes them to ``out`` after every point,
    the per-placement rows to ``<out stem>_runs.csv`` when ``placements`` > 1, and
    every job's report to ``reports_dir``."""
    max_load = float(os.cpu_count() or 1) if max_load is None else max_load
    reuse = reuse or reuse_only
    reports_dir.mkdir(parents=True, exist_ok=True)
    runs_path = out.with_name(out.stem + "_runs.csv")
    jobs = [("both", ",".join(SCHEMES[::-1]))] if one_job else [(sc, sc) for sc in SCHEMES]
    t_start = time.monotonic()
    runs, rows = [], []
    with tempfile.TemporaryDirectory(prefix="bench_network_") as tmp:
        for s0 in settings:
            for s in placements_of(s0, placements):
                tag = setting_tag(s)
                gpath = os.path.join(tmp, f"{tag}.npy")
                G, kind = make_topology(s, gpath)
                if reuse_only and not all((reports_dir / f"{tag}_{name}.json").exists()
                                          for name, _ in jobs):
                    continue
                elapsed = time.monotonic() - t_start
                over = budget and elapsed > budget
                log(f"[{elapsed:6.0f}s] {tag} ({1 + s['H'] + s['K']} ranks, G {kind}, "
                    f"load {os.getloadavg()[0]:.1f})" + ("  SKIPPED: budget spent" if over else ""))
                results = {}
                for name, schemes in jobs:
                    rpath = reports_dir / f"{tag}_{name}.json"
                    cpath = reports_dir / f"{tag}_{name}.counters.json"
                    if over:
                        results.update({sc: {"status": "skipped (budget)"}
                                        for sc in schemes.split(",")})
                        continue
                    if reuse and rpath.exists():
                        info = {"status": "ok", "reused": True}
                        meta = rpath.with_suffix(".run.json")
                        if meta.exists():
                            info.update(json.loads(meta.read_text()))
                    else:
                        info = run_measured(s, schemes, gpath, rpath, cpath, run_timeout, log,
                                            max_load, repeat_loaded)
                        rpath.with_suffix(".run.json").write_text(json.dumps(info, indent=1))
                    if info["status"] != "ok":
                        results.update({sc: info for sc in schemes.split(",")})
                        continue
                    report = json.loads(rpath.read_text())
                    per_scheme = report.get("runs", {name: report})
                    # one job's counters hold both schemes' bytes: no per-scheme wire ratio
                    wire = _server_wire(cpath) if "," not in schemes else ""
                    for sc in schemes.split(","):
                        results[sc] = dict(info, report=per_scheme[sc], server_wire_bytes=wire)
                        med = per_scheme[sc]["median_seconds"]
                        log(f"    {sc:8} total {med['total']:.3f} s, relay<->server "
                            f"{med['relay_to_server'] + med['server_to_relay']:.3f} s, loads "
                            f"{per_scheme[sc]['measured_loads']}, wall {info.get('wall_s', 0):.1f} s"
                            f", foreign load {info.get('foreign_load', float('nan')):.1f}")
                row = build_row(s, G, kind, results)
                if "reduction_total_pct" in row:
                    log(f"    reduction: total {row['reduction_total_pct']:.1f}% "
                        f"(model {row['model_reduction_total_pct']:.1f}%, paper's eq. 13 "
                        f"{row['paper_model_reduction_total_pct']:.1f}%), relay<->server "
                        f"{row['reduction_relay_server_pct']:.1f}% "
                        f"(model {row['model_reduction_relay_server_pct']:.1f}%)")
                runs.append(row)
                # after every run, so a stopped sweep keeps its rows
                rows = aggregate(runs)
                write_csv(rows, out)
                if placements > 1:
                    write_csv(runs, runs_path)
    return rows


def main(argv=None) -> int:
    return run(argv)


if __name__ == "__main__":
    sys.exit(main())
