"""The in-process transport: every rank of the job in one process, on a virtual clock.

:class:`Fabric` runs the job's ranks as greenlets (coroutines with their own stacks,
the ``greenlet`` package) on the calling thread, one at a time: a rank runs until it
waits, then hands control back to the fabric's scheduler, which switches to the
rank whose next event is earliest. Nothing runs concurrently, so nothing needs a
lock, and a switch costs a few microseconds, not an operating-system thread
wake-up: 10,101 ranks (K = 10,000 users) cost little more than their work. (Until
issue 21 the ranks were threads handing a baton over events: 135-340 us per switch
on this 2-core machine under load, most of a K = 10,000 job's time.)
:class:`InProcessEndpoint` is one rank's
:class:`~hmtl_mpi.wire.interfaces.Endpoint` on it. The job above (the runtime, the
role links, every scheme's parts, the checks and the report) is the very code that
runs over MPI; only the bytes move differently: a send copies the buffer into the
destination's mailbox, a receive takes it out, with MPI's matching rules (by
source and tag, in order). Byte counts are the senders', as over MPI.

Time is virtual, and only computing costs it: a rank's clock advances by the CPU
time it uses while it runs (``time.thread_time`` between its switches), a message carries the
sender's clock, and a receiver's clock becomes at least the time its messages were
sent. Links cost nothing, so a phase's time is the parts' own compute time on its
critical path. An injected delay (``--straggle``) advances the clock instead of
sleeping. The scheduler always runs the rank whose next event is earliest (a
conservative discrete-event simulation), so whatever depends on the order of
arrivals (the first ``m`` of ``n`` messages under gradient coding, a probe for a
message, a delay cut short by one) sees them in the order of their virtual times.

Faults: an exception on a rank ends every rank (they get :class:`Aborted` at their
next wait) and is reported with the rank that raised it. With ``survive``
(``--on-failure continue``) an exception on a rank other than 0 is that rank's death
instead: the rank is gone, and every other rank gets
:class:`~hmtl_mpi.wire.interfaces.ProcessFailed` at its next wait (as ULFM's revoked
communicator does) until it joins :meth:`Fabric.shrink`, which drops every message
in flight and tells the survivors who died; when no rank can move
(every one waits for a message nobody will send), that is a deadlock, reported
with what each rank waits for. Nothing here ever waits on a wall clock, except the
watchdog: a rank that runs for ``watchdog`` seconds without reaching a wait has
stopped answering (a watchdog thread interrupts the main thread with SIGALRM's Python
handler, raising :class:`TimeoutError` in that rank; only when :meth:`Fabric.run` is
called from the main thread, as the job and ``plan --verify`` do).
"""

from __future__ import annotations

import _thread
import functools
import heapq
import itertools
import signal
import threading
import time
from collections import defaultdict, deque

import greenlet
import numpy as np

from ..vocabulary import RELAYS, UPLINK, WORLD
from .interfaces import Endpoint, ProcessFailed


class Aborted(BaseException):
    """The job is ending (another rank failed); raised at a rank's next wait."""


class Deadlock(RuntimeError):
    """No rank can move: each waits for something no other rank will do."""

    def __init__(self, waiting: dict):
        self.waiting = waiting            # rank -> what it waits for
        super().__init__("no rank can go on: " + "; ".join(
            f"rank {r} waits for {w}" for r, w in sorted(waiting.items())[:6]))


class _Message:
    __slots__ = ("data", "ts", "seq")

    def __init__(self, data, ts, seq):
        self.data, self.ts, self.seq = data, ts, seq


class _Send:
    """A send: complete at once (the bytes were copied)."""

    __slots__ = ()
    done = True


class _Recv:
    __slots__ = ("buf", "done", "ts", "seq", "nbytes")

    def __init__(self, buf):
        self.buf, self.done, self.ts, self.seq, self.nbytes = buf, False, 0.0, 0, 0

    def fill(self, msg: _Message) -> None:
        target = self.buf.reshape(-1).view(np.uint8)
        n = msg.data.size
        if n > target.size:
            raise RuntimeError(f"a message of {n} bytes for a receive buffer of {target.size}")
        target[:n] = msg.data
        self.done, self.ts, self.seq, self.nbytes = True, msg.ts, msg.seq, n


class _Collective:
    __slots__ = ("members", "arrivals", "done", "ts")

    def __init__(self, members):
        self.members, self.arrivals, self.done, self.ts = members, {}, False, 0.0


def _bytes_of(buf) -> np.ndarray:
    return np.frombuffer(np.ascontiguousarray(buf).tobytes(), dtype=np.uint8)


class Fabric:
    """The ranks of one job in one process (see the module doc)."""

    def __init__(self, size: int, watchdog: float = 600.0, survive: bool = False):
        self.size = int(size)
        self.survive = bool(survive)           # a rank's exception is its death, not the job's
        self.dead = {}                         # rank -> its clock when it died
        self.reported = set()                  # dead ranks a shrink already named
        self.revoked = False                   # a rank died: waits fail until the shrink
        self.acked = set()                     # ranks inside the shrink
        self.epoch, self.epoch_ts, self.lost = 0, 0.0, ()
        self.watchdog = float(watchdog)
        self.groups = {WORLD: range(self.size)}     # ranges: membership in O(1)
        self.mail = [defaultdict(deque) for _ in range(self.size)]     # (source, tag) -> messages
        self.posted = [defaultdict(deque) for _ in range(self.size)]   # (source, tag) -> receives
        self.collectives = {}                                          # (group, n) -> _Collective
        self.decoded = {}             # id(buffer) -> (buffer, object): see decode_broadcast
        self.calls = [defaultdict(int) for _ in range(self.size)]      # group -> collectives so far
        self.base = [0.0] * self.size          # virtual clock when the rank last paused
        self.resumed = [0.0] * self.size       # its thread's CPU time when it last resumed
        self.heap = []                         # (time, rank, version): who may run, from when
        self.version = [0] * self.size
        self.parked = {}                       # rank -> (when, what)
        self.glets = [None] * self.size        # rank -> its greenlet
        self.wake_at = [0.0] * self.size
        self.done = [False] * self.size
        self.aborting = False
        self.failure = None                    # (rank, exception): the first one
        self.results = [None] * self.size
        self.seq = itertools.count()
        self.switched = time.monotonic()       # when the baton last moved (the watchdog)
        self.running = None

    # --- groups ----------------------------------------------------------------------------
    def connect(self, H: int, ranks=None) -> None:
        """The groups of a job with H relays; ``ranks``: the rank playing each job rank
        after a loss (lists then), default every rank as itself (ranges)."""
        if ranks is None or list(ranks) == list(range(self.size)):
            self.groups[UPLINK] = range(H + 1)
            self.groups[RELAYS] = range(1, H + 1)
            return
        ranks = list(ranks)
        self.groups[WORLD] = ranks
        self.groups[UPLINK] = ranks[: H + 1]
        self.groups[RELAYS] = ranks[1: H + 1]

    # --- clocks ----------------------------------------------------------------------------
    def clock(self, r: int) -> float:
        if self.running == r:
            return self.base[r] + (time.thread_time() - self.resumed[r])
        return self.base[r]

    def _advance(self, r: int, t: float) -> None:
        """The running rank's clock becomes at least ``t``."""
        now = self.clock(r)
        if t > now:
            self.base[r] += t - now

    # --- scheduling ------------------------------------------------------------------------
    def _push(self, r: int, t: float) -> None:
        self.version[r] += 1
        heapq.heappush(self.heap, (t, r, self.version[r]))

    def _recheck(self, r: int) -> None:
        """Something arrived for rank ``r``: if it is parked and can now go on, schedule it."""
        parked = self.parked.get(r)
        if parked is None:
            return
        t = parked[0]()
        if t is not None:
            self._push(r, max(self.base[r], t))

    def _next(self):
        """The rank with the earliest event (its clock starts there), or None."""
        while self.heap:
            t, r, v = heapq.heappop(self.heap)
            if v == self.version[r] and not self.done[r]:
                self.wake_at[r] = t
                return r
        return None

    def _pause(self, r: int) -> None:
        """The running rank ``r`` stops its clock (its CPU time so far is counted)."""
        self.base[r] = self.clock(r)
        self.running = None

    def _yield(self, r: int) -> float:
        """Rank ``r`` (paused) waits until the scheduler resumes it; returns the time it
        resumes at."""
        self.hub.switch()
        if self.aborting:
            raise Aborted()
        self.resumed[r] = time.thread_time()
        self.base[r] = max(self.base[r], self.wake_at[r])
        return self.wake_at[r]

    def block(self, r: int, when, what: str, ordered: bool = False) -> float:
        """Rank ``r`` waits until ``when()`` (the virtual time at which what it waits for is
        there, None while it is not) is defined. An ``ordered`` wait also waits until no
        rank can produce anything earlier (its result depends on what arrived first)."""
        if self.aborting:
            raise Aborted()
        self._check_revoked(r, what)
        t = when()
        if t is not None and not ordered:
            self._advance(r, t)
            return self.clock(r)
        self.parked[r] = (when, what)
        self._pause(r)
        if t is not None:
            self._push(r, max(self.base[r], t))
        else:
            self.version[r] += 1
        try:
            t = self._yield(r)
        finally:
            self.parked.pop(r, None)
        self._check_revoked(r, what)
        return t

    # --- a rank's death (survive) ----------------------------------------------------------
    def _check_revoked(self, r: int, what: str) -> None:
        if self.revoked and r not in self.acked:
            raise ProcessFailed(what)

    def _die(self, r: int) -> None:
        """The running rank ``r`` raised with ``survive``: it is dead; wake every parked rank
        (its wait fails with ProcessFailed)."""
        self.dead[r] = self.clock(r)
        self.revoked = True
        for q in list(self.parked):
            if q not in self.acked:
                self._push(q, self.base[q])

    def shrink(self, r: int):
        """Rank ``r``'s part in agreeing on the dead (every live rank calls it after a
        ProcessFailed). The last to arrive drops every message, receive and collective in
        flight; returns (the ranks that died since the last shrink, {rank: clock at death})."""
        self.acked.add(r)
        epoch = self.epoch
        live = {q for q in range(self.size) if not self.done[q] and q not in self.dead}
        if live <= self.acked:
            self.mail = [defaultdict(deque) for _ in range(self.size)]
            self.posted = [defaultdict(deque) for _ in range(self.size)]
            self.collectives = {}
            self.calls = [defaultdict(int) for _ in range(self.size)]
            self.lost = tuple(sorted(set(self.dead) - self.reported))
            self.reported |= set(self.lost)
            self.epoch_ts = max(self.clock(q) for q in live)
            self.revoked, self.acked = False, set()
            self.epoch += 1
            for q in live:
                if q != r:
                    self._recheck(q)
        self.block(r, lambda: self.epoch_ts if self.epoch > epoch else None,
                   "the survivors' agreement on the lost ranks")
        return self.lost, {q: self.dead[q] for q in self.lost}

    # --- running the job -------------------------------------------------------------------
    def _body(self, r: int, target) -> None:
        if self.aborting:
            self.done[r] = True
            return
        self.resumed[r] = time.thread_time()
        try:
            self.results[r] = target(r)
        except Aborted:
            pass
        except BaseException as exc:        # noqa: BLE001 - reported with its rank
            if self.survive and r != 0 and not self.aborting \
                    and not isinstance(exc, (ProcessFailed, KeyboardInterrupt)):
                self.results[r] = exc           # this rank died; the others go on
                self._die(r)
            else:
                self._fail(r, exc)
        finally:
            self.done[r] = True
            if self.running == r:
                self._pause(r)
        # returning switches back to the scheduler (the greenlet's parent)

    def _fail(self, r: int, exc: BaseException) -> None:
        if self.failure is None:
            self.failure = (r, exc)
        self.aborting = True

    def _schedule(self) -> None:
        """Switch to the rank with the earliest event until every rank is done, one fails
        (then every rank still waiting is ended with :class:`Aborted`) or none can move
        (:class:`Deadlock`)."""
        while not self.aborting:
            r = self._next()
            if r is None:
                if all(self.done):
                    return
                waiting = {q: what for q, (_, what) in self.parked.items()}
                self._fail(min(waiting) if waiting else 0, Deadlock(waiting))
                break
            self.running = r
            self.switched = time.monotonic()
            self.glets[r].switch()
        for q, g in enumerate(self.glets):
            if not self.done[q]:
                g.switch()                  # it raises Aborted at its wait, or never starts

    def _watch(self, stop: threading.Event) -> None:
        """The watchdog thread: a rank running ``watchdog`` seconds without a wait."""
        while not stop.wait(0.2):
            if not self.aborting and self.running is not None \
                    and time.monotonic() - self.switched > self.watchdog:
                _thread.interrupt_main(signal.SIGALRM)
                return

    def _stalled(self, signum, frame):
        raise TimeoutError(f"ran {self.watchdog:g} s without reaching a wait")

    def run(self, target) -> list:
        """Run ``target(rank)`` for every rank; returns their results. Raises the first
        failure, with ``.rank`` set (:class:`Deadlock` when none can move), and
        ``KeyboardInterrupt`` on Ctrl-C (every rank is ended first)."""
        self.hub = greenlet.getcurrent()
        self.glets = [greenlet.greenlet(functools.partial(self._body, r, target))
                      for r in range(self.size)]
        for r in range(self.size):
            self._push(r, 0.0)
        watched = threading.current_thread() is threading.main_thread()
        stop = threading.Event()
        if watched:
            old = signal.signal(signal.SIGALRM, self._stalled)
            threading.Thread(target=self._watch, args=(stop,), daemon=True,
                             name="in-process watchdog").start()
        try:
            self._schedule()
        except BaseException as exc:        # noqa: BLE001 - Ctrl-C between two ranks' turns
            self._fail(self.running if self.running is not None else 0, exc)
            self._schedule()
        finally:
            stop.set()
            if watched:
                signal.signal(signal.SIGALRM, old)
        if self.failure is not None:
            r, exc = self.failure
            exc.rank = r
            raise exc
        return self.results

    # --- point to point --------------------------------------------------------------------
    def send(self, r: int, dest: int, buf, tag: int) -> None:
        msg = _Message(_bytes_of(buf), self.clock(r), next(self.seq))
        key = (r, tag)
        waiting = self.posted[dest].get(key)
        if waiting:
            waiting.popleft().fill(msg)
        else:
            self.mail[dest][key].append(msg)
        self._recheck(dest)

    def recv(self, r: int, source: int, buf, tag: int) -> _Recv:
        req = _Recv(buf)
        box = self.mail[r].get((source, tag))
        if box:
            req.fill(box.popleft())
        else:
            self.posted[r][(source, tag)].append(req)
        return req

    def first_message(self, r: int, source: int, tag: int):
        box = self.mail[r].get((source, tag))
        return box[0] if box else None

    # --- collectives -----------------------------------------------------------------------
    def collective(self, r: int, group: str, payload, finish, what: str):
        """Rank ``r``'s part in the next collective on ``group``; ``finish(arrivals)`` runs
        once, when the last member arrives (arrivals: member -> payload, in group order)."""
        members = self.groups.get(group)
        if members is None or r not in members:
            raise RuntimeError(f"rank {r} is not in the {group} group")
        n = self.calls[r][group]
        self.calls[r][group] += 1
        key = (group, n)
        c = self.collectives.get(key)
        if c is None:
            c = self.collectives[key] = _Collective(members)
        c.arrivals[r] = (self.clock(r), payload)
        if len(c.arrivals) == len(c.members):
            del self.collectives[key]
            c.ts = max(ts for ts, _ in c.arrivals.values())
            finish({m: c.arrivals[m][1] for m in c.members})
            c.done = True
            spent = time.thread_time()
            for m in c.members:
                if m != r:
                    self._recheck(m)
            # waking the members is the scheduler's work, not this rank's: off its clock
            self.resumed[r] += time.thread_time() - spent
        self.block(r, lambda: c.ts if c.done else None, f"{what} (collective on {group})")


class InProcessEndpoint(Endpoint):
    """One rank's :class:`~hmtl_mpi.wire.interfaces.Endpoint` on a :class:`Fabric`."""

    kind = "inprocess"
    has_links = False

    def __init__(self, fabric: Fabric, rank: int, timeout: float = 60.0, state=None):
        super().__init__(rank, fabric.size, timeout)
        self.fabric = fabric
        self.state = state
        self.me = int(rank)                     # the fabric's rank (its greenlet), for good
        self.peer = None                        # job rank -> fabric rank after a loss (remap)

    def connect(self, G, flat, per_rank=1) -> None:
        if self.rank == 0:
            self.fabric.connect(G.shape[0], self.peer)
        self.barrier(WORLD, "the groups mirroring G")

    def _waiting(self, what: str) -> None:
        if self.state is not None:
            self.state.waiting = what

    def _block(self, when, what, ordered=False) -> float:
        self._waiting(what)
        t = self.fabric.block(self.me, when, what, ordered)
        self._waiting("")
        return t

    # --- point to point --------------------------------------------------------------------
    def isend(self, dest, buf, tag, link):
        if link is not None:
            self.count(link, buf.nbytes)
        self.fabric.send(self.me, self._p(dest), buf, tag)
        return _Send()

    def irecv(self, source, buf, tag):
        return self.fabric.recv(self.me, self._p(source), buf, tag)

    def wait(self, requests, what, timeout=None) -> None:
        requests = list(requests) if isinstance(requests, (list, tuple)) else [requests]
        recvs = [q for q in requests if isinstance(q, _Recv)]
        if not recvs:
            return

        def when():
            if all(q.done for q in recvs):
                return max(q.ts for q in recvs)
            return None
        self._block(when, what)

    def wait_first(self, requests, need, what, usable=None) -> list:
        if need <= 0:
            return []

        def arrived():
            got = [(q.ts, q.seq, i) for i, q in enumerate(requests)
                   if q.done and (usable is None or usable(q.nbytes))]
            return sorted(got)

        def when():
            got = arrived()
            if len(got) >= need:
                return got[need - 1][0]
            if all(q.done for q in requests):
                return 0.0                     # never enough: found out at once
            return None
        t = self._block(when, f"{what} (first {need})", ordered=True)
        got = arrived()
        if len(got) < need:
            raise RuntimeError(f"{what}: {need} awaited, only {len(got)} can arrive")
        return [i for ts, _, i in got if ts <= t] or [i for _, _, i in got[:need]]

    def test(self, requests) -> bool:
        requests = list(requests) if isinstance(requests, (list, tuple)) else [requests]
        recvs = [q for q in requests if isinstance(q, _Recv)]
        now = self.fabric.clock(self.me)
        t = self._block(lambda: now, "a look at posted receives", ordered=True)
        return all(q.done and q.ts <= t for q in recvs)

    def probe(self, source, tag) -> bool:
        fabric, r = self.fabric, self.me
        now = fabric.clock(r)
        t = self._block(lambda: now, f"a look for a message from rank {source}", ordered=True)
        msg = fabric.first_message(r, self._p(source), tag)
        return msg is not None and msg.ts <= t

    def delay(self, seconds, source, tag) -> bool:
        fabric, r = self.fabric, self.me
        if seconds <= 0:
            return self.probe(source, tag)
        wake = fabric.clock(r) + seconds

        def when():
            msg = fabric.first_message(r, self._p(source), tag)
            return min(wake, msg.ts) if msg is not None else wake
        t = self._block(when, f"an injected delay of {seconds:g} s", ordered=True)
        msg = fabric.first_message(r, self._p(source), tag)
        return msg is not None and msg.ts <= t

    def recv_variable(self, expected, dtype, what) -> dict:
        fabric, r = self.fabric, self.me

        def when():
            firsts = [fabric.first_message(r, self._p(s), t) for s, t in expected]
            if all(m is not None for m in firsts):
                return max((m.ts for m in firsts), default=0.0)
            return None
        self._block(when, what)
        out = {}
        for source, tag in expected:
            msg = fabric.mail[r][(self._p(source), tag)].popleft()
            out[(source, tag)] = msg.data.view(np.dtype(dtype)).copy()
        return out

    def clock(self) -> float:
        return self.fabric.clock(self.me)

    def _p(self, r: int) -> int:
        """The fabric rank of job rank ``r`` (itself until a loss renumbers the ranks)."""
        return r if self.peer is None else self.peer[r]

    def shrink(self):
        self.survived_loss = True
        lost, when = self.fabric.shrink(self.me)
        job_rank = {self._p(r): r for r in range(self.size)}
        return [job_rank[p] for p in lost], {job_rank[p]: t for p, t in when.items()}

    def remap(self, ranks, mine) -> None:
        self.peer = [self._p(r) for r in ranks]
        self.size = len(self.peer)
        if mine is not None:
            self.rank = int(mine)
            self.fabric.groups[WORLD] = list(self.peer)

    def inject(self, kind) -> None:
        if kind == "kill":                    # refused by the command line: one process
            raise RuntimeError("--inject-fault ...:kill needs separate processes (mpirun)")
        self._block(lambda: None, "nothing: it hangs (--inject-fault)")

    # --- collectives -----------------------------------------------------------------------
    def barrier(self, group, what, timeout=None) -> None:
        self.fabric.collective(self.me, group, None, lambda arrivals: None, what)

    def bcast(self, group, buf, root, what, timeout=None) -> None:
        root = self._p(root)

        def finish(arrivals):
            data = _bytes_of(arrivals[root])
            for m, b in arrivals.items():
                if m != root:
                    b.reshape(-1).view(np.uint8)[:] = data
        self.fabric.collective(self.me, group, buf, finish, what)

    def bcast_bytes(self, group, payload, root, what, timeout=None):
        """Every rank gets the root's own buffer, read-only: one copy in the process, not
        one per rank (at K = 10,000 users, 10,101 copies of G would take 10 GB)."""
        box = {}
        root = self._p(root)

        def finish(arrivals):
            shared = np.asarray(arrivals[root][0]).view()
            shared.flags.writeable = False
            for _, b in arrivals.values():
                b["out"] = shared
        self.fabric.collective(self.me, group, (payload, box), finish, what)
        return box["out"]

    def decode_broadcast(self, buf, decode):
        """Decoded once per buffer (the first rank to ask); every other rank shares it."""
        shared = self.fabric.decoded.get(id(buf))
        if shared is None or shared[0] is not buf:
            shared = self.fabric.decoded[id(buf)] = (buf, decode(buf))
        return shared[1]

    def gather(self, group, array, root, what, timeout=None):
        box = {}
        phys = self._p(root)
        self.fabric.collective(self.me, group, (array, box), lambda a: finish_gather(a, phys),
                               what)
        return box.get("out") if self.rank == root else None

    def reduce(self, group, array, op, root, what):
        box = {}
        fn = {"sum": np.add, "max": np.maximum}[op]
        phys = self._p(root)

        def finish(arrivals):
            values = [a for a, _ in arrivals.values()]
            out = np.array(values[0], copy=True)
            for v in values[1:]:
                out = fn(out, v)
            arrivals[phys][1]["out"] = out
        self.fabric.collective(self.me, group, (array, box), finish, what)
        return box.get("out") if self.rank == root else None

    def scatterv(self, group, sendbuf, counts, displs, recvbuf, root, what, timeout=None):
        members = self.fabric.groups.get(group, [])
        phys = self._p(root)

        def finish(arrivals):
            send, cnt, dsp, _ = arrivals[phys]
            send = np.asarray(send).reshape(-1)
            for pos, m in enumerate(members):
                out = arrivals[m][3]
                if out is not None:
                    c, d = int(cnt[pos]), int(dsp[pos])
                    out.reshape(-1)[:c] = send[d:d + c]
        self.fabric.collective(self.me, group, (sendbuf, counts, displs, recvbuf), finish, what)

    def allgatherv(self, group, mine, out, counts, displs, what) -> None:
        members = self.fabric.groups.get(group, [])

        def finish(arrivals):
            for _, target in arrivals.values():
                flat = target.reshape(-1)
                for pos, m in enumerate(members):
                    c, d = int(counts[pos]), int(displs[pos])
                    flat[d:d + c] = np.asarray(arrivals[m][0]).reshape(-1)[:c]
        self.fabric.collective(self.me, group, (mine, out), finish, what)


def finish_gather(arrivals: dict, root: int) -> None:
    """A gather's completion: every member's array stacked (group order) for the root."""
    arrays = [a for a, _ in arrivals.values()]
    arrivals[root][1]["out"] = np.stack([np.array(a, copy=True) for a in arrays])
