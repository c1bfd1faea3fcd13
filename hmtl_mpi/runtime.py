"""The MPI job: ``mpirun -n 1+H+K python -m hmtl_mpi [options]``.

Setup: rank 0 reads the topology, plans the scheme, builds and verifies the code
(:mod:`hmtl_mpi.plan`, :mod:`hmtl_mpi.coding`) and broadcasts G and the code as
one byte buffer; all ranks then build the communicators that mirror G and the
same learner. A setup error (bad topology, wrong number of ranks, bad data) is
printed once by rank 0 and every rank exits with status 2.

Per iteration, every phase of :data:`hmtl_mpi.roles.PHASE_ORDER` is delimited by
a barrier on all ranks before and after it, and its time is the server's
``MPI.Wtime`` between the two barrier exits, so each phase's figure is the time
until its slowest rank finished. ``total`` is the whole iteration, barriers
included. After the timed part, outside every figure: bytes sent per link class
are summed over ranks, and the IVs every relay (coded) or the server (uncoded)
holds are checked against the users' by SHA-256 digest.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import sys
import time

import numpy as np

from .cli import positive_float, positive_int, seed_value
from .failures import EXIT_BAD_INPUT, EXIT_CHECK_FAILED

PROG = "mpirun -n 1+H+K python -m hmtl_mpi"
USAGE = f"{PROG} [options]   (--help lists them)"
SETUP_TIMEOUT = 600.0   # seconds the other ranks wait for rank 0's plan and code
DEFAULT_ITERATIONS = 30  # MOCHA on digits ends below the per-task SVM baseline (README)

EPILOG = """\
ranks: world rank 0 is the server, ranks 1..H the relays, ranks H+1..H+K the
users, so the job needs exactly 1 + H + K ranks (16 for paper-fig2).

report (--report PATH, JSON): see README.md, "The report". Times are seconds of
MPI.Wtime on the server between barriers; on one machine with more ranks than
cores the ranks share CPUs and the links are memory copies.

exit codes: 0 success; 1 a lossless check failed; 2 bad input (flags, topology,
data, number of ranks); 3 an exception on a rank; 4 a rank stopped answering
(--timeout); 130 interrupted (Ctrl-C), 143 terminated. A rank killed by a signal
is named by its watcher; mpiexec then exits with its own code. Every abnormal
end prints one "hmtl_mpi:" line naming the rank, its role, the iteration and the
phase; HMTL_TRACEBACK=1 adds the traceback of an exception.
"""


class SetupError(Exception):
    """A problem found before training; printed once, exit status 2."""


class _ArgError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of printing, so only rank 0 speaks."""

    def error(self, message):
        raise _ArgError(message)


FAULT_KINDS = ("raise", "hang", "kill")


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


def build_parser() -> argparse.ArgumentParser:
    from .learners import DATASETS

    p = _Parser(prog=PROG, description="Hierarchical multi-task learning over MPI: a server, H "
                "relays and K users; coded (Hu, Li, Cheng, Wu) and uncoded relay<->server "
                "exchange, every byte and phase measured.",
                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--topology", default="paper-fig2",
                   help="G as a .npy file (H x K 0/1, rows relays) or a built-in name "
                        "(default: paper-fig2, 16 ranks)")
    p.add_argument("--scheme", choices=("coded", "uncoded", "both"), default="both",
                   help="which scheme to run; 'both' runs uncoded then coded on identical "
                        "inputs and compares them (default: both)")
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
                        "MPI_Bcast")
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
    p.add_argument("--inner", type=positive_int, default=None,
                   help="MOCHA: refresh Sigma every INNER iterations")
    p.add_argument("--eval-every", type=positive_int, default=None,
                   help="MOCHA: report test error every N iterations (default: at the end)")
    p.add_argument("--quiet", action="store_true", help="no per-iteration progress lines")
    p.add_argument("--inject-fault", type=fault_spec, metavar="RANK:ITERATION[:KIND]",
                   help="testing aid: on world rank RANK in iteration ITERATION (0-based, "
                        "mid-iteration, at relay_to_server) raise an exception (KIND raise, the "
                        "default), stop responding (hang) or die by SIGKILL (kill); the job "
                        "must end naming that rank")
    return p


# --- setup ----------------------------------------------------------------------------

def parse_args(argv, rank, size):
    """Parse on every rank; only rank 0 prints errors or help. Returns (args, exit code).

    Everything that can be checked without the topology or the file system is
    checked here, identically on every rank, so every rank stops together.
    """
    parser = build_parser()
    quiet = open(os.devnull, "w") if rank != 0 else None
    saved = sys.stdout
    try:
        if quiet is not None:
            sys.stdout = quiet            # --help is printed by rank 0 only
        args = parser.parse_args(argv)
    except _ArgError as exc:
        return None, usage_error(rank, str(exc))
    except SystemExit as exc:       # --help
        return None, int(exc.code or 0)
    finally:
        sys.stdout = saved
        if quiet is not None:
            quiet.close()
    problem = None
    if args.dim is not None and args.dataset != "synthetic":
        problem = f"--dim applies to --dataset synthetic only; {args.dataset} fixes the dimension"
    elif args.cv and args.dataset == "synthetic":
        problem = "--cv needs a learning dataset (digits, mnist, har)"
    elif args.cv and args.lam is not None:
        problem = "give either --lam or --cv, not both"
    elif args.dataset == "har" and not args.data_dir:
        problem = "--dataset har needs --data-dir (the UCI HAR folder)"
    elif args.report is not None and not args.report.strip():
        problem = "--report: the path is empty"
    elif args.inject_fault and args.inject_fault[0] >= size:
        problem = (f"--inject-fault: rank {args.inject_fault[0]} does not exist; the job has "
                   f"ranks 0 .. {size - 1}")
    elif args.inject_fault and args.inject_fault[1] >= args.iterations:
        problem = (f"--inject-fault: iteration {args.inject_fault[1]} never runs; iterations are "
                   f"0 .. {args.iterations - 1} (--iterations {args.iterations})")
    if problem:
        return None, usage_error(rank, problem)
    return args, None


def usage_error(rank, message) -> int:
    """Two lines on rank 0: the short usage and the problem. Returns the exit code."""
    if rank == 0:
        sys.stderr.write(f"usage: {USAGE}\nhmtl_mpi: error: {message}\n")
    return EXIT_BAD_INPUT


def learner_for(args, K):
    from .learners import make_learner
    return make_learner(args.dataset, K, args.dim, seed=args.seed, data_dir=args.data_dir,
                        har_tasks=args.har_tasks, lam=args.lam, inner=args.inner)


def setup_on_server(args, world_size):
    """Rank 0: topology, plan and code; raises SetupError with a clear message."""
    from .topology import TopologyError, load_topology

    try:
        G = load_topology(args.topology)
    except TopologyError as exc:
        raise SetupError(str(exc)) from None
    H, K = G.shape
    if args.report:
        check_report_path(args.report, args.iterations)
    if world_size != 1 + H + K:
        raise SetupError(
            f"topology {args.topology} has H = {H} relays and K = {K} users, so the job needs "
            f"1 + H + K = {1 + H + K} ranks (1 server, {H} relays, {K} users); "
            f"{world_size} were started. Run: mpirun -n {1 + H + K} python -m hmtl_mpi "
            f"--topology {args.topology} ...")
    try:
        learner = learner_for(args, K)           # fail here, once, on bad data
    except (ValueError, OSError) as exc:
        raise SetupError(f"dataset {args.dataset}: {exc}") from None
    if args.cv:
        from .datasets import load_tasks
        from .mocha import cross_validate_lambda
        tasks = load_tasks(args.dataset, K, seed=args.seed, data_dir=args.data_dir,
                           har_tasks=args.har_tasks)
        args.lam = cross_validate_lambda(tasks, seed=args.seed, inner=learner.inner)
        print(f"hmtl_mpi: lambda = {args.lam:g} chosen by 5-fold cross-validation", flush=True)
    from .plan import make_plan
    plan = make_plan(G)
    code = None
    if args.scheme in ("coded", "both"):
        from .coding import build_code
        code = build_code(plan, seed=args.seed)
    return G, plan, code


REPORT_BYTES_PER_ITERATION = 2048     # generous: a report's iteration record is ~700 bytes


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
        free = os.statvfs(folder).f_bavail * os.statvfs(folder).f_frsize
    except OSError:
        return
    if free < need:
        raise SetupError(f"--report {path}: only {free} bytes free in {folder}, the report "
                         f"needs up to {need}")


def make_comms(world, G):
    """Communicators mirroring G (see :mod:`hmtl_mpi.roles`)."""
    from mpi4py import MPI

    H, K = G.shape
    rank = world.Get_rank()
    group = {}
    world_group = world.Get_group()
    for i in range(H):           # increasing i on every member: deadlock-free
        members = [1 + i] + [H + 1 + int(k) for k in np.flatnonzero(G[i])]
        if rank in members:
            sub = world_group.Incl(members)
            group[i] = world.Create_group(sub, tag=i)
            sub.Free()
    world_group.Free()
    uplink = world.Split(0 if rank <= H else MPI.UNDEFINED, rank)
    relays = world.Split(0 if 1 <= rank <= H else MPI.UNDEFINED, rank)
    return {"group": group,
            "uplink": None if uplink == MPI.COMM_NULL else uplink,
            "relays": None if relays == MPI.COMM_NULL else relays}


# --- one scheme -----------------------------------------------------------------------

def run_scheme(scheme, args, world, links, state, G, plan, code, comms):
    """Run ``args.iterations`` iterations of one scheme; rank 0 returns its report."""
    from mpi4py import MPI

    from .roles import PHASE_ORDER, Job, Relay, Server, User
    from .transport import LINK_CLASSES, PHASES

    rank = world.Get_rank()
    H, K = G.shape
    state.step("building the learner", scheme=scheme, iteration=None)
    learner = learner_for(args, K)
    job = Job(G, scheme, learner, links, comms, code=code if scheme == "coded" else None,
              downlink=args.downlink)
    if rank == 0:
        me = Server(job)
    elif rank <= H:
        me = Relay(job, rank - 1)
    else:
        me = User(job, rank - 1 - H)
    state.step("warm-up (JIT compilation)")
    learner.warm_up()                  # JIT compilation stays out of every timed phase
    iv_bytes = 8 * learner.dim
    iterations = []
    for it in range(args.iterations):
        state.step("start of the iteration", iteration=it)
        links.reset_counters()
        seconds = dict.fromkeys(PHASES, 0.0)
        links.barrier(world, "start of iteration")
        start = MPI.Wtime()
        for key, method in PHASE_ORDER[scheme]:
            state.step(f"phase {method}", note="at the barrier before it")
            links.barrier(world, f"before {method}")
            t0 = MPI.Wtime()
            state.step(f"phase {method}")
            if args.inject_fault and args.inject_fault[:2] == (rank, it) \
                    and method == "relay_to_server":
                inject_fault(args.inject_fault[2], rank, it)
            step = getattr(me, method, None)
            if step is not None:
                step(it)
            state.step(f"phase {method}", note="at the barrier after it")
            links.barrier(world, f"after {method}")
            seconds[key] += MPI.Wtime() - t0
        seconds["total"] = MPI.Wtime() - start
        state.step("checks (byte counts, IV digests)")
        sent = np.array([links.sent[c] for c in LINK_CLASSES], dtype=np.int64)
        total = np.zeros_like(sent)
        links.wait(world.Ireduce(sent, total, op=MPI.SUM, root=0), "byte counters")
        ivs_ok = check_ivs(world, links, me, K)
        if rank == 0:
            record = {"iteration": it, "seconds": seconds,
                      "bytes": {c: int(b) for c, b in zip(LINK_CLASSES, total)},
                      "ivs_bit_exact": ivs_ok}
            iterations.append(record)
            if not args.quiet:
                print(progress_line(scheme, it, args.iterations, record, iv_bytes), flush=True)
        if learner.evaluates and args.eval_every and (it + 1) % args.eval_every == 0 \
                and it + 1 < args.iterations:
            state.step("test errors")
            acc = gather_accuracy(world, links, me, K)
            if rank == 0 and not args.quiet:
                print(f"[{scheme}] iteration {it + 1}: mean test error "
                      f"{acc['mean_test_error']:.4f}", flush=True)
    state.step("final checks (model digests, test errors)", iteration=None)
    digest, delivered = model_digests(world, links, me, K)
    accuracy = gather_accuracy(world, links, me, K) if learner.evaluates else None
    if rank != 0:
        return None
    report = {
        "scheme": scheme, "K": K, "H": H, "dataset": args.dataset, "dim": learner.dim,
        "iv_bytes": iv_bytes, "model_bytes": 8 * (learner.model_len - learner.extra_len),
        "model_extra_bytes": 8 * learner.extra_len,
        "downlink_method": args.downlink if scheme == "coded" else "point-to-point",
        "iterations": iterations,
        "measured_loads": {
            "uplink": float(np.mean([r["bytes"]["relay_to_server"] for r in iterations])) / iv_bytes,
            "downlink": float(np.mean([r["bytes"]["server_to_relay"] for r in iterations])) / iv_bytes,
        },
        "planned_loads": ({"uplink": float(plan.uplink_load), "downlink": float(plan.downlink_load)}
                          if scheme == "coded" else {"uplink": float(K), "downlink": float(K)}),
        "median_seconds": {p: float(np.median([r["seconds"][p] for r in iterations])) for p in PHASES},
        "ivs_bit_exact": all(r["ivs_bit_exact"] for r in iterations),
        "models_delivered_intact": delivered,
        "model_digest": digest,
    }
    if code is not None and scheme == "coded":
        report["code_seed"] = code.seed
        report["code_attempts"] = code.attempts
    if accuracy is not None:
        report["accuracy"] = accuracy
    return report


def inject_fault(kind, rank, it):
    """--inject-fault: fail, hang or die here, to show that the job still ends naming us."""
    if kind == "hang":
        while True:
            time.sleep(1)
    if kind == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    raise RuntimeError(f"fault injected on rank {rank} in iteration {it} (--inject-fault)")


def _sha(buf) -> np.ndarray:
    """SHA-256 of an array's bytes, as 32 uint8."""
    return np.frombuffer(hashlib.sha256(np.ascontiguousarray(buf).tobytes()).digest(), np.uint8)


def gather_to_root(world, links, arrays, what):
    """Gather same-shaped arrays from every rank to rank 0 (stacked by rank; None elsewhere)."""
    root = world.Get_rank() == 0
    out = [np.empty((world.Get_size(),) + a.shape, dtype=a.dtype) if root else None for a in arrays]
    links.wait([world.Igather(a, o, root=0) for a, o in zip(arrays, out)], what)
    return out


def check_ivs(world, links, me, K) -> bool:
    """Compare, by SHA-256, the IVs every holder has with what the users sent."""
    table = np.zeros((K, 32), dtype=np.uint8)
    known = np.zeros(K, dtype=np.uint8)
    if me.role == "user":
        table[me.k] = _sha(me.iv)
    elif me.known_ivs() is not None:
        table[:] = [_sha(v) for v in me.known_ivs()]
        known[:] = 1
    tables, flags = gather_to_root(world, links, (table, known), "IV digests")
    if world.Get_rank() != 0:
        return True
    size = world.Get_size()
    H = size - 1 - K
    sent = tables[H + 1:][np.arange(K), np.arange(K)]           # user k's own digest
    holders = [r for r in range(size) if flags[r].all()]
    return bool(holders) and all((tables[r] == sent).all() for r in holders)


def model_digests(world, links, me, K):
    """SHA-256 of the final models in user order, and whether every user got its own."""
    table = np.zeros((K + 1, 32), dtype=np.uint8)
    flag = np.zeros(1, dtype=np.uint8)
    if me.role == "user":
        table[me.k] = _sha(me.model)
    elif me.final_models() is not None:
        models = me.final_models()
        table[:K] = [_sha(m) for m in models]
        table[K] = _sha(models)
        flag[0] = 1
    tables, flags = gather_to_root(world, links, (table, flag), "model digests")
    if world.Get_rank() != 0:
        return None, None
    size = world.Get_size()
    H = size - 1 - K
    holders = [r for r in range(size) if flags[r, 0]]
    received = tables[H + 1:][np.arange(K), np.arange(K)]
    agree = all((tables[r] == tables[holders[0]]).all() for r in holders)
    delivered = agree and bool((received == tables[holders[0]][:K]).all())
    return tables[holders[0]][K].tobytes().hex(), delivered


def gather_accuracy(world, links, me, K):
    """Users' test errors gathered to rank 0 (outside the timed phases)."""
    err = np.array([np.nan])
    if me.role == "user":
        value = me.job.learner.test_error(me.k, me.model)
        err[0] = np.nan if value is None else value
    (errs,) = gather_to_root(world, links, (err,), "test errors")
    if world.Get_rank() != 0:
        return None
    size = world.Get_size()
    per_task = [float(x) for x in errs[size - K:, 0]]
    return {"mean_test_error": float(np.mean(per_task)), "per_task": per_task}


# --- output ---------------------------------------------------------------------------

def progress_line(scheme, it, n, record, iv_bytes) -> str:
    s, b = record["seconds"], record["bytes"]
    return (f"[{scheme:>7}] iteration {it + 1}/{n}: total {s['total']:.4f} s "
            f"(up {s['relay_to_server']:.4f} s, down {s['server_to_relay']:.4f} s)  "
            f"relay->server {b['relay_to_server'] / iv_bytes:.3f} IV, "
            f"server->relay {b['server_to_relay'] / iv_bytes:.3f} IV, "
            f"IVs {'bit-exact' if record['ivs_bit_exact'] else 'MISMATCH'}")


def overhead_notes(reports) -> list:
    """Why a measured load exceeds the plan, in bytes per iteration (the wire tells the truth)."""
    notes = []
    for r in reports:
        for key, label in (("uplink", "relay->server"), ("downlink", "server->relay")):
            extra = (r["measured_loads"][key] - r["planned_loads"][key]) * r["iv_bytes"]
            if extra >= 0.5:
                notes.append(f"    {r['scheme']} {label}: {extra:.0f} bytes per iteration above the "
                             f"plan ({extra / r['iv_bytes']:.3f} IV of {r['iv_bytes']} bytes)")
    if notes:
        notes.insert(0, "  Above the plan by what the wire carries besides IVs: the downlink's "
                        "8-byte length per round, padding of IVs\n  to whole units, escaped coded "
                        "symbols (4 bytes each), the models' Sigma/rho after a refresh:")
    return notes


def summary(reports, oversubscribed: bool) -> str:
    from .transport import PHASES

    names = [r["scheme"] for r in reports]
    lines = ["", "Loads (IVs per iteration, bytes on the wire / bytes of one IV):"]
    lines.append(f"  {'':18}" + "".join(f"{n + ' meas.':>16}{n + ' plan':>14}" for n in names))
    for key, label in (("uplink", "relay->server"), ("downlink", "server->relay")):
        lines.append(f"  {label:18}" + "".join(
            f"{r['measured_loads'][key]:>16.4f}{r['planned_loads'][key]:>14.4g}" for r in reports))
    lines += overhead_notes(reports)
    lines.append("")
    lines.append("Median seconds per phase" + (
        " (more ranks than cores: ranks share CPUs, links are memory copies)" if oversubscribed else "")
                 + ":")
    lines.append(f"  {'phase':18}" + "".join(f"{n:>14}" for n in names)
                 + ("    coded/uncoded" if names == ["uncoded", "coded"] else ""))
    for p in PHASES:
        vals = [r["median_seconds"][p] for r in reports]
        ratio = ""
        if names == ["uncoded", "coded"] and vals[0] > 0:
            ratio = f"{vals[1] / vals[0]:>17.3f}"
        lines.append(f"  {p:18}" + "".join(f"{v:>14.6f}" for v in vals) + ratio)
    lines.append("")
    for r in reports:
        acc = r.get("accuracy")
        lines.append(f"  {r['scheme']:>7}: IVs bit-exact at every holder: {r['ivs_bit_exact']}; "
                     f"models delivered intact: {r['models_delivered_intact']}; "
                     f"model digest {r['model_digest'][:16]}..."
                     + (f"; mean test error {acc['mean_test_error']:.4f}" if acc else ""))
    acc = reports[0].get("accuracy")
    if acc and "baseline_local_error" in acc:
        lines.append(f"  baselines: independent per-task SVMs {acc['baseline_local_error']:.4f}, "
                     f"one global SVM {acc['baseline_global_error']:.4f} (mean test error)")
    if len(reports) == 2:
        same = reports[0]["model_digest"] == reports[1]["model_digest"]
        lines.append(f"  coded and uncoded final models bit-identical: {same}")
    return "\n".join(lines)


class ReportError(Exception):
    """The report could not be written (a full disk found at the end)."""


def write_report(path, payload) -> None:
    """Write atomically: a failed run never leaves a half-written report, nor a temporary file."""
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "w") as fh:
            json.dump(payload, fh, indent=1)
            fh.write("\n")
        os.replace(tmp, path)
    except OSError as exc:
        raise ReportError(f"--report {path}: could not be written ({exc.strerror or exc}); "
                          f"no report was left") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def role_names(H: int):
    """World rank -> role, as messages name it (relays and users numbered from 1)."""
    return lambda r: "server" if r == 0 else (f"relay {r}" if r <= H else f"user {r - H}")


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
        args, exit_code = parse_args(sys.argv[1:] if argv is None else argv, rank, world.Get_size())
        if args is None:
            return exit_code
        timeout = args.timeout
        return run_job(args, world, state, control)
    except BaseException as exc:   # noqa: BLE001 - any failure on any rank ends the whole job
        end_job(exc, state, control, timeout)
        return 1


def run_job(args, world, state, control) -> int:
    """Setup, every scheme's iterations, the summary and the report."""
    from .coding import Code
    from .transport import Links

    rank = world.Get_rank()
    links = Links(world, args.timeout, control, state)
    # rank 0 may spend a while planning (cvxpy) and building the code: the others wait longer
    setup_timeout = max(args.timeout, SETUP_TIMEOUT)
    state.step("setup")
    # rank 0 sets up; the others learn the outcome from one broadcast
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
                               "rank 0's setup (plan and code)", setup_timeout)
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
    state.set_roles(role_names(H))
    lam = np.array([args.lam if args.lam is not None else np.nan])
    links.bcast(world, lam, 0, "lambda")        # --cv chose it on rank 0
    args.lam = None if np.isnan(lam[0]) else float(lam[0])
    plan = setup[1] if rank == 0 else None
    code = setup[2] if rank == 0 else None
    if args.scheme != "uncoded":
        cbuf = links.bcast_bytes(world, code.to_buffer() if rank == 0 else None, 0, "code")
        if rank != 0:
            code = Code.from_buffer(cbuf)
    links.barrier(world, "every rank before building the communicators")
    comms = make_comms(world, G)
    if rank == 0:
        oversubscribed = world.Get_size() > (os.cpu_count() or 1)
        print(f"hmtl_mpi: {world.Get_size()} ranks (1 server, {H} relays, {K} users) on "
              f"{os.cpu_count()} cores{' (oversubscribed)' if oversubscribed else ''}; "
              f"topology {args.topology}; dataset {args.dataset}; setup {setup_seconds:.2f} s; "
              f"planned coded loads ({float(plan.uplink_load):.4g}, "
              f"{float(plan.downlink_load):.4g}), uncoded ({K}, {K})", flush=True)
    schemes = ["uncoded", "coded"] if args.scheme == "both" else [args.scheme]
    reports = []
    for scheme in schemes:
        state.step("start of the run", scheme=scheme, iteration=None)
        links.barrier(world, f"start of {scheme}")
        reports.append(run_scheme(scheme, args, world, links, state, G, plan, code, comms))
    state.step("summary and report", scheme=None, iteration=None)
    if rank == 0 and "accuracy" in reports[0]:
        state.step("summary and report (SVM baselines)")
        baselines = learner_for(args, K).baselines()
        for r in reports:
            r["accuracy"].update(baselines)
            r["accuracy"]["lambda"] = args.lam if args.lam is not None else "default"
    if rank == 0:
        print(summary(reports, oversubscribed), flush=True)
        if args.report:
            state.step("writing the report")
            payload = reports[0] if len(reports) == 1 else {
                "scheme": "both", "K": K, "H": H, "iv_bytes": reports[0]["iv_bytes"],
                "runs": {r["scheme"]: r for r in reports},
                "model_digests_equal": reports[0]["model_digest"] == reports[1]["model_digest"],
            }
            payload["ranks"] = world.Get_size()
            payload["cores"] = os.cpu_count()
            payload["topology"] = str(args.topology)
            write_report(args.report, payload)
            print(f"report written to {args.report}", flush=True)
    state.step("end of the job")
    links.wait(world.Ibarrier(), "end of job (rank 0 computing baselines, writing the report)",
               setup_timeout)
    if rank == 0 and len(reports) == 2 and reports[0]["model_digest"] != reports[1]["model_digest"]:
        sys.stderr.write("hmtl_mpi: the coded and uncoded runs ended with different models "
                         "(lossless check failed)\n")
        return EXIT_CHECK_FAILED
    return 0
