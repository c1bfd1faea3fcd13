"""The roles' links: how the server, a relay and a user move buffers between each other.

:class:`UserNet`, :class:`RelayNet` and :class:`ServerNet` implement the declared
interfaces :class:`~hmtl_mpi.wire.interfaces.UserLinks`,
:class:`~hmtl_mpi.wire.interfaces.RelayLinks` and
:class:`~hmtl_mpi.wire.interfaces.ServerLinks` once, over any
:class:`~hmtl_mpi.wire.interfaces.Endpoint`: MPI (:mod:`hmtl_mpi.wire.transport`,
where the messages travel on communicators that mirror G) or one process
(:mod:`hmtl_mpi.wire.inprocess`). What a role sends and when is its scheme's
business (:mod:`hmtl_mpi.schemes`); here is only where the bytes go, each send
counted in its link class (:data:`hmtl_mpi.vocabulary.LINK_CLASSES`).

Rank layout and home relays: :mod:`hmtl_mpi.vocabulary`. With several users per MPI
rank (``per_rank``, ``--users-per-rank``), a user's messages go to and come from the
rank that runs it (:func:`~hmtl_mpi.vocabulary.host_rank`) with its slot in their tag
(:func:`~hmtl_mpi.vocabulary.user_tag`): each user on a rank has a :class:`UserNet` of
its own, and a relay tells its users apart by tag. Bytes are counted per message, as
with one rank per user.

The broadcast (``downlink``): one buffer whose size every relay knows in advance
(no length message before it). By default the server scatters it in H pieces to
the relays and the relays allgather them among themselves, so exactly one copy
leaves the server; ``bcast`` uses one broadcast collective (MPI_Bcast: fewer calls,
but its tree sends several copies out of the root: about log2(H + 1) for short
messages, two for long ones, which a slow server link pays for). Either way the
broadcast is counted once in ``server_to_relay`` and the relays' allgather in
``relay_to_relay``.
"""

from __future__ import annotations

import numpy as np

from ..vocabulary import (RELAY, RELAYS, SERVER, TAG_IV, TAG_MODEL, UPLINK, home_relay,
                          host_rank, relay_rank, role_of, scatter_layout, user_tag)


def _usable(nbytes: int) -> bool:
    """An empty message is a late sender's "gave up": it does not count."""
    return nbytes > 0


class Net:
    """What every role's links share: the endpoint, the topology, the messages in flight."""

    def __init__(self, endpoint, G, downlink="scatter-allgather", per_rank=1):
        self.endpoint = endpoint
        self.rank = endpoint.rank
        self.G = G
        self.H, self.K = G.shape
        self.downlink = downlink
        self.per_rank = per_rank             # users per MPI rank (--users-per-rank)
        self.inflight = []                   # (request, buffer) not yet completed: see drain()

    def user_at(self, k) -> int:
        """The MPI rank that runs user k."""
        return host_rank(k, self.H, self.per_rank)

    def tag_of(self, tag: int, k) -> int:
        """``tag`` for a message to or from user k (its slot on its rank added)."""
        return user_tag(tag, k, self.per_rank)

    def clock(self) -> float:
        return self.endpoint.clock()

    # --- barrier-free protocols (straggler tolerance): post, take the first, drain the rest
    def _post(self, sources, shape, dtype, tag) -> tuple:
        bufs = [np.empty(shape, dtype=dtype) for _ in sources]
        reqs = [self.endpoint.irecv(src, b, tag) for b, src in zip(bufs, sources)]
        return reqs, bufs

    def _post_users(self, users, shape, dtype, tag) -> tuple:
        bufs = [np.empty(shape, dtype=dtype) for _ in users]
        reqs = [self.endpoint.irecv(self.user_at(k), b, self.tag_of(tag, k))
                for b, k in zip(bufs, users)]
        return reqs, bufs

    def _isend(self, dest, buf, tag, link) -> None:
        self.inflight.append((self.endpoint.isend(dest, buf, tag, link), buf))

    def first(self, posted: tuple, need: int, what: str) -> list:
        """The first ``need`` non-empty arrivals of posted receives: [(index, buffer)], in
        arrival order (an empty message is a late sender's "gave up": it does not count);
        the late ones stay in flight until :meth:`drain`."""
        reqs, bufs = posted
        order = self.endpoint.wait_first(reqs, need, what, usable=_usable)
        self.inflight += list(zip(reqs, bufs))          # buffers stay alive until drained
        return [(i, bufs[i]) for i in order[:need]]

    def ready(self, posted: tuple) -> bool:
        """Whether every receive of ``posted`` arrived, without waiting. Once it says so,
        the buffers are filled: take them as they are (not through :meth:`first`)."""
        return self.endpoint.test(posted[0])

    def drain(self, what: str) -> None:
        """Complete every message still in flight: late arrivals and our own sends."""
        self.endpoint.wait([r for r, _ in self.inflight], what)
        self.inflight = []


class UserNet(Net):
    """User k's links (:class:`~hmtl_mpi.wire.interfaces.UserLinks`)."""

    def __init__(self, endpoint, G, k, downlink="scatter-allgather", per_rank=1):
        super().__init__(endpoint, G, downlink, per_rank)
        self.k = k
        self.home = relay_rank(home_relay(G, k))

    def send_iv(self, relays, iv: np.ndarray) -> None:
        ep, tag = self.endpoint, self.tag_of(TAG_IV, self.k)
        reqs = [ep.isend(relay_rank(i), iv, tag, "user_to_relay") for i in relays]
        ep.wait(reqs, f"IV sends to relays {', '.join(str(int(i) + 1) for i in relays)}")

    def recv_model(self, n: int, tag: int = TAG_MODEL) -> np.ndarray:
        buf = np.empty(n)
        self.endpoint.wait(self.endpoint.irecv(self.home, buf, self.tag_of(tag, self.k)),
                           f"model from relay {self.home}")
        return buf

    def isend_to_relay(self, buf: np.ndarray, tag: int) -> None:
        self._isend(self.home, buf, self.tag_of(tag, self.k), "user_to_relay")

    def isend_to_relays(self, buf: np.ndarray, relays, tag: int) -> None:
        """The same buffer to each of ``relays`` (0-based), without waiting."""
        for i in relays:
            self._isend(relay_rank(i), buf, self.tag_of(tag, self.k), "user_to_relay")

    def post_from_relays(self, relays, shape, dtype, tag: int) -> tuple:
        """Receives from each of ``relays`` (for :meth:`first`)."""
        return self._post([relay_rank(i) for i in relays], shape, dtype, self.tag_of(tag, self.k))

    def isend_to_server(self, buf: np.ndarray, tag: int) -> None:
        """Straight to the server, past the relays."""
        self._isend(0, buf, self.tag_of(tag, self.k), "user_to_server")

    def model_arrived(self, tag: int) -> bool:
        """Whether the home relay's message with ``tag`` is already waiting here."""
        return self.endpoint.probe(self.home, self.tag_of(tag, self.k))

    def delay_unless_model(self, seconds: float, tag: int) -> bool:
        """An injected delay, cut short by the home relay's message with ``tag``."""
        return self.endpoint.delay(seconds, self.home, self.tag_of(tag, self.k))


class RelayNet(Net):
    """Relay i's links (:class:`~hmtl_mpi.wire.interfaces.RelayLinks`)."""

    def __init__(self, endpoint, G, i, downlink="scatter-allgather", per_rank=1):
        super().__init__(endpoint, G, downlink, per_rank)
        self.i = i
        self.users = np.flatnonzero(G[i])

    def recv_ivs(self, users, dim: int) -> dict:
        got, reqs = {}, []
        for k in users:
            got[int(k)] = buf = np.empty(dim)
            reqs.append(self.endpoint.irecv(self.user_at(k), buf, self.tag_of(TAG_IV, k)))
        self.endpoint.wait(reqs, f"IVs from users {', '.join(str(int(k) + 1) for k in users)}")
        return got

    def send_models(self, models: dict) -> None:
        ep = self.endpoint
        reqs = [ep.isend(self.user_at(k), buf, self.tag_of(TAG_MODEL, k), "relay_to_user")
                for k, buf in models.items()]
        ep.wait(reqs, "model sends to the users")

    def send_to_server(self, messages) -> None:
        """``messages``: (tag, buffer) pairs, each sent to the server."""
        ep = self.endpoint
        reqs = [ep.isend(0, buf, tag, "relay_to_server") for tag, buf in messages]
        ep.wait(reqs, "uplink sends to the server")

    def recv_from_server(self, shape, tag: int) -> np.ndarray:
        buf = np.empty(shape)
        self.endpoint.wait(self.endpoint.irecv(0, buf, tag), "models from the server")
        return buf

    def post_from_users(self, users, shape, dtype, tag: int) -> tuple:
        return self._post_users(users, shape, dtype, tag)

    def post_from_relays(self, relays, shape, dtype, tag: int) -> tuple:
        """Receives from each of the other ``relays`` (for :meth:`first`)."""
        return self._post([relay_rank(i) for i in relays], shape, dtype, tag)

    def isend_to_relays(self, buf: np.ndarray, relays, tag: int) -> None:
        """The same buffer to each of the other ``relays``, without waiting."""
        for i in relays:
            self._isend(relay_rank(i), buf, tag, "relay_to_relay")

    def post_from_server(self, shape, dtype, tag: int) -> tuple:
        """A receive from the server (for :meth:`first`): no collective, so that nobody
        waits for a slow relay."""
        return self._post([0], shape, dtype, tag)

    def isend_to_server(self, buf: np.ndarray, tag: int) -> None:
        self._isend(0, buf, tag, "relay_to_server")

    def model_arrived(self, tag: int) -> bool:
        """Whether the server's message with ``tag`` is already waiting here."""
        return self.endpoint.probe(0, tag)

    def delay_unless_model(self, seconds: float, tag: int) -> bool:
        """An injected delay, cut short by the server's message with ``tag``."""
        return self.endpoint.delay(seconds, 0, tag)

    def isend_to_users(self, buf: np.ndarray, users, tag: int) -> None:
        for k in users:
            self._isend(self.user_at(k), buf, self.tag_of(tag, k), "relay_to_user")

    def recv_broadcast(self, nbytes: int) -> np.ndarray:
        """The server's broadcast of ``nbytes`` bytes (see the module doc), as uint8."""
        ep = self.endpoint
        buf = np.empty(nbytes, dtype=np.uint8)
        if self.downlink == "bcast":
            ep.bcast(UPLINK, buf, 0, "broadcast from the server")
            return buf
        counts, displs = scatter_layout(buf.size, self.H)
        mine = np.empty(counts[self.i], dtype=np.uint8)
        ep.scatterv(UPLINK, None, None, None, mine, 0, "broadcast scatter from the server")
        ep.count("relay_to_relay", mine.nbytes * (self.H - 1))
        ep.allgatherv(RELAYS, mine, buf, counts, displs, "broadcast allgather among the relays")
        return buf


class ServerNet(Net):
    """The server's links (:class:`~hmtl_mpi.wire.interfaces.ServerLinks`)."""

    def recv_from_relays(self, expected) -> dict:
        """``expected``: (relay, tag, shape) of float64 messages; returns {(relay, tag): buffer}."""
        got, reqs = {}, []
        for i, tag, shape in expected:
            got[(i, tag)] = buf = np.empty(shape)
            reqs.append(self.endpoint.irecv(relay_rank(i), buf, tag))
        self.endpoint.wait(reqs, "IVs forwarded by the relays")
        return got

    def recv_coded_from_relays(self, expected) -> dict:
        """``expected``: (relay, tag) of uint16 messages whose length only the sender knows
        (coded payload + escapes); returns {(relay, tag): buffer}."""
        got = self.endpoint.recv_variable([(relay_rank(i), t) for i, t in expected], np.uint16,
                                          "coded uplink messages")
        return {(source - 1, tag): buf for (source, tag), buf in got.items()}

    def post_from_relays(self, relays, shape, dtype, tag: int) -> tuple:
        return self._post([relay_rank(i) for i in relays], shape, dtype, tag)

    def post_from_users(self, users, shape, dtype, tag: int) -> tuple:
        """Messages users send straight to the server."""
        return self._post_users(users, shape, dtype, tag)

    def isend_to_relays(self, buf: np.ndarray, relays, tag: int) -> None:
        for i in relays:
            self._isend(relay_rank(i), buf, tag, "server_to_relay")

    def send_to_relays(self, bufs: dict, tag: int) -> None:
        ep = self.endpoint
        keep = {i: np.ascontiguousarray(b) for i, b in bufs.items()}   # alive until sent
        reqs = [ep.isend(relay_rank(i), b, tag, "server_to_relay") for i, b in keep.items()]
        ep.wait(reqs, "model sends to the relays")

    def broadcast(self, buf: np.ndarray) -> None:
        """One broadcast of ``buf`` (any dtype; its size known to every relay), counted once."""
        ep = self.endpoint
        buf = np.ascontiguousarray(buf).reshape(-1).view(np.uint8)
        ep.count("server_to_relay", buf.nbytes)
        if self.downlink == "bcast":
            ep.bcast(UPLINK, buf, 0, "broadcast")
            return
        counts, displs = scatter_layout(buf.size, self.H)
        ep.scatterv(UPLINK, buf, [0] + counts, [0] + displs, None, 0, "broadcast scatter")


def make_net(endpoint, G, downlink="scatter-allgather", per_rank=1, user=None):
    """This rank's links, by its role; on a user rank, those of ``user`` (default: the
    rank's one user, with one user per rank)."""
    role, index = role_of(endpoint.rank, G.shape[0])
    if role == SERVER:
        return ServerNet(endpoint, G, downlink, per_rank)
    if role == RELAY:
        return RelayNet(endpoint, G, index, downlink, per_rank)
    return UserNet(endpoint, G, index if user is None else user, downlink, per_rank)
