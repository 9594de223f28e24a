#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, for the SLURM launcher's tests (and for trying the launcher).
#
#   bash scripts/local_slurm.sh start    # install slurm-wlm + munge if missing, write slurm.conf, start the daemons
#   bash scripts/local_slurm.sh status   # exit 0 when the cluster answers (sinfo), 1 otherwise
#   bash scripts/local_slurm.sh stop     # stop only the daemons this script started (by their pid files)
#
# Idempotent: `start` on a running cluster and `stop` on a stopped one do nothing. Needs root (it installs
# packages and runs slurmctld/slurmd as root; munged runs as the munge user). State, spool, logs, pid files and the
# finished-job records (jobcomp/filetxt: there is no accounting daemon, so `sacct` has no history) live under
# $LOCAL_SLURM_DIR (default /tmp/craft-local-slurm). The node has this machine's CPUs and no GPUs. The daemons read
# the configuration from $LOCAL_SLURM_DIR/slurm.conf; /etc/slurm/slurm.conf is made a link to it (client commands
# read that path) unless it is a file this script did not write, which is then an error, not overwritten.
set -euo pipefail

DIR="${LOCAL_SLURM_DIR:-/tmp/craft-local-slurm}"
CONF="$DIR/slurm.conf"
ETC_CONF=/etc/slurm/slurm.conf
MARK="# written by scripts/local_slurm.sh"
MUNGED_PID="$DIR/munge/munged.pid"

log() { echo "local_slurm: $*" >&2; }
die() { log "error: $*"; exit 1; }

alive() {  # alive PIDFILE: the pid in the file is a running process
    [[ -s "$1" ]] && kill -0 "$(cat "$1")" 2>/dev/null
}

answers() { timeout 60 sinfo -h >/dev/null 2>&1; }  # a loaded machine can take a while

install_packages() {
    if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null \
        && command -v sbatch >/dev/null; then
        return
    fi
    command -v apt-get >/dev/null || die "slurm-wlm/munge are not installed and there is no apt-get to install them"
    log "installing slurm-wlm and munge (apt-get)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null
}

write_conf() {
    local host cpus mem
    host="$(hostname -s)"
    cpus="$(nproc)"
    mem=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 * 8 / 10 ))  # MB, 80% of the machine
    mkdir -p "$DIR/state" "$DIR/slurmd"
    cat > "$CONF.tmp" <<CONF
$MARK
ClusterName=craftlocal
SlurmctldHost=$host
SlurmUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmdSpoolDir=$DIR/slurmd
StateSaveLocation=$DIR/state
SlurmctldLogFile=$DIR/slurmctld.log
SlurmdLogFile=$DIR/slurmd.log
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$DIR/jobcomp.txt
MinJobAge=600
KillWait=10
# CI machines are shared and busy: give the daemons time before a client reports a socket timeout
MessageTimeout=60
NodeName=$host CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF
    mv "$CONF.tmp" "$CONF"
    mkdir -p /etc/slurm
    if [[ -e "$ETC_CONF" && ! -L "$ETC_CONF" ]]; then
        grep -qF "$MARK" "$ETC_CONF" || die "$ETC_CONF exists and was not written by this script; not touching it"
        rm -f "$ETC_CONF"
    fi
    ln -sfn "$CONF" "$ETC_CONF"
}

start() {
    [[ $(id -u) -eq 0 ]] || die "start needs root (packages, daemons)"
    if alive "$DIR/slurmctld.pid" && alive "$DIR/slurmd.pid" && answers; then
        log "already running ($DIR)"
        return
    fi
    local launched=0  # did this call start a daemon? ("already running" otherwise: the caller must not stop it)
    install_packages
    if ! alive "$DIR/slurmctld.pid" || ! alive "$DIR/slurmd.pid"; then
        write_conf
    fi
    if ! alive "$MUNGED_PID"; then
        launched=1
        [[ -f /etc/munge/munge.key ]] || /usr/sbin/mungekey -c >/dev/null
        mkdir -p /run/munge /var/log/munge /var/lib/munge "$DIR/munge"
        chown munge:munge /etc/munge/munge.key /run/munge /var/log/munge /var/lib/munge "$DIR/munge"
        # munged runs as the munge user and writes its own pid file (in a directory it owns)
        su -s /bin/sh munge -c "/usr/sbin/munged --pid-file=$MUNGED_PID --socket=/run/munge/munge.socket.2"
        for _ in $(seq 20); do alive "$MUNGED_PID" && break; sleep 0.25; done
        alive "$MUNGED_PID" || die "munged did not start; see /var/log/munge/munged.log"
    fi
    alive "$DIR/slurmctld.pid" || { launched=1; /usr/sbin/slurmctld -f "$CONF"; }
    alive "$DIR/slurmd.pid" || { launched=1; /usr/sbin/slurmd -f "$CONF"; }
    for _ in $(seq 60); do
        if answers && sinfo -h -o %t | grep -qE '^(idle|mix|alloc)'; then
            if [[ $launched -eq 1 ]]; then log "running: $(sinfo -h -o '%P %a %D %t %N')"; else log "already running ($DIR)"; fi
            return
        fi
        sleep 0.5
    done
    die "the cluster did not come up within 30 s; see $DIR/slurmctld.log and $DIR/slurmd.log"
}

stop_one() {  # stop_one NAME: SIGTERM the pid in $DIR/NAME.pid, wait up to 15 s, then SIGKILL
    local pidfile="$DIR/$1.pid" pid  # NAME may have a directory part (munge/munged)
    if ! alive "$pidfile"; then
        rm -f "$pidfile"
        return
    fi
    pid="$(cat "$pidfile")"
    kill "$pid"
    for _ in $(seq 30); do
        kill -0 "$pid" 2>/dev/null || { rm -f "$pidfile"; log "stopped $1 (pid $pid)"; return; }
        sleep 0.5
    done
    kill -9 "$pid" 2>/dev/null || true
    rm -f "$pidfile"
    log "killed $1 (pid $pid)"
}

stop() {
    stop_one slurmd
    stop_one slurmctld
    stop_one munge/munged
}

status() {
    local name ok=0
    for name in munge/munged slurmctld slurmd; do
        if alive "$DIR/$name.pid"; then echo "$name: running (pid $(cat "$DIR/$name.pid"))"; else echo "$name: stopped"; ok=1; fi
    done
    if [[ $ok -eq 0 ]] && answers; then sinfo; else echo "cluster: not answering"; return 1; fi
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) status ;;
    *) echo "usage: $0 start|stop|status  (state in \$LOCAL_SLURM_DIR, default /tmp/craft-local-slurm)" >&2; exit 2 ;;
esac
