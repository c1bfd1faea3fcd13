"""The container path for real: docker/build-base, docker/Dockerfile, docker/compose-gen
and docker/run, built and run end to end on a Docker engine.

What the test needs and does:

- a Docker engine and the base image ``hmtl_mpi-base:bookworm`` (docker/build-base,
  built offline from Debian's packages): the session fixtures of tests/conftest.py,
  which start a dockerd when none answers (installing Debian's ``docker.io``,
  ``docker-compose`` and ``debootstrap`` as root when missing) and keep the base as a
  cache;
- the project image under a name of this session (``project_image``, built once for
  the session; docker/run here rebuilds it from cached layers in seconds);
- then runs paper-fig2 (uncoded and coded in one job) in 16 containers, a topology
  from a .npy file (H = 3, K = 6) in 10 containers, a job that fails, and bad topology
  arguments, checks the reports and that every run left no container and no network;
  the session removes its images and build layers (all but the cached base) at its
  end, also when something fails.

Skipped, with the reason, only where that is impossible: not root, no apt-get to install
the engine, or dockerd does not start.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest
from host_util import PROJECT, REPO, sh

RUN = REPO / "docker" / "run"
COMPOSE_GEN = REPO / "docker" / "compose-gen"
SUBNET = "10.77.251.0/24"      # not docker-compose.yml's default: a user's run may be up

# setup on a fresh machine (apt, base image, project image) counts towards the first
# test's time
pytestmark = [pytest.mark.docker, pytest.mark.timeout(1800)]


def run_job(eng, out: Path, *args, build=False, timeout=1200):
    """docker/run ARGS for this session's image and compose project; (result, seconds)."""
    env = eng.build_env(HMTL_PROJECT=PROJECT, HMTL_SUBNET=SUBNET, HMTL_OUT=str(out),
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
    vols = eng.docker("volume", "ls", "-q", "--filter",
                      "label=com.docker.compose.project=" + PROJECT).stdout.split()
    assert vols == [], "volumes left: %s" % vols


def assert_loads_as_planned(report):
    """Every run's measured loads (IVs per iteration, relay->server and server->relay)
    are the plan's or at most 0.05 IV above it (length headers, escaped coded
    symbols), never below."""
    for name, run in report["runs"].items():
        for link in ("uplink", "downlink"):
            planned, measured = run["planned_loads"][link], run["measured_loads"][link]
            assert planned - 1e-9 <= measured <= planned + 0.05, (name, link, planned, measured)


def test_compose_gen_makes_the_committed_paper_fig2_project():
    # docker/docker-compose.yml is docker/compose-gen's paper-fig2 output, kept for
    # running compose by hand: the two must not drift apart
    res = sh([COMPOSE_GEN], timeout=30, check=True)
    assert res.stdout == (REPO / "docker" / "docker-compose.yml").read_text()
    bad = sh([COMPOSE_GEN, "--relays", "0"], timeout=30)
    assert bad.returncode == 2 and "--relays must be a positive integer" in bad.stderr


def test_compose_runs_coded_and_uncoded_with_equal_models(docker_engine, project_image, tmp_path):
    # build=True: docker/run's own build, from the session image's cached layers
    res, seconds = run_job(docker_engine, tmp_path, "--scheme", "uncoded,coded",
                           "--iterations", "3", build=True)
    print("build (cached) + 16 containers + job + teardown: %.0f s" % seconds)
    log = res.stdout + res.stderr
    assert res.returncode == 0, "docker/run failed (%d):\n%s" % (res.returncode, log[-6000:])
    # every container shaped its link as its role says
    assert "server: eth0 shaped to 100mbit both ways" in log
    assert log.count("user: eth0 shaped to 50mbit both ways") == 10
    assert log.count("relay: links unshaped") == 5
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["ranks"] == 16 and (report["H"], report["K"]) == (5, 10)
    assert report["rank_hosts"] == (["server"] + ["relay%d" % i for i in range(1, 6)]
                                    + ["user%d" % i for i in range(1, 11)])
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
    assert_nothing_left(docker_engine)


def test_compose_runs_a_topology_file(docker_engine, project_image, tmp_path):
    # a random G with H = 3 relays, K = 6 users (r = 2), made by the project's generator
    topo = tmp_path / "random-h3-k6.npy"
    sh([sys.executable, "-m", "hmtl_mpi.topology", "random", "--relays", "3", "--users", "6",
        "--r", "2", "--seed", "1", "-o", topo], timeout=120, check=True, cwd=REPO)
    plan = json.loads(sh([sys.executable, "-m", "hmtl_mpi.plan", "--topology", topo, "--json"],
                         timeout=300, check=True, cwd=REPO).stdout)
    assert (plan["H"], plan["K"]) == (3, 6)
    out = tmp_path / "out"
    res, seconds = run_job(docker_engine, out, "--topology", str(topo), "--scheme", "both",
                           "--iterations", "3")
    print("10 containers (H = 3, K = 6) + job + teardown: %.0f s" % seconds)
    log = res.stdout + res.stderr
    assert res.returncode == 0, "docker/run failed (%d):\n%s" % (res.returncode, log[-6000:])
    assert "H = 3 relays, K = 6 users: 10 containers" in log
    assert "server: eth0 shaped to 100mbit both ways" in log
    assert log.count("user: eth0 shaped to 50mbit both ways") == 6
    assert log.count("relay: links unshaped") == 3
    report = json.loads((out / "report.json").read_text())
    assert report["ranks"] == 10 and (report["H"], report["K"]) == (3, 6)
    # the file reached the containers (bind-mounted where the job reads it)
    assert report["topology"] == "/etc/hmtl/topology.npy"
    assert report["rank_hosts"] == ["server", "relay1", "relay2", "relay3"] + \
        ["user%d" % i for i in range(1, 7)]
    coded, uncoded = report["runs"]["coded"], report["runs"]["uncoded"]
    # the plan's loads, as the planner prints them on this machine
    assert coded["planned_loads"] == {"uplink": plan["uplink_load"],
                                      "downlink": plan["downlink_load"]}
    assert uncoded["planned_loads"] == {"uplink": plan["uncoded"]["uplink_load"],
                                        "downlink": plan["uncoded"]["downlink_load"]}
    assert_loads_as_planned(report)
    assert coded["model_digest"] == uncoded["model_digest"]
    assert report["model_digests_equal"] is True
    assert_nothing_left(docker_engine)


def test_failing_job_is_torn_down_too(docker_engine, project_image, tmp_path):
    # rank 7 raises in iteration 1: hmtl_mpi's exit code 3 (an exception on a rank)
    res, seconds = run_job(docker_engine, tmp_path, "--scheme", "uncoded", "--iterations", "3",
                           "--inject-fault", "7:1")
    print("failing job + teardown: %.0f s" % seconds)
    log = res.stdout + res.stderr
    assert res.returncode == 3, "expected the job's exit code 3 (%d):\n%s" % (
        res.returncode, log[-3000:])
    assert "job exit status 3" in log
    assert "tearing down" in log
    assert not (tmp_path / "report.json").exists()
    assert_nothing_left(docker_engine)


@pytest.mark.parametrize("topology, message", [
    ("no-such-topology", "no-such-topology: no such topology file (built-in names:"),
    ("missing/g.npy", "--topology missing/g.npy: no such file"),
    ("not-npy", "not a .npy file"),
])
def test_bad_topology_is_refused_before_any_container(docker_engine, project_image, tmp_path,
                                                      topology, message):
    if topology == "not-npy":
        topology = str(tmp_path / "g.npy")
        Path(topology).write_text("0 1\n1 0\n")
    res, seconds = run_job(docker_engine, tmp_path, "--topology", topology, timeout=300)
    err = res.stderr.strip().splitlines()
    assert res.returncode == 2, res.stdout[-2000:] + res.stderr[-2000:]
    assert err and err[-1].startswith("docker/run: error: --topology") and message in err[-1], err
    assert "Traceback" not in res.stderr
    assert "job:" not in res.stderr          # no container of the job was started
    assert_nothing_left(docker_engine)


def test_compose_gen_per_link_rates():
    """--relay-rates / --user-rates: each relay's (user's) own rate in its service's
    environment (HMTL_RELAY_RATE / HMTL_USER_RATE, what docker/entrypoint.sh shapes by);
    a wrong count or a bad rate is refused with exit 2 naming the option and value."""
    res = sh([COMPOSE_GEN, "--relay-rates", "20mbit,2mbit,20mbit,20mbit,none",
              "--user-rates", ",".join(["1mbit"] * 9 + ["5mbit"])], timeout=30, check=True)
    blocks = res.stdout.split("\n\n")
    relay2 = next(b for b in blocks if b.lstrip().startswith("relay2:"))
    assert 'HMTL_RELAY_RATE: "2mbit"' in relay2
    user10 = next(b for b in blocks if b.lstrip().startswith("user10:"))
    assert 'HMTL_USER_RATE: "5mbit"' in user10
    assert res.stdout.count("HMTL_RELAY_RATE:") == 5 and res.stdout.count("HMTL_USER_RATE:") == 10
    for args, needle in (
            (["--relay-rates", "20mbit,2mbit"], "has 2 rate(s) but the topology has 5 relays"),
            (["--relay-rates", "1mbit,2xbit,1mbit,1mbit,1mbit"], "rate '2xbit' is not a tc rate"),
            (["--user-rates", "1mbit"], "--user-rates '1mbit' has 1 rate(s) but the topology "
                                        "has 10 users")):
        bad = sh([COMPOSE_GEN] + args, timeout=30)
        assert bad.returncode == 2 and needle in bad.stderr, bad.stderr
