/* gst-moshi: many live conversations on one loaded model, stepped together.
 *
 * A MoshiScheduler owns a thread that runs "ticks": each tick takes the user frames that have
 * arrived from its conversations, encodes them with ONE batched Mimi encode, runs ONE batched
 * LM step for all of them and decodes the model's frames with ONE batched Mimi decode (the
 * weights are read once per tick, whatever the number of conversations; MoshiMimiBatch). A
 * MoshiConversation is one conversation on a scheduler; its owner hands it one frame at a time
 * and gets the model's frame back, as with MoshiDialog.
 *
 * When a tick runs: as soon as every conversation that is keeping up has a frame waiting, or
 * when the oldest waiting frame has waited its conversation's max_wait (by default one frame,
 * 80 ms), whichever comes first. A conversation whose frame is late does not hold the others
 * back beyond that: the tick runs without it, the conversation is marked as stalled (not waited
 * for again until its next frame arrives) and its frame goes in a later tick.
 *
 * What a conversation computes does not depend on what shares its ticks: the batched steps
 * give every row the result it gets alone, up to the rounding of the order of sums in a
 * matrix product of more rows (moshi-mimi.h, tests/test-mimi.c), and the random draws are a
 * function of the conversation's seed and step (lib/backend/moshi-sampling.h). So with a fixed
 * seed its tokens equal those of the same conversation run alone through MoshiDialog.
 *
 * Thread safety: the scheduler's calls may come from any thread. A conversation is used by one
 * thread at a time (its owner); step calls block that thread until the tick holding the frame
 * has run. */
#pragma once

#include <glib.h>
#include "moshi-api.h"
#include <stdint.h>

#include "moshi-dialog.h"

MOSHI_BEGIN_DECLS

/* MoshiScheduler and MoshiConversation are declared in moshi-dialog.h: a MoshiDialog may run
 * on a scheduler (moshi_dialog_new_full). */

#define MOSHI_SCHEDULER_DEFAULT_MAX_CONVERSATIONS 64
#define MOSHI_SCHEDULER_MAX_CONVERSATIONS 1024

typedef struct {
  /* Conversations that may be joined at once (also the LM batch size); 0 = the default (64). */
  int max_conversations;
  /* Threads of the batched LM step and Mimi transformer passes, and of the pool that runs the
   * Mimi convolutions of single-threaded conversations in parallel. 0 = automatic. */
  int n_threads;
} MoshiSchedulerOptions;

/* A new scheduler for conversations on model's LM and Mimi. options may be NULL. */
MoshiScheduler *moshi_scheduler_new (MoshiDialogModel *model, const MoshiSchedulerOptions *options,
    GError **error);
/* The scheduler this process already runs for the same loaded LM and Mimi (as
 * moshi_lm_load_shared returns them), or a new one registered for them; options apply only
 * when it is created. Every element of a process that uses one model shares its ticks. */
MoshiScheduler *moshi_scheduler_get_shared (MoshiDialogModel *model,
    const MoshiSchedulerOptions *options, GError **error);
MoshiScheduler *moshi_scheduler_ref (MoshiScheduler *scheduler);
void moshi_scheduler_unref (MoshiScheduler *scheduler);
G_DEFINE_AUTOPTR_CLEANUP_FUNC (MoshiScheduler, moshi_scheduler_unref)

int moshi_scheduler_max_conversations (MoshiScheduler *scheduler);

#define MOSHI_SCHEDULER_TICK_HISTORY 1024

typedef struct {
  int conversations;            /* joined now */
  guint64 ticks;
  guint64 steps;                /* conversation steps run, over all ticks */
  /* Compute time of a tick (Mimi encode + LM step + Mimi decode), over the last
   * MOSHI_SCHEDULER_TICK_HISTORY ticks. */
  double tick_ms_last, tick_ms_p50, tick_ms_p99, tick_ms_max;
  /* Ticks whose compute time exceeded one frame (80 ms): the conversations fell behind real
   * time. */
  guint64 deadline_misses;
  /* Frames that were not there when a tick of their conversation ran (late or stalled). */
  guint64 late_frames;
  /* The longest a frame has waited, from the step call to its result. */
  double max_delay_ms;
} MoshiSchedulerStats;

void moshi_scheduler_get_stats (MoshiScheduler *scheduler, MoshiSchedulerStats *stats);

typedef struct {
  /* Threads of this conversation's Mimi session, 0 = automatic (as MoshiDialog). The Mimi
   * convolutions of single-threaded sessions run in parallel, one conversation per thread of
   * the scheduler: the choice for many conversations on the CPU. */
  int n_threads;
  /* How long this conversation's frame may wait for the others' before a tick runs without
   * them, in microseconds; < 0 = one frame duration (the default); 0 = never wait. */
  gint64 max_wait_us;
} MoshiConversationOptions;

/* Joins a conversation to the scheduler. model must be on the scheduler's LM and Mimi (its
 * tokenizer gives the conversation's text). Fails with MOSHI_ERROR_BUSY when max_conversations
 * are already joined, and with MOSHI_ERROR_NO_MEMORY (the message naming the sizes and the fix)
 * when its KV cache or buffers do not fit in device memory; the scheduler and the other
 * conversations are left as they were. params and options may be NULL. */
MoshiConversation *moshi_conversation_new (MoshiScheduler *scheduler, MoshiDialogModel *model,
    const MoshiLmSamplingParams *params, const MoshiConversationOptions *options, GError **error);
/* Leaves the scheduler. */
void moshi_conversation_free (MoshiConversation *conversation);
G_DEFINE_AUTOPTR_CLEANUP_FUNC (MoshiConversation, moshi_conversation_free)

/* As moshi_dialog_reset / _set_sampling_params / _steps. */
void moshi_conversation_reset (MoshiConversation *conversation);
void moshi_conversation_set_sampling_params (MoshiConversation *conversation,
    const MoshiLmSamplingParams *params);
int64_t moshi_conversation_steps (MoshiConversation *conversation);
void moshi_conversation_set_max_wait (MoshiConversation *conversation, gint64 max_wait_us);

/* One step, as moshi_dialog_step_pcm / moshi_dialog_step_codes: blocks until the tick that
 * takes the frame has run. Bad input (non-finite audio, codes out of range) fails this call
 * alone and leaves the conversation as it was. */
gboolean moshi_conversation_step_pcm (MoshiConversation *conversation, const float *user_pcm,
    MoshiDialogFrame *frame, float *out_pcm, GError **error);
gboolean moshi_conversation_step_codes (MoshiConversation *conversation, const int32_t *user_codes,
    int n_codes, MoshiDialogFrame *frame, float *out_pcm, GError **error);

typedef struct {
  guint64 steps;
  guint64 late_frames;          /* ticks that ran while this conversation's frame was late */
  double last_delay_ms;         /* the last frame, from the step call to its result */
  double max_delay_ms;
} MoshiConversationStats;

void moshi_conversation_get_stats (MoshiConversation *conversation, MoshiConversationStats *stats);

/* ---- Mimi streams: a scheduler without an LM, for Mimi encoders and decoders ----
 * A scheduler made for a Mimi alone runs Mimi streams: in each tick, one batched encode
 * (moshi_mimi_batch_encode) for the streams whose audio frame has come and one batched decode
 * for those whose codes have come (one per number of codebooks among them), so that the
 * encoders and decoders of a process share their weight reads. When a tick runs, and what a
 * late stream costs the others, follow the rules of conversations above; a stream that does
 * not run in real time (a file) should not be waited for: max_wait_us 0. A stream's frames
 * equal those of its session stepped alone, up to the rounding that moshi-mimi.h states. */
typedef struct _MoshiMimiStream MoshiMimiStream;

/* A new scheduler for Mimi streams on mimi; options as for conversations (max_conversations
 * bounds the streams). */
MoshiScheduler *moshi_scheduler_new_mimi (MoshiMimi *mimi, const MoshiSchedulerOptions *options,
    GError **error);
/* The scheduler of Mimi streams this process already runs for mimi (as moshi_mimi_load_shared
 * returns it), or a new one registered for it. */
MoshiScheduler *moshi_scheduler_get_shared_mimi (MoshiMimi *mimi,
    const MoshiSchedulerOptions *options, GError **error);

/* Joins a stream: a streaming Mimi session (options as for moshi_mimi_session_new; frames go
 * one at a time, full_context is refused). max_wait_us as MoshiConversationOptions. Fails with
 * MOSHI_ERROR_BUSY when max_conversations streams are joined, MOSHI_ERROR_NO_MEMORY when the
 * session does not fit in device memory. */
MoshiMimiStream *moshi_mimi_stream_new (MoshiScheduler *scheduler,
    const MoshiMimiSessionOptions *options, gint64 max_wait_us, GError **error);
void moshi_mimi_stream_free (MoshiMimiStream *stream);
G_DEFINE_AUTOPTR_CLEANUP_FUNC (MoshiMimiStream, moshi_mimi_stream_free)

/* One frame, as moshi_mimi_session_encode / _decode with n_frames 1: blocks until the tick that
 * takes it has run. Bad input fails this call alone. */
gboolean moshi_mimi_stream_encode (MoshiMimiStream *stream, const float *pcm, int32_t *codes,
    GError **error);
gboolean moshi_mimi_stream_decode (MoshiMimiStream *stream, const int32_t *codes,
    int num_codebooks, float *pcm, GError **error);

/* As moshi_mimi_session_reset; between frames only. */
void moshi_mimi_stream_reset (MoshiMimiStream *stream);
MoshiMimiSession *moshi_mimi_stream_get_session (MoshiMimiStream *stream);
void moshi_mimi_stream_set_max_wait (MoshiMimiStream *stream, gint64 max_wait_us);
void moshi_mimi_stream_get_stats (MoshiMimiStream *stream, MoshiConversationStats *stats);

MOSHI_END_DECLS
