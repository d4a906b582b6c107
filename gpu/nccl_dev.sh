#!/usr/bin/env bash
# NCCL 2.18.1's headers and library (the nvidia-nccl-cu12 wheel), what Horovod and SOK are
# built against, unpacked once into DIR; prints the NCCL root (include/, lib/).
#
#   NCCL=$(bash gpu/nccl_dev.sh DIR)
set -euo pipefail
dir=$1
root=$dir/nccl/nvidia/nccl
if [ ! -f "$root/include/nccl.h" ]; then
  /opt/dlrm-gpu/venv/bin/python -m pip download -q --no-deps -d "$dir" nvidia-nccl-cu12==2.18.1 >&2
  /opt/dlrm-gpu/venv/bin/python -m zipfile -e "$dir"/nvidia_nccl_cu12-2.18.1-*.whl "$dir/nccl"
  ln -sf libnccl.so.2 "$root/lib/libnccl.so"
fi
echo "$root"
