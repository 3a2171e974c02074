#!/bin/sh
# gpu_bind.sh - give each MPI rank its own slice of its job's GPUs, then exec the command.
#
# Usage:  gpu_bind.sh COMMAND [ARGS...]     (placed by spoolbalsam.launch.mpi before COMMAND)
#
# Reads, from the environment the launcher passes to every rank:
#   SPOOL_LOCAL_RANK_VAR  name of the launcher's node-local rank variable
#                         (PALS_LOCAL_RANKID, MPI_LOCALRANKID for MPICH hydra, SLURM_LOCALID)
#   SPOOL_RANK_GPUS       one slice per local rank, slices separated by ';'
#                         e.g. "0.0;0.1;1.0;1.1" or "0,1;2,3"
#   SPOOL_GPU_ENV         variable that carries a rank's GPU list
#                         (ZE_AFFINITY_MASK, CUDA_VISIBLE_DEVICES)
# and exports  $SPOOL_GPU_ENV=<slice number $local_rank>  before exec'ing COMMAND.
#
# Guarantees: POSIX sh only (no bash), no subprocesses, the command replaces this
# shell (signals and exit status are the command's own). Any inconsistency
# (unset or non-numeric rank, too few slices, bad variable names) is reported on
# stderr and exits 127 without running the command.

die() {
    echo "gpu_bind.sh: $*" >&2
    exit 127
}

[ "$#" -gt 0 ] || die "no command given"

is_name() {
    case $1 in
        '' | [0-9]* | *[!A-Za-z0-9_]*) return 1 ;;
    esac
    return 0
}

is_name "${SPOOL_LOCAL_RANK_VAR-}" || die "SPOOL_LOCAL_RANK_VAR is not a variable name: '${SPOOL_LOCAL_RANK_VAR-}'"
is_name "${SPOOL_GPU_ENV-}" || die "SPOOL_GPU_ENV is not a variable name: '${SPOOL_GPU_ENV-}'"
[ -n "${SPOOL_RANK_GPUS-}" ] || die "SPOOL_RANK_GPUS is empty"

# Names were checked above, so this eval only reads one variable.
eval "spool_rank=\${$SPOOL_LOCAL_RANK_VAR-}"
case $spool_rank in
    '' | *[!0-9]*) die "$SPOOL_LOCAL_RANK_VAR='$spool_rank' is not a local rank number" ;;
esac

spool_rest=$SPOOL_RANK_GPUS
spool_i=0
while [ "$spool_i" -lt "$spool_rank" ]; do
    case $spool_rest in
        *\;*) spool_rest=${spool_rest#*;} ;;
        *) die "local rank $spool_rank has no slice in SPOOL_RANK_GPUS='$SPOOL_RANK_GPUS'" ;;
    esac
    spool_i=$((spool_i + 1))
done
spool_slice=${spool_rest%%;*}
[ -n "$spool_slice" ] || die "local rank $spool_rank has an empty slice in SPOOL_RANK_GPUS"

export "$SPOOL_GPU_ENV=$spool_slice"
unset spool_rank spool_rest spool_i spool_slice
exec "$@"
