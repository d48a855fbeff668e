/* libFuzzer target for mimidec's token buffers: the checks and unpacking of an audio/x-mimi
 * u16le buffer (gst/mimi-token-codes.c) and the Mimi decoder they feed, as gst/gstmimidec.c
 * runs them, on the tiny Mimi of the test data.
 *
 * Input: one byte that picks the caps' codebooks (1 to 32, as the caps allow; more than the
 * model's count must be refused by the decoder, not crash it), then the buffer. A buffer the
 * checks accept must decode, to finite samples. Run it with tests/fuzz/run-fuzz.sh. */
#include <math.h>
#include <stddef.h>
#include <stdint.h>

#include "mimi-token-codes.h"
#include "moshi-mimi.h"

int LLVMFuzzerInitialize (int *argc, char ***argv);
int LLVMFuzzerTestOneInput (const uint8_t *data, size_t size);

/* mimidec's chunk: frames decoded per call. */
#define FRAMES_PER_CHUNK 25
/* Keeps one input to a few milliseconds; longer buffers only repeat the same chunks. */
#define MAX_FRAMES 100

static MoshiMimi *mimi;
static MoshiMimiSession *session;

int
LLVMFuzzerInitialize (int *argc, char ***argv)
{
  g_log_set_always_fatal (G_LOG_LEVEL_CRITICAL | G_LOG_LEVEL_WARNING);
  g_autoptr (GError) error = NULL;
  const char *dir = MOSHI_FUZZ_DATA_DIR "/mimi/tiny";
  g_autofree char *weights = g_build_filename (dir, "model.safetensors", NULL);
  g_autofree char *config = g_build_filename (dir, "config.json", NULL);
  mimi = moshi_mimi_load (weights, config, NULL, &error);
  if (mimi == NULL)
    g_error ("fuzz-mimi-tokens: %s", error->message);
  /* One frame per call and one thread, as mimidec runs by default on a small machine. */
  MoshiMimiSessionOptions options = { .n_threads = 1, .max_frames_per_call = 1 };
  session = moshi_mimi_session_new (mimi, &options, &error);
  if (session == NULL)
    g_error ("fuzz-mimi-tokens: %s", error->message);
  return 0;
}

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
  if (size < 1)
    return 0;
  int codebooks = 1 + data[0] % 32;
  const guint8 *buffer = data + 1;
  gsize len = size - 1;
  int codebook_size = moshi_mimi_codebook_size (mimi);

  /* mimidec's checks, before anything is decoded: whole frames, every code in the codebooks. */
  gsize frame_bytes = (gsize) codebooks * 2;
  if (len % frame_bytes != 0)
    return 0;
  gsize n_frames = len / frame_bytes;
  if (gst_moshi_codes_find_invalid (buffer, n_frames * codebooks, (guint) codebook_size) >= 0)
    return 0;

  /* Each input is a stream of its own, as after a flushing seek. */
  moshi_mimi_session_reset_decoder (session);
  n_frames = MIN (n_frames, MAX_FRAMES);
  int frame_size = moshi_mimi_frame_size (mimi);
  g_autofree int32_t *codes = g_new (int32_t, (gsize) codebooks * FRAMES_PER_CHUNK);
  g_autofree float *pcm = g_new (float, (gsize) frame_size * FRAMES_PER_CHUNK);
  for (gsize f = 0; f < n_frames; f += FRAMES_PER_CHUNK) {
    gsize chunk = MIN ((gsize) FRAMES_PER_CHUNK, n_frames - f);
    for (gsize j = 0; j < chunk; j++)
      gst_moshi_codes_unpack (codes + j, chunk, buffer + 2 * (f + j) * codebooks, codebooks);
    for (gsize i = 0; i < chunk * (gsize) codebooks; i++)
      if (codes[i] < 0 || codes[i] >= codebook_size)
        __builtin_trap ();
    g_autoptr (GError) error = NULL;
    gboolean ok = moshi_mimi_session_decode (session, codes, codebooks, (int) chunk, pcm, &error);
    if (ok == (error != NULL))
      __builtin_trap ();
    /* Only a codebook count beyond the model's may fail: everything else was checked. */
    if (!ok) {
      if (codebooks <= moshi_mimi_max_codebooks (mimi))
        __builtin_trap ();
      return 0;
    }
    for (gsize i = 0; i < chunk * (gsize) frame_size; i++)
      if (!isfinite (pcm[i]))
        __builtin_trap ();
  }
  return 0;
}
