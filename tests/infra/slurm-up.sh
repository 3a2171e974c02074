#!/usr/bin/env bash
# slurm-up.sh [N] -- bring up a disposable, cgroup-free Slurm on THIS host for tests.
#
# What it gives you
#   N emulated compute nodes n1..nN (default 4), one slurmd each, all on this
#   host, listening on ports 17001..(17000+N); one partition "debug" (default)
#   plus "batch", both over all nodes. Jobs run as the submitting user.
#   Finished jobs stay visible to scontrol/squeue for MinJobAge (3600 s);
#   every finished job also gets one line in /var/log/slurm/jobcomp.log.
#   sacct is NOT set up (accounting storage disabled) -- code under test must
#   cope with "Slurm accounting storage is disabled".
#
# Requirements: Debian 12 (bookworm) as root; no systemd needed. Installs
#   slurm-wlm + munge with apt-get when they are missing (~5 s).
#
# Idempotent: when a controller started by this script is alive, already has
#   N nodes and every node answers, it only waits for "idle" and exits.
#   Otherwise it stops what an earlier run recorded, rewrites the config,
#   wipes the controller state (job ids restart at 1) and starts afresh.
#   A lock file serialises concurrent callers.
#
# Every daemon writes its own pid file under /run/slurm or /run/munge;
#   tests/infra/slurm-down.sh stops exactly those PIDs.
#
# Timing on a 2-core VM: ~5 s from clean (download+install), ~0.3-2 s when
#   installed, ~0.1 s when already up.
set -euo pipefail

NODES_WANTED=${1:-${SPOOL_SLURM_NODES:-4}}
case "$NODES_WANTED" in ''|*[!0-9]*) echo "slurm-up: N must be a positive integer" >&2; exit 2;; esac
[ "$NODES_WANTED" -ge 1 ] || { echo "slurm-up: N must be >= 1" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "slurm-up: must run as root" >&2; exit 2; }

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CONF=/etc/slurm/slurm.conf
MARK=/run/slurm/spool-test-nodes      # written last; says "this script configured N nodes"
FIRST_PORT=17001

log() { printf 'slurm-up: %s\n' "$*" >&2; }
# A pid file names a live process (zombies do not count: PID 1 here may never reap them).
alive() {
  local pid
  [ -s "$1" ] && pid=$(cat "$1") && kill -0 "$pid" 2>/dev/null \
    && ! grep -qE '^[0-9]+ \(.*\) [ZX] ' "/proc/$pid/stat" 2>/dev/null
}

mkdir -p /run/lock
exec 9>/run/lock/spool-slurm-up.lock
flock -w 120 9 || { log "another slurm-up.sh holds the lock"; exit 1; }

# ---- 1. packages --------------------------------------------------------------
need=()
for pkg in slurm-wlm munge; do
  if ! dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null | grep -qx installed; then
    need+=("$pkg")
  fi
done
if [ ${#need[@]} -gt 0 ]; then
  log "installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

node_names() { local i; for ((i = 1; i <= NODES_WANTED; i++)); do printf 'n%d\n' "$i"; done; }

wait_idle() {
  # Ready = every one of the N nodes reports "idle" (not idle*, not down).
  local deadline=$((SECONDS + ${1:-30})) states
  while [ $SECONDS -lt $deadline ]; do
    # sinfo retries for ~9 s against a dead controller; scontrol ping answers at once.
    if ! scontrol ping 2>/dev/null | grep -q 'is UP'; then sleep 0.1; continue; fi
    states=$(sinfo -h -N -p debug -o '%N %T' 2>/dev/null | sort -u || true)
    if [ "$(printf '%s\n' "$states" | grep -c ' idle$')" -eq "$NODES_WANTED" ]; then
      return 0
    fi
    sleep 0.1
  done
  log "nodes not idle after ${1:-30}s: $(printf '%s' "$states" | tr '\n' ' ')"
  return 1
}

# ---- 2. already up with the same shape? -------------------------------------------
if [ -s "$MARK" ] && [ "$(cat "$MARK")" = "$NODES_WANTED" ] && alive /run/slurm/slurmctld.pid \
   && alive /run/munge/munged.pid; then
  all_up=1
  for n in $(node_names); do alive "/run/slurm/slurmd-$n.pid" || all_up=0; done
  if [ "$all_up" = 1 ] && wait_idle 10; then
    log "already up: $NODES_WANTED node(s)"
    exit 0
  fi
fi

# ---- 3. stop whatever an earlier run left, then configure ---------------------------
if ls /run/slurm/*.pid >/dev/null 2>&1; then
  log "restarting (stopping recorded daemons first)"
  KEEP_MUNGE=1 bash "$HERE/slurm-down.sh" >&2 9>&- || true
fi
rm -f "$MARK"

# Hardware as slurmd sees it, e.g. "CPUs=2 Boards=1 SocketsPerBoard=1 CoresPerSocket=2 ThreadsPerCore=1".
hw=$(/usr/sbin/slurmd -C | sed -n '1s/.*\(CPUs=.*ThreadsPerCore=[0-9]*\).*/\1/p')
[ -n "$hw" ] || { log "could not read hardware from slurmd -C"; exit 1; }
mem_mb=$(awk '/^MemTotal:/ {print int($2 / 1024)}' /proc/meminfo)
node_mem=$((mem_mb * 8 / 10 / NODES_WANTED))
last_port=$((FIRST_PORT + NODES_WANTED - 1))
if [ "$NODES_WANTED" -eq 1 ]; then node_range=n1; port_range=$FIRST_PORT
else node_range="n[1-$NODES_WANTED]"; port_range="$FIRST_PORT-$last_port"; fi

mkdir -p /etc/slurm /var/lib/slurm/ctld /var/log/slurm /run/slurm /run/munge
tmpconf=$(mktemp /etc/slurm/.slurm.conf.XXXXXX)
cat >"$tmpconf" <<EOF
# Written by spoolbalsam tests/infra/slurm-up.sh for tests: $NODES_WANTED emulated node(s) on one host.
ClusterName=spooltest
SlurmctldHost=localhost
SlurmUser=slurm
AuthType=auth/munge
CredType=cred/munge
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=/var/lib/slurm/ctld
SlurmdSpoolDir=/var/lib/slurm/slurmd/%n
SlurmctldPidFile=/run/slurm/slurmctld.pid
SlurmdPidFile=/run/slurm/slurmd-%n.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd-%n.log
# No cgroups in containers: track processes by parent pid, no task binding.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
# No slurmdbd: sacct answers "accounting storage is disabled"; jobcomp keeps a text trail.
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/filetxt
JobCompLoc=/var/log/slurm/jobcomp.log
# Start batch jobs on the next 1 s scheduler tick instead of every 3 s.
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0,sched_min_interval=0
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
# Keep finished jobs visible to scontrol/squeue for an hour.
MinJobAge=3600
ReturnToService=2
SlurmdTimeout=300
KillWait=5
NodeName=$node_range NodeHostname=localhost NodeAddr=127.0.0.1 Port=$port_range $hw RealMemory=$node_mem State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
PartitionName=batch Nodes=ALL Default=NO MaxTime=INFINITE State=UP
EOF
chmod 644 "$tmpconf"
mv -f "$tmpconf" "$CONF"

# Fresh controller and node state: no stale jobs or nodes from an earlier shape.
rm -rf /var/lib/slurm/ctld/* /var/lib/slurm/slurmd
mkdir -p /var/lib/slurm/slurmd
for n in $(node_names); do mkdir -p "/var/lib/slurm/slurmd/$n"; done   # slurmd won't create %n dirs
chown -R slurm:slurm /var/lib/slurm /var/log/slurm /run/slurm
chown munge:munge /run/munge

# ---- 4. start: munge, controller, one slurmd per node ----------------------------
if [ ! -s /etc/munge/munge.key ]; then
  mungekey --create --keyfile=/etc/munge/munge.key
  chown munge:munge /etc/munge/munge.key && chmod 600 /etc/munge/munge.key
fi
if ! alive /run/munge/munged.pid; then
  runuser -u munge -- /usr/sbin/munged 9>&-
fi
for _ in $(seq 100); do munge -n </dev/null >/dev/null 2>&1 && break; sleep 0.05; done

# 9>&-: daemons must not inherit the lock descriptor, or they would hold the lock forever.
/usr/sbin/slurmctld 9>&-
for n in $(node_names); do /usr/sbin/slurmd -N "$n" 9>&-; done

wait_idle 60
echo "$NODES_WANTED" >"$MARK"
log "up: $NODES_WANTED node(s) $node_range"
sinfo -N -p debug >&2
