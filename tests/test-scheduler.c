/* The scheduler: many conversations on one model, stepped together, each giving exactly what it
 * gives alone (the small dialog LM + the small Mimi, sampled with a seed per conversation). */
#include "test-support.h"

#include "moshi-error.h"
#include "moshi-safetensors.h"
#include "moshi-scheduler.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
  MoshiLm *lm;
  MoshiMimi *mimi;
  MoshiTokenizer *tok;
  MoshiDialogModel *model;
  float *speech;                /* the small Mimi's test speech */
  int speech_frames, frame;
} Fixture;

static Fixture fx;

static void
fixture_open (void)
{
  GError *error = NULL;
  g_autofree char *lm = moshi_test_data_path ("lm/dialog/model.safetensors");
  g_autofree char *lm_cfg = moshi_test_data_path ("lm/dialog/config.json");
  g_autofree char *mimi = moshi_test_data_path ("mimi/small/model.safetensors");
  g_autofree char *mimi_cfg = moshi_test_data_path ("mimi/small/config.json");
  g_autofree char *tok = moshi_test_data_path ("tokenizer/tiny.model");
  g_autofree char *mimi_golden = moshi_test_data_path ("mimi/small/golden.safetensors");
  MoshiLmLoadOptions lm_opts = { .device = moshi_test_device () };
  MoshiMimiLoadOptions mimi_opts = { moshi_test_device () };
  fx.lm = moshi_lm_load (lm, lm_cfg, &lm_opts, &error);
  ck_assert_msg (fx.lm != NULL, "%s", error ? error->message : "");
  fx.mimi = moshi_mimi_load (mimi, mimi_cfg, &mimi_opts, &error);
  ck_assert_msg (fx.mimi != NULL, "%s", error ? error->message : "");
  fx.tok = moshi_tokenizer_load (tok, &error);
  ck_assert_msg (fx.tok != NULL, "%s", error ? error->message : "");
  fx.model = moshi_dialog_model_new (fx.lm, fx.mimi, fx.tok, &error);
  ck_assert_msg (fx.model != NULL, "%s", error ? error->message : "");
  g_autoptr (MoshiSafetensors) golden = moshi_safetensors_open (mimi_golden, &error);
  ck_assert (golden != NULL);
  const MoshiTensorEntry *speech = moshi_safetensors_lookup (golden, "speech.pcm");
  ck_assert (speech != NULL);
  fx.frame = moshi_dialog_model_frame_size (fx.model);
  fx.speech_frames = (int) (speech->nbytes / 4 / fx.frame);
  fx.speech = g_memdup2 (speech->data, (gsize) fx.speech_frames * fx.frame * sizeof (float));
}

static void
fixture_close (void)
{
  moshi_tokenizer_unref (fx.tok);
  moshi_dialog_model_unref (fx.model);
  moshi_lm_unref (fx.lm);
  moshi_mimi_unref (fx.mimi);
  g_free (fx.speech);
}

static int
n_conversations (int fallback)
{
  const char *env = g_getenv ("MOSHI_TEST_CONVERSATIONS");
  return env ? atoi (env) : fallback;
}

/* Conversation i hears the test speech from frame 3 i on, with a silent frame in every 7. */
static const float *
user_frame (int conversation, int step, float *silence)
{
  int f = (step + 3 * conversation) % (fx.speech_frames + 1);
  if (step % 7 == 6 || f == fx.speech_frames)
    return silence;
  return fx.speech + (gsize) f * fx.frame;
}

static MoshiLmSamplingParams
params_for (int conversation)
{
  MoshiLmSamplingParams p;
  moshi_lm_sampling_params_init (&p);   /* sampled, as a real conversation */
  p.seed = 1000 + 17 * conversation;
  return p;
}

/* What one conversation produced: per step the text token, the model's codes and its audio. */
typedef struct {
  int steps;
  int32_t *text;
  int32_t *codes;               /* [steps][dep_q] */
  float *pcm;                   /* [steps][frame] */
  GString *transcript;
} Run;

static void
run_init (Run *r, int steps)
{
  int dep_q = moshi_dialog_model_model_codebooks (fx.model);
  r->steps = steps;
  r->text = g_new0 (int32_t, steps);
  r->codes = g_new0 (int32_t, (gsize) steps * dep_q);
  r->pcm = g_new0 (float, (gsize) steps * fx.frame);
  r->transcript = g_string_new (NULL);
}

static void
run_clear (Run *r)
{
  g_free (r->text);
  g_free (r->codes);
  g_free (r->pcm);
  g_string_free (r->transcript, TRUE);
}

static void
run_record (Run *r, int step, const MoshiDialogFrame *f)
{
  int dep_q = moshi_dialog_model_model_codebooks (fx.model);
  r->text[step] = f->text_token;
  memcpy (r->codes + (gsize) step * dep_q, f->audio_codes, dep_q * sizeof (int32_t));
  if (f->text)
    g_string_append (r->transcript, f->text);
}

/* Conversation i alone, through MoshiDialog. */
static void
solo_run (int conversation, Run *r, int steps)
{
  GError *error = NULL;
  MoshiLmSamplingParams p = params_for (conversation);
  g_autoptr (MoshiDialog) d = moshi_dialog_new (fx.model, &p, 1, &error);
  ck_assert_msg (d != NULL, "%s", error ? error->message : "");
  g_autofree float *silence = g_new0 (float, fx.frame);
  run_init (r, steps);
  for (int t = 0; t < steps; t++) {
    MoshiDialogFrame f;
    ck_assert (moshi_dialog_step_pcm (d, user_frame (conversation, t, silence), &f,
            r->pcm + (gsize) t * fx.frame, &error));
    run_record (r, t, &f);
  }
}

static void
assert_same_run (int conversation, const Run *got, const Run *want)
{
  int dep_q = moshi_dialog_model_model_codebooks (fx.model);
  int differ = 0;
  for (int t = 0; t < got->steps; t++) {
    differ += got->text[t] != want->text[t];
    for (int k = 0; k < dep_q; k++)
      differ += got->codes[(gsize) t * dep_q + k] != want->codes[(gsize) t * dep_q + k];
  }
  ck_assert_msg (differ == 0, "conversation %d: %d tokens differ from its run alone",
      conversation, differ);
  ck_assert_str_eq (got->transcript->str, want->transcript->str);
  double rel = moshi_test_rel_l2 (got->pcm, want->pcm, (gsize) got->steps * fx.frame);
  ck_assert_msg (rel <= 1e-6, "conversation %d: speech differs from its run alone (relative L2 %g)",
      conversation, rel);
}

/* ------------------------------------------------------------------ driving threads */

typedef struct {
  MoshiScheduler *sched;
  int index;                    /* the conversation's number: its seed and its input */
  int steps;
  int wait_for_peer_steps;      /* join once the peer has run this many steps (0: at once) */
  gint *peer_progress;          /* the peer's step count, or NULL */
  gint progress;                /* steps run, for the others to watch */
  gint64 max_wait_us;           /* < 0: the default */
  int slow_steps;               /* steps that took longer than slow_us */
  gint64 slow_us;
  /* a stall: after stall_after steps, wait until *stall_until reaches stall_steps */
  int stall_after;
  gint *stall_until;
  int stall_steps;
  Run run;
  MoshiConversation *conv;      /* joined before the thread starts, when set */
} Driver;

static void
wait_for (gint *counter, int value)
{
  gint64 deadline = g_get_monotonic_time () + 60 * G_TIME_SPAN_SECOND;
  while (g_atomic_int_get (counter) < value) {
    ck_assert_msg (g_get_monotonic_time () < deadline, "gave up waiting for a peer conversation");
    g_usleep (200);
  }
}

static gpointer
drive (gpointer data)
{
  Driver *d = data;
  GError *error = NULL;
  if (d->peer_progress)
    wait_for (d->peer_progress, d->wait_for_peer_steps);
  if (d->conv == NULL) {
    MoshiLmSamplingParams p = params_for (d->index);
    MoshiConversationOptions opts = { .n_threads = 1, .max_wait_us = d->max_wait_us };
    d->conv = moshi_conversation_new (d->sched, fx.model, &p, &opts, &error);
    ck_assert_msg (d->conv != NULL, "%s", error ? error->message : "");
  }
  g_autofree float *silence = g_new0 (float, fx.frame);
  run_init (&d->run, d->steps);
  for (int t = 0; t < d->steps; t++) {
    if (d->stall_until && t == d->stall_after)
      wait_for (d->stall_until, d->stall_steps);
    MoshiDialogFrame f;
    gint64 start = g_get_monotonic_time ();
    ck_assert_msg (moshi_conversation_step_pcm (d->conv, user_frame (d->index, t, silence), &f,
            d->run.pcm + (gsize) t * fx.frame, &error), "%s", error ? error->message : "");
    if (d->slow_us > 0 && g_get_monotonic_time () - start > d->slow_us)
      d->slow_steps++;
    run_record (&d->run, t, &f);
    g_atomic_int_inc (&d->progress);
  }
  ck_assert_int_eq (moshi_conversation_steps (d->conv), d->steps);
  g_clear_pointer (&d->conv, moshi_conversation_free);
  return NULL;
}

static void
check_against_solo (Driver *d)
{
  Run alone;
  solo_run (d->index, &alone, d->steps);
  assert_same_run (d->index, &d->run, &alone);
  run_clear (&alone);
  run_clear (&d->run);
}

/* ------------------------------------------------------------------ tests */

/* N conversations joined together, stepped by N threads: each equals its run alone, and the
 * ticks were shared. */
START_TEST (test_conversations_equal_solo)
{
  fixture_open ();
  GError *error = NULL;
  int n = n_conversations (16), steps = 30;
  MoshiSchedulerOptions so = { .max_conversations = n, .n_threads = 2 };
  g_autoptr (MoshiScheduler) sched = moshi_scheduler_new (fx.model, &so, &error);
  ck_assert_msg (sched != NULL, "%s", error ? error->message : "");
  Driver *drivers = g_new0 (Driver, n);
  GThread **threads = g_new0 (GThread *, n);
  for (int i = 0; i < n; i++) {
    drivers[i] = (Driver) { .sched = sched, .index = i, .steps = steps, .max_wait_us = -1 };
    MoshiLmSamplingParams p = params_for (i);
    MoshiConversationOptions opts = { .n_threads = 1, .max_wait_us = -1 };
    drivers[i].conv = moshi_conversation_new (sched, fx.model, &p, &opts, &error);
    ck_assert_msg (drivers[i].conv != NULL, "%s", error ? error->message : "");
  }
  for (int i = 0; i < n; i++)
    threads[i] = g_thread_new ("conversation", drive, &drivers[i]);
  for (int i = 0; i < n; i++)
    g_thread_join (threads[i]);

  MoshiSchedulerStats st;
  moshi_scheduler_get_stats (sched, &st);
  printf ("%d conversations x %d steps through the scheduler: %" G_GUINT64_FORMAT " ticks "
      "(%.1f conversations a tick), tick p50 %.2f ms, p99 %.2f ms, late frames %" G_GUINT64_FORMAT
      ", longest wait %.1f ms\n", n, steps, st.ticks, (double) st.steps / MAX (st.ticks, 1),
      st.tick_ms_p50, st.tick_ms_p99, st.late_frames, st.max_delay_ms);
  ck_assert_int_eq (st.steps, (guint64) n * steps);
  ck_assert_int_eq (st.conversations, 0);
  if (n > 1)
    ck_assert_msg (st.steps >= 2 * st.ticks, "the conversations hardly shared ticks: %"
        G_GUINT64_FORMAT " ticks for %" G_GUINT64_FORMAT " steps", st.ticks, st.steps);

  for (int i = 0; i < n; i++)
    check_against_solo (&drivers[i]);
  g_free (drivers);
  g_free (threads);
  fixture_close ();
}
END_TEST

/* Conversations that join and leave while another one runs. */
START_TEST (test_join_and_leave)
{
  fixture_open ();
  GError *error = NULL;
  MoshiSchedulerOptions so = { .max_conversations = 4, .n_threads = 2 };
  g_autoptr (MoshiScheduler) sched = moshi_scheduler_new (fx.model, &so, &error);
  ck_assert (sched != NULL);
  Driver d[3] = {
    { .sched = sched, .index = 0, .steps = 40, .max_wait_us = -1 },
    { .sched = sched, .index = 1, .steps = 12, .max_wait_us = -1, .wait_for_peer_steps = 8 },
    { .sched = sched, .index = 2, .steps = 15, .max_wait_us = -1, .wait_for_peer_steps = 22 },
  };
  d[1].peer_progress = &d[0].progress;
  d[2].peer_progress = &d[0].progress;
  GThread *t[3];
  for (int i = 0; i < 3; i++)
    t[i] = g_thread_new ("conversation", drive, &d[i]);
  for (int i = 0; i < 3; i++)
    g_thread_join (t[i]);
  MoshiSchedulerStats st;
  moshi_scheduler_get_stats (sched, &st);
  ck_assert_int_eq (st.steps, 40 + 12 + 15);
  ck_assert_int_eq (st.conversations, 0);
  for (int i = 0; i < 3; i++)
    check_against_solo (&d[i]);
  fixture_close ();
}
END_TEST

/* A conversation whose input stops does not hold the other back: after one tick that waits
 * for it, the scheduler stops waiting for it until its next frame comes. */
START_TEST (test_stalled_conversation)
{
  fixture_open ();
  GError *error = NULL;
  MoshiSchedulerOptions so = { .max_conversations = 2, .n_threads = 1 };
  g_autoptr (MoshiScheduler) sched = moshi_scheduler_new (fx.model, &so, &error);
  ck_assert (sched != NULL);
  const gint64 wait_us = 300 * 1000;
  Driver a = { .sched = sched, .index = 0, .steps = 25, .max_wait_us = wait_us,
    .slow_us = wait_us / 2 };
  Driver b = { .sched = sched, .index = 1, .steps = 8, .max_wait_us = wait_us, .stall_after = 3,
    .stall_until = &a.progress, .stall_steps = 25 };
  /* both joined before either runs */
  MoshiConversationOptions opts = { .n_threads = 1, .max_wait_us = wait_us };
  MoshiLmSamplingParams pa = params_for (0), pb = params_for (1);
  a.conv = moshi_conversation_new (sched, fx.model, &pa, &opts, &error);
  b.conv = moshi_conversation_new (sched, fx.model, &pb, &opts, &error);
  ck_assert (a.conv && b.conv);
  GThread *ta = g_thread_new ("a", drive, &a);
  GThread *tb = g_thread_new ("b", drive, &b);
  g_thread_join (ta);
  g_thread_join (tb);
  MoshiSchedulerStats st;
  moshi_scheduler_get_stats (sched, &st);
  printf ("stalled peer: %d of conversation A's 25 steps waited over %" G_GINT64_FORMAT
      " ms; late frames %" G_GUINT64_FORMAT "\n", a.slow_steps, a.slow_us / 1000, st.late_frames);
  /* B's stall costs A one wait of at most max_wait (two if B's resumption races A's end) */
  ck_assert_int_ge (st.late_frames, 1);
  ck_assert_int_le (st.late_frames, 2);
  ck_assert_int_le (a.slow_steps, 2);
  check_against_solo (&a);
  check_against_solo (&b);
  fixture_close ();
}
END_TEST

typedef struct {
  MoshiConversation *conv;
  const float *pcm;
  gboolean ok;
  GError *error;
} OneStep;

static gpointer
one_step (gpointer data)
{
  OneStep *s = data;
  MoshiDialogFrame f;
  g_autofree float *out = g_new (float, fx.frame);
  s->ok = moshi_conversation_step_pcm (s->conv, s->pcm, &f, out, &s->error);
  return NULL;
}

START_TEST (test_scheduler_errors)
{
  fixture_open ();
  GError *error = NULL;
  MoshiSchedulerOptions so = { .max_conversations = 2, .n_threads = 1 };
  g_autoptr (MoshiScheduler) sched = moshi_scheduler_new (fx.model, &so, &error);
  ck_assert (sched != NULL);
  ck_assert_int_eq (moshi_scheduler_max_conversations (sched), 2);
  g_autoptr (MoshiConversation) a = moshi_conversation_new (sched, fx.model, NULL, NULL, &error);
  g_autoptr (MoshiConversation) b = moshi_conversation_new (sched, fx.model, NULL, NULL, &error);
  ck_assert (a && b);
  /* a third one is refused, with the limit named */
  ck_assert_ptr_null (moshi_conversation_new (sched, fx.model, NULL, NULL, &error));
  ck_assert_int_eq (error->code, MOSHI_ERROR_BUSY);
  moshi_assert_error_contains (error, "maximum of 2");
  g_clear_error (&error);

  /* bad audio in one conversation fails its step alone, whatever shares the tick */
  g_autofree float *good = g_new0 (float, fx.frame);
  g_autofree float *bad = g_new0 (float, fx.frame);
  bad[7] = NAN;
  for (int round = 0; round < 3; round++) {
    OneStep sa = { a, bad, FALSE, NULL }, sb = { b, good, FALSE, NULL };
    GThread *ta = g_thread_new ("a", one_step, &sa), *tb = g_thread_new ("b", one_step, &sb);
    g_thread_join (ta);
    g_thread_join (tb);
    ck_assert (!sa.ok);
    moshi_assert_error_contains (sa.error, "not finite");
    g_clear_error (&sa.error);
    ck_assert_msg (sb.ok, "%s", sb.error ? sb.error->message : "");
  }
  ck_assert_int_eq (moshi_conversation_steps (a), 0);
  ck_assert_int_eq (moshi_conversation_steps (b), 3);

  /* codes out of range, or too few codebooks */
  MoshiDialogFrame f;
  int32_t codes[8] = { 0, 5000, 0, 0, 0, 0, 0, 0 };
  ck_assert (!moshi_conversation_step_codes (a, codes, 8, &f, NULL, &error));
  moshi_assert_error_contains (error, "codebook 1");
  g_clear_error (&error);
  ck_assert (!moshi_conversation_step_codes (a, codes, 1, &f, NULL, &error));
  moshi_assert_error_contains (error, "1 user codebooks");
  g_clear_error (&error);
  codes[1] = 3;
  ck_assert (moshi_conversation_step_codes (a, codes, 8, &f, NULL, &error));
  ck_assert_int_eq (moshi_conversation_steps (a), 1);
  moshi_conversation_reset (a);
  ck_assert_int_eq (moshi_conversation_steps (a), 0);

  MoshiConversationStats cs;
  moshi_conversation_get_stats (b, &cs);
  ck_assert_int_eq (cs.steps, 3);

  /* a conversation on other models than the scheduler's */
  g_autofree char *lm2_path = moshi_test_data_path ("lm/dialog/model.safetensors");
  g_autofree char *lm2_cfg = moshi_test_data_path ("lm/dialog/config.json");
  MoshiLmLoadOptions lo = { .device = moshi_test_device () };
  g_autoptr (MoshiLm) lm2 = moshi_lm_load (lm2_path, lm2_cfg, &lo, &error);
  ck_assert (lm2 != NULL);
  g_autoptr (MoshiDialogModel) other = moshi_dialog_model_new (lm2, fx.mimi, NULL, &error);
  ck_assert (other != NULL);
  g_clear_pointer (&b, moshi_conversation_free);
  ck_assert_ptr_null (moshi_conversation_new (sched, other, NULL, NULL, &error));
  moshi_assert_error_contains (error, "not the scheduler's");
  g_clear_error (&error);

  /* options out of range */
  MoshiSchedulerOptions too_many = { .max_conversations = MOSHI_SCHEDULER_MAX_CONVERSATIONS + 1 };
  ck_assert_ptr_null (moshi_scheduler_new (fx.model, &too_many, &error));
  moshi_assert_error_contains (error, "max_conversations");
  g_clear_error (&error);
  g_clear_pointer (&a, moshi_conversation_free);
  fixture_close ();
}
END_TEST

/* One scheduler per loaded model in a process, gone with its last user. */
START_TEST (test_shared_scheduler)
{
  fixture_open ();
  GError *error = NULL;
  MoshiScheduler *s1 = moshi_scheduler_get_shared (fx.model, NULL, &error);
  ck_assert (s1 != NULL);
  g_autoptr (MoshiDialogModel) again = moshi_dialog_model_new (fx.lm, fx.mimi, NULL, &error);
  MoshiScheduler *s2 = moshi_scheduler_get_shared (again, NULL, &error);
  ck_assert_ptr_eq (s1, s2);
  ck_assert_int_eq (moshi_scheduler_max_conversations (s1), MOSHI_SCHEDULER_DEFAULT_MAX_CONVERSATIONS);

  /* a MoshiDialog on the scheduler is the same conversation as one running its own steps */
  MoshiLmSamplingParams p = params_for (5);
  MoshiDialogOptions dopts = { .scheduler = s1, .max_wait_us = -1 };
  g_autoptr (MoshiDialog) d = moshi_dialog_new_full (fx.model, &p, &dopts, &error);
  ck_assert_msg (d != NULL, "%s", error ? error->message : "");
  ck_assert_ptr_nonnull (moshi_dialog_get_conversation (d));
  g_autofree float *silence = g_new0 (float, fx.frame);
  Run got, alone;
  run_init (&got, 12);
  for (int t = 0; t < 12; t++) {
    MoshiDialogFrame f;
    ck_assert (moshi_dialog_step_pcm (d, user_frame (5, t, silence), &f,
            got.pcm + (gsize) t * fx.frame, &error));
    run_record (&got, t, &f);
  }
  ck_assert_int_eq (moshi_dialog_steps (d), 12);
  solo_run (5, &alone, 12);
  assert_same_run (5, &got, &alone);
  run_clear (&got);
  run_clear (&alone);
  g_clear_pointer (&d, moshi_dialog_free);
  moshi_scheduler_unref (s2);
  moshi_scheduler_unref (s1);
  /* a private scheduler is another one */
  g_autoptr (MoshiScheduler) own = moshi_scheduler_new (fx.model, NULL, &error);
  g_autoptr (MoshiScheduler) s3 = moshi_scheduler_get_shared (fx.model, NULL, &error);
  ck_assert (own != NULL && s3 != NULL && own != s3);
  fixture_close ();
}
END_TEST

/* Without Mimi, conversations take the user's codes and give the model's: the same tokens as
 * a conversation with Mimi fed the same codes. */
START_TEST (test_codes_only)
{
  fixture_open ();
  GError *error = NULL;
  g_autoptr (MoshiDialogModel) codes_model = moshi_dialog_model_new (fx.lm, NULL, NULL, &error);
  ck_assert_msg (codes_model != NULL, "%s", error ? error->message : "");
  ck_assert_ptr_null (moshi_dialog_model_get_mimi (codes_model));
  ck_assert_int_eq (moshi_dialog_model_frame_size (codes_model), 1920);
  g_autoptr (MoshiScheduler) sched = moshi_scheduler_new (codes_model, NULL, &error);
  ck_assert (sched != NULL);
  MoshiLmSamplingParams p = params_for (3);
  g_autoptr (MoshiConversation) c = moshi_conversation_new (sched, codes_model, &p, NULL, &error);
  g_autoptr (MoshiDialog) with_mimi = moshi_dialog_new (fx.model, &p, 1, &error);
  ck_assert (c && with_mimi);
  int n_user = moshi_dialog_model_user_codebooks (fx.model);
  int dep_q = moshi_dialog_model_model_codebooks (fx.model);
  MoshiTestRng rng;
  moshi_test_rng_init (&rng, 7);
  for (int t = 0; t < 15; t++) {
    int32_t codes[64];
    for (int j = 0; j < n_user; j++)
      codes[j] = (int32_t) ((moshi_test_rng_uniform (&rng) + 1.0f) * 100.0f);
    MoshiDialogFrame a, b;
    ck_assert (moshi_conversation_step_codes (c, codes, n_user, &a, NULL, &error));
    ck_assert (moshi_dialog_step_codes (with_mimi, codes, n_user, &b, NULL, &error));
    ck_assert_int_eq (a.returned, b.returned);
    ck_assert_int_eq (a.text_token, b.text_token);
    ck_assert (memcmp (a.audio_codes, b.audio_codes, dep_q * sizeof (int32_t)) == 0);
    ck_assert_ptr_null (a.text);          /* no tokenizer: no text */
  }
  /* audio needs Mimi */
  g_autofree float *pcm = g_new0 (float, 1920);
  MoshiDialogFrame f;
  ck_assert (!moshi_conversation_step_pcm (c, pcm, &f, NULL, &error));
  moshi_assert_error_contains (error, "no Mimi model");
  g_clear_error (&error);
  int32_t zeros[64] = { 0 };
  ck_assert (!moshi_conversation_step_codes (c, zeros, n_user, &f, pcm, &error));
  moshi_assert_error_contains (error, "no Mimi model");
  g_clear_error (&error);
  g_autoptr (MoshiDialog) d = moshi_dialog_new (codes_model, &p, 1, &error);
  ck_assert (d != NULL);
  ck_assert (!moshi_dialog_step_pcm (d, pcm, &f, NULL, &error));
  moshi_assert_error_contains (error, "no Mimi model");
  g_clear_error (&error);
  ck_assert (moshi_dialog_step_codes (d, zeros, n_user, &f, NULL, &error));
  ck_assert_int_eq (moshi_conversation_steps (c), 15);
  fixture_close ();
}
END_TEST

/* ------------------------------------------------------------------ Mimi streams */

/* Mimi streams on a scheduler without an LM: even streams encode, odd ones decode; tolerances
 * as tests/test-mimi.c's batches (codes equal, PCM within 1e-5 relative L2 of the stream's
 * session stepped alone). */
#define STREAM_PCM_TOLERANCE 1e-5

typedef struct {
  MoshiScheduler *sched;
  int index, steps;
  int wait_for_peer_steps;
  gint *peer_progress;
  gint progress;
  int32_t *codes;               /* encoders: [steps][8] */
  float *pcm;                   /* decoders: [steps][frame] */
} StreamDriver;

#define STREAM_CODEBOOKS 8

static void
stream_input_codes (int index, int t, int32_t *codes)
{
  int bins = moshi_mimi_codebook_size (fx.mimi);
  for (int l = 0; l < STREAM_CODEBOOKS; l++)
    codes[l] = (t * 31 + index * 7 + l * 13) % bins;
}

static gpointer
drive_stream (gpointer data)
{
  StreamDriver *d = data;
  GError *error = NULL;
  if (d->peer_progress)
    wait_for (d->peer_progress, d->wait_for_peer_steps);
  MoshiMimiSessionOptions opts = { .n_threads = 1, .num_codebooks = STREAM_CODEBOOKS };
  g_autoptr (MoshiMimiStream) stream = moshi_mimi_stream_new (d->sched, &opts, -1, &error);
  ck_assert_msg (stream != NULL, "%s", error ? error->message : "");
  g_autofree float *silence = g_new0 (float, fx.frame);
  for (int t = 0; t < d->steps; t++) {
    if (d->index % 2 == 0) {
      ck_assert_msg (moshi_mimi_stream_encode (stream, user_frame (d->index, t, silence),
              d->codes + t * STREAM_CODEBOOKS, &error), "%s", error ? error->message : "");
    } else {
      int32_t in[STREAM_CODEBOOKS];
      stream_input_codes (d->index, t, in);
      ck_assert_msg (moshi_mimi_stream_decode (stream, in, STREAM_CODEBOOKS,
              d->pcm + (gsize) t * fx.frame, &error), "%s", error ? error->message : "");
    }
    g_atomic_int_inc (&d->progress);
  }
  MoshiConversationStats st;
  moshi_mimi_stream_get_stats (stream, &st);
  ck_assert_int_eq (st.steps, d->steps);
  return NULL;
}

static void
check_stream_against_solo (StreamDriver *d)
{
  GError *error = NULL;
  MoshiMimiSessionOptions opts = { .n_threads = 1, .num_codebooks = STREAM_CODEBOOKS,
    .max_frames_per_call = 1 };
  g_autoptr (MoshiMimiSession) solo = moshi_mimi_session_new (fx.mimi, &opts, &error);
  g_autofree float *silence = g_new0 (float, fx.frame);
  g_autofree float *pcm = g_new (float, (gsize) d->steps * fx.frame);
  int differ = 0;
  for (int t = 0; t < d->steps; t++) {
    if (d->index % 2 == 0) {
      int32_t codes[STREAM_CODEBOOKS];
      ck_assert (moshi_mimi_session_encode (solo, user_frame (d->index, t, silence), 1, codes,
              &error));
      for (int l = 0; l < STREAM_CODEBOOKS; l++)
        differ += codes[l] != d->codes[t * STREAM_CODEBOOKS + l];
    } else {
      int32_t in[STREAM_CODEBOOKS];
      stream_input_codes (d->index, t, in);
      ck_assert (moshi_mimi_session_decode (solo, in, STREAM_CODEBOOKS, 1,
              pcm + (gsize) t * fx.frame, &error));
    }
  }
  ck_assert_msg (differ == 0, "stream %d: %d codes differ from its session alone", d->index,
      differ);
  if (d->index % 2 == 1) {
    double rel = moshi_test_rel_l2 (d->pcm, pcm, (gsize) d->steps * fx.frame);
    ck_assert_msg (rel <= STREAM_PCM_TOLERANCE, "stream %d: decoded audio %.3g relative L2 "
        "from its session alone", d->index, rel);
  }
}

/* Encoders and decoders sharing ticks; one joins late and one leaves early. */
START_TEST (test_mimi_streams)
{
  fixture_open ();
  GError *error = NULL;
  int n = n_conversations (6), steps = 20;
  MoshiSchedulerOptions so = { .max_conversations = n, .n_threads = 2 };
  g_autoptr (MoshiScheduler) sched = moshi_scheduler_new_mimi (fx.mimi, &so, &error);
  ck_assert_msg (sched != NULL, "%s", error ? error->message : "");
  StreamDriver *drivers = g_new0 (StreamDriver, n);
  GThread **threads = g_new0 (GThread *, n);
  gint64 start = g_get_monotonic_time ();
  for (int i = 0; i < n; i++) {
    StreamDriver *d = &drivers[i];
    *d = (StreamDriver) { .sched = sched, .index = i, .steps = steps };
    if (i == 1)
      d->steps = steps / 2;             /* leaves early */
    if (i == n - 1 && n > 2) {
      d->peer_progress = &drivers[0].progress;   /* joins once stream 0 has run 5 frames */
      d->wait_for_peer_steps = 5;
    }
    d->codes = g_new0 (int32_t, (gsize) d->steps * STREAM_CODEBOOKS);
    d->pcm = g_new0 (float, (gsize) d->steps * fx.frame);
  }
  for (int i = 0; i < n; i++)
    threads[i] = g_thread_new ("stream", drive_stream, &drivers[i]);
  for (int i = 0; i < n; i++)
    g_thread_join (threads[i]);
  MoshiSchedulerStats st;
  moshi_scheduler_get_stats (sched, &st);
  printf ("%d Mimi streams through the scheduler in %.0f ms: %" G_GUINT64_FORMAT " ticks for %"
      G_GUINT64_FORMAT " frames, tick p50 %.2f ms\n", n, (g_get_monotonic_time () - start) / 1e3,
      st.ticks, st.steps, st.tick_ms_p50);
  ck_assert_int_eq (st.conversations, 0);
  ck_assert_msg (n < 2 || st.ticks < st.steps, "the streams shared no tick");
  for (int i = 0; i < n; i++) {
    check_stream_against_solo (&drivers[i]);
    g_free (drivers[i].codes);
    g_free (drivers[i].pcm);
  }
  g_free (drivers);
  g_free (threads);
  fixture_close ();
}
END_TEST

START_TEST (test_mimi_stream_errors)
{
  fixture_open ();
  GError *error = NULL;
  MoshiSchedulerOptions so = { .max_conversations = 2 };
  g_autoptr (MoshiScheduler) sched = moshi_scheduler_new_mimi (fx.mimi, &so, &error);
  ck_assert (sched != NULL);
  /* no LM: no conversation */
  ck_assert_ptr_null (moshi_conversation_new (sched, fx.model, NULL, NULL, &error));
  moshi_assert_error_contains (error, "Mimi streams only");
  g_clear_error (&error);
  MoshiMimiSessionOptions full = { .full_context = TRUE };
  ck_assert_ptr_null (moshi_mimi_stream_new (sched, &full, 0, &error));
  moshi_assert_error_contains (error, "full_context");
  g_clear_error (&error);

  g_autoptr (MoshiMimiStream) a = moshi_mimi_stream_new (sched, NULL, 0, &error);
  g_autoptr (MoshiMimiStream) b = moshi_mimi_stream_new (sched, NULL, 0, &error);
  ck_assert (a != NULL && b != NULL);
  ck_assert_ptr_null (moshi_mimi_stream_new (sched, NULL, 0, &error));
  ck_assert_int_eq (error->code, MOSHI_ERROR_BUSY);
  moshi_assert_error_contains (error, "maximum of 2 Mimi streams");
  g_clear_error (&error);

  /* bad input fails its own call and leaves the stream as it was */
  g_autofree float *pcm = g_new0 (float, fx.frame);
  g_autofree float *out = g_new0 (float, fx.frame);
  int32_t codes[STREAM_CODEBOOKS], again[STREAM_CODEBOOKS];
  pcm[3] = NAN;
  ck_assert (!moshi_mimi_stream_encode (a, pcm, codes, &error));
  moshi_assert_error_contains (error, "not finite");
  g_clear_error (&error);
  pcm[3] = 0.0f;
  ck_assert (moshi_mimi_stream_encode (a, pcm, codes, &error));
  moshi_mimi_stream_reset (a);
  ck_assert (moshi_mimi_stream_encode (a, pcm, again, &error));
  ck_assert_mem_eq (codes, again, sizeof codes);
  int32_t bad[STREAM_CODEBOOKS] = { 0, 1, 100000 };
  ck_assert (!moshi_mimi_stream_decode (b, bad, 3, out, &error));
  moshi_assert_error_contains (error, "outside");
  g_clear_error (&error);
  ck_assert (moshi_mimi_stream_decode (b, codes, STREAM_CODEBOOKS, out, &error));
  ck_assert_ptr_nonnull (moshi_mimi_stream_get_session (b));

  /* a scheduler with an LM takes no stream */
  g_autoptr (MoshiScheduler) dialog = moshi_scheduler_new (fx.model, &so, &error);
  ck_assert_ptr_null (moshi_mimi_stream_new (dialog, NULL, 0, &error));
  moshi_assert_error_contains (error, "Mimi alone");
  g_clear_error (&error);

  /* shared per Mimi, apart from the dialog schedulers */
  g_autoptr (MoshiScheduler) s1 = moshi_scheduler_get_shared_mimi (fx.mimi, NULL, &error);
  g_autoptr (MoshiScheduler) s2 = moshi_scheduler_get_shared_mimi (fx.mimi, NULL, &error);
  g_autoptr (MoshiScheduler) s3 = moshi_scheduler_get_shared (fx.model, NULL, &error);
  ck_assert (s1 != NULL && s1 == s2 && s3 != s1);
  fixture_close ();
}
END_TEST

static Suite *
scheduler_suite (void)
{
  Suite *s = suite_create ("scheduler");
  TCase *tc = tcase_create ("conversations");
  tcase_set_timeout (tc, 600);
  tcase_add_test (tc, test_conversations_equal_solo);
  suite_add_tcase (s, tc);
  tc = tcase_create ("membership");
  tcase_set_timeout (tc, 600);
  tcase_add_test (tc, test_join_and_leave);
  suite_add_tcase (s, tc);
  /* timed against max_wait: on the CPU only (an emulated tick is slower than the wait) */
  tc = tcase_create ("stall");
  tcase_set_timeout (tc, 600);
  tcase_add_test (tc, test_stalled_conversation);
  suite_add_tcase (s, tc);
  tc = tcase_create ("api");
  tcase_set_timeout (tc, 600);
  tcase_add_test (tc, test_scheduler_errors);
  tcase_add_test (tc, test_shared_scheduler);
  tcase_add_test (tc, test_codes_only);
  suite_add_tcase (s, tc);
  tc = tcase_create ("mimi");
  tcase_set_timeout (tc, 600);
  tcase_add_test (tc, test_mimi_streams);
  tcase_add_test (tc, test_mimi_stream_errors);
  suite_add_tcase (s, tc);
  return s;
}

int
main (void)
{
  moshi_test_require_device ();
  return moshi_test_run_suite (scheduler_suite ());
}
