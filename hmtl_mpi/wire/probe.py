"""Measure the links and the coding kernel before the runs, for :mod:`hmtl_mpi.job.predict`.

Over the endpoint (:class:`hmtl_mpi.wire.interfaces.Endpoint`): ping-pongs between the
server and relay 1 (the W2 link class) and between relay 1 and its first user (W1),
timed with the endpoint's clock; every other
rank waits at the next barrier. Per link: the latency is half the median round
trip of an 8-byte message, the rate a message of ``size`` bytes over half its
median round trip minus that latency (at least half of it: on memory-copy links the
transfer hides in the latency's noise, and the rate is then a lower bound). With memory-copy links (one host) this
measures memory copies and the scheduler, which is what the run will meet too.
The probe's bytes are not counted in any run.
"""

from __future__ import annotations

import time

import numpy as np

from ..codes import coding
from ..vocabulary import TAG_PROBE, WORLD, host_rank, relay_rank

REPEATS = 5


def _ping_pong(endpoint, me: int, peer: int, size: int, repeats: int) -> float:
    """Median round trip of ``size`` bytes between world ranks ``me`` (starts) and ``peer``."""
    ep = endpoint
    buf = np.zeros(max(size, 1), dtype=np.uint8)
    starts = ep.rank == me
    other = peer if starts else me
    times = []
    for _ in range(repeats + 1):                      # the first is a warm-up
        t0 = ep.clock()
        if starts:
            ep.wait(ep.isend(other, buf, TAG_PROBE, None), "link probe (send)")
            ep.wait(ep.irecv(other, buf, TAG_PROBE), "link probe (reply)")
        else:
            ep.wait(ep.irecv(other, buf, TAG_PROBE), "link probe (receive)")
            ep.wait(ep.isend(other, buf, TAG_PROBE, None), "link probe (reply)")
        times.append(ep.clock() - t0)
    return float(np.median(times[1:]))


def _link(endpoint, me: int, peer: int, size: int) -> tuple:
    """(latency s, bytes/s) between world ranks ``me`` and ``peer``; meaningful on ``me``."""
    latency = _ping_pong(endpoint, me, peer, 8, REPEATS) / 2
    one_way = _ping_pong(endpoint, me, peer, size, 3) / 2
    # on fast links the transfer hides in the latency's noise: then the rate is only
    # known to be at least size / one_way, and that bound is what we use
    return latency, size / max(one_way - latency, 0.5 * one_way)


def probe_size(iv_bytes: int) -> int:
    """Bytes of the rate probe: a few IVs, at least 64 KiB, at most 4 MiB."""
    return int(min(4 << 20, max(64 << 10, 4 * iv_bytes)))


def measure_links(endpoint, G, flat: bool, iv_bytes: int, per_rank: int = 1):
    """On rank 0: {"w2": (latency, rate), "w1": (latency, rate)}; None elsewhere.
    Collective over the world (every rank calls it). ``per_rank``: users per user rank
    (W1 is then measured to the rank that runs relay 1's first user)."""
    ep = endpoint
    rank = ep.rank
    size = probe_size(iv_bytes)
    w2 = w1 = None
    relay1 = relay_rank(0)
    if rank in (0, relay1):                          # W2: the server and relay 1
        w2 = _link(ep, 0, relay1, size)
    first_user = (host_rank(int(np.flatnonzero(G[0])[0]), G.shape[0], per_rank)
                  if not flat else None)
    if not flat and rank in (relay1, first_user):   # W1: relay 1 and its first user
        w1 = _link(ep, relay1, first_user, size)
    # relay 1 tells the server what it measured on W1
    if not flat and rank in (0, relay1):
        buf = np.array(w1 if rank == relay1 else (0.0, 0.0))
        if rank == relay1:
            ep.wait(ep.isend(0, buf, TAG_PROBE, None), "link probe result")
        else:
            ep.wait(ep.irecv(relay1, buf, TAG_PROBE), "link probe result")
            w1 = tuple(float(x) for x in buf)
    ep.barrier(WORLD, "after the link probe")
    if rank != 0:
        return None
    return {"w2": w2, "w1": w1 if w1 is not None else (0.0, float("inf"))}


# Bytes of every relay's own rate probe: enough for a tc-shaped link (1 ms buckets) to
# show its rate, small enough that a slow relay does not hold the start-up for long.
RELAY_PROBE_MAX = 256 << 10


def _one_way(endpoint, relay: int, size: int, repeats: int) -> float:
    """Median time for ``size`` bytes from ``relay`` to the server plus an 8-byte answer,
    as the server sees it (meaningful on rank 0)."""
    ep = endpoint
    buf = np.zeros(max(size, 1), dtype=np.uint8)
    ack = np.zeros(1, dtype=np.uint8)
    times = []
    for _ in range(repeats + 1):                      # the first is a warm-up
        if ep.rank == 0:
            t0 = ep.clock()
            ep.wait(ep.isend(relay, ack, TAG_PROBE, None), "relay probe (go)")
            ep.wait(ep.irecv(relay, buf, TAG_PROBE), "relay probe (receive)")
            times.append(ep.clock() - t0)
        else:
            ep.wait(ep.irecv(0, ack, TAG_PROBE), "relay probe (go)")
            ep.wait(ep.isend(0, buf, TAG_PROBE, None), "relay probe (send)")
    return float(np.median(times[1:])) if times else 0.0


SERVER_PROBE_REPEATS = 2
SERVER_PROBE_BYTES = 16 << 20          # at most this much in flight to the server at once


def _all_at_once(ep, H: int, size: int, relays: list) -> float:
    """Every relay sends ``size`` bytes to the server at once; on rank 0 the largest
    ``k size / t_k`` over the arrivals (the k-th at t_k after the start, less a latency)."""
    if ep.rank != 0:
        ep.barrier(WORLD, "all relays send to the server at once")
        if 1 <= ep.rank <= H:
            ep.wait(ep.isend(0, np.zeros(size, dtype=np.uint8), TAG_PROBE, None),
                    "server link probe")
        return 0.0
    bufs = [np.zeros(size, dtype=np.uint8) for _ in range(H)]
    pending = [ep.irecv(relay_rank(i), bufs[i], TAG_PROBE) for i in range(H)]
    ep.barrier(WORLD, "all relays send to the server at once")
    t0 = ep.clock()
    arrivals = []
    while pending:                                    # every arrival timed as it comes
        done = set(ep.wait_first(pending, 1, "server link probe"))
        arrivals += [ep.clock() - t0] * len(done)
        pending = [q for j, q in enumerate(pending) if j not in done]
    lat = float(np.median([a for a, _ in relays])) if relays else 0.0
    arrivals.sort()
    return max((k + 1) * size / max(t - lat, 0.5 * t) for k, t in enumerate(arrivals))


def measure_relays(endpoint, H: int, iv_bytes: int):
    """Every relay's own link to the server, then the server's link under all of them.

    One relay at a time: latency (half an 8-byte round trip) and rate (``size`` bytes
    from the relay to the server after a go message, minus a round trip's latency).
    Then every relay sends ``size`` bytes at once and the server notes each arrival:
    the server's link carries at least ``k size / t_k`` bytes/s for the k-th arrival at
    t_k, the largest of which (over SERVER_PROBE_REPEATS rounds: the first meets TCP's
    slow start) is ``server``'s rate (a lower bound when the relays' own links are slower
    than the server's). On rank 0: {"relays": [(latency, rate)...],
    "server": rate}; None elsewhere. Collective over the world."""
    ep = endpoint
    size = min(probe_size(iv_bytes), RELAY_PROBE_MAX)
    out = []
    for i in range(H):
        r = relay_rank(i)
        if ep.rank in (0, r):
            lat = _ping_pong(ep, 0, r, 8, REPEATS) / 2
            t = _one_way(ep, r, size, 2)
            if ep.rank == 0:
                out.append((lat, size / max(t - 2 * lat, 0.5 * t)))
    ep.barrier(WORLD, "after the relay probes")
    server = 0.0
    together = max(4096, min(size, SERVER_PROBE_BYTES // max(H, 1)))   # the server's memory
    for _ in range(SERVER_PROBE_REPEATS):
        server = max(server, _all_at_once(ep, H, together, out))
        ep.barrier(WORLD, "after the server link probe")
    if ep.rank != 0:
        return None
    return {"relays": out, "server": server}


def coding_speed(dim: int, repeats: int = 3) -> float:
    """Input bytes per second of :func:`hmtl_mpi.codes.coding.combine_mod_p` on 8 combinations of
    10 rows of one IV's symbols each (the uplink's shape, eq. 26), median of ``repeats``."""
    L = max(4096, coding.SYMBOLS_PER_VALUE * dim)
    rng = np.random.default_rng(0)
    coeffs = rng.integers(1, coding.P, size=(8, 10))
    rows = rng.integers(0, 65536, size=(10, L)).astype(np.uint16)
    out = np.empty((8, L), dtype=np.uint16)
    coding.combine_mod_p(coeffs, rows, out)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        coding.combine_mod_p(coeffs, rows, out)
        times.append(time.perf_counter() - t0)
    return rows.nbytes / float(np.median(times))
