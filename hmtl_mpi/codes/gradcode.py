"""Hierarchical gradient coding (HGC) over GF(2^31 - 1), its two baselines, and JNCSS.

Pure module (no MPI). The construction is docs/gradient-coding.md's (Tang, Li, Chen, Chen, arXiv
2406.10831, as reconstructed there). Naming: docs/gradient-coding.md's K (data partitions) is
``P`` here, because the project's K counts users. Edges are the relays (``n`` of
them, edge i with ``m_i`` workers, ``M = sum_i m_i``), workers are the users, the
master is the server. Edges, workers and partitions are 0-based in code; error
messages number edges from 1.

Field and representability (docs/gradient-coding.md section 3, last paragraph; section 6)
-------------------------------------------------------------------------
Partial gradients are fixed-point int64 vectors and every scheme must end with
the bit-identical integer sum, so all coding is exact arithmetic in GF(p),
``p = P31 = 2^31 - 1`` (the Mersenne prime M31). A signed integer x enters the
field as ``x mod p`` (:func:`to_field`); a field element y > p // 2 stands for the
negative integer ``y - p`` (:func:`from_field`). Every code below is linear, so
the master's decoded field element is ``(sum_k g_k) mod p`` *exactly*, whatever
the individual g_k, the coefficients and the straggler pattern. Hence:

    decoding returns the true integer sum  iff  |sum_k g_k| < p / 2,
    i.e. -2^30 < sum_k g_k < 2^30 (|sum| <= 2^30 - 1), per coordinate.

Only the *total* is bounded; single partitions and intermediate messages may be
anything (they are residues). A sum of exactly +-2^30 or more wraps around and
comes back wrong (by a multiple of p), silently: the bound is the caller's to
keep (:mod:`hmtl_mpi.learning.gd` picks its fixed-point scale from it).

Signed rational coefficients (docs/gradient-coding.md's ``b_i[k]``, ``W_ij[k]`` and the decoders'
``1 / prod (alpha_i - alpha_i')``) are mapped exactly: numerator times the inverse
of the denominator, mod p (:func:`field_from_rational`). Every difference of two
evaluation points is a nonzero integer of magnitude < n < p (or < m_i < p), so no
product of them is divisible by the prime p: every coefficient and every decoder
exists and every coefficient of docs/gradient-coding.md stays nonzero in the field.

Arithmetic: :func:`field_combine` multiplies int64 residues (< 2^31 each, product
< 2^62), reduces every product at once and reduces the accumulated sum at the end
(fewer than 2^32 reduced terms fit in int64), vectorised over the vector length.

The codes (docs/gradient-coding.md section 3)
----------------------------
One data structure, :class:`TreeCode`, for the three schemes; each worker sends ONE
combination ``z_ij = sum_{k in S_ij} W_ij[k] g_k`` of its D partitions, edge i ONE
combination of its first ``m_i - s_w`` workers' messages, the master adds its
first ``n - s_e`` edges' messages with field coefficients.

* :func:`hgc_code`: docs/gradient-coding.md's construction, steps 1-6 (cyclic slots at both
  layers, polynomial coefficients with ``alpha_i = i`` and ``beta_j = j``,
  leading-coefficient decoders). Meets the bound ``D / P = (s_e+1)(s_w+1) / M``
  (docs/gradient-coding.md section 2).
* :func:`flat_code`: flat gradient coding (Tandon et al.'s cyclic placement,
  workers straight to the master, tolerance s) as the one-layer special case:
  ``n = M`` edges of one worker each, ``s_e = s``, ``s_w = 0``.
* :func:`plain_sum_code` (alias :func:`uncoded_code`): distributed GD through the
  edges, disjoint partitions, every coefficient 1.

:func:`verify` checks a code by decoding every straggler pattern (or a seeded
sample) on random fixed-point gradients.

JNCSS (docs/gradient-coding.md section 4, ours)
------------------------------
Joint node and coding-scheme selection: choose the edges, the workers of every
chosen edge and ``(s_e, s_w)`` to minimise the expected iteration time under the
shifted-exponential delay model of :class:`DelayModel`. :func:`expected_time`
(Monte Carlo with common random numbers), :func:`jncss_greedy` (docs/gradient-coding.md's greedy
rule) and :func:`jncss_brute_force` (exhaustive, small instances only).
"""

from __future__ import annotations

import itertools
import math
import operator
import random
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np

P31 = 2 ** 31 - 1           # the field's prime, the Mersenne prime M31
HALF = P31 // 2             # 2^30 - 1: the largest |integer| a field element stands for
SUM_BOUND = 2 ** 30         # decoding is exact iff |sum_k g_k| < SUM_BOUND (= p / 2 rounded up)


class GradCodeError(ValueError):
    """A configuration no code of docs/gradient-coding.md section 3 exists for; the message names the
    edge (numbered from 1) or the parameter and the violated condition."""


# --- field arithmetic -----------------------------------------------------------------

def to_field(x) -> np.ndarray:
    """Signed integers (any int dtype, any shape) as GF(p) elements: int64 in [0, p)."""
    x = np.asarray(x)
    if x.dtype.kind not in "iu":
        raise TypeError(f"to_field needs integers (fixed-point values), got dtype {x.dtype}")
    if x.dtype == np.uint64:
        x = np.remainder(x, np.uint64(P31))
    return np.remainder(x.astype(np.int64, copy=False), P31)


def from_field(y) -> np.ndarray:
    """GF(p) elements as the signed integers they stand for: ``y > p // 2`` -> ``y - p``.

    The inverse of :func:`to_field` on integers of magnitude < 2^30 (see the module
    docstring for the representability condition).
    """
    y = np.asarray(y, dtype=np.int64)
    return np.where(y > HALF, y - P31, y)


def field_inv(a):
    """Multiplicative inverse mod p (``a^(p-2)``) of an int or of an integer array.

    Raises ZeroDivisionError for an element divisible by p.
    """
    if np.ndim(a) == 0:
        r = int(a) % P31
        if r == 0:
            raise ZeroDivisionError("0 has no inverse in GF(2^31 - 1)")
        return pow(r, P31 - 2, P31)
    base = to_field(np.asarray(a))
    if np.any(base == 0):
        raise ZeroDivisionError("0 has no inverse in GF(2^31 - 1)")
    result = np.ones_like(base)
    e = P31 - 2
    while e:                                   # square and multiply, every product < 2^62
        if e & 1:
            result = (result * base) % P31
        base = (base * base) % P31
        e >>= 1
    return result


def field_from_rational(x) -> int:
    """An int or Fraction as a field element: numerator * denominator^-1 mod p."""
    x = Fraction(x)
    return (x.numerator % P31) * field_inv(x.denominator) % P31


def field_combine(coeffs, rows) -> np.ndarray:
    """``sum_r coeffs[r] * rows[r] mod p`` as int64 in [0, p).

    ``coeffs``: r field elements (int64 in [0, p)); ``rows``: an int64 array of shape
    (r, ...) of field elements (vectorised over everything after the first axis).
    Each product is < 2^62 and reduced at once; the sum of fewer than 2^32 reduced
    products fits in int64 and is reduced at the end: exact, no overflow. Entries of
    ``rows`` outside [0, p) are the caller's error (use :func:`to_field`); the
    coefficients are checked.
    """
    c = np.asarray(coeffs, dtype=np.int64).reshape(-1)
    rows = np.asarray(rows, dtype=np.int64)
    if rows.ndim == 0 or rows.shape[0] != c.size:
        raise ValueError(f"{c.size} coefficients for rows of shape {rows.shape}")
    if c.size and (int(c.min()) < 0 or int(c.max()) >= P31):
        raise ValueError("field_combine: coefficients must be field elements in [0, 2^31 - 1)")
    if c.size >= 2 ** 32:
        raise ValueError("field_combine: at most 2^32 - 1 terms")
    out = np.zeros(rows.shape[1:], dtype=np.int64)
    tmp = np.empty_like(out)
    for r in range(c.size):
        np.multiply(rows[r], c[r], out=tmp)
        np.remainder(tmp, P31, out=tmp)
        out += tmp
    np.remainder(out, P31, out=out)
    return out


def _leading_coeff_decoder(points, chosen) -> dict:
    """Leading-coefficient interpolation weights (docs/gradient-coding.md section 3, steps 3 and 6).

    For the polynomial of degree ``|chosen| - 1`` through the values at
    ``points[j]``, j in ``chosen``, the leading coefficient is
    ``sum_j value_j / prod_{j' in chosen, j' != j} (points[j] - points[j'])``.
    Returns {j: that weight as a field element}.
    """
    out = {}
    for j in chosen:
        den = 1
        for jj in chosen:
            if jj != j:
                den *= points[j] - points[jj]
        out[j] = field_from_rational(Fraction(1, den))
    return out


# --- conditions (docs/gradient-coding.md sections 2 and 6) ----------------------------------------------

def _fmt(x: Fraction) -> str:
    """A Fraction as a decimal when it has a finite one (7.5), else as a/b."""
    d = x.denominator
    while d % 2 == 0:
        d //= 2
    while d % 5 == 0:
        d //= 5
    if d == 1:
        return f"{float(x):g}"
    return f"{x.numerator}/{x.denominator}"


def _as_int(name: str, v) -> int:
    try:
        return operator.index(v)
    except TypeError:
        raise GradCodeError(f"{name} = {v!r} is not an integer") from None


def _check_m(m) -> tuple:
    try:
        m = tuple(m)
    except TypeError:
        raise GradCodeError(f"m = {m!r} is not a sequence of workers per edge") from None
    if not m:
        raise GradCodeError("m is empty: need at least one edge")
    out = []
    for i, mi in enumerate(m):
        mi = _as_int(f"edge {i + 1}: m_i", mi)
        if mi < 1:
            raise GradCodeError(f"edge {i + 1}: m_i = {mi} < 1 worker")
        out.append(mi)
    return tuple(out)


def feasibility_error(m, P, s_e, s_w):
    """The first violated condition of :func:`hgc_code` as a message, or None.

    Conditions (docs/gradient-coding.md sections 2, 3 and 6), in this order: ``s_e < n``;
    ``s_w < m_i`` for every edge (worker placement needs D <= K_i);
    ``m_i (s_e+1) <= M`` (else edge i would need ``K_i > P`` distinct partitions);
    ``K_i = P (s_e+1) m_i / M`` an integer; ``D = P (s_e+1)(s_w+1) / M`` an integer.
    """
    try:
        m = _check_m(m)
        P = _as_int("P", P)
        s_e = _as_int("s_e", s_e)
        s_w = _as_int("s_w", s_w)
    except GradCodeError as exc:
        return str(exc)
    n, M = len(m), sum(m)
    if P < 1:
        return f"P = {P} partitions: need P >= 1"
    if s_e < 0 or s_w < 0:
        return f"s_e = {s_e}, s_w = {s_w}: tolerances must be >= 0"
    if s_e >= n:
        return f"s_e = {s_e} >= n = {n} edges"
    for i, mi in enumerate(m):
        if s_w >= mi:
            return f"edge {i + 1}: s_w = {s_w} >= m_i = {mi}"
    for i, mi in enumerate(m):
        if mi * (s_e + 1) > M:
            return (f"edge {i + 1}: m_i (s_e + 1) = {mi * (s_e + 1)} > M = {M}, "
                    f"so it would need more than all P partitions")
    for i, mi in enumerate(m):
        K_i = Fraction(P * (s_e + 1) * mi, M)
        if K_i.denominator != 1:
            return (f"P (s_e+1) m_i / M = {_fmt(K_i)} is not an integer for edge {i + 1} "
                    f"(choose P a multiple of M = {M})")
    D = Fraction(P * (s_e + 1) * (s_w + 1), M)
    if D.denominator != 1:
        return (f"D = P (s_e+1)(s_w+1) / M = {_fmt(D)} is not an integer "
                f"(choose P a multiple of M = {M})")
    return None


# --- the code --------------------------------------------------------------------------

@dataclass
class TreeCode:
    """A two-layer gradient code: worker -> edge -> master (docs/gradient-coding.md sections 1 and 3).

    Worker (i, j) holds the partitions ``worker_parts[i][j]`` (D of them) and sends
    ``z_ij = sum_t worker_coeffs[i][j][t] g_{worker_parts[i][j][t]}``. Edge i holds
    ``edge_parts[i]`` (its ``K_i`` partitions in slot order) and its combination
    of any ``m_i - s_w`` worker messages equals ``y_i = sum_t edge_coeffs[i][t]
    g_{edge_parts[i][t]} = b_i . g``; any ``n - s_e`` of the y_i give sum_k g_k.

    ``alpha`` (per edge) and ``beta`` (per edge, per worker) are the evaluation
    points of the polynomial codes; both None for the plain-sum code (s_e = s_w = 0,
    every coefficient and every decoder coefficient 1). All coefficients are GF(p)
    elements (int64 in [0, p)); use :func:`from_field` for their signed values.
    """

    m: tuple
    P: int
    s_e: int
    s_w: int
    D: int
    edge_parts: list
    worker_parts: list
    worker_coeffs: list
    edge_coeffs: list = field(default_factory=list)
    alpha: tuple | None = None
    beta: list | None = None
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    # --- sizes
    @property
    def n(self) -> int:
        return len(self.m)

    @property
    def M(self) -> int:
        return sum(self.m)

    @property
    def master_messages(self) -> int:
        """Messages the master waits for per iteration: ``n - s_e`` (docs/gradient-coding.md section 1)."""
        return self.n - self.s_e

    @property
    def load_lower_bound(self) -> Fraction:
        """docs/gradient-coding.md section 2: ``D >= P (s_e+1)(s_w+1) / M`` for any scheme with this tolerance."""
        return Fraction(self.P * (self.s_e + 1) * (self.s_w + 1), self.M)

    @property
    def partitions_per_edge(self) -> list:
        """``|P_i|`` (docs/gradient-coding.md's K_i) per edge."""
        return [len(p) for p in self.edge_parts]

    # --- dense views (tests, reports)
    def edge_matrix(self) -> np.ndarray:
        """The n x P matrix of the b_i (field elements; 0 outside P_i)."""
        B = np.zeros((self.n, self.P), dtype=np.int64)
        for i in range(self.n):
            B[i, self.edge_parts[i]] = self.edge_coeffs[i]
        return B

    def worker_matrix(self, i: int) -> np.ndarray:
        """Edge i's m_i x P matrix of the W_ij (field elements; 0 outside S_ij)."""
        W = np.zeros((self.m[i], self.P), dtype=np.int64)
        for j in range(self.m[i]):
            W[j, self.worker_parts[i][j]] = self.worker_coeffs[i][j]
        return W

    # --- encoding and decoding
    def worker_message(self, i: int, j: int, g_field: np.ndarray) -> np.ndarray:
        """``z_ij`` from the (P, ...) field array of all partition gradients.

        (A worker holding only its own D partition gradients can pass them as
        ``field_combine(code.worker_coeffs[i][j], its_rows)`` directly.)
        """
        g_field = np.asarray(g_field, dtype=np.int64)
        return field_combine(self.worker_coeffs[i][j], g_field[self.worker_parts[i][j]])

    def _arrivals(self, what: str, arrived, size: int, need: int) -> list:
        arrived = [operator.index(a) for a in arrived]
        if len(set(arrived)) != len(arrived):
            raise ValueError(f"{what}: arrivals {arrived} are not distinct")
        bad = [a for a in arrived if not 0 <= a < size]
        if bad:
            raise ValueError(f"{what}: arrivals {bad} out of range 0..{size - 1}")
        if len(arrived) < need:
            raise ValueError(f"{what}: {len(arrived)} arrivals, need {need}")
        return arrived

    def edge_decoder(self, i: int, arrived) -> np.ndarray:
        """Field coefficients ``c_j`` for the workers ``arrived`` (in that order) of edge i
        with ``sum_j c_j z_ij = b_i . g`` (docs/gradient-coding.md section 3 step 6).

        ``arrived`` holds at least ``m_i - s_w`` distinct workers of edge i; the first
        ``m_i - s_w`` of them are used and any later ones get coefficient 0.
        """
        if not 0 <= i < self.n:
            raise ValueError(f"edge index {i} out of range 0..{self.n - 1}")
        need = self.m[i] - self.s_w
        arrived = self._arrivals(f"edge {i + 1}", arrived, self.m[i], need)
        used = arrived[:need]
        if self.beta is None:
            weights = dict.fromkeys(used, 1)
        else:
            key = ("edge", i, frozenset(used))
            weights = self._cache.get(key)
            if weights is None:
                weights = self._cache[key] = _leading_coeff_decoder(self.beta[i], used)
        return np.array([weights.get(j, 0) for j in arrived], dtype=np.int64)

    def master_decoder(self, arrived_edges) -> np.ndarray:
        """Field coefficients ``c_i`` for the edges ``arrived_edges`` (in that order) with
        ``sum_i c_i y_i = sum_k g_k`` (docs/gradient-coding.md section 3 step 3).

        At least ``n - s_e`` distinct edges; the first ``n - s_e`` are used, later
        ones get coefficient 0.
        """
        need = self.n - self.s_e
        arrived = self._arrivals("master", arrived_edges, self.n, need)
        used = arrived[:need]
        if self.alpha is None:
            weights = dict.fromkeys(used, 1)
        else:
            key = ("master", frozenset(used))
            weights = self._cache.get(key)
            if weights is None:
                weights = self._cache[key] = _leading_coeff_decoder(self.alpha, used)
        return np.array([weights.get(i, 0) for i in arrived], dtype=np.int64)

    def to_dict(self) -> dict:
        """The JSON form (plain ints, floats and lists)."""
        return {
            "m": list(self.m),
            "n": self.n,
            "M": self.M,
            "P": self.P,
            "s_e": self.s_e,
            "s_w": self.s_w,
            "load_per_worker": self.D,
            "load_lower_bound": float(self.load_lower_bound),
            "load_lower_bound_exact": str(self.load_lower_bound),
            "partitions_per_edge": self.partitions_per_edge,
            "master_messages": self.master_messages,
        }


def _polynomial_code(m, P, s_e, s_w, D, edge_parts, worker_parts) -> TreeCode:
    """Coefficients of docs/gradient-coding.md section 3 steps 2 and 5 for given placements.

    Valid for any placement in which every partition lies on exactly ``s_e + 1``
    edges and, inside each of them, on exactly ``s_w + 1`` workers (checked here):
    ``b_i[k] = prod_{i' not in Hold(k)} (alpha_i - alpha_i')`` and
    ``W_ij[k] = b_i[k] prod_{j' in edge i not holding k} (beta_j - beta_j')``,
    with ``alpha_i = i``, ``beta_j = j``, exact integers mapped into GF(p).
    """
    n = len(m)
    alpha = tuple(range(n))
    beta = [tuple(range(mi)) for mi in m]
    hold = [[] for _ in range(P)]
    for i, parts in enumerate(edge_parts):
        for k in parts.tolist():
            hold[k].append(i)
    assert all(len(h) == s_e + 1 and len(set(h)) == s_e + 1 for h in hold), "edge placement"
    edge_coeffs, worker_coeffs = [], []
    for i in range(n):
        b = {}
        for k in edge_parts[i].tolist():
            v = 1
            for ii in range(n):
                if ii not in hold[k]:
                    v *= alpha[i] - alpha[ii]
            b[k] = v
        edge_coeffs.append(np.array([field_from_rational(b[k]) for k in edge_parts[i].tolist()],
                                    dtype=np.int64))
        holders = {k: [] for k in b}
        for j, parts in enumerate(worker_parts[i]):
            assert len(parts) == D, "worker load"
            for k in parts.tolist():
                holders[k].append(j)
        assert all(len(h) == s_w + 1 and len(set(h)) == s_w + 1 for h in holders.values()), \
            "worker placement"
        rows = []
        for j, parts in enumerate(worker_parts[i]):
            row = []
            for k in parts.tolist():
                v = b[k]
                for jj in range(m[i]):
                    if jj not in holders[k]:
                        v *= beta[i][j] - beta[i][jj]
                row.append(field_from_rational(v))
            rows.append(np.array(row, dtype=np.int64))
        worker_coeffs.append(rows)
    return TreeCode(m=tuple(m), P=P, s_e=s_e, s_w=s_w, D=D, edge_parts=list(edge_parts),
                    worker_parts=list(worker_parts), worker_coeffs=worker_coeffs,
                    edge_coeffs=edge_coeffs, alpha=alpha, beta=beta)


def hgc_code(m, P, s_e, s_w) -> TreeCode:
    """The HGC code of docs/gradient-coding.md section 3, steps 1-6, for ``m`` workers per edge.

    1. ``(s_e+1) P`` slots, slot t holds partition ``t mod P``; edge i takes the next
       ``K_i = P (s_e+1) m_i / M`` consecutive slots (its ``edge_parts``, slot order).
    2. ``b_i[k] = prod_{i' not in Hold(k)} (alpha_i - alpha_i')``, alpha_i = i.
    3. Master: leading coefficient of the interpolant through any n - s_e edges.
    4. Inside edge i, the same cyclic rule on its K_i partitions: ``(s_w+1) K_i``
       slots, worker j takes D consecutive ones, ``D = P (s_e+1)(s_w+1) / M``.
    5. ``W_ij[k] = b_i[k] prod_{j' not holding k} (beta_j - beta_j')``, beta_j = j.
    6. Edge: leading coefficient of the interpolant through any m_i - s_w workers.

    D equals the lower bound of section 2. Raises :class:`GradCodeError` when a
    condition of :func:`feasibility_error` fails.
    """
    err = feasibility_error(m, P, s_e, s_w)
    if err:
        raise GradCodeError(err)
    m = _check_m(m)
    P, s_e, s_w = int(P), int(s_e), int(s_w)
    M = sum(m)
    K = [P * (s_e + 1) * mi // M for mi in m]
    D = P * (s_e + 1) * (s_w + 1) // M
    edge_parts, worker_parts = [], []
    start = 0
    for i, mi in enumerate(m):
        parts = np.arange(start, start + K[i], dtype=np.int64) % P
        start += K[i]
        edge_parts.append(parts)
        worker_parts.append([parts[np.arange(j * D, (j + 1) * D) % K[i]] for j in range(mi)])
    return _polynomial_code(m, P, s_e, s_w, D, edge_parts, worker_parts)


def flat_code(M, P, s) -> TreeCode:
    """Flat gradient coding with tolerance s: M workers straight to the master.

    Placement: Tandon et al.'s cyclic one, generalised to ``P = q M`` partitions:
    worker i holds the ``D = q (s+1)`` consecutive partitions ``i q, ..., i q + D - 1``
    (mod P), i.e. blocks i..i+s of q partitions (q = 1 is Tandon's k = n case).
    Coefficients and decoders: docs/gradient-coding.md's polynomial rule (docs/gradient-coding.md section 3 step 2),
    valid for any placement with s + 1 holders per partition (Tandon's own B comes
    from a random H; this one needs no draw and no solve). The master decodes from
    any ``M - s`` workers.

    As a :class:`TreeCode` this is the one-layer case: ``n = M`` "edges" of one
    worker each, ``s_e = s``, ``s_w = 0``; worker_coeffs = b_i and every edge decoder
    is [1]. In the runtime each of these single-worker "edges" IS the worker,
    sending its z directly to the master (no relay forwards it).
    """
    M = _as_int("M", M)
    P = _as_int("P", P)
    s = _as_int("s", s)
    if M < 1:
        raise GradCodeError(f"M = {M} workers: need M >= 1")
    if s < 0:
        raise GradCodeError(f"s = {s}: the tolerance must be >= 0")
    if s >= M:
        raise GradCodeError(f"s = {s} >= M = {M} workers")
    if P < 1 or P % M:
        raise GradCodeError(f"P = {P} is not a positive multiple of M = {M} workers "
                            f"(the cyclic placement needs P = q M)")
    q = P // M
    D = q * (s + 1)
    parts = [np.arange(i * q, i * q + D, dtype=np.int64) % P for i in range(M)]
    return _polynomial_code((1,) * M, P, s, 0, D, parts, [[p] for p in parts])


def plain_sum_code(m, P) -> TreeCode:
    """Plain distributed GD through the edges (no coding, no tolerance).

    The P partitions are split disjointly and evenly: worker number w (counted over
    all edges in order) holds ``w q, ..., (w+1) q - 1`` with ``q = D = P / M``; every
    coefficient is 1, ``s_e = s_w = 0``, every decoder is all ones (an edge adds its
    workers' sums, the master adds the edges'). Requires P a multiple of M.
    """
    m = _check_m(m)
    P = _as_int("P", P)
    M = sum(m)
    if P < 1 or P % M:
        raise GradCodeError(f"P = {P} is not a positive multiple of M = {M} workers "
                            f"(the partitions are split evenly over the workers)")
    q = P // M
    edge_parts, worker_parts, worker_coeffs, edge_coeffs = [], [], [], []
    w = 0
    for mi in m:
        ws = [np.arange((w + j) * q, (w + j + 1) * q, dtype=np.int64) for j in range(mi)]
        w += mi
        worker_parts.append(ws)
        worker_coeffs.append([np.ones(q, dtype=np.int64) for _ in ws])
        edge_parts.append(np.concatenate(ws))
        edge_coeffs.append(np.ones(mi * q, dtype=np.int64))
    return TreeCode(m=m, P=P, s_e=0, s_w=0, D=q, edge_parts=edge_parts,
                    worker_parts=worker_parts, worker_coeffs=worker_coeffs,
                    edge_coeffs=edge_coeffs, alpha=None, beta=None)


uncoded_code = plain_sum_code


# --- verification ----------------------------------------------------------------------

def pattern_count(code: TreeCode) -> int:
    """Straggler patterns: s_e straggling edges, and s_w straggling workers in every
    other edge: ``sum_{|S| = s_e} prod_{i not in S} C(m_i, s_w)`` (21 for docs/gradient-coding.md's
    worked example)."""
    w = [math.comb(mi, code.s_w) for mi in code.m]
    return sum(math.prod(w[i] for i in range(code.n) if i not in S)
               for S in itertools.combinations(range(code.n), code.s_e))


def sample_gradients(P: int, d: int = 8, seed: int = 0) -> np.ndarray:
    """Random fixed-point partition gradients (P, d) int64 whose column sums stay
    within the representable range (|sum| <= 2^30 - 1), with extremes.

    Columns (cyclically repeated past 7): 0 every partition at +B and 1 at -B with
    ``B = (2^30 - 1) // P`` (the largest uniform magnitude); 2 uniform in [-B, B];
    3 one partition at +(2^30 - 1), the rest 0; 4 huge values (|g_k| up to 2^40,
    far outside the field's signed range) cancelling to a small sum; 5 one partition
    at -(2^30 - 1); 6 sparse uniform; 7 uniform in [-B, B].
    """
    rng = np.random.default_rng(seed)
    B = HALF // P
    g = np.zeros((P, d), dtype=np.int64)
    for col in range(d):
        kind = col % 8
        if kind == 0:
            g[:, col] = B
        elif kind == 1:
            g[:, col] = -B
        elif kind in (2, 7):
            g[:, col] = rng.integers(-B, B + 1, size=P)
        elif kind == 3:
            g[rng.integers(P), col] = HALF
        elif kind == 4:
            v = rng.integers(-2 ** 40, 2 ** 40, size=P)
            v[-1] = 0
            v[-1] = -int(v.sum()) + int(rng.integers(-B, B + 1))
            g[:, col] = v
        elif kind == 5:
            g[rng.integers(P), col] = -HALF
        else:
            g[:, col] = np.where(rng.random(P) < 0.3, rng.integers(-B, B + 1, size=P), 0)
    return g


def _patterns(code: TreeCode, limit: int, seed: int):
    """(straggling edges, per edge its straggling workers) for every pattern, or a
    seeded sample of ``limit`` distinct patterns, uniform over all of them."""
    n, m, s_e, s_w = code.n, code.m, code.s_e, code.s_w
    total = pattern_count(code)
    if total <= limit:
        for S in itertools.combinations(range(n), s_e):
            alive = [i for i in range(n) if i not in S]
            for pick in itertools.product(*(itertools.combinations(range(m[i]), s_w)
                                            for i in alive)):
                late = [()] * n
                for i, p in zip(alive, pick):
                    late[i] = p
                yield frozenset(S), tuple(late)
        return
    rnd = random.Random(seed)
    w = [math.comb(mi, s_w) for mi in m]
    w_max = math.prod(sorted(w, reverse=True)[: n - s_e])
    seen = set()
    while len(seen) < limit:
        S = frozenset(rnd.sample(range(n), s_e))
        weight = math.prod(w[i] for i in range(n) if i not in S)
        if rnd.random() * w_max >= weight:          # rejection: uniform over patterns
            continue
        late = tuple(() if i in S else tuple(sorted(rnd.sample(range(m[i]), s_w)))
                     for i in range(n))
        if (S, late) in seen:
            continue
        seen.add((S, late))
        yield S, late


def verify(code: TreeCode, limit: int = 20000, seed: int = 0, d: int = 8) -> dict:
    """Decode sum_k g_k under every straggler pattern (or a seeded sample) and compare.

    A pattern is a set of s_e straggling edges plus, in every other edge, a set of
    s_w straggling workers (:func:`pattern_count` of them). The gradients are
    :func:`sample_gradients` (P, d), int64 with every column sum within +-(2^30 - 1).
    Every worker's z_ij is encoded once; per pattern each surviving edge decodes its
    surviving workers (arriving in a random order) with :meth:`TreeCode.edge_decoder`,
    the master decodes the surviving edges (random order) with
    :meth:`TreeCode.master_decoder`, and ``from_field`` of the result must equal the
    exact int64 sum. When there are more than ``limit`` patterns, ``limit`` distinct
    ones are drawn uniformly with ``seed`` (``sampled`` is then True).

    Returns {patterns, total_patterns, sampled, exact, failures, d}.
    """
    g = sample_gradients(code.P, d, seed)
    truth = g.sum(axis=0)
    gf = to_field(g)
    z = [np.stack([code.worker_message(i, j, gf) for j in range(code.m[i])])
         for i in range(code.n)]
    total = pattern_count(code)
    rng = np.random.default_rng(seed + 1)
    ys: dict = {}
    checked = failures = 0
    for S, late in _patterns(code, limit, seed):
        edges = [i for i in range(code.n) if i not in S]
        rng.shuffle(edges)
        y = []
        for i in edges:
            arrived = [j for j in range(code.m[i]) if j not in late[i]]
            rng.shuffle(arrived)
            key = (i, tuple(arrived))
            if key not in ys:
                ys[key] = field_combine(code.edge_decoder(i, arrived), z[i][arrived])
            y.append(ys[key])
        total_field = field_combine(code.master_decoder(edges), np.stack(y))
        checked += 1
        if not np.array_equal(from_field(total_field), truth):
            failures += 1
    return {"patterns": checked, "total_patterns": total, "sampled": total > limit,
            "exact": failures == 0 and checked > 0, "failures": failures, "d": d}


# --- JNCSS (docs/gradient-coding.md section 4, ours) ------------------------------------------------------

@dataclass
class DelayModel:
    """Shifted-exponential delays (docs/gradient-coding.md section 4), per partition of load.

    Worker (i, j) with load D finishes its gradients at ``D a_ij + (D / mu_ij) X_ij``,
    X ~ Exp(1) i.i.d., then uploads in ``c_ij`` seconds; edge i adds ``e_i`` seconds
    (constant: docs/gradient-coding.md's random edge part is not modelled) before its message
    reaches the master. ``a``, ``mu``, ``c``: per edge, float arrays over its workers;
    ``e``: float array over edges. A "fixed" straggler is an extra constant: see
    :meth:`with_worker_delay` and :meth:`with_edge_delay`. Spikes (``q``, ``b``,
    per edge over its workers; default none): with probability ``q_ij`` per
    iteration worker (i, j) is late by ``b_ij`` more seconds, whatever its load
    (an interruption rather than slow work: :meth:`with_spikes`).
    """

    a: list
    mu: list
    c: list
    e: np.ndarray
    q: list = None
    b: list = None

    def __post_init__(self):
        self.a = [np.asarray(x, dtype=float).reshape(-1) for x in self.a]
        n = len(self.a)
        if n == 0:
            raise GradCodeError("a delay model needs at least one edge")
        self.mu = [np.asarray(x, dtype=float).reshape(-1) for x in self.mu]
        self.c = [np.asarray(x, dtype=float).reshape(-1) for x in self.c]
        self.e = np.asarray(self.e, dtype=float).reshape(-1)
        if len(self.mu) != n or len(self.c) != n or self.e.size != n:
            raise GradCodeError(f"delay model: a has {n} edges but mu has {len(self.mu)}, "
                                f"c {len(self.c)}, e {self.e.size}")
        for i in range(n):
            mi = self.a[i].size
            if mi < 1 or self.mu[i].size != mi or self.c[i].size != mi:
                raise GradCodeError(f"edge {i + 1}: a, mu, c must have one entry per worker "
                                    f"(got {mi}, {self.mu[i].size}, {self.c[i].size})")
            if np.any(self.mu[i] <= 0) or not np.all(np.isfinite(self.mu[i])):
                raise GradCodeError(f"edge {i + 1}: every rate mu_ij must be finite and > 0")
            if np.any(self.a[i] < 0) or np.any(self.c[i] < 0):
                raise GradCodeError(f"edge {i + 1}: a_ij and c_ij must be >= 0")
        if np.any(self.e < 0):
            raise GradCodeError("edge delays e_i must be >= 0")
        self.q = [np.zeros(x.size) for x in self.a] if self.q is None else \
            [np.asarray(x, dtype=float).reshape(-1) for x in self.q]
        self.b = [np.zeros(x.size) for x in self.a] if self.b is None else \
            [np.asarray(x, dtype=float).reshape(-1) for x in self.b]
        for i in range(n):
            if self.q[i].size != self.a[i].size or self.b[i].size != self.a[i].size:
                raise GradCodeError(f"edge {i + 1}: q and b must have one entry per worker")
            if np.any((self.q[i] < 0) | (self.q[i] > 1)) or np.any(self.b[i] < 0):
                raise GradCodeError(f"edge {i + 1}: spike probabilities must lie in [0, 1] "
                                    f"and spike delays be >= 0")

    @property
    def m(self) -> tuple:
        return tuple(int(x.size) for x in self.a)

    @classmethod
    def uniform(cls, m, a, mu, c=0.0, e=0.0) -> DelayModel:
        """Every worker alike (a, mu, c) and every edge alike (e)."""
        m = _check_m(m)
        return cls(a=[np.full(mi, float(a)) for mi in m], mu=[np.full(mi, float(mu)) for mi in m],
                   c=[np.full(mi, float(c)) for mi in m], e=np.full(len(m), float(e)))

    def copy(self) -> DelayModel:
        return DelayModel(a=[x.copy() for x in self.a], mu=[x.copy() for x in self.mu],
                          c=[x.copy() for x in self.c], e=self.e.copy(),
                          q=[x.copy() for x in self.q], b=[x.copy() for x in self.b])

    def with_spikes(self, probability: float, seconds: float) -> DelayModel:
        """A copy in which every worker, each iteration, is late by ``seconds`` more with
        probability ``probability`` (independently, whatever its load)."""
        out = self.copy()
        out.q = [np.full(x.size, float(probability)) for x in self.a]
        out.b = [np.full(x.size, float(seconds)) for x in self.a]
        return out

    def with_worker_delay(self, i: int, j: int, seconds: float) -> DelayModel:
        """A copy in which worker (i, j) is late by ``seconds`` more every iteration."""
        out = self.copy()
        out.c[i][j] += float(seconds)
        return out

    def with_edge_delay(self, i: int, seconds: float) -> DelayModel:
        """A copy in which edge i is late by ``seconds`` more every iteration."""
        out = self.copy()
        out.e[i] += float(seconds)
        return out


@dataclass
class Selection:
    """A JNCSS decision: the chosen edges, their chosen workers, the tolerances, the load.

    ``workers[t]`` lists the chosen workers (indices within the edge) of edge
    ``edges[t]``. :meth:`code` builds the HGC code of the selection (its m'_i).
    """

    edges: list
    workers: list
    s_e: int
    s_w: int
    D: int
    P: int
    expected_time: float
    evaluations: int = 0

    @property
    def m(self) -> tuple:
        return tuple(len(w) for w in self.workers)

    def code(self) -> TreeCode:
        return hgc_code(self.m, self.P, self.s_e, self.s_w)

    def to_dict(self) -> dict:
        return {"edges": [int(i) for i in self.edges],
                "workers": [[int(j) for j in w] for w in self.workers],
                "m": list(self.m), "s_e": self.s_e, "s_w": self.s_w, "D": self.D,
                "P": self.P, "expected_time": self.expected_time,
                "evaluations": self.evaluations}


class _Evaluator:
    """E[T] of selections by Monte Carlo with common random numbers.

    X (samples x all workers) is drawn once from ``seed``; every candidate indexes
    the columns of its workers, so candidates differ only by their decisions.
    ``U_ij = a_ij + X_ij / mu_ij`` (time per partition), worker time
    ``D U_ij + c_ij + b_ij [V_ij < q_ij]`` with V uniform, drawn after X from the same
    stream (so models without spikes see exactly the same X as before).
    """

    def __init__(self, model: DelayModel, P: int, samples: int, seed: int):
        if samples < 1:
            raise GradCodeError(f"samples = {samples}: need at least 1")
        self.model, self.P, self.m = model, int(P), model.m
        X = np.random.default_rng(seed).standard_exponential((samples, sum(self.m)))
        offsets = np.cumsum((0,) + self.m)
        self.U = [model.a[i] + X[:, offsets[i]: offsets[i + 1]] / model.mu[i]
                  for i in range(len(self.m))]
        if any(np.any(q > 0) for q in model.q):
            V = np.random.default_rng([seed, 1]).random((samples, sum(self.m)))
            self.S = [model.b[i] * (V[:, offsets[i]: offsets[i + 1]] < model.q[i])
                      for i in range(len(self.m))]
        else:
            self.S = [0.0] * len(self.m)
        self.edge_cache: dict = {}
        self.evaluations = 0

    def load(self, sizes, s_e, s_w):
        """D for a selection of sizes m'_i, or None if no HGC code exists for it."""
        if feasibility_error(sizes, self.P, s_e, s_w) is not None:
            return None
        return self.P * (s_e + 1) * (s_w + 1) // sum(sizes)

    def edge_time(self, i: int, workers: tuple, s_w: int, D: int) -> np.ndarray:
        key = (i, workers, s_w, D)
        t = self.edge_cache.get(key)
        if t is None:
            idx = list(workers)
            T = D * self.U[i][:, idx] + self.model.c[i][idx]
            if not np.isscalar(self.S[i]):
                T = T + self.S[i][:, idx]
            k = len(idx) - s_w - 1
            t = np.partition(T, k, axis=1)[:, k] + self.model.e[i]
            self.edge_cache[key] = t
        return t

    def mean(self, edges, workers, s_e, s_w):
        """E[T] of a selection, or None if it is infeasible."""
        D = self.load([len(w) for w in workers], s_e, s_w)
        if D is None:
            return None
        self.evaluations += 1
        E = np.stack([self.edge_time(i, tuple(w), s_w, D) for i, w in zip(edges, workers)],
                     axis=1)
        k = len(edges) - s_e - 1
        return float(np.partition(E, k, axis=1)[:, k].mean())


def _check_selection(model: DelayModel, edges, workers):
    m = model.m
    edges = [operator.index(i) for i in edges]
    if len(workers) != len(edges):
        raise GradCodeError(f"{len(edges)} edges but {len(workers)} worker lists")
    if len(set(edges)) != len(edges) or any(not 0 <= i < len(m) for i in edges):
        raise GradCodeError(f"edges {edges}: must be distinct, in 0..{len(m) - 1}")
    out = []
    for i, w in zip(edges, workers):
        w = [operator.index(j) for j in w]
        if len(set(w)) != len(w) or any(not 0 <= j < m[i] for j in w):
            raise GradCodeError(f"edge {i + 1}: workers {w} must be distinct, in 0..{m[i] - 1}")
        out.append(w)
    order = np.argsort(edges, kind="stable")
    return [edges[t] for t in order], [sorted(out[t]) for t in order]


def expected_time(model: DelayModel, P: int, edges, workers, s_e: int, s_w: int,
                  samples: int = 2000, seed: int = 0) -> float:
    """E[T] of one iteration for a selection, by Monte Carlo (docs/gradient-coding.md section 4).

    ``T = (n' - s_e)``-th smallest over the chosen edges of ``E_i = e_i + (m'_i -
    s_w)``-th smallest over its chosen workers of ``D a_ij + (D/mu_ij) X_ij + c_ij``,
    ``D = P (s_e+1)(s_w+1) / sum_i m'_i``. X is drawn for ALL workers of the model
    from ``seed`` (samples x M), so equal seeds give common random numbers across
    selections, and the value equals the one :func:`jncss_greedy` and
    :func:`jncss_brute_force` compute for the same selection. Raises
    :class:`GradCodeError` if no HGC code exists for the selection.
    """
    edges, workers = _check_selection(model, edges, workers)
    err = feasibility_error([len(w) for w in workers], P, s_e, s_w)
    if err:
        raise GradCodeError(f"selection infeasible: {err} (edges numbered within the selection)")
    return _Evaluator(model, P, samples, seed).mean(edges, workers, s_e, s_w)


def _pairs(m):
    """Every (s_e, s_w) the search tries: s_e < n, s_w < max_i m_i."""
    return [(s_e, s_w) for s_e in range(len(m)) for s_w in range(max(m))]


def jncss_greedy(model: DelayModel, P: int, samples: int = 2000, seed: int = 0) -> Selection:
    """JNCSS by the greedy rule of docs/gradient-coding.md section 4 (ours).

    For every (s_e, s_w) with s_e < n, s_w < max m_i: start from every edge with
    more than s_w workers and all their workers; if that start has no HGC code (a
    condition of :func:`feasibility_error` fails), skip the pair. Otherwise
    repeatedly apply the single removal (an edge, or one worker) whose result is
    feasible and has the lowest E[T], as long as it lowers E[T] strictly; candidates
    are ordered edges first (by index), then workers (by edge, then worker index),
    and the first of equal minima wins. The best pair wins (first on ties, s_e then
    s_w increasing). Raises :class:`GradCodeError` if no pair has a feasible start.

    E[T] is :func:`expected_time`'s Monte Carlo with common random numbers.
    """
    ev = _Evaluator(model, P, samples, seed)
    m = model.m
    best = None
    for s_e, s_w in _pairs(m):
        edges = [i for i in range(len(m)) if m[i] > s_w]
        workers = [list(range(m[i])) for i in edges]
        t = ev.mean(edges, workers, s_e, s_w)
        if t is None:
            continue
        while True:
            move = None
            for pos in range(len(edges)):                       # drop an edge
                e2 = edges[:pos] + edges[pos + 1:]
                w2 = workers[:pos] + workers[pos + 1:]
                if not e2:
                    continue
                tt = ev.mean(e2, w2, s_e, s_w)
                if tt is not None and (move is None or tt < move[0]):
                    move = (tt, e2, w2)
            for pos in range(len(edges)):                       # drop a worker
                for q in range(len(workers[pos])):
                    w2 = list(workers)
                    w2[pos] = workers[pos][:q] + workers[pos][q + 1:]
                    if not w2[pos]:
                        continue
                    tt = ev.mean(edges, w2, s_e, s_w)
                    if tt is not None and (move is None or tt < move[0]):
                        move = (tt, list(edges), w2)
            if move is None or not move[0] < t:
                break
            t, edges, workers = move
        if best is None or t < best.expected_time:
            D = ev.load([len(w) for w in workers], s_e, s_w)
            best = Selection(edges=list(edges), workers=[list(w) for w in workers], s_e=s_e,
                             s_w=s_w, D=D, P=int(P), expected_time=t)
    if best is None:
        raise GradCodeError(f"no (s_e, s_w) admits an HGC code on all edges for m = {m}, "
                            f"P = {P} (choose P a multiple of M = {sum(m)})")
    best.evaluations = ev.evaluations
    return best


MAX_BRUTE_FORCE = 2_000_000     # most (pair, edge set, worker sets) candidates enumerated


def jncss_brute_force(model: DelayModel, P: int, samples: int = 2000, seed: int = 0,
                      max_candidates: int = MAX_BRUTE_FORCE) -> Selection:
    """JNCSS by exhaustive search: every (s_e, s_w), every non-empty edge subset and
    every subset of workers in each chosen edge; same E[T] (same common random
    numbers) as :func:`jncss_greedy`, so ``greedy >= brute force`` holds exactly.

    For small instances (n <= 4, m_i <= 5 in docs/gradient-coding.md); raises :class:`GradCodeError`
    when the candidates would exceed ``max_candidates``. Ties: first in the order
    pairs (s_e, s_w increasing), edge subsets, worker subsets (bitmasks increasing).
    """
    m = model.m
    n = len(m)
    count = sum(math.prod(1 + sum(math.comb(mi, r) for r in range(s_w + 1, mi + 1))
                          for mi in m) for _, s_w in _pairs(m))
    if count > max_candidates:
        raise GradCodeError(f"brute force over m = {m}: about {count} candidates "
                            f"> {max_candidates}")
    ev = _Evaluator(model, P, samples, seed)
    subsets = [[[j for j in range(mi) if mask >> j & 1] for mask in range(1, 1 << mi)]
               for mi in m]
    best = None
    for s_e, s_w in _pairs(m):
        options = [[w for w in subsets[i] if len(w) > s_w] for i in range(n)]
        for emask in range(1, 1 << n):
            edges = [i for i in range(n) if emask >> i & 1]
            if len(edges) <= s_e or any(not options[i] for i in edges):
                continue
            for workers in itertools.product(*(options[i] for i in edges)):
                t = ev.mean(edges, workers, s_e, s_w)
                if t is not None and (best is None or t < best.expected_time):
                    D = ev.load([len(w) for w in workers], s_e, s_w)
                    best = Selection(edges=list(edges), workers=[list(w) for w in workers],
                                     s_e=s_e, s_w=s_w, D=D, P=int(P), expected_time=t)
    if best is None:
        raise GradCodeError(f"no selection admits an HGC code for m = {m}, P = {P}")
    best.evaluations = ev.evaluations
    return best
