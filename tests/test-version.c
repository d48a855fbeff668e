/* Tests of the library's version (moshi-version.h), against the shared library with the public
 * headers alone: what a program that checks the version sees. */
#include <stdio.h>

#include <moshi/moshi.h>

#include "test-run.h"

START_TEST (test_string_matches_numbers)
{
  int major = -1, minor = -1, micro = -1;
  moshi_get_version (&major, &minor, &micro);
  char expected[64];
  snprintf (expected, sizeof expected, "%d.%d.%d", major, minor, micro);
  ck_assert_str_eq (moshi_version (), expected);
  /* this test is built with the library, so the headers and the library agree */
  ck_assert_str_eq (moshi_version (), MOSHI_VERSION_STRING);
  ck_assert_int_eq (major, MOSHI_MAJOR_VERSION);
  ck_assert_int_eq (minor, MOSHI_MINOR_VERSION);
  ck_assert_int_eq (micro, MOSHI_MICRO_VERSION);
  /* a caller may want one number alone */
  moshi_get_version (NULL, &minor, NULL);
  ck_assert_int_eq (minor, MOSHI_MINOR_VERSION);
  moshi_get_version (NULL, NULL, NULL);
}
END_TEST

START_TEST (test_check_macro)
{
  ck_assert (MOSHI_CHECK_VERSION (MOSHI_MAJOR_VERSION, MOSHI_MINOR_VERSION, MOSHI_MICRO_VERSION));
  ck_assert (MOSHI_CHECK_VERSION (0, 0, 0));
  ck_assert (MOSHI_CHECK_VERSION (MOSHI_MAJOR_VERSION, 0, 0));
  ck_assert (!MOSHI_CHECK_VERSION (MOSHI_MAJOR_VERSION + 1, 0, 0));
  ck_assert (!MOSHI_CHECK_VERSION (MOSHI_MAJOR_VERSION, MOSHI_MINOR_VERSION + 1, 0));
  ck_assert (!MOSHI_CHECK_VERSION (MOSHI_MAJOR_VERSION, MOSHI_MINOR_VERSION,
          MOSHI_MICRO_VERSION + 1));
  /* a newer minor version satisfies any micro version of an older one */
  if (MOSHI_MINOR_VERSION > 0)
    ck_assert (MOSHI_CHECK_VERSION (MOSHI_MAJOR_VERSION, MOSHI_MINOR_VERSION - 1, 999));
  /* usable in #if, where it matters most */
#if !MOSHI_CHECK_VERSION(0, 1, 0)
  ck_abort_msg ("MOSHI_CHECK_VERSION(0, 1, 0) false in #if");
#endif
}
END_TEST

START_TEST (test_check_runtime)
{
  int major, minor, micro;
  moshi_get_version (&major, &minor, &micro);
  ck_assert_ptr_null (moshi_check_version (major, minor, micro));
  ck_assert_ptr_null (moshi_check_version (major, 0, 0));
  ck_assert_ptr_null (moshi_check_version (major, minor, 0));
  if (minor > 0)
    ck_assert_ptr_null (moshi_check_version (major, minor - 1, 999));

  const char *msg = moshi_check_version (major + 1, 0, 0);
  ck_assert_ptr_nonnull (msg);
  ck_assert_str_eq (msg, "libmoshi version too old (major mismatch)");
  /* another major version is another API, older or newer */
  if (major > 0) {
    msg = moshi_check_version (major - 1, 0, 0);
    ck_assert_ptr_nonnull (msg);
    ck_assert_str_eq (msg, "libmoshi version too new (major mismatch)");
  }
  msg = moshi_check_version (major, minor + 1, 0);
  ck_assert_ptr_nonnull (msg);
  ck_assert_str_eq (msg, "libmoshi version too old (minor mismatch)");
  msg = moshi_check_version (major, minor, micro + 1);
  ck_assert_ptr_nonnull (msg);
  ck_assert_str_eq (msg, "libmoshi version too old (micro mismatch)");
}
END_TEST

int
main (void)
{
  const TTest *tests[] = { test_string_matches_numbers, test_check_macro, test_check_runtime };
  return moshi_test_run_tests ("version", tests, G_N_ELEMENTS (tests));
}
