"""The joint coded exchange of seed 001: one coding block planned by one LP over relay subsets.

The plan (loads per relay, F sub-packets per IV) is :mod:`hmtl_mpi.planning.joint`'s;
here it becomes one coding block (:func:`block_layout`) run by the coded exchange
shared with the hierarchical scheme (:class:`hmtl_mpi.schemes.base.CodedExchange`):
relay i combines every sub-packet of every IV it holds into ``F L_i`` messages, the
server broadcasts ``F L_d`` combinations, every relay decodes every IV. See
docs/joint.md.
"""

from __future__ import annotations

import numpy as np

from ..codes import coding
from ..planning.joint import JointPlan, format_joint_plan, make_joint_plan
from .base import CodedExchange
from .pipelined import Pipelines
from .tolerant import ToleratesSlowRelays


def block_layout(jp: JointPlan) -> coding.BlockLayout:
    """The whole exchange as one block: relay i combines every sub-packet of every IV it
    holds (one input row per (user, sub-packet), width 1) into ``F L_i`` messages."""
    rows = []
    for i in range(jp.H):
        cols = [c for c, k in enumerate(jp.users) if jp.G[i, k]]
        rows.append(np.array([(c, f) for c in cols for f in range(jp.F)],
                             dtype=np.int64).reshape(-1, 2))
    return coding.BlockLayout(label="joint block", F=jp.F, users=np.asarray(jp.users, np.int64),
                              rows=rows, width=np.ones(jp.H, dtype=np.int64),
                              messages=np.array(jp.units, dtype=np.int64))


class Joint(ToleratesSlowRelays, Pipelines, CodedExchange):
    name = "joint"
    summary = ("seed 001's joint exchange: one LP over all relay subsets, one coded block "
               "(docs/joint.md)")

    tolerant_by_round = False        # tolerant: one block of all users

    @classmethod
    def make_plan(cls, G, max_denominator=None):
        if max_denominator is None:
            return make_joint_plan(G)
        return make_joint_plan(G, max_denominators=(max_denominator,))

    @classmethod
    def layouts(cls, planned):
        return [block_layout(planned)] if len(planned.users) else []

    def plan_dict(self):
        return dict(self.planned.to_dict(), **self.code_fields(), **self.time_fields())

    def format_plan(self):
        return format_joint_plan(self.planned) + "\n" + self.format_code()
