/* libFuzzer target for the LM config reader (moshi_lm_config_from_json_text).
 *
 * Whatever it accepts must satisfy the relations the model code relies on without checking
 * again: head sizes that divide, an even head size under rotary embeddings, text_card_out within
 * text_card, the context within its cap, positive feed-forward widths. Run it with
 * tests/fuzz/run-fuzz.sh. */
#include <stddef.h>
#include <stdint.h>

#include "lm-config.h"

int LLVMFuzzerInitialize (int *argc, char ***argv);
int LLVMFuzzerTestOneInput (const uint8_t *data, size_t size);

int
LLVMFuzzerInitialize (int *argc, char ***argv)
{
  g_log_set_always_fatal (G_LOG_LEVEL_CRITICAL | G_LOG_LEVEL_WARNING);
  return 0;
}

static void
check_transformer (const MoshiTransformerConfig *t)
{
  if (t->num_heads < 1 || t->d_model % t->num_heads != 0 || t->dim_feedforward < 1
      || t->context < 0 || t->context > (1 << 20) || !(t->max_period >= 1))
    __builtin_trap ();
  int head_dim = t->d_model / t->num_heads;
  if ((t->positional_embedding == MOSHI_POS_ROPE || t->positional_embedding == MOSHI_POS_SIN_ROPE)
      && head_dim % 2 != 0)
    __builtin_trap ();
}

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
  MoshiLmConfig cfg;
  g_autoptr (GError) error = NULL;
  gboolean ok = moshi_lm_config_from_json_text (&cfg, (const char *) data, size, "fuzz", &error);
  if (ok == (error != NULL))
    __builtin_trap ();
  if (!ok)
    return 0;
  if (cfg.text_card_out < 1 || cfg.text_card_out > cfg.text_card
      || cfg.existing_text_padding_id >= cfg.text_card || cfg.dep_q > cfg.n_q
      || moshi_lm_config_num_streams (&cfg) > MOSHI_LM_MAX_STREAMS
      || moshi_lm_config_max_delay (&cfg) < 0)
    __builtin_trap ();
  check_transformer (&cfg.transformer);
  if (cfg.dep_q > 0)
    check_transformer (&cfg.depformer);
  return 0;
}
