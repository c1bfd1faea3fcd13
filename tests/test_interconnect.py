"""hmtl_mpi.wire.interconnect: the links told from each rank's facts (pure; no MPI needed)."""

import os
import socket

from hmtl_mpi.wire.interconnect import ENV_KEYS, describe_links, local_facts

BOOT_A, BOOT_B = "aaaa-boot", "bbbb-boot"
NETNS_RUN_ENV = {"MPICH_CH4_NETMOD": "ofi", "FI_PROVIDER": "tcp", "FI_TCP_IFACE": "eth0",
                 "MPIR_CVAR_NOLOCAL": "1", "HMTL_NETNS_PREFIX": "hmtl-123"}


def rank(hostname="vm", boot=BOOT_A, netns=4026531840, container=False, **env):
    return {"hostname": hostname, "boot_id": boot, "netns": netns, "in_container": container,
            "env": dict(env)}


def test_local_facts_of_this_process():
    f = local_facts(environ={"FI_PROVIDER": "tcp", "PATH": "/bin", "SLURM_JOB_ID": "7"})
    assert f["hostname"] == socket.gethostname()
    assert f["netns"] == os.stat("/proc/self/ns/net").st_ino
    assert f["boot_id"] == open("/proc/sys/kernel/random/boot_id").read().strip()
    assert f["in_container"] == (os.path.exists("/.dockerenv")
                                 or os.path.exists("/run/.containerenv"))
    assert f["env"] == {"FI_PROVIDER": "tcp", "SLURM_JOB_ID": "7"}     # only ENV_KEYS
    assert set(f["env"]) <= set(ENV_KEYS)


def test_local_facts_in_a_container_tree(tmp_path):
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "hostname").write_text("user3\n")
    (tmp_path / ".dockerenv").write_text("")
    (tmp_path / "proc" / "sys" / "kernel" / "random").mkdir(parents=True)
    (tmp_path / "proc" / "sys" / "kernel" / "random" / "boot_id").write_text("b-1\n")
    f = local_facts(environ={}, root=str(tmp_path))
    assert f == {"hostname": "user3", "boot_id": "b-1", "netns": None, "in_container": True,
                 "env": {}}


def test_plain_mpiexec_on_one_host_is_memory_copies():
    assert describe_links([rank() for _ in range(16)]) == "memory copies on one host"


def test_netns_run_is_tcp_between_namespaces():
    facts = [rank(netns=1000 + r, **NETNS_RUN_ENV) for r in range(16)]
    text = describe_links(facts)
    assert text.startswith("TCP between network namespaces on one host (16 namespaces;")
    assert "MPICH netmod ofi, libfabric provider tcp, interface eth0" in text


def test_netns_run_inside_a_container_is_still_namespaces():
    """netns-run on a host that is itself a container: every rank sees /.dockerenv, but
    they share the host name; only their network namespaces differ."""
    facts = [rank(netns=1000 + r, container=True, **NETNS_RUN_ENV) for r in range(16)]
    assert describe_links(facts).startswith("TCP between network namespaces on one host")


def test_netns_run_with_open_mpi_is_tcp_between_namespaces():
    """netns-run --mpirun (Open MPI): OMPI_MCA_btl=tcp,self leaves no shared memory."""
    env = {"OMPI_MCA_btl": "tcp,self", "OMPI_MCA_btl_tcp_if_include": "eth0",
           "HMTL_NETNS_PREFIX": "hmtl-123"}
    text = describe_links([rank(netns=1000 + r, **env) for r in range(16)])
    assert text == ("TCP between network namespaces on one host (16 namespaces; "
                    "Open MPI BTL tcp,self, interface eth0)")
    # with the shared-memory BTL allowed, ranks of one host name use it
    shm = dict(env, OMPI_MCA_btl="sm,tcp,self")
    assert describe_links([rank(netns=1000 + r, **shm) for r in range(4)]).startswith(
        "memory copies on one host")


def test_namespaces_without_nolocal_still_use_shared_memory():
    env = dict(NETNS_RUN_ENV)
    del env["MPIR_CVAR_NOLOCAL"]
    text = describe_links([rank(netns=1000 + r, **env) for r in range(4)])
    assert text.startswith("memory copies on one host")
    assert "4 network namespaces" in text and "MPIR_CVAR_NOLOCAL=1" in text


def test_compose_containers_are_tcp_between_containers():
    names = ["server"] + ["relay%d" % i for i in range(1, 6)] + ["user%d" % i for i in range(1, 11)]
    facts = [rank(hostname=h, netns=2000 + r, container=True, **NETNS_RUN_ENV)
             for r, h in enumerate(names)]
    text = describe_links(facts)
    assert text.startswith("TCP between containers on one host (16 containers;")


def test_containers_with_distinct_names_use_the_netmod_even_without_nolocal():
    facts = [rank(hostname="c%d" % r, netns=3000 + r, container=True) for r in range(3)]
    text = describe_links(facts)
    assert text.startswith("the MPI netmod between containers on one host (3 containers;")
    assert "libfabric provider chosen by libfabric" in text


def test_several_hosts_are_the_cluster_interconnect():
    facts = ([rank(hostname="n1", boot=BOOT_A, SLURM_JOB_ID="42")] * 8
             + [rank(hostname="n2", boot=BOOT_B, SLURM_JOB_ID="42")] * 8)
    text = describe_links(facts)
    assert text.startswith("the cluster interconnect across 2 hosts (Slurm job 42) "
                           "(MPICH netmod default, libfabric provider chosen by libfabric)")
    assert text.endswith("; memory copies between ranks of one host")


def test_several_hosts_one_rank_each_and_a_forced_provider():
    facts = [rank(hostname="h%d" % r, boot="boot-%d" % r, MPICH_CH4_NETMOD="ofi",
                  FI_PROVIDER="verbs") for r in range(4)]
    assert describe_links(facts) == ("the cluster interconnect across 4 hosts "
                                      "(MPICH netmod ofi, libfabric provider verbs)")


def test_hosts_told_apart_by_name_when_boot_id_is_missing():
    facts = [rank(hostname="a", boot=None), rank(hostname="b", boot=None)]
    assert describe_links(facts).startswith("the cluster interconnect across 2 hosts")


def test_slurm_on_one_node_is_memory_copies_and_names_the_job():
    facts = [rank(SLURM_JOB_ID="7") for _ in range(16)]
    assert describe_links(facts) == "memory copies on one host (Slurm job 7)"


def test_nolocal_in_one_namespace_is_the_loopback():
    facts = [rank(MPIR_CVAR_NOLOCAL="1", FI_PROVIDER="tcp") for _ in range(2)]
    assert describe_links(facts).startswith("TCP over the loopback of one host")


def test_degenerate_inputs():
    assert describe_links([]) == "no ranks"
    assert describe_links([rank()]) == "one rank: no links"


def test_gathered_over_mpi_on_this_machine():
    """The way the summary uses it: every rank's facts gathered on rank 0."""
    import subprocess
    import sys

    import pytest
    from mpi_util import REPO, mpiexec

    code = ("from mpi4py import MPI\n"
            "from hmtl_mpi.wire.interconnect import local_facts, describe_links\n"
            "facts = MPI.COMM_WORLD.gather(local_facts(), root=0)\n"
            "if MPI.COMM_WORLD.Get_rank() == 0:\n"
            "    print('LINKS', describe_links(facts))\n")
    env = {k: v for k, v in os.environ.items()
           if k not in ENV_KEYS and k not in ("PMI_RANK", "PMI_SIZE")}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["MPIEXEC_TIMEOUT"] = "60"
    res = subprocess.run([mpiexec(), "-n", "2", sys.executable, "-c", code], capture_output=True,
                         text=True, timeout=90, env=env)
    if res.returncode != 0:
        pytest.fail(res.stderr[-2000:])
    assert "LINKS memory copies on one host" in res.stdout
