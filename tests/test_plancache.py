"""The plan and code cache (hmtl_mpi/job/plancache.py): hits, and every way it must miss."""

from __future__ import annotations

import hashlib

import numpy as np

from hmtl_mpi.job import plancache
from hmtl_mpi.planning.topology import cyclic, load_topology
from hmtl_mpi.schemes import get


def buffer(scheme) -> bytes:
    return np.asarray(scheme.to_buffer(), dtype=np.uint8).tobytes()


def test_a_plan_is_stored_once_and_then_served_identical(tmp_path):
    G = load_topology("paper-fig2")
    first, hit = plancache.plan(get("coded"), G, root=tmp_path, seed=0)
    assert hit is False and len(list(tmp_path.iterdir())) == 1
    again, hit = plancache.plan(get("coded"), G, root=tmp_path, seed=0)
    assert hit is True and buffer(again) == buffer(first)
    assert again.planned_loads == first.planned_loads == (8.5, 7)
    assert again.coding_work(1000) == first.coding_work(1000)


def test_another_topology_or_option_is_planned_anew(tmp_path):
    G = load_topology("paper-fig2")
    plancache.plan(get("coded"), G, root=tmp_path, seed=0)
    other, hit = plancache.plan(get("coded"), cyclic(5, 2), root=tmp_path, seed=0)
    assert hit is False and other.K == 5
    _, hit = plancache.plan(get("coded"), G, root=tmp_path, seed=1)
    assert hit is False
    _, hit = plancache.plan(get("joint"), G, root=tmp_path, seed=0)
    assert hit is False
    assert len(list(tmp_path.iterdir())) == 4
    for seed in (0, 1):
        assert plancache.plan(get("coded"), G, root=tmp_path, seed=seed)[1] is True


def test_a_changed_package_source_is_planned_anew(tmp_path, monkeypatch):
    G = load_topology("paper-fig2")
    plancache.plan(get("coded"), G, root=tmp_path, seed=0)
    monkeypatch.setattr(plancache, "source_digest", lambda: "another version")
    assert plancache.plan(get("coded"), G, root=tmp_path, seed=0)[1] is False


def test_a_damaged_file_is_planned_anew_and_rewritten(tmp_path):
    G = load_topology("paper-fig2")
    fresh, _ = plancache.plan(get("coded"), G, root=tmp_path, seed=0)
    (path,) = tmp_path.iterdir()
    good = path.read_bytes()
    damaged = [good[:-1] + bytes([good[-1] ^ 1]),     # one bit of the buffer: checksum
               good[:20],                              # truncated
               b"not a plan at all",
               b""]
    for data in damaged:
        path.write_bytes(data)
        again, hit = plancache.plan(get("coded"), G, root=tmp_path, seed=0)
        assert hit is False and buffer(again) == buffer(fresh)
        assert path.read_bytes() == good                # rewritten whole
    # a whole file under another key (renamed): not served
    key = plancache.plan_key(get("coded"), G, {"seed": 3})
    path.rename(plancache.path_of(key, tmp_path))
    assert plancache.plan(get("coded"), G, root=tmp_path, seed=3)[1] is False


def test_a_checksummed_buffer_that_does_not_load_is_planned_anew(tmp_path):
    G = load_topology("paper-fig2")
    cls = get("coded")
    key = plancache.plan_key(cls, G, {"seed": 0})
    path = plancache.path_of(key, tmp_path)

    body = key.encode() + bytes(range(7))                # checksum right, buffer wrong
    path.write_bytes(plancache.MAGIC + hashlib.sha256(body).digest() + body)
    scheme, hit = plancache.plan(cls, G, root=tmp_path, seed=0)
    assert hit is False and scheme.planned_loads == (8.5, 7)


def test_no_cache_when_turned_off_unwritable_or_not_worth_it(tmp_path, monkeypatch):
    G = load_topology("paper-fig2")
    monkeypatch.setenv("HMTL_CACHE", "")
    assert plancache.plan(get("coded"), G, seed=0)[1] is False
    assert plancache.plan(get("coded"), G, seed=0)[1] is False
    blocker = tmp_path / "file"
    blocker.write_text("")
    scheme, hit = plancache.plan(get("coded"), G, root=blocker / "sub", seed=0)
    assert hit is False and scheme.planned_loads == (8.5, 7)
    monkeypatch.setenv("HMTL_CACHE", str(tmp_path / "c"))
    plancache.plan(get("uncoded"), G, seed=0)
    assert not (tmp_path / "c").exists()               # uncoded plans in no time
    plancache.plan(get("coded"), G, seed=0)
    assert len(list((tmp_path / "c").iterdir())) == 1
