/* Mimi conformance against golden data from the upstream PyTorch reference (moshi 0.2.13,
 * CPU, float32; tests/reference/gen_mimi.py), plus streaming semantics and error paths.
 *
 * Tolerances (spec/mimi.md §8-9): decoded audio within 1e-4 relative L2 of the reference;
 * codes equal, except where the reference itself sits on a near-tie (the gap between the two
 * best squared distances, recorded by the generator as code_gap, below NEAR_TIE_GAP) — after
 * such a flip the later levels of that frame may differ too. */
#include "test-support.h"

#include "moshi-backend.h"
#include "moshi-error.h"
#include "mimi-config.h"
#include "moshi-mimi.h"
#include "moshi-recorder.h"
#include "mimi-internal.h"
#include "moshi-safetensors.h"

#include <glib/gstdio.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PCM_TOLERANCE 1e-4
#define NEAR_TIE_GAP 1e-4

typedef struct {
  const char *name;
  int codebooks;
} GoldenCase;

static const GoldenCase committed_cases[] = {
  { "tiny", 6 },
  { "small", 8 },
};

/* The full-size case is generated on demand (tests/reference/gen_mimi.py --case full) and
 * found through $MOSHI_MIMI_FULL_DIR when the binary runs with --full. */
static const GoldenCase full_cases[] = {
  { "full", 8 },
};

static const GoldenCase *cases = committed_cases;
static int n_cases = G_N_ELEMENTS (committed_cases);

static const char *signals[] = { "speech", "silence", "clipped", "noise_odd" };


typedef struct {
  MoshiMimi *mimi;
  MoshiSafetensors *golden;
  char *dir;
} Fixture;

static void
fixture_open (Fixture *fx, const char *case_name)
{
  GError *error = NULL;
  if (g_str_equal (case_name, "full")) {
    fx->dir = g_strdup (g_getenv ("MOSHI_MIMI_FULL_DIR"));
  } else {
    g_autofree char *rel = g_build_filename ("mimi", case_name, NULL);
    fx->dir = moshi_test_data_path (rel);
  }
  g_autofree char *model = g_build_filename (fx->dir, "model.safetensors", NULL);
  g_autofree char *config = g_build_filename (fx->dir, "config.json", NULL);
  g_autofree char *golden = g_build_filename (fx->dir, "golden.safetensors", NULL);
  MoshiMimiLoadOptions opts = { moshi_test_device () };
  fx->mimi = moshi_mimi_load (model, config, &opts, &error);
  ck_assert_msg (fx->mimi != NULL, "load %s: %s", model, error ? error->message : "");
  fx->golden = moshi_safetensors_open (golden, &error);
  ck_assert_msg (fx->golden != NULL, "open %s: %s", golden, error ? error->message : "");
}

static void
fixture_close (Fixture *fx)
{
  moshi_mimi_unref (fx->mimi);
  moshi_safetensors_unref (fx->golden);
  g_free (fx->dir);
}

static const MoshiTensorEntry *
golden_tensor (Fixture *fx, const char *signal, const char *what)
{
  g_autofree char *name = what ? g_strdup_printf ("%s.%s", signal, what) : g_strdup (signal);
  const MoshiTensorEntry *e = moshi_safetensors_lookup (fx->golden, name);
  ck_assert_msg (e != NULL, "golden tensor %s missing", name);
  return e;
}

static float *
golden_f32 (Fixture *fx, const char *signal, const char *what, gsize *n_out)
{
  const MoshiTensorEntry *e = golden_tensor (fx, signal, what);
  ck_assert_int_eq (e->dtype, MOSHI_DTYPE_F32);
  gsize n = e->nbytes / 4;
  float *x = g_new (float, MAX (n, 1));
  memcpy (x, e->data, e->nbytes);
  *n_out = n;
  return x;
}

/* I64 [1, K, T] -> int32 [K][T] */
static int32_t *
golden_codes (Fixture *fx, const char *signal, const char *what, int *k_out, int *t_out)
{
  const MoshiTensorEntry *e = golden_tensor (fx, signal, what);
  ck_assert_int_eq (e->dtype, MOSHI_DTYPE_I64);
  ck_assert_int_eq (e->ndim, 3);
  int k = (int) e->shape[1], t = (int) e->shape[2];
  int32_t *c = g_new (int32_t, MAX (k * t, 1));
  for (int i = 0; i < k * t; i++) {
    int64_t v;
    memcpy (&v, (const char *) e->data + 8 * i, 8);
    c[i] = (int32_t) v;
  }
  *k_out = k;
  *t_out = t;
  return c;
}

/* Counts code mismatches and checks each frame's first one sits on a recorded near-tie. */
static int
compare_codes (Fixture *fx, const char *label, const char *signal, const int32_t *got,
    const int32_t *want, int k, int t, const char *gap_name)
{
  gsize n_gap = 0;
  g_autofree float *gap = gap_name ? golden_f32 (fx, signal, gap_name, &n_gap) : NULL;
  int mismatches = 0;
  for (int f = 0; f < t; f++) {
    gboolean flipped = FALSE;
    for (int l = 0; l < k; l++) {
      if (got[l * t + f] == want[l * t + f])
        continue;
      mismatches++;
      if (flipped)
        continue;             /* a flip changes the residual of every later level */
      flipped = TRUE;
      ck_assert_msg (gap != NULL && gap[l * t + f] <= NEAR_TIE_GAP,
          "%s %s: code mismatch at frame %d level %d (%d vs reference %d), reference gap %g "
          "is not a near-tie", label, signal, f, l, got[l * t + f], want[l * t + f],
          gap ? gap[l * t + f] : -1.0);
    }
  }
  printf ("%s %s %s: %d of %d codes differ from the reference\n", fx->dir, label, signal,
      mismatches, k * t);
  return mismatches;
}

static void
assert_pcm_close (Fixture *fx, const char *label, const char *signal, const float *got,
    const float *want, gsize n)
{
  for (gsize i = 0; i < n; i++)
    ck_assert_msg (isfinite (got[i]), "%s %s: sample %zu is not finite", label, signal, (size_t) i);
  double rel = moshi_test_rel_l2 (got, want, n);
  printf ("%s %s %s: decoded relative L2 error %.3g\n", fx->dir, label, signal, rel);
  ck_assert_msg (rel <= PCM_TOLERANCE, "%s %s: relative L2 error %.3g > %g", label, signal, rel,
      PCM_TOLERANCE);
}

/* ------------------------------------------------------------------ one-shot */

START_TEST (test_one_shot)
{
  const GoldenCase *gc = &cases[_i];
  Fixture fx;
  fixture_open (&fx, gc->name);
  GError *error = NULL;
  for (guint s = 0; s < G_N_ELEMENTS (signals); s++) {
    gsize n;
    g_autofree float *pcm = golden_f32 (&fx, signals[s], "pcm", &n);
    int k, t;
    g_autofree int32_t *want = golden_codes (&fx, signals[s], "codes", &k, &t);
    ck_assert_int_eq (k, gc->codebooks);
    g_autofree int32_t *codes = NULL;
    int n_frames = 0;
    ck_assert_msg (moshi_mimi_encode (fx.mimi, pcm, n, k, 1, &codes, &n_frames, &error),
        "encode: %s", error ? error->message : "");
    ck_assert_int_eq (n_frames, t);
    compare_codes (&fx, "one-shot", signals[s], codes, want, k, t, "code_gap");

    /* Decode the reference's codes so that a near-tie flip cannot pollute the comparison. */
    g_autofree float *decoded = NULL;
    ck_assert (moshi_mimi_decode (fx.mimi, want, k, t, 2, &decoded, &error));
    gsize n_ref;
    g_autofree float *ref = golden_f32 (&fx, signals[s], "decoded", &n_ref);
    ck_assert_uint_eq (n_ref, (gsize) t * moshi_mimi_frame_size (fx.mimi));
    assert_pcm_close (&fx, "one-shot", signals[s], decoded, ref, n_ref);
  }
  fixture_close (&fx);
}
END_TEST

/* ------------------------------------------------------------------ streaming */

static float *
padded_frames (const float *pcm, gsize n, int frame, int *n_frames)
{
  *n_frames = (int) ((n + frame - 1) / frame);
  float *p = g_new0 (float, MAX ((gsize) *n_frames * frame, 1));
  memcpy (p, pcm, n * sizeof (float));
  return p;
}

START_TEST (test_streaming)
{
  const GoldenCase *gc = &cases[_i];
  Fixture fx;
  fixture_open (&fx, gc->name);
  GError *error = NULL;
  int frame = moshi_mimi_frame_size (fx.mimi);
  for (guint s = 0; s < G_N_ELEMENTS (signals); s++) {
    gsize n;
    g_autofree float *pcm = golden_f32 (&fx, signals[s], "pcm", &n);
    int k, t, n_frames;
    g_autofree int32_t *want = golden_codes (&fx, signals[s], "stream_codes", &k, &t);
    g_autofree float *padded = padded_frames (pcm, n, frame, &n_frames);
    ck_assert_int_eq (n_frames, t);

    MoshiMimiSessionOptions opts = { .n_threads = 1 + (int) (s % 2), .num_codebooks = k,
      .max_frames_per_call = 1 };
    g_autoptr (MoshiMimiSession) session = moshi_mimi_session_new (fx.mimi, &opts, &error);
    ck_assert_ptr_nonnull (session);
    g_autofree int32_t *codes = g_new (int32_t, k * t);
    int32_t one[64];
    for (int f = 0; f < t; f++) {
      ck_assert (moshi_mimi_session_encode (session, padded + (gsize) f * frame, 1, one, &error));
      for (int l = 0; l < k; l++)
        codes[l * t + f] = one[l];
    }
    compare_codes (&fx, "streaming", signals[s], codes, want, k, t, NULL);

    g_autofree float *out = g_new (float, (gsize) t * frame);
    for (int f = 0; f < t; f++) {
      int32_t in[64];
      for (int l = 0; l < k; l++)
        in[l] = want[l * t + f];
      ck_assert (moshi_mimi_session_decode (session, in, k, 1, out + (gsize) f * frame, &error));
    }
    gsize n_ref;
    g_autofree float *ref = golden_f32 (&fx, signals[s], "stream_decoded", &n_ref);
    ck_assert_uint_eq (n_ref, (gsize) t * frame);
    assert_pcm_close (&fx, "streaming", signals[s], out, ref, n_ref);
  }
  fixture_close (&fx);
}
END_TEST

/* Several frames per call: encode in chunks of 3 frames, decode in chunks of 1, 2, 3 frames. */
START_TEST (test_streaming_chunked)
{
  Fixture fx;
  fixture_open (&fx, "small");
  GError *error = NULL;
  int frame = moshi_mimi_frame_size (fx.mimi);
  gsize n;
  g_autofree float *pcm = golden_f32 (&fx, "speech", "pcm", &n);
  int k, t, n_frames;
  g_autofree int32_t *want = golden_codes (&fx, "speech", "stream_codes_chunked", &k, &t);
  g_autofree float *padded = padded_frames (pcm, n, frame, &n_frames);
  MoshiMimiSessionOptions opts = { .n_threads = 2, .num_codebooks = k, .max_frames_per_call = 3 };
  g_autoptr (MoshiMimiSession) session = moshi_mimi_session_new (fx.mimi, &opts, &error);
  ck_assert_ptr_nonnull (session);
  g_autofree int32_t *codes = g_new (int32_t, k * t);
  g_autofree int32_t *chunk_codes = g_new (int32_t, k * 3);
  int encoded = 0;
  for (int f = 0; f < t; f += 3) {
    int len = MIN (3, t - f);
    ck_assert (moshi_mimi_session_encode (session, padded + (gsize) f * frame, len, chunk_codes, &error));
    for (int l = 0; l < k; l++)
      for (int j = 0; j < len; j++)
        codes[l * t + f + j] = chunk_codes[l * len + j];
    encoded += len;
  }
  ck_assert_int_eq (encoded, t);
  compare_codes (&fx, "chunked", "speech", codes, want, k, t, NULL);

  g_autofree float *out = g_new (float, (gsize) t * frame);
  int sizes[] = { 1, 2, 3 };
  for (int f = 0, i = 0; f < t; i++) {
    int len = MIN (sizes[i % 3], t - f);
    for (int l = 0; l < k; l++)
      for (int j = 0; j < len; j++)
        chunk_codes[l * len + j] = want[l * t + f + j];
    ck_assert (moshi_mimi_session_decode (session, chunk_codes, k, len, out + (gsize) f * frame, &error));
    f += len;
  }
  gsize n_ref;
  g_autofree float *ref = golden_f32 (&fx, "speech", "stream_decoded_chunked", &n_ref);
  assert_pcm_close (&fx, "chunked", "speech", out, ref, n_ref);
  fixture_close (&fx);
}
END_TEST

START_TEST (test_reset_mid_stream)
{
  const GoldenCase *gc = &cases[_i];
  Fixture fx;
  fixture_open (&fx, gc->name);
  GError *error = NULL;
  int frame = moshi_mimi_frame_size (fx.mimi);
  gsize n;
  g_autofree float *pcm = golden_f32 (&fx, "speech", "pcm", &n);
  int k, t, n_frames;
  g_autofree int32_t *want = golden_codes (&fx, "speech", "reset_codes", &k, &t);
  const MoshiTensorEntry *split_e = golden_tensor (&fx, "speech", "reset_split");
  int64_t split;
  memcpy (&split, split_e->data, 8);
  g_autofree float *padded = padded_frames (pcm, n, frame, &n_frames);
  MoshiMimiSessionOptions opts = { .n_threads = 1, .num_codebooks = k, .max_frames_per_call = 1 };
  g_autoptr (MoshiMimiSession) session = moshi_mimi_session_new (fx.mimi, &opts, &error);
  g_autofree int32_t *codes = g_new (int32_t, k * t);
  int32_t one[64];
  for (int f = 0; f < t; f++) {
    if (f == split)
      moshi_mimi_session_reset (session);
    ck_assert (moshi_mimi_session_encode (session, padded + (gsize) f * frame, 1, one, &error));
    for (int l = 0; l < k; l++)
      codes[l * t + f] = one[l];
  }
  compare_codes (&fx, "reset", "speech", codes, want, k, t, NULL);
  fixture_close (&fx);
}
END_TEST

/* The decoder takes any number of codebooks up to the model's, whatever the encoder used. */
START_TEST (test_decode_fewer_codebooks)
{
  Fixture fx;
  fixture_open (&fx, "small");
  GError *error = NULL;
  int k, t;
  g_autofree int32_t *codes = golden_codes (&fx, "speech", "codes", &k, &t);
  const char *names[] = { "decode_k1", "decode_k3" };
  int ks[] = { 1, 3 };
  for (int i = 0; i < 2; i++) {
    g_autofree float *out = NULL;
    /* the first ks[i] rows of the [K][T] layout are a [ks[i]][T] array */
    ck_assert (moshi_mimi_decode (fx.mimi, codes, ks[i], t, 1, &out, &error));
    gsize n_ref;
    g_autofree float *ref = golden_f32 (&fx, names[i], NULL, &n_ref);
    assert_pcm_close (&fx, names[i], "speech", out, ref, n_ref);
  }
  fixture_close (&fx);
}
END_TEST

/* ------------------------------------------------------------------ batches */

/* Batched frames against the same sessions stepped alone. Tolerances: codes equal; decoded
 * PCM within BATCH_PCM_TOLERANCE relative L2 of the solo frame (measured: at most 7e-7 on the
 * CPU, tiny and small models, batches of 2 to 6). On the CPU a batch's convolutions and linears
 * are wider products than the solo call's, which BLAS (or the few-column kernels) may sum in
 * another order, even for 2 sessions. */
#define BATCH_PCM_TOLERANCE 1e-5
#define BATCH_SESSIONS 6

/* Whether session i takes part in the batched step t: they join at different steps (so at
 * different stream positions), and each sits out some steps, stepped alone then. */
static gboolean
batch_member (int i, int t)
{
  return t >= i / 2 && (t + i) % 4 != 3;
}

START_TEST (test_batch_matches_solo)
{
  const GoldenCase *gc = &cases[_i];
  Fixture fx;
  fixture_open (&fx, gc->name);
  GError *error = NULL;
  int frame = moshi_mimi_frame_size (fx.mimi);
  /* Sessions of k and k - 1 codebooks share the batch's encode calls: each gets its own
   * count of codes. Every frame is decoded from k - 1 of them. */
  int k = gc->codebooks, kd = k - 1;
  ck_assert_int_ge (kd, 1);
  gsize n;
  g_autofree float *speech = golden_f32 (&fx, "speech", "pcm", &n);
  int n_frames;
  g_autofree float *padded = padded_frames (speech, n, frame, &n_frames);
  int steps = MIN (n_frames, 12);

  const int N = BATCH_SESSIONS;
  MoshiMimiSession *batched[BATCH_SESSIONS], *solo[BATCH_SESSIONS];
  for (int i = 0; i < N; i++) {
    /* threads: 1 or 2 for the solo calls (a batch runs on its own threads) */
    MoshiMimiSessionOptions opts = { .n_threads = 1 + i % 2, .num_codebooks = k - i % 2,
      .max_frames_per_call = 1 + i % 3 };
    batched[i] = moshi_mimi_session_new (fx.mimi, &opts, &error);
    solo[i] = moshi_mimi_session_new (fx.mimi, &opts, &error);
    ck_assert_msg (batched[i] && solo[i], "%s", error ? error->message : "");
  }
  g_autoptr (MoshiMimiBatch) batch = moshi_mimi_batch_new (fx.mimi, N, 2, &error);
  ck_assert_msg (batch != NULL, "%s", error ? error->message : "");

  double max_rel[BATCH_SESSIONS + 1] = { 0 };  /* by batch size */
  int code_diffs = 0;
  gint64 t0 = g_get_monotonic_time ();
  for (int t = 0; t < steps; t++) {
    MoshiMimiSession *members[BATCH_SESSIONS];
    const float *pcm[BATCH_SESSIONS];
    int32_t got[BATCH_SESSIONS][64], want[BATCH_SESSIONS][64];
    int32_t *got_p[BATCH_SESSIONS];
    const int32_t *want_p[BATCH_SESSIONS];
    float out[BATCH_SESSIONS][2048], ref[BATCH_SESSIONS][2048];
    float *out_p[BATCH_SESSIONS];
    int m = 0, idx[BATCH_SESSIONS];
    ck_assert_int_le (frame, 2048);
    for (int i = 0; i < N; i++) {
      /* each session its own stretch of the speech */
      const float *x = padded + (gsize) ((t + 3 * i) % n_frames) * frame;
      int32_t codes[64];
      if (!batch_member (i, t)) {
        /* out of the batch this step: both copies stepped alone */
        ck_assert (moshi_mimi_session_encode (batched[i], x, 1, codes, &error));
        ck_assert (moshi_mimi_session_encode (solo[i], x, 1, codes, &error));
        ck_assert (moshi_mimi_session_decode (batched[i], codes, kd, 1, out[0], &error));
        ck_assert (moshi_mimi_session_decode (solo[i], codes, kd, 1, out[0], &error));
        continue;
      }
      ck_assert (moshi_mimi_session_encode (solo[i], x, 1, want[m], &error));
      ck_assert (moshi_mimi_session_decode (solo[i], want[m], kd, 1, ref[m], &error));
      members[m] = batched[i];
      pcm[m] = x;
      got_p[m] = got[m];
      want_p[m] = want[m];
      out_p[m] = out[m];
      idx[m++] = i;
    }
    if (m == 0)
      continue;
    ck_assert_msg (moshi_mimi_batch_encode (batch, members, m, pcm, got_p, &error), "%s",
        error ? error->message : "");
    /* decoded from the solo codes, so that a code difference does not hide a PCM one */
    ck_assert_msg (moshi_mimi_batch_decode (batch, members, m, want_p, kd, out_p, &error), "%s",
        error ? error->message : "");
    for (int j = 0; j < m; j++) {
      for (int l = 0; l < moshi_mimi_session_num_codebooks (members[j]); l++)
        code_diffs += got[j][l] != want[j][l];
      double rel = moshi_test_rel_l2 (out[j], ref[j], frame);
      max_rel[m] = MAX (max_rel[m], rel);
      ck_assert_msg (rel <= BATCH_PCM_TOLERANCE, "%s step %d, session %d of a batch of %d: "
          "decoded frame %.3g relative L2 from the solo one", gc->name, t, idx[j], m, rel);
    }
  }
  printf ("%s: %d steps of %d sessions batched vs alone in %.0f ms: %d codes differ; decoded "
      "relative L2 by batch size:", fx.dir, steps, N, (g_get_monotonic_time () - t0) / 1000.0,
      code_diffs);
  for (int m = 1; m <= N; m++)
    printf (" %d: %.3g", m, max_rel[m]);
  printf ("\n");
  ck_assert_int_eq (code_diffs, 0);

  /* A backend that records: the same sessions in the same order again make one replay per
   * direction, once the shape has been run eagerly and then recorded. */
  MoshiBackend *be = moshi_mimi_get_backend (fx.mimi);
  if (be->ops->capture_begin != NULL && be->ops->get_stats != NULL) {
    gboolean graphs = moshi_graphs_enabled ();
    const float *pcm[] = { padded, padded + frame };
    int32_t got[2][64];
    int32_t *got_p[] = { got[0], got[1] };
    float out[2][2048];
    float *out_p[] = { out[0], out[1] };
    MoshiExecStats st;
    for (int round = 0; round < 3; round++) {
      be->ops->reset_stats (be, NULL);
      ck_assert (moshi_mimi_batch_encode (batch, batched, 2, pcm, got_p, &error));
      ck_assert (moshi_mimi_batch_decode (batch, batched, 2, (const int32_t *const *) got_p, kd,
              out_p, &error));
      be->ops->get_stats (be, NULL, &st);
    }
    printf ("%s: a steady batch of 2 replays %" G_GUINT64_FORMAT " recorded calls\n", fx.dir,
        st.graph_launches);
    ck_assert_int_eq (st.graph_launches, graphs ? 2 : 0);
  }
  for (int i = 0; i < N; i++) {
    moshi_mimi_session_free (batched[i]);
    moshi_mimi_session_free (solo[i]);
  }
  fixture_close (&fx);
}
END_TEST

START_TEST (test_batch_errors)
{
  Fixture fx;
  fixture_open (&fx, "tiny");
  GError *error = NULL;
  int frame = moshi_mimi_frame_size (fx.mimi);
  ck_assert_ptr_null (moshi_mimi_batch_new (fx.mimi, 0, 1, &error));
  moshi_assert_error_contains (error, "out of range");
  g_clear_error (&error);

  g_autoptr (MoshiMimiBatch) batch = moshi_mimi_batch_new (fx.mimi, 2, 1, &error);
  ck_assert_int_eq (moshi_mimi_batch_max_sessions (batch), 2);
  MoshiMimiSessionOptions opts = { .num_codebooks = 4 };
  MoshiMimiSessionOptions full = { .num_codebooks = 4, .full_context = TRUE };
  g_autoptr (MoshiMimiSession) a = moshi_mimi_session_new (fx.mimi, &opts, &error);
  g_autoptr (MoshiMimiSession) b = moshi_mimi_session_new (fx.mimi, &opts, &error);
  g_autoptr (MoshiMimiSession) c = moshi_mimi_session_new (fx.mimi, &full, &error);
  g_autofree char *config = g_build_filename (fx.dir, "config.json", NULL);
  g_autoptr (MoshiMimi) other = moshi_mimi_load (moshi_mimi_get_path (fx.mimi), config, NULL,
      &error);
  ck_assert_msg (other != NULL, "%s", error ? error->message : "");
  g_autofree float *good = g_new0 (float, frame), *bad = g_new0 (float, frame);
  bad[5] = NAN;
  int32_t codes[3][8];
  int32_t *codes_p[] = { codes[0], codes[1], codes[2] };
  const float *pcm[] = { good, good, good };

  MoshiMimiSession *three[] = { a, b, c };
  ck_assert (!moshi_mimi_batch_encode (batch, three, 3, pcm, codes_p, &error));
  moshi_assert_error_contains (error, "1 to 2");
  g_clear_error (&error);
  MoshiMimiSession *twice[] = { a, a };
  ck_assert (!moshi_mimi_batch_encode (batch, twice, 2, pcm, codes_p, &error));
  moshi_assert_error_contains (error, "twice");
  g_clear_error (&error);
  MoshiMimiSession *with_full[] = { a, c };
  ck_assert (!moshi_mimi_batch_encode (batch, with_full, 2, pcm, codes_p, &error));
  moshi_assert_error_contains (error, "full-context");
  g_clear_error (&error);

  /* bad audio of one session fails the call before anything runs: the streams go on as if it
   * never came */
  MoshiMimiSession *two[] = { a, b };
  const float *one_bad[] = { good, bad };
  ck_assert (!moshi_mimi_batch_encode (batch, two, 2, one_bad, codes_p, &error));
  moshi_assert_error_contains (error, "session 1");
  moshi_assert_error_contains (error, "not finite");
  g_clear_error (&error);
  int32_t bad_codes[4] = { 0, 1, 64, 2 };
  const int32_t *codes_in[] = { bad_codes, bad_codes };
  float out[2][512];
  float *out_p[] = { out[0], out[1] };
  ck_assert_int_le (frame, 512);
  ck_assert (!moshi_mimi_batch_decode (batch, two, 2, codes_in, 4, out_p, &error));
  moshi_assert_error_contains (error, "session 0");
  moshi_assert_error_contains (error, "outside [0, 64)");
  g_clear_error (&error);
  ck_assert (moshi_mimi_batch_encode (batch, two, 2, pcm, codes_p, &error));
  ck_assert_int_eq (moshi_mimi_session_num_codebooks (a), 4);

  g_autoptr (MoshiMimiSession) d = moshi_mimi_session_new (other, &opts, &error);
  MoshiMimiSession *foreign[] = { a, d };
  ck_assert (!moshi_mimi_batch_encode (batch, foreign, 2, pcm, codes_p, &error));
  moshi_assert_error_contains (error, "another Mimi");
  g_clear_error (&error);
  fixture_close (&fx);
}
END_TEST

/* ------------------------------------------------------------------ API behaviour */

START_TEST (test_bad_input)
{
  Fixture fx;
  fixture_open (&fx, "tiny");
  GError *error = NULL;
  int frame = moshi_mimi_frame_size (fx.mimi);
  MoshiMimiSessionOptions opts = { .num_codebooks = 4, .max_frames_per_call = 2 };
  g_autoptr (MoshiMimiSession) session = moshi_mimi_session_new (fx.mimi, &opts, &error);
  g_autofree float *pcm = g_new0 (float, frame * 2);
  int32_t codes[8];

  pcm[frame + 3] = NAN;
  ck_assert (!moshi_mimi_session_encode (session, pcm, 2, codes, &error));
  ck_assert_int_eq (error->code, MOSHI_ERROR_INVALID_ARGUMENT);
  moshi_assert_error_contains (error, "not finite");
  g_clear_error (&error);

  int32_t bad[4] = { 0, 1, 64, 2 };   /* bins = 64 */
  g_autofree float *out = g_new (float, frame);
  ck_assert (!moshi_mimi_session_decode (session, bad, 4, 1, out, &error));
  moshi_assert_error_contains (error, "outside [0, 64)");
  g_clear_error (&error);
  bad[2] = -1;
  ck_assert (!moshi_mimi_session_decode (session, bad, 4, 1, out, &error));
  g_clear_error (&error);
  ck_assert (!moshi_mimi_session_decode (session, bad, 7, 1, out, &error));
  moshi_assert_error_contains (error, "7 codebooks");
  g_clear_error (&error);

  /* one-shot decode checks the frame count before sizing its output (issue 14, defect 5) */
  float *none = NULL;
  ck_assert (!moshi_mimi_decode (fx.mimi, bad, 4, -1, 1, &none, &error));
  ck_assert_ptr_null (none);
  moshi_assert_error_contains (error, "-1 frames");
  g_clear_error (&error);

  MoshiMimiSessionOptions too_many = { .num_codebooks = 7 };
  ck_assert_ptr_null (moshi_mimi_session_new (fx.mimi, &too_many, &error));
  moshi_assert_error_contains (error, "num-codebooks=7");
  g_clear_error (&error);
  fixture_close (&fx);
}
END_TEST

/* A rejected call leaves the session as it was: the stream continues as if it never happened. */
START_TEST (test_rejected_call_keeps_state)
{
  Fixture fx;
  fixture_open (&fx, "tiny");
  GError *error = NULL;
  gsize n;
  g_autofree float *pcm = golden_f32 (&fx, "speech", "pcm", &n);
  int k, t;
  g_autofree int32_t *want = golden_codes (&fx, "speech", "stream_codes", &k, &t);
  int frame = moshi_mimi_frame_size (fx.mimi);
  MoshiMimiSessionOptions opts = { .num_codebooks = k, .max_frames_per_call = 1 };
  g_autoptr (MoshiMimiSession) session = moshi_mimi_session_new (fx.mimi, &opts, &error);
  g_autofree float *bad = g_new0 (float, frame);
  bad[0] = INFINITY;
  int32_t one[16];
  for (int f = 0; f < 4 && (f + 1) * frame <= (int) n; f++) {
    ck_assert (!moshi_mimi_session_encode (session, bad, 1, one, &error));
    g_clear_error (&error);
    ck_assert (moshi_mimi_session_encode (session, pcm + (gsize) f * frame, 1, one, &error));
    for (int l = 0; l < k; l++)
      ck_assert_int_eq (one[l], want[l * t + f]);
  }
  fixture_close (&fx);
}
END_TEST

START_TEST (test_shared_model_sessions)
{
  /* Two sessions on one model interleaved give the same codes as each alone. */
  Fixture fx;
  fixture_open (&fx, "tiny");
  GError *error = NULL;
  gsize n;
  g_autofree float *pcm = golden_f32 (&fx, "speech", "pcm", &n);
  int frame = moshi_mimi_frame_size (fx.mimi);
  int frames = MIN ((int) (n / frame), 20);
  MoshiMimiSessionOptions opts = { .num_codebooks = 6, .max_frames_per_call = 1 };
  g_autoptr (MoshiMimiSession) a = moshi_mimi_session_new (fx.mimi, &opts, &error);
  g_autoptr (MoshiMimiSession) b = moshi_mimi_session_new (fx.mimi, &opts, &error);
  int k, t;
  g_autofree int32_t *want = golden_codes (&fx, "speech", "stream_codes", &k, &t);
  g_autofree float *silence = g_new0 (float, frame);
  for (int f = 0; f < frames; f++) {
    int32_t ca[8], cb[8];
    ck_assert (moshi_mimi_session_encode (a, pcm + (gsize) f * frame, 1, ca, &error));
    ck_assert (moshi_mimi_session_encode (b, silence, 1, cb, &error));
    for (int l = 0; l < k; l++)
      ck_assert_int_eq (ca[l], want[l * t + f]);
  }
  ck_assert_int_eq (moshi_mimi_session_num_codebooks (a), 6);
  fixture_close (&fx);
}
END_TEST


/* ------------------------------------------------------------------ loader errors */

/* Rewrites the tiny model with one tensor dropped or reshaped and checks the load error. */
static char *
write_variant (const char *dir, const char *drop, const char *reshape)
{
  g_autofree char *model_rel = g_build_filename ("mimi", "tiny", "model.safetensors", NULL);
  g_autofree char *model = moshi_test_data_path (model_rel);
  GError *error = NULL;
  g_autoptr (MoshiSafetensors) st = moshi_safetensors_open (model, &error);
  ck_assert_ptr_nonnull (st);
  gsize n = moshi_safetensors_n_tensors (st);
  g_autofree MoshiTensorEntry *entries = g_new0 (MoshiTensorEntry, n);
  gsize kept = 0;
  for (gsize i = 0; i < n; i++) {
    const MoshiTensorEntry *e = moshi_safetensors_nth (st, i);
    if (drop && g_str_equal (e->name, drop))
      continue;
    entries[kept] = *e;
    if (reshape && g_str_equal (e->name, reshape)) {
      /* same bytes, one more leading dimension: [a, ...] -> [1, a, ...] */
      memmove (entries[kept].shape + 1, entries[kept].shape, e->ndim * sizeof (int64_t));
      entries[kept].shape[0] = 1;
      entries[kept].ndim++;
    }
    kept++;
  }
  char *path = g_build_filename (dir, "variant.safetensors", NULL);
  ck_assert (moshi_safetensors_write (path, entries, kept, NULL, &error));
  return path;
}

START_TEST (test_loader_errors)
{
  g_autofree char *dir = g_dir_make_tmp ("moshi-mimi-XXXXXX", NULL);
  g_autofree char *config_rel = g_build_filename ("mimi", "tiny", "config.json", NULL);
  g_autofree char *config = moshi_test_data_path (config_rel);
  GError *error = NULL;

  const char *missing = "decoder_transformer.transformer.layers.1.linear2.weight";
  g_autofree char *p1 = write_variant (dir, missing, NULL);
  ck_assert_ptr_null (moshi_mimi_load (p1, config, NULL, &error));
  ck_assert_int_eq (error->code, MOSHI_ERROR_MISSING_TENSOR);
  moshi_assert_error_contains (error, missing);
  moshi_assert_error_contains (error, p1);
  g_clear_error (&error);

  const char *misshaped = "encoder.model.3.conv.conv.weight";
  g_autofree char *p2 = write_variant (dir, NULL, misshaped);
  ck_assert_ptr_null (moshi_mimi_load (p2, config, NULL, &error));
  ck_assert_int_eq (error->code, MOSHI_ERROR_SHAPE);
  moshi_assert_error_contains (error, misshaped);
  g_clear_error (&error);

  const char *codebook = "quantizer.rvq_rest.vq.layers.2._codebook.embedding_sum";
  g_autofree char *p3 = write_variant (dir, codebook, NULL);
  ck_assert_ptr_null (moshi_mimi_load (p3, config, NULL, &error));
  moshi_assert_error_contains (error, codebook);
  g_clear_error (&error);

  /* the tiny weights with the released architecture (no config): the first tensor is wrong */
  g_autofree char *p4 = write_variant (dir, NULL, NULL);
  ck_assert_ptr_null (moshi_mimi_load (p4, NULL, NULL, &error));
  ck_assert_int_eq (error->code, MOSHI_ERROR_SHAPE);
  moshi_assert_error_contains (error, "encoder.model.0.conv.conv.weight");
  g_clear_error (&error);

  /* a bad config names the key */
  g_autofree char *bad_config = g_build_filename (dir, "bad.json", NULL);
  ck_assert (g_file_set_contents (bad_config,
          "{\"seanet\": {\"norm\": \"weight_norm\"}}", -1, NULL));
  ck_assert_ptr_null (moshi_mimi_load (p4, bad_config, NULL, &error));
  ck_assert_int_eq (error->code, MOSHI_ERROR_CONFIG);
  moshi_assert_error_contains (error, "seanet.norm");
  g_clear_error (&error);
  /* ratios whose product wraps an int divided by zero (issue 14, defect 3); values beyond an
   * int64 were cast before the range check (defect 9); unknown keys were ignored (defect 10) */
  static const struct { const char *json, *key; } bad_cases[] = {
    { "{\"seanet\": {\"ratios\": [64, 64, 64, 64, 64, 64, 64, 64]}}", "seanet.ratios" },
    { "{\"seanet\": {\"ratios\": [64, 64, 64, 64, 64, 64, 64, 16]}}", "seanet.ratios" },
    { "{\"seanet\": {\"n_filters\": 1e300}}", "seanet.n_filters" },
    { "{\"transformer\": {\"context\": -1e300}}", "transformer.context" },
    { "{\"seanet\": {\"ratio\": [8, 6, 5, 4]}}", "seanet.ratio" },
    { "{\"sample_rat\": 24000}", "sample_rat" },
    { "{\"quantizer\": {\"n_qs\": 8}}", "quantizer.n_qs" },
    { "{\"transformer\": {\"heads\": 8}}", "transformer.heads" },
  };
  for (guint i = 0; i < G_N_ELEMENTS (bad_cases); i++) {
    ck_assert (g_file_set_contents (bad_config, bad_cases[i].json, -1, NULL));
    ck_assert_ptr_null (moshi_mimi_load (p4, bad_config, NULL, &error));
    ck_assert_int_eq (error->code, MOSHI_ERROR_CONFIG);
    moshi_assert_error_contains (error, bad_cases[i].key);
    moshi_assert_error_contains (error, bad_config);
    g_clear_error (&error);
  }
  ck_assert (g_file_set_contents (bad_config, "{\"sample_rate\": 24000, \"frame_rate\": 7}", -1, NULL));
  ck_assert_ptr_null (moshi_mimi_load (p4, bad_config, NULL, &error));
  moshi_assert_error_contains (error, "hop length");
  g_clear_error (&error);

  /* missing file, and a file that is not safetensors */
  g_autofree char *nowhere = g_build_filename (dir, "absent.safetensors", NULL);
  ck_assert_ptr_null (moshi_mimi_load (nowhere, config, NULL, &error));
  moshi_assert_error_contains (error, nowhere);
  g_clear_error (&error);
  ck_assert_ptr_null (moshi_mimi_load (bad_config, config, NULL, &error));
  moshi_assert_error_contains (error, bad_config);
  g_clear_error (&error);

  /* device=cuda without a CUDA backend is a clear error, not a crash */
  g_autofree char *good_rel = g_build_filename ("mimi", "tiny", "model.safetensors", NULL);
  g_autofree char *good = moshi_test_data_path (good_rel);
  MoshiMimiLoadOptions cuda = { MOSHI_DEVICE_CUDA };
  MoshiMimi *m = moshi_mimi_load (good, config, &cuda, &error);
  if (m == NULL) {
    moshi_assert_error_contains (error, "cuda");
    g_clear_error (&error);
  } else {
    moshi_mimi_unref (m);
  }

  const char *files[] = { p1, p2, p3, p4, bad_config };
  for (guint i = 0; i < G_N_ELEMENTS (files); i++)
    g_unlink (files[i]);
  g_rmdir (dir);
}
END_TEST

START_TEST (test_shared_registry)
{
  g_autofree char *model_rel = g_build_filename ("mimi", "tiny", "model.safetensors", NULL);
  g_autofree char *config_rel = g_build_filename ("mimi", "tiny", "config.json", NULL);
  g_autofree char *model = moshi_test_data_path (model_rel);
  g_autofree char *config = moshi_test_data_path (config_rel);
  GError *error = NULL;
  MoshiMimiLoadOptions cpu = { MOSHI_DEVICE_CPU };
  /* each load opens the backend once: to name the device of the registry key, and no more */
  guint opens = moshi_backend_open_count ();
  MoshiMimi *a = moshi_mimi_load_shared (model, config, &cpu, &error);
  ck_assert_ptr_nonnull (a);
  ck_assert_uint_eq (moshi_backend_open_count () - opens, 1);
  /* the same file through another spelling of its path */
  g_autofree char *dir = g_path_get_dirname (model);
  g_autofree char *other = g_build_filename (dir, ".", "model.safetensors", NULL);
  opens = moshi_backend_open_count ();
  MoshiMimi *b = moshi_mimi_load_shared (other, config, &cpu, &error);
  ck_assert_ptr_eq (a, b);
  ck_assert_uint_eq (moshi_backend_open_count () - opens, 1);
  opens = moshi_backend_open_count ();
  MoshiMimi *unshared = moshi_mimi_load (model, config, &cpu, &error);
  ck_assert_ptr_nonnull (unshared);
  ck_assert_uint_eq (moshi_backend_open_count () - opens, 1);
  /* describing the loaded device opens nothing */
  opens = moshi_backend_open_count ();
  g_autofree char *described = moshi_mimi_describe_device (unshared);
  g_autofree char *opened = moshi_device_describe (MOSHI_DEVICE_CPU, NULL, NULL);
  ck_assert_str_eq (described, opened);
  ck_assert_uint_eq (moshi_backend_open_count () - opens, 1);
  moshi_mimi_unref (unshared);
  /* a different config is a different model */
  MoshiMimi *c = moshi_mimi_load_shared (model, NULL, &cpu, &error);
  ck_assert_ptr_null (c);
  g_clear_error (&error);
  moshi_mimi_unref (a);
  moshi_mimi_unref (b);
  /* after the last user the next load is a fresh copy that works */
  MoshiMimi *d = moshi_mimi_load_shared (model, config, &cpu, &error);
  ck_assert_ptr_nonnull (d);
  ck_assert_int_eq (moshi_mimi_frame_size (d), 96);
  moshi_mimi_unref (d);
}
END_TEST

/* The config's key table: keys left out keep the released values, integral floats count as
 * integers, and each kind of key (range, fixed value, unimplemented feature, projection) is
 * rejected naming the config and the key. */
START_TEST (test_config_table)
{
  MoshiMimiConfig cfg, released;
  g_autoptr (GError) error = NULL;
  moshi_mimi_config_init_default (&released);
  ck_assert (moshi_mimi_config_from_json_text (&cfg, "{}", 2, "cfg.json", &error));
  ck_assert_mem_eq (&cfg, &released, sizeof (cfg));
  ck_assert_int_eq (released.quantizer.n_q, 32);
  ck_assert_int_eq (released.quantizer.bins, 2048);
  ck_assert_int_eq (released.seanet.n_ratios, 4);
  ck_assert_int_eq (released.seanet.ratios[0] * released.seanet.ratios[3], 32);
  ck_assert_int_eq (released.transformer.context, 250);
  ck_assert (released.transformer.layer_scale);

  static const char with_floats[] = "{\"seanet\": {\"dimension\": 512.0, \"channels\": 1.0},"
      " \"transformer\": {\"layer_scale\": null, \"input_dimension\": 512}}";
  ck_assert_msg (moshi_mimi_config_from_json_text (&cfg, with_floats, strlen (with_floats),
          "cfg.json", &error), "%s", error ? error->message : "");
  ck_assert_int_eq (cfg.seanet.dimension, 512);
  ck_assert (!cfg.transformer.layer_scale);

  static const char *const bad[][2] = {
    { "{\"seanet\": {\"dimension\": 512.5}}", "seanet.dimension" },
    { "{\"seanet\": {\"channels\": 2}}", "seanet.channels" },
    { "{\"seanet\": {\"causal\": false}}", "seanet.causal" },
    { "{\"seanet\": {\"lstm\": 2}}", "seanet.lstm" },
    { "{\"seanet\": {\"true_skip\": false}}", "seanet.true_skip" },
    { "{\"seanet\": {\"ratios\": [8, 0]}}", "seanet.ratios[1]" },
    { "{\"seanet\": []}", "seanet" },
    { "{\"quantizer\": {\"bins\": 1}}", "quantizer.bins" },
    { "{\"transformer\": {\"gating\": \"silu\"}}", "transformer.gating" },
    { "{\"transformer\": {\"input_dimension\": 256}}", "transformer.input_dimension" },
    { "{\"transformer\": {\"output_dimensions\": [256]}}", "transformer.output_dimensions" },
    { "{\"frame_rate\": 0}", "frame_rate" },
  };
  for (guint i = 0; i < G_N_ELEMENTS (bad); i++) {
    g_clear_error (&error);
    ck_assert_msg (!moshi_mimi_config_from_json_text (&cfg, bad[i][0], strlen (bad[i][0]),
            "cfg.json", &error), "accepted: %s", bad[i][0]);
    ck_assert_int_eq (error->code, MOSHI_ERROR_CONFIG);
    ck_assert_msg (g_str_has_prefix (error->message, "cfg.json: ")
        && strstr (error->message, bad[i][1]) != NULL, "%s lacks %s", error->message, bad[i][1]);
  }
}
END_TEST

static Suite *
mimi_suite (gboolean full)
{
  Suite *s = suite_create ("mimi");
  TCase *golden = tcase_create ("golden");
  tcase_set_timeout (golden, 1800);
  tcase_add_loop_test (golden, test_one_shot, 0, n_cases);
  tcase_add_loop_test (golden, test_streaming, 0, n_cases);
  tcase_add_loop_test (golden, test_reset_mid_stream, 0, n_cases);
  tcase_add_loop_test (golden, test_batch_matches_solo, 0, n_cases);
  if (!full) {
    tcase_add_test (golden, test_streaming_chunked);
    tcase_add_test (golden, test_decode_fewer_codebooks);
  }
  suite_add_tcase (s, golden);
  if (full)
    return s;

  TCase *api = tcase_create ("api");
  tcase_set_timeout (api, 120);
  tcase_add_test (api, test_bad_input);
  tcase_add_test (api, test_rejected_call_keeps_state);
  tcase_add_test (api, test_shared_model_sessions);
  tcase_add_test (api, test_loader_errors);
  tcase_add_test (api, test_config_table);
  tcase_add_test (api, test_shared_registry);
  tcase_add_test (api, test_batch_errors);
  suite_add_tcase (s, api);
  return s;
}

int
main (int argc, char **argv)
{
  gboolean full = argc > 1 && g_str_equal (argv[1], "--full");
  moshi_test_require_device ();
  if (full) {
    const char *dir = g_getenv ("MOSHI_MIMI_FULL_DIR");
    g_autofree char *golden = dir ? g_build_filename (dir, "golden.safetensors", NULL) : NULL;
    if (golden == NULL || !g_file_test (golden, G_FILE_TEST_EXISTS)) {
      printf ("SKIP: set MOSHI_MIMI_FULL_DIR to the output of "
          "tests/reference/gen_mimi.py --case full to run the full-size conformance test\n");
      return 77;
    }
    cases = full_cases;
    n_cases = G_N_ELEMENTS (full_cases);
  }
  return moshi_test_run_suite (mimi_suite (full));
}
