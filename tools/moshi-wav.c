#include "moshi-wav.h"

#include <moshi/moshi-error.h>

#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* Frames read at a time by moshi_wav_read. */
#define READ_ALL_CHUNK_FRAMES 65536

/* The bytes of a WAV: in memory (data) or in a file (fd). */
typedef struct {
  const guint8 *data;
  int fd;
  guint64 len;
} WavSource;

/* What the header says. */
typedef struct {
  int format, channels, rate, bits;
  guint64 data_offset;
  guint64 data_len;    /* bytes of samples, as far as the source goes */
} WavLayout;

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

/* Up to len bytes at offset; *got is less than len only at the end of the source. FALSE with
 * errno set when the file cannot be read. */
static gboolean
source_read (const WavSource *src, guint64 offset, guint8 *buf, gsize len, gsize *got)
{
  *got = 0;
  if (offset >= src->len)
    return TRUE;
  len = (gsize) MIN ((guint64) len, src->len - offset);
  if (src->data != NULL) {
    memcpy (buf, src->data + offset, len);
    *got = len;
    return TRUE;
  }
  while (*got < len) {
    ssize_t r = pread (src->fd, buf + *got, len - *got, (off_t) (offset + *got));
    if (r < 0 && errno == EINTR)
      continue;
    if (r < 0)
      return FALSE;
    if (r == 0)
      break;
    *got += (gsize) r;
  }
  return TRUE;
}

static gboolean
read_failed (const char *path, GError **error)
{
  int saved = errno;
  g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_IO, "%s: cannot read the WAV file: %s", path,
      g_strerror (saved));
  return FALSE;
}

static gboolean
parse_layout (const WavSource *src, const char *path, WavLayout *layout, GError **error)
{
  guint8 head[12];
  gsize got;
  if (!source_read (src, 0, head, sizeof head, &got))
    return read_failed (path, error);
  if (got < 12 || memcmp (head, "RIFF", 4) != 0 || memcmp (head + 8, "WAVE", 4) != 0) {
    g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_FORMAT, "%s is not a RIFF/WAVE file", path);
    return FALSE;
  }
  int format = -1, channels = 0, rate = 0, bits = 0;
  gboolean have_data = FALSE;
  for (guint64 off = 12; off + 8 <= src->len;) {
    guint8 chunk[8];
    if (!source_read (src, off, chunk, sizeof chunk, &got))
      return read_failed (path, error);
    uint32_t size = rd32 (chunk + 4);
    guint64 avail = src->len - off - 8;
    if (memcmp (chunk, "fmt ", 4) == 0) {
      guint8 body[40] = { 0 };
      if (size < 16 || size > avail) {
        g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_FORMAT, "%s: truncated fmt chunk", path);
        return FALSE;
      }
      if (!source_read (src, off + 8, body, MIN (size, sizeof body), &got))
        return read_failed (path, error);
      format = rd16 (body);
      channels = rd16 (body + 2);
      rate = (int) rd32 (body + 4);
      bits = rd16 (body + 14);
      if (format == 0xFFFE && size >= 40)
        format = rd16 (body + 24);      /* sub-format GUID starts with the format tag */
    } else if (memcmp (chunk, "data", 4) == 0) {
      layout->data_offset = off + 8;
      layout->data_len = MIN ((guint64) size, avail);   /* streamed WAVs may leave it unset */
      have_data = TRUE;
      break;
    }
    off += 8 + (guint64) size + (size & 1);
  }
  if (format < 0 || !have_data) {
    g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_FORMAT, "%s: no %s chunk", path,
        format < 0 ? "fmt" : "data");
    return FALSE;
  }
  if (!((format == 1 && (bits == 8 || bits == 16 || bits == 24 || bits == 32))
          || (format == 3 && (bits == 32 || bits == 64))) || channels < 1 || rate < 1) {
    g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_FORMAT,
        "%s: unsupported WAV encoding (format %d, %d bits, %d channels, %d Hz)", path, format,
        bits, channels, rate);
    return FALSE;
  }
  layout->format = format;
  layout->channels = channels;
  layout->rate = rate;
  layout->bits = bits;
  return TRUE;
}

static gsize
frame_bytes (int bits, int channels)
{
  return (gsize) bits / 8 * (gsize) channels;
}

/* n samples of the given encoding to floats, integers scaled to [-1, 1]. */
static void
convert_samples (int format, int bits, const guint8 *pcm, gsize n, float *out)
{
  gsize bytes = (gsize) bits / 8;
  for (gsize i = 0; i < n; i++) {
    const guint8 *p = pcm + i * bytes;
    float v;
    if (format == 3 && bits == 32) {
      memcpy (&v, p, 4);
    } else if (format == 3) {
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
}

gboolean
moshi_wav_read (const char *path, MoshiWav *wav, GError **error)
{
  memset (wav, 0, sizeof (*wav));
  MoshiWavReader reader;
  if (!moshi_wav_reader_open (&reader, path, error))
    return FALSE;
  float *samples = g_new (float, MAX (reader.n_frames * reader.channels, 1));
  /* In pieces, so that the file's bytes are never held whole beside the samples. */
  for (gsize done = 0, n = 1; n > 0; done += n) {
    if (!moshi_wav_reader_read (&reader, samples + done * reader.channels, READ_ALL_CHUNK_FRAMES,
            &n, error)) {
      g_free (samples);
      moshi_wav_reader_close (&reader);
      return FALSE;
    }
  }
  wav->sample_rate = reader.sample_rate;
  wav->channels = reader.channels;
  wav->n_frames = reader.n_frames;
  wav->samples = samples;
  moshi_wav_reader_close (&reader);
  return TRUE;
}

gboolean
moshi_wav_parse (const guint8 *data, gsize len, const char *path, MoshiWav *wav, GError **error)
{
  memset (wav, 0, sizeof (*wav));
  WavSource src = { .data = data, .fd = -1, .len = len };
  WavLayout layout;
  if (!parse_layout (&src, path, &layout, error))
    return FALSE;
  gsize n = (gsize) layout.data_len / frame_bytes (layout.bits, layout.channels);
  float *out = g_new (float, MAX (n * layout.channels, 1));
  convert_samples (layout.format, layout.bits, data + layout.data_offset, n * layout.channels,
      out);
  wav->sample_rate = layout.rate;
  wav->channels = layout.channels;
  wav->n_frames = n;
  wav->samples = out;
  return TRUE;
}

void
moshi_wav_clear (MoshiWav *wav)
{
  g_free (wav->samples);
  memset (wav, 0, sizeof (*wav));
}

/* ------------------------------------------------------------------ streaming reader */

gboolean
moshi_wav_reader_open (MoshiWavReader *reader, const char *path, GError **error)
{
  memset (reader, 0, sizeof (*reader));
  reader->fd = -1;
  /* A regular file only: a FIFO or /dev/zero would block or never end. */
  int fd = moshi_file_open_regular (path, "WAV file", error);
  if (fd < 0)
    return FALSE;
  struct stat st;
  if (fstat (fd, &st) != 0) {
    read_failed (path, error);
    close (fd);
    return FALSE;
  }
  WavSource src = { .data = NULL, .fd = fd, .len = (guint64) st.st_size };
  WavLayout layout;
  if (!parse_layout (&src, path, &layout, error)) {
    close (fd);
    return FALSE;
  }
  reader->sample_rate = layout.rate;
  reader->channels = layout.channels;
  reader->n_frames = (gsize) (layout.data_len / frame_bytes (layout.bits, layout.channels));
  reader->fd = fd;
  reader->path = g_strdup (path);
  reader->format = layout.format;
  reader->bits = layout.bits;
  reader->data_offset = layout.data_offset;
  return TRUE;
}

gboolean
moshi_wav_reader_read (MoshiWavReader *reader, float *out, gsize max_frames, gsize *n_read,
    GError **error)
{
  gsize frames = MIN (max_frames, reader->n_frames - reader->frames_read);
  gsize bytes_per_frame = frame_bytes (reader->bits, reader->channels);
  gsize len = frames * bytes_per_frame;
  *n_read = 0;
  if (len > reader->bytes_len) {
    reader->bytes = g_realloc (reader->bytes, len);
    reader->bytes_len = len;
  }
  WavSource src = { .data = NULL, .fd = reader->fd, .len = G_MAXUINT64 };
  gsize got;
  if (!source_read (&src, reader->data_offset + (guint64) reader->frames_read * bytes_per_frame,
          reader->bytes, len, &got))
    return read_failed (reader->path, error);
  if (got < len) {
    g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_IO, "%s: the WAV file ended at frame %"
        G_GSIZE_FORMAT " of %" G_GSIZE_FORMAT " (was it cut while being read?)", reader->path,
        reader->frames_read + got / bytes_per_frame, reader->n_frames);
    return FALSE;
  }
  convert_samples (reader->format, reader->bits, reader->bytes, frames * reader->channels, out);
  reader->frames_read += frames;
  *n_read = frames;
  return TRUE;
}

void
moshi_wav_reader_close (MoshiWavReader *reader)
{
  if (reader->fd >= 0)
    close (reader->fd);
  g_free (reader->path);
  g_free (reader->bytes);
  memset (reader, 0, sizeof (*reader));
  reader->fd = -1;
}

/* ------------------------------------------------------------------ writing */

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
moshi_wav_writer_open (MoshiWavWriter *writer, const char *path, gsize n_frames, int channels,
    int sample_rate, GError **error)
{
  memset (writer, 0, sizeof (*writer));
  writer->out.fd = -1;
  /* 32-bit sizes in the header. */
  if (channels < 1 || n_frames > (G_MAXUINT32 - 64) / (sizeof (float) * channels)) {
    g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_INVALID_ARGUMENT, "%s: too long for WAV", path);
    return FALSE;
  }
  gsize data_len = n_frames * channels * sizeof (float);
  if (!moshi_file_output_open (&writer->out, path, error))
    return FALSE;
  writer->channels = channels;
  writer->n_frames = n_frames;
  g_autoptr (GByteArray) b = g_byte_array_sized_new (58);
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
  if (!moshi_file_output_write (&writer->out, b->data, b->len))
    writer->write_errno = errno;
  return TRUE;
}

void
moshi_wav_writer_write (MoshiWavWriter *writer, const float *samples, gsize n_frames)
{
  writer->frames_written += n_frames;
  if (writer->write_errno == 0
      && !moshi_file_output_write (&writer->out, samples,
          n_frames * writer->channels * sizeof (float)))
    writer->write_errno = errno;
}

gboolean
moshi_wav_writer_close (MoshiWavWriter *writer, gboolean ok, GError **error)
{
  /* The header announced n_frames: fewer or more would make a file that lies about its size. */
  if (ok && writer->frames_written != writer->n_frames) {
    g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_INVALID_ARGUMENT, "%s: %" G_GSIZE_FORMAT
        " frames written where the header says %" G_GSIZE_FORMAT, writer->out.path,
        writer->frames_written, writer->n_frames);
    moshi_file_output_close (&writer->out, FALSE, 0, NULL);
    return FALSE;
  }
  ok = ok && writer->write_errno == 0;
  return moshi_file_output_close (&writer->out, ok, writer->write_errno, error);
}

gboolean
moshi_wav_write_f32 (const char *path, const float *samples, gsize n_frames, int channels,
    int sample_rate, GError **error)
{
  MoshiWavWriter writer;
  if (!moshi_wav_writer_open (&writer, path, n_frames, channels, sample_rate, error))
    return FALSE;
  moshi_wav_writer_write (&writer, samples, n_frames);
  return moshi_wav_writer_close (&writer, TRUE, error);
}
