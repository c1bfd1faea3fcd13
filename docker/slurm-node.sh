#!/bin/bash
# A node of the container Slurm cluster of launch/slurm-cluster; installed in the
# image of docker/Dockerfile.slurm as /usr/local/bin/hmtl-slurm-node.
#
#   hmtl-slurm-node controller   munged, then slurmctld in the foreground
#   hmtl-slurm-node compute      shape eth0, munged, then slurmd -N $HMTL_SLURM_NODE
#                                in the foreground
#   hmtl-slurm-node CMD...       run CMD
#
# Read from /etc/hmtl-slurm (mounted read-only by launch/slurm-cluster):
#   slurm.conf   the cluster's configuration ($SLURM_CONF points here)
#   munge.key    the cluster's munge key (installed as /etc/munge/munge.key)
# Environment:
#   HMTL_SLURM_NODE  this compute node's NodeName in slurm.conf (c1, c2, ...)
#   HMTL_RATE        the rate of this node's eth0, both ways, in tc syntax or
#                    "none" (docker/entrypoint.sh shape, role "host"; default none)
# Logs: the daemons log to stderr (docker logs CONTAINER).

set -euo pipefail

CONF_DIR=/etc/hmtl-slurm
log() { echo "hmtl-slurm-node[$(hostname)]: $*" >&2; }
die() { log "error: $*"; exit 2; }

start_munge() {
    [ -f "$CONF_DIR/munge.key" ] || die "no munge key at $CONF_DIR/munge.key"
    install -d -o munge -g munge -m 0700 /etc/munge /var/lib/munge /var/log/munge
    install -d -o munge -g munge -m 0755 /run/munge
    install -o munge -g munge -m 0400 "$CONF_DIR/munge.key" /etc/munge/munge.key
    runuser -u munge -- /usr/sbin/munged || die "munged did not start"
    local i
    for ((i = 0; i < 50; i++)); do
        munge -n >/dev/null 2>&1 && return 0
        sleep 0.2
    done
    die "munged does not answer"
}

role="${1:-compute}"
case "$role" in
    controller)
        [ -f "${SLURM_CONF:-}" ] || die "no slurm.conf at '${SLURM_CONF:-}'"
        start_munge
        mkdir -p /var/spool/slurmctld
        log "slurmctld"
        exec slurmctld -D
        ;;
    compute)
        [ -f "${SLURM_CONF:-}" ] || die "no slurm.conf at '${SLURM_CONF:-}'"
        [ -n "${HMTL_SLURM_NODE:-}" ] || die "HMTL_SLURM_NODE is not set"
        HMTL_ROLE=host HMTL_RATE="${HMTL_RATE:-none}" hmtl-entrypoint shape
        start_munge
        mkdir -p /var/spool/slurmd
        log "slurmd -N $HMTL_SLURM_NODE"
        exec slurmd -D -N "$HMTL_SLURM_NODE"
        ;;
    *) exec "$@" ;;
esac
