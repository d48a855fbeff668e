#include "moshi-dtype.h"

#include <math.h>
#include <string.h>

static const struct {
  const char *name;
  gsize size;
} dtype_info[MOSHI_DTYPE_COUNT] = {
  [MOSHI_DTYPE_F32] = { "F32", 4 },
  [MOSHI_DTYPE_BF16] = { "BF16", 2 },
  [MOSHI_DTYPE_F16] = { "F16", 2 },
  [MOSHI_DTYPE_F64] = { "F64", 8 },
  [MOSHI_DTYPE_I64] = { "I64", 8 },
  [MOSHI_DTYPE_I32] = { "I32", 4 },
  [MOSHI_DTYPE_I16] = { "I16", 2 },
  [MOSHI_DTYPE_I8] = { "I8", 1 },
  [MOSHI_DTYPE_U8] = { "U8", 1 },
  [MOSHI_DTYPE_BOOL] = { "BOOL", 1 },
  [MOSHI_DTYPE_F8_E4M3] = { "F8_E4M3", 1 },
};

gsize
moshi_dtype_size (MoshiDType dtype)
{
  g_return_val_if_fail (dtype < MOSHI_DTYPE_COUNT, 0);
  return dtype_info[dtype].size;
}

const char *
moshi_dtype_name (MoshiDType dtype)
{
  g_return_val_if_fail (dtype < MOSHI_DTYPE_COUNT, "?");
  return dtype_info[dtype].name;
}

gboolean
moshi_dtype_from_name (const char *name, MoshiDType *out)
{
  for (int i = 0; i < MOSHI_DTYPE_COUNT; i++) {
    if (strcmp (name, dtype_info[i].name) == 0) {
      *out = (MoshiDType) i;
      return TRUE;
    }
  }
  return FALSE;
}

uint8_t
moshi_f32_to_e4m3 (float f)
{
  uint8_t sign = signbit (f) ? 0x80 : 0;
  float a = fabsf (f);
  if (isnan (f))
    return sign | 0x7f;
  if (a < 0.015625f) {                          /* below 2^-6: subnormal steps of 2^-9 */
    /* exact: a power-of-two scaling; rintf rounds to nearest even; 8 is the least normal */
    return sign | (uint8_t) rintf (a * 512.0f);
  }
  if (a >= 464.0f)                              /* past 448's rounding interval: saturate */
    return sign | 0x7e;
  int e;
  frexpf (a, &e);                               /* a = m 2^e, m in [0.5, 1) */
  e -= 1;                                       /* a = (1 + f) 2^e */
  float q = rintf ((ldexpf (a, -e) - 1.0f) * 8.0f);
  if (q == 8.0f) {
    q = 0.0f;
    e++;
  }
  if (e + 7 > 15 || (e + 7 == 15 && q == 7.0f))
    return sign | 0x7e;
  return sign | (uint8_t) (((e + 7) << 3) | (int) q);
}

float
moshi_e4m3_to_f32 (uint8_t v)
{
  int e = (v >> 3) & 15, m = v & 7;
  float a;
  if ((v & 0x7f) == 0x7f)
    a = NAN;
  else if (e == 0)
    a = ldexpf ((float) m, -9);
  else
    a = ldexpf (1.0f + m / 8.0f, e - 7);
  return v & 0x80 ? -a : a;
}

uint16_t
moshi_f32_to_bf16 (float f)
{
  union { float f; uint32_t u; } x = { .f = f };
  if (isnan (f))
    return (uint16_t) ((x.u >> 16) | 0x40);   /* keep it a quiet NaN */
  uint32_t rounding = 0x7fff + ((x.u >> 16) & 1);
  return (uint16_t) ((x.u + rounding) >> 16);
}

float
moshi_f16_to_f32 (uint16_t h)
{
  uint32_t sign = (uint32_t) (h & 0x8000) << 16;
  uint32_t exp = (h >> 10) & 0x1f;
  uint32_t mant = h & 0x3ff;
  union { uint32_t u; float f; } x;
  if (exp == 0) {
    /* zero or subnormal: value = mant * 2^-24 */
    float v = ldexpf ((float) mant, -24);
    return sign ? -v : v;
  } else if (exp == 31) {
    x.u = sign | 0x7f800000u | (mant << 13);
  } else {
    x.u = sign | ((exp + 112) << 23) | (mant << 13);
  }
  return x.f;
}

uint16_t
moshi_f32_to_f16 (float f)
{
  union { float f; uint32_t u; } x = { .f = f };
  uint16_t sign = (uint16_t) ((x.u >> 16) & 0x8000);
  float a = fabsf (f);
  if (isnan (f))
    return sign | 0x7e00;
  if (a >= 65520.0f)
    return sign | 0x7c00;
  if (a < ldexpf (1.0f, -14)) {
    /* subnormal range: round a / 2^-24 to nearest even */
    float m = nearbyintf (ldexpf (a, 24));
    return sign | (uint16_t) m;
  }
  uint32_t u = x.u & 0x7fffffffu;
  uint32_t rounding = 0xfff + ((u >> 13) & 1);
  u += rounding;
  return sign | (uint16_t) (((u >> 23) - 112) << 10 | ((u >> 13) & 0x3ff));
}

void
moshi_convert_to_f32 (float *dst, const void *src, MoshiDType src_dtype, gsize n)
{
  switch (src_dtype) {
    case MOSHI_DTYPE_F32:
      memcpy (dst, src, n * sizeof (float));
      break;
    /* Tensor data sits at whatever offset the file put it, so elements are copied out rather
     * than read through a pointer that may be misaligned. */
    case MOSHI_DTYPE_BF16: {
      const guint8 *s = src;
      for (gsize i = 0; i < n; i++) {
        uint16_t h;
        memcpy (&h, s + i * sizeof h, sizeof h);
        dst[i] = moshi_bf16_to_f32 (h);
      }
      break;
    }
    case MOSHI_DTYPE_F16: {
      const guint8 *s = src;
      for (gsize i = 0; i < n; i++) {
        uint16_t h;
        memcpy (&h, s + i * sizeof h, sizeof h);
        dst[i] = moshi_f16_to_f32 (h);
      }
      break;
    }
    case MOSHI_DTYPE_F8_E4M3: {
      const uint8_t *s = src;
      for (gsize i = 0; i < n; i++)
        dst[i] = moshi_e4m3_to_f32 (s[i]);
      break;
    }
    case MOSHI_DTYPE_F64: {
      const guint8 *s = src;
      for (gsize i = 0; i < n; i++) {
        double d;
        memcpy (&d, s + i * sizeof d, sizeof d);
        dst[i] = (float) d;
      }
      break;
    }
    default:
      g_return_if_reached ();
  }
}
