/* gst-moshi: every CUDA kernel (kernels/moshi-kernels.h) against the CPU backend's op on
 * random inputs, at sizes with partial blocks, partial warps and tails, with padded leading
 * dimensions (the padding must come back untouched).
 *
 * Tolerance (f32): every element of the output buffer within 1e-5 of the CPU op's value,
 * relative to max(|cpu value|, rms of the CPU output) -- that is, a relative error of 1e-5 for
 * elements of ordinary size and 1e-5 of the output's scale for elements near zero, where the
 * CPU's own SIMD approximations (exp(x) - 1 for ELU near 0) and the different summation orders
 * of parallel reductions differ in the last bits. Integer outputs (RVQ codes) must be equal.
 *
 * Built against the CPU emulator of the CUDA runtime for the unit suite (run once per thread
 * schedule) and against the real runtime for the gpu suite. */
#include "cuda-test-util.h"

#include "moshi-backend.h"
#include "moshi-dtype.h"
#include "moshi-kernels.h"

#include <math.h>
#include <string.h>

#define F32_TOL 1e-5

static MoshiBackend *be;
static MoshiExec *ex;
static cudaStream_t stream;

static void
setup (void)
{
  GError *error = NULL;
  be = moshi_backend_open (MOSHI_DEVICE_CPU, &error);
  ck_assert_ptr_nonnull (be);
  ex = moshi_exec_new (be, 1, &error);
  ck_assert_ptr_nonnull (ex);
  CUDA_OK (cudaStreamCreate (&stream));
}

static void
teardown (void)
{
  CUDA_OK (cudaStreamDestroy (stream));
  moshi_exec_free (ex);
  moshi_backend_unref (be);
}

static float *
rand_vec (MoshiTestRng *rng, size_t n, float scale)
{
  float *x = g_new (float, MAX (n, 1));
  moshi_test_fill_uniform (rng, x, n, scale);
  return x;
}

static MoshiWeight
host_weight (const float *data, int ndim, int64_t d0, int64_t d1, int64_t d2)
{
  MoshiWeight w = { .dtype = MOSHI_DTYPE_F32, .ndim = ndim, .shape = { d0, d1, d2 }, .data = data };
  return w;
}

static float *
dup_to_device (const float *h, size_t n)
{
  return cuda_test_upload (h, n * sizeof (float));
}

static void
from_device (float *h, const float *d, size_t n)
{
  CUDA_OK (cudaStreamSynchronize (stream));
  cuda_test_download (h, d, n * sizeof (float));
}

static void
assert_close_f32 (const float *got, const float *want, size_t n, const char *what)
{
  double ss = 0;
  for (size_t i = 0; i < n; i++)
    if (isfinite (want[i]))
      ss += (double) want[i] * want[i];
  double rms = n > 0 ? sqrt (ss / n) : 0;
  for (size_t i = 0; i < n; i++) {
    if (isnan (want[i])) {
      ck_assert_msg (isnan (got[i]), "%s: element %zu is %.9g, want NaN", what, i, got[i]);
      continue;
    }
    double err = fabs ((double) got[i] - want[i]);
    double ref = MAX (fabs (want[i]), rms);
    ck_assert_msg (err <= F32_TOL * ref, "%s: element %zu is %.9g, want %.9g (error %.3g, "
        "allowed %.3g)", what, i, got[i], want[i], err, F32_TOL * ref);
  }
}

/* ------------------------------------------------------------------ elementwise */

START_TEST (test_elu_2d)
{
  static const int cases[][5] = {
    /* rows, cols, ld_src pad, ld_dst pad, in place */
    { 1, 1, 0, 0, 0 }, { 3, 5, 2, 1, 0 }, { 37, 1000, 3, 0, 0 }, { 2, 257, 0, 7, 1 },
    { 70, 33, 1, 1, 0 }, { 5, 256, 0, 0, 0 },
  };
  MoshiTestRng rng;
  moshi_test_rng_init (&rng, 1);
  for (guint c = 0; c < G_N_ELEMENTS (cases); c++) {
    int rows = cases[c][0], cols = cases[c][1], in_place = cases[c][4];
    int ld_src = cols + cases[c][2], ld_dst = in_place ? ld_src : cols + cases[c][3];
    size_t ns = (size_t) rows * ld_src, nd = (size_t) rows * ld_dst;
    g_autofree float *src = rand_vec (&rng, ns, 3);
    g_autofree float *want = in_place ? g_memdup2 (src, ns * 4) : rand_vec (&rng, nd, 1);
    float *d_src = dup_to_device (src, ns);
    float *d_dst = in_place ? d_src : dup_to_device (want, nd);
    be->ops->elu_2d (ex, want, ld_dst, in_place ? want : src, ld_src, rows, cols);
    CUDA_OK (moshi_k_elu_2d (stream, d_dst, ld_dst, d_src, ld_src, rows, cols));
    g_autofree float *got = g_new (float, nd);
    from_device (got, d_dst, nd);
    char what[64];
    g_snprintf (what, sizeof what, "elu_2d case %u", c);
    assert_close_f32 (got, want, nd, what);
    cudaFree (d_src);
    if (!in_place)
      cudaFree (d_dst);
  }
}
END_TEST

START_TEST (test_gelu)
{
  /* offsets of 1 float make the pointer unaligned for float4 */
  static const int cases[][2] = { { 1, 0 }, { 3, 0 }, { 1027, 0 }, { 4099, 1 }, { 8192, 0 },
    { 70000, 3 } };
  MoshiTestRng rng;
  moshi_test_rng_init (&rng, 2);
  for (guint c = 0; c < G_N_ELEMENTS (cases); c++) {
    size_t n = cases[c][0], off = cases[c][1];
    g_autofree float *x = rand_vec (&rng, n + off, 4);
    float *d = dup_to_device (x, n + off);
    be->ops->gelu (ex, x + off, n);
    CUDA_OK (moshi_k_gelu (stream, d + off, n));
    g_autofree float *got = g_new (float, n + off);
    from_device (got, d, n + off);
    char what[64];
    g_snprintf (what, sizeof what, "gelu n=%zu offset %zu", n, off);
    assert_close_f32 (got, x, n + off, what);
    cudaFree (d);
  }
}
END_TEST

START_TEST (test_add_scaled)
{
  static const int cases[][4] = { { 1, 1, 0, 0 }, { 9, 300, 4, 1 }, { 2, 1024, 0, 0 },
    { 33, 31, 1, 5 } };
  MoshiTestRng rng;
  moshi_test_rng_init (&rng, 3);
  for (guint c = 0; c < G_N_ELEMENTS (cases); c++)
    for (int with_scale = 0; with_scale < 2; with_scale++) {
      int rows = cases[c][0], cols = cases[c][1];
      int ld_x = cols + cases[c][2], ld_y = cols + cases[c][3];
      size_t nx = (size_t) rows * ld_x, ny = (size_t) rows * ld_y;
      g_autofree float *x = rand_vec (&rng, nx, 1);
      g_autofree float *y = rand_vec (&rng, ny, 1);
      g_autofree float *s = rand_vec (&rng, cols, 2);
      float *d_x = dup_to_device (x, nx), *d_y = dup_to_device (y, ny);
      float *d_s = dup_to_device (s, cols);
      MoshiWeight S = host_weight (s, 1, cols, 0, 0);
      be->ops->add_scaled (ex, x, ld_x, y, ld_y, with_scale ? &S : NULL, rows, cols);
      CUDA_OK (moshi_k_add_scaled (stream, d_x, ld_x, d_y, ld_y, with_scale ? d_s : NULL, rows,
          cols));
      g_autofree float *got = g_new (float, nx);
      from_device (got, d_x, nx);
      char what[64];
      g_snprintf (what, sizeof what, "add_scaled case %u scale %d", c, with_scale);
      assert_close_f32 (got, x, nx, what);
      cudaFree (d_x);
      cudaFree (d_y);
      cudaFree (d_s);
    }
}
END_TEST

START_TEST (test_gated_act)
{
  static const int cases[][4] = { { 1, 1, 0, 0 }, { 5, 300, 7, 2 }, { 3, 2816, 0, 0 },
    { 17, 45, 3, 9 } };
  MoshiTestRng rng;
  moshi_test_rng_init (&rng, 4);
  for (guint c = 0; c < G_N_ELEMENTS (cases); c++)
    for (int act = 0; act < 2; act++) {
      int rows = cases[c][0], hidden = cases[c][1];
      int ld_src = 2 * hidden + cases[c][2], ld_dst = hidden + cases[c][3];
      size_t ns = (size_t) rows * ld_src, nd = (size_t) rows * ld_dst;
      g_autofree float *src = rand_vec (&rng, ns, 4);
      g_autofree float *want = rand_vec (&rng, nd, 1);
      float *d_src = dup_to_device (src, ns), *d_dst = dup_to_device (want, nd);
      be->ops->gated_act (ex, want, ld_dst, src, ld_src, act ? MOSHI_ACT_GELU : MOSHI_ACT_SILU,
          rows, hidden);
      CUDA_OK (moshi_k_gated_act (stream, d_dst, ld_dst, d_src, ld_src,
          act ? MOSHI_K_ACT_GELU : MOSHI_K_ACT_SILU, rows, hidden));
      g_autofree float *got = g_new (float, nd);
      from_device (got, d_dst, nd);
      char what[64];
      g_snprintf (what, sizeof what, "gated_act case %u %s", c, act ? "gelu" : "silu");
      assert_close_f32 (got, want, nd, what);
      cudaFree (d_src);
      cudaFree (d_dst);
    }
}
END_TEST

/* ------------------------------------------------------------------ normalisation */

static const int norm_cases[][4] = {
  /* rows, d, ld pad, in place */
  { 1, 1, 0, 0 }, { 3, 31, 2, 0 }, { 9, 512, 0, 1 }, { 4, 1000, 5, 0 }, { 2, 4096, 0, 0 },
  { 7, 33, 1, 1 }, { 2, 6000, 3, 0 },
};

START_TEST (test_layer_norm)
{
  MoshiTestRng rng;
  moshi_test_rng_init (&rng, 5);
  for (guint c = 0; c < G_N_ELEMENTS (norm_cases); c++)
    for (int affine = 0; affine < 3; affine++) {
      int rows = norm_cases[c][0], d = norm_cases[c][1], in_place = norm_cases[c][3];
      int ld_src = d + norm_cases[c][2], ld_dst = in_place ? ld_src : d + 2;
      size_t ns = (size_t) rows * ld_src, nd = (size_t) rows * ld_dst;
      g_autofree float *src = rand_vec (&rng, ns, 2);
      for (size_t i = 0; i < ns; i++)
        src[i] += 0.5f;         /* a mean away from zero */
      g_autofree float *want = in_place ? g_memdup2 (src, ns * 4) : rand_vec (&rng, nd, 1);
      g_autofree float *w = rand_vec (&rng, d, 1);
      g_autofree float *b = rand_vec (&rng, d, 1);
      float *d_src = dup_to_device (src, ns);
      float *d_dst = in_place ? d_src : dup_to_device (want, nd);
      float *d_w = dup_to_device (w, d), *d_b = dup_to_device (b, d);
      MoshiWeight W = host_weight (w, 1, d, 0, 0), B = host_weight (b, 1, d, 0, 0);
      /* affine 0: none; 1: weight; 2: weight and bias */
      be->ops->layer_norm (ex, want, ld_dst, in_place ? want : src, ld_src, affine ? &W : NULL,
          affine == 2 ? &B : NULL, 1e-5f, rows, d);
      CUDA_OK (moshi_k_layer_norm (stream, d_dst, ld_dst, d_src, ld_src, affine ? d_w : NULL,
          affine == 2 ? d_b : NULL, 1e-5f, rows, d));
      g_autofree float *got = g_new (float, nd);
      from_device (got, d_dst, nd);
      char what[80];
      g_snprintf (what, sizeof what, "layer_norm rows %d d %d affine %d", rows, d, affine);
      assert_close_f32 (got, want, nd, what);
      cudaFree (d_src);
      if (!in_place)
        cudaFree (d_dst);
      cudaFree (d_w);
      cudaFree (d_b);
    }
}
END_TEST

START_TEST (test_rms_norm)
{
  MoshiTestRng rng;
  moshi_test_rng_init (&rng, 6);
  for (guint c = 0; c < G_N_ELEMENTS (norm_cases); c++) {
    int rows = norm_cases[c][0], d = norm_cases[c][1], in_place = norm_cases[c][3];
    int ld_src = d + norm_cases[c][2], ld_dst = in_place ? ld_src : d + 1;
    size_t ns = (size_t) rows * ld_src, nd = (size_t) rows * ld_dst;
    g_autofree float *src = rand_vec (&rng, ns, 3);
    g_autofree float *want = in_place ? g_memdup2 (src, ns * 4) : rand_vec (&rng, nd, 1);
    g_autofree float *a = rand_vec (&rng, d, 1);
    float *d_src = dup_to_device (src, ns);
    float *d_dst = in_place ? d_src : dup_to_device (want, nd);
    float *d_a = dup_to_device (a, d);
    MoshiWeight A = host_weight (a, 1, d, 0, 0);
    be->ops->rms_norm (ex, want, ld_dst, in_place ? want : src, ld_src, &A, 1e-8f, rows, d);
    CUDA_OK (moshi_k_rms_norm (stream, d_dst, ld_dst, d_src, ld_src, d_a, 1e-8f, rows, d));
    g_autofree float *got = g_new (float, nd);
    from_device (got, d_dst, nd);
    char what[80];
    g_snprintf (what, sizeof what, "rms_norm rows %d d %d", rows, d);
    assert_close_f32 (got, want, nd, what);
    cudaFree (d_src);
    if (!in_place)
      cudaFree (d_dst);
    cudaFree (d_a);
  }
}
END_TEST

/* ------------------------------------------------------------------ embeddings, positions */

START_TEST (test_embedding)
{
  static const int cases[][3] = { { 1, 1, 3 }, { 50, 300, 9 }, { 7, 1024, 4 }, { 2049, 33, 6 } };
  static const float betas[] = { 0.0f, 1.0f, 0.5f };
  MoshiTestRng rng;
  moshi_test_rng_init (&rng, 7);
  for (guint c = 0; c < G_N_ELEMENTS (cases); c++)
    for (int bf16 = 0; bf16 < 2; bf16++)
      for (guint bi = 0; bi < G_N_ELEMENTS (betas); bi++) {
        int vocab = cases[c][0], d = cases[c][1], rows = cases[c][2], ld = d + 3;
        float beta = betas[bi];
        size_t nt = (size_t) vocab * d, nd = (size_t) rows * ld;
        g_autofree float *table = rand_vec (&rng, nt, 1);
        g_autofree uint16_t *table16 = g_new (uint16_t, nt);
        for (size_t i = 0; i < nt; i++)
          table16[i] = moshi_f32_to_bf16 (table[i]);
        g_autofree int32_t *ids = g_new (int32_t, rows);
        for (int r = 0; r < rows; r++)
          ids[r] = r % 3 == 1 ? -1 : (int32_t) ((moshi_test_rng_uniform (&rng) + 1) * 0.5f * vocab) % vocab;
        g_autofree float *want = rand_vec (&rng, nd, 1);
        if (beta == 0.0f)       /* beta 0 must not read dst */
          for (int r = 0; r < rows; r++)
            for (int i = 0; i < d; i++)
              want[(size_t) r * ld + i] = NAN;
        float *d_dst = dup_to_device (want, nd);
        void *d_table = bf16 ? cuda_test_upload (table16, nt * 2) : (void *) dup_to_device (table, nt);
        int32_t *d_ids = cuda_test_upload (ids, rows * sizeof (int32_t));
        MoshiWeight T = { .dtype = bf16 ? MOSHI_DTYPE_BF16 : MOSHI_DTYPE_F32, .ndim = 2,
          .shape = { vocab, d }, .data = bf16 ? (const void *) table16 : (const void *) table };
        be->ops->embedding (ex, want, ld, &T, ids, rows, beta);
        CUDA_OK (moshi_k_embedding (stream, d_dst, ld, d_table, bf16 ? MOSHI_K_BF16 : MOSHI_K_F32,
            vocab, d, d_ids, rows, beta));
        g_autofree float *got = g_new (float, nd);
        from_device (got, d_dst, nd);
        char what[80];
        g_snprintf (what, sizeof what, "embedding vocab %d d %d %s beta %g", vocab, d,
            bf16 ? "bf16" : "f32", beta);
        assert_close_f32 (got, want, nd, what);
        cudaFree (d_dst);
        cudaFree (d_table);
        cudaFree (d_ids);
      }
}
END_TEST

START_TEST (test_add_sin_embedding)
{
  static const int cases[][3] = { { 1, 2, 0 }, { 7, 64, 0 }, { 3, 130, 2990 }, { 5, 512, 117 },
    { 2, 4, 1 } };
  MoshiTestRng rng;
  moshi_test_rng_init (&rng, 8);
  for (guint c = 0; c < G_N_ELEMENTS (cases); c++) {
    int rows = cases[c][0], d = cases[c][1], pos0 = cases[c][2], ld = d + 1;
    size_t n = (size_t) rows * ld;
    g_autofree float *x = rand_vec (&rng, n, 1);
    float *d_x = dup_to_device (x, n);
    be->ops->add_sin_embedding (ex, x, ld, rows, d, pos0, 10000.0f, 0.7f);
    CUDA_OK (moshi_k_add_sin_embedding (stream, d_x, ld, rows, d, pos0, 10000.0f, 0.7f));
    g_autofree float *got = g_new (float, n);
    from_device (got, d_x, n);
    char what[80];
    g_snprintf (what, sizeof what, "add_sin_embedding rows %d d %d pos0 %d", rows, d, pos0);
    assert_close_f32 (got, x, n, what);
    cudaFree (d_x);
  }
}
END_TEST

START_TEST (test_rope)
{
  static const int cases[][5] = {
    /* t, n_heads, head_dim, pos0, ld pad */
    { 1, 1, 2, 0, 0 }, { 5, 3, 64, 17, 4 }, { 2, 32, 128, 2999, 0 }, { 9, 2, 16, 250, 1 },
    { 3, 5, 80, 1000, 2 }, { 1, 4, 640, 3, 0 },
  };
  MoshiTestRng rng;
  moshi_test_rng_init (&rng, 9);
  for (guint c = 0; c < G_N_ELEMENTS (cases); c++) {
    int t = cases[c][0], h = cases[c][1], hd = cases[c][2], pos0 = cases[c][3];
    int ld = h * hd + cases[c][4];
    size_t n = (size_t) t * ld;
    g_autofree float *x = rand_vec (&rng, n, 1);
    float *d_x = dup_to_device (x, n);
    be->ops->rope (ex, x, ld, t, h, hd, pos0, 10000.0f);
    CUDA_OK (moshi_k_rope (stream, d_x, ld, t, h, hd, pos0, 10000.0f));
    g_autofree float *got = g_new (float, n);
    from_device (got, d_x, n);
    char what[80];
    g_snprintf (what, sizeof what, "rope t %d heads %d head_dim %d pos0 %d", t, h, hd, pos0);
    assert_close_f32 (got, x, n, what);
    cudaFree (d_x);
  }
}
END_TEST

/* ------------------------------------------------------------------ KV cache, attention */

START_TEST (test_kv_write)
{
  static const int cases[][4] = {
    /* capacity, width, pos0, t */
    { 10, 48, 7, 5 }, { 10, 48, 0, 13 }, { 1, 3, 5, 2 }, { 300, 257, 295, 9 },
  };
  MoshiTestRng rng;
  moshi_test_rng_init (&rng, 10);
  for (guint c = 0; c < G_N_ELEMENTS (cases); c++) {
    int cap = cases[c][0], width = cases[c][1], pos0 = cases[c][2], t = cases[c][3];
    int ld_k = width + 2, ld_v = width + 5;
    size_t nc = (size_t) cap * width;
    g_autofree float *kc = rand_vec (&rng, nc, 1);
    g_autofree float *vc = rand_vec (&rng, nc, 1);
    g_autofree float *k = rand_vec (&rng, (size_t) t * ld_k, 1);
    g_autofree float *v = rand_vec (&rng, (size_t) t * ld_v, 1);
    float *d_kc = dup_to_device (kc, nc), *d_vc = dup_to_device (vc, nc);
    float *d_k = dup_to_device (k, (size_t) t * ld_k), *d_v = dup_to_device (v, (size_t) t * ld_v);
    be->ops->kv_write (ex, kc, vc, cap, k, ld_k, v, ld_v, width, pos0, t);
    CUDA_OK (moshi_k_kv_write (stream, d_kc, d_vc, cap, d_k, ld_k, d_v, ld_v, width, pos0, t));
    g_autofree float *got = g_new (float, nc);
    from_device (got, d_kc, nc);
    ck_assert_msg (memcmp (got, kc, nc * 4) == 0, "kv_write case %u: k cache differs", c);
    from_device (got, d_vc, nc);
    ck_assert_msg (memcmp (got, vc, nc * 4) == 0, "kv_write case %u: v cache differs", c);
    cudaFree (d_kc);
    cudaFree (d_vc);
    cudaFree (d_k);
    cudaFree (d_v);
  }
}
END_TEST

START_TEST (test_attention)
{
  static const int cases[][7] = {
    /* capacity, n_heads, head_dim, steps before, t, context, chunk for the history */
    { 12, 3, 16, 0, 1, 12, 1 },         /* first step */
    { 12, 3, 16, 30, 1, 12, 1 },        /* ring wrapped many times */
    { 12, 2, 64, 7, 4, 12, 3 },         /* a few queries at once */
    { 20, 4, 8, 33, 3, 9, 4 },          /* context shorter than the cache */
    { 3000, 2, 128, 3100, 1, 3000, 250 }, /* LM-sized cache, one decode step */
    { 250, 2, 64, 40, 10, 250, 10 },    /* Mimi-like */
    { 9, 1, 160, 5, 2, 9, 2 },          /* head_dim above the block size */
    { 6, 2, 24, 4, 2, 0, 2 },           /* context 0: nothing visible, zeros */
    { 5, 2, 40, 11, 5, 5, 5 },          /* t == capacity */
    { 600, 3, 32, 1000, 2, 550, 100 },  /* split in 3 chunks, context shorter than the cache */
    { 700, 1, 64, 100, 1, 700, 50 },    /* split, most slots never written */
  };
  MoshiTestRng rng;
  moshi_test_rng_init (&rng, 11);
  for (guint c = 0; c < G_N_ELEMENTS (cases); c++) {
    int cap = cases[c][0], h = cases[c][1], hd = cases[c][2], before = cases[c][3];
    int t = cases[c][4], context = cases[c][5], chunk = cases[c][6];
    int width = h * hd;
    size_t nc = (size_t) cap * width;
    /* never-written slots hold NaN on both sides: reading one would show */
    g_autofree float *kc = g_new (float, nc);
    g_autofree float *vc = g_new (float, nc);
    for (size_t i = 0; i < nc; i++)
      kc[i] = vc[i] = NAN;
    float *d_kc = dup_to_device (kc, nc), *d_vc = dup_to_device (vc, nc);
    /* history: positions 0 .. before - 1 in chunks, then the t new ones */
    int pos = 0;
    while (pos < before + t) {
      int n = pos < before ? MIN (chunk, before - pos) : t;
      g_autofree float *k = rand_vec (&rng, (size_t) n * width, 1);
      g_autofree float *v = rand_vec (&rng, (size_t) n * width, 1);
      float *d_k = dup_to_device (k, (size_t) n * width), *d_v = dup_to_device (v, (size_t) n * width);
      be->ops->kv_write (ex, kc, vc, cap, k, width, v, width, width, pos, n);
      CUDA_OK (moshi_k_kv_write (stream, d_kc, d_vc, cap, d_k, width, d_v, width, width, pos, n));
      cudaFree (d_k);
      cudaFree (d_v);
      pos += n;
    }
    int ld_q = width + 3, ld_dst = width + 1;
    g_autofree float *q = rand_vec (&rng, (size_t) t * ld_q, 1);
    g_autofree float *want = rand_vec (&rng, (size_t) t * ld_dst, 1);
    float *d_q = dup_to_device (q, (size_t) t * ld_q);
    float *d_dst = dup_to_device (want, (size_t) t * ld_dst);
    float scale = 1.0f / sqrtf ((float) hd);
    be->ops->attention (ex, want, ld_dst, q, ld_q, kc, vc, cap, h, hd, before, t, context, scale);
    /* one block per (head, query); then, where it applies, the split over chunks of slots */
    size_t scratch_floats = moshi_k_attention_scratch_floats (cap, h, hd, t);
    for (int split = 0; split < (scratch_floats > 0 ? 2 : 1); split++) {
      float *d_scratch = NULL;
      if (split)
        CUDA_OK (cudaMalloc ((void **) &d_scratch, scratch_floats * sizeof (float)));
      CUDA_OK (moshi_k_attention (stream, d_dst, ld_dst, d_q, ld_q, d_kc, d_vc, cap, h, hd,
          before, t, context, scale, d_scratch, scratch_floats));
      g_autofree float *got = g_new (float, (size_t) t * ld_dst);
      from_device (got, d_dst, (size_t) t * ld_dst);
      char what[128];
      g_snprintf (what, sizeof what, "attention cap %d heads %d head_dim %d pos0 %d t %d "
          "context %d%s", cap, h, hd, before, t, context, split ? " (split)" : "");
      assert_close_f32 (got, want, (size_t) t * ld_dst, what);
      cudaFree (d_scratch);
    }
    cudaFree (d_kc);
    cudaFree (d_vc);
    cudaFree (d_q);
    cudaFree (d_dst);
  }
}
END_TEST

static const MoshiDType cache_types[] = { MOSHI_DTYPE_F32, MOSHI_DTYPE_BF16, MOSHI_DTYPE_F8_E4M3 };

/* A cache slot of random history in dtype's layout (moshi_kv_slot_bytes; written here from the
 * documented layout, not with the op, so that the op is checked against it). */
static void
fill_slot (MoshiTestRng *rng, guint8 *slot, MoshiDType dtype, int n_heads, int head_dim)
{
  int width = n_heads * head_dim;
  float x[4096];
  g_assert (width <= 4096);
  moshi_test_fill_uniform (rng, x, width, 1.0f);
  switch (dtype) {
    case MOSHI_DTYPE_F32:
      memcpy (slot, x, width * sizeof (float));
      break;
    case MOSHI_DTYPE_BF16:
      for (int c = 0; c < width; c++)
        ((uint16_t *) slot)[c] = moshi_f32_to_bf16 (x[c]);
      break;
    default: {
      float *scales = (float *) (slot + ((width + 3) & ~3));
      for (int h = 0; h < n_heads; h++) {
        float amax = 0;
        for (int d = 0; d < head_dim; d++)
          amax = MAX (amax, fabsf (x[h * head_dim + d]));
        scales[h] = amax / 448.0f;
        for (int d = 0; d < head_dim; d++)
          slot[h * head_dim + d] = moshi_f32_to_e4m3 (x[h * head_dim + d] / scales[h]);
      }
    }
  }
}

/* The device cache equals the host one: within the f32 tolerance for F32, byte for byte for
 * BF16 and FP8 (the rounding of both is exact and the same on both sides). */
static void
assert_cache_equal (const void *d_cache, const void *host, size_t bytes, MoshiDType dtype,
    const char *what)
{
  g_autofree guint8 *got = g_malloc (bytes);
  CUDA_OK (cudaStreamSynchronize (stream));
  cuda_test_download (got, d_cache, bytes);
  if (dtype == MOSHI_DTYPE_F32) {
    assert_close_f32 ((const float *) got, host, bytes / 4, what);
    return;
  }
  const guint8 *want = host;
  for (size_t i = 0; i < bytes; i++)
    ck_assert_msg (got[i] == want[i], "%s: byte %zu is 0x%02x, the CPU wrote 0x%02x", what, i,
        got[i], want[i]);
}

/* FP8 E4M3: the device conversion is the CPU's, both ways, for every code and for values at
 * and around every rounding boundary. */
START_TEST (test_e4m3)
{
  for (int v = 0; v < 256; v++) {
    float f = moshi_e4m3_to_f32 ((uint8_t) v);
    ck_assert_msg (isnan (f) == ((v & 0x7f) == 0x7f), "code 0x%02x", v);
    if (!isnan (f))
      ck_assert_msg (moshi_f32_to_e4m3 (f) == v || (f == 0.0f && (v & 0x7f) == 0),
          "code 0x%02x -> %g -> 0x%02x", v, f, moshi_f32_to_e4m3 (f));
  }
  ck_assert_int_eq (moshi_f32_to_e4m3 (1000.0f), 0x7e);        /* saturates */
  ck_assert_int_eq (moshi_f32_to_e4m3 (-460.0f), 0xfe);
  ck_assert (moshi_e4m3_to_f32 (0x7e) == 448.0f);
  ck_assert (moshi_e4m3_to_f32 (0x01) == 1.0f / 512.0f);      /* least subnormal */
  /* midpoints round to even: 1.0625 lies between 1 (0x38) and 1.125 (0x39) */
  ck_assert_int_eq (moshi_f32_to_e4m3 (1.0625f), 0x38);
  ck_assert_int_eq (moshi_f32_to_e4m3 (1.1875f), 0x3a);
  g_autofree float *x = g_new (float, 4096);
  MoshiTestRng rng;
  moshi_test_rng_init (&rng, 77);
  for (int i = 0; i < 4096; i++) {
    int code = i % 255;
    float base = moshi_e4m3_to_f32 ((uint8_t) (code == 0x7f ? 0 : code));
    float next = moshi_e4m3_to_f32 ((uint8_t) ((code + 1) == 0x7f ? 0x7e : code + 1));
    x[i] = i % 3 == 0 ? (base + next) / 2 : i % 3 == 1 ? base * (1 + 1e-7f)
        : moshi_test_rng_uniform (&rng) * 448.0f;
  }
  /* through the cache kernels: one head of one row, scale 1 when its amax is 448 */
  for (int chunk = 0; chunk < 4096; chunk += 64) {
    float row[64];
    memcpy (row, x + chunk, sizeof row);
    row[0] = 448.0f;
    guint8 want[64 + 4], *d_cache;
    size_t bytes = moshi_kv_slot_bytes (MOSHI_DTYPE_F8_E4M3, 1, 64);
    ck_assert_int_eq (bytes, sizeof want);
    CUDA_OK (cudaMalloc ((void **) &d_cache, 2 * bytes));
    MoshiRowCache host_rc = { want, want, 0, 1 };
    be->ops->kv_write_rows (ex, &host_rc, MOSHI_DTYPE_F8_E4M3, 0, 1, row, 64, row, 64, 1, 64, 1);
    MoshiRowCache d_rc_host = { d_cache, d_cache + bytes, 0, 1 };
    MoshiKRowCache *d_rc = cuda_test_upload (&d_rc_host, sizeof d_rc_host);
    float *d_row = dup_to_device (row, 64);
    CUDA_OK (moshi_k_kv_write_rows (stream, d_rc, MOSHI_K_CACHE_FP8, 0, 1, d_row, 64, d_row, 64,
        1, 64, 1));
    assert_cache_equal (d_cache, want, bytes, MOSHI_DTYPE_F8_E4M3, "e4m3 codes");
    for (int d = 0; d < 64; d++)
      ck_assert_msg (want[d] == moshi_f32_to_e4m3 (row[d]), "%g: 0x%02x, not 0x%02x", row[d],
          want[d], moshi_f32_to_e4m3 (row[d]));
    cudaFree (d_rc);
    cudaFree (d_row);
    cudaFree (d_cache);
  }
}
END_TEST

/* One decode step of several sequences in one launch per op (the *_rows kernels): each row's
 * cache, position and end come from a table; the CPU op runs the same table on host caches.
 * Every cache type: F32, BF16, FP8. */
START_TEST (test_decode_rows)
{
  static const int cases[][5] = {
    /* capacity, n_heads, head_dim, sequences, context */
    { 12, 3, 16, 4, 12 },
    { 3000, 2, 64, 3, 3000 },           /* LM-sized: the split path for few rows */
    { 20, 4, 8, 5, 9 },                 /* context shorter than the cache */
    { 250, 2, 32, 2, 250 },             /* two rows of one sequence (Mimi-like) */
    { 16, 3, 6, 2, 16 },                /* FP8 codes of 18 bytes: scales after a pad */
  };
  MoshiTestRng rng;
  moshi_test_rng_init (&rng, 31);
  for (guint kind = 0; kind < G_N_ELEMENTS (cache_types); kind++)
  for (guint c = 0; c < G_N_ELEMENTS (cases); c++) {
    int cap = cases[c][0], h = cases[c][1], hd = cases[c][2], n_seq = cases[c][3];
    int context = cases[c][4];
    int width = h * hd;
    MoshiDType dtype = cache_types[kind];
    const char *kind_name = moshi_dtype_name (dtype);
    gsize slot = moshi_kv_slot_bytes (dtype, h, hd);
    gboolean two_rows = c == 3;         /* sequence s owns rows 2s and 2s + 1 */
    int rows = two_rows ? 2 * n_seq : n_seq;
    int layers = 2, layer = 1;
    size_t per_seq = (size_t) layers * cap * slot;
    g_autofree guint8 *kc = g_malloc (n_seq * per_seq), *vc = g_malloc (n_seq * per_seq);
    for (size_t at = 0; at < n_seq * per_seq; at += slot) {
      fill_slot (&rng, kc + at, dtype, h, hd);
      fill_slot (&rng, vc + at, dtype, h, hd);
    }
    guint8 *d_kc = cuda_test_upload (kc, n_seq * per_seq);
    guint8 *d_vc = cuda_test_upload (vc, n_seq * per_seq);
    g_autofree MoshiRowCache *rc = g_new0 (MoshiRowCache, rows);
    g_autofree MoshiRowCache *d_rc_host = g_new0 (MoshiRowCache, rows);
    for (int r = 0; r < rows; r++) {
      int s = two_rows ? r / 2 : r;
      /* sequences far apart: fresh, wrapped several times, ... */
      int pos0 = (s * 7919 + (int) c * 13) % (3 * cap + 5);
      int pos = two_rows ? pos0 + r % 2 : pos0;
      int end = (two_rows ? pos0 + 2 : pos0 + 1);
      rc[r] = (MoshiRowCache) { kc + s * per_seq, vc + s * per_seq, pos, end };
      d_rc_host[r] = (MoshiRowCache) { d_kc + s * per_seq, d_vc + s * per_seq, pos, end };
    }
    MoshiKRowCache *d_rc = cuda_test_upload (d_rc_host, rows * sizeof (MoshiRowCache));
    int ld_qkv = 3 * width + 2, ld_dst = width + 1;
    g_autofree float *qkv = rand_vec (&rng, (size_t) rows * ld_qkv, 1);
    g_autofree float *want = rand_vec (&rng, (size_t) rows * ld_dst, 1);
    float *d_qkv = dup_to_device (qkv, (size_t) rows * ld_qkv);
    float *d_dst = dup_to_device (want, (size_t) rows * ld_dst);
    float scale = 1.0f / sqrtf ((float) hd);
    size_t off = (size_t) layer * cap * slot;
    MoshiKCache kcache = dtype == MOSHI_DTYPE_BF16 ? MOSHI_K_CACHE_BF16
        : dtype == MOSHI_DTYPE_F8_E4M3 ? MOSHI_K_CACHE_FP8 : MOSHI_K_CACHE_F32;

    be->ops->rope_rows (ex, qkv, ld_qkv, rows, h, hd, rc, 10000.0f);
    be->ops->rope_rows (ex, qkv + width, ld_qkv, rows, h, hd, rc, 10000.0f);
    be->ops->add_sin_embedding_rows (ex, qkv + 2 * width, ld_qkv, rows, width, rc, 10000.0f, 0.5f);
    be->ops->kv_write_rows (ex, rc, dtype, off, cap, qkv + width, ld_qkv, qkv + 2 * width,
        ld_qkv, h, hd, rows);
    be->ops->attention_rows (ex, want, ld_dst, qkv, ld_qkv, rc, dtype, off, cap, h, hd, rows,
        context, scale);
    CUDA_OK (moshi_k_rope_rows (stream, d_qkv, ld_qkv, rows, h, hd, d_rc, 10000.0f));
    CUDA_OK (moshi_k_rope_rows (stream, d_qkv + width, ld_qkv, rows, h, hd, d_rc, 10000.0f));
    CUDA_OK (moshi_k_add_sin_embedding_rows (stream, d_qkv + 2 * width, ld_qkv, rows, width,
        d_rc, 10000.0f, 0.5f));
    CUDA_OK (moshi_k_kv_write_rows (stream, d_rc, kcache, off, cap, d_qkv + width, ld_qkv,
        d_qkv + 2 * width, ld_qkv, h, hd, rows));
    char what[128];
    g_autofree float *got_qkv = g_new (float, (size_t) rows * ld_qkv);
    from_device (got_qkv, d_qkv, (size_t) rows * ld_qkv);
    g_snprintf (what, sizeof what, "rope_rows/add_sin_embedding_rows case %u", c);
    assert_close_f32 (got_qkv, qkv, (size_t) rows * ld_qkv, what);
    g_snprintf (what, sizeof what, "kv_write_rows %s case %u (k)", kind_name, c);
    assert_cache_equal (d_kc, kc, n_seq * per_seq, dtype, what);
    g_snprintf (what, sizeof what, "kv_write_rows %s case %u (v)", kind_name, c);
    assert_cache_equal (d_vc, vc, n_seq * per_seq, dtype, what);

    size_t scratch_floats = moshi_k_attention_scratch_floats (cap, h, hd, rows);
    for (int split = 0; split < (scratch_floats > 0 ? 2 : 1); split++) {
      float *d_scratch = NULL;
      if (split)
        CUDA_OK (cudaMalloc ((void **) &d_scratch, scratch_floats * sizeof (float)));
      CUDA_OK (moshi_k_attention_rows (stream, d_dst, ld_dst, d_qkv, ld_qkv, d_rc, kcache, off,
          cap, h, hd, rows, context, scale, d_scratch, scratch_floats));
      g_autofree float *got = g_new (float, (size_t) rows * ld_dst);
      from_device (got, d_dst, (size_t) rows * ld_dst);
      g_snprintf (what, sizeof what, "attention_rows %s case %u%s", kind_name, c,
          split ? " (split)" : "");
      assert_close_f32 (got, want, (size_t) rows * ld_dst, what);
      cudaFree (d_scratch);
    }
    cudaFree (d_rc);
    cudaFree (d_kc);
    cudaFree (d_vc);
    cudaFree (d_qkv);
    cudaFree (d_dst);
  }
}
END_TEST

/* ------------------------------------------------------------------ sampling */

/* The sampling kernel picks the CPU op's tokens (the rule is exact: the same candidates, the
 * same hashed draws, the same double-precision scores) and combines guidance rows the same. */
START_TEST (test_sample)
{
  static const int cases[][4] = {
    /* vocab, top_k, temperature x 100, sessions */
    { 1, 0, 80, 2 }, { 7, 3, 70, 3 }, { 300, 0, 100, 2 }, { 2048, 250, 80, 4 },
    { 2048, 1, 80, 1 }, { 2049, 2048, 50, 2 }, { 4000, 25, 70, 3 }, { 2048, 250, 0, 3 },
    { 32000, 25, 70, 2 },
  };
  MoshiTestRng rng;
  moshi_test_rng_init (&rng, 32);
  for (guint c = 0; c < G_N_ELEMENTS (cases); c++) {
    int vocab = cases[c][0], top_k = cases[c][1], n = cases[c][3];
    float temperature = cases[c][2] / 100.0f;
    /* sessions alternate one row and two (guidance); rows: the logits rows */
    g_autofree MoshiSampler *sp = g_new0 (MoshiSampler, n);
    int rows = 0;
    for (int s = 0; s < n; s++) {
      int two = s % 2 == 1;
      sp[s] = (MoshiSampler) { temperature, top_k, temperature, top_k, two ? 2.5f : 1.0f, rows,
        two ? 2 : 1, 0, 1000u + s, 17 * s + (int) c };
      rows += two ? 2 : 1;
    }
    int ld = vocab + 3;
    g_autofree float *logits = rand_vec (&rng, (size_t) rows * ld, 4);
    /* ties at the top and at the k-th value, and a NaN */
    if (vocab >= 7) {
      logits[1] = logits[2] = logits[3] = 9.0f;
      logits[5] = NAN;
    }
    for (int stream_index = 0; stream_index < 2; stream_index++) {
      g_autofree float *want = g_memdup2 (logits, (size_t) rows * ld * sizeof (float));
      g_autofree int32_t *want_tok = g_new0 (int32_t, 2 * n);
      g_autofree int32_t *want_ids = g_new0 (int32_t, rows);
      be->ops->sample (ex, want_tok, 2, want_ids, want, ld, vocab, sp, n, stream_index);
      float *d_logits = dup_to_device (logits, (size_t) rows * ld);
      int32_t *d_tok = cuda_test_upload (want_tok, 2 * n * sizeof (int32_t));
      int32_t *d_ids = cuda_test_upload (want_ids, rows * sizeof (int32_t));
      CUDA_OK (cudaMemset (d_tok, 0xff, 2 * n * sizeof (int32_t)));
      CUDA_OK (cudaMemset (d_ids, 0xff, rows * sizeof (int32_t)));
      MoshiKSampler *d_sp = cuda_test_upload (sp, n * sizeof (MoshiSampler));
      CUDA_OK (moshi_k_sample (stream, d_tok, 2, d_ids, d_logits, ld, vocab, d_sp, n,
          stream_index));
      g_autofree int32_t *got_tok = g_new (int32_t, 2 * n);
      g_autofree int32_t *got_ids = g_new (int32_t, rows);
      g_autofree float *got = g_new (float, (size_t) rows * ld);
      cuda_test_download (got_tok, d_tok, 2 * n * sizeof (int32_t));
      cuda_test_download (got_ids, d_ids, rows * sizeof (int32_t));
      from_device (got, d_logits, (size_t) rows * ld);
      for (int s = 0; s < n; s++) {
        ck_assert_msg (got_tok[2 * s] == want_tok[2 * s], "sample case %u stream %d session %d: "
            "token %d, the CPU drew %d", c, stream_index, s, got_tok[2 * s], want_tok[2 * s]);
        ck_assert_int_eq (got_tok[2 * s + 1], -1);     /* ld_tokens respected */
        for (int r = 0; r < sp[s].n_rows; r++)
          ck_assert_int_eq (got_ids[sp[s].row + r], want_tok[2 * s]);
      }
      /* guidance combined in place, bit for bit */
      ck_assert_msg (memcmp (got, want, (size_t) rows * ld * sizeof (float)) == 0,
          "sample case %u: combined logits differ", c);
      cudaFree (d_logits);
      cudaFree (d_tok);
      cudaFree (d_ids);
      cudaFree (d_sp);
    }
  }
}
END_TEST

/* ------------------------------------------------------------------ convolutions */

START_TEST (test_conv1d)
{
  static const int cases[][7] = {
    /* c_in, c_out, k, stride, dilation, groups, t_out */
    { 1, 8, 7, 1, 1, 1, 97 },           /* Mimi's first conv shape, direct path */
    { 5, 3, 3, 1, 2, 1, 33 },
    { 16, 32, 8, 4, 1, 1, 19 },         /* tiled, one partial time tile */
    { 12, 6, 1, 1, 1, 1, 65 },
    { 8, 8, 4, 2, 1, 2, 9 },            /* grouped, direct */
    { 64, 128, 16, 8, 1, 1, 2 },        /* downsampling, 2 steps (streaming) */
    { 3, 1, 3, 1, 1, 1, 1 },
    { 33, 64, 10, 5, 1, 1, 70 },        /* input chunk tail (33 = 4 * 8 + 1), tiled */
    { 40, 64, 3, 1, 3, 1, 45 },         /* dilated, tiled */
    { 64, 64, 3, 1, 1, 2, 40 },         /* groups of 32 outputs: tiled per group */
    { 16, 16, 5, 1, 1, 16, 31 },        /* depthwise */
  };
  MoshiTestRng rng;
  moshi_test_rng_init (&rng, 13);
  for (guint c = 0; c < G_N_ELEMENTS (cases); c++) {
    int c_in = cases[c][0], c_out = cases[c][1], k = cases[c][2], stride = cases[c][3];
    int dil = cases[c][4], groups = cases[c][5], t_out = cases[c][6];
    int t_in = (t_out - 1) * stride + (k - 1) * dil + 1;
    /* one stream, then 3 streams side by side, then 3 apart (one launch each) */
    for (int variant = 0; variant < 12; variant++) {
      gboolean with_bias = variant & 1;
      float beta = variant & 2 ? 1.0f : 0.0f;
      int layout = variant / 4, n = layout ? 3 : 1;
      size_t src_step = t_in + (layout == 1 ? 0 : 3), dst_step = t_out + (layout == 1 ? 0 : 5);
      int ld_src = n * (int) src_step, ld_dst = n * (int) dst_step;
      size_t ns = (size_t) c_in * ld_src, nd = (size_t) c_out * ld_dst;
      size_t nw = (size_t) c_out * (c_in / groups) * k;
      g_autofree float *src = rand_vec (&rng, ns, 1);
      g_autofree float *w = rand_vec (&rng, nw, 0.5f);
      g_autofree float *b = rand_vec (&rng, c_out, 0.5f);
      g_autofree float *want = rand_vec (&rng, nd, 1);
      float *d_src = dup_to_device (src, ns), *d_w = dup_to_device (w, nw);
      float *d_b = dup_to_device (b, c_out), *d_dst = dup_to_device (want, nd);
      MoshiWeight W = host_weight (w, 3, c_out, c_in / groups, k);
      MoshiWeight B = host_weight (b, 1, c_out, 0, 0);
      be->ops->conv1d (ex, want, ld_dst, src, ld_src, &W, with_bias ? &B : NULL, stride, dil,
          groups, t_out, beta, n, src_step, dst_step);
      CUDA_OK (moshi_k_conv1d (stream, d_dst, ld_dst, d_src, ld_src, d_w, with_bias ? d_b : NULL,
          c_in, c_out, k, stride, dil, groups, t_out, beta, n, src_step, dst_step));
      g_autofree float *got = g_new (float, nd);
      from_device (got, d_dst, nd);
      char what[96];
      g_snprintf (what, sizeof what, "conv1d case %u (bias %d, beta %g, layout %d)", c,
          with_bias, beta, layout);
      assert_close_f32 (got, want, nd, what);
      cudaFree (d_src);
      cudaFree (d_w);
      cudaFree (d_b);
      cudaFree (d_dst);
    }
  }
}
END_TEST

START_TEST (test_conv_transpose1d)
{
  static const int cases[][5] = {
    /* c_in, c_out, k, stride, groups */
    { 16, 8, 16, 8, 1 }, { 5, 7, 6, 3, 1 }, { 12, 12, 4, 2, 12 }, { 64, 32, 8, 4, 1 },
    { 3, 1, 2, 1, 1 }, { 4, 6, 3, 3, 2 },
  };
  const int chunks[] = { 1, 3, 2, 1, 4 };
  MoshiTestRng rng;
  moshi_test_rng_init (&rng, 14);
  /* one stream, then 3 streams side by side (carries contiguous), then 3 apart */
  for (guint c = 0; c < G_N_ELEMENTS (cases); c++)
    for (int variant = 0; variant < 6; variant++) {
      int with_bias = variant & 1, layout = variant / 2, n = layout ? 3 : 1;
      int c_in = cases[c][0], c_out = cases[c][1], k = cases[c][2], stride = cases[c][3];
      int groups = cases[c][4], overlap = k - stride;
      size_t carry_step = (size_t) c_out * overlap + (layout == 2 ? 3 : 0);
      size_t n_carry = MAX (n * carry_step, 1);
      size_t nw = (size_t) c_in * (c_out / groups) * k;
      g_autofree float *w = rand_vec (&rng, nw, 0.5f);
      g_autofree float *b = rand_vec (&rng, c_out, 0.5f);
      g_autofree float *carry = g_new0 (float, n_carry);
      float *d_w = dup_to_device (w, nw), *d_b = dup_to_device (b, c_out);
      float *d_carry = dup_to_device (carry, n_carry);
      float *d_scratch;
      CUDA_OK (cudaMalloc ((void **) &d_scratch, sizeof (float) * n * c_out * MAX (overlap, 1)));
      MoshiWeight W = host_weight (w, 3, c_in, c_out / groups, k);
      MoshiWeight B = host_weight (b, 1, c_out, 0, 0);
      /* a stream of chunks, each with its own padded input and output */
      for (guint ch = 0; ch < G_N_ELEMENTS (chunks); ch++) {
        int t_in = chunks[ch];
        size_t src_step = t_in + (layout == 1 ? 0 : 2);
        size_t dst_step = t_in * stride + (layout == 1 ? 0 : 3);
        int ld_src = n * (int) src_step, ld_dst = n * (int) dst_step;
        size_t ns = (size_t) c_in * ld_src, nd = (size_t) c_out * ld_dst;
        g_autofree float *x = rand_vec (&rng, ns, 1);
        g_autofree float *want = rand_vec (&rng, nd, 1);
        float *d_x = dup_to_device (x, ns), *d_dst = dup_to_device (want, nd);
        be->ops->conv_transpose1d (ex, want, ld_dst, x, ld_src, &W, with_bias ? &B : NULL,
            carry, stride, groups, t_in, n, src_step, dst_step, carry_step);
        CUDA_OK (moshi_k_conv_transpose1d (stream, d_dst, ld_dst, d_x, ld_src, d_w,
            with_bias ? d_b : NULL, d_carry, d_scratch, c_in, c_out, k, stride, groups, t_in, n,
            src_step, dst_step, carry_step));
        g_autofree float *got = g_new (float, nd);
        from_device (got, d_dst, nd);
        char what[96];
        g_snprintf (what, sizeof what, "conv_transpose1d case %u layout %d chunk %u", c, layout,
            ch);
        assert_close_f32 (got, want, nd, what);
        if (overlap > 0) {
          /* the gaps between apart carries are not written: both keep their zeros */
          g_autofree float *got_carry = g_new (float, n_carry);
          from_device (got_carry, d_carry, n_carry);
          g_snprintf (what, sizeof what, "conv_transpose1d case %u layout %d chunk %u carry", c,
              layout, ch);
          assert_close_f32 (got_carry, carry, n_carry, what);
          /* continue both from the CPU's carry, so that errors do not accumulate */
          CUDA_OK (cudaMemcpy (d_carry, carry, sizeof (float) * n_carry,
              cudaMemcpyHostToDevice));
        }
        cudaFree (d_x);
        cudaFree (d_dst);
      }
      cudaFree (d_w);
      cudaFree (d_b);
      cudaFree (d_carry);
      cudaFree (d_scratch);
    }
}
END_TEST

/* ------------------------------------------------------------------ RVQ */

/* Codebooks whose levels shrink by 4x, so that an input made of one codeword per level plus
 * noise has an unambiguous nearest codeword at every level whatever the summation order; row 1
 * of each level duplicates row 0, so inputs built on row 1 check that the lowest index wins a
 * tie. */
static void
make_rvq_case (MoshiTestRng *rng, int n_levels, int bins, int dim, int t, float *books,
    float *norms, float *x, int ld, int32_t *codes_in)
{
  for (int l = 0; l < n_levels; l++) {
    float s = powf (0.25f, (float) l);
    float *book = books + (size_t) l * bins * dim;
    for (int i = 0; i < bins * dim; i++)
      book[i] = s * moshi_test_rng_uniform (rng);
    memcpy (book + dim, book, dim * sizeof (float));
    for (int b = 0; b < bins; b++) {
      double acc = 0;
      for (int k = 0; k < dim; k++)
        acc += (double) book[(size_t) b * dim + k] * book[(size_t) b * dim + k];
      norms[(size_t) l * bins + b] = (float) acc;
    }
  }
  for (int r = 0; r < t; r++) {
    float *xr = x + (size_t) r * ld;
    for (int k = 0; k < dim; k++)
      xr[k] = 1e-6f * moshi_test_rng_uniform (rng);
    for (int l = 0; l < n_levels; l++) {
      int code = r == 0 ? 1 : (int) ((moshi_test_rng_uniform (rng) + 1) * 0.5f * bins) % bins;
      codes_in[l * t + r] = code;
      const float *e = books + ((size_t) l * bins + code) * dim;
      for (int k = 0; k < dim; k++)
        xr[k] += e[k];
    }
  }
}

START_TEST (test_rvq)
{
  static const int cases[][4] = {
    /* n_levels, bins, dim, t */
    { 1, 2, 1, 1 }, { 3, 37, 24, 4 }, { 4, 130, 40, 3 }, { 2, 300, 72, 5 }, { 8, 64, 256, 2 },
  };
  MoshiTestRng rng;
  moshi_test_rng_init (&rng, 12);
  for (guint c = 0; c < G_N_ELEMENTS (cases); c++) {
    int n_levels = cases[c][0], bins = cases[c][1], dim = cases[c][2], t = cases[c][3];
    int ld = dim + 3, ld_codes = t + 2;
    size_t nb = (size_t) n_levels * bins * dim, nx = (size_t) t * ld;
    g_autofree float *books = g_new (float, nb);
    g_autofree float *norms = g_new (float, (size_t) n_levels * bins);
    g_autofree float *x = rand_vec (&rng, nx, 1);
    g_autofree int32_t *codes_in = g_new (int32_t, n_levels * t);
    make_rvq_case (&rng, n_levels, bins, dim, t, books, norms, x, ld, codes_in);
    float *d_books = dup_to_device (books, nb);
    float *d_norms = dup_to_device (norms, (size_t) n_levels * bins);
    float *d_x = dup_to_device (x, nx);
    size_t ncodes = (size_t) n_levels * ld_codes;
    g_autofree int32_t *want_codes = g_new (int32_t, ncodes);
    for (size_t i = 0; i < ncodes; i++)
      want_codes[i] = -7;
    int32_t *d_codes = cuda_test_upload (want_codes, ncodes * sizeof (int32_t));
    MoshiWeight B = host_weight (books, 3, n_levels, bins, dim);
    MoshiWeight N = host_weight (norms, 2, n_levels, bins, 0);
    be->ops->rvq_encode (ex, want_codes, ld_codes, x, ld, &B, &N, n_levels, t);
    CUDA_OK (moshi_k_rvq_encode (stream, d_codes, ld_codes, d_x, ld, d_books, d_norms, n_levels,
        bins, dim, t));
    g_autofree int32_t *got_codes = g_new (int32_t, ncodes);
    CUDA_OK (cudaStreamSynchronize (stream));
    cuda_test_download (got_codes, d_codes, ncodes * sizeof (int32_t));
    for (int l = 0; l < n_levels; l++)
      for (int r = 0; r < ld_codes; r++) {
        int32_t g = got_codes[l * ld_codes + r], w = want_codes[l * ld_codes + r];
        ck_assert_msg (g == w, "rvq_encode case %u level %d row %d: code %d, CPU %d", c, l, r, g, w);
        /* the construction makes the CPU's answer the intended one (row 0: the tie) */
        if (r < t && bins > 1)
          ck_assert_int_eq (w, r == 0 ? 0 : (codes_in[l * t + r] == 1 ? 0 : codes_in[l * t + r]));
      }
    g_autofree float *got = g_new (float, nx);
    from_device (got, d_x, nx);
    char what[80];
    g_snprintf (what, sizeof what, "rvq_encode residual case %u", c);
    assert_close_f32 (got, x, nx, what);

    /* decode the codes back (with one invalid row of codes past t ignored) */
    int ld_out = dim + 1;
    g_autofree float *want = rand_vec (&rng, (size_t) t * ld_out, 1);
    float *d_out = dup_to_device (want, (size_t) t * ld_out);
    be->ops->rvq_decode (ex, want, ld_out, want_codes, ld_codes, &B, n_levels, t);
    CUDA_OK (moshi_k_rvq_decode (stream, d_out, ld_out, d_codes, ld_codes, d_books, n_levels,
        bins, dim, t));
    g_autofree float *got_out = g_new (float, (size_t) t * ld_out);
    from_device (got_out, d_out, (size_t) t * ld_out);
    g_snprintf (what, sizeof what, "rvq_decode case %u", c);
    assert_close_f32 (got_out, want, (size_t) t * ld_out, what);
    cudaFree (d_books);
    cudaFree (d_norms);
    cudaFree (d_x);
    cudaFree (d_codes);
    cudaFree (d_out);
  }
}
END_TEST

/* ------------------------------------------------------------------ data movement, linear */

START_TEST (test_copy_transpose)
{
  static const int cases[][4] = {
    /* rows, cols, ld_src pad, ld_dst pad */
    { 1, 1, 0, 0 }, { 3, 5, 2, 1 }, { 33, 31, 0, 3 }, { 70, 257, 1, 0 }, { 64, 64, 0, 0 },
    { 1, 1000, 5, 0 },
  };
  MoshiTestRng rng;
  moshi_test_rng_init (&rng, 21);
  char what[80];
  for (guint c = 0; c < G_N_ELEMENTS (cases); c++) {
    int rows = cases[c][0], cols = cases[c][1];
    int ld_src = cols + cases[c][2];
    size_t ns = (size_t) rows * ld_src;
    g_autofree float *src = rand_vec (&rng, ns, 1);
    float *d_src = dup_to_device (src, ns);

    int ld_dst = cols + cases[c][3];
    size_t nd = (size_t) rows * ld_dst;
    g_autofree float *want = rand_vec (&rng, nd, 1);
    float *d_dst = dup_to_device (want, nd);
    be->ops->copy_2d (ex, want, ld_dst, src, ld_src, rows, cols);
    CUDA_OK (moshi_k_copy_2d (stream, d_dst, ld_dst, d_src, ld_src, rows, cols));
    g_autofree float *got = g_new (float, nd);
    from_device (got, d_dst, nd);
    g_snprintf (what, sizeof what, "copy_2d case %u", c);
    assert_close_f32 (got, want, nd, what);
    cudaFree (d_dst);

    int ld_t = rows + cases[c][3];
    size_t nt = (size_t) cols * ld_t;
    g_autofree float *want_t = rand_vec (&rng, nt, 1);
    float *d_t = dup_to_device (want_t, nt);
    be->ops->transpose (ex, want_t, ld_t, src, ld_src, rows, cols);
    CUDA_OK (moshi_k_transpose (stream, d_t, ld_t, d_src, ld_src, rows, cols));
    g_autofree float *got_t = g_new (float, nt);
    from_device (got_t, d_t, nt);
    g_snprintf (what, sizeof what, "transpose case %u", c);
    assert_close_f32 (got_t, want_t, nt, what);
    cudaFree (d_t);
    cudaFree (d_src);
  }
}
END_TEST

static uint16_t *
rand_bf16 (MoshiTestRng *rng, size_t n, float scale)
{
  g_autofree float *f = rand_vec (rng, n, scale);
  uint16_t *b = g_new (uint16_t, MAX (n, 1));
  for (size_t i = 0; i < n; i++) {
    uint32_t u;
    memcpy (&u, &f[i], 4);
    b[i] = (uint16_t) (u >> 16);
  }
  return b;
}

START_TEST (test_linear_bf16)
{
  static const int cases[][6] = {
    /* rows, n_out, n_in, ld pad, weight row offset (unaligned rows), beta 0/1 */
    { 1, 1, 8, 0, 0, 0 }, { 1, 300, 256, 0, 0, 1 }, { 2, 33, 13, 3, 0, 0 }, { 3, 65, 512, 1, 1, 1 },
    { 4, 9, 2048, 0, 0, 0 }, { 5, 17, 40, 2, 0, 1 }, { 6, 100, 7, 0, 0, 0 }, { 7, 31, 96, 5, 3, 1 },
    { 8, 257, 1000, 0, 0, 0 }, { 8, 64, 4096, 4, 0, 1 },
    /* batched decode: chunks of 8 rows, a partial last chunk */
    { 9, 40, 64, 0, 0, 0 }, { 17, 33, 120, 2, 1, 1 }, { 32, 70, 256, 0, 0, 0 },
    { 64, 19, 96, 1, 0, 1 },
  };
  MoshiTestRng rng;
  moshi_test_rng_init (&rng, 22);
  for (guint c = 0; c < G_N_ELEMENTS (cases); c++)
    for (int with_bias = 0; with_bias < 2; with_bias++) {
      int rows = cases[c][0], n_out = cases[c][1], n_in = cases[c][2];
      int ld_src = n_in + cases[c][3], ld_dst = n_out + cases[c][3], off = cases[c][4];
      float beta = (float) cases[c][5];
      size_t nw = (size_t) (n_out + off) * n_in, ns = (size_t) rows * ld_src;
      size_t nd = (size_t) rows * ld_dst;
      g_autofree uint16_t *w = rand_bf16 (&rng, nw, 1);
      g_autofree float *src = rand_vec (&rng, ns, 1);
      g_autofree float *bias = rand_vec (&rng, n_out, 1);
      g_autofree float *want = rand_vec (&rng, nd, 1);
      if (beta == 0.0f)         /* dst is not read */
        for (size_t i = 0; i < nd; i += 2)
          want[i] = NAN;
      uint16_t *d_w = cuda_test_upload (w, nw * 2);
      float *d_src = dup_to_device (src, ns), *d_bias = dup_to_device (bias, n_out);
      float *d_dst = dup_to_device (want, nd);
      /* a view starting off rows into the matrix: rows no longer 16-byte aligned */
      MoshiWeight W = { .dtype = MOSHI_DTYPE_BF16, .ndim = 2, .shape = { n_out, n_in },
        .data = w + (size_t) off * n_in };
      MoshiWeight B = host_weight (bias, 1, n_out, 0, 0);
      if (beta == 0.0f)
        for (int r = 0; r < rows; r++)
          for (int o = 0; o < n_out; o++)
            want[(size_t) r * ld_dst + o] = 0.0f;    /* the CPU op reads dst with beta 0 */
      be->ops->linear (ex, want, ld_dst, src, ld_src, &W, with_bias ? &B : NULL, rows, beta);
      CUDA_OK (moshi_k_linear_bf16_gemv (stream, d_dst, ld_dst, d_src, ld_src,
          d_w + (size_t) off * n_in, n_out, n_in, with_bias ? d_bias : NULL, rows, beta));
      g_autofree float *got = g_new (float, nd);
      from_device (got, d_dst, nd);
      char what[96];
      g_snprintf (what, sizeof what, "linear_bf16_gemv case %u bias %d", c, with_bias);
      assert_close_f32 (got, want, nd, what);
      cudaFree (d_w);
      cudaFree (d_src);
      cudaFree (d_bias);
      cudaFree (d_dst);
    }
  ck_assert_int_eq (moshi_k_linear_bf16_gemv (stream, NULL, 4, NULL, 4, NULL, 4, 4, NULL,
      MOSHI_K_GEMV_MAX_ROWS + 1, 0.0f), cudaErrorInvalidValue);

  /* the pieces of the many-row path: conversion, bias */
  size_t n = 1001;
  g_autofree uint16_t *b16 = rand_bf16 (&rng, n, 3);
  g_autofree float *want = g_new (float, n);
  moshi_convert_to_f32 (want, b16, MOSHI_DTYPE_BF16, n);
  uint16_t *d_b16 = cuda_test_upload (b16, n * 2);
  float *d_f = dup_to_device (want, n);
  CUDA_OK (cudaMemset (d_f, 0xff, n * 4));
  CUDA_OK (moshi_k_bf16_to_f32 (stream, d_f, d_b16, n));
  g_autofree float *got = g_new (float, n);
  from_device (got, d_f, n);
  ck_assert_int_eq (memcmp (got, want, n * 4), 0);
  cudaFree (d_b16);
  cudaFree (d_f);

  int rows = 11, cols = 300, ld = 307;
  g_autofree float *x = rand_vec (&rng, (size_t) rows * ld, 1);
  g_autofree float *bias = rand_vec (&rng, cols, 1);
  float *d_x = dup_to_device (x, (size_t) rows * ld), *d_bias = dup_to_device (bias, cols);
  for (int r = 0; r < rows; r++)
    for (int i = 0; i < cols; i++)
      x[(size_t) r * ld + i] += bias[i];
  CUDA_OK (moshi_k_add_bias (stream, d_x, ld, d_bias, rows, cols));
  g_autofree float *got_x = g_new (float, (size_t) rows * ld);
  from_device (got_x, d_x, (size_t) rows * ld);
  assert_close_f32 (got_x, x, (size_t) rows * ld, "add_bias");
  cudaFree (d_x);
  cudaFree (d_bias);
}
END_TEST

START_TEST (test_bad_shapes)
{
  /* shapes the kernels refuse, without touching memory */
  ck_assert_int_eq (moshi_k_elu_2d (stream, NULL, 3, NULL, 4, 2, 5), cudaErrorInvalidValue);
  ck_assert_int_eq (moshi_k_rope (stream, NULL, 10, 1, 1, 7, 0, 1e4f), cudaErrorInvalidValue);
  ck_assert_int_eq (moshi_k_attention (stream, NULL, 64, NULL, 64, NULL, NULL, 20000, 1, 64, 0,
      1, 100, 1.0f, NULL, 0), cudaErrorInvalidValue);
  /* empty problems launch nothing */
  ck_assert_int_eq (moshi_k_layer_norm (stream, NULL, 4, NULL, 4, NULL, NULL, 1e-5f, 0, 4),
      cudaSuccess);
  ck_assert_int_eq (moshi_k_gelu (stream, NULL, 0), cudaSuccess);
}
END_TEST

static Suite *
kernels_suite (void)
{
  Suite *s = suite_create ("cuda-kernels");
  TCase *tc = tcase_create ("ops");
  tcase_add_checked_fixture (tc, setup, teardown);
  tcase_set_timeout (tc, 900);
  tcase_add_test (tc, test_elu_2d);
  tcase_add_test (tc, test_gelu);
  tcase_add_test (tc, test_add_scaled);
  tcase_add_test (tc, test_gated_act);
  tcase_add_test (tc, test_layer_norm);
  tcase_add_test (tc, test_rms_norm);
  tcase_add_test (tc, test_embedding);
  tcase_add_test (tc, test_add_sin_embedding);
  tcase_add_test (tc, test_rope);
  tcase_add_test (tc, test_kv_write);
  tcase_add_test (tc, test_attention);
  tcase_add_test (tc, test_decode_rows);
  tcase_add_test (tc, test_e4m3);
  tcase_add_test (tc, test_sample);
  tcase_add_test (tc, test_conv1d);
  tcase_add_test (tc, test_conv_transpose1d);
  tcase_add_test (tc, test_rvq);
  tcase_add_test (tc, test_copy_transpose);
  tcase_add_test (tc, test_linear_bf16);
  tcase_add_test (tc, test_bad_shapes);
  suite_add_tcase (s, tc);
  return s;
}

int
main (void)
{
  cuda_test_require_device ();
#ifdef MOSHI_TEST_EMU
  printf ("CUDA emulator, schedule %s\n",
      moshi_emu_get_schedule () == MOSHI_EMU_SCHEDULE_FORWARD ? "forward"
      : moshi_emu_get_schedule () == MOSHI_EMU_SCHEDULE_REVERSE ? "reverse" : "random");
#endif
  return moshi_test_run_suite (kernels_suite ());
}
