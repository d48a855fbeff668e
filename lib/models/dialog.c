#include "moshi-dialog.h"

#include "moshi-error.h"
#include "moshi-scheduler.h"

#include <string.h>

struct _MoshiDialogModel {
  gint ref_count;
  MoshiLm *lm;
  MoshiMimi *mimi;
  MoshiTokenizer *tokenizer;
  int mimi_codebooks;         /* what the Mimi session encodes: max(user, model) codebooks */
};

MoshiDialogModel *
moshi_dialog_model_new (MoshiLm *lm, MoshiMimi *mimi, MoshiTokenizer *tokenizer,
    GError **error)
{
  const MoshiLmConfig *cfg = moshi_lm_get_config (lm);
  int user = moshi_lm_user_codebooks (lm), generated = moshi_lm_generated_codebooks (lm);
  int needed = MAX (user, generated);
  if (generated > MOSHI_DIALOG_MAX_CODEBOOKS || generated < 1) {
    g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_CONFIG,
        "the LM (%s) generates %d codebooks; a conversation takes 1 to %d",
        moshi_lm_get_path (lm), generated, MOSHI_DIALOG_MAX_CODEBOOKS);
    return NULL;
  }
  if (mimi != NULL && moshi_mimi_codebook_size (mimi) != cfg->card) {
    g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_CONFIG,
        "the LM (%s) has an audio vocabulary of %d but the Mimi model (%s) has codebooks of %d entries",
        moshi_lm_get_path (lm), cfg->card, moshi_mimi_get_path (mimi), moshi_mimi_codebook_size (mimi));
    return NULL;
  }
  if (mimi != NULL && needed > moshi_mimi_max_codebooks (mimi)) {
    g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_CONFIG,
        "the LM (%s) uses %d user and %d model codebooks but the Mimi model (%s) has %d",
        moshi_lm_get_path (lm), user, generated, moshi_mimi_get_path (mimi),
        moshi_mimi_max_codebooks (mimi));
    return NULL;
  }
  if (tokenizer && moshi_tokenizer_vocab_size (tokenizer) != cfg->text_card) {
    g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_CONFIG,
        "the tokenizer (%s) has %d pieces but the LM (%s) has a text vocabulary of %d",
        moshi_tokenizer_get_path (tokenizer), moshi_tokenizer_vocab_size (tokenizer),
        moshi_lm_get_path (lm), cfg->text_card);
    return NULL;
  }
  MoshiDialogModel *m = g_new0 (MoshiDialogModel, 1);
  m->ref_count = 1;
  m->lm = moshi_lm_ref (lm);
  m->mimi = mimi ? moshi_mimi_ref (mimi) : NULL;
  m->tokenizer = tokenizer ? moshi_tokenizer_ref (tokenizer) : NULL;
  m->mimi_codebooks = needed;
  return m;
}

MoshiDialogModel *
moshi_dialog_model_ref (MoshiDialogModel *m)
{
  g_atomic_int_inc (&m->ref_count);
  return m;
}

void
moshi_dialog_model_unref (MoshiDialogModel *m)
{
  if (m == NULL || !g_atomic_int_dec_and_test (&m->ref_count))
    return;
  moshi_lm_unref (m->lm);
  if (m->mimi)
    moshi_mimi_unref (m->mimi);
  if (m->tokenizer)
    moshi_tokenizer_unref (m->tokenizer);
  g_free (m);
}

MoshiLm *moshi_dialog_model_get_lm (MoshiDialogModel *m) { return m->lm; }
MoshiMimi *moshi_dialog_model_get_mimi (MoshiDialogModel *m) { return m->mimi; }

/* Without Mimi, the released Mimi's framing, which every Moshi LM is trained on. */
int
moshi_dialog_model_frame_size (MoshiDialogModel *m)
{
  return m->mimi ? moshi_mimi_frame_size (m->mimi) : MOSHI_DIALOG_DEFAULT_FRAME_SIZE;
}

int
moshi_dialog_model_sample_rate (MoshiDialogModel *m)
{
  return m->mimi ? moshi_mimi_sample_rate (m->mimi) : MOSHI_DIALOG_DEFAULT_SAMPLE_RATE;
}

int moshi_dialog_model_user_codebooks (MoshiDialogModel *m) { return moshi_lm_user_codebooks (m->lm); }
int moshi_dialog_model_model_codebooks (MoshiDialogModel *m) { return moshi_lm_generated_codebooks (m->lm); }

int moshi_dialog_model_encode_codebooks (MoshiDialogModel *m) { return m->mimi_codebooks; }

gboolean
moshi_dialog_model_check_audio (MoshiDialogModel *m, GError **error)
{
  if (m->mimi != NULL)
    return TRUE;
  g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_INVALID_ARGUMENT,
      "the conversation on %s has no Mimi model: it takes and gives codes, not audio",
      moshi_lm_get_path (m->lm));
  return FALSE;
}

char *
moshi_dialog_model_display (MoshiDialogModel *m, int32_t text_token)
{
  if (m->tokenizer == NULL)
    return NULL;
  const MoshiLmConfig *cfg = moshi_lm_get_config (m->lm);
  return moshi_tokenizer_display (m->tokenizer, text_token, cfg->existing_text_padding_id,
      cfg->existing_text_end_padding_id);
}

int
moshi_dialog_model_delay_steps (MoshiDialogModel *m)
{
  return moshi_lm_config_max_delay (moshi_lm_get_config (m->lm));
}

struct _MoshiDialog {
  MoshiDialogModel *model;
  MoshiConversation *conversation;   /* on a scheduler: everything else is unused */
  MoshiMimiSession *mimi;
  MoshiLmSession *lm;
  MoshiLmBatch *batch;
  int32_t *codes;             /* [mimi_codebooks] of the current user frame */
  char *text;                 /* display text of the last step */
};

void
moshi_dialog_free (MoshiDialog *d)
{
  if (d == NULL)
    return;
  moshi_conversation_free (d->conversation);
  moshi_mimi_session_free (d->mimi);
  moshi_lm_session_free (d->lm);
  moshi_lm_batch_free (d->batch);
  g_free (d->codes);
  g_free (d->text);
  moshi_dialog_model_unref (d->model);
  g_free (d);
}

MoshiDialog *
moshi_dialog_new (MoshiDialogModel *model, const MoshiLmSamplingParams *params, int n_threads,
    GError **error)
{
  MoshiDialogOptions options = { .n_threads = n_threads };
  return moshi_dialog_new_full (model, params, &options, error);
}

MoshiDialog *
moshi_dialog_new_full (MoshiDialogModel *model, const MoshiLmSamplingParams *params,
    const MoshiDialogOptions *options, GError **error)
{
  MoshiDialogOptions defaults = { 0 };
  if (options == NULL)
    options = &defaults;
  int n_threads = options->n_threads;
  MoshiDialog *d = g_new0 (MoshiDialog, 1);
  d->model = moshi_dialog_model_ref (model);
  if (options->scheduler != NULL) {
    MoshiConversationOptions copts = { .n_threads = n_threads,
      .max_wait_us = options->max_wait_us };
    d->conversation = moshi_conversation_new (options->scheduler, model, params, &copts, error);
    if (d->conversation == NULL) {
      moshi_dialog_free (d);
      return NULL;
    }
    return d;
  }
  MoshiMimiSessionOptions mopts = { .n_threads = n_threads, .num_codebooks = model->mimi_codebooks,
    .max_frames_per_call = 1 };
  d->codes = g_new0 (int32_t, model->mimi_codebooks);
  if ((model->mimi && (d->mimi = moshi_mimi_session_new (model->mimi, &mopts, error)) == NULL)
      || (d->lm = moshi_lm_session_new (model->lm, params, error)) == NULL
      || (d->batch = moshi_lm_batch_new (model->lm, 1, n_threads, error)) == NULL) {
    moshi_dialog_free (d);
    return NULL;
  }
  return d;
}

MoshiConversation *
moshi_dialog_get_conversation (MoshiDialog *d)
{
  return d->conversation;
}

void
moshi_dialog_reset (MoshiDialog *d)
{
  if (d->conversation) {
    moshi_conversation_reset (d->conversation);
    return;
  }
  if (d->mimi)
    moshi_mimi_session_reset (d->mimi);
  moshi_lm_session_reset (d->lm);
  g_clear_pointer (&d->text, g_free);
}

void
moshi_dialog_set_sampling_params (MoshiDialog *d, const MoshiLmSamplingParams *params)
{
  if (d->conversation) {
    moshi_conversation_set_sampling_params (d->conversation, params);
    return;
  }
  moshi_lm_session_set_sampling_params (d->lm, params);
}

int64_t
moshi_dialog_steps (MoshiDialog *d)
{
  if (d->conversation)
    return moshi_conversation_steps (d->conversation);
  return moshi_lm_session_steps (d->lm);
}

static gboolean
finish_step (MoshiDialog *d, const int32_t *user_codes, MoshiDialogFrame *frame, float *out_pcm,
    GError **error)
{
  MoshiDialogModel *m = d->model;
  int generated = moshi_lm_generated_codebooks (m->lm);
  memset (frame, 0, sizeof (*frame));
  if (!moshi_lm_batch_step (d->batch, &d->lm, 1, user_codes, &frame->text_token, frame->audio_codes,
          &frame->returned, NULL, error))
    return FALSE;
  g_clear_pointer (&d->text, g_free);
  if (frame->returned)
    d->text = moshi_dialog_model_display (m, frame->text_token);
  frame->text = d->text;
  if (out_pcm == NULL)
    return TRUE;
  if (!frame->returned) {
    memset (out_pcm, 0, moshi_dialog_model_frame_size (m) * sizeof (float));
    return TRUE;
  }
  /* [k][frame] with one frame is just the list of codes */
  return moshi_mimi_session_decode (d->mimi, frame->audio_codes, generated, 1, out_pcm, error);
}

gboolean
moshi_dialog_step_pcm (MoshiDialog *d, const float *user_pcm, MoshiDialogFrame *frame,
    float *out_pcm, GError **error)
{
  if (d->conversation)
    return moshi_conversation_step_pcm (d->conversation, user_pcm, frame, out_pcm, error);
  if (!moshi_dialog_model_check_audio (d->model, error)
      || !moshi_mimi_session_encode (d->mimi, user_pcm, 1, d->codes, error))
    return FALSE;
  return finish_step (d, d->codes, frame, out_pcm, error);
}

gboolean
moshi_dialog_step_codes (MoshiDialog *d, const int32_t *user_codes, int n_codes,
    MoshiDialogFrame *frame, float *out_pcm, GError **error)
{
  if (d->conversation)
    return moshi_conversation_step_codes (d->conversation, user_codes, n_codes, frame, out_pcm,
        error);
  if (out_pcm != NULL && !moshi_dialog_model_check_audio (d->model, error))
    return FALSE;
  int user = moshi_lm_user_codebooks (d->model->lm);
  if (n_codes < user) {
    g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_INVALID_ARGUMENT,
        "%d user codebooks given; the LM reads %d", n_codes, user);
    return FALSE;
  }
  return finish_step (d, user_codes, frame, out_pcm, error);
}
