"""The lossless coding layer: field, code construction, encode / combine / decode.

Field and mapping
-----------------
Coding is over the prime field GF(p), p = 65537 = 2^16 + 1. An IV of d float64
values is viewed as 4d unsigned 16-bit symbols (``iv.view(np.uint16)``): every
bit pattern, NaN, +-inf, -0.0 and subnormals included, is a valid field element
(0..65535 < p), so the mapping is a bijection with no escaping at the source and
no size overhead. Decoded symbols are the original ones and come back < 65536.

Why not GF(2^8) / GF(2^16): they are lossless too, but their multiplication is
a table lookup, measured at 18-40 MB/s in galois and ~200 MB/s with a custom
numba kernel on this machine (see docs/codes.md). In GF(65537) a
linear combination is a float64 BLAS matrix product followed by one floor
reduction, exact while ``terms * (p-1)^2 < 2^53`` (about 2 million terms; our
matrices have at most a few thousand columns), which runs at several hundred
MB/s. The price: a *coded* symbol can equal 65536 (probability 1/p), which does
not fit in 16 bits. The wire format therefore carries those positions in an
escape list after the 16-bit payload (4 bytes per escape, ~0.006% of symbols),
and the bytes counted on the wire include it.

Two implementations of that one kernel (:func:`combine_mod_p`), bit-identical: the
NumPy path (BLAS product per cache-sized chunk, then the floor reduction) and a
numba-compiled one (:func:`_combine_steps`: per block of columns the input rows
converted once, accumulators updated 4 rows x 4 terms per pass, reduced in the same
block), about 2-3x less CPU per symbol. Loading it costs a process about 1 s of CPU
(numba's import and its disk cache), so by default a process switches to it only
after it has combined :data:`KERNEL_LOAD_SYMBOLS` symbols in NumPy (:data:`KERNEL`).

Wire format of one coded message of L symbols: ``uint16[L]`` payload (65536
written as 0) followed by the escape positions as ``uint32[E]`` viewed as
``uint16[2E]``; the receiver knows L and gets E from the buffer length.

Code construction (at plan time, once per topology)
---------------------------------------------------
A code is a list of independent blocks (:class:`BlockLayout`). A block exchanges
the IVs of some users, each cut into F units of u = ceil(4d / F) symbols
(zero-padded; units past F are padding too, as docs/scheme.md says for pieces that
add up to more than V). The schemes make the blocks: the paper's round z is one
(F = D_z; relay i's input rows are its a_i D_z-unit segments of the v_k it
knows, :mod:`hmtl_mpi.schemes.coded`), the joint exchange is one block in all
(one input row per (user, unit), :mod:`hmtl_mpi.schemes.joint`).

* Uplink (eq. 26): relay i sends ``messages_i`` combinations of its input rows:
  ``X_i = C_i @ S_i``, C_i random, S_i the rows stacked (each ``width_i`` units).
* Downlink (eq. 31): the server cuts every uplink message into units (the
  paper's alpha^z pieces) and broadcasts ``R = F (|users| - min_i |users ∩ N_i|)``
  combinations ``Y = M @ X_units``.
* Decoding: as a function of all IV units x of the block, ``Y = M E x`` where E
  maps IV units to message units. Relay i knows the units of its own users
  (x_known) and solves for the others: it picks |U_i| rows of (M E)[:, U_i]
  that are independent, and ``x_U = Inv (Y_rows - (M E)[rows, known] x_known)``,
  precomputed as one matrix ``[Inv, -Inv (M E)[rows, known]]``.

This module's construction (:func:`build_code`, :class:`Block`) is the random one;
the schemes try the structured one first (:mod:`hmtl_mpi.codes.structured`: decodable
by construction, near-linear to build, the same bytes on the wire) and fall back to
this one for the plans it does not cover. Both kinds of block answer the same
per-iteration calls (``encode``, ``combine``, ``decode``), and :class:`Code` records
which construction built it.

Coefficients are drawn uniformly from 1..p-1 with a recorded seed; every relay's
system is checked to have full rank (exact elimination over GF(65537); the
tests check these routines against galois) and the whole draw
is redrawn (seed + 1, ...) until all relays decode every block. Per iteration,
coding is then matrix application only: no rank test, no elimination.
"""

from __future__ import annotations

import bisect
import contextlib
import io
import itertools
import math
from dataclasses import dataclass, field

import numpy as np

from ..planning.topology import OnTopology

P = 65537                   # the field's prime, 2^16 + 1
SYMBOL_DTYPE = np.uint16    # one symbol on the wire (a coded 65536 goes to the escape list)
SYMBOLS_PER_VALUE = 4       # a float64 IV value is four 16-bit symbols
CHUNK_COLUMNS = 16384       # most columns per BLAS call
CHUNK_BYTES = 384 * 1024    # float64 work set per chunk (inputs + result + quotient): fits L2
BLAS_THREADS = 1            # BLAS threads inside combine_mod_p (None: leave the process setting)
BLAS_LIMIT_MIN_WORK = 1 << 17   # multiply-adds per chunk from which the thread limit is applied

_INV_P = 1.0 / P
_blas_controller = None


class DecodeError(RuntimeError):
    """A code whose relays cannot all decode (only ever raised at plan time)."""


# --- field arithmetic: the only numerical kernel ------------------------------------

def _chunk_width(r: int, c: int, L: int) -> int:
    """Columns per chunk: the float64 work set (c + 2r) x width stays within CHUNK_BYTES."""
    width = CHUNK_BYTES // (8 * (c + 2 * r))
    width = max(256, min(CHUNK_COLUMNS, width - width % 256))
    return min(width, L)


def _blas_limit():
    """Context limiting BLAS to BLAS_THREADS threads during a combination.

    The GEMMs here are thin (a few rows, thousands of columns) and memory bound;
    OpenBLAS threads them above ~2^18 multiply-adds, which gains little on an
    idle machine and loses 10-50x when the cores are shared (an MPI job with
    more ranks than cores): its threads spin waiting for each other.
    """
    global _blas_controller
    if BLAS_THREADS is None:
        return contextlib.nullcontext()
    if _blas_controller is None:
        try:
            # local: only the coding benchmark and kernel need it, at first use
            from threadpoolctl import ThreadpoolController
            _blas_controller = ThreadpoolController()
        except Exception:  # threadpoolctl missing or broken: run as configured
            _blas_controller = False
    if _blas_controller is False:
        return contextlib.nullcontext()
    return _blas_controller.limit(limits=BLAS_THREADS, user_api="blas")


def _row_list(x, what: str):
    """A list (or tuple) of 1-D arrays as a list, checked to be of one length and dtype;
    None for anything else (an array)."""
    if not isinstance(x, (list, tuple)):
        return None
    xs = [np.asarray(v) for v in x]
    if any(v.ndim != 1 or v.shape != xs[0].shape or v.dtype != xs[0].dtype for v in xs):
        raise ValueError(f"{what}: rows of shapes {sorted({v.shape for v in xs})} and dtypes "
                         f"{sorted({str(v.dtype) for v in xs})}; expected 1-D rows of one "
                         f"length and dtype")
    return xs


def _sorted_escapes(escapes):
    """Escapes (rows, columns) as int64 arrays sorted by column (None when there are none)."""
    if escapes is None or not len(escapes[1]):
        return None
    er = np.asarray(escapes[0], dtype=np.int64)
    ec = np.asarray(escapes[1], dtype=np.int64)
    order = np.argsort(ec, kind="stable")
    return er[order], ec[order]


def combine_mod_p(coeffs: np.ndarray, rows: np.ndarray, out: np.ndarray,
                  escapes: tuple | None = None, add: np.ndarray | None = None,
                  add_escapes: tuple | None = None) -> np.ndarray:
    """``out = coeffs @ rows mod p`` in wire form; returns the output's escapes.

    ``coeffs`` is a small r x c matrix of field elements; ``rows`` a c x L uint16
    array of field elements whose entries listed in ``escapes`` (a pair of row and
    column index arrays) stand for 65536; ``out`` an r x L uint16 array. The
    product is a float64 BLAS GEMM over column chunks sized to stay in cache
    (exact, as ``c * (p-1)^2 < 2^53``), the escaped inputs are added as a
    correction ``coeffs[:, row] * 65536`` in their column, and each chunk is
    reduced with ``y - p * floor(y / p)`` while it is in cache. Results equal to
    65536 are written as 0 and their flat positions in ``out`` returned (uint32).
    Calls of at least :data:`KERNEL_MIN_SYMBOLS` input symbols on C-contiguous arrays
    run the compiled kernel instead once it is loaded (:func:`_kernel_takes`): same
    arithmetic, same results bit for bit, escape positions in increasing order on both.
    An ``out`` of dtype uint32 gets plain field elements 0..p-1 instead (no escapes;
    ``rows`` may then be uint32 too, holding 65536 itself): the form the structured
    code (:mod:`hmtl_mpi.codes.structured`) computes in between wire buffers.
    ``add`` (r x L field elements, uint16 with ``add_escapes`` standing for 65536, or
    uint32) is added before the reduction: ``out = add + coeffs @ rows``, in the same
    pass over the chunk.
    ``rows``, ``add`` and ``out`` may also be lists of 1-D arrays of L symbols (one
    dtype per list): the same rows without stacking them into one array first, so that
    a decoder passes views of the broadcast and of its own IVs and writes its results
    where they go; the kernel reads and writes them in place (the NumPy path stacks
    the inputs and copies out its result's rows).

    Exactness of the reduction: for integers 0 <= y < 2^53, ``floor(y * fl(1/p))``
    equals floor(y / p). fl(1/p) is below 1/p by a relative 2.7e-20 (~2^-65),
    too little to move y = n p off n after rounding, and for y = n p + j,
    1 <= j < p, the product is at least 1/p above n and 1/p below n + 1, more
    than its rounding error (y / p * 2^-53 < 2^-16) can cross. The conditional
    ``- p`` in the rare branch is insurance only (checked numerically near
    multiples of p over the whole range, and by the tests).
    """
    coeffs = np.ascontiguousarray(coeffs, dtype=np.float64)
    r, c = coeffs.shape
    row_list = _row_list(rows, "rows")
    add_list = _row_list(add, "add")
    out_list = _row_list(out, "out")
    if row_list is not None:
        if len(row_list) != c:
            raise ValueError(f"coefficient matrix is {r} x {c} but {len(row_list)} rows were given")
    elif rows.ndim != 2 or rows.shape[0] != c:
        raise ValueError(f"coefficient matrix is {r} x {c} but rows of shape {rows.shape} were given")
    out_shape = (len(out_list), out_list[0].size if out_list else 0) if out_list is not None \
        else out.shape
    out_dtype = (out_list[0].dtype if out_list else np.dtype(SYMBOL_DTYPE)) \
        if out_list is not None else out.dtype
    if row_list is None:
        L = rows.shape[1]
    else:
        L = row_list[0].size if c else out_shape[1]
    if out_shape != (r, L):
        raise ValueError(f"out has shape {out_shape}, expected {(r, L)}")
    wire = out_dtype == SYMBOL_DTYPE
    if not wire and out_dtype != np.uint32:
        raise ValueError(f"out must be uint16 (wire form) or uint32 (field elements), got {out_dtype}")
    if (c + (add is not None)) * (P - 1) ** 2 >= 2 ** 53:
        raise ValueError(f"{c} terms per combination would not be exact in float64")
    add_shape = None if add is None else (
        (len(add_list), add_list[0].size if add_list else L) if add_list is not None else add.shape)
    if add is not None and add_shape != (r, L):
        raise ValueError(f"add has shape {add_shape}, expected {(r, L)}")
    if r * L >= 2 ** 32:
        raise ValueError(f"{r} x {L} symbols: escape positions would not fit in uint32")
    if out_list is not None:                        # rows of out: the kernel writes them in
        if (c <= KERNEL_MAX_TERMS and (c + (add is not None)) * L >= KERNEL_MIN_SYMBOLS
                and L >= ROW_LIST_MIN_SYMBOLS
                and r and _kernel_takes((c + (add is not None)) * L, *out_list,
                                        *(add_list if add_list is not None else [add]),
                                        *(row_list if row_list is not None else [rows]))):
            got = _combine_compiled(coeffs, rows if row_list is None else row_list, out_list,
                                    wire, add if add_list is None else add_list,
                                    _sorted_escapes(escapes), _sorted_escapes(add_escapes))
            if got is not None:
                return got
        whole = np.empty((r, L), dtype=out_dtype)   # else: one array, then its rows copied
        found = combine_mod_p(coeffs, rows, whole, escapes, add, add_escapes)
        for o, x in zip(out_list, whole):
            o[...] = x
        return found
    if (c == 0 and add is None) or L == 0:
        out[...] = 0
        return np.zeros(0, dtype=np.uint32)
    esc = _sorted_escapes(escapes)
    esc_rows, esc_cols = esc if esc is not None else (None, None)
    if esc is not None:
        esc_coeffs = coeffs[:, esc_rows].T * 65536.0          # per escape: its column's correction
    add_esc = _sorted_escapes(add_escapes) if add is not None else None
    add_rows, add_cols = add_esc if add_esc is not None else (None, None)
    terms = c + (add is not None)
    if (c <= KERNEL_MAX_TERMS and terms * L >= KERNEL_MIN_SYMBOLS
            and _kernel_takes(terms * L, out, *(add_list if add_list is not None else [add]),
                              *(row_list if row_list is not None else [rows]))):
        got = _combine_compiled(coeffs, rows if row_list is None else row_list, out, wire,
                                add if add_list is None else add_list, esc, add_esc)
        if got is not None:
            return got
    if row_list is not None:                        # the NumPy path reads stacked arrays
        rows = np.stack(row_list) if c else np.zeros((0, L), dtype=SYMBOL_DTYPE)
    if add_list is not None:
        add = np.stack(add_list)
    width = _chunk_width(r, c, L)
    x = np.empty((c, width), dtype=np.float64)
    y = np.empty((r, width), dtype=np.float64)
    q = np.empty((r, width), dtype=np.float64)
    xc, yc, qc = x, y, q
    found = []
    # OpenBLAS threads a product only above ~2^18 multiply-adds; below, limiting it costs
    # more (~0.1 ms a call through threadpoolctl) than the product
    with _blas_limit() if r * c * width >= BLAS_LIMIT_MIN_WORK else contextlib.nullcontext():
        for start in range(0, L, width):
            stop = start + width
            if stop > L:                            # the last, narrower chunk
                stop = L
                xc, yc, qc = x[:, : L - start], y[:, : L - start], q[:, : L - start]
            if c:
                np.copyto(xc, rows[:, start:stop], casting="unsafe")
                np.matmul(coeffs, xc, out=yc)
            else:
                yc[...] = 0.0
            if esc_cols is not None:
                lo, hi = np.searchsorted(esc_cols, (start, stop))
                if hi > lo:
                    np.add.at(yc.T, esc_cols[lo:hi] - start, esc_coeffs[lo:hi])
            if add is not None:
                np.add(yc, add[:, start:stop], out=yc)
                if add_cols is not None:
                    lo, hi = np.searchsorted(add_cols, (start, stop))
                    if hi > lo:
                        yc[add_rows[lo:hi], add_cols[lo:hi] - start] += 65536.0
            np.multiply(yc, _INV_P, out=qc)         # y - p * floor(y / p), in place
            np.floor(qc, out=qc)
            qc *= P
            yc -= qc
            if yc.max() >= 65536.0:                 # rare (~1/p per symbol): a result of 65536
                yc[yc >= P] -= P
                er, ec = np.nonzero(yc == 65536.0) if wire else ((), ())
                if len(er):
                    yc[er, ec] = 0.0
                    found.append(er.astype(np.int64) * L + start + ec)
            np.copyto(out[:, start:stop], yc, casting="unsafe")
    return np.sort(np.concatenate(found)).astype(np.uint32) if found else np.zeros(0, dtype=np.uint32)


# --- the compiled kernel: the same combination in one pass per column block -----------------

KERNEL_COLUMNS = 4096       # columns per block of the compiled kernel (its float64 rows stay in L2)
KERNEL_BLOCK_BYTES = 1 << 19    # at most this much float64 input per block (fewer columns for large c)
KERNEL_MAX_TERMS = 128          # larger c goes to the NumPy path (BLAS: as fast or faster there)
KERNEL_MIN_SYMBOLS = 1 << 12    # input symbols ((c + 1 with add) x L) of a call from which it may be used
KERNEL_LOAD_SYMBOLS = 1 << 28   # auto: input symbols combined in NumPy before loading the kernel
KERNEL = None               # None: auto; True: always (from KERNEL_MIN_SYMBOLS); False: never
ROW_LIST_MIN_SYMBOLS = 1 << 13  # rows given as a list: shorter ones are stacked (a typed list
                                # costs ~4 us a row, a copy of 8,192 symbols about as much),
                                # and the decoders stack units shorter than this themselves
_numpy_symbols = 0          # input symbols this process combined in NumPy (calls the kernel could take)
_compiled_combine = None


def _combine_steps(C, rows, out, L, wire, add, has_add, esc_rows, esc_cols, add_rows, add_cols,
                   found):  # pragma: no cover - compiled
    """``out = add + C @ rows mod p`` as numba compiles it (:func:`_combine_compiled`).

    Per block of KERNEL_COLUMNS columns (fewer when c is large: KERNEL_BLOCK_BYTES, or L):
    the c input rows converted to float64 once (escaped inputs get 65536 added), then
    per group of 4 (3 padded with a zero row), 2 or 1 output rows the accumulators
    (initialised with ``add``, or written by a group of 4's first pass) gain 4 or 2 terms
    per pass (3 for a group of 4's last pass when c is odd; otherwise an odd c is padded
    with a zero row), and are reduced with the NumPy path's ``y - p floor(y fl(1/p))``
    (exact for y < 2^53, same proof) straight into ``out``. In wire form a result of 65536 is written as 0 and its flat
    position stored in ``found``; returns how many (more than ``found.size``: the caller
    redoes the call in NumPy). Every value is an integer below 2^53 at every step, so
    the order of the additions (and contraction into FMAs) cannot change a result.
    """
    r, c = C.shape
    c2 = c + (c & 1)                                # terms go in pairs: a zero row pads
    B = min(L, KERNEL_COLUMNS, max(256, KERNEL_BLOCK_BYTES // (8 * max(c2, 1))) // 64 * 64)
    Cp = np.zeros((r + 3, c2))                      # and 3 zero rows: 3 rows take a group of 4
    Cp[:r, :c] = C
    xb = np.zeros((c2, B))
    acc = np.empty((4, B))
    a0, a1, a2, a3 = acc[0], acc[1], acc[2], acc[3]
    n_found = 0
    ep = 0
    ap = 0
    for s in range(0, L, B):
        w = min(B, L - s)
        for j in range(c):
            xj = xb[j]
            src = rows[j][s:s + w]                  # a row of a 2-D array, or of a list
            for t in range(w):
                xj[t] = src[t]
        while ep < esc_cols.size and esc_cols[ep] < s + w:
            xb[esc_rows[ep], esc_cols[ep] - s] += 65536.0
            ep += 1
        a_lo = ap
        while ap < add_cols.size and add_cols[ap] < s + w:
            ap += 1
        i = 0
        while i < r:
            nr = 4 if r - i >= 3 else (2 if r - i >= 2 else 1)
            if has_add:
                for ii in range(min(nr, r - i)):
                    a = acc[ii]
                    src = add[i + ii][s:s + w]      # a row of a 2-D array, or of a list
                    for t in range(w):
                        a[t] = src[t]
            elif nr != 4 or c2 == 2:                # else the first pass writes them
                for t in range(w):
                    a0[t] = 0.0
                    a1[t] = 0.0
                    a2[t] = 0.0
                    a3[t] = 0.0
            for q in range(a_lo, ap):
                if i <= add_rows[q] < i + nr:
                    acc[add_rows[q] - i, add_cols[q] - s] += 65536.0
            j = 0
            while j < c2:
                if c2 - j == 2 or (c2 - j == 6 and j):  # 2 terms; else 4 (c2 - j is even)
                    x0, x1 = xb[j, :w], xb[j + 1, :w]
                    if nr == 4:
                        k00, k01, k10, k11 = Cp[i, j], Cp[i, j + 1], Cp[i + 1, j], Cp[i + 1, j + 1]
                        k20, k21, k30, k31 = (Cp[i + 2, j], Cp[i + 2, j + 1], Cp[i + 3, j],
                                              Cp[i + 3, j + 1])
                        for t in range(w):
                            v0, v1 = x0[t], x1[t]
                            a0[t] = a0[t] + k00 * v0 + k01 * v1
                            a1[t] = a1[t] + k10 * v0 + k11 * v1
                            a2[t] = a2[t] + k20 * v0 + k21 * v1
                            a3[t] = a3[t] + k30 * v0 + k31 * v1
                    elif nr == 2:
                        k00, k01, k10, k11 = Cp[i, j], Cp[i, j + 1], Cp[i + 1, j], Cp[i + 1, j + 1]
                        for t in range(w):
                            v0, v1 = x0[t], x1[t]
                            a0[t] = a0[t] + k00 * v0 + k01 * v1
                            a1[t] = a1[t] + k10 * v0 + k11 * v1
                    else:
                        k00, k01 = Cp[i, j], Cp[i, j + 1]
                        for t in range(w):
                            a0[t] = a0[t] + k00 * x0[t] + k01 * x1[t]
                    j += 2
                elif nr == 4 and j + 4 == c2 and c < c2:   # the last 3 terms (c odd)
                    x0, x1, x2 = xb[j, :w], xb[j + 1, :w], xb[j + 2, :w]
                    k00, k01, k02 = Cp[i, j], Cp[i, j + 1], Cp[i, j + 2]
                    k10, k11, k12 = Cp[i + 1, j], Cp[i + 1, j + 1], Cp[i + 1, j + 2]
                    k20, k21, k22 = Cp[i + 2, j], Cp[i + 2, j + 1], Cp[i + 2, j + 2]
                    k30, k31, k32 = Cp[i + 3, j], Cp[i + 3, j + 1], Cp[i + 3, j + 2]
                    if j == 0 and not has_add:
                        for t in range(w):
                            v0, v1, v2 = x0[t], x1[t], x2[t]
                            a0[t] = k00 * v0 + k01 * v1 + k02 * v2
                            a1[t] = k10 * v0 + k11 * v1 + k12 * v2
                            a2[t] = k20 * v0 + k21 * v1 + k22 * v2
                            a3[t] = k30 * v0 + k31 * v1 + k32 * v2
                    else:
                        for t in range(w):
                            v0, v1, v2 = x0[t], x1[t], x2[t]
                            a0[t] = a0[t] + k00 * v0 + k01 * v1 + k02 * v2
                            a1[t] = a1[t] + k10 * v0 + k11 * v1 + k12 * v2
                            a2[t] = a2[t] + k20 * v0 + k21 * v1 + k22 * v2
                            a3[t] = a3[t] + k30 * v0 + k31 * v1 + k32 * v2
                    j += 4
                else:
                    x0, x1, x2, x3 = xb[j, :w], xb[j + 1, :w], xb[j + 2, :w], xb[j + 3, :w]
                    if nr == 4:
                        k00, k01, k02, k03 = Cp[i, j], Cp[i, j + 1], Cp[i, j + 2], Cp[i, j + 3]
                        k10, k11, k12, k13 = (Cp[i + 1, j], Cp[i + 1, j + 1], Cp[i + 1, j + 2],
                                              Cp[i + 1, j + 3])
                        k20, k21, k22, k23 = (Cp[i + 2, j], Cp[i + 2, j + 1], Cp[i + 2, j + 2],
                                              Cp[i + 2, j + 3])
                        k30, k31, k32, k33 = (Cp[i + 3, j], Cp[i + 3, j + 1], Cp[i + 3, j + 2],
                                              Cp[i + 3, j + 3])
                        if j == 0 and not has_add:       # the first terms: nothing to read
                            for t in range(w):
                                v0, v1, v2, v3 = x0[t], x1[t], x2[t], x3[t]
                                a0[t] = k00 * v0 + k01 * v1 + k02 * v2 + k03 * v3
                                a1[t] = k10 * v0 + k11 * v1 + k12 * v2 + k13 * v3
                                a2[t] = k20 * v0 + k21 * v1 + k22 * v2 + k23 * v3
                                a3[t] = k30 * v0 + k31 * v1 + k32 * v2 + k33 * v3
                        else:
                            for t in range(w):
                                v0, v1, v2, v3 = x0[t], x1[t], x2[t], x3[t]
                                a0[t] = a0[t] + k00 * v0 + k01 * v1 + k02 * v2 + k03 * v3
                                a1[t] = a1[t] + k10 * v0 + k11 * v1 + k12 * v2 + k13 * v3
                                a2[t] = a2[t] + k20 * v0 + k21 * v1 + k22 * v2 + k23 * v3
                                a3[t] = a3[t] + k30 * v0 + k31 * v1 + k32 * v2 + k33 * v3
                    elif nr == 2:
                        k00, k01, k02, k03 = Cp[i, j], Cp[i, j + 1], Cp[i, j + 2], Cp[i, j + 3]
                        k10, k11, k12, k13 = (Cp[i + 1, j], Cp[i + 1, j + 1], Cp[i + 1, j + 2],
                                              Cp[i + 1, j + 3])
                        for t in range(w):
                            v0, v1, v2, v3 = x0[t], x1[t], x2[t], x3[t]
                            a0[t] = a0[t] + k00 * v0 + k01 * v1 + k02 * v2 + k03 * v3
                            a1[t] = a1[t] + k10 * v0 + k11 * v1 + k12 * v2 + k13 * v3
                    else:
                        k00, k01, k02, k03 = Cp[i, j], Cp[i, j + 1], Cp[i, j + 2], Cp[i, j + 3]
                        for t in range(w):
                            a0[t] = (a0[t] + k00 * x0[t] + k01 * x1[t] + k02 * x2[t]
                                     + k03 * x3[t])
                    j += 4
            for ii in range(min(nr, r - i)):
                a = acc[ii]
                o = out[i + ii][s:s + w]            # a row of a 2-D array, or of a list
                top = 0
                for t in range(w):
                    y = a[t]
                    v = np.int32(y - np.floor(y * _INV_P) * P)
                    top = max(top, v)
                    o[t] = v & 0xFFFF if wire else v
                if top >= (65536 if wire else P):    # rare (~1/p per symbol): 65536 in wire
                    for t in range(w):                # form, or a reduction off by p (never
                        y = a[t]                      # seen: insurance, as in the NumPy path)
                        v = np.int32(y - np.floor(y * _INV_P) * P)
                        if v >= P:
                            v -= P
                        o[t] = v & 0xFFFF if wire else v
                        if wire and v == 65536:
                            if n_found < found.size:
                                found[n_found] = (i + ii) * L + s + t
                            n_found += 1
            i += nr
    return n_found

def _kernel_takes(symbols: int, *arrays) -> bool:
    """Whether this call of ``symbols`` input symbols goes to the compiled kernel.

    It takes C-contiguous uint16/uint32 arrays (the layouts it is compiled for). With
    :data:`KERNEL` None (auto) a process loads it only once it has combined
    :data:`KERNEL_LOAD_SYMBOLS` input symbols in NumPy: importing numba and loading the
    cached kernel costs about 1 s of CPU (BENCHMARKS.md, "Coding"), about what the NumPy
    path spends on that many symbols, so a process pays at most about twice the cheaper
    of the two choices, and one that codes small messages never pays it.
    """
    global KERNEL, _numpy_symbols
    if KERNEL is False or not all(
            a is None or (a.dtype in (np.uint16, np.uint32) and a.flags.c_contiguous)
            for a in arrays):
        return False
    if _compiled_combine is None:
        if KERNEL is None and _numpy_symbols < KERNEL_LOAD_SYMBOLS:
            _numpy_symbols += symbols
            return False
        try:
            # local: numba costs ~0.5 s of CPU to import; only a process that codes a lot pays it
            import numba  # noqa: F401
        except ImportError:
            KERNEL = False
            return False
    return True


def _combine_compiled(coeffs, rows, out, wire, add, esc, add_esc):
    """The kernel (compiled on first use, numba's disk cache after) on
    :func:`combine_mod_p`'s checked arguments; None when it found more output escapes
    than it had room for (the caller then takes the NumPy path)."""
    global _compiled_combine
    if _compiled_combine is None:
        from numba import njit  # local: imported by _kernel_takes already; only large calls
        _compiled_combine = njit(cache=True, boundscheck=False, fastmath={"contract"},
                                 nogil=True)(_combine_steps)
    outs = out if isinstance(out, list) else [out]
    r = coeffs.shape[0]
    L = out.shape[1] if not isinstance(out, list) else (out[0].size if out else 0)
    none = np.zeros(0, dtype=np.int64)
    er, ec = esc if esc is not None else (none, none)
    ar, ac = add_esc if add_esc is not None else (none, none)
    for pos, n, m in (((er, ec), coeffs.shape[1], L), ((ar, ac), r, L)):   # it does not check indices
        if pos[0].size and (min(pos[0].min(), pos[1].min()) < 0 or pos[0].max() >= n
                            or pos[1].max() >= m):
            return None
    row_dtype = (rows[0].dtype if rows else SYMBOL_DTYPE) if isinstance(rows, list) else rows.dtype

    # the NumPy path redoes a call with too many escapes: inputs that overlap an output
    # are copied first (byte ranges; sorted once, so that many rows cost O(log r) each)
    spans = sorted(np.lib.array_utils.byte_bounds(o) for o in outs)
    starts = [lo for lo, _ in spans]
    reach = list(itertools.accumulate((hi for _, hi in spans), max))

    def kept(x):
        lo, hi = np.lib.array_utils.byte_bounds(x)
        k = bisect.bisect_left(starts, hi)          # outputs starting before x ends
        return x.copy() if k and reach[k - 1] > lo else x

    def typed(xs, stack):   # a list as numba types it: one dtype, flags alike (else stacked)
        if xs and L >= ROW_LIST_MIN_SYMBOLS and len(
                {(x.flags.writeable, x.flags.aligned) for x in xs}) == 1:
            from numba.typed import List  # local: numba is loaded already (_kernel_takes)
            return List(xs)
        return np.stack(xs) if stack and xs else None

    if add is not None:
        add = typed([kept(x) for x in add], True) if isinstance(add, list) else kept(add)
    if isinstance(rows, list):
        rows = typed([kept(x) for x in rows], True) if rows else \
            np.zeros((0, L), dtype=SYMBOL_DTYPE)
    else:
        rows = kept(rows)
    if isinstance(out, list):
        out = typed(out, False)
        if out is None:             # rows numba cannot type alike: the caller's NumPy path
            return None
    found = np.empty(64 + r * L // 4096, dtype=np.int64)
    n = _compiled_combine(coeffs, rows, out, L, wire,
                          add if add is not None else np.zeros((0, 0), dtype=row_dtype),
                          add is not None, er, ec, ar, ac, found)
    if n > found.size:
        return None
    return np.sort(found[:n]).astype(np.uint32)


def combine_packed(coeffs: np.ndarray, rows: np.ndarray, escapes: tuple | None = None) -> np.ndarray:
    """:func:`combine_mod_p` straight into one wire buffer (payload, then escapes)."""
    r, L = coeffs.shape[0], rows.shape[1]
    size = r * L
    buf = np.empty(size + 2 * (16 + size // 8192), dtype=SYMBOL_DTYPE)  # slack for escapes
    found = combine_mod_p(coeffs, rows, buf[:size].reshape(r, L), escapes)
    if size + 2 * found.size > buf.size:
        return np.concatenate([buf[:size], found.view(SYMBOL_DTYPE)])
    buf[size: size + 2 * found.size] = found.view(SYMBOL_DTYPE)
    return buf[: size + 2 * found.size]


def split_packed(buf: np.ndarray, shape) -> tuple:
    """A wire buffer as (payload of ``shape``, (escape rows, escape columns))."""
    L = math.prod(shape)
    if buf.size < L or (buf.size - L) % 2:
        raise ValueError(f"coded message of {buf.size} symbols does not fit a {shape} payload")
    flat = np.ascontiguousarray(buf[L:]).view(np.uint32).astype(np.int64)
    cols = shape[-1] if len(shape) > 1 else L
    return buf[:L].reshape(shape), (flat // cols, flat % cols)


def pack(symbols: np.ndarray) -> np.ndarray:
    """Wire format of field elements 0..65536 (any integer/float dtype)."""
    flat = np.asarray(symbols).reshape(-1)
    escapes = np.flatnonzero(flat == 65536).astype(np.uint32)
    buf = np.empty(flat.size + 2 * escapes.size, dtype=SYMBOL_DTYPE)
    np.copyto(buf[: flat.size], np.where(flat == 65536, 0, flat), casting="unsafe")
    buf[flat.size:] = escapes.view(SYMBOL_DTYPE)
    return buf


def unpack(buf: np.ndarray, shape) -> np.ndarray:
    """Inverse of :func:`pack`: an int64 array of field elements of ``shape``."""
    payload, (rows, cols) = split_packed(buf, shape)
    out = payload.astype(np.int64).reshape(shape)
    out.reshape(-1, shape[-1] if len(shape) > 1 else out.size)[rows, cols] = 65536
    return out


# --- IVs as units ----------------------------------------------------------------------

def unit_symbols(dim: int, D: int) -> int:
    """u: symbols per unit when a dim-value IV is cut into D units (padded)."""
    return -(-SYMBOLS_PER_VALUE * dim // D)


def iv_units(iv: np.ndarray, D: int) -> np.ndarray:
    """An IV (float64 vector) as a D x u array of uint16 symbols, zero-padded."""
    symbols = np.ascontiguousarray(iv, dtype=np.float64).view(np.uint16)
    u = unit_symbols(iv.size, D)
    units = np.zeros(D * u, dtype=np.uint16)
    units[: symbols.size] = symbols
    return units.reshape(D, u)


def units_to_iv(units: np.ndarray, dim: int) -> np.ndarray:
    """Inverse of :func:`iv_units`: field elements (< 65536) back to float64 values."""
    symbols = np.asarray(units).reshape(-1)[: SYMBOLS_PER_VALUE * dim]
    return symbols.astype(np.uint16).view(np.float64)     # astype copies: a fresh array


def decoded_ivs(x: np.ndarray, n: int, dim: int) -> list:
    """The n IVs of a fresh uint16 array of decoded units (n IVs' units, one after the
    other), as float64 views into it when every IV starts 8-byte aligned (no copy: the
    array is the decoder's own), else as copies (:func:`units_to_iv`)."""
    per = x.size // n if n else 0
    if x.dtype == SYMBOL_DTYPE and x.flags.c_contiguous and per % 4 == 0:
        views = x.reshape(n, per)[:, : SYMBOLS_PER_VALUE * dim].view(np.float64)
        if views.flags.aligned:                     # every row 8-byte aligned
            return list(views)
    return [units_to_iv(x.reshape(n, -1)[m], dim) for m in range(n)]


def iv_unit_rows(iv: np.ndarray, D: int, u: int) -> list:
    """The D units of u symbols of an IV (:func:`iv_units`) as a list of uint16 rows:
    views into the IV, copies only for units its end pads with zeros."""
    symbols = np.ascontiguousarray(iv, dtype=np.float64).reshape(-1).view(np.uint16)
    full = min(D, symbols.size // u)
    rows = [symbols[f * u: (f + 1) * u] for f in range(full)]
    for f in range(full, D):
        unit = np.empty(u, dtype=np.uint16)
        _copy_symbols(unit, iv, f * u)
        rows.append(unit)
    return rows


def _copy_symbols(dst: np.ndarray, iv: np.ndarray, first: int) -> None:
    """``dst[:] =`` symbols first, first + 1, ... of an IV, zeros past its end.

    The same as slicing the flattened :func:`iv_units` of the IV, without building it.
    """
    symbols = np.ascontiguousarray(iv, dtype=np.float64).reshape(-1).view(np.uint16)
    n = max(0, min(dst.size, symbols.size - first))
    dst[:n] = symbols[first: first + n]
    dst[n:] = 0


# --- the code ----------------------------------------------------------------------------

@dataclass
class BlockLayout:
    """The shape of one coded exchange block, before any coefficient is drawn.

    A block exchanges the IVs of ``users``, each cut into ``F`` units. Relay i
    builds its uplink from ``rows[i]``: one input row per (column c into ``users``,
    first unit f), holding ``width[i]`` consecutive units of ``v_{users[c]}`` from
    unit f on (units at F and beyond are zero padding), and sends ``messages[i]``
    combinations of those rows. The server broadcasts
    ``F (|users| - min_i |users ∩ N_i|)`` unit-sized combinations of all message
    units, enough for the relay that knows the fewest IVs of the block.

    * The paper's round z (docs/scheme.md): F = D_z, one row per user of N_i ∩ I_z (its
      segment, ``a_i D_z`` units wide), ``n_i^z`` messages (eq. 26).
    * The joint exchange (docs/joint.md section 3): one block, one row per
      (user, unit) of N_i, width 1, ``F L_i`` messages.

    Two constructions give a layout its coefficients, with the same bytes on the wire:
    :class:`Block` (random, verified by elimination) and
    :class:`hmtl_mpi.codes.structured.StructuredBlock` (decodable by construction).
    Both answer the per-iteration calls ``encode``, ``combine`` and ``decode``.
    """

    label: str                   # how messages name the block ("round z = 2", "joint")
    F: int                       # units per IV
    users: np.ndarray            # the IVs of the block, 0-based, increasing
    rows: list                   # per relay: int64 (m_i, 2) of (column into users, first unit)
    width: np.ndarray            # per relay: units per input row (H,)
    messages: np.ndarray         # per relay: combinations sent (H,)

    def known(self, G: np.ndarray, i: int) -> np.ndarray:
        """The block's users relay i knows (N_i ∩ users), increasing."""
        return self.users[G[i, self.users] == 1]

    def layout(self) -> "BlockLayout":
        """The bare layout (no coefficients) of this block."""
        return BlockLayout(label=self.label, F=self.F, users=self.users, rows=self.rows,
                           width=self.width, messages=self.messages)

    def _layout_arrays(self) -> dict:
        arrays = {"F": np.array([self.F]),
                  "label": np.frombuffer(self.label.encode(), dtype=np.uint8)}
        for name in ("users", "width", "messages"):
            arrays[name] = getattr(self, name)
        return arrays

    @staticmethod
    def _layout_kwargs(get) -> dict:
        return dict(label=get("label").tobytes().decode(), F=int(get("F")[0]),
                    users=get("users"), width=get("width"), messages=get("messages"))


@dataclass
class Block(BlockLayout):
    """A block with random coefficients and every relay's precomputed decoder (the
    random construction: :func:`build_code`).

    Relay i's uplink is ``C_i @ S_i`` (eq. 26), the broadcast ``M @ (message units)``
    (eq. 31), and relay i decodes with one matrix ``[Inv, -Inv (M E)[rows, known]]``
    applied to the broadcast rows ``decode_rows[i]`` stacked on its known units.
    """

    construction = "random"      # (a class attribute, not a field)

    uplink_coeffs: list = field(default_factory=list)   # per relay: messages_i x m_i (C_i)
    downlink_coeffs: np.ndarray = None                 # M: R x (message units of all relays)
    decode_rows: list = field(default_factory=list)    # per relay: the R rows it uses
    decode_matrix: list = field(default_factory=list)  # per relay: |U_i| x (|rows| + |known units|)

    @property
    def R(self) -> int:
        """Downlink combinations (units) of this block."""
        return int(self.downlink_coeffs.shape[0])

    # --- per iteration ---------------------------------------------------------------
    def encode(self, i: int, ivs: dict, dim: int):
        """Relay i's uplink (eq. 26) as one wire buffer, or None when it sends nothing."""
        C = self.uplink_coeffs[i]
        if C.shape[0] == 0:
            return None
        u = unit_symbols(dim, self.F)
        w = int(self.width[i])
        rows = self.rows[i]
        inputs = np.empty((len(rows), w * u), dtype=np.uint16)   # S_i: the input rows
        for m, (col, first) in enumerate(rows):
            _copy_symbols(inputs[m], ivs[int(self.users[col])], int(first) * u)
        return combine_packed(C, inputs)

    def combine(self, messages: dict, dim: int) -> np.ndarray:
        """The broadcast (eq. 31): every message cut into units (the paper's alpha^z
        pieces, eq. 30) and the R combinations ``M @ units`` taken."""
        units, escapes = _message_units(self, messages, dim)
        return combine_packed(self.downlink_coeffs, units, escapes)

    def decode(self, G: np.ndarray, i: int, ivs: dict, downlink: np.ndarray, dim: int,
               out: dict) -> None:
        """Relay i's unknown IVs of the block into ``out`` (user -> IV)."""
        unknown = [int(k) for k in self.users if not G[i, k]]
        if not unknown:
            return
        u = unit_symbols(dim, self.F)
        Y, (er, ec) = split_packed(downlink, (self.R, u))
        rows = np.asarray(self.decode_rows[i], dtype=np.int64)
        mine = self.known(G, i)
        if u >= ROW_LIST_MIN_SYMBOLS:
            # the decoder's inputs row by row, views (no stacked copy): the broadcast rows
            # it uses, then the known IVs' units (a copy only for a unit padded with zeros)
            terms = [Y[row] for row in rows]
            for k in mine:
                terms += iv_unit_rows(ivs[int(k)], self.F, u)
        else:                                      # short units: one stacked array
            terms = np.empty((len(rows) + len(mine) * self.F, u), dtype=np.uint16)
            for m, row in enumerate(rows):         # row by row: 3-4x faster than np.take
                terms[m] = Y[row]
            for m, k in enumerate(mine):           # the known IVs' units, zero-padded
                block = terms[len(rows) + m * self.F: len(rows) + (m + 1) * self.F]
                _copy_symbols(block.reshape(-1), ivs[int(k)], 0)
        where = np.full(self.R, -1, dtype=np.int64)   # broadcast row -> term
        where[rows] = np.arange(len(rows))
        pos = where[er]
        hit = pos >= 0
        x = np.empty((len(unknown) * self.F, u), dtype=np.uint16)
        bad = combine_mod_p(self.decode_matrix[i], terms, x, (pos[hit], ec[hit]))
        if bad.size:
            raise DecodeError(f"relay {i + 1}, {self.label}: decoded a symbol outside "
                              f"16 bits; the broadcast was corrupted")
        for k, iv in zip(unknown, decoded_ivs(x, len(unknown), dim)):
            out[k] = iv

    def decode_symbols(self, G: np.ndarray, i: int, dim: int) -> int:
        """Symbols relay i's decoder reads per iteration (broadcast rows + known units)."""
        m = np.asarray(self.decode_matrix[i])
        return m.shape[1] * unit_symbols(dim, self.F) if m.shape[0] else 0

    def decode_multiply_adds(self, G: np.ndarray, i: int) -> int:
        """Multiply-adds of relay i's decoder per symbol position of a unit: one dense
        matrix, |U_i| x (R rows used + known units)."""
        return int(np.asarray(self.decode_matrix[i]).size)

    # --- serialisation ---------------------------------------------------------------
    def arrays(self, H: int) -> dict:
        arrays = self._layout_arrays()
        arrays["downlink_coeffs"] = self.downlink_coeffs
        for i in range(H):
            arrays[f"in.{i}"] = self.rows[i]
            arrays[f"C.{i}"] = self.uplink_coeffs[i]
            arrays[f"rows.{i}"] = self.decode_rows[i]
            arrays[f"dec.{i}"] = self.decode_matrix[i]
        return arrays

    @classmethod
    def from_arrays(cls, get, H: int) -> "Block":
        return cls(**cls._layout_kwargs(get), rows=[get(f"in.{i}") for i in range(H)],
                   uplink_coeffs=[get(f"C.{i}") for i in range(H)],
                   downlink_coeffs=get("downlink_coeffs"),
                   decode_rows=[get(f"rows.{i}") for i in range(H)],
                   decode_matrix=[get(f"dec.{i}") for i in range(H)])


# The block classes by the name :class:`Code` serialises them under (the structured
# construction's are read by :func:`hmtl_mpi.codes.structured.load_code`).
BLOCK_KINDS = {"random": Block}


CONSTRUCTIONS = ("structured", "random")


@dataclass
class Code(OnTopology):
    """A coded exchange for a topology: its blocks, deterministic from (G, layouts, seed).

    ``construction`` says how its coefficients were made: ``"random"`` (drawn from
    ``seed``, every relay's decodability verified by elimination: :func:`build_code`) or
    ``"structured"`` (:mod:`hmtl_mpi.codes.structured`, decodable by construction;
    ``seed`` is then unused). ``fallback`` says why a structured build was not possible
    when one was tried and the random code replaced it (empty otherwise).
    """

    G: np.ndarray
    blocks: list = field(default_factory=list)
    seed: int = 0          # the seed of the draw that decodes
    attempts: int = 1      # draws tried (seed, seed+1, ...)
    construction: str = "random"
    fallback: str = ""

    # serialisation: one uint8 buffer, so that one rank builds and Bcasts it
    def to_buffer(self) -> np.ndarray:
        arrays = {"G": self.G, "meta": np.array([self.seed, self.attempts, len(self.blocks)]),
                  "construction": np.frombuffer(self.construction.encode(), dtype=np.uint8),
                  "fallback": np.frombuffer(self.fallback.encode(), dtype=np.uint8)}
        for b, blk in enumerate(self.blocks):
            arrays[f"{b}.kind"] = np.frombuffer(blk.construction.encode(), dtype=np.uint8)
            for name, value in blk.arrays(self.H).items():
                arrays[f"{b}.{name}"] = value
        out = io.BytesIO()
        np.savez(out, **arrays)
        return np.frombuffer(out.getvalue(), dtype=np.uint8)

    @classmethod
    def from_buffer(cls, buf: np.ndarray, kinds: dict = BLOCK_KINDS) -> "Code":
        """The code of :meth:`to_buffer`; ``kinds`` maps a block kind to its class."""
        data = np.load(io.BytesIO(np.asarray(buf, dtype=np.uint8).tobytes()), allow_pickle=False)
        seed, attempts, nblocks = (int(x) for x in data["meta"])
        code = cls(G=data["G"], seed=seed, attempts=attempts,
                   construction=data["construction"].tobytes().decode(),
                   fallback=data["fallback"].tobytes().decode())
        for b in range(nblocks):
            kind = data[f"{b}.kind"].tobytes().decode()
            if kind not in kinds:
                raise ValueError(f"a code buffer with a block of kind {kind!r}: read it with "
                                 f"hmtl_mpi.codes.structured.load_code")
            code.blocks.append(kinds[kind].from_arrays(
                lambda name, b=b: data[f"{b}.{name}"], code.H))
        return code


def _message_units(blk: BlockLayout, messages: dict, dim: int) -> tuple:
    """Every relay's uplink payload of a block cut into units, stacked in relay order
    (relay i, message j, unit s), as uint16 (T, u) with the escapes' (row, column)."""
    u = unit_symbols(dim, blk.F)
    payloads, esc_rows, esc_cols = [], [], []
    offset = 0
    for i in range(len(blk.rows)):
        n, w = int(blk.messages[i]), int(blk.width[i])
        shape = (n, w * u)
        if n == 0 or w == 0:
            continue
        payload, (er, ec) = split_packed(messages[i], shape)
        payloads.append(payload.reshape(n * w, u))
        esc_rows.append(offset + er * w + ec // u)
        esc_cols.append(ec % u)
        offset += n * w
    if not payloads:
        return np.zeros((0, u), np.uint16), None
    return (np.concatenate(payloads, axis=0),
            (np.concatenate(esc_rows), np.concatenate(esc_cols)))


def _message_unit_map(layout: BlockLayout, C: list) -> np.ndarray:
    """E: message units (rows: relay i, message j, unit s) x IV units (columns: user, unit).

    Message unit (i, j, s) = sum over relay i's input rows m of C_i[j, m] times unit
    ``first_m + s`` of that row's user (nothing when that is past F: padding).
    """
    F = layout.F
    H = len(layout.rows)
    total = sum(int(layout.messages[i]) * int(layout.width[i]) for i in range(H))
    E = np.zeros((total, len(layout.users) * F), dtype=np.int64)
    row = 0
    for i in range(H):
        rows_i = np.asarray(layout.rows[i], dtype=np.int64).reshape(-1, 2)
        for j in range(int(layout.messages[i])):
            for s in range(int(layout.width[i])):
                for m, (col, first) in enumerate(rows_i):
                    if first + s < F:
                        E[row, col * F + first + s] = C[i][j, m]
                row += 1
    return E
NUMBA_MIN_ELIMINATION = 96 ** 3   # rows x cols x min(rows, cols) from which numba eliminates
_compiled_rref = None


def _rref_steps(A):  # pragma: no cover - compiled
    """Gauss-Jordan elimination of A (int64, entries in [0, P)) in place, as numba
    compiles it (:func:`_gauss_jordan`); returns the pivot columns.

    Delayed reduction: a row update ``A[i] -= f A[r]`` adds less than P^2 < 2^34 in
    magnitude to an entry, so entries are left unreduced (|A| < n 2^34 < 2^63 for any
    n < 2^28) and reduced only where a value is used: the pivot column before it is
    searched, the pivot row before it is scaled, every entry at the end. The inner
    loop is then a plain multiply-subtract."""
    rows, cols = A.shape
    pivots = np.empty(min(rows, cols), dtype=np.int64)
    r = 0
    for c in range(cols):
        if r == rows:
            break
        pr = -1
        for i in range(r, rows):
            x = A[i, c] % P
            A[i, c] = x + P if x < 0 else x
            if pr < 0 and A[i, c] != 0:
                pr = i
        if pr < 0:
            continue
        if pr != r:
            for j in range(cols):
                A[r, j], A[pr, j] = A[pr, j], A[r, j]
        inv, base, e = 1, A[r, c], P - 2          # A[r, c]^(P-2): its inverse (Fermat)
        while e > 0:
            if e & 1:
                inv = inv * base % P
            base = base * base % P
            e >>= 1
        for j in range(c, cols):
            x = A[r, j] % P
            x = x + P if x < 0 else x
            A[r, j] = x * inv % P
        for i in range(rows):
            if i == r:
                continue
            f = A[i, c] % P
            f = f + P if f < 0 else f
            if f != 0:
                row_i = A[i]
                row_r = A[r]
                for j in range(c, cols):
                    row_i[j] -= f * row_r[j]
        pivots[r] = c
        r += 1
    for i in range(rows):
        for j in range(cols):
            x = A[i, j] % P
            A[i, j] = x + P if x < 0 else x
    return pivots[:r]


def _gauss_jordan(A: np.ndarray) -> tuple:
    """Reduced row echelon form of A over GF(p) and its pivot columns (int64 arithmetic).

    Large matrices (:data:`NUMBA_MIN_ELIMINATION`) are eliminated by the numba-compiled
    :func:`_rref_steps` (the same operations, one entry at a time); small ones by NumPy
    row operations, so that planning a small code never imports numba."""
    global _compiled_rref
    A = np.array(A, dtype=np.int64) % P
    rows, cols = A.shape
    if rows * cols * min(rows, cols) >= NUMBA_MIN_ELIMINATION:
        if _compiled_rref is None:
            from numba import njit  # local: numba costs ~1 s to import; only where it pays
            _compiled_rref = njit(cache=True, boundscheck=False)(_rref_steps)
        pivots = _compiled_rref(A)
        return A, [int(c) for c in pivots]
    pivots, r = [], 0
    for c in range(cols):
        if r == rows:
            break
        nz = np.flatnonzero(A[r:, c])
        if nz.size == 0:
            continue
        pr = r + int(nz[0])
        if pr != r:
            A[[r, pr]] = A[[pr, r]]
        A[r] = A[r] * pow(int(A[r, c]), P - 2, P) % P
        factors = A[:, c].copy()
        factors[r] = 0
        A = (A - np.outer(factors, A[r])) % P
        pivots.append(c)
        r += 1
    return A, pivots


def _rref_pivots(A: np.ndarray) -> list:
    """Pivot columns of A's reduced row echelon form over GF(p)."""
    return _gauss_jordan(A)[1]


def _inverse_mod_p(S: np.ndarray) -> np.ndarray:
    """Inverse of a square matrix over GF(p), by Gauss-Jordan on [S | I]."""
    n = S.shape[0]
    rref, pivots = _gauss_jordan(np.concatenate([S, np.eye(n, dtype=np.int64)], axis=1))
    if pivots[:n] != list(range(n)):
        raise DecodeError("singular decoding matrix")
    return rref[:, n:]


def _matmul_mod_p(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """Exact A @ B over GF(p) in int64 (entries < p, so sums of < 2^31 terms fit)."""
    return (np.asarray(A, dtype=np.int64) @ np.asarray(B, dtype=np.int64)) % P


def _draw(rng: np.random.Generator, shape) -> np.ndarray:
    """Uniform nonzero field elements."""
    return rng.integers(1, P, size=shape, dtype=np.int64)


def downlink_rows(G: np.ndarray, layout: BlockLayout) -> int:
    """R = F (|users| - min_i |users ∩ N_i|): what the relay knowing least must learn."""
    if len(layout.users) == 0:
        return 0
    min_known = int(G[:, layout.users].sum(axis=1).min())
    return layout.F * (len(layout.users) - min_known)


def dense_block(G: np.ndarray, layout: BlockLayout, C: list, M: np.ndarray) -> Block | None:
    """A :class:`Block` of the given coefficients (C_i per relay, M) with every relay's
    decoder, found by exact elimination over GF(p); None if some relay cannot decode."""
    H = G.shape[0]
    F = layout.F
    users = layout.users
    ME = _matmul_mod_p(M, _message_unit_map(layout, C))
    decode_rows, decode_matrix = [], []
    for i in range(H):
        known_cols = np.concatenate([np.arange(c * F, (c + 1) * F)
                                     for c, k in enumerate(users) if G[i, k]] or [np.zeros(0, int)])
        unknown_cols = np.setdiff1d(np.arange(len(users) * F), known_cols)
        if unknown_cols.size == 0:
            decode_rows.append(np.zeros(0, dtype=np.int64))
            decode_matrix.append(np.zeros((0, known_cols.size), dtype=np.int64))
            continue
        A = ME[:, unknown_cols]
        pivots = _rref_pivots(A.T)            # independent rows of A
        if len(pivots) < unknown_cols.size:
            return None
        rows_sel = np.array(pivots, dtype=np.int64)
        inv = _inverse_mod_p(A[rows_sel])
        minus_known = (-_matmul_mod_p(inv, ME[np.ix_(rows_sel, known_cols)])) % P
        decode_rows.append(rows_sel)
        decode_matrix.append(np.concatenate([inv, minus_known], axis=1))
    return Block(label=layout.label, F=F, users=np.asarray(users, dtype=np.int64),
                 rows=[np.asarray(r, dtype=np.int64).reshape(-1, 2) for r in layout.rows],
                 width=np.asarray(layout.width, dtype=np.int64),
                 messages=np.asarray(layout.messages, dtype=np.int64),
                 uplink_coeffs=[np.asarray(c, dtype=np.int64) for c in C],
                 downlink_coeffs=np.asarray(M, dtype=np.int64), decode_rows=decode_rows,
                 decode_matrix=decode_matrix)


def _block(G, layout: BlockLayout, rng, draw) -> Block | None:
    """Draw one block's coefficients and build its decoders; None if a relay cannot decode."""
    H = G.shape[0]
    C = [draw(rng, (int(layout.messages[i]), len(layout.rows[i]))) for i in range(H)]
    total = sum(int(layout.messages[i]) * int(layout.width[i]) for i in range(H))
    M = draw(rng, (downlink_rows(G, layout), total))
    return dense_block(G, layout, C, M)


def build_code(G: np.ndarray, layouts: list, seed: int = 0, max_attempts: int = 50,
               draw=_draw) -> Code:
    """Draw and verify the random code for a list of block layouts (docs/scheme.md:
    coefficients chosen once, verified).

    Tries seeds ``seed, seed + 1, ...`` until every relay decodes every block;
    ``draw(rng, shape)`` makes the coefficients (replaceable for tests). The structured
    construction, tried first by the schemes, is :func:`hmtl_mpi.codes.structured.build_code`.
    """
    G = np.asarray(G, dtype=np.uint8)
    for attempt in range(max_attempts):
        rng = np.random.default_rng(seed + attempt)
        blocks = []
        for layout in layouts:
            blk = _block(G, layout, rng, draw)
            if blk is None:
                break
            blocks.append(blk)
        else:
            return Code(G=G, blocks=blocks, seed=seed + attempt, attempts=attempt + 1)
    raise DecodeError(f"no decodable coefficient draw in {max_attempts} attempts from seed {seed}")


# --- the three per-iteration functions -------------------------------------------------

def relay_encode(code: Code, i: int, ivs: dict) -> list:
    """Relay i's uplink (eq. 26): per block, its combinations as one wire buffer.

    ``ivs`` maps user k -> IV for the users relay i knows. Returns a list with one
    entry per block: a packed uint16 buffer, or None when relay i sends nothing.
    """
    dim = next(iter(ivs.values())).size
    return [blk.encode(i, ivs, dim) for blk in code.blocks]


def uplink_shape(code: Code, b: int, i: int, dim: int) -> tuple:
    """Shape (messages_i, width_i u) of relay i's uplink payload in block b."""
    blk = code.blocks[b]
    return (int(blk.messages[i]), int(blk.width[i]) * unit_symbols(dim, blk.F))


def uplink_symbols(code: Code, b: int, i: int, dim: int) -> int:
    """Payload symbols of relay i's uplink in block b (without escapes)."""
    return math.prod(uplink_shape(code, b, i, dim))


def server_combine(code: Code, b: int, messages: dict, dim: int) -> np.ndarray:
    """The server's broadcast for block b (eq. 31): one packed buffer.

    ``messages`` maps relay i -> its packed uplink buffer for that block (relays that
    send nothing may be missing or None).
    """
    return code.blocks[b].combine(messages, dim)


def downlink_shape(code: Code, b: int, dim: int) -> tuple:
    """Shape (R, u) of the server's broadcast for block b."""
    blk = code.blocks[b]
    return (blk.R, unit_symbols(dim, blk.F))


# The broadcast on the wire, every block at once, in a first buffer of a size every relay
# knows in advance (so that it is one collective with no length sent before it): per
# block its number of escaped symbols (uint64), then every block's R x u payload. The
# escape positions (uint32) follow in a second broadcast only when some count is not
# zero (a coded symbol is 65536 with probability 1/p). Same bytes as payloads + escapes
# + an 8-byte length per block.

def downlink_size(code: Code, dim: int) -> int:
    """Bytes of the broadcast's first buffer."""
    return 8 * len(code.blocks) + 2 * sum(math.prod(downlink_shape(code, b, dim))
                                          for b in range(len(code.blocks)))


def downlink_wire(code: Code, packed: list, dim: int) -> tuple:
    """The blocks' packed broadcasts (:func:`server_combine`) as (first, escapes) uint8
    buffers; ``escapes`` is empty when no symbol was escaped."""
    counts, payloads, escapes = [], [], []
    for b, buf in enumerate(packed):
        L = math.prod(downlink_shape(code, b, dim))
        payloads.append(buf[:L])
        escapes.append(buf[L:])
        counts.append((buf.size - L) // 2)
    first = np.concatenate([np.array(counts, dtype=np.uint64).view(np.uint8)]
                           + [x.view(np.uint8) for x in payloads])
    return first, np.concatenate([x.view(np.uint8) for x in escapes] or [np.zeros(0, np.uint8)])


def downlink_escape_bytes(code: Code, first: np.ndarray) -> int:
    """Bytes of the second buffer, from the counts at the head of the first."""
    counts = np.asarray(first[: 8 * len(code.blocks)]).view(np.uint64)
    return 4 * int(counts.sum())


def downlink_unwire(code: Code, first: np.ndarray, escapes: np.ndarray, dim: int) -> list:
    """Inverse of :func:`downlink_wire`: the blocks' packed broadcasts (uint16)."""
    nb = len(code.blocks)
    counts = np.asarray(first[: 8 * nb]).view(np.uint64)
    pos, epos, out = 8 * nb, 0, []
    for b in range(nb):
        L = math.prod(downlink_shape(code, b, dim))
        payload = first[pos: pos + 2 * L].view(np.uint16)
        esc = escapes[epos: epos + 4 * int(counts[b])].view(np.uint16)
        out.append(np.concatenate([payload, esc]) if esc.size else payload)
        pos += 2 * L
        epos += 4 * int(counts[b])
    return out


def relay_decode(code: Code, i: int, ivs: dict, downlinks: list, dim: int) -> dict:
    """Relay i recovers every IV of every block from its own IVs and the broadcasts.

    Returns a dict user k -> IV (float64) holding the IVs it had plus every IV of
    every block. A decoded symbol of 65536 cannot come from a float64 and means a
    corrupted message: it raises DecodeError.
    """
    out = dict(ivs)
    for b, blk in enumerate(code.blocks):
        blk.decode(code.G, i, ivs, downlinks[b], dim, out)
    return out


# --- test inputs -------------------------------------------------------------------------

def special_ivs(K: int, dim: int, seed: int) -> np.ndarray:
    """K random IVs of ``dim`` float64 values salted with NaN, +-inf, -0.0, subnormals."""
    rng = np.random.default_rng(seed)
    ivs = rng.standard_normal((K, dim))
    bits = ivs.view(np.uint64)
    bits[:, ::7] = rng.integers(0, 2**63, size=bits[:, ::7].shape, dtype=np.uint64) * 2 + 1
    specials = np.array([np.nan, np.inf, -np.inf, -0.0, 5e-324, -2.5e-310, 0.0], dtype=np.float64)
    flat = ivs.reshape(-1)
    pos = rng.choice(flat.size, size=min(flat.size, 7 * K), replace=False)
    flat[pos] = specials[np.arange(pos.size) % specials.size]
    bits.reshape(-1)[pos[: K]] = 0x7FF8DEADBEEF0001  # a NaN with a payload
    return ivs
