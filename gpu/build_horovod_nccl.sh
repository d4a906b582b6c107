#!/usr/bin/env bash
# Horovod 0.28.1 with NCCL GPU operations (allreduce, allgather, alltoall, broadcast of GPU
# tensors on the GPU) for the GPU environment of ../shared/gpu/, built on the CPU machine (no
# GPU needed) against that environment's TensorFlow 2.15.1 (/opt/dlrm-gpu/venv, made by
# ../shared/gpu/pack.sh). Writes .gpu/horovod-0.28.1-cp311-cp311-linux_x86_64.whl (~19 MB);
# on the GPU machine: bash gpu/install_builds.sh.
#
#   bash gpu/build_horovod_nccl.sh          about 2.5 minutes on 2 cores
#
# Compiler: the CUDA 13.0 nvcc of this machine (/usr/local/cuda): PyPI's CUDA 12 nvcc wheels
# (nvidia-cuda-nvcc-cu12, 12.2 to 12.9) hold ptxas and libnvvm but no nvcc, cudafe++ or
# fatbinary, and nothing else here serves a CUDA 12 compiler. Horovod's CUDA code is one file
# of copy kernels (sm_80, sm_90); its CUDA runtime calls stay undefined in the library and bind
# at load time to the CUDA 12.2 runtime that TensorFlow exports. NCCL: the headers of
# nvidia-nccl-cu12 2.18.1 (what it links against); at run time the GPU machine's own
# libnccl.so.2 (ABI-stable across NCCL 2.x).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=/opt/dlrm-gpu/venv/bin/python
CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
work=${WORK:-/tmp/horovod_nccl_build}
mkdir -p "$work" .gpu
test -x "$PY" || { echo "build_horovod_nccl.sh: no $PY (run ../shared/gpu/pack.sh first)"; exit 1; }
test -x "$CUDA_HOME/bin/nvcc" || { echo "build_horovod_nccl.sh: no nvcc in $CUDA_HOME/bin"; exit 1; }
NCCL=$(bash gpu/nccl_dev.sh "$work")
HOROVOD_GPU_OPERATIONS=NCCL HOROVOD_NCCL_LINK=SHARED \
HOROVOD_NCCL_INCLUDE=$NCCL/include HOROVOD_NCCL_LIB=$NCCL/lib \
HOROVOD_CUDA_HOME=$CUDA_HOME HOROVOD_BUILD_CUDA_CC_LIST=80,90 \
HOROVOD_WITH_TENSORFLOW=1 HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_MPI=1 \
HOROVOD_WITHOUT_PYTORCH=1 HOROVOD_WITHOUT_MXNET=1 HOROVOD_CPU_OPERATIONS=gloo MAKEFLAGS=-j"$(nproc)" \
  "$PY" -m pip wheel -q --no-deps --no-build-isolation --no-cache-dir horovod==0.28.1 -w "$work/wheel"
cp "$work"/wheel/horovod-0.28.1-*.whl .gpu/
ls -la .gpu/horovod-0.28.1-*.whl
