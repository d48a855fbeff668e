/* gst-moshi: configuration of the Moshi LM (RQ-Transformer), in the keys of the upstream
 * config.json / loaders._lm_kwargs, with the upstream LMModel defaults for keys left out. */
#pragma once

#include <glib.h>
#include "moshi-api.h"

MOSHI_BEGIN_DECLS

#define MOSHI_LM_MAX_STREAMS 72
#define MOSHI_LM_MAX_DEP_STEPS 64

typedef enum {
  MOSHI_NORM_LAYER_NORM,        /* eps 1e-5, weight + bias */
  MOSHI_NORM_LAYER_NORM_F32,    /* eps 1e-8, weight + bias */
  MOSHI_NORM_RMS_NORM,          /* eps 1e-5, alpha */
  MOSHI_NORM_RMS_NORM_F32,      /* eps 1e-8, alpha */
} MoshiNormKind;

typedef enum {
  MOSHI_POS_NONE,
  MOSHI_POS_SIN,                /* additive sinusoidal embedding before layer 0 */
  MOSHI_POS_ROPE,               /* interleaved RoPE */
  MOSHI_POS_SIN_ROPE,           /* both */
  MOSHI_POS_ROPE_CONCAT,        /* RoPE on half-split pairs */
} MoshiPosKind;

typedef enum {
  MOSHI_GATING_NONE,            /* linear1 -> GELU -> linear2 */
  MOSHI_GATING_SILU,
  MOSHI_GATING_GELU,
} MoshiGatingKind;

typedef struct {
  int d_model;
  int num_heads;
  int num_layers;
  int dim_feedforward;          /* before the gating rule (the weights decide the hidden size) */
  int context;                  /* attention window in steps; 0 = unbounded */
  gboolean causal;
  MoshiPosKind positional_embedding;
  double max_period;
  double positional_scale;
  MoshiNormKind norm;
  MoshiGatingKind gating;
  gboolean layer_scale;
  int kv_repeat;
  int weights_per_step;         /* 0, or the number of steps with their own weights */
  int n_weight_sets;            /* max(schedule) + 1, weights_per_step, or 1 */
  int schedule[MOSHI_LM_MAX_DEP_STEPS];   /* step -> weight set */
} MoshiTransformerConfig;

#define MOSHI_LM_MAX_CONDITIONERS 4
#define MOSHI_LM_MAX_CONDITION_VALUES 32
#define MOSHI_LM_CONDITION_NAME_LEN 64

/* A LUT conditioner summed into the input embedding (config "conditioners" + "fuser": {"sum"}):
 * embed [n_bins + 1, dim] -> output_proj [model dim, dim] -> learnt_padding for "no value". */
typedef struct {
  char name[MOSHI_LM_CONDITION_NAME_LEN];
  int n_bins;
  int dim;
  gboolean learn_padding;
  int n_values;                 /* 0: the hash trick (sha256 mod n_bins) maps any value */
  char values[MOSHI_LM_MAX_CONDITION_VALUES][MOSHI_LM_CONDITION_NAME_LEN];
} MoshiLmConditioner;

typedef struct {
  int dim;
  int text_card;
  int text_card_out;
  int n_q;                      /* audio streams in (Moshi's dep_q + the user's) */
  int dep_q;                    /* audio streams generated */
  int card;
  int existing_text_padding_id;
  int existing_text_end_padding_id;
  int delays[MOSHI_LM_MAX_STREAMS];   /* 1 + n_q entries: text, then audio */
  MoshiTransformerConfig transformer;
  MoshiTransformerConfig depformer;
  int depformer_dim;
  gboolean depformer_multi_linear;
  int depformer_low_rank;       /* 0 = full-rank embeddings */
  gboolean has_depformer_norm;
  MoshiNormKind depformer_norm;
  int n_conditioners;           /* the "sum" conditioners, in fuser order */
  MoshiLmConditioner conditioners[MOSHI_LM_MAX_CONDITIONERS];
  gboolean hibiki;              /* model_type "hibiki": text_emb row 2 reads as row 3 */
} MoshiLmConfig;

/* The released Moshi 7B (loaders._lm_kwargs). */
void moshi_lm_config_init_moshi_7b (MoshiLmConfig *cfg);

/* Reads an upstream LM config.json. Keys of the checkpoint description (model_type,
 * mimi_name, tokenizer_name, lm_gen_config, ...) are ignored; a key this implementation does
 * not support is an error naming it. */
gboolean moshi_lm_config_load (MoshiLmConfig *cfg, const char *path, GError **error);
gboolean moshi_lm_config_from_json_text (MoshiLmConfig *cfg, const char *text, gsize len,
    const char *what, GError **error);

int moshi_lm_config_num_streams (const MoshiLmConfig *cfg);      /* 1 + n_q */
int moshi_lm_config_max_delay (const MoshiLmConfig *cfg);
float moshi_norm_eps (MoshiNormKind kind);

MOSHI_END_DECLS
