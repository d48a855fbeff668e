/* Tests of the readers of outside bytes that the fuzz targets of tests/fuzz/ cover beside the
 * file formats: mimidec's token buffers (gst/mimi-token-codes.c), the codes file of
 * `moshi-tool decode` (tools/moshi-codes.c), moshi-server's client input (tools/moshi-ogg.c,
 * tools/moshi-chat-query.c) and rtpmimidepay's payloads (gst/rtp-mimi-format.c). */
#include <string.h>

#include <glib/gstdio.h>

#include "mimi-token-codes.h"
#include "moshi-chat-query.h"
#include "moshi-codes.h"
#include "moshi-error.h"
#include "moshi-ogg.h"
#include "rtp-mimi-format.h"
#include "test-support.h"

/* ---------------------------------------------------------------- mimidec's token buffers */

static GByteArray *
u16le (const guint *codes, gsize n)
{
  GByteArray *out = g_byte_array_new ();
  for (gsize i = 0; i < n; i++) {
    guint8 b[2] = { codes[i] & 0xff, codes[i] >> 8 };
    g_byte_array_append (out, b, 2);
  }
  return out;
}

START_TEST (test_tokens_transposed)
{
  /* 3 frames of 2 codebooks, frame-major as on the caps. */
  static const guint frames[] = { 1, 10, 2, 20, 3, 30 };
  g_autoptr (GByteArray) buf = u16le (frames, G_N_ELEMENTS (frames));
  ck_assert_int_eq (gst_moshi_codes_find_invalid (buf->data, 6, 64), -1);
  /* Into the decoder's [k][t] layout, frame by frame, as mimidec does. */
  gint32 codes[6];
  for (gsize t = 0; t < 3; t++)
    gst_moshi_codes_unpack (codes + t, 3, buf->data + 2 * 2 * t, 2);
  static const gint32 expected[] = { 1, 2, 3, 10, 20, 30 };
  ck_assert_mem_eq (codes, expected, sizeof (expected));
  /* And back: packing the frame-major codes gives the buffer. */
  static const gint32 frame_major[] = { 1, 10, 2, 20, 3, 30 };
  guint8 packed[12];
  gst_moshi_codes_pack (packed, frame_major, 6);
  ck_assert_mem_eq (packed, buf->data, sizeof (packed));
}
END_TEST

START_TEST (test_tokens_rejected)
{
  /* The largest u16 and the codebook size itself are outside; the index is the first. */
  static const guint frames[] = { 1, 10, 2, 64, 65535, 0 };
  g_autoptr (GByteArray) buf = u16le (frames, G_N_ELEMENTS (frames));
  ck_assert_int_eq (gst_moshi_codes_find_invalid (buf->data, 6, 64), 3);
  ck_assert_int_eq (gst_moshi_codes_find_invalid (buf->data, 6, 65), 4);
  ck_assert_int_eq (gst_moshi_codes_find_invalid (buf->data, 6, 65536), -1);
  ck_assert_int_eq (gst_moshi_codes_find_invalid (buf->data, 0, 2), -1);
}
END_TEST

/* ---------------------------------------------------------------- codes files */

static char *scratch_dir;

static void
scratch_setup (void)
{
  g_autoptr (GError) error = NULL;
  scratch_dir = g_dir_make_tmp ("moshi-inputs-XXXXXX", &error);
  ck_assert_msg (scratch_dir != NULL, "g_dir_make_tmp: %s", error ? error->message : "?");
}

static void
scratch_teardown (void)
{
  g_autoptr (GDir) dir = g_dir_open (scratch_dir, 0, NULL);
  const char *name;
  while (dir != NULL && (name = g_dir_read_name (dir)) != NULL) {
    g_autofree char *path = g_build_filename (scratch_dir, name, NULL);
    g_unlink (path);
  }
  g_rmdir (scratch_dir);
  g_clear_pointer (&scratch_dir, g_free);
}

static char *
write_codes (const char *name, MoshiDType dtype, int ndim, const int64_t *shape,
    const void *data, gsize nbytes)
{
  char *path = g_build_filename (scratch_dir, name, NULL);
  MoshiTensorEntry entry = { .name = "codes", .dtype = dtype, .ndim = ndim, .data = data,
    .nbytes = nbytes };
  memcpy (entry.shape, shape, sizeof (int64_t) * ndim);
  g_autoptr (GError) error = NULL;
  ck_assert_msg (moshi_safetensors_write (path, &entry, 1, NULL, &error), "%s",
      error ? error->message : "?");
  return path;
}

START_TEST (test_codes_read)
{
  static const int64_t i64[] = { 1, 2, 3, 4, 5, G_GINT64_CONSTANT (1) << 40 };
  static const int64_t shape3[] = { 1, 2, 3 };
  g_autofree char *path = write_codes ("a.safetensors", MOSHI_DTYPE_I64, 3, shape3, i64,
      sizeof (i64));
  g_autoptr (GError) error = NULL;
  g_autofree int32_t *codes = NULL;
  int k = 0, t = 0;
  ck_assert_msg (moshi_codes_read (path, &codes, &k, &t, &error), "%s",
      error ? error->message : "?");
  ck_assert_int_eq (k, 2);
  ck_assert_int_eq (t, 3);
  /* A value beyond int32 becomes -1, which the decoder refuses, rather than wrapping into a
   * valid code. */
  static const int32_t expected[] = { 1, 2, 3, 4, 5, -1 };
  ck_assert_mem_eq (codes, expected, sizeof (expected));

  static const int32_t i32[] = { 7, 8 };
  static const int64_t shape2[] = { 2, 1 };
  g_autofree char *path32 = write_codes ("b.safetensors", MOSHI_DTYPE_I32, 2, shape2, i32,
      sizeof (i32));
  g_autofree int32_t *codes32 = NULL;
  ck_assert (moshi_codes_read (path32, &codes32, &k, &t, &error));
  ck_assert_int_eq (k, 2);
  ck_assert_int_eq (t, 1);
  ck_assert_mem_eq (codes32, i32, sizeof (i32));
}
END_TEST

START_TEST (test_codes_rejected)
{
  g_autoptr (GError) error = NULL;
  g_autofree int32_t *codes = NULL;
  int k = 0, t = 0;
  static const int64_t zeros[65] = { 0 };

  /* More codebooks than any Mimi, a batch of two, floats: each named in the message. */
  static const int64_t too_many[] = { 1, 65, 1 };
  g_autofree char *p1 = write_codes ("k65.safetensors", MOSHI_DTYPE_I64, 3, too_many, zeros,
      sizeof (zeros));
  ck_assert (!moshi_codes_read (p1, &codes, &k, &t, &error));
  ck_assert (g_error_matches (error, MOSHI_ERROR, MOSHI_ERROR_SHAPE));
  ck_assert_msg (strstr (error->message, p1) && strstr (error->message, "65 codebooks"), "%s",
      error->message);
  g_clear_error (&error);

  static const int64_t batch[] = { 2, 1, 1 };
  g_autofree char *p2 = write_codes ("batch.safetensors", MOSHI_DTYPE_I64, 3, batch, zeros, 16);
  ck_assert (!moshi_codes_read (p2, &codes, &k, &t, &error));
  ck_assert (g_error_matches (error, MOSHI_ERROR, MOSHI_ERROR_SHAPE));
  g_clear_error (&error);

  static const float f[] = { 1 };
  static const int64_t one[] = { 1, 1 };
  g_autofree char *p3 = write_codes ("f32.safetensors", MOSHI_DTYPE_F32, 2, one, f, sizeof (f));
  ck_assert (!moshi_codes_read (p3, &codes, &k, &t, &error));
  ck_assert (g_error_matches (error, MOSHI_ERROR, MOSHI_ERROR_SHAPE));
  g_clear_error (&error);
  ck_assert_ptr_null (codes);
}
END_TEST

/* ---------------------------------------------------------------- moshi-server's client audio */

/* An Ogg page holding whole packets (CRC 0: the server does not check it). */
static void
append_page (GByteArray *out, guint8 flags, const guint8 *const *packets, const gsize *lens,
    guint n)
{
  guint8 header[27] = { 'O', 'g', 'g', 'S', 0, flags };
  guint8 lacing[255];
  guint n_lacing = 0;
  for (guint i = 0; i < n; i++) {
    for (gsize left = lens[i]; ; left -= 255) {
      lacing[n_lacing++] = MIN (left, 255);
      if (left < 255)
        break;
    }
  }
  header[26] = n_lacing;
  g_byte_array_append (out, header, sizeof (header));
  g_byte_array_append (out, lacing, n_lacing);
  for (guint i = 0; i < n; i++)
    g_byte_array_append (out, packets[i], lens[i]);
}

typedef struct {
  GPtrArray *packets;           /* GBytes */
  guint stop_after;             /* 0: never */
} Collected;

static gboolean
collect (const guint8 *packet, gsize len, gpointer user_data)
{
  Collected *c = user_data;
  g_ptr_array_add (c->packets, g_bytes_new (packet, len));
  return c->stop_after == 0 || c->packets->len < c->stop_after;
}

static const guint8 head[] = "OpusHead\x01\x01";
static const guint8 audio1[] = { 0x78, 1, 2, 3 };      /* hybrid fullband, 20 ms */
static const guint8 audio2[] = { 0x7b, 3, 9 };         /* the same, code 3: 3 frames */

static GByteArray *
test_stream (void)
{
  GByteArray *stream = g_byte_array_new ();
  const guint8 *p1[] = { head };
  const gsize l1[] = { sizeof (head) - 1 };
  append_page (stream, 0x02, p1, l1, 1);
  const guint8 *p2[] = { audio1, audio2 };
  const gsize l2[] = { sizeof (audio1), sizeof (audio2) };
  append_page (stream, 0, p2, l2, 2);
  return stream;
}

START_TEST (test_ogg_any_split)
{
  g_autoptr (GByteArray) stream = test_stream ();
  /* Every cut into two messages gives the same three packets. */
  for (guint cut = 0; cut <= stream->len; cut++) {
    MoshiOggReader reader;
    moshi_ogg_reader_init (&reader);
    Collected c = { g_ptr_array_new_with_free_func ((GDestroyNotify) g_bytes_unref), 0 };
    ck_assert_int_eq (moshi_ogg_reader_feed (&reader, stream->data, cut, collect, &c),
        MOSHI_OGG_READ_OK);
    ck_assert_int_eq (moshi_ogg_reader_feed (&reader, stream->data + cut, stream->len - cut,
            collect, &c), MOSHI_OGG_READ_OK);
    ck_assert_uint_eq (c.packets->len, 3);
    ck_assert_uint_eq (g_bytes_get_size (c.packets->pdata[2]), sizeof (audio2));
    ck_assert_mem_eq (g_bytes_get_data (c.packets->pdata[2], NULL), audio2, sizeof (audio2));
    ck_assert_uint_eq (reader.pending->len, 0);
    g_ptr_array_unref (c.packets);
    moshi_ogg_reader_clear (&reader);
  }
}
END_TEST

START_TEST (test_ogg_continued_packet)
{
  /* A 300-byte packet: 255 bytes end the first page (lacing 255, no end), the rest follows
   * on a page flagged as continued. */
  guint8 big[300];
  memset (big, 0x55, sizeof (big));
  big[0] = 0x78;
  g_autoptr (GByteArray) stream = g_byte_array_new ();
  guint8 first[27 + 1] = { 'O', 'g', 'g', 'S', 0, 0 };
  first[26] = 1;
  first[27] = 255;
  g_byte_array_append (stream, first, sizeof (first));
  g_byte_array_append (stream, big, 255);
  const guint8 *p[] = { big + 255 };
  const gsize l[] = { sizeof (big) - 255 };
  append_page (stream, 0x01, p, l, 1);

  MoshiOggReader reader;
  moshi_ogg_reader_init (&reader);
  Collected c = { g_ptr_array_new_with_free_func ((GDestroyNotify) g_bytes_unref), 0 };
  ck_assert_int_eq (moshi_ogg_reader_feed (&reader, stream->data, stream->len, collect, &c),
      MOSHI_OGG_READ_OK);
  ck_assert_uint_eq (c.packets->len, 1);
  ck_assert_uint_eq (g_bytes_get_size (c.packets->pdata[0]), sizeof (big));
  ck_assert_mem_eq (g_bytes_get_data (c.packets->pdata[0], NULL), big, sizeof (big));
  g_ptr_array_unref (c.packets);
  moshi_ogg_reader_clear (&reader);
}
END_TEST

START_TEST (test_ogg_rejected)
{
  MoshiOggReader reader;
  Collected c = { g_ptr_array_new_with_free_func ((GDestroyNotify) g_bytes_unref), 0 };

  /* Garbage is refused on its first byte, before a whole header has come. */
  moshi_ogg_reader_init (&reader);
  ck_assert_int_eq (moshi_ogg_reader_feed (&reader, (const guint8 *) "Ogx", 3, collect, &c),
      MOSHI_OGG_READ_NOT_OGG);
  moshi_ogg_reader_clear (&reader);
  /* So is an Ogg version other than 0. */
  moshi_ogg_reader_init (&reader);
  ck_assert_int_eq (moshi_ogg_reader_feed (&reader, (const guint8 *) "OggS\x01", 5, collect, &c),
      MOSHI_OGG_READ_NOT_OGG);
  moshi_ogg_reader_clear (&reader);

  /* A packet continued page after page beyond the bound. */
  moshi_ogg_reader_init (&reader);
  g_autofree guint8 *body = g_malloc0 (255 * 255);
  guint8 header[27 + 255] = { 'O', 'g', 'g', 'S', 0, 0 };
  header[26] = 255;
  memset (header + 27, 255, 255);
  MoshiOggReadResult result = MOSHI_OGG_READ_OK;
  for (int page = 0; page < 3 && result == MOSHI_OGG_READ_OK; page++) {
    header[5] = page > 0 ? 0x01 : 0;
    result = moshi_ogg_reader_feed (&reader, header, sizeof (header), collect, &c);
    if (result == MOSHI_OGG_READ_OK)
      result = moshi_ogg_reader_feed (&reader, body, 255 * 255, collect, &c);
  }
  ck_assert_int_eq (result, MOSHI_OGG_READ_OVERSIZED);
  moshi_ogg_reader_clear (&reader);
  ck_assert_uint_eq (c.packets->len, 0);

  /* The callback stops the reading: no packet after the one it refused. */
  g_autoptr (GByteArray) stream = test_stream ();
  moshi_ogg_reader_init (&reader);
  c.stop_after = 2;
  ck_assert_int_eq (moshi_ogg_reader_feed (&reader, stream->data, stream->len, collect, &c),
      MOSHI_OGG_READ_STOPPED);
  ck_assert_uint_eq (c.packets->len, 2);
  moshi_ogg_reader_clear (&reader);
  g_ptr_array_unref (c.packets);
}
END_TEST

START_TEST (test_opus_packet_kinds)
{
  guint samples = 1;
  ck_assert_int_eq (moshi_opus_packet_kind (NULL, 0, &samples), MOSHI_OPUS_PACKET_EMPTY);
  ck_assert_uint_eq (samples, 0);
  ck_assert_int_eq (moshi_opus_packet_kind ((const guint8 *) "OpusTags....", 12, &samples),
      MOSHI_OPUS_PACKET_HEADER);
  ck_assert_int_eq (moshi_opus_packet_kind (audio1, sizeof (audio1), &samples),
      MOSHI_OPUS_PACKET_AUDIO);
  ck_assert_uint_eq (samples, 960);
  ck_assert_int_eq (moshi_opus_packet_kind (audio2, sizeof (audio2), &samples),
      MOSHI_OPUS_PACKET_AUDIO);
  ck_assert_uint_eq (samples, 3 * 960);
  /* Code 3 with no frame count, with 0 frames, and beyond 120 ms. */
  static const guint8 no_count[] = { 0x7b };
  static const guint8 zero[] = { 0x7b, 0 };
  static const guint8 too_long[] = { 0x7b, 7 };
  ck_assert_int_eq (moshi_opus_packet_kind (no_count, 1, &samples), MOSHI_OPUS_PACKET_INVALID);
  ck_assert_int_eq (moshi_opus_packet_kind (zero, 2, &samples), MOSHI_OPUS_PACKET_INVALID);
  ck_assert_int_eq (moshi_opus_packet_kind (too_long, 2, &samples), MOSHI_OPUS_PACKET_INVALID);
  ck_assert_uint_eq (samples, 0);
}
END_TEST

START_TEST (test_chat_query)
{
  MoshiChatQuery q;
  moshi_chat_query_parse ("text_temperature=0.7&text_topk=25&audio_temperature=0.8"
      "&audio_topk=250&audio_seed=7&text_seed=%31%32", &q);
  ck_assert (q.have_text_temperature && q.have_audio_temperature);
  ck_assert_float_eq_tol (q.text_temperature, 0.7f, 1e-6f);
  ck_assert_float_eq_tol (q.audio_temperature, 0.8f, 1e-6f);
  ck_assert (q.have_text_topk && q.have_audio_topk);
  ck_assert_int_eq (q.text_topk, 25);
  ck_assert_int_eq (q.audio_topk, 250);
  /* text_seed (percent-encoded) wins over audio_seed */
  ck_assert (q.have_seed);
  ck_assert_uint_eq (q.seed, 12);

  /* A stray leading '=' is repaired; out of range, negative, non-numeric, empty and unknown
   * values are ignored rather than refused. */
  moshi_chat_query_parse ("=seed=5&text_temperature=101&audio_temperature=nan&text_topk=-1"
      "&audio_topk=2147483648&frobnicate=1&text_seed=&audio_seed=-3", &q);
  ck_assert (q.have_seed);
  ck_assert_uint_eq (q.seed, 5);
  ck_assert (!q.have_text_temperature && !q.have_audio_temperature);
  ck_assert (!q.have_text_topk && !q.have_audio_topk);

  moshi_chat_query_parse (NULL, &q);
  ck_assert (!q.have_seed && !q.have_text_topk);
  moshi_chat_query_parse ("seed=-1&seed", &q);
  ck_assert (!q.have_seed);
}
END_TEST

/* ---------------------------------------------------------------- rtpmimidepay's payloads */

START_TEST (test_rtp_unpack)
{
  /* Two 11-bit codes per frame: 2047, 1 -> 11111111 11100000 00000100 (2 pad bits). */
  RtpMimiLayout layout = { 2, 2048, 11 };
  ck_assert (rtp_mimi_layout_is_valid (&layout));
  ck_assert_uint_eq (rtp_mimi_packed_frame_bytes (&layout), 3);
  static const guint8 payload[] = { 0xff, 0xe0, 0x04, 0x00, 0x20, 0x0c };
  const char *why = NULL;
  gsize n = rtp_mimi_payload_frames (&layout, sizeof (payload), &why);
  ck_assert_uint_eq (n, 2);
  ck_assert_ptr_null (why);
  guint8 out[8];
  ck_assert (rtp_mimi_unpack (&layout, payload, n, out, &why));
  /* Frame 2: 00000000 00100000 00001100 -> 1, 3. */
  static const guint8 expected[] = { 0xff, 0x07, 0x01, 0x00, 0x01, 0x00, 0x03, 0x00 };
  ck_assert_mem_eq (out, expected, sizeof (expected));
}
END_TEST

START_TEST (test_rtp_rejected)
{
  RtpMimiLayout layout = { 2, 1000, 10 };
  const char *why = NULL;
  ck_assert_uint_eq (rtp_mimi_payload_frames (&layout, 0, &why), 0);
  ck_assert_str_eq (why, "no frame");
  why = NULL;
  ck_assert_uint_eq (rtp_mimi_payload_frames (&layout, 4, &why), 0);
  ck_assert_str_eq (why, "not a whole number of frames");
  /* 1023 in the first code: beyond a 1000-entry codebook. */
  static const guint8 payload[] = { 0xff, 0xc0, 0x00 };
  guint8 out[4];
  why = NULL;
  ck_assert (!rtp_mimi_unpack (&layout, payload, 1, out, &why));
  ck_assert_str_eq (why, "a code outside the codebooks");

  /* Layouts the element refuses from caps. */
  RtpMimiLayout narrow = { 8, 2048, 10 }, wide = { 8, 2048, 17 }, none = { 0, 2048, 11 },
      huge = { 8, 65537, 16 };
  ck_assert (!rtp_mimi_layout_is_valid (&narrow));
  ck_assert (!rtp_mimi_layout_is_valid (&wide));
  ck_assert (!rtp_mimi_layout_is_valid (&none));
  ck_assert (!rtp_mimi_layout_is_valid (&huge));
  ck_assert_uint_eq (rtp_mimi_min_code_bits (2), 1);
  ck_assert_uint_eq (rtp_mimi_min_code_bits (2048), 11);
  ck_assert_uint_eq (rtp_mimi_min_code_bits (2049), 12);
  ck_assert_uint_eq (rtp_mimi_min_code_bits (65536), 16);
}
END_TEST

static Suite *
inputs_suite (void)
{
  Suite *suite = suite_create ("inputs");

  TCase *tokens = tcase_create ("mimi-tokens");
  tcase_add_test (tokens, test_tokens_transposed);
  tcase_add_test (tokens, test_tokens_rejected);
  suite_add_tcase (suite, tokens);

  TCase *codes = tcase_create ("codes-file");
  tcase_add_checked_fixture (codes, scratch_setup, scratch_teardown);
  tcase_add_test (codes, test_codes_read);
  tcase_add_test (codes, test_codes_rejected);
  suite_add_tcase (suite, codes);

  TCase *server = tcase_create ("server-input");
  tcase_add_test (server, test_ogg_any_split);
  tcase_add_test (server, test_ogg_continued_packet);
  tcase_add_test (server, test_ogg_rejected);
  tcase_add_test (server, test_opus_packet_kinds);
  tcase_add_test (server, test_chat_query);
  suite_add_tcase (suite, server);

  TCase *rtp = tcase_create ("rtp-mimi");
  tcase_add_test (rtp, test_rtp_unpack);
  tcase_add_test (rtp, test_rtp_rejected);
  suite_add_tcase (suite, rtp);

  return suite;
}

int
main (void)
{
  return moshi_test_run_suite (inputs_suite ());
}
