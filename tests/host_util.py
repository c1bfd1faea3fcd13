"""Host helpers of the container and Slurm tests: commands always with a timeout, apt,
and the one Docker engine of a test session (see tests/conftest.py)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BASE_IMAGE = "hmtl_mpi-base:bookworm"
# names of this test session's own images and projects (removed at its end)
TAG = "%d-%d" % (os.getpid(), int(time.time()))
IMAGE = "hmtl_mpi:test-" + TAG
SLURM_IMAGE = "hmtl_mpi-slurm:test-" + TAG
PROJECT = "hmtl_test_" + TAG.replace("-", "_")      # compose project of tests/test_docker.py
SLURM_LABEL = "org.hmtl_mpi.slurm-cluster"          # on everything launch/slurm-cluster makes


def sh(cmd, timeout, env=None, check=False, **kw):
    """subprocess.run with a timeout, text output, no stdin; ``check`` raises with the output."""
    res = subprocess.run([str(c) for c in cmd], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, timeout=timeout, env=env, stdin=subprocess.DEVNULL, **kw)
    if check and res.returncode != 0:
        raise RuntimeError("%s failed (%d):\n%s\n%s" % (" ".join(map(str, cmd)), res.returncode,
                                                         res.stdout[-3000:], res.stderr[-3000:]))
    return res


def apt_install(packages):
    """apt-get install PACKAGES; returns None or the reason it is impossible."""
    if os.geteuid() != 0:
        return "needs root to install %s with apt-get" % " ".join(packages)
    if not shutil.which("apt-get"):
        return "no apt-get to install %s" % " ".join(packages)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    try:
        sh(["apt-get", "update", "-qq"], timeout=300, env=env)
        # wait for another apt (unattended or a parallel job) rather than fail on its lock
        res = sh(["apt-get", "-o", "DPkg::Lock::Timeout=300", "install", "-y", "-qq",
                  "--no-install-recommends", *packages],
                 timeout=600, env=env)
    except subprocess.TimeoutExpired:
        return "apt-get install %s timed out" % " ".join(packages)
    if res.returncode != 0:
        return "apt-get install %s failed: %s" % (" ".join(packages), res.stderr.strip()[-500:])
    return None


class DockerEngine:
    """A Docker engine to talk to: the running one, or a dockerd started (and stopped) here.

    Started when none answers: Debian's ``docker.io`` (installed with apt-get when
    missing, with ``docker-compose`` and ``debootstrap``) as a process of our own on a
    private socket (``dockerd --bridge=none --iptables=false``: no ``docker0``, no
    iptables rules, so stopping it leaves nothing in the host's network), stopped again
    by its PID.
    """

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
        except (OSError, subprocess.TimeoutExpired):
            return False

    def ids(self, *args):
        """The full ids that ``docker ARGS --no-trunc -q`` lists."""
        res = self.docker(*args, "--no-trunc", "-q", timeout=60, check=True)
        return set(res.stdout.split())

    def start(self):
        """Returns None when an engine answers, else the reason none can."""
        need = [pkg for pkg, tool in (("docker.io", "dockerd"), ("docker-compose", "docker-compose"),
                                      ("debootstrap", "debootstrap"))
                if not shutil.which(tool)]
        if shutil.which("docker") and self.answers():
            need = [p for p in need if p != "docker.io"]
            return apt_install(need) if need else None
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

    def build_env(self, **extra):
        """The environment of docker/run, docker/build-image and launch/slurm-cluster
        for this session's images."""
        return dict(self.env, HMTL_BASE=BASE_IMAGE, HMTL_IMAGE=IMAGE, HMTL_SLURM_IMAGE=SLURM_IMAGE,
                    HMTL_BUILD_NETWORK=self.build_network, **extra)

    def remove_session_leftovers(self, before_images, keep):
        """Remove what this test session made: containers and networks of its compose
        project and of Slurm clusters, its images and their build layers (not ``keep``)."""
        for label in ("com.docker.compose.project=" + PROJECT, SLURM_LABEL):
            cs = self.docker("ps", "-a", "-q", "--filter", "label=" + label, timeout=60).stdout.split()
            if cs:
                self.docker("rm", "-f", "-v", *cs, timeout=180)
            nets = self.docker("network", "ls", "-q", "--filter", "label=" + label,
                               timeout=60).stdout.split()
            if nets:
                self.docker("network", "rm", *nets, timeout=60)
        self.docker("rmi", "-f", SLURM_IMAGE, IMAGE, timeout=180)
        # intermediate layers of the builds (and of any failed one), newest first
        left = self.ids("images", "-a") - before_images - {k for k in keep if k}
        for _ in range(3):
            if not left:
                break
            for img in list(left):
                if self.docker("rmi", img, timeout=120).returncode == 0:
                    left.discard(img)
            left &= self.ids("images", "-a")

