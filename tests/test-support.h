/* gst-moshi test helpers shared by the Check suites. */
#pragma once

#include <check.h>
#include <glib.h>
#include <stdint.h>

#include "moshi-backend.h"
#include "test-run.h"

/* Path of a file under tests/data (from $MOSHI_TEST_DATA). Free with g_free. */
char *moshi_test_data_path (const char *relative);

/* The backend the conformance tests run on: $MOSHI_TEST_DEVICE (cpu, cuda, auto), cpu by
 * default; tests/meson.build runs suites once more with cuda on the emulated CUDA backend. */
MoshiDevice moshi_test_device (void);
/* With MOSHI_TEST_DEVICE=cuda on the real module (the gpu suite): exits 77 (skipped) when no
 * GPU can be used, and makes Check run in this process (a CUDA context does not survive fork). */
void moshi_test_require_device (void);


/* Deterministic pseudo-random numbers for tests (xorshift). */
typedef struct { uint64_t state; } MoshiTestRng;
void moshi_test_rng_init (MoshiTestRng *rng, uint64_t seed);
float moshi_test_rng_uniform (MoshiTestRng *rng);   /* [-1, 1) */
float moshi_test_rng_normal (MoshiTestRng *rng);
void moshi_test_fill_uniform (MoshiTestRng *rng, float *x, size_t n, float scale);

/* ||a - b|| / ||b|| (0 when both are zero). */
double moshi_test_rel_l2 (const float *a, const float *b, size_t n);
/* max |a - b| */
double moshi_test_max_abs_diff (const float *a, const float *b, size_t n);

/* Asserts that a GError-returning call failed with a message containing needle. */
#define moshi_assert_error_contains(err, needle) \
  do { \
    ck_assert_msg ((err) != NULL, "expected an error containing '%s'", (needle)); \
    ck_assert_msg (strstr ((err)->message, (needle)) != NULL, \
        "error '%s' does not contain '%s'", (err)->message, (needle)); \
  } while (0)
