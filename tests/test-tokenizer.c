/* The SentencePiece reader against the sentencepiece package (tests/reference/gen_tokenizer.py):
 * every id's piece and type, and the text upstream displays for token sequences. */
#include "test-support.h"

#include "moshi-error.h"
#include "moshi-json.h"
#include "moshi-tokenizer.h"

#include <string.h>

static MoshiJson *
load_golden (void)
{
  g_autofree char *path = moshi_test_data_path ("tokenizer/golden.json");
  g_autofree char *text = NULL;
  gsize len;
  ck_assert (g_file_get_contents (path, &text, &len, NULL));
  GError *error = NULL;
  MoshiJson *json = moshi_json_parse (text, len, path, &error);
  ck_assert_msg (json != NULL, "%s", error ? error->message : "");
  return json;
}

static MoshiTokenizer *
load_tiny (void)
{
  g_autofree char *path = moshi_test_data_path ("tokenizer/tiny.model");
  GError *error = NULL;
  MoshiTokenizer *tok = moshi_tokenizer_load (path, &error);
  ck_assert_msg (tok != NULL, "%s", error ? error->message : "");
  return tok;
}

START_TEST (test_every_piece)
{
  g_autoptr (MoshiJson) golden = load_golden ();
  g_autoptr (MoshiTokenizer) tok = load_tiny ();
  const MoshiJson *pieces = moshi_json_get (golden, "pieces");
  ck_assert_int_eq (moshi_tokenizer_vocab_size (tok), (int) moshi_json_length (pieces));
  static const char *type_names[] = { NULL, "normal", "unknown", "control", "user_defined",
    "unused", "byte" };
  for (gsize i = 0; i < moshi_json_length (pieces); i++) {
    const MoshiJson *p = moshi_json_index (pieces, i);
    gint64 id;
    ck_assert (moshi_json_int64 (moshi_json_get (p, "id"), &id));
    ck_assert_int_eq (id, (gint64) i);
    ck_assert_str_eq (moshi_tokenizer_piece (tok, (int) id), moshi_json_string (moshi_json_get (p, "piece")));
    ck_assert_str_eq (type_names[moshi_tokenizer_piece_type (tok, (int) id)],
        moshi_json_string (moshi_json_get (p, "type")));
  }
  ck_assert_ptr_null (moshi_tokenizer_piece (tok, -1));
  ck_assert_ptr_null (moshi_tokenizer_piece (tok, moshi_tokenizer_vocab_size (tok)));
}
END_TEST

START_TEST (test_display)
{
  g_autoptr (MoshiJson) golden = load_golden ();
  g_autoptr (MoshiTokenizer) tok = load_tiny ();
  const MoshiJson *samples = moshi_json_get (golden, "samples");
  ck_assert_int_gt (moshi_json_length (samples), 5);
  for (gsize i = 0; i < moshi_json_length (samples); i++) {
    const MoshiJson *sample = moshi_json_index (samples, i);
    const MoshiJson *ids = moshi_json_get (sample, "ids");
    GString *shown = g_string_new (NULL);
    for (gsize j = 0; j < moshi_json_length (ids); j++) {
      gint64 id;
      ck_assert (moshi_json_int64 (moshi_json_index (ids, j), &id));
      g_autofree char *text = moshi_tokenizer_display (tok, (int) id, 3, 0);
      if (text)
        g_string_append (shown, text);
    }
    ck_assert_str_eq (shown->str, moshi_json_string (moshi_json_get (sample, "display")));
    g_string_free (shown, TRUE);
  }
  /* padding ids and the LM's initial text token show nothing */
  ck_assert_ptr_null (moshi_tokenizer_display (tok, 3, 3, 0));
  ck_assert_ptr_null (moshi_tokenizer_display (tok, 0, 3, 0));
  ck_assert_ptr_null (moshi_tokenizer_display (tok, 32000, 3, 0));
}
END_TEST

START_TEST (test_bad_files)
{
  g_autofree char *path = moshi_test_data_path ("tokenizer/tiny.model");
  g_autofree char *data = NULL;
  gsize len;
  ck_assert (g_file_get_contents (path, &data, &len, NULL));
  GError *error = NULL;
  /* every truncation is either a clean error or a smaller valid model, never a crash */
  for (gsize cut = 0; cut < len; cut += 97) {
    MoshiTokenizer *tok = moshi_tokenizer_new_from_data ((const guint8 *) data, cut, "cut", &error);
    if (tok == NULL) {
      ck_assert_int_eq (error->code, MOSHI_ERROR_FORMAT);
      moshi_assert_error_contains (error, "cut");
      g_clear_error (&error);
    } else {
      moshi_tokenizer_unref (tok);
    }
  }
  const guint8 junk[] = "this is not a protobuf at all";
  ck_assert_ptr_null (moshi_tokenizer_new_from_data (junk, sizeof (junk) - 1, "junk.model", &error));
  moshi_assert_error_contains (error, "junk.model");
  g_clear_error (&error);
  ck_assert_ptr_null (moshi_tokenizer_load ("/nonexistent/tokenizer.model", &error));
  moshi_assert_error_contains (error, "/nonexistent/tokenizer.model");
  g_clear_error (&error);
}
END_TEST

static Suite *
tokenizer_suite (void)
{
  Suite *s = suite_create ("tokenizer");
  TCase *tc = tcase_create ("sentencepiece");
  tcase_add_test (tc, test_every_piece);
  tcase_add_test (tc, test_display);
  tcase_add_test (tc, test_bad_files);
  suite_add_tcase (s, tc);
  return s;
}

int
main (void)
{
  return moshi_test_run_suite (tokenizer_suite ());
}
