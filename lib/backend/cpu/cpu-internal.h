/* gst-moshi CPU backend internals shared by its source files. */
#pragma once

#include "moshi-backend.h"
#include "moshi-threadpool.h"

#include <cblas.h>

#define CPU_SCRATCH_SLOTS 5

typedef struct {
  MoshiExec parent;
  MoshiThreadPool *pool;
  float *scratch[CPU_SCRATCH_SLOTS];
  gsize scratch_len[CPU_SCRATCH_SLOTS];
} CpuExec;

/* A scratch buffer of at least n floats, kept by the exec between calls. Slots let one op hold
 * several at once. Contents are undefined. */
float *cpu_scratch (CpuExec *ex, int slot, gsize n);

/* Runs func over n_tasks tasks on the exec's pool. */
void cpu_parallel (CpuExec *ex, int n_tasks, MoshiParallelFunc func, void *ctx);
int cpu_n_threads (CpuExec *ex);

/* Row-major C[M, N] = beta * C + op(A) op(B), split across the exec's threads. */
void cpu_sgemm (CpuExec *ex, gboolean trans_a, gboolean trans_b, int m, int n, int k,
    const float *a, int lda, const float *b, int ldb, float beta, float *c, int ldc);

/* Vector kernels selected at start-up for the CPU (AVX-512, AVX2+FMA, or portable C). */
typedef struct {
  const char *name;
  float (*dot) (const float *a, const float *b, int n);
  /* y += alpha * x */
  void (*axpy) (float *y, float alpha, const float *x, int n);
  /* dst = ELU(src), alpha 1 */
  void (*elu) (float *dst, const float *src, int n);
  /* out[j] = a . b[j] for j < nb <= 4, reading a once */
  void (*dot_multi) (const float *a, const float *const *b, int nb, int n, float *out);
  /* the same with a BF16 first operand (converted exactly, accumulated in f32) */
  void (*dot_multi_bf16) (const uint16_t *a, const float *const *b, int nb, int n, float *out);
} CpuKernels;

const CpuKernels *cpu_kernels (void);

/* The op table entries (cpu-ops.c). */
void cpu_op_copy_2d (MoshiExec *ex, float *dst, int ld_dst, const float *src, int ld_src, int rows, int cols);
void cpu_op_transpose (MoshiExec *ex, float *dst, int ld_dst, const float *src, int ld_src, int rows, int cols);
void cpu_op_elu_2d (MoshiExec *ex, float *dst, int ld_dst, const float *src, int ld_src, int rows, int cols);
void cpu_op_gelu (MoshiExec *ex, float *x, gsize n);
void cpu_op_add_scaled (MoshiExec *ex, float *x, int ld_x, const float *y, int ld_y,
    const MoshiWeight *scale, int rows, int cols);
void cpu_op_gated_act (MoshiExec *ex, float *dst, int ld_dst, const float *src, int ld_src,
    MoshiActivation act, int rows, int hidden);
void cpu_op_rms_norm (MoshiExec *ex, float *dst, int ld_dst, const float *src, int ld_src,
    const MoshiWeight *alpha, float eps, int rows, int d);
void cpu_op_embedding (MoshiExec *ex, float *dst, int ld, const MoshiWeight *table,
    const int32_t *ids, int rows, float beta);
void cpu_op_add_sin_embedding (MoshiExec *ex, float *x, int ld, int rows, int d, int pos0,
    float max_period, float scale);
void cpu_op_layer_norm (MoshiExec *ex, float *dst, int ld_dst, const float *src, int ld_src,
    const MoshiWeight *weight, const MoshiWeight *bias, float eps, int rows, int d);
void cpu_op_linear (MoshiExec *ex, float *dst, int ld_dst, const float *src, int ld_src,
    const MoshiWeight *w, const MoshiWeight *bias, int rows, float beta);
void cpu_op_conv1d (MoshiExec *ex, float *dst, int ld_dst, const float *src, int ld_src,
    const MoshiWeight *w, const MoshiWeight *bias, int stride, int dilation, int groups,
    int t_out, float beta, int n, gsize src_step, gsize dst_step);
void cpu_op_conv_transpose1d (MoshiExec *ex, float *dst, int ld_dst, const float *src, int ld_src,
    const MoshiWeight *w, const MoshiWeight *bias, float *carry, int stride, int groups, int t_in,
    int n, gsize src_step, gsize dst_step, gsize carry_step);
void cpu_op_kv_write (MoshiExec *ex, float *k_cache, float *v_cache, int capacity,
    const float *k, int ld_k, const float *v, int ld_v, int width, int pos0, int t);
void cpu_op_rope (MoshiExec *ex, float *x, int ld, int t, int n_heads, int head_dim, int pos0,
    float max_period);
void cpu_op_attention (MoshiExec *ex, float *dst, int ld_dst, const float *q, int ld_q,
    const float *k_cache, const float *v_cache, int capacity, int n_heads, int head_dim,
    int pos0, int t, int context, float scale);
void cpu_op_rope_rows (MoshiExec *ex, float *x, int ld, int rows, int n_heads, int head_dim,
    const MoshiRowCache *rc, float max_period);
void cpu_op_add_sin_embedding_rows (MoshiExec *ex, float *x, int ld, int rows, int d,
    const MoshiRowCache *rc, float max_period, float scale);
void cpu_op_kv_write_rows (MoshiExec *ex, const MoshiRowCache *rc, MoshiDType cache_dtype,
    gsize layer_offset, int capacity, const float *k, int ld_k, const float *v, int ld_v,
    int n_heads, int head_dim, int rows);
void cpu_op_attention_rows (MoshiExec *ex, float *dst, int ld_dst, const float *q, int ld_q,
    const MoshiRowCache *rc, MoshiDType cache_dtype, gsize layer_offset, int capacity,
    int n_heads, int head_dim, int rows, int context, float scale);
void cpu_op_sample (MoshiExec *ex, int32_t *tokens, int ld_tokens, int32_t *ids, float *logits,
    int ld_logits, int vocab, const MoshiSampler *sessions, int n, int stream);
void cpu_op_rvq_encode (MoshiExec *ex, int32_t *codes, int ld_codes, float *residual, int ld,
    const MoshiWeight *codebooks, const MoshiWeight *sq_norms, int n_levels, int t);
void cpu_op_rvq_decode (MoshiExec *ex, float *dst, int ld, const int32_t *codes, int ld_codes,
    const MoshiWeight *codebooks, int n_levels, int t);
