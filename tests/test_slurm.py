"""The Slurm path for real: launch/slurm.sbatch submitted with `sbatch --wait` to a Slurm
cluster, the 16-rank paper-fig2 job run under it, the report checked.

The cluster: the one that answers `sinfo` already, else a one-node cluster made here from
Debian's packages (``slurmctld``, ``slurmd``, ``slurm-client``, ``munge``; installed with
apt-get when missing, as root).  Everything of that private cluster lives in a temporary
folder: a fresh munge key, ``munged`` on a socket of its own, a ``slurm.conf`` with the
node's real CPU count (from ``slurmd -C``, so the job must ask for ``--overcommit``, as
the script does), free ports, state, spool, logs and pid files.  ``munged``,
``slurmctld`` and ``slurmd`` are processes of this test, stopped by their PIDs at the
end, also when a test fails.  Skipped, with the reason, only where the daemons cannot be
installed or started (not root, no apt-get, a daemon that does not come up).

Many nodes (``test_multinode_...``, markers ``slurm`` and ``docker``): launch/slurm-cluster
starts a controller and 3 compute nodes as containers (the session's Docker engine and
project image from tests/conftest.py; the Slurm image is built on it), the job is
submitted with ``sbatch --wait --nodes=3`` inside the controller, and the report must show
the ranks on 3 nodes, equal digests and the planned loads.  ``slurm-cluster down`` runs
at the end whatever happened (twice: it must be idempotent), and no container, network,
volume, state folder or Slurm/munge daemon may be left.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from host_util import SLURM_LABEL, apt_install, sh

REPO = Path(__file__).resolve().parent.parent
SBATCH = REPO / "launch" / "slurm.sbatch"
TOOLS = {"slurmctld": "slurmctld", "slurmd": "slurmd", "sbatch": "slurm-client",
         "munged": "munge"}

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(900)]




def free_ports(n):
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


class Cluster:
    """A Slurm cluster to submit to: the existing one, or one started (and stopped) here."""

    def __init__(self):
        self.env = dict(os.environ)
        self.procs = {}          # name -> Popen of the daemons started here
        self.tmp = None

    def answers(self):
        try:
            res = sh(["sinfo", "-h", "-o", "%T"], timeout=20, env=self.env)
        except (OSError, subprocess.TimeoutExpired):
            return False
        return res.returncode == 0 and any(
            s.strip("*~#") in ("idle", "mixed", "allocated") for s in res.stdout.split())

    def start(self):
        """None when a cluster answers, else the reason none can be started."""
        if shutil.which("sinfo") and self.answers():
            return None
        if os.geteuid() != 0:
            return "needs root to start munged, slurmctld and slurmd"
        need = sorted({pkg for tool, pkg in TOOLS.items() if not shutil.which(tool)})
        if need:
            why = apt_install(need)
            if why:
                return why
        self.tmp = Path(tempfile.mkdtemp(prefix="hmtl-slurm-", dir="/tmp"))
        os.chmod(self.tmp, 0o700)
        for d in ("state", "spool", "log"):
            (self.tmp / d).mkdir()
        try:
            return self._start_daemons()
        except (OSError, RuntimeError, subprocess.TimeoutExpired) as e:
            return "the Slurm daemons did not start: %s%s" % (e, self._logs())

    def _daemon(self, name, cmd):
        log = open(self.tmp / "log" / (name + ".out"), "w")
        self.procs[name] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, env=self.env,
                                            start_new_session=True)
        log.close()

    def _start_daemons(self):
        t = self.tmp
        # munge: a fresh key, a socket of our own
        key = t / "munge.key"
        key.write_bytes(os.urandom(1024))
        os.chmod(key, 0o600)
        msock = t / "munge.socket"
        self._daemon("munged", ["munged", "-F", "--force", "--key-file", key,
                                "--socket", msock, "--pid-file", t / "munged.pid",
                                "--log-file", t / "log" / "munged.log",
                                "--seed-file", t / "munged.seed"])
        self._wait(lambda: msock.exists(), "munged", 20)
        # the node as slurmd sees it: real CPUs, sockets, cores, threads
        line = sh(["slurmd", "-C"], timeout=30, check=True).stdout.splitlines()[0]
        node = dict(kv.split("=", 1) for kv in line.split())
        name = node["NodeName"]
        hw = " ".join("%s=%s" % (k, node[k]) for k in
                      ("CPUs", "Boards", "SocketsPerBoard", "CoresPerSocket", "ThreadsPerCore")
                      if k in node)
        self.cpus = int(node["CPUs"])
        ctld_port, d_port = free_ports(2)
        # Job ids of a fresh cluster would start at 1 every time.  MPICH names its
        # shared-memory segment after the PMI job id ("1.0"), and a job killed by
        # SIGKILL leaves that segment in /dev/shm: the next cluster's job 1 would
        # find it and hang in MPI_Init.  So start the ids somewhere new each time.
        first_job = 100000 + int.from_bytes(os.urandom(4), "big") % 60_000_000   # < MaxJobId
        conf = t / "slurm.conf"
        conf.write_text(f"""\
# one-node cluster of tests/test_slurm.py (temporary)
ClusterName=hmtltest
FirstJobId={first_job}
SlurmctldHost={name}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={d_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={msock}
StateSaveLocation={t}/state
SlurmdSpoolDir={t}/spool
SlurmctldPidFile={t}/slurmctld.pid
SlurmdPidFile={t}/slurmd.pid
SlurmctldLogFile={t}/log/slurmctld.log
SlurmdLogFile={t}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
KillWait=5
MinJobAge=300
NodeName={name} NodeAddr=127.0.0.1 {hw} State=UNKNOWN
PartitionName=hmtl Nodes={name} Default=YES MaxTime=30 State=UP
""")
        self.env["SLURM_CONF"] = str(conf)
        self._daemon("slurmctld", ["slurmctld", "-D", "-f", conf])
        self._daemon("slurmd", ["slurmd", "-D", "-f", conf])
        self._wait(self.answers, "the node to become idle", 60)

    def _wait(self, ready, what, seconds):
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            dead = [n for n, p in self.procs.items() if p.poll() is not None]
            if dead:
                raise RuntimeError("%s exited (status %s)" % (dead[0], self.procs[dead[0]].returncode))
            if ready():
                return
            time.sleep(0.3)
        raise RuntimeError("timed out waiting for " + what)

    def _logs(self):
        if not self.tmp:
            return ""
        out = []
        for f in sorted((self.tmp / "log").glob("*")):
            out.append("\n--- %s\n%s" % (f.name, f.read_text(errors="replace")[-1500:]))
        return "".join(out)

    def stop(self):
        """Stop the daemons started here, by their PIDs: slurmd, slurmctld, munged."""
        for name in ("slurmd", "slurmctld", "munged"):
            p = self.procs.pop(name, None)
            if p is None or p.poll() is not None:
                continue
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(timeout=30)
        if self.tmp:
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp = None


def shm_segments():
    try:
        return {n for n in os.listdir("/dev/shm") if n.startswith("mpich_shm_")}
    except OSError:
        return set()


def in_use(paths):
    """The paths among ``paths`` that some process has open or mapped."""
    used = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            used.update(os.readlink("/proc/%s/fd/%s" % (pid, fd))
                        for fd in os.listdir("/proc/%s/fd" % pid))
            with open("/proc/%s/maps" % pid) as f:
                used.update(line.split(None, 5)[-1].strip() for line in f if "/dev/shm/" in line)
        except OSError:
            continue
    return {p for p in paths if p in used or p + " (deleted)" in used}


def remove_leaked_segments(before):
    """MPICH segments that appeared during our jobs and that no process uses: a job
    the step cancel killed by SIGKILL could not unlink them."""
    new = ["/dev/shm/" + n for n in shm_segments() - before]
    for path in set(new) - in_use(new):
        try:
            os.unlink(path)
        except OSError:
            pass


@pytest.fixture(scope="module")
def cluster():
    c = Cluster()
    before = shm_segments()
    try:
        why = c.start()
        if why:
            pytest.skip(why)
        yield c
    finally:
        c.stop()
        remove_leaked_segments(before)


def submit(cluster, tmp_path, *job_args, timeout=600, extra=()):
    """sbatch --wait the script; returns (exit code, job output, seconds)."""
    out = tmp_path / "job.out"
    env = dict(cluster.env, HMTL_PYTHON=sys.executable, MPIEXEC_TIMEOUT="300",
               PYTHONPATH=os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH"))
                                          if p))
    cmd = ["sbatch", "--wait", "--parsable", "--ntasks=16", "--time=10",
           "--output=%s" % out, "--chdir=%s" % REPO, *extra, SBATCH, *job_args]
    t0 = time.monotonic()
    proc = subprocess.Popen([str(c) for c in cmd], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env,
                            stdin=subprocess.DEVNULL)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        stdout, stderr = proc.communicate(timeout=30)
        job = stdout.strip().split(";")[0]
        if job:
            sh(["scancel", job], timeout=30, env=cluster.env)
        pytest.fail("sbatch --wait did not return in %d s (job %s)\n%s" % (timeout, job, stderr))
    seconds = time.monotonic() - t0
    text = out.read_text(errors="replace") if out.exists() else ""
    return proc.returncode, text + stderr, seconds


def job_state(cluster, job: str) -> dict:
    res = sh(["scontrol", "show", "job", "-o", job], timeout=30, env=cluster.env)
    return dict(kv.split("=", 1) for kv in res.stdout.split() if "=" in kv)


def test_sigterm_checkpoints_requeues_and_resumes(cluster, tmp_path):
    """SIGTERM to the job step (what --signal=TERM@120 sends before a time limit, and
    preemption sends): the ranks checkpoint and stop with 143, the script requeues the
    job, which resumes from the checkpoint and ends with the models of an uninterrupted
    run; the job's own checkpoint folder is gone afterwards."""
    out, report = tmp_path / "job.out", tmp_path / "report.json"
    options = ["--scheme", "coded", "--dataset", "synthetic", "--dim", "20000",
               "--iterations", "60", "--checkpoint-every", "1000"]
    env = dict(cluster.env, HMTL_PYTHON=sys.executable, PYTHONPATH=str(REPO))
    res = sh(["sbatch", "--parsable", "--ntasks=16", "--time=10", "--output=%s" % out,
              "--chdir=%s" % tmp_path, str(SBATCH), *options, "--report", str(report)],
             timeout=60, env=env)
    assert res.returncode == 0, res.stderr
    job = res.stdout.strip().split(";")[0]
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            if out.exists() and "iteration 5/60" in out.read_text(errors="replace"):
                break
            time.sleep(0.5)
        else:
            pytest.fail("the job did not start its iterations:\n" + (
                out.read_text(errors="replace") if out.exists() else "no output"))
        assert sh(["scancel", "--signal=TERM", job], timeout=30, env=env).returncode == 0
        deadline = time.monotonic() + 300
        state = {}
        while time.monotonic() < deadline:
            state = job_state(cluster, job)
            if state.get("JobState") in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"):
                break
            time.sleep(1)
    finally:
        if job_state(cluster, job).get("JobState") not in ("COMPLETED", "FAILED", "CANCELLED",
                                                          "TIMEOUT"):
            sh(["scancel", job], timeout=30, env=env)
    log = out.read_text(errors="replace")
    assert state.get("JobState") == "COMPLETED" and state.get("Restarts") == "1", (state, log[-4000:])
    assert "terminated by SIGTERM in iteration" in log and "requeueing job" in log, log[-4000:]
    assert "resuming from the newest checkpoint" in log, log[-4000:]
    reference = subprocess.run([sys.executable, "-m", "hmtl_mpi", "--transport", "inprocess",
                                "--quiet", *options, "--report", str(tmp_path / "ref.json")],
                               capture_output=True, text=True, timeout=300,
                               env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert reference.returncode == 0, reference.stderr
    got, ref = json.loads(report.read_text()), json.loads((tmp_path / "ref.json").read_text())
    assert got["model_digest"] == ref["model_digest"] and len(got["iterations"]) == 60
    assert not (tmp_path / "hmtl-checkpoints").exists()


@pytest.mark.parametrize("launcher", ["srun", "mpiexec"])
def test_sbatch_runs_coded_and_uncoded(cluster, tmp_path, launcher):
    report = tmp_path / "report.json"
    rc, log, seconds = submit(
        cluster, tmp_path, "--topology", "paper-fig2", "--scheme", "uncoded,coded",
        "--iterations", "3", "--report", report,
        extra=["--export=ALL,HMTL_LAUNCHER=%s" % launcher])
    print("sbatch --wait (%s): %.1f s" % (launcher, seconds))
    assert rc == 0, "job failed (%d):\n%s" % (rc, log[-5000:])
    data = json.loads(report.read_text())
    assert data["ranks"] == 16 and (data["H"], data["K"]) == (5, 10)
    coded, uncoded = data["runs"]["coded"], data["runs"]["uncoded"]
    assert coded["planned_loads"] == {"uplink": 8.5, "downlink": 7.0}
    assert uncoded["planned_loads"] == {"uplink": 10.0, "downlink": 10.0}
    assert coded["measured_loads"]["uplink"] == pytest.approx(8.5)
    assert 7.0 <= coded["measured_loads"]["downlink"] < 7.1
    assert coded["model_digest"] == uncoded["model_digest"]
    assert data["model_digests_equal"] is True
    assert "launch: %s" % launcher in log


@pytest.mark.parametrize("launcher", ["srun", "mpiexec"])
def test_sbatch_passes_the_exit_code_through(cluster, tmp_path, launcher):
    # exit code 3 (an exception on a rank) from hmtl_mpi's --inject-fault, not 137
    rc, log, seconds = submit(
        cluster, tmp_path, "--topology", "paper-fig2", "--scheme", "uncoded",
        "--iterations", "3", "--inject-fault", "7:1",
        extra=["--export=ALL,HMTL_LAUNCHER=%s" % launcher])
    print("failing job (%s): %.1f s, exit %d" % (launcher, seconds, rc))
    assert rc == 3, "expected the job's own exit code 3, got %d:\n%s" % (rc, log[-4000:])


# --- many nodes: the container cluster of launch/slurm-cluster ----------------------------

SLURM_CLUSTER = REPO / "launch" / "slurm-cluster"
CLUSTER_NAME = "test%d" % os.getpid()
CLUSTER_SUBNET = "10.77.253.0/24"   # not slurm-cluster's default: a user's cluster may be up
SLURM_DAEMONS = ("slurmctld", "slurmd", "slurmstepd", "munged")


def daemon_pids():
    """PIDs of Slurm and munge daemons on this machine (those in containers included)."""
    pids = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open("/proc/%s/comm" % pid) as f:
                if f.read().strip() in SLURM_DAEMONS:
                    pids.add(int(pid))
        except OSError:
            continue
    return pids


def cluster_cmd(engine, *args, timeout):
    res = sh([SLURM_CLUSTER, *args], timeout=timeout, env=engine.build_env())
    return res, res.stdout + res.stderr


def assert_cluster_gone(engine, shared, daemons_before):
    label = "label=%s=%s" % (SLURM_LABEL, CLUSTER_NAME)
    left = {what: engine.docker(*cmd, "-q", "--filter", label, timeout=60).stdout.split()
            for what, cmd in (("containers", ("ps", "-a")), ("networks", ("network", "ls")),
                              ("volumes", ("volume", "ls")))}
    assert left == {"containers": [], "networks": [], "volumes": []}, left
    state = Path(tempfile.gettempdir()) / ("hmtl-slurm-cluster-" + CLUSTER_NAME)
    assert not state.exists(), "state folder left: %s" % state
    assert not (shared / "launch").exists(), "launch/ mount point left in %s" % shared
    # the daemons ran in the containers; none of them may outlive them
    deadline = time.monotonic() + 30
    while (daemon_pids() - daemons_before) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not daemon_pids() - daemons_before, "daemons left: %s" % (daemon_pids() - daemons_before)


@pytest.fixture
def container_cluster(docker_engine, project_image, tmp_path):
    """`launch/slurm-cluster up --nodes 3`; `down` at the end whatever happened (again
    after the test's own `down`: it must be idempotent), then nothing may be left."""
    shared = tmp_path / "shared"
    shared.mkdir()
    daemons_before = daemon_pids()
    try:
        t0 = time.monotonic()
        res, log = cluster_cmd(docker_engine, "up", "--nodes", "3", "--name", CLUSTER_NAME,
                               "--subnet", CLUSTER_SUBNET, "--shared", shared, "--rate", "100mbit",
                               timeout=1500)
        print("slurm-cluster up (image build included): %.0f s" % (time.monotonic() - t0))
        assert res.returncode == 0, "slurm-cluster up failed (%d):\n%s" % (res.returncode, log[-6000:])
        yield docker_engine, shared, daemons_before
    finally:
        res, log = cluster_cmd(docker_engine, "down", "--name", CLUSTER_NAME, timeout=300)
        assert res.returncode == 0, log
        assert_cluster_gone(docker_engine, shared, daemons_before)


@pytest.mark.docker
@pytest.mark.timeout(1800)     # on a fresh machine the first test builds the base and images
def test_multinode_sbatch_spreads_the_ranks_over_three_nodes(container_cluster):
    engine, shared, daemons_before = container_cluster
    label = "label=%s=%s" % (SLURM_LABEL, CLUSTER_NAME)
    names = engine.docker("ps", "--filter", label, "--format", "{{.Names}}", timeout=60).stdout.split()
    assert sorted(names) == ["hmtl-slurm-%s-%s" % (CLUSTER_NAME, n) for n in ("c1", "c2", "c3", "ctl")]
    logs = engine.docker("logs", "hmtl-slurm-%s-c2" % CLUSTER_NAME, timeout=60)
    assert "host: eth0 shaped to 100mbit both ways" in logs.stdout + logs.stderr

    def submit(*job):
        t0 = time.monotonic()
        res, log = cluster_cmd(engine, "submit", "--name", CLUSTER_NAME, "--nodes", "3",
                               "--time", "10", "--", *job, timeout=900)
        print("sbatch --wait --nodes=3 %s: %.0f s" % (" ".join(job), time.monotonic() - t0))
        assert res.returncode == 0, "job failed (%d):\n%s" % (res.returncode, log[-6000:])
        assert "sbatch --wait --parsable --nodes=3 --time=10" in log
        return log

    # paper-fig2: its N = 16 is the script's own --ntasks
    log = submit("--topology", "paper-fig2", "--scheme", "both", "--iterations", "3",
                 "--report", "report.json")
    report = json.loads((shared / "report.json").read_text())
    hosts = report["rank_hosts"]
    assert len(hosts) == report["ranks"] == 16
    assert len(set(hosts)) >= 3 and set(hosts) <= {"c1", "c2", "c3"}, hosts
    assert hosts[0] == "c1"                            # block distribution: the server first
    assert "Slurm job" in report["links"] and "3 containers" in report["links"], report["links"]
    coded, uncoded = report["runs"]["coded"], report["runs"]["uncoded"]
    assert coded["planned_loads"] == {"uplink": 8.5, "downlink": 7.0}
    for run in (coded, uncoded):
        for link in ("uplink", "downlink"):
            planned, measured = run["planned_loads"][link], run["measured_loads"][link]
            assert planned - 1e-9 <= measured <= planned + 0.05, (run["scheme"], link, measured)
    assert coded["model_digest"] == uncoded["model_digest"]
    assert report["model_digests_equal"] is True

    # example-a (N = 8) with --nodes=3 alone: the script starts N tasks in the 16-task
    # allocation (srun -n 8 -N 3 --overcommit)
    log = submit("--topology", "example-a", "--scheme", "both", "--iterations", "3",
                 "--report", "report-a.json")
    assert "srun --mpi=pmi2 -n 8 -N 3 --overcommit" in log
    report = json.loads((shared / "report-a.json").read_text())
    assert report["ranks"] == 8 and len(set(report["rank_hosts"])) == 3, report["rank_hosts"]
    assert report["model_digests_equal"] is True

    # down by the test itself (the fixture downs again: idempotent), then nothing is left
    res, log = cluster_cmd(engine, "down", "--name", CLUSTER_NAME, timeout=300)
    assert res.returncode == 0 and "removed" in log, log
    assert_cluster_gone(engine, shared, daemons_before)
