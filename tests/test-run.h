/* gst-moshi: running a Check suite, apart from test-support.h so that tests built against the
 * public API alone (test-version) use it too. */
#pragma once

#include <check.h>
#include <stddef.h>

/* Runs a suite (CK_NORMAL output) and returns the process exit status. */
int moshi_test_run_suite (Suite *suite);

/* The same for a suite of one test case, both called name, holding tests[0 .. n_tests - 1]
 * (each a START_TEST name). */
int moshi_test_run_tests (const char *name, const TTest *const *tests, size_t n_tests);
