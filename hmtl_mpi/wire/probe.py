"""Measure the links and the coding kernel before the runs, for :mod:`hmtl_mpi.job.predict`.

MPI layer only: ping-pongs between the server and relay 1 (the W2 link class) and
between relay 1 and its first user (W1), timed with ``MPI.Wtime``; every other
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

PROBE_TAG = 31
REPEATS = 5


def _ping_pong(links, comm, me: int, peer: int, size: int, repeats: int) -> float:
    """Median round trip of ``size`` bytes between ranks ``me`` (starts) and ``peer``."""
    from mpi4py import MPI

    buf = np.zeros(max(size, 1), dtype=np.uint8)
    starts = comm.Get_rank() == me
    times = []
    for _ in range(repeats + 1):                      # the first is a warm-up
        t0 = MPI.Wtime()
        if starts:
            links.wait(comm.Isend(buf, dest=peer, tag=PROBE_TAG), "link probe (send)")
            links.wait(comm.Irecv(buf, source=peer, tag=PROBE_TAG), "link probe (reply)")
        else:
            links.wait(comm.Irecv(buf, source=me, tag=PROBE_TAG), "link probe (receive)")
            links.wait(comm.Isend(buf, dest=me, tag=PROBE_TAG), "link probe (reply)")
        times.append(MPI.Wtime() - t0)
    return float(np.median(times[1:]))


def _link(links, comm, size: int) -> tuple:
    """(latency s, bytes/s) between ranks 0 and 1 of ``comm``; on rank 0 of it."""
    latency = _ping_pong(links, comm, 0, 1, 8, REPEATS) / 2
    one_way = _ping_pong(links, comm, 0, 1, size, 3) / 2
    # on fast links the transfer hides in the latency's noise: then the rate is only
    # known to be at least size / one_way, and that bound is what we use
    return latency, size / max(one_way - latency, 0.5 * one_way)


def probe_size(iv_bytes: int) -> int:
    """Bytes of the rate probe: a few IVs, at least 64 KiB, at most 4 MiB."""
    return int(min(4 << 20, max(64 << 10, 4 * iv_bytes)))


def measure_links(world, links, comms, G, flat: bool, iv_bytes: int):
    """On rank 0: {"w2": (latency, rate), "w1": (latency, rate)}; None elsewhere.
    Collective over the world (every rank calls it)."""
    rank = world.Get_rank()
    size = probe_size(iv_bytes)
    w2 = w1 = None
    if rank <= 1 and comms["uplink"] is not None:
        w2 = _link(links, comms["uplink"], size)
    first_user = 1 + G.shape[0] + int(np.flatnonzero(G[0])[0]) if not flat else None
    if not flat and rank in (1, first_user):
        w1 = _link(links, comms["group"][0], size)
    # relay 1 tells the server what it measured on W1
    if not flat and rank in (0, 1):
        buf = np.array(w1 if rank == 1 else (0.0, 0.0))
        if rank == 1:
            links.wait(world.Isend(buf, dest=0, tag=PROBE_TAG), "link probe result")
        else:
            links.wait(world.Irecv(buf, source=1, tag=PROBE_TAG), "link probe result")
            w1 = tuple(float(x) for x in buf)
    links.barrier(world, "after the link probe")
    if rank != 0:
        return None
    return {"w2": w2, "w1": w1 if w1 is not None else (0.0, float("inf"))}


def coding_speed(dim: int, repeats: int = 3) -> float:
    """Input bytes per second of :func:`hmtl_mpi.codes.coding.combine_mod_p` on 8 combinations of
    10 rows of one IV's symbols each (the uplink's shape, eq. 26), median of ``repeats``."""
    from ..codes import coding

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
