/* gst-moshi: the scheduler that steps many conversations on one model together (see
 * moshi-scheduler.h for the contract). */
#include "moshi-scheduler.h"
#include "mimi-internal.h"

#include "moshi-error.h"

#include <stdlib.h>
#include <string.h>

struct _MoshiConversation {
  MoshiScheduler *sched;
  MoshiDialogModel *model;
  MoshiMimiSession *mimi;
  MoshiLmSession *lm;
  int32_t *codes;               /* [encode codebooks]: the user codes of the frame in flight */
  char *text;                   /* display text of the last step */

  /* The frame in flight: written by the owner before it marks the frame pending, then used by
   * the scheduler thread only, until it marks the frame done. */
  const float *pcm;             /* NULL: codes already hold the user's codes */
  MoshiDialogFrame *frame;
  float *out_pcm;
  GError *error;
  /* A Mimi stream's frame (a scheduler without an LM): pcm to encode into enc_codes, or
   * dec_codes (dec_codebooks of them) to decode into out_pcm. */
  int32_t *enc_codes;
  const int32_t *dec_codes;
  int dec_codebooks;

  /* Under the scheduler's lock. */
  gint64 max_wait_us;
  gboolean pending;             /* a frame waits for a tick */
  gboolean done;                /* the frame's tick has run */
  gboolean stalled;             /* missed a tick: not waited for until its next frame */
  gint64 submitted_us;
  MoshiConversationStats stats;
};

struct _MoshiScheduler {
  gint ref_count;
  char *key;                    /* in the shared registry, or NULL */
  MoshiLm *lm;
  MoshiMimi *mimi;
  int max_conversations;
  gint64 frame_us;
  MoshiLmBatch *batch;
  MoshiMimiBatch *mimi_batch;   /* the Mimi encodes, and the decodes, of a tick: one call each */
  GThread *thread;

  GMutex lock;
  GCond work;                   /* to the scheduler thread: a frame arrived, or quit */
  GCond done;                   /* to the owners: a tick has run */
  gboolean quit;
  GPtrArray *joined;            /* MoshiConversation *, in joining order */
  int n_pending;

  /* The tick in progress: the scheduler thread's alone. */
  MoshiConversation **tick;
  MoshiLmSession **sessions;
  int *tick_index;              /* LM batch row -> tick slot */
  /* a Mimi batch call's arguments, one per conversation in it */
  MoshiMimiSession **mimi_sessions;
  const float **mimi_pcm;
  int32_t **mimi_codes;
  float **mimi_out;
  int32_t *user_codes, *text_tokens, *audio_codes;
  gboolean *returned;

  /* Statistics, under the lock. */
  guint64 ticks, steps, deadline_misses, late_frames;
  double tick_ms[MOSHI_SCHEDULER_TICK_HISTORY];
  double tick_ms_max, max_delay_ms;
};

static GMutex shared_lock;
static GHashTable *shared_schedulers;   /* key -> MoshiScheduler (not reffed) */

/* ------------------------------------------------------------------ a tick */

/* One batched Mimi encode for the frames of the tick that came as audio. Audio that is not
 * finite fails its own frame before the call, so that it never fails the others'. */
static void
encode_frames (MoshiScheduler *s, int n)
{
  int m = 0;
  for (int i = 0; i < n; i++) {
    MoshiConversation *c = s->tick[i];
    if (c->pcm == NULL || !moshi_mimi_check_pcm (s->mimi, c->pcm, 1, &c->error))
      continue;
    s->mimi_sessions[m] = c->mimi;
    s->mimi_pcm[m] = c->pcm;
    s->mimi_codes[m] = c->enc_codes ? c->enc_codes : c->codes;
    s->tick_index[m++] = i;
  }
  GError *error = NULL;
  if (m > 0 && !moshi_mimi_batch_encode (s->mimi_batch, s->mimi_sessions, m, s->mimi_pcm,
          s->mimi_codes, &error)) {
    for (int j = 0; j < m; j++)
      s->tick[s->tick_index[j]]->error = g_error_copy (error);
    g_error_free (error);
  }
}

/* Batched Mimi decodes for the frames of the tick that want audio back, one call for each
 * number of codebooks among them (conversations all decode the LM's; Mimi streams say theirs);
 * silence for conversations whose LM has not returned a frame yet. */
static void
decode_frames (MoshiScheduler *s, int n)
{
  int frame_size = moshi_mimi_frame_size (s->mimi);
  int done_below = 0;           /* codebook counts <= this are decoded */
  for (;;) {
    int k = G_MAXINT;
    for (int i = 0; i < n; i++) {
      MoshiConversation *c = s->tick[i];
      int ck = c->lm ? moshi_lm_generated_codebooks (s->lm) : c->dec_codebooks;
      if (c->error == NULL && c->out_pcm != NULL && ck > done_below)
        k = MIN (k, ck);
    }
    if (k == G_MAXINT)
      return;
    done_below = k;
    int m = 0;
    for (int i = 0; i < n; i++) {
      MoshiConversation *c = s->tick[i];
      if (c->error != NULL || c->out_pcm == NULL)
        continue;
      const int32_t *codes = c->lm ? c->frame->audio_codes : c->dec_codes;
      if ((c->lm ? moshi_lm_generated_codebooks (s->lm) : c->dec_codebooks) != k)
        continue;
      if (c->lm && !c->frame->returned) {
        memset (c->out_pcm, 0, frame_size * sizeof (float));
        continue;
      }
      s->mimi_sessions[m] = c->mimi;
      /* [k][frame] with one frame is just the list of codes */
      s->mimi_codes[m] = (int32_t *) codes;
      s->mimi_out[m] = c->out_pcm;
      s->tick_index[m++] = i;
    }
    GError *error = NULL;
    if (m > 0 && !moshi_mimi_batch_decode (s->mimi_batch, s->mimi_sessions, m,
            (const int32_t *const *) s->mimi_codes, k, s->mimi_out, &error)) {
      for (int j = 0; j < m; j++)
        s->tick[s->tick_index[j]]->error = g_error_copy (error);
      g_error_free (error);
    }
  }
}

/* Mimi encodes of every frame, one LM step for all that encoded, Mimi decodes. A frame that
 * fails (bad audio) leaves its conversation as it was and does not touch the others. */
static void
run_tick (MoshiScheduler *s, int n)
{
  if (s->mimi_batch)
    encode_frames (s, n);
  if (s->lm == NULL) {
    decode_frames (s, n);
    return;
  }
  int n_user = moshi_lm_user_codebooks (s->lm);
  int dep_q = moshi_lm_generated_codebooks (s->lm);

  int rows = 0;
  for (int i = 0; i < n; i++) {
    MoshiConversation *c = s->tick[i];
    if (c->error != NULL)
      continue;
    s->sessions[rows] = c->lm;
    s->tick_index[rows] = i;
    memcpy (s->user_codes + (gsize) rows * n_user, c->codes, n_user * sizeof (int32_t));
    rows++;
  }
  if (rows == 0)
    return;

  g_autoptr (GError) error = NULL;
  if (!moshi_lm_batch_step (s->batch, s->sessions, rows, s->user_codes, s->text_tokens,
          s->audio_codes, s->returned, NULL, &error)) {
    for (int r = 0; r < rows; r++)
      s->tick[s->tick_index[r]]->error = g_error_copy (error);
    return;
  }
  for (int r = 0; r < rows; r++) {
    MoshiConversation *c = s->tick[s->tick_index[r]];
    MoshiDialogFrame *f = c->frame;
    memset (f, 0, sizeof (*f));
    f->returned = s->returned[r];
    f->text_token = s->text_tokens[r];
    memcpy (f->audio_codes, s->audio_codes + (gsize) r * dep_q, dep_q * sizeof (int32_t));
    g_clear_pointer (&c->text, g_free);
    if (f->returned)
      c->text = moshi_dialog_model_display (c->model, f->text_token);
    f->text = c->text;
  }
  if (s->mimi_batch)
    decode_frames (s, n);
}

/* ------------------------------------------------------------------ the scheduler thread */

/* Whether a tick is due now; otherwise *wake_us is when it will be at the latest. */
static gboolean
tick_due (MoshiScheduler *s, gint64 now, gint64 *wake_us)
{
  gboolean everyone = TRUE;
  gint64 fire = G_MAXINT64;
  for (guint i = 0; i < s->joined->len; i++) {
    MoshiConversation *c = g_ptr_array_index (s->joined, i);
    if (c->pending)
      fire = MIN (fire, c->submitted_us + c->max_wait_us);
    else if (!c->stalled)
      everyone = FALSE;
  }
  *wake_us = fire;
  return everyone || now >= fire;
}

static double
percentile (const double *sorted, int n, double p)
{
  return sorted[MIN (n - 1, (int) (p * n))];
}

static gpointer
scheduler_thread (gpointer data)
{
  MoshiScheduler *s = data;
  g_mutex_lock (&s->lock);
  for (;;) {
    while (!s->quit && s->n_pending == 0)
      g_cond_wait (&s->work, &s->lock);
    if (s->quit)
      break;
    gint64 wake;
    if (!tick_due (s, g_get_monotonic_time (), &wake)) {
      g_cond_wait_until (&s->work, &s->lock, wake);
      continue;
    }

    int n = 0;
    for (guint i = 0; i < s->joined->len; i++) {
      MoshiConversation *c = g_ptr_array_index (s->joined, i);
      if (c->pending && n < s->max_conversations) {
        s->tick[n++] = c;
        c->pending = FALSE;
        c->stalled = FALSE;
      } else if (!c->pending && !c->stalled) {
        /* expected and not there: the tick goes on without it */
        c->stalled = TRUE;
        c->stats.late_frames++;
        s->late_frames++;
      }
    }
    s->n_pending -= n;
    g_mutex_unlock (&s->lock);

    gint64 start = g_get_monotonic_time ();
    run_tick (s, n);
    gint64 end = g_get_monotonic_time ();

    g_mutex_lock (&s->lock);
    double ms = (end - start) / 1000.0;
    s->tick_ms[s->ticks % MOSHI_SCHEDULER_TICK_HISTORY] = ms;
    s->ticks++;
    s->steps += n;
    s->tick_ms_max = MAX (s->tick_ms_max, ms);
    if (end - start > s->frame_us)
      s->deadline_misses++;
    for (int i = 0; i < n; i++) {
      MoshiConversation *c = s->tick[i];
      double delay = (end - c->submitted_us) / 1000.0;
      c->stats.last_delay_ms = delay;
      c->stats.max_delay_ms = MAX (c->stats.max_delay_ms, delay);
      if (c->error == NULL)
        c->stats.steps++;
      s->max_delay_ms = MAX (s->max_delay_ms, delay);
      c->done = TRUE;
    }
    g_cond_broadcast (&s->done);
  }
  g_mutex_unlock (&s->lock);
  return NULL;
}

/* ------------------------------------------------------------------ the scheduler */

static void
scheduler_free (MoshiScheduler *s)
{
  if (s->thread) {
    g_mutex_lock (&s->lock);
    s->quit = TRUE;
    g_cond_signal (&s->work);
    g_mutex_unlock (&s->lock);
    g_thread_join (s->thread);
  }
  g_ptr_array_unref (s->joined);
  moshi_lm_batch_free (s->batch);
  moshi_mimi_batch_free (s->mimi_batch);
  g_free (s->tick);
  g_free (s->sessions);
  g_free (s->tick_index);
  g_free (s->mimi_sessions);
  g_free (s->mimi_pcm);
  g_free (s->mimi_codes);
  g_free (s->mimi_out);
  g_free (s->user_codes);
  g_free (s->text_tokens);
  g_free (s->audio_codes);
  g_free (s->returned);
  g_mutex_clear (&s->lock);
  g_cond_clear (&s->work);
  g_cond_clear (&s->done);
  if (s->lm)
    moshi_lm_unref (s->lm);
  if (s->mimi)
    moshi_mimi_unref (s->mimi);
  g_free (s->key);
  g_free (s);
}

/* A scheduler for lm (NULL: Mimi streams only) and mimi (NULL: conversations in codes). */
static MoshiScheduler *
scheduler_new (MoshiLm *lm, MoshiMimi *mimi, gint64 frame_us,
    const MoshiSchedulerOptions *options, GError **error)
{
  int max = options && options->max_conversations > 0 ? options->max_conversations
      : MOSHI_SCHEDULER_DEFAULT_MAX_CONVERSATIONS;
  int threads = options ? options->n_threads : 0;
  if (max > MOSHI_SCHEDULER_MAX_CONVERSATIONS || threads < 0 || threads > 256) {
    g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_INVALID_ARGUMENT,
        "scheduler options out of range: max_conversations %d (1..%d), threads %d (0..256)",
        max, MOSHI_SCHEDULER_MAX_CONVERSATIONS, threads);
    return NULL;
  }
  MoshiScheduler *s = g_new0 (MoshiScheduler, 1);
  s->ref_count = 1;
  s->lm = lm ? moshi_lm_ref (lm) : NULL;
  s->mimi = mimi ? moshi_mimi_ref (mimi) : NULL;
  s->max_conversations = max;
  s->frame_us = frame_us;
  s->joined = g_ptr_array_new ();
  g_mutex_init (&s->lock);
  g_cond_init (&s->work);
  g_cond_init (&s->done);
  int n_user = lm ? moshi_lm_user_codebooks (lm) : 0;
  int dep_q = lm ? moshi_lm_generated_codebooks (lm) : 0;
  s->tick = g_new0 (MoshiConversation *, max);
  s->sessions = g_new0 (MoshiLmSession *, max);
  s->tick_index = g_new0 (int, max);
  s->mimi_sessions = g_new0 (MoshiMimiSession *, max);
  s->mimi_pcm = g_new0 (const float *, max);
  s->mimi_codes = g_new0 (int32_t *, max);
  s->mimi_out = g_new0 (float *, max);
  s->user_codes = g_new0 (int32_t, (gsize) max * MAX (n_user, 1));
  s->text_tokens = g_new0 (int32_t, max);
  s->audio_codes = g_new0 (int32_t, (gsize) max * MAX (dep_q, 1));
  s->returned = g_new0 (gboolean, max);
  if ((lm && (s->batch = moshi_lm_batch_new (lm, max, threads, error)) == NULL)
      || (mimi && (s->mimi_batch = moshi_mimi_batch_new (mimi, max, threads, error)) == NULL)
      || (s->thread = g_thread_try_new ("moshi-scheduler", scheduler_thread, s, error)) == NULL) {
    scheduler_free (s);
    return NULL;
  }
  return s;
}

MoshiScheduler *
moshi_scheduler_new (MoshiDialogModel *model, const MoshiSchedulerOptions *options,
    GError **error)
{
  gint64 frame_us = (gint64) G_USEC_PER_SEC * moshi_dialog_model_frame_size (model)
      / moshi_dialog_model_sample_rate (model);
  return scheduler_new (moshi_dialog_model_get_lm (model), moshi_dialog_model_get_mimi (model),
      frame_us, options, error);
}

static gint64
mimi_frame_us (MoshiMimi *mimi)
{
  return (gint64) G_USEC_PER_SEC * moshi_mimi_frame_size (mimi) / moshi_mimi_sample_rate (mimi);
}

MoshiScheduler *
moshi_scheduler_new_mimi (MoshiMimi *mimi, const MoshiSchedulerOptions *options, GError **error)
{
  return scheduler_new (NULL, mimi, mimi_frame_us (mimi), options, error);
}

/* The registered scheduler under key, or a new one from lm and mimi registered under it. */
static MoshiScheduler *
get_shared (const char *key, MoshiLm *lm, MoshiMimi *mimi, gint64 frame_us,
    const MoshiSchedulerOptions *options, GError **error)
{
  g_mutex_lock (&shared_lock);
  if (shared_schedulers == NULL)
    shared_schedulers = g_hash_table_new (g_str_hash, g_str_equal);
  MoshiScheduler *s = g_hash_table_lookup (shared_schedulers, key);
  if (s != NULL) {
    g_atomic_int_inc (&s->ref_count);
  } else if ((s = scheduler_new (lm, mimi, frame_us, options, error)) != NULL) {
    /* The scheduler holds the LM and Mimi, so their addresses stay unique while it lives. */
    s->key = g_strdup (key);
    g_hash_table_insert (shared_schedulers, s->key, s);
  }
  g_mutex_unlock (&shared_lock);
  return s;
}

MoshiScheduler *
moshi_scheduler_get_shared (MoshiDialogModel *model, const MoshiSchedulerOptions *options,
    GError **error)
{
  MoshiLm *lm = moshi_dialog_model_get_lm (model);
  MoshiMimi *mimi = moshi_dialog_model_get_mimi (model);
  g_autofree char *key = g_strdup_printf ("%p/%p", (void *) lm, (void *) mimi);
  gint64 frame_us = (gint64) G_USEC_PER_SEC * moshi_dialog_model_frame_size (model)
      / moshi_dialog_model_sample_rate (model);
  return get_shared (key, lm, mimi, frame_us, options, error);
}

MoshiScheduler *
moshi_scheduler_get_shared_mimi (MoshiMimi *mimi, const MoshiSchedulerOptions *options,
    GError **error)
{
  g_autofree char *key = g_strdup_printf ("mimi/%p", (void *) mimi);
  return get_shared (key, NULL, mimi, mimi_frame_us (mimi), options, error);
}

MoshiScheduler *
moshi_scheduler_ref (MoshiScheduler *s)
{
  g_atomic_int_inc (&s->ref_count);
  return s;
}

void
moshi_scheduler_unref (MoshiScheduler *s)
{
  if (s == NULL)
    return;
  /* The count reaches zero under the registry lock, so a lookup never revives a scheduler
   * being freed. */
  g_mutex_lock (&shared_lock);
  gboolean last = g_atomic_int_dec_and_test (&s->ref_count);
  if (last && s->key)
    g_hash_table_remove (shared_schedulers, s->key);
  g_mutex_unlock (&shared_lock);
  if (last)
    scheduler_free (s);
}

int
moshi_scheduler_max_conversations (MoshiScheduler *s)
{
  return s->max_conversations;
}

static int
compare_doubles (const void *a, const void *b)
{
  double x = *(const double *) a, y = *(const double *) b;
  return (x > y) - (x < y);
}

void
moshi_scheduler_get_stats (MoshiScheduler *s, MoshiSchedulerStats *st)
{
  double sorted[MOSHI_SCHEDULER_TICK_HISTORY];
  memset (st, 0, sizeof (*st));
  g_mutex_lock (&s->lock);
  st->conversations = s->joined->len;
  st->ticks = s->ticks;
  st->steps = s->steps;
  st->deadline_misses = s->deadline_misses;
  st->late_frames = s->late_frames;
  st->max_delay_ms = s->max_delay_ms;
  st->tick_ms_max = s->tick_ms_max;
  int n = (int) MIN (s->ticks, MOSHI_SCHEDULER_TICK_HISTORY);
  if (n > 0)
    st->tick_ms_last = s->tick_ms[(s->ticks - 1) % MOSHI_SCHEDULER_TICK_HISTORY];
  memcpy (sorted, s->tick_ms, n * sizeof (double));
  g_mutex_unlock (&s->lock);
  if (n > 0) {
    qsort (sorted, n, sizeof (double), compare_doubles);
    st->tick_ms_p50 = percentile (sorted, n, 0.50);
    st->tick_ms_p99 = percentile (sorted, n, 0.99);
  }
}

/* ------------------------------------------------------------------ conversations */

void
moshi_conversation_free (MoshiConversation *c)
{
  if (c == NULL)
    return;
  MoshiScheduler *s = c->sched;
  g_mutex_lock (&s->lock);
  g_ptr_array_remove (s->joined, c);
  g_mutex_unlock (&s->lock);
  moshi_mimi_session_free (c->mimi);
  moshi_lm_session_free (c->lm);
  g_free (c->codes);
  g_free (c->text);
  moshi_dialog_model_unref (c->model);
  moshi_scheduler_unref (s);
  g_free (c);
}

static const char *
model_mimi_path (MoshiMimi *mimi)
{
  return mimi ? moshi_mimi_get_path (mimi) : "no Mimi";
}

/* Adds c to the joined conversations, or frees it and fails when max_conversations are in. */
static gboolean
join (MoshiScheduler *s, MoshiConversation *c, GError **error)
{
  g_mutex_lock (&s->lock);
  gboolean full = (int) s->joined->len >= s->max_conversations;
  if (!full)
    g_ptr_array_add (s->joined, c);
  g_mutex_unlock (&s->lock);
  if (full) {
    g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_BUSY,
        "the scheduler of %s already runs its maximum of %d %s",
        s->lm ? moshi_lm_get_path (s->lm) : moshi_mimi_get_path (s->mimi), s->max_conversations,
        s->lm ? "conversations" : "Mimi streams");
    moshi_conversation_free (c);
  }
  return !full;
}

MoshiConversation *
moshi_conversation_new (MoshiScheduler *s, MoshiDialogModel *model,
    const MoshiLmSamplingParams *params, const MoshiConversationOptions *options, GError **error)
{
  if (s->lm == NULL) {
    g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_INVALID_ARGUMENT,
        "the scheduler of %s runs Mimi streams only: it has no LM for a conversation",
        moshi_mimi_get_path (s->mimi));
    return NULL;
  }
  if (moshi_dialog_model_get_lm (model) != s->lm || moshi_dialog_model_get_mimi (model) != s->mimi) {
    g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_INVALID_ARGUMENT,
        "the conversation's models (%s, %s) are not the scheduler's (%s, %s)",
        moshi_lm_get_path (moshi_dialog_model_get_lm (model)),
        model_mimi_path (moshi_dialog_model_get_mimi (model)),
        moshi_lm_get_path (s->lm), model_mimi_path (s->mimi));
    return NULL;
  }
  int threads = options ? options->n_threads : 0;
  int codebooks = moshi_dialog_model_encode_codebooks (model);
  MoshiMimiSessionOptions mopts = { .n_threads = threads, .num_codebooks = codebooks,
    .max_frames_per_call = 1 };
  MoshiConversation *c = g_new0 (MoshiConversation, 1);
  c->sched = moshi_scheduler_ref (s);
  c->model = moshi_dialog_model_ref (model);
  c->codes = g_new0 (int32_t, codebooks);
  c->max_wait_us = options && options->max_wait_us >= 0 ? options->max_wait_us : s->frame_us;
  /* not waited for until its first frame comes */
  c->stalled = TRUE;
  if ((s->mimi && (c->mimi = moshi_mimi_session_new (s->mimi, &mopts, error)) == NULL)
      || (c->lm = moshi_lm_session_new (s->lm, params, error)) == NULL) {
    moshi_conversation_free (c);
    return NULL;
  }
  return join (s, c, error) ? c : NULL;
}

void
moshi_conversation_reset (MoshiConversation *c)
{
  if (c->mimi)
    moshi_mimi_session_reset (c->mimi);
  moshi_lm_session_reset (c->lm);
  g_clear_pointer (&c->text, g_free);
}

void
moshi_conversation_set_sampling_params (MoshiConversation *c, const MoshiLmSamplingParams *params)
{
  moshi_lm_session_set_sampling_params (c->lm, params);
}

int64_t
moshi_conversation_steps (MoshiConversation *c)
{
  return moshi_lm_session_steps (c->lm);
}

void
moshi_conversation_set_max_wait (MoshiConversation *c, gint64 max_wait_us)
{
  g_mutex_lock (&c->sched->lock);
  c->max_wait_us = max_wait_us >= 0 ? max_wait_us : c->sched->frame_us;
  g_mutex_unlock (&c->sched->lock);
}

void
moshi_conversation_get_stats (MoshiConversation *c, MoshiConversationStats *stats)
{
  g_mutex_lock (&c->sched->lock);
  *stats = c->stats;
  g_mutex_unlock (&c->sched->lock);
}

/* Hands the frame to the scheduler and waits for its tick. */
static gboolean
submit (MoshiConversation *c, const float *pcm, MoshiDialogFrame *frame, float *out_pcm,
    GError **error)
{
  MoshiScheduler *s = c->sched;
  c->pcm = pcm;
  c->frame = frame;
  c->out_pcm = out_pcm;
  c->error = NULL;
  g_mutex_lock (&s->lock);
  c->pending = TRUE;
  c->done = FALSE;
  c->submitted_us = g_get_monotonic_time ();
  s->n_pending++;
  g_cond_signal (&s->work);
  while (!c->done)
    g_cond_wait (&s->done, &s->lock);
  g_mutex_unlock (&s->lock);
  if (c->error != NULL) {
    g_propagate_error (error, c->error);
    c->error = NULL;
    return FALSE;
  }
  return TRUE;
}

gboolean
moshi_conversation_step_pcm (MoshiConversation *c, const float *user_pcm, MoshiDialogFrame *frame,
    float *out_pcm, GError **error)
{
  if (!moshi_dialog_model_check_audio (c->model, error))
    return FALSE;
  return submit (c, user_pcm, frame, out_pcm, error);
}

gboolean
moshi_conversation_step_codes (MoshiConversation *c, const int32_t *user_codes, int n_codes,
    MoshiDialogFrame *frame, float *out_pcm, GError **error)
{
  int user = moshi_lm_user_codebooks (c->sched->lm);
  int card = moshi_lm_get_config (c->sched->lm)->card;
  if (out_pcm != NULL && !moshi_dialog_model_check_audio (c->model, error))
    return FALSE;
  if (n_codes < user) {
    g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_INVALID_ARGUMENT,
        "%d user codebooks given; the LM reads %d", n_codes, user);
    return FALSE;
  }
  /* checked here, so that one conversation's bad codes never fail a tick others share */
  for (int j = 0; j < user; j++)
    if (user_codes[j] < -1 || user_codes[j] > card) {
      g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_INVALID_ARGUMENT,
          "user code %d of codebook %d is outside [-1, %d]", user_codes[j], j, card);
      return FALSE;
    }
  memcpy (c->codes, user_codes, user * sizeof (int32_t));
  return submit (c, NULL, frame, out_pcm, error);
}

/* ------------------------------------------------------------------ Mimi streams */

/* A Mimi stream is a conversation without an LM session or dialog model. */
#define STREAM_CONVERSATION(stream) ((MoshiConversation *) (stream))

MoshiMimiStream *
moshi_mimi_stream_new (MoshiScheduler *s, const MoshiMimiSessionOptions *options,
    gint64 max_wait_us, GError **error)
{
  if (s->mimi == NULL || s->lm != NULL) {
    g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_INVALID_ARGUMENT,
        "Mimi streams need a scheduler made for a Mimi alone (moshi_scheduler_new_mimi)");
    return NULL;
  }
  MoshiMimiSessionOptions mopts = { 0 };
  if (options)
    mopts = *options;
  if (mopts.full_context) {
    g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_INVALID_ARGUMENT,
        "a Mimi stream is a streaming session: full_context is not for batches");
    return NULL;
  }
  /* a tick takes one frame */
  mopts.max_frames_per_call = 1;
  MoshiMimiSession *session = moshi_mimi_session_new (s->mimi, &mopts, error);
  if (session == NULL)
    return NULL;
  MoshiConversation *c = g_new0 (MoshiConversation, 1);
  c->sched = moshi_scheduler_ref (s);
  c->mimi = session;
  c->max_wait_us = max_wait_us >= 0 ? max_wait_us : s->frame_us;
  c->stalled = TRUE;
  return join (s, c, error) ? (MoshiMimiStream *) c : NULL;
}

void
moshi_mimi_stream_free (MoshiMimiStream *stream)
{
  moshi_conversation_free (STREAM_CONVERSATION (stream));
}

void
moshi_mimi_stream_reset (MoshiMimiStream *stream)
{
  moshi_mimi_session_reset (STREAM_CONVERSATION (stream)->mimi);
}

MoshiMimiSession *
moshi_mimi_stream_get_session (MoshiMimiStream *stream)
{
  return STREAM_CONVERSATION (stream)->mimi;
}

void
moshi_mimi_stream_set_max_wait (MoshiMimiStream *stream, gint64 max_wait_us)
{
  moshi_conversation_set_max_wait (STREAM_CONVERSATION (stream), max_wait_us);
}

void
moshi_mimi_stream_get_stats (MoshiMimiStream *stream, MoshiConversationStats *stats)
{
  moshi_conversation_get_stats (STREAM_CONVERSATION (stream), stats);
}

gboolean
moshi_mimi_stream_encode (MoshiMimiStream *stream, const float *pcm, int32_t *codes,
    GError **error)
{
  MoshiConversation *c = STREAM_CONVERSATION (stream);
  c->enc_codes = codes;
  c->dec_codes = NULL;
  return submit (c, pcm, NULL, NULL, error);
}

gboolean
moshi_mimi_stream_decode (MoshiMimiStream *stream, const int32_t *codes, int num_codebooks,
    float *pcm, GError **error)
{
  MoshiConversation *c = STREAM_CONVERSATION (stream);
  /* checked here, so that one stream's bad codes never fail the others' batch */
  if (!moshi_mimi_check_codes (c->sched->mimi, codes, num_codebooks, 1, error))
    return FALSE;
  c->enc_codes = NULL;
  c->dec_codes = codes;
  c->dec_codebooks = num_codebooks;
  return submit (c, NULL, NULL, pcm, error);
}
