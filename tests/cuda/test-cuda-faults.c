/* A device fault mid-stream on the emulated CUDA backend (moshi_emu_inject_fault): a Mimi
 * session, a Mimi batch, an LM batch step, the scheduler's conversations and Mimi streams. The
 * call that meets the fault and every later one fail with MOSHI_ERROR_DEVICE naming the device
 * and what failed; nothing crashes or hangs (a scheduler wakes every waiting conversation with
 * the error); everything is freed afterwards (run under valgrind too).
 *
 * The fault is sticky for the whole process, so every case runs in a process of its own
 * (tests/cuda/meson.build runs one case per test with CK_RUN_CASE). */
#include "test-support.h"
#include "emu-test-models.h"

#include "moshi-error.h"
#include "moshi-scheduler.h"

#include <stdio.h>
#include <string.h>

/* A failure of a call after the fault: the device's error, naming the device and the CUDA
 * error. */
static void
assert_device_error (const GError *error, const char *call)
{
  ck_assert_msg (error != NULL, "%s succeeded after the device fault", call);
  ck_assert_msg (error->domain == MOSHI_ERROR && error->code == MOSHI_ERROR_DEVICE,
      "%s: not a device error: %s (%s %d)", call, error->message,
      g_quark_to_string (error->domain), error->code);
  ck_assert_msg (strstr (error->message, "CUDA device 0 (") != NULL,
      "%s: the error does not name the device: %s", call, error->message);
  ck_assert_msg (strstr (error->message, "cudaErrorIllegalAddress") != NULL,
      "%s: the error does not name the fault: %s", call, error->message);
  ck_assert_msg (strstr (error->message, " failed: ") != NULL,
      "%s: the error does not say what failed: %s", call, error->message);
}

/* Arms the fault halfway through the launches that `launches_per_call` measured. */
static void
inject_midway (uint64_t launches_per_call)
{
  ck_assert_uint_gt (launches_per_call, 1);
  emu.inject_fault (launches_per_call / 2);
}

/* ---- a streaming Mimi session ---- */

static void
mimi_session_fault (gboolean fault_in_decode)
{
  MoshiMimi *mimi = emu_test_load_mimi ();
  int frame = moshi_mimi_frame_size (mimi), n_frames;
  g_autofree float *speech = emu_test_load_speech (frame, 4, &n_frames);
  MoshiMimiSessionOptions opts = { .max_frames_per_call = 1 };
  GError *error = NULL;
  MoshiMimiSession *s = moshi_mimi_session_new (mimi, &opts, &error);
  ck_assert_msg (s != NULL, "%s", error ? error->message : "");
  int k = moshi_mimi_session_num_codebooks (s);
  int32_t codes[32];
  g_autofree float *pcm = g_new (float, frame);
  ck_assert_int_le (k, 32);

  /* a few frames each way: the later ones replay recordings */
  uint64_t before = 0, per_frame = 0;
  for (int f = 0; f < 3; f++) {
    before = moshi_test_emu_launches (&emu);
    ck_assert (moshi_mimi_session_encode (s, speech + (gsize) f * frame, 1, codes, &error));
    if (!fault_in_decode)
      per_frame = moshi_test_emu_launches (&emu) - before;
    before = moshi_test_emu_launches (&emu);
    ck_assert (moshi_mimi_session_decode (s, codes, k, 1, pcm, &error));
    if (fault_in_decode)
      per_frame = moshi_test_emu_launches (&emu) - before;
  }

  inject_midway (per_frame);
  gboolean ok = fault_in_decode ? moshi_mimi_session_decode (s, codes, k, 1, pcm, &error)
      : moshi_mimi_session_encode (s, speech + 3 * (gsize) frame, 1, codes, &error);
  ck_assert (!ok);
  assert_device_error (error, "the call that faulted");
  ck_assert_msg (strstr (emu.last_message (), "injected device fault") != NULL,
      "the emulator says: %s", emu.last_message ());
  g_clear_error (&error);

  /* every later call, either way, and a new session */
  for (int i = 0; i < 2; i++) {
    ck_assert (!moshi_mimi_session_encode (s, speech, 1, codes, &error));
    assert_device_error (error, "encode");
    g_clear_error (&error);
    ck_assert (!moshi_mimi_session_decode (s, codes, k, 1, pcm, &error));
    assert_device_error (error, "decode");
    g_clear_error (&error);
  }
  moshi_mimi_session_reset (s);
  ck_assert (!moshi_mimi_session_encode (s, speech, 1, codes, &error));
  assert_device_error (error, "encode after a reset");
  g_clear_error (&error);
  MoshiMimiSession *again = moshi_mimi_session_new (mimi, &opts, &error);
  if (again != NULL) {
    ck_assert (!moshi_mimi_session_encode (again, speech, 1, codes, &error));
    moshi_mimi_session_free (again);
  }
  ck_assert_msg (error != NULL && error->domain == MOSHI_ERROR
      && error->code == MOSHI_ERROR_DEVICE, "a new session: %s", error ? error->message : "");
  g_clear_error (&error);
  /* bad input is still told apart from the device */
  codes[0] = -1;
  ck_assert (!moshi_mimi_session_decode (s, codes, k, 1, pcm, &error));
  ck_assert_int_eq (error->code, MOSHI_ERROR_INVALID_ARGUMENT);
  g_clear_error (&error);

  moshi_mimi_session_free (s);
  moshi_mimi_unref (mimi);

  /* with nothing left on it, the backend goes; opening it again meets the fault, which is
   * kept for the process as any failed open: device=auto then means the CPU */
  MoshiBackend *be = moshi_backend_open (MOSHI_DEVICE_CUDA, &error);
  ck_assert_ptr_null (be);
  moshi_assert_error_contains (error, "device=cuda: no usable CUDA device: an illegal memory");
  ck_assert_int_eq (error->code, MOSHI_ERROR_DEVICE);
  g_clear_error (&error);
  be = moshi_backend_open (MOSHI_DEVICE_AUTO, &error);
  ck_assert_ptr_nonnull (be);
  ck_assert_int_eq (be->device, MOSHI_DEVICE_CPU);
  moshi_backend_unref (be);
}

START_TEST (test_mimi_encode_fault)
{
  mimi_session_fault (FALSE);
}
END_TEST

START_TEST (test_mimi_decode_fault)
{
  mimi_session_fault (TRUE);
}
END_TEST

/* ---- a Mimi batch ---- */

START_TEST (test_mimi_batch_fault)
{
  enum { N = 3 };
  MoshiMimi *mimi = emu_test_load_mimi ();
  int frame = moshi_mimi_frame_size (mimi), n_frames;
  g_autofree float *speech = emu_test_load_speech (frame, 4, &n_frames);
  GError *error = NULL;
  MoshiMimiBatch *batch = moshi_mimi_batch_new (mimi, N, 0, &error);
  ck_assert_msg (batch != NULL, "%s", error ? error->message : "");
  MoshiMimiSession *sessions[N];
  const float *pcm[N];
  int32_t codes_buf[N][32];
  int32_t *codes[N];
  float *out[N];
  for (int i = 0; i < N; i++) {
    sessions[i] = moshi_mimi_session_new (mimi, NULL, &error);
    ck_assert_msg (sessions[i] != NULL, "%s", error ? error->message : "");
    codes[i] = codes_buf[i];
    out[i] = g_new (float, frame);
  }
  int k = moshi_mimi_session_num_codebooks (sessions[0]);
  uint64_t per_call = 0;
  for (int f = 0; f < 3; f++) {
    for (int i = 0; i < N; i++)
      pcm[i] = speech + (gsize) ((f + i) % n_frames) * frame;
    uint64_t before = moshi_test_emu_launches (&emu);
    ck_assert (moshi_mimi_batch_encode (batch, sessions, N, pcm, codes, &error));
    per_call = moshi_test_emu_launches (&emu) - before;
    ck_assert (moshi_mimi_batch_decode (batch, sessions, N, (const int32_t *const *) codes, k,
            out, &error));
  }
  inject_midway (per_call);
  ck_assert (!moshi_mimi_batch_encode (batch, sessions, N, pcm, codes, &error));
  assert_device_error (error, "the batched encode that faulted");
  g_clear_error (&error);
  ck_assert (!moshi_mimi_batch_decode (batch, sessions, N, (const int32_t *const *) codes, k,
          out, &error));
  assert_device_error (error, "a batched decode");
  g_clear_error (&error);
  /* the sessions alone fail as well */
  ck_assert (!moshi_mimi_session_encode (sessions[1], speech, 1, codes[1], &error));
  assert_device_error (error, "a session of the batch");
  g_clear_error (&error);

  for (int i = 0; i < N; i++) {
    moshi_mimi_session_free (sessions[i]);
    g_free (out[i]);
  }
  moshi_mimi_batch_free (batch);
  moshi_mimi_unref (mimi);
}
END_TEST

/* ---- LM steps ---- */

START_TEST (test_lm_batch_fault)
{
  enum { N = 3 };
  MoshiLm *lm = emu_test_load_lm ();
  GError *error = NULL;
  MoshiLmBatch *batch = moshi_lm_batch_new (lm, N, 0, &error);
  ck_assert_msg (batch != NULL, "%s", error ? error->message : "");
  MoshiLmSession *sessions[N];
  for (int i = 0; i < N; i++) {
    MoshiLmSamplingParams p;
    moshi_lm_sampling_params_init (&p);
    p.seed = 7 + i;
    sessions[i] = moshi_lm_session_new (lm, &p, &error);
    ck_assert_msg (sessions[i] != NULL, "%s", error ? error->message : "");
  }
  int user = moshi_lm_user_codebooks (lm), dep_q = moshi_lm_generated_codebooks (lm);
  g_autofree int32_t *user_codes = g_new0 (int32_t, (gsize) N * MAX (user, 1));
  g_autofree int32_t *audio = g_new0 (int32_t, (gsize) N * MAX (dep_q, 1));
  int32_t text[N];
  gboolean returned[N];
  uint64_t per_step = 0;
  for (int step = 0; step < 4; step++) {
    for (int j = 0; j < N * user; j++)
      user_codes[j] = (step * 31 + j * 7) % moshi_lm_get_config (lm)->card;
    uint64_t before = moshi_test_emu_launches (&emu);
    ck_assert_msg (moshi_lm_batch_step (batch, sessions, N, user_codes, text, audio, returned,
            NULL, &error), "%s", error ? error->message : "");
    per_step = moshi_test_emu_launches (&emu) - before;
  }
  int64_t steps = moshi_lm_session_steps (sessions[0]);

  inject_midway (per_step);
  ck_assert (!moshi_lm_batch_step (batch, sessions, N, user_codes, text, audio, returned, NULL,
          &error));
  assert_device_error (error, "the step that faulted");
  g_clear_error (&error);
  /* the failed step did not count */
  ck_assert_int_eq (moshi_lm_session_steps (sessions[0]), steps);
  for (int i = 0; i < 2; i++) {
    ck_assert (!moshi_lm_batch_step (batch, sessions, N, user_codes, text, audio, returned, NULL,
            &error));
    assert_device_error (error, "a later step");
    g_clear_error (&error);
  }
  /* fewer rows: another shape, run as it comes */
  ck_assert (!moshi_lm_batch_step (batch, sessions, 1, user_codes, text, audio, returned, NULL,
          &error));
  assert_device_error (error, "a step of another shape");
  g_clear_error (&error);
  moshi_lm_session_reset (sessions[2]);
  ck_assert (!moshi_lm_batch_step (batch, sessions + 2, 1, user_codes, text, audio, returned,
          NULL, &error));
  assert_device_error (error, "a step after a reset");
  g_clear_error (&error);

  for (int i = 0; i < N; i++)
    moshi_lm_session_free (sessions[i]);
  moshi_lm_batch_free (batch);
  moshi_lm_unref (lm);
}
END_TEST

/* ---- the scheduler ---- */

typedef struct {
  MoshiConversation *conversation;      /* or */
  MoshiMimiStream *stream;
  const float *speech;
  int speech_frames, frame, steps;
  int ok, failed;                       /* steps that succeeded, failed */
  gboolean failed_then_ok;              /* a step succeeded after one had failed */
  GError *first_error, *last_error;
} Caller;

static void
caller_result (Caller *c, gboolean ok, GError *error)
{
  if (ok) {
    c->ok++;
    if (c->failed > 0)
      c->failed_then_ok = TRUE;
    return;
  }
  c->failed++;
  if (c->first_error == NULL) {
    c->first_error = error;
  } else {
    g_clear_error (&c->last_error);
    c->last_error = error;
  }
}

static gpointer
caller_thread (gpointer data)
{
  Caller *c = data;
  float *out = g_new (float, c->frame);
  int32_t codes[32];
  for (int i = 0; i < c->steps; i++) {
    const float *pcm = c->speech + (gsize) (i % c->speech_frames) * c->frame;
    GError *error = NULL;
    gboolean ok;
    if (c->conversation != NULL) {
      MoshiDialogFrame f;
      ok = moshi_conversation_step_pcm (c->conversation, pcm, &f, out, &error);
    } else {
      int k = moshi_mimi_session_num_codebooks (moshi_mimi_stream_get_session (c->stream));
      ok = moshi_mimi_stream_encode (c->stream, pcm, codes, &error)
          && moshi_mimi_stream_decode (c->stream, codes, k, out, &error);
    }
    caller_result (c, ok, error);
  }
  g_free (out);
  return NULL;
}

/* Every caller steps `steps` times at once, each from its own thread, and returns. */
static void
run_callers (Caller *callers, int n, int steps)
{
  GThread *threads[8];
  g_assert (n <= 8);
  for (int i = 0; i < n; i++) {
    callers[i].steps = steps;
    threads[i] = g_thread_new ("caller", caller_thread, &callers[i]);
  }
  for (int i = 0; i < n; i++)
    g_thread_join (threads[i]);
}

static void
scheduler_fault (gboolean mimi_streams)
{
  enum { N = 4, BEFORE = 3, AFTER = 3 };
  MoshiMimi *mimi = emu_test_load_mimi ();
  MoshiLm *lm = NULL;
  MoshiTokenizer *tok = NULL;
  MoshiDialogModel *model = NULL;
  GError *error = NULL;
  MoshiScheduler *sched;
  if (mimi_streams) {
    sched = moshi_scheduler_new_mimi (mimi, NULL, &error);
  } else {
    lm = emu_test_load_lm ();
    g_autofree char *tok_path = moshi_test_data_path ("tokenizer/tiny.model");
    tok = moshi_tokenizer_load (tok_path, &error);
    ck_assert_msg (tok != NULL, "%s", error ? error->message : "");
    model = moshi_dialog_model_new (lm, mimi, tok, &error);
    ck_assert_msg (model != NULL, "%s", error ? error->message : "");
    sched = moshi_scheduler_new (model, NULL, &error);
  }
  ck_assert_msg (sched != NULL, "%s", error ? error->message : "");
  int frame = moshi_mimi_frame_size (mimi), n_frames;
  g_autofree float *speech = emu_test_load_speech (frame, 4, &n_frames);

  Caller callers[N];
  memset (callers, 0, sizeof callers);
  for (int i = 0; i < N; i++) {
    Caller *c = &callers[i];
    c->speech = speech + (gsize) i * frame;
    c->speech_frames = n_frames - i;
    c->frame = frame;
    if (mimi_streams) {
      c->stream = moshi_mimi_stream_new (sched, NULL, -1, &error);
      ck_assert_msg (c->stream != NULL, "%s", error ? error->message : "");
    } else {
      MoshiLmSamplingParams p;
      moshi_lm_sampling_params_init (&p);
      p.seed = 100 + i;
      c->conversation = moshi_conversation_new (sched, model, &p, NULL, &error);
      ck_assert_msg (c->conversation != NULL, "%s", error ? error->message : "");
    }
  }

  /* a few ticks that work */
  uint64_t launches = moshi_test_emu_launches (&emu);
  run_callers (callers, N, BEFORE);
  launches = moshi_test_emu_launches (&emu) - launches;
  MoshiSchedulerStats st;
  moshi_scheduler_get_stats (sched, &st);
  for (int i = 0; i < N; i++)
    ck_assert_msg (callers[i].failed == 0, "caller %d: %s", i, callers[i].first_error->message);
  ck_assert_uint_gt (st.ticks, 0);

  /* then the device faults in the middle of a tick (the first ones run shapes as they come,
   * the later replay them: about the average) */
  inject_midway (MAX (launches / st.ticks, 2));
  run_callers (callers, N, AFTER);
  ck_assert_uint_eq (emu.fault_pending (), 0);
  for (int i = 0; i < N; i++) {
    Caller *c = &callers[i];
    ck_assert_msg (c->failed > 0, "caller %d never failed after the fault", i);
    ck_assert_msg (!c->failed_then_ok, "caller %d: a step succeeded after a failed one", i);
    ck_assert_int_eq (c->ok + c->failed, BEFORE + AFTER);
    assert_device_error (c->first_error, "the first failed step");
    if (c->last_error != NULL)
      assert_device_error (c->last_error, "a later step");
  }

  /* joining after the fault fails or gives a conversation whose steps fail */
  if (mimi_streams) {
    MoshiMimiStream *late = moshi_mimi_stream_new (sched, NULL, 0, &error);
    if (late != NULL) {
      int32_t codes[32];
      ck_assert (!moshi_mimi_stream_encode (late, speech, codes, &error));
      moshi_mimi_stream_free (late);
    }
  } else {
    MoshiConversation *late = moshi_conversation_new (sched, model, NULL, NULL, &error);
    if (late != NULL) {
      MoshiDialogFrame f;
      ck_assert (!moshi_conversation_step_codes (late, (int32_t[16]) { 0 },
              moshi_lm_user_codebooks (lm), &f, NULL, &error));
      moshi_conversation_free (late);
    }
  }
  ck_assert_msg (error != NULL && error->code == MOSHI_ERROR_DEVICE, "joining late: %s",
      error ? error->message : "no error");
  g_clear_error (&error);

  for (int i = 0; i < N; i++) {
    Caller *c = &callers[i];
    moshi_conversation_free (c->conversation);
    if (c->stream)
      moshi_mimi_stream_free (c->stream);
    g_clear_error (&c->first_error);
    g_clear_error (&c->last_error);
  }
  moshi_scheduler_unref (sched);
  if (model)
    moshi_dialog_model_unref (model);
  if (tok)
    moshi_tokenizer_unref (tok);
  if (lm)
    moshi_lm_unref (lm);
  moshi_mimi_unref (mimi);
}

START_TEST (test_scheduler_fault)
{
  scheduler_fault (FALSE);
}
END_TEST

START_TEST (test_scheduler_mimi_fault)
{
  scheduler_fault (TRUE);
}
END_TEST

static Suite *
faults_suite (void)
{
  const EmuTestCase cases[] = {
    { "mimi-encode", test_mimi_encode_fault },
    { "mimi-decode", test_mimi_decode_fault },
    { "mimi-batch", test_mimi_batch_fault },
    { "lm-batch", test_lm_batch_fault },
    { "scheduler", test_scheduler_fault },
    { "scheduler-mimi", test_scheduler_mimi_fault },
  };
  return emu_test_suite ("cuda-faults", cases, G_N_ELEMENTS (cases));
}

int
main (void)
{
  if (!emu_test_backend_ready ())
    return 77;
  if (g_getenv ("CK_RUN_CASE") == NULL && g_strcmp0 (g_getenv ("CK_FORK"), "no") == 0) {
    /* the fault of one case would fail the next */
    printf ("SKIP: run one case per process (CK_RUN_CASE) without CK_FORK\n");
    return 77;
  }
  return moshi_test_run_suite (faults_suite ());
}
