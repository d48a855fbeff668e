#include "moshi-wav.h"

#include <moshi/moshi-error.h>
#include <moshi/moshi-file.h>

#include <stdint.h>

/* 8 bytes of RIFF header and a 32-bit RIFF size. */
#define MOSHI_WAV_MAX_BYTES ((gsize) G_MAXUINT32 + 8)
#include <string.h>

static uint32_t
rd32 (const guint8 *p)
{
  return (uint32_t) p[0] | (uint32_t) p[1] << 8 | (uint32_t) p[2] << 16 | (uint32_t) p[3] << 24;
}

static uint16_t
rd16 (const guint8 *p)
{
  return (uint16_t) (p[0] | p[1] << 8);
}

gboolean
moshi_wav_read (const char *path, MoshiWav *wav, GError **error)
{
  memset (wav, 0, sizeof (*wav));
  g_autofree guint8 *data = NULL;
  gsize len = 0;
  /* A RIFF file holds at most 4 GiB (32-bit sizes), which caps the read of a huge file; the
   * regular-file check keeps a FIFO or /dev/zero from blocking or growing without end. */
  if (!moshi_file_read_all (path, "WAV file", MOSHI_WAV_MAX_BYTES, (char **) &data, &len, error))
    return FALSE;
  return moshi_wav_parse (data, len, path, wav, error);
}

gboolean
moshi_wav_parse (const guint8 *data, gsize len, const char *path, MoshiWav *wav, GError **error)
{
  memset (wav, 0, sizeof (*wav));
  if (len < 12 || memcmp (data, "RIFF", 4) != 0 || memcmp (data + 8, "WAVE", 4) != 0) {
    g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_FORMAT, "%s is not a RIFF/WAVE file", path);
    return FALSE;
  }
  int format = -1, channels = 0, rate = 0, bits = 0;
  const guint8 *pcm = NULL;
  gsize pcm_len = 0;
  for (gsize off = 12; off + 8 <= len;) {
    uint32_t size = rd32 (data + off + 4);
    const guint8 *body = data + off + 8;
    gsize avail = len - off - 8;
    if (memcmp (data + off, "fmt ", 4) == 0) {
      if (size < 16 || size > avail) {
        g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_FORMAT, "%s: truncated fmt chunk", path);
        return FALSE;
      }
      format = rd16 (body);
      channels = rd16 (body + 2);
      rate = (int) rd32 (body + 4);
      bits = rd16 (body + 14);
      if (format == 0xFFFE && size >= 40)
        format = rd16 (body + 24);      /* sub-format GUID starts with the format tag */
    } else if (memcmp (data + off, "data", 4) == 0) {
      pcm = body;
      pcm_len = MIN ((gsize) size, avail);   /* streamed WAVs may leave the size unset */
      break;
    }
    off += 8 + (gsize) size + (size & 1);
  }
  if (format < 0 || pcm == NULL) {
    g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_FORMAT, "%s: no %s chunk", path,
        format < 0 ? "fmt" : "data");
    return FALSE;
  }
  gboolean is_float = format == 3;
  if (!((format == 1 && (bits == 8 || bits == 16 || bits == 24 || bits == 32))
          || (is_float && (bits == 32 || bits == 64))) || channels < 1 || rate < 1) {
    g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_FORMAT,
        "%s: unsupported WAV encoding (format %d, %d bits, %d channels, %d Hz)", path, format,
        bits, channels, rate);
    return FALSE;
  }
  gsize bytes = (gsize) bits / 8;
  gsize n = pcm_len / (bytes * channels);
  float *out = g_new (float, MAX (n * channels, 1));
  for (gsize i = 0; i < n * channels; i++) {
    const guint8 *p = pcm + i * bytes;
    float v;
    if (is_float && bits == 32) {
      memcpy (&v, p, 4);
    } else if (is_float) {
      double dv;
      memcpy (&dv, p, 8);
      v = (float) dv;
    } else if (bits == 8) {
      v = ((int) p[0] - 128) / 128.0f;
    } else if (bits == 16) {
      v = (int16_t) rd16 (p) / 32768.0f;
    } else if (bits == 24) {
      int32_t s = (int32_t) ((uint32_t) p[0] << 8 | (uint32_t) p[1] << 16 | (uint32_t) p[2] << 24) >> 8;
      v = s / 8388608.0f;
    } else {
      v = (float) ((int32_t) rd32 (p) / 2147483648.0);
    }
    out[i] = v;
  }
  wav->sample_rate = rate;
  wav->channels = channels;
  wav->n_frames = n;
  wav->samples = out;
  return TRUE;
}

static void
put32 (GByteArray *b, uint32_t v)
{
  guint8 x[4] = { v & 0xff, (v >> 8) & 0xff, (v >> 16) & 0xff, (v >> 24) & 0xff };
  g_byte_array_append (b, x, 4);
}

static void
put16 (GByteArray *b, uint16_t v)
{
  guint8 x[2] = { v & 0xff, (v >> 8) & 0xff };
  g_byte_array_append (b, x, 2);
}

gboolean
moshi_wav_write_f32 (const char *path, const float *samples, gsize n_frames, int channels,
    int sample_rate, GError **error)
{
  gsize data_len = n_frames * channels * sizeof (float);
  if (data_len > G_MAXUINT32 - 64) {
    g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_INVALID_ARGUMENT, "%s: too long for WAV", path);
    return FALSE;
  }
  g_autoptr (GByteArray) b = g_byte_array_sized_new (data_len + 58);
  g_byte_array_append (b, (const guint8 *) "RIFF", 4);
  put32 (b, (uint32_t) (50 + data_len));
  g_byte_array_append (b, (const guint8 *) "WAVEfmt ", 8);
  put32 (b, 18);
  put16 (b, 3);
  put16 (b, (uint16_t) channels);
  put32 (b, (uint32_t) sample_rate);
  put32 (b, (uint32_t) (sample_rate * channels * 4));
  put16 (b, (uint16_t) (channels * 4));
  put16 (b, 32);
  put16 (b, 0);
  g_byte_array_append (b, (const guint8 *) "fact", 4);
  put32 (b, 4);
  put32 (b, (uint32_t) n_frames);
  g_byte_array_append (b, (const guint8 *) "data", 4);
  put32 (b, (uint32_t) data_len);
  g_byte_array_append (b, (const guint8 *) samples, (guint) data_len);
  return moshi_file_write_all (path, b->data, b->len, error);
}

void
moshi_wav_clear (MoshiWav *wav)
{
  g_free (wav->samples);
  memset (wav, 0, sizeof (*wav));
}
