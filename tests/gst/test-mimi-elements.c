/* GstHarness tests of the mimienc and mimidec elements, against the inference library.
 *
 * Everything runs on the small test model (tests/data/mimi/small: 24 kHz, 1920-sample frames,
 * 16 codebooks of 256 entries) with real speech from its golden file as input. The
 * reference for every token and sample is the library itself, driven the way the elements
 * document they drive it: a fresh session, one frame per call. */
#include <gst/audio/audio.h>
#include <gst/check/gstcheck.h>
#include <gst/check/gstharness.h>
#include <glib/gstdio.h>
#include <math.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "gst-test-util.h"
#include <moshi/moshi-device.h>
#include <moshi/moshi-hub.h>
#include <moshi/moshi-mimi.h>
#include <moshi/moshi-scheduler.h>

#define CODEBOOKS 8             /* mimienc's default */
#define MODEL_CODEBOOKS 16
#define TOKEN_CAPS "audio/x-mimi, rate=24000, channels=1, framerate=25/2, codebooks=8, " \
    "codebook-size=256, stream-format=u16le"

static gchar *model_path;
static gchar *config_path;

/* ------------------------------------------------------------------ test data */

static void
init_paths (void)
{
  if (model_path != NULL)
    return;
  model_path = test_data_path ("mimi", "small", "model.safetensors", NULL);
  config_path = test_data_path ("mimi", "small", "config.json", NULL);
}

/* n samples of speech, looping the golden signal with a slowly varying gain. */
static gfloat *
make_speech (gsize n)
{
  gsize len;
  g_autofree gfloat *speech = load_speech (&len);
  gfloat *out = g_new (gfloat, n);
  for (gsize i = 0; i < n; i++)
    out[i] = speech[i % len] * (0.6f + 0.4f * (gfloat) ((i / len) % 3) / 2.0f);
  return out;
}

/* ------------------------------------------------------------------ library reference */

/* Tokens of pcm (zero-padded to whole frames), frame-major [frame][codebook]. */
static gint32 *
reference_encode (const gfloat * pcm, gsize n, gint codebooks, gsize * n_frames)
{
  return reference_mimi_encode (model_path, config_path, pcm, n, codebooks, n_frames);
}

/* Audio of frame-major tokens, frames * FRAME samples. */
static gfloat *
reference_decode (const gint32 * codes, gsize frames, gint codebooks)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (MoshiMimi) mimi = load_mimi (model_path, config_path);
  MoshiMimiSessionOptions options = {.max_frames_per_call = 1 };
  g_autoptr (MoshiMimiSession) session = moshi_mimi_session_new (mimi, &options, &error);
  fail_unless (session != NULL, "%s", error ? error->message : "");

  g_autofree gint32 *by_codebook = g_new (gint32, frames * codebooks);
  for (gsize f = 0; f < frames; f++)
    for (gint k = 0; k < codebooks; k++)
      by_codebook[k * frames + f] = codes[f * codebooks + k];
  gfloat *pcm = g_new (gfloat, frames * FRAME);
  fail_unless (moshi_mimi_session_decode (session, by_codebook, codebooks, (gint) frames, pcm,
          &error), "%s", error ? error->message : "");
  return pcm;
}

/* ------------------------------------------------------------------ harness helpers */

static GstElement *
make_element (const gchar * factory)
{
  init_paths ();
  GstElement *element = gst_element_factory_make (factory, NULL);
  fail_unless (element != NULL, "no %s: is the plugin on GST_PLUGIN_PATH_1_0?", factory);
  g_object_set (element, "model", model_path, "config", config_path, NULL);
  return element;
}

static GstHarness *
new_encoder_harness (void)
{
  GstHarness *h = harness_for (make_element ("mimienc"));
  gst_harness_set_src_caps_str (h, RAW_F32_CAPS);
  return h;
}

static GstHarness *
new_decoder_harness (const gchar * token_caps)
{
  GstHarness *h = harness_for (make_element ("mimidec"));
  gst_harness_set_src_caps_str (h, token_caps);
  return h;
}

/* A mimidec harness taking TOKEN_CAPS, with packet loss concealment on or off. */
static GstHarness *
new_plc_decoder_harness (gboolean plc)
{
  GstElement *dec = make_element ("mimidec");
  g_object_set (dec, "plc", plc, NULL);
  GstHarness *h = harness_for (dec);
  gst_harness_set_src_caps_str (h, TOKEN_CAPS);
  return h;
}

/* Pushes tokens, frames_per_buffer frames per buffer. */
static void
push_tokens (GstHarness * h, const gint32 * codes, gsize frames, gint codebooks,
    gsize frames_per_buffer)
{
  for (gsize f = 0; f < frames; f += frames_per_buffer) {
    gsize m = MIN (frames_per_buffer, frames - f);
    fail_unless_equals_int (gst_harness_push (h, token_buffer (codes, m, codebooks, f)),
        GST_FLOW_OK);
  }
}

/* Checks the token buffers against frame-major reference codes and returns nothing; every
 * buffer must be one frame. */
static void
assert_tokens_equal (GPtrArray * bufs, const gint32 * codes, gsize frames, gint codebooks)
{
  fail_unless_equals_int (bufs->len, frames);
  for (guint i = 0; i < bufs->len; i++)
    assert_token_buffer_equal (g_ptr_array_index (bufs, i), codes + i * codebooks, codebooks);
}

/* Each buffer starts where the previous ended: PTS + duration chain from first_pts, and the
 * durations match the sample counts. */
static void
assert_contiguous (GPtrArray * bufs, GstClockTime first_pts, gsize bytes_per_sample)
{
  guint64 samples = 0;
  for (guint i = 0; i < bufs->len; i++) {
    GstBuffer *buf = g_ptr_array_index (bufs, i);
    gsize n = gst_buffer_get_size (buf) / bytes_per_sample;
    fail_unless_equals_uint64 (GST_BUFFER_PTS (buf), first_pts + samples_to_time (samples));
    fail_unless_equals_uint64 (GST_BUFFER_DURATION (buf),
        samples_to_time (samples + n) - samples_to_time (samples));
    samples += n;
  }
}

/* Encodes pcm through a fresh mimienc in buffers of chunk samples, then EOS. */
static GPtrArray *
encode_in_chunks (const gfloat * pcm, gsize n, gsize chunk)
{
  GstHarness *h = new_encoder_harness ();
  push_pcm (h, pcm, n, chunk, 0);
  fail_unless (gst_harness_push_event (h, gst_event_new_eos ()));
  GPtrArray *bufs = pull_all (h);
  gst_harness_teardown (h);
  return bufs;
}

/* ================================================================== mimienc */

GST_START_TEST (test_enc_frames_caps_timestamps)
{
  gsize n;
  g_autofree gfloat *speech = (init_paths (), load_speech (&n));
  fail_unless_equals_int (n % FRAME, 0);
  gsize frames;
  g_autofree gint32 *expected = reference_encode (speech, n, CODEBOOKS, &frames);

  GstHarness *h = new_encoder_harness ();
  push_pcm (h, speech, n, FRAME, 0);
  GPtrArray *bufs = pull_all (h);

  assert_tokens_equal (bufs, expected, frames, CODEBOOKS);
  for (guint i = 0; i < bufs->len; i++) {
    GstBuffer *buf = g_ptr_array_index (bufs, i);
    fail_unless_equals_uint64 (GST_BUFFER_PTS (buf), i * FRAME_NS);
    fail_unless_equals_uint64 (GST_BUFFER_DURATION (buf), FRAME_NS);
    fail_unless (gst_buffer_get_audio_clipping_meta (buf) == NULL);
  }

  assert_current_caps (h->sinkpad, TOKEN_CAPS);

  g_ptr_array_unref (bufs);
  gst_harness_teardown (h);
}
GST_END_TEST;

GST_START_TEST (test_enc_num_codebooks)
{
  gsize n;
  g_autofree gfloat *speech = (init_paths (), load_speech (&n));
  gsize frames;
  g_autofree gint32 *expected = reference_encode (speech, 5 * FRAME, MODEL_CODEBOOKS, &frames);

  GstElement *enc = make_element ("mimienc");
  g_object_set (enc, "num-codebooks", MODEL_CODEBOOKS, NULL);
  GstHarness *h = harness_for (enc);
  gst_harness_set_src_caps_str (h, RAW_F32_CAPS);
  push_pcm (h, speech, 5 * FRAME, FRAME, 0);
  GPtrArray *bufs = pull_all (h);
  assert_tokens_equal (bufs, expected, frames, MODEL_CODEBOOKS);

  GstCaps *caps = gst_pad_get_current_caps (h->sinkpad);
  gint codebooks = 0;
  fail_unless (gst_structure_get_int (gst_caps_get_structure (caps, 0), "codebooks",
          &codebooks));
  fail_unless_equals_int (codebooks, MODEL_CODEBOOKS);
  gst_caps_unref (caps);
  g_ptr_array_unref (bufs);
  gst_harness_teardown (h);
}
GST_END_TEST;

/* Buffer sizes must not change the tokens or their timestamps. */
static void
check_chunking (gsize n, gsize chunk)
{
  g_autofree gfloat *pcm = make_speech (n);
  GPtrArray *ref = encode_in_chunks (pcm, n, FRAME);
  GPtrArray *got = encode_in_chunks (pcm, n, chunk);

  fail_unless_equals_int (got->len, ref->len);
  for (guint i = 0; i < ref->len; i++) {
    GstBuffer *a = g_ptr_array_index (got, i), *b = g_ptr_array_index (ref, i);
    GstMapInfo map;
    fail_unless (gst_buffer_map (b, &map, GST_MAP_READ));
    fail_unless_equals_int (gst_buffer_get_size (a), map.size);
    fail_unless (gst_buffer_memcmp (a, 0, map.data, map.size) == 0,
        "chunk %" G_GSIZE_FORMAT ": tokens of frame %u differ", chunk, i);
    gst_buffer_unmap (b, &map);
    fail_unless_equals_uint64 (GST_BUFFER_PTS (a), GST_BUFFER_PTS (b));
    fail_unless_equals_uint64 (GST_BUFFER_DURATION (a), GST_BUFFER_DURATION (b));
  }
  g_ptr_array_unref (ref);
  g_ptr_array_unref (got);
}

GST_START_TEST (test_enc_odd_buffer_sizes)
{
  init_paths ();
  /* 10 s and a bit (the last frame partial), pushed 1919, 1921 and all at once. */
  const gsize ten_seconds = 10 * RATE + 123;
  check_chunking (ten_seconds, 1919);
  check_chunking (ten_seconds, 1921);
  check_chunking (ten_seconds, ten_seconds);
  /* One sample per buffer, on a shorter stretch to keep the test quick. */
  check_chunking (4 * FRAME + 77, 1);
}
GST_END_TEST;

GST_START_TEST (test_enc_s16_input)
{
  init_paths ();
  const gsize n = 6 * FRAME;
  g_autofree gfloat *pcm = make_speech (n);
  g_autofree gint16 *s16 = g_new (gint16, n);
  g_autofree gfloat *as_float = g_new (gfloat, n);
  quantize_to_s16 (pcm, n, s16, as_float);
  gsize frames;
  g_autofree gint32 *expected = reference_encode (as_float, n, CODEBOOKS, &frames);

  GstHarness *h = harness_for (make_element ("mimienc"));
  gst_harness_set_src_caps_str (h, RAW_S16_CAPS);
  for (gsize f = 0; f < frames; f++) {
    GstBuffer *buf = gst_buffer_new_memdup (s16 + f * FRAME, FRAME * sizeof (gint16));
    GST_BUFFER_PTS (buf) = f * FRAME_NS;
    GST_BUFFER_DURATION (buf) = FRAME_NS;
    fail_unless_equals_int (gst_harness_push (h, buf), GST_FLOW_OK);
  }
  GPtrArray *bufs = pull_all (h);
  assert_tokens_equal (bufs, expected, frames, CODEBOOKS);
  g_ptr_array_unref (bufs);
  gst_harness_teardown (h);
}
GST_END_TEST;

GST_START_TEST (test_enc_eos_mid_frame)
{
  init_paths ();
  /* 25 pushes of 10 ms then EOS: three whole frames and 240 samples. */
  const gsize n = 25 * 240;
  g_autofree gfloat *pcm = make_speech (n);
  gsize frames;
  g_autofree gint32 *expected = reference_encode (pcm, n, CODEBOOKS, &frames);
  fail_unless_equals_int (frames, 4);

  GstHarness *h = new_encoder_harness ();
  push_pcm (h, pcm, n, 240, 0);
  fail_unless_equals_int (gst_harness_buffers_received (h), 3);
  fail_unless (gst_harness_push_event (h, gst_event_new_eos ()));
  GPtrArray *bufs = pull_all (h);
  assert_tokens_equal (bufs, expected, frames, CODEBOOKS);

  const GstClockTime durations[] = { FRAME_NS, FRAME_NS, FRAME_NS, 10 * GST_MSECOND };
  for (guint i = 0; i < 4; i++) {
    GstBuffer *buf = g_ptr_array_index (bufs, i);
    fail_unless_equals_uint64 (GST_BUFFER_PTS (buf), i * FRAME_NS);
    fail_unless_equals_uint64 (GST_BUFFER_DURATION (buf), durations[i]);
    GstAudioClippingMeta *clip = gst_buffer_get_audio_clipping_meta (buf);
    if (i < 3) {
      fail_unless (clip == NULL);
    } else {
      fail_unless (clip != NULL);
      fail_unless_equals_int (clip->format, GST_FORMAT_DEFAULT);
      fail_unless_equals_uint64 (clip->start, 0);
      fail_unless_equals_uint64 (clip->end, FRAME - 240);
    }
  }

  /* EOS went through after the last buffer. */
  g_autoptr (GPtrArray) eos = pull_events (h, GST_EVENT_EOS);
  fail_unless (eos->len > 0);
  g_ptr_array_unref (bufs);
  gst_harness_teardown (h);
}
GST_END_TEST;

GST_START_TEST (test_enc_flush_resets_state)
{
  init_paths ();
  const gsize n = 8 * FRAME;
  g_autofree gfloat *pcm = make_speech (2 * n);
  gsize frames;
  /* After the flush the second half is encoded as if it started a stream. */
  g_autofree gint32 *expected = reference_encode (pcm + n, n, CODEBOOKS, &frames);

  GstHarness *h = new_encoder_harness ();
  /* Leave half a frame in the encoder's input when flushing: it must be dropped. */
  push_pcm (h, pcm, n + FRAME / 2, FRAME, 0);
  g_ptr_array_unref (pull_all (h));
  push_flush (h);
  push_pcm (h, pcm + n, n, FRAME, 0);
  GPtrArray *bufs = pull_all (h);
  assert_tokens_equal (bufs, expected, frames, CODEBOOKS);
  fail_unless_equals_uint64 (GST_BUFFER_PTS (g_ptr_array_index (bufs, 0)), 0);
  g_ptr_array_unref (bufs);
  gst_harness_teardown (h);
}
GST_END_TEST;

GST_START_TEST (test_enc_latency)
{
  init_paths ();
  GstHarness *h = new_encoder_harness ();
  g_autofree gfloat *pcm = make_speech (FRAME);
  push_pcm (h, pcm, FRAME, FRAME, 0);
  /* Upstream (the harness) has no latency of its own. */
  fail_unless_equals_uint64 (gst_harness_query_latency (h), FRAME_NS);
  gst_harness_set_upstream_latency (h, 20 * GST_MSECOND);
  fail_unless_equals_uint64 (gst_harness_query_latency (h), 20 * GST_MSECOND + FRAME_NS);
  gst_harness_teardown (h);
}
GST_END_TEST;

GST_START_TEST (test_enc_non_finite_input)
{
  init_paths ();
  const gsize n = 3 * FRAME;
  g_autofree gfloat *pcm = make_speech (n);
  g_autofree gfloat *cleaned = g_memdup2 (pcm, n * sizeof (gfloat));
  const gsize bad[] = { 5, 700, FRAME + 3, 2 * FRAME + 1000 };
  for (guint i = 0; i < G_N_ELEMENTS (bad); i++) {
    pcm[bad[i]] = i % 2 ? INFINITY : NAN;
    cleaned[bad[i]] = 0.0f;
  }
  gsize frames;
  g_autofree gint32 *expected = reference_encode (cleaned, n, CODEBOOKS, &frames);

  GstElement *enc = make_element ("mimienc");
  GstBus *bus = attach_bus (enc);
  GstHarness *h = harness_for (enc);
  gst_harness_set_src_caps_str (h, RAW_F32_CAPS);
  push_pcm (h, pcm, n, FRAME, 0);
  GPtrArray *bufs = pull_all (h);
  assert_tokens_equal (bufs, expected, frames, CODEBOOKS);

  /* One warning for the whole stream, no error. */
  fail_unless_equals_int (count_bus_warnings (bus), 1);
  g_ptr_array_unref (bufs);
  gst_harness_teardown (h);
  drop_bus (bus);
}
GST_END_TEST;

/* ================================================================== mimidec */

GST_START_TEST (test_dec_frames_caps_timestamps)
{
  gsize n, frames;
  g_autofree gfloat *speech = (init_paths (), load_speech (&n));
  g_autofree gint32 *codes = reference_encode (speech, n, CODEBOOKS, &frames);
  g_autofree gfloat *expected = reference_decode (codes, frames, CODEBOOKS);

  GstHarness *h = new_decoder_harness (TOKEN_CAPS);
  push_tokens (h, codes, frames, CODEBOOKS, 1);
  GPtrArray *bufs = pull_all (h);
  fail_unless_equals_int (bufs->len, frames);
  for (guint i = 0; i < bufs->len; i++) {
    GstBuffer *buf = g_ptr_array_index (bufs, i);
    fail_unless_equals_int (gst_buffer_get_size (buf), FRAME * sizeof (gfloat));
    fail_unless_equals_uint64 (GST_BUFFER_PTS (buf), i * FRAME_NS);
    fail_unless_equals_uint64 (GST_BUFFER_DURATION (buf), FRAME_NS);
  }
  assert_f32_buffers_equal (bufs, expected, frames * FRAME);

  assert_current_caps (h->sinkpad, RAW_F32_CAPS);
  fail_unless_equals_uint64 (gst_harness_query_latency (h), 0);
  g_ptr_array_unref (bufs);
  gst_harness_teardown (h);
}
GST_END_TEST;

/* Several frames per buffer, including more than the decoder's 25-frame chunk. */
GST_START_TEST (test_dec_multi_frame_buffers)
{
  init_paths ();
  const gsize n = 70 * FRAME;
  g_autofree gfloat *pcm = make_speech (n);
  gsize frames;
  g_autofree gint32 *codes = reference_encode (pcm, n, CODEBOOKS, &frames);
  g_autofree gfloat *expected = reference_decode (codes, frames, CODEBOOKS);

  const gsize per_buffer[] = { 3, 7, 70 };
  for (guint t = 0; t < G_N_ELEMENTS (per_buffer); t++) {
    GstHarness *h = new_decoder_harness (TOKEN_CAPS);
    push_tokens (h, codes, frames, CODEBOOKS, per_buffer[t]);
    GPtrArray *bufs = pull_all (h);
    assert_contiguous (bufs, 0, sizeof (gfloat));
    assert_f32_buffers_equal (bufs, expected, frames * FRAME);
    g_ptr_array_unref (bufs);
    gst_harness_teardown (h);
  }
}
GST_END_TEST;

GST_START_TEST (test_dec_clipping_meta)
{
  init_paths ();
  const gsize n = 3 * FRAME;
  g_autofree gfloat *pcm = make_speech (n);
  gsize frames;
  g_autofree gint32 *codes = reference_encode (pcm, n, CODEBOOKS, &frames);
  g_autofree gfloat *expected = reference_decode (codes, frames, CODEBOOKS);

  GstHarness *h = new_decoder_harness (TOKEN_CAPS);
  push_tokens (h, codes, 2, CODEBOOKS, 1);
  /* The last frame holds 240 real samples, as mimienc marks a short last frame. */
  GstBuffer *last = token_buffer (codes, 1, CODEBOOKS, 2);
  GST_BUFFER_DURATION (last) = 10 * GST_MSECOND;
  gst_buffer_add_audio_clipping_meta (last, GST_FORMAT_DEFAULT, 0, FRAME - 240);
  fail_unless_equals_int (gst_harness_push (h, last), GST_FLOW_OK);
  /* And a frame clipped at both ends, in time units. */
  GstBuffer *both = token_buffer (codes, 1, CODEBOOKS, 2);
  GST_BUFFER_PTS (both) = 3 * FRAME_NS;
  gst_buffer_add_audio_clipping_meta (both, GST_FORMAT_TIME, 10 * GST_MSECOND,
      20 * GST_MSECOND);
  fail_unless_equals_int (gst_harness_push (h, both), GST_FLOW_OK);

  /* A short duration alone (the meta lost on the way, as through gdppay) trims too;
   * a duration off by less than 1 ms does not. */
  GstBuffer *short_dur = token_buffer (codes, 1, CODEBOOKS, 2);
  GST_BUFFER_PTS (short_dur) = 4 * FRAME_NS;
  GST_BUFFER_DURATION (short_dur) = 10 * GST_MSECOND;
  fail_unless_equals_int (gst_harness_push (h, short_dur), GST_FLOW_OK);
  GstBuffer *rounded = token_buffer (codes, 1, CODEBOOKS, 2);
  GST_BUFFER_PTS (rounded) = 5 * FRAME_NS;
  GST_BUFFER_DURATION (rounded) = FRAME_NS - 500 * GST_USECOND;
  fail_unless_equals_int (gst_harness_push (h, rounded), GST_FLOW_OK);

  GPtrArray *bufs = pull_all (h);
  fail_unless_equals_int (bufs->len, 6);
  fail_unless_equals_int (gst_buffer_get_size (g_ptr_array_index (bufs, 4)),
      240 * sizeof (gfloat));
  fail_unless_equals_int (gst_buffer_get_size (g_ptr_array_index (bufs, 5)),
      FRAME * sizeof (gfloat));
  GstBuffer *out = g_ptr_array_index (bufs, 2);
  fail_unless_equals_int (gst_buffer_get_size (out), 240 * sizeof (gfloat));
  fail_unless_equals_uint64 (GST_BUFFER_PTS (out), 2 * FRAME_NS);
  fail_unless_equals_uint64 (GST_BUFFER_DURATION (out), 10 * GST_MSECOND);
  fail_unless (gst_buffer_get_audio_clipping_meta (out) == NULL);
  GstBuffer *out2 = g_ptr_array_index (bufs, 3);
  fail_unless_equals_int (gst_buffer_get_size (out2), (FRAME - 720) * sizeof (gfloat));

  gsize got_n;
  g_autofree gfloat *got = concat_f32 (bufs, &got_n);
  assert_pcm_equal (got, expected, 2 * FRAME + 240);
  g_ptr_array_unref (bufs);
  gst_harness_teardown (h);
}
GST_END_TEST;

GST_START_TEST (test_dec_s16_output)
{
  init_paths ();
  const gsize n = 4 * FRAME;
  g_autofree gfloat *pcm = make_speech (n);
  gsize frames;
  g_autofree gint32 *codes = reference_encode (pcm, n, CODEBOOKS, &frames);
  g_autofree gfloat *expected = reference_decode (codes, frames, CODEBOOKS);

  GstHarness *h = harness_for (make_element ("mimidec"));
  gst_harness_set_sink_caps_str (h, RAW_S16_CAPS);
  gst_harness_set_src_caps_str (h, TOKEN_CAPS);
  push_tokens (h, codes, frames, CODEBOOKS, 1);
  GPtrArray *bufs = pull_all (h);
  fail_unless_equals_int (bufs->len, frames);
  assert_contiguous (bufs, 0, sizeof (gint16));

  GstCaps *caps = gst_pad_get_current_caps (h->sinkpad);
  fail_unless_equals_string (gst_structure_get_string (gst_caps_get_structure (caps, 0),
          "format"), "S16LE");
  gst_caps_unref (caps);
  assert_s16_frames_equal (bufs, expected);
  g_ptr_array_unref (bufs);
  gst_harness_teardown (h);
}
GST_END_TEST;

/* Downstream switches from F32LE to S16LE mid-stream (a RECONFIGURE): the next frame comes
 * out in S16LE, the decoder state going on, and back. */
GST_START_TEST (test_dec_output_format_follows_downstream)
{
  init_paths ();
  const gsize n = 6 * FRAME;
  g_autofree gfloat *pcm = make_speech (n);
  gsize frames;
  g_autofree gint32 *codes = reference_encode (pcm, n, CODEBOOKS, &frames);
  g_autofree gfloat *expected = reference_decode (codes, frames, CODEBOOKS);

  GstHarness *h = new_decoder_harness (TOKEN_CAPS);
  const gchar *sink_caps[] = { RAW_F32_CAPS, RAW_S16_CAPS, RAW_F32_CAPS };
  for (gsize f = 0; f < 6; f++) {
    if (f % 2 == 0)
      gst_harness_set_sink_caps_str (h, sink_caps[f / 2]);
    fail_unless_equals_int (gst_harness_push (h, token_buffer (codes, 1, CODEBOOKS, f)),
        GST_FLOW_OK);
  }

  GPtrArray *bufs = pull_all (h);
  fail_unless_equals_int (bufs->len, 6);
  for (guint i = 0; i < bufs->len; i++)
    fail_unless_equals_int (gst_buffer_get_size (g_ptr_array_index (bufs, i)),
        FRAME * (i == 2 || i == 3 ? sizeof (gint16) : sizeof (gfloat)));
  GPtrArray *f32_head = g_ptr_array_new ();
  GPtrArray *s16 = g_ptr_array_new ();
  GPtrArray *f32_tail = g_ptr_array_new ();
  for (guint i = 0; i < 6; i++)
    g_ptr_array_add (i < 2 ? f32_head : i < 4 ? s16 : f32_tail, g_ptr_array_index (bufs, i));
  assert_f32_buffers_equal (f32_head, expected, 2 * FRAME);
  assert_s16_frames_equal (s16, expected + 2 * FRAME);
  assert_f32_buffers_equal (f32_tail, expected + 4 * FRAME, 2 * FRAME);
  assert_current_caps (h->sinkpad, RAW_F32_CAPS);
  g_ptr_array_unref (f32_head);
  g_ptr_array_unref (s16);
  g_ptr_array_unref (f32_tail);
  g_ptr_array_unref (bufs);
  gst_harness_teardown (h);
}
GST_END_TEST;

GST_START_TEST (test_dec_flush_resets_state)
{
  init_paths ();
  const gsize n = 6 * FRAME;
  g_autofree gfloat *pcm = make_speech (n);
  gsize frames;
  g_autofree gint32 *codes = reference_encode (pcm, n, CODEBOOKS, &frames);
  g_autofree gfloat *expected = reference_decode (codes, frames, CODEBOOKS);

  GstHarness *h = new_decoder_harness (TOKEN_CAPS);
  push_tokens (h, codes, frames, CODEBOOKS, 1);
  g_ptr_array_unref (pull_all (h));
  push_flush (h);
  push_tokens (h, codes, frames, CODEBOOKS, 1);
  GPtrArray *bufs = pull_all (h);
  assert_f32_buffers_equal (bufs, expected, n);
  g_ptr_array_unref (bufs);
  gst_harness_teardown (h);
}
GST_END_TEST;

/* Issue 14, defect 1: a push that fails with FLUSHING, as when a seek or a state change
 * catches the streaming thread pushing, left the input frame unfinished in the base class,
 * which then held back the next SEGMENT behind the first audio of the new stream. After each
 * restart (a flush, or NULL and back to PLAYING) the SEGMENT must go out before the audio,
 * and the audio must be that of a fresh stream. */
static void
push_refused_frame_then_restart (void (*restart) (GstHarness *))
{
  init_paths ();
  g_autofree gfloat *pcm = make_speech (3 * FRAME);
  gsize frames;
  g_autofree gint32 *codes = reference_encode (pcm, 3 * FRAME, CODEBOOKS, &frames);
  g_autofree gfloat *expected = reference_decode (codes + CODEBOOKS, 2, CODEBOOKS);

  GstHarness *h = new_decoder_harness (TOKEN_CAPS);
  GstPad *src = gst_element_get_static_pad (h->element, "src");
  StreamChecker *checker = stream_checker_attach (src);
  gst_object_unref (src);
  stream_checker_refuse_buffers (checker, 1);
  fail_unless_equals_int (gst_harness_push (h, token_buffer (codes, 1, CODEBOOKS, 0)),
      GST_FLOW_FLUSHING);
  g_ptr_array_unref (pull_all (h));

  restart (h);
  guint segments_before, segments, n_buffers;
  stream_checker_counts (checker, &segments_before, &n_buffers);
  fail_unless_equals_int (gst_harness_push (h, token_buffer (codes, 1, CODEBOOKS, 1)),
      GST_FLOW_OK);
  fail_unless_equals_int (gst_harness_push (h, token_buffer (codes, 1, CODEBOOKS, 2)),
      GST_FLOW_OK);
  stream_checker_assert_clean (checker);
  stream_checker_counts (checker, &segments, &n_buffers);
  fail_unless_equals_int (segments, segments_before + 1);

  GPtrArray *bufs = pull_all (h);
  fail_unless_equals_int (bufs->len, 2);
  fail_unless_equals_uint64 (GST_BUFFER_PTS (g_ptr_array_index (bufs, 0)), FRAME_NS);
  assert_f32_buffers_equal (bufs, expected, 2 * FRAME);
  g_ptr_array_unref (bufs);
  stream_checker_free (checker);
  gst_harness_teardown (h);
}

static void
restart_by_state_change (GstHarness * h)
{
  fail_unless_equals_int (gst_element_set_state (h->element, GST_STATE_NULL),
      GST_STATE_CHANGE_SUCCESS);
  gst_harness_play (h);
  /* The element's pads lost their sticky events: a new stream, as a source would send. */
  fail_unless (gst_harness_push_event (h, gst_event_new_stream_start ("restarted")));
  gst_harness_set_src_caps_str (h, TOKEN_CAPS);
}

GST_START_TEST (test_dec_segment_after_refused_push_and_flush)
{
  push_refused_frame_then_restart (push_flush);
}
GST_END_TEST;

GST_START_TEST (test_dec_segment_after_refused_push_and_restart)
{
  push_refused_frame_then_restart (restart_by_state_change);
}
GST_END_TEST;

/* Bad token buffers: the wrong size, or codes past the codebook. Each is a decode error
 * (tolerated by default, max-errors=-1), produces no output of its own, leaves the decoder
 * state alone, and with plc=true its time is concealed in front of the next good frame:
 * the decoder runs once more on the last good frame, faded out. */
GST_START_TEST (test_dec_bad_buffers)
{
  init_paths ();
  const gsize n = 8 * FRAME;
  g_autofree gfloat *pcm = make_speech (n);
  gsize frames;
  g_autofree gint32 *codes = reference_encode (pcm, n, CODEBOOKS, &frames);
  /* The reference decodes frame 3 in place of the bad frame 4. */
  g_autofree gint32 *repeated = g_memdup2 (codes, frames * CODEBOOKS * sizeof (gint32));
  memcpy (repeated + 4 * CODEBOOKS, codes + 3 * CODEBOOKS, CODEBOOKS * sizeof (gint32));
  g_autofree gfloat *expected = reference_decode (repeated, frames, CODEBOOKS);

  const gsize sizes[] = { 1, 15, 17, 31, 1000 };
  for (guint t = 0; t < G_N_ELEMENTS (sizes) + 2; t++) {
    GstElement *dec = make_element ("mimidec");
    g_object_set (dec, "plc", TRUE, NULL);
    GstBus *bus = attach_bus (dec);
    GstHarness *h = harness_for (dec);
    gst_harness_set_src_caps_str (h, TOKEN_CAPS);
    push_tokens (h, codes, 4, CODEBOOKS, 1);

    GstBuffer *bad;
    if (t < G_N_ELEMENTS (sizes)) {
      /* Random bytes of a size that is no whole number of 16-byte frames. */
      guint8 *junk = g_malloc (sizes[t]);
      for (gsize i = 0; i < sizes[t]; i++)
        junk[i] = (guint8) (i * 37 + 11);
      bad = gst_buffer_new_wrapped (junk, sizes[t]);
    } else {
      /* Right size, but one code out of range (256, then the largest u16). */
      bad = token_buffer (codes, 1, CODEBOOKS, 4);
      guint16 code = t == G_N_ELEMENTS (sizes) ? CODEBOOK_SIZE : 0xffff;
      guint8 le[2] = { code & 0xff, code >> 8 };
      gst_buffer_fill (bad, 2 * 5, le, 2);
    }
    GST_BUFFER_PTS (bad) = 4 * FRAME_NS;
    GST_BUFFER_DURATION (bad) = FRAME_NS;
    fail_unless_equals_int (gst_harness_push (h, bad), GST_FLOW_OK);
    fail_unless_equals_int (gst_harness_buffers_received (h), 4);

    for (gsize f = 5; f < frames; f++)
      fail_unless_equals_int (gst_harness_push (h, token_buffer (codes, 1, CODEBOOKS, f)),
          GST_FLOW_OK);
    GPtrArray *bufs = pull_all (h);
    /* Continuous output over the whole 8 frames: the lost one is concealed. */
    assert_contiguous (bufs, 0, sizeof (gfloat));
    gsize got_n;
    g_autofree gfloat *got = concat_f32 (bufs, &got_n);
    fail_unless_equals_int (got_n, n);
    assert_pcm_equal (got, expected, 4 * FRAME);
    /* The concealed frame: the repeat, faded out. */
    for (gsize i = 0; i < FRAME; i++) {
      gfloat faded = expected[4 * FRAME + i] * 0.5f * (1.0f + cosf ((gfloat) G_PI * i / FRAME));
      fail_unless (fabsf (got[4 * FRAME + i] - faded) <= 1e-6f * (1.0f + fabsf (faded)),
          "concealed sample %" G_GSIZE_FORMAT ": %g vs %g", i, got[4 * FRAME + i], faded);
    }
    /* Then decoding goes on from that state, after a 10 ms fade-in. */
    assert_pcm_equal (got + 5 * FRAME + 240, expected + 5 * FRAME + 240, 3 * FRAME - 240);
    fail_unless (fabsf (got[5 * FRAME]) == 0.0f);

    GstMessage *msg = gst_bus_pop_filtered (bus, GST_MESSAGE_ERROR);
    fail_unless (msg == NULL);
    g_ptr_array_unref (bufs);
    gst_harness_teardown (h);
    drop_bus (bus);
  }
}
GST_END_TEST;

/* A bad last buffer with plc=true: its time is concealed when EOS drains the decoder. */
GST_START_TEST (test_dec_bad_last_buffer)
{
  init_paths ();
  const gsize n = 4 * FRAME;
  g_autofree gfloat *pcm = make_speech (n);
  gsize frames;
  g_autofree gint32 *codes = reference_encode (pcm, n, CODEBOOKS, &frames);

  GstHarness *h = new_plc_decoder_harness (TRUE);
  push_tokens (h, codes, 3, CODEBOOKS, 1);
  GstBuffer *bad = token_buffer (codes, 1, CODEBOOKS, 3);
  guint8 le[2] = { 0x2c, 0x01 };        /* 300 */
  gst_buffer_fill (bad, 0, le, 2);
  fail_unless_equals_int (gst_harness_push (h, bad), GST_FLOW_OK);
  fail_unless_equals_int (gst_harness_buffers_received (h), 3);
  fail_unless (gst_harness_push_event (h, gst_event_new_eos ()));

  GPtrArray *bufs = pull_all (h);
  assert_contiguous (bufs, 0, sizeof (gfloat));
  gsize got_n;
  g_autofree gfloat *got = concat_f32 (bufs, &got_n);
  fail_unless_equals_int (got_n, n);
  fail_unless (fabsf (got[3 * FRAME + FRAME - 1]) < 1e-3f);
  g_ptr_array_unref (bufs);
  gst_harness_teardown (h);
}
GST_END_TEST;

/* With max-errors=0 a bad buffer is an element error. */
GST_START_TEST (test_dec_bad_buffer_max_errors)
{
  init_paths ();
  GstElement *dec = make_element ("mimidec");
  g_object_set (dec, "max-errors", 0, NULL);
  GstBus *bus = attach_bus (dec);
  GstHarness *h = harness_for (dec);
  gst_harness_set_src_caps_str (h, TOKEN_CAPS);

  GstBuffer *bad = gst_buffer_new_allocate (NULL, 16, NULL);
  gst_buffer_memset (bad, 0, 0xff, 16);
  GST_BUFFER_PTS (bad) = 0;
  fail_unless_equals_int (gst_harness_push (h, bad), GST_FLOW_ERROR);

  GstMessage *msg = pop_error (bus);
  GError *error = NULL;
  gchar *debug = NULL;
  gst_message_parse_error (msg, &error, &debug);
  fail_unless (g_error_matches (error, GST_STREAM_ERROR, GST_STREAM_ERROR_DECODE));
  fail_unless (strstr (debug, "256-entry codebooks") != NULL, "debug: %s", debug);
  g_error_free (error);
  g_free (debug);
  gst_message_unref (msg);
  gst_harness_teardown (h);
  drop_bus (bus);
}
GST_END_TEST;

static void
push_gap (GstHarness * h, GstClockTime pts, GstClockTime duration)
{
  fail_unless (gst_harness_push_event (h, gst_event_new_gap (pts, duration)));
}

/* A GAP event with plc=true becomes concealment audio of the same duration. */
GST_START_TEST (test_dec_gap_concealment)
{
  init_paths ();
  const gsize n = 8 * FRAME;
  g_autofree gfloat *pcm = make_speech (n);
  gsize frames;
  g_autofree gint32 *codes = reference_encode (pcm, n, CODEBOOKS, &frames);

  GstHarness *h = new_plc_decoder_harness (TRUE);
  push_tokens (h, codes, 3, CODEBOOKS, 1);
  push_gap (h, 3 * FRAME_NS, 2 * FRAME_NS);
  for (gsize f = 5; f < frames; f++) {
    GstBuffer *buf = token_buffer (codes, 1, CODEBOOKS, f);
    if (f == 5)
      GST_BUFFER_FLAG_SET (buf, GST_BUFFER_FLAG_DISCONT);
    fail_unless_equals_int (gst_harness_push (h, buf), GST_FLOW_OK);
  }
  GPtrArray *bufs = pull_all (h);
  assert_contiguous (bufs, 0, sizeof (gfloat));
  gsize got_n;
  g_autofree gfloat *got = concat_f32 (bufs, &got_n);
  fail_unless_equals_int (got_n, n);
  /* The first concealed frame is not silent (faded repeat), the second is. */
  gfloat energy1 = 0, energy2 = 0;
  for (gsize i = 0; i < FRAME / 4; i++)
    energy1 += got[3 * FRAME + i] * got[3 * FRAME + i];
  for (gsize i = 0; i < FRAME; i++)
    energy2 += got[4 * FRAME + i] * got[4 * FRAME + i];
  fail_unless (energy1 > 0.0f);
  fail_unless (energy2 == 0.0f);
  g_ptr_array_unref (bufs);
  gst_harness_teardown (h);
}
GST_END_TEST;

/* Without plc the GAP goes downstream and the output timestamps follow the input. */
GST_START_TEST (test_dec_gap_without_plc)
{
  init_paths ();
  const gsize n = 6 * FRAME;
  g_autofree gfloat *pcm = make_speech (n);
  gsize frames;
  g_autofree gint32 *codes = reference_encode (pcm, n, CODEBOOKS, &frames);

  GstHarness *h = new_decoder_harness (TOKEN_CAPS);
  push_tokens (h, codes, 2, CODEBOOKS, 1);
  push_gap (h, 2 * FRAME_NS, 2 * FRAME_NS);
  for (gsize f = 4; f < frames; f++)
    fail_unless_equals_int (gst_harness_push (h, token_buffer (codes, 1, CODEBOOKS, f)),
        GST_FLOW_OK);
  GPtrArray *bufs = pull_all (h);
  fail_unless_equals_int (bufs->len, 4);
  fail_unless_equals_uint64 (GST_BUFFER_PTS (g_ptr_array_index (bufs, 2)), 4 * FRAME_NS);
  /* The frame after the gap fades in from silence. */
  GstMapInfo map;
  fail_unless (gst_buffer_map (g_ptr_array_index (bufs, 2), &map, GST_MAP_READ));
  fail_unless_equals_float (((gfloat *) map.data)[0], 0.0f);
  gst_buffer_unmap (g_ptr_array_index (bufs, 2), &map);

  g_autoptr (GPtrArray) gaps = pull_events (h, GST_EVENT_GAP);
  fail_unless (gaps->len > 0);
  g_ptr_array_unref (bufs);
  gst_harness_teardown (h);
}
GST_END_TEST;

/* Frames missing from the input (a DISCONT buffer later than expected) are concealed with
 * plc=true, keeping the output continuous. */
GST_START_TEST (test_dec_discont_concealment)
{
  init_paths ();
  const gsize n = 8 * FRAME;
  g_autofree gfloat *pcm = make_speech (n);
  gsize frames;
  g_autofree gint32 *codes = reference_encode (pcm, n, CODEBOOKS, &frames);
  g_autofree gfloat *expected = reference_decode (codes, 3, CODEBOOKS);

  for (gint plc = 0; plc <= 1; plc++) {
    GstHarness *h = new_plc_decoder_harness (plc);
    push_tokens (h, codes, 3, CODEBOOKS, 1);
    for (gsize f = 6; f < frames; f++) {
      GstBuffer *buf = token_buffer (codes, 1, CODEBOOKS, f);
      if (f == 6)
        GST_BUFFER_FLAG_SET (buf, GST_BUFFER_FLAG_DISCONT);
      fail_unless_equals_int (gst_harness_push (h, buf), GST_FLOW_OK);
    }
    GPtrArray *bufs = pull_all (h);
    gsize got_n;
    g_autofree gfloat *got = concat_f32 (bufs, &got_n);
    assert_pcm_equal (got, expected, 3 * FRAME);
    if (plc) {
      assert_contiguous (bufs, 0, sizeof (gfloat));
      fail_unless_equals_int (got_n, n);
      /* Frames 3-5 concealed: a faded repeat, then silence; frame 6 fades in. */
      fail_unless (got[3 * FRAME] != 0.0f);
      for (gsize i = 4 * FRAME; i < 6 * FRAME + 1; i++)
        fail_unless (got[i] == 0.0f, "sample %" G_GSIZE_FORMAT " not silent", i);
    } else {
      fail_unless_equals_int (bufs->len, 5);
      fail_unless_equals_uint64 (GST_BUFFER_PTS (g_ptr_array_index (bufs, 3)), 6 * FRAME_NS);
      fail_unless_equals_int (got_n, n - 3 * FRAME);
      fail_unless (got[3 * FRAME] == 0.0f);
    }
    g_ptr_array_unref (bufs);
    gst_harness_teardown (h);
  }
}
GST_END_TEST;

/* ================================================================== both */

/* mimienc ! mimidec gives the library's encode -> decode bit for bit, the padded tail cut. */
GST_START_TEST (test_roundtrip_bit_exact)
{
  init_paths ();
  const gsize n = 22 * FRAME - 700;
  g_autofree gfloat *pcm = make_speech (n);
  gsize frames;
  g_autofree gint32 *codes = reference_encode (pcm, n, CODEBOOKS, &frames);
  g_autofree gfloat *expected = reference_decode (codes, frames, CODEBOOKS);

  g_autofree gchar *line = g_strdup_printf ("mimienc model=\"%s\" config=\"%s\" ! "
      "mimidec model=\"%s\" config=\"%s\"", model_path, config_path, model_path, config_path);
  GstHarness *h = gst_harness_new_parse (line);
  gst_harness_set_src_caps_str (h, RAW_F32_CAPS);
  push_pcm (h, pcm, n, 480, 0);
  fail_unless (gst_harness_push_event (h, gst_event_new_eos ()));
  GPtrArray *bufs = pull_all (h);
  assert_contiguous (bufs, 0, sizeof (gfloat));
  assert_f32_buffers_equal (bufs, expected, n);
  /* The codec's own latency, as the pipeline sees it. */
  fail_unless_equals_uint64 (gst_harness_query_latency (h), FRAME_NS);
  g_ptr_array_unref (bufs);
  gst_harness_teardown (h);
}
GST_END_TEST;

/* Roundtrip pipelines of one process, each pushed from its own thread: their mimienc and
 * mimidec elements share the process's Mimi scheduler (the default), and each output is the
 * audio of the library stepping its stream alone: within 1e-5 relative L2 when its frames were
 * batched with others' (wider products sum in another order: moshi-mimi.h), bit for bit for
 * the last pipeline, which opts out. */
#define SHARED_PIPELINES 4

typedef struct {
  gint index;
  const gfloat *pcm;
  gsize n;
  GPtrArray *bufs;
  GstHarness *h;
} SharedRun;

static gpointer
run_shared_pipeline (gpointer data)
{
  SharedRun *r = data;
  push_pcm (r->h, r->pcm, r->n, 480 * (r->index + 1), 0);
  fail_unless (gst_harness_push_event (r->h, gst_event_new_eos ()));
  r->bufs = pull_all (r->h);
  return NULL;
}

GST_START_TEST (test_shared_scheduler_roundtrips)
{
  init_paths ();
  const gsize n = 12 * FRAME;
  g_autofree gfloat *pcm = make_speech (n);
  gsize frames;
  g_autofree gint32 *codes = reference_encode (pcm, n, CODEBOOKS, &frames);
  g_autofree gfloat *expected = reference_decode (codes, frames, CODEBOOKS);

  SharedRun runs[SHARED_PIPELINES];
  GThread *threads[SHARED_PIPELINES];
  for (gint i = 0; i < SHARED_PIPELINES; i++) {
    gboolean shared = i + 1 < SHARED_PIPELINES;
    g_autofree gchar *line = g_strdup_printf ("mimienc model=\"%s\" config=\"%s\" "
        "shared-scheduler=%d ! mimidec model=\"%s\" config=\"%s\" shared-scheduler=%d",
        model_path, config_path, shared, model_path, config_path, shared);
    runs[i] = (SharedRun) { i, pcm, n, NULL, gst_harness_new_parse (line) };
    gst_harness_set_src_caps_str (runs[i].h, RAW_F32_CAPS);
  }
  for (gint i = 0; i < SHARED_PIPELINES; i++)
    threads[i] = g_thread_new ("pipeline", run_shared_pipeline, &runs[i]);
  for (gint i = 0; i < SHARED_PIPELINES; i++)
    g_thread_join (threads[i]);

  /* the elements' scheduler: the one of the process's shared copy of the model */
  g_autoptr (GError) error = NULL;
  MoshiMimiLoadOptions options = {.device = MOSHI_DEVICE_AUTO };
  g_autoptr (MoshiMimi) mimi = moshi_mimi_load_shared (model_path, config_path, &options,
      &error);
  fail_unless (mimi != NULL, "%s", error ? error->message : "");
  g_autoptr (MoshiScheduler) sched = moshi_scheduler_get_shared_mimi (mimi, NULL, &error);
  MoshiSchedulerStats st;
  moshi_scheduler_get_stats (sched, &st);
  /* three encoders and three decoders of 12 frames each, joined until teardown */
  fail_unless_equals_int (st.conversations, 2 * (SHARED_PIPELINES - 1));
  fail_unless_equals_uint64 (st.steps, 2 * (SHARED_PIPELINES - 1) * frames);
  GST_INFO ("%" G_GUINT64_FORMAT " ticks for %" G_GUINT64_FORMAT " frames", st.ticks, st.steps);

  for (gint i = 0; i < SHARED_PIPELINES; i++) {
    assert_contiguous (runs[i].bufs, 0, sizeof (gfloat));
    /* a stream alone is bit for bit; batched, the wider products sum in another order
     * (moshi-mimi.h) */
    if (i + 1 < SHARED_PIPELINES)
      assert_f32_buffers_close (runs[i].bufs, expected, n, 1e-5);
    else
      assert_f32_buffers_equal (runs[i].bufs, expected, n);
    g_ptr_array_unref (runs[i].bufs);
    gst_harness_teardown (runs[i].h);
  }
  moshi_scheduler_get_stats (sched, &st);
  fail_unless_equals_int (st.conversations, 0);
}
GST_END_TEST;

/* The shared scheduler seen from the elements: scheduler-stats (NULL for a session of its
 * own), max-streams on the element that creates it (past it, a stream runs alone), and the
 * "mimi-scheduler" message once a second of audio. */
GST_START_TEST (test_shared_scheduler_stats)
{
  init_paths ();
  GstElement *enc = make_element ("mimienc");
  g_object_set (enc, "max-streams", 1, NULL);
  GstHarness *owner = harness_for (enc);
  GstBus *bus = gst_bus_new ();
  gst_element_set_bus (owner->element, bus);
  gst_harness_set_src_caps_str (owner, RAW_F32_CAPS);
  GstHarness *alone = new_decoder_harness (TOKEN_CAPS);
  GstElement *own = make_element ("mimienc");
  g_object_set (own, "shared-scheduler", FALSE, NULL);
  GstHarness *unshared = harness_for (own);
  gst_harness_set_src_caps_str (unshared, RAW_F32_CAPS);

  GstStructure *st = NULL;
  g_object_get (alone->element, "scheduler-stats", &st, NULL);
  fail_unless (st == NULL, "the second stream past max-streams=1 runs alone");
  g_object_get (unshared->element, "scheduler-stats", &st, NULL);
  fail_unless (st == NULL);

  /* 13 frames: a second of audio is 12.5 of them */
  const gsize n = 13 * FRAME;
  g_autofree gfloat *pcm = make_speech (n);
  push_pcm (owner, pcm, n, FRAME, 0);
  g_ptr_array_unref (pull_all (owner));
  g_object_get (owner->element, "scheduler-stats", &st, NULL);
  fail_unless (st != NULL);
  gint streams, max;
  guint64 steps;
  fail_unless (gst_structure_get (st, "conversations", G_TYPE_INT, &streams,
          "max-conversations", G_TYPE_INT, &max, "steps", G_TYPE_UINT64, &steps, NULL));
  fail_unless_equals_int (streams, 1);
  fail_unless_equals_int (max, 1);
  fail_unless_equals_uint64 (steps, 13);
  gst_structure_free (st);

  GstMessage *msg = gst_bus_pop_filtered (bus, GST_MESSAGE_ELEMENT);
  fail_unless (msg != NULL, "no scheduler message after a second of audio");
  fail_unless (gst_message_has_name (msg, "mimi-scheduler"));
  fail_unless (gst_message_get_structure (msg) != NULL);
  gst_message_unref (msg);
  /* one a second, not one a frame */
  fail_unless (gst_bus_pop_filtered (bus, GST_MESSAGE_ELEMENT) == NULL);

  gst_element_set_bus (owner->element, NULL);
  gst_object_unref (bus);
  gst_harness_teardown (unshared);
  gst_harness_teardown (alone);
  gst_harness_teardown (owner);
}
GST_END_TEST;

/* State changes from another thread while buffers keep coming must neither crash nor
 * leak, and the element must work normally afterwards. */
GST_START_TEST (test_enc_state_changes_under_data)
{
  init_paths ();
  g_autofree gfloat *pcm = make_speech (5 * FRAME);
  GstHarness *h = new_encoder_harness ();
  stress_state_changes (h, RAW_F32_CAPS,
      gst_buffer_new_memdup (pcm, 1000 * sizeof (gfloat)));

  /* Afterwards: a fresh stream gives the tokens of a fresh stream. */
  gst_harness_play (h);
  push_flush (h);
  gst_harness_set_src_caps_str (h, RAW_F32_CAPS);
  gsize frames;
  g_autofree gint32 *expected = reference_encode (pcm, 5 * FRAME, CODEBOOKS, &frames);
  push_pcm (h, pcm, 5 * FRAME, FRAME, 0);
  GPtrArray *bufs = pull_all (h);
  assert_tokens_equal (bufs, expected, frames, CODEBOOKS);
  g_ptr_array_unref (bufs);
  gst_harness_teardown (h);
}
GST_END_TEST;

GST_START_TEST (test_dec_state_changes_under_data)
{
  init_paths ();
  g_autofree gfloat *pcm = make_speech (3 * FRAME);
  gsize frames;
  g_autofree gint32 *codes = reference_encode (pcm, 3 * FRAME, CODEBOOKS, &frames);
  g_autofree gfloat *expected = reference_decode (codes, frames, CODEBOOKS);
  GstHarness *h = new_decoder_harness (TOKEN_CAPS);
  stress_state_changes (h, TOKEN_CAPS, token_buffer (codes, 2, CODEBOOKS, 0));

  gst_harness_play (h);
  push_flush (h);
  gst_harness_set_src_caps_str (h, TOKEN_CAPS);
  push_tokens (h, codes, frames, CODEBOOKS, 1);
  GPtrArray *bufs = pull_all (h);
  assert_f32_buffers_equal (bufs, expected, frames * FRAME);
  g_ptr_array_unref (bufs);
  gst_harness_teardown (h);
}
GST_END_TEST;

/* Two elements naming the same model hold the same MoshiMimi, also when one asks for
 * device=auto and the other for device=cpu on a machine where auto means the CPU (and a copy of
 * its own where auto finds a GPU). */
GST_START_TEST (test_shared_model)
{
  GstElement *enc = make_element ("mimienc");
  GstElement *dec = make_element ("mimidec");
  GstElement *other = make_element ("mimienc");
  g_object_set (other, "device", 1 /* cpu, vs auto */ , NULL);

  fail_unless_equals_int (gst_element_set_state (enc, GST_STATE_READY),
      GST_STATE_CHANGE_SUCCESS);
  fail_unless_equals_int (gst_element_set_state (dec, GST_STATE_READY),
      GST_STATE_CHANGE_SUCCESS);
  fail_unless_equals_int (gst_element_set_state (other, GST_STATE_READY),
      GST_STATE_CHANGE_SUCCESS);
  gpointer m_enc = g_object_get_data (G_OBJECT (enc), MODEL_DATA_KEY);
  gpointer m_dec = g_object_get_data (G_OBJECT (dec), MODEL_DATA_KEY);
  gpointer m_other = g_object_get_data (G_OBJECT (other), MODEL_DATA_KEY);
  fail_unless (m_enc != NULL);
  fail_unless (m_enc == m_dec);
  MoshiDevice auto_device;
  g_autofree char *auto_description = moshi_device_describe (MOSHI_DEVICE_AUTO, &auto_device,
      NULL);
  fail_unless (auto_description != NULL);
  if (auto_device == MOSHI_DEVICE_CPU)
    fail_unless (m_other == m_enc);
  else
    fail_unless (m_other != m_enc);

  /* The registry hands the same copy to the library's own callers too. */
  MoshiMimiLoadOptions options = {.device = MOSHI_DEVICE_AUTO };
  g_autoptr (GError) error = NULL;
  MoshiMimi *again = moshi_mimi_load_shared (model_path, config_path, &options, &error);
  fail_unless (again == m_enc);
  moshi_mimi_unref (again);

  gst_element_set_state (enc, GST_STATE_NULL);
  fail_unless (g_object_get_data (G_OBJECT (enc), MODEL_DATA_KEY) == NULL);
  fail_unless (g_object_get_data (G_OBJECT (dec), MODEL_DATA_KEY) == m_dec);
  gst_element_set_state (dec, GST_STATE_NULL);
  gst_element_set_state (other, GST_STATE_NULL);
  gst_object_unref (enc);
  gst_object_unref (dec);
  gst_object_unref (other);
}
GST_END_TEST;

/* Changing the model settings while in READY takes effect at the next start. */
GST_START_TEST (test_model_change_in_ready)
{
  GstElement *enc = make_element ("mimienc");
  g_object_set (enc, "model", "/nonexistent/first.safetensors", NULL);
  GstBus *bus = attach_bus (enc);
  fail_unless_equals_int (gst_element_set_state (enc, GST_STATE_READY),
      GST_STATE_CHANGE_FAILURE);
  g_object_set (enc, "model", model_path, NULL);
  fail_unless_equals_int (gst_element_set_state (enc, GST_STATE_READY),
      GST_STATE_CHANGE_SUCCESS);
  gpointer first_model = g_object_get_data (G_OBJECT (enc), MODEL_DATA_KEY);
  fail_unless (first_model != NULL);
  /* Keep the first copy alive so that a new one cannot get its address. */
  MoshiMimiLoadOptions options = {.device = MOSHI_DEVICE_AUTO };
  MoshiMimi *held = moshi_mimi_load_shared (model_path, config_path, &options, NULL);
  fail_unless (held == first_model);

  /* the same config in another file is another model for the registry */
  g_autofree char *dir = g_dir_make_tmp ("mimienc-XXXXXX", NULL);
  g_autofree char *config_copy = g_build_filename (dir, "config.json", NULL);
  g_autofree char *config_text = NULL;
  gsize config_len;
  fail_unless (g_file_get_contents (config_path, &config_text, &config_len, NULL));
  fail_unless (g_file_set_contents (config_copy, config_text, config_len, NULL));
  g_object_set (enc, "config", config_copy, NULL);
  fail_unless_equals_int (gst_element_set_state (enc, GST_STATE_PAUSED),
      GST_STATE_CHANGE_SUCCESS);
  gpointer second_model = g_object_get_data (G_OBJECT (enc), MODEL_DATA_KEY);
  fail_unless (second_model != NULL && second_model != first_model);
  gst_element_set_state (enc, GST_STATE_NULL);
  moshi_mimi_unref (held);
  g_unlink (config_copy);
  g_rmdir (dir);
  gst_object_unref (enc);
  drop_bus (bus);
}
GST_END_TEST;

/* ================================================================== errors */

GST_START_TEST (test_missing_model_file)
{
  const gchar *factories[] = { "mimienc", "mimidec" };
  for (guint i = 0; i < G_N_ELEMENTS (factories); i++) {
    GstElement *element = make_element (factories[i]);
    g_object_set (element, "model", "/nonexistent/dir/mimi.safetensors", NULL);
    assert_error (expect_open_error (element), GST_RESOURCE_ERROR,
        GST_RESOURCE_ERROR_NOT_FOUND, "/nonexistent/dir/mimi.safetensors", NULL);
    gst_object_unref (element);
  }
}
GST_END_TEST;

GST_START_TEST (test_corrupt_model_file)
{
  init_paths ();
  g_autofree gchar *dir = g_dir_make_tmp ("mimi-corrupt-XXXXXX", NULL);
  g_autofree gchar *garbage = NULL, *truncated = NULL;
  write_broken_safetensors (dir, model_path, &garbage, &truncated);

  const gchar *files[] = { garbage, truncated };
  const gchar *factories[] = { "mimienc", "mimidec" };
  for (guint i = 0; i < G_N_ELEMENTS (files); i++) {
    GstElement *element = make_element (factories[i]);
    g_object_set (element, "model", files[i], NULL);
    assert_error (expect_open_error (element), GST_RESOURCE_ERROR,
        GST_RESOURCE_ERROR_OPEN_READ, files[i], NULL);
    gst_object_unref (element);
  }
  g_unlink (garbage);
  g_unlink (truncated);
  g_rmdir (dir);
}
GST_END_TEST;

GST_START_TEST (test_bad_settings)
{
  /* No model at all. */
  GstElement *element = gst_element_factory_make ("mimidec", NULL);
  assert_error (expect_open_error (element), GST_RESOURCE_ERROR,
      GST_RESOURCE_ERROR_NOT_FOUND, "No Mimi model", NULL);
  gst_object_unref (element);

  /* A missing config names the config. */
  element = make_element ("mimienc");
  g_object_set (element, "config", "/nonexistent/config.json", NULL);
  assert_error (expect_open_error (element), GST_RESOURCE_ERROR,
      GST_RESOURCE_ERROR_NOT_FOUND, "/nonexistent/config.json", NULL);
  gst_object_unref (element);

  /* A config that is a FIFO or a device is refused at once, naming it, instead of blocking on
   * the open or reading without end (issue 14, defect 7). */
  g_autofree gchar *dir = g_dir_make_tmp ("mimi-fifo-XXXXXX", NULL);
  g_autofree gchar *fifo = g_build_filename (dir, "config.json", NULL);
  fail_unless (mkfifo (fifo, 0600) == 0);
  const gchar *specials[] = { fifo, "/dev/zero" };
  for (guint i = 0; i < G_N_ELEMENTS (specials); i++) {
    element = make_element (i == 0 ? "mimienc" : "mimidec");
    g_object_set (element, "config", specials[i], NULL);
    assert_error (expect_open_error (element), GST_RESOURCE_ERROR,
        GST_RESOURCE_ERROR_OPEN_READ, specials[i], NULL);
    gst_object_unref (element);
  }
  g_unlink (fifo);
  g_rmdir (dir);

  /* The small model has 16 codebooks. */
  element = make_element ("mimienc");
  g_object_set (element, "num-codebooks", 17, NULL);
  assert_error (expect_open_error (element), GST_RESOURCE_ERROR,
      GST_RESOURCE_ERROR_SETTINGS, "has only 16 codebooks", NULL);
  gst_object_unref (element);

  /* No CUDA in this build: a clear error, not a crash (skipped once CUDA works). */
  element = make_element ("mimienc");
  g_object_set (element, "device", 2 /* cuda */ , NULL);
  GstBus *bus = attach_bus (element);
  if (gst_element_set_state (element, GST_STATE_READY) == GST_STATE_CHANGE_FAILURE) {
    assert_error (pop_error (bus), GST_LIBRARY_ERROR,
        GST_LIBRARY_ERROR_INIT, "cuda", NULL);
  }
  gst_element_set_state (element, GST_STATE_NULL);
  drop_bus (bus);
  gst_object_unref (element);
}
GST_END_TEST;

/* Model ids resolve through the local Hugging Face cache. */
GST_START_TEST (test_model_from_hub_cache)
{
  init_paths ();
  g_autofree gchar *cache = g_dir_make_tmp ("mimi-hub-XXXXXX", NULL);
  g_autofree gchar *snapshot = g_build_filename (cache, "models--kyutai--tiny-mimi",
      "snapshots", "0123456789abcdef0123456789abcdef01234567", NULL);
  g_autofree gchar *refs = g_build_filename (cache, "models--kyutai--tiny-mimi", "refs", NULL);
  g_autofree gchar *ref = g_build_filename (refs, "main", NULL);
  g_autofree gchar *entry = g_build_filename (snapshot, MOSHI_HUB_MIMI_FILENAME, NULL);
  fail_unless (g_mkdir_with_parents (snapshot, 0755) == 0);
  fail_unless (g_mkdir_with_parents (refs, 0755) == 0);
  fail_unless (g_file_set_contents (ref, "0123456789abcdef0123456789abcdef01234567", -1,
          NULL));
  fail_unless (symlink (model_path, entry) == 0);
  g_setenv ("HF_HUB_CACHE", cache, TRUE);

  GstElement *enc = make_element ("mimienc");
  g_object_set (enc, "model", "kyutai/tiny-mimi", NULL);
  fail_unless_equals_int (gst_element_set_state (enc, GST_STATE_READY),
      GST_STATE_CHANGE_SUCCESS);
  gst_element_set_state (enc, GST_STATE_NULL);
  gst_object_unref (enc);

  GstElement *dec = make_element ("mimidec");
  g_object_set (dec, "model", "kyutai/not-downloaded", NULL);
  assert_error (expect_open_error (dec), GST_RESOURCE_ERROR, GST_RESOURCE_ERROR_NOT_FOUND,
      "kyutai/not-downloaded", NULL);
  gst_object_unref (dec);

  g_unsetenv ("HF_HUB_CACHE");
  g_unlink (entry);
  g_unlink (ref);
  g_rmdir (refs);
  g_rmdir (snapshot);
  g_autofree gchar *snapshots = g_path_get_dirname (snapshot);
  g_rmdir (snapshots);
  g_autofree gchar *repo = g_path_get_dirname (snapshots);
  g_rmdir (repo);
  g_rmdir (cache);
}
GST_END_TEST;

/* ---- refused caps, with the explanation in the debug log ---- */

static GMutex log_lock;
static GString *log_text;

static void
collect_log (GstDebugCategory * category, GstDebugLevel level, const gchar * file,
    const gchar * function, gint line, GObject * object, GstDebugMessage * message,
    gpointer user_data)
{
  const gchar *name = gst_debug_category_get_name (category);
  if (level > GST_LEVEL_WARNING || (strcmp (name, "mimienc") != 0
          && strcmp (name, "mimidec") != 0))
    return;
  g_mutex_lock (&log_lock);
  g_string_append_printf (log_text, "%s\n", gst_debug_message_get (message));
  g_mutex_unlock (&log_lock);
}

/* Pushes caps (which must be refused) and a buffer (which must not be negotiated); returns
 * what the element logged. */
static gchar *
refused_caps_log (const gchar * factory, const gchar * caps_str)
{
  log_text = g_string_new (NULL);
  gst_debug_set_threshold_for_name (factory, GST_LEVEL_WARNING);
  gst_debug_add_log_function (collect_log, NULL, NULL);

  GstHarness *h = harness_for (make_element (factory));
  GstCaps *caps = gst_caps_from_string (caps_str);
  /* Sent to the element directly: pushed, a refused sticky event still counts as stored. */
  fail_if (gst_pad_send_event (GST_PAD_PEER (h->srcpad), gst_event_new_caps (caps)));
  fail_if (gst_pad_push_event (h->srcpad, gst_event_new_caps (caps)) &&
      gst_pad_has_current_caps (GST_PAD_PEER (h->srcpad)));
  GstSegment segment;
  gst_segment_init (&segment, GST_FORMAT_TIME);
  gst_pad_push_event (h->srcpad, gst_event_new_segment (&segment));
  fail_unless_equals_int (gst_harness_push (h, gst_buffer_new_allocate (NULL, 3840, NULL)),
      GST_FLOW_NOT_NEGOTIATED);
  gst_caps_unref (caps);
  gst_harness_teardown (h);

  gst_debug_remove_log_function (collect_log);
  return g_string_free (g_steal_pointer (&log_text), FALSE);
}

GST_START_TEST (test_enc_refuses_caps)
{
  g_autofree gchar *log16k = refused_caps_log ("mimienc",
      "audio/x-raw, format=F32LE, layout=interleaved, rate=16000, channels=1");
  fail_unless (strstr (log16k, "rate is 16000, this pad takes 24000") != NULL, "log: %s",
      log16k);
  fail_unless (strstr (log16k, "audioresample") != NULL);

  g_autofree gchar *stereo = refused_caps_log ("mimienc",
      "audio/x-raw, format=F32LE, layout=interleaved, rate=24000, channels=2, "
      "channel-mask=(bitmask)0x3");
  fail_unless (strstr (stereo, "channels is 2, this pad takes 1") != NULL, "log: %s", stereo);

  g_autofree gchar *s32 = refused_caps_log ("mimienc",
      "audio/x-raw, format=S32LE, layout=interleaved, rate=24000, channels=1");
  fail_unless (strstr (s32, "format is S32LE") != NULL, "log: %s", s32);
}
GST_END_TEST;

GST_START_TEST (test_dec_refuses_caps)
{
  g_autofree gchar *packed = refused_caps_log ("mimidec",
      "audio/x-mimi, rate=24000, channels=1, framerate=25/2, codebooks=8, "
      "codebook-size=256, stream-format=packed11");
  fail_unless (strstr (packed, "stream-format is packed11") != NULL, "log: %s", packed);

  g_autofree gchar *raw = refused_caps_log ("mimidec", RAW_F32_CAPS);
  fail_unless (strstr (raw, "media type audio/x-raw") != NULL, "log: %s", raw);
}
GST_END_TEST;

/* Caps within the template that do not fit the model: an element error naming it. */
GST_START_TEST (test_dec_caps_of_other_model)
{
  const gchar *wrong[] = {
    "audio/x-mimi, rate=24000, channels=1, framerate=25/2, codebooks=8, codebook-size=2048, "
        "stream-format=u16le",
    "audio/x-mimi, rate=24000, channels=1, framerate=25/2, codebooks=20, codebook-size=256, "
        "stream-format=u16le",
    "audio/x-mimi, rate=24000, channels=1, framerate=250/1, codebooks=8, "
        "codebook-size=256, stream-format=u16le",
  };
  for (guint i = 0; i < G_N_ELEMENTS (wrong); i++) {
    GstElement *dec = make_element ("mimidec");
    GstBus *bus = attach_bus (dec);
    GstHarness *h = harness_for (dec);
    assert_caps_refused (h, wrong[i]);
    GstMessage *msg = pop_error (bus);
    GError *error = NULL;
    gst_message_parse_error (msg, &error, NULL);
    fail_unless (g_error_matches (error, GST_CORE_ERROR, GST_CORE_ERROR_NEGOTIATION));
    fail_unless (strstr (error->message, model_path) != NULL, "%s", error->message);
    g_error_free (error);
    gst_message_unref (msg);
    gst_harness_teardown (h);
    drop_bus (bus);
  }
}
GST_END_TEST;

static Suite *
mimi_elements_suite (void)
{
  Suite *s = suite_create ("mimi-elements");

  TCase *enc = tcase_create ("mimienc");
  tcase_add_test (enc, test_enc_frames_caps_timestamps);
  tcase_add_test (enc, test_enc_num_codebooks);
  tcase_add_test (enc, test_enc_odd_buffer_sizes);
  tcase_add_test (enc, test_enc_s16_input);
  tcase_add_test (enc, test_enc_eos_mid_frame);
  tcase_add_test (enc, test_enc_flush_resets_state);
  tcase_add_test (enc, test_enc_latency);
  tcase_add_test (enc, test_enc_non_finite_input);
  tcase_add_test (enc, test_enc_state_changes_under_data);
  suite_add_tcase (s, enc);

  TCase *dec = tcase_create ("mimidec");
  tcase_add_test (dec, test_dec_frames_caps_timestamps);
  tcase_add_test (dec, test_dec_multi_frame_buffers);
  tcase_add_test (dec, test_dec_clipping_meta);
  tcase_add_test (dec, test_dec_s16_output);
  tcase_add_test (dec, test_dec_output_format_follows_downstream);
  tcase_add_test (dec, test_dec_flush_resets_state);
  tcase_add_test (dec, test_dec_segment_after_refused_push_and_flush);
  tcase_add_test (dec, test_dec_segment_after_refused_push_and_restart);
  tcase_add_test (dec, test_dec_bad_buffers);
  tcase_add_test (dec, test_dec_bad_last_buffer);
  tcase_add_test (dec, test_dec_bad_buffer_max_errors);
  tcase_add_test (dec, test_dec_gap_concealment);
  tcase_add_test (dec, test_dec_gap_without_plc);
  tcase_add_test (dec, test_dec_discont_concealment);
  tcase_add_test (dec, test_dec_state_changes_under_data);
  suite_add_tcase (s, dec);

  TCase *both = tcase_create ("codec");
  tcase_add_test (both, test_roundtrip_bit_exact);
  tcase_add_test (both, test_shared_scheduler_roundtrips);
  tcase_add_test (both, test_shared_scheduler_stats);
  tcase_add_test (both, test_shared_model);
  tcase_add_test (both, test_model_change_in_ready);
  suite_add_tcase (s, both);

  TCase *errors = tcase_create ("errors");
  tcase_add_test (errors, test_missing_model_file);
  tcase_add_test (errors, test_corrupt_model_file);
  tcase_add_test (errors, test_bad_settings);
  tcase_add_test (errors, test_model_from_hub_cache);
  tcase_add_test (errors, test_enc_refuses_caps);
  tcase_add_test (errors, test_dec_refuses_caps);
  tcase_add_test (errors, test_dec_caps_of_other_model);
  suite_add_tcase (s, errors);

  return s;
}

GST_CHECK_MAIN (mimi_elements);
