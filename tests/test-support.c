#include "test-support.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

char *
moshi_test_data_path (const char *relative)
{
  const char *dir = g_getenv ("MOSHI_TEST_DATA");
  if (dir == NULL)
    dir = "tests/data";
  return g_build_filename (dir, relative, NULL);
}

MoshiDevice
moshi_test_device (void)
{
  const char *name = g_getenv ("MOSHI_TEST_DEVICE");
  MoshiDevice device = MOSHI_DEVICE_CPU;
  if (name != NULL && name[0] != '\0' && !moshi_device_from_name (name, &device))
    ck_abort_msg ("MOSHI_TEST_DEVICE=%s is not a device (cpu, cuda, auto)", name);
  return device;
}

void
moshi_test_require_device (void)
{
  if (moshi_test_device () != MOSHI_DEVICE_CUDA)
    return;
  GError *error = NULL;
  MoshiBackend *be = moshi_backend_open (MOSHI_DEVICE_CUDA, &error);
  if (be == NULL) {
    gboolean emulated = g_getenv ("MOSHI_CUDA_EMULATE") != NULL;
    printf ("%s: MOSHI_TEST_DEVICE=cuda: %s\n", emulated ? "FAIL" : "SKIP", error->message);
    exit (emulated ? EXIT_FAILURE : 77);
  }
  printf ("running on %s\n", be->description);
  moshi_backend_unref (be);
  if (g_getenv ("MOSHI_CUDA_EMULATE") == NULL)
    g_setenv ("CK_FORK", "no", TRUE);
}

void
moshi_test_rng_init (MoshiTestRng *rng, uint64_t seed)
{
  rng->state = seed * 0x9E3779B97F4A7C15ull + 0x632BE59BD9B4E019ull;
  if (rng->state == 0)
    rng->state = 1;
}

static uint64_t
rng_next (MoshiTestRng *rng)
{
  uint64_t x = rng->state;
  x ^= x << 13;
  x ^= x >> 7;
  x ^= x << 17;
  rng->state = x;
  return x;
}

float
moshi_test_rng_uniform (MoshiTestRng *rng)
{
  return (float) ((rng_next (rng) >> 40) * (1.0 / 16777216.0)) * 2.0f - 1.0f;
}

float
moshi_test_rng_normal (MoshiTestRng *rng)
{
  double u1 = ((rng_next (rng) >> 11) + 1) * (1.0 / 9007199254740993.0);
  double u2 = (rng_next (rng) >> 11) * (1.0 / 9007199254740992.0);
  return (float) (sqrt (-2.0 * log (u1)) * cos (2.0 * G_PI * u2));
}

void
moshi_test_fill_uniform (MoshiTestRng *rng, float *x, size_t n, float scale)
{
  for (size_t i = 0; i < n; i++)
    x[i] = scale * moshi_test_rng_uniform (rng);
}

double
moshi_test_rel_l2 (const float *a, const float *b, size_t n)
{
  double num = 0, den = 0;
  for (size_t i = 0; i < n; i++) {
    double d = (double) a[i] - (double) b[i];
    num += d * d;
    den += (double) b[i] * b[i];
  }
  if (den == 0)
    return num == 0 ? 0 : INFINITY;
  return sqrt (num / den);
}

double
moshi_test_max_abs_diff (const float *a, const float *b, size_t n)
{
  double m = 0;
  for (size_t i = 0; i < n; i++) {
    double d = fabs ((double) a[i] - (double) b[i]);
    if (d > m || isnan (d))
      m = d;
  }
  return m;
}
