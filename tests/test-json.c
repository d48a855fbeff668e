/* Tests of the strict JSON reader (lib/core/moshi-json.c). */
#include <math.h>
#include <string.h>

#include "moshi-error.h"
#include "moshi-json.h"
#include "test-support.h"

static MoshiJson *
parse_ok (const char *text)
{
  g_autoptr (GError) error = NULL;
  MoshiJson *json = moshi_json_parse (text, strlen (text), "test", &error);
  ck_assert_msg (json != NULL, "'%s' failed to parse: %s", text, error ? error->message : "?");
  ck_assert_ptr_null (error);
  return json;
}

/* Parses len bytes that must be rejected, and checks that the message names the source and
 * the byte offset where the problem was found. */
static void
check_rejected_len (const char *text, gsize len, gsize offset, const char *problem)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (MoshiJson) json = moshi_json_parse (text, len, "doc.json", &error);
  ck_assert_msg (json == NULL, "'%.*s' was accepted", (int) len, text);
  ck_assert_msg (error != NULL, "no error set for '%.*s'", (int) len, text);
  ck_assert_msg (g_error_matches (error, MOSHI_ERROR, MOSHI_ERROR_FORMAT),
      "wrong error domain/code for '%.*s': %s", (int) len, text, error->message);
  ck_assert_msg (g_str_has_prefix (error->message, "doc.json: "), "message '%s' lacks the source",
      error->message);
  g_autofree char *at = g_strdup_printf (" at byte %" G_GSIZE_FORMAT, offset);
  ck_assert_msg (g_str_has_suffix (error->message, at), "message '%s' does not end with '%s'",
      error->message, at);
  if (problem != NULL)
    moshi_assert_error_contains (error, problem);
}

static void
check_rejected (const char *text, gsize offset, const char *problem)
{
  check_rejected_len (text, strlen (text), offset, problem);
}

/* ---- valid documents ---- */

START_TEST (test_scalars)
{
  g_autoptr (MoshiJson) null = parse_ok ("null");
  ck_assert_int_eq (moshi_json_kind (null), MOSHI_JSON_NULL);
  ck_assert_uint_eq (moshi_json_length (null), 0);
  ck_assert_ptr_null (moshi_json_string (null));

  gboolean b = FALSE;
  g_autoptr (MoshiJson) t = parse_ok (" true ");
  ck_assert_int_eq (moshi_json_kind (t), MOSHI_JSON_TRUE);
  ck_assert (moshi_json_bool (t, &b));
  ck_assert (b);
  g_autoptr (MoshiJson) f = parse_ok ("\n\t\rfalse\r\n");
  ck_assert_int_eq (moshi_json_kind (f), MOSHI_JSON_FALSE);
  ck_assert (moshi_json_bool (f, &b));
  ck_assert (!b);
  ck_assert (!moshi_json_bool (null, &b));

  g_autoptr (MoshiJson) s = parse_ok ("\"hello\"");
  ck_assert_int_eq (moshi_json_kind (s), MOSHI_JSON_STRING);
  ck_assert_str_eq (moshi_json_string (s), "hello");
  gint64 i;
  double d;
  ck_assert (!moshi_json_int64 (s, &i));
  ck_assert (!moshi_json_double (s, &d));
  ck_assert (!moshi_json_bool (s, &b));

  g_autoptr (MoshiJson) empty = parse_ok ("\"\"");
  ck_assert_str_eq (moshi_json_string (empty), "");

  g_autoptr (MoshiJson) n = parse_ok ("42");
  ck_assert_int_eq (moshi_json_kind (n), MOSHI_JSON_NUMBER);
  ck_assert (moshi_json_int64 (n, &i));
  ck_assert_int_eq (i, 42);
  ck_assert (moshi_json_double (n, &d));
  ck_assert_double_eq (d, 42.0);
  ck_assert_ptr_null (moshi_json_string (n));
}
END_TEST

START_TEST (test_kind_names)
{
  ck_assert_str_eq (moshi_json_kind_name (MOSHI_JSON_NULL), "null");
  ck_assert_str_eq (moshi_json_kind_name (MOSHI_JSON_TRUE), "boolean");
  ck_assert_str_eq (moshi_json_kind_name (MOSHI_JSON_FALSE), "boolean");
  ck_assert_str_eq (moshi_json_kind_name (MOSHI_JSON_NUMBER), "number");
  ck_assert_str_eq (moshi_json_kind_name (MOSHI_JSON_STRING), "string");
  ck_assert_str_eq (moshi_json_kind_name (MOSHI_JSON_ARRAY), "array");
  ck_assert_str_eq (moshi_json_kind_name (MOSHI_JSON_OBJECT), "object");
}
END_TEST

START_TEST (test_numbers)
{
  static const struct { const char *text; double value; gboolean is_int; gint64 int_value; } cases[] = {
    { "0", 0.0, TRUE, 0 },
    { "-0", -0.0, TRUE, 0 },
    { "7", 7.0, TRUE, 7 },
    { "-12", -12.0, TRUE, -12 },
    { "3.25", 3.25, FALSE, 0 },
    { "-0.5", -0.5, FALSE, 0 },
    { "1e3", 1000.0, FALSE, 0 },
    { "1E+2", 100.0, FALSE, 0 },
    { "25e-2", 0.25, FALSE, 0 },
    { "0.0", 0.0, FALSE, 0 },
    { "1.5e300", 1.5e300, FALSE, 0 },
    { "1e-400", 0.0, FALSE, 0 },   /* underflow rounds to zero and is accepted */
  };
  for (gsize k = 0; k < G_N_ELEMENTS (cases); k++) {
    g_autoptr (MoshiJson) n = parse_ok (cases[k].text);
    double d = NAN;
    gint64 i = -99;
    ck_assert_msg (moshi_json_double (n, &d), "%s", cases[k].text);
    ck_assert_msg (d == cases[k].value, "%s gave %g", cases[k].text, d);
    ck_assert_msg (moshi_json_int64 (n, &i) == cases[k].is_int, "%s", cases[k].text);
    if (cases[k].is_int)
      ck_assert_int_eq (i, cases[k].int_value);
  }

  /* Locale-independent: the decimal point is always '.'. */
  g_autoptr (MoshiJson) pi = parse_ok ("3.14159");
  double d;
  ck_assert (moshi_json_double (pi, &d));
  ck_assert (fabs (d - 3.14159) < 1e-12);

  /* A value that overflows a double is not silently turned into infinity. */
  g_autoptr (MoshiJson) huge = parse_ok ("1e400");
  ck_assert (!moshi_json_double (huge, &d));
  ck_assert (!moshi_json_int64 (huge, NULL));
}
END_TEST

START_TEST (test_int64_limits)
{
  gint64 v;
  g_autoptr (MoshiJson) max = parse_ok ("9223372036854775807");
  ck_assert (moshi_json_int64 (max, &v));
  ck_assert (v == G_MAXINT64);

  g_autoptr (MoshiJson) min = parse_ok ("-9223372036854775808");
  ck_assert (moshi_json_int64 (min, &v));
  ck_assert (v == G_MININT64);

  /* Exactly one past each limit, and far past them: still valid JSON, but not an int64. */
  static const char *const overflowing[] = {
    "9223372036854775808",
    "-9223372036854775809",
    "10000000000000000000",
    "-10000000000000000000",
    "99999999999999999999999999999999",
  };
  for (gsize k = 0; k < G_N_ELEMENTS (overflowing); k++) {
    g_autoptr (MoshiJson) n = parse_ok (overflowing[k]);
    v = 1234;
    ck_assert_msg (!moshi_json_int64 (n, &v), "%s accepted as int64", overflowing[k]);
    ck_assert_int_eq (v, 1234);
    double d;
    ck_assert (moshi_json_double (n, &d));
  }

  /* 2^53 + 1 is not representable as a double but must come through exactly. */
  g_autoptr (MoshiJson) odd = parse_ok ("9007199254740993");
  ck_assert (moshi_json_int64 (odd, &v));
  ck_assert (v == G_GINT64_CONSTANT (9007199254740993));
}
END_TEST

START_TEST (test_arrays)
{
  g_autoptr (MoshiJson) empty = parse_ok ("[]");
  ck_assert_int_eq (moshi_json_kind (empty), MOSHI_JSON_ARRAY);
  ck_assert_uint_eq (moshi_json_length (empty), 0);
  ck_assert_ptr_null (moshi_json_index (empty, 0));

  g_autoptr (MoshiJson) spaced = parse_ok ("[ \n ]");
  ck_assert_uint_eq (moshi_json_length (spaced), 0);

  g_autoptr (MoshiJson) a = parse_ok ("[1, \"two\", [3, [4]], {\"five\": 5}, null, true, false]");
  ck_assert_uint_eq (moshi_json_length (a), 7);
  gint64 v;
  ck_assert (moshi_json_int64 (moshi_json_index (a, 0), &v));
  ck_assert_int_eq (v, 1);
  ck_assert_str_eq (moshi_json_string (moshi_json_index (a, 1)), "two");
  const MoshiJson *nested = moshi_json_index (a, 2);
  ck_assert_int_eq (moshi_json_kind (nested), MOSHI_JSON_ARRAY);
  ck_assert_uint_eq (moshi_json_length (nested), 2);
  ck_assert_uint_eq (moshi_json_length (moshi_json_index (nested, 1)), 1);
  const MoshiJson *obj = moshi_json_index (a, 3);
  ck_assert (moshi_json_int64 (moshi_json_get (obj, "five"), &v));
  ck_assert_int_eq (v, 5);
  ck_assert_int_eq (moshi_json_kind (moshi_json_index (a, 4)), MOSHI_JSON_NULL);
  ck_assert_int_eq (moshi_json_kind (moshi_json_index (a, 5)), MOSHI_JSON_TRUE);
  ck_assert_int_eq (moshi_json_kind (moshi_json_index (a, 6)), MOSHI_JSON_FALSE);
  ck_assert_ptr_null (moshi_json_index (a, 7));
  /* Arrays have no member names and no members by name. */
  ck_assert_ptr_null (moshi_json_member_name (a, 0));
  ck_assert_ptr_null (moshi_json_get (a, "five"));
}
END_TEST

START_TEST (test_objects)
{
  g_autoptr (MoshiJson) empty = parse_ok ("{}");
  ck_assert_int_eq (moshi_json_kind (empty), MOSHI_JSON_OBJECT);
  ck_assert_uint_eq (moshi_json_length (empty), 0);
  ck_assert_ptr_null (moshi_json_get (empty, "x"));

  g_autoptr (MoshiJson) o = parse_ok ("{\"b\": 1, \"a\": {\"c\": [true]}, \"\": \"empty name\"}");
  ck_assert_uint_eq (moshi_json_length (o), 3);
  /* Members keep the document order. */
  ck_assert_str_eq (moshi_json_member_name (o, 0), "b");
  ck_assert_str_eq (moshi_json_member_name (o, 1), "a");
  ck_assert_str_eq (moshi_json_member_name (o, 2), "");
  ck_assert_ptr_null (moshi_json_member_name (o, 3));
  ck_assert_ptr_eq (moshi_json_get (o, "a"), moshi_json_index (o, 1));
  ck_assert_str_eq (moshi_json_string (moshi_json_get (o, "")), "empty name");
  const MoshiJson *c = moshi_json_get (moshi_json_get (o, "a"), "c");
  ck_assert_int_eq (moshi_json_kind (moshi_json_index (c, 0)), MOSHI_JSON_TRUE);
  ck_assert_ptr_null (moshi_json_get (o, "missing"));
  /* Lookups on non-objects quietly find nothing. */
  ck_assert_ptr_null (moshi_json_get (moshi_json_get (o, "b"), "b"));
  ck_assert_ptr_null (moshi_json_get (NULL, "b"));
}
END_TEST

START_TEST (test_big_object)
{
  /* Like a safetensors header of a big model: many members, each found by name. */
  const int n = 3000;
  GString *text = g_string_new ("{");
  for (int i = 0; i < n; i++)
    g_string_append_printf (text, "%s\"layers.%d.weight\": %d", i > 0 ? "," : "", i, i * 7);
  g_string_append_c (text, '}');
  g_autoptr (MoshiJson) o = parse_ok (text->str);
  g_string_free (text, TRUE);

  ck_assert_uint_eq (moshi_json_length (o), (gsize) n);
  for (int i = 0; i < n; i++) {
    char name[64];
    g_snprintf (name, sizeof name, "layers.%d.weight", i);
    gint64 v;
    ck_assert_msg (moshi_json_int64 (moshi_json_get (o, name), &v), "%s", name);
    ck_assert_int_eq (v, i * 7);
    ck_assert_str_eq (moshi_json_member_name (o, (gsize) i), name);
  }
  ck_assert_ptr_null (moshi_json_get (o, "layers.3000.weight"));
}
END_TEST

START_TEST (test_colliding_names)
{
  /* "ab" and "bA" have the same g_str_hash state after them (h * 33 + c), so all 2^16 names
   * made of 16 such blocks collide in that hash. A hash-indexed object would take quadratic
   * time here; this must stay fast. */
  const int blocks = 16, n = 1 << blocks;
  GString *text = g_string_sized_new ((gsize) n * (2 * blocks + 6));
  g_string_append_c (text, '{');
  for (int i = 0; i < n; i++) {
    g_string_append (text, i > 0 ? ",\"" : "\"");
    for (int b = 0; b < blocks; b++)
      g_string_append (text, (i >> b) & 1 ? "bA" : "ab");
    g_string_append (text, "\":0");
  }
  g_string_append_c (text, '}');
  g_autoptr (MoshiJson) o = parse_ok (text->str);
  g_string_free (text, TRUE);
  ck_assert_uint_eq (moshi_json_length (o), (gsize) n);
  ck_assert_ptr_nonnull (moshi_json_get (o, "abababababababababababababababab"));
  ck_assert_ptr_nonnull (moshi_json_get (o, "bAbAbAbAbAbAbAbAbAbAbAbAbAbAbAbA"));
  ck_assert_ptr_null (moshi_json_get (o, "bAbAbAbAbAbAbAbAbAbAbAbAbAbAbAab "));
}
END_TEST

START_TEST (test_duplicate_in_big_object)
{
  /* The duplicate comes after the object switched from a linear search to its index. */
  GString *text = g_string_new ("{");
  for (int i = 0; i < 20; i++)
    g_string_append_printf (text, "\"k%d\":0,", i);
  gsize dup_at = text->len;
  g_string_append (text, "\"k3\":1}");
  check_rejected (text->str, dup_at, "duplicate key \"k3\"");
  g_string_free (text, TRUE);
}
END_TEST

START_TEST (test_escapes)
{
  g_autoptr (MoshiJson) s = parse_ok ("\"q\\\" b\\\\ s\\/ \\b\\f\\n\\r\\t end\"");
  ck_assert_str_eq (moshi_json_string (s), "q\" b\\ s/ \b\f\n\r\t end");

  g_autoptr (MoshiJson) u = parse_ok ("\"\\u0041\\u00e9\\u00E9\\u20ac\\uFFFF\"");
  ck_assert_str_eq (moshi_json_string (u), "A\xc3\xa9\xc3\xa9\xe2\x82\xac\xef\xbf\xbf");

  g_autoptr (MoshiJson) ctl = parse_ok ("\"\\u001f\"");
  ck_assert_str_eq (moshi_json_string (ctl), "\x1f");
}
END_TEST

START_TEST (test_unicode)
{
  /* Surrogate pairs become one 4-byte UTF-8 sequence: U+1F600 and U+10FFFF. */
  g_autoptr (MoshiJson) pair = parse_ok ("\"\\ud83d\\ude00|\\uDBFF\\uDFFF\"");
  ck_assert_str_eq (moshi_json_string (pair), "\xf0\x9f\x98\x80|\xf4\x8f\xbf\xbf");

  /* Raw UTF-8 of every length passes through unchanged. */
  const char *raw = "\"\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80 \xf4\x8f\xbf\xbf \xed\x9f\xbf\"";
  g_autoptr (MoshiJson) r = parse_ok (raw);
  ck_assert_str_eq (moshi_json_string (r), "\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80 \xf4\x8f\xbf\xbf \xed\x9f\xbf");

  /* Unicode names are looked up byte for byte. */
  g_autoptr (MoshiJson) o = parse_ok ("{\"caf\\u00e9\": 1, \"caf\xc3\xa9x\": 2}");
  gint64 v;
  ck_assert (moshi_json_int64 (moshi_json_get (o, "caf\xc3\xa9"), &v));
  ck_assert_int_eq (v, 1);

  /* The same key, once escaped and once raw, is a duplicate. */
  check_rejected ("{\"caf\\u00e9\": 1, \"caf\xc3\xa9\": 2}", 17, "duplicate key");
}
END_TEST

START_TEST (test_not_nul_terminated)
{
  /* Only len bytes are read: the rest of the buffer must not matter. */
  const char buf[] = "[1,2]garbage";
  g_autoptr (GError) error = NULL;
  g_autoptr (MoshiJson) json = moshi_json_parse (buf, 5, "test", &error);
  ck_assert_ptr_nonnull (json);
  ck_assert_uint_eq (moshi_json_length (json), 2);

  /* A number running up to the very end of the buffer. */
  const char num[] = "12345";
  g_autoptr (MoshiJson) n = moshi_json_parse (num, 3, "test", &error);
  gint64 v;
  ck_assert (moshi_json_int64 (n, &v));
  ck_assert_int_eq (v, 123);

  /* An embedded NUL byte is not whitespace. */
  check_rejected_len ("[1]\0", 4, 3, "trailing data");
}
END_TEST

START_TEST (test_max_depth_accepted)
{
  /* 64 levels of arrays parse; the limit is only there to stop stack bombs. */
  GString *text = g_string_new (NULL);
  for (int i = 0; i < 64; i++)
    g_string_append_c (text, '[');
  for (int i = 0; i < 64; i++)
    g_string_append_c (text, ']');
  g_autoptr (MoshiJson) json = parse_ok (text->str);
  g_string_free (text, TRUE);
  ck_assert_int_eq (moshi_json_kind (json), MOSHI_JSON_ARRAY);
}
END_TEST

/* ---- rejected documents ---- */

START_TEST (test_reject_empty)
{
  check_rejected ("", 0, "empty document");
  check_rejected ("   \n\t ", 6, "empty document");
  check_rejected_len (NULL, 0, 0, "empty document");
}
END_TEST

START_TEST (test_reject_trailing_comma)
{
  check_rejected ("[1, 2,]", 6, "trailing comma in array");
  check_rejected ("[1,\n ]", 5, "trailing comma in array");
  check_rejected ("{\"a\": 1,}", 8, "trailing comma in object");
  check_rejected ("{\"a\": 1, }", 9, "trailing comma in object");
  check_rejected ("[,]", 1, "unexpected character ','");
  check_rejected ("[1,,2]", 3, "unexpected character ','");
}
END_TEST

START_TEST (test_reject_duplicate_key)
{
  check_rejected ("{\"a\": 1, \"a\": 2}", 9, "duplicate key \"a\"");
  check_rejected ("{\"x\": {\"y\": 1, \"y\": 1}}", 15, "duplicate key \"y\"");
  /* Same name in different objects is fine. */
  g_autoptr (MoshiJson) ok = parse_ok ("{\"a\": {\"a\": 1}, \"b\": {\"a\": 2}}");
  ck_assert_ptr_nonnull (ok);
}
END_TEST

START_TEST (test_reject_bad_escape)
{
  check_rejected ("\"\\x\"", 1, "invalid escape '\\x'");
  check_rejected ("\"ab\\'\"", 3, "invalid escape");
  check_rejected ("\"\\u12\"", 1, "invalid \\u escape");
  check_rejected ("\"\\u12G4\"", 1, "invalid \\u escape");
  check_rejected ("\"\\u12", 1, "unterminated \\u escape");
  check_rejected ("\"\\", 1, "unterminated escape");
  check_rejected ("\"\\U0041\"", 1, "invalid escape");
  /* Surrogates must come in high-low pairs. */
  check_rejected ("\"\\udc00\"", 1, "lone low surrogate");
  check_rejected ("\"\\ud800\"", 1, "high surrogate");
  check_rejected ("\"\\ud800x\"", 1, "high surrogate");
  check_rejected ("\"\\ud800\\u0041\"", 1, "high surrogate");
  check_rejected ("\"\\ud800\\ud800\"", 1, "high surrogate");
  check_rejected ("\"ab\\ud800\\n\"", 3, "high surrogate");
  /* NUL would cut the C string short. */
  check_rejected ("\"a\\u0000b\"", 2, "\\u0000");
}
END_TEST

START_TEST (test_reject_control_chars)
{
  check_rejected ("\"a\nb\"", 2, "control character 0x0a");
  check_rejected ("\"\t\"", 1, "control character 0x09");
  check_rejected ("[\"ok\", \"\x01\"]", 8, "control character 0x01");
  check_rejected_len ("\"a\0b\"", 5, 2, "control character 0x00");
  /* DEL is not a control character for JSON. */
  g_autoptr (MoshiJson) del = parse_ok ("\"\x7f\"");
  ck_assert_str_eq (moshi_json_string (del), "\x7f");
}
END_TEST

START_TEST (test_reject_invalid_utf8)
{
  static const struct { const char *text; gsize offset; } cases[] = {
    { "\"\x80\"", 1 },                      /* lone continuation byte */
    { "\"ab\xc3\"", 3 },                    /* truncated 2-byte sequence */
    { "\"\xc3\x28\"", 1 },                  /* bad continuation */
    { "\"\xc0\xaf\"", 1 },                  /* overlong '/' */
    { "\"\xc1\xbf\"", 1 },                  /* overlong */
    { "\"\xe0\x80\xaf\"", 1 },              /* overlong 3-byte */
    { "\"\xed\xa0\x80\"", 1 },              /* encoded surrogate U+D800 */
    { "\"\xed\xbf\xbf\"", 1 },              /* encoded surrogate U+DFFF */
    { "\"\xf0\x80\x80\xaf\"", 1 },          /* overlong 4-byte */
    { "\"\xf4\x90\x80\x80\"", 1 },          /* past U+10FFFF */
    { "\"\xf5\x80\x80\x80\"", 1 },          /* invalid lead byte */
    { "\"\xff\"", 1 },
    { "\"ok \xe2\x82\"", 4 },               /* truncated by the closing quote */
  };
  for (gsize k = 0; k < G_N_ELEMENTS (cases); k++)
    check_rejected (cases[k].text, cases[k].offset, "invalid UTF-8 in string");

  /* A sequence cut off by the end of the buffer. */
  check_rejected_len ("\"\xf0\x9f\x98", 4, 1, "invalid UTF-8 in string");
  /* Non-ASCII bytes outside strings, including a byte order mark. */
  check_rejected ("\xef\xbb\xbf{}", 0, "unexpected byte 0xef");
  check_rejected ("[\xc3\xa9]", 1, "unexpected byte 0xc3");
}
END_TEST

START_TEST (test_reject_unterminated)
{
  check_rejected ("\"abc", 0, "unterminated string");
  check_rejected ("[\"abc", 1, "unterminated string");
  check_rejected ("[1, 2", 5, "unexpected end of input");
  check_rejected ("[", 1, "unexpected end of input");
  check_rejected ("{", 1, "unexpected end of input");
  check_rejected ("{\"a\"", 4, "unexpected end of input, expected ':'");
  check_rejected ("{\"a\":", 5, "unexpected end of input, expected a value");
  check_rejected ("{\"a\": 1", 7, "unexpected end of input");
  check_rejected ("tru", 0, "invalid literal");
  check_rejected ("nul", 0, "invalid literal");
}
END_TEST

START_TEST (test_reject_depth_bomb)
{
  /* 65 levels is one too many; 100000 would blow a naive recursive parser's stack. The 65th
   * container opens after 32 repetitions of the 6-byte pattern. */
  static const int level_counts[] = { 65, 100000 };
  for (gsize k = 0; k < G_N_ELEMENTS (level_counts); k++) {
    GString *text = g_string_new (NULL);
    for (int i = 0; i < level_counts[k]; i++)
      g_string_append (text, i % 2 ? "[" : "{\"k\":");
    check_rejected (text->str, 32 * 6, "nesting deeper than 64 levels");
    g_string_free (text, TRUE);
  }
  g_autofree char *brackets = g_strnfill (200000, '[');
  check_rejected (brackets, 64, "nesting deeper than 64 levels");
}
END_TEST

START_TEST (test_reject_trailing_garbage)
{
  check_rejected ("{} x", 3, "trailing data after the document");
  check_rejected ("[1] [2]", 4, "trailing data");
  check_rejected ("1 2", 2, "trailing data");
  check_rejected ("\"a\"\"b\"", 3, "trailing data");
  check_rejected ("truex", 4, "trailing data");
  check_rejected ("{}}", 2, "trailing data");
}
END_TEST

START_TEST (test_reject_syntax)
{
  /* Not JSON at all, or JSON5/JavaScript extensions. */
  check_rejected ("// comment\n{}", 0, "unexpected character '/'");
  check_rejected ("{/* c */}", 1, "expected a member name string");
  check_rejected ("{a: 1}", 1, "expected a member name string");
  check_rejected ("{'a': 1}", 1, "unexpected character '''");
  check_rejected ("{\"a\" 1}", 5, "expected ':'");
  check_rejected ("{\"a\": 1 \"b\": 2}", 8, "expected ',' or '}'");
  check_rejected ("[1 2]", 3, "expected ',' or ']'");
  check_rejected ("{1: 2}", 1, "expected a member name string");
  check_rejected ("[undefined]", 1, "expected a value");
  check_rejected ("NaN", 0, "expected a value");
  check_rejected ("\x01", 0, "unexpected byte 0x01");
  check_rejected ("'single'", 0, "unexpected character");
  check_rejected ("[True]", 1, "unexpected character 'T'");
  check_rejected ("[nulL]", 1, "invalid literal, expected 'null'");
  check_rejected ("[fals]", 1, "invalid literal, expected 'false'");
}
END_TEST

START_TEST (test_reject_numbers)
{
  check_rejected ("01", 0, "leading zero");
  check_rejected ("[-01]", 2, "leading zero");
  check_rejected ("+1", 0, "unexpected character '+'");
  check_rejected ("-", 1, "expected a digit");
  check_rejected ("-a", 1, "expected a digit");
  check_rejected (".5", 0, "unexpected character '.'");
  check_rejected ("1.", 2, "expected a digit after '.'");
  check_rejected ("1.e3", 2, "expected a digit after '.'");
  check_rejected ("1e", 2, "expected a digit in the exponent");
  check_rejected ("1e+", 3, "expected a digit in the exponent");
  check_rejected ("[1E-]", 4, "expected a digit in the exponent");
  check_rejected ("0x10", 1, "trailing data");
  check_rejected ("Infinity", 0, "expected a value");
  check_rejected ("-Infinity", 1, "expected a digit");
}
END_TEST

START_TEST (test_default_source_name)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (MoshiJson) json = moshi_json_parse ("[", 1, NULL, &error);
  ck_assert_ptr_null (json);
  ck_assert (g_error_matches (error, MOSHI_ERROR, MOSHI_ERROR_FORMAT));
  ck_assert (g_str_has_prefix (error->message, "JSON: "));
  /* A NULL GError ** is allowed. */
  ck_assert_ptr_null (moshi_json_parse ("[", 1, "x", NULL));
}
END_TEST

static Suite *
json_suite (void)
{
  Suite *suite = suite_create ("json");

  TCase *valid = tcase_create ("valid");
  tcase_add_test (valid, test_scalars);
  tcase_add_test (valid, test_kind_names);
  tcase_add_test (valid, test_numbers);
  tcase_add_test (valid, test_int64_limits);
  tcase_add_test (valid, test_arrays);
  tcase_add_test (valid, test_objects);
  tcase_add_test (valid, test_big_object);
  tcase_add_test (valid, test_colliding_names);
  tcase_add_test (valid, test_escapes);
  tcase_add_test (valid, test_unicode);
  tcase_add_test (valid, test_not_nul_terminated);
  tcase_add_test (valid, test_max_depth_accepted);
  suite_add_tcase (suite, valid);

  TCase *invalid = tcase_create ("invalid");
  tcase_add_test (invalid, test_reject_empty);
  tcase_add_test (invalid, test_reject_trailing_comma);
  tcase_add_test (invalid, test_reject_duplicate_key);
  tcase_add_test (invalid, test_duplicate_in_big_object);
  tcase_add_test (invalid, test_reject_bad_escape);
  tcase_add_test (invalid, test_reject_control_chars);
  tcase_add_test (invalid, test_reject_invalid_utf8);
  tcase_add_test (invalid, test_reject_unterminated);
  tcase_add_test (invalid, test_reject_depth_bomb);
  tcase_add_test (invalid, test_reject_trailing_garbage);
  tcase_add_test (invalid, test_reject_syntax);
  tcase_add_test (invalid, test_reject_numbers);
  tcase_add_test (invalid, test_default_source_name);
  suite_add_tcase (suite, invalid);

  return suite;
}

int
main (void)
{
  return moshi_test_run_suite (json_suite ());
}
