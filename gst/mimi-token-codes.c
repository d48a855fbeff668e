#include "mimi-token-codes.h"

static guint
read_u16le (const guint8 * p)
{
  return p[0] | (guint) p[1] << 8;
}

void
gst_moshi_codes_pack (guint8 * dest, const gint32 * codes, gsize n)
{
  for (gsize i = 0; i < n; i++) {
    dest[2 * i] = (guint8) (codes[i] & 0xff);
    dest[2 * i + 1] = (guint8) ((codes[i] >> 8) & 0xff);
  }
}

void
gst_moshi_codes_unpack (gint32 * codes, gsize stride, const guint8 * src, gsize n)
{
  for (gsize i = 0; i < n; i++)
    codes[i * stride] = (gint32) read_u16le (src + 2 * i);
}

gssize
gst_moshi_codes_find_invalid (const guint8 * src, gsize n, guint codebook_size)
{
  for (gsize i = 0; i < n; i++)
    if (G_UNLIKELY (read_u16le (src + 2 * i) >= codebook_size))
      return (gssize) i;
  return -1;
}
