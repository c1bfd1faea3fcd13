"""The job's vocabulary: roles and ranks, home relays, message tags, link classes, phases.

Every other module takes these names from here, and this module imports nothing
of the project (``tests/test_architecture.py`` checks it), so that it sits at the
bottom of every layer and two layers never disagree on a number.

Ranks (the paper's system, Section II): world rank 0 is the server, ranks 1..H
the relays (relay i, 0-based, is rank 1 + i), ranks H+1..H+K the users (user k
is rank H + 1 + k). With ``--users-per-rank N`` those user ranks are *logical*: the
users k in [j N, (j + 1) N) share the MPI rank H + 1 + j (:func:`host_rank`), which
runs their parts one after the other, and every message to or from a user carries
the user's slot on its rank in its tag (:func:`user_tag`). The flat layout (seed
001's system) has no user ranks: relay i is the worker of every task in its row of
G. Inside the code relays and users are numbered from 0; whatever is printed for
people numbers them from 1.

Message tags are listed with what they carry in docs/wire.md.
"""

from __future__ import annotations

import numpy as np

# --- roles and rank arithmetic ------------------------------------------------------------

SERVER, RELAY, USER = "server", "relay", "user"
ROLES = (SERVER, RELAY, USER)


def role_of(rank: int, H: int) -> tuple:
    """(role, index) of a world rank: ("server", 0), ("relay", i) or ("user", k); with
    several users per rank, ("user", j) for the j-th user-hosting rank."""
    if rank == 0:
        return SERVER, 0
    if rank <= H:
        return RELAY, rank - 1
    return USER, rank - 1 - H


def relay_rank(i: int) -> int:
    """World rank of relay i."""
    return 1 + int(i)


def user_rank(k: int, H: int) -> int:
    """World rank of user k."""
    return H + 1 + int(k)


def ranks_needed(H: int, K: int, flat: bool = False, per_rank: int = 1) -> int:
    """1 + H + ceil(K / per_rank) ranks (1 + H + K with one user per rank); 1 + H in the
    flat layout."""
    return 1 + H + (0 if flat else -(-K // per_rank))


def ranks_formula(flat: bool = False, per_rank: int = 1) -> str:
    """How :func:`ranks_needed` counts, as messages print it."""
    if flat:
        return "1 + H"
    return "1 + H + K" if per_rank == 1 else f"1 + H + ceil(K / {per_rank})"


# --- several users per MPI rank (--users-per-rank) ------------------------------------------

# A user's messages carry its slot on its hosting rank: tag + USER_TAG_STRIDE * slot. The
# user tags (TAG_IV, TAG_MODEL) are below the stride, and with at most MAX_USERS_PER_RANK
# slots every tag stays within 32767, the upper bound every MPI library must accept.
USER_TAG_STRIDE = 64
MAX_USERS_PER_RANK = 511


def host_rank(k: int, H: int, per_rank: int = 1) -> int:
    """The MPI rank that runs user k (:func:`user_rank` with one user per rank)."""
    return H + 1 + int(k) // int(per_rank)


def users_of_rank(rank: int, H: int, K: int, per_rank: int = 1) -> list:
    """The users an MPI rank runs: [j N, min((j + 1) N, K)) on the j-th user rank; none on
    the server and the relays."""
    role, j = role_of(rank, H)
    if role != USER:
        return []
    return list(range(j * per_rank, min((j + 1) * per_rank, K)))


def user_tag(tag: int, k: int, per_rank: int = 1) -> int:
    """The tag of a message to or from user k: ``tag`` plus its slot on its rank (the tag
    itself with one user per rank)."""
    return int(tag) + USER_TAG_STRIDE * (int(k) % int(per_rank))


def group_members(G: np.ndarray, i: int, per_rank: int = 1) -> list:
    """The MPI ranks of relay i's group: the relay, then the ranks running its users (in
    rank order, each once)."""
    H = np.asarray(G).shape[0]
    hosts = sorted({host_rank(k, H, per_rank) for k in np.flatnonzero(np.asarray(G)[i])})
    return [relay_rank(i)] + hosts


def role_names(H: int, flat: bool = False, K: int | None = None, per_rank: int = 1):
    """World rank -> role, as messages name it (relays, workers and users numbered from 1;
    a rank running several users names them all: "users 4-6")."""
    relay = "worker" if flat else RELAY

    def name(rank):
        role, index = role_of(rank, H)
        if role == USER and per_rank > 1 and K is not None:
            users = users_of_rank(rank, H, K, per_rank)
            if len(users) == 1:
                return f"user {users[0] + 1}"
            return f"users {users[0] + 1}-{users[-1] + 1}"
        return role if role == SERVER else f"{relay if role == RELAY else role} {index + 1}"
    return name


def home_relays(G: np.ndarray) -> np.ndarray:
    """The relay each user gets its model from: its lowest-numbered relay."""
    return np.argmax(np.asarray(G) != 0, axis=0)


def home_relay(G: np.ndarray, k: int) -> int:
    """User k's home relay (one column of :func:`home_relays`)."""
    return int(np.argmax(np.asarray(G)[:, k] != 0))


def tasks_of_rank(rank: int, G: np.ndarray, flat: bool, per_rank: int = 1) -> list:
    """The users whose data a rank needs: a user rank those of the users it runs, a
    worker of the flat layout the tasks of its row of G, the server all of them (the SVM
    baselines), a relay none."""
    H, K = np.asarray(G).shape
    role, index = role_of(rank, H)
    if role == SERVER:
        return list(range(K))
    if role == USER:
        return users_of_rank(rank, H, K, per_rank)
    return [int(k) for k in np.flatnonzero(G[index])] if flat else []


# --- message tags (docs/wire.md) ----------------------------------------------------------

# the failure layer's own communicator (hmtl_mpi.job.failures)
TAG_REPORT, TAG_STATUS_REQUEST, TAG_STATUS_REPLY, TAG_HELLO = 1, 2, 3, 4
# the multi-task exchange: IVs up, models down, coded uplink blocks
TAG_IV, TAG_MODEL, TAG_UPLINK = 11, 12, 100          # uplink: TAG_UPLINK + block index
# the pipelined coded exchange (--segments): a piece of a segment's broadcast, and the
# escape positions of a segment's broadcast (hmtl_mpi.schemes.pipelined)
TAG_PIECE, TAG_PIECE_ESCAPES = 21, 22
# the link probe's ping-pongs (hmtl_mpi.wire.probe)
TAG_PROBE = 31
# a rank's state on its way into a checkpoint (hmtl_mpi.job.checkpoint)
TAG_STATE = 41
# the gradient workload: every iteration's messages carry it in their tag
TAG_UP, TAG_DOWN, TAG_SPAN = 1000, 17000, 15000      # + iteration mod TAG_SPAN


def scatter_layout(total: int, H: int):
    """Counts and displacements of the broadcast's H near-equal pieces (the scatter of
    :mod:`hmtl_mpi.wire.roles`, the pieces of the pipelined exchange)."""
    base, extra = divmod(total, H)
    counts = [base + (1 if i < extra else 0) for i in range(H)]
    displs = list(np.cumsum([0] + counts[:-1]).astype(int))
    return counts, [int(d) for d in displs]


def uplink_tag(block: int) -> int:
    """The tag of a coded exchange's uplink message of block ``block``."""
    return TAG_UPLINK + int(block)


def up_tag(it: int) -> int:
    """Gradient workload: the tag of iteration ``it``'s vectors towards the server."""
    return TAG_UP + it % TAG_SPAN


def down_tag(it: int) -> int:
    """Gradient workload: the tag of iteration ``it``'s model on its way down."""
    return TAG_DOWN + it % TAG_SPAN


# --- link classes, groups, phases ---------------------------------------------------------

# Bytes are counted at the senders, per link class (docs/scheme.md: bytes on the wire are
# the truth): relay_to_relay is the relays' allgather of the broadcast; user_to_server the
# messages users send straight to the server (flat gradient coding).
LINK_CLASSES = ("user_to_relay", "relay_to_server", "server_to_relay", "relay_to_user",
                "relay_to_relay", "user_to_server")

# The groups a collective can span: every rank, the server and the relays, the relays.
WORLD, UPLINK, RELAYS = "world", "uplink", "relays"
GROUPS = (WORLD, UPLINK, RELAYS)

# The steps a scheme's iteration may have (the report's phase keys), in protocol order,
# and the phases timed per iteration: those and the whole iteration.
# ``exchange`` is the pipelined coded exchange (--segments): encode, relay -> server,
# combine, server -> relay and decode overlapped in one step.
STEPS = ("local_update", "user_to_relay", "encode", "relay_to_server", "server_to_relay",
         "decode", "exchange", "global_update", "relay_to_user")
PHASES = STEPS + ("total",)
# Steps that reach user ranks: the flat layout has none, so they do not run there.
USER_STEPS = ("user_to_relay", "relay_to_user")

# --- exit codes (python -m hmtl_mpi --help) -----------------------------------------------

EXIT_OK = 0
EXIT_CHECK_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_FAULT = 3
EXIT_HANG = 4
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143
