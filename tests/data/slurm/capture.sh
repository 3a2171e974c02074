#!/usr/bin/env bash
# Re-record the Slurm outputs in this directory from a real Slurm brought up by
# tests/infra/slurm-up.sh (4 nodes). Takes ~2 min (the TIMEOUT case waits for
# slurmctld's time-limit check). Job ids in the files are whatever Slurm gave.
set -euo pipefail
cd "$(dirname "$0")"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
sb() { sbatch --parsable -o /dev/null --chdir "$work" "$@"; }
wait_state() {  # id regex
  for _ in $(seq 1200); do
    scontrol show job -o "$1" | grep -qE "JobState=($2) " && return 0
    sleep 0.1
  done
  echo "capture: job $1 never reached $2" >&2; return 1
}

ok=$(sb -N 2 -J capture-ok --wrap 'srun hostname >/dev/null; exit 0')
fail=$(sb -J capture-fail --wrap 'exit 3')
timeout=$(sb -t 1 -J capture-timeout --wrap 'sleep 600')
run=$(sb -N 4 -J capture-run --wrap 'sleep 600')
wait_state "$run" RUNNING
# Every node is taken by capture-run now (exclusive), so this one stays PENDING.
pend=$(sb -N 4 --exclusive -J capture-pending --wrap 'true')
wait_state "$ok" COMPLETED
wait_state "$fail" FAILED
sleep 1
printf '%s\n' "$ok" >sbatch-parsable.txt
squeue -h -t all -j "$run,$pend,$ok,$fail" -o '%i|%T|%r|%N|%S|%e' >squeue-mixed.txt
scontrol show job -o "$pend" >scontrol-pending.txt
scontrol show job -o "$run" >scontrol-running.txt
scontrol show job -o "$ok" >scontrol-completed-2nodes.txt
scontrol show job -o "$fail" >scontrol-failed-exit3.txt
scancel "$run"
wait_state "$run" CANCELLED
scontrol show job -o "$run" >scontrol-cancelled-running.txt
scancel "$pend"
wait_state "$pend" CANCELLED
scontrol show job -o "$pend" >scontrol-cancelled-pending.txt
{ squeue -h -t all -j 999999 -o '%i|%T' 2>&1 || echo "rc=$?"; } >squeue-invalid-id.txt
{ scontrol show job -o 999999 2>&1 || echo "rc=$?"; } >scontrol-invalid-id.txt
{ sacct -n -P -X -j "$ok" -o JobID,State,ExitCode,NodeList,Start,End 2>&1 || echo "rc=$?"; } >sacct-disabled.txt
wait_state "$timeout" TIMEOUT
scontrol show job -o "$timeout" >scontrol-timeout.txt
squeue -h -t all -j "$timeout" -o '%i|%T|%r|%N|%S|%e' >squeue-timeout.txt
echo "capture: done"
