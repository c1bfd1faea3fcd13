"""Session-wide fixtures of the container tests (tests/test_docker.py, and the container
Slurm cluster of tests/test_slurm.py): one Docker engine, one base image and one project
image per test session, shared by every test that needs them.

- ``docker_engine``: the engine that answers, else a dockerd started for the session
  (host_util.DockerEngine), plus the base image ``hmtl_mpi-base:bookworm`` from
  docker/build-base.  The base is a CACHE, kept after the session (about 170 MB) so
  later runs skip the debootstrap; ``docker rmi hmtl_mpi-base:bookworm`` removes it.
  At the end of the session every container, network and image the session made is
  removed (all but the base), and a dockerd started here is stopped.
- ``project_image``: docker/build-image builds the session's project image once; the
  tests' docker/run calls and launch/slurm-cluster then build from its layers in
  seconds.

Skipped, with the reason, only where that is impossible: not root, no apt-get to install
the engine, or dockerd does not start.
"""

from __future__ import annotations

import time

import pytest
from host_util import BASE_IMAGE, IMAGE, REPO, DockerEngine, sh


@pytest.fixture(scope="session")
def docker_engine():
    eng = DockerEngine()
    why = eng.start()
    if why:
        pytest.skip(why)
    base_id = None
    try:
        before_images = eng.ids("images", "-a")
        t0 = time.monotonic()
        res = sh([REPO / "docker" / "build-base"], timeout=900, env=eng.env)
        assert res.returncode == 0, "docker/build-base failed:\n" + res.stderr[-3000:]
        print("base image %s ready in %.0f s" % (BASE_IMAGE, time.monotonic() - t0))
        base_id = eng.docker("image", "inspect", "-f", "{{.Id}}", BASE_IMAGE,
                             check=True).stdout.strip()
        yield eng
        eng.remove_session_leftovers(before_images, keep={base_id})
    finally:
        eng.stop()


@pytest.fixture(scope="session")
def project_image(docker_engine):
    t0 = time.monotonic()
    res = sh([REPO / "docker" / "build-image"], timeout=1500, env=docker_engine.build_env())
    assert res.returncode == 0, "docker/build-image failed:\n%s\n%s" % (
        res.stdout[-3000:], res.stderr[-3000:])
    print("project image %s built in %.0f s" % (IMAGE, time.monotonic() - t0))
    return IMAGE
