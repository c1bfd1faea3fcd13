"""Checkpoints and resume: atomic, checksummed, refused when they do not match, and a job
stopped anywhere ends bit-identical to an uninterrupted one (both workloads, both
transports, SIGTERM included)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from hmtl_mpi.job import checkpoint as ckpt
from hmtl_mpi.planning.topology import tree
from hmtl_mpi.vocabulary import EXIT_BAD_INPUT, EXIT_TERMINATED
from mpi_util import REPO, mpiexec


def job(*args, timeout=300):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "hmtl_mpi", "--transport", "inprocess",
                           "--quiet", *args], capture_output=True, text=True, timeout=timeout,
                          env=env, cwd=str(REPO))


def digests(path: Path) -> dict:
    report = json.loads(path.read_text())
    return {name: (run["model_digest"], run.get("gradient_digest"), len(run["iterations"]))
            for name, run in report["runs"].items()}


# --- the file ------------------------------------------------------------------------------

def test_pack_write_read_round_trip_and_the_two_newest_kept(tmp_path):
    states = [ckpt.pack({"model": np.arange(3.0), "rng": np.frombuffer(b"{}", np.uint8)}),
              ckpt.pack({})]
    for it in (2, 4, 6):
        header = {"scheme_index": 0, "next_iteration": it, "ranks": 2, "fingerprint": {}}
        ckpt.write(str(tmp_path), header, states)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt-0-00000004.hmtl",
                                                          "ckpt-0-00000006.hmtl"]
    path, header, got = ckpt.read_newest(str(tmp_path))
    assert path.endswith("ckpt-0-00000006.hmtl") and header["next_iteration"] == 6
    back = ckpt.unpack(got[0])
    assert back["model"].tolist() == [0.0, 1.0, 2.0] and bytes(back["rng"]) == b"{}"
    assert ckpt.unpack(got[1]) == {}


def test_a_damaged_checkpoint_is_named(tmp_path):
    header = {"scheme_index": 0, "next_iteration": 2, "ranks": 1, "fingerprint": {}}
    path = Path(ckpt.write(str(tmp_path), header, [ckpt.pack({"x": np.ones(4)})]))
    raw = bytearray(path.read_bytes())
    raw[-5] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(ckpt.CheckpointError, match=f"{path}: fails its checksum"):
        ckpt.read_newest(str(tmp_path))
    path.write_bytes(b"not a checkpoint at all" * 3)
    with pytest.raises(ckpt.CheckpointError, match="not a checkpoint of hmtl_mpi"):
        ckpt.read_newest(str(tmp_path))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ckpt.CheckpointError, match="no checkpoint there"):
        ckpt.read_newest(str(tmp_path / "empty"))


def test_differences_say_what_differs():
    saved = {"seed": 0, "schemes": ["uncoded", "coded"], "topology_sha256": "a"}
    now = {"seed": 3, "schemes": ["uncoded", "coded"], "topology_sha256": "b"}
    assert ckpt.differences(saved, now) == ["seed: 0 in the checkpoint, 3 now",
                                            "topology (its matrix G) differ"]


# --- resumed jobs end as uninterrupted ones ------------------------------------------------

def test_mtl_resumed_from_each_scheme_ends_bit_identical(tmp_path):
    common = ("--iterations", "9")
    assert job(*common, "--report", str(tmp_path / "ref.json")).returncode == 0
    ck = tmp_path / "ck"
    proc = job(*common, "--checkpoint", str(ck), "--checkpoint-every", "4")
    assert proc.returncode == 0, proc.stderr
    names = sorted(p.name for p in ck.iterdir())
    assert names == ["ckpt-1-00000004.hmtl", "ckpt-1-00000008.hmtl"]
    for keep in names[::-1]:                       # resume from the newest, then the one before
        proc = job(*common, "--resume", str(ck), "--report", str(tmp_path / f"{keep}.json"))
        assert proc.returncode == 0, proc.stderr
        assert digests(tmp_path / f"{keep}.json") == digests(tmp_path / "ref.json")
        (ck / keep).unlink()


def test_gd_resumed_ends_bit_identical(tmp_path):
    np.save(tmp_path / "t.npy", tree([4, 4, 4]))
    common = ("--workload", "gd", "--topology", str(tmp_path / "t.npy"), "--iterations", "7",
              "--straggle", "fixed:5=0.3")
    assert job(*common, "--report", str(tmp_path / "ref.json")).returncode == 0
    ck = tmp_path / "ck"
    assert job(*common, "--checkpoint", str(ck), "--checkpoint-every", "3").returncode == 0
    (ck / "ckpt-2-00000006.hmtl").unlink()         # resume hgc from iteration 3
    proc = job(*common, "--resume", str(ck), "--report", str(tmp_path / "res.json"))
    assert proc.returncode == 0, proc.stderr
    assert digests(tmp_path / "res.json") == digests(tmp_path / "ref.json")


def test_a_mismatched_or_damaged_checkpoint_is_refused_before_any_work(tmp_path):
    ck = tmp_path / "ck"
    assert job("--iterations", "5", "--checkpoint", str(ck), "--checkpoint-every", "2",
               "--scheme", "coded").returncode == 0
    proc = job("--iterations", "5", "--scheme", "coded", "--seed", "7", "--resume", str(ck))
    assert proc.returncode == EXIT_BAD_INPUT
    assert "ckpt-0-00000004.hmtl was written by another command: seed: 0 in the checkpoint, " \
           "7 now" in proc.stderr and "Traceback" not in proc.stderr
    newest = ck / "ckpt-0-00000004.hmtl"
    raw = bytearray(newest.read_bytes())
    raw[100] ^= 1
    newest.write_bytes(bytes(raw))
    proc = job("--iterations", "5", "--scheme", "coded", "--resume", str(ck))
    assert proc.returncode == EXIT_BAD_INPUT
    assert f"checkpoint {newest}: fails its checksum" in proc.stderr, proc.stderr
    proc = job("--resume", str(tmp_path / "nothing"))
    assert proc.returncode == EXIT_BAD_INPUT and "no such folder" in proc.stderr


def _sigterm_at(cmd, iteration: int, env) -> subprocess.CompletedProcess:
    """Start ``cmd``, send it SIGTERM once iteration ``iteration`` is printed, wait."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, cwd=str(REPO))
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line or f"iteration {iteration}/" in line:
                break
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


@pytest.mark.mpi
def test_sigterm_under_mpirun_then_resume_ends_bit_identical(tmp_path):
    """The default job, SIGTERM to mpiexec at iteration 12: exit 143 after a checkpoint;
    resumed, it ends with the digests of an uninterrupted run."""
    env = dict(os.environ, PYTHONPATH=str(REPO), MPIEXEC_TIMEOUT="240")
    ck = tmp_path / "ck"
    base = [mpiexec(), "-n", "16", sys.executable, "-m", "hmtl_mpi", "--iterations", "20"]
    stopped = _sigterm_at(base + ["--checkpoint", str(ck)], 12, env)
    assert stopped.returncode == EXIT_TERMINATED, stopped.stderr
    assert "terminated by SIGTERM in iteration" in stopped.stderr
    assert f"resume with --resume {ck}" in stopped.stderr
    resumed = subprocess.run(base + ["--quiet", "--resume", str(ck), "--report",
                                     str(tmp_path / "res.json")],
                             capture_output=True, text=True, timeout=240, env=env, cwd=str(REPO))
    assert resumed.returncode == 0, resumed.stderr
    assert job("--iterations", "20", "--report", str(tmp_path / "ref.json")).returncode == 0
    assert digests(tmp_path / "res.json") == digests(tmp_path / "ref.json")


def test_sigterm_in_process_checkpoints_and_stops(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    ck = tmp_path / "ck"
    cmd = [sys.executable, "-m", "hmtl_mpi", "--transport", "inprocess", "--iterations", "400",
           "--scheme", "coded", "--dataset", "synthetic", "--dim", "20000",
           "--checkpoint", str(ck), "--checkpoint-every", "1000"]
    stopped = _sigterm_at(cmd, 3, env)
    assert stopped.returncode == EXIT_TERMINATED, stopped.stderr
    assert "terminated by SIGTERM" in stopped.stderr and len(list(ck.iterdir())) == 1


def test_sigterm_in_process_without_checkpoint_ends_with_143(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "hmtl_mpi", "--transport", "inprocess", "--iterations", "400",
           "--scheme", "coded", "--dataset", "synthetic", "--dim", "20000"]
    stopped = _sigterm_at(cmd, 3, env)
    assert stopped.returncode == EXIT_TERMINATED, stopped.stderr
    assert "terminated by SIGTERM" in stopped.stderr and "Traceback" not in stopped.stderr
