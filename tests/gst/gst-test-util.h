/* Helpers shared by the GstHarness suites of the moshi plugin (test-mimi-elements.c and
 * test-moshi-dialog.c): test data, the library's Mimi as reference, pushing and pulling
 * through harnesses, comparing outputs, bus and error checks. Every check fails the
 * running test through Check's fail_unless. */
#pragma once

#include <gst/check/gstcheck.h>
#include <gst/check/gstharness.h>

#include <moshi/moshi-mimi.h>

G_BEGIN_DECLS

/* The small test Mimi: 24 kHz mono, 1920-sample (80 ms) frames, 256-entry codebooks. */
#define RATE 24000
#define FRAME 1920
#define FRAME_NS (80 * GST_MSECOND)
#define CODEBOOK_SIZE 256
/* The elements' object data pointing at their MoshiMimi (GST_MOSHI_MODEL_DATA_KEY). */
#define MODEL_DATA_KEY "gst-moshi-mimi-model"

#define RAW_F32_CAPS "audio/x-raw, format=F32LE, layout=interleaved, rate=24000, channels=1"
#define RAW_S16_CAPS "audio/x-raw, format=S16LE, layout=interleaved, rate=24000, channels=1"

/* ------------------------------------------------------------------ test data */

/* A path below $MOSHI_TEST_DATA (which must be set), elements up to a NULL. */
gchar *test_data_path (const gchar * first_element, ...) G_GNUC_NULL_TERMINATED;

/* The golden speech signal: 42240 samples (22 frames) of espeak-ng at 24 kHz. */
gfloat *load_speech (gsize * n);

/* Writes two broken model files into dir and returns their paths: garbage.safetensors (not
 * a safetensors file at all) and truncated.safetensors (the first half of source). */
void write_broken_safetensors (const gchar * dir, const gchar * source, gchar ** garbage,
    gchar ** truncated);

/* s16 = pcm rounded to S16, as_float = those samples read back as floats. */
void quantize_to_s16 (const gfloat * pcm, gsize n, gint16 * s16, gfloat * as_float);

/* ------------------------------------------------------------------ library reference */

MoshiMimi *load_mimi (const gchar * model_path, const gchar * config_path);

/* Tokens of pcm (zero-padded to whole frames) from a fresh session, one frame per call,
 * frame-major [frame][codebook]. */
gint32 *reference_mimi_encode (const gchar * model_path, const gchar * config_path,
    const gfloat * pcm, gsize n, gint codebooks, gsize * n_frames);

/* ------------------------------------------------------------------ harness helpers */

/* A harness on element's sink and src pads; takes the caller's reference to element. */
GstHarness *harness_for (GstElement * element);

GstClockTime samples_to_time (guint64 samples);

/* Pushes pcm in buffers of chunk samples, timestamped from start_ns. */
void push_pcm (GstHarness * h, const gfloat * pcm, gsize n, gsize chunk,
    GstClockTime start_ns);

/* frames frames of frame-major codes from first_frame, as a u16le token buffer timed at
 * its frames. */
GstBuffer *token_buffer (const gint32 * codes, gsize frames, gint codebooks,
    gsize first_frame);

/* ---- the elements on device=cuda (test-device-faults.c, test-device-oom.c) ---- */

#define DEVICE_TEST_CODEBOOKS 8
#define DEVICE_TEST_TOKEN_CAPS "audio/x-mimi, rate=24000, channels=1, framerate=25/2, " \
    "codebooks=8, codebook-size=256, stream-format=u16le"

typedef enum
{
  INPUT_PCM,
  INPUT_TOKENS,
} InputKind;

/* mimienc, mimidec or moshidialog on the test models, device=cuda, on the shared scheduler or
 * alone. */
GstElement *make_device_element (const gchar * factory, gboolean shared);

/* Pops the whole bus: exactly one ERROR, from element, of domain and code. Returns its error
 * (g_error_free) and its debug text in *debug (g_free). */
GError *pop_only_error (GstBus * bus, GstElement * element, GQuark domain, gint code,
    gchar ** debug);

/* A case of a device test: the element, on the shared scheduler or alone, and its input. */
typedef struct
{
  const gchar *name;
  const gchar *factory;
  gboolean shared;
  InputKind kind;
  const gchar *caps;
} DeviceTestCase;

/* A suite that runs test (a loop test) for each of the cases, one TCase each, so that each can
 * run in a process of its own (CK_RUN_CASE). */
Suite *device_test_suite (const gchar * name, TFun test,
    const DeviceTestCase * cases, guint n_cases);

/* Frame f of an input: speech (of speech_frames frames, repeated), or tokens (any codes in
 * range decode). */
GstBuffer *device_input_frame (InputKind kind, const gfloat * speech, gsize speech_frames,
    gsize f);

/* Flush start, flush stop and a fresh TIME segment. */
void push_flush (GstHarness * h);

/* The buffers received so far. */
GPtrArray *pull_all (GstHarness * h);

/* The events received so far, of one type (the others are dropped). */
GPtrArray *pull_events (GstHarness * h, GstEventType type);

/* ------------------------------------------------------------------ comparisons */

/* Concatenates F32 audio buffers. */
gfloat *concat_f32 (GPtrArray * bufs, gsize * n);
/* Fails unless the buffers' F32 samples are n and within tolerance relative L2 of expected;
 * returns the relative L2. */
double assert_f32_buffers_close (GPtrArray * bufs, const gfloat * expected, gsize n,
    double tolerance);

/* Bit for bit. */
void assert_pcm_equal (const gfloat * got, const gfloat * expected, gsize n);

/* The F32 buffers hold n samples in all, bit for bit those of expected. */
void assert_f32_buffers_equal (GPtrArray * bufs, const gfloat * expected, gsize n);

/* One S16LE buffer per frame, each sample the rounded and clamped expected float. */
void assert_s16_frames_equal (GPtrArray * bufs, const gfloat * expected);

/* A one-frame token buffer holding codebooks u16le codes equal to codes. */
void assert_token_buffer_equal (GstBuffer * buf, const gint32 * codes, gint codebooks);

/* pad's current caps equal expected_caps. */
void assert_current_caps (GstPad * pad, const gchar * expected_caps);

/* ------------------------------------------------------------------ bus, errors */

/* A bus of its own for element, so that its messages can be popped. */
GstBus *attach_bus (GstElement * element);
void drop_bus (GstBus * bus);

/* Pops every message; fails on an error, returns the number of warnings. */
guint count_bus_warnings (GstBus * bus);

/* The error message on the bus, which must be there. */
GstMessage *pop_error (GstBus * bus);

/* Sets element to READY expecting failure; returns the error message posted. */
GstMessage *expect_open_error (GstElement * element);

/* The error in msg has domain and code and its message names needle and, unless NULL,
 * needle2. Takes msg. */
void assert_error (GstMessage * msg, GQuark domain, gint code, const gchar * needle,
    const gchar * needle2);

/* Sends caps straight to the element behind h's source pad: they must be refused. */
void assert_caps_refused (GstHarness * h, const gchar * caps);

/* Keeps pushing buf (taken) with caps from one thread while another changes the element's
 * state for half a second, tolerating the warnings such races give, then drops what came
 * out on h. */
void stress_state_changes (GstHarness * h, const gchar * caps, GstBuffer * buf);

/* ------------------------------------------------------------------ stream order */

/* Watches what leaves a pad, from whichever streaming thread pushes it, for the order a
 * stream must keep through seeks and restarts: once the stream starts and after every
 * FLUSH_STOP, a SEGMENT comes before any buffer; within a segment buffer timestamps never go
 * back. Breaches are collected and reported by stream_checker_assert_clean in the test's own
 * thread (a failure in a streaming thread would not end the test cleanly). */
typedef struct _StreamChecker StreamChecker;

StreamChecker *stream_checker_attach (GstPad * pad);

/* The next n buffers fail with GST_FLOW_FLUSHING, as when downstream starts flushing while
 * they are pushed; they are recorded all the same. */
void stream_checker_refuse_buffers (StreamChecker * checker, guint n);

/* Blocks until n_segments SEGMENTs in all went out, the last one of seqnum (any seqnum when
 * GST_SEQNUM_INVALID), and after it min_buffers buffers or an EOS; or until a breach, so that
 * a lost SEGMENT fails the test instead of hanging it. Fails the test, naming the error, if
 * the bus (polled meanwhile) gets an error message. */
void stream_checker_wait_segment (StreamChecker * checker, guint n_segments, guint32 seqnum,
    guint min_buffers, GstBus * bus);

/* The SEGMENTs and buffers that went out so far. */
void stream_checker_counts (StreamChecker * checker, guint * segments, guint * n_buffers);

/* Fails the test listing the first breaches, if any. */
void stream_checker_assert_clean (StreamChecker * checker);

/* Removes the probe. */
void stream_checker_free (StreamChecker * checker);

G_END_DECLS
