"""Several users on one MPI rank (``--users-per-rank N``): their parts run phase by phase.

With one rank per user, 46 ranks already saturate a 2-core machine; with N users per
rank, ``mpirun -n 1+H+ceil(K/N)`` runs K users. The users k in [j N, (j + 1) N) live
on MPI rank 1 + H + j (:func:`hmtl_mpi.vocabulary.host_rank`). Each keeps everything
of its own: its scheme's user part (:class:`hmtl_mpi.schemes.base.UserPart`,
unchanged), its model, its IV and its links (a
:class:`~hmtl_mpi.wire.roles.UserNet` whose messages carry the user's slot in their
tag); they share the rank's learner, which holds their N tasks. :class:`HostedUsers`
is what the loop sees on such a rank: one object with the parts' interface, whose
every step runs the step of each of its users in user order. The checks read the
union of the users' IVs and models, so digests are compared per user, as with one
rank per user; bytes are counted per message, so every link class carries the same
bytes as with one rank per user.

Only the workloads with steps are hosted this way: a barrier-free scheme's users
straggle and give up independently, which N users run one after the other on one
rank cannot do, so ``--workload gd`` refuses ``--users-per-rank`` above 1
(:func:`hmtl_mpi.cli.users_per_rank_problem`).
"""

from __future__ import annotations

from ..vocabulary import STEPS, USER, role_of, users_of_rank
from ..wire.roles import make_net


class HostedUsers:
    """The parts of the users one MPI rank runs, seen by the loop as one part.

    Step ``s`` calls ``s`` on every user part that has it, in user order; the checks'
    accessors return the union over the users; a checkpoint holds the rank's learner
    state once and every user's own state under ``user/k/``.
    """

    role = USER
    compute_s: tuple = ()

    def __init__(self, scheme, job, endpoint, downlink: str, per_rank: int):
        H, K = job.G.shape
        self.scheme, self.job = scheme, job
        self.users = users_of_rank(endpoint.rank, H, K, per_rank)
        self.parts = [scheme.part(USER, job, make_net(endpoint, job.G, downlink, per_rank, k), k)
                      for k in self.users]
        self.net = self.parts[0].net if self.parts else None

    def __getattr__(self, name):
        """A step of the scheme (:data:`hmtl_mpi.vocabulary.STEPS`): every user's, in turn."""
        if name not in STEPS:
            raise AttributeError(name)
        methods = [getattr(p, name) for p in self.parts if hasattr(p, name)]
        if not methods:
            raise AttributeError(name)

        def step(it):
            for method in methods:
                method(it)
        return step

    # what the lossless checks read (hmtl_mpi.job.checks): the union over the users
    def computed_ivs(self) -> dict:
        return {k: v for p in self.parts for k, v in p.computed_ivs().items()}

    def held_ivs(self):
        return None

    def final_models(self):
        return None

    def models_in_use(self) -> dict:
        return {k: v for p in self.parts for k, v in p.models_in_use().items()}

    def results(self) -> dict:
        return {}

    def start(self) -> None:
        for p in self.parts:
            p.start()

    # checkpoints: the rank's learner once, every user's own state under user/k/
    def state(self) -> dict:
        out = {f"learner/{key}": value for key, value in self.job.learner.state().items()}
        for k, p in zip(self.users, self.parts):
            out.update({f"user/{k}/{key}": value for key, value in p.own_state().items()})
        return out

    def load_state(self, state: dict) -> None:
        self.job.learner.load_state({key[len("learner/"):]: value
                                     for key, value in state.items()
                                     if key.startswith("learner/")})
        for k, p in zip(self.users, self.parts):
            prefix = f"user/{k}/"
            p.load_own_state({key[len(prefix):]: value for key, value in state.items()
                              if key.startswith(prefix)})


def rank_link_loads(loads: dict, K: int, per_rank: int) -> dict:
    """A scheme's :meth:`~hmtl_mpi.schemes.base.Scheme.link_loads` for the time prediction
    when a user rank's one link carries its users (:mod:`hmtl_mpi.job.predict`): the
    busiest user's share times the most users a rank runs, in as many rounds (the rank
    sends and receives for one user after the other). An upper bound: the busiest
    users need not share a rank."""
    n = min(per_rank, K)
    if n <= 1:
        return loads
    out = dict(loads)
    out["user_up_max"] = loads["user_up_max"] * n
    out["user_down_max"] = loads["user_down_max"] * n
    out["user_rounds"] = n
    return out


def rank_part(scheme, job, endpoint, downlink: str, per_rank: int):
    """This rank's part: its role's (:meth:`hmtl_mpi.schemes.base.Scheme.part`), or on a
    user rank with ``per_rank`` > 1, its users' (:class:`HostedUsers`)."""
    role, index = role_of(endpoint.rank, job.G.shape[0])
    if role == USER and per_rank > 1:
        return HostedUsers(scheme, job, endpoint, downlink, per_rank)
    return scheme.part(role, job, make_net(endpoint, job.G, downlink, per_rank), index)
