"""The declared boundaries of the wire: what moves bytes, and what a role may ask of it.

Two layers, each an abstract interface here, each implemented twice:

* :class:`Endpoint`, one rank's view of the job's transport: point-to-point messages
  addressed by world rank and tag, counted in a link class; waits with a deadline;
  collectives over a group (``world``, ``uplink`` = server + relays, ``relays``); a
  clock. :class:`hmtl_mpi.wire.transport.MpiEndpoint` implements it over MPI, on
  communicators that mirror G; :class:`hmtl_mpi.wire.inprocess.InProcessEndpoint` in
  one process, every rank a cooperative thread, on a virtual clock.
* :class:`UserLinks`, :class:`RelayLinks`, :class:`ServerLinks`: what a user, relay or
  server part (:mod:`hmtl_mpi.schemes`) may call. :mod:`hmtl_mpi.wire.roles` implements
  them once, over any Endpoint, so a scheme's parts run unchanged over MPI or in one
  process, and no part touches an endpoint, a communicator or MPI.

Messages are NumPy buffers; ``buf.nbytes`` is what is counted, and with MPI exactly
the payload that goes on the wire (uppercase mpi4py calls, no pickles). The wire
format is docs/wire.md.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Callable, Protocol

import numpy as np

from ..vocabulary import LINK_CLASSES, TAG_STATE, WORLD


class PhaseTimeout(RuntimeError):
    """A wait passed its deadline (``--timeout``); ``what`` says what was awaited."""

    def __init__(self, what: str, limit: float):
        super().__init__(f"waited more than {limit:g} s for {what}")
        self.what, self.limit = what, limit


class ProcessFailed(RuntimeError):
    """A rank of the job died (``--on-failure continue``): this rank's wait was cut short.
    The survivors go on through :meth:`Endpoint.shrink` and :meth:`Endpoint.remap`."""

    def __init__(self, what: str):
        super().__init__(f"a rank of the job was lost while this rank waited for {what}")
        self.what = what


class Endpoint(ABC):
    """One rank's transport (see the module doc). Requests are opaque to the caller:
    made by :meth:`isend` / :meth:`irecv`, completed by :meth:`wait` / :meth:`wait_first`.

    Shared here: the byte counters per link class (bytes counted at the sender; with
    ``iteration`` set, also per iteration, for the barrier-free runs), and the
    collectives built from the primitive ones.
    """

    kind = ""                 # "mpi" or "inprocess": what the report's "transport" says
    has_links = True          # whether messages cross links worth probing (hmtl_mpi.wire.probe)

    def __init__(self, rank: int, size: int, timeout: float):
        self.rank, self.size, self.timeout = int(rank), int(size), float(timeout)
        self.sent = dict.fromkeys(LINK_CLASSES, 0)
        self.iteration = None
        self.sent_by_iteration = {}
        # after shrink(): lost rank -> how long rank 0 had waited on it until it was gone
        # (a cut link, not a death; --on-failure continue)
        self.cut_off = {}
        # whether a rank was lost (shrink() ran): the MPI job then ends without MPI_Finalize
        # (hmtl_mpi.job.failures.end_after_loss)
        self.survived_loss = False

    # --- byte counters -------------------------------------------------------------------
    def reset_counters(self) -> None:
        self.sent = dict.fromkeys(LINK_CLASSES, 0)
        self.sent_by_iteration = {}

    def count(self, link: str, nbytes: int) -> None:
        self.sent[link] += int(nbytes)
        if self.iteration is not None:
            log = self.sent_by_iteration.setdefault(self.iteration, dict.fromkeys(LINK_CLASSES, 0))
            log[link] += int(nbytes)

    # --- set-up --------------------------------------------------------------------------
    @abstractmethod
    def connect(self, G: np.ndarray, flat: bool, per_rank: int = 1) -> None:
        """Collective: from now on the groups mirror G (MPI: the sub-communicators);
        ``per_rank`` users run on each user rank (``--users-per-rank``)."""

    # --- point to point ------------------------------------------------------------------
    @abstractmethod
    def isend(self, dest: int, buf: np.ndarray, tag: int, link: str | None):
        """Send ``buf`` to world rank ``dest``, counted in ``link`` (None: not counted, e.g.
        the link probe's); returns a request."""

    @abstractmethod
    def irecv(self, source: int, buf: np.ndarray, tag: int):
        """Receive from world rank ``source`` into ``buf`` (a shorter message is fine)."""

    @abstractmethod
    def wait(self, requests, what: str, timeout: float | None = None) -> None:
        """Complete all ``requests`` (one or a list), or raise :class:`PhaseTimeout`."""

    @abstractmethod
    def wait_first(self, requests: list, need: int, what: str,
                   usable: Callable[[int], bool] | None = None) -> list:
        """Wait until ``need`` receives of ``requests`` whose byte count is ``usable``
        completed; their indices in arrival order (the rest stay pending: :meth:`wait`)."""

    def test(self, requests) -> bool:
        """Whether all ``requests`` completed, without waiting (completing them if so:
        do not pass them to :meth:`wait_first` afterwards)."""
        raise NotImplementedError(f"the {self.kind} transport cannot test requests")

    @abstractmethod
    def probe(self, source: int, tag: int) -> bool:
        """Whether a message from ``source`` with ``tag`` has arrived (not received)."""

    @abstractmethod
    def recv_variable(self, expected: list, dtype, what: str) -> dict:
        """Messages whose lengths only their senders know: {(source, tag): buffer}."""

    @abstractmethod
    def delay(self, seconds: float, source: int, tag: int) -> bool:
        """An injected delay (``--straggle``): ``seconds`` pass unless a message from
        ``source`` with ``tag`` arrives first; returns whether it did."""

    @abstractmethod
    def clock(self) -> float:
        """Seconds on this rank's clock (MPI: ``MPI.Wtime``; in-process: virtual)."""

    # --- collectives over a group (roots are world ranks; results in group order) ---------
    @abstractmethod
    def barrier(self, group: str, what: str, timeout: float | None = None) -> None:
        """Every member of ``group`` got here."""

    @abstractmethod
    def bcast(self, group: str, buf: np.ndarray, root: int, what: str,
              timeout: float | None = None) -> None:
        """The root's ``buf`` into every member's ``buf`` (same size everywhere)."""

    @abstractmethod
    def gather(self, group: str, array: np.ndarray, root: int, what: str,
               timeout: float | None = None):
        """Same-shaped arrays stacked in group order on the root (None elsewhere)."""

    @abstractmethod
    def reduce(self, group: str, array: np.ndarray, op: str, root: int, what: str):
        """Elementwise ``"sum"`` or ``"max"`` of same-shaped arrays on the root."""

    @abstractmethod
    def scatterv(self, group: str, sendbuf, counts, displs, recvbuf, root: int, what: str,
                 timeout: float | None = None) -> None:
        """Member m receives ``counts[m]`` elements of the root's ``sendbuf`` from
        ``displs[m]`` into ``recvbuf`` (the root may pass ``recvbuf=None``: its own
        piece stays in place)."""

    @abstractmethod
    def allgatherv(self, group: str, mine: np.ndarray, out: np.ndarray, counts, displs,
                   what: str) -> None:
        """Every member's ``mine`` into everybody's ``out`` at ``displs`` (1-D buffers)."""

    # --- built from the above --------------------------------------------------------------
    def bcast_bytes(self, group: str, payload: np.ndarray | None, root: int, what: str,
                    timeout: float | None = None) -> np.ndarray:
        """Broadcast a uint8 buffer of a length only the root knows (set-up only)."""
        size = np.array([payload.size if payload is not None else 0], dtype=np.int64)
        self.bcast(group, size, root, what, timeout)
        buf = payload if self.rank == root else np.empty(int(size[0]), dtype=np.uint8)
        self.bcast(group, buf, root, what, timeout)
        return buf

    def decode_broadcast(self, buf: np.ndarray, decode):
        """``decode(buf)``, for a :meth:`bcast_bytes` buffer every rank received alike (a
        plan, a code). Every rank of an MPI job decodes its own copy; ranks sharing one
        process may share one decoded object (never modified after the set-up)."""
        return decode(buf)

    def scatter_arrays(self, group: str, chunks: list | None, root: int, what: str,
                       timeout: float | None = None, dtype=np.float64) -> np.ndarray:
        """Member m gets the root's ``chunks[m]`` (1-D arrays of ``dtype``, any lengths):
        one scatter of the lengths, one of the data."""
        mine = np.zeros(1, dtype=np.int64)
        counts = displs = send = None
        if self.rank == root:
            lengths = np.array([c.size for c in chunks], dtype=np.int64)
            counts, displs = [1] * len(chunks), list(range(len(chunks)))
            self.scatterv(group, lengths, counts, displs, mine, root, what, timeout)
            counts = [int(c) for c in lengths]
            displs = [int(d) for d in np.cumsum([0] + counts[:-1])]
            send = np.concatenate([np.asarray(c, dtype=dtype).reshape(-1) for c in chunks])
        else:
            self.scatterv(group, None, None, None, mine, root, what, timeout)
        out = np.empty(int(mine[0]), dtype=dtype)
        self.scatterv(group, send, counts, displs, out, root, what, timeout)
        return out

    def gather_bytes(self, buf: np.ndarray, what: str) -> list | None:
        """Every rank's uint8 buffer (any length) on rank 0, in rank order (None elsewhere):
        one gather of the lengths, then one message each (not counted in any link class)."""
        buf = np.ascontiguousarray(buf, dtype=np.uint8).reshape(-1)
        sizes = self.gather(WORLD, np.array([buf.size], dtype=np.int64), 0, what)
        if self.rank != 0:
            self.wait(self.isend(0, buf, TAG_STATE, None), what)
            return None
        out = [buf] + [np.empty(int(sizes[r, 0]), dtype=np.uint8) for r in range(1, self.size)]
        self.wait([self.irecv(r, out[r], TAG_STATE) for r in range(1, self.size)], what)
        return out

    def inject(self, kind: str) -> None:
        """``--inject-fault``: this rank hangs (``hang``) or dies (``kill``) here."""
        raise NotImplementedError

    def close(self) -> None:
        """Free what :meth:`connect` made."""

    # --- surviving a lost rank (--on-failure continue; hmtl_mpi.job.recovery) --------------
    def shrink(self) -> tuple:
        """Collective over the survivors, after :class:`ProcessFailed`: agree on the ranks
        lost. Returns (lost ranks, sorted; {lost rank: its clock when it died, where known}).
        Messages of the interrupted iteration are dropped; until :meth:`remap` only
        :meth:`remap` may follow."""
        raise NotImplementedError(f"the {self.kind} transport cannot survive a lost rank")

    def remap(self, ranks, mine) -> None:
        """The job goes on with ``ranks`` (new rank -> old rank): from now on this endpoint
        addresses ranks by their new numbers and it is new rank ``mine`` (None: it left the
        job, and takes part in nothing more). Followed by :meth:`connect` on the new G."""
        raise NotImplementedError(f"the {self.kind} transport cannot survive a lost rank")


# --- what the parts may call (implemented in hmtl_mpi.wire.roles) ------------------------------

class Links(Protocol):
    """What every role's links offer."""

    rank: int                       # this rank's world rank (e.g. for --straggle's delays)

    def clock(self) -> float: ...
    def first(self, posted: tuple, need: int, what: str) -> list: ...
    def ready(self, posted: tuple) -> bool: ...
    def drain(self, what: str) -> None: ...


class UserLinks(Links, Protocol):
    """User k: to each of its relays, and (flat gradient coding) straight to the server."""

    def send_iv(self, relays, iv: np.ndarray) -> None: ...
    def recv_model(self, n: int, tag: int = ...) -> np.ndarray: ...
    def isend_to_relay(self, buf: np.ndarray, tag: int) -> None: ...
    def isend_to_relays(self, buf: np.ndarray, relays, tag: int) -> None: ...
    def post_from_relays(self, relays, shape, dtype, tag: int) -> tuple: ...
    def isend_to_server(self, buf: np.ndarray, tag: int) -> None: ...
    def model_arrived(self, tag: int) -> bool: ...
    def delay_unless_model(self, seconds: float, tag: int) -> bool: ...


class RelayLinks(Links, Protocol):
    """Relay i: its users (N_i) and the server."""

    def recv_ivs(self, users, dim: int) -> dict: ...
    def send_models(self, models: dict) -> None: ...
    def send_to_server(self, messages) -> None: ...
    def recv_from_server(self, shape, tag: int) -> np.ndarray: ...
    def recv_broadcast(self, nbytes: int) -> np.ndarray: ...
    def post_from_users(self, users, shape, dtype, tag: int) -> tuple: ...
    def post_from_server(self, shape, dtype, tag: int) -> tuple: ...
    def post_from_relays(self, relays, shape, dtype, tag: int) -> tuple: ...
    def isend_to_relays(self, buf: np.ndarray, relays, tag: int) -> None: ...
    def isend_to_server(self, buf: np.ndarray, tag: int) -> None: ...
    def isend_to_users(self, buf: np.ndarray, users, tag: int) -> None: ...
    def model_arrived(self, tag: int) -> bool: ...
    def delay_unless_model(self, seconds: float, tag: int) -> bool: ...


class ServerLinks(Links, Protocol):
    """The server: every relay, and (flat gradient coding) every user."""

    def recv_from_relays(self, expected) -> dict: ...
    def recv_coded_from_relays(self, expected) -> dict: ...
    def send_to_relays(self, bufs: dict, tag: int) -> None: ...
    def broadcast(self, buf: np.ndarray) -> None: ...
    def post_from_relays(self, relays, shape, dtype, tag: int) -> tuple: ...
    def post_from_users(self, users, shape, dtype, tag: int) -> tuple: ...
    def isend_to_relays(self, buf: np.ndarray, relays, tag: int) -> None: ...
