"""The job's vocabulary: roles and ranks, home relays, message tags, link classes, phases.

Every other module takes these names from here, and this module imports nothing
of the project (``tests/test_architecture.py`` checks it), so that it sits at the
bottom of every layer and two layers never disagree on a number.

Ranks (the paper's system, Section II): world rank 0 is the server, ranks 1..H
the relays (relay i, 0-based, is rank 1 + i), ranks H+1..H+K the users (user k
is rank H + 1 + k). The flat layout (seed 001's system) has no user ranks: relay
i is the worker of every task in its row of G. Inside the code relays and users
are numbered from 0; whatever is printed for people numbers them from 1.

Message tags are listed with what they carry in docs/wire.md.
"""

from __future__ import annotations

import numpy as np

# --- roles and rank arithmetic ------------------------------------------------------------

SERVER, RELAY, USER = "server", "relay", "user"
ROLES = (SERVER, RELAY, USER)


def role_of(rank: int, H: int) -> tuple:
    """(role, index) of a world rank: ("server", 0), ("relay", i) or ("user", k)."""
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


def ranks_needed(H: int, K: int, flat: bool = False) -> int:
    """1 + H + K ranks; 1 + H in the flat layout."""
    return 1 + H + (0 if flat else K)


def role_names(H: int, flat: bool = False):
    """World rank -> role, as messages name it (relays, workers and users numbered from 1)."""
    relay = "worker" if flat else RELAY

    def name(rank):
        role, index = role_of(rank, H)
        return role if role == SERVER else f"{relay if role == RELAY else role} {index + 1}"
    return name


def home_relays(G: np.ndarray) -> np.ndarray:
    """The relay each user gets its model from: its lowest-numbered relay."""
    return np.argmax(np.asarray(G) != 0, axis=0)


def position_in_group(G: np.ndarray, i: int, k: int) -> int:
    """User k's place in relay i's group (the relay is 0, its users 1.. in user order)."""
    users = np.flatnonzero(np.asarray(G)[i])
    return 1 + int(np.searchsorted(users, k))


def tasks_of_rank(rank: int, G: np.ndarray, flat: bool) -> list:
    """The users whose data a rank needs: a user its own, a worker of the flat layout
    the tasks of its row of G, the server all of them (the SVM baselines), a relay none."""
    H, K = np.asarray(G).shape
    role, index = role_of(rank, H)
    if role == SERVER:
        return list(range(K))
    if role == USER:
        return [index]
    return [int(k) for k in np.flatnonzero(G[index])] if flat else []


# --- message tags (docs/wire.md) ----------------------------------------------------------

# the failure layer's own communicator (hmtl_mpi.job.failures)
TAG_REPORT, TAG_STATUS_REQUEST, TAG_STATUS_REPLY, TAG_HELLO = 1, 2, 3, 4
# the multi-task exchange: IVs up, models down, coded uplink blocks
TAG_IV, TAG_MODEL, TAG_UPLINK = 11, 12, 100          # uplink: TAG_UPLINK + block index
# the link probe's ping-pongs (hmtl_mpi.wire.probe)
TAG_PROBE = 31
# a rank's state on its way into a checkpoint (hmtl_mpi.job.checkpoint)
TAG_STATE = 41
# the gradient workload: every iteration's messages carry it in their tag
TAG_UP, TAG_DOWN, TAG_SPAN = 1000, 17000, 15000      # + iteration mod TAG_SPAN


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
STEPS = ("local_update", "user_to_relay", "encode", "relay_to_server", "server_to_relay",
         "decode", "global_update", "relay_to_user")
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
