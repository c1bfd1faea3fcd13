"""Hierarchical gradient coding (seeds 002/003; docs/gradient-coding.md section 3).

Two layers of polynomial codes over the cyclic placement: any ``n - s_e`` edges
give the server the exact gradient sum, and inside each edge any ``m_i - s_w``
workers give the edge its vector. Every worker holds
``D = P (s_e + 1)(s_w + 1) / M`` partitions, the lower bound of the trade-off
``D / P >= (s_e + 1)(s_w + 1) / M`` (:func:`hmtl_mpi.codes.gradcode.hgc_code`).
"""

from __future__ import annotations

from ..codes import gradcode
from .gradient import GradientScheme


class Hgc(GradientScheme):
    name = "hgc"
    summary = ("hierarchical gradient coding: edges decode from their first m_i - s_w "
               "workers, the server from its first n - s_e edges")

    @classmethod
    def code_for(cls, m, P, s_e, s_w):
        return gradcode.hgc_code(m, P, s_e, s_w)
