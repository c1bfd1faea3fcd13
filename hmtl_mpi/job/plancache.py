"""Plans and codes cached per topology, so that a job does not plan what it planned before.

Planning the coded schemes means importing cvxpy (about 0.7 s), solving LPs and
building the code, on rank 0 while every other rank waits. A scheme that says its
plan is worth keeping (:attr:`hmtl_mpi.schemes.base.Scheme.cache_plan`) is stored,
as the very buffer every rank receives (:meth:`~hmtl_mpi.schemes.base.Scheme.to_buffer`),
in the job's cache folder (:func:`hmtl_mpi.learning.mocha.cache_root`:
``$HMTL_CACHE``, else ``$XDG_CACHE_HOME/hmtl_mpi`` or ``~/.cache/hmtl_mpi``;
``HMTL_CACHE=`` turns caching off).

The key is a SHA-256 of everything the plan depends on: the scheme and workload,
the topology matrix G, the seed and the planning options (stragglers, partitions,
the straggle model), and the source of the package itself (every ``.py`` file but
the benchmarks), so that a change of planner or code format is never served an old
plan. File ``plan-KEY.hmtl``: ``HMTLPLAN``, the SHA-256 of the rest, the key, then
the buffer. A file that fails its checksum, holds another key or does not load is
planned anew and rewritten, never an error; writes are atomic (a temporary file
renamed), and a cache that cannot be written is skipped.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from pathlib import Path

import numpy as np

from ..learning.mocha import cache_root

MAGIC = b"HMTLPLAN"
PACKAGE = Path(__file__).resolve().parents[1]


@functools.lru_cache(maxsize=1)
def source_digest() -> str:
    """SHA-256 of the package's source (every ``.py`` but the benchmarks'), by path."""
    h = hashlib.sha256()
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        if rel.startswith("bench/"):
            continue
        h.update(rel.encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def plan_key(cls, G: np.ndarray, options: dict) -> str:
    """The cache key of ``cls``'s plan for G under ``options`` (hex SHA-256)."""
    G = np.ascontiguousarray(G, dtype=np.uint8)
    text = json.dumps({"scheme": cls.name, "workload": cls.workload, "shape": list(G.shape),
                       "G": hashlib.sha256(G.tobytes()).hexdigest(), "source": source_digest(),
                       "options": {k: str(v) for k, v in sorted(options.items())}},
                      sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def path_of(key: str, root: Path | None = None) -> Path | None:
    root = cache_root() if root is None else root
    return None if root is None else Path(root) / f"plan-{key[:40]}.hmtl"


def load(cls, G: np.ndarray, key: str, path: Path):
    """The scheme stored at ``path`` under ``key``, or None (missing, damaged, another key,
    or a buffer that does not load)."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    head = len(MAGIC) + 32
    if (len(data) < head + 64 or data[:len(MAGIC)] != MAGIC
            or hashlib.sha256(data[head:]).digest() != data[len(MAGIC):head]
            or data[head:head + 64] != key.encode()):
        return None
    try:
        return cls.from_buffer(G, np.frombuffer(data[head + 64:], dtype=np.uint8).copy())
    except Exception:       # noqa: BLE001 - a buffer that does not load is planned anew
        return None


def store(scheme, key: str, path: Path) -> None:
    """Write ``scheme``'s buffer under ``key`` atomically; a cache that cannot be written
    is skipped."""
    body = key.encode() + np.ascontiguousarray(scheme.to_buffer(), dtype=np.uint8).tobytes()
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(MAGIC + hashlib.sha256(body).digest() + body)
        os.replace(tmp, path)
    except OSError:
        try:
            tmp.unlink()
        except OSError:
            pass


def plan(cls, G: np.ndarray, root: Path | None = None, **options):
    """``cls.plan(G, **options)``, from the cache when it was planned before. Returns
    (scheme, whether it came from the cache). Raises what ``cls.plan`` raises."""
    if not cls.cache_plan:
        return cls.plan(G, **options), False
    key = plan_key(cls, G, options)
    path = path_of(key, root)
    if path is not None:
        scheme = load(cls, G, key, path)
        if scheme is not None:
            return scheme, True
    scheme = cls.plan(G, **options)
    if path is not None:
        store(scheme, key, path)
    return scheme, False
