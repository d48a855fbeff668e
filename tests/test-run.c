#include "test-run.h"

#include <stdlib.h>

int
moshi_test_run_suite (Suite *suite)
{
  SRunner *runner = srunner_create (suite);
  srunner_run_all (runner, CK_NORMAL);
  int failed = srunner_ntests_failed (runner);
  srunner_free (runner);
  return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}

int
moshi_test_run_tests (const char *name, const TTest *const *tests, size_t n_tests)
{
  Suite *suite = suite_create (name);
  TCase *tc = tcase_create (name);
  for (size_t i = 0; i < n_tests; i++)
    tcase_add_test (tc, tests[i]);
  suite_add_tcase (suite, tc);
  return moshi_test_run_suite (suite);
}
