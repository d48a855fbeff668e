/* gst-moshi: a full-duplex conversation, Mimi + the Moshi LM + the text tokenizer, one 80 ms
 * step at a time: the user's frame in, the model's frame (speech and text) out.
 *
 * MoshiDialogModel bundles the three loaded models and checks that they fit together; it is
 * immutable and shared. MoshiDialog is one conversation on it (its Mimi session, its LM
 * session, its batch runner), used by one thread at a time. */
#pragma once

#include <glib.h>
#include "moshi-api.h"
#include <stdint.h>

#include "moshi-lm.h"
#include "moshi-mimi.h"
#include "moshi-tokenizer.h"

MOSHI_BEGIN_DECLS

#define MOSHI_DIALOG_MAX_CODEBOOKS 64
/* The framing of a conversation without Mimi: the released Mimi's, 80 ms at 24 kHz. */
#define MOSHI_DIALOG_DEFAULT_FRAME_SIZE 1920
#define MOSHI_DIALOG_DEFAULT_SAMPLE_RATE 24000

typedef struct _MoshiDialogModel MoshiDialogModel;
typedef struct _MoshiDialog MoshiDialog;

/* Takes references to lm, mimi and tokenizer (which may be NULL: no text display). Fails,
 * naming the files, when the LM's audio vocabulary differs from Mimi's codebook size, Mimi has
 * fewer codebooks than the LM uses, or the tokenizer's vocabulary is not the LM's text one.
 * mimi may be NULL too: the conversations then take the user's codes and give the model's
 * (no audio), as a server behind Mimi at the edges does. */
MoshiDialogModel *moshi_dialog_model_new (MoshiLm *lm, MoshiMimi *mimi,
    MoshiTokenizer *tokenizer, GError **error);
MoshiDialogModel *moshi_dialog_model_ref (MoshiDialogModel *model);
void moshi_dialog_model_unref (MoshiDialogModel *model);
G_DEFINE_AUTOPTR_CLEANUP_FUNC (MoshiDialogModel, moshi_dialog_model_unref)

MoshiLm *moshi_dialog_model_get_lm (MoshiDialogModel *model);
MoshiMimi *moshi_dialog_model_get_mimi (MoshiDialogModel *model);   /* may be NULL */
/* Samples per step (Mimi's frame size) and the sample rate. */
int moshi_dialog_model_frame_size (MoshiDialogModel *model);
int moshi_dialog_model_sample_rate (MoshiDialogModel *model);
/* Steps between a user frame going in and the model frame of the same time coming out: the
 * LM's largest delay. The model's audio of step n is its frame n - delay_steps. */
int moshi_dialog_model_delay_steps (MoshiDialogModel *model);
/* Codebooks of the user's audio the LM reads, and of the model's audio it writes. */
int moshi_dialog_model_user_codebooks (MoshiDialogModel *model);
int moshi_dialog_model_model_codebooks (MoshiDialogModel *model);
/* Codebooks a conversation's Mimi encodes: as many as the LM reads or writes. */
int moshi_dialog_model_encode_codebooks (MoshiDialogModel *model);
/* A text token as upstream shows it (a leading space starts a word), or NULL for padding or
 * without a tokenizer. g_free it. */
char *moshi_dialog_model_display (MoshiDialogModel *model, int32_t text_token);
/* TRUE when the model has Mimi (audio in and out); otherwise FALSE with an error saying so. */
gboolean moshi_dialog_model_check_audio (MoshiDialogModel *model, GError **error);

typedef struct {
  gboolean returned;          /* FALSE for the first delay_steps steps: nothing generated yet */
  int32_t text_token;
  int32_t audio_codes[MOSHI_DIALOG_MAX_CODEBOOKS];   /* model_codebooks of them */
  const char *text;           /* the token as upstream shows it (leading space starts a word);
                               * NULL for padding or without a tokenizer; valid until the
                               * next step */
} MoshiDialogFrame;

MoshiDialog *moshi_dialog_new (MoshiDialogModel *model, const MoshiLmSamplingParams *params,
    int n_threads, GError **error);

typedef struct _MoshiScheduler MoshiScheduler;
typedef struct _MoshiConversation MoshiConversation;

typedef struct {
  int n_threads;                /* 0 = automatic */
  /* NULL: the conversation runs its own LM steps. Otherwise it joins this scheduler
   * (moshi-scheduler.h), whose ticks step it together with the scheduler's other
   * conversations; fails with MOSHI_ERROR_BUSY when the scheduler is full. Either way fails
   * with MOSHI_ERROR_NO_MEMORY when its KV cache or buffers do not fit in device memory. */
  MoshiScheduler *scheduler;
  /* With a scheduler: how long a frame may wait for the other conversations' (microseconds;
   * < 0: one frame, 0: never). */
  gint64 max_wait_us;
} MoshiDialogOptions;

/* moshi_dialog_new with options (NULL: as moshi_dialog_new with automatic threads). */
MoshiDialog *moshi_dialog_new_full (MoshiDialogModel *model, const MoshiLmSamplingParams *params,
    const MoshiDialogOptions *options, GError **error);
/* The conversation on the scheduler, or NULL for a dialog running its own steps. */
MoshiConversation *moshi_dialog_get_conversation (MoshiDialog *dialog);
void moshi_dialog_free (MoshiDialog *dialog);
G_DEFINE_AUTOPTR_CLEANUP_FUNC (MoshiDialog, moshi_dialog_free)
void moshi_dialog_reset (MoshiDialog *dialog);
/* See moshi_lm_session_set_sampling_params: from the next step, the seed from the next reset. */
void moshi_dialog_set_sampling_params (MoshiDialog *dialog, const MoshiLmSamplingParams *params);
int64_t moshi_dialog_steps (MoshiDialog *dialog);

/* One step from the user's audio (frame_size mono samples). out_pcm, when not NULL, receives
 * frame_size samples of the model's speech (silence while nothing is generated yet). */
gboolean moshi_dialog_step_pcm (MoshiDialog *dialog, const float *user_pcm, MoshiDialogFrame *frame,
    float *out_pcm, GError **error);
/* The same from the user's Mimi codes (at least user_codebooks of them). */
gboolean moshi_dialog_step_codes (MoshiDialog *dialog, const int32_t *user_codes, int n_codes,
    MoshiDialogFrame *frame, float *out_pcm, GError **error);

MOSHI_END_DECLS
