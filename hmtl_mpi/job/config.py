"""The job's configuration: built once from the command line, frozen, never mutated.

:func:`hmtl_mpi.cli.parse_job_args` turns the parsed arguments into a
:class:`JobConfig`; what only the setup can decide (MOCHA's lambda chosen by
cross-validation, the local update's kernel, the data's dimension) makes a new
one (:meth:`JobConfig.decided`), the same on every rank. Everything below the
command line receives the config, or the few fields it needs, as arguments.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from ..learning.straggle import Straggle


@dataclass(frozen=True)
class JobConfig:
    """Every option of ``python -m hmtl_mpi`` (see ``--help``), as decided."""

    topology: str = "paper-fig2"
    workload: str = "mtl"
    schemes: tuple = ()               # the schemes to run, in order (--scheme)
    scheme_arg: str = ""              # how --scheme was given (the report's "scheme")
    stragglers: tuple = (1, 1)
    relay_stragglers: int = 0          # coded, joint: slow relays tolerated (0: none)
    partitions: int | None = None
    straggle: Straggle = field(default_factory=Straggle)   # --straggle's delay model
    layout: str = "hierarchical"
    dataset: str = "digits"
    dim: int | None = None
    iterations: int = 30
    seed: int = 0
    downlink: str = "scatter-allgather"
    sync: str = "iteration"
    timeout: float = 60.0
    report: str | None = None
    data_dir: str | None = None
    har_tasks: str = "sitting"
    lam: float | None = None
    cv: bool = False
    data: str = "scatter"
    local_kernel: str = "auto"
    inner: int | None = None
    eval_every: int | None = None
    quiet: bool = False
    inject_fault: tuple | None = None
    transport: str = "mpi"
    checkpoint: str | None = None      # folder: write checkpoints there
    checkpoint_every: int = 10         # iterations between two checkpoints
    resume: str | None = None          # folder: resume from its newest checkpoint
    users_per_rank: int = 1            # users run by each user rank (job/hosting.py)
    plan: str = "load"                 # coded/joint: load (the papers') or time (--plan)
    on_failure: str = "abort"          # "continue": survive a lost relay or user
    segments: int | str = 1            # coded/joint: the pipelined exchange's J, or "auto"

    @property
    def flat(self) -> bool:
        """Seed 001's layout: no user ranks, relay i computes the IVs of its row of G."""
        return self.layout == "flat"

    @property
    def auto(self) -> bool:
        """``--scheme auto``: the scheme predicted fastest runs (:mod:`hmtl_mpi.job.auto`)."""
        return self.scheme_arg == "auto"

    @property
    def reads_data(self) -> bool:
        """Whether the learner has data that rank 0 reads and sends (MOCHA's tasks)."""
        return self.workload == "mtl" and self.dataset != "synthetic"

    @classmethod
    def from_args(cls, args, schemes: tuple, scheme_arg: str) -> "JobConfig":
        """From argparse's namespace (left as it is) and the resolved scheme list."""
        fields = {f: getattr(args, f) for f in cls.__dataclass_fields__
                  if f not in ("schemes", "scheme_arg") and hasattr(args, f)}
        return cls(schemes=tuple(schemes), scheme_arg=scheme_arg, **fields)

    def decided(self, **changes) -> "JobConfig":
        """A copy with what the setup decided (``lam``, ``local_kernel``, ``dim``)."""
        return replace(self, **changes)
