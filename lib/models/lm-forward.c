/* gst-moshi: LM teacher forcing (moshi_lm_forward): logits for whole given sequences. */
#include "lm-internal.h"

#include "moshi-error.h"

#include <math.h>
#include <string.h>

/* ================================================================ teacher forcing */

gboolean
moshi_lm_forward (MoshiLm *lm, const int64_t *codes, int batch, int steps, int n_threads,
    float *logits, float *text_logits, guint8 *mask, guint8 *text_mask, GError **error)
{
  return moshi_lm_forward_conditioned (lm, NULL, codes, batch, steps, n_threads, logits,
      text_logits, mask, text_mask, error);
}

gboolean
moshi_lm_forward_conditioned (MoshiLm *lm, const char *const *conditions, const int64_t *codes,
    int batch, int steps, int n_threads, float *logits, float *text_logits, guint8 *mask,
    guint8 *text_mask, GError **error)
{
  const MoshiLmConfig *cfg = &lm->cfg;
  char *values[MOSHI_LM_MAX_CONDITIONERS] = { NULL };
  for (int i = 0; conditions && conditions[i]; i += 2) {
    int c = lm_conditioner_index (lm, conditions[i], error);
    if (c < 0)
      return FALSE;
    if (conditions[i + 1] == NULL) {
      g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_INVALID_ARGUMENT,
          "condition \"%s\" has no value (conditions are name, value pairs)", conditions[i]);
      return FALSE;
    }
    values[c] = (char *) conditions[i + 1];
  }
  g_autofree float *cond_vec = g_new0 (float, cfg->dim);
  if (!lm_condition_vector (lm, values, cond_vec, error))
    return FALSE;
  int streams = moshi_lm_config_num_streams (cfg);
  if (batch < 1 || steps < 1) {
    g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_INVALID_ARGUMENT,
        "codes must have at least one batch row and one step (got [%d, %d, %d])", batch, streams, steps);
    return FALSE;
  }
  for (gsize i = 0; i < (gsize) batch * streams * steps; i++) {
    int k = (int) (i / steps) % streams;
    int64_t limit = k == 0 ? cfg->text_card : cfg->card;
    if (codes[i] < -1 || codes[i] >= limit) {
      g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_INVALID_ARGUMENT,
          "code %" G_GINT64_FORMAT " of stream %d (batch %d, step %d) is outside [-1, %" G_GINT64_FORMAT ")",
          codes[i], k, (int) (i / ((gsize) streams * steps)), (int) (i % steps), limit);
      return FALSE;
    }
  }
  g_autoptr (MoshiLmBatch) b = moshi_lm_batch_new (lm, steps, n_threads, error);
  if (b == NULL)
    return FALSE;
  /* teacher forcing is the conformance path: f32 products throughout */
  b->ex->tensor_core_batches = FALSE;
  MoshiBackend *be = lm->be;
  const MoshiBackendOps *ops = be->ops;
  int d = cfg->dim;
  int capacity = steps;
  gsize cache_len = (gsize) lm->temporal.n_layers * capacity * d;
  float *k_cache = ops->alloc (be, cache_len * 4, error);
  float *v_cache = k_cache ? ops->alloc (be, cache_len * 4, error) : NULL;
  if (v_cache == NULL) {
    lm_dev_free (be, k_cache);
    return FALSE;
  }
  int32_t *dc = g_new (int32_t, (gsize) streams * (steps + 1));
  float *raw = g_new (float, (gsize) steps * MAX (cfg->card, cfg->text_card_out));
  float *raw_audio = g_new (float, (gsize) MAX (cfg->dep_q, 1) * steps * cfg->card);
  Segment seq = { 0, steps, k_cache, v_cache, (gsize) capacity * d, capacity, 0 };
  gboolean ok = TRUE;

  for (int bi = 0; ok && bi < batch; bi++) {
    const int64_t *c = codes + (gsize) bi * streams * steps;
    /* dc[k, p] = codes[k, p - 1 - delay_k], the initial token before the stream starts */
    for (int k = 0; k < streams; k++) {
      int initial = k == 0 ? cfg->text_card : cfg->card;
      for (int p = 0; p <= steps; p++) {
        int src = p - 1 - cfg->delays[k];
        dc[(gsize) k * (steps + 1) + p] = src >= 0 ? (int32_t) c[(gsize) k * steps + src] : initial;
      }
    }
    for (int k = 0; k < streams; k++)
      memcpy (b->ids_host + (gsize) k * steps, dc + (gsize) k * (steps + 1), steps * sizeof (int32_t));
    for (int p = 0; cfg->hibiki && p < steps; p++)
      if (b->ids_host[p] == 2)
        b->ids_host[p] = 3;     /* text_emb row 2 := row 3 (model_type hibiki) */
    for (int p = 0; cfg->n_conditioners > 0 && p < steps; p++)
      memcpy (b->cond_host + (gsize) p * cfg->dim, cond_vec, cfg->dim * sizeof (float));
    ops->upload (b->ex, b->ids, b->ids_host, (gsize) streams * steps * sizeof (int32_t));
    if (cfg->n_conditioners > 0)
      ops->upload (b->ex, b->cond, b->cond_host, (gsize) steps * d * sizeof (float));
    Caches caches = { &seq, 1, NULL, 0, 0, MOSHI_DTYPE_F32 };
    lm_temporal_forward (b, b->ids, b->cond, steps, &caches);
    if (!(ok = ops->download (b->ex, raw, b->logits,
            (gsize) steps * cfg->text_card_out * sizeof (float), error)))
      break;

    /* text: position p + delay_0 predicts frame p */
    for (int f = 0; f < steps; f++) {
      int p = f + cfg->delays[0];
      float *dst = text_logits + ((gsize) bi * steps + f) * cfg->text_card_out;
      gboolean valid = p < steps;
      for (int v = 0; v < cfg->text_card_out; v++)
        dst[v] = valid ? raw[(gsize) p * cfg->text_card_out + v] : NAN;
      text_mask[(gsize) bi * steps + f] = valid && c[f] != MOSHI_LM_ZERO_TOKEN;
    }

    if (cfg->dep_q == 0)
      continue;
    for (int k = 0; ok && k < cfg->dep_q; k++) {
      /* the depformer input of step k at position p is dc[k, p + 1] */
      for (int p = 0; p < steps; p++)
        b->ids_host[p] = dc[(gsize) k * (steps + 1) + p + 1];
      ops->upload (b->ex, b->ids, b->ids_host, steps * sizeof (int32_t));
      lm_depformer_forward (b, k, b->ids, steps);
      ok = ops->download (b->ex, raw_audio + (gsize) k * steps * cfg->card, b->logits,
          (gsize) steps * cfg->card * sizeof (float), error);
    }
    if (!ok)
      break;
    for (int k = 0; k < cfg->dep_q; k++) {
      int delay = cfg->delays[k + 1];
      for (int f = 0; f < steps; f++) {
        int p = f + delay;
        gboolean valid = p < steps;
        float *dst = logits + (((gsize) bi * cfg->dep_q + k) * steps + f) * cfg->card;
        for (int v = 0; v < cfg->card; v++)
          dst[v] = valid ? raw_audio[((gsize) k * steps + p) * cfg->card + v] : NAN;
        mask[((gsize) bi * cfg->dep_q + k) * steps + f] =
            valid && c[(gsize) (k + 1) * steps + f] != MOSHI_LM_ZERO_TOKEN;
      }
    }
  }
  g_free (dc);
  g_free (raw);
  g_free (raw_audio);
  lm_dev_free (be, k_cache);
  lm_dev_free (be, v_cache);
  return ok;
}
