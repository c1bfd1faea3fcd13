"""Flat gradient coding (Tandon et al.'s cyclic placement): workers straight to the server.

No hierarchy: every worker sends its coded gradient directly to the server, past
the relays, and the server decodes the exact sum from the first M - s of the M
workers (``hmtl_mpi.codes.gradcode.flat_code``: the cyclic placement with the
polynomial coefficients of docs/gradient-coding.md, one worker per "edge"). For a like-for-like
comparison with ``hgc`` at ``--stragglers S_E,S_W`` the tolerance is
``s = (S_E + 1)(S_W + 1) - 1``: every worker then holds the same number of
partitions D as in hgc (ours: the papers' "conventional" scheme is not specified).
The server receives M messages per iteration, against n for hgc.
"""

from __future__ import annotations

from ..codes import gradcode
from ..vocabulary import home_relays
from .gradient import GradientScheme


class Gc(GradientScheme):
    name = "gc"
    summary = ("flat gradient coding: workers straight to the server, which decodes from "
               "its first M - s (s = (s_e+1)(s_w+1) - 1: hgc's load per worker)")
    direct = True

    @classmethod
    def select(cls, G, per_relay, P, stragglers, straggle, seed):
        s_e, s_w = stragglers
        home = home_relays(G)
        users = [k for ks in per_relay for k in ks]
        return [int(home[k]) for k in users], [[k] for k in users], (s_e + 1) * (s_w + 1) - 1, 0

    @classmethod
    def code_for(cls, m, P, s_e, s_w):
        return gradcode.flat_code(len(m), P, s_e)
