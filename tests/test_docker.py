"""The container path for real: docker/build-base, docker/Dockerfile, docker-compose.yml
and docker/run, built and run end to end on a Docker engine.

What the test needs and does:

- a Docker engine: the one already answering on the default socket, else Debian's
  ``docker.io`` (installed with apt-get when missing, as root) started here as a process
  of our own on a private socket (``dockerd --bridge=none --iptables=false``: no
  ``docker0``, no iptables rules, so stopping it leaves nothing in the host's network)
  and stopped again by its PID at the end;
- ``docker-compose`` (Debian's compose v1, installed likewise; ``docker compose`` v2 is
  used instead when the plugin exists) and ``debootstrap``;
- the base image ``hmtl_mpi-base:bookworm`` from docker/build-base, built offline from
  Debian's packages.  It is a CACHE: kept after the test (about 170 MB) so later runs
  skip the ~1.5 minute debootstrap; ``docker rmi hmtl_mpi-base:bookworm`` removes it;
- then builds the project image under a name of its own, runs paper-fig2 (uncoded and
  coded in one job) in 16 containers, checks the report, runs a job that fails and
  checks that the teardown happened anyway, and removes every container, network and
  image layer it created (all but the cached base), also when something fails.

Skipped, with the reason, only where that is impossible: not root, no apt-get to install
the engine, or dockerd does not start.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from host_util import apt_install, sh

REPO = Path(__file__).resolve().parent.parent
BUILD_BASE = REPO / "docker" / "build-base"
RUN = REPO / "docker" / "run"
BASE_IMAGE = "hmtl_mpi-base:bookworm"
TAG = "%d-%d" % (os.getpid(), int(time.time()))
IMAGE = "hmtl_mpi:test-" + TAG
PROJECT = "hmtl_test_" + TAG.replace("-", "_")
SUBNET = "10.77.251.0/24"      # not docker-compose.yml's default: a user's run may be up

# setup on a fresh machine (apt, base image) counts towards the first test's time
pytestmark = [pytest.mark.docker, pytest.mark.timeout(1800)]




class Engine:
    """A Docker engine to talk to: the running one, or a dockerd started (and stopped) here."""

    def __init__(self):
        self.env = dict(os.environ)
        self.proc = None
        self.tmp = None
        self.build_network = "default"
        self.run_docker_existed = True

    def docker(self, *args, timeout=120, check=False):
        return sh(["docker", *args], timeout=timeout, check=check, env=self.env)

    def answers(self):
        try:
            return self.docker("info", timeout=30).returncode == 0
        except subprocess.TimeoutExpired:
            return False

    def start(self):
        """Returns None when an engine answers, else the reason none can."""
        if shutil.which("docker") and self.answers():
            return None
        need = [pkg for pkg, tool in (("docker.io", "dockerd"), ("docker-compose", "docker-compose"),
                                      ("debootstrap", "debootstrap"))
                if not shutil.which(tool)]
        if need:
            why = apt_install(need)
            if why:
                return why
        if not shutil.which("dockerd") or not shutil.which("docker"):
            return "docker.io installed but dockerd/docker not found"
        # dockerd makes /run/docker/plugins even with another exec root: remove it after
        self.run_docker_existed = os.path.exists("/run/docker")
        # short path: containerd's unix sockets live under the exec root
        self.tmp = tempfile.mkdtemp(prefix="hmtl-dockerd-", dir="/tmp")
        sock = os.path.join(self.tmp, "docker.sock")
        self.env["DOCKER_HOST"] = "unix://" + sock
        self.build_network = "host"     # --bridge=none: build steps use the host's network
        log = open(os.path.join(self.tmp, "dockerd.log"), "w")
        self.proc = subprocess.Popen(
            ["dockerd", "--host", "unix://" + sock, "--exec-root", os.path.join(self.tmp, "exec"),
             "--pidfile", os.path.join(self.tmp, "dockerd.pid"),
             "--bridge=none", "--iptables=false", "--ip-forward=false", "--ip-masq=false"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            if os.path.exists(sock) and self.answers():
                return None
            time.sleep(0.5)
        tail = Path(self.tmp, "dockerd.log").read_text(errors="replace")[-1500:]
        self.stop()
        return "dockerd did not start:\n" + tail

    def stop(self):
        """Stop the dockerd started here (by its PID), and its containerd with it."""
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                    self.proc.wait(timeout=30)
            self.proc = None
        if self.tmp:
            # netns bind mounts and the like under the exec root, if dockerd left any
            mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()
                      if line.split()[1].startswith(self.tmp + "/")]
            for m in sorted(mounts, reverse=True):
                sh(["umount", "-l", m], timeout=30)
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp = None
            if not self.run_docker_existed:
                for d in ("/run/docker/plugins", "/run/docker"):
                    try:
                        os.rmdir(d)          # only if empty: never anything of others
                    except OSError:
                        pass


def ids(engine, *args):
    res = engine.docker(*args, "--no-trunc", "-q", timeout=60, check=True)
    return set(res.stdout.split())


@pytest.fixture(scope="module")
def engine():
    eng = Engine()
    why = eng.start()
    if why:
        pytest.skip(why)
    before_images = ids(eng, "images", "-a")
    before_containers = ids(eng, "ps", "-a")
    base_id = None
    try:
        t0 = time.monotonic()
        res = sh([str(BUILD_BASE)], timeout=900, env=eng.env)
        assert res.returncode == 0, "docker/build-base failed:\n" + res.stderr[-3000:]
        print("base image %s ready in %.0f s" % (BASE_IMAGE, time.monotonic() - t0))
        base_id = eng.docker("image", "inspect", "-f", "{{.Id}}", BASE_IMAGE,
                             check=True).stdout.strip()
        yield eng
    finally:
        try:
            cleanup(eng, before_images, before_containers, keep={base_id})
        finally:
            eng.stop()


def cleanup(eng, before_images, before_containers, keep):
    """Remove what this module made: containers, networks, images (not the cached base)."""
    compose = compose_cmd()
    if compose:
        sh([*compose, "-f", str(REPO / "docker" / "docker-compose.yml"), "-p", PROJECT,
            "down", "-v", "--remove-orphans", "--timeout", "5"], timeout=180, env=eng.env)
    new_containers = ids(eng, "ps", "-a") - before_containers
    if new_containers:
        eng.docker("rm", "-f", "-v", *new_containers, timeout=180)
    nets = eng.docker("network", "ls", "-q", "--filter",
                      "label=com.docker.compose.project=" + PROJECT, timeout=60).stdout.split()
    if nets:
        eng.docker("network", "rm", *nets, timeout=60)
    eng.docker("rmi", "-f", IMAGE, timeout=180)
    # intermediate layers of the build (and of any failed one), newest first
    left = ids(eng, "images", "-a") - before_images - {k for k in keep if k}
    for _ in range(3):
        if not left:
            break
        for img in list(left):
            if eng.docker("rmi", img, timeout=120).returncode == 0:
                left.discard(img)
        left &= ids(eng, "images", "-a")


def compose_cmd():
    if sh(["docker", "compose", "version"], timeout=30).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


def run_job(eng, out: Path, *args, build=True, timeout=1200):
    env = dict(eng.env, HMTL_BASE=BASE_IMAGE, HMTL_IMAGE=IMAGE, HMTL_PROJECT=PROJECT,
               HMTL_SUBNET=SUBNET, HMTL_OUT=str(out), HMTL_BUILD_NETWORK=eng.build_network,
               HMTL_W1="50mbit", HMTL_W2="100mbit", MPIEXEC_TIMEOUT="300",
               HMTL_DOWN_TIMEOUT="5")
    if not build:
        env["HMTL_NO_BUILD"] = "1"
    t0 = time.monotonic()
    res = sh([str(RUN), *args], timeout=timeout, env=env)
    return res, time.monotonic() - t0


def assert_nothing_left(eng):
    ps = eng.docker("ps", "-a", "-q", "--filter", "label=com.docker.compose.project=" + PROJECT)
    assert ps.stdout.split() == [], "containers left: %s" % ps.stdout
    nets = eng.docker("network", "ls", "--format", "{{.Name}}").stdout.split()
    assert not [n for n in nets if n.startswith(PROJECT)], "networks left: %s" % nets


def test_compose_runs_coded_and_uncoded_with_equal_models(engine, tmp_path):
    res, seconds = run_job(engine, tmp_path, "--scheme", "uncoded,coded", "--iterations", "3")
    print("build + 16 containers + job + teardown: %.0f s" % seconds)
    log = res.stdout + res.stderr
    assert res.returncode == 0, "docker/run failed (%d):\n%s" % (res.returncode, log[-6000:])
    # every container shaped its link as its role says
    assert "server: eth0 shaped to 100mbit both ways" in log
    assert log.count("user: eth0 shaped to 50mbit both ways") == 10
    assert log.count("relay: links unshaped") == 5
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["ranks"] == 16 and (report["H"], report["K"]) == (5, 10)
    coded, uncoded = report["runs"]["coded"], report["runs"]["uncoded"]
    # the planner's loads, in IVs per iteration (Example 1 / Theorem 1 of the paper)
    assert coded["planned_loads"] == {"uplink": 8.5, "downlink": 7.0}
    assert uncoded["planned_loads"] == {"uplink": 10.0, "downlink": 10.0}
    # measured on the wire: uplink exact; downlink a little above (length headers,
    # escaped symbols) but well below uncoded's
    assert coded["measured_loads"]["uplink"] == pytest.approx(8.5)
    assert 7.0 <= coded["measured_loads"]["downlink"] < 7.1
    assert uncoded["measured_loads"]["uplink"] == pytest.approx(10.0)
    assert 10.0 <= uncoded["measured_loads"]["downlink"] < 10.1
    assert coded["ivs_bit_exact"] and uncoded["ivs_bit_exact"]
    assert coded["model_digest"] == uncoded["model_digest"]
    assert report["model_digests_equal"] is True
    assert_nothing_left(engine)


def test_failing_job_is_torn_down_too(engine, tmp_path):
    # the image is there from the test above when run in order; else build it
    build = engine.docker("image", "inspect", IMAGE).returncode != 0
    res, seconds = run_job(engine, tmp_path, "--topology", "no-such-topology", build=build)
    print("failing job + teardown: %.0f s" % seconds)
    log = res.stdout + res.stderr
    assert res.returncode != 0, log[-3000:]
    assert "job exit status %d" % res.returncode in log
    assert "tearing down" in log
    assert not (tmp_path / "report.json").exists()
    assert_nothing_left(engine)
