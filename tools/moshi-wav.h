/* gst-moshi tools: minimal RIFF/WAVE reading and writing. */
#pragma once

#include <glib.h>

G_BEGIN_DECLS

typedef struct {
  int sample_rate;
  int channels;
  gsize n_frames;      /* samples per channel */
  float *samples;      /* interleaved, n_frames * channels, in [-1, 1] for integer input */
} MoshiWav;

/* Reads 8/16/24/32-bit PCM or 32/64-bit float WAV (plain or WAVE_FORMAT_EXTENSIBLE). Errors
 * name the file and what is wrong with it. */
gboolean moshi_wav_read (const char *path, MoshiWav *wav, GError **error);
/* The same on a file's bytes; path only names it in errors. */
gboolean moshi_wav_parse (const guint8 *data, gsize len, const char *path, MoshiWav *wav,
    GError **error);
/* Writes mono or interleaved 32-bit float WAV. */
gboolean moshi_wav_write_f32 (const char *path, const float *samples, gsize n_frames,
    int channels, int sample_rate, GError **error);
void moshi_wav_clear (MoshiWav *wav);

G_END_DECLS
