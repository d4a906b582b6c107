// CUDA kernels of table_ops.h. A block is 8 warps; each warp takes one key at a time (grid
// stride) and its 32 lanes walk the key's row, four values a lane per float4 when D % 4 == 0.
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>

#include "table_ops.h"

namespace {

constexpr int kWarps = 8;

__device__ __forceinline__ float ToFloat(float v) { return v; }
__device__ __forceinline__ float ToFloat(__half v) { return __half2float(v); }
template <typename T>
__device__ __forceinline__ T FromFloat(float v);
template <>
__device__ __forceinline__ float FromFloat<float>(float v) { return v; }
template <>
__device__ __forceinline__ __half FromFloat<__half>(float v) { return __float2half_rn(v); }

// Four consecutive values of T at p (16-byte float4 or 8-byte half4 accesses).
__device__ __forceinline__ float4 Load4(const float* p) {
  return *reinterpret_cast<const float4*>(p);
}
__device__ __forceinline__ float4 Load4(const __half* p) {
  const uint2 raw = *reinterpret_cast<const uint2*>(p);
  const float2 a = __half22float2(*reinterpret_cast<const __half2*>(&raw.x));
  const float2 b = __half22float2(*reinterpret_cast<const __half2*>(&raw.y));
  return make_float4(a.x, a.y, b.x, b.y);
}
__device__ __forceinline__ void Store4(float* p, float4 v) {
  *reinterpret_cast<float4*>(p) = v;
}
__device__ __forceinline__ void Store4(__half* p, float4 v) {
  __half2 a = __floats2half2_rn(v.x, v.y), b = __floats2half2_rn(v.z, v.w);
  uint2 raw;
  raw.x = *reinterpret_cast<unsigned*>(&a);
  raw.y = *reinterpret_cast<unsigned*>(&b);
  *reinterpret_cast<uint2*>(p) = raw;
}

template <typename T, bool kVector>
__global__ void __launch_bounds__(kWarps * 32)
    GatherKernel(const float* __restrict__ table, long long num_rows, int dim,
                 const long long* __restrict__ rows, long long K, T* __restrict__ out) {
  const int lane = threadIdx.x & 31;
  for (long long k = blockIdx.x * static_cast<long long>(kWarps) + threadIdx.x / 32; k < K;
       k += static_cast<long long>(gridDim.x) * kWarps) {
    const long long row = rows[k];
    const bool valid = row >= 0 && row < num_rows;
    const float* src = table + (valid ? row : 0) * dim;
    T* dst = out + k * dim;
    if (kVector) {
      for (int c = lane * 4; c < dim; c += 128)
        Store4(dst + c, valid ? Load4(src + c) : make_float4(0.f, 0.f, 0.f, 0.f));
    } else {
      for (int c = lane; c < dim; c += 32) dst[c] = FromFloat<T>(valid ? src[c] : 0.f);
    }
  }
}

template <typename T, bool kVector>
__global__ void __launch_bounds__(kWarps * 32)
    SgdUpdateKernel(float* __restrict__ table, long long num_rows, int dim,
                    const long long* __restrict__ rows, long long K, const T* __restrict__ grads,
                    const float* __restrict__ rate) {
  const float step = -*rate;
  if (step == 0.f) return;  // a skipped step: no row changes, whatever grads holds
  const int lane = threadIdx.x & 31;
  for (long long k = blockIdx.x * static_cast<long long>(kWarps) + threadIdx.x / 32; k < K;
       k += static_cast<long long>(gridDim.x) * kWarps) {
    const long long row = rows[k];
    if (row < 0 || row >= num_rows) continue;
    float* dst = table + row * dim;
    const T* grad = grads + k * dim;
    if (kVector) {
      for (int c = lane * 4; c < dim; c += 128) {
        const float4 g = Load4(grad + c);
        atomicAdd(dst + c, step * g.x);
        atomicAdd(dst + c + 1, step * g.y);
        atomicAdd(dst + c + 2, step * g.z);
        atomicAdd(dst + c + 3, step * g.w);
      }
    } else {
      for (int c = lane; c < dim; c += 32) atomicAdd(dst + c, step * ToFloat(grad[c]));
    }
  }
}

unsigned Blocks(long long K) {
  const long long wanted = (K + kWarps - 1) / kWarps;
  return static_cast<unsigned>(std::min<long long>(wanted, 1LL << 20));
}

template <typename T>
cudaError_t Gather(const float* table, long long num_rows, int dim, const long long* rows,
                   long long K, void* out, cudaStream_t stream) {
  if (dim % 4 == 0)
    GatherKernel<T, true><<<Blocks(K), kWarps * 32, 0, stream>>>(
        table, num_rows, dim, rows, K, static_cast<T*>(out));
  else
    GatherKernel<T, false><<<Blocks(K), kWarps * 32, 0, stream>>>(
        table, num_rows, dim, rows, K, static_cast<T*>(out));
  return cudaGetLastError();
}

template <typename T>
cudaError_t SgdUpdate(float* table, long long num_rows, int dim, const long long* rows,
                      long long K, const void* grads, const float* rate, cudaStream_t stream) {
  if (dim % 4 == 0)
    SgdUpdateKernel<T, true><<<Blocks(K), kWarps * 32, 0, stream>>>(
        table, num_rows, dim, rows, K, static_cast<const T*>(grads), rate);
  else
    SgdUpdateKernel<T, false><<<Blocks(K), kWarps * 32, 0, stream>>>(
        table, num_rows, dim, rows, K, static_cast<const T*>(grads), rate);
  return cudaGetLastError();
}

}  // namespace

extern "C" int table_gather_gpu(int dtype, const float* table, long long num_rows, int dim,
                                const long long* rows, long long K, void* out, void* stream) {
  if (K == 0) return cudaSuccess;
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  if (dtype == kTableOpsF16) return Gather<__half>(table, num_rows, dim, rows, K, out, s);
  if (dtype == kTableOpsF32) return Gather<float>(table, num_rows, dim, rows, K, out, s);
  return cudaErrorInvalidValue;
}

extern "C" int table_sgd_update_gpu(int dtype, float* table, long long num_rows, int dim,
                                    const long long* rows, long long K, const void* grads,
                                    const float* rate, void* stream) {
  if (K == 0) return cudaSuccess;
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  if (dtype == kTableOpsF16)
    return SgdUpdate<__half>(table, num_rows, dim, rows, K, grads, rate, s);
  if (dtype == kTableOpsF32)
    return SgdUpdate<float>(table, num_rows, dim, rows, K, grads, rate, s);
  return cudaErrorInvalidValue;
}

extern "C" int table_copy_gpu(void* to, const void* from, long long bytes, void* stream) {
  return cudaMemcpyAsync(to, from, bytes, cudaMemcpyDeviceToDevice,
                         static_cast<cudaStream_t>(stream));
}

extern "C" const char* table_ops_gpu_error_string(int code) {
  return cudaGetErrorString(static_cast<cudaError_t>(code));
}
