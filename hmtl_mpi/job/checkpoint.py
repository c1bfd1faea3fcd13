"""Checkpoints: the complete state of a job, written atomically, checksummed, resumed exactly.

A checkpoint is taken between two iterations of one scheme's run, on every rank at
once: each rank packs its part's state (its learner's and its own, see
:meth:`hmtl_mpi.schemes.base.Part.state`) into bytes, rank 0 gathers them and writes
one file holding

* a header (JSON): the command's fingerprint (what must match to resume: topology,
  dataset, workload, layout, schemes, seed, rank count, iterations and every option
  that changes the numbers, plus a digest of every scheme's plan and code), the
  position (the scheme run and the next iteration), the reports of the schemes
  already run and the records of the iterations done in this one;
* every rank's state.

File format: ``HMTLCKPT`` (8 bytes), the SHA-256 of the rest (32 bytes), then an
``.npz`` archive (no pickles). It is written to a temporary file, flushed with
``fsync``, renamed over its final name and the folder is synced: a crash mid-write
leaves the previous checkpoint whole. Names are ``ckpt-S-IIIIIIII.hmtl`` (scheme S,
next iteration I); the two newest are kept.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re

import numpy as np

MAGIC = b"HMTLCKPT"
NAME = re.compile(r"^ckpt-(\d+)-(\d{8})\.hmtl$")
KEEP = 2


class CheckpointError(Exception):
    """A checkpoint that cannot be used; the message names the file and why."""


def pack(state: dict) -> np.ndarray:
    """A dict of arrays as one uint8 buffer (an .npz archive, no pickles)."""
    out = io.BytesIO()
    np.savez(out, **{key: np.asarray(value) for key, value in state.items()})
    return np.frombuffer(out.getvalue(), dtype=np.uint8)


def unpack(buf) -> dict:
    with np.load(io.BytesIO(bytes(np.asarray(buf, dtype=np.uint8))), allow_pickle=False) as z:
        return {key: z[key] for key in z.files}


def fingerprint(config, G: np.ndarray, schemes: list, ranks: int) -> dict:
    """What a resumed command must share with the checkpointed one (``--users-per-rank``
    only when above 1, so that checkpoints written before it existed still match)."""
    out = {
        "topology_sha256": hashlib.sha256(np.ascontiguousarray(G, dtype=np.uint8).tobytes()
                                          + str(G.shape).encode()).hexdigest(),
        "topology": str(config.topology), "ranks": ranks, "workload": config.workload,
        "layout": config.layout, "dataset": config.dataset, "dim": config.dim,
        "schemes": list(config.schemes), "seed": config.seed, "iterations": config.iterations,
        "lam": config.lam, "inner": config.inner, "partitions": config.partitions,
        "stragglers": list(config.stragglers), "straggle": config.straggle.text,
        "downlink": config.downlink,
        "plans_sha256": [hashlib.sha256(s.to_buffer().tobytes()).hexdigest() for s in schemes],
    }
    if config.users_per_rank > 1:
        out["users_per_rank"] = config.users_per_rank
    return out


def differences(saved: dict, now: dict) -> list:
    """The fingerprint fields that differ, as readable text ("seed: 0 in the checkpoint, 3
    now")."""
    names = {"topology_sha256": "topology (its matrix G)", "plans_sha256": "plans and codes"}
    out = []
    for key in now:
        if saved.get(key) != now[key]:
            if key.endswith("sha256"):
                out.append(f"{names[key]} differ")
            else:
                out.append(f"{key}: {saved.get(key)!r} in the checkpoint, {now[key]!r} now")
    return out


def file_name(scheme: int, iteration: int) -> str:
    return f"ckpt-{scheme}-{iteration:08d}.hmtl"


def write(folder: str, header: dict, states: list) -> str:
    """Rank 0: write the checkpoint atomically (see the module doc); returns its path."""
    os.makedirs(folder, exist_ok=True)
    arrays = {"header": np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)}
    for rank, buf in enumerate(states):
        arrays[f"rank{rank}"] = np.asarray(buf, dtype=np.uint8)
    body = io.BytesIO()
    np.savez(body, **arrays)
    body = body.getvalue()
    path = os.path.join(folder, file_name(header["scheme_index"], header["next_iteration"]))
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "wb") as fh:
            fh.write(MAGIC + hashlib.sha256(body).digest() + body)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    try:
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass
    for old in checkpoints(folder)[:-KEEP]:
        try:
            os.unlink(old)
        except OSError:
            pass
    return path


def checkpoints(folder: str) -> list:
    """The checkpoint files of ``folder``, oldest first."""
    try:
        names = [n for n in os.listdir(folder) if NAME.match(n)]
    except OSError:
        return []
    names.sort(key=lambda n: tuple(int(x) for x in NAME.match(n).groups()))
    return [os.path.join(folder, n) for n in names]


def read_newest(folder: str) -> tuple:
    """(path, header, per-rank state buffers) of the newest checkpoint in ``folder``;
    raises :class:`CheckpointError` when there is none or it fails its checksum."""
    if not os.path.isdir(folder):
        raise CheckpointError(f"--resume {folder}: no such folder")
    found = checkpoints(folder)
    if not found:
        raise CheckpointError(f"--resume {folder}: no checkpoint there (files ckpt-*.hmtl)")
    path = found[-1]
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except OSError as exc:
        raise CheckpointError(f"checkpoint {path}: cannot be read ({exc.strerror})") from None
    if raw[:8] != MAGIC or len(raw) < 40:
        raise CheckpointError(f"checkpoint {path}: not a checkpoint of hmtl_mpi (bad header)")
    body = raw[40:]
    if hashlib.sha256(body).digest() != raw[8:40]:
        raise CheckpointError(f"checkpoint {path}: fails its checksum (SHA-256): the file is "
                              f"damaged; delete it to resume from the one before")
    try:
        with np.load(io.BytesIO(body), allow_pickle=False) as z:
            header = json.loads(bytes(z["header"]).decode())
            states = [z[f"rank{r}"] for r in range(int(header["ranks"]))]
    except (ValueError, KeyError, OSError) as exc:
        raise CheckpointError(f"checkpoint {path}: unreadable ({exc})") from None
    return path, header, states
