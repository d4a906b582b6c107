#!/usr/bin/env bash
# Gives each rank one GPU: CUDA_VISIBLE_DEVICES = the local rank from Open MPI, SLURM or
# Horovod's own launcher. An explicit CUDA_VISIBLE_DEVICES is left alone. Exports
# DLRM_RANK (the global rank, same sources) for per-rank file names under any launcher,
# e.g. nsys's -o report_%q{DLRM_RANK}. Then execs "$@".
#   horovodrun -np 8 ./hvd_wrapper.sh python3 main.py ...
if [ -z "${CUDA_VISIBLE_DEVICES+set}" ]; then
  local_rank=${OMPI_COMM_WORLD_LOCAL_RANK:-${SLURM_LOCALID:-${HOROVOD_LOCAL_RANK:-}}}
  if [ -n "$local_rank" ]; then
    export CUDA_VISIBLE_DEVICES=$local_rank
  fi
fi
export DLRM_RANK=${OMPI_COMM_WORLD_RANK:-${PMI_RANK:-${SLURM_PROCID:-${HOROVOD_RANK:-0}}}}
exec "$@"
