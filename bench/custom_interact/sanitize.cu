// Small-shape driver for compute-sanitizer (no framework): runs both paths of the forward and
// backward kernels for each dtype, with outputs poisoned (all bits set: NaN) beforehand, and
// compares them with the CPU implementation (float) on the same rounded inputs.
// Exit status 0 only if every launch succeeded and every relative error is under its bound.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include "dot_interact.h"
#include "dot_interact_cpu.h"

namespace {

template <typename T>
float Host(T v) { return static_cast<float>(v); }
template <typename T>
T Cast(float v) { return static_cast<T>(v); }
template <>
__half Cast<__half>(float v) { return __float2half(v); }
template <>
__nv_bfloat16 Cast<__nv_bfloat16>(float v) { return __float2bfloat16(v); }

#define CHECK(call)                                                                      \
  do {                                                                                   \
    cudaError_t e_ = static_cast<cudaError_t>(call);                                      \
    if (e_ != cudaSuccess) {                                                             \
      std::printf("CUDA error %s at %s:%d\n", cudaGetErrorString(e_), __FILE__, __LINE__); \
      return false;                                                                      \
    }                                                                                    \
  } while (0)

double RelErr(const std::vector<float>& a, const std::vector<float>& ref) {
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    const double d = double(a[i]) - ref[i];
    num += std::isfinite(a[i]) ? d * d : INFINITY;
    den += double(ref[i]) * ref[i];
  }
  return std::sqrt(num / den);
}

template <typename T>
bool RunCase(int dtype, const char* name, double bound, int B, int F, int D, int fast,
             std::mt19937* rng) {
  const int W = static_cast<int>(dot_interact::OutputWidth(F, D));
  std::normal_distribution<float> normal;
  std::vector<T> x(size_t(B) * F * D), g(size_t(B) * W);
  std::vector<float> xf(x.size()), gf(g.size());
  for (size_t i = 0; i < x.size(); ++i) x[i] = Cast<T>(normal(*rng)), xf[i] = Host(x[i]);
  for (size_t i = 0; i < g.size(); ++i) g[i] = Cast<T>(normal(*rng)), gf[i] = Host(g[i]);
  std::vector<float> ref_y(g.size()), ref_dx(x.size());
  dot_interact::ForwardCpu(xf.data(), ref_y.data(), 0, B, F, D);
  dot_interact::BackwardCpu(xf.data(), gf.data(), ref_dx.data(), 0, B, F, D);

  T *dx_, *dg, *dy, *ddx;
  CHECK(cudaMalloc(&dx_, x.size() * sizeof(T)));
  CHECK(cudaMalloc(&dg, g.size() * sizeof(T)));
  CHECK(cudaMalloc(&dy, g.size() * sizeof(T)));
  CHECK(cudaMalloc(&ddx, x.size() * sizeof(T)));
  CHECK(cudaMemcpy(dx_, x.data(), x.size() * sizeof(T), cudaMemcpyHostToDevice));
  CHECK(cudaMemcpy(dg, g.data(), g.size() * sizeof(T), cudaMemcpyHostToDevice));
  CHECK(cudaMemset(dy, 0xff, g.size() * sizeof(T)));
  CHECK(cudaMemset(ddx, 0xff, x.size() * sizeof(T)));
  CHECK(dot_interact_forward_gpu(dtype, dx_, dy, B, F, D, nullptr, fast));
  CHECK(dot_interact_backward_gpu(dtype, dx_, dg, ddx, B, F, D, nullptr, fast));
  CHECK(cudaDeviceSynchronize());
  std::vector<T> y(g.size()), dxo(x.size());
  CHECK(cudaMemcpy(y.data(), dy, y.size() * sizeof(T), cudaMemcpyDeviceToHost));
  CHECK(cudaMemcpy(dxo.data(), ddx, dxo.size() * sizeof(T), cudaMemcpyDeviceToHost));
  CHECK(cudaFree(dx_));
  CHECK(cudaFree(dg));
  CHECK(cudaFree(dy));
  CHECK(cudaFree(ddx));
  std::vector<float> yf(y.size()), dxf(dxo.size());
  for (size_t i = 0; i < y.size(); ++i) yf[i] = Host(y[i]);
  for (size_t i = 0; i < dxo.size(); ++i) dxf[i] = Host(dxo[i]);
  const double ey = RelErr(yf, ref_y), edx = RelErr(dxf, ref_dx);
  const bool ok = ey < bound && edx < bound;
  std::printf("%-5s %-7s B=%d F=%d D=%d  fwd rel err %.2e  bwd rel err %.2e  %s\n", name,
              fast ? "fast" : "general", B, F, D, ey, edx, ok ? "ok" : "FAIL");
  return ok;
}

}  // namespace

int main() {
  std::mt19937 rng(7);
  const int shapes[][3] = {{3, 27, 128}, {1, 32, 128}, {2, 5, 128}, {1, 17, 128},
                           {1, 1, 128},  {2, 7, 33},   {1, 64, 5},  {1, 1, 1}};
  bool ok = true;
  for (auto& s : shapes) {
    for (int fast = 1; fast >= 0; --fast) {
      ok &= RunCase<float>(kDotInteractF32, "fp32", fast ? 1e-3 : 1e-5, s[0], s[1], s[2], fast,
                           &rng);
      ok &= RunCase<__half>(kDotInteractF16, "fp16", 1e-3, s[0], s[1], s[2], fast, &rng);
      ok &= RunCase<__nv_bfloat16>(kDotInteractBF16, "bf16", 8e-3, s[0], s[1], s[2], fast,
                                   &rng);
    }
  }
  std::printf(ok ? "sanitize driver: all cases ok\n" : "sanitize driver: FAILURES\n");
  return ok ? 0 : 1;
}
