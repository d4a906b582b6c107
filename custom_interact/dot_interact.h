// Dot interaction of DLRM: C API of the CUDA launchers (no CUDA or TensorFlow includes).
//
// Forward:  x [B, F, D] -> y [B, W], W = D + F*(F-1)/2 rounded up to a multiple of 8.
//   y[b, 0:D] = x[b, 0, :]; then x[b,i].x[b,j] for (i,j) = (1,0), (2,0), (2,1), (3,0), ...;
//   then zeros.
// Backward: x [B, F, D], g [B, W] -> dx [B, F, D], the gradient of sum(g * y) w.r.t. x
//   (row 0's pass-through included).
// All arrays are dense row-major device arrays of one dtype; accumulation is in fp32.
// Fast path (tensor cores: fp16/bf16 mma, fp32 inputs through TF32 mma): D == 128, F <= 32,
// 16-byte aligned pointers. General path (SIMT, fp32 arithmetic): any D >= 1, F <= 64.
#ifndef CUSTOM_INTERACT_DOT_INTERACT_H_
#define CUSTOM_INTERACT_DOT_INTERACT_H_

#ifdef __cplusplus
extern "C" {
#endif

enum { kDotInteractF32 = 0, kDotInteractF16 = 1, kDotInteractBF16 = 2 };
enum { kDotInteractGpuMaxFeatures = 64 };

// Each returns a cudaError_t as int (0 = success; the launch is checked with
// cudaGetLastError). stream is a cudaStream_t. allow_fast = 0 forces the general path.
// B = 0 launches nothing. F outside [1, 64] or D < 1 returns cudaErrorInvalidValue.
int dot_interact_forward_gpu(int dtype, const void* x, void* y, long long B, int F, int D,
                             void* stream, int allow_fast);
int dot_interact_backward_gpu(int dtype, const void* x, const void* g, void* dx, long long B,
                              int F, int D, void* stream, int allow_fast);
// cudaGetErrorString of a code returned above.
const char* dot_interact_gpu_error_string(int code);

#ifdef __cplusplus
}
#endif

#endif  // CUSTOM_INTERACT_DOT_INTERACT_H_
