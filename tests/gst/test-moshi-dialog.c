/* GstHarness tests of the moshidialog element, against the inference library.
 *
 * Models: the small dialog LM (tests/data/lm/dialog: 8 user + 8 model codebooks of 256
 * entries, text vocabulary 360, acoustic delay 1), the small Mimi (tests/data/mimi/small) and
 * the tiny tokenizer (tests/data/tokenizer/tiny.model). Input: the real speech of Mimi's golden
 * file. The reference for every sample, token and word is the library's own MoshiDialog,
 * driven one frame per step as the element documents; one test also checks the element
 * against the upstream PyTorch run stored in tests/data/lm/dialog/golden.safetensors. */
#include <gst/audio/audio.h>
#include <gst/check/gstcheck.h>
#include <gst/check/gstharness.h>
#include <glib/gstdio.h>
#include <math.h>
#include <string.h>
#include <unistd.h>

#include "gst-test-util.h"
#include <moshi/moshi-dialog.h>
#include <moshi/moshi-hub.h>
#include <moshi/moshi-safetensors.h>

#define USER_CODEBOOKS 8
#define MODEL_CODEBOOKS 8
#define DELAY 1
#define LM_DATA_KEY "gst-moshi-lm-model"

#define TOKEN_CAPS_FMT "audio/x-mimi, rate=24000, channels=1, framerate=25/2, codebooks=%d, " \
    "codebook-size=%d, stream-format=u16le"

static gchar *lm_path, *lm_config, *mimi_path, *mimi_config, *tokenizer_path;

/* ------------------------------------------------------------------ test data */

static void
init_paths (void)
{
  if (lm_path != NULL)
    return;
  lm_path = test_data_path ("lm", "dialog", "model.safetensors", NULL);
  lm_config = test_data_path ("lm", "dialog", "config.json", NULL);
  mimi_path = test_data_path ("mimi", "small", "model.safetensors", NULL);
  mimi_config = test_data_path ("mimi", "small", "config.json", NULL);
  tokenizer_path = test_data_path ("tokenizer", "tiny.model", NULL);
}

static gboolean
under_valgrind (void)
{
  return g_getenv ("MOSHI_TEST_VALGRIND") != NULL;
}

/* n samples of speech (the golden signal, looped). */
static gfloat *
make_speech (gsize n)
{
  gsize len;
  init_paths ();
  g_autofree gfloat *speech = load_speech (&len);
  gfloat *out = g_new (gfloat, n);
  for (gsize i = 0; i < n; i++)
    out[i] = speech[i % len];
  return out;
}

/* ------------------------------------------------------------------ library reference */

typedef struct
{
  gsize frames;
  gfloat *pcm;                  /* frames * FRAME, the model's speech */
  gint32 *codes;                /* frames * MODEL_CODEBOOKS */
  gint32 *tokens;               /* text token of each frame */
  gboolean *returned;
  gchar **texts;                /* per frame; NULL where no word */
} Reference;

static void
reference_free (Reference * ref)
{
  g_free (ref->pcm);
  g_free (ref->codes);
  g_free (ref->tokens);
  g_free (ref->returned);
  for (gsize i = 0; i < ref->frames; i++)
    g_free (ref->texts[i]);
  g_free (ref->texts);
  g_free (ref);
}

G_DEFINE_AUTOPTR_CLEANUP_FUNC (Reference, reference_free);

static void
greedy_params (MoshiLmSamplingParams * params)
{
  moshi_lm_sampling_params_init (params);
  params->text_temperature = 0.0f;
  params->audio_temperature = 0.0f;
}

/* A fresh conversation over n samples of user audio (zero-padded to whole frames), or over
 * frames of user codes (frame-major, in_codebooks each) when codes is not NULL. */
static Reference *
reference_run_full (const gfloat * pcm, gsize n, const gint32 * codes, gsize code_frames,
    gint in_codebooks, const MoshiLmSamplingParams * params)
{
  g_autoptr (GError) error = NULL;
  init_paths ();
  g_autoptr (MoshiLm) lm = moshi_lm_load (lm_path, lm_config, NULL, &error);
  fail_unless (lm != NULL, "%s", error ? error->message : "");
  g_autoptr (MoshiMimi) mimi = load_mimi (mimi_path, mimi_config);
  g_autoptr (MoshiTokenizer) tok = moshi_tokenizer_load (tokenizer_path, &error);
  fail_unless (tok != NULL, "%s", error ? error->message : "");
  g_autoptr (MoshiDialogModel) model = moshi_dialog_model_new (lm, mimi, tok, &error);
  fail_unless (model != NULL, "%s", error ? error->message : "");
  g_autoptr (MoshiDialog) dialog = moshi_dialog_new (model, params, 0, &error);
  fail_unless (dialog != NULL, "%s", error ? error->message : "");

  Reference *ref = g_new0 (Reference, 1);
  ref->frames = codes ? code_frames : (n + FRAME - 1) / FRAME;
  ref->pcm = g_new0 (gfloat, ref->frames * FRAME);
  ref->codes = g_new0 (gint32, ref->frames * MODEL_CODEBOOKS);
  ref->tokens = g_new0 (gint32, ref->frames);
  ref->returned = g_new0 (gboolean, ref->frames);
  ref->texts = g_new0 (gchar *, ref->frames);
  gfloat in[FRAME];
  for (gsize f = 0; f < ref->frames; f++) {
    MoshiDialogFrame frame;
    gboolean ok;
    if (codes != NULL) {
      ok = moshi_dialog_step_codes (dialog, codes + f * in_codebooks, in_codebooks, &frame,
          ref->pcm + f * FRAME, &error);
    } else {
      memset (in, 0, sizeof (in));
      memcpy (in, pcm + f * FRAME, MIN (FRAME, n - f * FRAME) * sizeof (gfloat));
      ok = moshi_dialog_step_pcm (dialog, in, &frame, ref->pcm + f * FRAME, &error);
    }
    fail_unless (ok, "%s", error ? error->message : "");
    memcpy (ref->codes + f * MODEL_CODEBOOKS, frame.audio_codes,
        MODEL_CODEBOOKS * sizeof (gint32));
    ref->tokens[f] = frame.text_token;
    ref->returned[f] = frame.returned;
    ref->texts[f] = frame.text && frame.text[0] ? g_strdup (frame.text) : NULL;
  }
  return ref;
}

static Reference *
reference_run (const gfloat * pcm, gsize n, const MoshiLmSamplingParams * params)
{
  return reference_run_full (pcm, n, NULL, 0, 0, params);
}

static Reference *
greedy_reference (const gfloat * pcm, gsize n)
{
  MoshiLmSamplingParams params;
  greedy_params (&params);
  return reference_run (pcm, n, &params);
}

/* ------------------------------------------------------------------ harness helpers */

static GstElement *
make_dialog (gboolean greedy)
{
  init_paths ();
  GstElement *element = gst_element_factory_make ("moshidialog", NULL);
  fail_unless (element != NULL, "no moshidialog: is the plugin on GST_PLUGIN_PATH_1_0?");
  g_object_set (element, "model", lm_path, "lm-config", lm_config, "mimi-model", mimi_path,
      "mimi-config", mimi_config, "tokenizer", tokenizer_path, NULL);
  if (greedy)
    g_object_set (element, "text-temperature", 0.0f, "audio-temperature", 0.0f, NULL);
  return element;
}

typedef struct
{
  GstHarness *h;                /* sink -> src */
  GstHarness *text;             /* text_src, or NULL: left unlinked */
} Harnesses;

static void
harnesses_new (Harnesses * hs, GstElement * element, gboolean link_text,
    const gchar * input_caps)
{
  hs->h = harness_for (element);
  hs->text = link_text ? gst_harness_new_with_element (hs->h->element, NULL, "text_src") :
      NULL;
  if (input_caps != NULL)
    gst_harness_set_src_caps_str (hs->h, input_caps);
}

static void
harnesses_teardown (Harnesses * hs)
{
  if (hs->text != NULL)
    gst_harness_teardown (hs->text);
  gst_harness_teardown (hs->h);
}

/* One buffer per frame, contiguous from first_pts, the last one possibly shorter; the
 * first marked DISCONT. */
static void
assert_frames (GPtrArray * bufs, gsize frames, GstClockTime first_pts,
    gsize bytes_per_sample, gsize last_samples)
{
  fail_unless_equals_int (bufs->len, frames);
  for (guint i = 0; i < bufs->len; i++) {
    GstBuffer *buf = g_ptr_array_index (bufs, i);
    gsize n = i + 1 == bufs->len ? last_samples : FRAME;
    fail_unless_equals_int (gst_buffer_get_size (buf), n * bytes_per_sample);
    fail_unless_equals_uint64 (GST_BUFFER_PTS (buf), first_pts + samples_to_time (i * FRAME));
    fail_unless_equals_uint64 (GST_BUFFER_DURATION (buf),
        samples_to_time (i * FRAME + n) - samples_to_time (i * FRAME));
    fail_unless_equals_int (GST_BUFFER_FLAG_IS_SET (buf, GST_BUFFER_FLAG_DISCONT), i == 0);
  }
}

/* Pulls h's audio output: n samples equal to the reference's. */
static void
pull_and_check_audio (GstHarness * h, const Reference * ref, gsize n)
{
  GPtrArray *bufs = pull_all (h);
  assert_f32_buffers_equal (bufs, ref->pcm, n);
  g_ptr_array_unref (bufs);
}

/* Pulls h's audio output: n samples in F32 frame buffers from first_pts (see assert_frames),
 * equal to the reference's. */
static void
pull_and_check_audio_frames (GstHarness * h, const Reference * ref, gsize n,
    GstClockTime first_pts)
{
  gsize frames = (n + FRAME - 1) / FRAME;
  GPtrArray *bufs = pull_all (h);
  assert_frames (bufs, frames, first_pts, sizeof (gfloat), n - (frames - 1) * FRAME);
  assert_f32_buffers_equal (bufs, ref->pcm, n);
  g_ptr_array_unref (bufs);
}

/* Unsets element's tokenizer, then runs n samples of speech through it in harnesses hs
 * (text_src linked): the reference's audio, and no word on text_src. */
static void
run_without_tokenizer (Harnesses * hs, GstElement * element, const gfloat * speech,
    const Reference * ref, gsize n)
{
  g_object_set (element, "tokenizer", NULL, NULL);
  harnesses_new (hs, element, TRUE, RAW_F32_CAPS);
  push_pcm (hs->h, speech, n, FRAME, 0);
  pull_and_check_audio (hs->h, ref, n);
  fail_unless_equals_int (gst_harness_buffers_received (hs->text), 0);
}

/* text_src carried one buffer per reference word, at its frame's time, and a GAP event for
 * every other frame. */
static void
assert_text_matches (GstHarness * text, const Reference * ref, GstClockTime first_pts,
    gsize frames)
{
  g_autoptr (GPtrArray) bufs = pull_all (text);
  g_autoptr (GPtrArray) gaps = pull_events (text, GST_EVENT_GAP);
  guint b = 0, g = 0;
  for (gsize f = 0; f < frames; f++) {
    GstClockTime pts = first_pts + f * FRAME_NS;
    if (ref->texts[f] != NULL) {
      fail_unless (b < bufs->len, "missing text buffer for frame %" G_GSIZE_FORMAT, f);
      GstBuffer *buf = g_ptr_array_index (bufs, b++);
      GstMapInfo map;
      fail_unless (gst_buffer_map (buf, &map, GST_MAP_READ));
      fail_unless (g_utf8_validate ((const gchar *) map.data, map.size, NULL));
      g_autofree gchar *s = g_strndup ((const gchar *) map.data, map.size);
      gst_buffer_unmap (buf, &map);
      fail_unless_equals_string (s, ref->texts[f]);
      fail_unless_equals_uint64 (GST_BUFFER_PTS (buf), pts);
      fail_unless_equals_uint64 (GST_BUFFER_DURATION (buf), FRAME_NS);
    } else {
      fail_unless (g < gaps->len, "missing gap for frame %" G_GSIZE_FORMAT, f);
      GstClockTime ts, duration;
      gst_event_parse_gap (g_ptr_array_index (gaps, g++), &ts, &duration);
      fail_unless_equals_uint64 (ts, pts);
      fail_unless_equals_uint64 (duration, FRAME_NS);
    }
  }
  fail_unless_equals_int (b, bufs->len);
  fail_unless_equals_int (g, gaps->len);
}

static guint
count_words (const Reference * ref)
{
  guint words = 0;
  for (gsize f = 0; f < ref->frames; f++)
    words += ref->texts[f] != NULL;
  return words;
}

static void
assert_tokens_match (GPtrArray * bufs, const Reference * ref, gsize first_frame, gsize frames)
{
  fail_unless_equals_int (bufs->len, frames);
  for (gsize i = 0; i < frames; i++) {
    GstBuffer *buf = g_ptr_array_index (bufs, i);
    assert_token_buffer_equal (buf, ref->codes + (first_frame + i) * MODEL_CODEBOOKS,
        MODEL_CODEBOOKS);
    fail_unless_equals_uint64 (GST_BUFFER_PTS (buf), (first_frame + i) * FRAME_NS);
  }
}

/* ================================================================== data flow */

/* N frames in, N frames out: exact timestamps, the library's greedy speech and words. */
GST_START_TEST (test_frames_timestamps_text)
{
  gsize n;
  init_paths ();
  g_autofree gfloat *speech = load_speech (&n);
  fail_unless_equals_int (n, 22 * FRAME);
  g_autoptr (Reference) ref = greedy_reference (speech, n);
  fail_unless (count_words (ref) > 0, "the reference run has no words");

  const GstClockTime start = GST_SECOND;
  Harnesses hs;
  harnesses_new (&hs, make_dialog (TRUE), TRUE, RAW_F32_CAPS);
  push_pcm (hs.h, speech, n, FRAME, start);

  pull_and_check_audio_frames (hs.h, ref, n, start);
  /* Silence until the model's first frame (its delay), then speech. */
  for (gsize i = 0; i < DELAY * FRAME; i++)
    fail_unless (((gfloat *) ref->pcm)[i] == 0.0f);

  assert_current_caps (hs.h->sinkpad, RAW_F32_CAPS);
  assert_current_caps (hs.text->sinkpad, "text/x-raw, format=utf8");

  /* The text stream is sparse and belongs to the same group. */
  GstEvent *ss_audio = gst_pad_get_sticky_event (hs.h->sinkpad, GST_EVENT_STREAM_START, 0);
  GstEvent *ss_text = gst_pad_get_sticky_event (hs.text->sinkpad, GST_EVENT_STREAM_START, 0);
  fail_unless (ss_audio != NULL && ss_text != NULL);
  GstStreamFlags flags;
  gst_event_parse_stream_flags (ss_text, &flags);
  fail_unless (flags & GST_STREAM_FLAG_SPARSE);
  const gchar *id_audio, *id_text;
  gst_event_parse_stream_start (ss_audio, &id_audio);
  gst_event_parse_stream_start (ss_text, &id_text);
  fail_unless (g_str_has_suffix (id_audio, "/audio"), "%s", id_audio);
  fail_unless (g_str_has_suffix (id_text, "/text"), "%s", id_text);
  gst_event_unref (ss_audio);
  gst_event_unref (ss_text);

  assert_text_matches (hs.text, ref, start, 22);
  harnesses_teardown (&hs);
}
GST_END_TEST;

/* Any input buffer size gives the output of 1920-sample buffers. */
GST_START_TEST (test_odd_buffer_sizes)
{
  const gsize n = 12 * FRAME;
  g_autofree gfloat *speech = make_speech (n);
  g_autoptr (Reference) ref = greedy_reference (speech, n);
  const gsize chunks[] = { 1, 441, 1919, 1921, 5000, n };

  for (guint c = 0; c < G_N_ELEMENTS (chunks); c++) {
    if (chunks[c] == 1 && under_valgrind ())
      continue;                 /* 23040 pushes: minutes under valgrind, nothing new */
    Harnesses hs;
    harnesses_new (&hs, make_dialog (TRUE), TRUE, RAW_F32_CAPS);
    push_pcm (hs.h, speech, n, chunks[c], 0);
    pull_and_check_audio_frames (hs.h, ref, n, 0);
    assert_text_matches (hs.text, ref, 0, 12);
    harnesses_teardown (&hs);
  }
}
GST_END_TEST;

/* S16LE in and out. */
GST_START_TEST (test_s16)
{
  const gsize n = 8 * FRAME;
  g_autofree gfloat *speech = make_speech (n);
  g_autofree gint16 *s16 = g_new (gint16, n);
  g_autofree gfloat *as_float = g_new (gfloat, n);
  quantize_to_s16 (speech, n, s16, as_float);
  g_autoptr (Reference) ref = greedy_reference (as_float, n);

  Harnesses hs;
  harnesses_new (&hs, make_dialog (TRUE), FALSE, NULL);
  gst_harness_set_sink_caps_str (hs.h, RAW_S16_CAPS);
  gst_harness_set_src_caps_str (hs.h, RAW_S16_CAPS);
  GstBuffer *buf = gst_buffer_new_memdup (s16, n * sizeof (gint16));
  GST_BUFFER_PTS (buf) = 0;
  fail_unless_equals_int (gst_harness_push (hs.h, buf), GST_FLOW_OK);
  GPtrArray *bufs = pull_all (hs.h);
  assert_frames (bufs, 8, 0, sizeof (gint16), FRAME);
  assert_s16_frames_equal (bufs, ref->pcm);
  g_ptr_array_unref (bufs);
  GstCaps *caps = gst_pad_get_current_caps (hs.h->sinkpad);
  fail_unless (gst_structure_has_field_typed (gst_caps_get_structure (caps, 0), "format",
          G_TYPE_STRING));
  fail_unless_equals_string (gst_structure_get_string (gst_caps_get_structure (caps, 0),
          "format"), "S16LE");
  gst_caps_unref (caps);
  harnesses_teardown (&hs);
}
GST_END_TEST;

/* With the default (sampled) settings the output is still the library's, for the seed. */
GST_START_TEST (test_sampled_matches_library)
{
  const gsize n = 16 * FRAME;
  g_autofree gfloat *speech = make_speech (n);
  MoshiLmSamplingParams params;
  moshi_lm_sampling_params_init (&params);
  params.seed = 99;
  g_autoptr (Reference) ref = reference_run (speech, n, &params);

  GstElement *element = make_dialog (FALSE);
  g_object_set (element, "seed", (guint64) 99, NULL);
  Harnesses hs;
  harnesses_new (&hs, element, TRUE, RAW_F32_CAPS);
  push_pcm (hs.h, speech, n, 480, 0);
  pull_and_check_audio (hs.h, ref, n);
  assert_text_matches (hs.text, ref, 0, 16);
  harnesses_teardown (&hs);

  /* Another seed, another conversation. */
  params.seed = 100;
  g_autoptr (Reference) other = reference_run (speech, n, &params);
  fail_if (memcmp (other->codes, ref->codes, 16 * MODEL_CODEBOOKS * sizeof (gint32)) == 0);
}
GST_END_TEST;

/* Against the upstream PyTorch run (greedy, 64 steps) stored with the dialog LM: the user's
 * audio is two cycles of [22 frames of speech | 10 frames of zeros]. */
GST_START_TEST (test_matches_upstream_golden)
{
  gsize len;
  init_paths ();
  g_autofree gfloat *speech = load_speech (&len);
  const gsize frames = 64, n = frames * FRAME;
  g_autofree gfloat *pcm = g_new0 (gfloat, n);
  for (gsize f = 0; f < frames; f++)
    if (f % 32 < 22)
      memcpy (pcm + f * FRAME, speech + (f % 32) * FRAME, FRAME * sizeof (gfloat));

  g_autoptr (GError) error = NULL;
  g_autofree gchar *golden = test_data_path ("lm", "dialog", "golden.safetensors", NULL);
  g_autoptr (MoshiSafetensors) st = moshi_safetensors_open (golden, &error);
  fail_unless (st != NULL, "%s", error ? error->message : "");
  const MoshiTensorEntry *text = moshi_safetensors_lookup (st, "gen.text_tokens");
  const MoshiTensorEntry *audio = moshi_safetensors_lookup (st, "gen.audio_codes");
  fail_unless (text != NULL && audio != NULL);
  const gint64 *text_tokens = (const gint64 *) text->data;
  const gint64 *audio_codes = (const gint64 *) audio->data;       /* [8][64] */
  g_autoptr (MoshiTokenizer) tok = moshi_tokenizer_load (tokenizer_path, &error);
  fail_unless (tok != NULL);

  /* Tokens out, and the words on text_src. */
  Harnesses hs;
  harnesses_new (&hs, make_dialog (TRUE), TRUE, NULL);
  g_autofree gchar *token_caps = g_strdup_printf (TOKEN_CAPS_FMT, MODEL_CODEBOOKS,
      CODEBOOK_SIZE);
  gst_harness_set_sink_caps_str (hs.h, token_caps);
  gst_harness_set_src_caps_str (hs.h, RAW_F32_CAPS);
  push_pcm (hs.h, pcm, n, FRAME, 0);
  GPtrArray *bufs = pull_all (hs.h);
  fail_unless_equals_int (bufs->len, frames - 1);       /* call 0 returns nothing */
  for (gsize t = 1; t < frames; t++) {
    GstMapInfo map;
    GstBuffer *buf = g_ptr_array_index (bufs, t - 1);
    fail_unless_equals_uint64 (GST_BUFFER_PTS (buf), t * FRAME_NS);
    fail_unless (gst_buffer_map (buf, &map, GST_MAP_READ));
    for (gint k = 0; k < MODEL_CODEBOOKS; k++)
      fail_unless_equals_int (GST_READ_UINT16_LE (map.data + 2 * k),
          audio_codes[k * frames + t]);
    gst_buffer_unmap (buf, &map);
  }
  g_ptr_array_unref (bufs);

  g_autoptr (GPtrArray) words = pull_all (hs.text);
  guint w = 0;
  for (gsize t = 1; t < frames; t++) {
    g_autofree gchar *display = moshi_tokenizer_display (tok, (gint) text_tokens[t], 3, 0);
    if (display == NULL)
      continue;
    fail_unless (w < words->len);
    GstBuffer *buf = g_ptr_array_index (words, w++);
    fail_unless_equals_uint64 (GST_BUFFER_PTS (buf), t * FRAME_NS);
    fail_unless (gst_buffer_memcmp (buf, 0, display, strlen (display)) == 0);
    fail_unless_equals_int (gst_buffer_get_size (buf), strlen (display));
  }
  fail_unless_equals_int (w, words->len);
  fail_unless (w > 20);
  harnesses_teardown (&hs);
}
GST_END_TEST;

/* An unlinked text_src does not stop the audio; the element message carries each word. */
GST_START_TEST (test_text_unlinked_and_messages)
{
  const gsize n = 22 * FRAME;
  g_autofree gfloat *speech = make_speech (n);
  g_autoptr (Reference) ref = greedy_reference (speech, n);

  GstElement *element = make_dialog (TRUE);
  GstBus *bus = attach_bus (element);
  Harnesses hs;
  harnesses_new (&hs, element, FALSE, RAW_F32_CAPS);
  GstSegment segment;
  gst_segment_init (&segment, GST_FORMAT_TIME);
  segment.start = 2 * GST_SECOND;
  segment.time = 10 * GST_SECOND;
  segment.base = 5 * GST_SECOND;
  fail_unless (gst_harness_push_event (hs.h, gst_event_new_segment (&segment)));
  push_pcm (hs.h, speech, n, 960, 2 * GST_SECOND);
  pull_and_check_audio_frames (hs.h, ref, n, 2 * GST_SECOND);

  guint words = 0;
  GstMessage *msg;
  while ((msg = gst_bus_pop (bus)) != NULL) {
    fail_if (GST_MESSAGE_TYPE (msg) == GST_MESSAGE_ERROR
        || GST_MESSAGE_TYPE (msg) == GST_MESSAGE_WARNING);
    const GstStructure *s = gst_message_get_structure (msg);
    if (GST_MESSAGE_TYPE (msg) == GST_MESSAGE_ELEMENT && gst_structure_has_name (s,
            "moshi-text")) {
      fail_unless (GST_MESSAGE_SRC (msg) == GST_OBJECT (hs.h->element));
      guint64 ts, running, stream, duration;
      gint token;
      fail_unless (gst_structure_get (s, "timestamp", G_TYPE_UINT64, &ts, "running-time",
              G_TYPE_UINT64, &running, "stream-time", G_TYPE_UINT64, &stream, "duration",
              G_TYPE_UINT64, &duration, "token", G_TYPE_INT, &token, NULL));
      gsize f = (ts - 2 * GST_SECOND) / FRAME_NS;
      fail_unless_equals_uint64 (ts, 2 * GST_SECOND + f * FRAME_NS);
      fail_unless_equals_uint64 (running, 5 * GST_SECOND + f * FRAME_NS);
      fail_unless_equals_uint64 (stream, 10 * GST_SECOND + f * FRAME_NS);
      fail_unless_equals_uint64 (duration, FRAME_NS);
      fail_unless (ref->texts[f] != NULL, "a word at frame %" G_GSIZE_FORMAT, f);
      fail_unless_equals_string (gst_structure_get_string (s, "text"), ref->texts[f]);
      fail_unless_equals_int (token, ref->tokens[f]);
      words++;
    }
    gst_message_unref (msg);
  }
  fail_unless_equals_int (words, count_words (ref));
  fail_unless (words > 0);
  harnesses_teardown (&hs);
  drop_bus (bus);
}
GST_END_TEST;

/* Only the text wanted: src unlinked. Both unlinked: not-linked. */
GST_START_TEST (test_audio_unlinked)
{
  const gsize n = 6 * FRAME;
  g_autofree gfloat *speech = make_speech (n);
  g_autoptr (Reference) ref = greedy_reference (speech, n);

  GstHarness *h = gst_harness_new_with_element (make_dialog (TRUE), "sink", NULL);
  gst_object_unref (h->element);
  GstHarness *text = gst_harness_new_with_element (h->element, NULL, "text_src");
  gst_harness_set_src_caps_str (h, RAW_F32_CAPS);
  push_pcm (h, speech, n, FRAME, 0);
  assert_text_matches (text, ref, 0, 6);
  gst_harness_teardown (text);
  gst_harness_teardown (h);

  h = gst_harness_new_with_element (make_dialog (TRUE), "sink", NULL);
  gst_object_unref (h->element);
  gst_harness_set_src_caps_str (h, RAW_F32_CAPS);
  /* Not-linked once both pads have said so: the text pad only does when it has a word
   * to push (a gap event has no flow return). */
  fail_unless (count_words (ref) > 0);
  GstBuffer *buf = gst_buffer_new_memdup (speech, n * sizeof (gfloat));
  GST_BUFFER_PTS (buf) = 0;
  fail_unless_equals_int (gst_harness_push (h, buf), GST_FLOW_NOT_LINKED);
  gst_harness_teardown (h);
}
GST_END_TEST;

/* The application's seek reaches upstream once, though both sinks send it. */
GST_START_TEST (test_seek_forwarded_once)
{
  Harnesses hs;
  harnesses_new (&hs, make_dialog (TRUE), TRUE, RAW_F32_CAPS);
  GstEvent *event;
  while ((event = gst_harness_try_pull_upstream_event (hs.h)) != NULL)
    gst_event_unref (event);       /* reconfigure, latency */
  GstEvent *seek = gst_event_new_seek (1.0, GST_FORMAT_TIME, GST_SEEK_FLAG_FLUSH,
      GST_SEEK_TYPE_SET, GST_SECOND, GST_SEEK_TYPE_NONE, GST_CLOCK_TIME_NONE);
  gst_harness_push_upstream_event (hs.h, gst_event_ref (seek));
  gst_harness_push_upstream_event (hs.text, seek);
  guint seeks = 0;
  while ((event = gst_harness_try_pull_upstream_event (hs.h)) != NULL) {
    seeks += GST_EVENT_TYPE (event) == GST_EVENT_SEEK;
    gst_event_unref (event);
  }
  fail_unless_equals_int (seeks, 1);
  harnesses_teardown (&hs);
}
GST_END_TEST;

/* Without a tokenizer: the same speech, no words, only gaps on text_src. */
GST_START_TEST (test_no_tokenizer)
{
  const gsize n = 10 * FRAME;
  g_autofree gfloat *speech = make_speech (n);
  g_autoptr (Reference) ref = greedy_reference (speech, n);

  Harnesses hs;
  run_without_tokenizer (&hs, make_dialog (TRUE), speech, ref, n);
  g_autoptr (GPtrArray) gaps = pull_events (hs.text, GST_EVENT_GAP);
  fail_unless_equals_int (gaps->len, 10);
  harnesses_teardown (&hs);
}
GST_END_TEST;

/* Upstream latency + (1 + delay) frames, on both source pads; on the shared scheduler
 * (the default) also the batch wait, one frame unless set. */
static void
check_latency (GstElement * element, GstClockTime batch_wait)
{
  Harnesses hs;
  harnesses_new (&hs, element, TRUE, RAW_F32_CAPS);
  gst_harness_set_upstream_latency (hs.h, 20 * GST_MSECOND);
  gst_harness_set_live (hs.h, TRUE);
  const GstClockTime expected = 20 * GST_MSECOND + (1 + DELAY) * FRAME_NS + batch_wait;
  fail_unless_equals_uint64 (gst_harness_query_latency (hs.h), expected);
  fail_unless_equals_uint64 (gst_harness_query_latency (hs.text), expected);

  GstQuery *query = gst_query_new_latency ();
  fail_unless (gst_pad_peer_query (hs.text->sinkpad, query));
  gboolean live;
  GstClockTime min, max;
  gst_query_parse_latency (query, &live, &min, &max);
  fail_unless (live);
  fail_unless_equals_uint64 (min, expected);
  gst_query_unref (query);
  harnesses_teardown (&hs);
}

GST_START_TEST (test_latency)
{
  check_latency (make_dialog (TRUE), FRAME_NS);
  GstElement *alone = make_dialog (TRUE);
  g_object_set (alone, "shared-scheduler", FALSE, NULL);
  check_latency (alone, 0);
  GstElement *short_wait = make_dialog (TRUE);
  g_object_set (short_wait, "batch-wait", 10, NULL);
  check_latency (short_wait, 10 * GST_MSECOND);
}
GST_END_TEST;

/* After a flush the conversation starts afresh. */
GST_START_TEST (test_flush_resets_conversation)
{
  const gsize n = 10 * FRAME;
  g_autofree gfloat *speech = make_speech (2 * n);
  g_autoptr (Reference) ref = greedy_reference (speech + n, n);

  Harnesses hs;
  harnesses_new (&hs, make_dialog (TRUE), TRUE, RAW_F32_CAPS);
  push_pcm (hs.h, speech, n + 700, FRAME, 0);   /* a partial frame left waiting */
  g_ptr_array_unref (pull_all (hs.h));
  g_ptr_array_unref (pull_all (hs.text));
  push_flush (hs.h);
  g_ptr_array_unref (pull_events (hs.text, GST_EVENT_GAP));
  push_pcm (hs.h, speech + n, n, FRAME, 0);
  pull_and_check_audio_frames (hs.h, ref, n, 0);
  assert_text_matches (hs.text, ref, 0, 10);
  harnesses_teardown (&hs);
}
GST_END_TEST;

/* EOS in the middle of a frame: the partial frame is run padded with silence, its output
 * cut to the input's length, then EOS on both pads. */
GST_START_TEST (test_eos_mid_frame)
{
  const gsize n = 5 * FRAME + 700;
  g_autofree gfloat *speech = make_speech (n);
  g_autoptr (Reference) ref = greedy_reference (speech, n);

  Harnesses hs;
  harnesses_new (&hs, make_dialog (TRUE), TRUE, RAW_F32_CAPS);
  push_pcm (hs.h, speech, n, 1000, 0);
  fail_unless_equals_int (gst_harness_buffers_received (hs.h), 5);
  fail_unless (gst_harness_push_event (hs.h, gst_event_new_eos ()));
  pull_and_check_audio_frames (hs.h, ref, n, 0);
  g_autoptr (GPtrArray) eos = pull_events (hs.h, GST_EVENT_EOS);
  fail_unless_equals_int (eos->len, 1);

  /* The text of the last frame lasts as long as its audio. */
  g_autoptr (GPtrArray) words = pull_all (hs.text);
  g_autoptr (GPtrArray) events = g_ptr_array_new_with_free_func ((GDestroyNotify)
      gst_event_unref);
  GstEvent *event;
  gboolean text_eos = FALSE;
  guint gaps = 0;
  while ((event = gst_harness_try_pull_event (hs.text)) != NULL) {
    text_eos |= GST_EVENT_TYPE (event) == GST_EVENT_EOS;
    if (GST_EVENT_TYPE (event) == GST_EVENT_GAP) {
      GstClockTime ts, duration;
      gst_event_parse_gap (event, &ts, &duration);
      if (ts == 5 * FRAME_NS)
        fail_unless_equals_uint64 (duration, samples_to_time (5 * FRAME + 700) - ts);
      gaps++;
    }
    gst_event_unref (event);
  }
  fail_unless (text_eos);
  fail_unless_equals_int (words->len + gaps, 6);
  harnesses_teardown (&hs);
}
GST_END_TEST;

/* eos-tail: after EOS the model goes on for whole frames of silence, the answer to a recorded
 * question; the output equals a run over the input followed by that silence. */
GST_START_TEST (test_eos_tail)
{
  const gsize n = 5 * FRAME + 700, tail_frames = 4;
  const gsize total = 6 * FRAME + tail_frames * FRAME;
  g_autofree gfloat *speech = make_speech (n);
  g_autofree gfloat *padded = g_new0 (gfloat, total);
  memcpy (padded, speech, n * sizeof (gfloat));
  g_autoptr (Reference) ref = greedy_reference (padded, total);

  GstElement *element = make_dialog (TRUE);
  /* 250 ms: rounded up to 4 frames */
  g_object_set (element, "eos-tail", 250, NULL);
  Harnesses hs;
  harnesses_new (&hs, element, TRUE, RAW_F32_CAPS);
  push_pcm (hs.h, speech, n, 1000, 0);
  fail_unless (gst_harness_push_event (hs.h, gst_event_new_eos ()));
  /* the partial frame is cut to its real samples; the tail frames are whole */
  GPtrArray *bufs = pull_all (hs.h);
  fail_unless_equals_int (bufs->len, 6 + tail_frames);
  gsize got_n;
  g_autofree gfloat *got = concat_f32 (bufs, &got_n);
  fail_unless_equals_int (got_n, n + tail_frames * FRAME);
  assert_pcm_equal (got, ref->pcm, n);
  /* after the cut, the tail continues from the next frame (the padding was silence too) */
  assert_pcm_equal (got + n, ref->pcm + 6 * FRAME, tail_frames * FRAME);
  GstBuffer *last = g_ptr_array_index (bufs, bufs->len - 1);
  fail_unless_equals_uint64 (GST_BUFFER_PTS (last), samples_to_time (n + (tail_frames - 1) * FRAME));
  g_ptr_array_unref (bufs);
  g_autoptr (GPtrArray) eos = pull_events (hs.h, GST_EVENT_EOS);
  fail_unless_equals_int (eos->len, 1);
  harnesses_teardown (&hs);
}
GST_END_TEST;

static gboolean
answer_segment_query_up_to_a_second (GstPad * pad, GstObject * parent, GstQuery * query)
{
  if (GST_QUERY_TYPE (query) != GST_QUERY_SEGMENT)
    return FALSE;
  gst_query_set_segment (query, 1.0, GST_FORMAT_TIME, 0, GST_SECOND);
  return TRUE;
}

/* With eos-tail the output runs past the input's end: the segment moshidialog sends on, and
 * the one it answers a segment query with, end that much later, or a sink (or an RTSP client
 * told the range) would drop the answer. 250 ms is 4 frames. */
GST_START_TEST (test_eos_tail_extends_segment)
{
  const GstClockTime tail = 4 * FRAME_NS;
  GstElement *element = make_dialog (TRUE);
  g_object_set (element, "eos-tail", 250, NULL);
  Harnesses hs;
  harnesses_new (&hs, element, FALSE, RAW_F32_CAPS);
  GstSegment segment;
  gst_segment_init (&segment, GST_FORMAT_TIME);
  segment.stop = GST_SECOND;
  fail_unless (gst_harness_push_event (hs.h, gst_event_new_segment (&segment)));
  g_autoptr (GPtrArray) segments = pull_events (hs.h, GST_EVENT_SEGMENT);
  const GstSegment *sent;
  gst_event_parse_segment (g_ptr_array_index (segments, segments->len - 1), &sent);
  fail_unless_equals_uint64 (sent->stop, GST_SECOND + tail);
  harnesses_teardown (&hs);

  /* The query: upstream's answer, extended. */
  element = make_dialog (TRUE);
  g_object_set (element, "eos-tail", 250, NULL);
  fail_unless (gst_element_set_state (element, GST_STATE_PAUSED) != GST_STATE_CHANGE_FAILURE);
  GstPad *upstream = gst_pad_new ("upstream", GST_PAD_SRC);
  gst_pad_set_query_function (upstream, answer_segment_query_up_to_a_second);
  GstPad *sink = gst_element_get_static_pad (element, "sink");
  fail_unless_equals_int (gst_pad_link (upstream, sink), GST_PAD_LINK_OK);
  GstPad *src = gst_element_get_static_pad (element, "src");
  GstQuery *query = gst_query_new_segment (GST_FORMAT_TIME);
  fail_unless (gst_pad_query (src, query));
  gint64 stop;
  gst_query_parse_segment (query, NULL, NULL, NULL, &stop);
  fail_unless_equals_int64 (stop, GST_SECOND + tail);
  gst_query_unref (query);
  gst_pad_unlink (upstream, sink);
  gst_object_unref (src);
  gst_object_unref (sink);
  gst_object_unref (upstream);
  gst_element_set_state (element, GST_STATE_NULL);
  gst_object_unref (element);
}
GST_END_TEST;

/* A live source that falls silent (no buffer, no GAP): once a frame is a frame past its time
 * on the pipeline clock, the element goes on with silence, frame after frame, so the model
 * keeps talking and its output stays paced. The output equals a run with as many silent
 * frames after the input. fill-stalls=false waits instead. (Real time on the system clock: the
 * test waits for the fills, however long they take, and counts them.) */
GST_START_TEST (test_live_stall_filled)
{
  const gsize n = 3 * FRAME;
  g_autofree gfloat *speech = make_speech (n);

  for (int fill = 1; fill >= 0; fill--) {
    GstElement *element = make_dialog (TRUE);
    g_object_set (element, "fill-stalls", fill, NULL);
    GstHarness *h = gst_harness_new_with_element (element, "sink", "src");
    gst_object_unref (element);
    GstClock *clock = gst_system_clock_obtain ();
    gst_element_set_clock (h->element, clock);
    /* running time 0 two seconds from now: the input below is all in before anything is due,
     * however slow the steps (valgrind) */
    gst_element_set_base_time (h->element, gst_clock_get_time (clock) + 2 * GST_SECOND);
    gst_object_unref (clock);
    gst_harness_set_live (h, TRUE);
    gst_harness_set_upstream_latency (h, 0);
    gst_harness_set_src_caps_str (h, RAW_F32_CAPS);
    push_pcm (h, speech, n, FRAME, 0);
    if (fill) {
      /* the fourth frame (never sent) is due at running time 320 ms, + 80 ms of grace */
      gint64 deadline = g_get_monotonic_time () + 30 * G_TIME_SPAN_SECOND;
      while (gst_harness_buffers_received (h) < 5 && g_get_monotonic_time () < deadline)
        g_usleep (10 * 1000);
      /* EOS: nothing is expected any more, no more filling */
      fail_unless (gst_harness_push_event (h, gst_event_new_eos ()));
      g_autoptr (GPtrArray) bufs = pull_all (h);
      guint filled = bufs->len - 3;
      fail_unless (filled >= 2, "%u frames filled", filled);
      g_autofree gfloat *whole = g_new0 (gfloat, (3 + filled) * FRAME);
      memcpy (whole, speech, n * sizeof (gfloat));
      g_autoptr (Reference) ref = greedy_reference (whole, (3 + filled) * FRAME);
      for (guint i = 0; i < bufs->len; i++)
        fail_unless_equals_uint64 (GST_BUFFER_PTS (g_ptr_array_index (bufs, i)),
            samples_to_time (i * FRAME));
      assert_f32_buffers_equal (bufs, ref->pcm, (3 + filled) * FRAME);
    } else {
      g_usleep (600 * 1000);
      fail_unless_equals_int (gst_harness_buffers_received (h), 3);
    }
    gst_harness_teardown (h);
  }
}
GST_END_TEST;

/* GAP events and timestamp holes are silence for the model: the output stays continuous
 * and equals a run with zeros in their place. */
GST_START_TEST (test_gaps_are_silence)
{
  const gsize n = 12 * FRAME;
  g_autofree gfloat *speech = make_speech (n);
  /* frames 0-3 speech, 4-6 gap, 7-9 speech, 10-11 hole in the timestamps, then speech */
  g_autofree gfloat *with_silence = g_memdup2 (speech, n * sizeof (gfloat));
  memset (with_silence + 4 * FRAME, 0, 3 * FRAME * sizeof (gfloat));
  memset (with_silence + 10 * FRAME, 0, 2 * FRAME * sizeof (gfloat));
  const gsize total = n + 3 * FRAME;
  g_autofree gfloat *full = g_new0 (gfloat, total);
  memcpy (full, with_silence, n * sizeof (gfloat));
  memcpy (full + n, speech, 3 * FRAME * sizeof (gfloat));
  g_autoptr (Reference) ref = greedy_reference (full, total);

  Harnesses hs;
  harnesses_new (&hs, make_dialog (TRUE), TRUE, RAW_F32_CAPS);
  push_pcm (hs.h, speech, 4 * FRAME, 480, 0);
  fail_unless (gst_harness_push_event (hs.h, gst_event_new_gap (4 * FRAME_NS,
              3 * FRAME_NS)));
  push_pcm (hs.h, speech + 7 * FRAME, 3 * FRAME, 480, 7 * FRAME_NS);
  /* Timestamps jump two frames ahead. */
  GstBuffer *buf = gst_buffer_new_memdup (speech, 3 * FRAME * sizeof (gfloat));
  GST_BUFFER_PTS (buf) = 12 * FRAME_NS;
  GST_BUFFER_FLAG_SET (buf, GST_BUFFER_FLAG_DISCONT);
  fail_unless_equals_int (gst_harness_push (hs.h, buf), GST_FLOW_OK);

  pull_and_check_audio_frames (hs.h, ref, total, 0);
  assert_text_matches (hs.text, ref, 0, 15);
  harnesses_teardown (&hs);
}
GST_END_TEST;

/* Overlapping timestamps are dropped; a jump beyond what is filled restarts the timing. */
GST_START_TEST (test_overlap_and_resync)
{
  const gsize n = 6 * FRAME;
  g_autofree gfloat *speech = make_speech (n);
  g_autoptr (Reference) ref = greedy_reference (speech, n);

  Harnesses hs;
  harnesses_new (&hs, make_dialog (TRUE), FALSE, RAW_F32_CAPS);
  push_pcm (hs.h, speech, 3 * FRAME, FRAME, 0);
  /* frame 2 again, then frames 3-5: the repeat is dropped */
  push_pcm (hs.h, speech + 2 * FRAME, 4 * FRAME, FRAME, 2 * FRAME_NS);
  pull_and_check_audio_frames (hs.h, ref, n, 0);

  /* An hour later: resynchronised, DISCONT, the conversation goes on. */
  GstBuffer *buf = gst_buffer_new_memdup (speech, FRAME * sizeof (gfloat));
  GST_BUFFER_PTS (buf) = 3600 * GST_SECOND;
  fail_unless_equals_int (gst_harness_push (hs.h, buf), GST_FLOW_OK);
  GstBuffer *out = gst_harness_pull (hs.h);
  fail_unless_equals_uint64 (GST_BUFFER_PTS (out), 3600 * GST_SECOND);
  fail_unless (GST_BUFFER_FLAG_IS_SET (out, GST_BUFFER_FLAG_DISCONT));
  gst_buffer_unref (out);
  harnesses_teardown (&hs);
}
GST_END_TEST;

/* NaN input is silence, with one warning. */
GST_START_TEST (test_non_finite_input)
{
  const gsize n = 6 * FRAME;
  g_autofree gfloat *speech = make_speech (n);
  g_autofree gfloat *zeroed = g_memdup2 (speech, n * sizeof (gfloat));
  for (gsize i = 1000; i < 3000; i += 7) {
    speech[i] = i % 2 ? NAN : INFINITY;
    zeroed[i] = 0.0f;
  }
  g_autoptr (Reference) ref = greedy_reference (zeroed, n);

  GstElement *element = make_dialog (TRUE);
  GstBus *bus = attach_bus (element);
  Harnesses hs;
  harnesses_new (&hs, element, FALSE, RAW_F32_CAPS);
  push_pcm (hs.h, speech, n, 500, 0);
  pull_and_check_audio (hs.h, ref, n);
  fail_unless_equals_int (count_bus_warnings (bus), 1);
  harnesses_teardown (&hs);
  drop_bus (bus);
}
GST_END_TEST;

/* ================================================================== tokens */

/* Mimi tokens in (as mimienc makes them) give what the same audio gives. */
GST_START_TEST (test_tokens_in)
{
  const gsize frames = 12, n = frames * FRAME;
  g_autofree gfloat *speech = make_speech (n);
  g_autoptr (Reference) ref = greedy_reference (speech, n);

  const gint widths[] = { USER_CODEBOOKS, 16 };
  for (guint w = 0; w < G_N_ELEMENTS (widths); w++) {
    gsize code_frames;
    g_autofree gint32 *codes = reference_mimi_encode (mimi_path, mimi_config, speech, n,
        widths[w], &code_frames);
    fail_unless_equals_int (code_frames, frames);
    Harnesses hs;
    harnesses_new (&hs, make_dialog (TRUE), TRUE, NULL);
    g_autofree gchar *caps = g_strdup_printf (TOKEN_CAPS_FMT, widths[w], CODEBOOK_SIZE);
    gst_harness_set_src_caps_str (hs.h, caps);
    /* one frame, then three per buffer */
    fail_unless_equals_int (gst_harness_push (hs.h, token_buffer (codes, 1, widths[w], 0)),
        GST_FLOW_OK);
    for (gsize f = 1; f < frames; f += 3)
      fail_unless_equals_int (gst_harness_push (hs.h, token_buffer (codes, MIN (3,
                      frames - f), widths[w], f)), GST_FLOW_OK);
    pull_and_check_audio_frames (hs.h, ref, n, 0);
    assert_text_matches (hs.text, ref, 0, frames);
    harnesses_teardown (&hs);
  }
}
GST_END_TEST;

/* mimienc ! moshidialog is moshidialog on the audio. */
GST_START_TEST (test_mimienc_in_front)
{
  const gsize n = 10 * FRAME;
  g_autofree gfloat *speech = make_speech (n);
  g_autoptr (Reference) ref = greedy_reference (speech, n);
  init_paths ();
  g_autofree gchar *line = g_strdup_printf ("mimienc model=\"%s\" config=\"%s\" ! "
      "moshidialog model=\"%s\" lm-config=\"%s\" mimi-model=\"%s\" mimi-config=\"%s\" "
      "tokenizer=\"%s\" text-temperature=0 audio-temperature=0", mimi_path, mimi_config,
      lm_path, lm_config, mimi_path, mimi_config, tokenizer_path);
  GstHarness *h = gst_harness_new_parse (line);
  gst_harness_set_src_caps_str (h, RAW_F32_CAPS);
  push_pcm (h, speech, n, 480, 0);
  pull_and_check_audio_frames (h, ref, n, 0);
  /* the encoder's frame, then the model's delay, the frame fill and the batch wait */
  fail_unless_equals_uint64 (gst_harness_query_latency (h), (3 + DELAY) * FRAME_NS);
  gst_harness_teardown (h);
}
GST_END_TEST;

/* Tokens out when downstream asks for them; GAP while nothing is generated. */
GST_START_TEST (test_tokens_out)
{
  const gsize frames = 12, n = frames * FRAME;
  g_autofree gfloat *speech = make_speech (n);
  g_autoptr (Reference) ref = greedy_reference (speech, n);

  Harnesses hs;
  harnesses_new (&hs, make_dialog (TRUE), FALSE, NULL);
  gst_harness_set_sink_caps_str (hs.h, "audio/x-mimi");
  gst_harness_set_src_caps_str (hs.h, RAW_F32_CAPS);
  push_pcm (hs.h, speech, n - 700, FRAME, 0);
  fail_unless (gst_harness_push_event (hs.h, gst_event_new_eos ()));

  g_autofree gchar *want = g_strdup_printf (TOKEN_CAPS_FMT, MODEL_CODEBOOKS, CODEBOOK_SIZE);
  assert_current_caps (hs.h->sinkpad, want);

  GPtrArray *bufs = pull_all (hs.h);
  assert_tokens_match (bufs, ref, DELAY, frames - DELAY);
  /* the last frame: 700 samples short, as mimienc marks it */
  GstBuffer *last = g_ptr_array_index (bufs, bufs->len - 1);
  GstAudioClippingMeta *clip = gst_buffer_get_audio_clipping_meta (last);
  fail_unless (clip != NULL);
  fail_unless_equals_uint64 (clip->end, 700);
  fail_unless_equals_uint64 (GST_BUFFER_DURATION (last),
      samples_to_time (n - 700) - GST_BUFFER_PTS (last));
  g_ptr_array_unref (bufs);
  g_autoptr (GPtrArray) gaps = pull_events (hs.h, GST_EVENT_GAP);
  fail_unless_equals_int (gaps->len, DELAY);
  GstClockTime ts, duration;
  gst_event_parse_gap (g_ptr_array_index (gaps, 0), &ts, &duration);
  fail_unless_equals_uint64 (ts, 0);
  fail_unless_equals_uint64 (duration, FRAME_NS);
  harnesses_teardown (&hs);
}
GST_END_TEST;

/* moshidialog ! mimidec plays the model's speech: mimidec only takes tokens, so that is
 * what moshidialog negotiates. */
GST_START_TEST (test_tokens_out_to_mimidec)
{
  const gsize frames = 8, n = frames * FRAME;
  g_autofree gfloat *speech = make_speech (n);
  g_autoptr (Reference) ref = greedy_reference (speech, n);
  init_paths ();
  g_autofree gchar *line = g_strdup_printf ("moshidialog model=\"%s\" lm-config=\"%s\" "
      "mimi-model=\"%s\" mimi-config=\"%s\" text-temperature=0 audio-temperature=0 ! "
      "mimidec model=\"%s\" config=\"%s\"", lm_path, lm_config, mimi_path,
      mimi_config, mimi_path, mimi_config);
  GstHarness *h = gst_harness_new_parse (line);
  gst_harness_set_src_caps_str (h, RAW_F32_CAPS);
  push_pcm (h, speech, n, FRAME, 0);
  GPtrArray *bufs = pull_all (h);
  /* mimidec's own decoder, started at the first generated frame, decodes the same codes
   * as the dialog's decoder did. */
  assert_f32_buffers_equal (bufs, ref->pcm + DELAY * FRAME, (frames - DELAY) * FRAME);
  g_ptr_array_unref (bufs);
  gst_harness_teardown (h);
}
GST_END_TEST;

/* ================================================================== settings, states */

/* Sampling settings changed while playing apply to a conversation that has not started
 * and, at the latest, from the next flush. */
GST_START_TEST (test_sampling_change_while_playing)
{
  const gsize n = 8 * FRAME;
  g_autofree gfloat *speech = make_speech (n);
  MoshiLmSamplingParams params;
  moshi_lm_sampling_params_init (&params);
  params.text_temperature = 0.0f;
  params.audio_topk = 10;
  params.seed = 7;
  g_autoptr (Reference) ref = reference_run (speech, n, &params);

  Harnesses hs;
  harnesses_new (&hs, make_dialog (FALSE), TRUE, RAW_F32_CAPS);
  fail_unless_equals_int (GST_STATE (hs.h->element), GST_STATE_PLAYING);
  g_object_set (hs.h->element, "text-temperature", 0.0f, "audio-topk", 10, "seed",
      (guint64) 7, NULL);
  push_pcm (hs.h, speech, n, FRAME, 0);
  pull_and_check_audio (hs.h, ref, n);
  assert_text_matches (hs.text, ref, 0, 8);

  /* greedy from now on */
  g_object_set (hs.h->element, "audio-temperature", 0.0f, NULL);
  push_pcm (hs.h, speech, n, FRAME, n);
  g_ptr_array_unref (pull_all (hs.h));
  push_flush (hs.h);
  params.audio_temperature = 0.0f;
  g_autoptr (Reference) greedy = reference_run (speech, n, &params);
  push_pcm (hs.h, speech, n, FRAME, 0);
  pull_and_check_audio (hs.h, greedy, n);
  harnesses_teardown (&hs);
}
GST_END_TEST;

/* Every NULL -> PLAYING starts a fresh conversation. */
GST_START_TEST (test_restart)
{
  const gsize n = 6 * FRAME;
  g_autofree gfloat *speech = make_speech (n);
  g_autoptr (Reference) ref = greedy_reference (speech, n);

  Harnesses hs;
  harnesses_new (&hs, make_dialog (TRUE), TRUE, RAW_F32_CAPS);
  for (gint round = 0; round < 3; round++) {
    if (round > 0) {
      fail_unless_equals_int (gst_element_set_state (hs.h->element,
              round == 1 ? GST_STATE_NULL : GST_STATE_READY), GST_STATE_CHANGE_SUCCESS);
      gst_harness_play (hs.h);
      gst_harness_set_src_caps_str (hs.h, RAW_F32_CAPS);
    }
    push_pcm (hs.h, speech, n, 700, 0);
    pull_and_check_audio_frames (hs.h, ref, n, 0);
    g_ptr_array_unref (pull_all (hs.text));
    g_ptr_array_unref (pull_events (hs.text, GST_EVENT_GAP));
  }
  harnesses_teardown (&hs);
}
GST_END_TEST;

/* What the bus got from a moshidialog: warnings, scheduler messages, and words, those whose
 * running time is their timestamp (in a TIME segment from 0) apart. */
typedef struct
{
  guint warnings;
  guint scheduler_messages;
  guint words;
  guint words_at_their_time;
} BusMessages;

static BusMessages
pop_bus_messages (GstBus * bus)
{
  BusMessages m = { 0 };
  GstMessage *msg;
  while ((msg = gst_bus_pop (bus)) != NULL) {
    fail_if (GST_MESSAGE_TYPE (msg) == GST_MESSAGE_ERROR);
    m.warnings += GST_MESSAGE_TYPE (msg) == GST_MESSAGE_WARNING;
    const GstStructure *s = gst_message_get_structure (msg);
    if (GST_MESSAGE_TYPE (msg) == GST_MESSAGE_ELEMENT
        && gst_structure_has_name (s, "moshi-scheduler"))
      m.scheduler_messages++;
    if (GST_MESSAGE_TYPE (msg) == GST_MESSAGE_ELEMENT
        && gst_structure_has_name (s, "moshi-text")) {
      guint64 ts, running;
      fail_unless (gst_structure_get (s, "timestamp", G_TYPE_UINT64, &ts, "running-time",
              G_TYPE_UINT64, &running, NULL));
      m.words++;
      m.words_at_their_time += running == ts;
    }
    gst_message_unref (msg);
  }
  return m;
}

/* A restart (PAUSED -> READY -> PAUSED) and a flush leave nothing of the stream before them.
 * The first stream runs from 10 s in a segment starting there, leaves a partial frame waiting,
 * has a non-finite sample and outputs 0.88 s, short of the second of output that makes a
 * scheduler message. After it the stream from 0 (in a segment from 0) is the fresh
 * conversation's, stamped from 0 with the first buffer DISCONT, its words timed in the new
 * segment, and with no scheduler message (0.96 s more). A restart is a new stream, warned
 * about non-finite samples again; a flush is not. */
GST_START_TEST (test_restart_and_flush_leave_no_state)
{
  const gsize n = 12 * FRAME, first_n = 11 * FRAME + 700;
  g_autofree gfloat *speech = make_speech (n);
  g_autofree gfloat *zeroed = g_memdup2 (speech, n * sizeof (gfloat));
  speech[100] = NAN;
  zeroed[100] = 0.0f;
  g_autoptr (Reference) ref = greedy_reference (zeroed, n);
  fail_unless (count_words (ref) > 0);

  for (gint restart = 0; restart < 2; restart++) {
    GstElement *element = make_dialog (TRUE);
    GstBus *bus = attach_bus (element);
    Harnesses hs;
    harnesses_new (&hs, element, TRUE, RAW_F32_CAPS);
    GstSegment segment;
    gst_segment_init (&segment, GST_FORMAT_TIME);
    segment.start = 10 * GST_SECOND;
    fail_unless (gst_harness_push_event (hs.h, gst_event_new_segment (&segment)));
    push_pcm (hs.h, speech, first_n, FRAME, 10 * GST_SECOND);
    g_ptr_array_unref (pull_all (hs.h));
    g_ptr_array_unref (pull_all (hs.text));
    BusMessages before = pop_bus_messages (bus);
    fail_unless_equals_int (before.warnings, 1);
    fail_unless_equals_int (before.scheduler_messages, 0);
    fail_unless (before.words > 0 && before.words_at_their_time == 0);

    if (restart) {
      fail_unless_equals_int (gst_element_set_state (hs.h->element, GST_STATE_READY),
          GST_STATE_CHANGE_SUCCESS);
      GstStructure *stats = NULL;
      g_object_get (hs.h->element, "scheduler-stats", &stats, NULL);
      fail_unless (stats == NULL, "scheduler-stats without a conversation");
      gst_harness_play (hs.h);
      gst_harness_set_src_caps_str (hs.h, RAW_F32_CAPS);
    } else {
      push_flush (hs.h);
    }
    g_ptr_array_unref (pull_events (hs.text, GST_EVENT_GAP));

    push_pcm (hs.h, speech, n, FRAME, 0);
    pull_and_check_audio_frames (hs.h, ref, n, 0);
    assert_text_matches (hs.text, ref, 0, 12);
    BusMessages after = pop_bus_messages (bus);
    fail_unless_equals_int (after.warnings, restart ? 1 : 0);
    fail_unless_equals_int (after.scheduler_messages, 0);
    fail_unless_equals_int (after.words, count_words (ref));
    fail_unless_equals_int (after.words_at_their_time, after.words);
    harnesses_teardown (&hs);
    drop_bus (bus);
  }
}
GST_END_TEST;

/* State changes from another thread while buffers keep coming: no crash, no leak, and the
 * element works normally afterwards. */
GST_START_TEST (test_state_changes_under_data)
{
  const gsize n = 5 * FRAME;
  g_autofree gfloat *speech = make_speech (n);
  g_autoptr (Reference) ref = greedy_reference (speech, n);

  Harnesses hs;
  harnesses_new (&hs, make_dialog (TRUE), TRUE, RAW_F32_CAPS);
  stress_state_changes (hs.h, RAW_F32_CAPS,
      gst_buffer_new_memdup (speech, 1000 * sizeof (gfloat)));
  g_ptr_array_unref (pull_all (hs.text));

  gst_harness_play (hs.h);
  push_flush (hs.h);
  gst_harness_set_src_caps_str (hs.h, RAW_F32_CAPS);
  g_ptr_array_unref (pull_events (hs.text, GST_EVENT_GAP));
  push_pcm (hs.h, speech, n, FRAME, 0);
  pull_and_check_audio (hs.h, ref, n);
  harnesses_teardown (&hs);
}
GST_END_TEST;

/* mimienc and moshidialog naming the same Mimi share one copy; two moshidialogs naming
 * the same LM share it too (each has its own conversation). */
GST_START_TEST (test_shared_models)
{
  GstElement *dialog = make_dialog (TRUE);
  GstElement *dialog2 = make_dialog (FALSE);
  fail_unless_equals_int (gst_element_set_state (dialog2, GST_STATE_READY),
      GST_STATE_CHANGE_SUCCESS);
  GstElement *enc = gst_element_factory_make ("mimienc", NULL);
  g_object_set (enc, "model", mimi_path, "config", mimi_config, NULL);
  fail_unless_equals_int (gst_element_set_state (dialog, GST_STATE_READY),
      GST_STATE_CHANGE_SUCCESS);
  fail_unless_equals_int (gst_element_set_state (enc, GST_STATE_READY),
      GST_STATE_CHANGE_SUCCESS);
  gpointer a = g_object_get_data (G_OBJECT (dialog), MODEL_DATA_KEY);
  fail_unless (a != NULL && a == g_object_get_data (G_OBJECT (enc), MODEL_DATA_KEY));
  fail_unless (a == g_object_get_data (G_OBJECT (dialog2), MODEL_DATA_KEY));
  gpointer lm = g_object_get_data (G_OBJECT (dialog), LM_DATA_KEY);
  fail_unless (lm != NULL && lm == g_object_get_data (G_OBJECT (dialog2), LM_DATA_KEY));
  gst_element_set_state (dialog, GST_STATE_NULL);
  fail_unless (g_object_get_data (G_OBJECT (dialog), MODEL_DATA_KEY) == NULL);
  fail_unless (g_object_get_data (G_OBJECT (dialog), LM_DATA_KEY) == NULL);
  fail_unless (g_object_get_data (G_OBJECT (dialog2), LM_DATA_KEY) == lm);

  /* The two conversations run side by side on the shared models. */
  const gsize n = 6 * FRAME;
  g_autofree gfloat *speech = make_speech (n);
  g_autoptr (Reference) ref = greedy_reference (speech, n);
  Harnesses first, second;
  harnesses_new (&first, make_dialog (TRUE), FALSE, RAW_F32_CAPS);
  harnesses_new (&second, make_dialog (TRUE), FALSE, RAW_F32_CAPS);
  for (gsize f = 0; f < 6; f++) {
    push_pcm (first.h, speech + f * FRAME, FRAME, FRAME, f * FRAME_NS);
    push_pcm (second.h, speech + f * FRAME, FRAME, FRAME, f * FRAME_NS);
  }
  pull_and_check_audio (first.h, ref, n);
  pull_and_check_audio (second.h, ref, n);
  harnesses_teardown (&first);
  harnesses_teardown (&second);

  gst_element_set_state (dialog2, GST_STATE_NULL);
  gst_element_set_state (enc, GST_STATE_NULL);
  gst_object_unref (dialog);
  gst_object_unref (dialog2);
  gst_object_unref (enc);
}
GST_END_TEST;

/* A directory or hub repo holding the three files, under Kyutai's names: mimi-model and
 * tokenizer found there, model changes in READY picked up at the next start. */
GST_START_TEST (test_model_directory)
{
  init_paths ();
  g_autofree gchar *dir = g_dir_make_tmp ("moshidialog-XXXXXX", NULL);
  g_autofree gchar *lm_link = g_build_filename (dir, "model.safetensors", NULL);
  g_autofree gchar *mimi_link = g_build_filename (dir, MOSHI_HUB_MIMI_FILENAME, NULL);
  g_autofree gchar *tok_link = g_build_filename (dir, "tokenizer_spm_32k_3.model", NULL);
  fail_unless (symlink (lm_path, lm_link) == 0);
  fail_unless (symlink (mimi_path, mimi_link) == 0);
  fail_unless (symlink (tokenizer_path, tok_link) == 0);

  const gsize n = 4 * FRAME;
  g_autofree gfloat *speech = make_speech (n);
  g_autoptr (Reference) ref = greedy_reference (speech, n);

  GstElement *element = gst_element_factory_make ("moshidialog", NULL);
  g_object_set (element, "model", "/nonexistent/lm", "lm-config", lm_config,
      "mimi-config", mimi_config, "tokenizer", dir, "text-temperature", 0.0f,
      "audio-temperature", 0.0f, NULL);
  GstBus *bus = attach_bus (element);
  fail_unless_equals_int (gst_element_set_state (element, GST_STATE_READY),
      GST_STATE_CHANGE_FAILURE);
  g_object_set (element, "model", dir, NULL);
  fail_unless_equals_int (gst_element_set_state (element, GST_STATE_READY),
      GST_STATE_CHANGE_SUCCESS);
  gpointer mimi = g_object_get_data (G_OBJECT (element), MODEL_DATA_KEY);
  fail_unless (mimi != NULL);
  /* Without a tokenizer now: the change in READY is picked up when streaming starts. */
  Harnesses hs;
  run_without_tokenizer (&hs, element, speech, ref, n);
  harnesses_teardown (&hs);
  drop_bus (bus);

  g_unlink (lm_link);
  g_unlink (mimi_link);
  g_unlink (tok_link);
  g_rmdir (dir);
}
GST_END_TEST;

/* ================================================================== errors */

static void
expect_error_with (const gchar * property, const gchar * value, GQuark domain, gint code,
    const gchar * needle, const gchar * needle2)
{
  GstElement *element = make_dialog (TRUE);
  g_object_set (element, property, value, NULL);
  assert_error (expect_open_error (element), domain, code, needle, needle2);
  gst_object_unref (element);
}

GST_START_TEST (test_missing_files)
{
  init_paths ();
  expect_error_with ("model", "/nonexistent/lm.safetensors", GST_RESOURCE_ERROR,
      GST_RESOURCE_ERROR_NOT_FOUND, "/nonexistent/lm.safetensors", "Moshi LM");
  expect_error_with ("lm-config", "/nonexistent/config.json", GST_RESOURCE_ERROR,
      GST_RESOURCE_ERROR_NOT_FOUND, "/nonexistent/config.json", NULL);
  expect_error_with ("mimi-model", "/nonexistent/mimi.safetensors", GST_RESOURCE_ERROR,
      GST_RESOURCE_ERROR_NOT_FOUND, "/nonexistent/mimi.safetensors", "Mimi");
  expect_error_with ("tokenizer", "/nonexistent/tok.model", GST_RESOURCE_ERROR,
      GST_RESOURCE_ERROR_NOT_FOUND, "/nonexistent/tok.model", "tokenizer");
  expect_error_with ("model", "kyutai/not-downloaded", GST_RESOURCE_ERROR,
      GST_RESOURCE_ERROR_NOT_FOUND, "kyutai/not-downloaded", NULL);

  /* No model at all. */
  GstElement *element = gst_element_factory_make ("moshidialog", NULL);
  assert_error (expect_open_error (element), GST_RESOURCE_ERROR,
      GST_RESOURCE_ERROR_NOT_FOUND, "No Moshi LM", NULL);
  gst_object_unref (element);

  /* The LM as a file and no mimi-model: nothing to take Mimi from. */
  element = make_dialog (TRUE);
  g_object_set (element, "mimi-model", NULL, NULL);
  assert_error (expect_open_error (element), GST_RESOURCE_ERROR,
      GST_RESOURCE_ERROR_NOT_FOUND, "No Mimi model", NULL);
  gst_object_unref (element);
}
GST_END_TEST;

GST_START_TEST (test_corrupt_files)
{
  init_paths ();
  g_autofree gchar *dir = g_dir_make_tmp ("moshidialog-bad-XXXXXX", NULL);
  g_autofree gchar *garbage = NULL, *truncated = NULL;
  write_broken_safetensors (dir, lm_path, &garbage, &truncated);
  g_autofree gchar *bad_tok = g_build_filename (dir, "bad.model", NULL);
  fail_unless (g_file_set_contents (bad_tok, "\x0a\xff\xff\xff\xff\x0f garbage", 16, NULL));

  expect_error_with ("model", garbage, GST_RESOURCE_ERROR, GST_RESOURCE_ERROR_OPEN_READ,
      garbage, "Moshi LM");
  expect_error_with ("model", truncated, GST_RESOURCE_ERROR, GST_RESOURCE_ERROR_OPEN_READ,
      truncated, NULL);
  expect_error_with ("mimi-model", garbage, GST_RESOURCE_ERROR,
      GST_RESOURCE_ERROR_OPEN_READ, garbage, "Mimi");
  expect_error_with ("tokenizer", bad_tok, GST_RESOURCE_ERROR, GST_RESOURCE_ERROR_OPEN_READ,
      bad_tok, "tokenizer");
  /* A config that is not the checkpoint's. */
  expect_error_with ("lm-config", mimi_config, GST_RESOURCE_ERROR,
      GST_RESOURCE_ERROR_OPEN_READ, lm_path, NULL);

  g_unlink (garbage);
  g_unlink (truncated);
  g_unlink (bad_tok);
  g_rmdir (dir);
}
GST_END_TEST;

/* Sets element to READY expecting failure: the error of an LM and a Mimi that do not fit
 * together. Returns its message. */
static gchar *
mismatch_error_message (GstElement * element)
{
  GstMessage *msg = expect_open_error (element);
  GError *error = NULL;
  gst_message_parse_error (msg, &error, NULL);
  fail_unless (g_error_matches (error, GST_RESOURCE_ERROR, GST_RESOURCE_ERROR_SETTINGS),
      "%s", error->message);
  fail_unless (strstr (error->message, "do not fit") != NULL, "%s", error->message);
  gchar *message = g_strdup (error->message);
  g_error_free (error);
  gst_message_unref (msg);
  return message;
}

/* An LM and a Mimi that do not fit together: a clear error naming both. */
GST_START_TEST (test_mismatched_models)
{
  init_paths ();
  g_autofree gchar *small7b = test_data_path ("lm", "small7b", "model.safetensors", NULL);
  g_autofree gchar *small7b_config = test_data_path ("lm", "small7b", "config.json", NULL);

  /* small7b: 32-entry audio vocabulary, Mimi small: 256-entry codebooks. */
  GstElement *element = make_dialog (TRUE);
  g_object_set (element, "model", small7b, "lm-config", small7b_config, NULL);
  g_autofree gchar *vocabulary_error = mismatch_error_message (element);
  fail_unless (strstr (vocabulary_error, "32") != NULL, "%s", vocabulary_error);
  fail_unless (strstr (vocabulary_error, "256") != NULL, "%s", vocabulary_error);
  fail_unless (strstr (vocabulary_error, small7b) != NULL, "%s", vocabulary_error);
  fail_unless (strstr (vocabulary_error, mimi_path) != NULL, "%s", vocabulary_error);
  gst_object_unref (element);

  /* A Mimi with 256-entry codebooks but fewer codebooks than the LM uses: the small Mimi
   * cut to 4 of its 16 quantisers (the loader takes the first 4). */
  g_autofree gchar *dir = g_dir_make_tmp ("moshidialog-mimi-XXXXXX", NULL);
  g_autofree gchar *cut_config = g_build_filename (dir, "config.json", NULL);
  g_autofree gchar *text = NULL;
  fail_unless (g_file_get_contents (mimi_config, &text, NULL, NULL));
  GString *cut = g_string_new (text);
  fail_unless (g_string_replace (cut, "\"n_q\": 16", "\"n_q\": 4", 1) == 1);
  fail_unless (g_file_set_contents (cut_config, cut->str, -1, NULL));
  g_string_free (cut, TRUE);
  element = make_dialog (TRUE);
  g_object_set (element, "mimi-config", cut_config, NULL);
  g_autofree gchar *codebooks_error = mismatch_error_message (element);
  fail_unless (strstr (codebooks_error, "8 user and 8 model codebooks") != NULL, "%s",
      codebooks_error);
  fail_unless (strstr (codebooks_error, "has 4") != NULL, "%s", codebooks_error);
  GST_INFO ("cut Mimi: %s", codebooks_error);
  gst_object_unref (element);
  g_unlink (cut_config);
  g_rmdir (dir);
}
GST_END_TEST;

/* Token caps of another Mimi, or with too few codebooks: an element error, no data. */
GST_START_TEST (test_token_caps_errors)
{
  struct
  {
    gint codebooks, size;
    const gchar *needle;
  } cases[] = {
    {8, 2048, "another Mimi model"},
    {4, 256, "reads 8"},
  };
  for (guint i = 0; i < G_N_ELEMENTS (cases); i++) {
    GstElement *element = make_dialog (TRUE);
    GstBus *bus = attach_bus (element);
    Harnesses hs;
    harnesses_new (&hs, element, FALSE, NULL);
    g_autofree gchar *str = g_strdup_printf (TOKEN_CAPS_FMT, cases[i].codebooks,
        cases[i].size);
    assert_caps_refused (hs.h, str);
    assert_error (pop_error (bus), GST_CORE_ERROR, GST_CORE_ERROR_NEGOTIATION, cases[i].needle, NULL);
    harnesses_teardown (&hs);
    drop_bus (bus);
  }

  /* Raw audio at another rate is refused by the template. */
  Harnesses hs;
  harnesses_new (&hs, make_dialog (TRUE), FALSE, NULL);
  assert_caps_refused (hs.h, "audio/x-raw, format=F32LE, layout=interleaved, "
      "rate=16000, channels=1");
  harnesses_teardown (&hs);
}
GST_END_TEST;

/* Downstream that takes neither raw audio nor these tokens. */
GST_START_TEST (test_downstream_refuses)
{
  GstElement *element = make_dialog (TRUE);
  GstBus *bus = attach_bus (element);
  Harnesses hs;
  harnesses_new (&hs, element, FALSE, NULL);
  gst_harness_set_sink_caps_str (hs.h, "audio/x-mimi, codebook-size=2048");
  assert_caps_refused (hs.h, RAW_F32_CAPS);
  assert_error (pop_error (bus), GST_CORE_ERROR, GST_CORE_ERROR_NEGOTIATION, "neither", NULL);
  harnesses_teardown (&hs);
  drop_bus (bus);
}
GST_END_TEST;

/* ------------------------------------------------------------------ the shared scheduler */

typedef struct
{
  GstElement *dialog;
  GstHarness *h;
  MoshiLmSamplingParams params;
  gsize offset;                 /* where in the speech this conversation's input starts */
  const gfloat *speech;
  gsize n;
} Conversation;

/* n conversations, one moshidialog each in a harness of its own, each sampled with a seed of
 * its own and its own stretch of speech. */
static void
conversations_new (Conversation * conv, gint n, gboolean shared, const gfloat * speech,
    gsize samples)
{
  for (gint i = 0; i < n; i++) {
    Conversation *c = &conv[i];
    moshi_lm_sampling_params_init (&c->params);
    c->params.seed = 500 + 31 * i;
    c->offset = (gsize) (i % 7) * FRAME;
    c->speech = speech;
    c->n = samples;
    c->dialog = make_dialog (FALSE);
    g_object_set (c->dialog, "seed", c->params.seed, "shared-scheduler", shared, NULL);
    c->h = harness_for (gst_object_ref (c->dialog));
    gst_harness_set_src_caps_str (c->h, RAW_F32_CAPS);
  }
}

static gpointer
feed_conversation (gpointer data)
{
  Conversation *c = data;
  push_pcm (c->h, c->speech + c->offset, c->n, FRAME, 0);
  return NULL;
}

/* The audio of a conversation on the shared scheduler against the same conversation run
 * alone: its Mimi frames go in batched calls whose products of more than 8 rows sum in
 * another order (lib/models/moshi-mimi.h), so within SHARED_PCM_TOLERANCE relative L2; a
 * different token would change whole frames, far beyond it. */
#define SHARED_PCM_TOLERANCE 1e-5

static void
pull_and_check_shared_audio (GstHarness * h, const Reference * ref, gsize n)
{
  GPtrArray *bufs = pull_all (h);
  double rel = assert_f32_buffers_close (bufs, ref->pcm, n, SHARED_PCM_TOLERANCE);
  GST_INFO ("audio %.3g relative L2 from the conversation alone", rel);
  g_ptr_array_unref (bufs);
}

/* Feeds every conversation from a thread of its own (as the streaming threads of a media
 * server would), then checks that each one's audio equals its conversation run alone (bit for
 * bit, or within SHARED_PCM_TOLERANCE on the shared scheduler). */
static void
run_conversations (Conversation * conv, gint n_conv, gboolean shared)
{
  GThread *threads[16];
  for (gint i = 0; i < n_conv; i++)
    threads[i] = g_thread_new ("feed", feed_conversation, &conv[i]);
  for (gint i = 0; i < n_conv; i++)
    g_thread_join (threads[i]);
  for (gint i = 0; i < n_conv; i++) {
    g_autoptr (Reference) ref = reference_run (conv[i].speech + conv[i].offset, conv[i].n,
        &conv[i].params);
    if (shared)
      pull_and_check_shared_audio (conv[i].h, ref, conv[i].n);
    else
      pull_and_check_audio (conv[i].h, ref, conv[i].n);
  }
}

static void
conversations_free (Conversation * conv, gint n)
{
  for (gint i = 0; i < n; i++) {
    gst_harness_teardown (conv[i].h);
    gst_object_unref (conv[i].dialog);
  }
}

static gboolean
under_cuda_emulation (void)
{
  return g_getenv ("MOSHI_CUDA_EMULATE") != NULL;
}

/* Many moshidialog elements of one process share the scheduler's ticks, and each of their
 * conversations equals the same conversation run alone. */
GST_START_TEST (test_conversations_share_ticks)
{
  const gint n_conv = under_valgrind () || under_cuda_emulation () ? 4 : 16;
  const gsize n = 12 * FRAME;
  g_autofree gfloat *speech = make_speech (n + 7 * FRAME);
  Conversation conv[16];
  conversations_new (conv, n_conv, TRUE, speech, n);
  run_conversations (conv, n_conv, TRUE);

  GstStructure *stats = NULL;
  guint delay_ms = 0;
  g_object_get (conv[0].dialog, "scheduler-stats", &stats, "max-observed-delay", &delay_ms, NULL);
  fail_unless (stats != NULL);
  gint conversations;
  guint64 ticks, steps;
  fail_unless (gst_structure_get (stats, "conversations", G_TYPE_INT, &conversations,
          "ticks", G_TYPE_UINT64, &ticks, "steps", G_TYPE_UINT64, &steps, NULL));
  GST_INFO ("%d elements: %" GST_PTR_FORMAT, n_conv, stats);
  fail_unless_equals_int (conversations, n_conv);
  fail_unless_equals_uint64 (steps, (guint64) n_conv * 12);
  /* They shared ticks: far fewer ticks than steps. Valgrind runs one thread at a time, so
   * there a feeding thread often misses a tick that another one's frame started: fewer is
   * all that can be asked. */
  const guint64 sharing = under_valgrind () ? 1 : 2;
  fail_unless (steps > ticks && steps >= sharing * ticks, "%" G_GUINT64_FORMAT " ticks for %"
      G_GUINT64_FORMAT " steps", ticks, steps);
  fail_unless (delay_ms > 0);
  gst_structure_free (stats);
  conversations_free (conv, n_conv);
}
GST_END_TEST;

/* With shared-scheduler=false each element steps alone: the same conversations. */
GST_START_TEST (test_conversations_alone)
{
  const gint n_conv = 3;
  const gsize n = 8 * FRAME;
  g_autofree gfloat *speech = make_speech (n + 7 * FRAME);
  Conversation conv[3];
  conversations_new (conv, n_conv, FALSE, speech, n);
  run_conversations (conv, n_conv, FALSE);
  GstStructure *stats = NULL;
  g_object_get (conv[0].dialog, "scheduler-stats", &stats, NULL);
  fail_unless (stats == NULL);
  conversations_free (conv, n_conv);
}
GST_END_TEST;

/* Past max-conversations an element fails to start, with an error that says why. */
GST_START_TEST (test_max_conversations)
{
  GstElement *owner = make_dialog (TRUE);
  g_object_set (owner, "max-conversations", 1, NULL);
  fail_unless (gst_element_set_state (owner, GST_STATE_PAUSED) != GST_STATE_CHANGE_FAILURE);
  GstElement *extra = make_dialog (TRUE);
  GstBus *bus = attach_bus (extra);
  fail_unless_equals_int (gst_element_set_state (extra, GST_STATE_PAUSED),
      GST_STATE_CHANGE_FAILURE);
  assert_error (pop_error (bus), GST_RESOURCE_ERROR, GST_RESOURCE_ERROR_BUSY,
      "maximum of 1", NULL);
  gst_element_set_state (extra, GST_STATE_NULL);
  drop_bus (bus);
  /* one of its own is not counted */
  g_object_set (extra, "shared-scheduler", FALSE, NULL);
  fail_unless (gst_element_set_state (extra, GST_STATE_PAUSED) != GST_STATE_CHANGE_FAILURE);
  gst_element_set_state (extra, GST_STATE_NULL);
  gst_element_set_state (owner, GST_STATE_NULL);
  gst_object_unref (extra);
  gst_object_unref (owner);
}
GST_END_TEST;

/* kv-cache picks the element type of the LM's caches: elements asking for different ones load
 * different copies of the LM. */
GST_START_TEST (test_kv_cache_property)
{
  GstElement *bf16 = make_dialog (TRUE), *f32 = make_dialog (TRUE);
  gint kv;
  g_object_get (bf16, "kv-cache", &kv, NULL);
  fail_unless_equals_int (kv, 0);         /* default: bf16 */
  gst_util_set_object_arg (G_OBJECT (f32), "kv-cache", "f32");
  fail_unless (gst_element_set_state (bf16, GST_STATE_READY) == GST_STATE_CHANGE_SUCCESS);
  fail_unless (gst_element_set_state (f32, GST_STATE_READY) == GST_STATE_CHANGE_SUCCESS);
  MoshiLm *lm_bf16 = g_object_get_data (G_OBJECT (bf16), LM_DATA_KEY);
  MoshiLm *lm_f32 = g_object_get_data (G_OBJECT (f32), LM_DATA_KEY);
  fail_unless (lm_bf16 != NULL && lm_f32 != NULL && lm_bf16 != lm_f32);
  fail_unless_equals_int (moshi_lm_get_kv_dtype (lm_bf16), MOSHI_DTYPE_BF16);
  fail_unless_equals_int (moshi_lm_get_kv_dtype (lm_f32), MOSHI_DTYPE_F32);
  gst_element_set_state (bf16, GST_STATE_NULL);
  gst_element_set_state (f32, GST_STATE_NULL);
  gst_object_unref (bf16);
  gst_object_unref (f32);
}
GST_END_TEST;

/* Once a second of output, an element on the shared scheduler posts its figures. */
GST_START_TEST (test_scheduler_messages)
{
  const gsize n = 30 * FRAME;
  g_autofree gfloat *speech = make_speech (n);
  GstElement *element = make_dialog (TRUE);
  GstBus *bus = attach_bus (element);
  Harnesses hs;
  harnesses_new (&hs, element, FALSE, RAW_F32_CAPS);
  push_pcm (hs.h, speech, n, FRAME, 0);
  guint found = 0;
  GstMessage *msg;
  while ((msg = gst_bus_pop_filtered (bus, GST_MESSAGE_ELEMENT)) != NULL) {
    const GstStructure *st = gst_message_get_structure (msg);
    if (gst_structure_has_name (st, "moshi-scheduler")) {
      found++;
      fail_unless (gst_structure_has_field (st, "tick-ms-p99"));
      fail_unless (gst_structure_has_field (st, "deadline-misses"));
    }
    gst_message_unref (msg);
  }
  /* 30 frames of 80 ms: 2.4 s */
  fail_unless_equals_int (found, 2);
  harnesses_teardown (&hs);
  drop_bus (bus);
}
GST_END_TEST;

static Suite *
moshi_dialog_suite (void)
{
  Suite *s = suite_create ("moshi-dialog");

  TCase *flow = tcase_create ("flow");
  tcase_add_test (flow, test_frames_timestamps_text);
  tcase_add_test (flow, test_odd_buffer_sizes);
  tcase_add_test (flow, test_s16);
  tcase_add_test (flow, test_sampled_matches_library);
  tcase_add_test (flow, test_matches_upstream_golden);
  tcase_add_test (flow, test_text_unlinked_and_messages);
  tcase_add_test (flow, test_audio_unlinked);
  tcase_add_test (flow, test_seek_forwarded_once);
  tcase_add_test (flow, test_no_tokenizer);
  tcase_add_test (flow, test_latency);
  tcase_add_test (flow, test_flush_resets_conversation);
  tcase_add_test (flow, test_eos_mid_frame);
  tcase_add_test (flow, test_eos_tail);
  tcase_add_test (flow, test_eos_tail_extends_segment);
  tcase_add_test (flow, test_live_stall_filled);
  tcase_add_test (flow, test_gaps_are_silence);
  tcase_add_test (flow, test_overlap_and_resync);
  tcase_add_test (flow, test_non_finite_input);
  suite_add_tcase (s, flow);

  TCase *tokens = tcase_create ("tokens");
  tcase_add_test (tokens, test_tokens_in);
  tcase_add_test (tokens, test_mimienc_in_front);
  tcase_add_test (tokens, test_tokens_out);
  tcase_add_test (tokens, test_tokens_out_to_mimidec);
  suite_add_tcase (s, tokens);

  TCase *states = tcase_create ("states");
  tcase_add_test (states, test_sampling_change_while_playing);
  tcase_add_test (states, test_restart);
  tcase_add_test (states, test_restart_and_flush_leave_no_state);
  tcase_add_test (states, test_state_changes_under_data);
  tcase_add_test (states, test_shared_models);
  tcase_add_test (states, test_model_directory);
  suite_add_tcase (s, states);

  TCase *scheduler = tcase_create ("scheduler");
  tcase_add_test (scheduler, test_conversations_share_ticks);
  tcase_add_test (scheduler, test_conversations_alone);
  tcase_add_test (scheduler, test_max_conversations);
  tcase_add_test (scheduler, test_scheduler_messages);
  tcase_add_test (scheduler, test_kv_cache_property);
  suite_add_tcase (s, scheduler);

  TCase *errors = tcase_create ("errors");
  tcase_add_test (errors, test_missing_files);
  tcase_add_test (errors, test_corrupt_files);
  tcase_add_test (errors, test_mismatched_models);
  tcase_add_test (errors, test_token_caps_errors);
  tcase_add_test (errors, test_downstream_refuses);
  suite_add_tcase (s, errors);

  return s;
}

GST_CHECK_MAIN (moshi_dialog);
