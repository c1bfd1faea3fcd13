"""The scheme interface: what every role computes and sends, phase by phase.

A *scheme* is how the IVs travel relay -> server -> relay. It is planned once per
job on rank 0 (:meth:`Scheme.plan`), reaches the other ranks as one byte buffer
(:meth:`Scheme.to_buffer` / :meth:`Scheme.from_buffer`), and on every rank hands
the role a *part* (:meth:`Scheme.part`): an object with one method per step of
:attr:`Scheme.steps`, called in that order by the job, with a barrier on both
sides of each step. A part computes on NumPy arrays and moves buffers only
through ``net``, its role's links (:class:`hmtl_mpi.wire.interfaces.UserLinks`,
``RelayLinks``, ``ServerLinks``); it never touches an endpoint, a communicator or MPI.
A part simply has no method for a step in which it does nothing.

The parts here hold what all schemes share: a user's local update (eq. 2), its IV
sent up and its model received; a relay receiving its users' IVs and handing each
home user its model; the layout's difference (flat: a relay computes the IVs of
its own tasks and there are no users). :class:`CodedExchange` is the relay<->server
leg of both coded schemes (the paper's rounds and the joint block): relays encode
(eq. 26), the server combines and broadcasts (eq. 31), relays decode and run the
global update (eq. 3); only the plan, i.e. the list of blocks, differs.
"""

from __future__ import annotations

from fractions import Fraction
from functools import cached_property

import numpy as np

from ..codes import coding, structured
from ..planning import bandwidth
from ..vocabulary import home_relays, uplink_tag

class Job:
    """What every part knows: topology, layout, learner and the model schedule."""

    def __init__(self, G: np.ndarray, learner, flat: bool = False):
        self.G = G
        self.H, self.K = G.shape
        self.learner = learner
        self.flat = flat                  # seed 001's system: relays compute their own IVs
        self.dim = learner.dim
        self.model_len = learner.model_len

    @cached_property
    def home(self) -> np.ndarray:
        """Every user's home relay (computed where used: a user needs only its own,
        :func:`~hmtl_mpi.vocabulary.home_relay`)."""
        return home_relays(self.G)

    def model_values_sent(self, it) -> int:
        """How much of a model message goes down in iteration ``it``: all of it, or
        all but the learner's extras when they did not change (MOCHA: Sigma_kk and
        rho, refreshed every ``inner`` iterations). Both ends know the schedule."""
        changed = self.learner.extras_changed(it)
        return self.model_len if changed else self.model_len - self.learner.extra_len


# --- parts: the shared behaviour -----------------------------------------------------

class Part:
    """One rank's side of a scheme. ``net`` moves its buffers: the declared links of its
    role (:mod:`hmtl_mpi.wire.interfaces`), nothing else.

    A scheme with steps gives its parts one method per step. A barrier-free scheme
    gives them ``iterate(it)`` instead; its server part keeps ``seconds`` (one dict
    of phase times per iteration, from its own clock) and ``progress(it)`` (the
    progress line's text), and its user parts ``compute_s`` (seconds of local work
    per iteration).
    """

    role = ""
    compute_s: tuple = ()        # barrier-free user parts: local work per iteration

    def __init__(self, scheme: "Scheme", job: Job, net, index: int = 0):
        self.scheme, self.job, self.net, self.index = scheme, job, net, index

    # what the lossless checks read (see hmtl_mpi.job.checks)
    def computed_ivs(self) -> dict:
        """IVs this rank computed in the last iteration, user -> IV."""
        return {}

    def held_ivs(self):
        """All K IVs as this rank holds them after the exchange (K x dim), or None."""
        return None

    def final_models(self):
        """All K models if this rank ran the global update (K x model_len), or None."""
        return None

    def models_in_use(self) -> dict:
        """The models this rank uses for its local updates, user -> model."""
        return {}

    def results(self) -> dict:
        """Extra keys of the run's report that this rank measured (the server's)."""
        return {}

    def start(self) -> None:
        """Barrier-free schemes: called once every rank is ready, before iteration 0."""

    # explicit state (checkpoints): what this side carries from one iteration to the next
    def state(self) -> dict:
        """This rank's learner state and the part's own (:meth:`own_state`), as arrays."""
        out = {f"learner/{key}": value for key, value in self.job.learner.state().items()}
        out.update(self.own_state())
        return out

    def load_state(self, state: dict) -> None:
        """Put back what :meth:`state` returned (a job resumed from a checkpoint)."""
        self.job.learner.load_state({key[len("learner/"):]: value for key, value in state.items()
                                     if key.startswith("learner/")})
        self.load_own_state({key: value for key, value in state.items()
                             if not key.startswith("learner/")})

    def own_state(self) -> dict:
        """The part's own state between iterations (beyond its learner's): none here."""
        return {}

    def load_own_state(self, state: dict) -> None:
        """Put back what :meth:`own_state` returned."""


class UserPart(Part):
    """User k (hierarchical layout): local update (eq. 2), IV up, model down."""

    role = "user"

    def __init__(self, scheme, job, net, k):
        super().__init__(scheme, job, net, k)
        self.k = k
        self.model = job.learner.initial_model(k)
        self.iv = None

    def targets(self) -> np.ndarray:
        """The relays this user's IV goes to: every relay it is linked to (the paper)."""
        return np.flatnonzero(self.job.G[:, self.k])

    def local_update(self, it):
        self.iv = np.ascontiguousarray(self.job.learner.local_update(self.k, it, self.model),
                                       dtype=np.float64)

    def user_to_relay(self, it):
        self.net.send_iv(self.targets(), self.iv)

    def relay_to_user(self, it):
        n = self.job.model_values_sent(it)
        self.model = self.model.copy()
        self.model[:n] = self.net.recv_model(n)

    def computed_ivs(self):
        return {self.k: self.iv}

    def models_in_use(self):
        return {self.k: self.model}

    def own_state(self):
        return {"model": self.model}

    def load_own_state(self, state):
        self.model = np.array(state["model"], dtype=np.float64)


class RelayPart(Part):
    """Relay i: its users' IVs in (or, flat, its own tasks' IVs computed), models out."""

    role = "relay"

    def __init__(self, scheme, job, net, i):
        super().__init__(scheme, job, net, i)
        self.i = i
        self.users = np.flatnonzero(job.G[i])                    # N_i
        self.home_users = np.flatnonzero(job.home == i)
        self.own = {}                                            # user -> IV known here
        if job.flat:                                             # this relay's tasks' models
            self.models_here = {int(k): job.learner.initial_model(k) for k in self.users}

    def sources(self) -> np.ndarray:
        """The users whose IVs this relay receives: all of N_i (the paper)."""
        return self.users

    def local_update(self, it):
        """Flat layout only: the relay is the worker of every task in its row of G."""
        if self.job.flat:
            learner = self.job.learner
            self.own = {int(k): np.ascontiguousarray(
                learner.local_update(k, it, self.models_here[int(k)]), dtype=np.float64)
                for k in self.sources()}

    def user_to_relay(self, it):
        self.own = self.net.recv_ivs(self.sources(), self.job.dim)

    def models_out(self, it) -> dict:
        """The model messages for this relay's home users (after the global update)."""
        raise NotImplementedError

    def relay_to_user(self, it):
        self.net.send_models(self.models_out(it))

    def keep_models(self, models: np.ndarray) -> None:
        """Flat layout: keep the new models of this relay's tasks for the next local update."""
        if self.job.flat:
            self.models_here = {k: models[k].copy() for k in self.models_here}

    def computed_ivs(self):
        return dict(self.own) if self.job.flat else {}

    def models_in_use(self):
        return dict(self.models_here) if self.job.flat else {}

    def own_state(self):
        if not self.job.flat:
            return {}
        return {f"model/{k}": model for k, model in self.models_here.items()}

    def load_own_state(self, state):
        for key, model in state.items():
            self.models_here[int(key.partition("/")[2])] = np.array(model, dtype=np.float64)


class ServerPart(Part):
    """The server (rank 0)."""

    role = "server"


# --- the interface ---------------------------------------------------------------------

class Scheme:
    """One way for the IVs to travel between relays and server (see the module doc).

    Subclasses set :attr:`name`, :attr:`summary`, :attr:`steps` and the part classes,
    and implement the plan-time methods. The registry is :mod:`hmtl_mpi.schemes`.
    """

    name = ""
    summary = ""
    workload = "mtl"             # what the users learn: "mtl" (MOCHA, K models) or "gd"
    barrier_free = False         # True: no barriers; each part's iterate(it) is the iteration
    steps: tuple = ()            # (report key, step) in protocol order
    user_part = UserPart
    relay_part = RelayPart
    server_part = ServerPart
    broadcasts = False           # whether the downlink is a broadcast (else point to point)
    cache_plan = False           # whether the job caches the plan per topology (hmtl_mpi.job.plancache)

    def __init__(self, G: np.ndarray):
        self.G = np.asarray(G, dtype=np.uint8)
        self.H, self.K = self.G.shape

    # --- plan time (rank 0), and the buffer every rank gets --------------------------
    @classmethod
    def plan(cls, G: np.ndarray, seed: int = 0, max_denominator: int | None = None,
             **options) -> "Scheme":
        """Plan (and build the code for) topology G; raise ValueError with a clear message.
        ``max_denominator`` bounds the exact loads' denominators where a planner has them;
        other ``options`` (the gradient schemes' stragglers, partitions, straggle) are
        ignored by the schemes they do not concern."""
        return cls(G)

    def after_loss(self, G: np.ndarray, relays: tuple, users: tuple, **plan_args) -> "Scheme":
        """This scheme for the topology G left after a loss (``--on-failure continue``):
        ``relays``/``users`` the old indices kept, in order. By default planned anew on G;
        raise ValueError when the scheme cannot go on (the message says why)."""
        return type(self).plan(G, **plan_args)

    def to_buffer(self) -> np.ndarray:
        return np.zeros(0, dtype=np.uint8)

    @classmethod
    def from_buffer(cls, G: np.ndarray, buf: np.ndarray) -> "Scheme":
        return cls(G)

    @property
    def planned_loads(self) -> tuple:
        """(uplink, downlink) in IVs per iteration (Fractions)."""
        raise NotImplementedError

    def plan_dict(self) -> dict:
        """The plan as JSON for ``python -m hmtl_mpi.plan --json``."""
        up, down = self.planned_loads
        return {"scheme": self.name, "K": self.K, "H": self.H, "ranks": 1 + self.H + self.K,
                "uplink_load": float(up), "downlink_load": float(down),
                "uplink_load_exact": str(up), "downlink_load_exact": str(down)}

    def format_plan(self) -> str:
        """The plan as a readable table for ``python -m hmtl_mpi.plan``."""
        up, down = self.planned_loads
        return (f"{self.name}: H = {self.H} relays, K = {self.K} users; loads: uplink {up}, "
                f"downlink {down} IVs per iteration")

    def verify_code(self, seed: int = 0) -> dict:
        """Barrier-free schemes: check the code itself (``plan --verify``); a scheme with
        steps is verified by running its exchange instead (:mod:`hmtl_mpi.job.verify`)."""
        raise NotImplementedError

    def report_fields(self) -> dict:
        """Extra keys for the run's report (e.g. the code's seed)."""
        return {}

    has_load_plan = False        # whether --plan time can choose another plan (coded, joint)

    def time_fields(self, iv_bytes: float | None = None) -> dict:
        """The report's ``plan`` and ``plans`` for a scheme that has a load plan."""
        return {}

    # --- for the time prediction (hmtl_mpi.job.predict) ----------------------------------
    def link_loads(self) -> dict:
        """IVs per iteration on each link class and the rounds of messages they take: the
        busiest user sends its IV to every relay it is linked to and gets one model;
        relays send the planned uplink in one round, the server its downlink in one."""
        up, down = self.planned_loads
        home = np.bincount(home_relays(self.G), minlength=self.H).astype(float).tolist()
        return {"user_up_max": int(self.G.sum(axis=0).max()), "user_down_max": 1,
                "relay_to_server": float(up), "server_to_relay": float(down),
                "uplink_rounds": 1, "downlink_rounds": 1,
                "per_relay_up": home, "per_relay_down": home}

    def coding_work(self, dim: int) -> dict:
        """Bytes the coding kernels read per iteration: ``encode`` at the busiest relay,
        ``combine`` at the server, ``decode`` at the busiest relay (none uncoded)."""
        return {}

    def global_updates(self) -> int:
        """How many ranks run the global update (eq. 3) every iteration: the server alone."""
        return 1

    def coding_ranks(self) -> int:
        """How many ranks run the coding kernels at once (the busiest one's work is
        :meth:`coding_work`'s): none here."""
        return 0

    def downlink_method(self, requested: str, flat: bool) -> str:
        return requested if self.broadcasts else "point-to-point"

    # --- per rank ----------------------------------------------------------------------
    def part(self, role: str, job: Job, net, index: int = 0) -> Part:
        cls = {"server": self.server_part, "relay": self.relay_part, "user": self.user_part}[role]
        return cls(self, job, net, index)


# --- the coded exchange shared by both coded schemes -----------------------------------

class CodedRelay(RelayPart):
    """A relay of a coded exchange: encode (eq. 26), decode the broadcast, global update."""

    def encode(self, it):
        self.uplink = coding.relay_encode(self.scheme.code, self.i, self.own)

    def relay_to_server(self, it):
        self.net.send_to_server([(uplink_tag(b), msg) for b, msg in enumerate(self.uplink)
                                 if msg is not None])

    def server_to_relay(self, it):
        code, dim = self.scheme.code, self.job.dim
        first = self.net.recv_broadcast(coding.downlink_size(code, dim))
        extra = coding.downlink_escape_bytes(code, first)
        escapes = self.net.recv_broadcast(extra) if extra else first[:0]
        self.broadcast = coding.downlink_unwire(code, first, escapes, dim)

    def decode(self, it):
        ivs = coding.relay_decode(self.scheme.code, self.i, self.own, self.broadcast, self.job.dim)
        self.ivs = np.stack([ivs[k] for k in range(self.job.K)])

    def global_update(self, it):
        self.models = self.job.learner.global_update(it, self.ivs)
        self.keep_models(self.models)

    def models_out(self, it):
        n = self.job.model_values_sent(it)
        return {int(k): np.ascontiguousarray(self.models[k, :n]) for k in self.home_users}

    def held_ivs(self):
        return self.ivs

    def final_models(self):
        return self.models


class CodedServer(ServerPart):
    """The server of a coded exchange: combine what the relays send, broadcast (eq. 31)."""

    def relay_to_server(self, it):
        code, dim = self.scheme.code, self.job.dim
        expected = [(i, uplink_tag(b)) for b in range(len(code.blocks)) for i in range(code.H)
                    if coding.uplink_symbols(code, b, i, dim) > 0]
        self.uplinks = self.net.recv_coded_from_relays(expected)

    def combine(self, it):
        code = self.scheme.code
        self.downlink = [
            coding.server_combine(code, b, {i: self.uplinks.get((i, uplink_tag(b)))
                                            for i in range(code.H)}, self.job.dim)
            for b in range(len(code.blocks))]

    def server_to_relay(self, it):
        first, escapes = coding.downlink_wire(self.scheme.code, self.downlink, self.job.dim)
        self.net.broadcast(first)
        if escapes.size:                     # rare: a coded symbol equal to 65536
            self.net.broadcast(escapes)


class CodedExchange(Scheme):
    """Relays encode, the server combines and broadcasts, every relay decodes every IV and
    runs the global update; a subclass supplies the blocks (:meth:`layouts`) and loads."""

    steps = (
        ("local_update", "local_update"),
        ("user_to_relay", "user_to_relay"),
        ("encode", "encode"),                    # relays encode ...
        ("relay_to_server", "relay_to_server"),
        ("encode", "combine"),                   # ... and the server combines: coding work
        ("server_to_relay", "server_to_relay"),
        ("decode", "decode"),
        ("global_update", "global_update"),
        ("relay_to_user", "relay_to_user"),
    )
    relay_part = CodedRelay
    server_part = CodedServer
    broadcasts = True
    cache_plan = True            # LPs (cvxpy) and a code: worth keeping per topology

    def __init__(self, G, code: coding.Code, planned=None):
        super().__init__(G)
        self.code = code
        self.planned = planned       # the planner's own object (rank 0 only), for the plan CLI

    @classmethod
    def plan(cls, G, seed=0, max_denominator=None, construction="auto", plan="load",
             relay_rates=None, server_rate=None, **options):
        """The plan and its code: structured (:mod:`hmtl_mpi.codes.structured`) where it
        covers the plan, else random and verified (``construction``: ``"auto"``,
        ``"structured"`` or ``"random"``). Given per-relay ``relay_rates`` (bytes/s; and
        the server's ``server_rate``), the time-optimal plan is made beside the load plan
        (:mod:`hmtl_mpi.planning.bandwidth`) and ``plan`` ("load" or "time") says which
        one the code follows."""
        timed = None
        if relay_rates is not None:
            timed = bandwidth.time_plan(cls.name, G, relay_rates, server_rate, max_denominator)
            planned = timed.planned if plan == "time" else timed.load_plan
        elif plan == "time":
            raise ValueError("--plan time needs every relay's rate to the server")
        else:
            planned = cls.make_plan(G, max_denominator)
        code = structured.build_code(G, cls.layouts(planned), seed=seed, construction=construction)
        scheme = cls(G, code, planned)
        scheme.timed, scheme.plan_kind = timed, plan
        return scheme

    timed = None                 # the TimePlan (both plans side by side) when rates were given
    plan_kind = "load"
    has_load_plan = True

    def time_fields(self, iv_bytes: float | None = None) -> dict:
        """``plan`` (load or time) and, when rates were given, ``plans``: both plans' per-relay
        loads and predicted uplink times (for ``plan --json`` and the report)."""
        out = {"plan": self.plan_kind}
        if self.timed is not None:
            out["plans"] = self.timed.to_dict(iv_bytes)
        return out

    @classmethod
    def make_plan(cls, G: np.ndarray, max_denominator: int | None = None):
        """The planner's result for G (raises ValueError with a clear message)."""
        raise NotImplementedError

    @classmethod
    def layouts(cls, planned) -> list:
        """The blocks' layouts (:class:`hmtl_mpi.codes.coding.BlockLayout`) of a plan."""
        raise NotImplementedError

    @property
    def planned_loads(self):
        """From the code itself, on every rank: relay i sends ``messages_i width_i`` units of
        ``1/F`` IV per block, the server broadcasts R units (Theorem 1 / T1, T3)."""
        up = sum((Fraction(int(b.messages[i]) * int(b.width[i]), b.F)
                  for b in self.code.blocks for i in range(self.H)), Fraction(0))
        down = sum((Fraction(b.R, b.F) for b in self.code.blocks), Fraction(0))
        return up, down

    def to_buffer(self):
        return self.code.to_buffer()

    @classmethod
    def from_buffer(cls, G, buf):
        return cls(G, structured.load_code(buf))

    def report_fields(self):
        """How the code was built: ``code_construction`` (structured or random), the seed
        and draws of a random code (a structured one uses neither: attempts 1)."""
        return {"code_construction": self.code.construction, "code_seed": self.code.seed,
                "code_attempts": self.code.attempts}

    def code_fields(self) -> dict:
        """The code's construction for ``plan --json``, and why a structured build fell
        back to the random code (when it did)."""
        out = {"code_construction": self.code.construction}
        if self.code.fallback:
            out["code_fallback"] = self.code.fallback
        return out

    def format_construction(self) -> str:
        """One line on how the code was built (for the readable plan)."""
        code = self.code
        if code.construction == "structured":
            return "code: structured (decodable by construction; docs/codes.md)"
        why = f"; the structured one does not cover this plan: {code.fallback}" \
            if code.fallback else ""
        return f"code: random, seed {code.seed} after {code.attempts} draw(s){why}"

    def format_code(self) -> str:
        """How the code was built, and with rates both plans side by side."""
        line = self.format_construction()
        return line if self.timed is None else line + "\n\n" + bandwidth.format_time_plan(self.timed)

    def link_loads(self):
        """Each block is its own uplink message; the broadcast takes two rounds, the
        server's scatter and the relays' allgather (:mod:`hmtl_mpi.wire.roles`)."""
        out = super().link_loads()
        out["uplink_rounds"] = max(1, sum(1 for b in self.code.blocks if b.messages.any()))
        out["downlink_rounds"] = 2
        out["per_relay_up"] = [float(sum((Fraction(int(b.messages[i]) * int(b.width[i]), b.F)
                                          for b in self.code.blocks), Fraction(0)))
                               for i in range(self.H)]
        out["per_relay_down"] = [float(out["server_to_relay"]) / self.H] * self.H   # scatter
        return out

    def global_updates(self):
        """Every relay decodes every IV and runs the global update itself."""
        return self.H

    def coding_ranks(self):
        """Every relay encodes and decodes (the server's combining is the smaller part)."""
        return self.H

    def coding_work(self, dim):
        code, two = self.code, 2                               # bytes per symbol
        encode, decode, combine = [0] * code.H, [0] * code.H, 0
        for b, blk in enumerate(code.blocks):
            u = coding.unit_symbols(dim, blk.F)
            for i in range(code.H):
                encode[i] += two * len(blk.rows[i]) * int(blk.width[i]) * u
                combine += two * int(blk.messages[i]) * int(blk.width[i]) * u
                decode[i] += two * blk.decode_symbols(code.G, i, dim)
        return {"encode": max(encode), "combine": combine, "decode": max(decode)}
