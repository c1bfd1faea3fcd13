"""The job: ``mpirun -n 1+H+K python -m hmtl_mpi [options]`` (:mod:`hmtl_mpi.cli`), or
``python -m hmtl_mpi --transport inprocess [options]``: set-up, then every scheme's loop.

The job is written once, for one rank, against an endpoint
(:class:`hmtl_mpi.wire.interfaces.Endpoint`): :func:`main` runs it on an MPI rank
(:class:`~hmtl_mpi.wire.transport.MpiEndpoint`), :func:`run_inprocess` runs it for
every rank of the job in one process (:class:`~hmtl_mpi.wire.inprocess.Fabric`).

Set-up (:func:`set_up`): rank 0 reads the topology, plans every scheme of
``--scheme`` and builds their codes (:mod:`hmtl_mpi.schemes`), then broadcasts G,
what it decided (lambda, the local kernel, the data's dimension: a new frozen
:class:`~hmtl_mpi.job.config.JobConfig`) and each scheme as one byte buffer; every
rank gets its data and connects the groups that mirror G. A set-up error (bad
topology, wrong number of ranks, bad data, a plan the scheme refuses) is printed
once by rank 0 and every rank exits with status 2. With ``--scheme auto`` every
scheme that plans is a candidate and :mod:`hmtl_mpi.job.auto` keeps the one
predicted fastest before the loop.

The loop (:func:`run_steps`): every iteration is delimited by barriers and each
step of the scheme (:attr:`hmtl_mpi.schemes.base.Scheme.steps`) is timed from the
ranks' own clocks (see its doc); barrier-free schemes (:func:`run_free`) call each
part's ``iterate``. After the timed part, outside every figure: bytes sent per link
class are summed over ranks, and every IV's copies are compared by SHA-256 digest
(:mod:`hmtl_mpi.job.checks`). Then the summary and the report (:mod:`hmtl_mpi.job.report`).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
import traceback
from dataclasses import dataclass

import numpy as np

from ..cli import parse_job_args, usage_error
from ..learning.datasets import load_tasks, pack_tasks, unpack_tasks
from ..learning.gd import GradientLearner
from ..learning.learners import make_learner
from ..learning.mocha import KERNELS, choose_kernel, cross_validate_lambda
from ..planning.topology import TopologyError, load_topology
from ..schemes import get
from ..schemes.base import Job
from ..vocabulary import (EXIT_BAD_INPUT, EXIT_CHECK_FAILED, EXIT_FAULT, EXIT_HANG,
                          EXIT_INTERRUPTED, EXIT_TERMINATED, LINK_CLASSES, PHASES, USER_STEPS,
                          RELAY, ROLES, WORLD, down_tag, ranks_formula, ranks_needed, role_names,
                          tasks_of_rank)
from ..wire.inprocess import Deadlock, Fabric, InProcessEndpoint
from ..wire.interconnect import describe_links, local_facts
from ..wire import ulfm
from ..wire.interfaces import ProcessFailed
from ..wire.probe import coding_speed, measure_links, measure_relays
from . import auto
from . import checkpoint as ckpt
from . import checks, plancache, segments
from .config import JobConfig
from .failures import (Control, RankState, Terminated, classify, decode_record, encode_record,
                       end_after_loss, end_job)
from .hosting import rank_link_loads, rank_part
from .predict import phase_seconds, verdict
from .recovery import Survival, loss_lines, users_lost
from .replan import replan_for_time
from .report import job_payload, progress_line, run_report, summary, write_report
from .supervisor import die_on_sigterm, launcher_rank, orphaned

SETUP_TIMEOUT = 600.0   # seconds the other ranks wait for rank 0's plans and codes
REPORT_BYTES_PER_ITERATION = 2048     # generous: a report's iteration record is ~700 bytes
NO_LINKS = "none: every rank runs in this one process (--transport inprocess)"


class SetupError(Exception):
    """A problem found before training; printed once, exit status 2."""


def learner_for(config: JobConfig, K: int, tasks=None):
    """This rank's learner; ``tasks`` the MOCHA tasks it holds (see :func:`share_tasks`),
    None to read the data set here (rank 0, once, in the set-up)."""
    if config.workload == "gd":
        return GradientLearner(config.dataset, P=config.partitions or K, seed=config.seed)
    return make_learner(config.dataset, K, config.dim, seed=config.seed, tasks=tasks,
                        data_dir=config.data_dir, har_tasks=config.har_tasks, lam=config.lam,
                        inner=config.inner,
                        kernel=None if config.local_kernel == "auto" else config.local_kernel)


def read_tasks(config: JobConfig, learner, rank: int, G) -> dict:
    """``--data local``: this rank reads the data set itself and keeps the tasks it needs
    (rank 0 already holds them in its set-up ``learner``). Returns user -> task."""
    mine = tasks_of_rank(rank, G, config.flat, config.users_per_rank)
    if learner is not None:
        return {k: learner.task(k) for k in mine}
    if not mine:
        return {}
    every = load_tasks(config.dataset, G.shape[1], seed=config.seed, data_dir=config.data_dir,
                       har_tasks=config.har_tasks)
    return {k: every[k] for k in mine}


def share_tasks(endpoint, learner, G, flat: bool, timeout: float, per_rank: int = 1) -> dict:
    """Rank 0 read the data once (its ``learner`` holds every task); every other rank gets
    only the tasks it needs (:func:`~hmtl_mpi.vocabulary.tasks_of_rank`), by one scatter,
    which may take ``timeout`` seconds (it crosses the server's link). Returns user -> task."""
    chunks = None
    if endpoint.rank == 0:
        # rank 0 keeps its learner's own: it is sent an empty share
        chunks = [pack_tasks({k: learner.task(k) for k in tasks_of_rank(r, G, flat, per_rank)}
                             if r else {})
                  for r in range(endpoint.size)]
    mine = endpoint.scatter_arrays(WORLD, chunks, 0, "this rank's data from rank 0", timeout)
    if endpoint.rank == 0:
        return {k: learner.task(k) for k in tasks_of_rank(0, G, flat)}
    return unpack_tasks(mine)


# --- set-up --------------------------------------------------------------------------------

def plan_on_server(config: JobConfig, world_size: int):
    """Rank 0: topology, checks, every scheme planned, the checkpoint to resume from read
    and checked; raises SetupError. Returns (G, schemes, learner, config with what rank 0
    decided, (path, header, states) of the checkpoint or None)."""
    try:
        G = load_topology(config.topology)
    except TopologyError as exc:
        raise SetupError(str(exc)) from None
    H, K = G.shape
    if config.report:
        check_report_path(config.report, config.iterations * len(config.schemes))
    per_rank = config.users_per_rank
    need = ranks_needed(H, K, config.flat, per_rank)
    if world_size != need:
        who = f"1 server and {H} workers" if config.flat else f"1 server, {H} relays, {K} users"
        if per_rank > 1:
            m = need - 1 - H
            who += (f" on {m} rank{'s' if m != 1 else ''} of up to {per_rank}, "
                    f"--users-per-rank {per_rank}")
        formula = ranks_formula(config.flat, per_rank)
        raise SetupError(
            f"topology {config.topology} has H = {H} relays and K = {K} users, so the job needs "
            f"{formula} = {need} ranks ({who}{', --layout flat' if config.flat else ''}); "
            f"{world_size} were started. Run: mpirun -n {need} python -m hmtl_mpi "
            f"--topology {config.topology} ...")
    if config.inject_fault and config.inject_fault[0] >= need:
        raise SetupError(f"--inject-fault: rank {config.inject_fault[0]} does not exist; the job "
                         f"has ranks 0 .. {need - 1}")
    try:
        learner = learner_for(config, K)           # the data are read here, once, on rank 0
    except (ValueError, OSError) as exc:
        raise SetupError(f"dataset {config.dataset}: {exc}") from None
    if config.reads_data:
        lam = config.lam
        if config.cv:
            lam = cross_validate_lambda([learner.task(k) for k in range(K)],
                                        seed=config.seed, inner=learner.inner)
            print(f"hmtl_mpi: lambda = {lam:g} chosen by 5-fold cross-validation", flush=True)
        kernel = choose_kernel(config.local_kernel, config.iterations,
                               max(learner.n_steps.values()), learner.dim)
        config = config.decided(lam=lam, local_kernel=kernel)
    try:
        config.straggle.check_ranks(H, world_size)
        if config.workload == "mtl":
            config.straggle.check_relays_only(H)
    except ValueError as exc:
        raise SetupError(str(exc)) from None
    schemes, skipped = [], {}
    for name in config.schemes:
        try:
            schemes.append(plancache.plan(
                get(name, config.workload), G, seed=config.seed, stragglers=config.stragglers,
                partitions=config.partitions or K, straggle=config.straggle,
                relay_stragglers=config.relay_stragglers)[0])
        except ValueError as exc:
            if not config.auto:                # --scheme auto leaves it out (job/auto.py)
                raise SetupError(f"--scheme {name}: {exc}") from None
            skipped[name] = str(exc)
    if not schemes:
        raise SetupError(f"--scheme auto: no scheme plans on topology {config.topology}: "
                         + "; ".join(f"{n}: {why}" for n, why in skipped.items()))
    if config.checkpoint:
        check_checkpoint_folder(config.checkpoint)
    resumed = None
    if config.resume:
        resumed = read_resume(config.resume, config.decided(dim=learner.dim), G, schemes,
                              world_size)
    return G, schemes, learner, config, resumed, skipped


def check_checkpoint_folder(folder: str) -> None:
    """Before any work: ``--checkpoint`` can be written (made if missing); SetupError."""
    try:
        os.makedirs(folder, exist_ok=True)
        probe = os.path.join(folder, f".probe{os.getpid()}")
        with open(probe, "w") as fh:
            fh.write("")
        os.unlink(probe)
    except OSError as exc:
        raise SetupError(f"--checkpoint {folder}: cannot write there "
                         f"({exc.strerror or exc})") from None


def read_resume(folder: str, config: JobConfig, G, schemes, ranks: int) -> tuple:
    """``--resume``: the newest checkpoint of ``folder`` if it is whole and was written by
    this same command; else SetupError naming the file and what differs."""
    try:
        path, header, states = ckpt.read_newest(folder)
    except ckpt.CheckpointError as exc:
        raise SetupError(str(exc)) from None
    wrong = ckpt.differences(header.get("fingerprint", {}),
                             ckpt.fingerprint(config, G, schemes, ranks))
    if wrong:
        raise SetupError(f"checkpoint {path} was written by another command: "
                         + "; ".join(wrong))
    return path, header, states


def check_report_path(path, iterations) -> None:
    """Before any work: the report can be written there (raises SetupError).

    Checks the path is not a directory, its folder exists and takes a new file
    (by creating and removing one), and the file system has room for the report.
    """
    where = os.path.abspath(path)
    folder = os.path.dirname(where)
    if os.path.isdir(where):
        raise SetupError(f"--report {path}: is a directory; give a file name")
    if not os.path.isdir(folder):
        raise SetupError(f"--report {path}: folder {folder} does not exist")
    probe = f"{where}.tmp{os.getpid()}"
    try:
        with open(probe, "w") as fh:
            fh.write("{}")
    except OSError as exc:
        raise SetupError(f"--report {path}: cannot write in {folder} ({exc.strerror})") from None
    finally:
        if os.path.exists(probe):
            os.unlink(probe)
    need = 64 * 1024 + 2 * iterations * REPORT_BYTES_PER_ITERATION
    try:
        stat = os.statvfs(folder)
    except OSError:
        return
    free = stat.f_bavail * stat.f_frsize
    if free < need:
        raise SetupError(f"--report {path}: only {free} bytes free in {folder}, the report "
                         f"needs up to {need}")


@dataclass(frozen=True)
class JobSetup:
    """What every rank knows after the set-up (rank 0 also its learner and the hosts)."""

    config: JobConfig
    G: np.ndarray
    schemes: list
    tasks: dict | None            # the MOCHA tasks this rank holds (None without data)
    learner: object = None        # rank 0: the set-up learner (the SVM baselines)
    link_kind: str = ""           # rank 0: what carried the messages
    rank_hosts: tuple = ()        # rank 0: the host name of every rank
    setup_seconds: float = 0.0
    resume_at: tuple | None = None  # (scheme index, next iteration) of --resume's checkpoint
    resumed: tuple | None = None  # rank 0: (path, header, per-rank states) of that checkpoint
    skipped: dict | None = None   # rank 0, --scheme auto: the schemes that did not plan, and why
    auto: dict | None = None      # rank 0, --scheme auto: the report's "auto" (job/auto.py)


def set_up(config: JobConfig, endpoint, state):
    """Plan on rank 0, tell every rank, give each its data, connect the groups.
    Returns a :class:`JobSetup`, or None after a set-up error (printed by rank 0)."""
    rank = endpoint.rank
    # rank 0 may spend a while planning (cvxpy) and building codes: the others wait longer
    setup_timeout = max(config.timeout, SETUP_TIMEOUT)
    state.step("setup")
    planned, error, setup_seconds = None, b"", 0.0
    if rank == 0:
        t0 = time.perf_counter()
        try:
            planned = plan_on_server(config, endpoint.size)
        except SetupError as exc:
            error = str(exc).encode()
        setup_seconds = time.perf_counter() - t0
    status = endpoint.bcast_bytes(WORLD, np.frombuffer(error, dtype=np.uint8), 0,
                                  "rank 0's setup (plans and codes)", setup_timeout)
    if status.size:
        if rank == 0:
            sys.stderr.write(f"hmtl_mpi: error: {error.decode()}\n")
        return None
    G = planned[0] if rank == 0 else None
    gbuf = endpoint.bcast_bytes(WORLD, np.ascontiguousarray(G).reshape(-1) if rank == 0 else None,
                                0, "topology")
    shape = np.array(G.shape if rank == 0 else (0, 0), dtype=np.int64)
    endpoint.bcast(WORLD, shape, 0, "topology shape")
    G = gbuf.reshape(int(shape[0]), int(shape[1]))
    H, K = G.shape
    state.set_roles(role_names(H, config.flat, K, config.users_per_rank))
    where = endpoint.gather(WORLD, state.locator(), 0, "where the ranks' state pages are")
    hosts = endpoint.gather(WORLD, encode_record(local_facts()), 0,
                            "what carries the messages (host, namespace, MPI transport)")
    link_kind, rank_hosts = "", ()
    if rank == 0:
        state.pages = {r: tuple(int(x) for x in where[r]) for r in range(endpoint.size)}
        facts = [decode_record(h) for h in hosts]
        link_kind = describe_links(facts) if endpoint.has_links else NO_LINKS
        rank_hosts = tuple(f.get("hostname") for f in facts)
    # rank 0 chose lambda (--cv), the local update's kernel (--local-kernel auto) and
    # knows the data's number of features
    facts = np.array([np.nan, 0.0, 0.0])
    if rank == 0:
        decided, learner = planned[3], planned[2]
        facts[:] = (decided.lam if decided.lam is not None else np.nan,
                    KERNELS.index(decided.local_kernel) if config.reads_data else 0,
                    learner.dim)
    endpoint.bcast(WORLD, facts, 0, "lambda, kernel and data size")
    config = config.decided(lam=None if np.isnan(facts[0]) else float(facts[0]),
                            local_kernel=KERNELS[int(facts[1])] if config.reads_data
                            else config.local_kernel,
                            dim=int(facts[2]))
    if config.auto:                 # only the schemes that planned are candidates
        ok = np.zeros(len(config.schemes), dtype=np.int64)
        if rank == 0:
            ok[:] = [name not in planned[5] for name in config.schemes]
        endpoint.bcast(WORLD, ok, 0, "the schemes that planned (--scheme auto)")
        config = config.decided(schemes=tuple(n for n, o in zip(config.schemes, ok) if o))
    schemes = []
    for b, name in enumerate(config.schemes):
        mine = planned[1][b] if rank == 0 else None
        buf = endpoint.bcast_bytes(WORLD, mine.to_buffer() if rank == 0 else None, 0,
                                   f"the {name} scheme's plan")
        schemes.append(mine if rank == 0 else endpoint.decode_broadcast(
            buf, lambda b, name=name: get(name, config.workload).from_buffer(G, b)))
    tasks = None
    if config.reads_data and config.data == "scatter":
        state.step("setup (each rank receives its data)")
        tasks = share_tasks(endpoint, planned[2] if rank == 0 else None, G, config.flat,
                            setup_timeout, config.users_per_rank)
    elif config.reads_data:
        state.step("setup (each rank reads its data)")
        tasks = read_tasks(config, planned[2] if rank == 0 else None, rank, G)
    at = np.array([-1, -1], dtype=np.int64)
    if rank == 0 and planned[4] is not None:
        header = planned[4][1]
        at[:] = (header["scheme_index"], header["next_iteration"])
    endpoint.bcast(WORLD, at, 0, "where the checkpoint resumes")
    endpoint.barrier(WORLD, "every rank before building the communicators")
    endpoint.connect(G, config.flat, config.users_per_rank)
    return JobSetup(config=config, G=G, schemes=schemes, tasks=tasks,
                    learner=planned[2] if rank == 0 else None, link_kind=link_kind,
                    rank_hosts=rank_hosts, setup_seconds=setup_seconds,
                    resume_at=(int(at[0]), int(at[1])) if at[0] >= 0 else None,
                    resumed=planned[4] if rank == 0 else None,
                    skipped=planned[5] if rank == 0 else None)


def predict_times(config: JobConfig, endpoint, G, schemes, dim):
    """Measure the links (every relay's own too) and the coding kernel, re-plan for them
    under ``--plan time`` (:mod:`hmtl_mpi.job.replan`: ``schemes`` is updated in place),
    and print on rank 0 what each scheme with steps should take per iteration
    (:mod:`hmtl_mpi.job.predict`). Returns, on rank 0, the
    report keys per scheme; None elsewhere, when no scheme has steps, or without links."""
    timed = [s for s in schemes if not s.barrier_free]
    if not timed or not endpoint.has_links:
        segments.settle(config, endpoint, schemes, None, dim)
        return None
    rates = measure_links(endpoint, G, config.flat, 8 * dim, config.users_per_rank)
    relays = measure_relays(endpoint, G.shape[0], 8 * dim)
    if rates is not None:
        rates.update(relays)
    replan_for_time(config, endpoint, G, schemes, rates)
    speed = coding_speed(dim) if endpoint.rank == 0 else None
    models = segments.settle(config, endpoint, schemes, rates, dim, speed)
    timed = [s for s in schemes if not s.barrier_free]
    if endpoint.rank != 0:
        return None
    runs = {}
    for s in timed:
        loads = rank_link_loads(s.link_loads(), G.shape[1], config.users_per_rank)
        runs[s.name] = {"predicted_seconds": phase_seconds(loads, 8 * dim, rates,
                                                         s.coding_work(dim), speed)}
        runs[s.name].update(s.time_fields(8 * dim))       # plan (and plans: --plan time)
        if s.name in models:                              # --segments auto
            runs[s.name]["segments_model"] = models[s.name]
    probe = {"w1_latency_s": rates["w1"][0], "w1_bytes_per_s": rates["w1"][1],
             "w2_latency_s": rates["w2"][0], "w2_bytes_per_s": rates["w2"][1],
             "coding_bytes_per_s": speed,
             "relay_latency_s": [a for a, _ in rates["relays"]],
             "relay_bytes_per_s": [b for _, b in rates["relays"]],
             "server_bytes_per_s": rates["server"]}
    for r in runs.values():
        r["probe"] = probe

    def rate(b):
        if b == float("inf"):
            return "none"
        return f"{8 * b / 1e9:.1f} Gbit/s" if b >= 1.25e8 else f"{8 * b / 1e6:.1f} Mbit/s"
    print(f"hmtl_mpi: measured links W1 {rate(rates['w1'][1])} + "
          f"{1e6 * rates['w1'][0]:.0f} us, W2 {rate(rates['w2'][1])} + "
          f"{1e6 * rates['w2'][0]:.0f} us per round; coding {speed / 1e6:.0f} MB/s; relays to "
          f"the server {', '.join(rate(b) for _, b in rates['relays'])}, the server's link "
          f"at least {rate(rates['server'])}.\n"
          f"hmtl_mpi: predicted per iteration (eq. 13 + latency; learning not included): "
          + "; ".join(verdict({n: r["predicted_seconds"] for n, r in runs.items()},
                              timed[0].name)), flush=True)
    return runs


# --- one scheme -------------------------------------------------------------------------------

class Stopped(Exception):
    """SIGTERM under --checkpoint: every rank stops after the checkpoint ``path``."""

    def __init__(self, path: str, where: str):
        super().__init__(path)
        self.path, self.where = path, where


class Saver:
    """Checkpoints of one scheme's run (:mod:`hmtl_mpi.job.checkpoint`): every
    ``--checkpoint-every`` iterations, and when SIGTERM arrived on any rank (the ranks
    agree on it after every iteration of a scheme with steps, at the checkpoints of a
    barrier-free one). Never after a run's last iteration: the run then just ends."""

    def __init__(self, config: JobConfig, setup: JobSetup, index: int, done: list,
                 survival=None):
        self.config, self.setup, self.index, self.done = config, setup, index, done
        self._fingerprint = None      # rank 0: computed once (it hashes every plan and code)
        self.survival = survival      # --on-failure continue: keeps every iteration's state

    def completed(self, me, it: int, records) -> None:
        """Iteration ``it`` completed on this rank (``--on-failure continue`` keeps its state)."""
        if self.survival is not None:
            self.survival.completed(me, it, records)

    def due(self, endpoint, it: int, agree: bool = True) -> bool:
        """Whether a checkpoint follows iteration ``it`` (decided alike on every rank)."""
        c = self.config
        if not c.checkpoint or it + 1 >= c.iterations:
            return False
        if (it + 1) % c.checkpoint_every == 0:
            return True
        return agree and self.stop_agreed(endpoint)

    @staticmethod
    def stop_agreed(endpoint) -> bool:
        """Whether SIGTERM reached any rank: a reduction to rank 0 and a broadcast."""
        flag = np.array([1 if _stop["requested"] else 0], dtype=np.int64)
        top = endpoint.reduce(WORLD, flag, "max", 0, "whether SIGTERM came")
        if endpoint.rank == 0:
            flag[:] = top
        endpoint.bcast(WORLD, flag, 0, "whether SIGTERM came")
        return bool(flag[0])

    def save(self, endpoint, state, me, it: int, records) -> None:
        """Every rank's state after iteration ``it`` into one checkpoint; then, if SIGTERM
        came, every rank stops (:class:`Stopped`)."""
        state.step("writing a checkpoint")
        mine = dict(me.state())
        mine["endpoint/sent"] = np.frombuffer(json.dumps(
            {str(k): v for k, v in endpoint.sent_by_iteration.items()}).encode(), dtype=np.uint8)
        states = endpoint.gather_bytes(ckpt.pack(mine), "this rank's state for the checkpoint")
        path = ""
        if endpoint.rank == 0:
            c, setup = self.config, self.setup
            if self._fingerprint is None:
                self._fingerprint = ckpt.fingerprint(c, setup.G, setup.schemes, endpoint.size)
            header = {"fingerprint": self._fingerprint,
                      "scheme_index": self.index, "scheme": c.schemes[self.index],
                      "next_iteration": it + 1, "ranks": endpoint.size,
                      "reports": self.done, "records": records or []}
            path = ckpt.write(c.checkpoint, header, states)
        if self.stop_agreed(endpoint):
            raise Stopped(path, state.where_iteration())


def run_scheme(scheme, setup: JobSetup, endpoint, state, index: int = 0, done=None,
               saved=None, survival=None):
    """Run the iterations of one scheme; rank 0 returns its report. ``saved``: this
    rank's state and (rank 0) the records so far, from the checkpoint being resumed.
    ``survival``: ``--on-failure continue`` (:mod:`hmtl_mpi.job.recovery`)."""
    config, G = setup.config, setup.G
    rank = endpoint.rank
    H, K = G.shape
    state.step("building the learner", scheme=scheme.name, iteration=None)
    learner = learner_for(config, K, setup.tasks)
    job = Job(G, learner, flat=config.flat)
    me = rank_part(scheme, job, endpoint, config.downlink, config.users_per_rank)
    start, records = 0, []
    if saved is not None:
        start, mine, records = saved
        endpoint.sent_by_iteration = {int(k): v for k, v in json.loads(
            bytes(mine.pop("endpoint/sent")).decode()).items()}
        me.load_state(mine)
    state.step("warm-up (JIT compilation)")
    learner.warm_up()                  # JIT compilation stays out of every timed phase
    run = run_free if scheme.barrier_free else run_steps
    saver = Saver(config, setup, index, done or [], survival)
    while True:
        try:
            iterations = run(scheme, me, endpoint, state, config, saver, start, records)
            break
        except ProcessFailed:
            if survival is None:
                raise
            back = survival.recover(index)
            if back is None:             # this rank left the job (a user with no relay)
                return None
            scheme, me, start, records = back
            setup, rank = survival.setup, endpoint.rank
            H, K = setup.G.shape
            learner = me.job.learner
            run = run_free if scheme.barrier_free else run_steps
            saver = Saver(config.decided(checkpoint=None), setup, index, done or [], survival)
    state.step("final checks (model digests, test errors)", iteration=None)
    digest, delivered = checks.model_digests(endpoint, me, K)
    accuracy = checks.gather_accuracy(endpoint, me, K) if learner.evaluates else None
    if rank != 0:
        return None
    report = run_report(scheme, config, learner, K, H, iterations,
                        {"digest": digest, "delivered": delivered, "accuracy": accuracy})
    report.update(me.results())
    if survival is not None:
        survival.annotate(report, index)
    return report


def run_steps(scheme, me, endpoint, state, config: JobConfig, saver=None, start: int = 0,
              records=None):
    """The iterations ``start``.. of a scheme with steps; bytes and IV digests checked after
    each, a checkpoint where ``saver`` says. Rank 0 returns the records (``records``: those
    of the iterations before ``start``, from a checkpoint).

    ``--sync iteration`` (default): a barrier starts and ends every iteration, and the
    steps in between run back to back, each rank going on as soon as its own part of
    a step is done (a relay encodes while another still receives). Every rank stamps
    the end of each of its steps (its clock since it left the start barrier); a
    phase's time is the latest end of its step minus the latest end of the step
    before, so the phases add up to the time the last rank finished, and a phase
    hidden behind another one costs what it delayed the last rank. Stamps are
    relative to each rank's own exit from the start barrier: clocks of different
    hosts need not agree. The iteration's time is the longest any rank spent from
    the start barrier to leaving the end barrier.

    ``--sync phase``: a barrier also between every two steps, so that each phase is
    measured alone (the paper's model, eq. 13, adds phases that do not overlap), at
    the price of one barrier per phase.

    Every rank also counts its CPU time (``time.process_time``) in each of its own steps,
    waiting included, and the end barrier; rank 0 records the sums per role
    (``cpu_seconds``, summed with the byte counters: no extra collective; MPI only, as
    in-process ranks share one process's CPU time).
    """
    rank, K = endpoint.rank, me.job.K
    learner = me.job.learner
    # the flat layout has no users: the steps that reach them do not run
    steps = [(key, step) for key, step in scheme.steps
             if not (config.flat and step in USER_STEPS)]
    by_phase = config.sync == "phase"
    iterations = list(records or [])
    late = config.straggle.relay_delay(rank) if me.role == RELAY else 0.0   # --straggle
    for it in range(start, config.iterations):
        state.step("start of the iteration", iteration=it)
        endpoint.reset_counters()
        ends = np.zeros(len(steps) + 1)          # each step's end, then the iteration's
        cpu = np.zeros((len(ROLES), len(steps) + 1), dtype=np.int64)   # microseconds
        endpoint.barrier(WORLD, "start of iteration")
        start = endpoint.clock()
        used = time.process_time()
        for n, (key, step) in enumerate(steps):
            state.step(f"phase {step}")
            if config.inject_fault and config.inject_fault[:2] == (state.rank, it) \
                    and step in ("relay_to_server", "exchange"):
                inject_fault(endpoint, config.inject_fault[2], rank, it)
            if late > 0 and step in ("relay_to_server", "exchange"):   # --straggle: a slow relay
                endpoint.delay(late, 0, down_tag(it))
            method = getattr(me, step, None)
            if method is not None:
                method(it)
            if by_phase:
                state.step(f"phase {step}", note="at the barrier after it")
                endpoint.barrier(WORLD, f"after {step}")
            ends[n] = endpoint.clock() - start
            cpu[ROLES.index(me.role), n], used = 1e6 * (time.process_time() - used), time.process_time()
        state.step("end of the iteration", note="at the barrier after its last phase")
        endpoint.barrier(WORLD, "end of iteration")
        ends[-1] = endpoint.clock() - start
        cpu[ROLES.index(me.role), -1] = 1e6 * (time.process_time() - used)
        state.step("checks (byte counts, phase times, IV digests)")
        sent = np.array([endpoint.sent[c] for c in LINK_CLASSES], dtype=np.int64)
        sums = endpoint.reduce(WORLD, np.concatenate([sent, cpu.ravel()]), "sum", 0,
                               "byte counters")
        if rank == 0:
            sums, cpu = sums[:len(sent)], sums[len(sent):].reshape(cpu.shape) / 1e6
        latest = endpoint.reduce(WORLD, ends, "max", 0, "phase ends")
        ivs_ok = checks.check_ivs(endpoint, me, K)
        if rank == 0:
            seconds = dict.fromkeys(PHASES, 0.0)
            for (key, _), took in zip(steps, np.diff(latest[:-1], prepend=0.0)):
                seconds[key] += float(took)
            seconds["total"] = float(latest[-1])
            record = {"iteration": it, "seconds": seconds,
                      "bytes": {c: int(b) for c, b in zip(LINK_CLASSES, sums)},
                      "ivs_bit_exact": ivs_ok}
            if endpoint.has_links:       # in-process ranks share one process's CPU time
                record["cpu_seconds"] = cpu_by_role(cpu, [key for key, _ in steps])
            iterations.append(record)
            if not config.quiet:
                print(progress_line(scheme.name, it, config.iterations, record, 8 * learner.dim),
                      flush=True)
        if learner.evaluates and config.eval_every and (it + 1) % config.eval_every == 0 \
                and it + 1 < config.iterations:
            state.step("test errors")
            acc = checks.gather_accuracy(endpoint, me, K)
            if rank == 0 and not config.quiet:
                print(f"[{scheme.name}] iteration {it + 1}: mean test error "
                      f"{acc['mean_test_error']:.4f}", flush=True)
        if saver is not None and saver.due(endpoint, it):
            saver.save(endpoint, state, me, it, iterations)
        if saver is not None:
            saver.completed(me, it, iterations)
    return iterations


def cpu_by_role(cpu: np.ndarray, keys: list) -> dict:
    """{role: {phase: CPU seconds summed over the role's ranks}} from the rows of
    :func:`run_steps` (steps, then ``end_barrier``); roles with no CPU left out."""
    out = {}
    for role, row in zip(ROLES, cpu):
        if row.any():
            phases = dict.fromkeys(keys, 0.0)
            for key, value in zip(keys, row[:-1]):
                phases[key] += float(value)
            phases["end_barrier"] = float(row[-1])
            phases["total"] = float(row.sum())
            out[role] = phases
    return out


def run_free(scheme, me, endpoint, state, config: JobConfig, saver=None, start: int = 0,
             records=None):
    """The iterations ``start``.. of a barrier-free scheme (stragglers must not hold anybody
    up): every rank calls its part's ``iterate(it)`` and moves on as soon as it can. Times
    come from the server's clock (the part's own records) and, for the users' local work,
    from the users'; bytes are logged per iteration on every rank and summed after the last
    one, once every late message has been drained. A checkpoint (``saver``) drains the
    late messages and takes a barrier first; SIGTERM is agreed on only there, so a
    barrier-free run stops at its next checkpoint. Rank 0 returns the records."""
    rank, n = endpoint.rank, config.iterations
    if start == 0:
        endpoint.reset_counters()
    endpoint.barrier(WORLD, "start of the run")
    me.start()
    for it in range(start, n):
        state.step("its iteration (no barriers)", iteration=it)
        endpoint.iteration = it
        if config.inject_fault and config.inject_fault[:2] == (state.rank, it):
            inject_fault(endpoint, config.inject_fault[2], rank, it)
        me.iterate(it)
        if rank == 0 and not config.quiet:
            print(f"[{scheme.name:>7}] iteration {it + 1}/{n}: {me.progress(it)}", flush=True)
        if saver is not None:
            saver.completed(me, it, None)
        if saver is not None and saver.due(endpoint, it, agree=False):
            endpoint.iteration = None
            state.step("draining late messages before a checkpoint")
            me.net.drain("late messages before a checkpoint")
            endpoint.barrier(WORLD, "every rank before the checkpoint")
            saver.save(endpoint, state, me, it, None)
    endpoint.iteration = None
    state.step("draining late messages", iteration=None)
    me.net.drain("late messages and pending sends")
    endpoint.barrier(WORLD, "end of the run (every late message drained)")
    state.step("checks (byte counts, timings)")
    ivs_ok = (checks.check_ivs(endpoint, me, me.job.K)
              if getattr(scheme, "checks_iv_history", False) else None)
    log = np.zeros((n, len(LINK_CLASSES)), dtype=np.int64)
    for it, counts in endpoint.sent_by_iteration.items():
        log[it] = [counts[c] for c in LINK_CLASSES]
    total = endpoint.reduce(WORLD, log, "sum", 0, "byte counters")
    work = np.full(n, np.nan)
    work[: len(me.compute_s)] = me.compute_s
    works = endpoint.gather(WORLD, work, 0, "the users' compute times")
    if rank != 0:
        return None
    records = []
    for it in range(n):
        seconds = dict.fromkeys(PHASES, 0.0)
        seconds.update(me.seconds[it])
        column = works[:, it]
        if (~np.isnan(column)).any():
            seconds["local_update"] = float(np.nanmedian(column))
        records.append({"iteration": it, "seconds": seconds,
                        "bytes": {c: int(b) for c, b in zip(LINK_CLASSES, total[it])}})
        if ivs_ok is not None:      # every IV's history of digests, compared after the run
            records[-1]["ivs_bit_exact"] = ivs_ok
    return records


def inject_fault(endpoint, kind, rank, it):
    """--inject-fault: fail, hang or die here, to show that the job still ends naming us."""
    if kind in ("hang", "kill"):
        endpoint.inject(kind)
    raise RuntimeError(f"fault injected on rank {rank} in iteration {it} (--inject-fault)")


# --- the job on one rank ----------------------------------------------------------------------

def run_job(config: JobConfig, endpoint, state) -> int:
    """Set-up, every scheme's iterations, the summary and the report; the exit code."""
    setup = set_up(config, endpoint, state)
    if setup is None:
        return EXIT_BAD_INPUT
    config, G, schemes = setup.config, setup.G, setup.schemes
    rank = endpoint.rank
    H, K = G.shape
    oversubscribed = endpoint.has_links and endpoint.size > (os.cpu_count() or 1)
    if rank == 0:
        who = f"{H} workers" if config.flat else f"{H} relays, {K} users"
        if config.users_per_rank > 1:
            m = endpoint.size - 1 - H
            who += f" on {m} rank{'s' if m != 1 else ''}, --users-per-rank {config.users_per_rank}"
        loads = ", ".join(f"{s.name} ({float(s.planned_loads[0]):.4g}, "
                          f"{float(s.planned_loads[1]):.4g})" for s in schemes)
        where = (f"on {os.cpu_count()} cores{' (oversubscribed)' if oversubscribed else ''}"
                 if endpoint.has_links else "in one process (--transport inprocess)")
        print(f"hmtl_mpi: {endpoint.size} ranks (1 server, {who}) {where}; topology "
              f"{config.topology}{' (flat layout, ' + str(K) + ' tasks)' if config.flat else ''}; "
              f"dataset {config.dataset}; setup {setup.setup_seconds:.2f} s; planned loads "
              f"{loads}", flush=True)
    if config.auto:                  # measure, predict, keep the fastest (job/auto.py)
        setup, predicted = auto.select(setup, endpoint, state, run_steps,
                                       lambda tasks: learner_for(config, K, tasks))
        config, schemes = setup.config, setup.schemes
    else:
        predicted = predict_times(config, endpoint, G, schemes, config.dim or 0)
    reports = []
    survival = (Survival(setup, endpoint, state, learner_for)
                if config.on_failure == "continue" else None)
    try:
        for b in range(len(schemes)):
            if survival is not None:
                setup, scheme = survival.setup, survival.setup.schemes[b]
                if survival.out:
                    return 0             # this rank left the job after a loss
            else:
                scheme = schemes[b]
            saved = resumed_state(setup, endpoint, b)
            if saved == "done":
                reports.append(setup.resumed[1]["reports"][b] if rank == 0 else None)
                continue
            state.step("start of the run", scheme=scheme.name, iteration=None)
            endpoint.barrier(WORLD, f"start of {scheme.name}")
            reports.append(run_scheme(scheme, setup, endpoint, state, b,
                                      [r for r in reports if r is not None], saved, survival))
    except Stopped as stop:
        if rank == 0:
            sys.stderr.write(f"hmtl_mpi: terminated by SIGTERM {stop.where}; checkpoint "
                             f"{stop.path} written: resume with --resume {config.checkpoint}\n")
        return EXIT_TERMINATED
    if survival is not None:
        if survival.out:
            return 0
        setup = survival.setup
    state.step("summary and report", scheme=None, iteration=None)
    losses = survival.report_losses() if survival is not None else []
    if rank == 0:
        for r in reports:
            if survival is not None:
                r["losses"] = losses
        finish(config, setup, reports, predicted, oversubscribed, endpoint, state)
    state.step("end of the job")
    try:
        endpoint.barrier(WORLD, "end of job (rank 0 computing baselines, writing the report)",
                         max(config.timeout, SETUP_TIMEOUT))
    except ProcessFailed:
        if not endpoint.survived_loss:
            raise
        # after a loss the ranks end without MPI_Finalize (end_after_loss): one that left
        # the barrier first looks failed to one still in it, and nobody leaves it before
        # every rank arrived (rank 0 after writing the report): the job's work is done
    if rank == 0 and len({r["model_digest"] for r in reports}) > 1 and not users_lost(losses):
        sys.stderr.write(f"hmtl_mpi: the runs of {', '.join(r['scheme'] for r in reports)} "
                         f"ended with different models (lossless check failed)\n")
        return EXIT_CHECK_FAILED
    return 0


def resumed_state(setup: JobSetup, endpoint, b: int):
    """With ``--resume``: "done" for a scheme the checkpoint had finished; for the scheme it
    stopped in, (next iteration, this rank's state, rank 0's records so far), each rank's
    state scattered from rank 0; None otherwise."""
    if setup.resume_at is None or b > setup.resume_at[0]:
        return None
    if b < setup.resume_at[0]:
        return "done"
    chunks = None
    if endpoint.rank == 0:
        chunks = [np.asarray(s, dtype=np.uint8) for s in setup.resumed[2]]
    mine = endpoint.scatter_arrays(WORLD, chunks, 0, "this rank's state from the checkpoint",
                                   dtype=np.uint8)
    records = setup.resumed[1]["records"] if endpoint.rank == 0 else []
    return setup.resume_at[1], ckpt.unpack(mine), records


def finish(config, setup, reports, predicted, oversubscribed, endpoint, state) -> None:
    """Rank 0: baselines, the summary, the report."""
    for r in reports:
        r["transport"] = endpoint.kind
        if predicted:
            r.update(predicted.get(r["scheme"], {}))
    if "accuracy" in reports[0]:
        state.step("summary and report (SVM baselines)")
        baselines = setup.learner.baselines()
        for r in reports:
            r["accuracy"].update(baselines)
            r["accuracy"]["lambda"] = config.lam if config.lam is not None else "default"
    if setup.auto is not None:
        for r in reports:
            r["auto"] = setup.auto
    print(summary(reports, oversubscribed, setup.link_kind), flush=True)
    if reports[0].get("losses"):
        print("\n".join(["", "Ranks lost and recovered from (--on-failure continue):"]
                         + loss_lines(reports[0]["losses"])), flush=True)
    if config.report:
        state.step("writing the report")
        H, K = setup.G.shape
        payload = job_payload(reports, config.scheme_arg, K, H)
        payload["ranks"] = endpoint.size
        payload["users_per_rank"] = config.users_per_rank
        payload["cores"] = os.cpu_count()
        payload["topology"] = str(config.topology)
        payload["transport"] = endpoint.kind
        payload["links"] = setup.link_kind
        payload["rank_hosts"] = list(setup.rank_hosts)
        write_report(config.report, payload)
        print(f"report written to {config.report}", flush=True)


# --- entry points -----------------------------------------------------------------------------

# SIGTERM under --checkpoint: a plain flag, set by the signal handler (which can come twice,
# from the launcher and from the watcher: a lock taken in a handler could deadlock there)
_stop = {"requested": False}
_checkpointing = False


def _terminate(signum, frame):
    """SIGTERM: Slurm's preemption and time limit, ``kill``, or this rank's watcher gone.
    With ``--checkpoint`` the job stops at its next checkpoint, which it writes at once."""
    if orphaned():
        try:        # the launcher may have closed the pipe: the rank must end all the same
            sys.stderr.write(f"hmtl_mpi: rank {_launcher_rank()}'s watcher process was killed; "
                             f"the rank ends too\n")
            sys.stderr.flush()
        finally:
            os._exit(EXIT_TERMINATED)
    if _checkpointing:
        _stop["requested"] = True
        return
    raise Terminated()


def _launcher_rank() -> int:

    value = launcher_rank()
    return int(value) if value.isdigit() else 0


def main(argv=None, page=None) -> int:
    """The job on one rank. ``page``: the supervisor's shared page (:mod:`hmtl_mpi.job.supervisor`).
    With ``--transport inprocess``: the whole job in this process (:func:`run_inprocess`)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")   # one BLAS thread per rank
    early, _ = parse_job_args(argv, -1, None)            # silent: which transport?
    if early is not None and early.transport == "inprocess":
        return run_inprocess(early)
    if early is not None and early.on_failure == "continue":
        ulfm.prepare()                                   # before MPI_Init
    from mpi4py import MPI   # local: the in-process transport never loads MPI

    from ..wire.transport import MpiEndpoint, poll_max_problem  # local: it loads MPI, as above

    world = MPI.COMM_WORLD
    rank = world.Get_rank()
    state = RankState(rank, page)
    signal.signal(signal.SIGTERM, _terminate)
    control = None
    timeout = 60.0
    try:
        control = Control(world, state)
        config, exit_code = parse_job_args(argv, rank, world.Get_size())
        if config is None:
            return exit_code
        if problem := poll_max_problem():
            return usage_error(rank, problem)
        survive = config.on_failure == "continue"
        if survive and (problem := ulfm.problem(MPI)):
            return usage_error(rank, problem)
        control.survive = survive
        global _checkpointing
        _checkpointing = bool(config.checkpoint)
        timeout = config.timeout
        endpoint = MpiEndpoint(world, config.timeout, control, state, survive)
        code = run_job(config, endpoint, state)
        if endpoint.survived_loss:
            end_after_loss(code)
        die_on_sigterm()                                 # MPI_Finalize follows (at exit)
        return code
    except BaseException as exc:   # noqa: BLE001 - any failure on any rank ends the whole job
        end_job(exc, state, control, timeout)
        return 1


def run_inprocess(config: JobConfig) -> int:
    """``--transport inprocess``: every rank of the job as a greenlet of this process
    (:class:`hmtl_mpi.wire.inprocess.Fabric`), each running :func:`run_job`. A failure is
    printed once, naming its rank, with the exit codes of ``--help``."""

    if _launcher_rank() or os.environ.get("PMI_SIZE", "1") not in ("", "1"):
        sys.stderr.write("hmtl_mpi: error: --transport inprocess runs the whole job in one "
                         "process: start it without mpirun/srun (python -m hmtl_mpi ...)\n")
        return EXIT_BAD_INPUT
    try:
        G = load_topology(config.topology)
    except TopologyError as exc:
        sys.stderr.write(f"hmtl_mpi: error: {exc}\n")
        return EXIT_BAD_INPUT
    size = ranks_needed(*G.shape, config.flat, config.users_per_rank)
    fabric = Fabric(size, watchdog=max(config.timeout, SETUP_TIMEOUT),
                    survive=config.on_failure == "continue")
    global _checkpointing
    _checkpointing = bool(config.checkpoint)
    signal.signal(signal.SIGTERM, _terminate)
    states = [RankState(r) for r in range(size)]

    def rank_job(r):
        return run_job(config, InProcessEndpoint(fabric, r, config.timeout, states[r]), states[r])
    try:
        codes = fabric.run(rank_job)
    except KeyboardInterrupt as exc:
        terminated = isinstance(exc, Terminated)
        sys.stderr.write(f"hmtl_mpi: {'terminated by SIGTERM' if terminated else 'interrupted (Ctrl-C)'}"
                         f" in one process (--transport inprocess)\n")
        _cleanup(states)
        return EXIT_TERMINATED if terminated else EXIT_INTERRUPTED
    except BaseException as exc:   # noqa: BLE001 - named with its rank, once
        r = getattr(exc, "rank", 0)
        state = states[r]
        if isinstance(exc, Deadlock):
            text, code = deadlock_message(exc.waiting, states), EXIT_HANG
        elif isinstance(exc, TimeoutError):
            text, code = f"{state.who()} stopped answering {state.where()}: {exc}", EXIT_HANG
        else:
            mine = classify(exc)
            if os.environ.get("HMTL_TRACEBACK"):
                traceback.print_exception(exc)
            text, code = f"{state.who()} failed {state.where()}: {mine['detail']}", mine["code"]
        sys.stderr.write(f"hmtl_mpi: {text}\n")
        _cleanup(states)
        return code if code else EXIT_FAULT
    return codes[0] if codes[0] is not None else EXIT_FAULT


def deadlock_message(waiting: dict, states) -> str:
    """Who stopped the job when no rank can go on: a rank that waits for nothing (it
    hangs) before one that waits for a message, before those waiting in a collective."""
    def rank_of(item):
        q, what = item
        return (0 if what.startswith("nothing") else 2 if "(collective on" in what else 1, q)
    ordered = sorted(waiting.items(), key=rank_of)
    first = rank_of(ordered[0])[0]
    culprits = [(q, what) for q, what in ordered if rank_of((q, what))[0] == first]
    named = "; ".join(f"{states[q].who()} stopped answering {states[q].where()} (it waits for "
                      f"{what})" for q, what in culprits[:3])
    others = len(waiting) - len(culprits)
    return named + (f"; {len(culprits) - 3} more like it" if len(culprits) > 3 else "") + (
        f"; {others} other rank{'s' if others != 1 else ''} wait for it" if others else "")


def _cleanup(states) -> None:
    for state in states:
        for fn in state.cleanup:
            try:
                fn()
            except Exception:        # noqa: BLE001 - cleaning up must not hide the failure
                pass
