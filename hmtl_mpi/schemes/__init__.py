"""The schemes the runtime runs, one module each, behind :class:`base.Scheme`.

Multi-task learning (``--workload mtl``, MOCHA; the IV exchange of the source papers):

====================  ==================================================================
:mod:`.uncoded`       forward every IV once; the server updates and sends every model once
:mod:`.coded`         the paper's hierarchical scheme: one coded round per user degree z
:mod:`.joint`         seed 001's joint exchange: one LP over relay subsets, one coded block
====================  ==================================================================

Gradient descent on one shared model (``--workload gd``; seeds 002/003, stragglers):

====================  ==================================================================
:mod:`.gd_uncoded`    every worker's partitions summed through the edges, nobody skipped
:mod:`.gc`            flat gradient coding: workers straight to the server
:mod:`.hgc`           hierarchical gradient coding: straggling edges and workers skipped
:mod:`.hgc_jncss`     hgc on the nodes and tolerances chosen for the expected time (JNCSS)
====================  ==================================================================

Adding a scheme is adding a module with a :class:`base.Scheme` subclass and one
line to :data:`CLASSES`; the roles, the loop and the report never name a scheme.
"""

from __future__ import annotations

from .base import Scheme
from .coded import Coded
from .gc import Gc
from .gd_uncoded import GdUncoded
from .hgc import Hgc
from .hgc_jncss import HgcJncss
from .joint import Joint
from .uncoded import Uncoded

CLASSES = (
    Uncoded,
    Coded,
    Joint,
    GdUncoded,
    Gc,
    Hgc,
    HgcJncss,
)
WORKLOADS = ("mtl", "gd")
REGISTRY: dict = {(cls.workload, cls.name): cls for cls in CLASSES}


def names(workload: str = "mtl") -> list:
    return [name for (w, name) in REGISTRY if w == workload]


def get(name: str, workload: str | None = None) -> type[Scheme]:
    """The scheme ``name`` of ``workload`` (None: the one workload that has that name;
    ``uncoded``, which both have, is then the multi-task one)."""
    if workload is None:
        found = [w for (w, n) in REGISTRY if n == name]
        workload = "mtl" if "mtl" in found else (found[0] if found else "mtl")
    try:
        return REGISTRY[(workload, name)]
    except KeyError:
        raise ValueError(f"unknown scheme {name!r} for --workload {workload}; choose from "
                         f"{', '.join(names(workload))}") from None
