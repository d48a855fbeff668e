#include "moshi-codes.h"

#include <string.h>

#include <moshi/moshi-error.h>

gboolean
moshi_codes_from_safetensors (const MoshiSafetensors *st, int32_t **codes_out, int *k_out,
    int *t_out, GError **error)
{
  const char *path = moshi_safetensors_path (st);
  const MoshiTensorEntry *e = moshi_safetensors_lookup (st, "codes");
  if (e == NULL) {
    g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_MISSING_TENSOR, "%s: tensor 'codes' missing", path);
    return FALSE;
  }
  if ((e->dtype != MOSHI_DTYPE_I64 && e->dtype != MOSHI_DTYPE_I32)
      || !(e->ndim == 2 || (e->ndim == 3 && e->shape[0] == 1))) {
    char shape[MOSHI_SHAPE_STRING_LEN];
    g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_SHAPE,
        "%s: tensor 'codes' is %s %s; expected I64 or I32 [1, K, T]", path,
        moshi_dtype_name (e->dtype), moshi_shape_to_string (e->shape, e->ndim, shape, sizeof (shape)));
    return FALSE;
  }
  /* Checked as int64: a crafted file's dimensions must not be truncated on the way to int. */
  int64_t k64 = e->shape[e->ndim - 2], t64 = e->shape[e->ndim - 1];
  if (k64 < 1 || k64 > MOSHI_CODES_MAX_CODEBOOKS || t64 < 0
      || t64 > G_MAXINT / MOSHI_CODES_MAX_CODEBOOKS) {
    g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_SHAPE,
        "%s: tensor 'codes' has %" G_GINT64_FORMAT " codebooks and %" G_GINT64_FORMAT " frames; "
        "expected 1 to %d codebooks and 0 to %d frames", path, k64, t64,
        MOSHI_CODES_MAX_CODEBOOKS, G_MAXINT / MOSHI_CODES_MAX_CODEBOOKS);
    return FALSE;
  }
  int k = (int) k64, t = (int) t64;
  gsize n = (gsize) k * (gsize) t;
  gsize item = moshi_dtype_size (e->dtype);
  /* The reader checks the byte range against the shape; this keeps the copy below within the
   * tensor should that ever change. */
  if (e->nbytes != n * item) {
    g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_FORMAT,
        "%s: tensor 'codes' holds %" G_GSIZE_FORMAT " bytes, not the %" G_GSIZE_FORMAT
        " of its shape", path, (gsize) e->nbytes, n * item);
    return FALSE;
  }
  int32_t *codes = g_new (int32_t, MAX (n, 1));
  for (gsize i = 0; i < n; i++) {
    int64_t v;
    if (e->dtype == MOSHI_DTYPE_I64) {
      memcpy (&v, (const guint8 *) e->data + i * 8, 8);
    } else {
      int32_t v32;
      memcpy (&v32, (const guint8 *) e->data + i * 4, 4);
      v = v32;
    }
    codes[i] = (v < G_MININT32 || v > G_MAXINT32) ? -1 : (int32_t) v;
  }
  *codes_out = codes;
  *k_out = k;
  *t_out = t;
  return TRUE;
}

gboolean
moshi_codes_read (const char *path, int32_t **codes_out, int *k_out, int *t_out, GError **error)
{
  g_autoptr (MoshiSafetensors) st = moshi_safetensors_open (path, error);
  if (st == NULL)
    return FALSE;
  return moshi_codes_from_safetensors (st, codes_out, k_out, t_out, error);
}
