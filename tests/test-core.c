/* Tests of lib/core: element types and their conversions.
 *
 * One TCase per area, each built by its own *_tcase () function; core_suite () lists them. */
#include <float.h>
#include <math.h>
#include <string.h>

#include "moshi-device.h"
#include "moshi-dtype.h"
#include "moshi-error.h"
#include "test-support.h"

#include "moshi-threadpool.h"

static uint32_t
f32_bits (float f)
{
  uint32_t u;
  memcpy (&u, &f, sizeof u);
  return u;
}

static float
f32_from_bits (uint32_t u)
{
  float f;
  memcpy (&f, &u, sizeof f);
  return f;
}

/* ---- dtype names and sizes ---- */

START_TEST (test_dtype_names_and_sizes)
{
  static const struct { MoshiDType dtype; const char *name; gsize size; } expected[] = {
    { MOSHI_DTYPE_F32, "F32", 4 },
    { MOSHI_DTYPE_BF16, "BF16", 2 },
    { MOSHI_DTYPE_F16, "F16", 2 },
    { MOSHI_DTYPE_F64, "F64", 8 },
    { MOSHI_DTYPE_I64, "I64", 8 },
    { MOSHI_DTYPE_I32, "I32", 4 },
    { MOSHI_DTYPE_I16, "I16", 2 },
    { MOSHI_DTYPE_I8, "I8", 1 },
    { MOSHI_DTYPE_U8, "U8", 1 },
    { MOSHI_DTYPE_BOOL, "BOOL", 1 },
    { MOSHI_DTYPE_F8_E4M3, "F8_E4M3", 1 },
  };
  ck_assert_int_eq (G_N_ELEMENTS (expected), MOSHI_DTYPE_COUNT);
  for (gsize i = 0; i < G_N_ELEMENTS (expected); i++) {
    ck_assert_str_eq (moshi_dtype_name (expected[i].dtype), expected[i].name);
    ck_assert_uint_eq (moshi_dtype_size (expected[i].dtype), expected[i].size);
    MoshiDType parsed = MOSHI_DTYPE_COUNT;
    ck_assert (moshi_dtype_from_name (expected[i].name, &parsed));
    ck_assert_int_eq (parsed, expected[i].dtype);
  }
}
END_TEST

START_TEST (test_dtype_unknown_names)
{
  /* Spellings safetensors uses for types this library does not handle, and near misses. */
  static const char *const unknown[] = {
    "", "f32", "FP32", "F8_E5M2", "F8_E4M3FN", "Q4", "U16", "U32", "U64", "BF16 ", "F3", "F322",
  };
  for (gsize i = 0; i < G_N_ELEMENTS (unknown); i++) {
    MoshiDType parsed = MOSHI_DTYPE_F64;
    ck_assert_msg (!moshi_dtype_from_name (unknown[i], &parsed), "'%s' accepted", unknown[i]);
    ck_assert_int_eq (parsed, MOSHI_DTYPE_F64);
  }
}
END_TEST

static TCase *
dtype_tcase (void)
{
  TCase *tc = tcase_create ("dtype");
  tcase_add_test (tc, test_dtype_names_and_sizes);
  tcase_add_test (tc, test_dtype_unknown_names);
  return tc;
}

/* ---- devices (the public calls of moshi-device.h) ---- */

START_TEST (test_device_names)
{
  for (MoshiDevice d = MOSHI_DEVICE_AUTO; d <= MOSHI_DEVICE_CUDA; d++) {
    MoshiDevice parsed = (MoshiDevice) -1;
    ck_assert (moshi_device_from_name (moshi_device_name (d), &parsed));
    ck_assert_int_eq (parsed, d);
  }
  MoshiDevice parsed = MOSHI_DEVICE_CUDA;
  ck_assert (moshi_device_from_name ("CPU", &parsed));
  ck_assert_int_eq (parsed, MOSHI_DEVICE_CPU);
  ck_assert (!moshi_device_from_name ("gpu", &parsed));
}
END_TEST

START_TEST (test_device_describe_and_stats)
{
  g_autoptr (GError) error = NULL;
  MoshiDevice resolved = MOSHI_DEVICE_AUTO;
  g_autofree char *cpu = moshi_device_describe (MOSHI_DEVICE_CPU, &resolved, &error);
  g_assert_no_error (error);
  ck_assert (g_str_has_prefix (cpu, "cpu"));
  ck_assert_int_eq (resolved, MOSHI_DEVICE_CPU);

  /* the CPU keeps no counters: FALSE, and nothing left over in *out */
  MoshiDeviceStats st;
  memset (&st, 0xff, sizeof st);
  ck_assert (!moshi_device_get_stats (MOSHI_DEVICE_CPU, &st));
  ck_assert_uint_eq (st.kernel_launches + st.blas_calls + st.memory_ops + st.weight_bytes
      + st.graph_launches + st.syncs, 0);

  /* CUDA is usable or says why not; AUTO is one of the two */
  g_autofree char *cuda = moshi_device_describe (MOSHI_DEVICE_CUDA, &resolved, &error);
  if (cuda == NULL) {
    ck_assert (error != NULL && error->domain == MOSHI_ERROR && error->message[0] != '\0');
    g_clear_error (&error);
  } else {
    ck_assert_int_eq (resolved, MOSHI_DEVICE_CUDA);
  }
  g_autofree char *any = moshi_device_describe (MOSHI_DEVICE_AUTO, &resolved, &error);
  g_assert_no_error (error);
  ck_assert_int_eq (resolved, cuda ? MOSHI_DEVICE_CUDA : MOSHI_DEVICE_CPU);
}
END_TEST

static TCase *
device_tcase (void)
{
  TCase *tc = tcase_create ("device");
  tcase_add_test (tc, test_device_names);
  tcase_add_test (tc, test_device_describe_and_stats);
  return tc;
}

/* ---- bf16 ---- */

START_TEST (test_bf16_exact_round_trip)
{
  /* Every non-NaN bf16 value is exactly representable in f32 and must come back unchanged,
   * subnormals, zeros and infinities included. */
  for (uint32_t h = 0; h <= 0xffff; h++) {
    float f = moshi_bf16_to_f32 ((uint16_t) h);
    ck_assert_uint_eq (f32_bits (f), h << 16);
    if (isnan (f))
      continue;
    ck_assert_msg (moshi_f32_to_bf16 (f) == h, "bf16 0x%04x came back as 0x%04x", h,
        moshi_f32_to_bf16 (f));
  }
}
END_TEST

START_TEST (test_bf16_round_to_nearest_even)
{
  /* Exactly halfway: the result keeps an even last mantissa bit. */
  ck_assert_uint_eq (moshi_f32_to_bf16 (f32_from_bits (0x3f808000)), 0x3f80);   /* 1 + 2^-8 -> 1 */
  ck_assert_uint_eq (moshi_f32_to_bf16 (f32_from_bits (0x3f818000)), 0x3f82);   /* up to even */
  ck_assert_uint_eq (moshi_f32_to_bf16 (f32_from_bits (0xbf818000)), 0xbf82);   /* sign kept */
  /* Either side of halfway. */
  ck_assert_uint_eq (moshi_f32_to_bf16 (f32_from_bits (0x3f808001)), 0x3f81);
  ck_assert_uint_eq (moshi_f32_to_bf16 (f32_from_bits (0x3f807fff)), 0x3f80);
  /* A carry out of the mantissa bumps the exponent: just below 2 rounds to 2. */
  ck_assert_uint_eq (moshi_f32_to_bf16 (f32_from_bits (0x3fffffff)), 0x4000);
  /* The largest floats round up to infinity, as round-to-nearest demands. */
  ck_assert_uint_eq (moshi_f32_to_bf16 (FLT_MAX), 0x7f80);
  ck_assert_uint_eq (moshi_f32_to_bf16 (f32_from_bits (0x7f7f7fff)), 0x7f7f);
  /* Subnormal inputs round the same way. */
  ck_assert_uint_eq (moshi_f32_to_bf16 (f32_from_bits (0x00008000)), 0x0000);
  ck_assert_uint_eq (moshi_f32_to_bf16 (f32_from_bits (0x00018000)), 0x0002);
  ck_assert_uint_eq (moshi_f32_to_bf16 (f32_from_bits (0x00000001)), 0x0000);
  ck_assert_uint_eq (moshi_f32_to_bf16 (f32_from_bits (0x80000001)), 0x8000);
}
END_TEST

START_TEST (test_bf16_nearest)
{
  /* For many random floats, no other bf16 value is closer than the one chosen. */
  g_autoptr (GRand) rand = g_rand_new_with_seed (7);
  for (int i = 0; i < 50000; i++) {
    uint32_t bits = g_rand_int (rand);
    float x = f32_from_bits (bits);
    if (isnan (x) || isinf (x) || fabsf (x) >= f32_from_bits (0x7f7f8000))
      continue;
    uint16_t h = moshi_f32_to_bf16 (x);
    double err = fabs ((double) moshi_bf16_to_f32 (h) - x);
    for (int d = -1; d <= 1; d += 2) {
      /* Stepping past zero wraps to a NaN pattern, which is skipped. */
      float neighbour = moshi_bf16_to_f32 ((uint16_t) (h + d));
      if (isnan (neighbour) || isinf (neighbour))
        continue;
      double nerr = fabs ((double) neighbour - x);
      ck_assert_msg (err < nerr || (err == nerr && (h & 1) == 0),
          "0x%08x -> 0x%04x is not the nearest even", bits, h);
    }
  }
}
END_TEST

START_TEST (test_bf16_special_values)
{
  ck_assert_uint_eq (moshi_f32_to_bf16 (0.0f), 0x0000);
  ck_assert_uint_eq (moshi_f32_to_bf16 (-0.0f), 0x8000);
  ck_assert_uint_eq (moshi_f32_to_bf16 (1.0f), 0x3f80);
  ck_assert_uint_eq (moshi_f32_to_bf16 (-2.0f), 0xc000);
  ck_assert_uint_eq (moshi_f32_to_bf16 (INFINITY), 0x7f80);
  ck_assert_uint_eq (moshi_f32_to_bf16 (-INFINITY), 0xff80);
  ck_assert (isinf (moshi_bf16_to_f32 (0x7f80)) && moshi_bf16_to_f32 (0x7f80) > 0);
  ck_assert (isinf (moshi_bf16_to_f32 (0xff80)) && moshi_bf16_to_f32 (0xff80) < 0);

  /* NaNs stay NaN, even those whose payload lies only in the bits that are dropped (naive
   * truncation would turn them into infinity), and keep their sign. */
  static const uint32_t nans[] = { 0x7fc00000, 0xffc00000, 0x7f800001, 0xff800001, 0x7fffffff };
  for (gsize i = 0; i < G_N_ELEMENTS (nans); i++) {
    uint16_t h = moshi_f32_to_bf16 (f32_from_bits (nans[i]));
    ck_assert_msg (isnan (moshi_bf16_to_f32 (h)), "NaN 0x%08x -> 0x%04x", nans[i], h);
    ck_assert_uint_eq (h & 0x8000, (nans[i] >> 16) & 0x8000);
  }
  ck_assert (isnan (moshi_bf16_to_f32 (0x7fc0)));
  ck_assert (isnan (moshi_bf16_to_f32 (0x7f81)));

  /* The smallest subnormal and the largest finite value. */
  ck_assert_float_eq (moshi_bf16_to_f32 (0x0001), ldexpf (1.0f, -133));
  ck_assert_float_eq (moshi_bf16_to_f32 (0x7f7f), f32_from_bits (0x7f7f0000));
}
END_TEST

static TCase *
bf16_tcase (void)
{
  TCase *tc = tcase_create ("bf16");
  tcase_add_test (tc, test_bf16_exact_round_trip);
  tcase_add_test (tc, test_bf16_round_to_nearest_even);
  tcase_add_test (tc, test_bf16_nearest);
  tcase_add_test (tc, test_bf16_special_values);
  return tc;
}

/* ---- f16 ---- */

START_TEST (test_f16_exact_round_trip)
{
  for (uint32_t h = 0; h <= 0xffff; h++) {
    float f = moshi_f16_to_f32 ((uint16_t) h);
    gboolean nan_pattern = (h & 0x7c00) == 0x7c00 && (h & 0x3ff) != 0;
    ck_assert_msg (isnan (f) == nan_pattern, "f16 0x%04x -> %g", h, f);
    if (nan_pattern)
      continue;
    ck_assert_msg (moshi_f32_to_f16 (f) == h, "f16 0x%04x (%g) came back as 0x%04x", h, f,
        moshi_f32_to_f16 (f));
  }
}
END_TEST

START_TEST (test_f16_values)
{
  ck_assert_float_eq (moshi_f16_to_f32 (0x3c00), 1.0f);
  ck_assert_float_eq (moshi_f16_to_f32 (0xc000), -2.0f);
  ck_assert_float_eq (moshi_f16_to_f32 (0x3555), 0.333251953125f);
  ck_assert_float_eq (moshi_f16_to_f32 (0x7bff), 65504.0f);
  ck_assert_float_eq (moshi_f16_to_f32 (0x0400), ldexpf (1.0f, -14));   /* smallest normal */
  ck_assert_float_eq (moshi_f16_to_f32 (0x0001), ldexpf (1.0f, -24));   /* smallest subnormal */
  ck_assert_float_eq (moshi_f16_to_f32 (0x03ff), ldexpf (1023.0f, -24));
  ck_assert_float_eq (moshi_f16_to_f32 (0x8001), -ldexpf (1.0f, -24));
  ck_assert_uint_eq (f32_bits (moshi_f16_to_f32 (0x8000)), 0x80000000u);   /* -0 */
  ck_assert_uint_eq (f32_bits (moshi_f16_to_f32 (0x0000)), 0x00000000u);

  ck_assert_uint_eq (moshi_f32_to_f16 (1.0f), 0x3c00);
  ck_assert_uint_eq (moshi_f32_to_f16 (-2.0f), 0xc000);
  ck_assert_uint_eq (moshi_f32_to_f16 (0.1f), 0x2e66);
  ck_assert_uint_eq (moshi_f32_to_f16 (0.0f), 0x0000);
  ck_assert_uint_eq (moshi_f32_to_f16 (-0.0f), 0x8000);
}
END_TEST

START_TEST (test_f16_round_to_nearest_even)
{
  /* Halfway between two normals: to the even one. */
  ck_assert_uint_eq (moshi_f32_to_f16 (1.0f + ldexpf (1.0f, -11)), 0x3c00);
  ck_assert_uint_eq (moshi_f32_to_f16 (1.0f + 3 * ldexpf (1.0f, -11)), 0x3c02);
  ck_assert_uint_eq (moshi_f32_to_f16 (-(1.0f + 3 * ldexpf (1.0f, -11))), 0xbc02);
  /* Either side of halfway. */
  ck_assert_uint_eq (moshi_f32_to_f16 (nextafterf (1.0f + ldexpf (1.0f, -11), 2.0f)), 0x3c01);
  ck_assert_uint_eq (moshi_f32_to_f16 (nextafterf (1.0f + 3 * ldexpf (1.0f, -11), 0.0f)), 0x3c01);
  /* A mantissa carry moves to the next binade. */
  ck_assert_uint_eq (moshi_f32_to_f16 (nextafterf (2.0f, 0.0f)), 0x4000);

  /* Overflow: 65504 is the largest finite value; from 65520 (halfway to 2^16) on it is inf. */
  ck_assert_uint_eq (moshi_f32_to_f16 (65504.0f), 0x7bff);
  ck_assert_uint_eq (moshi_f32_to_f16 (65519.0f), 0x7bff);
  ck_assert_uint_eq (moshi_f32_to_f16 (nextafterf (65520.0f, 0.0f)), 0x7bff);
  ck_assert_uint_eq (moshi_f32_to_f16 (65520.0f), 0x7c00);
  ck_assert_uint_eq (moshi_f32_to_f16 (-65520.0f), 0xfc00);
  ck_assert_uint_eq (moshi_f32_to_f16 (1e10f), 0x7c00);
  ck_assert_uint_eq (moshi_f32_to_f16 (FLT_MAX), 0x7c00);

  /* Subnormals, also rounded to even. */
  ck_assert_uint_eq (moshi_f32_to_f16 (ldexpf (1.0f, -24)), 0x0001);
  ck_assert_uint_eq (moshi_f32_to_f16 (ldexpf (1.0f, -25)), 0x0000);        /* half of the smallest */
  ck_assert_uint_eq (moshi_f32_to_f16 (ldexpf (3.0f, -25)), 0x0002);        /* 1.5 -> 2 */
  ck_assert_uint_eq (moshi_f32_to_f16 (ldexpf (5.0f, -25)), 0x0002);        /* 2.5 -> 2 */
  ck_assert_uint_eq (moshi_f32_to_f16 (nextafterf (ldexpf (1.0f, -25), 1.0f)), 0x0001);
  ck_assert_uint_eq (moshi_f32_to_f16 (-ldexpf (3.0f, -25)), 0x8002);
  ck_assert_uint_eq (moshi_f32_to_f16 (1e-10f), 0x0000);
  ck_assert_uint_eq (moshi_f32_to_f16 (-1e-10f), 0x8000);
  ck_assert_uint_eq (moshi_f32_to_f16 (f32_from_bits (0x00000001)), 0x0000);   /* f32 subnormal */
  /* The largest subnormal rounds up into the smallest normal. */
  ck_assert_uint_eq (moshi_f32_to_f16 (ldexpf (1.0f, -14) - ldexpf (1.0f, -25)), 0x0400);
  ck_assert_uint_eq (moshi_f32_to_f16 (ldexpf (1.0f, -14) - ldexpf (1.0f, -24)), 0x03ff);
  ck_assert_uint_eq (moshi_f32_to_f16 (ldexpf (2045.0f, -25)), 0x03fe);     /* 1022.5 -> 1022 */
}
END_TEST

START_TEST (test_f16_nearest)
{
  MoshiTestRng rng;
  moshi_test_rng_init (&rng, 11);
  for (int i = 0; i < 50000; i++) {
    /* Magnitudes across the whole f16 range, subnormals included. */
    float x = ldexpf (moshi_test_rng_uniform (&rng), (i % 43) - 27);
    uint16_t h = moshi_f32_to_f16 (x);
    float got = moshi_f16_to_f32 (h);
    ck_assert (!isnan (got) && !isinf (got));
    double err = fabs ((double) got - x);
    for (int d = -1; d <= 1; d += 2) {
      /* Stepping past zero wraps to a NaN pattern, which is skipped. */
      float neighbour = moshi_f16_to_f32 ((uint16_t) (h + d));
      if (isnan (neighbour) || isinf (neighbour))
        continue;
      double nerr = fabs ((double) neighbour - x);
      ck_assert_msg (err < nerr || (err == nerr && (h & 1) == 0),
          "%a -> 0x%04x is not the nearest even", (double) x, h);
    }
  }
}
END_TEST

START_TEST (test_f16_special_values)
{
  ck_assert_uint_eq (moshi_f32_to_f16 (INFINITY), 0x7c00);
  ck_assert_uint_eq (moshi_f32_to_f16 (-INFINITY), 0xfc00);
  ck_assert (isinf (moshi_f16_to_f32 (0x7c00)) && moshi_f16_to_f32 (0x7c00) > 0);
  ck_assert (isinf (moshi_f16_to_f32 (0xfc00)) && moshi_f16_to_f32 (0xfc00) < 0);

  static const uint32_t nans[] = { 0x7fc00000, 0xffc00000, 0x7f800001, 0x7fffffff };
  for (gsize i = 0; i < G_N_ELEMENTS (nans); i++) {
    uint16_t h = moshi_f32_to_f16 (f32_from_bits (nans[i]));
    ck_assert_msg ((h & 0x7c00) == 0x7c00 && (h & 0x3ff) != 0, "NaN 0x%08x -> 0x%04x", nans[i], h);
    ck_assert_uint_eq (h & 0x8000, (nans[i] >> 16) & 0x8000);
  }
  ck_assert (isnan (moshi_f16_to_f32 (0x7e00)));
  ck_assert (isnan (moshi_f16_to_f32 (0x7c01)));
  ck_assert (isnan (moshi_f16_to_f32 (0xfe00)));
}
END_TEST

static TCase *
f16_tcase (void)
{
  TCase *tc = tcase_create ("f16");
  tcase_add_test (tc, test_f16_exact_round_trip);
  tcase_add_test (tc, test_f16_values);
  tcase_add_test (tc, test_f16_round_to_nearest_even);
  tcase_add_test (tc, test_f16_nearest);
  tcase_add_test (tc, test_f16_special_values);
  return tc;
}

/* ---- bulk conversion ---- */

START_TEST (test_convert_to_f32)
{
  static const float values[] = { 0.0f, -0.0f, 1.0f, -2.5f, 0.375f, 1024.0f, -65280.0f, 0.5f };
  enum { N = G_N_ELEMENTS (values) };
  float out[N];

  memset (out, 0xff, sizeof out);
  moshi_convert_to_f32 (out, values, MOSHI_DTYPE_F32, N);
  ck_assert_int_eq (memcmp (out, values, sizeof out), 0);

  /* All the values are exact in every format, so conversions must reproduce them bit for bit. */
  uint16_t bf16[N], f16[N];
  double f64[N];
  for (int i = 0; i < N; i++) {
    bf16[i] = moshi_f32_to_bf16 (values[i]);
    f16[i] = moshi_f32_to_f16 (values[i]);
    f64[i] = values[i];
  }
  moshi_convert_to_f32 (out, bf16, MOSHI_DTYPE_BF16, N);
  for (int i = 0; i < N; i++)
    ck_assert_uint_eq (f32_bits (out[i]), f32_bits (values[i]));
  moshi_convert_to_f32 (out, f16, MOSHI_DTYPE_F16, N);
  for (int i = 0; i < N; i++)
    ck_assert_uint_eq (f32_bits (out[i]), f32_bits (values[i]));
  moshi_convert_to_f32 (out, f64, MOSHI_DTYPE_F64, N);
  for (int i = 0; i < N; i++)
    ck_assert_uint_eq (f32_bits (out[i]), f32_bits (values[i]));

  /* n == 0 touches nothing. */
  out[0] = 42.0f;
  moshi_convert_to_f32 (out, NULL, MOSHI_DTYPE_F16, 0);
  ck_assert_float_eq (out[0], 42.0f);
}
END_TEST

START_TEST (test_convert_rounds_f64)
{
  /* f64 -> f32 rounds to nearest, like a C cast. */
  const double f64[] = { 0.1, 1.0 / 3.0, 1e300, -1e-300 };
  float out[G_N_ELEMENTS (f64)];
  moshi_convert_to_f32 (out, f64, MOSHI_DTYPE_F64, G_N_ELEMENTS (f64));
  ck_assert_float_eq (out[0], 0.1f);
  ck_assert_float_eq (out[1], 1.0f / 3.0f);
  ck_assert (isinf (out[2]));
  ck_assert_uint_eq (f32_bits (out[3]), 0x80000000u);
}
END_TEST

/* Safetensors data may start at any byte; reading it in place must not assume alignment (the
 * sanitizer build reports a misaligned load otherwise). */
START_TEST (test_convert_unaligned)
{
  static const float values[] = { 1.0f, -2.5f, 0.375f };
  enum { N = G_N_ELEMENTS (values) };
  guint8 raw[1 + N * sizeof (double)];
  float out[N];
  uint16_t h[N];
  double d[N];
  for (int i = 0; i < N; i++) {
    h[i] = moshi_f32_to_bf16 (values[i]);
    d[i] = values[i];
  }
  memcpy (raw + 1, h, sizeof h);
  moshi_convert_to_f32 (out, raw + 1, MOSHI_DTYPE_BF16, N);
  for (int i = 0; i < N; i++)
    ck_assert_float_eq (out[i], values[i]);
  for (int i = 0; i < N; i++)
    h[i] = moshi_f32_to_f16 (values[i]);
  memcpy (raw + 1, h, sizeof h);
  moshi_convert_to_f32 (out, raw + 1, MOSHI_DTYPE_F16, N);
  for (int i = 0; i < N; i++)
    ck_assert_float_eq (out[i], values[i]);
  memcpy (raw + 1, d, sizeof d);
  moshi_convert_to_f32 (out, raw + 1, MOSHI_DTYPE_F64, N);
  for (int i = 0; i < N; i++)
    ck_assert_float_eq (out[i], values[i]);
}
END_TEST

static TCase *
convert_tcase (void)
{
  TCase *tc = tcase_create ("convert");
  tcase_add_test (tc, test_convert_to_f32);
  tcase_add_test (tc, test_convert_rounds_f64);
  tcase_add_test (tc, test_convert_unaligned);
  return tc;
}


/* ------------------------------------------------------------------ thread pool */

typedef struct {
  int *hits;           /* per task */
  int *thread_seen;    /* per thread index */
  int n_threads;
  gboolean bad_thread;
} PoolCount;

static void
count_task (void *ctx, int task, int thread)
{
  PoolCount *pc = ctx;
  g_atomic_int_inc (&pc->hits[task]);
  if (thread < 0 || thread >= pc->n_threads)
    pc->bad_thread = TRUE;
  else
    g_atomic_int_inc (&pc->thread_seen[thread]);
}

START_TEST (test_pool_runs_every_task_once)
{
  const int thread_counts[] = { 1, 2, 3, 8 };
  for (guint c = 0; c < G_N_ELEMENTS (thread_counts); c++) {
    int threads = thread_counts[c];
    /* run at once after creation: workers may not have started yet */
    g_autoptr (MoshiThreadPool) pool = moshi_thread_pool_new (threads);
    ck_assert_int_eq (moshi_thread_pool_n_threads (pool), threads);
    for (int round = 0; round < 300; round++) {
      int n_tasks = 1 + (round * 7) % 97;
      g_autofree int *hits = g_new0 (int, n_tasks);
      g_autofree int *seen = g_new0 (int, threads);
      PoolCount pc = { hits, seen, threads, FALSE };
      moshi_thread_pool_run (pool, n_tasks, count_task, &pc);
      for (int t = 0; t < n_tasks; t++)
        ck_assert_msg (hits[t] == 1, "threads %d round %d: task %d ran %d times", threads, round, t, hits[t]);
      ck_assert (!pc.bad_thread);
    }
    /* zero tasks is a no-op */
    moshi_thread_pool_run (pool, 0, count_task, NULL);
  }
}
END_TEST

static void
slow_task (void *ctx, int task, int thread)
{
  int *sum = ctx;
  if (task % 3 == 0)
    g_usleep (2000);          /* long enough for the other workers to go to sleep */
  g_atomic_int_add (sum, task);
}

START_TEST (test_pool_sleep_and_wake)
{
  g_autoptr (MoshiThreadPool) pool = moshi_thread_pool_new (2);
  for (int round = 0; round < 5; round++) {
    int sum = 0;
    moshi_thread_pool_run (pool, 10, slow_task, &sum);
    ck_assert_int_eq (sum, 45);
    g_usleep (20000);         /* idle: workers stop spinning and sleep */
  }
}
END_TEST

static TCase *
thread_pool_tcase (void)
{
  TCase *tc = tcase_create ("thread-pool");
  tcase_set_timeout (tc, 120);
  tcase_add_test (tc, test_pool_runs_every_task_once);
  tcase_add_test (tc, test_pool_sleep_and_wake);
  return tc;
}

static Suite *
core_suite (void)
{
  Suite *suite = suite_create ("core");
  suite_add_tcase (suite, dtype_tcase ());
  suite_add_tcase (suite, device_tcase ());
  suite_add_tcase (suite, bf16_tcase ());
  suite_add_tcase (suite, f16_tcase ());
  suite_add_tcase (suite, convert_tcase ());
  suite_add_tcase (suite, thread_pool_tcase ());
  return suite;
}

int
main (void)
{
  return moshi_test_run_suite (core_suite ());
}
