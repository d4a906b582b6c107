#!/usr/bin/env bash
# CUDA 13.0's compiler toolkit from PyPI wheels, as the builds in gpu/ use it: nvcc, its
# back ends (cudafe++, fatbinary, nvlink, ptxas, cicc), CCCL, the runtime (static and
# shared), CUPTI and NVTX, merged into one CUDA root the way NVIDIA's installer lays it out
# (PREFIX/{bin,include,lib,nvvm}, lib64 -> lib, targets/x86_64-linux/{include,lib}).
# PyPI's CUDA 12 compiler wheels hold no nvcc (BENCHMARKS.md "Builds for the GPU machine").
#
#   bash gpu/cuda_toolkit.sh [PREFIX]       default /usr/local/cuda-13.0 (+ /usr/local/cuda link)
set -euo pipefail
prefix=${1:-/usr/local/cuda-13.0}
py=${PYTHON:-python3}
wheels=$(mktemp -d)
trap 'rm -rf "$wheels"' EXIT
"$py" -m pip download -q --no-deps -d "$wheels" nvidia-cuda-nvcc==13.0.88 nvidia-cuda-crt==13.0.88 \
  nvidia-nvvm==13.0.88 nvidia-cuda-cccl==13.0.85 nvidia-cuda-culibos==13.0.85 \
  nvidia-cuda-cupti==13.0.85 nvidia-cuda-cuxxfilt==13.0.85 nvidia-cuda-profiler-api==13.0.85 \
  nvidia-nvtx==13.0.85 nvidia-cuda-runtime==13.0.96
mkdir -p "$prefix"
for wheel in "$wheels"/*.whl; do
  "$py" -m zipfile -e "$wheel" "$wheels/x"
done
cp -a "$wheels"/x/nvidia/cu13/. "$prefix/"
rm -rf "$prefix/.metadata"   # the wheels' build notes
chmod +x "$prefix"/bin/* "$prefix"/nvvm/bin/*
(cd "$prefix/lib" && for lib in lib*.so.[0-9]*; do
   [ -e "${lib%%.so.*}.so" ] || ln -s "$lib" "${lib%%.so.*}.so"; done)
ln -sfn lib "$prefix/lib64"
mkdir -p "$prefix/targets/x86_64-linux"
ln -sfn ../../include "$prefix/targets/x86_64-linux/include"
ln -sfn ../../lib "$prefix/targets/x86_64-linux/lib"
[ -n "${1:-}" ] || ln -sfn "$prefix" /usr/local/cuda
"$prefix/bin/nvcc" --version | tail -n 1
