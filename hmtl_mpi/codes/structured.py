"""The structured code: decodable by construction, built and proved in near-linear time.

The random construction (:func:`hmtl_mpi.codes.coding.build_code`) draws every
coefficient and proves decodability by eliminating every relay's dense system,
O(H (K F)^3): hours at K = 10,000. This module builds a code for the same block
layouts, with the same bytes on the wire, whose decodability follows from its
structure and a few counts (docs/codes.md, "The structured construction"). It
implements the scheme of docs/scheme.md (Hu, Li, Cheng, Wu, Section IV, eqs. 26 and
31) with two systematic MDS codes over GF(65537) in place of random combinations:
Cauchy matrices ``1 / (x_a - y_b)``, every square submatrix of which is invertible
(MacWilliams & Sloane, *The Theory of Error-Correcting Codes*, ch. 11 §4, Cauchy
matrices and generalized Reed-Solomon codes; the inverse in closed form:
Schechter, "On the inversion of certain matrices", MTAC 13, 1959).

The construction, per block (a round z of the paper's scheme)
-------------------------------------------------------------
Relay i has m_i input rows (its segments v_{k,i} of the users of N_i ∩ I_z) and
sends n_i messages (eq. 16), so it leaves out ``c_i = m_i - n_i`` rows' worth.

* **Uplink (eq. 26): forward, plus parities of a hidden set.** Relay i picks a set
  H_i of its rows (:func:`choose_hidden`) such that every other relay j knows at
  least c_i of them (it knows a row when it knows the row's user). It sends its
  other ``m_i - |H_i|`` rows as they are, then ``p_i = |H_i| - c_i`` parities
  ``Gamma_i @ H_i``, Gamma_i[q, l] = 1 / (q - (p_i + l)): ``n_i`` messages, each a
  row of ``width_i`` units. Relays with c_i = 0 forward everything.
* **Downlink (eq. 31): systematic for one relay, plus a Cauchy part.** Call a
  message unit *known* to relay j when j can compute it from the IVs of its own
  users, and A_j the units it cannot. j0 is a relay with ``|A_j0| = R`` (R =
  F (|I_z| - min_j |I_z ∩ N_j|), the planned broadcast). With Q0 = A_j0 (R units)
  and Qc the T - R others, the server broadcasts ``Y = X[Q0] + B X[Qc]``,
  B[r, c] = 1 / (beta_r - c) with beta_r in [T - R, p) (:func:`assign_points`).

Why every relay decodes (checked, by counting, in :func:`build_block`)
----------------------------------------------------------------------
D0. Every unit of every IV of the block lies in some relay's input row (coverage).
D1. For every relay i and every other relay j: j knows >= c_i rows of H_i.
D2. ``|A_j| <= R`` for every relay j (and = R for j0).
D3. Among the rows of Q0 that relay j knows, at least |A_j ∩ Qc| have distinct beta.

Relay j first recovers every message unit of A_j: a row r of Q0 it knows gives
``Y_r - X_r = B[r, :] X[Qc]``, linear in the unknown units ``A_j ∩ Qc`` (the rest of
Qc it knows). There are ``R - |A_j ∩ Q0| >= |A_j| - |A_j ∩ Q0| = |A_j ∩ Qc|`` such
rows (D2); take |A_j ∩ Qc| of them with distinct beta (D3): their columns of B form
a square Cauchy matrix with distinct points on both sides (beta >= T - R > column
index), which is invertible. Then every unknown unit of Q0 follows as
``X_r = Y_r - B[r, :] X[Qc]``. Next, per relay i: a forwarded row is an IV unit; the
hidden rows j lacks are at most ``|H_i| - c_i = p_i`` (D1), and every parity is in
A_j as soon as one of them is unknown, so the first as many parities give a square
Cauchy system (rows 0.., columns p_i + l: distinct points), invertible. By D0
every IV unit j lacks is in one of those rows. No rank is ever computed: building
a block costs O(sum_i m_i z + R z + H) plus the greedy choice of the H_i.

Costs per iteration (u symbols per unit): relay i reads its m_i w_i units and
multiplies ``p_i`` parities by |H_i| terms; the server does ``R (T - R)`` multiply-
adds per symbol position plus R additions; relay j does ``(|A_j ∩ Q0| + |A_j ∩
Qc|) (T - R) + |A_j ∩ Qc|^2`` multiply-adds per symbol position plus its local
parity solves, i.e. about ``T - R`` (the units j0 knows, ``F min_j |I_z ∩ N_j|`` when
every relay forwards) per decoded symbol, against ``R + F |N_j ∩ I_z|`` for the
random code's dense decoder. The per-relay decoder (one Cauchy inverse of size
|A_j ∩ Qc|, closed form, O(n^2)) is derived on first use, never serialised.

When it does not apply (:class:`NotCovered`, and the scheme then falls back to the
random code): some relay knows fewer than c_i of relay i's rows (D1 impossible),
the greedy choice of hidden sets leaves some relay with more than R affected units
(D2; it keeps the relays with slack 0 exact), no relay has exactly R (j0), too few
distinct points (D3), or a layout whose rows overlap (the joint exchange's: every
relay combines every sub-packet it holds) so that D2 cannot hold.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from . import coding
from .coding import (P, Block, BlockLayout, Code, DecodeError, combine_mod_p, downlink_rows,
                     unit_symbols)

CONSTRUCTIONS = ("auto",) + coding.CONSTRUCTIONS   # what the schemes accept
B_CHUNK_ENTRIES = 1 << 20          # entries of B generated at once (8 MiB of float64)
B_KEPT_ENTRIES = 1 << 25           # -B kept whole, as float64, up to this size (256 MiB)
RANDOM_MAX_UNKNOWNS = 6000         # auto: largest dense system (units) the random fallback tries


class NotCovered(ValueError):
    """A layout the structured construction does not cover; the message says why."""


# --- the field's helpers --------------------------------------------------------------

_INVERSES = None


def inverses() -> np.ndarray:
    """``inv[a] = a^(p-2) mod p`` (Fermat) for a = 0..p-1, inv[0] = 0: every inverse at once."""
    global _INVERSES
    if _INVERSES is None:
        base = np.arange(P, dtype=np.int64)
        inv = np.ones(P, dtype=np.int64)
        e = P - 2
        while e:
            if e & 1:
                inv = inv * base % P
            base = base * base % P
            e >>= 1
        _INVERSES = inv
    return _INVERSES


def cauchy(x, y) -> np.ndarray:
    """The Cauchy matrix ``C[a, b] = 1 / (x_a - y_b)`` over GF(p) (int64)."""
    x = np.asarray(x, dtype=np.int64)
    y = np.asarray(y, dtype=np.int64)
    return inverses()[(x[:, None] - y[None, :]) % P]


def _prod_rows(M: np.ndarray) -> np.ndarray:
    """Product of every row of M over GF(p)."""
    out = np.ones(M.shape[0], dtype=np.int64)
    for j in range(M.shape[1]):
        out = out * M[:, j] % P
    return out


def cauchy_inverse(x, y) -> np.ndarray:
    """The inverse of the square Cauchy matrix ``1 / (x_a - y_b)`` (x, y distinct, disjoint),
    in closed form: with A(t) = prod_a (t - x_a) and B(t) = prod_b (t - y_b),
    ``inv[b, a] = -A(y_b) B(x_a) / (A'(x_a) B'(y_b) (x_a - y_b))``. O(n^2)."""
    x = np.asarray(x, dtype=np.int64)
    y = np.asarray(y, dtype=np.int64)
    A_y = _prod_rows((y[:, None] - x[None, :]) % P)
    B_x = _prod_rows((x[:, None] - y[None, :]) % P)
    dx = (x[:, None] - x[None, :]) % P
    np.fill_diagonal(dx, 1)
    dy = (y[:, None] - y[None, :]) % P
    np.fill_diagonal(dy, 1)
    A_d, B_d = _prod_rows(dx), _prod_rows(dy)
    den = A_d[None, :] * B_d[:, None] % P * ((x[None, :] - y[:, None]) % P) % P
    return (-(A_y[:, None] * B_x[None, :] % P) * inverses()[den]) % P


SMALL_PRODUCT = 1 << 14           # multiply-adds below which field_mul stays in int64


def field_mul(coeffs: np.ndarray, values: np.ndarray) -> np.ndarray:
    """``coeffs @ values`` over GF(p) for field elements 0..65536 (uint32 in, uint32 out):
    exact int64 arithmetic for small products (terms < 2^33, fewer than 2^30 of them),
    the float64 BLAS kernel (:func:`combine_mod_p`) otherwise."""
    r, c = coeffs.shape
    if r * c * values.shape[1] <= SMALL_PRODUCT:
        return (np.asarray(coeffs, dtype=np.int64) @ values.astype(np.int64) % P).astype(np.uint32)
    out = np.empty((r, values.shape[1]), dtype=np.uint32)
    if r:
        combine_mod_p(coeffs, values, out)
    return out


def _cat_escapes(rows: list, cols: list) -> tuple:
    """Escape lists (row, column) concatenated, as int64 arrays."""
    if not rows:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    return (np.concatenate(rows).astype(np.int64, copy=False),
            np.concatenate(cols).astype(np.int64, copy=False))


def _pick(escapes: tuple, idx) -> tuple:
    """The escapes (row, column) of the rows ``idx`` of a source, as (position in idx,
    column): a row listed twice has its escapes twice."""
    er, ec = escapes
    idx = np.asarray(idx, dtype=np.int64)
    if not len(er) or not len(idx):
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    order = np.argsort(idx, kind="stable")
    lo = np.searchsorted(idx[order], er, "left")
    n = np.searchsorted(idx[order], er, "right") - lo
    which = np.repeat(np.arange(len(er)), n)
    k = np.arange(n.sum()) - np.repeat(np.cumsum(n) - n, n) + np.repeat(lo, n)
    return order[k], np.asarray(ec, dtype=np.int64)[which]


def _windows(ivs: dict, users: np.ndarray, rows: np.ndarray, length: int, u: int,
             dim: int) -> np.ndarray:
    """Input rows (column, first unit) as uint16 (len(rows), length): ``length`` symbols of
    each row's IV from unit ``first`` on, zeros past its end (the units' padding)."""
    out = np.zeros((len(rows), length), dtype=np.uint16)
    if not len(rows):
        return out
    symbols = np.stack([ivs[int(k)] for k in users[rows[:, 0]]]).astype(
        np.float64, copy=False).view(np.uint16)                 # (rows, 4 dim)
    start = rows[:, 1] * u
    for first in np.unique(start):                              # few distinct starts
        sel = np.flatnonzero(start == first)
        n = max(0, min(length, symbols.shape[1] - int(first)))
        out[sel, :n] = symbols[sel, first: first + n]
    return out


# --- who knows what ---------------------------------------------------------------------

def user_relays(G: np.ndarray, users: np.ndarray) -> tuple:
    """The relays of every user of a block, as CSR (ptr, relays): users[c]'s relays are
    ``relays[ptr[c]:ptr[c + 1]]``, increasing."""
    rel, col = np.nonzero(np.asarray(G)[:, users])
    order = np.argsort(col, kind="stable")
    ptr = np.zeros(len(users) + 1, dtype=np.int64)
    np.cumsum(np.bincount(col, minlength=len(users)), out=ptr[1:])
    return ptr, rel[order].astype(np.int64)


def _expand(ptr, rel, cols) -> tuple:
    """(index into cols, relay) for every relay of every entry of cols."""
    cols = np.asarray(cols, dtype=np.int64)
    lengths = ptr[cols + 1] - ptr[cols]
    which = np.repeat(np.arange(len(cols)), lengths)
    starts = np.repeat(ptr[cols], lengths)
    within = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    return which, rel[starts + within]


def _row_knowers(F: int, ptr, rel, rows: np.ndarray, H: int) -> tuple:
    """(row, relay) for every relay that knows each input row: the relays of its user,
    or every relay for a row of padding only (it starts at or past unit F)."""
    pad = rows[:, 1] >= F
    which, knower = _expand(ptr, rel, np.where(pad, 0, rows[:, 0]))
    keep = ~pad[which]
    padded = np.flatnonzero(pad)
    return (np.concatenate([which[keep], np.repeat(padded, H)]),
            np.concatenate([knower[keep], np.tile(np.arange(H), len(padded))]))


def choose_hidden(layout: BlockLayout, ptr, rel, slack: np.ndarray) -> list:
    """H_i for every relay: rows such that every other relay knows at least c_i of them.

    Greedy, relay by relay (a row of padding only counts as known to every relay): first
    the rows known to relays that know exactly c_i rows of relay i (all of them are
    needed), then, for each relay still short (those that know fewest first), a row it
    knows that covers most relays still short. A relay
    that already knows c_i hidden rows pays ``width_i`` units of overhead (D2) for each
    further one: it may only while its ``slack`` (R - its unknown units, shared over
    all i) lasts, so relays with slack 0 stay exact. Raises NotCovered when no choice
    is left."""
    H = len(layout.rows)
    budget = np.asarray(slack, dtype=np.int64).copy()
    hidden = []
    for i in range(H):
        rows = np.asarray(layout.rows[i], dtype=np.int64).reshape(-1, 2)
        m, n, w = len(rows), int(layout.messages[i]), int(layout.width[i])
        c = m - n
        h = np.zeros(m, dtype=bool)
        hidden.append(h)
        if c < 0:
            raise NotCovered(f"{layout.label}: relay {i + 1} sends {n} messages of {m} rows")
        if c == 0 or w == 0:
            continue
        which, knower = _row_knowers(layout.F, ptr, rel, rows, H)
        keep = knower != i
        which, knower = which[keep], knower[keep]
        known = np.bincount(knower, minlength=H)
        short = [j for j in range(H) if j != i and known[j] < c]
        if short:
            j = short[0]
            raise NotCovered(f"{layout.label}: relay {j + 1} knows {known[j]} of relay "
                             f"{i + 1}'s {m} rows, fewer than the {c} it leaves out")
        knowers = [[] for _ in range(m)]
        rows_of = [[] for _ in range(H)]
        for row, j in zip(which.tolist(), knower.tolist()):
            knowers[row].append(j)
            rows_of[j].append(row)
        cnt = np.zeros(H, dtype=np.int64)
        used = np.zeros(H, dtype=np.int64)

        def add(row):
            h[row] = True
            for j in knowers[row]:
                if cnt[j] >= c:
                    used[j] += w
                cnt[j] += 1

        for j in np.flatnonzero(known == c):
            if j != i:
                for row in rows_of[j]:
                    if not h[row]:
                        add(row)
        order = sorted((j for j in range(H) if j != i), key=lambda j: (known[j], budget[j]))
        for j in order:
            while cnt[j] < c:
                best, best_key = -1, None
                for row in rows_of[j]:
                    if h[row]:
                        continue
                    new = full = 0
                    for jj in knowers[row]:
                        if cnt[jj] < c:
                            new += 1
                        elif budget[jj] - used[jj] < w:
                            break
                        else:
                            full += 1
                    else:
                        key = (new, -full)
                        if best_key is None or key > best_key:
                            best, best_key = row, key
                if best < 0:
                    raise NotCovered(f"{layout.label}: no row of relay {i + 1} gives relay "
                                     f"{j + 1} its {c} hidden rows without exceeding the "
                                     f"broadcast at another relay")
                add(best)
        size = int(h.sum())
        over = np.where((cnt > c) & (cnt < size), (cnt - c) * w, 0)
        over[i] = 0
        budget -= over
    return hidden


def assign_points(q0_knowers: tuple, R: int, nq: int, need: np.ndarray, H: int) -> np.ndarray:
    """beta for the R broadcast units: in [nq, p), so that every relay j sees at least
    ``need[j]`` distinct values among the units of Q0 it knows (D3).

    ``q0_knowers`` = (unit r, relay j) pairs. Distinct values for all when R fits in
    p - nq; otherwise r mod (p - nq), and the units in a repeated (relay, value) pair of a
    relay still short of distinct values redrawn (seeded: the code is deterministic)."""
    pool = P - nq
    if R <= pool:
        return nq + np.arange(R, dtype=np.int64)
    row, rel = q0_knowers
    beta = nq + np.arange(R, dtype=np.int64) % pool
    rng = np.random.default_rng(0)
    for _ in range(64):
        key = rel * P + beta[row]
        distinct = np.bincount(np.unique(key) // P, minlength=H)
        short = distinct < need
        if not short.any():
            break
        order = np.argsort(key, kind="stable")
        dup = np.zeros(len(key), dtype=bool)
        dup[order[1:]] = key[order[1:]] == key[order[:-1]]
        redraw = np.unique(row[dup & short[rel]])
        beta[redraw] = nq + rng.integers(0, pool, size=redraw.size)
    return beta


# --- the block ------------------------------------------------------------------------------

@dataclass
class StructuredBlock(BlockLayout):
    """A block of the structured construction (see the module doc): relay i forwards its
    rows outside ``hidden[i]`` and sends Cauchy parities of those inside; the server
    broadcasts ``X[q0] + B X[Qc]``; every relay's decoder is derived on first use."""

    construction = "structured"   # (a class attribute, not a field)

    hidden: list = field(default_factory=list)     # per relay: bool (m_i,), the rows of H_i
    j0: int = 0                                    # the relay the broadcast is systematic for
    q0: np.ndarray = None                          # (R,) message units unknown to j0, increasing
    beta: np.ndarray = None                        # (R,) Cauchy points of the broadcast's rows

    @property
    def R(self) -> int:
        return int(len(self.q0))

    # --- derived tables (never serialised) ------------------------------------------
    def tables(self) -> dict:
        """Per relay: offsets, forwarded and hidden rows, parities; per message unit: its
        relay, message, offset, and for a forwarded unit its (user column, IV unit)."""
        t = self.__dict__.get("_tables")
        if t is not None:
            return t
        H = len(self.rows)
        n = np.asarray(self.messages, dtype=np.int64)
        w = np.asarray(self.width, dtype=np.int64)
        off = np.zeros(H + 1, dtype=np.int64)
        np.cumsum(n * w, out=off[1:])
        raw, hid, parity = [], [], np.zeros(H, dtype=np.int64)
        rel, msg, s_of, col, unit = [], [], [], [], []
        for i in range(H):
            rows = np.asarray(self.rows[i], dtype=np.int64).reshape(-1, 2)
            h = np.asarray(self.hidden[i], dtype=bool) if len(self.hidden) > i else \
                np.zeros(len(rows), dtype=bool)
            raw.append(np.flatnonzero(~h))
            hid.append(np.flatnonzero(h))
            parity[i] = n[i] - len(raw[i]) if w[i] else 0
            if n[i] == 0 or w[i] == 0:
                continue
            t_idx = np.repeat(np.arange(n[i]), w[i])
            s_idx = np.tile(np.arange(w[i]), n[i])
            rel.append(np.full(n[i] * w[i], i))
            msg.append(t_idx)
            s_of.append(s_idx)
            is_raw = t_idx < len(raw[i])
            r_rows = rows[raw[i]][np.minimum(t_idx, max(len(raw[i]) - 1, 0))] \
                if len(raw[i]) else np.zeros((len(t_idx), 2), dtype=np.int64)
            f = r_rows[:, 1] + s_idx
            col.append(np.where(is_raw, r_rows[:, 0], -1))
            unit.append(np.where(is_raw & (f < self.F), f, -1))
        cat = (lambda parts: np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64))
        T = int(off[-1])
        q0 = np.asarray(self.q0, dtype=np.int64)
        qc = np.setdiff1d(np.arange(T), q0)
        t = {"H": H, "n": n, "w": w, "off": off, "T": T, "raw": raw, "hid": hid,
             "parity": parity, "rel": cat(rel), "msg": cat(msg), "s": cat(s_of),
             "col": cat(col), "unit": cat(unit), "qc": qc, "decoders": {}, "gamma": {}}
        self.__dict__["_tables"] = t
        return t

    def gamma(self, i: int) -> np.ndarray:
        """Gamma_i: relay i's p_i x |H_i| Cauchy parity matrix, 1 / (q - (p_i + l))."""
        t = self.tables()
        g = t["gamma"].get(i)
        if g is None:
            p_i, h_i = int(t["parity"][i]), len(t["hid"][i])
            g = cauchy(np.arange(p_i), p_i + np.arange(h_i))
            t["gamma"][i] = g
        return g

    def _b_rows(self, r: np.ndarray, negate: bool = False) -> np.ndarray:
        """Rows r of B: 1 / (beta_r - c) for every column c of Qc; of -B with ``negate``:
        1 / (c - beta_r), made as such (not negated after: that pass cost as much as
        making the rows)."""
        t = self.tables()
        nq = len(t["qc"])
        if negate and self.R * nq <= B_KEPT_ENTRIES:   # every relay's decode reads -B:
            whole = t.get("minus_b")                    # made once per block, kept
            if whole is None:
                whole = t["minus_b"] = np.ascontiguousarray(
                    cauchy(np.arange(nq), np.asarray(self.beta)).T, dtype=np.float64)
            return whole[r]
        beta, cols = np.asarray(self.beta)[r], np.arange(nq)
        return cauchy(cols, beta).T if negate else cauchy(beta, cols)

    def _b_apply(self, r: np.ndarray, values: np.ndarray, out: np.ndarray, add_src: np.ndarray,
                 add_escapes: tuple, values_escapes: tuple | None = None,
                 negate: bool = False, src_rows: np.ndarray | None = None) -> np.ndarray:
        """``out = add_src[src_rows] + (-)B[r, :] @ values`` over GF(p) (``src_rows``
        defaults to r), in row chunks so that B is never held whole; ``add_escapes`` and
        ``values_escapes`` are the sources' escapes (row, column). ``values`` and ``out``
        may be lists of rows (:func:`combine_mod_p`); the rows of ``add_src`` are read in
        place. Returns the escapes of a uint16 ``out`` (flat positions)."""
        src_rows = r if src_rows is None else src_rows
        nq = max(1, len(self.tables()["qc"]))
        step = max(64, B_CHUNK_ENTRIES // nq)
        L = add_src.shape[1]
        where = np.full(len(add_src), -1, dtype=np.int64)       # source row -> row of out
        where[src_rows] = np.arange(len(r))
        er, ec = (np.asarray(add_escapes[0], dtype=np.int64), np.asarray(add_escapes[1]))
        at = where[er] if len(er) else er
        keep = at >= 0
        at, ec = at[keep], ec[keep]
        order = np.argsort(at, kind="stable")
        at, ec = at[order], ec[order]
        found = []
        for a in range(0, len(r), step):
            b = self._b_rows(r[a: a + step], negate) if len(self.tables()["qc"]) else \
                np.zeros((len(r[a: a + step]), 0), dtype=np.int64)
            lo, hi = np.searchsorted(at, (a, a + step))
            rows = src_rows[a: a + step]                # add: row views (a gather when short)
            f = combine_mod_p(b, values, out[a: a + step], values_escapes,
                              add=[add_src[k] for k in rows]
                              if L >= coding.ROW_LIST_MIN_SYMBOLS else add_src[rows],
                              add_escapes=(at[lo:hi] - a, ec[lo:hi]))
            if f.size:
                found.append(f.astype(np.int64) + a * L)
        return np.concatenate(found).astype(np.uint32) if found else np.zeros(0, np.uint32)

    # --- per iteration ------------------------------------------------------------------
    def encode(self, i: int, ivs: dict, dim: int):
        """Relay i's uplink: its forwarded rows, then its parities ``Gamma_i @ H_i``."""
        n, w = int(self.messages[i]), int(self.width[i])
        if n == 0 or w == 0:
            return None
        t = self.tables()
        u = unit_symbols(dim, self.F)
        rows = np.asarray(self.rows[i], dtype=np.int64).reshape(-1, 2)
        raw, hid = t["raw"][i], t["hid"][i]
        payload = np.empty((n, w * u), dtype=np.uint16)
        payload[: len(raw)] = _windows(ivs, self.users, rows[raw], w * u, u, dim)
        if n == len(raw):
            return payload.reshape(-1)
        inputs = _windows(ivs, self.users, rows[hid], w * u, u, dim)
        found = combine_mod_p(self.gamma(i), inputs, payload[len(raw):])
        if not found.size:
            return payload.reshape(-1)
        found = found + np.uint32(len(raw) * w * u)        # positions in the whole payload
        return np.concatenate([payload.reshape(-1), found.view(np.uint16)])

    def combine(self, messages: dict, dim: int) -> np.ndarray:
        """The broadcast: ``Y = X[q0] + B X[Qc]``, fused per row chunk (one pass)."""
        t = self.tables()
        units, escapes = coding._message_units(self, messages, dim)
        if escapes is None:
            escapes = (np.zeros(0, np.int64), np.zeros(0, np.int64))
        q0, qc = np.asarray(self.q0, dtype=np.int64), t["qc"]
        where = np.full(len(units), -1, dtype=np.int64)          # escapes among Qc's rows
        where[qc] = np.arange(len(qc))
        in_qc = where[escapes[0]] if len(escapes[0]) else escapes[0]
        values_escapes = (in_qc[in_qc >= 0], escapes[1][in_qc >= 0])
        payload = np.empty((len(q0), units.shape[1]), dtype=np.uint16)
        found = self._b_apply(np.arange(len(q0)), units[qc], payload, units, escapes,
                              values_escapes, src_rows=q0)
        return np.concatenate([payload.reshape(-1), found.view(np.uint16)])

    def _known(self, G: np.ndarray, j: int) -> np.ndarray:
        """Which message units relay j can compute from its own users' IVs."""
        t = self.tables()
        Gj = np.asarray(G)[j, self.users].astype(bool)
        known = np.where(t["col"] >= 0, (t["unit"] < 0) | Gj[np.maximum(t["col"], 0)], False)
        for i in np.flatnonzero(t["parity"] > 0):
            rows = np.asarray(self.rows[i], dtype=np.int64).reshape(-1, 2)[t["hid"][i]]
            for s in range(int(t["w"][i])):
                live = rows[:, 1] + s < self.F
                if np.all(Gj[rows[live, 0]]) or i == j:
                    first = t["off"][i] + len(t["raw"][i]) * t["w"][i] + s
                    known[first: t["off"][i + 1]: t["w"][i]] = True
        return known

    def _value_plan(self, idx: np.ndarray, base: np.ndarray, zero: int) -> dict:
        """How relay j computes the message units ``idx`` it knows: forwarded ones are rows
        of its known units (``base[column] + unit``; ``zero`` for padding), a parity is its
        Gamma_i row applied to the known units of H_i."""
        t = self.tables()

        def unit_rows(cols, fs):
            return np.where(fs >= 0, base[np.maximum(cols, 0)] + fs, zero)

        is_raw = t["col"][idx] >= 0
        parities = []
        for a in np.flatnonzero(~is_raw):
            x = idx[a]
            i, s = int(t["rel"][x]), int(t["s"][x])
            q = int(t["msg"][x]) - len(t["raw"][i])
            rows = np.asarray(self.rows[i], dtype=np.int64).reshape(-1, 2)[t["hid"][i]]
            f = rows[:, 1] + s
            parities.append((a, self.gamma(i)[q: q + 1], unit_rows(rows[:, 0],
                                                                   np.where(f < self.F, f, -1))))
        raw = np.flatnonzero(is_raw)
        return {"n": len(idx), "raw": raw,
                "rows": unit_rows(t["col"][idx[raw]], t["unit"][idx[raw]]),
                "parities": parities}

    @staticmethod
    def _values_fields(plan: dict, units: np.ndarray) -> np.ndarray:
        out = np.empty((plan["n"], units.shape[1]), dtype=np.uint32)
        out[plan["raw"]] = units[plan["rows"]]
        for a, coeffs, rows in plan["parities"]:
            out[a] = field_mul(coeffs, units[rows])[0]
        return out

    @staticmethod
    def _values(plan: dict, units: list, u: int) -> tuple:
        """The message units of a :meth:`_value_plan` in wire form: a list of uint16 rows
        (a forwarded unit is the known unit's row itself, a parity is computed) and their
        escapes (row, column)."""
        out = [None] * plan["n"]
        for a, row in zip(plan["raw"], plan["rows"]):
            out[a] = units[row]
        esc_rows, esc_cols = [], []
        for a, coeffs, rows in plan["parities"]:
            out[a] = np.empty(u, dtype=np.uint16)
            found = combine_mod_p(coeffs, [units[k] for k in rows], [out[a]])
            esc_rows.append(np.full(found.size, a, dtype=np.int64))
            esc_cols.append(found.astype(np.int64))
        return out, _cat_escapes(esc_rows, esc_cols)

    def decoder(self, G: np.ndarray, j: int) -> dict:
        """Relay j's decoder (cached, built on first use; every index it needs is fixed by
        the code, so decoding is only products and copies): the broadcast rows it uses,
        the Cauchy inverse of step 1, where every decoded unit goes, its local parity
        solves (see the module doc)."""
        t = self.tables()
        dec = t["decoders"].get(j)
        if dec is not None:
            return dec
        known = self._known(G, j)
        q0, qc = np.asarray(self.q0, dtype=np.int64), t["qc"]
        q0_known = np.flatnonzero(known[q0])
        cols = np.flatnonzero(~known[qc])
        kc = np.flatnonzero(known[qc])
        aff = np.flatnonzero(~known[q0])
        _, first = np.unique(np.asarray(self.beta)[q0_known], return_index=True)
        distinct = q0_known[np.sort(first)]
        if len(distinct) < len(cols):
            raise DecodeError(f"relay {j + 1}, {self.label}: {len(distinct)} distinct broadcast "
                              f"points for {len(cols)} unknown units (D3 fails: a bug)")
        sel = distinct[: len(cols)]
        Gj = np.asarray(G)[j, self.users].astype(bool)
        mine = np.flatnonzero(Gj)                                   # known columns
        base = np.full(len(self.users), -1, dtype=np.int64)
        base[mine] = np.arange(len(mine)) * self.F
        zero = len(mine) * self.F                                   # a unit of zeros
        unknown = np.flatnonzero(~Gj)
        slot = np.full(len(self.users), -1, dtype=np.int64)          # row of x per column
        slot[unknown] = np.arange(len(unknown)) * self.F
        covered = np.zeros(len(unknown) * self.F, dtype=np.int64)

        def forwarded(idx):             # (positions in idx, rows of x) of forwarded IV units
            fwd = np.flatnonzero((t["col"][idx] >= 0) & (t["unit"][idx] >= 0))
            dst = slot[t["col"][idx[fwd]]] + t["unit"][idx[fwd]]
            np.add.at(covered, dst, 1)
            return fwd, dst

        in_aff = np.full(t["T"], -1, dtype=np.int64)
        in_aff[q0[aff]] = np.arange(len(aff))
        in_qc = np.full(t["T"], -1, dtype=np.int64)
        in_qc[qc] = np.arange(len(qc))
        local = []
        for i in np.flatnonzero(t["parity"] > 0):
            if i == j:
                continue
            rows = np.asarray(self.rows[i], dtype=np.int64).reshape(-1, 2)[t["hid"][i]]
            p_i = int(t["parity"][i])
            for s in range(int(t["w"][i])):
                f = rows[:, 1] + s
                live = f < self.F
                unk = np.flatnonzero(live & ~Gj[rows[:, 0]])
                if unk.size == 0:
                    continue
                kn = np.flatnonzero(live & Gj[rows[:, 0]])
                first_par = t["off"][i] + len(t["raw"][i]) * t["w"][i] + s
                par = first_par + t["w"][i] * np.arange(unk.size)
                inv = cauchy_inverse(np.arange(unk.size), p_i + unk)
                coef = self.gamma(i)[: unk.size][:, kn]
                minus = (-coding._matmul_mod_p(inv, coef)) % P
                dst = slot[rows[unk, 0]] + f[unk]
                np.add.at(covered, dst, 1)
                a = in_aff[par]
                local.append({"from_aff": np.flatnonzero(a >= 0), "aff_rows": a[a >= 0],
                              "from_qc": np.flatnonzero(a < 0), "qc_rows": in_qc[par[a < 0]],
                              "src": base[rows[kn, 0]] + f[kn],
                              "matrix": np.concatenate([inv, minus], axis=1), "dst": dst})
        fwd_aff, fwd_cols = forwarded(q0[aff]), forwarded(qc[cols])
        if covered.size and covered.min() < 1:
            raise DecodeError(f"relay {j + 1}, {self.label}: {int((covered < 1).sum())} units "
                              f"no row carries (D0 fails: a bug)")
        sel_at = np.full(self.R, -1, dtype=np.int64)
        sel_at[sel] = np.arange(len(sel))
        aff_dst = np.full(len(aff), -1, dtype=np.int64)    # row of x a decoded unit goes to
        aff_dst[fwd_aff[0]] = fwd_aff[1]
        cols_dst = np.full(len(cols), -1, dtype=np.int64)
        cols_dst[fwd_cols[0]] = fwd_cols[1]
        # step 1's right-hand side Z = Y[sel] - B[sel, kc] X[kc] - X[sel] in one product
        # (Y[sel] added): coefficients [-B[sel, kc] | -I] on the rows X[kc], X[sel]
        z_matrix = np.zeros((len(sel), len(kc) + len(sel)), dtype=np.int64)
        if len(cols) and len(kc):
            z_matrix[:, : len(kc)] = (-self._b_rows(sel)[:, kc]) % P
        z_matrix[np.arange(len(sel)), len(kc) + np.arange(len(sel))] = P - 1
        for solve in local:             # its inputs: the parities in order, then known units
            order = np.empty(len(solve["from_aff"]) + len(solve["from_qc"]), dtype=np.int64)
            order[solve["from_aff"]] = np.arange(len(solve["from_aff"]))
            order[solve["from_qc"]] = len(solve["from_aff"]) + np.arange(len(solve["from_qc"]))
            solve["parity_order"] = order
        dec = {"known": known, "sel": sel, "sel_at": sel_at, "cols": cols, "kc": kc,
               "aff": aff, "mine": mine, "unknown": unknown, "local": local,
               "fwd_aff": fwd_aff, "fwd_cols": fwd_cols, "aff_dst": aff_dst,
               "cols_dst": cols_dst,
               "inv": cauchy_inverse(np.asarray(self.beta)[sel], cols), "z_matrix": z_matrix,
               "b_sel_kc": self._b_rows(sel)[:, kc] if len(cols) and len(kc) else None,
               "values_sel": self._value_plan(q0[sel], base, zero),
               "values_kc": self._value_plan(qc[kc], base, zero)}
        t["decoders"][j] = dec
        return dec

    def decode(self, G: np.ndarray, j: int, ivs: dict, downlink: np.ndarray, dim: int,
               out: dict) -> None:
        """Relay j's unknown IVs of the block into ``out``: A_j from the broadcast (steps 1
        and 2 of the module doc), then every relay's forwarded and hidden rows (step 3)."""
        dec = self.decoder(G, j)
        if dec["unknown"].size == 0:
            return
        t = self.tables()
        u = unit_symbols(dim, self.F)
        if u < coding.ROW_LIST_MIN_SYMBOLS:
            return self._decode_fields(G, j, ivs, downlink, dim, out)
        payload, (er, ec) = coding.split_packed(downlink, (self.R, u))
        er, ec = er.astype(np.int64), ec.astype(np.int64)
        # every unit in wire form (uint16 rows, escapes apart), rows as views where they
        # already are: the known IVs' units, the broadcast's rows, the rows of x
        units = [row for c in dec["mine"]
                 for row in coding.iv_unit_rows(ivs[int(self.users[c])], self.F, u)]
        units.append(np.zeros(u, dtype=np.uint16))            # the zero unit (padding)
        x = np.empty((dec["unknown"].size * self.F, u), dtype=np.uint16)
        cols, aff, kc = dec["cols"], dec["aff"], dec["kc"]

        def targets(dst):   # output rows: rows of x for decoded IV units, else new rows
            return [x[d] if d >= 0 else np.empty(u, dtype=np.uint16) for d in dst]

        def check(found, dst, what):    # an IV unit cannot hold 65536: corrupted broadcast
            rows = found.astype(np.int64) // u
            if rows.size and np.any(dst[rows] >= 0):
                raise DecodeError(f"relay {j + 1}, {self.label}: decoded a symbol outside "
                                  f"16 bits ({what}); the broadcast was corrupted")
            return rows, found.astype(np.int64) % u

        XQc = [None] * len(t["qc"])
        kc_rows, kc_esc = self._values(dec["values_kc"], units, u)
        for m, row in zip(kc, kc_rows):
            XQc[m] = row
        qc_esc = [(kc[kc_esc[0]], kc_esc[1])]
        if len(cols):                                   # step 1: a square Cauchy system
            sel_at = dec["sel_at"][er]
            hit = sel_at >= 0
            sel_rows, sel_esc = self._values(dec["values_sel"], units, u)
            Z = [np.empty(u, dtype=np.uint16) for _ in dec["sel"]]
            # Z = Y[sel] - values[sel] - B[sel, kc] X[kc], in one pass
            found = combine_mod_p(dec["z_matrix"], [XQc[m] for m in kc] + sel_rows, Z,
                                  _cat_escapes([kc_esc[0], len(kc) + sel_esc[0]],
                                               [kc_esc[1], sel_esc[1]]),
                                  add=[payload[r] for r in dec["sel"]],
                                  add_escapes=(sel_at[hit], ec[hit]))
            out_cols = targets(dec["cols_dst"])
            found = combine_mod_p(dec["inv"], Z, out_cols, (found.astype(np.int64) // u,
                                                            found.astype(np.int64) % u))
            esc = check(found, dec["cols_dst"], "step 1")
            for m, row in zip(cols, out_cols):
                XQc[m] = row
            qc_esc.append((cols[esc[0]], esc[1]))
        qc_esc = _cat_escapes([e[0] for e in qc_esc], [e[1] for e in qc_esc])
        Xaff = targets(dec["aff_dst"])                  # step 2: the units of Q0 j lacks
        found = self._b_apply(aff, XQc, Xaff, payload, (er, ec), qc_esc, negate=True)
        aff_esc = check(found, dec["aff_dst"], "step 2")
        for solve in dec["local"]:                      # step 3: hidden rows (forwarded ones
            parities = ([Xaff[k] for k in solve["aff_rows"]]    # were written into x above)
                        + [XQc[k] for k in solve["qc_rows"]])
            a_pos, a_col = _pick(aff_esc, solve["aff_rows"])
            q_pos, q_col = _pick(qc_esc, solve["qc_rows"])
            order = solve["parity_order"]               # parity q: parities[order[q]]
            inputs = [parities[k] for k in order] + [units[k] for k in solve["src"]]
            esc = (np.concatenate([solve["from_aff"][a_pos], solve["from_qc"][q_pos]]),
                   np.concatenate([a_col, q_col]))
            found = combine_mod_p(solve["matrix"], inputs, [x[d] for d in solve["dst"]], esc)
            check(found, np.zeros(len(solve["dst"]), dtype=np.int64), "step 3")
        for c, iv in zip(dec["unknown"], coding.decoded_ivs(x, dec["unknown"].size, dim)):
            out[int(self.users[c])] = iv

    def _decode_fields(self, G: np.ndarray, j: int, ivs: dict, downlink: np.ndarray, dim: int,
                       out: dict) -> None:
        """:meth:`decode` for short units (below coding.ROW_LIST_MIN_SYMBOLS symbols): the
        same steps on stacked arrays of field elements (uint32, int64 for step 1), whose
        few large NumPy calls cost less there than rows passed one by one."""
        dec = self.decoder(G, j)
        if dec["unknown"].size == 0:
            return
        t = self.tables()
        u = unit_symbols(dim, self.F)
        payload, (er, ec) = coding.split_packed(downlink, (self.R, u))
        mine = dec["mine"]
        units = np.zeros((len(mine) * self.F + 1, u), dtype=np.uint32)  # + a zero unit
        units[:-1] = _windows(ivs, self.users, np.stack([mine, np.zeros_like(mine)], axis=1),
                              self.F * u, u, dim).reshape(-1, u)
        cols, aff = dec["cols"], dec["aff"]
        XQc = np.empty((len(t["qc"]), u), dtype=np.uint32)
        XQc[dec["kc"]] = self._values_fields(dec["values_kc"], units)
        if len(cols):                                   # step 1: a square Cauchy system
            Ysel = payload[dec["sel"]].astype(np.uint32)
            hit = dec["sel_at"][er] >= 0
            Ysel[dec["sel_at"][er[hit]], ec[hit]] = 65536
            Z = Ysel.astype(np.int64) - self._values_fields(dec["values_sel"], units)
            if dec["b_sel_kc"] is not None:
                Z -= field_mul(dec["b_sel_kc"], XQc[dec["kc"]])
            XQc[cols] = field_mul(dec["inv"], (Z % P).astype(np.uint32))
        Xaff = np.empty((len(aff), u), dtype=np.uint32)  # step 2: the units of Q0 j lacks
        self._b_apply(aff, XQc, Xaff, payload, (er, ec), negate=True)
        x = np.empty((dec["unknown"].size * self.F, u), dtype=np.uint16)

        def put(dst, src):
            if src.size and src.max() >= 65536:
                raise DecodeError(f"relay {j + 1}, {self.label}: decoded a symbol outside "
                                  f"16 bits; the broadcast was corrupted")
            x[dst] = src

        put(dec["fwd_aff"][1], Xaff[dec["fwd_aff"][0]])   # step 3: forwarded rows ...
        put(dec["fwd_cols"][1], XQc[cols[dec["fwd_cols"][0]]])
        for solve in dec["local"]:                       # ... and hidden ones
            parities = np.empty((len(solve["from_aff"]) + len(solve["from_qc"]), u), np.uint32)
            parities[solve["from_aff"]] = Xaff[solve["aff_rows"]]
            parities[solve["from_qc"]] = XQc[solve["qc_rows"]]
            stacked = np.concatenate([parities, units[solve["src"]]])
            put(solve["dst"], field_mul(solve["matrix"], stacked))
        x = x.reshape(dec["unknown"].size, self.F, u)
        for m, c in enumerate(dec["unknown"]):
            out[int(self.users[c])] = coding.units_to_iv(x[m], dim)

    def decode_symbols(self, G: np.ndarray, j: int, dim: int) -> int:
        """Symbols relay j's decoder reads per iteration: the broadcast rows it uses,
        the units of Qc, and its local parity solves' inputs."""
        dec = self.decoder(G, j)
        if dec["unknown"].size == 0:
            return 0
        local = sum(s["matrix"].shape[1] for s in dec["local"])
        return (len(dec["sel"]) + len(dec["aff"]) + len(self.tables()["qc"]) + local) * \
            unit_symbols(dim, self.F)

    def decode_multiply_adds(self, G: np.ndarray, j: int) -> int:
        """Multiply-adds of relay j's decoder per symbol position of a unit: the Cauchy
        solve (|sel| x (|known Qc| + |sel|) for its right-hand side, + |A_j ∩ Qc|^2), the rows of Q0 it lacks (|A_j ∩ Q0| x
        |Qc|), the parities it knows and its local solves."""
        dec = self.decoder(G, j)
        if dec["unknown"].size == 0:
            return 0
        t = self.tables()
        nq = len(t["qc"])
        known_parities = sum(rows.size for plan in (dec["values_kc"], dec["values_sel"])
                             for _, _, rows in plan["parities"])
        return (len(dec["sel"]) * (len(dec["kc"]) + len(dec["sel"])) + len(dec["cols"]) ** 2
                + len(dec["aff"]) * nq + known_parities
                + sum(s["matrix"].size for s in dec["local"]))

    # --- serialisation ------------------------------------------------------------------
    def arrays(self, H: int) -> dict:
        arrays = self._layout_arrays()
        counts = np.array([len(r) for r in self.rows], dtype=np.int64)
        arrays["row_counts"] = counts
        arrays["rows"] = np.concatenate([np.asarray(r, dtype=np.int64).reshape(-1, 2)
                                         for r in self.rows] or [np.zeros((0, 2), np.int64)])
        arrays["hidden"] = np.concatenate([np.asarray(h, dtype=bool) for h in self.hidden]
                                          or [np.zeros(0, bool)])
        arrays["j0"] = np.array([self.j0])
        arrays["q0"] = np.asarray(self.q0, dtype=np.int64)
        arrays["beta"] = np.asarray(self.beta, dtype=np.int64)
        return arrays

    @classmethod
    def from_arrays(cls, get, H: int) -> "StructuredBlock":
        bounds = np.concatenate([[0], np.cumsum(get("row_counts"))])
        rows, hidden = get("rows"), get("hidden")
        return cls(**cls._layout_kwargs(get),
                   rows=[rows[bounds[i]: bounds[i + 1]] for i in range(H)],
                   hidden=[hidden[bounds[i]: bounds[i + 1]] for i in range(H)],
                   j0=int(get("j0")[0]), q0=get("q0"), beta=get("beta"))


KINDS = dict(coding.BLOCK_KINDS, structured=StructuredBlock)   # every block kind


def load_code(buf: np.ndarray) -> Code:
    """A code from :meth:`Code.to_buffer`, whichever construction built its blocks."""
    return Code.from_buffer(buf, kinds=KINDS)


# --- building and proving ------------------------------------------------------------------

def build_block(G: np.ndarray, layout: BlockLayout) -> StructuredBlock:
    """The structured block of a layout, with D0-D3 (module doc) checked by counting;
    raises NotCovered (saying which condition fails, for which relay) otherwise."""
    G = np.asarray(G, dtype=np.uint8)
    H = G.shape[0]
    users = np.asarray(layout.users, dtype=np.int64)
    F = int(layout.F)
    R = downlink_rows(G, layout)
    ptr, rel = user_relays(G, users)
    knows = np.bincount(rel, minlength=H)                    # |I_z ∩ N_j|
    slack = R - F * (len(users) - knows)                     # R - unknown units, >= 0
    rows = [np.asarray(r, dtype=np.int64).reshape(-1, 2) for r in layout.rows]
    width = np.asarray(layout.width, dtype=np.int64)
    messages = np.asarray(layout.messages, dtype=np.int64)

    # D0: every IV unit in some relay's row
    reach = max([F] + [int(r[:, 1].max()) + int(w) for r, w in zip(rows, width) if len(r)])
    cover = np.zeros((len(users), reach + 1), dtype=np.int64)   # rows may end past F: padding
    for i in range(H):
        if len(rows[i]) and width[i]:
            np.add.at(cover, (rows[i][:, 0], rows[i][:, 1]), 1)
            np.add.at(cover, (rows[i][:, 0], rows[i][:, 1] + width[i]), -1)
    holes = np.argwhere(np.cumsum(cover, axis=1)[:, :F] <= 0)
    if len(holes):
        c, f = holes[0]
        raise NotCovered(f"{layout.label}: unit {f} of user {users[c] + 1}'s IV is in no row")
    if any(len(r) >= (P - 1) // 2 for r in rows):
        raise NotCovered(f"{layout.label}: a relay has {max(len(r) for r in rows)} rows, too "
                         f"many for distinct Cauchy points")

    hidden = choose_hidden(layout, ptr, rel, slack)
    blk = StructuredBlock(label=layout.label, F=F, users=users, rows=rows, width=width,
                          messages=messages, hidden=hidden, j0=0,
                          q0=np.zeros(0, np.int64), beta=np.zeros(0, np.int64))
    t = blk.tables()
    T = t["T"]

    # D1: relay j knows at least c_i rows of H_i
    for i in np.flatnonzero(t["parity"] >= 0):
        c = len(rows[i]) - int(messages[i])
        if c <= 0 or width[i] == 0:
            continue
        _, kn = _row_knowers(F, ptr, rel, rows[i][t["hid"][i]], H)
        have = np.bincount(kn, minlength=H)
        have[i] = c
        if have.min() < c:
            j = int(np.argmin(have))
            raise NotCovered(f"{layout.label}: relay {j + 1} knows {have[j]} of relay {i + 1}'s "
                             f"hidden rows, fewer than {c}")

    # who knows each message unit: (unit, relay) pairs, and units every relay knows
    is_raw = t["col"] >= 0
    everyone = is_raw & (t["unit"] < 0)                      # forwarded padding
    fwd = np.flatnonzero(is_raw & ~everyone)
    which, relays = _expand(ptr, rel, t["col"][fwd])
    pair_unit, pair_rel = [fwd[which]], [relays]
    for i in np.flatnonzero(t["parity"] > 0):
        hrows = rows[i][t["hid"][i]]
        for s in range(int(width[i])):
            live = hrows[:, 1] + s < F
            first = t["off"][i] + len(t["raw"][i]) * width[i] + s
            par = np.arange(first, t["off"][i + 1], width[i])
            if not live.any():
                everyone[par] = True
                continue
            _, kn = _expand(ptr, rel, hrows[live, 0])
            allk = np.flatnonzero(np.bincount(kn, minlength=H) == live.sum())
            pair_unit.append(np.repeat(par, len(allk)))
            pair_rel.append(np.tile(allk, len(par)))
    pair_unit = np.concatenate(pair_unit).astype(np.int64)
    pair_rel = np.concatenate(pair_rel).astype(np.int64)
    known_count = np.bincount(pair_rel, minlength=H) + int(everyone.sum())
    affected = T - known_count                                # |A_j|

    # D2 and j0
    over = np.flatnonzero(affected > R)
    if len(over):
        j = int(over[0])
        raise NotCovered(f"{layout.label}: relay {j + 1} cannot compute {affected[j]} message "
                         f"units, more than the broadcast's R = {R}")
    exact = np.flatnonzero(affected == R)
    if not len(exact):
        raise NotCovered(f"{layout.label}: no relay lacks exactly R = {R} message units")
    j0 = int(exact[0])
    known_j0 = everyone.copy()
    known_j0[pair_unit[pair_rel == j0]] = True
    q0 = np.flatnonzero(~known_j0)
    qc = np.flatnonzero(known_j0)

    # D3: distinct points
    in_q0 = np.full(T, -1, dtype=np.int64)
    in_q0[q0] = np.arange(len(q0))
    on_q0 = in_q0[pair_unit] >= 0
    known_qc = np.bincount(pair_rel[~on_q0], minlength=H) + int(everyone[qc].sum())
    need = len(qc) - known_qc                                 # |A_j ∩ Qc|
    if len(qc) + need.max(initial=0) > P:
        raise NotCovered(f"{layout.label}: {len(qc)} units known to relay {j0 + 1} leave too "
                         f"few Cauchy points")
    q0_knowers = (in_q0[pair_unit[on_q0]], pair_rel[on_q0])
    beta = assign_points(q0_knowers, len(q0), len(qc), need, H)
    key = q0_knowers[1] * P + beta[q0_knowers[0]]
    distinct = np.bincount(np.unique(key) // P, minlength=H)
    short = np.flatnonzero(distinct < need)
    if len(short):
        j = int(short[0])
        raise NotCovered(f"{layout.label}: relay {j + 1} knows {distinct[j]} distinct broadcast "
                         f"points, needs {need[j]}")
    blk.j0, blk.q0, blk.beta = j0, q0, beta
    blk.__dict__.pop("_tables", None)                 # q0 changed: derive again
    return blk


def build_code(G: np.ndarray, layouts: list, seed: int = 0, construction: str = "auto") -> Code:
    """The code for a list of block layouts: structured when it covers every block
    (``construction="auto"``, the default, or ``"structured"``, which raises ValueError
    when it does not), else the random verified code of
    :func:`hmtl_mpi.codes.coding.build_code` (``"random"``, or ``"auto"``'s fallback,
    refused with the reason beyond :data:`RANDOM_MAX_UNKNOWNS` units per relay)."""
    if construction not in CONSTRUCTIONS:
        raise ValueError(f"code construction {construction!r}: expected one of "
                         f"{', '.join(CONSTRUCTIONS)}")
    G = np.asarray(G, dtype=np.uint8)
    reason = ""
    if construction != "random":
        try:
            blocks = [build_block(G, layout) for layout in layouts]
            return Code(G=G, blocks=blocks, seed=seed, attempts=1, construction="structured")
        except NotCovered as exc:
            if construction == "structured":
                raise ValueError(f"the structured code does not cover this plan: {exc}") from None
            reason = str(exc)
        largest = max((layout.F * (len(layout.users) - int(G[:, layout.users].sum(axis=1).min()))
                       for layout in layouts), default=0)
        if largest > RANDOM_MAX_UNKNOWNS:
            raise ValueError(f"the structured code does not cover this plan ({reason}) and the "
                             f"random code's dense systems of {largest} units per relay are too "
                             f"large to verify (at most {RANDOM_MAX_UNKNOWNS})")
    code = coding.build_code(G, layouts, seed=seed)
    code.fallback = reason
    return code


def dense_equivalent(G: np.ndarray, blk: StructuredBlock) -> Block | None:
    """The same code as a random-construction :class:`Block`: C_i (identity rows for
    forwarded rows, Gamma_i for parities) and M ([I | B] on the message units), with
    decoders found by exact elimination (None if some relay could not decode). For
    tests: it checks D0-D3's conclusion by rank, and its wire bytes must be the same."""
    t = blk.tables()
    C = []
    for i in range(t["H"]):
        Ci = np.zeros((int(blk.messages[i]), len(blk.rows[i])), dtype=np.int64)
        if t["w"][i]:
            for r, row in enumerate(t["raw"][i]):
                Ci[r, row] = 1
            if t["parity"][i]:
                Ci[len(t["raw"][i]):, t["hid"][i]] = blk.gamma(i)
        C.append(Ci)
    M = np.zeros((blk.R, t["T"]), dtype=np.int64)
    M[np.arange(blk.R), blk.q0] = 1
    if len(t["qc"]):
        M[:, t["qc"]] = blk._b_rows(np.arange(blk.R))
    return coding.dense_block(np.asarray(G, dtype=np.uint8), blk.layout(), C, M)
