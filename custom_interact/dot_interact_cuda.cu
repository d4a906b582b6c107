// CUDA kernels and launchers of the DLRM dot interaction (C API in dot_interact.h).
//
// Fast path (D == 128, F <= 32): one warp per sample. The sample is copied to shared memory
// with cp.async; the Gram tiles of the strict lower triangle (forward) and dX = S X with S the
// symmetric [32, 32] matrix of pair gradients (backward) are computed with mma.sync: fp16/bf16
// m16n8k16, fp32 inputs as TF32 m16n8k8 (rounded to nearest); accumulation in fp32. Results
// are staged in shared memory and written with 16-byte stores. Rows >= F are never loaded:
// fragment rows past F read row 0 instead, and S's columns past F are zero.
// General path (any D, F <= 64): one block of 256 threads per sample, fp32 SIMT arithmetic
// over D in chunks of 32 held in shared memory.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "dot_interact.h"

namespace {

constexpr int kFastD = 128;
constexpr int kFastMaxF = 32;
constexpr int kFastWarps = 2;  // warps (samples) per block of the fast kernels
constexpr int kMaxF = kDotInteractGpuMaxFeatures;
constexpr int kGenThreads = 256;
constexpr int kGenChunk = 32;
constexpr int kGenPairsPerThread = (kMaxF * (kMaxF - 1) / 2 + kGenThreads - 1) / kGenThreads;

__host__ __device__ inline int OutputWidth(int F, int D) {
  return (D + F * (F - 1) / 2 + 7) / 8 * 8;
}

__device__ inline float ToFloat(float v) { return v; }
__device__ inline float ToFloat(__half v) { return __half2float(v); }
__device__ inline float ToFloat(__nv_bfloat16 v) { return __bfloat162float(v); }
template <typename T>
__device__ inline T FromFloat(float v);
template <>
__device__ inline float FromFloat<float>(float v) { return v; }
template <>
__device__ inline __half FromFloat<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ inline __nv_bfloat16 FromFloat<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

__device__ inline uint32_t SmemAddr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}
__device__ inline void CpAsync16(void* smem, const void* gmem) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(SmemAddr(smem)), "l"(gmem)
               : "memory");
}
__device__ inline void CpAsyncWaitAll() { asm volatile("cp.async.wait_all;\n" ::: "memory"); }
__device__ inline void Ldmatrix4(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(SmemAddr(p))
               : "memory");
}
__device__ inline void Ldmatrix4Trans(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(SmemAddr(p))
               : "memory");
}

// Tensor-core traits. A fragment (16 x kK, row-major) as loaded by Ldmatrix4 from rows
// 16m + lane%16, columns k0 + (lane/16) * 16 bytes; B fragment (kK x 8) as two registers;
// C (16 x 8, fp32): c0, c1 at (lane/4, 2*(lane%4) + {0,1}), c2, c3 eight rows below.
// Strides (elements per shared row) keep ldmatrix / the backward's B loads free of bank
// conflicts: row bytes = 16 mod 128 for ldmatrix, 8 words mod 32 for fp32 scalar B loads.
template <typename T>
struct Tc16 {  // fp16 and bf16: m16n8k16
  static constexpr int kK = 16;
  static constexpr int kFwdStride = kFastD + 8;
  static constexpr int kBwdStride = kFastD + 8;
  static constexpr int kSStride = kFastMaxF + 8;
  __device__ static uint32_t Prep(uint32_t r) { return r; }
  // B fragments of four n-tiles (columns col0 .. col0+31) at k-step kk from x [k][n] in smem.
  __device__ static void LoadB(uint32_t (&b)[4][2], const T* xs, int kk, int col0, int lane,
                               int F) {
    int row = kk * kK + (lane & 15);
    if (row >= F) row = 0;
    const T* p = xs + row * kBwdStride + col0 + (lane >> 4) * 8;
    uint32_t r[4];
    Ldmatrix4Trans(r, p);
    b[0][0] = r[0], b[0][1] = r[1], b[1][0] = r[2], b[1][1] = r[3];
    Ldmatrix4Trans(r, p + 16);
    b[2][0] = r[0], b[2][1] = r[1], b[3][0] = r[2], b[3][1] = r[3];
  }
};

template <typename T>
struct Tc;
template <>
struct Tc<__half> : Tc16<__half> {
  __device__ static void Mma(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
  __device__ static void Store2(__half* p, float a, float b) {
    *reinterpret_cast<__half2*>(p) = __floats2half2_rn(a, b);
  }
};
template <>
struct Tc<__nv_bfloat16> : Tc16<__nv_bfloat16> {
  __device__ static void Mma(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
  __device__ static void Store2(__nv_bfloat16* p, float a, float b) {
    *reinterpret_cast<__nv_bfloat162*>(p) = __floats2bfloat162_rn(a, b);
  }
};
template <>
struct Tc<float> {  // TF32 m16n8k8
  static constexpr int kK = 8;
  static constexpr int kFwdStride = kFastD + 4;
  static constexpr int kBwdStride = kFastD + 8;
  static constexpr int kSStride = kFastMaxF + 4;
  __device__ static uint32_t Prep(uint32_t r) {
    uint32_t t;
    asm("cvt.rna.tf32.f32 %0, %1;\n" : "=r"(t) : "f"(__uint_as_float(r)));
    return t;
  }
  __device__ static void LoadB(uint32_t (&b)[4][2], const float* xs, int kk, int col0, int lane,
                               int F) {
    int r0 = kk * kK + (lane & 3), r1 = r0 + 4;
    if (r0 >= F) r0 = 0;
    if (r1 >= F) r1 = 0;
    const int col = col0 + (lane >> 2);
#pragma unroll
    for (int nt = 0; nt < 4; ++nt) {
      b[nt][0] = Prep(__float_as_uint(xs[r0 * kBwdStride + col + 8 * nt]));
      b[nt][1] = Prep(__float_as_uint(xs[r1 * kBwdStride + col + 8 * nt]));
    }
  }
  __device__ static void Mma(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
  __device__ static void Store2(float* p, float a, float b) {
    *reinterpret_cast<float2*>(p) = make_float2(a, b);
  }
};

template <typename T>
__device__ inline void LoadA(uint32_t (&a)[4], const T* p) {
  Ldmatrix4(a, p);
#pragma unroll
  for (int q = 0; q < 4; ++q) a[q] = Tc<T>::Prep(a[q]);
}

// Copies F rows of D = 128 elements from global src (dense) to smem rows of `stride` elements.
template <typename T>
__device__ inline void LoadRowsAsync(T* dst, int stride, const T* src, int F, int lane) {
  constexpr int kVec = 16 / sizeof(T), kChunks = kFastD / kVec;
  for (int c = lane; c < F * kChunks; c += 32)
    CpAsync16(dst + (c / kChunks) * stride + (c % kChunks) * kVec, src + c * kVec);
}

template <typename T>
__host__ __device__ constexpr int FwdWarpElems(int F) {
  return F * Tc<T>::kFwdStride + OutputWidth(F, kFastD);
}
template <typename T>
__host__ __device__ constexpr int BwdWarpElems(int F) {
  return F * Tc<T>::kBwdStride + OutputWidth(F, kFastD) + kFastMaxF * Tc<T>::kSStride;
}

// x [B, F, 128] -> y [B, W]; one warp per sample.
template <typename T>
__global__ void __launch_bounds__(kFastWarps * 32)
    FwdFast(const T* __restrict__ x, T* __restrict__ y, long long B, int F) {
  using Traits = Tc<T>;
  constexpr int D = kFastD, kVec = 16 / sizeof(T), S = Traits::kFwdStride;
  extern __shared__ __align__(16) unsigned char smem[];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const long long b = static_cast<long long>(blockIdx.x) * kFastWarps + warp;
  if (b >= B) return;
  const int W = OutputWidth(F, D), P = F * (F - 1) / 2;
  T* xs = reinterpret_cast<T*>(smem) + warp * FwdWarpElems<T>(F);
  T* os = xs + F * S;
  LoadRowsAsync(xs, S, x + b * F * D, F, lane);
  CpAsyncWaitAll();
  __syncwarp();

  // Tiles of the lower triangle: (m0,n0) (m0,n1) and, if F > 16, (m1,n0..3).
  const bool two = F > 16;
  int r0 = lane & 15, r1 = 16 + (lane & 15);
  if (r0 >= F) r0 = 0;
  if (r1 >= F) r1 = 0;
  const T* pa0 = xs + r0 * S + (lane >> 4) * kVec;
  const T* pa1 = xs + r1 * S + (lane >> 4) * kVec;
  float acc[6][4] = {};
#pragma unroll
  for (int k0 = 0; k0 < D; k0 += Traits::kK) {
    uint32_t a0[4], a1[4];
    LoadA<T>(a0, pa0 + k0);
    Traits::Mma(acc[0], a0, a0[0], a0[2]);  // B of feature rows 0-7: the top half of A
    Traits::Mma(acc[1], a0, a0[1], a0[3]);  // rows 8-15
    if (two) {
      LoadA<T>(a1, pa1 + k0);
      Traits::Mma(acc[2], a1, a0[0], a0[2]);
      Traits::Mma(acc[3], a1, a0[1], a0[3]);
      Traits::Mma(acc[4], a1, a1[0], a1[2]);
      Traits::Mma(acc[5], a1, a1[1], a1[3]);
    }
  }
  constexpr int kTileM[6] = {0, 0, 16, 16, 16, 16}, kTileN[6] = {0, 8, 0, 8, 16, 24};
  const int g = lane >> 2, t2 = 2 * (lane & 3);
#pragma unroll
  for (int tile = 0; tile < 6; ++tile) {
#pragma unroll
    for (int q = 0; q < 4; ++q) {
      const int r = kTileM[tile] + g + (q >> 1) * 8, c = kTileN[tile] + t2 + (q & 1);
      if (c < r && r < F) os[D + r * (r - 1) / 2 + c] = FromFloat<T>(acc[tile][q]);
    }
  }
  if (lane < D / kVec)
    reinterpret_cast<uint4*>(os)[lane] = reinterpret_cast<const uint4*>(xs)[lane];
  for (int e = D + P + lane; e < W; e += 32) os[e] = FromFloat<T>(0.f);
  __syncwarp();
  uint4* yb = reinterpret_cast<uint4*>(y + b * W);
  for (int c = lane; c < W / kVec; c += 32) yb[c] = reinterpret_cast<const uint4*>(os)[c];
}

// x [B, F, 128], g [B, W] -> dx [B, F, 128]; one warp per sample, dX = S X + row-0 term.
template <typename T>
__global__ void __launch_bounds__(kFastWarps * 32)
    BwdFast(const T* __restrict__ x, const T* __restrict__ g, T* __restrict__ dx, long long B,
            int F) {
  using Traits = Tc<T>;
  constexpr int D = kFastD, kVec = 16 / sizeof(T), S = Traits::kBwdStride;
  constexpr int SS = Traits::kSStride, kKSteps = kFastMaxF / Traits::kK;
  extern __shared__ __align__(16) unsigned char smem[];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const long long b = static_cast<long long>(blockIdx.x) * kFastWarps + warp;
  if (b >= B) return;
  const int W = OutputWidth(F, D);
  T* xs = reinterpret_cast<T*>(smem) + warp * BwdWarpElems<T>(F);
  T* gs = xs + F * S;
  T* ss = gs + W;
  LoadRowsAsync(xs, S, x + b * F * D, F, lane);
  const T* gb = g + b * W;
  for (int c = lane; c < W / kVec; c += 32) CpAsync16(gs + c * kVec, gb + c * kVec);
  CpAsyncWaitAll();
  __syncwarp();

  // S[i][j] = g of pair (max, min) for i != j < F, else 0; lane = column j.
  const bool two = F > 16;
  const int s_rows = two ? 32 : 16;
  for (int i = 0; i < s_rows; ++i) {
    const int j = lane, hi = max(i, j), lo = min(i, j);
    ss[i * SS + j] = (hi < F && i != j) ? gs[D + hi * (hi - 1) / 2 + lo] : FromFloat<T>(0.f);
  }
  __syncwarp();
  uint32_t sa[2][kKSteps][4];
#pragma unroll
  for (int m = 0; m < 2; ++m) {
#pragma unroll
    for (int kk = 0; kk < kKSteps; ++kk) {
      if (m == 0 || two)
        LoadA<T>(sa[m][kk], ss + (16 * m + (lane & 15)) * SS + kk * Traits::kK +
                                (lane >> 4) * kVec);
    }
  }

  const int g4 = lane >> 2, t2 = 2 * (lane & 3);
  const int ksteps = two ? kKSteps : kKSteps / 2;
#pragma unroll
  for (int col0 = 0; col0 < D; col0 += 32) {
    float acc[2][4][4] = {};
#pragma unroll
    for (int kk = 0; kk < kKSteps; ++kk) {
      if (kk < ksteps) {
        uint32_t bf[4][2];
        Traits::LoadB(bf, xs, kk, col0, lane, F);
#pragma unroll
        for (int nt = 0; nt < 4; ++nt) {
          Traits::Mma(acc[0][nt], sa[0][kk], bf[nt][0], bf[nt][1]);
          if (two) Traits::Mma(acc[1][nt], sa[1][kk], bf[nt][0], bf[nt][1]);
        }
      }
    }
    if (lane < 4) {  // row 0 (g4 == 0): the pass-through gradient
#pragma unroll
      for (int nt = 0; nt < 4; ++nt) {
        acc[0][nt][0] += ToFloat(gs[col0 + 8 * nt + t2]);
        acc[0][nt][1] += ToFloat(gs[col0 + 8 * nt + t2 + 1]);
      }
    }
    __syncwarp();  // every lane has read this chunk's columns of xs
#pragma unroll
    for (int m = 0; m < 2; ++m) {
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const int r = 16 * m + g4 + 8 * half;
        if (r < F) {
#pragma unroll
          for (int nt = 0; nt < 4; ++nt)
            Traits::Store2(xs + r * S + col0 + 8 * nt + t2, acc[m][nt][2 * half],
                           acc[m][nt][2 * half + 1]);
        }
      }
    }
  }
  __syncwarp();
  constexpr int kChunks = D / kVec;
  T* dxb = dx + b * F * D;
  for (int c = lane; c < F * kChunks; c += 32)
    reinterpret_cast<uint4*>(dxb)[c] =
        *reinterpret_cast<const uint4*>(xs + (c / kChunks) * S + (c % kChunks) * kVec);
}

// Pair index p -> (i, j), p = i*(i-1)/2 + j, j < i.
__device__ inline void PairOf(int p, int* i, int* j) {
  int r = static_cast<int>((1.0f + sqrtf(8.0f * p + 1.0f)) * 0.5f);
  while (r * (r - 1) / 2 > p) --r;
  while ((r + 1) * r / 2 <= p) ++r;
  *i = r;
  *j = p - r * (r - 1) / 2;
}

// Loads columns d0 .. d0+31 of the F rows of xb into xs as float (zeros past D).
template <typename T>
__device__ inline void LoadChunk(float (*xs)[kGenChunk + 1], const T* xb, int F, int D,
                                 int d0) {
  for (int e = threadIdx.x; e < F * kGenChunk; e += kGenThreads) {
    const int i = e / kGenChunk, d = d0 + e % kGenChunk;
    xs[i][e % kGenChunk] = d < D ? ToFloat(xb[static_cast<long long>(i) * D + d]) : 0.f;
  }
}

// x [B, F, D] -> y [B, W]; one block per sample.
template <typename T>
__global__ void __launch_bounds__(kGenThreads)
    FwdGeneral(const T* __restrict__ x, T* __restrict__ y, int F, int D) {
  __shared__ float xs[kMaxF][kGenChunk + 1];
  const long long b = blockIdx.x;
  const int P = F * (F - 1) / 2, W = OutputWidth(F, D);
  const T* xb = x + b * F * D;
  T* yb = y + b * W;
  int pi[kGenPairsPerThread], pj[kGenPairsPerThread];
  float acc[kGenPairsPerThread];
#pragma unroll
  for (int k = 0; k < kGenPairsPerThread; ++k) {
    const int p = threadIdx.x + k * kGenThreads;
    pi[k] = pj[k] = 0;
    if (p < P) PairOf(p, &pi[k], &pj[k]);
    acc[k] = 0.f;
  }
  for (int d0 = 0; d0 < D; d0 += kGenChunk) {
    LoadChunk(xs, xb, F, D, d0);
    __syncthreads();
#pragma unroll
    for (int k = 0; k < kGenPairsPerThread; ++k) {
      if (threadIdx.x + k * kGenThreads < P) {
        float s = acc[k];
#pragma unroll 8
        for (int d = 0; d < kGenChunk; ++d) s += xs[pi[k]][d] * xs[pj[k]][d];
        acc[k] = s;
      }
    }
    __syncthreads();
  }
#pragma unroll
  for (int k = 0; k < kGenPairsPerThread; ++k) {
    const int p = threadIdx.x + k * kGenThreads;
    if (p < P) yb[D + p] = FromFloat<T>(acc[k]);
  }
  for (int e = threadIdx.x; e < D; e += kGenThreads) yb[e] = xb[e];
  for (int e = D + P + threadIdx.x; e < W; e += kGenThreads) yb[e] = FromFloat<T>(0.f);
}

// x [B, F, D], g [B, W] -> dx [B, F, D]; one block per sample.
template <typename T>
__global__ void __launch_bounds__(kGenThreads)
    BwdGeneral(const T* __restrict__ x, const T* __restrict__ g, T* __restrict__ dx, int F,
               int D) {
  __shared__ float ss[kMaxF][kMaxF + 1];
  __shared__ float xs[kMaxF][kGenChunk + 1];
  const long long b = blockIdx.x;
  const int W = OutputWidth(F, D);
  const T* xb = x + b * F * D;
  const T* gb = g + b * W;
  T* dxb = dx + b * F * D;
  for (int e = threadIdx.x; e < F * F; e += kGenThreads) {
    const int i = e / F, j = e % F, hi = max(i, j), lo = min(i, j);
    ss[i][j] = i != j ? ToFloat(gb[D + hi * (hi - 1) / 2 + lo]) : 0.f;
  }
  for (int d0 = 0; d0 < D; d0 += kGenChunk) {
    LoadChunk(xs, xb, F, D, d0);
    __syncthreads();
    for (int e = threadIdx.x; e < F * kGenChunk; e += kGenThreads) {
      const int i = e / kGenChunk, dc = e % kGenChunk, d = d0 + dc;
      if (d < D) {
        float s = i == 0 ? ToFloat(gb[d]) : 0.f;
        for (int j = 0; j < F; ++j) s += ss[i][j] * xs[j][dc];
        dxb[static_cast<long long>(i) * D + d] = FromFloat<T>(s);
      }
    }
    __syncthreads();
  }
}

bool Aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

template <typename Kernel>
cudaError_t AllowSmem(Kernel kernel, size_t bytes) {
  if (bytes <= 48 * 1024) return cudaSuccess;
  return cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                              static_cast<int>(bytes));
}

template <typename T>
cudaError_t Forward(const void* xv, void* yv, long long B, int F, int D, cudaStream_t stream,
                    bool allow_fast) {
  const T* x = static_cast<const T*>(xv);
  T* y = static_cast<T*>(yv);
  if (allow_fast && D == kFastD && F <= kFastMaxF && Aligned16(x) && Aligned16(y)) {
    const size_t smem = sizeof(T) * kFastWarps * FwdWarpElems<T>(F);
    cudaError_t err = AllowSmem(FwdFast<T>, smem);
    if (err != cudaSuccess) return err;
    const long long blocks = (B + kFastWarps - 1) / kFastWarps;
    FwdFast<T><<<static_cast<unsigned>(blocks), kFastWarps * 32, smem, stream>>>(x, y, B, F);
  } else {
    FwdGeneral<T><<<static_cast<unsigned>(B), kGenThreads, 0, stream>>>(x, y, F, D);
  }
  return cudaGetLastError();
}

template <typename T>
cudaError_t Backward(const void* xv, const void* gv, void* dxv, long long B, int F, int D,
                     cudaStream_t stream, bool allow_fast) {
  const T* x = static_cast<const T*>(xv);
  const T* g = static_cast<const T*>(gv);
  T* dx = static_cast<T*>(dxv);
  if (allow_fast && D == kFastD && F <= kFastMaxF && Aligned16(x) && Aligned16(g) &&
      Aligned16(dx)) {
    const size_t smem = sizeof(T) * kFastWarps * BwdWarpElems<T>(F);
    cudaError_t err = AllowSmem(BwdFast<T>, smem);
    if (err != cudaSuccess) return err;
    const long long blocks = (B + kFastWarps - 1) / kFastWarps;
    BwdFast<T><<<static_cast<unsigned>(blocks), kFastWarps * 32, smem, stream>>>(x, g, dx, B,
                                                                                  F);
  } else {
    BwdGeneral<T><<<static_cast<unsigned>(B), kGenThreads, 0, stream>>>(x, g, dx, F, D);
  }
  return cudaGetLastError();
}

bool BadSizes(long long B, int F, int D) {
  return B < 0 || B > 0x7fffffffLL || F < 1 || F > kMaxF || D < 1;
}

}  // namespace

extern "C" int dot_interact_forward_gpu(int dtype, const void* x, void* y, long long B, int F,
                                        int D, void* stream, int allow_fast) {
  if (BadSizes(B, F, D)) return cudaErrorInvalidValue;
  if (B == 0) return cudaSuccess;
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  switch (dtype) {
    case kDotInteractF32: return Forward<float>(x, y, B, F, D, s, allow_fast);
    case kDotInteractF16: return Forward<__half>(x, y, B, F, D, s, allow_fast);
    case kDotInteractBF16: return Forward<__nv_bfloat16>(x, y, B, F, D, s, allow_fast);
    default: return cudaErrorInvalidValue;
  }
}

extern "C" int dot_interact_backward_gpu(int dtype, const void* x, const void* g, void* dx,
                                         long long B, int F, int D, void* stream,
                                         int allow_fast) {
  if (BadSizes(B, F, D)) return cudaErrorInvalidValue;
  if (B == 0) return cudaSuccess;
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  switch (dtype) {
    case kDotInteractF32: return Backward<float>(x, g, dx, B, F, D, s, allow_fast);
    case kDotInteractF16: return Backward<__half>(x, g, dx, B, F, D, s, allow_fast);
    case kDotInteractBF16: return Backward<__nv_bfloat16>(x, g, dx, B, F, D, s, allow_fast);
    default: return cudaErrorInvalidValue;
  }
}

extern "C" const char* dot_interact_gpu_error_string(int code) {
  return cudaGetErrorString(static_cast<cudaError_t>(code));
}
