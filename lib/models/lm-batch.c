/* gst-moshi: the LM's batch runner: activations for up to max_rows rows and the temporal and
 * depformer passes over them, shared by teacher forcing and streaming steps. */
#include "lm-internal.h"

#include "moshi-error.h"

#include <math.h>

/* ================================================================ batch runner */

void
lm_dev_free (MoshiBackend *be, void *p)
{
  if (p)
    be->ops->free (be, p);
}

static void
host_free (MoshiBackend *be, void *p)
{
  if (p)
    be->ops->host_free (be, p);
}

void
moshi_lm_batch_free (MoshiLmBatch *b)
{
  if (b == NULL)
    return;
  MoshiBackend *be = b->lm->be;
  void *bufs[] = { b->x, b->h, b->qkv, b->attn, b->o, b->ffn, b->ffn_act, b->t_out, b->low_rank,
    b->logits, b->ids, b->dep_k, b->dep_v, b->cond, b->depth_rc, b->step_dev, b->tokens_dev };
  for (guint i = 0; i < G_N_ELEMENTS (bufs); i++)
    lm_dev_free (be, bufs[i]);
  host_free (be, b->step_host);
  host_free (be, b->tokens_host);
  host_free (be, b->text_logits_host);
  moshi_recorder_free (b->rec);
  g_free (b->ids_host);
  g_free (b->cond_host);
  g_free (b->row_of);
  moshi_exec_free (b->ex);
  moshi_lm_unref (b->lm);
  g_free (b);
}

static gsize
align_up (gsize n)
{
  return (n + 15) & ~(gsize) 15;
}

/* The depth caches' row tables: row r's own cache, position k, for every depformer step k. */
static gboolean
upload_depth_tables (MoshiLmBatch *b, GError **error)
{
  const MoshiLmConfig *cfg = &b->lm->cfg;
  MoshiBackend *be = b->lm->be;
  gsize n = (gsize) cfg->dep_q * b->max_rows;
  b->depth_rc = be->ops->alloc (be, n * sizeof (MoshiRowCache), error);
  if (b->depth_rc == NULL)
    return FALSE;
  g_autofree MoshiRowCache *host = g_new0 (MoshiRowCache, n);
  gsize row_stride = (gsize) b->lm->depformer.n_layers * cfg->dep_q * cfg->depformer_dim;
  for (int k = 0; k < cfg->dep_q; k++)
    for (int r = 0; r < b->max_rows; r++)
      host[(gsize) k * b->max_rows + r] = (MoshiRowCache) { b->dep_k + r * row_stride,
        b->dep_v + r * row_stride, k, k + 1 };
  be->ops->upload (b->ex, b->depth_rc, host, n * sizeof (MoshiRowCache));
  return be->ops->synchronize (b->ex, error);
}

MoshiLmBatch *
moshi_lm_batch_new (MoshiLm *lm, int max_rows, int n_threads, GError **error)
{
  if (max_rows < 1 || max_rows > 65536) {
    g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_INVALID_ARGUMENT,
        "batch size %d is out of range [1, 65536]", max_rows);
    return NULL;
  }
  MoshiExec *ex = moshi_exec_new (lm->be, n_threads, error);
  if (ex == NULL)
    return NULL;
  const MoshiLmConfig *cfg = &lm->cfg;
  MoshiLmBatch *b = g_new0 (MoshiLmBatch, 1);
  b->lm = moshi_lm_ref (lm);
  b->ex = ex;
  b->max_sessions = max_rows;
  if (cfg->n_conditioners > 0)
    max_rows *= 2;              /* classifier-free guidance: two rows per session */
  b->max_rows = max_rows;
  b->width = MAX (cfg->dim, cfg->dep_q > 0 ? cfg->depformer_dim : 0);
  int hidden = MAX (lm->temporal.max_hidden, lm->depformer.max_hidden);
  b->logits_width = MAX (cfg->text_card_out, cfg->card);
  int streams = moshi_lm_config_num_streams (cfg);
  gsize rows = max_rows;
  MoshiBackend *be = lm->be;
  b->rec = moshi_recorder_new (ex, 1, TRUE, "LM steps", lm->path);
  /* decode steps of 16 rows or more on tensor cores (BF16 activations, f32 accumulation) */
  const char *env = g_getenv ("MOSHI_TENSOR_CORES");
  ex->tensor_core_batches = !(env && g_str_equal (env, "0"));

  StepLayout *L = &b->layout;
  L->rc = 0;
  L->samplers = align_up (L->rc + rows * sizeof (MoshiRowCache));
  L->ids = align_up (L->samplers + (gsize) b->max_sessions * sizeof (MoshiSampler));
  L->cond = align_up (L->ids + rows * streams * sizeof (int32_t));
  L->size = L->cond + (cfg->n_conditioners > 0 ? rows * cfg->dim * sizeof (float) : 0);

  gboolean failed = FALSE;
#define ALLOC(ptr, n) \
  do { \
    if (!failed && ((ptr) = be->ops->alloc (be, (gsize) (n) * 4, error)) == NULL) \
      failed = TRUE; \
  } while (0)
#define HOST_ALLOC(ptr, bytes) \
  do { \
    if (!failed && ((ptr) = be->ops->host_alloc (be, (bytes), error)) == NULL) \
      failed = TRUE; \
  } while (0)
  ALLOC (b->x, rows * b->width);
  ALLOC (b->h, rows * b->width);
  ALLOC (b->qkv, rows * 3 * b->width);
  ALLOC (b->attn, rows * b->width);
  ALLOC (b->o, rows * b->width);
  ALLOC (b->ffn, rows * MAX (hidden, 1));
  ALLOC (b->ffn_act, rows * MAX (hidden, 1));
  ALLOC (b->t_out, rows * cfg->dim);
  ALLOC (b->low_rank, rows * MAX (cfg->depformer_low_rank, 1));
  ALLOC (b->logits, rows * b->logits_width);
  ALLOC (b->ids, rows * streams);
  if (cfg->n_conditioners > 0)
    ALLOC (b->cond, rows * cfg->dim);
  if (cfg->dep_q > 0) {
    gsize dep = rows * lm->depformer.n_layers * cfg->dep_q * cfg->depformer_dim;
    ALLOC (b->dep_k, dep);
    ALLOC (b->dep_v, dep);
  }
  ALLOC (b->step_dev, L->size / 4);
  ALLOC (b->tokens_dev, (gsize) b->max_sessions * (1 + cfg->dep_q));
  HOST_ALLOC (b->step_host, L->size);
  HOST_ALLOC (b->tokens_host, (gsize) b->max_sessions * (1 + cfg->dep_q) * sizeof (int32_t));
#undef ALLOC
#undef HOST_ALLOC
  G_STATIC_ASSERT (sizeof (MoshiRowCache) % 4 == 0 && sizeof (MoshiSampler) % 4 == 0);
  b->ids_host = g_new (int32_t, rows * streams);
  b->cond_host = g_new0 (float, rows * cfg->dim);
  b->row_of = g_new0 (int, b->max_sessions + 1);
  if (!failed && cfg->dep_q > 0 && !upload_depth_tables (b, error))
    failed = TRUE;
  if (failed) {
    moshi_lm_batch_free (b);
    return NULL;
  }
  return b;
}

static void
apply_norm (MoshiExec *ex, MoshiNormKind kind, const MoshiWeight *w, const MoshiWeight *b,
    float *dst, const float *src, int rows, int d)
{
  const MoshiBackendOps *ops = ex->backend->ops;
  if (kind == MOSHI_NORM_RMS_NORM || kind == MOSHI_NORM_RMS_NORM_F32)
    ops->rms_norm (ex, dst, d, src, d, w, moshi_norm_eps (kind), rows, d);
  else
    ops->layer_norm (ex, dst, d, src, d, w, b, moshi_norm_eps (kind), rows, d);
}

/* Runs the layers of tr over x [rows, d] with weight set `set`. */
static void
transformer_forward (MoshiLmBatch *b, const LmTransformer *tr, int set, float *x, int rows,
    const Caches *c)
{
  MoshiExec *ex = b->ex;
  const MoshiBackendOps *ops = ex->backend->ops;
  const MoshiTransformerConfig *cfg = tr->cfg;
  int d = cfg->d_model;
  int heads = cfg->num_heads;
  int hd = d / heads;
  float scale = 1.0f / sqrtf ((float) hd);
  int context = cfg->context > 0 ? cfg->context : G_MAXINT;
  float max_period = (float) cfg->max_period;
  gboolean rope = cfg->positional_embedding == MOSHI_POS_ROPE
      || cfg->positional_embedding == MOSHI_POS_SIN_ROPE;

  if (cfg->positional_embedding == MOSHI_POS_SIN || cfg->positional_embedding == MOSHI_POS_SIN_ROPE) {
    if (c->rc != NULL)
      ops->add_sin_embedding_rows (ex, x, d, rows, d, c->rc, max_period,
          (float) cfg->positional_scale);
    for (int s = 0; s < c->n_segs; s++)
      ops->add_sin_embedding (ex, x + (gsize) c->segs[s].row0 * d, d, c->segs[s].rows, d,
          c->segs[s].pos0, max_period, (float) cfg->positional_scale);
  }

  int ffn_set = cfg->gating == MOSHI_GATING_NONE ? 0 : set;
  for (int l = 0; l < tr->n_layers; l++) {
    const LmLayer *L = &tr->layers[l];
    apply_norm (ex, cfg->norm, &L->norm1_w, &L->norm1_b, b->h, x, rows, d);
    ops->linear (ex, b->qkv, 3 * d, b->h, d, &L->in_proj[set], NULL, rows, 0.0f);
    if (c->rc != NULL) {
      /* every row at once: one launch per op for all sessions */
      gsize off = c->layer_offset * l;
      if (rope) {
        ops->rope_rows (ex, b->qkv, 3 * d, rows, heads, hd, c->rc, max_period);
        ops->rope_rows (ex, b->qkv + d, 3 * d, rows, heads, hd, c->rc, max_period);
      }
      ops->kv_write_rows (ex, c->rc, c->rc_dtype, off, c->capacity, b->qkv + d, 3 * d,
          b->qkv + 2 * d, 3 * d, heads, hd, rows);
      ops->attention_rows (ex, b->attn, d, b->qkv, 3 * d, c->rc, c->rc_dtype, off, c->capacity,
          heads, hd, rows, context, scale);
    }
    for (int s = 0; s < c->n_segs; s++) {
      const Segment *sg = &c->segs[s];
      float *q = b->qkv + (gsize) sg->row0 * 3 * d;
      float *kc = sg->k_base + l * sg->layer_stride;
      float *vc = sg->v_base + l * sg->layer_stride;
      if (rope) {
        ops->rope (ex, q, 3 * d, sg->rows, heads, hd, sg->pos0, max_period);
        ops->rope (ex, q + d, 3 * d, sg->rows, heads, hd, sg->pos0, max_period);
      }
      ops->kv_write (ex, kc, vc, sg->capacity, q + d, 3 * d, q + 2 * d, 3 * d, d, sg->pos0, sg->rows);
      ops->attention (ex, b->attn + (gsize) sg->row0 * d, d, q, 3 * d, kc, vc, sg->capacity, heads,
          hd, sg->pos0, sg->rows, context, scale);
    }
    ops->linear (ex, b->o, d, b->attn, d, &L->out_proj[set], NULL, rows, 0.0f);
    ops->add_scaled (ex, x, d, b->o, d, cfg->layer_scale ? &L->scale1 : NULL, rows, d);

    apply_norm (ex, cfg->norm, &L->norm2_w, &L->norm2_b, b->h, x, rows, d);
    int hidden = L->ffn_hidden[ffn_set];
    if (cfg->gating == MOSHI_GATING_NONE) {
      ops->linear (ex, b->ffn, hidden, b->h, d, &L->ffn_in[0], NULL, rows, 0.0f);
      ops->gelu (ex, b->ffn, (gsize) rows * hidden);
      ops->linear (ex, b->o, d, b->ffn, hidden, &L->ffn_out[0], NULL, rows, 0.0f);
    } else {
      ops->linear (ex, b->ffn, 2 * hidden, b->h, d, &L->ffn_in[ffn_set], NULL, rows, 0.0f);
      ops->gated_act (ex, b->ffn_act, hidden, b->ffn, 2 * hidden,
          cfg->gating == MOSHI_GATING_SILU ? MOSHI_ACT_SILU : MOSHI_ACT_GELU, rows, hidden);
      ops->linear (ex, b->o, d, b->ffn_act, hidden, &L->ffn_out[ffn_set], NULL, rows, 0.0f);
    }
    ops->add_scaled (ex, x, d, b->o, d, cfg->layer_scale ? &L->scale2 : NULL, rows, d);
  }
}

/* dst[r] (+)= embedding of ids[r] (device ids), low-rank tables projected up. */
static void
embed (MoshiLmBatch *b, const LmEmbedding *e, float *dst, int d, const int32_t *ids, int rows,
    float beta)
{
  const MoshiBackendOps *ops = b->ex->backend->ops;
  if (!e->has_low_rank) {
    ops->embedding (b->ex, dst, d, &e->table, ids, rows, beta);
    return;
  }
  int r = (int) e->table.shape[1];
  ops->embedding (b->ex, b->low_rank, r, &e->table, ids, rows, 0.0f);
  ops->linear (b->ex, dst, d, b->low_rank, r, &e->low_rank, NULL, rows, beta);
}

/* Temporal pass: ids (device, [streams][rows]) and, for a conditioned model, cond (device,
 * [rows, dim]) -> t_out [rows, dim] and text logits. */
void
lm_temporal_forward (MoshiLmBatch *b, const int32_t *ids, const float *cond, int rows,
    const Caches *caches)
{
  MoshiLm *lm = b->lm;
  const MoshiLmConfig *cfg = &lm->cfg;
  const MoshiBackendOps *ops = b->ex->backend->ops;
  int d = cfg->dim;
  /* The audio embeddings in stream order, then the text one, as upstream sums them. */
  for (int j = 0; j < cfg->n_q; j++)
    embed (b, &lm->emb[j], b->x, d, ids + (gsize) (j + 1) * rows, rows, j == 0 ? 0.0f : 1.0f);
  embed (b, &lm->text_emb, b->x, d, ids, rows, cfg->n_q == 0 ? 0.0f : 1.0f);
  if (cfg->n_conditioners > 0)
    ops->add_scaled (b->ex, b->x, d, cond, d, NULL, rows, d);
  transformer_forward (b, &lm->temporal, 0, b->x, rows, caches);
  apply_norm (b->ex, cfg->transformer.norm, &lm->out_norm_w, &lm->out_norm_b, b->t_out, b->x, rows, d);
  ops->linear (b->ex, b->logits, cfg->text_card_out, b->t_out, d, &lm->text_linear, NULL, rows, 0.0f);
}

/* Depformer step k over rows whose previous tokens are in ids (device): logits in b->logits.
 * Every row has its own depth cache (b->depth_rc). */
void
lm_depformer_forward (MoshiLmBatch *b, int k, const int32_t *ids, int rows)
{
  MoshiLm *lm = b->lm;
  const MoshiLmConfig *cfg = &lm->cfg;
  const MoshiBackendOps *ops = b->ex->backend->ops;
  int dd = cfg->depformer_dim;
  int in_index = cfg->depformer_multi_linear ? (cfg->depformer.weights_per_step
      ? cfg->depformer.schedule[k] : k) : 0;
  ops->linear (b->ex, b->x, dd, b->t_out, cfg->dim, &lm->depformer_in[in_index], NULL, rows, 0.0f);
  embed (b, k == 0 ? &lm->depformer_text_emb : &lm->depformer_emb[k - 1], b->x, dd, ids, rows, 1.0f);
  Caches depth = { NULL, 0, b->depth_rc + (gsize) k * b->max_rows,
    (gsize) cfg->dep_q * dd * sizeof (float), cfg->dep_q, MOSHI_DTYPE_F32 };
  int set = cfg->depformer.weights_per_step ? cfg->depformer.schedule[k] : 0;
  transformer_forward (b, &lm->depformer, set, b->x, rows, &depth);
  const float *y = b->x;
  if (cfg->has_depformer_norm) {
    apply_norm (b->ex, cfg->depformer_norm, &lm->depformer_norm_w[k], &lm->depformer_norm_b[k],
        b->h, b->x, rows, dd);
    y = b->h;
  }
  ops->linear (b->ex, b->logits, cfg->card, y, dd, &lm->linears[k], NULL, rows, 0.0f);
}
