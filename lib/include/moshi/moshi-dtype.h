/* gst-moshi: element types of tensors, as named in safetensors files. */
#pragma once

#include <glib.h>
#include "moshi-api.h"
#include <stdint.h>

MOSHI_BEGIN_DECLS

typedef enum {
  MOSHI_DTYPE_F32,
  MOSHI_DTYPE_BF16,
  MOSHI_DTYPE_F16,
  MOSHI_DTYPE_F64,
  MOSHI_DTYPE_I64,
  MOSHI_DTYPE_I32,
  MOSHI_DTYPE_I16,
  MOSHI_DTYPE_I8,
  MOSHI_DTYPE_U8,
  MOSHI_DTYPE_BOOL,
  MOSHI_DTYPE_F8_E4M3,          /* OCP FP8 E4M3 ("fn": no infinities, max 448) */
  MOSHI_DTYPE_COUNT
} MoshiDType;

/* Size in bytes of one element. */
gsize moshi_dtype_size (MoshiDType dtype);
/* The safetensors spelling: "F32", "BF16", ... */
const char *moshi_dtype_name (MoshiDType dtype);
/* Parses the safetensors spelling; FALSE for anything else. */
gboolean moshi_dtype_from_name (const char *name, MoshiDType *out);

/* bf16 and f16 are stored as raw 16-bit patterns. Conversions round to nearest even. */
static inline float
moshi_bf16_to_f32 (uint16_t v)
{
  union { uint32_t u; float f; } x = { .u = (uint32_t) v << 16 };
  return x.f;
}

uint16_t moshi_f32_to_bf16 (float f);
float moshi_f16_to_f32 (uint16_t h);
uint16_t moshi_f32_to_f16 (float f);

/* FP8 E4M3: to nearest even, saturating at +-448 (there is no infinity); NaN stays NaN. */
uint8_t moshi_f32_to_e4m3 (float f);
float moshi_e4m3_to_f32 (uint8_t v);

/* Converts n elements of src (any float dtype) to f32. */
void moshi_convert_to_f32 (float *dst, const void *src, MoshiDType src_dtype, gsize n);

MOSHI_END_DECLS
