"""The MPI job: ``mpirun -n 1+H+K python -m hmtl_mpi [options]`` (:mod:`hmtl_mpi.cli`).

Setup: rank 0 reads the topology, plans every scheme of ``--scheme`` and builds
their codes (:mod:`hmtl_mpi.schemes`), then broadcasts G and each scheme as one
byte buffer; all ranks build the communicators that mirror G
(:mod:`hmtl_mpi.roles`) and, per scheme, the same learner. A setup error (bad
topology, wrong number of ranks, bad data, a plan the scheme refuses) is printed
once by rank 0 and every rank exits with status 2.

Per iteration, every step of the scheme (:attr:`hmtl_mpi.schemes.base.Scheme.steps`)
is delimited by a barrier on all ranks before and after it, and its time is the
server's ``MPI.Wtime`` between the two barrier exits, so each phase's figure is
the time until its slowest rank finished. ``total`` is the whole iteration,
barriers included. After the timed part, outside every figure: bytes sent per
link class are summed over ranks, and every IV's copies are compared by SHA-256
digest (:mod:`hmtl_mpi.checks`). Every failure ends the job through
:func:`hmtl_mpi.failures.end_job`.
"""

from __future__ import annotations

import os
import signal
import sys
import time

import numpy as np

from .cli import parse_job_args
from .failures import EXIT_BAD_INPUT, EXIT_CHECK_FAILED

SETUP_TIMEOUT = 600.0   # seconds the other ranks wait for rank 0's plans and codes
REPORT_BYTES_PER_ITERATION = 2048     # generous: a report's iteration record is ~700 bytes


class SetupError(Exception):
    """A problem found before training; printed once, exit status 2."""


def learner_for(args, K, tasks=None):
    """This rank's learner; ``tasks`` the MOCHA tasks it holds (see :func:`share_tasks`),
    None to read the data set here (rank 0, once, in the setup)."""
    if args.workload == "gd":
        from .gd import GradientLearner
        return GradientLearner(args.dataset, P=args.partitions or K, seed=args.seed)
    from .learners import make_learner
    return make_learner(args.dataset, K, args.dim, seed=args.seed, tasks=tasks,
                        data_dir=args.data_dir, har_tasks=args.har_tasks, lam=args.lam,
                        inner=args.inner,
                        kernel=None if args.local_kernel == "auto" else args.local_kernel)


def reads_data(args) -> bool:
    """Whether the job's learner has data that rank 0 reads and sends (MOCHA's tasks)."""
    return args.workload == "mtl" and args.dataset != "synthetic"


def tasks_of_rank(rank: int, G: np.ndarray, flat: bool) -> list:
    """The users whose data a rank needs: a user its own, a worker of the flat layout
    the tasks of its row of G, the server all of them (the SVM baselines), a relay none."""
    from .schemes.base import role_of

    H, K = G.shape
    role, index = role_of(rank, H)
    if role == "server":
        return list(range(K))
    if role == "user":
        return [index]
    return [int(k) for k in np.flatnonzero(G[index])] if flat else []


def read_tasks(args, learner, rank, G, flat) -> dict:
    """``--data local``: this rank reads the data set itself and keeps the tasks it needs
    (rank 0 already holds them in its setup ``learner``). Returns user -> task."""
    mine = tasks_of_rank(rank, G, flat)
    if learner is not None:
        return {k: learner.task(k) for k in mine}
    if not mine:
        return {}
    from .datasets import load_tasks

    every = load_tasks(args.dataset, G.shape[1], seed=args.seed, data_dir=args.data_dir,
                       har_tasks=args.har_tasks)
    return {k: every[k] for k in mine}


def share_tasks(world, links, learner, G, flat, timeout) -> dict:
    """Rank 0 read the data once (its ``learner`` holds every task); every other rank gets
    only the tasks it needs (:func:`tasks_of_rank`), by one scatter, which may take
    ``timeout`` seconds (it crosses the server's link). Returns user -> task."""
    from mpi4py import MPI

    from .datasets import pack_tasks, unpack_tasks

    rank, size = world.Get_rank(), world.Get_size()
    if rank == 0:
        # rank 0 keeps its learner's own: it is sent an empty share
        bufs = [pack_tasks({k: learner.task(k) for k in tasks_of_rank(r, G, flat)} if r else {})
                for r in range(size)]
        counts = np.array([b.size for b in bufs], dtype=np.int64)
        send = [np.concatenate(bufs), [int(c) for c in counts], None, MPI.DOUBLE]
    else:
        counts, send = None, None
    count = np.zeros(1, dtype=np.int64)
    links.wait(world.Iscatter(counts, count, root=0), "the size of this rank's data", timeout)
    mine = np.empty(int(count[0]))
    links.wait(world.Iscatterv(send, mine, root=0), "this rank's data from rank 0", timeout)
    if rank == 0:
        return {k: learner.task(k) for k in tasks_of_rank(0, G, flat)}
    return unpack_tasks(mine)


def ranks_needed(H: int, K: int, flat: bool) -> int:
    return 1 + H + (0 if flat else K)


# --- setup on rank 0 -------------------------------------------------------------------

def setup_on_server(args, world_size):
    """Rank 0: topology, checks, and every scheme planned; raises SetupError."""
    from .schemes import get
    from .topology import TopologyError, load_topology

    try:
        G = load_topology(args.topology)
    except TopologyError as exc:
        raise SetupError(str(exc)) from None
    H, K = G.shape
    if args.report:
        check_report_path(args.report, args.iterations * len(args.scheme))
    flat = args.layout == "flat"
    need = ranks_needed(H, K, flat)
    if world_size != need:
        who = f"1 server and {H} workers" if flat else f"1 server, {H} relays, {K} users"
        formula = "1 + H" if flat else "1 + H + K"
        raise SetupError(
            f"topology {args.topology} has H = {H} relays and K = {K} users, so the job needs "
            f"{formula} = {need} ranks ({who}{', --layout flat' if flat else ''}); "
            f"{world_size} were started. Run: mpirun -n {need} python -m hmtl_mpi "
            f"--topology {args.topology} ...")
    try:
        learner = learner_for(args, K)           # the data are read here, once, on rank 0
    except (ValueError, OSError) as exc:
        raise SetupError(f"dataset {args.dataset}: {exc}") from None
    if reads_data(args):
        from .mocha import choose_kernel, cross_validate_lambda
        if args.cv:
            args.lam = cross_validate_lambda([learner.task(k) for k in range(K)],
                                             seed=args.seed, inner=learner.inner)
            print(f"hmtl_mpi: lambda = {args.lam:g} chosen by 5-fold cross-validation",
                  flush=True)
        args.local_kernel = choose_kernel(args.local_kernel, args.iterations,
                                          max(learner.n_steps.values()), learner.dim)
    try:
        args.straggle.check_ranks(H, world_size)
    except ValueError as exc:
        raise SetupError(str(exc)) from None
    schemes = []
    for name in args.scheme:
        try:
            schemes.append(get(name, args.workload).plan(
                G, seed=args.seed, stragglers=args.stragglers, partitions=args.partitions or K,
                straggle=args.straggle))
        except ValueError as exc:
            raise SetupError(f"--scheme {name}: {exc}") from None
    return G, schemes, learner


def predict_times(args, world, links, comms, G, flat, schemes, dim):
    """Measure the links and the coding kernel, and print on rank 0 what each scheme with
    steps should take per iteration (:mod:`hmtl_mpi.predict`). Returns, on rank 0, the
    report keys per scheme; None elsewhere or when no scheme has steps."""
    from .predict import phase_seconds, verdict
    from .probe import coding_speed, measure_links

    timed = [s for s in schemes if not s.barrier_free]
    if not timed:
        return None
    rates = measure_links(world, links, comms, G, flat, 8 * dim)
    if world.Get_rank() != 0:
        return None
    speed = coding_speed(dim)
    runs = {}
    for s in timed:
        runs[s.name] = {"predicted_seconds": phase_seconds(s.link_loads(), 8 * dim, rates,
                                                         s.coding_work(dim), speed)}
    probe = {"w1_latency_s": rates["w1"][0], "w1_bytes_per_s": rates["w1"][1],
             "w2_latency_s": rates["w2"][0], "w2_bytes_per_s": rates["w2"][1],
             "coding_bytes_per_s": speed}
    for r in runs.values():
        r["probe"] = probe
    def rate(b):
        if b == float("inf"):
            return "none"
        return f"{8 * b / 1e9:.1f} Gbit/s" if b >= 1.25e8 else f"{8 * b / 1e6:.1f} Mbit/s"
    print(f"hmtl_mpi: measured links W1 {rate(rates['w1'][1])} + "
          f"{1e6 * rates['w1'][0]:.0f} us, W2 {rate(rates['w2'][1])} + "
          f"{1e6 * rates['w2'][0]:.0f} us per round; coding {speed / 1e6:.0f} MB/s.\n"
          f"hmtl_mpi: predicted per iteration (eq. 13 + latency; learning not included): "
          + "; ".join(verdict({n: r["predicted_seconds"] for n, r in runs.items()},
                              timed[0].name)), flush=True)
    return {"runs": runs}


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


# --- one scheme ---------------------------------------------------------------------------

def run_scheme(scheme, args, world, links, state, G, comms, tasks):
    """Run ``args.iterations`` iterations of one scheme; rank 0 returns its report.
    ``tasks``: the MOCHA tasks this rank holds (None for learners without data)."""
    from . import checks
    from .report import run_report
    from .roles import make_net
    from .schemes.base import Job, role_of

    rank = world.Get_rank()
    H, K = G.shape
    flat = args.layout == "flat"
    state.step("building the learner", scheme=scheme.name, iteration=None)
    learner = learner_for(args, K, tasks)
    job = Job(G, learner, flat=flat)
    role, index = role_of(rank, H)
    me = scheme.part(role, job, make_net(rank, links, comms, G, args.downlink), index)
    state.step("warm-up (JIT compilation)")
    learner.warm_up()                  # JIT compilation stays out of every timed phase
    run = run_free if scheme.barrier_free else run_steps
    iterations = run(scheme, args, world, links, state, me, K, flat, 8 * learner.dim)
    state.step("final checks (model digests, test errors)", iteration=None)
    digest, delivered = checks.model_digests(world, links, me, K)
    accuracy = checks.gather_accuracy(world, links, me, K) if learner.evaluates else None
    if rank != 0:
        return None
    report = run_report(scheme, args, learner, K, H, iterations,
                        {"digest": digest, "delivered": delivered, "accuracy": accuracy}, flat)
    report.update(me.results())
    return report


def run_steps(scheme, args, world, links, state, me, K, flat, iv_bytes):
    """The iterations of a scheme with steps; bytes and IV digests checked after each.
    Rank 0 returns the records.

    ``--sync iteration`` (default): a barrier starts and ends every iteration, and the
    steps in between run back to back, each rank going on as soon as its own part of
    a step is done (a relay encodes while another still receives). Every rank stamps
    the end of each of its steps (``MPI.Wtime`` since it left the start barrier); a
    phase's time is the latest end of its step minus the latest end of the step
    before, so the phases add up to the time the last rank finished, and a phase
    hidden behind another one costs what it delayed the last rank. Stamps are
    relative to each rank's own exit from the start barrier: clocks of different
    hosts need not agree. The iteration's time is the longest any rank spent from
    the start barrier to leaving the end barrier.

    ``--sync phase``: a barrier also between every two steps, so that each phase is
    measured alone (the paper's model, eq. 13, adds phases that do not overlap), at
    the price of one barrier per phase.
    """
    from mpi4py import MPI

    from . import checks
    from .report import LINK_CLASSES, PHASES, progress_line

    rank = world.Get_rank()
    learner = me.job.learner
    # the flat layout has no users: the steps that reach them do not run
    steps = [(key, step) for key, step in scheme.steps
             if not (flat and step in ("user_to_relay", "relay_to_user"))]
    by_phase = args.sync == "phase"
    iterations = []
    for it in range(args.iterations):
        state.step("start of the iteration", iteration=it)
        links.reset_counters()
        ends = np.zeros(len(steps) + 1)          # each step's end, then the iteration's
        links.barrier(world, "start of iteration")
        start = MPI.Wtime()
        for n, (key, step) in enumerate(steps):
            state.step(f"phase {step}")
            if args.inject_fault and args.inject_fault[:2] == (rank, it) \
                    and step == "relay_to_server":
                inject_fault(args.inject_fault[2], rank, it)
            method = getattr(me, step, None)
            if method is not None:
                method(it)
            if by_phase:
                state.step(f"phase {step}", note="at the barrier after it")
                links.barrier(world, f"after {step}")
            ends[n] = MPI.Wtime() - start
        state.step("end of the iteration", note="at the barrier after its last phase")
        links.barrier(world, "end of iteration")
        ends[-1] = MPI.Wtime() - start
        state.step("checks (byte counts, phase times, IV digests)")
        sent = np.array([links.sent[c] for c in LINK_CLASSES], dtype=np.int64)
        sums = np.zeros_like(sent)
        latest = np.zeros_like(ends)
        links.wait([world.Ireduce(sent, sums, op=MPI.SUM, root=0),
                    world.Ireduce(ends, latest, op=MPI.MAX, root=0)], "byte counters and phase ends")
        ivs_ok = checks.check_ivs(world, links, me, K)
        if rank == 0:
            seconds = dict.fromkeys(PHASES, 0.0)
            for (key, _), took in zip(steps, np.diff(latest[:-1], prepend=0.0)):
                seconds[key] += float(took)
            seconds["total"] = float(latest[-1])
            record = {"iteration": it, "seconds": seconds,
                      "bytes": {c: int(b) for c, b in zip(LINK_CLASSES, sums)},
                      "ivs_bit_exact": ivs_ok}
            iterations.append(record)
            if not args.quiet:
                print(progress_line(scheme.name, it, args.iterations, record, iv_bytes), flush=True)
        if learner.evaluates and args.eval_every and (it + 1) % args.eval_every == 0 \
                and it + 1 < args.iterations:
            state.step("test errors")
            acc = checks.gather_accuracy(world, links, me, K)
            if rank == 0 and not args.quiet:
                print(f"[{scheme.name}] iteration {it + 1}: mean test error "
                      f"{acc['mean_test_error']:.4f}", flush=True)
    return iterations


def run_free(scheme, args, world, links, state, me, K, flat, iv_bytes):
    """The iterations of a barrier-free scheme (stragglers must not hold anybody up): every
    rank calls its part's ``iterate(it)`` and moves on as soon as it can. Times come from
    the server's clock (the part's own records) and, for the users' local work, from the
    users'; bytes are logged per iteration on every rank and summed after the last one,
    once every late message has been drained. Rank 0 returns the records."""
    from mpi4py import MPI

    from .checks import gather_to_root
    from .report import LINK_CLASSES, PHASES

    rank = world.Get_rank()
    n = args.iterations
    links.reset_counters()
    links.barrier(world, "start of the run")
    me.start()
    for it in range(n):
        state.step("its iteration (no barriers)", iteration=it)
        links.iteration = it
        if args.inject_fault and args.inject_fault[:2] == (rank, it):
            inject_fault(args.inject_fault[2], rank, it)
        me.iterate(it)
        if rank == 0 and not args.quiet:
            print(f"[{scheme.name:>7}] iteration {it + 1}/{n}: {me.progress(it)}", flush=True)
    links.iteration = None
    state.step("draining late messages", iteration=None)
    me.net.drain("late messages and pending sends")
    links.barrier(world, "end of the run (every late message drained)")
    state.step("checks (byte counts, timings)")
    log = np.zeros((n, len(LINK_CLASSES)), dtype=np.int64)
    for it, counts in links.sent_by_iteration.items():
        log[it] = [counts[c] for c in LINK_CLASSES]
    total = np.zeros_like(log)
    links.wait(world.Ireduce(log, total, op=MPI.SUM, root=0), "byte counters")
    work = np.full(n, np.nan)
    work[: len(me.compute_s)] = me.compute_s
    (works,) = gather_to_root(world, links, (work,), "the users' compute times")
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
    return records


def inject_fault(kind, rank, it):
    """--inject-fault: fail, hang or die here, to show that the job still ends naming us."""
    if kind == "hang":
        while True:
            time.sleep(1)
    if kind == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    raise RuntimeError(f"fault injected on rank {rank} in iteration {it} (--inject-fault)")


def _terminate(signum, frame):
    from .failures import Terminated
    raise Terminated()


# --- entry point ----------------------------------------------------------------------

def main(argv=None, page=None) -> int:
    """The job on one rank. ``page``: the supervisor's shared page (:mod:`hmtl_mpi.supervisor`)."""
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")   # one BLAS thread per rank
    from mpi4py import MPI

    from .failures import Control, RankState, end_job

    world = MPI.COMM_WORLD
    rank = world.Get_rank()
    state = RankState(rank, page)
    signal.signal(signal.SIGTERM, _terminate)
    control = None
    timeout = 60.0
    try:
        control = Control(world, state)
        args, exit_code = parse_job_args(sys.argv[1:] if argv is None else argv, rank,
                                         world.Get_size())
        if args is None:
            return exit_code
        timeout = args.timeout
        return run_job(args, world, state, control)
    except BaseException as exc:   # noqa: BLE001 - any failure on any rank ends the whole job
        end_job(exc, state, control, timeout)
        return 1


def run_job(args, world, state, control) -> int:
    """Setup, every scheme's iterations, the summary and the report."""
    from .failures import RECORD_BYTES, decode_record, encode_record
    from .interconnect import describe_links, local_facts
    from .report import job_payload, summary, write_report
    from .roles import make_comms
    from .schemes import get
    from .schemes.base import role_names
    from .transport import Links

    rank = world.Get_rank()
    flat = args.layout == "flat"
    links = Links(world, args.timeout, control, state)
    # rank 0 may spend a while planning (cvxpy) and building codes: the others wait longer
    setup_timeout = max(args.timeout, SETUP_TIMEOUT)
    state.step("setup")
    setup = None
    error = b""
    if rank == 0:
        t0 = time.perf_counter()
        try:
            setup = setup_on_server(args, world.Get_size())
        except SetupError as exc:
            error = str(exc).encode()
        setup_seconds = time.perf_counter() - t0
    status = links.bcast_bytes(world, np.frombuffer(error, dtype=np.uint8), 0,
                               "rank 0's setup (plans and codes)", setup_timeout)
    if status.size:
        if rank == 0:
            sys.stderr.write(f"hmtl_mpi: error: {error.decode()}\n")
        return EXIT_BAD_INPUT
    G = setup[0] if rank == 0 else None
    gbuf = links.bcast_bytes(world, np.ascontiguousarray(G).reshape(-1) if rank == 0 else None,
                             0, "topology")
    shape = np.array(G.shape if rank == 0 else (0, 0), dtype=np.int64)
    links.bcast(world, shape, 0, "topology shape")
    G = gbuf.reshape(int(shape[0]), int(shape[1]))
    H, K = G.shape
    state.set_roles(role_names(H, flat))
    where = np.zeros((world.Get_size(), 3), dtype=np.int64) if rank == 0 else None
    links.wait(world.Igather(state.locator(), where, root=0), "where the ranks' state pages are")
    hosts = np.zeros((world.Get_size(), RECORD_BYTES), dtype=np.uint8) if rank == 0 else None
    links.wait(world.Igather(encode_record(local_facts()), hosts, root=0),
               "what carries the messages (host, namespace, MPI transport)")
    if rank == 0:
        state.pages = {r: tuple(int(x) for x in where[r]) for r in range(world.Get_size())}
        link_kind = describe_links([decode_record(h) for h in hosts])
        rank_hosts = [decode_record(h).get("hostname") for h in hosts]
    # rank 0 chose lambda (--cv), the local update's kernel (--local-kernel auto) and
    # knows the data's number of features
    from .mocha import KERNELS
    facts = np.array([np.nan, 0.0, 0.0])
    if rank == 0:
        learner = setup[2]
        facts[:] = (args.lam if args.lam is not None else np.nan,
                    KERNELS.index(args.local_kernel) if reads_data(args) else 0, learner.dim)
    links.bcast(world, facts, 0, "lambda, kernel and data size")
    args.lam = None if np.isnan(facts[0]) else float(facts[0])
    args.local_kernel = KERNELS[int(facts[1])]
    schemes = []
    for b, name in enumerate(args.scheme):
        planned = setup[1][b] if rank == 0 else None
        buf = links.bcast_bytes(world, planned.to_buffer() if rank == 0 else None, 0,
                                f"the {name} scheme's plan")
        schemes.append(planned if rank == 0 else get(name, args.workload).from_buffer(G, buf))
    tasks = None
    if reads_data(args) and args.data == "scatter":
        state.step("setup (each rank receives its data)")
        tasks = share_tasks(world, links, setup[2] if rank == 0 else None, G, flat,
                            setup_timeout)
    elif reads_data(args):
        state.step("setup (each rank reads its data)")
        tasks = read_tasks(args, setup[2] if rank == 0 else None, rank, G, flat)
    if reads_data(args):
        args.dim = int(facts[2])
    links.barrier(world, "every rank before building the communicators")
    comms = make_comms(world, G, flat)
    if rank == 0:
        oversubscribed = world.Get_size() > (os.cpu_count() or 1)
        who = f"{H} workers" if flat else f"{H} relays, {K} users"
        loads = ", ".join(f"{s.name} ({float(s.planned_loads[0]):.4g}, "
                          f"{float(s.planned_loads[1]):.4g})" for s in schemes)
        print(f"hmtl_mpi: {world.Get_size()} ranks (1 server, {who}) on {os.cpu_count()} cores"
              f"{' (oversubscribed)' if oversubscribed else ''}; topology {args.topology}"
              f"{' (flat layout, ' + str(K) + ' tasks)' if flat else ''}; dataset {args.dataset}; "
              f"setup {setup_seconds:.2f} s; planned loads {loads}", flush=True)
    predicted = predict_times(args, world, links, comms, G, flat, schemes, int(facts[2]))
    reports = []
    for scheme in schemes:
        state.step("start of the run", scheme=scheme.name, iteration=None)
        links.barrier(world, f"start of {scheme.name}")
        reports.append(run_scheme(scheme, args, world, links, state, G, comms, tasks))
    state.step("summary and report", scheme=None, iteration=None)
    if rank == 0 and predicted:
        for r in reports:
            r.update(predicted["runs"].get(r["scheme"], {}))
    if rank == 0 and "accuracy" in reports[0]:
        state.step("summary and report (SVM baselines)")
        baselines = setup[2].baselines()
        for r in reports:
            r["accuracy"].update(baselines)
            r["accuracy"]["lambda"] = args.lam if args.lam is not None else "default"
    if rank == 0:
        print(summary(reports, oversubscribed, link_kind), flush=True)
        if args.report:
            state.step("writing the report")
            payload = job_payload(reports, args.scheme_arg, K, H)
            payload["ranks"] = world.Get_size()
            payload["cores"] = os.cpu_count()
            payload["topology"] = str(args.topology)
            payload["links"] = link_kind
            payload["rank_hosts"] = rank_hosts
            write_report(args.report, payload)
            print(f"report written to {args.report}", flush=True)
    state.step("end of the job")
    links.wait(world.Ibarrier(), "end of job (rank 0 computing baselines, writing the report)",
               setup_timeout)
    if rank == 0 and len({r["model_digest"] for r in reports}) > 1:
        sys.stderr.write(f"hmtl_mpi: the runs of {', '.join(r['scheme'] for r in reports)} "
                         f"ended with different models (lossless check failed)\n")
        return EXIT_CHECK_FAILED
    return 0
