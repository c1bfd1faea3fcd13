"""``--on-failure continue``: the job goes on without a relay or user that died.

What happens when a relay or user rank is lost in the middle of a scheme's iterations
(issue 20, part 3):

1. Its peers' waits fail (:class:`~hmtl_mpi.wire.interfaces.ProcessFailed`, the wire's
   failure detector) and every survivor leaves the iteration it was in.
2. The survivors agree on who is gone (:meth:`Endpoint.shrink
   <hmtl_mpi.wire.interfaces.Endpoint.shrink>`: the failed ranks' communicator is
   revoked and shrunk to the survivors).
3. Every survivor computes the same reduced topology (:func:`reduce_topology`): the lost
   relay's row and the lost user's column leave G; a user left with no relay leaves too
   (it is named, and its rank stops). The ranks of the reduced job are numbered as the
   vocabulary wants them (server 0, relays 1..H', users H'+1..), each mapped to the
   process that plays it (:meth:`Endpoint.remap <hmtl_mpi.wire.interfaces.Endpoint.remap>`).
4. Rank 0 re-plans every scheme on the reduced G and builds their codes; the plans reach
   the other ranks as one buffer each, as in the set-up.
5. The survivors roll back to the last iteration all of them completed: after every
   completed iteration each rank keeps its part's state in memory (:class:`Snapshots`,
   via :meth:`Part.state <hmtl_mpi.schemes.base.Part.state>`); the state of that
   iteration is renamed to the reduced job's user numbers (:func:`remap_state`) and put
   back into new parts, and the iterations go on from the next one.

Under ``--workload gd`` step 4 keeps the first code: a lost worker or edge keeps its
place in it as a straggler for good (:meth:`GradientScheme.after_loss
<hmtl_mpi.schemes.gradient.GradientScheme.after_loss>`), so the gradient sums stay those
of a run that lost nothing; a loss beyond the code's tolerance ends the job naming it.

The lost rank's losses entry (``rank``, ``role``, ``iteration``, ``cause``, ``detected_s``,
``recovered_s``) goes into the report. ``cause`` is ``died`` (killed, an exception) or
``cut off``: under MPI a rank whose link is cut for longer than ``--timeout`` leaves the job
on its own (:meth:`Control.overdue <hmtl_mpi.job.failures.Control.overdue>`), and its entry
also gives ``unanswered_s``, how long rank 0 had waited on it until it was gone. Losing
rank 0 ends the job, as does a loss that leaves no relay or no user, or one during a
recovery.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

import numpy as np

from ..schemes import get
from ..schemes.base import Job
from ..vocabulary import RELAY, SERVER, USER, WORLD, ranks_needed, role_names, role_of
from ..wire.interfaces import ProcessFailed
from .hosting import rank_part

REPLAN_TIMEOUT = 600.0  # s the survivors wait for rank 0's new plans (as the set-up waits for
                        # its first ones: re-planning took 5-7 s under a load of 25, more
                        # than a short --timeout)
KEEP = 3       # snapshots kept per rank: survivors are at most one iteration apart
KEEP_FREE = 64  # barrier-free schemes (--workload gd): the server does not wait for a late
                # worker, which may lag it by several iterations


class Unrecoverable(ProcessFailed):
    """A loss the job cannot go on after (rank 0, every relay, every user): it ends the
    job like any failure (a ProcessFailed, so that the in-process fabric does not take it
    for one more rank's death)."""

    def __init__(self, text: str):
        RuntimeError.__init__(self, text)
        self.what = text


@dataclass(frozen=True)
class Reduction:
    """G without the lost ranks. ``relays``/``users``: the old indices kept, in order;
    ``dropped``: users removed because no relay of theirs is left; ``ranks``: new rank ->
    old rank (both in the job's own numbering)."""

    G: np.ndarray
    relays: tuple
    users: tuple
    dropped: tuple
    ranks: tuple

    def new_user(self, k: int) -> int | None:
        """The reduced job's number of old user ``k`` (None: it left)."""
        return self.users.index(k) if k in self.users else None


def reduce_topology(G: np.ndarray, lost_ranks) -> Reduction:
    """Remove the lost ranks (old numbering) from G; raise :class:`Unrecoverable` when the
    server is lost or nothing is left to train."""
    G = np.asarray(G)
    H, K = G.shape
    lost_relays, lost_users = set(), set()
    for rank in lost_ranks:
        role, index = role_of(int(rank), H)
        if role == SERVER:
            raise Unrecoverable("the server (rank 0) was lost; the job cannot go on without it")
        (lost_relays if role == RELAY else lost_users).add(index)
    relays = [i for i in range(H) if i not in lost_relays]
    if not relays:
        raise Unrecoverable("every relay was lost")
    users = [k for k in range(K) if k not in lost_users]
    dropped = tuple(k for k in users if not G[relays, k].any())
    users = [k for k in users if k not in dropped]
    if not users:
        raise Unrecoverable("no user is left with a relay")
    reduced = np.ascontiguousarray(G[np.ix_(relays, users)])
    Hn = len(relays)
    ranks = [0] + [1 + i for i in relays] + [H + 1 + k for k in users]
    assert len(ranks) == ranks_needed(Hn, len(users))
    return Reduction(reduced, tuple(relays), tuple(users), dropped, tuple(ranks))


def remap_state(state: dict, users: tuple, K: int | None = None) -> dict:
    """A part's state (:meth:`Part.state <hmtl_mpi.schemes.base.Part.state>`) in the
    reduced job's user numbers: per-user entries (``.../K`` keys) renamed or dropped, the
    learner's K-sized arrays (MOCHA's W: d x K, Sigma: K x K; the synthetic learner's W:
    K x dim) cut to the users kept. ``K``: the number of users before the loss."""
    keep = list(users)
    new = {old: n for n, old in enumerate(users)}
    mocha = "learner/Sigma" in state
    if mocha:
        K = np.asarray(state["learner/Sigma"]).shape[0]
    out = {}
    for key, value in state.items():
        head, _, tail = key.rpartition("/")
        if head and tail.isdigit() and head.split("/")[-1] in ("alpha", "rng", "last", "model"):
            if int(tail) in new:
                out[f"{head}/{new[int(tail)]}"] = value
            continue
        if key == "learner/W" and mocha and np.ndim(value) == 2 and np.shape(value)[1] == K:
            value = np.ascontiguousarray(np.asarray(value)[:, keep])
        elif key == "learner/W" and not mocha and K is not None and np.ndim(value) == 2 \
                and np.shape(value)[0] == K:
            value = np.ascontiguousarray(np.asarray(value)[keep])
        elif key == "learner/Sigma" and K is not None:
            value = np.ascontiguousarray(np.asarray(value)[np.ix_(keep, keep)])
        out[key] = value
    return out


class Snapshots:
    """One rank's part state after each of its last completed iterations (in memory)."""

    def __init__(self, keep: int = KEEP):
        self.keep_n = keep
        self.states = {}                 # iteration -> state

    def keep(self, it: int, state: dict) -> None:
        self.states[it] = {k: np.array(v, copy=True) for k, v in state.items()}
        for old in sorted(self.states)[:-self.keep_n]:
            del self.states[old]

    def last(self) -> int:
        """The last iteration completed here (-1: none)."""
        return max(self.states, default=-1)

    def clear(self) -> None:
        self.states = {}


class Survival:
    """The job's side of ``--on-failure continue``, one per rank (see the module doc).

    It holds what changes with a loss: the set-up (G, the schemes, this rank's tasks),
    and rank 0's list of losses for the report."""

    def __init__(self, setup, endpoint, state, learner_for):
        self.setup = setup
        self.endpoint = endpoint
        self.state = state
        self.learner_for = learner_for   # the runtime's: a rank's learner from its tasks
        self.snapshots = Snapshots(KEEP_FREE if any(s.barrier_free for s in setup.schemes)
                                   else KEEP)
        self.losses = []                 # rank 0: one dict per lost rank
        self.pending = []                # losses whose recovery is not yet measured
        self.original_rank = {}          # new rank -> rank in the job's first numbering
        self.out = False                 # this rank left the job (a user with no relay)
        self.records = []                # rank 0: the iterations' records so far
        self.resumed_at = {}             # scheme index -> first iteration after its last loss
        self.first_names = role_names(setup.G.shape[0], setup.config.flat)
        # --workload gd: the data set keeps its P partitions after a loss (the default P is
        # the first K), so the gradient sum, and every model after it, stay those of a run
        # that lost nothing
        self.config = replace(setup.config, partitions=setup.config.partitions
                              or int(setup.G.shape[1]))

    # --- during the iterations -----------------------------------------------------------
    def completed(self, me, it: int, records) -> None:
        """Iteration ``it`` completed on this rank: keep its state; time a recovery."""
        self.snapshots.keep(it, me.state())
        if self.endpoint.rank == 0:
            self.records = list(records or [])
        if self.pending and self.endpoint.rank == 0:
            now = self.endpoint.clock()
            for loss in self.pending:
                loss["recovered_s"] = float(now - loss.pop("_detected_at"))
            self.pending = []

    # --- after a loss --------------------------------------------------------------------
    def recover(self, scheme_index: int):
        """Agree on the loss, reduce G, re-plan, roll back. Returns (scheme, part, next
        iteration, rank 0's records up to it), or None on a rank that left the job."""
        ep, config = self.endpoint, self.config
        G = self.setup.G
        H, K = G.shape
        detected = ep.clock()
        wall = time.perf_counter()
        self.state.step("recovering from a lost rank")
        lost, failed_at = ep.shrink()
        reduction = reduce_topology(G, lost)
        before = dict(self.original_rank)            # rank now -> rank at the start

        def was(r):
            return int(before.get(r, r))
        first = [was(r) for r in reduction.ranks]
        iteration = self.snapshots.last() + 1          # the one rank 0 was in
        mine = reduction.ranks.index(ep.rank) if ep.rank in reduction.ranks else None
        new = []
        if ep.rank == 0:
            for r in lost:
                role, _ = role_of(r, H)
                loss = {"rank": was(r), "role": role, "name": self.first_names(was(r)),
                        "iteration": iteration,
                        "cause": "cut off" if r in ep.cut_off else "died",
                        "detected_s": float(max(0.0, detected - failed_at.get(r, detected))),
                        "_detected_at": detected, "recovery_wall_s": 0.0}
                if r in ep.cut_off:
                    loss["unanswered_s"] = float(ep.cut_off[r])
                self.losses.append(loss)
                self.pending.append(loss)
                new.append(loss)
            for k in reduction.dropped:
                gone = was(H + 1 + k)
                self.losses.append({"rank": gone, "role": USER, "name": self.first_names(gone),
                                    "iteration": iteration,
                                    "detected_s": 0.0, "recovered_s": 0.0,
                                    "removed": "no relay of its own is left"})
        ep.remap(reduction.ranks, mine)
        if mine is None:
            self.out = True
            return None
        self.original_rank = {n: first[n] for n in range(len(first))}
        Hn, Kn = reduction.G.shape
        # the last iteration every survivor completed
        back = np.array([-self.snapshots.last()], dtype=np.int64)
        top = ep.reduce(WORLD, back, "max", 0, "the last iteration every survivor completed")
        if ep.rank == 0:
            back[:] = top
        ep.bcast(WORLD, back, 0, "the iteration to roll back to")
        it0 = int(-back[0])
        for later in [k for k in ep.sent_by_iteration if k is not None and k > it0]:
            del ep.sent_by_iteration[later]      # those iterations run again: counted once
        # rank 0 re-plans every scheme on the reduced G; the others get the buffers
        schemes = []
        for b, name in enumerate(config.schemes):
            plan = None
            if ep.rank == 0:
                try:
                    plan = self.setup.schemes[b].after_loss(
                        reduction.G, reduction.relays, reduction.users, seed=config.seed,
                        stragglers=config.stragglers, partitions=config.partitions or Kn,
                        straggle=config.straggle)
                except ValueError as e:
                    raise Unrecoverable(f"after losing rank(s) "
                                        f"{', '.join(str(was(r)) for r in lost)}: {e}") from None
            buf = ep.bcast_bytes(WORLD, plan.to_buffer() if ep.rank == 0 else None, 0,
                                 f"the {name} scheme's plan for the reduced topology",
                                 max(ep.timeout, REPLAN_TIMEOUT))
            schemes.append(plan if ep.rank == 0 else
                           get(name, config.workload).from_buffer(reduction.G, buf))
        tasks = self.setup.tasks
        if tasks is not None:
            tasks = {reduction.new_user(k): t for k, t in tasks.items()
                     if reduction.new_user(k) is not None}
        self.setup = replace(self.setup, G=reduction.G, schemes=schemes, tasks=tasks)
        ep.connect(reduction.G, config.flat)
        scheme = schemes[scheme_index]
        learner = self.learner_for(config, Kn, tasks)
        job = Job(reduction.G, learner, flat=config.flat)
        me = rank_part(scheme, job, ep, config.downlink, 1)
        if it0 >= 0 and it0 not in self.snapshots.states:
            raise Unrecoverable(f"rank {ep.rank} no longer holds its state of iteration {it0}, "
                                f"the last one every survivor completed (it keeps the last "
                                f"{self.snapshots.keep_n})")
        if it0 >= 0:
            me.load_state(remap_state(self.snapshots.states[it0], reduction.users, K))
        self.snapshots.clear()
        if it0 >= 0:
            self.snapshots.keep(it0, me.state())
        learner.warm_up()
        ep.barrier(WORLD, "every survivor ready after the recovery")
        if ep.rank == 0:
            for loss in new:
                loss["rolled_back_to"] = it0
                loss["recovery_wall_s"] = float(time.perf_counter() - wall)
                loss["planned_loads_after"] = {"uplink": float(scheme.planned_loads[0]),
                                               "downlink": float(scheme.planned_loads[1])}
                loss["topology_after"] = {"H": Hn, "K": Kn}
                print(f"hmtl_mpi: {loss['name']} (rank {loss['rank']}) lost in iteration "
                      f"{loss['iteration']}; going on with H = {Hn} relays, K = {Kn} "
                      f"users from iteration {it0 + 1}, planned loads "
                      f"({float(scheme.planned_loads[0]):.4g}, "
                      f"{float(scheme.planned_loads[1]):.4g})", flush=True)
            for k in reduction.dropped:
                gone = was(H + 1 + k)
                print(f"hmtl_mpi: {self.first_names(gone)} (rank {gone}) removed: no relay of "
                      f"its own is left", flush=True)
        self.resumed_at[scheme_index] = it0 + 1
        records = [r for r in self.records if r["iteration"] <= it0] if ep.rank == 0 else []
        return scheme, me, it0 + 1, records

    def annotate(self, report: dict, scheme_index: int) -> None:
        """Rank 0, a run that lost a rank: its ``measured_loads`` are those of the iterations
        after the last loss (the ones its ``planned_loads``, the reduced G's, describe); the
        whole run's go to ``measured_loads_whole_run``."""
        first = self.resumed_at.get(scheme_index)
        if first is None:
            return
        after = [r for r in report["iterations"] if r["iteration"] >= first]
        if not after:
            return
        iv = report["iv_bytes"]
        report["measured_loads_whole_run"] = report["measured_loads"]
        report["measured_loads"] = {
            "uplink": float(np.mean([r["bytes"]["relay_to_server"] + r["bytes"]["user_to_server"]
                                     for r in after])) / iv,
            "downlink": float(np.mean([r["bytes"]["server_to_relay"] for r in after])) / iv}
        report["measured_from_iteration"] = first

    def report_losses(self) -> list:
        """Rank 0: the report's ``losses`` (internal keys left out)."""
        return [{k: v for k, v in loss.items() if not k.startswith("_")} for loss in self.losses]


def users_lost(losses) -> bool:
    """Whether a user left the job: then the runs after it learn K - 1 tasks and their
    models differ from the others'. A lost relay whose users all keep one changes nothing
    the learning sees (the exchange is lossless): the models stay those of a run that
    lost nothing, and the schemes' final models are still compared."""
    return any(loss["role"] == USER for loss in losses)


def loss_lines(losses) -> list:
    """The summary's lines, one per lost rank."""
    lines = []
    for loss in losses:
        if "removed" in loss:
            lines.append(f"  lost: {loss['name']} (rank {loss['rank']}) removed with the loss "
                         f"above: {loss['removed']}")
            continue
        rec = loss.get("recovered_s")
        how = (f" (its link cut: no answer for {loss['unanswered_s']:.1f} s)"
               if loss.get("cause") == "cut off" else "")
        after = (f"training again after {rec:.3f} s" if rec is not None
                 else "no iteration completed after it")
        lines.append(f"  lost: {loss['name']} (rank {loss['rank']}) in iteration "
                     f"{loss['iteration']}{how}: detected after {loss['detected_s']:.3f} s, "
                     + after)
    return lines
