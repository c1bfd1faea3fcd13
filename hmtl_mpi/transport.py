"""The MPI layer: moves NumPy buffers, counts their bytes, times phases, never hangs.

Everything here is byte moving and bookkeeping; what is sent is decided by the
role code in :mod:`hmtl_mpi.roles`. All messages are NumPy buffers sent with the
uppercase mpi4py calls, so ``buf.nbytes`` is exactly what goes on the wire as
payload.

Never hang: every wait is a ``Test`` loop with a deadline (``--timeout``); when
it passes, :class:`PhaseTimeout` names the rank, the phase and what it waited
for. Any exception on any rank goes through :func:`abort_on_error`, which prints
the rank's message and calls ``MPI.COMM_WORLD.Abort`` (a plain uncaught Python
exception would leave the other ranks blocked: see NETWORK.md).
"""

from __future__ import annotations

import sys
import time
import traceback
from contextlib import contextmanager

import numpy as np
from mpi4py import MPI

# Link classes whose bytes are counted (SCHEME.md: bytes on the wire are the truth).
LINK_CLASSES = ("user_to_relay", "relay_to_server", "server_to_relay", "relay_to_user",
                "relay_to_relay")
# Phases timed per iteration (the report's names).
PHASES = ("local_update", "user_to_relay", "encode", "relay_to_server", "server_to_relay",
          "decode", "global_update", "relay_to_user", "total")


class PhaseTimeout(RuntimeError):
    """A blocking wait passed its deadline."""


class Links:
    """One rank's view of the job: its communicators, byte counters and deadline.

    ``phase`` names what the rank is doing, for error messages.
    """

    def __init__(self, world, role: str, timeout: float):
        self.world = world
        self.rank = world.Get_rank()
        self.role = role
        self.timeout = float(timeout)
        self.phase = "setup"
        self.sent = dict.fromkeys(LINK_CLASSES, 0)

    def reset_counters(self) -> None:
        self.sent = dict.fromkeys(LINK_CLASSES, 0)

    def count(self, link: str, nbytes: int) -> None:
        self.sent[link] += int(nbytes)

    # --- waiting -------------------------------------------------------------------
    def wait(self, requests, what: str, timeout: float | None = None) -> None:
        """Wait for all requests with the deadline; polls with a growing sleep.

        Sleeping instead of spinning matters with many ranks per core (NETWORK.md:
        Testall + a short sleep lifted the reached link rate from 82-90% to 89-95%).
        """
        requests = list(requests) if isinstance(requests, (list, tuple)) else [requests]
        if not requests:
            return
        limit = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        pause = 2e-5
        while not MPI.Request.Testall(requests):
            if time.monotonic() > deadline:
                raise PhaseTimeout(f"waited more than {limit:g} s for {what}")
            time.sleep(pause)
            pause = min(pause * 2, 1e-3)

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
        deadline = time.monotonic() + self.timeout
        pause = 2e-5
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
                if time.monotonic() > deadline:
                    who = ", ".join(f"rank {s} tag {t}" for s, t in pending)
                    raise PhaseTimeout(f"waited more than {self.timeout:g} s for {what} ({who})")
                time.sleep(pause)
                pause = min(pause * 2, 1e-3)
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


@contextmanager
def phase(links: Links, name: str):
    """Mark what this rank is doing, so that a timeout or error names it."""
    previous = links.phase
    links.phase = name
    yield                       # on an exception the phase stays set, for the abort message
    links.phase = previous


def abort_on_error(links: Links | None, exc: BaseException, code: int = 1) -> None:
    """Print this rank's error and abort the whole job (never returns)."""
    rank = MPI.COMM_WORLD.Get_rank()
    where = f"rank {rank}"
    if links is not None:
        where += f" ({links.role}), phase {links.phase}"
    detail = "".join(traceback.format_exception(exc)) if not isinstance(
        exc, (PhaseTimeout, KeyboardInterrupt)) else ""
    sys.stderr.write(f"hmtl_mpi: {where}: {exc.__class__.__name__}: {exc}\n")
    if detail and not isinstance(exc, SystemExit):
        sys.stderr.write(detail)
    sys.stderr.write(f"hmtl_mpi: aborting all ranks (exit code {code})\n")
    sys.stderr.flush()
    MPI.COMM_WORLD.Abort(code)


def install_excepthook() -> None:
    """Make any uncaught exception abort the whole job instead of hanging it."""
    def hook(exc_type, exc, tb):
        abort_on_error(None, exc)
    sys.excepthook = hook
