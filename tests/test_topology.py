"""Topology loading, validation, generators and the two command lines.

Every invalid topology is fed to the real entry point (``python -m hmtl_mpi.plan
--topology BAD`` in a subprocess) and to ``load_topology``: exit code 2, no Python
traceback, and a message that names the problem and the relay/user concerned
(1-based, as the paper numbers them).
"""

from __future__ import annotations

import os
import subprocess
import sys
from fractions import Fraction
from itertools import combinations
from math import comb
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hmtl_mpi.planning.topology import (TopologyError, describe, heterogeneous, load_topology, paper_fig2, random_regular, relay_users, symmetric, user_degrees, user_relays, users_by_degree, validate)

REPO = Path(__file__).resolve().parents[1]
TIMEOUT = 120


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def run(module: str, *args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True,
                          text=True, timeout=TIMEOUT, cwd=cwd or REPO, env=_env())


def run_many(jobs: dict, max_procs: int = 4) -> dict:
    """Run {key: (module, args, cwd)} as real subprocesses, a few at a time.

    The CLI cases are independent and each spends most of its life importing numpy;
    overlapping them keeps this file fast on a busy 2-core machine.
    """
    results, pending, running = {}, list(jobs.items()), []
    while pending or running:
        while pending and len(running) < max_procs:
            key, (module, args, cwd) = pending.pop(0)
            proc = subprocess.Popen([sys.executable, "-m", module, *args], cwd=cwd or REPO,
                                    env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    text=True)
            running.append((key, proc, args))
        key, proc, args = running.pop(0)
        try:
            out, err = proc.communicate(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            err += f"\n[test harness: timed out after {TIMEOUT} s]"
        results[key] = subprocess.CompletedProcess(args, proc.returncode, out, err)
    return results


def assert_clean_failure(proc: subprocess.CompletedProcess, *needles: str) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    for needle in needles:
        assert needle in proc.stderr, (needle, proc.stderr)
    return proc.stderr


# --- invalid topologies: one builder per case --------------------------------------------

def _save(path: Path, arr, **kw) -> Path:
    np.save(path, arr, **kw)
    return path


def _missing(tmp):
    return tmp / "does_not_exist.npy"


def _directory(tmp):
    d = tmp / "a_directory.npy"
    d.mkdir()
    return d


def _text_file(tmp):
    p = tmp / "g.txt"
    p.write_text("1 0 1\n0 1 1\n")
    return p


def _garbage_with_magic(tmp):
    p = tmp / "garbage.npy"
    p.write_bytes(b"\x93NUMPY this is not a header at all")
    return p


def _empty_file(tmp):
    p = tmp / "empty.npy"
    p.write_bytes(b"")
    return p


def _npz(tmp):
    p = tmp / "g.npz"
    np.savez(p, G=paper_fig2())
    return p


def _npz_named_npy(tmp):
    p = tmp / "disguised.npy"
    with open(p, "wb") as fh:
        np.savez(fh, G=paper_fig2())
    return p


# name -> (builder(tmp) -> path, substrings the message must contain, substrings it must not)
INVALID = {
    "missing file": (_missing, ["does_not_exist.npy", "no such topology file"], []),
    "directory": (_directory, ["a_directory.npy", "is a directory"], []),
    "text file": (_text_file, ["g.txt", "not a .npy file"], ["pickle"]),
    "garbage .npy": (_garbage_with_magic, ["garbage.npy", "not a readable .npy"], []),
    "empty file": (_empty_file, ["empty.npy", "not a .npy file"], []),
    "npz archive": (_npz, ["g.npz", ".npz archive"], []),
    "npz named .npy": (_npz_named_npy, ["disguised.npy", ".npz archive"], []),
    "1-D": (lambda t: _save(t / "oned.npy", np.array([1, 0, 1])),
            ["2-D", "shape (3,)"], []),
    "3-D": (lambda t: _save(t / "threed.npy", np.ones((2, 3, 4))),
            ["2-D", "shape (2, 3, 4)"], []),
    "0-D": (lambda t: _save(t / "scalar.npy", np.array(1)), ["2-D", "shape ()"], []),
    "empty shape": (lambda t: _save(t / "noshape.npy", np.zeros((0, 3))), ["empty", "(0, 3)"], []),
    "entry 2": (lambda t: _save(t / "two.npy", np.array([[1, 0, 1], [0, 1, 2]])),
                ["relay 2, user 3", "is 2", "0 or 1"], ["np.int64"]),
    "entry 0.5": (lambda t: _save(t / "half.npy", np.array([[1, 0.5, 1], [0, 1, 1.0]])),
                  ["relay 1, user 2", "0.5", "0 or 1"], []),
    "entry -1": (lambda t: _save(t / "neg.npy", np.array([[1, 0, 1], [-1, 1, 1]])),
                 ["relay 2, user 1", "-1", "0 or 1"], []),
    "entry inf": (lambda t: _save(t / "inf.npy", np.array([[1, 0, 1], [0, 1, np.inf]])),
                  ["relay 2, user 3", "inf"], []),
    "NaN": (lambda t: _save(t / "nan.npy", np.array([[1, 0, 1], [0, 1, np.nan]])),
            ["relay 2, user 3", "NaN"], []),
    "user without relay": (lambda t: _save(t / "lonely.npy", np.array([[1, 0, 0, 1], [0, 1, 0, 1]])),
                           ["user 3 is linked to no relay"], []),
    "relay without user": (lambda t: _save(t / "idle.npy", np.array([[1, 0, 1], [0, 0, 0], [0, 1, 1]])),
                           ["relay 2 is linked to no user"], []),
    "relay linked to all users": (lambda t: _save(t / "full.npy", np.array([[1, 0, 1], [1, 1, 1], [0, 1, 0]])),
                                  ["relay 2 is linked to all 3 users"], []),
    "H = 1": (lambda t: _save(t / "h1.npy", np.array([[1, 1, 1]])),
              ["H = 1", "at least 2 relays"], []),
    "object array": (lambda t: _save(t / "obj.npy", np.array([[1, 0], [0, 1]], dtype=object),
                                     allow_pickle=True),
                     ["obj.npy", "object"], []),
    "string array": (lambda t: _save(t / "str.npy", np.array([["1", "0"], ["0", "1"]])),
                     ["str.npy", "numbers 0/1", "<U1"], []),
    "complex array": (lambda t: _save(t / "cplx.npy", np.array([[1, 0], [0, 1j]])),
                      ["numbers 0/1", "complex"], []),
}


@pytest.mark.parametrize("case", sorted(INVALID))
def test_invalid_topology_load(case, tmp_path):
    build, needles, forbidden = INVALID[case]
    path = build(tmp_path)
    with pytest.raises(TopologyError) as info:
        load_topology(str(path))
    for needle in needles:
        assert needle in str(info.value), (needle, str(info.value))
    for bad in forbidden:
        assert bad not in str(info.value)


@pytest.fixture(scope="module")
def plan_cli_on_invalid(tmp_path_factory):
    """``python -m hmtl_mpi.plan --topology BAD`` for every invalid case (run concurrently)."""
    jobs = {}
    for case, (build, _, _) in INVALID.items():
        d = tmp_path_factory.mktemp("bad")
        jobs[case] = ("hmtl_mpi.plan", ["--topology", str(build(d))], None)
    return run_many(jobs)


@pytest.mark.parametrize("case", sorted(INVALID))
def test_invalid_topology_plan_cli(case, plan_cli_on_invalid):
    _, needles, forbidden = INVALID[case]
    proc = plan_cli_on_invalid[case]
    err = assert_clean_failure(proc, *needles)
    assert err.startswith("error: ")
    assert proc.stdout == ""
    for bad in forbidden:
        assert bad not in err


def test_validate_in_memory():
    with pytest.raises(TopologyError, match="rectangular"):
        validate([[1, 0, 1], [0, 1]])
    with pytest.raises(TopologyError, match="numbers 0/1"):
        validate(np.array([[1, 0], [0, 1]], dtype=object))
    # the first offending user/relay is named, 1-based
    G = np.ones((3, 6), dtype=np.uint8)
    G[:, 4] = 0
    G[1, :] = 0
    G[0, 0] = 0
    with pytest.raises(TopologyError, match=r"user 5 is linked to no relay"):
        validate(G)
    G[0, 4] = 1
    with pytest.raises(TopologyError, match=r"relay 2 is linked to no user"):
        validate(G)
    # bool and float 0/1 are accepted and come back as uint8
    for arr in (paper_fig2().astype(bool), paper_fig2().astype(float)):
        out = validate(arr)
        assert out.dtype == np.uint8 and np.array_equal(out, paper_fig2())


def _violations(G: np.ndarray) -> dict:
    H, K = G.shape
    return {
        "user": [k for k in range(K) if G[:, k].sum() == 0],
        "idle": [i for i in range(H) if G[i].sum() == 0],
        "full": [i for i in range(H) if G[i].sum() == K],
    }


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(1, 6), st.integers(1, 8), st.floats(0.0, 1.0), st.integers(0, 2 ** 32 - 1))
def test_validate_agrees_with_definition(H, K, p, seed):
    """validate accepts exactly the paper's valid topologies and names the culprit."""
    G = (np.random.default_rng(seed).random((H, K)) < p).astype(np.uint8)
    v = _violations(G)
    try:
        out = validate(G)
    except TopologyError as exc:
        msg = str(exc)
        if H < 2:
            assert "at least 2 relays" in msg
        elif v["user"]:
            assert f"user {v['user'][0] + 1} is linked to no relay" in msg
        elif v["idle"]:
            assert f"relay {v['idle'][0] + 1} is linked to no user" in msg
        else:
            assert v["full"] and f"relay {v['full'][0] + 1} is linked to all {K} users" in msg
        return
    assert H >= 2 and not any(v.values())
    assert np.array_equal(out, G)


# --- generators -----------------------------------------------------------------------------

PAPER_N = [{1, 3, 5, 6, 8, 9, 10}, {1, 2, 3, 4, 10}, {2, 4, 5}, {6, 7, 9, 10}, {1, 2, 6, 7, 8}]


def test_paper_fig2_matches_paper():
    G = load_topology("paper-fig2")
    assert G.shape == (5, 10) and G.dtype == np.uint8
    assert [set((relay_users(G)[i] + 1).tolist()) for i in range(5)] == PAPER_N
    I = {z: set((u + 1).tolist()) for z, u in users_by_degree(G).items()}
    assert I == {1: set(), 2: {3, 4, 5, 7, 8, 9}, 3: {1, 2, 6, 10}, 4: set()}
    assert [set((r + 1).tolist()) for r in user_relays(G)][0] == {1, 2, 5}
    assert np.array_equal(paper_fig2(), G)
    text = describe(G)
    assert "N_1 = {1, 3, 5, 6, 8, 9, 10}" in text and "I_3 = {1, 2, 6, 10}" in text
    assert "1 + H + K = 16" in text


@pytest.mark.parametrize("K,H,r", [(2, 2, 1), (10, 5, 1), (10, 5, 3), (12, 5, 4), (30, 8, 3),
                                   (7, 3, 2), (200, 20, 7)])
def test_random_regular(K, H, r):
    G = random_regular(K, H, r, seed=11)
    assert G.shape == (H, K)
    assert np.array_equal(validate(G), G)
    assert (user_degrees(G) == r).all()
    assert np.array_equal(G, random_regular(K, H, r, seed=11))          # reproducible
    if comb(H, r) > 1 and K > 3:
        others = [random_regular(K, H, r, seed=s) for s in range(12, 15)]
        assert any(not np.array_equal(G, o) for o in others)             # seeds matter


@pytest.mark.parametrize("K,H,r,match", [(10, 5, 0, "r = 0"), (10, 5, 5, "r = 5"),
                                         (1, 5, 2, "K = 1"), (-3, 5, 2, "K = -3"),
                                         (10, 1, 1, "r = 1")])
def test_random_regular_errors(K, H, r, match):
    with pytest.raises(TopologyError, match=match):
        random_regular(K, H, r)


@pytest.mark.parametrize("H,r,per_group", [(2, 1, 1), (3, 1, 2), (4, 2, 1), (4, 2, 3), (5, 2, 1),
                                           (5, 3, 2), (6, 3, 1), (6, 5, 2), (7, 2, 1)])
def test_symmetric(H, r, per_group):
    G = symmetric(H, r, per_group)
    K = comb(H, r) * per_group
    assert G.shape == (H, K)
    assert np.array_equal(validate(G), G)
    assert (user_degrees(G) == r).all()
    seen = [tuple(np.flatnonzero(G[:, k])) for k in range(K)]
    for subset in combinations(range(H), r):
        assert seen.count(subset) == per_group
    # groups are contiguous: users g*P .. g*P+P-1 share one relay set
    for g in range(comb(H, r)):
        assert len(set(seen[g * per_group:(g + 1) * per_group])) == 1
    assert (G.sum(axis=1) == comb(H - 1, r - 1) * per_group).all()


@pytest.mark.parametrize("H,r,per_group", [(5, 0, 1), (5, 5, 1), (5, 2, 0), (1, 1, 1)])
def test_symmetric_errors(H, r, per_group):
    with pytest.raises(TopologyError):
        symmetric(H, r, per_group)


def _het_ok(K, r, d):
    hi, lo = (Fraction(r, 4) + d) * K, (Fraction(r, 4) - d) * K
    return (hi.denominator == 1 and lo.denominator == 1 and 1 <= min(hi, lo)
            and max(hi, lo) <= K - 1), int(hi), int(lo)


@pytest.mark.parametrize("K", [8, 16, 20, 40, 48])
@pytest.mark.parametrize("r", [1, 2, 3])
@pytest.mark.parametrize("d", [Fraction(0), Fraction(1, 8), Fraction(1, 4), Fraction(3, 8),
                               Fraction(-1, 8), Fraction(1, 20), Fraction(1, 2)])
def test_heterogeneous_degrees(K, r, d):
    ok, hi, lo = _het_ok(K, r, d)
    if not ok:
        with pytest.raises(TopologyError, match="heterogeneous"):
            heterogeneous(K, r, float(d))
        return
    G = heterogeneous(K, r, float(d), seed=5)
    assert G.shape == (4, K)
    assert np.array_equal(validate(G), G)
    assert G.sum(axis=1).tolist() == [hi, hi, lo, lo]
    assert (user_degrees(G) == r).all()
    assert np.array_equal(G, heterogeneous(K, r, float(d), seed=5))


def test_heterogeneous_error_messages():
    with pytest.raises(TopologyError, match="whole numbers"):
        heterogeneous(10, 2, 0.15)           # 6.5 and 3.5 users
    with pytest.raises(TopologyError, match=r"must lie in 1\.\.K-1"):
        heterogeneous(8, 2, 0.5)             # relays 1, 2 would have all 8 users
    with pytest.raises(TopologyError, match=r"must lie in 1\.\.K-1"):
        heterogeneous(8, 1, 0.25)            # relays 3, 4 would have no user
    with pytest.raises(TopologyError, match="r = 4"):
        heterogeneous(8, 4, 0.0)
    # the paper's own grid (Fig. 7: K = 30, d = 1/20) gives 16.5 users: rejected, not rounded
    with pytest.raises(TopologyError, match="whole numbers"):
        heterogeneous(30, 2, 0.05)


# --- topology command line -------------------------------------------------------------------

def test_topology_cli_writes_loadable_files(tmp_path):
    gen = [
        (["paper-fig2"], paper_fig2()),
        (["random", "--users", "12", "--relays", "5", "--r", "2", "--seed", "3"],
         random_regular(12, 5, 2, seed=3)),
        (["symmetric", "--relays", "4", "--r", "2", "--per-group", "3"], symmetric(4, 2, 3)),
        (["heterogeneous", "--users", "8", "--r", "2", "--d", "0.125", "--seed", "1"],
         heterogeneous(8, 2, 0.125, seed=1)),
    ]
    # no suffix on -o: .npy is added
    jobs = {j: ("hmtl_mpi.topology", [*args, "-o", str(tmp_path / f"g{j}")], None)
            for j, (args, _) in enumerate(gen)}
    jobs["help"] = ("hmtl_mpi.topology", ["--help"], None)
    jobs["show"] = ("hmtl_mpi.topology", ["show", "paper-fig2"], None)
    res = run_many(jobs)
    for j, (args, expected) in enumerate(gen):
        proc = res[j]
        assert proc.returncode == 0, proc.stderr
        assert "Traceback" not in proc.stderr
        out = tmp_path / f"g{j}.npy"
        assert np.array_equal(load_topology(str(out)), expected), args
        assert f"wrote {out}" in proc.stdout
    assert res["help"].returncode == 0
    for kind in ("paper-fig2", "random", "symmetric", "heterogeneous", "show"):
        assert kind in res["help"].stdout
    assert res["show"].returncode == 0 and "I_2 = {3, 4, 5, 7, 8, 9}" in res["show"].stdout
    proc = run("hmtl_mpi.topology", "show", str(tmp_path / "g0.npy"))
    assert proc.returncode == 0 and "N_3 = {2, 4, 5}" in proc.stdout


TOPOLOGY_CLI_ERRORS = [
    (["heterogeneous", "--users", "10", "--r", "2", "--d", "0.15", "-o", "x.npy"], "whole numbers"),
    (["heterogeneous", "--users", "8", "--r", "2", "--d", "0.5", "-o", "x.npy"], "1..K-1"),
    (["random", "--users", "10", "--relays", "4", "--r", "4", "-o", "x.npy"], "r = 4"),
    (["random", "--users", "-1", "--relays", "4", "--r", "2", "-o", "x.npy"], "K = -1"),
    (["symmetric", "--relays", "4", "--r", "2", "--per-group", "0", "-o", "x.npy"], "per_group"),
    (["random", "--users", "10"], "--relays"),
    (["paper-fig2"], "-o"),
    (["paper-fig2", "-o", "/nonexistent_dir_for_hmtl/g.npy"], "cannot write"),
    (["show"], "PATH_OR_NAME"),
    (["show", "/nonexistent_for_hmtl.npy"], "no such topology file"),
    (["torus"], "invalid choice"),
    (["show", "relay-without-user"], "relay 2 is linked to no user"),
]


def test_topology_cli_errors(tmp_path):
    INVALID["relay without user"][0](tmp_path)        # writes idle.npy
    (tmp_path / "idle.npy").rename(tmp_path / "relay-without-user")
    res = run_many({j: ("hmtl_mpi.topology", args, tmp_path)
                    for j, (args, _) in enumerate(TOPOLOGY_CLI_ERRORS)})
    for j, (args, needle) in enumerate(TOPOLOGY_CLI_ERRORS):
        proc = res[j]
        assert proc.returncode == 2, (args, proc.returncode, proc.stderr)
        assert "Traceback" not in proc.stderr, (args, proc.stderr)
        assert needle in proc.stderr, (args, needle, proc.stderr)
    assert not (tmp_path / "x.npy").exists()


def test_show_into_a_closed_pipe_is_not_an_error():
    """``python -m hmtl_mpi.topology show G | head -1``: the closed pipe is no traceback."""
    repo = Path(__file__).resolve().parent.parent
    proc = subprocess.Popen([sys.executable, "-m", "hmtl_mpi.topology", "show", "paper-fig2"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=str(repo))
    proc.stdout.close()                 # the reader is gone before anything is written
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 0 and "Traceback" not in err and "BrokenPipe" not in err, err
