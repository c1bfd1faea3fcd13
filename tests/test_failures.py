"""The failure layer without MPI: the watcher, the messages, the classification."""

from __future__ import annotations

import subprocess
import sys

import pytest

from hmtl_mpi.job.failures import (RankState, Terminated, classify, compose, decode_record,
                                   encode_record)
from hmtl_mpi.vocabulary import (EXIT_FAULT, EXIT_HANG, EXIT_INTERRUPTED, EXIT_TERMINATED,
                                 role_names)
from hmtl_mpi.wire.interfaces import PhaseTimeout
from mpi_util import REPO


def _python(code: str, **env):
    import os

    full = dict(os.environ, PYTHONPATH=str(REPO), **env)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, env=full)


def test_watcher_names_a_rank_killed_by_a_signal():
    proc = _python("import os, signal\n"
                   "from hmtl_mpi.job.supervisor import start\n"
                   "page = start()\n"
                   "page.write('rank 7 (user 2)\\tin iteration 3 of the coded run, phase decode')\n"
                   "os.kill(os.getpid(), signal.SIGKILL)\n")
    assert proc.returncode == 128 + 9
    assert proc.stderr == ("hmtl_mpi: rank 7 (user 2) was killed by signal 9 (SIGKILL) in iteration 3 "
                           "of the coded run, phase decode; the job ends\n")


def test_watcher_passes_exit_codes_through_silently():
    proc = _python("import sys\nfrom hmtl_mpi.job.supervisor import start\nstart()\nsys.exit(3)\n")
    assert proc.returncode == 3 and proc.stderr == ""
    proc = _python("from hmtl_mpi.job.supervisor import start\nstart()\nprint('only once')\n")
    assert proc.returncode == 0 and proc.stdout == "only once\n"


def test_watcher_can_be_switched_off():
    proc = _python("import os\nfrom hmtl_mpi.job.supervisor import start\n"
                   "print(start() is None, os.getppid() != 1)\n", HMTL_NO_SUPERVISOR="1")
    assert proc.stdout.split() == ["True", "True"]


def test_where_and_who():
    state = RankState(9)
    assert state.who() == "rank 9" and state.where() == "during start-up"
    state.set_roles(role_names(5))
    assert state.who() == "rank 9 (user 4)" and state.who(0) == "rank 0 (server)"
    assert state.who(5) == "rank 5 (relay 5)"
    state.step("phase decode", scheme="coded", iteration=2, note="at the barrier after it")
    assert state.where() == ("in iteration 2 of the coded run, phase decode "
                             "(at the barrier after it)")
    assert state.where(note=False) == "in iteration 2 of the coded run, phase decode"
    state.step("writing the report", scheme=None, iteration=None)
    assert state.where() == "during writing the report"


def test_classify():
    try:
        raise ValueError("bad value\nsecond line")
    except ValueError as exc:
        c = classify(exc)
    assert c["kind"] == "exception" and c["code"] == EXIT_FAULT
    assert c["detail"].startswith("ValueError: bad value [")     # first line, then where
    assert "test_failures.py" in c["detail"]
    assert classify(PhaseTimeout("IVs from users 1, 2", 5))["code"] == EXIT_HANG
    assert classify(KeyboardInterrupt())["code"] == EXIT_INTERRUPTED
    assert classify(Terminated())["code"] == EXIT_TERMINATED


def test_records_round_trip_and_are_bounded():
    rec = {"kind": "exception", "detail": "x" * 10000, "who": "rank 3 (relay 3)"}
    buf = encode_record(rec)
    assert buf.size == 2048
    back = decode_record(buf)
    assert back["who"] == "rank 3 (relay 3)" and back["detail"].endswith(" ...")


@pytest.fixture
def server():
    state = RankState(0)
    state.set_roles(role_names(2))
    state.step("phase relay_to_server", scheme="coded", iteration=1, note="at the barrier after it")
    return state


def test_compose_exception_wins_and_others_are_listed(server):
    reports = [
        {"kind": "timeout", "who": "rank 1 (relay 1)", "where": "w", "detail": "waited"},
        {"kind": "exception", "who": "rank 4 (user 2)", "where": "in iteration 1 of the coded run, "
         "phase local_update", "detail": "ZeroDivisionError: division by zero"},
        {"kind": "exception", "who": "rank 3 (user 1)", "where": "w", "detail": "E"},
    ]
    text, code = compose(server, None, reports, [], {}, 5)
    assert code == EXIT_FAULT
    assert text.splitlines() == [
        "rank 4 (user 2) failed in iteration 1 of the coded run, phase local_update: "
        "ZeroDivisionError: division by zero",
        "  (also failed: rank 3 (user 1))"]


def test_compose_names_the_silent_rank(server):
    """Its phase comes from its own page (positions); without it, only the iteration,
    which every rank shares (rank 0's own phase may be another one)."""
    mine = classify(PhaseTimeout("end of iteration (barrier)", 5))
    text, code = compose(server, mine, [], [4], {1: {}, 2: {}, 3: {}}, 5,
                         {4: "in iteration 1 of the coded run, phase decode"})
    assert code == EXIT_HANG
    assert text == ("rank 4 (user 2) stopped answering in iteration 1 of the coded run, phase "
                    "decode: the other ranks waited more than 5 s and it did not answer "
                    "a status request")
    text, _ = compose(server, mine, [], [4, 5], {1: {}, 2: {}, 3: {}}, 5,
                      {4: "in iteration 1 of the coded run, phase decode"})
    assert text.startswith("rank 4 (user 2) in iteration 1 of the coded run, phase decode, "
                           "rank 5 (user 3) in iteration 1 of the coded run stopped answering "
                           "respectively:")
    text, _ = compose(server, mine, [], [4], {}, 5)
    assert text.startswith("rank 4 (user 2) stopped answering in iteration 1 of the coded run:")


def test_rank_0_reads_another_ranks_page_on_this_host():
    """The silent rank's own page, through /proc/<pid>/fd/<fd> (a memfd)."""
    import os

    from hmtl_mpi.job.supervisor import read_page_of, start

    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:                              # a stand-in rank with a supervisor page
        os.environ.pop("HMTL_NO_SUPERVISOR", None)
        os.close(r)
        try:
            page = start()                    # forks again: this process becomes the watcher
            page.write("rank 9 (user 4)\tin iteration 2 of the uncoded run, phase relay_to_server")
            os.write(w, f"{os.getpid()} {page.fd}\n".encode())
            import time
            time.sleep(30)
        finally:
            os._exit(0)
    os.close(w)
    line = os.read(r, 100).decode().split()
    os.close(r)
    rank_pid, fd = int(line[0]), int(line[1])
    try:
        assert fd >= 0
        assert read_page_of(rank_pid, fd) == ("rank 9 (user 4)\tin iteration 2 of the uncoded "
                                              "run, phase relay_to_server")
        assert read_page_of(rank_pid, 999) is None
    finally:
        os.kill(rank_pid, 9)
        os.waitpid(pid, 0)


def test_compose_timeout_with_every_rank_answering(server):
    mine = classify(PhaseTimeout("coded uplink messages (rank 2 tag 100)", 5))
    replies = {1: {"who": "rank 1 (relay 1)", "waiting": "after relay_to_server (barrier)"}}
    text, code = compose(server, mine, [], [], replies, 5)
    assert code == EXIT_HANG
    assert text.startswith("rank 0 (server) waited more than 5 s for coded uplink messages")
    assert "every rank answered" in text and "rank 1 (relay 1): after relay_to_server" in text
    assert len(text.splitlines()) == 2


def test_compose_interrupt(server):
    text, code = compose(server, classify(KeyboardInterrupt()), [], [], {}, 5)
    assert code == EXIT_INTERRUPTED
    assert text == ("interrupted by SIGINT (Ctrl-C) in iteration 1 of the coded run, phase "
                    "relay_to_server (at the barrier after it)")
