#include "rtp-mimi-format.h"

gboolean
rtp_mimi_layout_is_valid (const RtpMimiLayout *layout)
{
  return layout->codebooks >= 1 && layout->codebooks <= RTP_MIMI_MAX_CODEBOOKS
      && layout->codebook_size >= 2 && layout->codebook_size <= RTP_MIMI_MAX_CODEBOOK_SIZE
      && layout->code_bits >= rtp_mimi_min_code_bits (layout->codebook_size)
      && layout->code_bits <= 16;
}

guint
rtp_mimi_min_code_bits (guint codebook_size)
{
  guint bits = 1;
  while (bits < 32 && (1u << bits) < codebook_size)
    bits++;
  return bits;
}

gsize
rtp_mimi_packed_frame_bytes (const RtpMimiLayout *layout)
{
  return ((gsize) layout->codebooks * layout->code_bits + 7) / 8;
}

gsize
rtp_mimi_payload_frames (const RtpMimiLayout *layout, gsize len, const char **why)
{
  gsize frame_bytes = rtp_mimi_packed_frame_bytes (layout);
  if (len == 0) {
    *why = "no frame";
    return 0;
  }
  /* A layout without a whole byte per frame would divide by zero; set_caps never makes one. */
  if (frame_bytes == 0 || len % frame_bytes != 0) {
    *why = "not a whole number of frames";
    return 0;
  }
  return len / frame_bytes;
}

gboolean
rtp_mimi_unpack (const RtpMimiLayout *layout, const guint8 *payload, gsize n_frames,
    guint8 *out, const char **why)
{
  gsize frame_bytes = rtp_mimi_packed_frame_bytes (layout);
  /* Each frame starts on a byte; its codes follow each other MSB first (docs/rtp-mimi.md). */
  for (gsize f = 0; f < n_frames; f++) {
    const guint8 *frame = payload + f * frame_bytes;
    gsize bitpos = 0;
    for (guint k = 0; k < layout->codebooks; k++) {
      guint code = 0;
      for (guint b = 0; b < layout->code_bits; b++, bitpos++)
        code = (code << 1) | ((frame[bitpos / 8] >> (7 - bitpos % 8)) & 1u);
      if (G_UNLIKELY (code >= layout->codebook_size)) {
        *why = "a code outside the codebooks";
        return FALSE;
      }
      gsize at = 2 * (f * layout->codebooks + k);
      out[at] = code & 0xff;
      out[at + 1] = code >> 8;
    }
  }
  return TRUE;
}
