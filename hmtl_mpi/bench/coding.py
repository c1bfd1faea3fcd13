"""Throughput of the coding layer at realistic shapes, next to the memory ceiling.

Measured in one run (warm-up first, then the median of several repetitions). Every
row that goes through :func:`hmtl_mpi.codes.coding.combine_mod_p` is measured on both
of its paths, the NumPy one and the compiled kernel, alternating call by call:

* ceilings -- ``numpy.copyto`` of as many bytes as the encode's input, and of its input
              plus output (the memory traffic of one pass); float64 multiply-adds per
              CPU second of a 256^3 BLAS product (every term of both paths is one), and
              the NumPy path's three passes (convert, GEMM, reduce) timed apart;
* encode   -- ``combine_mod_p``: 10 segments of 1 MB into 8 combinations (a relay's
              uplink, eq. 26), and the shapes 7 x 7, 12 x 20 and 1 x 10;
* relay_encode -- :func:`relay_encode` of one relay of paper-fig2, every round;
* combine  -- :func:`server_combine`: all uplink messages of one round of paper-fig2
              (eq. 31), escapes included;
* decode   -- :func:`relay_decode` at one relay of paper-fig2, every round, and at
              a relay of Theorem 3's symmetric(5, 2) design;
* the same combine and decode with the random code of paper-fig2 (the structured one is
  the default: :mod:`hmtl_mpi.codes.structured`);
* galois   -- galois' own ``GF(65537)`` matmul of the encode's coefficients on a
              slice of its segments (the reference the notes measured), and
              ``combine_mod_p`` on the same slice.

For every decode row it also prints the share of the compiled path's CPU spent in the
kernel itself (each call timed), and the kernel's own MB per CPU second: the rest is
the decoder's work around it.

Throughput is MB/s of *input* payload (1 MB = 1e6 bytes): the uint16 symbols the
kernel reads (for decode: the broadcast rows it uses plus the known IVs' units).

First-use costs are measured in a fresh subprocess: ``import hmtl_mpi.codes.coding``,
the first (tiny) ``combine_mod_p``, the first call on the compiled kernel (numba's
import and the kernel from numba's disk cache, or its compilation when the cache is
cold), ``import galois`` + ``galois.GF(65537)``, ``make_plan`` and ``build_code``
for paper-fig2 (``build_code`` after the field exists).

Command line::

    python -m hmtl_mpi.bench coding [--json] [--dim D] [--repeats N]
    python -m hmtl_mpi.bench coding --scale [--sizes KxH,...] [--random-sizes KxH,...] [--json]

``--scale`` measures K = 1,000 to 100,000 instead (:mod:`.scale`).

BLAS: ``combine_mod_p`` limits BLAS to ``coding.BLAS_THREADS`` threads (1) while it
runs. ``OPENBLAS_CORETYPE`` (if set) picks OpenBLAS' kernel family; it is
reported, not changed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np

from . import scale
from ..cli import positive_int
from ..codes import coding
from ..planning.topology import paper_fig2, symmetric
from ..schemes.coded import Coded
from ..schemes.joint import Joint

MB = 1e6

_FIRST_USE = r"""
import json, time
t0 = time.perf_counter()
import hmtl_mpi.codes.coding as coding
t1 = time.perf_counter()
import numpy as np
coding.combine_mod_p(np.ones((2, 3)), np.ones((3, 5), np.uint16), np.empty((2, 5), np.uint16))
t1b = time.perf_counter()
c0 = time.process_time()
coding.KERNEL = True
coding.combine_mod_p(np.ones((8, 10)), np.ones((10, 5000), np.uint16), np.empty((8, 5000), np.uint16))
c1 = time.process_time()
t1c = time.perf_counter()
import galois
t2 = time.perf_counter()
GF = galois.GF(65537)
t3 = time.perf_counter()
from hmtl_mpi.planning.hierarchical import make_plan
from hmtl_mpi.schemes.coded import Coded
from hmtl_mpi.planning.topology import paper_fig2
t4 = time.perf_counter()
plan = make_plan(paper_fig2())
t5 = time.perf_counter()
code = coding.build_code(plan.G, Coded.layouts(plan))
t6 = time.perf_counter()
print(json.dumps({"import_coding_s": t1 - t0, "first_combine_s": t1b - t1,
                  "first_kernel_combine_s": t1c - t1b, "first_kernel_combine_cpu_s": c1 - c0,
                  "import_galois_s": t2 - t1c,
                  "galois_field_s": t3 - t2, "import_plan_s": t4 - t3,
                  "make_plan_s": t5 - t4, "build_code_s": t6 - t5}))
"""


def message_units(blk) -> int:
    """Units of all uplink messages of a block (the broadcast's inputs)."""
    return int(np.dot(blk.messages, blk.width))


_CPU_TIMES: list = []   # CPU seconds of the last _median_time, by call


def _median_time(fn, repeats: int) -> float:
    """Wall seconds per call: one warm-up call, then the median of ``repeats`` calls.

    The median CPU seconds of the same calls (this process, all threads) is
    appended to ``_CPU_TIMES``: on a shared machine wall time measures the
    neighbours too, CPU time mostly only us.
    """
    fn()
    times, cpu = [], []
    for _ in range(repeats):
        c = time.process_time()
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    _CPU_TIMES.append(statistics.median(cpu))
    return statistics.median(times)


def _paired_times(fn, repeats: int) -> dict:
    """Median (wall, CPU) seconds per call on each path of ``combine_mod_p``
    ({"numpy": ..., "kernel": ...}), the two alternating call by call after one
    warm-up call each, so that both see the same load."""
    saved = coding.KERNEL, coding.KERNEL_MIN_SYMBOLS
    times: dict = {"numpy": ([], []), "kernel": ([], [])}
    try:
        coding.KERNEL_MIN_SYMBOLS = 0
        for path in times:
            coding.KERNEL = path == "kernel"
            fn()
        for _ in range(repeats):
            for path, (wall, cpu) in times.items():
                coding.KERNEL = path == "kernel"
                c = time.process_time()
                t = time.perf_counter()
                fn()
                wall.append(time.perf_counter() - t)
                cpu.append(time.process_time() - c)
    finally:
        coding.KERNEL, coding.KERNEL_MIN_SYMBOLS = saved
    return {path: (statistics.median(w), statistics.median(c)) for path, (w, c) in times.items()}


def _on_kernel(fn):
    """``fn()`` with the compiled kernel taking every call it can (the bit-exactness
    checks then cover it; the NumPy path is covered by the tests)."""
    saved = coding.KERNEL, coding.KERNEL_MIN_SYMBOLS
    coding.KERNEL, coding.KERNEL_MIN_SYMBOLS = True, 0
    try:
        return fn()
    finally:
        coding.KERNEL, coding.KERNEL_MIN_SYMBOLS = saved


def kernel_share(fn, repeats: int) -> tuple:
    """Median CPU seconds of ``fn()`` on the compiled path and, of those, in the compiled
    kernel itself (its calls timed one by one): what a decoder spends around the kernel
    (checks, index work, numba's typed lists) is the difference."""
    saved = coding.KERNEL, coding.KERNEL_MIN_SYMBOLS
    coding.KERNEL, coding.KERNEL_MIN_SYMBOLS = True, 0
    fn()                                        # loads the kernel if it is not yet
    inner = coding._compiled_combine
    spent = [0.0]

    def timed(*args):
        c = time.process_time()
        n = inner(*args)
        spent[0] += time.process_time() - c
        return n
    coding._compiled_combine = timed
    total, kernel = [], []
    try:
        for _ in range(repeats):
            spent[0] = 0.0
            c = time.process_time()
            fn()
            total.append(time.process_time() - c)
            kernel.append(spent[0])
    finally:
        coding.KERNEL, coding.KERNEL_MIN_SYMBOLS = saved
        coding._compiled_combine = inner
    return statistics.median(total), statistics.median(kernel)


def fma_rate(n: int = 256, repeats: int = 20) -> float:
    """Float64 multiply-adds per CPU second of one core: a square BLAS product (the
    ceiling of any float64 kernel, whose every term is one multiply-add)."""
    a = np.random.default_rng(1).random((n, n))
    with coding._blas_limit():
        a @ a
        c = time.process_time()
        for _ in range(repeats):
            a @ a
        return repeats * n ** 3 / (time.process_time() - c)


def numpy_stages(C: np.ndarray, rows: np.ndarray, repeats: int) -> dict:
    """CPU seconds of the NumPy path's three passes over the same chunks it uses:
    uint16 -> float64 conversion, the BLAS product, the floor reduction."""
    r, c = C.shape
    L = rows.shape[1]
    width = coding._chunk_width(r, c, L)
    Cf = C.astype(np.float64)
    x = np.empty((c, width))
    y = np.empty((r, width))
    q = np.empty((r, width))
    starts = range(0, L - width + 1, width)

    def conv():
        for s in starts:
            np.copyto(x, rows[:, s:s + width], casting="unsafe")

    def gemm():
        for _ in starts:
            np.matmul(Cf, x, out=y)

    def reduce():
        for _ in starts:
            np.multiply(y, 1.0 / coding.P, out=q)
            np.floor(q, out=q)
            np.multiply(q, coding.P, out=q)
            np.subtract(y, q, out=q)

    out = {}
    with coding._blas_limit():
        for name, fn in (("convert", conv), ("gemm", gemm), ("reduce", reduce)):
            _median_time(fn, repeats)
            out[name] = _CPU_TIMES[-1] * L / (len(starts) * width)
    return out


def first_use_costs() -> dict:
    """Import, field creation and code building times in a fresh interpreter."""
    proc = subprocess.run([sys.executable, "-c", _FIRST_USE], capture_output=True, text=True,
                          check=False)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr else "failed"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _blas_info() -> dict:
    try:
        # local: only the coding benchmark and kernel need it, at first use
        from threadpoolctl import threadpool_info
        info = [d for d in threadpool_info() if d.get("user_api") == "blas"]
    except Exception:  # threadpoolctl missing
        info = []
    first = info[0] if info else {}
    return {"blas": first.get("internal_api"), "blas_architecture": first.get("architecture"),
            "blas_threads": first.get("num_threads"),
            "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE")}


def run(json_out: bool = False, dim: int = 1_000_000, repeats: int = 5,
        first_use: bool = True) -> dict:
    """Measure everything once; print a table (or one JSON object) and return the results.

    The JSON keys ``*_MBps`` are wall-clock input MB/s; ``*_cpu_MBps`` the same per
    CPU second of this process (close to wall on an idle machine).
    """

    rng = np.random.default_rng(0)
    res: dict = {"dim": dim, "repeats": repeats}
    table = []

    shares = []

    def measure(key, label, mb, fn, reps=repeats, target="", both=True, share=False):
        """One row: ``fn`` on the NumPy path and, with ``both``, on the compiled kernel,
        alternating (``res[key_*]`` and ``res[key_kernel_*]``); with ``share``, the part
        of its compiled-path CPU spent in the kernel itself (:func:`kernel_share`)."""
        if both:
            got = _paired_times(fn, reps)
        else:
            got = {"numpy": (_median_time(fn, reps), _CPU_TIMES[-1])}
        if share:
            total, inside = kernel_share(fn, reps)
            # (None below the clock's resolution, as for the CPU rates)
            res[f"{key}_kernel_share"] = inside / total if total > 0 else None
            res[f"{key}_kernel_only_cpu_MBps"] = mb / inside if inside > 0 else None
            shares.append((key, res[f"{key}_kernel_share"], res[f"{key}_kernel_only_cpu_MBps"]))
        for path, (t, cpu) in got.items():
            k = key if path == "numpy" else f"{key}_kernel"
            res[f"{k}_MBps"] = mb / t
            res[f"{k}_cpu_MBps"] = mb / cpu if cpu > 0 else None   # below clock resolution
        table.append((label, mb, got, target))

    # the ceilings: copy the encode's input volume; read its input and write its output;
    # float64 multiply-adds of one core (every term of the kernels is one)
    seg_symbols = 1_000_000 // 2
    C = rng.integers(1, coding.P, size=(8, 10), dtype=np.int64)
    segments = rng.integers(0, 65536, size=(10, seg_symbols), dtype=np.uint16)
    enc_mb = segments.nbytes / MB
    src = np.frombuffer(rng.bytes(segments.nbytes), dtype=np.uint8)
    dst = np.empty_like(src)
    measure("memcpy", "memcpy (np.copyto) of the input", enc_mb, lambda: np.copyto(dst, src),
            target="ceiling", both=False)
    src2 = np.frombuffer(rng.bytes(18 * seg_symbols * 2), dtype=np.uint8)
    dst2 = np.empty_like(src2)
    measure("stream_8x10", "copy of 8x10's input + output", enc_mb,
            lambda: np.copyto(dst2, src2), target="ceiling", both=False)
    del src, dst, src2, dst2
    res["fma_madd_per_cpu_s"] = fma_rate()
    res["numpy_stages_8x10_cpu_s"] = numpy_stages(C, segments, repeats)

    # encode: k segments of 1 MB into r combinations (a relay's uplink, eq. 26), at the
    # shapes of paper-fig2's coded (8 x 10) and joint (7 x 7) exchanges, symmetric(5,2)'s
    # dense decoder (12 x 20) and one parity (1 x 10)
    res["encode_shapes"] = {}
    for r, c in ((8, 10), (7, 7), (12, 20), (1, 10)):
        rows = segments if c == 10 else rng.integers(0, 65536, size=(c, seg_symbols),
                                                     dtype=np.uint16)
        coeffs = C if (r, c) == (8, 10) else rng.integers(1, coding.P, size=(r, c))
        out = np.empty((r, seg_symbols), dtype=np.uint16)
        key = "encode" if (r, c) == (8, 10) else f"encode_{r}x{c}"
        measure(key, f"encode combine_mod_p {r}x{c}", rows.nbytes / MB,
                lambda coeffs=coeffs, rows=rows, out=out: coding.combine_mod_p(coeffs, rows, out),
                target=">= 1500")
        res["encode_shapes"][key] = [r, c]
        # the float64 bound: r c multiply-adds per column of c input symbols (2c bytes)
        res[f"{key}_fma_bound_MBps"] = res["fma_madd_per_cpu_s"] * 2 / r / MB

    # the scheme on paper-fig2 at ``dim``
    code = Coded.plan(paper_fig2()).code
    ivs = rng.standard_normal((code.K, dim))
    G = code.G
    relay_ivs = [{int(k): ivs[k] for k in np.flatnonzero(G[i])} for i in range(code.H)]
    uplinks = {i: coding.relay_encode(code, i, relay_ivs[i]) for i in range(code.H)}

    def relay_input(i, code=code):   # bytes of the input rows relay i combines, all blocks
        return sum(len(blk.rows[i]) * int(blk.width[i]) * coding.unit_symbols(dim, blk.F) * 2
                   for blk in code.blocks if blk.messages[i])
    enc_relay = max(range(code.H), key=relay_input)
    measure("relay_encode", f"relay_encode relay {enc_relay + 1}", relay_input(enc_relay) / MB,
            lambda: coding.relay_encode(code, enc_relay, relay_ivs[enc_relay]))

    r_comb = max(range(len(code.blocks)),
                 key=lambda r: sum(uplinks[i][r].nbytes for i in range(code.H)
                                   if uplinks[i][r] is not None))
    msgs = {i: uplinks[i][r_comb] for i in range(code.H)}
    comb_mb = sum(m.nbytes for m in msgs.values() if m is not None) / MB
    rc = code.blocks[r_comb]
    measure("combine", f"server_combine {rc.label} ({rc.R}x{message_units(rc)})",
            comb_mb, lambda: coding.server_combine(code, r_comb, msgs, dim))
    downlinks = [coding.server_combine(code, r, {i: uplinks[i][r] for i in range(code.H)}, dim)
                 for r in range(len(code.blocks))]

    def decode_input(code, i):   # bytes relay i's decoders read, all blocks
        total, shapes = 0, []
        for blk in code.blocks:
            read = blk.decode_symbols(code.G, i, dim)
            if read:
                u = coding.unit_symbols(dim, blk.F)
                total += read * 2
                unknown = blk.F * int((code.G[i, blk.users] == 0).sum())
                shapes.append([unknown, read // u])    # units decoded x units read
        return total, shapes
    dec_relay = max(range(code.H), key=lambda i: decode_input(code, i)[0])
    dec_bytes, dec_shapes = decode_input(code, dec_relay)
    n_decoded = sum(1 for blk in code.blocks for k in blk.users if not G[dec_relay, k])
    measure("decode", f"relay_decode relay {dec_relay + 1}", dec_bytes / MB,
            lambda: coding.relay_decode(code, dec_relay, relay_ivs[dec_relay], downlinks, dim),
            target=">= 200", share=True)
    res["decode_output_MBps"] = n_decoded * 8 * dim / MB / table[-1][2]["numpy"][0]
    res["decode_kernel_output_MBps"] = n_decoded * 8 * dim / MB / table[-1][2]["kernel"][0]
    got = _on_kernel(lambda: coding.relay_decode(code, dec_relay, relay_ivs[dec_relay],
                                                 downlinks, dim))
    exact = all(got[k].view(np.uint64).tobytes() == ivs[k].view(np.uint64).tobytes()
                for k in range(code.K))
    del uplinks, downlinks, got

    # the same exchange with the random code (the construction before issue 21, now the
    # fallback): same bytes, a dense decoder per relay
    code_r = Coded.plan(paper_fig2(), construction="random").code
    up_r = {i: coding.relay_encode(code_r, i, relay_ivs[i]) for i in range(code_r.H)}
    msgs_r = {i: up_r[i][r_comb] for i in range(code_r.H)}
    measure("combine_random", "server_combine, random code", comb_mb,
            lambda: coding.server_combine(code_r, r_comb, msgs_r, dim))
    down_r = [coding.server_combine(code_r, r, {i: up_r[i][r] for i in range(code_r.H)}, dim)
              for r in range(len(code_r.blocks))]
    measure("decode_random", "relay_decode, random code",
            decode_input(code_r, dec_relay)[0] / MB,
            lambda: coding.relay_decode(code_r, dec_relay, relay_ivs[dec_relay], down_r, dim),
            share=True)
    res["decode_random_output_MBps"] = n_decoded * 8 * dim / MB / table[-1][2]["numpy"][0]
    del up_r, down_r

    # the joint scheme on paper-fig2: one block, relays combine every unit they hold
    code_j = Joint.plan(paper_fig2()).code
    up_j = {i: coding.relay_encode(code_j, i, relay_ivs[i]) for i in range(code_j.H)}
    enc_j = max(range(code_j.H), key=lambda i: relay_input(i, code_j))
    measure("joint_relay_encode", f"joint relay_encode relay {enc_j + 1}",
            relay_input(enc_j, code_j) / MB,
            lambda: coding.relay_encode(code_j, enc_j, relay_ivs[enc_j]))
    msgs_j = {i: up_j[i][0] for i in range(code_j.H)}
    blk_j = code_j.blocks[0]
    measure("joint_combine", f"joint server_combine ({blk_j.R}x{message_units(blk_j)})",
            sum(m.nbytes for m in msgs_j.values() if m is not None) / MB,
            lambda: coding.server_combine(code_j, 0, msgs_j, dim))
    down_j = [coding.server_combine(code_j, 0, msgs_j, dim)]
    dec_j = max(range(code_j.H), key=lambda i: decode_input(code_j, i)[0])
    measure("joint_decode", f"joint relay_decode relay {dec_j + 1}",
            decode_input(code_j, dec_j)[0] / MB,
            lambda: coding.relay_decode(code_j, dec_j, relay_ivs[dec_j], down_j, dim),
            share=True)
    got = _on_kernel(lambda: coding.relay_decode(code_j, dec_j, relay_ivs[dec_j], down_j, dim))
    exact = exact and all(got[k].view(np.uint64).tobytes() == ivs[k].view(np.uint64).tobytes()
                          for k in range(code_j.K))
    del up_j, down_j, got

    # decode with a larger matrix: Theorem 3's symmetric(5, 2) design (K = 10)
    code_s = Coded.plan(symmetric(5, 2)).code
    ivs_s = rng.standard_normal((code_s.K, dim))
    relay_s = [{int(k): ivs_s[k] for k in np.flatnonzero(code_s.G[i])} for i in range(code_s.H)]
    up_s = {i: coding.relay_encode(code_s, i, relay_s[i]) for i in range(code_s.H)}
    down_s = [coding.server_combine(code_s, r, {i: up_s[i][r] for i in range(code_s.H)}, dim)
              for r in range(len(code_s.blocks))]
    sym_bytes, sym_shapes = decode_input(code_s, 0)
    measure("decode_sym52", f"relay_decode symmetric(5,2) {sym_shapes[0][0]}x{sym_shapes[0][1]}",
            sym_bytes / MB, lambda: coding.relay_decode(code_s, 0, relay_s[0], down_s, dim),
            share=True)
    got = _on_kernel(lambda: coding.relay_decode(code_s, 0, relay_s[0], down_s, dim))
    exact = exact and all(got[k].view(np.uint64).tobytes() == ivs_s[k].view(np.uint64).tobytes()
                          for k in range(code_s.K))
    del up_s, down_s, got

    # galois reference on a smaller slice of the encode's input
    import galois  # local: galois costs seconds to import; only the comparison needs it
    GF = galois.GF(coding.P)
    width = 65536
    Cg, Sg = GF(C), GF(segments[:, :width].astype(np.int64))
    # the same slice on both paths first: galois' worker threads spin on after its
    # calls, and this process' CPU time would count them
    part = np.ascontiguousarray(segments[:, :width])
    part_out = np.empty((8, width), dtype=np.uint16)
    measure("encode_galois_slice", "combine_mod_p 8x10 on galois' slice", part.nbytes / MB,
            lambda: coding.combine_mod_p(C, part, part_out))
    measure("galois", "galois GF(65537) C @ D (8x10)", 10 * width * 2 / MB, lambda: Cg @ Sg,
            reps=max(3, repeats // 2), target="reference", both=False)

    res.update({
        "encode_shape": "8 x 10 coefficients on 10 x 500000 symbols (10 x 1 MB)",
        "relay_encode_relay": enc_relay + 1,
        "combine_block": rc.label,
        "combine_input_MB": comb_mb,
        "decode_relay": dec_relay + 1,
        "decode_matrix_shapes": dec_shapes,
        "decode_input_MB": dec_bytes / MB,
        "decode_sym52_matrix_shapes": sym_shapes,
        "decode_bit_exact": exact,
        "chunk_bytes": coding.CHUNK_BYTES,
        "blas_threads_in_kernel": coding.BLAS_THREADS,
        "loadavg_1min": os.getloadavg()[0],
        "cpus": os.cpu_count(),
    })
    res.update(_blas_info())
    if first_use:
        res["first_use"] = first_use_costs()

    if json_out:
        print(json.dumps(res, indent=1))
        return res
    print(f"coding throughput (paper-fig2 at dim = {dim}; input MB/s, median of {repeats}; "
          f"load average {res['loadavg_1min']:.1f} on {res['cpus']} cpus; "
          f"BLAS {res['blas']} {res['blas_architecture']}, "
          f"OPENBLAS_CORETYPE={res['OPENBLAS_CORETYPE']})")
    print(f"  {'operation':36}{'input MB':>9}{'wall ms':>9}{'MB/s':>7}{'MB/cpu-s':>9}"
          f"{'kernel':>8}{'MB/cpu-s':>9}{'x':>6}  target")
    for label, mb, got, target in table:
        t, cpu = got["numpy"]
        line = (f"  {label:36}{mb:>9.1f}{t * 1e3:>9.2f}{mb / t:>7.0f}"
                f"{mb / cpu if cpu > 0 else float('inf'):>9.0f}")
        if "kernel" in got:
            tk, ck = got["kernel"]
            line += (f"{mb / tk:>8.0f}{mb / ck if ck > 0 else float('inf'):>9.0f}"
                     f"{cpu / ck if ck > 0 else float('inf'):>6.2f}")
        else:
            line += " " * 23
        print(f"{line}  {target}")
    print("  (MB/s: wall, NumPy path; MB/cpu-s: per CPU second; kernel: the compiled path, "
          "wall then CPU; x: NumPy CPU time / kernel CPU time; the two paths alternate call "
          "by call)")
    st = res["numpy_stages_8x10_cpu_s"]
    print(f"  ceilings per CPU second: float64 multiply-adds {res['fma_madd_per_cpu_s'] / 1e9:.1f} G/s"
          " (BLAS 256^3), so input MB/s at most " + ", ".join(
              f"{r}x{c} {res[f'{k}_fma_bound_MBps']:.0f}" for k, (r, c) in res["encode_shapes"].items())
          + f"; NumPy path 8x10 by pass (ms): convert {st['convert'] * 1e3:.2f}, "
          f"GEMM {st['gemm'] * 1e3:.2f}, reduce {st['reduce'] * 1e3:.2f}")
    print(f"  decode: units decoded x units read per round {dec_shapes}, decoded output "
          f"{res['decode_output_MBps']:.0f} MB/s (kernel {res['decode_kernel_output_MBps']:.0f}; "
          f"random code: {res['decode_random_output_MBps']:.0f} MB/s), bit-exact (kernel "
          f"path): {exact}")
    print("  decode on the compiled path, CPU in the kernel itself (the rest: the decoder's "
          "own work around it): " + ", ".join(
              f"{label} {share or 0:.0%} (kernel alone {rate or float('inf'):.0f} MB/cpu-s)"
              for label, share, rate in shares))
    if first_use:
        fu = res["first_use"]
        if "error" in fu:
            print(f"first use (fresh process): failed: {fu['error']}")
        else:
            print("first use (fresh process): " + ", ".join(
                f"{k[:-2]} {v:.3f} s" for k, v in fu.items()))
    return res


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hmtl_mpi.bench coding",
                                     description="Throughput of the GF(65537) coding layer.")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--dim", type=positive_int, default=1_000_000,
                        help="float64 values per IV for the paper-fig2 exchange (default 1e6)")
    parser.add_argument("--repeats", type=positive_int, default=5, help="timed repetitions (default 5)")
    parser.add_argument("--no-first-use", action="store_true",
                        help="skip the fresh-subprocess first-use measurement")
    parser.add_argument("--scale", action="store_true",
                        help="instead: encode / combine / decode at K = 1,000, 10,000 and 100,000 "
                             "(r = 3; structured code, and both codes at --random-sizes), each "
                             "size in a fresh process with its peak memory")
    parser.add_argument("--sizes", default=None, metavar="KxH,...",
                        help="with --scale: the sizes (default 1000x30,10000x100,100000x1000)")
    parser.add_argument("--random-sizes", default="200x20", metavar="KxH,...",
                        help="with --scale: sizes measured with both constructions (default 200x20)")
    args = parser.parse_args(argv)
    if args.scale:
        try:
            sizes = scale.parse_sizes(args.sizes) if args.sizes else scale.DEFAULT_SIZES
            random_sizes = scale.parse_sizes(args.random_sizes) if args.random_sizes else ()
        except ValueError as exc:
            parser.error(str(exc))
        scale.run_coding(sizes, random_sizes, json_out=args.json)
        return 0
    run(json_out=args.json, dim=args.dim, repeats=args.repeats, first_use=not args.no_first_use)
    return 0


if __name__ == "__main__":
    sys.exit(main())
