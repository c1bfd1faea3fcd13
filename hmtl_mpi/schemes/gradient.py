"""What the gradient schemes share: one shared model, coded partial gradients, stragglers.

The gradient workload (``--workload gd``; docs/gradient-coding.md): the server is the master, the
relays the edges, the users the workers, on a tree (every user on one relay).
The training set is cut into P partitions; worker (i, j) holds the partitions
S_ij and, every iteration, sends its edge ONE vector
``z_ij = sum_{k in S_ij} W_ij[k] g_k`` (g_k: partition k's gradient at the current
model, in fixed point, :mod:`hmtl_mpi.learning.gd`). Edge i waits for its first
``m_i - s_w`` workers and sends the master one vector ``y_i``; the master waits
for its first ``n - s_e`` edges, decodes ``sum_k g_k`` exactly, updates the model
and sends it down the tree. The schemes differ only in the code
(:mod:`hmtl_mpi.codes.gradcode`): which partitions each worker holds, its coefficients,
and how many arrivals each layer waits for.

Exactness: every scheme feeds the update the same integers. Coding runs over
GF(2^31 - 1) on fixed-point gradients (:mod:`hmtl_mpi.codes.gradcode`), so the decoded
sum equals the uncoded one bit for bit, and every scheme ends with the same model.

No barriers: a straggler must not hold anybody up, so an iteration is one call,
:meth:`iterate`, on every rank, and each rank moves on as soon as it has what it
needs. Messages carry their iteration in their tag; those that arrive late stay
posted and are completed (drained) after the last iteration, never mixed into
another one. A worker or edge that is still late when the model ending its
iteration arrives gives the iteration up: it sends an empty message in place of
its vector (every posted receive still completes; empty ones never count) and
joins the next iteration, instead of carrying its delay into it. The iteration
time is the server's clock from one model sent to the next.
"""

from __future__ import annotations

import hashlib
import json
from fractions import Fraction

import numpy as np

from ..codes import gradcode
from ..learning.straggle import Straggle, parse
from ..vocabulary import down_tag, up_tag
from .base import Part, Scheme

GAVE_UP = np.zeros(0, dtype=np.int64)               # the empty message of a late sender
ABSENT = -1             # a lost worker's or edge's place in a layout (--on-failure continue)


def tree_users(G: np.ndarray) -> list:
    """Per relay, its users in increasing order; raises ValueError unless G is a tree."""
    degree = G.sum(axis=0)
    bad = np.flatnonzero(degree != 1)
    if len(bad):
        k = int(bad[0])
        raise ValueError(f"the gradient schemes need a tree (every user on exactly one relay); "
                         f"user {k + 1} is linked to {int(degree[k])} relays "
                         f"(python -m hmtl_mpi.topology tree M1,M2,... makes one)")
    return [np.flatnonzero(G[i]).tolist() for i in range(G.shape[0])]


class GradWorker(Part):
    """A user: its partitions' gradients, combined with its coefficients, up; the model down."""

    role = "user"

    def __init__(self, scheme, job, net, k):
        super().__init__(scheme, job, net, k)
        self.k = k
        self.model = job.learner.initial_model()
        self.position = scheme.position_of_user(k)       # (code edge, worker) or None
        self.compute_s = []

    def iterate(self, it):
        scheme, learner = self.scheme, self.job.learner
        t0 = self.net.clock()
        if self.position is not None:
            e, j = self.position
            parts = scheme.code.worker_parts[e][j]
            z = GAVE_UP
            if not self.net.model_arrived(down_tag(it)):   # else it ended without this worker
                grads = np.stack([gradcode.to_field(learner.partition_gradient(int(p), self.model))
                                  for p in parts])
                z = gradcode.field_combine(scheme.code.worker_coeffs[e][j], grads)
                delay = scheme.straggle.worker_delay(self.net.rank, it, len(parts), scheme.seed)
                if self.net.delay_unless_model(delay, down_tag(it)):
                    z = GAVE_UP
            if scheme.direct:
                self.net.isend_to_server(z, up_tag(it))
            else:
                self.net.isend_to_relay(z, up_tag(it))
        self.compute_s.append(self.net.clock() - t0)
        self.model = self.net.recv_model(self.job.dim, down_tag(it))

    def models_in_use(self):
        return {self.k: self.model}

    def own_state(self):
        return {"model": self.model, "compute_s": np.array(self.compute_s)}

    def load_own_state(self, state):
        self.model = np.array(state["model"], dtype=np.float64)
        self.compute_s = [float(x) for x in state["compute_s"]]


class GradEdge(Part):
    """A relay: the first ``m_i - s_w`` of its workers decoded into one vector up; the model
    down to every one of its users."""

    role = "relay"

    def __init__(self, scheme, job, net, i):
        super().__init__(scheme, job, net, i)
        self.i = i
        self.users = np.flatnonzero(job.G[i]).tolist()
        self.edge = scheme.edge_of_relay(i)               # code edge, or None
        self.model = job.learner.initial_model()

    def iterate(self, it):
        scheme = self.scheme
        if self.edge is not None and not scheme.direct:
            code, e = scheme.code, self.edge
            workers = scheme.layout_users[e]
            here = [j for j, k in enumerate(workers) if k != ABSENT]   # lost ones: stragglers
            posted = self.net.post_from_users([workers[j] for j in here], (self.job.dim,),
                                              np.int64, up_tag(it))
            got = self.net.first(posted, len(workers) - code.s_w,
                                 f"coded gradients of iteration {it} from users "
                                 f"{', '.join(str(workers[j] + 1) for j in here)}")
            y = gradcode.field_combine(code.edge_decoder(e, [here[j] for j, _ in got]),
                                       np.stack([buf for _, buf in got]))
            delay = scheme.straggle.relay_delay(self.net.rank)
            if self.net.delay_unless_model(delay, down_tag(it)):
                y = GAVE_UP                  # the server finished the iteration without us
            self.net.isend_to_server(y, up_tag(it))
        self.model = self.net.recv_from_server((self.job.dim,), down_tag(it))
        self.net.isend_to_users(self.model, self.users, down_tag(it))

    def own_state(self):
        return {"model": self.model}

    def load_own_state(self, state):
        self.model = np.array(state["model"], dtype=np.float64)


class GradMaster(Part):
    """The server: the first ``n - s_e`` arrivals decoded into the exact gradient sum, the
    update, the model sent down; timed from one model sent to the next."""

    role = "server"

    def __init__(self, scheme, job, net, index=0):
        super().__init__(scheme, job, net, index)
        self.model = job.learner.initial_model()
        self.seconds = []
        self.accuracy = []
        self.digest = bytes(32)          # a chain: sha256(previous || this iteration's sum)
        self.last = None

    def start(self):
        self.last = self.net.clock()

    def iterate(self, it):
        scheme, code, job = self.scheme, self.scheme.code, self.job
        t0 = self.net.clock()
        here = scheme.edges_here()                     # lost edges: stragglers for good
        if scheme.direct:
            posted = self.net.post_from_users([scheme.layout_users[e][0] for e in here],
                                              (job.dim,), np.int64, up_tag(it))
        else:
            posted = self.net.post_from_relays([scheme.layout_relays[e] for e in here],
                                               (job.dim,), np.int64, up_tag(it))
        n = len(scheme.layout_relays)
        got = self.net.first(posted, n - code.s_e, f"coded gradients of iteration {it}")
        t1 = self.net.clock()
        total = gradcode.from_field(gradcode.field_combine(
            code.master_decoder([here[e] for e, _ in got]), np.stack([buf for _, buf in got])))
        self.digest = hashlib.sha256(self.digest + total.tobytes()).digest()
        t2 = self.net.clock()
        self.model = job.learner.update(it, total)
        t3 = self.net.clock()
        self.net.isend_to_relays(self.model, range(job.H), down_tag(it))
        t4 = self.net.clock()
        self.seconds.append({"relay_to_server": t1 - t0, "decode": t2 - t1,
                             "global_update": t3 - t2, "server_to_relay": t4 - t3,
                             "total": t4 - (self.last if self.last is not None else t0)})
        self.last = t4
        self.accuracy.append(float(job.learner.test_accuracy(self.model)))

    def progress(self, it) -> str:
        """The progress line's text for iteration ``it`` (printed by the job on rank 0)."""
        rec, scheme = self.seconds[it], self.scheme
        return (f"total {rec['total']:.4f} s (waited {rec['relay_to_server']:.4f} s for the "
                f"first {len(scheme.layout_relays) - scheme.code.s_e} of {scheme.senders}), "
                f"test accuracy "
                f"{self.accuracy[it]:.4f}")

    def final_models(self):
        return np.broadcast_to(self.model, (self.job.K, self.model.size))

    def results(self) -> dict:
        return {"test_accuracy": self.accuracy, "gradient_digest": self.digest.hex()}

    def own_state(self):
        seconds = np.frombuffer(json.dumps(self.seconds).encode(), dtype=np.uint8)
        return {"model": self.model, "seconds": seconds, "accuracy": np.array(self.accuracy),
                "digest": np.frombuffer(self.digest, dtype=np.uint8)}

    def load_own_state(self, state):
        self.model = np.array(state["model"], dtype=np.float64)
        self.seconds = json.loads(bytes(state["seconds"]).decode())
        self.accuracy = [float(x) for x in state["accuracy"]]
        self.digest = bytes(state["digest"])


class GradientScheme(Scheme):
    """A gradient scheme: a :class:`hmtl_mpi.codes.gradcode.TreeCode` on (a selection of) the tree.

    ``layout_relays[e]`` is the relay of code edge e and ``layout_users[e]`` its workers
    (users, in the code's worker order). With ``direct`` (flat gradient coding) every
    code edge is one user that sends straight to the server.
    """

    workload = "gd"
    barrier_free = True
    direct = False
    steps = ()
    user_part = GradWorker
    relay_part = GradEdge
    server_part = GradMaster

    def __init__(self, G, code, relays, users, straggle: Straggle, seed: int = 0):
        super().__init__(G)
        self.code = code
        self.layout_relays = [int(i) for i in relays]
        self.layout_users = [[int(k) for k in ks] for ks in users]
        self.straggle = straggle
        self.seed = seed

    # --- plan time ---------------------------------------------------------------------
    @classmethod
    def plan(cls, G, seed=0, stragglers=(1, 1), partitions=None, straggle=None, **_):
        straggle = straggle or Straggle()
        per_relay = tree_users(np.asarray(G))
        P = partitions if partitions is not None else G.shape[1]
        relays, users, s_e, s_w = cls.select(G, per_relay, P, tuple(stragglers), straggle, seed)
        code = cls.code_for([len(u) for u in users], P, s_e, s_w)
        return cls(G, code, relays, users, straggle, seed)

    @classmethod
    def select(cls, G, per_relay, P, stragglers, straggle, seed) -> tuple:
        """Which relays and users take part, and (s_e, s_w): by default all of them."""
        s_e, s_w = stragglers
        return list(range(len(per_relay))), per_relay, s_e, s_w

    @classmethod
    def code_for(cls, m, P, s_e, s_w):
        raise NotImplementedError

    def to_buffer(self):
        head = [self.code.P, self.code.s_e, self.code.s_w, self.seed, len(self.layout_relays)]
        body = []
        for i, ks in zip(self.layout_relays, self.layout_users):
            body += [i, len(ks), *ks]
        text = np.frombuffer(self.straggle.text.encode(), dtype=np.uint8).astype(np.int64)
        return np.array(head + body + [len(text)] + text.tolist(), dtype=np.int64).view(np.uint8)

    @classmethod
    def from_buffer(cls, G, buf):
        v = np.asarray(buf, dtype=np.uint8).view(np.int64).tolist()
        P, s_e, s_w, seed, n = v[:5]
        pos, relays, users = 5, [], []
        for _ in range(n):
            relays.append(v[pos])
            users.append(v[pos + 2: pos + 2 + v[pos + 1]])
            pos += 2 + v[pos + 1]
        text = bytes(v[pos + 1: pos + 1 + v[pos]]).decode()
        code = cls.code_for([len(u) for u in users], P, s_e, s_w)
        return cls(G, code, relays, users, parse(text), seed)

    # --- after a loss (--on-failure continue) ------------------------------------------------
    def after_loss(self, G, relays, users, **plan_args):
        """The same code on what is left: a lost worker keeps its place in its edge's
        layout as :data:`ABSENT`, a straggler for good, and the edge decodes from the
        others while it has at most s_w such; an edge that lost more, or whose relay was
        lost, is a straggler for good at the server, which decodes while at most s_e edges
        are. The partitions, coefficients and gradient sum stay those of the first plan,
        so the models stay those of a run that lost nothing. Beyond the tolerance: a
        ValueError naming it and what was lost."""
        relay_now = {old: n for n, old in enumerate(relays)}
        user_now = {old: n for n, old in enumerate(users)}
        layout_users = [[user_now.get(k, ABSENT) if k != ABSENT else ABSENT for k in ks]
                        for ks in self.layout_users]
        layout_relays = [relay_now.get(i, ABSENT) if i != ABSENT else ABSENT
                         for i in self.layout_relays]
        s_e, s_w = self.code.s_e, self.code.s_w
        for e, ks in enumerate(layout_users):
            if self.direct and ks[0] == ABSENT or ks.count(ABSENT) > s_w:
                layout_relays[e] = ABSENT
        lost = [e for e, i in enumerate(layout_relays) if i == ABSENT]
        if len(lost) > s_e:
            raise ValueError(
                f"{self.name} tolerates {s_e} lost {'workers' if self.direct else 'edges'}"
                + ("" if self.direct else f" and {s_w} lost workers per edge")
                + f"; {len(lost)} of its {len(layout_relays)} are lost (code "
                f"{'workers' if self.direct else 'edges'} {', '.join(str(e + 1) for e in lost)})"
                + (": uncoded gd holds every partition once, so a lost worker's partitions "
                   "are gone and the gradient would differ" if s_e == 0 and s_w == 0 else ""))
        return type(self)(np.asarray(G), self.code, layout_relays, layout_users,
                          self.straggle, self.seed)

    def edges_here(self) -> list:
        """The code edges (code workers, ``direct``) not lost."""
        return [e for e, i in enumerate(self.layout_relays) if i != ABSENT]

    # --- who is who ----------------------------------------------------------------------
    def position_of_user(self, k):
        for e, ks in enumerate(self.layout_users):
            if k in ks:
                return (e, ks.index(k)) if self.layout_relays[e] != ABSENT else None
        return None

    def edge_of_relay(self, i):
        return self.layout_relays.index(i) if i in self.layout_relays else None

    # --- what the plan promises --------------------------------------------------------
    @property
    def senders(self) -> int:
        """Messages that reach the server per iteration (the late ones too)."""
        return len(self.edges_here())

    @property
    def planned_loads(self):
        return Fraction(self.senders), Fraction(self.H)      # gradients up, models down

    def plan_dict(self):
        out = dict(self.code.to_dict(), scheme=self.name, K=self.K, H=self.H,
                   ranks=1 + self.H + self.K, master_messages_used=len(self.layout_relays) - self.code.s_e,
                   master_messages_sent=self.senders,
                   relays=[i + 1 for i in self.layout_relays],
                   users=[[k + 1 for k in ks] for ks in self.layout_users])
        return out

    def format_plan(self):
        d = self.plan_dict()
        lines = [f"{self.name}: {self.summary}",
                 f"  {len(self.layout_relays)} edges (relays {d['relays']}), "
                 f"{sum(map(len, self.layout_users))} workers, P = {self.code.P} partitions, "
                 f"s_e = {self.code.s_e}, s_w = {self.code.s_w}",
                 f"  load per worker D = {self.code.D} partitions (lower bound "
                 f"{d['load_lower_bound']}), partitions per edge {d['partitions_per_edge']}",
                 f"  the server uses the first {d['master_messages_used']} of "
                 f"{d['master_messages_sent']} messages per iteration"]
        return "\n".join(lines)

    def verify_code(self, seed=0):
        return gradcode.verify(self.code, seed=seed)

    def report_fields(self):
        return {"load_per_worker": self.code.D, "partitions": self.code.P,
                "stragglers": [self.code.s_e, self.code.s_w],
                "master_messages_used": len(self.layout_relays) - self.code.s_e,
                "straggle": self.straggle.text}

    def downlink_method(self, requested, flat):
        return "point-to-point"
