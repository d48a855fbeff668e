/* gst-moshi: streaming LM sessions (upstream LMGen): delays, sampling and batched steps. */
#include "lm-internal.h"

#include "moshi-error.h"

#include <string.h>

/* ================================================================ streaming (LMGen) */

struct _MoshiLmSession {
  MoshiLm *lm;
  MoshiLmSamplingParams params;
  guint64 seed;                 /* params.seed as of the last reset */
  int ct;                       /* token delay line length: max_delay + 2 */
  int32_t *cache;               /* [streams][ct] */
  int64_t offset;
  int capacity;
  void *k_cache, *v_cache;      /* [layers][capacity][dim] of the model's kv_dtype */
  /* conditions: [0] the conditioned values, [1] the CFG null half's; NULL = no value */
  char *cond[2][MOSHI_LM_MAX_CONDITIONERS];
  float *cond_vec[2];           /* [dim] each */
  float cfg_coef;               /* fixed at reset; 1 = off */
  void *k_null, *v_null;        /* KV caches of the null half, allocated on first CFG step */
};

static gboolean
cfg_on (float coef)
{
  return coef > 0.0f && coef != 1.0f;
}

void
moshi_lm_sampling_params_init (MoshiLmSamplingParams *p)
{
  p->text_temperature = 0.7f;
  p->text_topk = 25;
  p->audio_temperature = 0.8f;
  p->audio_topk = 250;
  p->seed = 4242;
  p->cfg_coef = 1.0f;
}

void
moshi_lm_session_reset (MoshiLmSession *s)
{
  int streams = moshi_lm_config_num_streams (&s->lm->cfg);
  for (int i = 0; i < streams * s->ct; i++)
    s->cache[i] = MOSHI_LM_UNGENERATED_TOKEN;
  s->offset = 0;
  s->seed = s->params.seed;     /* with the step, the sampler's draws: a reset replays them */
  s->cfg_coef = cfg_on (s->params.cfg_coef) && s->lm->cfg.n_conditioners > 0 ? s->params.cfg_coef : 1.0f;
  /* KV rows stay; the attention mask ignores slots past the restarted end offset. */
}

void
moshi_lm_session_free (MoshiLmSession *s)
{
  if (s == NULL)
    return;
  lm_dev_free (s->lm->be, s->k_cache);
  lm_dev_free (s->lm->be, s->v_cache);
  lm_dev_free (s->lm->be, s->k_null);
  lm_dev_free (s->lm->be, s->v_null);
  for (int h = 0; h < 2; h++) {
    for (int c = 0; c < MOSHI_LM_MAX_CONDITIONERS; c++)
      g_free (s->cond[h][c]);
    g_free (s->cond_vec[h]);
  }
  g_free (s->cache);
  moshi_lm_unref (s->lm);
  g_free (s);
}

/* A KV cache that did not fit: what it needs, and what the operator can change. */
static void
explain_kv_no_memory (MoshiLm *lm, GError **error, const char *what, guint64 needed)
{
  moshi_backend_explain_no_memory (lm->be, error, what, needed,
      lm->kv_dtype == MOSHI_DTYPE_F8_E4M3 ? "lower max-conversations"
      : "lower max-conversations or use kv-cache=fp8");
}

MoshiLmSession *
moshi_lm_session_new (MoshiLm *lm, const MoshiLmSamplingParams *params, GError **error)
{
  const MoshiLmConfig *cfg = &lm->cfg;
  if (cfg->transformer.context <= 0) {
    g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_CONFIG,
        "%s: the model has no attention context, which streaming needs for its KV cache", lm->path);
    return NULL;
  }
  if (params && cfg_on (params->cfg_coef) && cfg->n_conditioners == 0) {
    g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_INVALID_ARGUMENT,
        "%s: classifier-free guidance (cfg_coef %g) needs a model with conditioners", lm->path,
        params->cfg_coef);
    return NULL;
  }
  MoshiLmSession *s = g_new0 (MoshiLmSession, 1);
  s->lm = moshi_lm_ref (lm);
  if (params)
    s->params = *params;
  else
    moshi_lm_sampling_params_init (&s->params);
  for (int h = 0; h < 2; h++) {
    s->cond_vec[h] = g_new0 (float, cfg->dim);
    lm_condition_vector (lm, s->cond[h], s->cond_vec[h], NULL);   /* no values: padding */
  }
  s->ct = moshi_lm_config_max_delay (cfg) + 2;
  s->cache = g_new (int32_t, moshi_lm_config_num_streams (cfg) * s->ct);
  s->capacity = cfg->transformer.context;
  gsize len = (gsize) lm->temporal.n_layers * s->capacity * lm_kv_slot_bytes (lm);
  s->k_cache = lm->be->ops->alloc (lm->be, len, error);
  s->v_cache = s->k_cache ? lm->be->ops->alloc (lm->be, len, error) : NULL;
  if (s->v_cache == NULL) {
    /* freed first, so that the message counts a half that did fit as free */
    moshi_lm_session_free (s);
    explain_kv_no_memory (lm, error, "another conversation's KV cache", 2 * (guint64) len);
    return NULL;
  }
  moshi_lm_session_reset (s);
  return s;
}

void
moshi_lm_session_set_sampling_params (MoshiLmSession *s, const MoshiLmSamplingParams *params)
{
  s->params = *params;
}

static gboolean
set_condition (MoshiLmSession *s, int half, const char *name, const char *value, GError **error)
{
  int c = lm_conditioner_index (s->lm, name, error);
  if (c < 0)
    return FALSE;
  char *old = s->cond[half][c];
  s->cond[half][c] = g_strdup (value);
  g_autofree float *vec = g_new (float, s->lm->cfg.dim);
  if (!lm_condition_vector (s->lm, s->cond[half], vec, error)) {
    g_free (s->cond[half][c]);
    s->cond[half][c] = old;
    return FALSE;
  }
  g_free (old);
  memcpy (s->cond_vec[half], vec, s->lm->cfg.dim * sizeof (float));
  return TRUE;
}

gboolean
moshi_lm_session_set_condition (MoshiLmSession *s, const char *name, const char *value,
    GError **error)
{
  return set_condition (s, 0, name, value, error);
}

gboolean
moshi_lm_session_set_null_condition (MoshiLmSession *s, const char *name, const char *value,
    GError **error)
{
  return set_condition (s, 1, name, value, error);
}

MoshiLm *
moshi_lm_session_get_model (MoshiLmSession *s)
{
  return s->lm;
}

int64_t
moshi_lm_session_steps (MoshiLmSession *s)
{
  return s->offset;
}

/* The device part of a streaming step over the step input in b->step_host: one upload, the
 * temporal pass, the text token sampled, the depformer passes each followed by its token
 * sampled and fed to the next, and the tokens (and text logits when asked for) copied back.
 * Nothing here waits for the device, so the whole can be recorded and replayed. */
static void
device_step (MoshiLmBatch *b, int n, int rows, gboolean want_logits)
{
  MoshiLm *lm = b->lm;
  const MoshiLmConfig *cfg = &lm->cfg;
  const MoshiBackendOps *ops = lm->be->ops;
  const StepLayout *L = &b->layout;
  int ld_tokens = 1 + cfg->dep_q;
  const MoshiSampler *samplers = (const MoshiSampler *) (b->step_dev + L->samplers);

  ops->upload (b->ex, b->step_dev, b->step_host, L->size);
  Caches caches = { NULL, 0, (const MoshiRowCache *) (b->step_dev + L->rc),
    (gsize) cfg->transformer.context * lm_kv_slot_bytes (lm), cfg->transformer.context,
    lm->kv_dtype };
  lm_temporal_forward (b, (const int32_t *) (b->step_dev + L->ids),
      (const float *) (b->step_dev + L->cond), rows, &caches);
  ops->sample (b->ex, b->tokens_dev, ld_tokens, b->ids, b->logits, cfg->text_card_out,
      cfg->text_card_out, samplers, n, 0);
  if (want_logits)
    ops->download_async (b->ex, b->text_logits_host, b->logits,
        (gsize) rows * cfg->text_card_out * sizeof (float));
  for (int k = 0; k < cfg->dep_q; k++) {
    lm_depformer_forward (b, k, b->ids, rows);
    ops->sample (b->ex, b->tokens_dev + k + 1, ld_tokens, b->ids, b->logits, cfg->card,
        cfg->card, samplers, n, k + 1);
  }
  ops->download_async (b->ex, b->tokens_host, b->tokens_dev,
      (gsize) n * ld_tokens * sizeof (int32_t));
}

typedef struct {
  MoshiLmBatch *b;
  int n, rows;
  gboolean want_logits;
} Step;

static void
step_device (gpointer ctx)
{
  Step *st = ctx;
  device_step (st->b, st->n, st->rows, st->want_logits);
}

/* Runs device_step through the batch's recorder (moshi-recorder.h): the shape of a step is
 * the sessions' rows and whether text logits come back. */
static gboolean
run_step (MoshiLmBatch *b, int n, int rows, gboolean want_logits, GError **error)
{
  MoshiBackend *be = b->lm->be;
  if (want_logits && b->text_logits_host == NULL) {
    b->text_logits_host = be->ops->host_alloc (be,
        (gsize) b->max_rows * b->lm->cfg.text_card_out * sizeof (float), error);
    if (b->text_logits_host == NULL)
      return FALSE;
  }
  GString *key = g_string_new (NULL);
  g_string_printf (key, "%d/%d", n, want_logits);
  for (int i = 0; i <= n; i++)
    g_string_append_printf (key, "/%d", b->row_of[i]);
  gboolean ok = moshi_recorder_run (b->rec, 0, key->str, FALSE, step_device,
      &(Step) { b, n, rows, want_logits }, error);
  g_string_free (key, TRUE);
  return ok;
}

gboolean
moshi_lm_batch_step (MoshiLmBatch *b, MoshiLmSession **sessions, int n,
    const int32_t *user_codes, int32_t *text_out, int32_t *audio_out, gboolean *returned,
    float *text_logits_out, GError **error)
{
  MoshiLm *lm = b->lm;
  const MoshiLmConfig *cfg = &lm->cfg;
  const MoshiBackendOps *ops = lm->be->ops;
  int streams = moshi_lm_config_num_streams (cfg);
  int n_user = cfg->n_q - cfg->dep_q;
  int max_delay = moshi_lm_config_max_delay (cfg);
  if (n < 1 || n > b->max_sessions) {
    g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_INVALID_ARGUMENT,
        "%d sessions in one step; this batch runs 1 to %d", n, b->max_sessions);
    return FALSE;
  }
  for (int r = 0; r < n; r++) {
    if (sessions[r]->lm != lm) {
      g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_INVALID_ARGUMENT,
          "session %d belongs to another model than this batch", r);
      return FALSE;
    }
    for (int r2 = 0; r2 < r; r2++)
      if (sessions[r2] == sessions[r]) {
        g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_INVALID_ARGUMENT,
            "session %d appears twice in one step", r);
        return FALSE;
      }
    for (int j = 0; j < n_user; j++) {
      int32_t c = user_codes[(gsize) r * n_user + j];
      if (c < -1 || c > cfg->card) {
        g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_INVALID_ARGUMENT,
            "user code %d of codebook %d (session %d) is outside [-1, %d]", c, j, r, cfg->card);
        return FALSE;
      }
    }
  }

  /* Rows: one per session, two (conditioned, then null) with classifier-free guidance. */
  int rows = 0;
  for (int r = 0; r < n; r++) {
    MoshiLmSession *s = sessions[r];
    if (s->offset > G_MAXINT - 1) {
      g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_INVALID_ARGUMENT,
          "session %d has run %" G_GINT64_FORMAT " steps; reset it", r, s->offset);
      return FALSE;
    }
    if (s->cfg_coef != 1.0f && s->k_null == NULL) {
      gsize len = (gsize) lm->temporal.n_layers * s->capacity * lm_kv_slot_bytes (lm);
      s->k_null = ops->alloc (lm->be, len, error);
      if (s->k_null == NULL || (s->v_null = ops->alloc (lm->be, len, error)) == NULL) {
        lm_dev_free (lm->be, s->k_null);
        s->k_null = NULL;
        explain_kv_no_memory (lm, error, "the KV cache of a conversation's classifier-free "
            "guidance", 2 * (guint64) len);
        return FALSE;
      }
    }
    b->row_of[r] = rows;
    rows += s->cfg_coef != 1.0f ? 2 : 1;
  }
  b->row_of[n] = rows;

  /* Delay line in, model input out (LMGen._step), into the step input. */
  const StepLayout *L = &b->layout;
  MoshiRowCache *rc = (MoshiRowCache *) (b->step_host + L->rc);
  MoshiSampler *samplers = (MoshiSampler *) (b->step_host + L->samplers);
  int32_t *ids = (int32_t *) (b->step_host + L->ids);
  float *cond = (float *) (b->step_host + L->cond);
  for (int r = 0; r < n; r++) {
    MoshiLmSession *s = sessions[r];
    for (int j = 0; j < n_user; j++) {
      int k = cfg->dep_q + 1 + j;
      s->cache[k * s->ct + (s->offset + cfg->delays[k]) % s->ct] = user_codes[(gsize) r * n_user + j];
    }
    for (int row = b->row_of[r]; row < b->row_of[r + 1]; row++) {
      for (int k = 0; k < streams; k++) {
        int initial = k == 0 ? cfg->text_card : cfg->card;
        int32_t v = s->offset <= cfg->delays[k] ? initial : s->cache[k * s->ct + s->offset % s->ct];
        if (k == 0 && cfg->hibiki && v == 2)
          v = 3;                /* text_emb row 2 := row 3 (model_type hibiki) */
        ids[(gsize) k * rows + row] = v;
      }
      int half = row - b->row_of[r];
      if (cfg->n_conditioners > 0)
        memcpy (cond + (gsize) row * cfg->dim, s->cond_vec[half], cfg->dim * sizeof (float));
      rc[row] = (MoshiRowCache) { half ? s->k_null : s->k_cache, half ? s->v_null : s->v_cache,
        (int32_t) s->offset, (int32_t) s->offset + 1 };
    }
    samplers[r] = (MoshiSampler) {
      .text_temperature = s->params.text_temperature,
      .text_top_k = s->params.text_topk,
      .audio_temperature = s->params.audio_temperature,
      .audio_top_k = s->params.audio_topk,
      .cfg_coef = s->cfg_coef,
      .row = b->row_of[r],
      .n_rows = b->row_of[r + 1] - b->row_of[r],
      .seed = s->seed,
      .step = s->offset,
    };
  }

  if (!run_step (b, n, rows, text_logits_out != NULL, error)
      || !ops->synchronize (b->ex, error))
    return FALSE;

  int text_vocab = cfg->text_card_out;
  for (int r = 0; text_logits_out && r < n; r++)
    memcpy (text_logits_out + (gsize) r * text_vocab,
        b->text_logits_host + (gsize) b->row_of[r] * text_vocab, text_vocab * sizeof (float));
  const int32_t *tokens = b->tokens_host;      /* [n][1 + dep_q] */

  /* Feed back everything generated, then read the frame max_delay steps behind. */
  for (int r = 0; r < n; r++) {
    MoshiLmSession *s = sessions[r];
    s->offset++;
    int slot = s->offset % s->ct;
    for (int k = 0; k <= cfg->dep_q; k++)
      s->cache[k * s->ct + slot] = tokens[(gsize) r * (1 + cfg->dep_q) + k];
    gboolean ready = s->offset > max_delay;
    returned[r] = ready;
    for (int k = 0; k <= cfg->dep_q; k++) {
      int32_t v = ready ? s->cache[k * s->ct + (s->offset - max_delay + cfg->delays[k]) % s->ct]
          : MOSHI_LM_UNGENERATED_TOKEN;
      if (k == 0)
        text_out[r] = v;
      else
        audio_out[(gsize) r * cfg->dep_q + k - 1] = v;
    }
  }
  return TRUE;
}
