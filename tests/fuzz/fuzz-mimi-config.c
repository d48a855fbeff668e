/* libFuzzer target for the Mimi config reader (moshi_mimi_config_from_json_text).
 *
 * Whatever it accepts must give the derived sizes the codec divides by: a hop length that
 * divides the frame size, and a resample stride of at least 1. Run it with
 * tests/fuzz/run-fuzz.sh. */
#include <stddef.h>
#include <stdint.h>

#include "mimi-config.h"

int LLVMFuzzerInitialize (int *argc, char ***argv);
int LLVMFuzzerTestOneInput (const uint8_t *data, size_t size);

int
LLVMFuzzerInitialize (int *argc, char ***argv)
{
  g_log_set_always_fatal (G_LOG_LEVEL_CRITICAL | G_LOG_LEVEL_WARNING);
  return 0;
}

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
  MoshiMimiConfig cfg;
  g_autoptr (GError) error = NULL;
  gboolean ok = moshi_mimi_config_from_json_text (&cfg, (const char *) data, size, "fuzz", &error);
  if (ok == (error != NULL))
    __builtin_trap ();
  if (!ok)
    return 0;
  int hop = moshi_mimi_config_hop_length (&cfg);
  int frame = moshi_mimi_config_frame_size (&cfg);
  if (hop < 1 || frame < 1 || frame % hop != 0 || moshi_mimi_config_resample_stride (&cfg) < 1
      || cfg.transformer.num_heads < 1
      || (cfg.transformer.d_model / cfg.transformer.num_heads) % 2 != 0)
    __builtin_trap ();
  return 0;
}
