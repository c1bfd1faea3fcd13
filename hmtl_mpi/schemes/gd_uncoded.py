"""Plain distributed gradient descent through the edges (the gradient workload's baseline).

The P partitions are split disjointly over the M workers (P/M each, coefficients
1); each edge waits for all of its workers and sends their sum, the server waits
for every edge and sums: no straggler tolerance, so the slowest worker sets the
pace of every iteration.
"""

from __future__ import annotations

from ..codes import gradcode
from .gradient import GradientScheme


class GdUncoded(GradientScheme):
    name = "uncoded"
    summary = ("plain distributed gradient descent through the edges: every worker's "
               "partition sums added up, the server waits for every edge")

    @classmethod
    def select(cls, G, per_relay, P, stragglers, straggle, seed):
        return list(range(len(per_relay))), per_relay, 0, 0

    @classmethod
    def code_for(cls, m, P, s_e, s_w):
        return gradcode.uncoded_code(m, P)
