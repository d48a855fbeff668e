/* gst-moshi CUDA backend: the op table (lib/backend/moshi-backend.h) on device memory.
 *
 * Host code in C against the CUDA runtime and cuBLAS APIs. The same source is built twice: with
 * the nvcc kernels, libcudart and cuBLAS into libmoshi-cuda.so (the module libmoshi dlopens),
 * and against the CPU emulator of the runtime (tests/cuda-emu) into libmoshi-cuda-emu.so, which
 * the tests load with MOSHI_CUDA_EMULATE=1.
 *
 * - Weights are uploaded once, at load: F32 as F32, BF16 matrices as BF16 (the embedding and
 *   GEMV kernels read them directly), everything else converted to F32 on the host first.
 * - A MoshiExec is a non-blocking stream, a cuBLAS handle bound to it and scratch buffers. Ops
 *   queue work on the stream and return; download synchronises.
 * - linear: cublasSgemm for F32 weights; BF16 weights go to the warp-per-feature GEMV kernel for
 *   up to MOSHI_K_GEMV_MAX_ROWS rows, else blocks of weight rows are converted to f32 in scratch
 *   and multiplied with cublasSgemm (never a full f32 copy of the matrix). On an exec with
 *   tensor_core_batches (the LM's decode steps), BF16 weights with MOSHI_TENSOR_CORE_MIN_ROWS or
 *   more rows go to the tensor cores instead: the activations rounded to BF16 in scratch, then
 *   cublasGemmEx BF16 x BF16 -> F32 with f32 accumulation.
 * - Ops return nothing: the first failure of a thread's ops (a refused launch or copy, or a
 *   fault, which CUDA makes sticky) is kept and comes back as the error of its next
 *   synchronize or download, which the models turn into the failure of the call. After a fault
 *   every call fails until the process ends (the context is lost); what frees memory then
 *   fails too, which is no news to anyone and is not kept (docs/cuda.md, "Device faults").
 * - Accounting (get_stats): every op adds its kernel launches (the difference of the kernel
 *   library's per-thread launch counter around its kernel calls), cuBLAS calls, copies/memsets
 *   and the bytes of weights it reads to its exec's counters and to the backend's sum. */
#include "moshi-backend-cuda.h"

#include "moshi-error.h"
#include "moshi-kernels.h"

#include <cublas_v2.h>
#include <cuda_runtime_api.h>
#include <string.h>

/* f32 elements of converted BF16 weight rows per cublasSgemm in linear (16 MiB) */
#define BF16_BLOCK_FLOATS (4u << 20)

enum {
  SCRATCH_LINEAR,
  SCRATCH_ACTIVATIONS,
  SCRATCH_COPY,
  SCRATCH_ATTENTION,
  SCRATCH_CONV,
  N_SCRATCH
};

typedef struct {
  MoshiBackend parent;
  int device;
  char *label;                  /* "CUDA device 0 (name)": the start of its errors */
  /* uploads at load time and the zeroing of fresh allocations, synchronised before return */
  cudaStream_t load_stream;
  GMutex load_lock;
  /* the sum of every exec's counters since the last reset_stats (be, NULL) (atomics) */
  guint64 total[6];
} CudaBackend;

/* cuBLAS's workspace, given to it so that it never allocates (which a stream capture refuses):
 * its documented default for GPUs before Hopper; Hopper's 32 MiB only widens its choice of
 * algorithms for large products, which a decode step does not make. */
#define BLAS_WORKSPACE_BYTES (4u << 20)

typedef struct {
  MoshiExec parent;
  cudaStream_t stream;
  cublasHandle_t blas;
  void *blas_workspace;
  void *scratch[N_SCRATCH];
  gsize scratch_bytes[N_SCRATCH];
  MoshiExecStats stats;
  /* between capture_begin and capture_end: what the recorded ops will do per replay, and the
   * first thing that could not be recorded */
  gboolean capturing;
  MoshiExecStats captured;
  char *capture_problem;
} CudaExec;

struct _MoshiGraph {
  cudaGraphExec_t exec;
  MoshiExecStats per_launch;    /* the counters one replay adds */
};

G_STATIC_ASSERT (sizeof (MoshiRowCache) == sizeof (MoshiKRowCache));
G_STATIC_ASSERT (G_STRUCT_OFFSET (MoshiRowCache, v_cache) == G_STRUCT_OFFSET (MoshiKRowCache, v_cache));
G_STATIC_ASSERT (G_STRUCT_OFFSET (MoshiRowCache, pos) == G_STRUCT_OFFSET (MoshiKRowCache, pos));
G_STATIC_ASSERT (G_STRUCT_OFFSET (MoshiRowCache, end) == G_STRUCT_OFFSET (MoshiKRowCache, end));
G_STATIC_ASSERT (sizeof (MoshiSampler) == sizeof (MoshiKSampler));
G_STATIC_ASSERT (G_STRUCT_OFFSET (MoshiSampler, n_rows) == G_STRUCT_OFFSET (MoshiKSampler, n_rows));
G_STATIC_ASSERT (G_STRUCT_OFFSET (MoshiSampler, seed) == G_STRUCT_OFFSET (MoshiKSampler, seed));
G_STATIC_ASSERT (G_STRUCT_OFFSET (MoshiSampler, step) == G_STRUCT_OFFSET (MoshiKSampler, step));

#define CUDA_EX(ex) ((CudaExec *) (ex))
#define CUDA_BE(be) ((CudaBackend *) (be))

/* The first failure of this thread's ops since its last wait. Per thread because an exec is
 * used by one thread at a time, and that thread waits (synchronize) before it reads results.
 * A GPrivate, so that what a thread kept and never waited for (a scheduler thread whose last
 * tick faulted) is freed when the thread ends. */
static GPrivate pending_failure = G_PRIVATE_INIT (g_free);
/* Its MoshiErrorCode plus one (0: MOSHI_ERROR_DEVICE): a scratch buffer that could not grow
 * fails the step without a fault. */
static GPrivate pending_code;

static void
keep_failure_code (MoshiErrorCode code, char *message)
{
  g_debug ("CUDA backend: %s", message);
  if (g_private_get (&pending_failure) == NULL) {
    g_private_set (&pending_failure, message);
    g_private_set (&pending_code, GINT_TO_POINTER (code == MOSHI_ERROR_DEVICE ? 0 : code + 1));
  } else {
    g_free (message);
  }
}

static void
keep_failure (char *message)
{
  keep_failure_code (MOSHI_ERROR_DEVICE, message);
}

static void
report (cudaError_t err, const char *what)
{
  if (G_LIKELY (err == cudaSuccess))
    return;
  keep_failure (g_strdup_printf ("%s failed: %s (%s)", what, cudaGetErrorName (err),
      cudaGetErrorString (err)));
}

static void
report_blas (cublasStatus_t status, const char *what)
{
  if (G_LIKELY (status == CUBLAS_STATUS_SUCCESS))
    return;
  keep_failure (g_strdup_printf ("%s failed: %s (%s)", what, cublasGetStatusName (status),
      cublasGetStatusString (status)));
}

/* The kept failure as the error of a wait on be, which it clears. */
static gboolean
take_failure (MoshiBackend *be, GError **error)
{
  char *message = g_private_get (&pending_failure);
  if (G_LIKELY (message == NULL))
    return TRUE;
  int code = GPOINTER_TO_INT (g_private_get (&pending_code));
  g_set_error (error, MOSHI_ERROR, code == 0 ? MOSHI_ERROR_DEVICE : code - 1, "%s: %s",
      CUDA_BE (be)->label, message);
  g_private_replace (&pending_failure, NULL);
  g_private_set (&pending_code, NULL);
  return FALSE;
}

/* cudaError_t of the expression, reported under the name of the op */
#define CHECK(call) report ((call), G_STRFUNC)

/* The errors that lose the context: every later call returns them until the process ends. */
static gboolean
is_device_fault (cudaError_t err)
{
  switch (err) {
    case cudaErrorIllegalAddress:
    case cudaErrorLaunchFailure:
    case cudaErrorAssert:
    case cudaErrorIllegalInstruction:
    case cudaErrorMisalignedAddress:
    case cudaErrorInvalidAddressSpace:
    case cudaErrorInvalidPc:
    case cudaErrorHardwareStackError:
    case cudaErrorLaunchTimeout:
    case cudaErrorECCUncorrectable:
      return TRUE;
    default:
      return FALSE;
  }
}

/* For what releases memory or handles: after a fault it fails as everything does, and no
 * caller is there to be told (kept, it would stand as the error of whatever this thread waits
 * for next). Other failures are bugs, kept as any op's. */
static void
report_release (cudaError_t err, const char *what)
{
  if (G_LIKELY (err == cudaSuccess))
    return;
  if (is_device_fault (err))
    g_debug ("CUDA backend: %s failed after a device fault: %s", what, cudaGetErrorName (err));
  else
    report (err, what);
}

#define CHECK_RELEASE(call) report_release ((call), G_STRFUNC)

/* ---- accounting ---- */

enum {
  STAT_LAUNCHES, STAT_BLAS, STAT_MEMORY, STAT_WEIGHT_BYTES, STAT_GRAPH_LAUNCHES, STAT_SYNCS,
  N_STATS
};
G_STATIC_ASSERT (sizeof (MoshiExecStats) == N_STATS * sizeof (guint64));
G_STATIC_ASSERT (G_STRUCT_OFFSET (MoshiExecStats, blas_calls) == STAT_BLAS * sizeof (guint64));
G_STATIC_ASSERT (G_STRUCT_OFFSET (MoshiExecStats, memory_ops) == STAT_MEMORY * sizeof (guint64));
G_STATIC_ASSERT (G_STRUCT_OFFSET (MoshiExecStats, weight_bytes)
    == STAT_WEIGHT_BYTES * sizeof (guint64));
G_STATIC_ASSERT (G_STRUCT_OFFSET (MoshiExecStats, graph_launches)
    == STAT_GRAPH_LAUNCHES * sizeof (guint64));
G_STATIC_ASSERT (G_STRUCT_OFFSET (MoshiExecStats, syncs) == STAT_SYNCS * sizeof (guint64));

static inline guint64 *
stat_array (MoshiExecStats *s)
{
  return &s->kernel_launches;
}

/* Work queued while capturing counts for the graph (added at each replay), not now. */
static inline void
count (MoshiExec *ex, int what, guint64 n)
{
  if (n == 0)
    return;
  CudaExec *cex = CUDA_EX (ex);
  if (cex->capturing) {
    stat_array (&cex->captured)[what] += n;
    return;
  }
  stat_array (&cex->stats)[what] += n;
  __atomic_fetch_add (&CUDA_BE (ex->backend)->total[what], n, __ATOMIC_RELAXED);
}

/* Remembers the first reason the capture in progress cannot become a graph. */
static void
spoil_capture (CudaExec *ex, const char *why)
{
  if (ex->capture_problem == NULL)
    ex->capture_problem = g_strdup (why);
}

/* A call of the kernel library (moshi-kernels.h): its launches are counted for ex. */
#define KCALL(ex, call) \
  G_STMT_START { \
    unsigned long long l0_ = moshi_k_launch_count (); \
    report ((call), G_STRFUNC); \
    count ((ex), STAT_LAUNCHES, moshi_k_launch_count () - l0_); \
  } G_STMT_END

/* Bytes of a weight as stored on the device (0 for NULL). */
static inline guint64
weight_bytes (const MoshiWeight *w)
{
  if (w == NULL || w->data == NULL)
    return 0;
  guint64 bytes = (guint64) moshi_shape_numel (w->shape, w->ndim) * moshi_dtype_size (w->dtype);
  return w->dtype == MOSHI_DTYPE_I8 ? bytes + (guint64) w->shape[0] * sizeof (float) : bytes;
}

static gboolean
set_device_error (MoshiBackend *be, GError **error, cudaError_t err, const char *what)
{
  g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_DEVICE, "%s: %s failed: %s (%s)",
      CUDA_BE (be)->label, what, cudaGetErrorName (err), cudaGetErrorString (err));
  return FALSE;
}

/* "cannot allocate N bytes of WHAT: ...", and for device memory what is free, when err is
 * cudaErrorMemoryAllocation. That error is no fault: it is cleared here, as the runtime would
 * otherwise hand it to the next unrelated cudaGetLastError, and only this request fails. */
static char *
describe_no_memory (gsize bytes, const char *what, gboolean device)
{
  cudaGetLastError ();
  size_t free_bytes = 0, total = 0;
  if (!device || cudaMemGetInfo (&free_bytes, &total) != cudaSuccess) {
    cudaGetLastError ();
    return g_strdup_printf ("cannot allocate %" G_GSIZE_FORMAT " bytes of %s: out of memory",
        bytes, what);
  }
  return g_strdup_printf ("cannot allocate %" G_GSIZE_FORMAT " bytes of %s: out of memory "
      "(%zu bytes free of %zu)", bytes, what, free_bytes, total);
}

/* An allocation's failure: MOSHI_ERROR_NO_MEMORY when it did not fit, else the device's. */
static gboolean
set_alloc_error (MoshiBackend *be, GError **error, cudaError_t err, gsize bytes,
    const char *what, gboolean device)
{
  if (err != cudaErrorMemoryAllocation) {
    g_autofree char *doing = g_strdup_printf ("allocating %" G_GSIZE_FORMAT " bytes of %s",
        bytes, what);
    return set_device_error (be, error, err, doing);
  }
  g_autofree char *message = describe_no_memory (bytes, what, device);
  g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_NO_MEMORY, "%s: %s", CUDA_BE (be)->label,
      message);
  return FALSE;
}

static inline const float *
wf32 (const MoshiWeight *w)
{
  if (w == NULL)
    return NULL;
  g_assert (w->dtype == MOSHI_DTYPE_F32);
  return w->data;
}

/* A scratch buffer of at least bytes, kept by the exec. Contents are undefined. */
static void *
scratch (CudaExec *ex, int slot, gsize bytes)
{
  if (ex->scratch_bytes[slot] < bytes && ex->capturing) {
    /* growing would free memory that recorded ops use: run the step once before recording */
    spoil_capture (ex, "a scratch buffer had to grow while recording");
    return NULL;
  }
  if (ex->scratch_bytes[slot] < bytes) {
    /* queued kernels may still use the old buffer */
    CHECK (cudaStreamSynchronize (ex->stream));
    CHECK_RELEASE (cudaFree (ex->scratch[slot]));
    gsize len = MAX (bytes, ex->scratch_bytes[slot] * 3 / 2);
    ex->scratch[slot] = NULL;
    ex->scratch_bytes[slot] = 0;
    cudaError_t err = cudaMalloc (&ex->scratch[slot], len);
    if (err == cudaErrorMemoryAllocation) {
      keep_failure_code (MOSHI_ERROR_NO_MEMORY, describe_no_memory (len, "scratch", TRUE));
      return NULL;
    }
    if (err != cudaSuccess) {
      keep_failure (g_strdup_printf ("cannot allocate %" G_GSIZE_FORMAT " bytes of scratch: %s",
          len, cudaGetErrorString (err)));
      return NULL;
    }
    ex->scratch_bytes[slot] = len;
  }
  return ex->scratch[slot];
}

/* ---------------------------------------------------------------- backend, exec, memory */

static void
cuda_destroy (MoshiBackend *be)
{
  CudaBackend *cbe = CUDA_BE (be);
  cudaStreamDestroy (cbe->load_stream);
  g_mutex_clear (&cbe->load_lock);
  g_free (cbe->label);
  g_free (be->description);
  g_free (cbe);
}

static MoshiExec *
cuda_exec_new (MoshiBackend *be, int n_threads, GError **error)
{
  CudaExec *ex = g_new0 (CudaExec, 1);
  cudaError_t err = cudaStreamCreateWithFlags (&ex->stream, cudaStreamNonBlocking);
  if (err != cudaSuccess) {
    set_device_error (be, error, err, "creating a stream");
    g_free (ex);
    return NULL;
  }
  err = cudaMalloc (&ex->blas_workspace, BLAS_WORKSPACE_BYTES);
  if (err != cudaSuccess) {
    set_alloc_error (be, error, err, BLAS_WORKSPACE_BYTES, "device memory for cuBLAS's workspace",
        TRUE);
    cudaStreamDestroy (ex->stream);
    g_free (ex);
    return NULL;
  }
  cublasStatus_t status = cublasCreate (&ex->blas);
  if (status == CUBLAS_STATUS_SUCCESS)
    status = cublasSetStream (ex->blas, ex->stream);
  if (status == CUBLAS_STATUS_SUCCESS)
    status = cublasSetWorkspace (ex->blas, ex->blas_workspace, BLAS_WORKSPACE_BYTES);
  if (status == CUBLAS_STATUS_SUCCESS)
    status = cublasSetMathMode (ex->blas, CUBLAS_DEFAULT_MATH);     /* f32, no TF32 */
  if (status != CUBLAS_STATUS_SUCCESS) {
    g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_DEVICE, "CUDA: cannot set up cuBLAS: %s",
        cublasGetStatusString (status));
    if (ex->blas)
      cublasDestroy (ex->blas);
    cudaFree (ex->blas_workspace);
    cudaStreamDestroy (ex->stream);
    g_free (ex);
    return NULL;
  }
  ex->parent.backend = moshi_backend_ref (be);
  return &ex->parent;
}

static void
cuda_exec_free (MoshiExec *parent)
{
  CudaExec *ex = CUDA_EX (parent);
  if (ex->capturing) {
    cudaGraph_t graph = NULL;
    cudaStreamEndCapture (ex->stream, &graph);
    if (graph != NULL)
      cudaGraphDestroy (graph);
  }
  g_free (ex->capture_problem);
  CHECK_RELEASE (cudaStreamSynchronize (ex->stream));
  cublasDestroy (ex->blas);
  cudaFree (ex->blas_workspace);
  for (int i = 0; i < N_SCRATCH; i++)
    cudaFree (ex->scratch[i]);
  cudaStreamDestroy (ex->stream);
  moshi_backend_unref (parent->backend);
  g_free (ex);
}

static void *
cuda_alloc (MoshiBackend *be, gsize bytes, GError **error)
{
  CudaBackend *cbe = CUDA_BE (be);
  void *p = NULL;
  cudaError_t err = cudaMalloc (&p, MAX (bytes, 1));
  if (err != cudaSuccess) {
    set_alloc_error (be, error, err, bytes, "device memory", TRUE);
    return NULL;
  }
  g_mutex_lock (&cbe->load_lock);
  err = cudaMemsetAsync (p, 0, MAX (bytes, 1), cbe->load_stream);
  if (err == cudaSuccess)
    err = cudaStreamSynchronize (cbe->load_stream);
  g_mutex_unlock (&cbe->load_lock);
  if (err != cudaSuccess) {
    set_device_error (be, error, err, "zeroing a new allocation");
    cudaFree (p);
    return NULL;
  }
  return p;
}

static void
cuda_free (MoshiBackend *be, void *ptr)
{
  CHECK_RELEASE (cudaFree (ptr));
}

static void
cuda_upload (MoshiExec *ex, void *dst, const void *src, gsize bytes)
{
  /* from pageable memory: returns once src has been staged, so the caller may reuse it */
  if (bytes > 0) {
    CHECK (cudaMemcpyAsync (dst, src, bytes, cudaMemcpyHostToDevice, CUDA_EX (ex)->stream));
    count (ex, STAT_MEMORY, 1);
  }
}

static void
cuda_download_async (MoshiExec *ex, void *dst, const void *src, gsize bytes)
{
  if (bytes > 0) {
    CHECK (cudaMemcpyAsync (dst, src, bytes, cudaMemcpyDeviceToHost, CUDA_EX (ex)->stream));
    count (ex, STAT_MEMORY, 1);
  }
}

static gboolean
cuda_synchronize (MoshiExec *ex, GError **error)
{
  if (CUDA_EX (ex)->capturing) {
    /* capture_end reports it */
    spoil_capture (CUDA_EX (ex), "the host waited for the device while recording");
    return TRUE;
  }
  CHECK (cudaStreamSynchronize (CUDA_EX (ex)->stream));
  count (ex, STAT_SYNCS, 1);
  return take_failure (ex->backend, error);
}

static gboolean
cuda_download (MoshiExec *ex, void *dst, const void *src, gsize bytes, GError **error)
{
  cuda_download_async (ex, dst, src, bytes);
  return cuda_synchronize (ex, error);
}

static void *
cuda_host_alloc (MoshiBackend *be, gsize bytes, GError **error)
{
  void *p = NULL;
  cudaError_t err = cudaHostAlloc (&p, MAX (bytes, 1), cudaHostAllocDefault);
  if (err != cudaSuccess) {
    set_alloc_error (be, error, err, bytes, "pinned host memory", FALSE);
    return NULL;
  }
  memset (p, 0, MAX (bytes, 1));
  return p;
}

static gboolean
cuda_memory_info (MoshiBackend *be, guint64 *free_bytes, guint64 *total_bytes,
    const char **device_name)
{
  size_t free_now = 0, total = 0;
  if (cudaMemGetInfo (&free_now, &total) != cudaSuccess) {
    /* an answer lost is no reason to fail what asked (a message) */
    cudaGetLastError ();
    return FALSE;
  }
  *free_bytes = free_now;
  *total_bytes = total;
  *device_name = CUDA_BE (be)->label;
  return TRUE;
}

static void
cuda_host_free (MoshiBackend *be, void *ptr)
{
  if (ptr != NULL)
    CHECK_RELEASE (cudaFreeHost (ptr));
}

/* ---------------------------------------------------------------- recorded steps */

static gboolean
cuda_capture_begin (MoshiExec *parent, GError **error)
{
  CudaExec *ex = CUDA_EX (parent);
  g_return_val_if_fail (!ex->capturing, FALSE);
  /* thread-local: another thread's allocations (a model loading) do not spoil the capture */
  cudaError_t err = cudaStreamBeginCapture (ex->stream, cudaStreamCaptureModeThreadLocal);
  if (err != cudaSuccess) {
    /* with what the ops queued before it failed, if they did: that came first */
    report (err, "beginning a stream capture");
    return take_failure (parent->backend, error);
  }
  ex->capturing = TRUE;
  memset (&ex->captured, 0, sizeof ex->captured);
  g_clear_pointer (&ex->capture_problem, g_free);
  return TRUE;
}

static MoshiGraph *
cuda_capture_end (MoshiExec *parent, GError **error)
{
  CudaExec *ex = CUDA_EX (parent);
  g_return_val_if_fail (ex->capturing, NULL);
  cudaGraph_t graph = NULL;
  cudaError_t err = cudaStreamEndCapture (ex->stream, &graph);
  ex->capturing = FALSE;
  g_autofree char *problem = g_steal_pointer (&ex->capture_problem);
  if (err == cudaSuccess && problem != NULL)
    err = cudaErrorStreamCaptureInvalidated;
  cudaGraphExec_t exec = NULL;
  if (err == cudaSuccess)
    err = cudaGraphInstantiate (&exec, graph, 0);
  if (graph != NULL)
    cudaGraphDestroy (graph);
  if (err != cudaSuccess) {
    /* a failed capture leaves no sticky error: the ops run eagerly from here */
    cudaGetLastError ();
    g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_DEVICE, "CUDA: cannot record the step: %s",
        problem != NULL ? problem : cudaGetErrorString (err));
    return NULL;
  }
  MoshiGraph *g = g_new0 (MoshiGraph, 1);
  g->exec = exec;
  g->per_launch = ex->captured;
  return g;
}

static gboolean
cuda_graph_launch (MoshiExec *parent, MoshiGraph *graph, GError **error)
{
  CudaExec *ex = CUDA_EX (parent);
  cudaError_t err = cudaGraphLaunch (graph->exec, ex->stream);
  if (err != cudaSuccess) {
    /* with what the ops queued before it failed, if they did: that came first */
    report (err, "launching a recorded step");
    return take_failure (parent->backend, error);
  }
  const guint64 *per = stat_array (&graph->per_launch);
  for (int i = 0; i < N_STATS; i++)
    count (parent, i, per[i]);
  count (parent, STAT_GRAPH_LAUNCHES, 1);
  return TRUE;
}

static void
cuda_graph_free (MoshiBackend *be, MoshiGraph *graph)
{
  if (graph == NULL)
    return;
  CHECK_RELEASE (cudaGraphExecDestroy (graph->exec));
  g_free (graph);
}

static void
cuda_zero (MoshiExec *ex, void *dst, gsize bytes)
{
  if (bytes > 0) {
    CHECK (cudaMemsetAsync (dst, 0, bytes, CUDA_EX (ex)->stream));
    count (ex, STAT_MEMORY, 1);
  }
}

/* ---------------------------------------------------------------- weights */

static gboolean
upload_weight (MoshiBackend *be, MoshiWeight *w, MoshiDType dtype, const void *host, int ndim,
    const int64_t *shape, GError **error)
{
  CudaBackend *cbe = CUDA_BE (be);
  int64_t numel = moshi_shape_numel (shape, ndim);
  gsize bytes = (gsize) numel * moshi_dtype_size (dtype);
  void *d = NULL;
  cudaError_t err = cudaMalloc (&d, MAX (bytes, 1));
  if (err != cudaSuccess)
    return set_alloc_error (be, error, err, bytes, "device memory for a weight", TRUE);
  if (bytes > 0) {
    g_mutex_lock (&cbe->load_lock);
    err = cudaMemcpyAsync (d, host, bytes, cudaMemcpyHostToDevice, cbe->load_stream);
    if (err == cudaSuccess)
      err = cudaStreamSynchronize (cbe->load_stream);
    g_mutex_unlock (&cbe->load_lock);
    if (err != cudaSuccess) {
      cudaFree (d);
      return set_device_error (be, error, err, "uploading a weight");
    }
  }
  memset (w, 0, sizeof (*w));
  w->dtype = dtype;
  w->ndim = ndim;
  memcpy (w->shape, shape, ndim * sizeof (int64_t));
  w->data = w->owned = d;
  return TRUE;
}

static gboolean
cuda_weight_from_f32 (MoshiBackend *be, MoshiWeight *w, const float *host, int ndim,
    const int64_t *shape, GError **error)
{
  return upload_weight (be, w, MOSHI_DTYPE_F32, host, ndim, shape, error);
}

static gboolean
cuda_weight_from_host (MoshiBackend *be, MoshiWeight *w, const MoshiTensorEntry *host,
    MoshiSafetensors *keep_alive, GError **error)
{
  MoshiDType dtype = moshi_weight_device_dtype (host, error);
  if (dtype == MOSHI_DTYPE_COUNT)
    return FALSE;
  if (dtype == host->dtype)
    return upload_weight (be, w, dtype, host->data, host->ndim, host->shape, error);
  g_autofree float *f32 = moshi_weight_to_f32 (host, error);
  return f32 != NULL && upload_weight (be, w, MOSHI_DTYPE_F32, f32, host->ndim, host->shape, error);
}

static gboolean
cuda_weight_from_int8 (MoshiBackend *be, MoshiWeight *w, const void *packed, int64_t n_out,
    int64_t n_in, GError **error)
{
  gsize off = moshi_int8_scales_offset (n_out, n_in);
  int64_t bytes = (int64_t) (off + (gsize) n_out * sizeof (float));
  /* the packed image as a byte vector, then typed */
  if (!upload_weight (be, w, MOSHI_DTYPE_U8, packed, 1, &bytes, error))
    return FALSE;
  w->dtype = MOSHI_DTYPE_I8;
  w->ndim = 2;
  w->shape[0] = n_out;
  w->shape[1] = n_in;
  w->scales = (const float *) ((const guint8 *) w->owned + off);
  return TRUE;
}

static void
cuda_weight_release (MoshiBackend *be, MoshiWeight *w)
{
  if (w->owned)
    CHECK_RELEASE (cudaFree (w->owned));
  memset (w, 0, sizeof (*w));
}

/* ---------------------------------------------------------------- data movement */

static void
cuda_copy_2d (MoshiExec *ex, float *dst, int ld_dst, const float *src, int ld_src, int rows,
    int cols)
{
  if (rows <= 0 || cols <= 0 || (dst == src && ld_dst == ld_src))
    return;
  cudaStream_t s = CUDA_EX (ex)->stream;
  const float *src_end = src + (gsize) (rows - 1) * ld_src + cols;
  const float *dst_end = dst + (gsize) (rows - 1) * ld_dst + cols;
  if (dst < src_end && src < dst_end) {
    /* an overlapping shift: parallel threads would read what others already wrote */
    float *tmp = scratch (CUDA_EX (ex), SCRATCH_COPY, (gsize) rows * cols * sizeof (float));
    if (tmp == NULL)
      return;
    KCALL (ex, moshi_k_copy_2d (s, tmp, cols, src, ld_src, rows, cols));
    KCALL (ex, moshi_k_copy_2d (s, dst, ld_dst, tmp, cols, rows, cols));
  } else {
    KCALL (ex, moshi_k_copy_2d (s, dst, ld_dst, src, ld_src, rows, cols));
  }
}

static void
cuda_transpose (MoshiExec *ex, float *dst, int ld_dst, const float *src, int ld_src, int rows,
    int cols)
{
  KCALL (ex, moshi_k_transpose (CUDA_EX (ex)->stream, dst, ld_dst, src, ld_src, rows, cols));
}

/* ---------------------------------------------------------------- elementwise, norms */

static void
cuda_elu_2d (MoshiExec *ex, float *dst, int ld_dst, const float *src, int ld_src, int rows,
    int cols)
{
  KCALL (ex, moshi_k_elu_2d (CUDA_EX (ex)->stream, dst, ld_dst, src, ld_src, rows, cols));
}

static void
cuda_gelu (MoshiExec *ex, float *x, gsize n)
{
  KCALL (ex, moshi_k_gelu (CUDA_EX (ex)->stream, x, n));
}

static void
cuda_add_scaled (MoshiExec *ex, float *x, int ld_x, const float *y, int ld_y,
    const MoshiWeight *scale, int rows, int cols)
{
  KCALL (ex, moshi_k_add_scaled (CUDA_EX (ex)->stream, x, ld_x, y, ld_y, wf32 (scale), rows, cols));
  count (ex, STAT_WEIGHT_BYTES, weight_bytes (scale));
}

static void
cuda_gated_act (MoshiExec *ex, float *dst, int ld_dst, const float *src, int ld_src,
    MoshiActivation act, int rows, int hidden)
{
  KCALL (ex, moshi_k_gated_act (CUDA_EX (ex)->stream, dst, ld_dst, src, ld_src,
          act == MOSHI_ACT_SILU ? MOSHI_K_ACT_SILU : MOSHI_K_ACT_GELU, rows, hidden));
}

static void
cuda_layer_norm (MoshiExec *ex, float *dst, int ld_dst, const float *src, int ld_src,
    const MoshiWeight *weight, const MoshiWeight *bias, float eps, int rows, int d)
{
  KCALL (ex, moshi_k_layer_norm (CUDA_EX (ex)->stream, dst, ld_dst, src, ld_src, wf32 (weight),
          wf32 (bias), eps, rows, d));
  count (ex, STAT_WEIGHT_BYTES, weight_bytes (weight) + weight_bytes (bias));
}

static void
cuda_rms_norm (MoshiExec *ex, float *dst, int ld_dst, const float *src, int ld_src,
    const MoshiWeight *alpha, float eps, int rows, int d)
{
  KCALL (ex, moshi_k_rms_norm (CUDA_EX (ex)->stream, dst, ld_dst, src, ld_src, wf32 (alpha), eps,
          rows, d));
  count (ex, STAT_WEIGHT_BYTES, weight_bytes (alpha));
}

/* ---------------------------------------------------------------- embeddings, positions */

static void
cuda_embedding (MoshiExec *ex, float *dst, int ld, const MoshiWeight *table, const int32_t *ids,
    int rows, float beta)
{
  g_assert (table->dtype == MOSHI_DTYPE_F32 || table->dtype == MOSHI_DTYPE_BF16);
  KCALL (ex, moshi_k_embedding (CUDA_EX (ex)->stream, dst, ld, table->data,
          table->dtype == MOSHI_DTYPE_BF16 ? MOSHI_K_BF16 : MOSHI_K_F32, (int) table->shape[0],
          (int) table->shape[1], ids, rows, beta));
  /* the rows asked for (the ids are on the device: a negative one reads nothing, but counts) */
  if (rows > 0)
    count (ex, STAT_WEIGHT_BYTES,
        (guint64) rows * table->shape[1] * moshi_dtype_size (table->dtype));
}

static void
cuda_add_sin_embedding (MoshiExec *ex, float *x, int ld, int rows, int d, int pos0,
    float max_period, float scale)
{
  KCALL (ex, moshi_k_add_sin_embedding (CUDA_EX (ex)->stream, x, ld, rows, d, pos0, max_period,
          scale));
}

/* ---------------------------------------------------------------- linear */

/* Row-major dst[rows, m] = beta * dst + src[rows, k] w[m, k]^T. Seen column-major (cuBLAS), dst
 * is C [m, rows] (ldc = ld_dst), w is A [k, m] (lda = k), used transposed, and src is
 * B [k, rows] (ldb = ld_src): C = A^T B + beta C. A single row may have any leading dimension;
 * cuBLAS still wants ld >= the rows it spans. */
static void
sgemm_rows (CudaExec *ex, float *dst, int ld_dst, const float *src, int ld_src, const float *w,
    int m, int k, int rows, float beta)
{
  const float one = 1.0f;
  report_blas (cublasSgemm (ex->blas, CUBLAS_OP_T, CUBLAS_OP_N, m, rows, k, &one, w, MAX (k, 1),
          src, MAX (ld_src, MAX (k, 1)), &beta, dst, MAX (ld_dst, MAX (m, 1))), "cublasSgemm");
  count (&ex->parent, STAT_BLAS, 1);
}

/* dst = beta dst + bf16(src) w^T on tensor cores: cuBLAS's BF16 GEMM with f32 accumulation and
 * an f32 result (C [n_out, rows] column-major, as sgemm_rows). */
static void
tensor_core_linear (CudaExec *ex, float *dst, int ld_dst, const float *src, int ld_src,
    const uint16_t *w, int n_out, int n_in, int rows, float beta)
{
  uint16_t *x = scratch (ex, SCRATCH_ACTIVATIONS, (gsize) rows * n_in * sizeof (uint16_t));
  if (x == NULL)
    return;
  KCALL (&ex->parent, moshi_k_f32_to_bf16_2d (ex->stream, x, n_in, src, ld_src, rows, n_in));
  const float one = 1.0f;
  report_blas (cublasGemmEx (ex->blas, CUBLAS_OP_T, CUBLAS_OP_N, n_out, rows, n_in, &one, w,
          CUDA_R_16BF, n_in, x, CUDA_R_16BF, n_in, &beta, dst, CUDA_R_32F, MAX (ld_dst, n_out),
          CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT), "cublasGemmEx");
  count (&ex->parent, STAT_BLAS, 1);
}

static void
cuda_linear (MoshiExec *parent, float *dst, int ld_dst, const float *src, int ld_src,
    const MoshiWeight *w, const MoshiWeight *bias, int rows, float beta)
{
  CudaExec *ex = CUDA_EX (parent);
  int n_out = (int) w->shape[0];
  int n_in = (int) w->shape[1];
  if (rows <= 0 || n_out <= 0)
    return;
  const float *b = wf32 (bias);
  /* the weight matrix (or the view of it) once, whichever path; the bias */
  count (parent, STAT_WEIGHT_BYTES, weight_bytes (w) + weight_bytes (bias));
  if (w->dtype == MOSHI_DTYPE_BF16) {
    const uint16_t *wb = w->data;
    if (parent->tensor_core_batches && rows >= MOSHI_TENSOR_CORE_MIN_ROWS) {
      tensor_core_linear (ex, dst, ld_dst, src, ld_src, wb, n_out, n_in, rows, beta);
      if (b != NULL)
        KCALL (parent, moshi_k_add_bias (ex->stream, dst, ld_dst, b, rows, n_out));
      return;
    }
    if (rows <= MOSHI_K_GEMV_MAX_ROWS) {
      /* the bias is added by the kernel */
      KCALL (parent, moshi_k_linear_bf16_gemv (ex->stream, dst, ld_dst, src, ld_src, wb, n_out, n_in, b,
              rows, beta));
      return;
    }
    int block_rows = (int) MIN ((gsize) n_out, MAX (BF16_BLOCK_FLOATS / MAX (n_in, 1), 1));
    float *block = scratch (ex, SCRATCH_LINEAR, (gsize) block_rows * n_in * sizeof (float));
    if (block == NULL)
      return;
    for (int o0 = 0; o0 < n_out; o0 += block_rows) {
      int len = MIN (block_rows, n_out - o0);
      KCALL (parent, moshi_k_bf16_to_f32 (ex->stream, block, wb + (gsize) o0 * n_in,
              (gsize) len * n_in));
      sgemm_rows (ex, dst + o0, ld_dst, src, ld_src, block, len, n_in, rows, beta);
    }
  } else if (w->dtype == MOSHI_DTYPE_I8) {
    /* weight-only int8: half of BF16's bytes; the tensor cores would need int8 activations */
    const int8_t *wq = w->data;
    if (rows <= MOSHI_K_GEMV_MAX_ROWS) {
      KCALL (parent, moshi_k_linear_i8_gemv (ex->stream, dst, ld_dst, src, ld_src, wq, w->scales,
              n_out, n_in, b, rows, beta));
      return;
    }
    int block_rows = (int) MIN ((gsize) n_out, MAX (BF16_BLOCK_FLOATS / MAX (n_in, 1), 1));
    float *block = scratch (ex, SCRATCH_LINEAR, (gsize) block_rows * n_in * sizeof (float));
    if (block == NULL)
      return;
    for (int o0 = 0; o0 < n_out; o0 += block_rows) {
      int len = MIN (block_rows, n_out - o0);
      KCALL (parent, moshi_k_i8_to_f32 (ex->stream, block, wq + (gsize) o0 * n_in,
              w->scales + o0, len, n_in));
      sgemm_rows (ex, dst + o0, ld_dst, src, ld_src, block, len, n_in, rows, beta);
    }
  } else {
    g_assert (w->dtype == MOSHI_DTYPE_F32);
    sgemm_rows (ex, dst, ld_dst, src, ld_src, w->data, n_out, n_in, rows, beta);
  }
  if (b != NULL)
    KCALL (parent, moshi_k_add_bias (ex->stream, dst, ld_dst, b, rows, n_out));
}

/* ---------------------------------------------------------------- convolutions */

static void
cuda_conv1d (MoshiExec *ex, float *dst, int ld_dst, const float *src, int ld_src,
    const MoshiWeight *w, const MoshiWeight *bias, int stride, int dilation, int groups,
    int t_out, float beta, int n, gsize src_step, gsize dst_step)
{
  int c_out = (int) w->shape[0];
  int c_in = (int) w->shape[1] * groups;
  int k = w->ndim > 2 ? (int) w->shape[2] : 1;
  KCALL (ex, moshi_k_conv1d (CUDA_EX (ex)->stream, dst, ld_dst, src, ld_src, wf32 (w), wf32 (bias),
          c_in, c_out, k, stride, dilation, groups, t_out, beta, n, src_step, dst_step));
  if (t_out > 0)
    count (ex, STAT_WEIGHT_BYTES, weight_bytes (w) + weight_bytes (bias));
}

static void
cuda_conv_transpose1d (MoshiExec *ex, float *dst, int ld_dst, const float *src, int ld_src,
    const MoshiWeight *w, const MoshiWeight *bias, float *carry, int stride, int groups, int t_in,
    int n, gsize src_step, gsize dst_step, gsize carry_step)
{
  int c_in = (int) w->shape[0];
  int c_out = (int) w->shape[1] * groups;
  int k = w->ndim > 2 ? (int) w->shape[2] : 1;
  float *tmp = NULL;
  if (k > stride) {
    tmp = scratch (CUDA_EX (ex), SCRATCH_CONV,
        (gsize) MAX (n, 1) * c_out * (k - stride) * sizeof (float));
    if (tmp == NULL)
      return;
  }
  KCALL (ex, moshi_k_conv_transpose1d (CUDA_EX (ex)->stream, dst, ld_dst, src, ld_src, wf32 (w),
          wf32 (bias), carry, tmp, c_in, c_out, k, stride, groups, t_in, n, src_step, dst_step,
          carry_step));
  if (t_in > 0) {
    count (ex, STAT_WEIGHT_BYTES, weight_bytes (w) + weight_bytes (bias));
    if (k > stride)         /* the kernel library's copy of the new overlap over the carry */
      count (ex, STAT_MEMORY, 1);
  }
}

/* ---------------------------------------------------------------- attention */

static void
cuda_kv_write (MoshiExec *ex, float *k_cache, float *v_cache, int capacity, const float *k,
    int ld_k, const float *v, int ld_v, int width, int pos0, int t)
{
  KCALL (ex, moshi_k_kv_write (CUDA_EX (ex)->stream, k_cache, v_cache, capacity, k, ld_k, v, ld_v,
          width, pos0, t));
}

static void
cuda_rope (MoshiExec *ex, float *x, int ld, int t, int n_heads, int head_dim, int pos0,
    float max_period)
{
  KCALL (ex, moshi_k_rope (CUDA_EX (ex)->stream, x, ld, t, n_heads, head_dim, pos0, max_period));
}

static void
cuda_attention (MoshiExec *ex, float *dst, int ld_dst, const float *q, int ld_q,
    const float *k_cache, const float *v_cache, int capacity, int n_heads, int head_dim,
    int pos0, int t, int context, float scale)
{
  size_t n = moshi_k_attention_scratch_floats (capacity, n_heads, head_dim, t);
  float *tmp = n > 0 ? scratch (CUDA_EX (ex), SCRATCH_ATTENTION, n * sizeof (float)) : NULL;
  KCALL (ex, moshi_k_attention (CUDA_EX (ex)->stream, dst, ld_dst, q, ld_q, k_cache, v_cache,
          capacity, n_heads, head_dim, pos0, t, context, scale, tmp, tmp ? n : 0));
}

/* ---------------------------------------------------------------- decode rows */

#define KROWS(rc) ((const MoshiKRowCache *) (rc))

static void
cuda_rope_rows (MoshiExec *ex, float *x, int ld, int rows, int n_heads, int head_dim,
    const MoshiRowCache *rc, float max_period)
{
  KCALL (ex, moshi_k_rope_rows (CUDA_EX (ex)->stream, x, ld, rows, n_heads, head_dim, KROWS (rc),
          max_period));
}

static void
cuda_add_sin_embedding_rows (MoshiExec *ex, float *x, int ld, int rows, int d,
    const MoshiRowCache *rc, float max_period, float scale)
{
  KCALL (ex, moshi_k_add_sin_embedding_rows (CUDA_EX (ex)->stream, x, ld, rows, d, KROWS (rc),
          max_period, scale));
}

static MoshiKCache
kernel_cache (MoshiDType dtype)
{
  return dtype == MOSHI_DTYPE_BF16 ? MOSHI_K_CACHE_BF16
      : dtype == MOSHI_DTYPE_F8_E4M3 ? MOSHI_K_CACHE_FP8 : MOSHI_K_CACHE_F32;
}

static void
cuda_kv_write_rows (MoshiExec *ex, const MoshiRowCache *rc, MoshiDType cache_dtype,
    gsize layer_offset, int capacity, const float *k, int ld_k, const float *v, int ld_v,
    int n_heads, int head_dim, int rows)
{
  KCALL (ex, moshi_k_kv_write_rows (CUDA_EX (ex)->stream, KROWS (rc), kernel_cache (cache_dtype),
          layer_offset, capacity, k, ld_k, v, ld_v, n_heads, head_dim, rows));
}

static void
cuda_attention_rows (MoshiExec *ex, float *dst, int ld_dst, const float *q, int ld_q,
    const MoshiRowCache *rc, MoshiDType cache_dtype, gsize layer_offset, int capacity,
    int n_heads, int head_dim, int rows, int context, float scale)
{
  size_t n = moshi_k_attention_scratch_floats (capacity, n_heads, head_dim, rows);
  float *tmp = n > 0 ? scratch (CUDA_EX (ex), SCRATCH_ATTENTION, n * sizeof (float)) : NULL;
  if (n > 0 && tmp == NULL)
    return;
  KCALL (ex, moshi_k_attention_rows (CUDA_EX (ex)->stream, dst, ld_dst, q, ld_q, KROWS (rc),
          kernel_cache (cache_dtype), layer_offset, capacity, n_heads, head_dim, rows, context,
          scale, tmp, n));
}

static void
cuda_sample (MoshiExec *ex, int32_t *tokens, int ld_tokens, int32_t *ids, float *logits,
    int ld_logits, int vocab, const MoshiSampler *sessions, int n, int stream)
{
  KCALL (ex, moshi_k_sample (CUDA_EX (ex)->stream, tokens, ld_tokens, ids, logits, ld_logits,
          vocab, (const MoshiKSampler *) sessions, n, stream));
}

/* ---------------------------------------------------------------- RVQ */

static void
cuda_rvq_encode (MoshiExec *ex, int32_t *codes, int ld_codes, float *residual, int ld,
    const MoshiWeight *codebooks, const MoshiWeight *sq_norms, int n_levels, int t)
{
  KCALL (ex, moshi_k_rvq_encode (CUDA_EX (ex)->stream, codes, ld_codes, residual, ld,
          wf32 (codebooks), wf32 (sq_norms), n_levels, (int) codebooks->shape[1],
          (int) codebooks->shape[2], t));
  /* every codeword of the levels used, and their norms */
  if (t > 0)
    count (ex, STAT_WEIGHT_BYTES, (guint64) n_levels * codebooks->shape[1]
        * (codebooks->shape[2] + 1) * sizeof (float));
}

static void
cuda_rvq_decode (MoshiExec *ex, float *dst, int ld, const int32_t *codes, int ld_codes,
    const MoshiWeight *codebooks, int n_levels, int t)
{
  KCALL (ex, moshi_k_rvq_decode (CUDA_EX (ex)->stream, dst, ld, codes, ld_codes, wf32 (codebooks),
          n_levels, (int) codebooks->shape[1], (int) codebooks->shape[2], t));
  /* one codeword per level and row */
  count (ex, STAT_WEIGHT_BYTES, (guint64) MAX (t, 0) * MAX (n_levels, 0) * codebooks->shape[2]
      * sizeof (float));
}

/* ---------------------------------------------------------------- accounting */

static void
cuda_get_stats (MoshiBackend *be, MoshiExec *ex, MoshiExecStats *out)
{
  if (ex != NULL) {
    *out = CUDA_EX (ex)->stats;
    return;
  }
  guint64 *dst = stat_array (out);
  for (int i = 0; i < N_STATS; i++)
    dst[i] = __atomic_load_n (&CUDA_BE (be)->total[i], __ATOMIC_RELAXED);
}

static void
cuda_reset_stats (MoshiBackend *be, MoshiExec *ex)
{
  if (ex != NULL) {
    memset (&CUDA_EX (ex)->stats, 0, sizeof (MoshiExecStats));
    return;
  }
  for (int i = 0; i < N_STATS; i++)
    __atomic_store_n (&CUDA_BE (be)->total[i], 0, __ATOMIC_RELAXED);
}

static const MoshiBackendOps cuda_ops = {
  .destroy = cuda_destroy,
  .exec_new = cuda_exec_new,
  .exec_free = cuda_exec_free,
  .alloc = cuda_alloc,
  .free = cuda_free,
  .upload = cuda_upload,
  .download = cuda_download,
  .zero = cuda_zero,
  .synchronize = cuda_synchronize,
  .host_alloc = cuda_host_alloc,
  .host_free = cuda_host_free,
  .memory_info = cuda_memory_info,
  .download_async = cuda_download_async,
  .capture_begin = cuda_capture_begin,
  .capture_end = cuda_capture_end,
  .graph_launch = cuda_graph_launch,
  .graph_free = cuda_graph_free,
  .weight_from_host = cuda_weight_from_host,
  .weight_from_f32 = cuda_weight_from_f32,
  .weight_from_int8 = cuda_weight_from_int8,
  .weight_release = cuda_weight_release,
  .copy_2d = cuda_copy_2d,
  .transpose = cuda_transpose,
  .elu_2d = cuda_elu_2d,
  .gelu = cuda_gelu,
  .add_scaled = cuda_add_scaled,
  .layer_norm = cuda_layer_norm,
  .rms_norm = cuda_rms_norm,
  .gated_act = cuda_gated_act,
  .embedding = cuda_embedding,
  .add_sin_embedding = cuda_add_sin_embedding,
  .linear = cuda_linear,
  .conv1d = cuda_conv1d,
  .conv_transpose1d = cuda_conv_transpose1d,
  .kv_write = cuda_kv_write,
  .rope = cuda_rope,
  .attention = cuda_attention,
  .rope_rows = cuda_rope_rows,
  .add_sin_embedding_rows = cuda_add_sin_embedding_rows,
  .kv_write_rows = cuda_kv_write_rows,
  .attention_rows = cuda_attention_rows,
  .sample = cuda_sample,
  .rvq_encode = cuda_rvq_encode,
  .rvq_decode = cuda_rvq_decode,
  .get_stats = cuda_get_stats,
  .reset_stats = cuda_reset_stats,
};

/* ---------------------------------------------------------------- entry point */

static gboolean
no_device (GError **error, const char *reason)
{
  g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_DEVICE, "no usable CUDA device: %s", reason);
  return FALSE;
}

/* One tiny kernel: catches a GPU the module has no code for (cudaErrorNoKernelImageForDevice)
 * and a broken driver before any model is loaded. */
static gboolean
probe_kernels (cudaStream_t stream, GError **error)
{
  float *d = NULL;
  cudaError_t err = cudaMalloc ((void **) &d, sizeof (float));
  if (err == cudaSuccess)
    err = cudaMemsetAsync (d, 0, sizeof (float), stream);
  if (err == cudaSuccess)
    err = moshi_k_gelu (stream, d, 1);
  if (err == cudaSuccess)
    err = cudaStreamSynchronize (stream);
  if (d != NULL)
    cudaFree (d);
  if (err != cudaSuccess)
    return no_device (error, cudaGetErrorString (err));
  return TRUE;
}

MoshiBackend *
moshi_cuda_backend_new (guint abi, gsize ops_size, GError **error)
{
  if (abi != MOSHI_CUDA_MODULE_ABI || ops_size != sizeof (MoshiBackendOps)) {
    g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_UNSUPPORTED,
        "the CUDA module was built for another version of libmoshi (ABI %u, ops %" G_GSIZE_FORMAT
        " bytes; libmoshi has ABI %u, %" G_GSIZE_FORMAT " bytes)", MOSHI_CUDA_MODULE_ABI,
        sizeof (MoshiBackendOps), abi, ops_size);
    return NULL;
  }
  int n = 0;
  cudaError_t err = cudaGetDeviceCount (&n);
  if (err != cudaSuccess) {
    no_device (error, cudaGetErrorString (err));
    return NULL;
  }
  if (n == 0) {
    no_device (error, "the driver reports no device");
    return NULL;
  }
  struct cudaDeviceProp prop;
  err = cudaSetDevice (0);
  if (err == cudaSuccess)
    err = cudaGetDeviceProperties (&prop, 0);
  if (err != cudaSuccess) {
    no_device (error, cudaGetErrorString (err));
    return NULL;
  }
  cudaStream_t load_stream;
  err = cudaStreamCreateWithFlags (&load_stream, cudaStreamNonBlocking);
  if (err != cudaSuccess) {
    no_device (error, cudaGetErrorString (err));
    return NULL;
  }
  if (!probe_kernels (load_stream, error)) {
    cudaStreamDestroy (load_stream);
    return NULL;
  }

  CudaBackend *be = g_new0 (CudaBackend, 1);
  be->parent.ops = &cuda_ops;
  be->parent.device = MOSHI_DEVICE_CUDA;
  be->parent.name = "cuda";
  be->parent.description = g_strdup_printf ("cuda (%s, sm_%d%d, %.1f GiB)", prop.name,
      prop.major, prop.minor, prop.totalGlobalMem / (1024.0 * 1024.0 * 1024.0));
  be->parent.ref_count = 1;
  be->device = 0;
  be->label = g_strdup_printf ("CUDA device %d (%s)", be->device, prop.name);
  be->load_stream = load_stream;
  g_mutex_init (&be->load_lock);
  return &be->parent;
}
