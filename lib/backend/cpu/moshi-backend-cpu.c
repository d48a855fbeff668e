/* gst-moshi CPU backend: host memory, OpenBLAS for the large products, our own vector kernels
 * and thread pool for the rest. */
#include "cpu-internal.h"

#include "moshi-error.h"

#include <string.h>

/* OpenBLAS runs single-threaded inside our pool: the pool splits products itself, so the
 * thread count is per session rather than process-wide. */
extern void openblas_set_num_threads (int num_threads);
extern char *openblas_get_corename (void);

typedef struct {
  MoshiBackend parent;
} CpuBackend;

static void
cpu_destroy (MoshiBackend *be)
{
  g_free (be->description);
  g_free (be);
}

static MoshiExec *
cpu_exec_new (MoshiBackend *be, int n_threads, GError **error)
{
  if (n_threads == 0)
    n_threads = MIN ((int) g_get_num_processors (), 8);
  CpuExec *ex = g_new0 (CpuExec, 1);
  ex->parent.backend = moshi_backend_ref (be);
  ex->pool = moshi_thread_pool_new (n_threads);
  return &ex->parent;
}

static void
cpu_exec_free (MoshiExec *parent)
{
  CpuExec *ex = (CpuExec *) parent;
  moshi_thread_pool_free (ex->pool);
  for (int i = 0; i < CPU_SCRATCH_SLOTS; i++)
    g_free (ex->scratch[i]);
  moshi_backend_unref (parent->backend);
  g_free (ex);
}

float *
cpu_scratch (CpuExec *ex, int slot, gsize n)
{
  g_assert (slot >= 0 && slot < CPU_SCRATCH_SLOTS);
  if (ex->scratch_len[slot] < n) {
    g_free (ex->scratch[slot]);
    gsize len = MAX (n, ex->scratch_len[slot] * 3 / 2);
    ex->scratch[slot] = g_aligned_alloc (len, sizeof (float), 64);
    ex->scratch_len[slot] = len;
  }
  return ex->scratch[slot];
}

void
cpu_parallel (CpuExec *ex, int n_tasks, MoshiParallelFunc func, void *ctx)
{
  moshi_thread_pool_run (ex->pool, n_tasks, func, ctx);
}

int
cpu_n_threads (CpuExec *ex)
{
  return moshi_thread_pool_n_threads (ex->pool);
}

static void *
cpu_alloc (MoshiBackend *be, gsize bytes, GError **error)
{
  void *p = g_aligned_alloc0 (MAX (bytes, 1), 1, 64);
  return p;
}

static void
cpu_free (MoshiBackend *be, void *ptr)
{
  g_aligned_free (ptr);
}

static void
cpu_upload (MoshiExec *ex, void *dst, const void *src, gsize bytes)
{
  memcpy (dst, src, bytes);
}

static gboolean
cpu_download (MoshiExec *ex, void *dst, const void *src, gsize bytes, GError **error)
{
  memcpy (dst, src, bytes);
  return TRUE;
}

static void
cpu_zero (MoshiExec *ex, void *dst, gsize bytes)
{
  memset (dst, 0, bytes);
}

static gboolean
cpu_synchronize (MoshiExec *ex, GError **error)
{
  return TRUE;
}

static void *
cpu_host_alloc (MoshiBackend *be, gsize bytes, GError **error)
{
  return g_malloc0 (MAX (bytes, 1));
}

static void
cpu_host_free (MoshiBackend *be, void *ptr)
{
  g_free (ptr);
}

static gboolean
cpu_weight_from_f32 (MoshiBackend *be, MoshiWeight *w, const float *host, int ndim,
    const int64_t *shape, GError **error)
{
  int64_t numel = moshi_shape_numel (shape, ndim);
  memset (w, 0, sizeof (*w));
  w->dtype = MOSHI_DTYPE_F32;
  w->ndim = ndim;
  memcpy (w->shape, shape, ndim * sizeof (int64_t));
  w->owned = g_aligned_alloc (MAX (numel, 1), sizeof (float), 64);
  memcpy (w->owned, host, numel * sizeof (float));
  w->data = w->owned;
  return TRUE;
}

static gboolean
cpu_weight_from_host (MoshiBackend *be, MoshiWeight *w, const MoshiTensorEntry *host,
    MoshiSafetensors *keep_alive, GError **error)
{
  MoshiDType dtype = moshi_weight_device_dtype (host, error);
  if (dtype == MOSHI_DTYPE_COUNT)
    return FALSE;
  if (dtype == host->dtype && (uintptr_t) host->data % moshi_dtype_size (dtype) == 0) {
    /* Zero copy: the mapping stays alive as long as the model holds keep_alive. */
    memset (w, 0, sizeof (*w));
    w->dtype = dtype;
    w->ndim = host->ndim;
    memcpy (w->shape, host->shape, host->ndim * sizeof (int64_t));
    w->data = host->data;
    return TRUE;
  }
  /* converted, or misaligned in the file: an aligned F32 copy */
  g_autofree float *f32 = moshi_weight_to_f32 (host, error);
  return f32 != NULL && cpu_weight_from_f32 (be, w, f32, host->ndim, host->shape, error);
}

static gboolean
cpu_weight_from_int8 (MoshiBackend *be, MoshiWeight *w, const void *packed, int64_t n_out,
    int64_t n_in, GError **error)
{
  gsize off = moshi_int8_scales_offset (n_out, n_in);
  gsize bytes = off + (gsize) n_out * sizeof (float);
  memset (w, 0, sizeof (*w));
  w->dtype = MOSHI_DTYPE_I8;
  w->ndim = 2;
  w->shape[0] = n_out;
  w->shape[1] = n_in;
  w->owned = g_aligned_alloc (bytes, 1, 64);
  memcpy (w->owned, packed, bytes);
  w->data = w->owned;
  w->scales = (const float *) ((const guint8 *) w->owned + off);
  return TRUE;
}

static void
cpu_weight_release (MoshiBackend *be, MoshiWeight *w)
{
  g_aligned_free (w->owned);
  memset (w, 0, sizeof (*w));
}

static const MoshiBackendOps cpu_ops = {
  .destroy = cpu_destroy,
  .exec_new = cpu_exec_new,
  .exec_free = cpu_exec_free,
  .alloc = cpu_alloc,
  .free = cpu_free,
  .upload = cpu_upload,
  .download = cpu_download,
  .zero = cpu_zero,
  .synchronize = cpu_synchronize,
  .host_alloc = cpu_host_alloc,
  .host_free = cpu_host_free,
  .download_async = cpu_upload,
  .weight_from_host = cpu_weight_from_host,
  .weight_from_f32 = cpu_weight_from_f32,
  .weight_from_int8 = cpu_weight_from_int8,
  .weight_release = cpu_weight_release,
  .copy_2d = cpu_op_copy_2d,
  .transpose = cpu_op_transpose,
  .elu_2d = cpu_op_elu_2d,
  .gelu = cpu_op_gelu,
  .add_scaled = cpu_op_add_scaled,
  .layer_norm = cpu_op_layer_norm,
  .rms_norm = cpu_op_rms_norm,
  .gated_act = cpu_op_gated_act,
  .embedding = cpu_op_embedding,
  .add_sin_embedding = cpu_op_add_sin_embedding,
  .linear = cpu_op_linear,
  .conv1d = cpu_op_conv1d,
  .conv_transpose1d = cpu_op_conv_transpose1d,
  .kv_write = cpu_op_kv_write,
  .rope = cpu_op_rope,
  .attention = cpu_op_attention,
  .rope_rows = cpu_op_rope_rows,
  .add_sin_embedding_rows = cpu_op_add_sin_embedding_rows,
  .kv_write_rows = cpu_op_kv_write_rows,
  .attention_rows = cpu_op_attention_rows,
  .sample = cpu_op_sample,
  .rvq_encode = cpu_op_rvq_encode,
  .rvq_decode = cpu_op_rvq_decode,
};

MoshiBackend *
moshi_backend_cpu_new (void)
{
  openblas_set_num_threads (1);
  CpuBackend *be = g_new0 (CpuBackend, 1);
  be->parent.ops = &cpu_ops;
  be->parent.device = MOSHI_DEVICE_CPU;
  be->parent.name = "cpu";
  be->parent.description = g_strdup_printf ("cpu (%s kernels, OpenBLAS %s)",
      cpu_kernels ()->name, openblas_get_corename ());
  be->parent.ref_count = 1;
  return &be->parent;
}
