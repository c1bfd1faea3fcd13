"""The straggler-tolerant exchange's code (``--relay-stragglers S``; docs/tolerant.md).

One block per planned block (:mod:`hmtl_mpi.planning.tolerant`): its users' IVs are cut
into F sub-packets (units of :func:`hmtl_mpi.codes.coding.iv_units`). Over GF(65537):

* relay i sends ``units_i`` random combinations ``C_i @ S_i`` of every sub-packet of
  every block IV it holds (``S_i``: one row per (user, sub-packet), users in block order);
* the server, from the first H - S relays A to answer, solves for every sub-packet of the
  block: the stacked ``C_i`` (placed in the block's columns) of A has full column rank,
  checked at plan time for **every** A (brute force over the C(H, S) straggler sets);
* the server broadcasts ``R = F (|users| - min_i |N_i ∩ users|)`` random combinations
  ``M @ x`` of all sub-packets x; relay i subtracts what it knows and inverts the rest
  (its rank checked at plan time too).

The coefficients are drawn from ``seed``, ``seed + 1``, ... until every check passes.
Messages on the wire: ``uint16[2]`` escape count E, the payload (coded symbols, 65536
written as 0), then E escape positions as uint32 (:func:`wire`, :func:`unwire`).
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations

import numpy as np

from . import coding

P = coding.P
MAX_ATTEMPTS = 50


@dataclass
class TolerantCodeBlock:
    F: int
    users: np.ndarray                  # 0-based
    units: np.ndarray                  # combinations per relay
    columns: list                      # per relay: block columns (user index * F + f) it holds
    uplink: list                       # per relay: units_i x len(columns_i) coefficients
    downlink: np.ndarray               # R x (len(users) F)
    relay_rows: list                   # per relay: the downlink rows it uses
    relay_decoders: list               # per relay: [Inv, -Inv M[rows, known]]
    relay_unknown: list                # per relay: the block columns it decodes

    @property
    def R(self) -> int:
        return int(self.downlink.shape[0])

    @property
    def width(self) -> int:
        return len(self.users) * self.F

    def system(self, relays) -> np.ndarray:
        """The stacked uplink coefficients of ``relays`` in the block's columns."""
        parts = []
        for i in relays:
            E = np.zeros((int(self.units[i]), self.width), dtype=np.int64)
            E[:, self.columns[i]] = self.uplink[i]
            parts.append(E)
        return np.concatenate(parts) if parts else np.zeros((0, self.width), np.int64)


@dataclass
class TolerantCode:
    G: np.ndarray
    S: int
    blocks: list
    seed: int
    attempts: int
    checked_sets: int = 0

    @property
    def H(self) -> int:
        return int(self.G.shape[0])

    def answering_sets(self):
        """Every set of H - S relays (the server decodes from any of them)."""
        return combinations(range(self.H), self.H - self.S)

    # --- serialisation: the plan's inputs; every rank rebuilds the decoders itself -------
    def to_buffer(self) -> np.ndarray:
        head = [self.S, self.seed, self.attempts, self.checked_sets, len(self.blocks)]
        body = []
        for b in self.blocks:
            body += [b.F, len(b.users), *b.users.tolist(), *b.units.tolist()]
        return np.array(head + body, dtype=np.int64).view(np.uint8)


def _columns(G, users, F, i) -> np.ndarray:
    return np.array([c * F + f for c, k in enumerate(users) if G[i, k] for f in range(F)],
                    dtype=np.int64)


def _full_column_rank(A: np.ndarray) -> bool:
    return len(coding._rref_pivots(A)) == A.shape[1]


def _draw_block(G, F, users, units, rng) -> TolerantCodeBlock | None:
    H = G.shape[0]
    users = np.asarray(users, dtype=np.int64)
    columns = [_columns(G, users, F, i) for i in range(H)]
    uplink = [coding._draw(rng, (int(units[i]), len(columns[i]))) for i in range(H)]
    width = len(users) * F
    R = F * (len(users) - int(G[:, users].sum(axis=1).min())) if len(users) else 0
    M = coding._draw(rng, (R, width))
    rows, decoders, unknowns = [], [], []
    for i in range(H):
        unknown = np.setdiff1d(np.arange(width), columns[i])
        if unknown.size == 0:
            rows.append(np.zeros(0, np.int64))
            decoders.append(np.zeros((0, columns[i].size), np.int64))
            unknowns.append(unknown)
            continue
        A = M[:, unknown]
        pivots = coding._rref_pivots(A.T)
        if len(pivots) < unknown.size:
            return None
        sel = np.array(pivots, dtype=np.int64)
        inv = coding._inverse_mod_p(A[sel])
        minus_known = (-coding._matmul_mod_p(inv, M[np.ix_(sel, columns[i])])) % P
        rows.append(sel)
        decoders.append(np.concatenate([inv, minus_known], axis=1))
        unknowns.append(unknown)
    return TolerantCodeBlock(F=F, users=users, units=np.asarray(units, np.int64),
                             columns=columns, uplink=uplink, downlink=M, relay_rows=rows,
                             relay_decoders=decoders, relay_unknown=unknowns)


def build(G: np.ndarray, S: int, blocks: list, seed: int = 0, verify: bool = True) -> TolerantCode:
    """Draw the code for ``blocks`` = [(F, users, units)], checking (``verify``) that the
    server decodes every block from every set of H - S relays and every relay decodes the
    broadcast; redraws from seed + 1, ... Raises :class:`coding.DecodeError`."""
    G = np.asarray(G, dtype=np.uint8)
    H = G.shape[0]
    for attempt in range(MAX_ATTEMPTS if verify else 1):
        rng = np.random.default_rng(seed + attempt)
        drawn = []
        for F, users, units in blocks:
            blk = _draw_block(G, F, users, units, rng)
            if blk is None:
                break
            drawn.append(blk)
        else:
            code = TolerantCode(G=G, S=S, blocks=drawn, seed=seed + attempt,
                                attempts=attempt + 1)
            if not verify:
                return code
            checked = 0
            ok = True
            for A in code.answering_sets():
                checked += 1
                if not all(_full_column_rank(b.system(A)) for b in drawn):
                    ok = False
                    break
            if ok:
                code.checked_sets = checked
                return code
    raise coding.DecodeError(f"no decodable tolerant code in {MAX_ATTEMPTS} draws from seed "
                             f"{seed} (H = {H}, S = {S})")


def load(G: np.ndarray, buf: np.ndarray) -> TolerantCode:
    """The code of :meth:`TolerantCode.to_buffer`: the same draw, redone on this rank."""
    v = np.asarray(buf, dtype=np.uint8).view(np.int64).tolist()
    S, seed, attempts, checked, n = v[:5]
    pos, blocks, H = 5, [], G.shape[0]
    for _ in range(n):
        F, m = v[pos], v[pos + 1]
        users = v[pos + 2: pos + 2 + m]
        units = v[pos + 2 + m: pos + 2 + m + H]
        blocks.append((F, users, units))
        pos += 2 + m + H
    code = build(G, S, blocks, seed=seed, verify=False)
    code.attempts, code.checked_sets = attempts, checked
    return code


# --- per iteration -------------------------------------------------------------------------

def wire(symbols: np.ndarray) -> np.ndarray:
    """Field elements (0..65536) as one message: escape count, payload, escapes."""
    packed = coding.pack(symbols)
    E = (packed.size - symbols.size) // 2
    head = np.array([E], dtype=np.uint32).view(np.uint16)
    return np.concatenate([head, packed])


def unwire(buf: np.ndarray, L: int) -> np.ndarray:
    """The L field elements (int64) of a :func:`wire` message received into ``buf``."""
    E = int(buf[:2].copy().view(np.uint32)[0])
    return coding.unpack(buf[2: 2 + L + 2 * E], (L,))


NO_PIECE = 0xFFFF       # a piece header's index when the relay gets no piece to forward


def pieces(message: np.ndarray, n: int) -> list:
    """A wire message cut into n near-equal pieces, each headed by ``uint16[4]``: its index,
    n, and the message's length (uint32); the relays forward them to each other."""
    total = np.array([message.size], dtype=np.uint32).view(np.uint16)
    return [np.concatenate([np.array([j, n], dtype=np.uint16), total, part])
            for j, part in enumerate(np.array_split(message, n))]


def no_piece(n: int) -> np.ndarray:
    """The header sent to a relay that did not answer in time: nothing to forward."""
    return np.array([NO_PIECE, n, 0, 0], dtype=np.uint16)


def piece_index(buf: np.ndarray) -> int | None:
    return None if int(buf[0]) == NO_PIECE else int(buf[0])


def _sizes(buf: np.ndarray) -> list:
    n, total = int(buf[1]), int(buf[2:4].copy().view(np.uint32)[0])
    base, extra = divmod(total, n)                # np.array_split's sizes
    return [base + (1 if j < extra else 0) for j in range(n)]


def trim(buf: np.ndarray) -> np.ndarray:
    """A received piece without the unused end of its receive buffer (to forward it)."""
    return buf[: 4 + _sizes(buf)[int(buf[0])]]


def join(bufs: list) -> np.ndarray:
    """The wire message from all n pieces (received into larger buffers), any order."""
    sizes = _sizes(bufs[0])
    out = np.empty(sum(sizes), dtype=np.uint16)
    starts = np.concatenate([[0], np.cumsum(sizes)])
    for buf in bufs:
        j = int(buf[0])
        out[starts[j]: starts[j + 1]] = buf[4: 4 + sizes[j]]
    return out


def piece_capacity(L: int, n: int) -> int:
    """uint16 slots a receive of one of n pieces of an L-symbol message needs."""
    return 4 + -(-capacity(L) // n)


def capacity(L: int) -> int:
    """uint16 slots a receive of an L-symbol message needs (every symbol escaped at worst)."""
    return 2 + 3 * L


def _rows(blk: TolerantCodeBlock, ivs: dict, G, i) -> np.ndarray:
    """S_i: the sub-packets relay i holds, one row per (user, sub-packet)."""
    rows = [coding.iv_units(ivs[int(k)], blk.F) for k in blk.users if G[i, k]]
    return np.concatenate(rows).astype(np.int64) if rows else None


def uplink_symbols(code: TolerantCode, i: int, dim: int) -> int:
    return sum(int(b.units[i]) * coding.unit_symbols(dim, b.F) for b in code.blocks)


def downlink_symbols(code: TolerantCode, dim: int) -> int:
    return sum(b.R * coding.unit_symbols(dim, b.F) for b in code.blocks)


def relay_encode(code: TolerantCode, i: int, ivs: dict, dim: int) -> np.ndarray:
    """Relay i's uplink message (all blocks) as field elements, flat."""
    out = []
    for b in code.blocks:
        if b.units[i]:
            out.append(coding._matmul_mod_p(b.uplink[i], _rows(b, ivs, code.G, i)).reshape(-1))
    return np.concatenate(out) if out else np.zeros(0, np.int64)


class ServerDecoder:
    """The server's decoders, one per answering set, built when first needed (the code
    guarantees each exists)."""

    def __init__(self, code: TolerantCode, dim: int):
        self.code, self.dim, self.cache = code, dim, {}

    def _matrices(self, A: tuple) -> list:
        if A not in self.cache:
            out = []
            for b in self.code.blocks:
                system = b.system(A)
                pivots = coding._rref_pivots(system.T)          # independent rows
                sel = np.array(pivots, dtype=np.int64)
                out.append((sel, coding._inverse_mod_p(system[sel])))
            self.cache[A] = out
        return self.cache[A]

    def decode(self, messages: dict) -> list:
        """``messages``: relay -> its uplink field elements (flat), for one answering set.
        Returns per block the sub-packets x (width x u)."""
        A = tuple(sorted(messages))
        code, dim = self.code, self.dim
        offsets = {i: 0 for i in A}
        xs = []
        for b, (sel, inv) in zip(code.blocks, self._matrices(A)):
            u = coding.unit_symbols(dim, b.F)
            parts = []
            for i in A:
                n = int(b.units[i]) * u
                parts.append(messages[i][offsets[i]: offsets[i] + n].reshape(-1, u))
                offsets[i] += n
            Y = np.concatenate(parts) if parts else np.zeros((0, u), np.int64)
            xs.append(coding._matmul_mod_p(inv, Y[sel]))
        return xs

    def downlink(self, xs: list) -> np.ndarray:
        """The broadcast ``M @ x`` of every block, flat field elements."""
        out = [coding._matmul_mod_p(b.downlink, x).reshape(-1)
               for b, x in zip(self.code.blocks, xs) if b.R]
        return np.concatenate(out) if out else np.zeros(0, np.int64)

    def ivs(self, xs: list) -> dict:
        """The decoded IVs, user -> float64 vector."""
        out = {}
        for b, x in zip(self.code.blocks, xs):
            for c, k in enumerate(b.users):
                out[int(k)] = coding.units_to_iv(x[c * b.F: (c + 1) * b.F], self.dim)
        return out


def relay_decode(code: TolerantCode, i: int, ivs: dict, downlink: np.ndarray, dim: int) -> dict:
    """Every IV: relay i's own (``ivs``) and those it decodes from the broadcast."""
    out = dict(ivs)
    pos = 0
    for b in code.blocks:
        u = coding.unit_symbols(dim, b.F)
        Y = downlink[pos: pos + b.R * u].reshape(b.R, u)
        pos += b.R * u
        if b.relay_unknown[i].size == 0:
            continue
        known = _rows(b, ivs, code.G, i)
        stacked = np.concatenate([Y[b.relay_rows[i]], known]) if known is not None \
            else Y[b.relay_rows[i]]
        x_unknown = coding._matmul_mod_p(b.relay_decoders[i], stacked)
        if (x_unknown >= 65536).any():
            raise coding.DecodeError(f"relay {i + 1}: a decoded symbol is 65536 (corrupted "
                                     f"broadcast)")
        full = np.zeros((b.width, u), dtype=np.int64)
        full[b.relay_unknown[i]] = x_unknown
        for c, k in enumerate(b.users):
            if int(k) not in out:
                out[int(k)] = coding.units_to_iv(full[c * b.F: (c + 1) * b.F], dim)
    return out


def verify(code: TolerantCode, dim: int = 100, seed: int = 0) -> dict:
    """One exchange on IVs with awkward bit patterns for **every** set of H - S answering
    relays: the server's decoded IVs and every relay's, compared bit for bit."""
    G, H = code.G, code.H
    ivs = coding.special_ivs(G.shape[1], dim, seed)
    own = [{int(k): ivs[k] for k in np.flatnonzero(G[i])} for i in range(H)]
    sizes = [uplink_symbols(code, i, dim) for i in range(H)]
    messages = [unwire(wire(relay_encode(code, i, own[i], dim)), sizes[i]) for i in range(H)]
    server = ServerDecoder(code, dim)
    sets, exact = 0, True
    for A in code.answering_sets():
        sets += 1
        xs = server.decode({i: messages[i] for i in A})
        exact &= all(iv.tobytes() == ivs[k].tobytes() for k, iv in server.ivs(xs).items())
        down = unwire(wire(server.downlink(xs)), downlink_symbols(code, dim))
        for i in range(H):
            got = relay_decode(code, i, own[i], down, dim)
            exact &= all(got[k].tobytes() == ivs[k].tobytes() for k in range(G.shape[1]))
    return {"straggler_sets": sets, "relays": H, "dim": dim, "exact": bool(exact)}
