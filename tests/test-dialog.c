/* A full-duplex conversation (Mimi + LM + tokenizer) against the upstream reference: the small
 * dialog LM paired with the small Mimi (tests/reference/gen_lm.py --case dialog). */
#include "test-support.h"

#include "moshi-dialog.h"
#include "moshi-error.h"
#include "moshi-safetensors.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

typedef struct {
  MoshiLm *lm;
  MoshiMimi *mimi;
  MoshiTokenizer *tok;
  MoshiDialogModel *model;
  MoshiSafetensors *golden, *mimi_golden;
} Fixture;

static void
fixture_open (Fixture *fx)
{
  GError *error = NULL;
  g_autofree char *lm = moshi_test_data_path ("lm/dialog/model.safetensors");
  g_autofree char *lm_cfg = moshi_test_data_path ("lm/dialog/config.json");
  g_autofree char *mimi = moshi_test_data_path ("mimi/small/model.safetensors");
  g_autofree char *mimi_cfg = moshi_test_data_path ("mimi/small/config.json");
  g_autofree char *tok = moshi_test_data_path ("tokenizer/tiny.model");
  g_autofree char *golden = moshi_test_data_path ("lm/dialog/golden.safetensors");
  g_autofree char *mimi_golden = moshi_test_data_path ("mimi/small/golden.safetensors");
  /* the conversation on the test device: on CUDA, Mimi frames and LM steps are recorded and
   * replayed, each on its own exec */
  MoshiLmLoadOptions lm_opts = { .device = moshi_test_device () };
  MoshiMimiLoadOptions mimi_opts = { moshi_test_device () };
  fx->lm = moshi_lm_load (lm, lm_cfg, &lm_opts, &error);
  ck_assert_msg (fx->lm != NULL, "%s", error ? error->message : "");
  fx->mimi = moshi_mimi_load (mimi, mimi_cfg, &mimi_opts, &error);
  ck_assert_msg (fx->mimi != NULL, "%s", error ? error->message : "");
  fx->tok = moshi_tokenizer_load (tok, &error);
  ck_assert_msg (fx->tok != NULL, "%s", error ? error->message : "");
  fx->model = moshi_dialog_model_new (fx->lm, fx->mimi, fx->tok, &error);
  ck_assert_msg (fx->model != NULL, "%s", error ? error->message : "");
  fx->golden = moshi_safetensors_open (golden, &error);
  fx->mimi_golden = moshi_safetensors_open (mimi_golden, &error);
  ck_assert (fx->golden && fx->mimi_golden);
}

static void
fixture_close (Fixture *fx)
{
  /* the model holds its own reference to the tokenizer */
  moshi_tokenizer_unref (fx->tok);
  moshi_dialog_model_unref (fx->model);
  moshi_lm_unref (fx->lm);
  moshi_mimi_unref (fx->mimi);
  moshi_safetensors_unref (fx->golden);
  moshi_safetensors_unref (fx->mimi_golden);
}

static const MoshiTensorEntry *
tensor (MoshiSafetensors *st, const char *name)
{
  const MoshiTensorEntry *e = moshi_safetensors_lookup (st, name);
  ck_assert_msg (e != NULL, "golden tensor %s missing", name);
  return e;
}

static MoshiDialog *
greedy_dialog (Fixture *fx)
{
  MoshiLmSamplingParams p;
  moshi_lm_sampling_params_init (&p);
  p.text_temperature = 0;
  p.audio_temperature = 0;
  GError *error = NULL;
  MoshiDialog *d = moshi_dialog_new (fx->model, &p, 1, &error);
  ck_assert_msg (d != NULL, "%s", error ? error->message : "");
  return d;
}

/* The user audio of the golden run: two cycles of the small Mimi's speech and 10 silent frames. */
static float *
user_audio (Fixture *fx, int frames, int frame)
{
  const MoshiTensorEntry *speech = tensor (fx->mimi_golden, "speech.pcm");
  int speech_frames = (int) (speech->nbytes / 4 / frame);
  float *pcm = g_new0 (float, (gsize) frames * frame);
  for (int f = 0, in_cycle = 0; f < frames; f++, in_cycle = (in_cycle + 1) % (speech_frames + 10))
    if (in_cycle < speech_frames)
      memcpy (pcm + (gsize) f * frame, (const float *) speech->data + (gsize) in_cycle * frame,
          frame * sizeof (float));
  return pcm;
}

static void
check_run (Fixture *fx, gboolean from_pcm)
{
  GError *error = NULL;
  const MoshiTensorEntry *user = tensor (fx->golden, "gen.user_codes");
  const MoshiTensorEntry *text = tensor (fx->golden, "gen.text_tokens");
  const MoshiTensorEntry *audio = tensor (fx->golden, "gen.audio_codes");
  const MoshiTensorEntry *pcm_ref = tensor (fx->golden, "gen.decoded_pcm");
  int t = (int) text->shape[1], k_user = (int) user->shape[1], k_model = (int) audio->shape[1];
  int frame = moshi_dialog_model_frame_size (fx->model);
  g_autofree float *in = from_pcm ? user_audio (fx, t, frame) : NULL;
  g_autofree float *out = g_new (float, (gsize) t * frame);
  g_autoptr (MoshiDialog) d = greedy_dialog (fx);
  GString *transcript = g_string_new (NULL), *want_transcript = g_string_new (NULL);
  int mismatches = 0;
  for (int step = 0; step < t; step++) {
    MoshiDialogFrame fr;
    if (from_pcm) {
      ck_assert (moshi_dialog_step_pcm (d, in + (gsize) step * frame, &fr, out + (gsize) step * frame, &error));
    } else {
      int32_t codes[16];
      for (int j = 0; j < k_user; j++)
        codes[j] = (int32_t) ((const int64_t *) user->data)[(gsize) j * t + step];
      ck_assert (moshi_dialog_step_codes (d, codes, k_user, &fr, out + (gsize) step * frame, &error));
    }
    int64_t want_text = ((const int64_t *) text->data)[step];
    ck_assert_int_eq (fr.returned, want_text != -2);
    mismatches += fr.text_token != want_text;
    for (int k = 0; k < k_model; k++)
      mismatches += fr.audio_codes[k] != ((const int64_t *) audio->data)[(gsize) k * t + step];
    if (fr.text)
      g_string_append (transcript, fr.text);
    g_autofree char *shown = want_text >= 0 ? moshi_tokenizer_display (fx->tok, (int) want_text, 3, 0) : NULL;
    if (shown)
      g_string_append (want_transcript, shown);
  }
  ck_assert_int_eq (mismatches, 0);
  ck_assert_str_eq (transcript->str, want_transcript->str);
  ck_assert_int_gt (transcript->len, 0);
  double rel = moshi_test_rel_l2 (out, pcm_ref->data, (gsize) t * frame);
  printf ("dialog from %s: %d steps, tokens equal, transcript \"%s\", speech relative L2 %.3g\n",
      from_pcm ? "audio" : "codes", t, transcript->str, rel);
  ck_assert_msg (rel <= 1e-4, "decoded speech relative error %g", rel);
  ck_assert_int_eq (moshi_dialog_steps (d), t);
  g_string_free (transcript, TRUE);
  g_string_free (want_transcript, TRUE);
}

START_TEST (test_dialog_from_codes)
{
  Fixture fx;
  fixture_open (&fx);
  check_run (&fx, FALSE);
  fixture_close (&fx);
}
END_TEST

START_TEST (test_dialog_from_audio)
{
  Fixture fx;
  fixture_open (&fx);
  check_run (&fx, TRUE);
  fixture_close (&fx);
}
END_TEST

START_TEST (test_dialog_model_mismatch)
{
  GError *error = NULL;
  g_autofree char *lm_path = moshi_test_data_path ("lm/small7b/model.safetensors");
  g_autofree char *lm_cfg = moshi_test_data_path ("lm/small7b/config.json");
  g_autofree char *mimi_path = moshi_test_data_path ("mimi/small/model.safetensors");
  g_autofree char *mimi_cfg = moshi_test_data_path ("mimi/small/config.json");
  g_autoptr (MoshiLm) lm = moshi_lm_load (lm_path, lm_cfg, NULL, &error);
  g_autoptr (MoshiMimi) mimi = moshi_mimi_load (mimi_path, mimi_cfg, NULL, &error);
  ck_assert (lm && mimi);
  ck_assert_ptr_null (moshi_dialog_model_new (lm, mimi, NULL, &error));
  ck_assert_int_eq (error->code, MOSHI_ERROR_CONFIG);
  moshi_assert_error_contains (error, lm_path);
  moshi_assert_error_contains (error, mimi_path);
  g_clear_error (&error);

  /* a tokenizer whose vocabulary is not the LM's text vocabulary */
  g_autofree char *dialog_lm = moshi_test_data_path ("lm/dialog/model.safetensors");
  g_autofree char *dialog_cfg = moshi_test_data_path ("lm/dialog/config.json");
  g_autoptr (MoshiLm) lm2 = moshi_lm_load (dialog_lm, dialog_cfg, NULL, &error);
  ck_assert_ptr_nonnull (lm2);
  g_autofree char *tok_path = moshi_test_data_path ("tokenizer/tiny.model");
  g_autofree char *tok_data = NULL;
  gsize tok_len;
  ck_assert (g_file_get_contents (tok_path, &tok_data, &tok_len, NULL));
  /* the first piece record alone: a one-piece vocabulary */
  gsize first_record = 2 + (guint8) tok_data[1];
  g_autoptr (MoshiTokenizer) small_tok = moshi_tokenizer_new_from_data ((const guint8 *) tok_data,
      first_record, "one-piece.model", &error);
  ck_assert_msg (small_tok != NULL, "%s", error ? error->message : "");
  ck_assert_int_eq (moshi_tokenizer_vocab_size (small_tok), 1);
  ck_assert_ptr_null (moshi_dialog_model_new (lm2, mimi, small_tok, &error));
  moshi_assert_error_contains (error, "one-piece.model");
  moshi_assert_error_contains (error, "text vocabulary of 360");
  g_clear_error (&error);
}
END_TEST

START_TEST (test_dialog_reset_and_errors)
{
  Fixture fx;
  fixture_open (&fx);
  GError *error = NULL;
  g_autoptr (MoshiDialog) d = greedy_dialog (&fx);
  int frame = moshi_dialog_model_frame_size (fx.model);
  g_autofree float *pcm = g_new0 (float, frame);
  MoshiDialogFrame fr;
  ck_assert (moshi_dialog_step_pcm (d, pcm, &fr, NULL, &error));
  ck_assert (!fr.returned);       /* step 0: nothing generated yet */
  ck_assert (moshi_dialog_step_pcm (d, pcm, &fr, NULL, &error));
  ck_assert (fr.returned);
  ck_assert_int_eq (moshi_dialog_steps (d), 2);
  moshi_dialog_reset (d);
  ck_assert_int_eq (moshi_dialog_steps (d), 0);
  pcm[5] = NAN;
  ck_assert (!moshi_dialog_step_pcm (d, pcm, &fr, NULL, &error));
  moshi_assert_error_contains (error, "not finite");
  g_clear_error (&error);
  ck_assert_int_eq (moshi_dialog_steps (d), 0);
  int32_t codes[8] = { 0 };
  ck_assert (!moshi_dialog_step_codes (d, codes, 2, &fr, NULL, &error));
  moshi_assert_error_contains (error, "2 user codebooks");
  g_clear_error (&error);
  fixture_close (&fx);
}
END_TEST

static Suite *
dialog_suite (void)
{
  Suite *s = suite_create ("dialog");
  TCase *tc = tcase_create ("conversation");
  tcase_set_timeout (tc, 300);
  tcase_add_test (tc, test_dialog_from_codes);
  tcase_add_test (tc, test_dialog_from_audio);
  tcase_add_test (tc, test_dialog_model_mismatch);
  tcase_add_test (tc, test_dialog_reset_and_errors);
  suite_add_tcase (s, tc);
  return s;
}

int
main (void)
{
  moshi_test_require_device ();
  return moshi_test_run_suite (dialog_suite ());
}
