/* gst-moshi: the CUDA execution model and the cuBLAS subset, checked on whatever runtime this
 * test is linked with. In the unit suite that is the CPU emulator (tests/cuda-emu), and the
 * emulator-only cases check that it catches what a GPU would not forgive: host pointers where
 * device pointers belong, copies in the wrong direction, out-of-bounds accesses, barrier
 * deadlocks, bad shuffle masks, breaches of the rules of stream capture. In the gpu suite the
 * same kernels (and a captured graph) run on the real runtime and must give the same results. */
#include "cuda-test-util.h"
#include "selftest-kernels.h"

#include "moshi-dtype.h"

#include <cublas_v2.h>
#include <math.h>
#include <string.h>

/* ------------------------------------------------------------------ execution model */

static void
expect_barrier_result (const int *out, int blocks, int n)
{
  for (int b = 0; b < blocks; b++)
    for (int t = 0; t < n; t++) {
      int u = (t + 5) % n;
      int want = b * 1000 + (u + 1) % n + 7 * ((u + n - 1) % n) + 1;
      ck_assert_msg (out[b * n + t] == want, "block %d thread %d: %d, want %d", b, t,
          out[b * n + t], want);
    }
}

START_TEST (test_barrier)
{
  static const int shapes[][2] = { { 100, 1 }, { 16, 6 }, { 1024, 1 }, { 7, 1 } };
  for (guint s = 0; s < G_N_ELEMENTS (shapes); s++) {
    int blocks = 3, n = shapes[s][0] * shapes[s][1];
    int *d_out;
    CUDA_OK (cudaMalloc ((void **) &d_out, sizeof (int) * blocks * n));
    CUDA_OK (selftest_barrier (NULL, d_out, blocks, shapes[s][0], shapes[s][1], 1));
    g_autofree int *out = g_new (int, blocks * n);
    cuda_test_download (out, d_out, sizeof (int) * blocks * n);
    expect_barrier_result (out, blocks, n);
    CUDA_OK (cudaFree (d_out));
  }
}
END_TEST

static int
shuffle_value (int warp, int lane)
{
  return 100 * warp + lane * lane;
}

START_TEST (test_shuffles)
{
  const int blocks = 2, threads = 64;
  int *d_out;
  size_t count = (size_t) blocks * threads * SELFTEST_SHUFFLE_OUTPUTS;
  CUDA_OK (cudaMalloc ((void **) &d_out, sizeof (int) * count));
  CUDA_OK (selftest_shuffle (NULL, d_out, blocks, threads));
  g_autofree int *out = g_new (int, count);
  cuda_test_download (out, d_out, sizeof (int) * count);
  for (int b = 0; b < blocks; b++)
    for (int t = 0; t < threads; t++) {
      const int *o = out + (b * threads + t) * SELFTEST_SHUFFLE_OUTPUTS;
      int w = t / 32, l = t % 32;
      int want[SELFTEST_SHUFFLE_OUTPUTS] = {
        shuffle_value (w, (l * 7) % 32),
        shuffle_value (w, l ^ 5),
        shuffle_value (w, l + 3 < 32 ? l + 3 : l),
        shuffle_value (w, l >= 2 ? l - 2 : l),
        shuffle_value (w, (l & ~7) + ((l + 3) & 7)),
        shuffle_value (w, l + 3 < (l / 8 + 1) * 8 ? l + 3 : l),
        (int) 0x49249249u,
        1,
        0,
        shuffle_value (w, l ^ 9),
        l < 16 ? 0xaaaa : (int) 0xaaaa0000u,
        l ^ 1,
        31 - l,
      };
      for (int k = 0; k < SELFTEST_SHUFFLE_OUTPUTS; k++)
        ck_assert_msg (o[k] == want[k], "block %d thread %d output %d: %d, want %d", b, t, k,
            o[k], want[k]);
    }
  CUDA_OK (cudaFree (d_out));
}
END_TEST

START_TEST (test_geometry)
{
  dim3 grid = { 3, 2, 2 }, block = { 4, 3, 2 };
  int nb = 12, nt = 24;
  int *d_out;
  CUDA_OK (cudaMalloc ((void **) &d_out, sizeof (int) * 4 * nb * nt));
  CUDA_OK (selftest_geometry (NULL, d_out, grid, block));
  g_autofree int *out = g_new (int, 4 * nb * nt);
  cuda_test_download (out, d_out, sizeof (int) * 4 * nb * nt);
  for (int bz = 0; bz < 2; bz++)
    for (int by = 0; by < 2; by++)
      for (int bx = 0; bx < 3; bx++)
        for (int tz = 0; tz < 2; tz++)
          for (int ty = 0; ty < 3; ty++)
            for (int tx = 0; tx < 4; tx++) {
              int b = bx + 3 * (by + 2 * bz), t = tx + 4 * (ty + 3 * tz);
              const int *o = out + 4 * (b * nt + t);
              ck_assert_int_eq (o[0], tx + 10 * ty + 100 * tz);
              ck_assert_int_eq (o[1], bx + 10 * by + 100 * bz);
              ck_assert_int_eq (o[2], 4 + 30 + 200);
              ck_assert_int_eq (o[3], 3 + 20 + 200);
            }
  CUDA_OK (cudaFree (d_out));
}
END_TEST

START_TEST (test_atomics)
{
  const int n = 1000;
  MoshiTestRng rng;
  moshi_test_rng_init (&rng, 5);
  g_autofree float *x = g_new (float, n);
  moshi_test_fill_uniform (&rng, x, n, 1.0f);
  double want_f = 0;
  int want_max = 0;
  float want_fmax = -INFINITY, want_fmax_neg = -INFINITY;
  for (int i = 0; i < n; i++) {
    want_f += x[i];
    want_max = MAX (want_max, (i * 37) % 1001);
    want_fmax = MAX (want_fmax, x[i]);
    want_fmax_neg = MAX (want_fmax_neg, -fabsf (x[i]) - 1.0f);
  }
  float *d_x = cuda_test_upload (x, sizeof (float) * n);
  float *d_f;
  int *d_i;
  const float f_init[3] = { 0.0f, -INFINITY, -INFINITY };
  d_f = cuda_test_upload (f_init, sizeof f_init);
  CUDA_OK (cudaMalloc ((void **) &d_i, 2 * sizeof (int)));
  CUDA_OK (cudaMemset (d_i, 0, 2 * sizeof (int)));
  CUDA_OK (selftest_atomics (NULL, d_f, d_i, d_i + 1, d_x, n));
  float f[3];
  int iv[2];
  cuda_test_download (f, d_f, sizeof f);
  cuda_test_download (iv, d_i, sizeof iv);
  ck_assert_msg (fabs (f[0] - want_f) < 1e-3, "atomicAdd float: %g, want %g", f[0], want_f);
  ck_assert_float_eq (f[1], want_fmax);
  ck_assert_float_eq (f[2], want_fmax_neg);
  ck_assert_int_eq (iv[0], n * (n - 1) / 2);
  ck_assert_int_eq (iv[1], want_max);
  cudaFree (d_x);
  cudaFree (d_f);
  cudaFree (d_i);
}
END_TEST

START_TEST (test_early_exit)
{
  int *d_out;
  CUDA_OK (cudaMalloc ((void **) &d_out, sizeof (int) * 64));
  CUDA_OK (selftest_early_exit (NULL, d_out));
  int out[64];
  cuda_test_download (out, d_out, sizeof out);
  for (int t = 0; t < 40; t++)
    ck_assert_int_eq (out[t], 39 - t);
  cudaFree (d_out);
}
END_TEST

START_TEST (test_launch_limits)
{
  int *d_out;
  const int n = 20000;          /* 80 KB of dynamic shared memory: needs the opt-in */
  CUDA_OK (cudaMalloc ((void **) &d_out, sizeof (int) * 64 * SELFTEST_SHUFFLE_OUTPUTS));
  ck_assert_int_eq (selftest_shuffle (NULL, d_out, 1, 2048), cudaErrorInvalidConfiguration);
  ck_assert_int_eq (cudaGetLastError (), cudaSuccess);   /* not sticky, already reported */
  ck_assert_int_eq (selftest_shuffle (NULL, d_out, 0, 32), cudaErrorInvalidConfiguration);
  CUDA_OK (cudaMemset (d_out, 0, sizeof (int)));
  ck_assert_int_eq (selftest_big_smem (NULL, d_out, n, 0), cudaErrorInvalidValue);
  CUDA_OK (selftest_big_smem (NULL, d_out, n, 1));
  int sum;
  cuda_test_download (&sum, d_out, sizeof sum);
  ck_assert_int_eq (sum, n * (n - 1) / 2);
  cudaFree (d_out);
}
END_TEST

START_TEST (test_streams_events)
{
  cudaStream_t stream;
  cudaEvent_t start, stop, untimed;
  CUDA_OK (cudaStreamCreateWithFlags (&stream, cudaStreamNonBlocking));
  CUDA_OK (cudaEventCreate (&start));
  CUDA_OK (cudaEventCreate (&stop));
  CUDA_OK (cudaEventCreateWithFlags (&untimed, cudaEventDisableTiming));
  int host[256], back[256];
  for (int i = 0; i < 256; i++)
    host[i] = i * 3;
  int *d;
  CUDA_OK (cudaMalloc ((void **) &d, sizeof host));
  CUDA_OK (cudaEventRecord (start, stream));
  CUDA_OK (cudaMemcpyAsync (d, host, sizeof host, cudaMemcpyHostToDevice, stream));
  CUDA_OK (selftest_barrier (stream, d, 1, 32, 1, 1));
  CUDA_OK (cudaEventRecord (stop, stream));
  CUDA_OK (cudaEventRecord (untimed, stream));
  CUDA_OK (cudaStreamWaitEvent (NULL, untimed, 0));
  CUDA_OK (cudaMemcpyAsync (back, d, sizeof (int) * 32, cudaMemcpyDeviceToHost, stream));
  CUDA_OK (cudaStreamSynchronize (stream));
  CUDA_OK (cudaEventSynchronize (stop));
  expect_barrier_result (back, 1, 32);
  float ms = -1;
  CUDA_OK (cudaEventElapsedTime (&ms, start, stop));
  ck_assert (ms >= 0);
  ck_assert_int_eq (cudaEventElapsedTime (&ms, start, untimed), cudaErrorInvalidResourceHandle);
  cudaGetLastError ();
  /* a 2-D copy through pitched rows */
  int rows[3][8], got[3][5];
  for (int r = 0; r < 3; r++)
    for (int c = 0; c < 8; c++)
      rows[r][c] = 10 * r + c;
  CUDA_OK (cudaMemcpy2D (d, 6 * sizeof (int), rows, sizeof rows[0], 5 * sizeof (int), 3,
      cudaMemcpyHostToDevice));
  CUDA_OK (cudaMemcpy2D (got, sizeof got[0], d, 6 * sizeof (int), 5 * sizeof (int), 3,
      cudaMemcpyDeviceToHost));
  for (int r = 0; r < 3; r++)
    for (int c = 0; c < 5; c++)
      ck_assert_int_eq (got[r][c], 10 * r + c);
  struct cudaPointerAttributes attr;
  CUDA_OK (cudaPointerGetAttributes (&attr, d));
  ck_assert_int_eq (attr.type, cudaMemoryTypeDevice);
  CUDA_OK (cudaFree (d));
  CUDA_OK (cudaEventDestroy (start));
  CUDA_OK (cudaEventDestroy (stop));
  CUDA_OK (cudaEventDestroy (untimed));
  CUDA_OK (cudaStreamDestroy (stream));
}
END_TEST

/* ------------------------------------------------------------------ cuBLAS */

/* Column-major reference: C = alpha op(A) op(B) + beta C over m x n (beta 0: C not read). */
static void
ref_gemm (gboolean ta, gboolean tb, int m, int n, int k, float alpha, const float *a, int lda,
    const float *b, int ldb, float beta, float *c, int ldc)
{
  for (int j = 0; j < n; j++)
    for (int i = 0; i < m; i++) {
      double acc = 0;
      for (int p = 0; p < k; p++) {
        double av = ta ? a[(size_t) i * lda + p] : a[(size_t) p * lda + i];
        double bv = tb ? b[(size_t) p * ldb + j] : b[(size_t) j * ldb + p];
        acc += av * bv;
      }
      double old = beta == 0.0f ? 0.0 : (double) beta * c[(size_t) j * ldc + i];
      c[(size_t) j * ldc + i] = (float) (alpha * acc + old);
    }
}

static void
assert_matrix_close (const float *got, const float *want, size_t n, double tol, const char *what)
{
  for (size_t i = 0; i < n; i++) {
    double d = fabs ((double) got[i] - want[i]);
    ck_assert_msg (d <= tol * (1 + fabs (want[i])) && !isnan (got[i]) == !isnan (want[i]),
        "%s: element %zu is %.8g, want %.8g", what, i, got[i], want[i]);
  }
}

START_TEST (test_cublas_sgemm_forms)
{
  cublasHandle_t h;
  ck_assert_int_eq (cublasCreate (&h), CUBLAS_STATUS_SUCCESS);
  MoshiTestRng rng;
  moshi_test_rng_init (&rng, 11);
  const int m = 13, n = 7, k = 9;
  for (int form = 0; form < 8; form++) {
    gboolean ta = form & 1, tb = (form >> 1) & 1, beta_zero = form >> 2;
    int a_rows = ta ? k : m, a_cols = ta ? m : k, b_rows = tb ? n : k, b_cols = tb ? k : n;
    int lda = a_rows + 3, ldb = b_rows + 2, ldc = m + 1;
    size_t na = (size_t) lda * a_cols, nb = (size_t) ldb * b_cols, nc = (size_t) ldc * n;
    g_autofree float *a = g_new (float, na);
    g_autofree float *b = g_new (float, nb);
    g_autofree float *c = g_new (float, nc);
    moshi_test_fill_uniform (&rng, a, na, 1);
    moshi_test_fill_uniform (&rng, b, nb, 1);
    moshi_test_fill_uniform (&rng, c, nc, 1);
    if (beta_zero)
      for (size_t i = 0; i < nc; i++)
        if ((int) (i % ldc) < m)
          c[i] = NAN;           /* beta == 0: C is written, never read */
    float alpha = 1.5f, beta = beta_zero ? 0.0f : -0.5f;
    float *d_a = cuda_test_upload (a, sizeof (float) * na);
    float *d_b = cuda_test_upload (b, sizeof (float) * nb);
    float *d_c = cuda_test_upload (c, sizeof (float) * nc);
    ck_assert_int_eq (cublasSgemm (h, ta ? CUBLAS_OP_T : CUBLAS_OP_N, tb ? CUBLAS_OP_T : CUBLAS_OP_N,
        m, n, k, &alpha, d_a, lda, d_b, ldb, &beta, d_c, ldc), CUBLAS_STATUS_SUCCESS);
    g_autofree float *got = g_new (float, nc);
    cuda_test_download (got, d_c, sizeof (float) * nc);
    ref_gemm (ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
    /* the rows between m and ldc are untouched */
    assert_matrix_close (got, c, nc, 1e-5, ta ? (tb ? "TT" : "TN") : (tb ? "NT" : "NN"));
    cudaFree (d_a);
    cudaFree (d_b);
    cudaFree (d_c);
  }
  cublasDestroy (h);
}
END_TEST

START_TEST (test_cublas_strided_batched)
{
  cublasHandle_t h;
  ck_assert_int_eq (cublasCreate (&h), CUBLAS_STATUS_SUCCESS);
  cudaStream_t stream;
  CUDA_OK (cudaStreamCreate (&stream));
  ck_assert_int_eq (cublasSetStream (h, stream), CUBLAS_STATUS_SUCCESS);
  MoshiTestRng rng;
  moshi_test_rng_init (&rng, 12);
  const int m = 6, n = 5, k = 11, batch = 3;
  /* A^T: k x m stored (lda k + 1), B: k x n (ldb k), C: m x n (ldc m + 2); strides with gaps */
  const int lda = k + 1, ldb = k, ldc = m + 2;
  const long long sa = (long long) lda * m + 5, sb = (long long) ldb * n + 3, sc = (long long) ldc * n + 1;
  size_t na = sa * batch, nb = sb * batch, nc = sc * batch;
  g_autofree float *a = g_new (float, na);
  g_autofree float *b = g_new (float, nb);
  g_autofree float *c = g_new (float, nc);
  moshi_test_fill_uniform (&rng, a, na, 1);
  moshi_test_fill_uniform (&rng, b, nb, 1);
  moshi_test_fill_uniform (&rng, c, nc, 1);
  float *d_a = cuda_test_upload (a, sizeof (float) * na);
  float *d_b = cuda_test_upload (b, sizeof (float) * nb);
  float *d_c = cuda_test_upload (c, sizeof (float) * nc);
  float alpha = 0.75f, beta = 0.25f;
  for (int api = 0; api < 2; api++) {
    CUDA_OK (cudaMemcpy (d_c, c, sizeof (float) * nc, cudaMemcpyHostToDevice));
    cublasStatus_t st = api == 0
        ? cublasSgemmStridedBatched (h, CUBLAS_OP_T, CUBLAS_OP_N, m, n, k, &alpha, d_a, lda, sa,
            d_b, ldb, sb, &beta, d_c, ldc, sc, batch)
        : cublasGemmStridedBatchedEx (h, CUBLAS_OP_T, CUBLAS_OP_N, m, n, k, &alpha, d_a,
            CUDA_R_32F, lda, sa, d_b, CUDA_R_32F, ldb, sb, &beta, d_c, CUDA_R_32F, ldc, sc, batch,
            CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
    ck_assert_int_eq (st, CUBLAS_STATUS_SUCCESS);
    g_autofree float *got = g_new (float, nc);
    CUDA_OK (cudaStreamSynchronize (stream));
    cuda_test_download (got, d_c, sizeof (float) * nc);
    g_autofree float *want = g_memdup2 (c, sizeof (float) * nc);
    for (int bi = 0; bi < batch; bi++)
      ref_gemm (TRUE, FALSE, m, n, k, alpha, a + bi * sa, lda, b + bi * sb, ldb, beta,
          want + bi * sc, ldc);
    assert_matrix_close (got, want, nc, 1e-5, api == 0 ? "SgemmStridedBatched" : "GemmStridedBatchedEx");
  }
  cudaFree (d_a);
  cudaFree (d_b);
  cudaFree (d_c);
  cublasDestroy (h);
  cudaStreamDestroy (stream);
}
END_TEST

/* BF16 A and B (rounded on the host), C in F32 or BF16, f32 accumulation. */
START_TEST (test_cublas_gemmex_bf16)
{
  cublasHandle_t h;
  ck_assert_int_eq (cublasCreate (&h), CUBLAS_STATUS_SUCCESS);
  MoshiTestRng rng;
  moshi_test_rng_init (&rng, 13);
  /* the shape of a linear layer: y[t, o] = x[t] . W[o], W [n_out, n_in] row-major is W^T
   * column-major, so C (n_out x t) = op(A = W, T) B (x^T, n_in x t). */
  const int n_out = 37, n_in = 70, t = 5;
  g_autofree float *w = g_new (float, n_out * n_in);
  g_autofree float *x = g_new (float, t * n_in);
  moshi_test_fill_uniform (&rng, w, n_out * n_in, 1);
  moshi_test_fill_uniform (&rng, x, t * n_in, 1);
  g_autofree uint16_t *wb = g_new (uint16_t, n_out * n_in);
  g_autofree uint16_t *xb = g_new (uint16_t, t * n_in);
  for (int i = 0; i < n_out * n_in; i++) {
    wb[i] = moshi_f32_to_bf16 (w[i]);
    w[i] = moshi_bf16_to_f32 (wb[i]);
  }
  for (int i = 0; i < t * n_in; i++) {
    xb[i] = moshi_f32_to_bf16 (x[i]);
    x[i] = moshi_bf16_to_f32 (xb[i]);
  }
  void *d_w = cuda_test_upload (wb, sizeof (uint16_t) * n_out * n_in);
  void *d_x = cuda_test_upload (xb, sizeof (uint16_t) * t * n_in);
  float *d_y;
  CUDA_OK (cudaMalloc ((void **) &d_y, sizeof (float) * n_out * t));
  float alpha = 1, beta = 0;
  ck_assert_int_eq (cublasGemmEx (h, CUBLAS_OP_T, CUBLAS_OP_N, n_out, t, n_in, &alpha, d_w,
      CUDA_R_16BF, n_in, d_x, CUDA_R_16BF, n_in, &beta, d_y, CUDA_R_32F, n_out,
      CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT), CUBLAS_STATUS_SUCCESS);
  g_autofree float *got = g_new (float, n_out * t);
  cuda_test_download (got, d_y, sizeof (float) * n_out * t);
  g_autofree float *want = g_new (float, n_out * t);
  ref_gemm (TRUE, FALSE, n_out, t, n_in, 1, w, n_in, x, n_in, 0, want, n_out);
  assert_matrix_close (got, want, n_out * t, 1e-5, "GemmEx bf16 -> f32");

  /* BF16 output: the f32 result rounded once */
  uint16_t *d_yb;
  CUDA_OK (cudaMalloc ((void **) &d_yb, sizeof (uint16_t) * n_out * t));
  ck_assert_int_eq (cublasGemmEx (h, CUBLAS_OP_T, CUBLAS_OP_N, n_out, t, n_in, &alpha, d_w,
      CUDA_R_16BF, n_in, d_x, CUDA_R_16BF, n_in, &beta, d_yb, CUDA_R_16BF, n_out,
      CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT), CUBLAS_STATUS_SUCCESS);
  g_autofree uint16_t *gotb = g_new (uint16_t, n_out * t);
  cuda_test_download (gotb, d_yb, sizeof (uint16_t) * n_out * t);
  for (int i = 0; i < n_out * t; i++) {
    float g = moshi_bf16_to_f32 (gotb[i]);
    ck_assert_msg (fabsf (g - want[i]) <= 1.0f / 128 * (1e-3f + fabsf (want[i])),
        "bf16 output %d: %g, want %g", i, g, want[i]);
  }
  cudaFree (d_w);
  cudaFree (d_x);
  cudaFree (d_y);
  cudaFree (d_yb);
  cublasDestroy (h);
}
END_TEST

START_TEST (test_cublas_edge_cases)
{
  cublasHandle_t h;
  ck_assert_int_eq (cublasCreate (&h), CUBLAS_STATUS_SUCCESS);
  float c_host[12];
  for (int i = 0; i < 12; i++)
    c_host[i] = (float) i;
  float *d_c = cuda_test_upload (c_host, sizeof c_host);
  float *d_a = cuda_test_upload (c_host, sizeof c_host);
  float alpha = 2, beta = 0.5f;
  /* a workspace of our own (what the backend gives each handle) */
  void *workspace = NULL;
  CUDA_OK (cudaMalloc (&workspace, 1 << 20));
  ck_assert_int_eq (cublasSetWorkspace (h, workspace, 1 << 20), CUBLAS_STATUS_SUCCESS);
#ifdef MOSHI_TEST_EMU
  ck_assert_int_eq (cublasSetWorkspace (h, c_host, sizeof c_host), CUBLAS_STATUS_INVALID_VALUE);
  assert_emu_message ("not a device memory range");
#endif
  /* k == 0: C = beta C */
  ck_assert_int_eq (cublasSgemm (h, CUBLAS_OP_N, CUBLAS_OP_N, 3, 4, 0, &alpha, d_a, 3, d_a, 1,
      &beta, d_c, 3), CUBLAS_STATUS_SUCCESS);
  float got[12];
  cuda_test_download (got, d_c, sizeof got);
  for (int i = 0; i < 12; i++)
    ck_assert_float_eq (got[i], 0.5f * i);
  /* a leading dimension below the rows it spans */
  ck_assert_int_eq (cublasSgemm (h, CUBLAS_OP_N, CUBLAS_OP_N, 3, 4, 2, &alpha, d_a, 2, d_a, 2,
      &beta, d_c, 3), CUBLAS_STATUS_INVALID_VALUE);
  ck_assert_int_eq (cublasSgemm (h, CUBLAS_OP_N, CUBLAS_OP_N, -1, 4, 2, &alpha, d_a, 2, d_a, 2,
      &beta, d_c, 3), CUBLAS_STATUS_INVALID_VALUE);
  /* A and B of different types: not a combination cuBLAS offers */
  ck_assert_int_eq (cublasGemmEx (h, CUBLAS_OP_N, CUBLAS_OP_N, 2, 2, 2, &alpha, d_a, CUDA_R_16BF,
      2, d_a, CUDA_R_32F, 2, &beta, d_c, CUDA_R_32F, 2, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
      CUBLAS_STATUS_NOT_SUPPORTED);
  cudaFree (d_a);
  cudaFree (d_c);
  cublasDestroy (h);
  cudaFree (workspace);
}
END_TEST

/* ------------------------------------------------------------------ stream capture and graphs */

/* The graph of the capture tests: x (G_M x G_K) uploaded from a pinned buffer, y = 2 x + 1 (a
 * kernel), C = alpha y B (an sgemm, B G_K x G_P), a tail after C zeroed (a memset), C and the
 * tail downloaded into a pinned buffer. */
#define G_M 5
#define G_K 4
#define G_P 3
#define G_TAIL 4
#define G_NX (G_M * G_K)
#define G_NOUT (G_M * G_P + G_TAIL)

static void
graph_reference (const float *x, const float *b, float alpha, float *want)
{
  float y[G_NX];
  for (int i = 0; i < G_NX; i++)
    y[i] = 2.0f * x[i] + 1.0f;
  ref_gemm (FALSE, FALSE, G_M, G_P, G_K, alpha, y, G_M, b, G_K, 0.0f, want, G_M);
  for (int i = 0; i < G_TAIL; i++)
    want[G_M * G_P + i] = 0.0f;
}

START_TEST (test_graph_capture_replay)
{
  cudaStream_t stream, other;
  CUDA_OK (cudaStreamCreateWithFlags (&stream, cudaStreamNonBlocking));
  CUDA_OK (cudaStreamCreateWithFlags (&other, cudaStreamNonBlocking));
  cublasHandle_t h;
  ck_assert_int_eq (cublasCreate (&h), CUBLAS_STATUS_SUCCESS);
  ck_assert_int_eq (cublasSetStream (h, stream), CUBLAS_STATUS_SUCCESS);
  float *h_in, *h_out;
  CUDA_OK (cudaMallocHost ((void **) &h_in, sizeof (float) * G_NX));
  CUDA_OK (cudaHostAlloc ((void **) &h_out, sizeof (float) * G_NOUT, cudaHostAllocPortable));
  unsigned flags = 0;
  CUDA_OK (cudaHostGetFlags (&flags, h_out));
  ck_assert (flags & cudaHostAllocPortable);
  MoshiTestRng rng;
  moshi_test_rng_init (&rng, 21);
  float b[G_K * G_P];
  moshi_test_fill_uniform (&rng, b, G_K * G_P, 1.0f);
  float *d_b = cuda_test_upload (b, sizeof b);
  float *d_x, *d_y, *d_out;
  CUDA_OK (cudaMalloc ((void **) &d_x, sizeof (float) * G_NX));
  CUDA_OK (cudaMalloc ((void **) &d_y, sizeof (float) * G_NX));
  CUDA_OK (cudaMalloc ((void **) &d_out, sizeof (float) * G_NOUT));
  CUDA_OK (cudaMemset (d_y, 0, sizeof (float) * G_NX));
  for (int i = 0; i < G_NX; i++)
    h_in[i] = 3.0f;
  for (int i = 0; i < G_NOUT; i++)
    h_out[i] = -7.0f;
#ifdef MOSHI_TEST_EMU
  MoshiEmuStats before, after;
  moshi_emu_get_stats (&before);
#endif

  float alpha = 0.5f, beta = 0.0f;
  cudaGraph_t graph = NULL;
  enum cudaStreamCaptureStatus status;
  CUDA_OK (cudaStreamBeginCapture (stream, cudaStreamCaptureModeGlobal));
  CUDA_OK (cudaStreamIsCapturing (stream, &status));
  ck_assert_int_eq (status, cudaStreamCaptureStatusActive);
  CUDA_OK (cudaMemcpyAsync (d_x, h_in, sizeof (float) * G_NX, cudaMemcpyHostToDevice, stream));
  CUDA_OK (selftest_scale_add (stream, d_y, d_x, 2.0f, 1.0f, G_NX));
  ck_assert_int_eq (cublasSgemm (h, CUBLAS_OP_N, CUBLAS_OP_N, G_M, G_P, G_K, &alpha, d_y, G_M,
      d_b, G_K, &beta, d_out, G_M), CUBLAS_STATUS_SUCCESS);
  CUDA_OK (cudaMemsetAsync (d_out + G_M * G_P, 0, sizeof (float) * G_TAIL, stream));
  CUDA_OK (cudaMemcpyAsync (h_out, d_out, sizeof (float) * G_NOUT, cudaMemcpyDeviceToHost,
      stream));
  CUDA_OK (cudaStreamEndCapture (stream, &graph));
  ck_assert_ptr_nonnull (graph);
  CUDA_OK (cudaStreamIsCapturing (stream, &status));
  ck_assert_int_eq (status, cudaStreamCaptureStatusNone);
  /* host-mode scalars were read at the call: changing alpha now changes nothing */
  alpha = 100.0f;

  /* nothing ran during the capture */
  for (int i = 0; i < G_NOUT; i++)
    ck_assert_float_eq (h_out[i], -7.0f);
  float y[G_NX];
  cuda_test_download (y, d_y, sizeof y);
  for (int i = 0; i < G_NX; i++)
    ck_assert_float_eq (y[i], 0.0f);
#ifdef MOSHI_TEST_EMU
  moshi_emu_get_stats (&after);
  ck_assert_uint_eq (after.launches, before.launches);
  ck_assert_uint_eq (after.gemms, before.gemms);
  ck_assert_uint_eq (after.graph_launches, before.graph_launches);

  /* one node per call, in call order (a GPU's cuBLAS may add nodes of its own) */
  size_t n_nodes = 0;
  CUDA_OK (cudaGraphGetNodes (graph, NULL, &n_nodes));
  ck_assert_uint_eq (n_nodes, 5);
  cudaGraphNode_t nodes[7];
  size_t asked = 7;
  CUDA_OK (cudaGraphGetNodes (graph, nodes, &asked));
  ck_assert_uint_eq (asked, 5);
  ck_assert_ptr_null (nodes[5]);
  ck_assert_ptr_null (nodes[6]);
  const enum cudaGraphNodeType types[5] = { cudaGraphNodeTypeMemcpy, cudaGraphNodeTypeKernel,
    cudaGraphNodeTypeKernel, cudaGraphNodeTypeMemset, cudaGraphNodeTypeMemcpy };
  for (int i = 0; i < 5; i++) {
    enum cudaGraphNodeType type;
    CUDA_OK (cudaGraphNodeGetType (nodes[i], &type));
    ck_assert_int_eq (type, types[i]);
  }
  asked = 2;
  CUDA_OK (cudaGraphGetNodes (graph, nodes, &asked));
  ck_assert_uint_eq (asked, 2);
  moshi_emu_get_stats (&before);
#endif

  cudaGraphExec_t exec;
  CUDA_OK (cudaGraphInstantiate (&exec, graph, 0));
  /* an exec does not need its graph */
  CUDA_OK (cudaGraphDestroy (graph));
  for (int rep = 0; rep < 2; rep++) {
    /* new inputs in the pinned buffer: the graph reads it when it runs */
    moshi_test_fill_uniform (&rng, h_in, G_NX, 1.0f);
    for (int i = 0; i < G_NOUT; i++)
      h_out[i] = -7.0f;
    CUDA_OK (cudaMemset (d_out, 0x7f, sizeof (float) * G_NOUT));
    /* the stream the graph is launched into, not the one it was captured from */
    cudaStream_t s = rep == 0 ? stream : other;
    CUDA_OK (cudaGraphLaunch (exec, s));
    CUDA_OK (cudaStreamSynchronize (s));
    float want[G_NOUT];
    graph_reference (h_in, b, 0.5f, want);
    assert_matrix_close (h_out, want, G_NOUT, 1e-5, rep == 0 ? "first replay" : "second replay");
  }
#ifdef MOSHI_TEST_EMU
  moshi_emu_get_stats (&after);
  ck_assert_uint_eq (after.launches - before.launches, 2);
  ck_assert_uint_eq (after.gemms - before.gemms, 2);
  ck_assert_uint_eq (after.graph_launches - before.graph_launches, 2);
  ck_assert_uint_eq (after.graph_nodes - before.graph_nodes, 10);
#endif
  CUDA_OK (cudaGraphExecDestroy (exec));
  cublasDestroy (h);
  CUDA_OK (cudaFree (d_b));
  CUDA_OK (cudaFree (d_x));
  CUDA_OK (cudaFree (d_y));
  CUDA_OK (cudaFree (d_out));
  CUDA_OK (cudaFreeHost (h_in));
  CUDA_OK (cudaFreeHost (h_out));
  CUDA_OK (cudaStreamDestroy (stream));
  CUDA_OK (cudaStreamDestroy (other));
#ifdef MOSHI_TEST_EMU
  ck_assert_uint_eq (moshi_emu_live_host_allocations (NULL), 0);
#endif
}
END_TEST

/* Device-mode scalars are read when the graph runs, host-mode ones when the GEMM is captured. */
START_TEST (test_graph_cublas_scalars)
{
  cudaStream_t stream;
  CUDA_OK (cudaStreamCreateWithFlags (&stream, cudaStreamNonBlocking));
  cublasHandle_t h;
  ck_assert_int_eq (cublasCreate (&h), CUBLAS_STATUS_SUCCESS);
  ck_assert_int_eq (cublasSetStream (h, stream), CUBLAS_STATUS_SUCCESS);
  const float a[4] = { 1, 2, 3, 4 }, eye[4] = { 1, 0, 0, 1 };
  float *d_a = cuda_test_upload (a, sizeof a);
  float *d_eye = cuda_test_upload (eye, sizeof eye);
  float scalars[2] = { 2.0f, 0.0f };
  float *d_scalars = cuda_test_upload (scalars, sizeof scalars);
  float *d_c;
  CUDA_OK (cudaMalloc ((void **) &d_c, 2 * sizeof a));
  float alpha = 3.0f, beta = 0.0f;
  cudaGraph_t graph;
  CUDA_OK (cudaStreamBeginCapture (stream, cudaStreamCaptureModeGlobal));
  ck_assert_int_eq (cublasSgemm (h, CUBLAS_OP_N, CUBLAS_OP_N, 2, 2, 2, &alpha, d_a, 2, d_eye, 2,
      &beta, d_c, 2), CUBLAS_STATUS_SUCCESS);
  ck_assert_int_eq (cublasSetPointerMode (h, CUBLAS_POINTER_MODE_DEVICE), CUBLAS_STATUS_SUCCESS);
  ck_assert_int_eq (cublasSgemm (h, CUBLAS_OP_N, CUBLAS_OP_N, 2, 2, 2, d_scalars, d_a, 2, d_eye,
      2, d_scalars + 1, d_c + 4, 2), CUBLAS_STATUS_SUCCESS);
  CUDA_OK (cudaStreamEndCapture (stream, &graph));
  cudaGraphExec_t exec;
  CUDA_OK (cudaGraphInstantiate (&exec, graph, 0));
  CUDA_OK (cudaGraphDestroy (graph));
  alpha = -1.0f;
  scalars[0] = 5.0f;
  CUDA_OK (cudaMemcpy (d_scalars, scalars, sizeof scalars, cudaMemcpyHostToDevice));
  CUDA_OK (cudaGraphLaunch (exec, stream));
  CUDA_OK (cudaStreamSynchronize (stream));
  float c[8];
  cuda_test_download (c, d_c, sizeof c);
  for (int i = 0; i < 4; i++) {
    ck_assert_float_eq (c[i], 3.0f * a[i]);
    ck_assert_float_eq (c[4 + i], 5.0f * a[i]);
  }
  CUDA_OK (cudaGraphExecDestroy (exec));
  cublasDestroy (h);
  cudaFree (d_a);
  cudaFree (d_eye);
  cudaFree (d_scalars);
  cudaFree (d_c);
  CUDA_OK (cudaStreamDestroy (stream));
}
END_TEST

/* ------------------------------------------------------------------ emulator only */

#ifdef MOSHI_TEST_EMU

START_TEST (test_emu_schedules)
{
  const int blocks = 2, n = 96;
  int *d_out;
  CUDA_OK (cudaMalloc ((void **) &d_out, sizeof (int) * blocks * n));
  g_autofree int *out = g_new (int, blocks * n);
  const MoshiEmuSchedule orders[] = { MOSHI_EMU_SCHEDULE_FORWARD, MOSHI_EMU_SCHEDULE_REVERSE,
    MOSHI_EMU_SCHEDULE_RANDOM };
  for (guint o = 0; o < G_N_ELEMENTS (orders); o++) {
    moshi_emu_set_schedule (orders[o], 42 + o);
    CUDA_OK (selftest_barrier (NULL, d_out, blocks, n, 1, 1));
    cuda_test_download (out, d_out, sizeof (int) * blocks * n);
    expect_barrier_result (out, blocks, n);
    /* without its barriers the kernel races, and every schedule shows it */
    CUDA_OK (selftest_barrier (NULL, d_out, blocks, n, 1, 0));
    cuda_test_download (out, d_out, sizeof (int) * blocks * n);
    int wrong = 0;
    for (int b = 0; b < blocks; b++)
      for (int t = 0; t < n; t++) {
        int u = (t + 5) % n;
        wrong += out[b * n + t] != b * 1000 + (u + 1) % n + 7 * ((u + n - 1) % n) + 1;
      }
    ck_assert_msg (wrong > 0, "schedule %d: the race without barriers went unnoticed", o);
  }
  moshi_emu_set_schedule (MOSHI_EMU_SCHEDULE_FORWARD, 1);
  MoshiEmuStats stats;
  moshi_emu_get_stats (&stats);
  ck_assert (stats.launches >= 6 && stats.barriers > 0 && stats.switches > 0);
  cudaFree (d_out);
}
END_TEST

START_TEST (test_emu_copy_checks)
{
  float host[64] = { 0 };
  float *d;
  CUDA_OK (cudaMalloc ((void **) &d, sizeof host));
  ck_assert (moshi_emu_is_device_range (d, sizeof host));
  ck_assert (!moshi_emu_is_device_range (d, sizeof host + 1));
  ck_assert (!moshi_emu_is_device_range (host, 4));
  /* host and device swapped */
  ck_assert_int_eq (cudaMemcpy (host, d, sizeof host, cudaMemcpyHostToDevice), cudaErrorInvalidValue);
  assert_emu_message ("must be device memory but is a host pointer");
  ck_assert_int_eq (cudaMemcpy (d, host, sizeof host, cudaMemcpyDeviceToHost), cudaErrorInvalidValue);
  assert_emu_message ("must be host memory but is a device pointer");
  /* the last error is set, and reading it clears it (these errors are not sticky) */
  ck_assert_int_eq (cudaGetLastError (), cudaErrorInvalidValue);
  ck_assert_int_eq (cudaGetLastError (), cudaSuccess);
  /* a range past the end of the allocation */
  ck_assert_int_eq (cudaMemcpy (d + 8, host, sizeof host, cudaMemcpyHostToDevice), cudaErrorInvalidValue);
  assert_emu_message ("runs 32 bytes past the end");
  ck_assert_int_eq (cudaMemset (d, 0, sizeof host + 4), cudaErrorInvalidValue);
  ck_assert_int_eq (cudaMemcpy (d, d + 1, 8, cudaMemcpyDeviceToDevice), cudaSuccess);
  ck_assert_int_eq (cudaMemcpy (host, d, 8, cudaMemcpyDefault), cudaSuccess);
  /* frees: interior and host pointers are not allocations */
  ck_assert_int_eq (cudaFree (d + 1), cudaErrorInvalidValue);
  ck_assert_int_eq (cudaFree (host), cudaErrorInvalidValue);
  assert_emu_message ("is not the start of a live device allocation");
  /* fresh device memory is not zero (as on a GPU): it reads as NaN */
  float *e;
  CUDA_OK (cudaMalloc ((void **) &e, 16));
  float v[4];
  CUDA_OK (cudaMemcpy (v, e, sizeof v, cudaMemcpyDeviceToHost));
  ck_assert (isnan (v[0]) && isnan (v[3]));
  CUDA_OK (cudaFree (e));
  CUDA_OK (cudaFree (d));
  ck_assert_int_eq (cudaFree (d), cudaErrorInvalidValue);     /* double free */
  size_t bytes;
  ck_assert_uint_eq (moshi_emu_live_allocations (&bytes), 0);
  /* dead handles */
  cudaStream_t s;
  CUDA_OK (cudaStreamCreate (&s));
  CUDA_OK (cudaStreamDestroy (s));
  ck_assert_int_eq (cudaStreamSynchronize (s), cudaErrorInvalidResourceHandle);
}
END_TEST

START_TEST (test_emu_host_pointer_in_kernel)
{
  float host[4];
  ck_assert_int_eq (selftest_touch (NULL, host, 0, 1), cudaErrorIllegalAddress);
  assert_emu_message ("argument 0 is");
  assert_emu_message ("not device memory");
  /* sticky, as on a GPU: everything fails until the device is reset */
  void *p;
  ck_assert_int_eq (cudaMalloc (&p, 16), cudaErrorIllegalAddress);
  ck_assert_int_eq (cudaDeviceSynchronize (), cudaErrorIllegalAddress);
  ck_assert_int_eq (cudaGetLastError (), cudaErrorIllegalAddress);
  CUDA_OK (cudaDeviceReset ());
  CUDA_OK (cudaMalloc (&p, 16));
  CUDA_OK (cudaFree (p));
}
END_TEST

START_TEST (test_emu_out_of_bounds)
{
  float *d;
  /* 64 floats = 256 bytes end on the guard page: one element past the end faults */
  CUDA_OK (cudaMalloc ((void **) &d, 64 * sizeof (float)));
  CUDA_OK (selftest_touch (NULL, d, 63, 0));
  ck_assert_int_eq (selftest_touch (NULL, d, 64, 0), cudaErrorIllegalAddress);
  assert_emu_message ("kernel touch_kernel, block (0,0,0), thread (0,0,0): illegal memory access");
  assert_emu_message ("0 bytes past the end of device allocation");
  CUDA_OK (cudaDeviceReset ());

  /* 63 floats: the element past the end lies in the alignment slack; writing it breaks the
   * canary, which is checked after the launch */
  CUDA_OK (cudaMalloc ((void **) &d, 63 * sizeof (float)));
  ck_assert_int_eq (selftest_touch (NULL, d, 63, 1), cudaErrorIllegalAddress);
  assert_emu_message ("out-of-bounds write past the end of device allocation");
  assert_emu_message ("the canary changed 0 byte(s) after its end");
  CUDA_OK (cudaDeviceReset ());

  /* one element before the start */
  CUDA_OK (cudaMalloc ((void **) &d, 64 * sizeof (float)));
  ck_assert_int_eq (selftest_touch (NULL, d, -1, 1), cudaErrorIllegalAddress);
  assert_emu_message ("the canary changed 4 byte(s) before it");
  CUDA_OK (cudaDeviceReset ());

  /* past the end of dynamic shared memory */
  ck_assert_int_eq (selftest_smem_overflow (NULL, 32, 1), cudaErrorIllegalAddress);
  assert_emu_message ("thread (31,0,0)");
  assert_emu_message ("past the end of the 128 bytes of dynamic shared memory");
  CUDA_OK (cudaDeviceReset ());
}
END_TEST

START_TEST (test_emu_check_range_hook)
{
  float *d;
  CUDA_OK (cudaMalloc ((void **) &d, 16 * sizeof (float)));
  CUDA_OK (selftest_check_range (NULL, d, 16));
  CUDA_OK (selftest_check_range (NULL, d + 4, 12));
  ck_assert_int_eq (selftest_check_range (NULL, d + 4, 13), cudaErrorIllegalAddress);
  assert_emu_message ("p: 52 bytes at offset 16 run past the end of a 64-byte device allocation");
  CUDA_OK (cudaDeviceReset ());
}
END_TEST

START_TEST (test_emu_deadlock_and_masks)
{
  int *d;
  CUDA_OK (cudaMalloc ((void **) &d, 32 * sizeof (int)));
  ck_assert_int_eq (selftest_deadlock (NULL, d), cudaErrorLaunchTimeout);
  assert_emu_message ("deadlock");
  assert_emu_message ("waits at __syncthreads");
  CUDA_OK (cudaDeviceReset ());
  CUDA_OK (cudaMalloc ((void **) &d, 32 * sizeof (int)));
  ck_assert_int_eq (selftest_bad_mask (NULL, d), cudaErrorIllegalInstruction);
  assert_emu_message ("does not contain the calling lane 1");
  CUDA_OK (cudaDeviceReset ());
  /* a full-mask shuffle in a partial warp names lanes that do not exist */
  CUDA_OK (cudaMalloc ((void **) &d, 64 * SELFTEST_SHUFFLE_OUTPUTS * sizeof (int)));
  ck_assert_int_eq (selftest_shuffle (NULL, d, 1, 48), cudaErrorIllegalInstruction);
  assert_emu_message ("names lanes that do not exist");
  CUDA_OK (cudaDeviceReset ());
}
END_TEST

START_TEST (test_emu_cublas_pointers)
{
  cublasHandle_t h;
  ck_assert_int_eq (cublasCreate (&h), CUBLAS_STATUS_SUCCESS);
  float host[16] = { 0 };
  float *d;
  CUDA_OK (cudaMalloc ((void **) &d, sizeof host));
  float alpha = 1, beta = 0;
  ck_assert_int_eq (cublasSgemm (h, CUBLAS_OP_N, CUBLAS_OP_N, 4, 4, 4, &alpha, host, 4, d, 4,
      &beta, d, 4), CUBLAS_STATUS_EXECUTION_FAILED);
  assert_emu_message ("operand A (4 x 4, ld 4) is not device memory");
  CUDA_OK (cudaDeviceReset ());
  CUDA_OK (cudaMalloc ((void **) &d, sizeof host));
  /* ldb 5 makes B span 4 * 5 - 1 = 19 floats of a 16-float buffer */
  ck_assert_int_eq (cublasSgemm (h, CUBLAS_OP_N, CUBLAS_OP_N, 4, 4, 4, &alpha, d, 4, d, 5,
      &beta, d, 4), CUBLAS_STATUS_EXECUTION_FAILED);
  assert_emu_message ("operand B (4 x 4, ld 5) is a device range that runs past its allocation");
  CUDA_OK (cudaDeviceReset ());
  cublasDestroy (h);
}
END_TEST

/* Captures that break CUDA's rules fail as they do on a GPU, and invalidate the capture. */
START_TEST (test_emu_capture_errors)
{
  cudaStream_t s;
  CUDA_OK (cudaStreamCreateWithFlags (&s, cudaStreamNonBlocking));
  float *d;
  CUDA_OK (cudaMalloc ((void **) &d, 64 * sizeof (float)));
  float pageable[16] = { 0 };
  float *pinned;
  CUDA_OK (cudaMallocHost ((void **) &pinned, 16 * sizeof (float)));
  cudaGraph_t g;
  enum cudaStreamCaptureStatus status;

  /* a copy from pageable memory cannot be captured */
  CUDA_OK (cudaStreamBeginCapture (s, cudaStreamCaptureModeGlobal));
  ck_assert_int_eq (cudaMemcpyAsync (d, pageable, sizeof pageable, cudaMemcpyHostToDevice, s),
      cudaErrorStreamCaptureUnsupported);
  assert_emu_message ("pageable host memory cannot be captured");
  CUDA_OK (cudaStreamIsCapturing (s, &status));
  ck_assert_int_eq (status, cudaStreamCaptureStatusInvalidated);
  ck_assert_int_eq (cudaMemsetAsync (d, 0, 4, s), cudaErrorStreamCaptureInvalidated);
  g = (cudaGraph_t) d;
  ck_assert_int_eq (cudaStreamEndCapture (s, &g), cudaErrorStreamCaptureInvalidated);
  ck_assert_ptr_null (g);
  assert_emu_message ("pageable host memory cannot be captured");
  /* after the capture the stream runs work again, pageable copies included */
  CUDA_OK (cudaMemcpyAsync (d, pageable, sizeof pageable, cudaMemcpyHostToDevice, s));
  /* a pinned range has an end */
  ck_assert_int_eq (cudaMemcpy (d, pinned, 17 * sizeof (float), cudaMemcpyHostToDevice),
      cudaErrorInvalidValue);
  assert_emu_message ("runs 4 bytes past the end of its 64-byte pinned host allocation");

  /* synchronizing a capturing stream, or the device */
  CUDA_OK (cudaStreamBeginCapture (s, cudaStreamCaptureModeGlobal));
  CUDA_OK (cudaMemsetAsync (d, 0, 4, s));
  ck_assert_int_eq (cudaStreamSynchronize (s), cudaErrorStreamCaptureUnsupported);
  assert_emu_message ("is capturing");
  ck_assert_int_eq (cudaStreamEndCapture (s, &g), cudaErrorStreamCaptureInvalidated);
  ck_assert_ptr_null (g);
  CUDA_OK (cudaStreamBeginCapture (s, cudaStreamCaptureModeGlobal));
  ck_assert_int_eq (cudaStreamQuery (s), cudaErrorStreamCaptureUnsupported);
  ck_assert_int_eq (cudaStreamEndCapture (s, &g), cudaErrorStreamCaptureInvalidated);
  CUDA_OK (cudaStreamBeginCapture (s, cudaStreamCaptureModeGlobal));
  ck_assert_int_eq (cudaDeviceSynchronize (), cudaErrorStreamCaptureUnsupported);
  ck_assert_int_eq (cudaStreamEndCapture (s, &g), cudaErrorStreamCaptureInvalidated);

  /* the potentially unsafe calls: refused in global and thread-local captures */
  const enum cudaStreamCaptureMode strict[2] = { cudaStreamCaptureModeGlobal,
    cudaStreamCaptureModeThreadLocal };
  void *p = NULL;
  for (int m = 0; m < 2; m++) {
    CUDA_OK (cudaStreamBeginCapture (s, strict[m]));
    ck_assert_int_eq (cudaMalloc (&p, 16), cudaErrorStreamCaptureUnsupported);
    assert_emu_message ("cudaMalloc: not permitted while stream");
    ck_assert_int_eq (cudaFree (d), cudaErrorStreamCaptureUnsupported);
    ck_assert_int_eq (cudaMemcpy (d, pinned, 4, cudaMemcpyHostToDevice),
        cudaErrorStreamCaptureUnsupported);
    ck_assert_int_eq (cudaMemset (d, 0, 4), cudaErrorStreamCaptureUnsupported);
    ck_assert_int_eq (cudaFreeHost (pinned), cudaErrorStreamCaptureUnsupported);
    ck_assert_int_eq (cudaStreamEndCapture (s, &g), cudaErrorStreamCaptureInvalidated);
    ck_assert_ptr_null (g);
  }
  /* ... and allowed in a relaxed one */
  CUDA_OK (cudaStreamBeginCapture (s, cudaStreamCaptureModeRelaxed));
  CUDA_OK (cudaMalloc (&p, 16));
  CUDA_OK (cudaMemsetAsync (p, 0, 16, s));
  CUDA_OK (cudaStreamEndCapture (s, &g));
  size_t n = 0;
  CUDA_OK (cudaGraphGetNodes (g, NULL, &n));
  ck_assert_uint_eq (n, 1);
  CUDA_OK (cudaGraphDestroy (g));
  CUDA_OK (cudaFree (p));
  /* ... or to a thread that makes its own mode relaxed */
  CUDA_OK (cudaStreamBeginCapture (s, cudaStreamCaptureModeGlobal));
  enum cudaStreamCaptureMode mode = cudaStreamCaptureModeRelaxed;
  CUDA_OK (cudaThreadExchangeStreamCaptureMode (&mode));
  ck_assert_int_eq (mode, cudaStreamCaptureModeGlobal);
  CUDA_OK (cudaMalloc (&p, 16));
  CUDA_OK (cudaFree (p));
  CUDA_OK (cudaThreadExchangeStreamCaptureMode (&mode));
  CUDA_OK (cudaStreamEndCapture (s, &g));
  CUDA_OK (cudaGraphDestroy (g));

  /* beginning and ending out of turn */
  ck_assert_int_eq (cudaStreamEndCapture (s, &g), cudaErrorIllegalState);
  assert_emu_message ("is not capturing");
  CUDA_OK (cudaStreamBeginCapture (s, cudaStreamCaptureModeGlobal));
  ck_assert_int_eq (cudaStreamBeginCapture (s, cudaStreamCaptureModeGlobal), cudaErrorIllegalState);
  assert_emu_message ("is already capturing");
  CUDA_OK (cudaStreamEndCapture (s, &g));
  CUDA_OK (cudaGraphGetNodes (g, NULL, &n));
  ck_assert_uint_eq (n, 0);
  CUDA_OK (cudaGraphDestroy (g));
  ck_assert_int_eq (cudaStreamBeginCapture (NULL, cudaStreamCaptureModeGlobal),
      cudaErrorStreamCaptureUnsupported);

  /* an error in captured work invalidates the capture */
  CUDA_OK (cudaStreamBeginCapture (s, cudaStreamCaptureModeGlobal));
  ck_assert_int_eq (cudaMemsetAsync (d, 0, 65 * sizeof (float), s), cudaErrorInvalidValue);
  ck_assert_int_eq (selftest_scale_add (s, d, d, 1, 1, 1), cudaErrorStreamCaptureInvalidated);
  ck_assert_int_eq (cudaStreamEndCapture (s, &g), cudaErrorStreamCaptureInvalidated);
  cudaGetLastError ();

  /* the legacy default stream waits for blocking streams: unusable while one captures */
  cudaStream_t blocking;
  CUDA_OK (cudaStreamCreate (&blocking));
  CUDA_OK (cudaStreamBeginCapture (blocking, cudaStreamCaptureModeGlobal));
  ck_assert_int_eq (cudaStreamIsCapturing (NULL, &status), cudaErrorStreamCaptureImplicit);
  ck_assert_int_eq (cudaMemsetAsync (d, 0, 4, NULL), cudaErrorStreamCaptureImplicit);
  assert_emu_message ("the legacy default stream is used while blocking stream");
  ck_assert_int_eq (cudaStreamEndCapture (blocking, &g), cudaErrorStreamCaptureInvalidated);
  /* a non-blocking one leaves it alone */
  CUDA_OK (cudaStreamBeginCapture (s, cudaStreamCaptureModeGlobal));
  CUDA_OK (cudaMemsetAsync (d, 0, 4, NULL));
  CUDA_OK (cudaStreamEndCapture (s, &g));
  CUDA_OK (cudaGraphDestroy (g));
  /* destroying a capturing stream drops its capture */
  CUDA_OK (cudaStreamBeginCapture (blocking, cudaStreamCaptureModeGlobal));
  CUDA_OK (cudaStreamDestroy (blocking));
  assert_emu_message ("was capturing");
  CUDA_OK (cudaMemsetAsync (d, 0, 4, NULL));

  /* a plain record in a capture orders work within it; the host cannot wait for it */
  cudaEvent_t ev;
  CUDA_OK (cudaEventCreate (&ev));
  CUDA_OK (cudaStreamBeginCapture (s, cudaStreamCaptureModeGlobal));
  CUDA_OK (cudaEventRecord (ev, s));
  CUDA_OK (cudaStreamWaitEvent (s, ev, 0));
  ck_assert_int_eq (cudaEventQuery (ev), cudaErrorCapturedEvent);
  CUDA_OK (cudaStreamEndCapture (s, &g));
  CUDA_OK (cudaGraphGetNodes (g, NULL, &n));
  ck_assert_uint_eq (n, 0);
  CUDA_OK (cudaGraphDestroy (g));
  ck_assert_int_eq (cudaEventSynchronize (ev), cudaErrorCapturedEvent);
  assert_emu_message ("was last recorded in a capturing stream");
  CUDA_OK (cudaEventRecord (ev, s));
  CUDA_OK (cudaEventSynchronize (ev));
  /* an external record is a node that records the event when the graph runs */
  CUDA_OK (cudaStreamBeginCapture (s, cudaStreamCaptureModeGlobal));
  CUDA_OK (cudaEventRecordWithFlags (ev, s, cudaEventRecordExternal));
  CUDA_OK (cudaStreamEndCapture (s, &g));
  cudaGraphNode_t node;
  n = 1;
  CUDA_OK (cudaGraphGetNodes (g, &node, &n));
  enum cudaGraphNodeType type;
  CUDA_OK (cudaGraphNodeGetType (node, &type));
  ck_assert_int_eq (type, cudaGraphNodeTypeEventRecord);
  cudaGraphExec_t exec;
  CUDA_OK (cudaGraphInstantiate (&exec, g, 0));
  CUDA_OK (cudaGraphDestroy (g));
  ck_assert_int_eq (cudaEventQuery (ev), cudaErrorCapturedEvent);
  CUDA_OK (cudaGraphLaunch (exec, s));
  CUDA_OK (cudaEventQuery (ev));
  CUDA_OK (cudaGraphExecDestroy (exec));
  /* waiting in a capture for an event recorded outside it */
  CUDA_OK (cudaStreamBeginCapture (s, cudaStreamCaptureModeGlobal));
  ck_assert_int_eq (cudaStreamWaitEvent (s, ev, 0), cudaErrorStreamCaptureIsolation);
  ck_assert_int_eq (cudaStreamEndCapture (s, &g), cudaErrorStreamCaptureInvalidated);
  CUDA_OK (cudaEventDestroy (ev));

  /* pinned memory: only what cudaMallocHost / cudaHostAlloc returned can be freed */
  ck_assert_int_eq (cudaFreeHost (pageable), cudaErrorInvalidValue);
  assert_emu_message ("is not the start of a live pinned host allocation");
  ck_assert_int_eq (cudaFreeHost (pinned + 1), cudaErrorInvalidValue);
  ck_assert_int_eq (cudaFreeHost (d), cudaErrorInvalidValue);
  unsigned flags;
  ck_assert_int_eq (cudaHostGetFlags (&flags, pageable), cudaErrorInvalidValue);
  ck_assert_int_eq (cudaHostAlloc (&p, 16, 0x80), cudaErrorInvalidValue);
  cudaGetLastError ();
  CUDA_OK (cudaFreeHost (pinned));
  ck_assert_uint_eq (moshi_emu_live_host_allocations (NULL), 0);
  CUDA_OK (cudaFree (d));
  CUDA_OK (cudaStreamDestroy (s));
}
END_TEST

/* The capture modes as seen from another thread: a global capture forbids the unsafe calls to
 * every thread in global mode, a thread-local one only to its own thread; a capture that is not
 * relaxed ends on the thread that began it. */
static gpointer
malloc_on_thread (gpointer data)
{
  void *p = NULL;
  cudaError_t err = cudaMalloc (&p, 16);
  if (err == cudaSuccess)
    cudaFree (p);
  return GINT_TO_POINTER (err);
}

typedef struct {
  cudaStream_t stream;
  cudaGraph_t graph;
} EndCapture;

static gpointer
end_capture_on_thread (gpointer data)
{
  EndCapture *e = data;
  return GINT_TO_POINTER (cudaStreamEndCapture (e->stream, &e->graph));
}

START_TEST (test_emu_capture_threads)
{
  cudaStream_t s;
  CUDA_OK (cudaStreamCreateWithFlags (&s, cudaStreamNonBlocking));
  cudaGraph_t g;
  CUDA_OK (cudaStreamBeginCapture (s, cudaStreamCaptureModeGlobal));
  ck_assert_int_eq (GPOINTER_TO_INT (g_thread_join (g_thread_new ("malloc", malloc_on_thread,
      NULL))), cudaErrorStreamCaptureUnsupported);
  ck_assert_int_eq (cudaStreamEndCapture (s, &g), cudaErrorStreamCaptureInvalidated);
  CUDA_OK (cudaStreamBeginCapture (s, cudaStreamCaptureModeThreadLocal));
  ck_assert_int_eq (GPOINTER_TO_INT (g_thread_join (g_thread_new ("malloc", malloc_on_thread,
      NULL))), cudaSuccess);
  EndCapture end = { s, NULL };
  ck_assert_int_eq (GPOINTER_TO_INT (g_thread_join (g_thread_new ("end", end_capture_on_thread,
      &end))), cudaErrorStreamCaptureWrongThread);
  CUDA_OK (cudaStreamEndCapture (s, &g));
  CUDA_OK (cudaGraphDestroy (g));
  CUDA_OK (cudaStreamBeginCapture (s, cudaStreamCaptureModeRelaxed));
  ck_assert_int_eq (GPOINTER_TO_INT (g_thread_join (g_thread_new ("end", end_capture_on_thread,
      &end))), cudaSuccess);
  ck_assert_ptr_nonnull (end.graph);
  CUDA_OK (cudaGraphDestroy (end.graph));
  CUDA_OK (cudaStreamDestroy (s));
}
END_TEST

/* Graph and exec handles, and what a graph may no longer use when it runs. */
START_TEST (test_emu_graph_handles)
{
  cudaStream_t s;
  CUDA_OK (cudaStreamCreateWithFlags (&s, cudaStreamNonBlocking));
  float *d, *pinned;
  CUDA_OK (cudaMalloc ((void **) &d, 16 * sizeof (float)));
  CUDA_OK (cudaMallocHost ((void **) &pinned, 16 * sizeof (float)));
  cudaGraph_t g;
  cudaGraphExec_t exec;
  CUDA_OK (cudaStreamBeginCapture (s, cudaStreamCaptureModeGlobal));
  CUDA_OK (cudaMemsetAsync (d, 0, 16 * sizeof (float), s));
  CUDA_OK (cudaStreamEndCapture (s, &g));
  CUDA_OK (cudaGraphInstantiate (&exec, g, 0));
  CUDA_OK (cudaGraphLaunch (exec, s));
  /* a graph cannot be launched into a capture here */
  CUDA_OK (cudaStreamBeginCapture (s, cudaStreamCaptureModeGlobal));
  ck_assert_int_eq (cudaGraphLaunch (exec, s), cudaErrorStreamCaptureUnsupported);
  assert_emu_message ("is not emulated");
  ck_assert_int_eq (cudaStreamEndCapture (s, &g == NULL ? NULL : &(cudaGraph_t) { NULL }),
      cudaErrorStreamCaptureInvalidated);
  /* destroyed handles */
  CUDA_OK (cudaGraphExecDestroy (exec));
  ck_assert_int_eq (cudaGraphLaunch (exec, s), cudaErrorInvalidResourceHandle);
  assert_emu_message ("is not a live graph exec");
  ck_assert_int_eq (cudaGraphExecDestroy (exec), cudaErrorInvalidResourceHandle);
  CUDA_OK (cudaGraphDestroy (g));
  ck_assert_int_eq (cudaGraphDestroy (g), cudaErrorInvalidResourceHandle);
  ck_assert_int_eq (cudaGraphInstantiate (&exec, g, 0), cudaErrorInvalidResourceHandle);
  assert_emu_message ("is not a live graph");
  cudaGetLastError ();

  /* a pinned buffer freed after the capture: the replay would read freed memory */
  CUDA_OK (cudaStreamBeginCapture (s, cudaStreamCaptureModeGlobal));
  CUDA_OK (cudaMemcpyAsync (d, pinned, 16 * sizeof (float), cudaMemcpyHostToDevice, s));
  CUDA_OK (cudaStreamEndCapture (s, &g));
  CUDA_OK (cudaGraphInstantiate (&exec, g, 0));
  CUDA_OK (cudaGraphDestroy (g));
  CUDA_OK (cudaFreeHost (pinned));
  ck_assert_int_eq (cudaGraphLaunch (exec, s), cudaErrorIllegalAddress);
  assert_emu_message ("is no longer pinned host memory");
  CUDA_OK (cudaDeviceReset ());
}
END_TEST

/* A kernel that faults fails its graph as it fails eagerly, and ends the replay. */
START_TEST (test_emu_graph_fault)
{
  cudaStream_t s;
  CUDA_OK (cudaStreamCreateWithFlags (&s, cudaStreamNonBlocking));
  float *d;
  CUDA_OK (cudaMalloc ((void **) &d, 64 * sizeof (float)));
  cudaGraph_t g;
  cudaGraphExec_t exec;
  MoshiEmuStats before, after;
  moshi_emu_get_stats (&before);
  CUDA_OK (cudaStreamBeginCapture (s, cudaStreamCaptureModeGlobal));
  CUDA_OK (selftest_touch (s, d, 64, 0));       /* one element past the end: faults when run */
  CUDA_OK (cudaMemsetAsync (d, 0, 4, s));
  CUDA_OK (cudaStreamEndCapture (s, &g));
  CUDA_OK (cudaGraphInstantiate (&exec, g, 0));
  moshi_emu_get_stats (&after);
  ck_assert_uint_eq (after.launches, before.launches);
  ck_assert_int_eq (cudaGraphLaunch (exec, s), cudaErrorIllegalAddress);
  assert_emu_message ("kernel touch_kernel, block (0,0,0), thread (0,0,0): illegal memory access");
  assert_emu_message ("0 bytes past the end of device allocation");
  assert_emu_message ("cudaGraphLaunch: node 1 of 2 (kernel touch_kernel) failed");
  moshi_emu_get_stats (&after);
  ck_assert_uint_eq (after.launches - before.launches, 1);
  ck_assert_uint_eq (after.graph_launches - before.graph_launches, 1);
  ck_assert_uint_eq (after.graph_nodes - before.graph_nodes, 1);
  /* sticky, as on a GPU */
  ck_assert_int_eq (cudaGraphLaunch (exec, s), cudaErrorIllegalAddress);
  ck_assert_int_eq (cudaGetLastError (), cudaErrorIllegalAddress);
  CUDA_OK (cudaDeviceReset ());
}
END_TEST

/* A capped device: cudaMalloc past the cap fails as a full GPU does, without a sticky error,
 * and cudaMemGetInfo and the properties report the cap. */
START_TEST (test_emu_memory_limit)
{
  const size_t mib = 1 << 20;
  size_t used = 0;
  moshi_emu_live_allocations (&used);
  moshi_emu_set_memory_limit (used + 3 * mib);
  ck_assert_uint_eq (moshi_emu_get_memory_limit (), used + 3 * mib);
  size_t free_bytes = 0, total = 0;
  CUDA_OK (cudaMemGetInfo (&free_bytes, &total));
  ck_assert_uint_eq (total, used + 3 * mib);
  ck_assert_uint_eq (free_bytes, 3 * mib);
  struct cudaDeviceProp prop;
  CUDA_OK (cudaGetDeviceProperties (&prop, 0));
  ck_assert_uint_eq (prop.totalGlobalMem, used + 3 * mib);

  void *a = NULL, *b = NULL;
  CUDA_OK (cudaMalloc (&a, 2 * mib));
  ck_assert_int_eq (cudaMalloc (&b, 2 * mib), cudaErrorMemoryAllocation);
  ck_assert_ptr_null (b);
  ck_assert_msg (strstr (moshi_emu_last_message (), "do not fit") != NULL, "%s",
      moshi_emu_last_message ());
  /* not sticky: the error goes with the first look, and the rest works */
  ck_assert_int_eq (cudaGetLastError (), cudaErrorMemoryAllocation);
  ck_assert_int_eq (cudaGetLastError (), cudaSuccess);
  CUDA_OK (cudaMalloc (&b, mib));
  CUDA_OK (cudaMemGetInfo (&free_bytes, NULL));
  ck_assert_uint_eq (free_bytes, 0);
  CUDA_OK (cudaFree (a));
  CUDA_OK (cudaMemGetInfo (&free_bytes, NULL));
  ck_assert_uint_eq (free_bytes, 2 * mib);

  /* a cap below what is in use leaves nothing free, without wrapping round */
  moshi_emu_set_memory_limit (used + mib / 2);
  CUDA_OK (cudaMemGetInfo (&free_bytes, NULL));
  ck_assert_uint_eq (free_bytes, 0);
  ck_assert_int_eq (cudaMalloc (&a, 16), cudaErrorMemoryAllocation);
  cudaGetLastError ();
  CUDA_OK (cudaFree (b));

  /* 0, or a cap above it, is the default device */
  moshi_emu_set_memory_limit (0);
  ck_assert_uint_eq (moshi_emu_get_memory_limit (), (size_t) 16 << 30);
  moshi_emu_set_memory_limit ((size_t) 64 << 30);
  ck_assert_uint_eq (moshi_emu_get_memory_limit (), (size_t) 16 << 30);
  moshi_emu_set_memory_limit (0);
}
END_TEST

/* An injected fault hits the chosen launch, eager or replayed, and then every call fails as
 * after a real one, until a reset. */
START_TEST (test_emu_injected_fault)
{
  cudaStream_t s;
  CUDA_OK (cudaStreamCreateWithFlags (&s, cudaStreamNonBlocking));
  float *d;
  CUDA_OK (cudaMalloc ((void **) &d, 64 * sizeof (float)));
  cublasHandle_t blas;
  ck_assert_int_eq (cublasCreate (&blas), CUBLAS_STATUS_SUCCESS);
  ck_assert_int_eq (cublasSetStream (blas, s), CUBLAS_STATUS_SUCCESS);

  /* captured launches do not count; the replay's do */
  cudaGraph_t g;
  cudaGraphExec_t exec;
  CUDA_OK (cudaStreamBeginCapture (s, cudaStreamCaptureModeGlobal));
  CUDA_OK (selftest_touch (s, d, 0, 1));
  CUDA_OK (selftest_touch (s, d, 1, 1));
  CUDA_OK (cudaStreamEndCapture (s, &g));
  CUDA_OK (cudaGraphInstantiate (&exec, g, 0));
  CUDA_OK (cudaGraphDestroy (g));

  moshi_emu_inject_fault (4);
  ck_assert_uint_eq (moshi_emu_fault_pending (), 4);
  CUDA_OK (selftest_touch (s, d, 2, 1));
  /* a launch refused by its checks is not the one that faults */
  ck_assert_int_eq (selftest_smem_overflow (s, 1 << 20, 0), cudaErrorInvalidValue);
  ck_assert_uint_eq (moshi_emu_fault_pending (), 3);
  CUDA_OK (cudaGraphLaunch (exec, s));
  ck_assert_uint_eq (moshi_emu_fault_pending (), 1);
  MoshiEmuStats before, after;
  moshi_emu_get_stats (&before);
  ck_assert_int_eq (cudaGraphLaunch (exec, s), cudaErrorIllegalAddress);
  assert_emu_message ("cudaGraphLaunch: node 1 of 2 (kernel touch_kernel) failed");
  assert_emu_message ("injected device fault");
  moshi_emu_get_stats (&after);
  ck_assert_uint_eq (after.launches - before.launches, 1);
  ck_assert_uint_eq (after.graph_nodes - before.graph_nodes, 1);
  ck_assert_uint_eq (moshi_emu_fault_pending (), 0);

  /* sticky: launches, copies, synchronisation, allocation, cuBLAS */
  ck_assert_int_eq (selftest_touch (s, d, 0, 1), cudaErrorIllegalAddress);
  ck_assert_int_eq (cudaStreamSynchronize (s), cudaErrorIllegalAddress);
  ck_assert_int_eq (cudaDeviceSynchronize (), cudaErrorIllegalAddress);
  float host[4] = { 0 };
  ck_assert_int_eq (cudaMemcpy (host, d, sizeof host, cudaMemcpyDeviceToHost),
      cudaErrorIllegalAddress);
  void *p = NULL;
  ck_assert_int_eq (cudaMalloc (&p, 16), cudaErrorIllegalAddress);
  ck_assert_ptr_null (p);
  const float one = 1.0f, zero = 0.0f;
  ck_assert_int_eq (cublasSgemm (blas, CUBLAS_OP_N, CUBLAS_OP_N, 2, 2, 2, &one, d, 2, d, 2,
          &zero, d + 8, 2), CUBLAS_STATUS_EXECUTION_FAILED);
  ck_assert_int_eq (cudaGetLastError (), cudaErrorIllegalAddress);
  ck_assert_int_eq (cudaGetLastError (), cudaErrorIllegalAddress);
  cublasDestroy (blas);
  /* releases fail as everything does, but release: a leak check then sees what a caller
   * forgot, not what the fault stranded */
  size_t live = moshi_emu_live_allocations (NULL);
  ck_assert_int_eq (cudaFree (d), cudaErrorIllegalAddress);
  ck_assert_uint_eq (moshi_emu_live_allocations (NULL), live - 1);
  ck_assert_int_eq (cudaGraphExecDestroy (exec), cudaErrorIllegalAddress);
  ck_assert_int_eq (cudaGraphExecDestroy (exec), cudaErrorInvalidResourceHandle);
  ck_assert_int_eq (cudaStreamDestroy (s), cudaErrorIllegalAddress);

  /* a reset ends it, and cancels an injection still pending */
  moshi_emu_inject_fault (1);
  CUDA_OK (cudaDeviceReset ());
  ck_assert_uint_eq (moshi_emu_fault_pending (), 0);
  CUDA_OK (cudaStreamCreateWithFlags (&s, cudaStreamNonBlocking));
  CUDA_OK (cudaMalloc ((void **) &d, 64 * sizeof (float)));
  CUDA_OK (selftest_touch (s, d, 0, 1));
  CUDA_OK (cudaStreamSynchronize (s));
  moshi_emu_inject_fault (1);
  moshi_emu_inject_fault (0);
  CUDA_OK (selftest_touch (s, d, 0, 1));
  CUDA_OK (cudaDeviceReset ());
}
END_TEST

#endif

static Suite *
cuda_emu_suite (void)
{
  Suite *s = suite_create ("cuda-emu");
  TCase *tc = tcase_create ("model");
  tcase_set_timeout (tc, 600);
  tcase_add_test (tc, test_barrier);
  tcase_add_test (tc, test_shuffles);
  tcase_add_test (tc, test_geometry);
  tcase_add_test (tc, test_atomics);
  tcase_add_test (tc, test_early_exit);
  tcase_add_test (tc, test_launch_limits);
  tcase_add_test (tc, test_streams_events);
  suite_add_tcase (s, tc);
  tc = tcase_create ("cublas");
  tcase_add_test (tc, test_cublas_sgemm_forms);
  tcase_add_test (tc, test_cublas_strided_batched);
  tcase_add_test (tc, test_cublas_gemmex_bf16);
  tcase_add_test (tc, test_cublas_edge_cases);
  suite_add_tcase (s, tc);
  tc = tcase_create ("graphs");
  tcase_add_test (tc, test_graph_capture_replay);
  tcase_add_test (tc, test_graph_cublas_scalars);
  suite_add_tcase (s, tc);
#ifdef MOSHI_TEST_EMU
  tc = tcase_create ("emulator");
  tcase_set_timeout (tc, 600);
  tcase_add_test (tc, test_emu_schedules);
  tcase_add_test (tc, test_emu_copy_checks);
  tcase_add_test (tc, test_emu_host_pointer_in_kernel);
  tcase_add_test (tc, test_emu_out_of_bounds);
  tcase_add_test (tc, test_emu_check_range_hook);
  tcase_add_test (tc, test_emu_deadlock_and_masks);
  tcase_add_test (tc, test_emu_cublas_pointers);
  tcase_add_test (tc, test_emu_capture_errors);
  tcase_add_test (tc, test_emu_capture_threads);
  tcase_add_test (tc, test_emu_graph_handles);
  tcase_add_test (tc, test_emu_graph_fault);
  tcase_add_test (tc, test_emu_injected_fault);
  tcase_add_test (tc, test_emu_memory_limit);
  suite_add_tcase (s, tc);
#endif
  return s;
}

int
main (void)
{
  cuda_test_require_device ();
  return moshi_test_run_suite (cuda_emu_suite ());
}
