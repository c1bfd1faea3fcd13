"""The straggler-tolerant coded exchange: ``--scheme coded`` or ``joint`` with
``--relay-stragglers S`` (docs/tolerant.md).

Planned by :mod:`hmtl_mpi.planning.tolerant` (blocks by round z for ``coded``, one block
for ``joint``; loads from the cut-set LP) and coded by :mod:`hmtl_mpi.codes.tolerant`.
Barrier-free, like the gradient schemes (:mod:`hmtl_mpi.schemes.gradient`): one
``iterate(it)`` per rank and iteration, every message tagged with its iteration.

* A user computes its IV, sends it to every relay it is linked to, and takes its model
  from the first of its relays to send it (they all compute the same models).
* A relay takes its users' IVs, encodes its uplink, is late if ``--straggle`` says so (cut
  short, and the uplink given up, if the server's message of the iteration arrives
  meanwhile), sends the uplink, forwards its piece of the broadcast, decodes the whole
  broadcast into every IV, runs the global update and sends every one of its users its
  model.
* The server takes the first H - S relays' uplinks, decodes every IV that some relay
  lacks, and sends its broadcast once, in H - S pieces, one to each relay it heard; each
  of those forwards its piece to every other relay (point to point: the allgather
  collective would wait for the slow relay). A relay gathers the H - S pieces and
  decodes.

Nobody waits for a slow relay: the server needs H - S of them, a user one relay, and the
slow relay's own late messages are drained after the last iteration. The iteration time
is the server's clock from one broadcast sent to the next.

Lossless, checked: every user chains the SHA-256 of its IVs over the iterations, every
relay the same chain of every IV it decoded or received; the job compares them after the
run (:func:`hmtl_mpi.job.checks.check_ivs`), and the final models as for every scheme.
"""

from __future__ import annotations

import hashlib
import json
from fractions import Fraction

import numpy as np

from ..codes import coding
from ..codes import tolerant as tcode
from ..learning.straggle import Straggle, parse
from ..planning import tolerant as tplan
from ..vocabulary import down_tag, up_tag
from .base import RelayPart, Scheme, ServerPart, UserPart

GAVE_UP = np.zeros(0, dtype=np.uint16)        # a late relay's empty uplink


def _chain(previous: bytes, iv: np.ndarray) -> bytes:
    return hashlib.sha256(previous + np.ascontiguousarray(iv).tobytes()).digest()


class TolerantUser(UserPart):
    def __init__(self, scheme, job, net, k):
        super().__init__(scheme, job, net, k)
        self.compute_s = []
        self.chain = bytes(32)

    def iterate(self, it):
        t0 = self.net.clock()
        self.local_update(it)
        self.chain = _chain(self.chain, self.iv)
        relays = self.targets()
        self.net.isend_to_relays(self.iv, relays, up_tag(it))
        self.compute_s.append(self.net.clock() - t0)
        n = self.job.model_values_sent(it)
        posted = self.net.post_from_relays(relays, (n,), np.float64, down_tag(it))
        (_, buf), = self.net.first(posted, 1, f"the model of iteration {it} from relays "
                                   f"{', '.join(str(int(i) + 1) for i in relays)}")
        self.model = self.model.copy()
        self.model[:n] = buf

    def computed_ivs(self):
        return {self.k: np.frombuffer(self.chain, dtype=np.uint8)}

    def own_state(self):
        return {"model": self.model, "chain": np.frombuffer(self.chain, dtype=np.uint8),
                "compute_s": np.array(self.compute_s)}

    def load_own_state(self, state):
        super().load_own_state(state)
        self.chain = bytes(state["chain"])
        self.compute_s = [float(x) for x in state["compute_s"]]


class TolerantRelay(RelayPart):
    def __init__(self, scheme, job, net, i):
        super().__init__(scheme, job, net, i)
        self.chains = [bytes(32)] * job.K
        self.models = None

    def iterate(self, it):
        scheme, job, net = self.scheme, self.job, self.net
        code, dim = scheme.code, job.dim
        users = [int(k) for k in self.users]
        posted = net.post_from_users(users, (dim,), np.float64, up_tag(it))
        got = net.first(posted, len(users), f"the IVs of iteration {it} from users "
                        f"{', '.join(str(k + 1) for k in users)}")
        own = {users[j]: buf for j, buf in got}
        message = tcode.wire(tcode.relay_encode(code, self.i, own, dim))
        if net.delay_unless_model(scheme.straggle.relay_delay(net.rank), down_tag(it)):
            message = GAVE_UP              # the server went on without this relay
        net.isend_to_server(message, up_tag(it))
        # the server's message: one piece from the server (or none, to a relay it did not
        # wait for), forwarded to every other relay; the other pieces from the relays
        n, L = job.H - code.S, tcode.downlink_symbols(code, dim)
        others = [j for j in range(job.H) if j != self.i]
        cap = tcode.piece_capacity(L, n)
        from_relays = net.post_from_relays(others, (cap,), np.uint16, down_tag(it))
        (_, first), = net.first(net.post_from_server((cap,), np.uint16, down_tag(it)), 1,
                                f"the server's message of iteration {it}")
        mine = [] if tcode.piece_index(first) is None else [tcode.trim(first)]
        net.isend_to_relays(mine[0] if mine else GAVE_UP, others, down_tag(it))
        got = net.first(from_relays, n - len(mine), f"the pieces of the server's message of "
                        f"iteration {it} from the relays it heard")
        buf = tcode.join(mine + [b for _, b in got])
        ivs = tcode.relay_decode(code, self.i, own, tcode.unwire(buf, L), dim)
        stacked = np.stack([ivs[k] for k in range(job.K)])
        self.chains = [_chain(c, stacked[k]) for k, c in enumerate(self.chains)]
        self.models = job.learner.global_update(it, stacked)
        n = job.model_values_sent(it)
        for k in users:
            net.isend_to_users(np.ascontiguousarray(self.models[k, :n]), [k], down_tag(it))

    def held_ivs(self):
        return np.stack([np.frombuffer(c, dtype=np.uint8) for c in self.chains])

    def own_state(self):
        return {"chains": self.held_ivs()}

    def load_own_state(self, state):
        self.chains = [bytes(row) for row in np.asarray(state["chains"], dtype=np.uint8)]

    def final_models(self):
        return self.models


class TolerantServer(ServerPart):
    def __init__(self, scheme, job, net, index=0):
        super().__init__(scheme, job, net, index)
        self.decoder = tcode.ServerDecoder(scheme.code, job.dim)
        self.seconds, self.answered, self.last = [], [], None

    def start(self):
        self.last = self.net.clock()

    def iterate(self, it):
        scheme, job, net = self.scheme, self.job, self.net
        code, dim, H = scheme.code, job.dim, job.H
        t0 = net.clock()
        sizes = [tcode.uplink_symbols(code, i, dim) for i in range(H)]
        posted = net.post_from_relays(range(H), (tcode.capacity(max(sizes)),), np.uint16,
                                      up_tag(it))
        got = net.first(posted, H - code.S, f"the uplinks of iteration {it} (the first "
                        f"{H - code.S} of {H} relays)")
        t1 = net.clock()
        xs = self.decoder.decode({i: tcode.unwire(buf, sizes[i]) for i, buf in got})
        t2 = net.clock()
        answered = sorted(int(i) for i, _ in got)
        cut = tcode.pieces(tcode.wire(self.decoder.downlink(xs)), len(answered))
        t3 = net.clock()
        piece_of = dict(zip(answered, cut))
        for i in range(H):             # one copy leaves the server; the relays forward it
            net.isend_to_relays(piece_of.get(i, tcode.no_piece(len(answered))), [i],
                                down_tag(it))
        t4 = net.clock()
        self.answered.append([i + 1 for i in answered])
        self.seconds.append({"relay_to_server": t1 - t0, "decode": t2 - t1, "encode": t3 - t2,
                             "server_to_relay": t4 - t3,
                             "total": t4 - (self.last if self.last is not None else t0)})
        self.last = t4

    def progress(self, it) -> str:
        rec, H, S = self.seconds[it], self.job.H, self.scheme.code.S
        return (f"total {rec['total']:.4f} s (waited {rec['relay_to_server']:.4f} s for the "
                f"first {H - S} of {H} relays: {', '.join(map(str, self.answered[it]))})")

    def own_state(self):
        text = json.dumps({"seconds": self.seconds, "answered": self.answered}).encode()
        return {"records": np.frombuffer(text, dtype=np.uint8)}

    def load_own_state(self, state):
        saved = json.loads(bytes(state["records"]).decode())
        self.seconds, self.answered = saved["seconds"], saved["answered"]

    def results(self):
        missed = [0] * self.job.H
        for answered in self.answered:
            for i in range(self.job.H):
                missed[i] += (i + 1) not in answered
        return {"relay_uplinks_not_waited_for": missed}


class TolerantExchange(Scheme):
    """The coded (``by_round``) or joint exchange made tolerant of S slow relays."""

    MAGIC = np.frombuffer(b"TOLERANT", dtype=np.uint8)
    barrier_free = True
    broadcasts = False
    steps = ()
    user_part = TolerantUser
    relay_part = TolerantRelay
    server_part = TolerantServer
    checks_iv_history = True

    def __init__(self, G, name: str, by_round: bool, code: tcode.TolerantCode,
                 straggle: Straggle, planned: tplan.TolerantPlan | None = None):
        super().__init__(G)
        self.name, self.by_round, self.code = name, by_round, code
        self.straggle, self.planned = straggle, planned
        self.summary = f"the {name} exchange tolerating {code.S} slow relay(s)"

    @classmethod
    def plan_for(cls, name, by_round, G, S, seed=0, straggle=None) -> TolerantExchange:
        try:
            planned = tplan.make_tolerant_plan(G, int(S), by_round)
        except tplan.TolerantPlanError as exc:
            raise ValueError(str(exc)) from None
        code = tcode.build(planned.G, planned.S,
                           [(b.F, b.users, b.units) for b in planned.blocks], seed=seed)
        return cls(planned.G, name, by_round, code, straggle or Straggle(), planned)

    def to_buffer(self):
        text = np.frombuffer(self.straggle.text.encode(), dtype=np.uint8)
        head = np.array([int(self.by_round), len(text)], dtype=np.int64).view(np.uint8)
        return np.concatenate([self.MAGIC, head, text, self.code.to_buffer()])

    @classmethod
    def is_buffer(cls, buf) -> bool:
        buf = np.asarray(buf, dtype=np.uint8)
        return buf.size >= 8 and bool((buf[:8] == cls.MAGIC).all())

    @classmethod
    def from_buffer_named(cls, name, G, buf) -> TolerantExchange:
        buf = np.asarray(buf, dtype=np.uint8)
        by_round, n = buf[8:24].copy().view(np.int64).tolist()
        text = bytes(buf[24: 24 + n]).decode()
        code = tcode.load(np.asarray(G, dtype=np.uint8), buf[24 + n:].copy())
        return cls(G, name, bool(by_round), code, parse(text))

    @property
    def planned_loads(self):
        """Uplink: every relay's combinations (a late relay gives its up, so the measured
        load is lower when one straggles). Downlink: the broadcast, R/F IVs per block,
        leaving the server once (in H - S pieces the answering relays forward)."""
        up = sum((Fraction(int(b.units[i]), b.F) for b in self.code.blocks
                  for i in range(self.H)), Fraction(0))
        return up, self.broadcast_load

    @property
    def broadcast_load(self) -> Fraction:
        """The broadcast in IVs, counted once (the paper's shared link)."""
        return sum((Fraction(b.R, b.F) for b in self.code.blocks), Fraction(0))

    def plan_dict(self):
        out = super().plan_dict()
        if self.planned is not None:
            out.update(self.planned.to_dict())
        out["broadcast_load"] = float(self.broadcast_load)
        out["code_seed"], out["code_attempts"] = self.code.seed, self.code.attempts
        out["straggler_sets_checked"] = self.code.checked_sets
        return out

    def format_plan(self):
        up, down = self.planned_loads
        n = self.H - self.code.S
        text = (f"{self.name}: H = {self.H} relays, K = {self.K} users; loads: uplink {up}, "
                f"downlink {down} IVs per iteration (in {n} pieces, one to each relay the "
                f"server heard, which forwards it to the others)")
        if self.planned is not None:
            text += "\n" + tplan.format_tolerant_plan(self.planned)
        return text + (f"\n  code: random, seed {self.code.seed} after {self.code.attempts} "
                       f"draw(s); the server decodes from each of the "
                       f"{self.code.checked_sets} sets of {self.H - self.code.S} relays")

    def verify_code(self, seed=0):
        """Every set of H - S relays decoded by the server, then every relay (``plan --verify``)."""
        return tcode.verify(self.code, seed=seed)

    def report_fields(self):
        return {"relay_stragglers": self.code.S, "straggle": self.straggle.text,
                "code_construction": "random (tolerant)", "code_seed": self.code.seed,
                "code_attempts": self.code.attempts}

    def link_loads(self):
        out = super().link_loads()
        out["downlink_rounds"] = 2           # the server's pieces, then the relays' forwards
        return out

    def coding_work(self, dim):
        two, code = 2, self.code
        encode = max(sum(two * len(b.columns[i]) * int(b.units[i]) *
                         coding.unit_symbols(dim, b.F) for b in code.blocks)
                     for i in range(self.H))
        combine = sum(two * b.width * (b.width + b.R) * coding.unit_symbols(dim, b.F)
                      for b in code.blocks)
        decode = max(sum(two * b.relay_decoders[i].size * coding.unit_symbols(dim, b.F)
                         for b in code.blocks) for i in range(self.H))
        return {"encode": encode, "combine": combine, "decode": decode}


class ToleratesSlowRelays:
    """Mixin of the coded and joint schemes: with ``relay_stragglers`` S > 0 their plan is
    the :class:`TolerantExchange` of the same name (one block per round z when
    ``tolerant_by_round``, else one block of all users), and its buffer is read back as
    such. Put before the scheme's base class."""

    tolerant_by_round = True

    @classmethod
    def plan(cls, G, seed=0, max_denominator=None, construction="auto", relay_stragglers=0,
             **options):
        if relay_stragglers:
            return TolerantExchange.plan_for(cls.name, cls.tolerant_by_round, G,
                                             relay_stragglers, seed, options.get("straggle"))
        return super().plan(G, seed, max_denominator, construction, **options)

    @classmethod
    def from_buffer(cls, G, buf):
        if TolerantExchange.is_buffer(buf):
            return TolerantExchange.from_buffer_named(cls.name, G, buf)
        return super().from_buffer(G, buf)
