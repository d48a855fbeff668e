/* Device memory running out on the emulated CUDA backend (moshi_emu_set_memory_limit): a
 * conversation, or a Mimi stream, that does not fit fails to join with MOSHI_ERROR_NO_MEMORY and
 * a message naming the sizes and the fix, and nothing else changes: the conversations already
 * running keep stepping and give what they give on a device with room to spare, and once one
 * of them ends a new one fits. Out of memory is no fault, so nothing here is sticky, but the
 * cap is process-wide: one case per process (tests/cuda/meson.build), also under valgrind. */
#include "test-support.h"
#include "emu-test-models.h"

#include "moshi-error.h"
#include "moshi-scheduler.h"

#include <string.h>

enum { N = 2, STEPS = 3, MAX_CODEBOOKS = 32 };

/* What one conversation or stream gave for each of its steps: tokens and audio. */
typedef struct {
  MoshiConversation *conversation;      /* or */
  MoshiMimiStream *stream;
  const float *speech;
  int frame, first_step, steps;
  int32_t tokens[STEPS * 2][1 + MAX_CODEBOOKS];
  float *pcm;                           /* [STEPS * 2][frame] */
} Caller;

static gpointer
caller_thread (gpointer data)
{
  Caller *c = data;
  for (int i = c->first_step; i < c->first_step + c->steps; i++) {
    const float *pcm = c->speech + (gsize) i * c->frame;
    float *out = c->pcm + (gsize) i * c->frame;
    int32_t *tokens = c->tokens[i];
    GError *error = NULL;
    gboolean ok;
    if (c->conversation != NULL) {
      MoshiDialogFrame f;
      ok = moshi_conversation_step_pcm (c->conversation, pcm, &f, out, &error);
      tokens[0] = f.returned ? f.text_token : -1;
      memcpy (tokens + 1, f.audio_codes, MIN (MOSHI_DIALOG_MAX_CODEBOOKS, MAX_CODEBOOKS)
          * sizeof (int32_t));
    } else {
      int k = moshi_mimi_session_num_codebooks (moshi_mimi_stream_get_session (c->stream));
      ok = moshi_mimi_stream_encode (c->stream, pcm, tokens, &error)
          && moshi_mimi_stream_decode (c->stream, tokens, k, out, &error);
    }
    ck_assert_msg (ok, "step %d: %s", i, error ? error->message : "");
  }
  return NULL;
}

/* Steps [first, first + steps) of every caller, each from its own thread. */
static void
run_callers (Caller *callers, int n, int first, int steps)
{
  GThread *threads[N + 1];
  g_assert (n <= N + 1);
  for (int i = 0; i < n; i++) {
    callers[i].first_step = first;
    callers[i].steps = steps;
    threads[i] = g_thread_new ("caller", caller_thread, &callers[i]);
  }
  for (int i = 0; i < n; i++)
    g_thread_join (threads[i]);
}

typedef struct {
  gboolean mimi_streams;
  MoshiMimi *mimi;
  MoshiLm *lm;
  MoshiTokenizer *tok;
  MoshiDialogModel *model;
  MoshiScheduler *sched;
  float *speech;
  int frame;
} Rig;

static void
rig_init (Rig *r, gboolean mimi_streams)
{
  memset (r, 0, sizeof *r);
  r->mimi_streams = mimi_streams;
  r->mimi = emu_test_load_mimi ();
  GError *error = NULL;
  if (!mimi_streams) {
    r->lm = emu_test_load_lm ();
    g_autofree char *tok_path = moshi_test_data_path ("tokenizer/tiny.model");
    r->tok = moshi_tokenizer_load (tok_path, &error);
    ck_assert_msg (r->tok != NULL, "%s", error ? error->message : "");
    r->model = moshi_dialog_model_new (r->lm, r->mimi, r->tok, &error);
    ck_assert_msg (r->model != NULL, "%s", error ? error->message : "");
  }
  r->frame = moshi_mimi_frame_size (r->mimi);
  int n_frames;
  r->speech = emu_test_load_speech (r->frame, STEPS * 2 + N, &n_frames);
}

static void
rig_clear (Rig *r)
{
  g_free (r->speech);
  if (r->model)
    moshi_dialog_model_unref (r->model);
  if (r->tok)
    moshi_tokenizer_unref (r->tok);
  if (r->lm)
    moshi_lm_unref (r->lm);
  moshi_mimi_unref (r->mimi);
}

static void
rig_new_scheduler (Rig *r)
{
  /* room for one more than run, so that what refuses the last is memory, not the limit */
  MoshiSchedulerOptions opts = { .max_conversations = N + 1 };
  GError *error = NULL;
  r->sched = r->mimi_streams ? moshi_scheduler_new_mimi (r->mimi, &opts, &error)
      : moshi_scheduler_new (r->model, &opts, &error);
  ck_assert_msg (r->sched != NULL, "%s", error ? error->message : "");
}

/* Caller i's conversation or stream, or NULL with error. A step's results do not depend on
 * which others share its tick, so the ticks need not be the same in every run. */
static gboolean
rig_join (Rig *r, Caller *c, int i, GError **error)
{
  memset (c, 0, sizeof *c);
  c->speech = r->speech + (gsize) i * r->frame;
  c->frame = r->frame;
  c->pcm = g_new0 (float, (gsize) STEPS * 2 * r->frame);
  const gint64 wait_us = -1;
  if (r->mimi_streams) {
    c->stream = moshi_mimi_stream_new (r->sched, NULL, wait_us, error);
    return c->stream != NULL;
  }
  MoshiLmSamplingParams p;
  moshi_lm_sampling_params_init (&p);
  p.seed = 100 + i;
  MoshiConversationOptions copts = { .max_wait_us = wait_us };
  c->conversation = moshi_conversation_new (r->sched, r->model, &p, &copts, error);
  return c->conversation != NULL;
}

static void
caller_clear (Caller *c)
{
  moshi_conversation_free (c->conversation);
  if (c->stream)
    moshi_mimi_stream_free (c->stream);
  g_clear_pointer (&c->pcm, g_free);
}

static void
assert_same (const Caller *got, const Caller *want, int frame, int i)
{
  for (int s = 0; s < STEPS * 2; s++) {
    ck_assert_msg (memcmp (got->tokens[s], want->tokens[s], sizeof got->tokens[s]) == 0,
        "caller %d step %d: other tokens than without a memory limit", i, s);
    ck_assert_msg (memcmp (got->pcm + (gsize) s * frame, want->pcm + (gsize) s * frame,
            frame * sizeof (float)) == 0,
        "caller %d step %d: other audio than without a memory limit", i, s);
  }
}

static void
assert_no_memory (const GError *error, gboolean mimi_streams)
{
  ck_assert_msg (error != NULL, "joining past the memory limit succeeded");
  ck_assert_msg (g_error_matches (error, MOSHI_ERROR, MOSHI_ERROR_NO_MEMORY),
      "not MOSHI_ERROR_NO_MEMORY: %s (%s %d)", error->message,
      g_quark_to_string (error->domain), error->code);
  const char *what = mimi_streams ? "not enough device memory for another Mimi stream's "
      : "not enough device memory for another conversation's KV cache: needs ";
  const char *fix = mimi_streams ? "; lower max-conversations (moshidialog) or max-streams"
      : "; lower max-conversations";
  ck_assert_msg (g_str_has_prefix (error->message, what), "%s", error->message);
  ck_assert_msg (strstr (error->message, " free (CUDA device 0 (") != NULL, "%s",
      error->message);
  ck_assert_msg (strstr (error->message, fix) != NULL, "%s", error->message);
  /* the sizes are numbers with units */
  const char *needs = strstr (error->message, "needs ");
  ck_assert_msg (needs != NULL && g_ascii_isdigit (needs[6]), "%s", error->message);
  ck_assert_msg (strstr (needs, "B, ") != NULL || strstr (needs, "bytes, ") != NULL, "%s",
      error->message);
}

static void
scheduler_oom (gboolean mimi_streams)
{
  Rig r;
  rig_init (&r, mimi_streams);
  GError *error = NULL;

  /* without a limit: what N callers give over 2 * STEPS ticks */
  Caller want[N];
  rig_new_scheduler (&r);
  for (int i = 0; i < N; i++)
    ck_assert_msg (rig_join (&r, &want[i], i, &error), "%s", error ? error->message : "");
  run_callers (want, N, 0, STEPS * 2);
  for (int i = 0; i < N; i++) {
    moshi_conversation_free (want[i].conversation);
    if (want[i].stream)
      moshi_mimi_stream_free (want[i].stream);
    want[i].conversation = NULL;
    want[i].stream = NULL;
  }
  moshi_scheduler_unref (r.sched);

  /* the same on a device with room for them and most of one more */
  Caller callers[N + 1];
  rig_new_scheduler (&r);
  size_t one = 0;
  for (int i = 0; i < N; i++) {
    size_t before = moshi_test_emu_used (&emu);
    ck_assert_msg (rig_join (&r, &callers[i], i, &error), "%s", error ? error->message : "");
    one = moshi_test_emu_used (&emu) - before;
  }
  run_callers (callers, N, 0, STEPS);
  size_t used = moshi_test_emu_used (&emu);
  /* all but the last allocation of a conversation fit: the KV cache's second half */
  emu.set_memory_limit (used + one - 1);

  MoshiSchedulerStats st;
  moshi_scheduler_get_stats (r.sched, &st);
  ck_assert_msg (!rig_join (&r, &callers[N], N, &error), "a conversation past the limit joined");
  assert_no_memory (error, mimi_streams);
  g_clear_error (&error);
  caller_clear (&callers[N]);
  ck_assert_uint_eq (moshi_test_emu_used (&emu), used);
  MoshiSchedulerStats after;
  moshi_scheduler_get_stats (r.sched, &after);
  ck_assert_int_eq (after.conversations, st.conversations);

  /* the others carry on as they would have */
  run_callers (callers, N, STEPS, STEPS);
  for (int i = 0; i < N; i++)
    assert_same (&callers[i], &want[i], r.frame, i);

  /* one ends: a new one fits, and steps */
  caller_clear (&callers[0]);
  ck_assert_msg (rig_join (&r, &callers[0], N, &error), "%s", error ? error->message : "");
  run_callers (callers, N, 0, 1);

  for (int i = 0; i < N; i++) {
    caller_clear (&callers[i]);
    caller_clear (&want[i]);
  }
  moshi_scheduler_unref (r.sched);
  emu.set_memory_limit (0);
  rig_clear (&r);
}

START_TEST (test_scheduler_oom)
{
  scheduler_oom (FALSE);
}
END_TEST

START_TEST (test_scheduler_mimi_oom)
{
  scheduler_oom (TRUE);
}
END_TEST

/* An LM session on its own (moshi_dialog without a scheduler): the same error, and the
 * sessions after it work. */
START_TEST (test_lm_session_oom)
{
  Rig r;
  rig_init (&r, FALSE);
  GError *error = NULL;
  size_t before = moshi_test_emu_used (&emu);
  MoshiDialog *d = moshi_dialog_new (r.model, NULL, 1, &error);
  ck_assert_msg (d != NULL, "%s", error ? error->message : "");
  size_t one = moshi_test_emu_used (&emu) - before;
  moshi_dialog_free (d);
  ck_assert_uint_eq (moshi_test_emu_used (&emu), before);

  g_autoptr (MoshiLmSession) s = moshi_lm_session_new (r.lm, NULL, &error);
  ck_assert_msg (s != NULL, "%s", error ? error->message : "");
  size_t used = moshi_test_emu_used (&emu);
  emu.set_memory_limit (used + 1);
  ck_assert (moshi_lm_session_new (r.lm, NULL, &error) == NULL);
  assert_no_memory (error, FALSE);
  g_clear_error (&error);
  ck_assert (moshi_dialog_new (r.model, NULL, 1, &error) == NULL);
  ck_assert_msg (g_error_matches (error, MOSHI_ERROR, MOSHI_ERROR_NO_MEMORY), "%s",
      error->message);
  g_clear_error (&error);
  ck_assert_uint_eq (moshi_test_emu_used (&emu), used);

  /* not sticky: with room again, it works */
  g_clear_pointer (&s, moshi_lm_session_free);
  emu.set_memory_limit (before + one);
  d = moshi_dialog_new (r.model, NULL, 1, &error);
  ck_assert_msg (d != NULL, "%s", error ? error->message : "");
  MoshiDialogFrame f;
  ck_assert_msg (moshi_dialog_step_codes (d, (int32_t[16]) { 0 }, moshi_lm_user_codebooks (r.lm),
          &f, NULL, &error), "%s", error ? error->message : "");
  moshi_dialog_free (d);
  emu.set_memory_limit (0);
  rig_clear (&r);
}
END_TEST

static Suite *
oom_suite (void)
{
  const EmuTestCase cases[] = {
    { "scheduler", test_scheduler_oom },
    { "scheduler-mimi", test_scheduler_mimi_oom },
    { "lm-session", test_lm_session_oom },
  };
  return emu_test_suite ("cuda-oom", cases, G_N_ELEMENTS (cases));
}

int
main (void)
{
  if (!emu_test_backend_ready ())
    return 77;
  return moshi_test_run_suite (oom_suite ());
}
