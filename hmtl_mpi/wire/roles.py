"""The roles' links: how the server, a relay and a user move buffers between each other.

What a role sends and when is its scheme's business (:mod:`hmtl_mpi.schemes`);
here is only where the bytes go, on communicators that mirror G, each send
counted in its link class (:mod:`hmtl_mpi.wire.transport`):

* ``group[i]``: relay i (rank 0 in it) and its users N_i (ranks 1.. in user order);
* ``uplink``: the server (rank 0) and the relays (relay i is rank 1 + i);
* ``relays``: the relays only (relay i is rank i), for the downlink's allgather.

Rank layout: world rank 0 is the server, ranks 1..H the relays (relay i is rank
1 + i, 0-based i), ranks H+1..H+K the users (user k is rank H + 1 + k); the flat
layout has no user ranks. Home relay: a user linked to several relays gets its
model from exactly one, its lowest-numbered relay.

The broadcast (``downlink``): one buffer whose size every relay knows in advance
(no length message before it). By default the server scatters it in H pieces to
the relays and the relays allgather them among themselves, so exactly one copy
leaves the server; ``bcast`` uses ``MPI_Bcast`` (fewer calls, but its tree sends
several copies out of the root: about log2(H + 1) for short messages, two for long
ones, which a slow server link pays for). Either way the broadcast is counted once
in ``server_to_relay`` and the relays' allgather in ``relay_to_relay``.
"""

from __future__ import annotations

import numpy as np
from mpi4py import MPI

from ..schemes.base import TAG_IV, TAG_MODEL, role_of


def make_comms(world, G, flat: bool = False) -> dict:
    """Communicators mirroring G (collective over the world: every rank calls it)."""
    H, K = G.shape
    rank = world.Get_rank()
    group = {}
    if not flat:
        world_group = world.Get_group()
        for i in range(H):           # increasing i on every member: deadlock-free
            members = [1 + i] + [H + 1 + int(k) for k in np.flatnonzero(G[i])]
            if rank in members:
                sub = world_group.Incl(members)
                group[i] = world.Create_group(sub, tag=i)
                sub.Free()
        world_group.Free()
    uplink = world.Split(0 if rank <= H else MPI.UNDEFINED, rank)
    relays = world.Split(0 if 1 <= rank <= H else MPI.UNDEFINED, rank)
    return {"group": group,
            "uplink": None if uplink == MPI.COMM_NULL else uplink,
            "relays": None if relays == MPI.COMM_NULL else relays}


def scatter_layout(total: int, H: int):
    """Counts and displacements of the broadcast's H near-equal pieces."""
    base, extra = divmod(total, H)
    counts = [base + (1 if i < extra else 0) for i in range(H)]
    displs = list(np.cumsum([0] + counts[:-1]).astype(int))
    return counts, [int(d) for d in displs]


class Net:
    """What every role's links share: the job's links, communicators and topology."""

    def __init__(self, links, comms, G, downlink="scatter-allgather"):
        self.links = links
        self.G = G
        self.H, self.K = G.shape
        self.group = comms["group"]          # relay index -> communicator (on members)
        self.uplink = comms["uplink"]        # server + relays (None on users)
        self.relays = comms["relays"]        # relays only (None elsewhere)
        self.downlink = downlink
        self.inflight = []                   # (request, buffer) not yet completed: see drain()

    # --- barrier-free protocols (straggler tolerance): post, take the first, drain the rest
    def _post(self, comm, sources, shape, dtype, tag) -> tuple:
        bufs = [np.empty(shape, dtype=dtype) for _ in sources]
        reqs = [self.links.irecv(comm, b, src, tag) for b, src in zip(bufs, sources)]
        return reqs, bufs

    def _isend(self, comm, buf, dest, tag, link) -> None:
        self.inflight.append((self.links.isend(comm, buf, dest, tag, link), buf))

    def first(self, posted: tuple, need: int, what: str) -> list:
        """The first ``need`` non-empty arrivals of posted receives: [(index, buffer)], in
        arrival order (an empty message is a late sender's "gave up": it does not count);
        the late ones stay in flight until :meth:`drain`."""
        reqs, bufs = posted
        order = self.links.wait_first(reqs, need, what,
                                      usable=lambda status: status.Get_count(MPI.BYTE) > 0)
        self.inflight += [(r, bufs[i]) for i, r in enumerate(reqs)   # buffers stay alive
                          if r != MPI.REQUEST_NULL]
        return [(i, bufs[i]) for i in order[:need]]

    def _arrived(self, comm, source: int, tag: int) -> bool:
        return comm.Iprobe(source=source, tag=tag)

    def drain(self, what: str) -> None:
        """Complete every message still in flight: late arrivals and our own sends."""
        self.links.wait([r for r, _ in self.inflight], what)
        self.inflight = []


class UserNet(Net):
    """User k's links: to each of its relays in ``group[i]``, where the relay is rank 0."""

    def __init__(self, links, comms, G, k, downlink="scatter-allgather"):
        super().__init__(links, comms, G, downlink)
        self.k = k
        self.home = int(np.argmax(G[:, k] != 0))

    def send_iv(self, relays, iv: np.ndarray) -> None:
        reqs = [self.links.isend(self.group[int(i)], iv, 0, TAG_IV, "user_to_relay")
                for i in relays]
        self.links.wait(reqs, f"IV sends to relays {', '.join(str(int(i) + 1) for i in relays)}")

    def recv_model(self, n: int, tag: int = TAG_MODEL) -> np.ndarray:
        buf = np.empty(n)
        self.links.wait(self.links.irecv(self.group[self.home], buf, 0, tag),
                        f"model from relay {self.home + 1}")
        return buf

    def isend_to_relay(self, buf: np.ndarray, tag: int) -> None:
        self._isend(self.group[self.home], buf, 0, tag, "user_to_relay")

    def model_arrived(self, tag: int) -> bool:
        """Whether the home relay's message with ``tag`` is already waiting here."""
        return self._arrived(self.group[self.home], 0, tag)

    def isend_to_server(self, buf: np.ndarray, tag: int) -> None:
        """Straight to the server on the world communicator, past the relays."""
        self._isend(self.links.world, buf, 0, tag, "user_to_server")


class RelayNet(Net):
    """Relay i's links: its users in ``group[i]``, the server in ``uplink``."""

    def __init__(self, links, comms, G, i, downlink="scatter-allgather"):
        super().__init__(links, comms, G, downlink)
        self.i = i
        self.users = np.flatnonzero(G[i])
        self.comm = self.group.get(i)

    def _group_rank(self, k) -> int:
        return 1 + int(np.searchsorted(self.users, k))

    def recv_ivs(self, users, dim: int) -> dict:
        got, reqs = {}, []
        for k in users:
            got[int(k)] = buf = np.empty(dim)
            reqs.append(self.links.irecv(self.comm, buf, self._group_rank(k), TAG_IV))
        self.links.wait(reqs, f"IVs from users {', '.join(str(int(k) + 1) for k in users)}")
        return got

    def send_models(self, models: dict) -> None:
        reqs = [self.links.isend(self.comm, buf, self._group_rank(k), TAG_MODEL, "relay_to_user")
                for k, buf in models.items()]
        self.links.wait(reqs, "model sends to the users")

    def send_to_server(self, messages) -> None:
        """``messages``: (tag, buffer) pairs, each sent to the server."""
        reqs = [self.links.isend(self.uplink, buf, 0, tag, "relay_to_server")
                for tag, buf in messages]
        self.links.wait(reqs, "uplink sends to the server")

    def recv_from_server(self, shape, tag: int) -> np.ndarray:
        buf = np.empty(shape)
        self.links.wait(self.links.irecv(self.uplink, buf, 0, tag), "models from the server")
        return buf

    def post_from_users(self, users, shape, dtype, tag: int) -> tuple:
        return self._post(self.comm, [self._group_rank(k) for k in users], shape, dtype, tag)

    def isend_to_server(self, buf: np.ndarray, tag: int) -> None:
        self._isend(self.uplink, buf, 0, tag, "relay_to_server")

    def model_arrived(self, tag: int) -> bool:
        """Whether the server's message with ``tag`` is already waiting here."""
        return self._arrived(self.uplink, 0, tag)

    def isend_to_users(self, buf: np.ndarray, users, tag: int) -> None:
        for k in users:
            self._isend(self.comm, buf, self._group_rank(k), tag, "relay_to_user")

    def recv_broadcast(self, nbytes: int) -> np.ndarray:
        """The server's broadcast of ``nbytes`` bytes (see the module doc), as uint8."""
        links = self.links
        buf = np.empty(nbytes, dtype=np.uint8)
        if self.downlink == "bcast":
            links.bcast(self.uplink, buf, 0, "broadcast from the server")
            return buf
        counts, displs = scatter_layout(buf.size, self.H)
        mine = np.empty(counts[self.i], dtype=np.uint8)
        links.wait(self.uplink.Iscatterv(None, mine, root=0), "broadcast scatter from the server")
        links.count("relay_to_relay", mine.nbytes * (self.H - 1))
        links.wait(self.relays.Iallgatherv(mine, [buf, counts, displs, MPI.BYTE]),
                   "broadcast allgather among the relays")
        return buf


class ServerNet(Net):
    """The server's links: every relay in ``uplink``, where relay i is rank 1 + i."""

    def recv_from_relays(self, expected) -> dict:
        """``expected``: (relay, tag, shape) of float64 messages; returns {(relay, tag): buffer}."""
        got, reqs = {}, []
        for i, tag, shape in expected:
            got[(i, tag)] = buf = np.empty(shape)
            reqs.append(self.links.irecv(self.uplink, buf, 1 + i, tag))
        self.links.wait(reqs, "IVs forwarded by the relays")
        return got

    def recv_coded_from_relays(self, expected) -> dict:
        """``expected``: (relay, tag) of uint16 messages whose length only the sender knows
        (coded payload + escapes); returns {(relay, tag): buffer}."""
        got = self.links.recv_variable_many(self.uplink, [(1 + i, t) for i, t in expected],
                                            "coded uplink messages")
        return {(source - 1, tag): buf for (source, tag), buf in got.items()}

    def post_from_relays(self, relays, shape, dtype, tag: int) -> tuple:
        return self._post(self.uplink, [1 + int(i) for i in relays], shape, dtype, tag)

    def post_from_users(self, users, shape, dtype, tag: int) -> tuple:
        """Messages users send straight to the server (world ranks H + 1 + k)."""
        return self._post(self.links.world, [self.H + 1 + int(k) for k in users], shape, dtype, tag)

    def isend_to_relays(self, buf: np.ndarray, relays, tag: int) -> None:
        for i in relays:
            self._isend(self.uplink, buf, 1 + int(i), tag, "server_to_relay")

    def send_to_relays(self, bufs: dict, tag: int) -> None:
        keep = {i: np.ascontiguousarray(b) for i, b in bufs.items()}   # alive until sent
        reqs = [self.links.isend(self.uplink, b, 1 + i, tag, "server_to_relay")
                for i, b in keep.items()]
        self.links.wait(reqs, "model sends to the relays")

    def broadcast(self, buf: np.ndarray) -> None:
        """One broadcast of ``buf`` (any dtype; its size known to every relay), counted once."""
        links = self.links
        buf = np.ascontiguousarray(buf).reshape(-1).view(np.uint8)
        links.count("server_to_relay", buf.nbytes)
        if self.downlink == "bcast":
            links.bcast(self.uplink, buf, 0, "broadcast")
            return
        counts, displs = scatter_layout(buf.size, self.H)
        links.wait(self.uplink.Iscatterv([buf, [0] + counts, [0] + displs, MPI.BYTE],
                                         MPI.IN_PLACE, root=0), "broadcast scatter")


def make_net(rank: int, links, comms, G, downlink="scatter-allgather"):
    """This rank's links, by its role."""
    role, index = role_of(rank, G.shape[0])
    if role == "server":
        return ServerNet(links, comms, G, downlink)
    if role == "relay":
        return RelayNet(links, comms, G, index, downlink)
    return UserNet(links, comms, G, index, downlink)
