// TensorFlow ops DotInteract and DotInteractGrad: CPU kernels (dot_interact_cpu.h) and, when
// built with GOOGLE_CUDA, GPU kernels calling the launchers of dot_interact.h.
//
// DotInteract:     features T[B, F, D] -> output T[B, W], W = D + F*(F-1)/2 padded to 8.
// DotInteractGrad: features T[B, F, D], grad_output T[B, W] -> grad_features T[B, F, D].
// T: half, bfloat16, float (CPU and GPU); double (CPU only).
#if GOOGLE_CUDA
#define EIGEN_USE_GPU
#endif

#include "dot_interact.h"
#include "dot_interact_cpu.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "tensorflow/core/platform/tensor_float_32_utils.h"
#include "tensorflow/core/util/work_sharder.h"

namespace tensorflow {
namespace {

using shape_inference::DimensionHandle;
using shape_inference::InferenceContext;
using shape_inference::ShapeHandle;

REGISTER_OP("DotInteract")
    .Input("features: T")
    .Output("output: T")
    .Attr("T: {half, bfloat16, float, double}")
    .SetShapeFn([](InferenceContext* c) {
      ShapeHandle in;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 3, &in));
      DimensionHandle f = c->Dim(in, 1), d = c->Dim(in, 2);
      DimensionHandle w = c->UnknownDim();
      if (c->ValueKnown(f) && c->ValueKnown(d))
        w = c->MakeDim(dot_interact::OutputWidth(c->Value(f), c->Value(d)));
      c->set_output(0, c->Matrix(c->Dim(in, 0), w));
      return absl::OkStatus();
    });

REGISTER_OP("DotInteractGrad")
    .Input("features: T")
    .Input("grad_output: T")
    .Output("grad_features: T")
    .Attr("T: {half, bfloat16, float, double}")
    .SetShapeFn([](InferenceContext* c) {
      ShapeHandle in, grad;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 3, &in));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 2, &grad));
      DimensionHandle b;
      TF_RETURN_IF_ERROR(c->Merge(c->Dim(in, 0), c->Dim(grad, 0), &b));
      c->set_output(0, in);
      return absl::OkStatus();
    });

// Checks features (and grad_output when given) and sets B, F, D, W.
Status CheckShapes(const Tensor& features, const Tensor* grad, int64_t* B, int* F, int* D,
                   int64_t* W) {
  if (features.dims() != 3)
    return errors::InvalidArgument("features must be [B, F, D], got ",
                                   features.shape().DebugString());
  const int64_t f = features.dim_size(1), d = features.dim_size(2);
  if (f < 1 || d < 1 || f > (1 << 16) || d > (1 << 30))
    return errors::InvalidArgument("features needs 1 <= F <= 65536 and 1 <= D, got ",
                                   features.shape().DebugString());
  *B = features.dim_size(0);
  *F = static_cast<int>(f);
  *D = static_cast<int>(d);
  *W = dot_interact::OutputWidth(f, d);
  if (grad != nullptr &&
      (grad->dims() != 2 || grad->dim_size(0) != *B || grad->dim_size(1) != *W))
    return errors::InvalidArgument("grad_output must be [", *B, ", ", *W, "], got ",
                                   grad->shape().DebugString());
  return absl::OkStatus();
}

// Runs work(begin, end) over the batch on the CPU worker threads.
template <typename Work>
void ShardBatch(OpKernelContext* ctx, int64_t B, int F, int D, Work work) {
  const auto& workers = *ctx->device()->tensorflow_cpu_worker_threads();
  const int64_t cost = int64_t(F) * F * D * 2;
  Shard(workers.num_threads, workers.workers, B, cost, work);
}

template <typename Device, typename T>
class DotInteractOp;
template <typename Device, typename T>
class DotInteractGradOp;

template <typename T>
class DotInteractOp<Eigen::ThreadPoolDevice, T> : public OpKernel {
 public:
  explicit DotInteractOp(OpKernelConstruction* ctx) : OpKernel(ctx) {}
  void Compute(OpKernelContext* ctx) override {
    const Tensor& x = ctx->input(0);
    int64_t B, W;
    int F, D;
    OP_REQUIRES_OK(ctx, CheckShapes(x, nullptr, &B, &F, &D, &W));
    Tensor* y = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({B, W}), &y));
    const T* xp = x.flat<T>().data();
    T* yp = y->flat<T>().data();
    ShardBatch(ctx, B, F, D, [=](int64_t begin, int64_t end) {
      dot_interact::ForwardCpu(xp, yp, begin, end, F, D);
    });
  }
};

template <typename T>
class DotInteractGradOp<Eigen::ThreadPoolDevice, T> : public OpKernel {
 public:
  explicit DotInteractGradOp(OpKernelConstruction* ctx) : OpKernel(ctx) {}
  void Compute(OpKernelContext* ctx) override {
    const Tensor& x = ctx->input(0);
    const Tensor& g = ctx->input(1);
    int64_t B, W;
    int F, D;
    OP_REQUIRES_OK(ctx, CheckShapes(x, &g, &B, &F, &D, &W));
    Tensor* dx = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, x.shape(), &dx));
    const T* xp = x.flat<T>().data();
    const T* gp = g.flat<T>().data();
    T* dxp = dx->flat<T>().data();
    ShardBatch(ctx, B, F, D, [=](int64_t begin, int64_t end) {
      dot_interact::BackwardCpu(xp, gp, dxp, begin, end, F, D);
    });
  }
};

#define REGISTER_CPU(T)                                                           \
  REGISTER_KERNEL_BUILDER(Name("DotInteract").Device(DEVICE_CPU).TypeConstraint<T>("T"), \
                          DotInteractOp<Eigen::ThreadPoolDevice, T>);             \
  REGISTER_KERNEL_BUILDER(                                                        \
      Name("DotInteractGrad").Device(DEVICE_CPU).TypeConstraint<T>("T"),          \
      DotInteractGradOp<Eigen::ThreadPoolDevice, T>);
REGISTER_CPU(Eigen::half)
REGISTER_CPU(bfloat16)
REGISTER_CPU(float)
REGISTER_CPU(double)
#undef REGISTER_CPU

#if GOOGLE_CUDA

template <typename T>
struct GpuDtype;
template <>
struct GpuDtype<float> {
  static constexpr int value = kDotInteractF32;
};
template <>
struct GpuDtype<Eigen::half> {
  static constexpr int value = kDotInteractF16;
};
template <>
struct GpuDtype<bfloat16> {
  static constexpr int value = kDotInteractBF16;
};

Status GpuStatus(int code) {
  if (code == 0) return absl::OkStatus();
  return errors::Internal("dot_interact CUDA kernel failed: ",
                          dot_interact_gpu_error_string(code));
}

// The tensor-core path computes float32 inputs in TF32: only where TF allows TF32
// (tf.config.experimental.enable_tensor_float_32_execution), exact fp32 SIMT otherwise.
template <typename T>
int AllowFast() {
  return !std::is_same<T, float>::value || tensor_float_32_execution_enabled();
}

Status CheckGpuFeatures(int F) {
  if (F > kDotInteractGpuMaxFeatures)
    return errors::InvalidArgument("dot_interact's GPU kernel supports F <= ",
                                   kDotInteractGpuMaxFeatures, ", got F = ", F);
  return absl::OkStatus();
}

template <typename T>
class DotInteractOp<Eigen::GpuDevice, T> : public OpKernel {
 public:
  explicit DotInteractOp(OpKernelConstruction* ctx) : OpKernel(ctx) {}
  void Compute(OpKernelContext* ctx) override {
    const Tensor& x = ctx->input(0);
    int64_t B, W;
    int F, D;
    OP_REQUIRES_OK(ctx, CheckShapes(x, nullptr, &B, &F, &D, &W));
    OP_REQUIRES_OK(ctx, CheckGpuFeatures(F));
    Tensor* y = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({B, W}), &y));
    void* stream = ctx->eigen_device<Eigen::GpuDevice>().stream();
    OP_REQUIRES_OK(ctx, GpuStatus(dot_interact_forward_gpu(
                            GpuDtype<T>::value, x.flat<T>().data(), y->flat<T>().data(), B,
                            F, D, stream, AllowFast<T>())));
  }
};

template <typename T>
class DotInteractGradOp<Eigen::GpuDevice, T> : public OpKernel {
 public:
  explicit DotInteractGradOp(OpKernelConstruction* ctx) : OpKernel(ctx) {}
  void Compute(OpKernelContext* ctx) override {
    const Tensor& x = ctx->input(0);
    const Tensor& g = ctx->input(1);
    int64_t B, W;
    int F, D;
    OP_REQUIRES_OK(ctx, CheckShapes(x, &g, &B, &F, &D, &W));
    OP_REQUIRES_OK(ctx, CheckGpuFeatures(F));
    Tensor* dx = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, x.shape(), &dx));
    void* stream = ctx->eigen_device<Eigen::GpuDevice>().stream();
    OP_REQUIRES_OK(ctx, GpuStatus(dot_interact_backward_gpu(
                            GpuDtype<T>::value, x.flat<T>().data(), g.flat<T>().data(),
                            dx->flat<T>().data(), B, F, D, stream, AllowFast<T>())));
  }
};

#define REGISTER_GPU(T)                                                           \
  REGISTER_KERNEL_BUILDER(Name("DotInteract").Device(DEVICE_GPU).TypeConstraint<T>("T"), \
                          DotInteractOp<Eigen::GpuDevice, T>);                    \
  REGISTER_KERNEL_BUILDER(                                                        \
      Name("DotInteractGrad").Device(DEVICE_GPU).TypeConstraint<T>("T"),          \
      DotInteractGradOp<Eigen::GpuDevice, T>);
REGISTER_GPU(Eigen::half)
REGISTER_GPU(bfloat16)
REGISTER_GPU(float)
#undef REGISTER_GPU

#endif  // GOOGLE_CUDA

}  // namespace
}  // namespace tensorflow
