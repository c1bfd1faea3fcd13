"""``--scheme auto``: measure, predict every applicable scheme's iteration, run the fastest.

Every scheme of the workload that plans on the topology is a candidate (a plan
that fails, e.g. the joint LP beyond H = 16, leaves its scheme out, with why). Before
the run, on the job's own ranks and links:

1. **the links and the coding kernel** (:func:`hmtl_mpi.wire.probe.measure_links`,
   :func:`~hmtl_mpi.wire.probe.coding_speed`): each link class's rate, the kernel's
   input bytes per second;
2. **one warm-up iteration of the learning**, on rank 0: every user's local update
   (eq. 2) from its initial model, then one global update (eq. 3), on a fresh learner
   holding the job's data (the run's learners are not touched);
3. **each candidate's fixed cost per iteration**: a few iterations of its exchange
   with IVs of :data:`TRIAL_DIM` values (a synthetic learner), timed like the run
   (from the start barrier to the end barrier, median after one warm-up). This holds
   everything that does not grow with the IV: the latency of every round of
   messages, the collectives (the downlink's scatter and allgather), the barriers,
   the parts' own Python work and the ranks' competition for cores. It is what made
   the coded schemes lose with small IVs, and no per-link latency predicts it on an
   oversubscribed host.

The prediction per scheme (:func:`predict`) is that fixed cost, plus the bytes of a
real IV over the measured rates (eq. 13's ``L V / W`` per link class, from the
scheme's :meth:`~hmtl_mpi.schemes.base.Scheme.link_loads`), plus the coding work at
the measured speed, plus the learning: the local updates, which the users run at
once, and the global update on each rank the scheme runs it on
(:meth:`~hmtl_mpi.schemes.base.Scheme.global_updates`). Work that several ranks do at
once on one host takes ``ceil(ranks / cores)`` times as long. The scheme predicted
fastest runs (:func:`choose`); the report says what was predicted and why
(``"auto": {"chosen", "predicted_seconds", "reason", ...}``).
"""

from __future__ import annotations

import math
import os
import time
from collections import Counter
from dataclasses import replace

import numpy as np

from ..learning.learners import SyntheticLearner
from ..schemes.base import Job
from ..vocabulary import WORLD, host_rank
from ..wire.probe import coding_speed, measure_links
from .hosting import rank_link_loads, rank_part
from .predict import phase_seconds

TRIAL_DIM = 16          # values per IV in the fixed-cost trial: every cost that does not grow
TRIAL_ITERATIONS = 8    # per scheme; the first is a warm-up, the median of the others kept


def choose(predicted: dict, skipped: dict | None = None) -> tuple:
    """(chosen name, reason) from ``predicted`` (name -> seconds per iteration): the
    smallest; a tie goes to the scheme listed first. ``skipped``: name -> why it is not
    a candidate (named in the reason)."""
    if not predicted:
        raise ValueError("--scheme auto: no scheme plans on this topology")
    order = sorted(predicted, key=lambda n: (predicted[n], list(predicted).index(n)))
    best = order[0]
    reason = f"{best} is predicted fastest: {_time(predicted[best])} per iteration"
    if len(order) > 1:
        others = ", ".join(f"{n} {_time(predicted[n])} "
                           f"(+{100 * (predicted[n] / predicted[best] - 1):.0f}%)"
                           if predicted[best] > 0 else f"{n} {_time(predicted[n])}"
                           for n in order[1:])
        reason += f", against {others}"
    if skipped:
        reason += "; not applicable: " + "; ".join(f"{n} ({why})" for n, why in skipped.items())
    return best, reason


def concurrent(seconds: list, hosts: list, cores: int) -> float:
    """Wall time of work items (``seconds[j]`` on host ``hosts[j]``) run at once, one per
    rank: on each host the longest item, or all of them shared over its ``cores``."""
    by_host: dict = {}
    for s, h in zip(seconds, hosts):
        by_host.setdefault(h, []).append(float(s))
    return max((max(max(v), sum(v) / cores) for v in by_host.values()), default=0.0)


def predict(scheme, fixed_s: float, iv_bytes: int, dim: int, links: dict, speed: float,
            learning: dict, parallel, per_rank: int = 1) -> dict:
    """Seconds per iteration of ``scheme``, by part (see the module doc). ``fixed_s``: its
    trial's median iteration; ``links``: per link class (latency, bytes/s); ``speed``: the
    kernel's bytes/s; ``learning``: {"local": seconds of the local updates run at once,
    "global": one global update}; ``parallel(n)``: how many times longer n ranks take
    than one to do the same work at once (1 with a core each); ``per_rank``: users per
    user rank (``--users-per-rank``), whose one link carries them all."""
    rates = {c: (0.0, b) for c, (_, b) in links.items()}    # latencies: in the trial
    loads = rank_link_loads(scheme.link_loads(), scheme.K, per_rank)
    phases = phase_seconds(loads, iv_bytes, rates, scheme.coding_work(dim), speed)
    transfer = sum(phases[p] for p in ("user_to_relay", "relay_to_server", "server_to_relay",
                                       "relay_to_user"))
    coding = (phases["encode"] + phases["decode"]) * parallel(max(1, scheme.coding_ranks()))
    learn = learning["local"] + learning["global"] * parallel(scheme.global_updates())
    parts = {"fixed": fixed_s, "transfer": transfer, "coding": coding, "learning": learn}
    parts["total"] = sum(parts.values())
    return parts


def time_learning(learner, K: int, make, clock=time.thread_time) -> dict:
    """Rank 0: one warm-up iteration of the learning on a fresh learner with the job's data
    (``make(tasks)`` builds it; ``learner``: the set-up learner that read them). Returns
    {"local_each": [seconds per user], "global": seconds}, in this thread's CPU time: the
    work itself, which the machine's other load must not inflate (on a loaded machine a
    2 ms local update took 20-70 ms of wall time)."""
    tasks = {k: learner.task(k) for k in range(K)} if hasattr(learner, "task") else None
    fresh = make(tasks)
    fresh.warm_up()
    each, ivs = [], np.empty((K, fresh.dim))
    for k in range(K):
        t0 = clock()
        ivs[k] = fresh.local_update(k, 0, fresh.initial_model(k))
        each.append(clock() - t0)
    t0 = clock()
    fresh.global_update(0, ivs)
    return {"local_each": each, "global": clock() - t0}


def trials(schemes, setup, endpoint, state, run_steps) -> dict | None:
    """Every rank: ``TRIAL_ITERATIONS`` iterations of every scheme with IVs of ``TRIAL_DIM``
    values, timed like the run, the schemes taking turns iteration by iteration (so that
    a change in the machine's load hits them alike); rank 0 returns name -> the median
    iteration after the first."""
    config, G = setup.config, setup.G
    parts = []
    for scheme in schemes:
        job = Job(G, SyntheticLearner(G.shape[1], TRIAL_DIM, config.seed), flat=config.flat)
        parts.append(rank_part(scheme, job, endpoint, config.downlink, config.users_per_rank))
    records = {s.name: [] for s in schemes}
    for it in range(TRIAL_ITERATIONS):
        for scheme, me in zip(schemes, parts):
            one = config.decided(iterations=it + 1, quiet=True, inject_fault=None,
                                 eval_every=None, dim=TRIAL_DIM)
            state.step("--scheme auto: timing the exchange", scheme=scheme.name, iteration=None)
            endpoint.barrier(WORLD, f"start of {scheme.name}'s trial (--scheme auto)")
            records[scheme.name] = run_steps(scheme, me, endpoint, state, one, None, it,
                                             records[scheme.name])
    if endpoint.rank != 0:
        return None
    return {name: float(np.median([r["seconds"]["total"] for r in recs[1:]]))
            for name, recs in records.items()}


def select(setup, endpoint, state, run_steps, make_learner):
    """Every rank: probe, time, predict, and keep the scheme predicted fastest. Returns
    (the set-up with that scheme alone in ``schemes`` and ``config.schemes``, and on rank
    0 the report's ``auto`` field in ``auto``; on rank 0 the per-scheme link prediction
    that ``predict_times`` would give, None elsewhere or without links).
    ``make_learner(tasks)`` builds a fresh learner of the job's (``learner_for``)."""
    config, G, schemes = setup.config, setup.G, setup.schemes
    H, K = G.shape
    dim = config.dim
    iv_bytes = 8 * dim
    links = None
    if endpoint.has_links:
        state.step("--scheme auto: probing the links")
        links = measure_links(endpoint, G, config.flat, iv_bytes, config.users_per_rank)
    fixed = trials(schemes, setup, endpoint, state, run_steps)
    choice = np.zeros(1, dtype=np.int64)
    info = predicted_links = None
    if endpoint.rank == 0:
        state.step("--scheme auto: timing the learning and the coding kernel")
        if links is None:
            links = {"w1": (0.0, math.inf), "w2": (0.0, math.inf)}
        speed = coding_speed(dim)
        learning = time_learning(setup.learner, K, make_learner)
        hosts = list(setup.rank_hosts) or ["one"] * endpoint.size
        cores = max(1, os.cpu_count() or 1) if endpoint.has_links else 10 ** 9
        if config.flat:          # relay i runs the local updates of its row of G itself
            local = concurrent([sum(learning["local_each"][k] for k in np.flatnonzero(G[i]))
                                for i in range(H)], hosts[1:1 + H], cores)
        else:                    # a rank with several users runs them one after the other
            ranks = [host_rank(k, H, config.users_per_rank) for k in range(K)]
            per_rank = {r: sum(t for t, q in zip(learning["local_each"], ranks) if q == r)
                        for r in sorted(set(ranks))}
            local = concurrent(list(per_rank.values()), [hosts[r] for r in per_rank], cores)
        relay_hosts = Counter(hosts[1:1 + H])
        busiest = max(relay_hosts.values()) if relay_hosts else 1

        def parallel(n):
            return 1 if n <= 1 else math.ceil(min(n, busiest) / cores)
        parts = {s.name: predict(s, fixed[s.name], iv_bytes, dim, links, speed,
                                 {"local": local, "global": learning["global"]}, parallel,
                                 config.users_per_rank)
                 for s in schemes}
        seconds = {n: p["total"] for n, p in parts.items()}
        chosen, reason = choose(seconds, dict(setup.skipped))
        choice[0] = [s.name for s in schemes].index(chosen)
        info = {"chosen": chosen, "predicted_seconds": seconds, "reason": reason,
                "predicted_parts": parts,
                "measured": {"w1_bytes_per_s": _finite(links["w1"][1]),
                             "w2_bytes_per_s": _finite(links["w2"][1]),
                             "coding_bytes_per_s": speed,
                             "local_update_s": learning["local_each"],
                             "global_update_s": learning["global"], "cores": cores
                             if endpoint.has_links else None}}
        probe = {"w1_latency_s": links["w1"][0], "w1_bytes_per_s": links["w1"][1],
                 "w2_latency_s": links["w2"][0], "w2_bytes_per_s": links["w2"][1],
                 "coding_bytes_per_s": speed}
        predicted_links = {s.name: {"predicted_seconds": phase_seconds(
            rank_link_loads(s.link_loads(), K, config.users_per_rank), iv_bytes, links,
            s.coding_work(dim), speed), "probe": probe}
            for s in schemes} if endpoint.has_links else None
        print(f"hmtl_mpi: --scheme auto chose {chosen}: {reason} (fixed cost per "
              f"iteration measured with {TRIAL_DIM}-value IVs, plus {iv_bytes}-byte IVs "
              f"over the measured links, coding at {speed / 1e6:.0f} MB/s and one "
              f"warm-up iteration of the learning)", flush=True)
    endpoint.bcast(WORLD, choice, 0, "the scheme --scheme auto chose")
    kept = schemes[int(choice[0])]
    setup = replace(setup, schemes=[kept], config=config.decided(schemes=(kept.name,)),
                    auto=info)
    return setup, predicted_links


def _finite(x: float):
    """A rate for the JSON report: None where nothing was measured (no links)."""
    return float(x) if math.isfinite(x) else None


def _time(seconds: float) -> str:
    return f"{seconds:.2f} s" if seconds >= 1 else f"{1e3 * seconds:.3g} ms"
