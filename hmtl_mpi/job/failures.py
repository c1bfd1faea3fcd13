"""Every abnormal end named once, with its culprit, from one place.

A job of 1 + H + K ranks can end badly in four ways; each prints one short
message on standard error (the "hmtl_mpi:" line, plus MPICH's own one-line
note of the abort) and exits with its own code:

==========  =====================================================================
exit code   cause
==========  =====================================================================
0           success
1           a lossless check failed (models of the schemes differ)
2           bad input: a flag, the topology, the data, the number of ranks
3           a fault: an exception on some rank (the rank, role, phase, iteration
            and the exception are named)
4           a rank stopped answering: a wait passed ``--timeout`` and the rank
            that did not answer a status request is named
130 / 143   interrupted by SIGINT (Ctrl-C) / terminated by SIGTERM
killed      a rank killed by a signal (``kill -9``, OOM) is named by its watcher
            (:mod:`hmtl_mpi.job.supervisor`); the exit code is then the launcher's
            (MPICH's hydra reports 9)
==========  =====================================================================

How the culprit is found. Rank 0 speaks for the job. Every wait of every rank
is a polling loop (:meth:`hmtl_mpi.wire.transport.MpiEndpoint.wait`) that also calls
:meth:`Control.poll` on a communicator of its own (a duplicate of the world),
which answers status requests and, on rank 0, picks up failure reports.

* A rank other than 0 that fails (exception, timeout, interrupt) sends rank 0 a
  report and keeps answering status requests until rank 0 ends the job.
* Rank 0, on a report or a failure of its own, collects the reports that
  arrive within a short window; on a timeout it asks every rank for its status
  and names the ranks that do not answer within the grace period (a rank that
  is computing or hung does not poll, so it cannot answer). It then prints one
  message, removes files it was writing, waits until the message has left its
  standard-error pipe, and calls ``MPI_Abort`` with the exit code.
* If rank 0 itself does not react (it is the one that hangs), the failed ranks
  wait a little longer, staggered by rank so that the lowest speaks first, ask
  rank 0 for its status and, without an answer, name rank 0.

Under ``--on-failure continue`` (an MPI with ULFM) a wait that passes ``--timeout`` is
first taken for a cut link (:meth:`Control.overdue`): a rank other than 0 that rank 0
still answers keeps waiting (its deadline starts again); one that nobody answers is the
one cut off: it prints one line naming itself and exits 0 on its own, without
``MPI_Abort``, so that ULFM reports it dead and the survivors recover without it (exit 0
for the job, the loss's ``cause`` is ``cut off``). Rank 0 waits a bounded time for the
ranks that did not answer it to leave so, or to answer again (a cut that ended: the job
goes on, nothing lost); if they do neither, or every rank answered (a message was never
sent), or none did (rank 0 is the one cut off), the job ends as above (exit 4, named).

Set ``HMTL_TRACEBACK=1`` to print the full traceback of an exception too.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback

import numpy as np

from ..vocabulary import (EXIT_FAULT, EXIT_HANG, EXIT_INTERRUPTED, EXIT_OK, EXIT_TERMINATED,
                          TAG_HELLO, TAG_REPORT, TAG_STATUS_REPLY, TAG_STATUS_REQUEST)
from ..wire.interfaces import PhaseTimeout, ProcessFailed
from ..wire.ulfm import abandon, write_death
from .supervisor import die_on_sigterm, drain_stderr, host_key, read_page_of

RECORD_BYTES = 2048          # one report or status record: JSON text in a uint8 buffer
REPORT_WINDOW = 0.3          # s rank 0 waits for further reports after the first
MAX_GRACE = 1.0              # s a status request may take before the rank counts as silent


def ask_grace(limit: float) -> float:
    """--on-failure continue: how long a rank whose wait passed ``limit`` (--timeout) waits
    for rank 0's answer before it takes itself for cut off (:meth:`Control.overdue`)."""
    return max(MAX_GRACE, min(0.5 * limit, 10.0))


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that the same path ends the job."""


class RemoteFailure(Exception):
    """Rank 0 received a failure report from another rank."""

    def __init__(self, report: dict):
        super().__init__(report.get("detail", "failure"))
        self.report = report


_KEEP = object()


class RankState:
    """Who this rank is and where it is, for every message about it.

    ``step`` is called by the job at every step; the text also goes to the
    supervisor's shared page, so that a rank killed by a signal is named too.
    """

    def __init__(self, rank: int, page=None):
        self.rank = rank
        self.page = page
        self.roles = None            # rank -> role name, once the topology is known
        self.scheme = None
        self.iteration = None
        self.phase = "start-up"
        self.note = ""               # e.g. "at the barrier after it"
        self.waiting = ""
        self.cleanup = []            # callables rank 0 runs before it aborts (temporary files)
        self.pages = {}              # rank 0: rank -> (host key, pid, page fd), see positions()
        self._publish()

    def set_roles(self, role_of) -> None:
        self.roles = role_of
        self._publish()

    def who(self, rank: int | None = None) -> str:
        rank = self.rank if rank is None else rank
        if self.roles is None:
            return f"rank {rank}"
        return f"rank {rank} ({self.roles(rank)})"

    def step(self, phase: str, scheme=_KEEP, iteration=_KEEP, note: str = "") -> None:
        self.phase, self.note = phase, note
        if scheme is not _KEEP:
            self.scheme = scheme
        if iteration is not _KEEP:
            self.iteration = iteration
        self._publish()

    def where(self, note: bool = True) -> str:
        """Where the rank is; ``note=False`` leaves out where inside the step it waits."""
        phase = f"{self.phase} ({self.note})" if note and self.note else self.phase
        if self.scheme is None:
            return f"during {phase}"
        if self.iteration is None:
            return f"in the {self.scheme} run, {phase}"
        return f"in iteration {self.iteration} of the {self.scheme} run, {phase}"

    def locator(self) -> np.ndarray:
        """(host key, pid, page fd): what rank 0 needs to read this rank's page."""
        fd = self.page.fd if self.page is not None else -1
        return np.array([host_key(), os.getpid(), fd], dtype=np.int64)

    def positions(self, ranks) -> dict:
        """Rank 0: where each of ``ranks`` says it is, from its own page, for those it
        can read (same host: ranks started by one mpiexec on this machine)."""
        me, out = host_key(), {}
        for r in ranks:
            key, pid, fd = self.pages.get(r, (-1, 0, -1))
            if key != me or key == -1:
                continue
            text = read_page_of(pid, fd)
            if text and "\t" in text:
                out[r] = text.partition("\t")[2]
        return out

    def where_iteration(self) -> str:
        """Where the rank is, without the phase: the iteration and run (every rank is in
        the same one, with barriers around iterations; their phases may differ)."""
        if self.scheme is None:
            return f"during {self.phase}"
        if self.iteration is None:
            return f"in the {self.scheme} run"
        return f"in iteration {self.iteration} of the {self.scheme} run"

    def record(self) -> dict:
        return {"rank": self.rank, "who": self.who(), "where": self.where(), "waiting": self.waiting}

    def _publish(self) -> None:
        if self.page is not None:
            self.page.write(f"{self.who()}\t{self.where()}")


def encode_record(record: dict) -> np.ndarray:
    data = json.dumps(record).encode()
    if len(data) > RECORD_BYTES:
        record = dict(record, detail=record.get("detail", "")[:400] + " ...")
        data = json.dumps(record).encode()[:RECORD_BYTES]
    buf = np.zeros(RECORD_BYTES, dtype=np.uint8)
    buf[: len(data)] = np.frombuffer(data, dtype=np.uint8)
    return buf


def decode_record(buf: np.ndarray) -> dict:
    data = buf.tobytes().rstrip(b"\0")
    try:
        return json.loads(data)
    except ValueError:
        return {"detail": data.decode("utf-8", "replace")}


class Control:
    """Failure reports and status requests, on a communicator of their own."""

    def __init__(self, world, state: RankState):
        # local: the in-process transport and the pure layers never load MPI
        from mpi4py import MPI

        self.MPI = MPI
        self.comm = world.Dup()
        self.survive = False          # --on-failure continue: a dead rank is acknowledged
        self.rank = self.comm.Get_rank()
        self.size = self.comm.Get_size()
        self.state = state
        self._status = MPI.Status()
        self._got = None             # the message _probe received last
        self._sends = []             # (request, buffer): buffers stay alive until sent
        self.unanswered = {}          # rank 0: world rank that left silent -> seconds awaited
        self._zero_silent = float("-inf")  # when rank 0 alone last did not answer (overdue)
        self._healed = float("-inf")  # rank 0: when silent ranks last answered again
        self._connect()

    def _connect(self, limit: float = 60.0) -> None:
        """Open the connections between rank 0 and every rank now, while every link is up.

        MPICH over TCP opens a connection with the first message to a peer, and an
        ``Isend`` that must connect to a peer it cannot reach blocks (measured on the
        emulated cluster: rank 0's status request to a rank whose link was cut hung in
        ``Isend``, and another rank then named rank 0). One message each way at start-up
        makes every later status request and report a send on an open connection."""
        if self.size == 1:
            return
        MPI = self.MPI
        peers = range(1, self.size) if self.rank == 0 else [0]
        out = [np.zeros(1, dtype=np.int64) for _ in peers]
        back = [np.empty(1, dtype=np.int64) for _ in peers]
        reqs = [self.comm.Irecv(b, source=p, tag=TAG_HELLO) for b, p in zip(back, peers)]
        reqs += [self.comm.Isend(b, dest=p, tag=TAG_HELLO) for b, p in zip(out, peers)]
        deadline = time.monotonic() + limit
        while not MPI.Request.Testall(reqs):
            if time.monotonic() > deadline:      # the job's own waits will name who is gone
                for r in reqs:
                    if r != MPI.REQUEST_NULL:
                        r.Cancel()
                abandon(zip(reqs, back + out))   # their buffers outlive them (wire.ulfm)
                return
            time.sleep(0.001)

    def _send(self, dest: int, tag: int, buf: np.ndarray) -> None:
        pending = []
        for request, kept in self._sends:
            try:
                if not request.Test():
                    pending.append((request, kept))
            except self.MPI.Exception:
                if not self.survive:
                    raise
                abandon([(request, kept)])       # to a rank that is gone (see _probe)
        self._sends = pending
        try:
            self._sends.append((self.comm.Isend(buf, dest=dest, tag=tag), buf))
        except self.MPI.Exception:
            if not self.survive:          # --on-failure continue: to a rank that is gone
                raise

    def _recv_record(self, source: int, tag: int) -> dict:
        """The record :meth:`_probe` just received from ``source`` with ``tag``."""
        return decode_record(self._got)

    def _probe(self, tag: int):
        """The source of the next message with ``tag`` (None: none), received at once (a
        matched probe: the callers read it with :meth:`_recv_record`)."""
        MPI = self.MPI
        while True:
            try:
                msg = self.comm.Improbe(source=MPI.ANY_SOURCE, tag=tag, status=self._status)
            except MPI.Exception:
                if not self.survive:
                    raise
                # ULFM (--on-failure continue): a rank died; the job's own communicators
                # report it (hmtl_mpi.wire.transport); here it is only acknowledged
                self.acknowledge()
                return None
            if msg is None:
                return None
            source = self._status.Get_source()
            buf = (np.empty(1, dtype=np.int64) if tag == TAG_STATUS_REQUEST
                   else np.empty(RECORD_BYTES, dtype=np.uint8))
            try:
                msg.Recv(buf)
            except MPI.Exception:
                if not self.survive:
                    raise
                # --on-failure continue: the sender is gone, e.g. a cut rank's status
                # request that TCP delivered once its link was back, after it had left. Not
                # a failure of this rank: raised inside a wait of the survivors' recovery,
                # it revoked their new communicator while others still built it (Open MPI
                # then died of SIGSEGV in its revoke). Dropped.
                continue
            self._got = buf
            return source

    def _answer_requests(self) -> None:
        while (source := self._probe(TAG_STATUS_REQUEST)) is not None:
            self._send(source, TAG_STATUS_REPLY, encode_record(self.state.record()))

    def poll(self) -> None:
        """Answer status requests; on rank 0, raise :class:`RemoteFailure` on a report."""
        self._answer_requests()
        if self.rank == 0 and (source := self._probe(TAG_REPORT)) is not None:
            raise RemoteFailure(self._recv_record(source, TAG_REPORT))

    def report(self, record: dict) -> None:
        self._send(0, TAG_REPORT, encode_record(record))

    def acknowledge(self) -> None:
        """``--on-failure continue``: the ranks known dead are acknowledged on this
        communicator (ULFM), so that polling from any source works again."""
        try:
            self.comm.Ack_failed(self.size)
        except (self.MPI.Exception, AttributeError):
            pass

    def collect_reports(self, seconds: float) -> list:
        """Rank 0: the reports that arrive within ``seconds``."""
        got, deadline = [], time.monotonic() + seconds
        while time.monotonic() < deadline:
            source = self._probe(TAG_REPORT)
            if source is None:
                time.sleep(0.002)
                continue
            got.append(self._recv_record(source, TAG_REPORT))
        return got

    def status_of(self, ranks, grace: float):
        """Ask ``ranks`` for their status; returns ({rank: record}, reports seen meanwhile)."""
        ping = np.ones(1, dtype=np.int64)
        for r in ranks:
            self._send(r, TAG_STATUS_REQUEST, ping)
        replies, reports = {}, []
        deadline = time.monotonic() + grace
        while len(replies) < len(ranks) and time.monotonic() < deadline:
            busy = False
            if (source := self._probe(TAG_STATUS_REPLY)) is not None:
                replies[source] = self._recv_record(source, TAG_STATUS_REPLY)
                busy = True
            if self.rank == 0 and (source := self._probe(TAG_REPORT)) is not None:
                reports.append(self._recv_record(source, TAG_REPORT))
                busy = True
            self._answer_requests()                                         # answer others too
            if not busy:
                time.sleep(0.002)
        return replies, reports

    # --- a wait passed --timeout under --on-failure continue: a cut link ------------------
    def failed(self) -> set:
        """The ranks this rank knows dead (ULFM), in this communicator's (the world's)
        numbering."""
        MPI = self.MPI
        try:
            group = self.comm.Get_failed()
        except (MPI.Exception, AttributeError):
            return set()
        n = group.Get_size()
        if n == 0:
            return set()
        world = self.comm.Get_group()
        ranks = MPI.Group.Translate_ranks(group, list(range(n)), world)
        world.Free()
        group.Free()
        return {int(r) for r in ranks}

    def overdue(self, what: str, limit: float, waited: float) -> bool:
        """A wait of this rank passed ``--timeout`` (``limit``) after ``waited`` seconds.
        Returns True when the wait should go on (its deadline starts again); False ends
        the job as any timeout does (:func:`end_job`, exit 4 naming the silent ranks).

        Only under ``--on-failure continue`` does a wait go on (see the module doc):

        * rank 0 asks every rank for its status. Ranks that do not answer, while others
          do, are taken for cut off: rank 0 waits up to ``limit`` + :func:`ask_grace` +
          1 s for ULFM to report them dead (a cut-off rank leaves on its own, below),
          asking them again every second meanwhile, then raises :class:`ProcessFailed`
          for those gone, and the job recovers as from any lost rank. If all of them
          answer again (their cut ended), the wait goes on, and for a while after that
          so does a wait in which every rank answers (what the cut lost is resent only
          at each TCP connection's next retransmission). If they neither leave nor
          answer by then, or every rank answered (otherwise), or none did, the job
          ends.
        * another rank asks rank 0. An answer means the job is alive and another rank is
          the problem: the wait goes on. Without one it asks the other ranks: if one of
          them answers, rank 0 is gone or this rank's own cut just ended: the wait goes
          on once more, and if rank 0 is still silent then, the job ends naming it; if
          none answers, this rank is the one cut off, and it leaves the job
          (:meth:`leave`)."""
        if not self.survive or self.size == 1:
            return False
        if self.rank == 0:
            return self._find_cut_off(what, limit, waited)
        grace = ask_grace(limit)
        replies, _ = self.status_of([0], grace)
        if 0 in replies:
            self._zero_silent = float("-inf")
            return True
        others = [r for r in range(1, self.size) if r != self.rank and r not in self.failed()]
        replies, _ = self.status_of(others, MAX_GRACE) if others else ({}, [])
        if replies:
            # rank 0 gone, or a cut of this rank's link just ended: TCP resends what was
            # lost in the cut only at its next retransmission (backing off to seconds),
            # while a first message to another rank goes at once. One more --timeout for
            # rank 0 to answer, then the job ends naming it.
            now, last = time.monotonic(), self._zero_silent
            self._zero_silent = now
            return now - last > 2 * (limit + grace + MAX_GRACE)   # not in a row: go on
        self.leave(waited + grace + MAX_GRACE)
        return False

    def _find_cut_off(self, what: str, limit: float, waited: float) -> bool:
        began = time.monotonic() - waited
        gone = self.failed()
        others = [r for r in range(1, self.size) if r not in gone]
        replies, reports = self.status_of(others, min(MAX_GRACE, max(0.5, limit)))
        if reports:
            raise RemoteFailure(reports[0])
        silent = [r for r in others if r not in replies]
        if not silent and time.monotonic() - self._healed < 2 * (limit + ask_grace(limit)
                                                                  + MAX_GRACE):
            # every rank answers, shortly after a cut ended: TCP resends what the cut lost
            # only at each connection's next retransmission, backed off to seconds
            return True
        if not silent or len(silent) == len(others):
            return False
        names = _join(self.state.who(r) for r in silent)
        # a cut-off rank leaves ask_grace + MAX_GRACE after its own wait passed the limit
        bound = limit + ask_grace(limit) + MAX_GRACE
        _say(f"{names} did not answer a status request after the other ranks waited "
             f"{waited:.1f} s; waiting up to {bound:g} s for "
             f"{'it' if len(silent) == 1 else 'them'} to leave the job (--on-failure continue)")
        deadline = time.monotonic() + bound
        answered, asked = set(), 0.0
        ping = np.ones(1, dtype=np.int64)
        while time.monotonic() < deadline:
            self._answer_requests()
            if (source := self._probe(TAG_REPORT)) is not None:
                raise RemoteFailure(self._recv_record(source, TAG_REPORT))
            gone = self.failed()
            # a cut that ends now loses nothing: the silent ranks answer again
            while (source := self._probe(TAG_STATUS_REPLY)) is not None:
                self._recv_record(source, TAG_STATUS_REPLY)
                answered.add(source)
            left = [r for r in silent if r in gone]
            if set(silent) <= gone | answered and left:
                now = time.monotonic()
                for r in left:
                    self.unanswered[r] = now - began
                raise ProcessFailed(f"{what}: {_join(self.state.who(r) for r in left)} "
                                    f"stopped answering and left the job")
            if set(silent) <= answered:
                _say(f"{names} answered again; the job goes on")
                self._healed = time.monotonic()
                return True
            if time.monotonic() - asked > MAX_GRACE:
                for r in set(silent) - answered - gone:
                    self._send(r, TAG_STATUS_REQUEST, ping)
                asked = time.monotonic()
            time.sleep(0.01)
        return False

    def leave(self, waited: float) -> None:
        """This rank is cut off from every other one: say so and end this process only
        (never ``MPI_Abort``, which would end every rank), so that ULFM reports it dead to
        the others and they go on without it. Exits 0: the job's exit code is the
        survivors' (the watcher passes it through, :mod:`hmtl_mpi.job.supervisor`)."""
        _say(f"{self.state.who()}: no answer from rank 0 or any other rank for "
             f"{waited:.1f} s {self.state.where_iteration()}: its link is cut; leaving so "
             f"that the job goes on without it (--on-failure continue)")
        write_death(self.rank, time.time())
        for fn in self.state.cleanup:
            try:
                fn()
            except Exception:            # noqa: BLE001 - leaving must not fail
                pass
        end_after_loss(EXIT_OK)

    def linger(self, seconds: float) -> None:
        """Keep answering status requests while rank 0 ends the job."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.poll()
            time.sleep(0.002)


# --- what a failure is -------------------------------------------------------------

def _location(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return ""
    ours = [f for f in frames if f"{os.sep}hmtl_mpi{os.sep}" in f.filename] or frames
    f = ours[-1]
    path = f.filename
    cut = path.rfind(f"{os.sep}hmtl_mpi{os.sep}")
    if cut >= 0:
        path = path[cut + 1:]
    return f" [{path}:{f.lineno} in {f.name}]"


def classify(exc: BaseException) -> dict:
    """kind, exit code and a one-line detail of a failure on this rank."""
    if isinstance(exc, PhaseTimeout):
        return {"kind": "timeout", "code": EXIT_HANG, "detail": str(exc), "what": exc.what,
                "limit": exc.limit}
    if isinstance(exc, Terminated):
        return {"kind": "interrupted", "code": EXIT_TERMINATED, "detail": "terminated by SIGTERM"}
    if isinstance(exc, KeyboardInterrupt):
        return {"kind": "interrupted", "code": EXIT_INTERRUPTED,
                "detail": "interrupted by SIGINT (Ctrl-C)"}
    text = str(exc).strip().splitlines()
    detail = f"{exc.__class__.__name__}: {text[0] if text else ''}".rstrip(": ")
    return {"kind": "exception", "code": EXIT_FAULT, "detail": detail + _location(exc)}


def _join(names) -> str:
    return ", ".join(names)


def compose(state: RankState, mine: dict | None, reports: list, silent: list,
            replies: dict, timeout: float, positions: dict | None = None) -> tuple:
    """Rank 0's one message and exit code from everything it knows. ``positions``: where
    silent ranks said they were (their own pages, :meth:`RankState.positions`); for the
    others only their iteration is known."""
    failures = ([dict(mine, who=state.who(), where=state.where(), rank=0)] if mine else []) + reports
    exceptions = [f for f in failures if f.get("kind") == "exception"]
    if exceptions:
        first = exceptions[0]
        text = f"{first['who']} failed {first['where']}: {first['detail']}"
        others = [f["who"] for f in exceptions[1:]]
        if others:
            text += f"\n  (also failed: {_join(others)})"
        return text, EXIT_FAULT
    if silent:
        positions = positions or {}
        it = "it" if len(silent) == 1 else "they"
        places = {positions.get(r, state.where_iteration()) for r in silent}
        if len(places) == 1:
            where = places.pop()
            names = _join(state.who(r) for r in silent)
        else:
            where = "respectively"
            names = _join(f"{state.who(r)} {positions.get(r, state.where_iteration())}"
                          for r in silent)
        text = (f"{names} stopped answering {where}: the other ranks waited more than "
                f"{timeout:g} s and {it} did not answer a status request")
        return text, EXIT_HANG
    interrupted = [f for f in failures if f.get("kind") == "interrupted"]
    if interrupted:
        first = interrupted[0]
        if mine and mine.get("kind") == "interrupted":
            return f"{mine['detail']} {state.where()}", mine["code"]
        return f"{first['who']} was {first['detail']} {first['where']}", first["code"]
    timeouts = [f for f in failures if f.get("kind") == "timeout"]
    if timeouts:
        first = timeouts[0]
        text = (f"{first['who']} {first['detail']} {first['where']}; every rank answered a "
                f"status request, so a message it waited for was never sent")
        waits = [f"{rec['who']}: {rec['waiting']}" for r, rec in sorted(replies.items())
                 if rec.get("waiting")]
        if waits:
            text += "\n  (waiting: " + "; ".join(waits[:6]) + (" ..." if len(waits) > 6 else "") + ")"
        return text, EXIT_HANG
    return f"{failures[0]['who']} failed {failures[0]['where']}: {failures[0]['detail']}", EXIT_FAULT


def _say(text: str) -> None:
    try:
        sys.stderr.write(f"hmtl_mpi: {text}\n")
    except (OSError, ValueError):
        pass
    drain_stderr()


def end_job(exc: BaseException, state: RankState, control: Control | None, timeout: float):
    """The one way a failed job ends, on every rank (never returns)."""
    from mpi4py import MPI  # local: the in-process transport and the pure layers never load MPI

    mine = None if isinstance(exc, RemoteFailure) else classify(exc)
    if os.environ.get("HMTL_TRACEBACK") and mine and mine["kind"] == "exception":
        traceback.print_exception(exc)
    world = MPI.COMM_WORLD
    grace = min(MAX_GRACE, max(0.5, timeout))
    try:
        if control is None or control.size == 1:
            _say(f"{state.who()} failed {state.where()}: {mine['detail']}" if mine else str(exc))
            _abort(state, world, mine["code"] if mine else EXIT_FAULT)
        if control.rank == 0:
            reports = [exc.report] if isinstance(exc, RemoteFailure) else []
            kinds = {f.get("kind") for f in reports} | ({mine["kind"]} if mine else set())
            if "timeout" not in kinds:           # others may have failed at the same moment
                reports += control.collect_reports(REPORT_WINDOW)
                kinds |= {f.get("kind") for f in reports}
            silent, replies = [], {}
            if "exception" not in kinds and "timeout" in kinds:
                gone = control.failed()          # lost and recovered from (continue)
                others = [r for r in range(1, control.size) if r not in gone]
                replies, late = control.status_of(others, grace)
                reports += late
                silent = [r for r in others if r not in replies]
            text, code = compose(state, mine, reports, silent, replies, timeout,
                                 state.positions(silent))
            _say(text)
            _abort(state, world, code)
        # another rank: tell rank 0, answer its questions, let it end the job
        control.report(dict(mine, who=state.who(), where=state.where(), rank=state.rank))
        control.linger(grace + REPORT_WINDOW + 1.0 + min(0.25 * (control.rank - 1), 5.0))
        # still alive: rank 0 did not end the job (it is busy, or it is the one that hangs)
        if mine["kind"] == "timeout":
            replies, _ = control.status_of([0], 1.0)
            if 0 not in replies:
                _say(f"{state.who(0)} stopped answering: {state.who()} {mine['detail']} "
                     f"{state.where()}, and rank 0 did not answer a status request")
                _abort(state, world, EXIT_HANG)
        _say(f"{state.who()} failed {state.where()}: {mine['detail']}")
        _abort(state, world, mine["code"])
    except KeyboardInterrupt:        # a second Ctrl-C while ending: end now, quietly
        _abort(state, world, EXIT_INTERRUPTED, quiet=True)


def end_after_loss(code: int) -> None:
    """End this rank, with exit ``code``, of a job that lost a rank: without MPI_Finalize
    (never returns).

    In Open MPI 5.0.11 the lost rank's neighbour in the heartbeat ring (the failure
    detector, :mod:`hmtl_mpi.wire.ulfm`) waits in ``ompi_comm_failure_detector_finalize``
    for the lost rank to confirm it stopped, and the finalize fence of every other rank
    waits for that neighbour. Measured (16 ranks, one killed, then shrink, barrier,
    MPI_Finalize): 10.0 s in MPI_Finalize in each of the 9 runs that printed it, and 21 of 21
    such jobs took 11.7 s; once in CI a job whose
    report was written hung there until mpirun's ``--timeout`` (570 s). An open Open MPI
    issue reports the same hang (open-mpi/ompi#11404). To ULFM a rank that leaves without
    MPI_Finalize is a failure: a rank still in the job's last barrier may take it for one,
    which :func:`hmtl_mpi.job.runtime.run_job` then ignores (the barrier lets no rank out
    before every rank arrived, so the work and the report are done)."""
    try:
        sys.stdout.flush()
    except (OSError, ValueError):
        pass
    drain_stderr()
    os._exit(code)


def record_exit(rank: int, code: int) -> None:
    """Write ``code`` to ``$HMTL_STATUS_DIR/rank-RANK`` when that folder is set: under srun,
    MPI_Abort makes Slurm SIGKILL every task of the step, so that srun reports 137
    whatever the code was; ``launch/slurm.sbatch`` reads the job's own code from here."""
    folder = os.environ.get("HMTL_STATUS_DIR")
    if not folder:
        return
    try:
        with open(os.path.join(folder, f"rank-{rank}"), "w") as fh:
            fh.write(f"{code}\n")
    except OSError:
        pass


def _abort(state: RankState, world, code: int, quiet: bool = False):
    record_exit(state.rank, code)
    for fn in state.cleanup:
        try:
            fn()
        except Exception:            # noqa: BLE001 - cleaning up must not stop the abort
            pass
    if not quiet:
        drain_stderr()
    die_on_sigterm()
    world.Abort(code)
    os._exit(code)
