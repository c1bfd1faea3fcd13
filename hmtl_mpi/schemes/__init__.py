"""The schemes the runtime runs, one module each, behind :class:`base.Scheme`.

====================  ==================================================================
module                scheme
====================  ==================================================================
:mod:`.uncoded`       forward every IV once; the server updates and sends every model once
:mod:`.coded`         the paper's hierarchical scheme: one coded round per user degree z
:mod:`.joint`         seed 001's joint exchange: one LP over relay subsets, one coded block
====================  ==================================================================

Adding a scheme is adding a module with a :class:`base.Scheme` subclass and one
line to :data:`REGISTRY`; the roles, the loop and the report never name a scheme.
"""

from __future__ import annotations

from .base import Scheme
from .coded import Coded
from .joint import Joint
from .uncoded import Uncoded

REGISTRY: dict = {cls.name: cls for cls in (
    Uncoded,
    Coded,
    Joint,
)}


def get(name: str) -> type[Scheme]:
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown scheme {name!r}; choose from {', '.join(REGISTRY)}") from None


def names() -> list:
    return list(REGISTRY)
