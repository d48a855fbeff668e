/* gst-moshi: what the parts of the LM (lm.c, lm-random.c, lm-batch.c, lm-forward.c,
 * lm-stream.c) share: the model's and the batch runner's structures and the calls between them.
 * Private to lib/models. */
#pragma once

#include "moshi-lm.h"
#include "moshi-backend.h"
#include "moshi-recorder.h"

G_BEGIN_DECLS

/* ---------------------------------------------------------------- the model (lm.c) */

typedef struct {
  MoshiWeight *in_proj, *out_proj;      /* per weight set: [3d, d], [d, d] */
  MoshiWeight *ffn_in, *ffn_out;        /* per weight set: gating [2h, d], [d, h]; or linear1/2 */
  int *ffn_hidden;
  MoshiWeight norm1_w, norm1_b, norm2_w, norm2_b;
  MoshiWeight scale1, scale2;
} LmLayer;

typedef struct {
  const MoshiTransformerConfig *cfg;
  int n_layers;
  int n_sets;
  LmLayer *layers;
  int max_hidden;
} LmTransformer;

typedef struct {
  MoshiWeight table;                    /* [V, d] or [V, r] */
  MoshiWeight low_rank;                 /* [d, r] when present */
  gboolean has_low_rank;
} LmEmbedding;

struct _MoshiLm {
  gint ref_count;
  char *cache_key;              /* set when the model is in the shared registry */
  MoshiLmConfig cfg;
  char *path;
  MoshiSafetensors *st;
  MoshiBackend *be;
  MoshiDType kv_dtype;                  /* streaming KV caches: BF16, F8_E4M3 or F32 */
  MoshiLmWeights weights;               /* linear matrices as stored, or int8 */

  LmEmbedding *emb;                     /* n_q audio streams */
  LmEmbedding text_emb;
  LmTransformer temporal;
  MoshiWeight out_norm_w, out_norm_b;
  MoshiWeight text_linear;

  int n_depformer_in;
  MoshiWeight *depformer_in;
  LmEmbedding depformer_text_emb;
  LmEmbedding *depformer_emb;           /* dep_q - 1 */
  LmTransformer depformer;
  MoshiWeight *depformer_norm_w, *depformer_norm_b;   /* dep_q, when configured */
  MoshiWeight *linears;                 /* dep_q */

  /* sum conditioners, host f32: embed [n_bins + 1, cdim], output_proj [dim, cdim],
   * learnt_padding [dim] (NULL without learn_padding) */
  float *cond_embed[MOSHI_LM_MAX_CONDITIONERS];
  float *cond_proj[MOSHI_LM_MAX_CONDITIONERS];
  float *cond_pad[MOSHI_LM_MAX_CONDITIONERS];
};

MoshiBackend *moshi_lm_get_backend (const MoshiLm *lm);
void lm_free (MoshiLm *lm);
gboolean lm_check_config (const MoshiLmConfig *cfg, const char *what, GError **error);
MoshiLm *lm_finish_load (MoshiLm *lm, MoshiBackend *be, const MoshiLmLoadOptions *options,
    GError **error);
gboolean lm_condition_vector (MoshiLm *lm, char *const *values, float *out, GError **error);
int lm_conditioner_index (MoshiLm *lm, const char *name, GError **error);
gsize lm_kv_slot_bytes (const MoshiLm *lm);
/* The safetensors image a checkpoint of cfg's shapes would be (lm-random.c): matrices uniform in
 * +-1/sqrt(columns), norm weights 1, biases 0, layer scales 0.1; all of dtype (BF16 or F32). The
 * same bytes for a seed whatever the number of threads making it (0: one per processor). */
GBytes *moshi_lm_random_image (const MoshiLmConfig *cfg, MoshiDType dtype, guint64 seed,
    guint threads);

/* ---------------------------------------------------------------- the batch runner (lm-batch.c) */

/* Rows [row0, row0 + rows) of the activations form one sequence with its own KV cache: the
 * cache of layer l is at k_base + l * layer_stride (capacity rows of d floats). Teacher forcing
 * runs one such sequence over many steps; streaming steps use MoshiRowCache tables instead. */
typedef struct {
  int row0, rows;
  float *k_base, *v_base;
  gsize layer_stride;
  int capacity;
  int pos0;
} Segment;

/* What a streaming step uploads, in one copy from pinned host memory to device memory (so that
 * a recorded step reads new inputs at every replay): the row tables, the samplers, the input
 * tokens [streams][rows] and the rows' conditions. Offsets in bytes, fixed for the batch. */
typedef struct {
  gsize rc, samplers, ids, cond, size;
} StepLayout;

struct _MoshiLmBatch {
  MoshiLm *lm;
  MoshiExec *ex;
  int max_rows;
  int max_sessions;             /* max_rows, or max_rows / 2 for a conditioned model (CFG) */
  float *cond, *cond_host;      /* [max_rows, dim]: teacher forcing's condition of each row */
  int *row_of;                  /* [max_sessions + 1]: first row of each session */
  int width;                    /* max(dim, depformer_dim) */
  float *x, *h, *qkv, *attn, *o, *ffn, *ffn_act, *t_out, *low_rank, *logits;
  int32_t *ids;                 /* device, [streams, max_rows] */
  float *dep_k, *dep_v;         /* depth caches [max_rows][layers][dep_q][depformer_dim] */
  MoshiRowCache *depth_rc;      /* device, [dep_q][max_rows]: row r's depth cache at step k */
  int logits_width;
  int32_t *ids_host;

  /* streaming steps */
  StepLayout layout;
  guint8 *step_host, *step_dev; /* pinned host / device copies of the step input */
  int32_t *tokens_dev, *tokens_host;   /* [max_sessions][1 + dep_q] sampled (host pinned) */
  float *text_logits_host;      /* pinned, [max_rows][text_card_out] when asked for */
  MoshiRecorder *rec;           /* steps recorded and replayed (backends that can): run_step */
};

/* Where the rows of a transformer pass keep their KV caches: one sequence per segment (teacher
 * forcing), or a device row table (a streaming step, every row its own sequence), with the
 * caches of layer l at layer_offset * l from the table's. */
typedef struct {
  const Segment *segs;
  int n_segs;
  const MoshiRowCache *rc;
  gsize layer_offset;           /* bytes */
  int capacity;
  MoshiDType rc_dtype;          /* of the row table's caches */
} Caches;

void lm_dev_free (MoshiBackend *be, void *p);
void lm_temporal_forward (MoshiLmBatch *b, const int32_t *ids, const float *cond, int rows,
    const Caches *caches);
void lm_depformer_forward (MoshiLmBatch *b, int k, const int32_t *ids, int rows);

G_END_DECLS
