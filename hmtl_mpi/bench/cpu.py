"""Where the CPU goes at K = 40: ``python -m hmtl_mpi.bench cpu [options]`` (issue 23).

The paper's Fig. 6 setting on this machine (H = 5 relays, every user at r = 3 of them
at random, 400 KB IVs: ``--dim 51200``, K = 40: 46 ranks). Runs the MPI job
(``--scheme coded,uncoded``) once per ``HMTL_POLL_MAX`` value (how long a waiting rank
may sleep between two tests, :mod:`hmtl_mpi.wire.transport`; the first value is the
old one, 1 ms, the last the default), alternating them ``--repeats`` times, and prints
side by side: coded's encode and decode phases (median seconds) against the job's own
prediction from the kernel speed it probed, and the CPU seconds each role spent per
iteration (the report's ``median_cpu_seconds``: every rank's ``time.process_time`` per
step, waiting included), split into the relays' coding and the users' waiting.

For reference, in this process and the same run: the coding kernels alone on this
topology (``relay_encode`` and ``relay_decode`` of every relay, CPU seconds, median of
3), and what they would take at best on this machine's cores (the busiest relay, or
all relays' CPU shared by the cores, whichever is longer). Load averages are printed
with every job: on a shared machine the figures are noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

from ..cli import positive_int
from ..codes import coding
from ..planning.topology import random_regular, validate
from ..schemes import get
from ..wire.transport import POLL_MIN
from . import mpiexec


def kernel_alone(G: np.ndarray, dim: int, repeats: int = 3) -> dict:
    """CPU seconds of every relay's encode and decode (with the stacking the relay does)."""
    code = get("coded").plan(G).code
    rng = np.random.default_rng(0)
    ivs = rng.standard_normal((code.K, dim))
    mine = [{int(k): ivs[k] for k in np.flatnonzero(G[i])} for i in range(code.H)]
    ups = {i: coding.relay_encode(code, i, mine[i]) for i in range(code.H)}
    downs = [coding.server_combine(code, b, {i: ups[i][b] for i in range(code.H)}, dim)
             for b in range(len(code.blocks))]
    enc, dec = np.zeros((repeats, code.H)), np.zeros((repeats, code.H))
    for r in range(repeats):
        for i in range(code.H):
            t = time.process_time()
            coding.relay_encode(code, i, mine[i])
            enc[r, i] = time.process_time() - t
            t = time.process_time()
            out = coding.relay_decode(code, i, mine[i], downs, dim)
            np.stack([out[k] for k in range(code.K)])
            dec[r, i] = time.process_time() - t
            if not all(np.array_equal(out[k].view(np.uint64), ivs[k].view(np.uint64))
                       for k in range(code.K)):
                raise RuntimeError(f"relay {i + 1}: decoded IVs differ")
    enc, dec = np.median(enc, axis=0), np.median(dec, axis=0)
    cores = os.cpu_count() or 1
    return {"encode_cpu_per_relay": enc.tolist(), "decode_cpu_per_relay": dec.tolist(),
            "encode_cpu_all": float(enc.sum()), "decode_cpu_all": float(dec.sum()),
            "encode_best_wall": float(max(enc.max(), enc.sum() / cores)),
            "decode_best_wall": float(max(dec.max(), dec.sum() / cores))}


def run_job(topology: str, dim: int, iterations: int, poll_max: float) -> dict:
    """One job (coded, uncoded) with ``HMTL_POLL_MAX=poll_max``: its figures and the load."""
    H, K = np.load(topology).shape
    with tempfile.TemporaryDirectory() as tmp:
        report = os.path.join(tmp, "r.json")
        cmd = [mpiexec(), "-n", str(1 + H + K), sys.executable, "-m", "hmtl_mpi",
               "--topology", topology, "--dataset", "synthetic", "--dim", str(dim),
               "--scheme", "coded,uncoded", "--iterations", str(iterations), "--quiet",
               "--report", report]
        env = dict(os.environ, HMTL_POLL_MAX=repr(poll_max))
        load0, t0 = os.getloadavg()[0], time.monotonic()
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, env=env)
        wall = time.monotonic() - t0
        if proc.returncode != 0:
            raise RuntimeError(f"HMTL_POLL_MAX={poll_max}: job failed "
                               f"(exit {proc.returncode}):\n{proc.stderr[-2000:]}")
        with open(report) as fh:
            data = json.load(fh)
    coded, uncoded = data["runs"]["coded"], data["runs"]["uncoded"]
    cpu = coded["median_cpu_seconds"]
    return {"poll_max": poll_max, "wall_s": wall, "load": (load0, os.getloadavg()[0]),
            "digests_equal": data["model_digests_equal"],
            "coded": coded["median_seconds"], "uncoded": uncoded["median_seconds"],
            "predicted": coded["predicted_seconds"], "cpu": cpu,
            "uncoded_cpu": uncoded["median_cpu_seconds"]}


def run(K=40, H=5, r=3, dim=51_200, iterations=5, polls=(0.001, 0.02), repeats=1,
        seed=0, json_out=False) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        topology = os.path.join(tmp, "g.npy")
        G = validate(random_regular(K, H, r, seed), "random")
        np.save(topology, G)
        kernel = kernel_alone(G, dim)
        jobs = [run_job(topology, dim, iterations, p) for _ in range(repeats) for p in polls]
    out = {"K": K, "H": H, "r": r, "dim": dim, "iv_bytes": 8 * dim, "iterations": iterations,
           "cores": os.cpu_count(), "kernel_alone": kernel, "jobs": jobs}
    if json_out:
        print(json.dumps(out, indent=1))
        return out
    print(f"K = {K}, H = {H}, r = {r} (random, seed {seed}), {8 * dim / 1e3:g} KB IVs, "
          f"{1 + H + K} ranks on {os.cpu_count()} cores, median of {iterations} iterations")
    print(f"kernel alone, this process (CPU s per iteration): encode all relays "
          f"{kernel['encode_cpu_all']:.3f} (busiest {max(kernel['encode_cpu_per_relay']):.3f}), "
          f"decode all relays {kernel['decode_cpu_all']:.3f} (busiest "
          f"{max(kernel['decode_cpu_per_relay']):.3f}); best wall on {os.cpu_count()} cores: "
          f"encode {kernel['encode_best_wall']:.3f}, decode {kernel['decode_best_wall']:.3f}")
    head = ("poll max", "encode", "pred.", "decode", "pred.", "coded", "uncoded",
            "relay dec.", "users", "users wait", "all ranks", "load")
    print("  ".join(f"{h:>10}" for h in head))
    for j in jobs:
        c, p, cpu = j["coded"], j["predicted"], j["cpu"]
        users = cpu.get("user", {})
        waiting = users.get("relay_to_user", 0.0) + users.get("end_barrier", 0.0)
        row = (f"{1e3 * j['poll_max']:g} ms", c["encode"], p["encode"], c["decode"], p["decode"],
               c["total"], j["uncoded"]["total"], cpu.get("relay", {}).get("decode", 0.0),
               users.get("total", 0.0), waiting, sum(v["total"] for v in cpu.values()),
               f"{j['load'][0]:.1f}-{j['load'][1]:.1f}")
        print("  ".join(f"{v:>10.3f}" if isinstance(v, float) else f"{v:>10}" for v in row))
    print("seconds per iteration; pred. = the job's prediction from the kernel speed it probed "
          "(busiest relay, one free core); then CPU seconds summed over ranks: the relays' "
          "decode step, the users' whole iteration, the users' relay_to_user step and end "
          "barrier (waiting), all ranks; final models bit-identical in every "
          f"job: {all(j['digests_equal'] for j in jobs)}")
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hmtl_mpi.bench cpu", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("-K", type=positive_int, default=40, help="users (default 40)")
    parser.add_argument("-H", type=positive_int, default=5, help="relays (default 5)")
    parser.add_argument("--r", type=positive_int, default=3, help="relays per user (default 3)")
    parser.add_argument("--dim", type=positive_int, default=51_200,
                        help="values per IV (default 51200: 400 KB)")
    parser.add_argument("--iterations", type=positive_int, default=5, help="iterations per job")
    parser.add_argument("--repeats", type=positive_int, default=1,
                        help="how many times to run the jobs, alternating (default 1)")
    parser.add_argument("--polls", default="0.001,0.02",
                        help="HMTL_POLL_MAX values in seconds, comma-separated "
                             "(default 0.001,0.02: the old cap, then the default)")
    args = parser.parse_args(argv)
    try:
        polls = [float(p) for p in args.polls.split(",")]
    except ValueError:
        polls = []
    if not polls or not all(POLL_MIN <= p <= 1.0 for p in polls):
        parser.error(f"--polls {args.polls!r}: give seconds from {POLL_MIN:g} to 1, comma-separated")
    if not 1 <= args.r <= args.H - 1:
        parser.error(f"--r {args.r}: must be between 1 and H - 1 = {args.H - 1}")
    run(args.K, args.H, args.r, args.dim, args.iterations, polls, args.repeats, json_out=args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
