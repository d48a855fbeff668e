/* Every CPU op against a plain double-precision reference on random inputs, at sizes with
 * SIMD tails and partial parallel chunks, with one and two threads. */
#include "test-support.h"

#include "moshi-backend.h"

#include <math.h>
#include <string.h>

static MoshiBackend *be;
static MoshiExec *ex1, *ex2;

static void
setup (void)
{
  GError *error = NULL;
  be = moshi_backend_open (MOSHI_DEVICE_CPU, &error);
  ck_assert_ptr_nonnull (be);
  ex1 = moshi_exec_new (be, 1, &error);
  ex2 = moshi_exec_new (be, 2, &error);
  ck_assert_ptr_nonnull (ex1);
  ck_assert_ptr_nonnull (ex2);
}

static void
teardown (void)
{
  moshi_exec_free (ex1);
  moshi_exec_free (ex2);
  moshi_backend_unref (be);
}

static MoshiExec *
exec_for (int i)
{
  return i % 2 ? ex2 : ex1;
}

static float *
rand_vec (MoshiTestRng *rng, gsize n, float scale)
{
  float *x = g_new (float, MAX (n, 1));
  moshi_test_fill_uniform (rng, x, n, scale);
  return x;
}

static MoshiWeight
make_weight (float *data, int ndim, int64_t d0, int64_t d1, int64_t d2)
{
  MoshiWeight w = { .dtype = MOSHI_DTYPE_F32, .ndim = ndim, .shape = { d0, d1, d2 }, .data = data };
  return w;
}

#define assert_close(got, want, n, tol) \
  do { \
    double rel_ = moshi_test_rel_l2 ((got), (want), (n)); \
    ck_assert_msg (rel_ <= (tol), "%s: relative error %.3g > %.3g (n=%zu)", #got, rel_, (double) (tol), (size_t) (n)); \
  } while (0)

/* ------------------------------------------------------------------ conv1d */

static void
ref_conv1d (float *dst, int ld_dst, const float *src, int ld_src, const float *w, const float *b,
    int c_in, int c_out, int k, int stride, int dil, int groups, int t_out, float beta)
{
  int cin_g = c_in / groups, cout_g = c_out / groups;
  for (int o = 0; o < c_out; o++) {
    int g = o / cout_g;
    for (int t = 0; t < t_out; t++) {
      double acc = b ? b[o] : 0;
      for (int i = 0; i < cin_g; i++)
        for (int j = 0; j < k; j++)
          acc += (double) w[((gsize) o * cin_g + i) * k + j]
              * src[(gsize) (g * cin_g + i) * ld_src + t * stride + j * dil];
      dst[(gsize) o * ld_dst + t] = (float) (beta * dst[(gsize) o * ld_dst + t] + acc);
    }
  }
}

START_TEST (test_conv1d)
{
  static const int cases[][7] = {
    /* c_in, c_out, k, stride, dilation, groups, t_out */
    { 1, 8, 7, 1, 1, 1, 97 },
    { 5, 3, 3, 1, 2, 1, 33 },
    { 16, 32, 8, 4, 1, 1, 19 },
    { 12, 6, 1, 1, 1, 1, 65 },
    { 8, 8, 4, 2, 1, 2, 9 },
    { 64, 128, 16, 8, 1, 1, 2 },
    { 3, 1, 3, 1, 1, 1, 1 },
    { 33, 17, 10, 5, 1, 1, 7 },
  };
  MoshiTestRng rng;
  moshi_test_rng_init (&rng, 1);
  for (guint c = 0; c < G_N_ELEMENTS (cases); c++) {
    int c_in = cases[c][0], c_out = cases[c][1], k = cases[c][2], stride = cases[c][3];
    int dil = cases[c][4], groups = cases[c][5], t_out = cases[c][6];
    int t_in = (t_out - 1) * stride + (k - 1) * dil + 1;
    int ld_src = t_in + 3, ld_dst = t_out + 5;
    for (int variant = 0; variant < 4; variant++) {
      gboolean with_bias = variant & 1;
      float beta = variant >= 2 ? 1.0f : 0.0f;
      g_autofree float *src = rand_vec (&rng, (gsize) c_in * ld_src, 1);
      g_autofree float *w = rand_vec (&rng, (gsize) c_out * (c_in / groups) * k, 0.5f);
      g_autofree float *b = rand_vec (&rng, c_out, 0.5f);
      g_autofree float *got = rand_vec (&rng, (gsize) c_out * ld_dst, 1);
      g_autofree float *want = g_memdup2 (got, sizeof (float) * c_out * ld_dst);
      MoshiWeight W = make_weight (w, 3, c_out, c_in / groups, k);
      MoshiWeight B = make_weight (b, 1, c_out, 0, 0);
      MoshiExec *ex = exec_for (variant + c);
      be->ops->conv1d (ex, got, ld_dst, src, ld_src, &W, with_bias ? &B : NULL, stride, dil,
          groups, t_out, beta, 1, 0, 0);
      ref_conv1d (want, ld_dst, src, ld_src, w, with_bias ? b : NULL, c_in, c_out, k, stride, dil,
          groups, t_out, beta);
      assert_close (got, want, (gsize) c_out * ld_dst, 1e-5);
    }
  }
}
END_TEST

/* n streams through one conv1d: side by side (src_step = a stream's window, dst_step = its
 * output columns: one product) and apart (steps larger than that: gathered and scattered),
 * each stream equal to the reference of its own window, within the single-stream tolerance;
 * the columns between streams are not written. */
START_TEST (test_conv1d_streams)
{
  static const int cases[][6] = {
    /* c_in, c_out, k, stride, groups, t_out */
    { 1, 8, 7, 1, 1, 40 },
    { 16, 32, 8, 4, 1, 3 },
    { 12, 6, 1, 1, 1, 5 },
    { 8, 8, 4, 2, 2, 2 },
    { 64, 48, 3, 1, 1, 2 },
  };
  MoshiTestRng rng;
  moshi_test_rng_init (&rng, 11);
  const int n = 5;
  for (guint c = 0; c < G_N_ELEMENTS (cases); c++) {
    int c_in = cases[c][0], c_out = cases[c][1], k = cases[c][2], stride = cases[c][3];
    int groups = cases[c][4], t_out = cases[c][5];
    int t_in = (t_out - 1) * stride + k;
    for (int variant = 0; variant < 4; variant++) {
      gboolean apart = variant & 1;
      float beta = variant >= 2 ? 1.0f : 0.0f;
      int src_step = t_in + (apart ? 3 : 0), dst_step = t_out + (apart ? 2 : 0);
      int ld_src = n * src_step + 1, ld_dst = n * dst_step + 4;
      g_autofree float *src = rand_vec (&rng, (gsize) c_in * ld_src, 1);
      g_autofree float *w = rand_vec (&rng, (gsize) c_out * (c_in / groups) * k, 0.5f);
      g_autofree float *b = rand_vec (&rng, c_out, 0.5f);
      g_autofree float *got = rand_vec (&rng, (gsize) c_out * ld_dst, 1);
      g_autofree float *want = g_memdup2 (got, sizeof (float) * c_out * ld_dst);
      MoshiWeight W = make_weight (w, 3, c_out, c_in / groups, k);
      MoshiWeight B = make_weight (b, 1, c_out, 0, 0);
      be->ops->conv1d (exec_for (variant + c), got, ld_dst, src, ld_src, &W, &B, stride, 1,
          groups, t_out, beta, n, src_step, dst_step);
      for (int s = 0; s < n; s++)
        ref_conv1d (want + s * dst_step, ld_dst, src + s * src_step, ld_src, w, b, c_in, c_out,
            k, stride, 1, groups, t_out, beta);
      assert_close (got, want, (gsize) c_out * ld_dst, 1e-5);
    }
  }
}
END_TEST

/* ------------------------------------------------------------------ conv_transpose1d */

/* Full transposed conv of the whole input; the causal streaming result is its first
 * t_in * stride columns. */
static void
ref_conv_tr_full (double *z, const float *x, int t_in, const float *w, const float *b, int c_in,
    int c_out, int k, int stride, int groups)
{
  int cin_g = c_in / groups, cout_g = c_out / groups;
  int len = (t_in - 1) * stride + k;
  for (int o = 0; o < c_out; o++)
    for (int n = 0; n < len; n++)
      z[(gsize) o * len + n] = b ? b[o] : 0;
  for (int i = 0; i < c_in; i++) {
    int g = i / cin_g;
    for (int ol = 0; ol < cout_g; ol++) {
      int o = g * cout_g + ol;
      for (int t = 0; t < t_in; t++)
        for (int j = 0; j < k; j++)
          z[(gsize) o * len + t * stride + j] += (double) w[((gsize) i * cout_g + ol) * k + j]
              * x[(gsize) i * t_in + t];
    }
  }
}

START_TEST (test_conv_transpose1d_streaming)
{
  static const int cases[][5] = {
    /* c_in, c_out, k, stride, groups */
    { 16, 8, 16, 8, 1 },
    { 5, 7, 6, 3, 1 },
    { 12, 12, 4, 2, 12 },
    { 64, 32, 8, 4, 1 },
    { 3, 1, 2, 1, 1 },
  };
  MoshiTestRng rng;
  moshi_test_rng_init (&rng, 2);
  const int chunks[] = { 1, 3, 2, 1, 4 };
  int t_total = 0;
  for (guint i = 0; i < G_N_ELEMENTS (chunks); i++)
    t_total += chunks[i];
  for (guint c = 0; c < G_N_ELEMENTS (cases); c++) {
    int c_in = cases[c][0], c_out = cases[c][1], k = cases[c][2], stride = cases[c][3];
    int groups = cases[c][4];
    for (int with_bias = 0; with_bias < 2; with_bias++) {
      g_autofree float *x = rand_vec (&rng, (gsize) c_in * t_total, 1);
      g_autofree float *w = rand_vec (&rng, (gsize) c_in * (c_out / groups) * k, 0.5f);
      g_autofree float *b = rand_vec (&rng, c_out, 0.5f);
      MoshiWeight W = make_weight (w, 3, c_in, c_out / groups, k);
      MoshiWeight B = make_weight (b, 1, c_out, 0, 0);
      int len = (t_total - 1) * stride + k;
      g_autofree double *full = g_new (double, (gsize) c_out * len);
      ref_conv_tr_full (full, x, t_total, w, with_bias ? b : NULL, c_in, c_out, k, stride, groups);

      g_autofree float *carry = g_new0 (float, (gsize) c_out * (k - stride));
      int out_len = t_total * stride;
      g_autofree float *got = g_new0 (float, (gsize) c_out * out_len);
      int t0 = 0;
      for (guint ch = 0; ch < G_N_ELEMENTS (chunks); ch++) {
        int t_in = chunks[ch];
        /* the chunk's input as its own [c_in, t_in] block with a padded stride */
        int ld_src = t_in + 2;
        g_autofree float *xs = g_new0 (float, (gsize) c_in * ld_src);
        for (int i = 0; i < c_in; i++)
          memcpy (xs + (gsize) i * ld_src, x + (gsize) i * t_total + t0, t_in * sizeof (float));
        be->ops->conv_transpose1d (exec_for (ch), got + (gsize) t0 * stride, out_len, xs, ld_src,
            &W, with_bias ? &B : NULL, carry, stride, groups, t_in, 1, 0, 0, 0);
        t0 += t_in;
      }
      g_autofree float *want = g_new (float, (gsize) c_out * out_len);
      for (int o = 0; o < c_out; o++)
        for (int n = 0; n < out_len; n++)
          want[(gsize) o * out_len + n] = (float) full[(gsize) o * len + n];
      assert_close (got, want, (gsize) c_out * out_len, 1e-5);
      /* The carry holds the tail of the full output, without the bias. */
      int overlap = k - stride;
      for (int o = 0; o < c_out; o++)
        for (int j = 0; j < overlap; j++) {
          double tail = full[(gsize) o * len + out_len + j] - (with_bias ? b[o] : 0);
          ck_assert_msg (fabs (carry[(gsize) o * overlap + j] - tail) <= 1e-4 * (1 + fabs (tail)),
              "carry[%d,%d] = %g, expected %g", o, j, carry[(gsize) o * overlap + j], tail);
        }
    }
  }
}
END_TEST

/* ------------------------------------------------------------------ linear, norms, activations */

START_TEST (test_linear)
{
  static const int cases[][3] = { { 1, 1, 1 }, { 2, 512, 1536 }, { 3, 17, 33 }, { 7, 64, 5 }, { 50, 40, 300 } };
  MoshiTestRng rng;
  moshi_test_rng_init (&rng, 3);
  for (guint c = 0; c < G_N_ELEMENTS (cases); c++) {
    int rows = cases[c][0], n_in = cases[c][1], n_out = cases[c][2];
    for (int variant = 0; variant < 4; variant++) {
      float beta = variant & 1 ? 1.0f : 0.0f;
      gboolean with_bias = variant & 2;
      int ld_src = n_in + 1, ld_dst = n_out + 3;
      g_autofree float *x = rand_vec (&rng, (gsize) rows * ld_src, 1);
      g_autofree float *w = rand_vec (&rng, (gsize) n_out * n_in, 0.3f);
      g_autofree float *b = rand_vec (&rng, n_out, 1);
      g_autofree float *got = rand_vec (&rng, (gsize) rows * ld_dst, 1);
      g_autofree float *want = g_memdup2 (got, sizeof (float) * rows * ld_dst);
      MoshiWeight W = make_weight (w, 2, n_out, n_in, 0), B = make_weight (b, 1, n_out, 0, 0);
      be->ops->linear (exec_for (variant), got, ld_dst, x, ld_src, &W, with_bias ? &B : NULL, rows, beta);
      for (int r = 0; r < rows; r++)
        for (int o = 0; o < n_out; o++) {
          double acc = with_bias ? b[o] : 0;
          for (int i = 0; i < n_in; i++)
            acc += (double) x[(gsize) r * ld_src + i] * w[(gsize) o * n_in + i];
          want[(gsize) r * ld_dst + o] = (float) (beta * want[(gsize) r * ld_dst + o] + acc);
        }
      assert_close (got, want, (gsize) rows * ld_dst, 1e-5);
    }
  }
}
END_TEST

START_TEST (test_layer_norm)
{
  MoshiTestRng rng;
  moshi_test_rng_init (&rng, 4);
  const int dims[] = { 1, 7, 32, 512, 1000 };
  for (guint c = 0; c < G_N_ELEMENTS (dims); c++) {
    int d = dims[c], rows = 3, ld = d + 2;
    g_autofree float *x = rand_vec (&rng, (gsize) rows * ld, 3);
    for (int i = 0; i < rows * ld; i++)
      x[i] += 5;                /* a large mean, as real activations have */
    g_autofree float *w = rand_vec (&rng, d, 1), *b = rand_vec (&rng, d, 1);
    g_autofree float *got = g_new0 (float, (gsize) rows * ld), *want = g_new0 (float, (gsize) rows * ld);
    MoshiWeight W = make_weight (w, 1, d, 0, 0), B = make_weight (b, 1, d, 0, 0);
    be->ops->layer_norm (ex1, got, ld, x, ld, &W, &B, 1e-5f, rows, d);
    for (int r = 0; r < rows; r++) {
      double mean = 0, var = 0;
      for (int i = 0; i < d; i++)
        mean += x[r * ld + i];
      mean /= d;
      for (int i = 0; i < d; i++)
        var += (x[r * ld + i] - mean) * (x[r * ld + i] - mean);
      var /= d;
      for (int i = 0; i < d; i++)
        want[r * ld + i] = (float) ((x[r * ld + i] - mean) / sqrt (var + 1e-5) * w[i] + b[i]);
    }
    assert_close (got, want, (gsize) rows * ld, 1e-5);
  }
}
END_TEST

START_TEST (test_elementwise)
{
  MoshiTestRng rng;
  moshi_test_rng_init (&rng, 5);
  const int sizes[] = { 1, 15, 16, 17, 33, 1000, 40000 };
  for (guint c = 0; c < G_N_ELEMENTS (sizes); c++) {
    int n = sizes[c];
    g_autofree float *x = rand_vec (&rng, n, 6);
    x[0] = -100.0f;              /* deep in the saturated ELU range */
    g_autofree float *got = g_new (float, n), *want = g_new (float, n);
    /* ELU as a 2-D op: one row, and out of place */
    be->ops->elu_2d (exec_for (c), got, n, x, n, 1, n);
    for (int i = 0; i < n; i++)
      want[i] = (float) (x[i] > 0 ? x[i] : expm1 ((double) x[i]));
    ck_assert_msg (moshi_test_max_abs_diff (got, want, n) <= 2e-7, "elu max diff %g",
        moshi_test_max_abs_diff (got, want, n));
    memcpy (got, x, n * sizeof (float));
    be->ops->gelu (ex1, got, n);
    for (int i = 0; i < n; i++)
      want[i] = (float) (0.5 * x[i] * (1 + erf (x[i] / sqrt (2.0))));
    assert_close (got, want, n, 1e-6);
  }
  /* ELU in place over a strided 2-D block leaves the padding alone */
  int rows = 5, cols = 37, ld = 40;
  g_autofree float *blk = rand_vec (&rng, rows * ld, 2);
  g_autofree float *orig = g_memdup2 (blk, rows * ld * sizeof (float));
  be->ops->elu_2d (ex2, blk, ld, blk, ld, rows, cols);
  for (int r = 0; r < rows; r++)
    for (int c = 0; c < ld; c++) {
      float x = orig[r * ld + c];
      float want = c < cols ? (float) (x > 0 ? x : expm1 ((double) x)) : x;
      ck_assert_msg (fabsf (blk[r * ld + c] - want) <= 2e-7f, "elu_2d [%d,%d]", r, c);
    }
}
END_TEST

START_TEST (test_add_scaled_and_moves)
{
  MoshiTestRng rng;
  moshi_test_rng_init (&rng, 6);
  int rows = 3, cols = 19, ld_x = 21, ld_y = 23;
  g_autofree float *x = rand_vec (&rng, rows * ld_x, 1), *y = rand_vec (&rng, rows * ld_y, 1);
  g_autofree float *s = rand_vec (&rng, cols, 1);
  g_autofree float *want = g_memdup2 (x, rows * ld_x * sizeof (float));
  MoshiWeight S = make_weight (s, 1, cols, 0, 0);
  be->ops->add_scaled (ex1, x, ld_x, y, ld_y, &S, rows, cols);
  for (int r = 0; r < rows; r++)
    for (int c = 0; c < cols; c++)
      want[r * ld_x + c] += s[c] * y[r * ld_y + c];
  assert_close (x, want, rows * ld_x, 1e-7);
  be->ops->add_scaled (ex1, x, ld_x, y, ld_y, NULL, rows, cols);
  for (int r = 0; r < rows; r++)
    for (int c = 0; c < cols; c++)
      want[r * ld_x + c] += y[r * ld_y + c];
  assert_close (x, want, rows * ld_x, 1e-7);

  /* transpose of a block larger than the cache tile, with padded strides */
  int tr_rows = 70, tr_cols = 45;
  g_autofree float *a = rand_vec (&rng, tr_rows * 50, 1), *t = g_new0 (float, tr_cols * 80);
  be->ops->transpose (ex1, t, 80, a, 50, tr_rows, tr_cols);
  for (int r = 0; r < tr_rows; r++)
    for (int c = 0; c < tr_cols; c++)
      ck_assert (t[c * 80 + r] == a[r * 50 + c]);

  /* copy_2d shifting history to the front of the same rows (overlapping) */
  int hist = 6, ld = 8;
  g_autofree float *win = rand_vec (&rng, 4 * ld, 1);
  g_autofree float *before = g_memdup2 (win, 4 * ld * sizeof (float));
  be->ops->copy_2d (ex1, win, ld, win + 2, ld, 4, hist);
  for (int r = 0; r < 4; r++)
    for (int c = 0; c < hist; c++)
      ck_assert (win[r * ld + c] == before[r * ld + c + 2]);
}
END_TEST

/* ------------------------------------------------------------------ attention */

START_TEST (test_rope)
{
  MoshiTestRng rng;
  moshi_test_rng_init (&rng, 7);
  int heads = 3, hd = 8, t = 4, ld = heads * hd + 5, pos0 = 1234;
  g_autofree float *x = rand_vec (&rng, t * ld, 1);
  g_autofree float *want = g_memdup2 (x, t * ld * sizeof (float));
  be->ops->rope (ex1, x, ld, t, heads, hd, pos0, 10000.0f);
  for (int r = 0; r < t; r++)
    for (int h = 0; h < heads; h++)
      for (int i = 0; i < hd / 2; i++) {
        double freq = exp (-log (10000.0) * 2 * i / hd);
        double a = (pos0 + r) * freq;
        float *p = want + r * ld + h * hd + 2 * i;
        double re = p[0], im = p[1];
        p[0] = (float) (re * cos (a) - im * sin (a));
        p[1] = (float) (re * sin (a) + im * cos (a));
      }
  /* f32 angles at position ~1e3 carry ~1e-4 rad of rounding, as in the reference */
  assert_close (x, want, t * ld, 5e-4);
  for (int r = 0; r < t; r++)
    for (int c = heads * hd; c < ld; c++)
      ck_assert (x[r * ld + c] == want[r * ld + c]);
}
END_TEST

/* Reference attention keeping the whole history: a key is visible when it is among the last
 * `capacity` positions written and within the context window of the query. */
/* n streams through one conv_transpose1d, each with its own carry, for two calls: equal to
 * each stream run alone with its carry (side by side: one product; apart: one each), within
 * the single-stream tolerance. */
START_TEST (test_conv_transpose1d_streams)
{
  static const int cases[][5] = {
    /* c_in, c_out, k, stride, groups */
    { 16, 8, 16, 8, 1 },
    { 12, 12, 4, 2, 12 },
    { 5, 7, 6, 3, 1 },
  };
  MoshiTestRng rng;
  moshi_test_rng_init (&rng, 12);
  const int n = 4, t_in = 2;
  for (guint c = 0; c < G_N_ELEMENTS (cases); c++) {
    int c_in = cases[c][0], c_out = cases[c][1], k = cases[c][2], stride = cases[c][3];
    int groups = cases[c][4], overlap = c_out * (k - stride);
    for (int apart = 0; apart < 2; apart++) {
      int src_step = t_in + 2 * apart, dst_step = t_in * stride + 3 * apart;
      int carry_step = overlap + 5 * apart;
      int ld_src = n * src_step, ld_dst = n * dst_step;
      g_autofree float *w = rand_vec (&rng, (gsize) c_in * (c_out / groups) * k, 0.5f);
      g_autofree float *b = rand_vec (&rng, c_out, 0.5f);
      MoshiWeight W = make_weight (w, 3, c_in, c_out / groups, k);
      MoshiWeight B = make_weight (b, 1, c_out, 0, 0);
      g_autofree float *carry = rand_vec (&rng, (gsize) n * carry_step, 1);
      g_autofree float *carry1 = g_memdup2 (carry, sizeof (float) * n * carry_step);
      g_autofree float *got = g_new0 (float, (gsize) c_out * ld_dst);
      g_autofree float *want = g_new0 (float, (gsize) c_out * ld_dst);
      for (int call = 0; call < 2; call++) {
        g_autofree float *x = rand_vec (&rng, (gsize) c_in * ld_src, 1);
        be->ops->conv_transpose1d (exec_for (call + c), got, ld_dst, x, ld_src, &W, &B, carry,
            stride, groups, t_in, n, src_step, dst_step, carry_step);
        for (int s = 0; s < n; s++)
          be->ops->conv_transpose1d (ex1, want + s * dst_step, ld_dst, x + s * src_step, ld_src,
              &W, &B, carry1 + s * carry_step, stride, groups, t_in, 1, 0, 0, 0);
        assert_close (got, want, (gsize) c_out * ld_dst, 1e-6);
        assert_close (carry, carry1, (gsize) n * carry_step, 1e-6);
      }
    }
  }
}
END_TEST

/* One call of 2^22 output columns per channel (as 2048 Mimi frames at the last SEANet stage):
 * the overlap-add row no longer fits a thread stack. Taps [1, 2], stride 1: y[t] = x[t] +
 * 2 x[t - 1], with the carry holding the last 2 x. */
START_TEST (test_conv_transpose1d_long_call)
{
  int t_in = 1 << 22;
  g_autofree float *x = g_new (float, t_in);
  for (int t = 0; t < t_in; t++)
    x[t] = (float) (t % 7);
  float w[2] = { 1, 2 }, carry[1] = { 0 };
  MoshiWeight W = make_weight (w, 3, 1, 1, 2);
  g_autofree float *y = g_new0 (float, t_in);
  be->ops->conv_transpose1d (ex1, y, t_in, x, t_in, &W, NULL, carry, 1, 1, t_in, 1, 0, 0, 0);
  for (int t = 1; t < t_in; t += 4099)
    ck_assert_float_eq (y[t], x[t] + 2 * x[t - 1]);
  ck_assert_float_eq (carry[0], 2 * x[t_in - 1]);
}
END_TEST

/* A capacity whose scores row is larger than a thread stack (16 MiB of floats): only the first
 * slot is written, so the output is its value row. */
START_TEST (test_attention_huge_capacity)
{
  int cap = 1 << 22, heads = 1, hd = 2;
  g_autofree float *kc = g_new0 (float, (gsize) cap * heads * hd);
  g_autofree float *vc = g_new0 (float, (gsize) cap * heads * hd);
  float q[2] = { 1, 0.5f }, k[2] = { 0.25f, -1 }, v[2] = { 3, -7 }, got[2] = { 0, 0 };
  be->ops->kv_write (ex1, kc, vc, cap, k, hd, v, hd, hd, 0, 1);
  be->ops->attention (ex1, got, hd, q, hd, kc, vc, cap, heads, hd, 0, 1, cap, 1.0f);
  ck_assert_float_eq (got[0], 3);
  ck_assert_float_eq (got[1], -7);
}
END_TEST

START_TEST (test_attention_ring)
{
  MoshiTestRng rng;
  moshi_test_rng_init (&rng, 8);
  static const int cases[][5] = {
    /* heads, head_dim, capacity, context, steps per call */
    { 2, 8, 6, 6, 2 },
    { 1, 16, 5, 4, 3 },
    { 4, 4, 12, 12, 1 },
    { 2, 32, 9, 7, 4 },
  };
  for (guint c = 0; c < G_N_ELEMENTS (cases); c++) {
    int heads = cases[c][0], hd = cases[c][1], cap = cases[c][2], context = cases[c][3];
    int t = cases[c][4], width = heads * hd, total = 5 * cap + 1;
    total -= total % t;
    g_autofree float *qs = rand_vec (&rng, (gsize) total * width, 2);
    g_autofree float *ks = rand_vec (&rng, (gsize) total * width, 2);
    g_autofree float *vs = rand_vec (&rng, (gsize) total * width, 1);
    g_autofree float *kc = g_new0 (float, (gsize) cap * width), *vc = g_new0 (float, (gsize) cap * width);
    g_autofree float *got = g_new0 (float, (gsize) t * width), *want = g_new0 (float, (gsize) t * width);
    float scale = 1.0f / sqrtf (hd);
    for (int pos0 = 0; pos0 < total; pos0 += t) {
      MoshiExec *ex = exec_for (pos0 / t);
      be->ops->kv_write (ex, kc, vc, cap, ks + (gsize) pos0 * width, width,
          vs + (gsize) pos0 * width, width, width, pos0, t);
      be->ops->attention (ex, got, width, qs + (gsize) pos0 * width, width, kc, vc, cap, heads,
          hd, pos0, t, context, scale);
      int end = pos0 + t;
      for (int i = 0; i < t; i++) {
        int qp = pos0 + i;
        for (int h = 0; h < heads; h++) {
          double sc[total], mx = -INFINITY, sum = 0;
          for (int kp = 0; kp < end; kp++) {
            sc[kp] = -INFINITY;
            if (kp < end - cap || qp - kp < 0 || qp - kp >= context)
              continue;
            double dot = 0;
            for (int d = 0; d < hd; d++)
              dot += (double) qs[(gsize) qp * width + h * hd + d] * ks[(gsize) kp * width + h * hd + d];
            sc[kp] = dot * scale;
            mx = MAX (mx, sc[kp]);
          }
          for (int d = 0; d < hd; d++)
            want[i * width + h * hd + d] = 0;
          for (int kp = 0; kp < end; kp++)
            if (sc[kp] > -INFINITY)
              sum += exp (sc[kp] - mx);
          for (int kp = 0; kp < end; kp++) {
            if (sc[kp] == -INFINITY)
              continue;
            double p = exp (sc[kp] - mx) / sum;
            for (int d = 0; d < hd; d++)
              want[i * width + h * hd + d] += (float) (p * vs[(gsize) kp * width + h * hd + d]);
          }
        }
      }
      assert_close (got, want, (gsize) t * width, 1e-5);
    }
  }
}
END_TEST

/* ------------------------------------------------------------------ RVQ */

START_TEST (test_rvq)
{
  MoshiTestRng rng;
  moshi_test_rng_init (&rng, 9);
  int levels = 4, bins = 37, dim = 19, rows = 5;
  g_autofree float *books = g_new (float, (gsize) levels * bins * dim);
  g_autofree float *norms = g_new (float, (gsize) levels * bins);
  for (int l = 0; l < levels; l++)
    for (int b = 0; b < bins; b++) {
      double n = 0;
      for (int d = 0; d < dim; d++) {
        float v = moshi_test_rng_uniform (&rng) / (float) (1 << l);
        books[((gsize) l * bins + b) * dim + d] = v;
        n += (double) v * v;
      }
      norms[(gsize) l * bins + b] = (float) n;
    }
  g_autofree float *x = rand_vec (&rng, (gsize) rows * dim, 1);
  g_autofree float *residual = g_memdup2 (x, sizeof (float) * rows * dim);
  g_autofree int32_t *codes = g_new (int32_t, levels * rows);
  MoshiWeight B = make_weight (books, 3, levels, bins, dim), N = make_weight (norms, 2, levels, bins, 0);
  be->ops->rvq_encode (ex2, codes, rows, residual, dim, &B, &N, levels, rows);
  for (int r = 0; r < rows; r++) {
    double res[dim];
    for (int d = 0; d < dim; d++)
      res[d] = x[r * dim + d];
    for (int l = 0; l < levels; l++) {
      int best = 0;
      double best_d = INFINITY;
      for (int b = 0; b < bins; b++) {
        double dist = 0;
        for (int d = 0; d < dim; d++) {
          double diff = res[d] - books[((gsize) l * bins + b) * dim + d];
          dist += diff * diff;
        }
        if (dist < best_d) {
          best_d = dist;
          best = b;
        }
      }
      ck_assert_int_eq (codes[l * rows + r], best);
      for (int d = 0; d < dim; d++)
        res[d] -= books[((gsize) l * bins + best) * dim + d];
    }
    for (int d = 0; d < dim; d++)
      ck_assert (fabs (residual[r * dim + d] - res[d]) < 1e-5);
  }
  /* decode sums the chosen codewords */
  g_autofree float *dec = g_new0 (float, rows * dim);
  be->ops->rvq_decode (ex1, dec, dim, codes, rows, &B, levels, rows);
  for (int r = 0; r < rows; r++)
    for (int d = 0; d < dim; d++) {
      double s = 0;
      for (int l = 0; l < levels; l++)
        s += books[((gsize) l * bins + codes[l * rows + r]) * dim + d];
      ck_assert (fabs (dec[r * dim + d] - s) < 1e-5);
      /* decode(encode(x)) + residual == x */
      ck_assert (fabs (dec[r * dim + d] + residual[r * dim + d] - x[r * dim + d]) < 1e-5);
    }
}
END_TEST

/* ------------------------------------------------------------------ weights */

START_TEST (test_weight_views_and_conversion)
{
  /* F32 aligned -> borrowed view; BF16 matrix -> borrowed view; BF16 vector -> F32 copy */
  float f32[6] = { 1, 2, 3, 4, 5, 6 };
  uint16_t bf16[6];
  for (int i = 0; i < 6; i++)
    bf16[i] = moshi_f32_to_bf16 (f32[i] * 0.5f);
  MoshiTensorEntry e32 = { .name = "a", .dtype = MOSHI_DTYPE_F32, .ndim = 2, .shape = { 2, 3 },
    .data = f32, .nbytes = sizeof (f32) };
  MoshiTensorEntry e16 = { .name = "b", .dtype = MOSHI_DTYPE_BF16, .ndim = 2, .shape = { 2, 3 },
    .data = bf16, .nbytes = sizeof (bf16) };
  MoshiTensorEntry v16 = { .name = "c", .dtype = MOSHI_DTYPE_BF16, .ndim = 1, .shape = { 6 },
    .data = bf16, .nbytes = sizeof (bf16) };
  MoshiTensorEntry ei = { .name = "codes", .dtype = MOSHI_DTYPE_I64, .ndim = 1, .shape = { 1 },
    .data = f32, .nbytes = 8 };
  MoshiWeight w;
  GError *error = NULL;
  ck_assert (be->ops->weight_from_host (be, &w, &e32, NULL, &error));
  ck_assert_ptr_eq (w.data, f32);
  be->ops->weight_release (be, &w);
  ck_assert (be->ops->weight_from_host (be, &w, &e16, NULL, &error));
  ck_assert_ptr_eq (w.data, bf16);
  ck_assert_int_eq (w.dtype, MOSHI_DTYPE_BF16);
  be->ops->weight_release (be, &w);
  ck_assert (be->ops->weight_from_host (be, &w, &v16, NULL, &error));
  ck_assert_int_eq (w.dtype, MOSHI_DTYPE_F32);
  for (int i = 0; i < 6; i++)
    ck_assert_float_eq (((const float *) w.data)[i], f32[i] * 0.5f);
  be->ops->weight_release (be, &w);
  ck_assert (!be->ops->weight_from_host (be, &w, &ei, NULL, &error));
  moshi_assert_error_contains (error, "codes");
  g_clear_error (&error);
}
END_TEST

/* ------------------------------------------------------------------ LM ops */

static uint16_t *
to_bf16 (const float *x, gsize n, float *rounded)
{
  uint16_t *h = g_new (uint16_t, n);
  for (gsize i = 0; i < n; i++) {
    h[i] = moshi_f32_to_bf16 (x[i]);
    rounded[i] = moshi_bf16_to_f32 (h[i]);
  }
  return h;
}

START_TEST (test_linear_bf16)
{
  /* rows <= 8 take the row-dot path, more rows the blocked conversion path */
  static const int cases[][3] = { { 1, 40, 3 }, { 2, 64, 300 }, { 9, 33, 260 }, { 20, 16, 513 } };
  MoshiTestRng rng;
  moshi_test_rng_init (&rng, 10);
  for (guint c = 0; c < G_N_ELEMENTS (cases); c++) {
    int rows = cases[c][0], n_in = cases[c][1], n_out = cases[c][2];
    g_autofree float *x = rand_vec (&rng, (gsize) rows * n_in, 1);
    g_autofree float *w = rand_vec (&rng, (gsize) n_out * n_in, 0.3f);
    g_autofree float *wr = g_new (float, (gsize) n_out * n_in);
    g_autofree uint16_t *wh = to_bf16 (w, (gsize) n_out * n_in, wr);
    MoshiWeight W = { .dtype = MOSHI_DTYPE_BF16, .ndim = 2, .shape = { n_out, n_in }, .data = wh };
    g_autofree float *got = rand_vec (&rng, (gsize) rows * n_out, 1);
    g_autofree float *want = g_memdup2 (got, sizeof (float) * rows * n_out);
    float beta = c % 2 ? 1.0f : 0.0f;
    be->ops->linear (exec_for (c), got, n_out, x, n_in, &W, NULL, rows, beta);
    for (int r = 0; r < rows; r++)
      for (int o = 0; o < n_out; o++) {
        double acc = 0;
        for (int i = 0; i < n_in; i++)
          acc += (double) x[r * n_in + i] * wr[(gsize) o * n_in + i];
        want[r * n_out + o] = (float) (beta * want[r * n_out + o] + acc);
      }
    assert_close (got, want, (gsize) rows * n_out, 1e-5);
  }
}
END_TEST

/* Weight-only int8 (moshi_weight_int8_from_host): codes and scales by the documented rule, and
 * linear equal to the f32 product with the dequantized matrix, for few rows (whose activations
 * are staged in scratch) and many (dequantized blocks). */
START_TEST (test_linear_int8)
{
  static const int cases[][3] = { { 1, 40, 3 }, { 2, 64, 300 }, { 8, 33, 260 }, { 20, 16, 513 } };
  MoshiTestRng rng;
  moshi_test_rng_init (&rng, 12);
  GError *error = NULL;
  for (guint c = 0; c < G_N_ELEMENTS (cases); c++) {
    int rows = cases[c][0], n_in = cases[c][1], n_out = cases[c][2];
    g_autofree float *x = rand_vec (&rng, (gsize) rows * n_in, 1);
    g_autofree float *w = rand_vec (&rng, (gsize) n_out * n_in, 0.3f);
    MoshiTensorEntry e = { .name = "w", .dtype = MOSHI_DTYPE_F32, .ndim = 2,
      .shape = { n_out, n_in }, .data = w };
    MoshiWeight W;
    ck_assert_msg (moshi_weight_int8_from_host (be, &W, &e, &error), "%s",
        error ? error->message : "");
    ck_assert_int_eq (W.dtype, MOSHI_DTYPE_I8);
    const int8_t *q = W.data;
    for (int o = 0; o < n_out; o++) {
      float amax = 0;
      for (int i = 0; i < n_in; i++)
        amax = MAX (amax, fabsf (w[(gsize) o * n_in + i]));
      ck_assert (W.scales[o] == amax / 127.0f);
      for (int i = 0; i < n_in; i++)
        ck_assert_int_eq (q[(gsize) o * n_in + i], (int) lroundf (w[(gsize) o * n_in + i] / W.scales[o]));
    }
    g_autofree float *got = rand_vec (&rng, (gsize) rows * n_out, 1);
    g_autofree float *want = g_memdup2 (got, sizeof (float) * rows * n_out);
    float beta = c % 2 ? 1.0f : 0.0f;
    be->ops->linear (exec_for (c), got, n_out, x, n_in, &W, NULL, rows, beta);
    for (int r = 0; r < rows; r++)
      for (int o = 0; o < n_out; o++) {
        double acc = 0;
        for (int i = 0; i < n_in; i++)
          acc += (double) x[r * n_in + i] * q[(gsize) o * n_in + i] * W.scales[o];
        want[r * n_out + o] = (float) (beta * want[r * n_out + o] + acc);
      }
    assert_close (got, want, (gsize) rows * n_out, 1e-5);
    be->ops->weight_release (be, &W);
  }
  /* a row that is not finite cannot be quantized */
  float bad[4] = { 1, NAN, 0, 2 };
  MoshiTensorEntry e = { .name = "bad.weight", .dtype = MOSHI_DTYPE_F32, .ndim = 2,
    .shape = { 2, 2 }, .data = bad };
  MoshiWeight W;
  ck_assert (!moshi_weight_int8_from_host (be, &W, &e, &error));
  moshi_assert_error_contains (error, "bad.weight");
  g_clear_error (&error);
}
END_TEST

START_TEST (test_rms_norm_and_gating)
{
  MoshiTestRng rng;
  moshi_test_rng_init (&rng, 11);
  int rows = 3, d = 37, ld = 40;
  g_autofree float *x = rand_vec (&rng, rows * ld, 2), *a = rand_vec (&rng, d, 1);
  g_autofree float *got = g_new0 (float, rows * ld), *want = g_new0 (float, rows * ld);
  MoshiWeight A = make_weight (a, 1, d, 0, 0);
  be->ops->rms_norm (ex1, got, ld, x, ld, &A, 1e-8f, rows, d);
  for (int r = 0; r < rows; r++) {
    double ss = 0;
    for (int i = 0; i < d; i++)
      ss += (double) x[r * ld + i] * x[r * ld + i];
    for (int i = 0; i < d; i++)
      want[r * ld + i] = (float) (x[r * ld + i] * a[i] / sqrt (ss / d + 1e-8));
  }
  assert_close (got, want, rows * ld, 1e-6);

  int hidden = 19;
  g_autofree float *h = rand_vec (&rng, rows * 2 * hidden, 4);
  g_autofree float *g = g_new (float, rows * hidden), *gw = g_new (float, rows * hidden);
  for (int act = 0; act < 2; act++) {
    be->ops->gated_act (ex1, g, hidden, h, 2 * hidden, act, rows, hidden);
    for (int r = 0; r < rows; r++)
      for (int i = 0; i < hidden; i++) {
        double z = h[r * 2 * hidden + i], v = h[r * 2 * hidden + hidden + i];
        double f = act == MOSHI_ACT_SILU ? z / (1 + exp (-z)) : 0.5 * z * (1 + erf (z / sqrt (2.0)));
        gw[r * hidden + i] = (float) (f * v);
      }
    assert_close (g, gw, rows * hidden, 1e-6);
  }
}
END_TEST

START_TEST (test_embedding_and_positions)
{
  MoshiTestRng rng;
  moshi_test_rng_init (&rng, 12);
  int vocab = 11, d = 21, rows = 4;
  g_autofree float *table = rand_vec (&rng, vocab * d, 1);
  g_autofree float *rounded = g_new (float, vocab * d);
  g_autofree uint16_t *table16 = to_bf16 (table, vocab * d, rounded);
  int32_t ids[4] = { 3, -1, 10, 0 };
  for (int bf = 0; bf < 2; bf++) {
    MoshiWeight T = { .dtype = bf ? MOSHI_DTYPE_BF16 : MOSHI_DTYPE_F32, .ndim = 2,
      .shape = { vocab, d }, .data = bf ? (const void *) table16 : (const void *) table };
    const float *ref = bf ? rounded : table;
    g_autofree float *y = rand_vec (&rng, rows * d, 1);
    g_autofree float *before = g_memdup2 (y, rows * d * sizeof (float));
    be->ops->embedding (ex1, y, d, &T, ids, rows, 1.0f);
    for (int r = 0; r < rows; r++)
      for (int i = 0; i < d; i++) {
        float want = before[r * d + i] + (ids[r] < 0 ? 0 : ref[ids[r] * d + i]);
        ck_assert_msg (fabsf (y[r * d + i] - want) < 1e-6f, "embedding row %d", r);
      }
    be->ops->embedding (ex1, y, d, &T, ids, rows, 0.0f);
    for (int i = 0; i < d; i++)
      ck_assert (y[d + i] == 0.0f);      /* the zero token gives an exact zero */
  }

  int dim = 10, pos0 = 7;
  g_autofree float *x = g_new0 (float, 3 * dim);
  be->ops->add_sin_embedding (ex1, x, dim, 3, dim, pos0, 10000.0f, 1.0f);
  for (int r = 0; r < 3; r++)
    for (int i = 0; i < dim / 2; i++) {
      double phase = (pos0 + r) / pow (10000.0, (double) i / (dim / 2 - 1));
      ck_assert (fabs (x[r * dim + i] - cos (phase)) < 1e-5);
      ck_assert (fabs (x[r * dim + dim / 2 + i] - sin (phase)) < 1e-5);
    }
}
END_TEST

static Suite *
cpu_ops_suite (void)
{
  Suite *s = suite_create ("cpu-ops");
  TCase *tc = tcase_create ("ops");
  tcase_add_checked_fixture (tc, setup, teardown);
  tcase_add_test (tc, test_conv1d);
  tcase_add_test (tc, test_conv1d_streams);
  tcase_add_test (tc, test_conv_transpose1d_streams);
  tcase_add_test (tc, test_conv_transpose1d_streaming);
  tcase_add_test (tc, test_linear);
  tcase_add_test (tc, test_layer_norm);
  tcase_add_test (tc, test_elementwise);
  tcase_add_test (tc, test_add_scaled_and_moves);
  tcase_add_test (tc, test_rope);
  tcase_add_test (tc, test_attention_ring);
  tcase_add_test (tc, test_attention_huge_capacity);
  tcase_add_test (tc, test_conv_transpose1d_long_call);
  tcase_add_test (tc, test_rvq);
  tcase_add_test (tc, test_weight_views_and_conversion);
  tcase_add_test (tc, test_linear_bf16);
  tcase_add_test (tc, test_linear_int8);
  tcase_add_test (tc, test_rms_norm_and_gating);
  tcase_add_test (tc, test_embedding_and_positions);
  suite_add_tcase (s, tc);
  return s;
}

int
main (void)
{
  return moshi_test_run_suite (cpu_ops_suite ());
}
