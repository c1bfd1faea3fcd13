"""The failure matrix with real mpiexec jobs: every abnormal end names its culprit once.

Each job runs on a small topology (H = 2 relays, K = 3 users: 6 ranks) with a
marker in its environment; afterwards no process carrying the marker may be
left, and no file besides what the test made. Every job has a timeout.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid

import numpy as np
import pytest

from mpi_util import REPO, mpiexec, run_job

pytestmark = pytest.mark.mpi

G_SMALL = np.array([[1, 1, 0], [0, 1, 1]], dtype=np.uint8)   # ranks: 0 server, 1-2 relays, 3-5 users
ROLES = {0: "server", 1: "relay 1", 2: "relay 2", 3: "user 1", 4: "user 2", 5: "user 3"}


@pytest.fixture
def small(tmp_path):
    path = tmp_path / "g.npy"
    np.save(path, G_SMALL)
    return path


def _marked_processes(mark: str) -> list:
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/environ", "rb") as fh:
                if f"HMTL_TEST_MARK={mark}".encode() in fh.read():
                    found.append(int(pid))
        except OSError:
            continue
    return found


def _still_running(mark: str) -> str:
    """The job's processes still alive: pid, rank, state, kernel wait channel, parent (for
    the message of a test whose job did not end)."""
    lines = []
    for pid in _marked_processes(mark):
        try:
            env = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
            rank = next((kv.split(b"=", 1)[1].decode() for kv in env
                         if kv.startswith(b"PMI_RANK=")), "?")
            stat = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
            wchan = open(f"/proc/{pid}/wchan").read()
            lines.append(f"pid {pid} rank {rank} state {stat[0]} parent {stat[1]} wchan {wchan}")
        except OSError:
            continue
    return "; ".join(lines) or "none"


def _assert_nothing_left(mark: str) -> None:
    deadline = time.monotonic() + 5
    while _marked_processes(mark) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _marked_processes(mark) == [], "processes of the job are still running"


def job(n, *args, timeout=120):
    mark = uuid.uuid4().hex
    proc, seconds = run_job(n, *args, timeout=timeout, env={"HMTL_TEST_MARK": mark})
    _assert_nothing_left(mark)
    return proc, seconds


def _our_lines(stderr: str) -> list:
    return [line for line in stderr.splitlines() if line.startswith("hmtl_mpi:")]


def assert_one_message(proc, *needles):
    """One hmtl_mpi line (plus MPICH's one-line abort note at most), holding every needle."""
    ours = _our_lines(proc.stderr)
    assert len(ours) == 1, proc.stderr
    for needle in needles:
        assert needle in ours[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) <= 3, proc.stderr


SYNTH = ("--dataset", "synthetic", "--dim", "300", "--quiet")


@pytest.mark.parametrize("rank", [0, 1, 4])
def test_exception_names_rank_role_iteration_and_phase(small, rank):
    proc, seconds = job(6, "--topology", str(small), *SYNTH, "--iterations", "3",
                        "--inject-fault", f"{rank}:1")
    assert proc.returncode == 3, proc.stderr
    assert_one_message(proc, f"rank {rank} ({ROLES[rank]}) failed in iteration 1 of the uncoded run, "
                             f"phase relay_to_server: RuntimeError: fault injected on rank {rank}")
    assert seconds < 30


@pytest.mark.parametrize("rank", [0, 2, 5])
def test_hang_names_the_rank_that_stopped_answering(small, rank):
    proc, seconds = job(6, "--topology", str(small), *SYNTH, "--iterations", "3", "--timeout", "3",
                        "--inject-fault", f"{rank}:0:hang")
    assert proc.returncode == 4, proc.stderr
    assert_one_message(proc, f"rank {rank} ({ROLES[rank]}) stopped answering")
    if rank != 0:          # rank 0 speaks for the job and knows where the others wait
        assert "in iteration 0 of the uncoded run, phase relay_to_server" in proc.stderr
    assert seconds < 30, f"{seconds:.1f} s"


def test_injected_kill_names_the_dead_rank(small):
    proc, seconds = job(6, "--topology", str(small), *SYNTH, "--iterations", "3",
                        "--inject-fault", "4:1:kill")
    assert proc.returncode != 0
    ours = _our_lines(proc.stderr)
    assert ours == ["hmtl_mpi: rank 4 (user 2) was killed by signal 9 (SIGKILL) in iteration 1 of "
                    "the uncoded run, phase relay_to_server; the job ends"], proc.stderr
    assert seconds < 30


def _start(n, *args, mark):
    env = dict(os.environ, HMTL_TEST_MARK=mark, MPIEXEC_TIMEOUT="120",
               PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.Popen([mpiexec(), "-n", str(n), sys.executable, "-m", "hmtl_mpi", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            cwd=str(REPO))


def _wait_for_iterations(proc, n=2) -> None:
    """Read progress lines until iteration n has been printed (the job is under way)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        if f"iteration {n}/" in line:
            return
    proc.kill()
    raise AssertionError("the job did not start its iterations")


def _rank_process(mark: str, rank: int) -> int:
    """The MPI rank's process: the one whose parent (its watcher) has the same rank."""
    def env(pid):
        with open(f"/proc/{pid}/environ", "rb") as fh:
            return dict(kv.split(b"=", 1) for kv in fh.read().split(b"\0") if b"=" in kv)

    for pid in _marked_processes(mark):
        try:
            mine = env(pid)
            with open(f"/proc/{pid}/stat") as fh:
                ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
            if mine.get(b"PMI_RANK") == str(rank).encode() and \
                    env(ppid).get(b"PMI_RANK") == str(rank).encode():
                return pid
        except OSError:
            continue
    raise AssertionError(f"rank {rank}'s process not found")


def _kill_while_iterating(small, victim):
    """Start a long job, and once it iterates SIGKILL the process ``victim(mark)`` names;
    returns (the mpiexec process, its stderr, seconds from the kill to its end, mark)."""
    mark = uuid.uuid4().hex
    proc = _start(6, "--topology", str(small), "--dataset", "synthetic", "--iterations", "100000",
                  mark=mark)
    try:
        _wait_for_iterations(proc)
        os.kill(victim(mark), signal.SIGKILL)
        killed = time.monotonic()
        try:
            _, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired as exc:
            raise AssertionError(f"mpiexec still running 30 s after the kill; the job's "
                                 f"processes: {_still_running(mark)}; stderr so far: "
                                 f"{exc.stderr!r}") from None
        took = time.monotonic() - killed
    finally:
        proc.kill()
    return proc, err, took, mark


def test_kill_9_from_outside_names_that_rank(small):
    proc, err, took, mark = _kill_while_iterating(small, lambda mark: _rank_process(mark, 5))
    assert proc.returncode != 0
    ours = _our_lines(err)
    assert len(ours) == 1 and ours[0].startswith("hmtl_mpi: rank 5 (user 3) was killed by signal 9 "
                                                 "(SIGKILL) in iteration "), err
    assert took < 10, f"{took:.1f} s"
    _assert_nothing_left(mark)


def _parent(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as fh:
        return int(fh.read().rsplit(")", 1)[1].split()[1])


def test_killing_a_ranks_watcher_ends_the_job_with_no_orphan(small):
    """The first of a rank's two processes (its watcher) killed: the rank goes with it
    (parent-death signal), says so, and mpiexec ends instead of waiting for an orphan."""
    proc, err, took, mark = _kill_while_iterating(
        small, lambda mark: _parent(_rank_process(mark, 4)))
    assert proc.returncode != 0
    assert _our_lines(err) == ["hmtl_mpi: rank 4's watcher process was killed; the rank ends too"], err
    assert took < 10, f"{took:.1f} s"
    _assert_nothing_left(mark)


def test_killing_mpiexec_leaves_nothing_running(small):
    mark = uuid.uuid4().hex
    proc = _start(6, "--topology", str(small), "--dataset", "synthetic", "--iterations", "100000",
                  mark=mark)
    try:
        _wait_for_iterations(proc)
        proc.kill()                                   # SIGKILL to mpiexec itself
        proc.communicate(timeout=30)
    finally:
        proc.kill()
    deadline = time.monotonic() + 10
    while _marked_processes(mark) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _marked_processes(mark) == [], "ranks or watchers outlived mpiexec by 10 s"


def test_ctrl_c_is_one_message_and_exit_130(small):
    mark = uuid.uuid4().hex
    proc = _start(6, "--topology", str(small), "--dataset", "synthetic", "--iterations", "100000",
                  mark=mark)
    try:
        _wait_for_iterations(proc)
        proc.send_signal(signal.SIGINT)
        start = time.monotonic()
        _, err = proc.communicate(timeout=30)
        took = time.monotonic() - start
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    ours = _our_lines(err)
    assert len(ours) == 1 and ours[0].startswith("hmtl_mpi: interrupted by SIGINT (Ctrl-C) in "
                                                 "iteration "), err
    assert "Traceback" not in err
    assert took < 10
    _assert_nothing_left(mark)


def test_wrong_rank_count_is_one_message(small, tmp_path):
    proc, _ = job(4, "--topology", str(small), "--report", str(tmp_path / "r.json"))
    assert proc.returncode == 2
    assert proc.stderr.count("needs 1 + H + K = 6 ranks") == 1
    assert len(proc.stderr.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.npy"]


@pytest.mark.parametrize("flags,needle", [
    (("--seed", "-5"), "--seed: must be between 0 and 2**32-1"),
    (("--seed", str(2**64)), "--seed: must be between 0 and 2**32-1"),
    (("--timeout", "inf"), "--timeout: must be a finite number > 0, got inf"),
    (("--timeout", "nan"), "--timeout: must be a finite number > 0"),
    (("--inject-fault", "6:0"), "--inject-fault: rank 6 does not exist; the job has ranks 0 .. 5"),
    (("--inject-fault", "1:3"), "--inject-fault: iteration 3 never runs"),
    (("--report", ""), "--report: the path is empty"),
    (("--dataset", "har"), "--dataset har needs --data-dir"),
])
def test_bad_values_are_one_short_error_before_any_work(small, tmp_path, flags, needle):
    proc, seconds = job(6, "--topology", str(small), "--iterations", "3", *flags)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("usage: "), proc.stderr
    assert needle in lines[1], proc.stderr
    assert proc.stdout == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.npy"]


def test_report_path_checked_before_the_run(small, tmp_path):
    (tmp_path / "adir").mkdir()
    proc, _ = job(6, "--topology", str(small), "--report", str(tmp_path / "adir"))
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"hmtl_mpi: error: --report {tmp_path / 'adir'}: is a directory; " \
                                  f"give a file name"
    assert "iteration" not in proc.stdout
    proc, _ = job(6, "--topology", str(small), "--report", str(tmp_path / "nowhere" / "r.json"))
    assert proc.returncode == 2 and "does not exist" in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adir", "g.npy"]
    assert list((tmp_path / "adir").iterdir()) == []


def test_har_file_of_random_bytes_is_named(small, tmp_path):
    from hmtl_mpi.learning.datasets import make_har_fixture

    har = make_har_fixture(tmp_path / "har")
    bad = har / "train" / "X_train.txt"
    bad.write_bytes(np.random.default_rng(1).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    proc, _ = job(6, "--topology", str(small), "--dataset", "har", "--data-dir", str(har))
    assert proc.returncode == 2
    assert proc.stderr.count(f"{bad}: not a text file of numbers") == 1
    assert len(proc.stderr.strip().splitlines()) == 1
