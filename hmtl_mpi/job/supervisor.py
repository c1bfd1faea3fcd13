"""A watcher per rank, so that a rank killed by a signal is named.

When one rank dies by a signal (``kill -9``, the OOM killer), MPICH's hydra
kills every other rank with SIGKILL within milliseconds: no rank can react, and
hydra's own banner names a process id, often not the one that died. So
``python -m hmtl_mpi`` forks once, before MPI is initialised (forking after
``MPI_Init`` is unsafe): the child is the MPI rank, the parent (the process the
launcher started) only waits for it. The rank writes where it is (its rank,
role, scheme, iteration and phase) into a shared memory page at every step;
the parent reads it if the rank dies by a signal, prints one line naming it,
waits until that line has left its standard-error pipe, and exits with
128 + the signal number. Any other end passes the rank's exit code through
unchanged and prints nothing: the rank itself reports everything else (see
:mod:`hmtl_mpi.job.failures`).

Signals: SIGINT is ignored here (terminals and hydra send Ctrl-C to the whole
process group, so the rank gets it directly); SIGTERM and SIGHUP are passed on
to the rank. Set ``HMTL_NO_SUPERVISOR=1`` to run without the watcher.

Under ``--on-failure continue`` (an MPI with ULFM, :mod:`hmtl_mpi.wire.ulfm`) the job
survives a relay or user killed by a signal: its watcher then says so ("the job goes on
without it"), writes the time of the death where rank 0 reads it (the loss's
``detected_s``), and exits 0, so that the launcher does not end the job and ``mpirun``'s
exit code is the survivors'. Rank 0's watcher still exits with 128 + the signal.

No orphan: the rank dies with its watcher, and the watcher with the process that
started it (the launcher's proxy), through the kernel's parent-death signal
(``prctl(PR_SET_PDEATHSIG)``). A rank whose watcher was killed gets SIGTERM, says
so in one line and exits at once (:func:`orphaned`); a watcher whose launcher is
gone is killed. Otherwise a rank left without its watcher would keep the
launcher's output pipes open, and ``mpirun`` would wait for it forever.
"""

from __future__ import annotations

import array
import ctypes
import fcntl
import mmap
import os
import signal
import stat
import sys
import termios
import time
import zlib

from ..wire.ulfm import enabled as ulfm_enabled
from ..wire.ulfm import write_death

PAGE_BYTES = 1024
PR_SET_PDEATHSIG = 1
_watcher = None              # in the rank: its watcher's pid


def die_with_parent(signum: int) -> bool:
    """Ask the kernel to send this process ``signum`` when its parent exits (Linux)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, int(signum), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def die_on_sigterm() -> None:
    """From now on SIGTERM ends this process at once, without Python's handler. Called
    before an MPI call that may block in C with the GIL held (``MPI_Abort``, the final
    ``MPI_Finalize``): a Python handler would never run there, and a rank whose watcher
    is gone (its parent-death SIGTERM) would live on, holding the launcher's output
    pipes open, so that ``mpiexec`` never ends."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def orphaned() -> bool:
    """In a rank: whether its watcher is gone (the rank then has another parent)."""
    return _watcher is not None and os.getppid() != _watcher


class StatePage:
    """The rank's side: "who<TAB>where", overwritten at every step (no system call).

    The page is a memory file (``memfd``) when the system has them: another process of
    the same user on the same host (rank 0) can then read it through
    ``/proc/<pid>/fd/<fd>`` (:func:`read_page_of`), which is how rank 0 names the
    phase of a rank that stopped answering.
    """

    def __init__(self, page: mmap.mmap, fd: int = -1):
        self._page = page
        self.fd = fd

    def write(self, text: str) -> None:
        data = text.encode("utf-8", "replace")[: PAGE_BYTES - 1]
        self._page[: len(data) + 1] = data + b"\0"

    def read(self) -> str:
        raw = self._page[:PAGE_BYTES]
        return raw[: raw.find(b"\0") if b"\0" in raw else PAGE_BYTES].decode("utf-8", "replace")


def read_page_of(pid: int, fd: int) -> str | None:
    """The text of another process's :class:`StatePage` (its pid and page fd), or None
    when it cannot be read (another host or PID namespace, no memfd, no permission)."""
    if fd < 0:
        return None
    try:
        with open(f"/proc/{int(pid)}/fd/{int(fd)}", "rb") as f:
            raw = f.read(PAGE_BYTES)
    except OSError:
        return None
    return raw[: raw.find(b"\0") if b"\0" in raw else len(raw)].decode("utf-8", "replace")


def host_key() -> int:
    """Equal for two processes that see the same /proc: the kernel's boot id and the
    PID namespace (ranks in network namespaces share both, containers do not)."""

    try:
        boot = open("/proc/sys/kernel/random/boot_id", "rb").read().strip()
        pidns = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return -1
    return zlib.crc32(boot) * 2**31 + pidns % 2**31


def launcher_rank() -> str:
    """This process's rank as the launcher's environment gives it (before MPI_Init)."""
    for name in ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK", "SLURM_PROCID"):
        if os.environ.get(name, "").isdigit():
            return os.environ[name]
    return "?"


def drain_stderr(limit: float = 1.0) -> None:
    """Flush standard error and wait (up to ``limit`` s) until its pipe has been read.

    A launcher forwards our standard error through a pipe; when the job is torn
    down right after we write (MPI_Abort, or the launcher reacting to our exit),
    bytes still in the pipe can be lost. FIONREAD on the pipe tells how many are
    left unread. On a terminal or a file there is nothing to wait for.
    """
    try:
        sys.stderr.flush()
    except (OSError, ValueError):
        return
    try:

        if not stat.S_ISFIFO(os.fstat(2).st_mode):
            return
        left = array.array("i", [0])
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            fcntl.ioctl(2, termios.FIONREAD, left, True)
            if left[0] == 0:
                return
            time.sleep(0.005)
    except (OSError, ImportError):
        return


def start() -> StatePage | None:
    """Fork the watcher; returns the rank's :class:`StatePage` (in the child) or None.

    Never returns in the parent: it waits for the rank and exits with its status.
    """
    if os.environ.get("HMTL_NO_SUPERVISOR") or not hasattr(os, "fork"):
        return None
    fd = -1
    try:
        fd = os.memfd_create("hmtl_mpi-state")       # readable by rank 0 (read_page_of)
        os.ftruncate(fd, PAGE_BYTES)
        page = mmap.mmap(fd, PAGE_BYTES)
    except (AttributeError, OSError):
        if fd >= 0:
            os.close(fd)
        fd = -1
        page = mmap.mmap(-1, PAGE_BYTES)
    state = StatePage(page, fd)
    state.write(f"rank {launcher_rank()}\tduring start-up")
    sys.stdout.flush()
    sys.stderr.flush()
    die_with_parent(signal.SIGKILL)             # the watcher goes with its launcher
    watcher = os.getpid()
    child = os.fork()
    if child == 0:
        global _watcher
        _watcher = watcher
        die_with_parent(signal.SIGTERM)         # the rank goes with its watcher
        if os.getppid() != watcher:             # it went before prctl took effect
            os._exit(128 + signal.SIGTERM)
        return state
    _watch(child, state)                        # never returns


def _continues() -> bool:
    """Whether the command line says ``--on-failure continue`` (the watcher does not parse
    the rest of it)."""
    argv = sys.argv[1:]
    return any(a == "--on-failure=continue" or (a == "--on-failure" and argv[n + 1:n + 2]
                                               == ["continue"]) for n, a in enumerate(argv))


def _watch(child: int, state: StatePage) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    def forward(signum, _frame):
        try:
            os.kill(child, signum)
        except ProcessLookupError:
            pass

    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, forward)
    # The copies of the launcher's sockets (PMI) stay open here on purpose: when the rank
    # dies, the launcher must not see its PMI connection close (it would kill this
    # watcher before it speaks); it learns of the end when this process exits.
    while True:
        try:
            _, status = os.waitpid(child, 0)
            break
        except ChildProcessError:
            os._exit(1)
    if os.WIFSIGNALED(status):
        died = time.time()
        signum = os.WTERMSIG(status)
        try:
            name = signal.Signals(signum).name
        except ValueError:
            name = f"signal {signum}"
        going_on = _continues() and ulfm_enabled() and launcher_rank() not in ("0", "?")
        try:
            who, _, where = state.read().partition("\t")
            sys.stderr.write(f"hmtl_mpi: {who} was killed by signal {signum} ({name}) {where}; "
                             + ("the job goes on without it (--on-failure continue)\n"
                                if going_on else "the job ends\n"))
        except (OSError, ValueError):
            pass
        if going_on:
            write_death(int(launcher_rank()), died)
        drain_stderr()
        os._exit(0 if going_on else 128 + signum)
    os._exit(os.WEXITSTATUS(status) if os.WIFEXITED(status) else 1)
