"""``--segments N|auto``: how many segments the pipelined coded exchange uses
(:mod:`hmtl_mpi.schemes.pipelined`; the model is docs/pipeline.md).

``N`` is taken as given (fewer when an IV has fewer than N granules, said in the
report's ``segments_reason``). ``auto`` is decided on rank 0 after the link probe
(:mod:`hmtl_mpi.wire.probe`) and broadcast to every rank: per scheme, the exchange's
stages are predicted for one segment (:func:`stages`), the per-segment overhead is
measured (:func:`per_segment_overhead`: the coding calls on a one-granule slice, plus
the links' latency), and J minimises the pipeline model (:func:`pipeline_seconds`,
our formulation):

    T(J) = S / J + (J - 1) B / J + L + (J - 1) o

with S the stages' sum (a segment's way through every stage), B the busiest
resource's share (the relays' CPU encodes and decodes, the server's link carries the
uplink and then the broadcast, the relays' links the forwarding), L the latencies of
one segment's way and o the per-segment overhead. J = 1 is the unsegmented exchange's
prediction (the phases one after the other).
"""

from __future__ import annotations

import math
import os
import time

import numpy as np

from ..codes import coding
from ..schemes.pipelined import MAX_SEGMENTS, granule, segment_bounds
from ..vocabulary import WORLD

AUTO_MAX = 256          # the largest J auto considers


def parallel_factor(ranks: int, cores: int | None = None) -> int:
    """How many times longer ``ranks`` ranks doing the same work at once take than one,
    all on this host's cores (the relays' coding on one machine)."""
    cores = cores or os.cpu_count() or 1
    return max(1, math.ceil(ranks / cores))


def stages(scheme, dim: int, rates: dict, speed: float, cores: int | None = None) -> dict:
    """Seconds of each stage of the unsegmented exchange (no latencies): ``encode`` and
    ``decode`` at the busiest relay (times the relays sharing the cores), ``uplink`` and
    ``broadcast`` over the server's link, ``combine`` on the server, ``forward`` (the
    relays' forwarding of the broadcast's pieces, (H - 1) / H of it per relay link)."""
    work = scheme.coding_work(dim)
    loads = scheme.link_loads()
    V = 8.0 * dim
    _, b2 = rates["w2"]
    relay_rate = min((b for _, b in rates.get("relays") or []), default=b2)
    p = parallel_factor(scheme.coding_ranks(), cores)
    H = scheme.H
    return {"encode": p * work.get("encode", 0) / speed,
            "uplink": loads["relay_to_server"] * V / b2,
            "combine": work.get("combine", 0) / speed,
            "broadcast": loads["server_to_relay"] * V / b2,
            "forward": (H - 1) / H * loads["server_to_relay"] * V / relay_rate,
            "decode": p * work.get("decode", 0) / speed}


def pipeline_seconds(st: dict, latency: float, overhead: float, J: int) -> float:
    """T(J) of the module doc for stage times ``st`` (:func:`stages`)."""
    S = sum(st.values())
    B = max(st["encode"] + st["decode"], st["uplink"] + st["broadcast"], st["combine"],
            st["forward"])
    return S / J + (J - 1) * B / J + latency + (J - 1) * overhead


def per_segment_overhead(scheme, seed: int = 0, repeats: int = 5) -> float:
    """Seconds of CPU a segment costs whatever its size: relay 1's encode and decode and
    the server's combine on a one-granule slice of random IVs, timed (median)."""
    code = scheme.code
    d = granule(code)
    rng = np.random.default_rng(seed)
    ivs = {k: rng.standard_normal(d) for k in range(scheme.K)}
    H = scheme.H
    i = 0
    times = []
    for _ in range(repeats + 1):
        t0 = time.perf_counter()
        up = [coding.relay_encode(code, h, {k: ivs[k] for k in np.flatnonzero(scheme.G[h])})
              for h in range(H)]
        t1 = time.perf_counter()
        down = [coding.server_combine(code, blk, {h: up[h][blk] for h in range(H)}, d)
                for blk in range(len(code.blocks))]
        first, escapes = coding.downlink_wire(code, down, d)
        t2 = time.perf_counter()
        own = {int(k): ivs[int(k)] for k in np.flatnonzero(scheme.G[i])}
        coding.relay_decode(code, i, own, coding.downlink_unwire(code, first, escapes, d), d)
        t3 = time.perf_counter()
        times.append((t1 - t0) / H + (t2 - t1) + (t3 - t2))
    return float(np.median(times[1:]))


def choose(scheme, dim: int, rates: dict, speed: float, cores: int | None = None) -> tuple:
    """(J, reason, model) for ``--segments auto`` (rank 0, after the probe)."""
    st = stages(scheme, dim, rates, speed, cores)
    a2 = rates["w2"][0]
    a_relay = max((a for a, _ in rates.get("relays") or []), default=a2)
    latency = 2 * a2 + a_relay                     # uplink, piece down, piece forwarded
    cpu = per_segment_overhead(scheme) * parallel_factor(scheme.coding_ranks(), cores)
    overhead = cpu + a2
    most = len(segment_bounds(scheme.code, dim, min(AUTO_MAX, MAX_SEGMENTS)))
    times = {J: pipeline_seconds(st, latency, overhead, J) for J in range(1, most + 1)}
    J = min(times, key=lambda j: (times[j], j))
    model = {"stages_s": st, "latency_s": latency, "overhead_s": overhead,
             "predicted_s": times[J], "predicted_unsegmented_s": times[1], "segments": J}
    reason = (f"--segments auto: J = {J} minimises the pipeline model, predicted "
              f"{1e3 * times[J]:.1f} ms against {1e3 * times[1]:.1f} ms unsegmented (stages "
              + ", ".join(f"{k} {1e3 * v:.1f}" for k, v in st.items())
              + f" ms; per segment {1e3 * overhead:.2f} ms)")
    return J, reason, model


def settle(config, endpoint, schemes: list, rates, dim: int, speed: float | None = None) -> dict:
    """Give every scheme that can be pipelined its ``segments`` (collective over the world
    for ``auto``). ``rates`` and ``speed``: rank 0's probe (links; the coding kernel's
    bytes/s), None without links. Returns, on rank 0, {scheme name: its model} for ``auto``."""
    wanted = config.segments
    pipes = [s for s in schemes if getattr(s, "can_segment", False)]
    if wanted in (1, "1") or not pipes:
        return {}
    models = {}
    if wanted != "auto":
        for s in pipes:
            J = len(segment_bounds(s.code, dim, int(wanted)))
            s.segments = J
            s.segments_reason = f"--segments {wanted}" + (
                "" if J == int(wanted) else f": {J} (the IV holds {J} granules of "
                f"{granule(s.code)} values)")
        return models
    js = np.ones(len(pipes), dtype=np.int64)
    if endpoint.rank == 0:
        for n, s in enumerate(pipes):
            if rates is None:
                s.segments_reason = "--segments auto: no links measured (in one process): J = 1"
                continue
            J, reason, model = choose(s, dim, rates, speed)
            js[n], s.segments_reason, models[s.name] = J, reason, model
            print(f"hmtl_mpi: {s.name}: {reason}", flush=True)
    endpoint.bcast(WORLD, js, 0, "the segments of the pipelined exchange (--segments auto)")
    for s, J in zip(pipes, js):
        s.segments = int(J)
    return models
