"""The MPI layer: moves NumPy buffers, counts their bytes, times phases, never hangs.

Everything here is byte moving and bookkeeping; what is sent is decided by the
role code in :mod:`hmtl_mpi.wire.roles`. All messages are NumPy buffers sent with the
uppercase mpi4py calls, so ``buf.nbytes`` is exactly what goes on the wire as
payload.

Never hang: every wait is a ``Test`` loop with a deadline (``--timeout``); when
it passes, :class:`~hmtl_mpi.job.failures.PhaseTimeout` says what the rank waited
for. Each turn of the loop also answers the failure layer's status requests
(:meth:`hmtl_mpi.job.failures.Control.poll`), which is how a rank that stopped
answering is found, and how rank 0 hears of a failure elsewhere. Every
exception ends the job through :func:`hmtl_mpi.job.failures.end_job` (a plain
uncaught Python exception would leave the other ranks blocked: NETWORK.md).
"""

from __future__ import annotations

import time

import numpy as np
from mpi4py import MPI

from ..job.failures import PhaseTimeout
from ..job.report import LINK_CLASSES

# Polling: between two tests a waiting rank sleeps a fraction of the time it has
# already waited, between POLL_MIN and POLL_MAX seconds. A short wait (a barrier
# whose ranks are all there, a small message) is thus seen within tens of
# microseconds, while a long one (a transfer on a shaped link) costs at most
# 1/POLL_FRACTION of its time in extra latency and wakes its rank at most 1,000
# times a second. Sleeping instead of spinning matters with many ranks per core
# (NETWORK.md: Testall + a short sleep lifted the reached link rate from 82-90%
# to 89-95% on shaped links); sleeping long on short waits made every barrier of
# 16 ranks on 2 cores cost ~9 ms (a fixed backoff to 1 ms; BENCHMARKS.md).
POLL_MIN = 1e-5
POLL_MAX = 1e-3
POLL_FRACTION = 64

class Links:
    """One rank's view of the job: byte counters and the deadline of every wait.

    ``control`` (:class:`hmtl_mpi.job.failures.Control`) is polled while waiting;
    ``state`` (:class:`hmtl_mpi.job.failures.RankState`) learns what is awaited.
    """

    def __init__(self, world, timeout: float, control=None, state=None):
        self.world = world
        self.rank = world.Get_rank()
        self.timeout = float(timeout)
        self.control = control
        self.state = state
        self.sent = dict.fromkeys(LINK_CLASSES, 0)
        self.iteration = None          # set in barrier-free runs: bytes are logged per iteration
        self.sent_by_iteration = {}

    def reset_counters(self) -> None:
        self.sent = dict.fromkeys(LINK_CLASSES, 0)
        self.sent_by_iteration = {}

    def count(self, link: str, nbytes: int) -> None:
        self.sent[link] += int(nbytes)
        if self.iteration is not None:
            log = self.sent_by_iteration.setdefault(self.iteration, dict.fromkeys(LINK_CLASSES, 0))
            log[link] += int(nbytes)

    # --- waiting -------------------------------------------------------------------
    def wait(self, requests, what: str, timeout: float | None = None) -> None:
        """Wait for all requests with the deadline, polling (see POLL_FRACTION)."""
        requests = list(requests) if isinstance(requests, (list, tuple)) else [requests]
        if not requests:
            return
        limit = self.timeout if timeout is None else timeout
        started = time.monotonic()
        self._waiting(what)
        while not MPI.Request.Testall(requests):
            self._idle(started, limit, what)
        self._waiting("")

    def wait_first(self, requests: list, need: int, what: str, usable=None) -> list:
        """Wait until ``need`` usable receives of ``requests`` completed (straggler tolerance).

        ``usable(status)`` says whether a completed receive counts (default: all do;
        the gradient schemes skip empty messages, a late sender's "I gave up").
        Returns the indices of the usable ones completed so far, in completion order
        (ties by index), at least ``need`` of them; the others stay pending, to be
        completed later (:meth:`wait`) so that no late message is ever lost or mixed
        into another iteration (each iteration's messages carry their own tag).
        """
        order: list = []
        if need <= 0:
            return order
        started = time.monotonic()
        statuses = [MPI.Status() for _ in requests]
        self._waiting(what)
        while True:
            done = MPI.Request.Testsome(requests, statuses)
            if done is None:              # every request already completed
                raise RuntimeError(f"{what}: {need} awaited, only {len(order)} can arrive")
            if done:                      # statuses[k] belongs to done[k] (MPI_Testsome)
                order += sorted(i for k, i in enumerate(done)
                                if usable is None or usable(statuses[k]))
                if len(order) >= need:
                    break
                continue
            self._idle(started, self.timeout, f"{what} ({len(order)} of {need} so far)")
        self._waiting("")
        return order

    def sleep_unless(self, seconds: float, arrived) -> bool:
        """Sleep ``seconds`` (an injected delay), answering the failure layer, unless
        ``arrived()`` becomes true first; returns whether it did."""
        end = time.monotonic() + seconds
        while True:
            if arrived():
                return True
            left = end - time.monotonic()
            if left <= 0:
                return False
            if self.control is not None:
                self.control.poll()
            time.sleep(min(left, 0.002))

    def _waiting(self, what: str) -> None:
        if self.state is not None:
            self.state.waiting = what

    def _idle(self, started: float, limit: float, what: str) -> None:
        """One turn of a wait begun at ``started``: answer the failure layer, check the
        deadline (``limit`` seconds after the start), sleep (see POLL_FRACTION)."""
        if self.control is not None:
            self.control.poll()
        waited = time.monotonic() - started
        if waited > limit:
            raise PhaseTimeout(what, limit)
        time.sleep(min(POLL_MAX, max(POLL_MIN, waited / POLL_FRACTION)))

    # --- point to point ------------------------------------------------------------
    def isend(self, comm, buf: np.ndarray, dest: int, tag: int, link: str):
        self.count(link, buf.nbytes)
        return comm.Isend(buf, dest=dest, tag=tag)

    def irecv(self, comm, buf: np.ndarray, source: int, tag: int):
        return comm.Irecv(buf, source=source, tag=tag)

    def recv_variable_many(self, comm, expected, what: str) -> dict:
        """Receive uint16 messages whose lengths only their senders know (coded + escapes).

        ``expected`` lists (source, tag) pairs; each is matched with a nonblocking
        matched probe as soon as it arrives and received into a buffer of its exact
        size. Returns {(source, tag): buffer}.
        """
        pending, got, requests = list(expected), {}, []
        status = MPI.Status()
        started = time.monotonic()
        self._waiting(what)
        while pending:
            matched = False
            for key in list(pending):
                msg = comm.Improbe(source=key[0], tag=key[1], status=status)
                if msg is not None:
                    buf = np.empty(status.Get_count(MPI.UINT16_T), dtype=np.uint16)
                    requests.append(msg.Irecv(buf))
                    got[key] = buf
                    pending.remove(key)
                    matched = True
            if pending and not matched:
                who = ", ".join(f"rank {s} tag {t}" for s, t in pending)
                self._idle(started, self.timeout, f"{what} ({who})")
        self.wait(requests, what)
        return got

    # --- collectives ---------------------------------------------------------------
    def barrier(self, comm, what: str = "barrier") -> None:
        self.wait(comm.Ibarrier(), f"{what} (barrier)")

    def bcast(self, comm, buf: np.ndarray, root: int, what: str, timeout: float | None = None) -> None:
        self.wait(comm.Ibcast(buf, root=root), what, timeout)

    def bcast_bytes(self, comm, payload: np.ndarray | None, root: int, what: str,
                    timeout: float | None = None) -> np.ndarray:
        """Broadcast a uint8 buffer of a length only the root knows (setup only)."""
        size = np.array([payload.size if payload is not None else 0], dtype=np.int64)
        self.bcast(comm, size, root, what, timeout)
        buf = payload if comm.Get_rank() == root else np.empty(int(size[0]), dtype=np.uint8)
        self.bcast(comm, buf, root, what, timeout)
        return buf
