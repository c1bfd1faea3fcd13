"""What the links between the ranks are, told from facts each rank can gather.

The summary's times mean little without knowing what carried the messages: memory
copies between processes of one host, TCP between network namespaces or containers
of one host, or a real cluster's network.  Nothing here assumes: every rank calls
:func:`local_facts` (its host name, its kernel's boot id, its network namespace, whether
it runs in a container, the MPICH/libfabric/Slurm variables that decide the transport),
rank 0 gathers them and :func:`describe_links` (a pure function) says what the links
were::

    facts = comm.gather(local_facts(), root=0)
    if comm.Get_rank() == 0:
        print("links:", describe_links(facts))

The rules, from what MPICH does (measured, see docs/network.md):

* Ranks whose kernels differ (``/proc/sys/kernel/random/boot_id``; the host name where
  that is missing) are on different machines: their messages cross the cluster's
  network ("the cluster interconnect across N hosts").
* MPICH treats ranks with the same host name as local and moves their messages through
  shared memory, even across network namespaces, unless ``MPIR_CVAR_NOLOCAL=1``.
* Open MPI (``launch/netns-run --mpirun``) is told to use TCP only by
  ``OMPI_MCA_btl=tcp,self``: no shared memory then either.
* Otherwise the netmod carries them (``MPICH_CH4_NETMOD``, ``FI_PROVIDER``): between
  containers (``/.dockerenv`` or ``/run/.containerenv``), between network namespaces
  (``/proc/self/ns/net`` inodes differ) or over the loopback of one namespace.
"""

from __future__ import annotations

import os
import socket
from collections import Counter

# the variables that decide (or show) the transport; netns-run sets the first four
ENV_KEYS = ("MPICH_CH4_NETMOD", "FI_PROVIDER", "FI_TCP_IFACE", "MPIR_CVAR_NOLOCAL",
            "MPIR_CVAR_CH4_NETMOD", "UCX_TLS", "SLURM_JOB_ID", "SLURM_JOB_NUM_NODES",
            "HMTL_NETNS_PREFIX", "OMPI_MCA_btl", "OMPI_MCA_btl_tcp_if_include")
CONTAINER_MARKERS = ("/.dockerenv", "/run/.containerenv")


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip() or None
    except OSError:
        return None


def _inode(path: str) -> int | None:
    try:
        return os.stat(path).st_ino
    except OSError:
        return None


def local_facts(environ=None, root: str = "/") -> dict:
    """This rank's facts, a small dict of plain values (gather it with MPI).

    ``environ`` (default ``os.environ``) and ``root`` (default ``/``, where ``proc`` and
    the container markers are looked up) are there for tests.
    """
    env = os.environ if environ is None else environ
    join = lambda p: os.path.join(root, p.lstrip("/"))
    return {
        "hostname": socket.gethostname() if root == "/" else _read(join("/etc/hostname")),
        "boot_id": _read(join("/proc/sys/kernel/random/boot_id")),
        "netns": _inode(join("/proc/self/ns/net")),
        "in_container": any(os.path.exists(join(m)) for m in CONTAINER_MARKERS),
        "env": {k: env[k] for k in ENV_KEYS if k in env},
    }


def _truthy(value) -> bool:
    return str(value).strip().lower() in ("1", "yes", "true", "on")


def _open_mpi_tcp_only(envs: list[dict]) -> bool:
    """Every rank runs Open MPI's TCP BTL without shared memory (``OMPI_MCA_btl=tcp,self``)."""
    btls = [set((e.get("OMPI_MCA_btl") or "").split(",")) for e in envs]
    return all("tcp" in b and not b & {"sm", "vader"} for b in btls)


def _netmod(envs: list[dict]) -> str:
    """'MPICH netmod ofi, libfabric provider tcp' from the ranks' variables."""
    def one(key):
        values = sorted({e.get(key) for e in envs if e.get(key)})
        return "/".join(values) if values else None

    if one("OMPI_MCA_btl"):
        iface = one("OMPI_MCA_btl_tcp_if_include")
        return "Open MPI BTL " + one("OMPI_MCA_btl") + (", interface " + iface if iface else "")

    netmod = one("MPICH_CH4_NETMOD") or one("MPIR_CVAR_CH4_NETMOD")
    provider = one("FI_PROVIDER")
    parts = ["MPICH netmod " + (netmod or "default")]
    if (netmod or "ofi").startswith("ofi"):
        parts.append("libfabric provider " + (provider or "chosen by libfabric"))
    elif one("UCX_TLS"):
        parts.append("UCX_TLS " + one("UCX_TLS"))
    iface = one("FI_TCP_IFACE")
    if iface:
        parts.append("interface " + iface)
    return ", ".join(parts)


def _carrier(envs: list[dict]) -> str:
    """'TCP' when the provider is a TCP one, else a neutral word."""
    provider = " ".join(e.get("FI_PROVIDER", "") for e in envs).lower()
    tls = " ".join(e.get("UCX_TLS", "") for e in envs).lower()
    if ("tcp" in provider or "sockets" in provider or "tcp" in tls) and \
            all(e.get("FI_PROVIDER") or e.get("UCX_TLS") for e in envs):
        return "TCP"
    if _open_mpi_tcp_only(envs):
        return "TCP"
    return "the MPI netmod"


def _plural(n: int, word: str) -> str:
    return "%d %s%s" % (n, word, "" if n == 1 else "s")


def describe_links(facts: list[dict]) -> str:
    """One line saying what carried the messages between the ranks (rank i = facts[i]).

    Examples: ``memory copies on one host``; ``TCP between network namespaces on one
    host (16 namespaces; MPICH netmod ofi, libfabric provider tcp, interface eth0)``;
    ``TCP between containers on one host (16 containers; ...)``; ``the cluster
    interconnect across 4 hosts (MPICH netmod ofi, libfabric provider chosen by
    libfabric); memory copies between ranks of one host``.
    """
    if not facts:
        return "no ranks"
    if len(facts) == 1:
        return "one rank: no links"
    envs = [f.get("env") or {} for f in facts]
    nolocal = (all(_truthy(e.get("MPIR_CVAR_NOLOCAL", "0")) for e in envs)
               or _open_mpi_tcp_only(envs))
    # machines: one kernel = one boot id (containers and namespaces share it)
    machine = [f.get("boot_id") or "host:" + str(f.get("hostname")) for f in facts]
    n_machines = len(set(machine))
    # MPICH's idea of "local": the same host name (hydra's node) on the same machine
    node = [(m, f.get("hostname")) for m, f in zip(machine, facts)]
    per_node = Counter(node)
    shm_pairs = not nolocal and any(c > 1 for c in per_node.values())
    slurm = sorted({e["SLURM_JOB_ID"] for e in envs if e.get("SLURM_JOB_ID")})
    where = " (Slurm job %s)" % ", ".join(slurm) if slurm else ""

    if n_machines > 1:
        text = "the cluster interconnect across %d hosts%s (%s)" % (
            n_machines, where, _netmod(envs))
        if shm_pairs:
            text += "; memory copies between ranks of one host"
        return text

    # one machine: who is separated from whom by the network stack?
    netns = {f.get("netns") for f in facts}
    # containers: every rank in one, and they differ (each its own host name); ranks in
    # network namespaces inside one container (netns-run on a container host) share it
    containers = (all(f.get("in_container") for f in facts)
                  and len({f.get("hostname") for f in facts}) > 1)
    if len(per_node) == 1 and not nolocal:
        text = "memory copies on one host" + where
        if len(netns) > 1:
            text += (" (the ranks sit in %d network namespaces, but MPICH moves the "
                     "messages of ranks with one host name through shared memory; "
                     "MPIR_CVAR_NOLOCAL=1 forces the netmod)" % len(netns))
        return text
    carrier = _carrier(envs)
    if containers:
        n = len(netns) if None not in netns else len(per_node)
        text = "%s between containers on one host (%s; %s)" % (
            carrier, _plural(n, "container"), _netmod(envs))
    elif len(netns) > 1 and None not in netns:
        text = "%s between network namespaces on one host (%s; %s)" % (
            carrier, _plural(len(netns), "namespace"), _netmod(envs))
    else:
        text = "%s over the loopback of one host (%s)" % (carrier, _netmod(envs))
    if shm_pairs:
        text += "; memory copies between ranks of one host name"
    return text + where
