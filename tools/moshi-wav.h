/* gst-moshi tools: minimal RIFF/WAVE reading and writing. */
#pragma once

#include <glib.h>

#include <moshi/moshi-file.h>

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

/* A WAV read a few frames at a time, so that a long recording never sits in memory whole. */
typedef struct {
  int sample_rate;
  int channels;
  gsize n_frames;      /* samples per channel in the file */
  /*< private >*/
  int fd;
  char *path;
  int format, bits;
  guint64 data_offset;
  gsize frames_read;
  guint8 *bytes;       /* the file's bytes of the last read */
  gsize bytes_len;
} MoshiWavReader;

/* Opens path (a regular file) and reads and checks its header as moshi_wav_read does. */
gboolean moshi_wav_reader_open (MoshiWavReader *reader, const char *path, GError **error);
/* Reads up to max_frames frames, interleaved, into out; *n_read is how many: fewer than
 * max_frames only at the end of the data. */
gboolean moshi_wav_reader_read (MoshiWavReader *reader, float *out, gsize max_frames,
    gsize *n_read, GError **error);
void moshi_wav_reader_close (MoshiWavReader *reader);

/* A 32-bit float WAV written a few frames at a time. Its length is given up front, so that the
 * header is complete before any sample and the output can be a pipe or a device. */
typedef struct {
  /*< private >*/
  MoshiOutputFile out;
  int channels;
  gsize n_frames, frames_written;
  int write_errno;     /* of the first failed write */
} MoshiWavWriter;

gboolean moshi_wav_writer_open (MoshiWavWriter *writer, const char *path, gsize n_frames,
    int channels, int sample_rate, GError **error);
/* Appends n_frames interleaved frames; a failure is reported by moshi_wav_writer_close. */
void moshi_wav_writer_write (MoshiWavWriter *writer, const float *samples, gsize n_frames);
/* When ok, checks that every frame announced was written and puts the file in place; when
 * not, drops it (a regular file is left as it was). */
gboolean moshi_wav_writer_close (MoshiWavWriter *writer, gboolean ok, GError **error);

G_END_DECLS
