// Embedding table ops: C API of the CUDA launchers (no CUDA or TensorFlow includes).
//
// Gather:     table float32 [R, D], rows int64 [K] -> out [K, D] in `dtype` (float32 or
//             float16): out[k] = table[rows[k]], converted. A row outside [0, R) gives zeros.
// SGD update: table[rows[k]] -= rate * grads[k] for every k (grads [K, D] in `dtype`,
//             converted to float32 first; rows repeated within `rows` add up, by atomics, so
//             their order of addition is not fixed). *rate == 0 (a device scalar) changes
//             nothing, even where grads holds inf or nan. A row outside [0, R) is skipped.
// Arrays are dense row-major device arrays; a row of D values is read as float4 when D % 4 == 0.
#ifndef EMBEDDING_OPS_TABLE_OPS_H_
#define EMBEDDING_OPS_TABLE_OPS_H_

#ifdef __cplusplus
extern "C" {
#endif

enum { kTableOpsF32 = 0, kTableOpsF16 = 1 };

// Each returns a cudaError_t as int (0 = success; the launch is checked with
// cudaGetLastError). stream is a cudaStream_t. K = 0 launches nothing.
int table_gather_gpu(int dtype, const float* table, long long num_rows, int dim,
                     const long long* rows, long long K, void* out, void* stream);
int table_sgd_update_gpu(int dtype, float* table, long long num_rows, int dim,
                         const long long* rows, long long K, const void* grads,
                         const float* rate, void* stream);
// to <- from, `bytes` bytes of device memory, ordered on the stream.
int table_copy_gpu(void* to, const void* from, long long bytes, void* stream);
// cudaGetErrorString of a code returned above.
const char* table_ops_gpu_error_string(int code);

#ifdef __cplusplus
}
#endif

#endif  // EMBEDDING_OPS_TABLE_OPS_H_
