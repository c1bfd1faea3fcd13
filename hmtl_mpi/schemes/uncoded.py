"""The uncoded baseline (the paper's Example 1): forward every IV once, send every model once.

Each user's IV goes to its home relay (its lowest-numbered relay), which forwards
it to the server: K IVs up. The server runs the global update (eq. 3) and sends
each model once, to the user's home relay, which hands it on: K models down.
Loads (K, K). In the flat layout (no user ranks; relay i computes the IVs of
every task in its row of G) the home relay forwards the task's IV likewise, and
the server broadcasts the K models, since every relay holding a task needs its
model for the next local update: still (K, K), the uncoded baseline of seed 001.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np

from ..vocabulary import TAG_IV, TAG_MODEL, home_relay
from .base import RelayPart, Scheme, ServerPart, UserPart


class User(UserPart):
    def targets(self):
        return [home_relay(self.job.G, self.k)]


class Relay(RelayPart):
    def sources(self):
        return self.home_users if not self.job.flat else self.users

    def relay_to_server(self, it):
        if len(self.home_users):
            forward = np.stack([self.own[int(k)] for k in self.home_users])
            self.net.send_to_server([(TAG_IV, forward)])

    def server_to_relay(self, it):
        n = self.job.model_values_sent(it)
        if self.job.flat:
            buf = self.net.recv_broadcast(8 * self.job.K * n)
            models = buf.view(np.float64).reshape(self.job.K, n)
            for k, model in self.models_here.items():
                self.models_here[k] = model.copy()
                self.models_here[k][:n] = models[k]
        elif len(self.home_users):
            self.models_in = self.net.recv_from_server((len(self.home_users), n), TAG_MODEL)

    def models_out(self, it):
        return {int(k): self.models_in[m] for m, k in enumerate(self.home_users)}


class Server(ServerPart):
    def relay_to_server(self, it):
        job = self.job
        expected = [(i, TAG_IV, (int((job.home == i).sum()), job.dim))
                    for i in range(job.H) if (job.home == i).any()]
        got = self.net.recv_from_relays(expected)
        self.ivs = np.empty((job.K, job.dim))
        for i, _, _ in expected:
            self.ivs[job.home == i] = got[(i, TAG_IV)]

    def global_update(self, it):
        self.models = self.job.learner.global_update(it, self.ivs)

    def server_to_relay(self, it):
        job = self.job
        n = job.model_values_sent(it)
        if job.flat:
            self.net.broadcast(np.ascontiguousarray(self.models[:, :n]))
            return
        self.net.send_to_relays({i: np.ascontiguousarray(self.models[job.home == i, :n])
                                 for i in range(job.H) if (job.home == i).any()}, TAG_MODEL)

    def held_ivs(self):
        return self.ivs

    def final_models(self):
        return self.models


class Uncoded(Scheme):
    name = "uncoded"
    summary = "forward every IV once, the server updates and sends every model once (Example 1)"
    steps = (
        ("local_update", "local_update"),
        ("user_to_relay", "user_to_relay"),
        ("relay_to_server", "relay_to_server"),
        ("global_update", "global_update"),
        ("server_to_relay", "server_to_relay"),
        ("relay_to_user", "relay_to_user"),
    )
    user_part = User
    relay_part = Relay
    server_part = Server

    @property
    def planned_loads(self):
        return Fraction(self.K), Fraction(self.K)

    def downlink_method(self, requested, flat):
        return requested if flat else "point-to-point"

    def link_loads(self):
        """Each user's IV goes to its home relay only."""
        return dict(super().link_loads(), user_up_max=1)
