#!/usr/bin/env bash
# A single-node SLURM cluster on this machine, for the tests of the SLURM executor
# (tests/test_slurm.py) and CI: installs slurm-wlm and munge when missing (Debian or
# Ubuntu), writes a slurm.conf whose one node is this host (partition `debug`, CPU only,
# no accounting), starts munged, slurmctld and slurmd as daemons and waits until the node
# answers. Idempotent: a cluster already up with this configuration is left as it is.
#
#   .ci/start-slurm.sh        start (or check) the cluster
#   .ci/start-slurm.sh stop   stop the daemons it started
set -euo pipefail

CONF=/etc/slurm/slurm.conf
CTLD_PID=/run/slurmctld.pid
SLURMD_PID=/run/slurmd.pid
MUNGE_PID=/run/munge/munged.pid
LOGS=/var/log/slurm

say() { echo "start-slurm: $*"; }

stop_pidfile() {  # stop the daemon whose pid file is $1, if it runs
    local pid
    pid=$(cat "$1" 2>/dev/null || true)
    if [ -n "$pid" ] && kill "$pid" 2>/dev/null; then
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    fi
    rm -f "$1"
}

running() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

if [ "${1:-}" = stop ]; then
    stop_pidfile "$SLURMD_PID"; stop_pidfile "$CTLD_PID"; stop_pidfile "$MUNGE_PID"
    say "stopped"; exit 0
fi

[ "$(id -u)" = 0 ] || { say "needs root (installs packages, starts daemons)"; exit 1; }
if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
    say "installing slurm-wlm and munge"
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurm-wlm munge >/dev/null
fi

# munge: a key, then the daemon (as its own user)
install -d -o munge -g munge -m 0755 /run/munge
install -d -o munge -g munge -m 0700 /etc/munge /var/lib/munge /var/log/munge
if [ ! -s /etc/munge/munge.key ]; then
    if command -v mungekey >/dev/null; then mungekey --create --keyfile=/etc/munge/munge.key
    else create-munge-key -f; fi
    chown munge:munge /etc/munge/munge.key; chmod 0400 /etc/munge/munge.key
fi
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    runuser -u munge -- munged --force
    for _ in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
fi

# slurm.conf for this host: CPUs and memory as slurmd sees them
host=$(hostname -s)
memory=$(slurmd -C | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p')
install -d /etc/slurm /var/spool/slurmctld /var/spool/slurmd "$LOGS"
config=$(cat <<EOF
# written by .ci/start-slurm.sh: one node (this host), partition debug, CPU only, no accounting
ClusterName=transferscope
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=$CTLD_PID
SlurmdPidFile=$SLURMD_PID
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
DefMemPerCPU=512
ReturnToService=2
KillWait=5
MpiDefault=none
SwitchType=switch/none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
NodeName=$host CPUs=$(nproc) RealMemory=$memory State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
)
if [ "$(cat "$CONF" 2>/dev/null)" != "$config" ]; then
    say "writing $CONF (node $host, $(nproc) CPUs, $memory MB)"
    echo "$config" > "$CONF"
    stop_pidfile "$SLURMD_PID"; stop_pidfile "$CTLD_PID"  # restart with the new configuration
fi

running "$CTLD_PID" || slurmctld
running "$SLURMD_PID" || slurmd

for _ in $(seq 300); do
    state=$(sinfo -h -n "$host" -o %T 2>/dev/null || true)
    case "$state" in
        idle|mixed|allocated|completing) say "node $host is $state (partition debug)"; exit 0 ;;
        down*|drain*|fail*) scontrol update nodename="$host" state=resume 2>/dev/null || true ;;
    esac
    sleep 0.2
done
say "the node did not come up (state: ${state:-no answer}); the logs say why:"
tail -n 20 "$LOGS/slurmctld.log" "$LOGS/slurmd.log" >&2 || true
exit 1
