#!/usr/bin/env bash
# slurm-down.sh -- stop what tests/infra/slurm-up.sh started, and nothing else.
#
#   1. scancel every job still known, so job steps end through Slurm itself;
#   2. SIGTERM the PIDs recorded in the daemons' own pid files
#      (/run/slurm/slurmd-*.pid, /run/slurm/slurmctld.pid, /run/munge/munged.pid)
#      all at once -- in parallel this takes ~1.5 s instead of ~10 s in sequence;
#   3. SIGKILL whatever of those PIDs is still alive after 15 s.
#
# KEEP_MUNGE=1 leaves munged running (slurm-up.sh uses that when it restarts).
# Never signals anything by name: only PIDs read from those files.
set -u

log() { printf 'slurm-down: %s\n' "$*" >&2; }
# Zombies do not count as alive: PID 1 on these machines may never reap them.
running() { kill -0 "$1" 2>/dev/null && ! grep -qE '^[0-9]+ \(.*\) [ZX] ' "/proc/$1/stat" 2>/dev/null; }
alive() { [ -s "$1" ] && running "$(cat "$1")"; }

if alive /run/slurm/slurmctld.pid && command -v squeue >/dev/null; then
  jobs=$(squeue -h -o %i 2>/dev/null || true)
  if [ -n "$jobs" ]; then
    # shellcheck disable=SC2086
    scancel --full $jobs 2>/dev/null || true
    for _ in $(seq 100); do
      [ -z "$(squeue -h -t PD,R,CG,S -o %i 2>/dev/null || true)" ] && break
      sleep 0.1
    done
  fi
fi

pidfiles=(/run/slurm/slurmd-*.pid /run/slurm/slurmctld.pid)
[ "${KEEP_MUNGE:-0}" = 1 ] || pidfiles+=(/run/munge/munged.pid)
pids=()
for f in "${pidfiles[@]}"; do
  [ -s "$f" ] || continue
  pid=$(cat "$f")
  case "$pid" in ''|*[!0-9]*) rm -f "$f"; continue;; esac
  if running "$pid" && kill -TERM "$pid" 2>/dev/null; then pids+=("$pid"); fi
  rm -f "$f"
done
rm -f /run/slurm/spool-test-nodes

deadline=$((SECONDS + 15))
while [ ${#pids[@]} -gt 0 ] && [ $SECONDS -lt $deadline ]; do
  left=()
  for p in "${pids[@]}"; do running "$p" && left+=("$p"); done
  pids=("${left[@]+"${left[@]}"}")
  [ ${#pids[@]} -gt 0 ] && sleep 0.1
done
if [ ${#pids[@]} -gt 0 ]; then
  log "still alive after 15 s, sending KILL: ${pids[*]}"
  kill -KILL "${pids[@]}" 2>/dev/null || true
fi
log "stopped"
exit 0
