/* gst-moshi: opening the CUDA backend (lib/backend/moshi-backend.c + lib/backend/cuda) and the
 * ops the model suites exercise least, on the emulated backend against the CPU backend.
 *
 * Each test runs in its own process (Check forks), so the backend open starts afresh: the
 * decision whether CUDA is usable is cached per process. The meson test passes the paths of the
 * real module (MOSHI_TEST_CUDA_MODULE) and of the emulated one (MOSHI_TEST_CUDA_EMU_MODULE). */
#include "test-support.h"

#include "moshi-backend.h"
#include "moshi-dtype.h"
#include "moshi-error.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define F32_TOL 1e-5

static void
use_module (const char *env, gboolean emulate)
{
  const char *path = g_getenv (env);
  if (path == NULL)
    ck_abort_msg ("%s is not set", env);
  g_setenv ("MOSHI_CUDA_MODULE", path, TRUE);
  if (emulate)
    g_setenv ("MOSHI_CUDA_EMULATE", "1", TRUE);
  else
    g_unsetenv ("MOSHI_CUDA_EMULATE");
}

/* device=cuda with the real module on a machine without a GPU or driver: a clear error, the
 * same on the second try (cached), and device=auto falls back to the CPU. */
START_TEST (test_real_module_without_gpu)
{
  if (g_getenv ("MOSHI_TEST_CUDA_MODULE") == NULL) {
    printf ("no nvcc-built module in this build: the no-GPU error is not checked\n");
    return;
  }
  use_module ("MOSHI_TEST_CUDA_MODULE", FALSE);
  GError *error = NULL;
  MoshiBackend *be = moshi_backend_open (MOSHI_DEVICE_CUDA, &error);
  if (be != NULL) {
    printf ("a usable GPU is present (%s): the no-GPU error cannot be checked here\n",
        be->description);
    moshi_backend_unref (be);
    return;
  }
  ck_assert (g_error_matches (error, MOSHI_ERROR, MOSHI_ERROR_DEVICE));
  moshi_assert_error_contains (error, "device=cuda: no usable CUDA device: ");
  printf ("device=cuda without a GPU: %s\n", error->message);
  g_autofree char *first = g_strdup (error->message);
  g_clear_error (&error);

  ck_assert_ptr_null (moshi_backend_open (MOSHI_DEVICE_CUDA, &error));
  ck_assert_str_eq (error->message, first);
  g_clear_error (&error);

  be = moshi_backend_open (MOSHI_DEVICE_AUTO, &error);
  ck_assert_ptr_nonnull (be);
  ck_assert_str_eq (be->name, "cpu");
  moshi_backend_unref (be);
}
END_TEST

START_TEST (test_missing_module)
{
  g_setenv ("MOSHI_CUDA_MODULE", "/nonexistent/libmoshi-cuda.so", TRUE);
  GError *error = NULL;
  ck_assert_ptr_null (moshi_backend_open (MOSHI_DEVICE_CUDA, &error));
  ck_assert (g_error_matches (error, MOSHI_ERROR, MOSHI_ERROR_DEVICE));
  moshi_assert_error_contains (error, "cannot load the CUDA module /nonexistent/libmoshi-cuda.so");
  g_clear_error (&error);
  MoshiBackend *be = moshi_backend_open (MOSHI_DEVICE_AUTO, &error);
  ck_assert_ptr_nonnull (be);
  ck_assert_str_eq (be->name, "cpu");
  moshi_backend_unref (be);
}
END_TEST

/* ------------------------------------------------------------------ emulated backend vs CPU */

static MoshiBackend *cpu, *gpu;
static MoshiExec *cpu_ex, *gpu_ex;

static void
open_both (void)
{
  use_module ("MOSHI_TEST_CUDA_EMU_MODULE", TRUE);
  GError *error = NULL;
  gpu = moshi_backend_open (MOSHI_DEVICE_CUDA, &error);
  ck_assert_msg (gpu != NULL, "%s", error ? error->message : "");
  ck_assert_str_eq (gpu->name, "cuda");
  cpu = moshi_backend_open (MOSHI_DEVICE_CPU, &error);
  gpu_ex = moshi_exec_new (gpu, 0, &error);
  ck_assert_ptr_nonnull (gpu_ex);
  cpu_ex = moshi_exec_new (cpu, 1, &error);
}

static void
close_both (void)
{
  moshi_exec_free (gpu_ex);
  moshi_exec_free (cpu_ex);
  moshi_backend_unref (gpu);
  moshi_backend_unref (cpu);
}

static float *
rand_vec (MoshiTestRng *rng, size_t n, float scale)
{
  float *x = g_new (float, MAX (n, 1));
  moshi_test_fill_uniform (rng, x, n, scale);
  return x;
}

static float *
to_gpu (const float *h, size_t n)
{
  GError *error = NULL;
  float *d = gpu->ops->alloc (gpu, n * sizeof (float), &error);
  ck_assert_ptr_nonnull (d);
  gpu->ops->upload (gpu_ex, d, h, n * sizeof (float));
  return d;
}

static float *
from_gpu (const float *d, size_t n)
{
  float *h = g_new (float, MAX (n, 1));
  GError *error = NULL;
  ck_assert_msg (gpu->ops->download (gpu_ex, h, d, n * sizeof (float), &error), "%s",
      error ? error->message : "");
  return h;
}

static void
assert_close (const float *got, const float *want, size_t n, const char *what)
{
  double ss = 0;
  for (size_t i = 0; i < n; i++)
    ss += (double) want[i] * want[i];
  double rms = n > 0 ? sqrt (ss / n) : 0;
  for (size_t i = 0; i < n; i++) {
    double err = fabs ((double) got[i] - want[i]);
    double ref = MAX (fabs (want[i]), rms);
    ck_assert_msg (err <= F32_TOL * ref, "%s: element %zu is %.9g, want %.9g (error %.3g)", what,
        i, got[i], want[i], err);
  }
}

START_TEST (test_emulated_memory)
{
  open_both ();
  GError *error = NULL;
  ck_assert_ptr_nonnull (strstr (gpu->description, "cuda"));
  /* alloc is zero-filled; upload, zero and download round-trip */
  float *d = gpu->ops->alloc (gpu, 1000 * sizeof (float), &error);
  g_autofree float *z = from_gpu (d, 1000);
  for (int i = 0; i < 1000; i++)
    ck_assert_float_eq (z[i], 0.0f);
  MoshiTestRng rng;
  moshi_test_rng_init (&rng, 1);
  g_autofree float *x = rand_vec (&rng, 1000, 1);
  gpu->ops->upload (gpu_ex, d, x, 1000 * sizeof (float));
  gpu->ops->zero (gpu_ex, d + 10, 5 * sizeof (float));
  g_autofree float *y = from_gpu (d, 1000);
  memset (x + 10, 0, 5 * sizeof (float));
  ck_assert_int_eq (memcmp (x, y, sizeof (float) * 1000), 0);
  gpu->ops->free (gpu, d);

  /* device=auto now finds the (emulated) GPU */
  MoshiBackend *any = moshi_backend_open (MOSHI_DEVICE_AUTO, &error);
  ck_assert_ptr_eq (any, gpu);
  moshi_backend_unref (any);

  /* weights: BF16 matrices stay BF16, other BF16/F16 tensors become F32 */
  uint16_t bf[6] = { 0x3f80, 0x4000, 0xbf80, 0x3f00, 0x0000, 0x4040 };
  MoshiTensorEntry e = { .name = "w", .dtype = MOSHI_DTYPE_BF16, .ndim = 2,
    .shape = { 2, 3 }, .data = bf };
  MoshiWeight w;
  ck_assert (gpu->ops->weight_from_host (gpu, &w, &e, NULL, &error));
  ck_assert_int_eq (w.dtype, MOSHI_DTYPE_BF16);
  uint16_t back[6];
  ck_assert (gpu->ops->download (gpu_ex, back, w.data, sizeof back, NULL));
  ck_assert_int_eq (memcmp (back, bf, sizeof bf), 0);
  gpu->ops->weight_release (gpu, &w);
  e.ndim = 1;
  e.shape[0] = 6;
  ck_assert (gpu->ops->weight_from_host (gpu, &w, &e, NULL, &error));
  ck_assert_int_eq (w.dtype, MOSHI_DTYPE_F32);
  g_autofree float *f = from_gpu (w.data, 6);
  const float want[6] = { 1, 2, -1, 0.5f, 0, 3 };
  ck_assert_int_eq (memcmp (f, want, sizeof want), 0);
  gpu->ops->weight_release (gpu, &w);
  close_both ();
}
END_TEST

/* A copy the device refuses (here a host pointer given as the device side) is an error of the
 * next wait, naming the failed call; the exec then works on. */
START_TEST (test_emulated_device_errors)
{
  open_both ();
  GError *error = NULL;
  float host[4] = { 1, 2, 3, 4 }, back[4];
  float *d = gpu->ops->alloc (gpu, sizeof host, &error);
  ck_assert_ptr_nonnull (d);

  ck_assert (!gpu->ops->download (gpu_ex, back, host, sizeof back, &error));
  ck_assert (g_error_matches (error, MOSHI_ERROR, MOSHI_ERROR_DEVICE));
  ck_assert_msg (strstr (error->message, "cudaErrorInvalidValue") != NULL, "%s", error->message);
  g_clear_error (&error);

  gpu->ops->upload (gpu_ex, back, host, sizeof host);
  ck_assert (!gpu->ops->synchronize (gpu_ex, &error));
  ck_assert (g_error_matches (error, MOSHI_ERROR, MOSHI_ERROR_DEVICE));
  g_clear_error (&error);

  /* reported once: the next wait and copy succeed */
  ck_assert (gpu->ops->synchronize (gpu_ex, &error));
  gpu->ops->upload (gpu_ex, d, host, sizeof host);
  ck_assert (gpu->ops->download (gpu_ex, back, d, sizeof back, &error));
  ck_assert_int_eq (memcmp (back, host, sizeof host), 0);
  gpu->ops->free (gpu, d);
  close_both ();
}
END_TEST

/* linear with F32 and BF16 weights: the GEMV rows (1..64), the converted-block path with more
 * than one block of weight rows, bias, beta 0 and 1, padded leading dimensions. */
START_TEST (test_emulated_linear)
{
  open_both ();
  static const int cases[][5] = {
    /* rows, n_out, n_in, bf16, beta */
    { 1, 70, 33, 0, 0 }, { 5, 64, 128, 0, 1 }, { 20, 48, 40, 0, 0 },
    { 1, 70, 64, 1, 1 }, { 8, 33, 72, 1, 0 }, { 9, 40, 100, 1, 1 }, { 12, 4100, 1024, 1, 0 },
    { 64, 50, 72, 1, 1 }, { 65, 4100, 1024, 1, 0 },  /* the last GEMV size; converted blocks */
  };
  MoshiTestRng rng;
  moshi_test_rng_init (&rng, 2);
  GError *error = NULL;
  for (guint c = 0; c < G_N_ELEMENTS (cases); c++) {
    int rows = cases[c][0], n_out = cases[c][1], n_in = cases[c][2];
    gboolean bf16 = cases[c][3];
    float beta = (float) cases[c][4];
    int ld_src = n_in + 3, ld_dst = n_out + 1;
    size_t nw = (size_t) n_out * n_in;
    g_autofree float *wf = rand_vec (&rng, nw, 1);
    g_autofree uint16_t *wb = g_new (uint16_t, nw);
    for (size_t i = 0; i < nw; i++) {
      uint32_t u;
      memcpy (&u, &wf[i], 4);
      wb[i] = (uint16_t) (u >> 16);
    }
    MoshiTensorEntry e = { .name = "w", .dtype = bf16 ? MOSHI_DTYPE_BF16 : MOSHI_DTYPE_F32,
      .ndim = 2, .shape = { n_out, n_in }, .data = bf16 ? (void *) wb : (void *) wf };
    g_autofree float *bias = rand_vec (&rng, n_out, 1);
    MoshiWeight cw, gw, cb, gb;
    ck_assert (cpu->ops->weight_from_host (cpu, &cw, &e, NULL, &error));
    ck_assert (gpu->ops->weight_from_host (gpu, &gw, &e, NULL, &error));
    ck_assert_int_eq (gw.dtype, e.dtype);
    int64_t bshape[1] = { n_out };
    ck_assert (cpu->ops->weight_from_f32 (cpu, &cb, bias, 1, bshape, &error));
    ck_assert (gpu->ops->weight_from_f32 (gpu, &gb, bias, 1, bshape, &error));
    size_t ns = (size_t) rows * ld_src, nd = (size_t) rows * ld_dst;
    g_autofree float *src = rand_vec (&rng, ns, 1);
    g_autofree float *want = rand_vec (&rng, nd, 1);
    float *d_src = to_gpu (src, ns), *d_dst = to_gpu (want, nd);
    cpu->ops->linear (cpu_ex, want, ld_dst, src, ld_src, &cw, &cb, rows, beta);
    gpu->ops->linear (gpu_ex, d_dst, ld_dst, d_src, ld_src, &gw, &gb, rows, beta);
    g_autofree float *got = from_gpu (d_dst, nd);
    char what[80];
    g_snprintf (what, sizeof what, "linear case %u (%s)", c, bf16 ? "bf16" : "f32");
    assert_close (got, want, nd, what);
    gpu->ops->free (gpu, d_src);
    gpu->ops->free (gpu, d_dst);
    cpu->ops->weight_release (cpu, &cw);
    cpu->ops->weight_release (cpu, &cb);
    gpu->ops->weight_release (gpu, &gw);
    gpu->ops->weight_release (gpu, &gb);
  }
  close_both ();
}
END_TEST

/* linear with int8 weights quantized at load on both backends: the GEMV (1..64 rows, 16 codes a
 * load when aligned, a tail otherwise) and the dequantized blocks with more rows. */
START_TEST (test_emulated_linear_int8)
{
  open_both ();
  static const int cases[][4] = {
    /* rows, n_out, n_in, beta */
    { 1, 70, 63, 0 }, { 1, 70, 64, 0 }, { 3, 33, 72, 1 }, { 9, 40, 100, 0 }, { 64, 50, 128, 1 },
    { 65, 300, 96, 0 }, { 130, 4100, 64, 1 },
  };
  MoshiTestRng rng;
  moshi_test_rng_init (&rng, 9);
  GError *error = NULL;
  for (guint c = 0; c < G_N_ELEMENTS (cases); c++) {
    int rows = cases[c][0], n_out = cases[c][1], n_in = cases[c][2];
    float beta = (float) cases[c][3];
    int ld_src = n_in + 3, ld_dst = n_out + 1;
    size_t nw = (size_t) n_out * n_in;
    g_autofree uint16_t *wb = g_new (uint16_t, nw);
    for (size_t i = 0; i < nw; i++)
      wb[i] = moshi_f32_to_bf16 (moshi_test_rng_uniform (&rng));
    MoshiTensorEntry e = { .name = "w", .dtype = MOSHI_DTYPE_BF16, .ndim = 2,
      .shape = { n_out, n_in }, .data = wb };
    MoshiWeight cw, gw;
    ck_assert (moshi_weight_int8_from_host (cpu, &cw, &e, &error));
    ck_assert (moshi_weight_int8_from_host (gpu, &gw, &e, &error));
    ck_assert_int_eq (gw.dtype, MOSHI_DTYPE_I8);
    /* the quantization rule: codes in [-127, 127], the row's largest one at +-127 */
    const int8_t *q = cw.data;
    for (int o = 0; o < n_out; o++) {
      int top = 0;
      for (int i = 0; i < n_in; i++)
        top = MAX (top, abs (q[(gsize) o * n_in + i]));
      ck_assert_int_eq (top, 127);
    }
    size_t ns = (size_t) rows * ld_src, nd = (size_t) rows * ld_dst;
    g_autofree float *src = rand_vec (&rng, ns, 1);
    g_autofree float *want = rand_vec (&rng, nd, 1);
    float *d_src = to_gpu (src, ns), *d_dst = to_gpu (want, nd);
    cpu->ops->linear (cpu_ex, want, ld_dst, src, ld_src, &cw, NULL, rows, beta);
    gpu->ops->linear (gpu_ex, d_dst, ld_dst, d_src, ld_src, &gw, NULL, rows, beta);
    g_autofree float *got = from_gpu (d_dst, nd);
    char what[80];
    g_snprintf (what, sizeof what, "int8 linear case %u", c);
    assert_close (got, want, nd, what);
    gpu->ops->free (gpu, d_src);
    gpu->ops->free (gpu, d_dst);
    cpu->ops->weight_release (cpu, &cw);
    gpu->ops->weight_release (gpu, &gw);
  }
  close_both ();
}
END_TEST

/* The tensor-core path of linear (an exec with tensor_core_batches, BF16 weights, 16 rows or
 * more): exactly the f32 product of the activations rounded to BF16 (up to the order of the
 * f32 sums), and within the stated tolerance of the f32 product of the activations as they are.
 * Fewer rows, or the flag off, keep the f32 result. */
#define TENSOR_CORE_REL_L2 4e-3

START_TEST (test_emulated_tensor_core_linear)
{
  open_both ();
  static const int cases[][4] = {
    /* rows, n_out, n_in, beta */
    { 16, 48, 40, 0 }, { 33, 70, 64, 1 }, { 64, 4100, 256, 0 }, { 128, 96, 1024, 1 },
    { 15, 48, 40, 0 },          /* one row short: the f32 GEMV */
  };
  MoshiTestRng rng;
  moshi_test_rng_init (&rng, 6);
  GError *error = NULL;
  gpu_ex->tensor_core_batches = TRUE;
  for (guint c = 0; c < G_N_ELEMENTS (cases); c++) {
    int rows = cases[c][0], n_out = cases[c][1], n_in = cases[c][2];
    float beta = (float) cases[c][3];
    gboolean tensor_cores = rows >= MOSHI_TENSOR_CORE_MIN_ROWS;
    int ld_src = n_in + 3, ld_dst = n_out + 1;
    size_t nw = (size_t) n_out * n_in;
    g_autofree float *wf = rand_vec (&rng, nw, 1);
    g_autofree uint16_t *wb = g_new (uint16_t, nw);
    for (size_t i = 0; i < nw; i++)
      wb[i] = moshi_f32_to_bf16 (wf[i]);
    MoshiTensorEntry e = { .name = "w", .dtype = MOSHI_DTYPE_BF16, .ndim = 2,
      .shape = { n_out, n_in }, .data = wb };
    MoshiWeight cw, gw;
    ck_assert (cpu->ops->weight_from_host (cpu, &cw, &e, NULL, &error));
    ck_assert (gpu->ops->weight_from_host (gpu, &gw, &e, NULL, &error));
    size_t ns = (size_t) rows * ld_src, nd = (size_t) rows * ld_dst;
    g_autofree float *src = rand_vec (&rng, ns, 1);
    g_autofree float *rounded = g_new (float, ns);
    for (size_t i = 0; i < ns; i++)
      rounded[i] = moshi_bf16_to_f32 (moshi_f32_to_bf16 (src[i]));
    g_autofree float *init = rand_vec (&rng, nd, 1);
    g_autofree float *exact = g_memdup2 (init, nd * sizeof (float));
    g_autofree float *of_rounded = g_memdup2 (init, nd * sizeof (float));
    float *d_src = to_gpu (src, ns), *d_dst = to_gpu (init, nd);
    cpu->ops->linear (cpu_ex, exact, ld_dst, src, ld_src, &cw, NULL, rows, beta);
    cpu->ops->linear (cpu_ex, of_rounded, ld_dst, rounded, ld_src, &cw, NULL, rows, beta);
    MoshiExecStats before, after;
    gpu->ops->get_stats (gpu, gpu_ex, &before);
    gpu->ops->linear (gpu_ex, d_dst, ld_dst, d_src, ld_src, &gw, NULL, rows, beta);
    gpu->ops->get_stats (gpu, gpu_ex, &after);
    g_autofree float *got = from_gpu (d_dst, nd);
    char what[96];
    g_snprintf (what, sizeof what, "tensor-core linear case %u", c);
    assert_close (got, tensor_cores ? of_rounded : exact, nd, what);
    double rel = moshi_test_rel_l2 (got, exact, nd);
    printf ("%s: %d rows, relative L2 against f32 activations %.3g\n", what, rows, rel);
    ck_assert_msg (rel <= TENSOR_CORE_REL_L2, "%s: relative L2 %g", what, rel);
    ck_assert_int_eq (after.blas_calls - before.blas_calls, tensor_cores ? 1 : 0);
    gpu->ops->free (gpu, d_src);
    gpu->ops->free (gpu, d_dst);
    cpu->ops->weight_release (cpu, &cw);
    gpu->ops->weight_release (gpu, &gw);
  }
  gpu_ex->tensor_core_batches = FALSE;
  close_both ();
}
END_TEST

/* Recorded steps: ops between capture_begin and capture_end run at each graph_launch, reading
 * the pinned input as it is then; a wait for the device while recording makes capture_end fail
 * with a message, and the exec runs ops eagerly afterwards. */
START_TEST (test_emulated_capture)
{
  open_both ();
  GError *error = NULL;
  ck_assert_ptr_nonnull (gpu->ops->capture_begin);
  ck_assert_ptr_null (cpu->ops->capture_begin);      /* the CPU runs every op as it comes */
  const int n = 300;
  float *in_host = gpu->ops->host_alloc (gpu, n * sizeof (float), &error);
  float *out_host = gpu->ops->host_alloc (gpu, n * sizeof (float), &error);
  ck_assert_ptr_nonnull (in_host);
  ck_assert_ptr_nonnull (out_host);
  float *d_x = gpu->ops->alloc (gpu, n * sizeof (float), &error);
  float *d_y = gpu->ops->alloc (gpu, n * sizeof (float), &error);

  /* y = GELU(x) + x, recorded */
  for (int i = 0; i < n; i++)
    in_host[i] = -1.0f;
  gpu->ops->reset_stats (gpu, gpu_ex);
  ck_assert (gpu->ops->capture_begin (gpu_ex, &error));
  gpu->ops->upload (gpu_ex, d_x, in_host, n * sizeof (float));
  gpu->ops->copy_2d (gpu_ex, d_y, n, d_x, n, 1, n);
  gpu->ops->gelu (gpu_ex, d_y, n);
  gpu->ops->add_scaled (gpu_ex, d_y, n, d_x, n, NULL, 1, n);
  gpu->ops->download_async (gpu_ex, out_host, d_y, n * sizeof (float));
  MoshiGraph *graph = gpu->ops->capture_end (gpu_ex, &error);
  ck_assert_msg (graph != NULL, "%s", error ? error->message : "");
  MoshiExecStats st;
  gpu->ops->get_stats (gpu, gpu_ex, &st);
  ck_assert_int_eq (st.kernel_launches, 0);           /* nothing ran yet */
  ck_assert_float_eq (out_host[0], 0.0f);
  MoshiTestRng rng;
  moshi_test_rng_init (&rng, 5);
  for (int launch = 0; launch < 2; launch++) {
    moshi_test_fill_uniform (&rng, in_host, n, 3);
    ck_assert (gpu->ops->graph_launch (gpu_ex, graph, &error));
    ck_assert (gpu->ops->synchronize (gpu_ex, &error));
    for (int i = 0; i < n; i++) {
      double x = in_host[i], want = 0.5 * x * (1 + erf (x / sqrt (2.0))) + x;
      ck_assert_msg (fabs (out_host[i] - want) <= 1e-5 * MAX (1.0, fabs (want)),
          "replay %d, element %d: %g, want %g", launch, i, out_host[i], want);
    }
  }
  gpu->ops->get_stats (gpu, gpu_ex, &st);
  ck_assert_int_eq (st.graph_launches, 2);
  ck_assert_int_eq (st.kernel_launches, 2 * 3);      /* copy, GELU, add per replay */
  ck_assert_int_eq (st.memory_ops, 2 * 2);
  ck_assert_int_eq (st.syncs, 2);
  gpu->ops->graph_free (gpu, graph);

  /* waiting inside a recording: refused, said why, and the exec works on */
  ck_assert (gpu->ops->capture_begin (gpu_ex, &error));
  gpu->ops->gelu (gpu_ex, d_y, n);
  ck_assert (gpu->ops->synchronize (gpu_ex, &error));
  graph = gpu->ops->capture_end (gpu_ex, &error);
  ck_assert_ptr_null (graph);
  ck_assert_ptr_nonnull (error);
  ck_assert_msg (strstr (error->message, "waited for the device while recording") != NULL, "%s",
      error->message);
  g_clear_error (&error);
  for (int i = 0; i < n; i++)
    in_host[i] = 1.0f;
  gpu->ops->upload (gpu_ex, d_x, in_host, n * sizeof (float));
  gpu->ops->gelu (gpu_ex, d_x, n);
  g_autofree float *back = from_gpu (d_x, n);
  ck_assert_float_eq_tol (back[n - 1], 0.841344746f, 1e-6f);

  gpu->ops->free (gpu, d_x);
  gpu->ops->free (gpu, d_y);
  gpu->ops->host_free (gpu, in_host);
  gpu->ops->host_free (gpu, out_host);
  close_both ();
}
END_TEST

/* copy_2d: disjoint, the overlapping shift to the front the models use for history, and dst ==
 * src; transpose. */
START_TEST (test_emulated_copy)
{
  open_both ();
  MoshiTestRng rng;
  moshi_test_rng_init (&rng, 3);
  const int rows = 7, ld = 50, n = rows * ld;
  static const int shifts[][2] = { { 0, 40 }, { 3, 40 }, { 10, 40 }, { 1, 49 }, { 45, 5 } };
  for (guint c = 0; c < G_N_ELEMENTS (shifts); c++) {
    int k = shifts[c][0], cols = shifts[c][1];
    g_autofree float *x = rand_vec (&rng, n, 1);
    float *d = to_gpu (x, n);
    /* dst = src - k: columns [k, k + cols) move to [0, cols) of every row */
    cpu->ops->copy_2d (cpu_ex, x, ld, x + k, ld, rows, cols);
    gpu->ops->copy_2d (gpu_ex, d, ld, d + k, ld, rows, cols);
    g_autofree float *got = from_gpu (d, n);
    char what[64];
    g_snprintf (what, sizeof what, "copy_2d shift %d cols %d", k, cols);
    assert_close (got, x, n, what);
    gpu->ops->free (gpu, d);
  }
  /* whole rows back: dst = src - 2 rows, overlapping */
  g_autofree float *x = rand_vec (&rng, n, 1);
  float *d = to_gpu (x, n);
  cpu->ops->copy_2d (cpu_ex, x, ld, x + 2 * ld, ld, rows - 2, ld);
  gpu->ops->copy_2d (gpu_ex, d, ld, d + 2 * ld, ld, rows - 2, ld);
  g_autofree float *got = from_gpu (d, n);
  assert_close (got, x, n, "copy_2d rows shift");

  g_autofree float *t_want = g_new0 (float, 50 * 9);
  float *d_t = to_gpu (t_want, 50 * 9);
  cpu->ops->transpose (cpu_ex, t_want, 9, x, ld, rows, 50);
  gpu->ops->transpose (gpu_ex, d_t, 9, d, ld, rows, 50);
  g_autofree float *t_got = from_gpu (d_t, 50 * 9);
  assert_close (t_got, t_want, 50 * 9, "transpose");
  gpu->ops->free (gpu, d);
  gpu->ops->free (gpu, d_t);
  close_both ();
}
END_TEST

static Suite *
backend_suite (void)
{
  Suite *s = suite_create ("cuda-backend");
  TCase *open = tcase_create ("open");
  tcase_add_test (open, test_real_module_without_gpu);
  tcase_add_test (open, test_missing_module);
  suite_add_tcase (s, open);
  TCase *emu = tcase_create ("emulated");
  tcase_set_timeout (emu, 300);
  tcase_add_test (emu, test_emulated_memory);
  tcase_add_test (emu, test_emulated_device_errors);
  tcase_add_test (emu, test_emulated_linear);
  tcase_add_test (emu, test_emulated_tensor_core_linear);
  tcase_add_test (emu, test_emulated_linear_int8);
  tcase_add_test (emu, test_emulated_copy);
  tcase_add_test (emu, test_emulated_capture);
  suite_add_tcase (s, emu);
  return s;
}

int
main (void)
{
  /* each test opens the backends afresh in its own process */
  const char *fork_mode = g_getenv ("CK_FORK");
  if (fork_mode != NULL && g_str_equal (fork_mode, "no")) {
    printf ("SKIP: these tests need CK_FORK (a fresh process per test)\n");
    return 77;
  }
  return moshi_test_run_suite (backend_suite ());
}
