"""Network topologies G: load, validate, derive N_i, r_k and I_z, and generate.

G is an H x K 0/1 matrix (rows relays, columns users): ``G[i, k] = 1`` iff relay
i is linked to user k (Section II of the paper). Files store it as a NumPy
``.npy`` array; built-in names (``paper-fig2``) are accepted wherever a path is.

Inside the code relays and users are numbered from 0; everything printed for
people (tables, JSON, error messages) numbers them from 1, as the paper does.

Its command line is :mod:`hmtl_mpi.topology`.
"""

from __future__ import annotations

import functools
import math
import os
from itertools import combinations

import numpy as np


class OnTopology:
    """H and K of the topology ``self.G`` (relays x users) a plan was made for."""

    @property
    def H(self) -> int:
        return int(self.G.shape[0])

    @property
    def K(self) -> int:
        return int(self.G.shape[1])


class TopologyError(ValueError):
    """An invalid topology; the message names the file, relay or user concerned."""


# The paper's Fig. 2 example, users numbered from 1 (Section III).
PAPER_FIG2_RELAYS = (
    (1, 3, 5, 6, 8, 9, 10),
    (1, 2, 3, 4, 10),
    (2, 4, 5),
    (6, 7, 9, 10),
    (1, 2, 6, 7, 8),
)


def paper_fig2() -> np.ndarray:
    """The paper's Fig. 2 network: K = 10 users, H = 5 relays (16 ranks)."""
    G = np.zeros((5, 10), dtype=np.uint8)
    for i, users in enumerate(PAPER_FIG2_RELAYS):
        G[i, [k - 1 for k in users]] = 1
    return G


# Example A of docs/joint.md (seed 001): 3 relays (its workers), 4 users (its items),
# Z1 = {1,2,3}, Z2 = {2,3,4}, Z3 = {1,4}; joint loads (2, 2), hierarchical (2.5, 2).
EXAMPLE_A_RELAYS = ((1, 2, 3), (2, 3, 4), (1, 4))


def example_a() -> np.ndarray:
    G = np.zeros((3, 4), dtype=np.uint8)
    for i, users in enumerate(EXAMPLE_A_RELAYS):
        G[i, [k - 1 for k in users]] = 1
    return G


def cyclic(H: int, r: int) -> np.ndarray:
    """K = H users; relay i holds users i, i+1, ..., i+r-1 (mod H): seed 001's cyclic placement."""
    if not 1 <= r < H:
        raise TopologyError(f"cyclic: need 1 <= r < H, got r = {r}, H = {H}")
    G = np.zeros((H, H), dtype=np.uint8)
    for i in range(H):
        G[i, [(i + j) % H for j in range(r)]] = 1
    return G


def tree(sizes) -> np.ndarray:
    """A tree: relay i has its own ``sizes[i]`` users, every user one relay (users numbered
    relay by relay): the master / edge / worker hierarchy of gradient coding (docs/gradient-coding.md)."""
    sizes = [int(x) for x in sizes]
    if len(sizes) < 2 or min(sizes) < 1:
        raise TopologyError(f"tree: need at least 2 relays with at least 1 user each, got "
                            f"{','.join(map(str, sizes))}")
    G = np.zeros((len(sizes), sum(sizes)), dtype=np.uint8)
    start = 0
    for i, m in enumerate(sizes):
        G[i, start: start + m] = 1
        start += m
    return G


BUILTIN = {"paper-fig2": paper_fig2, "example-a": example_a}


def validate(G, source: str = "topology", allow_idle_relays: bool = False,
             allow_full_relays: bool = False) -> np.ndarray:
    """Check G against the paper's model and return it as a uint8 H x K array.

    Rejected, with the offending relay/user named (1-based): not a 2-D array,
    NaN or entries other than 0/1, H < 2, a user with no relay, a relay with no
    user, a relay linked to every user (it could act as the server). The joint
    planner admits the last two (``allow_idle_relays``, ``allow_full_relays``).
    """
    try:
        arr = np.asarray(G)
    except (ValueError, TypeError) as exc:   # ragged nested lists and the like
        raise TopologyError(f"{source}: G is not a rectangular array ({exc})") from None
    if arr.ndim != 2:
        raise TopologyError(
            f"{source}: G must be a 2-D H x K array (rows relays, columns users), "
            f"got an array of shape {arr.shape}")
    H, K = arr.shape
    if H == 0 or K == 0:
        raise TopologyError(f"{source}: G is empty (shape {arr.shape})")
    if arr.dtype.kind not in "biuf":
        raise TopologyError(f"{source}: G must hold numbers 0/1, got dtype {arr.dtype}")
    if arr.dtype.kind == "f":
        nan = np.argwhere(np.isnan(arr))
        if len(nan):
            i, k = nan[0]
            raise TopologyError(
                f"{source}: G[{i + 1}, {k + 1}] (relay {i + 1}, user {k + 1}) is NaN; "
                f"entries must be 0 or 1")
    # one pass for unsigned integers (the usual uint8 G: 0.03 s at H K = 10^8), two otherwise
    bad_mask = arr > 1 if arr.dtype.kind in "ub" else (arr != 0) & (arr != 1)
    bad = np.argwhere(bad_mask) if bad_mask.any() else ()
    if len(bad):
        i, k = bad[0]
        raise TopologyError(
            f"{source}: G[{i + 1}, {k + 1}] (relay {i + 1}, user {k + 1}) is "
            f"{arr[i, k].item()!r}; entries must be 0 or 1 ({len(bad)} bad entries)")
    G = arr.astype(np.uint8)
    if H < 2:
        raise TopologyError(f"{source}: H = {H} relay; the scheme needs at least 2 relays")
    lonely_users = np.flatnonzero(G.sum(axis=0) == 0)
    if len(lonely_users):
        raise TopologyError(
            f"{source}: user {lonely_users[0] + 1} is linked to no relay"
            + (f" (also users {', '.join(str(k + 1) for k in lonely_users[1:6])})"
               if len(lonely_users) > 1 else ""))
    idle_relays = np.flatnonzero(G.sum(axis=1) == 0)
    if len(idle_relays) and not allow_idle_relays:
        raise TopologyError(f"{source}: relay {idle_relays[0] + 1} is linked to no user")
    full_relays = np.flatnonzero(G.sum(axis=1) == K)
    if len(full_relays) and not allow_full_relays:
        raise TopologyError(
            f"{source}: relay {full_relays[0] + 1} is linked to all {K} users; the paper "
            f"excludes this (that relay could act as the server)")
    return G


def load_topology(path_or_name) -> np.ndarray:
    """Load G from a ``.npy`` file or a built-in name, and validate it."""
    if isinstance(path_or_name, np.ndarray):
        return validate(path_or_name)
    name = str(path_or_name)
    if name in BUILTIN:
        return validate(BUILTIN[name](), source=name)
    if not os.path.exists(name):
        raise TopologyError(
            f"{name}: no such topology file (built-in names: {', '.join(sorted(BUILTIN))})")
    if os.path.isdir(name):
        raise TopologyError(f"{name}: is a directory, not a .npy topology file")
    try:
        with open(name, "rb") as fh:
            magic = fh.read(6)
    except OSError as exc:
        raise TopologyError(f"{name}: cannot be read ({exc.strerror or exc})") from None
    if magic.startswith(b"PK\x03\x04"):
        raise TopologyError(f"{name}: is an .npz archive; save G alone with numpy.save")
    if magic != b"\x93NUMPY":
        # numpy itself would report "pickled data" for any non-.npy file, which misleads
        raise TopologyError(
            f"{name}: not a .npy file (it does not start with the NumPy magic string); "
            f"save G with numpy.save")
    try:
        arr = np.load(name, allow_pickle=False)
    except ValueError as exc:
        if "Object arrays" in str(exc):
            raise TopologyError(
                f"{name}: G holds Python objects (dtype object); it must be a numeric "
                f"0/1 array") from None
        raise TopologyError(f"{name}: not a readable .npy array ({exc.__class__.__name__}: {exc})") from None
    except Exception as exc:  # numpy raises ValueError/OSError/EOFError/... on bad files
        raise TopologyError(f"{name}: not a readable .npy array ({exc.__class__.__name__}: {exc})") from None
    return validate(arr, source=name)


# --- derived sets (Section II, eq. 4) -------------------------------------------------

def relay_users(G: np.ndarray) -> list[np.ndarray]:
    """N_i: the users of each relay i (0-based user indices)."""
    return [np.flatnonzero(row) for row in G]


def user_relays(G: np.ndarray) -> list[np.ndarray]:
    """The relays of each user k (0-based relay indices)."""
    return [np.flatnonzero(col) for col in G.T]


def user_degrees(G: np.ndarray) -> np.ndarray:
    """r_k: the number of relays of each user (column sums of G)."""
    return G.sum(axis=0).astype(np.int64)


def users_by_degree(G: np.ndarray) -> dict[int, np.ndarray]:
    """I_z for z = 1..H-1 (eq. 4): users linked to exactly z relays; empty sets kept."""
    r = user_degrees(G)
    return {z: np.flatnonzero(r == z) for z in range(1, G.shape[0])}


# --- generators ------------------------------------------------------------------------

def random_regular(K: int, H: int, r: int, seed: int = 0) -> np.ndarray:
    """Every user joins r distinct relays drawn uniformly; redrawn until G is valid."""
    if not 1 <= r <= H - 1:
        raise TopologyError(f"random: r = {r} must be between 1 and H - 1 = {H - 1}")
    if K < 2:
        raise TopologyError(f"random: K = {K} users; at least 2 are needed (with one user, "
                            f"every relay of that user would be linked to all users)")
    rng = np.random.default_rng(seed)
    for _ in range(10_000):
        G = np.zeros((H, K), dtype=np.uint8)
        for k in range(K):
            G[rng.choice(H, size=r, replace=False), k] = 1
        if G.sum(axis=1).min() > 0 and G.sum(axis=1).max() < K:
            return G
    raise TopologyError(
        f"random: could not draw a valid topology with K = {K}, H = {H}, r = {r} "
        f"(every relay needs a user and no relay may have all users)")


def symmetric(H: int, r: int, per_group: int = 1) -> np.ndarray:
    """Theorem 3 design: one group of ``per_group`` users per r-subset of the H relays.

    K = C(H, r) * per_group; achieves L_up = K(H-r)/(H-1), L_down = K - rK/H.
    """
    if not 1 <= r <= H - 1:
        raise TopologyError(f"symmetric: r = {r} must be between 1 and H - 1 = {H - 1}")
    if per_group < 1:
        raise TopologyError(f"symmetric: per_group = {per_group} must be at least 1")
    subsets = list(combinations(range(H), r))
    G = np.zeros((H, len(subsets) * per_group), dtype=np.uint8)
    for g, subset in enumerate(subsets):
        for u in range(per_group):
            G[list(subset), g * per_group + u] = 1
    return G


def heterogeneous(K: int, r: int, d: float, seed: int = 0) -> np.ndarray:
    """The paper's Fig. 4/7 design for H = 4: relay degrees (r/4 ± d)K.

    Relays 1, 2 get (r/4 + d)K users and relays 3, 4 get (r/4 - d)K users; every
    user joins r distinct relays. Users are dealt to relays in a round-robin over a
    seeded random order, most-demanded relays first, so degrees are exact whenever
    (r/4 ± d)K are integers that add up to rK.
    """
    H = 4
    hi, lo = (r / 4 + d) * K, (r / 4 - d) * K
    if not (1 <= r <= H - 1):
        raise TopologyError(f"heterogeneous: r = {r} must be 1, 2 or 3 for H = 4")
    if abs(hi - round(hi)) > 1e-9 or abs(lo - round(lo)) > 1e-9:
        raise TopologyError(
            f"heterogeneous: (r/4 ± d)K = {hi:g}, {lo:g} must be whole numbers of users "
            f"(K = {K}, r = {r}, d = {d})")
    degrees = [int(round(hi))] * 2 + [int(round(lo))] * 2
    if min(degrees) < 1 or max(degrees) >= K:
        raise TopologyError(
            f"heterogeneous: relay degrees {degrees} must lie in 1..K-1 = {K - 1} (d = {d} too large)")
    rng = np.random.default_rng(seed)
    remaining = list(degrees)
    G = np.zeros((H, K), dtype=np.uint8)
    for k in rng.permutation(K):
        # give user k the r relays that still need the most users (ties broken at random)
        order = sorted(range(H), key=lambda i: (-remaining[i], rng.random()))
        chosen = order[:r]
        if remaining[chosen[-1]] <= 0:
            raise TopologyError(f"heterogeneous: degrees {degrees} cannot be met with r = {r}")
        for i in chosen:
            G[i, k] = 1
            remaining[i] -= 1
    return validate(G, source="heterogeneous")


# --- a given degree sequence (the paper's Fig. 4) -----------------------------------------

@functools.lru_cache(maxsize=64)
def degree_count_vectors(degrees: tuple, r: int):
    """Every way to give K = sum(degrees) / r users r relays each with these relay degrees,
    up to the order of the users: the r-subsets of relays and the count vectors x (how
    many users take each subset; one row per vector) with sum_{S ∋ i} x_S = degrees[i],
    and log(1 / prod_S x_S!), the log of the number of graphs per vector up to K!.
    Enumerated once per (degrees, r); feasible for small C(H, r) (Fig. 4: 6 subsets)."""
    H = len(degrees)
    subsets = list(combinations(range(H), r))
    if len(subsets) > 12:
        raise TopologyError(f"random_with_degrees: C(H, r) = C({H}, {r}) = {len(subsets)} "
                            f"relay sets are too many to enumerate (at most 12)")
    last = {i: max(j for j, s in enumerate(subsets) if i in s) for i in range(H)}
    found = []

    def walk(j, rem, xs):
        if j == len(subsets):
            if not any(rem):
                found.append(list(xs))
            return
        s = subsets[j]
        forced = {rem[i] for i in s if last[i] == j}   # the last set of relay i fills it
        if len(forced) > 1:
            return
        choices = forced if forced else range(min(rem[i] for i in s) + 1)
        for x in choices:
            if x < 0 or any(rem[i] < x for i in s):
                continue
            for i in s:
                rem[i] -= x
            xs.append(x)
            walk(j + 1, rem, xs)
            xs.pop()
            for i in s:
                rem[i] += x

    walk(0, list(degrees), [])
    X = np.array(found, dtype=np.int64).reshape(-1, len(subsets))
    logw = -np.array([sum(math.lgamma(int(v) + 1) for v in row) for row in X])
    return subsets, X, logw


def random_with_degrees(K: int, degrees, r: int, rng) -> np.ndarray:
    """A uniformly random H x K bipartite graph (rows relays) in which relay i has
    ``degrees[i]`` users and every user exactly r relays (Fig. 4 with r = 2).

    Exact: a count vector x is drawn with probability proportional to the number of
    graphs that have it, K! / prod_S x_S!, then the multiset of relay sets is dealt
    to the users in a uniformly random order; every graph has the same probability.
    """
    degrees = tuple(int(v) for v in degrees)
    if sum(degrees) != r * K:
        raise TopologyError(f"random_with_degrees: relay degrees {list(degrees)} add up to "
                            f"{sum(degrees)} links, not r K = {r * K}")
    if min(degrees) < 0 or max(degrees) > K:
        raise TopologyError(f"random_with_degrees: relay degrees {list(degrees)} must lie "
                            f"in 0..K = {K}")
    subsets, X, logw = degree_count_vectors(degrees, r)
    if len(X) == 0:
        raise TopologyError(f"random_with_degrees: no graph has relay degrees "
                            f"{list(degrees)} with every user on {r} relays")
    p = np.exp(logw - logw.max())
    x = X[rng.choice(len(X), p=p / p.sum())]
    labels = np.repeat(np.arange(len(subsets)), x)[rng.permutation(K)]
    G = np.zeros((len(degrees), K), dtype=np.uint8)
    for k, label in enumerate(labels):
        G[list(subsets[label]), k] = 1
    return G



# --- for people ---------------------------------------------------------------------------

def _users_text(users, most: int = 12) -> str:
    """A 0-based user set, 1-based; past ``most`` users, the first and last few and the size."""
    ones = [str(k + 1) for k in users]
    if len(ones) > most:
        return f"{{{', '.join(ones[:6])}, ..., {', '.join(ones[-2:])}}} ({len(ones)} users)"
    return f"{{{', '.join(ones)}}}"


def describe(G: np.ndarray) -> str:
    """A readable summary: N_i per relay and I_z per round (1-based); long sets are cut
    short and, past 20 relays, the empty rounds I_z are left out."""
    H, K = G.shape
    lines = [f"H = {H} relays, K = {K} users, ranks needed: 1 + H + K = {1 + H + K} "
             f"(1 + H + ceil(K / N) with --users-per-rank N)"]
    for i, users in enumerate(relay_users(G)):
        lines.append(f"  N_{i + 1} = {_users_text(users)}")
    for z, users in users_by_degree(G).items():
        if len(users) or H <= 20:
            lines.append(f"  I_{z} = {_users_text(users)}")
    full = np.flatnonzero(user_degrees(G) == H)
    if len(full):
        lines.append(f"  linked to all relays: {_users_text(full)}")
    return "\n".join(lines)
