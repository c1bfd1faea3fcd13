"""HGC with node selection (HGC-JNCSS, seeds 002/003; docs/gradient-coding.md section 4, ours).

Before training, rank 0 chooses which edges and which of their workers take part
and the tolerances (s_e, s_w) that minimise the expected iteration time under the
delay model the job itself injects (``--straggle``: per partition a = SHIFT and
mu = RATE; ``bernoulli`` spikes as spikes; a ``fixed`` rank becomes a constant
extra delay of that worker or edge): :func:`hmtl_mpi.codes.gradcode.jncss_greedy`, a greedy over every feasible
(s_e, s_w) that drops one node at a time while the Monte Carlo estimate of E[T]
falls. The selected nodes then run :mod:`.hgc` with ``--partitions`` P (every
scheme of a run shares the data partitions, which keeps their sums identical);
the others receive the model and idle. ``--stragglers`` is ignored: the
tolerances are chosen here. JNCSS's objective, greedy rule and delay model are
this project's reconstruction: the paper's are not public.
"""

from __future__ import annotations

import numpy as np

from ..codes import gradcode
from ..vocabulary import relay_rank, user_rank
from .hgc import Hgc

SAMPLES = 1000           # Monte Carlo draws per candidate (common random numbers)
NO_RANDOM_RATE = 1e12    # mu for a model without a random part (its term vanishes)


def delay_model(G: np.ndarray, per_relay: list, straggle) -> gradcode.DelayModel:
    """The job's ``--straggle`` as docs/gradient-coding.md's delay model over the tree (world ranks:
    :func:`hmtl_mpi.vocabulary.relay_rank`, :func:`~hmtl_mpi.vocabulary.user_rank`)."""
    H = G.shape[0]
    rate = straggle.rate if straggle.rate > 0 else NO_RANDOM_RATE
    model = gradcode.DelayModel.uniform([len(ks) for ks in per_relay], straggle.shift, rate)
    if straggle.spike_prob:
        model = model.with_spikes(straggle.spike_prob, straggle.spike)
    for i, ks in enumerate(per_relay):
        if straggle.relay_delay(relay_rank(i)):
            model = model.with_edge_delay(i, straggle.relay_delay(relay_rank(i)))
        for j, k in enumerate(ks):
            extra = straggle.fixed.get(user_rank(k, H), 0.0)
            if extra:
                model = model.with_worker_delay(i, j, extra)
    return model


class HgcJncss(Hgc):
    name = "hgc-jncss"
    summary = ("hgc on the edges, workers and (s_e, s_w) chosen to minimise the expected "
               "iteration time under the injected delays (greedy JNCSS, ours)")

    @classmethod
    def select(cls, G, per_relay, P, stragglers, straggle, seed):
        choice = gradcode.jncss_greedy(delay_model(G, per_relay, straggle), P,
                                       samples=SAMPLES, seed=seed)
        relays = [int(i) for i in choice.edges]
        users = [[per_relay[i][j] for j in js] for i, js in zip(choice.edges, choice.workers)]
        return relays, users, choice.s_e, choice.s_w
