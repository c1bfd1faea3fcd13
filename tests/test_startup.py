"""Start-up: under PYTHONDONTWRITEBYTECODE the package's bytecode is kept in the job's cache
folder (hmtl_mpi/job/bytecode.py), never in the source tree, and read back by the next job."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
JOB = ["--transport", "inprocess", "--scheme", "uncoded", "--dataset", "synthetic", "--dim", "8",
       "--iterations", "1", "--quiet"]


def job(cache: str, **more) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONDONTWRITEBYTECODE="1", HMTL_CACHE=cache,
               **more)
    for key in ("PMI_RANK", "PMI_SIZE", "PYTHONPYCACHEPREFIX"):
        env.pop(key, None)
    return subprocess.run([sys.executable, "-m", "hmtl_mpi", *JOB], capture_output=True,
                          text=True, timeout=300, env=env, cwd=str(REPO))


def pycache_dirs() -> set:
    return {str(p) for p in (REPO / "hmtl_mpi").rglob("__pycache__")}


def test_the_package_is_compiled_once_into_the_cache_folder(tmp_path):
    before = pycache_dirs()
    proc = job(str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    compiled = {p.relative_to(tmp_path / "bytecode").as_posix(): p.stat().st_mtime_ns
                for p in (tmp_path / "bytecode").rglob("*.pyc")}
    ours = [name for name in compiled if "/hmtl_mpi/" in name]
    assert any(name.endswith("hmtl_mpi/job/runtime.cpython-%d%d.pyc" % sys.version_info[:2])
               for name in ours)
    assert any("hmtl_mpi/schemes/" in name for name in ours)
    assert not any("/numpy/" in name for name in compiled)     # NumPy reads its own
    assert pycache_dirs() == before                           # the source tree untouched
    proc = job(str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    again = {p.relative_to(tmp_path / "bytecode").as_posix(): p.stat().st_mtime_ns
             for p in (tmp_path / "bytecode").rglob("*.pyc")}
    assert again == compiled                                  # read back, not rewritten


def test_no_bytecode_kept_when_the_cache_is_turned_off(tmp_path):
    before = pycache_dirs()
    proc = job("", XDG_CACHE_HOME=str(tmp_path / "xdg"), HOME=str(tmp_path / "home"))
    assert proc.returncode == 0, proc.stderr
    assert pycache_dirs() == before
    assert list(tmp_path.iterdir()) == []
