/* gst-moshi CPU backend: the op table on host memory. */
#include "cpu-internal.h"

#include <math.h>
#include <string.h>

#define CPU_EX(ex) ((CpuExec *) (ex))

static inline const float *
wf32 (const MoshiWeight *w)
{
  g_assert (w->dtype == MOSHI_DTYPE_F32);
  return w->data;
}

/* ---------------------------------------------------------------- GEMM */

typedef struct {
  gboolean trans_a, trans_b;
  int m, n, k;
  const float *a, *b;
  int lda, ldb;
  float beta;
  float *c;
  int ldc;
  gboolean split_n;     /* split columns of C, else rows */
  int chunk;
  int total;
} GemmJob;

static void
gemm_task (void *ctx, int task, int thread)
{
  const GemmJob *j = ctx;
  int begin = task * j->chunk;
  int len = MIN (j->chunk, j->total - begin);
  if (len <= 0)
    return;
  const float *a = j->a, *b = j->b;
  float *c = j->c;
  int m = j->m, n = j->n;
  if (j->split_n) {
    b += j->trans_b ? (gsize) begin * j->ldb : (gsize) begin;
    c += begin;
    n = len;
  } else {
    a += j->trans_a ? (gsize) begin : (gsize) begin * j->lda;
    c += (gsize) begin * j->ldc;
    m = len;
  }
  cblas_sgemm (CblasRowMajor, j->trans_a ? CblasTrans : CblasNoTrans,
      j->trans_b ? CblasTrans : CblasNoTrans, m, n, j->k, 1.0f, a, j->lda, b, j->ldb,
      j->beta, c, j->ldc);
}

/* Products where one side has only a few columns (T = 2 transformer tokens, or a 25 Hz conv
 * stage with 2 output steps) are weight-bandwidth bound: BLAS would copy ("pack") the whole
 * weight matrix every call, which costs as much as the product itself. These paths read each
 * weight row once, straight from the mapping. */
#define SKINNY_MAX 8

typedef struct {
  /* C[m, j] (row stride ldc) = beta C + sum_k W[m, k] * X[j, k]: W rows contiguous (ldw),
   * X given as nx contiguous rows. W is f32, or bf16 when w_bf16 is set. */
  const float *w;
  const uint16_t *w_bf16;
  int ldw;
  const float *x;       /* [nx, k] */
  int nx, k;
  float *c;
  gsize c_row_stride, c_col_stride;
  float beta;
  int rows_per_task, total_rows;
} RowDotJob;

static void
row_dot_task (void *ctx, int task, int thread)
{
  const RowDotJob *j = ctx;
  const CpuKernels *kern = cpu_kernels ();
  int begin = task * j->rows_per_task, end = MIN (begin + j->rows_per_task, j->total_rows);
  for (int m = begin; m < end; m++) {
    for (int x0 = 0; x0 < j->nx; x0 += 4) {
      int nb = MIN (4, j->nx - x0);
      const float *b[4];
      float out[4];
      for (int q = 0; q < nb; q++)
        b[q] = j->x + (gsize) (x0 + q) * j->k;
      if (j->w_bf16)
        kern->dot_multi_bf16 (j->w_bf16 + (gsize) m * j->ldw, b, nb, j->k, out);
      else
        kern->dot_multi (j->w + (gsize) m * j->ldw, b, nb, j->k, out);
      for (int q = 0; q < nb; q++) {
        float *c = j->c + (gsize) m * j->c_row_stride + (gsize) (x0 + q) * j->c_col_stride;
        *c = j->beta == 0.0f ? out[q] : j->beta * *c + out[q];
      }
    }
  }
}

static void
run_row_dots (CpuExec *ex, RowDotJob *job)
{
  int threads = cpu_n_threads (ex);
  int tasks = MIN (threads * 4, MAX (1, job->total_rows / 16));
  job->rows_per_task = (job->total_rows + tasks - 1) / tasks;
  tasks = (job->total_rows + job->rows_per_task - 1) / job->rows_per_task;
  if (threads == 1 || (double) job->total_rows * job->k * job->nx < 1e5) {
    job->rows_per_task = job->total_rows;
    row_dot_task (job, 0, 0);
  } else {
    cpu_parallel (ex, tasks, row_dot_task, job);
  }
}

typedef struct {
  /* Ct[j, m] += sum_i B[i, j] * A[i, m] over a slice of m: A rows streamed once */
  const float *a;
  int lda;
  const float *b;
  int ldb;
  float *ct;            /* [n, m_total] */
  int n, k, m_total, cols_per_task;
} AxpyJob;

static void
axpy_task (void *ctx, int task, int thread)
{
  const AxpyJob *j = ctx;
  const CpuKernels *kern = cpu_kernels ();
  int begin = task * j->cols_per_task, len = MIN (j->cols_per_task, j->m_total - begin);
  if (len <= 0)
    return;
  for (int t = 0; t < j->n; t++)
    memset (j->ct + (gsize) t * j->m_total + begin, 0, len * sizeof (float));
  for (int i = 0; i < j->k; i++) {
    const float *arow = j->a + (gsize) i * j->lda + begin;
    for (int t = 0; t < j->n; t++)
      kern->axpy (j->ct + (gsize) t * j->m_total + begin, j->b[(gsize) i * j->ldb + t], arow, len);
  }
}

static gboolean
sgemm_skinny (CpuExec *ex, gboolean trans_a, gboolean trans_b, int m, int n, int k,
    const float *a, int lda, const float *b, int ldb, float beta, float *c, int ldc)
{
  if (m <= SKINNY_MAX && trans_b && !trans_a) {
    /* C[t, o] = x[t] . W[o]: a = x [m, k], b = W [n, k] */
    float *xs = cpu_scratch (ex, 2, (gsize) m * k);
    for (int t = 0; t < m; t++)
      memcpy (xs + (gsize) t * k, a + (gsize) t * lda, k * sizeof (float));
    RowDotJob job = { b, NULL, ldb, xs, m, k, c, 1, (gsize) ldc, beta, 0, n };
    run_row_dots (ex, &job);
    return TRUE;
  }
  if (n <= SKINNY_MAX && !trans_a && !trans_b) {
    /* C[o, t] = W[o] . X[:, t]: a = W [m, k], b = X [k, n] strided -> transpose X first */
    float *xs = cpu_scratch (ex, 2, (gsize) n * k);
    for (int i = 0; i < k; i++)
      for (int t = 0; t < n; t++)
        xs[(gsize) t * k + i] = b[(gsize) i * ldb + t];
    RowDotJob job = { a, NULL, lda, xs, n, k, c, (gsize) ldc, 1, beta, 0, m };
    run_row_dots (ex, &job);
    return TRUE;
  }
  if (n <= SKINNY_MAX && trans_a && !trans_b && beta == 0.0f) {
    /* C[mm, t] = sum_i A[i, mm] B[i, t]: stream rows of A, accumulate Ct [n, m] */
    float *ct = cpu_scratch (ex, 3, (gsize) n * m);
    AxpyJob job = { a, lda, b, ldb, ct, n, k, m, 0 };
    int threads = cpu_n_threads (ex);
    job.cols_per_task = ((m + threads - 1) / threads + 15) & ~15;
    int tasks = (m + job.cols_per_task - 1) / job.cols_per_task;
    if (threads == 1 || (double) m * n * k < 1e5) {
      job.cols_per_task = m;
      axpy_task (&job, 0, 0);
    } else {
      cpu_parallel (ex, tasks, axpy_task, &job);
    }
    for (int mm = 0; mm < m; mm++)
      for (int t = 0; t < n; t++)
        c[(gsize) mm * ldc + t] = ct[(gsize) t * m + mm];
    return TRUE;
  }
  return FALSE;
}

void
cpu_sgemm (CpuExec *ex, gboolean trans_a, gboolean trans_b, int m, int n, int k,
    const float *a, int lda, const float *b, int ldb, float beta, float *c, int ldc)
{
  if (m <= 0 || n <= 0)
    return;
  if (k > 0 && sgemm_skinny (ex, trans_a, trans_b, m, n, k, a, lda, b, ldb, beta, c, ldc))
    return;
  int threads = cpu_n_threads (ex);
  double flops = 2.0 * m * n * k;
  GemmJob job = { trans_a, trans_b, m, n, k, a, b, lda, ldb, beta, c, ldc, FALSE, 0, 0 };
  if (threads == 1 || flops < 2e5 || k == 0) {
    job.split_n = FALSE;
    job.chunk = job.total = m;
    gemm_task (&job, 0, 0);
    return;
  }
  /* Split the larger side so that each thread streams its own part of the bigger operand, in
   * a few tasks per thread so that a thread delayed by the OS does not hold up the others. */
  job.split_n = n >= m;
  job.total = job.split_n ? n : m;
  int tasks = threads * 3;
  job.chunk = (job.total + tasks - 1) / tasks;
  job.chunk = MAX ((job.chunk + 15) & ~15, 64);
  tasks = (job.total + job.chunk - 1) / job.chunk;
  cpu_parallel (ex, tasks, gemm_task, &job);
}

/* ---------------------------------------------------------------- data movement */

void
cpu_op_copy_2d (MoshiExec *ex, float *dst, int ld_dst, const float *src, int ld_src, int rows,
    int cols)
{
  if (dst == src && ld_dst == ld_src)
    return;
  for (int r = 0; r < rows; r++)
    memmove (dst + (gsize) r * ld_dst, src + (gsize) r * ld_src, cols * sizeof (float));
}

void
cpu_op_transpose (MoshiExec *ex, float *dst, int ld_dst, const float *src, int ld_src, int rows,
    int cols)
{
  /* Blocked so that both sides stay in cache. */
  const int bs = 32;
  for (int r0 = 0; r0 < rows; r0 += bs)
    for (int c0 = 0; c0 < cols; c0 += bs) {
      int r1 = MIN (r0 + bs, rows), c1 = MIN (c0 + bs, cols);
      for (int r = r0; r < r1; r++)
        for (int c = c0; c < c1; c++)
          dst[(gsize) c * ld_dst + r] = src[(gsize) r * ld_src + c];
    }
}

/* ---------------------------------------------------------------- elementwise */

typedef struct {
  float *dst;
  const float *src;
  int ld_dst, ld_src, cols;
} RowsJob;

static void
elu_rows_task (void *ctx, int row, int thread)
{
  const RowsJob *j = ctx;
  cpu_kernels ()->elu (j->dst + (gsize) row * j->ld_dst, j->src + (gsize) row * j->ld_src, j->cols);
}

void
cpu_op_elu_2d (MoshiExec *ex, float *dst, int ld_dst, const float *src, int ld_src, int rows,
    int cols)
{
  RowsJob job = { dst, src, ld_dst, ld_src, cols };
  if ((gsize) rows * cols < 16384) {
    for (int r = 0; r < rows; r++)
      elu_rows_task (&job, r, 0);
  } else {
    cpu_parallel (CPU_EX (ex), rows, elu_rows_task, &job);
  }
}

void
cpu_op_gelu (MoshiExec *ex, float *x, gsize n)
{
  for (gsize i = 0; i < n; i++)
    x[i] = 0.5f * x[i] * (1.0f + erff (x[i] * (float) M_SQRT1_2));
}

void
cpu_op_add_scaled (MoshiExec *ex, float *x, int ld_x, const float *y, int ld_y,
    const MoshiWeight *scale, int rows, int cols)
{
  const float *s = scale ? wf32 (scale) : NULL;
  for (int r = 0; r < rows; r++) {
    float *xr = x + (gsize) r * ld_x;
    const float *yr = y + (gsize) r * ld_y;
    if (s)
      for (int c = 0; c < cols; c++)
        xr[c] += s[c] * yr[c];
    else
      for (int c = 0; c < cols; c++)
        xr[c] += yr[c];
  }
}

/* ---------------------------------------------------------------- normalisation */

void
cpu_op_layer_norm (MoshiExec *ex, float *dst, int ld_dst, const float *src, int ld_src,
    const MoshiWeight *weight, const MoshiWeight *bias, float eps, int rows, int d)
{
  const float *w = weight ? wf32 (weight) : NULL;
  const float *b = bias ? wf32 (bias) : NULL;
  for (int r = 0; r < rows; r++) {
    const float *x = src + (gsize) r * ld_src;
    float *y = dst + (gsize) r * ld_dst;
    double mean = 0;
    for (int i = 0; i < d; i++)
      mean += x[i];
    mean /= d;
    double var = 0;
    for (int i = 0; i < d; i++) {
      double t = x[i] - mean;
      var += t * t;
    }
    var /= d;
    float inv = (float) (1.0 / sqrt (var + eps));
    float fmean = (float) mean;
    for (int i = 0; i < d; i++) {
      float v = (x[i] - fmean) * inv;
      if (w)
        v *= w[i];
      if (b)
        v += b[i];
      y[i] = v;
    }
  }
}

/* ---------------------------------------------------------------- linear */

/* BF16 weights with many rows of activations: convert a block of weight rows to f32 and use
 * BLAS on it, block after block, so that no f32 copy of the whole matrix is ever made. */
#define BF16_BLOCK_ROWS 256

static void
linear_bf16 (CpuExec *ex, float *dst, int ld_dst, const float *src, int ld_src,
    const uint16_t *w, int n_out, int n_in, int rows, float beta)
{
  if (rows <= SKINNY_MAX) {
    float *xs = cpu_scratch (ex, 2, (gsize) rows * n_in);
    for (int t = 0; t < rows; t++)
      memcpy (xs + (gsize) t * n_in, src + (gsize) t * ld_src, n_in * sizeof (float));
    RowDotJob job = { NULL, w, n_in, xs, rows, n_in, dst, 1, (gsize) ld_dst, beta, 0, n_out };
    run_row_dots (ex, &job);
    return;
  }
  float *block = cpu_scratch (ex, 2, (gsize) BF16_BLOCK_ROWS * n_in);
  for (int o0 = 0; o0 < n_out; o0 += BF16_BLOCK_ROWS) {
    int len = MIN (BF16_BLOCK_ROWS, n_out - o0);
    moshi_convert_to_f32 (block, w + (gsize) o0 * n_in, MOSHI_DTYPE_BF16, (gsize) len * n_in);
    cpu_sgemm (ex, FALSE, TRUE, rows, len, n_in, src, ld_src, block, n_in, beta, dst + o0, ld_dst);
  }
}

/* Int8 weights: blocks of weight rows dequantized (code * row scale) to f32 for BLAS, as BF16
 * weights with many rows: never an f32 copy of the whole matrix. */
static void
linear_i8 (CpuExec *ex, float *dst, int ld_dst, const float *src, int ld_src, const int8_t *w,
    const float *scales, int n_out, int n_in, int rows, float beta)
{
  /* a slot of its own: a product of few rows stages its activations in slot 2 */
  float *block = cpu_scratch (ex, 4, (gsize) BF16_BLOCK_ROWS * n_in);
  for (int o0 = 0; o0 < n_out; o0 += BF16_BLOCK_ROWS) {
    int len = MIN (BF16_BLOCK_ROWS, n_out - o0);
    for (int o = 0; o < len; o++) {
      const int8_t *q = w + (gsize) (o0 + o) * n_in;
      float scale = scales[o0 + o];
      float *out = block + (gsize) o * n_in;
      for (int i = 0; i < n_in; i++)
        out[i] = (float) q[i] * scale;
    }
    cpu_sgemm (ex, FALSE, TRUE, rows, len, n_in, src, ld_src, block, n_in, beta, dst + o0, ld_dst);
  }
}

void
cpu_op_linear (MoshiExec *ex, float *dst, int ld_dst, const float *src, int ld_src,
    const MoshiWeight *w, const MoshiWeight *bias, int rows, float beta)
{
  int n_out = (int) w->shape[0];
  int n_in = (int) w->shape[1];
  if (w->dtype == MOSHI_DTYPE_BF16)
    linear_bf16 (CPU_EX (ex), dst, ld_dst, src, ld_src, w->data, n_out, n_in, rows, beta);
  else if (w->dtype == MOSHI_DTYPE_I8)
    linear_i8 (CPU_EX (ex), dst, ld_dst, src, ld_src, w->data, w->scales, n_out, n_in, rows, beta);
  else
    cpu_sgemm (CPU_EX (ex), FALSE, TRUE, rows, n_out, n_in, src, ld_src, wf32 (w), n_in, beta,
        dst, ld_dst);
  if (bias) {
    const float *b = wf32 (bias);
    for (int r = 0; r < rows; r++)
      for (int o = 0; o < n_out; o++)
        dst[(gsize) r * ld_dst + o] += b[o];
  }
}

/* ---------------------------------------------------------------- LM helpers */

void
cpu_op_gated_act (MoshiExec *ex, float *dst, int ld_dst, const float *src, int ld_src,
    MoshiActivation act, int rows, int hidden)
{
  for (int r = 0; r < rows; r++) {
    const float *gate = src + (gsize) r * ld_src;
    const float *value = gate + hidden;
    float *y = dst + (gsize) r * ld_dst;
    for (int i = 0; i < hidden; i++) {
      float g = gate[i];
      float a = act == MOSHI_ACT_SILU ? g / (1.0f + expf (-g))
          : 0.5f * g * (1.0f + erff (g * (float) M_SQRT1_2));
      y[i] = a * value[i];
    }
  }
}

void
cpu_op_rms_norm (MoshiExec *ex, float *dst, int ld_dst, const float *src, int ld_src,
    const MoshiWeight *alpha, float eps, int rows, int d)
{
  const float *a = wf32 (alpha);
  for (int r = 0; r < rows; r++) {
    const float *x = src + (gsize) r * ld_src;
    float *y = dst + (gsize) r * ld_dst;
    double ss = 0;
    for (int i = 0; i < d; i++)
      ss += (double) x[i] * x[i];
    float inv = (float) (1.0 / sqrt (ss / d + eps));
    for (int i = 0; i < d; i++)
      y[i] = x[i] * (a[i] * inv);
  }
}

void
cpu_op_embedding (MoshiExec *ex, float *dst, int ld, const MoshiWeight *table, const int32_t *ids,
    int rows, float beta)
{
  int d = (int) table->shape[1];
  for (int r = 0; r < rows; r++) {
    float *y = dst + (gsize) r * ld;
    if (beta == 0.0f)
      memset (y, 0, d * sizeof (float));
    else if (beta != 1.0f)
      for (int i = 0; i < d; i++)
        y[i] *= beta;
    int id = ids[r];
    if (id < 0)
      continue;
    g_assert (id < table->shape[0]);
    if (table->dtype == MOSHI_DTYPE_BF16) {
      const uint16_t *e = (const uint16_t *) table->data + (gsize) id * d;
      for (int i = 0; i < d; i++)
        y[i] += moshi_bf16_to_f32 (e[i]);
    } else {
      cpu_kernels ()->axpy (y, 1.0f, wf32 (table) + (gsize) id * d, d);
    }
  }
}

void
cpu_op_add_sin_embedding (MoshiExec *ex, float *x, int ld, int rows, int d, int pos0,
    float max_period, float scale)
{
  /* As upstream: phase = pos / max_period^(i / (half - 1)), all in f32. */
  int half = d / 2;
  for (int r = 0; r < rows; r++) {
    float pos = (float) (pos0 + r);
    float *y = x + (gsize) r * ld;
    for (int i = 0; i < half; i++) {
      float expo = half > 1 ? (float) i / (float) (half - 1) : 0.0f;
      float phase = pos / powf (max_period, expo);
      y[i] += scale * (float) cos ((double) phase);
      y[half + i] += scale * (float) sin ((double) phase);
    }
  }
}

/* ---------------------------------------------------------------- convolutions */

static void
add_bias_rows (float *dst, int ld, const float *bias, int rows, int cols)
{
  for (int r = 0; r < rows; r++) {
    float bv = bias[r];
    float *d = dst + (gsize) r * ld;
    for (int c = 0; c < cols; c++)
      d[c] += bv;
  }
}

void
cpu_op_conv1d (MoshiExec *ex, float *dst, int ld_dst, const float *src, int ld_src,
    const MoshiWeight *w, const MoshiWeight *bias, int stride, int dilation, int groups,
    int t_out, float beta, int n, gsize src_step, gsize dst_step)
{
  CpuExec *cex = CPU_EX (ex);
  int c_out = (int) w->shape[0];
  int cin_g = (int) w->shape[1];
  int k = (int) w->shape[2];
  int cout_g = c_out / groups;
  const float *weights = wf32 (w);
  if (n == 1)
    src_step = dst_step = (gsize) t_out;
  int cols_n = n * t_out;
  /* Streams side by side in dst take the product's columns as they are; others go through a
   * scratch product scattered afterwards. */
  gboolean dense_dst = dst_step == (gsize) t_out;

  for (int g = 0; g < groups; g++) {
    const float *x = src + (gsize) g * cin_g * ld_src;
    const float *wg = weights + (gsize) g * cout_g * cin_g * k;
    float *y = dst + (gsize) g * cout_g * ld_dst;
    float *prod = dense_dst ? y : cpu_scratch (cex, 1, (gsize) cout_g * cols_n);
    int ld_prod = dense_dst ? ld_dst : cols_n;
    float beta_prod = dense_dst ? beta : 0.0f;
    if (k == 1 && stride == 1 && src_step == (gsize) t_out) {
      /* a pointwise conv over streams side by side: the input as it is */
      cpu_sgemm (cex, FALSE, FALSE, cout_g, cols_n, cin_g, wg, cin_g, x, ld_src, beta_prod,
          prod, ld_prod);
    } else {
      /* im2col: row (i, j) holds input channel i at tap j for every output step of every
       * stream, stream s in columns s * t_out .. (s + 1) * t_out - 1. */
      float *cols = cpu_scratch (cex, 0, (gsize) cin_g * k * cols_n);
      for (int i = 0; i < cin_g; i++) {
        for (int j = 0; j < k; j++) {
          float *row = cols + ((gsize) i * k + j) * cols_n;
          for (int s = 0; s < n; s++) {
            const float *xs = x + (gsize) i * ld_src + s * src_step + (gsize) j * dilation;
            float *r = row + (gsize) s * t_out;
            if (stride == 1) {
              memcpy (r, xs, t_out * sizeof (float));
            } else {
              for (int t = 0; t < t_out; t++)
                r[t] = xs[(gsize) t * stride];
            }
          }
        }
      }
      cpu_sgemm (cex, FALSE, FALSE, cout_g, cols_n, cin_g * k, wg, cin_g * k, cols, cols_n,
          beta_prod, prod, ld_prod);
    }
    if (!dense_dst) {
      for (int o = 0; o < cout_g; o++)
        for (int s = 0; s < n; s++) {
          float *d = y + (gsize) o * ld_dst + s * dst_step;
          const float *p = prod + (gsize) o * cols_n + (gsize) s * t_out;
          for (int t = 0; t < t_out; t++)
            d[t] = beta == 0.0f ? p[t] : beta * d[t] + p[t];
        }
    }
  }
  if (bias)
    for (int s = 0; s < n; s++)
      add_bias_rows (dst + s * dst_step, ld_dst, wf32 (bias), c_out, t_out);
}

typedef struct {
  float *dst;
  int ld_dst;
  const float *cols;      /* [c_out * k, t_in] per-tap contributions (row stride ld_cols) */
  int ld_cols;
  const float *bias;
  float *carry;
  int k, stride, t_in;
} OverlapAddJob;

static void
overlap_add_task (void *ctx, int o, int thread)
{
  const OverlapAddJob *j = ctx;
  int overlap = j->k - j->stride;
  int emitted = j->t_in * j->stride;
  /* The full output of this call is emitted + overlap columns per channel: a stack buffer for
   * the usual few frames, the heap for calls of many frames (4096 frames of the last SEANet
   * stage are 31 MiB, far beyond a thread stack). */
  float stack_buf[8192];
  g_autofree float *heap_buf = NULL;
  gsize n_buf = (gsize) emitted + overlap;
  float *buf = stack_buf;
  if (n_buf > G_N_ELEMENTS (stack_buf))
    buf = heap_buf = g_new (float, n_buf);
  memset (buf, 0, n_buf * sizeof (float));
  for (int tap = 0; tap < j->k; tap++) {
    const float *row = j->cols + ((gsize) o * j->k + tap) * j->ld_cols;
    for (int t = 0; t < j->t_in; t++)
      buf[t * j->stride + tap] += row[t];
  }
  float *carry = j->carry + (gsize) o * overlap;
  for (int c = 0; c < overlap; c++)
    buf[c] += carry[c];
  float bv = j->bias ? j->bias[o] : 0.0f;
  float *d = j->dst + (gsize) o * j->ld_dst;
  for (int c = 0; c < emitted; c++)
    d[c] = buf[c] + bv;
  memcpy (carry, buf + emitted, overlap * sizeof (float));
}

void
cpu_op_conv_transpose1d (MoshiExec *ex, float *dst, int ld_dst, const float *src, int ld_src,
    const MoshiWeight *w, const MoshiWeight *bias, float *carry, int stride, int groups, int t_in,
    int n, gsize src_step, gsize dst_step, gsize carry_step)
{
  CpuExec *cex = CPU_EX (ex);
  int c_in = (int) w->shape[0];
  int cout_g = (int) w->shape[1];
  int k = (int) w->shape[2];
  int c_out = cout_g * groups;
  int cin_g = c_in / groups;
  const float *weights = wf32 (w);
  if (n == 1)
    src_step = (gsize) t_in;
  /* Streams side by side in src make one product; others one product each. */
  int n_prod = src_step == (gsize) t_in ? 1 : n;
  int per_prod = n / n_prod;
  int t_prod = t_in * per_prod;

  for (int p = 0; p < n_prod; p++) {
    /* Per-tap contributions cols[(o, tap), t] = sum_i w[i, o, tap] x[i, t] over the product's
     * columns (the streams' steps side by side). */
    const float *x0 = src + p * src_step;
    float *cols = cpu_scratch (cex, 1, (gsize) c_out * k * t_prod);
    if (cin_g == 1 && cout_g == 1) {
      /* depthwise: one input channel per output channel */
      for (int c = 0; c < c_out; c++)
        for (int tap = 0; tap < k; tap++) {
          float wv = weights[(gsize) c * k + tap];
          float *row = cols + ((gsize) c * k + tap) * t_prod;
          const float *x = x0 + (gsize) c * ld_src;
          for (int t = 0; t < t_prod; t++)
            row[t] = wv * x[t];
        }
    } else {
      for (int g = 0; g < groups; g++) {
        const float *wg = weights + (gsize) g * cin_g * cout_g * k;
        cpu_sgemm (cex, TRUE, FALSE, cout_g * k, t_prod, cin_g, wg, cout_g * k,
            x0 + (gsize) g * cin_g * ld_src, ld_src, 0.0f, cols + (gsize) g * cout_g * k * t_prod,
            t_prod);
      }
    }
    for (int q = 0; q < per_prod; q++) {
      int s = p * per_prod + q;
      OverlapAddJob job = { dst + s * dst_step, ld_dst, cols + (gsize) q * t_in, t_prod,
        bias ? wf32 (bias) : NULL, carry + s * carry_step, k, stride, t_in };
      if ((gsize) c_out * k * t_in < 16384) {
        for (int o = 0; o < c_out; o++)
          overlap_add_task (&job, o, 0);
      } else {
        cpu_parallel (cex, c_out, overlap_add_task, &job);
      }
    }
  }
}

/* ---------------------------------------------------------------- attention */

void
cpu_op_kv_write (MoshiExec *ex, float *k_cache, float *v_cache, int capacity, const float *k,
    int ld_k, const float *v, int ld_v, int width, int pos0, int t)
{
  for (int i = 0; i < t; i++) {
    int slot = (pos0 + i) % capacity;
    memcpy (k_cache + (gsize) slot * width, k + (gsize) i * ld_k, width * sizeof (float));
    memcpy (v_cache + (gsize) slot * width, v + (gsize) i * ld_v, width * sizeof (float));
  }
}

void
cpu_op_rope (MoshiExec *ex, float *x, int ld, int t, int n_heads, int head_dim, int pos0,
    float max_period)
{
  int half = head_dim / 2;
  /* The reference computes the frequencies and angles in f32; so do we, then takes accurate
   * sines and cosines of those f32 angles. */
  float coef = (float) (-log ((double) max_period) * 2.0 / head_dim);
  float freqs[half];
  for (int i = 0; i < half; i++)
    freqs[i] = expf ((float) i * coef);
  for (int r = 0; r < t; r++) {
    float pos = (float) (pos0 + r);
    float *row = x + (gsize) r * ld;
    for (int i = 0; i < half; i++) {
      float angle = pos * freqs[i];
      float c = (float) cos ((double) angle);
      float s = (float) sin ((double) angle);
      for (int h = 0; h < n_heads; h++) {
        float *p = row + (gsize) h * head_dim + 2 * i;
        float re = p[0], im = p[1];
        p[0] = re * c - im * s;
        p[1] = re * s + im * c;
      }
    }
  }
}

typedef struct {
  float *dst;
  int ld_dst;
  const float *q;
  int ld_q;
  const void *k_cache, *v_cache;
  int capacity, n_heads, head_dim, pos0, context, end;
  float scale;
  MoshiDType cache_dtype;       /* F32, BF16 or F8_E4M3 (moshi_kv_slot_bytes) */
  gsize slot_bytes;
} AttentionJob;

/* Head h of a cache slot: its values as f32 into out (F32 slots are read in place), and the
 * head's scale (1 but for FP8). */
static const float *
cache_head (const AttentionJob *j, const void *slot, int h, float *out, float *head_scale)
{
  *head_scale = 1.0f;
  gsize first = (gsize) h * j->head_dim;
  switch (j->cache_dtype) {
    case MOSHI_DTYPE_BF16:
      for (int d = 0; d < j->head_dim; d++)
        out[d] = moshi_bf16_to_f32 (((const uint16_t *) slot)[first + d]);
      return out;
    case MOSHI_DTYPE_F8_E4M3: {
      gsize width = (gsize) j->n_heads * j->head_dim;
      const float *scales = (const float *) ((const guint8 *) slot + ((width + 3) & ~(gsize) 3));
      *head_scale = scales[h];
      for (int d = 0; d < j->head_dim; d++)
        out[d] = moshi_e4m3_to_f32 (((const guint8 *) slot)[first + d]);
      return out;
    }
    default:
      return (const float *) slot + first;
  }
}

static void
attention_task (void *ctx, int task, int thread)
{
  const AttentionJob *j = ctx;
  const CpuKernels *kern = cpu_kernels ();
  int i = task / j->n_heads;
  int h = task % j->n_heads;
  int q_pos = j->pos0 + i;
  const float *q = j->q + (gsize) i * j->ld_q + (gsize) h * j->head_dim;
  float *out = j->dst + (gsize) i * j->ld_dst + (gsize) h * j->head_dim;
  /* The KV capacity comes from the config (up to millions of positions), far more than a
   * thread stack holds, so long contexts take their scores (and the head's row of a BF16 or FP8
   * cache) from the heap; short ones, the decode-step common case, stay off the allocator. */
  float stack_buf[4096];
  g_autofree float *heap_buf = NULL;
  float *scores = stack_buf;
  gsize need = (gsize) j->capacity + j->head_dim;
  if (need > G_N_ELEMENTS (stack_buf))
    scores = heap_buf = g_new (float, need);
  float *row = scores + j->capacity;
  float max_score = -INFINITY;
  for (int s = 0; s < j->capacity; s++) {
    scores[s] = -INFINITY;
    if (s >= j->end)
      continue;
    int k_pos = s + j->capacity * ((j->end - 1 - s) / j->capacity);
    int delta = q_pos - k_pos;
    if (delta < 0 || delta >= j->context)
      continue;
    float head_scale;
    const float *key = cache_head (j, (const guint8 *) j->k_cache + (gsize) s * j->slot_bytes, h,
        row, &head_scale);
    /* the per-head FP8 scale multiplies the dot product, as the GPU kernel does */
    scores[s] = kern->dot (q, key, j->head_dim) * head_scale * j->scale;
    max_score = MAX (max_score, scores[s]);
  }
  memset (out, 0, j->head_dim * sizeof (float));
  if (max_score == -INFINITY)
    return;
  float sum = 0;
  for (int s = 0; s < j->capacity; s++) {
    if (scores[s] == -INFINITY)
      continue;
    float p = expf (scores[s] - max_score);
    sum += p;
    float head_scale;
    const float *value = cache_head (j, (const guint8 *) j->v_cache + (gsize) s * j->slot_bytes,
        h, row, &head_scale);
    kern->axpy (out, p * head_scale, value, j->head_dim);
  }
  float inv = 1.0f / sum;
  for (int d = 0; d < j->head_dim; d++)
    out[d] *= inv;
}

void
cpu_op_attention (MoshiExec *ex, float *dst, int ld_dst, const float *q, int ld_q,
    const float *k_cache, const float *v_cache, int capacity, int n_heads, int head_dim,
    int pos0, int t, int context, float scale)
{
  AttentionJob job = { dst, ld_dst, q, ld_q, k_cache, v_cache, capacity, n_heads, head_dim,
    pos0, context, pos0 + t, scale, MOSHI_DTYPE_F32,
    moshi_kv_slot_bytes (MOSHI_DTYPE_F32, n_heads, head_dim) };
  int tasks = t * n_heads;
  if ((gsize) tasks * capacity * head_dim < 32768) {
    for (int task = 0; task < tasks; task++)
      attention_task (&job, task, 0);
  } else {
    cpu_parallel (CPU_EX (ex), tasks, attention_task, &job);
  }
}

/* ---------------------------------------------------------------- decode rows */

void
cpu_op_rope_rows (MoshiExec *ex, float *x, int ld, int rows, int n_heads, int head_dim,
    const MoshiRowCache *rc, float max_period)
{
  for (int r = 0; r < rows; r++)
    cpu_op_rope (ex, x + (gsize) r * ld, ld, 1, n_heads, head_dim, rc[r].pos, max_period);
}

void
cpu_op_add_sin_embedding_rows (MoshiExec *ex, float *x, int ld, int rows, int d,
    const MoshiRowCache *rc, float max_period, float scale)
{
  for (int r = 0; r < rows; r++)
    cpu_op_add_sin_embedding (ex, x + (gsize) r * ld, ld, 1, d, rc[r].pos, max_period, scale);
}

/* One row of values into a cache slot (see kv_write_rows for the layouts). */
static void
store_slot (guint8 *slot, MoshiDType dtype, const float *x, int n_heads, int head_dim)
{
  int width = n_heads * head_dim;
  switch (dtype) {
    case MOSHI_DTYPE_BF16:
      for (int c = 0; c < width; c++)
        ((uint16_t *) slot)[c] = moshi_f32_to_bf16 (x[c]);
      break;
    case MOSHI_DTYPE_F8_E4M3: {
      float *scales = (float *) (slot + ((width + 3) & ~3));
      for (int h = 0; h < n_heads; h++) {
        const float *xh = x + (gsize) h * head_dim;
        float amax = 0.0f;
        for (int d = 0; d < head_dim; d++)
          amax = MAX (amax, fabsf (xh[d]));
        float scale = amax / 448.0f;
        scales[h] = scale;
        for (int d = 0; d < head_dim; d++)
          slot[(gsize) h * head_dim + d] = amax > 0.0f ? moshi_f32_to_e4m3 (xh[d] / scale) : 0;
      }
      break;
    }
    default:
      memcpy (slot, x, width * sizeof (float));
      break;
  }
}

void
cpu_op_kv_write_rows (MoshiExec *ex, const MoshiRowCache *rc, MoshiDType cache_dtype,
    gsize layer_offset, int capacity, const float *k, int ld_k, const float *v, int ld_v,
    int n_heads, int head_dim, int rows)
{
  gsize slot_bytes = moshi_kv_slot_bytes (cache_dtype, n_heads, head_dim);
  for (int r = 0; r < rows; r++) {
    gsize at = layer_offset + (gsize) (rc[r].pos % capacity) * slot_bytes;
    store_slot ((guint8 *) rc[r].k_cache + at, cache_dtype, k + (gsize) r * ld_k, n_heads,
        head_dim);
    store_slot ((guint8 *) rc[r].v_cache + at, cache_dtype, v + (gsize) r * ld_v, n_heads,
        head_dim);
  }
}

typedef struct {
  AttentionJob row;             /* dst, q and the caches of row 0; the rest shared */
  const MoshiRowCache *rc;
  gsize layer_offset;           /* bytes */
} AttentionRowsJob;

static void
attention_rows_task (void *ctx, int task, int thread)
{
  const AttentionRowsJob *j = ctx;
  int r = task / j->row.n_heads;
  const MoshiRowCache *c = &j->rc[r];
  AttentionJob job = j->row;
  job.dst += (gsize) r * job.ld_dst;
  job.q += (gsize) r * job.ld_q;
  job.k_cache = (const guint8 *) c->k_cache + j->layer_offset;
  job.v_cache = (const guint8 *) c->v_cache + j->layer_offset;
  job.pos0 = c->pos;
  job.end = c->end;
  attention_task (&job, task % j->row.n_heads, thread);
}

void
cpu_op_attention_rows (MoshiExec *ex, float *dst, int ld_dst, const float *q, int ld_q,
    const MoshiRowCache *rc, MoshiDType cache_dtype, gsize layer_offset, int capacity,
    int n_heads, int head_dim, int rows, int context, float scale)
{
  AttentionRowsJob job = { { dst, ld_dst, q, ld_q, NULL, NULL, capacity, n_heads, head_dim, 0,
      context, 0, scale, cache_dtype, moshi_kv_slot_bytes (cache_dtype, n_heads, head_dim) },
    rc, layer_offset };
  int tasks = rows * n_heads;
  if ((gsize) tasks * capacity * head_dim < 32768) {
    for (int task = 0; task < tasks; task++)
      attention_rows_task (&job, task, 0);
  } else {
    cpu_parallel (CPU_EX (ex), tasks, attention_rows_task, &job);
  }
}

/* ---------------------------------------------------------------- RVQ */

typedef struct {
  int32_t *codes;
  int ld_codes;
  float *residual;
  int ld;
  const float *codebooks, *sq_norms;
  int n_levels, bins, dim;
} RvqJob;

static void
rvq_encode_row (void *ctx, int row, int thread)
{
  const RvqJob *j = ctx;
  const CpuKernels *kern = cpu_kernels ();
  float *x = j->residual + (gsize) row * j->ld;
  for (int l = 0; l < j->n_levels; l++) {
    const float *book = j->codebooks + (gsize) l * j->bins * j->dim;
    const float *norms = j->sq_norms + (gsize) l * j->bins;
    int best = 0;
    float best_d = INFINITY;
    for (int b = 0; b < j->bins; b++) {
      float d = norms[b] - 2.0f * kern->dot (x, book + (gsize) b * j->dim, j->dim);
      if (d < best_d) {
        best_d = d;
        best = b;
      }
    }
    j->codes[(gsize) l * j->ld_codes + row] = best;
    kern->axpy (x, -1.0f, book + (gsize) best * j->dim, j->dim);
  }
}

void
cpu_op_rvq_encode (MoshiExec *ex, int32_t *codes, int ld_codes, float *residual, int ld,
    const MoshiWeight *codebooks, const MoshiWeight *sq_norms, int n_levels, int t)
{
  RvqJob job = { codes, ld_codes, residual, ld, wf32 (codebooks), wf32 (sq_norms), n_levels,
    (int) codebooks->shape[1], (int) codebooks->shape[2] };
  cpu_parallel (CPU_EX (ex), t, rvq_encode_row, &job);
}

void
cpu_op_rvq_decode (MoshiExec *ex, float *dst, int ld, const int32_t *codes, int ld_codes,
    const MoshiWeight *codebooks, int n_levels, int t)
{
  int bins = (int) codebooks->shape[1];
  int dim = (int) codebooks->shape[2];
  const float *books = wf32 (codebooks);
  for (int r = 0; r < t; r++) {
    float *y = dst + (gsize) r * ld;
    memset (y, 0, dim * sizeof (float));
    for (int l = 0; l < n_levels; l++) {
      int32_t c = codes[(gsize) l * ld_codes + r];
      g_assert (c >= 0 && c < bins);
      cpu_kernels ()->axpy (y, 1.0f, books + ((gsize) l * bins + c) * dim, dim);
    }
  }
}
