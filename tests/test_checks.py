"""The lossless checks (hmtl_mpi.job.checks) over the in-process fabric: they pass on
identical copies and fail on one flipped bit, wherever it is."""

from __future__ import annotations

import numpy as np
import pytest

from hmtl_mpi.job import checks
from hmtl_mpi.wire.inprocess import Fabric, InProcessEndpoint

K, DIM = 4, 3
IVS = [np.arange(DIM, dtype=np.float64) + 10 * k for k in range(K)]
MODELS = [np.arange(DIM + 1, dtype=np.float64) - k for k in range(K)]


class Part:
    """What a scheme's part reports: rank 0 none, ranks 1-2 relays holding every IV and
    model, ranks 3.. users computing their IV and using their model."""

    def __init__(self, rank, flip=None):
        self.rank, self.flip = rank, flip

    def _maybe_flip(self, what, k, value):
        value = np.array(value, copy=True)
        if self.flip == (what, self.rank, k):
            value.view(np.uint8)[0] ^= 1
        return value

    def computed_ivs(self):
        k = self.rank - 3
        return {k: self._maybe_flip("computed", k, IVS[k])} if k >= 0 else {}

    def held_ivs(self):
        if self.rank not in (1, 2):
            return None
        return [self._maybe_flip("held", k, IVS[k]) for k in range(K)]

    def final_models(self):
        if self.rank not in (1, 2):
            return None
        return np.stack([self._maybe_flip("final", k, MODELS[k]) for k in range(K)])

    def models_in_use(self):
        k = self.rank - 3
        return {k: self._maybe_flip("used", k, MODELS[k])} if k >= 0 else {}


def run_checks(flip=None):
    fabric = Fabric(3 + K)

    def job(r):
        ep = InProcessEndpoint(fabric, r)
        part = Part(r, flip)
        ivs = checks.check_ivs(ep, part, K)
        digest, intact = checks.model_digests(ep, part, K)
        return ivs, digest, intact
    return fabric.run(job)[0]


def test_identical_copies_pass_and_the_digest_is_of_all_models():
    ivs, digest, intact = run_checks()
    assert ivs is True and intact is True
    assert digest == checks.sha(np.stack(MODELS)).tobytes().hex()


@pytest.mark.parametrize("flip", [("computed", 3, 0), ("computed", 6, 3), ("held", 1, 2),
                                  ("held", 2, 0)])
def test_one_flipped_bit_in_any_iv_copy_fails_the_iv_check(flip):
    ivs, _, intact = run_checks(flip)
    assert ivs is False and intact is True


@pytest.mark.parametrize("flip", [("final", 2, 1), ("used", 4, 1), ("used", 6, 3)])
def test_one_flipped_bit_in_any_model_copy_fails_the_model_check(flip):
    ivs, digest, intact = run_checks(flip)
    assert ivs is True and intact is False and digest
