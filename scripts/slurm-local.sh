#!/usr/bin/env bash
# A real one-node SLURM on this machine, for the SLURM tests (tests/run/test_slurm.py) and for trying
# `--cluster slurm` by hand. Needs root (it installs slurm-wlm and munge with apt where missing and
# runs the daemons as root); no systemd: munged, slurmctld and slurmd are started here and stopped by
# the pids this script recorded.
#
#   scripts/slurm-local.sh start    # idempotent; exits non-zero if `sinfo` does not answer in time
#   scripts/slurm-local.sh status   # exit 0 when the cluster answers
#   scripts/slurm-local.sh stop     # stops only the daemons this script started
#
# State, spool, logs and pid files live in $SLURM_LOCAL_DIR (default /tmp/difaug-slurm).
set -euo pipefail

DIR=${SLURM_LOCAL_DIR:-/tmp/difaug-slurm}
CONF=/etc/slurm/slurm.conf
WAIT_S=${SLURM_LOCAL_WAIT_S:-60}

say() { echo "slurm-local: $*" >&2; }

answers() { timeout 10 sinfo -h -o %T >/dev/null 2>&1; }

install_packages() {
    command -v slurmctld >/dev/null && command -v munged >/dev/null && return 0
    [ "$(id -u)" = 0 ] || { say "slurm-wlm/munge are not installed and this is not root"; exit 1; }
    say "installing slurm-wlm and munge"
    DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y -q slurm-wlm munge >"$DIR/apt.log" 2>&1 ||
        { tail -5 "$DIR/apt.log" >&2; exit 1; }
}

write_conf() {
    local host cpus mem
    host=$(hostname -s)
    cpus=$(nproc)
    # slurmd's own view of the node (RealMemory in MB); a few hundred MB below it would also do.
    mem=$(slurmd -C | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p')
    mkdir -p /etc/slurm "$DIR/state" "$DIR/spool"
    cat >"$CONF" <<EOF
# Written by scripts/slurm-local.sh: a one-node test cluster.
ClusterName=difaug-local
SlurmctldHost=$host
SlurmUser=root
AuthType=auth/munge
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/slurmctld.log
SlurmdLogFile=$DIR/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
SchedulerType=sched/backfill
# Walltime kills are what a test waits for: let them happen within seconds, not minutes.
KillWait=2
OverTimeLimit=0
InactiveLimit=0
MinJobAge=30
NodeName=$host CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
}

start_munge() {
    if [ -f "$DIR/munged.pid" ] && kill -0 "$(cat "$DIR/munged.pid")" 2>/dev/null; then return 0; fi
    [ -s /etc/munge/munge.key ] || { dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 2>/dev/null; }
    chown munge:munge /etc/munge/munge.key 2>/dev/null || true
    chmod 400 /etc/munge/munge.key
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown munge:munge /run/munge /var/log/munge /var/lib/munge 2>/dev/null || true
    local user=munge
    id munge >/dev/null 2>&1 || user=root
    # munged forks: its pid file is where it says it is.
    if [ "$user" = root ]; then munged --force --pid-file="$DIR/munged.pid"; else
        runuser -u munge -- munged --force --pid-file="$DIR/munged.pid"; fi
}

start_daemon() { # name
    local name=$1 pidfile="$DIR/$1.pid"
    if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then return 0; fi
    "$name" # both daemonise and write their pid file (SlurmctldPidFile / SlurmdPidFile)
}

wait_until_up() {
    local deadline=$((SECONDS + WAIT_S))
    while [ $SECONDS -lt $deadline ]; do
        if answers && [ -n "$(sinfo -h -N -t idle,mix,alloc -o %N 2>/dev/null)" ]; then
            say "up: $(sinfo -h -N -o '%N %T cpus=%c mem=%m')"
            return 0
        fi
        sleep 1
    done
    say "no answer from sinfo with an idle node within ${WAIT_S}s; last log lines:"
    tail -n 5 "$DIR/slurmctld.log" "$DIR/slurmd.log" >&2 2>/dev/null || true
    return 1
}

stop_pid() { # pidfile
    local pidfile=$1 pid i
    [ -f "$pidfile" ] || return 0
    pid=$(cat "$pidfile")
    if kill -0 "$pid" 2>/dev/null; then
        kill "$pid"
        for i in $(seq 1 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
        kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
    fi
    rm -f "$pidfile"
}

case "${1:-}" in
start)
    mkdir -p "$DIR"
    if answers; then say "already up"; exit 0; fi
    install_packages
    write_conf
    start_munge
    start_daemon slurmctld
    start_daemon slurmd
    wait_until_up
    ;;
stop)
    stop_pid "$DIR/slurmd.pid"
    stop_pid "$DIR/slurmctld.pid"
    stop_pid "$DIR/munged.pid"
    say "stopped"
    ;;
status)
    if answers; then sinfo; else say "down"; exit 1; fi
    ;;
*)
    echo "usage: $0 start|stop|status" >&2
    exit 2
    ;;
esac
