"""Scale rows of ``bench plan --scale`` and ``bench coding --scale``: K = 1,000 to 100,000.

Every user on 3 random relays (``random_regular(K, H, 3, seed)``), H growing with K
(default sizes 1000x30, 10000x100, 100000x1000). Each size runs in a fresh Python
process, so that its peak resident memory (``ru_maxrss``) is its own; the memory of
the interpreter with numpy, cvxpy and hmtl_mpi imported is printed beside it.

``plan``: ``make_plan``, the layouts, the structured code's build (and proof: its
counts D0-D3), the whole ``python -m hmtl_mpi.plan --topology G --json`` command, and
the random construction (``coding.build_code``: draws and Gauss-Jordan per relay) in
its own process under a time budget (``--random-budget``), reported as not finished
when it runs out.

``coding``: at every size, every relay's ``relay_encode``, the server's
``server_combine`` and ``relay_decode`` at the relay that decodes most (j0), with the
decoder's one-time preparation timed apart, MB/s of input and of decoded output, and
the decoder's multiply-adds per decoded symbol; the same for the random code at the
sizes where it can be built within the budget (a reference size, 200x20, by default).

    python -m hmtl_mpi.bench plan --scale [--sizes 1000x30,10000x100,100000x1000] [--random-budget S]
    python -m hmtl_mpi.bench coding --scale [--sizes ...] [--random-sizes 200x20] [--json]
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

from ..codes import coding, structured
from ..planning.hierarchical import make_plan
from ..planning.topology import random_regular
from ..schemes.coded import Coded

DEFAULT_SIZES = ((1000, 30), (10_000, 100), (100_000, 1000))
REFERENCE_SIZES = ((200, 20),)
RANDOM_MAX_BYTES = 4e9             # the random build is not attempted beyond this much memory
R_DEGREE = 3
MB = 1e6


def parse_sizes(text: str) -> tuple:
    """'1000x30,10000x100' -> ((1000, 30), (10000, 100)); a clear error otherwise."""
    out = []
    for part in text.split(","):
        try:
            K, H = (int(x) for x in part.lower().split("x"))
        except ValueError:
            raise ValueError(f"size {part!r}: expected KxH, e.g. 10000x100") from None
        if H < R_DEGREE + 1 or K < 2:
            raise ValueError(f"size {part!r}: need H >= {R_DEGREE + 1} and K >= 2")
        out.append((K, H))
    return tuple(out)


def _rss_mb() -> float:
    """Peak resident set size of this process so far, MB (Linux: ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _run_child(task: dict, timeout: float | None = None) -> dict:
    """Run ``_child`` in a fresh interpreter; its last output line is the JSON result."""
    cmd = [sys.executable, "-c", "from hmtl_mpi.bench.scale import _child; _child()",
           json.dumps(task)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return {"finished": False, "budget_s": timeout}
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "failed"
        return {"finished": False, "error": tail}
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]), finished=True)


def _timed_command(cmd: list) -> dict:
    """Wall seconds and peak RSS (MB) of a command, its output discarded."""
    t = time.perf_counter()
    with open(os.devnull, "wb") as null:
        proc = subprocess.Popen(cmd, stdout=null, stderr=subprocess.PIPE)
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t
    err = proc.stderr.read().decode() if proc.stderr else ""
    proc.stderr.close()
    proc.returncode = os.waitstatus_to_exitcode(status)
    return {"wall_s": wall, "peak_rss_mb": usage.ru_maxrss / 1024, "exit": proc.returncode,
            "stderr": err.strip().splitlines()[-1] if err.strip() else ""}


# --- in the child -----------------------------------------------------------------------------

def _child() -> None:
    task = json.loads(sys.argv[1])
    import cvxpy  # noqa: F401  # local: only the child plans; its import is part of the baseline
    out = {"K": task["K"], "H": task["H"], "baseline_rss_mb": _rss_mb()}
    t = time.perf_counter()
    G = random_regular(task["K"], task["H"], R_DEGREE, task["seed"])
    out["topology_s"] = time.perf_counter() - t
    t = time.perf_counter()
    plan = make_plan(G)
    out["make_plan_s"] = time.perf_counter() - t
    t = time.perf_counter()
    layouts = Coded.layouts(plan)
    out["layouts_s"] = time.perf_counter() - t
    out["uplink_load"], out["downlink_load"] = float(plan.uplink_load), float(plan.downlink_load)
    out["unknown_units_max"] = max(lay.F * (len(lay.users) - int(G[:, lay.users].sum(axis=1).min()))
                                   for lay in layouts)
    if task["construction"] == "random":
        dense = max(_dense_bytes(G, lay) for lay in layouts)
        out["random_dense_gb"] = dense / 1e9
        if dense > RANDOM_MAX_BYTES:
            out["skipped"] = True
            print(json.dumps(out))
            return
    t = time.perf_counter()
    if task["construction"] == "random":
        code = coding.build_code(G, layouts, seed=0)
    else:
        code = structured.build_code(G, layouts, construction="structured")
    out["build_s"] = time.perf_counter() - t
    out["construction"] = code.construction
    out["code_buffer_mb"] = code.to_buffer().nbytes / MB
    if code.construction == "structured":
        blk = max(code.blocks, key=lambda b: b.R)
        out["T"] = int(blk.tables()["T"])
        out["R"] = blk.R
        out["T_minus_R"] = len(blk.tables()["qc"])
        out["parities"] = int(sum(int(b.tables()["parity"].sum()) for b in code.blocks))
    if task["what"] == "coding":
        out.update(_coding(code, task["dim"], task["seed"]))
    if task.get("save"):
        np.save(task["save"], G)
    out["peak_rss_mb"] = _rss_mb()
    print(json.dumps(out))


def _dense_bytes(G: np.ndarray, layout) -> int:
    """Bytes of the random construction's int64 matrices for one block: E (message units x
    IV units), M (R x message units) and their product."""
    T = int(np.dot(layout.messages, layout.width))
    N = layout.F * len(layout.users)
    return 8 * (T * N + 2 * coding.downlink_rows(G, layout) * max(T, N))


def _coding(code, dim: int, seed: int) -> dict:
    """Encode at every relay, combine, decode at the relay with most unknowns."""
    rng = np.random.default_rng(seed)
    G = code.G
    ivs = rng.standard_normal((code.K, dim))
    known = [None] * code.H
    t_enc, enc_in, uplinks = 0.0, 0, []
    for i in range(code.H):
        known[i] = {int(k): ivs[k] for k in np.flatnonzero(G[i])}
        t = time.perf_counter()
        uplinks.append(coding.relay_encode(code, i, known[i]))
        t_enc += time.perf_counter() - t
        enc_in += sum(len(b.rows[i]) * int(b.width[i]) * coding.unit_symbols(dim, b.F) * 2
                      for b in code.blocks if b.messages[i])
    up_bytes = sum(m.nbytes for u in uplinks for m in u if m is not None)
    t = time.perf_counter()
    downlinks = [coding.server_combine(code, b, {i: uplinks[i][b] for i in range(code.H)}, dim)
                 for b in range(len(code.blocks))]
    t_comb = time.perf_counter() - t
    del uplinks
    unknown = (G == 0).sum(axis=1)
    j = int(np.argmax(unknown))
    t = time.perf_counter()
    for blk in code.blocks:                      # the decoder's one-time preparation
        if hasattr(blk, "decoder"):
            blk.decoder(G, j)
    t_prep = time.perf_counter() - t
    times = []
    for _ in range(2):
        t = time.perf_counter()
        got = coding.relay_decode(code, j, known[j], downlinks, dim)
        times.append(time.perf_counter() - t)
    exact = all(got[k].view(np.uint64).tobytes() == ivs[k].view(np.uint64).tobytes()
                for k in range(code.K))
    dec_in = sum(2 * b.decode_symbols(G, j, dim) for b in code.blocks)
    decoded_units = sum(b.F * int((G[j, b.users] == 0).sum()) for b in code.blocks)
    madds = sum(b.decode_multiply_adds(G, j) for b in code.blocks)
    return {"dim": dim, "encode_s": t_enc, "encode_input_mb": enc_in / MB,
            "encode_MBps": enc_in / MB / t_enc, "combine_s": t_comb,
            "combine_input_mb": up_bytes / MB, "combine_MBps": up_bytes / MB / t_comb,
            "decode_relay": j + 1, "decode_prep_s": t_prep, "decode_s": min(times),
            "decode_input_mb": dec_in / MB, "decode_MBps": dec_in / MB / min(times),
            "decode_output_MBps": int(unknown[j]) * 8 * dim / MB / min(times),
            "decode_multiply_adds_per_symbol": madds / max(decoded_units, 1),
            "bit_exact": bool(exact)}


# --- the two benchmarks ---------------------------------------------------------------------

def run_plan(sizes=DEFAULT_SIZES, seed: int = 0, random_budget: float = 300.0,
             json_out: bool = False) -> list:
    """Plan, build and the plan command at every size; the random build within a budget."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for K, H in sizes:
            path = os.path.join(tmp, f"G_{K}_{H}.npy")
            row = _run_child({"what": "plan", "K": K, "H": H, "seed": seed,
                              "construction": "structured", "save": path})
            if row.get("finished"):
                row["plan_cli"] = _timed_command([sys.executable, "-m", "hmtl_mpi.plan",
                                                  "--topology", path, "--json"])
            row["random"] = _run_child({"what": "plan", "K": K, "H": H, "seed": seed,
                                        "construction": "random"}, timeout=random_budget)
            row["load_after"] = os.getloadavg()
            rows.append(row)
            if not json_out:
                _print_plan_row(row, random_budget)
    if json_out:
        print(json.dumps({"rows": rows, "random_budget_s": random_budget}, indent=1))
    return rows


def _print_plan_row(row: dict, budget: float) -> None:
    if not row.get("finished"):
        print(f"K = {row.get('K')}: failed: {row.get('error')}")
        return
    r = row["random"]
    random = (f"not attempted (its dense matrices: {r['random_dense_gb']:.0f} GB)"
              if r.get("skipped") else
              f"{r['build_s']:.1f} s, peak {r['peak_rss_mb']:.0f} MB" if r.get("finished") else
              f"not finished in {budget:.0f} s" if "budget_s" in r else f"failed: {r.get('error')}")
    cli = row["plan_cli"]
    print(f"K = {row['K']:,}, H = {row['H']:,}, r = {R_DEGREE}: make_plan {row['make_plan_s']:.2f} s, "
          f"layouts {row['layouts_s']:.2f} s, structured build {row['build_s']:.2f} s "
          f"(R = {row.get('R')}, T - R = {row.get('T_minus_R')}, {row.get('parities')} parities); "
          f"peak RSS {row['peak_rss_mb']:.0f} MB (imports {row['baseline_rss_mb']:.0f} MB)")
    print(f"    plan --json: {cli['wall_s']:.1f} s, peak RSS {cli['peak_rss_mb']:.0f} MB "
          f"(exit {cli['exit']}); random build (dense systems of {row['unknown_units_max']:,} "
          f"units per relay): {random}; loads {row['uplink_load']:.1f} / "
          f"{row['downlink_load']:.1f} (uncoded {row['K']:,}); load average "
          f"{row['load_after'][0]:.1f}")


def run_coding(sizes=DEFAULT_SIZES, random_sizes=REFERENCE_SIZES, dims=None, seed: int = 0,
               random_budget: float = 600.0, json_out: bool = False) -> list:
    """Encode / combine / decode at every size (structured), and at ``random_sizes`` both."""
    rows = []
    cases = [(K, H, "structured") for K, H in sizes] + \
        [(K, H, c) for K, H in random_sizes for c in ("structured", "random")]
    for K, H, construction in cases:
        dim = (dims or {}).get((K, H)) or (100 if K >= 50_000 else 1000)
        row = _run_child({"what": "coding", "K": K, "H": H, "seed": seed, "dim": dim,
                          "construction": construction},
                         timeout=random_budget if construction == "random" else None)
        row.update(K=K, H=H, construction=construction, load_after=os.getloadavg())
        rows.append(row)
        if not json_out:
            _print_coding_row(row)
    if json_out:
        print(json.dumps({"rows": rows}, indent=1))
    return rows


def _print_coding_row(row: dict) -> None:
    head = f"K = {row['K']:,}, H = {row['H']:,} ({row['construction']})"
    if row.get("skipped"):
        print(f"{head}: not attempted (its dense matrices: {row['random_dense_gb']:.0f} GB)")
        return
    if not row.get("finished"):
        print(f"{head}: " + (f"not built in {row['budget_s']:.0f} s" if "budget_s" in row
                             else f"failed: {row.get('error')}"))
        return
    print(f"{head}, dim {row['dim']}: build {row['build_s']:.2f} s; encode (all relays) "
          f"{row['encode_MBps']:.0f} MB/s; combine {row['combine_input_mb']:.0f} MB at "
          f"{row['combine_MBps']:.0f} MB/s; decode at relay {row['decode_relay']} "
          f"{row['decode_MBps']:.0f} MB/s in, {row['decode_output_MBps']:.0f} MB/s of IVs out "
          f"(prep {row['decode_prep_s']:.2f} s, "
          f"{row['decode_multiply_adds_per_symbol']:.0f} multiply-adds per decoded symbol); "
          f"bit-exact {row['bit_exact']}; peak RSS {row['peak_rss_mb']:.0f} MB; "
          f"load {row['load_after'][0]:.1f}")
