#!/bin/bash
# hmtl_mpi container entrypoint (installed in the image as /usr/local/bin/hmtl-entrypoint).
#
# One image for every node.  The role comes from HMTL_ROLE=server|relay|user,
# the link rates from HMTL_W1 / HMTL_W2 (tc syntax: 50mbit, 1gbit, ... or
# "none"), the same names and rank order as launch/netns-run:
#     rank 0 = server, ranks 1..H = relays, ranks H+1..H+K = users.
#
# Usage (as ENTRYPOINT; the argument selects the mode):
#   hmtl-entrypoint [node]      shape eth0 for HMTL_ROLE, start sshd; the server
#                               then waits for every host's sshd, writes the
#                               hostfile in rank order and runs the job with
#                               mpiexec over ssh; relays and users just serve ssh.
#   hmtl-entrypoint job         on the server: only run the job (the cluster
#                               must be up; docker/run uses 'node' instead)
#   hmtl-entrypoint shape       only shape eth0 (and exit)
#   hmtl-entrypoint hostfile    only print the hostfile
#   hmtl-entrypoint rank CMD..  per-rank wrapper used by mpiexec: sets
#                               HMTL_ROLE from PMI_RANK and HMTL_RELAYS, runs CMD
#   hmtl-entrypoint CMD...      run CMD (e.g. bash)
#
# Shaping, as in netns-run (where the switch-side veth shapes the traffic INTO
# a host; a container cannot touch its host-side veth, so ingress goes through
# an ifb device instead):
#   user:   W1 on eth0 egress and W1 on eth0 ingress (via ifb)
#   server: W2 on eth0 egress and W2 on eth0 ingress (via ifb); one W2 shared
#           by all relays, as the paper's shared relay<->server link
#   relay:  unshaped; with HMTL_RELAY_RATE only its traffic with the server at that
#           rate, both ways (htb + a u32 filter on the server's address), as
#           netns-run --relay-rates does
#   user:   HMTL_USER_RATE, when set, instead of W1 (netns-run --user-rates)
#   host:   HMTL_RATE on eth0 egress and ingress: a whole machine's link, for the
#           Slurm nodes of launch/slurm-cluster (several ranks of any role per node)
# Needs cap_add: [NET_ADMIN]; ingress also needs the host's ifb module
# (modprobe ifb on the Docker host).  If ifb is missing, only egress is shaped
# and a warning says so.
#
# Environment:
#   HMTL_ROLE          server | relay | user (| host: only for 'shape', see above)
#   HMTL_W1, HMTL_W2   link rates (default none = unshaped)
#   HMTL_RATE          the link rate of role host (default none)
#   HMTL_RELAY_RATE    a relay's own link to the server (default none: unshaped)
#   HMTL_USER_RATE     a user's link instead of HMTL_W1 (default: HMTL_W1)
#   HMTL_SERVER_ADDR   the server's address for HMTL_RELAY_RATE (default: host 'server')
#   HMTL_RELAYS        H (default 5), HMTL_USERS: K (default 10)
#   HMTL_HOSTS         optional: all host names in rank order, space separated
#                      (default: server relay1..relayH user1..userK)
#   HMTL_CMD           the job, run on every rank (default:
#                      python -m hmtl_mpi --topology paper-fig2 --report /out/report.json)
#   HMTL_OUT_DIR       the folder the job writes to (default /out, a host folder
#                      mounted by docker-compose.yml); files the job creates
#                      there are given to the folder's owner afterwards
#   HMTL_SSH_KEY_DIR   optional: a mounted folder with id_ed25519 (+ .pub) and/or
#                      authorized_keys that replace the key baked into the image
#                      (per-deployment keys; see docker/README.md)
#   HMTL_TBF_BURST     tbf burst (default 1 ms of the rate, at least 4096 b)
#   HMTL_TBF_LATENCY   tbf latency (default 100ms)
#   HMTL_SSH_WAIT      seconds the server waits for the other sshd's (default 180)
#   MPIEXEC_TIMEOUT    hydra's job timeout in seconds (default 900)
#   HMTL_LAUNCHER_EXEC testing only: program used instead of ssh ("PROG host cmd...")

set -euo pipefail

HMTL_ROLE="${HMTL_ROLE:-}"
HMTL_W1="${HMTL_W1:-none}"
HMTL_W2="${HMTL_W2:-none}"
HMTL_RELAYS="${HMTL_RELAYS:-5}"
HMTL_USERS="${HMTL_USERS:-10}"
HMTL_OUT_DIR="${HMTL_OUT_DIR:-/out}"
HMTL_CMD="${HMTL_CMD:-python -m hmtl_mpi --topology paper-fig2 --report $HMTL_OUT_DIR/report.json}"
HMTL_TBF_LATENCY="${HMTL_TBF_LATENCY:-100ms}"
HMTL_SSH_WAIT="${HMTL_SSH_WAIT:-180}"
HOSTFILE="${HMTL_HOSTFILE:-/etc/hmtl/hosts}"
IFACE="${HMTL_IFACE:-eth0}"
SELF="$(readlink -f "$0")"
REMOTE=(ssh -o BatchMode=yes -o ConnectTimeout=3)
LAUNCHER=(-launcher ssh)
if [ -n "${HMTL_LAUNCHER_EXEC:-}" ]; then
    REMOTE=("$HMTL_LAUNCHER_EXEC")
    LAUNCHER=(-launcher ssh -launcher-exec "$HMTL_LAUNCHER_EXEC")
fi

log() { echo "hmtl-entrypoint[${HMTL_ROLE:-?}@$(hostname)]: $*" >&2; }
die() { log "error: $*"; exit 2; }

is_unshaped() { case "${1,,}" in none|unlimited|off|"") return 0 ;; *) return 1 ;; esac; }

# tbf burst: 1 ms worth of the rate, at least 4096 bytes (as netns-run)
burst_for() {
    if [ -n "${HMTL_TBF_BURST:-}" ]; then echo "$HMTL_TBF_BURST"; return; fi
    python3 - "$1" <<'EOF'
import re, sys
m = re.match(r"^(\d+(?:\.\d+)?)([kmgt]i?)?(bit|bps)$", sys.argv[1], re.I)
if not m:
    sys.exit("not a tc rate: %r" % sys.argv[1])
units = {"": 1, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12,
         "ki": 1024, "mi": 1024**2, "gi": 1024**3, "ti": 1024**4}
bps = float(m.group(1)) * units[(m.group(2) or "").lower()]
if m.group(3).lower() == "bit":
    bps /= 8
print("%db" % max(4096, int(bps / 1000)))
EOF
}

# relay with HMTL_RELAY_RATE: only its traffic with the server, both ways, at that
# rate (an htb class picked by a u32 filter on the server's address; everything
# else is unclassified and htb passes it straight on); ingress through an ifb
htb_to() {   # dev direction(dst|src) rate burst server
    tc qdisc replace dev "$1" root handle 1: htb \
        || die "tc failed on $1 (is cap_add: [NET_ADMIN] set?)"
    tc class add dev "$1" parent 1: classid 1:1 htb rate "$3" ceil "$3" \
        burst "$4" cburst "$4"
    tc filter add dev "$1" parent 1: protocol ip prio 1 u32 match ip "$2" "$5/32" \
        flowid 1:1
}

shape_relay_link() {
    local rate="$1" server burst ifb="ifb-hmtl"
    server="${HMTL_SERVER_ADDR:-$( (getent hosts server || true) | awk '{print $1; exit}')}"
    [ -n "$server" ] || die "relay: cannot resolve the server's address (host 'server')"
    burst="$(burst_for "$rate")" || die "bad HMTL_RELAY_RATE '$rate'"
    htb_to "$IFACE" dst "$rate" "$burst" "$server"
    if ip link add "$ifb" type ifb 2>/dev/null || ip link show "$ifb" >/dev/null 2>&1; then
        ip link set "$ifb" up
        htb_to "$ifb" src "$rate" "$burst" "$server"
        tc qdisc del dev "$IFACE" ingress 2>/dev/null || true
        tc qdisc add dev "$IFACE" handle ffff: ingress
        tc filter add dev "$IFACE" parent ffff: protocol all u32 match u32 0 0 \
            action mirred egress redirect dev "$ifb"
        log "relay: link to the server $server shaped to $rate both ways (burst $burst)"
    else
        log "warning: cannot create an ifb device (modprobe ifb on the Docker host?):" \
            "only traffic from the relay to the server is shaped to $rate"
    fi
}

shape() {
    local rate
    case "$HMTL_ROLE" in
        server) rate="$HMTL_W2" ;;
        user)   rate="${HMTL_USER_RATE:-$HMTL_W1}" ;;
        relay)
            if is_unshaped "${HMTL_RELAY_RATE:-}"; then log "relay: links unshaped"; return 0; fi
            shape_relay_link "$HMTL_RELAY_RATE"; return 0 ;;
        host)   rate="${HMTL_RATE:-none}" ;;
        *)      die "HMTL_ROLE must be server, relay, user or host (got '${HMTL_ROLE}')" ;;
    esac
    if is_unshaped "$rate"; then log "$HMTL_ROLE: rate '$rate': unshaped"; return 0; fi
    local burst; burst="$(burst_for "$rate")" || die "bad rate '$rate'"
    # traffic out of this host
    tc qdisc replace dev "$IFACE" root tbf rate "$rate" burst "$burst" \
        latency "$HMTL_TBF_LATENCY" \
        || die "tc failed on $IFACE (is cap_add: [NET_ADMIN] set?)"
    # traffic into this host: redirect ingress to an ifb device and shape its egress
    local ifb="ifb-hmtl"
    if ip link add "$ifb" type ifb 2>/dev/null || ip link show "$ifb" >/dev/null 2>&1; then
        ip link set "$ifb" up
        tc qdisc replace dev "$ifb" root tbf rate "$rate" burst "$burst" latency "$HMTL_TBF_LATENCY"
        tc qdisc del dev "$IFACE" ingress 2>/dev/null || true
        tc qdisc add dev "$IFACE" handle ffff: ingress
        tc filter add dev "$IFACE" parent ffff: protocol all u32 match u32 0 0 \
            action mirred egress redirect dev "$ifb"
        log "$HMTL_ROLE: $IFACE shaped to $rate both ways (burst $burst, ingress via $ifb)"
    else
        log "warning: cannot create an ifb device (modprobe ifb on the Docker host?):" \
            "only traffic OUT of $HMTL_ROLE is shaped to $rate"
    fi
}

hosts_in_rank_order() {
    if [ -n "${HMTL_HOSTS:-}" ]; then
        tr ' ' '\n' <<<"$HMTL_HOSTS" | sed '/^$/d'
        return
    fi
    echo server
    local i
    for ((i = 1; i <= HMTL_RELAYS; i++)); do echo "relay$i"; done
    for ((i = 1; i <= HMTL_USERS; i++)); do echo "user$i"; done
}

write_hostfile() {
    mkdir -p "$(dirname "$HOSTFILE")"
    {
        echo "# generated by hmtl-entrypoint: MPICH hydra hostfile, one slot per host,"
        echo "# in rank order: server (rank 0), relays (1..H), users (H+1..H+K)"
        hosts_in_rank_order | sed 's/$/:1/'
    } >"$HOSTFILE"
}

# Per-deployment ssh keys: replace the baked key with mounted ones.
install_keys() {
    local d="${HMTL_SSH_KEY_DIR:-}" f
    [ -n "$d" ] || return 0
    [ -d "$d" ] || die "HMTL_SSH_KEY_DIR=$d is not a folder"
    for f in id_ed25519 id_ed25519.pub authorized_keys; do
        if [ -f "$d/$f" ]; then
            install -m 600 "$d/$f" "/root/.ssh/$f"
        elif [ "$f" != authorized_keys ]; then
            rm -f "/root/.ssh/$f"        # never keep half of the baked pair
        fi
    done
    # a key pair alone: trust its public half
    if [ ! -f "$d/authorized_keys" ] && [ -f "$d/id_ed25519.pub" ]; then
        install -m 600 "$d/id_ed25519.pub" /root/.ssh/authorized_keys
    fi
    log "ssh keys from $d"
}

# Files the job created in HMTL_OUT_DIR belong to root; give them to the owner
# of that (host) folder so a non-root user can delete them.
give_back_outputs() {
    local marker="$1" owner
    [ -d "$HMTL_OUT_DIR" ] || return 0
    owner="$(stat -c %u:%g "$HMTL_OUT_DIR")"
    [ "$owner" != 0:0 ] || return 0
    find "$HMTL_OUT_DIR" -maxdepth 1 -newer "$marker" -user 0 \
        -exec chown "$owner" {} + 2>/dev/null || true
}

start_sshd() {
    mkdir -p /run/sshd
    /usr/sbin/sshd -e || die "sshd did not start"
}

wait_for_hosts() {
    local deadline=$((SECONDS + HMTL_SSH_WAIT)) h
    for h in $(hosts_in_rank_order); do
        until "${REMOTE[@]}" "$h" true 2>/dev/null; do
            [ "$SECONDS" -lt "$deadline" ] || die "no ssh to $h after ${HMTL_SSH_WAIT}s"
            sleep 1
        done
    done
    log "all hosts answer ssh"
}

run_job() {
    local n
    n="$(hosts_in_rank_order | wc -l)"
    write_hostfile
    wait_for_hosts
    # same settings as netns-run: MPICH over TCP on eth0
    export MPICH_CH4_NETMOD=ofi FI_PROVIDER=tcp FI_TCP_IFACE="$IFACE" MPIR_CVAR_NOLOCAL=1
    export MPIEXEC_TIMEOUT="${MPIEXEC_TIMEOUT:-900}"
    export HMTL_W1 HMTL_W2 HMTL_RELAYS HMTL_USERS
    log "mpiexec -n $n over ssh (hostfile $HOSTFILE): $HMTL_CMD"
    # hydra hands mpiexec's environment to every rank, so HMTL_ROLE=server
    # must not leak: each rank sets its own role in 'hmtl-entrypoint rank'.
    # shellcheck disable=SC2086
    env -u HMTL_ROLE mpiexec "${LAUNCHER[@]}" -f "$HOSTFILE" -n "$n" \
        "$SELF" rank $HMTL_CMD
}

mode="${1:-node}"
case "$mode" in
    node)
        shape
        install_keys
        start_sshd
        if [ "$HMTL_ROLE" = server ]; then
            marker="$(mktemp)"
            set +e; run_job; rc=$?; set -e
            give_back_outputs "$marker"; rm -f "$marker"
            log "job exited with status $rc"
            exit "$rc"
        fi
        log "serving ssh"
        # keep the container alive (sshd daemonized above)
        exec sleep infinity
        ;;
    job) run_job ;;
    shape) shape ;;
    hostfile) write_hostfile; cat "$HOSTFILE" ;;
    rank)
        shift
        r="${PMI_RANK:-${PMI_ID:-}}"
        case "$r" in ''|*[!0-9]*) die "rank: PMI_RANK is not set" ;; esac
        if [ "$r" -eq 0 ]; then HMTL_ROLE=server
        elif [ "$r" -le "$HMTL_RELAYS" ]; then HMTL_ROLE=relay
        else HMTL_ROLE=user; fi
        export HMTL_ROLE
        exec "$@"
        ;;
    *) exec "$@" ;;
esac
