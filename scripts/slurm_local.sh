#!/usr/bin/env bash
# A one-node Slurm cluster on this machine, for trying the Slurm launcher and for the tests.
#   bash scripts/slurm_local.sh install   # Debian packages (root): slurmctld slurmd slurm-client munge
#   bash scripts/slurm_local.sh start     # start munged, slurmctld, slurmd; wait until the node is idle
#   bash scripts/slurm_local.sh stop
# Clients find the cluster through SLURM_CONF: `export SLURM_CONF=$(bash scripts/slurm_local.sh conf)`.
set -euo pipefail

state=${RSST_SLURM_DIR:-/tmp/rsst-slurm}
conf="$state/slurm.conf"
host=$(hostname -s)
cpus=$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)  # nproc would report OMP_NUM_THREADS (the suite sets 1)
mem_mb=$(awk '/^MemTotal:/ {print int($2 / 1024 * 0.8)}' /proc/meminfo)

install() {
    if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sbatch >/dev/null \
        && command -v munged >/dev/null; then
        return 0
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurmctld slurmd slurm-client munge >/dev/null
}

write_conf() {
    mkdir -p "$state"/{spool,ctld,log}
    # Daemons are addressed by 127.0.0.1, never by name: a fresh machine's hostname need not resolve.
    cat > "$conf" <<CONF
ClusterName=rsst-local
SlurmctldHost=$host(127.0.0.1)
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
JobAcctGatherType=jobacct_gather/none
MpiDefault=none
ReturnToService=2
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$state/ctld
SlurmdSpoolDir=$state/spool
SlurmctldPidFile=$state/slurmctld.pid
SlurmdPidFile=$state/slurmd.pid
SlurmctldLogFile=$state/log/slurmctld.log
SlurmdLogFile=$state/log/slurmd.log
SlurmctldPort=6817
SlurmdPort=6818
MinJobAge=600
KillWait=2
NodeName=$host NodeAddr=127.0.0.1 NodeHostname=$host CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
CONF
}

running() {  # a live (not zombie) process of that name
    ps -C "$1" -o stat= 2>/dev/null | grep -qv '^Z'
}

munge_works() {  # a credential round-trip, not the socket file: a dead munged leaves its socket behind
    timeout 10 munge -n 2>/dev/null | timeout 5 unmunge >/dev/null 2>&1
}

start_munge() {
    munge_works && return 0
    pkill -x munged 2>/dev/null || true
    for _ in $(seq 10); do running munged || break; sleep 1; done
    # What an earlier munged left, one run as root included: its socket, lock and pid file, and files it made
    # as root (its log) that a munged running as munge can neither open nor replace. So the folders are
    # taken over with everything in them, not only the folders.
    rm -f /run/munge/munge.socket.2 /run/munge/munge.socket.2.lock /run/munge/munged.pid
    mkdir -p /run/munge /var/lib/munge /var/log/munge
    chown -R munge:munge /run/munge /var/lib/munge /var/log/munge
    if [ ! -s /etc/munge/munge.key ]; then
        dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null
    fi
    chown munge:munge /etc/munge/munge.key  # a key written by root is unreadable to munged otherwise
    chmod 400 /etc/munge/munge.key
    runuser -u munge -- munged --force
    local deadline=$((SECONDS + 20))
    while [ "$SECONDS" -lt "$deadline" ]; do
        munge_works && return 0
        sleep 1
    done
    echo "munged did not start; last lines of /var/log/munge/munged.log:" >&2
    tail -n 15 /var/log/munge/munged.log >&2 2>/dev/null || true
    return 1
}

start() {
    install
    write_conf
    start_munge
    export SLURM_CONF="$conf"
    running slurmctld || slurmctld -c -f "$conf"
    running slurmd || slurmd -f "$conf"
    local deadline=$((SECONDS + 90))
    while [ "$SECONDS" -lt "$deadline" ]; do
        if timeout 10 sinfo -h -o %T 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; then
            echo "slurm is up: export SLURM_CONF=$conf"
            return 0
        fi
        sleep 1
    done
    {
        echo "slurm did not come up within 90 s; logs in $state/log"
        timeout 10 sinfo -N -l 2>&1 || true
        for log in "$state"/log/slurmctld.log "$state"/log/slurmd.log; do
            echo "--- last lines of $log"; tail -n 15 "$log" 2>/dev/null || true
        done
    } >&2
    return 1
}

stop() {  # TERM, then KILL whatever is still there after 10 s (a daemon stuck in a lookup ignores TERM)
    pkill -x slurmd 2>/dev/null || true
    pkill -x slurmctld 2>/dev/null || true
    for _ in $(seq 10); do
        running slurmd || running slurmctld || return 0
        sleep 1
    done
    pkill -KILL -x slurmd 2>/dev/null || true
    pkill -KILL -x slurmctld 2>/dev/null || true
}

case "${1:-}" in
    install) install ;;
    start) start ;;
    stop) stop ;;
    conf) echo "$conf" ;;
    *) echo "usage: $0 install|start|stop|conf" >&2; exit 2 ;;
esac
