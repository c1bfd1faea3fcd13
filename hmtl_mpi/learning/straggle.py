"""Real stragglers: wall-clock delays injected into the gradient workload (``--straggle``).

Nothing is simulated: a straggling rank really sleeps, and the iteration time is
what the server's clock measures. Forms, joined by ``+``:

``none``
    no injected delay (the default).
``shifted-exp:SHIFT:RATE``
    every worker, every iteration: a worker holding D partitions is late by
    ``D*SHIFT + D*X/RATE`` seconds, X ~ Exp(1) drawn from
    ``default_rng([seed, rank, iteration])``: the shifted-exponential model of
    gradient coding (docs/gradient-coding.md section 4 with a = SHIFT, mu = RATE), so a worker
    with more partitions is slower, as it would be computing them.
``bernoulli:PROB:SECONDS``
    every worker, every iteration: with probability PROB, late by SECONDS more,
    whatever its load (an interruption: preemption, a page fault storm, a hiccup
    of its link), drawn from the same generator.
``fixed:RANK=SECONDS[,RANK=SECONDS...]``
    the named world ranks (users or relays, never the server) are late by a
    constant number of seconds every iteration; a relay's delay comes before it
    forwards its workers' combination to the server.

Example: ``--straggle shifted-exp:0.002:200+fixed:5=0.3``.

A worker or relay that falls behind abandons the stale iteration: while late it
watches for the model that ends that iteration and, when it comes, stops waiting
and sends an empty message instead of its vector (see
:mod:`hmtl_mpi.schemes.gradient`), so each iteration's delays are drawn afresh
rather than piling up behind the previous ones.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np


class StraggleError(ValueError):
    """A malformed ``--straggle`` value; the message names the part at fault."""


@dataclass
class Straggle:
    shift: float = 0.0                 # seconds per partition
    rate: float = 0.0                  # 1/seconds per partition (0: no random part)
    fixed: dict = field(default_factory=dict)    # world rank -> seconds per iteration
    spike_prob: float = 0.0            # bernoulli: probability per worker and iteration
    spike: float = 0.0                 # bernoulli: seconds
    text: str = "none"

    @property
    def random(self) -> bool:
        return self.rate > 0

    def worker_delay(self, rank: int, iteration: int, partitions: int, seed: int) -> float:
        """Seconds a worker (a user rank) holding ``partitions`` partitions is late."""
        delay = self.fixed.get(rank, 0.0) + partitions * self.shift
        if self.random or self.spike_prob:
            rng = np.random.default_rng([seed, rank, iteration])
            x, u = rng.exponential(), rng.random()
            if self.random:
                delay += partitions * x / self.rate
            if u < self.spike_prob:
                delay += self.spike
        return delay

    def relay_delay(self, rank: int) -> float:
        """Seconds a relay (an edge) is late before it forwards, every iteration."""
        return self.fixed.get(rank, 0.0)

    def check_ranks(self, H: int, size: int) -> None:
        """The named ranks exist and none is the server (raises StraggleError)."""
        for rank in self.fixed:
            if rank == 0:
                raise StraggleError("--straggle: rank 0 is the server; only relays and users "
                                    "straggle")
            if rank >= size:
                raise StraggleError(f"--straggle: rank {rank} does not exist; the job has ranks "
                                    f"0 .. {size - 1}")


    def check_relays_only(self, H: int) -> None:
        """Under --workload mtl only relays (ranks 1..H) straggle (raises StraggleError)."""
        for rank in sorted(self.fixed):
            if rank > H:
                raise StraggleError(f"--straggle: rank {rank} is user {rank - H}; under "
                                    f"--workload mtl only relays (ranks 1 .. {H}) straggle")


def _number(text: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise StraggleError(f"--straggle: {what} must be a number, got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise StraggleError(f"--straggle: {what} must be a finite number >= 0, got {text}")
    return value


def _two_numbers(term: str, rest: str, kind: str, first: str, second: str) -> tuple:
    """``A:B`` after ``kind:`` as two numbers >= 0, or a StraggleError naming the form."""
    parts = rest.split(":")
    if len(parts) != 2:
        raise StraggleError(f"--straggle: {term!r}: expected {kind}:{first}:{second}")
    return _number(parts[0], first), _number(parts[1], second)


def parse(text: str) -> Straggle:
    """``--straggle`` as a :class:`Straggle` (raises StraggleError naming the bad part)."""
    text = str(text).strip()
    out = Straggle(text=text or "none")
    if text in ("", "none"):
        return out
    for term in text.split("+"):
        kind, _, rest = term.strip().partition(":")
        if kind == "shifted-exp":
            out.shift, out.rate = _two_numbers(term, rest, "shifted-exp", "SHIFT", "RATE")
            if out.rate == 0:
                raise StraggleError("--straggle: RATE must be > 0 (use fixed: for constant delays)")
        elif kind == "bernoulli":
            out.spike_prob, out.spike = _two_numbers(term, rest, "bernoulli", "PROB", "SECONDS")
            if out.spike_prob > 1:
                raise StraggleError(f"--straggle: PROB must be at most 1, got {out.spike_prob:g}")
        elif kind == "fixed":
            if not rest:
                raise StraggleError(f"--straggle: {term!r}: expected fixed:RANK=SECONDS[,...]")
            for item in rest.split(","):
                rank, eq, seconds = item.partition("=")
                if not eq or not rank.strip().isdigit():
                    raise StraggleError(f"--straggle: {item!r}: expected RANK=SECONDS with RANK "
                                        f"a world rank number")
                out.fixed[int(rank)] = _number(seconds, f"the delay of rank {rank.strip()}")
        else:
            raise StraggleError(f"--straggle: unknown kind {kind!r} in {term!r}; use none, "
                                f"shifted-exp:SHIFT:RATE, bernoulli:PROB:SECONDS or "
                                f"fixed:RANK=SECONDS[,...]")
    return out
