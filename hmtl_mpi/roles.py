"""The protocol, one role at a time: server, relay, user; coded and uncoded.

Each role has one method per phase of an iteration; the runtime calls the
phases in :data:`PHASE_ORDER` on every rank, with a barrier on both sides of
each (see :mod:`hmtl_mpi.runtime`). A role simply has no method for a phase in
which it does nothing.

Rank layout: world rank 0 is the server, ranks 1..H the relays (relay i is rank
1 + i, 0-based i), ranks H+1..H+K the users (user k is rank H + 1 + k).
Communicators mirror G:

* ``group[i]``: relay i (rank 0 in it) and its users N_i (ranks 1.. in user order);
* ``uplink``: the server (rank 0) and the relays (relay i is rank 1 + i);
* ``relays``: the relays only (relay i is rank i), for the downlink's allgather.

Home relay: a user linked to several relays gets its model from exactly one,
its lowest-numbered relay; in the uncoded scheme that is also the one relay
its IV goes through.
"""

from __future__ import annotations

import numpy as np
from mpi4py import MPI

from . import coding

# (timing key, method name) per scheme, in protocol order. Coded (SCHEME.md):
# relays encode, the server combines (coding work, timed under "encode") and
# broadcasts, relays decode and run the global update. Uncoded (Example 1): the
# server runs the global update between the uplink and the downlink.
PHASE_ORDER = {
    "coded": (
        ("local_update", "local_update"),
        ("user_to_relay", "user_to_relay"),
        ("encode", "encode"),
        ("relay_to_server", "relay_to_server"),
        ("encode", "combine"),
        ("server_to_relay", "server_to_relay"),
        ("decode", "decode"),
        ("global_update", "global_update"),
        ("relay_to_user", "relay_to_user"),
    ),
    "uncoded": (
        ("local_update", "local_update"),
        ("user_to_relay", "user_to_relay"),
        ("relay_to_server", "relay_to_server"),
        ("global_update", "global_update"),
        ("server_to_relay", "server_to_relay"),
        ("relay_to_user", "relay_to_user"),
    ),
}

TAG_IV, TAG_MODEL, TAG_UPLINK = 11, 12, 100   # uplink: TAG_UPLINK + round index


def home_relays(G: np.ndarray) -> np.ndarray:
    """The relay each user gets its model from: its lowest-numbered relay."""
    return np.argmax(G != 0, axis=0)


class Job:
    """What every role knows: topology, scheme, learner, links and communicators."""

    def __init__(self, G, scheme, learner, links, comms, code=None, downlink="scatter-allgather"):
        self.G = G
        self.H, self.K = G.shape
        self.scheme = scheme
        self.learner = learner
        self.links = links
        self.code = code
        self.downlink = downlink
        self.home = home_relays(G)
        self.group = comms["group"]          # relay index -> communicator (on members)
        self.uplink = comms["uplink"]        # server + relays (None on users)
        self.relays = comms["relays"]        # relays only (None elsewhere)
        self.dim = learner.dim
        self.model_len = learner.model_len

    def model_values_sent(self, it) -> int:
        """How much of a model message goes down in iteration ``it``: all of it, or
        all but the learner's extras when they did not change (MOCHA: Sigma_kk and
        rho, refreshed every ``inner`` iterations). Both ends know the schedule."""
        changed = self.learner.extras_changed(it)
        return self.model_len if changed else self.model_len - self.learner.extra_len


class Server:
    """Rank 0. Coded: combines the relays' messages and broadcasts (eq. 31).
    Uncoded: receives every IV once, runs the global update, sends every model once."""

    role = "server"

    def __init__(self, job: Job):
        self.job = job
        self.ivs = None                      # uncoded: all IVs, in user order

    # -- uplink: relay -> server
    def relay_to_server(self, it):
        job, links = self.job, self.job.links
        if job.scheme == "coded":
            expected = [(1 + i, TAG_UPLINK + r) for r in range(len(job.code.rounds))
                        for i in range(job.H)
                        if coding.uplink_symbols(job.code, r, i, job.dim) > 0]
            self.uplinks = links.recv_variable_many(job.uplink, expected, "coded uplink messages")
        else:
            self.ivs = np.empty((job.K, job.dim))
            reqs = []
            for i in range(job.H):
                users = np.flatnonzero(job.home == i)
                if len(users):
                    buf = np.empty((len(users), job.dim))
                    reqs.append((users, buf, links.irecv(job.uplink, buf, 1 + i, TAG_IV)))
            links.wait([r for _, _, r in reqs], "IVs forwarded by the relays")
            for users, buf, _ in reqs:
                self.ivs[users] = buf

    # -- coding at the server
    def combine(self, it):
        job = self.job
        if job.scheme != "coded":
            return
        parts = []
        for r in range(len(job.code.rounds)):
            msgs = {i: self.uplinks.get((1 + i, TAG_UPLINK + r)) for i in range(job.H)}
            parts.append(coding.server_combine(job.code, r, msgs, job.dim))
        self.downlink = parts

    # -- downlink: server -> relays
    def server_to_relay(self, it):
        job, links = self.job, self.job.links
        if job.scheme == "coded":
            send_downlink(job, self.downlink)
        else:
            reqs, bufs = [], []         # bufs: alive until every send completed
            for i in range(job.H):
                users = np.flatnonzero(job.home == i)
                if len(users):
                    bufs.append(np.ascontiguousarray(self.models[users, : job.model_values_sent(it)]))
                    reqs.append(links.isend(job.uplink, bufs[-1], 1 + i, TAG_MODEL,
                                            "server_to_relay"))
            links.wait(reqs, "model sends to the relays")

    def global_update(self, it):
        if self.job.scheme == "uncoded":
            self.models = self.job.learner.global_update(it, self.ivs)

    def known_ivs(self):
        return self.ivs if self.job.scheme == "uncoded" else None

    def final_models(self):
        return getattr(self, "models", None) if self.job.scheme == "uncoded" else None


def send_downlink(job: Job, parts: list) -> None:
    """The server's broadcast of all rounds' combinations to every relay.

    A header of int64 lengths (one per round) goes first. ``scatter-allgather``:
    the server scatters the buffer in H pieces (one copy leaves the server) and
    the relays allgather them among themselves; ``bcast``: one MPI_Bcast. Either
    way the broadcast is counted once in ``server_to_relay``; the relays'
    allgather traffic is counted in ``relay_to_relay``.
    """
    links = job.links
    header = np.array([p.size for p in parts], dtype=np.int64)
    buf = np.concatenate(parts) if parts else np.zeros(0, np.uint16)
    links.count("server_to_relay", header.nbytes + buf.nbytes)
    links.bcast(job.uplink, header, 0, "downlink header")
    if job.downlink == "bcast":
        links.bcast(job.uplink, buf, 0, "downlink broadcast")
        return
    counts, displs = scatter_layout(buf.size, job.H)
    links.wait(job.uplink.Iscatterv([buf, [0] + counts, [0] + displs, MPI.UINT16_T],
                                    MPI.IN_PLACE, root=0), "downlink scatter")


def scatter_layout(total: int, H: int):
    """Counts and displacements of the downlink's H near-equal pieces."""
    base, extra = divmod(total, H)
    counts = [base + (1 if i < extra else 0) for i in range(H)]
    displs = list(np.cumsum([0] + counts[:-1]).astype(int))
    return counts, [int(d) for d in displs]


def receive_downlink(job: Job, i: int) -> list:
    """Relay i's side of :func:`send_downlink`: every round's broadcast buffer."""
    links = job.links
    header = np.empty(len(job.code.rounds), dtype=np.int64)
    links.bcast(job.uplink, header, 0, "downlink header from the server")
    buf = np.empty(int(header.sum()), dtype=np.uint16)
    if job.downlink == "bcast":
        links.bcast(job.uplink, buf, 0, "downlink broadcast from the server")
    else:
        counts, displs = scatter_layout(buf.size, job.H)
        mine = np.empty(counts[i], dtype=np.uint16)
        links.wait(job.uplink.Iscatterv(None, mine, root=0), "downlink scatter from the server")
        links.count("relay_to_relay", mine.nbytes * (job.H - 1))
        links.wait(job.relays.Iallgatherv(mine, [buf, counts, displs, MPI.UINT16_T]),
                   "downlink allgather among the relays")
    ends = np.cumsum(header)
    return [buf[e - n: e] for n, e in zip(header, ends)]


class Relay:
    """Ranks 1..H. Coded: receives its users' IVs, encodes (eq. 26), decodes the
    broadcast, runs the global update, sends models. Uncoded: forwards."""

    role = "relay"

    def __init__(self, job: Job, i: int):
        self.job, self.i = job, i
        self.users = np.flatnonzero(job.G[i])                      # N_i
        self.home_users = np.flatnonzero(job.home == i)
        self.comm = job.group[i]

    def user_to_relay(self, it):
        job, links = self.job, self.job.links
        senders = self.users if job.scheme == "coded" else self.home_users
        self.own = {}
        reqs = []
        for k in senders:
            buf = np.empty(job.dim)
            self.own[int(k)] = buf
            reqs.append(links.irecv(self.comm, buf, self._group_rank(k), TAG_IV))
        links.wait(reqs, f"IVs from users {', '.join(str(k + 1) for k in senders)}")

    def _group_rank(self, k) -> int:
        return 1 + int(np.searchsorted(self.users, k))

    def encode(self, it):
        if self.job.scheme == "coded":
            self.uplink_msgs = coding.relay_encode(self.job.code, self.i, self.own)

    def relay_to_server(self, it):
        job, links = self.job, self.job.links
        reqs = []
        if job.scheme == "coded":
            for r, msg in enumerate(self.uplink_msgs):
                if msg is not None:
                    reqs.append(links.isend(job.uplink, msg, 0, TAG_UPLINK + r, "relay_to_server"))
        elif len(self.home_users):
            self.forward = np.stack([self.own[int(k)] for k in self.home_users])
            reqs.append(links.isend(job.uplink, self.forward, 0, TAG_IV, "relay_to_server"))
        links.wait(reqs, "uplink sends to the server")

    def server_to_relay(self, it):
        job, links = self.job, self.job.links
        if job.scheme == "coded":
            self.downlinks = receive_downlink(job, self.i)
        elif len(self.home_users):
            self.models_in = np.empty((len(self.home_users), job.model_values_sent(it)))
            links.wait(links.irecv(job.uplink, self.models_in, 0, TAG_MODEL),
                       "models from the server")

    def decode(self, it):
        job = self.job
        if job.scheme == "coded":
            ivs = coding.relay_decode(job.code, self.i, self.own, self.downlinks, job.dim)
            self.ivs = np.stack([ivs[k] for k in range(job.K)])

    def global_update(self, it):
        if self.job.scheme == "coded":
            self.models = self.job.learner.global_update(it, self.ivs)

    def relay_to_user(self, it):
        job, links = self.job, self.job.links
        if job.scheme == "coded":
            n = job.model_values_sent(it)
            out = {int(k): np.ascontiguousarray(self.models[k, :n]) for k in self.home_users}
        else:
            out = {int(k): self.models_in[m] for m, k in enumerate(self.home_users)}
        reqs = [links.isend(self.comm, buf, self._group_rank(k), TAG_MODEL, "relay_to_user")
                for k, buf in out.items()]
        links.wait(reqs, "model sends to the users")

    def known_ivs(self):
        return self.ivs if self.job.scheme == "coded" else None

    def final_models(self):
        return self.models if self.job.scheme == "coded" else None


class User:
    """Ranks H+1..H+K: local update (eq. 2), IV up, model down."""

    role = "user"

    def __init__(self, job: Job, k: int):
        self.job, self.k = job, k
        self.relays = np.flatnonzero(job.G[:, k])
        self.model = job.learner.initial_model(k)

    def local_update(self, it):
        self.iv = np.ascontiguousarray(self.job.learner.local_update(self.k, it, self.model),
                                       dtype=np.float64)

    def user_to_relay(self, it):
        job, links = self.job, self.job.links
        targets = self.relays if job.scheme == "coded" else [job.home[self.k]]
        reqs = [links.isend(job.group[int(i)], self.iv, 0, TAG_IV, "user_to_relay")
                for i in targets]
        links.wait(reqs, f"IV sends to relays {', '.join(str(int(i) + 1) for i in targets)}")

    def relay_to_user(self, it):
        job, links = self.job, self.job.links
        n = job.model_values_sent(it)
        buf = np.empty(n)
        home = int(job.home[self.k])
        links.wait(links.irecv(job.group[home], buf, 0, TAG_MODEL),
                   f"model from relay {home + 1}")
        self.model = self.model.copy()
        self.model[:n] = buf
