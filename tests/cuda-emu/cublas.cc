/* gst-moshi CUDA emulator: the cuBLAS calls the backend makes, with cuBLAS's semantics.
 *
 * Column-major throughout: op(A) is m x k, op(B) is k x n, C is m x n with leading dimension
 * ldc, C = alpha * op(A) op(B) + beta * C, where beta == 0 means C is written without being
 * read (NaN in C does not propagate), and k == 0 means C = beta * C. Arguments are validated as
 * cuBLAS does (CUBLAS_STATUS_INVALID_VALUE for a leading dimension smaller than the rows it
 * spans, negative sizes, ...), every operand range must be device memory (a host pointer, or a
 * leading dimension that runs past an allocation, fails as the faulting GEMM would on a GPU),
 * and the type combinations are the ones cuBLAS accepts for CUBLAS_COMPUTE_32F: A and B of one
 * type (F32, BF16 or F16), C of that type or F32. Products accumulate in f32.
 *
 * Emulated: cublasCreate/Destroy, Set/GetStream, SetWorkspace, Set/GetMathMode, Set/GetPointerMode (host and
 * device scalars), cublasSgemm, cublasSgemmStridedBatched, cublasGemmEx,
 * cublasGemmStridedBatchedEx, cublasGetStatusName/String.
 *
 * A GEMM on a handle whose stream is capturing is checked as it would be eagerly and becomes a
 * graph node (of kernel type, as cuBLAS's kernels are on a GPU) that keeps what the handle said
 * at the call: with CUBLAS_POINTER_MODE_HOST, alpha and beta are read at the call and kept by
 * value, as cuBLAS does; device scalars are read when the graph runs. As the scalars decide
 * whether A and B are read, a device-mode capture checks only C, and the replay the rest. */
#include "emu-internal.h"

#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstring>
#include <string>
#include <vector>

struct cublasContext {
  cudaStream_t stream;
  cublasMath_t math;
  cublasPointerMode_t pointer_mode;
};

using namespace moshi_emu;

namespace {

size_t
type_size (cudaDataType t)
{
  switch (t) {
    case CUDA_R_32F: return 4;
    case CUDA_R_16BF: return 2;
    case CUDA_R_16F: return 2;
    default: return 0;
  }
}

const char *
type_name (cudaDataType t)
{
  switch (t) {
    case CUDA_R_32F: return "CUDA_R_32F";
    case CUDA_R_16BF: return "CUDA_R_16BF";
    case CUDA_R_16F: return "CUDA_R_16F";
    default: return "an unsupported cudaDataType";
  }
}

float
load (const void *base, cudaDataType t, size_t i)
{
  switch (t) {
    case CUDA_R_32F: return ((const float *) base)[i];
    case CUDA_R_16BF: return __bfloat162float (((const __nv_bfloat16 *) base)[i]);
    case CUDA_R_16F: return __half2float (((const __half *) base)[i]);
    default: return 0.0f;
  }
}

void
store (void *base, cudaDataType t, size_t i, float v)
{
  switch (t) {
    case CUDA_R_32F: ((float *) base)[i] = v; break;
    case CUDA_R_16BF: ((__nv_bfloat16 *) base)[i] = __float2bfloat16_rn (v); break;
    case CUDA_R_16F: ((__half *) base)[i] = __float2half_rn (v); break;
    default: break;
  }
}

bool
valid_op (cublasOperation_t op)
{
  return op == CUBLAS_OP_N || op == CUBLAS_OP_T || op == CUBLAS_OP_C;
}

/* Bytes a column-major rows x cols operand with leading dimension ld spans. */
size_t
span (int rows, int cols, int ld, size_t elem)
{
  if (rows == 0 || cols == 0)
    return 0;
  return ((size_t) (cols - 1) * ld + rows) * elem;
}

bool
check_operand (const char *call, const char *name, const void *p, int rows, int cols, int ld,
    long long stride, int batch, size_t elem)
{
  size_t one = span (rows, cols, ld, elem);
  if (one == 0)
    return true;
  size_t bytes = one + (size_t) (batch - 1) * (size_t) (stride < 0 ? 0 : stride) * elem;
  if (p != nullptr && range_is_device (p, bytes))
    return true;
  report ("%s: operand %s (%d x %d, ld %d%s) is %s", call, name, rows, cols, ld,
      batch > 1 ? ", batched" : "",
      p == nullptr ? "NULL" : find_alloc (p) ? "a device range that runs past its allocation"
      : "not device memory");
  return false;
}

struct Gemm {
  const char *call;
  cublasHandle_t handle;
  cublasOperation_t ta, tb;
  int m, n, k;
  const void *alpha, *beta;     /* float scalars, host or device per the pointer mode */
  const void *a;
  cudaDataType at;
  int lda;
  long long stride_a;
  const void *b;
  cudaDataType bt;
  int ldb;
  long long stride_b;
  void *c;
  cudaDataType ct;
  int ldc;
  long long stride_c;
  int batch;
  cublasComputeType_t compute;
};

/* The scalars for the handle's pointer mode: host memory in host mode, device memory in device
 * mode (the other kind faults as it would on a GPU). Read into *alpha and *beta when not NULL. */
cublasStatus_t
check_scalars (const Gemm &g, float *alpha, float *beta)
{
  if (g.handle->pointer_mode == CUBLAS_POINTER_MODE_DEVICE) {
    if (!range_is_device (g.alpha, 4) || !range_is_device (g.beta, 4)) {
      report ("%s: pointer mode is device but alpha or beta is not device memory", g.call);
      fail (cudaErrorIllegalAddress);
      return CUBLAS_STATUS_EXECUTION_FAILED;
    }
  } else if ((g.alpha && find_alloc (g.alpha)) || (g.beta && find_alloc (g.beta))) {
    report ("%s: pointer mode is host but alpha or beta is device memory", g.call);
    fail (cudaErrorIllegalAddress);
    return CUBLAS_STATUS_EXECUTION_FAILED;
  }
  if (g.alpha == nullptr || g.beta == nullptr)
    return CUBLAS_STATUS_INVALID_VALUE;
  if (alpha != nullptr)
    memcpy (alpha, g.alpha, 4);
  if (beta != nullptr)
    memcpy (beta, g.beta, 4);
  return CUBLAS_STATUS_SUCCESS;
}

/* Every operand range the product touches is device memory (A and B only when read). */
bool
check_operands (const Gemm &g, bool reads_ab)
{
  const bool na = g.ta == CUBLAS_OP_N, nb = g.tb == CUBLAS_OP_N;
  return (!reads_ab || (check_operand (g.call, "A", g.a, na ? g.m : g.k, na ? g.k : g.m, g.lda,
          g.stride_a, g.batch, type_size (g.at)) && check_operand (g.call, "B", g.b,
          nb ? g.k : g.n, nb ? g.n : g.k, g.ldb, g.stride_b, g.batch, type_size (g.bt))))
      && check_operand (g.call, "C", g.c, g.m, g.n, g.ldc, g.stride_c, g.batch,
          type_size (g.ct));
}

cublasStatus_t run_gemm (const Gemm &g);

/* A failed GEMM invalidates the capture of its stream, if any, without a CUDA error of its own
 * (cuBLAS reports the status). */
void
invalidate_capture (cudaStream_t stream)
{
  capture_fail (stream, cudaSuccess);
}

/* A GEMM captured from a stream: a copy of the call on a handle of its own, which holds the
 * pointer mode of the call and, at replay, the stream the graph runs on. Host scalars are
 * copied into the node. */
struct GemmNode : CUgraphNode_st {
  Gemm g;
  cublasContext handle;
  float alpha, beta;

  GemmNode (const Gemm &g_, float alpha_, float beta_)
    : CUgraphNode_st (cudaGraphNodeTypeKernel, g_.call), g (g_), handle (*g_.handle),
      alpha (alpha_), beta (beta_)
  {
    g.handle = &handle;
    if (handle.pointer_mode == CUBLAS_POINTER_MODE_HOST) {
      g.alpha = &alpha;
      g.beta = &beta;
    }
  }

  cudaError_t
  replay (cudaStream_t stream) override
  {
    handle.stream = stream;
    if (run_gemm (g) == CUBLAS_STATUS_SUCCESS)
      return cudaSuccess;
    /* the checks at capture leave only faults, which are sticky */
    return sticky_error () != cudaSuccess ? sticky_error () : fail (cudaErrorUnknown);
  }
};

cublasStatus_t
run_gemm (const Gemm &g)
{
  std::lock_guard<std::recursive_mutex> guard (g_lock);
  if (g.handle == nullptr)
    return CUBLAS_STATUS_NOT_INITIALIZED;
  if (sticky_error () != cudaSuccess)
    return CUBLAS_STATUS_EXECUTION_FAILED;
  const cudaStream_t stream = g.handle->stream;
  /* an error in a GEMM on a capturing stream also invalidates the capture */
  if (!valid_op (g.ta) || !valid_op (g.tb) || g.m < 0 || g.n < 0 || g.k < 0 || g.batch < 0) {
    report ("%s: invalid operation or negative size (m %d, n %d, k %d, batch %d)", g.call, g.m,
        g.n, g.k, g.batch);
    invalidate_capture (stream);
    return CUBLAS_STATUS_INVALID_VALUE;
  }
  const bool na = g.ta == CUBLAS_OP_N, nb = g.tb == CUBLAS_OP_N;
  const int a_rows = na ? g.m : g.k;
  const int b_rows = nb ? g.k : g.n;
  if (g.lda < (a_rows > 1 ? a_rows : 1) || g.ldb < (b_rows > 1 ? b_rows : 1)
      || g.ldc < (g.m > 1 ? g.m : 1)) {
    report ("%s: leading dimension too small (lda %d for %d rows, ldb %d for %d rows, ldc %d "
        "for %d rows)", g.call, g.lda, a_rows, g.ldb, b_rows, g.ldc, g.m);
    invalidate_capture (stream);
    return CUBLAS_STATUS_INVALID_VALUE;
  }
  if (g.compute != CUBLAS_COMPUTE_32F && g.compute != CUBLAS_COMPUTE_32F_PEDANTIC) {
    report ("%s: compute type %d is not emulated (only CUBLAS_COMPUTE_32F[_PEDANTIC])", g.call,
        (int) g.compute);
    invalidate_capture (stream);
    return CUBLAS_STATUS_NOT_SUPPORTED;
  }
  if (type_size (g.at) == 0 || g.at != g.bt || (g.ct != g.at && g.ct != CUDA_R_32F)) {
    report ("%s: types A %s, B %s, C %s are not a combination cuBLAS supports", g.call,
        type_name (g.at), type_name (g.bt), type_name (g.ct));
    invalidate_capture (stream);
    return CUBLAS_STATUS_NOT_SUPPORTED;
  }
  if (!stream_is_valid (stream)) {
    report ("%s: the handle's stream is not live", g.call);
    return CUBLAS_STATUS_EXECUTION_FAILED;
  }
  bool capturing;
  if (capture_state (g.call, stream, &capturing) != cudaSuccess)
    return CUBLAS_STATUS_EXECUTION_FAILED;
  if (capturing) {
    float alpha = 0.0f, beta = 0.0f;
    if (g.m != 0 && g.n != 0 && g.batch != 0) {
      const bool host = g.handle->pointer_mode == CUBLAS_POINTER_MODE_HOST;
      cublasStatus_t st = check_scalars (g, host ? &alpha : nullptr, host ? &beta : nullptr);
      if (st != CUBLAS_STATUS_SUCCESS) {
        invalidate_capture (stream);
        return st;
      }
      if (!check_operands (g, host && alpha != 0.0f && g.k > 0)) {
        capture_fail (stream, fail (cudaErrorIllegalAddress));
        return CUBLAS_STATUS_EXECUTION_FAILED;
      }
    }
    capture_add (stream, new GemmNode (g, alpha, beta));
    return CUBLAS_STATUS_SUCCESS;
  }
  g_stats.gemms++;
  if (g.m == 0 || g.n == 0 || g.batch == 0)
    return CUBLAS_STATUS_SUCCESS;

  float alpha, beta;
  cublasStatus_t st = check_scalars (g, &alpha, &beta);
  if (st != CUBLAS_STATUS_SUCCESS)
    return st;
  const bool reads_ab = alpha != 0.0f && g.k > 0;
  if (!check_operands (g, reads_ab)) {
    fail (cudaErrorIllegalAddress);
    return CUBLAS_STATUS_EXECUTION_FAILED;
  }

  /* op(A) as m rows of k and op(B) as n columns of k, both contiguous in k */
  std::vector<float> opa ((size_t) g.m * g.k), opb ((size_t) g.n * g.k);
  for (int bi = 0; bi < g.batch; bi++) {
    const size_t oa = (size_t) bi * g.stride_a, ob = (size_t) bi * g.stride_b;
    const size_t oc = (size_t) bi * g.stride_c;
    if (reads_ab) {
      for (int i = 0; i < g.m; i++)
        for (int p = 0; p < g.k; p++)
          opa[(size_t) i * g.k + p] = load (g.a, g.at,
              oa + (na ? (size_t) p * g.lda + i : (size_t) i * g.lda + p));
      for (int j = 0; j < g.n; j++)
        for (int p = 0; p < g.k; p++)
          opb[(size_t) j * g.k + p] = load (g.b, g.bt,
              ob + (nb ? (size_t) j * g.ldb + p : (size_t) p * g.ldb + j));
    }
    for (int j = 0; j < g.n; j++)
      for (int i = 0; i < g.m; i++) {
        float acc = 0.0f;
        if (reads_ab) {
          const float *x = &opa[(size_t) i * g.k], *y = &opb[(size_t) j * g.k];
          for (int p = 0; p < g.k; p++)
            acc += x[p] * y[p];
        }
        const size_t ci = oc + (size_t) j * g.ldc + i;
        float v = alpha * acc;
        if (beta != 0.0f)
          v += beta * load (g.c, g.ct, ci);
        store (g.c, g.ct, ci, v);
      }
  }
  return CUBLAS_STATUS_SUCCESS;
}

}  // namespace

cublasStatus_t
cublasCreate_v2 (cublasHandle_t *handle)
{
  if (handle == nullptr)
    return CUBLAS_STATUS_INVALID_VALUE;
  *handle = new cublasContext { nullptr, CUBLAS_DEFAULT_MATH, CUBLAS_POINTER_MODE_HOST };
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t
cublasDestroy_v2 (cublasHandle_t handle)
{
  if (handle == nullptr)
    return CUBLAS_STATUS_NOT_INITIALIZED;
  delete handle;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t
cublasSetStream_v2 (cublasHandle_t handle, cudaStream_t stream)
{
  if (handle == nullptr)
    return CUBLAS_STATUS_NOT_INITIALIZED;
  std::lock_guard<std::recursive_mutex> guard (g_lock);
  if (!stream_is_valid (stream)) {
    report ("cublasSetStream: %p is not a live stream", (void *) stream);
    return CUBLAS_STATUS_INVALID_VALUE;
  }
  handle->stream = stream;
  return CUBLAS_STATUS_SUCCESS;
}

/* A user workspace (what keeps cuBLAS from allocating inside a stream capture): device memory
 * of at least the size given, or NULL and 0 for cuBLAS's own. (cuBLAS also wants 256-byte
 * alignment, which cudaMalloc gives on a GPU; the emulator's allocations end at a guard page
 * and are only 16-byte aligned, so that is not checked here.) */
cublasStatus_t
cublasSetWorkspace_v2 (cublasHandle_t handle, void *workspace, size_t bytes)
{
  if (handle == nullptr)
    return CUBLAS_STATUS_NOT_INITIALIZED;
  std::lock_guard<std::recursive_mutex> guard (g_lock);
  if ((workspace == nullptr) != (bytes == 0)
      || (workspace != nullptr && !range_is_device (workspace, bytes))) {
    report ("cublasSetWorkspace: %p (%zu bytes) is not a device memory range", workspace, bytes);
    return CUBLAS_STATUS_INVALID_VALUE;
  }
  return CUBLAS_STATUS_SUCCESS;       /* the emulated products need no workspace */
}

cublasStatus_t
cublasGetStream_v2 (cublasHandle_t handle, cudaStream_t *stream)
{
  if (handle == nullptr)
    return CUBLAS_STATUS_NOT_INITIALIZED;
  if (stream == nullptr)
    return CUBLAS_STATUS_INVALID_VALUE;
  *stream = handle->stream;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t
cublasSetMathMode (cublasHandle_t handle, cublasMath_t mode)
{
  if (handle == nullptr)
    return CUBLAS_STATUS_NOT_INITIALIZED;
  handle->math = mode;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t
cublasGetMathMode (cublasHandle_t handle, cublasMath_t *mode)
{
  if (handle == nullptr)
    return CUBLAS_STATUS_NOT_INITIALIZED;
  if (mode == nullptr)
    return CUBLAS_STATUS_INVALID_VALUE;
  *mode = handle->math;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t
cublasSetPointerMode_v2 (cublasHandle_t handle, cublasPointerMode_t mode)
{
  if (handle == nullptr)
    return CUBLAS_STATUS_NOT_INITIALIZED;
  if (mode != CUBLAS_POINTER_MODE_HOST && mode != CUBLAS_POINTER_MODE_DEVICE)
    return CUBLAS_STATUS_INVALID_VALUE;
  handle->pointer_mode = mode;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t
cublasGetPointerMode_v2 (cublasHandle_t handle, cublasPointerMode_t *mode)
{
  if (handle == nullptr)
    return CUBLAS_STATUS_NOT_INITIALIZED;
  if (mode == nullptr)
    return CUBLAS_STATUS_INVALID_VALUE;
  *mode = handle->pointer_mode;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t
cublasSgemm_v2 (cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb,
    int m, int n, int k, const float *alpha, const float *A, int lda, const float *B, int ldb,
    const float *beta, float *C, int ldc)
{
  Gemm g = { "cublasSgemm", handle, transa, transb, m, n, k, alpha, beta, A, CUDA_R_32F, lda, 0,
    B, CUDA_R_32F, ldb, 0, C, CUDA_R_32F, ldc, 0, 1, CUBLAS_COMPUTE_32F };
  return run_gemm (g);
}

cublasStatus_t
cublasSgemmStridedBatched (cublasHandle_t handle, cublasOperation_t transa,
    cublasOperation_t transb, int m, int n, int k, const float *alpha, const float *A, int lda,
    long long int strideA, const float *B, int ldb, long long int strideB, const float *beta,
    float *C, int ldc, long long int strideC, int batchCount)
{
  Gemm g = { "cublasSgemmStridedBatched", handle, transa, transb, m, n, k, alpha, beta, A,
    CUDA_R_32F, lda, strideA, B, CUDA_R_32F, ldb, strideB, C, CUDA_R_32F, ldc, strideC,
    batchCount, CUBLAS_COMPUTE_32F };
  return run_gemm (g);
}

cublasStatus_t
cublasGemmEx (cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb, int m,
    int n, int k, const void *alpha, const void *A, cudaDataType Atype, int lda, const void *B,
    cudaDataType Btype, int ldb, const void *beta, void *C, cudaDataType Ctype, int ldc,
    cublasComputeType_t computeType, cublasGemmAlgo_t algo)
{
  Gemm g = { "cublasGemmEx", handle, transa, transb, m, n, k, alpha, beta, A, Atype, lda, 0, B,
    Btype, ldb, 0, C, Ctype, ldc, 0, 1, computeType };
  return run_gemm (g);
}

cublasStatus_t
cublasGemmStridedBatchedEx (cublasHandle_t handle, cublasOperation_t transa,
    cublasOperation_t transb, int m, int n, int k, const void *alpha, const void *A,
    cudaDataType Atype, int lda, long long int strideA, const void *B, cudaDataType Btype,
    int ldb, long long int strideB, const void *beta, void *C, cudaDataType Ctype, int ldc,
    long long int strideC, int batchCount, cublasComputeType_t computeType,
    cublasGemmAlgo_t algo)
{
  Gemm g = { "cublasGemmStridedBatchedEx", handle, transa, transb, m, n, k, alpha, beta, A,
    Atype, lda, strideA, B, Btype, ldb, strideB, C, Ctype, ldc, strideC, batchCount,
    computeType };
  return run_gemm (g);
}

const char *
cublasGetStatusName (cublasStatus_t status)
{
  switch (status) {
    case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_ARCH_MISMATCH: return "CUBLAS_STATUS_ARCH_MISMATCH";
    case CUBLAS_STATUS_MAPPING_ERROR: return "CUBLAS_STATUS_MAPPING_ERROR";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_INTERNAL_ERROR: return "CUBLAS_STATUS_INTERNAL_ERROR";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
    case CUBLAS_STATUS_LICENSE_ERROR: return "CUBLAS_STATUS_LICENSE_ERROR";
  }
  return "CUBLAS_STATUS_UNKNOWN";
}

const char *
cublasGetStatusString (cublasStatus_t status)
{
  return cublasGetStatusName (status);
}
