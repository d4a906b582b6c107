#!/usr/bin/env bash
# Gives each rank one GPU: CUDA_VISIBLE_DEVICES = the local rank from Open MPI, SLURM or
# Horovod's own launcher. An explicit CUDA_VISIBLE_DEVICES is left alone. Then execs "$@".
#   horovodrun -np 8 ./hvd_wrapper.sh python3 main.py ...
if [ -z "${CUDA_VISIBLE_DEVICES+set}" ]; then
  local_rank=${OMPI_COMM_WORLD_LOCAL_RANK:-${SLURM_LOCALID:-${HOROVOD_LOCAL_RANK:-}}}
  if [ -n "$local_rank" ]; then
    export CUDA_VISIBLE_DEVICES=$local_rank
  fi
fi
exec "$@"
