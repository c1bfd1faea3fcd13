"""argparse value types shared by the command lines: clear errors, never tracebacks."""

from __future__ import annotations

import argparse
import math
import os
import sys

from .job.config import JobConfig
from .learning.learners import DATASETS
from .learning.straggle import StraggleError, parse
from .schemes import REGISTRY, names
from .schemes.pipelined import MAX_SEGMENTS
from .vocabulary import EXIT_BAD_INPUT, MAX_USERS_PER_RANK


def positive_int(text) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def positive_float(text) -> float:
    """A finite number > 0 (``inf`` would silently switch off what it limits)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value) or not value > 0:
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


SEED_MAX = 2**32 - 1


def seed_value(text) -> int:
    """A random seed: an integer 0 .. 2**32 - 1 (NumPy's seed range for one word)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if not 0 <= value <= SEED_MAX:
        raise argparse.ArgumentTypeError(f"must be between 0 and 2**32-1 = {SEED_MAX}, got {value}")
    return value


def positive_int_list(text) -> tuple:
    """Comma-separated integers, each at least 1."""
    return tuple(positive_int(x) for x in str(text).split(","))


def float_list(text) -> tuple:
    """Comma-separated numbers (empty: none)."""
    try:
        return tuple(float(x) for x in str(text).split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


# --- the job's command line: mpirun -n 1+H+K python -m hmtl_mpi ---------------------------

PROG = "mpirun -n 1+H+K python -m hmtl_mpi"
USAGE = f"{PROG} [options]   (--help lists them)"
DEFAULT_ITERATIONS = 30  # MOCHA on digits ends below the per-task SVM baseline (README)
FAULT_KINDS = ("raise", "hang", "kill")
SCHEME_ALIASES = {"both": "uncoded,coded"}                 # --workload mtl
DEFAULT_SCHEMES = {"mtl": "both", "gd": "uncoded,gc,hgc"}

EPILOG = """\
ranks: world rank 0 is the server, ranks 1..H the relays, ranks H+1..H+K the
users, so the job needs exactly 1 + H + K ranks (16 for paper-fig2); with
--users-per-rank N, rank H+1+j runs users jN .. jN+N-1 and the job needs
1 + H + ceil(K/N); with --layout flat there are no user ranks and the job needs 1 + H.

schemes:
{schemes}

report (--report PATH, JSON): see README.md, "The report". Times are seconds of
MPI.Wtime (see --sync for how phases are delimited); on one machine with more
ranks than cores the ranks share CPUs.

exit codes: 0 success; 1 a lossless check failed; 2 bad input (flags, topology,
data, number of ranks, a checkpoint that does not match or is damaged); 3 an
exception on a rank; 4 a rank stopped answering (--timeout); 130 interrupted
(Ctrl-C), 143 terminated (with --checkpoint: after writing a checkpoint). A
rank killed by a signal is named by its watcher; mpiexec then exits with its own
code. Every abnormal end prints one "hmtl_mpi:" line naming the rank, its role,
the iteration and the phase; HMTL_TRACEBACK=1 adds the traceback of an exception.
"""


class ArgError(Exception):
    pass


class JobParser(argparse.ArgumentParser):
    """argparse that raises instead of printing, so that only rank 0 speaks."""

    def error(self, message):
        raise ArgError(message)


def fault_spec(text):
    parts = text.split(":")
    try:
        rank, iteration = int(parts[0]), int(parts[1])
        kind = parts[2] if len(parts) == 3 else "raise"
        if len(parts) not in (2, 3) or kind not in FAULT_KINDS or rank < 0 or iteration < 0:
            raise ValueError
    except (ValueError, IndexError):
        raise argparse.ArgumentTypeError(
            f"expected RANK:ITERATION[:raise|:hang|:kill] with RANK, ITERATION >= 0, "
            f"got {text!r}") from None
    return rank, iteration, kind


def scheme_list(text, workload: str = "mtl") -> tuple:
    """A comma list of the workload's registered schemes (``both`` = uncoded,coded), in
    the order given."""
    text = SCHEME_ALIASES.get(text, text) if workload == "mtl" else text
    chosen = [x.strip() for x in str(text).split(",") if x.strip()]
    unknown = [x for x in chosen if x not in names(workload)]
    if not chosen or unknown:
        raise argparse.ArgumentTypeError(
            f"unknown scheme {unknown[0] if unknown else text!r} for --workload {workload}; "
            f"choose from {', '.join(names(workload))}, or a comma list of them"
            + (", or 'both' (= uncoded,coded)" if workload == "mtl" else ""))
    if len(set(chosen)) != len(chosen):
        raise argparse.ArgumentTypeError(f"a scheme is named twice in {text!r}")
    return tuple(chosen)


def segments_value(text):
    """``--segments``: a whole number of segments 1 .. MAX_SEGMENTS, or ``auto``."""
    text = str(text).strip()
    if text == "auto":
        return "auto"
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number of segments or auto, got "
                                         f"{text!r}") from None
    if not 1 <= value <= MAX_SEGMENTS:
        raise argparse.ArgumentTypeError(f"segments must be 1 .. {MAX_SEGMENTS} or auto, got "
                                         f"{value}")
    return value


def stragglers_pair(text) -> tuple:
    """``S_E,S_W``: tolerated straggling edges and straggling workers per edge (>= 0)."""
    parts = str(text).split(",")
    try:
        pair = tuple(int(x) for x in parts)
    except ValueError:
        pair = ()
    if len(pair) != 2 or min(pair) < 0:
        raise argparse.ArgumentTypeError(f"expected S_E,S_W, two integers >= 0, got {text!r}")
    return pair


def straggle_value(text):
    try:
        return parse(text)
    except StraggleError as exc:
        raise argparse.ArgumentTypeError(str(exc).replace("--straggle: ", "")) from None


def build_parser() -> argparse.ArgumentParser:
    listing = "\n".join(f"  {name:10} ({workload}) {cls.summary}"
                         for (workload, name), cls in REGISTRY.items())
    p = JobParser(prog=PROG, description="Hierarchical multi-task learning over MPI: a server, H "
                  "relays and K users; uncoded and coded relay<->server exchanges, every byte "
                  "and phase measured, every run checked lossless.",
                  epilog=EPILOG.format(schemes=listing),
                  formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--topology", default="paper-fig2",
                   help="G as a .npy file (H x K 0/1, rows relays) or a built-in name "
                        "(default: paper-fig2, 16 ranks)")
    p.add_argument("--workload", choices=("mtl", "gd"), default="mtl",
                   help="mtl: K users learn K related models with MOCHA (the IV exchange of "
                        "the source papers; default); gd: full-batch gradient descent on one "
                        "shared model, coded partial gradients, stragglers (HGC)")
    p.add_argument("--scheme", default=None, metavar="NAME[,NAME...]|auto",
                   help="the schemes to run, one after the other on identical inputs, and "
                        "compare (listed below; default: both = uncoded,coded for mtl, "
                        "uncoded,gc,hgc for gd); auto (mtl): measure the links, the coding "
                        "kernel, the learning and each scheme's fixed cost per iteration, "
                        "and run only the scheme predicted fastest")
    p.add_argument("--stragglers", type=stragglers_pair, default=(1, 1), metavar="S_E,S_W",
                   help="gd: tolerated straggling edges, and straggling workers in every other "
                        "edge (default 1,1)")
    p.add_argument("--relay-stragglers", type=int, default=0, metavar="S",
                   help="coded, joint: tolerate S slow relays: relays send enough extra coded "
                        "combinations that the server decodes from the first H - S to answer "
                        "and nobody waits for the others (every user needs S + 1 relays; "
                        "docs/tolerant.md; default 0: the paper's exchange; uncoded, the baseline, "
                        "runs unchanged and waits for every relay)")
    p.add_argument("--partitions", type=positive_int, default=None, metavar="P",
                   help="gd: the training set is cut into P partitions (default: K, one per "
                        "worker; hgc needs P (s_e+1) m_i / M whole)")
    p.add_argument("--straggle", type=straggle_value, default="none",
                   metavar="MODEL",
                   help="gd: wall-clock delays injected every iteration, terms joined by +: "
                        "shifted-exp:SHIFT:RATE (every worker late by D*SHIFT + D*Exp(1)/RATE s "
                        "for its D partitions), bernoulli:PROB:SECONDS (every worker late by "
                        "SECONDS with probability PROB), fixed:RANK=SECONDS[,...] (the named "
                        "users or relays late by a constant); default none. mtl: fixed:RANK=SECONDS "
                        "of relays only, late before their uplink every iteration")
    p.add_argument("--layout", choices=("hierarchical", "flat"), default="hierarchical",
                   help="hierarchical: users compute the IVs and send them to their relays "
                        "(1 + H + K ranks); flat: seed 001's system, no user ranks, relay i is "
                        "the worker of every task in its row of G (1 + H ranks)")
    p.add_argument("--dataset", choices=DATASETS, default="digits",
                   help="the learner's data: MOCHA on digits / mnist / har, or synthetic IVs "
                        "of --dim values for communication work (default: digits)")
    p.add_argument("--dim", type=positive_int, default=None,
                   help="float64 values per IV with --dataset synthetic (default 1000)")
    p.add_argument("--iterations", type=positive_int, default=DEFAULT_ITERATIONS,
                   help=f"global iterations per scheme (default {DEFAULT_ITERATIONS})")
    p.add_argument("--seed", type=seed_value, default=0,
                   help="seed of data, learner and code, 0 .. 2**32-1 (default 0)")
    p.add_argument("--downlink", choices=("scatter-allgather", "bcast"), default="scatter-allgather",
                   help="how the server's broadcast reaches the relays: scatter from the server "
                        "then allgather among relays (one copy leaves the server; default), or "
                        "MPI_Bcast (fewer calls, but several copies leave the server)")
    p.add_argument("--sync", choices=("iteration", "phase"), default="iteration",
                   help="schemes with steps: 'iteration' (default) puts a barrier around each "
                        "iteration only, steps run back to back and a phase is timed from the "
                        "ranks' own clocks (latest end of its step minus latest end of the step "
                        "before); 'phase' also puts a barrier between every two steps, so each "
                        "phase is measured alone, as eq. 13 models it")
    p.add_argument("--timeout", type=positive_float, default=60.0,
                   help="seconds any rank waits for a message or barrier before the job ends, "
                        "naming the rank that stopped answering (default 60)")
    p.add_argument("--report", metavar="PATH",
                   help="write the JSON report here (checked before the run; written "
                        "atomically at the end, never half-written)")
    p.add_argument("--data-dir", help="with --dataset har: the UCI HAR folder")
    p.add_argument("--har-tasks", choices=("sitting", "subject"), default="sitting",
                   help="with --dataset har: 'sitting' vs the rest (paper) or one task per "
                        "subject (MOCHA paper)")
    p.add_argument("--lam", type=positive_float, default=None, help="MOCHA's lambda")
    p.add_argument("--cv", action="store_true",
                   help="MOCHA: choose lambda by 5-fold cross-validation over the paper's grid "
                        "{1e-5, ..., 10} on rank 0 before training (slow; default off, lambda "
                        "1e-4)")
    p.add_argument("--data", choices=("scatter", "local"), default="scatter",
                   help="MOCHA data sets: 'scatter' (default): rank 0 reads the data set once "
                        "and sends each rank only its share (a user its task); 'local': every "
                        "rank that needs data reads the data set itself (no setup traffic on "
                        "the links, e.g. slow emulated ones; CPU on every such rank)")
    p.add_argument("--local-kernel", choices=("auto", "numpy", "numba"), default="auto",
                   help="MOCHA: the local update's implementation, NumPy or numba-compiled "
                        "(identical results); numba costs each user rank ~1.5 s to import and "
                        "load, so 'auto' (default) takes it only when the run's local updates "
                        "would take longer than that in NumPy")
    p.add_argument("--inner", type=positive_int, default=None,
                   help="MOCHA: refresh Sigma every INNER iterations")
    p.add_argument("--eval-every", type=positive_int, default=None,
                   help="MOCHA: report test error every N iterations (default: at the end)")
    p.add_argument("--quiet", action="store_true", help="no per-iteration progress lines")
    p.add_argument("--checkpoint", metavar="DIR",
                   help="write the job's complete state to DIR every --checkpoint-every "
                        "iterations and when SIGTERM arrives (Slurm's preemption and time "
                        "limit), then stop with exit 143; atomic and checksummed, the two "
                        "newest kept (created if missing)")
    p.add_argument("--checkpoint-every", type=positive_int, default=10, metavar="N",
                   help="iterations between two checkpoints (default 10)")
    p.add_argument("--resume", metavar="DIR",
                   help="continue from the newest checkpoint in DIR: the same command must "
                        "be given (topology, dataset, schemes, seed, ranks, ...: what differs "
                        "is named, exit 2); the models end bit-identical to an uninterrupted "
                        "run")
    p.add_argument("--transport", choices=("mpi", "inprocess"), default="mpi",
                   help="mpi (default): one MPI rank per role, under mpirun / srun; "
                        "inprocess: every rank of the job in this one process (no mpirun), "
                        "the same parts, checks, summary and report, on a virtual clock that "
                        "counts only computation (links cost nothing; --straggle delays order "
                        "the arrivals instead of sleeping)")
    p.add_argument("--users-per-rank", type=positive_int, default=1, metavar="N",
                   help="each user rank runs N users (users k in [jN, (j+1)N) on rank 1+H+j), "
                        "so the job needs 1 + H + ceil(K/N) ranks; every user keeps its own "
                        "model, IV and messages (default 1; --workload mtl, hierarchical)")
    p.add_argument("--plan", choices=("load", "time"), default="load",
                   help="coded and joint: load (default) plans the papers' least total load; "
                        "time re-plans after the link probe for the least uplink time under "
                        "every relay's measured rate to the server (docs/bandwidth.md)")
    p.add_argument("--segments", type=segments_value, default=1, metavar="N|auto",
                   help="coded and joint: cut the relay<->server exchange into N segments of "
                        "every IV that overlap (a relay encodes segment j+1 while j travels, "
                        "the server combines segments as they arrive, relays decode j while "
                        "j+1 travels; bit-identical results, the same payload bytes plus an "
                        "8-byte header per block and segment); auto: chosen after the link "
                        "probe by the model of docs/pipeline.md (--transport mpi); default 1: "
                        "the unsegmented exchange")
    p.add_argument("--on-failure", choices=("abort", "continue"), default="abort",
                   help="when a relay or user rank dies: abort (the default) ends the job "
                        "naming it; continue goes on without it: G loses it, every scheme is "
                        "re-planned, the survivors roll back to the last iteration all of them "
                        "completed; under --workload gd a lost worker or edge stays in the "
                        "code as a straggler for good while its tolerance lasts (hierarchical "
                        "layout; over MPI it needs an "
                        "MPI with fault tolerance, see README 'Faults and recovery')")
    p.add_argument("--inject-fault", type=fault_spec, metavar="RANK:ITERATION[:KIND]",
                   help="testing aid: on world rank RANK in iteration ITERATION (0-based, "
                        "mid-iteration, at relay_to_server) raise an exception (KIND raise, the "
                        "default), stop responding (hang) or die by SIGKILL (kill); the job "
                        "must end naming that rank")
    return p


def users_per_rank_problem(workload: str, layout: str, per_rank: int,
                           relay_stragglers: int = 0) -> str | None:
    """Why ``--users-per-rank per_rank`` cannot run with this workload and layout (None:
    it can; :mod:`hmtl_mpi.job.hosting`)."""
    if per_rank > MAX_USERS_PER_RANK:
        return (f"--users-per-rank {per_rank}: at most {MAX_USERS_PER_RANK} users per rank "
                f"(each user's slot goes into its messages' tags, and MPI guarantees tags up "
                f"to 32767 only)")
    if per_rank == 1:
        return None
    if workload == "gd":
        return (f"--users-per-rank {per_rank}: --workload gd needs one rank per user (its "
                f"workers straggle and give up independently; users sharing a rank run one "
                f"after the other)")
    if layout == "flat":
        return (f"--users-per-rank {per_rank}: --layout flat has no user ranks (relay i "
                f"computes its tasks itself)")
    if relay_stragglers:
        return (f"--users-per-rank {per_rank}: --relay-stragglers {relay_stragglers} needs one "
                f"rank per user (the tolerant exchange has no barriers: each user takes its "
                f"model from whichever relay answers first, at its own pace)")
    return None


def parse_job_args(argv, rank, size):
    """Parse on every rank; only rank 0 prints errors or help (rank -1: nobody does).
    Returns (:class:`hmtl_mpi.job.config.JobConfig`, None) or (None, exit code).

    Everything that can be checked without the topology or the file system is
    checked here, identically on every rank, so that every rank stops together.
    ``size``: the number of ranks started (None: not known yet, in-process).
    """
    parser = build_parser()
    quiet = open(os.devnull, "w") if rank != 0 else None
    saved = sys.stdout
    try:
        if quiet is not None:
            sys.stdout = quiet            # --help is printed by rank 0 only
        args = parser.parse_args(argv)
    except ArgError as exc:
        return None, usage_error(rank, str(exc))
    except SystemExit as exc:       # --help
        return None, int(exc.code or 0)
    finally:
        sys.stdout = saved
        if quiet is not None:
            quiet.close()
    problem = None
    try:
        text = args.scheme if args.scheme is not None else DEFAULT_SCHEMES[args.workload]
        auto = text.strip() == "auto"
        if auto and args.workload != "mtl":
            raise argparse.ArgumentTypeError("auto chooses among the multi-task schemes "
                                             "(--workload mtl) only")
        schemes = (tuple(n for (w, n), cls in REGISTRY.items()     # auto: those with steps
                         if w == args.workload and not cls.barrier_free)
                   if auto else scheme_list(text, args.workload))
    except argparse.ArgumentTypeError as exc:
        return None, usage_error(rank, f"argument --scheme: {exc}")
    scheme_arg = ("auto" if auto else
                  "both" if args.workload == "mtl" and schemes == scheme_list("both")
                  else ",".join(schemes))
    gd_only = [flag for flag, given in (("--partitions", args.partitions is not None),)
               if given and args.workload != "gd"]
    mtl_straggle = args.workload == "mtl" and args.straggle.text != "none"
    if gd_only:
        problem = f"{gd_only[0]} applies to --workload gd only"
    elif mtl_straggle and (args.straggle.random or args.straggle.spike_prob
                           or args.straggle.shift):
        problem = ("--straggle under --workload mtl takes fixed:RANK=SECONDS (slow relays) "
                   f"only, not {args.straggle.text!r}")
    elif mtl_straggle and args.layout == "flat":
        problem = "--straggle applies to the hierarchical layout only under --workload mtl"
    elif args.relay_stragglers < 0:
        problem = f"--relay-stragglers must be >= 0, got {args.relay_stragglers}"
    elif args.relay_stragglers and (args.workload != "mtl" or args.layout == "flat"):
        problem = ("--relay-stragglers applies to --workload mtl with the hierarchical layout "
                   "(the coded and joint schemes)")
    elif args.workload == "gd" and args.dataset not in ("digits", "mnist"):
        problem = f"--workload gd trains on digits or mnist, not {args.dataset}"
    elif args.workload == "gd" and args.layout == "flat":
        problem = "--layout flat applies to --workload mtl only"
    elif args.workload == "gd" and (args.cv or args.lam is not None or args.inner):
        problem = "--cv, --lam and --inner are MOCHA's (--workload mtl)"
    elif args.dim is not None and args.dataset != "synthetic":
        problem = f"--dim applies to --dataset synthetic only; {args.dataset} fixes the dimension"
    elif args.cv and args.dataset == "synthetic":
        problem = "--cv needs a learning dataset (digits, mnist, har)"
    elif args.cv and args.lam is not None:
        problem = "give either --lam or --cv, not both"
    elif args.dataset == "har" and not args.data_dir:
        problem = "--dataset har needs --data-dir (the UCI HAR folder)"
    elif auto and args.relay_stragglers:
        problem = ("--scheme auto compares the schemes that run in steps; --relay-stragglers "
                   "makes coded and joint barrier-free: name the scheme instead")
    elif auto and (args.checkpoint or args.resume):
        problem = ("--scheme auto cannot be checkpointed or resumed (its choice is measured "
                   "anew every run): name the scheme it chose instead")
    elif args.report is not None and not args.report.strip():
        problem = "--report: the path is empty"
    elif args.checkpoint is not None and not args.checkpoint.strip():
        problem = "--checkpoint: the folder name is empty"
    elif args.resume is not None and not args.resume.strip():
        problem = "--resume: the folder name is empty"
    elif users_per_rank_problem(args.workload, args.layout, args.users_per_rank,
                                args.relay_stragglers):
        problem = users_per_rank_problem(args.workload, args.layout, args.users_per_rank,
                                         args.relay_stragglers)
    elif args.inject_fault and args.transport == "inprocess" and args.inject_fault[2] == "kill":
        problem = ("--inject-fault RANK:ITERATION:kill needs a process per rank (mpirun); "
                   "with --transport inprocess use raise or hang")
    elif args.inject_fault and size is not None and args.inject_fault[0] >= size:
        problem = (f"--inject-fault: rank {args.inject_fault[0]} does not exist; the job has "
                   f"ranks 0 .. {size - 1}")
    elif args.inject_fault and args.inject_fault[1] >= args.iterations:
        problem = (f"--inject-fault: iteration {args.inject_fault[1]} never runs; iterations are "
                   f"0 .. {args.iterations - 1} (--iterations {args.iterations})")
    elif args.on_failure == "continue" and args.layout == "flat":
        problem = ("--on-failure continue: only the hierarchical layout survives a lost rank "
                   "so far (a lost flat worker is not handled yet); use --on-failure abort")
    elif args.on_failure == "continue" and (args.users_per_rank > 1 or args.relay_stragglers):
        problem = ("--on-failure continue: not with --users-per-rank above 1 or "
                   "--relay-stragglers (their ranks and exchanges are not re-planned after a "
                   "loss yet); use --on-failure abort")
    elif args.on_failure == "continue" and (auto or args.plan == "time"):
        problem = ("--on-failure continue: not with --scheme auto or --plan time (a loss "
                   "re-plans the chosen scheme for the least load; neither choice is re-made "
                   "yet); use --on-failure abort")
    if not problem and args.segments != 1:
        problem = segments_problem(args, schemes, auto)
    if not problem and args.plan == "time":
        problem = plan_time_problem(args, schemes, auto)
    if problem:
        return None, usage_error(rank, problem)
    return JobConfig.from_args(args, schemes, scheme_arg), None


def segments_problem(args, schemes, auto: bool = False) -> str | None:
    """Why ``--segments`` other than 1 cannot be used with these options (None: it can)."""
    flag = f"--segments {args.segments}"
    if auto:
        return (f"{flag} does not go with --scheme auto: auto predicts the unsegmented "
                f"exchanges (name the scheme, e.g. --scheme coded {flag})")
    if args.workload != "mtl" or not any(getattr(REGISTRY[(args.workload, n)], "can_segment",
                                                 False) for n in schemes):
        return (f"{flag}: none of the schemes {','.join(schemes)} has a coded relay<->server "
                f"exchange to pipeline (coded and joint have)")
    if args.relay_stragglers:
        return (f"{flag} does not go with --relay-stragglers: the tolerant exchange is "
                f"barrier-free and has a point-to-point downlink of its own")
    if args.downlink == "bcast":
        return (f"{flag} does not go with --downlink bcast: the pipelined exchange sends "
                f"each segment's broadcast in pieces, point to point")
    if args.on_failure == "continue":
        return (f"{flag} does not go with --on-failure continue yet (a loss re-plans the "
                f"scheme unsegmented); use --on-failure abort")
    if args.segments == "auto" and args.transport != "mpi":
        return ("--segments auto chooses from the measured links: it needs --transport mpi "
                "(give a number of segments in one process)")
    return None


def plan_time_problem(args, schemes, auto: bool = False) -> str | None:
    """Why ``--plan time`` cannot be used with these options (None: it can)."""
    if auto:
        return ("--plan time does not go with --scheme auto: auto predicts and chooses "
                "among the load plans (give the scheme, e.g. --scheme coded --plan time)")
    if not any(REGISTRY[(args.workload, n)].has_load_plan for n in schemes):
        return (f"--plan time: none of the schemes {','.join(schemes)} has a load plan to "
                f"choose (coded and joint have)")
    if args.transport != "mpi":
        return "--plan time plans for the measured links: it needs --transport mpi"
    if args.relay_stragglers:
        return ("--plan time does not go with --relay-stragglers: the tolerant exchange "
                "has a plan of its own")
    if args.checkpoint or args.resume:
        return ("--plan time follows the links measured at start-up, which a resumed job "
                "would measure anew: it does not go with --checkpoint or --resume")
    return None


def usage_error(rank, message) -> int:
    """Two lines on rank 0: the short usage and the problem. Returns the exit code."""
    if rank == 0:
        sys.stderr.write(f"usage: {USAGE}\nhmtl_mpi: error: {message}\n")
    return EXIT_BAD_INPUT
