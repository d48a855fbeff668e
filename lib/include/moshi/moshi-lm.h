/* gst-moshi: the Moshi language model (RQ-Transformer: temporal transformer + depformer) and
 * its streaming generator (upstream LMGen).
 *
 * A MoshiLm is a loaded checkpoint, immutable and shareable. A MoshiLmSession is one
 * conversation: its token delay line, KV caches, step counter and random generator. Steps run
 * through a MoshiLmBatch, which owns the compute resources (thread pool, activations) and runs
 * N sessions of one model as one batched step: weights are read once for all of them. */
#pragma once

#include <glib.h>
#include "moshi-api.h"
#include <stdint.h>

#include "lm-config.h"
#include "moshi-device.h"
#include "moshi-dtype.h"

MOSHI_BEGIN_DECLS

typedef struct _MoshiLm MoshiLm;
typedef struct _MoshiLmSession MoshiLmSession;
typedef struct _MoshiLmBatch MoshiLmBatch;

/* Upstream's special ids. */
#define MOSHI_LM_ZERO_TOKEN (-1)          /* embeds to an exact zero */
#define MOSHI_LM_UNGENERATED_TOKEN (-2)   /* "not generated yet" in returned frames */

/* The element type of the streaming KV caches (teacher forcing keeps f32). BF16 halves the
 * largest per-conversation memory (about 1.57 GB for Moshi 7B at context 3000, against 3.15) and
 * what a step reads; the greedy tokens of the conformance cases are the same as with F32. */
typedef enum {
  MOSHI_LM_KV_DEFAULT,          /* BF16 */
  MOSHI_LM_KV_F32,
  MOSHI_LM_KV_BF16,
  /* FP8 E4M3 with an f32 scale per position and head (amax / 448): a quarter of F32 (Moshi 7B:
   * 0.80 GB at context 3000). Greedy tokens may leave F32's after some steps: see
   * tests/test-lm.c (test_fp8_kv_against_f32) for the tolerance tested. */
  MOSHI_LM_KV_FP8,
} MoshiLmKvCache;

/* The linear layers' matrices: as the checkpoint stores them (BF16 or F32), or weight-only
 * int8 with a scale per output feature, quantized at load: half of BF16's bytes (Moshi 7B in
 * about 8 GB), within the tolerance stated in tests/test-lm.c (test_int8_weights). Embedding
 * tables stay as stored. */
typedef enum {
  MOSHI_LM_WEIGHTS_AS_STORED,
  MOSHI_LM_WEIGHTS_INT8,
} MoshiLmWeights;

typedef struct {
  MoshiDevice device;
  MoshiLmKvCache kv_cache;
  MoshiLmWeights weights;
} MoshiLmLoadOptions;

MoshiDType moshi_lm_kv_cache_dtype (MoshiLmKvCache kv);
const char *moshi_lm_kv_cache_name (MoshiLmKvCache kv);          /* "bf16", "f32", "fp8" */
gboolean moshi_lm_kv_cache_from_name (const char *name, MoshiLmKvCache *out);

/* Loads LM weights (safetensors, upstream key names; F32 or BF16; fused in_proj_weight or
 * per-step in_projs.N.weight attention names). config_path may be NULL for the released Moshi
 * 7B layout; the checkpoint's shapes are checked against the config either way. */
MoshiLm *moshi_lm_load (const char *weights_path, const char *config_path,
    const MoshiLmLoadOptions *options, GError **error);
/* Like moshi_lm_load, but returns the copy already loaded in this process for the same files
 * and device, if any (see moshi_mimi_load_shared). */
MoshiLm *moshi_lm_load_shared (const char *weights_path, const char *config_path,
    const MoshiLmLoadOptions *options, GError **error);
/* A model of cfg's shapes with random weights of dtype (BF16 or F32), for benchmarks and tests:
 * the in-memory safetensors image a checkpoint would be (fused attention projections; matrices
 * uniform in +-1/sqrt(columns), norm weights 1, biases 0), through the normal loader. */
MoshiLm *moshi_lm_new_random (const MoshiLmConfig *cfg, MoshiDType dtype, guint64 seed,
    MoshiDevice device, GError **error);
/* The same with load options (the device and the KV caches). */
MoshiLm *moshi_lm_new_random_full (const MoshiLmConfig *cfg, MoshiDType dtype, guint64 seed,
    const MoshiLmLoadOptions *options, GError **error);
MoshiLm *moshi_lm_ref (MoshiLm *lm);
void moshi_lm_unref (MoshiLm *lm);
G_DEFINE_AUTOPTR_CLEANUP_FUNC (MoshiLm, moshi_lm_unref)

const MoshiLmConfig *moshi_lm_get_config (const MoshiLm *lm);
const char *moshi_lm_get_path (const MoshiLm *lm);
/* The device it was loaded on (never AUTO). */
MoshiDevice moshi_lm_get_device (const MoshiLm *lm);
/* The backend it was loaded on, in words, as moshi_mimi_describe_device. Free with g_free. */
char *moshi_lm_describe_device (const MoshiLm *lm);
/* Audio codebooks the model takes from the user each step (n_q - dep_q). */
int moshi_lm_user_codebooks (const MoshiLm *lm);
/* Codebooks it generates each step (dep_q). */
int moshi_lm_generated_codebooks (const MoshiLm *lm);
int moshi_lm_text_padding_id (const MoshiLm *lm);
/* The element type of its sessions' KV caches (MoshiLmLoadOptions.kv_cache). */
MoshiDType moshi_lm_get_kv_dtype (const MoshiLm *lm);
MoshiLmWeights moshi_lm_get_weights (const MoshiLm *lm);

/* Teacher-forced pass, as upstream LMModel.forward: codes [B, 1 + n_q, T] (text stream first;
 * -1 = zero token). Outputs in the upstream layout: logits [B, dep_q, T, card], text_logits
 * [B, 1, T, text_card_out], mask [B, dep_q, T], text_mask [B, 1, T] (1 = valid). Invalid
 * positions of the logits are NaN, as upstream. */
gboolean moshi_lm_forward (MoshiLm *lm, const int64_t *codes, int batch, int steps,
    int n_threads, float *logits, float *text_logits, guint8 *mask, guint8 *text_mask,
    GError **error);

/* As moshi_lm_forward, with the model's sum conditions set for every batch row: conditions is
 * NULL or a NULL-terminated list of name, value pairs (e.g. "description", "very_good");
 * a condition left out has no value (its learnt padding). */
gboolean moshi_lm_forward_conditioned (MoshiLm *lm, const char *const *conditions,
    const int64_t *codes, int batch, int steps, int n_threads, float *logits, float *text_logits,
    guint8 *mask, guint8 *text_mask, GError **error);

typedef struct {
  /* temperature <= 0 means greedy (argmax); top_k <= 0 means the whole vocabulary */
  float text_temperature;
  int text_topk;
  float audio_temperature;
  int audio_topk;
  guint64 seed;
  /* Classifier-free guidance (upstream LMGen cfg_coef), models with conditioners only: each
   * session runs two rows, conditioned and null (see moshi_lm_session_set_null_condition), and
   * samples from null + cfg_coef * (cond - null). 1 (or <= 0) = off. Taken at reset, as seed. */
  float cfg_coef;
} MoshiLmSamplingParams;

/* Upstream LMGen defaults: text 0.7 / 25, audio 0.8 / 250, cfg_coef 1. */
void moshi_lm_sampling_params_init (MoshiLmSamplingParams *params);

MoshiLmSession *moshi_lm_session_new (MoshiLm *lm, const MoshiLmSamplingParams *params,
    GError **error);
void moshi_lm_session_free (MoshiLmSession *session);
G_DEFINE_AUTOPTR_CLEANUP_FUNC (MoshiLmSession, moshi_lm_session_free)
/* Back to a fresh conversation (step 0); the random draws start again from the seed. */
void moshi_lm_session_reset (MoshiLmSession *session);
/* New sampling settings: temperatures and top-k from the next step, the seed from the next
 * reset (a running conversation keeps its random sequence). */
void moshi_lm_session_set_sampling_params (MoshiLmSession *session,
    const MoshiLmSamplingParams *params);
/* The value of the model's condition `name` (config "conditioners", fused by "sum"), e.g.
 * "description" = "very_good"; value NULL = no value (the learnt padding, the default). Errors
 * for an unknown name or a value outside the conditioner's possible_values. Applies from the
 * next step. */
gboolean moshi_lm_session_set_condition (MoshiLmSession *session, const char *name,
    const char *value, GError **error);
/* The same for the null half of classifier-free guidance (upstream Hibiki uses "very_bad"
 * there); by default no value. */
gboolean moshi_lm_session_set_null_condition (MoshiLmSession *session, const char *name,
    const char *value, GError **error);
MoshiLm *moshi_lm_session_get_model (MoshiLmSession *session);
/* Steps run since the start or the last reset. */
int64_t moshi_lm_session_steps (MoshiLmSession *session);

MoshiLmBatch *moshi_lm_batch_new (MoshiLm *lm, int max_sessions, int n_threads, GError **error);
void moshi_lm_batch_free (MoshiLmBatch *batch);
G_DEFINE_AUTOPTR_CLEANUP_FUNC (MoshiLmBatch, moshi_lm_batch_free)

/* One step of n sessions (all of this batch's model; at most max_sessions, each running two
 * rows with classifier-free guidance), as upstream LMGen.step:
 * user_codes: n x user_codebooks, the user's Mimi codes for this step, row per session;
 * text_out: n text tokens; audio_out: n x dep_q audio codes, row per session;
 * returned: n flags, FALSE where upstream returns None (the first max_delay steps), in which
 * case the outputs of that row are MOSHI_LM_UNGENERATED_TOKEN.
 * text_logits_out may be NULL, or n x text_card_out floats: the text logits of this step. */
gboolean moshi_lm_batch_step (MoshiLmBatch *batch, MoshiLmSession **sessions, int n,
    const int32_t *user_codes, int32_t *text_out, int32_t *audio_out, gboolean *returned,
    float *text_logits_out, GError **error);

/* What a model of cfg's shapes needs, counted from the shapes alone (nothing is allocated):
 * for sizing a deployment and for paper estimates. weight_dtype is the checkpoint's (BF16 or
 * F32), or I8 for int8 linear layers (the tables then BF16); kv_dtype the KV caches'. */
typedef struct {
  guint64 weight_bytes;           /* resident: matrices in weight_dtype, the rest f32 */
  guint64 weight_bytes_per_step;  /* read by one step, whatever its batch: every matrix but the
                                   * embedding tables, of which a step gathers a few rows */
  guint64 flops_per_step;         /* per conversation: the matrix products, and the temporal
                                   * attention over a full cache */
  guint64 kv_bytes;               /* per conversation: the temporal KV caches at full context */
  guint64 kv_bytes_per_step;      /* per conversation: KV read by a step at full context */
  guint64 scratch_bytes;          /* per conversation: its batch row (activations, depformer
                                   * caches) */
} MoshiLmFootprint;

void moshi_lm_config_footprint (const MoshiLmConfig *cfg, MoshiDType weight_dtype,
    MoshiDType kv_dtype, MoshiLmFootprint *footprint);

MOSHI_END_DECLS
