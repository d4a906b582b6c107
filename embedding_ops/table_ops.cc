// TensorFlow ops TableGather and TableSgdUpdate on a float32 resource variable [R, D]:
// CPU kernels here and, when built with GOOGLE_CUDA, GPU kernels calling table_ops.h.
//
// TableGather:    table [R, D], rows int64 [K] -> vectors T[K, D] (table rows, converted).
// TableSgdUpdate: table [R, D], rows int64 [K], grads T[K, D], rate float32 [] ->
//                 table[rows[k]] -= rate * grads[k] (repeated rows add up); rate 0: no change.
// T: half or float. A row outside [0, R) is an InvalidArgument error on the CPU; on the GPU
// (no check without a host sync) the gather gives zeros and the update skips it.
// Like TF's own sparse variable ops, the update writes in place after making the variable
// copy-on-read (a value read before it keeps its values).
#if GOOGLE_CUDA
#define EIGEN_USE_GPU
#endif

#include <cstring>

#include "table_ops.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/resource_mgr.h"
#include "tensorflow/core/framework/resource_var.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "tensorflow/core/util/work_sharder.h"

namespace tensorflow {
namespace {

using shape_inference::DimensionHandle;
using shape_inference::InferenceContext;
using shape_inference::ShapeHandle;

REGISTER_OP("TableGather")
    .Input("table: resource")
    .Input("rows: int64")
    .Output("vectors: T")
    .Attr("T: {half, float}")
    .SetShapeFn([](InferenceContext* c) {
      ShapeHandle rows, table;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 1, &rows));
      DimensionHandle dim = c->UnknownDim();
      const auto* handle_data = c->input_handle_shapes_and_types(0);
      if (handle_data != nullptr && handle_data->size() == 1) {  // the variable's shape
        TF_RETURN_IF_ERROR(c->WithRank((*handle_data)[0].shape, 2, &table));
        dim = c->Dim(table, 1);
      }
      c->set_output(0, c->Matrix(c->Dim(rows, 0), dim));
      return absl::OkStatus();
    });

REGISTER_OP("TableSgdUpdate")
    .Input("table: resource")
    .Input("rows: int64")
    .Input("grads: T")
    .Input("rate: float")
    .Attr("T: {half, float}")
    .SetShapeFn([](InferenceContext* c) {
      ShapeHandle rows, grads, rate;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 1, &rows));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(2), 2, &grads));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(3), 0, &rate));
      DimensionHandle k;
      TF_RETURN_IF_ERROR(c->Merge(c->Dim(rows, 0), c->Dim(grads, 0), &k));
      return absl::OkStatus();
    });

// The variable behind input 0, checked to be float32 [R, D].
Status LookupTable(OpKernelContext* ctx, core::RefCountPtr<Var>* var) {
  TF_RETURN_IF_ERROR(LookupResource(ctx, HandleFromInput(ctx, 0), var));
  if (!(*var)->is_initialized)
    return errors::FailedPrecondition("table: the variable is not initialized");
  const Tensor& table = *(*var)->tensor();
  if (table.dtype() != DT_FLOAT || table.dims() != 2)
    return errors::InvalidArgument("table must be a float32 [rows, dim] variable, got ",
                                   DataTypeString(table.dtype()), " ",
                                   table.shape().DebugString());
  return absl::OkStatus();
}

Status CheckRows(const Tensor& rows, const Tensor* grads, int64_t dim) {
  if (rows.dims() != 1)
    return errors::InvalidArgument("rows must be [K], got ", rows.shape().DebugString());
  if (grads != nullptr && (grads->dims() != 2 || grads->dim_size(0) != rows.dim_size(0) ||
                           grads->dim_size(1) != dim))
    return errors::InvalidArgument("grads must be [", rows.dim_size(0), ", ", dim, "], got ",
                                   grads->shape().DebugString());
  return absl::OkStatus();
}

Status CheckRowsInRange(const Tensor& rows, int64_t num_rows) {
  const auto r = rows.flat<int64_t>();
  for (int64_t k = 0; k < r.size(); ++k)
    if (r(k) < 0 || r(k) >= num_rows)
      return errors::InvalidArgument("rows[", k, "] = ", r(k), " is not in [0, ", num_rows,
                                     ")");
  return absl::OkStatus();
}

// TF's copy-on-read rule for sparse writes (training_op_helpers.h's EnsureSparseVariableAccess,
// with the copy done here): if a read still shares the buffer, the variable gets a copy first;
// from then on reads copy. Called with the variable's lock held.
template <typename CopyFn>
Status MakeCopyOnRead(OpKernelContext* ctx, Var* var, CopyFn copy) {
  if (var->copy_on_read_mode.load()) return absl::OkStatus();
  if (!var->tensor()->RefCountIsOne()) {
    Tensor fresh;
    AllocatorAttributes attr;
    attr.set_gpu_compatible(true);
    attr.set_nic_compatible(true);
    TF_RETURN_IF_ERROR(
        ctx->allocate_temp(DT_FLOAT, var->tensor()->shape(), &fresh, attr));
    TF_RETURN_IF_ERROR(copy(fresh.flat<float>().data(), var->tensor()->flat<float>().data(),
                            var->tensor()->TotalBytes()));
    *var->tensor() = fresh;
  }
  var->copy_on_read_mode.store(true);
  return absl::OkStatus();
}

// What differs by device, for Device = CPUDevice or GPUDevice: whether the host checks the
// rows (the CPU can: they are in its memory), the copy of the table for copy-on-read, and
// the two kernels.
template <typename Device, typename T>
struct TableKernels;

using CPUDevice = Eigen::ThreadPoolDevice;

template <typename T>
struct TableKernels<CPUDevice, T> {
  static constexpr bool kChecksRows = true;

  static Status Copy(OpKernelContext*, float* to, const float* from, size_t bytes) {
    std::memcpy(to, from, bytes);
    return absl::OkStatus();
  }

  static Status Gather(OpKernelContext* ctx, const Tensor& table, const Tensor& rows,
                       Tensor* out) {
    const int64_t dim = table.dim_size(1);
    const float* src = table.flat<float>().data();
    const int64_t* r = rows.flat<int64_t>().data();
    T* dst = out->flat<T>().data();
    const auto& workers = *ctx->device()->tensorflow_cpu_worker_threads();
    Shard(workers.num_threads, workers.workers, rows.dim_size(0), dim,
          [=](int64_t begin, int64_t end) {
            for (int64_t k = begin; k < end; ++k)
              for (int64_t c = 0; c < dim; ++c) dst[k * dim + c] = T(src[r[k] * dim + c]);
          });
    return absl::OkStatus();
  }

  static Status SgdUpdate(OpKernelContext*, Tensor* table, const Tensor& rows,
                          const Tensor& grads, const Tensor& rate) {
    const float step = -rate.scalar<float>()();
    if (step == 0.f) return absl::OkStatus();  // a skipped step: no change, whatever grads holds
    const int64_t dim = table->dim_size(1);
    float* t = table->flat<float>().data();
    const int64_t* r = rows.flat<int64_t>().data();
    const T* g = grads.flat<T>().data();
    for (int64_t k = 0; k < rows.dim_size(0); ++k)  // in order: repeated rows add up
      for (int64_t c = 0; c < dim; ++c)
        t[r[k] * dim + c] += step * static_cast<float>(g[k * dim + c]);
    return absl::OkStatus();
  }
};

#if GOOGLE_CUDA

using GPUDevice = Eigen::GpuDevice;

template <typename T>
struct GpuDtype;
template <>
struct GpuDtype<float> {
  static constexpr int value = kTableOpsF32;
};
template <>
struct GpuDtype<Eigen::half> {
  static constexpr int value = kTableOpsF16;
};

Status GpuStatus(int code) {
  if (code == 0) return absl::OkStatus();
  return errors::Internal("table op CUDA kernel failed: ", table_ops_gpu_error_string(code));
}

void* Stream(OpKernelContext* ctx) { return ctx->eigen_device<GPUDevice>().stream(); }

const long long* Rows(const Tensor& rows) {
  return reinterpret_cast<const long long*>(rows.flat<int64_t>().data());
}

template <typename T>
struct TableKernels<GPUDevice, T> {
  static constexpr bool kChecksRows = false;  // the kernels skip (update) or zero (gather) them

  static Status Copy(OpKernelContext* ctx, float* to, const float* from, size_t bytes) {
    return GpuStatus(table_copy_gpu(to, from, bytes, Stream(ctx)));
  }

  static Status Gather(OpKernelContext* ctx, const Tensor& table, const Tensor& rows,
                       Tensor* out) {
    return GpuStatus(table_gather_gpu(GpuDtype<T>::value, table.flat<float>().data(),
                                      table.dim_size(0), static_cast<int>(table.dim_size(1)),
                                      Rows(rows), rows.dim_size(0), out->flat<T>().data(),
                                      Stream(ctx)));
  }

  static Status SgdUpdate(OpKernelContext* ctx, Tensor* table, const Tensor& rows,
                          const Tensor& grads, const Tensor& rate) {
    return GpuStatus(table_sgd_update_gpu(
        GpuDtype<T>::value, table->flat<float>().data(), table->dim_size(0),
        static_cast<int>(table->dim_size(1)), Rows(rows), rows.dim_size(0),
        grads.flat<T>().data(), rate.flat<float>().data(), Stream(ctx)));
  }
};

#endif  // GOOGLE_CUDA

template <typename Device, typename T>
class TableGatherOp : public OpKernel {
 public:
  explicit TableGatherOp(OpKernelConstruction* ctx) : OpKernel(ctx) {}
  void Compute(OpKernelContext* ctx) override {
    core::RefCountPtr<Var> var;
    OP_REQUIRES_OK(ctx, LookupTable(ctx, &var));
    tf_shared_lock lock(*var->mu());
    const Tensor& table = *var->tensor();
    const Tensor& rows = ctx->input(1);
    const int64_t dim = table.dim_size(1);
    OP_REQUIRES_OK(ctx, CheckRows(rows, nullptr, dim));
    if (TableKernels<Device, T>::kChecksRows)
      OP_REQUIRES_OK(ctx, CheckRowsInRange(rows, table.dim_size(0)));
    Tensor* out = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({rows.dim_size(0), dim}), &out));
    OP_REQUIRES_OK(ctx, TableKernels<Device, T>::Gather(ctx, table, rows, out));
  }
};

template <typename Device, typename T>
class TableSgdUpdateOp : public OpKernel {
 public:
  explicit TableSgdUpdateOp(OpKernelConstruction* ctx) : OpKernel(ctx) {}
  void Compute(OpKernelContext* ctx) override {
    core::RefCountPtr<Var> var;
    OP_REQUIRES_OK(ctx, LookupTable(ctx, &var));
    mutex_lock lock(*var->mu());
    const Tensor &rows = ctx->input(1), &grads = ctx->input(2), &rate = ctx->input(3);
    OP_REQUIRES_OK(ctx, CheckRows(rows, &grads, var->tensor()->dim_size(1)));
    if (TableKernels<Device, T>::kChecksRows)
      OP_REQUIRES_OK(ctx, CheckRowsInRange(rows, var->tensor()->dim_size(0)));
    OP_REQUIRES_OK(ctx, MakeCopyOnRead(ctx, var.get(), [ctx](float* to, const float* from,
                                                              size_t bytes) {
                     return TableKernels<Device, T>::Copy(ctx, to, from, bytes);
                   }));
    OP_REQUIRES_OK(ctx, TableKernels<Device, T>::SgdUpdate(ctx, var->tensor(), rows, grads,
                                                           rate));
  }
};

#define REGISTER(DEVICE_TYPE, DEVICE, T)                                               \
  REGISTER_KERNEL_BUILDER(                                                             \
      Name("TableGather").Device(DEVICE_TYPE).HostMemory("table").TypeConstraint<T>("T"), \
      TableGatherOp<DEVICE, T>);                                                       \
  REGISTER_KERNEL_BUILDER(Name("TableSgdUpdate")                                        \
                              .Device(DEVICE_TYPE)                                     \
                              .HostMemory("table")                                     \
                              .TypeConstraint<T>("T"),                                 \
                          TableSgdUpdateOp<DEVICE, T>);
REGISTER(DEVICE_CPU, CPUDevice, Eigen::half)
REGISTER(DEVICE_CPU, CPUDevice, float)
#if GOOGLE_CUDA
REGISTER(DEVICE_GPU, GPUDevice, Eigen::half)
REGISTER(DEVICE_GPU, GPUDevice, float)
#endif
#undef REGISTER

}  // namespace
}  // namespace tensorflow
