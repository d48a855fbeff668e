/* libFuzzer target for the codes file of `moshi-tool decode` (moshi_codes_from_safetensors on
 * a safetensors file's bytes, as moshi_codes_read does on a mapped file).
 *
 * An accepted file must give a [K][T] array within the stated bounds, every value readable.
 * Run it with tests/fuzz/run-fuzz.sh. */
#include <stddef.h>
#include <stdint.h>

#include "moshi-codes.h"

int LLVMFuzzerInitialize (int *argc, char ***argv);
int LLVMFuzzerTestOneInput (const uint8_t *data, size_t size);

static volatile uint32_t sink;

int
LLVMFuzzerInitialize (int *argc, char ***argv)
{
  g_log_set_always_fatal (G_LOG_LEVEL_CRITICAL | G_LOG_LEVEL_WARNING);
  return 0;
}

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
  g_autoptr (GBytes) bytes = g_bytes_new (data, size);
  g_autoptr (GError) error = NULL;
  g_autoptr (MoshiSafetensors) st = moshi_safetensors_new_from_bytes (bytes, "fuzz", &error);
  if (st == NULL)
    return 0;
  int32_t *codes = NULL;
  int k = -1, t = -1;
  gboolean ok = moshi_codes_from_safetensors (st, &codes, &k, &t, &error);
  if (ok == (error != NULL))
    __builtin_trap ();
  if (!ok)
    return 0;
  if (k < 1 || k > MOSHI_CODES_MAX_CODEBOOKS || t < 0 || codes == NULL
      || (gsize) k * (gsize) t * 4 > size)
    __builtin_trap ();
  for (gsize i = 0; i < (gsize) k * (gsize) t; i++)
    sink ^= (uint32_t) codes[i];
  g_free (codes);
  return 0;
}
