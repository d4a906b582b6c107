// Dot interaction of DLRM on the CPU (header-only templates; no TensorFlow includes).
//
// Same function and layout as dot_interact.h: x [B, F, D] -> y [B, W]; backward x, g [B, W]
// -> dx [B, F, D]. T is any type convertible to and from float (float, double, Eigen::half,
// Eigen::bfloat16, __half); accumulation is in double for double, else float. Each function
// handles the samples [b_begin, b_end), so callers can split the batch over threads.
#ifndef CUSTOM_INTERACT_DOT_INTERACT_CPU_H_
#define CUSTOM_INTERACT_DOT_INTERACT_CPU_H_

#include <cstddef>
#include <cstdint>
#include <type_traits>
#include <vector>

namespace dot_interact {

// D + F*(F-1)/2 rounded up to a multiple of 8.
inline int64_t OutputWidth(int64_t F, int64_t D) {
  return (D + F * (F - 1) / 2 + 7) / 8 * 8;
}

template <typename T>
using CpuAcc = typename std::conditional<std::is_same<T, double>::value, double, float>::type;

template <typename T>
void ForwardCpu(const T* x, T* y, int64_t b_begin, int64_t b_end, int F, int D) {
  using Acc = CpuAcc<T>;
  const int64_t W = OutputWidth(F, D);
  std::vector<Acc> xt(static_cast<std::size_t>(D) * F);  // sample transposed: xt[d * F + j]
  std::vector<Acc> dots(F);
  for (int64_t b = b_begin; b < b_end; ++b) {
    const T* xb = x + b * F * D;
    T* yb = y + b * W;
    for (int j = 0; j < F; ++j)
      for (int d = 0; d < D; ++d) xt[d * F + j] = static_cast<Acc>(xb[j * D + d]);
    for (int d = 0; d < D; ++d) yb[d] = xb[d];
    int64_t o = D;
    for (int i = 1; i < F; ++i) {
      for (int j = 0; j < i; ++j) dots[j] = Acc(0);
      for (int d = 0; d < D; ++d) {
        const Acc xid = xt[d * F + i];
        const Acc* col = &xt[d * F];
        for (int j = 0; j < i; ++j) dots[j] += xid * col[j];  // contiguous: vectorises
      }
      for (int j = 0; j < i; ++j) yb[o++] = static_cast<T>(dots[j]);
    }
    for (; o < W; ++o) yb[o] = static_cast<T>(0.0f);
  }
}

template <typename T>
void BackwardCpu(const T* x, const T* g, T* dx, int64_t b_begin, int64_t b_end, int F, int D) {
  using Acc = CpuAcc<T>;
  const int64_t W = OutputWidth(F, D);
  std::vector<Acc> xa(static_cast<std::size_t>(F) * D), acc(static_cast<std::size_t>(F) * D);
  for (int64_t b = b_begin; b < b_end; ++b) {
    const T* xb = x + b * F * D;
    const T* gb = g + b * W;
    for (int64_t e = 0; e < int64_t(F) * D; ++e) {
      xa[e] = static_cast<Acc>(xb[e]);
      acc[e] = Acc(0);
    }
    for (int d = 0; d < D; ++d) acc[d] = static_cast<Acc>(gb[d]);
    int64_t o = D;
    for (int i = 1; i < F; ++i) {
      for (int j = 0; j < i; ++j) {
        const Acc gij = static_cast<Acc>(gb[o++]);
        Acc* ai = &acc[int64_t(i) * D];
        Acc* aj = &acc[int64_t(j) * D];
        const Acc* xi = &xa[int64_t(i) * D];
        const Acc* xj = &xa[int64_t(j) * D];
        for (int d = 0; d < D; ++d) {
          ai[d] += gij * xj[d];
          aj[d] += gij * xi[d];
        }
      }
    }
    T* dxb = dx + b * F * D;
    for (int64_t e = 0; e < int64_t(F) * D; ++e) dxb[e] = static_cast<T>(acc[e]);
  }
}

}  // namespace dot_interact

#endif  // CUSTOM_INTERACT_DOT_INTERACT_CPU_H_
