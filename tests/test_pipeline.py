"""The pipelined coded exchange (``--segments``): lossless, the same payload bytes plus the
counted headers and escapes, the option's refusals (hmtl_mpi.schemes.pipelined)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hmtl_mpi.codes import coding
from hmtl_mpi.job.config import JobConfig
from hmtl_mpi.job.runtime import run_inprocess
from hmtl_mpi.job.segments import pipeline_seconds
from hmtl_mpi.learning.straggle import parse as straggle
from hmtl_mpi.planning.topology import load_topology, random_regular
from hmtl_mpi.schemes import get
from hmtl_mpi.schemes.pipelined import granule, segment_bounds
from hmtl_mpi.vocabulary import EXIT_BAD_INPUT

from mpi_util import run_job

REPO = Path(__file__).resolve().parent.parent


def job_report(tmp_path, name, **options) -> dict:
    path = tmp_path / f"{name}.json"
    config = JobConfig(quiet=True, report=str(path), straggle=straggle("none"), **options)
    assert run_inprocess(config) == 0
    return json.loads(path.read_text())


def payload_bytes(scheme, dim) -> tuple:
    """The unsegmented exchange's payload bytes per iteration: (uplink, broadcast)."""
    code = scheme.code
    up = sum(2 * coding.uplink_symbols(code, b, i, dim)
             for b in range(len(code.blocks)) for i in range(scheme.H))
    down = sum(2 * int(np.prod(coding.downlink_shape(code, b, dim)))
               for b in range(len(code.blocks)))
    return up, down


def test_segments_cut_whole_units_and_pad_only_the_last():
    for topology in ("paper-fig2", "example-a"):
        G = load_topology(topology)
        for name in ("coded", "joint"):
            code = get(name).plan(G).code
            m = granule(code)
            assert all((4 * m) % int(b.F) == 0 for b in code.blocks)
            for dim, J in ((701, 1), (701, 2), (701, 3), (701, 7), (5, 9), (64, 64)):
                bounds = segment_bounds(code, dim, J)
                assert bounds[0][0] == 0 and bounds[-1][1] == dim
                assert all(a < b for a, b in bounds)
                assert all(b == c for (_, b), (c, _) in zip(bounds, bounds[1:]))
                assert all((b - a) % m == 0 for a, b in bounds[:-1])
                assert len(bounds) == min(J, -(-dim // m))
                whole = sum(int(blk.R) * coding.unit_symbols(dim, int(blk.F))
                            for blk in code.blocks)
                cut = sum(int(blk.R) * coding.unit_symbols(b - a, int(blk.F))
                          for a, b in bounds for blk in code.blocks)
                assert cut == whole          # the same payload, padding included


@pytest.fixture(scope="module")
def random_topology(tmp_path_factory):
    path = tmp_path_factory.mktemp("g") / "random.npy"
    np.save(path, random_regular(9, 4, 2, seed=3))
    return str(path)


@pytest.mark.parametrize("topology", ["paper-fig2", "random"])
def test_every_segment_count_gives_the_same_ivs_models_and_payload(tmp_path, topology,
                                                                   random_topology):
    topology = random_topology if topology == "random" else topology
    dim, iterations = 701, 2
    runs = {}
    for J in (1, 2, 3, 7):
        rep = job_report(tmp_path, f"j{J}", topology=topology, dataset="synthetic", dim=dim,
                         iterations=iterations, schemes=("coded", "joint"),
                         scheme_arg="coded,joint", segments=J)
        assert rep["model_digests_equal"] is True
        runs[J] = rep["runs"]
    G = load_topology(topology)
    H = G.shape[0]
    for name in ("coded", "joint"):
        scheme = get(name).plan(G)
        up, down = payload_bytes(scheme, dim)
        nb = len(scheme.code.blocks)
        digests = {runs[J][name]["model_digest"] for J in runs}
        assert len(digests) == 1                           # bit-identical models
        for J, run in ((J, runs[J][name]) for J in runs):
            assert run["ivs_bit_exact"] is True and run["models_delivered_intact"] is True
            assert run["segments"] == J
            its = run["iterations"]
            sent = {c: sum(it["bytes"][c] for it in its) for c in its[0]["bytes"]}
            if J == 1:
                assert "segment_values" not in run
                continue
            assert len(run["segment_values"]) == J and sum(run["segment_values"]) == dim
            assert run["downlink_header_bytes"] == 8 * nb * J
            esc = run["escape_bytes"]
            # measured = planned payload + headers + escapes, per link class
            assert sent["relay_to_server"] == iterations * up + esc["relay_to_server"]
            assert sent["server_to_relay"] == (iterations * (down + 8 * nb * J)
                                               + esc["server_to_relay"])
            assert sent["relay_to_relay"] == (H - 1) * sent["server_to_relay"]
            assert all(it["seconds"]["exchange"] > 0 for it in its)
            assert all(it["seconds"]["encode"] == 0 for it in its)


def test_the_pipeline_model():
    st = {"encode": 1.0, "uplink": 2.0, "combine": 0.5, "broadcast": 1.0, "forward": 0.5,
          "decode": 3.0}
    assert pipeline_seconds(st, 0.01, 0.0, 1) == pytest.approx(8.01)
    # many segments, no overhead: the busiest resource (the relays' CPU: 4 s) alone
    assert pipeline_seconds(st, 0.0, 0.0, 10 ** 6) == pytest.approx(4.0, rel=1e-5)
    # an overhead per segment makes too many segments lose
    assert pipeline_seconds(st, 0.0, 0.1, 100) > pipeline_seconds(st, 0.0, 0.1, 6)


def cli(*args, timeout=120):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    for key in ("PMI_RANK", "PMI_SIZE", "OMPI_COMM_WORLD_RANK", "PMIX_RANK", "SLURM_PROCID"):
        env.pop(key, None)
    return subprocess.run([sys.executable, "-m", "hmtl_mpi", "--transport", "inprocess",
                           "--dataset", "synthetic", "--iterations", "1", "--quiet", *args],
                          capture_output=True, text=True, timeout=timeout, env=env)


@pytest.mark.parametrize("args, words", [
    (("--segments", "0"), "segments must be 1 .. 4096 or auto, got 0"),
    (("--segments", "two"), "expected a whole number of segments or auto, got 'two'"),
    (("--segments", "5000"), "segments must be 1 .. 4096 or auto, got 5000"),
    (("--segments", "4", "--scheme", "uncoded"), "none of the schemes uncoded has a coded"),
    (("--segments", "4", "--scheme", "auto"), "does not go with --scheme auto"),
    (("--segments", "4", "--scheme", "coded", "--relay-stragglers", "1"),
     "does not go with --relay-stragglers"),
    (("--segments", "4", "--downlink", "bcast"), "does not go with --downlink bcast"),
    (("--segments", "4", "--on-failure", "continue"), "does not go with --on-failure continue"),
    (("--segments", "auto"), "--segments auto chooses from the measured links: it needs "
                             "--transport mpi"),
])
def test_bad_segments_exit_2_with_the_reason(args, words):
    proc = cli(*args)
    assert proc.returncode == EXIT_BAD_INPUT, proc.stderr
    assert words in proc.stderr and "Traceback" not in proc.stderr


def test_more_segments_than_granules_are_fewer_segments(tmp_path):
    rep = job_report(tmp_path, "few", topology="paper-fig2", dataset="synthetic", dim=3,
                     iterations=1, schemes=("coded",), scheme_arg="coded", segments=50)
    run = rep["runs"]["coded"] if "runs" in rep else rep
    assert run["ivs_bit_exact"] is True and run["segments"] == len(run["segment_values"]) <= 3
    assert "granules" in run["segments_reason"]


@pytest.mark.mpi
def test_mpirun_with_four_segments_is_lossless(tmp_path):
    report = tmp_path / "r.json"
    proc, _ = run_job(16, "--topology", "paper-fig2", "--dataset", "synthetic", "--dim", "4099",
                      "--iterations", "2", "--scheme", "both", "--segments", "4", "--quiet",
                      "--report", str(report), timeout=240)
    assert proc.returncode == 0, proc.stderr
    rep = json.loads(report.read_text())
    assert rep["model_digests_equal"] is True
    coded = rep["runs"]["coded"]
    assert coded["segments"] == 4 and coded["ivs_bit_exact"] is True
    assert coded["downlink_method"].startswith("pipelined")


def test_a_checkpoint_resumes_bit_identical_with_or_without_segments(tmp_path):
    common = ("--iterations", "5", "--scheme", "coded", "--dim", "301")
    ref = tmp_path / "ref.json"
    assert cli(*common, "--report", str(ref)).returncode == 0
    ck = tmp_path / "ck"
    proc = cli(*common, "--segments", "3", "--checkpoint", str(ck), "--checkpoint-every", "2")
    assert proc.returncode == 0, proc.stderr
    digest = json.loads(ref.read_text())["model_digest"]
    for J in ("3", "1"):                  # J changes no state between iterations
        out = tmp_path / f"resumed{J}.json"
        proc = cli(*common, "--segments", J, "--resume", str(ck), "--report", str(out))
        assert proc.returncode == 0, proc.stderr
        rep = json.loads(out.read_text())
        assert rep["model_digest"] == digest and rep["segments"] == int(J)


@pytest.mark.parametrize("options", [
    dict(topology="example-a", layout="flat", dim=97, schemes=("uncoded", "joint", "coded"),
         scheme_arg="uncoded,joint,coded"),
    dict(topology="paper-fig2", users_per_rank=3, dim=301, schemes=("uncoded", "coded"),
         scheme_arg="both", sync="phase"),
])
def test_segments_with_the_flat_layout_users_per_rank_and_phase_sync(tmp_path, options):
    rep = job_report(tmp_path, "other", dataset="synthetic", iterations=2, segments=5, **options)
    assert rep["model_digests_equal"] is True
    for name, run in rep["runs"].items():
        assert run["ivs_bit_exact"] is True and run["models_delivered_intact"] is True
        assert run.get("segments", 1) == (1 if name == "uncoded" else 5)


def test_a_broadcast_shorter_than_h_bytes_sends_no_empty_piece(tmp_path):
    """H = 20 relays that each know 4 of 5 users: a one-value segment's broadcast is 16
    bytes, so relays 17-20 get no piece of it (an empty message would never count as
    arrived: the job hung on it before)."""
    G = np.ones((20, 5), dtype=np.uint8)
    for i in range(20):
        G[i, i % 5] = 0
    np.save(tmp_path / "wide.npy", G)
    rep = job_report(tmp_path, "wide", topology=str(tmp_path / "wide.npy"), dataset="synthetic",
                     dim=3, iterations=2, schemes=("uncoded", "coded"), scheme_arg="both",
                     segments=3)
    assert rep["model_digests_equal"] is True
    assert rep["runs"]["coded"]["segments"] == 3 and rep["runs"]["coded"]["ivs_bit_exact"]
