"""``plan --verify``: a scheme's exchange run through its own parts, in one process.

The exchange has one driver, the job's loop (:func:`hmtl_mpi.job.runtime.run_steps`):
here it runs one iteration of the scheme over the in-process transport
(:mod:`hmtl_mpi.wire.inprocess`), every rank's part with its real wire format, on
IVs salted with awkward bit patterns (NaN with a payload, infinities, -0.0,
subnormals: :func:`hmtl_mpi.codes.coding.special_ivs`). The loop's own check
compares every IV every relay holds after decoding with the one its user computed,
bit for bit; the bytes are those the links counted.
"""

from __future__ import annotations

from ..codes.coding import special_ivs
from ..learning.learners import FixedIVLearner
from ..schemes.base import Job
from ..vocabulary import WORLD, ranks_needed, role_of
from ..wire.inprocess import Fabric, InProcessEndpoint
from ..wire.roles import make_net
from .config import JobConfig
from .failures import RankState
from .runtime import run_steps


def verify_exchange(scheme, dim: int, seed: int = 0) -> dict:
    """Run one iteration of ``scheme`` (a scheme with steps) on K special IVs of ``dim``
    values; returns ``bit_exact`` and the bytes and loads measured on the links."""
    if scheme.barrier_free:
        raise ValueError(f"the {scheme.name} scheme has no exchange of IVs to verify")
    G = scheme.G
    H, K = G.shape
    ivs = special_ivs(K, dim, seed)
    config = JobConfig(iterations=1, quiet=True, schemes=(scheme.name,))
    fabric = Fabric(ranks_needed(H, K))

    def rank_job(r):
        endpoint, state = InProcessEndpoint(fabric, r), RankState(r)
        endpoint.barrier(WORLD, "start")
        endpoint.connect(G, False)
        role, index = role_of(r, H)
        part = scheme.part(role, Job(G, FixedIVLearner(ivs)), make_net(endpoint, G), index)
        return run_steps(scheme, part, endpoint, state, config)

    record = fabric.run(rank_job)[0][0]
    iv_bytes = 8 * dim
    up, down = record["bytes"]["relay_to_server"], record["bytes"]["server_to_relay"]
    return {
        "bit_exact": bool(record["ivs_bit_exact"]),
        "dim": dim,
        "iv_bytes": iv_bytes,
        "seed": scheme.report_fields().get("code_seed"),
        "attempts": scheme.report_fields().get("code_attempts"),
        "uplink_bytes": int(up),
        "downlink_bytes": int(down),
        "measured_uplink_load": up / iv_bytes,
        "measured_downlink_load": down / iv_bytes,
        "planned_uplink_load": float(scheme.planned_loads[0]),
        "planned_downlink_load": float(scheme.planned_loads[1]),
        "transport": "inprocess",
    }
