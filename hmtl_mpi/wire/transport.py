"""The MPI transport: :class:`MpiEndpoint` moves NumPy buffers, counts their bytes, never hangs.

It implements :class:`hmtl_mpi.wire.interfaces.Endpoint` over MPI. Everything here
is byte moving and bookkeeping; what is sent is decided by the role links
(:mod:`hmtl_mpi.wire.roles`) and the schemes above them. All messages are NumPy
buffers sent with the uppercase mpi4py calls, so ``buf.nbytes`` is exactly what
goes on the wire as payload.

Communicators mirror G (built by :meth:`MpiEndpoint.connect`, collective):

* ``group[i]``: relay i (rank 0 in it) and its users N_i (ranks 1.. in user order); with
  several users per rank (``--users-per-rank``), the ranks that run users of N_i, each
  once, in rank order (a user's messages are then told apart by their tag);
* ``uplink``: the server (rank 0) and the relays (relay i is rank 1 + i);
* ``relays``: the relays only (relay i is rank i), for the downlink's allgather.

A message is addressed by the peer's world rank; the endpoint picks the
communicator by the two ends' roles (user <-> relay in the relay's group, relay <->
server on ``uplink``, relay <-> relay on ``relays``, anything else on the world), so
both ends always agree.

Never hang: every wait is a ``Test`` loop with a deadline (``--timeout``); when
it passes, :class:`~hmtl_mpi.wire.interfaces.PhaseTimeout` says what the rank waited
for. Each turn of the loop also answers the failure layer's status requests
(``control.poll()``, :class:`hmtl_mpi.job.failures.Control`), which is how a rank that stopped
answering is found, and how rank 0 hears of a failure elsewhere. Every
exception ends the job through :func:`hmtl_mpi.job.failures.end_job` (a plain
uncaught Python exception would leave the other ranks blocked: docs/network.md).

Surviving a lost rank (``survive``: ``--on-failure continue``, an MPI with ULFM,
:mod:`hmtl_mpi.wire.ulfm`): an MPI error in any call of the endpoint revokes every
communicator of this rank (so that every rank blocked on one of them gets an error too)
and raises :class:`~hmtl_mpi.wire.interfaces.ProcessFailed`. :meth:`MpiEndpoint.shrink`
shrinks the world to the survivors and names the lost ranks; :meth:`MpiEndpoint.remap`
splits the survivors' communicator with every survivor's new rank as its key, so that
the job's rank arithmetic (server 0, relays 1..H, users H+1..) holds again on it, and
the communicators mirroring the reduced G are built on that one. Every request the
endpoint starts stays referenced, with its buffer, until MPI completed it; the shrink
hands those still pending to :data:`~hmtl_mpi.wire.ulfm.ABANDONED`, kept for the rest of
the process, so that no message of the iteration given up lands in freed memory.
"""

from __future__ import annotations

import os
import signal
import time

import numpy as np
from mpi4py import MPI

from ..vocabulary import (
    RELAY,
    RELAYS,
    SERVER,
    UPLINK,
    USER,
    WORLD,
    group_members,
    role_of,
)
from .interfaces import Endpoint, PhaseTimeout, ProcessFailed
from .ulfm import abandon, read_death

# Polling: between two tests a waiting rank sleeps a fraction of the time it has
# already waited, between POLL_MIN and POLL_MAX seconds. A short wait (a barrier
# whose ranks are all there, a small message) is thus seen within tens of
# microseconds, while a long one (a transfer on a shaped link) costs at most
# 1/POLL_FRACTION of its time in extra latency. A wait of T seconds wakes its rank
# about POLL_FRACTION * (1 + ln(T / (POLL_FRACTION * POLL_MIN))) times until the
# sleep reaches POLL_MAX (T = 1.28 s), then 1 / POLL_MAX times a second. Sleeping
# instead of spinning matters with many ranks per core (docs/network.md: Testall +
# a short sleep lifted the reached link rate from 82-90% to 89-95% on shaped links);
# sleeping long on short waits made every barrier of 16 ranks on 2 cores cost ~9 ms
# (a fixed backoff to 1 ms; BENCHMARKS.md). POLL_MAX was 1 ms: at K = 40 (46 ranks on
# 2 cores) the users, waiting about 1 s per iteration for their models while the
# relays decode, then burned 0.7-1.6 CPU seconds per iteration (BENCHMARKS.md, "Where
# the CPU goes at K = 40"). ``HMTL_POLL_MAX`` (seconds) overrides it, for benchmarks
# (``bench cpu``); the job refuses a bad value (:func:`poll_max_problem`, exit 2).
POLL_MIN = 1e-5
POLL_MAX = 0.02
POLL_FRACTION = 64


def poll_max_problem() -> str:
    """What is wrong with ``HMTL_POLL_MAX`` (seconds, from POLL_MIN to 1), or ""."""
    text = os.environ.get("HMTL_POLL_MAX", "")
    try:
        if not text or POLL_MIN <= float(text) <= 1.0:
            return ""
    except ValueError:
        pass
    return f"HMTL_POLL_MAX={text!r}: must be seconds from {POLL_MIN:g} to 1"


if os.environ.get("HMTL_POLL_MAX") and not poll_max_problem():
    POLL_MAX = float(os.environ["HMTL_POLL_MAX"])

PRUNE_AT = 256  # requests started before the completed ones are dropped from the endpoint's list
_OPS = {"sum": MPI.SUM, "max": MPI.MAX}
# what fails with an MPI error when a peer died (``survive``)
_GUARDED = ("isend", "irecv", "wait", "wait_first", "test", "probe", "recv_variable", "delay",
            "barrier", "bcast", "gather", "reduce", "scatterv", "allgatherv")


class MpiEndpoint(Endpoint):
    """One rank's MPI transport (see the module doc and :class:`Endpoint`).

    ``control`` (:class:`hmtl_mpi.job.failures.Control`) is polled while waiting;
    ``state`` (:class:`hmtl_mpi.job.failures.RankState`) learns what is awaited.
    """

    kind = "mpi"
    has_links = True

    def __init__(self, world, timeout: float, control=None, state=None, survive=False):
        super().__init__(world.Get_rank(), world.Get_size(), timeout)
        self.world = world
        self.physical = list(range(world.Get_size()))   # job rank -> world rank
        self._shrunk = None
        if survive:
            for name in _GUARDED:
                setattr(self, name, self._guarded(getattr(self, name)))
        self.control = control
        self.state = state
        self.G = None
        self.flat = False
        self.group = {}                      # relay index -> communicator (on members)
        self.in_group = {}                   # relay index -> {world rank: rank in the group}
        self.comms = {WORLD: world, UPLINK: None, RELAYS: None}
        self._channels = {}                  # peer world rank -> (communicator, rank in it)
        self._started = []                   # (request, buffer) not known completed
        self._prune_at = PRUNE_AT

    # --- the communicators that mirror G --------------------------------------------------
    def connect(self, G: np.ndarray, flat: bool, per_rank: int = 1) -> None:
        """Communicators mirroring G (collective over the world: every rank calls it)."""
        world, rank = self.world, self.rank
        H, K = G.shape
        self.G, self.flat = G, flat
        if not flat:
            world_group = world.Get_group()
            for i in range(H):           # increasing i on every member: deadlock-free
                members = group_members(G, i, per_rank)
                if rank in members:
                    self.in_group[i] = {r: n for n, r in enumerate(members)}
                    sub = world_group.Incl(members)
                    self.group[i] = world.Create_group(sub, tag=i)
                    sub.Free()
            world_group.Free()
        uplink = world.Split(0 if rank <= H else MPI.UNDEFINED, rank)
        relays = world.Split(0 if 1 <= rank <= H else MPI.UNDEFINED, rank)
        self.comms[UPLINK] = None if uplink == MPI.COMM_NULL else uplink
        self.comms[RELAYS] = None if relays == MPI.COMM_NULL else relays
        self._channels = {}

    def close(self) -> None:
        for comm in list(self.group.values()) + [self.comms[UPLINK], self.comms[RELAYS]]:
            if comm is not None:
                comm.Free()
        self.group, self.in_group, self._channels = {}, {}, {}
        self.comms[UPLINK] = self.comms[RELAYS] = None

    # --- surviving a lost rank (see the module doc) ------------------------------------
    def _guarded(self, method):
        def call(*args, **kwargs):
            try:
                return method(*args, **kwargs)
            except MPI.Exception as exc:
                self._revoke()
                text = exc.Get_error_string() if hasattr(exc, "Get_error_string") else str(exc)
                raise ProcessFailed(f"{self.state.waiting if self.state else method.__name__} "
                                    f"(MPI: {text.strip()})") from None
        call.__name__ = method.__name__
        return call

    def _comms(self) -> list:
        return [c for c in [self.world, *self.group.values(), self.comms[UPLINK],
                            self.comms[RELAYS]] if c is not None]

    def _revoke(self) -> None:
        for comm in self._comms():
            try:
                if not comm.Is_revoked():
                    comm.Revoke()
            except MPI.Exception:
                pass

    def _track(self, request, buf):
        """Keep ``request`` and its buffer referenced until it completed (see the module
        doc); completed ones (null requests) are dropped now and then."""
        self._started.append((request, buf))
        if len(self._started) >= self._prune_at:
            self._started = [(r, b) for r, b in self._started if r]
            self._prune_at = max(PRUNE_AT, 2 * len(self._started))
        return request

    def shrink(self):
        self.survived_loss = True
        self._revoke()
        abandon(self._started)              # the failed iteration's requests: kept for good
        self._started, self._prune_at = [], PRUNE_AT
        if self.control is not None:
            self.control.acknowledge()
        world = self.world
        shrunk = world.Shrink()
        old, new = world.Get_group(), shrunk.Get_group()
        alive = MPI.Group.Translate_ranks(new, list(range(new.Get_size())), old)
        old.Free()
        new.Free()
        self._shrunk = (shrunk, list(alive))
        lost = sorted(set(range(world.Get_size())) - set(alive))
        silent = self.control.unanswered if self.control is not None else {}
        self.cut_off = {r: silent[self.physical[r]] for r in lost if self.physical[r] in silent}
        now_wall, now = time.time(), self.clock()
        when = {}
        for r in lost if self.rank == 0 else ():
            died = read_death(self.physical[r])
            if died is not None:
                when[r] = now - (now_wall - died)
        return lost, when

    def remap(self, ranks, mine) -> None:
        shrunk, alive = self._shrunk
        self.group, self.in_group, self._channels, self.G = {}, {}, {}, None
        self.comms = {WORLD: None, UPLINK: None, RELAYS: None}
        comm = shrunk.Split(0 if mine is not None else MPI.UNDEFINED, 0 if mine is None else mine)
        self.physical = [self.physical[r] for r in ranks]
        self.size = len(ranks)
        self._shrunk = None
        if mine is None:
            self.world = None
            return
        self.world = self.comms[WORLD] = comm
        self.rank = comm.Get_rank()
        assert self.rank == mine

    def _channel(self, peer: int) -> tuple:
        """(communicator, peer's rank in it) for messages between this rank and ``peer``."""
        got = self._channels.get(peer)
        if got is not None:
            return got
        got = (self.world, peer)
        if self.G is not None:
            H = self.G.shape[0]
            (mine, i_me), (theirs, i_peer) = role_of(self.rank, H), role_of(peer, H)
            roles = {mine, theirs}
            if roles == {RELAY, USER} and not self.flat:
                i, user_side = (i_me, peer) if mine == RELAY else (i_peer, self.rank)
                if user_side in self.in_group.get(i, {}):
                    got = (self.group[i], self.in_group[i][peer])
            elif roles == {SERVER, RELAY} and self.comms[UPLINK] is not None:
                got = (self.comms[UPLINK], peer)              # uplink rank = world rank
            elif mine == theirs == RELAY and self.comms[RELAYS] is not None:
                got = (self.comms[RELAYS], peer - 1)
        self._channels[peer] = got
        return got

    def _comm(self, group: str):
        comm = self.comms[group]
        if comm is None:
            raise RuntimeError(f"rank {self.rank} is not in the {group} group")
        return comm

    def _root(self, group: str, root: int) -> int:
        return root - 1 if group == RELAYS else root

    # --- waiting ----------------------------------------------------------------------------
    def wait(self, requests, what: str, timeout: float | None = None) -> None:
        """Wait for all requests with the deadline, polling (see POLL_FRACTION)."""
        requests = list(requests) if isinstance(requests, (list, tuple)) else [requests]
        if not requests:
            return
        limit = self.timeout if timeout is None else timeout
        started = time.monotonic()
        self._waiting(what)
        while not MPI.Request.Testall(requests):
            started = self._idle(started, limit, what)
        self._waiting("")

    def wait_first(self, requests: list, need: int, what: str, usable=None) -> list:
        """Wait until ``need`` usable receives of ``requests`` completed (straggler tolerance).

        ``usable(nbytes)`` says whether a completed receive counts (default: all do;
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
                                if usable is None or usable(statuses[k].Get_count(MPI.BYTE)))
                if len(order) >= need:
                    break
                continue
            started = self._idle(started, self.timeout, f"{what} ({len(order)} of {need} so far)")
        self._waiting("")
        return order

    def delay(self, seconds: float, source: int, tag: int) -> bool:
        """Sleep ``seconds`` (an injected delay), answering the failure layer, unless a
        message from ``source`` with ``tag`` arrives first; returns whether it did."""
        end = time.monotonic() + seconds
        while True:
            if self.probe(source, tag):
                return True
            left = end - time.monotonic()
            if left <= 0:
                return False
            if self.control is not None:
                self.control.poll()
            time.sleep(min(left, 0.002))

    def clock(self) -> float:
        return MPI.Wtime()

    def _waiting(self, what: str) -> None:
        if self.state is not None:
            self.state.waiting = what

    def _idle(self, started: float, limit: float, what: str) -> float:
        """One turn of a wait begun at ``started``: answer the failure layer, check the
        deadline (``limit`` seconds after the start), sleep (see POLL_FRACTION). Returns
        when the wait counts as begun: under ``--on-failure continue`` the failure layer
        may let a wait that passed its deadline go on (:meth:`Control.overdue
        <hmtl_mpi.job.failures.Control.overdue>`: the job is alive, another rank is the
        problem), and its deadline starts again."""
        if self.control is not None:
            self.control.poll()
        waited = time.monotonic() - started
        if waited > limit:
            if self.control is None or not self.control.overdue(what, limit, waited):
                raise PhaseTimeout(what, limit)
            return time.monotonic()
        time.sleep(min(POLL_MAX, max(POLL_MIN, waited / POLL_FRACTION)))
        return started

    # --- point to point ---------------------------------------------------------------------
    def isend(self, dest: int, buf: np.ndarray, tag: int, link: str | None):
        if link is not None:
            self.count(link, buf.nbytes)
        comm, peer = self._channel(dest)
        return self._track(comm.Isend(buf, dest=peer, tag=tag), buf)

    def irecv(self, source: int, buf: np.ndarray, tag: int):
        comm, peer = self._channel(source)
        return self._track(comm.Irecv(buf, source=peer, tag=tag), buf)

    def test(self, requests) -> bool:
        requests = list(requests) if isinstance(requests, (list, tuple)) else [requests]
        return bool(MPI.Request.Testall(requests))

    def probe(self, source: int, tag: int) -> bool:
        comm, peer = self._channel(source)
        return comm.Iprobe(source=peer, tag=tag)

    def recv_variable(self, expected: list, dtype, what: str) -> dict:
        """Receive messages whose lengths only their senders know (coded + escapes).

        ``expected`` lists (source, tag) pairs; each is matched with a nonblocking
        matched probe as soon as it arrives and received into a buffer of its exact
        size. Returns {(source, tag): buffer}.
        """
        dtype = np.dtype(dtype)
        pending, got, requests = list(expected), {}, []
        status = MPI.Status()
        started = time.monotonic()
        self._waiting(what)
        while pending:
            matched = False
            for key in list(pending):
                comm, peer = self._channel(key[0])
                msg = comm.Improbe(source=peer, tag=key[1], status=status)
                if msg is not None:
                    buf = np.empty(status.Get_count(MPI.BYTE) // dtype.itemsize, dtype=dtype)
                    requests.append(self._track(msg.Irecv(buf), buf))
                    got[key] = buf
                    pending.remove(key)
                    matched = True
            if pending and not matched:
                who = ", ".join(f"rank {s} tag {t}" for s, t in pending)
                started = self._idle(started, self.timeout, f"{what} ({who})")
        self.wait(requests, what)
        return got

    def inject(self, kind: str) -> None:

        if kind == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        while True:                               # hang: stop answering anybody
            time.sleep(1)

    # --- collectives ------------------------------------------------------------------------
    def barrier(self, group: str, what: str, timeout: float | None = None) -> None:
        self.wait(self._track(self._comm(group).Ibarrier(), None), f"{what} (barrier)", timeout)

    def bcast(self, group, buf, root, what, timeout=None) -> None:
        self.wait(self._track(self._comm(group).Ibcast(buf, root=self._root(group, root)), buf),
                  what, timeout)

    def gather(self, group, array, root, what, timeout=None):
        comm = self._comm(group)
        out = (np.empty((comm.Get_size(),) + array.shape, dtype=array.dtype)
               if self.rank == root else None)
        array = np.ascontiguousarray(array)
        self.wait(self._track(comm.Igather(array, out, root=self._root(group, root)),
                              (array, out)), what, timeout)
        return out

    def reduce(self, group, array, op, root, what):
        out = np.zeros_like(array) if self.rank == root else None
        array = np.ascontiguousarray(array)
        self.wait(self._track(self._comm(group).Ireduce(array, out, op=_OPS[op],
                                                        root=self._root(group, root)),
                              (array, out)), what)
        return out

    def scatterv(self, group, sendbuf, counts, displs, recvbuf, root, what, timeout=None):
        comm = self._comm(group)
        send = None
        if self.rank == root:
            send = [sendbuf, [int(c) for c in counts], [int(d) for d in displs],
                    MPI._typedict[np.asarray(sendbuf).dtype.char]]
        recv = MPI.IN_PLACE if recvbuf is None else recvbuf
        self.wait(self._track(comm.Iscatterv(send, recv, root=self._root(group, root)),
                              (send, recv)), what, timeout)

    def allgatherv(self, group, mine, out, counts, displs, what) -> None:
        self.wait(self._track(self._comm(group).Iallgatherv(
            mine, [out, [int(c) for c in counts], [int(d) for d in displs],
                   MPI._typedict[out.dtype.char]]), (mine, out)), what)
