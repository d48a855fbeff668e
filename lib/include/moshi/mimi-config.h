/* gst-moshi: Mimi hyper-parameters, in the layout of the upstream `mimi_config` dict. */
#pragma once

#include <glib.h>
#include "moshi-api.h"

MOSHI_BEGIN_DECLS

#define MOSHI_MIMI_MAX_RATIOS 8

typedef struct {
  int sample_rate;
  int channels;
  double frame_rate;

  struct {
    int dimension;
    int n_filters;
    int n_ratios;
    int ratios[MOSHI_MIMI_MAX_RATIOS];  /* decoder order, as upstream */
    int kernel_size;
    int residual_kernel_size;
    int last_kernel_size;
    int n_residual_layers;
    int compress;
    int dilation_base;
    gboolean true_skip;
  } seanet;

  struct {
    int dimension;
    int n_q;
    int bins;
    int input_dimension;
    int output_dimension;
  } quantizer;

  struct {
    int d_model;
    int num_heads;
    int num_layers;
    int dim_feedforward;
    int context;
    double max_period;
    gboolean layer_scale;   /* LayerScale on both residual branches */
  } transformer;
} MoshiMimiConfig;

/* The released Mimi (tokenizer-e351c8d8-checkpoint125). */
void moshi_mimi_config_init_default (MoshiMimiConfig *cfg);

/* Reads a JSON file in the upstream mimi_config layout. Keys left out keep the released
 * values; keys with values this implementation does not support (e.g. "norm": "weight_norm",
 * "causal": false) are errors naming the key. */
gboolean moshi_mimi_config_load (MoshiMimiConfig *cfg, const char *path, GError **error);
gboolean moshi_mimi_config_from_json_text (MoshiMimiConfig *cfg, const char *text, gsize len,
    const char *what, GError **error);

/* Derived sizes. */
int moshi_mimi_config_hop_length (const MoshiMimiConfig *cfg);      /* product of ratios */
int moshi_mimi_config_frame_size (const MoshiMimiConfig *cfg);      /* samples per frame */
int moshi_mimi_config_resample_stride (const MoshiMimiConfig *cfg); /* encoder steps per frame */

/* Checks the derived sizes are consistent (integral frame size, etc.). */
gboolean moshi_mimi_config_validate (const MoshiMimiConfig *cfg, const char *what, GError **error);

MOSHI_END_DECLS
